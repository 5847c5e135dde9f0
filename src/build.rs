//! `memobuild build` and `memobuild lower`: read the Dockerfile and context, lower, solve, export.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use memobuild_frontend as frontend;
use memobuild_worker::caller::{Caller, HostLocals};
use memobuild_worker::export::exporter::keys;
use memobuild_worker::progress::Progress;
use memobuild_worker::registry::{Registry, RegistryConfig};
use memobuild_worker::solver::{SolveError, SolveOptions};
use memobuild_worker::ssh::{PrivateAgent, SshAgents};
use memobuild_worker::{Engine, EngineConfig, StateDir};
use prost::Message;
use tokio::sync::mpsc;

use crate::cli::{BuildArgs, FrontendArgs, LowerArgs, LowerFormat, SshSource, WhyArgs};
use crate::output;
use memobuild_worker::cache::history::History;

/// The Dockerfile, its name for messages, and the `.dockerignore` patterns that apply to it.
struct Inputs {
    context: PathBuf,
    /// A git context's checkout, locked while the build reads it.
    checkout: Option<crate::gitctx::Checkout>,
    dockerfile_name: String,
    dockerfile: String,
    dockerignore: Vec<String>,
    build_args: BTreeMap<String, String>,
}

/// Reads the inputs of a build. A context that is a git URL (and not a local directory) is
/// checked out under `state` first, with `ssh` as the agent for ssh URLs; `-f` is then a path
/// inside it, as with buildx.
async fn read_inputs(
    args: &FrontendArgs,
    state: &StateDir,
    ssh: Option<&Path>,
) -> anyhow::Result<Inputs> {
    let git = args
        .context
        .to_str()
        .filter(|_| !args.context.is_dir())
        .and_then(crate::gitctx::GitContext::parse);
    let checkout = match git {
        Some(g) => {
            let (state, ssh) = (state.clone(), ssh.map(Path::to_path_buf));
            let c = tokio::task::spawn_blocking(move || {
                crate::gitctx::checkout(&g, &state, ssh.as_deref())
            })
            .await
            .context("git checkout task failed")??;
            Some(c)
        }
        None => None,
    };
    let context = match &checkout {
        Some(c) => c.dir.clone(),
        None => args.context.clone(),
    };
    if !context.is_dir() {
        bail!("context `{}` is not a directory", context.display());
    }
    // In a checkout, what the build reads besides the context is resolved inside it (as if the
    // context were `/`): a repository's symbolic link must not make the build read, and report,
    // a file of this machine. An absolute `-f` is a local file, as with buildx.
    let inside = |rel: &str| -> anyhow::Result<PathBuf> {
        memobuild_worker::fsops::resolve_in_root(&context, rel, true)
            .with_context(|| format!("resolving `{rel}` in the git context"))
    };
    let file = match (&args.file, &checkout) {
        (Some(f), Some(_)) if !f.is_absolute() => inside(&f.to_string_lossy())?,
        (Some(f), _) => f.clone(),
        (None, Some(_)) => inside("Dockerfile")?,
        (None, None) => context.join("Dockerfile"),
    };
    if checkout.is_some() && file.is_symlink() {
        bail!("`{}` is not a regular file", file.display());
    }
    let dockerfile = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read Dockerfile `{}`", file.display()))?;
    // `<Dockerfile>.dockerignore` beside the Dockerfile wins over the context's `.dockerignore`.
    let (specific, general) = match &checkout {
        Some(_) => {
            let rel = file
                .strip_prefix(&context)
                .unwrap_or(&file)
                .to_string_lossy()
                .into_owned();
            (
                inside(&format!("{rel}.dockerignore"))?,
                inside(".dockerignore")?,
            )
        }
        None => (
            PathBuf::from(format!("{}.dockerignore", file.display())),
            context.join(".dockerignore"),
        ),
    };
    let ignore_file = if specific.is_file() {
        specific
    } else {
        general
    };
    let dockerignore = match std::fs::read_to_string(&ignore_file) {
        Ok(text) => parse_dockerignore(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read `{}`", ignore_file.display()));
        }
    };
    let mut dockerignore = dockerignore;
    // A repository's `.git` is no part of its context (BuildKit drops it too).
    if checkout.as_ref().is_some_and(|c| c.at_root) {
        dockerignore.push("/.git".to_owned());
    }
    if args.use_gitignore {
        let ignored = memobuild_worker::gitignore::ignored_paths(&context)
            .with_context(|| format!("reading the .gitignore files of `{}`", context.display()))?;
        dockerignore.extend(
            ignored
                .iter()
                .map(|p| memobuild_worker::gitignore::literal_pattern(p)),
        );
    }
    let dockerfile_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "Dockerfile".into());
    Ok(Inputs {
        context,
        checkout,
        dockerfile_name,
        dockerfile,
        dockerignore,
        build_args: parse_build_args(&args.build_args)?,
    })
}

