//! The daemon's side of BuildKit sessions: the connections clients open with `Control/Session`
//! so the daemon can call back into them, and the [`Caller`] a build of such a client reads
//! through.
//!
//! Each session is a gRPC channel over the session tunnel ([`crate::session::transport`]) to
//! the services the client serves: FileSync for local directories ([`locals`]), FileSend for
//! outputs ([`outputs`]), Auth ([`auth`]), Secrets ([`secrets`]) and SSH ([`ssh`]). A session
//! may connect a little after the Solve that names it, so lookups wait a while
//! ([`Sessions::get`]), as BuildKit's session manager does.

pub mod auth;
pub mod locals;
pub mod outputs;
pub mod secrets;
pub mod ssh;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use memobuild_proto::control::BytesMessage;
use memobuild_worker::{Caller, StateDir};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::daemon::remote_context::ProvidedLocals;
use crate::session::headers::SessionHeaders;
use crate::session::transport::{self, TunnelIo};

/// How long a build waits for the session it names to connect (BuildKit: 5 s for a local
/// source's session).
pub const SESSION_WAIT: Duration = Duration::from_secs(5);

/// Messages queued towards the client before the tunnel pushes back.
const TUNNEL_QUEUE: usize = 64;

/// Bytes of the client's stream the daemon takes off the connection ahead of the session's
/// HTTP/2 connection reading them. Messages left in the connection's buffers count against
/// h2's budget of small DATA frames (about half the receive window's worth of per-frame
/// overhead); buildx sends one small message per file of a context, and when they waited there
/// h2 closed the client's whole connection (GOAWAY ENHANCE_YOUR_CALM "too_many_data_frames").
/// More than the session connection's receive window ([`transport::CONNECTION_WINDOW`]), so a
/// client within flow control never fills it.
const TUNNEL_READ_AHEAD: usize = transport::CONNECTION_WINDOW as usize + (16 << 20);

/// What a queued message counts beyond its data, so that empty ones are bounded too.
const MESSAGE_OVERHEAD: usize = 64;

/// One connected session.
#[derive(Debug)]
pub struct Session {
    /// What the client said about itself.
    pub headers: SessionHeaders,
    /// gRPC over the tunnel, to the services the client serves.
    pub channel: Channel,
    /// Cancelled when the tunnel ends.
    pub closed: CancellationToken,
}

impl Session {
    /// Whether the client serves `method` (a full path, `/pkg.Service/Method`).
    pub fn supports(&self, method: &str) -> bool {
        self.headers.supports(method)
    }

    /// A clear error for a method the client does not serve.
    pub fn unsupported(&self, method: &str) -> String {
        format!(
            "method `{method}` is not supported by the client of session `{}`",
            self.headers.id
        )
    }
}

/// The sessions of all clients, by id.
#[derive(Debug, Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, Arc<Session>>>,
    /// Bumped whenever a session connects, to wake waiters.
    changed: Mutex<Option<watch::Sender<u64>>>,
}

impl Sessions {
    /// No sessions.
    pub fn new() -> Arc<Self> {
        let (tx, _) = watch::channel(0);
        Arc::new(Sessions {
            by_id: Mutex::default(),
            changed: Mutex::new(Some(tx)),
        })
    }

    fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        self.changed
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(watch::Sender::subscribe))
    }

    fn bump(&self) {
        if let Ok(c) = self.changed.lock()
            && let Some(tx) = c.as_ref()
        {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The session `id`, waiting up to `wait` for it to connect.
    pub async fn get(&self, id: &str, wait: Duration) -> Option<Arc<Session>> {
        let mut changes = self.subscribe()?;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(s) = self.by_id.lock().ok()?.get(id).cloned()
                && !s.closed.is_cancelled()
            {
                return Some(s);
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// Takes in a `Control/Session` call: returns the stream of bytes to send back at once; the
    /// connection to the client's services starts with the first call into them. The session
    /// is known to [`Sessions::get`] until the client closes the tunnel.
    ///
    /// The returned stream ends as soon as the client half-closes, dropping what is still
    /// queued: BuildKit's `conn.Close` drains the stream after its `CloseSend` and, for each
    /// message it drains, hands its HTTP/2 server a whole read buffer of stale bytes
    /// (`session/grpchijack/dial.go`), which fails the connection with PROTOCOL_ERROR and
    /// costs buildx a one-second GOAWAY timeout. A client that closed reads nothing anyway.
    pub fn open(
        self: &Arc<Self>,
        headers: SessionHeaders,
        incoming: tonic::Streaming<BytesMessage>,
    ) -> impl futures::Stream<Item = Vec<u8>> + Send + 'static {
        let (tx, rx) = mpsc::channel(TUNNEL_QUEUE);
        let closed = CancellationToken::new();
        // The client's stream ending is the session's end. It is watched here rather than by
        // the HTTP/2 connection, which reads the tunnel only once the daemon calls into it.
        // Read ahead, bounded in bytes (see TUNNEL_READ_AHEAD): each queued message holds its
        // share of the budget until the connection takes it.
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(TUNNEL_READ_AHEAD));
        let on_end = closed.clone();
        tokio::spawn(async move {
            let mut incoming = incoming;
            loop {
                tokio::select! {
                    m = incoming.next() => {
                        let Some(m) = m else { break };
                        let failed = m.is_err();
                        let cost = m.as_ref().map_or(0, |m| m.data.len()) + MESSAGE_OVERHEAD;
                        let cost = u32::try_from(cost.min(TUNNEL_READ_AHEAD)).unwrap_or(u32::MAX);
                        let permit = tokio::select! {
                            p = budget.clone().acquire_many_owned(cost) => p,
                            () = in_tx.closed() => break,
                        };
                        let Ok(permit) = permit else { break };
                        if in_tx.send((m.map(|m| m.data), permit)).is_err() || failed {
                            break;
                        }
                    }
                    () = in_tx.closed() => break,
                }
            }
            on_end.cancel();
        });
        let queued =
            tokio_stream::wrappers::UnboundedReceiverStream::new(in_rx).map(|(m, _permit)| m);
        let io = TunnelIo::new(queued, tx);
        let channel = transport::connect_lazy(io);
        let id = headers.id.clone();
        let session = Arc::new(Session {
            headers,
            channel,
            closed: closed.clone(),
        });
        if let Ok(mut m) = self.by_id.lock() {
            m.insert(id.clone(), session.clone());
        }
        self.bump();
        tracing::debug!("session `{id}` opened");
        let sessions = self.clone();
        let closed_out = closed.clone();
        tokio::spawn(async move {
            closed.cancelled().await;
            if let Ok(mut m) = sessions.by_id.lock()
                && m.get(&id).is_some_and(|s| Arc::ptr_eq(s, &session))
            {
                m.remove(&id);
            }
            tracing::debug!("session `{id}` closed");
        });
        tokio_stream::wrappers::ReceiverStream::new(rx).take_until(closed_out.cancelled_owned())
    }
}

/// What a build of a session's client reads through: the session's services. `session_id` is
/// the Solve's session, used where a source names none.
pub fn caller(
    sessions: &Arc<Sessions>,
    session_id: &str,
    state: &StateDir,
    provided: Arc<ProvidedLocals>,
) -> Caller {
    let scope = Arc::new(Scope {
        sessions: sessions.clone(),
        session_id: session_id.to_owned(),
        state: state.clone(),
        provided,
    });
    Caller {
        locals: Arc::new(locals::SessionLocals::new(scope.clone())),
        secrets: Arc::new(secrets::SessionSecrets::new(scope.clone())),
        ssh: Arc::new(ssh::SessionSsh::new(scope.clone())),
        credentials: Arc::new(auth::SessionCredentials::new(scope)),
    }
}

/// What every session-backed source of one build shares.
#[derive(Debug)]
pub struct Scope {
    /// All sessions.
    pub sessions: Arc<Sessions>,
    /// The build's own session.
    pub session_id: String,
    /// The daemon's state directory.
    pub state: StateDir,
    /// Locals the daemon serves itself, in place of the client's.
    pub provided: Arc<ProvidedLocals>,
}

impl Scope {
    /// The session `id` (the build's own when `None`), waiting for it to connect.
    pub async fn session(&self, id: Option<&str>) -> Result<Arc<Session>, String> {
        let id = id.filter(|i| !i.is_empty()).unwrap_or(&self.session_id);
        if id.is_empty() {
            return Err(
                "the request names no session (buildctl and buildx always open one)".into(),
            );
        }
        self.sessions.get(id, SESSION_WAIT).await.ok_or_else(|| {
            format!("no active session `{id}`: the client did not connect it, or went away")
        })
    }
}
