//! The daemon's listeners: `unix://PATH` and `tcp://HOST:PORT` (with TLS when given a
//! certificate), each serving `Control` and `LLBBridge` with BuildKit's 16 MiB message limits.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use memobuild_proto::containerd::services::content::v1::content_server::ContentServer;
use memobuild_proto::control::control_server::ControlServer;
use memobuild_proto::gateway::llb_bridge_server::LlbBridgeServer;
use tokio::net::{TcpListener, UnixListener};
use tokio_util::sync::CancellationToken;

use crate::daemon::Daemon;
use crate::daemon::content::ContentService;
use crate::daemon::control::ControlService;
use crate::daemon::gateway::GatewayService;
use crate::session::transport;

/// BuildKit's message limit, both ways (`cmd/buildkitd/main.go`).
pub const MAX_MESSAGE: usize = 16 << 20;

/// TLS files for TCP listeners.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Server certificate (PEM).
    pub cert: Option<PathBuf>,
    /// Its key (PEM).
    pub key: Option<PathBuf>,
    /// CA client certificates must chain to (PEM); without it any client may connect.
    pub ca: Option<PathBuf>,
}

/// A bound listener.
pub enum Listener {
    /// A unix socket.
    Unix(UnixListener),
    /// A TCP port, with TLS if configured.
    Tcp(TcpListener, Option<tonic::transport::ServerTlsConfig>),
}

fn tls_config(tls: &TlsFiles) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    let (cert, key) = match (&tls.cert, &tls.key) {
        (None, None) => {
            if tls.ca.is_some() {
                bail!("--tlscacert needs --tlscert and --tlskey");
            }
            return Ok(None);
        }
        (Some(c), Some(k)) => (c, k),
        _ => bail!("TLS needs both --tlscert and --tlskey"),
    };
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading `{}`", p.display()));
    let mut config = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
    );
    if let Some(ca) = &tls.ca {
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(Some(config))
}

/// Binds every address. A unix socket's directory is created (0711) and a stale socket
/// replaced; the socket itself is made 0660, as buildkitd's.
pub async fn listen(addrs: &[String], tls: &TlsFiles) -> anyhow::Result<Vec<Listener>> {
    let tls = tls_config(tls)?;
    let mut out = Vec::new();
    for a in addrs {
        if let Some(path) = a.strip_prefix("unix://") {
            let path = Path::new(path);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating `{}`", dir.display()))?;
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                bail!(
                    "`{a}` is in use: another daemon listens there (stop it, or pass another --addr)"
                );
            }
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path).with_context(|| format!("listening on `{a}`"))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
                .with_context(|| format!("chmod `{}`", path.display()))?;
            out.push(Listener::Unix(l));
        } else if let Some(hostport) = a.strip_prefix("tcp://") {
            let l = TcpListener::bind(hostport)
                .await
                .with_context(|| format!("listening on `{a}`"))?;
            out.push(Listener::Tcp(l, tls.clone()));
        } else {
            bail!("unsupported address `{a}`: use unix:///PATH or tcp://HOST:PORT");
        }
    }
    Ok(out)
}

/// Serves `daemon` on `listeners` until `stop` is cancelled.
pub async fn serve(
    daemon: Arc<Daemon>,
    listeners: Vec<Listener>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        let control = ControlServer::new(ControlService::new(daemon.clone()))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let gateway = LlbBridgeServer::new(GatewayService::new(daemon.clone()))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let content = ContentServer::new(ContentService::new(daemon.clone()))
            .max_encoding_message_size(MAX_MESSAGE);
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut builder = tonic::transport::Server::builder()
                .initial_stream_window_size(transport::STREAM_WINDOW)
                .initial_connection_window_size(transport::CONNECTION_WINDOW);
            match l {
                Listener::Unix(l) => builder
                    .add_service(control)
                    .add_service(gateway)
                    .add_service(content)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::UnixListenerStream::new(l),
                        stop.cancelled_owned(),
                    )
                    .await
                    .context("serving a unix socket"),
                Listener::Tcp(l, tls) => {
                    if let Some(tls) = tls {
                        builder = builder.tls_config(tls).context("TLS configuration")?;
                    }
                    builder
                        .add_service(control)
                        .add_service(gateway)
                        .add_service(content)
                        .serve_with_incoming_shutdown(
                            tokio_stream::wrappers::TcpListenerStream::new(l),
                            stop.cancelled_owned(),
                        )
                        .await
                        .context("serving a TCP port")
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.context("a listener task failed")??;
    }
    Ok(())
}

/// Removes the unix sockets of `addrs` (at exit).
pub fn remove_sockets(addrs: &[String]) {
    for a in addrs {
        if let Some(p) = a.strip_prefix("unix://") {
            let _ = std::fs::remove_file(p);
        }
    }
}
