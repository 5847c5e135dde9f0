//! Provenance attestations, as BuildKit attaches them to pushed images: an in-toto statement
//! with an SLSA provenance v1 predicate (`https://slsa.dev/provenance/v1`), carried as the one
//! layer of an attestation manifest (`artifactType`
//! `application/vnd.docker.attestation.manifest.v1+json`, the empty config, `subject` the
//! image), listed beside the image in an index with platform `unknown/unknown` and the
//! `vnd.docker.reference.*` annotations. Registries, `docker buildx imagetools inspect` and
//! `docker scout` read them from there.
//!
//! buildx asks for one by default (`attest:provenance=mode=min,inline-only=true`): only the
//! image exporter with a push attaches it, as BuildKit's does. `mode=min` leaves out build
//! argument and label values (and then says the request is incomplete); `mode=max` keeps them.
//! What BuildKit adds in `max` beyond that (the LLB definition, Dockerfile source maps, layer
//! lists) MemoBuild does not record.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use memobuild_proto::pb;
use prost::Message as _;

use crate::blobs::sha256_digest;
use crate::export::manifest::{Descriptor, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST};
use crate::registry::normalize_reference;

/// Predicate type of SLSA provenance v1.
pub const PREDICATE_SLSA_V1: &str = "https://slsa.dev/provenance/v1";
/// Annotation naming an in-toto blob's predicate type (on its descriptor).
pub const PREDICATE_TYPE_ANNOTATION: &str = "in-toto.io/predicate-type";
/// Media type of an in-toto statement layer.
pub const MEDIA_TYPE_IN_TOTO: &str = "application/vnd.in-toto+json";
/// `artifactType` of an attestation manifest.
pub const ARTIFACT_TYPE_ATTESTATION: &str = "application/vnd.docker.attestation.manifest.v1+json";
/// Media type of the OCI empty descriptor (`{}`).
pub const MEDIA_TYPE_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// BuildKit's build type for its provenance.
const BUILD_TYPE: &str =
    "https://github.com/moby/buildkit/blob/master/docs/attestations/slsa-definitions.md";
/// Frontend attributes that describe this machine rather than the build (BuildKit's
/// `FilterArgs`).
const HOST_SPECIFIC: &[&str] = &[
    "cgroup-parent",
    "image-resolve-mode",
    "platform",
    "cache-imports",
];

/// How much the provenance tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Without build argument and label values.
    Min,
    /// With them.
    Max,
}

/// A provenance request (`attest:provenance`) and what the build knows of itself.
#[derive(Debug, Clone)]
pub struct Provenance {
    /// `mode=`.
    pub mode: Mode,
    /// `inline-only=true`: only outputs that carry attestations inline (a pushed image).
    pub inline_only: bool,
    /// `builder-id=`.
    pub builder_id: String,
    /// The frontend (`dockerfile.v0`, `gateway.v0`; empty for a client-side one).
    pub frontend: String,
    /// Its attributes, as the client sent them, but without credentials in context URLs
    /// (the caller removes them: a statement is public).
    pub frontend_attrs: BTreeMap<String, String>,
    /// Names of the local sources the client provided (`context`, `dockerfile`).
    pub locals: Vec<String>,
    /// The build's reference (BuildKit's invocation id).
    pub invocation_id: String,
    /// When the build started, RFC 3339.
    pub started_on: String,
    /// The builder's platform (`linux/amd64`).
    pub builder_platform: String,
}

/// Why a provenance request cannot be honoured.
#[derive(Debug, thiserror::Error)]
#[error("attest:provenance `{value}`: {reason}")]
pub struct ProvenanceError {
    value: String,
    reason: String,
}

impl Provenance {
    /// A provenance of `mode` that says nothing of the build yet.
    pub fn new(mode: Mode) -> Provenance {
        Provenance {
            mode,
            inline_only: false,
            builder_id: String::new(),
            frontend: String::new(),
            frontend_attrs: BTreeMap::new(),
            locals: Vec::new(),
            invocation_id: String::new(),
            started_on: String::new(),
            builder_platform: String::new(),
        }
    }

