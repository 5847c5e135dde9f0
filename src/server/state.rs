//! The state every route shares.

use std::sync::Arc;

use crate::server::auth::Auth;
use crate::server::builds::BuildLog;
use crate::server::gc::GcHandle;
use crate::server::lru::LruIndex;
use crate::server::metrics::Metrics;
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
    pub builds: Arc<BuildLog>,
    /// Webhook deliveries.
    pub webhooks: Arc<Webhooks>,
}
