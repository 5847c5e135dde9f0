//! The state every route shares.

use std::sync::Arc;
use std::time::Duration;

use crate::server::auth::Auth;
use crate::server::gc::GcHandle;
use crate::server::lru::LruIndex;
use crate::server::metrics::Metrics;
use crate::server::records::BuildStore;
use crate::server::store::Store;
use crate::server::webhooks::Webhooks;

/// Shared by all handlers; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Objects on disk.
    pub store: Arc<Store>,
    /// Sizes and use order of the objects, for garbage collection.
    pub index: Arc<LruIndex>,
    /// Token rules.
    pub auth: Arc<Auth>,
    /// Wakes the garbage collector.
    pub gc: GcHandle,
    /// Cache request counters.
    pub metrics: Arc<Metrics>,
    /// Build records.
    pub builds: Arc<dyn BuildStore>,
    /// Webhook deliveries.
    pub webhooks: Arc<Webhooks>,
    /// Tells open dashboards (`GET /events`) that a build was recorded: its summary as JSON.
    pub events: tokio::sync::broadcast::Sender<String>,
    /// Becomes `true` when the server shuts down, so that event streams end (a graceful
    /// shutdown waits for every open response).
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// Bounds on one request's body.
    pub limits: BodyLimits,
}

/// Bounds on one request's body, so that a client cannot hold a connection or fill the disk
/// by sending slowly or endlessly.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// A body that sends nothing for this long is abandoned (`--body-idle-timeout`).
    pub idle_timeout: Duration,
    /// The largest upload taken (`--max-body-size`).
    pub max_size: u64,
}
