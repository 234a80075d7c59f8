//! The daemons' TUN device I/O: a reader task that hands packets to the core in pool
//! buffers, and a writer that sends the core's packets in batches.
//!
//! With offload on (the default), the device is opened with `IFF_VNET_HDR` and TCP
//! (and, on Linux 6.2+, UDP) segmentation offloads, through tun-rs. One read then
//! returns up to 64 KiB of one flow, which tun-rs splits into MTU-sized packets, and
//! one write carries a run of a flow's packets that tun-rs coalesced (GRO). The
//! kernel's TCP stack on either side handles a few large packets instead of many
//! small ones. `ANONNET_TUN_OFFLOAD=0` turns this off, for measurements.

use std::sync::Arc;

use anyhow::Result;
use tokio::sync::mpsc;
use tun_rs::{AsyncDevice, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use crate::proto::wire::PAYLOAD_OFFSET;
use crate::runtime::pool::Pool;

/// Packets queued between the TUN reader and the core.
const TUN_QUEUE: usize = 1024;
/// The largest packet the kernel hands over or takes with offloads: 64 KiB.
const SUPER_PACKET: usize = 65_535;

/// Whether to use the TUN offloads: on unless `ANONNET_TUN_OFFLOAD=0` (a bad value
/// is reported and ignored).
#[must_use]
pub fn offload_from_env() -> bool {
    crate::runtime::sockets::env_switch("ANONNET_TUN_OFFLOAD", true)
}

/// Creates the TUN device `name`, down, with offloads if `offload` and the kernel
/// offers them (if it does not, without, and says so).
pub fn create(name: &str, offload: bool) -> Result<Arc<AsyncDevice>> {
    let build = |offload: bool| {
        tun_rs::DeviceBuilder::new()
            .name(name)
            .enable(false)
            .offload(offload)
            .build_async()
    };
    let dev = match build(offload) {
        Ok(dev) => dev,
        Err(e) if offload => match build(false) {
            Ok(dev) => {
                tracing::warn!("TUN offloads unavailable on {name} ({e}); without them, every packet is one read or write");
                dev
            }
            Err(_) => return Err(tun_error(name, e)),
        },
        Err(e) => return Err(tun_error(name, e)),
    };
    Ok(Arc::new(dev))
}

fn tun_error(name: &str, e: std::io::Error) -> anyhow::Error {
    anyhow::Error::new(e).context(format!(
        "cannot create the TUN device {name} (is /dev/net/tun available?)"
    ))
}

/// The receiving end of [`spawn_reader`]; dropping it stops the reader (before the
/// device is removed, so that its removal is not reported as an error).
pub struct TunReader {
    pub rx: mpsc::Receiver<Vec<u8>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TunReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn packet_buffer(pool: &Pool, mtu: usize) -> Vec<u8> {
    let mut buf = pool.get();
    buf.resize(PAYLOAD_OFFSET + mtu, 0);
    buf
}

/// Reads packets from the TUN device into pool buffers (at [`PAYLOAD_OFFSET`], so
/// they are sealed in place) and queues them for the core. The channel closes when
/// the device fails.
pub fn spawn_reader(tun: Arc<AsyncDevice>, pool: Pool, mtu: usize) -> TunReader {
    let (tx, rx) = mpsc::channel(TUN_QUEUE);
    let task = tokio::spawn(async move {
        let mut whole = vec![0u8; VIRTIO_NET_HDR_LEN + SUPER_PACKET];
        let mut bufs: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE)
            .map(|_| packet_buffer(&pool, mtu))
            .collect();
        let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
        loop {
            match tun
                .recv_multiple(&mut whole, &mut bufs, &mut sizes, PAYLOAD_OFFSET)
                .await
            {
                Ok(n) => {
                    for (slot, &size) in bufs.iter_mut().zip(&sizes).take(n) {
                        let mut buf = std::mem::replace(slot, packet_buffer(&pool, mtu));
                        buf.truncate(PAYLOAD_OFFSET + size);
                        if tx.send(buf).await.is_err() {
                            return;
                        }
                    }
                }
                // A packet the offload code cannot split (not a device failure).
                Err(e) if e.raw_os_error().is_none() => {
                    tracing::debug!("TUN packet dropped: {e}");
                }
                Err(e) => {
                    tracing::error!("cannot read from the TUN device: {e}");
                    return;
                }
            }
        }
    });
    TunReader { rx, task }
}

/// Packets for the TUN device, written in batches by [`TunWriter::flush`]: with
/// offloads, consecutive segments of a TCP or UDP flow leave in one write.
/// Packets (or datagrams) and their bytes, counted for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub packets: u64,
    pub bytes: u64,
}

impl Counted {
    /// Counts one of `len` bytes.
    pub fn add(&mut self, len: usize) {
        self.add_run(1, len);
    }

    /// Counts `n` of `len` bytes each.
    pub fn add_run(&mut self, n: usize, len: usize) {
        self.packets += n as u64;
        self.bytes += (n * len) as u64;
    }
}

pub struct TunWriter {
    tun: Arc<AsyncDevice>,
    /// The packets queued for the device.
    pub written: Counted,
    /// Each holds `VIRTIO_NET_HDR_LEN` bytes of room, then a packet; capacity for a
    /// coalesced 64 KiB packet, so that coalescing never reallocates.
    bufs: Vec<Vec<u8>>,
    used: usize,
    gro: GROTable,
}

impl TunWriter {
    #[must_use]
    pub fn new(tun: Arc<AsyncDevice>) -> Self {
        Self {
            tun,
            bufs: (0..IDEAL_BATCH_SIZE)
                .map(|_| Vec::with_capacity(2 * VIRTIO_NET_HDR_LEN + SUPER_PACKET))
                .collect(),
            used: 0,
            gro: GROTable::default(),
            written: Counted::default(),
        }
    }

    /// Queues a copy of `pkt`; writes the queue first if it is full.
    pub async fn push(&mut self, pkt: &[u8]) {
        if self.used == self.bufs.len() {
            self.flush().await;
        }
        let buf = &mut self.bufs[self.used];
        buf.clear();
        buf.resize(VIRTIO_NET_HDR_LEN, 0);
        buf.extend_from_slice(pkt);
        self.used += 1;
        self.written.add(pkt.len());
    }

    /// Writes the queued packets. A failed write loses only its packets.
    pub async fn flush(&mut self) {
        if self.used == 0 {
            return;
        }
        let bufs = &mut self.bufs[..self.used];
        self.used = 0;
        if let Err(e) = self
            .tun
            .send_multiple(&mut self.gro, bufs, VIRTIO_NET_HDR_LEN)
            .await
        {
            tracing::debug!("TUN write failed: {e}");
        }
    }
}
