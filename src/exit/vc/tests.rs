// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use etherparse::PacketBuilder;
use proptest::prelude::*;

use super::*;
use crate::exit::policy::ExitPolicy;
use crate::exit::{Exit, ExitDue, ExitSettings, Owner, Verdict};
use crate::proto::addr::CLIENT_V4;
use crate::proto::ip;
use crate::proto::reorder::{REORDER_BYTES, REORDER_TIMEOUT};
use crate::proto::vc::{JOIN_LEN, VC_ID_LEN};

fn exit() -> Exit {
    Exit::new(ExitSettings {
        pool4: "100.96.0.0/12".parse().unwrap(),
        pool6: "fd00:96::/64".parse().unwrap(),
        policy: ExitPolicy::new(&[], &["198.18.4.2".parse().unwrap()]).unwrap(),
        max_flows: 64,
        max_pps: 10_000,
    })
}

fn legs(r: Result<Accepted, JoinError>) -> Result<u8, JoinError> {
    r.map(|a| a.legs)
}

fn join(vc: u8, max_legs: u8) -> [u8; JOIN_LEN] {
    Join {
        vc: VcId([vc; VC_ID_LEN]),
        max_legs,
    }
    .emit()
}

/// A UDP packet from the client whose payload names `n`.
fn udp(n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(CLIENT_V4.octets(), [198, 18, 5, 2], 64)
        .udp(4000, 443)
        .write(&mut out, &n.to_be_bytes())
        .unwrap();
    out
}

fn number(p: &[u8]) -> u32 {
    u32::from_be_bytes(p[p.len() - 4..].try_into().unwrap())
}

/// Packet `seq` of the VC, in from leg `c`, through the exit: the numbers it let
/// out and the source addresses they left with.
fn forward(x: &mut Exit, now: Instant, c: u64, seq: u32) -> Vec<(u32, IpAddr)> {
    let mut out = Vec::new();
    let Ok(owner) = x.from_leg(now, CircuitId(c), seq, udp(seq), &mut out) else {
        return Vec::new();
    };
    leave(x, now, owner, out)
}

fn leave(x: &mut Exit, now: Instant, owner: Owner, out: Vec<Vec<u8>>) -> Vec<(u32, IpAddr)> {
    out.into_iter()
        .map(|mut p| {
            assert_eq!(
                x.from_circuit(now, owner, &mut p, &mut Vec::new()),
                Verdict::Forward
            );
            (number(&p), ip::summarize(&p).unwrap().src)
        })
        .collect()
}

/// A reply from the internet to `to`: where the exit sends it.
fn reply(x: &mut Exit, to: IpAddr) -> Option<(CircuitId, Option<u32>)> {
    let mut p = Vec::new();
    let IpAddr::V4(to) = to else { panic!("v4") };
    PacketBuilder::ipv4([198, 18, 5, 2], to.octets(), 64)
        .udp(443, 4000)
        .write(&mut p, b"back")
        .unwrap();
    let owner = x.from_tun(&mut p)?;
    assert_eq!(ip::summarize(&p).unwrap().dst, IpAddr::V4(CLIENT_V4));
    x.route_back(Instant::now(), owner, &|_| None)
}