/// `.dockerignore` lines as Docker reads them: `#` comments only at the start of a line, blank
/// lines skipped, surrounding whitespace trimmed.
pub fn parse_dockerignore(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// `KEY=VALUE` pairs; a bare `KEY` takes its value from the environment (and is skipped when the
/// environment has none), as `docker build` does.
/// `--provenance` as buildx sends it (`attest:provenance`): `true` is `mode=min`, `false`
/// `disabled=true`, anything else as given.
pub(crate) fn provenance_attr(flag: Option<&str>) -> Option<String> {
    match flag? {
        "true" | "1" => Some("mode=min".into()),
        "false" | "0" => Some("disabled=true".into()),
        other => Some(other.to_owned()),
    }
}

/// The provenance `--provenance` asks of a build on this machine: the Dockerfile frontend's
/// request as buildx would have sent it to a daemon (`filename`, `target`, `build-arg:*`).
fn local_provenance(
    args: &BuildArgs,
    build_args: &BTreeMap<String, String>,
    started: std::time::SystemTime,
) -> anyhow::Result<Option<memobuild_worker::export::attestation::Provenance>> {
    let Some(value) = provenance_attr(args.provenance.as_deref()) else {
        return Ok(None);
    };
    let Some(mut p) = memobuild_worker::export::attestation::Provenance::parse(&value)? else {
        return Ok(None);
    };
    let mut attrs: BTreeMap<String, String> = build_args
        .iter()
        .map(|(k, v)| (format!("build-arg:{k}"), v.clone()))
        .collect();
    if let Some(f) = &args.frontend.file {
        attrs.insert("filename".into(), f.display().to_string());
    }
    if let Some(t) = &args.frontend.target {
        attrs.insert("target".into(), t.clone());
    }
    let context = args.frontend.context.to_string_lossy();
    if context.contains("://") {
        attrs.insert("context".into(), context.into_owned());
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    crate::pipeline::describe_provenance(&mut p, "dockerfile.v0".into(), attrs, id, started);
    Ok(Some(p))
}

pub(crate) fn parse_build_args(raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in raw {
        let (k, v) = match a.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (a.clone(), std::env::var(a).ok()),
        };
        if k.is_empty() || k.contains(char::is_whitespace) {
            bail!(
                "invalid --build-arg `{a}`: expected KEY=VALUE with a non-empty KEY without spaces"
            );
        }
        if let Some(v) = v {
            out.insert(k, v);
        }
    }
    Ok(out)
}

/// The frontend options of a build from the command line; `extra` are buildx's flags
/// (`--label`, `--build-context`, …) as the frontend attributes a daemon would get, read by
/// the frontend crate as a daemon reads them.
fn frontend_options(
    inputs: &Inputs,
    target: Option<String>,
    extra: &crate::client::request::BuildxOptions,
) -> anyhow::Result<frontend::BuildOptions> {
    let parsed =
        frontend::BuildOptions::from_frontend_attrs(&extra.attrs, frontend::Platform::host())?;
    let mut o = frontend::BuildOptions {
        dockerfile_name: inputs.dockerfile_name.clone(),
        target,
        build_args: inputs.build_args.clone(),
        dockerignore: inputs.dockerignore.clone(),
        ..parsed.options
    };
    // A directory's own `.dockerignore` applies to it, as BuildKit reads it for a `local:`
    // named context.
    for nc in o.named_contexts.values_mut() {
        if let frontend::NamedContext::Local { name, excludes, .. } = nc
            && let Some(dir) = extra.locals.get(name.as_str())
        {
            *excludes = match std::fs::read_to_string(dir.join(".dockerignore")) {
                Ok(text) => parse_dockerignore(&text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("reading `{}/.dockerignore`", dir.display()));
                }
            };
        }
    }
    Ok(o)
}

/// The identity of a build target for `memobuild why`: context, Dockerfile and target.
fn build_id(context: &Path, file: Option<&Path>, target: Option<&str>) -> String {
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let dockerfile = file
        .map(abs)
        .unwrap_or_else(|| abs(context).join("Dockerfile"));
    format!(
        "{}\0{}\0{}",
        abs(context).display(),
        dockerfile.display(),
        target.unwrap_or("")
    )
}

