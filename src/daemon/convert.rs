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
/// attestations and the gha/s3/azblob caches (clients turn features on by their presence) and
/// session-verified source policies.
pub fn llb_caps() -> Vec<&'static str> {
    let left_out = [
        caps::CAP_EXPORTER_IMAGE_ATTESTATIONS,
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
