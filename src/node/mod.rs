//! The sans-IO node: links, relayed circuits and the node's own (client) circuits.
//!
//! A [`Node`] is a gateway when it has a static key, a client when it builds circuits,
//! and both at once in mixed mode; a relay cannot tell the difference because every
//! link initiator is anonymous. The driver feeds it datagrams
//! ([`Node::handle_datagram`]), runs its timers when [`Node::poll_timeout`] says
//! ([`Node::handle_timeout`]), and drains [`Node::poll_transmit`] and
//! [`Node::poll_event`]. Nothing here reads a clock, a
//! socket or a global RNG: `now` and `rng` are parameters.
//!
//! Data cells are relayed in the buffer they arrived in: the datagram keeps its size
//! on every link, so a relay rewrites the header and the body in place and hands the
//! same `Vec` back as a [`Transmit`].

// Datagrams from anyone reach most of this module, and a panic here takes down every
// circuit of the node: no indexing, slicing, unwrap or expect (SECURITY.md).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

mod budget;
mod circuit;
mod cookie;
mod datapath;
mod forge;
mod handshake_cache;
mod link;
mod pacer;
mod padding;
mod rekey;
mod relay;
mod stats;
mod timer;

pub use self::datapath::{Buffers, DataPath, Dropped, Toward};
pub use self::forge::{ForgedBackward, ForgedForward, TAIL_LEN};
pub use self::pacer::{PACE_BUDGET, PACE_LIMIT, PACE_QUEUE};
pub use self::relay::{PADDING_RATE, PADDING_SHARE};
pub use self::stats::Stats;

use self::budget::{Budget, Budgets};
use self::circuit::{rekey_after, Own};
pub use self::circuit::{OwnInfo, Traffic};
use self::link::Link;
pub use self::padding::{Adaptive, MachineError, MachineSpec, FRONT_DEFAULT};
use self::relay::Relay;
use self::timer::{Deadline, Timer, TimerTable};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};
use thiserror::Error;

use crate::proto::bucket::TokenBucket;
use crate::proto::crypto::{self, KEY_LEN};
use crate::proto::onion::{self, Reject};
use crate::proto::wire::{
    self, Body, Cell, Cmd, DestroyReason, Header, Service, CELL_HEADER_LEN, MAX_PAYLOAD,
};

/// LINK_INIT is sent again after this long without LINK_RESP.
pub const LINK_RETRY: Duration = Duration::from_secs(1);
/// A link that sent something and heard nothing back (no authenticated control
/// message, no cell of a known circuit) for this long sends a PING, and again every
/// `LINK_PING_EVERY` while that lasts.
pub const LINK_PROBE_AFTER: Duration = Duration::from_secs(1);
/// Interval of a silent link's PINGs.
pub const LINK_PING_EVERY: Duration = Duration::from_millis(250);
/// A link that sent something and heard nothing back for this long is dead: its
/// peer died, restarted (and lost the link's keys) or is cut off. Its circuits are
/// torn down with DESTROY on their other side at once, and the next circuit to that
/// peer makes a new link. 3 s leaves a client 2 s of its 5 s recovery target to
/// rebuild; 8 PINGs go unanswered first (at 10% loss each way, a live link is
/// declared dead after one probing stretch in about 600,000).
pub const LINK_DEAD_AFTER: Duration = Duration::from_secs(3);
/// A link this node initiated and has not heard its peer on for this long carries
/// no new circuit: the next one to that peer makes a new link (a fresh handshake,
/// and the BUILD waits for its answer), and the old link keeps only the circuits it
/// has. A peer that restarted in the meantime lost the old link's keys and would
/// drop the BUILD as an unknown index (nothing else was sent, so liveness never
/// noticed); its new instance answers the handshake, so the circuit comes up one
/// round trip later instead of after the build timeout. A live peer costs the same
/// round trip. Equal to `LINK_DEAD_AFTER`: a peer silent that long may be another
/// instance.
pub const LINK_QUIET: Duration = LINK_DEAD_AFTER;
/// A REKEY without REKEY_ACK is sent again after this long.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// A client rekeys each hop of its circuit at `REKEY_AFTER_TIME` minus a random time
/// below this, drawn anew per hop and key generation. Hops built together then rekey
/// apart: when they rekeyed in the same tick, every relay saw a burst of REKEYs whose
/// size was the number of hops after it (SECURITY.md, path length).
pub const REKEY_JITTER: Duration = Duration::from_secs(60);
/// Accepted handshake ephemeral keys are remembered this long.
pub const HANDSHAKE_REPLAY_TIME: Duration = onion::REJECT_AFTER_TIME;
/// At most this many remembered handshake ephemeral keys (bounded memory under floods).
pub const HANDSHAKE_REPLAY_CAP: usize = 1 << 18;
/// Buffers of answered keepalives a client keeps to send its next keepalives in.
const SPARE_BUFFERS: usize = 16;

