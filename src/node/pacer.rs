//! Constant-rate links (the PipeNet mode of `docs/DESIGN.md`, PROTOCOL §2 pacing).
//!
//! A paced link sends one datagram every `1 s / rate`, whether or not there is
//! traffic: the oldest datagram waiting for the link, or else a link padding cell
//! (a CELL of circuit 0, `MAX_DATAGRAM` bytes of random content under the link's
//! header mask), which an observer of the link cannot tell from a full-size cell of
//! a circuit. Everything the node sends on the link once it is up waits in the
//! link's queue for a slot (cells, control messages, the link's rekey handshake),
//! so neither traffic nor circuit builds, rekeys or teardowns change the rate. The
//! queue holds at most [`PACE_QUEUE`] datagrams; a cell that finds it full is
//! dropped and counted, never sent outside a slot.
//!
//! The client paces its side of the link to the entry of each of its circuits
//! ([`NodeConfig::pace`](super::NodeConfig)) and asks the entry with PACE to pace
//! the other side; the entry grants at most its `pace_limit`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};

use crate::proto::crypto::KEY_LEN;
use crate::proto::wire::{Cell, CtrlKind, MAX_DATAGRAM};

use super::{mask_header, LinkId, Node, Timer, Transmit};

/// Datagrams a paced link holds while they wait for their slots: 32 cells (46 KiB)
/// cover a burst of 32 ms at 1,000 cells/s; a burst longer than the queue drops
/// instead of growing the delay without bound.
pub const PACE_QUEUE: usize = 32;
/// Control messages and handshakes of a paced link may wait beyond [`PACE_QUEUE`]
/// up to this many datagrams in all: a burst of cells cannot make a BUILD or a
/// DESTROY drop, and a peer's flood of PINGs cannot grow the queue without bound.
const PACE_QUEUE_CTRL: usize = 2 * PACE_QUEUE;
/// Slots a late side sends at once to catch up (PROTOCOL §2, pacing).
const PACE_CATCH_UP: u32 = 4;
/// The highest rate a gateway paces a link at by default (cells per second, both
/// directions of a link): 1,000 full-size cells are 11.6 Mbit/s.
pub const PACE_LIMIT: u32 = 1000;
/// The most cells per second a gateway paces all its clients' links at together by
/// default: 20,000 full-size cells are 232 Mbit/s each way, 20 clients at the limit.
pub const PACE_BUDGET: u32 = 20_000;

/// The schedule and the waiting datagrams of one paced link.
pub(super) struct Pacer {
    /// Cells per second.
    rate: u32,
    interval: Duration,
    /// The next slot.
    next: Instant,
    queue: VecDeque<Vec<u8>>,
}

impl Pacer {
    fn new(rate: u32, now: Instant) -> Option<Self> {
        Some(Self {
            rate,
            interval: interval(rate)?,
            next: now,
            queue: VecDeque::with_capacity(PACE_QUEUE),
        })
    }

    /// Whether one more cell fits in the queue.
    pub(super) fn has_room(&self) -> bool {
        self.queue.len() < PACE_QUEUE
    }

    /// Moves to the slot after `self.next`. A driver late by up to
    /// [`PACE_CATCH_UP`] slots sends the ones it missed at once (the next timer is
    /// already due), so the count per window stays the rate; one later than that
    /// loses the older slots rather than sending a longer burst.
    fn advance(&mut self, now: Instant) {
        self.next += self.interval;
        if let Some(oldest) = now.checked_sub(self.interval * PACE_CATCH_UP) {
            self.next = self.next.max(oldest);
        }
    }
}

/// The time between slots at `rate` cells per second; `None` for rate 0.
fn interval(rate: u32) -> Option<Duration> {
    (rate > 0).then(|| Duration::from_secs(1) / rate)
}

/// A link padding cell in `buf`: random content under a link header (the peer's
/// receiver index `tx`, circuit 0, the link's send mask), as long as the longest
/// cell.
fn link_padding(
    tx: u32,
    mask: &[u8; KEY_LEN],
    rng: &mut impl RngCore,
    mut buf: Vec<u8>,
) -> Vec<u8> {
    buf.clear();
    buf.resize(MAX_DATAGRAM, 0);
    rng.fill_bytes(&mut buf);
    if let Some(mut cell) = Cell::new_checked(&mut buf) {
        cell.set_address(tx, 0);
        mask_header(mask, &mut cell);
    }
    buf
}

