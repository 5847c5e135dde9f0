//! BuildKit's frontend options through the public API: `BuildOptions` literals with
//! `..BuildOptions::new(platform)`, and what `build` makes of them where the golden cases
//! (`testdata/lower/{opts,named_context}_*`) do not look: validation of options given
//! directly, platform-specific named contexts, and the platform of a replaced stage.

use std::collections::BTreeMap;

use memobuild_frontend::{
    BuildOptions, ImageResolver, NamedContext, NetworkMode, NoCache, Platform, ResolvedImage, build,
};
use memobuild_proto::pb;
use prost::Message;

/// Every image exists; its config names the platform asked for, except `…arm…` images, which
/// are `linux/arm64`.
struct Resolver;

impl ImageResolver for Resolver {
    fn resolve_image_config(&self, r: &str, p: &Platform) -> Result<ResolvedImage, String> {
        let arch = if r.contains("arm") {
            "arm64"
        } else {
            p.architecture.as_str()
        };
        let config = serde_json::json!({
            "architecture": arch,
            "os": p.os,
            "config": {"Env": ["PATH=/bin"], "Labels": {"from": r}},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:aa"]},
        });
        Ok(ResolvedImage {
            digest: format!("sha256:{}", "b".repeat(64)),
            config: serde_json::to_vec(&config).map_err(|e| e.to_string())?,
        })
    }
}

fn amd64() -> Platform {
    Platform::new("linux", "amd64", None)
}

fn image(reference: &str) -> NamedContext {
    NamedContext::Image {
        reference: reference.into(),
    }
}

/// The non-terminal ops of a definition.
fn ops(def: &pb::Definition) -> Vec<pb::Op> {
    let n = def.def.len().saturating_sub(1);
    def.def[..n]
        .iter()
        .map(|b| pb::Op::decode(b.as_slice()).expect("op decodes"))
        .collect()
}

fn sources(def: &pb::Definition) -> Vec<(String, String)> {
    ops(def)
        .into_iter()
        .filter_map(|op| match op.op {
            Some(pb::op::Op::Source(s)) => Some((
                s.identifier,
                op.platform.map(|p| p.architecture).unwrap_or_default(),
            )),
            _ => None,
        })
        .collect()
}

