//! What `build --addr` asks the daemon for, from the same flags as a local build: the local
//! directories the session offers, the Dockerfile frontend's options, the exporters and the
//! entitlements.
//!
//! The frontend options are buildctl's `--opt`s for `--frontend dockerfile.v0`
//! (`frontend/dockerui/config.go` reads them): `filename`, `target`, `build-arg:K`,
//! `no-cache`; plus `build-arg:SOURCE_DATE_EPOCH` from the environment, which buildctl
//! propagates (`cmd/buildctl/build/util.go`). The same map goes to `Control/Solve`
//! (`FrontendAttrs`) and to `LLBBridge/Solve` (`FrontendOpt`), as in buildctl.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sha2::{Digest, Sha256};

use crate::cli::BuildArgs;
use crate::client::exporters::{self, Export};

/// The session's directory names, as the Dockerfile frontend asks for them (`dir-name`).
pub const LOCAL_CONTEXT: &str = "context";
/// See [`LOCAL_CONTEXT`].
pub const LOCAL_DOCKERFILE: &str = "dockerfile";

/// One remote build, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRequest {
    /// Directories the daemon may pull, by name.
    pub locals: BTreeMap<String, PathBuf>,
    /// Frontend options (`FrontendAttrs` and `FrontendOpt`).
    pub frontend_attrs: BTreeMap<String, String>,
    /// Exporters, in order (their index is their id).
    pub exports: Vec<Export>,
    /// `--allow` entitlements.
    pub entitlements: Vec<String>,
    /// The session's shared key (see [`shared_key`]).
    pub shared_key: String,
}

impl BuildRequest {
    /// Reads the flags (and `--build-arg KEY` / `SOURCE_DATE_EPOCH` from the environment).
    pub fn from_args(args: &BuildArgs) -> anyhow::Result<BuildRequest> {
        let frontend = &args.frontend;
        if frontend.use_gitignore {
            bail!(
                "--use-gitignore is not supported with --addr (the daemon applies .dockerignore only)"
            );
        }
        let context = &frontend.context;
        if !context.is_dir() {
            bail!(
                "context `{}` is not a directory (with --addr the context must be a local directory)",
                context.display()
            );
        }
        let dockerfile = frontend
            .file
            .clone()
            .unwrap_or_else(|| context.join("Dockerfile"));
        if !dockerfile.is_file() {
            bail!("cannot read Dockerfile `{}`", dockerfile.display());
        }
        let (dockerfile_dir, filename) = split_dockerfile(&dockerfile)?;
        let build_args = crate::build::parse_build_args(&frontend.build_args)?;
        for allow in &args.allow {
            validate_entitlement(allow)?;
        }
        Ok(BuildRequest {
            locals: BTreeMap::from([
                (LOCAL_CONTEXT.to_owned(), context.clone()),
                (LOCAL_DOCKERFILE.to_owned(), dockerfile_dir),
            ]),
            frontend_attrs: frontend_attrs(
                &filename,
                frontend.target.as_deref(),
                &build_args,
                args.no_cache,
                std::env::var("SOURCE_DATE_EPOCH").ok(),
            ),
            exports: exporters::exports(&args.outputs, args.push, &args.tags)?,
            entitlements: args.allow.clone(),
            shared_key: shared_key(context),
        })
    }
}

/// The directory holding the Dockerfile (the `dockerfile` local) and its file name (the
/// `filename` option).
fn split_dockerfile(file: &Path) -> anyhow::Result<(PathBuf, String)> {
    let name = file.file_name().and_then(|n| n.to_str()).with_context(|| {
        format!(
            "Dockerfile path `{}` has no usable file name",
            file.display()
        )
    })?;
    let dir = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, name.to_owned()))
}

/// The frontend options. An explicit `--build-arg SOURCE_DATE_EPOCH=…` wins over the
/// environment's, as buildctl's `--opt` wins over its environment.
pub fn frontend_attrs(
    filename: &str,
    target: Option<&str>,
    build_args: &BTreeMap<String, String>,
    no_cache: bool,
    source_date_epoch: Option<String>,
) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    if let Some(epoch) = source_date_epoch {
        attrs.insert("build-arg:SOURCE_DATE_EPOCH".to_owned(), epoch);
    }
    attrs.insert("filename".to_owned(), filename.to_owned());
    if let Some(t) = target {
        attrs.insert("target".to_owned(), t.to_owned());
    }
    for (k, v) in build_args {
        attrs.insert(format!("build-arg:{k}"), v.clone());
    }
    if no_cache {
        // buildctl's spelling: present and empty means "ignore the cache for every step".
        attrs.insert("no-cache".to_owned(), String::new());
    }
    attrs
}

