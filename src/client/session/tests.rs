//! The session services in process: our server on one end of an in-memory tunnel, and on the
//! other the daemon's side as BuildKit plays it (gRPC client over [`connect`], the fsutil
//! receiver for FileSync, the fsutil sender for a local export, tar chunks for FileSend).

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use memobuild_proto::filesync::auth_client::AuthClient;
use memobuild_proto::filesync::file_send_client::FileSendClient;
use memobuild_proto::filesync::file_sync_client::FileSyncClient;
use memobuild_proto::filesync::{BytesMessage, CredentialsRequest};
use memobuild_proto::fsutil::Packet;
use memobuild_proto::secrets::GetSecretRequest;
use memobuild_proto::secrets::secrets_client::SecretsClient;
use memobuild_proto::sshforward::ssh_client::SshClient;
use memobuild_proto::sshforward::{self, CheckAgentRequest};
use memobuild_worker::filesync::{self, ReceiveOptions, SendOptions};
use memobuild_worker::registry::{CredentialProvider, Credentials};
use memobuild_worker::secrets::Secrets;
use memobuild_worker::ssh::SshAgents;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_prost::ProstCodec;

use crate::client::exporters::Target;
use crate::client::session::{Services, SessionConfig};
use crate::session::headers::SessionHeaders;
use crate::session::transport::{TunnelIo, connect_lazy, serve};

/// Turns a hang into a test failure.
const PATIENCE: Duration = Duration::from_secs(20);

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(PATIENCE, fut)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {PATIENCE:?}"))
}

fn stream<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send + Unpin {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct Anonymous;

impl CredentialProvider for Anonymous {
    fn credentials<'a>(
        &'a self,
        host: &'a str,
    ) -> futures::future::BoxFuture<'a, Option<Credentials>> {
        Box::pin(async move {
            (host == "registry.test:5000").then(|| Credentials {
                username: "ci".into(),
                password: "pw".into(),
            })
        })
    }
}

fn config() -> SessionConfig {
    SessionConfig {
        locals: BTreeMap::new(),
        targets: BTreeMap::new(),
        secrets: None,
        ssh: None,
        credentials: Arc::new(Anonymous),
        upload: None,
    }
}

/// Serves `config`'s services on the CLI end of an in-memory tunnel and returns the daemon's
/// channel to them.
async fn start(config: SessionConfig) -> Channel {
    start_cuttable(config).await.0
}

/// [`start`], plus a token that cuts the tunnel as a daemon that goes away would: the CLI's
/// side of the session stream fails.
async fn start_cuttable(config: SessionConfig) -> (Channel, CancellationToken) {
    let (daemon_out, cli_in) = mpsc::channel::<Vec<u8>>(8);
    let (cli_out, daemon_in) = mpsc::channel::<Vec<u8>>(8);
    let cut = CancellationToken::new();
    let cli_incoming = stream(cli_in)
        .map(Ok::<_, Status>)
        .take_until(cut.clone().cancelled_owned())
        .chain(futures::stream::once(async {
            Err(Status::unavailable("the daemon went away"))
        }));
    let cli = TunnelIo::new(cli_incoming, cli_out);
    let daemon = TunnelIo::new(stream(daemon_in).map(Ok::<_, Status>), daemon_out);
    let services = Services::new(config);
    tokio::spawn(serve(cli, services.routes));
    (connect_lazy(daemon), cut)
}

/// Every entry under `root`: path → (kind and permission bits, content or link target).
fn tree(root: &Path) -> BTreeMap<String, (String, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for entry in walkdir(root) {
        let rel = entry
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let md = std::fs::symlink_metadata(&entry).unwrap();
        let perm = md.permissions().mode() & 0o7777;
        let value = if md.is_symlink() {
            (
                "link".into(),
                std::fs::read_link(&entry)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
            )
        } else if md.is_dir() {
            (format!("dir {perm:o}"), Vec::new())
        } else {
            (format!("file {perm:o}"), std::fs::read(&entry).unwrap())
        };
        out.insert(rel, value);
    }
    out
}

