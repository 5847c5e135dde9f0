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
//! The manifest is built as an ordered document ([`Doc`]) so that both outputs keep the
//! conventional key order (`apiVersion`, `kind`, `metadata`, `spec`): the workspace's
//! `serde_json` sorts object keys. YAML is written by a small emitter (block style, every string
//! double-quoted), valid YAML 1.2 and 1.1, with no YAML crate.

use std::collections::BTreeSet;
use std::io::Write as _;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use crate::cli::ProgressMode;

/// Where the state directory (a volume) is mounted and what `--state-dir` says.
pub const STATE_DIR: &str = "/var/lib/memobuild";
/// Where the `--ssh-secret` key is mounted.
pub const SSH_DIR: &str = "/var/run/memobuild/ssh";
/// Where the `--registry-auth-secret` is mounted (as `config.json`); also `$DOCKER_CONFIG`.
pub const DOCKER_CONFIG_DIR: &str = "/root/.docker";
/// Where the `--ssh-known-hosts` ConfigMap is mounted (as `known_hosts`): root's ssh directory.
pub const SSH_CONFIG_DIR: &str = "/root/.ssh";

/// File mode of the mounted ssh key: `0400` (ssh refuses keys others can read).
const KEY_MODE: u32 = 0o400;

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
    /// Image the build runs in: `memobuild`, `containerd`, `runc` and `git` on PATH (and `ssh`,
    /// `ssh-agent` for `--ssh-secret`).
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
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u32).range(0..=i64::from(i32::MAX)))]
    pub ttl: u32,
    /// Retries of a failed pod (`backoffLimit`); 0: a failed build is not run again blindly.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=i64::from(i32::MAX)))]
    pub backoff_limit: u32,
    /// Stop the Job after this many seconds (`activeDeadlineSeconds`).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=i64::MAX.unsigned_abs()))]
    pub deadline: Option<u64>,
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
    serde_json::to_value(job_doc(args)?).context("encoding the Job manifest")
}

/// The manifest in `args.format`, ending with a newline, keys in conventional order.
pub fn render(args: &JobArgs) -> anyhow::Result<String> {
    let doc = job_doc(args)?;
    Ok(match args.format {
        ManifestFormat::Yaml => doc.to_yaml(),
        ManifestFormat::Json => {
            let mut s = serde_json::to_string_pretty(&doc).context("encoding the Job manifest")?;
            s.push('\n');
            s
        }
    })
}

/// A JSON-like document whose maps keep their insertion order.
#[derive(Debug, Clone, PartialEq)]
pub enum Doc {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number, as JSON has them.
    Number(serde_json::Number),
    /// A string.
    String(String),
    /// A list.
    Seq(Vec<Doc>),
    /// A map, in this order.
    Map(Vec<(String, Doc)>),
}

impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Doc::Null => s.serialize_unit(),
            Doc::Bool(b) => s.serialize_bool(*b),
            Doc::Number(n) => n.serialize(s),
            Doc::String(v) => s.serialize_str(v),
            Doc::Seq(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
            Doc::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl From<&serde_json::Value> for Doc {
    fn from(v: &serde_json::Value) -> Doc {
        use serde_json::Value;
        match v {
            Value::Null => Doc::Null,
            Value::Bool(b) => Doc::Bool(*b),
            Value::Number(n) => Doc::Number(n.clone()),
            Value::String(s) => Doc::String(s.clone()),
            Value::Array(a) => Doc::Seq(a.iter().map(Doc::from).collect()),
            Value::Object(o) => Doc::Map(o.iter().map(|(k, v)| (k.clone(), v.into())).collect()),
        }
    }
}

impl From<&str> for Doc {
    fn from(s: &str) -> Doc {
        Doc::String(s.to_string())
    }
}

impl From<String> for Doc {
    fn from(s: String) -> Doc {
        Doc::String(s)
    }
}

impl From<u64> for Doc {
    fn from(n: u64) -> Doc {
        Doc::Number(n.into())
    }
}

impl From<u32> for Doc {
    fn from(n: u32) -> Doc {
        Doc::Number(n.into())
    }
}

impl From<bool> for Doc {
    fn from(b: bool) -> Doc {
        Doc::Bool(b)
    }
}

impl Doc {
    /// A map of these entries, in this order.
    fn map<const N: usize>(entries: [(&str, Doc); N]) -> Doc {
        Doc::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    /// The document as YAML: block style, two-space indents, every string double-quoted (with
    /// JSON's escapes, which YAML's double-quoted style shares), numbers and booleans plain, empty
    /// collections as `{}` and `[]`. Ends with a newline.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        match self {
            Doc::Map(m) if !m.is_empty() => yaml_map(&mut out, m, 0, None),
            Doc::Seq(s) if !s.is_empty() => yaml_seq(&mut out, s, 0, None),
            scalar => {
                out.push_str(&yaml_scalar(scalar));
                out.push('\n');
            }
        }
        out
    }
}

