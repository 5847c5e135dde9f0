//! Layer compression chosen at export time: buildx's `compression=gzip|zstd|uncompressed`,
//! `compression-level=N` and `force-compression=true` output options.
//!
//! Layers are made once, at build time, as gzip level 6 ([`crate::layer`]); the action cache and
//! the blob store keep those blobs. An output asking for something else gets, per layer, a
//! converted blob: the stored blob is decompressed (gzip, zstd or plain tar, told apart by its
//! first bytes), the tar is checked against the layer's diff ID, compressed again and stored in
//! the blob store beside the original. The image is then put together again with the new
//! descriptors ([`manifest::with_layers`]): the diff IDs do not change, so neither does the config.
//!
//! Which layers are converted follows BuildKit, where the option applies to the layers the build
//! creates and `force-compression` extends it to the layers it inherits:
//!
//! - the layers MemoBuild made (everything above the base image's layers) are converted whenever
//!   the requested algorithm or level differs from the build-time gzip level 6;
//! - the base image's layers are kept as pulled, unless `force-compression=true`: then one whose
//!   algorithm differs is converted, and with an explicit `compression-level` every one is.
//!
//! Conversions are remembered in a small index (`<state>/cache/compression/<2 hex>/<key>.json`,
//! key: source digest, algorithm, level, compressor version → the new blob), so a second export
//! of the same image converts nothing. A remembered blob that is gone from the store (pruned) is
//! simply made again.
//!
//! Output is deterministic, so the same image with the same options has the same digest on every
//! machine: gzip is MemoBuild's parallel gzip ([`crate::layer::pgzip`], independent of the
//! thread count), zstd is libzstd in multithreaded mode (the bytes of `nbWorkers >= 1` do not
//! depend on the number of workers; always at least one is used, never the single-threaded mode,
//! whose bytes differ) with its content checksum, and never flushed before the end.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::blobs::{BlobError, BlobStore, HashWriter, digest_hex, sha256_digest};
use crate::export::manifest::{self, ImageManifest, ManifestError};
use crate::layer::pgzip::{self, ParallelGzWriter};
use crate::layer::{LayerBlob, LayerOptions, MEDIA_TYPE_LAYER_GZIP};

/// OCI media type of an uncompressed layer.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI media type of a zstd-compressed layer.
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A layer compression algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// The tar itself (its digest is its diff ID).
    Uncompressed,
    /// gzip (RFC 1952).
    Gzip,
    /// Zstandard (RFC 8878).
    Zstd,
}

impl Algorithm {
    /// Parses buildx's `compression=` value.
    pub fn parse(name: &str) -> Result<Self, CompressionError> {
        match name {
            "uncompressed" => Ok(Algorithm::Uncompressed),
            "gzip" => Ok(Algorithm::Gzip),
            "zstd" => Ok(Algorithm::Zstd),
            other => Err(CompressionError::UnknownAlgorithm(other.to_string())),
        }
    }

