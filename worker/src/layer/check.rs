//! Checking a layer chain against the blobs it names: each blob is in the store, matches its
//! digest and size, and decompresses to the tar its diff ID names.
//!
//! A chain comes from a layer just written (right by construction), from an image config, or
//! from an action record, on disk or from a remote server, which anybody with write access could
//! have edited. The diff IDs end up in the exported image's config (`rootfs.diff_ids`), so one
//! that does not match its blob breaks the image (`umoci unpack`: "diffid mismatch") while the
//! build looks fine. Hence every record is checked before it is served, and every image before it
//! is exported. The first check of a blob decompresses and hashes it; the pair is then remembered
//! in the blob's verification stamp ([`BlobStore::remember_diff_id`]), so that a later check is a
//! `stat` and a small read. Blocking: call it from a blocking thread.

use std::collections::HashSet;
use std::fs;
use std::io::{self, BufReader};

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use crate::blobs::{BlobStore, HashReader};
use crate::export::compression::decompressed;
use crate::layer::LayerBlob;

/// Why a layer chain cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayerFault {
    /// A blob is not in the store, or was damaged (and is removed now).
    #[error("layer {digest} is not in the blob store")]
    Missing {
        /// The blob's digest.
        digest: String,
    },
    /// The chain says something of a layer that its blob contradicts.
    #[error("layer {digest} has {what} {actual}, not {claimed}")]
    Mismatch {
        /// The blob's digest.
        digest: String,
        /// `diff ID` or `size`.
        what: &'static str,
        /// What the chain says.
        claimed: String,
        /// What the blob says.
        actual: String,
    },
}

