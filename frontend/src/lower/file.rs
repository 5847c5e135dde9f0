//! FileOps: `WORKDIR` (mkdir), `COPY` and `ADD` (copy actions from the context, stages, URLs and
//! git repositories), inline heredoc files.

use memobuild_proto::{attr, caps, pb};

use crate::error::ErrorKind;
use crate::instructions::{AddCmd, CopyCmd, Instruction, SourcesAndDest};
use crate::lint;
use crate::lower::dispatch::{Lowerer, Res};
use crate::lower::git::parse_git_ref;
use crate::lower::graph::Out;
use crate::lower::naming::{go_quote, prefix_command, process_cmd_env, uppercase_cmd};
use crate::lower::paths::{clean, join, normalize, normalize_workdir, relative_to_workdir};
use crate::lower::source::metadata;
use crate::lower::state::StageState;
use crate::stages::StageGraph;

/// `--chmod`: octal bits or a symbolic mode string.
enum Chmod {
    Keep,
    Octal(i32),
    Symbolic(String),
}

fn parse_chmod(s: &str) -> Res<Chmod> {
    if s.is_empty() {
        return Ok(Chmod::Keep);
    }
    let bad = || {
        (
            None,
            ErrorKind::BadFlag(format!(
                "invalid chmod parameter: '{s}'. it should be octal string and between 0 and 07777"
            )),
        )
    };
    if s.chars().all(|c| c.is_ascii_digit()) {
        let v = u32::from_str_radix(s, 8).map_err(|_| bad())?;
        if v > 0o7777 {
            return Err(bad());
        }
        return Ok(Chmod::Octal(v as i32));
    }
    let clause_ok = |c: &str| {
        let rest = c.trim_start_matches(['u', 'g', 'o', 'a']);
        !rest.is_empty()
            && rest.split_inclusive(['+', '-', '=']).count() > 0
            && rest.starts_with(['+', '-', '='])
            && rest.chars().all(|ch| "+-=rwxXstugo".contains(ch))
    };
    if s.split(',').all(clause_ok) {
        Ok(Chmod::Symbolic(s.to_owned()))
    } else {
        Err((
            None,
            ErrorKind::BadFlag(format!(
                "invalid chmod parameter: '{s}': expected octal (0755) or symbolic (u+x,go-w) mode"
            )),
        ))
    }
}