    /// Reads BuildKit's `attest:provenance` value (`mode=min,inline-only=true`, …). `None`
    /// for `disabled=true` (buildx `--provenance=false`). A bad `mode` is refused, and
    /// `version=v0.2` (only v1 is written); keys it does not know are ignored, as BuildKit
    /// ignores them.
    pub fn parse(value: &str) -> Result<Option<Provenance>, ProvenanceError> {
        let err = |reason: String| ProvenanceError {
            value: value.to_owned(),
            reason,
        };
        let mut p = Provenance::new(Mode::Min);
        let boolean = |k: &str, v: &str| match v {
            "" | "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(err(format!("`{k}` is true or false, not `{v}`"))),
        };
        for part in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            match k {
                "mode" => {
                    p.mode = match v {
                        "min" => Mode::Min,
                        "max" => Mode::Max,
                        _ => return Err(err(format!("mode is `min` or `max`, not `{v}`"))),
                    }
                }
                "inline-only" => p.inline_only = boolean(k, v)?,
                "disabled" if boolean(k, v)? => return Ok(None),
                "disabled" => {}
                "builder-id" => p.builder_id = v.to_owned(),
                "version" if v == "v1" || v.is_empty() => {}
                "version" => {
                    return Err(err(format!(
                        "MemoBuild writes SLSA provenance v1 only, not `{v}`"
                    )));
                }
                "type" if v == "provenance" => {}
                "type" => return Err(err(format!("not a provenance request (`type={v}`)"))),
                // Other keys (`filename`, where a local exporter would write it, and any later
                // BuildKit adds) change nothing here, as BuildKit ignores keys it does not know.
                _ => {}
            }
        }
        Ok(Some(p))
    }

    /// The in-toto statement for an image whose manifest is `subject` (platform
    /// `platform` as `os/arch[/variant]`), pushed as `names`, built from `materials`
    /// (`docker.io/library/busybox:latest@sha256:…`), finished `finished_on` (RFC 3339).
    pub fn statement(
        &self,
        names: &[String],
        subject: &Descriptor,
        platform: &str,
        materials: &[String],
        finished_on: &str,
    ) -> Vec<u8> {
        let subjects: Vec<Value> = names
            .iter()
            .filter_map(|n| purl(n, platform))
            .map(|(name, _)| json!({ "name": name, "digest": { "sha256": hex(&subject.digest) } }))
            .collect();
        let statement = json!({
            "_type": "https://in-toto.io/Statement/v1",
            "predicateType": PREDICATE_SLSA_V1,
            "subject": subjects,
            "predicate": self.predicate(platform, materials, finished_on),
        });
        serde_json::to_vec_pretty(&statement).unwrap_or_default()
    }

    /// The SLSA v1 predicate alone, as BuildKit keeps one with each build-history record
    /// (a blob of media type [`MEDIA_TYPE_IN_TOTO`] whose descriptor is annotated
    /// [`PREDICATE_TYPE_ANNOTATION`] = [`PREDICATE_SLSA_V1`]); buildx reads it for
    /// `--metadata-file` and `docker buildx history inspect`.
    pub fn predicate_json(
        &self,
        platform: &str,
        materials: &[String],
        finished_on: &str,
    ) -> Vec<u8> {
        serde_json::to_vec_pretty(&self.predicate(platform, materials, finished_on))
            .unwrap_or_default()
    }

    fn predicate(&self, platform: &str, materials: &[String], finished_on: &str) -> Value {
        let dependencies: Vec<Value> = materials
            .iter()
            .filter_map(|m| purl(m, platform))
            .filter_map(|(uri, digest)| {
                Some(json!({ "uri": uri, "digest": { "sha256": hex(&digest?) } }))
            })
            .collect();

        let mut args: BTreeMap<String, String> = BTreeMap::new();
        let mut complete = true;
        let mut config_path = "Dockerfile".to_owned();
        for (k, v) in &self.frontend_attrs {
            if HOST_SPECIFIC.contains(&k.as_str()) || k.starts_with("attest:") {
                continue;
            }
            if k == "filename" {
                config_path = v.clone();
                continue;
            }
            if self.mode == Mode::Min && (k.starts_with("build-arg:") || k.starts_with("label:")) {
                complete = false;
                continue;
            }
            args.insert(k.clone(), v.clone());
        }
        let mut request = json!({ "frontend": self.frontend });
        if !args.is_empty() {
            request["args"] = json!(args);
        }
        if !self.locals.is_empty() {
            request["locals"] =
                Value::Array(self.locals.iter().map(|n| json!({ "name": n })).collect());
        }
        json!({
                "buildDefinition": {
                    "buildType": BUILD_TYPE,
                    "resolvedDependencies": dependencies,
                    "externalParameters": {
                        "configSource": { "path": config_path },
                        "request": request,
                    },
                    "internalParameters": { "builderPlatform": self.builder_platform },
                },
                "runDetails": {
                    "builder": { "id": self.builder_id },
                    "metadata": {
                        "invocationId": self.invocation_id,
                        "startedOn": self.started_on,
                        "finishedOn": finished_on,
                        "buildkit_metadata": {},
                        "buildkit_completeness": {
                            "request": complete,
                            "resolvedDependencies": false,
                        },
                    },
                },
        })
    }
}

fn hex(digest: &str) -> String {
    digest.strip_prefix("sha256:").unwrap_or(digest).to_owned()
}

