//! Secrets asked of a session's client when a step mounts them (`Secrets.GetSecret`): values
//! travel only in memory, to the step's private tmpfs or environment; `NotFound` means the
//! client has no such secret.

use std::sync::Arc;

use futures::FutureExt;
use memobuild_proto::secrets::GetSecretRequest;
use memobuild_proto::secrets::secrets_client::SecretsClient;
use memobuild_worker::caller::{SecretSource, SourceError, SourceFuture};

use super::Scope;
use crate::session::transport::MAX_DECODING_MESSAGE_SIZE;

const GET_SECRET: &str = "/moby.buildkit.secrets.v1.Secrets/GetSecret";

/// The [`SecretSource`] of a session's build.
pub struct SessionSecrets {
    scope: Arc<Scope>,
}

impl SessionSecrets {
    /// Secrets asked through `scope`'s own session.
    pub fn new(scope: Arc<Scope>) -> Self {
        SessionSecrets { scope }
    }
}

impl SecretSource for SessionSecrets {
    fn secret<'a>(&'a self, id: &'a str) -> SourceFuture<'a, Option<Arc<Vec<u8>>>> {
        async move {
            let session = self.scope.session(None).await.map_err(SourceError)?;
            if !session.supports(GET_SECRET) {
                return Ok(None);
            }
            let answer = SecretsClient::new(session.channel.clone())
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE)
                .get_secret(GetSecretRequest {
                    id: id.to_owned(),
                    annotations: Default::default(),
                })
                .await;
            match answer {
                Ok(r) => Ok(Some(Arc::new(r.into_inner().data))),
                Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
                Err(s) => Err(SourceError(format!(
                    "the client failed to give secret `{id}`: {}",
                    s.message()
                ))),
            }
        }
        .boxed()
    }
}
