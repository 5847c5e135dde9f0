//! Registry credentials from Docker's client configuration, read as the `docker` CLI reads it:
//! `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
//!
//! For a registry host: `credHelpers[host]` names a helper, else `credsStore` names one for every
//! host; the helper is `docker-credential-<name> get` with the server on stdin and
//! `{"Username","Secret"}` on stdout. Without a helper (or when it has nothing), `auths[host]`
//! holds `auth` (base64 of `user:password`) or `username` + `password`. Keys may be URLs
//! (`https://index.docker.io/v1/`); Docker Hub's aliases are one host.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use base64::Engine as _;
use memobuild_worker::registry::Credentials;
use serde::Deserialize;

/// Docker Hub's key in `auths` and the server its credential helpers are asked about.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// The parts of `config.json` that hold credentials.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// `config.json`'s path: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
pub fn config_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(Path::new(&dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker/config.json"))
}

impl DockerConfig {
    /// Reads `path`; a missing file is an empty configuration.
    pub fn load(path: &Path) -> anyhow::Result<DockerConfig> {
        match std::fs::read(path) {
            Ok(bytes) => DockerConfig::parse(&bytes)
                .with_context(|| format!("invalid Docker config `{}`", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerConfig::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read `{}`", path.display())),
        }
    }

    /// Parses `config.json`'s bytes.
    pub fn parse(bytes: &[u8]) -> anyhow::Result<DockerConfig> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// Credentials for registry `host` (`host[:port]`, `docker.io` for Docker Hub), if any.
    pub fn credentials_for(&self, host: &str) -> anyhow::Result<Option<Credentials>> {
        self.credentials_with(host, &|helper, server| run_helper(helper, server))
    }

    /// [`DockerConfig::credentials_for`] with the helper runner given (tests use a fake).
    fn credentials_with(
        &self,
        host: &str,
        run: &dyn Fn(&str, &str) -> anyhow::Result<Option<Credentials>>,
    ) -> anyhow::Result<Option<Credentials>> {
        let host = canonical_host(host);
        let helper = self
            .cred_helpers
            .iter()
            .find(|(k, _)| canonical_host(k) == host)
            .map(|(_, v)| v)
            .or(self.creds_store.as_ref())
            .filter(|h| !h.is_empty());
        if let Some(helper) = helper {
            let server = if host == "docker.io" {
                DOCKER_HUB_SERVER.to_owned()
            } else {
                host.clone()
            };
            if let Some(c) = run(helper, &server)? {
                return Ok(Some(c));
            }
        }
        let Some(entry) = self
            .auths
            .iter()
            .find(|(k, _)| canonical_host(k) == host)
            .map(|(_, v)| v)
        else {
            return Ok(None);
        };
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .with_context(|| format!("`auths.{host}.auth` is not base64"))?;
            let text = String::from_utf8(raw)
                .with_context(|| format!("`auths.{host}.auth` is not UTF-8"))?;
            let Some((username, password)) = text.split_once(':') else {
                bail!("`auths.{host}.auth` is not base64 of `user:password`");
            };
            return Ok(Some(Credentials {
                username: username.to_owned(),
                password: password.to_owned(),
            }));
        }
        match (&entry.username, &entry.password) {
            (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credentials {
                username: u.clone(),
                password: p.clone(),
            })),
            _ => Ok(None),
        }
    }
}

/// `https://index.docker.io/v1/` → `docker.io`, `http://r:5000/x` → `r:5000`.
fn canonical_host(key: &str) -> String {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        _ => host,
    }
}

/// `docker-credential-<helper> get` for `server`. `None` when the helper has no credentials.
fn run_helper(helper: &str, server: &str) -> anyhow::Result<Option<Credentials>> {
    run_helper_program(Path::new(&format!("docker-credential-{helper}")), server)
}

fn run_helper_program(program: &Path, server: &str) -> anyhow::Result<Option<Credentials>> {
    #[derive(Deserialize)]
    struct HelperAnswer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    let name = program.display().to_string();
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run credential helper `{name}` for {server}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading stdin is answered by its exit status below.
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("credential helper `{name}` for {server}"))?;
    if !out.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if text.to_lowercase().contains("credentials not found") {
            return Ok(None);
        }
        bail!(
            "credential helper `{name}` failed for {server} ({}): {}",
            out.status,
            text.lines().next().unwrap_or_default().trim()
        );
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("credential helper `{name}` for {server}: bad answer"))?;
    if answer.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: answer.username,
        password: answer.secret,
    }))
}

/// Docker's config as the worker's credential source for pulls: read once, credential helpers
/// run per host when a registry is first contacted. A config that cannot be read or a helper
/// that fails means anonymous access, with a warning, as a pull of a public image should not
/// fail over a broken credential setup.
#[derive(Clone)]
pub struct DockerCredentials {
    config: Option<std::sync::Arc<DockerConfig>>,
}

