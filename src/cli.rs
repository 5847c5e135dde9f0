//! Command-line flags. This is the only place flags and environment variables are read; the
//! libraries get typed options.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use memobuild_worker::secrets::Secrets;

/// MemoBuild: a strictly incremental container image builder.
#[derive(Debug, Parser)]
#[command(name = "memobuild", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile and a context directory.
    Build(BuildArgs),
    /// Print the LLB Definition a Dockerfile lowers to (the bytes `buildctl build` reads on stdin).
    Lower(LowerArgs),
    /// Say why each step of the last build of a target ran instead of coming from the cache.
    Why(WhyArgs),
    /// Run the team server: the cache (the Bazel HTTP remote-cache protocol, `/ac` and `/cas`,
    /// for `build --remote-cache` and bazel-remote-compatible clients), build records and
    /// analytics (`/api/builds`, `/api/stats`, `/metrics`, a dashboard at `/`) and webhooks.
    Server(ServerArgs),
    /// Show or prune the local cache (layer blobs and action records under the state directory).
    Cache(CacheArgs),
    /// Print Kubernetes manifests that run builds in a cluster.
    K8s(crate::k8s::K8sArgs),
    /// Serve BuildKit's API (`buildctl`, `docker buildx --driver remote`) on MemoBuild's engine.
    Daemon(DaemonArgs),
    /// Run as a BuildKit gateway frontend (the entrypoint of MemoBuild's `# syntax=` image):
    /// LLBBridge over stdin/stdout, options from `BUILDKIT_FRONTEND_OPT_n`, the session from
    /// `BUILDKIT_SESSION_ID`. Started by a BuildKit daemon, not by hand.
    Frontend,
    /// Stops the private containerd under DIR once no build has used it for DURATION
    /// (started by `build`, not by hand).
    #[command(name = crate::embedded::LINGER_COMMAND, hide = true)]
    EmbeddedLinger {
        /// The instance's directory.
        dir: PathBuf,
        /// How long it may stay idle.
        #[arg(value_parser = humantime::parse_duration)]
        linger: std::time::Duration,
    },
}

/// `memobuild daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Address to listen on: `unix:///PATH` or `tcp://HOST:PORT` (repeatable; default
    /// `unix:///run/memobuild/buildkitd.sock`, or the config's `[grpc] address`).
    #[arg(long, value_name = "ADDR")]
    pub addr: Vec<String>,
    /// TLS certificate for TCP addresses (PEM).
    #[arg(long, value_name = "FILE")]
    pub tlscert: Option<PathBuf>,
    /// TLS key for TCP addresses (PEM).
    #[arg(long, value_name = "FILE")]
    pub tlskey: Option<PathBuf>,
    /// CA that client certificates must chain to (PEM): clients without one are refused.
    #[arg(long, value_name = "FILE")]
    pub tlscacert: Option<PathBuf>,
    /// MemoBuild's state directory (cache, synced contexts); default as `build`'s, or the
    /// config's `root`.
    #[arg(long, value_name = "DIR", env = "MEMOBUILD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// containerd socket (`unix:///PATH` or a path), or `embedded` for MemoBuild's own; default:
    /// the system's if it answers, else embedded.
    #[arg(long, value_name = "ADDR", env = "MEMOBUILD_CONTAINERD")]
    pub containerd: Option<String>,
    /// containerd namespace.
    #[arg(long, value_name = "NAME")]
    pub namespace: Option<String>,
    /// Configuration file (TOML shaped like buildkitd.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Grant this entitlement when a client asks for it: `network.host`, `security.insecure`.
    #[arg(long, value_name = "NAME")]
    pub allow_insecure_entitlement: Vec<String>,
    /// Run `# syntax=docker/dockerfile:…` (Docker's official frontend image) as buildkitd
    /// does, pulled and run as a container, instead of serving those Dockerfiles with
    /// MemoBuild's own frontend (the default, which needs no pull). Other `# syntax=` images
    /// always run.
    #[arg(long = "official-frontend-images")]
    pub official_frontend_images: bool,
    /// RUN steps at once, per build (default: the number of CPUs).
    #[arg(long, value_name = "N")]
    pub max_parallelism: Option<usize>,
    /// Registries (`HOST:PORT`) to reach over plain HTTP; loopback registries always are.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// Base URL of a remote cache (`memobuild server`, or any Bazel HTTP cache).
    #[arg(long, value_name = "URL", env = "MEMOBUILD_REMOTE_CACHE")]
    pub remote_cache: Option<String>,
    /// Bearer token for the remote cache.
    #[arg(long, value_name = "TOKEN", env = "MEMOBUILD_REMOTE_CACHE_TOKEN")]
    pub remote_cache_token: Option<String>,
}

