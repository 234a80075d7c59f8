//! The sans-IO node: links, relayed circuits and the node's own (client) circuits.
//!
//! A [`Node`] is a gateway when it has a static key, a client when it builds circuits,
//! and both at once in mixed mode; a relay cannot tell the difference because every
//! link initiator is anonymous. The driver feeds it datagrams
//! ([`Node::handle_datagram`]) and timer ticks ([`Node::handle_timeout`]), and drains
//! [`Node::poll_transmit`] and [`Node::poll_event`]. Nothing here reads a clock, a
//! socket or a global RNG: `now` and `rng` are parameters.
//!
//! Data cells are relayed in the buffer they arrived in: the datagram keeps its size
//! on every link, so a relay rewrites the header and the body in place and hands the
//! same `Vec` back as a [`Transmit`].

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
    self, Body, BuildPayload, Cmd, CtrlKind, DestroyReason, MsgType, Service, BODY_HEADER,
    BUILD_PAYLOAD_LEN, BUILD_SLOT_LEN, CELL_HEADER_LEN, CELL_MASKED, CELL_SAMPLE, CELL_SLOTS,
    CTRL_INNER_HEADER, CTR_FLAG, LINK_CTRL_HEADER, LINK_INIT_MSG, LINK_INIT_RESERVED,
    LINK_RESP_MSG, MAX_PAYLOAD, NK_MSG1_EMPTY, NK_MSG2_EMPTY, PAYLOAD_OFFSET, REPLY_PAYLOAD_LEN,
    REPLY_SLOT_LEN, SLOTS,
};

/// Interval of the node's housekeeping tick.
pub const TICK: Duration = Duration::from_millis(100);
/// LINK_INIT is sent again after this long without LINK_RESP.
pub const LINK_RETRY: Duration = Duration::from_secs(1);
/// A REKEY without REKEY_ACK is sent again after this long.
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
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
    pub handshake_rate: u32,
    pub max_circuits: usize,
    /// Body size classes, ascending; `MAX_BODY` is always the implicit last.
    pub padding: Vec<usize>,
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
    Destroyed(DestroyReason),
    KeysExpired,
    Closed,
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

/// Counters of everything the node dropped or did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub rx_datagrams: u64,
    pub dropped_malformed: u64,
    pub dropped_unknown_type: u64,
    pub dropped_unknown_index: u64,
    pub dropped_unknown_circuit: u64,
    pub dropped_auth: u64,
    pub dropped_replay: u64,
    pub dropped_expired: u64,
    pub dropped_handshake_replay: u64,
    pub dropped_rate_limited: u64,
    pub dropped_protocol: u64,
    pub relayed_forward: u64,
    pub relayed_backward: u64,
    pub circuits_accepted: u64,
    pub circuits_refused: u64,
    pub rekeys: u64,
    pub link_rekeys: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
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

    /// The proof a rekeying initiator puts in its LINK_INIT for new index `rx`.
    fn proof(&self, rx: u32) -> [u8; LINK_REKEY_PROOF] {
        let mut p = [0u8; LINK_REKEY_PROOF];
        p.copy_from_slice(&kdf(&self.rekey, &rx.to_be_bytes())[..LINK_REKEY_PROOF]);
        p
    }
}

/// Bytes of the rekey proof in a LINK_INIT's reserved plaintext.
const LINK_REKEY_PROOF: usize = LINK_INIT_RESERVED - 4;

struct PendingInit {
    hs: snow::HandshakeState,
    rx: u32,
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
    queue: Vec<(CtrlKind, u32, Vec<u8>)>,
    circuits: usize,
    last_used: Instant,
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

struct OwnHop {
    spec: HopSpec,
    kb: [u8; KEY_LEN],
    hs: Option<snow::HandshakeState>,
    rekey_sent: Option<Instant>,
}

struct Own {
    first: (LinkId, u32),
    hops: Vec<OwnHop>,
    keys: Vec<HopKeys>,
    created: Instant,
    last_rx: Instant,
    last_tx: Instant,
}

impl Own {
    fn is_up(&self) -> bool {
        self.keys.len() == self.hops.len()
    }
}

struct TokenBucket {
    tokens: f64,
    last: Option<Instant>,
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
    bucket: TokenBucket,
    stats: Stats,
    last_tick: Option<Instant>,
    /// Buffers of keepalive answers, reused for the next keepalives (at most
    /// `SPARE_BUFFERS`), so that keepalives do not allocate in steady state.
    spare: Vec<Vec<u8>>,
    /// Circuits due a keepalive, collected by each tick (kept for its capacity).
    due: Vec<CircuitId>,
}

fn random_nonzero(rng: &mut impl RngCore) -> u32 {
    loop {
        let v = rng.next_u32();
        if v != 0 {
            return v;
        }
    }
}

fn mask_header(key: &[u8; KEY_LEN], buf: &mut [u8]) {
    let mut sample = [0u8; 16];
    sample.copy_from_slice(&buf[CELL_SAMPLE]);
    let block = u32::from_le_bytes([sample[0], sample[1], sample[2], sample[3]]);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&sample[4..]);
    crypto::keystream_xor(key, &nonce, block, &mut buf[CELL_MASKED]);
}

impl Node {
    #[must_use]
    pub fn new(cfg: NodeConfig) -> Self {
        let tokens = f64::from(cfg.handshake_rate);
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
            bucket: TokenBucket { tokens, last: None },
            stats: Stats::default(),
            last_tick: None,
            spare: Vec::new(),
            due: Vec::new(),
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

    /// When [`Node::handle_timeout`] wants to run next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.links.is_empty() && self.own.is_empty() && self.relays.is_empty() {
            return None;
        }
        self.last_tick.map(|t| t + TICK)
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn take_token(&mut self, now: Instant) -> bool {
        let rate = f64::from(self.cfg.handshake_rate);
        let b = &mut self.bucket;
        if let Some(last) = b.last {
            b.tokens =
                (b.tokens + now.saturating_duration_since(last).as_secs_f64() * rate).min(rate);
        }
        b.last = Some(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            self.stats.dropped_rate_limited += 1;
            false
        }
    }

