//! `memobuild lower` writes a Definition that validates as BuildKit would load it: the bytes
//! `buildctl build` reads on stdin. Needs only the registry (base images are resolved and pinned).

mod common;

use common::{Env, Sandbox, assert_ok, memobuild, run};
use memobuild_proto::{parse_definition, pb};

#[test]
fn lower_writes_a_valid_definition_with_pinned_base() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    sb.write(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo hi > /x\nCOPY a.txt /a.txt\n",
            env.busybox()
        ),
    )
    .write("a.txt", "a");
    let mut cmd = memobuild();
    cmd.arg("lower").arg(sb.context());
    let out = run(cmd);
    assert_ok(&out, "memobuild lower");
    let def = parse_definition(&out.stdout).expect("a valid definition");
    let kinds: Vec<&str> = def
        .ops()
        .iter()
        .map(|o| match &o.op.op {
            Some(pb::op::Op::Source(s)) if s.identifier.starts_with("docker-image://") => {
                assert!(
                    s.identifier.contains("@sha256:"),
                    "base image is pinned: {}",
                    s.identifier
                );
                "image"
            }
            Some(pb::op::Op::Source(_)) => "local",
            Some(pb::op::Op::Exec(_)) => "exec",
            Some(pb::op::Op::File(_)) => "file",
            _ => "other",
        })
        .collect();
    for k in ["image", "local", "exec", "file"] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }

    let mut cmd = memobuild();
    cmd.args(["lower", "--format", "json"]).arg(sb.context());
    let out = run(cmd);
    assert_ok(&out, "memobuild lower --format json");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ops"].as_array().map(Vec::len), Some(def.ops().len() + 1));
}
