//! Exporters as BuildKit describes them: a type and a map of attributes.
//!
//! `buildctl --output type=image,name=r/a,push=true`, `docker buildx build --push` and
//! `memobuild build --output …` all end up as one `(type, attrs)` pair per output (BuildKit's
//! `SolveRequest.Exporters`; the client keeps `dest` for itself). [`ExporterSpec::from_attrs`]
//! reads the keys BuildKit's exporters read, with the same defaults.

use std::collections::BTreeMap;

use crate::export::compression::{Algorithm, Compression};

/// An invalid exporter request, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("exporter `{kind}`: {message}")]
pub struct SpecError {
    /// The exporter type.
    pub kind: String,
    /// What is wrong.
    pub message: String,
}

/// Options of outputs that write an image (`image`, `oci`, `docker`, `containerd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOptions {
    /// Names (`name=`, comma-separated).
    pub names: Vec<String>,
    /// OCI media types (true) or Docker's (false).
    pub oci_mediatypes: bool,
    /// Layer compression.
    pub compression: Compression,
}

/// One parsed exporter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExporterSpec {
    /// An image in a registry (`type=image`, `type=registry`).
    Image {
        /// Names, media types, compression.
        image: ImageOptions,
        /// Whether to push (without it there is nowhere to put the image).
        push: bool,
        /// Reach these names' registries over plain HTTP (`registry.insecure=true`).
        insecure: bool,
    },
    /// An OCI image layout, as a tar stream or (`tar=false`) a directory.
    Oci {
        /// Names, media types, compression.
        image: ImageOptions,
        /// Tar stream (true) or directory (false).
        tar: bool,
    },
    /// A tar `docker load` reads (which OCI tools read too).
    Docker {
        /// Names, media types, compression.
        image: ImageOptions,
    },
    /// The image's filesystem as a directory.
    Local,
    /// The image's filesystem as a tar stream.
    Tar,
    /// The image in containerd's image store, in the build's namespace (`type=containerd`).
    Containerd {
        /// Names, media types, compression.
        image: ImageOptions,
        /// Also make its snapshots, so it is ready to run (`unpack=true`).
        unpack: bool,
    },
}

/// A parsed exporter and the attributes it did not know (BuildKit ignores those; a caller may
/// warn or refuse).
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The exporter.
    pub spec: ExporterSpec,
    /// Keys nobody read.
    pub unknown: Vec<String>,
}

/// Keys BuildKit's image exporters accept that change nothing here (attestations, annotations,
/// naming variants); read so they are not reported as unknown.
const IGNORED_IMAGE_KEYS: &[&str] = &[
    "unpack",
    "store",
    "push-by-digest",
    "name-canonical",
    "dangling-name-prefix",
    "oci-artifact",
    "attestation-inline",
    "prefer-nondist-layers",
    "buildinfo",
    "buildinfo-attrs",
    "rewrite-timestamp",
    "source-date-epoch",
];

/// Keys every exporter may carry that mean nothing to it.
const IGNORED_KEYS: &[&str] = &["platform-split", "attestation-prefix", "mode"];

struct Attrs<'a> {
    kind: &'a str,
    map: BTreeMap<String, String>,
}

