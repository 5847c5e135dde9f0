use super::*;

#[test]
fn envelope_messages() {
    assert_eq!(
        envelope_message(
            r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry","detail":"x"}]}"#
        ),
        "BLOB_UNKNOWN: blob unknown to registry"
    );
    assert_eq!(envelope_message("oops\nmore"), "oops");
    assert_eq!(envelope_message(""), "");
}

#[test]
fn mount_source_prefers_known_repositories_of_the_same_host() {
    let p = Pusher::new(RegistryConfig::default(), PushOptions::default()).unwrap();
    let t = p.target("127.0.0.1:5000/e2e/app:1").unwrap();
    assert_eq!(p.mount_source(&t, "sha256:aa"), None);
    p.add_mount_source("127.0.0.1:5000/library/busybox:latest");
    p.add_mount_source("127.0.0.2:5000/library/other:latest");
    assert_eq!(
        p.mount_source(&t, "sha256:aa").as_deref(),
        Some("library/busybox")
    );
    p.remember("127.0.0.1:5000", "sha256:aa", "e2e/app");
    p.remember("127.0.0.1:5000", "sha256:aa", "e2e/other");
    assert_eq!(
        p.mount_source(&t, "sha256:aa").as_deref(),
        Some("e2e/other")
    );
    assert_eq!(t.base.as_str(), "http://127.0.0.1:5000/");
    let t = p.target("registry.example:5000/x/y:1").unwrap();
    assert_eq!(t.base.as_str(), "https://registry.example:5000/");
}

/// A fake registry with bearer-token auth, enough of the push protocol to check what the pusher
/// sends: tokens from `/token` only with the right basic credentials, every `/v2/` request needs
/// one whose scopes cover it; uploads in sessions (`PATCH` needs `Content-Range` in order), mounts
/// when the source repository has the blob, digests verified on the closing `PUT`.
mod fake {
    use std::collections::{BTreeMap, HashMap, HashSet};
    use std::sync::{Arc, Mutex};

    use axum::body::Bytes;
    use axum::http::{HeaderMap, Method, StatusCode, Uri};
    use axum::response::{IntoResponse, Response};

    #[derive(Default)]
    pub struct State {
        pub addr: String,
        /// token → scopes it was issued for.
        pub tokens: HashMap<String, Vec<String>>,
        /// repository → blob digests.
        pub blobs: HashMap<String, HashSet<String>>,
        pub uploads: HashMap<String, (String, Vec<u8>)>,
        /// Upload ids are never reused: blobs are pushed concurrently, and a finished upload
        /// leaves `uploads` while others are still open.
        pub upload_ids: usize,
        pub manifests: BTreeMap<String, (String, Vec<u8>)>,
        /// `METHOD path` of every request, with the status answered.
        pub log: Vec<String>,
        pub token_requests: Vec<String>,
    }

    pub type Shared = Arc<Mutex<State>>;

