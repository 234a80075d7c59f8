// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::proto::ip::*;
use etherparse::{
    icmpv4, icmpv6, Icmpv4Type, Icmpv6Type, IpHeaders, Ipv4HeaderSlice, NetSlice, PacketBuilder,
    PacketBuilderStep, SlicedPacket, TcpOptionElement, TcpSlice, TransportSlice,
};
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};

const CLIENT4: [u8; 4] = [10, 77, 0, 2];
const POOL4: [u8; 4] = [100, 64, 3, 9];
const REMOTE4: [u8; 4] = [93, 184, 216, 34];
const CLIENT6: [u8; 16] = [0xfd, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const POOL6: [u8; 16] = [0xfd, 0x64, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 9];
const REMOTE6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x34];

fn a4(octets: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(octets))
}

fn a6(octets: [u8; 16]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(octets))
}

/// (client, pool, remote) of one family.
fn family(v6: bool) -> (IpAddr, IpAddr, IpAddr) {
    if v6 {
        (a6(CLIENT6), a6(POOL6), a6(REMOTE6))
    } else {
        (a4(CLIENT4), a4(POOL4), a4(REMOTE4))
    }
}

fn ip(src: IpAddr, dst: IpAddr) -> PacketBuilderStep<IpHeaders> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Tcp,
    Udp,
    Echo,
}

fn build(kind: Kind, src: IpAddr, dst: IpAddr, ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let step = ip(src, dst);
    match kind {
        Kind::Tcp => step
            .tcp(ports.0, ports.1, 0x0102_0304, 4096)
            .ack(0x0a0b_0c0d)
            .write(&mut out, payload),
        Kind::Udp => step.udp(ports.0, ports.1).write(&mut out, payload),
        Kind::Echo if src.is_ipv4() => step
            .icmpv4_echo_request(ports.0, ports.1)
            .write(&mut out, payload),
        Kind::Echo => step
            .icmpv6_echo_request(ports.0, ports.1)
            .write(&mut out, payload),
    }
    .expect("builds");
    out
}

fn syn(src: IpAddr, dst: IpAddr, options: &[TcpOptionElement]) -> Vec<u8> {
    let mut out = Vec::new();
    ip(src, dst)
        .tcp(40000, 443, 7, 64240)
        .syn()
        .options(options)
        .expect("options fit")
        .write(&mut out, &[])
        .expect("builds");
    out
}

fn icmp4_error(src: IpAddr, dst: IpAddr, icmp: Icmpv4Type, quote: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ip(src, dst)
        .icmpv4(icmp)
        .write(&mut out, quote)
        .expect("builds");
    out
}

fn icmp6_error(src: IpAddr, dst: IpAddr, icmp: Icmpv6Type, quote: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ip(src, dst)
        .icmpv6(icmp)
        .write(&mut out, quote)
        .expect("builds");
    out
}

/// Inserts an IPv6 extension header (its first byte is overwritten with the chain's
/// next header) right after the fixed header.
fn with_v6_ext(pkt: &[u8], ext_type: u8, ext: &[u8]) -> Vec<u8> {
    let mut out = pkt[..IPV6_HEADER_LEN].to_vec();
    let mut ext = ext.to_vec();
    ext[0] = out[6];
    out[6] = ext_type;
    let payload_len = u16::from_be_bytes([out[4], out[5]]) + ext.len() as u16;
    out[4..6].copy_from_slice(&payload_len.to_be_bytes());
    out.extend_from_slice(&ext);
    out.extend_from_slice(&pkt[IPV6_HEADER_LEN..]);
    out
}

/// Sets the IPv4 fragment field and recomputes the header checksum.
fn set_v4_fragment(pkt: &mut [u8], field: u16) {
    pkt[6..8].copy_from_slice(&field.to_be_bytes());
    let checksum = Ipv4HeaderSlice::from_slice(pkt)
        .expect("header")
        .to_header()
        .calc_header_checksum();
    pkt[10..12].copy_from_slice(&checksum.to_be_bytes());
}

fn tcp_checksum(tcp: &TcpSlice<'_>, src: IpAddr, dst: IpAddr) -> u16 {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => tcp.calc_checksum_ipv4(s.octets(), d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => tcp.calc_checksum_ipv6(s.octets(), d.octets()),
        _ => panic!("mixed families"),
    }
    .expect("length fits")
}

