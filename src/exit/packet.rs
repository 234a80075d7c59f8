//! Pure functions over raw IPv4 and IPv6 packets, as read from or written to the TUN
//! device (no link-layer header).
//!
//! The exit gateway gives every circuit a private pool address and translates it 1:1
//! in user space before the kernel masquerades it: [`set_src`] on the way out,
//! [`set_dst`] on the way back (which also fixes the packet quoted inside an ICMP
//! error), [`icmp_prohibited`] to refuse traffic it will not carry. The client lowers
//! the TCP MSS of its SYNs with [`clamp_mss`] so that segments fit inside the onion
//! layers. [`summarize`] reads the addresses, protocol and ports of any packet.
//!
//! Everything here is sans-IO and allocation-free per packet: rewrites happen in place
//! on the caller's buffer, and checksums are updated incrementally (RFC 1624, equation
//! 3: `HC' = ~(~HC + ~m + m')`), never recomputed over the payload. The parser checks
//! every length it relies on (IPv4 IHL and total length, IPv6 payload length and
//! extension-header lengths, TCP data offset, TCP option lengths), so no input makes
//! any function panic.
//!
//! Checksum conventions match the usual stacks: an updated checksum that comes out as
//! zero is written as `0x0000`, except for UDP, where zero means "no checksum" and the
//! value is written as `0xFFFF`; a UDP checksum of zero is left at zero.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a packet could not be read, rewritten or answered.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum PacketError {
    /// The packet ends before a header it declares.
    #[error("packet is shorter than its headers require")]
    Truncated,
    /// The version nibble is neither 4 nor 6.
    #[error("not an IPv4 or IPv6 packet")]
    NotIp,
    /// A header field is inconsistent (IPv4 IHL below 5, total length below the
    /// header length, TCP data offset below 5).
    #[error("malformed IP or transport header")]
    BadHeader,
    /// The address given is not of the packet's address family.
    #[error("address family does not match the packet")]
    FamilyMismatch,
    /// The packet is an ICMP or ICMPv6 error, which is never answered with another.
    #[error("packet is an ICMP error")]
    IsIcmpError,
    /// The packet is a fragment other than the first, so it carries no transport
    /// header and is not answered.
    #[error("packet is a non-first fragment")]
    Fragment,
    /// The packet's source (unspecified, multicast or broadcast) must never be sent an
    /// ICMP error (RFC 1122 section 3.2.2, RFC 4443 section 2.4).
    #[error("packet source cannot be sent an ICMP error")]
    BadSource,
}

/// IP protocol number of ICMP (IPv4).
pub const PROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number (IPv6 next header) of ICMPv6.
pub const PROTO_ICMPV6: u8 = 58;

const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const TCP_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
const ICMP_HEADER_LEN: usize = 8;

const IPV4_CHECKSUM_OFFSET: usize = 10;
const TCP_CHECKSUM_OFFSET: usize = 16;
const UDP_CHECKSUM_OFFSET: usize = 6;
const ICMP_CHECKSUM_OFFSET: usize = 2;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTIONS: u8 = 60;
const IPV6_FRAGMENT_HEADER_LEN: usize = 8;

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_OPTION_END: u8 = 0;
const TCP_OPTION_NOP: u8 = 1;
const TCP_OPTION_MSS: u8 = 2;
const TCP_OPTION_MSS_LEN: usize = 4;

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

/// Identifies a transport flow: protocol, addresses and ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Final protocol number (after IPv6 extension headers).
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// TCP/UDP source port, the identifier for ICMP/ICMPv6 echo, otherwise 0.
    pub src_port: u16,
    /// TCP/UDP destination port, otherwise 0.
    pub dst_port: u16,
}

/// What a packet is: addresses, protocol, ports and the flags callers act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Final protocol number, after any IPv6 hop-by-hop, routing, destination-options
    /// and fragment headers (other extension headers, such as ESP and AH, count as the
    /// final protocol). For a non-first IPv6 fragment this is the fragment header's
    /// next header.
    pub proto: u8,
    /// TCP/UDP source port, or the identifier of an ICMP/ICMPv6 echo request or
    /// reply. `None` for other protocols and for non-first fragments.
    pub src_port: Option<u16>,
    /// TCP/UDP destination port. `None` for other protocols (ICMP echo included) and
    /// for non-first fragments.
    pub dst_port: Option<u16>,
    /// The packet is an ICMPv4 error (types 3, 4, 5, 11, 12) or an ICMPv6 error
    /// (types 1 to 4).
    pub icmp_error: bool,
    /// The packet is TCP with SYN set (SYN-ACK included).
    pub tcp_syn: bool,
    /// Total packet length from the IP header; bytes of the slice beyond it are
    /// ignored.
    pub len: usize,
}

