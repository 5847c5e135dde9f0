//! Jobs: one per `Control/Solve` (BuildKit's `Ref`), found by `Status` and by the LLBBridge
//! calls that carry `buildkit-controlapi-buildid`.
//!
//! A job may be asked for before its Solve arrives (clients start `Status` and the gateway
//! client at the same time as Solve): `Status` creates it, the others wait a little for the
//! Solve to start it ([`Jobs::started`]). The job holds the build, the results the gateway
//! client asked for (by id), and the channel its `Return` answers the Solve through.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use memobuild_proto::pb;
use memobuild_worker::Build;
use memobuild_worker::progress::Progress;
use memobuild_worker::solver::FsRef;
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::daemon::status::StatusHub;

/// How long an LLBBridge call waits for its Solve to start (BuildKit: 3 s).
pub const GATEWAY_WAIT: Duration = Duration::from_secs(3);

/// How long a finished job stays findable (a `Status` call may come late).
const KEEP_FINISHED: Duration = Duration::from_secs(10);

/// What a solve produced, as the gateway hands it out by id.
#[derive(Debug, Clone)]
pub enum Output {
    /// Nothing (scratch).
    Scratch,
    /// A filesystem: a layer chain.
    Fs(FsRef),
    /// A directory of this machine (a solved local source).
    Local(PathBuf),
}

/// A result a gateway client holds a reference to.
#[derive(Debug, Clone)]
pub struct SolvedRef {
    /// Its filesystem.
    pub output: Output,
    /// The definition that produces it.
    pub definition: Option<pb::Definition>,
}

impl SolvedRef {
    /// Runs `f` on the directory holding the result's files (an empty one for scratch; a
    /// layer chain is mounted for the call).
    pub async fn with_files<R: Send + 'static>(
        self,
        build: &Build,
        f: impl FnOnce(&std::path::Path) -> Result<R, tonic::Status> + Send + 'static,
    ) -> Result<R, tonic::Status> {
        use tonic::Status;
        match self.output {
            Output::Local(dir) => tokio::task::spawn_blocking(move || f(&dir))
                .await
                .map_err(|e| Status::internal(e.to_string()))?,
            Output::Scratch => {
                let dir = tempfile::tempdir().map_err(|e| Status::internal(e.to_string()))?;
                f(dir.path())
            }
            Output::Fs(fs) => build
                .with_mounted(&fs, f)
                .await
                .map_err(|e| Status::internal(e.to_string()))?,
        }
    }
}

/// What the gateway client returned: a result (a reference and metadata) or its error.
#[derive(Debug, Clone)]
pub enum Returned {
    /// The build's result.
    Result {
        /// The returned reference, if any (`None`: an empty result).
        solved: Option<SolvedRef>,
        /// Its metadata (`containerimage.config`, …).
        metadata: std::collections::BTreeMap<String, Vec<u8>>,
    },
    /// The client's build function failed.
    Error(tonic::Status),
}

/// One build request.
pub struct Job {
    /// The client's `Ref`.
    pub id: String,
    /// Its progress, for `Status`.
    pub status: Arc<StatusHub>,
    /// Where the build reports.
    pub progress: Progress,
    /// Cancelled when the client goes away or the daemon stops.
    pub cancel: CancellationToken,
    /// Work the gateway client started (its solves), which the job waits for before its
    /// build ends.
    pub tasks: tokio_util::task::TaskTracker,
    /// Directories the daemon serves for this build's local names (a context given as a URL).
    pub provided: Arc<crate::daemon::remote_context::ProvidedLocals>,
    /// Cacheable steps the job's solves executed and took from the cache.
    steps: Mutex<(u64, u64)>,
    started: watch::Sender<bool>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    build: Option<Build>,
    results: HashMap<String, SolvedRef>,
    next_id: u64,
    returned: Option<oneshot::Sender<Returned>>,
    session: String,
    entitlements: Vec<String>,
    granted: Vec<String>,
    /// The Solve's frontend inputs, which a client-side frontend asks for (`Inputs`).
    inputs: BTreeMap<String, pb::Definition>,
    /// The last frontend a client-side frontend (buildx) ran through the gateway, with its
    /// options: what the build's provenance names as its request.
    frontend_request: Option<(String, BTreeMap<String, String>)>,
}

impl Job {
    fn new(id: &str) -> Arc<Self> {
        let status = StatusHub::new();
        Arc::new(Job {
            id: id.to_owned(),
            progress: status.progress(),
            status,
            cancel: CancellationToken::new(),
            tasks: tokio_util::task::TaskTracker::new(),
            provided: Arc::default(),
            steps: Mutex::default(),
            started: watch::channel(false).0,
            state: Mutex::default(),
        })
    }

