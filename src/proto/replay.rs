//! Sliding anti-replay window for per-hop data counters (RFC 6479, as in WireGuard).
//!
//! Every data packet on a hop carries an explicit 64-bit counter. The receiver keeps
//! the highest counter it has accepted (`last`) and a bitmap of which of the recent
//! counters it has already seen. The bitmap is a ring of [`BLOCKS`] 64-bit blocks
//! ([`WINDOW_BITS`] = 8192 bits, 1 KiB, stored inline: no heap allocation). Block
//! `(c / 64) % BLOCKS` holds bit `c % 64` for counter `c`.
//!
//! A counter `c` is accepted iff
//! - `c <= limit` (the reject limit given to [`ReplayWindow::new`]: after that many
//!   messages the session must be rekeyed, never wrap), and
//! - `c > last`, or `c + WINDOW_SIZE > last` and `c` has not been seen before.
//!
//! So the window covers [`WINDOW_SIZE`] = 8128 counters: `last - 8127 ..= last`. It is
//! one block smaller than the ring because when the window moves forward the block
//! that `last` moves into is cleared whole; the remaining 127 blocks always hold the
//! complete history of the window, so a counter still inside it can never alias a
//! cleared (forgotten) bit. Moving forward by `n` blocks costs `min(n, BLOCKS)` block
//! writes, so a far jump is O(1) and clears everything.
//!
//! # Why `check` and `update` are split
//!
//! The counter is read from the packet *before* it is authenticated. If an
//! unauthenticated counter could move the window, an attacker could send one forged
//! packet with counter `2^60` and the window would then reject every genuine packet.
//! So the receiver calls [`ReplayWindow::check`] (read-only, cheap) to drop obvious
//! replays before spending an AEAD open on them, and only after the AEAD open
//! succeeds calls [`ReplayWindow::update`], which re-checks (two packets with the same
//! counter may both pass `check` when processed in one batch) and records the counter.

use std::fmt;

/// Total bits in the bitmap ring.
pub const WINDOW_BITS: u64 = 8192;

/// Bits per bitmap block.
const BLOCK_BITS: u64 = 64;

/// Number of `u64` blocks in the ring.
pub const BLOCKS: usize = (WINDOW_BITS / BLOCK_BITS) as usize;

/// Number of counters, ending at the highest seen, that are still accepted once.
pub const WINDOW_SIZE: u64 = WINDOW_BITS - BLOCK_BITS;

// The ring index is computed with a mask.
const _: () = assert!(BLOCKS.is_power_of_two());
const BLOCK_MASK: u64 = BLOCKS as u64 - 1;

/// Anti-replay state for one direction of one hop. See the module documentation.
#[derive(Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    bitmap: [u64; BLOCKS],
    /// Highest counter accepted so far; `None` until the first `update`.
    last: Option<u64>,
    /// Largest counter that will ever be accepted.
    limit: u64,
}

impl ReplayWindow {
    /// A fresh window that accepts counters `0..=limit`.
    pub const fn new(limit: u64) -> Self {
        Self {
            bitmap: [0; BLOCKS],
            last: None,
            limit,
        }
    }

    /// Would `counter` be accepted? Does not change the state. Call this before the
    /// AEAD open to drop replays cheaply.
    #[must_use]
    pub fn check(&self, counter: u64) -> bool {
        if counter > self.limit {
            return false;
        }
        let Some(last) = self.last else {
            return true;
        };
        if counter > last {
            return true;
        }
        // counter <= last here, so the subtraction cannot underflow.
        if last - counter >= WINDOW_SIZE {
            return false;
        }
        let (block, bit) = Self::position(counter);
        self.bitmap.get(block).is_some_and(|w| w & bit == 0)
    }

    /// Check `counter` and, if accepted, record it (moving the window forward if it is
    /// the new highest). Returns `false`, leaving the state unchanged, if rejected.
    /// Call this only after the packet carrying `counter` has been authenticated.
    #[must_use = "a rejected counter means the packet must be dropped"]
    pub fn update(&mut self, counter: u64) -> bool {
        if !self.check(counter) {
            return false;
        }
        match self.last {
            Some(last) if counter <= last => {}
            Some(last) => {
                let current = last / BLOCK_BITS;
                let target = counter / BLOCK_BITS;
                let advance = (target - current).min(BLOCKS as u64);
                for i in 1..=advance {
                    // current + i <= target <= u64::MAX / 64: no overflow.
                    if let Some(w) = self.bitmap.get_mut(((current + i) & BLOCK_MASK) as usize) {
                        *w = 0;
                    }
                }
                self.last = Some(counter);
            }
            // The bitmap of a fresh window is all zero already.
            None => self.last = Some(counter),
        }
        let (block, bit) = Self::position(counter);
        if let Some(w) = self.bitmap.get_mut(block) {
            *w |= bit;
        }
        true
    }

    /// Highest counter accepted so far, if any.
    pub fn highest(&self) -> Option<u64> {
        self.last
    }

    fn position(counter: u64) -> (usize, u64) {
        let block = ((counter / BLOCK_BITS) & BLOCK_MASK) as usize;
        (block, 1u64 << (counter % BLOCK_BITS))
    }
}

impl fmt::Debug for ReplayWindow {
    // The 128-block bitmap is noise in logs; show what matters.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seen: u32 = self.bitmap.iter().map(|b| b.count_ones()).sum();
        f.debug_struct("ReplayWindow")
            .field("highest", &self.last)
            .field("limit", &self.limit)
            .field("bits_set", &seen)
            .finish()
    }
}

#[cfg(test)]
mod tests;
