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

mod circuit;
mod cookie;
mod datapath;
mod forge;
mod link;
mod rekey;
mod relay;
mod stats;
mod timer;

pub use self::datapath::{Buffers, DataPath, Dropped, Toward};
pub use self::forge::{ForgedBackward, ForgedForward, TAIL_LEN};
pub use self::stats::Stats;

use self::timer::{Timer, TimerTable};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};
use thiserror::Error;

use crate::proto::crypto::{self, kdf, AeadKey, KEY_LEN, TAG_LEN};
use crate::proto::onion::{self, Generation, HopKeys, Reject, Side};
use crate::proto::replay::ReplayWindow;
use crate::proto::wire::{
    self, Body, BuildPayload, Cmd, CtrlHeader, CtrlKind, DestroyReason, Header, LinkInitReserved,
    MsgType, Service, BODY_HEADER, BUILD_LEN, BUILD_PAYLOAD_LEN, BUILD_SLOT_LEN, CELL_HEADER_LEN,
    CELL_MASKED, CELL_SAMPLE, CELL_SLOTS, CTRL_INNER_HEADER, CTR_FLAG, LINK_CTRL_HEADER,
    LINK_INIT_MAC1, LINK_INIT_MACED, LINK_INIT_MSG, LINK_INIT_RESERVED, LINK_REKEY_PROOF,
    LINK_RESP_MSG, MAX_PAYLOAD, NK_MSG1_EMPTY, NK_MSG2_EMPTY, PAYLOAD_OFFSET, REPLY_LEN,
    REPLY_PAYLOAD_LEN, REPLY_SLOT_LEN, SLOTS,
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
    /// DATA arrived on a circuit: the payload is `buf[range]`.
    Data {
        circuit: CircuitId,
        buf: Vec<u8>,
        range: Range<usize>,
    },
    /// DATA arrived at this gateway as the terminal hop of a circuit for `service`
    /// (exit or directory): the payload is `buf[range]`. Answers go back with
    /// [`Node::send_backward`].
    ServiceData {
        circuit: CircuitId,
        service: Service,
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
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("a path has 1 to 8 hops, got {0}")]
    PathLength(usize),
}

type LinkId = u64;
type RelayId = u64;

/// Keys of an established link session.
struct LinkKeys {
    /// Our receiver index for these keys.
    rx: u32,
    /// The peer's receiver index for these keys.
    tx: u32,
    /// Proves a later rekey handshake comes from the same initiator.
    rekey: [u8; KEY_LEN],
    born: Instant,
    send_ctrl: AeadKey,
    recv_ctrl: AeadKey,
    send_mask: [u8; KEY_LEN],
    recv_mask: [u8; KEY_LEN],
    send_ctr: u64,
    window: ReplayWindow,
}

impl LinkKeys {
    fn new(
        split: ([u8; KEY_LEN], [u8; KEY_LEN]),
        initiator: bool,
        (rx, tx): (u32, u32),
        born: Instant,
    ) -> Self {
        let (i2r, r2i) = split;
        let (s, r) = if initiator { (i2r, r2i) } else { (r2i, i2r) };
        Self {
            rx,
            tx,
            rekey: kdf(&i2r, b"anonnet link rekey"),
            born,
            send_ctrl: AeadKey::new(&kdf(&s, b"anonnet link ctrl")),
            recv_ctrl: AeadKey::new(&kdf(&r, b"anonnet link ctrl")),
            send_mask: kdf(&s, b"anonnet link mask"),
            recv_mask: kdf(&r, b"anonnet link mask"),
            send_ctr: 0,
            window: ReplayWindow::new(onion::REJECT_AFTER_MESSAGES),
        }
    }

    /// A LINK_CTRL datagram (PROTOCOL §2) sealed under these keys with counter `ctr`.
    fn ctrl_datagram(&self, ctr: u64, kind: u8, cid: u32, body: &[u8]) -> Vec<u8> {
        let mut buf =
            Vec::with_capacity(LINK_CTRL_HEADER + CTRL_INNER_HEADER + body.len() + TAG_LEN);
        buf.push(MsgType::LinkCtrl.byte());
        buf.extend_from_slice(&self.tx.to_be_bytes());
        buf.extend_from_slice(&ctr.to_be_bytes());
        buf.push(kind);
        buf.extend_from_slice(&cid.to_be_bytes());
        buf.extend_from_slice(body);
        let (head, rest) = buf.split_at_mut(LINK_CTRL_HEADER);
        let tag = self.send_ctrl.seal(ctr, head, rest);
        buf.extend_from_slice(&tag);
        buf
    }

    /// The proof a rekeying initiator puts in its LINK_INIT for new index `rx`.
    fn proof(&self, rx: u32) -> [u8; LINK_REKEY_PROOF] {
        let mut p = [0u8; LINK_REKEY_PROOF];
        p.copy_from_slice(&kdf(&self.rekey, &rx.to_be_bytes())[..LINK_REKEY_PROOF]);
        p
    }
}

struct PendingInit {
    hs: snow::HandshakeState,
    rx: u32,
    /// mac1 of the LINK_INIT sent: the AD of a COOKIE_REPLY to it.
    mac1: [u8; crypto::MAC_LEN],
    started: Instant,
    last_sent: Instant,
}

