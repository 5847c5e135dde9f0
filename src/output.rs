//! `--output` specs, parsed as buildx parses them (`type=oci,dest=out.tar`, or a bare path meaning
//! `type=local,dest=PATH`), `--push`, and the [`Exporter`] that writes them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use memobuild_proto::pb;
use memobuild_worker::blobs::BlobStore;
use memobuild_worker::export::ImageManifest;
use memobuild_worker::export::compression::{Algorithm, Compression, Converter};
use memobuild_worker::progress::{Progress, ProgressEvent};
use memobuild_worker::registry::push::Pusher;

/// One requested output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputSpec {
    /// An OCI image layout, as a tar file or (`tar=false`) a directory.
    Oci {
        /// Where to write it.
        dest: PathBuf,
        /// Tar file (true) or directory (false).
        tar: bool,
        /// Names to record in `index.json`.
        names: Vec<String>,
        /// OCI media types (true) or Docker's (false).
        oci_mediatypes: bool,
        /// Layer compression.
        compression: Compression,
    },
    /// A tar `docker load` reads (which OCI tools read too).
    Docker {
        /// Where to write it.
        dest: PathBuf,
        /// Names (`RepoTags`).
        names: Vec<String>,
        /// OCI media types (true) or Docker's (false).
        oci_mediatypes: bool,
        /// Layer compression.
        compression: Compression,
    },
    /// The image's filesystem, written to a directory.
    Local {
        /// The directory.
        dest: PathBuf,
    },
    /// An image in a registry (`type=image`, `type=registry`).
    Image {
        /// Names to push to.
        names: Vec<String>,
        /// Whether to push (without it there is nowhere to put the image yet).
        push: bool,
        /// OCI media types (true) or Docker's (false).
        oci_mediatypes: bool,
        /// Reach these names' registries over plain HTTP (`registry.insecure=true`).
        insecure: bool,
        /// Layer compression.
        compression: Compression,
    },
    /// The image in containerd's image store, in the build's namespace (`type=containerd`).
    Containerd {
        /// Image names.
        names: Vec<String>,
        /// Also make its snapshots, so it is ready to run (`unpack=true`).
        unpack: bool,
        /// OCI media types (true) or Docker's (false).
        oci_mediatypes: bool,
        /// Layer compression.
        compression: Compression,
    },
}

/// Splits on commas outside double quotes, dropping the quotes, as buildx reads its CSV.
fn split_csv(spec: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in spec.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if quoted {
        bail!("invalid output `{spec}`: unbalanced `\"`");
    }
    out.push(cur);
    Ok(out)
}

