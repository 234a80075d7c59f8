//! A client's virtual circuit (PROTOCOL §12): `k` circuits (legs) to one exit,
//! joined there into one address, that carry the client's packets numbered so the
//! exit delivers them in order whichever leg they took.
//!
//! The legs go through disjoint entries and middles ([`VirtualCircuit::avoid`] names
//! them for the path of a new leg). A leg that came up sends JOIN and carries
//! packets once JOINED came back. Each packet takes the VC's next number and the
//! leg [`VirtualCircuit::route`] chooses: the leg with the lowest round trip while
//! the VC sends little (interactive traffic keeps the fastest path), all live legs
//! in proportion to their speed (in runs of [`RUN_BYTES`] while it sends bulk
//! itself) once it sends and receives more than [`BULK_BYTES`] per [`BULK_WINDOW`]
//! (a bulk transfer, either way, gets the bandwidth of every route: the exit
//! replies on the leg the client used last), leaving out legs both [`SLOW_FACTOR`]
//! times and [`SLOW_SLACK`] slower than the fastest (their packets would wait in
//! the exit's reorder buffer).
//!
//! A leg that has heard nothing since a packet went on it for twice its round trip
//! (at least [`SUSPECT_AFTER`]) is suspect: new packets avoid it while another leg
//! is not, so a route that just broke stops taking traffic within tens of
//! milliseconds, long before it is found dead.
//!
//! While the VC carries traffic it probes each leg ([`Node::probe`]) every
//! [`PROBE_EVERY`]: the answers measure each leg's round trip (queues included, so a
//! loaded leg looks slower) and show it alive. A leg that heard nothing for
//! [`LEG_DEAD_AFTER`] while another leg did is dead: it is closed, its traffic goes
//! to the others at once, and the caller builds a replacement
//! ([`VirtualCircuit::wants_leg`]). The backward packets the legs bring are put in
//! order by the VC's reorder buffer.

use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};

use crate::node::{CircuitId, Node, SendError, Transmit};
use crate::proto::reorder::{highest, Rejected, Reorder, ReorderStats};
use crate::proto::vc::{Join, Joined, VcId, MAX_LEGS, VC_ID_LEN};
use crate::proto::wire::{Cmd, PAYLOAD_OFFSET};

/// A busy VC probes each leg this often. Four probes per second per leg cost a
/// 128-byte cell each way: 4 KB/s per leg, only while the VC sends.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// A leg that heard nothing for this long while another leg did is dead: three
/// probe intervals (a probe and its answer lost twice in a row at 10% loss each way
/// happens once in about 28; thrice, once in 150), and within the 1 s
/// target for the longest stall.
pub const LEG_DEAD_AFTER: Duration = Duration::from_millis(750);
/// The VC probes its legs while it sent something within this long.
pub const BUSY_FOR: Duration = Duration::from_secs(1);
/// A leg that heard nothing since a packet went on it for twice its round trip plus
/// this long (and at least this long) is suspect: new packets avoid it.
pub const SUSPECT_AFTER: Duration = Duration::from_millis(50);
/// A JOIN not answered within this long: the leg is closed and replaced.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The window over which the VC measures how much it sends and receives.
pub const BULK_WINDOW: Duration = Duration::from_millis(100);
/// Sending and receiving more than this per [`BULK_WINDOW`] (1.3 Mbit/s) spreads
/// packets over all live legs; below it they take the fastest. Received bytes
/// count: the exit replies on the leg the client used last, so a download's
/// acknowledgements spread over the legs spread the download with them.
pub const BULK_BYTES: usize = 16 * 1024;
/// A VC that sends bulk sends it in runs of this many bytes on one leg, so each
/// hop still gets its packets in batches and the exit's reorder buffer sees few
/// switches. (A VC that mostly receives spreads packet by packet: its
/// acknowledgements steer the exit's replies, and long runs of them left one leg
/// without packets while a gap on it waited.)
pub const RUN_BYTES: usize = 64 * 1024;
/// Legs slower than this many times the fastest, and by more than [`SLOW_SLACK`],
/// carry no bulk traffic.
pub const SLOW_FACTOR: u32 = 2;
/// See [`SLOW_FACTOR`]: without this slack, a queue of tens of ms on a path of one
/// would leave out a loaded leg, and the legs would take turns instead of adding up.
pub const SLOW_SLACK: Duration = Duration::from_millis(50);

