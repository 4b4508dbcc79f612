//! The codecs' targets: `ws_read_server`, `ws_read_client`, `mux_input`.

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Input;
use crate::transport::mux::{Mode, Parser, Shared};
use crate::transport::{Role, StreamIo, WsIo, close_code};

/// A connection that delivers `input` in pieces of 1 to `max_piece` bytes, then
/// EOF, and takes whatever is written, counting it.
struct Scripted<'a> {
    input: &'a [u8],
    pieces: Input<'a>,
    max_piece: usize,
    written: Rc<Cell<usize>>,
}

impl AsyncRead for Scripted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let piece = 1 + usize::from(self.pieces.byte().unwrap_or(255)) % self.max_piece;
        let n = piece.min(self.input.len()).min(buf.remaining());
        let (head, rest) = self.input.split_at(n);
        buf.put_slice(head);
        self.input = rest;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Scripted<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.set(self.written.get() + buf.len());
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

thread_local! {
    /// The codec arms timers (the close deadline), which need a runtime.
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

/// `ws_read_server` and `ws_read_client`: the first byte says how the rest is cut
/// into socket reads, the second how large the reader's reads are.
pub fn ws_read(role: Role, data: &[u8]) {
    let mut input = Input(data);
    let cut = usize::from(input.byte().unwrap_or(0)) + 1;
    let sizes = usize::from(input.byte().unwrap_or(0));
    let payload = input.0;
    let written = Rc::new(Cell::new(0));
    let io = Scripted {
        input: payload,
        pieces: Input(payload),
        max_piece: cut,
        written: written.clone(),
    };
    let mut ws = WsIo::new(io, role, None, close_code::NORMAL);
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let mut buf = [0u8; 8192];
            let mut got = 0usize;
            for round in 0usize.. {
                let want = 1 + (sizes * 257 + round * 131) % buf.len();
                let mut rb = ReadBuf::new(&mut buf[..want]);
                let read = if round % 3 == 2 {
                    poll_fn(|cx| ws.poll_data_ready(cx)).await.map(|_| ())
                } else {
                    poll_fn(|cx| ws.poll_read_into(cx, &mut rb)).await
                };
                match read {
                    Ok(()) if rb.filled().is_empty() && round % 3 != 2 => break,
                    Ok(()) => got += rb.filled().len(),
                    Err(_) => break,
                }
                assert!(got <= payload.len(), "more data out than in");
                while ws.take_text().is_some() {}
            }
        })
    });
    drop(ws);
    let written = written.get();
    assert!(
        written <= 2 * payload.len() + 256,
        "{written} bytes of replies to {} bytes",
        payload.len()
    );
}

/// `mux_input`: a script of operations on one session. Each step is a byte: feed
/// the next bytes as input, read from, write to, half-close or drop a stream, or
/// take the output (and, as the gateway, open a stream).
pub fn mux_input(data: &[u8]) {
    let mut input = Input(data);
    let mode = match input.byte().unwrap_or(0) & 1 {
        0 => Mode::Client,
        _ => Mode::Server,
    };
    let shared = Shared::new(mode);
    let waker = Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut streams: Vec<StreamIo> = Vec::new();
    let mut rbuf = BytesMut::new();
    let mut parser = Parser::default();
    let mut scratch = vec![0u8; 4096];
    while let Some(op) = input.byte() {
        let pick = usize::from(input.byte().unwrap_or(0));
        match op % 8 {
            0..=2 => {
                rbuf.extend_from_slice(input.take(pick));
                match shared.on_input(&mut rbuf, &mut parser) {
                    Ok(opened) => streams.extend(opened),
                    Err(_) => shared.end("protocol error"),
                }
            }
            3..=6 if !streams.is_empty() => {
                let i = pick % streams.len();
                let s = Pin::new(&mut streams[i]);
                match op % 8 {
                    3 => {
                        let mut rb = ReadBuf::new(&mut scratch[..1 + pick * 16]);
                        let _ = s.poll_read(&mut cx, &mut rb);
                    }
                    4 => {
                        let _ = s.poll_write(&mut cx, &scratch[..1 + pick * 16]);
                    }
                    5 => {
                        let _ = s.poll_shutdown(&mut cx);
                    }
                    _ => drop(streams.swap_remove(i)),
                }
            }
            _ => {
                let out = shared.take_output(waker);
                assert!(out.len() <= 1 << 20, "{} bytes of output queued", out.len());
                if mode == Mode::Client
                    && let Ok(s) = shared.open()
                {
                    streams.push(s);
                }
            }
        }
        assert_eq!(
            shared.count().get(),
            streams.len(),
            "live streams miscounted"
        );
    }
    drop(streams);
    assert_eq!(shared.count().get(), 0, "a dropped stream is still counted");
}

/// `proxy_header`: the start of a connection from a trusted load balancer into
/// the PROXY protocol reader. Whatever the bytes, it reads no further than the
/// header it accepts, and the parser agrees with the reader on that header.
pub fn proxy_header(data: &[u8]) {
    use crate::transport::proxy_protocol::{parse, read_header};
    use futures_util::FutureExt;
    let mut rest = data;
    // A slice is always ready: the read never waits.
    let read = read_header(&mut rest).now_or_never();
    if let Some(Ok(client)) = read {
        let taken = data.len() - rest.len();
        assert!(taken <= 16 + 1024, "read {taken} bytes of header");
        let again = parse(&data[..taken]).expect("the header read parses alone");
        assert_eq!(again, client);
    }
}