/// A non-empty map whose keys sit at column `indent`. `first`, as wide as `indent`, replaces
/// the first line's indentation: the `- ` marks of the sequence items the map opens.
fn yaml_map(out: &mut String, entries: &[(String, Doc)], indent: usize, first: Option<&str>) {
    for (i, (k, v)) in entries.iter().enumerate() {
        match first.filter(|_| i == 0) {
            Some(prefix) => out.push_str(prefix),
            None => out.extend(std::iter::repeat_n(' ', indent)),
        }
        out.push_str(&yaml_key(k));
        out.push(':');
        match v {
            Doc::Map(m) if !m.is_empty() => {
                out.push('\n');
                yaml_map(out, m, indent + 2, None);
            }
            Doc::Seq(s) if !s.is_empty() => {
                out.push('\n');
                yaml_seq(out, s, indent + 2, None);
            }
            scalar => {
                out.push(' ');
                out.push_str(&yaml_scalar(scalar));
                out.push('\n');
            }
        }
    }
}

/// A non-empty sequence whose `- ` marks sit at column `indent`; `first` as for [`yaml_map`]
/// (`- - x` for a list in a list).
fn yaml_seq(out: &mut String, items: &[Doc], indent: usize, first: Option<&str>) {
    for (i, item) in items.iter().enumerate() {
        let mut prefix = match first.filter(|_| i == 0) {
            Some(p) => p.to_string(),
            None => " ".repeat(indent),
        };
        prefix.push_str("- ");
        match item {
            Doc::Map(m) if !m.is_empty() => yaml_map(out, m, indent + 2, Some(&prefix)),
            Doc::Seq(s) if !s.is_empty() => yaml_seq(out, s, indent + 2, Some(&prefix)),
            scalar => {
                out.push_str(&prefix);
                out.push_str(&yaml_scalar(scalar));
                out.push('\n');
            }
        }
    }
}

/// A scalar (or an empty collection) in flow form.
fn yaml_scalar(v: &Doc) -> String {
    match v {
        Doc::Null => "null".to_string(),
        Doc::Bool(b) => b.to_string(),
        // JSON's number syntax is a subset of YAML's core schema ints and floats.
        Doc::Number(n) => n.to_string(),
        Doc::String(s) => yaml_quote(s),
        Doc::Seq(_) => "[]".to_string(),
        Doc::Map(_) => "{}".to_string(),
    }
}

/// A map key: plain when no YAML reader can take it for anything but that string (a letter,
/// then letters, digits, `.`, `_`, `/`, `-`; not a YAML 1.1 boolean or null), else quoted.
fn yaml_key(k: &str) -> String {
    const RESERVED: [&str; 12] = [
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~", "nan", "inf",
    ];
    let plain = k.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
        && !RESERVED.iter().any(|r| k.eq_ignore_ascii_case(r));
    if plain { k.to_string() } else { yaml_quote(k) }
}

