//! `RUN`: an ExecOp on the stage's root, with heredocs, `--network` and `--security`.

use std::collections::BTreeMap;

use memobuild_proto::{caps, pb};

use crate::error::ErrorKind;
use crate::instructions::{Instruction, RunCmd};
use crate::lower::dispatch::{Lowerer, Res, with_shell};
use crate::lower::graph::Out;
use crate::lower::naming::{prefix_command, process_cmd_env, uppercase_cmd};
use crate::lower::source::metadata;
use crate::lower::state::StageState;
use crate::parser::{chomp_heredoc_content, parse_heredoc};
use crate::shell::EnvGetter;

/// One mount of an ExecOp before indexes are assigned.
#[derive(Debug, Clone)]
pub(crate) struct MountSpec {
    pub dest: String,
    /// `None` = scratch.
    pub source: Option<Out>,
    pub selector: String,
    pub readonly: bool,
    /// Produces no output even if writable (cache, tmpfs, secret, ssh).
    pub no_output: bool,
    pub mount_type: pb::MountType,
    pub cache: Option<pb::CacheOpt>,
    pub tmpfs: Option<pb::TmpfsOpt>,
    pub secret: Option<pb::SecretOpt>,
    pub ssh: Option<pb::SshOpt>,
}

impl MountSpec {
    pub(crate) fn bind(dest: &str, source: Option<Out>) -> Self {
        Self {
            dest: dest.to_owned(),
            source,
            selector: String::new(),
            readonly: false,
            no_output: false,
            mount_type: pb::MountType::Bind,
            cache: None,
            tmpfs: None,
            secret: None,
            ssh: None,
        }
    }
}

/// `[i/n] RUN …` heredoc summary: the first line, `...` if there are more.
fn summarize_heredoc(doc: &str) -> String {
    let doc = doc.trim();
    let doc = doc.replace("\r\n", "\n");
    let mut lines = doc.split('\n');
    let first = lines.next().unwrap_or_default().to_owned();
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first
    }
}

/// BuildKit's history text for RUN: `|N K=V … <args>`.
fn run_command_string(
    args: &[String],
    build_args: &[(String, Option<String>)],
    env: &dyn EnvGetter,
) -> String {
    let mut tmp: Vec<(String, String)> = Vec::new();
    for (k, v) in build_args {
        let val = env
            .get(k)
            .map(str::to_owned)
            .unwrap_or_else(|| v.clone().unwrap_or_default());
        match tmp.iter_mut().find(|(tk, _)| tk == k) {
            Some(e) => e.1 = val,
            None => tmp.push((k.clone(), val)),
        }
    }
    let mut parts = Vec::new();
    if !tmp.is_empty() {
        parts.push(format!("|{}", tmp.len()));
        parts.extend(tmp.into_iter().map(|(k, v)| format!("{k}={v}")));
    }
    parts.extend(args.iter().cloned());
    parts.join(" ")
}

