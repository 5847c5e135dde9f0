//! Exporters: turn a solved layer chain plus the frontend's image config into an image somewhere
//! a runtime can take it.
//!
//! An OCI image layout, as a tar (`type=oci,dest=FILE`) or a directory (`tar=false`); a docker
//! archive (`type=docker`, [`docker`]); the final filesystem in a directory (`type=local`,
//! [`local`]); a registry push (`type=image,push=true`, [`push`]); containerd's image store
//! (`type=containerd`, [`containerd`]). [`mediatypes`] rewrites a
//! manifest with Docker's media types (`oci-mediatypes=false`); [`compression`] gives an image
//! other layer blobs (`compression=`, `compression-level=`, `force-compression=`).
//! Outputs are written to a temporary name beside the destination and renamed at the end, so a
//! failed export never leaves a half-written file under the name the user asked for.

pub mod attestation;
pub mod compression;
pub mod containerd;
pub mod docker;
pub mod exporter;
pub mod local;
pub mod manifest;
pub mod mediatypes;
pub mod push;
pub mod sink;
pub mod spec;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::blobs::{BlobError, BlobStore, digest_hex};
use crate::layer::{Entry, EntryKind, TarWriter};
pub use manifest::{Descriptor, ImageManifest, assemble, index_for};

/// Errors of the exporters.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Writing the output failed.
    #[error("export to {path}: {source}")]
    Io {
        /// The output path.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// A blob the image needs is missing or unreadable.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The image could not be assembled.
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    /// Writing an output stream failed.
    #[error("writing the output: {0}")]
    Stream(io::Error),
}

const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Writes `img` as an OCI image layout tar at `dest`, naming it `names` in `index.json`.
pub fn write_oci_archive(
    dest: &Path,
    img: &ImageManifest,
    store: &BlobStore,
    names: &[String],
) -> Result<(), ExportError> {
    write_layout_archive(dest, img, store, names, &[])
}

/// Writes an OCI image layout tar (blobs, `oci-layout`, `index.json`) plus `extra` top-level
/// files to a temporary file beside `dest`, renamed to `dest` when complete.
pub(crate) fn write_layout_archive(
    dest: &Path,
    img: &ImageManifest,
    store: &BlobStore,
    names: &[String],
    extra: &[(&str, Vec<u8>)],
) -> Result<(), ExportError> {
    let err = |source| ExportError::Io {
        path: dest.to_path_buf(),
        source,
    };
    let mut out = sink::HostFile::create(dest).map_err(err)?;
    write_layout_tar(&mut out, img, store, names, extra)?;
    out.commit_blocking().map_err(err)
}