/// Parses one `--output` value; `tags` (`-t`) name the image where the spec has no `name=`.
pub fn parse(spec: &str, tags: &[String]) -> anyhow::Result<OutputSpec> {
    if !spec.contains('=') {
        if spec == "-" {
            bail!("invalid output `-`: writing to stdout is not supported; use type=oci,dest=FILE");
        }
        return Ok(OutputSpec::Local {
            dest: PathBuf::from(spec),
        });
    }
    let mut fields = BTreeMap::new();
    for part in split_csv(spec)? {
        let (k, v) = part
            .split_once('=')
            .with_context(|| format!("invalid output `{spec}`: `{part}` is not KEY=VALUE"))?;
        fields.insert(k.trim().to_lowercase(), v.trim().to_string());
    }
    let ty = fields
        .remove("type")
        .with_context(|| format!("invalid output `{spec}`: missing type="))?;
    let take_bool =
        |fields: &mut BTreeMap<String, String>, key: &str, default: bool| -> anyhow::Result<bool> {
            match fields.remove(key).as_deref() {
                None => Ok(default),
                Some("true") | Some("1") | Some("") => Ok(true),
                Some("false") | Some("0") => Ok(false),
                Some(v) => bail!("invalid output `{spec}`: {key}={v} is not a boolean"),
            }
        };
    let names = |fields: &mut BTreeMap<String, String>| -> Vec<String> {
        match fields.remove("name") {
            Some(n) => n
                .split([',', ';'])
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect(),
            None => tags.to_vec(),
        }
    };
    // `compression=`, `compression-level=`, `force-compression=`, as BuildKit's image exporters
    // read them.
    let compression = |fields: &mut BTreeMap<String, String>| -> anyhow::Result<Compression> {
        let algorithm = match fields.remove("compression") {
            Some(a) => Algorithm::parse(&a).with_context(|| format!("invalid output `{spec}`"))?,
            None => Algorithm::Gzip,
        };
        let level = match fields.remove("compression-level") {
            Some(l) => Some(l.parse::<i32>().map_err(|_| {
                anyhow::anyhow!("invalid output `{spec}`: compression-level={l} is not an integer")
            })?),
            None => None,
        };
        let force = take_bool(fields, "force-compression", false)?;
        Compression::new(algorithm, level, force)
            .with_context(|| format!("invalid output `{spec}`"))
    };
    let dest = |fields: &mut BTreeMap<String, String>, what: &str| -> anyhow::Result<PathBuf> {
        fields
            .remove("dest")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .with_context(|| format!("invalid output `{spec}`: type={ty} needs dest={what}"))
    };
    let out = match ty.as_str() {
        "oci" => OutputSpec::Oci {
            dest: dest(&mut fields, "FILE")?,
            tar: take_bool(&mut fields, "tar", true)?,
            names: names(&mut fields),
            oci_mediatypes: take_bool(&mut fields, "oci-mediatypes", true)?,
            compression: compression(&mut fields)?,
        },
        "docker" => OutputSpec::Docker {
            dest: dest(
                &mut fields,
                "FILE (loading into a Docker engine is not supported)",
            )?,
            names: names(&mut fields),
            oci_mediatypes: take_bool(&mut fields, "oci-mediatypes", true)?,
            compression: compression(&mut fields)?,
        },
        "local" => OutputSpec::Local {
            dest: dest(&mut fields, "DIR")?,
        },
        "image" | "registry" => {
            let names = names(&mut fields);
            let push = take_bool(&mut fields, "push", ty == "registry")?;
            if push && names.is_empty() {
                bail!("invalid output `{spec}`: pushing needs name=NAME (or -t NAME)");
            }
            OutputSpec::Image {
                names,
                push,
                oci_mediatypes: take_bool(&mut fields, "oci-mediatypes", true)?,
                insecure: take_bool(&mut fields, "registry.insecure", false)?,
                compression: compression(&mut fields)?,
            }
        }
        "containerd" => {
            let names = names(&mut fields);
            if names.is_empty() {
                bail!("invalid output `{spec}`: type=containerd needs name=NAME (or -t NAME)");
            }
            OutputSpec::Containerd {
                names,
                unpack: take_bool(&mut fields, "unpack", false)?,
                oci_mediatypes: take_bool(&mut fields, "oci-mediatypes", true)?,
                compression: compression(&mut fields)?,
            }
        }
        other => {
            bail!(
                "invalid output `{spec}`: type={other} is not supported (supported: image, registry, oci, docker, local, containerd)"
            )
        }
    };
    if let Some(k) = fields.keys().next() {
        bail!("invalid output `{spec}`: unknown key `{k}`");
    }
    Ok(out)
}

/// `--push`: pushes the `type=image` outputs, or adds one pushing the `-t` names (buildx's
/// `--push` is `--output type=registry`).
pub fn apply_push(outputs: &mut Vec<OutputSpec>, tags: &[String]) -> anyhow::Result<()> {
    let mut found = false;
    for o in outputs.iter_mut() {
        if let OutputSpec::Image { names, push, .. } = o {
            if names.is_empty() {
                bail!("--push: the type=image output has no name (give name=NAME or -t NAME)");
            }
            *push = true;
            found = true;
        }
    }
    if !found {
        if tags.is_empty() {
            bail!("--push needs an image name: give -t NAME");
        }
        outputs.push(OutputSpec::Image {
            names: tags.to_vec(),
            push: true,
            oci_mediatypes: true,
            insecure: false,
            compression: Compression::default(),
        });
    }
    Ok(())
}

