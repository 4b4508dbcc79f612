//! `proxy_header`: see the table in `src/fuzzing/mod.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::proxy_header(data));
