//! The exit's packet logic (sans-IO): per-circuit pool addresses, exit policy and
//! per-circuit limits.
//!
//! Every client sends from the same tunnel address ([`CLIENT_V4`](crate::proto::addr::CLIENT_V4)),
//! so the exit gives each circuit its own address from a pool (1:1) and rewrites
//! the source of the circuit's packets to it before they enter the exit's TUN
//! device; the kernel then forwards and masquerades them. Replies arrive on the TUN
//! addressed to a pool address, which names the circuit; the destination is
//! rewritten back to the client's address (and, in ICMP errors, the quoted packet's
//! source too, so that PMTU discovery and traceroute work at the client).
//!
//! The circuits that joined a virtual circuit ([`vc`], PROTOCOL §12) share its one
//! pool address instead: an address belongs to an [`Owner`], a plain circuit or a
//! virtual circuit.

// Packets from any client's circuit reach this module: no indexing, slicing, unwrap
// or expect on them (SECURITY.md).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

pub mod limits;
pub mod nat;
pub mod policy;
pub mod vc;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};

use self::limits::FlowTable;
use self::policy::ExitPolicy;
use self::vc::{Accepted, Due, JoinError, Vcs};
use crate::node::CircuitId;
use crate::proto::addr::{self, DNS_V4, DNS_V6};
use crate::proto::bucket::TokenBucket;
use crate::proto::ip::{self, FlowKey, PROTO_TCP, PROTO_UDP};
use crate::proto::vc::VcId;

/// A flow with no packet from the client for this long no longer counts against the
/// circuit's flow limit.
pub const FLOW_IDLE: Duration = Duration::from_secs(120);

/// What to do with a packet that came out of a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Rewritten in place: write it to the TUN device.
    Forward,
    /// Rejected by the exit policy: send the ICMP answer in the caller's buffer back
    /// through the circuit.
    Answer,
    /// Dropped (counted in [`ExitStats`]).
    Drop,
}

/// What a pool address belongs to: the circuit it came out of, or the virtual
/// circuit that circuit is a leg of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Owner {
    Circuit(CircuitId),
    Vc(VcId),
}

impl From<CircuitId> for Owner {
    fn from(c: CircuitId) -> Self {
        Self::Circuit(c)
    }
}

/// What came due at [`Exit::handle_timeout`].
#[derive(Debug, PartialEq, Eq)]
pub enum ExitDue {
    /// Packets of a virtual circuit released from its reorder buffer, in order, for
    /// [`Exit::from_circuit`].
    Packets(Owner, Vec<Vec<u8>>),
    /// A virtual circuit without legs expired: its addresses, for [`Exit::release`]
    /// once the kernel forgot their connections (`None` if it never sent a packet).
    Closed(Option<Closed>),
}

/// The pool addresses of a closed circuit, held back until [`Exit::release`].
#[derive(Debug, PartialEq, Eq)]
#[must_use = "the addresses return to the pool only through Exit::release"]
pub struct Closed {
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    index: u32,
}

/// Counters of the exit's decisions.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExitStats {
    pub forwarded: u64,
    pub returned: u64,
    pub rejected_policy: u64,
    pub dropped_malformed: u64,
    pub dropped_rate: u64,
    pub dropped_flows: u64,
    pub dropped_pool_exhausted: u64,
    pub dropped_no_circuit: u64,
    /// Virtual circuits.
    pub vc: vc::VcStats,
}

/// Settings of the exit logic.
#[derive(Debug, Clone)]
pub struct ExitSettings {
    pub pool4: Ipv4Net,
    pub pool6: Ipv6Net,
    pub policy: ExitPolicy,
    pub max_flows: usize,
    pub max_pps: u32,
}

struct CircuitState {
    index: u32,
    /// The client's tunnel addresses, as last seen in its packets.
    client4: Option<Ipv4Addr>,
    client6: Option<Ipv6Addr>,
    flows: FlowTable<FlowKey>,
    bucket: TokenBucket,
}

