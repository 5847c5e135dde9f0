//! The build pipeline that `memobuild build` and the daemon share: a Dockerfile lowered by the
//! frontend, the Definition solved on a [`Build`], the build's history recorded (what
//! `--explain` and `memobuild why` read), and the result written by each exporter to its sink.
//!
//! Each step takes typed options, never flags or protocol messages: the CLI fills them from
//! its arguments and the host, the daemon from a BuildKit request and the client's session.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use memobuild_frontend as frontend;
use memobuild_proto::{ParsedDefinition, pb};
use memobuild_worker::Build;
use memobuild_worker::cache::history::History;
use memobuild_worker::export::attestation::Provenance;
use memobuild_worker::export::exporter::Exporter;
use memobuild_worker::export::sink::ExportSink;
use memobuild_worker::export::spec::ExporterSpec;
use memobuild_worker::progress::{Progress, ProgressEvent, VertexState};
use memobuild_worker::registry::{Registry, ResolveMode};
use memobuild_worker::solver::{FsRef, SolveOptions, SolveResult};

/// Lets the frontend (which does no I/O) resolve base images through the worker's registry
/// client. Lowering runs on a blocking thread, so blocking on the runtime here is fine.
struct Resolver {
    registry: Arc<Registry>,
    handle: tokio::runtime::Handle,
    mode: ResolveMode,
    /// Where each look-up is shown as `[internal] load metadata for REF`, as BuildKit's
    /// frontend shows its `ResolveImageConfig` calls (the daemon's builds).
    progress: Option<Progress>,
}

impl frontend::ImageResolver for Resolver {
    fn resolve_image_config(
        &self,
        reference: &str,
        platform: &frontend::Platform,
    ) -> Result<frontend::ResolvedImage, String> {
        let p = pb_platform(platform);
        let name = format!("[internal] load metadata for {reference}");
        let step = format!(
            "sha256:{}",
            blake3::hash(format!("{name}\0{platform}").as_bytes()).to_hex()
        );
        let started = std::time::Instant::now();
        if let Some(progress) = &self.progress {
            progress.step(&step, &name, VertexState::Started, None, None);
        }
        let resolved = self
            .handle
            .block_on(memobuild_worker::resolve_image_config(
                &self.registry,
                reference,
                &p,
                self.mode,
            ))
            .map_err(|e| e.to_string());
        if let Some(progress) = &self.progress {
            let (state, error) = match &resolved {
                Ok(_) => (VertexState::Completed, None),
                Err(e) => (VertexState::Error, Some(e.clone())),
            };
            progress.step(&step, &name, state, Some(started.elapsed()), error);
        }
        let (digest, config) = resolved?;
        Ok(frontend::ResolvedImage { digest, config })
    }
}

/// The LLB platform of a frontend platform.
pub fn pb_platform(p: &frontend::Platform) -> pb::Platform {
    pb::Platform {
        architecture: p.architecture.clone(),
        os: p.os.clone(),
        variant: p.variant.clone().unwrap_or_default(),
        ..Default::default()
    }
}

/// Lowers `dockerfile` with `opts`, resolving base images through `registry`; each look-up
/// is a step of `progress` when given.
pub async fn lower(
    registry: &Arc<Registry>,
    dockerfile: &str,
    opts: frontend::BuildOptions,
    progress: Option<&Progress>,
) -> anyhow::Result<frontend::Lowered> {
    let resolver = Resolver {
        registry: registry.clone(),
        handle: tokio::runtime::Handle::current(),
        mode: resolve_mode(opts.image_resolve_mode),
        progress: progress.cloned(),
    };
    lower_with(resolver, dockerfile, opts).await
}

/// Lowers `dockerfile` with `opts`, resolving base images through `resolver` (called on a
/// blocking thread, where it may block on the runtime).
pub async fn lower_with<R: frontend::ImageResolver + Send + 'static>(
    resolver: R,
    dockerfile: &str,
    opts: frontend::BuildOptions,
) -> anyhow::Result<frontend::Lowered> {
    let dockerfile = dockerfile.to_owned();
    let lowered =
        tokio::task::spawn_blocking(move || frontend::build(&dockerfile, &opts, &resolver))
            .await
            .context("frontend task failed")??;
    Ok(lowered)
}

