//! One remote build, as buildctl's `c.Build` runs it (`client/solve.go`, `client/build.go`):
//! four things at once on one connection.
//!
//! * the session ([`session::run`]), which the daemon calls back into;
//! * `Control/Solve{Frontend: ""}`, which blocks until the build *and* its exports are done;
//! * `Control/Status{Ref}`, rendered as it arrives;
//! * the build function on LLBBridge ([`gateway::run`]).
//!
//! When the Solve returns, the session is half-closed and the Status stream gets 5 s of
//! silence before it is dropped (the daemon normally ends it itself). When the build function
//! fails, the Solve gets 5 s to fail with the same error (the daemon received it in `Return`)
//! before it is cancelled. The first error in the order Solve, build function, Status,
//! session is the build's: the Solve's is the daemon's own account of what went wrong.
//! Dropping the future cancels every call, which makes the daemon cancel the build.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use memobuild_proto::control::{CacheOptions, CacheOptionsEntry, SolveRequest, StatusRequest};
use memobuild_worker::progress::Progress;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Request;
use tonic::service::Routes;
use tonic::transport::Channel;

use crate::client::request::BuildRequest;
use crate::client::status::{Failure, StatusTracker};
use crate::client::{connect, exporters, gateway, session};
use crate::session::headers::SessionHeaders;

/// Silence on the Status stream, after the Solve returned, that ends it (`client/solve.go`).
const STATUS_INACTIVITY: Duration = Duration::from_secs(5);
/// How long a failed build function waits for the Solve to fail too.
const SOLVE_GRACE: Duration = Duration::from_secs(5);

/// The ids of one build.
#[derive(Debug, Clone)]
pub struct Ids {
    /// `SolveRequest.Ref`: names the build in Status and LLBBridge calls.
    pub build_ref: String,
    /// The session id (`SolveRequest.Session`).
    pub session: String,
}

/// The `Control/Solve` request of a build.
pub fn solve_request(ids: &Ids, request: &BuildRequest) -> SolveRequest {
    let (exporters, exporter_deprecated, exporter_attrs_deprecated) =
        exporters::to_proto(&request.exports);
    SolveRequest {
        r#ref: ids.build_ref.clone(),
        session: ids.session.clone(),
        // Empty: the build runs through the LLBBridge build function.
        frontend: String::new(),
        frontend_attrs: request.frontend_attrs.clone(),
        exporters,
        exporter_deprecated,
        exporter_attrs_deprecated,
        // Always present, as BuildKit's older (gogo) daemons expected.
        cache: Some(CacheOptions {
            exports: cache_entries(&request.cache_exports),
            imports: cache_entries(&request.cache_imports),
            ..CacheOptions::default()
        }),
        entitlements: request.entitlements.clone(),
        ..SolveRequest::default()
    }
}

fn cache_entries(entries: &[(String, BTreeMap<String, String>)]) -> Vec<CacheOptionsEntry> {
    entries
        .iter()
        .map(|(t, attrs)| CacheOptionsEntry {
            r#type: t.clone(),
            attrs: attrs.clone(),
        })
        .collect()
}

/// How a build ended.
#[derive(Debug)]
pub struct Outcome {
    /// The exporters' response (`SolveResponse.ExporterResponse`), or why there is none.
    pub result: anyhow::Result<BTreeMap<String, String>>,
    /// The vertices that failed, with their last output lines.
    pub failures: Vec<Failure>,
}

/// Runs the build.
pub async fn run(
    channel: &Channel,
    ids: &Ids,
    request: &BuildRequest,
    headers: SessionHeaders,
    routes: Routes,
    progress: &Progress,
) -> Outcome {
    let mut tracker = StatusTracker::new();
    let result = build(
        channel,
        ids,
        request,
        headers,
        routes,
        progress,
        &mut tracker,
    )
    .await;
    Outcome {
        result,
        failures: tracker.failures(),
    }
}