/// Recomputes every checksum of `pkt` with etherparse and compares it with the one
/// stored. Returns the addresses.
fn assert_checksums(pkt: &[u8]) -> (IpAddr, IpAddr) {
    let sliced = SlicedPacket::from_ip(pkt).expect("etherparse parses the packet");
    let (src, dst) = match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => {
            let header = ip.header();
            assert_eq!(
                header.header_checksum(),
                header.to_header().calc_header_checksum(),
                "IPv4 header checksum"
            );
            (a4(header.source()), a4(header.destination()))
        }
        Some(NetSlice::Ipv6(ip)) => {
            let header = ip.header();
            (a6(header.source()), a6(header.destination()))
        }
        _ => panic!("not IP"),
    };
    match &sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            assert_eq!(tcp.checksum(), tcp_checksum(tcp, src, dst), "TCP checksum");
        }
        Some(TransportSlice::Udp(udp)) => {
            let header = udp.to_header();
            let expected = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    header.calc_checksum_ipv4_raw(s.octets(), d.octets(), udp.payload())
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    header.calc_checksum_ipv6_raw(s.octets(), d.octets(), udp.payload())
                }
                _ => panic!("mixed families"),
            }
            .expect("length fits");
            if !(src.is_ipv4() && udp.checksum() == 0) {
                assert_eq!(udp.checksum(), expected, "UDP checksum");
            }
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            assert_eq!(
                icmp.checksum(),
                icmp.icmp_type().calc_checksum(icmp.payload()),
                "ICMP checksum"
            );
        }
        Some(TransportSlice::Icmpv6(icmp)) => {
            let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
                panic!("ICMPv6 over IPv4");
            };
            assert!(
                icmp.is_checksum_valid(s.octets(), d.octets()),
                "ICMPv6 checksum"
            );
        }
        _ => {}
    }
    (src, dst)
}

const KINDS: [Kind; 3] = [Kind::Tcp, Kind::Udp, Kind::Echo];

#[test]
fn set_src_and_set_dst_match_packets_built_with_the_new_addresses() {
    for v6 in [false, true] {
        let (client, pool, remote) = family(v6);
        for kind in KINDS {
            let payload = b"odd-length payload!";
            let mut out = build(kind, client, remote, (40000, 53), payload);
            assert_checksums(&out);
            assert_eq!(set_src(&mut out, pool), Ok(client), "{kind:?} v6={v6}");
            assert_eq!(out, build(kind, pool, remote, (40000, 53), payload));
            assert_eq!(assert_checksums(&out), (pool, remote));

            let mut back = build(kind, remote, pool, (53, 40000), payload);
            assert_eq!(set_dst(&mut back, client), Ok(pool), "{kind:?} v6={v6}");
            assert_eq!(back, build(kind, remote, client, (53, 40000), payload));
            assert_eq!(assert_checksums(&back), (remote, client));
        }
    }
}

#[test]
fn setting_the_same_address_changes_nothing() {
    let (client, _, remote) = family(false);
    let pkt = build(Kind::Tcp, client, remote, (1, 2), b"x");
    let mut same = pkt.clone();
    assert_eq!(set_src(&mut same, client), Ok(client));
    assert_eq!(set_dst(&mut same, remote), Ok(remote));
    assert_eq!(same, pkt);
}

#[test]
fn family_mismatch_is_refused_and_leaves_the_packet_alone() {
    let (client, _, remote) = family(false);
    let pkt = build(Kind::Udp, client, remote, (1, 2), b"x");
    let mut copy = pkt.clone();
    assert_eq!(
        set_src(&mut copy, a6(POOL6)),
        Err(PacketError::FamilyMismatch)
    );
    assert_eq!(
        set_dst(&mut copy, a6(POOL6)),
        Err(PacketError::FamilyMismatch)
    );
    assert_eq!(copy, pkt);
}

#[test]
fn ipv4_non_first_fragment_gets_only_its_header_updated() {
    let (client, pool, remote) = family(false);
    let mut later = build(Kind::Tcp, client, remote, (1, 2), &[9; 40]);
    set_v4_fragment(&mut later, 0x2000 | 185);
    let summary = summarize(&later).expect("valid");
    assert_eq!((summary.src_port, summary.tcp_syn), (None, false));
    let mut rewritten = later.clone();
    assert_eq!(set_src(&mut rewritten, pool), Ok(client));
    assert_eq!(summarize(&rewritten).expect("valid").src, pool);
    assert_eq!(rewritten[20..], later[20..]);
    assert_checksums(&rewritten);
    // Its bytes look like nothing in particular; a garbage "TCP header" is fine.
    let mut junk = later.clone();
    junk[20..].fill(0xff);
    set_v4_fragment(&mut junk, 185);
    assert!(summarize(&junk).is_ok());
}