/// Flags shared by `build` and `lower`: what to build.
#[derive(Debug, Args)]
pub struct FrontendArgs {
    /// Name of the Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Set a build-time variable (`KEY=VALUE`, or `KEY` to take it from the environment).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Build this stage instead of the last one.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Ask the registry what every base image's tag names, even when it answered within the
    /// last minute (as `docker buildx build --pull`).
    #[arg(long)]
    pub pull: bool,
    /// Registries (`HOST:PORT`) to reach over plain HTTP; loopback registries always are.
    #[arg(
        long = "insecure-registry",
        value_name = "HOST:PORT",
        env = "MEMOBUILD_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// Also leave out of the context what its `.gitignore` files ignore (git's pattern rules,
    /// nested files; `.git` itself too), on top of `.dockerignore`. Only `.gitignore` files are
    /// read (not `.git/info/exclude`, global excludes or the index: a tracked file that a
    /// pattern matches is left out too).
    #[arg(long, env = "MEMOBUILD_USE_GITIGNORE", value_parser = clap::builder::BoolishValueParser::new())]
    pub use_gitignore: bool,
    /// Build context directory.
    #[arg(value_name = "CONTEXT")]
    pub context: PathBuf,
}

/// Progress output styles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// `tty` when stderr is a terminal, else `plain`.
    Auto,
    /// Live view for terminals.
    Tty,
    /// Plain lines, as `buildx --progress plain`.
    Plain,
    /// One JSON object per line for each event.
    Json,
    /// Nothing but warnings and errors, as `buildx --progress quiet`.
    Quiet,
}

