//! Which vertices are cached, and under which MemoBuild key.

use std::collections::BTreeMap;
use std::sync::Arc;

use memobuild_proto::{attr, pb};

use crate::cache::key::{KeyBuilder, fs_identity, op_components};
use crate::fingerprint::{self, CopySelection, Fingerprint, StatCache};
use crate::patterns::PatternMatcher;
use crate::solver::{LocalRef, Output, Solve, SolveError, output_count};

/// Above this many files a copy's or mount's key keeps only their combined hash, not one
/// component each (records stay small; explanations then say "files of COPY n changed").
const MAX_FILE_COMPONENTS: usize = 10_000;

impl Solve {
    /// The MemoBuild key of a vertex and its components, or `None` when its result is not cached:
    /// local sources (cheap, and read live), images named by tag only (the tag may move), URLs
    /// without a checksum. A git source's key holds the commit its ref resolves to now; copies
    /// and exec mounts of a local directory add the fingerprints of the files they read.
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
        // Records of ops with several outputs hold every output's chain; their keys say so, so
        // that a binary that only knows single-output records never finds one.
        if let Some(n) = output_count(op).filter(|n| *n > 1) {
            k.add("outputs", n.to_string());
        }
        let jobs = match &op.op {
            Some(pb::op::Op::File(f)) => copy_jobs(f, inputs),
            Some(pb::op::Op::Exec(e)) => mount_jobs(e, inputs),
            _ => Vec::new(),
        };
        let jobs = jobs
            .into_iter()
            .map(|(label, local, sel)| {
                let stat_cache = self.build.engine.stat_cache(&local.path);
                (label, local, sel, stat_cache)
            })
            .collect();
        self.add_fingerprints(digest, jobs, &mut k).await?;
        Ok(Some(k.finish()))
    }

    /// Fingerprints the files each job reads from its local directory and adds them to the key:
    /// one combined hash per job (`label`), and one `file PATH` component per file (up to
    /// [`MAX_FILE_COMPONENTS`] per job) so that explanations can name a changed file.
    async fn add_fingerprints(
        &self,
        digest: &str,
        jobs: Vec<(String, LocalRef, Selection, Arc<StatCache>)>,
        k: &mut KeyBuilder,
    ) -> Result<(), SolveError> {
        if jobs.is_empty() {
            return Ok(());
        }
        let memo = self.fingerprints.clone();
        let found = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for (label, local, sel, stat_cache) in jobs {
                let memo_key = sel.memo_key(&local);
                if let Some(files) = memo.lock().ok().and_then(|m| m.get(&memo_key).cloned()) {
                    let owners =
                        if sel.owners {
                            Some(owners_hash(&local.path, &files).map_err(|e| {
                                format!("reading `{}` from the context: {e}", sel.src)
                            })?)
                        } else {
                            None
                        };
                    out.push((label, files, owners));
                    continue;
                }
                let compile = |p: &[String]| -> Result<Option<PatternMatcher>, String> {
                    if p.is_empty() {
                        return Ok(None);
                    }
                    PatternMatcher::new(p).map(Some).map_err(|e| e.to_string())
                };
                let copy_exclude = compile(&sel.copy_excludes)?;
                let copy_include = compile(&sel.copy_includes)?;
                let cs = CopySelection {
                    src: &sel.src,
                    allow_wildcard: sel.allow_wildcard,
                    follow_symlink: sel.follow_symlink,
                    exclude: local.exclude.as_ref(),
                    include: local.include.as_ref(),
                    copy_exclude: copy_exclude.as_ref(),
                    copy_include: copy_include.as_ref(),
                };
                let files = Arc::new(
                    fingerprint::copy_sources(&local.path, &cs, &stat_cache)
                        .map_err(|e| format!("reading `{}` from the context: {e}", sel.src))?,
                );
                if let Ok(mut m) = memo.lock() {
                    m.insert(memo_key, files.clone());
                }
                let owners = if sel.owners {
                    Some(
                        owners_hash(&local.path, &files)
                            .map_err(|e| format!("reading `{}` from the context: {e}", sel.src))?,
                    )
                } else {
                    None
                };
                out.push((label, files, owners));
            }
            Ok::<_, String>(out)
        })
        .await
        .map_err(|e| self.error(digest, format!("fingerprint task failed: {e}")))?
        .map_err(|m| self.error(digest, m))?;
        for (label, files, owners) in found {
            if let Some(h) = owners {
                k.add(format!("owners of {label}"), h);
            }
            let mut all = blake3::Hasher::new();
            let mut hex = [0u8; 64];
            for (path, hash) in files.iter() {
                all.update(path.as_bytes());
                all.update(b"\0");
                all.update(hash.hex_into(&mut hex));
                all.update(b"\n");
            }
            k.add(label, all.finalize().to_hex().to_string());
            if files.len() <= MAX_FILE_COMPONENTS {
                for (path, hash) in files.iter() {
                    k.add(format!("file {path}"), hash.to_hex());
                }
            }
        }
        Ok(())
    }
}

