//! The tokio driver: UDP sockets in, [`Node`] in the middle, UDP sockets out.
//!
//! It holds no protocol logic. One receive task per socket feeds a channel; one core
//! task owns the node, hands it datagrams and timer ticks, and sends what the node
//! wants sent from the socket the link uses.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use quinn_udp::{RecvMeta, UdpSocketState};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::node::{Buffers, DataPath, Event, Node, Output, Toward, Transmit};
use crate::proto::framing::PayloadError;
use crate::proto::wire::{MAX_DATAGRAM, PAYLOAD_OFFSET};
use crate::runtime::replay::ReplayFile;

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

impl Buffers for Pool {
    fn get(&mut self) -> Vec<u8> {
        Pool::get(self)
    }
    fn put(&mut self, buf: Vec<u8>) {
        Pool::put(self, buf);
    }
}

/// How the sockets move datagrams: how many per system call, and whether the
/// kernel's UDP segmentation offloads (GSO on send, GRO on receive) are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoConfig {
    /// Most datagrams per receive call (`recvmmsg`, at most [`quinn_udp::BATCH_SIZE`]
    /// buffers) and per send call (one GSO send of equal-size datagrams to one
    /// destination, within 64 KiB). 1 means one datagram per system call.
    pub batch: usize,
    /// Use UDP GSO and GRO where the kernel offers them.
    pub offload: bool,
}

/// Default datagrams per system call.
pub const DEFAULT_IO_BATCH: usize = 64;

impl Default for IoConfig {
    fn default() -> Self {
        Self {
            batch: DEFAULT_IO_BATCH,
            offload: true,
        }
    }
}

impl IoConfig {
    /// The defaults, overridden by `ANONNET_IO_BATCH` (1 to 1024) and
    /// `ANONNET_IO_OFFLOAD` (`0` turns GSO/GRO off): tuning knobs for measurements,
    /// documented in docs/PERFORMANCE.md. A bad value is reported and ignored.
    #[must_use]
    pub fn from_env() -> Self {
        let mut io = Self::default();
        if let Ok(v) = std::env::var("ANONNET_IO_BATCH") {
            match v.parse::<usize>() {
                Ok(n) if (1..=1024).contains(&n) => io.batch = n,
                _ => tracing::warn!("ANONNET_IO_BATCH={v:?} ignored: expected 1 to 1024"),
            }
        }
        io.offload = env_switch("ANONNET_IO_OFFLOAD", io.offload);
        io
    }
}

/// The on/off measurement knob `name` (`0` or `1`), or `default` when it is unset or
/// bad (a bad value is reported).
#[must_use]
pub fn env_switch(name: &str, default: bool) -> bool {
    match std::env::var(name) {
        Ok(v) if v == "0" => false,
        Ok(v) if v == "1" => true,
        Ok(v) => {
            tracing::warn!("{name}={v:?} ignored: expected 0 or 1");
            default
        }
        Err(_) => default,
    }
}

/// Largest UDP payload of one GSO send (the kernel's limit is 65,507 for IPv4).
const GSO_BYTES: usize = 65_000;
/// Receive buffer size with GRO: the kernel coalesces up to 64 KiB.
const GRO_BUFFER: usize = 65_536;
/// Datagrams queued for sending before they are sent without waiting for a flush.
const SEND_QUEUE: usize = 256;

struct Sock {
    local: SocketAddr,
    io: Arc<UdpSocket>,
    state: Arc<UdpSocketState>,
}

/// The node's UDP sockets. Datagrams to send are queued ([`Sockets::send_recycle`])
/// and go out in batches ([`Sockets::flush_out`]): consecutive equal-size datagrams
/// from one socket to one destination leave in one GSO system call.
pub struct Sockets {
    socks: Vec<Sock>,
    by_local: HashMap<SocketAddr, usize>,
    pub pool: Pool,
    io: IoConfig,
    queue: Vec<Transmit>,
    gso: Vec<u8>,
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
    pub fn bind(
        addrs: &[SocketAddr],
        mark: Option<u32>,
        capacity: usize,
        io: IoConfig,
    ) -> Result<Self> {
        let mut socks = Vec::with_capacity(addrs.len());
        let mut by_local = HashMap::new();
        for &addr in addrs {
            let s = bind_one(addr, mark)?;
            let local = s.local_addr().context("cannot read the bound address")?;
            let state = UdpSocketState::new((&s).into())
                .with_context(|| format!("cannot set up the UDP socket on {local}"))?;
            if !io.offload {
                // quinn-udp turns GRO on where it can.
                let _ = nix::sys::socket::setsockopt(
                    &s,
                    nix::sys::socket::sockopt::UdpGroSegment,
                    &false,
                );
            }
            by_local.insert(local, socks.len());
            socks.push(Sock {
                local,
                io: Arc::new(s),
                state: Arc::new(state),
            });
        }
        Ok(Self {
            socks,
            by_local,
            pool: Pool::with_capacity(capacity),
            io,
            queue: Vec::with_capacity(SEND_QUEUE),
            gso: Vec::with_capacity(GSO_BYTES),
        })
    }

