//! Which vertices are cached, and under which MemoBuild key.

use std::collections::BTreeMap;

use memobuild_proto::{attr, pb};

use crate::cache::key::{KeyBuilder, fs_identity, op_components};
use crate::fingerprint::{self, CopySelection};
use crate::patterns::PatternMatcher;
use crate::solver::{Output, Solve, SolveError};

/// Above this many files a copy's key keeps only their combined hash, not one component each
/// (records stay small; explanations then say "files of COPY n changed").
const MAX_FILE_COMPONENTS: usize = 10_000;

impl Solve {
    /// The MemoBuild key of a vertex and its components, or `None` when its result is not cached:
    /// local sources (cheap, and read live), images named by tag only (the tag may move), URLs
    /// without a checksum, and ops whose inputs the key cannot describe yet. A git source's key
    /// holds the commit its ref resolves to now.
    pub(crate) async fn cache_key(
        &self,
        digest: &str,
        op: &pb::Op,
        inputs: &[Output],
    ) -> Result<Option<(String, BTreeMap<String, String>)>, SolveError> {
        let mut k = match &op.op {
            Some(pb::op::Op::Source(s)) => {
                let id = &s.identifier;
                if id.starts_with(attr::SCHEME_GIT) {
                    // A branch or tag can move: the key is the commit it names now.
                    let commit = self.git_commit(digest, s).await?;
                    let mut k = op_components(op);
                    k.add("commit", commit);
                    return Ok(Some(k.finish()));
                }
                // A URL with a checksum is pinned; one without is fetched every build and not
                // recorded (its content-identical layer lets what copies it hit instead).
                let pinned = (id.starts_with(attr::SCHEME_DOCKER_IMAGE) && id.contains("@sha256:"))
                    || ((id.starts_with(attr::SCHEME_HTTPS) || id.starts_with(attr::SCHEME_HTTP))
                        && s.attrs.contains_key(attr::ATTR_HTTP_CHECKSUM));
                return Ok(pinned.then(|| op_components(op).finish()));
            }
            Some(pb::op::Op::Exec(_)) | Some(pb::op::Op::File(_)) => op_components(op),
            _ => return Ok(None),
        };
        for (i, out) in inputs.iter().enumerate() {
            let identity = match out {
                Output::Fs(f) => fs_identity(&f.layers),
                Output::Local(_) => "local".to_string(),
            };
            k.add(format!("input {i}"), identity);
        }
        match &op.op {
            Some(pb::op::Op::File(f)) => {
                self.add_copy_fingerprints(digest, f, inputs, &mut k)
                    .await?;
            }
            Some(pb::op::Op::Exec(_)) if inputs.iter().any(|o| matches!(o, Output::Local(_))) => {
                return Ok(None);
            }
            _ => {}
        }
        Ok(Some(k.finish()))
    }

    /// For each copy from a local directory, the fingerprints of exactly the files it reads.
    async fn add_copy_fingerprints(
        &self,
        digest: &str,
        f: &pb::FileOp,
        inputs: &[Output],
        k: &mut KeyBuilder,
    ) -> Result<(), SolveError> {
        let mut jobs = Vec::new();
        for (i, a) in f.actions.iter().enumerate() {
            let Some(pb::file_action::Action::Copy(c)) = &a.action else {
                continue;
            };
            let Some(Output::Local(local)) = usize::try_from(a.secondary_input)
                .ok()
                .and_then(|s| inputs.get(s))
            else {
                continue;
            };
            let mut excludes: Vec<String> = local
                .exclude
                .iter()
                .flat_map(|p| p.texts().map(str::to_string))
                .collect();
            excludes.extend(c.exclude_patterns.iter().cloned());
            let stat_cache = self.worker.stat_cache(&local.path);
            jobs.push((i, local.clone(), c.clone(), excludes, stat_cache));
        }
        if jobs.is_empty() {
            return Ok(());
        }
        let found = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for (i, local, c, excludes, stat_cache) in jobs {
                let exclude = if excludes.is_empty() {
                    None
                } else {
                    Some(PatternMatcher::new(&excludes).map_err(|e| e.to_string())?)
                };
                let include = if c.include_patterns.is_empty() {
                    local.include.clone()
                } else {
                    Some(PatternMatcher::new(&c.include_patterns).map_err(|e| e.to_string())?)
                };
                let sel = CopySelection {
                    src: &c.src,
                    allow_wildcard: c.allow_wildcard,
                    follow_symlink: c.follow_symlink,
                    exclude: exclude.as_ref(),
                    include: include.as_ref(),
                };
                let files = fingerprint::copy_sources(&local.path, &sel, &stat_cache)
                    .map_err(|e| format!("reading `{}` from the context: {e}", c.src))?;
                out.push((i, files));
            }
            Ok::<_, String>(out)
        })
        .await
        .map_err(|e| self.error(digest, format!("fingerprint task failed: {e}")))?
        .map_err(|m| self.error(digest, m))?;
        for (i, files) in found {
            let mut all = blake3::Hasher::new();
            for (path, hash) in &files {
                all.update(path.as_bytes());
                all.update(b"\0");
                all.update(hash.as_bytes());
                all.update(b"\n");
            }
            k.add(
                format!("files of copy {i}"),
                all.finalize().to_hex().to_string(),
            );
            if files.len() <= MAX_FILE_COMPONENTS {
                for (path, hash) in files {
                    k.add(format!("file {path}"), hash);
                }
            }
        }
        Ok(())
    }
}
