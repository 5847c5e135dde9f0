//! What a BuildKit client would notice of the gRPC surface: service names, full method paths,
//! `Unimplemented` defaults, and field numbers on the wire (`buildkit-wire.md` §3-§5).
//!
//! Field numbers are checked on the encoded bytes, so a wrong number in a `.proto` file fails
//! here even though prost would happily round-trip it.

use std::future::{Future, Ready, ready};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::executor::block_on;
use memobuild_proto::{
    apicaps, auth, control, filesync, fsutil, gateway, pb, rpc, secrets, sourcepolicy, sshforward,
    upload, worker_types,
};
use prost::Message;
use prost_types::Timestamp;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::{Code, Request, Status};

// ---------------------------------------------------------------------------------------------
// Wire helpers
// ---------------------------------------------------------------------------------------------

/// Reads one varint from the front of `buf`, returning it and its encoded length.
fn varint(buf: &[u8]) -> (u64, usize) {
    let mut value = 0u64;
    for (i, b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return (value, i + 1);
        }
    }
    panic!("truncated varint in {buf:?}");
}

/// Top-level (field number, wire type, payload) triples of a message, in wire order. The
/// payload of a varint field is its encoded bytes.
fn fields(mut buf: &[u8]) -> Vec<(u64, u64, &[u8])> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (key, n) = varint(buf);
        buf = &buf[n..];
        let (field, wire) = (key >> 3, key & 7);
        let len = match wire {
            0 => varint(buf).1,
            2 => {
                let (len, n) = varint(buf);
                buf = &buf[n..];
                usize::try_from(len).expect("length fits")
            }
            1 => 8,
            5 => 4,
            _ => panic!("unexpected wire type {wire}"),
        };
        out.push((field, wire, &buf[..len]));
        buf = &buf[len..];
    }
    out
}

/// Field numbers of a message's encoding, in wire order.
fn numbers(msg: &impl Message) -> Vec<u64> {
    fields(&msg.encode_to_vec())
        .iter()
        .map(|(f, _, _)| *f)
        .collect()
}

/// Payload of the only occurrence of field `n` in `buf`.
fn payload(buf: &[u8], n: u64) -> Vec<u8> {
    let found: Vec<_> = fields(buf)
        .into_iter()
        .filter(|(f, _, _)| *f == n)
        .collect();
    assert_eq!(found.len(), 1, "field {n} in {buf:?}");
    found[0].2.to_vec()
}

/// Field numbers 1..=n.
fn one_to(n: u64) -> Vec<u64> {
    (1..=n).collect()
}

fn map(k: &str, v: &str) -> std::collections::BTreeMap<String, String> {
    [(k.to_owned(), v.to_owned())].into()
}

fn ts() -> Option<Timestamp> {
    Some(Timestamp {
        seconds: 1,
        nanos: 2,
    })
}

fn def() -> Option<pb::Definition> {
    Some(pb::Definition {
        def: vec![b"op".to_vec()],
        ..Default::default()
    })
}

fn range() -> pb::Range {
    pb::Range {
        start: Some(pb::Position {
            line: 1,
            character: 0,
        }),
        end: None,
    }
}

