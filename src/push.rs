//! `type=image,push=true` (and `-t NAME --push`): the registry client set up with the user's
//! credentials, and the base images' repositories offered as cross-repository mount sources.

use memobuild_proto::pb;
use memobuild_worker::blobs::BlobStore;
use memobuild_worker::export::ImageManifest;
use memobuild_worker::progress::{Progress, ProgressEvent};
use memobuild_worker::registry::push::{PushOptions, Pusher};
use memobuild_worker::registry::{RegistryConfig, normalize_reference};
use prost::Message;

/// A pusher for `names`, with credentials for their registries from Docker's config and the
/// base images of `definition` as mount sources.
pub fn pusher(
    names: &[String],
    insecure: &[String],
    definition: &pb::Definition,
) -> anyhow::Result<Pusher> {
    let mut hosts = Vec::new();
    for n in names {
        let r = normalize_reference(n)?;
        for h in [r.registry(), r.resolve_registry()] {
            if !hosts.iter().any(|x: &String| x == h) {
                hosts.push(h.to_owned());
            }
        }
    }
    let credentials = crate::credentials::for_hosts(&hosts)?;
    let pusher = Pusher::new(
        RegistryConfig {
            insecure: insecure.to_vec(),
            credentials,
            ..RegistryConfig::default()
        },
        PushOptions::default(),
    )?;
    for r in base_images(definition) {
        pusher.add_mount_source(&r);
    }
    Ok(pusher)
}

/// Pushes `img` to each of `names`, reporting each manifest digest as a progress message.
pub async fn push(
    pusher: &Pusher,
    store: &BlobStore,
    img: &ImageManifest,
    names: &[String],
    progress: &Progress,
) -> anyhow::Result<()> {
    for name in names {
        progress.send(ProgressEvent::Message(format!("pushing {name}")));
        let pushed = memobuild_worker::export::push::push_image(pusher, store, img, name).await?;
        progress.send(ProgressEvent::Message(format!(
            "pushed {}@{} ({})",
            pushed.reference,
            pushed.digest,
            pushed.summary()
        )));
    }
    Ok(())
}

/// The `docker-image://` references the definition's source ops pull (digest-pinned).
fn base_images(definition: &pb::Definition) -> Vec<String> {
    let mut out = Vec::new();
    for bytes in &definition.def {
        let Ok(op) = pb::Op::decode(bytes.as_slice()) else {
            continue;
        };
        if let Some(pb::op::Op::Source(s)) = &op.op
            && let Some(r) = s.identifier.strip_prefix("docker-image://")
            && !out.iter().any(|x: &String| x == r)
        {
            out.push(r.to_owned());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_images_from_source_ops() {
        let src = |id: &str| pb::Op {
            op: Some(pb::op::Op::Source(pb::SourceOp {
                identifier: id.into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let def = pb::Definition {
            def: vec![
                src("docker-image://127.0.0.1:5000/library/busybox:latest@sha256:aa")
                    .encode_to_vec(),
                src("local://context").encode_to_vec(),
                src("docker-image://127.0.0.1:5000/library/busybox:latest@sha256:aa")
                    .encode_to_vec(),
                b"\xff garbage".to_vec(),
            ],
            ..Default::default()
        };
        assert_eq!(
            base_images(&def),
            vec!["127.0.0.1:5000/library/busybox:latest@sha256:aa".to_string()]
        );
    }
}
