//! Docker image manifest v2 schema 2 media types, for `oci-mediatypes=false`.
//!
//! The config bytes stay the same (Docker's image config and OCI's are one format); the manifest
//! is rewritten with Docker's media types, so its digest changes.

use serde_json::Value;

use crate::export::manifest::{Descriptor, ImageManifest};

/// The image cannot be expressed with Docker's media types.
#[derive(Debug, thiserror::Error)]
#[error("oci-mediatypes=false: {0}")]
pub struct MediaTypeError(String);

/// Docker's manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker's config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker's gzip layer media type.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The zstd layer media type containerd (and BuildKit, with `compression=zstd` and
/// `oci-mediatypes=false`) uses in Docker manifests. Docker's manifest specification does not
/// define one; runtimes built on containerd read it.
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";

/// The Docker media type for an (OCI or Docker) layer media type; `None` when Docker has none.
/// zstd gets containerd's [`DOCKER_LAYER_ZSTD`], as BuildKit does.
pub fn docker_layer_type(media_type: &str) -> Option<&'static str> {
    Some(match media_type {
        "application/vnd.oci.image.layer.v1.tar+gzip" | DOCKER_LAYER_GZIP => DOCKER_LAYER_GZIP,
        "application/vnd.oci.image.layer.v1.tar+zstd" | DOCKER_LAYER_ZSTD => DOCKER_LAYER_ZSTD,
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => {
            "application/vnd.docker.image.rootfs.diff.tar"
        }
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
        }
        _ => return None,
    })
}

/// The OCI media type for an (OCI or Docker) layer media type: what a layer inherited from a
/// Docker-typed base image is called inside an OCI manifest (the bytes are the same).
pub fn oci_layer_type(media_type: &str) -> &str {
    match media_type {
        DOCKER_LAYER_GZIP => "application/vnd.oci.image.layer.v1.tar+gzip",
        DOCKER_LAYER_ZSTD => "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar" => "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        }
        other => other,
    }
}

/// `img` with Docker v2s2 media types in its manifest (and a new manifest digest).
pub fn to_docker(img: &ImageManifest) -> Result<ImageManifest, MediaTypeError> {
    let bad = MediaTypeError;
    let mut m: Value = serde_json::from_slice(&img.manifest).map_err(|e| bad(e.to_string()))?;
    let obj = m
        .as_object_mut()
        .ok_or_else(|| bad("manifest is not an object".into()))?;
    obj.insert("mediaType".into(), Value::String(DOCKER_MANIFEST.into()));
    if let Some(c) = obj.get_mut("config").and_then(Value::as_object_mut) {
        c.insert("mediaType".into(), Value::String(DOCKER_CONFIG.into()));
    }
    let mut layers = img.layers.clone();
    if let Some(ls) = obj.get_mut("layers").and_then(Value::as_array_mut) {
        for (l, blob) in ls.iter_mut().zip(layers.iter_mut()) {
            let t = docker_layer_type(&blob.media_type).ok_or_else(|| {
                bad(format!(
                    "layer `{}` has media type `{}`, which Docker's manifest format cannot express",
                    blob.digest, blob.media_type
                ))
            })?;
            if let Some(o) = l.as_object_mut() {
                o.insert("mediaType".into(), Value::String(t.into()));
            }
            blob.media_type = t.into();
        }
    }
    let manifest = serde_json::to_vec(&m).map_err(|e| bad(e.to_string()))?;
    Ok(ImageManifest {
        config: img.config.clone(),
        config_desc: Descriptor {
            media_type: DOCKER_CONFIG.into(),
            ..img.config_desc.clone()
        },
        manifest_desc: Descriptor::of(DOCKER_MANIFEST, &manifest),
        manifest,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::assemble;
    use crate::layer::LayerBlob;

    #[test]
    fn docker_layers_get_oci_names() {
        assert_eq!(
            oci_layer_type(DOCKER_LAYER_GZIP),
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(
            oci_layer_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }

    #[test]
    fn rewrites_every_media_type() {
        let l = LayerBlob {
            digest: format!("sha256:{}", "1".repeat(64)),
            diff_id: format!("sha256:{}", "2".repeat(64)),
            size: 10,
            media_type: crate::layer::MEDIA_TYPE_LAYER_GZIP.into(),
        };
        let oci = assemble(br#"{"config":{}}"#, std::slice::from_ref(&l)).unwrap();
        let d = to_docker(&oci).unwrap();
        let v: Value = serde_json::from_slice(&d.manifest).unwrap();
        assert_eq!(v["mediaType"], DOCKER_MANIFEST);
        assert_eq!(v["config"]["mediaType"], DOCKER_CONFIG);
        assert_eq!(v["config"]["digest"], oci.config_desc.digest.as_str());
        assert_eq!(v["layers"][0]["mediaType"], DOCKER_LAYER_GZIP);
        assert_eq!(v["layers"][0]["digest"], l.digest.as_str());
        assert_eq!(d.config, oci.config);
        assert_ne!(d.manifest_desc.digest, oci.manifest_desc.digest);
        assert_eq!(
            d.manifest_desc.digest,
            crate::blobs::sha256_digest(&d.manifest)
        );
        assert_eq!(d.layers[0].media_type, DOCKER_LAYER_GZIP);
        // Deterministic.
        assert_eq!(to_docker(&oci).unwrap().manifest, d.manifest);

        // zstd gets containerd's Docker-style zstd type (BuildKit's mapping) and back.
        let zstd = LayerBlob {
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            ..l.clone()
        };
        let d = to_docker(&assemble(b"{}", &[zstd]).unwrap()).unwrap();
        let v: Value = serde_json::from_slice(&d.manifest).unwrap();
        assert_eq!(v["layers"][0]["mediaType"], DOCKER_LAYER_ZSTD);
        assert_eq!(
            oci_layer_type(DOCKER_LAYER_ZSTD),
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        let plain = LayerBlob {
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            ..l.clone()
        };
        let d = to_docker(&assemble(b"{}", &[plain]).unwrap()).unwrap();
        let v: Value = serde_json::from_slice(&d.manifest).unwrap();
        assert_eq!(
            v["layers"][0]["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar"
        );
        // A media type Docker's format has no name for is refused, naming it.
        let odd = LayerBlob {
            media_type: "application/vnd.example.layer".into(),
            ..l
        };
        let err = to_docker(&assemble(b"{}", &[odd]).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("application/vnd.example.layer"),
            "{err}"
        );
    }
}
