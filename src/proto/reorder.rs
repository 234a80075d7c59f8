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
//! timeout). Numbers already delivered or given up and duplicates are dropped and
//! counted. So memory is bounded whatever a peer sends, and no packet is held back
//! longer than the timeout.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Numbers a reorder buffer spans past the next expected one. 256 packets of at most
/// 1,248 bytes cover 312 KB: a route's share of the data in flight at 50 Mbit/s and
/// 50 ms of difference between the routes. Further ahead a sender has gone wrong.
pub const REORDER_WINDOW: u32 = 256;
/// Bytes of packets one reorder buffer holds at most.
pub const REORDER_BYTES: usize = 256 * 1024;
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

#[cfg(test)]
mod tests;
