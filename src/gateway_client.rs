//! MemoBuild's Dockerfile frontend as a gRPC client of a daemon's LLBBridge
//! (`frontend/gateway/grpcclient/client.go`): [`GatewayBridge`] implements
//! [`FrontendBridge`] with LLBBridge calls, so [`crate::frontend_request::run`] runs the same
//! way inside `memobuild daemon` and against any BuildKit.
//!
//! Two transports: the process's stdin/stdout as one HTTP/2 connection, as buildkitd runs a
//! `# syntax=` frontend image (`memobuild frontend`, options from `BUILDKIT_FRONTEND_OPT_n`);
//! or a daemon connection whose calls carry `buildkit-controlapi-buildid`, as a client-side
//! build function's do (`memobuild build --addr … --client-frontend`).
//!
//! Reads go as BuildKit's frontend makes them: a local source of only the wanted files is
//! solved and `ReadFile` reads them; base images are looked up with `ResolveImageConfig`
//! (the daemon shows `[internal] load metadata for …`); lint findings go through `Warn`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use memobuild_frontend as frontend;
use memobuild_proto::gateway::llb_bridge_client::LlbBridgeClient;
use memobuild_proto::gateway::result::Result as ResultKind;
use memobuild_proto::gateway::{
    InputsRequest, ReadFileRequest, Ref, ResolveImageConfigRequest, SolveRequest,
};
use memobuild_proto::pb;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::client::gateway::{BUILD_ID, Caps};
use crate::frontend_request::{
    FrontendBridge, FrontendResult, LocalFiles, RemoteContext, warn_request,
};

/// The gateway cap that lets a frontend ask for its inputs.
const CAP_FRONTEND_INPUTS: &str = "frontend.inputs";
/// The gateway cap for lint warnings.
const CAP_WARNINGS: &str = "gateway.warnings";

/// A frontend request's side on a daemon reached over LLBBridge.
pub struct GatewayBridge {
    client: LlbBridgeClient<Channel>,
    /// The build every call belongs to, for a client-side frontend; `None` over stdio (the
    /// connection is the build's).
    build_ref: Option<String>,
    session_id: Option<String>,
    caps: Caps,
    /// The daemon's platform (its first worker's first), when it said.
    platform: Option<frontend::Platform>,
    /// The vertex that read the Dockerfile (lint warnings are shown under it).
    definition_vertex: Mutex<String>,
}

impl GatewayBridge {
    /// A bridge over `client` whose daemon answered Ping with `caps`.
    pub fn new(
        client: LlbBridgeClient<Channel>,
        build_ref: Option<String>,
        session_id: Option<String>,
        caps: Caps,
    ) -> Self {
        GatewayBridge {
            client,
            build_ref,
            session_id,
            caps,
            platform: None,
            definition_vertex: Mutex::new(String::new()),
        }
    }

    /// The bridge building for `platform` when a request names none.
    pub fn with_platform(mut self, platform: Option<frontend::Platform>) -> Self {
        self.platform = platform;
        self
    }

    /// `message` as a request of this build.
    fn request<T>(&self, message: T) -> Result<Request<T>, Status> {
        tagged(message, self.build_ref.as_deref())
    }

    /// Solves `def` and returns the result's reference.
    async fn solve_ref(&self, def: &pb::Definition) -> Result<Ref, Status> {
        let response = self
            .client
            .clone()
            .solve(self.request(SolveRequest {
                definition: Some(def.clone()),
                allow_result_return: true,
                ..Default::default()
            })?)
            .await?
            .into_inner();
        Ok(match response.result.and_then(|r| r.result) {
            Some(ResultKind::Ref(r)) => r,
            Some(ResultKind::RefDeprecated(id)) => Ref { id, def: None },
            Some(_) => {
                return Err(Status::internal(
                    "the daemon answered a single-platform solve with several results",
                ));
            }
            None => Ref {
                id: response.r#ref,
                def: None,
            },
        })
    }

    /// Reads `files` of the result `id`; `None` for a file it does not hold.
    async fn read_files(&self, id: &str, files: &[String]) -> Result<Vec<Option<Vec<u8>>>, Status> {
        let mut out = Vec::with_capacity(files.len());
        for f in files {
            let read = self
                .client
                .clone()
                .read_file(self.request(ReadFileRequest {
                    r#ref: id.to_owned(),
                    file_path: f.clone(),
                    ..Default::default()
                })?)
                .await;
            out.push(match read {
                Ok(r) => Some(r.into_inner().data),
                Err(s) if s.code() == Code::NotFound || is_not_exist(&s) => None,
                Err(s) => return Err(s),
            });
        }
        Ok(out)
    }
}

