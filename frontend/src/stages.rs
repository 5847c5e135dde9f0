//! Stages: global `ARG`s and build-arg overrides, predefined platform args, base names,
//! `--target`, and which stages are reachable from the target (only those are lowered).

use std::collections::{BTreeMap, BTreeSet};

use crate::error::{ErrorKind, Location};
use crate::instructions::{Command, Dockerfile, Instruction};
use crate::named_context::{NamedContext, lookup_image, lookup_stage};
use crate::platform::Platform;
use crate::shell::{EnvGetter, EnvList, Lexer};

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Base {
    /// `FROM scratch`.
    Scratch,
    /// An image reference as written after expansion (not yet normalized).
    Image(String),
    /// An earlier stage.
    Stage(usize),
    /// A named context: `key` in [`crate::BuildOptions::named_contexts`]. With
    /// `replaces_stage` it stands for the whole stage (`context:STAGE`), whose instructions
    /// are not lowered; else for the image the stage starts from (or a `--from` reads).
    Context { key: String, replaces_stage: bool },
}

/// What named-context look-ups need: the contexts and the target platform (the platform of a
/// stage without `--platform`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Contexts<'a> {
    pub named: &'a BTreeMap<String, NamedContext>,
    pub platform: &'a Platform,
}

/// One stage after name resolution. Stages past the Dockerfile's own are images used by
/// `COPY --from=<image>` (they have no commands).
#[derive(Debug, Clone)]
pub(crate) struct StageInfo {
    /// `AS` name.
    pub name: Option<String>,
    /// Name in progress output: the `AS` name or `stage-N`.
    pub display: String,
    /// What it starts from.
    pub base: Base,
    /// `--platform` after expansion.
    pub platform: Option<Platform>,
    /// Stages it reads from (`COPY --from`), besides its base.
    pub deps: BTreeSet<usize>,
    /// Where its `FROM` (or the `COPY --from`) is.
    pub location: Location,
    /// Index into `Dockerfile::stages`, `None` for `--from` images.
    pub source: Option<usize>,
    /// The `FROM` line as written (empty for `--from` images).
    pub original: String,
}

impl StageInfo {
    /// The stage is replaced by a named context (`context:NAME` for its `AS NAME`).
    pub(crate) fn replaced(&self) -> bool {
        matches!(
            self.base,
            Base::Context {
                replaces_stage: true,
                ..
            }
        )
    }
}

/// The resolved stage graph.
#[derive(Debug, Clone)]
pub(crate) struct StageGraph {
    pub stages: Vec<StageInfo>,
    /// `(stage, command index)` → stage index of its `--from` source.
    pub copy_sources: BTreeMap<(usize, usize), usize>,
    /// `(stage, command index, mount index)` → stage index of a `RUN --mount` `from=`.
    pub mount_sources: BTreeMap<(usize, usize, usize), usize>,
    pub target: usize,
    pub reachable: BTreeSet<usize>,
}

/// Predefined args (`BUILDPLATFORM`, `TARGETARCH`, …), overridable by build args.
pub(crate) fn default_args(
    platform: &Platform,
    build_args: &BTreeMap<String, String>,
    target: &str,
) -> EnvList {
    let p = platform;
    let variant = p.variant.clone().unwrap_or_default();
    let target = if target.is_empty() { "default" } else { target };
    let defaults = [
        ("BUILDPLATFORM", p.to_string()),
        ("BUILDOS", p.os.clone()),
        ("BUILDOSVERSION", String::new()),
        ("BUILDARCH", p.architecture.clone()),
        ("BUILDVARIANT", variant.clone()),
        ("TARGETPLATFORM", p.to_string()),
        ("TARGETOS", p.os.clone()),
        ("TARGETOSVERSION", String::new()),
        ("TARGETARCH", p.architecture.clone()),
        ("TARGETVARIANT", variant),
        ("TARGETSTAGE", target.to_owned()),
    ];
    let mut env = EnvList::new();
    for (k, v) in defaults {
        let v = build_args.get(k).cloned().unwrap_or(v);
        env.set(k, &v);
    }
    env
}