impl Attrs<'_> {
    fn err(&self, message: String) -> SpecError {
        SpecError {
            kind: self.kind.to_string(),
            message,
        }
    }

    /// A boolean: absent gives `default`; an empty value means true, as BuildKit reads a
    /// bare key.
    fn bool(&mut self, key: &str, default: bool) -> Result<bool, SpecError> {
        match self.map.remove(key).as_deref() {
            None => Ok(default),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some("false") | Some("0") => Ok(false),
            Some(v) => Err(self.err(format!("{key}={v} is not a boolean"))),
        }
    }

    fn names(&mut self) -> Vec<String> {
        self.map
            .remove("name")
            .map(|n| {
                n.split([',', ';'])
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `compression=`, `compression-level=`, `force-compression=`.
    fn compression(&mut self) -> Result<Compression, SpecError> {
        let algorithm = match self.map.remove("compression") {
            Some(a) => Algorithm::parse(&a).map_err(|e| self.err(e.to_string()))?,
            None => Algorithm::Gzip,
        };
        let level = match self.map.remove("compression-level") {
            Some(l) => Some(
                l.parse::<i32>()
                    .map_err(|_| self.err(format!("compression-level={l} is not an integer")))?,
            ),
            None => None,
        };
        let force = self.bool("force-compression", false)?;
        Compression::new(algorithm, level, force).map_err(|e| self.err(e.to_string()))
    }

    fn image(&mut self) -> Result<ImageOptions, SpecError> {
        Ok(ImageOptions {
            names: self.names(),
            oci_mediatypes: self.bool("oci-mediatypes", true)?,
            compression: self.compression()?,
        })
    }

    fn drop_keys(&mut self, keys: &[&str]) {
        for k in keys {
            self.map.remove(*k);
        }
        // Annotations (`annotation.*`, `annotation-manifest(...)...`) are accepted, not applied.
        self.map.retain(|k, _| !k.starts_with("annotation"));
    }
}

impl ExporterSpec {
    /// Reads an exporter of type `kind` with `attrs`, as BuildKit's exporters do.
    pub fn from_attrs(kind: &str, attrs: &BTreeMap<String, String>) -> Result<Parsed, SpecError> {
        let mut a = Attrs {
            kind,
            map: attrs.clone(),
        };
        let spec = match kind {
            "image" | "registry" => {
                let image = a.image()?;
                let push = a.bool("push", kind == "registry")?;
                if push && image.names.is_empty() {
                    return Err(a.err("pushing needs name=NAME".into()));
                }
                let insecure = a.bool("registry.insecure", false)?;
                a.drop_keys(IGNORED_IMAGE_KEYS);
                ExporterSpec::Image {
                    image,
                    push,
                    insecure,
                }
            }
            "oci" | "docker" => {
                let image = a.image()?;
                let tar = a.bool("tar", true)?;
                a.drop_keys(IGNORED_IMAGE_KEYS);
                if kind == "oci" {
                    ExporterSpec::Oci { image, tar }
                } else if tar {
                    ExporterSpec::Docker { image }
                } else {
                    return Err(a.err("tar=false is only supported for type=oci".into()));
                }
            }
            "containerd" => {
                let image = a.image()?;
                if image.names.is_empty() {
                    return Err(a.err("type=containerd needs name=NAME".into()));
                }
                let unpack = a.bool("unpack", false)?;
                a.drop_keys(IGNORED_IMAGE_KEYS);
                ExporterSpec::Containerd { image, unpack }
            }
            "local" => ExporterSpec::Local,
            "tar" => ExporterSpec::Tar,
            other => {
                return Err(SpecError {
                    kind: other.to_string(),
                    message: "unknown exporter type (supported: image, registry, oci, docker, tar, local, containerd)".into(),
                });
            }
        };
        a.drop_keys(IGNORED_KEYS);
        Ok(Parsed {
            spec,
            unknown: a.map.into_keys().collect(),
        })
    }

    /// BuildKit's name of the exporter type.
    pub fn kind(&self) -> &'static str {
        match self {
            ExporterSpec::Image { .. } => "image",
            ExporterSpec::Oci { .. } => "oci",
            ExporterSpec::Docker { .. } => "docker",
            ExporterSpec::Local => "local",
            ExporterSpec::Tar => "tar",
            ExporterSpec::Containerd { .. } => "containerd",
        }
    }

    /// Whether the output is a tar stream (written to a [`crate::export::sink::FileTarget`]).
    pub fn is_file(&self) -> bool {
        matches!(
            self,
            ExporterSpec::Oci { tar: true, .. } | ExporterSpec::Docker { .. } | ExporterSpec::Tar
        )
    }

    /// Whether the output is a directory (written to a [`crate::export::sink::DirTarget`]).
    pub fn is_dir(&self) -> bool {
        matches!(
            self,
            ExporterSpec::Local | ExporterSpec::Oci { tar: false, .. }
        )
    }

    /// The image options, for outputs that write an image.
    pub fn image_options(&self) -> Option<&ImageOptions> {
        match self {
            ExporterSpec::Image { image, .. }
            | ExporterSpec::Oci { image, .. }
            | ExporterSpec::Docker { image }
            | ExporterSpec::Containerd { image, .. } => Some(image),
            ExporterSpec::Local | ExporterSpec::Tar => None,
        }
    }

    /// The image options, mutable (`-t` names fill in an output without `name=`).
    pub fn image_options_mut(&mut self) -> Option<&mut ImageOptions> {
        match self {
            ExporterSpec::Image { image, .. }
            | ExporterSpec::Oci { image, .. }
            | ExporterSpec::Docker { image }
            | ExporterSpec::Containerd { image, .. } => Some(image),
            ExporterSpec::Local | ExporterSpec::Tar => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn image_push_with_buildkit_keys() {
        let p = ExporterSpec::from_attrs(
            "image",
            &attrs(&[
                ("name", "r/a:1,r/b:1"),
                ("push", "true"),
                ("unpack", "false"),
                ("buildinfo-attrs", "x"),
                ("annotation.org.x", "y"),
                ("registry.insecure", ""),
            ]),
        )
        .unwrap();
        assert!(p.unknown.is_empty(), "{:?}", p.unknown);
        let ExporterSpec::Image {
            image,
            push,
            insecure,
        } = p.spec
        else {
            panic!("{:?}", p.spec)
        };
        assert_eq!(image.names, ["r/a:1", "r/b:1"]);
        assert!(push && insecure && image.oci_mediatypes);
    }

    #[test]
    fn defaults_and_errors_as_buildkit() {
        let p = ExporterSpec::from_attrs("registry", &attrs(&[("name", "r/a")])).unwrap();
        assert!(matches!(p.spec, ExporterSpec::Image { push: true, .. }));
        assert!(ExporterSpec::from_attrs("image", &attrs(&[("push", "true")])).is_err());
        let p = ExporterSpec::from_attrs("oci", &attrs(&[("tar", "false")])).unwrap();
        assert!(p.spec.is_dir() && !p.spec.is_file());
        assert!(
            ExporterSpec::from_attrs("docker", &attrs(&[]))
                .unwrap()
                .spec
                .is_file()
        );
        assert!(
            ExporterSpec::from_attrs("tar", &attrs(&[]))
                .unwrap()
                .spec
                .is_file()
        );
        let e = ExporterSpec::from_attrs("weird", &attrs(&[])).unwrap_err();
        assert!(e.to_string().contains("unknown exporter type"), "{e}");
        let e = ExporterSpec::from_attrs("oci", &attrs(&[("tar", "maybe")])).unwrap_err();
        assert!(e.to_string().contains("boolean"), "{e}");
        let p = ExporterSpec::from_attrs("local", &attrs(&[("bogus", "1")])).unwrap();
        assert_eq!(p.unknown, ["bogus"]);
        let e = ExporterSpec::from_attrs("oci", &attrs(&[("compression", "lz4")])).unwrap_err();
        assert!(e.to_string().contains("lz4"), "{e}");
    }
}