/// `--chown` / `USER` for file actions: numeric ids or names resolved in input `base`.
fn chown(user: &str, base: i64) -> Option<pb::ChownOpt> {
    if user.is_empty() {
        return None;
    }
    let one = |v: &str| -> pb::UserOpt {
        let id = if v == "root" {
            Some(0)
        } else {
            v.parse::<i32>().ok().map(|n| n as u32)
        };
        pb::UserOpt {
            user: Some(match id {
                Some(n) => pb::user_opt::User::ById(n),
                None => pb::user_opt::User::ByName(pb::NamedUserOpt {
                    name: v.to_owned(),
                    input: base,
                }),
            }),
        }
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    Some(pb::ChownOpt {
        user: Some(one(u)),
        group: g.map(one),
    })
}

fn file_op(actions: Vec<pb::FileAction>) -> pb::Op {
    pb::Op {
        op: Some(pb::op::Op::File(pb::FileOp { actions })),
        platform: None,
        constraints: Some(pb::WorkerConstraints::default()),
        ..Default::default()
    }
}

/// A copy action's source: a filesystem and a path in it.
struct CopySource {
    fs: Option<Out>,
    copy: pb::FileActionCopy,
}

impl Lowerer<'_> {
    pub(crate) fn workdir(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        path: &str,
    ) -> Res<()> {
        if !st.workdir_set && !path.starts_with('/') {
            self.warnings.push(lint::warning(
                lint::WORKDIR_RELATIVE_PATH,
                format!(
                    "Relative workdir {} can have unexpected results if the base image changes",
                    go_quote(path)
                ),
                Some(ins.location),
            ));
        }
        st.workdir_set = true;
        let wd = normalize_workdir(&st.image.config.working_dir, path);
        st.image.config.working_dir = wd.clone();
        st.cwd = wd.clone();
        if wd == "/" {
            st.commit(format!("WORKDIR {wd}"), false, false);
            return Ok(());
        }
        let (inputs, base) = match st.root {
            Some(r) => (vec![r], 0),
            None => (Vec::new(), pb::FileAction::SCRATCH),
        };
        let timestamp = self.epoch.map_or(-1, |e| e.saturating_mul(1_000_000_000));
        let action = pb::FileAction {
            input: base,
            secondary_input: pb::FileAction::SCRATCH,
            output: 0,
            action: Some(pb::file_action::Action::Mkdir(pb::FileActionMkDir {
                path: clean(&wd),
                mode: 0o755,
                make_parents: true,
                owner: chown(&st.image.config.user, base),
                timestamp,
            })),
        };
        let name = prefix_command(
            st,
            &uppercase_cmd(&process_cmd_env(&self.lex, &ins.original, &st.env)),
        );
        let md = metadata(&name, Some(&ins.original), &[caps::CAP_FILE_BASE]);
        let node = self
            .graph
            .add(file_op(vec![action]), inputs, md, Some(ins.location));
        st.root = Some(Out { node, index: 0 });
        st.commit(format!("WORKDIR {wd}"), true, false);
        Ok(())
    }

    /// A scratch filesystem holding one file (heredoc bodies).
    pub(crate) fn inline_file(
        &mut self,
        st: &StageState,
        name: &str,
        mode: i32,
        data: &str,
    ) -> Out {
        let action = pb::FileAction {
            input: pb::FileAction::SCRATCH,
            secondary_input: pb::FileAction::SCRATCH,
            output: 0,
            action: Some(pb::file_action::Action::Mkfile(pb::FileActionMkFile {
                path: normalize("/", name, false),
                mode,
                data: data.as_bytes().to_vec(),
                owner: None,
                timestamp: -1,
            })),
        };
        let _ = st;
        let md = metadata(
            "[internal] preparing inline document",
            None,
            &[caps::CAP_FILE_BASE],
        );
        let node = self.graph.add(file_op(vec![action]), Vec::new(), md, None);
        Out { node, index: 0 }
    }

    pub(crate) fn copy(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        c: &CopyCmd,
        from: Option<usize>,
        sg: &StageGraph,
    ) -> Res<Vec<String>> {
        let source_fs = match from {
            None => None,
            Some(i) => {
                let Some(src) = self.states.get(i).and_then(Option::as_ref) else {
                    return Err((
                        None,
                        ErrorKind::StageDefinedLater {
                            from: c.from.clone().unwrap_or_default(),
                            stage: if st.display.is_empty() {
                                sg.stages
                                    .get(i)
                                    .map(|s| s.display.clone())
                                    .unwrap_or_default()
                            } else {
                                st.display.clone()
                            },
                        },
                    ));
                };
                Some(src.root)
            }
        };
        self.copy_like(
            st,
            ins,
            &c.paths,
            CopyFlags {
                chown: &c.chown,
                chmod: &c.chmod,
                excludes: &c.excludes,
                parents: c.parents,
                link: c.link,
                add: false,
                unpack: None,
                checksum: "",
                keep_git_dir: false,
            },
            source_fs,
        )
    }

    pub(crate) fn add(&mut self, st: &mut StageState, ins: &Instruction, a: &AddCmd) -> Res<()> {
        self.copy_like(
            st,
            ins,
            &a.paths,
            CopyFlags {
                chown: &a.chown,
                chmod: &a.chmod,
                excludes: &a.excludes,
                parents: false,
                link: a.link,
                add: true,
                unpack: a.unpack,
                checksum: &a.checksum,
                keep_git_dir: a.keep_git_dir.unwrap_or(false),
            },
            None,
        )
        .map(|_| ())
    }

    /// COPY and ADD. `source_fs`: `None` = the build context, `Some(fs)` = `--from` stage
    /// output (`Some(None)` = a stage that is still scratch). Returns the expanded sources.
    fn copy_like(
        &mut self,
        st: &mut StageState,
        ins: &Instruction,
        paths: &SourcesAndDest,
        flags: CopyFlags<'_>,
        source_fs: Option<Option<Out>>,
    ) -> Res<Vec<String>> {
        let chown_s = self.expand(st, flags.chown)?;
        let chmod_s = self.expand(st, flags.chmod)?;
        let mut sources = Vec::new();
        for s in &paths.sources {
            sources.push(self.expand(st, s)?);
        }
        let dest_raw = self.expand(st, &paths.dest)?;
        let dest = relative_to_workdir(&st.cwd, &dest_raw);
        let chmod = parse_chmod(&chmod_s)?;
        if !flags.checksum.is_empty() {
            if !flags.add {
                return Err((
                    None,
                    ErrorKind::BadFlag("checksum can't be specified for COPY".into()),
                ));
            }
            if sources.len() != 1 || !is_http(&sources[0]) {
                return Err((
                    None,
                    ErrorKind::BadFlag("--checksum requires exactly one HTTP(S) source".into()),
                ));
            }
        }
        let mut history = String::from(if flags.add { "ADD" } else { "COPY" });
        if flags.parents {
            history.push_str(" --parents");
        }
        if !chown_s.is_empty() {
            history.push_str(&format!(" --chown={chown_s}"));
        }
        if !chmod_s.is_empty() {
            history.push_str(&format!(" --chmod={chmod_s}"));
        }
        let raw_name = uppercase_cmd(&process_cmd_env(&self.lex, &ins.original, &st.env));
        let name = prefix_command(st, &raw_name);
        // BuildKit's `COPY --link` (without `--chmod`): the copy is made on scratch and merged
        // onto the stage, so it does not depend on (or invalidate with) the layers below.
        let link = flags.link && chmod_s.is_empty();
        let base = if st.root.is_some() && !link {
            0
        } else {
            pb::FileAction::SCRATCH
        };
        let owner = chown(&chown_s, base);
        let (mode, mode_str) = match &chmod {
            Chmod::Keep => (pb::FileActionCopy::KEEP_MODE, String::new()),
            Chmod::Octal(m) => (*m, String::new()),
            Chmod::Symbolic(s) => (0, s.clone()),
        };
        let mut cap_list = vec![caps::CAP_FILE_BASE];
        if !mode_str.is_empty() {
            cap_list.push(caps::CAP_FILE_COPY_MODESTRING);
        }
        if !flags.excludes.is_empty() || flags.parents {
            cap_list.push(caps::CAP_FILE_COPY_INCLUDEEXCLUDEPATTERNS);
        }
        let mut copies: Vec<CopySource> = Vec::new();
        for src in &sources {
            history.push_str(&format!(" {src}"));
            if let Some(g) = parse_git_ref(src) {
                if !flags.add {
                    return Err((
                        None,
                        ErrorKind::BadArguments("source can't be a git ref for COPY".into()),
                    ));
                }
                // The whole checkout (or its subdir) is copied: `/` of the git source.
                let fs = self.git_source(ins, &g, flags.keep_git_dir, &name);
                copies.push(CopySource {
                    fs: Some(fs),
                    copy: pb::FileActionCopy {
                        src: "/".into(),
                        dest: dest.clone(),
                        owner: owner.clone(),
                        mode,
                        mode_str: mode_str.clone(),
                        create_dest_path: true,
                        timestamp: pb::FileActionCopy::KEEP_TIMESTAMP,
                        exclude_patterns: flags.excludes.to_vec(),
                        ..Default::default()
                    },
                });
                continue;
            }
            if is_http(src) {
                if !flags.add {
                    return Err((
                        None,
                        ErrorKind::BadArguments("source can't be a URL for COPY".into()),
                    ));
                }
                let fs = self.http_source(st, ins, src, flags.checksum, &name)?;
                let fname = http_filename(src);
                copies.push(CopySource {
                    fs: Some(fs),
                    copy: pb::FileActionCopy {
                        src: join("/", &fname),
                        dest: dest.clone(),
                        owner: owner.clone(),
                        mode,
                        mode_str: mode_str.clone(),
                        create_dest_path: true,
                        attempt_unpack_docker_compatibility: flags.unpack.unwrap_or(false),
                        timestamp: pb::FileActionCopy::KEEP_TIMESTAMP,
                        exclude_patterns: flags.excludes.to_vec(),
                        ..Default::default()
                    },
                });
                continue;
            }
            let (mut src_path, mut include, mut required) = (src.clone(), Vec::new(), Vec::new());
            if flags.parents {
                let (parent, pattern) = match src.split_once("/./") {
                    Some((p, pat)) => (p.to_owned(), pat.to_owned()),
                    None => ("/".to_owned(), src.clone()),
                };
                let pattern = normalize("/", &pattern, false);
                if !has_wildcards(&parent) && !has_wildcards(&pattern) {
                    required.push(normalize("/", &join(&parent, &pattern), false));
                }
                include.push(pattern.trim_start_matches('/').to_owned());
                src_path = parent;
            }
            let fs = match source_fs {
                None => {
                    if lint::ignored_by_dockerignore(&self.opts.dockerignore, src) {
                        let cmd = if flags.add { "Add" } else { "Copy" };
                        self.warnings.push(lint::warning(
                            lint::COPY_IGNORED_FILE,
                            format!(
                                "Attempting to {cmd} file {} that is excluded by .dockerignore",
                                go_quote(&clean(src))
                            ),
                            Some(ins.location),
                        ));
                    }
                    self.ctx_paths.insert(join("/", src));
                    self.context()?
                }
                Some(fs) => fs,
            };
            copies.push(CopySource {
                fs,
                copy: pb::FileActionCopy {
                    src: normalize("/", &src_path, false),
                    dest: dest.clone(),
                    owner: owner.clone(),
                    mode,
                    mode_str: mode_str.clone(),
                    follow_symlink: true,
                    dir_copy_contents: true,
                    attempt_unpack_docker_compatibility: flags.unpack.unwrap_or(flags.add),
                    create_dest_path: true,
                    allow_wildcard: true,
                    allow_empty_wildcard: true,
                    timestamp: pb::FileActionCopy::KEEP_TIMESTAMP,
                    include_patterns: include,
                    exclude_patterns: flags.excludes.to_vec(),
                    required_paths: required.clone(),
                    ..Default::default()
                },
            });
            if !required.is_empty() {
                cap_list.push(caps::CAP_FILE_COPY_REQUIREDPATHS);
            }
        }
        for content in &paths.contents {
            history.push_str(&format!(" <<{}", content.path));
            let data = if content.expand {
                // BuildKit expands heredoc bodies with quotes left alone and `\` as escape.
                let mut l = crate::shell::Lexer::new('\\');
                l.skip_process_quotes = true;
                let e = l
                    .process(&content.data, &st.env)
                    .map_err(|e| (None, ErrorKind::Shell(e)))?;
                self.report_unmatched(st, &e.unmatched);
                e.result
            } else {
                content.data.clone()
            };
            let fs = self.inline_file(st, &content.path, 0o644, &data);
            copies.push(CopySource {
                fs: Some(fs),
                copy: pb::FileActionCopy {
                    src: normalize("/", &content.path, false),
                    dest: dest.clone(),
                    owner: owner.clone(),
                    mode,
                    mode_str: mode_str.clone(),
                    create_dest_path: true,
                    timestamp: pb::FileActionCopy::KEEP_TIMESTAMP,
                    exclude_patterns: flags.excludes.to_vec(),
                    ..Default::default()
                },
            });
        }
        history.push_str(&format!(" {dest_raw}"));

        // Inputs: the stage root first, then each distinct source filesystem.
        let mut inputs: Vec<Out> = if link {
            Vec::new()
        } else {
            st.root.into_iter().collect()
        };
        let mut secondaries = Vec::new();
        for c in &copies {
            let idx = match c.fs {
                None => pb::FileAction::SCRATCH,
                Some(o) => match inputs.iter().position(|i| *i == o) {
                    Some(p) => p as i64,
                    None => {
                        inputs.push(o);
                        (inputs.len() - 1) as i64
                    }
                },
            };
            secondaries.push(idx);
        }
        let n_inputs = inputs.len() as i64;
        let count = copies.len();
        let actions: Vec<pb::FileAction> = copies
            .into_iter()
            .zip(secondaries)
            .enumerate()
            .map(|(i, (c, sec))| pb::FileAction {
                input: if i == 0 {
                    base
                } else {
                    n_inputs + i as i64 - 1
                },
                secondary_input: sec,
                output: if i + 1 == count {
                    0
                } else {
                    pb::FileAction::NO_OUTPUT
                },
                action: Some(pb::file_action::Action::Copy(c.copy)),
            })
            .collect();
        cap_list.sort_unstable();
        cap_list.dedup();
        let mut md = metadata(&name, Some(&ins.original), &cap_list);
        if !link {
            let node = self
                .graph
                .add(file_op(actions), inputs, md, Some(ins.location));
            st.root = Some(Out { node, index: 0 });
            st.commit(history, true, true);
            return Ok(sources);
        }
        self.progress_groups += 1;
        let group = |weak| pb::ProgressGroup {
            id: format!("copy-link-{}", self.progress_groups),
            name: name.clone(),
            weak,
        };
        md.progress_group = Some(group(true));
        let copied = self
            .graph
            .add(file_op(actions), inputs, md, Some(ins.location));
        let copied = Out {
            node: copied,
            index: 0,
        };
        // A merge with a scratch stage is the copy itself (`llb.Merge` drops scratch inputs).
        st.root = Some(match st.root {
            None => copied,
            Some(root) => {
                st.cmd_index -= 1;
                let link_name = prefix_command(st, &format!("LINK {raw_name}"));
                let mut md = metadata(&link_name, None, &[caps::CAP_MERGEOP]);
                md.progress_group = Some(group(false));
                let merge = pb::Op {
                    op: Some(pb::op::Op::Merge(pb::MergeOp {
                        inputs: vec![pb::MergeInput { input: 0 }, pb::MergeInput { input: 1 }],
                    })),
                    platform: None,
                    constraints: Some(pb::WorkerConstraints::default()),
                    ..Default::default()
                };
                let node = self
                    .graph
                    .add(merge, vec![root, copied], md, Some(ins.location));
                Out { node, index: 0 }
            }
        });
        st.commit(history, true, true);
        Ok(sources)
    }

    /// An `https://` source op (ADD of a URL).
    fn http_source(
        &mut self,
        st: &StageState,
        ins: &Instruction,
        url: &str,
        checksum: &str,
        name: &str,
    ) -> Res<Out> {
        let mut attrs = std::collections::BTreeMap::new();
        let mut cap_list = vec![caps::CAP_SOURCE_HTTP];
        attrs.insert(attr::ATTR_HTTP_FILENAME.to_owned(), http_filename(url));
        if !checksum.is_empty() {
            let ok = checksum.split_once(':').is_some_and(|(a, h)| {
                !a.is_empty() && !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit())
            });
            if !ok {
                return Err((
                    None,
                    ErrorKind::BadFlag(format!(
                        "invalid checksum digest format `{checksum}`: expected sha256:<hex>"
                    )),
                ));
            }
            attrs.insert(attr::ATTR_HTTP_CHECKSUM.to_owned(), checksum.to_owned());
            cap_list.push(caps::CAP_SOURCE_HTTP_CHECKSUM);
        }
        let _ = st;
        let op = pb::Op {
            op: Some(pb::op::Op::Source(pb::SourceOp {
                identifier: url.to_owned(),
                attrs,
            })),
            platform: None,
            constraints: Some(pb::WorkerConstraints::default()),
            ..Default::default()
        };
        let md = metadata(name, Some(""), &cap_list);
        let node = self.graph.add(op, Vec::new(), md, Some(ins.location));
        Ok(Out { node, index: 0 })
    }
}