/// Checks, before building, that every name an output pushes to is a valid reference.
pub fn validate(outputs: &[OutputSpec]) -> anyhow::Result<()> {
    for o in outputs {
        if let OutputSpec::Image { names, .. } = o {
            for n in names {
                memobuild_worker::registry::normalize_reference(n)
                    .with_context(|| format!("invalid image name `{n}`"))?;
            }
        }
    }
    Ok(())
}

/// Writes outputs of one built image.
pub struct Exporter<'a> {
    store: BlobStore,
    image: &'a ImageManifest,
    definition: &'a pb::Definition,
    insecure: Vec<String>,
    progress: &'a Progress,
    /// Every name some output pushes to (credentials are looked up for all at once).
    push_names: Vec<String>,
    pusher: Option<Pusher>,
    /// The worker, for `type=containerd` (its containerd client, namespace and lease).
    worker: Option<memobuild_worker::Worker>,
    /// Makes the layer blobs of `compression=` options (remembering them under the state dir).
    converter: Converter,
    /// How many of the image's layers are its base image's (kept unless `force-compression`).
    inherited: usize,
}

impl<'a> Exporter<'a> {
    /// An exporter for `image` (blobs in `store`), about to write `outputs`.
    pub fn new(
        store: BlobStore,
        image: &'a ImageManifest,
        definition: &'a pb::Definition,
        insecure: &[String],
        progress: &'a Progress,
        outputs: &[OutputSpec],
    ) -> Self {
        let mut insecure = insecure.to_vec();
        let mut push_names = Vec::new();
        for o in outputs {
            if let OutputSpec::Image {
                names,
                push: true,
                insecure: plain_http,
                ..
            } = o
            {
                push_names.extend(names.iter().cloned());
                if *plain_http {
                    insecure.extend(names.iter().filter_map(|n| {
                        memobuild_worker::registry::normalize_reference(n)
                            .ok()
                            .map(|r| r.resolve_registry().to_owned())
                    }));
                }
            }
        }
        Exporter {
            converter: Converter::new(store.clone(), None),
            store,
            image,
            definition,
            insecure,
            progress,
            push_names,
            pusher: None,
            worker: None,
            inherited: 0,
        }
    }

    /// Remembers layer conversions under `state_dir`, and tells the base image's layers (which
    /// `compression=` leaves as they are unless `force-compression=true`) from the build's by the
    /// `rootfs` of the frontend's image config.
    pub fn with_conversions(mut self, state_dir: &std::path::Path, frontend_config: &[u8]) -> Self {
        self.converter = Converter::new(self.store.clone(), Some(Converter::memo_dir(state_dir)));
        self.inherited = memobuild_worker::export::compression::inherited_layers(
            frontend_config,
            &self.image.layers,
        );
        self
    }

    /// Gives the exporter the worker whose containerd `type=containerd` writes into.
    pub fn with_worker(mut self, worker: memobuild_worker::Worker) -> Self {
        self.worker = Some(worker);
        self
    }

    fn message(&self, m: String) {
        self.progress.send(ProgressEvent::Message(m));
    }

