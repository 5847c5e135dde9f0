//! MemoBuild's Dockerfile frontend: parses a Dockerfile and lowers it to a BuildKit LLB
//! [`pb::Definition`] plus the OCI image config, the way BuildKit's `dockerfile2llb` does.
//!
//! The crate performs no I/O: base image configs come through an [`ImageResolver`] the caller
//! supplies, the `.dockerignore` patterns through [`BuildOptions::dockerignore`] (and those of a
//! `local:` named context through [`NamedContext::Local`]).
//!
//! The options BuildKit's `dockerfile.v0` frontend takes as frontend attributes (`label:*`,
//! `context:*`, `add-hosts`, `no-cache`, `image-resolve-mode`, `force-network-mode`, …) are
//! fields of [`BuildOptions`], all off by default; [`BuildOptions::from_frontend_attrs`] reads
//! them from the attribute map `buildctl --opt` and `docker buildx build` send.
//!
//! ```
//! use memobuild_frontend::{build, BuildOptions, ImageResolver, Platform, ResolvedImage};
//!
//! struct Fixed;
//! impl ImageResolver for Fixed {
//!     fn resolve_image_config(&self, _r: &str, _p: &Platform) -> Result<ResolvedImage, String> {
//!         Ok(ResolvedImage {
//!             digest: format!("sha256:{}", "a".repeat(64)),
//!             config: br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"]},"rootfs":{"type":"layers","diff_ids":["sha256:b"]}}"#.to_vec(),
//!         })
//!     }
//! }
//!
//! let opts = BuildOptions::new(Platform::new("linux", "amd64", None));
//! let out = build("FROM busybox\nRUN echo hi\n", &opts, &Fixed)?;
//! assert_eq!(out.definition.def.len(), 3); // image, exec, terminal
//! # Ok::<(), memobuild_frontend::FrontendError>(())
//! ```
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod attrs;
pub mod config;
mod error;
pub mod instructions;
mod lint;
mod lower;
mod named_context;
mod options;
pub mod parser;
mod platform;
mod reference;
pub mod shell;
mod stages;
pub mod subrequests;

use std::collections::BTreeMap;

pub use attrs::ParsedAttrs;
pub use error::{ErrorKind, FrontendError, Location, Warning};
pub use instructions::Dockerfile;
pub use lower::go_quote;
use memobuild_proto::pb;
pub use named_context::{ContextError, NamedContext};
pub use options::{BuildOptions, ImageResolveMode, NetworkMode, NoCache, OptionsError};
pub use platform::Platform;
pub use reference::{ReferenceError, normalize_image_ref};

use crate::lower::Lowerer;
use crate::shell::Lexer;

/// A base image's manifest digest and config, as the registry serves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The manifest digest (`sha256:…`) the image op is pinned to.
    pub digest: String,
    /// The image config JSON.
    pub config: Vec<u8>,
}

