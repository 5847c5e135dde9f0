//! `RUN --mount` (bind, cache, tmpfs, secret, ssh) to ExecOp mounts, as BuildKit's
//! `convert_runmount.go` lowers them.

use memobuild_proto::{caps, pb};

use crate::error::ErrorKind;
use crate::instructions::RunCmd;
use crate::lower::dispatch::{Lowerer, Res};
use crate::lower::exec::MountSpec;
use crate::lower::graph::Out;
use crate::lower::paths::{clean, join};
use crate::lower::source::metadata;
use crate::lower::state::StageState;

/// Mounts and secret env vars of one RUN.
#[derive(Debug, Default)]
pub(crate) struct RunMounts {
    pub mounts: Vec<MountSpec>,
    pub secret_env: Vec<pb::SecretEnv>,
    /// (mount index, source path) of the mounts with `from=`: what they read of that stage.
    pub from_paths: Vec<(usize, String)>,
}

/// One parsed `--mount` value.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    pub kind: String,
    pub from: Option<String>,
    pub source: String,
    pub target: String,
    pub readonly: bool,
    pub id: String,
    pub sharing: String,
    pub required: bool,
    pub size: i64,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub env: Option<String>,
}

/// Splits a CSV field list (double quotes group commas).
pub(crate) fn csv_fields(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn parse_bool(k: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Ok(true),
        "0" | "f" | "false" => Ok(false),
        _ => Err(format!("invalid value for {k}: {v}")),
    }
}

fn parse_size(v: &str) -> Option<i64> {
    let v = v.trim();
    let lower = v.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &lower[digits.len()..];
    let n: f64 = digits.parse().ok()?;
    let mult: f64 = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024f64.powi(4),
        _ => return None,
    };
    Some((n * mult) as i64)
}

/// The `from=` of a mount value as written (for stage dependencies), if any.
pub(crate) fn mount_from(value: &str) -> Option<String> {
    csv_fields(value).into_iter().find_map(|f| {
        let (k, v) = f.split_once('=')?;
        (k.eq_ignore_ascii_case("from") && !v.is_empty()).then(|| v.to_owned())
    })
}

/// Parses one `--mount` value, expanding values with `expand`.
pub(crate) fn parse_mount(
    value: &str,
    expand: &dyn Fn(&str) -> Result<String, ErrorKind>,
) -> Result<Mount, ErrorKind> {
    let bad = |m: String| ErrorKind::BadFlag(format!("--mount={value}: {m}"));
    let mut m = Mount {
        kind: "bind".into(),
        ..Default::default()
    };
    let mut ro_auto = true;
    for field in csv_fields(value) {
        let Some((k, v)) = field.split_once('=') else {
            match field.to_ascii_lowercase().as_str() {
                "readonly" | "ro" => {
                    m.readonly = true;
                    ro_auto = false;
                }
                "readwrite" | "rw" => {
                    m.readonly = false;
                    ro_auto = false;
                }
                "required" if matches!(m.kind.as_str(), "secret" | "ssh") => m.required = true,
                _ => {
                    return Err(bad(format!(
                        "invalid field '{field}' must be a key=value pair"
                    )));
                }
            }
            continue;
        };
        let k = k.to_ascii_lowercase();
        let v = if k == "from" {
            v.to_owned()
        } else {
            expand(v)?
        };
        match k.as_str() {
            "type" => {
                let t = v.to_ascii_lowercase();
                if !matches!(t.as_str(), "bind" | "cache" | "tmpfs" | "secret" | "ssh") {
                    return Err(bad(format!(
                        "unsupported mount type {v:?}: expected bind, cache, tmpfs, secret or ssh"
                    )));
                }
                m.kind = t;
            }
            "from" => m.from = Some(v),
            "source" | "src" => m.source = v,
            "target" | "dst" | "destination" => m.target = v,
            "readonly" | "ro" => {
                m.readonly = parse_bool(&k, &v).map_err(bad)?;
                ro_auto = false;
            }
            "readwrite" | "rw" => {
                m.readonly = !parse_bool(&k, &v).map_err(bad)?;
                ro_auto = false;
            }
            "required" if matches!(m.kind.as_str(), "secret" | "ssh") => {
                m.required = parse_bool(&k, &v).map_err(bad)?;
            }
            "size" if m.kind == "tmpfs" => {
                m.size =
                    parse_size(&v).ok_or_else(|| bad(format!("invalid value for size: {v}")))?;
            }
            "id" => m.id = v,
            "sharing" => {
                let s = v.to_ascii_lowercase();
                if !matches!(s.as_str(), "shared" | "private" | "locked") {
                    return Err(bad(format!(
                        "unsupported sharing value {v:?}: expected shared, private or locked"
                    )));
                }
                m.sharing = s;
            }
            "mode" => {
                m.mode = Some(
                    u32::from_str_radix(&v, 8)
                        .map_err(|_| bad(format!("invalid value {v} for mode")))?,
                );
            }
            "uid" => {
                m.uid = Some(
                    v.parse()
                        .map_err(|_| bad(format!("invalid value {v} for uid")))?,
                )
            }
            "gid" => {
                m.gid = Some(
                    v.parse()
                        .map_err(|_| bad(format!("invalid value {v} for gid")))?,
                )
            }
            "env" => m.env = Some(v),
            "required" | "size" => {
                return Err(bad(format!(
                    "unexpected key '{k}' for mount type '{}'",
                    m.kind
                )));
            }
            _ => return Err(bad(format!("unexpected key '{k}' in '{field}'"))),
        }
    }
    let file_info = matches!(m.kind.as_str(), "secret" | "ssh" | "cache");
    if !file_info && (m.mode.is_some() || m.uid.is_some() || m.gid.is_some()) {
        return Err(bad(format!(
            "mode, uid and gid are not allowed for {:?} type mounts",
            m.kind
        )));
    }
    if ro_auto {
        m.readonly = !matches!(m.kind.as_str(), "cache" | "tmpfs");
    }
    if m.kind == "secret" {
        if m.from.is_some() {
            return Err(bad("secret mount should not have a from".into()));
        }
        if m.source.is_empty() && m.target.is_empty() && m.id.is_empty() {
            return Err(bad(
                "invalid secret mount. one of source, target required".into()
            ));
        }
        if !m.source.is_empty() && !m.id.is_empty() {
            return Err(bad("both source and id can't be set".into()));
        }
    }
    if m.kind == "ssh" && !m.source.is_empty() {
        return Err(bad("ssh does not support source".into()));
    }
    if !m.sharing.is_empty() && m.kind != "cache" {
        return Err(bad(format!(
            "invalid cache sharing set for {} mount",
            m.kind
        )));
    }
    if matches!(m.kind.as_str(), "bind" | "cache" | "tmpfs") && m.target.is_empty() {
        return Err(bad("mount target is required".into()));
    }
    Ok(m)
}