/// Settings of a node (from the config files).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The gateway's static private key; `None` for a pure client.
    pub static_key: Option<[u8; KEY_LEN]>,
    /// Serve the echo service to circuits that ask for it (test facility).
    pub echo: bool,
    /// Serve the exit service: DATA of exit circuits is handed to the driver as
    /// [`Event::ServiceData`] and answered with [`Node::send_backward`].
    pub exit: bool,
    /// Serve the directory service (discovery requests), likewise.
    pub directory: bool,
    pub idle_timeout: Duration,
    pub build_timeout: Duration,
    pub keepalive: Duration,
    pub circuit_timeout: Duration,
    /// Handshakes of each kind (LINK_INIT, BUILD slot, REKEY) processed per second.
    pub handshake_rate: u32,
    pub max_circuits: usize,
    /// Body size classes, ascending; `MAX_BODY` is always the implicit last.
    pub padding: Vec<usize>,
    /// The host's own addresses: a BUILD may not name one as its next hop.
    pub own_addrs: Vec<std::net::IpAddr>,
    /// A client rekeys each hop up to this much before `REKEY_AFTER_TIME` (at most
    /// [`REKEY_JITTER`] is meaningful; zero rekeys every hop on the same schedule, for
    /// tests that need to know it).
    pub rekey_jitter: Duration,
    /// Constant-rate links (PipeNet mode): the link to the entry of each own
    /// circuit carries this many cells per second in both directions, and own
    /// circuits use full-size cells only. `None`: links are not paced.
    pub pace: Option<u32>,
    /// The highest rate this gateway paces a link at when its peer asks (PACE);
    /// 0 refuses.
    pub pace_limit: u32,
    /// The most cells per second this gateway paces all its peers' links at
    /// together: a PACE gets at most what the other paced links leave (none left:
    /// refused).
    pub pace_budget: u32,
    /// Adaptive padding: the `maybenot` machines each own circuit runs. `None`: no
    /// adaptive padding.
    pub adaptive: Option<Adaptive>,
    /// The most bytes per second of PADDING this gateway echoes, all circuits
    /// together (a second's worth may go at once); 0 echoes nothing.
    pub padding_rate: u32,
    /// The most PADDING this gateway echoes, in percent of the datagrams it
    /// received.
    pub padding_share: u8,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            static_key: None,
            echo: false,
            exit: false,
            directory: false,
            idle_timeout: Duration::from_secs(30),
            build_timeout: Duration::from_secs(5),
            keepalive: Duration::from_secs(2),
            circuit_timeout: Duration::from_secs(10),
            handshake_rate: 1000,
            max_circuits: 100_000,
            padding: vec![128, 256, 512, 1024],
            own_addrs: Vec::new(),
            rekey_jitter: REKEY_JITTER,
            pace: None,
            pace_limit: PACE_LIMIT,
            pace_budget: PACE_BUDGET,
            adaptive: None,
            padding_rate: PADDING_RATE,
            padding_share: PADDING_SHARE,
        }
    }
}

/// A client circuit's handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CircuitId(pub u64);

/// One gateway of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopSpec {
    pub addr: SocketAddr,
    pub key: [u8; KEY_LEN],
}

