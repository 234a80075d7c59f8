//! Links: the encrypted UDP sessions between neighbours, their handshakes
//! (LINK_INIT / LINK_RESP, rekeyed in place) and the handshake budget, and the
//! LINK_CTRL messages (BUILD, BUILT, DESTROY) that ride on them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};

use crate::proto::crypto::{self, kdf, AeadKey, KEY_LEN, TAG_LEN};
use crate::proto::onion;
use crate::proto::replay::ReplayWindow;
use crate::proto::wire::{
    self, Cell, CtrlHeader, CtrlKind, DestroyReason, LinkInitReserved, MsgType, CTRL_INNER_HEADER,
    LINK_CTRL_HEADER, LINK_INIT_MAC1, LINK_INIT_MACED, LINK_INIT_MSG, LINK_INIT_RESERVED,
    LINK_REKEY_PROOF, LINK_RESP_MSG, NK_MSG2_EMPTY,
};

use super::cookie;
use super::mask_header;
use super::pacer::Pacer;
use super::{
    Budget, Deadline, DownReason, Entry, Event, HopSpec, LinkId, Node, NodeConfig, Output, Timer,
    Transmit, LINK_DEAD_AFTER, LINK_PING_EVERY, LINK_PROBE_AFTER, LINK_QUIET, LINK_RETRY,
};

/// Keys of an established link session.
pub(super) struct LinkKeys {
    /// Our receiver index for these keys.
    pub(super) rx: u32,
    /// The peer's receiver index for these keys.
    pub(super) tx: u32,
    /// Proves a later rekey handshake comes from the same initiator.
    pub(super) rekey: [u8; KEY_LEN],
    pub(super) born: Instant,
    pub(super) send_ctrl: AeadKey,
    pub(super) recv_ctrl: AeadKey,
    pub(super) send_mask: [u8; KEY_LEN],
    pub(super) recv_mask: [u8; KEY_LEN],
    pub(super) send_ctr: u64,
    pub(super) window: ReplayWindow,
}

impl LinkKeys {
    pub(super) fn new(
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
    pub(super) fn ctrl_datagram(&self, ctr: u64, kind: u8, cid: u32, body: &[u8]) -> Vec<u8> {
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
    pub(super) fn proof(&self, rx: u32) -> [u8; LINK_REKEY_PROOF] {
        let mut p = [0u8; LINK_REKEY_PROOF];
        p.copy_from_slice(&kdf(&self.rekey, &rx.to_be_bytes())[..LINK_REKEY_PROOF]);
        p
    }
}

pub(super) struct PendingInit {
    pub(super) hs: snow::HandshakeState,
    pub(super) rx: u32,
    /// mac1 of the LINK_INIT sent: the AD of a COOKIE_REPLY to it.
    pub(super) mac1: [u8; crypto::MAC_LEN],
    pub(super) started: Instant,
    pub(super) last_sent: Instant,
}

pub(super) struct Link {
    pub(super) peer: SocketAddr,
    pub(super) local: Option<SocketAddr>,
    /// The peer's static key if this node initiated the link.
    pub(super) peer_key: Option<[u8; KEY_LEN]>,
    /// Keys in use.
    pub(super) keys: Option<LinkKeys>,
    /// Keys replaced by a rekey, still accepted until they expire.
    pub(super) previous: Option<LinkKeys>,
    /// Responder: keys from a rekey, used once the initiator sends under them.
    pub(super) next: Option<LinkKeys>,
    pub(super) pending: Option<PendingInit>,
    /// Initiator: the last cookie the peer sent, and when (for mac2).
    pub(super) cookie: Option<([u8; crypto::MAC_LEN], Instant)>,
    pub(super) queue: Vec<(CtrlKind, u32, Vec<u8>)>,
    /// Circuits on this link, either side.
    pub(super) circuits: usize,
    /// Relayed circuits this link brought (it is their previous hop): its share of
    /// the circuit table.
    pub(super) relayed_in: usize,
    /// When the link was last heard from or its last circuit left: the start of
    /// its idle time.
    pub(super) last_used: Instant,
    /// Liveness: the first and the last send after the peer was last heard.
    pub(super) unheard: Option<(Instant, Instant)>,
    /// The last PING of this silence.
    pub(super) pinged: Option<Instant>,
    /// When the peer was last heard.
    pub(super) last_heard: Instant,
    /// The link's constant-rate schedule, when it is paced.
    pub(super) pace: Option<Pacer>,
}

impl Link {
    /// The peer answered: something authenticated came from it.
    pub(super) fn heard(&mut self, now: Instant) {
        self.unheard = None;
        self.pinged = None;
        self.last_heard = now;
    }

    /// Something that wants an answer went out on the link. True when the link has
    /// just started asking (sending for [`LINK_PROBE_AFTER`] without hearing back):
    /// its timer must then run at once to send a PING.
    pub(super) fn sent(&mut self, now: Instant) -> bool {
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
    pub(super) fn asking(&self) -> bool {
        self.pinged.is_none()
            && self.unheard.is_some_and(|(first, last)| {
                last.saturating_duration_since(first) >= LINK_PROBE_AFTER
            })
    }

    /// When the link's timer next has something to do (see `Node::check_link`).
    pub(super) fn deadline(&self, cfg: &NodeConfig) -> Option<Instant> {
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
                at.add(self.last_used + idle_after(self, cfg.idle_timeout));
            }
        }
        if let Some(k) = &self.previous {
            at.add(k.born + onion::REJECT_AFTER_TIME);
        }
        at.0
    }
}

impl Node {
    /// Starts (or restarts) the link handshake; on a link that has keys, a rekey.
    pub(super) fn send_link_init(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: LinkId,
    ) {
        let rx = self.new_index(rng);
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let Some(key) = link.peer_key else { return };
        let reserved = link.keys.as_ref().map_or([0u8; LINK_INIT_RESERVED], |k| {
            LinkInitReserved {
                replaces: k.tx,
                proof: k.proof(rx),
            }
            .emit()
        });
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
        let mac1_key = crypto::mac1_key(&key);
        let cookie = link
            .cookie
            .filter(|&(_, got)| now.saturating_duration_since(got) < cookie::COOKIE_USE);
        let buf = wire::emit_link_init(
            rx,
            &msg,
            |covered| crypto::mac(&mac1_key, covered),
            |covered| cookie.map(|(c, _)| crypto::mac(&c, covered)),
        );
        let mac1 = buf
            .get(LINK_INIT_MAC1)
            .and_then(|m| m.try_into().ok())
            .unwrap_or_default();
        link.pending = Some(PendingInit {
            hs,
            rx,
            mac1,
            started,
            last_sent: now,
        });
        self.emit(id, buf);
    }

