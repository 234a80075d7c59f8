//! The node's own circuits (client side): building through a path, onion-wrapping
//! data for every hop, unwrapping what comes back, keepalives and teardown.

use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};

use crate::proto::crypto::{self, KEY_LEN};
use crate::proto::onion::{self, Generation, HopKeys, Side};
use crate::proto::wire::{
    self, Body, BuildPayload, Cell, Cmd, CtrlKind, DestroyReason, Service, BUILD_SLOT_LEN,
    MAX_PAYLOAD, NK_MSG2_EMPTY, PADDING_ECHO, PAYLOAD_OFFSET, REPLY_LEN, REPLY_PAYLOAD_LEN, SLOTS,
};

use super::frame_body;
use super::padding::{self, Padder};
use super::{
    BuildError, CircuitId, Deadline, DownReason, Entry, Event, HopSpec, LinkId, Node, NodeConfig,
    Output, SendError, Timer, Transmit, REKEY_TIMEOUT, SPARE_BUFFERS,
};

pub(super) struct OwnHop {
    pub(super) spec: HopSpec,
    pub(super) kb: [u8; KEY_LEN],
    pub(super) hs: Option<snow::HandshakeState>,
    pub(super) rekey_sent: Option<Instant>,
    /// The age at which this hop's current key generation is rekeyed.
    pub(super) rekey_after: Duration,
}

/// A fresh rekey age for a hop's key generation: `REKEY_AFTER_TIME` minus a uniform
/// random time below `jitter` (see [`REKEY_JITTER`]).
pub(super) fn rekey_after(rng: &mut impl RngCore, jitter: Duration) -> Duration {
    let ms = usize::try_from(jitter.as_millis()).unwrap_or(usize::MAX);
    let early = crypto::below(rng, ms) as u64;
    onion::REKEY_AFTER_TIME.saturating_sub(Duration::from_millis(early))
}

pub(super) struct Own {
    pub(super) first: (LinkId, u32),
    pub(super) hops: Vec<OwnHop>,
    pub(super) keys: Vec<HopKeys>,
    pub(super) created: Instant,
    pub(super) last_rx: Instant,
    pub(super) last_tx: Instant,
    /// When the last KEEPALIVE went out.
    pub(super) last_keepalive: Instant,
    /// The smoothed round trip to the last hop, from the answers to KEEPALIVEs
    /// (which carry their send time).
    pub(super) srtt: Option<Duration>,
    /// The circuit's adaptive padding, if it pads.
    pub(super) padder: Option<Box<Padder>>,
    /// What went through it.
    pub(super) traffic: Traffic,
}

/// The bytes of an own circuit's cells each way, and of its PADDING cells among them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub sent: u64,
    pub received: u64,
    pub padding_sent: u64,
    pub padding_received: u64,
}

impl Traffic {
    /// PADDING's share of all the bytes, in percent; `None` before any byte.
    #[must_use]
    pub fn padding_share(&self) -> Option<f64> {
        let all = self.sent.saturating_add(self.received);
        let padding = self.padding_sent.saturating_add(self.padding_received);
        (all > 0).then(|| padding as f64 * 100.0 / all as f64)
    }
}

/// An own circuit as `status` shows it.
#[derive(Clone, Copy, Debug)]
pub struct OwnInfo {
    /// When its build started.
    pub created: Instant,
    /// The newest handshake with any of its hops (its build or a rekey); `None`
    /// while it is being built.
    pub last_handshake: Option<Instant>,
    pub traffic: Traffic,
}

impl Own {
    pub(super) fn is_up(&self) -> bool {
        self.keys.len() == self.hops.len()
    }

