//! Registry credentials asked of a session's client (`Auth.Credentials`), as BuildKit's
//! resolver does: the client answers from its Docker config and credential helpers; an empty
//! answer, an error or a client without the Auth service means anonymous access.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use memobuild_proto::filesync::CredentialsRequest;
use memobuild_proto::filesync::auth_client::AuthClient;
use memobuild_worker::registry::{CredentialProvider, Credentials};

use super::Scope;

const CREDENTIALS: &str = "/moby.filesync.v1.Auth/Credentials";

/// The [`CredentialProvider`] of a session's build.
pub struct SessionCredentials {
    scope: Arc<Scope>,
}

impl SessionCredentials {
    /// Credentials asked through `scope`'s own session.
    pub fn new(scope: Arc<Scope>) -> Self {
        SessionCredentials { scope }
    }

    async fn ask(&self, host: &str) -> Result<Option<Credentials>, String> {
        let session = self.scope.session(None).await?;
        if !session.supports(CREDENTIALS) {
            return Ok(None);
        }
        let answer = AuthClient::new(session.channel.clone())
            .credentials(CredentialsRequest {
                host: host.to_owned(),
            })
            .await
            .map_err(|s| s.message().to_owned())?
            .into_inner();
        if answer.username.is_empty() && answer.secret.is_empty() {
            return Ok(None);
        }
        Ok(Some(Credentials {
            username: answer.username,
            password: answer.secret,
        }))
    }
}

impl CredentialProvider for SessionCredentials {
    fn credentials<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Option<Credentials>> {
        async move {
            match self.ask(host).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("no credentials for `{host}` from the client: {e}");
                    None
                }
            }
        }
        .boxed()
    }
}
