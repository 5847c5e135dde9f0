//! The solver: executes a validated LLB graph, each vertex at most once, independent vertices
//! concurrently.
//!
//! Every vertex gets a [`tokio::sync::OnceCell`]; solving a vertex first solves its inputs
//! (concurrently, through their cells) and then runs its op. Two parents sharing an input wait on
//! the same cell, so the input runs once. Exec ops take a permit from a semaphore that bounds how
//! many containers run at once. The first error wins: `try_join_all` drops the sibling futures,
//! which cancels their work (containers are cleaned up by their guards).

mod cachekey;
mod lookup;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, try_join_all};
use memobuild_proto::{ParsedDefinition, attr, pb};
use tokio::sync::{OnceCell, Semaphore};

use crate::Build;
use crate::cache::ActionRecord;
use crate::cache::history::VertexReport;
use crate::layer::{LayerBlob, LayerOptions};
use crate::patterns::PatternMatcher;
use crate::progress::{Progress, ProgressEvent, VertexState};

/// A filesystem produced by a vertex: the layers that make it, bottom first (none: scratch).
///
/// The layers are the whole truth; a containerd snapshot of them is named by their chain ID and
/// made only when something must run on top of it ([`crate::Build::ensure_snapshot`]). A cache
/// hit therefore costs no snapshot work at all unless a later vertex executes.
#[derive(Debug, Clone, Default)]
pub struct FsRef {
    /// The layer chain.
    pub layers: Vec<LayerBlob>,
}

/// A directory on the host (a `local://` source) with the filters its source op carries.
#[derive(Debug, Clone)]
pub struct LocalRef {
    /// The directory.
    pub path: PathBuf,
    /// Paths to leave out (`local.excludepatterns`, i.e. `.dockerignore`).
    pub exclude: Option<PatternMatcher>,
    /// If set, only these paths are visible (`local.includepattern(s)`).
    pub include: Option<PatternMatcher>,
    /// Whether the files' owners are content (see [`crate::caller::LocalDir`]); if not,
    /// they read as root's.
    pub keeps_owners: bool,
}

/// One output of a vertex.
#[derive(Debug, Clone)]
pub enum Output {
    /// A snapshot-backed filesystem.
    Fs(FsRef),
    /// A host directory.
    Local(LocalRef),
}

/// Options of one solve.
#[derive(Debug, Clone)]
pub struct SolveOptions {
    /// How layers are written.
    pub layer: LayerOptions,
    /// Maximum number of containers running at once.
    pub max_parallel_exec: usize,
    /// Platform for ops that don't name one.
    pub platform: pb::Platform,
    /// Execute every vertex even when the cache has its result (results are still recorded).
    pub no_cache: bool,
    /// The last build of the same target: when set, each vertex that executes says why in
    /// its progress (a log line `[memobuild] runs because …`).
    pub explain_against: Option<Arc<crate::cache::history::History>>,
}

/// A failed vertex, with what a user needs to find it: its name and, when the definition has
/// a source map, the file and line it came from.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}{}: {message}", location.as_ref().map(|l| format!("{l}: ")).unwrap_or_default(), name)]
pub struct SolveError {
    /// Digest of the failing vertex (empty for errors outside any vertex).
    pub vertex: String,
    /// Its progress name, e.g. `[2/4] RUN make`.
    pub name: String,
    /// `file:line` from the source map, if known.
    pub location: Option<Box<str>>,
    /// What went wrong.
    pub message: String,
    /// The last lines the failing process printed, if any.
    pub output_tail: Vec<String>,
    /// Cacheable vertices that had finished when the solve failed (set by [`solve`]; shared,
    /// which keeps the error small).
    pub completed: Arc<Vec<VertexReport>>,
}

/// Result of a solve: the terminal vertex's output.
#[derive(Debug, Clone)]
pub struct SolveResult {
    /// The filesystem the definition describes (empty when it is a local directory).
    pub fs: FsRef,
    /// The local directory the definition describes, when its terminal is a local source
    /// (a gateway client reading files of it); exports need a filesystem instead.
    pub local: Option<LocalRef>,
    /// Every cacheable vertex with its key and whether it was a hit, in completion order.
    pub vertices: Vec<VertexReport>,
}