    /// The option value naming it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Uncompressed => "uncompressed",
            Algorithm::Gzip => "gzip",
            Algorithm::Zstd => "zstd",
        }
    }

    /// The OCI media type of a layer compressed with it.
    pub fn media_type(self) -> &'static str {
        match self {
            Algorithm::Uncompressed => MEDIA_TYPE_LAYER_TAR,
            Algorithm::Gzip => MEDIA_TYPE_LAYER_GZIP,
            Algorithm::Zstd => MEDIA_TYPE_LAYER_ZSTD,
        }
    }

    /// The algorithm an (OCI or Docker) layer media type names; `None` for unknown types.
    pub fn of_media_type(media_type: &str) -> Option<Self> {
        match crate::export::mediatypes::oci_layer_type(media_type) {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
                Some(Algorithm::Uncompressed)
            }
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => {
                Some(Algorithm::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
                Some(Algorithm::Zstd)
            }
            _ => None,
        }
    }

    /// The levels `compression-level` accepts (BuildKit's documented ranges: gzip 0-9, zstd
    /// 0-22, where zstd's 0 means its default); `None`: the algorithm has no levels.
    pub fn levels(self) -> Option<std::ops::RangeInclusive<i32>> {
        match self {
            Algorithm::Uncompressed => None,
            Algorithm::Gzip => Some(0..=9),
            Algorithm::Zstd => Some(0..=22),
        }
    }

    /// The level used when none is given: gzip 6 (Go's and BuildKit's default, and what
    /// MemoBuild's layers are made with), zstd 3 (libzstd's default).
    pub fn default_level(self) -> i32 {
        match self {
            Algorithm::Uncompressed => 0,
            Algorithm::Gzip => LayerOptions::default().gzip_level as i32,
            Algorithm::Zstd => zstd::DEFAULT_COMPRESSION_LEVEL,
        }
    }

    /// What makes the bytes besides algorithm and level; part of the memo key, so that another
    /// compressor version never serves blobs made by an older one.
    fn implementation(self) -> String {
        match self {
            Algorithm::Uncompressed => "tar".into(),
            Algorithm::Gzip => format!("pgzip-{}", pgzip::CHUNK),
            Algorithm::Zstd => format!("libzstd-{}-mt", zstd::zstd_safe::version_number()),
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What an output asks for: algorithm, level and whether inherited layers are converted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    algorithm: Algorithm,
    level: Option<i32>,
    force: bool,
}

impl Default for Compression {
    /// gzip at level 6, base layers as pulled: the image as built.
    fn default() -> Self {
        Compression {
            algorithm: Algorithm::Gzip,
            level: None,
            force: false,
        }
    }
}

impl Compression {
    /// `compression=algorithm`, `compression-level=level`, `force-compression=force`. A level
    /// outside the algorithm's range is refused; `uncompressed` ignores the level, as BuildKit
    /// does.
    pub fn new(
        algorithm: Algorithm,
        level: Option<i32>,
        force: bool,
    ) -> Result<Self, CompressionError> {
        let level = match (algorithm.levels(), level) {
            (None, _) | (_, None) => None,
            (Some(range), Some(l)) if range.contains(&l) => Some(l),
            (Some(range), Some(l)) => {
                return Err(CompressionError::BadLevel {
                    algorithm,
                    level: l,
                    min: *range.start(),
                    max: *range.end(),
                });
            }
        };
        Ok(Compression {
            algorithm,
            level,
            force,
        })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The level layers are compressed at (the algorithm's default when none was given; zstd's
    /// 0 is its default, 3).
    pub fn effective_level(&self) -> i32 {
        match (self.algorithm, self.level) {
            (Algorithm::Uncompressed, _) => 0,
            (Algorithm::Zstd, Some(0)) | (_, None) => self.algorithm.default_level(),
            (_, Some(l)) => l,
        }
    }

    /// Whether `force-compression` was asked for.
    pub fn force(&self) -> bool {
        self.force
    }

    /// Whether the image as built already is what this asks for, whatever its base layers are.
    pub fn is_build_default(&self) -> bool {
        !self.force
            && self.algorithm == Algorithm::Gzip
            && self.effective_level() == Algorithm::Gzip.default_level()
    }

    /// Whether `layer` gets a new blob; `inherited`: it is one of the base image's layers.
    fn converts(&self, layer: &LayerBlob, inherited: bool) -> bool {
        let current = Algorithm::of_media_type(&layer.media_type);
        if inherited {
            // BuildKit: existing blobs keep their compression unless forced.
            return self.force
                && (current != Some(self.algorithm)
                    || (self.level.is_some() && self.algorithm != Algorithm::Uncompressed));
        }
        // MemoBuild's own layers are gzip at the build-time level.
        current != Some(self.algorithm)
            || (self.algorithm == Algorithm::Gzip
                && self.effective_level() != Algorithm::Gzip.default_level())
    }
}

/// Errors of layer conversion.
#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    /// `compression=` names something else.
    #[error("compression={0} is not supported (supported: gzip, zstd, uncompressed)")]
    UnknownAlgorithm(String),
    /// `compression-level=` out of range.
    #[error("compression-level={level} is out of range for {algorithm} ({min}-{max})")]
    BadLevel {
        /// The algorithm.
        algorithm: Algorithm,
        /// The level asked for.
        level: i32,
        /// Lowest accepted level.
        min: i32,
        /// Highest accepted level.
        max: i32,
    },
    /// The stored blob of a layer cannot be read as the layer the image says it is.
    #[error("layer `{digest}`: {reason}{}", if *.removed {
        "; the stored blob did not match its digest and was removed (build again to remake it)"
    } else { "" })]
    Corrupt {
        /// The layer's blob digest.
        digest: String,
        /// What is wrong.
        reason: String,
        /// Whether the blob store found the blob damaged and removed it.
        removed: bool,
    },
    /// Writing the new blob failed.
    #[error("layer `{digest}`: writing the {algorithm} blob: {source}")]
    Write {
        /// The source layer's digest.
        digest: String,
        /// The target algorithm.
        algorithm: Algorithm,
        /// The underlying error.
        source: io::Error,
    },
    /// The blob store failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// The image could not be put together again.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
}

