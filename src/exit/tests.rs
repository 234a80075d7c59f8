// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::proto::addr::{CLIENT_V4, CLIENT_V6, EXIT_V4};
use etherparse::PacketBuilder;

fn exit(pool4: &str, max_flows: usize, max_pps: u32) -> Exit {
    Exit::new(ExitSettings {
        pool4: pool4.parse().unwrap(),
        pool6: "fd00:96::/64".parse().unwrap(),
        policy: ExitPolicy::new(&[], &["198.18.4.2".parse().unwrap()]).unwrap(),
        max_flows,
        max_pps,
    })
}

fn udp(dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(CLIENT_V4.octets(), dst, 64)
        .udp(sport, dport)
        .write(&mut out, b"hello")
        .unwrap();
    out
}

fn src(p: &[u8]) -> IpAddr {
    ip::summarize(p).unwrap().src
}

#[test]
fn pool_addresses_fresh_first_then_oldest_freed() {
    // A /30 has two hosts: .1 and .2.
    let mut x = exit("100.96.0.0/30", 8, 100);
    let t = Instant::now();
    let mut a = Vec::new();
    for c in 0..3u64 {
        let mut p = udp([198, 18, 0, 1], 1000, 53);
        let v = x.from_circuit(t, CircuitId(c), &mut p, &mut a);
        if c < 2 {
            assert_eq!(v, Verdict::Forward);
            assert_eq!(src(&p), IpAddr::from([100, 96, 0, 1 + c as u8]));
        } else {
            assert_eq!(v, Verdict::Drop, "pool exhausted");
        }
    }
    assert_eq!(x.stats().dropped_pool_exhausted, 1);
    let one = x.close(t, CircuitId(1)).unwrap();
    let zero = x.close(t, CircuitId(0)).unwrap();
    assert_eq!(one.v4, Ipv4Addr::new(100, 96, 0, 2));
    assert_eq!(x.close(t, CircuitId(0)), None);
    // Closed but not released (the kernel may still track their flows): not reused.
    let mut p = udp([198, 18, 0, 1], 1000, 53);
    assert_eq!(
        x.from_circuit(t, CircuitId(7), &mut p, &mut a),
        Verdict::Drop
    );
    assert_eq!(x.stats().dropped_pool_exhausted, 2);
    let json = serde_json::to_value(x.stats()).unwrap();
    assert_eq!(
        json["dropped_pool_exhausted"], 2,
        "as a status report shows it"
    );
    x.release(one);
    x.release(zero);
    let mut p = udp([198, 18, 0, 1], 1000, 53);
    assert_eq!(
        x.from_circuit(t, CircuitId(7), &mut p, &mut a),
        Verdict::Forward
    );
    assert_eq!(
        src(&p),
        IpAddr::from([100, 96, 0, 2]),
        "longest-freed first"
    );
}

#[test]
fn replies_map_back_and_strangers_drop() {
    let mut x = exit("100.96.0.0/12", 8, 100);
    let t = Instant::now();
    let mut a = Vec::new();
    let mut p = udp([198, 18, 0, 1], 1000, 80);
    assert_eq!(
        x.from_circuit(t, CircuitId(5), &mut p, &mut a),
        Verdict::Forward
    );
    let mut reply = Vec::new();
    PacketBuilder::ipv4([198, 18, 0, 1], [100, 96, 0, 1], 64)
        .udp(80, 1000)
        .write(&mut reply, b"hi")
        .unwrap();
    assert_eq!(x.from_tun(&mut reply), Some(Owner::Circuit(CircuitId(5))));
    assert_eq!(ip::summarize(&reply).unwrap().dst, IpAddr::V4(CLIENT_V4));
    let mut stray = Vec::new();
    PacketBuilder::ipv4([198, 18, 0, 1], [100, 96, 0, 9], 64)
        .udp(80, 1000)
        .write(&mut stray, b"hi")
        .unwrap();
    assert_eq!(x.from_tun(&mut stray), None);
    assert_eq!(x.stats().dropped_no_circuit, 1);
}

#[test]
fn flow_and_rate_limits() {
    let mut x = exit("100.96.0.0/12", 2, 5);
    let t = Instant::now();
    let mut a = Vec::new();
    let mut verdicts = Vec::new();
    for port in [1000, 1001, 1002, 1000] {
        let mut p = udp([198, 18, 0, 1], port, 80);
        verdicts.push(x.from_circuit(t, CircuitId(1), &mut p, &mut a));
    }
    assert_eq!(
        verdicts,
        [
            Verdict::Forward,
            Verdict::Forward,
            Verdict::Drop,
            Verdict::Forward
        ],
        "a third flow is refused, known flows pass"
    );
    assert_eq!(x.stats().dropped_flows, 1);
    // 5 packets per second with a burst of 5: the 5th and 6th in the same instant
    // are refused, one second later they pass again.
    let mut p = udp([198, 18, 0, 1], 1000, 80);
    assert_eq!(
        x.from_circuit(t, CircuitId(1), &mut p, &mut a),
        Verdict::Forward
    );
    let mut p = udp([198, 18, 0, 1], 1000, 80);
    assert_eq!(
        x.from_circuit(t, CircuitId(1), &mut p, &mut a),
        Verdict::Drop
    );
    assert_eq!(x.stats().dropped_rate, 1);
    let mut p = udp([198, 18, 0, 1], 1000, 80);
    let later = t + Duration::from_secs(1);
    assert_eq!(
        x.from_circuit(later, CircuitId(1), &mut p, &mut a),
        Verdict::Forward
    );
    // Another circuit has its own budget.
    let mut p = udp([198, 18, 0, 1], 1000, 80);
    assert_eq!(
        x.from_circuit(t, CircuitId(2), &mut p, &mut a),
        Verdict::Forward
    );
}