#[test]
fn legs_join_one_vc_and_share_its_address() {
    let (mut x, t) = (exit(), Instant::now());
    assert_eq!(legs(x.join(t, CircuitId(1), &join(7, 2), &|_| None)), Ok(1));
    assert_eq!(
        legs(x.join(t, CircuitId(2), &join(7, 4), &|_| None)),
        Ok(2),
        "max_legs of the first JOIN"
    );
    assert_eq!(
        x.join(t, CircuitId(1), &join(8, 2), &|_| None),
        Err(JoinError::AlreadyJoined)
    );
    assert_eq!(
        x.join(t, CircuitId(4), &join(9, 5), &|_| None),
        Err(JoinError::Malformed)
    );
    assert_eq!(
        x.join(t, CircuitId(4), &join(9, 0), &|_| None),
        Err(JoinError::Malformed)
    );
    assert_eq!(
        x.join(t, CircuitId(4), &[1, 2, 3], &|_| None),
        Err(JoinError::Malformed)
    );
    // A circuit that carried DATA cannot become a leg.
    let mut p = udp(0);
    assert_eq!(
        x.from_circuit(t, CircuitId(5), &mut p, &mut Vec::new()),
        Verdict::Forward
    );
    assert_eq!(
        x.join(t, CircuitId(5), &join(9, 2), &|_| None),
        Err(JoinError::CarriedData)
    );
    assert_eq!(x.stats().vc.refused, 5);
    assert_eq!((x.stats().vc.created, x.stats().vc.joined), (1, 2));

    // Packets from both legs, out of order, leave in order from one address.
    assert_eq!(forward(&mut x, t, 1, 1), []);
    let out = forward(&mut x, t, 2, 0);
    assert_eq!(out.iter().map(|o| o.0).collect::<Vec<_>>(), [0, 1]);
    let addr = out[0].1;
    assert_eq!(out[1].1, addr);
    assert_ne!(
        addr,
        IpAddr::from([100, 96, 0, 1]),
        "not circuit 5's address"
    );
    assert_eq!(x.stats().vc.reorder.reordered, 1);
    // Replies go on the leg of the latest forward packet, numbered from 0.
    assert_eq!(reply(&mut x, addr), Some((CircuitId(2), Some(0))));
    assert_eq!(forward(&mut x, t, 1, 2).len(), 1);
    assert_eq!(reply(&mut x, addr), Some((CircuitId(1), Some(1))));
    // DATA on a leg and VDATA off one are dropped and counted.
    let mut p = udp(9);
    assert_eq!(
        x.from_circuit(t, CircuitId(1), &mut p, &mut Vec::new()),
        Verdict::Drop
    );
    assert!(x
        .from_leg(t, CircuitId(5), 3, udp(3), &mut Vec::new())
        .is_err());
    assert_eq!(x.stats().vc.misrouted, 2);

    // A JOIN to the full VC replaces the leg whose latest packet is the oldest (1's
    // at t + 1 ms, 2's at t + 2 ms): the client found it dead.
    assert_eq!(forward(&mut x, t + STEP, 1, 3).len(), 1);
    assert_eq!(forward(&mut x, t + 2 * STEP, 2, 4).len(), 1);
    let accepted = x.join(t + 3 * STEP, CircuitId(3), &join(7, 2), &|_| None);
    assert_eq!(
        accepted,
        Ok(Accepted {
            legs: 2,
            replaced: Some(CircuitId(1))
        })
    );
    let vc = x.vcs().vc_of(CircuitId(3)).unwrap();
    assert_eq!(x.vcs().legs(&vc), [CircuitId(2), CircuitId(3)]);
    assert_eq!(x.vcs().vc_of(CircuitId(1)), None);
    assert_eq!(x.stats().vc.legs_replaced, 1);
    assert_eq!(forward(&mut x, t, 3, 5), [(5, addr)]);
}

#[test]
fn a_vc_outlives_its_legs_for_the_linger_time() {
    let (mut x, t) = (exit(), Instant::now());
    x.join(t, CircuitId(1), &join(7, 2), &|_| None).unwrap();
    x.join(t, CircuitId(2), &join(7, 2), &|_| None).unwrap();
    let addr = forward(&mut x, t, 1, 0)[0].1;
    // Packet 2 waits for 1, which leg 1 may still bring.
    assert_eq!(forward(&mut x, t, 2, 2), []);
    assert!(x.vcs().held_bytes() > 0);
    // Leg 1 dies: replies move to leg 2 at once, and its address stays.
    assert_eq!(x.close(t, CircuitId(1)), None);
    assert_eq!(reply(&mut x, addr), Some((CircuitId(2), Some(0))));
    // A packet waiting for a gap when the last leg dies is dropped with it.
    assert_eq!(x.close(t, CircuitId(2)), None);
    assert_eq!(x.vcs().held_bytes(), 0);
    assert_eq!(reply(&mut x, addr), None, "no leg to send on");
    assert_eq!(x.poll_timeout(), Some(t + VC_LINGER));
    // The client rejoins in time with a new leg: same address, numbers go on.
    let later = t + VC_LINGER / 2;
    assert_eq!(legs(x.join(t, CircuitId(3), &join(7, 2), &|_| None)), Ok(1));
    assert_eq!(x.poll_timeout(), None);
    assert_eq!(forward(&mut x, later, 3, 3), [(3, addr)]);
    assert_eq!(reply(&mut x, addr), Some((CircuitId(3), Some(1))));
    // Without a leg for VC_LINGER it ends and hands its address back.
    assert_eq!(x.close(later, CircuitId(3)), None);
    assert_eq!(x.handle_timeout(later + VC_LINGER - STEP), None);
    let Some(ExitDue::Closed(Some(closed))) = x.handle_timeout(later + VC_LINGER) else {
        panic!("the VC expires")
    };
    assert_eq!(IpAddr::V4(closed.v4), addr);
    assert_eq!(
        (x.vcs().len(), x.circuits(), x.stats().vc.expired),
        (0, 0, 1)
    );
    assert_eq!(
        legs(x.join(t, CircuitId(4), &join(7, 2), &|_| None)),
        Ok(1),
        "a new VC of that id"
    );
}

