// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use proptest::prelude::*;
use std::collections::HashMap;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn flows_admitted_up_to_max() {
    let t0 = Instant::now();
    let mut table = FlowTable::new(3, Duration::from_secs(10));
    assert!(table.is_empty());
    for key in 0..3u32 {
        assert!(table.admit(t0, key));
    }
    assert_eq!(table.len(), 3);
    assert!(!table.admit(t0, 3));
    assert!(!table.admit(t0 + ms(9_999), 4));
    // Known flows are still admitted at capacity.
    assert!(table.admit(t0 + ms(9_999), 1));
    assert_eq!(table.len(), 3);
}

#[test]
fn flows_expire_after_idle() {
    let t0 = Instant::now();
    let idle = Duration::from_secs(10);
    let mut table = FlowTable::new(2, idle);
    assert!(table.admit(t0, 'a'));
    assert!(table.admit(t0 + ms(1), 'b'));
    assert!(!table.admit(t0 + idle - ms(1), 'c'));
    // At exactly idle after its last packet, 'a' is forgotten.
    assert!(table.admit(t0 + idle, 'c'));
    assert_eq!(table.len(), 2);
    assert!(!table.admit(t0 + idle, 'a'));
    // Everything idle at once.
    assert!(table.admit(t0 + idle * 5, 'd'));
    assert_eq!(table.len(), 1);
}

#[test]
fn refreshed_flows_do_not_expire() {
    let t0 = Instant::now();
    let idle = Duration::from_secs(10);
    let mut table = FlowTable::new(2, idle);
    assert!(table.admit(t0, 'a'));
    assert!(table.admit(t0, 'b'));
    for i in 1..=10u32 {
        assert!(table.admit(t0 + idle / 2 * i, 'a'));
    }
    // 'b' was forgotten long ago; 'a' was refreshed every 5 s and is still live.
    assert_eq!(table.len(), 1);
    assert!(table.admit(t0 + idle * 5 + ms(1), 'c'));
    assert!(!table.admit(t0 + idle * 5 + ms(2), 'd'));
}

#[test]
fn zero_max_admits_nothing() {
    let mut table = FlowTable::new(0, Duration::from_secs(1));
    assert!(!table.admit(Instant::now(), 1u8));
    assert!(table.is_empty());
}

#[test]
fn known_flows_do_not_allocate_and_slots_are_reused() {
    let t0 = Instant::now();
    let mut table = FlowTable::new(4, Duration::from_secs(1));
    for key in 0..4u16 {
        assert!(table.admit(t0, key));
    }
    let capacities = (
        table.index.capacity(),
        table.nodes.capacity(),
        table.free.capacity(),
    );
    for i in 0..10_000u32 {
        let key = u16::try_from(i % 4).unwrap();
        assert!(table.admit(t0 + Duration::from_micros(u64::from(i)), key));
    }
    let after = (
        table.index.capacity(),
        table.nodes.capacity(),
        table.free.capacity(),
    );
    assert_eq!(capacities, after);
    // Churn through many short-lived flows: the slab never grows past `max`.
    for i in 0..1_000u16 {
        let now = t0 + Duration::from_secs(10 + u64::from(i));
        assert!(table.admit(now, 100 + i));
    }
    assert!(table.nodes.len() <= 4);
    assert_eq!(table.len(), 1);
}

#[test]
fn time_going_backwards_is_clamped() {
    let t0 = Instant::now() + Duration::from_secs(100);
    let mut table = FlowTable::new(1, Duration::from_secs(10));
    assert!(table.admit(t0, 1u8));
    // An earlier time counts as t0: flow 1 is live, so flow 2 is refused.
    assert!(!table.admit(t0 - Duration::from_secs(50), 2));
    assert!(table.admit(t0 + Duration::from_secs(10), 2));
}

/// The obvious implementation: a map of last-seen times, fully scanned per call.
struct Model {
    max: usize,
    idle: Duration,
    seen: HashMap<u8, Instant>,
}

impl Model {
    fn admit(&mut self, now: Instant, key: u8) -> bool {
        let idle = self.idle;
        self.seen.retain(|_, &mut t| now.duration_since(t) < idle);
        if self.seen.contains_key(&key) || self.seen.len() < self.max {
            self.seen.insert(key, now);
            true
        } else {
            false
        }
    }
}

proptest! {
    #[test]
    fn flow_table_matches_model(
        max in 0usize..6,
        idle_ms in 0u64..60,
        ops in proptest::collection::vec((0u64..25, 0u8..10), 0..300),
    ) {
        let t0 = Instant::now();
        let idle = ms(idle_ms);
        let mut table = FlowTable::new(max, idle);
        let mut model = Model { max, idle, seen: HashMap::new() };
        let mut now = t0;
        for (step, key) in ops {
            now += ms(step);
            prop_assert_eq!(table.admit(now, key), model.admit(now, key));
            prop_assert_eq!(table.len(), model.seen.len());
            prop_assert!(table.nodes.len() <= max);
        }
    }
}
