//! `frontend.outline`: what a target can be given (BuildKit's `Dockerfile2Outline` and
//! `outline.Outline`): the build arguments its stages declare, and the global ones their
//! `FROM`s use (with those global ones' own dependencies), each with its value after
//! build-arg overrides and its description (`# NAME description` above the `ARG`); the secrets
//! and ssh agents its `RUN --mount`s ask for; the target's name and description. Stages are
//! the target and what it is built from (base stages, `--from` sources).

use std::collections::{BTreeMap, BTreeSet};

use crate::error::Location;
use crate::instructions::Command;
use crate::shell::{EnvGetter, Lexer};
use crate::stages::{self, Base, StageGraph};
use crate::subrequests::json::{self, PbLocation};
use crate::subrequests::{Metadata, doc_comment, metadata, text};
use crate::{BuildOptions, FrontendError};

/// An argument as outlined.
struct Arg {
    name: String,
    value: Option<String>,
    description: String,
    location: Location,
}

/// A secret or ssh agent as outlined.
struct Need {
    name: String,
    required: bool,
    location: Location,
}

/// A global `ARG`: its outline entry and the global args its default reads.
struct Meta {
    arg: Arg,
    deps: BTreeSet<String>,
}

pub(crate) fn outline(dockerfile: &str, opts: &BuildOptions) -> Result<Metadata, FrontendError> {
    let name = opts.dockerfile_name.as_str();
    let (df, _, _) = crate::parse_unfiltered(dockerfile, name, None)?;
    let err = |(loc, kind): (Option<Location>, crate::ErrorKind)| FrontendError {
        file: name.to_owned(),
        location: loc,
        kind: Box::new(kind),
    };
    let lex = Lexer::new(df.escape);
    let target_name = crate::target_name(&df, opts.target.as_deref());
    let mut env = stages::default_args(&opts.platform, &opts.build_args, &target_name);
    let mut meta: BTreeMap<String, Meta> = BTreeMap::new();
    for ins in &df.meta_args {
        let Command::Arg(pairs) = &ins.command else {
            continue;
        };
        for p in pairs {
            let mut deps = BTreeSet::new();
            let value = match (opts.build_args.get(&p.key), &p.value) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(default)) => {
                    let e = lex
                        .process(default, &env)
                        .map_err(|e| err((Some(ins.location), crate::ErrorKind::Shell(e))))?;
                    deps = e.matched;
                    // `ARG A=${A}-x` keeps what the earlier `A` read.
                    if deps.remove(&p.key)
                        && let Some(old) = meta.get(&p.key)
                    {
                        deps.extend(old.deps.iter().cloned());
                    }
                    Some(e.result)
                }
                (None, None) => None,
            };
            if let Some(v) = &value {
                env.set(&p.key, v);
            }
            let arg = Arg {
                name: p.key.clone(),
                value,
                description: doc_comment(&ins.comments, &p.key),
                location: ins.location,
            };
            meta.insert(p.key.clone(), Meta { arg, deps });
        }
    }
    let sg = stages::resolve(
        &df,
        &env,
        &lex,
        opts.target.as_deref(),
        stages::Contexts {
            named: &opts.named_contexts,
            platform: &opts.platform,
        },
    )
    .map_err(err)?;

    let mut args: Vec<Arg> = Vec::new();
    let mut seen_args = BTreeSet::new();
    let mut used_meta = BTreeSet::new();
    let (mut secrets, mut ssh) = (Vec::new(), Vec::new());
    let (mut seen_secrets, mut seen_ssh) = (BTreeSet::new(), BTreeSet::new());
    for i in visit_order(&sg) {
        let info = &sg.stages[i];
        let Some(st) = info.source.and_then(|s| df.stages.get(s)) else {
            continue;
        };
        for word in std::iter::once(&st.from.base).chain(st.from.platform.as_ref()) {
            if let Ok(e) = lex.process(word, &env) {
                used_meta.extend(e.matched);
            }
        }
        if info.replaced() {
            continue;
        }
        for ins in &st.commands {
            match &ins.command {
                Command::Arg(pairs) => {
                    for p in pairs {
                        if !seen_args.insert(p.key.clone()) {
                            continue;
                        }
                        let value = match (opts.build_args.get(&p.key), &p.value) {
                            (Some(v), _) => Some(v.clone()),
                            (None, Some(default)) => lex.process_word(default, &env).ok(),
                            (None, None) => env.get(&p.key).map(str::to_owned),
                        };
                        args.push(Arg {
                            name: p.key.clone(),
                            value,
                            description: doc_comment(&ins.comments, &p.key),
                            location: ins.location,
                        });
                    }
                }
                Command::Run(run) => {
                    for m in &run.mounts {
                        let Ok(m) = crate::lower::parse_mount(m, &|w| Ok(w.to_owned())) else {
                            continue;
                        };
                        let (id, list, seen) = match m.kind.as_str() {
                            "secret" => {
                                let id = [&m.source, &m.id]
                                    .into_iter()
                                    .find(|s| !s.is_empty())
                                    .cloned()
                                    .unwrap_or_else(|| base_name(&m.target));
                                (id, &mut secrets, &mut seen_secrets)
                            }
                            "ssh" => {
                                let id = if m.id.is_empty() {
                                    "default".to_owned()
                                } else {
                                    m.id.clone()
                                };
                                (id, &mut ssh, &mut seen_ssh)
                            }
                            _ => continue,
                        };
                        if seen.insert(id.clone()) {
                            list.push(Need {
                                name: id,
                                required: m.required,
                                location: ins.location,
                            });
                        }
                    }
                }
                _ => {}
            }
        }
    }
    // The global args the `FROM`s use, and the global args those read in turn.
    let mut stack: Vec<String> = used_meta.into_iter().collect();
    let mut done = BTreeSet::new();
    while let Some(k) = stack.pop() {
        if !done.insert(k.clone()) {
            continue;
        }
        if let Some(m) = meta.remove(&k) {
            stack.extend(m.deps.iter().cloned());
            if seen_args.insert(k) {
                args.push(m.arg);
            }
        }
    }
    args.sort_by_key(|a| a.location.line);
    secrets.sort_by_key(|s: &Need| s.location.line);
    ssh.sort_by_key(|s: &Need| s.location.line);

    let target = sg.stages.get(sg.target);
    let stage_name = target.and_then(|t| t.name.clone()).unwrap_or_default();
    let description = target
        .and_then(|t| t.source)
        .and_then(|s| df.stages.get(s))
        .map(|s| doc_comment(&s.comments, &stage_name))
        .unwrap_or_default();
    let json = to_json(&stage_name, &description, &args, &secrets, &ssh, dockerfile);
    let text = to_text(&stage_name, &description, &args, &secrets, &ssh);
    Ok(metadata(&json, text, "1.0.0"))
}