fn source_info() -> Option<pb::SourceInfo> {
    Some(pb::SourceInfo {
        filename: "Dockerfile".into(),
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------------
// Service names and method paths
// ---------------------------------------------------------------------------------------------

#[test]
fn service_names_match_buildkit() {
    use tonic::server::NamedService;

    assert_eq!(
        <control::control_server::ControlServer<Nothing> as NamedService>::NAME,
        "moby.buildkit.v1.Control"
    );
    assert_eq!(
        <gateway::llb_bridge_server::LlbBridgeServer<Nothing> as NamedService>::NAME,
        "moby.buildkit.v1.frontend.LLBBridge"
    );
    assert_eq!(
        <filesync::file_sync_server::FileSyncServer<Nothing> as NamedService>::NAME,
        "moby.filesync.v1.FileSync"
    );
    assert_eq!(
        filesync::file_send_server::SERVICE_NAME,
        "moby.filesync.v1.FileSend"
    );
    assert_eq!(auth::auth_server::SERVICE_NAME, "moby.filesync.v1.Auth");
    assert_eq!(
        secrets::secrets_server::SERVICE_NAME,
        "moby.buildkit.secrets.v1.Secrets"
    );
    assert_eq!(
        sshforward::ssh_server::SERVICE_NAME,
        "moby.sshforward.v1.SSH"
    );
    assert_eq!(upload::upload_server::SERVICE_NAME, "moby.upload.v1.Upload");
}

/// A channel that records the path of every request and fails it.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Service<http::Request<Body>> for Recorder {
    type Response = http::Response<Body>;
    type Error = std::io::Error;
    type Future = Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        self.0
            .lock()
            .expect("recorder lock")
            .push(req.uri().path().to_owned());
        ready(Err(std::io::Error::other("recorded, not sent")))
    }
}

/// The request path a generated client uses for one call.
fn path_of<F, Fut, T>(call: F) -> String
where
    F: FnOnce(Recorder) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let rec = Recorder::default();
    assert!(block_on(call(rec.clone())).is_err());
    let paths = rec.0.lock().expect("recorder lock").clone();
    assert_eq!(paths.len(), 1, "{paths:?}");
    paths[0].clone()
}

/// A request stream of one message.
fn one<M>(m: M) -> futures::stream::Iter<std::vec::IntoIter<M>> {
    futures::stream::iter(vec![m])
}