    /// Records a handshake ephemeral key; false if it was seen before (a replay).
    fn remember_handshake(&mut self, now: Instant, e: &[u8]) -> bool {
        let mut key = [0u8; 32];
        key.copy_from_slice(&e[..32]);
        if self.seen.contains(&key) {
            self.stats.dropped_handshake_replay += 1;
            return false;
        }
        if self.seen_order.len() >= HANDSHAKE_REPLAY_CAP {
            if let Some((old, _)) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(key);
        self.seen_order.push_back((key, now));
        true
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

    // ---- links -------------------------------------------------------------------

    /// Starts (or restarts) the link handshake; on a link that has keys, a rekey.
    fn send_link_init(&mut self, now: Instant, rng: &mut (impl RngCore + CryptoRng), id: LinkId) {
        let rx = self.new_index(rng);
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let Some(key) = link.peer_key else { return };
        let mut reserved = [0u8; LINK_INIT_RESERVED];
        if let Some(k) = &link.keys {
            reserved[..4].copy_from_slice(&k.tx.to_be_bytes());
            reserved[4..].copy_from_slice(&k.proof(rx));
        }
        let mut hs = crypto::noise_initiator(rng, &key);
        let mut msg = [0u8; 64];
        if hs.write_message(&reserved, &mut msg).is_err() {
            return;
        }
        let started = match link.pending.take() {
            Some(p) => {
                self.by_index.remove(&p.rx);
                p.started
            }
            None => now,
        };
        self.by_index.insert(rx, id);
        link.pending = Some(PendingInit {
            hs,
            rx,
            started,
            last_sent: now,
        });
        self.transmits.push_back(Transmit {
            src: link.local,
            dst: link.peer,
            buf: wire::emit_link_init(rx, &msg),
        });
    }

    /// The link this node initiated to `addr`/`key`, created (and its handshake
    /// started) if needed.
    fn link_to(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        spec: HopSpec,
    ) -> LinkId {
        if let Some(&id) = self.out_links.get(&(spec.addr, spec.key)) {
            return id;
        }
        let id = self.fresh_id();
        self.out_links.insert((spec.addr, spec.key), id);
        self.links.insert(
            id,
            Link {
                peer: spec.addr,
                local: None,
                peer_key: Some(spec.key),
                keys: None,
                previous: None,
                next: None,
                pending: None,
                queue: Vec::new(),
                circuits: 0,
                last_used: now,
            },
        );
        self.send_link_init(now, rng, id);
        id
    }

    fn remove_link(&mut self, id: LinkId) {
        if let Some(link) = self.links.remove(&id) {
            let keys = [&link.keys, &link.previous, &link.next];
            for rx in keys
                .into_iter()
                .flatten()
                .map(|k| k.rx)
                .chain(link.pending.map(|p| p.rx))
            {
                self.by_index.remove(&rx);
            }
            if let Some(key) = link.peer_key {
                self.out_links.remove(&(link.peer, key));
            }
        }
    }

    /// Sends (or queues until the link is up) a link control message.
    fn send_ctrl(&mut self, link_id: LinkId, kind: CtrlKind, cid: u32, body: &[u8]) {
        let Some(link) = self.links.get_mut(&link_id) else {
            return;
        };
        let Some(keys) = link.keys.as_mut() else {
            link.queue.push((kind, cid, body.to_vec()));
            return;
        };
        let mut buf =
            Vec::with_capacity(LINK_CTRL_HEADER + CTRL_INNER_HEADER + body.len() + TAG_LEN);
        buf.push(MsgType::LinkCtrl.byte());
        buf.extend_from_slice(&keys.tx.to_be_bytes());
        buf.extend_from_slice(&keys.send_ctr.to_be_bytes());
        buf.push(kind as u8);
        buf.extend_from_slice(&cid.to_be_bytes());
        buf.extend_from_slice(body);
        let (head, rest) = buf.split_at_mut(LINK_CTRL_HEADER);
        let tag = keys.send_ctrl.seal(keys.send_ctr, head, rest);
        keys.send_ctr += 1;
        buf.extend_from_slice(&tag);
        self.transmits.push_back(Transmit {
            src: link.local,
            dst: link.peer,
            buf,
        });
    }

    /// Finishes a cell for `link_id`: header index, cid, mask. `None` if the link is
    /// not up (the cell is dropped: cells are never queued).
    fn finish_cell(&mut self, link_id: LinkId, cid: u32, mut buf: Vec<u8>) -> Output {
        let Some(link) = self.links.get_mut(&link_id) else {
            return Output::Recycle(buf);
        };
        let Some(keys) = link.keys.as_ref() else {
            return Output::Recycle(buf);
        };
        buf[0] = MsgType::Cell.byte();
        buf[1..5].copy_from_slice(&keys.tx.to_be_bytes());
        buf[5..9].copy_from_slice(&cid.to_be_bytes());
        mask_header(&keys.send_mask, &mut buf);
        Output::Transmit(Transmit {
            src: link.local,
            dst: link.peer,
            buf,
        })
    }

    /// Keeps a received buffer for a later keepalive if there is room (and it holds
    /// any cell without growing); otherwise hands it back to the driver.
    fn keep_spare(&mut self, buf: Vec<u8>) -> Output {
        if self.spare.len() < SPARE_BUFFERS && buf.capacity() >= wire::MAX_DATAGRAM {
            self.spare.push(buf);
            Output::Consumed
        } else {
            Output::Recycle(buf)
        }
    }

    fn push_output(&mut self, out: Output) {
        if let Output::Transmit(t) = out {
            self.transmits.push_back(t);
        }
    }

    // ---- datagrams ---------------------------------------------------------------

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
        self.last_tick.get_or_insert(now);
        let kind = match wire::classify(&buf) {
            Ok(k) => k,
            Err(wire::WireError::UnknownType(_) | wire::WireError::Version(_)) => {
                self.stats.dropped_unknown_type += 1;
                return Output::Recycle(buf);
            }
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return Output::Recycle(buf);
            }
        };
        match kind {
            MsgType::LinkInit => {
                self.on_link_init(now, rng, local, remote, &buf);
                Output::Recycle(buf)
            }
            MsgType::LinkResp => {
                self.on_link_resp(now, &buf);
                Output::Recycle(buf)
            }
            MsgType::LinkCtrl => {
                self.on_link_ctrl(now, rng, &mut buf);
                Output::Recycle(buf)
            }
            MsgType::Cell => self.on_cell(now, rng, buf),
        }
    }