/// A datagram to send. `src` is the local address the link uses, if known.
#[derive(Debug)]
pub struct Transmit {
    pub src: Option<SocketAddr>,
    pub dst: SocketAddr,
    pub buf: Vec<u8>,
}

/// Why a client circuit went down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownReason {
    BuildTimeout,
    BuildRejected,
    /// Nothing came back for `circuit_timeout`.
    Silent,
    /// The link to the first hop sent and heard nothing back for `LINK_DEAD_AFTER`:
    /// the entry died or restarted.
    LinkDead,
    /// The entry never answered the link handshake within `build_timeout`.
    EntryUnanswered,
    /// The entry closed the link: it is stopping.
    EntryLeft,
    Destroyed(DestroyReason),
    /// Hop `hop` (0 = the entry) lost its link to the next hop (TRUNCATED), for
    /// `reason`.
    Truncated {
        hop: usize,
        reason: DestroyReason,
    },
    KeysExpired,
    Closed,
}

impl DownReason {
    /// The reason in one snake_case word (a metrics label).
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::BuildTimeout => "build_timeout",
            Self::BuildRejected => "build_rejected",
            Self::Silent => "silent",
            Self::LinkDead => "link_dead",
            Self::EntryUnanswered => "entry_unanswered",
            Self::EntryLeft => "entry_left",
            Self::Destroyed(_) => "destroyed",
            Self::Truncated { .. } => "truncated",
            Self::KeysExpired => "keys_expired",
            Self::Closed => "closed",
        }
    }

    /// The hop of the path (0 = the entry) that the node blames: the entry when the
    /// link to it died, the hop after one that reported losing its link to it.
    #[must_use]
    pub fn failed_hop(&self) -> Option<usize> {
        match self {
            Self::LinkDead | Self::EntryUnanswered | Self::EntryLeft => Some(0),
            Self::Truncated { hop, .. } => hop.checked_add(1),
            _ => None,
        }
    }
}

/// Something the node reports to its driver.
#[derive(Debug)]
pub enum Event {
    CircuitUp(CircuitId),
    CircuitDown(CircuitId, DownReason),
    /// DATA (or JOINED or VDATA, PROTOCOL §12) arrived from the last hop of an own
    /// circuit: the payload is `buf[range]`.
    Data {
        circuit: CircuitId,
        cmd: Cmd,
        buf: Vec<u8>,
        range: Range<usize>,
    },
    /// DATA arrived at this gateway as the terminal hop of a circuit for `service`
    /// (exit or directory; or JOIN or VDATA for the exit): the payload is
    /// `buf[range]`. Answers go back with [`Node::send_backward`] (or
    /// [`Node::send_backward_cell`]).
    ServiceData {
        circuit: CircuitId,
        service: Service,
        cmd: Cmd,
        buf: Vec<u8>,
        range: Range<usize>,
    },
    /// A circuit that reached this gateway's `service` is gone (destroyed, idle or
    /// expired): its state can be freed.
    ServiceClosed(CircuitId, Service),
}

/// What became of a datagram handed to [`Node::handle_datagram`].
#[derive(Debug)]
pub enum Output {
    /// Relayed in place: send it.
    Transmit(Transmit),
    /// Kept by the node: delivered in an [`Event`], or kept to send a later
    /// keepalive in (so an idle circuit's keepalives allocate nothing).
    Consumed,
    /// Done with: the buffer can be reused.
    Recycle(Vec<u8>),
}

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    #[error("no such circuit")]
    NoCircuit,
    #[error("circuit is not up")]
    NotUp,
    #[error("payload of {0} bytes exceeds the maximum of {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("buffer shorter than its payload")]
    ShortBuffer,
    #[error("circuit keys exhausted")]
    Exhausted,
    #[error("the circuit has no hop {0}")]
    NoSuchHop(usize),
    #[error("the circuit's paced link has a full queue")]
    Paced,
    #[error("{0:?} is not a command the caller sends with a payload")]
    Command(Cmd),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("a path has 1 to 8 hops, got {0}")]
    PathLength(usize),
}

type LinkId = u64;
type RelayId = u64;

