//! The state every route shares. The analytics and webhook routes (`api`) will add their own
//! fields here (a database handle, the webhook queue) beside the cache's.

use std::sync::Arc;

use crate::server::auth::Auth;
use crate::server::gc::GcHandle;
use crate::server::lru::LruIndex;
use crate::server::store::Store;

/// Shared by all handlers; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Objects on disk.
    pub store: Arc<Store>,
    /// Sizes and use order of the objects, for garbage collection.
    pub index: Arc<LruIndex>,
    /// Token rules.
    pub auth: Arc<Auth>,
    /// Wakes the garbage collector.
    pub gc: GcHandle,
}