/// A converted image.
#[derive(Debug, Clone)]
pub struct Converted {
    /// The image with the new layer descriptors (the same image when nothing changed).
    pub image: ImageManifest,
    /// Layers compressed by this call.
    pub converted: usize,
    /// Layers whose conversion was remembered from an earlier export.
    pub reused: usize,
}

/// Converts layers, storing the new blobs in a blob store and remembering conversions.
#[derive(Debug, Clone)]
pub struct Converter {
    store: BlobStore,
    memo: Option<PathBuf>,
}

/// One remembered conversion.
#[derive(Debug, Serialize, Deserialize)]
struct MemoEntry {
    source: String,
    compression: Algorithm,
    level: i32,
    implementation: String,
    layer: LayerBlob,
}

impl Converter {
    /// A converter writing into `store`, remembering conversions under `memo_dir` (none: every
    /// export converts again).
    pub fn new(store: BlobStore, memo_dir: Option<PathBuf>) -> Self {
        Converter {
            store,
            memo: memo_dir,
        }
    }

    /// `img` with its layers compressed as `c` asks; the first `inherited` layers are the base
    /// image's (see [`inherited_layers`]). Blocking: run it on a blocking thread.
    pub fn convert_image(
        &self,
        img: &ImageManifest,
        c: &Compression,
        inherited: usize,
    ) -> Result<Converted, CompressionError> {
        let mut layers = Vec::with_capacity(img.layers.len());
        let (mut converted, mut reused) = (0, 0);
        let mut done: HashMap<&str, LayerBlob> = HashMap::new();
        for (i, l) in img.layers.iter().enumerate() {
            if !c.converts(l, i < inherited) {
                layers.push(l.clone());
                continue;
            }
            if let Some(n) = done.get(l.digest.as_str()) {
                layers.push(n.clone());
                continue;
            }
            let (n, hit) = self.convert_layer(l, c.algorithm, c.effective_level())?;
            if hit {
                reused += 1;
            } else {
                converted += 1;
            }
            done.insert(&l.digest, n.clone());
            layers.push(n);
        }
        let image = if layers == img.layers {
            img.clone()
        } else {
            manifest::with_layers(img, layers)?
        };
        Ok(Converted {
            image,
            converted,
            reused,
        })
    }

    /// `layer` compressed with `algorithm` at `level`; `true` when remembered from earlier.
    /// The source blob stays in the store as it is.
    pub fn convert_layer(
        &self,
        layer: &LayerBlob,
        algorithm: Algorithm,
        level: i32,
    ) -> Result<(LayerBlob, bool), CompressionError> {
        let memo = self.memo_path(&layer.digest, algorithm, level)?;
        if let Some(hit) = memo.as_deref().and_then(|p| self.recall(p, layer)) {
            return Ok((hit, true));
        }
        let new = self.compress(layer, algorithm, level)?;
        if let Some(p) = &memo {
            let entry = MemoEntry {
                source: layer.digest.clone(),
                compression: algorithm,
                level,
                implementation: algorithm.implementation(),
                layer: new.clone(),
            };
            if let Err(e) = write_memo(p, &entry) {
                tracing::warn!(path = %p.display(), "cannot remember a layer conversion: {e}");
            }
        }
        Ok((new, false))
    }

    fn memo_path(
        &self,
        source: &str,
        algorithm: Algorithm,
        level: i32,
    ) -> Result<Option<PathBuf>, CompressionError> {
        let Some(dir) = &self.memo else {
            return Ok(None);
        };
        digest_hex(source)?;
        let key = sha256_digest(
            format!(
                "memobuild-compression-v1\n{source}\n{algorithm}\n{level}\n{}",
                algorithm.implementation()
            )
            .as_bytes(),
        );
        let hex = digest_hex(&key)?;
        Ok(Some(dir.join(&hex[..2]).join(format!("{hex}.json"))))
    }