    fn on_link_init(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        local: Option<SocketAddr>,
        remote: SocketAddr,
        buf: &[u8],
    ) {
        let Some(sk) = self.cfg.static_key else {
            self.stats.dropped_protocol += 1;
            return;
        };
        if !self.take_token(now) {
            return;
        }
        let mut hs = crypto::noise_responder(rng, &sk);
        let mut payload = [0u8; 64];
        if hs.read_message(&buf[LINK_INIT_MSG], &mut payload).is_err() {
            self.stats.dropped_auth += 1;
            return;
        }
        let tx = wire::index_field(buf);
        // A rekey names the link it replaces and proves it knows that link's keys.
        let prev = wire::be32(&payload, 0);
        let rekeyed = if prev == 0 {
            None
        } else {
            let link = self
                .by_index
                .get(&prev)
                .and_then(|id| Some((*id, self.links.get(id)?)));
            let proven = link.filter(|(_, l)| {
                l.peer_key.is_none()
                    && l.keys.as_ref().is_some_and(|k| {
                        k.rx == prev && k.proof(tx)[..] == payload[4..LINK_INIT_RESERVED]
                    })
            });
            let Some((id, _)) = proven else {
                self.stats.dropped_auth += 1;
                return;
            };
            Some(id)
        };
        if !self.remember_handshake(now, &buf[LINK_INIT_MSG]) {
            return;
        }
        let mut msg = [0u8; NK_MSG2_EMPTY];
        if hs.write_message(&[], &mut msg).is_err() {
            return;
        }
        let rx = self.new_index(rng);
        let keys = LinkKeys::new(crypto::split(&mut hs), false, (rx, tx), now);
        let resp = Transmit {
            src: local,
            dst: remote,
            buf: wire::emit_link_resp(rx, tx, &msg),
        };
        if let Some(id) = rekeyed {
            if let Some(link) = self.links.get_mut(&id) {
                if let Some(old) = link.next.replace(keys) {
                    self.by_index.remove(&old.rx);
                }
                self.by_index.insert(rx, id);
                self.stats.link_rekeys += 1;
                self.transmits.push_back(resp);
            }
            return;
        }
        let id = self.fresh_id();
        self.by_index.insert(rx, id);
        self.links.insert(
            id,
            Link {
                peer: remote,
                local,
                peer_key: None,
                keys: Some(keys),
                previous: None,
                next: None,
                pending: None,
                queue: Vec::new(),
                circuits: 0,
                last_used: now,
            },
        );
        self.transmits.push_back(resp);
    }

    fn on_link_resp(&mut self, now: Instant, buf: &[u8]) {
        let rx = wire::be32(buf, 5);
        let Some(&id) = self.by_index.get(&rx) else {
            self.stats.dropped_unknown_index += 1;
            return;
        };
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let Some(mut p) = link.pending.take_if(|p| p.rx == rx) else {
            self.stats.dropped_unknown_index += 1;
            return;
        };
        let mut payload = [0u8; 64];
        if p.hs
            .read_message(&buf[LINK_RESP_MSG], &mut payload)
            .is_err()
        {
            link.pending = Some(p);
            self.stats.dropped_auth += 1;
            return;
        }
        let keys = LinkKeys::new(
            crypto::split(&mut p.hs),
            true,
            (rx, wire::index_field(buf)),
            now,
        );
        link.last_used = now;
        if let Some(old) = link.keys.replace(keys) {
            if let Some(gone) = link.previous.replace(old) {
                self.by_index.remove(&gone.rx);
            }
            self.stats.link_rekeys += 1;
        }
        for (kind, cid, body) in std::mem::take(&mut link.queue) {
            self.send_ctrl(id, kind, cid, &body);
        }
    }

    /// The link and receive keys for a LINK_CTRL or CELL, by receiver index. A
    /// responder's first message under rekeyed keys makes them current.
    fn recv_keys(&mut self, buf: &[u8]) -> Option<(LinkId, &mut LinkKeys)> {
        let rx = wire::index_field(buf);
        let Some(link_id) = self.by_index.get(&rx).copied() else {
            self.stats.dropped_unknown_index += 1;
            return None;
        };
        let link = self.links.get_mut(&link_id)?;
        if link.next.as_ref().is_some_and(|k| k.rx == rx) {
            let promoted = link.next.take();
            if let Some(old) = std::mem::replace(&mut link.keys, promoted) {
                if let Some(gone) = link.previous.replace(old) {
                    self.by_index.remove(&gone.rx);
                }
            }
        }
        let keys = if link.keys.as_ref().is_some_and(|k| k.rx == rx) {
            link.keys.as_mut()
        } else {
            link.previous.as_mut().filter(|k| k.rx == rx)
        };
        match keys {
            Some(k) => Some((link_id, k)),
            None => {
                self.stats.dropped_unknown_index += 1;
                None
            }
        }
    }

