//! `moby.buildkit.secrets.v1.Secrets/GetSecret`: the values of `--secret`, read once when the
//! build starts.
//!
//! An unknown id is NotFound, which the daemon turns into "secret not found" for a required
//! mount and skips for `required=false` (`session/secrets/secrets.go`). As buildctl
//! (`secretsprovider`), a value over 500 KiB is refused.

use std::sync::Arc;

use memobuild_proto::secrets::secrets_server::Secrets as SecretsApi;
use memobuild_proto::secrets::{GetSecretRequest, GetSecretResponse};
use memobuild_worker::secrets::Secrets;
use tonic::{Request, Response, Status};

/// BuildKit's `secretsprovider.MaxSecretSize`.
pub const MAX_SECRET_SIZE: usize = 500 * 1024;

/// Serves secret values by id.
#[derive(Debug, Clone)]
pub struct SecretsService {
    secrets: Arc<Secrets>,
}

impl SecretsService {
    /// Serves `secrets`.
    pub fn new(secrets: Secrets) -> Self {
        Self {
            secrets: Arc::new(secrets),
        }
    }
}

#[tonic::async_trait]
impl SecretsApi for SecretsService {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<GetSecretResponse>, Status> {
        let id = request.into_inner().id;
        let Some(data) = self.secrets.get(&id) else {
            // buildctl's message is its store's bare `not found`; the daemon adds the id.
            return Err(Status::not_found("not found"));
        };
        if data.len() > MAX_SECRET_SIZE {
            return Err(Status::unknown(format!(
                "invalid secret size {}",
                data.len()
            )));
        }
        tracing::debug!(%id, "sharing a secret");
        Ok(Response::new(GetSecretResponse {
            data: data.to_vec(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(service: &SecretsService, id: &str) -> Result<Vec<u8>, Status> {
        service
            .get_secret(Request::new(GetSecretRequest {
                id: id.into(),
                ..GetSecretRequest::default()
            }))
            .await
            .map(|r| r.into_inner().data)
    }

    #[tokio::test]
    async fn known_unknown_and_oversized_secrets() {
        let mut s = Secrets::new();
        s.insert("token", b"s3cret".to_vec());
        s.insert("huge", vec![0; MAX_SECRET_SIZE + 1]);
        let service = SecretsService::new(s);
        assert_eq!(get(&service, "token").await.unwrap(), b"s3cret");
        assert_eq!(
            get(&service, "nope").await.unwrap_err().code(),
            tonic::Code::NotFound
        );
        let err = get(&service, "huge").await.unwrap_err();
        assert!(err.message().contains("invalid secret size"), "{err}");
    }
}
