//! BuildKit sessions: the connection a client opens beside its Solve so the daemon can call
//! back into it for local files, credentials, secrets and outputs.

pub mod headers;
pub mod transport;
