//! FileOp: copy, mkdir, mkfile, rm and symlink actions, done on mounted snapshots without a
//! container. Actions may build on an op input, scratch or an earlier action's result, and copy
//! from any of those (buildkit-wire.md §6.5); see [`Plan`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memobuild_proto::pb;
use memobuild_proto::pb::file_action::Action;

use crate::containerd::MountGuard;
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

/// What an action's `input` or `secondaryInput` names (buildkit-wire.md §6.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Ref {
    /// `-1`: an empty filesystem.
    Scratch,
    /// `< len(inputs)`: an input of the op.
    Input(usize),
    /// `>= len(inputs)`: the result of an earlier action.
    Action(usize),
}

/// How the actions of one FileOp are carried out.
#[derive(Debug)]
struct Plan {
    /// Base and (for copies) source of each action.
    refs: Vec<(Ref, Option<Ref>)>,
    /// The actions some output depends on, ascending; the others are skipped.
    needed: Vec<usize>,
    /// Actions whose result only the next action in its chain uses, as its base: that action
    /// goes on in the same active snapshot instead of committing this result first.
    in_place: Vec<bool>,
    /// Op output index → action.
    outputs: Vec<usize>,
}

fn resolve_ref(i: i64, n: usize, k: usize) -> Result<Ref, String> {
    if i == -1 {
        return Ok(Ref::Scratch);
    }
    let u = usize::try_from(i).map_err(|_| format!("file action {k} has invalid input {i}"))?;
    if u < n {
        return Ok(Ref::Input(u));
    }
    let j = u - n;
    if j >= k {
        return Err(format!(
            "file action {k} refers to action {j}, which does not come before it"
        ));
    }
    Ok(Ref::Action(j))
}

fn plan(fop: &pb::FileOp, n: usize) -> Result<Plan, String> {
    let m = fop.actions.len();
    if m == 0 {
        return Err("file op has no actions".into());
    }
    let mut refs = Vec::with_capacity(m);
    let mut outputs: Vec<Option<usize>> = Vec::new();
    for (k, a) in fop.actions.iter().enumerate() {
        let base = resolve_ref(a.input, n, k)?;
        let src = match &a.action {
            Some(Action::Copy(_)) => Some(resolve_ref(a.secondary_input, n, k)?),
            _ => None,
        };
        refs.push((base, src));
        if a.output >= 0 {
            let o = usize::try_from(a.output).unwrap_or(usize::MAX);
            if o > m {
                return Err(format!("file action {k} has invalid output {}", a.output));
            }
            if outputs.len() <= o {
                outputs.resize(o + 1, None);
            }
            if outputs[o].replace(k).is_some() {
                return Err(format!("two file actions produce output {o}"));
            }
        }
    }
    let outputs: Vec<usize> = outputs
        .into_iter()
        .enumerate()
        .map(|(o, k)| k.ok_or_else(|| format!("no file action produces output {o}")))
        .collect::<Result<_, _>>()?;
    if outputs.is_empty() {
        return Err("file op has no output".into());
    }
    let mut is_needed = vec![false; m];
    let mut stack = outputs.clone();
    while let Some(k) = stack.pop() {
        if std::mem::replace(&mut is_needed[k], true) {
            continue;
        }
        let (base, src) = refs[k];
        for r in [Some(base), src].into_iter().flatten() {
            if let Ref::Action(j) = r {
                stack.push(j);
            }
        }
    }
    let needed: Vec<usize> = (0..m).filter(|k| is_needed[*k]).collect();
    let mut base_uses = vec![0usize; m];
    let mut other_uses = vec![0usize; m];
    for &k in &needed {
        let (base, src) = refs[k];
        if let Ref::Action(j) = base {
            base_uses[j] += 1;
        }
        if let Some(Ref::Action(j)) = src {
            other_uses[j] += 1;
        }
    }
    for &k in &outputs {
        other_uses[k] += 1;
    }
    let in_place = (0..m)
        .map(|k| base_uses[k] == 1 && other_uses[k] == 0)
        .collect();
    Ok(Plan {
        refs,
        needed,
        in_place,
        outputs,
    })
}