impl Summary {
    /// The flow this packet belongs to; absent ports are 0.
    pub fn flow(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: self.src,
            dst: self.dst,
            src_port: self.src_port.unwrap_or(0),
            dst_port: self.dst_port.unwrap_or(0),
        }
    }
}

/// Where the layers of a validated packet sit.
struct Layout {
    v6: bool,
    /// Offset of the transport header (or of the fragment data).
    l4: usize,
    /// The packet is a fragment other than the first.
    later_fragment: bool,
}

/// Reads and validates a packet.
fn parse(pkt: &[u8]) -> Result<(Layout, Summary), PacketError> {
    let first = *pkt.first().ok_or(PacketError::Truncated)?;
    let (v6, len, l4, proto, later_fragment) = match first >> 4 {
        4 => {
            if pkt.len() < IPV4_HEADER_LEN {
                return Err(PacketError::Truncated);
            }
            let ihl = usize::from(first & 0x0f) * 4;
            let len = usize::from(be16(pkt, 2)?);
            if ihl < IPV4_HEADER_LEN || len < ihl {
                return Err(PacketError::BadHeader);
            }
            if len > pkt.len() {
                return Err(PacketError::Truncated);
            }
            let later_fragment = be16(pkt, 6)? & 0x1fff != 0;
            (false, len, ihl, byte(pkt, 9)?, later_fragment)
        }
        6 => {
            if pkt.len() < IPV6_HEADER_LEN {
                return Err(PacketError::Truncated);
            }
            let len = IPV6_HEADER_LEN + usize::from(be16(pkt, 4)?);
            if len > pkt.len() {
                return Err(PacketError::Truncated);
            }
            let (l4, proto, later_fragment) =
                skip_v6_extensions(pkt, IPV6_HEADER_LEN, byte(pkt, 6)?, len)?;
            (true, len, l4, proto, later_fragment)
        }
        _ => return Err(PacketError::NotIp),
    };
    let mut summary = Summary {
        src: addr(pkt, addr_offset(v6, Side::Src), v6)?,
        dst: addr(pkt, addr_offset(v6, Side::Dst), v6)?,
        proto,
        src_port: None,
        dst_port: None,
        icmp_error: false,
        tcp_syn: false,
        len,
    };
    if !later_fragment {
        let seg = pkt.get(l4..len).ok_or(PacketError::Truncated)?;
        match proto {
            PROTO_TCP => {
                if seg.len() < TCP_HEADER_LEN {
                    return Err(PacketError::Truncated);
                }
                let data_offset = usize::from(byte(seg, 12)? >> 4) * 4;
                if data_offset < TCP_HEADER_LEN {
                    return Err(PacketError::BadHeader);
                }
                if data_offset > seg.len() {
                    return Err(PacketError::Truncated);
                }
                summary.src_port = Some(be16(seg, 0)?);
                summary.dst_port = Some(be16(seg, 2)?);
                summary.tcp_syn = byte(seg, 13)? & TCP_FLAG_SYN != 0;
            }
            PROTO_UDP => {
                if seg.len() < UDP_HEADER_LEN {
                    return Err(PacketError::Truncated);
                }
                summary.src_port = Some(be16(seg, 0)?);
                summary.dst_port = Some(be16(seg, 2)?);
            }
            PROTO_ICMP | PROTO_ICMPV6 if is_icmp_for(proto, v6) => {
                if seg.len() < ICMP_HEADER_LEN {
                    return Err(PacketError::Truncated);
                }
                let icmp_type = byte(seg, 0)?;
                summary.icmp_error = is_icmp_error(icmp_type, v6);
                if is_icmp_echo(icmp_type, v6) {
                    summary.src_port = Some(be16(seg, 4)?);
                }
            }
            _ => {}
        }
    }
    Ok((
        Layout {
            v6,
            l4,
            later_fragment,
        },
        summary,
    ))
}

