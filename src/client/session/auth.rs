//! `moby.filesync.v1.Auth`: registry credentials for the daemon's pulls and pushes, from
//! `~/.docker/config.json` and its credential helpers, as buildctl's `authprovider` reads them.
//!
//! Only `Credentials` is served: the daemon asks it for the registry host it talks to
//! (`registry-1.docker.io` for Docker Hub) and does the token exchange itself; an empty answer
//! means anonymous. `GetTokenAuthority` answers Unimplemented, which makes BuildKit fall back
//! to exactly that (`util/resolver/authorizer.go`); `FetchToken` and `VerifyTokenAuthority`
//! are only called once a token authority exists, so they answer Unimplemented too and are
//! not advertised.

use std::sync::Arc;

use memobuild_proto::filesync::auth_server::Auth;
use memobuild_proto::filesync::{CredentialsRequest, CredentialsResponse};
use memobuild_worker::registry::CredentialProvider;
use tonic::{Request, Response, Status};

/// Answers credential requests from a provider.
#[derive(Clone)]
pub struct AuthService {
    provider: Arc<dyn CredentialProvider>,
}

impl AuthService {
    /// Serves the credentials `provider` knows.
    pub fn new(provider: Arc<dyn CredentialProvider>) -> Self {
        Self { provider }
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        let response = match self.provider.credentials(&host).await {
            Some(c) => {
                tracing::debug!(%host, "sharing registry credentials");
                CredentialsResponse {
                    username: c.username,
                    secret: c.password,
                }
            }
            None => CredentialsResponse::default(),
        };
        Ok(Response::new(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memobuild_worker::registry::Credentials;

    struct OneHost;

    impl CredentialProvider for OneHost {
        fn credentials<'a>(
            &'a self,
            host: &'a str,
        ) -> futures::future::BoxFuture<'a, Option<Credentials>> {
            Box::pin(async move {
                (host == "registry.example:5000").then(|| Credentials {
                    username: "u".into(),
                    password: "p".into(),
                })
            })
        }
    }

    #[tokio::test]
    async fn known_host_gets_credentials_others_anonymous() {
        let service = AuthService::new(Arc::new(OneHost));
        let ask = |host: &str| {
            service.credentials(Request::new(CredentialsRequest { host: host.into() }))
        };
        let known = ask("registry.example:5000").await.unwrap().into_inner();
        assert_eq!((known.username.as_str(), known.secret.as_str()), ("u", "p"));
        let other = ask("registry-1.docker.io").await.unwrap().into_inner();
        assert_eq!(other, CredentialsResponse::default());
        let authority = service
            .get_token_authority(Request::new(Default::default()))
            .await
            .unwrap_err();
        assert_eq!(authority.code(), tonic::Code::Unimplemented);
    }
}