/// `memobuild build`.
#[derive(Debug, Args)]
pub struct BuildArgs {
    /// What to build.
    #[command(flatten)]
    pub frontend: FrontendArgs,
    /// Name (and tag) of the image, e.g. `registry:5000/app:1.0`; may be given several times.
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    pub tags: Vec<String>,
    /// Push the image to the registries named by `--tag` (shorthand for `--output type=image,push=true`).
    #[arg(long)]
    pub push: bool,
    /// Output destination, as in buildx: `type=image,name=NAME,push=true`, `type=oci,dest=FILE`
    /// (`tar=false` for a directory), `type=docker,dest=FILE`, `type=local,dest=DIR` or just `DIR`;
    /// `oci-mediatypes=false` for Docker media types. May be given several times.
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// How to show progress (written to stderr).
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Set a label on the image (`KEY=VALUE`), after the Dockerfile's LABELs; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// An additional build context, as buildx: `NAME=DIR` (a directory of this machine),
    /// `NAME=docker-image://REF`, `NAME=https://…` or a git URL; a stage or an image named
    /// `NAME` in the Dockerfile is replaced by it. Repeatable.
    #[arg(long = "build-context", value_name = "NAME=VALUE")]
    pub build_contexts: Vec<String>,
    /// An `/etc/hosts` entry for every RUN, as buildx: `HOST:IP` or `HOST=IP`; repeatable.
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_hosts: Vec<String>,
    /// The network of RUN steps without `--network`: `default`, `none` or `host` (which asks
    /// for the `network.host` entitlement, as buildx does).
    #[arg(long, value_name = "MODE")]
    pub network: Option<String>,
    /// The target platform (`os/arch[/variant]`); default: this machine's (the daemon's with
    /// `--addr`).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    /// Write the build's result metadata (image digest, names, …) as JSON to this file, as
    /// buildx's `--metadata-file`.
    #[arg(long, value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Write the image ID (the config digest, else the manifest's) to this file.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Instead of building, ask the Dockerfile frontend: `outline` (build arguments, secrets
    /// and ssh of the target), `targets` (the stages), `check` (the lint rules); append
    /// `,format=json` for JSON. Needs `--addr`.
    #[arg(long, value_name = "METHOD")]
    pub call: Option<String>,
    /// Export the build cache, as buildx (`type=registry,ref=REF`, `type=local,dest=DIR`, …):
    /// sent to the daemon, which warns that MemoBuild keeps its own cache. Repeatable.
    #[arg(long = "cache-to", value_name = "SPEC", requires = "addr")]
    pub cache_to: Vec<String>,
    /// Import a build cache, as buildx (`type=registry,ref=REF` or just `REF`): sent to the
    /// daemon, which warns that MemoBuild keeps its own cache. Repeatable.
    #[arg(long = "cache-from", value_name = "SPEC", requires = "addr")]
    pub cache_from: Vec<String>,
    /// Shorthand for `--call=check`.
    #[arg(long, conflicts_with = "call")]
    pub check: bool,
    /// Attach an SLSA provenance attestation to pushed images, as buildx does by default:
    /// `mode=min` (or `true`), `mode=max` (with build argument and label values) or `false`.
    /// Off unless given: the pushed tag then names an index of the image and its attestation.
    #[arg(long, value_name = "SPEC")]
    pub provenance: Option<String>,
    /// Do not use cached results.
    #[arg(long)]
    pub no_cache: bool,
    /// containerd socket (`unix:///path` or a path). Default: the system's if it answers, else
    /// a private one started under the state directory for the build; `embedded` forces that.
    #[arg(long, value_name = "ADDR", env = "MEMOBUILD_CONTAINERD")]
    pub containerd: Option<String>,
    /// How long the private containerd stays up after the last build using it, for the next
    /// build (BuildKit's daemon stays up too); `0` stops it when the build ends.
    #[arg(long, value_name = "DURATION", env = "MEMOBUILD_CONTAINERD_LINGER", default_value = "5m", value_parser = humantime::parse_duration)]
    pub containerd_linger: std::time::Duration,
    /// containerd namespace for snapshots, containers and `type=containerd` images.
    #[arg(long, value_name = "NAME", env = "MEMOBUILD_NAMESPACE", default_value = memobuild_worker::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Directory for MemoBuild's own state (blobs, cache).
    #[arg(long, value_name = "DIR", env = "MEMOBUILD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// How many RUN steps may execute at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub max_parallelism: usize,
    /// After the build, say why each step that ran was not taken from the cache.
    #[arg(long)]
    pub explain: bool,
    /// Remote (team) cache: base URL of a server speaking the Bazel HTTP cache protocol, such as
    /// `memobuild server`.
    #[arg(long, value_name = "URL", env = "MEMOBUILD_REMOTE_CACHE")]
    pub remote_cache: Option<String>,
    /// Bearer token for the remote cache.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MEMOBUILD_REMOTE_CACHE_TOKEN",
        hide_env_values = true
    )]
    pub remote_cache_token: Option<String>,
    /// Do not report the build (duration, steps run and cached) to the `--remote-cache`
    /// server's analytics.
    #[arg(long, env = "MEMOBUILD_NO_BUILD_REPORT", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_build_report: bool,
    /// The project name the build is reported under (default: the context directory's name).
    #[arg(long, value_name = "NAME", env = "MEMOBUILD_PROJECT")]
    pub project: Option<String>,
    /// After the build, shrink the local cache (layer blobs and records, least recently used
    /// first, sparing what was used in the last 10 minutes) to this size, e.g. `20GB`.
    #[arg(long, value_name = "SIZE", env = "MEMOBUILD_CACHE_MAX_SIZE", value_parser = crate::cache_cmd::parse_size)]
    pub cache_max_size: Option<u64>,
    /// A secret for `RUN --mount=type=secret`, as buildx: `id=ID,src=PATH` (a file),
    /// `id=ID,env=VAR` (an environment variable), or `id=ID` (the variable ID if set, else the
    /// file ID); may be given several times.
    #[arg(long = "secret", value_name = "id=ID,src=PATH")]
    pub secrets: Vec<String>,
    /// An SSH agent for `RUN --mount=type=ssh`, as buildx: `default` (or `ID`) for the agent at
    /// $SSH_AUTH_SOCK, `ID=/path/agent.sock` for another agent, or `ID=/path/key[,/path/key2]`
    /// for private key files (loaded into an `ssh-agent` started for the build); may be given
    /// several times.
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET|KEY[,KEY]]")]
    pub ssh: Vec<String>,
    /// Build on this BuildKit daemon (buildkitd or `memobuild daemon`) instead of locally:
    /// `unix:///PATH` or `tcp://HOST:PORT`, as buildctl's `--addr`. The context and the
    /// Dockerfile's directory are sent to it, outputs come back here; the local engine's flags
    /// (`--containerd`, `--state-dir`, `--remote-cache`, `--max-parallelism`, `--explain`,
    /// `--cache-max-size`) do not apply.
    #[arg(long, value_name = "ADDR", env = "BUILDKIT_HOST")]
    pub addr: Option<String>,
    /// With `--addr`: run MemoBuild's Dockerfile frontend here, as a client of the daemon's
    /// LLBBridge (what a `# syntax=` frontend image does), instead of asking the daemon for
    /// its own `dockerfile.v0`. Works against any BuildKit.
    #[arg(long = "client-frontend", requires = "addr")]
    pub client_frontend: bool,
    /// Allow a privileged entitlement: `network.host` (`RUN --network=host`),
    /// `security.insecure`; with `--addr` the daemon must allow it too. Repeatable.
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,
    /// With `--addr tcp://`: CA certificate the daemon's certificate must chain to (TLS is
    /// used when any TLS flag is given; default roots: the system's).
    #[arg(long, value_name = "FILE", requires = "addr")]
    pub tlscacert: Option<PathBuf>,
    /// With `--addr tcp://`: client certificate for TLS.
    #[arg(long, value_name = "FILE", requires = "addr")]
    pub tlscert: Option<PathBuf>,
    /// With `--addr tcp://`: client key for TLS.
    #[arg(long, value_name = "FILE", requires = "addr")]
    pub tlskey: Option<PathBuf>,
    /// With `--addr tcp://`: the name the daemon's certificate must carry (default: the
    /// address's host).
    #[arg(long, value_name = "NAME", requires = "addr")]
    pub tlsservername: Option<String>,
    /// With `--addr tcp://`: a directory holding `ca.pem`, `cert.pem`, `key.pem` (or `ca.crt`,
    /// `tls.crt`, `tls.key`), instead of the three flags.
    #[arg(long, value_name = "DIR", requires = "addr", conflicts_with_all = ["tlscacert", "tlscert", "tlskey"])]
    pub tlsdir: Option<PathBuf>,
}