/// Walks the IPv6 extension headers that precede the transport header, starting at
/// `off` whose type is `next`, within `pkt[..end]`. Returns the transport offset, the
/// final protocol, and whether the packet is a non-first fragment (in which case the
/// walk stops at the fragment header).
fn skip_v6_extensions(
    pkt: &[u8],
    mut off: usize,
    mut next: u8,
    end: usize,
) -> Result<(usize, u8, bool), PacketError> {
    loop {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTIONS => {
                if off + 2 > end {
                    return Err(PacketError::Truncated);
                }
                let header_len = (usize::from(byte(pkt, off + 1)?) + 1) * 8;
                if off + header_len > end {
                    return Err(PacketError::Truncated);
                }
                next = byte(pkt, off)?;
                off += header_len;
            }
            IPV6_FRAGMENT => {
                if off + IPV6_FRAGMENT_HEADER_LEN > end {
                    return Err(PacketError::Truncated);
                }
                next = byte(pkt, off)?;
                let fragment_offset = be16(pkt, off + 2)? >> 3;
                off += IPV6_FRAGMENT_HEADER_LEN;
                if fragment_offset != 0 {
                    return Ok((off, next, true));
                }
            }
            _ => return Ok((off, next, false)),
        }
    }
}

/// Reads a summary of `pkt`: addresses, final protocol, ports and flags.
///
/// Fails if the packet is not IPv4/IPv6, is shorter than its headers declare, or has
/// an inconsistent header; a TCP, UDP or ICMP header that does not fit is an error
/// (except in a non-first fragment, which carries none).
pub fn summarize(pkt: &[u8]) -> Result<Summary, PacketError> {
    parse(pkt).map(|(_, summary)| summary)
}

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

/// Which address of a packet to rewrite.
#[derive(Clone, Copy)]
enum Side {
    Src,
    Dst,
}

impl Side {
    /// The address of a quoted packet that corresponds to this one of the outer
    /// packet: the error travels back along the quoted packet's path.
    fn quoted(self) -> Side {
        match self {
            Side::Src => Side::Dst,
            Side::Dst => Side::Src,
        }
    }
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
    let (new_octets, n) = octets(new);
    let new_bytes = &new_octets[..n];
    let (old_octets, _) = octets(old);
    let old_bytes = &old_octets[..n];

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

/// If `pkt` is a TCP SYN (v4 or v6, SYN-ACK included) whose MSS option exceeds
/// `max_mss`, lowers it to `max_mss` and fixes the TCP checksum incrementally.
/// Returns true if it changed the packet. A SYN without an MSS option, any other
/// packet, and a SYN with malformed options are left untouched.
pub fn clamp_mss(pkt: &mut [u8], max_mss: u16) -> bool {
    let Ok((layout, summary)) = parse(pkt) else {
        return false;
    };
    if summary.proto != PROTO_TCP || !summary.tcp_syn {
        return false;
    }
    let Ok(data_offset) = byte(pkt, layout.l4 + 12) else {
        return false;
    };
    let options_start = layout.l4 + TCP_HEADER_LEN;
    let options_end = layout.l4 + usize::from(data_offset >> 4) * 4;

    // First pass: the whole option list must be well formed.
    let mut at = options_start;
    loop {
        match next_option(pkt, at, options_end) {
            Err(()) => return false,
            Ok(None) => break,
            Ok(Some((kind, len))) => {
                if kind == TCP_OPTION_MSS && len != TCP_OPTION_MSS_LEN {
                    return false;
                }
                at += len;
            }
        }
    }

    // Second pass: lower every MSS option above the limit.
    let mut change = Delta::default();
    let mut changed = false;
    let mut at = options_start;
    while let Ok(Some((kind, len))) = next_option(pkt, at, options_end) {
        if kind == TCP_OPTION_MSS {
            if let Ok(mss) = be16(pkt, at + 2) {
                if mss > max_mss {
                    change.replace(pkt, at + 2, &max_mss.to_be_bytes());
                    changed = true;
                }
            }
        }
        at += len;
    }
    if changed {
        let mut ignored = Delta::default();
        adjust_checksum(
            pkt,
            layout.l4 + TCP_CHECKSUM_OFFSET,
            change,
            false,
            &mut ignored,
        );
    }
    changed
}

/// Reads the TCP option at `at` within `pkt[..end]`: its kind and total length, or
/// `None` at the end of the list. `Err` if the option is malformed.
fn next_option(pkt: &[u8], at: usize, end: usize) -> Result<Option<(u8, usize)>, ()> {
    if at >= end {
        return Ok(None);
    }
    let kind = byte(pkt, at).map_err(|_| ())?;
    match kind {
        TCP_OPTION_END => Ok(None),
        TCP_OPTION_NOP => Ok(Some((kind, 1))),
        _ => {
            if at + 2 > end {
                return Err(());
            }
            let len = usize::from(byte(pkt, at + 1).map_err(|_| ())?);
            if len < 2 || at + len > end {
                return Err(());
            }
            Ok(Some((kind, len)))
        }
    }
}

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
    let (from_octets, n) = octets(from);
    let (to_octets, _) = octets(summary.src);
    let (from, to) = (&from_octets[..n], &to_octets[..n]);
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
        out.extend_from_slice(&whole[..quote_len]);
        let pseudo =
            sum_words(sum_words(0, from), to) + u64::from(payload_len) + u64::from(PROTO_ICMPV6);
        let checksum = !fold(sum_words(pseudo, &out[IPV6_HEADER_LEN..]));
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
        let header_checksum = !fold(sum_words(0, &out[..IPV4_HEADER_LEN]));
        write_be16(out, IPV4_CHECKSUM_OFFSET, header_checksum);
        out.extend_from_slice(&ICMPV4_UNREACHABLE);
        out.extend_from_slice(&[0; 6]);
        out.extend_from_slice(&whole[..quote_len]);
        let checksum = !fold(sum_words(0, &out[IPV4_HEADER_LEN..]));
        write_be16(out, IPV4_HEADER_LEN + ICMP_CHECKSUM_OFFSET, checksum);
    }
    Ok(())
}

