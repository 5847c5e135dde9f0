//! A frontend request: BuildKit's `dockerfile.v0` frontend attributes turned into a solved
//! result with the image config beside it, written once over [`FrontendBridge`], the few
//! things a frontend asks of the daemon it runs on. Two transports implement it: the daemon's
//! own, in process (`daemon::frontend`), and the LLBBridge gRPC client of `memobuild frontend`
//! (`gateway_client`), which runs under any BuildKit as a `# syntax=` image.
//!
//! As BuildKit's frontend does: the Dockerfile and its `<file>.dockerignore` are read from the
//! client's `dockerfile` local (only those files are transferred) or from the `dockerfile`
//! frontend input; the context's `.dockerignore` from the `context` local (only that file) or
//! input; the `.dockerignore` of each `local:` named context likewise; then a subrequest is
//! answered, or the Dockerfile is lowered with those patterns and the session id in its local
//! sources and the Definition solved. The context itself is transferred when the solve reaches
//! its local source.

use std::collections::BTreeMap;

use memobuild_frontend as frontend;
use memobuild_proto::gateway::WarnRequest;
use memobuild_proto::pb;
use tonic::Status;

/// The image config a frontend returns beside its result (BuildKit's
/// `exptypes.ExporterImageConfigKey`).
pub const META_IMAGE_CONFIG: &str = "containerimage.config";

/// The platforms of a result, for the exporters (BuildKit's `exptypes.ExporterPlatformsKey`).
pub const META_PLATFORMS: &str = "refs.platforms";

/// `refs.platforms` of a single-platform result: `{"Platforms":[{"ID":…,"Platform":{…}}]}`.
pub fn platforms_metadata(p: &frontend::Platform) -> Vec<u8> {
    let mut platform = serde_json::Map::new();
    platform.insert("architecture".into(), p.architecture.clone().into());
    platform.insert("os".into(), p.os.clone().into());
    if let Some(v) = &p.variant {
        platform.insert("variant".into(), v.clone().into());
    }
    serde_json::json!({"Platforms": [{"ID": p.to_string(), "Platform": platform}]})
        .to_string()
        .into_bytes()
}

/// The frontend attribute naming a subrequest (`dockerui/requests.go`).
pub const REQUEST_ID: &str = "requestid";

/// The frontend inputs that stand for the Dockerfile's directory and the main context, as
/// BuildKit's `dockerui` names them.
const INPUT_DOCKERFILE: &str = "dockerfile";
const INPUT_CONTEXT: &str = "context";

/// Files to read from a client directory: only they are transferred.
pub struct LocalFiles<'a> {
    /// The local's name (FileSync `dir-name`).
    pub name: &'a str,
    /// The session serving it.
    pub session: Option<&'a str>,
    /// The shared-key hint of the daemon's copy.
    pub shared_key_hint: &'a str,
    /// The paths to read, relative to the directory.
    pub files: &'a [String],
    /// How the read shows in the progress (`[internal] load build definition from …`).
    pub step_name: &'a str,
    /// Whether a failure to reach the directory reads as "no such files" (a client that sends
    /// no context has no `.dockerignore` either) instead of an error.
    pub optional: bool,
}

/// A fetched remote main context (a git URL, an http download or buildx's stdin upload).
pub struct RemoteContext {
    /// The Dockerfile's name when the context is a Dockerfile itself.
    pub dockerfile_name: Option<String>,
    /// Whether the context is a repository's root (its `.git` is excluded).
    pub git_root: bool,
}

/// What the Dockerfile frontend asks of the daemon it runs on.
#[tonic::async_trait]
pub trait FrontendBridge: Send + Sync {
    /// A solved result the caller can hand back.
    type Solved: Send;

    /// The session the request came with (`local.session` of local sources).
    fn session_id(&self) -> Option<String>;

    /// The platform to build for when the request names none: the daemon's worker's.
    fn default_platform(&self) -> frontend::Platform {
        frontend::Platform::host()
    }

    /// The request's frontend inputs (`SolveRequest.FrontendInputs`).
    async fn inputs(&self) -> Result<BTreeMap<String, pb::Definition>, Status>;

