//! The build function buildctl runs against the daemon's LLBBridge for
//! `--frontend dockerfile.v0` (`client/build.go`, `frontend/gateway/grpcclient/client.go`):
//! `Ping` for the daemon's capabilities, `Solve{Frontend: "dockerfile.v0"}`, then `Return`
//! with what the solve gave (or with its error), which ends the build function and lets the
//! daemon's `Control/Solve` export the result.
//!
//! Every call carries `buildkit-controlapi-buildid: <SolveRequest.Ref>`: that is how the
//! daemon ties it to the Solve waiting for it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use memobuild_proto::apicaps::ApiCap;
use memobuild_proto::gateway::llb_bridge_client::LlbBridgeClient;
use memobuild_proto::gateway::result::Result as ResultKind;
use memobuild_proto::gateway::{
    PingRequest, Ref, RefMap, RefMapDeprecated, ReturnRequest, SolveRequest, SolveResponse,
};
use memobuild_proto::rpc;
use prost::Message;
use tonic::Request;
use tonic::transport::Channel;

/// The metadata key naming the build of an LLBBridge call (`client/buildid/metadata.go`).
pub const BUILD_ID: &str = "buildkit-controlapi-buildid";
/// The frontend buildctl's `--frontend` names for Dockerfiles.
pub const DOCKERFILE_FRONTEND: &str = "dockerfile.v0";
/// How long `Ping` may take (`grpcclient.New`).
const PING_TIMEOUT: Duration = Duration::from_secs(15);

/// Gateway caps our build function relies on (`frontend/gateway/pb/caps.go`).
const CAP_RETURN: &str = "return";
const CAP_PROTO_REF_ARRAY: &str = "proto.refarray";

/// The caps a daemon advertised in `Pong`.
#[derive(Debug, Default)]
pub struct Caps(BTreeMap<String, ApiCap>);

impl Caps {
    /// The frontend API caps of a Pong. A daemon that lists none predates caps; Go's client
    /// then assumes a frozen legacy set without `return`, as this does.
    pub fn new(caps: Vec<ApiCap>) -> Self {
        Caps(caps.into_iter().map(|c| (c.id.clone(), c)).collect())
    }

    /// Whether `id` is listed and enabled; otherwise why not, in BuildKit's words.
    pub fn supports(&self, id: &str) -> anyhow::Result<()> {
        match self.0.get(id) {
            None => bail!(
                "requested feature {id} is not supported by build server, please update BuildKit"
            ),
            Some(c) if !c.enabled => {
                let reason = if c.disabled_reason_msg.is_empty() {
                    String::new()
                } else {
                    format!(": {}", c.disabled_reason_msg)
                };
                bail!("requested feature {id} has been disabled on the build server{reason}")
            }
            Some(_) => Ok(()),
        }
    }
}

/// A request tagged with the build id.
fn tagged<T>(message: T, build_ref: &str) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        BUILD_ID,
        build_ref
            .parse()
            .with_context(|| format!("build ref `{build_ref}` is not valid metadata"))?,
    );
    Ok(request)
}

/// Where the Dockerfile frontend runs.
pub enum FrontendPlace {
    /// On the daemon: `Solve{Frontend: "dockerfile.v0"}`.
    Daemon,
    /// In this process, over LLBBridge ([`crate::gateway_client`]), with the build's session.
    Client {
        /// The session id of the build.
        session: String,
    },
}

