//! `ws_read_server`: see the table in `src/fuzzing/mod.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| gateway::fuzzing::ws_read(
    gateway::transport::Role::Server,
    data
));
