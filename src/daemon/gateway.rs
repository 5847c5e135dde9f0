//! `moby.buildkit.v1.frontend.LLBBridge`: the gateway a client-side build function (buildctl's
//! and buildx's) drives its build through, on the same connection as `Control`.
//!
//! Every call carries `buildkit-controlapi-buildid`, the `Ref` of the `Control/Solve` whose job
//! it works in; it waits a little for that Solve to start. `Solve` runs a definition or the
//! `dockerfile.v0` frontend on the job's build and hands back a result id; `ReadFile`,
//! `ReadDir` and `StatFile` read files of such results; `Return` gives the job its final
//! result (or error), which the waiting Solve exports.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use futures::FutureExt;

use memobuild_proto::fsutil::types::Stat;
use memobuild_proto::gateway::llb_bridge_server::LlbBridge;
use memobuild_proto::gateway::{
    EvaluateRequest, EvaluateResponse, InputsRequest, InputsResponse, PingRequest, PongResponse,
    ReadDirRequest, ReadDirResponse, ReadFileRequest, ReadFileResponse, ResolveImageConfigRequest,
    ResolveImageConfigResponse, ReturnRequest, ReturnResponse, SolveRequest, SolveResponse,
    StatFileRequest, StatFileResponse, WarnRequest, WarnResponse,
};
use memobuild_proto::gateway::{Ref, Result as GatewayResult, result};
use memobuild_worker::progress::VertexState;
use memobuild_worker::registry::ResolveMode;
use tonic::{Request, Response, Status};

use crate::daemon::Daemon;
use crate::daemon::convert;
use crate::daemon::frontend;
use crate::daemon::jobs::{GATEWAY_WAIT, Job, Output, Returned, SolvedRef};

/// The metadata key naming the job of an LLBBridge call.
pub const BUILD_ID: &str = "buildkit-controlapi-buildid";

/// The LLBBridge service over a daemon.
pub struct GatewayService {
    daemon: Arc<Daemon>,
    /// For a frontend process's own connection (a `gateway.v0` image): the job every call
    /// works in, and where its `Return` goes.
    bound: Option<Bound>,
}

/// A connection that belongs to one frontend process of a job.
struct Bound {
    job: Arc<Job>,
    /// The frontend inputs of the request that started the process.
    inputs: BTreeMap<String, memobuild_proto::pb::Definition>,
    returned: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<Returned>>>,
}

impl GatewayService {
    /// The service for `daemon`, its calls routed by `buildkit-controlapi-buildid`.
    pub fn new(daemon: Arc<Daemon>) -> Self {
        GatewayService {
            daemon,
            bound: None,
        }
    }

    /// The service of a frontend process's connection: every call works in `job`, without
    /// metadata, and its `Return` is sent to `returned`.
    pub fn for_frontend(
        daemon: Arc<Daemon>,
        job: Arc<Job>,
        inputs: BTreeMap<String, memobuild_proto::pb::Definition>,
        returned: tokio::sync::oneshot::Sender<Returned>,
    ) -> Self {
        GatewayService {
            daemon,
            bound: Some(Bound {
                job,
                inputs,
                returned: std::sync::Mutex::new(Some(returned)),
            }),
        }
    }

    /// The job a call works in.
    async fn job<T>(&self, request: &Request<T>) -> Result<Arc<Job>, Status> {
        if let Some(b) = &self.bound {
            return Ok(b.job.clone());
        }
        let id = request
            .metadata()
            .get(BUILD_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Status::invalid_argument(format!("LLBBridge call without `{BUILD_ID}` metadata"))
            })?
            .to_owned();
        self.daemon
            .jobs
            .started(&id, GATEWAY_WAIT)
            .await
            .ok_or_else(|| Status::not_found(format!("no build `{id}`: its Solve never started")))
    }

    /// A result the job handed out.
    async fn solved<T>(&self, request: &Request<T>, id: &str) -> Result<SolvedRef, Status> {
        let job = self.job(request).await?;
        if id.is_empty() {
            return Ok(SolvedRef {
                output: Output::Scratch,
                definition: None,
            });
        }
        job.result(id)
            .ok_or_else(|| Status::not_found(format!("no result `{id}` in this build")))
    }

    /// Runs `f` on the directory holding a result's files.
    async fn with_files<R: Send + 'static>(
        &self,
        job: &Job,
        solved: SolvedRef,
        f: impl FnOnce(&Path) -> Result<R, Status> + Send + 'static,
    ) -> Result<R, Status> {
        let build = job
            .build()
            .ok_or_else(|| Status::failed_precondition("the build is over"))?;
        solved.with_files(&build, f).await
    }
}