    /// The remembered conversion of `layer` at `path`, if it is for this layer and its blob is
    /// still in the store and matches its digest (a damaged one is never exported: it is
    /// converted again).
    fn recall(&self, path: &Path, layer: &LayerBlob) -> Option<LayerBlob> {
        let entry: MemoEntry = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
        let blob = entry.layer;
        let ok = entry.source == layer.digest
            && blob.diff_id == layer.diff_id
            && self.store.verify(&blob.digest, Some(blob.size));
        ok.then_some(blob)
    }

    /// Decompresses `layer`'s blob, checks its diff ID and stores it compressed again.
    fn compress(
        &self,
        layer: &LayerBlob,
        algorithm: Algorithm,
        level: i32,
    ) -> Result<LayerBlob, CompressionError> {
        let source = self.store.open_blob(&layer.digest)?;
        let reader = decompressed(BufReader::with_capacity(1 << 20, source))
            .map_err(|e| self.corrupt(layer, format!("cannot decompress: {e}")))?;
        let tmp = self.store.temp()?;
        let werr = |source| CompressionError::Write {
            digest: layer.digest.clone(),
            algorithm,
            source,
        };
        let file = tmp.as_file().try_clone().map_err(werr)?;
        let out = HashWriter::new(BufWriter::with_capacity(1 << 20, file));
        let (out, diff_id) = match algorithm {
            Algorithm::Uncompressed => self.pipe(layer, reader, out, algorithm)?,
            Algorithm::Gzip => {
                let gz = ParallelGzWriter::new(out, level.clamp(0, 9) as u32);
                let (gz, diff_id) = self.pipe(layer, reader, gz, algorithm)?;
                (gz.finish().map_err(werr)?, diff_id)
            }
            Algorithm::Zstd => {
                let enc = zstd_writer(out, level, zstd_workers()).map_err(werr)?;
                let (enc, diff_id) = self.pipe(layer, reader, enc, algorithm)?;
                (enc.finish().map_err(werr)?, diff_id)
            }
        };
        if diff_id != layer.diff_id {
            return Err(self.corrupt(
                layer,
                format!(
                    "decompresses to diff ID `{diff_id}`, but the image config says `{}`",
                    layer.diff_id
                ),
            ));
        }
        let (mut bufw, digest, size) = out.finish();
        bufw.flush().map_err(werr)?;
        drop(bufw);
        // Both hashes were just taken from the bytes written.
        self.store.commit_layer(tmp, &digest, &diff_id)?;
        Ok(LayerBlob {
            digest,
            diff_id,
            size,
            media_type: algorithm.media_type().to_string(),
        })
    }

    /// Copies the decompressed tar into `w`, hashing it; returns `w` and the tar's digest.
    fn pipe<W: Write>(
        &self,
        layer: &LayerBlob,
        mut reader: impl Read,
        w: W,
        algorithm: Algorithm,
    ) -> Result<(W, String), CompressionError> {
        let mut plain = HashWriter::new(w);
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.corrupt(layer, format!("cannot decompress: {e}"))),
            };
            plain
                .write_all(&buf[..n])
                .map_err(|source| CompressionError::Write {
                    digest: layer.digest.clone(),
                    algorithm,
                    source,
                })?;
        }
        let (w, diff_id, _) = plain.finish();
        Ok((w, diff_id))
    }

    /// The error for a blob that does not read as `layer`; the store removes it if it does not
    /// match its own digest either (a damaged blob is never served again).
    fn corrupt(&self, layer: &LayerBlob, reason: String) -> CompressionError {
        let removed = !self.store.verify(&layer.digest, Some(layer.size));
        CompressionError::Corrupt {
            digest: layer.digest.clone(),
            reason,
            removed,
        }
    }
}

fn write_memo(path: &Path, entry: &MemoEntry) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(&crate::state::stale::temp_prefix(".tmp-"))
        .tempfile_in(dir)?;
    serde_json::to_writer(&mut tmp, entry).map_err(io::Error::other)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// How many of the image's layers are its base image's: the longest prefix of `layers` whose
