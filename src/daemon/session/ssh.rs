//! SSH agents forwarded by a session's client (`SSH.CheckAgent`, `SSH.ForwardAgent`).
//!
//! A step that mounts an agent gets a socket; each connection to it becomes one
//! `ForwardAgent` stream (metadata `buildkit.ssh.id`) to the client, which relays the bytes to
//! its agent. Here the socket is a daemon-side listener per agent id and build, in a private
//! directory of the state directory's scratch space; the worker then proxies it into the step
//! as it does for a host agent (answering only list and sign requests).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt};
use memobuild_proto::sshforward::ssh_client::SshClient;
use memobuild_proto::sshforward::{BytesMessage, CheckAgentRequest};
use memobuild_worker::caller::{SourceError, SourceFuture, SshSource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use super::Scope;

const FORWARD_AGENT: &str = "/moby.sshforward.v1.SSH/ForwardAgent";

/// One forwarded agent: its socket's directory and the task accepting on it.
struct Forwarder {
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The [`SshSource`] of a session's build.
pub struct SessionSsh {
    scope: Arc<Scope>,
    agents: Mutex<HashMap<String, Forwarder>>,
}

impl SessionSsh {
    /// Agents forwarded through `scope`'s own session.
    pub fn new(scope: Arc<Scope>) -> Self {
        SessionSsh {
            scope,
            agents: Mutex::default(),
        }
    }

    async fn agent_socket(&self, id: &str) -> Result<Option<PathBuf>, String> {
        if let Some(f) = self.agents.lock().map_err(|e| e.to_string())?.get(id) {
            return Ok(Some(f.dir.path().join("agent.sock")));
        }
        let session = self.scope.session(None).await?;
        if !session.supports(FORWARD_AGENT) {
            return Ok(None);
        }
        let check = SshClient::new(session.channel.clone())
            .check_agent(CheckAgentRequest { id: id.to_owned() })
            .await;
        match check {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => return Err(format!("the client's ssh agent `{id}`: {}", s.message())),
        }
        let tmp = self.scope.state.tmp();
        std::fs::create_dir_all(&tmp).map_err(|e| format!("`{}`: {e}", tmp.display()))?;
        let dir = tempfile::Builder::new()
            .prefix("ssh-")
            .tempdir_in(&tmp)
            .map_err(|e| format!("`{}`: {e}", tmp.display()))?;
        let socket = dir.path().join("agent.sock");
        let listener =
            UnixListener::bind(&socket).map_err(|e| format!("`{}`: {e}", socket.display()))?;
        let (channel, agent_id) = (session.channel.clone(), id.to_owned());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (channel, agent_id) = (channel.clone(), agent_id.clone());
                tokio::spawn(async move {
                    if let Err(e) = relay(channel, &agent_id, conn).await {
                        tracing::debug!("ssh agent `{agent_id}`: {e}");
                    }
                });
            }
        });
        self.agents
            .lock()
            .map_err(|e| e.to_string())?
            .insert(id.to_owned(), Forwarder { dir, task });
        Ok(Some(socket))
    }
}

/// Relays one connection to the client's agent `id`, both ways, until either side closes.
async fn relay(channel: Channel, id: &str, conn: UnixStream) -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<BytesMessage>(16);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    let value = AsciiMetadataValue::try_from(id).map_err(|e| e.to_string())?;
    request.metadata_mut().insert("buildkit.ssh.id", value);
    let mut answers = SshClient::new(channel)
        .forward_agent(request)
        .await
        .map_err(|s| s.message().to_owned())?
        .into_inner();
    let (mut read, mut write) = conn.into_split();
    let upstream = async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = read.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok::<_, String>(());
            }
            if tx
                .send(BytesMessage {
                    data: buf[..n].to_vec(),
                })
                .await
                .is_err()
            {
                return Ok(());
            }
        }
    };
    let downstream = async move {
        while let Some(m) = answers.next().await {
            let m = m.map_err(|s| s.message().to_owned())?;
            write.write_all(&m.data).await.map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    };
    let (up, down) = tokio::join!(upstream, downstream);
    up.and(down)
}

impl SshSource for SessionSsh {
    fn agent<'a>(&'a self, id: &'a str) -> SourceFuture<'a, Option<PathBuf>> {
        async move { self.agent_socket(id).await.map_err(SourceError) }.boxed()
    }
}