/// Copy results smaller than this (compressed layer bytes) are not reused: writing them again
/// costs less than the snapshot view that linking needs.
const REUSE_MIN_LAYER: u64 = 8 << 20;

/// A copy's shape, and the earlier result of the same shape it may link files of.
struct Donor {
    shape: String,
    reuse: Option<std::sync::Arc<fsops::Reuse>>,
}

/// What a copy reads, as far as its shape goes: a local directory by path, a snapshot by the
/// identity of its files.
fn source_identity(src: Option<Ref>, inputs: &[Output], results: &HashMap<usize, FsRef>) -> String {
    let fs = match src {
        None | Some(Ref::Scratch) => return "scratch".to_string(),
        Some(Ref::Input(i)) => match inputs.get(i) {
            Some(Output::Local(l)) => return format!("local {}", l.path.display()),
            Some(Output::Fs(f)) => Some(f),
            None => None,
        },
        Some(Ref::Action(j)) => results.get(&j),
    };
    fs.map(|f| crate::cache::key::fs_identity(&f.layers))
        .unwrap_or_default()
}

/// An active snapshot that actions are applied to, mounted on the host.
struct Chain {
    key: String,
    mounts: Vec<crate::containerd::Mount>,
    guard: Option<MountGuard>,
    base: FsRef,
}

/// Everything a FileOp holds while it runs; released whatever the outcome.
#[derive(Default)]
struct FileState {
    /// Open chains by the action last applied to them.
    chains: HashMap<usize, Chain>,
    /// Committed results of actions that are used more than once or are outputs.
    results: HashMap<usize, FsRef>,
    /// Copy sources, mounted once per op.
    sources: HashMap<Ref, Option<SourceDir>>,
    views: Vec<(MountGuard, String)>,
    /// Views of earlier copy results whose files a copy links (not mounted).
    donor_views: Vec<String>,
    empty_dirs: Vec<tempfile::TempDir>,
}

impl FileState {
    async fn release(self, solve: &Solve) {
        for (_, c) in self.chains {
            if let Some(g) = c.guard {
                let _ = g.unmount();
            }
            solve.build.remove_snapshot(&c.key).await;
        }
        for (g, key) in self.views {
            let _ = g.unmount();
            solve.build.remove_snapshot(&key).await;
        }
        for key in self.donor_views {
            solve.build.remove_snapshot(&key).await;
        }
        drop(self.empty_dirs);
    }
}

impl Solve {
    /// Runs the actions of a FileOp in order. Each action works on its base (an op input,
    /// scratch, or an earlier action's result); a chain of actions where each result feeds only
    /// the next one shares one active snapshot and one layer, as every Dockerfile instruction
    /// lowers to. Results used twice (or as op outputs) are committed as layers of their own.
    pub(crate) async fn file(
        &self,
        digest: &str,
        fop: pb::FileOp,
        inputs: Vec<Output>,
    ) -> Result<Vec<Output>, SolveError> {
        let plan = plan(&fop, inputs.len()).map_err(|m| self.error(digest, m))?;
        let mut st = FileState::default();
        let result = self
            .run_actions(digest, &fop, &inputs, &plan, &mut st)
            .await;
        st.release(self).await;
        result
    }