const STEP: Duration = Duration::from_millis(1);

/// Each leg keeps its packets in order: once every leg has brought a number past a
/// gap, the gap is given up at once instead of at the timeout.
#[test]
fn a_gap_every_leg_passed_is_given_up_at_once() {
    let (mut x, t) = (exit(), Instant::now());
    x.join(t, CircuitId(1), &join(7, 2), &|_| None).unwrap();
    x.join(t, CircuitId(2), &join(7, 2), &|_| None).unwrap();
    let nums = |v: Vec<(u32, IpAddr)>| v.into_iter().map(|o| o.0).collect::<Vec<_>>();
    assert_eq!(nums(forward(&mut x, t, 1, 0)), [0]);
    assert!(
        nums(forward(&mut x, t, 1, 2)).is_empty(),
        "1 may be on leg 2"
    );
    assert_eq!(
        nums(forward(&mut x, t, 2, 4)),
        [2],
        "leg 2 passed 1; 3 may be on leg 1"
    );
    assert_eq!(nums(forward(&mut x, t, 1, 5)), [4, 5]);
    assert_eq!(x.poll_timeout(), None);
    assert_eq!(x.stats().vc.reorder.lost, 2);
}

#[test]
fn a_gap_is_given_up_at_the_reorder_timeout() {
    let (mut x, t) = (exit(), Instant::now());
    x.join(t, CircuitId(1), &join(7, 2), &|_| None).unwrap();
    x.join(t, CircuitId(2), &join(7, 2), &|_| None).unwrap();
    // Leg 2 has brought nothing yet: number 0 may be on it.
    assert_eq!(forward(&mut x, t, 1, 1), []);
    assert_eq!(forward(&mut x, t + STEP, 1, 2), []);
    assert_eq!(x.poll_timeout(), Some(t + REORDER_TIMEOUT));
    assert_eq!(x.handle_timeout(t + REORDER_TIMEOUT - STEP), None);
    let Some(ExitDue::Packets(owner, out)) = x.handle_timeout(t + REORDER_TIMEOUT) else {
        panic!("the held packets come out")
    };
    let left = leave(&mut x, t, owner, out);
    assert_eq!(left.iter().map(|o| o.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!((x.poll_timeout(), x.vcs().held_bytes()), (None, 0));
    assert_eq!(x.stats().vc.reorder.lost, 1);
}

/// Many VCs that each hold what their own bound allows stay within the exit's
/// budget together: the later ones give up their gaps instead.
#[test]
fn all_reorder_buffers_share_one_budget() {
    let mut v = Vcs::default();
    let t = Instant::now();
    let vcs = VC_REORDER_BYTES / REORDER_BYTES + 4;
    let mut out = Vec::new();
    for i in 0..vcs as u64 {
        let mut id = [0u8; VC_ID_LEN];
        id[..8].copy_from_slice(&i.to_be_bytes());
        let j = Join {
            vc: VcId(id),
            max_legs: 2,
        };
        // Two legs, and packets on one: the gap may be on the other.
        for leg in [2 * i, 2 * i + 1] {
            v.join(t, CircuitId(leg), &j.emit(), false, &|_| None)
                .unwrap();
        }
        // Just under its own bound: 800 packets of 1,300 bytes.
        for seq in 1..=800 {
            let _ = v.forward(t, CircuitId(2 * i), seq, vec![0; 1300], &mut out);
            assert!(v.held_bytes() <= VC_REORDER_BYTES);
        }
    }
    assert!(v.held_bytes() > VC_REORDER_BYTES - REORDER_BYTES);
    assert!(!out.is_empty(), "gaps were given up");
}

#[derive(Debug, Clone)]
enum Op {
    Join(u64, u8, u8),
    Forward(u64, u32, usize),
    Close(u64),
    Back(u8),
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..6, 0u8..3, 0u8..6).prop_map(|(c, v, m)| Op::Join(c, v, m)),
        (0u64..6, prop_oneof![0u32..300, any::<u32>()], 1usize..1400)
            .prop_map(|(c, s, l)| Op::Forward(c, s, l)),
        (0u64..6).prop_map(Op::Close),
        (0u8..3).prop_map(Op::Back),
        (0u64..40_000).prop_map(Op::Wait),
    ]
}