/// `rel` inside `root`, symbolic links resolved inside it.
fn inside(root: &Path, rel: &str) -> Result<std::path::PathBuf, Status> {
    memobuild_worker::fsops::resolve_in_root(root, rel, true)
        .map_err(|e| Status::invalid_argument(format!("`{rel}`: {e}")))
}

fn io_status(what: &str, e: std::io::Error) -> Status {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            Status::not_found(format!("{what}: no such file or directory"))
        }
        _ => Status::internal(format!("{what}: {e}")),
    }
}

/// The fsutil stat of `path`, named `name`.
fn stat_of(path: &Path, name: &str) -> Result<Stat, Status> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(path).map_err(|e| io_status(name, e))?;
    let linkname = if md.file_type().is_symlink() {
        std::fs::read_link(path)
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok(Stat {
        path: name.to_owned(),
        mode: memobuild_worker::filesync::mode::go_mode_from_unix(md.mode()),
        uid: md.uid(),
        gid: md.gid(),
        size: i64::try_from(md.size()).unwrap_or(i64::MAX),
        mod_time: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        linkname,
        devmajor: 0,
        devminor: 0,
        xattrs: BTreeMap::new(),
    })
}

#[tonic::async_trait]
impl LlbBridge for GatewayService {
    async fn ping(&self, _request: Request<PingRequest>) -> Result<Response<PongResponse>, Status> {
        Ok(Response::new(PongResponse {
            frontend_api_caps: convert::api_caps(convert::GATEWAY_CAPS),
            llb_caps: convert::api_caps(&convert::llb_caps()),
            workers: vec![self.daemon.worker_record()],
        }))
    }

    async fn solve(
        &self,
        request: Request<SolveRequest>,
    ) -> Result<Response<SolveResponse>, Status> {
        let job = self.job(&request).await?;
        let req = request.into_inner();
        let build = job
            .build()
            .ok_or_else(|| Status::failed_precondition("the build is over"))?;
        let has_def = req.definition.as_ref().is_some_and(|d| !d.def.is_empty());
        if has_def && !req.frontend.is_empty() {
            return Err(Status::invalid_argument(
                "a solve request names both a definition and a frontend",
            ));
        }
        let (daemon, work_job, work_req) = (self.daemon.clone(), job.clone(), req.clone());
        let (solved, metadata) = job
            .run(async move {
                let (job, req) = (work_job, work_req);
                if !has_def && !req.frontend.is_empty() {
                    job.set_frontend_request(&req.frontend, &req.frontend_opt);
                }
                match (has_def, req.frontend.as_str()) {
                    (true, _) => {
                        let def = req.definition.clone().unwrap_or_default();
                        let solved = frontend::solve_definition(
                            &job,
                            &build,
                            &def,
                            daemon.max_parallelism,
                            false,
                            None,
                        )
                        .boxed()
                        .await?;
                        Ok((Some(solved), BTreeMap::new()))
                    }
                    (false, "dockerfile.v0") => {
                        let r = frontend::dockerfile(
                            &daemon,
                            &job,
                            &build,
                            &req.frontend_opt,
                            &req.frontend_inputs,
                        )
                        .boxed()
                        .await?;
                        Ok((Some(r.solved), r.metadata))
                    }
                    (false, "gateway.v0") => {
                        let r = crate::daemon::frontend_image::run(
                            &daemon,
                            &job,
                            &build,
                            &req.frontend_opt,
                            &req.frontend_inputs,
                        )
                        .boxed()
                        .await?;
                        Ok((Some(r.solved), r.metadata))
                    }
                    (false, "") => Ok((None, BTreeMap::new())),
                    (false, other) => Err(Status::invalid_argument(format!(
                        "frontend `{other}` is not supported (supported: dockerfile.v0, gateway.v0)"
                    ))),
                }
            })
            .await?;
        let reference = solved.map(|s| {
            let def = s.definition.clone();
            let id = job.add_result(s);
            Ref { id, def }
        });
        if !req.allow_result_return {
            // Clients before the result-return cap read only the id.
            return Ok(Response::new(SolveResponse {
                r#ref: reference.map(|r| r.id).unwrap_or_default(),
                result: None,
            }));
        }
        Ok(Response::new(SolveResponse {
            r#ref: String::new(),
            result: Some(GatewayResult {
                metadata,
                attestations: BTreeMap::new(),
                result: Some(result::Result::Ref(reference.unwrap_or_default())),
            }),
        }))
    }

