//! `gateway.v0`: a frontend image run as a container whose stdin and stdout carry LLBBridge, as
//! buildkitd runs `# syntax=` images (`frontend/gateway/gateway.go`).
//!
//! The image named by the `source` option is resolved and pulled like a base image, then its
//! entrypoint (default `/run`) runs on a throw-away copy of its filesystem, in its working
//! directory, with its environment plus `BUILDKIT_FRONTEND_OPT_n=KEY=VALUE` for each option,
//! `BUILDKIT_SESSION_ID`, `BUILDKIT_WORKERS` and `BUILDKIT_EXPORTEDPRODUCT`; without network
//! when its `moby.buildkit.frontend.network.none` label says so. The caps the request asks for
//! (`frontend.caps`, and `moby.buildkit.frontend.inputs` when it carries inputs) must be among
//! the image's `moby.buildkit.frontend.caps`. The process's calls work in the job that asked;
//! its `Return` is the result, and a process that exits without one fails the request.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use memobuild_frontend as frontend;
use memobuild_proto::gateway::llb_bridge_server::LlbBridgeServer;
use memobuild_proto::pb;
use memobuild_worker::Build;
use memobuild_worker::containerd::{NetworkMode, OutputStream, RunRequest, StdioPipe};
use memobuild_worker::progress::VertexState;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tonic::Status;

use crate::daemon::Daemon;
use crate::daemon::frontend::solve_definition;
use crate::daemon::gateway::GatewayService;
use crate::daemon::jobs::{Job, Output, Returned, SolvedRef};
use crate::frontend_request::FrontendResult;

/// The option naming the frontend image (BuildKit's `frontend.KeySource`).
pub const SOURCE: &str = "source";
/// How long a frontend that returned may take to exit before it is stopped.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// How many stderr lines of a failed frontend the error keeps.
const TAIL_LINES: usize = 20;

