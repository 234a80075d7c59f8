//! The reorder buffer of one direction of a virtual circuit (PROTOCOL §12): packets
//! numbered by their sender and spread over several routes come out in order.
//!
//! A packet whose number is the next expected one is delivered at once; a later one
//! waits for the numbers before it, at most [`REORDER_TIMEOUT`], and the buffer holds
//! at most [`REORDER_WINDOW`] numbers and [`REORDER_BYTES`] bytes of packets. When a
//! packet has waited its time, or a new one would not fit, the buffer gives up on the
//! missing numbers before the oldest one it holds (they count as lost; TCP resends
//! them) and delivers what follows in order; a number beyond the window moves the
//! window up to it, giving up the numbers it leaves behind (a leg that died leaves
//! gaps that a fast transfer on the others passes within the window, not after the
//! timeout). A gap that every route in use has passed is given up at once
//! ([`Reorder::passed`]): each route keeps its packets in order, so the missing
//! packet was lost, and waiting for it would only stall the ones after it. Numbers
//! already delivered or given up and duplicates are dropped and
//! counted. So memory is bounded whatever a peer sends, and no packet is held back
//! longer than the timeout.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Numbers a reorder buffer spans past the next expected one. 1,024 packets of at
/// most 1,248 bytes cover 1.3 MB: a route's share of the data in flight at 200 Mbit/s
/// and 40 ms of difference between the routes. Further ahead a sender has gone wrong.
pub const REORDER_WINDOW: u32 = 1024;
/// Bytes of packets one reorder buffer holds at most.
pub const REORDER_BYTES: usize = 1024 * 1024;
/// The longest a packet waits for the ones before it: above the difference in delay
/// of two routes of one virtual circuit on real paths (tens of ms), and at Linux's
/// minimum TCP retransmission timeout, so a gap given up costs TCP no more than a
/// loss would have.
pub const REORDER_TIMEOUT: Duration = Duration::from_millis(200);

/// Why a packet was dropped instead of held or delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Its number was delivered or given up already.
    Late,
    /// Its number is held already.
    Duplicate,
}

/// What a reorder buffer has done, for the stats.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReorderStats {
    /// Packets delivered, in order.
    pub delivered: u64,
    /// Of them, the ones that had to wait for an earlier number.
    pub reordered: u64,
    /// Numbers given up on: their packets never came within the timeout or the
    /// bounds.
    pub lost: u64,
    /// Packets dropped as [`Rejected::Late`].
    pub late: u64,
    /// Packets dropped as [`Rejected::Duplicate`].
    pub duplicate: u64,
    /// Packets [`REORDER_WINDOW`] or more ahead, which moved the window.
    pub out_of_window: u64,
    /// The most bytes held at once.
    pub held_peak: usize,
}

impl ReorderStats {
    /// Adds another buffer's counts to these.
    pub fn add(&mut self, o: &Self) {
        self.delivered += o.delivered;
        self.reordered += o.reordered;
        self.lost += o.lost;
        self.late += o.late;
        self.duplicate += o.duplicate;
        self.out_of_window += o.out_of_window;
        self.held_peak = self.held_peak.max(o.held_peak);
    }
}

#[derive(Debug)]
struct Held {
    at: Instant,
    buf: Vec<u8>,
}

/// One direction's reorder buffer.
#[derive(Debug, Default)]
pub struct Reorder {
    /// The next number to deliver.
    next: u32,
    /// `held[i]` is number `next + i`: empty, or `None` at the front (the gap the
    /// rest waits for) and a packet at the back. At most [`REORDER_WINDOW`] long.
    held: VecDeque<Option<Held>>,
    /// Bytes of the packets in `held`, at most [`REORDER_BYTES`].
    bytes: usize,
    /// What this buffer has done.
    pub stats: ReorderStats,
}

impl Reorder {
    /// Takes packet number `seq`. Packets it lets out, in order, are appended to
    /// `out`; a dropped packet's buffer comes back with the reason.
    pub fn push(
        &mut self,
        now: Instant,
        seq: u32,
        buf: Vec<u8>,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<(), (Rejected, Vec<u8>)> {
        self.push_within(now, seq, buf, REORDER_BYTES, out)
    }

    /// [`Reorder::push`], holding at most `limit` bytes (and never more than
    /// [`REORDER_BYTES`]): for an owner that shares a budget among its buffers.
    pub fn push_within(
        &mut self,
        now: Instant,
        seq: u32,
        buf: Vec<u8>,
        limit: usize,
        out: &mut Vec<Vec<u8>>,
    ) -> Result<(), (Rejected, Vec<u8>)> {
        let limit = limit.min(REORDER_BYTES);
        let mut ahead = match self.place(seq, out) {
            Ok(a) => a,
            Err(why) => return Err((why, buf)),
        };
        if ahead == 0 {
            self.deliver_next(buf, out);
            return Ok(());
        }
        if self.held.get(ahead).is_some_and(Option::is_some) {
            self.stats.duplicate += 1;
            return Err((Rejected::Duplicate, buf));
        }
        // Room first: give up gaps until the packet fits the byte bound.
        while !self.held.is_empty() && self.bytes + buf.len() > limit {
            self.skip_gap(out);
            ahead = match self.place(seq, out) {
                Ok(a) => a,
                Err(why) => return Err((why, buf)),
            };
        }
        if ahead == 0 {
            self.deliver_next(buf, out);
            return Ok(());
        }
        while self.held.len() <= ahead {
            self.held.push_back(None);
        }
        if let Some(slot) = self.held.get_mut(ahead) {
            self.bytes += buf.len();
            self.stats.held_peak = self.stats.held_peak.max(self.bytes);
            *slot = Some(Held { at: now, buf });
        }
        Ok(())
    }

    /// When the oldest held packet will have waited [`REORDER_TIMEOUT`]: call
    /// [`Reorder::poll`] then.
    #[must_use]
    pub fn deadline(&self) -> Option<Instant> {
        self.held
            .iter()
            .flatten()
            .map(|h| h.at)
            .min()
            .and_then(|at| at.checked_add(REORDER_TIMEOUT))
    }

    /// Gives up the gaps that held a packet back for [`REORDER_TIMEOUT`] and lets out
    /// what follows them, in order.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Vec<u8>>) {
        while self.deadline().is_some_and(|d| d <= now) {
            self.skip_gap(out);
        }
    }