proptest! {
    /// Whatever legs and numbers a client with valid keys sends: legs never exceed
    /// their VC's bound, a packet comes out at most once and in order per VC, the
    /// held bytes are accounted, and backward packets go on a live leg of their VC.
    #[test]
    fn hostile_legs_and_numbers_keep_the_bounds(ops in proptest::collection::vec(op(), 1..300)) {
        let mut v = Vcs::default();
        let mut t = Instant::now();
        let mut last: HashMap<VcId, u32> = HashMap::new();
        let mut closed = std::collections::HashSet::new();
        let id = |n: u8| VcId([n; VC_ID_LEN]);
        for op in ops {
            let mut out = Vec::new();
            let mut from = None;
            match op {
                Op::Join(c, n, m) => {
                    if closed.contains(&c) {
                        continue;
                    }
                    let j = Join { vc: id(n), max_legs: m }.emit();
                    if let Ok(a) = v.join(t, CircuitId(c), &j, false, &|_| None) {
                        prop_assert!(usize::from(a.legs) == v.legs(&id(n)).len());
                        if let Some(r) = a.replaced {
                            prop_assert!(v.vc_of(r).is_none());
                        }
                    }
                }
                Op::Forward(c, seq, len) => {
                    let mut p = seq.to_be_bytes().to_vec();
                    p.resize(len.max(4), 0);
                    from = v.vc_of(CircuitId(c));
                    let _ = v.forward(t, CircuitId(c), seq, p, &mut out);
                }
                Op::Close(c) => {
                    // A VC left without legs drops what it held: its numbers restart
                    // after the gap, which may be any distance on.
                    if let Some(vc) = v.leg_closed(t, CircuitId(c)) {
                        if v.legs(&vc).is_empty() {
                            last.remove(&vc);
                        }
                    }
                    closed.insert(c);
                }
                Op::Back(n) => {
                    if let Some((leg, _)) = v.backward(&id(n), t, &|_| None) {
                        prop_assert!(v.legs(&id(n)).contains(&leg));
                    }
                }
                Op::Wait(ms) => {
                    t += Duration::from_millis(ms);
                    while let Some(due) = v.handle_timeout(t) {
                        match due {
                            Due::Packets(vc, p) => {
                                for p in p {
                                    let n = u32::from_be_bytes(p[..4].try_into().unwrap());
                                    if let Some(&prev) = last.get(&vc) {
                                        prop_assert!(n.wrapping_sub(prev).wrapping_sub(1) < 1 << 31);
                                    }
                                    last.insert(vc, n);
                                }
                            }
                            Due::Expired(vc) => {
                                last.remove(&vc);
                            }
                        }
                    }
                }
            }
            if let Some(vc) = from {
                for p in &out {
                    let n = u32::from_be_bytes(p[..4].try_into().unwrap());
                    if let Some(&prev) = last.get(&vc) {
                        prop_assert!(n.wrapping_sub(prev).wrapping_sub(1) < 1 << 31, "in order, once");
                    }
                    last.insert(vc, n);
                }
            }
            prop_assert!(v.held_bytes() <= VC_REORDER_BYTES);
            for n in 0..3 {
                let legs = v.legs(&id(n));
                prop_assert!(legs.len() <= usize::from(crate::proto::vc::MAX_LEGS));
            }
            prop_assert!(v.len() <= 3);
        }
    }
}

/// Replies follow the client's latest choice while that leg is heard; once it has
/// been silent for `LEG_STALE` while another leg's KEEPALIVEs arrive, they go on the
/// leg heard last (a client whose TCP waits for a retransmission sends nothing that
/// would move them). A JOIN to the full VC then replaces the leg silent longest.
#[test]
fn replies_leave_a_leg_silent_while_another_is_heard() {
    let (mut x, t) = (exit(), Instant::now());
    x.join(t, CircuitId(1), &join(7, 2), &|_| None).unwrap();
    x.join(t, CircuitId(2), &join(7, 2), &|_| None).unwrap();
    let mut out = Vec::new();
    let owner = x.from_leg(t, CircuitId(1), 0, udp(0), &mut out).unwrap();
    x.from_leg(t, CircuitId(2), 1, udp(1), &mut out).unwrap();
    // Leg 2 carried the latest packet, then went silent; leg 1's KEEPALIVEs arrive.
    let keepalive = t + LEG_STALE;
    let heard = move |c: CircuitId| (c == CircuitId(1)).then_some(keepalive);
    let soon = t + LEG_STALE - STEP;
    assert_eq!(
        x.route_back(soon, owner, &heard),
        Some((CircuitId(2), Some(0)))
    );
    let late = t + LEG_STALE;
    assert_eq!(
        x.route_back(late, owner, &heard),
        Some((CircuitId(1), Some(1)))
    );
    let accepted = x.join(late, CircuitId(3), &join(7, 2), &heard).unwrap();
    assert_eq!(accepted.replaced, Some(CircuitId(2)));
}