struct CopyFlags<'a> {
    chown: &'a str,
    chmod: &'a str,
    excludes: &'a [String],
    parents: bool,
    link: bool,
    add: bool,
    unpack: Option<bool>,
    checksum: &'a str,
    keep_git_dir: bool,
}

fn is_http(s: &str) -> bool {
    (s.starts_with("http://") || s.starts_with("https://")) && parse_git_ref(s).is_none()
}

/// The file name BuildKit gives a downloaded URL: the last path segment or `__unnamed__`.
fn http_filename(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    let path = after_scheme.split(['?', '#']).next().unwrap_or_default();
    let path = path.split_once('/').map_or("", |(_, p)| p);
    let base = clean(&format!("/{path}"));
    match base.rsplit('/').next() {
        Some(b) if !b.is_empty() && b != "." => b.to_owned(),
        _ => "__unnamed__".to_owned(),
    }
}

fn has_wildcards(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' | '?' | '[' => return true,
            '\\' => {
                chars.next();
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chmod_forms() {
        assert!(matches!(parse_chmod("755"), Ok(Chmod::Octal(0o755))));
        assert!(matches!(parse_chmod("u+x,go-w"), Ok(Chmod::Symbolic(_))));
        assert!(parse_chmod("99999").is_err());
        assert!(parse_chmod("u+q").is_err());
    }

    #[test]
    fn chown_forms() {
        let c = chown("1000:app", 0).expect("set");
        assert_eq!(
            c.user.and_then(|u| u.user),
            Some(pb::user_opt::User::ById(1000))
        );
        assert!(matches!(
            c.group.and_then(|g| g.user),
            Some(pb::user_opt::User::ByName(pb::NamedUserOpt { ref name, input: 0 })) if name == "app"
        ));
        assert!(chown("", 0).is_none());
    }

    #[test]
    fn url_names() {
        assert_eq!(
            http_filename("https://example.com/a/b.tar.gz?x=1"),
            "b.tar.gz"
        );
        assert_eq!(http_filename("https://example.com/"), "__unnamed__");
        assert_eq!(http_filename("https://example.com"), "__unnamed__");
    }
}