/// Whether `proto` is the ICMP of the packet's family.
fn is_icmp_for(proto: u8, v6: bool) -> bool {
    if v6 {
        proto == PROTO_ICMPV6
    } else {
        proto == PROTO_ICMP
    }
}

/// ICMPv4 destination unreachable, source quench, redirect, time exceeded, parameter
/// problem; ICMPv6 destination unreachable, packet too big, time exceeded, parameter
/// problem.
fn is_icmp_error(icmp_type: u8, v6: bool) -> bool {
    if v6 {
        (1..=4).contains(&icmp_type)
    } else {
        matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
    }
}

/// Echo request or reply.
fn is_icmp_echo(icmp_type: u8, v6: bool) -> bool {
    if v6 {
        matches!(icmp_type, 128 | 129)
    } else {
        matches!(icmp_type, 0 | 8)
    }
}

/// Offset of the source or destination address in an IP header.
fn addr_offset(v6: bool, side: Side) -> usize {
    match (v6, side) {
        (false, Side::Src) => 12,
        (false, Side::Dst) => 16,
        (true, Side::Src) => 8,
        (true, Side::Dst) => 24,
    }
}

/// Reads the address at `off`.
fn addr(pkt: &[u8], off: usize, v6: bool) -> Result<IpAddr, PacketError> {
    if v6 {
        let bytes = pkt.get(off..off + 16).ok_or(PacketError::Truncated)?;
        let octets = <[u8; 16]>::try_from(bytes).map_err(|_| PacketError::Truncated)?;
        Ok(IpAddr::V6(Ipv6Addr::from(octets)))
    } else {
        let bytes = pkt.get(off..off + 4).ok_or(PacketError::Truncated)?;
        let octets = <[u8; 4]>::try_from(bytes).map_err(|_| PacketError::Truncated)?;
        Ok(IpAddr::V4(Ipv4Addr::from(octets)))
    }
}

/// The address's bytes (in the first 4 or 16 of the array) and their count.
fn octets(addr: IpAddr) -> ([u8; 16], usize) {
    match addr {
        IpAddr::V4(a) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&a.octets());
            (out, 4)
        }
        IpAddr::V6(a) => (a.octets(), 16),
    }
}

fn byte(pkt: &[u8], off: usize) -> Result<u8, PacketError> {
    pkt.get(off).copied().ok_or(PacketError::Truncated)
}

