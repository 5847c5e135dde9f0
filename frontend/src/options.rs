//! What a build needs besides the Dockerfile: [`BuildOptions`] and the option types BuildKit's
//! `dockerfile.v0` frontend takes as frontend attributes (`dockerui/config.go`). Everything
//! defaults to "off", so `BuildOptions { target: …, ..BuildOptions::new(platform) }` builds what
//! plain `docker build` would. [`BuildOptions::from_frontend_attrs`] (in `attrs.rs`) reads the
//! attribute map `buildctl --opt` and `docker buildx build` send.

use std::collections::BTreeMap;

use memobuild_proto::{attr, pb};

use crate::config::ImageConfig;
use crate::named_context::{ContextError, NamedContext};
use crate::platform::Platform;

/// What a build needs besides the Dockerfile.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildOptions {
    /// The Dockerfile's name, used in error messages and the source map (e.g. `Dockerfile`).
    pub dockerfile_name: String,
    /// The stage to build; the last stage if `None`.
    pub target: Option<String>,
    /// `--build-arg` values.
    pub build_args: BTreeMap<String, String>,
    /// Target platform, also used as the build platform.
    pub platform: Platform,
    /// Name of the build context local source (`local://<name>`), usually `context`.
    pub context_name: String,
    /// Session that serves the context, if any (`local.session`).
    pub session_id: Option<String>,
    /// The main context as a URL (the `context` attribute, or the one `contextkey` names): a
    /// git repository, an `http(s)://` download, or buildx's stdin upload. The caller fetches
    /// it and serves it as the local [`BuildOptions::context_name`]; lowering is unchanged.
    pub context_url: Option<String>,
    /// Sessions serving particular locals instead of [`BuildOptions::session_id`], by local
    /// name (`local-sessionid:NAME` attrs: a client whose directories live in another session).
    pub local_sessions: BTreeMap<String, String>,
    /// `.dockerignore` exclude patterns, already read by the caller.
    pub dockerignore: Vec<String>,
    /// Labels added to the target image's `config.Labels` after the Dockerfile's `LABEL`s,
    /// replacing the same keys (`label:KEY` attrs, `docker build --label`).
    pub labels: BTreeMap<String, String>,
    /// Named contexts (`context:NAME` attrs, `buildx build --build-context NAME=…`), keyed by
    /// `NAME` or `NAME::os/arch[/variant]` (tried first, for the stage's platform). A stage
    /// named `NAME` is replaced by the context; `FROM NAME`, `COPY --from=NAME` and
    /// `RUN --mount=from=NAME` that name no stage use it instead of the image `NAME`, where an
    /// image is looked up by its short name (`docker.io/library/alpine:latest` → `alpine`).
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// `/etc/hosts` entries (host, IP) of every `RUN` (`add-hosts`, `--add-host`).
    pub extra_hosts: Vec<(String, String)>,
    /// Stages whose `RUN`s skip the cache (`no-cache`, `--no-cache`, `--no-cache-filter`).
    pub no_cache: NoCache,
    /// How the daemon picks a base image: `image.resolvemode` of FROM and `--from` images. The
    /// caller's [`crate::ImageResolver`] should honour it too (the frontend passes no mode).
    pub image_resolve_mode: ImageResolveMode,
    /// Network of `RUN`s without `--network=none|host` (`force-network-mode`, `--network`).
    pub network_mode: NetworkMode,
    /// Frontend inputs: definitions the client solved before and hands to this build
    /// (`SolveRequest.FrontendInputs`), which `input:NAME` named contexts use. The caller
    /// fills them in; attributes never carry them.
    pub inputs: BTreeMap<String, pb::Definition>,
    /// The image configs of frontend inputs, by input name: `containerimage.config` of the
    /// `input-metadata:NAME` attrs (buildx sends the config of the target an input was built
    /// from).
    pub input_configs: BTreeMap<String, ImageConfig>,
}

impl BuildOptions {
    /// Defaults: `Dockerfile`, last stage, no build args, context `context`, no session, and
    /// every BuildKit option off (no labels or named contexts, cache on, sandbox network).
    pub fn new(platform: Platform) -> Self {
        Self {
            dockerfile_name: "Dockerfile".into(),
            target: None,
            build_args: BTreeMap::new(),
            platform,
            context_name: "context".into(),
            session_id: None,
            context_url: None,
            local_sessions: BTreeMap::new(),
            dockerignore: Vec::new(),
            labels: BTreeMap::new(),
            named_contexts: BTreeMap::new(),
            extra_hosts: Vec::new(),
            no_cache: NoCache::Off,
            image_resolve_mode: ImageResolveMode::Default,
            network_mode: NetworkMode::Sandbox,
            inputs: BTreeMap::new(),
            input_configs: BTreeMap::new(),
        }
    }
}

impl BuildOptions {
    /// The session serving the local `name`: its `local-sessionid:` entry, else the build's.
    pub fn session_for(&self, name: &str) -> Option<&str> {
        self.local_sessions
            .get(name)
            .or(self.session_id.as_ref())
            .map(String::as_str)
    }
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self::new(Platform::host())
    }
}