/// Answers the frontend subrequest `request_id` (`frontend.outline`, `frontend.targets`,
/// `frontend.lint`, …) for `dockerfile`: the result's metadata, or `None` for a request the
/// frontend does not know. Image look-ups (a lint lowers every stage) are steps of
/// `progress`.
pub async fn subrequest(
    registry: &Arc<Registry>,
    request_id: &str,
    dockerfile: &str,
    opts: frontend::BuildOptions,
    progress: Option<&Progress>,
) -> anyhow::Result<Option<BTreeMap<String, Vec<u8>>>> {
    let resolver = Resolver {
        registry: registry.clone(),
        handle: tokio::runtime::Handle::current(),
        mode: resolve_mode(opts.image_resolve_mode),
        progress: progress.cloned(),
    };
    subrequest_with(resolver, request_id, dockerfile, opts).await
}

/// [`subrequest`] resolving base images through `resolver`.
pub async fn subrequest_with<R: frontend::ImageResolver + Send + 'static>(
    resolver: R,
    request_id: &str,
    dockerfile: &str,
    opts: frontend::BuildOptions,
) -> anyhow::Result<Option<BTreeMap<String, Vec<u8>>>> {
    let (request_id, dockerfile) = (request_id.to_owned(), dockerfile.to_owned());
    let answer = tokio::task::spawn_blocking(move || {
        frontend::subrequests::handle(&request_id, &dockerfile, &opts, &resolver).transpose()
    })
    .await
    .context("frontend task failed")??;
    Ok(answer)
}

/// Solves `definition` on `build`. An empty definition (a target that is an empty filesystem)
/// solves to scratch.
pub async fn solve(
    build: &Build,
    definition: &pb::Definition,
    opts: SolveOptions,
    progress: &Progress,
) -> anyhow::Result<SolveResult> {
    if definition.def.is_empty() {
        return Ok(SolveResult {
            fs: FsRef::default(),
            local: None,
            vertices: Vec::new(),
        });
    }
    let def = ParsedDefinition::try_from(definition.clone()).context("invalid definition")?;
    let solved = build.solve(def, opts, progress.clone()).await?;
    if solved.local.is_some() {
        anyhow::bail!(
            "the build's result is a local directory, not a filesystem: copy it into one first"
        );
    }
    Ok(solved)
}

/// The history the last build of target `build_id` left (empty when there was none).
pub fn last_build(build: &Build, build_id: &str) -> History {
    History::load(&build.engine().state().history(build_id))
}

/// Records the build of target `build_id` in the state directory's history and returns it:
/// which vertices ran, and why, compared with the last build of the same target.
pub fn record_history(
    build: &Build,
    build_id: &str,
    solved: &SolveResult,
    no_cache: bool,
) -> History {
    let path = build.engine().state().history(build_id);
    let history = History::load(&path).next(&solved.vertices, build.engine().cache(), no_cache);
    if let Err(e) = history.save(&path) {
        tracing::warn!("cannot save build history: {e}");
    }
    history
}

/// The explanations of a history in words, one line per vertex that ran.
pub fn render_explanations(h: &History) -> String {
    if h.explanations.is_empty() {
        return "every step came from the cache".to_string();
    }
    let mut out = String::new();
    for e in &h.explanations {
        out.push_str(&format!(
            "{} ran because {}\n",
            e.name,
            e.reasons.join("; ")
        ));
    }
    out.trim_end().to_string()
}

/// What an export writes: the solved filesystem, the frontend's image config and the
/// definition that built it (its base images become cross-mount sources and provenance
/// materials).
pub struct ExportSource<'a> {
    /// The result's layers.
    pub fs: &'a FsRef,
    /// The frontend's image config JSON.
    pub image_config: &'a [u8],
    /// The build's LLB.
    pub definition: &'a pb::Definition,
}

/// Writes the image `source` describes with each of `outputs` (exporter `i` writes to
/// `sink`'s destination `i`), pushed images with `provenance` attached; BuildKit's exporter
/// response of each.
pub async fn export(
    build: &Build,
    source: ExportSource<'_>,
    outputs: &[ExporterSpec],
    sink: &dyn ExportSink,
    progress: &Progress,
    provenance: Option<Provenance>,
) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
    let image = memobuild_worker::export::assemble(source.image_config, &source.fs.layers)?;
    let mut exporter = Exporter::new(
        build,
        &image,
        source.image_config,
        source.definition,
        progress,
    )
    .with_provenance(provenance);
    let mut responses = Vec::with_capacity(outputs.len());
    for (i, spec) in outputs.iter().enumerate() {
        let r = exporter.export(i, spec, sink).await?;
        responses.push(r);
    }
    Ok(responses)
}

