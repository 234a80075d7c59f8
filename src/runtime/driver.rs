//! The tokio driver: UDP sockets in, [`Node`] in the middle, UDP sockets out.
//!
//! It holds no protocol logic. One receive task per socket feeds a channel; one core
//! task owns the node, hands it datagrams and timer ticks, and sends what the node
//! wants sent from the socket the link uses.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tokio::sync::mpsc;

use crate::node::{CircuitId, DataPath, Event, Node, Output, Toward};
use crate::proto::framing::PayloadError;
use crate::proto::wire::PAYLOAD_OFFSET;
use crate::runtime::replay::ReplayFile;
use crate::runtime::sockets::{IoConfig, Received, Sockets};
use crate::runtime::tun::Counted;

/// Datagrams handled per wake-up before timers and transmits are serviced.
const BATCH: usize = 64;

/// The packet a [`DataPath::receive`] completed, if any; a payload that is not a
/// tunnel payload is logged and dropped.
pub(crate) fn logged(received: Result<Option<&mut [u8]>, PayloadError>) -> Option<&mut [u8]> {
    received.unwrap_or_else(|e| {
        tracing::debug!("payload dropped: {e}");
        None
    })
}

/// The driver state shared by the gateway and client loops.
pub struct Driver {
    pub node: Node,
    pub sockets: Sockets,
    pub rng: ChaCha20Rng,
    rx: mpsc::Receiver<Received>,
    /// Where a gateway writes the handshakes it accepted ([`Driver::keep_handshakes`]).
    replay: Option<ReplayFile>,
    /// The datagrams received.
    pub received: Counted,
}

impl Driver {
    /// Binds the sockets and starts receiving.
    pub fn new(node: Node, addrs: &[SocketAddr]) -> Result<Self> {
        Self::tunnel(node, addrs, None, 0)
    }

    /// As [`Driver::new`] for a daemon with a TUN device: every socket is marked
    /// with `mark` (SO_MARK) if given, and every pool buffer also holds a packet of
    /// `mtu` bytes at `PAYLOAD_OFFSET`, so TUN reads allocate nothing.
    pub fn tunnel(node: Node, addrs: &[SocketAddr], mark: Option<u32>, mtu: usize) -> Result<Self> {
        let sockets = Sockets::bind(addrs, mark, PAYLOAD_OFFSET + mtu, IoConfig::from_env())?;
        let rx = sockets.spawn_receivers();
        Ok(Self {
            node,
            sockets,
            rng: ChaCha20Rng::from_entropy(),
            rx,
            replay: None,
            received: Counted::default(),
        })
    }

    /// Keeps the node's handshake replay cache in the file at `path` across restarts
    /// ([`replay`](crate::runtime::replay)): loads it now, and from then on writes
    /// the handshakes accepted in each step at its end.
    pub fn keep_handshakes(&mut self, path: &Path) -> Result<()> {
        self.replay = Some(ReplayFile::open(path, &mut self.node, Instant::now())?);
        Ok(())
    }

    /// Sends everything the node and the sockets have queued.
    pub async fn flush(&mut self) {
        while let Some(t) = self.node.poll_transmit() {
            self.sockets.send_recycle(t).await;
        }
        self.sockets.flush_out().await;
    }

    /// Sends the packet in `buf[PAYLOAD_OFFSET..]` into a circuit through a tunnel
    /// end's data path, and queues its datagrams.
    pub async fn send_packet(&mut self, now: Instant, dp: &mut DataPath, to: Toward, buf: Vec<u8>) {
        self.send_numbered(now, dp, to, None, buf).await;
    }

