//! OCI image config and manifest assembly.
//!
//! The frontend hands over the image config as JSON (BuildKit's `containerimage.config`); the
//! exporter fills in what only the worker knows, the layer chain (`rootfs.diff_ids`), and makes
//! `history` agree with it. JSON is written through `serde_json::Value`, whose maps are sorted,
//! so the same inputs always give the same config digest.

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::blobs::sha256_digest;
use crate::layer::LayerBlob;

/// OCI image manifest media type.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// `sha256:` digest.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Annotations, sorted.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty", default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

impl Descriptor {
    /// The descriptor of `bytes` as `media_type`, without annotations.
    pub fn of(media_type: &str, bytes: &[u8]) -> Descriptor {
        Descriptor {
            media_type: media_type.to_owned(),
            digest: sha256_digest(bytes),
            size: bytes.len() as u64,
            annotations: Default::default(),
        }
    }
}

/// Errors assembling an image.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The frontend's config is not a JSON object.
    #[error("image config from the frontend is not valid JSON: {0}")]
    BadConfig(String),
    /// New blobs for an image's layers do not have the layers' diff IDs.
    #[error("new layer blobs do not match the image's diff IDs")]
    DiffIdsChanged,
}

/// A finished image: config and manifest bytes with their descriptors.
#[derive(Debug, Clone)]
pub struct ImageManifest {
    /// Config JSON bytes.
    pub config: Vec<u8>,
    /// Descriptor of the config.
    pub config_desc: Descriptor,
    /// Manifest JSON bytes.
    pub manifest: Vec<u8>,
    /// Descriptor of the manifest.
    pub manifest_desc: Descriptor,
    /// The layers, bottom first.
    pub layers: Vec<LayerBlob>,
}

/// Builds the config and manifest for `layers` (bottom first) from the frontend's config JSON.
pub fn assemble(
    frontend_config: &[u8],
    layers: &[LayerBlob],
) -> Result<ImageManifest, ManifestError> {
    let mut cfg: Value = if frontend_config.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(frontend_config)
            .map_err(|e| ManifestError::BadConfig(e.to_string()))?
    };
    let obj = cfg
        .as_object_mut()
        .ok_or_else(|| ManifestError::BadConfig("not an object".into()))?;
    obj.entry("architecture")
        .or_insert_with(|| Value::String(host_arch().into()));
    obj.entry("os")
        .or_insert_with(|| Value::String("linux".into()));
    obj.insert(
        "rootfs".into(),
        json!({
            "type": "layers",
            "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
        }),
    );
    let history = obj
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    obj.insert(
        "history".into(),
        Value::Array(normalize_history(history, layers.len())),
    );

    let config = serde_json::to_vec(&cfg).map_err(|e| ManifestError::BadConfig(e.to_string()))?;
    finish(config, layers)
}

/// `img` with other blobs for the same layers (another compression): the config is kept byte
/// for byte (its `diff_ids` are unchanged), the manifest is made again from the new descriptors.
pub fn with_layers(
    img: &ImageManifest,
    layers: Vec<LayerBlob>,
) -> Result<ImageManifest, ManifestError> {
    let same = img.layers.len() == layers.len()
        && img
            .layers
            .iter()
            .zip(&layers)
            .all(|(a, b)| a.diff_id == b.diff_id);
    if !same {
        return Err(ManifestError::DiffIdsChanged);
    }
    finish(img.config.clone(), &layers)
}

/// The config descriptor and the manifest for finished config bytes and `layers`.
fn finish(config: Vec<u8>, layers: &[LayerBlob]) -> Result<ImageManifest, ManifestError> {
    let config_desc = Descriptor::of(MEDIA_TYPE_CONFIG, &config);
    let manifest_value = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "config": config_desc,
        // An OCI manifest names every layer with an OCI type, also those of a Docker-typed base.
        "layers": layers.iter().map(|l| Descriptor {
            media_type: crate::export::mediatypes::oci_layer_type(&l.media_type).to_string(),
            digest: l.digest.clone(),
            size: l.size,
            annotations: Default::default(),
        }).collect::<Vec<_>>(),
    });
    let manifest =
        serde_json::to_vec(&manifest_value).map_err(|e| ManifestError::BadConfig(e.to_string()))?;
    let manifest_desc = Descriptor::of(MEDIA_TYPE_MANIFEST, &manifest);
    Ok(ImageManifest {
        config,
        config_desc,
        manifest,
        manifest_desc,
        layers: layers.to_vec(),
    })
}

/// Makes the number of history entries without `empty_layer: true` equal the number of layers,
/// as BuildKit's exporter does: missing entries are added (for layers nobody described), surplus
/// non-empty entries at the top are marked empty.
fn normalize_history(mut history: Vec<Value>, layers: usize) -> Vec<Value> {
    let is_empty = |h: &Value| {
        h.get("empty_layer")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    };
    let non_empty = history.iter().filter(|h| !is_empty(h)).count();
    if non_empty < layers {
        // Layers without a description: put entries for them where they belong, at the bottom.
        let mut extra: Vec<Value> = (0..layers - non_empty)
            .map(|_| json!({"created_by": "memobuild: layer without history"}))
            .collect();
        extra.append(&mut history);
        history = extra;
    } else if non_empty > layers {
        let mut surplus = non_empty - layers;
        for h in history.iter_mut().rev() {
            if surplus == 0 {
                break;
            }
            if !is_empty(h) {
                if let Some(o) = h.as_object_mut() {
                    o.insert("empty_layer".into(), Value::Bool(true));
                }
                surplus -= 1;
            }
        }
    }
    history
}