    fn on_link_ctrl(&mut self, now: Instant, rng: &mut (impl RngCore + CryptoRng), buf: &mut [u8]) {
        let Some((link_id, keys)) = self.recv_keys(buf) else {
            return;
        };
        let ctr = wire::be64(buf, 5);
        if !keys.window.check(ctr) {
            self.stats.dropped_replay += 1;
            return;
        }
        let tag_at = buf.len() - TAG_LEN;
        let (data, tag) = buf.split_at_mut(tag_at);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        let (head, rest) = data.split_at_mut(LINK_CTRL_HEADER);
        if !keys.recv_ctrl.open(ctr, head, rest, &t) {
            self.stats.dropped_auth += 1;
            return;
        }
        if !keys.window.update(ctr) {
            self.stats.dropped_replay += 1;
            return;
        }
        let Ok(kind) = CtrlKind::parse(rest[0], rest.len() - CTRL_INNER_HEADER) else {
            self.stats.dropped_protocol += 1;
            return;
        };
        let cid = wire::be32(rest, 1);
        let body = &mut rest[CTRL_INNER_HEADER..];
        if let Some(l) = self.links.get_mut(&link_id) {
            l.last_used = now;
        }
        match kind {
            CtrlKind::Build => self.on_build(now, rng, link_id, cid, body),
            CtrlKind::Built => self.on_built(now, link_id, cid, body),
            CtrlKind::Destroy => self.on_destroy(link_id, cid, DestroyReason::from_byte(body[0])),
        }
    }

    fn on_build(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        link_id: LinkId,
        cid: u32,
        slots: &mut [u8],
    ) {
        let (Some(sk), Some(link)) = (self.cfg.static_key, self.links.get(&link_id)) else {
            self.stats.dropped_protocol += 1;
            return;
        };
        // BUILD only flows from a link's initiator to its responder.
        if link.peer_key.is_some() || self.circuits.contains_key(&(link_id, cid)) {
            self.stats.dropped_protocol += 1;
            return;
        }
        if !self.take_token(now) {
            return;
        }
        if self.relays.len() >= self.cfg.max_circuits {
            self.stats.circuits_refused += 1;
            self.send_ctrl(
                link_id,
                CtrlKind::Destroy,
                cid,
                &[DestroyReason::Unreachable as u8],
            );
            return;
        }
        let mut hs = crypto::noise_responder(rng, &sk);
        let mut p = [0u8; 128];
        let ok = matches!(
            hs.read_message(&slots[..BUILD_SLOT_LEN], &mut p),
            Ok(BUILD_PAYLOAD_LEN)
        );
        if !ok {
            self.stats.dropped_auth += 1;
            return;
        }
        if !self.remember_handshake(now, &slots[..32]) {
            return;
        }
        let Ok(payload) = BuildPayload::parse(&p[..BUILD_PAYLOAD_LEN]) else {
            self.stats.dropped_protocol += 1;
            return;
        };
        if (payload.service == Service::Exit && !self.cfg.exit)
            || (payload.service == Service::Directory && !self.cfg.directory)
            || (payload.service == Service::Echo && !self.cfg.echo)
        {
            self.stats.circuits_refused += 1;
            self.send_ctrl(
                link_id,
                CtrlKind::Destroy,
                cid,
                &[DestroyReason::Protocol as u8],
            );
            return;
        }
        let mut reply = [0u8; REPLY_SLOT_LEN];
        if hs
            .write_message(&[0u8; REPLY_PAYLOAD_LEN], &mut reply)
            .is_err()
        {
            return;
        }
        let keys = HopKeys::new(Generation::new(
            crypto::split(&mut hs),
            Side::Gateway,
            now,
            false,
        ));
        let id = self.fresh_id();
        let mut relay = Relay {
            prev: (link_id, cid),
            next: None,
            service: payload.service,
            keys,
            kb: payload.kb,
            reply: None,
            created: now,
            last_fwd: now,
            last_bwd: now,
        };
        self.stats.circuits_accepted += 1;
        self.circuits.insert((link_id, cid), Entry::RelayPrev(id));
        if let Some(l) = self.links.get_mut(&link_id) {
            l.circuits += 1;
        }
        if let Some((addr, key)) = payload.next {
            let next_link = self.link_to(now, rng, HopSpec { addr, key });
            let ncid = self.new_cid(next_link, rng);
            onion::relay_build(slots, &payload.kb);
            relay.reply = Some(reply);
            relay.next = Some((next_link, ncid));
            self.circuits
                .insert((next_link, ncid), Entry::RelayNext(id));
            if let Some(l) = self.links.get_mut(&next_link) {
                l.circuits += 1;
            }
            self.relays.insert(id, Box::new(relay));
            self.send_ctrl(next_link, CtrlKind::Build, ncid, slots);
        } else {
            let built = onion::terminal_built(&reply, &payload.kb);
            self.relays.insert(id, Box::new(relay));
            self.send_ctrl(link_id, CtrlKind::Built, cid, &built);
        }
    }

    fn on_built(&mut self, now: Instant, link_id: LinkId, cid: u32, slots: &mut [u8]) {
        match self.circuits.get(&(link_id, cid)).copied() {
            Some(Entry::RelayNext(id)) => {
                let Some(r) = self.relays.get_mut(&id) else {
                    return;
                };
                let Some(reply) = r.reply.take() else {
                    self.stats.dropped_protocol += 1;
                    return;
                };
                onion::relay_built(slots, &reply, &r.kb);
                r.last_bwd = now;
                let (pl, pc) = r.prev;
                self.send_ctrl(pl, CtrlKind::Built, pc, slots);
            }
            Some(Entry::Own(id)) => self.finish_build(now, id, slots),
            _ => self.stats.dropped_unknown_circuit += 1,
        }
    }

    fn finish_build(&mut self, now: Instant, id: CircuitId, slots: &[u8]) {
        let Some(own) = self.own.get_mut(&id) else {
            return;
        };
        if own.is_up() {
            self.stats.dropped_protocol += 1;
            return;
        }
        let kbs: Vec<[u8; KEY_LEN]> = own.hops.iter().map(|h| h.kb).collect();
        let replies = onion::client_built(slots, &kbs);
        let mut keys = Vec::with_capacity(own.hops.len());
        for (hop, r) in own.hops.iter_mut().zip(&replies) {
            let Some(mut hs) = hop.hs.take() else { break };
            let mut p = [0u8; 64];
            if !matches!(hs.read_message(r, &mut p), Ok(REPLY_PAYLOAD_LEN)) || p[0] != 0 {
                break;
            }
            keys.push(HopKeys::new(Generation::new(
                crypto::split(&mut hs),
                Side::Client,
                now,
                false,
            )));
        }
        if keys.len() == own.hops.len() {
            own.keys = keys;
            own.last_rx = now;
            own.last_tx = now;
            self.events.push_back(Event::CircuitUp(id));
        } else {
            self.stats.dropped_auth += 1;
            self.close(id, DownReason::BuildRejected);
        }
    }

