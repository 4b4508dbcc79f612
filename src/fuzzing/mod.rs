//! Entry points for the fuzz targets in `fuzz/` (see `docs/FUZZING.md`): every
//! parser of bytes that someone else controls, each fed arbitrary input, each
//! asserting what must hold whatever the input. Compiled for `cargo fuzz`
//! (`--cfg fuzzing`) and for this crate's unit tests, which run the committed
//! seed corpora through them so that the entry points cannot rot.
//!
//! | target | what it feeds | what it asserts |
//! |---|---|---|
//! | `ws_read_server`, `ws_read_client` | bytes, cut at arbitrary points, into the WebSocket codec in each role | no panic or hang; never more data out than in; no reply larger than about twice the input |
//! | `mux_input` | frames, cut anywhere, into a yamux session as gateway and as agent, interleaved with reads, writes, half-closes and drops of its streams | the live-stream count matches the streams held and returns to zero; queued output stays bounded |
//! | `handshake` | the `/ws` upgrade request's headers, the client's own request built from arbitrary values, and text as hello/control messages | an accepted offer's `101` is accepted by the client check; messages round-trip |
//! | `config` | TOML text and `GATEWAY_*` variables into the loader | an accepted configuration validates, and loads again from its own `--check` output |
//! | `proxy_header` | the first bytes of a connection from a trusted load balancer into the PROXY protocol reader (v1 and v2) | it reads no byte past the header it accepts, at most 1 KiB, and the parser agrees with it |
//! | `request_head` | a request line and headers into routing, `/forward` targets and header rewriting | no CR/LF/NUL in any outgoing header, no hop-by-hop header forwarded, the upstream target stays a path |

mod codec;
mod http;

pub use self::codec::{mux_input, proxy_header, ws_read};
pub use self::http::{config, handshake, request_head};

/// Reads fuzz input a byte or a slice at a time; runs dry as zeros.
pub(crate) struct Input<'a>(pub(crate) &'a [u8]);

impl<'a> Input<'a> {
    pub(crate) fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    pub(crate) fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::transport::Role;

    /// Every committed seed, and a few degenerate inputs, through every entry point.
    #[test]
    fn seeds_pass_every_target() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        type Target = (&'static str, fn(&[u8]));
        let targets: [Target; 7] = [
            ("ws_read_server", |d| ws_read(Role::Server, d)),
            ("ws_read_client", |d| ws_read(Role::Client, d)),
            ("mux_input", mux_input),
            ("handshake", handshake),
            ("config", config),
            ("request_head", request_head),
            ("proxy_header", proxy_header),
        ];
        for (name, run) in targets {
            run(b"");
            run(&[0xff; 64]);
            let dir = seeds.join(name);
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
            let mut count = 0;
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                run(&std::fs::read(&path).expect("a readable seed"));
                count += 1;
            }
            assert!(count > 0, "no seeds for {name}");
        }
    }
}
