//! The gRPC metadata a client sends with `Control/Session` to describe its session.
//!
//! BuildKit's names (`session/session.go`): `X-Docker-Expose-Session-Uuid`, `-Sharedkey` and
//! `-Grpc-Method`, the last once per method the client serves. HTTP/2 carries header names in
//! lower case and the dialer lower-cases them too (`session/grpchijack/dial.go`), so matching
//! names is case-insensitive by construction; method paths are compared case-insensitively
//! because BuildKit's `Supports` lower-cases both sides.

use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};

/// Session id; equals `SolveRequest.session` and the `local.session` attribute of sources.
pub const SESSION_ID: &str = "x-docker-expose-session-uuid";
/// Cache-sharing key of the client's local directories (empty from buildctl).
pub const SESSION_SHARED_KEY: &str = "x-docker-expose-session-sharedkey";
/// One full method path (`/pkg.Service/Method`) the client serves, per value.
pub const SESSION_METHOD: &str = "x-docker-expose-session-grpc-method";

/// Errors reading or writing session metadata.
#[derive(Debug, thiserror::Error)]
pub enum SessionHeaderError {
    /// Without an id the session cannot be matched to any Solve.
    #[error("session metadata lacks `{SESSION_ID}`")]
    MissingId,
    /// A value that is not visible ASCII cannot be read or sent as gRPC metadata.
    #[error("session metadata `{key}` has a value that is not visible ASCII")]
    InvalidValue {
        /// Lower-case metadata key.
        key: &'static str,
    },
}

/// What a session client tells the daemon about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionHeaders {
    /// Session id.
    pub id: String,
    /// Cache-sharing key; may be empty.
    pub shared_key: String,
    /// Full paths of the methods the client serves, as sent.
    pub methods: Vec<String>,
}

#[allow(
    dead_code,
    reason = "the daemon's Control/Session handler wires this up next"
)]
impl SessionHeaders {
    /// Reads the headers from the metadata of a `Control/Session` call.
    pub fn from_metadata(metadata: &MetadataMap) -> Result<Self, SessionHeaderError> {
        let id = single(metadata, SESSION_ID)?
            .filter(|id| !id.is_empty())
            .ok_or(SessionHeaderError::MissingId)?;
        let shared_key = single(metadata, SESSION_SHARED_KEY)?.unwrap_or_default();
        let mut methods = Vec::new();
        for value in metadata.get_all(SESSION_METHOD) {
            let value = value
                .to_str()
                .map_err(|_| SessionHeaderError::InvalidValue {
                    key: SESSION_METHOD,
                })?;
            // grpc-go sends one header field per value, but a proxy may fold repeated fields
            // into one with commas; method paths never contain a comma, so splitting is safe.
            methods.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned),
            );
        }
        Ok(Self {
            id,
            shared_key,
            methods,
        })
    }

    /// Whether the client serves `method`, a full path such as `/moby.filesync.v1.FileSend/DiffCopy`.
    pub fn supports(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    /// The metadata our own client sends with `Control/Session`.
    pub fn to_metadata(&self) -> Result<MetadataMap, SessionHeaderError> {
        let mut metadata = MetadataMap::new();
        metadata.insert(
            MetadataKey::from_static(SESSION_ID),
            ascii_value(SESSION_ID, &self.id)?,
        );
        metadata.insert(
            MetadataKey::from_static(SESSION_SHARED_KEY),
            ascii_value(SESSION_SHARED_KEY, &self.shared_key)?,
        );
        for method in &self.methods {
            metadata.append(
                MetadataKey::from_static(SESSION_METHOD),
                ascii_value(SESSION_METHOD, method)?,
            );
        }
        Ok(metadata)
    }
}

/// The first value of `key`, as Go's `http.Header.Get` reads it.
fn single(metadata: &MetadataMap, key: &'static str) -> Result<Option<String>, SessionHeaderError> {
    metadata
        .get(key)
        .map(|value| {
            value
                .to_str()
                .map(str::to_owned)
                .map_err(|_| SessionHeaderError::InvalidValue { key })
        })
        .transpose()
}

