// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

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