struct Link {
    peer: SocketAddr,
    local: Option<SocketAddr>,
    /// The peer's static key if this node initiated the link.
    peer_key: Option<[u8; KEY_LEN]>,
    /// Keys in use.
    keys: Option<LinkKeys>,
    /// Keys replaced by a rekey, still accepted until they expire.
    previous: Option<LinkKeys>,
    /// Responder: keys from a rekey, used once the initiator sends under them.
    next: Option<LinkKeys>,
    pending: Option<PendingInit>,
    /// Initiator: the last cookie the peer sent, and when (for mac2).
    cookie: Option<([u8; crypto::MAC_LEN], Instant)>,
    queue: Vec<(CtrlKind, u32, Vec<u8>)>,
    /// Circuits on this link, either side.
    circuits: usize,
    /// Relayed circuits this link brought (it is their previous hop): its share of
    /// the circuit table.
    relayed_in: usize,
    /// When the link was last heard from or its last circuit left: the start of
    /// its idle time.
    last_used: Instant,
    /// Liveness: the first and the last send after the peer was last heard.
    unheard: Option<(Instant, Instant)>,
    /// The last PING of this silence.
    pinged: Option<Instant>,
    /// When the peer was last heard.
    last_heard: Instant,
}

impl Link {
    /// The peer answered: something authenticated came from it.
    fn heard(&mut self, now: Instant) {
        self.unheard = None;
        self.pinged = None;
        self.last_heard = now;
    }

    /// Something that wants an answer went out on the link. True when the link has
    /// just started asking (sending for [`LINK_PROBE_AFTER`] without hearing back):
    /// its timer must then run at once to send a PING.
    fn sent(&mut self, now: Instant) -> bool {
        let asked = self.asking();
        // A send long after the last unanswered one asks anew.
        let first = match self.unheard {
            Some((first, last)) if now.saturating_duration_since(last) < LINK_DEAD_AFTER => first,
            _ => {
                self.pinged = None;
                now
            }
        };
        self.unheard = Some((first, now));
        !asked && self.asking()
    }

    /// Whether the link has sent for [`LINK_PROBE_AFTER`] without hearing back and
    /// has not PINGed yet. One answer sent and then silence is not a question.
    fn asking(&self) -> bool {
        self.pinged.is_none()
            && self.unheard.is_some_and(|(first, last)| {
                last.saturating_duration_since(first) >= LINK_PROBE_AFTER
            })
    }

    /// When the link's timer next has something to do (see `Node::check_link`).
    fn deadline(&self, cfg: &NodeConfig) -> Option<Instant> {
        let mut at = Deadline::default();
        if let (Some((first, last)), Some(_)) = (self.unheard, &self.keys) {
            match self.pinged {
                Some(p) => {
                    at.add(first + LINK_DEAD_AFTER);
                    at.add(p + LINK_PING_EVERY);
                }
                None if self.asking() => at.add(last),
                None => {}
            }
        }
        if let Some(k) = &self.keys {
            at.add(k.born + onion::REJECT_AFTER_TIME);
        }
        if let Some(p) = &self.pending {
            if self.keys.is_none() {
                at.add(p.started + cfg.build_timeout);
            }
            at.add(p.last_sent + LINK_RETRY);
        } else {
            if let (Some(_), Some(k)) = (self.peer_key, &self.keys) {
                at.add(k.born + onion::REKEY_AFTER_TIME);
            }
            if self.circuits == 0 {
                at.add(self.last_used + link::idle_after(self, cfg.idle_timeout));
            }
        }
        if let Some(k) = &self.previous {
            at.add(k.born + onion::REJECT_AFTER_TIME);
        }
        at.0
    }
}

/// The earliest of some instants.
#[derive(Default)]
struct Deadline(Option<Instant>);

impl Deadline {
    fn add(&mut self, at: Instant) {
        self.0 = Some(self.0.map_or(at, |d| d.min(at)));
    }
}

#[derive(Debug, Clone, Copy)]
enum Entry {
    /// The previous-hop side of a relayed circuit (cells arriving here go forward).
    RelayPrev(RelayId),
    /// The next-hop side of a relayed circuit (cells arriving here go backward).
    RelayNext(RelayId),
    Own(CircuitId),
}

struct Relay {
    prev: (LinkId, u32),
    next: Option<(LinkId, u32)>,
    service: Service,
    keys: HopKeys,
    kb: [u8; KEY_LEN],
    /// This hop's BUILT reply slot, held until the next hop's BUILT arrives.
    reply: Option<[u8; REPLY_SLOT_LEN]>,
    created: Instant,
    last_fwd: Instant,
    last_bwd: Instant,
}