/// Fills in what `p`'s statement says of the build: the frontend and its request (context
/// URLs without credentials: a statement is public), the local sources that request reads
/// from the client (the Dockerfile frontend's `context` unless it is a URL, `dockerfile`, and
/// named contexts `local:NAME`), the build's id and start, and this machine's platform.
pub fn describe_provenance(
    p: &mut Provenance,
    frontend: String,
    mut attrs: BTreeMap<String, String>,
    invocation_id: String,
    started: std::time::SystemTime,
) {
    let mut locals = Vec::new();
    if !frontend.is_empty() {
        if !attrs.get("context").is_some_and(|c| c.contains("://")) {
            locals.push("context".to_owned());
        }
        locals.push("dockerfile".to_owned());
        for (k, v) in &attrs {
            if k.starts_with("context:")
                && let Some(name) = v.strip_prefix("local:")
                && !locals.iter().any(|l| l == name)
            {
                locals.push(name.to_owned());
            }
        }
    }
    for (k, v) in attrs.iter_mut() {
        if k == "context" || k.starts_with("context:") {
            *v = crate::gitctx::redact(v);
        }
    }
    p.frontend = frontend;
    p.frontend_attrs = attrs;
    p.locals = locals;
    p.invocation_id = invocation_id;
    p.started_on = humantime::format_rfc3339_nanos(started).to_string();
    p.builder_platform = memobuild_worker::registry::Platform::host().to_string();
}

/// An entitlement a step may need: host networking.
pub const NETWORK_HOST: &str = "network.host";
/// An entitlement a step may need: running privileged.
pub const SECURITY_INSECURE: &str = "security.insecure";

/// Refuses `def` if a step needs an entitlement (host networking, a privileged step) that the
/// build did not ask for (`--allow`) or the builder does not grant, as BuildKit does.
pub fn check_entitlements(
    def: &pb::Definition,
    asked: &[String],
    granted: Option<&[String]>,
) -> Result<(), String> {
    use prost::Message;
    for bytes in &def.def {
        let Ok(op) = pb::Op::decode(bytes.as_slice()) else {
            continue;
        };
        let Some(pb::op::Op::Exec(exec)) = &op.op else {
            continue;
        };
        let mut needs = Vec::new();
        if exec.network == pb::NetMode::Host as i32 {
            needs.push(NETWORK_HOST);
        }
        if exec.security == pb::SecurityMode::Insecure as i32 {
            needs.push(SECURITY_INSECURE);
        }
        for e in needs {
            if !asked.iter().any(|a| a == e) {
                return Err(format!(
                    "entitlement `{e}` is not granted: the build did not ask for it (`--allow {e}`)"
                ));
            }
            if let Some(granted) = granted
                && !granted.iter().any(|a| a == e)
            {
                return Err(format!(
                    "entitlement `{e}` is not allowed by the daemon (start it with `--allow-insecure-entitlement {e}`)"
                ));
            }
        }
    }
    Ok(())
}

/// Sends a note about the build as a whole.
pub fn note(progress: &Progress, message: impl Into<String>) {
    progress.send(ProgressEvent::Message(message.into()));
}

/// The registry's resolve mode for the frontend's: `--pull` asks the registry again for every
/// base image; `local` takes what it knows.
fn resolve_mode(mode: frontend::ImageResolveMode) -> ResolveMode {
    match mode {
        frontend::ImageResolveMode::Default => ResolveMode::Default,
        frontend::ImageResolveMode::Pull => ResolveMode::Pull,
        frontend::ImageResolveMode::Local => ResolveMode::Local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Verifies: a provenance request names the local sources the frontend reads (not the
    // context when it is a URL; named local contexts too) and never the credentials of a
    // context URL, which would otherwise be published with the image.
    #[test]
    fn provenance_names_locals_and_hides_context_credentials() {
        let mut p = Provenance::parse("mode=max")
            .ok()
            .flatten()
            .expect("a request");
        let attrs = BTreeMap::from([
            (
                "context".to_owned(),
                "https://u:pw@git.example/r.git#main".to_owned(),
            ),
            ("context:assets".to_owned(), "local:assets".to_owned()),
            ("target".to_owned(), "prod".to_owned()),
        ]);
        let started = std::time::SystemTime::UNIX_EPOCH;
        describe_provenance(
            &mut p,
            "dockerfile.v0".into(),
            attrs,
            "ref1".into(),
            started,
        );
        assert_eq!(p.locals, ["dockerfile", "assets"]);
        assert_eq!(
            p.frontend_attrs["context"],
            "https://***@git.example/r.git#main"
        );
        assert_eq!(p.frontend_attrs["target"], "prod");
        assert_eq!(p.started_on, "1970-01-01T00:00:00.000000000Z");
    }
}
