//! `ws_read_client`: see the table in `src/fuzzing/mod.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::ws_read(
    gateway::transport::Role::Client,
    data
));
