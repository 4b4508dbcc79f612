//! Bodies, streamed frame by frame and never buffered: the client's request body
//! on its way upstream ([`RequestBody`], or nothing for a request sent again),
//! and the response body on its way to the client, with the request counted as
//! in flight on its agent until its last frame ([`TrackedBody`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};

use super::super::policy::Admitted;
use super::super::registry::{IdleHolder, InFlight};
use super::pool::BoundSlot;

/// What goes upstream as a request's body: the client's, or none (a request
/// without a body, sent again to another agent after the first failed).
pub(crate) enum RequestBody {
    /// The client's body, as it arrives.
    Client(ClientBody),
    /// No body.
    Empty,
}

/// How a client's body ended, when it did not end well: read by the proxy when
/// the upstream request fails, so that the client's fault is told to the client
/// (400, 413) rather than blamed on the agent (502).
#[derive(Debug, Default)]
pub(crate) struct BodyVerdict(AtomicU8);

/// Fine (the default, 0) until one of these.
impl BodyVerdict {
    const MALFORMED: u8 = 1;
    const TOO_LARGE: u8 = 2;

    /// The body could not be read: malformed chunks, or the client left mid-body.
    pub(crate) fn malformed(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::MALFORMED
    }

    /// The body grew past the tunnel's `max_request_body`.
    pub(crate) fn too_large(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::TOO_LARGE
    }
}

/// The client's request body, counted: past `limit` bytes (0: no limit) it
/// ends with an error instead of more data, so the upstream never gets more.
pub(crate) struct ClientBody {
    inner: Incoming,
    seen: u64,
    limit: u64,
    verdict: Arc<BodyVerdict>,
}

impl ClientBody {
    pub(crate) fn new(inner: Incoming, limit: u64, verdict: Arc<BodyVerdict>) -> Self {
        ClientBody {
            inner,
            seen: 0,
            limit,
            verdict,
        }
    }
}

/// Why a request body stopped on its way upstream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("reading the client's body failed: {0}")]
    Client(hyper::Error),
    #[error("the client's body is larger than max_request_body ({0} bytes)")]
    TooLarge(u64),
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let body = match self.get_mut() {
            RequestBody::Client(body) => body,
            RequestBody::Empty => return Poll::Ready(None),
        };
        match Pin::new(&mut body.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    body.seen += data.len() as u64;
                    if body.limit != 0 && body.seen > body.limit {
                        body.verdict
                            .0
                            .store(BodyVerdict::TOO_LARGE, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(BodyError::TooLarge(body.limit))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                body.verdict
                    .0
                    .store(BodyVerdict::MALFORMED, Ordering::Relaxed);
                Poll::Ready(Some(Err(BodyError::Client(e))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(body) => body.inner.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(body) => body.inner.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// The upstream's response body, passed through frame by frame. While it lives the
/// request counts as in flight on its agent; when it ends, a bound stream to an
/// agent that has started draining is released, so the agent can finish.
pub(crate) struct TrackedBody {
    inner: Incoming,
    _in_flight: InFlight,
    /// The request's place among its tunnel's requests in flight.
    _admitted: Admitted,
    slot: Arc<BoundSlot>,
}

impl TrackedBody {
    pub(crate) fn new(
        inner: Incoming,
        in_flight: InFlight,
        admitted: Admitted,
        slot: Arc<BoundSlot>,
    ) -> Self {
        TrackedBody {
            inner,
            _in_flight: in_flight,
            _admitted: admitted,
            slot,
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.slot.release_if_unavailable();
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
