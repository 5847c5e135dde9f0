//! SourceOp: `docker-image://` (pulled into containerd snapshots), `local://` (a host
//! directory handed in by the caller), `http(s)://` (`http.rs`) and `git://` (`git.rs`).

use memobuild_proto::{attr, pb};

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
                .worker
                .pull_image(reference, &platform)
                .await
                .map_err(|e| self.error(digest, e.to_string()))?;
            return Ok(vec![Output::Fs(fs)]);
        }
        if let Some(name) = src.identifier.strip_prefix(attr::SCHEME_LOCAL) {
            let path = self.opts.locals.get(name).ok_or_else(|| {
                self.error(
                    digest,
                    format!("no local directory named `{name}` was given to the build"),
                )
            })?;
            let exclude = patterns(&src, attr::ATTR_LOCAL_EXCLUDEPATTERNS)
                .map_err(|m| self.error(digest, m))?;
            let include = local_include(path, &src).map_err(|m| self.error(digest, m))?;
            return Ok(vec![Output::Local(LocalRef {
                path: path.clone(),
                exclude,
                include,
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
    src: &pb::SourceOp,
) -> Result<Option<PatternMatcher>, String> {
    let list = |key: &str| -> Result<Option<Vec<String>>, String> {
        src.attrs
            .get(key)
            .map(|json| {
                serde_json::from_str::<Vec<String>>(json)
                    .map_err(|e| format!("attr `{key}` is not a JSON list of strings: {e}"))
            })
            .transpose()
    };
    let mut include = list(attr::ATTR_LOCAL_INCLUDEPATTERN)?.unwrap_or_default();
    if let Some(follow) = list(attr::ATTR_LOCAL_FOLLOWPATHS)?
        && let Some(targets) = crate::followpaths::follow_links(root, &follow)
            .map_err(|e| format!("resolving the follow paths of `{}`: {e}", root.display()))?
    {
        include.extend(targets);
    }
    if include.is_empty() {
        return Ok(None);
    }
    PatternMatcher::new(&include)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// A JSON list of patterns in attr `key`, compiled; `None` when absent or empty.
fn patterns(src: &pb::SourceOp, key: &str) -> Result<Option<PatternMatcher>, String> {
    let Some(json) = src.attrs.get(key) else {
        return Ok(None);
    };
    let list: Vec<String> = serde_json::from_str(json)
        .map_err(|e| format!("attr `{key}` is not a JSON list of strings: {e}"))?;
    if list.is_empty() {
        return Ok(None);
    }
    PatternMatcher::new(&list)
        .map(Some)
        .map_err(|e| e.to_string())
}
