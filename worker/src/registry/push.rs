//! Pushing an image to a registry (OCI Distribution), over reqwest directly.
//!
//! For each blob: `HEAD` (skip it when the repository has it), else start an upload session with a
//! cross-repository mount when the blob is known to be in another repository of the same registry
//! (`201` = mounted; `202` = the registry declined and handed us an upload session instead), then
//! either one `PUT` with the whole blob (small blobs) or `PATCH`es of [`PushOptions::chunk_size`]
//! and a closing `PUT`. Bodies are streamed from the blob file, never loaded whole. The manifest
//! goes last, with its media type as `Content-Type`.
//!
//! Why not oci-client's push API: its `mount_blob` treats the spec's `202` as an error, a streamed
//! push cannot be retried (the stream is consumed), monolithic vs chunked is one client-wide switch,
//! and its token request asks for one repository only (a mount needs the source's `pull` scope too).
//!
//! Every operation (existence check, one blob's upload, the manifest) is retried as a whole under
//! a [`RetryPolicy`]: on connection failures, timeouts, `429` and `5xx`. A blob upload is restarted
//! from a fresh session, so a registry that lost half an upload gets a clean one.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::registry::auth::{self, Challenge};
pub use crate::registry::retry::{PushError, Result, RetryPolicy};
use crate::registry::{Credentials, RegistryConfig, is_loopback_host, normalize_reference};

/// Push settings.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Blobs up to this size go in one `PUT`; larger ones in `PATCH` chunks.
    pub monolithic_max: u64,
    /// Size of each `PATCH` of a chunked upload.
    pub chunk_size: u64,
    /// Blobs uploaded at once.
    pub parallel: usize,
    /// Retries of each operation.
    pub retry: RetryPolicy,
    /// reqwest's read timeout: from sending a request to its response headers, then between
    /// two reads of the response body. An upload's body is sent within that first span, so a
    /// chunk (at most [`PushOptions::chunk_size`]) must go up within it: 16 MiB in 120 s is
    /// 140 KB/s. Requests without a streamed body are bounded by [`ANSWER_TIMEOUT`] instead.
    pub read_timeout: Duration,
}

/// The whole of a request that sends no blob (existence checks, upload sessions, manifests,
/// configs, tokens): registries answer those at once, so a registry that accepts connections and
/// says nothing fails each try in 30 s rather than in the uploads' [`PushOptions::read_timeout`].
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            monolithic_max: 16 << 20,
            chunk_size: 16 << 20,
            parallel: 3,
            retry: RetryPolicy::default(),
            read_timeout: Duration::from_secs(120),
        }
    }
}

/// Where a blob's bytes come from.
#[derive(Debug, Clone)]
pub enum BlobData {
    /// A file (streamed, never read whole).
    File(PathBuf),
    /// Bytes in memory (configs, small things).
    Bytes(Arc<[u8]>),
}

/// A blob to push.
#[derive(Debug, Clone)]
pub struct PushBlob {
    /// `sha256:…`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// Its content.
    pub data: BlobData,
}

/// What happened to one blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobOutcome {
    /// The repository already had it.
    Present,
    /// Mounted from another repository of the registry.
    Mounted,
    /// Uploaded in one `PUT`.
    Uploaded,
    /// Uploaded in this many `PATCH` chunks.
    Chunked(u32),
}

/// The result of pushing one image.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// The normalised reference pushed to.
    pub reference: String,
    /// Digest of the manifest.
    pub digest: String,
    /// What happened to each blob, in the order given.
    pub blobs: Vec<BlobOutcome>,
}

impl PushedImage {
    /// `3 uploaded, 1 mounted, 2 already present`.
    pub fn summary(&self) -> String {
        let count = |f: fn(&BlobOutcome) -> bool| self.blobs.iter().filter(|b| f(b)).count();
        format!(
            "{} uploaded, {} mounted, {} already present",
            count(|b| matches!(b, BlobOutcome::Uploaded | BlobOutcome::Chunked(_))),
            count(|b| matches!(b, BlobOutcome::Mounted)),
            count(|b| matches!(b, BlobOutcome::Present)),
        )
    }
}

