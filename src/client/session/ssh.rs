//! `moby.sshforward.v1.SSH`: the agents `--ssh` names, for `RUN --mount=type=ssh`.
//!
//! `CheckAgent{id}` answers whether an id is forwarded (the daemon checks before it mounts a
//! socket); each connection a build step makes to its socket becomes one `ForwardAgent` call,
//! the id in metadata `buildkit.ssh.id` (`default` when empty), whose `BytesMessage`s carry
//! the agent protocol both ways. As buildctl, the agent is read-only: listing keys and
//! signing reach it, adding, removing or locking keys do not
//! (`sshprovider/agentprovider.go` `readOnlyAgent`; ours is the worker's relay).

use std::sync::Arc;

use futures::StreamExt;
use memobuild_proto::sshforward::ssh_server::Ssh;
use memobuild_proto::sshforward::{BytesMessage, CheckAgentRequest, CheckAgentResponse};
use memobuild_worker::ssh::{DEFAULT_ID, SshAgents, relay_read_only};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

/// Metadata naming the agent of a `ForwardAgent` call.
const SSH_ID: &str = "buildkit.ssh.id";
/// Bytes buffered between the call and the relay in each direction.
const PIPE: usize = 64 * 1024;

/// Forwards to the agents by id.
#[derive(Debug, Clone)]
pub struct SshService {
    agents: Arc<SshAgents>,
}

impl SshService {
    /// Serves `agents`.
    pub fn new(agents: SshAgents) -> Self {
        Self {
            agents: Arc::new(agents),
        }
    }
}

fn or_default(id: &str) -> &str {
    if id.is_empty() { DEFAULT_ID } else { id }
}

#[tonic::async_trait]
impl Ssh for SshService {
    async fn check_agent(
        &self,
        request: Request<CheckAgentRequest>,
    ) -> Result<Response<CheckAgentResponse>, Status> {
        let id = request.into_inner().id;
        let id = or_default(&id);
        match self.agents.get(id) {
            Some(_) => Ok(Response::new(CheckAgentResponse {})),
            None => Err(Status::unknown(format!("unset ssh forward key {id}"))),
        }
    }

    async fn forward_agent(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<BoxStream<BytesMessage>>, Status> {
        let id = request
            .metadata()
            .get(SSH_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let id = or_default(id).to_owned();
        let Some(agent) = self.agents.get(&id).map(|p| p.to_path_buf()) else {
            return Err(Status::unknown(format!("unset ssh forward key {id}")));
        };
        // The relay speaks the agent protocol on one end of an in-memory pipe; the call's
        // messages are the bytes of the other end.
        let (ours, relays) = tokio::io::duplex(PIPE);
        tokio::spawn(async move {
            if let Err(e) = relay_read_only(relays, &agent).await {
                tracing::debug!(%id, "ssh agent forwarding ended: {e}");
            }
        });
        let (reader, mut writer) = tokio::io::split(ours);
        let mut incoming = request.into_inner();
        tokio::spawn(async move {
            while let Some(Ok(message)) = incoming.next().await {
                if writer.write_all(&message.data).await.is_err() {
                    return;
                }
            }
            // The daemon's side closed: end the relay's input so it finishes.
            let _ = writer.shutdown().await;
        });
        let outgoing = ReaderStream::with_capacity(reader, 32 * 1024).map(|chunk| match chunk {
            Ok(data) => Ok(BytesMessage {
                data: data.to_vec(),
            }),
            Err(e) => Err(Status::unknown(format!("ssh agent forwarding: {e}"))),
        });
        Ok(Response::new(outgoing.boxed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn check_agent_knows_the_ids() {
        let mut agents = SshAgents::new();
        agents.insert("default", "/nonexistent/agent.sock");
        agents.insert("github", "/nonexistent/gh.sock");
        let service = SshService::new(agents);
        let check =
            |id: &str| service.check_agent(Request::new(CheckAgentRequest { id: id.into() }));
        assert!(check("").await.is_ok(), "empty is `default`");
        assert!(check("github").await.is_ok());
        let err = check("gitlab").await.unwrap_err();
        assert_eq!(err.message(), "unset ssh forward key gitlab");
    }
}