/// Checks every layer of `layers` (each distinct description once, several in parallel); the
/// first fault in chain order.
pub fn check_layers<'a>(
    store: &BlobStore,
    layers: impl IntoIterator<Item = &'a LayerBlob>,
) -> Result<(), LayerFault> {
    let mut seen = HashSet::new();
    let distinct: Vec<&LayerBlob> = layers
        .into_iter()
        .filter(|l| seen.insert((l.digest.as_str(), l.diff_id.as_str(), l.size)))
        .collect();
    // Stamped blobs take microseconds; a first check decompresses a whole layer, so a chain of
    // new base layers is worth spreading over the cores.
    let faults: Vec<Option<LayerFault>> = distinct
        .par_iter()
        .map(|l| check_layer(store, l).err())
        .collect();
    match faults.into_iter().flatten().next() {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// Checks one layer: its blob is in `store` with its digest and size, and its diff ID is the
/// sha256 of the blob decompressed (gzip, zstd or a plain tar, told apart by the first bytes).
pub fn check_layer(store: &BlobStore, layer: &LayerBlob) -> Result<(), LayerFault> {
    let digest = &layer.digest;
    let missing = || LayerFault::Missing {
        digest: digest.clone(),
    };
    let Ok(path) = store.path(digest) else {
        return Err(missing());
    };
    let Ok(md) = fs::metadata(&path) else {
        return Err(missing());
    };
    if md.len() != layer.size {
        // The chain may be what is wrong: a blob that matches its digest is kept.
        return Err(if store.verify(digest, None) {
            LayerFault::Mismatch {
                digest: digest.clone(),
                what: "size",
                claimed: layer.size.to_string(),
                actual: md.len().to_string(),
            }
        } else {
            missing()
        });
    }
    if !store.verify(digest, Some(layer.size)) {
        return Err(missing());
    }
    let actual = match store.known_diff_id(digest) {
        Some(known) => known,
        None => match hash_layer(store, digest) {
            Ok((read, diff_id)) if read == *digest => {
                store.remember_diff_id(digest, &diff_id);
                diff_id
            }
            // It changed since it verified: let the store find out and remove it.
            Ok(_) => {
                store.verify(digest, Some(layer.size));
                return Err(missing());
            }
            Err(e) => format!("none (it does not decompress: {e})"),
        },
    };
    if actual == layer.diff_id {
        return Ok(());
    }
    Err(LayerFault::Mismatch {
        digest: digest.clone(),
        what: "diff ID",
        claimed: layer.diff_id.clone(),
        actual,
    })
}

/// Reads blob `digest` once: the sha256 of its bytes and of its decompressed tar. The first
/// makes sure the second belongs to `digest` (the file could change after it verified).
fn hash_layer(store: &BlobStore, digest: &str) -> io::Result<(String, String)> {
    let file = store.open_blob(digest).map_err(io::Error::other)?;
    let mut src = HashReader::new(file);
    let diff_id = {
        let mut tar = decompressed(BufReader::with_capacity(1 << 20, &mut src))?;
        let mut h = Sha256::new();
        io::copy(&mut tar, &mut h)?;
        format!("sha256:{}", hex::encode(h.finalize()))
    };
    // Whatever the decompressor left unread (trailing bytes) is part of the blob's digest.
    io::copy(&mut src, &mut io::sink())?;
    Ok((src.finish(), diff_id))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::blobs::sha256_digest;

    fn layer_of(store: &BlobStore, blob: &[u8], tar: &[u8]) -> LayerBlob {
        LayerBlob {
            digest: store.put_bytes(blob).unwrap(),
            diff_id: sha256_digest(tar),
            size: blob.len() as u64,
            media_type: crate::layer::MEDIA_TYPE_LAYER_GZIP.into(),
        }
    }

    // Verifies: a diff ID is checked against the blob decompressed whatever its compression
    // (gzip, zstd, none); the result is remembered in the blob's stamp, so the next check reads
    // the stamp; a wrong diff ID is a mismatch naming both, and the blob stays.
    #[test]
    fn diff_ids_are_checked_for_every_compression_and_remembered() {
        let d = tempfile::tempdir().unwrap();
        let store = BlobStore::open(d.path()).unwrap();
        let tar = b"pretend this is a tar".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(tar.as_slice(), 3).unwrap();
        for blob in [gz, zst, tar.clone()] {
            let l = layer_of(&store, &blob, &tar);
            assert_eq!(store.known_diff_id(&l.digest), None);
            assert_eq!(check_layer(&store, &l), Ok(()));
            assert_eq!(store.known_diff_id(&l.digest), Some(l.diff_id.clone()));
            assert_eq!(check_layer(&store, &l), Ok(()), "from the stamp");

            let lie = LayerBlob {
                diff_id: sha256_digest(b"another tar"),
                ..l.clone()
            };
            assert_eq!(
                check_layer(&store, &lie),
                Err(LayerFault::Mismatch {
                    digest: l.digest.clone(),
                    what: "diff ID",
                    claimed: lie.diff_id.clone(),
                    actual: l.diff_id.clone(),
                })
            );
            assert!(store.verify(&l.digest, Some(l.size)), "the blob stays");
        }
    }

    // Verifies: missing and damaged blobs are `Missing` (a damaged one is removed); a wrong
    // size in the chain is a mismatch that keeps the (good) blob; a blob that is not a layer has
    // no diff ID; every distinct layer of a chain is checked and the first fault is reported.
    #[test]
    fn missing_damaged_and_odd_layers() {
        let d = tempfile::tempdir().unwrap();
        let store = BlobStore::open(d.path()).unwrap();
        let gone = LayerBlob {
            digest: sha256_digest(b"never stored"),
            diff_id: sha256_digest(b"x"),
            size: 12,
            media_type: String::new(),
        };
        assert!(matches!(
            check_layer(&store, &gone),
            Err(LayerFault::Missing { .. })
        ));

        let l = layer_of(&store, b"plain", b"plain");
        let longer = LayerBlob {
            size: 6,
            ..l.clone()
        };
        assert!(matches!(
            check_layer(&store, &longer),
            Err(LayerFault::Mismatch { what: "size", .. })
        ));
        assert!(store.verify(&l.digest, Some(5)));

        let truncated_gzip = [0x1f, 0x8b, 8, 0, 0, 0];
        let odd = layer_of(&store, &truncated_gzip, b"");
        match check_layer(&store, &odd) {
            Err(LayerFault::Mismatch { what, actual, .. }) => {
                assert_eq!(what, "diff ID");
                assert!(actual.contains("does not decompress"), "{actual}");
            }
            other => panic!("{other:?}"),
        }

        let damaged = layer_of(&store, b"damaged", b"damaged");
        fs::write(store.path(&damaged.digest).unwrap(), b"DAMAGED").unwrap();
        assert!(matches!(
            check_layer(&store, &damaged),
            Err(LayerFault::Missing { .. })
        ));
        assert!(!store.contains(&damaged.digest), "removed");

        assert_eq!(check_layers(&store, [&l, &l]), Ok(()));
        assert!(matches!(
            check_layers(&store, [&l, &longer, &gone]),
            Err(LayerFault::Mismatch { what: "size", .. })
        ));
    }
}