/// Whether a daemon's error says that a file does not exist (buildkitd answers a missing
/// file with `Unknown` and Go's `no such file or directory`).
fn is_not_exist(s: &Status) -> bool {
    s.message().contains("no such file or directory")
}

/// `message` as a request carrying the build id, when there is one.
fn tagged<T>(message: T, build_ref: Option<&str>) -> Result<Request<T>, Status> {
    let mut request = Request::new(message);
    if let Some(r) = build_ref {
        request.metadata_mut().insert(
            BUILD_ID,
            r.parse().map_err(|_| {
                Status::invalid_argument(format!("build ref `{r}` is not valid metadata"))
            })?,
        );
    }
    Ok(request)
}

#[tonic::async_trait]
impl FrontendBridge for GatewayBridge {
    type Solved = Ref;

    fn session_id(&self) -> Option<String> {
        self.session_id.clone()
    }

    fn default_platform(&self) -> frontend::Platform {
        self.platform
            .clone()
            .unwrap_or_else(frontend::Platform::host)
    }

    async fn inputs(&self) -> Result<BTreeMap<String, pb::Definition>, Status> {
        if self.caps.supports(CAP_FRONTEND_INPUTS).is_err() {
            return Ok(BTreeMap::new());
        }
        Ok(self
            .client
            .clone()
            .inputs(self.request(InputsRequest {})?)
            .await?
            .into_inner()
            .definitions)
    }

    async fn read_local(&self, at: LocalFiles<'_>) -> Result<Vec<Option<Vec<u8>>>, Status> {
        let def = frontend::local_files_definition(
            at.name,
            at.session,
            at.files,
            at.shared_key_hint,
            at.step_name,
        );
        let reference = match self.solve_ref(&def).await {
            Ok(r) => r,
            Err(e) if at.optional => {
                tracing::debug!("no {:?}: {}", at.files, e.message());
                return Ok(vec![None; at.files.len()]);
            }
            Err(e) => return Err(e),
        };
        if at.step_name.starts_with("[internal] load build definition") {
            // The vertex is the local op: the definition's last op is the terminal.
            if let Some(op) = def.def.first()
                && let Ok(mut v) = self.definition_vertex.lock()
            {
                *v = memobuild_proto::digest_of(op);
            }
        }
        self.read_files(&reference.id, at.files).await
    }