#[test]
fn udp_v4_zero_checksum_stays_zero() {
    let (client, pool, remote) = family(false);
    let zeroed = |src| {
        let mut pkt = build(Kind::Udp, src, remote, (1000, 2000), b"no checksum");
        pkt[26..28].fill(0);
        pkt
    };
    let mut pkt = zeroed(client);
    assert_eq!(set_src(&mut pkt, pool), Ok(client));
    assert_eq!(pkt, zeroed(pool));
    assert_checksums(&pkt);
}

/// Builds the ICMP error that `router` sends to `to` about `inner`'s first
/// `quote_len` bytes.
fn icmp_error(
    v6: bool,
    router: IpAddr,
    to: IpAddr,
    which: u8,
    inner: &[u8],
    quote_len: usize,
) -> Vec<u8> {
    let quote = &inner[..quote_len.min(inner.len())];
    if v6 {
        let icmp = match which {
            0 => Icmpv6Type::PacketTooBig { mtu: 1280 },
            1 => Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded),
            _ => Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port),
        };
        icmp6_error(router, to, icmp, quote)
    } else {
        let icmp = match which {
            0 => Icmpv4Type::DestinationUnreachable(
                icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
            ),
            1 => Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
            _ => Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
        };
        icmp4_error(router, to, icmp, quote)
    }
}

#[test]
fn set_dst_rewrites_the_quoted_packet_of_an_icmp_error() {
    for v6 in [false, true] {
        let (client, pool, remote) = family(v6);
        let router = if v6 {
            a6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
        } else {
            a4([198, 51, 100, 1])
        };
        for kind in KINDS {
            for which in 0..3 {
                // Whole quote, a quote that stops after 8 transport bytes, one
                // that stops inside the IP header.
                for quote_len in [usize::MAX, if v6 { 48 } else { 28 }, 12] {
                    let inner_pool = build(kind, pool, remote, (40000, 443), &[5; 33]);
                    let inner_client = build(kind, client, remote, (40000, 443), &[5; 33]);
                    let mut err = icmp_error(v6, router, pool, which, &inner_pool, quote_len);
                    let summary = summarize(&err).expect("valid");
                    assert!(summary.icmp_error);
                    assert_eq!(summary.src_port, None);
                    assert_eq!(set_dst(&mut err, client), Ok(pool));
                    let inner = if quote_len == 12 {
                        &inner_pool
                    } else {
                        &inner_client
                    };
                    let expected = icmp_error(v6, router, client, which, inner, quote_len);
                    assert_eq!(err, expected, "v6={v6} {kind:?} {which} {quote_len}");
                    assert_checksums(&err);
                    if quote_len == usize::MAX {
                        let quote = &err[err.len() - inner_client.len()..];
                        assert_eq!(assert_checksums(quote), (client, remote));
                    }
                }
            }
        }
    }
}

#[test]
fn set_dst_leaves_a_quote_from_another_address_alone() {
    for v6 in [false, true] {
        let (client, pool, remote) = family(v6);
        let inner = build(Kind::Udp, remote, remote, (1, 2), b"elsewhere");
        let mut err = icmp_error(v6, remote, pool, 2, &inner, usize::MAX);
        set_dst(&mut err, client).expect("rewrites");
        assert_eq!(err, icmp_error(v6, remote, client, 2, &inner, usize::MAX));
    }
}

#[test]
fn set_src_rewrites_the_quoted_destination_of_an_icmp_error() {
    for v6 in [false, true] {
        let (client, pool, remote) = family(v6);
        // The client's host answers a packet that reached it through the tunnel.
        let inner_client = build(Kind::Udp, remote, client, (53, 40000), b"late reply");
        let inner_pool = build(Kind::Udp, remote, pool, (53, 40000), b"late reply");
        let mut err = icmp_error(v6, client, remote, 2, &inner_client, usize::MAX);
        assert_eq!(set_src(&mut err, pool), Ok(client));
        assert_eq!(
            err,
            icmp_error(v6, pool, remote, 2, &inner_pool, usize::MAX)
        );
        assert_checksums(&err);
    }
}

fn mss_of(pkt: &[u8]) -> Option<u16> {
    let sliced = SlicedPacket::from_ip(pkt).expect("parses");
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("not TCP");
    };
    tcp.options_iterator().find_map(|option| match option {
        Ok(TcpOptionElement::MaximumSegmentSize(mss)) => Some(mss),
        _ => None,
    })
}