impl Lowerer<'_> {
    /// Lowers a RUN; returns what its `from=` mounts read (see `RunMounts::from_paths`).
    pub(crate) fn run_cmd(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        r: &RunCmd,
        mount_sources: Vec<Option<Option<Out>>>,
    ) -> Res<Vec<(usize, String)>> {
        let mut args = r.cmd.args.clone();
        let mut custom = ins.original.clone();
        let mut mounts = vec![MountSpec::bind("/", st.root)];
        if !r.cmd.files.is_empty() {
            if args.len() != 1 || !r.cmd.prepend_shell {
                return Err((
                    None,
                    ErrorKind::BadArguments(
                        "heredocs can only be used with the shell form of `RUN`".into(),
                    ),
                ));
            }
            let single = parse_heredoc(&args[0]).map_err(|e| (None, ErrorKind::Shell(e)))?;
            if single.is_some() {
                let file = &r.cmd.files[0];
                let data = if file.chomp {
                    chomp_heredoc_content(&file.content)
                } else {
                    file.content.clone()
                };
                if st.platform.os != "windows" && data.starts_with("#!") {
                    let node = self.inline_file(st, &file.name, 0o755, &data);
                    let mut m = MountSpec::bind("/dev/pipes/", Some(node));
                    m.selector = "/".into();
                    m.readonly = true;
                    mounts.push(m);
                    args = vec![format!("/dev/pipes/{}", file.name)];
                } else {
                    args = vec![data];
                }
                custom.push_str(&format!(" ({})", summarize_heredoc(&file.content)));
            } else {
                let mut b = args[0].clone();
                for f in &r.cmd.files {
                    b.push('\n');
                    b.push_str(&f.content);
                    b.push_str(&f.name);
                }
                args = vec![b];
            }
        }
        if r.cmd.prepend_shell {
            args = with_shell(st, &args);
        }
        let mut cap_list = vec![
            caps::CAP_EXEC_META_BASE,
            caps::CAP_EXEC_META_SETSDEFAULTPATH,
        ];
        // `--network=none|host` wins over `force-network-mode`; `default` keeps the stage's.
        let network = match r.network.as_deref() {
            None | Some("default") => self.opts.network_mode.to_pb(),
            Some("none") => pb::NetMode::None,
            Some("host") => pb::NetMode::Host,
            Some(other) => {
                return Err((
                    None,
                    ErrorKind::BadFlag(format!(
                        "unsupported network mode `{other}`: expected default, none or host"
                    )),
                ));
            }
        };
        if network != pb::NetMode::Unset {
            cap_list.push(caps::CAP_EXEC_META_NETWORK);
        }
        let security = match r.security.as_deref() {
            None | Some("sandbox") => pb::SecurityMode::Sandbox,
            Some("insecure") => pb::SecurityMode::Insecure,
            Some(other) => {
                return Err((
                    None,
                    ErrorKind::BadFlag(format!(
                        "unsupported security mode `{other}`: expected sandbox or insecure"
                    )),
                ));
            }
        };
        if security == pb::SecurityMode::Insecure {
            cap_list.push(caps::CAP_EXEC_META_SECURITY);
        }
        let extra = self.run_mounts(st, r, &mount_sources)?;
        mounts.extend(extra.mounts);
        let from_paths = extra.from_paths;
        let mut raw = self.lex;
        raw.raw_quotes = true;
        raw.skip_unset_env = true;
        let name = prefix_command(st, &uppercase_cmd(&process_cmd_env(&raw, &custom, &st.env)));
        let proxy = self.proxy.clone();
        if proxy.is_some() {
            cap_list.push(caps::CAP_EXEC_META_PROXYENV);
        }
        let mut env = st.env.to_vec();
        // As Go's `client/llb`: the first ssh mount's socket is SSH_AUTH_SOCK unless it is set.
        if let Some(sock) = mounts
            .iter()
            .find(|m| m.mount_type == pb::MountType::Ssh)
            .map(|m| m.dest.clone())
            && !env.iter().any(|e| e.starts_with("SSH_AUTH_SOCK="))
        {
            env.push(format!("SSH_AUTH_SOCK={sock}"));
        }
        let meta = pb::Meta {
            args: args.clone(),
            env,
            cwd: st.cwd.clone(),
            user: st.user.clone(),
            proxy_env: proxy,
            extra_hosts: self.extra_hosts.clone(),
            remove_mount_stubs_recursive: true,
            ..Default::default()
        };
        let (op_mounts, inputs, mount_caps) = assemble_mounts(mounts);
        cap_list.extend(mount_caps);
        cap_list.sort_unstable();
        cap_list.dedup();
        let op = pb::Op {
            op: Some(pb::op::Op::Exec(pb::ExecOp {
                meta: Some(meta),
                mounts: op_mounts,
                network: network as i32,
                security: security as i32,
                secretenv: extra.secret_env,
                ..Default::default()
            })),
            platform: Some(st.platform.to_pb()),
            constraints: Some(pb::WorkerConstraints::default()),
            ..Default::default()
        };
        let mut md = metadata(&name, Some(&ins.original), &cap_list);
        md.ignore_cache = st.ignore_cache;
        let node = self.graph.add(op, inputs, md, Some(ins.location));
        st.root = Some(Out { node, index: 0 });
        let history = format!("RUN {}", run_command_string(&args, &st.build_args, &st.env));
        st.commit(history, true, true);
        Ok(from_paths)
    }
}

