// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use etherparse::{IpHeaders, PacketHeaders, TransportHeader};

const APP: [u8; 4] = [100, 64, 0, 2];
const SERVER: [u8; 4] = [198, 18, 9, 2];
const APP6: [u8; 16] = [0xfd, 0, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const SERVER6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

/// Flags of an outgoing segment.
#[derive(Clone, Copy)]
enum F {
    Syn,
    Ack(u32),
    Rst,
    /// Neither SYN nor ACK (a bare FIN, say).
    Bare,
}

fn seg(sport: u16, f: F) -> Segment {
    let mut out = Vec::new();
    let b = PacketBuilder::ipv4(APP, SERVER, 64).tcp(sport, 80, 7, 1000);
    let b = match f {
        F::Syn => b.syn(),
        F::Ack(n) => b.ack(n),
        F::Rst => b.rst(),
        F::Bare => b.fin(),
    };
    b.write(&mut out, b"x").unwrap();
    Segment::parse(&out).expect("a TCP segment")
}

/// The RST's addresses, ports and sequence number, after checking it is a bare RST
/// with a valid TCP checksum.
fn read_rst(pkt: &[u8]) -> (IpAddr, u16, IpAddr, u16, u32) {
    let h = PacketHeaders::from_ip_slice(pkt).unwrap();
    let Some(TransportHeader::Tcp(tcp)) = h.transport else {
        panic!("not TCP")
    };
    assert!(tcp.rst && !tcp.syn && !tcp.ack && !tcp.fin);
    assert!(h.payload.slice().is_empty());
    let (src, dst, sum) = match h.net.unwrap() {
        etherparse::NetHeaders::Ipv4(ip, _) => (
            IpAddr::from(ip.source),
            IpAddr::from(ip.destination),
            tcp.calc_checksum_ipv4(&ip, &[]).unwrap(),
        ),
        etherparse::NetHeaders::Ipv6(ip, _) => (
            IpAddr::from(ip.source),
            IpAddr::from(ip.destination),
            tcp.calc_checksum_ipv6(&ip, &[]).unwrap(),
        ),
        other => panic!("{other:?}"),
    };
    assert_eq!(tcp.checksum, sum, "TCP checksum");
    if let Ok((IpHeaders::Ipv4(ip, _), _)) = IpHeaders::from_slice(pkt) {
        assert_eq!(
            ip.header_checksum,
            ip.calc_header_checksum(),
            "IPv4 checksum"
        );
    }
    (
        src,
        tcp.source_port,
        dst,
        tcp.destination_port,
        tcp.sequence_number,
    )
}

#[test]
fn a_lost_circuit_resets_its_connections_at_the_last_ack() {
    let t = Instant::now();
    let mut conns = Connections::new();
    conns.carried(t, &seg(40000, F::Syn), CircuitId(1));
    conns.carried(t, &seg(40000, F::Ack(1000)), CircuitId(1));
    conns.carried(t, &seg(40000, F::Ack(5000)), CircuitId(1));
    conns.carried(t, &seg(40000, F::Bare), CircuitId(1));
    conns.carried(t, &seg(40001, F::Ack(77)), CircuitId(2));
    let resets = conns.circuit_down(t, CircuitId(1));
    assert_eq!(resets.len(), 1);
    assert_eq!(
        read_rst(&resets[0]),
        (SERVER.into(), 80, APP.into(), 40000, 5000),
        "from the server to the application, at its last acknowledgment"
    );
    assert!(conns.circuit_down(t, CircuitId(1)).is_empty(), "reset once");
    let other = conns.circuit_down(t, CircuitId(2));
    assert_eq!(read_rst(&other[0]).4, 77);
}

#[test]
fn late_segments_of_a_reset_connection_are_answered_and_never_carried() {
    let t = Instant::now();
    let mut conns = Connections::new();
    let mut answer = vec![1, 2, 3];
    conns.carried(t, &seg(40000, F::Ack(1000)), CircuitId(1));
    assert!(!conns.refuse(t, &seg(40000, F::Ack(1000)), &mut answer));
    assert!(answer.is_empty());
    conns.circuit_down(t, CircuitId(1));
    // The challenge ACK carries the application's exact next expected byte.
    assert!(conns.refuse(t, &seg(40000, F::Ack(1234)), &mut answer));
    assert_eq!(read_rst(&answer).4, 1234);
    assert!(conns.refuse(t, &seg(40000, F::Rst), &mut answer));
    assert!(answer.is_empty(), "an RST is not answered");
    assert!(conns.refuse(t, &seg(40000, F::Bare), &mut answer));
    assert!(answer.is_empty(), "nothing to acknowledge, no answer");
    assert!(
        !conns.refuse(t, &seg(40001, F::Ack(1)), &mut answer),
        "other ports"
    );
    // A new connection on the same ports goes out, and is tracked anew.
    assert!(!conns.refuse(t, &seg(40000, F::Syn), &mut answer));
    conns.carried(t, &seg(40000, F::Syn), CircuitId(3));
    assert!(!conns.refuse(t, &seg(40000, F::Ack(9)), &mut answer));
    assert!(
        conns.circuit_down(t, CircuitId(3)).is_empty(),
        "still opening"
    );
}

#[test]
fn opening_connections_are_forgotten_not_reset() {
    let t = Instant::now();
    let mut conns = Connections::new();
    let mut answer = Vec::new();
    conns.carried(t, &seg(40000, F::Syn), CircuitId(1));
    assert!(conns.circuit_down(t, CircuitId(1)).is_empty());
    assert!(conns.is_empty());
    assert!(!conns.refuse(t, &seg(40000, F::Syn), &mut answer));
}

#[test]
fn closed_connections_are_forgotten() {
    let t = Instant::now();
    let mut conns = Connections::new();
    conns.carried(t, &seg(40000, F::Ack(1)), CircuitId(1));
    conns.carried(t, &seg(40000, F::Rst), CircuitId(1));
    assert!(conns.is_empty());
    assert!(conns.circuit_down(t, CircuitId(1)).is_empty());
}

#[test]
fn resets_are_held_then_forgotten_and_idle_connections_too() {
    let t = Instant::now();
    let mut conns = Connections::new();
    let mut answer = Vec::new();
    conns.carried(t, &seg(40000, F::Ack(1)), CircuitId(1));
    conns.carried(t, &seg(40001, F::Ack(1)), CircuitId(2));
    conns.circuit_down(t, CircuitId(1));
    let late = t + RESET_HOLD - Duration::from_secs(1);
    assert!(conns.refuse(late, &seg(40000, F::Ack(2)), &mut answer));
    let later = late + RESET_HOLD;
    assert!(!conns.refuse(later, &seg(40000, F::Ack(2)), &mut answer));
    assert_eq!(conns.len(), 1, "the live one stays within FLOW_IDLE");
    assert!(!conns.refuse(t + FLOW_IDLE * 2, &seg(40002, F::Ack(2)), &mut answer));
    assert!(conns.is_empty());
}

#[test]
fn ipv6_connections_are_reset_too() {
    let t = Instant::now();
    let mut conns = Connections::new();
    let mut out = Vec::new();
    PacketBuilder::ipv6(APP6, SERVER6, 64)
        .tcp(40000, 443, 7, 1000)
        .ack(0xFFFF_FFFF)
        .write(&mut out, b"")
        .unwrap();
    conns.carried(t, &Segment::parse(&out).unwrap(), CircuitId(1));
    let resets = conns.circuit_down(t, CircuitId(1));
    assert_eq!(
        read_rst(&resets[0]),
        (SERVER6.into(), 443, APP6.into(), 40000, 0xFFFF_FFFF)
    );
}

#[test]
fn only_tcp_is_a_segment() {
    let mut out = Vec::new();
    PacketBuilder::ipv4(APP, SERVER, 64)
        .udp(5353, 53)
        .write(&mut out, b"q")
        .unwrap();
    assert_eq!(Segment::parse(&out), None);
    assert_eq!(Segment::parse(&[0x45, 0, 0]), None);
    assert_eq!(Segment::parse(&[]), None);
}
