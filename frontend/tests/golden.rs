//! Golden tests: `testdata/{parse,lower,errors}/<case>/Dockerfile` against `expected`.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test -p memobuild-frontend --test golden`.
//!
//! A case may have an `options` file with lines `target=NAME`, `build-arg=K=V`,
//! `dockerignore=PATTERN`, `session=ID`, `platform=os/arch[/variant]`, `context=NAME`,
//! `local-exclude=CONTEXT=PATTERN` (a pattern of the `local:` named context `CONTEXT`), and
//! `attr=KEY=VALUE`: BuildKit frontend attributes, read first with
//! `BuildOptions::from_frontend_attrs` (an error there is the case's error).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use memobuild_frontend::{
    BuildOptions, ImageResolver, NamedContext, Platform, ResolvedImage, build, parse,
};
use memobuild_proto::pb;
use prost::Message;

/// A registry stand-in: every image exists (except names containing `missing`), with a config
/// that has `PATH` and `Cmd ["/bin/sh"]`, and a digest derived from the reference. Images named
/// `…onbuild…` carry ONBUILD triggers in their config (see [`onbuild_triggers`]). The config
/// names the platform asked for, except for `…otherarch…` (always `linux/arm64/v8`),
/// `…winimage…` (`windows` 10.0.17763.1 on amd64) and `…noplatform…` (no OS or architecture).
struct FakeResolver;

/// The `OnBuild` list of the fake images: `onbuild-from` reads from a stage named `helper`,
/// `onbuild-bad` has a trigger that does not parse, any other `onbuild` image sets a variable,
/// runs a command and copies from the context.
fn onbuild_triggers(reference: &str) -> Vec<&'static str> {
    if reference.contains("onbuild-from") {
        vec!["COPY --from=helper /out /from-helper"]
    } else if reference.contains("onbuild-bad") {
        vec!["RUN echo ok", "RUN --bogus echo never"]
    } else if reference.contains("onbuild") {
        vec![
            "ENV TRIGGERED=yes",
            "RUN echo triggered by $TRIGGERED",
            "COPY app.txt /app/",
        ]
    } else {
        Vec::new()
    }
}

fn fake_digest(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut out = String::new();
    for round in 0..4u64 {
        for b in s.bytes().chain(round.to_le_bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x1000_0000_01b3);
        }
        write!(out, "{h:016x}").expect("write to string");
    }
    format!("sha256:{out}")
}

impl ImageResolver for FakeResolver {
    fn resolve_image_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, String> {
        if reference.contains("missing") {
            return Err(format!("{reference}: not found"));
        }
        let mut config = serde_json::json!({
            "architecture": platform.architecture,
            "os": platform.os,
            "created": "2024-01-01T00:00:00Z",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["/bin/sh"],
                "OnBuild": onbuild_triggers(reference),
            },
            "rootfs": {"type": "layers", "diff_ids": [fake_digest(&format!("layer {reference}"))]},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "ADD rootfs.tar / # fake"}],
        });
        let fields = [
            (
                "otherarch",
                serde_json::json!({"os": "linux", "architecture": "arm64", "variant": "v8"}),
            ),
            (
                "winimage",
                serde_json::json!({"os": "windows", "architecture": "amd64", "os.version": "10.0.17763.1"}),
            ),
            ("noplatform", serde_json::json!({})),
        ];
        for (name, platform) in fields {
            if reference.contains(name)
                && let (Some(c), Some(p)) = (config.as_object_mut(), platform.as_object())
            {
                c.remove("os");
                c.remove("architecture");
                c.extend(p.clone());
            }
        }
        Ok(ResolvedImage {
            digest: fake_digest(reference),
            config: serde_json::to_vec(&config).expect("json"),
        })
    }
}