    async fn read_definition(
        &self,
        def: &pb::Definition,
        files: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, Status> {
        let reference = self.solve_ref(def).await?;
        self.read_files(&reference.id, files).await
    }

    async fn fetch_remote_context(&self, url: &str) -> Result<RemoteContext, Status> {
        Err(Status::unimplemented(format!(
            "a remote build context (`{url}`) is not supported by MemoBuild's frontend over the gateway yet; send the context as the local directory `context`"
        )))
    }

    async fn lower(
        &self,
        dockerfile: &str,
        opts: frontend::BuildOptions,
    ) -> anyhow::Result<frontend::Lowered> {
        let resolver = GatewayResolver::new(self, opts.image_resolve_mode);
        crate::pipeline::lower_with(resolver, dockerfile, opts).await
    }

    async fn subrequest(
        &self,
        id: &str,
        dockerfile: &str,
        opts: frontend::BuildOptions,
    ) -> anyhow::Result<Option<BTreeMap<String, Vec<u8>>>> {
        let resolver = GatewayResolver::new(self, opts.image_resolve_mode);
        crate::pipeline::subrequest_with(resolver, id, dockerfile, opts).await
    }

    async fn warn(&self, found: &[frontend::Warning], filename: &str, dockerfile: &str) {
        if found.is_empty() || self.caps.supports(CAP_WARNINGS).is_err() {
            return;
        }
        let vertex = self
            .definition_vertex
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        for w in found {
            let request = match self.request(warn_request(&vertex, w, filename, dockerfile)) {
                Ok(r) => r,
                Err(_) => return,
            };
            if let Err(e) = self.client.clone().warn(request).await {
                tracing::warn!("the daemon refused a lint warning: {}", e.message());
            }
        }
    }

    async fn solve(
        &self,
        def: &pb::Definition,
        _options: &frontend::BuildOptions,
    ) -> Result<Ref, Status> {
        let mut r = self.solve_ref(def).await?;
        // Clients may turn the result back into LLB (buildx's `target:` contexts).
        if r.def.is_none() {
            r.def = Some(def.clone());
        }
        Ok(r)
    }

    fn scratch(&self) -> Ref {
        Ref::default()
    }

    async fn forward(
        &self,
        opts: BTreeMap<String, String>,
        inputs: &BTreeMap<String, pb::Definition>,
    ) -> Result<FrontendResult<Ref>, Status> {
        let response = self
            .client
            .clone()
            .solve(self.request(SolveRequest {
                frontend: "gateway.v0".into(),
                frontend_opt: opts,
                frontend_inputs: inputs.clone(),
                allow_result_return: true,
                ..Default::default()
            })?)
            .await?
            .into_inner();
        let result = response.result.unwrap_or_default();
        let solved = match result.result {
            Some(ResultKind::Ref(r)) => r,
            Some(ResultKind::RefDeprecated(id)) => Ref { id, def: None },
            Some(_) => {
                return Err(Status::unimplemented(
                    "the frontend image returned several results (multi-platform)",
                ));
            }
            None => Ref {
                id: response.r#ref,
                def: None,
            },
        };
        Ok(FrontendResult {
            solved,
            metadata: result.metadata,
        })
    }

    async fn notice(&self, message: &str) {
        tracing::info!("{message}");
    }
}

/// The frontend options a BuildKit daemon gives a frontend process: `BUILDKIT_FRONTEND_OPT_n`
/// = `KEY=VALUE`, from n = 0 up.
pub fn frontend_opts_from_env(var: impl Fn(&str) -> Option<String>) -> BTreeMap<String, String> {
    let mut opts = BTreeMap::new();
    for n in 0.. {
        let Some(v) = var(&format!("BUILDKIT_FRONTEND_OPT_{n}")) else {
            break;
        };
        let (k, v) = v.split_once('=').unwrap_or((v.as_str(), ""));
        opts.insert(k.to_owned(), v.to_owned());
    }
    opts
}

/// `memobuild frontend`: the frontend process BuildKit starts for a `# syntax=` image. Its
/// stdin and stdout are one HTTP/2 connection to the daemon's LLBBridge; nothing else may be
/// written to stdout (logs go to stderr, which the daemon logs).
pub async fn serve_stdio() -> anyhow::Result<()> {
    use anyhow::Context as _;
    let opts = frontend_opts_from_env(|k| std::env::var(k).ok());
    let session = std::env::var("BUILDKIT_SESSION_ID")
        .ok()
        .filter(|s| !s.is_empty());
    let io = std::sync::Mutex::new(Some(tokio::io::join(
        tokio::io::stdin(),
        tokio::io::stdout(),
    )));
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let io = io.lock().ok().and_then(|mut io| io.take());
            async move {
                io.map(hyper_util::rt::TokioIo::new).ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::BrokenPipe,
                        "the daemon's connection (stdin/stdout) is gone",
                    )
                })
            }
        }))
        .await
        .context("connecting to the daemon over stdin/stdout")?;
    let mut client = crate::client::connect::gateway(&channel);
    let pong = client
        .ping(memobuild_proto::gateway::PingRequest {})
        .await
        .map_err(crate::client::remote)
        .context("pinging the daemon's LLBBridge")?
        .into_inner();
    // The workers from the environment, as BuildKit passes them, else from Ping.
    let platform = std::env::var("BUILDKIT_WORKERS")
        .ok()
        .and_then(|w| worker_platform_json(&w))
        .or_else(|| worker_platform(&pong.workers));
    let bridge = GatewayBridge::new(
        client.clone(),
        None,
        session,
        Caps::new(pong.frontend_api_caps),
    )
    .with_platform(platform);
    let ran = crate::frontend_request::run(&bridge, &opts).await;
    client
        .r#return(return_request(&ran))
        .await
        .map_err(crate::client::remote)
        .context("returning the result to the daemon")?;
    ran.map(|_| ()).map_err(crate::client::remote)
}

/// The first platform of the first worker in `BUILDKIT_WORKERS` (a JSON list of
/// `{"id", "labels", "platforms": [{"os", "architecture", "variant"}]}`).
pub fn worker_platform_json(workers: &str) -> Option<frontend::Platform> {
    let v: serde_json::Value = serde_json::from_str(workers).ok()?;
    let p = v.get(0)?.get("platforms")?.get(0)?;
    let (os, arch) = (p.get("os")?.as_str()?, p.get("architecture")?.as_str()?);
    let variant = p
        .get("variant")
        .and_then(|v| v.as_str())
        .filter(|v| !v.is_empty());
    (!os.is_empty() && !arch.is_empty()).then(|| frontend::Platform::new(os, arch, variant))
}

