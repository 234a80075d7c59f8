//! Relayed circuits: what a gateway does for others. BUILD creates a relay entry
//! (and forwards the rest of the build), cells are peeled forward and wrapped
//! backward in place, and the terminal hop hands service data (exit, directory,
//! echo) to the driver or answers it.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand_core::{CryptoRng, RngCore};

use crate::proto::bucket::TokenBucket;
use crate::proto::crypto::{self, KEY_LEN};
use crate::proto::onion::{self, Generation, HopKeys, Side};
use crate::proto::wire::{
    self, Body, BuildPayload, Cell, Cmd, CtrlKind, DestroyReason, Service, BUILD_LEN,
    BUILD_PAYLOAD_LEN, BUILD_SLOT_LEN, CTR_FLAG, MAX_PAYLOAD, NK_MSG1_EMPTY, PADDING_ECHO,
    PAYLOAD_OFFSET, REPLY_PAYLOAD_LEN, REPLY_SLOT_LEN,
};

use super::circuit::sent;
use super::frame_body;
use super::{
    Budget, CircuitId, Deadline, Entry, Event, HopSpec, LinkId, Node, NodeConfig, Output, RelayId,
    SendError, Timer, Transmit,
};

/// Default `padding_rate`: 1,250,000 bytes per second (10 Mbit/s) of echoed
/// PADDING, all circuits together; a second's worth may go at once.
pub const PADDING_RATE: u32 = 1_250_000;
/// Default `padding_share`: echoes are at most half of the datagrams the gateway
/// received, so they never dominate its traffic.
pub const PADDING_SHARE: u8 = 50;

pub(super) struct Relay {
    pub(super) prev: (LinkId, u32),
    pub(super) next: Option<(LinkId, u32)>,
    pub(super) service: Service,
    pub(super) keys: HopKeys,
    pub(super) kb: [u8; KEY_LEN],
    /// Backward cells this hop originates are full-size (the client paces its
    /// links: BUILD flag FULL).
    pub(super) full: bool,
    /// This hop's BUILT reply slot, held until the next hop's BUILT arrives.
    pub(super) reply: Option<[u8; REPLY_SLOT_LEN]>,
    pub(super) created: Instant,
    pub(super) last_fwd: Instant,
    pub(super) last_bwd: Instant,
}

