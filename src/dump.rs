//! A readable JSON rendering of an LLB Definition (`memobuild lower --format json`).

use memobuild_proto::{digest_of, pb};
use prost::Message;
use serde_json::{Value, json};

/// Renders every op with its digest, inputs and fields, then the terminal input and metadata.
pub fn definition_json(def: &pb::Definition) -> Value {
    let ops: Vec<Value> = def
        .def
        .iter()
        .map(|bytes| {
            let digest = digest_of(bytes);
            match pb::Op::decode(bytes.as_slice()) {
                Ok(op) => {
                    let mut v = op_json(&op);
                    v["digest"] = json!(digest);
                    if let Some(md) = def.metadata.get(&digest) {
                        v["description"] = json!(md.description);
                        v["caps"] = json!(md.caps.keys().collect::<Vec<_>>());
                    }
                    v
                }
                Err(e) => json!({"digest": digest, "error": e.to_string()}),
            }
        })
        .collect();
    json!({ "ops": ops })
}

fn op_json(op: &pb::Op) -> Value {
    let inputs: Vec<Value> = op
        .inputs
        .iter()
        .map(|i| json!({"digest": i.digest, "index": i.index}))
        .collect();
    let body = match &op.op {
        None => json!({"kind": "terminal"}),
        Some(pb::op::Op::Source(s)) => {
            json!({"kind": "source", "identifier": s.identifier, "attrs": s.attrs})
        }
        Some(pb::op::Op::Exec(e)) => {
            let meta = e.meta.clone().unwrap_or_default();
            json!({
                "kind": "exec",
                "args": meta.args, "env": meta.env, "cwd": meta.cwd, "user": meta.user,
                "network": e.network, "security": e.security,
                "mounts": e.mounts.iter().map(|m| json!({
                    "input": m.input, "selector": m.selector, "dest": m.dest, "output": m.output,
                    "readonly": m.readonly, "type": m.mount_type,
                })).collect::<Vec<_>>(),
            })
        }
        Some(pb::op::Op::File(f)) => json!({
            "kind": "file",
            "actions": f.actions.iter().map(|a| {
                let action = match &a.action {
                    Some(pb::file_action::Action::Copy(c)) => json!({"copy": {"src": c.src, "dest": c.dest, "mode": c.mode,
                        "followSymlink": c.follow_symlink, "dirCopyContents": c.dir_copy_contents,
                        "createDestPath": c.create_dest_path, "allowWildcard": c.allow_wildcard,
                        "allowEmptyWildcard": c.allow_empty_wildcard, "timestamp": c.timestamp,
                        "include": c.include_patterns, "exclude": c.exclude_patterns}}),
                    Some(pb::file_action::Action::Mkdir(m)) => json!({"mkdir": {"path": m.path, "mode": m.mode, "makeParents": m.make_parents, "timestamp": m.timestamp}}),
                    Some(pb::file_action::Action::Mkfile(m)) => json!({"mkfile": {"path": m.path, "mode": m.mode, "size": m.data.len()}}),
                    Some(pb::file_action::Action::Rm(r)) => json!({"rm": {"path": r.path, "allowNotFound": r.allow_not_found, "allowWildcard": r.allow_wildcard}}),
                    Some(pb::file_action::Action::Symlink(s)) => json!({"symlink": {"oldpath": s.oldpath, "newpath": s.newpath}}),
                    None => Value::Null,
                };
                json!({"input": a.input, "secondaryInput": a.secondary_input, "output": a.output, "action": action})
            }).collect::<Vec<_>>(),
        }),
        Some(other) => {
            json!({"kind": format!("{other:?}").split('(').next().unwrap_or("op").to_lowercase()})
        }
    };
    let mut v = body;
    v["inputs"] = json!(inputs);
    if let Some(p) = &op.platform {
        v["platform"] = json!(format!("{}/{}", p.os, p.architecture));
    }
    v
}
