//! Builds typed instructions and stages from parser nodes.

use crate::error::{ErrorKind, Location, Warning};
use crate::instructions::ast::{
    AddCmd, ArgPair, Command, CopyCmd, Dockerfile, FromCmd, HealthcheckCmd, Instruction, KeyValue,
    RunCmd, ShellCmd, SourceContent, SourcesAndDest, Stage,
};
use crate::instructions::flags::{FlagType, Flags};
use crate::lint;
use crate::parser::{
    Heredoc, JsonArgs, Node, ParsedFile, chomp_heredoc_content, node_from_line, parse_heredoc,
    parse_json_array, parse_words, split_whitespace,
};

type Res<T> = Result<T, ErrorKind>;

/// Groups parsed nodes into global ARGs and stages.
pub fn parse_dockerfile(
    file: ParsedFile,
    warnings: &mut Vec<Warning>,
) -> Result<Dockerfile, (Location, ErrorKind)> {
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &file.nodes {
        let ins = parse_command(node, file.escape, warnings).map_err(|e| (node.location, e))?;
        match ins.command {
            Command::From(from) => stages.push(Stage {
                from,
                location: ins.location,
                original: ins.original,
                comments: ins.comments,
                commands: Vec::new(),
            }),
            Command::Arg(_) if stages.is_empty() => meta_args.push(ins),
            _ => match stages.last_mut() {
                Some(stage) => stage.commands.push(ins),
                None => {
                    return Err((
                        node.location,
                        ErrorKind::MissingFrom(node.keyword.to_ascii_uppercase()),
                    ));
                }
            },
        }
    }
    Ok(Dockerfile {
        directives: file.directives,
        escape: file.escape,
        meta_args,
        stages,
    })
}

/// The instructions, for suggestions.
const INSTRUCTIONS: [&str; 18] = [
    "add",
    "arg",
    "cmd",
    "copy",
    "entrypoint",
    "env",
    "expose",
    "from",
    "healthcheck",
    "label",
    "maintainer",
    "onbuild",
    "run",
    "shell",
    "stopsignal",
    "user",
    "volume",
    "workdir",
];

/// The instruction closest to `keyword`, fewer than three edits away, written in the keyword's
/// case when that is all upper or all lower case (BuildKit's `suggest.Search`).
fn suggest_instruction(keyword: &str) -> Option<String> {
    let lower = keyword.to_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for name in INSTRUCTIONS {
        let d = strsim::levenshtein(&lower, name);
        if d < 3 && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, name));
        }
    }
    let (_, name) = best?;
    Some(if keyword == keyword.to_uppercase() {
        name.to_uppercase()
    } else {
        name.to_owned()
    })
}

fn at_least_one(kw: &str) -> ErrorKind {
    ErrorKind::BadArguments(format!("`{kw}` requires at least one argument"))
}

fn exactly_one(kw: &str) -> ErrorKind {
    ErrorKind::BadArguments(format!("`{kw}` requires exactly one argument"))
}

fn no_flags(kw: &str, node: &Node) -> Res<()> {
    Flags::parse(kw, &node.flags, &[]).map(|_| ())
}

/// Parses one node into an instruction. Its lint findings obey a `# check=` comment above it.
pub fn parse_command(node: &Node, escape: char, warnings: &mut Vec<Warning>) -> Res<Instruction> {
    let before = warnings.len();
    let parsed = parse_node(node, escape, warnings);
    if let Some(found) = warnings.get_mut(before..) {
        lint::scope_to(found, &node.comments);
    }
    parsed
}