    /// Drops everything held and gives up the numbers it spans (counted as lost):
    /// for a buffer whose packets have nowhere to go.
    pub fn clear(&mut self) {
        let span = u32::try_from(self.held.len()).unwrap_or(REORDER_WINDOW);
        self.stats.lost += u64::from(span);
        self.next = self.next.wrapping_add(span);
        self.held.clear();
        self.bytes = 0;
    }

    /// Each route of the sender (a leg) keeps its packets in order, so a number
    /// missing before the highest one every route in use has brought is lost: gives
    /// those numbers up at once and lets out what follows, in order. `highs` are the
    /// routes' highest numbers received; a route with none yet, or with nothing
    /// past the numbers delivered, leaves the gaps to the timeout.
    pub fn passed(&mut self, highs: impl IntoIterator<Item = Option<u32>>, out: &mut Vec<Vec<u8>>) {
        let mut upto: Option<u32> = None;
        for high in highs {
            match high.map(|h| h.wrapping_sub(self.next)) {
                Some(a) if a < 1 << 31 => upto = Some(upto.map_or(a, |u| u.min(a))),
                _ => return,
            }
        }
        let held = u32::try_from(self.held.len()).unwrap_or(REORDER_WINDOW);
        if let Some(n) = upto.map(|u| u.min(held)).filter(|&n| n > 0) {
            self.advance(n, out);
        }
    }

    /// Bytes of packets held.
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        self.bytes
    }

    /// Numbers held or waited for, past the next expected one.
    #[must_use]
    pub fn held_span(&self) -> usize {
        self.held.len()
    }

    /// How far past the next expected number `seq` is, or why it cannot be held. A
    /// number [`REORDER_WINDOW`] or more ahead moves the window up to it: the
    /// numbers left behind are given up, the packets among them let out in order.
    fn place(&mut self, seq: u32, out: &mut Vec<Vec<u8>>) -> Result<usize, Rejected> {
        let mut ahead = seq.wrapping_sub(self.next);
        if ahead >= 1 << 31 {
            self.stats.late += 1;
            return Err(Rejected::Late);
        }
        if ahead >= REORDER_WINDOW {
            self.stats.out_of_window += 1;
            self.advance(ahead - (REORDER_WINDOW - 1), out);
            ahead = seq.wrapping_sub(self.next);
        }
        usize::try_from(ahead).map_err(|_| Rejected::Late)
    }

    /// Moves the next expected number `n` on: held packets on the way go out,
    /// missing numbers are given up; then what follows in order goes out too.
    fn advance(&mut self, n: u32, out: &mut Vec<Vec<u8>>) {
        let mut left = n;
        while left > 0 {
            let Some(front) = self.held.pop_front() else {
                break;
            };
            match front {
                Some(h) => {
                    self.bytes = self.bytes.saturating_sub(h.buf.len());
                    self.stats.delivered += 1;
                    self.stats.reordered += 1;
                    out.push(h.buf);
                }
                None => self.stats.lost += 1,
            }
            self.next = self.next.wrapping_add(1);
            left -= 1;
        }
        self.stats.lost += u64::from(left);
        self.next = self.next.wrapping_add(left);
        self.release(out);
    }

    /// Delivers the next expected packet and whatever it unblocks.
    fn deliver_next(&mut self, buf: Vec<u8>, out: &mut Vec<Vec<u8>>) {
        out.push(buf);
        self.next = self.next.wrapping_add(1);
        self.stats.delivered += 1;
        self.held.pop_front();
        self.release(out);
    }

    /// Gives up the missing numbers at the front and lets out what follows.
    fn skip_gap(&mut self, out: &mut Vec<Vec<u8>>) {
        while let Some(None) = self.held.front() {
            self.held.pop_front();
            self.next = self.next.wrapping_add(1);
            self.stats.lost += 1;
        }
        self.release(out);
    }

    /// Lets out the packets held at the front, in order.
    fn release(&mut self, out: &mut Vec<Vec<u8>>) {
        while let Some(Some(_)) = self.held.front() {
            if let Some(Some(h)) = self.held.pop_front() {
                self.bytes = self.bytes.saturating_sub(h.buf.len());
                self.next = self.next.wrapping_add(1);
                self.stats.delivered += 1;
                self.stats.reordered += 1;
                out.push(h.buf);
            }
        }
    }
}

/// The later of a route's highest number so far and `seq` (serial numbers: `seq` is
/// later when it is less than 2^31 past).
#[must_use]
pub fn highest(high: Option<u32>, seq: u32) -> u32 {
    match high {
        Some(h) if seq.wrapping_sub(h) >= 1 << 31 => h,
        _ => seq,
    }
}

#[cfg(test)]
mod tests;