/// Where a leg is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegState {
    /// Its circuit is being built.
    Building,
    /// Up; JOIN sent at the instant, JOINED awaited.
    Joining(Instant),
    /// Joined: carries packets.
    Live,
}

/// One leg of the VC.
#[derive(Debug, Clone)]
pub struct Leg {
    pub circuit: CircuitId,
    /// The keys of its gateways, entry first, exit last.
    pub hops: Vec<[u8; 32]>,
    pub state: LegState,
    /// When it was last probed.
    probed: Option<Instant>,
    /// The first packet sent on it since it last heard anything.
    unanswered: Option<Instant>,
    /// Whether it was suspect at the last packet routed.
    suspect: bool,
    /// Its share of bulk traffic (smooth weighted round robin).
    credit: i64,
    /// The highest backward number it brought.
    high: Option<u32>,
}

/// Why a leg left the VC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegEnd {
    /// It heard nothing for [`LEG_DEAD_AFTER`] while another leg did.
    Silent,
    /// Its JOIN went unanswered for [`JOIN_TIMEOUT`].
    JoinTimeout,
}

/// What a client's virtual circuit has done.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VcStats {
    /// Legs that joined.
    pub joined: u64,
    /// Legs found dead by the VC (silent, or their JOIN unanswered).
    pub legs_dead: u64,
    /// Legs whose circuit went down (DESTROY, a dead link, a silent circuit).
    pub legs_down: u64,
    /// Probes sent.
    pub probes: u64,
    /// JOINED or VDATA that the VC did not expect: dropped.
    pub unexpected: u64,
    /// The backward reorder buffer's counts.
    pub reorder: ReorderStats,
}

/// A client's virtual circuit.
#[derive(Debug)]
pub struct VirtualCircuit {
    id: VcId,
    exit: [u8; 32],
    want: u8,
    legs: Vec<Leg>,
    next_seq: u32,
    reorder: Reorder,
    last_send: Option<Instant>,
    /// The current [`BULK_WINDOW`]'s start, the bytes sent and received in it and
    /// in the one before, and of them the bytes sent.
    window: (Option<Instant>, [usize; 2], [usize; 2]),
    /// The leg of the current run of bulk packets and the bytes sent since it began.
    run: Option<(CircuitId, usize)>,
    unexpected: u64,
    joined: u64,
    legs_dead: u64,
    legs_down: u64,
    probes: u64,
}

impl VirtualCircuit {
    /// A VC of `want` legs (1 to [`MAX_LEGS`]) to `exit`, with a fresh random id.
    pub fn new(rng: &mut (impl RngCore + CryptoRng), want: u8, exit: [u8; 32]) -> Self {
        let mut id = [0u8; VC_ID_LEN];
        rng.fill_bytes(&mut id);
        Self {
            id: VcId(id),
            exit,
            want: want.clamp(1, MAX_LEGS),
            legs: Vec::new(),
            next_seq: 0,
            reorder: Reorder::default(),
            last_send: None,
            window: (None, [0; 2], [0; 2]),
            run: None,
            unexpected: 0,
            joined: 0,
            legs_dead: 0,
            legs_down: 0,
            probes: 0,
        }
    }

    /// The exit's key.
    #[must_use]
    pub fn exit(&self) -> [u8; 32] {
        self.exit
    }

    #[must_use]
    pub fn legs(&self) -> &[Leg] {
        &self.legs
    }

    #[must_use]
    pub fn stats(&self) -> VcStats {
        VcStats {
            joined: self.joined,
            legs_dead: self.legs_dead,
            legs_down: self.legs_down,
            probes: self.probes,
            unexpected: self.unexpected,
            reorder: self.reorder.stats,
        }
    }

    /// Whether `circuit` is one of its legs.
    #[must_use]
    pub fn has_leg(&self, circuit: CircuitId) -> bool {
        self.legs.iter().any(|l| l.circuit == circuit)
    }