/// The session's shared key: stable per context directory, so that the daemon keeps one
/// incremental copy of each project's context (BuildKit names its local-source cache after
/// the source name, the shared-key hint and this key). buildctl sends an empty key, which
/// makes every project share one copy and transfer everything again after switching; buildx
/// derives one from the directory as we do. The key names no path: a daemon's operator sees
/// a hash only.
pub fn shared_key(context: &Path) -> String {
    let abs = std::fs::canonicalize(context).unwrap_or_else(|_| context.to_path_buf());
    let digest = Sha256::digest(abs.as_os_str().as_encoded_bytes());
    format!("memobuild-{}", &hex::encode(digest)[..32])
}

/// buildctl's `--allow` check (`util/entitlements`): `network.host`, `security.insecure`,
/// `device` or `device=NAME[,alias=ALIAS]`.
fn validate_entitlement(value: &str) -> anyhow::Result<()> {
    let (key, rest) = value.split_once('=').unwrap_or((value, ""));
    match (key, rest) {
        ("network.host" | "security.insecure", "") if !value.contains('=') => Ok(()),
        ("device", rest) => {
            for field in rest.split(',').skip(1) {
                match field.split_once('=') {
                    Some(("alias", _)) => {}
                    Some((k, _)) => bail!("unknown device config key {k:?}"),
                    None => bail!("invalid device config {field:?}"),
                }
            }
            Ok(())
        }
        _ => bail!("unknown entitlement {value}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontend_attrs_are_buildctl_opts() {
        let args = BTreeMap::from([
            ("REGISTRY".to_owned(), "127.0.0.1:5000".to_owned()),
            ("EMPTY".to_owned(), String::new()),
        ]);
        let attrs = frontend_attrs("Dockerfile.dev", Some("test"), &args, true, None);
        let expected: BTreeMap<String, String> = [
            ("build-arg:EMPTY", ""),
            ("build-arg:REGISTRY", "127.0.0.1:5000"),
            ("filename", "Dockerfile.dev"),
            ("no-cache", ""),
            ("target", "test"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(attrs, expected);

        let attrs = frontend_attrs("Dockerfile", None, &BTreeMap::new(), false, None);
        assert_eq!(attrs.len(), 1, "{attrs:?}");
    }

    #[test]
    fn source_date_epoch_from_env_loses_to_the_flag() {
        let attrs = frontend_attrs(
            "Dockerfile",
            None,
            &BTreeMap::new(),
            false,
            Some("7".into()),
        );
        assert_eq!(attrs["build-arg:SOURCE_DATE_EPOCH"], "7");
        let flag = BTreeMap::from([("SOURCE_DATE_EPOCH".to_owned(), "9".to_owned())]);
        let attrs = frontend_attrs("Dockerfile", None, &flag, false, Some("7".into()));
        assert_eq!(attrs["build-arg:SOURCE_DATE_EPOCH"], "9");
    }

    #[test]
    fn dockerfile_dir_and_name() {
        assert_eq!(
            split_dockerfile(Path::new("ctx/sub/Dockerfile.x")).unwrap(),
            (PathBuf::from("ctx/sub"), "Dockerfile.x".to_owned())
        );
        assert_eq!(
            split_dockerfile(Path::new("Dockerfile")).unwrap(),
            (PathBuf::from("."), "Dockerfile".to_owned())
        );
    }

    #[test]
    fn shared_key_is_stable_per_directory_and_names_no_path() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        assert_eq!(shared_key(a.path()), shared_key(a.path()));
        assert_ne!(shared_key(a.path()), shared_key(b.path()));
        let key = shared_key(a.path());
        assert!(key.starts_with("memobuild-") && key.len() == 42, "{key}");
        assert!(!key.contains('/'));
    }

    #[test]
    fn entitlements_as_buildctl() {
        for ok in [
            "network.host",
            "security.insecure",
            "device",
            "device=nvidia.com/gpu=all,alias=gpu",
        ] {
            validate_entitlement(ok).unwrap();
        }
        for bad in ["network.none", "network.host=1", "device=x,foo=bar", ""] {
            assert!(validate_entitlement(bad).is_err(), "{bad}");
        }
    }
}