    /// Reads `at.files` from a client directory; `None` for a file it does not hold.
    async fn read_local(&self, at: LocalFiles<'_>) -> Result<Vec<Option<Vec<u8>>>, Status>;

    /// Solves `def` (a frontend input) and reads `files` from its result.
    async fn read_definition(
        &self,
        def: &pb::Definition,
        files: &[String],
    ) -> Result<Vec<Option<Vec<u8>>>, Status>;

    /// Fetches a main context given as a URL and serves it as the locals `context` and
    /// `dockerfile`.
    async fn fetch_remote_context(&self, url: &str) -> Result<RemoteContext, Status>;

    /// Lowers `dockerfile` with `opts`, resolving base images on the daemon.
    async fn lower(
        &self,
        dockerfile: &str,
        opts: frontend::BuildOptions,
    ) -> anyhow::Result<frontend::Lowered>;

    /// Answers subrequest `id` (`None` for one the frontend does not know).
    async fn subrequest(
        &self,
        id: &str,
        dockerfile: &str,
        opts: frontend::BuildOptions,
    ) -> anyhow::Result<Option<BTreeMap<String, Vec<u8>>>>;

    /// Reports lint findings of `filename` (`dockerfile` is its text).
    async fn warn(&self, found: &[frontend::Warning], filename: &str, dockerfile: &str);

    /// Solves the final definition; an empty one is scratch. `options` are the request's.
    async fn solve(
        &self,
        def: &pb::Definition,
        options: &frontend::BuildOptions,
    ) -> Result<Self::Solved, Status>;

    /// The result of a request that has no filesystem (a subrequest, an empty target).
    fn scratch(&self) -> Self::Solved;

    /// Runs the frontend image `opts["source"]` (`gateway.v0`) with `opts` and `inputs`, for a
    /// Dockerfile whose `# syntax=` names another frontend.
    async fn forward(
        &self,
        opts: BTreeMap<String, String>,
        inputs: &BTreeMap<String, pb::Definition>,
    ) -> Result<FrontendResult<Self::Solved>, Status>;

    /// Whether `# syntax=docker/dockerfile:…` (the official frontend) runs that image; when
    /// not, MemoBuild's frontend serves those Dockerfiles itself, without a pull.
    fn runs_official_frontend_images(&self) -> bool {
        false
    }

    /// Says something about the request in the build's progress.
    async fn notice(&self, message: &str);
}

/// The build arg that names a frontend image instead of a `# syntax=` line.
const SYNTAX_ARG: &str = "build-arg:BUILDKIT_SYNTAX";

/// Whether `reference` is Docker's official Dockerfile frontend (`docker/dockerfile`, or its
/// `-upstream` builds), which MemoBuild's frontend stands in for.
pub fn is_official_dockerfile_frontend(reference: &str) -> bool {
    frontend::normalize_image_ref(reference).is_ok_and(|r| {
        let repo = r.split(['@']).next().unwrap_or_default();
        let repo = match repo.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => name,
            _ => repo,
        };
        matches!(
            repo,
            "docker.io/docker/dockerfile" | "docker.io/docker/dockerfile-upstream"
        )
    })
}

/// A lint finding as BuildKit's frontend reports it through `Warn` (`linter.LintFormatShort`:
/// `RULE: MESSAGE (line N)`; the detail is the rule's description), about the Dockerfile
/// `filename` with text `dockerfile`, under the vertex `digest`.
pub fn warn_request(
    digest: &str,
    w: &frontend::Warning,
    filename: &str,
    dockerfile: &str,
) -> WarnRequest {
    let short = match w.location {
        Some(l) => format!("{}: {} (line {})", w.rule, w.message, l.line),
        None => format!("{}: {}", w.rule, w.message),
    };
    let line = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let ranges = w
        .location
        .map(|l| {
            vec![pb::Range {
                start: Some(pb::Position {
                    line: line(l.line),
                    character: 0,
                }),
                end: Some(pb::Position {
                    line: line(l.end_line.max(l.line)),
                    character: 0,
                }),
            }]
        })
        .unwrap_or_default();
    WarnRequest {
        digest: digest.to_owned(),
        level: 1,
        short: short.into_bytes(),
        detail: vec![w.description().as_bytes().to_vec()],
        url: w.url(),
        info: Some(pb::SourceInfo {
            filename: filename.to_owned(),
            data: dockerfile.as_bytes().to_vec(),
            definition: None,
            language: "Dockerfile".into(),
        }),
        ranges,
    }
}

/// What a frontend request produced: the result and its metadata.
pub struct FrontendResult<S> {
    /// The solved result.
    pub solved: S,
    /// `containerimage.config`, or a subrequest's answer.
    pub metadata: BTreeMap<String, Vec<u8>>,
}