#[derive(Debug, Clone, Copy)]
enum Entry {
    /// The previous-hop side of a relayed circuit (cells arriving here go forward).
    RelayPrev(RelayId),
    /// The next-hop side of a relayed circuit (cells arriving here go backward).
    RelayNext(RelayId),
    Own(CircuitId),
}

/// The protocol state machine of one node.
pub struct Node {
    cfg: NodeConfig,
    // Tables the timers iterate are ordered maps, so a run is reproducible from its
    // inputs and seeds (HashMap iteration order is random per process).
    links: BTreeMap<LinkId, Link>,
    by_index: HashMap<u32, LinkId>,
    out_links: HashMap<(SocketAddr, [u8; KEY_LEN]), LinkId>,
    circuits: BTreeMap<(LinkId, u32), Entry>,
    /// Boxed: a `Relay` is about 1.4 KiB, and a B-tree keeps its values inline in
    /// nodes that are a third empty on average, so boxing saves more per circuit
    /// than the box costs (docs/DESIGN.md, memory per circuit).
    relays: BTreeMap<RelayId, Box<Relay>>,
    own: BTreeMap<CircuitId, Own>,
    next_id: u64,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Ephemeral keys of accepted handshakes (a set: their times are in `seen_order`).
    seen: HashSet<[u8; 32]>,
    seen_order: VecDeque<([u8; 32], Instant)>,
    /// How many handshake keys were ever remembered (preloaded ones not counted).
    seen_total: u64,
    budgets: Budgets,
    /// `mac1_key` of this gateway's own static key (PROTOCOL §2, LINK_INIT).
    mac1_key: Option<[u8; KEY_LEN]>,
    /// `cookie_key` of this gateway's own static key, and its cookie secrets.
    cookie_key: Option<[u8; KEY_LEN]>,
    cookies: cookie::CookieJar,
    /// The bytes of PADDING this gateway may still echo (`padding_rate`), made at
    /// the first echo request.
    echo_bucket: Option<TokenBucket>,
    /// Under load until then (see `cookie::LOAD_HOLD`).
    /// LINK_INITs with a valid mac1, metered at half the handshake rate (under load
    /// when empty).
    arrivals: Option<TokenBucket>,
    load_until: Option<Instant>,
    sources: cookie::SourceLimits,
    stats: Stats,
    /// The latest time an input carried (for what happens outside one, such as a
    /// DESTROY sent while closing a circuit).
    clock: Option<Instant>,
    timers: TimerTable,
    /// Timers due in one `handle_timeout` (kept for its capacity).
    due: Vec<Timer>,
    /// Buffers of keepalive answers, reused for the next keepalives (at most
    /// `SPARE_BUFFERS`), so that keepalives do not allocate in steady state.
    spare: Vec<Vec<u8>>,
}

fn random_nonzero(rng: &mut impl RngCore) -> u32 {
    loop {
        let v = rng.next_u32();
        if v != 0 {
            return v;
        }
    }
}

/// Lays out a cell body in `buf` for a payload of `len` bytes already at
/// `PAYLOAD_OFFSET`: writes the body header (`cmd`, `len`) and pads the body to its
/// size class. False if the payload does not fit a cell.
fn frame_body(buf: &mut Vec<u8>, padding: &[usize], cmd: Cmd, len: usize) -> bool {
    buf.resize(CELL_HEADER_LEN + wire::body_size(padding, len), 0);
    Cell::new_checked(buf).is_some_and(|mut c| (Body { cmd, len }).emit(c.body_mut()).is_ok())
}

/// XORs the masked bytes of a CELL with the mask of its sample (PROTOCOL §2, CELL).
fn mask_header(key: &[u8; KEY_LEN], cell: &mut Cell<'_>) {
    let mask = crypto::header_mask(key, &cell.sample());
    for (b, m) in cell.masked_mut().iter_mut().zip(mask) {
        *b ^= m;
    }
}

