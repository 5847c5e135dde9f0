//! Reaching a BuildKit daemon: the `--addr` forms buildctl accepts for a local or TCP daemon,
//! and one gRPC channel that Control and LLBBridge calls share, with BuildKit's message limits.

use std::path::PathBuf;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::{Context as _, bail};
use hyper_util::rt::TokioIo;
use memobuild_proto::control::control_client::ControlClient;
use memobuild_proto::gateway::llb_bridge_client::LlbBridgeClient;
use tonic::codegen::Service;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

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

/// Connects to the daemon (h2c, prior knowledge). Fails at once when nothing listens.
pub async fn connect(address: &Address) -> anyhow::Result<Channel> {
    let connected = match address {
        Address::Unix(path) => {
            // grpc-go names a unix target `localhost`; nothing routes on it.
            endpoint("http://localhost")?
                .connect_with_connector(UnixConnector(path.clone()))
                .await
        }
        Address::Tcp { authority } => {
            endpoint(&format!("http://{authority}"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .connect()
                .await
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
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT))
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
