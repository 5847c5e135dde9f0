//! The daemon's `dockerfile.v0` frontend: a frontend request (BuildKit's frontend attributes)
//! turned into a solved result with the image config beside it.
//!
//! As BuildKit's builtin frontend does: the Dockerfile is read from the client's `dockerfile`
//! local (only the file and its `.dockerignore` are transferred), the context's
//! `.dockerignore` from the `context` local (only that file), then the Dockerfile is lowered
//! with those patterns and the session id in its local sources, and the Definition solved on
//! the job's build. The context itself is transferred when the solve reaches its local source.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memobuild_frontend as frontend;
use memobuild_proto::{ParsedDefinition, pb};
use memobuild_worker::Build;
use memobuild_worker::caller::LocalRequest;
use memobuild_worker::progress::{Progress, VertexState};
use memobuild_worker::solver::SolveOptions;
use tonic::Status;

use crate::daemon::jobs::{Job, Output, SolvedRef};
use crate::daemon::remote_context;
use crate::daemon::session::Sessions;

/// The image config a frontend returns beside its result (BuildKit's
/// `exptypes.ExporterImageConfigKey`).
pub const META_IMAGE_CONFIG: &str = "containerimage.config";

/// The frontend attribute naming a subrequest (`dockerui/requests.go`).
const REQUEST_ID: &str = "requestid";

/// What a frontend produced: the result and its metadata.
pub struct FrontendResult {
    /// The solved filesystem and its definition.
    pub solved: SolvedRef,
    /// `containerimage.config` and friends.
    pub metadata: BTreeMap<String, Vec<u8>>,
}