async fn build(
    channel: &Channel,
    ids: &Ids,
    request: &BuildRequest,
    headers: SessionHeaders,
    routes: Routes,
    progress: &Progress,
    tracker: &mut StatusTracker,
) -> anyhow::Result<BTreeMap<String, String>> {
    let control = connect::control(channel);
    let solve_done = CancellationToken::new();
    let cancel_solve = CancellationToken::new();
    let session_close = CancellationToken::new();

    let session = {
        let (control, close) = (control.clone(), session_close.clone());
        async move { session::run(control, headers, routes, close).await }
    };

    let solve = {
        let mut control = control.clone();
        let message = solve_request(ids, request);
        let (solve_done, cancel_solve, session_close) = (
            solve_done.clone(),
            cancel_solve.clone(),
            session_close.clone(),
        );
        async move {
            let result = tokio::select! {
                r = control.solve(Request::new(message)) => {
                    r.map(|r| r.into_inner().exporter_response)
                        .map_err(crate::client::remote)
                        .context("failed to solve")
                }
                () = cancel_solve.cancelled() => {
                    Err(anyhow::anyhow!("failed to solve: the build function failed and the daemon did not end the build"))
                }
            };
            solve_done.cancel();
            session_close.cancel();
            result
        }
    };

    let build_function = {
        let client = connect::gateway(channel);
        let (solve_done, cancel_solve) = (solve_done.clone(), cancel_solve.clone());
        let (build_ref, opts) = (ids.build_ref.clone(), request.frontend_attrs.clone());
        let place = if request.client_frontend {
            gateway::FrontendPlace::Client {
                session: ids.session.clone(),
            }
        } else {
            gateway::FrontendPlace::Daemon
        };
        async move {
            let result = gateway::run(client, &build_ref, opts, place)
                .await
                .context("failed to run Build function");
            if result.is_err() {
                tokio::select! {
                    () = solve_done.cancelled() => {}
                    () = tokio::time::sleep(SOLVE_GRACE) => cancel_solve.cancel(),
                }
            }
            result
        }
    };

    let status = status(
        control.clone(),
        ids.build_ref.clone(),
        solve_done.clone(),
        progress,
        tracker,
    );

    let (session, solve, build_function, status) =
        tokio::join!(session, solve, build_function, status);
    // A Solve we cancelled says less than the build function that made us cancel it.
    let (response, build_function) = match (solve, build_function) {
        (Err(_), Err(e)) if cancel_solve.is_cancelled() => return Err(e),
        pair => pair,
    };
    let mut response = response?;
    let metadata = build_function?;
    status?;
    session?;
    // As buildx: a subrequest's result metadata joins the exporters' response (its
    // `result.json` is read from there).
    let subrequest = request.frontend_attrs.contains_key("requestid");
    for (k, v) in metadata.into_iter().filter(|_| subrequest) {
        response
            .entry(k)
            .or_insert_with(|| String::from_utf8_lossy(&v).into_owned());
    }
    Ok(response)
}

/// Reads the Status stream into `progress` until the daemon ends it, or until it has been
/// silent for [`STATUS_INACTIVITY`] after the Solve returned.
async fn status(
    mut control: memobuild_proto::control::control_client::ControlClient<Channel>,
    build_ref: String,
    solve_done: CancellationToken,
    progress: &Progress,
    tracker: &mut StatusTracker,
) -> anyhow::Result<()> {
    let mut stream = control
        .status(Request::new(StatusRequest { r#ref: build_ref }))
        .await
        .map_err(crate::client::remote)
        .context("failed to get status")?
        .into_inner();
    let mut deadline: Option<Instant> = None;
    loop {
        let idle = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(update)) => {
                    for event in tracker.update(update) {
                        progress.send(event);
                    }
                    if deadline.is_some() {
                        deadline = Some(Instant::now() + STATUS_INACTIVITY);
                    }
                }
                Ok(None) => return Ok(()),
                // Once the Solve is over, its answer is what counts.
                Err(_) if solve_done.is_cancelled() => return Ok(()),
                Err(e) => return Err(crate::client::remote(e)).context("failed to receive status"),
            },
            () = solve_done.cancelled(), if deadline.is_none() => {
                deadline = Some(Instant::now() + STATUS_INACTIVITY);
            }
            () = idle => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::exporters::{Export, Target};

    #[test]
    fn solve_request_is_buildctls() {
        let ids = Ids {
            build_ref: "ref1".into(),
            session: "sess1".into(),
        };
        let request = BuildRequest {
            locals: BTreeMap::new(),
            frontend_attrs: BTreeMap::from([("filename".into(), "Dockerfile".into())]),
            exports: vec![Export {
                kind: "oci".into(),
                attrs: BTreeMap::from([("name".into(), "app".into())]),
                target: Target::File("o.tar".into()),
            }],
            entitlements: vec!["network.host".into()],
            shared_key: "k".into(),
            upload: None,
            client_frontend: false,
            cache_exports: vec![(
                "registry".into(),
                BTreeMap::from([("ref".into(), "r/c".into())]),
            )],
            cache_imports: Vec::new(),
        };
        let r = solve_request(&ids, &request);
        assert_eq!(
            (r.r#ref.as_str(), r.session.as_str(), r.frontend.as_str()),
            ("ref1", "sess1", "")
        );
        assert!(r.definition.is_none());
        assert_eq!(r.frontend_attrs, request.frontend_attrs);
        assert_eq!(r.exporters.len(), 1);
        assert_eq!(r.exporter_deprecated, "oci");
        assert_eq!(r.exporter_attrs_deprecated, r.exporters[0].attrs);
        let cache = r.cache.expect("cache options are always sent");
        assert_eq!(cache.exports.len(), 1);
        assert_eq!(cache.exports[0].r#type, "registry");
        assert_eq!(cache.exports[0].attrs["ref"], "r/c");
        assert!(cache.imports.is_empty());
        assert_eq!(r.entitlements, vec!["network.host"]);
        assert!(!r.internal);
    }
}