fn be16(pkt: &[u8], off: usize) -> Result<u16, PacketError> {
    match pkt.get(off..off + 2) {
        Some(&[hi, lo]) => Ok(u16::from_be_bytes([hi, lo])),
        _ => Err(PacketError::Truncated),
    }
}

fn write_be16(pkt: &mut [u8], off: usize, value: u16) {
    if let Some(field) = pkt.get_mut(off..off + 2) {
        field.copy_from_slice(&value.to_be_bytes());
    }
}

/// Folds a ones'-complement sum to 16 bits.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Adds the big-endian 16-bit words of `bytes` (an odd last byte padded with zero)
/// to `sum`.
fn sum_words(sum: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(2);
    let mut sum = chunks.by_ref().fold(sum, |acc, w| {
        acc + u64::from(u16::from_be_bytes([w[0], w[1]]))
    });
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// The ones'-complement difference (`~m + m'` of RFC 1624) made by rewriting bytes
/// of a region covered by a checksum. All checksummed regions here start at an even
/// packet offset, so a byte's place in its 16-bit word follows from the parity of its
/// packet offset.
#[derive(Clone, Copy, Default)]
struct Delta(u64);

impl Delta {
    /// Overwrites `pkt[off..off + new.len()]` with `new` and records the change.
    fn replace(&mut self, pkt: &mut [u8], off: usize, new: &[u8]) {
        let Some(region) = pkt.get_mut(off..off + new.len()) else {
            return;
        };
        for (i, (old, &new)) in region.iter_mut().zip(new).enumerate() {
            let shift = if (off + i) % 2 == 0 { 8 } else { 0 };
            self.0 += (u64::from(!*old) << shift) + (u64::from(new) << shift);
            *old = new;
        }
    }

    /// Adds another change to this one.
    fn merge(&mut self, other: Delta) {
        self.0 += other.0;
    }
}

/// Applies `change` to the 16-bit checksum at `off` (RFC 1624 equation 3) and records
/// the rewrite of the field in `record`. For UDP (`udp`), a checksum of 0 (none) is
/// left alone and a result of 0 is written as `0xFFFF`.
fn adjust_checksum(pkt: &mut [u8], off: usize, change: Delta, udp: bool, record: &mut Delta) {
    let Ok(old) = be16(pkt, off) else {
        return;
    };
    if udp && old == 0 {
        return;
    }
    let mut new = !fold(u64::from(!old) + u64::from(fold(change.0)));
    if udp && new == 0 {
        new = 0xffff;
    }
    record.replace(pkt, off, &new.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        icmpv4, icmpv6, Icmpv4Type, Icmpv6Type, IpHeaders, Ipv4HeaderSlice, NetSlice,
        PacketBuilder, PacketBuilderStep, SlicedPacket, TcpOptionElement, TcpSlice, TransportSlice,
    };
    use proptest::prelude::*;

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
                    Icmpv4Type::DestinationUnreachable(
                        icmpv4::DestUnreachableHeader::FilterProhibited
                    )
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

    #[test]
    fn icmp_prohibited_answers_with_a_bounded_quote() {
        let mut out = vec![0xaa; 3];
        for v6 in [false, true] {
            let (client, pool, remote) = family(v6);
            let max = if v6 { 1280 } else { 576 };
            for payload_len in [0, 100, 2000] {
                for kind in KINDS {
                    let mut original =
                        build(kind, pool, remote, (40000, 25), &vec![3; payload_len]);
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

    fn addr_strategy(v6: bool) -> BoxedStrategy<IpAddr> {
        if v6 {
            any::<[u8; 16]>().prop_map(a6).boxed()
        } else {
            any::<[u8; 4]>().prop_map(a4).boxed()
        }
    }

    /// A valid TCP or UDP packet: (kind, src, dst, replacement address, ports, payload).
    fn valid_packet() -> impl Strategy<Value = (Kind, IpAddr, IpAddr, IpAddr, (u16, u16), Vec<u8>)>
    {
        (any::<bool>(), prop_oneof![Just(Kind::Tcp), Just(Kind::Udp)]).prop_flat_map(
            |(v6, kind)| {
                (
                    Just(kind),
                    addr_strategy(v6),
                    addr_strategy(v6),
                    addr_strategy(v6),
                    any::<(u16, u16)>(),
                    proptest::collection::vec(any::<u8>(), 0..300),
                )
            },
        )
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
}