/// What a vertex reads from a local directory: a source path (or glob) below it and filters.
struct Selection {
    src: String,
    allow_wildcard: bool,
    follow_symlink: bool,
    /// The reader's own exclude patterns (`COPY --exclude`), relative to `src`; the local's
    /// own patterns come with its [`LocalRef`].
    copy_excludes: Vec<String>,
    /// The reader's own include patterns, relative to `src`.
    copy_includes: Vec<String>,
    /// Whether the reader sees the files' owners: a local directory bound as it is (read-only,
    /// unfiltered, see `ops::mounts`). Copies and filtered binds make everything root-owned,
    /// as BuildKit's transfer does, so there the owner is no input (and machines whose
    /// checkouts belong to different users share cache entries).
    owners: bool,
}

/// Fingerprint lists already computed in a solve, by [`Selection::memo_key`].
pub(crate) type FingerprintMemo =
    Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<Vec<(String, Fingerprint)>>>>>;

impl Selection {
    /// Everything that decides which files a selection reads from `local`.
    fn memo_key(&self, local: &LocalRef) -> String {
        let texts = |m: &Option<PatternMatcher>| -> Vec<String> {
            m.iter()
                .flat_map(|m| m.texts().map(str::to_string))
                .collect()
        };
        serde_json::json!([
            local.path,
            texts(&local.exclude),
            texts(&local.include),
            self.src,
            self.allow_wildcard,
            self.follow_symlink,
            self.copy_excludes,
            self.copy_includes,
        ])
        .to_string()
    }
}

/// BLAKE3 over the uid and gid of each listed file (paths relative to `root`).
fn owners_hash(root: &std::path::Path, files: &[(String, Fingerprint)]) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let mut h = blake3::Hasher::new();
    for (path, _) in files {
        let md = std::fs::symlink_metadata(root.join(path))?;
        h.update(path.as_bytes());
        h.update(format!("\0{}:{}\n", md.uid(), md.gid()).as_bytes());
    }
    Ok(h.finalize().to_hex().to_string())
}

/// For each copy from a local directory: exactly the files it reads.
fn copy_jobs(f: &pb::FileOp, inputs: &[Output]) -> Vec<(String, LocalRef, Selection)> {
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
        jobs.push((
            format!("files of copy {i}"),
            local.clone(),
            Selection {
                src: c.src.clone(),
                allow_wildcard: c.allow_wildcard,
                follow_symlink: c.follow_symlink,
                copy_excludes: c.exclude_patterns.clone(),
                copy_includes: c.include_patterns.clone(),
                // A copy gives root's ownership to a client's files; an archive's own
                // owners are copied as they are.
                owners: local.keeps_owners,
            },
        ));
    }
    jobs
}

/// For each bind mount of a local directory: every file the mount shows (the directory, or
/// the subdirectory its selector names, minus what the local's patterns leave out), as
/// `ops::mounts` binds it.
fn mount_jobs(e: &pb::ExecOp, inputs: &[Output]) -> Vec<(String, LocalRef, Selection)> {
    let mut jobs = Vec::new();
    for m in &e.mounts {
        if m.mount_type != pb::MountType::Bind as i32 {
            continue;
        }
        let Some(Output::Local(local)) = usize::try_from(m.input).ok().and_then(|i| inputs.get(i))
        else {
            continue;
        };
        let selector = m.selector.trim_start_matches('/');
        jobs.push((
            format!("files of mount {}", m.dest),
            local.clone(),
            Selection {
                src: if selector.is_empty() {
                    ".".to_string()
                } else {
                    selector.to_string()
                },
                allow_wildcard: false,
                follow_symlink: true,
                copy_excludes: Vec::new(),
                copy_includes: Vec::new(),
                owners: local.keeps_owners
                    || (m.readonly && local.exclude.is_none() && local.include.is_none()),
            },
        ));
    }
    jobs
}