/// The exit's table of circuits and their pool addresses.
pub struct Exit {
    cfg: ExitSettings,
    circuits: HashMap<Owner, CircuitState>,
    by_index: HashMap<u32, Owner>,
    vcs: Vcs,
    free: VecDeque<u32>,
    next_index: u32,
    capacity: u32,
    stats: ExitStats,
}

impl Exit {
    #[must_use]
    pub fn new(cfg: ExitSettings) -> Self {
        // Host indices 1..=capacity of both pools (the network address is skipped,
        // and for IPv4 the broadcast address too).
        let hosts4 = (1u64 << (32 - cfg.pool4.prefix_len())).saturating_sub(2);
        let hosts6 = 1u64
            .checked_shl(u32::from(128 - cfg.pool6.prefix_len()))
            .map_or(u64::MAX, |n| n - 1);
        let capacity = hosts4.min(hosts6).min(u64::from(u32::MAX)) as u32;
        Self {
            cfg,
            circuits: HashMap::new(),
            by_index: HashMap::new(),
            vcs: Vcs::default(),
            free: VecDeque::new(),
            next_index: 1,
            capacity,
            stats: ExitStats::default(),
        }
    }

    /// Replaces the exit policy (SIGHUP): it decides from the next packet on, for
    /// flows already open too.
    pub fn set_policy(&mut self, policy: ExitPolicy) {
        self.cfg.policy = policy;
    }

    #[must_use]
    pub fn stats(&self) -> ExitStats {
        ExitStats {
            vc: self.vcs.stats(),
            ..self.stats.clone()
        }
    }

    /// Circuits and virtual circuits holding a pool address.
    #[must_use]
    pub fn circuits(&self) -> usize {
        self.circuits.len()
    }

    /// The virtual circuits.
    #[must_use]
    pub fn vcs(&self) -> &Vcs {
        &self.vcs
    }

    /// The pool addresses of a circuit or virtual circuit, once it has sent a packet.
    #[must_use]
    pub fn addresses(&self, owner: impl Into<Owner>) -> Option<(Ipv4Addr, Ipv6Addr)> {
        self.circuits
            .get(&owner.into())
            .map(|c| (self.addr4(c.index), self.addr6(c.index)))
    }

    /// A JOIN payload on `circuit`: the number of legs its virtual circuit now has
    /// (for JOINED) and the leg it replaced (to be destroyed), or why it was refused
    /// (the circuit is then to be destroyed).
    /// `heard` says when a circuit last received anything (the node's
    /// [`crate::node::Node::last_forward`]).
    pub fn join(
        &mut self,
        now: Instant,
        circuit: CircuitId,
        payload: &[u8],
        heard: &dyn Fn(CircuitId) -> Option<Instant>,
    ) -> Result<Accepted, JoinError> {
        let carried = self.circuits.contains_key(&Owner::Circuit(circuit));
        self.vcs.join(now, circuit, payload, carried, heard)
    }

    /// Forward packet number `seq` of the virtual circuit `circuit` is a leg of, in
    /// `buf` (laid out as the caller's packets are): the packets it lets out of the
    /// reorder buffer, in order, are appended to `out` for [`Exit::from_circuit`]
    /// with the returned owner. Off a leg or dropped, the buffer comes back.
    pub fn from_leg(
        &mut self,
        now: Instant,
        circuit: CircuitId,
        seq: u32,
        buf: Vec<u8>,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<Owner, Vec<u8>> {
        self.vcs.forward(now, circuit, seq, buf, out).map(Owner::Vc)
    }

    /// Where a backward packet of `owner` goes: its circuit, or the chosen leg of its
    /// virtual circuit with the packet's number (`heard` as for [`Exit::join`]).
    /// `None`: a virtual circuit without legs.
    pub fn route_back(
        &mut self,
        now: Instant,
        owner: Owner,
        heard: &dyn Fn(CircuitId) -> Option<Instant>,
    ) -> Option<(CircuitId, Option<u32>)> {
        match owner {
            Owner::Circuit(c) => Some((c, None)),
            Owner::Vc(id) => self
                .vcs
                .backward(&id, now, heard)
                .map(|(c, s)| (c, Some(s))),
        }
    }

    /// Counts a VDATA on a circuit that is not a leg.
    pub fn misrouted(&mut self) {
        self.vcs.misrouted();
    }

    /// When [`Exit::handle_timeout`] has something to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.vcs.poll_timeout()
    }