/// Runs the Dockerfile frontend for the request with attributes `attrs` on `bridge`.
pub async fn run<B: FrontendBridge>(
    bridge: &B,
    attrs: &BTreeMap<String, String>,
) -> Result<FrontendResult<B::Solved>, Status> {
    let parsed = frontend::BuildOptions::from_frontend_attrs(attrs, bridge.default_platform())
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut options = parsed.options;
    options.inputs = bridge.inputs().await?;
    let dockerfile_local = attrs
        .get("dockerfilekey")
        .filter(|k| !k.is_empty())
        .map_or("dockerfile", String::as_str);
    options.session_id = bridge.session_id();

    // A context given as a URL is fetched and then read as the client's `context` and
    // `dockerfile` directories would be.
    let mut git_root = false;
    if let Some(url) = options.context_url.clone() {
        let fetched = bridge.fetch_remote_context(&url).await?;
        if let Some(n) = fetched.dockerfile_name {
            options.dockerfile_name = n;
        }
        git_root = fetched.git_root;
    }
    let filename = options.dockerfile_name.clone();

    // [internal] load build definition from Dockerfile. A `dockerfile` frontend input (buildx's
    // remote bake definitions) holds it unless `dockerfilekey` names a local, as in `dockerui`.
    let names = vec![filename.clone(), format!("{filename}.dockerignore")];
    let dockerfile_input = options
        .inputs
        .get(INPUT_DOCKERFILE)
        .filter(|_| !attrs.contains_key("dockerfilekey"));
    let mut files = match dockerfile_input {
        Some(def) => bridge.read_definition(def, &names).await?,
        None => {
            bridge
                .read_local(LocalFiles {
                    name: dockerfile_local,
                    session: options.session_for(dockerfile_local),
                    shared_key_hint: dockerfile_local,
                    files: &names,
                    step_name: &format!("[internal] load build definition from {filename}"),
                    optional: false,
                })
                .await?
        }
    };
    let specific_ignore = files.pop().flatten();
    let dockerfile = files.pop().flatten().ok_or_else(|| {
        Status::not_found(format!(
            "failed to read dockerfile: open {filename}: no such file or directory"
        ))
    })?;
    let dockerfile = String::from_utf8(dockerfile).map_err(|_| {
        Status::invalid_argument(format!("the Dockerfile `{filename}` is not UTF-8 text"))
    })?;

    // `# syntax=REF` (or the BUILDKIT_SYNTAX build arg) hands the request to the frontend
    // image REF, unless this request was itself forwarded (`cmdline` set), as in BuildKit.
    if !attrs.contains_key("cmdline") {
        let syntax = match attrs.get(SYNTAX_ARG).filter(|v| !v.trim().is_empty()) {
            Some(v) => v
                .split_whitespace()
                .next()
                .map(|r| (r.to_owned(), v.trim().to_owned())),
            None => frontend::detect_syntax(&dockerfile),
        };
        if let Some((reference, cmdline)) = syntax {
            if is_official_dockerfile_frontend(&reference)
                && !bridge.runs_official_frontend_images()
            {
                bridge
                    .notice(&format!(
                        "[memobuild] # syntax={reference}: served by MemoBuild's Dockerfile frontend (no pull)"
                    ))
                    .await;
            } else {
                let mut opts = attrs.clone();
                opts.insert("source".into(), reference);
                opts.insert("cmdline".into(), cmdline);
                return bridge.forward(opts, &options.inputs).await;
            }
        }
    }

    // A subrequest (buildx's `--call`, `--check`) reads the Dockerfile only: the context is
    // not asked for (an outline's client may not even offer it), except its `.dockerignore`
    // for a lint (`CopyIgnoredFile`).
    let request_id = attrs
        .get(REQUEST_ID)
        .filter(|r| !r.is_empty())
        .map(String::as_str);
    // An outline converts the target as a build would (BuildKit's `Dockerfile2Outline`): it
    // reads the `.dockerignore`, resolves the base images and reports the lint findings.
    let converts =
        |id: &str| id == frontend::subrequests::LINT || id == frontend::subrequests::OUTLINE;
    if let Some(id) = request_id
        && !converts(id)
    {
        return subrequest(bridge, id, &dockerfile, options).await;
    }

    // [internal] load .dockerignore
    let ignore = match specific_ignore {
        Some(i) => i,
        None => {
            let names = vec![".dockerignore".to_string()];
            let read = match options.inputs.get(INPUT_CONTEXT) {
                Some(def) => bridge.read_definition(def, &names).await?,
                None => {
                    bridge
                        .read_local(LocalFiles {
                            name: &options.context_name,
                            session: options.session_for(&options.context_name),
                            shared_key_hint: &format!("{}-.dockerignore", options.context_name),
                            files: &names,
                            step_name: "[internal] load .dockerignore",
                            optional: true,
                        })
                        .await?
                }
            };
            read.into_iter().flatten().next().unwrap_or_default()
        }
    };
    options.dockerignore = crate::build::parse_dockerignore(&String::from_utf8_lossy(&ignore));
    // A repository's `.git` is no part of its context (BuildKit drops it too).
    if git_root {
        options.dockerignore.push("/.git".to_owned());
    }
    if let Some(id) = request_id {
        if id == frontend::subrequests::OUTLINE
            && let Ok(lowered) = bridge.lower(&dockerfile, options.clone()).await
        {
            // A Dockerfile that does not convert is the outline's own error to report.
            bridge.warn(&lowered.warnings, &filename, &dockerfile).await;
        }
        return subrequest(bridge, id, &dockerfile, options).await;
    }
    named_local_excludes(bridge, &mut options).await?;

    let lowered = bridge
        .lower(&dockerfile, options.clone())
        .await
        .map_err(|e| {
            // `# check=error=true`: the findings are shown as warnings (with their lines), as
            // BuildKit shows them, beside the error naming their rules.
            if let Some(fe) = e.downcast_ref::<frontend::FrontendError>()
                && let frontend::ErrorKind::LintViolation { found, .. } = fe.kind.as_ref()
            {
                return (Some(found.clone()), e);
            }
            (None, e)
        });
    let lowered = match lowered {
        Ok(l) => l,
        Err((found, e)) => {
            if let Some(found) = found {
                bridge.warn(&found, &filename, &dockerfile).await;
            }
            return Err(crate::daemon::convert::frontend_error(
                &e,
                dockerfile.as_bytes(),
            ));
        }
    };
    bridge.warn(&lowered.warnings, &filename, &dockerfile).await;
    let mut metadata = BTreeMap::new();
    metadata.insert(META_IMAGE_CONFIG.to_string(), lowered.image_config.clone());
    metadata.insert(
        META_PLATFORMS.to_string(),
        platforms_metadata(&options.platform),
    );
    let solved = if lowered.definition.def.is_empty() {
        bridge.scratch()
    } else {
        bridge.solve(&lowered.definition, &options).await?
    };
    Ok(FrontendResult { solved, metadata })
}

