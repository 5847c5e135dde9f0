//! `memobuild k8s job`: prints a Kubernetes `batch/v1` Job that runs one `memobuild build` in a
//! cluster, against the team's remote cache (the shared L3).
//!
//! The pod cannot see this machine's disk, so the context is a git URL that `memobuild build`
//! fetches itself (as buildx does). containerd runs embedded in the pod (`--containerd
//! embedded`), which needs a privileged container (overlayfs mounts, runc). The state directory
//! is a volume (an `emptyDir`, or a PersistentVolumeClaim to keep a warm local cache between
//! Jobs): overlayfs cannot stack its upper directory on the container's own overlay root.
//! Credentials stay in Secrets: the manifest names them, it never holds a value (a context URL
//! with a password or token in it is refused; `--git-auth-secret` gives git an HTTP header from a
//! Secret instead).
//!
//! The context is read by [`crate::gitctx::GitContext::parse`], as `memobuild build` reads it, so
//! that the Job accepts what the build in the pod will fetch, and nothing else.
//!
//! The manifest is built from `k8s-openapi`'s types ([`job::job`]) and written with
//! `serde_json` or `serde_norway` (YAML); flags are checked against Kubernetes' rules first
//! ([`checks`]), each error naming its flag.

mod checks;
mod job;

use std::io::Write as _;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};

use crate::cli::ProgressMode;
use checks::{Transport, check_git_context, parse_key_ref};

/// Where the state directory (a volume) is mounted and what `--state-dir` says.
pub const STATE_DIR: &str = "/var/lib/memobuild";
/// Where the `--ssh-secret` key is mounted.
pub const SSH_DIR: &str = "/var/run/memobuild/ssh";
/// Where the `--registry-auth-secret` is mounted (as `config.json`); also `$DOCKER_CONFIG`.
pub const DOCKER_CONFIG_DIR: &str = "/root/.docker";
/// Where the `--ssh-known-hosts` ConfigMap is mounted (as `known_hosts`): root's ssh directory.
pub const SSH_CONFIG_DIR: &str = "/root/.ssh";

/// File mode of the mounted ssh key: `0400` (ssh refuses keys others can read).
const KEY_MODE: i32 = 0o400;

/// `memobuild k8s`.
#[derive(Debug, Args)]
pub struct K8sArgs {
    /// What to print.
    #[command(subcommand)]
    pub command: K8sCommand,
}

/// `memobuild k8s` subcommands.
#[derive(Debug, Subcommand)]
pub enum K8sCommand {
    /// Print a Job that runs one build in a cluster.
    Job(JobArgs),
}

/// Output encodings of `memobuild k8s job`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ManifestFormat {
    /// YAML (block style, strings double-quoted), for `kubectl create -f -`.
    Yaml,
    /// Pretty-printed JSON.
    Json,
}