fn parse_node(node: &Node, escape: char, warnings: &mut Vec<Warning>) -> Res<Instruction> {
    let kw = node.keyword.to_ascii_lowercase();
    let upper = kw.to_ascii_uppercase();
    let rest = node.rest.as_str();
    let command = match kw.as_str() {
        "from" => {
            let flags = Flags::parse(&upper, &node.flags, &[("platform", FlagType::String)])?;
            let args = split_whitespace(rest);
            let name = match args.len() {
                3 if args[1].eq_ignore_ascii_case("as") => {
                    let name = args[2].to_ascii_lowercase();
                    if !valid_stage_name(&name) {
                        return Err(ErrorKind::BadArguments(format!(
                            "invalid name for build stage: {:?}, name can't start with a number or contain symbols",
                            args[2]
                        )));
                    }
                    if args[2] != name {
                        warnings.push(lint::warning(
                            lint::STAGE_NAME_CASING,
                            format!("Stage name '{}' should be lowercase", args[2]),
                            Some(node.location),
                        ));
                    }
                    if !from_as_casing_matches(&node.keyword, &args[1]) {
                        warnings.push(lint::warning(
                            lint::FROM_AS_CASING,
                            format!(
                                "'{}' and '{}' keywords' casing do not match",
                                args[1], node.keyword
                            ),
                            Some(node.location),
                        ));
                    }
                    definition_description("FROM", std::slice::from_ref(&name), node, warnings);
                    Some(name)
                }
                1 => None,
                _ => {
                    return Err(ErrorKind::BadArguments(
                        "`FROM` requires either one or three arguments: `FROM image [AS name]`"
                            .into(),
                    ));
                }
            };
            Command::From(FromCmd {
                base: args[0].clone(),
                name,
                platform: flags.string("platform"),
            })
        }
        "arg" => {
            no_flags(&upper, node)?;
            let words = parse_words(rest, escape);
            if words.is_empty() {
                return Err(at_least_one("ARG"));
            }
            let mut pairs = Vec::new();
            for w in words {
                let pair = match w.split_once('=') {
                    Some(("", _)) => {
                        return Err(ErrorKind::BadArguments(
                            "`ARG` names can not be blank".into(),
                        ));
                    }
                    Some((k, v)) => ArgPair {
                        key: k.to_owned(),
                        value: Some(v.to_owned()),
                    },
                    None => ArgPair {
                        key: w,
                        value: None,
                    },
                };
                pairs.push(pair);
            }
            let keys: Vec<String> = pairs.iter().map(|p| p.key.clone()).collect();
            definition_description("ARG", &keys, node, warnings);
            Command::Arg(pairs)
        }
        "env" | "label" => {
            no_flags(&upper, node)?;
            // LegacyKeyValueFormat is reported while lowering, for reachable stages only.
            let kvs = parse_name_val(rest, &upper, escape)?;
            if kw == "env" {
                Command::Env(kvs)
            } else {
                Command::Label(kvs)
            }
        }
        "run" => {
            let flags = Flags::parse(
                &upper,
                &node.flags,
                &[
                    ("mount", FlagType::Strings),
                    ("network", FlagType::String),
                    ("security", FlagType::String),
                    ("device", FlagType::Strings),
                ],
            )?;
            let cmd = shell_cmd(rest, &node.heredocs, &upper)?;
            Command::Run(RunCmd {
                cmd,
                mounts: flags.strings("mount"),
                network: flags.string("network"),
                security: flags.string("security"),
                devices: flags.strings("device"),
            })
        }
        "cmd" => {
            no_flags(&upper, node)?;
            Command::Cmd(shell_cmd(rest, &[], &upper)?)
        }
        "entrypoint" => {
            no_flags(&upper, node)?;
            Command::Entrypoint(shell_cmd(rest, &[], &upper)?)
        }
        "shell" => {
            no_flags(&upper, node)?;
            match parse_json_array(rest) {
                JsonArgs::Array(a) if !a.is_empty() => Command::Shell(a),
                JsonArgs::Array(_) => return Err(at_least_one("SHELL")),
                JsonArgs::NotStrings => return Err(not_strings()),
                JsonArgs::NotJson if rest.is_empty() => return Err(at_least_one("SHELL")),
                JsonArgs::NotJson => {
                    return Err(ErrorKind::BadArguments(
                        "`SHELL` requires the arguments to be in JSON form: SHELL [\"executable\", \"parameters\"]"
                            .into(),
                    ));
                }
            }
        }
        "copy" => {
            let flags = Flags::parse(
                &upper,
                &node.flags,
                &[
                    ("from", FlagType::String),
                    ("chown", FlagType::String),
                    ("chmod", FlagType::String),
                    ("link", FlagType::Bool),
                    ("exclude", FlagType::Strings),
                    ("parents", FlagType::Bool),
                ],
            )?;
            let paths = sources_and_dest(rest, &node.heredocs, &upper)?;
            Command::Copy(CopyCmd {
                paths,
                from: flags.string("from"),
                chown: flags.string("chown").unwrap_or_default(),
                chmod: flags.string("chmod").unwrap_or_default(),
                link: flags.bool("link"),
                parents: flags.bool("parents"),
                excludes: flags.strings("exclude"),
            })
        }
        "add" => {
            let flags = Flags::parse(
                &upper,
                &node.flags,
                &[
                    ("chown", FlagType::String),
                    ("chmod", FlagType::String),
                    ("link", FlagType::Bool),
                    ("keep-git-dir", FlagType::Bool),
                    ("checksum", FlagType::String),
                    ("unpack", FlagType::Bool),
                    ("exclude", FlagType::Strings),
                ],
            )?;
            let paths = sources_and_dest(rest, &node.heredocs, &upper)?;
            Command::Add(AddCmd {
                paths,
                chown: flags.string("chown").unwrap_or_default(),
                chmod: flags.string("chmod").unwrap_or_default(),
                link: flags.bool("link"),
                keep_git_dir: flags.bool_opt("keep-git-dir"),
                checksum: flags.string("checksum").unwrap_or_default(),
                unpack: flags.bool_opt("unpack"),
                excludes: flags.strings("exclude"),
            })
        }
        "workdir" | "user" | "maintainer" | "stopsignal" => {
            if rest.is_empty() {
                return Err(exactly_one(&upper));
            }
            if kw != "stopsignal" {
                no_flags(&upper, node)?;
            }
            let v = rest.to_owned();
            match kw.as_str() {
                "workdir" => Command::Workdir(v),
                "user" => Command::User(v),
                "maintainer" => {
                    warnings.push(lint::warning(
                        lint::MAINTAINER_DEPRECATED,
                        "Maintainer instruction is deprecated in favor of using label".into(),
                        Some(node.location),
                    ));
                    Command::Maintainer(v)
                }
                _ => Command::StopSignal(v),
            }
        }
        "expose" => {
            let mut ports = split_whitespace(rest);
            if ports.is_empty() {
                return Err(at_least_one("EXPOSE"));
            }
            no_flags(&upper, node)?;
            ports.sort();
            Command::Expose(ports)
        }
        "volume" => {
            let vols = match parse_json_array(rest) {
                JsonArgs::Array(a) => a,
                JsonArgs::NotStrings => return Err(not_strings()),
                JsonArgs::NotJson => split_whitespace(rest),
            };
            if vols.is_empty() {
                return Err(at_least_one("VOLUME"));
            }
            no_flags(&upper, node)?;
            let mut out = Vec::new();
            for v in vols {
                let v = v.trim();
                if v.is_empty() {
                    return Err(ErrorKind::BadArguments(
                        "`VOLUME` specified can not be an empty string".into(),
                    ));
                }
                out.push(v.to_owned());
            }
            Command::Volume(out)
        }
        "healthcheck" => Command::Healthcheck(parse_healthcheck(node)?),
        "onbuild" => {
            if rest.is_empty() {
                return Err(at_least_one("ONBUILD"));
            }
            no_flags(&upper, node)?;
            let (trigger, _, _) = node_from_line(rest, escape);
            match trigger.to_ascii_uppercase().as_str() {
                "ONBUILD" => {
                    return Err(ErrorKind::BadArguments(
                        "chaining `ONBUILD` via `ONBUILD ONBUILD` isn't allowed".into(),
                    ));
                }
                t @ ("MAINTAINER" | "FROM") => {
                    return Err(ErrorKind::BadArguments(format!(
                        "`{t}` isn't allowed as an `ONBUILD` trigger"
                    )));
                }
                _ => {}
            }
            let trimmed = node.original.trim_start();
            let mut expr = trimmed
                .get(node.keyword.len()..)
                .unwrap_or_default()
                .trim_start()
                .to_owned();
            for h in &node.heredocs {
                expr.push('\n');
                expr.push_str(&h.content);
                expr.push_str(&h.name);
            }
            Command::Onbuild(expr)
        }
        _ => {
            return Err(ErrorKind::UnknownInstruction {
                keyword: node.keyword.clone(),
                suggestion: suggest_instruction(&node.keyword),
            });
        }
    };
    Ok(Instruction {
        keyword: node.keyword.clone(),
        original: node.original.clone(),
        location: node.location,
        comments: node.comments.clone(),
        command,
    })
}

