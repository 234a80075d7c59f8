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
        self.bitmap[block] & bit == 0
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
                    self.bitmap[((current + i) & BLOCK_MASK) as usize] = 0;
                }
                self.last = Some(counter);
            }
            // The bitmap of a fresh window is all zero already.
            None => self.last = Some(counter),
        }
        let (block, bit) = Self::position(counter);
        self.bitmap[block] |= bit;
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
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const NO_LIMIT: u64 = u64::MAX;

    /// `update` must agree with a preceding `check`; this asserts it on every call.
    fn update(w: &mut ReplayWindow, c: u64) -> bool {
        let checked = w.check(c);
        let updated = w.update(c);
        assert_eq!(checked, updated, "check and update disagree on {c}");
        updated
    }

    #[test]
    fn constants() {
        assert_eq!(WINDOW_BITS, 8192);
        assert_eq!(BLOCKS, 128);
        assert_eq!(WINDOW_SIZE, 8128);
        assert_eq!(std::mem::size_of::<ReplayWindow>(), 1024 + 24);
    }

    #[test]
    fn fresh_window() {
        let w = ReplayWindow::new(NO_LIMIT);
        assert_eq!(w.highest(), None);
        assert!(w.check(0));
        assert!(w.check(u64::MAX));
    }

    #[test]
    fn in_order() {
        let mut w = ReplayWindow::new(NO_LIMIT);
        for c in 0..20_000 {
            assert!(update(&mut w, c), "{c}");
            assert!(!update(&mut w, c), "duplicate {c}");
        }
        assert_eq!(w.highest(), Some(19_999));
    }

    #[test]
    fn out_of_order_within_window() {
        let mut w = ReplayWindow::new(NO_LIMIT);
        assert!(update(&mut w, 10));
        assert!(update(&mut w, 5));
        assert!(update(&mut w, 0));
        assert!(update(&mut w, 9));
        assert!(update(&mut w, 100));
        assert!(update(&mut w, 11));
        assert!(!update(&mut w, 5));
        assert!(!update(&mut w, 10));
        assert!(!update(&mut w, 100));
        assert_eq!(w.highest(), Some(100));
    }

    #[test]
    fn check_does_not_record() {
        let mut w = ReplayWindow::new(NO_LIMIT);
        assert!(w.check(7));
        assert!(w.check(7));
        assert_eq!(w.highest(), None);
        assert!(update(&mut w, 7));
        assert!(!w.check(7));
        // A forged far-ahead counter that only passed `check` must not move anything.
        assert!(w.check(1 << 60));
        assert_eq!(w.highest(), Some(7));
        assert!(update(&mut w, 8));
    }

    #[test]
    fn edge_of_window() {
        let last = 20_000;
        let mut w = ReplayWindow::new(NO_LIMIT);
        assert!(update(&mut w, last));
        assert!(!update(&mut w, last - WINDOW_SIZE), "last-8128 is outside");
        assert!(!update(&mut w, last - WINDOW_SIZE - 1));
        assert!(!update(&mut w, 0));
        assert!(
            update(&mut w, last - (WINDOW_SIZE - 1)),
            "last-8127 is inside"
        );
        assert!(!update(&mut w, last - (WINDOW_SIZE - 1)));
        assert!(update(&mut w, last - 1));
    }

    #[test]
    fn edge_bits_survive_advance() {
        // Fill the whole window, then move forward by one: everything still inside the
        // window must still be remembered, including the block right at the edge.
        let mut w = ReplayWindow::new(NO_LIMIT);
        for c in 0..=WINDOW_SIZE + 63 {
            assert!(update(&mut w, c));
        }
        assert!(update(&mut w, WINDOW_SIZE + 64));
        let last = WINDOW_SIZE + 64;
        for c in last - (WINDOW_SIZE - 1)..=last {
            assert!(!w.check(c), "{c} forgotten");
        }
    }

    #[test]
    fn jump_far_ahead_clears_blocks() {
        let mut w = ReplayWindow::new(NO_LIMIT);
        for c in 0..1000 {
            assert!(update(&mut w, c));
        }
        // Jump by exactly one ring (same ring slots) and by much more.
        let jump = 1000 + WINDOW_BITS;
        assert!(update(&mut w, jump));
        for c in jump - (WINDOW_SIZE - 1)..jump {
            assert!(w.check(c), "{c} should be fresh after the jump");
        }
        assert!(!w.check(999));
        assert!(update(&mut w, 1 << 40));
        assert_eq!(w.bitmap.iter().map(|b| b.count_ones()).sum::<u32>(), 1);
        assert!(update(&mut w, (1 << 40) - 1));
        assert!(!update(&mut w, jump));
    }

    #[test]
    fn limit() {
        let mut w = ReplayWindow::new(100);
        assert!(!update(&mut w, 101));
        assert!(!update(&mut w, u64::MAX));
        assert_eq!(w.highest(), None);
        assert!(update(&mut w, 100));
        assert!(!update(&mut w, 101));
        assert!(update(&mut w, 99));

        let mut w = ReplayWindow::new(0);
        assert!(update(&mut w, 0));
        assert!(!update(&mut w, 0));
        assert!(!update(&mut w, 1));
    }

    #[test]
    fn near_u64_max() {
        let mut w = ReplayWindow::new(NO_LIMIT);
        assert!(update(&mut w, u64::MAX));
        assert!(!update(&mut w, u64::MAX));
        assert!(update(&mut w, u64::MAX - 1));
        assert!(update(&mut w, u64::MAX - (WINDOW_SIZE - 1)));
        assert!(!update(&mut w, u64::MAX - WINDOW_SIZE));
    }

    /// Reference model: the set of every accepted counter plus the maximum.
    #[derive(Default)]
    struct Model {
        seen: BTreeSet<u64>,
        max: Option<u64>,
    }

    impl Model {
        fn update(&mut self, c: u64, limit: u64) -> bool {
            let in_window = self
                .max
                .is_none_or(|m| u128::from(c) + 8128 > u128::from(m));
            let ok = c <= limit && !self.seen.contains(&c) && in_window;
            if ok {
                self.seen.insert(c);
                self.max = self.max.max(Some(c));
            }
            ok
        }
    }

    /// Counters as a walking base with small deltas (many near the window edge) and
    /// occasional big jumps.
    fn counters() -> impl Strategy<Value = Vec<u64>> {
        let step = prop_oneof![
            6 => (-70i64..70).prop_map(|d| (0i64, d)),
            3 => (-70i64..70).prop_map(|d| (0i64, d - 8128)),
            2 => (0i64..9000).prop_map(|b| (b, 0)),
            1 => (8000i64..20_000).prop_map(|b| (b, 0)),
            1 => (-9000i64..0).prop_map(|b| (b, 0)),
        ];
        (0u64..100_000, prop::collection::vec(step, 1..400)).prop_map(|(start, steps)| {
            let mut base = start;
            let mut out = Vec::with_capacity(steps.len());
            for (move_base, delta) in steps {
                base = base.saturating_add_signed(move_base);
                out.push(base.saturating_add_signed(delta));
            }
            out
        })
    }

    proptest! {
        #[test]
        fn matches_model(counters in counters(), limit in prop_oneof![
            Just(u64::MAX),
            50_000u64..150_000,
        ]) {
            let mut w = ReplayWindow::new(limit);
            let mut model = Model::default();
            for c in counters {
                let expected = model.update(c, limit);
                prop_assert_eq!(w.check(c), expected, "check({})", c);
                prop_assert_eq!(w.update(c), expected, "update({})", c);
                prop_assert_eq!(w.highest(), model.max);
            }
        }
    }
}