/// Writes an OCI image layout tar (blobs, `oci-layout`, `index.json`) plus `extra` top-level
/// files to `out`. Layer blobs are streamed from the store; one whose size changes while it is
/// copied fails the export.
pub fn write_layout_tar(
    out: &mut dyn Write,
    img: &ImageManifest,
    store: &BlobStore,
    names: &[String],
    extra: &[(&str, Vec<u8>)],
) -> Result<(), ExportError> {
    let err = ExportError::Stream;
    let mut tw = TarWriter::new(out);
    let file_entry = |path: &str| Entry::new(path.as_bytes().to_vec(), EntryKind::File, 0o644);
    for d in ["blobs", "blobs/sha256"] {
        tw.append_header(&Entry::new(d.as_bytes().to_vec(), EntryKind::Dir, 0o755))
            .map_err(err)?;
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut buf = vec![0u8; 1 << 16];
    for layer in &img.layers {
        if !seen.insert(layer.digest.clone()) {
            continue;
        }
        let mut f = store.open_blob(&layer.digest)?;
        let len = f.metadata().map_err(err)?.len();
        let mut e = file_entry(&format!("blobs/sha256/{}", digest_hex(&layer.digest)?));
        e.size = len;
        tw.append_header(&e).map_err(err)?;
        loop {
            let n = f.read(&mut buf).map_err(err)?;
            if n == 0 {
                break;
            }
            tw.write_data(&buf[..n]).map_err(err)?;
        }
        // Fails when the blob shrank while it was copied.
        tw.finish_entry().map_err(err)?;
    }
    for (desc, bytes) in [
        (&img.config_desc, &img.config),
        (&img.manifest_desc, &img.manifest),
    ] {
        tw.append_bytes(
            &file_entry(&format!("blobs/sha256/{}", digest_hex(&desc.digest)?)),
            bytes,
        )
        .map_err(err)?;
    }
    tw.append_bytes(&file_entry("oci-layout"), OCI_LAYOUT)
        .map_err(err)?;
    tw.append_bytes(
        &file_entry("index.json"),
        &index_for(&img.manifest_desc, names, &img.config),
    )
    .map_err(err)?;
    for (name, bytes) in extra {
        tw.append_bytes(&file_entry(name), bytes).map_err(err)?;
    }
    let out = tw.finish().map_err(err)?;
    out.flush().map_err(err)?;
    Ok(())
}

/// Writes `img` as an OCI image layout directory at `dest` (created if missing; blobs already
/// present are kept, `index.json` is replaced).
pub fn write_oci_dir(
    dest: &Path,
    img: &ImageManifest,
    store: &BlobStore,
    names: &[String],
) -> Result<(), ExportError> {
    let err = |source| ExportError::Io {
        path: dest.to_path_buf(),
        source,
    };
    let blobs = dest.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(err)?;
    let put =
        |digest: &str, write: &dyn Fn(&mut File) -> io::Result<()>| -> Result<(), ExportError> {
            let final_path = blobs.join(digest_hex(digest)?);
            if final_path.exists() {
                return Ok(());
            }
            let mut tmp = tempfile::Builder::new()
                .prefix(".tmp-")
                .tempfile_in(&blobs)
                .map_err(err)?;
            write(tmp.as_file_mut()).map_err(err)?;
            tmp.persist(&final_path).map_err(|e| err(e.error))?;
            Ok(())
        };
    for layer in &img.layers {
        let src = store.path(&layer.digest)?;
        put(&layer.digest, &|f| {
            io::copy(&mut File::open(&src)?, f).map(|_| ())
        })?;
    }
    put(&img.config_desc.digest, &|f| f.write_all(&img.config))?;
    put(&img.manifest_desc.digest, &|f| f.write_all(&img.manifest))?;
    fs::write(dest.join("oci-layout"), OCI_LAYOUT).map_err(err)?;
    let idx = dest.join("index.json");
    let tmp = dest.join(".index.json.tmp");
    fs::write(&tmp, index_for(&img.manifest_desc, names, &img.config)).map_err(err)?;
    fs::rename(&tmp, &idx).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{LayerOptions, write_layer};

    fn image(store: &BlobStore) -> ImageManifest {
        let up = tempfile::tempdir().unwrap();
        fs::write(up.path().join("hello.txt"), "hi\n").unwrap();
        let l = write_layer(up.path(), store, LayerOptions::default()).unwrap();
        assemble(br#"{"config":{"Cmd":["cat","/hello.txt"]}}"#, &[l]).unwrap()
    }

    #[test]
    fn oci_archive_has_layout_index_and_blobs() {
        let s = tempfile::tempdir().unwrap();
        let store = BlobStore::open(s.path()).unwrap();
        let img = image(&store);
        let out = tempfile::tempdir().unwrap();
        let dest = out.path().join("img.tar");
        write_oci_archive(&dest, &img, &store, &["docker.io/library/t:1".into()]).unwrap();
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(File::open(&dest).unwrap());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            if let Some(h) = p.strip_prefix("blobs/sha256/")
                && !h.is_empty()
            {
                assert_eq!(crate::blobs::sha256_digest(&data), format!("sha256:{h}"));
            }
            names.push(p);
        }
        assert!(names.contains(&"oci-layout".to_string()));
        assert!(names.contains(&"index.json".to_string()));
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with("blobs/sha256/") && n.len() > 20)
                .count(),
            3
        );
        // Only the finished file is left in the directory.
        assert_eq!(fs::read_dir(out.path()).unwrap().count(), 1);
    }

    #[test]
    fn oci_dir_layout() {
        let s = tempfile::tempdir().unwrap();
        let store = BlobStore::open(s.path()).unwrap();
        let img = image(&store);
        let out = tempfile::tempdir().unwrap();
        write_oci_dir(out.path(), &img, &store, &[]).unwrap();
        let idx: serde_json::Value =
            serde_json::from_slice(&fs::read(out.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(
            idx["manifests"][0]["digest"],
            serde_json::json!(img.manifest_desc.digest)
        );
        assert!(
            out.path()
                .join("blobs/sha256")
                .join(digest_hex(&img.config_desc.digest).unwrap())
                .is_file()
        );
    }
}