/// BuildKit's `doesFromCaseMatchAsCase`: `AS` cased like a consistently cased `FROM`.
fn from_as_casing_matches(from: &str, as_kw: &str) -> bool {
    if from == from.to_ascii_lowercase() {
        as_kw == as_kw.to_ascii_lowercase()
    } else if from == from.to_ascii_uppercase() {
        as_kw == as_kw.to_ascii_uppercase()
    } else {
        true
    }
}

/// InvalidDefinitionDescription (experimental): a comment right above `FROM … AS name` or
/// `ARG name` must start with the name it describes.
fn definition_description(kw: &str, keys: &[String], node: &Node, warnings: &mut Vec<Warning>) {
    let (Some(last), Some(first)) = (node.comments.last(), keys.first()) else {
        return;
    };
    let word = last.split(' ').next().unwrap_or_default();
    if keys.iter().any(|k| k == word) {
        return;
    }
    let example = if keys.len() > 1 { "<arg_key>" } else { first };
    warnings.push(lint::warning(
        lint::INVALID_DEFINITION_DESCRIPTION,
        format!("Comment for {kw} should follow the format: `# {example} <description>`"),
        Some(node.location),
    ));
}

fn not_strings() -> ErrorKind {
    ErrorKind::BadArguments(
        "when using JSON array syntax, arrays must be comprised of strings only".into(),
    )
}

fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

fn parse_name_val(rest: &str, kw: &str, escape: char) -> Res<Vec<KeyValue>> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Err(at_least_one(kw));
    }
    if !words[0].contains('=') {
        let parts: Vec<&str> = rest
            .splitn(2, |c: char| {
                matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
            })
            .collect();
        if parts.len() < 2 {
            return Err(ErrorKind::BadArguments(format!(
                "`{kw}` must have two arguments: `{kw} key=value`"
            )));
        }
        return Ok(vec![KeyValue {
            key: parts[0].to_owned(),
            value: parts[1].trim_start_matches([' ', '\t']).to_owned(),
            no_delim: true,
        }]);
    }
    let mut out = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(ErrorKind::BadArguments(format!(
                "syntax error - can't find = in {w:?}. Must be of the form: name=value"
            )));
        };
        if k.is_empty() {
            return Err(ErrorKind::BadArguments(format!(
                "`{kw}` names can not be blank"
            )));
        }
        out.push(KeyValue {
            key: k.to_owned(),
            value: v.to_owned(),
            no_delim: false,
        });
    }
    Ok(out)
}

fn shell_cmd(rest: &str, heredocs: &[Heredoc], kw: &str) -> Res<ShellCmd> {
    let (args, json) = match parse_json_array(rest) {
        JsonArgs::Array(a) => (a, true),
        JsonArgs::NotStrings => return Err(not_strings()),
        JsonArgs::NotJson if rest.is_empty() => (Vec::new(), false),
        JsonArgs::NotJson => (vec![rest.to_owned()], false),
    };
    if kw == "RUN" && args.is_empty() {
        return Err(at_least_one(kw));
    }
    Ok(ShellCmd {
        args,
        prepend_shell: !json,
        files: heredocs.to_vec(),
    })
}