impl DockerCredentials {
    /// Loads `$DOCKER_CONFIG/config.json` or `~/.docker/config.json`, if there is one.
    pub fn load() -> DockerCredentials {
        let config = config_path().and_then(|p| match DockerConfig::load(&p) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!("ignoring `{}`: {e:#}", p.display());
                None
            }
        });
        DockerCredentials {
            config: config.map(std::sync::Arc::new),
        }
    }

    fn lookup(&self, host: &str) -> Option<Credentials> {
        match self.config.as_ref()?.credentials_for(host) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("no credentials for `{host}`: {e:#}");
                None
            }
        }
    }
}

impl memobuild_worker::registry::CredentialProvider for DockerCredentials {
    fn credentials<'a>(
        &'a self,
        host: &'a str,
    ) -> futures::future::BoxFuture<'a, Option<Credentials>> {
        // A credential helper is a process: run it off the runtime's threads.
        let (this, host) = (self.clone(), host.to_owned());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.lookup(&host))
                .await
                .ok()
                .flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(u: &str, p: &str) -> Option<Credentials> {
        Some(Credentials {
            username: u.into(),
            password: p.into(),
        })
    }

    #[test]
    fn auths_base64_and_username_password() {
        let cfg = DockerConfig::parse(
            br#"{
              "auths": {
                "https://index.docker.io/v1/": {"auth": "aHViOmh1YnB3"},
                "127.0.0.1:5000": {"auth": "YWxpY2U6czNjcjp0"},
                "http://reg.example:5001/some/path": {"username": "bob", "password": "pw"},
                "empty.example": {}
              },
              "HttpHeaders": {"User-Agent": "x"}
            }"#,
        )
        .unwrap();
        let no_helper = |_: &str, _: &str| -> anyhow::Result<Option<Credentials>> {
            panic!("no helper is configured")
        };
        assert_eq!(
            cfg.credentials_with("docker.io", &no_helper).unwrap(),
            creds("hub", "hubpw")
        );
        assert_eq!(
            cfg.credentials_with("index.docker.io", &no_helper).unwrap(),
            creds("hub", "hubpw")
        );
        // The password may contain `:`.
        assert_eq!(
            cfg.credentials_with("127.0.0.1:5000", &no_helper).unwrap(),
            creds("alice", "s3cr:t")
        );
        assert_eq!(
            cfg.credentials_with("reg.example:5001", &no_helper)
                .unwrap(),
            creds("bob", "pw")
        );
        assert_eq!(
            cfg.credentials_with("empty.example", &no_helper).unwrap(),
            None
        );
        assert_eq!(
            cfg.credentials_with("127.0.0.1:5001", &no_helper).unwrap(),
            None
        );
        let bad = DockerConfig::parse(br#"{"auths":{"h":{"auth":"bm9jb2xvbg=="}}}"#).unwrap();
        assert!(bad.credentials_with("h", &no_helper).is_err(), "no colon");
    }

    #[test]
    fn helpers_win_over_auths_and_creds_store_is_the_default() {
        let cfg = DockerConfig::parse(
            br#"{
              "auths": {"a.example": {"auth": "aW5saW5lOnB3"}, "b.example": {}},
              "credHelpers": {"a.example": "pass", "docker.io": "hub"},
              "credsStore": "desktop"
            }"#,
        )
        .unwrap();
        let calls = std::cell::RefCell::new(Vec::new());
        let run = |helper: &str, server: &str| -> anyhow::Result<Option<Credentials>> {
            calls.borrow_mut().push(format!("{helper} {server}"));
            Ok(match helper {
                "pass" => creds("from-pass", "x"),
                "hub" => creds("from-hub", "y"),
                _ => None,
            })
        };
        assert_eq!(
            cfg.credentials_with("a.example", &run).unwrap(),
            creds("from-pass", "x")
        );
        assert_eq!(
            cfg.credentials_with("docker.io", &run).unwrap(),
            creds("from-hub", "y")
        );
        // credsStore has nothing for b.example, and its auths entry is the usual empty one.
        assert_eq!(cfg.credentials_with("b.example", &run).unwrap(), None);
        assert_eq!(
            *calls.borrow(),
            [
                "pass a.example",
                "hub https://index.docker.io/v1/",
                "desktop b.example"
            ]
        );
    }

    #[test]
    fn helper_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let script = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
            p
        };
        let ok = script(
            "docker-credential-ok",
            r#"[ "$1" = get ] || exit 3; read server; printf '{"ServerURL":"%s","Username":"u-%s","Secret":"s"}' "$server" "$server""#,
        );
        assert_eq!(
            run_helper_program(&ok, "r.example").unwrap(),
            creds("u-r.example", "s")
        );
        let missing = script(
            "docker-credential-none",
            "echo 'credentials not found in native keychain'; exit 1",
        );
        assert_eq!(run_helper_program(&missing, "r.example").unwrap(), None);
        let broken = script(
            "docker-credential-broken",
            "echo 'keychain locked' >&2; exit 2",
        );
        let e = run_helper_program(&broken, "r.example")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("keychain locked") && e.contains("r.example"),
            "{e}"
        );
        let e = run_helper_program(&dir.path().join("docker-credential-absent"), "r.example")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot run credential helper"), "{e}");
    }
}
