//! Runs the outputs of one build: each [`ExporterSpec`] turned into bytes in a sink, a push,
//! or an image in containerd, with BuildKit's exporter response for each.
//!
//! Every output derives what it writes from the one image the build made: its layer
//! compression ([`crate::export::compression`]), then its media types
//! ([`crate::export::mediatypes`]), then the writer. `memobuild build` and the daemon both run
//! their outputs through an [`Exporter`]; only the [`ExportSink`] differs.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use base64::Engine as _;
use memobuild_proto::pb;

use crate::Build;
use crate::export::attestation::{self, Attached, Provenance};
use crate::export::compression::{Algorithm, Compression, Converter};
use crate::export::sink::ExportSink;
use crate::export::spec::{ExporterSpec, ImageOptions};
use crate::export::{Descriptor, ExportError, ImageManifest};
use crate::progress::{Progress, ProgressEvent, VertexState};
use crate::registry::push::{PushOptions, Pusher};
use crate::registry::{Credentials, RegistryConfig, normalize_reference};

/// BuildKit's exporter response keys (`exporter/containerimage/exptypes`).
pub mod keys {
    /// The manifest digest of the image an output wrote.
    pub const IMAGE_DIGEST: &str = "containerimage.digest";
    /// The config digest.
    pub const CONFIG_DIGEST: &str = "containerimage.config.digest";
    /// The manifest's OCI descriptor, JSON, base64.
    pub const DESCRIPTOR: &str = "containerimage.descriptor";
    /// The names, comma-separated.
    pub const IMAGE_NAME: &str = "image.name";
}

