// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

//! The timer table and the node's exact deadlines.

use super::*;

/// Timers run in deadline order (ties: links, relays, own circuits, housekeeping);
/// setting one again moves it, `None` stops it, `set_earlier` never delays it.
#[test]
fn timers_fire_in_deadline_order() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let mut t = TimerTable::default();
    t.set(Timer::Own(CircuitId(1)), Some(t0 + s(3)));
    t.set(Timer::Link(7), Some(t0 + s(1)));
    t.set(Timer::Relay(2), Some(t0 + s(2)));
    t.set(Timer::Link(7), Some(t0 + s(4)));
    t.set_earlier(Timer::Relay(2), t0 + s(5));
    t.set_earlier(Timer::Housekeeping, t0 + s(2));
    t.set(Timer::Own(CircuitId(1)), None);
    assert_eq!(t.get(Timer::Relay(2)), Some(t0 + s(2)));
    assert_eq!(t.next(), Some(t0 + s(2)));
    assert_eq!(t.pop_due(t0 + s(1)), None);
    let due: Vec<Timer> = std::iter::from_fn(|| t.pop_due(t0 + s(4))).collect();
    assert_eq!(due, [Timer::Relay(2), Timer::Housekeeping, Timer::Link(7)]);
    assert_eq!(t.next(), None);
}

/// The client sleeps until its exact next deadline: an idle circuit's KEEPALIVE,
/// not a periodic tick. Nothing happens a millisecond before it.
#[test]
fn an_idle_circuit_wakes_its_client_only_for_the_keepalive() {
    let (mut net, specs) = Mini::new(1);
    net.circuit_to(&specs, Service::Exit);
    let ka = NodeConfig::default().keepalive;
    let t0 = net.now;
    for k in 1..=3 {
        let due = t0 + ka * k;
        assert_eq!(net.nodes[0].1.poll_timeout(), Some(due), "keepalive {k}");
        net.now = due - Duration::from_millis(1);
        net.tick();
        assert_eq!(net.nodes[0].1.stats().keepalives_answered, u64::from(k - 1));
        net.now = due;
        net.tick();
        assert_eq!(net.nodes[0].1.stats().keepalives_answered, u64::from(k));
    }
}

/// An entry that never answers: LINK_INIT goes again at each `LINK_RETRY`, exactly,
/// and at `build_timeout` the circuit goes down; then the node has no timer left.
#[test]
fn an_unanswered_link_retries_at_its_deadlines_then_gives_up() {
    let (mut net, mut specs) = Mini::new(1);
    specs[0].addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 9, 9)), 9000);
    let t0 = net.now;
    let (_, client, rng) = &mut net.nodes[0];
    let id = client
        .build_circuit(t0, rng, &specs, Service::Exit)
        .expect("build");
    assert_eq!(std::iter::from_fn(|| client.poll_transmit()).count(), 1);
    let timeout = NodeConfig::default().build_timeout;
    let retries = timeout.as_millis() / LINK_RETRY.as_millis();
    for k in 1..retries {
        let due = t0 + LINK_RETRY * u32::try_from(k).expect("few");
        assert_eq!(client.poll_timeout(), Some(due));
        client.handle_timeout(due, rng);
        assert_eq!(
            std::iter::from_fn(|| client.poll_transmit()).count(),
            1,
            "retry {k}"
        );
    }
    assert_eq!(client.poll_timeout(), Some(t0 + timeout));
    client.handle_timeout(t0 + timeout, rng);
    let down = client.poll_event();
    assert!(
        matches!(down, Some(Event::CircuitDown(c, DownReason::EntryUnanswered)) if c == id),
        "{down:?}"
    );
    assert_eq!(client.poll_timeout(), None);
}
