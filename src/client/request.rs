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
use crate::client::session::upload::Offered;

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
    /// `--cache-to` entries: (type, attrs).
    pub cache_exports: Vec<(String, BTreeMap<String, String>)>,
    /// `--cache-from` entries: (type, attrs).
    pub cache_imports: Vec<(String, BTreeMap<String, String>)>,
    /// The context read from standard input (`-`), offered through the session's Upload
    /// service as `http://buildkit-session/<id>`.
    pub upload: Option<Offered>,
    /// Whether the Dockerfile frontend runs in this process (`--client-frontend`), over the
    /// daemon's LLBBridge, instead of on the daemon.
    pub client_frontend: bool,
}

/// Where the build context comes from.
enum ContextSource {
    /// A local directory, sent with FileSync.
    Dir(PathBuf),
    /// A URL the daemon fetches (a git repository), as buildx sends it.
    Url(String),
    /// Standard input (`-`): a tar archive that is the context, or a Dockerfile alone.
    Stdin,
}

impl ContextSource {
    fn of(arg: &Path) -> anyhow::Result<ContextSource> {
        if arg.as_os_str() == "-" {
            return Ok(ContextSource::Stdin);
        }
        if arg.is_dir() {
            return Ok(ContextSource::Dir(arg.to_path_buf()));
        }
        match arg
            .to_str()
            .filter(|s| crate::gitctx::GitContext::parse(s).is_some())
        {
            Some(url) => Ok(ContextSource::Url(url.to_owned())),
            None => bail!(
                "context `{}` is not a directory, a git URL or `-` (standard input)",
                arg.display()
            ),
        }
    }
}

/// Reads standard input into a temporary file, offered under a fresh path.
fn read_stdin() -> anyhow::Result<Offered> {
    let mut file = tempfile::NamedTempFile::new().context("creating a file for standard input")?;
    std::io::copy(&mut std::io::stdin().lock(), &mut file).context("reading standard input")?;
    Ok(Offered {
        path: format!("/{}", crate::client::new_id()),
        file: std::sync::Arc::new(file.into_temp_path()),
    })
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
        let context = ContextSource::of(&frontend.context)?;
        let mut locals = BTreeMap::new();
        let mut upload = None;
        // The context as the frontend's `context` attribute, when the daemon fetches it.
        let mut context_url = None;
        let filename = match &context {
            ContextSource::Dir(dir) => {
                let dockerfile = frontend
                    .file
                    .clone()
                    .unwrap_or_else(|| dir.join("Dockerfile"));
                if !dockerfile.is_file() {
                    bail!("cannot read Dockerfile `{}`", dockerfile.display());
                }
                let (dockerfile_dir, filename) = split_dockerfile(&dockerfile)?;
                locals.insert(LOCAL_CONTEXT.to_owned(), dir.clone());
                locals.insert(LOCAL_DOCKERFILE.to_owned(), dockerfile_dir);
                filename
            }
            // `-f` is a path inside a context the daemon fetches, as with buildx.
            ContextSource::Url(url) => {
                context_url = Some(url.clone());
                dockerfile_in_context(frontend.file.as_deref())
            }
            ContextSource::Stdin => {
                let offered = read_stdin()?;
                context_url = Some(format!("http://buildkit-session{}", offered.path));
                upload = Some(offered);
                dockerfile_in_context(frontend.file.as_deref())
            }
        };
        let build_args = crate::build::parse_build_args(&frontend.build_args)?;
        let extra = BuildxOptions::from_args(args)?;
        let mut entitlements = args.allow.clone();
        for e in &extra.entitlements {
            if !entitlements.contains(e) {
                entitlements.push(e.clone());
            }
        }
        for allow in &entitlements {
            validate_entitlement(allow)?;
        }
        let exports = exporters::exports(&args.outputs, args.push, &args.tags)?;
        if args.iidfile.is_some() && exports.iter().any(|e| e.kind == "local" || e.kind == "tar") {
            bail!("local and tar exporters are incompatible with image ID file");
        }
        locals.extend(extra.locals);
        let mut frontend_attrs = frontend_attrs(
            &filename,
            frontend.target.as_deref(),
            &build_args,
            args.no_cache,
            std::env::var("SOURCE_DATE_EPOCH").ok(),
        );
        frontend_attrs.extend(extra.attrs);
        if let Some(url) = context_url {
            frontend_attrs.insert("context".to_owned(), url);
        }
        let shared_key = match &context {
            ContextSource::Dir(dir) => shared_key(dir),
            ContextSource::Url(url) => shared_key(Path::new(url)),
            ContextSource::Stdin => shared_key(Path::new("-")),
        };
        Ok(BuildRequest {
            locals,
            frontend_attrs,
            exports,
            entitlements,
            shared_key,
            upload,
            client_frontend: args.client_frontend,
            cache_exports: args
                .cache_to
                .iter()
                .map(|c| cache_entry(c))
                .collect::<anyhow::Result<_>>()?,
            cache_imports: args
                .cache_from
                .iter()
                .map(|c| cache_entry(c))
                .collect::<anyhow::Result<_>>()?,
        })
    }
}