/// An attestation manifest and what it refers to, ready to push.
#[derive(Debug, Clone)]
pub struct Attached {
    /// The statement (the manifest's one layer).
    pub statement: Vec<u8>,
    /// Its descriptor, as the manifest lists it.
    pub statement_desc: Descriptor,
    /// The attestation manifest.
    pub manifest: Vec<u8>,
    /// Its descriptor, as listed in the index.
    pub manifest_desc: Descriptor,
    /// The index of the image and its attestation.
    pub index: Vec<u8>,
    /// The index's descriptor.
    pub index_desc: Descriptor,
}

/// The empty config blob an attestation manifest names.
pub const EMPTY_CONFIG: &[u8] = b"{}";

/// The attestation manifest for `statement` about the image `image` (its manifest's
/// descriptor, platform `platform` as the index lists it), and the index of both.
pub fn attach(statement: Vec<u8>, image: &Descriptor, platform: &Value) -> Attached {
    let statement_desc = Descriptor {
        annotations: BTreeMap::from([(
            PREDICATE_TYPE_ANNOTATION.to_owned(),
            PREDICATE_SLSA_V1.to_owned(),
        )]),
        ..Descriptor::of(MEDIA_TYPE_IN_TOTO, &statement)
    };
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_MANIFEST,
        "artifactType": ARTIFACT_TYPE_ATTESTATION,
        "config": {
            "mediaType": MEDIA_TYPE_EMPTY,
            "digest": sha256_digest(EMPTY_CONFIG),
            "size": EMPTY_CONFIG.len(),
            "data": "e30=",
        },
        "layers": [statement_desc],
        "subject": { "mediaType": image.media_type, "digest": image.digest, "size": image.size },
    });
    let manifest = serde_json::to_vec(&manifest).unwrap_or_default();
    let manifest_desc = Descriptor {
        annotations: BTreeMap::from([
            (
                "vnd.docker.reference.digest".to_owned(),
                image.digest.clone(),
            ),
            (
                "vnd.docker.reference.type".to_owned(),
                "attestation-manifest".to_owned(),
            ),
        ]),
        ..Descriptor::of(MEDIA_TYPE_MANIFEST, &manifest)
    };
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_INDEX,
        "manifests": [
            {
                "mediaType": image.media_type,
                "digest": image.digest,
                "size": image.size,
                "platform": platform,
            },
            {
                "mediaType": manifest_desc.media_type,
                "digest": manifest_desc.digest,
                "size": manifest_desc.size,
                "annotations": manifest_desc.annotations,
                "platform": { "architecture": "unknown", "os": "unknown" },
            },
        ],
    });
    let index = serde_json::to_vec(&index).unwrap_or_default();
    let index_desc = Descriptor::of(MEDIA_TYPE_INDEX, &index);
    Attached {
        statement,
        statement_desc,
        manifest,
        manifest_desc,
        index,
        index_desc,
    }
}

/// The base images of `definition`: the `docker-image://` references its source ops pull
/// (digest-pinned), each once. They are the provenance's materials (and a push's cross-mount
/// sources).
pub fn base_images(definition: &pb::Definition) -> Vec<String> {
    let mut out = Vec::new();
    for bytes in &definition.def {
        let Ok(op) = pb::Op::decode(bytes.as_slice()) else {
            continue;
        };
        if let Some(pb::op::Op::Source(s)) = &op.op
            && let Some(r) = s.identifier.strip_prefix("docker-image://")
            && !out.iter().any(|x: &String| x == r)
        {
            out.push(r.to_owned());
        }
    }
    out
}