    /// Starts the job with its build, for the client's session, with the entitlements its
    /// Solve asked for and those the daemon grants; the receiver gets what the gateway client
    /// returns.
    pub fn start(
        &self,
        build: Build,
        session: &str,
        entitlements: &[String],
        granted: &[String],
    ) -> oneshot::Receiver<Returned> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut s) = self.state.lock() {
            s.build = Some(build);
            s.returned = Some(tx);
            s.session = session.to_owned();
            s.entitlements = entitlements.to_vec();
            s.granted = granted.to_vec();
        }
        self.started.send_replace(true);
        rx
    }

    /// Sets the frontend inputs the job's Solve carried.
    pub fn set_inputs(&self, inputs: BTreeMap<String, pb::Definition>) {
        if let Ok(mut s) = self.state.lock() {
            s.inputs = inputs;
        }
    }

    /// The frontend inputs the job's Solve carried.
    pub fn inputs(&self) -> BTreeMap<String, pb::Definition> {
        self.state
            .lock()
            .map(|s| s.inputs.clone())
            .unwrap_or_default()
    }

    /// Adds the cacheable steps of one solve to the job's counts.
    pub fn count_steps(&self, vertices: &[memobuild_worker::cache::history::VertexReport]) {
        let cached = vertices.iter().filter(|v| v.cached).count() as u64;
        if let Ok(mut s) = self.steps.lock() {
            s.0 += vertices.len() as u64 - cached;
            s.1 += cached;
        }
    }

    /// Records a frontend the gateway client ran (see [`Job::frontend_request`]).
    pub fn set_frontend_request(&self, frontend: &str, opts: &BTreeMap<String, String>) {
        if let Ok(mut s) = self.state.lock() {
            s.frontend_request = Some((frontend.to_owned(), opts.clone()));
        }
    }

    /// The last frontend the gateway client ran, and its options.
    pub fn frontend_request(&self) -> Option<(String, BTreeMap<String, String>)> {
        self.state.lock().ok()?.frontend_request.clone()
    }

    /// Cacheable steps executed and taken from the cache, over the job's solves.
    pub fn step_counts(&self) -> (u64, u64) {
        self.steps.lock().map(|s| *s).unwrap_or_default()
    }

    /// Whether a Solve has started this job.
    pub fn is_started(&self) -> bool {
        *self.started.borrow()
    }

    /// The job's build.
    pub fn build(&self) -> Option<Build> {
        self.state.lock().ok()?.build.clone()
    }

    /// The session of the job's Solve.
    pub fn session(&self) -> String {
        self.state
            .lock()
            .map(|s| s.session.clone())
            .unwrap_or_default()
    }

    /// Refuses `def` if a step needs an entitlement the job's Solve did not ask for or the
    /// daemon does not grant.
    pub fn check_entitlements(&self, def: &pb::Definition) -> Result<(), tonic::Status> {
        let (asked, granted) = self
            .state
            .lock()
            .map(|s| (s.entitlements.clone(), s.granted.clone()))
            .unwrap_or_default();
        crate::pipeline::check_entitlements(def, &asked, Some(&granted))
            .map_err(tonic::Status::permission_denied)
    }

    /// Keeps `solved` under a new id.
    pub fn add_result(&self, solved: SolvedRef) -> String {
        let Ok(mut s) = self.state.lock() else {
            return String::new();
        };
        s.next_id += 1;
        let id = format!("{}-{}", self.id, s.next_id);
        s.results.insert(id.clone(), solved);
        id
    }

    /// The result with id `id`.
    pub fn result(&self, id: &str) -> Option<SolvedRef> {
        self.state.lock().ok()?.results.get(id).cloned()
    }

    /// Hands the gateway client's answer to the waiting Solve; false if there is none (no
    /// Solve in the gateway mode, or a second Return).
    pub fn give_return(&self, returned: Returned) -> bool {
        let tx = self.state.lock().ok().and_then(|mut s| s.returned.take());
        match tx {
            Some(tx) => tx.send(returned).is_ok(),
            None => false,
        }
    }

    /// Runs `work` for the job in a task of its own, so that it is cancelled with the job (not
    /// when the call that asked for it goes away) and waited for before the build ends.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, tonic::Status>> + Send + 'static,
    ) -> Result<T, tonic::Status> {
        let cancel = self.cancel.clone();
        let handle = self.tasks.spawn(async move {
            tokio::select! {
                r = work => r,
                () = cancel.cancelled() => Err(tonic::Status::cancelled("the build was cancelled")),
            }
        });
        handle
            .await
            .map_err(|e| tonic::Status::internal(format!("a build task failed: {e}")))?
    }

    /// Cancels the gateway client's work and waits for it to end (containers killed, mounts
    /// released) before the build's lease goes.
    pub async fn stop_tasks(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Drops the build and results (the Solve is over) and ends the status streams.
    pub fn finish(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.build = None;
            s.results.clear();
            s.returned = None;
        }
        self.status.close();
    }
}

/// All jobs, by id.
#[derive(Default)]
pub struct Jobs {
    by_id: Mutex<HashMap<String, Arc<Job>>>,
}

impl Jobs {
    /// No jobs.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Job `id`, created if new.
    pub fn get_or_create(&self, id: &str) -> Arc<Job> {
        let Ok(mut m) = self.by_id.lock() else {
            return Job::new(id);
        };
        m.entry(id.to_owned())
            .or_insert_with(|| Job::new(id))
            .clone()
    }

    /// Job `id` once a Solve has started it, waiting up to `wait`.
    pub async fn started(&self, id: &str, wait: Duration) -> Option<Arc<Job>> {
        let job = self.get_or_create(id);
        let mut started = job.started.subscribe();
        let ok = tokio::time::timeout(wait, started.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok());
        ok.then_some(job)
    }

    /// Every running job.
    pub fn all(&self) -> Vec<Arc<Job>> {
        self.by_id
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Forgets job `id` after a while (a late `Status` still finds it and its history).
    pub fn remove_later(self: &Arc<Self>, id: &str) {
        let (jobs, id) = (self.clone(), id.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(KEEP_FINISHED).await;
            if let Ok(mut m) = jobs.by_id.lock() {
                m.remove(&id);
            }
        });
    }

    /// Forgets job `id` now if no Solve ever started it (a `Status` for a job that never came).
    pub fn remove_if_unstarted(&self, id: &str) {
        if let Ok(mut m) = self.by_id.lock()
            && m.get(id).is_some_and(|j| !j.is_started())
        {
            m.remove(id);
        }
    }
}