    /// The next thing that came due by `now`; call until `None`.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<ExitDue> {
        Some(match self.vcs.handle_timeout(now)? {
            Due::Packets(id, p) => ExitDue::Packets(Owner::Vc(id), p),
            Due::Expired(id) => ExitDue::Closed(self.close_owner(Owner::Vc(id))),
        })
    }

    fn addr4(&self, index: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cfg.pool4.network()).wrapping_add(index))
    }

    fn addr6(&self, index: u32) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.cfg.pool6.network()).wrapping_add(u128::from(index)))
    }

    fn index_of(&self, addr: IpAddr) -> Option<u32> {
        let offset = match addr {
            IpAddr::V4(a) if self.cfg.pool4.contains(&a) => {
                u64::from(u32::from(a) - u32::from(self.cfg.pool4.network()))
            }
            IpAddr::V6(a) if self.cfg.pool6.contains(&a) => {
                let off = u128::from(a) - u128::from(self.cfg.pool6.network());
                u64::try_from(off).ok()?
            }
            _ => return None,
        };
        u32::try_from(offset)
            .ok()
            .filter(|&i| i >= 1 && i <= self.capacity)
    }

    /// A packet from `owner`'s client, in `pkt` (rewritten in place): from a
    /// circuit's DATA, or let out of a virtual circuit's reorder buffer. On
    /// [`Verdict::Answer`] the ICMP rejection is in `answer`.
    pub fn from_circuit(
        &mut self,
        now: Instant,
        owner: impl Into<Owner>,
        pkt: &mut [u8],
        answer: &mut Vec<u8>,
    ) -> Verdict {
        let circuit = owner.into();
        if let Owner::Circuit(c) = circuit {
            if self.vcs.vc_of(c).is_some() {
                self.vcs.misrouted();
                return Verdict::Drop;
            }
        }
        let Ok(sum) = ip::summarize(pkt) else {
            self.stats.dropped_malformed += 1;
            return Verdict::Drop;
        };
        if !self.circuits.contains_key(&circuit) {
            // Fresh addresses first, then the longest-freed one: the kernel's
            // connection tracking may still hold flows of a closed circuit's address,
            // and their late replies must not reach a new client.
            let fresh = (self.next_index <= self.capacity).then(|| {
                self.next_index += 1;
                self.next_index - 1
            });
            let index = match fresh.or_else(|| self.free.pop_front()) {
                Some(i) => i,
                None => {
                    self.stats.dropped_pool_exhausted += 1;
                    return Verdict::Drop;
                }
            };
            self.by_index.insert(index, circuit);
            self.circuits.insert(
                circuit,
                CircuitState {
                    index,
                    client4: None,
                    client6: None,
                    flows: FlowTable::new(self.cfg.max_flows, FLOW_IDLE),
                    bucket: TokenBucket::new(self.cfg.max_pps, self.cfg.max_pps, now),
                },
            );
        }
        let Some(c) = self.circuits.get_mut(&circuit) else {
            return Verdict::Drop;
        };
        if !c.bucket.take(now) {
            self.stats.dropped_rate += 1;
            return Verdict::Drop;
        }
        let dns = (sum.dst == IpAddr::V4(DNS_V4) || sum.dst == IpAddr::V6(DNS_V6))
            && (sum.proto == PROTO_UDP || sum.proto == PROTO_TCP)
            && sum.dst_port == Some(53);
        // Never to another circuit's pool address, whatever the policy says: the
        // exit does not connect its clients with each other.
        let to_pool = match sum.dst {
            IpAddr::V4(a) => self.cfg.pool4.contains(&a),
            IpAddr::V6(a) => self.cfg.pool6.contains(&a),
        };
        if !dns && (to_pool || !self.cfg.policy.allows(sum.dst, sum.dst_port)) {
            self.stats.rejected_policy += 1;
            return match ip::icmp_prohibited(pkt, addr::exit_addr(sum.dst), answer) {
                Ok(()) => Verdict::Answer,
                Err(_) => Verdict::Drop,
            };
        }
        if !c.flows.admit(now, sum.flow()) {
            self.stats.dropped_flows += 1;
            return Verdict::Drop;
        }
        let index = c.index;
        let pool = match sum.src {
            IpAddr::V4(a) => {
                c.client4 = Some(a);
                IpAddr::V4(self.addr4(index))
            }
            IpAddr::V6(a) => {
                c.client6 = Some(a);
                IpAddr::V6(self.addr6(index))
            }
        };
        if nat::set_src(pkt, pool).is_err() {
            self.stats.dropped_malformed += 1;
            return Verdict::Drop;
        }
        self.stats.forwarded += 1;
        Verdict::Forward
    }

    /// A packet read from the TUN device: returns the circuit or virtual circuit it
    /// belongs to ([`Exit::route_back`] says where it goes), with the destination
    /// rewritten to the client's address, or `None` to drop it.
    pub fn from_tun(&mut self, pkt: &mut [u8]) -> Option<Owner> {
        let Ok(sum) = ip::summarize(pkt) else {
            self.stats.dropped_malformed += 1;
            return None;
        };
        let found = self
            .index_of(sum.dst)
            .and_then(|i| self.by_index.get(&i))
            .and_then(|id| Some((*id, self.circuits.get(id)?)));
        let Some((id, c)) = found else {
            self.stats.dropped_no_circuit += 1;
            return None;
        };
        let client = match sum.dst {
            IpAddr::V4(_) => c.client4.map(IpAddr::V4),
            IpAddr::V6(_) => c.client6.map(IpAddr::V6),
        };
        let Some(client) = client else {
            self.stats.dropped_no_circuit += 1;
            return None;
        };
        if nat::set_dst(pkt, client).is_err() {
            self.stats.dropped_malformed += 1;
            return None;
        }
        self.stats.returned += 1;
        Some(id)
    }

    /// Forgets a closed circuit. Its pool addresses are not handed out again until
    /// the caller passes the returned [`Closed`] to [`Exit::release`], once the
    /// kernel's connection tracking forgot their flows: else a late reply to the old
    /// circuit would reach the next client given the same address. A leg of a
    /// virtual circuit leaves it instead; the virtual circuit keeps its address
    /// ([`ExitDue::Closed`] hands it over when it expires).
    pub fn close(&mut self, now: Instant, circuit: CircuitId) -> Option<Closed> {
        if self.vcs.leg_closed(now, circuit).is_some() {
            return None;
        }
        self.close_owner(Owner::Circuit(circuit))
    }

    fn close_owner(&mut self, owner: Owner) -> Option<Closed> {
        let c = self.circuits.remove(&owner)?;
        self.by_index.remove(&c.index);
        Some(Closed {
            v4: self.addr4(c.index),
            v6: self.addr6(c.index),
            index: c.index,
        })
    }

    /// Makes a closed circuit's pool addresses available again (after the ones never
    /// used, and after those released before).
    pub fn release(&mut self, closed: Closed) {
        self.free.push_back(closed.index);
    }
}

#[cfg(test)]
mod tests;
