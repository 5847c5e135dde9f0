//! Conversions between the daemon's state and BuildKit's wire types, in one place: the worker
//! record, capability lists, usage records and errors.

use std::collections::BTreeMap;

use memobuild_proto::apicaps::ApiCap;
use memobuild_proto::caps;
use memobuild_proto::control::UsageRecord;
use memobuild_proto::pb;
use memobuild_proto::worker_types::{BuildkitVersion, GcPolicy, WorkerRecord};
use memobuild_worker::state::usage::{Entry, EntryKind};

use crate::daemon::config::GcRule;
use crate::daemon::status::timestamp;

/// The BuildKit version the daemon speaks (its wire protocol); buildx shows it and gates a few
/// features on it.
pub const BUILDKIT_VERSION: &str = "v0.32.2";

/// The version record of this daemon.
pub fn version() -> BuildkitVersion {
    BuildkitVersion {
        package: "github.com/memobuild/memobuild".into(),
        version: format!("{BUILDKIT_VERSION}-memobuild.{}", env!("CARGO_PKG_VERSION")),
        revision: String::new(),
        dockerfile_version: String::new(),
    }
}

/// The host's platform as LLB names it.
pub fn host_platform() -> pb::Platform {
    crate::pipeline::pb_platform(&memobuild_frontend::Platform::host())
}

/// The one worker of this daemon.
pub fn worker_record(id: &str, gc: &[GcRule]) -> WorkerRecord {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let labels: BTreeMap<String, String> = [
        ("org.mobyproject.buildkit.worker.executor", "containerd"),
        ("org.mobyproject.buildkit.worker.snapshotter", "overlayfs"),
        ("org.mobyproject.buildkit.worker.network", "host"),
        ("org.mobyproject.buildkit.worker.memobuild", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([(
        "org.mobyproject.buildkit.worker.hostname".to_string(),
        hostname,
    )])
    .collect();
    WorkerRecord {
        id: id.to_owned(),
        labels,
        platforms: vec![host_platform()],
        gc_policy: gc
            .iter()
            .map(|r| GcPolicy {
                all: r.all,
                keep_duration: r
                    .keep_duration
                    .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                    .unwrap_or_default(),
                reserved_space: r
                    .keep_bytes
                    .and_then(|b| i64::try_from(b).ok())
                    .unwrap_or_default(),
                max_used_space: r
                    .keep_bytes
                    .and_then(|b| i64::try_from(b).ok())
                    .unwrap_or_default(),
                ..Default::default()
            })
            .collect(),
        buildkit_version: Some(version()),
        cdi_devices: Vec::new(),
    }
}

/// The gateway API caps the daemon implements (`frontend/gateway/pb/caps.go`).
pub const GATEWAY_CAPS: &[&str] = &[
    "solve.base",
    "solve.inlinereturn",
    "resolveimage",
    "resolveimage.resolvemode",
    "readfile",
    "return",
    "returnmap",
    "readdir",
    "statfile",
    "importcaches",
    "proto.refarray",
    "reference.output",
    "frontend.inputs",
    "gateway.solve.metadata",
    "frontend.caps",
    "gateway.solve.evaluate",
    "gateway.evaluate",
    "gateway.warnings",
];

/// LLB caps the daemon accepts: every one whose syntax the worker reads. Left out on purpose:
/// the gha/s3/azblob caches (clients turn features on by their presence) and session-verified
/// source policies. Image attestations are in: provenance is attached to pushed images
/// (`export::attestation`), an SBOM request gets a warning.
pub fn llb_caps() -> Vec<&'static str> {
    let left_out = [
        "cache.gha",
        "cache.s3",
        "cache.azblob",
        "source.policy.session",
        caps::CAP_EXPORTER_SESSION,
    ];
    caps::ALL
        .iter()
        .copied()
        .filter(|c| !left_out.contains(c))
        .collect()
}

/// Enabled capability records.
pub fn api_caps(ids: &[&str]) -> Vec<ApiCap> {
    ids.iter()
        .map(|id| ApiCap {
            id: (*id).to_owned(),
            enabled: true,
            ..Default::default()
        })
        .collect()
}

/// A cache entry as a BuildKit usage record.
pub fn usage_record(e: &Entry) -> UsageRecord {
    #[allow(
        deprecated,
        reason = "BuildKit still sends `parent`; we leave it empty"
    )]
    UsageRecord {
        id: match e.kind {
            EntryKind::Record => e.name.clone(),
            EntryKind::Blob => format!("sha256:{}", e.name),
        },
        size: i64::try_from(e.size).unwrap_or(i64::MAX),
        last_used_at: Some(timestamp(e.last_used)),
        created_at: Some(timestamp(e.last_used)),
        usage_count: 1,
        description: match e.kind {
            EntryKind::Record => "memobuild action record".into(),
            EntryKind::Blob => "memobuild layer blob".into(),
        },
        record_type: "regular".into(),
        shared: false,
        mutable: false,
        in_use: false,
        ..Default::default()
    }
}

