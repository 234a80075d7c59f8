//! The TCP connections a client carries, by circuit (sans-IO), so that those of a
//! circuit that died end with an RST instead of hanging.
//!
//! A circuit that dies takes its exit's NAT address with it: the next circuit goes
//! out from another address, which the far end of a connection does not know. The
//! connection is dead, but an application that only receives sends nothing and
//! would wait for its own timeout (minutes, or for ever). So when a circuit goes down,
//! the client writes to its TUN device, for each TCP connection the circuit carried,
//! an RST from the far end whose sequence number is the last acknowledgment number
//! the application sent: its next expected byte, which a reset must carry to be
//! taken at once (RFC 5961 §3.2). Should that number be stale, the application
//! answers with a challenge ACK; any segment of a reset connection other than a SYN
//! is answered with an RST at the segment's acknowledgment number, and never carried.
//! A SYN on the same ports opens a new connection, which is routed afresh.
//!
//! UDP flows are not refused: their next datagram takes a new circuit, which the
//! far end sees as a NAT rebinding (DNS asks again; QUIC migrates).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};

use crate::client::flows::{SweepClock, FLOW_IDLE, MAX_FLOWS};
use crate::node::CircuitId;

/// A reset connection is remembered this long, to answer its late segments (the
/// application's challenge ACK, retransmissions) with RSTs.
pub const RESET_HOLD: Duration = Duration::from_secs(120);

/// Hop limit of the RSTs written to the TUN device.
const RST_TTL: u8 = 64;

/// A connection as the application sees it: its own address and port, the far end's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Ends {
    local: IpAddr,
    local_port: u16,
    remote: IpAddr,
    remote_port: u16,
}

/// What the client reads of an outgoing TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    ends: Ends,
    /// SYN without ACK: the opening of a connection.
    opens: bool,
    rst: bool,
    /// The acknowledgment number, if the ACK flag is set.
    ack: Option<u32>,
}

impl Segment {
    /// The TCP segment in IP packet `pkt`, if it is one (a first fragment at least).
    #[must_use]
    pub fn parse(pkt: &[u8]) -> Option<Self> {
        let sliced = SlicedPacket::from_ip(pkt).ok()?;
        let (local, remote) = match sliced.net? {
            NetSlice::Ipv4(ip) => (
                IpAddr::V4(ip.header().source_addr()),
                IpAddr::V4(ip.header().destination_addr()),
            ),
            NetSlice::Ipv6(ip) => (
                IpAddr::V6(ip.header().source_addr()),
                IpAddr::V6(ip.header().destination_addr()),
            ),
            NetSlice::Arp(_) => return None,
        };
        let TransportSlice::Tcp(tcp) = sliced.transport? else {
            return None;
        };
        Some(Self {
            ends: Ends {
                local,
                local_port: tcp.source_port(),
                remote,
                remote_port: tcp.destination_port(),
            },
            opens: tcp.syn() && !tcp.ack(),
            rst: tcp.rst(),
            ack: tcp.ack().then(|| tcp.acknowledgment_number()),
        })
    }
}

#[derive(Debug)]
struct Conn {
    /// The circuit carrying it; `None` once it was reset.
    circuit: Option<CircuitId>,
    /// The last acknowledgment number the application sent (`None` before its first
    /// ACK: the connection is still opening).
    ack: Option<u32>,
    seen: Instant,
}

/// The TCP connections carried, by circuit, and those reset.
#[derive(Debug, Default)]
pub struct Connections {
    conns: HashMap<Ends, Conn>,
    sweeps: SweepClock,
}

impl Connections {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether outgoing `seg` belongs to a connection that was reset: then it must
    /// not be carried, and `answer` (cleared first) holds the RST to write back to
    /// the TUN device, if one is due (none for an RST). A SYN forgets the reset
    /// connection and is not refused: it opens a new one.
    pub fn refuse(&mut self, now: Instant, seg: &Segment, answer: &mut Vec<u8>) -> bool {
        answer.clear();
        self.sweep(now);
        let Some(conn) = self.conns.get_mut(&seg.ends) else {
            return false;
        };
        if conn.circuit.is_some() {
            return false;
        }
        if seg.opens {
            self.conns.remove(&seg.ends);
            return false;
        }
        conn.seen = now;
        if !seg.rst {
            if let Some(ack) = seg.ack {
                rst(&seg.ends, ack, answer);
            }
        }
        true
    }

    /// Outgoing `seg` went out on circuit `c`.
    pub fn carried(&mut self, now: Instant, seg: &Segment, c: CircuitId) {
        if seg.rst {
            self.conns.remove(&seg.ends);
            return;
        }
        if let Some(conn) = self.conns.get_mut(&seg.ends) {
            conn.circuit = Some(c);
            conn.ack = seg.ack.or(conn.ack);
            conn.seen = now;
            return;
        }
        if self.conns.len() >= MAX_FLOWS {
            self.forget_idle(now);
            if self.conns.len() >= MAX_FLOWS {
                return;
            }
        }
        self.conns.insert(
            seg.ends,
            Conn {
                circuit: Some(c),
                ack: seg.ack,
                seen: now,
            },
        );
    }

    /// Circuit `c` is gone: returns the RSTs (IP packets) that end the connections it
    /// carried, which are then remembered as reset. Connections still opening are
    /// forgotten: their SYN is sent again and routed afresh.
    pub fn circuit_down(&mut self, now: Instant, c: CircuitId) -> Vec<Vec<u8>> {
        let mut resets = Vec::new();
        self.conns.retain(|ends, conn| {
            if conn.circuit != Some(c) {
                return true;
            }
            let Some(ack) = conn.ack else {
                return false;
            };
            let mut pkt = Vec::new();
            rst(ends, ack, &mut pkt);
            resets.push(pkt);
            conn.circuit = None;
            conn.seen = now;
            true
        });
        resets
    }

    /// Connections remembered (carried or reset).
    #[must_use]
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// [`Self::forget_idle`], at most once a second.
    fn sweep(&mut self, now: Instant) {
        if self.sweeps.due(now) {
            self.forget_idle(now);
        }
    }

    /// Forgets connections idle for [`FLOW_IDLE`] and resets older than
    /// [`RESET_HOLD`].
    fn forget_idle(&mut self, now: Instant) {
        self.conns.retain(|_, conn| {
            let idle = now.saturating_duration_since(conn.seen);
            idle < if conn.circuit.is_some() {
                FLOW_IDLE
            } else {
                RESET_HOLD
            }
        });
    }
}

/// Writes into `out` (cleared first) an RST from the far end of `ends` to the
/// application, with sequence number `seq`.
fn rst(ends: &Ends, seq: u32, out: &mut Vec<u8>) {
    out.clear();
    let ip = match (ends.remote, ends.local) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            PacketBuilder::ipv4(from.octets(), to.octets(), RST_TTL)
        }
        (IpAddr::V6(from), IpAddr::V6(to)) => {
            PacketBuilder::ipv6(from.octets(), to.octets(), RST_TTL)
        }
        _ => return,
    };
    if ip
        .tcp(ends.remote_port, ends.local_port, seq, 0)
        .rst()
        .write(out, &[])
        .is_err()
    {
        out.clear();
    }
}

#[cfg(test)]
mod tests;
