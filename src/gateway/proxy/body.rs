//! Bodies, streamed frame by frame and never buffered: the client's request body
//! on its way upstream ([`RequestBody`], or nothing for a request sent again),
//! and the response body on its way to the client, with the request counted as
//! in flight on its agent until its last frame ([`TrackedBody`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::time::{Instant, Sleep};

use super::super::policy::Admitted;
use super::super::policy::connections::Busy;
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
    const STALLED: u8 = 3;

    /// The client paused longer than `limits.request_body_idle_timeout`.
    pub(crate) fn stalled(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::STALLED
    }

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
    /// `gateway_request_bytes_total` of the tunnel.
    bytes: Counter,
    seen: u64,
    limit: u64,
    idle: IdleTimer,
    verdict: Arc<BodyVerdict>,
}

impl ClientBody {
    pub(crate) fn new(
        inner: Incoming,
        bytes: Counter,
        limit: u64,
        idle: Duration,
        verdict: Arc<BodyVerdict>,
    ) -> Self {
        ClientBody {
            inner,
            bytes,
            seen: 0,
            limit,
            idle: IdleTimer::new(idle),
            verdict,
        }
    }
}

/// Ends a body that pauses too long, cheaply: a timer is armed only once a
/// read has to wait, and progress only notes the time; the timer is moved
/// when it fires early, not at every frame.
pub(crate) struct IdleTimer {
    limit: Duration,
    last: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    pub(crate) fn new(limit: Duration) -> Self {
        IdleTimer {
            limit,
            last: Instant::now(),
            sleep: None,
        }
    }

    /// A frame came: the next pause counts from now.
    fn progressed(&mut self) {
        if self.sleep.is_some() {
            self.last = Instant::now();
        }
    }

    /// The body has nothing to give now: whether it has paused too long (else
    /// the waker is registered for when it would have).
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            let Some(sleep) = &mut self.sleep else {
                self.last = Instant::now();
                self.sleep = Some(Box::pin(tokio::time::sleep_until(self.last + self.limit)));
                continue;
            };
            if sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let due = self.last + self.limit;
            if Instant::now() >= due {
                return true;
            }
            sleep.as_mut().reset(due);
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
    #[error("the client's body paused longer than limits.request_body_idle_timeout")]
    Stalled,
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
                body.idle.progressed();
                if let Some(data) = frame.data_ref() {
                    body.seen += data.len() as u64;
                    body.bytes.inc_by(data.len() as u64);
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
            Poll::Pending if body.idle.poll_expired(cx) => {
                body.verdict
                    .0
                    .store(BodyVerdict::STALLED, Ordering::Relaxed);
                Poll::Ready(Some(Err(BodyError::Stalled)))
            }
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
    /// `gateway_response_bytes_total` of the tunnel.
    bytes: Counter,
    _in_flight: InFlight,
    /// The request's place among its tunnel's requests in flight.
    _admitted: Admitted,
    /// The connection is busy (not idle, not to be closed for room) meanwhile.
    _busy: Busy,
    idle: IdleTimer,
    slot: Arc<BoundSlot>,
}

impl TrackedBody {
    pub(crate) fn new(
        inner: Incoming,
        bytes: Counter,
        in_flight: InFlight,
        admitted: Admitted,
        busy: Busy,
        idle: Duration,
        slot: Arc<BoundSlot>,
    ) -> Self {
        TrackedBody {
            inner,
            bytes,
            _in_flight: in_flight,
            _admitted: admitted,
            _busy: busy,
            idle: IdleTimer::new(idle),
            slot,
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.slot.release_if_unavailable();
    }
}

/// Why a response body stopped on its way to the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResponseBodyError {
    #[error("reading the upstream's body failed: {0}")]
    Upstream(hyper::Error),
    #[error("the upstream's body paused longer than limits.response_body_idle_timeout")]
    Stalled,
}

impl hyper::body::Body for TrackedBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.idle.progressed();
                if let Some(data) = frame.data_ref() {
                    this.bytes.inc_by(data.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(ResponseBodyError::Upstream(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending if this.idle.poll_expired(cx) => {
                tracing::info!(
                    "response body ended: the upstream paused longer than limits.response_body_idle_timeout"
                );
                Poll::Ready(Some(Err(ResponseBodyError::Stalled)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