    async fn run_actions(
        &self,
        digest: &str,
        fop: &pb::FileOp,
        inputs: &[Output],
        plan: &Plan,
        st: &mut FileState,
    ) -> Result<Vec<Output>, SolveError> {
        for &k in &plan.needed {
            let (base, src) = plan.refs[k];
            let chain = match base {
                Ref::Action(j) if plan.in_place[j] => st
                    .chains
                    .remove(&j)
                    .ok_or_else(|| self.error(digest, format!("file action {j} left no result")))?,
                Ref::Action(j) => {
                    let fs = st.results.get(&j).cloned().ok_or_else(|| {
                        self.error(digest, format!("file action {j} left no result"))
                    })?;
                    self.open_chain(digest, fs).await?
                }
                Ref::Input(i) => match &inputs[i] {
                    Output::Fs(f) => self.open_chain(digest, f.clone()).await?,
                    Output::Local(_) => {
                        return Err(
                            self.error(digest, "file op cannot modify a local source".into())
                        );
                    }
                },
                Ref::Scratch => self.open_chain(digest, FsRef::default()).await?,
            };
            let root = chain
                .guard
                .as_ref()
                .map(|g| g.path().to_path_buf())
                .unwrap_or_default();
            st.chains.insert(k, chain);
            let source = match src {
                Some(r) => self.copy_source(digest, r, inputs, st).await?,
                None => None,
            };
            let action = fop.actions[k].clone();
            // A copy that ends its chain may link files of its previous result.
            let donor = match (&action.action, source.is_some(), plan.in_place[k]) {
                (Some(Action::Copy(_)), true, false) => {
                    let identity = source_identity(src, inputs, &st.results);
                    let chain = st.chains.get(&k).map(|c| {
                        (
                            crate::cache::key::fs_identity(&c.base.layers),
                            writable_dir(&c.mounts),
                        )
                    });
                    match chain {
                        Some((base, Some(upper))) => {
                            let place = (root.clone(), upper);
                            Some(self.copy_donor(&action, &identity, &base, place, st).await)
                        }
                        _ => None,
                    }
                }
                _ => None,
            };
            let reuse = donor.as_ref().and_then(|d| d.reuse.clone());
            let started = std::time::Instant::now();
            tokio::task::spawn_blocking(move || apply(&root, &action, source.as_ref(), reuse))
                .await
                .map_err(|e| self.error(digest, format!("file op task failed: {e}")))?
                .map_err(|e| self.error(digest, format!("action {k}: {e}")))?;
            tracing::debug!(
                vertex = digest,
                action = k,
                ms = started.elapsed().as_millis() as u64,
                "file action applied"
            );
            if !plan.in_place[k]
                && let Some(chain) = st.chains.remove(&k)
            {
                let fs = self.finish_chain(digest, chain, donor).await?;
                st.results.insert(k, fs);
            }
        }
        plan.outputs
            .iter()
            .map(|k| {
                st.results
                    .get(k)
                    .cloned()
                    .map(Output::Fs)
                    .ok_or_else(|| self.error(digest, format!("file action {k} left no result")))
            })
            .collect()
    }

    /// An active snapshot on `base`, mounted.
    async fn open_chain(&self, digest: &str, base: FsRef) -> Result<Chain, SolveError> {
        let key = format!("memobuild-active-{}", uuid::Uuid::new_v4());
        let parent = self
            .build
            .ensure_snapshot(&self.name(digest), &base)
            .await
            .map_err(|e| self.error(digest, e.to_string()))?;
        let mounts = self
            .build
            .containerd()
            .await
            .map_err(|e| self.error(digest, e.to_string()))?
            .prepare(&key, &parent, HashMap::new())
            .await
            .map_err(|e| self.error(digest, e.to_string()))?;
        match MountGuard::mount(&mounts) {
            Ok(g) => Ok(Chain {
                key,
                mounts,
                guard: Some(g),
                base,
            }),
            Err(e) => {
                self.build.remove_snapshot(&key).await;
                Err(self.error(digest, e.to_string()))
            }
        }
    }

