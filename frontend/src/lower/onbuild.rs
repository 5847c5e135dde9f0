//! ONBUILD triggers: a stage whose base is an image with `OnBuild` in its config, or an earlier
//! stage that declared `ONBUILD`, runs those triggers right after its `FROM`, as BuildKit's
//! `initOnBuildTriggers` does. Triggers are parsed as instructions placed at the `FROM` line and
//! prepended to the stage's commands; a trigger can read from other stages (`COPY --from`), so
//! stages are resolved again until no reachable stage gains triggers.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use crate::config::ImageConfig;
use crate::error::{ErrorKind, Location};
use crate::instructions::{Command, Dockerfile, Instruction, parse_command};
use crate::lower::dispatch::LowerError;
use crate::named_context::NamedContext;
use crate::parser::parse_lines;
use crate::platform::Platform;
use crate::reference::normalize_image_ref;
use crate::shell::{EnvList, Lexer};
use crate::stages::{self, Base, Contexts, StageGraph};
use crate::{ImageResolver, ResolvedImage};

/// Asks the inner resolver once per (reference, platform): triggers are looked up before
/// lowering, which resolves the same images again.
pub(crate) struct CachedResolver<'a> {
    inner: &'a dyn ImageResolver,
    cache: RefCell<BTreeMap<(String, Platform), Result<ResolvedImage, String>>>,
}

impl<'a> CachedResolver<'a> {
    pub(crate) fn new(inner: &'a dyn ImageResolver) -> Self {
        Self {
            inner,
            cache: RefCell::new(BTreeMap::new()),
        }
    }
}

impl ImageResolver for CachedResolver<'_> {
    fn resolve_image_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, String> {
        let key = (reference.to_owned(), platform.clone());
        if let Some(v) = self.cache.borrow().get(&key) {
            return v.clone();
        }
        let v = self.inner.resolve_image_config(reference, platform);
        self.cache.borrow_mut().insert(key, v.clone());
        v
    }
}

/// The triggers prepended to one stage.
#[derive(Debug, Clone, Default)]
pub(crate) struct StageTriggers {
    /// How many of the stage's first commands are triggers.
    pub count: usize,
    /// Where they come from, for errors: ``image `busybox` `` or ``stage `base` ``.
    pub origin: String,
}

/// Resolves the stage graph with every reachable stage's inherited triggers in place.
pub(crate) fn resolve_with_triggers(
    df: &mut Dockerfile,
    global: &EnvList,
    lex: &Lexer,
    target: Option<&str>,
    contexts: Contexts<'_>,
    resolver: &dyn ImageResolver,
) -> Result<(StageGraph, BTreeMap<usize, StageTriggers>), LowerError> {
    let default_platform = contexts.platform;
    let mut done: BTreeSet<usize> = BTreeSet::new();
    let mut out: BTreeMap<usize, StageTriggers> = BTreeMap::new();
    loop {
        let sg = stages::resolve(df, global, lex, target, contexts)?;
        let mut changed = false;
        for &i in &sg.reachable {
            let info = &sg.stages[i];
            let Some(src) = info.source else { continue };
            if !done.insert(src) {
                continue;
            }
            let (exprs, origin) = match &info.base {
                Base::Scratch => continue,
                Base::Stage(b) => {
                    let Some(base) = sg.stages[*b].source.and_then(|s| df.stages.get(s)) else {
                        continue;
                    };
                    let exprs: Vec<String> = base
                        .commands
                        .iter()
                        .filter_map(|c| match &c.command {
                            Command::Onbuild(e) => Some(e.clone()),
                            _ => None,
                        })
                        .collect();
                    (exprs, format!("stage `{}`", sg.stages[*b].display))
                }
                Base::Image(name) => {
                    let platform = info.platform.as_ref().unwrap_or(default_platform);
                    (
                        image_triggers(resolver, name, platform),
                        format!("image `{name}`"),
                    )
                }
                // A replaced stage runs none of its instructions, triggers included.
                Base::Context {
                    replaces_stage: true,
                    ..
                } => continue,
                // An image context's triggers run, as a base image's do.
                Base::Context { key, .. } => match contexts.named.get(key) {
                    Some(NamedContext::Image { reference }) if reference != "scratch" => {
                        let platform = info.platform.as_ref().unwrap_or(default_platform);
                        (
                            image_triggers(resolver, reference, platform),
                            format!("image `{reference}` (named context `{key}`)"),
                        )
                    }
                    _ => continue,
                },
            };
            if exprs.is_empty() {
                continue;
            }
            let mut cmds = Vec::with_capacity(exprs.len());
            for e in &exprs {
                let ins = parse_trigger(e, info.location).map_err(|cause| {
                    (
                        Some(info.location),
                        ErrorKind::OnbuildTrigger {
                            trigger: e.clone(),
                            origin: origin.clone(),
                            cause: Box::new(cause),
                        },
                    )
                })?;
                cmds.push(ins);
            }
            let stage = &mut df.stages[src];
            let count = cmds.len();
            cmds.append(&mut stage.commands);
            stage.commands = cmds;
            out.insert(src, StageTriggers { count, origin });
            changed = true;
        }
        if !changed {
            return Ok((sg, out));
        }
    }
}

/// The `OnBuild` list of an image's config; empty when it cannot be resolved (lowering reports
/// that failure at the `FROM`).
fn image_triggers(resolver: &dyn ImageResolver, name: &str, platform: &Platform) -> Vec<String> {
    let Ok(normalized) = normalize_image_ref(name) else {
        return Vec::new();
    };
    let Ok(resolved) = resolver.resolve_image_config(&normalized, platform) else {
        return Vec::new();
    };
    serde_json::from_slice::<ImageConfig>(&resolved.config)
        .map(|c| c.config.on_build)
        .unwrap_or_default()
}

/// One trigger as an instruction located at the stage's `FROM`.
fn parse_trigger(expr: &str, at: Location) -> Result<Instruction, ErrorKind> {
    let file = parse_lines(expr).map_err(|(_, e)| e)?;
    let [node] = file.nodes.as_slice() else {
        return Err(ErrorKind::BadArguments(
            "an ONBUILD trigger must be a single instruction".into(),
        ));
    };
    // BuildKit parses triggers without its linter: their findings belong to the base.
    let mut ignored = Vec::new();
    let mut ins = parse_command(node, file.escape, &mut ignored)?;
    if matches!(ins.command, Command::From(_) | Command::Onbuild(_)) {
        return Err(ErrorKind::BadArguments(format!(
            "`{}` isn't allowed as an `ONBUILD` trigger",
            node.keyword.to_ascii_uppercase()
        )));
    }
    ins.location = at;
    ins.comments.clear();
    Ok(ins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_parse_at_the_from_line() {
        let at = Location::new(3, 1, 3);
        let ins = parse_trigger("RUN echo hi", at).expect("parses");
        assert_eq!(ins.location, at);
        assert!(matches!(ins.command, Command::Run(_)));
        let e = parse_trigger("FROM busybox", at).expect_err("from");
        assert_eq!(
            e.to_string(),
            "`FROM` isn't allowed as an `ONBUILD` trigger"
        );
        let e = parse_trigger("COPY --bogus a b", at).expect_err("flag");
        assert!(e.to_string().starts_with("unknown flag: --bogus"), "{e}");
    }
}
