//! `memobuild_proto::parse_definition` on arbitrary bytes: a validated Definition or an error,
//! never a panic, a hang or unbounded memory. On success the accessors a solver uses are walked
//! too, so a definition that validates but breaks them is found as well.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(def) = memobuild_proto::parse_definition(bytes) {
        let terminal = def.terminal().clone();
        for op in def.ops() {
            let _ = def.get(&op.digest);
            let _ = def.metadata(&op.digest);
        }
        let _ = def.get(&terminal.digest);
        let _ = def.source();
    }
});
