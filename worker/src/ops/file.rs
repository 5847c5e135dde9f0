//! FileOp: copy, mkdir, mkfile, rm and symlink actions, done on a mounted snapshot without a
//! container.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memobuild_proto::pb;
use memobuild_proto::pb::file_action::Action;

use crate::containerd::{MountGuard, gc_root_labels};
use crate::fsops::{self, CopyOptions, Owner};
use crate::ops::writable_dir;
use crate::patterns::PatternMatcher;
use crate::solver::{FsRef, Output, Solve, SolveError};

/// Where a copy reads from.
#[derive(Debug, Clone)]
struct SourceDir {
    path: PathBuf,
    exclude: Option<PatternMatcher>,
    include: Option<PatternMatcher>,
    /// A local context is sent root-owned, as BuildKit's file sync does.
    root_owned: bool,
}

impl Solve {
    pub(crate) async fn file(
        &self,
        digest: &str,
        fop: pb::FileOp,
        inputs: Vec<Output>,
    ) -> Result<Vec<Output>, SolveError> {
        let fop = &fop;
        let n = inputs.len() as i64;
        if fop.actions.is_empty() {
            return Err(self.error(digest, "file op has no actions".into()));
        }
        // Actions form a chain: the first works on an op input (or scratch), each later one on
        // the previous action's result. That is the shape every Dockerfile instruction lowers to.
        let base = match fop.actions[0].input {
            -1 => FsRef::default(),
            i if (0..n).contains(&i) => match &inputs[i as usize] {
                Output::Fs(f) => f.clone(),
                Output::Local(_) => {
                    return Err(self.error(digest, "file op cannot modify a local source".into()));
                }
            },
            i => return Err(self.error(digest, format!("file action 0 has invalid input {i}"))),
        };
        for (k, a) in fop.actions.iter().enumerate().skip(1) {
            if a.input != n + k as i64 - 1 {
                return Err(self.error(digest, format!(
                    "file action {k} does not build on action {}: non-linear file ops are not supported yet",
                    k - 1
                )));
            }
        }

        // Secondary inputs: mount snapshots read-only, use local directories as they are.
        let mut guards: Vec<(MountGuard, String)> = Vec::new();
        let mut empty_dirs: Vec<tempfile::TempDir> = Vec::new();
        let mut sources: HashMap<i64, SourceDir> = HashMap::new();
        for a in fop.actions.clone() {
            let s = a.secondary_input;
            if s < 0 || sources.contains_key(&s) || !matches!(a.action, Some(Action::Copy(_))) {
                continue;
            }
            if s >= n {
                return Err(self.error(
                    digest,
                    "copying from an earlier action's result is not supported yet".into(),
                ));
            }
            let dir = match &inputs[s as usize] {
                Output::Local(l) => SourceDir {
                    path: l.path.clone(),
                    exclude: l.exclude.clone(),
                    include: l.include.clone(),
                    root_owned: true,
                },
                Output::Fs(fs) if !fs.layers.is_empty() => {
                    let snap = self
                        .worker
                        .ensure_snapshot(&self.name(digest), fs)
                        .await
                        .map_err(|e| self.error(digest, e.to_string()))?;
                    let key = format!("memobuild-view-{}", uuid::Uuid::new_v4());
                    let mounts = self
                        .worker
                        .ctd
                        .view(&key, &snap)
                        .await
                        .map_err(|e| self.error(digest, e.to_string()))?;
                    let guard = MountGuard::mount(&mounts)
                        .map_err(|e| self.error(digest, e.to_string()))?;
                    let path = guard.path().to_path_buf();
                    guards.push((guard, key));
                    SourceDir {
                        path,
                        exclude: None,
                        include: None,
                        root_owned: false,
                    }
                }
                Output::Fs(_) => {
                    let t = tempfile::tempdir().map_err(|e| self.error(digest, e.to_string()))?;
                    let path = t.path().to_path_buf();
                    empty_dirs.push(t);
                    SourceDir {
                        path,
                        exclude: None,
                        include: None,
                        root_owned: false,
                    }
                }
            };
            sources.insert(s, dir);
        }

        let result = self.apply_actions(digest, &base, fop, sources).await;
        for (g, key) in guards {
            let _ = g.unmount();
            let _ = self.worker.ctd.remove(&key).await;
        }
        drop(empty_dirs);
        result
    }

