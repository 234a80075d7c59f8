//! `proto::ip` on packets built with etherparse: parsing, extension headers,
//! fragments, the MSS clamp and ICMP refusals.

use super::*;

#[test]
fn summarize_reads_addresses_ports_and_flags() {
    let (client, _, remote) = family(false);
    let mut pkt = build(Kind::Udp, client, remote, (5353, 53), b"query");
    let len = pkt.len();
    pkt.extend_from_slice(&[0xee; 7]);
    let summary = summarize(&pkt).expect("valid");
    assert_eq!(
        summary,
        Summary {
            src: client,
            dst: remote,
            proto: PROTO_UDP,
            src_port: Some(5353),
            dst_port: Some(53),
            icmp_error: false,
            tcp_syn: false,
            len,
        }
    );
    assert_eq!(
        summary.flow(),
        FlowKey {
            proto: PROTO_UDP,
            src: client,
            dst: remote,
            src_port: 5353,
            dst_port: 53,
        }
    );

    let (client6, _, remote6) = family(true);
    let syn6 = syn(
        client6,
        remote6,
        &[TcpOptionElement::MaximumSegmentSize(1440)],
    );
    let summary = summarize(&syn6).expect("valid");
    assert!(summary.tcp_syn && !summary.icmp_error);
    assert_eq!(summary.proto, PROTO_TCP);
    assert_eq!(
        (summary.src_port, summary.dst_port),
        (Some(40000), Some(443))
    );
    let ack = build(Kind::Tcp, client6, remote6, (1, 2), b"");
    assert!(!summarize(&ack).expect("valid").tcp_syn);

    for v6 in [false, true] {
        let (client, _, remote) = family(v6);
        let echo = build(Kind::Echo, client, remote, (0x1234, 7), b"ping");
        let summary = summarize(&echo).expect("valid");
        assert_eq!(summary.src_port, Some(0x1234));
        assert_eq!(summary.dst_port, None);
        assert_eq!(summary.flow().src_port, 0x1234);
        assert_eq!(summary.flow().dst_port, 0);
        assert!(!summary.icmp_error);
    }
}

#[test]
fn summarize_rejects_malformed_packets() {
    assert_eq!(summarize(&[]), Err(PacketError::Truncated));
    assert_eq!(summarize(&[0x50; 60]), Err(PacketError::NotIp));
    assert_eq!(summarize(&[0x45; 10]), Err(PacketError::Truncated));
    assert_eq!(summarize(&[0x60; 39]), Err(PacketError::Truncated));

    let (client, _, remote) = family(false);
    let tcp = build(Kind::Tcp, client, remote, (1, 2), b"data");

    let mut bad_ihl = tcp.clone();
    bad_ihl[0] = 0x44;
    assert_eq!(summarize(&bad_ihl), Err(PacketError::BadHeader));

    let mut short_total = tcp.clone();
    short_total[2..4].copy_from_slice(&19u16.to_be_bytes());
    assert_eq!(summarize(&short_total), Err(PacketError::BadHeader));

    assert_eq!(
        summarize(&tcp[..tcp.len() - 1]),
        Err(PacketError::Truncated)
    );

    let mut bad_offset = tcp.clone();
    bad_offset[20 + 12] = 0x40;
    assert_eq!(summarize(&bad_offset), Err(PacketError::BadHeader));

    let mut long_offset = tcp.clone();
    long_offset[20 + 12] = 0xf0;
    assert_eq!(summarize(&long_offset), Err(PacketError::Truncated));

    let (client6, _, remote6) = family(true);
    let udp6 = build(Kind::Udp, client6, remote6, (1, 2), b"");
    // A hop-by-hop header claiming more bytes than the packet holds.
    let mut long_ext = with_v6_ext(&udp6, IPV6_HOP_BY_HOP, &[0, 0, 1, 4, 0, 0, 0, 0]);
    long_ext[41] = 3;
    assert_eq!(summarize(&long_ext), Err(PacketError::Truncated));
}

