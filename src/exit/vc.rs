//! Virtual circuits at the exit (PROTOCOL §12): which circuits are legs of which
//! virtual circuit (VC), the order of each VC's forward packets, and the leg and
//! number of each backward one.
//!
//! A JOIN makes its circuit a leg of the VC it names, creating the VC if the exit
//! does not know it. A JOIN to a VC that has all its legs replaces the leg heard
//! from longest ago: the client joins a new leg when it found one
//! dead, which the exit may not know yet (a dead middle cannot pass the DESTROY on). Forward VDATA goes through the VC's reorder buffer; the
//! packets it lets out, in order, belong to the VC (whose pool address [`super::Exit`]
//! keeps). Each backward packet takes the VC's next number and goes on the leg the
//! latest forward packet came on, unless that leg closed or has been silent for
//! [`LEG_STALE`] while another was heard (its KEEPALIVEs count, which the caller's
//! `heard` reports): then on the leg heard last. A
//! VC outlives its last leg by [`VC_LINGER`], so that its client can rejoin it.
//!
//! Memory is bounded by what clients cannot inflate: a VC exists only while it has
//! a leg (each a circuit of the node's limited number) and for `VC_LINGER` after,
//! without packets: its reorder buffer is dropped when its last leg closes. The
//! reorder buffers of all VCs hold at most [`VC_REORDER_BYTES`] together, so many
//! VCs that each fill theirs give up their gaps early instead of growing memory.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::node::CircuitId;
use crate::proto::reorder::{highest, Reorder, ReorderStats};
use crate::proto::vc::{Join, VcId};

/// How long a VC and its pool address outlive its last leg, for the client to
/// rejoin with a new one (provisional, PROTOCOL §12): a client that lost every
/// route rebuilds one within seconds; TCP connections survive a 30 s silence.
pub const VC_LINGER: Duration = Duration::from_secs(30);
/// Backward packets leave the leg of the latest forward packet once nothing came
/// from it for this long while another leg was heard: more than a busy client's
/// probe interval (250 ms), so a client's choice holds between its probes, and short
/// enough that replies stop going to a leg the client found broken even when the
/// client has nothing to send (TCP waiting for a retransmission).
pub const LEG_STALE: Duration = Duration::from_millis(300);
/// Bytes the reorder buffers of all of an exit's VCs hold together at most: 32
/// buffers filled to `REORDER_BYTES` (buffers fill only while legs differ in delay
/// or lose packets).
pub const VC_REORDER_BYTES: usize = 32 * 1024 * 1024;

/// Why a JOIN was refused (the exit then destroys the circuit, PROTOCOL §12).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    #[error("malformed JOIN")]
    Malformed,
    #[error("the circuit joined a virtual circuit already")]
    AlreadyJoined,
    #[error("the circuit carried DATA already")]
    CarriedData,
}

/// An accepted JOIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The legs the VC has now (for JOINED).
    pub legs: u8,
    /// The leg the new one replaced, to be destroyed.
    pub replaced: Option<CircuitId>,
}

/// Counters of the exit's virtual circuits.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VcStats {
    /// VCs created by a JOIN.
    pub created: u64,
    /// Legs joined (the first of each VC included).
    pub joined: u64,
    /// JOINs refused.
    pub refused: u64,
    /// Legs that closed.
    pub legs_closed: u64,
    /// Legs replaced by a JOIN to a VC with all its legs.
    pub legs_replaced: u64,
    /// VCs ended `VC_LINGER` after their last leg.
    pub expired: u64,
    /// VDATA on a circuit that is not a leg, DATA on one that is: dropped.
    pub misrouted: u64,
    /// The forward reorder buffers' counts, of live and ended VCs.
    pub reorder: ReorderStats,
}

#[derive(Debug)]
struct Vc {
    max_legs: u8,
    /// Its legs, oldest first.
    legs: Vec<CircuitId>,
    /// When each leg (by position in `legs`) carried its latest forward packet, or
    /// joined.
    heard: Vec<Instant>,
    /// The highest forward number each leg (by position in `legs`) brought.
    highs: Vec<Option<u32>>,
    /// The leg of the latest forward packet: backward packets go on it.
    latest: Option<CircuitId>,
    /// The number of the next backward packet.
    next_seq: u32,
    reorder: Reorder,
    /// When its last leg closed.
    orphaned: Option<Instant>,
    /// Its entry in `Vcs::timers`.
    deadline: Option<Instant>,
}

impl Vc {
    fn deadline(&self) -> Option<Instant> {
        match self.orphaned {
            Some(at) => at.checked_add(VC_LINGER),
            None => self.reorder.deadline(),
        }
    }
}