type Cell = Arc<OnceCell<Result<Arc<Vec<Output>>, SolveError>>>;

pub(crate) struct Solve {
    pub(crate) build: Build,
    pub(crate) def: ParsedDefinition,
    pub(crate) opts: SolveOptions,
    pub(crate) progress: Progress,
    pub(crate) exec_slots: Semaphore,
    cells: HashMap<String, Cell>,
    reports: std::sync::Mutex<Vec<VertexReport>>,
    /// Fingerprints of what a reader selects from a local directory, by selection: several
    /// steps binding or copying the same files walk them once per build.
    pub(crate) fingerprints: crate::solver::cachekey::FingerprintMemo,
}

/// Solves `def` on `worker`.
pub async fn solve(
    build: &Build,
    def: ParsedDefinition,
    opts: SolveOptions,
    progress: Progress,
) -> Result<SolveResult, SolveError> {
    let cells = def
        .ops()
        .iter()
        .map(|o| (o.digest.clone(), Cell::default()))
        .collect();
    let terminal = def.terminal().clone();
    let solve = Arc::new(Solve {
        build: build.clone(),
        exec_slots: Semaphore::new(opts.max_parallel_exec.max(1)),
        def,
        opts,
        progress,
        cells,
        reports: Default::default(),
        fingerprints: Default::default(),
    });
    let outputs = match solve.clone().vertex(terminal.digest.clone()).await {
        Ok(o) => o,
        Err(mut e) => {
            e.completed = Arc::new(solve.reports.lock().map(|r| r.clone()).unwrap_or_default());
            return Err(e);
        }
    };
    let out = usize::try_from(terminal.index)
        .ok()
        .and_then(|i| outputs.get(i))
        .cloned()
        .ok_or_else(|| SolveError {
            vertex: terminal.digest.clone(),
            name: solve.name(&terminal.digest),
            location: None,
            message: format!("vertex has no output {}", terminal.index),
            output_tail: Vec::new(),
            completed: Arc::default(),
        })?;
    let vertices = solve.reports.lock().map(|r| r.clone()).unwrap_or_default();
    match out {
        Output::Fs(fs) => Ok(SolveResult {
            fs,
            local: None,
            vertices,
        }),
        Output::Local(l) => Ok(SolveResult {
            fs: FsRef::default(),
            local: Some(l),
            vertices,
        }),
    }
}