/// A failed output.
#[derive(Debug, thiserror::Error)]
pub enum ExporterError {
    /// Writing the image or filesystem failed.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// The sink (a file, a directory, the client) failed.
    #[error("{0}")]
    Sink(io::Error),
    /// A name cannot be pushed to or written.
    #[error("invalid image name `{name}`: {reason}")]
    Name {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Converting layers failed.
    #[error(transparent)]
    Compression(#[from] crate::export::compression::CompressionError),
    /// Rewriting media types failed.
    #[error(transparent)]
    MediaTypes(#[from] crate::export::mediatypes::MediaTypeError),
    /// Pushing failed.
    #[error(transparent)]
    Push(#[from] crate::export::push::PushExportError),
    /// The registry client could not be set up.
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    /// Importing into containerd failed.
    #[error(transparent)]
    Containerd(#[from] crate::export::containerd::ContainerdExportError),
    /// A layer of the image does not match its blob (or is gone).
    #[error("the image cannot be exported: {0}")]
    Layer(#[from] crate::layer::check::LayerFault),
    /// A blocking task died.
    #[error("export task failed: {0}")]
    Task(String),
}

/// Writes the outputs of one built image.
pub struct Exporter<'a> {
    build: &'a Build,
    image: &'a ImageManifest,
    definition: &'a pb::Definition,
    progress: &'a Progress,
    /// Makes the layer blobs of `compression=` options (remembering them under the state dir).
    converter: Converter,
    /// How many of the image's layers are its base image's (kept unless `force-compression`).
    inherited: usize,
    /// Pushers by their plain-HTTP host list (credentials are asked once per host).
    pushers: BTreeMap<Vec<String>, Arc<Pusher>>,
    /// The provenance to attach to pushed images (`attest:provenance`).
    provenance: Option<Provenance>,
}

impl<'a> Exporter<'a> {
    /// An exporter for `image` (made from `frontend_config` and the layers `definition`
    /// built), reporting to `progress`.
    pub fn new(
        build: &'a Build,
        image: &'a ImageManifest,
        frontend_config: &[u8],
        definition: &'a pb::Definition,
        progress: &'a Progress,
    ) -> Self {
        let store = build.blobs().clone();
        Exporter {
            converter: Converter::new(store, Some(build.engine().state().compression_memo())),
            inherited: crate::export::compression::inherited_layers(frontend_config, &image.layers),
            build,
            image,
            definition,
            progress,
            pushers: BTreeMap::new(),
            provenance: None,
        }
    }

    /// Attaches `provenance` to the images this pushes (as BuildKit's image exporter does; the
    /// archive exporters leave an inline-only one out, as BuildKit's do).
    pub fn with_provenance(mut self, provenance: Option<Provenance>) -> Self {
        self.provenance = provenance;
        self
    }

    fn message(&self, m: String) {
        self.progress.send(ProgressEvent::Message(m));
    }

    /// Writes output `index` (its position among the build's outputs) to `sink`; BuildKit's
    /// exporter response for it (digest, descriptor and names of the image it wrote).
    pub async fn export(
        &mut self,
        index: usize,
        spec: &ExporterSpec,
        sink: &dyn ExportSink,
    ) -> Result<BTreeMap<String, String>, ExporterError> {
        let vertex = format!(
            "sha256:{}",
            blake3::hash(
                format!(
                    "export {index} {} {}",
                    spec.kind(),
                    self.image.manifest_desc.digest
                )
                .as_bytes()
            )
            .to_hex()
        );
        let name = match spec {
            ExporterSpec::Image { .. } => "exporting to image",
            ExporterSpec::Oci { .. } => "exporting to oci image format",
            ExporterSpec::Docker { .. } => "exporting to docker image format",
            ExporterSpec::Local => "exporting to client directory",
            ExporterSpec::Tar => "exporting to client tarball",
            ExporterSpec::Containerd { .. } => "exporting to containerd",
        };
        let started = std::time::Instant::now();
        self.progress
            .step(&vertex, name, VertexState::Started, None, None);
        let result = self.run(index, spec, sink).await;
        let (state, error) = match &result {
            Ok(_) => (VertexState::Completed, None),
            Err(e) => (VertexState::Error, Some(e.to_string())),
        };
        self.progress
            .step(&vertex, name, state, Some(started.elapsed()), error);
        result
    }

    async fn run(
        &mut self,
        index: usize,
        spec: &ExporterSpec,
        sink: &dyn ExportSink,
    ) -> Result<BTreeMap<String, String>, ExporterError> {
        let store = self.build.blobs().clone();
        match spec {
            ExporterSpec::Oci { image, tar: false } => {
                let names = normalize_names(&image.names)?;
                let img = self.image_for(image).await?;
                let response = response(&img, &names);
                let target = sink.directory(index).await.map_err(ExporterError::Sink)?;
                let (dir, i) = (target.path().to_path_buf(), img.clone());
                blocking(move || Ok(crate::export::write_oci_dir(&dir, &i, &store, &names)?))
                    .await?;
                target.commit().await.map_err(ExporterError::Sink)?;
                self.message(format!(
                    "exported {} to {}",
                    img.manifest_desc.digest,
                    sink.describe(index)
                ));
                Ok(response)
            }
            ExporterSpec::Oci { image, tar: true } | ExporterSpec::Docker { image } => {
                let docker = matches!(spec, ExporterSpec::Docker { .. });
                let names = normalize_names(&image.names)?;
                let img = self.image_for(image).await?;
                let response = response(&img, &names);
                // The archive's bytes are a function of these: an unchanged file that holds
                // it already is not written again (a no-op rebuild of a big image).
                let identity = format!(
                    "{}\0{}\0{}",
                    if docker { "docker" } else { "oci" },
                    img.manifest_desc.digest,
                    names.join("\0")
                );
                if sink.holds(index, &identity) {
                    self.message(format!(
                        "exported {} to {} (already there, unchanged)",
                        img.manifest_desc.digest,
                        sink.describe(index)
                    ));
                    return Ok(response);
                }
                let mut target = sink
                    .file(index, &response)
                    .await
                    .map_err(ExporterError::Sink)?;
                let i = img.clone();
                let target = blocking(move || {
                    if docker {
                        crate::export::docker::write_docker_tar(&mut target, &i, &store, &names)?;
                    } else {
                        crate::export::write_layout_tar(&mut target, &i, &store, &names, &[])?;
                    }
                    Ok(target)
                })
                .await?;
                target.commit().await.map_err(ExporterError::Sink)?;
                sink.mark(index, &identity);
                self.message(format!(
                    "exported {} to {}{}",
                    img.manifest_desc.digest,
                    sink.describe(index),
                    if docker { " (docker archive)" } else { "" }
                ));
                Ok(response)
            }
            ExporterSpec::Local => {
                let target = sink.directory(index).await.map_err(ExporterError::Sink)?;
                let (dir, img, keep) = (
                    target.path().to_path_buf(),
                    self.image.clone(),
                    target.keep_owners(),
                );
                blocking(move || Ok(crate::export::local::apply_image(&dir, &img, &store, keep)?))
                    .await?;
                target.commit().await.map_err(ExporterError::Sink)?;
                self.message(format!(
                    "exported the filesystem to {}",
                    sink.describe(index)
                ));
                Ok(BTreeMap::new())
            }
            ExporterSpec::Tar => {
                let mut target = sink
                    .file(index, &BTreeMap::new())
                    .await
                    .map_err(ExporterError::Sink)?;
                let tmp_parent = self.build.engine().state().tmp();
                let img = self.image.clone();
                let target = blocking(move || {
                    std::fs::create_dir_all(&tmp_parent).map_err(ExporterError::Sink)?;
                    let tree = tempfile::Builder::new()
                        .prefix("export-tar-")
                        .tempdir_in(&tmp_parent)
                        .map_err(ExporterError::Sink)?;
                    crate::export::local::apply_image(tree.path(), &img, &store, true)?;
                    crate::layer::write_tree_tar(tree.path(), &mut target)
                        .map_err(|e| ExporterError::Sink(io::Error::other(e.to_string())))?;
                    Ok(target)
                })
                .await?;
                target.commit().await.map_err(ExporterError::Sink)?;
                self.message(format!(
                    "exported the filesystem as a tar to {}",
                    sink.describe(index)
                ));
                Ok(BTreeMap::new())
            }
            ExporterSpec::Image {
                image,
                push,
                insecure,
            } => {
                let img = self.image_for(image).await?;
                let response = response(&img, &image.names);
                if !*push {
                    self.message(format!(
                        "warning: type=image without push=true: {} not stored anywhere (add push=true, or use type=oci or type=docker)",
                        image.names.join(", ")
                    ));
                    return Ok(response);
                }
                let pusher = self.pusher(&image.names, *insecure).await?;
                let attached = self.attestation(&img, &image.names)?;
                for name in &image.names {
                    self.message(format!("pushing {name}"));
                    let pushed = match &attached {
                        None => {
                            crate::export::push::push_image(&pusher, &store, &img, name).await?
                        }
                        Some(a) => {
                            crate::export::push::push_attested(&pusher, &store, &img, a, name)
                                .await?
                        }
                    };
                    self.message(format!(
                        "pushed {}@{} ({})",
                        pushed.reference,
                        pushed.digest,
                        pushed.summary()
                    ));
                }
                Ok(match &attached {
                    None => response,
                    Some(a) => described(&a.index_desc, &image.names),
                })
            }
            ExporterSpec::Containerd { image, unpack } => {
                let names = normalize_names(&image.names)?;
                let img = self.image_for(image).await?;
                let done =
                    crate::export::containerd::import(self.build, &img, &names, *unpack).await?;
                for n in &done.names {
                    self.message(format!(
                        "imported {n}@{} into containerd (namespace `{}`{})",
                        img.manifest_desc.digest,
                        done.namespace,
                        if done.snapshot.is_some() {
                            ", unpacked"
                        } else {
                            ""
                        }
                    ));
                }
                Ok(response(&img, &names))
            }
        }
    }

    /// The provenance attestation of `img` pushed as `names`, when the build asked for one.
    fn attestation(
        &self,
        img: &ImageManifest,
        names: &[String],
    ) -> Result<Option<Attached>, ExporterError> {
        let Some(p) = &self.provenance else {
            return Ok(None);
        };
        let names = normalize_names(names)?;
        let platform = crate::export::manifest::platform_of(&img.config).unwrap_or_default();
        let shown = ["os", "architecture", "variant"]
            .iter()
            .filter_map(|k| platform[k].as_str())
            .collect::<Vec<_>>()
            .join("/");
        let finished = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
        let statement = p.statement(
            &names,
            &img.manifest_desc,
            &shown,
            &attestation::base_images(self.definition),
            &finished,
        );
        Ok(Some(attestation::attach(
            statement,
            &img.manifest_desc,
            &platform,
        )))
    }

    /// The image with the requested layer compression and media types.
    async fn image_for(&self, opts: &ImageOptions) -> Result<ImageManifest, ExporterError> {
        // The config lists the chain's diff IDs: one that is not its blob's makes an image that
        // runtimes refuse ("diffid mismatch"). Cache records are checked before they are used;
        // this covers the rest of the chain too (base layers whose snapshots existed). Stamped
        // blobs make it a stat per layer.
        let (store, layers) = (self.build.blobs().clone(), self.image.layers.clone());
        blocking(move || Ok(crate::layer::check::check_layers(&store, &layers)?)).await?;
        let compression = opts.compression;
        let img = if compression.is_build_default() {
            self.image.clone()
        } else {
            let (conv, img, inherited) =
                (self.converter.clone(), self.image.clone(), self.inherited);
            let started = std::time::Instant::now();
            let done =
                blocking(move || Ok(conv.convert_image(&img, &compression, inherited)?)).await?;
            if done.converted + done.reused > 0 {
                self.message(format!(
                    "layers as {}: {} compressed in {:.1}s, {} from earlier exports",
                    describe(&compression),
                    done.converted,
                    started.elapsed().as_secs_f64(),
                    done.reused
                ));
            }
            done.image
        };
        if opts.oci_mediatypes {
            return Ok(img);
        }
        if compression.algorithm() == Algorithm::Zstd {
            self.message(
                "warning: compression=zstd with oci-mediatypes=false: zstd layers get the type application/vnd.docker.image.rootfs.diff.tar.zstd (as BuildKit writes), which Docker's manifest format does not define; containerd reads it, other tools may not (prefer oci-mediatypes=true)".into(),
            );
        }
        Ok(crate::export::mediatypes::to_docker(&img)?)
    }

    /// A pusher for `names`, with the caller's credentials for their registries and the base
    /// images of the definition as cross-repository mount sources.
    async fn pusher(
        &mut self,
        names: &[String],
        insecure_names: bool,
    ) -> Result<Arc<Pusher>, ExporterError> {
        let mut hosts = Vec::new();
        for n in names {
            let r = normalize_reference(n)?;
            for h in [r.registry(), r.resolve_registry()] {
                if !hosts.iter().any(|x: &String| x == h) {
                    hosts.push(h.to_owned());
                }
            }
        }
        let mut insecure = self.build.engine().registry_config().insecure.clone();
        if insecure_names {
            insecure.extend(hosts.iter().cloned());
        }
        insecure.sort();
        insecure.dedup();
        let mut key = hosts.clone();
        key.extend(insecure.iter().map(|h| format!("insecure:{h}")));
        if let Some(p) = self.pushers.get(&key) {
            return Ok(p.clone());
        }
        let mut credentials: std::collections::HashMap<String, Credentials> = Default::default();
        for h in &hosts {
            if let Some(c) = self.build.caller().credentials.credentials(h).await {
                credentials.insert(h.clone(), c);
            }
        }
        let pusher = Pusher::new(
            RegistryConfig {
                insecure,
                credentials,
                // What the engine remembers of tags: a push drops the tags it moves.
                resolved: self.build.engine().registry_config().resolved.clone(),
                ..RegistryConfig::default()
            },
            PushOptions::default(),
        )
        .map_err(|e| ExporterError::Push(e.into()))?;
        for r in attestation::base_images(self.definition) {
            pusher.add_mount_source(&r);
        }
        let pusher = Arc::new(pusher);
        self.pushers.insert(key, pusher.clone());
        Ok(pusher)
    }
}

fn describe(c: &Compression) -> String {
    match c.algorithm() {
        Algorithm::Uncompressed => "uncompressed".to_string(),
        a => format!("{a} level {}", c.effective_level()),
    }
}

/// BuildKit's exporter response for an image written under `names`.
fn response(img: &ImageManifest, names: &[String]) -> BTreeMap<String, String> {
    let mut r = described(&img.manifest_desc, names);
    r.insert(
        keys::CONFIG_DIGEST.to_string(),
        img.config_desc.digest.clone(),
    );
    r
}

/// BuildKit's exporter response for what the names now name, an image's manifest or (with
/// attestations) the index: its digest and descriptor, and the names.
fn described(desc: &Descriptor, names: &[String]) -> BTreeMap<String, String> {
    let mut r = BTreeMap::new();
    r.insert(keys::IMAGE_DIGEST.to_string(), desc.digest.clone());
    if let Ok(json) = serde_json::to_vec(desc) {
        r.insert(
            keys::DESCRIPTOR.to_string(),
            base64::engine::general_purpose::STANDARD.encode(json),
        );
    }
    if !names.is_empty() {
        r.insert(keys::IMAGE_NAME.to_string(), names.join(","));
    }
    r
}

/// Full references (`docker.io/library/app:latest`) for names as a user writes them.
fn normalize_names(names: &[String]) -> Result<Vec<String>, ExporterError> {
    names
        .iter()
        .map(|n| {
            normalize_reference(n)
                .map(|r| r.whole())
                .map_err(|e| ExporterError::Name {
                    name: n.clone(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

/// Runs blocking export work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ExporterError> + Send + 'static,
) -> Result<T, ExporterError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ExporterError::Task(e.to_string()))?
}