/// Looks up image configs; the frontend's only window to the outside.
pub trait ImageResolver {
    /// Resolves a normalized reference (`docker.io/library/busybox:latest`,
    /// `127.0.0.1:5000/library/busybox:latest`) for `platform`.
    fn resolve_image_config(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, String>;
}

/// The result of [`build`].
#[derive(Debug, Clone, PartialEq)]
pub struct Lowered {
    /// The LLB graph; its last op is the terminal. Empty (no ops) when the target stage is an
    /// empty filesystem (`FROM scratch` without file-changing instructions).
    pub definition: pb::Definition,
    /// The full OCI image config JSON of the target stage.
    pub image_config: Vec<u8>,
    /// Lint findings.
    pub warnings: Vec<Warning>,
}

/// Parses a Dockerfile into its AST; `name` is used in error messages. The warnings are the
/// lint findings of parsing alone (lowering adds more), filtered by the `# check=` directive.
pub fn parse(dockerfile: &str, name: &str) -> Result<(Dockerfile, Vec<Warning>), FrontendError> {
    let (df, warnings, check) = parse_unfiltered(dockerfile, name, None)?;
    let warnings = check
        .apply(warnings)
        .map_err(|k| FrontendError::global(name, k))?;
    Ok((df, warnings))
}

/// The name of the stage a build of `target` ends at: `target`, or the last stage's name
/// (empty when it has none).
pub(crate) fn target_name(df: &Dockerfile, target: Option<&str>) -> String {
    match target {
        Some(t) => t.to_owned(),
        None => df
            .stages
            .last()
            .and_then(|s| s.from.name.clone())
            .unwrap_or_default(),
    }
}

/// `check_arg` is the `BUILDKIT_DOCKERFILE_CHECK` build argument, if given.
pub(crate) fn parse_unfiltered(
    dockerfile: &str,
    name: &str,
    check_arg: Option<&str>,
) -> Result<(Dockerfile, Vec<Warning>, lint::CheckConfig), FrontendError> {
    // As BuildKit, the lint configuration is read (and a bad one reported) before parsing.
    let check = lint::check_config(dockerfile, check_arg).map_err(|(loc, kind)| FrontendError {
        file: name.to_owned(),
        location: loc,
        kind: Box::new(kind),
    })?;
    let file = parser::parse_lines(dockerfile)
        .map_err(|(loc, kind)| FrontendError::at(name, loc, kind))?;
    let mut warnings = file.warnings.clone();
    let df = instructions::parse_dockerfile(file, &mut warnings)
        .map_err(|(loc, kind)| FrontendError::at(name, loc, kind))?;
    if df.stages.is_empty() {
        return Err(FrontendError::global(name, ErrorKind::NoStages));
    }
    warnings.extend(lint::check_dockerfile(&df));
    Ok((df, warnings, check))
}

fn valid_build_arg_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

/// The `extra_hosts` option as ExecOp entries, IPs checked and written as BuildKit writes them.
fn extra_hosts(hosts: &[(String, String)]) -> Result<Vec<pb::HostIp>, OptionsError> {
    hosts
        .iter()
        .map(|(host, ip)| {
            attrs::extra_host(host, ip)
                .map(|(host, ip)| pb::HostIp { host, ip })
                .map_err(|reason| OptionsError::BadExtraHost {
                    entry: format!("{host}={ip}"),
                    reason,
                })
        })
        .collect()
}

/// Parses and lowers a Dockerfile.
pub fn build(
    dockerfile: &str,
    opts: &BuildOptions,
    resolver: &dyn ImageResolver,
) -> Result<Lowered, FrontendError> {
    let name = opts.dockerfile_name.as_str();
    let check_arg = opts
        .build_args
        .get("BUILDKIT_DOCKERFILE_CHECK")
        .map(String::as_str);
    let (df, mut warnings, check) = parse_unfiltered(dockerfile, name, check_arg)?;
    let resolver = lower::CachedResolver::new(resolver);
    let out = lower_parsed(df, opts, &resolver, &mut warnings)?;
    let warnings = check
        .apply(warnings)
        .map_err(|k| FrontendError::global(name, k))?;
    let definition = out.graph.marshal(out.root, name, dockerfile);
    Ok(Lowered {
        definition,
        image_config: out.image.to_json(),
        warnings,
    })
}

/// Lowers a parsed Dockerfile for `opts.target`, adding lint findings to `found` as they are
/// made (so that those made before an error are kept).
pub(crate) fn lower_parsed(
    df: Dockerfile,
    opts: &BuildOptions,
    resolver: &dyn ImageResolver,
    found: &mut Vec<Warning>,
) -> Result<lower::LowerOutput, FrontendError> {
    let name = opts.dockerfile_name.as_str();
    if let Some(bad) = opts.build_args.keys().find(|k| !valid_build_arg_name(k)) {
        return Err(FrontendError::global(
            name,
            ErrorKind::BadBuildArg(bad.clone()),
        ));
    }
    let err = |(loc, kind): (Option<Location>, ErrorKind)| FrontendError {
        file: name.to_owned(),
        location: loc,
        kind: Box::new(kind),
    };
    let lex = Lexer::new(df.escape);
    let target_name = target_name(&df, opts.target.as_deref());
    let defaults = stages::default_args(&opts.platform, &opts.build_args, &target_name);
    let global = stages::apply_meta_args(defaults, &df.meta_args, &opts.build_args, &lex)
        .map_err(|(l, k)| FrontendError::at(name, l, k))?;
    let defaults_only = stages::apply_meta_args(
        stages::default_args(&opts.platform, &BTreeMap::new(), &target_name),
        &df.meta_args,
        &BTreeMap::new(),
        &lex,
    )
    .ok();
    found.extend(lint::check_froms(
        &df,
        &lex,
        &global,
        defaults_only.as_ref(),
    ));
    let epoch = stages::source_date_epoch(&opts.build_args, &global);
    let mut df = df;
    let (graph, triggers) = lower::resolve_with_triggers(
        &mut df,
        &global,
        &lex,
        opts.target.as_deref(),
        stages::Contexts {
            named: &opts.named_contexts,
            platform: &opts.platform,
        },
        resolver,
    )
    .map_err(err)?;
    let mut lowerer = Lowerer::new(opts, resolver, lex, global, epoch);
    lowerer.extra_hosts =
        extra_hosts(&opts.extra_hosts).map_err(|e| FrontendError::global(name, e.into()))?;
    let mut out = lowerer.run(&df, &graph, &triggers).map_err(err)?;
    found.append(&mut out.warnings);
    Ok(out)
}

/// The definition of a client directory read by the frontend itself, as BuildKit's `dockerui`
/// reads the Dockerfile and `.dockerignore`: the local source `name` of `session`, only
/// `follow_paths` transferred, shown as `custom_name`.
pub fn local_files_definition(
    name: &str,
    session: Option<&str>,
    follow_paths: &[String],
    shared_key_hint: &str,
    custom_name: &str,
) -> pb::Definition {
    let (op, md) = lower::source::local_op(&lower::source::LocalSource {
        name,
        session,
        excludes: &[],
        follow_paths,
        shared_key_hint,
        custom_name,
    });
    let mut b = memobuild_proto::DefinitionBuilder::new();
    let digest = b.add_op_with_metadata(&op, md);
    b.finish(pb::Input::new(digest, 0))
}

/// The `# syntax=REF [ARGS]` directive of a Dockerfile, as BuildKit's `DetectSyntax` reads it
/// (after a byte-order mark and a `#!` line): the frontend image `REF` and the whole value
/// (the `cmdline` option of the forwarded request).
pub fn detect_syntax(dockerfile: &str) -> Option<(String, String)> {
    let text = dockerfile.strip_prefix('\u{feff}').unwrap_or(dockerfile);
    let mut lines = text.lines().peekable();
    if lines.peek().is_some_and(|l| l.starts_with("#!")) {
        lines.next();
    }
    let mut parser = parser::DirectiveParser::default();
    for line in lines {
        match parser.parse_line(line) {
            Ok(Some(d)) if d.name == "syntax" => {
                let cmdline = d.value.trim().to_owned();
                let reference = cmdline.split_whitespace().next()?.to_owned();
                return Some((reference, cmdline));
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
    None
}

#[cfg(test)]
mod syntax_tests {
    #[test]
    fn the_syntax_directive_names_the_frontend() {
        let d = super::detect_syntax;
        assert_eq!(
            d("# syntax=127.0.0.1:5000/memobuild/dockerfile:latest\nFROM a\n"),
            Some((
                "127.0.0.1:5000/memobuild/dockerfile:latest".into(),
                "127.0.0.1:5000/memobuild/dockerfile:latest".into()
            ))
        );
        assert_eq!(
            d(
                "#!/usr/bin/env x\n# check=skip=all\n#  syntax = docker/dockerfile:1 --flag\nFROM a\n"
            ),
            Some((
                "docker/dockerfile:1".into(),
                "docker/dockerfile:1 --flag".into()
            ))
        );
        assert_eq!(d("FROM a\n# syntax=x\n"), None);
        assert_eq!(d("# a comment\n# syntax=x\n"), None);
    }
}