impl BuildArgs {
    /// Reads the values of `--secret`s (files and environment variables are read here, once).
    pub fn secrets(&self) -> anyhow::Result<Secrets> {
        let mut out = Secrets::new();
        for spec in &self.secrets {
            let s = parse_secret(spec)?;
            let value = match s.source {
                SecretSource::File(path) => std::fs::read(&path).with_context(|| {
                    format!("reading secret `{}` from `{}`", s.id, path.display())
                })?,
                SecretSource::Env(var) => std::env::var_os(&var)
                    .with_context(|| {
                        format!("secret `{}`: environment variable `{var}` is not set", s.id)
                    })?
                    .into_encoded_bytes(),
            };
            out.insert(s.id, value);
        }
        Ok(out)
    }

    /// Reads the `--ssh` flags: agent sockets (`$SSH_AUTH_SOCK` for a bare id) and the bytes of
    /// key files (read here, once).
    pub fn ssh(&self) -> anyhow::Result<Vec<(String, SshSource)>> {
        let mut out: Vec<(String, SshSource)> = Vec::new();
        for spec in &self.ssh {
            let s = parse_ssh(spec)?;
            if out.iter().any(|(id, _)| *id == s.id) {
                anyhow::bail!("--ssh `{spec}`: id `{}` is given twice", s.id);
            }
            let paths = if s.paths.is_empty() {
                let sock = std::env::var_os("SSH_AUTH_SOCK")
                    .filter(|v| !v.is_empty())
                    .with_context(|| {
                        format!(
                            "--ssh `{spec}`: SSH_AUTH_SOCK is not set (start an agent with `eval $(ssh-agent)` and `ssh-add`, or pass `--ssh {}=PATH`)",
                            s.id
                        )
                    })?;
                vec![PathBuf::from(sock)]
            } else {
                s.paths
            };
            let source = ssh_source(spec, &paths)?;
            out.push((s.id, source));
        }
        Ok(out)
    }
}