impl Node {
    #[must_use]
    pub fn new(cfg: NodeConfig) -> Self {
        let public = cfg.static_key.map(|sk| crypto::public_key(&sk));
        let mac1_key = public.as_ref().map(crypto::mac1_key);
        let cookie_key = public.as_ref().map(crypto::cookie_key);
        Self {
            cfg,
            links: BTreeMap::new(),
            by_index: HashMap::new(),
            out_links: HashMap::new(),
            circuits: BTreeMap::new(),
            relays: BTreeMap::new(),
            own: BTreeMap::new(),
            next_id: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            seen_total: 0,
            budgets: Budgets::default(),
            mac1_key,
            cookie_key,
            cookies: cookie::CookieJar::default(),
            arrivals: None,
            echo_bucket: None,
            load_until: None,
            sources: cookie::SourceLimits::default(),
            stats: Stats::default(),
            clock: None,
            timers: TimerTable::default(),
            due: Vec::new(),
            spare: Vec::new(),
        }
    }

    #[must_use]
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Handshakes of each kind processed per second at most (`handshake_rate`).
    #[must_use]
    pub fn handshake_rate(&self) -> u32 {
        self.cfg.handshake_rate
    }

    /// Number of circuits this node relays (as a gateway).
    #[must_use]
    pub fn relayed_circuits(&self) -> usize {
        self.relays.len()
    }

    /// Whether a client circuit is up.
    #[must_use]
    pub fn is_up(&self, id: CircuitId) -> bool {
        self.own.get(&id).is_some_and(Own::is_up)
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] wants to run next: the earliest deadline of a
    /// link, a circuit or the housekeeping.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Moves the node's clock to `now` (it never goes back).
    fn observe(&mut self, now: Instant) {
        self.clock = Some(self.clock.map_or(now, |c| c.max(now)));
    }

    /// The node's clock: the latest time an input carried.
    fn now(&self) -> Option<Instant> {
        self.clock
    }

    /// Sets link `id`'s timer to its deadline.
    fn schedule_link(&mut self, id: LinkId) {
        let at = self.links.get(&id).and_then(|l| l.deadline(&self.cfg));
        self.timers.set(Timer::Link(id), at);
    }

    /// Sets relayed circuit `id`'s timer to its deadline.
    fn schedule_relay(&mut self, id: RelayId) {
        let at = self.relays.get(&id).and_then(|r| r.deadline(&self.cfg));
        self.timers.set(Timer::Relay(id), at);
    }

    /// Sets own circuit `id`'s timer to its deadline.
    fn schedule_own(&mut self, id: CircuitId) {
        let at = self.own.get(&id).and_then(|o| o.deadline(&self.cfg));
        self.timers.set(Timer::Own(id), at);
    }