    fn on_destroy(&mut self, link_id: LinkId, cid: u32, reason: DestroyReason) {
        match self.circuits.get(&(link_id, cid)).copied() {
            Some(Entry::RelayPrev(id) | Entry::RelayNext(id)) => {
                self.drop_relay(id, reason, Some(link_id))
            }
            Some(Entry::Own(id)) => {
                self.forget_own(id);
                self.events
                    .push_back(Event::CircuitDown(id, DownReason::Destroyed(reason)));
            }
            None => self.stats.dropped_unknown_circuit += 1,
        }
    }

    /// Frees a relayed circuit and sends DESTROY on each side except `from`.
    fn drop_relay(&mut self, id: RelayId, reason: DestroyReason, from: Option<LinkId>) {
        let Some(r) = self.relays.remove(&id) else {
            return;
        };
        if matches!(r.service, Service::Exit | Service::Directory) && r.next.is_none() {
            self.events
                .push_back(Event::ServiceClosed(CircuitId(id), r.service));
        }
        for side in std::iter::once(r.prev).chain(r.next) {
            self.circuits.remove(&side);
            if let Some(l) = self.links.get_mut(&side.0) {
                l.circuits = l.circuits.saturating_sub(1);
            }
            if Some(side.0) != from {
                self.send_ctrl(side.0, CtrlKind::Destroy, side.1, &[reason as u8]);
            }
        }
    }

    fn forget_own(&mut self, id: CircuitId) -> Option<Own> {
        let own = self.own.remove(&id)?;
        self.circuits.remove(&own.first);
        if let Some(l) = self.links.get_mut(&own.first.0) {
            l.circuits = l.circuits.saturating_sub(1);
        }
        Some(own)
    }

    /// Tears down a client circuit: DESTROY to the first hop and a `CircuitDown` event.
    fn close(&mut self, id: CircuitId, reason: DownReason) {
        if let Some(own) = self.forget_own(id) {
            let (l, c) = own.first;
            self.send_ctrl(l, CtrlKind::Destroy, c, &[DestroyReason::Requested as u8]);
            self.events.push_back(Event::CircuitDown(id, reason));
        }
    }

    /// Closes a client circuit at the user's request.
    pub fn close_circuit(&mut self, id: CircuitId) {
        self.close(id, DownReason::Closed);
    }