fn ascii_value(
    key: &'static str,
    value: &str,
) -> Result<MetadataValue<tonic::metadata::Ascii>, SessionHeaderError> {
    value
        .parse()
        .map_err(|_| SessionHeaderError::InvalidValue { key })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};

    const FILE_SEND: &str = "/moby.filesync.v1.FileSend/DiffCopy";

    /// Builds metadata the way it arrives from the wire, from names in any case.
    fn metadata(pairs: &[(&str, &str)]) -> MetadataMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        MetadataMap::from_headers(headers)
    }

    #[test]
    fn reads_buildkit_canonical_names() {
        let md = metadata(&[
            ("X-Docker-Expose-Session-Uuid", "s1"),
            ("X-Docker-Expose-Session-Sharedkey", "key"),
            ("X-Docker-Expose-Session-Grpc-Method", FILE_SEND),
            (
                "x-docker-expose-session-grpc-method",
                "/grpc.health.v1.Health/Check",
            ),
            ("X-Docker-Expose-Session-Name", "ignored"),
        ]);
        let headers = SessionHeaders::from_metadata(&md).unwrap();
        assert_eq!(
            headers,
            SessionHeaders {
                id: "s1".into(),
                shared_key: "key".into(),
                methods: vec![FILE_SEND.into(), "/grpc.health.v1.Health/Check".into()],
            }
        );
    }

    #[test]
    fn supports_ignores_case() {
        let headers = SessionHeaders {
            id: "s".into(),
            shared_key: String::new(),
            methods: vec!["/Moby.FileSync.v1.FileSend/DiffCopy".into()],
        };
        assert!(headers.supports(FILE_SEND));
        assert!(headers.supports(&FILE_SEND.to_uppercase()));
        assert!(!headers.supports("/moby.filesync.v1.FileSync/DiffCopy"));
    }

    #[test]
    fn empty_shared_key_is_accepted_and_missing_one_reads_empty() {
        let md = metadata(&[(SESSION_ID, "s"), (SESSION_SHARED_KEY, "")]);
        assert_eq!(SessionHeaders::from_metadata(&md).unwrap().shared_key, "");
        let md = metadata(&[(SESSION_ID, "s")]);
        let headers = SessionHeaders::from_metadata(&md).unwrap();
        assert_eq!(headers.shared_key, "");
        assert!(headers.methods.is_empty());
    }

    #[test]
    fn missing_or_empty_id_is_an_error() {
        let err = SessionHeaders::from_metadata(&metadata(&[(SESSION_SHARED_KEY, "k")]));
        assert!(matches!(err, Err(SessionHeaderError::MissingId)));
        let err = SessionHeaders::from_metadata(&metadata(&[(SESSION_ID, "")]));
        assert!(matches!(err, Err(SessionHeaderError::MissingId)));
    }

    #[test]
    fn folded_method_values_are_split() {
        let md = metadata(&[
            (SESSION_ID, "s"),
            (
                SESSION_METHOD,
                "/a.B/C, /moby.filesync.v1.FileSend/DiffCopy",
            ),
        ]);
        let headers = SessionHeaders::from_metadata(&md).unwrap();
        assert_eq!(headers.methods, vec!["/a.B/C", FILE_SEND]);
    }

    #[test]
    fn non_ascii_value_is_an_error() {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static(SESSION_ID),
            HeaderValue::from_bytes("sé".as_bytes()).unwrap(),
        );
        let err = SessionHeaders::from_metadata(&MetadataMap::from_headers(headers));
        assert!(matches!(
            err,
            Err(SessionHeaderError::InvalidValue { key: SESSION_ID })
        ));
        let headers = SessionHeaders {
            id: "s\n".into(),
            ..SessionHeaders::default()
        };
        assert!(headers.to_metadata().is_err());
    }

    #[test]
    fn to_metadata_round_trips() {
        let headers = SessionHeaders {
            id: "abc".into(),
            shared_key: String::new(),
            methods: vec![FILE_SEND.into(), "/grpc.health.v1.Health/Check".into()],
        };
        let md = headers.to_metadata().unwrap();
        assert_eq!(md.get_all(SESSION_METHOD).iter().count(), 2);
        assert_eq!(SessionHeaders::from_metadata(&md).unwrap(), headers);
    }
}
