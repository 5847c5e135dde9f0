//! The daemon's `dockerfile.v0` frontend: [`crate::frontend_request`] run in process over
//! [`DaemonBridge`], the job's side of the request (its session's locals, the engine's
//! registry client, the job's build), and [`solve_definition`], which every definition a job
//! solves goes through.

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

use crate::daemon::Daemon;
use crate::daemon::jobs::{Job, Output, SolvedRef};
use crate::daemon::remote_context;
use crate::daemon::session::Sessions;
use crate::frontend_request::{self, FrontendBridge, FrontendResult, LocalFiles, RemoteContext};

/// The daemon's side of a frontend request, in process: locals synced over the job's session,
/// images resolved by the engine's registry client, definitions solved on the job's build.
pub struct DaemonBridge<'a> {
    pub daemon: &'a Arc<Daemon>,
    pub job: &'a Arc<Job>,
    pub build: &'a Build,
    pub sessions: &'a Arc<Sessions>,
    pub inputs: &'a BTreeMap<String, pb::Definition>,
    pub max_parallel_exec: usize,
}

/// Runs the Dockerfile frontend with BuildKit's attributes `attrs` (and frontend `inputs`)
/// for `job`.
pub async fn dockerfile(
    daemon: &Arc<Daemon>,
    job: &Arc<Job>,
    build: &Build,
    attrs: &BTreeMap<String, String>,
    inputs: &BTreeMap<String, pb::Definition>,
) -> Result<FrontendResult<SolvedRef>, Status> {
    let bridge = DaemonBridge {
        daemon,
        job,
        build,
        sessions: &daemon.sessions,
        inputs,
        max_parallel_exec: daemon.max_parallelism,
    };
    frontend_request::run(&bridge, attrs).await
}

/// Runs `f` as the progress step `name` (started now, then done or failed).
async fn as_step<T>(
    progress: &Progress,
    step: &str,
    name: &str,
    f: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = std::time::Instant::now();
    progress.step(step, name, VertexState::Started, None, None);
    let r = f.await;
    finish_step(progress, step, name, started, &r);
    r
}

#[tonic::async_trait]
impl FrontendBridge for DaemonBridge<'_> {
    type Solved = SolvedRef;

    fn session_id(&self) -> Option<String> {
        Some(self.job.session())
    }

    async fn inputs(&self) -> Result<BTreeMap<String, pb::Definition>, Status> {
        Ok(self.inputs.clone())
    }

    async fn read_local(&self, at: LocalFiles<'_>) -> Result<Vec<Option<Vec<u8>>>, Status> {
        let step = step_id(&self.job.id, at.step_name);
        let mut follow = at.files.to_vec();
        if at.name == "dockerfile" {
            follow.push("dockerfile".into());
        }
        let read = async {
            let dir = sync_local(
                self.build,
                &self.job.progress,
                &step,
                LocalAt {
                    name: at.name,
                    session: at.session,
                    hint: at.shared_key_hint,
                },
                &follow,
            )
            .await;
            match dir {
                Ok(dir) => at.files.iter().map(|n| read_file(&dir, n)).collect(),
                Err(e) if at.optional => {
                    tracing::debug!("no {:?}: {}", at.files, e.message());
                    Ok(vec![None; at.files.len()])
                }
                Err(e) => Err(e),
            }
        };
        as_step(&self.job.progress, &step, at.step_name, read).await
    }

    async fn read_definition(
        &self,
        def: &pb::Definition,
        files: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, Status> {
        let solved = Box::pin(solve_definition(
            self.job,
            self.build,
            def,
            self.max_parallel_exec,
            false,
            None,
        ))
        .await?;
        let names = files.to_vec();
        solved
            .with_files(self.build, move |root| {
                names.iter().map(|n| read_file(root, n)).collect()
            })
            .await
    }

    async fn fetch_remote_context(&self, url: &str) -> Result<RemoteContext, Status> {
        let step = step_id(&self.job.id, "remote context");
        let fetched = as_step(
            &self.job.progress,
            &step,
            "[internal] load remote build context",
            remote_context::fetch(
                url,
                self.sessions,
                &self.job.session(),
                self.build.engine().state(),
                &self.job.provided,
            ),
        )
        .await?;
        Ok(RemoteContext {
            dockerfile_name: fetched.dockerfile_name,
            git_root: fetched.git_root,
        })
    }

    async fn lower(
        &self,
        dockerfile: &str,
        opts: frontend::BuildOptions,
    ) -> anyhow::Result<frontend::Lowered> {
        crate::pipeline::lower(
            self.build.registry(),
            dockerfile,
            opts,
            Some(&self.job.progress),
        )
        .await
    }

    async fn subrequest(
        &self,
        id: &str,
        dockerfile: &str,
        opts: frontend::BuildOptions,
    ) -> anyhow::Result<Option<BTreeMap<String, Vec<u8>>>> {
        crate::pipeline::subrequest(
            self.build.registry(),
            id,
            dockerfile,
            opts,
            Some(&self.job.progress),
        )
        .await
    }

    async fn warn(&self, found: &[frontend::Warning], filename: &str, dockerfile: &str) {
        let step = step_id(
            &self.job.id,
            &format!("[internal] load build definition from {filename}"),
        );
        for w in found {
            self.job.status.warning(frontend_request::warn_request(
                &step, w, filename, dockerfile,
            ));
        }
    }

    async fn solve(
        &self,
        def: &pb::Definition,
        options: &frontend::BuildOptions,
    ) -> Result<SolvedRef, Status> {
        let target_id = target_id(self.sessions, self.job, options).await;
        solve_definition(
            self.job,
            self.build,
            def,
            self.max_parallel_exec,
            false,
            Some(&target_id),
        )
        .await
    }

    fn scratch(&self) -> SolvedRef {
        SolvedRef {
            output: Output::Scratch,
            definition: None,
        }
    }

    async fn forward(
        &self,
        opts: BTreeMap<String, String>,
        inputs: &BTreeMap<String, pb::Definition>,
    ) -> Result<FrontendResult<SolvedRef>, Status> {
        Box::pin(crate::daemon::frontend_image::run(
            self.daemon,
            self.job,
            self.build,
            &opts,
            inputs,
        ))
        .await
    }

    fn runs_official_frontend_images(&self) -> bool {
        self.daemon.run_official_frontend_images
    }

    async fn notice(&self, message: &str) {
        let step = step_id(&self.job.id, message);
        self.job
            .progress
            .step(&step, message, VertexState::Started, None, None);
        self.job.progress.step(
            &step,
            message,
            VertexState::Completed,
            Some(std::time::Duration::ZERO),
            None,
        );
    }
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
