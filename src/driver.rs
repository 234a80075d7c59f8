//! The tokio driver: UDP sockets in, [`Node`] in the middle, UDP sockets out.
//!
//! It holds no protocol logic. One receive task per socket feeds a channel; one core
//! task owns the node, hands it datagrams and timer ticks, and sends what the node
//! wants sent from the socket the link uses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::node::{Event, Node, Output, Transmit};
use crate::wire::{MAX_DATAGRAM, PAYLOAD_OFFSET};

/// Socket buffer size asked of the kernel (it may grant less).
const SOCKET_BUFFER: usize = 4 << 20;
/// Received datagrams queued between the receive tasks and the core.
const CHANNEL_DEPTH: usize = 4096;
/// Datagrams handled per wake-up before timers and transmits are serviced.
const BATCH: usize = 64;

/// Buffers kept for reuse; beyond this many, returned buffers are freed.
const POOL_CAP: usize = CHANNEL_DEPTH;

/// A datagram as received: socket index, source, bytes.
pub type Received = (usize, SocketAddr, Vec<u8>);

/// Datagram buffers shared by the receive tasks and the core, so that steady-state
/// traffic allocates nothing: a buffer goes socket -> node (relayed in place) ->
/// socket -> pool -> socket. Every buffer has the same capacity, large enough for a
/// datagram and, in a tunnel daemon, for a TUN packet read at `PAYLOAD_OFFSET`.
#[derive(Clone)]
pub struct Pool {
    bufs: Arc<Mutex<Vec<Vec<u8>>>>,
    capacity: usize,
}

impl Default for Pool {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl Pool {
    /// A pool of buffers of at least `capacity` bytes (never less than a datagram).
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            bufs: Arc::default(),
            capacity: capacity.max(MAX_DATAGRAM + 1),
        }
    }

    /// A buffer of `MAX_DATAGRAM + 1` bytes (one more than any valid datagram, so an
    /// oversized one is seen as such rather than truncated to a valid length).
    #[must_use]
    pub fn get(&self) -> Vec<u8> {
        let reused = self.bufs.lock().ok().and_then(|mut p| p.pop());
        let mut buf = reused.unwrap_or_else(|| Vec::with_capacity(self.capacity));
        buf.resize(MAX_DATAGRAM + 1, 0);
        buf
    }

    /// Returns a buffer for reuse.
    pub fn put(&self, buf: Vec<u8>) {
        if let Ok(mut p) = self.bufs.lock() {
            if p.len() < POOL_CAP && buf.capacity() >= self.capacity {
                p.push(buf);
            }
        }
    }
}

/// The node's UDP sockets.
pub struct Sockets {
    socks: Vec<(SocketAddr, Arc<UdpSocket>)>,
    by_local: HashMap<SocketAddr, usize>,
    pub pool: Pool,
}

fn bind_one(addr: SocketAddr, mark: Option<u32>) -> Result<UdpSocket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .context("cannot create a UDP socket")?;
    if let Some(m) = mark {
        // The client's routing rules send unmarked traffic into the tunnel; the
        // daemon's own datagrams carry this mark and take the normal routes.
        sock.set_mark(m)
            .context("cannot set SO_MARK on the UDP socket (needs CAP_NET_ADMIN)")?;
    }
    if addr.is_ipv6() {
        // Lets "0.0.0.0" and "::" share a port.
        sock.set_only_v6(true).context("cannot set IPV6_V6ONLY")?;
    }
    // Larger buffers absorb bursts; failure only costs throughput.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    sock.set_nonblocking(true)
        .context("cannot make the socket non-blocking")?;
    sock.bind(&addr.into())
        .with_context(|| format!("cannot listen on {addr}"))?;
    UdpSocket::from_std(sock.into()).context("cannot register the socket with tokio")
}