/// A double-quoted YAML string. Escapes `"`, `\`, control characters and the characters YAML
/// does not allow raw (C1 controls, U+2028/9, which YAML 1.1 reads as line breaks, BOM,
/// U+FFFE/F); no tab is left raw.
fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' '
                || ('\u{7f}'..='\u{9f}').contains(&c)
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ) =>
            {
                out.push_str(&format!("\\u{:04x}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A `NAME:KEY` reference to a key of a Secret or ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyRef {
    name: String,
    key: String,
}

/// Parses `--FLAG NAME:KEY`: `NAME` a DNS-1123 subdomain, `KEY` a valid data key (it becomes a
/// file name).
fn parse_key_ref(flag: &str, spec: &str) -> anyhow::Result<KeyRef> {
    let Some((name, key)) = spec.split_once(':') else {
        bail!("--{flag} `{spec}`: expected `NAME:KEY`");
    };
    if !is_dns1123_subdomain(name) {
        bail!(
            "--{flag} `{spec}`: `{name}` is not a valid object name (lowercase letters, digits, `-`, `.`)"
        );
    }
    if !is_data_key(key) {
        bail!("--{flag} `{spec}`: `{key}` is not a valid key (letters, digits, `-`, `_`, `.`)");
    }
    Ok(KeyRef {
        name: name.to_string(),
        key: key.to_string(),
    })
}

/// A DNS-1123 label: 1 to 63 lowercase letters, digits and `-`, starting and ending with a
/// letter or digit.
fn is_dns1123_label(s: &str) -> bool {
    s.len() <= 63 && is_label_part(s)
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?` with no length bound.
fn is_label_part(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

/// A DNS-1123 subdomain (most object names): dot-separated labels, at most 253 in all.
fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_label_part)
}

/// A Secret or ConfigMap data key: letters, digits, `-`, `_`, `.`; not `.` or `..`.
fn is_data_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A label value: empty, or up to 63 letters, digits, `-`, `_`, `.`, starting and ending with a
/// letter or digit.
fn is_label_value(s: &str) -> bool {
    let b = s.as_bytes();
    s.is_empty()
        || (s.len() <= 63
            && b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

/// A label key: `[PREFIX/]NAME`, `PREFIX` a DNS-1123 subdomain, `NAME` a non-empty label value.
fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && is_label_value(name)
}

/// A Kubernetes quantity: a decimal number, then an optional suffix (`m`, `k`, `M`, `G`, …,
/// `Ki`, `Mi`, `Gi`, …, or an exponent `e3`).
fn is_quantity(s: &str) -> bool {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let num_ok =
        !num.is_empty() && num.matches('.').count() <= 1 && num.bytes().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit()));
    num_ok && suffix_ok
}

/// How the pod's git fetches a context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    /// `http://` or `https://` (also `github.com/…`).
    Http,
    /// `ssh://` or scp-like `USER@HOST:PATH`.
    Ssh,
    /// `git://`: no authentication.
    Git,
}

/// A context the pod can fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CheckedContext {
    /// How.
    transport: Transport,
    /// What git fetches from (see [`crate::gitctx::GitContext::remote`]).
    remote: String,
}

/// The scheme and the user part (`USER[:PASSWORD]`, before the last `@` of the authority) of a
/// `SCHEME://…` URL that has one.
fn url_userinfo(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (userinfo, _) = authority.rsplit_once('@')?;
    Some((scheme, userinfo))
}

/// Whether a user part holds a secret: a password (`USER:PASSWORD@`), or, over http(s), any user
/// part at all (GitHub and GitLab take a token as the user: `https://TOKEN@HOST/…`).
fn is_secret_userinfo(scheme: &str, userinfo: &str) -> bool {
    userinfo.contains(':')
        || scheme.eq_ignore_ascii_case("http")
        || scheme.eq_ignore_ascii_case("https")
}

/// `SCHEME://HOST[:PORT]/` of a URL (its user part, if any, dropped).
fn http_origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("https", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    format!("{scheme}://{host}/")
}

/// `HOST[:PORT]` or `[IPV6][:PORT]`, the port digits (possibly none).
fn is_host_port(s: &str) -> bool {
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some(parts) => parts,
            None => return false,
        },
        None => s.split_at(s.find(':').unwrap_or(s.len())),
    };
    !host.is_empty()
        && (port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|p| p.bytes().all(|c| c.is_ascii_digit())))
}