/// What came due at [`Vcs::handle_timeout`].
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Packets of the VC that waited their time for a gap, in order.
    Packets(VcId, Vec<Vec<u8>>),
    /// The VC had no leg for `VC_LINGER`: it is gone.
    Expired(VcId),
}

/// The exit's virtual circuits.
#[derive(Debug, Default)]
pub struct Vcs {
    vcs: HashMap<VcId, Vc>,
    legs: HashMap<CircuitId, VcId>,
    timers: BTreeSet<(Instant, VcId)>,
    /// Bytes held in all reorder buffers.
    held: usize,
    stats: VcStats,
}

impl Vcs {
    #[must_use]
    pub fn stats(&self) -> VcStats {
        let mut s = self.stats.clone();
        for vc in self.vcs.values() {
            s.reorder.add(&vc.reorder.stats);
        }
        s
    }

    /// Live and lingering VCs.
    #[must_use]
    pub fn len(&self) -> usize {
        self.vcs.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.vcs.is_empty()
    }

    /// Bytes held in all reorder buffers.
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// The VC `circuit` is a leg of.
    #[must_use]
    pub fn vc_of(&self, circuit: CircuitId) -> Option<VcId> {
        self.legs.get(&circuit).copied()
    }

    /// The legs of a VC, oldest first.
    #[must_use]
    pub fn legs(&self, vc: &VcId) -> &[CircuitId] {
        self.vcs.get(vc).map_or(&[], |v| &v.legs)
    }

    /// Counts a cell of the wrong kind for its circuit (VDATA off a leg, DATA on
    /// one).
    pub fn misrouted(&mut self) {
        self.stats.misrouted += 1;
    }

    /// A JOIN payload: makes `circuit` a leg of the VC it names (created if
    /// unknown), in place of its quietest leg if it has all its legs.
    /// `carried_data`: the circuit sent DATA before.
    /// `heard` says when a circuit last received anything (KEEPALIVEs too).
    pub fn join(
        &mut self,
        now: Instant,
        circuit: CircuitId,
        payload: &[u8],
        carried_data: bool,
        heard: &dyn Fn(CircuitId) -> Option<Instant>,
    ) -> Result<Accepted, JoinError> {
        let parsed = Join::parse(payload);
        let refused = if self.legs.contains_key(&circuit) {
            Some(JoinError::AlreadyJoined)
        } else if carried_data {
            Some(JoinError::CarriedData)
        } else {
            parsed.err().map(|_| JoinError::Malformed)
        };
        let (None, Ok(join)) = (refused, parsed) else {
            self.stats.refused += 1;
            return Err(refused.unwrap_or(JoinError::Malformed));
        };
        let vc = self.vcs.entry(join.vc).or_insert_with(|| {
            self.stats.created += 1;
            Vc {
                max_legs: join.max_legs,
                legs: Vec::new(),
                heard: Vec::new(),
                highs: Vec::new(),
                latest: None,
                next_seq: 0,
                reorder: Reorder::default(),
                orphaned: None,
                deadline: None,
            }
        });
        let mut replaced = None;
        if vc.legs.len() >= usize::from(vc.max_legs) {
            let quietest = vc
                .legs
                .iter()
                .zip(&vc.heard)
                .map(|(&l, &t)| heard(l).map_or(t, |h| h.max(t)))
                .enumerate()
                .min_by_key(|(_, t)| *t);
            if let Some((i, _)) = quietest {
                replaced = Some(vc.legs.remove(i));
                vc.heard.remove(i);
                vc.highs.remove(i);
            }
        }
        vc.legs.push(circuit);
        vc.heard.push(now);
        vc.highs.push(None);
        vc.orphaned = None;
        if replaced.is_some_and(|r| vc.latest == Some(r)) {
            vc.latest = None;
        }
        let legs = u8::try_from(vc.legs.len()).unwrap_or(u8::MAX);
        if let Some(r) = replaced {
            self.legs.remove(&r);
            self.stats.legs_replaced += 1;
        }
        self.legs.insert(circuit, join.vc);
        self.stats.joined += 1;
        self.reschedule(join.vc);
        Ok(Accepted { legs, replaced })
    }

