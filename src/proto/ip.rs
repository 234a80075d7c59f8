//! Pure functions over raw IPv4 and IPv6 packets, as read from or written to a TUN
//! device (no link-layer header): [`summarize`] reads the addresses, protocol and
//! ports of any packet ([`parse`] also says where its layers sit); [`checksum`]
//! updates checksums incrementally (RFC 1624, equation 3: `HC' = ~(~HC + ~m + m')`),
//! never recomputing them over the payload; [`icmp_prohibited`] builds the ICMP
//! refusal an exit or a client answers with; [`clamp_mss`] lowers the MSS of a TCP
//! SYN. The exit's address translation built on them is `exit::nat`.
//!
//! Everything here is sans-IO and allocation-free per packet: rewrites happen in place
//! on the caller's buffer. The parser checks every length it relies on (IPv4 IHL and
//! total length, IPv6 payload length and extension-header lengths, TCP data offset,
//! TCP option lengths), so no input makes any function panic.
//!
//! Checksum conventions match the usual stacks: an updated checksum that comes out as
//! zero is written as `0x0000`, except for UDP, where zero means "no checksum" and the
//! value is written as `0xFFFF`; a UDP checksum of zero is left at zero.

pub mod checksum;
mod icmp;
mod tcp;

pub use self::icmp::icmp_prohibited;
pub use self::tcp::clamp_mss;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use self::icmp::{is_icmp_echo, is_icmp_error, is_icmp_for};

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

pub const IPV4_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;
pub const TCP_HEADER_LEN: usize = 20;
pub const UDP_HEADER_LEN: usize = 8;
pub const ICMP_HEADER_LEN: usize = 8;

pub const IPV4_CHECKSUM_OFFSET: usize = 10;
pub const TCP_CHECKSUM_OFFSET: usize = 16;
pub const UDP_CHECKSUM_OFFSET: usize = 6;
pub const ICMP_CHECKSUM_OFFSET: usize = 2;

/// IPv6 extension headers the parser walks past (next-header numbers).
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DEST_OPTIONS: u8 = 60;
const IPV6_FRAGMENT_HEADER_LEN: usize = 8;

/// SYN in the TCP flags byte.
pub(super) const TCP_FLAG_SYN: u8 = 0x02;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub v6: bool,
    /// Offset of the transport header (or of the fragment data).
    pub l4: usize,
    /// The packet is a fragment other than the first.
    pub later_fragment: bool,
}

/// Reads and validates a packet.
pub fn parse(pkt: &[u8]) -> Result<(Layout, Summary), PacketError> {
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
pub fn skip_v6_extensions(
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

/// Which address of a packet: its source or its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Src,
    Dst,
}

impl Side {
    /// The address of a quoted packet that corresponds to this one of the outer
    /// packet: the error travels back along the quoted packet's path.
    #[must_use]
    pub fn quoted(self) -> Side {
        match self {
            Side::Src => Side::Dst,
            Side::Dst => Side::Src,
        }
    }
}

/// Offset of the source or destination address in an IP header.
pub fn addr_offset(v6: bool, side: Side) -> usize {
    match (v6, side) {
        (false, Side::Src) => 12,
        (false, Side::Dst) => 16,
        (true, Side::Src) => 8,
        (true, Side::Dst) => 24,
    }
}

/// Reads the address at `off`.
pub fn addr(pkt: &[u8], off: usize, v6: bool) -> Result<IpAddr, PacketError> {
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

/// An address's bytes as they appear in its header (4 or 16), without allocating.
pub struct Octets {
    bytes: [u8; 16],
    v4: bool,
}

impl Octets {
    #[must_use]
    pub fn of(addr: IpAddr) -> Self {
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

    #[must_use]
    pub fn as_slice(&self) -> &[u8] {
        if self.v4 {
            &self.bytes[..4]
        } else {
            &self.bytes
        }
    }
}

pub fn byte(pkt: &[u8], off: usize) -> Result<u8, PacketError> {
    pkt.get(off).copied().ok_or(PacketError::Truncated)
}

pub fn be16(pkt: &[u8], off: usize) -> Result<u16, PacketError> {
    match pkt.get(off..off + 2) {
        Some(&[hi, lo]) => Ok(u16::from_be_bytes([hi, lo])),
        _ => Err(PacketError::Truncated),
    }
}

pub fn write_be16(pkt: &mut [u8], off: usize, value: u16) {
    if let Some(field) = pkt.get_mut(off..off + 2) {
        field.copy_from_slice(&value.to_be_bytes());
    }
}