fn execs(def: &pb::Definition) -> Vec<(pb::ExecOp, String)> {
    ops(def)
        .into_iter()
        .filter_map(|op| match op.op {
            Some(pb::op::Op::Exec(e)) => {
                Some((e, op.platform.map(|p| p.architecture).unwrap_or_default()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn struct_literals_default_everything_else_off() {
    let opts = BuildOptions {
        extra_hosts: vec![("Db".into(), "::FFFF:10.0.0.1".into())],
        network_mode: NetworkMode::None,
        no_cache: NoCache::Stages(vec![String::new()]),
        ..BuildOptions::new(amd64())
    };
    let out = build("FROM busybox\nRUN true\n", &opts, &Resolver).expect("builds");
    let (exec, _) = execs(&out.definition).remove(0);
    let meta = exec.meta.expect("meta");
    // Given directly, the host is kept as written and the IP written as Go prints it.
    assert_eq!(
        meta.extra_hosts,
        vec![pb::HostIp {
            host: "Db".into(),
            ip: "10.0.0.1".into()
        }]
    );
    assert_eq!(exec.network, pb::NetMode::None as i32);
    // The empty name is the unnamed stage's.
    assert!(out.definition.metadata.values().any(|m| m.ignore_cache));

    let bad = BuildOptions {
        extra_hosts: vec![("db".into(), "nope".into())],
        ..BuildOptions::new(amd64())
    };
    let e = build("FROM busybox\n", &bad, &Resolver).expect_err("bad IP");
    assert_eq!(
        e.to_string(),
        "Dockerfile: invalid add-hosts entry `db=nope`: failed to parse IP `nope`"
    );
}

#[test]
fn platform_keys_are_tried_first_for_the_stage_platform() {
    let opts = BuildOptions {
        named_contexts: BTreeMap::from([
            ("base".to_owned(), image("base:generic")),
            ("base::linux/arm64".to_owned(), image("base:arm64-only")),
        ]),
        ..BuildOptions::new(amd64())
    };
    let df = "FROM --platform=linux/arm64 base AS a\nRUN true\nFROM base\nCOPY --from=a /x /x\n";
    let out = build(df, &opts, &Resolver).expect("builds");
    let mut srcs = sources(&out.definition);
    srcs.sort();
    assert_eq!(
        srcs,
        vec![
            (
                format!(
                    "docker-image://docker.io/library/base:arm64-only@sha256:{}",
                    "b".repeat(64)
                ),
                "arm64".to_owned()
            ),
            (
                format!(
                    "docker-image://docker.io/library/base:generic@sha256:{}",
                    "b".repeat(64)
                ),
                "amd64".to_owned()
            ),
        ]
    );
    // The target's config is the context image's (its labels).
    let cfg: serde_json::Value = serde_json::from_slice(&out.image_config).expect("json");
    assert_eq!(
        cfg["config"]["Labels"]["from"],
        "docker.io/library/base:generic"
    );
}

#[test]
fn a_replaced_stage_takes_the_platform_of_its_image() {
    let opts = BuildOptions {
        named_contexts: BTreeMap::from([("build".to_owned(), image("arm-toolchain"))]),
        ..BuildOptions::new(amd64())
    };
    let df = "FROM busybox AS build\nRUN never\nFROM build\nRUN uname -m\n";
    let out = build(df, &opts, &Resolver).expect("builds");
    let execs = execs(&out.definition);
    assert_eq!(execs.len(), 1, "the replaced stage's RUN is not lowered");
    assert_eq!(execs[0].1, "arm64");
    let meta = execs[0].0.meta.clone().expect("meta");
    assert_eq!(meta.args.last().map(String::as_str), Some("uname -m"));
    // The image op itself is for the stage's platform, as BuildKit's `llb.Image`.
    assert_eq!(sources(&out.definition)[0].1, "amd64");
}

#[test]
fn copy_from_index_of_a_replaced_stage_reads_the_context() {
    let opts = BuildOptions {
        named_contexts: BTreeMap::from([(
            "deps".to_owned(),
            NamedContext::Local {
                name: "vendor".into(),
                shared_key: String::new(),
                excludes: vec!["*.tmp".into()],
            },
        )]),
        session_id: Some("s".into()),
        ..BuildOptions::new(amd64())
    };
    let df = "FROM busybox AS deps\nRUN never\nFROM scratch\nCOPY --from=0 /lib /lib\n";
    let out = build(df, &opts, &Resolver).expect("builds");
    let ops = ops(&out.definition);
    let local = ops
        .iter()
        .find_map(|op| match &op.op {
            Some(pb::op::Op::Source(s)) if s.identifier == "local://vendor" => Some(s),
            _ => None,
        })
        .expect("local source");
    assert_eq!(local.attrs["local.followpaths"], r#"["lib"]"#);
    assert_eq!(local.attrs["local.excludepatterns"], r#"["*.tmp"]"#);
    assert_eq!(local.attrs["local.sharedkeyhint"], "context:deps-");
    assert_eq!(local.attrs["local.session"], "s");
    assert!(execs(&out.definition).is_empty());
}

#[test]
fn frontend_attrs_feed_build() {
    let attrs: BTreeMap<String, String> = [
        ("label:b", "attr"),
        ("build-arg:V", "2"),
        ("target", "t"),
        ("filename", "app.Dockerfile"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let parsed = BuildOptions::from_frontend_attrs(&attrs, amd64()).expect("attrs");
    assert!(parsed.ignored.is_empty());
    let df = "FROM busybox AS t\nARG V\nLABEL a=$V b=dockerfile\nFROM scratch\n";
    let out = build(df, &parsed.options, &Resolver).expect("builds");
    let cfg: serde_json::Value = serde_json::from_slice(&out.image_config).expect("json");
    assert_eq!(cfg["config"]["Labels"]["a"], "2");
    assert_eq!(cfg["config"]["Labels"]["b"], "attr");
    let e = build("FROM", &parsed.options, &Resolver).expect_err("bad FROM");
    assert!(e.to_string().starts_with("app.Dockerfile:1:1: "), "{e}");
}