/// `memobuild why`: the explanations saved by the last build of this target.
pub fn why(args: WhyArgs) -> anyhow::Result<()> {
    let state = crate::cli::state_dir(args.state_dir.clone());
    let path = StateDir::new(&state).history(&build_id(
        &args.context,
        args.file.as_deref(),
        args.target.as_deref(),
    ));
    if !path.is_file() {
        bail!(
            "no build of `{}` recorded in `{}` yet",
            args.context.display(),
            state.display()
        );
    }
    println!(
        "{}",
        crate::pipeline::render_explanations(&History::load(&path))
    );
    Ok(())
}

/// `memobuild lower`.
pub async fn lower(args: LowerArgs) -> anyhow::Result<()> {
    let state = StateDir::new(crate::cli::state_dir(None));
    let inputs = read_inputs(&args.frontend, &state, None).await?;
    let registry = Arc::new(Registry::new(RegistryConfig {
        insecure: args.frontend.insecure_registries.clone(),
        provider: Some(Arc::new(crate::credentials::DockerCredentials::load())),
        ..RegistryConfig::default()
    }));
    let lowered = crate::pipeline::lower(
        &registry,
        &inputs.dockerfile,
        frontend_options(&inputs, args.frontend.target.clone(), &Default::default())?,
        None,
    )
    .await?;
    for w in &lowered.warnings {
        eprintln!("warning: {w}");
    }
    let mut stdout = std::io::stdout().lock();
    use std::io::Write;
    match args.format {
        LowerFormat::Pb => stdout.write_all(&lowered.definition.encode_to_vec())?,
        LowerFormat::Json => {
            let v = crate::dump::definition_json(&lowered.definition);
            serde_json::to_writer_pretty(&mut stdout, &v)?;
            writeln!(stdout)?;
        }
    }
    Ok(())
}