fn sources_and_dest(rest: &str, heredocs: &[Heredoc], kw: &str) -> Res<SourcesAndDest> {
    let args = match parse_json_array(rest) {
        JsonArgs::Array(a) => a,
        JsonArgs::NotStrings => return Err(not_strings()),
        JsonArgs::NotJson => split_whitespace(rest),
    };
    if args.len() < 2 {
        return Err(ErrorKind::BadArguments(format!(
            "`{kw}` requires at least two arguments, but only {} provided: expected sources and a destination",
            if args.is_empty() {
                "none was"
            } else {
                "one was"
            }
        )));
    }
    let (dest, srcs) = args.split_last().ok_or_else(|| at_least_one(kw))?;
    if parse_heredoc(dest)?.is_some() {
        return Err(ErrorKind::BadArguments(format!(
            "`{kw}` cannot accept a heredoc as a destination"
        )));
    }
    let mut sources = Vec::new();
    let mut contents = Vec::new();
    for s in srcs {
        match parse_heredoc(s)? {
            Some(h) => {
                let body = heredocs
                    .iter()
                    .find(|d| d.name == h.name)
                    .map(|d| d.content.clone())
                    .unwrap_or_default();
                let data = if h.chomp {
                    chomp_heredoc_content(&body)
                } else {
                    body
                };
                contents.push(SourceContent {
                    path: h.name,
                    data,
                    expand: h.expand,
                });
            }
            None => sources.push(s.clone()),
        }
    }
    Ok(SourcesAndDest {
        sources,
        contents,
        dest: dest.clone(),
    })
}

fn parse_duration(name: &str, v: Option<String>) -> Res<i64> {
    let Some(v) = v.filter(|v| !v.is_empty()) else {
        return Ok(0);
    };
    let d = crate::config::parse_go_duration(&v).ok_or_else(|| {
        ErrorKind::BadFlag(format!(
            "invalid duration {v:?} for --{name}: expected e.g. 30s, 1m30s"
        ))
    })?;
    if d != 0 && d < 1_000_000 {
        return Err(ErrorKind::BadFlag(format!(
            "interval --{name} cannot be less than 1ms"
        )));
    }
    Ok(d)
}