#[test]
fn ipv6_extension_headers_are_skipped() {
    let (client, pool, remote) = family(true);
    let hop_by_hop = [0, 0, 1, 4, 0, 0, 0, 0];
    let dest_options = [0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    for kind in [Kind::Tcp, Kind::Udp] {
        let with_ext = |src| {
            let pkt = build(kind, src, remote, (4242, 80), b"payload");
            let pkt = with_v6_ext(&pkt, IPV6_DEST_OPTIONS, &dest_options);
            with_v6_ext(&pkt, IPV6_HOP_BY_HOP, &hop_by_hop)
        };
        let mut pkt = with_ext(client);
        let summary = summarize(&pkt).expect("valid");
        assert_eq!(
            summary.proto,
            if matches!(kind, Kind::Tcp) { 6 } else { 17 }
        );
        assert_eq!((summary.src_port, summary.dst_port), (Some(4242), Some(80)));
        assert_eq!(set_src(&mut pkt, pool), Ok(client));
        assert_eq!(pkt, with_ext(pool));
        assert_checksums(&pkt);
    }

    // AH counts as the final protocol.
    let udp = build(Kind::Udp, client, remote, (1, 2), b"");
    let ah = with_v6_ext(&udp, 51, &[0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0]);
    let summary = summarize(&ah).expect("valid");
    assert_eq!((summary.proto, summary.src_port), (51, None));
}

#[test]
fn ipv6_fragments() {
    let (client, pool, remote) = family(true);
    let frag = |offset: u16, more: bool| {
        let field = (offset << 3) | u16::from(more);
        let [hi, lo] = field.to_be_bytes();
        [0, 0, hi, lo, 0xde, 0xad, 0xbe, 0xef]
    };

    // First fragment: ports are read, the UDP checksum is rewritten.
    let first = |src| {
        let pkt = build(Kind::Udp, src, remote, (4242, 80), &[7; 64]);
        with_v6_ext(&pkt, IPV6_FRAGMENT, &frag(0, true))
    };
    let mut pkt = first(client);
    assert_eq!(summarize(&pkt).expect("valid").src_port, Some(4242));
    set_src(&mut pkt, pool).expect("rewrites");
    assert_eq!(pkt, first(pool));

    // Later fragment: no ports, only the IPv6 header changes.
    let later = with_v6_ext(
        &build(Kind::Udp, client, remote, (4242, 80), &[7; 64]),
        IPV6_FRAGMENT,
        &frag(8, false),
    );
    let summary = summarize(&later).expect("valid");
    assert_eq!(summary.proto, PROTO_UDP);
    assert_eq!((summary.src_port, summary.dst_port), (None, None));
    let mut rewritten = later.clone();
    set_src(&mut rewritten, pool).expect("rewrites");
    assert_eq!(&rewritten[8..24], &POOL6);
    assert_eq!(rewritten[24..], later[24..]);
}

#[test]
fn clamp_mss_lowers_a_large_mss_of_a_syn() {
    for v6 in [false, true] {
        let (client, _, remote) = family(v6);
        let options = [
            TcpOptionElement::MaximumSegmentSize(1460),
            TcpOptionElement::SelectiveAcknowledgementPermitted,
            TcpOptionElement::WindowScale(7),
        ];
        let mut pkt = syn(client, remote, &options);
        assert!(clamp_mss(&mut pkt, 1208));
        assert_eq!(mss_of(&pkt), Some(1208));
        assert_checksums(&pkt);
        assert!(!clamp_mss(&mut pkt, 1208), "already clamped");

        let small = syn(
            client,
            remote,
            &[TcpOptionElement::MaximumSegmentSize(1000)],
        );
        let mut copy = small.clone();
        assert!(!clamp_mss(&mut copy, 1208));
        assert_eq!(copy, small);

        let bare = syn(client, remote, &[]);
        let mut copy = bare.clone();
        assert!(!clamp_mss(&mut copy, 1208));
        assert_eq!(copy, bare);
    }
}

#[test]
fn clamp_mss_handles_an_mss_at_an_odd_offset_and_a_syn_ack() {
    let (client, _, remote) = family(false);
    let mut out = Vec::new();
    ip(remote, client)
        .tcp(443, 40000, 9, 65535)
        .syn()
        .ack(8)
        .options_raw(&[1, 2, 4, 0x05, 0xb4, 1, 1, 1])
        .expect("fits")
        .write(&mut out, &[])
        .expect("builds");
    assert!(clamp_mss(&mut out, 1208));
    assert_eq!(mss_of(&out), Some(1208));
    assert_checksums(&out);
}

#[test]
fn clamp_mss_leaves_other_packets_alone() {
    let (client, _, remote) = family(false);
    // An ACK carrying an MSS option: not a SYN.
    let mut out = Vec::new();
    ip(client, remote)
        .tcp(1, 2, 3, 4)
        .ack(5)
        .options(&[TcpOptionElement::MaximumSegmentSize(1460)])
        .expect("fits")
        .write(&mut out, &[])
        .expect("builds");
    let copy = out.clone();
    assert!(!clamp_mss(&mut out, 1208));
    assert_eq!(out, copy);

    // Malformed options: an option of length 0, an MSS of length 3, an option
    // running past the header.
    for raw in [
        [2, 4, 5, 0xb4, 8, 0, 0, 0],
        [2, 3, 5, 0xb4, 1, 1, 1, 1],
        [1, 1, 1, 1, 2, 6, 5, 0xb4],
    ] {
        let mut out = Vec::new();
        ip(client, remote)
            .tcp(1, 2, 3, 4)
            .syn()
            .options_raw(&raw)
            .expect("fits")
            .write(&mut out, &[])
            .expect("builds");
        let copy = out.clone();
        assert!(!clamp_mss(&mut out, 1208), "{raw:?}");
        assert_eq!(out, copy);
    }

    let mut udp = build(Kind::Udp, client, remote, (1, 2), &[2, 4, 5, 0xb4]);
    assert!(!clamp_mss(&mut udp, 1208));
    assert!(!clamp_mss(&mut [0x45, 0, 0], 1208));
}

#[test]
fn icmp_prohibited_answers_with_a_bounded_quote() {
    let mut out = vec![0xaa; 3];
    for v6 in [false, true] {
        let (client, pool, remote) = family(v6);
        let max = if v6 { 1280 } else { 576 };
        for payload_len in [0, 100, 2000] {
            for kind in KINDS {
                let mut original = build(kind, pool, remote, (40000, 25), &vec![3; payload_len]);
                original.extend_from_slice(&[0xee; 5]);
                icmp_prohibited(&original, remote, &mut out).expect("answers");
                assert_prohibited(&out, &original, remote, max);
                if payload_len == 2000 {
                    assert_eq!(out.len(), max);
                }
            }
        }
        let syn = syn(
            client,
            remote,
            &[TcpOptionElement::MaximumSegmentSize(1460)],
        );
        icmp_prohibited(&syn, pool, &mut out).expect("answers");
        assert_prohibited(&out, &syn, pool, max);
    }
}

#[test]
fn icmp_prohibited_refuses() {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let (client, pool, remote) = family(v6);
        let other = if v6 { a4(REMOTE4) } else { a6(REMOTE6) };
        let inner = build(Kind::Udp, pool, remote, (1, 2), b"x");
        let err = icmp_error(v6, remote, pool, 0, &inner, usize::MAX);
        assert_eq!(
            icmp_prohibited(&err, client, &mut out),
            Err(PacketError::IsIcmpError)
        );
        assert!(out.is_empty());

        let udp = build(Kind::Udp, pool, remote, (1, 2), b"x");
        assert_eq!(
            icmp_prohibited(&udp, other, &mut out),
            Err(PacketError::FamilyMismatch)
        );
        let multicast = if v6 {
            a6([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
        } else {
            a4([224, 0, 0, 1])
        };
        let from_multicast = build(Kind::Udp, multicast, remote, (1, 2), b"x");
        assert_eq!(
            icmp_prohibited(&from_multicast, remote, &mut out),
            Err(PacketError::BadSource)
        );
        let later = if v6 {
            with_v6_ext(&udp, IPV6_FRAGMENT, &[0, 0, 0, 8 << 3, 1, 2, 3, 4])
        } else {
            let mut later = udp.clone();
            set_v4_fragment(&mut later, 1);
            later
        };
        assert_eq!(
            icmp_prohibited(&later, remote, &mut out),
            Err(PacketError::Fragment)
        );
        assert!(icmp_prohibited(&udp[..udp.len() - 1], remote, &mut out).is_err());
        assert!(out.is_empty());
    }
}