fn cases(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(kind);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("testdata dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("Dockerfile").exists())
        .collect();
    out.sort();
    out
}

fn options(case: &Path) -> Result<BuildOptions, String> {
    let amd64 = Platform::new("linux", "amd64", None);
    let Ok(text) = std::fs::read_to_string(case.join("options")) else {
        return Ok(BuildOptions::new(amd64));
    };
    let lines: Vec<(&str, &str)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_once('=').expect("key=value option"))
        .collect();
    let attrs: BTreeMap<String, String> = lines
        .iter()
        .filter(|(k, _)| *k == "attr")
        .map(|(_, v)| {
            let (a, b) = v.split_once('=').unwrap_or((v, ""));
            (a.to_owned(), b.to_owned())
        })
        .collect();
    let parsed = BuildOptions::from_frontend_attrs(&attrs, amd64).map_err(|e| e.to_string())?;
    let mut o = parsed.options;
    for (k, v) in lines {
        match k {
            "attr" => {}
            "target" => o.target = Some(v.to_owned()),
            "build-arg" => {
                let (a, b) = v.split_once('=').unwrap_or((v, ""));
                o.build_args.insert(a.to_owned(), b.to_owned());
            }
            "dockerignore" => o.dockerignore.push(v.to_owned()),
            "session" => o.session_id = Some(v.to_owned()),
            "context" => o.context_name = v.to_owned(),
            "platform" => o.platform = Platform::parse(v).expect("platform"),
            "local-exclude" => {
                let (name, pattern) = v.split_once('=').expect("CONTEXT=PATTERN");
                match o.named_contexts.get_mut(name) {
                    Some(NamedContext::Local { excludes, .. }) => excludes.push(pattern.to_owned()),
                    _ => panic!("no local named context {name}"),
                }
            }
            other => panic!("unknown option {other}"),
        }
    }
    Ok(o)
}

fn short(d: &str) -> &str {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    &hex[..12.min(hex.len())]
}

fn platform(p: &Option<pb::Platform>) -> String {
    match p {
        None => "-".into(),
        Some(p) if p.variant.is_empty() => format!("{}/{}", p.os, p.architecture),
        Some(p) => format!("{}/{}/{}", p.os, p.architecture, p.variant),
    }
}

fn chown(o: &Option<pb::ChownOpt>) -> String {
    let one = |u: &Option<pb::UserOpt>| match u.as_ref().and_then(|u| u.user.as_ref()) {
        None => "-".to_owned(),
        Some(pb::user_opt::User::ById(n)) => n.to_string(),
        Some(pb::user_opt::User::ByName(n)) => format!("{}@{}", n.name, n.input),
    };
    match o {
        None => String::new(),
        Some(c) => format!(" owner={}:{}", one(&c.user), one(&c.group)),
    }
}