    fn on_cell(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        mut buf: Vec<u8>,
    ) -> Output {
        let Some((link_id, keys)) = self.recv_keys(&buf) else {
            return Output::Recycle(buf);
        };
        let mask = keys.recv_mask;
        mask_header(&mask, &mut buf);
        let cid = wire::be32(&buf, 5);
        match self.circuits.get(&(link_id, cid)).copied() {
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

    fn cell_forward(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: RelayId,
        mut buf: Vec<u8>,
    ) -> Output {
        let Some(r) = self.relays.get_mut(&id) else {
            return Output::Recycle(buf);
        };
        let (head, body) = buf.split_at_mut(CELL_HEADER_LEN);
        let (ctr, tag) = onion::read_slot0(&head[CELL_SLOTS]);
        if let Err(e) = r.keys.open(now, ctr, &tag, body) {
            self.count_reject(e);
            return Output::Recycle(buf);
        }
        r.last_fwd = now;
        if ctr & CTR_FLAG != 0 {
            return self.terminal(now, rng, id, buf);
        }
        let Some((nl, nc)) = r.next else {
            self.stats.dropped_protocol += 1;
            return Output::Recycle(buf);
        };
        let ks = r.keys.opened_by(ctr).open_keystream(ctr);
        onion::shift_out(&mut head[CELL_SLOTS], &ks);
        self.stats.relayed_forward += 1;
        self.finish_cell(nl, nc, buf)
    }

    /// A cell addressed to this hop (TERMINAL), already opened in `buf`.
    fn terminal(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: RelayId,
        mut buf: Vec<u8>,
    ) -> Output {
        let Ok(body) = Body::parse(&buf[CELL_HEADER_LEN..]) else {
            self.stats.dropped_protocol += 1;
            return Output::Recycle(buf);
        };
        let Some(r) = self.relays.get_mut(&id) else {
            return Output::Recycle(buf);
        };
        match body.cmd {
            Cmd::Keepalive => {}
            Cmd::Data if r.service == Service::Echo => {}
            Cmd::Data if matches!(r.service, Service::Exit | Service::Directory) => {
                let start = CELL_HEADER_LEN + BODY_HEADER;
                self.events.push_back(Event::ServiceData {
                    circuit: CircuitId(id),
                    service: r.service,
                    buf,
                    range: start..start + body.len,
                });
                return Output::Consumed;
            }
            Cmd::Rekey if body.len == NK_MSG1_EMPTY => {
                if !self.take_token(now) {
                    return Output::Recycle(buf);
                }
                let Some(sk) = self.cfg.static_key else {
                    return Output::Recycle(buf);
                };
                let msg = &buf
                    [CELL_HEADER_LEN + BODY_HEADER..CELL_HEADER_LEN + BODY_HEADER + NK_MSG1_EMPTY];
                let mut hs = crypto::noise_responder(rng, &sk);
                let mut p = [0u8; 64];
                if hs.read_message(msg, &mut p).is_err() {
                    self.stats.dropped_auth += 1;
                    return Output::Recycle(buf);
                }
                let mut e = [0u8; 32];
                e.copy_from_slice(&msg[..32]);
                if !self.remember_handshake(now, &e) {
                    return Output::Recycle(buf);
                }
                let mut reply = [0u8; NK_MSG2_EMPTY];
                if hs.write_message(&[], &mut reply).is_err() {
                    return Output::Recycle(buf);
                }
                let Some(r) = self.relays.get_mut(&id) else {
                    return Output::Recycle(buf);
                };
                let phase = !r.keys.current.phase;
                r.keys.announce(Generation::new(
                    crypto::split(&mut hs),
                    Side::Gateway,
                    now,
                    phase,
                ));
                self.stats.rekeys += 1;
                let b = &mut buf[CELL_HEADER_LEN..];
                b[BODY_HEADER..BODY_HEADER + NK_MSG2_EMPTY].copy_from_slice(&reply);
                Body {
                    cmd: Cmd::RekeyAck,
                    len: NK_MSG2_EMPTY,
                }
                .emit(b);
            }
            _ => {
                self.stats.dropped_protocol += 1;
                return Output::Recycle(buf);
            }
        }
        // Answer in the same buffer: KEEPALIVE and echoed DATA go back unchanged.
        self.originate(now, id, buf)
    }

    /// Seals `buf`'s body as a backward cell originating at this hop and sends it.
    fn originate(&mut self, now: Instant, id: RelayId, mut buf: Vec<u8>) -> Output {
        let Some(r) = self.relays.get_mut(&id) else {
            return Output::Recycle(buf);
        };
        if !r.keys.current.usable(now) {
            self.stats.dropped_expired += 1;
            return Output::Recycle(buf);
        }
        let (head, body) = buf.split_at_mut(CELL_HEADER_LEN);
        let Some(own) = r.keys.current.seal(true, body) else {
            return Output::Recycle(buf);
        };
        let (ctr, _) = onion::read_slot0(&own);
        let ks = r.keys.current.seal_keystream(ctr);
        onion::originate(&mut head[CELL_SLOTS], &ks, &own);
        let (pl, pc) = r.prev;
        self.finish_cell(pl, pc, buf)
    }

    fn cell_backward(&mut self, now: Instant, id: RelayId, mut buf: Vec<u8>) -> Output {
        let Some(r) = self.relays.get_mut(&id) else {
            return Output::Recycle(buf);
        };
        if !r.keys.current.usable(now) {
            self.stats.dropped_expired += 1;
            return Output::Recycle(buf);
        }
        let (head, body) = buf.split_at_mut(CELL_HEADER_LEN);
        let Some(own) = r.keys.current.seal(false, body) else {
            return Output::Recycle(buf);
        };
        let (ctr, _) = onion::read_slot0(&own);
        let ks = r.keys.current.seal_keystream(ctr);
        onion::push_in(&mut head[CELL_SLOTS], &ks, &own);
        r.last_bwd = now;
        let (pl, pc) = r.prev;
        self.stats.relayed_backward += 1;
        self.finish_cell(pl, pc, buf)
    }

    fn cell_client(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: CircuitId,
        mut buf: Vec<u8>,
    ) -> Output {
        let Some(own) = self.own.get_mut(&id) else {
            return Output::Recycle(buf);
        };
        if !own.is_up() {
            self.stats.dropped_protocol += 1;
            return Output::Recycle(buf);
        }
        let (head, body) = buf.split_at_mut(CELL_HEADER_LEN);
        let origin = match onion::unwrap_backward(now, &mut own.keys, &mut head[CELL_SLOTS], body) {
            Ok(i) => i,
            Err(e) => {
                self.count_reject(e);
                return Output::Recycle(buf);
            }
        };
        own.last_rx = now;
        let Ok(b) = Body::parse(body) else {
            self.stats.dropped_protocol += 1;
            return Output::Recycle(buf);
        };
        match b.cmd {
            Cmd::Data if origin + 1 == own.hops.len() => {
                let range = CELL_HEADER_LEN + BODY_HEADER..CELL_HEADER_LEN + BODY_HEADER + b.len;
                self.events.push_back(Event::Data {
                    circuit: id,
                    buf,
                    range,
                });
                Output::Consumed
            }
            Cmd::Keepalive => self.keep_spare(buf),
            Cmd::RekeyAck if b.len == NK_MSG2_EMPTY => {
                let hop = &mut own.hops[origin];
                let Some(mut hs) = hop.hs.take() else {
                    self.stats.dropped_protocol += 1;
                    return Output::Recycle(buf);
                };
                let mut p = [0u8; 64];
                let msg = &body[BODY_HEADER..BODY_HEADER + NK_MSG2_EMPTY];
                if hs.read_message(msg, &mut p).is_err() {
                    self.stats.dropped_auth += 1;
                    return Output::Recycle(buf);
                }
                hop.rekey_sent = None;
                let keys = &mut own.keys[origin];
                let phase = !keys.current.phase;
                keys.rotate(Generation::new(
                    crypto::split(&mut hs),
                    Side::Client,
                    now,
                    phase,
                ));
                self.stats.rekeys += 1;
                // Confirm promptly so the hop switches its sending key too.
                let out = self.send_cmd(now, rng, id, origin, Cmd::Keepalive, &[], buf);
                self.push_output(out);
                Output::Consumed
            }
            _ => {
                self.stats.dropped_protocol += 1;
                Output::Recycle(buf)
            }
        }
    }

    // ---- client API --------------------------------------------------------------

    /// Starts building a circuit through `path` (1..=8 gateways) whose last hop runs
    /// `service`. A `CircuitUp` or `CircuitDown` event follows.
    pub fn build_circuit(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        path: &[HopSpec],
        service: Service,
    ) -> Result<CircuitId, BuildError> {
        if path.is_empty() || path.len() > SLOTS {
            return Err(BuildError::PathLength(path.len()));
        }
        self.last_tick.get_or_insert(now);
        let link = self.link_to(now, rng, path[0]);
        let cid = self.new_cid(link, rng);
        let mut hops = Vec::with_capacity(path.len());
        let mut msgs = Vec::with_capacity(path.len());
        for (j, spec) in path.iter().enumerate() {
            let mut kb = [0u8; KEY_LEN];
            rng.fill_bytes(&mut kb);
            let next = path.get(j + 1).map(|n| (n.addr, n.key));
            let svc = if next.is_some() {
                Service::Relay
            } else {
                service
            };
            let payload = BuildPayload {
                service: svc,
                kb,
                next,
            }
            .emit();
            let mut hs = crypto::noise_initiator(rng, &spec.key);
            let mut msg = [0u8; BUILD_SLOT_LEN];
            if hs.write_message(&payload, &mut msg).is_err() {
                return Err(BuildError::PathLength(path.len()));
            }
            msgs.push(msg);
            hops.push(OwnHop {
                spec: *spec,
                kb,
                hs: Some(hs),
                rekey_sent: None,
            });
        }
        let kbs: Vec<[u8; KEY_LEN]> = hops.iter().map(|h| h.kb).collect();
        let slots = onion::client_build(&msgs, &kbs, rng);
        let id = CircuitId(self.fresh_id());
        self.circuits.insert((link, cid), Entry::Own(id));
        if let Some(l) = self.links.get_mut(&link) {
            l.circuits += 1;
        }
        self.own.insert(
            id,
            Own {
                first: (link, cid),
                hops,
                keys: Vec::new(),
                created: now,
                last_rx: now,
                last_tx: now,
            },
        );
        self.send_ctrl(link, CtrlKind::Build, cid, &slots[..]);
        Ok(id)
    }

    /// Sends DATA on a circuit. `buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + len]` holds the
    /// payload (so a caller can read a packet straight into place); the buffer is
    /// resized to the cell and returned in the [`Transmit`].
    pub fn send_data(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: CircuitId,
        buf: Vec<u8>,
        len: usize,
    ) -> Result<Transmit, SendError> {
        if len > MAX_PAYLOAD {
            return Err(SendError::TooLarge(len));
        }
        if buf.len() < PAYLOAD_OFFSET + len {
            return Err(SendError::ShortBuffer);
        }
        let own = self.own.get(&id).ok_or(SendError::NoCircuit)?;
        if !own.is_up() {
            return Err(SendError::NotUp);
        }
        let target = own.hops.len() - 1;
        match self.send_body(now, rng, id, target, Cmd::Data, len, buf) {
            Output::Transmit(t) => Ok(t),
            _ => Err(SendError::Exhausted),
        }
    }

    /// Sends DATA backward to the client of a circuit whose service this gateway
    /// provides (the circuit of an [`Event::ServiceData`]). The payload is laid out as for
    /// [`Node::send_data`].
    pub fn send_backward(
        &mut self,
        now: Instant,
        id: CircuitId,
        mut buf: Vec<u8>,
        len: usize,
    ) -> Result<Transmit, SendError> {
        if len > MAX_PAYLOAD {
            return Err(SendError::TooLarge(len));
        }
        if buf.len() < PAYLOAD_OFFSET + len {
            return Err(SendError::ShortBuffer);
        }
        let r = self.relays.get(&id.0).ok_or(SendError::NoCircuit)?;
        if !matches!(r.service, Service::Exit | Service::Directory) || r.next.is_some() {
            return Err(SendError::NoCircuit);
        }
        let size = wire::body_size(&self.cfg.padding, len);
        buf.resize(CELL_HEADER_LEN + size, 0);
        Body {
            cmd: Cmd::Data,
            len,
        }
        .emit(&mut buf[CELL_HEADER_LEN..]);
        match self.originate(now, id.0, buf) {
            Output::Transmit(t) => Ok(t),
            _ => Err(SendError::Exhausted),
        }
    }

    /// Copies `payload` into a fresh buffer and sends it (convenience for tests and
    /// control paths; the data path uses [`Node::send_data`]).
    pub fn send_payload(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: CircuitId,
        payload: &[u8],
    ) -> Result<Transmit, SendError> {
        let mut buf = vec![0u8; PAYLOAD_OFFSET + payload.len()];
        buf[PAYLOAD_OFFSET..].copy_from_slice(payload);
        self.send_data(now, rng, id, buf, payload.len())
    }

    #[allow(clippy::too_many_arguments)]
    fn send_cmd(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: CircuitId,
        target: usize,
        cmd: Cmd,
        payload: &[u8],
        mut buf: Vec<u8>,
    ) -> Output {
        buf.clear();
        buf.resize(PAYLOAD_OFFSET + payload.len(), 0);
        buf[PAYLOAD_OFFSET..].copy_from_slice(payload);
        self.send_body(now, rng, id, target, cmd, payload.len(), buf)
    }

    #[allow(clippy::too_many_arguments)]
    fn send_body(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: CircuitId,
        target: usize,
        cmd: Cmd,
        len: usize,
        mut buf: Vec<u8>,
    ) -> Output {
        let size = wire::body_size(&self.cfg.padding, len);
        buf.resize(CELL_HEADER_LEN + size, 0);
        let Some(own) = self.own.get_mut(&id) else {
            return Output::Recycle(buf);
        };
        let (head, body) = buf.split_at_mut(CELL_HEADER_LEN);
        Body { cmd, len }.emit(body);
        if onion::wrap_forward(&mut own.keys, target, &mut head[CELL_SLOTS], body, rng).is_none() {
            return Output::Recycle(buf);
        }
        own.last_tx = now;
        let (l, c) = own.first;
        self.finish_cell(l, c, buf)
    }

    // ---- timers ------------------------------------------------------------------

    /// Runs timers: retransmissions, keepalives, rekeys and timeouts.
    pub fn handle_timeout(&mut self, now: Instant, rng: &mut (impl RngCore + CryptoRng)) {
        self.last_tick = Some(now);
        self.tick_links(now, rng);
        self.tick_relays(now);
        self.tick_own(now, rng);
        while let Some(&(key, t)) = self.seen_order.front() {
            if now.saturating_duration_since(t) < HANDSHAKE_REPLAY_TIME {
                break;
            }
            self.seen_order.pop_front();
            self.seen.remove(&key);
        }
    }

    fn tick_links(&mut self, now: Instant, rng: &mut (impl RngCore + CryptoRng)) {
        let since = |t: Instant| now.saturating_duration_since(t);
        let mut failed = Vec::new();
        let mut init = Vec::new();
        let mut idle = Vec::new();
        let mut expired = Vec::new();
        for (&id, l) in &self.links {
            let keys_age = l.keys.as_ref().map(|k| since(k.born));
            if keys_age.is_some_and(|a| a >= onion::REJECT_AFTER_TIME) {
                failed.push((id, DestroyReason::Timeout));
            } else if let Some(p) = &l.pending {
                if keys_age.is_none() && since(p.started) >= self.cfg.build_timeout {
                    failed.push((id, DestroyReason::Unreachable));
                } else if since(p.last_sent) >= LINK_RETRY {
                    init.push(id);
                }
            } else if l.peer_key.is_some() && keys_age.is_some_and(|a| a >= onion::REKEY_AFTER_TIME)
            {
                init.push(id);
            } else if l.circuits == 0 && since(l.last_used) >= self.cfg.idle_timeout {
                idle.push(id);
            }
            if l.previous
                .as_ref()
                .is_some_and(|k| since(k.born) >= onion::REJECT_AFTER_TIME)
            {
                expired.push(id);
            }
        }
        for id in expired {
            if let Some(old) = self.links.get_mut(&id).and_then(|l| l.previous.take()) {
                self.by_index.remove(&old.rx);
            }
        }
        for id in init {
            self.send_link_init(now, rng, id);
        }
        for (id, reason) in failed {
            let affected: Vec<Entry> = self
                .circuits
                .iter()
                .filter(|(k, _)| k.0 == id)
                .map(|(_, e)| *e)
                .collect();
            self.remove_link(id);
            for e in affected {
                match e {
                    Entry::RelayPrev(r) | Entry::RelayNext(r) => {
                        self.drop_relay(r, reason, Some(id))
                    }
                    Entry::Own(c) => {
                        self.forget_own(c);
                        let why = if reason == DestroyReason::Unreachable {
                            DownReason::BuildTimeout
                        } else {
                            DownReason::Destroyed(reason)
                        };
                        self.events.push_back(Event::CircuitDown(c, why));
                    }
                }
            }
        }
        for id in idle {
            self.remove_link(id);
        }
    }

    fn tick_relays(&mut self, now: Instant) {
        let idle = self.cfg.idle_timeout;
        let build = self.cfg.build_timeout;
        let dead: Vec<(RelayId, DestroyReason)> = self
            .relays
            .iter_mut()
            .filter_map(|(&id, r)| {
                r.keys.forget_expired(now);
                let since = |t: Instant| now.saturating_duration_since(t);
                if r.reply.is_some() && since(r.created) >= build {
                    Some((id, DestroyReason::Unreachable))
                } else if since(r.last_fwd) >= idle
                    || (r.next.is_some() && since(r.last_bwd) >= idle)
                    || (!r.keys.current.usable(now) && r.keys.next.is_none())
                {
                    Some((id, DestroyReason::Timeout))
                } else {
                    None
                }
            })
            .collect();
        for (id, reason) in dead {
            self.drop_relay(id, reason, None);
        }
    }

    fn tick_own(&mut self, now: Instant, rng: &mut (impl RngCore + CryptoRng)) {
        let mut down = Vec::new();
        let mut keepalive = std::mem::take(&mut self.due);
        let mut rekey = Vec::new();
        for (&id, o) in &mut self.own {
            for k in &mut o.keys {
                k.forget_expired(now);
            }
            let since = |t: Instant| now.saturating_duration_since(t);
            if !o.is_up() {
                if since(o.created) >= self.cfg.build_timeout {
                    down.push((id, DownReason::BuildTimeout));
                }
                continue;
            }
            if since(o.last_rx) >= self.cfg.circuit_timeout {
                down.push((id, DownReason::Silent));
                continue;
            }
            if o.keys.iter().any(|k| !k.current.usable(now)) {
                down.push((id, DownReason::KeysExpired));
                continue;
            }
            for (j, (h, k)) in o.hops.iter().zip(&o.keys).enumerate() {
                let due = h.rekey_sent.is_none_or(|t| since(t) >= REKEY_TIMEOUT);
                if k.current.wants_rekey(now) && due {
                    rekey.push((id, j));
                }
            }
            if since(o.last_tx) >= self.cfg.keepalive {
                keepalive.push(id);
            }
        }
        for (id, reason) in down {
            self.close(id, reason);
        }
        for (id, j) in rekey {
            let Some(own) = self.own.get_mut(&id) else {
                continue;
            };
            let hop = &mut own.hops[j];
            let mut hs = crypto::noise_initiator(rng, &hop.spec.key);
            let mut msg = [0u8; NK_MSG1_EMPTY];
            if hs.write_message(&[], &mut msg).is_err() {
                continue;
            }
            hop.hs = Some(hs);
            hop.rekey_sent = Some(now);
            let buf = self.spare.pop().unwrap_or_default();
            let out = self.send_cmd(now, rng, id, j, Cmd::Rekey, &msg, buf);
            self.push_output(out);
        }
        for id in keepalive.drain(..) {
            let Some(target) = self.own.get(&id).map(|o| o.hops.len() - 1) else {
                continue;
            };
            let buf = self.spare.pop().unwrap_or_default();
            let out = self.send_cmd(now, rng, id, target, Cmd::Keepalive, &[], buf);
            self.push_output(out);
        }
        self.due = keepalive;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relayed circuit is one boxed `Relay` plus its entries in `relays` and
    /// `circuits`; its size is the bulk of a gateway's memory per idle circuit
    /// (docs/DESIGN.md, memory per circuit).
    #[test]
    fn a_relayed_circuit_stays_small() {
        eprintln!(
            "Relay {} bytes, Entry {} bytes",
            std::mem::size_of::<Relay>(),
            std::mem::size_of::<Entry>()
        );
        assert!(std::mem::size_of::<Relay>() <= 1440);
        assert!(std::mem::size_of::<Entry>() <= 16);
    }
}