fn base_name(p: &str) -> String {
    let c = clean(p);
    c.rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(&c)
        .to_owned()
}

impl Lowerer<'_> {
    pub(crate) fn run_mounts(
        &mut self,
        st: &StageState,
        r: &RunCmd,
        sources: &[Option<Option<Out>>],
    ) -> Res<RunMounts> {
        let mut out = RunMounts::default();
        let mut ssh_count = 0;
        for (i, raw) in r.mounts.iter().enumerate() {
            let lex = self.lex;
            let unmatched = std::cell::RefCell::new(std::collections::BTreeSet::new());
            let expand = |w: &str| {
                let e = lex.process(w, &st.env).map_err(ErrorKind::Shell)?;
                unmatched.borrow_mut().extend(e.unmatched);
                Ok(e.result)
            };
            let m = parse_mount(raw, &expand).map_err(|e| (None, e))?;
            self.report_unmatched(st, &unmatched.into_inner());
            match m.kind.as_str() {
                "secret" => {
                    let id = if !m.source.is_empty() {
                        m.source.clone()
                    } else if !m.id.is_empty() {
                        m.id.clone()
                    } else {
                        base_name(&m.target)
                    };
                    let target = if m.target.is_empty() && m.env.is_none() {
                        format!("/run/secrets/{}", base_name(&id))
                    } else {
                        m.target.clone()
                    };
                    if let Some(name) = &m.env {
                        out.secret_env.push(pb::SecretEnv {
                            id: id.clone(),
                            name: name.clone(),
                            optional: !m.required,
                        });
                    }
                    if !target.is_empty() {
                        let mut spec = MountSpec::bind(&target, None);
                        spec.mount_type = pb::MountType::Secret;
                        spec.secret = Some(pb::SecretOpt {
                            id,
                            uid: m.uid.unwrap_or(0),
                            gid: m.gid.unwrap_or(0),
                            mode: m.mode.unwrap_or(0o400),
                            optional: !m.required,
                        });
                        out.mounts.push(spec);
                    }
                    continue;
                }
                "ssh" => {
                    let target = if m.target.is_empty() {
                        format!("/run/buildkit/ssh_agent.{ssh_count}")
                    } else {
                        m.target.clone()
                    };
                    ssh_count += 1;
                    let mut spec = MountSpec::bind(&target, None);
                    spec.mount_type = pb::MountType::Ssh;
                    // Without `id=` the op names no id; the worker reads that as `default`
                    // (BuildKit's `sshforward.DefaultID`), as BuildKit's frontend leaves it.
                    spec.ssh = Some(pb::SshOpt {
                        id: m.id.clone(),
                        uid: m.uid.unwrap_or(0),
                        gid: m.gid.unwrap_or(0),
                        mode: m.mode.unwrap_or(0o600),
                        optional: !m.required,
                    });
                    out.mounts.push(spec);
                    continue;
                }
                _ => {}
            }
            let target = if m.target.starts_with('/') {
                clean(&m.target)
            } else {
                join(&join("/", &st.cwd), &m.target)
            };
            if target == "/" {
                return Err((
                    None,
                    ErrorKind::BadFlag(format!("invalid mount target {target:?}")),
                ));
            }
            let mut source: Option<Out> = match (&m.from, m.kind.as_str()) {
                (_, "tmpfs") => None,
                (None, "cache") => None,
                (None, _) => {
                    self.ctx_paths.insert(join("/", &m.source));
                    self.context()?
                }
                (Some(from), _) => match sources.get(i).copied().flatten() {
                    Some(fs) => {
                        out.from_paths.push((i, join("/", &m.source)));
                        fs
                    }
                    None => {
                        return Err((
                            None,
                            ErrorKind::BadFlag(format!(
                                "cannot mount from stage `{from}` to `{target}`, stage needs to be defined before current command"
                            )),
                        ));
                    }
                },
            };
            let mut spec = MountSpec::bind(&target, None);
            let src_path = join("/", &m.source);
            if src_path != "/" {
                spec.selector = src_path;
            } else if m.kind == "cache" && (m.uid.is_some() || m.gid.is_some() || m.mode.is_some())
            {
                let base = if source.is_some() {
                    0
                } else {
                    pb::FileAction::SCRATCH
                };
                let action = pb::FileAction {
                    input: base,
                    secondary_input: pb::FileAction::SCRATCH,
                    output: 0,
                    action: Some(pb::file_action::Action::Mkdir(pb::FileActionMkDir {
                        path: "/cache".into(),
                        mode: m.mode.unwrap_or(0o755) as i32,
                        make_parents: false,
                        owner: Some(pb::ChownOpt {
                            user: Some(pb::UserOpt {
                                user: Some(pb::user_opt::User::ById(m.uid.unwrap_or(0))),
                            }),
                            group: Some(pb::UserOpt {
                                user: Some(pb::user_opt::User::ById(m.gid.unwrap_or(0))),
                            }),
                        }),
                        timestamp: -1,
                    })),
                };
                let op = pb::Op {
                    op: Some(pb::op::Op::File(pb::FileOp {
                        actions: vec![action],
                    })),
                    constraints: Some(pb::WorkerConstraints::default()),
                    ..Default::default()
                };
                let md = metadata(
                    "[internal] settings cache mount permissions",
                    None,
                    &[caps::CAP_FILE_BASE],
                );
                let node = self.graph.add(op, source.into_iter().collect(), md, None);
                source = Some(Out { node, index: 0 });
                spec.selector = "/cache".into();
            }
            spec.source = source;
            spec.readonly = m.readonly;
            match m.kind.as_str() {
                "tmpfs" => {
                    spec.mount_type = pb::MountType::Tmpfs;
                    spec.tmpfs = Some(pb::TmpfsOpt { size: m.size });
                    spec.source = None;
                }
                "cache" => {
                    spec.mount_type = pb::MountType::Cache;
                    let id = if m.id.is_empty() {
                        clean(&m.target)
                    } else {
                        m.id.clone()
                    };
                    spec.cache = Some(pb::CacheOpt {
                        id: format!("/{id}"),
                        sharing: match m.sharing.as_str() {
                            "private" => pb::CacheSharingOpt::Private,
                            "locked" => pb::CacheSharingOpt::Locked,
                            _ => pb::CacheSharingOpt::Shared,
                        } as i32,
                    });
                }
                _ => {
                    if !m.readonly {
                        // Changes to a read-write bind mount are discarded (BuildKit's
                        // `ForceNoOutput` when the daemon supports it).
                        spec.no_output = true;
                    }
                }
            }
            out.mounts.push(spec);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &str) -> Result<Mount, ErrorKind> {
        parse_mount(v, &|w: &str| Ok(w.to_owned()))
    }

    #[test]
    fn parses_mounts() {
        let m = p("type=cache,target=/root/.cache,sharing=locked,mode=0700,uid=1").expect("ok");
        assert_eq!(
            (m.kind.as_str(), m.readonly, m.mode, m.uid),
            ("cache", false, Some(0o700), Some(1))
        );
        let m = p("target=/src,rw").expect("ok");
        assert_eq!((m.kind.as_str(), m.readonly), ("bind", false));
        let m = p("type=bind,target=/src").expect("ok");
        assert!(m.readonly);
        let m = p("type=secret,id=tok,required").expect("ok");
        assert!(m.required);
        assert!(p("type=nope,target=/x").is_err());
        assert!(p("type=tmpfs,target=/t,uid=1").is_err());
        assert!(p("type=bind").is_err());
        assert_eq!(
            mount_from("type=bind,from=build,target=/x").as_deref(),
            Some("build")
        );
        assert_eq!(parse_size("64m"), Some(64 * 1024 * 1024));
    }
}