/// One readable block per op, in definition order.
fn dump_definition(def: &pb::Definition) -> String {
    let mut s = String::new();
    let n = def.def.len();
    for (i, bytes) in def.def.iter().enumerate() {
        let digest = memobuild_proto::digest_of(bytes);
        let op = pb::Op::decode(bytes.as_slice()).expect("op decodes");
        let inputs: Vec<String> = op
            .inputs
            .iter()
            .map(|i| format!("{}:{}", short(&i.digest), i.index))
            .collect();
        if i + 1 == n {
            writeln!(s, "terminal {} -> {}", short(&digest), inputs.join(" ")).expect("write");
            continue;
        }
        write!(s, "{} ", short(&digest)).expect("write");
        match &op.op {
            Some(pb::op::Op::Source(src)) => {
                writeln!(
                    s,
                    "source {} platform={}",
                    src.identifier,
                    platform(&op.platform)
                )
                .expect("write");
                for (k, v) in &src.attrs {
                    writeln!(s, "    attr {k}={v}").expect("write");
                }
            }
            Some(pb::op::Op::Exec(e)) => {
                let m = e.meta.clone().unwrap_or_default();
                writeln!(
                    s,
                    "exec platform={} inputs=[{}]",
                    platform(&op.platform),
                    inputs.join(" ")
                )
                .expect("write");
                writeln!(s, "    args={:?}", m.args).expect("write");
                writeln!(s, "    env={:?}", m.env).expect("write");
                writeln!(
                    s,
                    "    cwd={:?} user={:?} network={} security={} removeMountStubsRecursive={}",
                    m.cwd, m.user, e.network, e.security, m.remove_mount_stubs_recursive
                )
                .expect("write");
                if let Some(p) = &m.proxy_env {
                    writeln!(s, "    proxy={p:?}").expect("write");
                }
                if !m.extra_hosts.is_empty() {
                    let hosts: Vec<String> = m
                        .extra_hosts
                        .iter()
                        .map(|h| format!("{}={}", h.host, h.ip))
                        .collect();
                    writeln!(s, "    extraHosts={}", hosts.join(",")).expect("write");
                }
                for mt in &e.mounts {
                    writeln!(
                        s,
                        "    mount dest={} input={} output={} selector={:?} readonly={} type={}{}{}{}{}",
                        mt.dest,
                        mt.input,
                        mt.output,
                        mt.selector,
                        mt.readonly,
                        mt.mount_type,
                        mt.cache_opt.as_ref().map(|c| format!(" cache={}:{}", c.id, c.sharing)).unwrap_or_default(),
                        mt.tmpfs_opt.as_ref().map(|t| format!(" tmpfs={}", t.size)).unwrap_or_default(),
                        mt.secret_opt.as_ref().map(|t| format!(" secret={}:{}:{}:{:o}:{}", t.id, t.uid, t.gid, t.mode, t.optional)).unwrap_or_default(),
                        mt.ssh_opt.as_ref().map(|t| format!(" ssh={}:{}:{}:{:o}:{}", t.id, t.uid, t.gid, t.mode, t.optional)).unwrap_or_default(),
                    )
                    .expect("write");
                }
                for se in &e.secretenv {
                    writeln!(
                        s,
                        "    secretenv {}={} optional={}",
                        se.name, se.id, se.optional
                    )
                    .expect("write");
                }
            }
            Some(pb::op::Op::File(f)) => {
                writeln!(
                    s,
                    "file platform={} inputs=[{}]",
                    platform(&op.platform),
                    inputs.join(" ")
                )
                .expect("write");
                for a in &f.actions {
                    write!(
                        s,
                        "    [in={} sec={} out={}] ",
                        a.input, a.secondary_input, a.output
                    )
                    .expect("write");
                    match &a.action {
                        Some(pb::file_action::Action::Copy(c)) => writeln!(
                            s,
                            "copy {} -> {} mode={}{} follow={} dirContents={} unpack={} createDest={} wildcard={} emptyWildcard={} ts={}{}{}{}{}",
                            c.src,
                            c.dest,
                            c.mode,
                            if c.mode_str.is_empty() { String::new() } else { format!(" modeStr={}", c.mode_str) },
                            c.follow_symlink,
                            c.dir_copy_contents,
                            c.attempt_unpack_docker_compatibility,
                            c.create_dest_path,
                            c.allow_wildcard,
                            c.allow_empty_wildcard,
                            c.timestamp,
                            chown(&c.owner),
                            if c.include_patterns.is_empty() { String::new() } else { format!(" include={:?}", c.include_patterns) },
                            if c.exclude_patterns.is_empty() { String::new() } else { format!(" exclude={:?}", c.exclude_patterns) },
                            if c.required_paths.is_empty() { String::new() } else { format!(" required={:?}", c.required_paths) },
                        ),
                        Some(pb::file_action::Action::Mkdir(m)) => writeln!(
                            s,
                            "mkdir {} mode={:o} parents={} ts={}{}",
                            m.path, m.mode, m.make_parents, m.timestamp, chown(&m.owner)
                        ),
                        Some(pb::file_action::Action::Mkfile(m)) => writeln!(
                            s,
                            "mkfile {} mode={:o} ts={} data={:?}{}",
                            m.path, m.mode, m.timestamp, String::from_utf8_lossy(&m.data), chown(&m.owner)
                        ),
                        other => writeln!(s, "{other:?}"),
                    }
                    .expect("write");
                }
            }
            Some(pb::op::Op::Merge(m)) => {
                let ins: Vec<String> = m
                    .inputs
                    .iter()
                    .map(|i| {
                        usize::try_from(i.input)
                            .ok()
                            .and_then(|i| inputs.get(i).cloned())
                            .unwrap_or_else(|| format!("?{}", i.input))
                    })
                    .collect();
                writeln!(
                    s,
                    "merge platform={} inputs=[{}]",
                    platform(&op.platform),
                    ins.join(" ")
                )
                .expect("write");
            }
            other => writeln!(s, "{other:?}").expect("write"),
        }
        if let Some(md) = def.metadata.get(&digest) {
            if md.ignore_cache {
                writeln!(s, "    ignore_cache").expect("write");
            }
            for (k, v) in &md.description {
                writeln!(s, "    desc {k}={v}").expect("write");
            }
            if let Some(g) = &md.progress_group {
                writeln!(
                    s,
                    "    progress group id={} name={:?} weak={}",
                    g.id, g.name, g.weak
                )
                .expect("write");
            }
            let caps: Vec<&str> = md.caps.keys().map(String::as_str).collect();
            writeln!(s, "    caps {}", caps.join(",")).expect("write");
        }
        if let Some(locs) = def
            .source
            .as_ref()
            .and_then(|src| src.locations.get(&digest))
        {
            {
                for l in &locs.locations {
                    for r in &l.ranges {
                        let line = |p: &Option<pb::Position>| p.as_ref().map_or(0, |p| p.line);
                        writeln!(s, "    loc {}-{}", line(&r.start), line(&r.end)).expect("write");
                    }
                }
            }
        }
    }
    if let Some(md) = def.metadata.iter().find(|(d, _)| {
        def.def
            .last()
            .is_some_and(|b| memobuild_proto::digest_of(b) == **d)
    }) {
        let caps: Vec<&str> = md.1.caps.keys().map(String::as_str).collect();
        writeln!(s, "    caps {}", caps.join(",")).expect("write");
    }
    s
}