/// The type URL BuildKit gives a source location attached to an error (`errdefs.Source`,
/// registered with `typeurl` as JSON).
const SOURCE_DETAIL: &str = "github.com/moby/buildkit/errdefs.Source+json";

/// A failed solve as the status a client gets: the error's words, and, when the failed vertex
/// has a location in `definition`'s source map, BuildKit's `errdefs.Source` detail, from which
/// buildx and buildctl print the Dockerfile lines above the error.
pub fn solve_error(
    e: &memobuild_worker::solver::SolveError,
    definition: &pb::Definition,
) -> tonic::Status {
    let detail =
        vertex_source(&e.vertex, definition).and_then(|(info, ranges)| source_detail(info, ranges));
    with_source(tonic::Code::Unknown, e.to_string(), detail)
}

/// A Dockerfile the frontend refused (syntax, arguments, lowering), with the lines it names
/// as an `errdefs.Source` detail when it names some; code Unknown, as buildkitd answers.
pub fn frontend_error(e: &anyhow::Error, dockerfile: &[u8]) -> tonic::Status {
    let detail = e
        .downcast_ref::<memobuild_frontend::FrontendError>()
        .and_then(|fe| {
            let loc = fe.location.as_ref()?;
            let info = pb::SourceInfo {
                filename: fe.file.clone(),
                data: dockerfile.to_vec(),
                definition: None,
                language: "Dockerfile".into(),
            };
            let line = |l: usize| i32::try_from(l).unwrap_or(i32::MAX);
            let range = pb::Range {
                start: Some(pb::Position {
                    line: line(loc.line),
                    character: 0,
                }),
                end: Some(pb::Position {
                    line: line(loc.end_line.max(loc.line)),
                    character: 0,
                }),
            };
            source_detail(&info, &[range])
        });
    with_source(tonic::Code::Unknown, format!("{e:#}"), detail)
}

fn with_source(code: tonic::Code, message: String, detail: Option<Vec<u8>>) -> tonic::Status {
    let Some(detail) = detail else {
        return tonic::Status::new(code, message);
    };
    let status = memobuild_proto::rpc::Status {
        code: code as i32,
        message: message.clone(),
        details: vec![prost_types::Any {
            type_url: SOURCE_DETAIL.to_owned(),
            value: detail,
        }],
    };
    tonic::Status::with_details(code, message, prost::Message::encode_to_vec(&status).into())
}

/// The source file and ranges of the first location of `vertex` in the source map.
fn vertex_source<'a>(
    vertex: &str,
    definition: &'a pb::Definition,
) -> Option<(&'a pb::SourceInfo, &'a [pb::Range])> {
    let source = definition.source.as_ref()?;
    let location = source.locations.get(vertex)?.locations.first()?;
    let info = source
        .infos
        .get(usize::try_from(location.source_index).ok()?)?;
    Some((info, &location.ranges))
}

/// `errdefs.Source` as JSON (Go's encoding: `data` in base64).
fn source_detail(info: &pb::SourceInfo, ranges: &[pb::Range]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let position = |p: &Option<pb::Position>| {
        let p = p.unwrap_or_default();
        serde_json::json!({"line": p.line, "character": p.character})
    };
    let ranges: Vec<serde_json::Value> = ranges
        .iter()
        .map(|r| serde_json::json!({"start": position(&r.start), "end": position(&r.end)}))
        .collect();
    let json = serde_json::json!({
        "info": {
            "filename": info.filename,
            "data": base64::engine::general_purpose::STANDARD.encode(&info.data),
            "language": info.language,
        },
        "ranges": ranges,
    });
    serde_json::to_vec(&json).ok()
}

/// The error a client's build function returned, as the status its Solve fails with: code,
/// message and typed details (a source location among them) as the client sent them.
pub fn returned_error(e: memobuild_proto::rpc::Status) -> tonic::Status {
    let code = tonic::Code::from_i32(e.code);
    let message = e.message.clone();
    if e.details.is_empty() {
        return tonic::Status::new(code, message);
    }
    tonic::Status::with_details(code, message, prost::Message::encode_to_vec(&e).into())
}
