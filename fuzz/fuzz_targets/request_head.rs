//! `request_head`: see the table in `src/fuzzing/mod.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::request_head(data));
