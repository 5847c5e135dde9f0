//! `memobuild_frontend::parse` on arbitrary UTF-8: it returns an AST or an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|dockerfile: &str| {
    let _ = memobuild_frontend::parse(dockerfile, "Dockerfile");
});
