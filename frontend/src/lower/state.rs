//! The state of one stage while it is lowered: its current root filesystem, the LLB-side
//! environment (ENV and ARG values, in BuildKit's order), working dir, user, and image config.

use crate::config::{History, ImageConfig, RootFs};
use crate::error::Location;
use crate::lower::graph::Out;
use crate::platform::Platform;
use crate::shell::EnvList;

/// `PATH` BuildKit sets when the image has none (Linux).
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `comment` of the history entries we add.
pub(crate) const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

#[derive(Debug, Clone)]
pub(crate) struct StageState {
    /// Stage name in progress output (empty when the Dockerfile has one stage).
    pub display: String,
    /// The current root filesystem; `None` = scratch.
    pub root: Option<Out>,
    /// Variables visible to RUN and to expansion (ENV + ARG).
    pub env: EnvList,
    /// Working directory of RUN and relative COPY destinations.
    pub cwd: String,
    /// User of RUN (empty = image default).
    pub user: String,
    /// The stage's platform.
    pub platform: Platform,
    /// The image config being built.
    pub image: ImageConfig,
    /// Number of instructions that make ops (for `[i/n]`).
    pub cmd_total: usize,
    /// How many of them have been named.
    pub cmd_index: usize,
    /// ARGs declared in the stage (and its base stages), for RUN history.
    pub build_args: Vec<(String, Option<String>)>,
    /// CMD was set in this stage.
    pub cmd_set: bool,
    /// WORKDIR was used in this stage.
    pub workdir_set: bool,
    /// SOURCE_DATE_EPOCH, as RFC 3339, for history entries.
    pub created: Option<String>,
    /// Where this stage last set CMD, ENTRYPOINT and HEALTHCHECK (MultipleInstructionsDisallowed).
    pub cmd_at: Option<Location>,
    pub entrypoint_at: Option<Location>,
    pub healthcheck_at: Option<Location>,
    /// The instruction being lowered is an ONBUILD trigger of the base (progress names say so).
    pub in_trigger: bool,
    /// The stage's RUNs skip the cache (`no-cache`; `OpMetadata.ignore_cache`).
    pub ignore_cache: bool,
}

impl StageState {
    /// A stage starting from `image` on `platform`.
    pub(crate) fn new(display: &str, platform: Platform, image: ImageConfig) -> Self {
        Self {
            display: display.to_owned(),
            root: None,
            env: EnvList::new(),
            cwd: "/".into(),
            user: String::new(),
            platform,
            image,
            cmd_total: 0,
            cmd_index: 0,
            build_args: Vec::new(),
            cmd_set: false,
            workdir_set: false,
            created: None,
            cmd_at: None,
            entrypoint_at: None,
            healthcheck_at: None,
            in_trigger: false,
            ignore_cache: false,
        }
    }

    /// Appends a history entry.
    pub(crate) fn commit(&mut self, created_by: String, with_layer: bool, from_op: bool) {
        let created_by = if from_op {
            format!("{created_by} # buildkit")
        } else {
            created_by
        };
        self.image.history.push(History {
            created: self.created.clone(),
            created_by,
            author: String::new(),
            comment: HISTORY_COMMENT.into(),
            empty_layer: !with_layer,
        });
    }

    /// Sets a variable in the image config env, replacing an existing key in place.
    pub(crate) fn add_image_env(&mut self, k: &str, v: &str) {
        let entry = format!("{k}={v}");
        for e in &mut self.image.config.env {
            if e.split_once('=').map_or(e.as_str(), |(ek, _)| ek) == k {
                *e = entry;
                return;
            }
        }
        self.image.config.env.push(entry);
    }

    #[cfg(test)]
    pub(crate) fn for_test(display: &str, total: usize) -> Self {
        let mut s = Self::new(
            display,
            Platform::new("linux", "amd64", None),
            ImageConfig::default(),
        );
        s.cmd_total = total;
        s
    }
}

/// The config of `FROM scratch`.
pub(crate) fn empty_image(platform: &Platform) -> ImageConfig {
    let mut img = ImageConfig {
        architecture: platform.architecture.clone(),
        os: platform.os.clone(),
        variant: platform.variant.clone().unwrap_or_default(),
        rootfs: RootFs::default(),
        ..Default::default()
    };
    img.config.working_dir = "/".into();
    if platform.os != "windows" {
        img.config.env = vec![format!("PATH={DEFAULT_PATH}")];
    }
    img
}