/// What an `--ssh` id stands for.
#[derive(Debug)]
pub enum SshSource {
    /// A running agent's socket.
    Socket(PathBuf),
    /// Private key files, to load into an agent of the build's own.
    Keys(Vec<memobuild_worker::ssh::KeyFile>),
}

/// One socket, or key files (BuildKit's rule: not both, and one socket at most).
fn ssh_source(spec: &str, paths: &[PathBuf]) -> anyhow::Result<SshSource> {
    use std::os::unix::fs::FileTypeExt;
    let mut socket = None;
    let mut keys = Vec::new();
    for p in paths {
        let md = std::fs::metadata(p)
            .with_context(|| format!("--ssh `{spec}`: cannot use `{}`", p.display()))?;
        if md.file_type().is_socket() {
            if socket.is_some() || !keys.is_empty() {
                anyhow::bail!(
                    "--ssh `{spec}`: give one agent socket or key files, not several sockets or both"
                );
            }
            socket = Some(p.clone());
            continue;
        }
        if socket.is_some() {
            anyhow::bail!(
                "--ssh `{spec}`: give one agent socket or key files, not several sockets or both"
            );
        }
        let data = std::fs::read(p)
            .with_context(|| format!("--ssh `{spec}`: reading ssh key `{}`", p.display()))?;
        keys.push(memobuild_worker::ssh::KeyFile {
            name: p.display().to_string(),
            data,
        });
    }
    Ok(match socket {
        Some(s) => SshSource::Socket(s),
        None => SshSource::Keys(keys),
    })
}

/// One parsed `--ssh` flag: `ID[=PATH[,PATH…]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSpec {
    /// The id `RUN --mount=type=ssh,id=…` names (`default` without `id=`).
    pub id: String,
    /// Agent socket or key files; none means `$SSH_AUTH_SOCK`.
    pub paths: Vec<PathBuf>,
}

/// Parses `--ssh` as buildx does: `ID[=PATH[,PATH…]]`.
pub fn parse_ssh(spec: &str) -> anyhow::Result<SshSpec> {
    let (id, paths) = match spec.split_once('=') {
        Some((id, paths)) => (id, paths),
        None => (spec, ""),
    };
    let id = id.trim();
    if id.is_empty() {
        anyhow::bail!("--ssh `{spec}`: no id (use `default` or the mount's `id=`)");
    }
    if id.contains(',') {
        anyhow::bail!("--ssh `{spec}`: expected `ID[=PATH[,PATH]]`");
    }
    let paths = paths
        .split(',')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .collect();
    Ok(SshSpec {
        id: id.to_string(),
        paths,
    })
}

/// Where a `--secret` value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// A file's contents.
    File(PathBuf),
    /// An environment variable's value.
    Env(String),
}

/// One parsed `--secret` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// The id `RUN --mount=type=secret,id=…` names.
    pub id: String,
    /// Where its value is read from.
    pub source: SecretSource,
}