/// Reads the context as `memobuild build` does ([`crate::gitctx::GitContext::parse`]) and
/// refuses what the pod cannot fetch: what the build would take for a local path, a URL without
/// a host, an scp-like `USER@HOST:PATH` git would not read as one. A URL with a password or
/// token in it is refused too: it would be written into the Job's args.
fn check_git_context(ctx: &str) -> anyhow::Result<CheckedContext> {
    let shown = crate::gitctx::redact(ctx);
    if let Some((scheme, userinfo)) = url_userinfo(ctx)
        && is_secret_userinfo(scheme, userinfo)
        && ["http", "https", "ssh", "git"]
            .iter()
            .any(|s| scheme.eq_ignore_ascii_case(s))
    {
        let instead = match scheme.to_ascii_lowercase().as_str() {
            "ssh" => "and a key as `--ssh-secret SECRET:KEY`",
            "git" => "(`git://` has no authentication)",
            _ => {
                "and the credentials as `--git-auth-secret SECRET:KEY`, a Secret key holding an HTTP header such as `Authorization: Bearer TOKEN`"
            }
        };
        bail!(
            "context `{shown}` has credentials in its URL, which would be written into the Job for anyone who can read it: give the URL without them, {instead}"
        );
    }
    let refuse = || {
        anyhow::anyhow!(
            "context `{shown}` is not a git URL: a Job's pod cannot see this machine's disk; give the repository as `https://HOST/REPO.git#REF:DIR`, `github.com/OWNER/REPO`, `ssh://…`, `git://…` or `git@HOST:REPO.git#REF`"
        )
    };
    if ctx.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(refuse());
    }
    let remote = crate::gitctx::GitContext::parse(ctx)
        .ok_or_else(refuse)?
        .remote;
    let scheme = [
        ("http://", Transport::Http),
        ("https://", Transport::Http),
        ("git://", Transport::Git),
        ("ssh://", Transport::Ssh),
    ]
    .into_iter()
    .find_map(|(prefix, t)| remote.strip_prefix(prefix).map(|rest| (t, rest)));
    let transport = match scheme {
        Some((transport, rest)) => {
            let authority = rest.split(['/', '?']).next().unwrap_or("");
            let host = authority.rsplit('@').next().unwrap_or("");
            if !is_host_port(host) {
                return Err(refuse());
            }
            transport
        }
        None => {
            // scp-like, as git reads it: `USER@HOST:PATH`, no `/` before the colon.
            let (user_host, path) = remote.split_once(':').ok_or_else(refuse)?;
            let (user, host) = user_host.split_once('@').ok_or_else(refuse)?;
            if user.is_empty() || host.is_empty() || user_host.contains('/') || path.is_empty() {
                return Err(refuse());
            }
            Transport::Ssh
        }
    };
    Ok(CheckedContext { transport, remote })
}