#[test]
fn policy_rejects_with_icmp_but_tunnel_dns_passes() {
    let mut x = exit("100.96.0.0/12", 8, 100);
    let t = Instant::now();
    let mut a = Vec::new();
    for (dst, port, want) in [
        ([198, 18, 0, 1], 25, Verdict::Answer),
        ([198, 18, 4, 2], 80, Verdict::Answer),
        ([10, 0, 0, 1], 80, Verdict::Answer),
        ([100, 96, 0, 2], 80, Verdict::Answer),
        ([198, 18, 0, 1], 443, Verdict::Forward),
        (DNS_V4.octets(), 53, Verdict::Forward),
        (DNS_V4.octets(), 80, Verdict::Answer),
    ] {
        let mut p = udp(dst, 1000, port);
        a.clear();
        assert_eq!(
            x.from_circuit(t, CircuitId(1), &mut p, &mut a),
            want,
            "{dst:?}:{port}"
        );
        if want == Verdict::Answer {
            let s = ip::summarize(&a).unwrap();
            assert_eq!((s.src, s.dst), (IpAddr::V4(EXIT_V4), IpAddr::V4(CLIENT_V4)));
            assert!(s.icmp_error);
        }
    }
    assert_eq!(x.stats().rejected_policy, 5);
}

#[test]
fn clients_cannot_reach_each_other_through_a_public_pool() {
    // A pool outside every private range, so the policy alone would let it through.
    let mut x = Exit::new(ExitSettings {
        pool4: "198.51.100.0/24".parse().unwrap(),
        pool6: "2001:db8:96::/64".parse().unwrap(),
        policy: ExitPolicy::new(&["accept *:*".into()], &[]).unwrap(),
        max_flows: 8,
        max_pps: 100,
    });
    let t = Instant::now();
    let mut a = Vec::new();
    let mut p = udp([198, 18, 0, 1], 1000, 80);
    assert_eq!(
        x.from_circuit(t, CircuitId(1), &mut p, &mut a),
        Verdict::Forward
    );
    let (b4, _) = x.addresses(CircuitId(1)).unwrap();
    assert!(x.cfg.policy.allows(IpAddr::V4(b4), Some(80)));
    let mut p = udp(b4.octets(), 1000, 80);
    assert_eq!(
        x.from_circuit(t, CircuitId(2), &mut p, &mut a),
        Verdict::Answer
    );
    let mut v6 = Vec::new();
    PacketBuilder::ipv6(
        CLIENT_V6.octets(),
        "2001:db8:96::1".parse::<Ipv6Addr>().unwrap().octets(),
        64,
    )
    .udp(1000, 80)
    .write(&mut v6, b"hello")
    .unwrap();
    assert_eq!(
        x.from_circuit(t, CircuitId(2), &mut v6, &mut a),
        Verdict::Answer
    );
    assert_eq!(x.stats().rejected_policy, 2);
}

#[test]
fn a_new_policy_decides_from_the_next_packet_on() {
    let mut x = exit("100.96.0.0/12", 8, 100);
    let t = Instant::now();
    let mut a = Vec::new();
    let mut p = udp([198, 18, 0, 1], 1000, 8080);
    assert_eq!(
        x.from_circuit(t, CircuitId(1), &mut p, &mut a),
        Verdict::Forward
    );
    let own = ["198.18.4.2".parse().unwrap()];
    x.set_policy(ExitPolicy::new(&["reject *:8080".into()], &own).unwrap());
    // The same flow, already open: refused now, with the ICMP answer.
    let mut p = udp([198, 18, 0, 1], 1000, 8080);
    assert_eq!(
        x.from_circuit(t, CircuitId(1), &mut p, &mut a),
        Verdict::Answer
    );
    let mut p = udp([198, 18, 0, 1], 1000, 8081);
    assert_eq!(
        x.from_circuit(t, CircuitId(1), &mut p, &mut a),
        Verdict::Forward
    );
    assert_eq!(x.stats().rejected_policy, 1);
    x.set_policy(ExitPolicy::new(&[], &own).unwrap());
    let mut p = udp([198, 18, 0, 1], 1000, 8080);
    assert_eq!(
        x.from_circuit(t, CircuitId(1), &mut p, &mut a),
        Verdict::Forward
    );
}