#[test]
fn clients_call_buildkit_method_paths() {
    use auth::auth_client::AuthClient;
    use control::control_client::ControlClient;
    use filesync::file_send_client::FileSendClient;
    use filesync::file_sync_client::FileSyncClient;
    use gateway::llb_bridge_client::LlbBridgeClient;
    use secrets::secrets_client::SecretsClient;
    use sshforward::ssh_client::SshClient;
    use upload::upload_client::UploadClient;

    let cases = [
        (
            path_of(|ch| async move {
                ControlClient::new(ch)
                    .solve(control::SolveRequest::default())
                    .await
            }),
            "/moby.buildkit.v1.Control/Solve",
        ),
        (
            path_of(|ch| async move {
                ControlClient::new(ch)
                    .status(control::StatusRequest::default())
                    .await
            }),
            "/moby.buildkit.v1.Control/Status",
        ),
        (
            path_of(|ch| async move {
                ControlClient::new(ch)
                    .session(one(control::BytesMessage::default()))
                    .await
            }),
            "/moby.buildkit.v1.Control/Session",
        ),
        (
            path_of(|ch| async move {
                ControlClient::new(ch)
                    .listen_build_history(control::BuildHistoryRequest::default())
                    .await
            }),
            "/moby.buildkit.v1.Control/ListenBuildHistory",
        ),
        (
            path_of(
                |ch| async move { LlbBridgeClient::new(ch).ping(gateway::PingRequest {}).await },
            ),
            "/moby.buildkit.v1.frontend.LLBBridge/Ping",
        ),
        (
            path_of(|ch| async move {
                LlbBridgeClient::new(ch)
                    .r#return(gateway::ReturnRequest::default())
                    .await
            }),
            "/moby.buildkit.v1.frontend.LLBBridge/Return",
        ),
        (
            path_of(|ch| async move {
                LlbBridgeClient::new(ch)
                    .exec_process(one(gateway::ExecMessage::default()))
                    .await
            }),
            "/moby.buildkit.v1.frontend.LLBBridge/ExecProcess",
        ),
        (
            path_of(|ch| async move {
                FileSyncClient::new(ch)
                    .diff_copy(one(fsutil::types::Packet::default()))
                    .await
            }),
            "/moby.filesync.v1.FileSync/DiffCopy",
        ),
        (
            path_of(|ch| async move {
                FileSyncClient::new(ch)
                    .tar_stream(one(fsutil::types::Packet::default()))
                    .await
            }),
            "/moby.filesync.v1.FileSync/TarStream",
        ),
        (
            path_of(|ch| async move {
                FileSendClient::new(ch)
                    .diff_copy(one(filesync::BytesMessage::default()))
                    .await
            }),
            "/moby.filesync.v1.FileSend/DiffCopy",
        ),
        (
            path_of(|ch| async move {
                AuthClient::new(ch)
                    .credentials(auth::CredentialsRequest::default())
                    .await
            }),
            "/moby.filesync.v1.Auth/Credentials",
        ),
        (
            path_of(|ch| async move {
                AuthClient::new(ch)
                    .verify_token_authority(auth::VerifyTokenAuthorityRequest::default())
                    .await
            }),
            "/moby.filesync.v1.Auth/VerifyTokenAuthority",
        ),
        (
            path_of(|ch| async move {
                SecretsClient::new(ch)
                    .get_secret(secrets::GetSecretRequest::default())
                    .await
            }),
            "/moby.buildkit.secrets.v1.Secrets/GetSecret",
        ),
        (
            path_of(|ch| async move {
                SshClient::new(ch)
                    .forward_agent(one(sshforward::BytesMessage::default()))
                    .await
            }),
            "/moby.sshforward.v1.SSH/ForwardAgent",
        ),
        (
            path_of(|ch| async move {
                UploadClient::new(ch)
                    .pull(one(upload::BytesMessage::default()))
                    .await
            }),
            "/moby.upload.v1.Upload/Pull",
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
    }
}

// ---------------------------------------------------------------------------------------------
// Default stubs
// ---------------------------------------------------------------------------------------------

/// Implements no RPC at all: every one falls back to the generated default.
struct Nothing;

impl control::control_server::Control for Nothing {}
impl gateway::llb_bridge_server::LlbBridge for Nothing {}
impl filesync::file_sync_server::FileSync for Nothing {}
impl filesync::file_send_server::FileSend for Nothing {}
impl auth::auth_server::Auth for Nothing {}
impl secrets::secrets_server::Secrets for Nothing {}
impl sshforward::ssh_server::Ssh for Nothing {}
impl upload::upload_server::Upload for Nothing {}

fn code<T>(result: Result<T, Status>) -> Code {
    match result {
        Ok(_) => panic!("a default stub answered Ok"),
        Err(status) => status.code(),
    }
}

#[test]
fn servers_default_to_unimplemented() {
    use control::control_server::Control;
    use gateway::llb_bridge_server::LlbBridge;
    use secrets::secrets_server::Secrets;

    // The servers accept a service that implements nothing.
    let _ = control::control_server::ControlServer::new(Nothing);
    let _ = gateway::llb_bridge_server::LlbBridgeServer::new(Nothing);

    let info = Nothing.info(Request::new(control::InfoRequest {}));
    assert_eq!(code(block_on(info)), Code::Unimplemented);
    let history = Nothing.listen_build_history(Request::new(Default::default()));
    assert_eq!(code(block_on(history)), Code::Unimplemented);
    let eval = Nothing.evaluate(Request::new(gateway::EvaluateRequest::default()));
    assert_eq!(code(block_on(eval)), Code::Unimplemented);
    let secret = Nothing.get_secret(Request::new(secrets::GetSecretRequest::default()));
    assert_eq!(code(block_on(secret)), Code::Unimplemented);
}

// ---------------------------------------------------------------------------------------------
// Control messages
// ---------------------------------------------------------------------------------------------

#[test]
fn solve_request_uses_fields_1_to_17() {
    let req = control::SolveRequest {
        r#ref: "build-1".into(),
        definition: def(),
        exporter_deprecated: "image".into(),
        exporter_attrs_deprecated: map("name", "x"),
        session: "sid".into(),
        frontend: "dockerfile.v0".into(),
        frontend_attrs: map("filename", "Dockerfile"),
        cache: Some(control::CacheOptions::default()),
        entitlements: vec!["network.host".into()],
        frontend_inputs: [("context".to_owned(), pb::Definition::default())].into(),
        internal: true,
        source_policy: Some(sourcepolicy::Policy {
            version: 1,
            rules: vec![],
        }),
        exporters: vec![control::Exporter {
            r#type: "local".into(),
            attrs: map("mode", "copy"),
        }],
        enable_session_exporter: true,
        source_policy_session: "psid".into(),
        compatibility_version: 13,
        proxy_network: true,
    };
    let bytes = req.encode_to_vec();
    assert_eq!(numbers(&req), one_to(17));
    assert_eq!(payload(&bytes, 1), b"build-1");
    assert_eq!(payload(&bytes, 6), b"dockerfile.v0");
    // Internal is a varint (bool) at 11, Exporters a message at 13 with Type 1, Attrs 2.
    let wire: Vec<_> = fields(&bytes).iter().map(|(f, w, _)| (*f, *w)).collect();
    assert!(
        wire.contains(&(11, 0)) && wire.contains(&(13, 2)),
        "{wire:?}"
    );
    let exporter = payload(&bytes, 13);
    assert_eq!(fields(&exporter)[0], (1, 2, &b"local"[..]));
    assert_eq!(fields(&exporter)[1].0, 2);
}

#[test]
fn solve_request_decodes_go_shaped_bytes() {
    // Ref "r", Internal true, Exporters [{Type "tar"}], hand-assembled.
    let bytes = [
        0x0a, 1, b'r', // 1: Ref
        0x58, 1, // 11: Internal
        0x6a, 5, 0x0a, 3, b't', b'a', b'r', // 13: Exporters[0].Type
    ];
    let req = control::SolveRequest::decode(&bytes[..]).expect("decodes");
    assert_eq!(req.r#ref, "r");
    assert!(req.internal);
    assert_eq!(req.exporters.len(), 1);
    assert_eq!(req.exporters[0].r#type, "tar");
}

#[test]
fn cache_options_and_solve_response() {
    let entry = control::CacheOptionsEntry {
        r#type: "registry".into(),
        attrs: map("ref", "r"),
    };
    let cache = control::CacheOptions {
        export_ref_deprecated: "r".into(),
        import_refs_deprecated: vec!["r".into()],
        export_attrs_deprecated: map("mode", "max"),
        exports: vec![entry.clone()],
        imports: vec![entry.clone()],
    };
    assert_eq!(numbers(&cache), one_to(5));
    assert_eq!(numbers(&entry), [1, 2]);
    let resp = control::SolveResponse {
        exporter_response: map("containerimage.digest", "sha256:00"),
    };
    assert_eq!(numbers(&resp), [1]);
}

#[test]
fn status_response_and_vertex_fields() {
    let vertex = control::Vertex {
        digest: "sha256:aa".into(),
        inputs: vec!["sha256:bb".into()],
        name: "[1/2] FROM busybox".into(),
        cached: true,
        started: ts(),
        completed: ts(),
        error: "boom".into(),
        progress_group: Some(pb::ProgressGroup {
            id: "g".into(),
            ..Default::default()
        }),
    };
    assert_eq!(numbers(&vertex), one_to(8));
    // `cached` is the varint at 4.
    let only_cached = control::Vertex {
        cached: true,
        ..Default::default()
    };
    assert_eq!(only_cached.encode_to_vec(), [0x20, 1]);

    let status = control::VertexStatus {
        id: "transferring context:".into(),
        vertex: "sha256:aa".into(),
        name: "n".into(),
        current: 1,
        total: 2,
        timestamp: ts(),
        started: ts(),
        completed: ts(),
    };
    assert_eq!(numbers(&status), one_to(8));
    let log = control::VertexLog {
        vertex: "sha256:aa".into(),
        timestamp: ts(),
        stream: 2,
        msg: b"hello".to_vec(),
    };
    assert_eq!(numbers(&log), one_to(4));
    let warning = control::VertexWarning {
        vertex: "sha256:aa".into(),
        level: 1,
        short: b"s".to_vec(),
        detail: vec![b"d".to_vec()],
        url: "u".into(),
        info: source_info(),
        ranges: vec![range()],
    };
    assert_eq!(numbers(&warning), one_to(7));

    let resp = control::StatusResponse {
        vertexes: vec![vertex],
        statuses: vec![status],
        logs: vec![log],
        warnings: vec![warning],
    };
    assert_eq!(numbers(&resp), one_to(4));
    let only_vertexes = control::StatusResponse {
        vertexes: vec![only_cached],
        ..Default::default()
    };
    assert_eq!(only_vertexes.encode_to_vec(), [0x0a, 2, 0x20, 1]);
}

#[test]
fn usage_prune_and_disk_usage_fields() {
    #[allow(deprecated)]
    let record = control::UsageRecord {
        id: "id".into(),
        mutable: true,
        in_use: true,
        size: 1,
        parent: "p".into(),
        created_at: ts(),
        last_used_at: ts(),
        usage_count: 1,
        description: "d".into(),
        record_type: "regular".into(),
        shared: true,
        parents: vec!["p".into()],
    };
    assert_eq!(numbers(&record), one_to(12));
    let prune = control::PruneRequest {
        filter: vec!["f".into()],
        all: true,
        keep_duration: 1,
        reserved_space: 2,
        max_used_space: 3,
        min_free_space: 4,
    };
    assert_eq!(numbers(&prune), one_to(6));
    let du = control::DiskUsageRequest {
        filter: vec!["f".into()],
        age_limit: 1,
    };
    assert_eq!(numbers(&du), [1, 2]);
    assert_eq!(
        numbers(&control::DiskUsageResponse {
            record: vec![record]
        }),
        [1]
    );
}

#[test]
fn build_history_fields() {
    let desc = control::Descriptor {
        media_type: "application/json".into(),
        digest: "sha256:aa".into(),
        size: 1,
        annotations: map("k", "v"),
    };
    // Descriptor skips field 4.
    assert_eq!(numbers(&desc), [1, 2, 3, 5]);
    let result = control::BuildResultInfo {
        result_deprecated: Some(desc.clone()),
        attestations: vec![desc.clone()],
        results: [(0, desc.clone())].into(),
    };
    assert_eq!(numbers(&result), one_to(3));
    let record = control::BuildHistoryRecord {
        r#ref: "r".into(),
        frontend: "f".into(),
        frontend_attrs: map("k", "v"),
        exporters: vec![control::Exporter::default()],
        error: Some(rpc::Status {
            code: 2,
            ..Default::default()
        }),
        created_at: ts(),
        completed_at: ts(),
        logs: Some(desc.clone()),
        exporter_response: map("k", "v"),
        result: Some(result.clone()),
        results: [("linux/amd64".to_owned(), result)].into(),
        generation: 1,
        trace: Some(desc.clone()),
        pinned: true,
        num_cached_steps: 1,
        num_total_steps: 2,
        num_completed_steps: 3,
        external_error: Some(desc),
        num_warnings: 4,
    };
    assert_eq!(numbers(&record), one_to(19));
    let event = control::BuildHistoryEvent {
        r#type: control::BuildHistoryEventType::Complete.into(),
        record: Some(record),
    };
    assert_eq!(numbers(&event), [1, 2]);
    assert_eq!(fields(&event.encode_to_vec())[0], (1, 0, &[1u8][..]));
    let req = control::BuildHistoryRequest {
        active_only: true,
        r#ref: "r".into(),
        early_exit: true,
        filter: vec!["f".into()],
        limit: 1,
    };
    assert_eq!(numbers(&req), one_to(5));
    let update = control::UpdateBuildHistoryRequest {
        r#ref: "r".into(),
        pinned: true,
        delete: true,
        finalize: true,
    };
    assert_eq!(numbers(&update), one_to(4));
}

// ---------------------------------------------------------------------------------------------
// Workers and caps
// ---------------------------------------------------------------------------------------------

#[test]
fn worker_record_fields() {
    let gc = worker_types::GcPolicy {
        all: true,
        keep_duration: 1,
        reserved_space: 2,
        filters: vec!["f".into()],
        max_used_space: 3,
        min_free_space: 4,
    };
    assert_eq!(numbers(&gc), one_to(6));
    // reservedSpace is field 3 even though upstream declares it after `filters` (4).
    let reserved = worker_types::GcPolicy {
        reserved_space: 5,
        ..Default::default()
    };
    assert_eq!(reserved.encode_to_vec(), [0x18, 5]);
    let version = worker_types::BuildkitVersion {
        package: "p".into(),
        version: "v".into(),
        revision: "r".into(),
        dockerfile_version: "d".into(),
    };
    assert_eq!(numbers(&version), one_to(4));
    let cdi = worker_types::CdiDevice {
        name: "vendor.com/gpu=0".into(),
        auto_allow: true,
        annotations: map("k", "v"),
        on_demand: true,
    };
    assert_eq!(numbers(&cdi), one_to(4));
    let worker = worker_types::WorkerRecord {
        id: "w0".into(),
        labels: map("k", "v"),
        platforms: vec![pb::Platform::new("amd64", "linux")],
        gc_policy: vec![gc],
        buildkit_version: Some(version.clone()),
        cdi_devices: vec![cdi],
    };
    assert_eq!(numbers(&worker), one_to(6));
    assert_eq!(
        numbers(&control::ListWorkersResponse {
            record: vec![worker]
        }),
        [1]
    );
    assert_eq!(
        numbers(&control::InfoResponse {
            buildkit_version: Some(version)
        }),
        [1]
    );
}

#[test]
fn pong_response_puts_llb_caps_at_2() {
    let cap = apicaps::ApiCap {
        id: "solve.base".into(),
        enabled: true,
        deprecated: true,
        disabled_reason: "r".into(),
        disabled_reason_msg: "m".into(),
        disabled_alternative: "a".into(),
    };
    assert_eq!(numbers(&cap), one_to(6));

    let pong = gateway::PongResponse {
        llb_caps: vec![apicaps::ApiCap {
            id: "source.image".into(),
            enabled: true,
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut want = vec![0x12, 16, 0x0a, 12];
    want.extend_from_slice(b"source.image");
    want.extend_from_slice(&[0x10, 1]);
    assert_eq!(pong.encode_to_vec(), want);

    let full = gateway::PongResponse {
        frontend_api_caps: vec![cap.clone()],
        llb_caps: vec![cap],
        workers: vec![worker_types::WorkerRecord::default()],
    };
    assert_eq!(numbers(&full), one_to(3));
}

// ---------------------------------------------------------------------------------------------
// Gateway messages
// ---------------------------------------------------------------------------------------------

#[test]
fn gateway_result_oneof_and_maps() {
    let with = |r| gateway::Result {
        result: Some(r),
        metadata: [("containerimage.config".to_owned(), b"{}".to_vec())].into(),
        attestations: [("linux/amd64".to_owned(), gateway::Attestations::default())].into(),
    };
    let r#ref = gateway::Ref {
        id: "res-1".into(),
        def: def(),
    };
    assert_eq!(numbers(&r#ref), [1, 2]);
    use gateway::result::Result as R;
    assert_eq!(numbers(&with(R::RefDeprecated("x".into()))), [1, 10, 12]);
    assert_eq!(
        numbers(&with(R::RefsDeprecated(gateway::RefMapDeprecated {
            refs: map("k", "x")
        }))),
        [2, 10, 12]
    );
    assert_eq!(numbers(&with(R::Ref(r#ref.clone()))), [3, 10, 12]);
    let refs = gateway::RefMap {
        refs: [("linux/amd64".to_owned(), r#ref.clone())].into(),
    };
    assert_eq!(numbers(&with(R::Refs(refs))), [4, 10, 12]);

    let attestation = gateway::Attestation {
        kind: gateway::AttestationKind::Bundle.into(),
        metadata: [("k".to_owned(), b"v".to_vec())].into(),
        r#ref: Some(r#ref),
        path: "/p".into(),
        in_toto_predicate_type: "t".into(),
        in_toto_subjects: vec![gateway::InTotoSubject {
            kind: gateway::InTotoSubjectKind::Raw.into(),
            digest: vec!["sha256:aa".into()],
            name: "n".into(),
        }],
    };
    assert_eq!(numbers(&attestation), one_to(6));
    assert_eq!(numbers(&attestation.in_toto_subjects[0]), one_to(3));
}

#[test]
fn return_request_carries_google_rpc_status() {
    let status = rpc::Status {
        code: 12,
        message: "nope".into(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/x".into(),
            value: vec![1],
        }],
    };
    assert_eq!(numbers(&status), one_to(3));
    let ret = gateway::ReturnRequest {
        result: Some(gateway::Result::default()),
        error: Some(status),
    };
    assert_eq!(numbers(&ret), [1, 2]);
    let only_error = gateway::ReturnRequest {
        error: Some(rpc::Status {
            code: 2,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(only_error.encode_to_vec(), [0x12, 2, 0x08, 2]);
}

#[test]
fn gateway_solve_request_fields() {
    let req = gateway::SolveRequest {
        definition: def(),
        frontend: "dockerfile.v0".into(),
        frontend_opt: map("filename", "Dockerfile"),
        allow_result_return: true,
        allow_result_array_ref: true,
        r#final: true,
        exporter_attr: b"{}".to_vec(),
        cache_imports: vec![gateway::CacheOptionsEntry::default()],
        frontend_inputs: [("context".to_owned(), pb::Definition::default())].into(),
        evaluate: true,
        source_policies: vec![sourcepolicy::Policy::default()],
    };
    assert_eq!(numbers(&req), [1, 2, 3, 5, 6, 10, 11, 12, 13, 14, 15]);
    let resp = gateway::SolveResponse {
        r#ref: "x".into(),
        result: Some(gateway::Result::default()),
    };
    assert_eq!(numbers(&resp), [1, 3]);
}

#[test]
fn gateway_resolve_and_read_fields() {
    let resolve = gateway::ResolveImageConfigRequest {
        r#ref: "docker.io/library/busybox:latest".into(),
        platform: Some(pb::Platform::new("amd64", "linux")),
        resolve_mode: "default".into(),
        log_name: "l".into(),
        resolver_type: 1,
        session_id: "s".into(),
        store_id: "st".into(),
        source_policies: vec![sourcepolicy::Policy::default()],
    };
    assert_eq!(numbers(&resolve), one_to(8));
    let resolved = gateway::ResolveImageConfigResponse {
        digest: "sha256:aa".into(),
        config: b"{}".to_vec(),
        r#ref: "r".into(),
    };
    assert_eq!(numbers(&resolved), one_to(3));
    let meta = gateway::ResolveSourceMetaRequest {
        source: Some(pb::SourceOp::default()),
        platform: Some(pb::Platform::default()),
        log_name: "l".into(),
        resolve_mode: "pull".into(),
        git: Some(gateway::ResolveSourceGitRequest::default()),
        image: Some(gateway::ResolveSourceImageRequest::default()),
        http: Some(gateway::ResolveSourceHttpRequest::default()),
        source_policies: vec![sourcepolicy::Policy::default()],
    };
    assert_eq!(numbers(&meta), one_to(8));
    let meta_resp = gateway::ResolveSourceMetaResponse {
        source: Some(pb::SourceOp::default()),
        image: Some(gateway::ResolveSourceImageResponse::default()),
        git: Some(gateway::ResolveSourceGitResponse::default()),
        http: Some(gateway::ResolveSourceHttpResponse::default()),
    };
    assert_eq!(numbers(&meta_resp), one_to(4));

    let read = gateway::ReadFileRequest {
        r#ref: "res-1".into(),
        file_path: "Dockerfile".into(),
        range: Some(gateway::FileRange {
            offset: 1,
            length: 2,
        }),
        mount_index: 1,
    };
    assert_eq!(numbers(&read), one_to(4));
    let dir = gateway::ReadDirResponse {
        entries: vec![fsutil::types::Stat {
            path: "a".into(),
            ..Default::default()
        }],
    };
    assert_eq!(dir.encode_to_vec(), [0x0a, 3, 0x0a, 1, b'a']);
    let stat = gateway::StatFileRequest {
        r#ref: "r".into(),
        path: "p".into(),
        mount_index: 1,
    };
    assert_eq!(numbers(&stat), one_to(3));
    let warn = gateway::WarnRequest {
        digest: "sha256:aa".into(),
        level: 1,
        short: b"s".to_vec(),
        detail: vec![b"d".to_vec()],
        url: "u".into(),
        info: source_info(),
        ranges: vec![range()],
    };
    assert_eq!(numbers(&warn), one_to(7));
}

#[test]
fn exec_message_oneof_numbers() {
    use gateway::exec_message::Input;
    let msg = |input| gateway::ExecMessage {
        process_id: "p".into(),
        input: Some(input),
    };
    let cases = [
        (Input::Init(gateway::InitMessage::default()), 2),
        (Input::File(gateway::FdMessage::default()), 3),
        (Input::Resize(gateway::ResizeMessage::default()), 4),
        (Input::Started(gateway::StartedMessage {}), 5),
        (Input::Exit(gateway::ExitMessage::default()), 6),
        (Input::Done(gateway::DoneMessage {}), 7),
        (Input::Signal(gateway::SignalMessage::default()), 8),
    ];
    for (input, n) in cases {
        assert_eq!(numbers(&msg(input)), [1, n]);
    }
    let fd = gateway::FdMessage {
        fd: 1,
        eof: true,
        data: b"x".to_vec(),
    };
    assert_eq!(numbers(&fd), one_to(3));
    let container = gateway::NewContainerRequest {
        container_id: "c".into(),
        mounts: vec![pb::Mount::default()],
        network: pb::NetMode::Host.into(),
        platform: Some(pb::Platform::default()),
        constraints: Some(pb::WorkerConstraints::default()),
        extra_hosts: vec![pb::HostIp::default()],
        hostname: "h".into(),
    };
    assert_eq!(numbers(&container), one_to(7));
}

// ---------------------------------------------------------------------------------------------
// Session messages
// ---------------------------------------------------------------------------------------------

#[test]
fn bytes_messages_put_data_at_1() {
    let want = [0x0a, 2, b'h', b'i'];
    let data = b"hi".to_vec();
    assert_eq!(
        control::BytesMessage { data: data.clone() }.encode_to_vec(),
        want
    );
    assert_eq!(
        filesync::BytesMessage { data: data.clone() }.encode_to_vec(),
        want
    );
    assert_eq!(
        sshforward::BytesMessage { data: data.clone() }.encode_to_vec(),
        want
    );
    assert_eq!(upload::BytesMessage { data }.encode_to_vec(), want);
}

#[test]
fn fsutil_packet_id_is_field_3() {
    let req = fsutil::types::Packet {
        r#type: fsutil::types::packet::PacketType::PacketReq.into(),
        id: 7,
        ..Default::default()
    };
    assert_eq!(req.encode_to_vec(), [0x08, 1, 0x18, 7]);
    // The short path through `fsutil::` names the same types.
    let same: fsutil::Packet = req;
    assert_eq!(same.id, 7);
}

#[test]
fn auth_secrets_and_ssh_fields() {
    let fetch = auth::FetchTokenRequest {
        client_id: "c".into(),
        host: "registry-1.docker.io".into(),
        realm: "r".into(),
        service: "s".into(),
        scopes: vec!["repository:library/busybox:pull".into()],
    };
    assert_eq!(numbers(&fetch), one_to(5));
    let token = auth::FetchTokenResponse {
        token: "t".into(),
        expires_in: 300,
        issued_at: 1,
    };
    assert_eq!(numbers(&token), one_to(3));
    let creds = auth::CredentialsResponse {
        username: "u".into(),
        secret: "s".into(),
    };
    assert_eq!(numbers(&creds), [1, 2]);
    let verify = auth::VerifyTokenAuthorityRequest {
        host: "h".into(),
        payload: b"p".to_vec(),
        salt: b"s".to_vec(),
    };
    assert_eq!(numbers(&verify), one_to(3));
    let secret = secrets::GetSecretRequest {
        id: "npmrc".into(),
        annotations: map("k", "v"),
    };
    assert_eq!(numbers(&secret), [1, 2]);
    let agent = sshforward::CheckAgentRequest {
        id: "default".into(),
    };
    assert_eq!(agent.encode_to_vec()[0], 0x0a);
}

#[test]
fn source_policy_fields() {
    let rule = sourcepolicy::Rule {
        action: sourcepolicy::PolicyAction::Convert.into(),
        selector: Some(sourcepolicy::Selector {
            identifier: "docker-image://docker.io/library/*".into(),
            match_type: sourcepolicy::MatchType::Regex.into(),
            constraints: vec![sourcepolicy::AttrConstraint {
                key: "k".into(),
                value: "v".into(),
                condition: sourcepolicy::AttrMatch::Matches.into(),
            }],
        }),
        updates: Some(sourcepolicy::Update {
            identifier: "i".into(),
            attrs: map("k", "v"),
        }),
    };
    assert_eq!(numbers(&rule), one_to(3));
    let selector = rule.selector.clone().expect("set");
    assert_eq!(numbers(&selector), one_to(3));
    assert_eq!(numbers(&selector.constraints[0]), one_to(3));
    let policy = sourcepolicy::Policy {
        version: 1,
        rules: vec![rule],
    };
    assert_eq!(numbers(&policy), [1, 2]);
}
