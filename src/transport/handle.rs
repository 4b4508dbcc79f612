//! What the gateway keeps of an agent's session: a [`SessionHandle`] that opens
//! streams and says whether the agent is leaving, and the [`OpenQueue`] that the
//! session task takes over once it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use super::mux::{Mode, Shared};
use super::{StreamIo, TunnelError};

/// What the peer said of itself, shared by the session task and its handles.
#[derive(Debug, Default)]
pub(crate) struct Peer {
    /// The peer announced its drain.
    pub(crate) draining: AtomicBool,
    /// Wakes whoever waits for `draining`.
    pub(crate) drained: Notify,
    /// Nothing heard from the peer for a heartbeat interval.
    pub(crate) silent: AtomicBool,
}

/// Handle on a gateway-side session: opens streams, and tells whether the agent
/// is leaving. What the registry keeps of a connected agent. Cheap to clone.
#[derive(Clone)]
pub struct SessionHandle {
    shared: Arc<Shared>,
    peer: Arc<Peer>,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("closed", &self.is_closed())
            .field("peer_draining", &self.peer_draining())
            .finish()
    }
}

/// The session end of a [`SessionHandle`], handed to [`Session::client_with`].
/// Dropped without a session, it ends the session before it began.
pub struct OpenQueue(SessionHandle);

impl OpenQueue {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.0.shared
    }

    pub(crate) fn peer(&self) -> &Arc<Peer> {
        &self.0.peer
    }
}

impl Drop for OpenQueue {
    fn drop(&mut self) {
        self.0.shared.end("the session never started");
    }
}

impl SessionHandle {
    /// A handle whose session does not exist yet: streams opened meanwhile start
    /// once it runs.
    pub fn channel() -> (SessionHandle, OpenQueue) {
        let handle = SessionHandle {
            shared: Shared::new(Mode::Client),
            peer: Arc::default(),
        };
        (handle.clone(), OpenQueue(handle))
    }

    /// Opens a stream to the agent.
    pub async fn open(&self) -> Result<StreamIo, TunnelError> {
        self.shared.open()
    }

    /// Whether the session takes no new streams: it has ended, or the agent
    /// sent a go-away, or the stream IDs ran out.
    pub fn is_closed(&self) -> bool {
        self.shared.is_refusing()
    }

    /// Resolves once this session's stream IDs are running out: the gateway then
    /// drains and closes it, and the agent reconnects with a fresh one.
    pub async fn ids_running_out(&self) {
        self.shared.ids_running_out().await
    }

    /// Whether nothing was heard from the agent for a whole heartbeat interval
    /// (it is dropped after three): new requests go elsewhere when they can.
    pub fn peer_silent(&self) -> bool {
        self.peer.silent.load(Ordering::Relaxed)
    }

    /// Whether the agent announced that it is leaving.
    pub fn peer_draining(&self) -> bool {
        self.peer.draining.load(Ordering::Acquire)
    }

    /// Resolves once the agent has announced that it is leaving.
    pub async fn peer_drained(&self) {
        loop {
            let notified = self.peer.drained.notified();
            if self.peer_draining() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::transport::mux::IDS_LOW_WATER;
    use crate::transport::{Role, Session, WsIo, close_code};

    /// A session says when its stream IDs run low, once a stream is opened past
    /// the mark, and not before; it still opens streams (closing it is the
    /// gateway's decision).
    #[tokio::test(start_paused = true)]
    async fn a_session_says_when_its_ids_run_low() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let (client, handle) =
            Session::client(WsIo::new(a, Role::Client, None, close_code::NORMAL));
        let server = Session::server(WsIo::new(b, Role::Server, None, close_code::NORMAL), drop);
        let grace = Duration::from_secs(1);
        tokio::spawn(client.run(std::future::pending(), grace));
        tokio::spawn(server.run(std::future::pending(), grace));

        handle.shared.skip_ids_to(IDS_LOW_WATER - 4);
        let _first = handle.open().await.expect("open");
        let early = tokio::time::timeout(Duration::from_secs(1), handle.ids_running_out()).await;
        assert!(early.is_err(), "said so before the mark");
        let _second = handle.open().await.expect("open");
        tokio::time::timeout(Duration::from_secs(1), handle.ids_running_out())
            .await
            .expect("said so once past the mark");
        assert!(handle.open().await.is_ok(), "still opens");
    }
}
