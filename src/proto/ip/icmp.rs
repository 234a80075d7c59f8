//! ICMP: the "administratively prohibited" answer, and what kind of message a type is.

use std::net::IpAddr;

use super::checksum::{fold, sum_words};
use super::{
    parse, write_be16, Octets, PacketError, ICMP_CHECKSUM_OFFSET, ICMP_HEADER_LEN,
    IPV4_CHECKSUM_OFFSET, IPV4_HEADER_LEN, IPV6_HEADER_LEN, PROTO_ICMP, PROTO_ICMPV6,
};

/// Largest ICMPv4 error we send, headers included (RFC 1812 section 4.3.2.3).
const ICMPV4_ERROR_MAX: usize = 576;
/// Largest ICMPv6 error we send, headers included (the IPv6 minimum MTU, RFC 4443).
const ICMPV6_ERROR_MAX: usize = 1280;
/// TTL / hop limit of the ICMP errors we build.
const ERROR_TTL: u8 = 64;
/// ICMPv4 destination unreachable, code communication administratively prohibited.
const ICMPV4_UNREACHABLE: [u8; 2] = [3, 13];
/// ICMPv6 destination unreachable, code communication administratively prohibited.
const ICMPV6_UNREACHABLE: [u8; 2] = [1, 1];

/// Builds into `out` (cleared first) an ICMP "destination unreachable, communication
/// administratively prohibited" answer to `original`: ICMPv4 type 3 code 13 or ICMPv6
/// type 1 code 1, from `from` to the original's source, TTL / hop limit 64, quoting as
/// much of the original (up to its total length) as fits in 576 bytes in all (IPv4)
/// or 1280 (IPv6), with all checksums set.
///
/// Refuses to answer an unreadable packet, an ICMP error, a non-first fragment, a
/// packet whose source is unspecified, multicast or broadcast, and `from` of the
/// other address family; `out` is then left empty.
pub fn icmp_prohibited(
    original: &[u8],
    from: IpAddr,
    out: &mut Vec<u8>,
) -> Result<(), PacketError> {
    out.clear();
    let (layout, summary) = parse(original)?;
    if summary.icmp_error {
        return Err(PacketError::IsIcmpError);
    }
    if layout.later_fragment {
        return Err(PacketError::Fragment);
    }
    if from.is_ipv4() != summary.src.is_ipv4() {
        return Err(PacketError::FamilyMismatch);
    }
    let refused_source = match summary.src {
        IpAddr::V4(a) => a.is_unspecified() || a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
    };
    if refused_source {
        return Err(PacketError::BadSource);
    }
    let (from_octets, to_octets) = (Octets::of(from), Octets::of(summary.src));
    let (from, to) = (from_octets.as_slice(), to_octets.as_slice());
    let whole = original.get(..summary.len).ok_or(PacketError::Truncated)?;

    if layout.v6 {
        let quote_len = whole
            .len()
            .min(ICMPV6_ERROR_MAX - IPV6_HEADER_LEN - ICMP_HEADER_LEN);
        let icmp_len = ICMP_HEADER_LEN + quote_len;
        let payload_len = u16::try_from(icmp_len).map_err(|_| PacketError::BadHeader)?;
        out.reserve(IPV6_HEADER_LEN + icmp_len);
        out.extend_from_slice(&[0x60, 0, 0, 0]);
        out.extend_from_slice(&payload_len.to_be_bytes());
        out.extend_from_slice(&[PROTO_ICMPV6, ERROR_TTL]);
        out.extend_from_slice(from);
        out.extend_from_slice(to);
        out.extend_from_slice(&ICMPV6_UNREACHABLE);
        out.extend_from_slice(&[0; 6]);
        out.extend(whole.iter().take(quote_len));
        let pseudo =
            sum_words(sum_words(0, from), to) + u64::from(payload_len) + u64::from(PROTO_ICMPV6);
        let checksum = !fold(sum_words(
            pseudo,
            out.get(IPV6_HEADER_LEN..).unwrap_or_default(),
        ));
        write_be16(out, IPV6_HEADER_LEN + ICMP_CHECKSUM_OFFSET, checksum);
    } else {
        let quote_len = whole
            .len()
            .min(ICMPV4_ERROR_MAX - IPV4_HEADER_LEN - ICMP_HEADER_LEN);
        let total = IPV4_HEADER_LEN + ICMP_HEADER_LEN + quote_len;
        let total_len = u16::try_from(total).map_err(|_| PacketError::BadHeader)?;
        out.reserve(total);
        out.extend_from_slice(&[0x45, 0]);
        out.extend_from_slice(&total_len.to_be_bytes());
        // Identification 0 with DF set: an atomic datagram (RFC 6864).
        out.extend_from_slice(&[0, 0, 0x40, 0, ERROR_TTL, PROTO_ICMP, 0, 0]);
        out.extend_from_slice(from);
        out.extend_from_slice(to);
        let header_checksum = !fold(sum_words(0, out.get(..IPV4_HEADER_LEN).unwrap_or_default()));
        write_be16(out, IPV4_CHECKSUM_OFFSET, header_checksum);
        out.extend_from_slice(&ICMPV4_UNREACHABLE);
        out.extend_from_slice(&[0; 6]);
        out.extend(whole.iter().take(quote_len));
        let checksum = !fold(sum_words(0, out.get(IPV4_HEADER_LEN..).unwrap_or_default()));
        write_be16(out, IPV4_HEADER_LEN + ICMP_CHECKSUM_OFFSET, checksum);
    }
    Ok(())
}

/// Whether `proto` is the ICMP of the packet's family.
pub(super) fn is_icmp_for(proto: u8, v6: bool) -> bool {
    if v6 {
        proto == PROTO_ICMPV6
    } else {
        proto == PROTO_ICMP
    }
}

/// ICMPv4 destination unreachable, source quench, redirect, time exceeded, parameter
/// problem; ICMPv6 destination unreachable, packet too big, time exceeded, parameter
/// problem.
pub(super) fn is_icmp_error(icmp_type: u8, v6: bool) -> bool {
    if v6 {
        (1..=4).contains(&icmp_type)
    } else {
        matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
    }
}

/// Echo request or reply.
pub(super) fn is_icmp_echo(icmp_type: u8, v6: bool) -> bool {
    if v6 {
        matches!(icmp_type, 128 | 129)
    } else {
        matches!(icmp_type, 0 | 8)
    }
}
