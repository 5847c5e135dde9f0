//! Transfers over in-memory channels: real sender to real receiver on temporary trees, and
//! scripted hostile senders against the receiver.

mod harness;
mod hostile;
mod incremental;
mod protocol;
mod roundtrip;
mod script;