/// Runs the build function: Ping, the Dockerfile frontend with `frontend_opt` (on the daemon
/// or here, per `place`), Return. A failed frontend is returned to the daemon (which fails
/// the `Control/Solve` with it) and also returned here. The answer is the result's metadata
/// (what a subrequest such as `frontend.outline` answers in, `result.json` and friends).
pub async fn run(
    mut client: LlbBridgeClient<Channel>,
    build_ref: &str,
    frontend_opt: BTreeMap<String, String>,
    place: FrontendPlace,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let pong = tokio::time::timeout(
        PING_TIMEOUT,
        client.ping(tagged(PingRequest {}, build_ref)?),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {PING_TIMEOUT:?}"))
    .and_then(|r| r.map_err(crate::client::remote))
    .context("pinging the daemon's frontend gateway")?
    .into_inner();
    let caps = Caps::new(pong.frontend_api_caps);
    // Without `return`, Go's client falls back to an inline return through a final Solve,
    // a protocol of BuildKit before v0.6 that is not worth carrying.
    caps.supports(CAP_RETURN)?;
    let ref_array = caps.supports(CAP_PROTO_REF_ARRAY).is_ok();

    if let FrontendPlace::Client { session } = place {
        let bridge = crate::gateway_client::GatewayBridge::new(
            client.clone(),
            Some(build_ref.to_owned()),
            Some(session),
            caps,
        )
        .with_platform(crate::gateway_client::worker_platform(&pong.workers));
        let ran = crate::frontend_request::run(&bridge, &frontend_opt).await;
        let ret = crate::gateway_client::return_request(&ran);
        let returned = client.r#return(tagged(ret, build_ref)?).await;
        let ran = ran.map_err(crate::client::remote)?;
        returned
            .map_err(crate::client::remote)
            .context("returning the result to the daemon")?;
        return Ok(ran.metadata);
    }

    let request = SolveRequest {
        frontend: DOCKERFILE_FRONTEND.to_owned(),
        frontend_opt,
        allow_result_return: true,
        allow_result_array_ref: true,
        ..SolveRequest::default()
    };
    let solved = client.solve(tagged(request, build_ref)?).await;
    let ret = match &solved {
        Ok(response) => ReturnRequest {
            result: Some(returned_result(response.get_ref().clone(), ref_array)),
            error: None,
        },
        Err(status) => ReturnRequest {
            result: None,
            error: Some(rpc_status(status)),
        },
    };
    let returned = client.r#return(tagged(ret, build_ref)?).await;
    let solved = solved.map_err(crate::client::remote)?;
    returned
        .map_err(crate::client::remote)
        .context("returning the result to the daemon")?;
    Ok(solved
        .into_inner()
        .result
        .map(|r| r.metadata)
        .unwrap_or_default())
}

/// The `Return` of what `Solve` answered, as Go's client rebuilds it: refs with an empty id
/// become empty refs (no Definition), a result without one becomes an empty ref, legacy
/// single ids become refs, and daemons without `proto.refarray` get the legacy forms back.
pub fn returned_result(
    response: SolveResponse,
    ref_array: bool,
) -> memobuild_proto::gateway::Result {
    let mut result = match response.result {
        Some(r) => r,
        // Daemons that answer with a bare id (`SolveResponse.ref`) and no result.
        None => memobuild_proto::gateway::Result {
            result: Some(ResultKind::Ref(Ref {
                id: response.r#ref,
                def: None,
            })),
            ..Default::default()
        },
    };
    let kind = match result.result.take() {
        Some(ResultKind::Ref(r)) => Single(non_empty(r)),
        Some(ResultKind::RefDeprecated(id)) => Single(Ref { id, def: None }),
        Some(ResultKind::Refs(m)) => {
            Map(m.refs.into_iter().map(|(k, r)| (k, non_empty(r))).collect())
        }
        Some(ResultKind::RefsDeprecated(m)) => Map(m
            .refs
            .into_iter()
            .map(|(k, id)| (k, Ref { id, def: None }))
            .collect()),
        None => Single(Ref::default()),
    };
    result.result = Some(match (kind, ref_array) {
        (Single(r), true) => ResultKind::Ref(r),
        (Single(r), false) => ResultKind::RefDeprecated(r.id),
        (Map(m), true) => ResultKind::Refs(RefMap { refs: m }),
        (Map(m), false) => ResultKind::RefsDeprecated(RefMapDeprecated {
            refs: m.into_iter().map(|(k, r)| (k, r.id)).collect(),
        }),
    });
    for attestations in result.attestations.values_mut() {
        for a in &mut attestations.attestation {
            a.r#ref = Some(a.r#ref.take().map(non_empty).unwrap_or_default());
        }
    }
    result
}

enum RefKind {
    Single(Ref),
    Map(BTreeMap<String, Ref>),
}
use RefKind::{Map, Single};

fn non_empty(r: Ref) -> Ref {
    if r.id.is_empty() { Ref::default() } else { r }
}

/// A failed call's status as `google.rpc.Status`, details included (BuildKit's typed error
/// details travel in `grpc-status-details-bin`).
pub fn rpc_status(status: &tonic::Status) -> rpc::Status {
    let details = rpc::Status::decode(status.details())
        .map(|s| s.details)
        .unwrap_or_default();
    rpc::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memobuild_proto::gateway::{Attestation, Attestations};
    use memobuild_proto::pb::Definition;

    fn cap(id: &str, enabled: bool) -> ApiCap {
        ApiCap {
            id: id.into(),
            enabled,
            disabled_reason_msg: if enabled { String::new() } else { "off".into() },
            ..ApiCap::default()
        }
    }

    #[test]
    fn caps_report_missing_and_disabled() {
        let caps = Caps::new(vec![cap("return", true), cap("proto.refarray", false)]);
        caps.supports("return").unwrap();
        let off = caps.supports("proto.refarray").unwrap_err().to_string();
        assert!(
            off.contains("has been disabled on the build server: off"),
            "{off}"
        );
        let missing = caps.supports("readdir").unwrap_err().to_string();
        assert!(
            missing.contains("readdir is not supported by build server"),
            "{missing}"
        );
        assert!(Caps::new(vec![]).supports("return").is_err());
    }

    fn def() -> Option<Definition> {
        Some(Definition {
            def: vec![b"op".to_vec()],
            ..Definition::default()
        })
    }

    #[test]
    fn single_ref_round_trips_with_its_definition() {
        let response = SolveResponse {
            result: Some(memobuild_proto::gateway::Result {
                result: Some(ResultKind::Ref(Ref {
                    id: "r1".into(),
                    def: def(),
                })),
                metadata: BTreeMap::from([("containerimage.config".into(), b"{}".to_vec())]),
                ..Default::default()
            }),
            ..SolveResponse::default()
        };
        let back = returned_result(response.clone(), true);
        assert_eq!(Some(back), response.result);
        let legacy = returned_result(response, false);
        assert_eq!(legacy.result, Some(ResultKind::RefDeprecated("r1".into())));
        assert_eq!(legacy.metadata["containerimage.config"], b"{}");
    }

    #[test]
    fn empty_refs_lose_their_definition() {
        let response = SolveResponse {
            result: Some(memobuild_proto::gateway::Result {
                result: Some(ResultKind::Refs(RefMap {
                    refs: BTreeMap::from([
                        (
                            "linux/amd64".into(),
                            Ref {
                                id: "a".into(),
                                def: def(),
                            },
                        ),
                        (
                            "linux/arm64".into(),
                            Ref {
                                id: String::new(),
                                def: def(),
                            },
                        ),
                    ]),
                })),
                attestations: BTreeMap::from([(
                    "linux/amd64".into(),
                    Attestations {
                        attestation: vec![Attestation::default()],
                    },
                )]),
                ..Default::default()
            }),
            ..SolveResponse::default()
        };
        let back = returned_result(response, true);
        let Some(ResultKind::Refs(m)) = &back.result else {
            panic!("{:?}", back.result)
        };
        assert_eq!(m.refs["linux/amd64"].def, def());
        assert_eq!(m.refs["linux/arm64"], Ref::default());
        assert_eq!(
            back.attestations["linux/amd64"].attestation[0].r#ref,
            Some(Ref::default())
        );
    }

    #[test]
    fn legacy_answers_become_refs() {
        let bare = SolveResponse {
            r#ref: "old".into(),
            ..SolveResponse::default()
        };
        assert_eq!(
            returned_result(bare, true).result,
            Some(ResultKind::Ref(Ref {
                id: "old".into(),
                def: None
            }))
        );
        let none = SolveResponse {
            result: Some(memobuild_proto::gateway::Result::default()),
            ..SolveResponse::default()
        };
        assert_eq!(
            returned_result(none, true).result,
            Some(ResultKind::Ref(Ref::default()))
        );
    }

    #[test]
    fn errors_keep_code_message_and_details() {
        let inner = rpc::Status {
            code: 2,
            message: "boom".into(),
            details: vec![prost_types::Any {
                type_url: "type.googleapis.com/moby.buildkit.v1.errdefs.Vertex".into(),
                value: vec![1, 2],
            }],
        };
        let status =
            tonic::Status::with_details(tonic::Code::Unknown, "boom", inner.encode_to_vec().into());
        assert_eq!(rpc_status(&status), inner);
        let plain = rpc_status(&tonic::Status::not_found("gone"));
        assert_eq!(
            (plain.code, plain.message.as_str(), plain.details.len()),
            (5, "gone", 0)
        );
    }
}
