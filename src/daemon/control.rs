//! `moby.buildkit.v1.Control`: the daemon's main service.
//!
//! `Solve` runs one job: in the gateway mode every current client uses (no frontend, no
//! definition) it waits for the client's `LLBBridge/Return`; older clients name the frontend
//! (`dockerfile.v0`) or send a definition, which the daemon solves itself. Either way the
//! result is exported with the request's exporters, through the client's session. The job
//! runs in a task of its own: a client that goes away (the call dropped) cancels it, and the
//! build's lease is released whatever happened.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use memobuild_proto::control::control_server::Control;
use memobuild_proto::control::{
    BuildHistoryEvent, BuildHistoryRecord, BuildHistoryRequest, BytesMessage, DiskUsageRequest,
    DiskUsageResponse, Exporter, InfoRequest, InfoResponse, ListWorkersRequest,
    ListWorkersResponse, PruneRequest, SolveRequest, SolveResponse, StatusRequest, StatusResponse,
    UpdateBuildHistoryRequest, UpdateBuildHistoryResponse, UsageRecord,
};
use memobuild_worker::export::attestation::{Mode as ProvenanceMode, Provenance};
use memobuild_worker::export::spec::ExporterSpec;
use memobuild_worker::state::usage::{self, PrunePolicy};
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use crate::daemon::Daemon;
use crate::daemon::frontend;
use crate::daemon::jobs::{Job, Output, Returned};
use crate::daemon::session::outputs::SessionSink;
use crate::frontend_request::META_IMAGE_CONFIG;
use crate::session::headers::SessionHeaders;

/// How long `Status` waits for the Solve of its job to start (BuildKit waits about 6 s).
const STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(6);

/// The Control service over a daemon.
pub struct ControlService {
    daemon: Arc<Daemon>,
}

impl ControlService {
    /// The service for `daemon`.
    pub fn new(daemon: Arc<Daemon>) -> Self {
        ControlService { daemon }
    }
}