/// diff IDs are the `rootfs.diff_ids` of the frontend's image config (which carries the base
/// image's, as BuildKit's does). 0 when the config has none or does not parse.
pub fn inherited_layers(frontend_config: &[u8], layers: &[LayerBlob]) -> usize {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(frontend_config) else {
        return 0;
    };
    let Some(base) = v
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(serde_json::Value::as_array)
    else {
        return 0;
    };
    layers
        .iter()
        .zip(base)
        .take_while(|(l, d)| d.as_str() == Some(l.diff_id.as_str()))
        .count()
}

/// A reader of the tar inside a layer blob: gzip and zstd are recognised by their magic bytes
/// (whatever the media type says), anything else is read as a plain tar.
pub fn decompressed<'a>(mut blob: impl BufRead + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let head = blob.fill_buf()?;
    if head.starts_with(&GZIP_MAGIC) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(blob)))
    } else if head.starts_with(&ZSTD_MAGIC) {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(blob)?))
    } else {
        Ok(Box::new(blob))
    }
}

/// A zstd writer at `level` with `workers` threads (at least one: libzstd's multithreaded
/// output depends on the data, level and job size only, not on the number of workers, but it
/// differs from its single-threaded output) and a content checksum.
pub fn zstd_writer<W: Write>(
    w: W,
    level: i32,
    workers: u32,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut enc = zstd::stream::write::Encoder::new(w, level)?;
    enc.include_checksum(true)?;
    enc.multithread(workers.max(1))?;
    Ok(enc)
}