fn parse_healthcheck(node: &Node) -> Res<HealthcheckCmd> {
    let rest = node.rest.as_str();
    let (typ, cmd_rest) = match rest.find(char::is_whitespace) {
        Some(i) => (&rest[..i], rest[i..].trim_start()),
        None => (rest, ""),
    };
    if typ.is_empty() {
        return Err(at_least_one("HEALTHCHECK"));
    }
    let typ = typ.to_ascii_uppercase();
    if typ == "NONE" {
        if !cmd_rest.is_empty() {
            return Err(ErrorKind::BadArguments(
                "`HEALTHCHECK NONE` takes no arguments".into(),
            ));
        }
        return Ok(HealthcheckCmd {
            test: vec![typ],
            interval: 0,
            timeout: 0,
            start_period: 0,
            start_interval: 0,
            retries: 0,
        });
    }
    let flags = Flags::parse(
        "HEALTHCHECK",
        &node.flags,
        &[
            ("interval", FlagType::String),
            ("timeout", FlagType::String),
            ("start-period", FlagType::String),
            ("start-interval", FlagType::String),
            ("retries", FlagType::String),
        ],
    )?;
    if typ != "CMD" {
        return Err(ErrorKind::BadArguments(format!(
            "unknown type {typ:?} in `HEALTHCHECK` (try CMD)"
        )));
    }
    let (args, json) = match parse_json_array(cmd_rest) {
        JsonArgs::Array(a) => (a, true),
        JsonArgs::NotStrings => return Err(not_strings()),
        JsonArgs::NotJson if cmd_rest.is_empty() => (Vec::new(), false),
        JsonArgs::NotJson => (vec![cmd_rest.to_owned()], false),
    };
    if args.is_empty() {
        return Err(ErrorKind::BadArguments(
            "missing command after `HEALTHCHECK CMD`".into(),
        ));
    }
    let mut test = vec![if json {
        "CMD".to_owned()
    } else {
        "CMD-SHELL".to_owned()
    }];
    test.extend(args);
    let retries = match flags.string("retries").filter(|v| !v.is_empty()) {
        None => 0,
        Some(v) => {
            let r: i64 = v.parse().map_err(|_| {
                ErrorKind::BadFlag(format!(
                    "invalid value {v:?} for --retries: expected a number"
                ))
            })?;
            if r < 0 {
                return Err(ErrorKind::BadFlag(format!(
                    "--retries cannot be negative ({r})"
                )));
            }
            r
        }
    };
    Ok(HealthcheckCmd {
        test,
        interval: parse_duration("interval", flags.string("interval"))?,
        timeout: parse_duration("timeout", flags.string("timeout"))?,
        start_period: parse_duration("start-period", flags.string("start-period"))?,
        start_interval: parse_duration("start-interval", flags.string("start-interval"))?,
        retries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::parse_lines;

    fn parse(s: &str) -> Result<Dockerfile, (Location, ErrorKind)> {
        let f = parse_lines(s)?;
        parse_dockerfile(f, &mut Vec::new())
    }

    #[test]
    fn stages_and_meta_args() {
        let df = parse(
            "ARG A=1\nFROM busybox AS Build\nRUN echo\nFROM scratch\nCOPY --from=build /a /b\n",
        )
        .expect("ok");
        assert_eq!(df.meta_args.len(), 1);
        assert_eq!(df.stages.len(), 2);
        assert_eq!(df.stages[0].from.name.as_deref(), Some("build"));
        let Command::Copy(c) = &df.stages[1].commands[0].command else {
            panic!("copy expected")
        };
        assert_eq!(c.from.as_deref(), Some("build"));
        assert_eq!(c.paths.sources, vec!["/a"]);
        assert_eq!(c.paths.dest, "/b");
    }

    #[test]
    fn env_forms() {
        let df = parse("FROM a\nENV A=1 B=\"x y\"\nENV C d e\n").expect("ok");
        let Command::Env(kv) = &df.stages[0].commands[0].command else {
            panic!("env")
        };
        assert_eq!(kv[1].value, "\"x y\"");
        let Command::Env(kv) = &df.stages[0].commands[1].command else {
            panic!("env")
        };
        assert_eq!(
            (kv[0].key.as_str(), kv[0].value.as_str(), kv[0].no_delim),
            ("C", "d e", true)
        );
    }

    #[test]
    fn errors() {
        let e = parse("FORM a\n").expect_err("unknown");
        assert_eq!(
            e.1,
            ErrorKind::UnknownInstruction {
                keyword: "FORM".into(),
                suggestion: Some("FROM".into())
            }
        );
        assert_eq!(suggest_instruction("coppy").as_deref(), Some("copy"));
        assert_eq!(suggest_instruction("Coppy").as_deref(), Some("copy"));
        assert_eq!(suggest_instruction("XYZZY"), None);
        let e = parse("RUN a\n").expect_err("no from");
        assert_eq!(e.1, ErrorKind::MissingFrom("RUN".into()));
        assert!(parse("FROM a b\n").is_err());
        assert!(parse("FROM a\nCOPY x\n").is_err());
        assert!(parse("FROM a\nCOPY --bogus x y\n").is_err());
        assert!(parse("FROM a\nRUN [1]\n").is_err());
    }

    #[test]
    fn exec_and_heredoc() {
        let df = parse("FROM a\nRUN [\"echo\", \"hi\"]\nCOPY <<EOF /f\nhello\nEOF\n").expect("ok");
        let Command::Run(r) = &df.stages[0].commands[0].command else {
            panic!("run")
        };
        assert!(!r.cmd.prepend_shell);
        let Command::Copy(c) = &df.stages[0].commands[1].command else {
            panic!("copy")
        };
        assert_eq!(c.paths.contents[0].data, "hello\n");
    }
}