/// Answers subrequest `id`: a result without a filesystem whose metadata is the answer.
async fn subrequest<B: FrontendBridge>(
    bridge: &B,
    id: &str,
    dockerfile: &str,
    options: frontend::BuildOptions,
) -> Result<FrontendResult<B::Solved>, Status> {
    let answer = bridge
        .subrequest(id, dockerfile, options)
        .await
        .map_err(|e| crate::daemon::convert::frontend_error(&e, dockerfile.as_bytes()))?
        .ok_or_else(|| Status::invalid_argument(format!("unsupported request {id}")))?;
    Ok(FrontendResult {
        solved: bridge.scratch(),
        metadata: answer,
    })
}

/// Reads the `.dockerignore` of each `local:` named context from its directory (only that
/// file is transferred, as BuildKit's `[context NAME] load .dockerignore`), for the frontend
/// to exclude those paths from the context's transfer.
async fn named_local_excludes<B: FrontendBridge>(
    bridge: &B,
    options: &mut frontend::BuildOptions,
) -> Result<(), Status> {
    let locals: Vec<(String, String)> = options
        .named_contexts
        .iter()
        .filter_map(|(key, nc)| match nc {
            frontend::NamedContext::Local { name, .. } => Some((key.clone(), name.clone())),
            _ => None,
        })
        .collect();
    for (key, name) in locals {
        let read = bridge
            .read_local(LocalFiles {
                name: &name,
                session: options.session_for(&name),
                shared_key_hint: &format!("context:{key}-.dockerignore"),
                files: &[".dockerignore".to_string()],
                step_name: &format!("[context {key}] load .dockerignore"),
                optional: false,
            })
            .await?;
        let ignore = read.into_iter().flatten().next().unwrap_or_default();
        let patterns = crate::build::parse_dockerignore(&String::from_utf8_lossy(&ignore));
        if let Some(frontend::NamedContext::Local { excludes, .. }) =
            options.named_contexts.get_mut(&key)
        {
            *excludes = patterns;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_official_frontend_is_recognised_by_its_repository() {
        for r in [
            "docker/dockerfile:1",
            "docker/dockerfile",
            "docker.io/docker/dockerfile:1.7-labs",
            "docker/dockerfile-upstream:master",
            "docker/dockerfile@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(super::is_official_dockerfile_frontend(r), "{r}");
        }
        for r in [
            "127.0.0.1:5000/memobuild/dockerfile:latest",
            "example.com/docker/dockerfile:1",
            "tonistiigi/dockerfile",
        ] {
            assert!(!super::is_official_dockerfile_frontend(r), "{r}");
        }
    }
}