    async fn r#return(
        &self,
        request: Request<ReturnRequest>,
    ) -> Result<Response<ReturnResponse>, Status> {
        let job = self.job(&request).await?;
        let req = request.into_inner();
        let returned = match (req.error, req.result) {
            (Some(e), _) if e.code != 0 => Returned::Error(convert::returned_error(e)),
            (_, Some(r)) => {
                let id = match r.result {
                    Some(result::Result::Ref(Ref { id, .. })) => id,
                    Some(result::Result::RefDeprecated(id)) => id,
                    Some(result::Result::Refs(_)) | Some(result::Result::RefsDeprecated(_)) => {
                        return Err(Status::unimplemented(
                            "results with several references (multi-platform) are not supported yet",
                        ));
                    }
                    None => String::new(),
                };
                let solved = if id.is_empty() {
                    None
                } else {
                    Some(job.result(&id).ok_or_else(|| {
                        Status::not_found(format!("no result `{id}` in this build"))
                    })?)
                };
                Returned::Result {
                    solved,
                    metadata: r.metadata,
                }
            }
            (_, None) => Returned::Result {
                solved: None,
                metadata: BTreeMap::new(),
            },
        };
        let given = match &self.bound {
            Some(b) => b
                .returned
                .lock()
                .ok()
                .and_then(|mut r| r.take())
                .is_some_and(|tx| tx.send(returned).is_ok()),
            None => job.give_return(returned),
        };
        if !given {
            return Err(Status::failed_precondition(
                "this build already returned, or its Solve does not wait for a result",
            ));
        }
        Ok(Response::new(ReturnResponse {}))
    }

    async fn read_file(
        &self,
        request: Request<ReadFileRequest>,
    ) -> Result<Response<ReadFileResponse>, Status> {
        let solved = self.solved(&request, &request.get_ref().r#ref).await?;
        let job = self.job(&request).await?;
        let req = request.into_inner();
        let data = self
            .with_files(&job, solved, move |root| {
                let path = inside(root, &req.file_path)?;
                let bytes = std::fs::read(&path).map_err(|e| io_status(&req.file_path, e))?;
                Ok(match req.range {
                    Some(r) => {
                        let start = usize::try_from(r.offset).unwrap_or(0).min(bytes.len());
                        let len = usize::try_from(r.length).unwrap_or(usize::MAX);
                        let end = start.saturating_add(len).min(bytes.len());
                        bytes[start..end].to_vec()
                    }
                    None => bytes,
                })
            })
            .await?;
        Ok(Response::new(ReadFileResponse { data }))
    }

    async fn read_dir(
        &self,
        request: Request<ReadDirRequest>,
    ) -> Result<Response<ReadDirResponse>, Status> {
        let solved = self.solved(&request, &request.get_ref().r#ref).await?;
        let job = self.job(&request).await?;
        let req = request.into_inner();
        let entries = self
            .with_files(&job, solved, move |root| {
                let dir = inside(root, &req.dir_path)?;
                let pattern = (!req.include_pattern.is_empty())
                    .then(|| {
                        memobuild_worker::patterns::PatternMatcher::new(std::slice::from_ref(
                            &req.include_pattern,
                        ))
                    })
                    .transpose()
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let mut out = Vec::new();
                let list = std::fs::read_dir(&dir).map_err(|e| io_status(&req.dir_path, e))?;
                let mut names: Vec<String> = list
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                for name in names {
                    if let Some(p) = &pattern
                        && !p.matches(&name)
                    {
                        continue;
                    }
                    out.push(stat_of(&dir.join(&name), &name)?);
                }
                Ok(out)
            })
            .await?;
        Ok(Response::new(ReadDirResponse { entries }))
    }

    async fn stat_file(
        &self,
        request: Request<StatFileRequest>,
    ) -> Result<Response<StatFileResponse>, Status> {
        let solved = self.solved(&request, &request.get_ref().r#ref).await?;
        let job = self.job(&request).await?;
        let req = request.into_inner();
        let stat = self
            .with_files(&job, solved, move |root| {
                let path = inside(root, &req.path)?;
                stat_of(&path, &req.path)
            })
            .await?;
        Ok(Response::new(StatFileResponse { stat: Some(stat) }))
    }

    async fn resolve_image_config(
        &self,
        request: Request<ResolveImageConfigRequest>,
    ) -> Result<Response<ResolveImageConfigResponse>, Status> {
        let job = self.job(&request).await?;
        let req = request.into_inner();
        if req.resolver_type != 0 {
            return Err(Status::unimplemented(
                "resolving images from an OCI layout is not supported yet",
            ));
        }
        let build = job
            .build()
            .ok_or_else(|| Status::failed_precondition("the build is over"))?;
        let platform = req.platform.unwrap_or_else(convert::host_platform);
        let mode = ResolveMode::from_name(&req.resolve_mode);
        // A named look-up (`LogName`, the frontend's `[internal] load metadata for …`) is a
        // step of the build's progress, as buildkitd shows it.
        let step = (!req.log_name.is_empty()).then(|| {
            let id = format!(
                "sha256:{}",
                blake3::hash(format!("{}\0{}", job.id, req.log_name).as_bytes()).to_hex()
            );
            job.progress
                .step(&id, &req.log_name, VertexState::Started, None, None);
            (id, std::time::Instant::now())
        });
        let resolved =
            memobuild_worker::resolve_image_config(build.registry(), &req.r#ref, &platform, mode)
                .await
                .map_err(|e| Status::unknown(e.to_string()));
        if let Some((id, started)) = step {
            let (state, error) = match &resolved {
                Ok(_) => (VertexState::Completed, None),
                Err(e) => (VertexState::Error, Some(e.message().to_owned())),
            };
            job.progress
                .step(&id, &req.log_name, state, Some(started.elapsed()), error);
        }
        let (digest, config) = resolved?;
        Ok(Response::new(ResolveImageConfigResponse {
            digest,
            config,
            r#ref: req.r#ref,
        }))
    }

    async fn evaluate(
        &self,
        request: Request<EvaluateRequest>,
    ) -> Result<Response<EvaluateResponse>, Status> {
        // Results are solved when asked for; there is nothing left to evaluate.
        let r = request.get_ref().r#ref.clone();
        self.solved(&request, &r).await?;
        Ok(Response::new(EvaluateResponse {}))
    }

    async fn inputs(
        &self,
        request: Request<InputsRequest>,
    ) -> Result<Response<InputsResponse>, Status> {
        if let Some(b) = &self.bound {
            return Ok(Response::new(InputsResponse {
                definitions: b.inputs.clone(),
            }));
        }
        let job = self.job(&request).await?;
        Ok(Response::new(InputsResponse {
            definitions: job.inputs(),
        }))
    }

    async fn warn(&self, request: Request<WarnRequest>) -> Result<Response<WarnResponse>, Status> {
        let job = self.job(&request).await?;
        job.status.warning(request.into_inner());
        Ok(Response::new(WarnResponse {}))
    }
}