    /// The link this node initiated to `addr`/`key`, created (and its handshake
    /// started) if needed, also in place of one whose peer has been quiet for
    /// [`LINK_QUIET`].
    pub(super) fn link_to(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        spec: HopSpec,
    ) -> LinkId {
        if let Some(&id) = self.out_links.get(&(spec.addr, spec.key)) {
            let quiet = self.links.get(&id).is_some_and(|l| {
                l.keys.is_some() && now.saturating_duration_since(l.last_heard) >= LINK_QUIET
            });
            if !quiet {
                return id;
            }
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
                cookie: None,
                queue: Vec::new(),
                circuits: 0,
                relayed_in: 0,
                last_used: now,
                unheard: None,
                pinged: None,
                last_heard: now,
                pace: None,
            },
        );
        self.send_link_init(now, rng, id);
        self.schedule_link(id);
        id
    }

    pub(super) fn remove_link(&mut self, id: LinkId) {
        self.timers.set(Timer::Link(id), None);
        self.timers.set(Timer::Pace(id), None);
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
                // A quiet link replaced by a new one no longer holds the entry.
                if self.out_links.get(&(link.peer, key)) == Some(&id) {
                    self.out_links.remove(&(link.peer, key));
                }
            }
        }
    }

    /// Sends (or queues until the link is up) a link control message.
    pub(super) fn send_ctrl(&mut self, link_id: LinkId, kind: CtrlKind, cid: u32, body: &[u8]) {
        let now = self.now();
        let Some(link) = self.links.get_mut(&link_id) else {
            return;
        };
        let Some(keys) = link.keys.as_mut() else {
            link.queue.push((kind, cid, body.to_vec()));
            return;
        };
        let buf = keys.ctrl_datagram(keys.send_ctr, kind as u8, cid, body);
        keys.send_ctr += 1;
        // Neither a PONG nor a PACE wants an answer (else two idle ends would probe
        // each other forever).
        let asking = !matches!(kind, CtrlKind::Pong | CtrlKind::Pace)
            && now.is_some_and(|now| link.sent(now));
        self.emit(link_id, buf);
        if asking {
            self.schedule_link(link_id);
        }
    }

    /// Finishes a cell for `link_id`: header index, cid, mask. A paced link queues
    /// it for a slot ([`Output::Consumed`]); it is dropped when the link is not up
    /// (cells never wait for a handshake) or its pace queue is full.
    pub(super) fn finish_cell(&mut self, link_id: LinkId, cid: u32, mut buf: Vec<u8>) -> Output {
        let now = self.now();
        let Some(link) = self.links.get_mut(&link_id) else {
            return Output::Recycle(buf);
        };
        let Some(keys) = link.keys.as_ref() else {
            return Output::Recycle(buf);
        };
        let Some(mut cell) = Cell::new_checked(&mut buf) else {
            return Output::Recycle(buf);
        };
        cell.set_address(keys.tx, cid);
        mask_header(&keys.send_mask, &mut cell);
        let (src, dst, paced) = (link.local, link.peer, link.pace.is_some());
        if now.is_some_and(|now| link.sent(now)) {
            self.schedule_link(link_id);
        }
        if paced {
            return match self.pace_cell(link_id, buf) {
                Ok(()) => Output::Consumed,
                Err(buf) => Output::Recycle(buf),
            };
        }
        Output::Transmit(Transmit { src, dst, buf })
    }

    pub(super) fn on_link_init(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        local: Option<SocketAddr>,
        remote: SocketAddr,
        sender: u32,
        buf: &[u8],
    ) {
        let (Some(sk), Some(mac1_key)) = (self.cfg.static_key, self.mac1_key) else {
            self.stats.dropped_protocol += 1;
            return;
        };
        // The MAC first: junk and senders that do not know this gateway's key cost
        // one BLAKE2s, never a handshake token.
        let (Some(covered), Some(mac1)) = (buf.get(LINK_INIT_MACED), buf.get(LINK_INIT_MAC1))
        else {
            self.stats.dropped_malformed += 1;
            return;
        };
        if !crypto::mac_verify(&mac1_key, covered, mac1) {
            self.stats.dropped_mac += 1;
            return;
        }
        if self.under_load(now) && !self.admit_under_load(now, rng, local, remote, sender, buf) {
            return;
        }
        if !self.take_token(now, Budget::Link) {
            return;
        }
        let Some(msg1) = buf.get(LINK_INIT_MSG) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let mut hs = crypto::noise_responder(rng, &sk);
        let mut payload = [0u8; 64];
        if hs.read_message(msg1, &mut payload).is_err() {
            self.stats.dropped_auth += 1;
            return;
        }
        // A rekey names the link it replaces and proves it knows that link's keys.
        let Ok(reserved) = LinkInitReserved::parse(&payload) else {
            self.stats.dropped_protocol += 1;
            return;
        };
        let prev = reserved.replaces;
        let rekeyed = if prev == 0 {
            None
        } else {
            let link = self
                .by_index
                .get(&prev)
                .and_then(|id| Some((*id, self.links.get(id)?)));
            let proven = link.filter(|(_, l)| {
                l.peer_key.is_none()
                    && l.keys
                        .as_ref()
                        .is_some_and(|k| k.rx == prev && k.proof(sender) == reserved.proof)
            });
            let Some((id, _)) = proven else {
                self.stats.dropped_auth += 1;
                return;
            };
            Some(id)
        };
        if !self.remember_handshake(now, msg1) {
            return;
        }
        let mut msg = [0u8; NK_MSG2_EMPTY];
        if hs.write_message(&[], &mut msg).is_err() {
            return;
        }
        let rx = self.new_index(rng);
        let keys = LinkKeys::new(crypto::split(&mut hs), false, (rx, sender), now);
        let resp = Transmit {
            src: local,
            dst: remote,
            buf: wire::emit_link_resp(rx, sender, &msg),
        };
        if let Some(id) = rekeyed {
            if let Some(link) = self.links.get_mut(&id) {
                if let Some(old) = link.next.replace(keys) {
                    self.by_index.remove(&old.rx);
                }
                self.by_index.insert(rx, id);
                self.stats.link_rekeys += 1;
                if link.pace.is_some() {
                    self.emit(id, resp.buf);
                } else {
                    self.transmits.push_back(resp);
                }
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
                cookie: None,
                queue: Vec::new(),
                circuits: 0,
                relayed_in: 0,
                last_used: now,
                unheard: None,
                pinged: None,
                last_heard: now,
                pace: None,
            },
        );
        self.schedule_link(id);
        self.transmits.push_back(resp);
    }

    pub(super) fn on_link_resp(&mut self, now: Instant, sender: u32, rx: u32, buf: &[u8]) {
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
        let msg2 = buf.get(LINK_RESP_MSG).unwrap_or_default();
        if p.hs.read_message(msg2, &mut payload).is_err() {
            link.pending = Some(p);
            self.stats.dropped_auth += 1;
            return;
        }
        let keys = LinkKeys::new(crypto::split(&mut p.hs), true, (rx, sender), now);
        link.last_used = now;
        link.heard(now);
        if let Some(old) = link.keys.replace(keys) {
            if let Some(gone) = link.previous.replace(old) {
                self.by_index.remove(&gone.rx);
            }
            self.stats.link_rekeys += 1;
        }
        for (kind, cid, body) in std::mem::take(&mut link.queue) {
            self.send_ctrl(id, kind, cid, &body);
        }
        // No retransmission is due any more.
        self.schedule_link(id);
    }

    /// The link and receive keys for a LINK_CTRL or CELL, by receiver index. A
    /// responder's first message under rekeyed keys makes them current.
    pub(super) fn recv_keys(&mut self, rx: u32) -> Option<(LinkId, &mut LinkKeys)> {
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

    pub(super) fn on_link_ctrl(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        receiver: u32,
        ctr: u64,
        buf: &mut [u8],
    ) {
        let Some((link_id, keys)) = self.recv_keys(receiver) else {
            return;
        };
        if !keys.window.check(ctr) {
            self.stats.dropped_replay += 1;
            return;
        }
        let Some((head, rest, tag)) = buf
            .split_last_chunk_mut::<TAG_LEN>()
            .and_then(|(data, tag)| Some((data.split_at_mut_checked(LINK_CTRL_HEADER)?, *tag)))
            .map(|((head, rest), tag)| (head, rest, tag))
        else {
            self.stats.dropped_malformed += 1;
            return;
        };
        if !keys.recv_ctrl.open(ctr, head, rest, &tag) {
            self.stats.dropped_auth += 1;
            return;
        }
        if !keys.window.update(ctr) {
            self.stats.dropped_replay += 1;
            return;
        }
        let Ok(CtrlHeader { kind, circuit: cid }) = CtrlHeader::parse(rest) else {
            self.stats.dropped_protocol += 1;
            return;
        };
        if let Some(l) = self.links.get_mut(&link_id) {
            l.last_used = now;
            l.heard(now);
        }
        // CtrlHeader::parse checked the body's exact size for its kind, so these
        // views always match.
        let body = rest.get_mut(CTRL_INNER_HEADER..).unwrap_or_default();
        match kind {
            CtrlKind::Build => match body.try_into() {
                Ok(slots) => self.on_build(now, rng, link_id, cid, slots),
                Err(_) => self.stats.dropped_malformed += 1,
            },
            CtrlKind::Built => match body.try_into() {
                Ok(slots) => self.on_built(now, link_id, cid, slots),
                Err(_) => self.stats.dropped_malformed += 1,
            },
            CtrlKind::Destroy => match body {
                [reason] => self.on_destroy(link_id, cid, DestroyReason::from_byte(*reason)),
                _ => self.stats.dropped_malformed += 1,
            },
            CtrlKind::Ping => {
                self.stats.pings_answered += 1;
                self.send_ctrl(link_id, CtrlKind::Pong, 0, &[0]);
            }
            CtrlKind::Pong => self.stats.pongs_received += 1,
            CtrlKind::Pace => match body {
                [a, b, c, d] => self.on_pace(now, link_id, u32::from_be_bytes([*a, *b, *c, *d])),
                _ => self.stats.dropped_malformed += 1,
            },
            CtrlKind::Close => {
                self.stats.links_closed += 1;
                self.fail_link(
                    now,
                    link_id,
                    DestroyReason::Unreachable,
                    DownReason::EntryLeft,
                );
            }
        }
    }

    pub(super) fn on_destroy(&mut self, link_id: LinkId, cid: u32, reason: DestroyReason) {
        match self.circuits.get(&(link_id, cid)).copied() {
            Some(Entry::RelayPrev(id) | Entry::RelayNext(id)) => {
                self.stats.destroys_received += 1;
                self.drop_relay(id, reason, Some(link_id));
            }
            Some(Entry::Own(id)) => {
                self.stats.destroys_received += 1;
                self.forget_own(id);
                self.events
                    .push_back(Event::CircuitDown(id, DownReason::Destroyed(reason)));
            }
            None => self.stats.dropped_unknown_circuit += 1,
        }
    }

    /// Runs link `id`'s timer: liveness probes and death, handshake retransmission
    /// and timeout, rekey, expiry of old keys, and the end of an idle link.
    pub(super) fn check_link(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: LinkId,
    ) {
        let since = |t: Instant| now.saturating_duration_since(t);
        let build_timeout = self.cfg.build_timeout;
        let idle_timeout = self.cfg.idle_timeout;
        let Some(l) = self.links.get_mut(&id) else {
            return;
        };
        let keys_age = l.keys.as_ref().map(|k| since(k.born));
        // Liveness: a link that keeps sending and hears nothing back probes, then dies.
        let mut ping = false;
        if let (Some((first, _)), Some(_)) = (l.unheard, &l.keys) {
            if l.pinged.is_some() && since(first) >= LINK_DEAD_AFTER {
                self.stats.links_dead += 1;
                self.fail_link(now, id, DestroyReason::Unreachable, DownReason::LinkDead);
                return;
            }
            if (l.asking() || l.pinged.is_some())
                && l.pinged.is_none_or(|p| since(p) >= LINK_PING_EVERY)
            {
                l.pinged = Some(now);
                ping = true;
            }
        }
        if l.previous
            .as_ref()
            .is_some_and(|k| since(k.born) >= onion::REJECT_AFTER_TIME)
        {
            if let Some(old) = l.previous.take() {
                self.by_index.remove(&old.rx);
            }
        }
        let Some(l) = self.links.get(&id) else {
            return;
        };
        let mut init = false;
        if keys_age.is_some_and(|a| a >= onion::REJECT_AFTER_TIME) {
            let why = DownReason::Destroyed(DestroyReason::Timeout);
            self.fail_link(now, id, DestroyReason::Timeout, why);
            return;
        } else if let Some(p) = &l.pending {
            if keys_age.is_none() && since(p.started) >= build_timeout {
                self.fail_link(
                    now,
                    id,
                    DestroyReason::Unreachable,
                    DownReason::EntryUnanswered,
                );
                return;
            }
            init = since(p.last_sent) >= LINK_RETRY;
        } else if l.peer_key.is_some() && keys_age.is_some_and(|a| a >= onion::REKEY_AFTER_TIME) {
            init = true;
        } else if l.circuits == 0 && since(l.last_used) >= idle_after(l, idle_timeout) {
            self.remove_link(id);
            return;
        }
        if init {
            self.send_link_init(now, rng, id);
        }
        if ping {
            self.send_ctrl(id, CtrlKind::Ping, 0, &[0]);
        }
        self.schedule_link(id);
    }

    /// A circuit left link `id`: when it was the last one, the link's idle time
    /// starts now.
    pub(super) fn circuit_left(&mut self, id: LinkId) {
        let now = self.now();
        let Some(l) = self.links.get_mut(&id) else {
            return;
        };
        l.circuits = l.circuits.saturating_sub(1);
        if l.circuits == 0 {
            if let Some(now) = now {
                l.last_used = l.last_used.max(now);
            }
            self.schedule_link(id);
        }
    }

    /// Removes a link that failed (or that its peer closed) with its circuits:
    /// relayed ones get DESTROY for `reason` on their other side (after a TRUNCATED
    /// to their client when the link was their next hop's), own ones go down for
    /// `why`.
    fn fail_link(&mut self, now: Instant, id: LinkId, reason: DestroyReason, why: DownReason) {
        let affected: Vec<Entry> = self
            .circuits
            .iter()
            .filter(|(k, _)| k.0 == id)
            .map(|(_, e)| *e)
            .collect();
        self.remove_link(id);
        for e in affected {
            match e {
                Entry::RelayNext(r) => {
                    self.truncate(now, r, reason);
                    self.drop_relay(r, reason, Some(id));
                }
                Entry::RelayPrev(r) => self.drop_relay(r, reason, Some(id)),
                Entry::Own(c) => {
                    self.forget_own(c);
                    self.events.push_back(Event::CircuitDown(c, why));
                }
            }
        }
    }

    /// Tells every peer this node is stopping (CLOSE on each link that is up, after
    /// what a paced link still had waiting), so that they end its links and
    /// circuits at once instead of finding it dead.
    pub fn shutdown(&mut self) {
        let up: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, l)| l.keys.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in up {
            // A paced link ends here: what waits for a slot, and the CLOSE, go out
            // now (a daemon that stops does not wait for the next slots).
            self.stop_pacing(id);
            self.send_ctrl(id, CtrlKind::Close, 0, &[0]);
        }
    }
}

/// How long an unused link lives. The initiator decides: it drops the link after
/// `idle_timeout`, and the responder keeps it twice as long, so a link the initiator
/// still takes for up is never already gone at the responder (whose BUILDs would
/// vanish there as an unknown index). The two sides' timers start at the later of the
/// last control message each heard and the tick its last circuit left, which differ by
/// a tick and the time one DESTROY takes between them.
pub(super) fn idle_after(link: &Link, idle_timeout: Duration) -> Duration {
    if link.peer_key.is_some() {
        idle_timeout
    } else {
        idle_timeout * 2
    }
}