impl Node {
    /// Paces link `id` at `rate` cells per second from `now` (0 stops pacing and
    /// sends what waits at once). A link paced already keeps its schedule and
    /// takes the new rate.
    pub(super) fn set_pace(&mut self, now: Instant, id: LinkId, rate: u32) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        match (link.pace.as_mut(), interval(rate)) {
            (Some(p), Some(i)) => {
                p.rate = rate;
                p.interval = i;
            }
            (None, Some(_)) => {
                link.pace = Pacer::new(rate, now);
                self.timers.set(Timer::Pace(id), Some(now));
            }
            (_, None) => self.stop_pacing(id),
        }
    }

    /// Stops pacing link `id`: what waits for a slot is sent at once.
    pub(super) fn stop_pacing(&mut self, id: LinkId) {
        if let Some(link) = self.links.get_mut(&id) {
            if let Some(p) = link.pace.take() {
                let (src, dst) = (link.local, link.peer);
                self.transmits
                    .extend(p.queue.into_iter().map(|buf| Transmit { src, dst, buf }));
            }
        }
        self.timers.set(Timer::Pace(id), None);
    }

    /// The client side: paces the link to a circuit's entry at the configured
    /// rate and asks the entry with PACE to pace its side (once per link).
    pub(super) fn pace_entry_link(&mut self, now: Instant, id: LinkId) {
        let Some(rate) = self.cfg.pace else { return };
        if self.links.get(&id).is_none_or(|l| l.pace.is_some()) {
            return;
        }
        self.set_pace(now, id, rate);
        self.send_ctrl(id, CtrlKind::Pace, 0, &rate.to_be_bytes());
    }

    /// A PACE from the peer of link `id`: only the initiator of a link (the
    /// client) asks; the rate is capped at this node's `pace_limit` and at what its
    /// `pace_budget` leaves after the other links it paces for their peers.
    pub(super) fn on_pace(&mut self, now: Instant, id: LinkId, rate: u32) {
        if self.links.get(&id).is_none_or(|l| l.peer_key.is_some()) {
            self.stats.dropped_protocol += 1;
            return;
        }
        let granted_to_others: u32 = self
            .links
            .iter()
            .filter(|(other, l)| **other != id && l.peer_key.is_none())
            .filter_map(|(_, l)| l.pace.as_ref())
            .fold(0, |sum, p| sum.saturating_add(p.rate));
        let left = self.cfg.pace_budget.saturating_sub(granted_to_others);
        let granted = rate.min(self.cfg.pace_limit).min(left);
        if rate > 0 && granted == 0 {
            self.stats.pace_refused += 1;
            return;
        }
        self.stats.paces_received += 1;
        self.set_pace(now, id, granted);
    }

    /// Sends a finished control message or handshake on link `id`: into its
    /// queue when the link is paced and up (beyond [`PACE_QUEUE`], up to
    /// `PACE_QUEUE_CTRL`), else at once.
    pub(super) fn emit(&mut self, id: LinkId, buf: Vec<u8>) {
        let Some(link) = self.links.get(&id) else {
            return;
        };
        if link.pace.is_some() && link.keys.is_some() {
            // A dropped one is counted.
            let _ = self.pace_push(id, buf, PACE_QUEUE_CTRL);
        } else {
            self.transmits.push_back(Transmit {
                src: link.local,
                dst: link.peer,
                buf,
            });
        }
    }

    /// Queues a finished cell on paced link `id`; when [`PACE_QUEUE`] datagrams
    /// wait already, counts the drop and hands the buffer back.
    pub(super) fn pace_cell(&mut self, id: LinkId, buf: Vec<u8>) -> Result<(), Vec<u8>> {
        self.pace_push(id, buf, PACE_QUEUE)
    }

    fn pace_push(&mut self, id: LinkId, buf: Vec<u8>, cap: usize) -> Result<(), Vec<u8>> {
        match self.links.get_mut(&id).and_then(|l| l.pace.as_mut()) {
            Some(p) if p.queue.len() < cap => {
                p.queue.push_back(buf);
                self.stats.pace_queued += 1;
                Ok(())
            }
            _ => {
                self.stats.pace_dropped += 1;
                Err(buf)
            }
        }
    }

    /// Whether own or relayed traffic for link `id` can be sent now or queued.
    pub(super) fn link_has_room(&self, id: LinkId) -> bool {
        self.links
            .get(&id)
            .and_then(|l| l.pace.as_ref())
            .is_none_or(Pacer::has_room)
    }

    /// A slot of paced link `id`: its oldest waiting datagram, or link padding.
    /// Nothing goes out before the link is up.
    pub(super) fn pace_tick(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: LinkId,
    ) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let Some(p) = link.pace.as_mut() else {
            return;
        };
        p.advance(now);
        let next = p.next;
        if let Some(keys) = &link.keys {
            let buf = match p.queue.pop_front() {
                Some(buf) => buf,
                None => {
                    let spare = self.spare.pop().unwrap_or_default();
                    let buf = link_padding(keys.tx, &keys.send_mask, rng, spare);
                    self.stats.padding_sent += 1;
                    self.stats.padding_bytes_sent += buf.len() as u64;
                    buf
                }
            };
            self.transmits.push_back(Transmit {
                src: link.local,
                dst: link.peer,
                buf,
            });
        }
        self.timers.set(Timer::Pace(id), Some(next));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A late side catches up at most `PACE_CATCH_UP` missed slots; beyond that the
    /// older ones are lost.
    #[test]
    fn a_late_side_catches_up_a_few_slots_only() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut p = Pacer::new(1000, t0).unwrap();
        // Woken 3 ms late: the slots at 1, 2 and 3 ms are still due.
        p.advance(t0 + ms(3));
        assert_eq!(p.next, t0 + ms(1));
        // Woken 20 ms late: only the last 4 slots are still due.
        let mut p = Pacer::new(1000, t0).unwrap();
        p.advance(t0 + ms(20));
        assert_eq!(p.next, t0 + ms(16));
        // On time: the next slot.
        let mut p = Pacer::new(1000, t0).unwrap();
        p.advance(t0);
        assert_eq!(p.next, t0 + ms(1));
        assert!(Pacer::new(0, t0).is_none());
    }
}
