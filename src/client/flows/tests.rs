// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use etherparse::PacketBuilder;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fn tcp(dst: [u8; 4], sport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4([100, 64, 0, 2], dst, 64)
        .tcp(sport, 443, 1, 1000)
        .write(&mut out, b"x")
        .unwrap();
    out
}

fn via(r: Route) -> CircuitId {
    match r {
        Route::Via(c) => c,
        other => panic!("not routed: {other:?}"),
    }
}

/// A pool of `ids`, all up, through exits accepting `ports` (`None`: unknown).
fn pool_of(ids: &[CircuitId], ports: Option<&str>) -> CircuitPool {
    let t = Instant::now();
    let summary = ports.map(|s| s.parse::<PortSummary>().unwrap());
    let mut p = CircuitPool::new(
        8,
        Duration::from_secs(600),
        t,
        ids[0],
        [0; 32],
        summary.clone(),
    );
    for (i, &c) in ids.iter().enumerate().skip(1) {
        p.building(t, c, [u8::try_from(i).unwrap(); 32], summary.clone());
        p.on_up(c);
    }
    p
}

const A: CircuitId = CircuitId(1);
const B: CircuitId = CircuitId(2);
const C: CircuitId = CircuitId(3);

#[test]
fn per_destination_keeps_a_site_on_one_circuit_and_spreads_sites() {
    let mut r = FlowRouter::new(Isolation::PerDestination);
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let all = pool_of(&[A, B, C], None);
    let t = Instant::now();
    let open = [A, B, C];
    let mut used = std::collections::HashSet::new();
    for site in 0..20u8 {
        let first = via(r.route(t, &mut rng, &tcp([198, 18, 9, site], 1000), &all, &open));
        for port in 1001..1010 {
            let again = r.route(t, &mut rng, &tcp([198, 18, 9, site], port), &all, &open);
            assert_eq!(again, Route::Via(first), "site {site} moved");
        }
        used.insert(first);
    }
    assert_eq!(used.len(), 3, "20 sites over 3 circuits use all of them");
    assert_eq!(r.len(), 20);
}

#[test]
fn per_connection_and_single() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let all = pool_of(&[A, B, C], None);
    let t = Instant::now();
    let mut r = FlowRouter::new(Isolation::PerConnection);
    let mut used = std::collections::HashSet::new();
    for port in 0..40 {
        used.insert(via(r.route(
            t,
            &mut rng,
            &tcp([198, 18, 9, 1], 2000 + port),
            &all,
            &[A, B],
        )));
    }
    assert_eq!(
        used.len(),
        2,
        "connections to one site spread over circuits"
    );
    let mut r = FlowRouter::new(Isolation::Single);
    let first = via(r.route(t, &mut rng, &tcp([198, 18, 9, 1], 1), &all, &[A, B, C]));
    for site in 0..20 {
        assert_eq!(
            r.route(t, &mut rng, &tcp([198, 18, 9, site], 1), &all, &[A, B, C]),
            Route::Via(first)
        );
    }
}

#[test]
fn flows_move_only_when_their_circuit_is_gone() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let all = pool_of(&[A, B, C], None);
    let t = Instant::now();
    let mut r = FlowRouter::new(Isolation::PerDestination);
    let p = tcp([198, 18, 9, 1], 1);
    let without_a = pool_of(&[B], None);
    let c = via(r.route(t, &mut rng, &p, &all, &[A]));
    assert_eq!(c, A);
    // A stops taking new flows (old) but is up: the flow stays.
    assert_eq!(r.route(t, &mut rng, &p, &all, &[B]), Route::Via(A));
    assert_eq!(r.flows_on(A), 1);
    // A goes down: the flow moves to an open circuit.
    assert_eq!(r.route(t, &mut rng, &p, &without_a, &[B]), Route::Via(B));
    r.forget_circuit(B);
    assert_eq!(r.flows_on(B), 0);
    assert_eq!(r.route(t, &mut rng, &p, &all, &[]), Route::Wait);
}

#[test]
fn idle_flows_are_forgotten() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let all = pool_of(&[A, B, C], None);
    let t = Instant::now();
    let mut r = FlowRouter::new(Isolation::PerDestination);
    r.route(t, &mut rng, &tcp([198, 18, 9, 1], 1), &all, &[A]);
    r.route(
        t + FLOW_IDLE,
        &mut rng,
        &tcp([198, 18, 9, 2], 1),
        &all,
        &[A],
    );
    assert_eq!(r.len(), 1);
}

#[test]
fn isolation_names() {
    assert_eq!("per-destination".parse(), Ok(Isolation::PerDestination));
    assert_eq!("per-connection".parse(), Ok(Isolation::PerConnection));
    assert_eq!("single".parse(), Ok(Isolation::Single));
    assert!("per-site"
        .parse::<Isolation>()
        .unwrap_err()
        .contains("per-site"));
}