/// Parses `--secret` as buildx does: `[type=file|env,]id=ID[,src=PATH|,source=PATH][,env=VAR]`.
pub fn parse_secret(spec: &str) -> anyhow::Result<SecretSpec> {
    let (mut id, mut kind, mut src, mut env) = (None, None, None, None);
    for field in spec.split(',') {
        let (k, v) = field
            .split_once('=')
            .with_context(|| format!("--secret `{spec}`: `{field}` is not KEY=VALUE"))?;
        match k.trim().to_ascii_lowercase().as_str() {
            "id" => id = Some(v.to_string()),
            "type" => kind = Some(v.to_ascii_lowercase()),
            "src" | "source" => src = Some(v.to_string()),
            "env" => env = Some(v.to_string()),
            other => anyhow::bail!("--secret `{spec}`: unknown key `{other}`"),
        }
    }
    let id = id
        .or_else(|| src.clone())
        .or_else(|| env.clone())
        .filter(|i| !i.is_empty())
        .with_context(|| format!("--secret `{spec}`: no id"))?;
    let source = match (kind.as_deref(), src, env) {
        (Some("file") | None, Some(p), None) => SecretSource::File(PathBuf::from(p)),
        (Some("env") | None, None, Some(v)) => SecretSource::Env(v),
        (Some("env"), Some(v), None) => SecretSource::Env(v),
        (Some("file"), None, None) => SecretSource::File(PathBuf::from(&id)),
        (Some("env"), None, None) => SecretSource::Env(id.clone()),
        (None, None, None) if std::env::var_os(&id).is_some() => SecretSource::Env(id.clone()),
        (None, None, None) => SecretSource::File(PathBuf::from(&id)),
        (Some(t), _, _) if t != "file" && t != "env" => {
            anyhow::bail!("--secret `{spec}`: type must be `file` or `env`, not `{t}`")
        }
        _ => anyhow::bail!(
            "--secret `{spec}`: src= and env= conflict (with each other or with type=)"
        ),
    };
    Ok(SecretSpec { id, source })
}

/// `memobuild why`.
#[derive(Debug, Args)]
pub struct WhyArgs {
    /// Name of the Dockerfile (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The stage that was built (default: the last one).
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// MemoBuild's state directory, as given to `build`.
    #[arg(long, value_name = "DIR", env = "MEMOBUILD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Build context directory.
    #[arg(value_name = "CONTEXT")]
    pub context: PathBuf,
}

/// `memobuild server`.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Address to listen on, `HOST:PORT` (port 0 picks a free one); the bound address is printed
    /// on stdout as `listening on http://ADDR`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Directory holding the cached objects (`ac/`, `cas/`), build records (`builds/`) and
    /// webhook deliveries (`webhooks/`); created if missing.
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,
    /// Bearer token that writes (uploads, build reports) must present. Without one the server
    /// refuses writes (403) unless `--insecure-open-writes` is given.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "MEMOBUILD_SERVER_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Require the token for reads (GET, HEAD) too.
    #[arg(long)]
    pub token_reads: bool,
    /// Without `--token`, let anyone who can reach the server write to it (uploads, build
    /// reports): one bad client can then poison every build's cache. Off by default.
    #[arg(long)]
    pub insecure_open_writes: bool,
    /// Time a client has to send a request's head (request line and headers), counted from
    /// when the server waits for one: a new connection, or a kept-alive one between requests.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = positive_duration)]
    pub header_read_timeout: std::time::Duration,
    /// An upload or build report whose body sends nothing for this long is aborted (408) and
    /// what it sent is removed.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = positive_duration)]
    pub body_idle_timeout: std::time::Duration,
    /// Connections open at once. When all are taken, a new connection closes idle ones (no
    /// request running), those silent longest first; when every one is busy, it waits.
    /// Default: half the open-file limit less a reserve, at most 4096.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Largest upload taken: one that declares more is refused (413) before any of it is read,
    /// one that sends more is cut off. `8GiB`, `500MB`, …
    #[arg(long, value_name = "BYTES", default_value = "8GiB", value_parser = crate::cache_cmd::parse_size)]
    pub max_body_size: u64,
    /// Keep the store under this size by evicting the least recently used objects (down to
    /// 90 %): `500MB`, `10GiB`, … Default: unbounded.
    #[arg(long, value_name = "BYTES", value_parser = crate::cache_cmd::parse_size)]
    pub max_size: Option<u64>,
    /// Build records to keep (the newest; older ones are deleted from the database).
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub keep_builds: usize,
    /// Delete build records received longer ago than this (`30d`, `12h`). Default: kept
    /// until `--keep-builds` pushes them out.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub keep_builds_for: Option<std::time::Duration>,
    /// Keep build records in this PostgreSQL database (`postgres://USER:PASSWORD@HOST:PORT/DB`),
    /// shared by several server replicas, instead of SQLite in the store.
    #[arg(
        long,
        value_name = "URL",
        env = "MEMOBUILD_DATABASE",
        hide_env_values = true
    )]
    pub database: Option<String>,
    /// POST every finished build (`build.completed`) to this URL; repeat for several.
    #[arg(
        long = "webhook",
        value_name = "URL",
        env = "MEMOBUILD_WEBHOOKS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub webhooks: Vec<String>,
    /// Key for the `X-MemoBuild-Signature-256` header (HMAC-SHA256 of the body, as GitHub's
    /// `X-Hub-Signature-256`). Without it deliveries are unsigned.
    #[arg(
        long,
        value_name = "SECRET",
        env = "MEMOBUILD_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<String>,
    /// Attempts per webhook delivery before it is given up (the first included).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub webhook_attempts: u32,
    /// Wait before the first retry of a delivery; it doubles with each retry (up to 5 minutes).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub webhook_backoff: std::time::Duration,
    /// Time allowed for one delivery attempt.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub webhook_timeout: std::time::Duration,
}

