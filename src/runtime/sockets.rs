//! The node's UDP sockets through quinn-udp: receive tasks that read batches
//! (GRO-coalesced datagrams split again) into pool buffers, and a send queue that
//! leaves in GSO batches.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use quinn_udp::{RecvMeta, UdpSocketState};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::node::Transmit;
use crate::proto::wire::MAX_DATAGRAM;
use crate::runtime::pool::{Pool, POOL_CAP};
use crate::runtime::tun::Counted;

/// Socket buffer size asked of the kernel (it may grant less).
const SOCKET_BUFFER: usize = 4 << 20;
/// Received datagrams queued between the receive tasks and the core: as many as
/// the pool keeps, so that a full channel's buffers all find their way back to it.
const CHANNEL_DEPTH: usize = POOL_CAP;

/// A datagram as received: socket index, source, bytes.
pub type Received = (usize, SocketAddr, Vec<u8>);

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
    /// What the sockets sent, and the datagrams whose send failed.
    pub sent: Counted,
    pub send_errors: u64,
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
            sent: Counted::default(),
            send_errors: 0,
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
            match sent {
                Ok(()) => self.sent.add_run(j - i, size),
                Err(e) => {
                    // A kernel without GSO on this path refuses the batch once; the
                    // socket state then sends one datagram per call.
                    tracing::debug!("send error: {e}");
                    self.send_errors += (j - i) as u64;
                }
            }
            i = j;
        }
        for t in queue.drain(..) {
            self.pool.put(t.buf);
        }
        self.queue = queue;
    }
}