fn assert_prohibited(out: &[u8], original: &[u8], from: IpAddr, max: usize) {
    let (src, dst) = assert_checksums(out);
    let summary = summarize(original).expect("valid");
    assert_eq!((src, dst), (from, summary.src));
    let sliced = SlicedPacket::from_ip(out).expect("parses");
    let quote = match (&sliced.net, &sliced.transport) {
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Icmpv4(icmp))) => {
            assert_eq!(ip.header().ttl(), 64);
            assert_eq!(
                icmp.icmp_type(),
                Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FilterProhibited)
            );
            assert_eq!((icmp.type_u8(), icmp.code_u8()), (3, 13));
            icmp.payload()
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(icmp))) => {
            assert_eq!(ip.header().hop_limit(), 64);
            assert_eq!(
                icmp.icmp_type(),
                Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Prohibited)
            );
            assert_eq!((icmp.type_u8(), icmp.code_u8()), (1, 1));
            icmp.payload()
        }
        _ => panic!("not an ICMP answer"),
    };
    assert!(out.len() <= max);
    let room = max - (out.len() - quote.len());
    assert_eq!(quote, &original[..summary.len.min(room)]);
}

fn addr_strategy(v6: bool) -> BoxedStrategy<IpAddr> {
    if v6 {
        any::<[u8; 16]>().prop_map(a6).boxed()
    } else {
        any::<[u8; 4]>().prop_map(a4).boxed()
    }
}

/// A valid TCP or UDP packet: (kind, src, dst, replacement address, ports, payload).
fn valid_packet() -> impl Strategy<Value = (Kind, IpAddr, IpAddr, IpAddr, (u16, u16), Vec<u8>)> {
    (any::<bool>(), prop_oneof![Just(Kind::Tcp), Just(Kind::Udp)]).prop_flat_map(|(v6, kind)| {
        (
            Just(kind),
            addr_strategy(v6),
            addr_strategy(v6),
            addr_strategy(v6),
            any::<(u16, u16)>(),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
    })
}

/// Arbitrary bytes, mostly starting like an IPv4 or IPv6 header, or a valid packet
/// with some bytes overwritten.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..120),
        (
            prop_oneof![Just(0x45u8), Just(0x46), Just(0x60)],
            proptest::collection::vec(any::<u8>(), 0..120)
        )
            .prop_map(|(first, mut rest)| {
                rest.insert(0, first);
                rest
            }),
        (
            valid_packet(),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)
        )
            .prop_map(|((kind, src, dst, _, ports, payload), edits)| {
                let mut pkt = build(kind, src, dst, ports, &payload);
                let len = pkt.len();
                for (at, value) in edits {
                    pkt[at % len] = value;
                }
                pkt
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn no_input_panics(bytes in hostile_bytes(), mss in any::<u16>()) {
        let _ = summarize(&bytes);
        let mut out = Vec::new();
        for addr in [a4(POOL4), a6(POOL6)] {
            let _ = set_src(&mut bytes.clone(), addr);
            let _ = set_dst(&mut bytes.clone(), addr);
            let _ = icmp_prohibited(&bytes, addr, &mut out);
            if let Ok(summary) = summarize(&out) {
                prop_assert!(summary.icmp_error);
            }
        }
        let _ = clamp_mss(&mut bytes.clone(), mss);
        // Errors wrapping hostile bytes are themselves hostile input.
        for (v6, router) in [(false, a4(REMOTE4)), (true, a6(REMOTE6))] {
            let quote = &bytes[..bytes.len().min(200)];
            let mut err = icmp_error(v6, router, family(v6).1, 2, quote, usize::MAX);
            let _ = set_dst(&mut err.clone(), family(v6).0);
            let _ = set_src(&mut err, family(v6).0);
        }
    }

    #[test]
    fn set_src_round_trips((kind, src, dst, new, ports, payload) in valid_packet()) {
        let pkt = build(kind, src, dst, ports, &payload);
        let mut rewritten = pkt.clone();
        prop_assert_eq!(set_src(&mut rewritten, new), Ok(src));
        prop_assert_eq!(&rewritten, &build(kind, new, dst, ports, &payload));
        prop_assert_eq!(assert_checksums(&rewritten), (new, dst));
        prop_assert_eq!(set_src(&mut rewritten, src), Ok(new));
        prop_assert_eq!(rewritten, pkt);
    }

    #[test]
    fn set_dst_round_trips((kind, src, dst, new, ports, payload) in valid_packet()) {
        let pkt = build(kind, src, dst, ports, &payload);
        let mut rewritten = pkt.clone();
        prop_assert_eq!(set_dst(&mut rewritten, new), Ok(dst));
        prop_assert_eq!(&rewritten, &build(kind, src, new, ports, &payload));
        prop_assert_eq!(assert_checksums(&rewritten), (src, new));
        prop_assert_eq!(set_dst(&mut rewritten, dst), Ok(new));
        prop_assert_eq!(rewritten, pkt);
    }
}

mod ip;