/// The image index listing one manifest, with the names containerd and OCI tools read.
pub fn index_for(manifest: &Descriptor, names: &[String], config: &[u8]) -> Vec<u8> {
    let mut manifests: Vec<Value> = if names.is_empty() {
        vec![serde_json::to_value(manifest).unwrap_or(Value::Null)]
    } else {
        names
            .iter()
            .map(|n| {
                let mut d = manifest.clone();
                d.annotations
                    .insert("io.containerd.image.name".into(), n.clone());
                d.annotations
                    .insert("org.opencontainers.image.ref.name".into(), ref_name(n));
                serde_json::to_value(d).unwrap_or(Value::Null)
            })
            .collect()
    };
    // The image's platform, from its config, as BuildKit puts it on the descriptor.
    if let Some(platform) = platform_of(config) {
        for m in &mut manifests {
            if let Value::Object(o) = m {
                o.insert("platform".into(), platform.clone());
            }
        }
    }
    let mut idx = Map::new();
    idx.insert("schemaVersion".into(), json!(2));
    idx.insert("mediaType".into(), json!(MEDIA_TYPE_INDEX));
    idx.insert("manifests".into(), Value::Array(manifests));
    serde_json::to_vec(&Value::Object(idx)).unwrap_or_default()
}

/// `{"architecture", "os"[, "variant"]}` of an image config; `None` when it names neither.
/// The platform an image config names, as an index descriptor's `platform`.
pub(crate) fn platform_of(config: &[u8]) -> Option<Value> {
    let cfg: Value = serde_json::from_slice(config).ok()?;
    let mut p = Map::new();
    for key in ["architecture", "os", "variant"] {
        if let Some(v) = cfg
            .get(key)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
        {
            p.insert(key.into(), json!(v));
        }
    }
    (p.contains_key("architecture") && p.contains_key("os")).then_some(Value::Object(p))
}

/// The tag (or digest) part of a full reference, as `org.opencontainers.image.ref.name` wants.
fn ref_name(name: &str) -> String {
    if let Some((_, d)) = name.split_once('@') {
        return d.to_string();
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.split_once(':') {
        Some((_, tag)) => tag.to_string(),
        None => "latest".to_string(),
    }
}

/// GOARCH name of the machine we run on.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: u8) -> LayerBlob {
        LayerBlob {
            digest: format!("sha256:{}", hex::encode([n; 32])),
            diff_id: format!("sha256:{}", hex::encode([n + 100; 32])),
            size: u64::from(n) * 10,
            media_type: crate::layer::MEDIA_TYPE_LAYER_GZIP.into(),
        }
    }

    #[test]
    fn fills_rootfs_and_is_deterministic() {
        let cfg = br#"{"os":"linux","architecture":"amd64","config":{"Env":["A=b"],"Cmd":["sh"]},
            "history":[{"created_by":"base"},{"created_by":"ENV A=b","empty_layer":true},{"created_by":"RUN x"}]}"#;
        let a = assemble(cfg, &[layer(1), layer(2)]).unwrap();
        let b = assemble(cfg, &[layer(1), layer(2)]).unwrap();
        assert_eq!(a.manifest_desc.digest, b.manifest_desc.digest);
        let v: Value = serde_json::from_slice(&a.config).unwrap();
        assert_eq!(v["rootfs"]["diff_ids"][1], json!(layer(2).diff_id));
        assert_eq!(v["config"]["Cmd"], json!(["sh"]));
        let m: Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(m["config"]["digest"], json!(a.config_desc.digest));
        assert_eq!(m["layers"][0]["digest"], json!(layer(1).digest));
        assert_eq!(m["layers"][0]["size"], json!(10));
    }

    #[test]
    fn docker_typed_base_layers_get_oci_types_in_an_oci_manifest() {
        let mut base = layer(1);
        base.media_type = crate::export::mediatypes::DOCKER_LAYER_GZIP.into();
        let img = assemble(b"{}", &[base, layer(2)]).unwrap();
        let m: Value = serde_json::from_slice(&img.manifest).unwrap();
        for l in m["layers"].as_array().unwrap() {
            assert_eq!(l["mediaType"], json!(crate::layer::MEDIA_TYPE_LAYER_GZIP));
        }
    }

    #[test]
    fn history_matches_layer_count() {
        let h = vec![json!({"created_by":"a"}), json!({"created_by":"b"})];
        let out = normalize_history(h.clone(), 3);
        assert_eq!(out.len(), 3);
        let out = normalize_history(h, 1);
        assert_eq!(out[1]["empty_layer"], json!(true));
        assert!(out[0].get("empty_layer").is_none());
    }

    #[test]
    fn index_names() {
        let d = Descriptor {
            media_type: MEDIA_TYPE_MANIFEST.into(),
            digest: "sha256:00".into(),
            size: 1,
            annotations: Default::default(),
        };
        let v: Value = serde_json::from_slice(&index_for(
            &d,
            &["docker.io/library/app:v1".into()],
            br#"{"architecture":"amd64","os":"linux"}"#,
        ))
        .unwrap();
        let ann = &v["manifests"][0]["annotations"];
        assert_eq!(
            ann["io.containerd.image.name"],
            json!("docker.io/library/app:v1")
        );
        assert_eq!(ann["org.opencontainers.image.ref.name"], json!("v1"));
        assert_eq!(
            v["manifests"][0]["platform"],
            json!({"architecture": "amd64", "os": "linux"})
        );
        assert_eq!(ref_name("127.0.0.1:5000/x"), "latest");
    }

    #[test]
    fn rejects_non_json_config() {
        assert!(assemble(b"{nope", &[]).is_err());
        assert!(assemble(b"[1]", &[]).is_err());
    }
}