    async fn apply_actions(
        &self,
        digest: &str,
        base: &FsRef,
        fop: &pb::FileOp,
        sources: HashMap<i64, SourceDir>,
    ) -> Result<Vec<Output>, SolveError> {
        let key = format!("memobuild-active-{}", uuid::Uuid::new_v4());
        let parent = self
            .worker
            .ensure_snapshot(&self.name(digest), base)
            .await
            .map_err(|e| self.error(digest, e.to_string()))?;
        let mounts = self
            .worker
            .ctd
            .prepare(&key, &parent, HashMap::new())
            .await
            .map_err(|e| self.error(digest, e.to_string()))?;
        let outcome = self
            .apply_in_snapshot(digest, &key, &mounts, base, fop, sources)
            .await;
        if outcome.is_err() {
            let _ = self.worker.ctd.remove(&key).await;
        }
        outcome.map(|fs| vec![Output::Fs(fs)])
    }

    async fn apply_in_snapshot(
        &self,
        digest: &str,
        key: &str,
        mounts: &[crate::containerd::Mount],
        base: &FsRef,
        fop: &pb::FileOp,
        sources: HashMap<i64, SourceDir>,
    ) -> Result<FsRef, SolveError> {
        let guard = MountGuard::mount(mounts).map_err(|e| self.error(digest, e.to_string()))?;
        let root = guard.path().to_path_buf();
        let actions = fop.actions.clone();
        let applied = tokio::task::spawn_blocking(move || {
            for (k, a) in actions.iter().enumerate() {
                apply(&root, a, &sources).map_err(|e| format!("action {k}: {e}"))?;
            }
            Ok::<(), String>(())
        })
        .await
        .map_err(|e| self.error(digest, format!("file op task failed: {e}")))?;
        guard
            .unmount()
            .map_err(|e| self.error(digest, e.to_string()))?;
        applied.map_err(|m| self.error(digest, m))?;
        let upper = writable_dir(mounts)
            .ok_or_else(|| self.error(digest, "snapshot has no upper directory".into()))?;
        self.snapshot_layer(digest, key, &upper, base).await
    }

    /// Makes the layer of an active snapshot from its upper directory and commits it.
    pub(crate) async fn snapshot_layer(
        &self,
        digest: &str,
        key: &str,
        upper: &Path,
        base: &FsRef,
    ) -> Result<FsRef, SolveError> {
        let blobs = self.worker.blobs.clone();
        let opts = self.opts.layer;
        let upper = upper.to_path_buf();
        let layer =
            tokio::task::spawn_blocking(move || crate::layer::write_layer(&upper, &blobs, opts))
                .await
                .map_err(|e| self.error(digest, format!("layer task failed: {e}")))?
                .map_err(|e| self.error(digest, e.to_string()))?;
        let mut layers = base.layers.clone();
        layers.push(layer);
        // Named by chain ID, like unpacked image layers: the next vertex that needs these files
        // (in this build or a later one) finds the snapshot instead of unpacking the layers.
        let name = crate::cache::key::fs_identity(&layers);
        match self.worker.ctd.commit(&name, key, gc_root_labels()).await {
            Ok(()) => {}
            Err(crate::containerd::Error::SnapshotExists { .. }) => {
                let _ = self.worker.ctd.remove(key).await;
            }
            Err(e) => return Err(self.error(digest, e.to_string())),
        }
        Ok(FsRef { layers })
    }
}

fn owner_of(root: &Path, chown: Option<&pb::ChownOpt>) -> Result<Option<Owner>, String> {
    let Some(c) = chown else { return Ok(None) };
    let resolve_user = |u: &pb::UserOpt, group: bool| -> Result<Option<u32>, String> {
        match &u.user {
            Some(pb::user_opt::User::ById(id)) => Ok(Some(*id)),
            Some(pb::user_opt::User::ByName(n)) => {
                if group {
                    fsops::lookup_group(root, &n.name)
                        .map(Some)
                        .map_err(|e| e.to_string())
                } else {
                    fsops::lookup_user(root, &n.name)
                        .map(|(u, _)| Some(u))
                        .map_err(|e| e.to_string())
                }
            }
            None => Ok(None),
        }
    };
    let uid = match &c.user {
        Some(u) => resolve_user(u, false)?,
        None => None,
    };
    let gid = match &c.group {
        Some(g) => resolve_user(g, true)?,
        None => None,
    };
    match (uid, gid) {
        (None, None) => Ok(None),
        (Some(u), Some(g)) => Ok(Some(Owner { uid: u, gid: g })),
        (Some(u), None) => {
            // Docker: `--chown=user` takes the user's primary group... only when named; a bare id
            // uses the same id as the group.
            let gid = match &c.user.as_ref().and_then(|u| u.user.clone()) {
                Some(pb::user_opt::User::ByName(n)) => {
                    fsops::lookup_user(root, &n.name).map(|x| x.1).unwrap_or(u)
                }
                _ => u,
            };
            Ok(Some(Owner { uid: u, gid }))
        }
        (None, Some(g)) => Ok(Some(Owner { uid: 0, gid: g })),
    }
}