#[test]
fn pool_builds_one_at_a_time_up_to_its_target() {
    let t = Instant::now();
    let life = Duration::from_secs(600);
    let mut p = CircuitPool::new(3, life, t, A, [1; 32], None);
    assert_eq!(
        p.wants_build(t),
        Some(Build {
            avoid: vec![[1; 32]],
            port: None
        }),
        "avoid the first circuit's exit"
    );
    p.building(t, B, [2; 32], None);
    assert_eq!(p.wants_build(t), None, "one build at a time");
    p.on_up(B);
    p.building(t, C, [3; 32], None);
    p.on_up(C);
    assert_eq!(p.wants_build(t), None, "3 fresh circuits");
    let mut open = Vec::new();
    p.open(t, &mut open);
    assert_eq!(open, [A, B, C]);
}

#[test]
fn pool_backs_off_after_failures() {
    let t = Instant::now();
    let mut p = CircuitPool::new(2, Duration::from_secs(600), t, A, [1; 32], None);
    p.building(t, B, [2; 32], None);
    assert!(p.on_down(t, B));
    assert_eq!(p.wants_build(t), None);
    assert!(p.wants_build(t + REBUILD_FIRST).is_some());
    p.building(t + REBUILD_FIRST, C, [2; 32], None);
    assert!(p.on_down(t + REBUILD_FIRST, C));
    assert_eq!(p.wants_build(t + REBUILD_FIRST * 2), None, "doubled");
    assert!(p.wants_build(t + REBUILD_FIRST * 3).is_some());
    assert!(!p.on_down(t, CircuitId(99)), "not the pool's");
    assert!(p.on_down(t, A));
    assert!(p.all_down());
}

#[test]
fn circuits_lost_together_are_replaced_at_once() {
    let t = Instant::now();
    let mut p = CircuitPool::new(3, Duration::from_secs(600), t, A, [1; 32], None);
    p.building(t, B, [2; 32], None);
    p.on_up(B);
    p.building(t, C, [3; 32], None);
    p.on_up(C);
    // A gateway they share dies: all three go down in the same instant.
    let later = t + Duration::from_secs(30);
    for c in [A, B, C] {
        assert!(p.on_down(later, c));
    }
    assert!(p.all_down());
    assert!(p.wants_build(later).is_some(), "rebuilt at once");
    // The replacement fails: now it backs off.
    p.building(later, CircuitId(9), [2; 32], None);
    assert!(p.on_down(later, CircuitId(9)));
    assert_eq!(p.wants_build(later), None);
    assert!(p.wants_build(later + REBUILD_FIRST).is_some());
}

#[test]
fn pool_retires_old_circuits_once_their_flows_are_done() {
    let t = Instant::now();
    let life = Duration::from_secs(600);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut r = FlowRouter::new(Isolation::PerDestination);
    let mut p = CircuitPool::new(1, life, t, A, [1; 32], None);
    let site = tcp([198, 18, 9, 1], 1);
    assert_eq!(r.route(t, &mut rng, &site, &p, &[A]), Route::Via(A));
    let old = t + life;
    // The flow stays active until the circuit is old.
    let recent = old - Duration::from_secs(10);
    assert_eq!(r.route(recent, &mut rng, &site, &p, &[A]), Route::Via(A));
    let mut open = Vec::new();
    p.open(old, &mut open);
    assert_eq!(
        open,
        [A],
        "no fresh circuit yet: the old one still takes flows"
    );
    assert!(p.wants_build(old).is_some());
    p.building(old, B, [2; 32], None);
    p.on_up(B);
    p.open(old, &mut open);
    assert_eq!(open, [B], "new flows go to the fresh circuit");
    assert_eq!(p.retire(old, &mut r), [], "A still carries a flow");
    assert_eq!(r.route(old, &mut rng, &site, &p, &open), Route::Via(A));
    assert_eq!(
        p.retire(t + life * 2, &mut r),
        [A],
        "at twice its lifetime, regardless"
    );
    assert!(!p.contains(A));
    assert_eq!(r.flows_on(A), 0);
}

fn tcp_to(dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4([100, 64, 0, 2], dst, 64)
        .tcp(40000, dport, 1, 1000)
        .write(&mut out, b"x")
        .unwrap();
    out
}

