//! The heartbeat: a ping every interval, so that the peer hears from us; a peer
//! that sends nothing at all (data, pongs, pings) for
//! [`protocol::HEARTBEAT_MISSES`] intervals is given up as dead (a crashed host, a
//! half-open TCP connection). An interval without data also frees the write
//! buffers of an idle session.

use std::io;
use std::task::Context;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::WsIo;
use super::frame::OP_PING;
use crate::protocol;

pub(super) struct Heartbeat {
    ticker: Interval,
    /// Something arrived since the last tick (a flag, not a timestamp: reading
    /// the clock on every read showed in the profile).
    pub(super) heard: bool,
    /// Ticks in a row with nothing heard.
    silent_ticks: u32,
    /// Ticks so far (the first finds nothing to answer yet: no ping went out).
    ticks: u32,
    period: Duration,
}

impl Heartbeat {
    pub(super) fn new(period: Duration) -> Self {
        // An interval too long to add to now never ticks (the configuration
        // bounds it; an agent takes what a gateway says).
        let first = Instant::now()
            .checked_add(period)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        let mut ticker = tokio::time::interval_at(first, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Heartbeat {
            ticker,
            heard: false,
            silent_ticks: 0,
            ticks: 0,
            period,
        }
    }

    /// Whether a tick is due; counts it as silent unless something was heard.
    fn tick(&mut self, cx: &mut Context<'_>) -> bool {
        let mut due = false;
        while self.ticker.poll_tick(cx).is_ready() {
            due = true;
        }
        if due {
            self.ticks = self.ticks.saturating_add(1);
            if std::mem::take(&mut self.heard) {
                self.silent_ticks = 0;
            } else {
                self.silent_ticks += 1;
            }
        }
        due
    }
}

impl<T> WsIo<T> {
    /// Whether the peer has been silent for a whole heartbeat interval, though
    /// it had a ping to answer: not dead yet, but no place for new work.
    pub fn peer_silent(&self) -> bool {
        self.heartbeat
            .as_ref()
            .is_some_and(|hb| hb.silent_ticks >= 1 && hb.ticks >= 2)
    }
}

impl<T> WsIo<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    /// Pings when due; fails when the peer has been silent for too long; frees the
    /// buffers of a session that has been idle for a whole interval.
    pub(super) fn poll_heartbeat(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(hb) = &mut self.heartbeat else {
            return Ok(());
        };
        if !hb.tick(cx) {
            return Ok(());
        }
        if hb.silent_ticks >= protocol::HEARTBEAT_MISSES {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "peer silent for more than {:?} ({} heartbeat intervals)",
                    hb.period * protocol::HEARTBEAT_MISSES,
                    protocol::HEARTBEAT_MISSES
                ),
            ));
        }
        if !std::mem::take(&mut self.active) && self.wbuf.is_empty() && self.queue.is_empty() {
            self.idle_ticks += 1;
            self.wbuf = BytesMut::new();
            self.spares = Vec::new();
            self.last_sealed = 0;
        }
        if !self.close_sent {
            self.queue_control(OP_PING, &[]);
        }
        Ok(())
    }

    /// Something arrived from the peer.
    pub(super) fn on_received(&mut self) {
        if let Some(hb) = &mut self.heartbeat {
            hb.heard = true;
        }
    }
}