/// What buildx's own flags add to a request: `--label`, `--build-context`, `--add-host`,
/// `--network`, `--platform`, `--call`/`--check`, converted as buildx converts them
/// (`build/opt.go`, `build/utils.go` `toBuildkitExtraHosts`, `build/build.go`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildxOptions {
    /// Frontend attributes.
    pub attrs: BTreeMap<String, String>,
    /// Directories of `--build-context NAME=DIR`, by local name.
    pub locals: BTreeMap<String, PathBuf>,
    /// Entitlements the flags imply (`--network=host`).
    pub entitlements: Vec<String>,
}

impl BuildxOptions {
    /// Reads the flags.
    pub fn from_args(args: &BuildArgs) -> anyhow::Result<BuildxOptions> {
        let mut o = BuildxOptions::default();
        for l in &args.labels {
            let (k, v) = l.split_once('=').unwrap_or((l, ""));
            if k.is_empty() {
                bail!("invalid label `{l}`: expected KEY=VALUE");
            }
            o.attrs.insert(format!("label:{k}"), v.to_owned());
        }
        for c in &args.build_contexts {
            o.build_context(c)?;
        }
        if !args.add_hosts.is_empty() {
            o.attrs
                .insert("add-hosts".into(), extra_hosts(&args.add_hosts)?);
        }
        match args.network.as_deref() {
            None | Some("" | "default") => {}
            Some("host") => {
                o.attrs.insert("force-network-mode".into(), "host".into());
                o.entitlements.push("network.host".into());
            }
            Some("none") => {
                o.attrs.insert("force-network-mode".into(), "none".into());
            }
            Some(other) => bail!(
                "network mode {other:?} not supported by buildkit (expected default, none or host)"
            ),
        }
        if let Some(spec) = crate::build::provenance_attr(args.provenance.as_deref()) {
            o.attrs.insert("attest:provenance".into(), spec);
        }
        if args.frontend.pull {
            // buildx's `--pull`: ask the registry again what every base image's tag names.
            o.attrs.insert("image-resolve-mode".into(), "pull".into());
        }
        if let Some(p) = args.platform.as_deref().filter(|p| !p.is_empty()) {
            o.attrs.insert("platform".into(), p.to_owned());
        }
        if let Some(call) = call_request(args)? {
            o.attrs.insert("requestid".into(), call.request_id());
            o.attrs.insert(
                "frontend.caps".into(),
                "moby.buildkit.frontend.subrequests+forward".into(),
            );
        }
        Ok(o)
    }