impl Relay {
    /// When the relay's timer next has something to do (see `Node::check_relay`).
    pub(super) fn deadline(&self, cfg: &NodeConfig) -> Option<Instant> {
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

impl Node {
    pub(super) fn on_build(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        link_id: LinkId,
        cid: u32,
        slots: &mut [u8; BUILD_LEN],
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
        if !self.take_token(now, Budget::Build) {
            return;
        }
        // A full table refuses before the Diffie-Hellman when this link could not
        // evict (it is among the largest); eviction waits for a verified BUILD.
        if self.relays.len() >= self.cfg.max_circuits && !self.may_evict_for(link_id) {
            self.refuse(link_id, cid, DestroyReason::Unreachable);
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
        if !self.remember_handshake(now, slots) {
            return;
        }
        let Ok(payload) = BuildPayload::parse(&p[..BUILD_PAYLOAD_LEN]) else {
            self.stats.dropped_protocol += 1;
            return;
        };
        let from_loopback = self
            .links
            .get(&link_id)
            .is_some_and(|l| l.peer.ip().to_canonical().is_loopback());
        let bad_next = payload
            .next
            .is_some_and(|(addr, _)| !next_hop_allowed(addr, &self.cfg.own_addrs, from_loopback));
        if bad_next
            || (payload.service == Service::Exit && !self.cfg.exit)
            || (payload.service == Service::Directory && !self.cfg.directory)
            || (payload.service == Service::Echo && !self.cfg.echo)
        {
            self.refuse(link_id, cid, DestroyReason::Protocol);
            return;
        }
        if self.relays.len() >= self.cfg.max_circuits && !self.evict_for(link_id) {
            self.refuse(link_id, cid, DestroyReason::Unreachable);
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
            full: payload.full,
            reply: None,
            created: now,
            last_fwd: now,
            last_bwd: now,
        };
        self.stats.circuits_accepted += 1;
        self.circuits.insert((link_id, cid), Entry::RelayPrev(id));
        if let Some(l) = self.links.get_mut(&link_id) {
            l.circuits += 1;
            l.relayed_in += 1;
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
            self.schedule_relay(id);
            self.send_ctrl(next_link, CtrlKind::Build, ncid, slots);
        } else {
            let built = onion::terminal_built(&reply, &payload.kb);
            self.relays.insert(id, Box::new(relay));
            self.schedule_relay(id);
            self.send_ctrl(link_id, CtrlKind::Built, cid, &built);
        }
    }

    /// Refuses a BUILD: DESTROY back with `reason`, counted.
    fn refuse(&mut self, link: LinkId, cid: u32, reason: DestroyReason) {
        self.stats.circuits_refused += 1;
        self.send_ctrl(link, CtrlKind::Destroy, cid, &[reason as u8]);
    }

    /// The link that brought the most relayed circuits, if it holds at least two more
    /// than `link` (so evicting one of them for `link` leaves it no smaller).
    fn larger_link_than(&self, link: LinkId) -> Option<LinkId> {
        let mine = self.links.get(&link).map_or(0, |l| l.relayed_in);
        let (&hog, held) = self
            .links
            .iter()
            .map(|(id, l)| (id, l.relayed_in))
            .max_by_key(|&(_, n)| n)?;
        (held >= mine + 2).then_some(hog)
    }

    fn may_evict_for(&self, link: LinkId) -> bool {
        self.larger_link_than(link).is_some()
    }

    /// The circuit table is full and `link` asks for one more: frees a circuit of the
    /// link that brought the most (as their previous hop), if that link holds at least
    /// two more than `link`, so that no link keeps the others out; false if none is
    /// freed (then `link` is among the largest and is refused).
    fn evict_for(&mut self, link: LinkId) -> bool {
        let Some(hog) = self.larger_link_than(link) else {
            return false;
        };
        let victim = self
            .circuits
            .range((hog, 0)..=(hog, u32::MAX))
            .find_map(|(_, e)| match e {
                Entry::RelayPrev(id) => Some(*id),
                _ => None,
            });
        let Some(victim) = victim else {
            return false;
        };
        self.drop_relay(victim, DestroyReason::Unreachable, None);
        self.stats.circuits_evicted += 1;
        true
    }

    /// Frees a relayed circuit and sends DESTROY on each side except `from`.
    pub(super) fn drop_relay(&mut self, id: RelayId, reason: DestroyReason, from: Option<LinkId>) {
        let Some(r) = self.relays.remove(&id) else {
            return;
        };
        self.timers.set(Timer::Relay(id), None);
        if matches!(r.service, Service::Exit | Service::Directory) && r.next.is_none() {
            self.events
                .push_back(Event::ServiceClosed(CircuitId(id), r.service));
        }
        if let Some(l) = self.links.get_mut(&r.prev.0) {
            l.relayed_in = l.relayed_in.saturating_sub(1);
        }
        for side in std::iter::once(r.prev).chain(r.next) {
            self.circuits.remove(&side);
            self.circuit_left(side.0);
            if Some(side.0) != from {
                self.send_ctrl(side.0, CtrlKind::Destroy, side.1, &[reason as u8]);
            }
        }
    }

    pub(super) fn cell_forward(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: RelayId,
        mut buf: Vec<u8>,
    ) -> Output {
        let Some(r) = self.relays.get_mut(&id) else {
            return Output::Recycle(buf);
        };
        let Some(mut cell) = Cell::new_checked(&mut buf) else {
            self.stats.dropped_malformed += 1;
            return Output::Recycle(buf);
        };
        let (slots, body) = cell.slots_and_body();
        let (ctr, tag) = onion::read_slot0(slots);
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
        onion::shift_out(cell.slots_mut(), &ks);
        self.stats.relayed_forward += 1;
        self.finish_cell(nl, nc, buf)
    }

    /// A cell addressed to this hop (TERMINAL), already opened in `buf`.
    pub(super) fn terminal(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: RelayId,
        mut buf: Vec<u8>,
    ) -> Output {
        let Some(Ok(body)) = Cell::new_checked(&mut buf).map(|c| Body::parse(c.body())) else {
            self.stats.dropped_protocol += 1;
            return Output::Recycle(buf);
        };
        let Some(r) = self.relays.get_mut(&id) else {
            return Output::Recycle(buf);
        };
        match body.cmd {
            Cmd::Keepalive => {}
            Cmd::Data if r.service == Service::Echo => {}
            Cmd::Data | Cmd::Join | Cmd::VData
                if r.service == Service::Exit
                    || (r.service == Service::Directory && body.cmd == Cmd::Data) =>
            {
                self.events.push_back(Event::ServiceData {
                    circuit: CircuitId(id),
                    service: r.service,
                    cmd: body.cmd,
                    buf,
                    range: wire::payload_range(body.len),
                });
                return Output::Consumed;
            }
            Cmd::Rekey if body.len == NK_MSG1_EMPTY => {
                if !self.answer_rekey(now, rng, id, &mut buf) {
                    return Output::Recycle(buf);
                }
            }
            Cmd::Padding => return self.on_padding(now, id, body.len, buf),
            _ => {
                self.stats.dropped_protocol += 1;
                return Output::Recycle(buf);
            }
        }
        // Answer in the same buffer: KEEPALIVE and echoed DATA go back unchanged.
        self.originate(now, id, buf)
    }

    /// A PADDING addressed to this hop: dropped, or with [`PADDING_ECHO`] answered
    /// with one PADDING of the same payload length (in the same buffer). A flags byte
    /// with any other bit set is a protocol error.
    fn on_padding(&mut self, now: Instant, id: RelayId, len: usize, mut buf: Vec<u8>) -> Output {
        let mut cell = Cell::new_checked(&mut buf);
        let flags = cell.as_mut().and_then(|c| c.payload_mut(len)?.first_mut());
        let echo = match flags {
            Some(f) if *f == 0 => false,
            Some(f) if *f == PADDING_ECHO => {
                *f = 0;
                true
            }
            _ => {
                self.stats.dropped_protocol += 1;
                return Output::Recycle(buf);
            }
        };
        self.stats.padding_received += 1;
        self.stats.padding_bytes_received += buf.len() as u64;
        if !echo {
            return Output::Recycle(buf);
        }
        if !self.echo_allowed(now, buf.len()) {
            self.stats.padding_refused += 1;
            return Output::Recycle(buf);
        }
        let out = self.originate(now, id, buf);
        if let Output::Transmit(t) = &out {
            self.stats.padding_sent += 1;
            self.stats.padding_echoed += 1;
            self.stats.padding_bytes_sent += t.buf.len() as u64;
        }
        out
    }

    /// Whether this gateway's padding budget has room for one more echo of `bytes`
    /// (its `padding_share` of what it received, then its `padding_rate`), taken
    /// if so. The echo is as long as the request.
    fn echo_allowed(&mut self, now: Instant, bytes: usize) -> bool {
        let share = u64::from(self.cfg.padding_share);
        let echoed = self.stats.padding_echoed.saturating_add(1);
        if echoed.saturating_mul(100) > share.saturating_mul(self.stats.rx_datagrams) {
            return false;
        }
        let rate = self.cfg.padding_rate;
        let bucket = self
            .echo_bucket
            .get_or_insert_with(|| TokenBucket::new(rate, rate, now));
        bucket.take_n(now, u32::try_from(bytes).unwrap_or(u32::MAX))
    }

    /// Seals `buf`'s body as a backward cell originating at this hop and sends it.
    pub(super) fn originate(&mut self, now: Instant, id: RelayId, mut buf: Vec<u8>) -> Output {
        let Some(r) = self.relays.get_mut(&id) else {
            return Output::Recycle(buf);
        };
        if !r.keys.current.usable(now) {
            self.stats.dropped_expired += 1;
            return Output::Recycle(buf);
        }
        let Some(mut cell) = Cell::new_checked(&mut buf) else {
            return Output::Recycle(buf);
        };
        let Some(own) = r.keys.current.seal(true, cell.body_mut()) else {
            return Output::Recycle(buf);
        };
        let (ctr, _) = onion::read_slot0(&own);
        let ks = r.keys.current.seal_keystream(ctr);
        onion::originate(cell.slots_mut(), &ks, &own);
        let (pl, pc) = r.prev;
        self.finish_cell(pl, pc, buf)
    }

    pub(super) fn cell_backward(&mut self, now: Instant, id: RelayId, mut buf: Vec<u8>) -> Output {
        let Some(r) = self.relays.get_mut(&id) else {
            return Output::Recycle(buf);
        };
        if !r.keys.current.usable(now) {
            self.stats.dropped_expired += 1;
            return Output::Recycle(buf);
        }
        let Some(mut cell) = Cell::new_checked(&mut buf) else {
            self.stats.dropped_malformed += 1;
            return Output::Recycle(buf);
        };
        let Some(own) = r.keys.current.seal(false, cell.body_mut()) else {
            return Output::Recycle(buf);
        };
        let (ctr, _) = onion::read_slot0(&own);
        let ks = r.keys.current.seal_keystream(ctr);
        onion::push_in(cell.slots_mut(), &ks, &own);
        r.last_bwd = now;
        let (pl, pc) = r.prev;
        self.stats.relayed_backward += 1;
        self.finish_cell(pl, pc, buf)
    }

    /// Sends DATA backward to the client of a circuit whose service this gateway
    /// provides (the circuit of an [`Event::ServiceData`]). The payload is laid out as for
    /// [`Node::send_data`].
    pub fn send_backward(
        &mut self,
        now: Instant,
        id: CircuitId,
        buf: Vec<u8>,
        len: usize,
    ) -> Result<Option<Transmit>, SendError> {
        self.send_backward_cell(now, id, Cmd::Data, buf, len)
    }

    /// Sends a cell of command `cmd` backward, as [`Node::send_backward`]: DATA, or
    /// JOINED or VDATA on an exit circuit.
    pub fn send_backward_cell(
        &mut self,
        now: Instant,
        id: CircuitId,
        cmd: Cmd,
        buf: Vec<u8>,
        len: usize,
    ) -> Result<Option<Transmit>, SendError> {
        if !matches!(cmd, Cmd::Data | Cmd::Joined | Cmd::VData) {
            return Err(SendError::Command(cmd));
        }
        self.observe(now);
        if len > MAX_PAYLOAD {
            return Err(SendError::TooLarge(len));
        }
        if buf.len() < PAYLOAD_OFFSET + len {
            return Err(SendError::ShortBuffer);
        }
        let r = self.relays.get(&id.0).ok_or(SendError::NoCircuit)?;
        let serves =
            r.service == Service::Exit || (r.service == Service::Directory && cmd == Cmd::Data);
        if !serves || r.next.is_some() {
            return Err(SendError::NoCircuit);
        }
        if !self.link_has_room(r.prev.0) {
            return Err(SendError::Paced);
        }
        sent(self.originate_body(now, id.0, cmd, len, buf))
    }

    /// When a circuit this gateway relays or terminates last received a cell from
    /// its client's side (KEEPALIVEs included).
    #[must_use]
    pub fn last_forward(&self, id: CircuitId) -> Option<Instant> {
        self.relays.get(&id.0).map(|r| r.last_fwd)
    }

    /// Ends a circuit this gateway terminates for a service, whose client broke the
    /// service's protocol (a refused JOIN): DESTROY backward (reason protocol) and
    /// [`Event::ServiceClosed`]. Counted in `dropped_protocol`.
    pub fn destroy_service(&mut self, id: CircuitId) {
        let serves = self
            .relays
            .get(&id.0)
            .is_some_and(|r| r.next.is_none() && r.service != Service::Relay);
        if serves {
            self.stats.dropped_protocol += 1;
            self.drop_relay(id.0, DestroyReason::Protocol, None);
        }
    }

    /// Tells the client of relayed circuit `id`, whose next hop's link died, that
    /// this hop lost it (TRUNCATED, then DESTROY follows): so the client knows which
    /// gateway to blame.
    pub(super) fn truncate(&mut self, now: Instant, id: RelayId, reason: DestroyReason) {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.resize(PAYLOAD_OFFSET, 0);
        buf.push(reason as u8);
        self.stats.truncated += 1;
        let out = self.originate_body(now, id, Cmd::Truncated, 1, buf);
        self.push_output(out);
    }

    /// Frames the body ([`frame_body`]) and originates the cell backward.
    pub(super) fn originate_body(
        &mut self,
        now: Instant,
        id: RelayId,
        cmd: Cmd,
        len: usize,
        mut buf: Vec<u8>,
    ) -> Output {
        let full = self.relays.get(&id).is_some_and(|r| r.full);
        let classes = if full { &[][..] } else { &self.cfg.padding };
        if !frame_body(&mut buf, classes, cmd, len) {
            return Output::Recycle(buf);
        }
        self.originate(now, id, buf)
    }

    /// Runs relayed circuit `id`'s timer: forgets expired keys, and ends the
    /// circuit if its build timed out, it went idle or its keys expired.
    pub(super) fn check_relay(&mut self, now: Instant, id: RelayId) {
        let Some(r) = self.relays.get_mut(&id) else {
            return;
        };
        r.keys.forget_expired(now);
        let since = |t: Instant| now.saturating_duration_since(t);
        let idle = self.cfg.idle_timeout;
        if r.reply.is_some() && since(r.created) >= self.cfg.build_timeout {
            self.drop_relay(id, DestroyReason::Unreachable, None);
        } else if since(r.last_fwd) >= idle
            || (r.next.is_some() && since(r.last_bwd) >= idle)
            || (!r.keys.current.usable(now) && r.keys.next.is_none())
        {
            self.drop_relay(id, DestroyReason::Timeout, None);
        } else {
            self.schedule_relay(id);
        }
    }
}

/// Whether a BUILD may extend to `next`. Never to port 0 or an address no relay
/// lives at (unspecified, multicast, broadcast, link-local); never to this host
/// (loopback or one of `own`: a loop through the gateway, or UDP to its local
/// services), unless the BUILD itself came from loopback, where the whole network is
/// on this host (tests, a local demo).
pub(super) fn next_hop_allowed(next: SocketAddr, own: &[IpAddr], from_loopback: bool) -> bool {
    let ip = next.ip().to_canonical();
    let nowhere = match ip {
        IpAddr::V4(a) => {
            a.is_unspecified() || a.is_multicast() || a.is_broadcast() || a.is_link_local()
        }
        IpAddr::V6(a) => a.is_unspecified() || a.is_multicast() || a.is_unicast_link_local(),
    };
    let this_host = ip.is_loopback() || own.iter().any(|o| o.to_canonical() == ip);
    next.port() != 0 && !nowhere && (from_loopback || !this_host)
}