/// `memobuild k8s job`: a `batch/v1` Job whose single privileged container runs
/// `memobuild build --containerd embedded --state-dir /var/lib/memobuild … CONTEXT`.
#[derive(Debug, Args)]
pub struct JobArgs {
    /// Image the build runs in: `memobuild`, `containerd`, `runc`, `git`, `ip` and `slirp4netns`
    /// on PATH (and `ssh`, `ssh-agent` for `--ssh-secret`), as the top-level Dockerfile makes it.
    #[arg(long, value_name = "IMAGE")]
    pub image: String,
    /// Name of the Job (a DNS-1123 label: lowercase letters, digits, `-`; at most 63). A fixed
    /// name builds once: `kubectl apply` of the same Job again does nothing, and of a changed one
    /// is refused (a Job's pod template is immutable). For repeated builds use
    /// `--generate-name` with `kubectl create -f -`.
    #[arg(long, value_name = "NAME", default_value = "memobuild-build")]
    pub name: String,
    /// Set `metadata.generateName: NAME-` instead of `metadata.name`, so that every
    /// `kubectl create -f -` makes a new Job (Kubernetes adds a random suffix): the way to run
    /// repeated builds (not `kubectl apply`, which needs a fixed name).
    #[arg(long)]
    pub generate_name: bool,
    /// Kubernetes namespace of the Job (default: the one `kubectl` uses).
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Dockerfile, as `memobuild build -f` reads it for a git context: a path inside the
    /// repository (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<String>,
    /// Build this stage instead of the last one.
    #[arg(long, value_name = "STAGE")]
    pub target: Option<String>,
    /// Set a build-time variable (`KEY=VALUE`: the pod has no environment to take a bare `KEY`
    /// from); may be given several times.
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Name (and tag) of the image, e.g. `registry.example.com/app:1.0`; may be given several
    /// times.
    #[arg(short = 't', long = "tag", value_name = "NAME")]
    pub tags: Vec<String>,
    /// Push the image to the registries named by `--tag` (credentials from
    /// `--registry-auth-secret`).
    #[arg(long, requires = "tags")]
    pub push: bool,
    /// Output destination, as for `memobuild build` (paths are inside the pod); may be given
    /// several times.
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// Do not use cached results.
    #[arg(long)]
    pub no_cache: bool,
    /// How the build shows progress in the pod's log (not a terminal, hence `plain`).
    #[arg(long, value_enum, default_value_t = ProgressMode::Plain)]
    pub progress: ProgressMode,
    /// The project the build is reported under; also the Job's `memobuild.io/project` label, so
    /// it must be a valid label value.
    #[arg(long, value_name = "NAME")]
    pub project: Option<String>,
    /// Remote (team) cache the build reads and fills, e.g. `http://memobuild.ci.svc:8080`.
    #[arg(long, value_name = "URL")]
    pub remote_cache: Option<String>,
    /// Secret key holding the remote cache's bearer token, `SECRET:KEY`; given to the build as
    /// `MEMOBUILD_REMOTE_CACHE_TOKEN` through `secretKeyRef` (the manifest never holds it).
    #[arg(long, value_name = "SECRET:KEY", requires = "remote_cache")]
    pub remote_cache_token_secret: Option<String>,
    /// A `kubernetes.io/dockerconfigjson` Secret with registry credentials (for `--push` and
    /// private base images), mounted read-only as `/root/.docker/config.json`.
    #[arg(long, value_name = "SECRET")]
    pub registry_auth_secret: Option<String>,
    /// Secret key holding an HTTP header git sends when it fetches an `http(s)` context,
    /// `SECRET:KEY`: `Authorization: Bearer TOKEN` or `Authorization: Basic BASE64(USER:TOKEN)`.
    /// Given to git as `http.https://HOST/.extraHeader` through `GIT_CONFIG_COUNT`,
    /// `GIT_CONFIG_KEY_0` and `GIT_CONFIG_VALUE_0` (from `secretKeyRef`: the manifest never holds
    /// it; git 2.31 or later): sent to the context's server (its submodules there included),
    /// never to another one. Credentials in the context URL itself are refused.
    #[arg(long, value_name = "SECRET:KEY")]
    pub git_auth_secret: Option<String>,
    /// Secret key holding an ssh private key, `SECRET:KEY`: mounted (mode 0400) and given as
    /// `--ssh default=/var/run/memobuild/ssh/KEY`, for ssh contexts (with `--ssh-known-hosts`)
    /// and `RUN --mount=type=ssh`.
    #[arg(long, value_name = "SECRET:KEY")]
    pub ssh_secret: Option<String>,
    /// ConfigMap key holding `known_hosts` lines for ssh, `CONFIGMAP:KEY`: mounted read-only as
    /// `/root/.ssh/known_hosts`, so that git over ssh can check the server it fetches from;
    /// required for an ssh context (the pod has no terminal to accept an unknown host key).
    #[arg(long, value_name = "CONFIGMAP:KEY")]
    pub ssh_known_hosts: Option<String>,
    /// PersistentVolumeClaim to keep the state directory in (a warm local cache between Jobs);
    /// default: an `emptyDir` that goes with the pod. The claim must be used by one build at a
    /// time: two Jobs on one `ReadWriteOnce` claim can land on the same node, and each starts an
    /// embedded containerd on the same state directory without seeing the other. Create it with
    /// `accessModes: [ReadWriteOncePod]` (a second pod then waits), and give builds that run in
    /// parallel a claim each.
    #[arg(long, value_name = "CLAIM")]
    pub state_pvc: Option<String>,
    /// CPU the container requests and is limited to (a Kubernetes quantity: `2`, `500m`).
    #[arg(long, value_name = "QUANTITY")]
    pub cpu: Option<String>,
    /// Memory the container requests and is limited to (a Kubernetes quantity: `4Gi`).
    #[arg(long, value_name = "QUANTITY")]
    pub memory: Option<String>,
    /// Delete the finished Job after this many seconds (`ttlSecondsAfterFinished`).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(i32).range(0..))]
    pub ttl: i32,
    /// Retries of a failed pod (`backoffLimit`); 0: a failed build is not run again blindly.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(i32).range(0..))]
    pub backoff_limit: i32,
    /// Stop the Job after this many seconds (`activeDeadlineSeconds`).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(i64).range(1..))]
    pub deadline: Option<i64>,
    /// ServiceAccount the pod runs as.
    #[arg(long, value_name = "NAME")]
    pub service_account: Option<String>,
    /// Run only on nodes with this label, `KEY=VALUE` (`nodeSelector`); may be given several
    /// times.
    #[arg(long = "node-selector", value_name = "KEY=VALUE")]
    pub node_selectors: Vec<String>,
    /// Output encoding.
    #[arg(long, value_enum, default_value_t = ManifestFormat::Yaml)]
    pub format: ManifestFormat,
    /// Git context, passed to `memobuild build` as is and read as it reads it:
    /// `https://HOST/REPO.git#REF:DIR` (the `.git` is needed), `github.com/OWNER/REPO`,
    /// `git://…`, `ssh://…` or `git@HOST:REPO.git#REF` (ssh needs `--ssh-known-hosts`). A local
    /// path is refused (the pod cannot see this machine's disk), and so is a URL with a password
    /// or token in it (see `--git-auth-secret`).
    #[arg(value_name = "CONTEXT")]
    pub context: String,
}