impl Sockets {
    /// Binds every address, marking the sockets with `mark` if given, with a buffer
    /// pool of `capacity`-byte buffers. Port 0 picks an ephemeral port.
    pub fn bind(addrs: &[SocketAddr], mark: Option<u32>, capacity: usize) -> Result<Self> {
        let mut socks = Vec::with_capacity(addrs.len());
        let mut by_local = HashMap::new();
        for &addr in addrs {
            let s = bind_one(addr, mark)?;
            let local = s.local_addr().context("cannot read the bound address")?;
            by_local.insert(local, socks.len());
            socks.push((local, Arc::new(s)));
        }
        Ok(Self {
            socks,
            by_local,
            pool: Pool::with_capacity(capacity),
        })
    }

    /// The bound local addresses.
    pub fn local_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.socks.iter().map(|(a, _)| *a)
    }

    /// Starts one receive task per socket.
    #[must_use]
    pub fn spawn_receivers(&self) -> mpsc::Receiver<Received> {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        for (i, (_, sock)) in self.socks.iter().enumerate() {
            let sock = Arc::clone(sock);
            let tx = tx.clone();
            let pool = self.pool.clone();
            tokio::spawn(async move {
                loop {
                    let mut buf = pool.get();
                    match sock.recv_from(&mut buf).await {
                        Ok((n, from)) => {
                            buf.truncate(n);
                            if tx.send((i, from, buf)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::debug!("receive error: {e}");
                            pool.put(buf);
                        }
                    }
                }
            });
        }
        rx
    }

    /// The local address of socket `i`.
    #[must_use]
    pub fn local(&self, i: usize) -> Option<SocketAddr> {
        self.socks.get(i).map(|(a, _)| *a)
    }

    fn pick(&self, t: &Transmit) -> Option<&UdpSocket> {
        let by_src = t
            .src
            .and_then(|s| self.by_local.get(&s))
            .map(|&i| &*self.socks[i].1);
        by_src.or_else(|| {
            self.socks
                .iter()
                .find(|(a, _)| a.is_ipv4() == t.dst.is_ipv4())
                .map(|(_, s)| &**s)
        })
    }

    /// Sends one datagram and recycles its buffer.
    pub async fn send_recycle(&self, t: Transmit) {
        self.send(&t).await;
        self.pool.put(t.buf);
    }

    /// Sends one datagram; errors are logged, as UDP loss would be.
    pub async fn send(&self, t: &Transmit) {
        match self.pick(t) {
            Some(s) => {
                if let Err(e) = s.send_to(&t.buf, t.dst).await {
                    tracing::debug!("send error: {e}");
                }
            }
            None => tracing::debug!("no socket of the destination's address family"),
        }
    }
}

/// The driver state shared by the gateway and client loops.
pub struct Driver {
    pub node: Node,
    pub sockets: Sockets,
    pub rng: ChaCha20Rng,
    rx: mpsc::Receiver<Received>,
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
        let sockets = Sockets::bind(addrs, mark, PAYLOAD_OFFSET + mtu)?;
        let rx = sockets.spawn_receivers();
        Ok(Self {
            node,
            sockets,
            rng: ChaCha20Rng::from_entropy(),
            rx,
        })
    }

    /// Sends everything the node has queued.
    pub async fn flush(&mut self) {
        while let Some(t) = self.node.poll_transmit() {
            self.sockets.send_recycle(t).await;
        }
    }

    /// Waits for datagrams or the node's next timer, processes them, sends the
    /// results, and returns the events that arose.
    pub async fn step(&mut self, events: &mut Vec<Event>) {
        self.step_with::<()>(events, None, &mut Vec::new()).await;
    }

    /// As [`Driver::step`], also waking for items on `extra` (e.g. packets read
    /// from a TUN device), which are appended to `got` for the caller to process;
    /// at most [`BATCH`] per call. Returns false once `extra` is closed.
    pub async fn step_with<T>(
        &mut self,
        events: &mut Vec<Event>,
        mut extra: Option<&mut mpsc::Receiver<T>>,
        got: &mut Vec<T>,
    ) -> bool {
        let deadline = self.node.poll_timeout().map(tokio::time::Instant::from_std);
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
        self.flush().await;
        while let Some(e) = self.node.poll_event() {
            events.push(e);
        }
        open
    }

    async fn handle(&mut self, now: Instant, (i, from, buf): Received) {
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