/// The package URL of an image reference for `platform` (BuildKit's `purl.RefToPURL`): Docker
/// Hub's `library/` dropped, a registry's `:` percent-encoded, the tag after `@`; the reference's
/// digest apart. `None` for a reference that does not parse.
pub fn purl(reference: &str, platform: &str) -> Option<(String, Option<String>)> {
    let r = normalize_reference(reference).ok()?;
    let repo = match r.registry() {
        "docker.io" => r
            .repository()
            .strip_prefix("library/")
            .unwrap_or(r.repository())
            .to_owned(),
        registry => format!("{}/{}", registry.replace(':', "%3A"), r.repository()),
    };
    let purl = format!(
        "pkg:docker/{repo}@{}?platform={}",
        r.tag().unwrap_or("latest"),
        platform.replace('/', "%2F")
    );
    Some((purl, r.digest().map(str::to_owned)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_as_buildx_sends_them() {
        let p = Provenance::parse("mode=min,inline-only=true")
            .unwrap()
            .unwrap();
        assert_eq!((p.mode, p.inline_only), (Mode::Min, true));
        let p = Provenance::parse("mode=max").unwrap().unwrap();
        assert_eq!((p.mode, p.inline_only), (Mode::Max, false));
        assert!(Provenance::parse("disabled=true").unwrap().is_none());
        let e = Provenance::parse("mode=full").unwrap_err().to_string();
        assert!(e.contains("`min` or `max`"), "{e}");
        assert!(Provenance::parse("version=v0.2").is_err());
        let p = Provenance::parse("type=provenance,mode=max,colour=red")
            .unwrap()
            .unwrap();
        assert_eq!(p.mode, Mode::Max);
        assert!(Provenance::parse("type=sbom").is_err());
    }

    #[test]
    fn purls_are_buildkits() {
        let amd64 = "linux/amd64";
        let name = |r: &str, p: &str| purl(r, p).map(|(n, _)| n);
        assert_eq!(
            name("docker.io/library/busybox:latest", amd64).as_deref(),
            Some("pkg:docker/busybox@latest?platform=linux%2Famd64")
        );
        assert_eq!(
            name("127.0.0.1:5000/prov/app:1", amd64).as_deref(),
            Some("pkg:docker/127.0.0.1%3A5000/prov/app@1?platform=linux%2Famd64")
        );
        assert_eq!(
            name("docker.io/org/app", "linux/arm64/v8").as_deref(),
            Some("pkg:docker/org/app@latest?platform=linux%2Farm64%2Fv8")
        );
        let pinned = format!("busybox:1@sha256:{}", "c".repeat(64));
        assert_eq!(
            purl(&pinned, amd64).and_then(|(_, d)| d),
            Some(format!("sha256:{}", "c".repeat(64)))
        );
    }

    // Verifies: mode=min drops build-arg and label values and says the request is incomplete;
    // mode=max keeps them; host-specific attributes never appear; the subject is the image
    // manifest; the attestation manifest names the image as its subject and the index lists
    // both, the attestation as unknown/unknown.
    #[test]
    fn statements_and_manifests_have_buildkits_shape() {
        let mut p = Provenance::parse("mode=min,inline-only=true")
            .unwrap()
            .unwrap();
        p.frontend = "dockerfile.v0".into();
        p.locals = vec!["context".into(), "dockerfile".into()];
        p.frontend_attrs = BTreeMap::from([
            ("build-arg:TOKEN".into(), "secret".into()),
            ("label:a".into(), "b".into()),
            ("target".into(), "prod".into()),
            ("image-resolve-mode".into(), "pull".into()),
            ("context".into(), "https://git.example/r.git#main".into()),
            ("filename".into(), "docker/Dockerfile".into()),
        ]);
        let image = Descriptor {
            media_type: MEDIA_TYPE_MANIFEST.into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 1000,
            annotations: BTreeMap::new(),
        };
        let base = format!("docker.io/library/busybox:latest@sha256:{}", "b".repeat(64));
        let s = p.statement(
            &["127.0.0.1:5000/app:1".into()],
            &image,
            "linux/amd64",
            std::slice::from_ref(&base),
            "2026-01-01T00:00:00Z",
        );
        let v: Value = serde_json::from_slice(&s).unwrap();
        assert_eq!(v["subject"][0]["digest"]["sha256"], "a".repeat(64));
        let def = &v["predicate"]["buildDefinition"];
        assert_eq!(
            def["resolvedDependencies"][0]["digest"]["sha256"],
            "b".repeat(64)
        );
        let req = &def["externalParameters"]["request"];
        assert_eq!(
            req["args"],
            json!({"target": "prod", "context": "https://git.example/r.git#main"})
        );
        assert_eq!(
            def["externalParameters"]["configSource"]["path"],
            "docker/Dockerfile"
        );
        let done = &v["predicate"]["runDetails"]["metadata"]["buildkit_completeness"];
        assert_eq!(done["request"], false);

        p.mode = Mode::Max;
        let v: Value =
            serde_json::from_slice(&p.statement(&[], &image, "linux/amd64", &[], "")).unwrap();
        let args = &v["predicate"]["buildDefinition"]["externalParameters"]["request"]["args"];
        assert_eq!(args["build-arg:TOKEN"], "secret");

        let platform = json!({"architecture": "amd64", "os": "linux"});
        let a = attach(s, &image, &platform);
        let m: Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(m["subject"]["digest"], image.digest);
        assert_eq!(m["layers"][0]["digest"], sha256_digest(&a.statement));
        let idx: Value = serde_json::from_slice(&a.index).unwrap();
        assert_eq!(idx["manifests"][0]["digest"], image.digest);
        assert_eq!(idx["manifests"][1]["platform"]["os"], "unknown");
        assert_eq!(
            idx["manifests"][1]["annotations"]["vnd.docker.reference.type"],
            "attestation-manifest"
        );
        assert_eq!(a.index_desc.digest, sha256_digest(&a.index));
    }
}