fn check(case: &Path, actual: &str) {
    let expected_path = case.join("expected");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&expected_path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
        panic!(
            "missing {}; run with UPDATE_GOLDEN=1",
            expected_path.display()
        )
    });
    assert_eq!(expected, actual, "golden mismatch for {}", case.display());
}

#[test]
fn parse_cases() {
    for case in cases("parse") {
        let text = std::fs::read_to_string(case.join("Dockerfile")).expect("read");
        let actual = match parse(&text, "Dockerfile") {
            Ok((df, warnings)) => {
                let mut s = format!("{df:#?}\n");
                for w in warnings {
                    writeln!(s, "warning: {w}").expect("write");
                }
                s
            }
            Err(e) => format!("error: {e}\n"),
        };
        check(&case, &actual);
    }
}

#[test]
fn lower_cases() {
    for case in cases("lower") {
        let text = std::fs::read_to_string(case.join("Dockerfile")).expect("read");
        let opts = options(&case).unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let out = build(&text, &opts, &FakeResolver)
            .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let mut s = dump_definition(&out.definition);
        let cfg: serde_json::Value =
            serde_json::from_slice(&out.image_config).expect("config json");
        writeln!(
            s,
            "\n# image config\n{}",
            serde_json::to_string_pretty(&cfg).expect("json")
        )
        .expect("write");
        for w in &out.warnings {
            writeln!(s, "warning: {w}").expect("write");
        }
        // Determinism: a second run gives the same bytes.
        let again = build(&text, &opts, &FakeResolver).expect("builds twice");
        assert_eq!(again.definition, out.definition, "{}", case.display());
        assert_eq!(again.image_config, out.image_config, "{}", case.display());
        check(&case, &s);
    }
}

#[test]
fn error_cases() {
    for case in cases("errors") {
        let text = std::fs::read_to_string(case.join("Dockerfile")).expect("read");
        let actual = match options(&case) {
            Err(e) => format!("options: {e}\n"),
            Ok(opts) => match build(&text, &opts, &FakeResolver) {
                Ok(_) => "no error\n".to_owned(),
                Err(e) => format!("{e}\n"),
            },
        };
        assert!(!actual.trim_end().contains('\n'), "one line: {actual}");
        check(&case, &actual);
    }
}