    fn challenge(addr: &str) -> Response {
        (
            StatusCode::UNAUTHORIZED,
            [(
                "WWW-Authenticate",
                format!(r#"Bearer realm="http://{addr}/token",service="fake""#),
            )],
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
        )
            .into_response()
    }

    fn query(uri: &Uri) -> Vec<(String, String)> {
        uri.query()
            .unwrap_or("")
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                (
                    k.to_owned(),
                    v.replace("%3A", ":")
                        .replace("%2F", "/")
                        .replace("%2C", ","),
                )
            })
            .collect()
    }

    pub async fn handle(
        axum::extract::State(st): axum::extract::State<Shared>,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let mut s = st.lock().unwrap();
        let resp = route(&mut s, &method, &uri, &headers, &body);
        s.log.push(format!(
            "{method} {} {}",
            uri.path(),
            resp.status().as_u16()
        ));
        resp
    }

    fn route(
        s: &mut State,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Response {
        let path = uri.path().to_owned();
        let q = query(uri);
        let get = |k: &str| q.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
        if path == "/token" {
            // basic tester:s3cret
            let ok = headers.get("authorization").and_then(|v| v.to_str().ok())
                == Some("Basic dGVzdGVyOnMzY3JldA==");
            if !ok {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            let scopes: Vec<String> = q
                .iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.clone())
                .collect();
            s.token_requests.push(scopes.join(" "));
            let tok = format!("tok{}", s.tokens.len());
            s.tokens.insert(tok.clone(), scopes);
            return format!(r#"{{"token":"{tok}"}}"#).into_response();
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return StatusCode::NOT_FOUND.into_response();
        };
        // Which repository and access the request needs.
        let (repo, tail) = match ["/blobs/uploads/", "/blobs/", "/manifests/"]
            .iter()
            .find_map(|m| {
                rest.find(m)
                    .map(|i| (rest[..i].to_owned(), rest[i..].to_owned()))
            }) {
            Some(x) => x,
            None => return challenge(&s.addr),
        };
        let need_push = *method != Method::HEAD && *method != Method::GET;
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let granted = token
            .as_ref()
            .and_then(|t| s.tokens.get(t))
            .cloned()
            .unwrap_or_default();
        let allows = |repo: &str, push: bool| {
            granted.iter().any(|g| {
                g == &format!("repository:{repo}:pull,push")
                    || (!push && g == &format!("repository:{repo}:pull"))
            })
        };
        if !allows(&repo, need_push) {
            return challenge(&s.addr);
        }
        let loc = |id: &str| format!("/v2/{repo}/blobs/uploads/{id}");
        if let Some(digest) = tail
            .strip_prefix("/blobs/")
            .filter(|d| !d.starts_with("uploads/"))
        {
            let has = s.blobs.get(&repo).is_some_and(|b| b.contains(digest));
            return if has {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            }
            .into_response();
        }
        if tail == "/blobs/uploads/" && *method == Method::POST {
            if let (Some(d), Some(from)) = (get("mount"), get("from"))
                && allows(&from, false)
                && s.blobs.get(&from).is_some_and(|b| b.contains(&d))
            {
                s.blobs.entry(repo.clone()).or_default().insert(d);
                return StatusCode::CREATED.into_response();
            }
            let id = format!("u{}", s.upload_ids);
            s.upload_ids += 1;
            s.uploads.insert(id.clone(), (repo.clone(), Vec::new()));
            return (StatusCode::ACCEPTED, [("Location", loc(&id))]).into_response();
        }
        if let Some(id) = tail.strip_prefix("/blobs/uploads/") {
            let Some((_, data)) = s.uploads.get_mut(id) else {
                return StatusCode::NOT_FOUND.into_response();
            };
            if *method == Method::PATCH {
                let range = headers
                    .get("content-range")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if range != format!("{}-{}", data.len(), data.len() + body.len() - 1) {
                    return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                }
                data.extend_from_slice(body);
                // A relative location with state, as some registries do.
                return (
                    StatusCode::ACCEPTED,
                    [("Location", format!("{}?_state={}", loc(id), data.len()))],
                )
                    .into_response();
            }
            if *method == Method::PUT {
                data.extend_from_slice(body);
                let d = crate::blobs::sha256_digest(data);
                if get("digest").as_deref() != Some(d.as_str()) {
                    return StatusCode::BAD_REQUEST.into_response();
                }
                s.uploads.remove(id);
                s.blobs.entry(repo.clone()).or_default().insert(d);
                return StatusCode::CREATED.into_response();
            }
        }
        if let Some(reference) = tail.strip_prefix("/manifests/")
            && *method == Method::PUT
        {
            let ct = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            s.manifests
                .insert(format!("{repo}:{reference}"), (ct, body.to_vec()));
            return StatusCode::CREATED.into_response();
        }
        StatusCode::METHOD_NOT_ALLOWED.into_response()
    }

    pub async fn start() -> Shared {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let st: Shared = Arc::default();
        st.lock().unwrap().addr = listener.local_addr().unwrap().to_string();
        let app = axum::Router::new().fallback(handle).with_state(st.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        st
    }
}

#[tokio::test]
async fn token_auth_mount_monolithic_and_chunked_against_a_fake_registry() {
    let reg = fake::start().await;
    let addr = reg.lock().unwrap().addr.clone();
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..2500u32).flat_map(|i| i.to_le_bytes()).collect(); // 10000 bytes
    let big_path = dir.path().join("big");
    std::fs::write(&big_path, &big).unwrap();
    let blob = |data: Vec<u8>| PushBlob {
        digest: crate::blobs::sha256_digest(&data),
        size: data.len() as u64,
        data: BlobData::Bytes(Arc::from(data.as_slice())),
    };
    let blobs = vec![
        PushBlob {
            digest: crate::blobs::sha256_digest(&big),
            size: big.len() as u64,
            data: BlobData::File(big_path.clone()),
        },
        blob(b"small".to_vec()),
        blob(b"{}".to_vec()),
    ];
    let options = PushOptions {
        monolithic_max: 4096,
        chunk_size: 4096,
        ..PushOptions::default()
    };
    let creds = |password: &str| RegistryConfig {
        credentials: HashMap::from([(
            addr.clone(),
            Credentials {
                username: "tester".into(),
                password: password.into(),
            },
        )]),
        ..RegistryConfig::default()
    };

    // Wrong password: the token endpoint refuses, and the error says whose credentials.
    let wrong = Pusher::new(creds("nope"), options.clone()).unwrap();
    let e = wrong
        .push(
            &format!("{addr}/team/app:1"),
            &blobs,
            b"{\"m\":1}",
            "application/x-test",
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("refused the credentials of user `tester`"),
        "{e}"
    );

    let p = Pusher::new(creds("s3cret"), options).unwrap();
    let first = p
        .push(
            &format!("{addr}/team/app:1"),
            &blobs,
            b"{\"m\":1}",
            "application/x-test",
        )
        .await
        .unwrap();
    assert_eq!(
        first.blobs,
        vec![
            BlobOutcome::Chunked(3),
            BlobOutcome::Uploaded,
            BlobOutcome::Uploaded
        ]
    );
    assert_eq!(first.digest, crate::blobs::sha256_digest(b"{\"m\":1}"));
    // A second repository: every blob mounted from the first, with a token for both scopes.
    let second = p
        .push(
            &format!("{addr}/team/other:2"),
            &blobs,
            b"{\"m\":1}",
            "application/x-test",
        )
        .await
        .unwrap();
    assert_eq!(second.blobs, vec![BlobOutcome::Mounted; 3]);
    // Again: all present.
    let again = p
        .push(
            &format!("{addr}/team/app:1"),
            &blobs,
            b"{\"m\":1}",
            "application/x-test",
        )
        .await
        .unwrap();
    assert_eq!(again.blobs, vec![BlobOutcome::Present; 3]);
    assert_eq!(again.summary(), "0 uploaded, 0 mounted, 3 already present");

    let s = reg.lock().unwrap();
    assert_eq!(
        s.manifests.get("team/app:1"),
        Some(&("application/x-test".to_string(), b"{\"m\":1}".to_vec()))
    );
    assert!(s.manifests.contains_key("team/other:2"));
    assert!(
        s.token_requests
            .contains(&"repository:team/other:pull,push repository:team/app:pull".to_string()),
        "{:?}",
        s.token_requests
    );
    assert!(s.uploads.is_empty(), "no upload session left open");
    assert_eq!(
        s.log
            .iter()
            .filter(|l| l.starts_with("PATCH") && l.ends_with("202"))
            .count(),
        3
    );
}