/// Runs the frontend image `attrs[source]` for `job` with options `attrs` and `inputs`.
pub async fn run(
    daemon: &Arc<Daemon>,
    job: &Arc<Job>,
    build: &Build,
    attrs: &BTreeMap<String, String>,
    inputs: &BTreeMap<String, pb::Definition>,
) -> Result<FrontendResult<SolvedRef>, Status> {
    let source = attrs
        .get(SOURCE)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Status::invalid_argument("no source specified for gateway"))?;
    let reference = frontend::normalize_image_ref(source)
        .map_err(|e| Status::invalid_argument(format!("frontend image: {e}")))?;

    // Resolved and pulled as a base image is, shown as buildkitd shows it.
    let platform = crate::pipeline::pb_platform(&frontend::Platform::host());
    let step = format!(
        "sha256:{}",
        blake3::hash(format!("{}\0frontend {reference}", job.id).as_bytes()).to_hex()
    );
    let step_name = format!("resolve image config for docker-image://{reference}");
    let started = std::time::Instant::now();
    job.progress
        .step(&step, &step_name, VertexState::Started, None, None);
    let resolved = memobuild_worker::resolve_image_config(
        build.registry(),
        &reference,
        &platform,
        memobuild_worker::registry::ResolveMode::Default,
    )
    .await
    .map_err(|e| Status::unknown(format!("frontend image `{source}`: {e}")));
    let (state, error) = match &resolved {
        Ok(_) => (VertexState::Completed, None),
        Err(e) => (VertexState::Error, Some(e.message().to_owned())),
    };
    job.progress
        .step(&step, &step_name, state, Some(started.elapsed()), error);
    let (digest, config) = resolved?;
    let image = ImageSpec::parse(&config)
        .map_err(|e| Status::invalid_argument(format!("frontend image `{source}`: {e}")))?;
    check_caps(attrs, inputs, &image)?;

    let pinned = format!("{reference}@{digest}");
    let solved = solve_definition(
        job,
        build,
        &image_definition(&pinned),
        daemon.max_parallelism,
        false,
        None,
    )
    .await?;
    let fs = match solved.output {
        Output::Fs(fs) => fs,
        _ => {
            return Err(Status::invalid_argument(format!(
                "frontend image `{source}` has no filesystem"
            )));
        }
    };

    let (ours, theirs) = tokio::io::duplex(1 << 20);
    let (returned_tx, returned_rx) = tokio::sync::oneshot::channel();
    let service = LlbBridgeServer::new(GatewayService::for_frontend(
        daemon.clone(),
        job.clone(),
        inputs.clone(),
        returned_tx,
    ))
    .max_decoding_message_size(crate::daemon::serve::MAX_MESSAGE)
    .max_encoding_message_size(crate::daemon::serve::MAX_MESSAGE);
    let stop_server = tokio_util::sync::CancellationToken::new();
    let server = {
        let stop = stop_server.clone();
        tokio::spawn(async move {
            // One connection; the stream must not end, or tonic shuts the server (and the
            // connection, with GOAWAY) down at once.
            let incoming = futures::StreamExt::chain(
                futures::stream::once(async move { Ok::<_, std::io::Error>(Pipe(ours)) }),
                futures::stream::pending(),
            );
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, stop.cancelled())
                .await
        })
    };

    let (out_tx, mut out_rx) = tokio::sync::mpsc::channel::<(OutputStream, Vec<u8>)>(64);
    let stderr = tokio::spawn(async move {
        let mut tail = std::collections::VecDeque::new();
        while let Some((_, chunk)) = out_rx.recv().await {
            for line in String::from_utf8_lossy(&chunk).lines() {
                tracing::info!(target: "memobuild::frontend", "{line}");
                tail.push_back(line.to_owned());
                if tail.len() > TAIL_LINES {
                    tail.pop_front();
                }
            }
        }
        tail
    });
    let network = if image.network_none {
        NetworkMode::None
    } else {
        NetworkMode::Host
    };
    let cancel = job.cancel.child_token();
    let request = RunRequest {
        args: image.entrypoint.clone(),
        env: frontend_env(&image.env, attrs, &job.session(), daemon),
        cwd: image.working_dir.clone(),
        network,
        output: Some(out_tx),
        cancel: Some(cancel.clone()),
        stdio: Some(StdioPipe::new(theirs)),
        ..Default::default()
    };
    let process = build.run_process(&fs, request);
    tokio::pin!(process);
    tokio::pin!(returned_rx);
    let outcome = tokio::select! {
        exit = &mut process => {
            // A Return may have raced the exit.
            match returned_rx.try_recv() {
                Ok(r) => Ok(r),
                Err(_) => Err(exit),
            }
        }
        r = &mut returned_rx => match r {
            Ok(r) => {
                if tokio::time::timeout(EXIT_GRACE, &mut process).await.is_err() {
                    cancel.cancel();
                    let _ = process.await;
                }
                Ok(r)
            }
            Err(_) => Err(process.await),
        },
    };
    stop_server.cancel();
    let _ = server.await;
    let tail = stderr.await.unwrap_or_default();
    match outcome {
        Ok(Returned::Result { solved, metadata }) => Ok(FrontendResult {
            solved: solved.unwrap_or(SolvedRef {
                output: Output::Scratch,
                definition: None,
            }),
            metadata,
        }),
        Ok(Returned::Error(status)) => Err(status),
        Err(exit) => {
            let how = match exit {
                Ok(code) => format!("exited with code {code}"),
                Err(e) => format!("failed: {e}"),
            };
            let tail: Vec<String> = tail.into_iter().collect();
            Err(Status::unknown(format!(
                "frontend `{source}` {how} without returning a result{}",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(":\n{}", tail.join("\n"))
                }
            )))
        }
    }
}

/// What of a frontend image's config matters to running it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ImageSpec {
    entrypoint: Vec<String>,
    env: Vec<String>,
    working_dir: String,
    network_none: bool,
    caps: BTreeSet<String>,
}

impl ImageSpec {
    fn parse(config: &[u8]) -> Result<ImageSpec, String> {
        let v: serde_json::Value =
            serde_json::from_slice(config).map_err(|e| format!("its config is not JSON: {e}"))?;
        let c = &v["config"];
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let label = |k: &str| c["Labels"][k].as_str().unwrap_or_default().to_owned();
        let mut entrypoint = strings(&c["Entrypoint"]);
        if entrypoint.is_empty() {
            entrypoint = vec!["/run".to_owned()];
        }
        let working_dir = c["WorkingDir"]
            .as_str()
            .filter(|d| !d.is_empty())
            .unwrap_or("/");
        Ok(ImageSpec {
            entrypoint,
            env: strings(&c["Env"]),
            working_dir: working_dir.to_owned(),
            network_none: matches!(
                label("moby.buildkit.frontend.network.none").as_str(),
                "true" | "1" | "TRUE" | "True"
            ),
            caps: caps_of(&label("moby.buildkit.frontend.caps")),
        })
    }
}