impl Relay {
    /// When the relay's timer next has something to do (see `Node::check_relay`).
    fn deadline(&self, cfg: &NodeConfig) -> Option<Instant> {
        let mut at = Deadline::default();
        if self.reply.is_some() {
            at.add(self.created + cfg.build_timeout);
        }
        at.add(self.last_fwd + cfg.idle_timeout);
        if self.next.is_some() {
            at.add(self.last_bwd + cfg.idle_timeout);
        }
        if self.keys.next.is_none() {
            at.add(self.keys.current.born + onion::REJECT_AFTER_TIME);
        }
        if let Some(g) = &self.keys.previous {
            at.add(g.born + onion::REJECT_AFTER_TIME);
        }
        at.0
    }
}

struct OwnHop {
    spec: HopSpec,
    kb: [u8; KEY_LEN],
    hs: Option<snow::HandshakeState>,
    rekey_sent: Option<Instant>,
    /// The age at which this hop's current key generation is rekeyed.
    rekey_after: Duration,
}

/// A fresh rekey age for a hop's key generation: `REKEY_AFTER_TIME` minus a uniform
/// random time below `jitter` (see [`REKEY_JITTER`]).
fn rekey_after(rng: &mut impl RngCore, jitter: Duration) -> Duration {
    let ms = usize::try_from(jitter.as_millis()).unwrap_or(usize::MAX);
    let early = crypto::below(rng, ms) as u64;
    onion::REKEY_AFTER_TIME.saturating_sub(Duration::from_millis(early))
}

struct Own {
    first: (LinkId, u32),
    hops: Vec<OwnHop>,
    keys: Vec<HopKeys>,
    created: Instant,
    last_rx: Instant,
    last_tx: Instant,
    /// When the last KEEPALIVE went out.
    last_keepalive: Instant,
}

impl Own {
    fn is_up(&self) -> bool {
        self.keys.len() == self.hops.len()
    }

    /// When the circuit's timer next has something to do (see `Node::check_own`).
    /// The message-count rekey limit is checked whenever the timer runs, at least
    /// once per keepalive interval.
    fn deadline(&self, cfg: &NodeConfig) -> Option<Instant> {
        let mut at = Deadline::default();
        if !self.is_up() {
            at.add(self.created + cfg.build_timeout);
            return at.0;
        }
        at.add(self.last_rx + cfg.circuit_timeout);
        for (h, k) in self.hops.iter().zip(&self.keys) {
            at.add(k.current.born + onion::REJECT_AFTER_TIME);
            if let Some(g) = &k.previous {
                at.add(g.born + onion::REJECT_AFTER_TIME);
            }
            let rekey = k.current.born + h.rekey_after.min(onion::REKEY_AFTER_TIME);
            at.add(h.rekey_sent.map_or(rekey, |t| rekey.max(t + REKEY_TIMEOUT)));
        }
        at.add(self.last_tx + cfg.keepalive);
        at.add(self.last_rx.max(self.last_keepalive) + cfg.keepalive);
        at.0
    }
}

struct TokenBucket {
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// Adds the tokens earned since the last refill, up to one second's worth.
    fn refill(&mut self, now: Instant, rate: f64) {
        if let Some(last) = self.last {
            self.tokens =
                (self.tokens + now.saturating_duration_since(last).as_secs_f64() * rate).min(rate);
        }
        self.last = Some(now);
    }

    fn take(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a handshake token is spent on: each has its own bucket of `handshake_rate`
/// per second, so a flood of one kind (new links from anywhere, BUILDs from one
/// client) cannot starve the others (the rekeys that keep circuits alive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Budget {
    /// LINK_INIT, new links and link rekeys (after its MAC verified).
    Link,
    /// A BUILD slot addressed to this node.
    Build,
    /// REKEY of a circuit this node relays.
    Rekey,
}

/// The three handshake buckets.
struct Budgets {
    link: TokenBucket,
    build: TokenBucket,
    rekey: TokenBucket,
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
    /// Under load until then (see `cookie::LOAD_HOLD`).
    /// LINK_INITs with a valid mac1, metered at half the handshake rate (under load
    /// when empty).
    arrivals: TokenBucket,
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

/// XORs the masked bytes of a CELL with the mask of its sample (PROTOCOL §2, CELL).
fn mask_header(key: &[u8; KEY_LEN], head: &mut [u8; CELL_HEADER_LEN]) {
    let mut sample = [0u8; crypto::SAMPLE_LEN];
    sample.copy_from_slice(&head[CELL_SAMPLE]);
    let mask = crypto::header_mask(key, &sample);
    for (b, m) in head[CELL_MASKED].iter_mut().zip(mask) {
        *b ^= m;
    }
}

impl Node {
    #[must_use]
    pub fn new(cfg: NodeConfig) -> Self {
        let full = || TokenBucket {
            tokens: f64::from(cfg.handshake_rate),
            last: None,
        };
        let budgets = Budgets {
            link: full(),
            build: full(),
            rekey: full(),
        };
        let arrivals = TokenBucket {
            tokens: f64::from(cfg.handshake_rate) / 2.0,
            last: None,
        };
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
            budgets,
            mac1_key,
            cookie_key,
            cookies: cookie::CookieJar::default(),
            arrivals,
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
        let Some((head, _)) = wire::split_cell(&mut buf) else {
            self.stats.dropped_malformed += 1;
            return Output::Recycle(buf);
        };
        mask_header(&mask, head);
        let cid = wire::cell_circuit(head);
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