fn time_of(ns: i64) -> Option<i64> {
    (ns >= 0).then_some(ns / 1_000_000_000)
}

fn apply(
    root: &Path,
    action: &pb::FileAction,
    sources: &HashMap<i64, SourceDir>,
) -> Result<(), String> {
    match &action.action {
        Some(Action::Copy(c)) => {
            let src = match sources.get(&action.secondary_input) {
                Some(s) => s.clone(),
                None => {
                    // Copy from scratch: nothing to copy unless an empty wildcard is allowed.
                    if c.allow_empty_wildcard {
                        return Ok(());
                    }
                    return Err(format!(
                        "copy source `{}` not found: source is empty",
                        c.src
                    ));
                }
            };
            let mut exclude_patterns: Vec<String> = src
                .exclude
                .iter()
                .flat_map(|p| p.texts().map(str::to_string))
                .collect();
            exclude_patterns.extend(c.exclude_patterns.iter().cloned());
            let exclude = if exclude_patterns.is_empty() {
                None
            } else {
                Some(PatternMatcher::new(&exclude_patterns).map_err(|e| e.to_string())?)
            };
            let include = if c.include_patterns.is_empty() {
                src.include.clone()
            } else {
                Some(PatternMatcher::new(&c.include_patterns).map_err(|e| e.to_string())?)
            };
            let opts = CopyOptions {
                follow_symlink: c.follow_symlink,
                dir_copy_contents: c.dir_copy_contents,
                create_dest_path: c.create_dest_path,
                allow_wildcard: c.allow_wildcard,
                allow_empty_wildcard: c.allow_empty_wildcard,
                owner: owner_of(root, c.owner.as_ref())?,
                mode: (c.mode >= 0).then_some(c.mode as u32),
                mtime: time_of(c.timestamp),
                include,
                exclude,
                source_owner: src.root_owned.then_some(Owner { uid: 0, gid: 0 }),
            };
            fsops::copy(&src.path, &c.src, root, &c.dest, &opts).map_err(|e| e.to_string())
        }
        Some(Action::Mkdir(m)) => {
            let owner = owner_of(root, m.owner.as_ref())?;
            let path = fsops::resolve_in_root(root, &m.path, false).map_err(|e| e.to_string())?;
            let mode = if m.mode >= 0 { m.mode as u32 } else { 0o755 };
            if m.make_parents {
                fsops::mkdir_all(&path, mode, owner).map_err(|e| e.to_string())
            } else {
                std::fs::create_dir(&path).map_err(|e| format!("mkdir {}: {e}", m.path))?;
                set_meta(&path, mode, owner)
            }
        }
        Some(Action::Mkfile(f)) => {
            let owner = owner_of(root, f.owner.as_ref())?;
            let path = fsops::resolve_in_root(root, &f.path, false).map_err(|e| e.to_string())?;
            std::fs::write(&path, &f.data).map_err(|e| format!("mkfile {}: {e}", f.path))?;
            set_meta(
                &path,
                if f.mode >= 0 { f.mode as u32 } else { 0o644 },
                owner,
            )
        }
        Some(Action::Rm(r)) => {
            let path = fsops::resolve_in_root(root, &r.path, false).map_err(|e| e.to_string())?;
            if std::fs::symlink_metadata(&path).is_err() {
                if r.allow_not_found {
                    return Ok(());
                }
                return Err(format!("rm {}: no such file or directory", r.path));
            }
            fsops::remove_all(&path).map_err(|e| format!("rm {}: {e}", r.path))
        }
        Some(Action::Symlink(s)) => {
            let path =
                fsops::resolve_in_root(root, &s.newpath, false).map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink(&s.oldpath, &path)
                .map_err(|e| format!("symlink {}: {e}", s.newpath))?;
            if let Some(o) = owner_of(root, s.owner.as_ref())? {
                std::os::unix::fs::lchown(&path, Some(o.uid), Some(o.gid))
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
        None => Err("file action has no operation".into()),
    }
}

fn set_meta(path: &Path, mode: u32, owner: Option<Owner>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| e.to_string())?;
    if let Some(o) = owner {
        std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid)).map_err(|e| e.to_string())?;
    }
    Ok(())
}