/// The caps of a comma-separated list, without `+forward`-style suffixes.
fn caps_of(list: &str) -> BTreeSet<String> {
    list.split(',')
        .map(|c| c.trim().split('+').next().unwrap_or_default().to_owned())
        .filter(|c| !c.is_empty())
        .collect()
}

/// Refuses a request that needs a cap the image does not declare, as buildkitd does.
fn check_caps(
    attrs: &BTreeMap<String, String>,
    inputs: &BTreeMap<String, pb::Definition>,
    image: &ImageSpec,
) -> Result<(), Status> {
    let mut wanted = caps_of(attrs.get("frontend.caps").map_or("", String::as_str));
    if !inputs.is_empty() {
        wanted.insert("moby.buildkit.frontend.inputs".to_owned());
    }
    match wanted.iter().find(|c| !image.caps.contains(*c)) {
        Some(c) => Err(Status::unimplemented(format!(
            "requested frontend capability {c} is not supported by the frontend image"
        ))),
        None => Ok(()),
    }
}

/// The definition of the image `pinned` (`REF@DIGEST`).
fn image_definition(pinned: &str) -> pb::Definition {
    let op = pb::Op {
        op: Some(pb::op::Op::Source(pb::SourceOp {
            identifier: format!("docker-image://{pinned}"),
            attrs: BTreeMap::new(),
        })),
        platform: Some(crate::pipeline::pb_platform(&frontend::Platform::host())),
        constraints: Some(pb::WorkerConstraints::default()),
        ..Default::default()
    };
    let mut b = memobuild_proto::DefinitionBuilder::new();
    let digest = b.add_op(&op);
    b.finish(pb::Input::new(digest, 0))
}

/// The frontend process's environment: the image's, then the options and the session.
fn frontend_env(
    image_env: &[String],
    attrs: &BTreeMap<String, String>,
    session: &str,
    daemon: &Daemon,
) -> Vec<String> {
    let mut env = image_env.to_vec();
    for (i, (k, v)) in attrs.iter().enumerate() {
        env.push(format!("BUILDKIT_FRONTEND_OPT_{i}={k}={v}"));
    }
    env.push(format!("BUILDKIT_SESSION_ID={session}"));
    let record = daemon.worker_record();
    let workers = serde_json::json!([{
        "id": record.id,
        "labels": record.labels,
        "platforms": record.platforms.iter().map(|p| serde_json::json!({
            "architecture": p.architecture,
            "os": p.os,
            "variant": p.variant,
        })).collect::<Vec<_>>(),
    }]);
    env.push(format!("BUILDKIT_WORKERS={workers}"));
    env.push("BUILDKIT_EXPORTEDPRODUCT=buildkit".to_owned());
    env
}

/// The daemon's end of a frontend process's stdio, as a connection tonic serves.
struct Pipe(DuplexStream);

impl tonic::transport::server::Connected for Pipe {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for Pipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Pipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_config_gives_entrypoint_env_and_labels() {
        let spec = ImageSpec::parse(
            br#"{"config":{"Entrypoint":["/bin/memobuild","frontend"],"Env":["A=1"],
            "Labels":{"moby.buildkit.frontend.network.none":"true",
            "moby.buildkit.frontend.caps":"moby.buildkit.frontend.inputs,moby.buildkit.frontend.subrequests"}}}"#,
        )
        .expect("parses");
        assert_eq!(spec.entrypoint, ["/bin/memobuild", "frontend"]);
        assert_eq!(spec.working_dir, "/");
        assert!(spec.network_none);
        let bare = ImageSpec::parse(br#"{"config":{}}"#).expect("parses");
        assert_eq!(bare.entrypoint, ["/run"]);
        assert!(!bare.network_none);

        let attrs = BTreeMap::from([(
            "frontend.caps".to_owned(),
            "moby.buildkit.frontend.subrequests+forward".to_owned(),
        )]);
        assert!(check_caps(&attrs, &BTreeMap::new(), &spec).is_ok());
        let inputs = BTreeMap::from([("x".to_owned(), pb::Definition::default())]);
        assert!(check_caps(&attrs, &inputs, &spec).is_ok());
        let err = check_caps(&attrs, &inputs, &bare).expect_err("no caps");
        assert!(err.message().contains("moby.buildkit.frontend"), "{err:?}");
    }
}