/// `memobuild build`.
pub async fn build(args: BuildArgs) -> anyhow::Result<()> {
    let started_at = std::time::SystemTime::now();
    let started = std::time::Instant::now();
    let state = StateDir::new(crate::cli::state_dir(args.state_dir.clone()));
    // Private agents (for `--ssh ID=KEYFILE`) live until the build is over.
    if args.call.is_some() || args.check {
        bail!("--call and --check ask a BuildKit daemon's frontend: use them with --addr");
    }
    let extra = crate::client::request::BuildxOptions::from_args(&args)?;
    let (ssh, _private_agents) = ssh_agents(&args, &state).await?;
    let inputs = read_inputs(&args.frontend, &state, ssh.get("default")).await?;
    let mut outputs = args
        .outputs
        .iter()
        .map(|o| output::parse(o))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.push {
        output::apply_push(&mut outputs, &args.tags)?;
    }
    let (exporters, sink) = output::exporters(&outputs, &args.tags)?;
    let credentials = Arc::new(crate::credentials::DockerCredentials::load());
    let mut locals = HostLocals::new();
    locals.insert("context", &inputs.context);
    for (name, dir) in &extra.locals {
        locals.insert(name, dir);
    }
    let caller = Caller {
        locals: Arc::new(locals),
        secrets: Arc::new(args.secrets()?),
        ssh: Arc::new(ssh),
        credentials,
    };
    // The given containerd, else the system's, else an embedded one (stopped at the end),
    // picked when a step first needs containerd: a fully cached build never starts one.
    let containerd = LazyContainerd::new(
        args.containerd.clone(),
        state.clone(),
        args.containerd_linger,
    );
    let engine = Engine::open(EngineConfig {
        namespace: args.namespace.clone(),
        insecure_registries: args.frontend.insecure_registries.clone(),
        remote_cache: args.remote_cache.clone(),
        remote_cache_token: args.remote_cache_token.clone(),
        ..EngineConfig::with_containerd(containerd.source(), state.clone())
    })
    .await;
    let build = match engine {
        Ok(engine) => engine.build(caller).await,
        Err(e) => Err(e),
    };
    let build = match build {
        Ok(b) => b,
        Err(e) => {
            containerd.release().await;
            return Err(e.into());
        }
    };

    let (tx, rx) = mpsc::unbounded_channel();
    let renderer = tokio::spawn(crate::progress::render(args.progress, rx));
    let progress = Progress::new(tx);

    // Every cacheable vertex of the solve, for the build report.
    let mut vertices = Vec::new();
    let mut reasons = std::collections::BTreeMap::new();
    let result = async {
        let lowered = crate::pipeline::lower(
            build.registry(),
            &inputs.dockerfile,
            frontend_options(&inputs, args.frontend.target.clone(), &extra)?,
            None,
        )
        .await
        .inspect_err(|e| {
            // `# check=error=true`: the findings first, then the error naming their rules.
            if let Some(fe) = e.downcast_ref::<frontend::FrontendError>()
                && let frontend::ErrorKind::LintViolation { found, .. } = fe.kind.as_ref()
            {
                for w in found {
                    crate::pipeline::note(&progress, format!("warning: {w}"));
                }
            }
        })?;
        for w in &lowered.warnings {
            crate::pipeline::note(&progress, format!("warning: {w}"));
        }
        let allowed: Vec<String> = args.allow.iter().chain(&extra.entitlements).cloned().collect();
        crate::pipeline::check_entitlements(&lowered.definition, &allowed, None)
            .map_err(anyhow::Error::msg)?;
        let target_id = build_id(
            &args.frontend.context,
            args.frontend.file.as_deref(),
            args.frontend.target.as_deref(),
        );
        let opts = SolveOptions {
            layer: Default::default(),
            max_parallel_exec: args.max_parallelism,
            platform: crate::pipeline::pb_platform(&frontend::Platform::host()),
            no_cache: args.no_cache,
            // `--explain`: each step that runs also says why as it starts.
            explain_against: args
                .explain
                .then(|| Arc::new(crate::pipeline::last_build(&build, &target_id))),
        };
        let solved = crate::pipeline::solve(&build, &lowered.definition, opts, &progress).await?;
        vertices = solved.vertices.clone();
        let history =
            crate::pipeline::record_history(&build, &target_id, &solved, args.no_cache);
        reasons = history
            .explanations
            .iter()
            .map(|e| (e.name.clone(), e.reasons.join("; ")))
            .collect();
        if args.explain {
            crate::pipeline::note(&progress, crate::pipeline::render_explanations(&history));
        }
        if exporters.is_empty() {
            crate::pipeline::note(
                &progress,
                "warning: no output specified; the build result stays only in the cache (use --output type=oci,dest=FILE, --output DIR or -t NAME --push)",
            );
        }
        let provenance = local_provenance(&args, &inputs.build_args, started_at)?;
        let source = crate::pipeline::ExportSource {
            fs: &solved.fs,
            image_config: &lowered.image_config,
            definition: &lowered.definition,
        };
        let responses = crate::pipeline::export(
            &build,
            source,
            &exporters,
            &sink,
            &progress,
            provenance,
        )
        .await?;
        let mut merged = BTreeMap::new();
        for r in &responses {
            merged.extend(r.clone());
        }
        crate::client::result::write_files(
            &merged,
            args.metadata_file.as_deref(),
            args.iidfile.as_deref(),
        )?;
        // stdout: the digest of the first image an output wrote (its compression and media
        // types are part of it), else the image as built.
        let printed = responses
            .iter()
            .find_map(|r| r.get(keys::IMAGE_DIGEST).cloned());
        let digest = match printed {
            Some(d) => d,
            None => memobuild_worker::export::assemble(&lowered.image_config, &solved.fs.layers)?
                .manifest_desc
                .digest,
        };
        Ok::<_, anyhow::Error>(digest)
    }
    .await;
    // Uploads to the remote cache run per vertex as it finishes; wait for the last ones.
    build.flush_uploads().await;
    if let Some(max) = args.cache_max_size {
        match memobuild_worker::state::usage::auto_prune(&state, max) {
            Ok((0, _)) => {}
            Ok((n, bytes)) => crate::pipeline::note(
                &progress,
                format!(
                    "cache: removed {n} least recently used entries ({})",
                    crate::cache_cmd::human_size(bytes)
                ),
            ),
            Err(e) => tracing::warn!("cache GC: {e:#}"),
        }
    }
    // A server the remote cache gave up on (one warning said so) is not asked again: it would
    // cost the build another timeout and a second warning.
    if let Some(base) = args.remote_cache.as_deref().filter(|b| !b.is_empty())
        && !args.no_build_report
        && !build.remote_cache_failed()
    {
        // A git context is named after its repository, not after the checkout's directory.
        let repo_name = args
            .frontend
            .context
            .to_str()
            .filter(|_| inputs.checkout.is_some())
            .and_then(crate::gitctx::GitContext::parse)
            .map(|g| g.name());
        let subject = crate::report::Subject {
            project: args.project.as_deref().or(repo_name.as_deref()),
            context: &inputs.context,
            dockerfile: args.frontend.file.as_deref(),
            target: args.frontend.target.as_deref(),
            tags: &args.tags,
            masked: inputs.build_args.values().map(String::as_str).collect(),
            reasons: &reasons,
        };
        // A failed solve still tells which steps had finished, and how.
        if let Err(e) = &result
            && let Some(se) = e.downcast_ref::<SolveError>()
        {
            vertices = se.completed.to_vec();
        }
        let outcome = match &result {
            Ok(digest) => Ok(digest.as_str()),
            Err(e) => Err(format!("{e:#}")),
        };
        let record =
            crate::report::record(&subject, started_at, started.elapsed(), &vertices, outcome);
        if let Err(e) = crate::report::send(base, args.remote_cache_token.as_deref(), &record).await
        {
            crate::pipeline::note(
                &progress,
                format!("warning: the build report did not reach the server: {e}"),
            );
        }
    }
    drop(progress);
    let _ = renderer.await;
    build.finish().await;
    containerd.release().await;
    if let Err(e) = &result
        && let Some(se) = e.downcast_ref::<SolveError>()
    {
        print_output_tail(se);
    }
    let digest = result?;
    println!("{digest}");
    Ok(())
}