/// The target, then what it is built from, depth first: base stage, then `--from` sources.
fn visit_order(sg: &StageGraph) -> Vec<usize> {
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stack = vec![sg.target];
    while let Some(i) = stack.pop() {
        if !seen.insert(i) {
            continue;
        }
        order.push(i);
        let Some(info) = sg.stages.get(i) else {
            continue;
        };
        // Pushed in reverse: the base is visited before the sources.
        let mut next: Vec<usize> = info.deps.iter().copied().collect();
        for ((stage, _, _), src) in &sg.mount_sources {
            if *stage == i {
                next.push(*src);
            }
        }
        next.reverse();
        if let Base::Stage(b) = info.base {
            next.push(b);
        }
        stack.extend(next);
    }
    order
}

fn base_name(p: &str) -> String {
    p.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn to_json(
    name: &str,
    description: &str,
    args: &[Arg],
    secrets: &[Need],
    ssh: &[Need],
    dockerfile: &str,
) -> json::Outline {
    let needs = |list: &[Need]| -> Vec<json::Need> {
        list.iter()
            .map(|n| json::Need {
                name: n.name.clone(),
                required: n.required,
                location: PbLocation::of(Some(&n.location)),
            })
            .collect()
    };
    json::Outline {
        name: name.to_owned(),
        description: description.to_owned(),
        args: args
            .iter()
            .map(|a| json::Arg {
                name: a.name.clone(),
                description: a.description.clone(),
                value: a.value.clone().unwrap_or_default(),
                location: PbLocation::of(Some(&a.location)),
            })
            .collect(),
        secrets: needs(secrets),
        ssh: needs(ssh),
        sources: vec![json::bytes(dockerfile)],
    }
}

/// BuildKit's `outline.PrintOutline`.
fn to_text(name: &str, description: &str, args: &[Arg], secrets: &[Need], ssh: &[Need]) -> String {
    let mut out = String::new();
    if !name.is_empty() || !description.is_empty() {
        let shown = if name.is_empty() { "(default)" } else { name };
        let mut rows = vec![vec!["TARGET:".to_owned(), shown.to_owned()]];
        if !description.is_empty() {
            rows.push(vec!["DESCRIPTION:".to_owned(), description.to_owned()]);
        }
        out.push_str(&text::table(&rows, 1));
        out.push('\n');
    }
    if !args.is_empty() {
        let mut rows = vec![vec![
            "BUILD ARG".to_owned(),
            "VALUE".to_owned(),
            "DESCRIPTION".to_owned(),
        ]];
        for a in args {
            rows.push(vec![
                a.name.clone(),
                a.value.clone().unwrap_or_default(),
                a.description.clone(),
            ]);
        }
        out.push_str(&text::table(&rows, 3));
        out.push('\n');
    }
    for (title, list) in [("SECRET", secrets), ("SSH", ssh)] {
        if list.is_empty() {
            continue;
        }
        let mut rows = vec![vec![title.to_owned(), "REQUIRED".to_owned()]];
        for n in list {
            let required = if n.required { "true" } else { "" };
            rows.push(vec![n.name.clone(), required.to_owned()]);
        }
        out.push_str(&text::table(&rows, 3));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Platform;

    fn run(df: &str, target: Option<&str>, args: &[(&str, &str)]) -> (serde_json::Value, String) {
        let opts = BuildOptions {
            target: target.map(str::to_owned),
            build_args: args
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..BuildOptions::new(Platform::new("linux", "amd64", None))
        };
        let md = outline(df, &opts).expect("outline");
        (
            serde_json::from_slice(&md["result.json"]).expect("json"),
            String::from_utf8_lossy(&md["result.txt"]).into_owned(),
        )
    }

    const DF: &str = "# REGISTRY where images come from\nARG REGISTRY=docker.io\nARG UNUSED=1\nARG TAG=3.20\nFROM ${REGISTRY}/alpine:${TAG} AS base\n# GREETING what to say\nARG GREETING=hello\nRUN --mount=type=secret,id=token,required cat /run/secrets/token\n\n# app the application\nFROM base AS app\nARG MODE\nRUN --mount=type=ssh echo $MODE\nRUN --mount=type=secret,target=/etc/npmrc cat /etc/npmrc\n\nFROM scratch AS other\nARG OTHER=1\n";

    #[test]
    fn the_targets_args_secrets_and_ssh() {
        let (json, text) = run(DF, Some("app"), &[("TAG", "3.21")]);
        let names: Vec<&str> = json["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a["name"].as_str().expect("name"))
            .collect();
        assert_eq!(names, ["REGISTRY", "TAG", "GREETING", "MODE"]);
        assert_eq!(json["name"], "app");
        assert_eq!(json["description"], "the application");
        assert_eq!(json["args"][0]["description"], "where images come from");
        assert_eq!(json["args"][1]["value"], "3.21");
        assert_eq!(json["args"][2]["value"], "hello");
        assert!(json["args"][3].get("value").is_none(), "{json}");
        assert_eq!(
            json["args"][0]["location"],
            serde_json::json!({"ranges": [{"start": {"line": 2}, "end": {"line": 2}}]})
        );
        assert_eq!(
            json["secrets"],
            serde_json::json!([
                {"name": "token", "required": true, "location": {"ranges": [{"start": {"line": 8}, "end": {"line": 8}}]}},
                {"name": "npmrc", "location": {"ranges": [{"start": {"line": 14}, "end": {"line": 14}}]}},
            ])
        );
        assert_eq!(json["ssh"][0]["name"], "default");
        assert_eq!(
            text,
            "TARGET:      app\nDESCRIPTION: the application\n\nBUILD ARG   VALUE       DESCRIPTION\nREGISTRY    docker.io   where images come from\nTAG         3.21        \nGREETING    hello       what to say\nMODE                    \n\nSECRET   REQUIRED\ntoken    true\nnpmrc    \n\nSSH       REQUIRED\ndefault   \n\n"
        );
    }

    #[test]
    fn the_default_target_is_the_last_stage() {
        let (json, text) = run(DF, None, &[]);
        assert_eq!(json["name"], "other");
        assert_eq!(json["args"][0]["name"], "OTHER");
        assert!(json.get("secrets").is_none());
        assert!(text.starts_with("TARGET: other\n\nBUILD ARG"), "{text}");
    }
}
