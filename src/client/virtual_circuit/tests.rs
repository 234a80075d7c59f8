// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::node::NodeConfig;

fn vc(want: u8) -> (VirtualCircuit, Node, ChaCha20Rng) {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let v = VirtualCircuit::new(&mut rng, want, [9; 32]);
    (v, Node::new(NodeConfig::default()), rng)
}

#[test]
fn legs_wanted_and_gateways_to_avoid() {
    let (mut v, _, _) = vc(9);
    assert_eq!(v.want, MAX_LEGS, "at most MAX_LEGS");
    let (mut one, _, _) = vc(0);
    assert_eq!(one.want, 1, "at least one");
    one.add_leg(CircuitId(1), vec![[1; 32], [9; 32]]);
    assert!(!one.wants_leg());
    v.add_leg(CircuitId(1), vec![[1; 32], [2; 32], [9; 32]]);
    v.add_leg(CircuitId(2), vec![[3; 32], [4; 32], [9; 32]]);
    assert!(v.wants_leg());
    assert_eq!(
        v.avoid(),
        [[1; 32], [2; 32], [3; 32], [4; 32]],
        "not the exit"
    );
    assert!(v.on_down(CircuitId(1)));
    assert!(!v.on_down(CircuitId(1)));
    assert_eq!(v.avoid(), [[3; 32], [4; 32]]);
    assert_eq!(v.stats().legs_down, 1);
}

/// A JOINED only makes a joining leg live; anything else, and VDATA off a live leg,
/// is dropped and counted (a hostile exit can send them).
#[test]
fn unexpected_joined_and_vdata_are_counted() {
    let (mut v, mut node, mut rng) = vc(2);
    let t = Instant::now();
    v.add_leg(CircuitId(1), vec![[1; 32], [9; 32]]);
    let ok = Joined { legs: 1 }.emit();
    assert!(!v.on_joined(CircuitId(1), &ok), "not joining yet");
    assert!(
        v.on_up(t, &mut node, &mut rng, CircuitId(1)).is_err(),
        "no such circuit in the node"
    );
    assert_eq!(v.legs()[0].state, LegState::Joining(t));
    assert!(!v.on_joined(CircuitId(1), &[]), "malformed");
    assert!(!v.on_joined(CircuitId(7), &ok), "not a leg");
    let mut out = Vec::new();
    assert!(
        v.receive(t, CircuitId(1), 0, vec![1], &mut out).is_err(),
        "not live"
    );
    assert!(
        v.wants_leg() && !v.builds_leg(),
        "not before the first leg joined"
    );
    assert!(v.on_joined(CircuitId(1), &ok));
    assert!(!v.on_joined(CircuitId(1), &ok), "joined already");
    assert!(v.is_up());
    v.receive(t, CircuitId(1), 0, vec![0], &mut out).unwrap();
    let far = v.receive(t, CircuitId(1), 5000, vec![1], &mut out);
    assert!(far.is_ok(), "moves the window");
    let late = v.receive(t, CircuitId(1), 5, vec![1], &mut out);
    assert_eq!(late.map_err(|e| e.0), Err(Some(Rejected::Late)));
    assert_eq!(out, [vec![0], vec![1]], "the only leg passed the gaps");
    let s = v.stats();
    assert_eq!((s.unexpected, s.joined, s.reorder.out_of_window), (5, 1, 1));
}

/// A JOIN unanswered for `JOIN_TIMEOUT` ends its leg; legs that all went silent
/// together are not declared dead (the client's own network is down, not a route).
#[test]
fn join_timeout_and_no_verdict_when_every_leg_is_silent() {
    let (mut v, mut node, mut rng) = vc(2);
    let t = Instant::now();
    for c in [1, 2] {
        v.add_leg(CircuitId(c), vec![[c as u8; 32], [9; 32]]);
        let _ = v.on_up(t, &mut node, &mut rng, CircuitId(c));
    }
    v.on_joined(CircuitId(2), &Joined { legs: 1 }.emit());
    assert_eq!(v.route(t, &node, 100), Some((CircuitId(2), 0)));
    assert_eq!(v.poll_timeout(&node), Some(t), "probe the live leg now");
    let (mut out, mut sent) = (Vec::new(), Vec::new());
    let later = t + JOIN_TIMEOUT;
    assert_eq!(
        v.handle_timeout(later, &mut node, &mut rng, &mut out, &mut sent),
        [(CircuitId(1), LegEnd::JoinTimeout)]
    );
    // Leg 2 never heard anything (the node has no such circuit) and no other leg
    // did either: it stays.
    assert_eq!(v.legs().len(), 1);
    assert!(v.wants_leg() && v.builds_leg());
    v.add_leg(CircuitId(3), vec![[3; 32], [9; 32]]);
    assert!(!v.builds_leg(), "one at a time");
    assert_eq!(v.stats().legs_dead, 1);
    assert_eq!(
        v.route(later, &node, 100),
        Some((CircuitId(2), 1)),
        "numbers go on"
    );
}