/// Applies the global `ARG`s (before the first `FROM`) to `args`: a build arg wins, else the
/// default, expanded with the args defined so far.
pub(crate) fn apply_meta_args(
    mut args: EnvList,
    meta: &[Instruction],
    build_args: &BTreeMap<String, String>,
    lex: &Lexer,
) -> Result<EnvList, (Location, ErrorKind)> {
    for ins in meta {
        let Command::Arg(pairs) = &ins.command else {
            continue;
        };
        for p in pairs {
            let value = match build_args.get(&p.key) {
                Some(v) => Some(v.clone()),
                None => match &p.value {
                    Some(v) => Some(
                        lex.process_word(v, &args)
                            .map_err(|e| (ins.location, ErrorKind::Shell(e)))?,
                    ),
                    None => None,
                },
            };
            if let Some(v) = value {
                args.set(&p.key, &v);
            }
        }
    }
    Ok(args)
}

/// Resolves stage bases (named contexts first, as BuildKit), `--from` sources, the target and
/// reachability.
pub(crate) fn resolve(
    df: &Dockerfile,
    global: &EnvList,
    lex: &Lexer,
    target: Option<&str>,
    contexts: Contexts<'_>,
) -> Result<StageGraph, (Option<Location>, ErrorKind)> {
    let mut stages: Vec<StageInfo> = Vec::new();
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    for (i, st) in df.stages.iter().enumerate() {
        let loc = st.location;
        let base_name = lex
            .process_word(&st.from.base, global)
            .map_err(|e| (Some(loc), ErrorKind::Shell(e)))?;
        if base_name.is_empty() {
            return Err((
                Some(loc),
                ErrorKind::BadArguments(format!(
                    "base name ({}) should not be blank: set the variables it uses with ARG before FROM or --build-arg",
                    st.from.base
                )),
            ));
        }
        let platform = match &st.from.platform {
            None => None,
            Some(p) => {
                let v = lex
                    .process_word(p, global)
                    .map_err(|e| (Some(loc), ErrorKind::Shell(e)))?;
                if v.is_empty() {
                    return Err((
                        Some(loc),
                        ErrorKind::BadArguments(format!(
                            "empty platform value from expression {p}"
                        )),
                    ));
                }
                Some(Platform::parse(&v).ok_or((Some(loc), ErrorKind::BadPlatform(v)))?)
            }
        };
        let lookup_platform = platform.as_ref().unwrap_or(contexts.platform);
        let replaced = st
            .from
            .name
            .as_deref()
            .and_then(|n| lookup_stage(contexts.named, n, lookup_platform));
        let base = if let Some(key) = replaced {
            Base::Context {
                key: key.to_owned(),
                replaces_stage: true,
            }
        } else if let Some(&b) = by_name.get(&base_name) {
            Base::Stage(b)
        } else if base_name.eq_ignore_ascii_case("scratch") {
            Base::Scratch
        } else if let Some(key) = lookup_image(contexts.named, &base_name, lookup_platform) {
            Base::Context {
                key: key.to_owned(),
                replaces_stage: false,
            }
        } else {
            Base::Image(base_name)
        };
        stages.push(StageInfo {
            name: st.from.name.clone(),
            display: st.from.name.clone().unwrap_or_else(|| format!("stage-{i}")),
            base,
            platform,
            deps: BTreeSet::new(),
            location: loc,
            source: Some(i),
            original: st.original.clone(),
        });
        if let Some(n) = &st.from.name {
            by_name.insert(n.clone(), i);
        }
    }

    let mut copy_sources = BTreeMap::new();
    let mut mount_sources = BTreeMap::new();
    let mut images: BTreeMap<String, usize> = BTreeMap::new();
    for (si, st) in df.stages.iter().enumerate() {
        if stages[si].replaced() {
            // Its instructions are not lowered, so they read from nothing.
            continue;
        }
        for (ci, ins) in st.commands.iter().enumerate() {
            let froms: Vec<(Option<usize>, String)> = match &ins.command {
                Command::Copy(c) => c.from.iter().map(|f| (None, f.clone())).collect(),
                Command::Run(r) => r
                    .mounts
                    .iter()
                    .enumerate()
                    .filter_map(|(mi, m)| crate::lower::mount_from(m).map(|f| (Some(mi), f)))
                    .collect(),
                _ => Vec::new(),
            };
            for (mount, from) in froms {
                let from = &from;
                let expanded = lex
                    .process_word(from, &crate::shell::EmptyEnv)
                    .map_err(|e| (Some(ins.location), ErrorKind::Shell(e)))?;
                if &expanded != from {
                    return Err((
                    Some(ins.location),
                    ErrorKind::BadFlag(
                        "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround".into(),
                    ),
                ));
                }
                let dep = if let Ok(idx) = from.parse::<i64>() {
                    if idx < 0 || idx as usize >= stages.len() {
                        return Err((Some(ins.location), ErrorKind::BadStageIndex(from.clone())));
                    }
                    idx as usize
                } else if let Some(&i) = by_name.get(&from.to_ascii_lowercase()) {
                    i
                } else if let Some(&i) = images.get(from) {
                    i
                } else {
                    let i = stages.len();
                    let base = match lookup_image(contexts.named, from, contexts.platform) {
                        Some(key) => Base::Context {
                            key: key.to_owned(),
                            replaces_stage: false,
                        },
                        None => Base::Image(from.clone()),
                    };
                    stages.push(StageInfo {
                        name: None,
                        display: String::new(),
                        base,
                        platform: None,
                        deps: BTreeSet::new(),
                        location: ins.location,
                        source: None,
                        original: String::new(),
                    });
                    images.insert(from.clone(), i);
                    i
                };
                stages[si].deps.insert(dep);
                match mount {
                    None => copy_sources.insert((si, ci), dep),
                    Some(mi) => mount_sources.insert((si, ci, mi), dep),
                };
            }
        }
    }
    if stages.len() == 1 {
        stages[0].display = String::new();
    }

    let target = match target.filter(|t| !t.is_empty()) {
        None => df.stages.len().saturating_sub(1),
        Some(t) => match by_name.get(&t.to_ascii_lowercase()) {
            Some(&i) => i,
            None => {
                let known: Vec<String> = by_name.keys().cloned().collect();
                return Err((
                    None,
                    ErrorKind::UnknownTarget {
                        target: t.to_owned(),
                        known: if known.is_empty() {
                            "none named".into()
                        } else {
                            known.join(", ")
                        },
                    },
                ));
            }
        },
    };

    let mut reachable = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(s) = todo.pop() {
        if !reachable.insert(s) {
            continue;
        }
        if let Base::Stage(b) = stages[s].base {
            todo.push(b);
        }
        todo.extend(stages[s].deps.iter().copied());
    }
    Ok(StageGraph {
        stages,
        copy_sources,
        mount_sources,
        target,
        reachable,
    })
}

