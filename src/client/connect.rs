//! Reaching a BuildKit daemon: the `--addr` forms buildctl accepts for a local or TCP daemon,
//! TLS as buildctl's flags configure it, and one gRPC channel that Control and LLBBridge calls
//! share, with BuildKit's message limits.

use std::path::{Path, PathBuf};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use hyper_util::rt::TokioIo;
use memobuild_proto::control::control_client::ControlClient;
use memobuild_proto::gateway::llb_bridge_client::LlbBridgeClient;
use tonic::codegen::Service;
use tonic::codegen::http::Uri;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::session::transport;

/// Send and receive limit of every call, as buildctl and buildkitd set them
/// (`containerd/defaults`): four times tonic's default decode limit, which a large
/// `Definition` or `StatusResponse` would otherwise exceed.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// HTTP/2 PING interval while calls are open. grpc-go servers (buildkitd sets no keepalive
/// policy) answer pings more frequent than every 5 minutes with GOAWAY, so stay above that;
/// a peer that vanished without closing the connection is then noticed within minutes
/// rather than never. A daemon process that exits closes its sockets and is noticed at once.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(6 * 60);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long dialling a TCP daemon may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// `unix:///run/buildkit/buildkitd.sock`.
    Unix(PathBuf),
    /// `tcp://host:port`; `authority` is `host:port` as given (the `:authority` buildctl sends).
    Tcp {
        /// `host:port`, brackets kept for IPv6.
        authority: String,
    },
}

impl Address {
    /// Parses `unix:///path` or `tcp://host:port`. buildctl's other schemes
    /// (`docker-container://`, `kube-pod://`, `ssh://`, `npipe://`) run helper programs and
    /// are not supported.
    pub fn parse(addr: &str) -> anyhow::Result<Address> {
        let (scheme, rest) = addr.split_once("://").with_context(|| {
            format!("invalid daemon address `{addr}`: expected unix:///PATH or tcp://HOST:PORT")
        })?;
        match scheme {
            "unix" => {
                if rest.is_empty() {
                    bail!("invalid daemon address `{addr}`: no socket path");
                }
                Ok(Address::Unix(PathBuf::from(rest)))
            }
            "tcp" => {
                let uri: Uri = format!("http://{rest}")
                    .parse()
                    .with_context(|| format!("invalid daemon address `{addr}`"))?;
                let authority = uri
                    .authority()
                    .filter(|a| !a.host().is_empty())
                    .with_context(|| format!("invalid daemon address `{addr}`: no host"))?;
                if authority.port_u16().is_none() {
                    bail!("invalid daemon address `{addr}`: no port (tcp://HOST:PORT)");
                }
                if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
                    bail!("invalid daemon address `{addr}`: unexpected path");
                }
                Ok(Address::Tcp {
                    authority: authority.as_str().to_owned(),
                })
            }
            other => bail!(
                "unsupported daemon address `{addr}`: scheme `{other}` (supported: unix://PATH, tcp://HOST:PORT)"
            ),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::Tcp { authority } => write!(f, "tcp://{authority}"),
        }
    }
}

/// Dials one unix socket whatever URI tonic asks for.
#[derive(Clone)]
struct UnixConnector(PathBuf);

impl Service<Uri> for UnixConnector {
    type Response = TokioIo<tokio::net::UnixStream>;
    type Error = std::io::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let path = self.0.clone();
        Box::pin(async move { Ok(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) })
    }
}

/// buildctl's TLS flags (`--tlscacert`, `--tlscert`, `--tlskey`, `--tlsservername`,
/// `--tlsdir`). TLS is used when any file is given; only with `tcp://` addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate (PEM) the daemon's certificate must chain to; without it, the system's
    /// roots.
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM), for daemons that verify clients.
    pub cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    pub key: Option<PathBuf>,
    /// The name the daemon's certificate must carry; default: the address's host.
    pub server_name: Option<String>,
}

impl TlsFiles {
    /// The files of a `--tlsdir`, as buildctl finds them: `ca.pem` or `ca.crt`, `cert.pem`
    /// or `tls.crt`, `key.pem` or `tls.key`.
    pub fn from_dir(dir: &Path, server_name: Option<String>) -> anyhow::Result<TlsFiles> {
        let one_of = |a: &str, b: &str| -> anyhow::Result<PathBuf> {
            [a, b]
                .iter()
                .map(|n| dir.join(n))
                .find(|p| p.is_file())
                .with_context(|| {
                    format!(
                        "directory `{}` did not contain one of the needed files: {a} or {b}",
                        dir.display()
                    )
                })
        };
        Ok(TlsFiles {
            ca_cert: Some(one_of("ca.pem", "ca.crt")?),
            cert: Some(one_of("cert.pem", "tls.crt")?),
            key: Some(one_of("key.pem", "tls.key")?),
            server_name,
        })
    }

    fn enabled(&self) -> bool {
        self.ca_cert.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// tonic's TLS configuration for a daemon at `host`.
    async fn config(&self, host: &str) -> anyhow::Result<ClientTlsConfig> {
        let read = |p: PathBuf, what: &'static str| async move {
            tokio::fs::read(&p)
                .await
                .with_context(|| format!("could not read {what} `{}`", p.display()))
        };
        let server_name = self.server_name.clone().unwrap_or_else(|| {
            // `[::1]` names the host `::1`.
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned()
        });
        let mut config = ClientTlsConfig::new().domain_name(server_name);
        config = match &self.ca_cert {
            Some(ca) => config.ca_certificate(Certificate::from_pem(
                read(ca.clone(), "ca certificate").await?,
            )),
            None => config.with_native_roots(),
        };
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read(cert.clone(), "certificate").await?,
                    read(key.clone(), "key").await?,
                ));
            }
            (None, None) => {}
            _ => bail!("could not read certificate/key: give both --tlscert and --tlskey"),
        }
        Ok(config)
    }
}