    /// Unmounts a chain and commits what its actions wrote as one layer on its base. A copy's
    /// `donor` files are linked in first, and the result becomes the next one's donor.
    async fn finish_chain(
        &self,
        digest: &str,
        mut chain: Chain,
        mut donor: Option<Donor>,
    ) -> Result<FsRef, SolveError> {
        let outcome = async {
            if let Some(g) = chain.guard.take() {
                g.unmount().map_err(|e| self.error(digest, e.to_string()))?;
            }
            let upper = writable_dir(&chain.mounts)
                .ok_or_else(|| self.error(digest, "snapshot has no upper directory".into()))?;
            if let Some(reuse) = donor.as_mut().and_then(|d| d.reuse.take()) {
                let started = std::time::Instant::now();
                let linked = tokio::task::spawn_blocking(move || {
                    std::sync::Arc::try_unwrap(reuse)
                        .map_err(|_| std::io::Error::other("the copy still holds its donor"))?
                        .link()
                })
                .await
                .map_err(|e| self.error(digest, format!("file op task failed: {e}")))?
                .map_err(|e| self.error(digest, format!("linking an earlier copy's files: {e}")))?;
                tracing::debug!(
                    vertex = digest,
                    files = linked.files,
                    bytes = linked.bytes,
                    ms = started.elapsed().as_millis() as u64,
                    "linked unchanged files of the previous copy"
                );
            }
            self.snapshot_layer(digest, &chain.key, &upper, &chain.base)
                .await
        }
        .await;
        if outcome.is_err() {
            self.build.remove_snapshot(&chain.key).await;
        }
        if let (Ok(fs), Some(d)) = (&outcome, &donor)
            && let Some(layer) = fs.layers.last()
            && layer.size >= REUSE_MIN_LAYER
        {
            let name = crate::cache::key::fs_identity(&fs.layers);
            if let Err(e) = self.donors().record(&d.shape, &name, layer.size) {
                tracing::debug!(error = %e, "cannot record a copy's result for reuse");
            }
        }
        outcome
    }

    fn donors(&self) -> fsops::reuse::Donors {
        fsops::reuse::Donors::new(self.build.engine().state().copy_donors())
    }