/// The containerd of a build, chosen (and an embedded one started) only when first needed.
struct LazyContainerd {
    addr: Option<String>,
    state: StateDir,
    /// How long an embedded one stays up for the next build.
    linger: std::time::Duration,
    selected: Arc<tokio::sync::Mutex<Option<crate::embedded::Containerd>>>,
}

impl LazyContainerd {
    fn new(addr: Option<String>, state: StateDir, linger: std::time::Duration) -> Self {
        LazyContainerd {
            addr,
            state,
            linger,
            selected: Arc::default(),
        }
    }

    /// The engine's way to it.
    fn source(&self) -> memobuild_worker::engine::ContainerdSource {
        let (addr, state, selected) =
            (self.addr.clone(), self.state.clone(), self.selected.clone());
        memobuild_worker::engine::ContainerdSource::Lazy(Arc::new(move || {
            let (addr, state, selected) = (addr.clone(), state.clone(), selected.clone());
            Box::pin(async move {
                let mut slot = selected.lock().await;
                if let Some(c) = slot.as_ref() {
                    return Ok(c.socket().to_path_buf());
                }
                let c = crate::embedded::Containerd::select(addr.as_deref(), &state)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                let socket = c.socket().to_path_buf();
                *slot = Some(c);
                Ok(socket)
            })
        }))
    }

    /// Ends the build's use of its containerd (an embedded one stops after the linger).
    async fn release(&self) {
        if let Some(c) = self.selected.lock().await.take() {
            c.release(self.linger).await;
        }
    }
}

/// The agents `--ssh` names: sockets as given, key files loaded into an `ssh-agent` of the
/// build's own (returned, to be stopped when the build is over).
async fn ssh_agents(
    args: &BuildArgs,
    state: &StateDir,
) -> anyhow::Result<(SshAgents, Vec<PrivateAgent>)> {
    let mut agents = SshAgents::new();
    let mut private = Vec::new();
    for (id, source) in args.ssh()? {
        match source {
            SshSource::Socket(p) => agents.insert(id, p),
            SshSource::Keys(keys) => {
                let dir = state.tmp();
                let agent = tokio::task::spawn_blocking(move || PrivateAgent::start(&dir, &keys))
                    .await
                    .context("starting ssh-agent")?
                    .with_context(|| format!("--ssh `{id}`"))?;
                agents.insert(id, agent.socket());
                private.push(agent);
            }
        }
    }
    Ok((agents, private))
}

/// Prints the failing process' last output lines, as buildx does, above the one-line error.
fn print_output_tail(e: &SolveError) {
    if !e.output_tail.is_empty() {
        eprintln!("------");
        eprintln!(" > {}:", e.name);
        for l in &e.output_tail {
            eprintln!("{l}");
        }
        eprintln!("------");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_args() {
        let a = parse_build_args(&["A=1".into(), "B=".into(), "C=x=y".into()]).unwrap();
        assert_eq!(a["A"], "1");
        assert_eq!(a["B"], "");
        assert_eq!(a["C"], "x=y");
        assert!(parse_build_args(&["=1".into()]).is_err());
        assert!(parse_build_args(&["A B=1".into()]).is_err());
        assert!(
            parse_build_args(&["MEMOBUILD_SURELY_UNSET_VAR".into()])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn dockerignore_lines() {
        assert_eq!(
            parse_dockerignore("# c\n\n  *.log  \nnode_modules\n #not-a-comment\n"),
            vec!["*.log", "node_modules", "#not-a-comment"]
        );
    }
}