    /// The bound local addresses.
    pub fn local_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.socks.iter().map(|s| s.local)
    }

    /// Starts one receive task per socket. Each reads up to `io.batch` datagrams per
    /// system call (GRO-coalesced ones are split again) into pool buffers.
    #[must_use]
    pub fn spawn_receivers(&self) -> mpsc::Receiver<Received> {
        let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
        for (i, sock) in self.socks.iter().enumerate() {
            let io = Arc::clone(&sock.io);
            let state = Arc::clone(&sock.state);
            let tx = tx.clone();
            let pool = self.pool.clone();
            let batch = self.io.batch.clamp(1, quinn_udp::BATCH_SIZE);
            let gro = self.io.offload && state.gro_segments() > 1;
            tokio::spawn(async move {
                let len = if gro { GRO_BUFFER } else { MAX_DATAGRAM + 1 };
                let mut bufs = vec![vec![0u8; len]; batch];
                let mut slices: Vec<IoSliceMut<'_>> =
                    bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
                let mut meta = vec![RecvMeta::default(); batch];
                loop {
                    let got = io
                        .async_io(Interest::READABLE, || {
                            state.recv((&*io).into(), &mut slices, &mut meta)
                        })
                        .await;
                    let n = match got {
                        Ok(n) => n,
                        Err(e) => {
                            tracing::debug!("receive error: {e}");
                            continue;
                        }
                    };
                    for (slice, m) in slices.iter().zip(&meta).take(n) {
                        let stride = if m.stride == 0 { m.len } else { m.stride };
                        for datagram in slice[..m.len].chunks(stride.max(1)) {
                            let mut buf = pool.get();
                            // An oversized datagram keeps MAX_DATAGRAM + 1 bytes, so
                            // the node sees it as oversized.
                            let k = datagram.len().min(buf.len());
                            buf[..k].copy_from_slice(&datagram[..k]);
                            buf.truncate(k);
                            if tx.send((i, m.addr, buf)).await.is_err() {
                                return;
                            }
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
        self.socks.get(i).map(|s| s.local)
    }

    fn pick(&self, t: &Transmit) -> Option<usize> {
        t.src
            .and_then(|s| self.by_local.get(&s).copied())
            .or_else(|| {
                self.socks
                    .iter()
                    .position(|s| s.local.is_ipv4() == t.dst.is_ipv4())
            })
    }

    /// Queues one datagram; its buffer returns to the pool once sent. Queued
    /// datagrams go out at the latest when the driver next waits for input.
    pub async fn send_recycle(&mut self, t: Transmit) {
        self.queue.push(t);
        if self.queue.len() >= SEND_QUEUE {
            self.flush_out().await;
        }
    }

    /// Sends everything queued, in order: each run of equal-size datagrams from one
    /// socket to one destination in one system call where GSO allows. Errors are
    /// logged, as UDP loss would be.
    pub async fn flush_out(&mut self) {
        let mut queue = std::mem::take(&mut self.queue);
        let mut i = 0;
        while i < queue.len() {
            // The socket depends only on the source and the destination's family,
            // so a run shares the first datagram's socket.
            let (dst, size) = (queue[i].dst, queue[i].buf.len());
            let Some(s) = self.pick(&queue[i]) else {
                tracing::debug!("no socket of the destination's address family");
                i += 1;
                continue;
            };
            let sock = &self.socks[s];
            let most = if self.io.offload {
                self.io
                    .batch
                    .min(sock.state.max_gso_segments())
                    .min(GSO_BYTES / size.max(1))
                    .max(1)
            } else {
                1
            };
            let mut j = i + 1;
            while j < queue.len()
                && j - i < most
                && queue[j].dst == dst
                && queue[j].buf.len() == size
                && queue[j].src == queue[i].src
            {
                j += 1;
            }
            let contents: &[u8] = if j - i == 1 {
                &queue[i].buf
            } else {
                self.gso.clear();
                for t in &queue[i..j] {
                    self.gso.extend_from_slice(&t.buf);
                }
                &self.gso
            };
            let transmit = quinn_udp::Transmit {
                destination: dst,
                ecn: None,
                contents,
                segment_size: (j - i > 1).then_some(size),
                src_ip: None,
            };
            let sent = sock
                .io
                .async_io(Interest::WRITABLE, || {
                    sock.state.try_send((&*sock.io).into(), &transmit)
                })
                .await;
            if let Err(e) = sent {
                // A kernel without GSO on this path refuses the batch once; the
                // socket state then sends one datagram per call.
                tracing::debug!("send error: {e}");
            }
            i = j;
        }
        for t in queue.drain(..) {
            self.pool.put(t.buf);
        }
        self.queue = queue;
    }
}

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
        let sent = dp.send(
            now,
            &mut self.rng,
            &mut self.node,
            to,
            buf,
            &mut self.sockets.pool,
        );
        if let Err(e) = sent {
            tracing::debug!("packet dropped: {e}");
        }
        while let Some(t) = dp.poll_transmit() {
            self.sockets.send_recycle(t).await;
        }
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