fn walkdir(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                todo.push(path.clone());
            }
            out.push(path);
        }
    }
    out
}

fn build_context(root: &Path) {
    std::fs::create_dir_all(root.join("src/deep")).unwrap();
    std::fs::write(root.join("Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::write(root.join("src/main.rs"), "fn main() {}\n").unwrap();
    std::fs::write(root.join("src/deep/data.bin"), vec![7u8; 200_000]).unwrap();
    std::fs::write(root.join("build.log"), "noise").unwrap();
    std::fs::set_permissions(
        root.join("src/main.rs"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("src/main.rs", root.join("link")).unwrap();
}

/// The daemon's half of FileSync.DiffCopy: the fsutil receiver writing into `dest`, with the
/// call's metadata. Returns the received stats' owners.
async fn pull(
    channel: &Channel,
    metadata: &[(&'static str, &'static str)],
    dest: &Path,
) -> Result<BTreeSet<(u32, u32)>, Status> {
    let (tx, rx) = mpsc::channel::<Packet>(16);
    let mut request = Request::new(stream(rx));
    for (k, v) in metadata {
        request
            .metadata_mut()
            .append(*k, MetadataValue::from_static(v));
    }
    let response = FileSyncClient::new(channel.clone())
        .diff_copy(request)
        .await?;
    let owners = Arc::new(Mutex::new(BTreeSet::new()));
    let seen = owners.clone();
    let options = ReceiveOptions {
        filter: Some(Arc::new(move |st: &mut memobuild_proto::fsutil::Stat| {
            seen.lock().unwrap().insert((st.uid, st.gid));
            true
        })),
        ..ReceiveOptions::default()
    };
    filesync::receive(dest, options, response.into_inner(), tx)
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    let owners = owners.lock().unwrap().clone();
    Ok(owners)
}

#[tokio::test]
async fn filesync_sends_the_named_directory_filtered_with_owners_reset() {
    let (ctx, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_context(ctx.path());
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::lchown(ctx.path().join("src/main.rs"), Some(1234), Some(5678)).unwrap();
    }
    let channel = start(SessionConfig {
        locals: BTreeMap::from([("context".into(), ctx.path().to_path_buf())]),
        ..config()
    })
    .await;
    let owners = within(
        "pull",
        pull(
            &channel,
            &[("dir-name", "context"), ("exclude-patterns", "*.log")],
            dest.path(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        owners,
        BTreeSet::from([(0, 0)]),
        "uid and gid are reset to 0"
    );
    let mut expected = tree(ctx.path());
    expected.remove("build.log");
    assert_eq!(tree(dest.path()), expected);
}

#[tokio::test]
async fn filesync_follow_paths_send_only_what_the_frontend_asks() {
    let (ctx, dest) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_context(ctx.path());
    let channel = start(SessionConfig {
        locals: BTreeMap::from([("dockerfile".into(), ctx.path().to_path_buf())]),
        ..config()
    })
    .await;
    within(
        "pull",
        pull(
            &channel,
            &[
                ("dir-name", "dockerfile"),
                ("followpaths", "Dockerfile"),
                ("followpaths", "Dockerfile.dockerignore"),
            ],
            dest.path(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        tree(dest.path()).into_keys().collect::<Vec<_>>(),
        vec!["Dockerfile"]
    );
}

#[tokio::test]
async fn filesync_refuses_unknown_directories() {
    let dest = tempfile::tempdir().unwrap();
    let channel = start(SessionConfig {
        locals: BTreeMap::from([("context".into(), dest.path().to_path_buf())]),
        ..config()
    })
    .await;
    let err = within(
        "pull",
        pull(&channel, &[("dir-name", "secrets")], dest.path()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no access allowed to dir \"secrets\"");
}

/// The daemon's half of a tar export: chunks, then the half-close, then the wait for the
/// end of the response (BuildKit's `CopyFileWriter` and its `Close`).
async fn send_tar(
    channel: &Channel,
    exporter: &'static str,
    chunks: Vec<Vec<u8>>,
) -> Result<(), Status> {
    let messages = futures::stream::iter(chunks.into_iter().map(|data| BytesMessage { data }));
    let mut request = Request::new(messages);
    request.metadata_mut().insert(
        "buildkit-attachable-exporter-id",
        MetadataValue::from_static(exporter),
    );
    let mut response = FileSendClient::new(channel.clone())
        .diff_copy(request)
        .await?
        .into_inner();
    if let Some(m) = response.message().await? {
        panic!("the client sent {} bytes back", m.data.len());
    }
    Ok(())
}

#[tokio::test]
async fn filesend_writes_tar_streams_to_their_exporters_file() {
    let out = tempfile::tempdir().unwrap();
    let (first, second) = (out.path().join("image.tar"), out.path().join("fs.tar"));
    std::fs::write(&second, "an older export").unwrap();
    let channel = start(SessionConfig {
        targets: BTreeMap::from([
            (0, Target::File(first.clone())),
            (1, Target::None),
            (2, Target::File(second.clone())),
        ]),
        ..config()
    })
    .await;
    let chunks: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 3 * 1024 * 1024 / 2]).collect();
    within("export 2", send_tar(&channel, "2", chunks.clone()))
        .await
        .unwrap();
    assert!(std::fs::read(&second).unwrap() == chunks.concat());
    within("export 0", send_tar(&channel, "0", vec![b"tar".to_vec()]))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&first).unwrap(), b"tar");
    let mode = std::fs::metadata(&first).unwrap().mode();
    assert_eq!(
        mode & 0o200,
        0o200,
        "the output is the user's file: {mode:o}"
    );
    // An image exporter sends nothing back, and an unknown id is refused.
    for id in ["1", "7"] {
        let err = within("export", send_tar(&channel, id, vec![b"x".to_vec()]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
    }
    let names: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "no temporary files left: {names:?}");
}

#[tokio::test]
async fn filesend_keeps_the_old_file_when_the_stream_breaks() {
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("image.tar");
    std::fs::write(&dest, "complete older export").unwrap();
    let (channel, cut) = start_cuttable(SessionConfig {
        targets: BTreeMap::from([(0, Target::File(dest.clone()))]),
        ..config()
    })
    .await;
    let (tx, rx) = mpsc::channel(4);
    let mut client = FileSendClient::new(channel.clone());
    let _response = within("open", client.diff_copy(Request::new(stream(rx))))
        .await
        .unwrap();
    tx.send(BytesMessage {
        data: vec![1; 1024],
    })
    .await
    .unwrap();
    // The daemon goes away mid-stream, without ever half-closing the call.
    tokio::time::sleep(Duration::from_millis(200)).await;
    cut.cancel();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(std::fs::read(&dest).unwrap(), b"complete older export");
    let leftovers = std::fs::read_dir(out.path()).unwrap().count();
    assert_eq!(leftovers, 1, "the partial file is removed");
}

/// The daemon's half of a local export: the fsutil sender over FileSend/DiffCopy, whose
/// frames are Packets although the method's declared type is BytesMessage.
async fn send_dir(
    channel: &Channel,
    src: &Path,
    metadata: &[(&'static str, &'static str)],
) -> Result<(), Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let (tx, rx) = mpsc::channel::<Packet>(16);
    let mut request = Request::new(stream(rx));
    for (k, v) in metadata {
        request
            .metadata_mut()
            .append(*k, MetadataValue::from_static(v));
    }
    let response = grpc
        .streaming(
            request,
            PathAndQuery::from_static("/moby.filesync.v1.FileSend/DiffCopy"),
            ProstCodec::<Packet, Packet>::default(),
        )
        .await?;
    filesync::send(src, SendOptions::default(), response.into_inner(), tx)
        .await
        .map_err(|e| Status::unknown(e.to_string()))?;
    Ok(())
}

#[tokio::test]
async fn filesend_receives_local_exports_merging_by_default() {
    let (src, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    build_context(src.path());
    let (merged, mirrored) = (out.path().join("merged"), out.path().join("mirrored"));
    for d in [&merged, &mirrored] {
        std::fs::create_dir_all(d.join("src")).unwrap();
        std::fs::write(d.join("src/old.txt"), "from before").unwrap();
    }
    let channel = start(SessionConfig {
        targets: BTreeMap::from([
            (0, Target::File(out.path().join("unused.tar"))),
            (
                1,
                Target::Dir {
                    path: merged.clone(),
                    delete: false,
                },
            ),
            (
                2,
                Target::Dir {
                    path: mirrored.clone(),
                    delete: true,
                },
            ),
        ]),
        ..config()
    })
    .await;
    let id = ("buildkit-attachable-exporter-id", "1");
    within("export 1", send_dir(&channel, src.path(), &[id]))
        .await
        .unwrap();
    let mut expected = tree(src.path());
    expected.insert(
        "src/old.txt".into(),
        ("file 644".into(), b"from before".to_vec()),
    );
    let mut got = tree(&merged);
    if let Some(e) = got.get_mut("src/old.txt") {
        e.0 = "file 644".into();
    }
    assert_eq!(got, expected, "merge keeps what the export lacks");

    // mode=delete needs a daemon that says it sends every platform in one call.
    let id = ("buildkit-attachable-exporter-id", "2");
    let err = within("export 2", send_dir(&channel, src.path(), &[id]))
        .await
        .unwrap_err();
    assert!(err.message().contains("mode=delete requires"), "{err:?}");
    let multi = ("buildkit-exporter-multi-platform", "1");
    within("export 2", send_dir(&channel, src.path(), &[id, multi]))
        .await
        .unwrap();
    assert_eq!(
        tree(&mirrored),
        tree(src.path()),
        "delete mode mirrors the export"
    );
}

#[tokio::test]
async fn secrets_credentials_and_health_answer_over_the_tunnel() {
    let mut secrets = Secrets::new();
    secrets.insert("tok", b"s3cr3t".to_vec());
    let channel = start(SessionConfig {
        secrets: Some(secrets),
        ..config()
    })
    .await;
    let mut client = SecretsClient::new(channel.clone());
    let get = |id: &str| GetSecretRequest {
        id: id.into(),
        ..GetSecretRequest::default()
    };
    let value = within("secret", client.get_secret(get("tok")))
        .await
        .unwrap();
    assert_eq!(value.into_inner().data, b"s3cr3t");
    let missing = within("secret", client.get_secret(get("other")))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    let mut auth = AuthClient::new(channel.clone());
    let creds = within(
        "credentials",
        auth.credentials(CredentialsRequest {
            host: "registry.test:5000".into(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        (creds.username.as_str(), creds.secret.as_str()),
        ("ci", "pw")
    );
    let none = within(
        "credentials",
        auth.credentials(CredentialsRequest {
            host: "registry-1.docker.io".into(),
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert!(none.username.is_empty() && none.secret.is_empty());

    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn services_not_configured_are_neither_served_nor_advertised() {
    let services = Services::new(config());
    assert_eq!(
        services.methods,
        vec![
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/moby.filesync.v1.Auth/Credentials",
        ]
    );
    let channel = start(config()).await;
    let err = SecretsClient::new(channel)
        .get_secret(GetSecretRequest::default())
        .await
        .unwrap_err();
    // BuildKit reads Unimplemented as "no such secret", as from buildctl without --secret.
    assert_eq!(err.code(), Code::Unimplemented);

    let full = Services::new(SessionConfig {
        locals: BTreeMap::from([("context".into(), "/".into())]),
        targets: BTreeMap::from([(0, Target::None), (1, Target::File("o.tar".into()))]),
        secrets: Some(Secrets::new()),
        ssh: Some(SshAgents::new()),
        ..config()
    });
    for m in [
        "/moby.filesync.v1.FileSync/DiffCopy",
        "/moby.filesync.v1.FileSend/DiffCopy",
        "/moby.buildkit.secrets.v1.Secrets/GetSecret",
        "/moby.sshforward.v1.SSH/CheckAgent",
        "/moby.sshforward.v1.SSH/ForwardAgent",
    ] {
        assert!(
            full.methods.iter().any(|x| x == m),
            "{m} in {:?}",
            full.methods
        );
    }
}

/// A stand-in agent: answers every request with `[5, request type]`.
async fn fake_agent(path: &Path) {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                while conn.read_exact(&mut len).await.is_ok() {
                    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                    conn.read_exact(&mut body).await.unwrap();
                    conn.write_all(&[0, 0, 0, 2, 5, body[0]]).await.unwrap();
                }
            });
        }
    });
}

#[tokio::test]
async fn ssh_forwards_a_read_only_agent() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    fake_agent(&socket).await;
    let mut agents = SshAgents::new();
    agents.insert("default", &socket);
    let channel = start(SessionConfig {
        ssh: Some(agents),
        ..config()
    })
    .await;
    let mut client = SshClient::new(channel);
    within(
        "check",
        client.check_agent(CheckAgentRequest { id: String::new() }),
    )
    .await
    .unwrap();
    let unknown = within(
        "check",
        client.check_agent(CheckAgentRequest { id: "gh".into() }),
    )
    .await
    .unwrap_err();
    assert_eq!(unknown.message(), "unset ssh forward key gh");

    // List identities (11) reaches the agent; add identity (17) is refused by the relay.
    let requests = vec![
        sshforward::BytesMessage {
            data: vec![0, 0, 0, 1, 11],
        },
        sshforward::BytesMessage {
            data: vec![0, 0, 0, 1, 17],
        },
    ];
    let mut request = Request::new(futures::stream::iter(requests));
    request
        .metadata_mut()
        .insert("buildkit.ssh.id", MetadataValue::from_static("default"));
    let mut replies = within("forward", client.forward_agent(request))
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = within("reply", replies.message()).await.unwrap() {
        bytes.extend(m.data);
    }
    assert_eq!(bytes, [0, 0, 0, 2, 5, 11, 0, 0, 0, 1, 5]);
}

/// A daemon's `Control/Session` as BuildKit runs it: reads the session headers, dials the
/// client's services through the stream, checks their health, and reports what it saw.
struct FakeDaemon {
    seen: mpsc::Sender<(SessionHeaders, i32)>,
}

#[tonic::async_trait]
impl memobuild_proto::control::control_server::Control for FakeDaemon {
    async fn session(
        &self,
        request: Request<tonic::Streaming<memobuild_proto::control::BytesMessage>>,
    ) -> Result<
        tonic::Response<tonic::codegen::BoxStream<memobuild_proto::control::BytesMessage>>,
        Status,
    > {
        let headers = SessionHeaders::from_metadata(request.metadata())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
        let incoming = request.into_inner().map(|m| m.map(|m| m.data));
        let io = TunnelIo::new(incoming, tx);
        let seen = self.seen.clone();
        tokio::spawn(async move {
            let channel = connect_lazy(io);
            let health = tonic_health::pb::health_client::HealthClient::new(channel)
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .unwrap()
                .into_inner()
                .status;
            seen.send((headers, health)).await.unwrap();
        });
        let out = stream(rx).map(|data| Ok(memobuild_proto::control::BytesMessage { data }));
        Ok(tonic::Response::new(out.boxed()))
    }
}

#[tokio::test]
async fn run_opens_the_session_with_its_headers_and_ends_on_close() {
    let (seen_tx, mut seen) = mpsc::channel(1);
    let incoming =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                memobuild_proto::control::control_server::ControlServer::new(FakeDaemon {
                    seen: seen_tx,
                }),
            )
            .serve_with_incoming(incoming),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let services = Services::new(config());
    let headers = crate::client::session::headers("sess-1", "key-1", &services);
    let close = CancellationToken::new();
    let run = tokio::spawn(crate::client::session::run(
        crate::client::connect::control(&channel),
        headers.clone(),
        services.routes,
        close.clone(),
    ));
    let (got, health) = within("the daemon's health check", seen.recv())
        .await
        .unwrap();
    assert_eq!(got, headers);
    assert_eq!(
        health,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // The build is over: our half-close ends the daemon's side, and so the session.
    close.cancel();
    within("the session's end", run).await.unwrap().unwrap();
}