/// One zstd worker per core.
fn zstd_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(1))
        .unwrap_or(1)
        .clamp(1, 64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::assemble;
    use crate::layer::{LayerOptions, write_layer};

    /// A directory with enough varied data to span several zstd jobs and gzip chunks.
    fn tree(root: &Path, mib: usize) {
        fs::create_dir_all(root.join("app/data")).unwrap();
        fs::write(root.join("app/hello.txt"), "hello\n").unwrap();
        let mut x: u32 = 7;
        let data: Vec<u8> = (0..mib << 20)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if i % 4 == 0 {
                    (x >> 24) as u8
                } else {
                    b"the quick brown fox "[i % 20]
                }
            })
            .collect();
        fs::write(root.join("app/data/blob.bin"), data).unwrap();
    }

    fn setup(mib: usize) -> (tempfile::TempDir, BlobStore, LayerBlob) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path().join("blobs")).unwrap();
        let up = tempfile::tempdir().unwrap();
        tree(up.path(), mib);
        let l = write_layer(up.path(), &store, LayerOptions::default()).unwrap();
        (dir, store, l)
    }

    fn read_blob(store: &BlobStore, digest: &str) -> Vec<u8> {
        fs::read(store.path(digest).unwrap()).unwrap()
    }

    fn tar_of(blob: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        decompressed(blob).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    fn c(algorithm: Algorithm, level: Option<i32>, force: bool) -> Compression {
        Compression::new(algorithm, level, force).unwrap()
    }

    #[test]
    fn every_algorithm_keeps_the_diff_id() {
        let (_d, store, src) = setup(1);
        let conv = Converter::new(store.clone(), None);
        let original = read_blob(&store, &src.digest);
        let mut sizes = HashMap::new();
        for (algo, level, magic) in [
            (Algorithm::Zstd, 3, &ZSTD_MAGIC[..]),
            (Algorithm::Zstd, 19, &ZSTD_MAGIC[..]),
            (Algorithm::Gzip, 1, &GZIP_MAGIC[..]),
            (Algorithm::Gzip, 9, &GZIP_MAGIC[..]),
            (Algorithm::Uncompressed, 0, &b"app/"[..]),
        ] {
            let (l, hit) = conv.convert_layer(&src, algo, level).unwrap();
            assert!(!hit);
            let bytes = read_blob(&store, &l.digest);
            assert!(bytes.starts_with(magic), "{algo} {level}");
            assert_eq!(sha256_digest(&bytes), l.digest);
            assert_eq!(bytes.len() as u64, l.size);
            assert_eq!(l.diff_id, src.diff_id);
            assert_eq!(
                sha256_digest(&tar_of(&bytes)),
                src.diff_id,
                "{algo} {level}"
            );
            assert_eq!(l.media_type, algo.media_type());
            assert_ne!(l.digest, src.digest, "{algo} {level}");
            sizes.insert((algo, level), l.size);
        }
        // Uncompressed: the blob is the tar, its digest the diff ID.
        let (u, _) = conv
            .convert_layer(&src, Algorithm::Uncompressed, 0)
            .unwrap();
        assert_eq!(u.digest, src.diff_id);
        assert_eq!(u.media_type, "application/vnd.oci.image.layer.v1.tar");
        // gzip at the build-time level through the same writer: the same bytes as the build's.
        let (g6, _) = conv.convert_layer(&src, Algorithm::Gzip, 6).unwrap();
        assert_eq!(g6, src);
        // The source blob is untouched.
        assert_eq!(read_blob(&store, &src.digest), original);
        // Higher levels compress this data better.
        assert!(sizes[&(Algorithm::Gzip, 9)] < sizes[&(Algorithm::Gzip, 1)]);
        assert!(sizes[&(Algorithm::Zstd, 19)] < sizes[&(Algorithm::Zstd, 3)]);
    }

    #[test]
    fn zstd_output_does_not_depend_on_workers_or_write_sizes() {
        // Larger than several jobs at level 1 (job size 4 × 512 KiB window … 2 MiB minimum).
        let mut x: u64 = 99;
        let data: Vec<u8> = (0..9 << 20)
            .map(|i| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                if i % 3 == 0 {
                    (x >> 56) as u8
                } else {
                    b'a' + (i % 13) as u8
                }
            })
            .collect();
        for level in [1, 3] {
            let compress = |workers: u32, chunk: usize| {
                let mut w = zstd_writer(Vec::new(), level, workers).unwrap();
                for part in data.chunks(chunk) {
                    w.write_all(part).unwrap();
                }
                w.finish().unwrap()
            };
            let one = compress(1, 65_536);
            for (workers, chunk) in [(2, 77_777), (4, 1 << 20), (8, 1000), (1, 3 << 20)] {
                assert!(
                    one == compress(workers, chunk),
                    "level {level}: {workers} workers, writes of {chunk} bytes"
                );
            }
            let mut back = Vec::new();
            zstd::stream::read::Decoder::new(&one[..])
                .unwrap()
                .read_to_end(&mut back)
                .unwrap();
            assert!(back == data);
            // 0 workers would be libzstd's single-threaded mode: never used.
            assert!(one == compress(0, 65_536));
        }
    }

    #[test]
    fn levels_are_checked_and_defaulted() {
        assert!(Compression::new(Algorithm::Gzip, Some(10), false).is_err());
        assert!(Compression::new(Algorithm::Gzip, Some(-1), false).is_err());
        let e = Compression::new(Algorithm::Zstd, Some(23), false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "compression-level=23 is out of range for zstd (0-22)"
        );
        assert_eq!(c(Algorithm::Zstd, Some(0), false).effective_level(), 3);
        assert_eq!(c(Algorithm::Zstd, None, false).effective_level(), 3);
        assert_eq!(c(Algorithm::Zstd, Some(22), false).effective_level(), 22);
        assert_eq!(c(Algorithm::Gzip, None, false).effective_level(), 6);
        assert_eq!(c(Algorithm::Gzip, Some(0), false).effective_level(), 0);
        // uncompressed ignores the level, as BuildKit does.
        assert_eq!(
            c(Algorithm::Uncompressed, Some(99), false),
            c(Algorithm::Uncompressed, None, false)
        );
        assert!(Compression::default().is_build_default());
        assert!(c(Algorithm::Gzip, Some(6), false).is_build_default());
        assert!(!c(Algorithm::Gzip, Some(6), true).is_build_default());
        assert!(!c(Algorithm::Gzip, Some(9), false).is_build_default());
        assert!(Algorithm::parse("estargz").is_err());
        assert_eq!(Algorithm::parse("zstd").unwrap(), Algorithm::Zstd);
    }

    #[test]
    fn conversions_are_remembered() {
        let (dir, store, src) = setup(1);
        let memo = crate::state::StateDir::new(dir.path()).compression_memo();
        let conv = Converter::new(store.clone(), Some(memo.clone()));
        let (first, hit) = conv.convert_layer(&src, Algorithm::Zstd, 5).unwrap();
        assert!(!hit);
        let entries: Vec<_> = walk(&memo);
        assert_eq!(entries.len(), 1, "{entries:?}");
        // The second time nothing is compressed: the blob's mtime stays.
        let mtime = || {
            fs::metadata(store.path(&first.digest).unwrap())
                .unwrap()
                .modified()
                .unwrap()
        };
        let before = mtime();
        let (again, hit) = conv.convert_layer(&src, Algorithm::Zstd, 5).unwrap();
        assert!(hit);
        assert_eq!(again, first);
        assert_eq!(mtime(), before);
        // Another level is another conversion.
        let (other, hit) = conv.convert_layer(&src, Algorithm::Zstd, 6).unwrap();
        assert!(!hit);
        assert_ne!(other.digest, first.digest);
        // A remembered blob that was pruned is made again, with the same bytes.
        fs::remove_file(store.path(&first.digest).unwrap()).unwrap();
        let (remade, hit) = conv.convert_layer(&src, Algorithm::Zstd, 5).unwrap();
        assert!(!hit);
        assert_eq!(remade, first);
        // A remembered blob that was damaged (same size, one byte flipped) is never handed
        // out: it is made again.
        let path = store.path(&first.digest).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        fs::write(&path, &bytes).unwrap();
        let (repaired, hit) = conv.convert_layer(&src, Algorithm::Zstd, 5).unwrap();
        assert!(!hit, "a damaged remembered blob is not a hit");
        assert_eq!(repaired, first);
        assert!(store.verify(&first.digest, Some(first.size)));
        // A damaged index entry is a miss, not an error.
        for p in walk(&memo) {
            fs::write(p, b"{not json").unwrap();
        }
        assert!(!conv.convert_layer(&src, Algorithm::Zstd, 5).unwrap().1);
        assert!(conv.convert_layer(&src, Algorithm::Zstd, 5).unwrap().1);
        // The build's blob is still there, unchanged.
        assert!(store.verify(&src.digest, Some(src.size)));
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn a_damaged_blob_fails_the_diff_id_check_and_is_removed() {
        let (_d, store, src) = setup(1);
        let conv = Converter::new(store.clone(), None);
        // Flip a byte in the middle of the gzip stream.
        let p = store.path(&src.digest).unwrap();
        let mut bytes = fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        fs::write(&p, &bytes).unwrap();
        let err = conv
            .convert_layer(&src, Algorithm::Zstd, 3)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&src.digest), "{err}");
        assert!(err.contains("removed"), "{err}");
        assert!(!p.exists());
        // No temporary file is left in the store.
        let left: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_blob_of_other_files_fails_the_diff_id_check() {
        // An intact blob whose tar is not the one the config names: refused, not removed.
        let (_d, store, src) = setup(1);
        let lie = LayerBlob {
            diff_id: format!("sha256:{}", "0".repeat(64)),
            ..src.clone()
        };
        let conv = Converter::new(store.clone(), None);
        let err = conv
            .convert_layer(&lie, Algorithm::Uncompressed, 0)
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&src.diff_id) && msg.contains(&lie.diff_id),
            "{msg}"
        );
        assert!(!msg.contains("removed"), "{msg}");
        assert!(store.contains(&src.digest));
    }

    #[test]
    fn images_keep_their_config_and_base_layers_unless_forced() {
        let (dir, store, own) = setup(1);
        // A "base image" layer: zstd, as a registry might serve it.
        let up = tempfile::tempdir().unwrap();
        fs::write(up.path().join("base.txt"), "base\n").unwrap();
        let gz = write_layer(up.path(), &store, LayerOptions::default()).unwrap();
        let conv = Converter::new(
            store.clone(),
            Some(crate::state::StateDir::new(dir.path()).compression_memo()),
        );
        let (base, _) = conv.convert_layer(&gz, Algorithm::Zstd, 3).unwrap();
        let frontend = serde_json::json!({
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [base.diff_id]},
        })
        .to_string();
        let img = assemble(frontend.as_bytes(), &[base.clone(), own.clone()]).unwrap();
        let inherited = inherited_layers(frontend.as_bytes(), &img.layers);
        assert_eq!(inherited, 1);

        // The default changes nothing (the zstd base stays zstd).
        let same = conv
            .convert_image(&img, &Compression::default(), inherited)
            .unwrap();
        assert_eq!(same.image.manifest_desc, img.manifest_desc);
        assert_eq!((same.converted, same.reused), (0, 0));

        // gzip level 9: only MemoBuild's layer; forced: the base too.
        let g9 = conv
            .convert_image(&img, &c(Algorithm::Gzip, Some(9), false), inherited)
            .unwrap();
        assert_eq!(g9.image.layers[0], base);
        assert_ne!(g9.image.layers[1].digest, own.digest);
        assert_eq!(g9.image.config, img.config);
        assert_eq!(g9.image.config_desc, img.config_desc);
        let g9f = conv
            .convert_image(&img, &c(Algorithm::Gzip, Some(9), true), inherited)
            .unwrap();
        assert_eq!(g9f.image.layers[0].media_type, MEDIA_TYPE_LAYER_GZIP);
        assert_eq!(g9f.image.layers[1], g9.image.layers[1]);
        assert_eq!((g9f.converted, g9f.reused), (1, 1));
        for (a, b) in g9f.image.layers.iter().zip(&img.layers) {
            assert_eq!(a.diff_id, b.diff_id);
        }
        let m: serde_json::Value = serde_json::from_slice(&g9f.image.manifest).unwrap();
        assert_eq!(m["config"]["digest"], img.config_desc.digest.as_str());
        assert_eq!(
            m["layers"][0]["digest"],
            g9f.image.layers[0].digest.as_str()
        );
        assert_eq!(m["layers"][0]["mediaType"], MEDIA_TYPE_LAYER_GZIP);

        // zstd: MemoBuild's layer converted, the base already is zstd; forced without a level
        // the zstd base is kept as pulled.
        for force in [false, true] {
            let z = conv
                .convert_image(&img, &c(Algorithm::Zstd, None, force), inherited)
                .unwrap();
            assert_eq!(z.image.layers[0], base);
            assert_eq!(z.image.layers[1].media_type, MEDIA_TYPE_LAYER_ZSTD);
            let m: serde_json::Value = serde_json::from_slice(&z.image.manifest).unwrap();
            assert_eq!(m["layers"][1]["mediaType"], MEDIA_TYPE_LAYER_ZSTD);
        }
        // Docker media types for zstd: containerd's name, as BuildKit writes.
        let z = conv
            .convert_image(&img, &c(Algorithm::Zstd, None, false), inherited)
            .unwrap();
        let d = crate::export::mediatypes::to_docker(&z.image).unwrap();
        let m: serde_json::Value = serde_json::from_slice(&d.manifest).unwrap();
        assert_eq!(
            m["layers"][1]["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.zstd"
        );

        // uncompressed, forced: every digest is its diff ID.
        let u = conv
            .convert_image(&img, &c(Algorithm::Uncompressed, None, true), inherited)
            .unwrap();
        for l in &u.image.layers {
            assert_eq!(l.digest, l.diff_id);
            assert_eq!(l.media_type, MEDIA_TYPE_LAYER_TAR);
        }
        // Same inputs, same image, also converted again from scratch.
        let fresh = Converter::new(store.clone(), None)
            .convert_image(&img, &c(Algorithm::Uncompressed, None, true), inherited)
            .unwrap();
        assert_eq!(fresh.image.manifest, u.image.manifest);
    }

    #[test]
    fn inherited_layers_is_the_matching_prefix() {
        let l = |n: u8| LayerBlob {
            digest: format!("sha256:{}", hex::encode([n; 32])),
            diff_id: format!("sha256:{}", hex::encode([n + 100; 32])),
            size: 1,
            media_type: MEDIA_TYPE_LAYER_GZIP.into(),
        };
        let cfg = |ids: &[&LayerBlob]| {
            serde_json::json!({"rootfs": {"diff_ids": ids.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()}})
                .to_string()
        };
        let layers = [l(1), l(2), l(3)];
        assert_eq!(
            inherited_layers(cfg(&[&l(1), &l(2)]).as_bytes(), &layers),
            2
        );
        assert_eq!(inherited_layers(cfg(&[&l(2)]).as_bytes(), &layers), 0);
        assert_eq!(inherited_layers(b"{}", &layers), 0);
        assert_eq!(inherited_layers(b"nope", &layers), 0);
    }

    #[test]
    fn decompressed_detects_by_content() {
        let data = b"plain tar bytes".to_vec();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        for blob in [&data, &gz, &zs] {
            assert_eq!(tar_of(blob), data);
        }
        assert_eq!(tar_of(b""), b"");
    }
}