    /// Forward packet number `seq` (its buffer, as the caller lays it out) from
    /// `circuit`: the packets it lets out of the VC's reorder buffer are appended to
    /// `out`, in order, and the VC is returned. Off a leg, or dropped by the reorder
    /// buffer, the buffer comes back (and `out` may have packets of the leg's VC
    /// all the same).
    pub fn forward(
        &mut self,
        now: Instant,
        circuit: CircuitId,
        seq: u32,
        buf: Vec<u8>,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<VcId, Vec<u8>> {
        let Some((id, vc)) = self
            .legs
            .get(&circuit)
            .and_then(|id| Some((*id, self.vcs.get_mut(id)?)))
        else {
            self.stats.misrouted += 1;
            return Err(buf);
        };
        vc.latest = Some(circuit);
        if let Some(i) = vc.legs.iter().position(|&l| l == circuit) {
            if let Some(t) = vc.heard.get_mut(i) {
                *t = now;
            }
            if let Some(h) = vc.highs.get_mut(i) {
                *h = Some(highest(*h, seq));
            }
        }
        let before = vc.reorder.held_bytes();
        let room = VC_REORDER_BYTES.saturating_sub(self.held) + before;
        let pushed = vc.reorder.push_within(now, seq, buf, room, out);
        vc.reorder.passed(vc.highs.iter().copied(), out);
        let after = vc.reorder.held_bytes();
        self.held = self.held.saturating_sub(before) + after;
        self.reschedule(id);
        pushed.map(|()| id).map_err(|(_, b)| b)
    }

    /// The leg and number of the VC's next backward packet. `heard` says when a
    /// circuit last received anything (KEEPALIVEs too).
    pub fn backward(
        &mut self,
        id: &VcId,
        now: Instant,
        heard: &dyn Fn(CircuitId) -> Option<Instant>,
    ) -> Option<(CircuitId, u32)> {
        let vc = self.vcs.get_mut(id)?;
        let fresh = || {
            vc.legs
                .iter()
                .zip(&vc.heard)
                .map(|(&l, &t)| (l, heard(l).map_or(t, |h| h.max(t))))
        };
        let latest = vc
            .latest
            .and_then(|l| fresh().find(|(c, _)| *c == l))
            .filter(|(_, t)| now.saturating_duration_since(*t) < LEG_STALE);
        let leg = match latest {
            Some((l, _)) => l,
            None => fresh().max_by_key(|(_, t)| *t)?.0,
        };
        vc.latest = Some(leg);
        let seq = vc.next_seq;
        vc.next_seq = seq.wrapping_add(1);
        Some((leg, seq))
    }

    /// A circuit closed: if it was a leg, it leaves its VC, whose held packets are
    /// dropped if it has no leg left. Returns its VC.
    pub fn leg_closed(&mut self, now: Instant, circuit: CircuitId) -> Option<VcId> {
        let id = self.legs.remove(&circuit)?;
        self.stats.legs_closed += 1;
        if let Some(vc) = self.vcs.get_mut(&id) {
            if let Some(i) = vc.legs.iter().position(|&l| l == circuit) {
                vc.legs.remove(i);
                vc.heard.remove(i);
                vc.highs.remove(i);
            }
            if vc.latest == Some(circuit) {
                vc.latest = None;
            }
            if vc.legs.is_empty() {
                vc.orphaned = Some(now);
                self.held = self.held.saturating_sub(vc.reorder.held_bytes());
                vc.reorder.clear();
            }
        }
        self.reschedule(id);
        Some(id)
    }

    /// When [`Vcs::handle_timeout`] has something to do.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// The next VC whose deadline passed, with what came due; `None` when none is due.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Due> {
        let &(at, id) = self.timers.first()?;
        if at > now {
            return None;
        }
        self.timers.pop_first();
        let vc = self.vcs.get_mut(&id)?;
        vc.deadline = None;
        if vc.orphaned.is_some() {
            let vc = self.vcs.remove(&id)?;
            self.stats.reorder.add(&vc.reorder.stats);
            self.stats.expired += 1;
            return Some(Due::Expired(id));
        }
        let before = vc.reorder.held_bytes();
        let mut out = Vec::new();
        vc.reorder.poll(now, &mut out);
        self.held = self
            .held
            .saturating_sub(before.saturating_sub(vc.reorder.held_bytes()));
        self.reschedule(id);
        Some(Due::Packets(id, out))
    }

    /// Puts a VC's timer at its current deadline.
    fn reschedule(&mut self, id: VcId) {
        let Some(vc) = self.vcs.get_mut(&id) else {
            return;
        };
        let next = vc.deadline();
        if next == vc.deadline {
            return;
        }
        if let Some(old) = vc.deadline {
            self.timers.remove(&(old, id));
        }
        if let Some(d) = next {
            self.timers.insert((d, id));
        }
        vc.deadline = next;
    }
}

#[cfg(test)]
mod tests;