    /// The shape of a copy that ends its chain, and the earlier result it may link files of:
    /// a read-only view of that result's snapshot, which [`FileState::release`] removes.
    /// Small results (under [`REUSE_MIN_LAYER`]) are not worth the view's round trips.
    /// `place` is the chain's mounted root and its upper directory.
    async fn copy_donor(
        &self,
        action: &pb::FileAction,
        source: &str,
        base: &str,
        place: (PathBuf, PathBuf),
        st: &mut FileState,
    ) -> Donor {
        let shape =
            fsops::reuse::Donors::shape(base, &prost::Message::encode_to_vec(action), source);
        let mut donor = Donor { shape, reuse: None };
        let Some((snapshot, size)) = self.donors().lookup(&donor.shape) else {
            return donor;
        };
        if size < REUSE_MIN_LAYER {
            return donor;
        }
        let key = format!("memobuild-view-{}", uuid::Uuid::new_v4());
        let mounts = match self.build.containerd().await {
            Ok(ctd) => ctd.view(&key, &snapshot).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let (root, upper) = place;
        match mounts {
            Ok(mounts) => {
                st.donor_views.push(key);
                let dir = crate::containerd::overlay_lowerdirs(&mounts)
                    .into_iter()
                    .next();
                match dir.map(|dir| fsops::Reuse::new(root, upper, dir)) {
                    Some(Ok(reuse)) => donor.reuse = Some(std::sync::Arc::new(reuse)),
                    Some(Err(e)) => tracing::debug!(error = %e, "cannot open a copy's donor"),
                    None => {}
                }
            }
            Err(e) => tracing::debug!(error = %e, snapshot, "a copy's previous result is gone"),
        }
        donor
    }

    /// The directory a copy reads from (`None`: scratch), mounted read-only once per op.
    async fn copy_source(
        &self,
        digest: &str,
        r: Ref,
        inputs: &[Output],
        st: &mut FileState,
    ) -> Result<Option<SourceDir>, SolveError> {
        if let Some(s) = st.sources.get(&r) {
            return Ok(s.clone());
        }
        let fs =
            match r {
                Ref::Scratch => None,
                Ref::Input(i) => match &inputs[i] {
                    Output::Local(l) => {
                        let dir = SourceDir {
                            path: l.path.clone(),
                            exclude: l.exclude.clone(),
                            include: l.include.clone(),
                            root_owned: !l.keeps_owners,
                        };
                        st.sources.insert(r, Some(dir.clone()));
                        return Ok(Some(dir));
                    }
                    Output::Fs(f) => Some(f.clone()),
                },
                Ref::Action(j) => Some(st.results.get(&j).cloned().ok_or_else(|| {
                    self.error(digest, format!("file action {j} left no result"))
                })?),
            };
        let dir = match fs {
            None => None,
            Some(fs) if fs.layers.is_empty() => {
                let t = tempfile::tempdir().map_err(|e| self.error(digest, e.to_string()))?;
                let path = t.path().to_path_buf();
                st.empty_dirs.push(t);
                Some(SourceDir {
                    path,
                    exclude: None,
                    include: None,
                    root_owned: false,
                })
            }
            Some(fs) => {
                let (guard, key) = self.mount_view(digest, &fs).await?;
                let path = guard.path().to_path_buf();
                st.views.push((guard, key));
                Some(SourceDir {
                    path,
                    exclude: None,
                    include: None,
                    root_owned: false,
                })
            }
        };
        st.sources.insert(r, dir.clone());
        Ok(dir)
    }

    /// Makes the layer of an active snapshot from its upper directory and commits it.
    pub(crate) async fn snapshot_layer(
        &self,
        digest: &str,
        key: &str,
        upper: &Path,
        base: &FsRef,
    ) -> Result<FsRef, SolveError> {
        let blobs = self.build.blobs().clone();
        let opts = self.opts.layer;
        let upper = upper.to_path_buf();
        let started = std::time::Instant::now();
        let layer =
            tokio::task::spawn_blocking(move || crate::layer::write_layer(&upper, &blobs, opts))
                .await
                .map_err(|e| self.error(digest, format!("layer task failed: {e}")))?
                .map_err(|e| self.error(digest, e.to_string()))?;
        tracing::debug!(
            vertex = digest,
            size = layer.size,
            ms = started.elapsed().as_millis() as u64,
            "layer written"
        );
        let mut layers = base.layers.clone();
        layers.push(layer);
        // Named by chain ID, like unpacked image layers: the next vertex that needs these files
        // (in this build or a later one) finds the snapshot instead of unpacking the layers.
        let name = crate::cache::key::fs_identity(&layers);
        let ctd = self
            .build
            .containerd()
            .await
            .map_err(|e| self.error(digest, e.to_string()))?;
        match ctd
            .commit(&name, key, crate::containerd::snapshot_labels())
            .await
        {
            Ok(()) => {}
            Err(crate::containerd::Error::SnapshotExists { .. }) => {
                self.build.remove_snapshot(key).await;
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

/// A pattern list, `None` when empty.
fn matcher(patterns: &[String]) -> Result<Option<PatternMatcher>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    PatternMatcher::new(patterns)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The options of a copy from `src`. The copy's include/exclude patterns are matched relative
/// to the source path it copies, the source's own (`.dockerignore`) relative to the source root,
/// as BuildKit does; a symbolic `mode_str` wins over the octal `mode` (`-1`: keep).
fn copy_options(
    root: &Path,
    c: &pb::FileActionCopy,
    src: &SourceDir,
) -> Result<CopyOptions, String> {
    let mode_str = if c.mode_str.is_empty() {
        None
    } else {
        Some(fsops::SymbolicMode::parse(&c.mode_str)?)
    };
    Ok(CopyOptions {
        follow_symlink: c.follow_symlink,
        dir_copy_contents: c.dir_copy_contents,
        create_dest_path: c.create_dest_path,
        allow_wildcard: c.allow_wildcard,
        allow_empty_wildcard: c.allow_empty_wildcard,
        owner: owner_of(root, c.owner.as_ref())?,
        mode: (c.mode >= 0).then_some(c.mode as u32),
        mode_str,
        unpack: c.attempt_unpack_docker_compatibility,
        mtime: time_of(c.timestamp),
        include: matcher(&c.include_patterns)?,
        exclude: matcher(&c.exclude_patterns)?,
        context_include: src.include.clone().filter(|m| !m.is_empty()),
        context_exclude: src.exclude.clone().filter(|m| !m.is_empty()),
        source_owner: src.root_owned.then_some(Owner { uid: 0, gid: 0 }),
        reuse: None,
    })
}

fn time_of(ns: i64) -> Option<i64> {
    (ns >= 0).then_some(ns / 1_000_000_000)
}

fn apply(
    root: &Path,
    action: &pb::FileAction,
    source: Option<&SourceDir>,
    reuse: Option<std::sync::Arc<fsops::Reuse>>,
) -> Result<(), String> {
    match &action.action {
        Some(Action::Copy(c)) => {
            let src = match source {
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
            let opts = CopyOptions {
                reuse,
                ..copy_options(root, c, &src)?
            };
            fsops::copy(&src.path, &c.src, root, &c.dest, &opts).map_err(|e| e.to_string())
        }
        Some(Action::Mkdir(m)) => {
            let owner = owner_of(root, m.owner.as_ref())?;
            let path = fsops::resolve_in_root(root, &m.path, false).map_err(|e| e.to_string())?;
            let mode = if m.mode >= 0 { m.mode as u32 } else { 0o755 };
            if m.make_parents {
                let existed = path.is_dir();
                fsops::mkdir_all(&path, mode, owner).map_err(|e| e.to_string())?;
                if existed {
                    return Ok(());
                }
            } else {
                std::fs::create_dir(&path).map_err(|e| format!("mkdir {}: {e}", m.path))?;
                set_meta(&path, mode, owner)?;
            }
            set_time(&path, m.timestamp)
        }
        Some(Action::Mkfile(f)) => {
            let owner = owner_of(root, f.owner.as_ref())?;
            let path = fsops::resolve_in_root(root, &f.path, false).map_err(|e| e.to_string())?;
            std::fs::write(&path, &f.data).map_err(|e| format!("mkfile {}: {e}", f.path))?;
            set_meta(
                &path,
                if f.mode >= 0 { f.mode as u32 } else { 0o644 },
                owner,
            )?;
            set_time(&path, f.timestamp)
        }
        Some(Action::Rm(r))
            if r.allow_wildcard && r.path.split('/').any(fsops::contains_wildcards) =>
        {
            let opts = CopyOptions {
                allow_wildcard: true,
                allow_empty_wildcard: true,
                ..CopyOptions::default()
            };
            let found = fsops::expand_sources(root, &r.path, &opts)
                .map_err(|e| format!("rm {}: {e}", r.path))?;
            if found.is_empty() && !r.allow_not_found {
                return Err(format!("rm {}: no files match", r.path));
            }
            for (rel, path) in found {
                fsops::remove_all(&path).map_err(|e| format!("rm /{rel}: {e}"))?;
            }
            Ok(())
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
            set_time(&path, s.timestamp)
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

/// Sets the mtime of a created entry (not following symlinks); `-1` leaves it as created.
fn set_time(path: &Path, ns: i64) -> Result<(), String> {
    let Some(secs) = time_of(ns) else {
        return Ok(());
    };
    let t = filetime::FileTime::from_unix_time(secs, (ns % 1_000_000_000) as u32);
    filetime::set_symlink_file_times(path, t, t).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(input: i64, secondary: i64, output: i64, copy: bool) -> pb::FileAction {
        pb::FileAction {
            input,
            secondary_input: secondary,
            output,
            action: Some(if copy {
                Action::Copy(pb::FileActionCopy::default())
            } else {
                Action::Mkdir(pb::FileActionMkDir::default())
            }),
        }
    }

    fn op(actions: Vec<pb::FileAction>) -> pb::FileOp {
        pb::FileOp { actions }
    }

    #[test]
    fn linear_chain_runs_in_place() {
        // input 0 → a0 → a1 → a2 (output 0): one snapshot, one layer.
        let p = plan(
            &op(vec![
                action(0, -1, -1, false),
                action(1, -1, -1, false),
                action(2, -1, 0, false),
            ]),
            1,
        )
        .unwrap();
        assert_eq!(p.needed, [0, 1, 2]);
        assert_eq!(p.in_place, [true, true, false]);
        assert_eq!(p.outputs, [2]);
    }

    #[test]
    fn branches_commit_shared_results_and_skip_unused_actions() {
        // a0 on input 0; a1 on scratch (unused); a2 on scratch; a3 copies a2 into a0;
        // a4 copies a2 into scratch: a2 is read twice, so it is committed.
        let p = plan(
            &op(vec![
                action(0, -1, -1, false),
                action(-1, -1, -1, false),
                action(-1, -1, -1, false),
                action(1, 3, 0, true),
                action(-1, 3, 1, true),
            ]),
            1,
        )
        .unwrap();
        assert_eq!(p.needed, [0, 2, 3, 4]);
        assert_eq!(p.refs[3], (Ref::Action(0), Some(Ref::Action(2))));
        assert!(p.in_place[0]);
        assert!(!p.in_place[2]);
        assert_eq!(p.outputs, [3, 4]);
    }

    #[test]
    fn bad_indexes_are_errors() {
        let forward = plan(
            &op(vec![action(2, -1, 0, false), action(0, -1, -1, false)]),
            1,
        );
        assert!(forward.unwrap_err().contains("does not come before"));
        let itself = plan(&op(vec![action(1, -1, 0, false)]), 1);
        assert!(itself.is_err());
        let none = plan(&op(vec![action(0, -1, -1, false)]), 1);
        assert!(none.unwrap_err().contains("no output"));
        let gap = plan(&op(vec![action(0, -1, 1, false)]), 1);
        assert!(gap.unwrap_err().contains("output 0"));
        let negative = plan(&op(vec![action(-2, -1, 0, false)]), 1);
        assert!(negative.is_err());
        assert!(plan(&op(vec![]), 0).is_err());
    }

    #[test]
    fn copy_options_keep_the_pattern_sets_apart_and_prefer_mode_strings() {
        let root = tempfile::tempdir().unwrap();
        let src = SourceDir {
            path: root.path().to_path_buf(),
            exclude: Some(PatternMatcher::new(&["ignored.txt"]).unwrap()),
            include: None,
            root_owned: true,
        };
        let c = pb::FileActionCopy {
            mode: 0,
            mode_str: "u+x,go-w".into(),
            exclude_patterns: vec!["*.bak".into()],
            attempt_unpack_docker_compatibility: true,
            ..Default::default()
        };
        let o = copy_options(root.path(), &c, &src).unwrap();
        assert_eq!(
            o.mode_str.as_ref().map(|m| m.apply(0o644, false)),
            Some(0o744)
        );
        assert!(o.unpack);
        assert!(o.exclude.as_ref().is_some_and(|x| x.matches("a.bak")));
        assert!(!o.exclude.as_ref().is_some_and(|x| x.matches("ignored.txt")));
        assert!(
            o.context_exclude
                .as_ref()
                .is_some_and(|x| x.matches("ignored.txt"))
        );
        assert!(o.include.is_none());
        // Octal alone: -1 keeps, 0 is 0000.
        let keep = pb::FileActionCopy {
            mode: -1,
            ..Default::default()
        };
        let o = copy_options(root.path(), &keep, &src).unwrap();
        assert_eq!((o.mode, o.mode_str.is_none()), (None, true));
        let zero = pb::FileActionCopy::default();
        assert_eq!(
            copy_options(root.path(), &zero, &src).unwrap().mode,
            Some(0)
        );
        let bad = pb::FileActionCopy {
            mode_str: "u+q".into(),
            ..Default::default()
        };
        assert!(copy_options(root.path(), &bad, &src).is_err());
    }
}
