//! The exit's address translation: each circuit's packets leave with its pool
//! address as source ([`set_src`]) and replies come back to the client's tunnel
//! address ([`set_dst`]), checksums updated incrementally, the packet quoted in an
//! ICMP error rewritten to match; built on [`crate::proto::ip`].

use std::net::IpAddr;

use crate::proto::ip::checksum::{adjust_checksum, Delta};
use crate::proto::ip::{
    addr_offset, be16, byte, parse, skip_v6_extensions, Octets, PacketError, Side,
    ICMP_CHECKSUM_OFFSET, ICMP_HEADER_LEN, IPV4_CHECKSUM_OFFSET, IPV4_HEADER_LEN, IPV6_HEADER_LEN,
    PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, TCP_CHECKSUM_OFFSET, UDP_CHECKSUM_OFFSET,
};

/// Rewrites the source address (same family required) and fixes the IPv4 header
/// checksum and the TCP, UDP and ICMPv6 checksums incrementally. A UDP checksum of 0
/// stays 0; a non-first fragment has only its IP header updated.
///
/// If the packet is an ICMP/ICMPv6 error whose quoted packet is addressed to the old
/// source (the quote is of a packet this side received), the quote's destination is
/// rewritten to `addr` too, with its IPv4 header and TCP/UDP/ICMPv6 checksums and the
/// outer ICMP checksum updated, so that the error still matches the flow it reports
/// on and does not reveal the old address.
///
/// Returns the old source address.
pub fn set_src(pkt: &mut [u8], addr: IpAddr) -> Result<IpAddr, PacketError> {
    rewrite(pkt, Side::Src, addr)
}

/// Rewrites the destination address (same family required) and fixes the IPv4 header
/// checksum and the TCP, UDP and ICMPv6 checksums incrementally. A UDP checksum of 0
/// stays 0; a non-first fragment has only its IP header updated.
///
/// If the packet is an ICMP/ICMPv6 error whose quoted packet comes from the old
/// destination (the quote is of a packet this side sent), the quote's source is
/// rewritten to `addr` too, with the quote's IPv4 header checksum, its TCP/UDP/ICMPv6
/// checksum when the quote is long enough to contain it, and the outer ICMP/ICMPv6
/// checksum updated. A quote from another address is left as it is.
///
/// Returns the old destination address.
pub fn set_dst(pkt: &mut [u8], addr: IpAddr) -> Result<IpAddr, PacketError> {
    rewrite(pkt, Side::Dst, addr)
}

fn rewrite(pkt: &mut [u8], side: Side, new: IpAddr) -> Result<IpAddr, PacketError> {
    let (layout, summary) = parse(pkt)?;
    let old = match side {
        Side::Src => summary.src,
        Side::Dst => summary.dst,
    };
    if old.is_ipv4() != new.is_ipv4() {
        return Err(PacketError::FamilyMismatch);
    }
    if old == new {
        return Ok(old);
    }
    let (new_octets, old_octets) = (Octets::of(new), Octets::of(old));
    let (new_bytes, old_bytes) = (new_octets.as_slice(), old_octets.as_slice());

    let mut change = Delta::default();
    change.replace(pkt, addr_offset(layout.v6, side), new_bytes);
    let mut ignored = Delta::default();
    if !layout.v6 {
        adjust_checksum(pkt, IPV4_CHECKSUM_OFFSET, change, false, &mut ignored);
    }
    if layout.later_fragment {
        return Ok(old);
    }
    fix_transport(
        pkt,
        layout.l4,
        summary.len,
        summary.proto,
        layout.v6,
        change,
        &mut ignored,
    );
    if summary.icmp_error {
        let quote = layout.l4 + ICMP_HEADER_LEN;
        let icmp_change = rewrite_quote(
            pkt,
            quote,
            summary.len,
            layout.v6,
            side.quoted(),
            old_bytes,
            new_bytes,
        );
        adjust_checksum(
            pkt,
            layout.l4 + ICMP_CHECKSUM_OFFSET,
            icmp_change,
            false,
            &mut ignored,
        );
    }
    Ok(old)
}

/// Updates the checksum of the transport header at `l4` (ending at or before `end`)
/// after an address of its pseudo-header changed by `change`: TCP, UDP, and ICMPv6
/// in IPv6. Fields that lie beyond `end` (in a truncated quote) are left alone. The
/// rewrite of the checksum field itself is added to `record`.
fn fix_transport(
    pkt: &mut [u8],
    l4: usize,
    end: usize,
    proto: u8,
    v6: bool,
    change: Delta,
    record: &mut Delta,
) {
    let (field, udp) = match proto {
        PROTO_TCP => (TCP_CHECKSUM_OFFSET, false),
        PROTO_UDP => (UDP_CHECKSUM_OFFSET, true),
        PROTO_ICMPV6 if v6 => (ICMP_CHECKSUM_OFFSET, false),
        _ => return,
    };
    if l4 + field + 2 <= end {
        adjust_checksum(pkt, l4 + field, change, udp, record);
    }
}

/// Rewrites `quoted_side` of the packet quoted from `start` to `end` inside an ICMP
/// error, if it equals `old`, and fixes the quote's own checksums. Returns the change
/// to the ICMP message, for its checksum.
fn rewrite_quote(
    pkt: &mut [u8],
    start: usize,
    end: usize,
    v6: bool,
    quoted_side: Side,
    old: &[u8],
    new: &[u8],
) -> Delta {
    let mut record = Delta::default();
    let Some(quote) = pkt.get(start..end) else {
        return record;
    };
    let (version, header_len) = if v6 {
        (6, IPV6_HEADER_LEN)
    } else {
        (4, IPV4_HEADER_LEN)
    };
    let off = addr_offset(v6, quoted_side);
    if quote.len() < header_len
        || quote.first().map(|b| b >> 4) != Some(version)
        || quote.get(off..off + old.len()) != Some(old)
    {
        return record;
    }
    let transport = quoted_transport(quote, v6);

    let mut change = Delta::default();
    change.replace(pkt, start + off, new);
    record.merge(change);
    if !v6 {
        adjust_checksum(
            pkt,
            start + IPV4_CHECKSUM_OFFSET,
            change,
            false,
            &mut record,
        );
    }
    if let Some((l4, proto)) = transport {
        fix_transport(pkt, start + l4, end, proto, v6, change, &mut record);
    }
    record
}

/// Locates the transport header of a quoted (possibly truncated) packet whose IP
/// header is known to be present: its offset and protocol, or `None` if the quote
/// does not reach it or holds a non-first fragment.
fn quoted_transport(quote: &[u8], v6: bool) -> Option<(usize, u8)> {
    if v6 {
        let next = byte(quote, 6).ok()?;
        match skip_v6_extensions(quote, IPV6_HEADER_LEN, next, quote.len()) {
            Ok((l4, proto, false)) => Some((l4, proto)),
            _ => None,
        }
    } else {
        let ihl = usize::from(byte(quote, 0).ok()? & 0x0f) * 4;
        let later_fragment = be16(quote, 6).ok()? & 0x1fff != 0;
        if ihl < IPV4_HEADER_LEN || ihl > quote.len() || later_fragment {
            return None;
        }
        Some((ihl, byte(quote, 9).ok()?))
    }
}

#[cfg(test)]
mod tests;
