//! Stages that start from a named context (`context:NAME`), as BuildKit's
//! `dockerui/namedcontext.go` (`NamedContext.Load`) and `convert.go` (`resolveBaseImage`) make
//! them. A context replacing a `FROM` (or read by `--from`) gets the stage's platform and, when
//! it has no image config (local, git, http, `scratch`), the config of `FROM scratch`. A context
//! replacing a whole stage keeps the image's config and platform as they are, or an empty config.
//!
//! The ops follow Go's `llb`: images named `[context NAME] REF` (pinned to the digest the
//! resolver gives, as our FROMs are; BuildKit leaves a tag unpinned there) without a resolve
//! mode; `local://` sources named `[context NAME] load from client` with the shared-key hint
//! `context:NAME-<shared key>` and the paths the build reads as followpaths; git sources as
//! `ADD` makes them; http downloads saved as `context`; frontend inputs (`input:NAME`) copied
//! into the definition as they came, with the image config of `input-metadata:NAME` if any.
//! None has a source location.

use std::collections::BTreeMap;

use memobuild_proto::{attr, caps, pb};

use crate::config::ImageConfig;
use crate::error::ErrorKind;
use crate::lower::dispatch::{Lowerer, Res, follow_paths};
use crate::lower::git::{git_op, parse_git_ref};
use crate::lower::graph::{NodeId, Out};
use crate::lower::source::{LocalSource, image_op, local_op, metadata};
use crate::lower::state::{StageState, empty_image};
use crate::named_context::NamedContext;
use crate::options::ImageResolveMode;
use crate::platform::Platform;
use crate::stages::StageGraph;

/// A `local:` context whose op waits for the paths the build reads from it.
#[derive(Debug, Clone)]
pub(crate) struct PendingLocal {
    /// The placeholder vertex.
    node: NodeId,
    /// The stage it starts (the key of its chain in [`Lowerer::paths`]).
    stage: usize,
    /// The named context's key (`NAME` or `NAME::platform`).
    key: String,
    name: String,
    shared_key: String,
    excludes: Vec<String>,
}

impl Lowerer<'_> {
    /// The state of stage `i`, based on (or, with `replaces_stage`, replaced by) the named
    /// context `key`; `platform` is the stage's.
    pub(crate) fn context_stage(
        &mut self,
        sg: &StageGraph,
        i: usize,
        key: &str,
        replaces_stage: bool,
        platform: Platform,
    ) -> Res<StageState> {
        let info = &sg.stages[i];
        let wrap = |cause: ErrorKind| {
            (
                Some(info.location),
                ErrorKind::NamedContext {
                    name: key.to_owned(),
                    cause: Box::new(cause),
                },
            )
        };
        let Some(context) = self.opts.named_contexts.get(key).cloned() else {
            return Err(wrap(ErrorKind::BadArguments(
                "the named context is not in the options".into(),
            )));
        };
        let (root, image): (Option<Out>, Option<ImageConfig>) = match context {
            NamedContext::Image { reference } if reference == "scratch" => (None, None),
            NamedContext::Image { reference } => {
                let (image, pinned) = self.resolve_image(&reference, &platform).map_err(wrap)?;
                let (op, cap_list) = image_op(&pinned, &platform, ImageResolveMode::Default);
                let md = metadata(&format!("[context {key}] {reference}"), None, &cap_list);
                let node = self.graph.add(op, Vec::new(), md, None);
                (Some(Out { node, index: 0 }), Some(image))
            }
            NamedContext::Local {
                name,
                shared_key,
                excludes,
            } => {
                let node = self.graph.add(
                    pb::Op::default(),
                    Vec::new(),
                    pb::OpMetadata::default(),
                    None,
                );
                self.named_locals.push(PendingLocal {
                    node,
                    stage: i,
                    key: key.to_owned(),
                    name,
                    shared_key,
                    excludes,
                });
                (Some(Out { node, index: 0 }), None)
            }
            NamedContext::Git { url } => {
                let g = parse_git_ref(&url).ok_or_else(|| {
                    wrap(ErrorKind::BadArguments(format!(
                        "`{url}` is not a git repository URL"
                    )))
                })?;
                let (op, cap_list) = git_op(&g, false);
                let md = metadata(
                    &format!("[internal] load git source {url}"),
                    None,
                    &cap_list,
                );
                let node = self.graph.add(op, Vec::new(), md, None);
                (Some(Out { node, index: 0 }), None)
            }
            NamedContext::Http { url } => {
                let op = pb::Op {
                    op: Some(pb::op::Op::Source(pb::SourceOp {
                        identifier: url.clone(),
                        attrs: BTreeMap::from([(
                            attr::ATTR_HTTP_FILENAME.to_owned(),
                            "context".to_owned(),
                        )]),
                    })),
                    platform: None,
                    constraints: Some(pb::WorkerConstraints::default()),
                    ..Default::default()
                };
                let md = metadata(
                    &format!("[context {key}] {url}"),
                    None,
                    &[caps::CAP_SOURCE_HTTP],
                );
                let node = self.graph.add(op, Vec::new(), md, None);
                (Some(Out { node, index: 0 }), None)
            }
            NamedContext::Input { name } => {
                let def = self.opts.inputs.get(&name).ok_or_else(|| {
                    wrap(ErrorKind::BadArguments(format!(
                        "invalid input `{name}`: the request carries no frontend input of that name"
                    )))
                })?;
                let root = self.graph.add_definition(def).map_err(|e| {
                    wrap(ErrorKind::BadArguments(format!(
                        "frontend input `{name}`: {e}"
                    )))
                })?;
                (root, self.opts.input_configs.get(&name).cloned())
            }
        };
        let mut st = if replaces_stage {
            // BuildKit takes the platform from the image config when it names one.
            let platform = image
                .as_ref()
                .filter(|c| !c.os.is_empty() && !c.architecture.is_empty())
                .map_or(platform, |c| {
                    Platform::new(&c.os, &c.architecture, Some(&c.variant))
                });
            StageState::new(&info.display, platform, image.unwrap_or_default())
        } else {
            let image = image.unwrap_or_else(|| empty_image(&platform));
            StageState::new(&info.display, platform, image)
        };
        st.root = root;
        Ok(st)
    }

    /// Completes the `local:` contexts' ops with the paths read from their stages.
    pub(crate) fn complete_named_locals(&mut self) {
        for l in std::mem::take(&mut self.named_locals) {
            let follow = self
                .paths
                .get(&l.stage)
                .map(follow_paths)
                .unwrap_or_default();
            let (op, md) = local_op(&LocalSource {
                name: &l.name,
                session: self.opts.session_for(&l.name),
                excludes: &l.excludes,
                follow_paths: &follow,
                shared_key_hint: &format!("context:{}-{}", l.key, l.shared_key),
                custom_name: &format!("[context {}] load from client", l.key),
            });
            self.graph.replace(l.node, op, md);
        }
    }
}