/// A duration flag that must not be zero (a zero timeout would cut every client off).
fn positive_duration(s: &str) -> Result<std::time::Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be more than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// `memobuild cache`. containerd snapshots are out of its scope: neither counted nor removed
/// (`ctr snapshots` manages those).
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CacheCommand,
}

/// `memobuild cache` subcommands.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Print the size of the local cache: layer blobs, action records, the rest (containerd
    /// snapshots not counted).
    Du(CacheDuArgs),
    /// Remove the least recently used action records and blobs until the cache fits the bound;
    /// blobs named by a kept record are kept. containerd snapshots are not touched.
    Prune(CachePruneArgs),
}

/// `memobuild cache du`.
#[derive(Debug, Args)]
pub struct CacheDuArgs {
    /// MemoBuild's state directory, as given to `build`.
    #[arg(long, value_name = "DIR", env = "MEMOBUILD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Also count MemoBuild's containerd snapshots.
    #[arg(long)]
    pub snapshots: bool,
    /// containerd socket for `--snapshots`, as for `build`.
    #[arg(long, value_name = "ADDR", env = "MEMOBUILD_CONTAINERD")]
    pub containerd: Option<String>,
    /// containerd namespace for `--snapshots`, as for `build`.
    #[arg(long, value_name = "NAME", env = "MEMOBUILD_NAMESPACE", default_value = memobuild_worker::DEFAULT_NAMESPACE)]
    pub namespace: String,
}

/// `memobuild cache prune`.
#[derive(Debug, Args)]
pub struct CachePruneArgs {
    /// MemoBuild's state directory, as given to `build`.
    #[arg(long, value_name = "DIR", env = "MEMOBUILD_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Remove least recently used entries until the cache is at most this size (`500MB`,
    /// `2GiB`, …).
    #[arg(long, value_name = "BYTES", value_parser = crate::cache_cmd::parse_size, conflicts_with = "all")]
    pub keep_size: Option<u64>,
    /// Remove entries not used for this long (`24h`, `7d`, `1d12h`, …).
    #[arg(long, value_name = "DURATION", value_parser = crate::cache_cmd::parse_duration, conflicts_with = "all")]
    pub keep_duration: Option<std::time::Duration>,
    /// Remove every action record and blob.
    #[arg(long)]
    pub all: bool,
    /// Print what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Prune MemoBuild's containerd snapshots instead of the local cache, by the same kind of
    /// bound (a later build unpacks what it needs again from the local cache's layer blobs).
    #[arg(long)]
    pub snapshots: bool,
    /// containerd socket for `--snapshots`, as for `build`.
    #[arg(long, value_name = "ADDR", env = "MEMOBUILD_CONTAINERD")]
    pub containerd: Option<String>,
    /// containerd namespace for `--snapshots`, as for `build`.
    #[arg(long, value_name = "NAME", env = "MEMOBUILD_NAMESPACE", default_value = memobuild_worker::DEFAULT_NAMESPACE)]
    pub namespace: String,
}