/// Reads `SOURCE_DATE_EPOCH` from build args or global args.
pub(crate) fn source_date_epoch(
    build_args: &BTreeMap<String, String>,
    global: &EnvList,
) -> Option<i64> {
    let v = build_args
        .get("SOURCE_DATE_EPOCH")
        .map(String::as_str)
        .or_else(|| global.get("SOURCE_DATE_EPOCH"))?;
    v.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    fn graph(src: &str, target: Option<&str>) -> StageGraph {
        graph_with(src, target, &BTreeMap::new())
    }

    fn graph_with(
        src: &str,
        target: Option<&str>,
        named: &BTreeMap<String, NamedContext>,
    ) -> StageGraph {
        let (df, _) = parse(src, "Dockerfile").expect("parses");
        let lex = Lexer::new(df.escape);
        let p = Platform::new("linux", "amd64", None);
        let global = apply_meta_args(
            default_args(&p, &BTreeMap::new(), ""),
            &df.meta_args,
            &BTreeMap::new(),
            &lex,
        )
        .expect("args");
        resolve(
            &df,
            &global,
            &lex,
            target,
            Contexts {
                named,
                platform: &p,
            },
        )
        .expect("resolves")
    }

    #[test]
    fn reachability_skips_unused_stages() {
        let g = graph(
            "FROM busybox AS a\nFROM busybox AS unused\nFROM a AS b\nCOPY --from=0 /x /y\n",
            None,
        );
        assert_eq!(g.target, 2);
        assert_eq!(g.reachable, [0, 2].into_iter().collect());
        let g = graph("FROM busybox AS a\nFROM busybox AS b\n", Some("A"));
        assert_eq!(g.reachable, [0].into_iter().collect());
    }

    #[test]
    fn global_args_expand_base_names() {
        let g = graph(
            "ARG REG=127.0.0.1:5000\nFROM ${REG}/library/busybox:latest\n",
            None,
        );
        assert_eq!(
            g.stages[0].base,
            Base::Image("127.0.0.1:5000/library/busybox:latest".into())
        );
        assert_eq!(g.stages[0].display, "");
    }

    #[test]
    fn copy_from_image_adds_a_stage() {
        let g = graph("FROM scratch\nCOPY --from=busybox /bin/sh /sh\n", None);
        assert_eq!(g.stages.len(), 2);
        assert_eq!(g.stages[1].base, Base::Image("busybox".into()));
        assert!(g.reachable.contains(&1));
    }

    #[test]
    fn named_contexts_replace_stages_and_images() {
        let img = |r: &str| NamedContext::Image {
            reference: r.into(),
        };
        let named: BTreeMap<String, NamedContext> = [
            ("build".to_owned(), img("a")),
            ("busybox".to_owned(), img("b")),
            ("tools::linux/amd64".to_owned(), img("c")),
            ("tools".to_owned(), img("d")),
        ]
        .into();
        let g = graph_with(
            "FROM scratch AS helper\n\
             FROM docker.io/library/busybox:latest AS build\n\
             COPY --from=helper /x /x\n\
             FROM build\n\
             COPY --from=tools /t /t\n\
             COPY --from=build /b /b\n",
            None,
            &named,
        );
        let ctx = |key: &str, replaces_stage: bool| Base::Context {
            key: key.into(),
            replaces_stage,
        };
        // `context:build` replaces the stage (not its `FROM busybox`); the stage's own
        // `COPY --from=helper` is not lowered, so `helper` is unreachable.
        assert_eq!(g.stages[1].base, ctx("build", true));
        assert!(g.stages[1].deps.is_empty());
        assert_eq!(g.stages[2].base, Base::Stage(1));
        assert_eq!(g.stages[3].base, ctx("tools::linux/amd64", false));
        assert_eq!(g.copy_sources[&(2, 1)], 1);
        assert_eq!(g.reachable, [1, 2, 3].into_iter().collect());
        // A FROM image finds the context by its short name.
        let g = graph_with("FROM busybox:latest\n", None, &named);
        assert_eq!(g.stages[0].base, ctx("busybox", false));
        // `FROM busybox` is the stage `busybox`, which the context replaces.
        let g = graph_with("FROM scratch AS busybox\nFROM busybox\n", None, &named);
        assert_eq!(g.stages[0].base, ctx("busybox", true));
        assert_eq!(g.stages[1].base, Base::Stage(0));
    }

    #[test]
    fn predefined_args() {
        let p = Platform::new("linux", "arm64", None);
        let env = default_args(&p, &BTreeMap::new(), "");
        assert_eq!(env.get("TARGETPLATFORM"), Some("linux/arm64"));
        assert_eq!(env.get("TARGETARCH"), Some("arm64"));
        assert_eq!(env.get("TARGETSTAGE"), Some("default"));
    }
}
