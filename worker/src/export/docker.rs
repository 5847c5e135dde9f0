//! `type=docker,dest=FILE`: a tar `docker load` reads, in the shape `docker save` writes since
//! Docker 25: the blobs under `blobs/sha256/`, `manifest.json` (Config, RepoTags, Layers paths)
//! for `docker load`, and `oci-layout` + `index.json` so OCI tools read the same file.
//!
//! Layers are stored as their compressed blobs; `docker load` decompresses them and checks them
//! against the config's `diff_ids`.

use std::collections::BTreeSet;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::blobs::{BlobStore, digest_hex};
use crate::export::{ExportError, ImageManifest, OCI_LAYOUT, index_for};
use crate::layer::{Entry, EntryKind, TarWriter};

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

/// Writes `img` as a docker archive at `dest` (via a temporary file renamed at the end).
pub fn write_docker_archive(
    dest: &Path,
    img: &ImageManifest,
    store: &BlobStore,
    names: &[String],
) -> Result<(), ExportError> {
    let err = |source| ExportError::Io {
        path: dest.to_path_buf(),
        source,
    };
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".memobuild-export-")
        .tempfile_in(dir)
        .map_err(err)?;
    let file = tmp.as_file().try_clone().map_err(err)?;
    let mut tw = TarWriter::new(BufWriter::with_capacity(1 << 20, file));
    let file_entry = |path: String, size: u64| {
        let mut e = Entry::new(path.into_bytes(), EntryKind::File, 0o644);
        e.mtime = 0;
        e.size = size;
        e
    };
    for d in ["blobs", "blobs/sha256"] {
        tw.append_header(&Entry::new(d.as_bytes().to_vec(), EntryKind::Dir, 0o755))
            .map_err(err)?;
    }
    let mut seen = BTreeSet::new();
    for layer in &img.layers {
        if !seen.insert(layer.digest.clone()) {
            continue;
        }
        let mut f = store.open_blob(&layer.digest)?;
        let len = f.metadata().map_err(err)?.len();
        tw.append_header(&file_entry(
            format!("blobs/sha256/{}", digest_hex(&layer.digest)?),
            len,
        ))
        .map_err(err)?;
        let mut buf = vec![0u8; 1 << 16];
        let mut written = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(err)?;
            if n == 0 {
                break;
            }
            written += n as u64;
            tw.write_data(&buf[..n]).map_err(err)?;
        }
        if written != len {
            return Err(err(std::io::Error::other(format!(
                "layer `{}` changed size while being written",
                layer.digest
            ))));
        }
        tw.finish_entry().map_err(err)?;
    }
    for (desc, bytes) in [
        (&img.config_desc, &img.config),
        (&img.manifest_desc, &img.manifest),
    ] {
        tw.append_bytes(
            &file_entry(format!("blobs/sha256/{}", digest_hex(&desc.digest)?), 0),
            bytes,
        )
        .map_err(err)?;
    }
    tw.append_bytes(&file_entry("oci-layout".into(), 0), OCI_LAYOUT)
        .map_err(err)?;
    tw.append_bytes(
        &file_entry("index.json".into(), 0),
        &index_for(&img.manifest_desc, names),
    )
    .map_err(err)?;
    tw.append_bytes(
        &file_entry("manifest.json".into(), 0),
        &archive_manifest(img, names)?,
    )
    .map_err(err)?;
    let mut out = tw.finish().map_err(err)?;
    out.flush().map_err(err)?;
    drop(out);
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(dest).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::assemble;
    use crate::layer::{LayerOptions, write_layer};
    use std::collections::BTreeMap;
    use std::fs::{self, File};

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