/// Connects to the daemon: h2c with prior knowledge, or TLS when `tls` has files. Fails at
/// once when nothing listens.
pub async fn connect(address: &Address, tls: &TlsFiles) -> anyhow::Result<Channel> {
    let connected = match address {
        Address::Unix(_) if tls.enabled() => {
            bail!("TLS is only supported with tcp:// daemon addresses")
        }
        Address::Unix(path) => {
            // grpc-go names a unix target `localhost`; nothing routes on it.
            endpoint("http://localhost")?
                .connect_with_connector(UnixConnector(path.clone()))
                .await
        }
        Address::Tcp { authority } => {
            let scheme = if tls.enabled() { "https" } else { "http" };
            let mut endpoint = endpoint(&format!("{scheme}://{authority}"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true);
            if tls.enabled() {
                let host = authority
                    .rsplit_once(':')
                    .map_or(authority.as_str(), |(h, _)| h);
                endpoint = endpoint
                    .tls_config(tls.config(host).await?)
                    .context("configuring TLS")?;
            }
            endpoint.connect().await
        }
    };
    // tonic wraps the cause in `transport error` layers that repeat it; the cause is what a
    // user can act on.
    connected.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to the BuildKit daemon at {address} (is buildkitd or `memobuild daemon` running?): {}",
            root_cause(&e)
        )
    })
}

/// The innermost error of a chain.
fn root_cause<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> &'a (dyn std::error::Error + 'static) {
    let mut e = e;
    while let Some(source) = e.source() {
        e = source;
    }
    e
}

fn endpoint(uri: &str) -> anyhow::Result<Endpoint> {
    Ok(Endpoint::from_shared(uri.to_owned())
        .with_context(|| format!("invalid daemon URI `{uri}`"))?
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .initial_stream_window_size(transport::STREAM_WINDOW)
        .initial_connection_window_size(transport::CONNECTION_WINDOW))
}

/// A Control client with BuildKit's limits.
pub fn control(channel: &Channel) -> ControlClient<Channel> {
    ControlClient::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// An LLBBridge client with BuildKit's limits.
pub fn gateway(channel: &Channel) -> LlbBridgeClient<Channel> {
    LlbBridgeClient::new(channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_and_tcp_addresses() {
        assert_eq!(
            Address::parse("unix:///run/buildkit/buildkitd.sock").unwrap(),
            Address::Unix("/run/buildkit/buildkitd.sock".into())
        );
        assert_eq!(
            Address::parse("tcp://127.0.0.1:1234").unwrap(),
            Address::Tcp {
                authority: "127.0.0.1:1234".into()
            }
        );
        assert_eq!(
            Address::parse("tcp://[::1]:1234").unwrap().to_string(),
            "tcp://[::1]:1234"
        );
        assert_eq!(
            Address::parse("unix:///tmp/bk.sock").unwrap().to_string(),
            "unix:///tmp/bk.sock"
        );
    }

    #[test]
    fn tls_dir_as_buildctl_reads_it() {
        let d = tempfile::tempdir().unwrap();
        for f in ["ca.crt", "cert.pem", "tls.key"] {
            std::fs::write(d.path().join(f), "x").unwrap();
        }
        let files = TlsFiles::from_dir(d.path(), Some("buildkitd".into())).unwrap();
        assert_eq!(
            files,
            TlsFiles {
                ca_cert: Some(d.path().join("ca.crt")),
                cert: Some(d.path().join("cert.pem")),
                key: Some(d.path().join("tls.key")),
                server_name: Some("buildkitd".into()),
            }
        );
        std::fs::remove_file(d.path().join("tls.key")).unwrap();
        let err = TlsFiles::from_dir(d.path(), None).unwrap_err().to_string();
        assert!(err.contains("key.pem or tls.key"), "{err}");
    }

    #[tokio::test]
    async fn tls_needs_tcp_and_both_halves_of_a_key_pair() {
        let unix = Address::Unix("/nonexistent.sock".into());
        let tls = TlsFiles {
            ca_cert: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let err = connect(&unix, &tls).await.unwrap_err().to_string();
        assert!(err.contains("only supported with tcp://"), "{err}");
        let half = TlsFiles {
            cert: Some("/nonexistent/cert.pem".into()),
            ..TlsFiles::default()
        };
        let err = format!("{:#}", half.config("h").await.unwrap_err());
        assert!(err.contains("could not read certificate"), "{err}");
    }

    #[test]
    fn bad_addresses_say_why() {
        let err = |a: &str| format!("{:#}", Address::parse(a).unwrap_err());
        assert!(err("/tmp/bk.sock").contains("unix:///PATH"));
        assert!(err("unix://").contains("no socket path"));
        assert!(err("tcp://host").contains("no port"));
        assert!(err("tcp://:1234").contains("no host"));
        assert!(err("tcp://h:1/x").contains("unexpected path"));
        assert!(err("docker-container://buildkitd").contains("scheme `docker-container`"));
    }
}