impl Solve {
    fn vertex(
        self: Arc<Self>,
        digest: String,
    ) -> BoxFuture<'static, Result<Arc<Vec<Output>>, SolveError>> {
        async move {
            let Some(cell) = self.cells.get(&digest).cloned() else {
                return Err(self.error(&digest, "vertex is not part of the definition".into()));
            };
            cell.get_or_init(|| self.clone().run(digest.clone()))
                .await
                .clone()
        }
        .boxed()
    }

    async fn run(self: Arc<Self>, digest: String) -> Result<Arc<Vec<Output>>, SolveError> {
        let Some(op) = self.def.get(&digest).cloned() else {
            return Err(self.error(&digest, "vertex is not part of the definition".into()));
        };
        let inputs = try_join_all(op.inputs.clone().into_iter().map(|input| {
            let s = self.clone();
            let d = input.digest.clone();
            let index = input.index;
            async move {
                let outs = s.clone().vertex(d.clone()).await?;
                usize::try_from(index)
                    .ok()
                    .and_then(|i| outs.get(i).cloned())
                    .ok_or_else(|| s.error(&d, format!("vertex has no output {index}")))
            }
        }))
        .await?;

        let name = self.name(&digest);
        let started = Instant::now();
        let key = self.cache_key(&digest, &op, &inputs).await?;
        // `--no-cache` for the whole solve, or for this vertex (`OpMetadata.ignore_cache`, which
        // the Dockerfile frontend sets for the stages `no-cache` names): it runs, and its result
        // is recorded for later builds.
        let ignore_cache =
            self.opts.no_cache || self.def.metadata(&digest).is_some_and(|m| m.ignore_cache);
        // Held while this vertex executes: another build of the same state directory that
        // reaches it meanwhile waits, then finds the result in the cache.
        let mut _running = None;
        if let Some((key, _)) = &key
            && !ignore_cache
        {
            if let Some(outs) = self.cached(&digest, &name, key, &op, started).await {
                return Ok(outs);
            }
            let path = self.build.engine.state().vertex_lock(key);
            match crate::state::VertexLock::acquire(&path).await {
                Ok((lock, waited)) => {
                    if waited
                        && let Some(outs) = self.cached(&digest, &name, key, &op, started).await
                    {
                        return Ok(outs);
                    }
                    _running = Some(lock);
                }
                Err(e) => tracing::warn!("cannot lock `{}`: {e}", path.display()),
            }
        }
        self.progress
            .vertex(&digest, &name, VertexState::Started, None, None);
        if let (Some(previous), Some((key, components))) = (&self.opts.explain_against, &key) {
            let reasons = previous.reasons(
                &name,
                key,
                Some(components),
                self.build.engine.cache(),
                ignore_cache,
            );
            self.progress.send(ProgressEvent::Log {
                digest: digest.clone(),
                stream: crate::progress::LogStream::Stdout,
                data: format!("[memobuild] runs because {}\n", reasons.join("; ")).into_bytes(),
            });
        }
        let platform = op.platform.clone();
        let exec_platform = match &op.op {
            Some(pb::op::Op::Exec(_)) => op.platform.clone(),
            _ => None,
        };
        // Boxing each op's future here checks `Send` with concrete lifetimes; left to the outer
        // `boxed()`, rustc cannot prove it for the higher-ranked ones (rust-lang/rust#110338).
        let fut: BoxFuture<'_, Result<Vec<Output>, SolveError>> = match op.op {
            Some(pb::op::Op::Source(src)) => self.source(&digest, platform, src).boxed(),
            Some(pb::op::Op::Exec(exec)) => self.exec(&digest, exec, inputs).boxed(),
            Some(pb::op::Op::File(file)) => self.file(&digest, file, inputs).boxed(),
            Some(pb::op::Op::Merge(merge)) => self.merge(&digest, merge, inputs).boxed(),
            Some(pb::op::Op::Diff(diff)) => self.diff(&digest, diff, inputs).boxed(),
            Some(pb::op::Op::Build(_)) => {
                unsupported(self.error(&digest, "build ops are not supported".into()))
            }
            Some(pb::op::Op::Passthrough(_)) => {
                unsupported(self.error(&digest, "passthrough ops are not supported".into()))
            }
            None => unsupported(self.error(&digest, "op has no operation".into())),
        };
        let mut result = fut.await;
        if let (Err(e), Some(p)) = (&mut result, &exec_platform)
            && let Some(note) = crate::emulation::exec_format_note(p, &e.output_tail)
        {
            e.message = format!("{}: {note}", e.message);
        }
        match result {
            Ok(outs) => {
                // Recorded when every output is a filesystem (all of an exec's or file op's are).
                let chains: Option<Vec<Vec<LayerBlob>>> = outs
                    .iter()
                    .map(|o| match o {
                        Output::Fs(fs) => Some(fs.layers.clone()),
                        Output::Local(_) => None,
                    })
                    .collect();
                if let (Some((key, components)), Some(mut chains)) = (key, chains)
                    && !chains.is_empty()
                {
                    self.report(&digest, &name, &key, false, started.elapsed());
                    let extra_outputs = chains.split_off(1);
                    let record = ActionRecord {
                        key,
                        layers: chains.pop().unwrap_or_default(),
                        extra_outputs,
                        name: name.clone(),
                        duration_ms: started.elapsed().as_millis() as u64,
                        components,
                    };
                    self.store(record).await;
                }
                self.progress.vertex(
                    &digest,
                    &name,
                    VertexState::Completed,
                    Some(started.elapsed()),
                    None,
                );
                Ok(Arc::new(outs))
            }
            Err(e) => {
                self.progress.vertex(
                    &digest,
                    &name,
                    VertexState::Error,
                    Some(started.elapsed()),
                    Some(e.message.clone()),
                );
                Err(e)
            }
        }
    }

    /// The vertex's outputs from the cache, reported as cached, if a tier has its record.
    async fn cached(
        &self,
        digest: &str,
        name: &str,
        key: &str,
        op: &pb::Op,
        started: Instant,
    ) -> Option<Arc<Vec<Output>>> {
        let rec = self.lookup(key).await?;
        // A record with another number of outputs than the op has is not this op's.
        if output_count(op).is_some_and(|n| n != rec.output_count()) {
            return None;
        }
        self.report(digest, name, key, true, started.elapsed());
        self.progress
            .vertex(digest, name, VertexState::Cached, None, None);
        let outs = rec
            .outputs()
            .map(|layers| {
                Output::Fs(FsRef {
                    layers: layers.to_vec(),
                })
            })
            .collect();
        Some(Arc::new(outs))
    }

    fn report(&self, digest: &str, name: &str, key: &str, cached: bool, took: Duration) {
        if let Ok(mut r) = self.reports.lock() {
            r.push(VertexReport {
                digest: digest.to_string(),
                name: name.to_string(),
                key: key.to_string(),
                cached,
                duration_ms: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            });
        }
    }

    /// The progress name of a vertex: `llb.customname`, else something derived from the op.
    pub(crate) fn name(&self, digest: &str) -> String {
        if let Some(n) = self
            .def
            .metadata(digest)
            .and_then(|m| m.description.get(attr::ATTR_LLB_CUSTOMNAME))
        {
            return n.clone();
        }
        match self.def.get(digest).and_then(|p| p.op.as_ref()) {
            Some(pb::op::Op::Source(s)) => s.identifier.clone(),
            Some(pb::op::Op::Exec(e)) => e
                .meta
                .as_ref()
                .map(|m| m.args.join(" "))
                .unwrap_or_default(),
            Some(pb::op::Op::File(_)) => "file operation".into(),
            _ => digest.to_string(),
        }
    }

    /// `file:line` (or `file:line-line`) of a vertex from the definition's source map.
    pub(crate) fn location(&self, digest: &str) -> Option<String> {
        let src = self.def.source()?;
        let loc = src.locations.get(digest)?.locations.first()?;
        let info = src.infos.get(usize::try_from(loc.source_index).ok()?)?;
        let range = loc.ranges.first()?;
        let start = range.start.as_ref()?.line;
        let end = range.end.as_ref().map(|p| p.line).unwrap_or(start);
        Some(if end > start {
            format!("{}:{}-{}", info.filename, start, end)
        } else {
            format!("{}:{}", info.filename, start)
        })
    }

    pub(crate) fn error(&self, digest: &str, message: String) -> SolveError {
        SolveError {
            vertex: digest.to_string(),
            name: self.name(digest),
            location: self.location(digest).map(String::into_boxed_str),
            message,
            output_tail: Vec::new(),
            completed: Arc::default(),
        }
    }
}

/// How many outputs an exec or file op produces (its highest output index + 1), `None` for
/// other ops (one output, or decided by what runs).
pub(crate) fn output_count(op: &pb::Op) -> Option<usize> {
    let indexes: Vec<i64> = match &op.op {
        Some(pb::op::Op::Exec(e)) => e.mounts.iter().map(|m| m.output).collect(),
        Some(pb::op::Op::File(f)) => f.actions.iter().map(|a| a.output).collect(),
        _ => return None,
    };
    Some(
        indexes
            .into_iter()
            .filter_map(|i| usize::try_from(i).ok())
            .map(|i| i.saturating_add(1))
            .max()
            .unwrap_or(0),
    )
}

fn unsupported<'a>(e: SolveError) -> BoxFuture<'a, Result<Vec<Output>, SolveError>> {
    futures::future::ready(Err(e)).boxed()
}