/// How we authenticate to one registry host, learnt from its challenges.
enum HostAuth {
    Basic(String),
    Bearer {
        realm: String,
        service: Option<String>,
        /// Tokens by scope set.
        tokens: HashMap<String, String>,
    },
}

/// A push destination.
struct Target {
    /// `host[:port]` to connect to.
    host: String,
    /// Host as written (for credential lookup: `docker.io` besides `index.docker.io`).
    registry: String,
    repository: String,
    /// Tag, or the digest when the name has no tag.
    tag: Option<String>,
    digest: Option<String>,
    display: String,
    base: Url,
}

/// Pushes images to registries. Learns which blobs live in which repository, so a later push to
/// another repository of the same registry can mount instead of uploading.
pub struct Pusher {
    client: reqwest::Client,
    config: RegistryConfig,
    options: PushOptions,
    auth: tokio::sync::Mutex<HashMap<String, HostAuth>>,
    /// `(host, digest)` → repositories known to hold the blob.
    known: Mutex<HashMap<(String, String), BTreeSet<String>>>,
    /// `(host, repository)` that may hold some of the blobs (e.g. the base image's).
    sources: Mutex<Vec<(String, String)>>,
}

impl std::fmt::Debug for Pusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pusher")
            .field("insecure", &self.config.insecure)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Pusher {
    /// A pusher with these registry settings (plain-HTTP hosts, credentials, connect timeout).
    pub fn new(config: RegistryConfig, options: PushOptions) -> Result<Self> {
        let client = crate::tls::client_builder()
            .connect_timeout(config.connect_timeout.unwrap_or(Duration::from_secs(10)))
            .read_timeout(options.read_timeout)
            .user_agent(concat!("memobuild/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PushError::Protocol {
                host: String::new(),
                what: "starting the HTTP client".into(),
                message: e.to_string(),
            })?;
        Ok(Pusher {
            client,
            config,
            options,
            auth: tokio::sync::Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
            sources: Mutex::new(Vec::new()),
        })
    }

    /// Says that `reference`'s repository may hold some of the blobs to push (a base image):
    /// blobs missing from the target are then mounted from there when it is on the same registry.
    pub fn add_mount_source(&self, reference: &str) {
        if let Ok(r) = normalize_reference(reference)
            && let Ok(mut s) = self.sources.lock()
        {
            let entry = (r.resolve_registry().to_owned(), r.repository().to_owned());
            if !s.contains(&entry) {
                s.push(entry);
            }
        }
    }

    fn remember(&self, host: &str, digest: &str, repository: &str) {
        if let Ok(mut k) = self.known.lock() {
            k.entry((host.to_owned(), digest.to_owned()))
                .or_default()
                .insert(repository.to_owned());
        }
    }

    /// A repository of `t`'s registry other than `t`'s that holds, or may hold, `digest`.
    fn mount_source(&self, t: &Target, digest: &str) -> Option<String> {
        let known = self.known.lock().ok().and_then(|k| {
            k.get(&(t.host.clone(), digest.to_owned()))
                .and_then(|repos| repos.iter().find(|r| **r != t.repository).cloned())
        });
        known.or_else(|| {
            self.sources.lock().ok().and_then(|s| {
                s.iter()
                    .find(|(h, r)| *h == t.host && *r != t.repository)
                    .map(|(_, r)| r.clone())
            })
        })
    }

    fn is_insecure(&self, host: &str) -> bool {
        is_loopback_host(host)
            || self
                .config
                .insecure
                .iter()
                .any(|h| h == host || host.rsplit_once(':').is_some_and(|(name, _)| name == h))
    }

    fn credentials(&self, t: &Target) -> Option<&Credentials> {
        self.config
            .credentials
            .get(&t.registry)
            .or_else(|| self.config.credentials.get(&t.host))
    }

    fn target(&self, name: &str) -> Result<Target> {
        let r = normalize_reference(name).map_err(|e| PushError::InvalidReference {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        let host = r.resolve_registry().to_owned();
        let scheme = if self.is_insecure(&host) {
            "http"
        } else {
            "https"
        };
        let base = Url::parse(&format!("{scheme}://{host}/")).map_err(|e| {
            PushError::InvalidReference {
                name: name.to_owned(),
                reason: e.to_string(),
            }
        })?;
        Ok(Target {
            registry: r.registry().to_owned(),
            repository: r.repository().to_owned(),
            tag: r.tag().map(str::to_owned),
            digest: r.digest().map(str::to_owned),
            display: r.whole(),
            host,
            base,
        })
    }

    /// Pushes `blobs` (layers and config) and then `manifest` to `name`. Returns the manifest
    /// digest.
    pub async fn push(
        &self,
        name: &str,
        blobs: &[PushBlob],
        manifest: &[u8],
        manifest_media_type: &str,
    ) -> Result<PushedImage> {
        let t = self.target(name)?;
        // The blobs' futures are made up front: a stream mapping with a closure over
        // references is not provably `Send` (rust-lang/rust#110338), and a push runs in
        // spawned tasks of the daemon.
        let pushes: Vec<futures::future::BoxFuture<'_, Result<BlobOutcome>>> = blobs
            .iter()
            .map(|b| Box::pin(self.push_blob(&t, b)) as futures::future::BoxFuture<'_, _>)
            .collect();
        let outcomes: Vec<BlobOutcome> = futures::stream::iter(pushes)
            .buffered(self.options.parallel.max(1))
            .try_collect()
            .await?;
        let digest = crate::blobs::sha256_digest(manifest);
        let what = format!("pushing `{}`: manifest `{digest}`", t.display);
        if let Some(d) = &t.digest
            && *d != digest
        {
            return Err(PushError::InvalidReference {
                name: name.to_owned(),
                reason: format!("the image's manifest digest is {digest}, not {d}"),
            });
        }
        let reference = t.tag.clone().unwrap_or_else(|| digest.clone());
        self.options
            .retry
            .run(|| self.put_manifest(&t, &reference, manifest, manifest_media_type, &what))
            .await?;
        // The tag names this image now: a build that resolved it a moment ago must ask again.
        if t.tag.is_some()
            && let Some(cache) = self.config.resolved.clone()
        {
            let display = t.display.clone();
            let _ = tokio::task::spawn_blocking(move || cache.forget(&display)).await;
        }
        Ok(PushedImage {
            reference: t.display.clone(),
            digest,
            blobs: outcomes,
        })
    }

    async fn push_blob(&self, t: &Target, b: &PushBlob) -> Result<BlobOutcome> {
        let what = format!("pushing `{}`: blob `{}`", t.display, b.digest);
        if self
            .options
            .retry
            .run(|| self.blob_exists(t, &b.digest, &what))
            .await?
        {
            self.remember(&t.host, &b.digest, &t.repository);
            return Ok(BlobOutcome::Present);
        }
        let from = self.mount_source(t, &b.digest);
        let outcome = self
            .options
            .retry
            .run(|| self.upload(t, b, from.as_deref(), &what))
            .await?;
        self.remember(&t.host, &b.digest, &t.repository);
        Ok(outcome)
    }

    async fn blob_exists(&self, t: &Target, digest: &str, what: &str) -> Result<bool> {
        let url = self.url(t, &format!("v2/{}/blobs/{digest}", t.repository), what)?;
        let scopes = [auth::push_scope(&t.repository)];
        let resp = self
            .send(t, &scopes, what, || {
                let url = url.clone();
                async move { Ok(self.client.request(Method::HEAD, url)) }
            })
            .await?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(status_error(t, what, resp).await),
        }
    }

    /// One whole upload: a session (with a mount attempt), then the bytes, then the commit.
    async fn upload(
        &self,
        t: &Target,
        b: &PushBlob,
        from: Option<&str>,
        what: &str,
    ) -> Result<BlobOutcome> {
        if let BlobData::File(path) = &b.data {
            let len = tokio::fs::metadata(path)
                .await
                .map_err(|source| PushError::Local {
                    what: what.to_owned(),
                    path: path.clone(),
                    source,
                })?
                .len();
            if len != b.size {
                return Err(PushError::Local {
                    what: what.to_owned(),
                    path: path.clone(),
                    source: std::io::Error::other(format!(
                        "the file is {len} bytes, the descriptor says {}",
                        b.size
                    )),
                });
            }
        }
        let mut scopes = vec![auth::push_scope(&t.repository)];
        let mut url = self.url(t, &format!("v2/{}/blobs/uploads/", t.repository), what)?;
        if let Some(from) = from {
            scopes.push(auth::pull_scope(from));
            url.query_pairs_mut()
                .append_pair("mount", &b.digest)
                .append_pair("from", from);
        }
        let post = |url: Url, scopes: Vec<String>| async move {
            self.send(t, &scopes, what, || {
                let url = url.clone();
                async move {
                    Ok(self
                        .client
                        .request(Method::POST, url)
                        .header(CONTENT_LENGTH, 0))
                }
            })
            .await
        };
        let mut resp = post(url, scopes.clone()).await;
        if from.is_some() {
            match resp {
                Ok(r) if r.status() == StatusCode::CREATED => {
                    tracing::debug!("mounted {} into {} from {from:?}", b.digest, t.repository);
                    return Ok(BlobOutcome::Mounted);
                }
                Ok(r) if r.status() == StatusCode::ACCEPTED => resp = Ok(r),
                // The mount was refused in a way the spec does not foresee (no access to the
                // source, an old registry): a plain upload will do.
                other => {
                    if let Err(e) = &other {
                        tracing::debug!("mount of {} failed: {e}; uploading", b.digest);
                    }
                    scopes.truncate(1);
                    let url = self.url(t, &format!("v2/{}/blobs/uploads/", t.repository), what)?;
                    resp = post(url, scopes.clone()).await;
                }
            }
        }
        let resp = resp?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error(t, what, resp).await);
        }
        let mut location = self.location(t, &resp, what)?;

        if b.size <= self.options.monolithic_max {
            let mut url = location;
            url.query_pairs_mut().append_pair("digest", &b.digest);
            let resp = self
                .send(t, &scopes, what, || {
                    let url = url.clone();
                    async move {
                        Ok(self
                            .client
                            .request(Method::PUT, url)
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .header(CONTENT_LENGTH, b.size)
                            .body(self.body(b, 0, b.size, what).await?))
                    }
                })
                .await?;
            if !resp.status().is_success() {
                return Err(status_error(t, what, resp).await);
            }
            return Ok(BlobOutcome::Uploaded);
        }

        let chunk = self.options.chunk_size.max(1);
        let mut offset = 0u64;
        let mut chunks = 0u32;
        while offset < b.size {
            let len = chunk.min(b.size - offset);
            let url = location.clone();
            let resp = self
                .send(t, &scopes, what, || {
                    let url = url.clone();
                    async move {
                        Ok(self
                            .client
                            .request(Method::PATCH, url)
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .header(
                                reqwest::header::CONTENT_RANGE,
                                format!("{offset}-{}", offset + len - 1),
                            )
                            .header(CONTENT_LENGTH, len)
                            .body(self.body(b, offset, len, what).await?))
                    }
                })
                .await?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(status_error(t, what, resp).await);
            }
            location = self.location(t, &resp, what)?;
            offset += len;
            chunks += 1;
        }
        let mut url = location;
        url.query_pairs_mut().append_pair("digest", &b.digest);
        let resp = self
            .send(t, &scopes, what, || {
                let url = url.clone();
                async move {
                    Ok(self
                        .client
                        .request(Method::PUT, url)
                        .header(CONTENT_LENGTH, 0))
                }
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(t, what, resp).await);
        }
        Ok(BlobOutcome::Chunked(chunks))
    }

    async fn put_manifest(
        &self,
        t: &Target,
        reference: &str,
        manifest: &[u8],
        media_type: &str,
        what: &str,
    ) -> Result<()> {
        let url = self.url(
            t,
            &format!("v2/{}/manifests/{reference}", t.repository),
            what,
        )?;
        let scopes = [auth::push_scope(&t.repository)];
        let resp = self
            .send(t, &scopes, what, || {
                let url = url.clone();
                async move {
                    Ok(self
                        .client
                        .request(Method::PUT, url)
                        .header(CONTENT_TYPE, media_type)
                        .body(manifest.to_vec()))
                }
            })
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(t, what, resp).await);
        }
        Ok(())
    }

    fn url(&self, t: &Target, path: &str, what: &str) -> Result<Url> {
        t.base.join(path).map_err(|e| PushError::Protocol {
            host: t.host.clone(),
            what: what.to_owned(),
            message: format!("bad URL path `{path}`: {e}"),
        })
    }

    /// The upload session URL a response names (relative ones resolved against the registry).
    fn location(&self, t: &Target, resp: &reqwest::Response, what: &str) -> Result<Url> {
        let protocol = |message: String| PushError::Protocol {
            host: t.host.clone(),
            what: what.to_owned(),
            message,
        };
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                protocol(format!(
                    "HTTP {} without an upload `Location`",
                    resp.status().as_u16()
                ))
            })?;
        resp.url()
            .join(loc)
            .map_err(|e| protocol(format!("bad upload location `{loc}`: {e}")))
    }

    /// `len` bytes of the blob from `offset`, as a streamed body.
    async fn body(&self, b: &PushBlob, offset: u64, len: u64, what: &str) -> Result<reqwest::Body> {
        match &b.data {
            BlobData::Bytes(bytes) => {
                let range = usize::try_from(offset)
                    .ok()
                    .zip(usize::try_from(offset + len).ok())
                    .and_then(|(s, e)| bytes.get(s..e));
                match range {
                    Some(slice) => Ok(reqwest::Body::from(slice.to_vec())),
                    None => Err(PushError::Local {
                        what: what.to_owned(),
                        path: PathBuf::from("<memory>"),
                        source: std::io::Error::other(format!(
                            "blob is {} bytes, not {}",
                            bytes.len(),
                            b.size
                        )),
                    }),
                }
            }
            BlobData::File(path) => {
                let local = |source| PushError::Local {
                    what: what.to_owned(),
                    path: path.clone(),
                    source,
                };
                let mut f = tokio::fs::File::open(path).await.map_err(local)?;
                f.seek(std::io::SeekFrom::Start(offset))
                    .await
                    .map_err(local)?;
                let stream = tokio_util::io::ReaderStream::with_capacity(f.take(len), 256 << 10);
                Ok(reqwest::Body::wrap_stream(stream))
            }
        }
    }

    /// Sends the request `make` builds, with the host's credentials or a token for `scopes`.
    /// On a 401 it answers the challenge and sends once more (requests are rebuilt, bodies
    /// reopened, so that is always possible); a second 401, or a 403, is an error.
    async fn send<F, Fut>(
        &self,
        t: &Target,
        scopes: &[String],
        what: &str,
        make: F,
    ) -> Result<reqwest::Response>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<reqwest::RequestBuilder>>,
    {
        let mut answered = false;
        loop {
            let mut rb = make().await?;
            if let Some(h) = self.auth_header(t, scopes, what).await? {
                rb = rb.header(AUTHORIZATION, h);
            }
            let mut req = rb.build().map_err(|e| net_error(t, what, &e))?;
            if req.body().is_none_or(|b| b.as_bytes().is_some()) {
                *req.timeout_mut() = Some(ANSWER_TIMEOUT);
            }
            let resp = self
                .client
                .execute(req)
                .await
                .map_err(|e| net_error(t, what, &e))?;
            match resp.status() {
                StatusCode::UNAUTHORIZED if !answered => {
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(Challenge::parse);
                    let message = error_message(resp).await;
                    self.answer(t, scopes, challenge, what, message).await?;
                    answered = true;
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    let status = resp.status().as_u16();
                    return Err(PushError::Unauthorized {
                        host: t.host.clone(),
                        what: what.to_owned(),
                        status,
                        message: error_message(resp).await,
                        username: self.credentials(t).map(|c| c.username.clone()),
                    });
                }
                _ => return Ok(resp),
            }
        }
    }

    /// Learns how to authenticate from a 401's challenge.
    async fn answer(
        &self,
        t: &Target,
        scopes: &[String],
        challenge: Option<Challenge>,
        what: &str,
        message: String,
    ) -> Result<()> {
        let creds = self.credentials(t);
        let refused = || PushError::Unauthorized {
            host: t.host.clone(),
            what: what.to_owned(),
            status: 401,
            message: message.clone(),
            username: creds.map(|c| c.username.clone()),
        };
        let mut auth = self.auth.lock().await;
        match challenge {
            Some(Challenge::Basic) => {
                let c = creds.ok_or_else(refused)?;
                auth.insert(t.host.clone(), HostAuth::Basic(auth::basic_header(c)));
            }
            Some(Challenge::Bearer { realm, service }) => match auth.get_mut(&t.host) {
                // Our token was refused (expired, or too narrow): fetch a new one.
                Some(HostAuth::Bearer { tokens, .. }) => {
                    tokens.remove(&scopes.join(" "));
                }
                _ => {
                    auth.insert(
                        t.host.clone(),
                        HostAuth::Bearer {
                            realm,
                            service,
                            tokens: HashMap::new(),
                        },
                    );
                }
            },
            None => return Err(refused()),
        }
        Ok(())
    }

    /// The `Authorization` header for a request with `scopes`, fetching a token when needed.
    async fn auth_header(
        &self,
        t: &Target,
        scopes: &[String],
        what: &str,
    ) -> Result<Option<String>> {
        let mut auth = self.auth.lock().await;
        match auth.get_mut(&t.host) {
            None => Ok(None),
            Some(HostAuth::Basic(h)) => Ok(Some(h.clone())),
            Some(HostAuth::Bearer {
                realm,
                service,
                tokens,
            }) => {
                let key = scopes.join(" ");
                if let Some(tok) = tokens.get(&key) {
                    return Ok(Some(format!("Bearer {tok}")));
                }
                let tok = self
                    .fetch_token(t, realm, service.as_deref(), scopes, what)
                    .await?;
                tokens.insert(key, tok.clone());
                Ok(Some(format!("Bearer {tok}")))
            }
        }
    }

    async fn fetch_token(
        &self,
        t: &Target,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
        what: &str,
    ) -> Result<String> {
        let mut query: Vec<(&str, &str)> = scopes.iter().map(|s| ("scope", s.as_str())).collect();
        if let Some(s) = service {
            query.push(("service", s));
        }
        let mut rb = self
            .client
            .get(realm)
            .timeout(ANSWER_TIMEOUT)
            .query(&query)
            .header(ACCEPT, "application/json");
        let creds = self.credentials(t);
        if let Some(c) = creds {
            rb = rb.basic_auth(&c.username, Some(&c.password));
        }
        let resp = rb.send().await.map_err(|e| net_error(t, what, &e))?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(PushError::Unauthorized {
                host: t.host.clone(),
                what: what.to_owned(),
                status: status.as_u16(),
                message: format!("token endpoint {realm}: {}", error_message(resp).await),
                username: creds.map(|c| c.username.clone()),
            });
        }
        if !status.is_success() {
            return Err(status_error(t, what, resp).await);
        }
        let body: auth::TokenResponse = resp.json().await.map_err(|e| PushError::Protocol {
            host: t.host.clone(),
            what: what.to_owned(),
            message: format!("token endpoint {realm}: {e}"),
        })?;
        body.into_token().ok_or_else(|| PushError::Protocol {
            host: t.host.clone(),
            what: what.to_owned(),
            message: format!("token endpoint {realm} returned no token"),
        })
    }
}

fn net_error(t: &Target, what: &str, e: &reqwest::Error) -> PushError {
    let reason = if e.is_timeout() {
        "i/o timeout".to_owned()
    } else {
        crate::registry::root_cause(e)
    };
    PushError::Unreachable {
        host: t.host.clone(),
        what: what.to_owned(),
        reason,
        attempts: 1,
    }
}

async fn status_error(t: &Target, what: &str, resp: reqwest::Response) -> PushError {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    PushError::Status {
        host: t.host.clone(),
        what: what.to_owned(),
        status,
        message: error_message(resp).await,
        attempts: 1,
        retry_after,
    }
}

/// The registry's error envelope (`{"errors":[{"code","message"}]}`) as `CODE: message; …`, or
/// the first line of whatever text it sent.
async fn error_message(resp: reqwest::Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    envelope_message(&text)
}

fn envelope_message(text: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(env) = serde_json::from_str::<Envelope>(text) {
        return env
            .errors
            .iter()
            .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                (false, false) => format!("{}: {}", e.code, e.message),
                (false, true) => e.code.clone(),
                _ => e.message.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    let line = text.lines().next().unwrap_or_default().trim();
    line.chars().take(200).collect()
}

#[cfg(test)]
mod tests;