/// Runs the Dockerfile frontend with BuildKit's attributes `attrs` for `job`.
pub async fn dockerfile(
    job: &Job,
    build: &Build,
    sessions: &Arc<Sessions>,
    attrs: &BTreeMap<String, String>,
    inputs: &BTreeMap<String, pb::Definition>,
    max_parallel_exec: usize,
) -> Result<FrontendResult, Status> {
    let progress = &job.progress;
    let parsed = frontend::BuildOptions::from_frontend_attrs(attrs, frontend::Platform::host())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut options = parsed.options;
    options.inputs = inputs.clone();
    let dockerfile_local = attrs
        .get("dockerfilekey")
        .filter(|k| !k.is_empty())
        .map_or("dockerfile", String::as_str);
    options.session_id = Some(job.session());

    // [internal] load remote build context: a context given as a URL is fetched here and then
    // read as the client's `context` and `dockerfile` directories would be.
    let mut git_root = false;
    if let Some(url) = options.context_url.clone() {
        let step = step_id(&job.id, "remote context");
        let name = "[internal] load remote build context".to_string();
        let started = std::time::Instant::now();
        progress.step(&step, &name, VertexState::Started, None, None);
        let fetched = remote_context::fetch(
            &url,
            sessions,
            &job.session(),
            build.engine().state(),
            &job.provided,
        )
        .await;
        finish_step(progress, &step, &name, started, &fetched);
        let fetched = fetched?;
        if let Some(n) = fetched.dockerfile_name {
            options.dockerfile_name = n;
        }
        git_root = fetched.git_root;
    }
    let filename = options.dockerfile_name.clone();

    // [internal] load build definition from Dockerfile
    let step = step_id(&job.id, "definition");
    let definition_step = step.clone();
    let name = format!("[internal] load build definition from {filename}");
    let started = std::time::Instant::now();
    progress.step(&step, &name, VertexState::Started, None, None);
    // A `dockerfile` frontend input (buildx's remote bake definitions) holds the Dockerfile
    // unless `dockerfilekey` names a local, as in BuildKit's `dockerui`.
    let dockerfile_input = inputs
        .get(INPUT_DOCKERFILE)
        .filter(|_| !attrs.contains_key("dockerfilekey"));
    let read = async {
        let names = vec![filename.clone(), format!("{filename}.dockerignore")];
        let mut files = match dockerfile_input {
            Some(def) => read_input(job, build, def, names, max_parallel_exec).await?,
            None => {
                let follow = vec![
                    filename.clone(),
                    format!("{filename}.dockerignore"),
                    "dockerfile".to_string(),
                ];
                let dir = sync_local(
                    build,
                    progress,
                    &step,
                    LocalAt {
                        name: dockerfile_local,
                        session: options.session_for(dockerfile_local),
                        hint: dockerfile_local,
                    },
                    &follow,
                )
                .await?;
                names
                    .iter()
                    .map(|n| read_file(&dir, n))
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        let specific = files.pop().flatten();
        let text = files.pop().flatten().ok_or_else(|| {
            Status::not_found(format!(
                "failed to read dockerfile: open {filename}: no such file or directory"
            ))
        })?;
        let text = String::from_utf8(text).map_err(|_| {
            Status::invalid_argument(format!("the Dockerfile `{filename}` is not UTF-8 text"))
        })?;
        Ok::<_, Status>((text, specific))
    }
    .await;
    finish_step(progress, &step, &name, started, &read);
    let (dockerfile, specific_ignore) = read?;

    // A subrequest (buildx's `--call`, `--check`) reads the Dockerfile only: the context is
    // not asked for (an outline's client may not even offer it), except its `.dockerignore`
    // for a lint (`CopyIgnoredFile`).
    let request_id = attrs
        .get(REQUEST_ID)
        .filter(|r| !r.is_empty())
        .map(String::as_str);
    if let Some(id) = request_id
        && id != frontend::subrequests::LINT
    {
        return subrequest(job, build, id, &dockerfile, options).await;
    }

    // [internal] load .dockerignore
    let ignore = match specific_ignore {
        Some(i) => i,
        None => {
            let step = step_id(&job.id, "dockerignore");
            let name = "[internal] load .dockerignore".to_string();
            let started = std::time::Instant::now();
            progress.step(&step, &name, VertexState::Started, None, None);
            let read = async {
                if let Some(def) = inputs.get(INPUT_CONTEXT) {
                    let names = vec![".dockerignore".to_string()];
                    let read = read_input(job, build, def, names, max_parallel_exec).await?;
                    return Ok(read.into_iter().flatten().next().unwrap_or_default());
                }
                let follow = vec![".dockerignore".to_string()];
                let dir = sync_local(
                    build,
                    progress,
                    &step,
                    LocalAt {
                        name: &options.context_name,
                        session: options.session_for(&options.context_name),
                        hint: &format!("{}-.dockerignore", options.context_name),
                    },
                    &follow,
                )
                .await;
                match dir {
                    Ok(dir) => Ok(read_file(&dir, ".dockerignore")?.unwrap_or_default()),
                    // A client that sends no context (a request that only reads the
                    // Dockerfile, an outline) has no `.dockerignore` either; a build that
                    // needs the context fails where it reads it, naming it.
                    Err(e) => {
                        tracing::debug!("no .dockerignore: {}", e.message());
                        Ok::<_, Status>(Vec::new())
                    }
                }
            }
            .await;
            finish_step(progress, &step, &name, started, &read);
            read?
        }
    };
    options.dockerignore = crate::build::parse_dockerignore(&String::from_utf8_lossy(&ignore));
    // A repository's `.git` is no part of its context (BuildKit drops it too).
    if git_root {
        options.dockerignore.push("/.git".to_owned());
    }
    if let Some(id) = request_id {
        return subrequest(job, build, id, &dockerfile, options).await;
    }
    named_local_excludes(job, build, &mut options).await?;

    let target_id = target_id(sessions, job, &options).await;
    let lowered = crate::pipeline::lower(build.registry(), &dockerfile, options, Some(progress))
        .await
        .map_err(|e| {
            // `# check=error=true`: the findings are shown as warnings (with their lines), as
            // BuildKit shows them, beside the error naming their rules.
            if let Some(fe) = e.downcast_ref::<frontend::FrontendError>()
                && let frontend::ErrorKind::LintViolation { found, .. } = fe.kind.as_ref()
            {
                for w in found {
                    job.status
                        .warn_lint(&definition_step, w, &filename, dockerfile.as_bytes());
                }
            }
            crate::daemon::convert::frontend_error(&e, dockerfile.as_bytes())
        })?;
    for w in &lowered.warnings {
        job.status
            .warn_lint(&definition_step, w, &filename, dockerfile.as_bytes());
    }
    let mut metadata = BTreeMap::new();
    metadata.insert(META_IMAGE_CONFIG.to_string(), lowered.image_config.clone());
    if lowered.definition.def.is_empty() {
        return Ok(FrontendResult {
            solved: SolvedRef {
                output: Output::Scratch,
                definition: None,
            },
            metadata,
        });
    }
    let solved = solve_definition(
        job,
        build,
        &lowered.definition,
        max_parallel_exec,
        false,
        Some(&target_id),
    )
    .await?;
    Ok(FrontendResult { solved, metadata })
}

/// What identifies this build's target across builds, for its explanations: the client's
/// context (the session's shared key, which buildx and `memobuild build --addr` derive from
/// the directory, or the context's URL), the Dockerfile and the target stage.
async fn target_id(
    sessions: &Arc<Sessions>,
    job: &Job,
    options: &frontend::BuildOptions,
) -> String {
    let context = match &options.context_url {
        Some(url) => url.clone(),
        None => sessions
            .get(&job.session(), std::time::Duration::ZERO)
            .await
            .map(|s| s.headers.shared_key.clone())
            .unwrap_or_default(),
    };
    format!(
        "daemon\0{context}\0{}\0{}\0{}",
        options.context_name,
        options.dockerfile_name,
        options.target.as_deref().unwrap_or_default()
    )
}

/// Answers subrequest `id`: a result without a filesystem whose metadata is the answer.
async fn subrequest(
    job: &Job,
    build: &Build,
    id: &str,
    dockerfile: &str,
    options: frontend::BuildOptions,
) -> Result<FrontendResult, Status> {
    let answer = crate::pipeline::subrequest(
        build.registry(),
        id,
        dockerfile,
        options,
        Some(&job.progress),
    )
    .await
    .map_err(|e| crate::daemon::convert::frontend_error(&e, dockerfile.as_bytes()))?
    .ok_or_else(|| Status::invalid_argument(format!("unsupported request {id}")))?;
    Ok(FrontendResult {
        solved: SolvedRef {
            output: Output::Scratch,
            definition: None,
        },
        metadata: answer,
    })
}

/// Solves `definition` on the job's build. With `target_id` (what identifies the build's
/// target across builds: context, Dockerfile, target), each step that runs says why in the
/// progress, against the last build of that target, and this build becomes the last one.
pub async fn solve_definition(
    job: &Job,
    build: &Build,
    definition: &memobuild_proto::pb::Definition,
    max_parallel_exec: usize,
    no_cache: bool,
    target_id: Option<&str>,
) -> Result<SolvedRef, Status> {
    // Every definition the job solves is checked, whoever made it (the client, or the
    // daemon's own Dockerfile frontend).
    job.check_entitlements(definition)?;
    let parsed = ParsedDefinition::try_from(definition.clone())
        .map_err(|e| Status::invalid_argument(format!("invalid definition: {e}")))?;
    job.status.add_definition(&parsed);
    let opts = SolveOptions {
        layer: Default::default(),
        max_parallel_exec,
        platform: crate::pipeline::pb_platform(&frontend::Platform::host()),
        no_cache,
        explain_against: target_id.map(|id| Arc::new(crate::pipeline::last_build(build, id))),
    };
    let solved = build
        .solve(parsed, opts, job.progress.clone())
        .await
        .map_err(|e| crate::daemon::convert::solve_error(&e, definition))?;
    job.count_steps(&solved.vertices);
    if let Some(id) = target_id {
        crate::pipeline::record_history(build, id, &solved, no_cache);
    }
    let output = match (solved.local, solved.fs.layers.is_empty()) {
        (Some(l), _) => Output::Local(l.path),
        (None, true) => Output::Scratch,
        (None, false) => Output::Fs(solved.fs),
    };
    Ok(SolvedRef {
        output,
        definition: Some(definition.clone()),
    })
}

/// The frontend inputs that stand for the Dockerfile's directory and the main context, as
/// BuildKit's `dockerui` names them.
const INPUT_DOCKERFILE: &str = "dockerfile";
const INPUT_CONTEXT: &str = "context";

/// Solves the frontend input `def` and reads `names` from its result (`None` for a file it
/// does not hold).
async fn read_input(
    job: &Job,
    build: &Build,
    def: &pb::Definition,
    names: Vec<String>,
    max_parallel_exec: usize,
) -> Result<Vec<Option<Vec<u8>>>, Status> {
    let solved = Box::pin(solve_definition(
        job,
        build,
        def,
        max_parallel_exec,
        false,
        None,
    ))
    .await?;
    solved
        .with_files(build, move |root| {
            names.iter().map(|n| read_file(root, n)).collect()
        })
        .await
}

/// Reads the `.dockerignore` of each `local:` named context from its directory (only that
/// file is transferred, as BuildKit's `[context NAME] load .dockerignore`), for the frontend
/// to exclude those paths from the context's transfer.
async fn named_local_excludes(
    job: &Job,
    build: &Build,
    options: &mut frontend::BuildOptions,
) -> Result<(), Status> {
    let locals: Vec<(String, String)> = options
        .named_contexts
        .iter()
        .filter_map(|(key, nc)| match nc {
            frontend::NamedContext::Local { name, .. } => Some((key.clone(), name.clone())),
            _ => None,
        })
        .collect();
    for (key, name) in locals {
        let step = step_id(&job.id, &format!("context:{key}:dockerignore"));
        let step_name = format!("[context {key}] load .dockerignore");
        let started = std::time::Instant::now();
        job.progress
            .step(&step, &step_name, VertexState::Started, None, None);
        let read = async {
            let dir = sync_local(
                build,
                &job.progress,
                &step,
                LocalAt {
                    name: &name,
                    session: options.session_for(&name),
                    hint: &format!("context:{key}-.dockerignore"),
                },
                &[".dockerignore".to_string()],
            )
            .await?;
            Ok::<_, Status>(read_file(&dir, ".dockerignore")?.unwrap_or_default())
        }
        .await;
        finish_step(&job.progress, &step, &step_name, started, &read);
        let patterns = crate::build::parse_dockerignore(&String::from_utf8_lossy(&read?));
        if let Some(frontend::NamedContext::Local { excludes, .. }) =
            options.named_contexts.get_mut(&key)
        {
            *excludes = patterns;
        }
    }
    Ok(())
}

/// A client directory: its name, the session serving it and the shared-key hint of the copy.
struct LocalAt<'a> {
    name: &'a str,
    session: Option<&'a str>,
    hint: &'a str,
}

/// Syncs the client's local `at` (only `follow` paths) and returns the copy.
async fn sync_local(
    build: &Build,
    progress: &Progress,
    step: &str,
    at: LocalAt<'_>,
    follow: &[String],
) -> Result<PathBuf, Status> {
    let name = at.name;
    build
        .caller()
        .locals
        .local(LocalRequest {
            name,
            session: at.session,
            shared_key_hint: Some(at.hint),
            include_patterns: &[],
            exclude_patterns: &[],
            follow_paths: follow,
            vertex: step,
            progress,
        })
        .await
        .map(|d| d.path)
        .map_err(|e| Status::failed_precondition(format!("local `{name}`: {e}")))
}

/// The bytes of `rel` in `dir`, resolved inside it; `None` when it does not exist.
fn read_file(dir: &Path, rel: &str) -> Result<Option<Vec<u8>>, Status> {
    let path = memobuild_worker::fsops::resolve_in_root(dir, rel, true)
        .map_err(|e| Status::invalid_argument(format!("`{rel}`: {e}")))?;
    match std::fs::read(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Status::internal(format!("reading `{rel}`: {e}"))),
    }
}

fn step_id(job: &str, what: &str) -> String {
    format!(
        "sha256:{}",
        blake3::hash(format!("{job}\0{what}").as_bytes()).to_hex()
    )
}

fn finish_step<T>(
    progress: &Progress,
    step: &str,
    name: &str,
    started: std::time::Instant,
    result: &Result<T, Status>,
) {
    let (state, error) = match result {
        Ok(_) => (VertexState::Completed, None),
        Err(e) => (VertexState::Error, Some(e.message().to_owned())),
    };
    progress.step(step, name, state, Some(started.elapsed()), error);
}