/// Cancels a job when the `Solve` call that runs it goes away.
struct CancelOnDrop(tokio_util::sync::CancellationToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// The exporters of a request, authoritative list first, then the deprecated single one.
fn exporter_requests(req: &SolveRequest) -> Vec<(String, BTreeMap<String, String>)> {
    if !req.exporters.is_empty() {
        return req
            .exporters
            .iter()
            .map(|e| (e.r#type.clone(), e.attrs.clone()))
            .collect();
    }
    if !req.exporter_deprecated.is_empty() {
        return vec![(
            req.exporter_deprecated.clone(),
            req.exporter_attrs_deprecated.clone(),
        )];
    }
    Vec::new()
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn solve(
        &self,
        request: Request<SolveRequest>,
    ) -> Result<Response<SolveResponse>, Status> {
        let req = request.into_inner();
        if req.r#ref.is_empty() {
            return Err(Status::invalid_argument("solve request without a ref"));
        }
        // Exporters are checked before anything is built.
        let mut specs = Vec::new();
        let mut warnings = Vec::new();
        for (kind, attrs) in exporter_requests(&req) {
            let parsed = ExporterSpec::from_attrs(&kind, &attrs)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            if matches!(parsed.spec, ExporterSpec::Oci { tar: false, .. }) {
                return Err(Status::invalid_argument(
                    "exporter `oci` with tar=false writes into the client's content store, which MemoBuild does not support yet; use tar=true",
                ));
            }
            for k in parsed.unknown {
                warnings.push(format!(
                    "exporter `{kind}`: option `{k}` is not supported and was ignored"
                ));
            }
            specs.push(parsed.spec);
        }
        if let Some(cache) = &req.cache {
            let exports = cache.exports.iter().map(|e| e.r#type.as_str());
            let imports = cache.imports.iter().map(|e| e.r#type.as_str());
            for t in exports.chain((!cache.export_ref_deprecated.is_empty()).then_some("registry"))
            {
                warnings.push(format!("cache export `{t}` is not supported by MemoBuild and was ignored: the build uses MemoBuild's own cache tiers (the daemon's local cache, and the remote cache set by `--remote-cache` or `remote-cache` under `[memobuild]` in its config)"));
            }
            for t in imports.chain(cache.import_refs_deprecated.iter().map(|_| "registry")) {
                warnings.push(format!(
                    "cache import `{t}` is not supported by MemoBuild and was ignored: the build uses MemoBuild's own cache tiers (the daemon's local cache, and the remote cache set by `--remote-cache` or `remote-cache` under `[memobuild]` in its config)"
                ));
            }
        }

        // As buildkitd: asking for an entitlement the daemon does not grant fails the request,
        // whether or not a step uses it.
        for e in &req.entitlements {
            if !self.daemon.allowed_entitlements.contains(e) {
                return Err(Status::permission_denied(format!(
                    "granting entitlement {e} is not allowed by build daemon configuration"
                )));
            }
        }
        let job = self.daemon.jobs.get_or_create(&req.r#ref);
        if job.is_started() {
            return Err(Status::already_exists(format!(
                "job `{}` already exists",
                req.r#ref
            )));
        }
        for w in &warnings {
            job.status.warn(w);
        }
        let caller = crate::daemon::session::caller(
            &self.daemon.sessions,
            &req.session,
            self.daemon.engine.state(),
            job.provided.clone(),
        );
        let build = self
            .daemon
            .engine
            .build(caller)
            .await
            .map_err(|e| Status::unavailable(format!("cannot start the build: {e}")))?;
        job.set_inputs(req.frontend_inputs.clone());
        let returned = job.start(
            build.clone(),
            &req.session,
            &req.entitlements,
            &self.daemon.allowed_entitlements,
        );
        let _cancel = CancelOnDrop(job.cancel.clone());
        // Builds a client marks internal (buildx's probes) are not recorded, as in buildkitd.
        let recorded = !req.internal;
        if recorded {
            self.daemon.history.started(history_record(&req));
        }
        let (daemon, task_job) = (self.daemon.clone(), job.clone());
        let task = tokio::spawn(async move {
            let _running = daemon.running();
            let work: futures::future::BoxFuture<'_, Result<Finished, Status>> =
                Box::pin(run(&daemon, &task_job, &req, specs, returned));
            let result = tokio::select! {
                r = work => r,
                _ = task_job.cancel.cancelled() => Err(Status::cancelled("the build was cancelled: the client went away or the daemon is stopping")),
                _ = daemon.shutdown.cancelled() => Err(Status::unavailable("the daemon is stopping")),
            };
            task_job.stop_tasks().await;
            if let Some(build) = task_job.build() {
                build.flush_uploads().await;
                build.finish().await;
            }
            task_job.provided.release();
            daemon.after_build();
            if recorded {
                let no_response = Default::default();
                daemon.history.completed(
                    &task_job.id,
                    result.as_ref().err(),
                    result
                        .as_ref()
                        .map_or(&no_response, |r| &r.response.exporter_response),
                    task_job.status.step_counts(),
                    result.as_ref().ok().and_then(|r| r.provenance.as_deref()),
                );
                daemon
                    .history
                    .save_status(&task_job.id, &task_job.status.subscribe().history);
            }
            task_job.finish();
            daemon.jobs.remove_later(&task_job.id);
            result
        });
        match task.await {
            Ok(r) => r.map(|f| Response::new(f.response)),
            Err(e) => Err(Status::internal(format!("the build task failed: {e}"))),
        }
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<BoxStream<StatusResponse>>, Status> {
        let id = request.into_inner().r#ref;
        // A build that ended a while ago replays its kept progress (`buildx history logs`).
        if self
            .daemon
            .jobs
            .started(&id, std::time::Duration::ZERO)
            .await
            .is_none()
            && let Some(kept) = self.daemon.history.status(&id)
        {
            self.daemon.jobs.remove_if_unstarted(&id);
            return Ok(Response::new(
                futures::stream::iter(kept.into_iter().map(Ok)).boxed(),
            ));
        }
        let Some(job) = self.daemon.jobs.started(&id, STATUS_WAIT).await else {
            self.daemon.jobs.remove_if_unstarted(&id);
            return Err(Status::not_found(format!("no such job `{id}`")));
        };
        let sub = job.status.subscribe();
        let history = futures::stream::iter(sub.history.into_iter().map(Ok));
        let live = match sub.live {
            Some(rx) => tokio_stream::wrappers::BroadcastStream::new(rx)
                .filter_map(|r| futures::future::ready(r.ok().map(Ok)))
                .boxed(),
            None => futures::stream::empty().boxed(),
        };
        Ok(Response::new(history.chain(live).boxed()))
    }

    async fn session(
        &self,
        request: Request<tonic::Streaming<BytesMessage>>,
    ) -> Result<Response<BoxStream<BytesMessage>>, Status> {
        let headers = SessionHeaders::from_metadata(request.metadata())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let out = self.daemon.sessions.open(headers, request.into_inner());
        Ok(Response::new(
            out.map(|data| Ok(BytesMessage { data })).boxed(),
        ))
    }

    async fn list_workers(
        &self,
        _request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        Ok(Response::new(ListWorkersResponse {
            record: vec![self.daemon.worker_record()],
        }))
    }

    async fn info(&self, _request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            buildkit_version: Some(crate::daemon::convert::version()),
        }))
    }

    async fn disk_usage(
        &self,
        _request: Request<DiskUsageRequest>,
    ) -> Result<Response<DiskUsageResponse>, Status> {
        let state = self.daemon.engine.state().clone();
        let entries = tokio::task::spawn_blocking(move || usage::scan(&state))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("reading the cache: {e}")))?;
        Ok(Response::new(DiskUsageResponse {
            record: entries
                .iter()
                .map(crate::daemon::convert::usage_record)
                .collect(),
        }))
    }

    async fn prune(
        &self,
        request: Request<PruneRequest>,
    ) -> Result<Response<BoxStream<UsageRecord>>, Status> {
        let req = request.into_inner();
        let keep_bytes = [req.reserved_space, req.max_used_space]
            .into_iter()
            .filter(|b| *b > 0)
            .min()
            .and_then(|b| u64::try_from(b).ok());
        let keep_duration = u64::try_from(req.keep_duration)
            .ok()
            .filter(|d| *d > 0)
            .map(std::time::Duration::from_nanos);
        // As buildctl: no option at all prunes everything unused (BuildKit's default policy
        // for a bare `prune` is "all unused"); here every entry is unused between builds.
        let policy = PrunePolicy {
            all: req.all || (keep_bytes.is_none() && keep_duration.is_none()),
            keep_size: keep_bytes,
            keep_duration,
            dry_run: false,
        };
        let state = self.daemon.engine.state().clone();
        let pruned = tokio::task::spawn_blocking(move || usage::prune(&state, &policy))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("pruning the cache: {e}")))?;
        let records: Vec<Result<UsageRecord, Status>> = pruned
            .removed
            .iter()
            .map(|e| Ok(crate::daemon::convert::usage_record(e)))
            .collect();
        Ok(Response::new(futures::stream::iter(records).boxed()))
    }

    async fn listen_build_history(
        &self,
        request: Request<BuildHistoryRequest>,
    ) -> Result<Response<BoxStream<BuildHistoryEvent>>, Status> {
        let req = request.into_inner();
        // Subscribed before the records are listed, so that nothing falls between the two.
        let live = self.daemon.history.subscribe();
        let existing =
            futures::stream::iter(self.daemon.history.existing(&req).into_iter().map(Ok));
        let stream = if req.early_exit {
            existing.boxed()
        } else {
            let shutdown = self.daemon.shutdown.clone();
            let live = tokio_stream::wrappers::BroadcastStream::new(live)
                .filter_map(move |e| {
                    // Every later event of the builds asked for, the end of an active one too.
                    let wanted = e.ok().filter(|e| {
                        e.record
                            .as_ref()
                            .is_some_and(|r| req.r#ref.is_empty() || req.r#ref == r.r#ref)
                    });
                    futures::future::ready(wanted.map(Ok))
                })
                .take_until(async move { shutdown.cancelled().await });
            existing.chain(live).boxed()
        };
        let mut response = Response::new(stream);
        // `docker buildx history ls` shows a running build's duration against the daemon's clock.
        let now = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
        if let Ok(v) = now.parse() {
            response
                .metadata_mut()
                .insert("buildkit-current-timestamp", v);
        }
        Ok(response)
    }

    async fn update_build_history(
        &self,
        request: Request<UpdateBuildHistoryRequest>,
    ) -> Result<Response<UpdateBuildHistoryResponse>, Status> {
        let req = request.into_inner();
        let found = if req.delete {
            // Deleting what is already gone succeeds, as in buildkitd.
            self.daemon.history.delete(&req.r#ref);
            true
        } else if req.finalize {
            // Traces and logs are not kept in records, so there is nothing to flush.
            self.daemon.history.contains(&req.r#ref)
        } else {
            self.daemon.history.pin(&req.r#ref, req.pinned)
        };
        if found {
            Ok(Response::new(UpdateBuildHistoryResponse {}))
        } else {
            Err(Status::not_found(format!(
                "no build record `{}`",
                req.r#ref
            )))
        }
    }
}

/// The history record of a build as it starts: what the client asked for. Exporters keep
/// their attributes (a destination stays with the client and is not among them).
fn history_record(req: &SolveRequest) -> BuildHistoryRecord {
    BuildHistoryRecord {
        r#ref: req.r#ref.clone(),
        frontend: req.frontend.clone(),
        frontend_attrs: req.frontend_attrs.clone(),
        exporters: exporter_requests(req)
            .into_iter()
            .map(|(r#type, attrs)| Exporter {
                r#type,
                attrs: attrs.into_iter().collect(),
            })
            .collect(),
        ..Default::default()
    }
}

/// The provenance attestation `req` asks for (`attest:provenance`, which buildx sends by
/// default), with what the daemon knows of the build; a note for what is not attached: an
/// inline-only provenance to archives (BuildKit's exporters leave it out too), any to
/// archives or directories otherwise, and SBOMs, which MemoBuild does not generate.
fn provenance(
    req: &SolveRequest,
    job: &Job,
    specs: &[ExporterSpec],
    progress: &memobuild_worker::progress::Progress,
    started: std::time::SystemTime,
) -> Result<Option<Provenance>, Status> {
    if req.frontend_attrs.contains_key("attest:sbom") {
        crate::pipeline::note(
            progress,
            "warning: SBOM attestations are not generated by MemoBuild; the image has none",
        );
    }
    let Some(value) = req.frontend_attrs.get("attest:provenance") else {
        return Ok(None);
    };
    let Some(mut p) =
        Provenance::parse(value).map_err(|e| Status::invalid_argument(e.to_string()))?
    else {
        return Ok(None);
    };
    let pushes = specs
        .iter()
        .any(|s| matches!(s, ExporterSpec::Image { push: true, .. }));
    let others = specs
        .iter()
        .any(|s| !matches!(s, ExporterSpec::Image { .. }));
    if others && !p.inline_only {
        crate::pipeline::note(
            progress,
            "warning: provenance is attached to pushed images only (not to archives or directories)",
        );
    }
    if p.mode == ProvenanceMode::Max {
        crate::pipeline::note(
            progress,
            "note: provenance mode=max records build arguments and labels; MemoBuild records no LLB definition, sources or layers in it",
        );
    }
    if !pushes {
        return Ok(None);
    }
    let (frontend, attrs) = requested_frontend(req, job);
    crate::pipeline::describe_provenance(&mut p, frontend, attrs, req.r#ref.clone(), started);
    Ok(Some(p))
}

/// The frontend the build ran and its attributes; a client-side frontend (buildx) names the
/// one it ran in its gateway solve.
fn requested_frontend(req: &SolveRequest, job: &Job) -> (String, BTreeMap<String, String>) {
    match (req.frontend.is_empty(), job.frontend_request()) {
        (true, Some(r)) => r,
        _ => (
            req.frontend.clone(),
            req.frontend_attrs.clone().into_iter().collect(),
        ),
    }
}

/// The provenance predicate buildkitd keeps with every build's history record, whatever the
/// build asked to attach to its image: mode `max`, the builder id the request named.
fn history_provenance(
    req: &SolveRequest,
    job: &Job,
    definition: &memobuild_proto::pb::Definition,
    started: std::time::SystemTime,
) -> Vec<u8> {
    let mut p = Provenance::new(ProvenanceMode::Max);
    if let Some(Ok(Some(asked))) = req
        .frontend_attrs
        .get("attest:provenance")
        .map(|v| Provenance::parse(v))
    {
        p.builder_id = asked.builder_id;
    }
    let (frontend, attrs) = requested_frontend(req, job);
    crate::pipeline::describe_provenance(&mut p, frontend, attrs, req.r#ref.clone(), started);
    let finished = humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string();
    p.predicate_json(
        &p.builder_platform,
        &memobuild_worker::export::attestation::base_images(definition),
        &finished,
    )
}

/// What a finished build returns to its client, and the provenance its history record keeps.
struct Finished {
    response: SolveResponse,
    provenance: Option<Vec<u8>>,
}

/// Runs the job of `req` and exports its result.
async fn run(
    daemon: &Arc<Daemon>,
    job: &Arc<Job>,
    req: &SolveRequest,
    specs: Vec<ExporterSpec>,
    returned: tokio::sync::oneshot::Receiver<Returned>,
) -> Result<Finished, Status> {
    let started = std::time::SystemTime::now();
    let build = job
        .build()
        .ok_or_else(|| Status::internal("the job has no build"))?;
    let (solved, metadata) = match (&req.definition, req.frontend.as_str()) {
        (Some(def), "") if !def.def.is_empty() => {
            let solved =
                frontend::solve_definition(job, &build, def, daemon.max_parallelism, false, None)
                    .boxed()
                    .await?;
            (Some(solved), BTreeMap::new())
        }
        (Some(def), f) if !def.def.is_empty() && !f.is_empty() => {
            return Err(Status::invalid_argument(
                "a solve request names both a definition and a frontend",
            ));
        }
        (_, "dockerfile.v0") => {
            let r = frontend::dockerfile(
                daemon,
                job,
                &build,
                &req.frontend_attrs,
                &req.frontend_inputs,
            )
            .boxed()
            .await?;
            (Some(r.solved), r.metadata)
        }
        (_, "gateway.v0") => {
            let r = crate::daemon::frontend_image::run(
                daemon,
                job,
                &build,
                &req.frontend_attrs,
                &req.frontend_inputs,
            )
            .boxed()
            .await?;
            (Some(r.solved), r.metadata)
        }
        (_, "") => match returned.await {
            Ok(Returned::Result { solved, metadata }) => (solved, metadata),
            Ok(Returned::Error(status)) => return Err(status),
            Err(_) => return Err(Status::cancelled("the build ended without a result")),
        },
        (_, other) => {
            return Err(Status::invalid_argument(format!(
                "frontend `{other}` is not supported (supported: dockerfile.v0, gateway.v0, or a client-side frontend over LLBBridge)"
            )));
        }
    };
    let definition = solved
        .as_ref()
        .and_then(|s| s.definition.clone())
        .unwrap_or_default();
    // A result that is a filesystem has its provenance kept, as buildkitd keeps one per result.
    let kept = matches!(solved.as_ref().map(|s| &s.output), Some(Output::Fs(_)))
        .then(|| history_provenance(req, job, &definition, started));
    if specs.is_empty() {
        return Ok(Finished {
            response: SolveResponse::default(),
            provenance: kept,
        });
    }
    let fs = match solved.map(|s| s.output) {
        Some(Output::Fs(fs)) => fs,
        Some(Output::Scratch) | None => Default::default(),
        Some(Output::Local(_)) => {
            return Err(Status::invalid_argument(
                "the result is a local directory, not a filesystem; copy it into one to export it",
            ));
        }
    };
    let image_config = metadata.get(META_IMAGE_CONFIG).cloned().unwrap_or_default();
    let sink = SessionSink::new(Arc::new(crate::daemon::session::Scope {
        sessions: daemon.sessions.clone(),
        session_id: req.session.clone(),
        state: daemon.engine.state().clone(),
        provided: job.provided.clone(),
    }));
    let attached = provenance(req, job, &specs, &job.progress, started)?;
    let source = crate::pipeline::ExportSource {
        fs: &fs,
        image_config: &image_config,
        definition: &definition,
    };
    let responses = crate::pipeline::export(&build, source, &specs, &sink, &job.progress, attached)
        .boxed()
        .await
        .map_err(|e| Status::unknown(format!("{e:#}")))?;
    let mut exporter_response = BTreeMap::new();
    for r in responses {
        exporter_response.extend(r);
    }
    // MemoBuild's own: how many of the build's cacheable steps ran and how many came from the
    // cache (buildx writes them to `--metadata-file`).
    let (executed, cached) = job.step_counts();
    exporter_response.insert("memobuild.steps.executed".into(), executed.to_string());
    exporter_response.insert("memobuild.steps.cached".into(), cached.to_string());
    Ok(Finished {
        response: SolveResponse { exporter_response },
        provenance: kept,
    })
}
