//! Bodies, streamed frame by frame and never buffered: the client's request body
//! on its way upstream ([`RequestBody`], or nothing for a request sent again),
//! and the response body on its way to the client, with the request counted as
//! in flight on its agent until its last frame ([`TrackedBody`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};

use super::super::registry::{IdleHolder, InFlight};
use super::pool::BoundSlot;

/// What goes upstream as a request's body: the client's, or none (a request
/// without a body, sent again to another agent after the first failed).
pub(crate) enum RequestBody {
    /// The client's body, as it arrives; the flag is raised when reading it
    /// fails (malformed chunks, a client gone mid-body), so that the failure is
    /// blamed on the client rather than on the agent.
    Client(Incoming, Arc<AtomicBool>),
    /// No body.
    Empty,
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Client(body, failed) => {
                let frame = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Err(_))) = &frame {
                    failed.store(true, Ordering::Relaxed);
                }
                frame
            }
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(body, _) => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(body, _) => body.size_hint(),
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
    slot: Arc<BoundSlot>,
}

impl TrackedBody {
    pub(crate) fn new(inner: Incoming, in_flight: InFlight, slot: Arc<BoundSlot>) -> Self {
        TrackedBody {
            inner,
            _in_flight: in_flight,
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
