//! The session a remote build opens beside its Solve: we serve gRPC *inside* the
//! `Control/Session` stream, and the daemon calls back into it for the build's local
//! directories, its outputs, secrets, ssh agents and registry credentials.
//!
//! The services are the ones buildctl attaches (`cmd/buildctl/build.go`, `client/solve.go`),
//! each in its own file; [`Services`] assembles those a build needs and lists their methods
//! for the `x-docker-expose-session-grpc-method` headers (a daemon asks the session for a
//! method only after checking that list). [`run`] carries the HTTP/2 connection over the
//! stream until the build ends, then half-closes it as buildctl's `Session.Close` does.

pub mod auth;
pub mod filesend;
pub mod filesync;
pub mod secrets;
pub mod ssh;
pub mod upload;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::{Stream, StreamExt, TryStreamExt};
use memobuild_proto::control::BytesMessage;
use memobuild_proto::control::control_client::ControlClient;
use memobuild_proto::filesync::auth_server::AuthServer;
use memobuild_proto::filesync::file_sync_server::FileSyncServer;
use memobuild_proto::secrets::secrets_server::SecretsServer;
use memobuild_proto::sshforward::ssh_server::SshServer;
use memobuild_proto::upload::upload_server::UploadServer;
use memobuild_worker::registry::CredentialProvider;
use memobuild_worker::secrets::Secrets;
use memobuild_worker::ssh::SshAgents;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::codegen::BoxStream;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::client::exporters::Target;
use crate::session::headers::SessionHeaders;
use crate::session::transport::{self, TunnelIo};

/// How long the daemon gets to end its side after we half-close, before we drop the stream.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// What a build offers the daemon.
pub struct SessionConfig {
    /// Directories by `dir-name`.
    pub locals: BTreeMap<String, PathBuf>,
    /// Exporter outputs by exporter id.
    pub targets: BTreeMap<usize, Target>,
    /// `--secret` values; `None` when no `--secret` was given (the service is not offered,
    /// as with buildctl).
    pub secrets: Option<Secrets>,
    /// `--ssh` agents; `None` when no `--ssh` was given.
    pub ssh: Option<SshAgents>,
    /// Registry credentials.
    pub credentials: Arc<dyn CredentialProvider>,
    /// A context read from standard input, offered as an upload.
    pub upload: Option<upload::Offered>,
}

/// The session's services and the method paths they serve.
pub struct Services {
    /// The gRPC router to serve over the tunnel.
    pub routes: Routes,
    /// Full method paths, for the session headers.
    pub methods: Vec<String>,
}

const HEALTH_METHODS: &[&str] = &[
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];
const AUTH_METHODS: &[&str] = &["/moby.filesync.v1.Auth/Credentials"];
const FILESYNC_METHODS: &[&str] = &[
    "/moby.filesync.v1.FileSync/DiffCopy",
    // Advertised as buildctl does; no daemon calls it (fsutil's tar protocol is gone), and it
    // answers Unimplemented.
    "/moby.filesync.v1.FileSync/TarStream",
];
const SECRETS_METHODS: &[&str] = &["/moby.buildkit.secrets.v1.Secrets/GetSecret"];
const SSH_METHODS: &[&str] = &[
    "/moby.sshforward.v1.SSH/CheckAgent",
    "/moby.sshforward.v1.SSH/ForwardAgent",
];

