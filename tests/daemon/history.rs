//! Build history (`docker buildx history`) and the provenance it keeps.

use super::*;

/// Every history record the daemon has, as a listing that ends (`EarlyExit`) gives them.
async fn listed(
    control: &mut memobuild_proto::control::control_client::ControlClient<
        tonic::transport::Channel,
    >,
) -> Vec<memobuild_proto::control::BuildHistoryEvent> {
    let mut listing = control
        .listen_build_history(BuildHistoryRequest {
            early_exit: true,
            ..Default::default()
        })
        .await
        .expect("ListenBuildHistory")
        .into_inner();
    let mut events = Vec::new();
    while let Some(e) = listing.message().await.expect("listing") {
        events.push(e);
    }
    events
}

// Verifies: the daemon keeps a record of each build a client ran (`docker buildx history`):
// a listener sees it start and complete; a listing has the builds newest first with their
// errors, step counts and exporter response; buildx's probe of the API ends at once; a record
// can be deleted.
#[test]
fn build_history_lists_the_builds_clients_ran() {
    let Some(env) = Env::get() else { return };
    let sb = Sandbox::new();
    let ok_dockerfile = format!("FROM {}\nRUN echo {} > /x\n", env.busybox(), unique("hist"));
    sb.write("Dockerfile", &ok_dockerfile);
    let daemon = Daemon::start(&sb, &env, &[]);
    let oci = format!("type=oci,dest={}", sb.path("out.tar").display());

    let bad_ref = block_on(async {
        let mut control = daemon.control().await;
        // buildx's probe: only active builds, a ref no build has, end at once.
        let mut probe = control
            .listen_build_history(BuildHistoryRequest {
                active_only: true,
                r#ref: "buildx-test-history-api-feature".into(),
                early_exit: true,
                ..Default::default()
            })
            .await
            .expect("the history probe")
            .into_inner();
        assert!(probe.message().await.expect("probe stream").is_none());

        let mut live = control
            .listen_build_history(BuildHistoryRequest::default())
            .await
            .expect("ListenBuildHistory")
            .into_inner();
        let out = sb.build_remote(&daemon, &["--output", &oci]);
        assert_ok(&out, "memobuild build --addr");
        let digest = stdout(&out).trim().to_owned();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let event = tokio::time::timeout(Duration::from_secs(30), live.message())
                .await
                .expect("a history event within 30 s")
                .expect("history stream")
                .expect("an event");
            seen.push(event.r#type);
        }
        assert_eq!(
            seen,
            [
                BuildHistoryEventType::Started as i32,
                BuildHistoryEventType::Complete as i32
            ]
        );

        sb.write("Dockerfile", &format!("{ok_dockerfile}RUN false\n"));
        let failed = sb.build_remote(&daemon, &["--output", &oci]);
        assert!(!failed.status.success());

        let mut records = Vec::new();
        for e in listed(&mut control).await {
            assert_eq!(e.r#type, BuildHistoryEventType::Complete as i32);
            records.push(e.record.expect("record"));
        }
        assert_eq!(records.len(), 2, "{records:?}");
        let (bad, good) = (&records[0], &records[1]);
        let error = bad.error.as_ref().expect("the failed build's error");
        assert!(error.message.contains("RUN false"), "{}", error.message);
        assert!(bad.num_completed_steps < bad.num_total_steps, "{bad:?}");
        assert!(good.error.is_none());
        assert_eq!(
            good.frontend_attrs.get("filename").map(String::as_str),
            Some("Dockerfile")
        );
        assert_eq!(good.exporters[0].r#type, "oci");
        assert_eq!(good.exporter_response["containerimage.digest"], digest);
        assert!(good.num_total_steps >= 2, "{good:?}");
        assert_eq!(good.num_completed_steps, good.num_total_steps);
        assert!(good.completed_at.is_some() && good.created_at.is_some());
        // The record lists the build's provenance as buildx looks for it, and the daemon's
        // content store serves its bytes (`--metadata-file`'s `buildx.build.provenance`).
        let predicate = provenance_of(&daemon, good).await;
        assert_eq!(
            predicate["buildDefinition"]["externalParameters"]["request"]["frontend"],
            "dockerfile.v0",
            "{predicate}"
        );
        let deps = predicate["buildDefinition"]["resolvedDependencies"].to_string();
        assert!(
            deps.contains("pkg:docker/") && deps.contains("busybox"),
            "{deps}"
        );
        assert_eq!(
            predicate["runDetails"]["metadata"]["invocationId"],
            good.r#ref.as_str()
        );
        // The failed build's FROM and RUN echo came from the cache.
        assert!(bad.num_cached_steps >= 2, "{bad:?}");

        control
            .update_build_history(UpdateBuildHistoryRequest {
                r#ref: good.r#ref.clone(),
                delete: true,
                ..Default::default()
            })
            .await
            .expect("delete a record");
        let left: Vec<String> = listed(&mut control)
            .await
            .into_iter()
            .map(|e| e.record.expect("record").r#ref)
            .collect();
        assert_eq!(left, std::slice::from_ref(&bad.r#ref));
        bad.r#ref.clone()
    });

    // After a restart the record is still there, and `Status` of the finished build replays
    // its progress (`docker buildx history logs`), the failed step among it.
    drop(daemon);
    let daemon = Daemon::start(&sb, &env, &[]);
    block_on(async {
        let mut control = daemon.control().await;
        let left: Vec<String> = listed(&mut control)
            .await
            .into_iter()
            .map(|e| e.record.expect("record").r#ref)
            .collect();
        assert_eq!(left, std::slice::from_ref(&bad_ref));
        let mut status = control
            .status(memobuild_proto::control::StatusRequest {
                r#ref: bad_ref.clone(),
            })
            .await
            .expect("Status of a finished build")
            .into_inner();
        let mut failed = Vec::new();
        while let Some(r) = status.message().await.expect("status stream") {
            failed.extend(
                r.vertexes
                    .into_iter()
                    .filter(|v| !v.error.is_empty())
                    .map(|v| v.name),
            );
        }
        assert!(failed.iter().any(|n| n.contains("RUN false")), "{failed:?}");
    });
}

/// The provenance predicate `record` lists, read as buildx reads it: `Info` for the size, then
/// `Read` (checked against the digest, and a part of it from an offset); a digest no record
/// lists is not found.
async fn provenance_of(daemon: &Daemon, record: &BuildHistoryRecord) -> serde_json::Value {
    use memobuild_proto::containerd::services::content::v1::{
        InfoRequest, ReadContentRequest, content_client::ContentClient,
    };
    let a = record
        .result
        .as_ref()
        .and_then(|r| r.attestations.first())
        .unwrap_or_else(|| panic!("no attestation in {record:?}"));
    assert_eq!(a.media_type, "application/vnd.in-toto+json");
    assert_eq!(
        a.annotations["in-toto.io/predicate-type"],
        "https://slsa.dev/provenance/v1"
    );
    let mut content = ContentClient::new(daemon.channel().await);
    let info = content
        .info(InfoRequest {
            digest: a.digest.clone(),
        })
        .await
        .expect("Info of the provenance")
        .into_inner()
        .info
        .expect("info");
    assert_eq!(info.size, a.size);
    let read = |offset: i64, size: i64| {
        let mut content = content.clone();
        let digest = a.digest.clone();
        async move {
            let mut stream = content
                .read(ReadContentRequest {
                    digest,
                    offset,
                    size,
                })
                .await
                .expect("Read of the provenance")
                .into_inner();
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.message().await.expect("read stream") {
                bytes.extend(chunk.data);
            }
            bytes
        }
    };
    let whole = read(0, 0).await;
    assert_eq!(whole.len() as i64, a.size);
    assert_eq!(
        format!("sha256:{}", sha256_hex(&whole)),
        a.digest,
        "the bytes are the digest's"
    );
    assert_eq!(read(10, 20).await, whole[10..30]);
    let missing = content
        .info(InfoRequest {
            digest: format!("sha256:{}", sha256_hex(b"no such blob")),
        })
        .await
        .expect_err("a blob no record lists");
    assert_eq!(missing.code(), tonic::Code::NotFound);
    serde_json::from_slice(&whole).expect("the predicate is JSON")
}