    /// The image with the requested layer compression and media types.
    async fn image(
        &self,
        oci_mediatypes: bool,
        compression: Compression,
    ) -> anyhow::Result<ImageManifest> {
        let img = if compression.is_build_default() {
            self.image.clone()
        } else {
            let (conv, img, inherited) =
                (self.converter.clone(), self.image.clone(), self.inherited);
            let started = std::time::Instant::now();
            let done = tokio::task::spawn_blocking(move || {
                conv.convert_image(&img, &compression, inherited)
            })
            .await
            .context("compression task failed")??;
            let what = match compression.algorithm() {
                Algorithm::Uncompressed => "uncompressed".to_string(),
                a => format!("{a} level {}", compression.effective_level()),
            };
            if done.converted + done.reused > 0 {
                self.message(format!(
                    "layers as {what}: {} compressed in {:.1}s, {} from earlier exports",
                    done.converted,
                    started.elapsed().as_secs_f64(),
                    done.reused
                ));
            }
            done.image
        };
        if oci_mediatypes {
            return Ok(img);
        }
        if compression.algorithm() == Algorithm::Zstd {
            self.message(
                "warning: compression=zstd with oci-mediatypes=false: zstd layers get the type application/vnd.docker.image.rootfs.diff.tar.zstd (as BuildKit writes), which Docker's manifest format does not define; containerd reads it, other tools may not (prefer oci-mediatypes=true)".into(),
            );
        }
        Ok(memobuild_worker::export::mediatypes::to_docker(&img)?)
    }

    /// Writes one output; the manifest digest of the image it wrote (as that output's
    /// compression and media types made it), `None` for a filesystem or nothing written.
    pub async fn export(&mut self, out: OutputSpec) -> anyhow::Result<Option<String>> {
        match out {
            OutputSpec::Oci {
                dest,
                tar,
                names,
                oci_mediatypes,
                compression,
            } => {
                let names = normalize_names(&names)?;
                let img = self.image(oci_mediatypes, compression).await?;
                let digest = img.manifest_desc.digest.clone();
                let (store, d) = (self.store.clone(), dest.clone());
                tokio::task::spawn_blocking(move || {
                    if tar {
                        memobuild_worker::export::write_oci_archive(&d, &img, &store, &names)
                    } else {
                        memobuild_worker::export::write_oci_dir(&d, &img, &store, &names)
                    }
                })
                .await
                .context("export task failed")??;
                self.message(format!("exported {digest} to {}", dest.display()));
                Ok(Some(digest))
            }
            OutputSpec::Docker {
                dest,
                names,
                oci_mediatypes,
                compression,
            } => {
                let names = normalize_names(&names)?;
                let img = self.image(oci_mediatypes, compression).await?;
                let digest = img.manifest_desc.digest.clone();
                let (store, d) = (self.store.clone(), dest.clone());
                tokio::task::spawn_blocking(move || {
                    memobuild_worker::export::docker::write_docker_archive(&d, &img, &store, &names)
                })
                .await
                .context("export task failed")??;
                self.message(format!(
                    "exported {digest} to {} (docker archive)",
                    dest.display()
                ));
                Ok(Some(digest))
            }
            OutputSpec::Local { dest } => {
                let img = self.image.clone();
                let (store, d) = (self.store.clone(), dest.clone());
                tokio::task::spawn_blocking(move || {
                    memobuild_worker::export::local::write_local(&d, &img, &store)
                })
                .await
                .context("export task failed")??;
                self.message(format!("exported the filesystem to {}", dest.display()));
                Ok(None)
            }
            OutputSpec::Image {
                names,
                push,
                oci_mediatypes,
                compression,
                ..
            } => {
                if !push {
                    self.message(format!(
                        "warning: type=image without push=true: {} not stored anywhere (add push=true, or use type=oci or type=docker)",
                        names.join(", ")
                    ));
                    return Ok(None);
                }
                let img = self.image(oci_mediatypes, compression).await?;
                if self.pusher.is_none() {
                    self.pusher = Some(crate::push::pusher(
                        &self.push_names,
                        &self.insecure,
                        self.definition,
                    )?);
                }
                if let Some(p) = &self.pusher {
                    crate::push::push(p, &self.store, &img, &names, self.progress).await?;
                }
                Ok(Some(img.manifest_desc.digest))
            }
            OutputSpec::Containerd {
                names,
                unpack,
                oci_mediatypes,
                compression,
            } => {
                let names = normalize_names(&names)?;
                let img = self.image(oci_mediatypes, compression).await?;
                let worker = self
                    .worker
                    .as_ref()
                    .context("type=containerd: no containerd connection")?;
                let done =
                    memobuild_worker::export::containerd::import(worker, &img, &names, unpack)
                        .await?;
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
                Ok(Some(img.manifest_desc.digest))
            }
        }
    }
}