    /// When the circuit's timer next has something to do (see `Node::check_own`).
    /// The message-count rekey limit is checked whenever the timer runs, at least
    /// once per keepalive interval.
    pub(super) fn deadline(&self, cfg: &NodeConfig) -> Option<Instant> {
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

impl Node {
    /// Keeps a received buffer for a later keepalive if there is room (and it holds
    /// any cell without growing); otherwise hands it back to the driver.
    pub(super) fn keep_spare(&mut self, buf: Vec<u8>) -> Output {
        if self.spare.len() < SPARE_BUFFERS && buf.capacity() >= wire::MAX_DATAGRAM {
            self.spare.push(buf);
            Output::Consumed
        } else {
            Output::Recycle(buf)
        }
    }

    pub(super) fn on_built(
        &mut self,
        now: Instant,
        link_id: LinkId,
        cid: u32,
        slots: &mut [u8; REPLY_LEN],
    ) {
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
                // Its build can no longer time out.
                self.schedule_relay(id);
            }
            Some(Entry::Own(id)) => self.finish_build(now, id, slots),
            _ => self.stats.dropped_unknown_circuit += 1,
        }
    }

    pub(super) fn finish_build(&mut self, now: Instant, id: CircuitId, slots: &[u8; REPLY_LEN]) {
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
            self.schedule_own(id);
        } else {
            self.stats.dropped_auth += 1;
            self.close(id, DownReason::BuildRejected);
        }
    }

    pub(super) fn forget_own(&mut self, id: CircuitId) -> Option<Own> {
        let own = self.own.remove(&id)?;
        self.timers.set(Timer::Own(id), None);
        self.timers.set(Timer::Padding(id), None);
        self.circuits.remove(&own.first);
        self.circuit_left(own.first.0);
        Some(own)
    }

    /// Tears down a client circuit: DESTROY to the first hop and a `CircuitDown` event.
    pub(super) fn close(&mut self, id: CircuitId, reason: DownReason) {
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

    pub(super) fn cell_client(
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
        let size = buf.len() as u64;
        let Some(mut cell) = Cell::new_checked(&mut buf) else {
            self.stats.dropped_malformed += 1;
            return Output::Recycle(buf);
        };
        let (slots, body) = cell.slots_and_body();
        let origin = match onion::unwrap_backward(now, &mut own.keys, slots, body) {
            Ok(i) => i,
            Err(e) => {
                self.count_reject(e);
                return Output::Recycle(buf);
            }
        };
        own.last_rx = now;
        let Ok(b) = Body::parse(cell.body()) else {
            self.stats.dropped_protocol += 1;
            return Output::Recycle(buf);
        };
        own.traffic.received = own.traffic.received.saturating_add(size);
        if b.cmd == Cmd::Padding {
            own.traffic.padding_received = own.traffic.padding_received.saturating_add(size);
        }
        let hops = own.hops.len();
        if b.cmd == Cmd::Keepalive && origin + 1 == hops {
            let stamp = cell
                .payload(b.len)
                .and_then(|p| <[u8; STAMP_LEN]>::try_from(p).ok());
            if let Some(sample) = stamp.and_then(|s| round_trip(now, own.created, s)) {
                own.srtt = Some(own.srtt.map_or(sample, |s| (s * 7 + sample) / 8));
            }
        }
        if let Some(p) = own.padder.as_mut() {
            let events = if b.cmd == Cmd::Padding {
                &padding::PADDING_RECEIVED
            } else {
                &padding::RECEIVED
            };
            self.timers.set(Timer::Padding(id), p.on(now, events));
        }
        let first = cell.payload(1).and_then(<[u8]>::first).copied();
        match b.cmd {
            Cmd::Data | Cmd::Joined | Cmd::VData if origin + 1 == hops => {
                self.events.push_back(Event::Data {
                    circuit: id,
                    cmd: b.cmd,
                    buf,
                    range: wire::payload_range(b.len),
                });
                Output::Consumed
            }
            Cmd::Keepalive => {
                self.stats.keepalives_answered += 1;
                self.keep_spare(buf)
            }
            Cmd::Padding if b.len >= 1 && first == Some(0) => {
                self.stats.padding_received += 1;
                self.stats.padding_bytes_received += buf.len() as u64;
                self.keep_spare(buf)
            }
            Cmd::RekeyAck if b.len == NK_MSG2_EMPTY => self.on_rekey_ack(now, rng, id, origin, buf),
            Cmd::Truncated if b.len == 1 && origin + 1 < hops => {
                let reason = first.map_or(DestroyReason::Protocol, DestroyReason::from_byte);
                self.stats.truncated += 1;
                self.close(
                    id,
                    DownReason::Truncated {
                        hop: origin,
                        reason,
                    },
                );
                Output::Recycle(buf)
            }
            _ => {
                self.stats.dropped_protocol += 1;
                Output::Recycle(buf)
            }
        }
    }

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
        self.observe(now);
        let Some(&first) = path.first() else {
            return Err(BuildError::PathLength(0));
        };
        let link = self.link_to(now, rng, first);
        self.pace_entry_link(now, link);
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
                full: self.cfg.pace.is_some(),
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
                rekey_after: rekey_after(rng, self.cfg.rekey_jitter),
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
                last_keepalive: now,
                srtt: None,
                padder: self
                    .cfg
                    .adaptive
                    .as_ref()
                    .and_then(|a| Padder::new(a, now, rng))
                    .map(Box::new),
                traffic: Traffic::default(),
            },
        );
        self.schedule_own(id);
        self.send_ctrl(link, CtrlKind::Build, cid, &slots[..]);
        Ok(id)
    }

    /// Sends DATA on a circuit. `buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + len]` holds the
    /// payload (so a caller can read a packet straight into place); the buffer is
    /// resized to the cell and returned in the [`Transmit`], or `None` when the
    /// circuit's link is paced and the cell waits for its slot ([`Node::poll_transmit`]).
    pub fn send_data(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: CircuitId,
        buf: Vec<u8>,
        len: usize,
    ) -> Result<Option<Transmit>, SendError> {
        self.send_cell(now, rng, id, Cmd::Data, buf, len)
    }

    /// Sends a cell of command `cmd` (DATA, JOIN or VDATA: what a client puts into
    /// its circuit for the last hop) on own circuit `id`, laid out as for
    /// [`Node::send_data`].
    pub fn send_cell(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: CircuitId,
        cmd: Cmd,
        buf: Vec<u8>,
        len: usize,
    ) -> Result<Option<Transmit>, SendError> {
        if !matches!(cmd, Cmd::Data | Cmd::Join | Cmd::VData) {
            return Err(SendError::Command(cmd));
        }
        self.observe(now);
        let hops = self.sendable(id, len)?;
        if buf.len() < PAYLOAD_OFFSET + len {
            return Err(SendError::ShortBuffer);
        }
        let target = hops.saturating_sub(1);
        sent(self.send_body(now, rng, id, target, cmd, len, buf))
    }

    /// The number of hops of own circuit `id`, if a payload of `len` bytes may be sent
    /// on it now.
    fn sendable(&self, id: CircuitId, len: usize) -> Result<usize, SendError> {
        if len > MAX_PAYLOAD {
            return Err(SendError::TooLarge(len));
        }
        let own = self.own.get(&id).ok_or(SendError::NoCircuit)?;
        if !own.is_up() {
            return Err(SendError::NotUp);
        }
        if !self.link_has_room(own.first.0) {
            return Err(SendError::Paced);
        }
        Ok(own.hops.len())
    }

    /// Copies `payload` into a fresh buffer and sends it (convenience for tests and
    /// control paths; the data path uses [`Node::send_data`]).
    pub fn send_payload(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: CircuitId,
        payload: &[u8],
    ) -> Result<Option<Transmit>, SendError> {
        let mut buf = vec![0u8; PAYLOAD_OFFSET];
        buf.extend_from_slice(payload);
        self.send_data(now, rng, id, buf, payload.len())
    }

    /// Sends PADDING to hop `hop` of own circuit `id` (0: the entry): `buf` is
    /// reused, the payload is `len` bytes (at least 1: the flags), so the cell has the
    /// size of DATA of `len` bytes. With `echo`, the hop answers with one PADDING of
    /// the same size. Every hop before `hop` relays it like DATA.
    #[allow(clippy::too_many_arguments)]
    pub fn send_padding(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: CircuitId,
        hop: usize,
        len: usize,
        echo: bool,
        mut buf: Vec<u8>,
    ) -> Result<Option<Transmit>, SendError> {
        self.observe(now);
        if hop >= self.sendable(id, len)? {
            return Err(SendError::NoSuchHop(hop));
        }
        let len = len.max(1);
        buf.clear();
        buf.resize(PAYLOAD_OFFSET + len, 0);
        if echo {
            if let Some(flags) = buf.get_mut(PAYLOAD_OFFSET) {
                *flags = PADDING_ECHO;
            }
        }
        let size = wire::CELL_HEADER_LEN + wire::body_size(self.classes(), len);
        let t = sent(self.send_body(now, rng, id, hop, Cmd::Padding, len, buf))?;
        self.stats.padding_sent += 1;
        self.stats.padding_bytes_sent += size as u64;
        Ok(t)
    }

    /// The body size classes of own circuits: the configured ones, or only
    /// `MAX_BODY` when links are paced (one cell size on a constant-rate link).
    fn classes(&self) -> &[usize] {
        if self.cfg.pace.is_some() {
            &[]
        } else {
            &self.cfg.padding
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_cmd(
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
        buf.resize(PAYLOAD_OFFSET, 0);
        buf.extend_from_slice(payload);
        self.send_body(now, rng, id, target, cmd, payload.len(), buf)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn send_body(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: CircuitId,
        target: usize,
        cmd: Cmd,
        len: usize,
        mut buf: Vec<u8>,
    ) -> Output {
        if !frame_body(&mut buf, self.classes(), cmd, len) {
            return Output::Recycle(buf);
        }
        let Some(own) = self.own.get_mut(&id) else {
            return Output::Recycle(buf);
        };
        let Some(mut cell) = Cell::new_checked(&mut buf) else {
            return Output::Recycle(buf);
        };
        let (slots, body) = cell.slots_and_body();
        if onion::wrap_forward(&mut own.keys, target, slots, body, rng).is_none() {
            return Output::Recycle(buf);
        }
        own.last_tx = now;
        let size = buf.len() as u64;
        own.traffic.sent = own.traffic.sent.saturating_add(size);
        if cmd == Cmd::Padding {
            own.traffic.padding_sent = own.traffic.padding_sent.saturating_add(size);
        }
        if let Some(p) = own.padder.as_mut() {
            // A padding's own events come from the padding timer, which knows
            // the machine that sent it.
            if cmd != Cmd::Padding {
                p.normal += 1;
                self.timers
                    .set(Timer::Padding(id), p.on(now, &padding::SENT));
            }
        }
        let (l, c) = own.first;
        self.finish_cell(l, c, buf)
    }

    /// Runs own circuit `id`'s timer: forgets expired keys; ends the circuit if its
    /// build timed out, it went silent or its keys expired; starts due rekeys; sends
    /// a KEEPALIVE when the circuit sent nothing for a keepalive interval, or sent
    /// and heard nothing back for one (a one-way stream hears nothing unless it
    /// asks, and would be declared silent while it works).
    pub(super) fn check_own(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: CircuitId,
    ) {
        let Some(o) = self.own.get_mut(&id) else {
            return;
        };
        for k in &mut o.keys {
            k.forget_expired(now);
        }
        let since = |t: Instant| now.saturating_duration_since(t);
        let down = if !o.is_up() {
            (since(o.created) >= self.cfg.build_timeout).then_some(DownReason::BuildTimeout)
        } else if since(o.last_rx) >= self.cfg.circuit_timeout {
            Some(DownReason::Silent)
        } else if o.keys.iter().any(|k| !k.current.usable(now)) {
            Some(DownReason::KeysExpired)
        } else {
            None
        };
        if let Some(reason) = down {
            self.close(id, reason);
            return;
        }
        if !o.is_up() {
            self.schedule_own(id);
            return;
        }
        let rekey: Vec<(CircuitId, usize)> = o
            .hops
            .iter()
            .zip(&o.keys)
            .enumerate()
            .filter(|(_, (h, k))| {
                k.current.wants_rekey(now, h.rekey_after)
                    && h.rekey_sent.is_none_or(|t| since(t) >= REKEY_TIMEOUT)
            })
            .map(|(j, _)| (id, j))
            .collect();
        let ka = self.cfg.keepalive;
        let idle = since(o.last_tx) >= ka;
        let unanswered = since(o.last_rx) >= ka && since(o.last_keepalive) >= ka;
        let keepalive = idle || unanswered;
        if keepalive {
            o.last_keepalive = now;
        }
        let target = o.hops.len().saturating_sub(1);
        let sent_at = stamp(now, o.created);
        self.start_rekeys(now, rng, &rekey);
        if keepalive {
            let buf = self.spare.pop().unwrap_or_default();
            let out = self.send_cmd(now, rng, id, target, Cmd::Keepalive, &sent_at, buf);
            self.push_output(out);
        }
        self.schedule_own(id);
    }

    /// Sends a KEEPALIVE to the last hop of own circuit `id` now: its answer
    /// refreshes [`Node::last_heard`] and [`Node::rtt`] (a virtual circuit probes its
    /// legs so).
    pub fn probe(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: CircuitId,
    ) -> Result<Option<Transmit>, SendError> {
        self.observe(now);
        let hops = self.sendable(id, STAMP_LEN)?;
        let Some(o) = self.own.get_mut(&id) else {
            return Err(SendError::NoCircuit);
        };
        o.last_keepalive = now;
        let sent_at = stamp(now, o.created);
        let buf = self.spare.pop().unwrap_or_default();
        let target = hops.saturating_sub(1);
        sent(self.send_cmd(now, rng, id, target, Cmd::Keepalive, &sent_at, buf))
    }

    /// The smoothed round trip of own circuit `id` to its last hop, once a KEEPALIVE
    /// was answered.
    #[must_use]
    pub fn rtt(&self, id: CircuitId) -> Option<Duration> {
        self.own.get(&id)?.srtt
    }

    /// When own circuit `id` last received a cell.
    #[must_use]
    pub fn last_heard(&self, id: CircuitId) -> Option<Instant> {
        self.own.get(&id).map(|o| o.last_rx)
    }

    /// Own circuit `id`'s age, newest handshake and traffic.
    #[must_use]
    pub fn own_info(&self, id: CircuitId) -> Option<OwnInfo> {
        let o = self.own.get(&id)?;
        Some(OwnInfo {
            created: o.created,
            last_handshake: o.keys.iter().map(|k| k.current.born).max(),
            traffic: o.traffic,
        })
    }
}

/// Bytes of a KEEPALIVE's payload: its send time, in microseconds since the circuit
/// was created (PROTOCOL §5); the last hop's answer repeats it.
pub(super) const STAMP_LEN: usize = 8;

fn stamp(now: Instant, created: Instant) -> [u8; STAMP_LEN] {
    let us = now.saturating_duration_since(created).as_micros();
    u64::try_from(us).unwrap_or(u64::MAX).to_be_bytes()
}

/// The round trip a KEEPALIVE answer's stamp gives; `None` for a stamp from the
/// future or out of range (a hostile exit can write any).
pub(super) fn round_trip(
    now: Instant,
    created: Instant,
    stamp: [u8; STAMP_LEN],
) -> Option<Duration> {
    let sent = created.checked_add(Duration::from_micros(u64::from_be_bytes(stamp)))?;
    now.checked_duration_since(sent)
}

/// What a public send returns for a cell `send_body` or `originate_body` made: sent
/// now, queued on a paced link, or not sealed (the keys are used up).
pub(super) fn sent(out: Output) -> Result<Option<Transmit>, SendError> {
    match out {
        Output::Transmit(t) => Ok(Some(t)),
        Output::Consumed => Ok(None),
        Output::Recycle(_) => Err(SendError::Exhausted),
    }
}