#[test]
fn flows_go_only_to_exits_accepting_their_port() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let t = Instant::now();
    let mut p = pool_of(&[A], Some("accept 80,443"));
    p.building(t, B, [2; 32], Some("reject 25".parse().unwrap()));
    p.on_up(B);
    p.building(t, C, [3; 32], Some("accept 25".parse().unwrap()));
    p.on_up(C);
    let mut r = FlowRouter::new(Isolation::PerDestination);
    let site = [198, 18, 9, 1];
    for _ in 0..50 {
        let mut r = FlowRouter::new(Isolation::PerConnection);
        assert_eq!(
            r.route(t, &mut rng, &tcp_to(site, 25), &p, &[A, B, C]),
            Route::Via(C)
        );
        assert_ne!(
            via(r.route(t, &mut rng, &tcp_to(site, 22), &p, &[A, B, C])),
            A
        );
    }
    // A destination's flow moves when a new port is one its exit refuses.
    let first = via(r.route(t, &mut rng, &tcp_to(site, 443), &p, &[A, B]));
    assert_eq!(
        r.route(t, &mut rng, &tcp_to(site, 25), &p, &[A, B, C]),
        Route::Via(C)
    );
    assert_ne!(first, C);
    // ICMP has no port: any circuit.
    let mut ping = Vec::new();
    PacketBuilder::ipv4([100, 64, 0, 2], [198, 18, 9, 2], 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut ping, b"x")
        .unwrap();
    assert!(matches!(
        r.route(t, &mut rng, &ping, &p, &[A]),
        Route::Via(A)
    ));
}

#[test]
fn a_port_no_open_exit_accepts_asks_for_a_circuit_or_is_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let t = Instant::now();
    let mut p = CircuitPool::new(
        1,
        Duration::from_secs(600),
        t,
        A,
        [1; 32],
        Some("accept 80,443".parse().unwrap()),
    );
    let mut r = FlowRouter::new(Isolation::PerDestination);
    let smtp = tcp_to([198, 18, 9, 1], 25);
    assert_eq!(r.route(t, &mut rng, &smtp, &p, &[A]), Route::NoExit(25));
    assert_eq!(p.wants_build(t), None, "the target of 1 is met");
    assert!(p.demand(t, 25));
    assert!(p.demand(t, 26), "one demand at a time; the later waits");
    assert_eq!(
        p.wants_build(t),
        Some(Build {
            avoid: vec![[1; 32]],
            port: Some(25)
        })
    );
    p.building(t, B, [2; 32], Some("accept 80".parse().unwrap()));
    p.on_down(t, B);
    assert_eq!(
        p.wants_build(t + REBUILD_FIRST).map(|b| b.port),
        Some(Some(25)),
        "still wanted"
    );
    p.no_exit(t, 25);
    assert!(!p.demand(t, 25), "refused while held");
    assert!(!p.demand(t + NO_EXIT_HOLD - Duration::from_millis(1), 25));
    assert!(
        p.demand(t + NO_EXIT_HOLD, 25),
        "searched again after the hold"
    );
    p.building(
        t + NO_EXIT_HOLD,
        C,
        [3; 32],
        Some("reject 22".parse().unwrap()),
    );
    p.on_up(C);
    assert_eq!(p.wants_build(t + NO_EXIT_HOLD), None, "answered by C");
    assert_eq!(r.route(t, &mut rng, &smtp, &p, &[A, C]), Route::Via(C));
}

#[test]
fn choose_redraws_avoided_exits_a_bounded_number_of_times() {
    let build = Build {
        avoid: vec![[1; 32], [2; 32]],
        port: None,
    };
    let exit = |p: &[u8; 32]| Some(*p);
    let mut draws = vec![[1; 32], [2; 32], [3; 32], [4; 32]].into_iter();
    let got: Result<_, ()> = build.choose(|| Ok(draws.next().unwrap()), exit);
    assert_eq!(got, Ok([3; 32]));
    let mut n = 0;
    let got: Result<_, ()> = build.choose(
        || {
            n += 1;
            Ok([1; 32])
        },
        exit,
    );
    assert_eq!(got, Ok([1; 32]));
    assert_eq!(n, 1 + EXIT_REDRAWS);
    let failed: Result<[u8; 32], &str> = build.choose(|| Err("no path"), exit);
    assert_eq!(failed, Err("no path"));
}

/// The pool's next decision without an event: a failed build's back-off ending,
/// then its circuit ageing past its lifetime and past twice it.
#[test]
fn the_pool_says_when_it_next_decides() {
    let t = Instant::now();
    let life = Duration::from_secs(600);
    let mut p = CircuitPool::new(2, life, t, A, [1; 32], None);
    assert_eq!(p.poll_timeout(t), Some(t + life));
    p.building(t, B, [2; 32], None);
    assert!(p.on_down(t, B));
    assert_eq!(p.poll_timeout(t), Some(t + REBUILD_FIRST));
    assert!(p.wants_build(t + REBUILD_FIRST).is_some());
    assert_eq!(p.poll_timeout(t + REBUILD_FIRST), Some(t + life));
    assert_eq!(p.poll_timeout(t + life), Some(t + life * 2));
    assert_eq!(p.poll_timeout(t + life * 2), None);
}