fn normalize_names(names: &[String]) -> anyhow::Result<Vec<String>> {
    names
        .iter()
        .map(|n| {
            memobuild_frontend::normalize_image_ref(n)
                .map_err(|e| anyhow::anyhow!("invalid image name `{n}`: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_tar_and_dir() {
        assert_eq!(
            parse("type=oci,dest=out.tar", &["a:1".into()]).unwrap(),
            OutputSpec::Oci {
                dest: "out.tar".into(),
                tar: true,
                names: vec!["a:1".into()],
                oci_mediatypes: true,
                compression: Compression::default(),
            }
        );
        assert_eq!(
            parse("type=oci,dest=d,tar=false,name=x,oci-mediatypes=false", &[]).unwrap(),
            OutputSpec::Oci {
                dest: "d".into(),
                tar: false,
                names: vec!["x".into()],
                oci_mediatypes: false,
                compression: Compression::default(),
            }
        );
    }

    #[test]
    fn local_docker_and_bare_paths() {
        assert_eq!(
            parse("out/dir", &[]).unwrap(),
            OutputSpec::Local {
                dest: "out/dir".into()
            }
        );
        assert_eq!(
            parse("type=local,dest=x", &["ignored:1".into()]).unwrap(),
            OutputSpec::Local { dest: "x".into() }
        );
        assert_eq!(
            parse("type=docker,dest=img.tar", &["a:1".into(), "b:2".into()]).unwrap(),
            OutputSpec::Docker {
                dest: "img.tar".into(),
                names: vec!["a:1".into(), "b:2".into()],
                oci_mediatypes: true,
                compression: Compression::default(),
            }
        );
        assert!(parse("-", &[]).is_err());
        assert!(
            parse("type=local", &[])
                .unwrap_err()
                .to_string()
                .contains("dest=DIR")
        );
        assert!(parse("type=docker", &[]).is_err());
    }

    #[test]
    fn image_outputs_and_push() {
        assert_eq!(
            parse(
                r#"type=image,"name=r/a:1,r/b:1",push=true,oci-mediatypes=false"#,
                &[]
            )
            .unwrap(),
            OutputSpec::Image {
                names: vec!["r/a:1".into(), "r/b:1".into()],
                push: true,
                oci_mediatypes: false,
                insecure: false,
                compression: Compression::default(),
            }
        );
        assert_eq!(
            parse("type=registry,registry.insecure=true", &["r/a:1".into()]).unwrap(),
            OutputSpec::Image {
                names: vec!["r/a:1".into()],
                push: true,
                oci_mediatypes: true,
                insecure: true,
                compression: Compression::default(),
            }
        );
        assert!(parse("type=image,push=true", &[]).is_err(), "no name");

        let mut outs = vec![];
        assert!(apply_push(&mut outs, &[]).is_err());
        apply_push(&mut outs, &["r/a:1".into()]).unwrap();
        assert_eq!(
            outs,
            vec![OutputSpec::Image {
                names: vec!["r/a:1".into()],
                push: true,
                oci_mediatypes: true,
                insecure: false,
                compression: Compression::default(),
            }]
        );
        let mut outs = vec![
            parse("type=image,name=r/x:1,oci-mediatypes=false", &[]).unwrap(),
            parse("type=local,dest=d", &[]).unwrap(),
        ];
        apply_push(&mut outs, &["ignored:1".into()]).unwrap();
        assert_eq!(outs.len(), 2);
        assert!(matches!(
            &outs[0],
            OutputSpec::Image {
                push: true,
                oci_mediatypes: false,
                ..
            }
        ));
    }

    #[test]
    fn containerd_output() {
        assert_eq!(
            parse("type=containerd", &["a:1".into()]).unwrap(),
            OutputSpec::Containerd {
                names: vec!["a:1".into()],
                unpack: false,
                oci_mediatypes: true,
                compression: Compression::default(),
            }
        );
        assert_eq!(
            parse(
                "type=containerd,name=x,unpack=true,oci-mediatypes=false",
                &[]
            )
            .unwrap(),
            OutputSpec::Containerd {
                names: vec!["x".into()],
                unpack: true,
                oci_mediatypes: false,
                compression: Compression::default(),
            }
        );
        assert!(
            parse("type=containerd", &[])
                .unwrap_err()
                .to_string()
                .contains("name=NAME")
        );
    }

    #[test]
    fn compression_options_on_every_image_output() {
        let zstd = Compression::new(Algorithm::Zstd, Some(19), true).unwrap();
        let opts = "compression=zstd,compression-level=19,force-compression=true";
        assert_eq!(
            parse(&format!("type=oci,dest=o.tar,{opts}"), &[]).unwrap(),
            OutputSpec::Oci {
                dest: "o.tar".into(),
                tar: true,
                names: vec![],
                oci_mediatypes: true,
                compression: zstd,
            }
        );
        for spec in [
            format!("type=docker,dest=d.tar,{opts}"),
            format!("type=image,name=r/a:1,push=true,{opts}"),
            format!("type=registry,name=r/a:1,{opts}"),
            format!("type=containerd,name=a:1,{opts}"),
        ] {
            let c = match parse(&spec, &[]).unwrap() {
                OutputSpec::Docker { compression, .. }
                | OutputSpec::Image { compression, .. }
                | OutputSpec::Containerd { compression, .. } => compression,
                other => panic!("{other:?}"),
            };
            assert_eq!(c, zstd, "{spec}");
        }
        // An empty `force-compression=` means true (BuildKit); gzip is the default algorithm.
        let OutputSpec::Oci { compression, .. } = parse(
            "type=oci,dest=o,compression-level=9,force-compression=",
            &[],
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            compression,
            Compression::new(Algorithm::Gzip, Some(9), true).unwrap()
        );
        let OutputSpec::Oci { compression, .. } =
            parse("type=oci,dest=o,compression=uncompressed", &[]).unwrap()
        else {
            panic!()
        };
        assert_eq!(compression.algorithm(), Algorithm::Uncompressed);

        let err = |spec: &str| format!("{:#}", parse(spec, &[]).unwrap_err());
        assert!(
            err("type=oci,dest=o,compression=lz4").contains("compression=lz4 is not supported"),
            "{}",
            err("type=oci,dest=o,compression=lz4")
        );
        assert!(
            err("type=oci,dest=o,compression-level=10").contains("out of range for gzip (0-9)")
        );
        assert!(
            err("type=oci,dest=o,compression=zstd,compression-level=23")
                .contains("out of range for zstd (0-22)")
        );
        assert!(err("type=oci,dest=o,compression-level=high").contains("not an integer"));
        assert!(err("type=oci,dest=o,force-compression=maybe").contains("boolean"));
        // type=local writes files, not layers.
        assert!(err("type=local,dest=d,compression=zstd").contains("unknown key `compression`"));
    }

    #[test]
    fn errors_name_the_problem() {
        assert!(
            parse("type=oci", &[])
                .unwrap_err()
                .to_string()
                .contains("dest")
        );
        assert!(
            parse("type=weird,dest=x", &[])
                .unwrap_err()
                .to_string()
                .contains("weird")
        );
        assert!(
            parse("type=oci,dest=x,tar=maybe", &[])
                .unwrap_err()
                .to_string()
                .contains("boolean")
        );
        assert!(
            parse("type=oci,dest=x,bogus=1", &[])
                .unwrap_err()
                .to_string()
                .contains("bogus")
        );
        assert!(parse(r#"type=image,"name=a"#, &[]).is_err());
    }
}
