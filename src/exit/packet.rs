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
/// An address's bytes as they appear in its header (4 or 16), without allocating.
struct Octets {
    bytes: [u8; 16],
    v4: bool,
}

impl Octets {
    fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(a) => {
                let mut bytes = [0; 16];
                bytes[..4].copy_from_slice(&a.octets());
                Self { bytes, v4: true }
            }
            IpAddr::V6(a) => Self {
                bytes: a.octets(),
                v4: false,
            },
        }
    }

    fn as_slice(&self) -> &[u8] {
        if self.v4 {
            &self.bytes[..4]
        } else {
            &self.bytes
        }
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
    let mut sum = chunks.by_ref().fold(sum, |acc, w| match w {
        &[hi, lo] => acc + u64::from(u16::from_be_bytes([hi, lo])),
        _ => acc,
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
mod tests;