/// The first platform of the first worker a daemon listed in `Pong`.
pub fn worker_platform(
    workers: &[memobuild_proto::worker_types::WorkerRecord],
) -> Option<frontend::Platform> {
    let p = workers.first()?.platforms.first()?;
    (!p.os.is_empty() && !p.architecture.is_empty()).then(|| {
        frontend::Platform::new(
            &p.os,
            &p.architecture,
            Some(p.variant.as_str()).filter(|v| !v.is_empty()),
        )
    })
}

/// The `Return` of a frontend request's outcome: its reference and metadata, or its error.
pub fn return_request(
    outcome: &Result<FrontendResult<Ref>, Status>,
) -> memobuild_proto::gateway::ReturnRequest {
    match outcome {
        Ok(r) => memobuild_proto::gateway::ReturnRequest {
            result: Some(memobuild_proto::gateway::Result {
                result: Some(ResultKind::Ref(r.solved.clone())),
                metadata: r.metadata.clone(),
                attestations: BTreeMap::new(),
            }),
            error: None,
        },
        Err(status) => memobuild_proto::gateway::ReturnRequest {
            result: None,
            error: Some(crate::client::gateway::rpc_status(status)),
        },
    }
}

/// Base-image look-ups over `ResolveImageConfig`, blocking on the runtime (lowering runs on a
/// blocking thread).
struct GatewayResolver {
    client: LlbBridgeClient<Channel>,
    build_ref: Option<String>,
    mode: &'static str,
    handle: tokio::runtime::Handle,
}

impl GatewayResolver {
    fn new(bridge: &GatewayBridge, mode: frontend::ImageResolveMode) -> Self {
        GatewayResolver {
            client: bridge.client.clone(),
            build_ref: bridge.build_ref.clone(),
            mode: match mode {
                frontend::ImageResolveMode::Default => "default",
                frontend::ImageResolveMode::Pull => "pull",
                frontend::ImageResolveMode::Local => "local",
            },
            handle: tokio::runtime::Handle::current(),
        }
    }
}

impl frontend::ImageResolver for GatewayResolver {
    fn resolve_image_config(
        &self,
        reference: &str,
        platform: &frontend::Platform,
    ) -> Result<frontend::ResolvedImage, String> {
        let request = ResolveImageConfigRequest {
            r#ref: reference.to_owned(),
            platform: Some(crate::pipeline::pb_platform(platform)),
            resolve_mode: self.mode.to_owned(),
            log_name: format!("[internal] load metadata for {reference}"),
            ..Default::default()
        };
        let request =
            tagged(request, self.build_ref.as_deref()).map_err(|e| e.message().to_owned())?;
        let mut client = self.client.clone();
        let response = self
            .handle
            .block_on(client.resolve_image_config(request))
            .map_err(|e| e.message().to_owned())?
            .into_inner();
        Ok(frontend::ResolvedImage {
            digest: response.digest,
            config: response.config,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_name_the_default_platform() {
        let p = worker_platform_json(
            r#"[{"id":"w1","labels":{},"platforms":[{"os":"linux","architecture":"arm64","variant":"v8"},{"os":"linux","architecture":"amd64"}]}]"#,
        );
        assert_eq!(
            p,
            Some(frontend::Platform::new("linux", "arm64", Some("v8")))
        );
        assert_eq!(worker_platform_json("[]"), None);
        assert_eq!(worker_platform_json("not json"), None);
    }

    #[test]
    fn frontend_opts_are_read_in_order_until_the_first_gap() {
        let env: BTreeMap<String, String> = [
            ("BUILDKIT_FRONTEND_OPT_0", "filename=Dockerfile.app"),
            ("BUILDKIT_FRONTEND_OPT_1", "build-arg:A=x=y"),
            ("BUILDKIT_FRONTEND_OPT_2", "no-cache"),
            ("BUILDKIT_FRONTEND_OPT_4", "target=skipped"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let opts = frontend_opts_from_env(|k| env.get(k).cloned());
        assert_eq!(
            opts,
            BTreeMap::from([
                ("filename".to_owned(), "Dockerfile.app".to_owned()),
                ("build-arg:A".to_owned(), "x=y".to_owned()),
                ("no-cache".to_owned(), String::new()),
            ])
        );
    }
}