    /// One `--build-context NAME=VALUE`: images, URLs and `target:` go as they are; a
    /// directory becomes the local `NAME` (`_NAME` for `context` and `dockerfile`) with its
    /// base name as the shared key, as buildx sends it.
    fn build_context(&mut self, spec: &str) -> anyhow::Result<()> {
        let Some((name, value)) = spec
            .split_once('=')
            .filter(|(n, v)| !n.is_empty() && !v.is_empty())
        else {
            bail!("invalid --build-context `{spec}`: expected NAME=VALUE");
        };
        let remote = [
            "docker-image://",
            "target:",
            "http://",
            "https://",
            "git://",
            "git@",
        ];
        if remote.iter().any(|p| value.starts_with(p)) {
            self.attrs
                .insert(format!("context:{name}"), value.to_owned());
            return Ok(());
        }
        let dir = PathBuf::from(value);
        if !dir.is_dir() {
            bail!("failed to get build context {name}: `{value}` is not a directory");
        }
        let local = match name {
            LOCAL_CONTEXT | LOCAL_DOCKERFILE => format!("_{name}"),
            _ => name.to_owned(),
        };
        let abs = std::path::absolute(&dir).unwrap_or_else(|_| dir.clone());
        let base = abs
            .file_name()
            .map(|b| b.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.attrs
            .insert(format!("context:{name}"), format!("local:{local}"));
        self.attrs
            .insert(format!("sharedkey:localdir:{name}"), base);
        self.locals.insert(local, dir);
        Ok(())
    }
}

/// A `--cache-to`/`--cache-from` spec as buildx reads it: CSV `type=T,key=value…`, or a bare
/// reference for `type=registry,ref=REF`.
fn cache_entry(spec: &str) -> anyhow::Result<(String, BTreeMap<String, String>)> {
    if !spec.contains('=') {
        return Ok((
            "registry".into(),
            BTreeMap::from([("ref".to_owned(), spec.to_owned())]),
        ));
    }
    let mut attrs = BTreeMap::new();
    for field in spec.split(',') {
        let (k, v) = field
            .split_once('=')
            .with_context(|| format!("invalid value {field} in cache spec `{spec}`"))?;
        attrs.insert(k.to_owned(), v.to_owned());
    }
    let kind = attrs
        .remove("type")
        .with_context(|| format!("type required form cache spec `{spec}`"))?;
    Ok((kind, attrs))
}

/// `--add-host`s as the `add-hosts` attribute: `host=ip` entries joined by commas, brackets
/// around an IPv6 address dropped, several IPs (`host=ip1,ip2`) one entry each.
fn extra_hosts(hosts: &[String]) -> anyhow::Result<String> {
    let mut out = Vec::new();
    for h in hosts {
        let (host, ips) = h
            .split_once('=')
            .or_else(|| h.split_once(':'))
            .filter(|(host, ip)| !host.is_empty() && !ip.is_empty())
            .with_context(|| format!("invalid host {h}"))?;
        for ip in ips.split(',') {
            let bare = ip
                .strip_prefix('[')
                .and_then(|i| i.strip_suffix(']'))
                .unwrap_or(ip);
            if bare.parse::<std::net::IpAddr>().is_err() {
                bail!("invalid host {h}");
            }
            out.push(format!("{host}={bare}"));
        }
    }
    Ok(out.join(","))
}

/// A `--call` (or `--check`): which frontend subrequest, and how to print its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRequest {
    /// `outline`, `targets`, `lint` (`check` is its alias) or `subrequests.describe`.
    pub name: String,
    /// `format=json`: print `result.json` as it is.
    pub json: bool,
    /// `ignorestatus=true`: exit 0 whatever `result.statuscode` says.
    pub ignore_status: bool,
}

impl CallRequest {
    /// The `requestid` frontend attribute.
    pub fn request_id(&self) -> String {
        format!("frontend.{}", self.name)
    }
}