    /// [`Driver::send_packet`], as packet number `seq` of a virtual circuit when
    /// there is one (VDATA, [`DataPath::send_seq`]).
    pub async fn send_numbered(
        &mut self,
        now: Instant,
        dp: &mut DataPath,
        to: Toward,
        seq: Option<u32>,
        buf: Vec<u8>,
    ) {
        let (rng, node, pool) = (&mut self.rng, &mut self.node, &mut self.sockets.pool);
        let sent = match seq {
            None => dp.send(now, rng, node, to, buf, pool),
            Some(n) => dp.send_seq(now, rng, node, to, n, buf, pool),
        };
        if let Err(e) = sent {
            tracing::debug!("packet dropped: {e}");
        }
        while let Some(t) = dp.poll_transmit() {
            self.sockets.send_recycle(t).await;
        }
    }

    /// The packet a VDATA payload of leg `c` completes, with its number, copied into
    /// a pool buffer laid out as the TUN reader's (the packet at `PAYLOAD_OFFSET`),
    /// for a virtual circuit's reorder buffer to hold.
    pub fn receive_numbered(
        &mut self,
        now: Instant,
        dp: &mut DataPath,
        c: CircuitId,
        payload: &mut [u8],
    ) -> Option<(u32, Vec<u8>)> {
        let received = dp.receive_seq(now, c, payload).unwrap_or_else(|e| {
            tracing::debug!("payload dropped: {e}");
            None
        });
        let (seq, p) = received?;
        let mut owned = self.sockets.pool.get();
        owned.clear();
        owned.resize(PAYLOAD_OFFSET, 0);
        owned.extend_from_slice(p);
        Some((seq, owned))
    }

    /// Waits for datagrams or the node's next timer, processes them, sends the
    /// results, and returns the events that arose.
    pub async fn step(&mut self, events: &mut Vec<Event>) {
        self.step_with::<()>(events, None, &mut Vec::new(), None)
            .await;
    }

    /// As [`Driver::step`], also returning at `wake` (a deadline of the caller's own:
    /// a build to pace, a query to time out), so the caller never has to cancel a
    /// step to keep its own time.
    pub async fn step_until(&mut self, events: &mut Vec<Event>, wake: Option<Instant>) {
        self.step_with::<()>(events, None, &mut Vec::new(), wake)
            .await;
    }

    /// As [`Driver::step`], also waking for items on `extra` (e.g. packets read
    /// from a TUN device), which are appended to `got` for the caller to process;
    /// at most `BATCH` per call, and returning at `wake` too (see
    /// [`Driver::step_until`]). Returns false once `extra` is closed.
    pub async fn step_with<T>(
        &mut self,
        events: &mut Vec<Event>,
        mut extra: Option<&mut mpsc::Receiver<T>>,
        got: &mut Vec<T>,
        wake: Option<Instant>,
    ) -> bool {
        self.sockets.flush_out().await;
        let deadline = match (self.node.poll_timeout(), wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(tokio::time::Instant::from_std);
        let mut open = true;
        let first = tokio::select! {
            r = self.rx.recv() => r,
            x = async {
                match extra.as_deref_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                match x {
                    Some(x) => got.push(x),
                    None => open = false,
                }
                None
            }
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => None,
        };
        let now = Instant::now();
        if let Some(r) = first {
            self.handle(now, r).await;
            for _ in 1..BATCH {
                match self.rx.try_recv() {
                    Ok(r) => self.handle(now, r).await,
                    Err(_) => break,
                }
            }
        }
        if let Some(x) = extra {
            while got.len() < BATCH {
                match x.try_recv() {
                    Ok(item) => got.push(item),
                    Err(_) => break,
                }
            }
        }
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now, &mut self.rng);
        }
        if let Some(r) = self.replay.as_mut() {
            r.record(&self.node, now);
        }
        self.flush().await;
        while let Some(e) = self.node.poll_event() {
            events.push(e);
        }
        open
    }

    async fn handle(&mut self, now: Instant, (i, from, buf): Received) {
        self.received.add(buf.len());
        let local = self.sockets.local(i);
        match self
            .node
            .handle_datagram(now, &mut self.rng, local, from, buf)
        {
            Output::Transmit(t) => self.sockets.send_recycle(t).await,
            Output::Recycle(b) => self.sockets.pool.put(b),
            Output::Consumed => {}
        }
    }
}