    /// Sets the housekeeping timer: when the oldest remembered handshake key is
    /// forgotten, and the next sweep of the sources if there are any.
    fn schedule_housekeeping(&mut self, now: Instant) {
        let mut at = Deadline::default();
        if let Some((_, t)) = self.seen_order.front() {
            at.add(*t + HANDSHAKE_REPLAY_TIME);
        }
        if !self.sources.is_empty() {
            at.add(now + cookie::SOURCE_IDLE);
        }
        self.timers.set(Timer::Housekeeping, at.0);
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn new_index(&mut self, rng: &mut impl RngCore) -> u32 {
        loop {
            let i = random_nonzero(rng);
            if !self.by_index.contains_key(&i) {
                return i;
            }
        }
    }

    fn new_cid(&self, link: LinkId, rng: &mut impl RngCore) -> u32 {
        loop {
            let c = random_nonzero(rng);
            if !self.circuits.contains_key(&(link, c)) {
                return c;
            }
        }
    }

    fn push_output(&mut self, out: Output) {
        if let Output::Transmit(t) = out {
            self.transmits.push_back(t);
        }
    }

    /// Handles one received datagram. `local` is the address it arrived on.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        local: Option<SocketAddr>,
        remote: SocketAddr,
        mut buf: Vec<u8>,
    ) -> Output {
        self.stats.rx_datagrams += 1;
        self.observe(now);
        let header = match Header::parse(&buf) {
            Ok(h) => h,
            Err(wire::WireError::UnknownType(_) | wire::WireError::Version(_)) => {
                self.stats.dropped_unknown_type += 1;
                return Output::Recycle(buf);
            }
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return Output::Recycle(buf);
            }
        };
        match header {
            Header::LinkInit { sender } => {
                self.on_link_init(now, rng, local, remote, sender, &buf);
                Output::Recycle(buf)
            }
            Header::LinkResp { sender, receiver } => {
                self.on_link_resp(now, sender, receiver, &buf);
                Output::Recycle(buf)
            }
            Header::LinkCtrl { receiver, counter } => {
                self.on_link_ctrl(now, rng, receiver, counter, &mut buf);
                Output::Recycle(buf)
            }
            Header::Cell { receiver } => self.on_cell(now, rng, receiver, buf),
            Header::CookieReply { receiver } => {
                self.on_cookie_reply(now, rng, receiver, &buf);
                Output::Recycle(buf)
            }
        }
    }

    fn on_cell(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        receiver: u32,
        mut buf: Vec<u8>,
    ) -> Output {
        let Some((link_id, keys)) = self.recv_keys(receiver) else {
            return Output::Recycle(buf);
        };
        let mask = keys.recv_mask;
        let Some(mut cell) = Cell::new_checked(&mut buf) else {
            self.stats.dropped_malformed += 1;
            return Output::Recycle(buf);
        };
        mask_header(&mask, &mut cell);
        let cid = cell.circuit();
        // Circuit 0 is link padding of a paced link (unauthenticated: it shows
        // nothing about the peer).
        if cid == 0 {
            self.stats.padding_received += 1;
            self.stats.padding_bytes_received += buf.len() as u64;
            return Output::Recycle(buf);
        }
        let entry = self.circuits.get(&(link_id, cid)).copied();
        // A cell of a known circuit (its masked header needs the link's keys) shows
        // the peer alive.
        if entry.is_some() {
            if let Some(l) = self.links.get_mut(&link_id) {
                l.heard(now);
            }
        }
        match entry {
            Some(Entry::RelayPrev(id)) => self.cell_forward(now, rng, id, buf),
            Some(Entry::RelayNext(id)) => self.cell_backward(now, id, buf),
            Some(Entry::Own(id)) => self.cell_client(now, rng, id, buf),
            None => {
                self.stats.dropped_unknown_circuit += 1;
                Output::Recycle(buf)
            }
        }
    }

    fn count_reject(&mut self, r: Reject) {
        match r {
            Reject::Auth => self.stats.dropped_auth += 1,
            Reject::Replay => self.stats.dropped_replay += 1,
            Reject::Expired => self.stats.dropped_expired += 1,
        }
    }

    /// Runs the timers that are due: retransmissions, keepalives, rekeys and
    /// timeouts. Each sets itself again to its next deadline.
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut (impl RngCore + CryptoRng)) {
        self.observe(now);
        // The timers due now, taken first: one that a run sets again at `now` or
        // before runs at the next call, so one call always ends.
        let mut due = std::mem::take(&mut self.due);
        while let Some(timer) = self.timers.pop_due(now) {
            due.push(timer);
        }
        for timer in due.drain(..) {
            match timer {
                Timer::Link(id) => self.check_link(now, rng, id),
                Timer::Relay(id) => self.check_relay(now, id),
                Timer::Own(id) => self.check_own(now, rng, id),
                Timer::Housekeeping => self.housekeeping(now),
                Timer::Pace(id) => self.pace_tick(now, rng, id),
                Timer::Padding(id) => self.pad_tick(now, rng, id),
            }
        }
        self.due = due;
    }

    /// Forgets handshake keys older than [`HANDSHAKE_REPLAY_TIME`] and sources whose
    /// handshake budget is full again.
    fn housekeeping(&mut self, now: Instant) {
        self.sources.collect(now);
        while let Some(&(key, t)) = self.seen_order.front() {
            if now.saturating_duration_since(t) < HANDSHAKE_REPLAY_TIME {
                break;
            }
            self.seen_order.pop_front();
            self.seen.remove(&key);
        }
        self.schedule_housekeeping(now);
    }
}

#[cfg(test)]
mod tests;