    /// Whether a leg carries packets.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.legs.iter().any(|l| l.state == LegState::Live)
    }

    /// Whether it needs one more leg built (it has fewer than it wants, counting
    /// those being built or joining).
    #[must_use]
    pub fn wants_leg(&self) -> bool {
        self.legs.len() < usize::from(self.want)
    }

    /// Whether a new leg should be built now: one is wanted, none is being built,
    /// and the VC is up (a VC still joining its first leg waits for it).
    #[must_use]
    pub fn builds_leg(&self) -> bool {
        self.wants_leg() && self.is_up() && !self.legs.iter().any(|l| l.state == LegState::Building)
    }

    /// The gateways a new leg's path must avoid: every gateway of the other legs
    /// but the shared exit. (The gateways of a leg that died are the caller's to
    /// avoid for a while, as any failed gateway.)
    #[must_use]
    pub fn avoid(&self) -> Vec<[u8; 32]> {
        self.legs
            .iter()
            .flat_map(|l| l.hops.iter().copied())
            .filter(|k| *k != self.exit)
            .collect()
    }

    fn remove_leg(&mut self, circuit: CircuitId) -> bool {
        let before = self.legs.len();
        self.legs.retain(|l| l.circuit != circuit);
        self.legs.len() < before
    }

    /// A leg's circuit is being built through `hops` (keys, entry first).
    pub fn add_leg(&mut self, circuit: CircuitId, hops: Vec<[u8; 32]>) {
        self.legs.push(Leg {
            circuit,
            hops,
            state: LegState::Building,
            probed: None,
            unanswered: None,
            suspect: false,
            credit: 0,
            high: None,
        });
    }

    /// A leg's circuit came up: sends its JOIN.
    pub fn on_up(
        &mut self,
        now: Instant,
        node: &mut Node,
        rng: &mut (impl RngCore + CryptoRng),
        circuit: CircuitId,
    ) -> Result<Option<Transmit>, SendError> {
        let Some(leg) = self.legs.iter_mut().find(|l| l.circuit == circuit) else {
            return Err(SendError::NoCircuit);
        };
        let join = Join {
            vc: self.id,
            max_legs: self.want,
        }
        .emit();
        let mut buf = Vec::with_capacity(PAYLOAD_OFFSET + join.len());
        buf.resize(PAYLOAD_OFFSET, 0);
        buf.extend_from_slice(&join);
        leg.state = LegState::Joining(now);
        node.send_cell(now, rng, circuit, Cmd::Join, buf, join.len())
    }

    /// A JOINED on `circuit`: the leg is live. Returns whether it was expected.
    pub fn on_joined(&mut self, circuit: CircuitId, payload: &[u8]) -> bool {
        let joining = self
            .legs
            .iter_mut()
            .find(|l| l.circuit == circuit && matches!(l.state, LegState::Joining(_)));
        match (joining, Joined::parse(payload)) {
            (Some(leg), Ok(_)) => {
                leg.state = LegState::Live;
                self.joined += 1;
                true
            }
            _ => {
                self.unexpected += 1;
                false
            }
        }
    }

    /// A leg's circuit went down (or failed to build): it leaves the VC. Returns
    /// whether it was a leg.
    pub fn on_down(&mut self, circuit: CircuitId) -> bool {
        let was = self.remove_leg(circuit);
        if was {
            self.legs_down += 1;
        }
        was
    }

    /// The leg and number of the next packet, `len` bytes long; `None` when no leg
    /// is live.
    pub fn route(&mut self, now: Instant, node: &Node, len: usize) -> Option<(CircuitId, u32)> {
        let [bytes, sent] = self.count(now, len, true);
        let mut clear = false;
        for l in &mut self.legs {
            l.suspect = l.state == LegState::Live && is_suspect(l, node, now);
            clear |= l.state == LegState::Live && !l.suspect;
        }
        let rtt = |l: &Leg| node.rtt(l.circuit);
        let live = || {
            self.legs
                .iter()
                .filter(|l| l.state == LegState::Live && !(clear && l.suspect))
        };
        let best = live().filter_map(rtt).min();
        let fastest = live()
            .min_by_key(|l| rtt(l).unwrap_or(Duration::MAX))?
            .circuit;
        let run = self.run.filter(|&(l, n)| {
            n < RUN_BYTES
                && self
                    .legs
                    .iter()
                    .any(|x| x.circuit == l && x.state == LegState::Live && !(clear && x.suspect))
        });
        let leg = if bytes <= BULK_BYTES {
            self.run = None;
            fastest
        } else if sent <= BULK_BYTES {
            self.run = None;
            self.spread(node, best, clear).unwrap_or(fastest)
        } else if let Some((l, n)) = run {
            self.run = Some((l, n.saturating_add(len)));
            l
        } else {
            let l = self.spread(node, best, clear).unwrap_or(fastest);
            self.run = Some((l, len));
            l
        };
        if let Some(l) = self.legs.iter_mut().find(|l| l.circuit == leg) {
            let heard = node.last_heard(leg);
            if l.unanswered.is_none_or(|t| heard.is_some_and(|h| h >= t)) {
                l.unanswered = Some(now);
            }
        }
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        self.last_send = Some(now);
        Some((leg, seq))
    }

    /// Adds `len` bytes sent or received at `now` to the [`BULK_WINDOW`] they fall
    /// in (`sent`: sent); returns the most of this window and the one before, of
    /// all bytes and of the bytes sent.
    fn count(&mut self, now: Instant, len: usize, sent: bool) -> [usize; 2] {
        let (start, bytes, before) = self.window;
        let age = start.map(|s| now.saturating_duration_since(s));
        let add = [len, if sent { len } else { 0 }];
        self.window = match age {
            Some(a) if a < BULK_WINDOW => (
                start,
                [
                    bytes[0].saturating_add(add[0]),
                    bytes[1].saturating_add(add[1]),
                ],
                before,
            ),
            Some(a) if a < BULK_WINDOW * 2 => (Some(now), add, bytes),
            _ => (Some(now), add, [0; 2]),
        };
        let (_, b, p) = self.window;
        [b[0].max(p[0]), b[1].max(p[1])]
    }

    /// The next leg of a bulk transfer: smooth weighted round robin over the live
    /// legs within [`SLOW_FACTOR`] or [`SLOW_SLACK`] of the fastest round trip `best` (not the suspect
    /// ones when `clear`: some leg is not), each weighted by its speed (a leg not yet
    /// measured counts as the fastest).
    fn spread(&mut self, node: &Node, best: Option<Duration>, clear: bool) -> Option<CircuitId> {
        let best_us = best.map_or(1, |b| b.as_micros().max(1));
        let mut total = 0i64;
        let mut pick: Option<(usize, i64)> = None;
        for (i, l) in self.legs.iter_mut().enumerate() {
            if l.state != LegState::Live || (clear && l.suspect) {
                continue;
            }
            let us = node
                .rtt(l.circuit)
                .map_or(best_us, |r| r.as_micros().max(1));
            if us > best_us * u128::from(SLOW_FACTOR) && us > best_us + SLOW_SLACK.as_micros() {
                continue;
            }
            let weight = i64::try_from(1000 * best_us / us).unwrap_or(1).max(1);
            l.credit += weight;
            total += weight;
            if pick.is_none_or(|(_, c)| l.credit > c) {
                pick = Some((i, l.credit));
            }
        }
        let leg = self.legs.get_mut(pick?.0)?;
        leg.credit -= total;
        Some(leg.circuit)
    }

    /// A backward packet number `seq` (in `buf`, as the caller lays it out) from leg
    /// `circuit`: the packets it lets out of the reorder buffer, in order, are
    /// appended to `out`. A packet not from a live leg, or dropped by the buffer,
    /// comes back (`out` may have packets all the same). Once every live leg
    /// brought a number past a gap, the gap is given up ([`Reorder::passed`]).
    pub fn receive(
        &mut self,
        now: Instant,
        circuit: CircuitId,
        seq: u32,
        buf: Vec<u8>,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<(), (Option<Rejected>, Vec<u8>)> {
        let Some(leg) = self
            .legs
            .iter_mut()
            .find(|l| l.circuit == circuit && l.state == LegState::Live)
        else {
            self.unexpected += 1;
            return Err((None, buf));
        };
        leg.high = Some(highest(leg.high, seq));
        self.count(now, buf.len(), false);
        let pushed = self.reorder.push(now, seq, buf, out);
        let live = self.legs.iter().filter(|l| l.state == LegState::Live);
        self.reorder.passed(live.map(|l| l.high), out);
        pushed.map_err(|(why, b)| (Some(why), b))
    }

    /// When the VC has something to do: a leg that came up and awaits its JOIN
    /// ([`VirtualCircuit::on_up`]), and for [`VirtualCircuit::handle_timeout`] a
    /// reorder timeout, a JOIN timing out, and while busy the next probe or liveness
    /// check.
    #[must_use]
    pub fn poll_timeout(&self, node: &Node) -> Option<Instant> {
        let busy = self.last_send.and_then(|t| t.checked_add(BUSY_FOR));
        let legs = self.legs.iter().filter_map(|l| match l.state {
            // Up: its JOIN is due (the caller sends it).
            LegState::Building if node.is_up(l.circuit) => node.last_heard(l.circuit),
            LegState::Building => None,
            LegState::Joining(at) => at.checked_add(JOIN_TIMEOUT),
            LegState::Live => {
                busy?;
                let dead = node
                    .last_heard(l.circuit)
                    .and_then(|h| h.checked_add(LEG_DEAD_AFTER));
                let probe = l
                    .probed
                    .map_or(self.last_send, |p| p.checked_add(PROBE_EVERY));
                probe.into_iter().chain(dead).min()
            }
        });
        self.reorder.deadline().into_iter().chain(legs).min()
    }

    /// Lets out the backward packets whose gap timed out (into `out`), probes the
    /// live legs that are due, and closes the legs found dead; returns those, with
    /// why.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        node: &mut Node,
        rng: &mut (impl RngCore + CryptoRng),
        out: &mut Vec<Vec<u8>>,
        sent: &mut Vec<Transmit>,
    ) -> Vec<(CircuitId, LegEnd)> {
        self.reorder.poll(now, out);
        let busy = self
            .last_send
            .is_some_and(|t| now.saturating_duration_since(t) < BUSY_FOR);
        let heard = |l: &Leg, node: &Node| {
            node.last_heard(l.circuit)
                .map_or(Duration::MAX, |t| now.saturating_duration_since(t))
        };
        let any_alive = self
            .legs
            .iter()
            .any(|l| l.state == LegState::Live && heard(l, node) < LEG_DEAD_AFTER);
        let mut dead = Vec::new();
        for l in &mut self.legs {
            match l.state {
                LegState::Joining(at) if now.saturating_duration_since(at) >= JOIN_TIMEOUT => {
                    dead.push((l.circuit, LegEnd::JoinTimeout));
                }
                LegState::Live if busy => {
                    if heard(l, node) >= LEG_DEAD_AFTER && any_alive {
                        dead.push((l.circuit, LegEnd::Silent));
                    } else if l
                        .probed
                        .is_none_or(|p| now.saturating_duration_since(p) >= PROBE_EVERY)
                    {
                        l.probed = Some(now);
                        self.probes += 1;
                        if let Ok(Some(t)) = node.probe(now, rng, l.circuit) {
                            sent.push(t);
                        }
                    }
                }
                _ => {}
            }
        }
        for (c, _) in &dead {
            self.remove_leg(*c);
            self.legs_dead += 1;
            node.close_circuit(*c);
        }
        dead
    }
}

/// Whether leg `l` heard nothing since a packet went on it for twice its round trip
/// plus [`SUSPECT_AFTER`] (at least [`SUSPECT_AFTER`]; a leg not yet measured waits
/// twice that).
fn is_suspect(l: &Leg, node: &Node, now: Instant) -> bool {
    let Some(sent) = l.unanswered else {
        return false;
    };
    if node.last_heard(l.circuit).is_some_and(|h| h >= sent) {
        return false;
    }
    let wait = node
        .rtt(l.circuit)
        .map_or(SUSPECT_AFTER * 2, |r| r * 2 + SUSPECT_AFTER);
    now.saturating_duration_since(sent) > wait
}

#[cfg(test)]
mod tests;
