//! In-process tests of the session services.