/// `--call METHOD[,format=json][,ignorestatus=true]` or `--check`, parsed as buildx parses
/// it; `None` for a build (`build`, or neither flag).
pub fn call_request(args: &BuildArgs) -> anyhow::Result<Option<CallRequest>> {
    let spec = match (&args.call, args.check) {
        (Some(c), _) => c.clone(),
        (None, true) => "check".to_owned(),
        (None, false) => return Ok(None),
    };
    let mut call = CallRequest {
        name: String::new(),
        json: false,
        ignore_status: false,
    };
    for field in spec.split(',').filter(|f| !f.is_empty()) {
        match field.split_once('=') {
            Some(("format", f)) => call.json = f == "json",
            Some(("ignorestatus", v)) => {
                call.ignore_status = v
                    .parse()
                    .with_context(|| format!("invalid ignorestatus print value: {v}"))?
            }
            Some(_) => bail!("invalid print field: {field}"),
            None if call.name.is_empty() => call.name = field.to_owned(),
            None => bail!("invalid print value: {spec}"),
        }
    }
    if call.name == "check" {
        call.name = "lint".into();
    }
    Ok(match call.name.as_str() {
        "" | "build" => None,
        _ => Some(call),
    })
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

/// The Dockerfile's path inside a context the daemon fetches: `-f` as given, or `Dockerfile`.
fn dockerfile_in_context(file: Option<&Path>) -> String {
    file.map_or_else(
        || "Dockerfile".to_owned(),
        |f| f.to_string_lossy().into_owned(),
    )
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

    fn buildx(flags: &[&str]) -> anyhow::Result<BuildxOptions> {
        use clap::Parser;
        let mut argv = vec!["memobuild", "build"];
        argv.extend(flags);
        argv.push(".");
        let cli = crate::cli::Cli::try_parse_from(argv)?;
        let crate::cli::Command::Build(args) = cli.command else {
            unreachable!("a build")
        };
        BuildxOptions::from_args(&args)
    }

    #[test]
    fn buildx_flags_become_buildx_attrs() {
        let dir = tempfile::tempdir().unwrap();
        let assets = dir.path().join("assets");
        std::fs::create_dir(&assets).unwrap();
        let o = buildx(&[
            "--label",
            "a=b=c",
            "--add-host",
            "db:10.0.0.1",
            "--add-host",
            "v6=[::1],10.0.0.2",
            "--network",
            "host",
            "--platform",
            "linux/arm64",
            "--build-context",
            "base=docker-image://alpine:3.20",
            "--build-context",
            &format!("assets={}", assets.display()),
            "--build-context",
            &format!("context={}", assets.display()),
            "--check",
        ])
        .unwrap();
        let attrs: Vec<(&str, &str)> = o
            .attrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            attrs,
            vec![
                ("add-hosts", "db=10.0.0.1,v6=::1,v6=10.0.0.2"),
                ("context:assets", "local:assets"),
                ("context:base", "docker-image://alpine:3.20"),
                ("context:context", "local:_context"),
                ("force-network-mode", "host"),
                (
                    "frontend.caps",
                    "moby.buildkit.frontend.subrequests+forward"
                ),
                ("label:a", "b=c"),
                ("platform", "linux/arm64"),
                ("requestid", "frontend.lint"),
                ("sharedkey:localdir:assets", "assets"),
                ("sharedkey:localdir:context", "assets"),
            ]
        );
        assert_eq!(o.entitlements, vec!["network.host"]);
        assert_eq!(
            o.locals.keys().collect::<Vec<_>>(),
            vec!["_context", "assets"]
        );
        for bad in [
            &["--add-host", "db"][..],
            &["--add-host", "db:10.0.0"],
            &["--network", "bridge"],
            &["--build-context", "x=/does/not/exist"],
            &["--build-context", "noequals"],
            &["--call", "outline,colour=red"],
        ] {
            assert!(buildx(bad).is_err(), "{bad:?}");
        }
        assert!(buildx(&["--call", "build"]).unwrap().attrs.is_empty());
        let o = buildx(&["--call", "targets,format=json"]).unwrap();
        assert_eq!(o.attrs["requestid"], "frontend.targets");
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