/// Runs `memobuild k8s …`: prints the manifest on stdout.
pub fn run(args: K8sArgs) -> anyhow::Result<()> {
    match args.command {
        K8sCommand::Job(job) => {
            let text = render(&job)?;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .context("writing the manifest to stdout")
        }
    }
}

/// The Job manifest as JSON (object keys sorted, as `serde_json` keeps them here).
#[cfg_attr(
    not(test),
    expect(
        dead_code,
        reason = "the binary prints through `render`; tests inspect this"
    )
)]
pub fn job_manifest(args: &JobArgs) -> anyhow::Result<serde_json::Value> {
    serde_json::to_value(job::job(args)?).context("encoding the Job manifest")
}

/// The manifest in `args.format`, ending with a newline: `apiVersion`, `kind`, `metadata`,
/// `spec`, then each object's fields in `k8s-openapi`'s (alphabetical) order.
pub fn render(args: &JobArgs) -> anyhow::Result<String> {
    let job = job::job(args)?;
    Ok(match args.format {
        ManifestFormat::Yaml => {
            serde_norway::to_string(&job).context("encoding the Job manifest as YAML")?
        }
        ManifestFormat::Json => {
            let mut s = serde_json::to_string_pretty(&job).context("encoding the Job manifest")?;
            s.push('\n');
            s
        }
    })
}

/// The `--progress` value as `memobuild build` spells it.
fn progress_name(p: ProgressMode) -> &'static str {
    match p {
        ProgressMode::Auto => "auto",
        ProgressMode::Tty => "tty",
        ProgressMode::Plain => "plain",
        ProgressMode::Json => "json",
        ProgressMode::Quiet => "quiet",
    }
}

/// Validates the flags and returns what the container runs after `memobuild build`: the flags,
/// then the context.
fn build_command_args(args: &JobArgs) -> anyhow::Result<Vec<String>> {
    let ctx = check_git_context(&args.context)?;
    let shown = crate::gitctx::redact(&args.context);
    if ctx.transport == Transport::Ssh && args.ssh_known_hosts.is_none() {
        let key = if args.ssh_secret.is_none() {
            " and `--ssh-secret SECRET:KEY` (the private key git authenticates with)"
        } else {
            ""
        };
        bail!(
            "context `{shown}` is fetched over ssh, and the pod has no terminal to accept the server's host key: give `--ssh-known-hosts CONFIGMAP:KEY` (a ConfigMap key holding the server's `known_hosts` lines, e.g. from `ssh-keyscan HOST`){key}"
        );
    }
    if let Some(spec) = &args.git_auth_secret
        && ctx.transport != Transport::Http
    {
        let instead = match ctx.transport {
            Transport::Ssh => {
                "git authenticates over ssh with a key: use `--ssh-secret SECRET:KEY`"
            }
            _ => "`git://` has no authentication",
        };
        bail!(
            "--git-auth-secret `{spec}`: an HTTP header is for an `http(s)` context, and context `{shown}` is not one ({instead})"
        );
    }
    let mut a: Vec<String> = Vec::new();
    let mut flag = |name: &str, value: Option<&str>| {
        a.push(name.to_string());
        a.extend(value.map(str::to_string));
    };
    flag("--progress", Some(progress_name(args.progress)));
    flag("--containerd", Some("embedded"));
    flag("--state-dir", Some(STATE_DIR));
    if let Some(f) = &args.file {
        flag("--file", Some(f));
    }
    if let Some(t) = &args.target {
        flag("--target", Some(t));
    }
    for b in &args.build_args {
        if b.split_once('=').is_none_or(|(k, _)| k.is_empty()) {
            bail!(
                "--build-arg `{b}`: expected `KEY=VALUE` (the pod has no environment to take `{b}` from)"
            );
        }
        flag("--build-arg", Some(b));
    }
    for t in &args.tags {
        flag("--tag", Some(t));
    }
    if args.push {
        flag("--push", None);
    }
    for o in &args.outputs {
        flag("--output", Some(o));
    }
    if args.no_cache {
        flag("--no-cache", None);
    }
    if let Some(p) = &args.project {
        flag("--project", Some(p));
    }
    if let Some(r) = &args.remote_cache {
        flag("--remote-cache", Some(r));
    }
    if let Some(spec) = &args.ssh_secret {
        let r = parse_key_ref("ssh-secret", spec)?;
        flag("--ssh", Some(&format!("default={SSH_DIR}/{}", r.key)));
    }
    a.push(args.context.clone());
    Ok(a)
}

#[cfg(test)]
mod tests;