/// Which stages' `RUN`s ignore the cache (`OpMetadata.ignore_cache`), as BuildKit's
/// `IsNoCache`: only `RUN` ops are marked; what they feed gets new keys by itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NoCache {
    /// The cache is used (no `no-cache` attr).
    #[default]
    Off,
    /// Every stage (`no-cache` with an empty value).
    All,
    /// The stages with these names, compared case-insensitively (`no-cache=a,b`). A stage
    /// without `AS name` has the empty name.
    Stages(Vec<String>),
}

impl NoCache {
    /// Whether the stage named `stage` (empty for none) skips the cache.
    pub fn applies_to(&self, stage: &str) -> bool {
        match self {
            NoCache::Off => false,
            NoCache::All => true,
            NoCache::Stages(names) => names.iter().any(|n| n.eq_ignore_ascii_case(stage)),
        }
    }
}

/// `image-resolve-mode`: how the daemon finds a base image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImageResolveMode {
    /// Use a local copy of the tag if there is one, else pull. No attr is written.
    #[default]
    Default,
    /// Always ask the registry (`docker build --pull`).
    Pull,
    /// Prefer an image the daemon has locally.
    Local,
}

impl ImageResolveMode {
    /// Parses BuildKit's values (`default` or empty, `pull`, `local`).
    pub fn parse(s: &str) -> Result<Self, OptionsError> {
        match s {
            "" | attr::IMAGE_RESOLVEMODE_DEFAULT => Ok(Self::Default),
            attr::IMAGE_RESOLVEMODE_PULL => Ok(Self::Pull),
            attr::IMAGE_RESOLVEMODE_LOCAL => Ok(Self::Local),
            other => Err(OptionsError::BadResolveMode(other.to_owned())),
        }
    }

    /// The `image.resolvemode` attr value, `None` for the default (Go's `llb.Image` writes the
    /// attr only for a non-default mode).
    pub(crate) fn attr(self) -> Option<&'static str> {
        match self {
            Self::Default => None,
            Self::Pull => Some(attr::IMAGE_RESOLVEMODE_PULL),
            Self::Local => Some(attr::IMAGE_RESOLVEMODE_LOCAL),
        }
    }
}

/// `force-network-mode`: the network `RUN`s get by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// The daemon's sandbox network (`NetMode` unset).
    #[default]
    Sandbox,
    /// No network.
    None,
    /// The host's network (needs the `network.host` entitlement).
    Host,
}

impl NetworkMode {
    /// Parses BuildKit's values: empty or `sandbox` (also `default`, buildx's spelling), `none`,
    /// `host`.
    pub fn parse(s: &str) -> Result<Self, OptionsError> {
        match s {
            "" | "sandbox" | "default" => Ok(Self::Sandbox),
            "none" => Ok(Self::None),
            "host" => Ok(Self::Host),
            other => Err(OptionsError::BadNetworkMode(other.to_owned())),
        }
    }

    pub(crate) fn to_pb(self) -> pb::NetMode {
        match self {
            Self::Sandbox => pb::NetMode::Unset,
            Self::None => pb::NetMode::None,
            Self::Host => pb::NetMode::Host,
        }
    }
}

/// A frontend attribute or build option that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionsError {
    /// `platform` that is not `os/arch[/variant]`.
    #[error("invalid platform `{0}`: expected os/arch[/variant]")]
    BadPlatform(String),
    /// `platform` with a comma-separated list.
    #[error(
        "multi-platform builds are not supported yet: `platform={0}` names several platforms; build one platform at a time"
    )]
    MultiPlatform(String),
    /// `image-resolve-mode` other than `default`, `pull` or `local`.
    #[error("invalid image-resolve-mode `{0}`: expected default, pull or local")]
    BadResolveMode(String),
    /// `force-network-mode` other than `sandbox`, `none` or `host`.
    #[error("invalid force-network-mode `{0}`: expected sandbox, none or host")]
    BadNetworkMode(String),
    /// An `add-hosts` entry that is not `host=ip` (or `host:ip`) with a valid IP.
    #[error("invalid add-hosts entry `{entry}`: {reason}")]
    BadExtraHost {
        /// The entry as given.
        entry: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `context:NAME` attr (or [`BuildOptions::named_contexts`] entry) that cannot be used.
    #[error("named context `{name}`: {cause}")]
    NamedContext {
        /// `NAME` (or `NAME::platform`).
        name: String,
        /// What is wrong with its value.
        cause: ContextError,
    },
    /// An `input-metadata:NAME` attr that is not a JSON object of base64 values, or whose
    /// `containerimage.config` is no image config.
    #[error("invalid `input-metadata:{name}`: {reason}")]
    BadInputMetadata {
        /// The input's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The main context is a git repository, URL or frontend input, not the local `context`.
    #[error(
        "remote build contexts are not supported yet: `{key}={value}`; send the context as the local directory `context`"
    )]
    RemoteContext {
        /// The attr (`context`, or what `contextkey` names).
        key: String,
        /// Its value.
        value: String,
    },
}