/// The `--progress` value as `memobuild build` spells it.
fn progress_name(p: ProgressMode) -> &'static str {
    match p {
        ProgressMode::Auto => "auto",
        ProgressMode::Tty => "tty",
        ProgressMode::Plain => "plain",
        ProgressMode::Json => "json",
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

/// The Job, in conventional key order.
fn job_doc(args: &JobArgs) -> anyhow::Result<Doc> {
    if !is_dns1123_label(&args.name) {
        bail!(
            "--name `{}`: not a valid Job name (a DNS-1123 label: at most 63 lowercase letters, digits and `-`, starting and ending with a letter or digit)",
            args.name
        );
    }
    if let Some(ns) = &args.namespace
        && !is_dns1123_label(ns)
    {
        bail!("--namespace `{ns}`: not a valid namespace (a DNS-1123 label)");
    }
    if args.image.is_empty() || args.image.chars().any(|c| c.is_whitespace()) {
        bail!("--image `{}`: not an image reference", args.image);
    }
    if let Some(p) = &args.project
        && (p.is_empty() || !is_label_value(p))
    {
        bail!(
            "--project `{p}`: the Job carries it as the `memobuild.io/project` label, whose values are at most 63 letters, digits, `-`, `_` and `.`, starting and ending with a letter or digit"
        );
    }
    let command_args = build_command_args(args)?;

    let mut labels = vec![
        ("app.kubernetes.io/name".to_string(), Doc::from("memobuild")),
        ("app.kubernetes.io/component".to_string(), "build".into()),
    ];
    if let Some(p) = &args.project {
        labels.push(("memobuild.io/project".to_string(), p.as_str().into()));
    }
    let labels = Doc::Map(labels);

    let mut metadata = Vec::new();
    if args.generate_name {
        metadata.push(("generateName".to_string(), format!("{}-", args.name).into()));
    } else {
        metadata.push(("name".to_string(), args.name.as_str().into()));
    }
    if let Some(ns) = &args.namespace {
        metadata.push(("namespace".to_string(), ns.as_str().into()));
    }
    metadata.push(("labels".to_string(), labels.clone()));

    // Volumes and where the container sees them.
    let state = match &args.state_pvc {
        Some(claim) => {
            if !is_dns1123_subdomain(claim) {
                bail!("--state-pvc `{claim}`: not a valid claim name");
            }
            volume(
                "state",
                "persistentVolumeClaim",
                Doc::map([("claimName", claim.as_str().into())]),
            )
        }
        None => volume("state", "emptyDir", Doc::Map(Vec::new())),
    };
    let mut volumes = vec![state];
    let mut mounts = vec![mount("state", STATE_DIR, false)];
    let mut env = Vec::new();
    if let Some(secret) = &args.registry_auth_secret {
        if !is_dns1123_subdomain(secret) {
            bail!("--registry-auth-secret `{secret}`: not a valid Secret name");
        }
        let items = [
            ("key", ".dockerconfigjson".into()),
            ("path", "config.json".into()),
        ];
        volumes.push(volume(
            "docker-config",
            "secret",
            Doc::map([
                ("secretName", secret.as_str().into()),
                ("items", Doc::Seq(vec![Doc::map(items)])),
            ]),
        ));
        mounts.push(mount("docker-config", DOCKER_CONFIG_DIR, true));
        // Where credentials are read from, whatever `$HOME` the image sets.
        env.push(Doc::map([
            ("name", "DOCKER_CONFIG".into()),
            ("value", DOCKER_CONFIG_DIR.into()),
        ]));
    }
    if let Some(spec) = &args.remote_cache_token_secret {
        let r = parse_key_ref("remote-cache-token-secret", spec)?;
        let key_ref = Doc::map([("name", r.name.into()), ("key", r.key.into())]);
        env.push(Doc::map([
            ("name", "MEMOBUILD_REMOTE_CACHE_TOKEN".into()),
            ("valueFrom", Doc::map([("secretKeyRef", key_ref)])),
        ]));
    }
    if let Some(spec) = &args.git_auth_secret {
        let r = parse_key_ref("git-auth-secret", spec)?;
        // git's configuration through the environment (git 2.31): one `-c` setting, whose value
        // comes from the Secret. Scoped to the context's server (`http.<URL>.*`), so that the
        // header goes to no other host: not to a submodule's elsewhere, nor to a repository a
        // Dockerfile's `ADD` names (the worker's git has the same environment).
        let origin = http_origin(&check_git_context(&args.context)?.remote);
        env.push(Doc::map([
            ("name", "GIT_CONFIG_COUNT".into()),
            ("value", "1".into()),
        ]));
        env.push(Doc::map([
            ("name", "GIT_CONFIG_KEY_0".into()),
            ("value", format!("http.{origin}.extraHeader").into()),
        ]));
        let key_ref = Doc::map([("name", r.name.into()), ("key", r.key.into())]);
        env.push(Doc::map([
            ("name", "GIT_CONFIG_VALUE_0".into()),
            ("valueFrom", Doc::map([("secretKeyRef", key_ref)])),
        ]));
    }
    if let Some(spec) = &args.ssh_secret {
        let r = parse_key_ref("ssh-secret", spec)?;
        let items = [
            ("key", r.key.as_str().into()),
            ("path", r.key.as_str().into()),
            ("mode", KEY_MODE.into()),
        ];
        volumes.push(volume(
            "ssh-key",
            "secret",
            Doc::map([
                ("secretName", r.name.into()),
                ("defaultMode", KEY_MODE.into()),
                ("items", Doc::Seq(vec![Doc::map(items)])),
            ]),
        ));
        mounts.push(mount("ssh-key", SSH_DIR, true));
    }
    if let Some(spec) = &args.ssh_known_hosts {
        let r = parse_key_ref("ssh-known-hosts", spec)?;
        let items = [("key", r.key.into()), ("path", "known_hosts".into())];
        volumes.push(volume(
            "ssh-known-hosts",
            "configMap",
            Doc::map([
                ("name", r.name.into()),
                ("items", Doc::Seq(vec![Doc::map(items)])),
            ]),
        ));
        mounts.push(mount("ssh-known-hosts", SSH_CONFIG_DIR, true));
    }

    let mut resources = Vec::new();
    for (flag, name, value) in [
        ("cpu", "cpu", &args.cpu),
        ("memory", "memory", &args.memory),
    ] {
        if let Some(v) = value {
            if !is_quantity(v) {
                bail!("--{flag} `{v}`: not a Kubernetes quantity (`2`, `500m`, `4Gi`)");
            }
            resources.push((name.to_string(), Doc::from(v.as_str())));
        }
    }

    let mut container = vec![
        ("name".to_string(), Doc::from("build")),
        ("image".to_string(), args.image.as_str().into()),
        (
            "command".to_string(),
            Doc::Seq(vec!["memobuild".into(), "build".into()]),
        ),
        (
            "args".to_string(),
            Doc::Seq(command_args.into_iter().map(Doc::from).collect()),
        ),
    ];
    if !env.is_empty() {
        container.push(("env".to_string(), Doc::Seq(env)));
    }
    container.push((
        "securityContext".to_string(),
        // embedded containerd mounts overlayfs and runs runc.
        Doc::map([("privileged", true.into())]),
    ));
    if !resources.is_empty() {
        container.push((
            "resources".to_string(),
            Doc::map([
                ("requests", Doc::Map(resources.clone())),
                ("limits", Doc::Map(resources)),
            ]),
        ));
    }
    container.push(("volumeMounts".to_string(), Doc::Seq(mounts)));

    let mut pod = Vec::new();
    if let Some(sa) = &args.service_account {
        if !is_dns1123_subdomain(sa) {
            bail!("--service-account `{sa}`: not a valid ServiceAccount name");
        }
        pod.push(("serviceAccountName".to_string(), Doc::from(sa.as_str())));
    }
    pod.push(("restartPolicy".to_string(), "Never".into()));
    // memobuild would be the container's PID 1, and the processes it starts and leaves to be
    // reparented (containerd shims, ssh-agent, git's helpers) would stay zombies under it, as it
    // reaps only its own children. In one process namespace for the pod, the pause container is
    // PID 1, and it reaps them.
    pod.push(("shareProcessNamespace".to_string(), true.into()));
    if !args.node_selectors.is_empty() {
        let mut seen = BTreeSet::new();
        let mut selector = Vec::new();
        for s in &args.node_selectors {
            let Some((k, v)) = s.split_once('=') else {
                bail!("--node-selector `{s}`: expected `KEY=VALUE`");
            };
            if !is_label_key(k) || !is_label_value(v) {
                bail!("--node-selector `{s}`: not a valid label `KEY=VALUE`");
            }
            if !seen.insert(k) {
                bail!("--node-selector `{s}`: `{k}` is given twice");
            }
            selector.push((k.to_string(), Doc::from(v)));
        }
        pod.push(("nodeSelector".to_string(), Doc::Map(selector)));
    }
    pod.push((
        "containers".to_string(),
        Doc::Seq(vec![Doc::Map(container)]),
    ));
    pod.push(("volumes".to_string(), Doc::Seq(volumes)));

    let mut spec = vec![("backoffLimit".to_string(), Doc::from(args.backoff_limit))];
    if let Some(d) = args.deadline {
        spec.push(("activeDeadlineSeconds".to_string(), d.into()));
    }
    spec.push(("ttlSecondsAfterFinished".to_string(), args.ttl.into()));
    spec.push((
        "template".to_string(),
        Doc::map([
            ("metadata", Doc::map([("labels", labels)])),
            ("spec", Doc::Map(pod)),
        ]),
    ));

    Ok(Doc::map([
        ("apiVersion", "batch/v1".into()),
        ("kind", "Job".into()),
        ("metadata", Doc::Map(metadata)),
        ("spec", Doc::Map(spec)),
    ]))
}

/// A volume: its name, then its source (`kind`: `emptyDir`, `secret`, …).
fn volume(name: &str, kind: &str, source: Doc) -> Doc {
    Doc::map([("name", name.into()), (kind, source)])
}

/// A volume mount.
fn mount(name: &str, path: &str, read_only: bool) -> Doc {
    let mut m = vec![
        ("name".to_string(), Doc::from(name)),
        ("mountPath".to_string(), path.into()),
    ];
    if read_only {
        m.push(("readOnly".to_string(), true.into()));
    }
    Doc::Map(m)
}

#[cfg(test)]
mod tests;
