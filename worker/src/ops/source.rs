//! SourceOp: `docker-image://` (pulled into containerd snapshots), `local://` (a host
//! directory handed in by the caller), `http(s)://` (`http.rs`) and `git://` (`git.rs`).

use memobuild_proto::{attr, pb};

use crate::caller::LocalRequest;
use crate::patterns::PatternMatcher;
use crate::solver::{LocalRef, Output, Solve, SolveError};

impl Solve {
    pub(crate) async fn source(
        &self,
        digest: &str,
        platform: Option<pb::Platform>,
        src: pb::SourceOp,
    ) -> Result<Vec<Output>, SolveError> {
        if let Some(reference) = src.identifier.strip_prefix(attr::SCHEME_DOCKER_IMAGE) {
            let platform = platform.unwrap_or_else(|| self.opts.platform.clone());
            let fs = self
                .build
                .pull_image(reference, &platform, Some((&self.progress, digest)))
                .await
                .map_err(|e| self.error(digest, e.to_string()))?;
            return Ok(vec![Output::Fs(fs)]);
        }
        if let Some(name) = src.identifier.strip_prefix(attr::SCHEME_LOCAL) {
            let list = |key| json_list(&src, key).map_err(|m| self.error(digest, m));
            let (include, exclude, follow) = (
                list(attr::ATTR_LOCAL_INCLUDEPATTERN)?,
                list(attr::ATTR_LOCAL_EXCLUDEPATTERNS)?,
                list(attr::ATTR_LOCAL_FOLLOWPATHS)?,
            );
            let dir = self
                .build
                .caller
                .locals
                .local(LocalRequest {
                    name,
                    session: src.attrs.get(attr::ATTR_LOCAL_SESSION).map(String::as_str),
                    shared_key_hint: src
                        .attrs
                        .get(attr::ATTR_LOCAL_SHAREDKEYHINT)
                        .map(String::as_str),
                    include_patterns: &include,
                    exclude_patterns: &exclude,
                    follow_paths: &follow,
                    vertex: digest,
                    progress: &self.progress,
                })
                .await
                .map_err(|e| self.error(digest, format!("local `{name}`: {e}")))?;
            let exclude = compile(&exclude).map_err(|m| self.error(digest, m))?;
            let include =
                local_include(&dir.path, include, &follow).map_err(|m| self.error(digest, m))?;
            return Ok(vec![Output::Local(LocalRef {
                path: dir.path,
                exclude,
                include,
                keeps_owners: dir.keeps_owners,
            })]);
        }
        if crate::ops::http::is_http(&src.identifier) {
            return self.http_source(digest, &src).await;
        }
        if src.identifier.starts_with(attr::SCHEME_GIT) {
            return self.git_source(digest, &src).await;
        }
        Err(self.error(
            digest,
            format!("source `{}` is not supported yet", src.identifier),
        ))
    }
}

/// What a local source shows, as BuildKit's file transfer selects it: its include patterns
/// plus its follow paths with the symbolic links on their way resolved
/// ([`crate::followpaths`]); `None` when nothing is filtered.
fn local_include(
    root: &std::path::Path,
    mut include: Vec<String>,
    follow: &[String],
) -> Result<Option<PatternMatcher>, String> {
    if !follow.is_empty()
        && let Some(targets) = crate::followpaths::follow_links(root, follow)
            .map_err(|e| format!("resolving the follow paths of `{}`: {e}", root.display()))?
    {
        include.extend(targets);
    }
    compile(&include)
}

/// The JSON list of strings in attr `key` (empty when absent).
fn json_list(src: &pb::SourceOp, key: &str) -> Result<Vec<String>, String> {
    let Some(json) = src.attrs.get(key) else {
        return Ok(Vec::new());
    };
    serde_json::from_str(json)
        .map_err(|e| format!("attr `{key}` is not a JSON list of strings: {e}"))
}

/// Patterns compiled; `None` when there are none.
fn compile(list: &[String]) -> Result<Option<PatternMatcher>, String> {
    if list.is_empty() {
        return Ok(None);
    }
    PatternMatcher::new(list)
        .map(Some)
        .map_err(|e| e.to_string())
}