impl Services {
    /// The services `config` calls for: health and credentials always; directories, outputs,
    /// secrets and agents when the build has any.
    pub fn new(config: SessionConfig) -> Services {
        let mut builder = RoutesBuilder::default();
        let mut methods: Vec<&str> = Vec::new();
        // The daemon checks the session's health every 5 s; a default health service answers
        // SERVING for the empty service name, which is all it asks.
        let (_reporter, health) = tonic_health::server::health_reporter();
        builder.add_service(health);
        methods.extend(HEALTH_METHODS);
        builder.add_service(AuthServer::new(auth::AuthService::new(config.credentials)));
        methods.extend(AUTH_METHODS);
        if !config.locals.is_empty() {
            builder.add_service(FileSyncServer::new(filesync::FileSyncService::new(
                config.locals,
            )));
            methods.extend(FILESYNC_METHODS);
        }
        let targets: BTreeMap<usize, Target> = config
            .targets
            .into_iter()
            .filter(|(_, t)| *t != Target::None)
            .collect();
        if !targets.is_empty() {
            builder.add_service(filesend::FileSendService::new(targets));
            methods.push(filesend::DIFF_COPY);
        }
        if let Some(secrets) = config.secrets {
            builder.add_service(SecretsServer::new(secrets::SecretsService::new(secrets)));
            methods.extend(SECRETS_METHODS);
        }
        if let Some(offered) = config.upload {
            builder.add_service(UploadServer::new(upload::UploadService::new(offered)));
            methods.push(upload::PULL);
        }
        if let Some(agents) = config.ssh {
            builder.add_service(SshServer::new(ssh::SshService::new(agents)));
            methods.extend(SSH_METHODS);
        }
        Services {
            routes: builder.routes(),
            methods: methods.into_iter().map(str::to_owned).collect(),
        }
    }
}

/// The items of `rx` until every sender is gone, then the task's failure, if it failed: a
/// response stream for a transfer running in `task`, which ends the call with the transfer's
/// own error rather than a bare end of stream.
pub fn outcome_stream<T, R, E>(
    mut rx: mpsc::Receiver<T>,
    task: JoinHandle<Result<R, E>>,
) -> BoxStream<T>
where
    T: Send + 'static,
    R: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let items = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map(Ok);
    let end = futures::stream::once(async move {
        match task.await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(Err(Status::unknown(e.to_string()))),
            Err(e) => Some(Err(Status::internal(format!("transfer task failed: {e}")))),
        }
    })
    .filter_map(std::future::ready);
    items.chain(end).boxed()
}

/// Opens `Control/Session` with `headers` and serves `routes` inside it until `close`
/// fires and the daemon has ended its side (or [`CLOSE_GRACE`] has passed).
///
/// Only failing to open the session is an error: once it runs, a connection that breaks
/// fails the calls in flight, and the build reports those.
pub async fn run(
    mut control: ControlClient<Channel>,
    headers: SessionHeaders,
    routes: Routes,
    close: CancellationToken,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
    // Our half of the stream ends when `close` fires: BuildKit's `CloseSend`, after which
    // the daemon ends its half too, which ends the connection and `serve`.
    let outgoing = receiver_stream(rx)
        .map(|data| BytesMessage { data })
        .take_until(close.clone().cancelled_owned());
    let mut request = Request::new(outgoing);
    *request.metadata_mut() = headers
        .to_metadata()
        .context("encoding the session headers")?;
    // The daemon answers with headers at once (its HTTP/2 client writes its preface first),
    // so waiting for them here cannot wait on us; a daemon that never answers is given up
    // like one that never ends the session.
    let grace = async {
        close.cancelled().await;
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::pin!(grace);
    let opened = tokio::select! {
        opened = control.session(request) => opened,
        () = &mut grace => {
            tracing::debug!("the daemon never answered the session; dropping it");
            return Ok(());
        }
    };
    let incoming = opened
        .map_err(crate::client::remote)
        .context("opening the session")?
        .into_inner()
        .map_ok(|m| m.data);
    let io = TunnelIo::new(incoming, tx);
    tokio::select! {
        result = transport::serve(io, routes) => {
            if let Err(e) = result {
                tracing::debug!("session connection ended: {e:#}");
            }
        }
        () = &mut grace => tracing::debug!("the daemon did not end the session; dropping it"),
    }
    Ok(())
}

fn receiver_stream<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// The session headers of a build.
pub fn headers(id: &str, shared_key: &str, services: &Services) -> SessionHeaders {
    SessionHeaders {
        id: id.to_owned(),
        shared_key: shared_key.to_owned(),
        methods: services.methods.clone(),
    }
}