/// Output encodings of `memobuild lower`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LowerFormat {
    /// Binary protobuf `pb.Definition`.
    Pb,
    /// A readable JSON rendering of the ops.
    Json,
}

/// `memobuild lower`.
#[derive(Debug, Args)]
pub struct LowerArgs {
    /// What to lower.
    #[command(flatten)]
    pub frontend: FrontendArgs,
    /// Output encoding.
    #[arg(long, value_enum, default_value_t = LowerFormat::Pb)]
    pub format: LowerFormat,
}

/// `--state-dir`, else `$HOME/.local/share/memobuild`, else `/var/lib/memobuild`.
pub fn state_dir(arg: Option<PathBuf>) -> PathBuf {
    arg.unwrap_or_else(|| match std::env::var_os("HOME") {
        Some(h) => std::path::Path::new(&h).join(".local/share/memobuild"),
        None => PathBuf::from("/var/lib/memobuild"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_specs_parse_as_buildx() -> anyhow::Result<()> {
        assert_eq!(
            parse_secret("id=tok,src=/run/tok.txt")?,
            SecretSpec {
                id: "tok".into(),
                source: SecretSource::File("/run/tok.txt".into())
            }
        );
        assert_eq!(
            parse_secret("id=tok,env=TOKEN")?.source,
            SecretSource::Env("TOKEN".into())
        );
        assert_eq!(
            parse_secret("type=env,id=HOME")?.source,
            SecretSource::Env("HOME".into())
        );
        assert_eq!(
            parse_secret("type=file,id=a,source=b")?.source,
            SecretSource::File("b".into())
        );
        assert_eq!(parse_secret("src=/x/y")?.id, "/x/y");
        assert!(parse_secret("id=a,src=b,env=C").is_err());
        assert!(parse_secret("id=a,bogus=1").is_err());
        assert!(parse_secret("type=ssh,id=a,src=b").is_err());
        assert!(parse_secret("src=").is_err());
        Ok(())
    }

    #[test]
    fn ssh_specs_parse_as_buildx() -> anyhow::Result<()> {
        assert_eq!(
            parse_ssh("default")?,
            SshSpec {
                id: "default".into(),
                paths: vec![]
            }
        );
        assert_eq!(
            parse_ssh("github=/k/a,/k/b")?,
            SshSpec {
                id: "github".into(),
                paths: vec!["/k/a".into(), "/k/b".into()]
            }
        );
        assert_eq!(parse_ssh("x=/run/agent.sock")?.paths.len(), 1);
        assert!(parse_ssh("=/k/a").is_err());
        assert!(parse_ssh("").is_err());
        Ok(())
    }

    // Verifies: a path that is a socket is an agent, files are keys (read here), and mixing the
    // two or naming a missing file is an error naming the path.
    #[test]
    fn ssh_sources_are_sockets_or_keys() -> anyhow::Result<()> {
        let d = tempfile::tempdir()?;
        let sock = d.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock)?;
        let key = d.path().join("id_test");
        std::fs::write(&key, "KEY")?;
        assert!(matches!(
            ssh_source("s", std::slice::from_ref(&sock))?,
            SshSource::Socket(p) if p == sock
        ));
        match ssh_source("k", &[key.clone(), key.clone()])? {
            SshSource::Keys(k) => {
                assert_eq!(k.len(), 2);
                assert_eq!(k[0].data, b"KEY");
            }
            SshSource::Socket(_) => panic!("a key file is not a socket"),
        }
        assert!(ssh_source("m", &[sock.clone(), key.clone()]).is_err());
        assert!(ssh_source("m", &[key, sock]).is_err());
        let missing = d.path().join("nope");
        let e = ssh_source("x", &[missing]).err().map(|e| format!("{e:#}"));
        assert!(e.is_some_and(|e| e.contains("nope")));
        Ok(())
    }
}
