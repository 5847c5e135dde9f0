//! `type=docker,dest=FILE`: a tar `docker load` reads, in the shape `docker save` writes since
//! Docker 25: the blobs under `blobs/sha256/`, `manifest.json` (Config, RepoTags, Layers paths)
//! for `docker load`, and `oci-layout` + `index.json` so OCI tools read the same file.
//!
//! Layers are stored as their compressed blobs; `docker load` decompresses them and checks them
//! against the config's `diff_ids`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::blobs::{BlobStore, digest_hex};
use crate::export::{ExportError, ImageManifest};

/// One entry of a docker archive's `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ArchiveManifest {
    /// Path of the config blob in the tar.
    pub config: String,
    /// `name:tag`s, in Docker's short form (`app:1`, `registry:5000/app:1`).
    pub repo_tags: Vec<String>,
    /// Paths of the layer blobs, base first.
    pub layers: Vec<String>,
}

/// The `manifest.json` for `img` named `names` (full references; those without a tag are left
/// out, as Docker can only load tags).
pub fn archive_manifest(img: &ImageManifest, names: &[String]) -> Result<Vec<u8>, ExportError> {
    let blob =
        |d: &str| -> Result<String, ExportError> { Ok(format!("blobs/sha256/{}", digest_hex(d)?)) };
    let entry = ArchiveManifest {
        config: blob(&img.config_desc.digest)?,
        repo_tags: names.iter().filter_map(|n| docker_tag(n)).collect(),
        layers: img
            .layers
            .iter()
            .map(|l| blob(&l.digest))
            .collect::<Result<_, _>>()?,
    };
    serde_json::to_vec(&[entry]).map_err(|e| ExportError::Io {
        path: "manifest.json".into(),
        source: std::io::Error::other(e),
    })
}

/// `docker.io/library/app:1` → `app:1`, `docker.io/me/app:1` → `me/app:1`; other registries
/// unchanged. `None` for digest-only references.
pub fn docker_tag(name: &str) -> Option<String> {
    let without_digest = name.split('@').next().unwrap_or(name);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    if !last.contains(':') {
        return None;
    }
    let short = without_digest
        .strip_prefix("docker.io/library/")
        .or_else(|| without_digest.strip_prefix("docker.io/"))
        .unwrap_or(without_digest);
    Some(short.to_owned())
}

/// Writes `img` as a docker archive at `dest` (via a temporary file renamed at the end): an OCI
/// layout tar plus Docker's `manifest.json`.
pub fn write_docker_archive(
    dest: &Path,
    img: &ImageManifest,
    store: &BlobStore,
    names: &[String],
) -> Result<(), ExportError> {
    let manifest = archive_manifest(img, names)?;
    crate::export::write_layout_archive(dest, img, store, names, &[("manifest.json", manifest)])
}

/// Writes `img` as a docker archive to `out`.
pub fn write_docker_tar(
    out: &mut dyn std::io::Write,
    img: &ImageManifest,
    store: &BlobStore,
    names: &[String],
) -> Result<(), ExportError> {
    let manifest = archive_manifest(img, names)?;
    crate::export::write_layout_tar(out, img, store, names, &[("manifest.json", manifest)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::assemble;
    use crate::layer::{LayerOptions, write_layer};
    use std::collections::BTreeMap;
    use std::fs::{self, File};
    use std::io::Read;

    #[test]
    fn docker_short_names() {
        assert_eq!(
            docker_tag("docker.io/library/app:1").as_deref(),
            Some("app:1")
        );
        assert_eq!(
            docker_tag("docker.io/me/app:1").as_deref(),
            Some("me/app:1")
        );
        assert_eq!(
            docker_tag("127.0.0.1:5000/e2e/app:v2").as_deref(),
            Some("127.0.0.1:5000/e2e/app:v2")
        );
        assert_eq!(docker_tag("127.0.0.1:5000/e2e/app@sha256:00"), None);
        assert_eq!(docker_tag("127.0.0.1:5000/app"), None);
    }

    #[test]
    fn archive_has_manifest_json_pointing_at_its_blobs() {
        let s = tempfile::tempdir().unwrap();
        let store = BlobStore::open(s.path()).unwrap();
        let up = tempfile::tempdir().unwrap();
        fs::write(up.path().join("hello.txt"), "hi\n").unwrap();
        let l = write_layer(up.path(), &store, LayerOptions::default()).unwrap();
        let img = assemble(
            br#"{"config":{"Cmd":["cat","/hello.txt"]}}"#,
            std::slice::from_ref(&l),
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("img.tar");
        write_docker_archive(&dest, &img, &store, &["docker.io/library/t:1".into()]).unwrap();

        let mut files = BTreeMap::new();
        let mut ar = tar::Archive::new(File::open(&dest).unwrap());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            files.insert(p, data);
        }
        let m: Vec<ArchiveManifest> = serde_json::from_slice(&files["manifest.json"]).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].repo_tags, vec!["t:1".to_string()]);
        assert_eq!(m[0].layers.len(), 1);
        let config = &files[&m[0].config];
        assert_eq!(crate::blobs::sha256_digest(config), img.config_desc.digest);
        let layer = &files[&m[0].layers[0]];
        assert_eq!(crate::blobs::sha256_digest(layer), l.digest);
        // Docker's key order and spelling.
        let text = String::from_utf8(files["manifest.json"].clone()).unwrap();
        assert!(text.starts_with(r#"[{"Config":"blobs/sha256/"#), "{text}");
        assert!(text.contains(r#""RepoTags":["t:1"],"Layers":["#), "{text}");
        assert!(files.contains_key("oci-layout") && files.contains_key("index.json"));
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 1);
    }
}
