//! What a stage starts from: `scratch`, an image (resolved through the caller's
//! [`crate::ImageResolver`], pinned to its digest), an earlier stage, or a named context
//! (`lower/context.rs`).

use crate::config::ImageConfig;
use crate::error::ErrorKind;
use crate::lint;
use crate::lower::dispatch::{Lowerer, Res};
use crate::lower::graph::Out;
use crate::lower::naming::prefix_command;
use crate::lower::source::{image_op, metadata};
use crate::lower::state::{StageState, empty_image};
use crate::platform::Platform;
use crate::reference::normalize_image_ref;
use crate::stages::{Base, StageGraph};

impl Lowerer<'_> {
    /// Creates a stage's state from its base (image, scratch, earlier stage or named context).
    pub(crate) fn init_stage(
        &mut self,
        sg: &StageGraph,
        i: usize,
        total: usize,
    ) -> Res<StageState> {
        let info = &sg.stages[i];
        let loc = Some(info.location);
        let platform = info
            .platform
            .clone()
            .unwrap_or_else(|| self.opts.platform.clone());
        let mut st = match &info.base {
            Base::Scratch => {
                StageState::new(&info.display, platform.clone(), empty_image(&platform))
            }
            Base::Stage(b) => {
                let base = self.states[*b]
                    .clone()
                    .ok_or((loc, ErrorKind::CircularDependency(info.display.clone())))?;
                let mut st = base;
                st.display = info.display.clone();
                st.cmd_index = 0;
                st.cmd_set = false;
                st.cmd_at = None;
                st.entrypoint_at = None;
                st.healthcheck_at = None;
                st.image.config.on_build.clear();
                st
            }
            Base::Context {
                key,
                replaces_stage,
            } => self.context_stage(sg, i, key, *replaces_stage, platform)?,
            Base::Image(name) => {
                let (image, pinned) = self.resolve_image(name, &platform).map_err(|e| {
                    (
                        loc,
                        match e {
                            ErrorKind::Resolve { message, .. } if info.source.is_none() => {
                                ErrorKind::UnknownFromSource {
                                    from: name.clone(),
                                    known: stage_names(sg),
                                    message,
                                }
                            }
                            e => e,
                        },
                    )
                })?;
                let is_scratch =
                    image.rootfs.diff_ids.is_empty() && image.history.iter().all(|h| h.empty_layer);
                if !is_scratch
                    && let Some(w) =
                        lint::base_image_platform(name, &platform, &image, info.location)
                {
                    self.warnings.push(w);
                }
                let mut st = StageState::new(&info.display, platform.clone(), image);
                if !is_scratch {
                    st.cmd_total = total;
                    let name = prefix_command(&mut st, &format!("FROM {pinned}"));
                    let command = info.source.map(|_| info.original.clone());
                    let (op, cap_list) = image_op(&pinned, &platform, self.opts.image_resolve_mode);
                    let md = metadata(&name, command.as_deref(), &cap_list);
                    let node = self.graph.add(op, Vec::new(), md, Some(info.location));
                    st.root = Some(Out { node, index: 0 });
                }
                st
            }
        };
        st.cmd_total = total;
        st.created = self.epoch.map(crate::config::format_rfc3339);
        // BuildKit's `IsNoCache(stage name)`, for the Dockerfile's own stages.
        st.ignore_cache = info.source.is_some()
            && self
                .opts
                .no_cache
                .applies_to(info.name.as_deref().unwrap_or_default());
        Ok(st)
    }

    /// Resolves the image `name` for `platform`: its config (creation time and triggers
    /// cleared: the triggers run in the stage, see `onbuild`) and the normalized reference
    /// pinned to the resolved digest.
    pub(crate) fn resolve_image(
        &self,
        name: &str,
        platform: &Platform,
    ) -> Result<(ImageConfig, String), ErrorKind> {
        let normalized = normalize_image_ref(name).map_err(|e| ErrorKind::BadReference {
            reference: e.reference,
            reason: e.reason,
        })?;
        let resolved = self
            .resolver
            .resolve_image_config(&normalized, platform)
            .map_err(|message| ErrorKind::Resolve {
                reference: normalized.clone(),
                message,
            })?;
        let mut image: ImageConfig =
            serde_json::from_slice(&resolved.config).map_err(|e| ErrorKind::BadImageConfig {
                reference: normalized.clone(),
                message: e.to_string(),
            })?;
        image.created = None;
        image.config.on_build.clear();
        let pinned = if normalized.contains('@') || resolved.digest.is_empty() {
            normalized
        } else {
            format!("{normalized}@{}", resolved.digest)
        };
        Ok((image, pinned))
    }
}

/// The stage names there are, for errors.
fn stage_names(sg: &StageGraph) -> String {
    let known: Vec<&str> = sg.stages.iter().filter_map(|s| s.name.as_deref()).collect();
    if known.is_empty() {
        "none named".to_owned()
    } else {
        known.join(", ")
    }
}