/// Sorts mounts by destination, assigns input and output indexes as Go's `client/llb` does
/// (secret and ssh mounts last), and returns the mounts, the op inputs and the caps they need.
pub(crate) fn assemble_mounts(
    mut mounts: Vec<MountSpec>,
) -> (Vec<pb::Mount>, Vec<Out>, Vec<&'static str>) {
    let (mut normal, mut tail): (Vec<MountSpec>, Vec<MountSpec>) = mounts
        .drain(..)
        .partition(|m| !matches!(m.mount_type, pb::MountType::Secret | pb::MountType::Ssh));
    normal.sort_by(|a, b| a.dest.cmp(&b.dest));
    // Secrets, then ssh sockets, each in the order given (stable sort).
    tail.sort_by_key(|m| m.mount_type == pb::MountType::Ssh);
    let mut inputs: Vec<Out> = Vec::new();
    let mut caps_used: BTreeMap<&'static str, ()> = BTreeMap::new();
    let mut out_index = 0i64;
    let mut result = Vec::new();
    for m in normal.into_iter().chain(tail) {
        let input = match m.source {
            Some(o) => match inputs.iter().position(|i| *i == o) {
                Some(p) => p as i64,
                None => {
                    inputs.push(o);
                    (inputs.len() - 1) as i64
                }
            },
            None => pb::Mount::SCRATCH_INPUT,
        };
        let has_output = !m.no_output
            && !m.readonly
            && m.cache.is_none()
            && m.tmpfs.is_none()
            && !matches!(m.mount_type, pb::MountType::Secret | pb::MountType::Ssh);
        let output = if has_output {
            out_index += 1;
            out_index - 1
        } else {
            pb::Mount::NO_OUTPUT
        };
        if !m.selector.is_empty() {
            caps_used.insert(caps::CAP_EXEC_MOUNT_SELECTOR, ());
        }
        match m.mount_type {
            pb::MountType::Cache => {
                caps_used.insert(caps::CAP_EXEC_MOUNT_CACHE, ());
                caps_used.insert(caps::CAP_EXEC_MOUNT_CACHE_SHARING, ());
            }
            pb::MountType::Tmpfs => {
                caps_used.insert(caps::CAP_EXEC_MOUNT_TMPFS, ());
                if m.tmpfs.as_ref().is_some_and(|t| t.size > 0) {
                    caps_used.insert(caps::CAP_EXEC_MOUNT_TMPFS_SIZE, ());
                }
            }
            pb::MountType::Secret => {
                caps_used.insert(caps::CAP_EXEC_MOUNT_SECRET, ());
            }
            pb::MountType::Ssh => {
                caps_used.insert(caps::CAP_EXEC_MOUNT_SSH, ());
            }
            pb::MountType::Bind => {
                if m.source.is_some() {
                    caps_used.insert(caps::CAP_EXEC_MOUNT_BIND, ());
                }
            }
        }
        result.push(pb::Mount {
            input,
            selector: m.selector,
            dest: m.dest,
            output,
            readonly: m.readonly,
            mount_type: m.mount_type as i32,
            tmpfs_opt: m.tmpfs,
            cache_opt: m.cache,
            secret_opt: m.secret,
            ssh_opt: m.ssh,
            ..Default::default()
        });
    }
    (result, inputs, caps_used.into_keys().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::EnvList;

    #[test]
    fn history_string_lists_build_args() {
        let mut env = EnvList::new();
        env.set("A", "1");
        let s = run_command_string(
            &["/bin/sh".into(), "-c".into(), "echo".into()],
            &[("A".into(), Some("0".into())), ("B".into(), None)],
            &env,
        );
        assert_eq!(s, "|2 A=1 B= /bin/sh -c echo");
    }

    #[test]
    fn heredoc_summary() {
        assert_eq!(summarize_heredoc("echo a\necho b\n"), "echo a...");
        assert_eq!(summarize_heredoc("  echo a \n"), "echo a");
    }
}
