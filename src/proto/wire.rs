//! Byte layouts of every message (`docs/PROTOCOL.md`), smoltcp style: each datagram
//! kind is checked for its exact length once by [`classify`], and [`Header::parse`]
//! reads its clear fields into a typed [`Header`]; later accessors index fixed
//! offsets that cannot be out of range. Inner structures
//! (build payloads, cell bodies) have a `Repr` with `parse` and `emit`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// Protocol version carried in the high nibble of byte 0.
pub const VERSION: u8 = 1;

/// Message types (low nibble of byte 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsgType {
    LinkInit = 1,
    LinkResp = 2,
    LinkCtrl = 3,
    Cell = 4,
    CookieReply = 5,
}

impl MsgType {
    /// Byte 0 of a datagram of this type.
    #[must_use]
    pub const fn byte(self) -> u8 {
        (VERSION << 4) | self as u8
    }
}

pub const LINK_INIT_LEN: usize = 101;
pub const LINK_INIT_MSG: std::ops::Range<usize> = 5..69;
/// The bytes of a LINK_INIT that mac1 covers, and mac1.
pub const LINK_INIT_MACED: std::ops::Range<usize> = 0..69;
pub const LINK_INIT_MAC1: std::ops::Range<usize> = 69..85;
/// The bytes that mac2 covers (mac1 among them), and mac2 (zero without a cookie).
pub const LINK_INIT_MAC2ED: std::ops::Range<usize> = 0..85;
pub const LINK_INIT_MAC2: std::ops::Range<usize> = 85..101;
/// COOKIE_REPLY: type, receiver index, nonce, sealed cookie.
pub const COOKIE_REPLY_LEN: usize = 61;
pub const COOKIE_REPLY_NONCE: std::ops::Range<usize> = 5..29;
pub const COOKIE_REPLY_SEALED: std::ops::Range<usize> = 29..61;
pub const LINK_INIT_RESERVED: usize = 16;
pub const LINK_RESP_LEN: usize = 57;
pub const LINK_RESP_MSG: std::ops::Range<usize> = 9..57;

/// Header of a LINK_CTRL: type, receiver index, counter.
pub const LINK_CTRL_HEADER: usize = 13;
/// Inner header of a LINK_CTRL plaintext: kind, circuit ID.
pub const CTRL_INNER_HEADER: usize = 5;

pub const SLOTS: usize = 8;
/// Most hops a path may have: one per slot of the fixed-size BUILD message.
pub const MAX_HOPS: usize = SLOTS;
pub const SLOT_LEN: usize = 24;
pub const SLOTS_LEN: usize = SLOTS * SLOT_LEN;
/// Masked part of a CELL: circuit ID and slot 0.
pub const CELL_MASKED: std::ops::Range<usize> = 5..33;
/// Sample for the header mask: first 16 bytes of slot 1.
pub const CELL_SAMPLE: std::ops::Range<usize> = 33..49;
/// Slots 0..8 (slot 0 masked on the wire).
pub const CELL_SLOTS: std::ops::Range<usize> = 9..201;
pub const CELL_HEADER_LEN: usize = 201;
/// Largest body: a CELL of 1452 bytes fits a 1500-byte MTU over IPv6.
pub const MAX_BODY: usize = 1251;
pub const MIN_BODY: usize = 32;
pub const MAX_DATAGRAM: usize = CELL_HEADER_LEN + MAX_BODY;
/// Body plaintext header: command and payload length.
pub const BODY_HEADER: usize = 3;
/// Largest payload a cell carries.
pub const MAX_PAYLOAD: usize = MAX_BODY - BODY_HEADER;
/// Offset of the payload in a datagram buffer, for callers that write it in place.
pub const PAYLOAD_OFFSET: usize = CELL_HEADER_LEN + BODY_HEADER;

pub const BUILD_SLOT_LEN: usize = 144;
pub const BUILD_LEN: usize = SLOTS * BUILD_SLOT_LEN;
pub const BUILD_PAYLOAD_LEN: usize = 96;
pub const REPLY_SLOT_LEN: usize = 64;
pub const REPLY_LEN: usize = SLOTS * REPLY_SLOT_LEN;
pub const REPLY_PAYLOAD_LEN: usize = 16;
/// NK handshake messages with an empty payload (REKEY, REKEY_ACK).
pub const NK_MSG1_EMPTY: usize = 48;
pub const NK_MSG2_EMPTY: usize = 48;

/// Key phase bit of a slot counter.
pub const CTR_PHASE: u64 = 1 << 63;
/// TERMINAL (forward) / ORIGIN (backward) bit of a slot counter.
pub const CTR_FLAG: u64 = 1 << 62;
/// Counter bits of a slot counter.
pub const CTR_MASK: u64 = CTR_FLAG - 1;

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    #[error("empty datagram")]
    Empty,
    #[error("unsupported protocol version {0}")]
    Version(u8),
    #[error("unknown message type {0}")]
    UnknownType(u8),
    #[error("message type {kind:?} has wrong length {len}")]
    Length { kind: MsgType, len: usize },
    #[error("malformed field")]
    Malformed,
}

/// Checks version, type and the exact length allowed for the type.
pub fn classify(d: &[u8]) -> Result<MsgType, WireError> {
    let b = *d.first().ok_or(WireError::Empty)?;
    if b >> 4 != VERSION {
        return Err(WireError::Version(b >> 4));
    }
    let kind = match b & 0x0f {
        1 => MsgType::LinkInit,
        2 => MsgType::LinkResp,
        3 => MsgType::LinkCtrl,
        4 => MsgType::Cell,
        5 => MsgType::CookieReply,
        t => return Err(WireError::UnknownType(t)),
    };
    let len = d.len();
    let ok = match kind {
        MsgType::LinkInit => len == LINK_INIT_LEN,
        MsgType::LinkResp => len == LINK_RESP_LEN,
        MsgType::LinkCtrl => {
            let body = len
                .checked_sub(LINK_CTRL_HEADER + CTRL_INNER_HEADER + crate::proto::crypto::TAG_LEN);
            matches!(body, Some(1 | BUILD_LEN | REPLY_LEN))
        }
        MsgType::Cell => (CELL_HEADER_LEN + MIN_BODY..=MAX_DATAGRAM).contains(&len),
        MsgType::CookieReply => len == COOKIE_REPLY_LEN,
    };
    if ok {
        Ok(kind)
    } else {
        Err(WireError::Length { kind, len })
    }
}

/// The big-endian u32 at `at`, or `Malformed` if `d` ends before it.
fn be32(d: &[u8], at: usize) -> Result<u32, WireError> {
    d.get(at..)
        .and_then(<[u8]>::first_chunk)
        .map(|b| u32::from_be_bytes(*b))
        .ok_or(WireError::Malformed)
}

/// The big-endian u64 at `at`, or `Malformed` if `d` ends before it.
fn be64(d: &[u8], at: usize) -> Result<u64, WireError> {
    d.get(at..)
        .and_then(<[u8]>::first_chunk)
        .map(|b| u64::from_be_bytes(*b))
        .ok_or(WireError::Malformed)
}

/// The clear header fields of a datagram: the typed view a node dispatches on.
/// [`Header::parse`] checks version, type and exact length ([`classify`]) and reads
/// every field once, so no handler indexes the datagram for them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// LINK_INIT: `type ‖ sender (4) ‖ Noise NK msg1 (64) ‖ mac1 (16) ‖ mac2 (16)`.
    LinkInit { sender: u32 },
    /// LINK_RESP: `type ‖ sender (4) ‖ receiver (4) ‖ Noise NK msg2 (48)`.
    LinkResp { sender: u32, receiver: u32 },
    /// LINK_CTRL: `type ‖ receiver (4) ‖ counter (8) ‖ sealed inner message ‖ tag`.
    LinkCtrl { receiver: u32, counter: u64 },
    /// CELL: `type ‖ receiver (4) ‖ masked header ‖ slots ‖ body`; the circuit ID
    /// is masked and read with [`cell_circuit`] once the mask is removed.
    Cell { receiver: u32 },
    /// COOKIE_REPLY: `type ‖ receiver (4) ‖ nonce (24) ‖ sealed cookie (32)`.
    CookieReply { receiver: u32 },
}

impl Header {
    pub fn parse(d: &[u8]) -> Result<Self, WireError> {
        Ok(match classify(d)? {
            MsgType::LinkInit => Self::LinkInit {
                sender: be32(d, 1)?,
            },
            MsgType::LinkResp => Self::LinkResp {
                sender: be32(d, 1)?,
                receiver: be32(d, 5)?,
            },
            MsgType::LinkCtrl => Self::LinkCtrl {
                receiver: be32(d, 1)?,
                counter: be64(d, 5)?,
            },
            MsgType::Cell => Self::Cell {
                receiver: be32(d, 1)?,
            },
            MsgType::CookieReply => Self::CookieReply {
                receiver: be32(d, 1)?,
            },
        })
    }
}

/// A CELL's fixed-size header (bytes 0..201, which constant ranges index without a
/// panic) and its body; `None` if `buf` is shorter than a header.
pub fn split_cell(buf: &mut [u8]) -> Option<(&mut [u8; CELL_HEADER_LEN], &mut [u8])> {
    let (head, body) = buf.split_at_mut_checked(CELL_HEADER_LEN)?;
    Some((head.try_into().ok()?, body))
}

/// The 8 slots of a cell header (bytes 9..201, [`CELL_SLOTS`]).
#[must_use]
pub fn cell_slots(head: &mut [u8; CELL_HEADER_LEN]) -> &mut [u8; SLOTS_LEN] {
    let [_, _, _, _, _, _, _, _, _, slots @ ..] = head;
    slots
}

/// The circuit ID of a cell whose header mask has been removed (bytes 5..9).
#[must_use]
pub fn cell_circuit(head: &[u8; CELL_HEADER_LEN]) -> u32 {
    u32::from_be_bytes([head[5], head[6], head[7], head[8]])
}

/// The inner header of an opened LINK_CTRL: `kind ‖ circuit (4) ‖ body`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtrlHeader {
    pub kind: CtrlKind,
    pub circuit: u32,
}

impl CtrlHeader {
    /// Parses the kind and circuit ID and checks that the body after them has the
    /// kind's exact size.
    pub fn parse(inner: &[u8]) -> Result<Self, WireError> {
        let (&[kind, c0, c1, c2, c3], body) = inner
            .split_first_chunk::<CTRL_INNER_HEADER>()
            .ok_or(WireError::Malformed)?;
        Ok(Self {
            kind: CtrlKind::parse(kind, body.len())?,
            circuit: u32::from_be_bytes([c0, c1, c2, c3]),
        })
    }
}

/// Bytes of the rekey proof in a LINK_INIT's reserved plaintext.
pub const LINK_REKEY_PROOF: usize = LINK_INIT_RESERVED - 4;

/// The reserved plaintext of a LINK_INIT (inside Noise msg1): all zero for a new
/// link; for a rekey, the responder's receiver index of the link it replaces and a
/// proof that the initiator holds that link's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkInitReserved {
    /// The link being rekeyed (0: none).
    pub replaces: u32,
    pub proof: [u8; LINK_REKEY_PROOF],
}

impl LinkInitReserved {
    /// Reads the reserved bytes at the start of a decrypted msg1 payload.
    pub fn parse(payload: &[u8]) -> Result<Self, WireError> {
        let &[r0, r1, r2, r3, proof @ ..] = payload
            .first_chunk::<LINK_INIT_RESERVED>()
            .ok_or(WireError::Malformed)?;
        Ok(Self {
            replaces: u32::from_be_bytes([r0, r1, r2, r3]),
            proof,
        })
    }

    #[must_use]
    pub fn emit(&self) -> [u8; LINK_INIT_RESERVED] {
        let mut b = [0u8; LINK_INIT_RESERVED];
        b[..4].copy_from_slice(&self.replaces.to_be_bytes());
        b[4..].copy_from_slice(&self.proof);
        b
    }
}

/// Emits a LINK_INIT; `mac1` and `mac2` compute each MAC over the bytes before it
/// (`mac2` returns `None` without a cookie: zeros).
#[must_use]
pub fn emit_link_init(
    sender: u32,
    msg1: &[u8; 64],
    mac1: impl FnOnce(&[u8]) -> [u8; 16],
    mac2: impl FnOnce(&[u8]) -> Option<[u8; 16]>,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(LINK_INIT_LEN);
    v.push(MsgType::LinkInit.byte());
    v.extend_from_slice(&sender.to_be_bytes());
    v.extend_from_slice(msg1);
    let mac = mac1(&v);
    v.extend_from_slice(&mac);
    let mac = mac2(&v).unwrap_or_default();
    v.extend_from_slice(&mac);
    v
}

/// Emits a COOKIE_REPLY to the LINK_INIT of `receiver`.
#[must_use]
pub fn emit_cookie_reply(receiver: u32, nonce: &[u8; 24], sealed: &[u8; 32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(COOKIE_REPLY_LEN);
    v.push(MsgType::CookieReply.byte());
    v.extend_from_slice(&receiver.to_be_bytes());
    v.extend_from_slice(nonce);
    v.extend_from_slice(sealed);
    v
}

/// Emits a LINK_RESP.
#[must_use]
pub fn emit_link_resp(sender: u32, receiver: u32, msg2: &[u8; 48]) -> Vec<u8> {
    let mut v = Vec::with_capacity(LINK_RESP_LEN);
    v.push(MsgType::LinkResp.byte());
    v.extend_from_slice(&sender.to_be_bytes());
    v.extend_from_slice(&receiver.to_be_bytes());
    v.extend_from_slice(msg2);
    v
}

/// Kinds of link control messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtrlKind {
    Build = 1,
    Built = 2,
    Destroy = 3,
    /// Liveness probe of a link that sent and heard nothing back (PROTOCOL §2).
    Ping = 4,
    /// The answer to a PING.
    Pong = 5,
    /// The sender is stopping: the link and every circuit on it end.
    Close = 6,
}

impl CtrlKind {
    /// Parses a kind and checks that the body has that kind's exact size.
    pub fn parse(kind: u8, body_len: usize) -> Result<Self, WireError> {
        let k = match kind {
            1 => Self::Build,
            2 => Self::Built,
            3 => Self::Destroy,
            4 => Self::Ping,
            5 => Self::Pong,
            6 => Self::Close,
            _ => return Err(WireError::Malformed),
        };
        if body_len == k.body_len() {
            Ok(k)
        } else {
            Err(WireError::Malformed)
        }
    }

    #[must_use]
    pub const fn body_len(self) -> usize {
        match self {
            Self::Build => BUILD_LEN,
            Self::Built => REPLY_LEN,
            // One reserved zero byte: as long as a DESTROY on the wire.
            Self::Destroy | Self::Ping | Self::Pong | Self::Close => 1,
        }
    }
}

/// Reasons carried by DESTROY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestroyReason {
    Requested = 0,
    Timeout = 1,
    Unreachable = 2,
    Protocol = 3,
}

impl DestroyReason {
    #[must_use]
    pub fn from_byte(b: u8) -> Self {
        match b {
            0 => Self::Requested,
            1 => Self::Timeout,
            2 => Self::Unreachable,
            _ => Self::Protocol,
        }
    }
}

/// What the terminal hop of a circuit does with DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Not terminal: relay to the next hop.
    Relay = 0,
    /// Echo every DATA back (test facility).
    Echo = 1,
    /// Exit to the internet (the exit data plane).
    Exit = 2,
    /// Answer discovery requests (PROTOCOL §11).
    Directory = 3,
}

/// The plaintext a client sends to one hop inside its BUILD slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildPayload {
    pub service: Service,
    pub kb: [u8; 32],
    /// Next hop's address and static key; `None` for the terminal hop.
    pub next: Option<(SocketAddr, [u8; 32])>,
}

impl BuildPayload {
    pub fn parse(b: &[u8]) -> Result<Self, WireError> {
        let b: &[u8; BUILD_PAYLOAD_LEN] = b.try_into().map_err(|_| WireError::Malformed)?;
        if b[0] != VERSION {
            return Err(WireError::Malformed);
        }
        let service = match b[1] {
            0 => Service::Relay,
            1 => Service::Echo,
            2 => Service::Exit,
            3 => Service::Directory,
            _ => return Err(WireError::Malformed),
        };
        let mut kb = [0u8; 32];
        kb.copy_from_slice(&b[2..34]);
        let port = u16::from_be_bytes([b[51], b[52]]);
        let ip = match b[34] {
            0 => None,
            4 => Some(IpAddr::V4(Ipv4Addr::new(b[35], b[36], b[37], b[38]))),
            6 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[35..51]);
                Some(IpAddr::V6(Ipv6Addr::from(a)))
            }
            _ => return Err(WireError::Malformed),
        };
        let next = match ip {
            Some(ip) => {
                let mut key = [0u8; 32];
                key.copy_from_slice(&b[53..85]);
                if port == 0 {
                    return Err(WireError::Malformed);
                }
                Some((SocketAddr::new(ip, port), key))
            }
            None => None,
        };
        // A relay must name its next hop and a terminal hop must not.
        if (service == Service::Relay) != next.is_some() {
            return Err(WireError::Malformed);
        }
        Ok(Self { service, kb, next })
    }

    #[must_use]
    pub fn emit(&self) -> [u8; BUILD_PAYLOAD_LEN] {
        let mut b = [0u8; BUILD_PAYLOAD_LEN];
        b[0] = VERSION;
        b[1] = self.service as u8;
        b[2..34].copy_from_slice(&self.kb);
        if let Some((addr, key)) = &self.next {
            match addr.ip() {
                IpAddr::V4(v4) => {
                    b[34] = 4;
                    b[35..39].copy_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    b[34] = 6;
                    b[35..51].copy_from_slice(&v6.octets());
                }
            }
            b[51..53].copy_from_slice(&addr.port().to_be_bytes());
            b[53..85].copy_from_slice(key);
        }
        b
    }
}

/// Commands of a cell body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmd {
    Data = 1,
    Keepalive = 2,
    Rekey = 3,
    RekeyAck = 4,
    /// Backward from a relay whose link to its next hop died: 1 byte, the
    /// [`DestroyReason`] it then sends backward.
    Truncated = 5,
}

/// A view of a decrypted cell body: `cmd ‖ len ‖ payload ‖ padding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Body {
    pub cmd: Cmd,
    pub len: usize,
}

impl Body {
    /// Parses the body header and checks that `len` fits the body.
    pub fn parse(body: &[u8]) -> Result<Self, WireError> {
        let (&[cmd, l0, l1], rest) = body
            .split_first_chunk::<BODY_HEADER>()
            .ok_or(WireError::Malformed)?;
        let cmd = match cmd {
            1 => Cmd::Data,
            2 => Cmd::Keepalive,
            3 => Cmd::Rekey,
            4 => Cmd::RekeyAck,
            5 => Cmd::Truncated,
            _ => return Err(WireError::Malformed),
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        if len > rest.len() {
            return Err(WireError::Malformed);
        }
        Ok(Self { cmd, len })
    }

    /// Writes the header and zeroes the padding after the payload; `Malformed`,
    /// with nothing written, if `body` cannot hold the header and `len` bytes.
    pub fn emit(&self, body: &mut [u8]) -> Result<(), WireError> {
        let (head, rest) = body
            .split_first_chunk_mut::<BODY_HEADER>()
            .ok_or(WireError::Malformed)?;
        let padding = rest.get_mut(self.len..).ok_or(WireError::Malformed)?;
        let [l0, l1] = u16::try_from(self.len)
            .map_err(|_| WireError::Malformed)?
            .to_be_bytes();
        padding.fill(0);
        *head = [self.cmd as u8, l0, l1];
        Ok(())
    }

    /// The payload within `body`.
    #[must_use]
    pub fn payload(&self) -> std::ops::Range<usize> {
        BODY_HEADER..BODY_HEADER + self.len
    }
}

/// The smallest body size class that holds `payload` bytes.
#[must_use]
pub fn body_size(classes: &[usize], payload: usize) -> usize {
    let need = (BODY_HEADER + payload).max(MIN_BODY);
    classes
        .iter()
        .copied()
        .find(|&c| c >= need)
        .unwrap_or(MAX_BODY)
}

#[cfg(test)]
mod tests {
    // Tests index and unwrap what they built themselves.
    #![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn classify_vectors() {
        let mut init = vec![0x11, 0, 0, 0, 1];
        init.extend_from_slice(&[0xab; 96]);
        assert_eq!(classify(&init), Ok(MsgType::LinkInit));
        assert_eq!(Header::parse(&init), Ok(Header::LinkInit { sender: 1 }));
        // The lengths before the MACs were added (69, 85) no longer pass.
        for len in [69, 85] {
            assert_eq!(
                classify(&init[..len]),
                Err(WireError::Length {
                    kind: MsgType::LinkInit,
                    len
                })
            );
        }
        assert_eq!(classify(&[0x21, 0, 0]), Err(WireError::Version(2)));
        assert_eq!(classify(&[0x1f]), Err(WireError::UnknownType(15)));
        assert_eq!(classify(&[]), Err(WireError::Empty));
        let resp = emit_link_resp(0x0102_0304, 0x0506_0708, &[0xcd; 48]);
        assert_eq!(&resp[..9], &[0x12, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(classify(&resp), Ok(MsgType::LinkResp));
        assert_eq!(classify(&[0x13; 13 + 5 + 1 + 16]), Ok(MsgType::LinkCtrl));
        assert_eq!(classify(&vec![0x13; 1186]), Ok(MsgType::LinkCtrl));
        assert!(classify(&vec![0x13; 1187]).is_err());
        assert_eq!(classify(&vec![0x14; 1452]), Ok(MsgType::Cell));
        assert!(classify(&vec![0x14; 1453]).is_err());
        assert!(classify(&vec![0x14; 232]).is_err());
        assert_eq!(classify(&vec![0x14; 233]), Ok(MsgType::Cell));
    }

    #[test]
    fn header_vectors() {
        let resp = emit_link_resp(0x0102_0304, 0x0506_0708, &[0xcd; 48]);
        assert_eq!(
            Header::parse(&resp),
            Ok(Header::LinkResp {
                sender: 0x0102_0304,
                receiver: 0x0506_0708
            })
        );
        let mut ctrl = vec![0x13, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 1, 2];
        ctrl.extend_from_slice(&[0; 5 + 1 + 16]);
        assert_eq!(
            Header::parse(&ctrl),
            Ok(Header::LinkCtrl {
                receiver: 9,
                counter: 0x0102
            })
        );
        let mut cell = vec![0x14, 0xff, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
        cell.resize(233, 0);
        assert_eq!(
            Header::parse(&cell),
            Ok(Header::Cell {
                receiver: 0xff00_0001
            })
        );
        let (head, _) = split_cell(&mut cell).expect("a whole header");
        assert_eq!(cell_circuit(head), 0xdead_beef);
        assert_eq!(
            Header::parse(&cell[..232]),
            Err(WireError::Length {
                kind: MsgType::Cell,
                len: 232
            })
        );
    }

    #[test]
    fn ctrl_header_vectors() {
        let mut destroy = vec![3, 0, 0, 0, 7, 2];
        assert_eq!(
            CtrlHeader::parse(&destroy),
            Ok(CtrlHeader {
                kind: CtrlKind::Destroy,
                circuit: 7
            })
        );
        destroy.push(0);
        assert_eq!(CtrlHeader::parse(&destroy), Err(WireError::Malformed));
        assert_eq!(CtrlHeader::parse(&[3, 0, 0]), Err(WireError::Malformed));
        assert_eq!(
            CtrlHeader::parse(&[9, 0, 0, 0, 7, 2]),
            Err(WireError::Malformed)
        );
    }

    #[test]
    fn link_init_reserved_vectors() {
        let r = LinkInitReserved {
            replaces: 0x0a0b_0c0d,
            proof: [7; LINK_REKEY_PROOF],
        };
        let b = r.emit();
        assert_eq!(&b[..4], &[0x0a, 0x0b, 0x0c, 0x0d]);
        assert_eq!(&b[4..], &[7; LINK_REKEY_PROOF]);
        let mut payload = b.to_vec();
        payload.extend_from_slice(&[0xee; 8]);
        assert_eq!(LinkInitReserved::parse(&payload), Ok(r));
        assert_eq!(
            LinkInitReserved::parse(&b[..LINK_INIT_RESERVED - 1]),
            Err(WireError::Malformed)
        );
        let fresh = LinkInitReserved::parse(&[0; LINK_INIT_RESERVED]);
        assert_eq!(fresh.map(|r| r.replaces), Ok(0));
    }

    #[test]
    fn emit_link_init_layout() {
        let v = emit_link_init(
            0xdead_beef,
            &[7; 64],
            |covered| {
                assert_eq!(covered.len(), LINK_INIT_MACED.end);
                [9; 16]
            },
            |covered| {
                assert_eq!(covered.len(), LINK_INIT_MAC2ED.end);
                Some([8; 16])
            },
        );
        assert_eq!(v.len(), LINK_INIT_LEN);
        assert_eq!(&v[..5], &[0x11, 0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&v[LINK_INIT_MSG], &[7; 64]);
        assert_eq!(&v[LINK_INIT_MAC1], &[9; 16]);
        assert_eq!(&v[LINK_INIT_MAC2], &[8; 16]);
        let no_cookie = emit_link_init(1, &[7; 64], |_| [9; 16], |_| None);
        assert_eq!(&no_cookie[LINK_INIT_MAC2], &[0; 16]);
        let c = emit_cookie_reply(0x0102_0304, &[5; 24], &[6; 32]);
        assert_eq!(c.len(), COOKIE_REPLY_LEN);
        assert_eq!(&c[..5], &[0x15, 1, 2, 3, 4]);
        assert_eq!(&c[COOKIE_REPLY_NONCE], &[5; 24]);
        assert_eq!(&c[COOKIE_REPLY_SEALED], &[6; 32]);
        assert_eq!(
            Header::parse(&c),
            Ok(Header::CookieReply {
                receiver: 0x0102_0304
            })
        );
    }

    #[test]
    fn build_payload_vector() {
        let p = BuildPayload {
            service: Service::Relay,
            kb: [0x11; 32],
            next: Some(("198.18.0.2:9001".parse().expect("addr"), [0x22; 32])),
        };
        let b = p.emit();
        assert_eq!(&b[..2], &[1, 0]);
        assert_eq!(&b[34..39], &[4, 198, 18, 0, 2]);
        assert_eq!(&b[51..53], &[0x23, 0x29]);
        assert_eq!(&b[53..85], &[0x22; 32]);
        assert_eq!(&b[85..], &[0; 11]);
        assert_eq!(BuildPayload::parse(&b), Ok(p));
        let v6 = BuildPayload {
            service: Service::Relay,
            kb: [1; 32],
            next: Some(("[2001:db8::1]:443".parse().expect("addr"), [3; 32])),
        };
        assert_eq!(BuildPayload::parse(&v6.emit()), Ok(v6));
        let term = BuildPayload {
            service: Service::Echo,
            kb: [5; 32],
            next: None,
        };
        let b = term.emit();
        assert_eq!(b[34], 0);
        assert_eq!(BuildPayload::parse(&b), Ok(term));
        let mut bad = b;
        bad[1] = 0;
        assert!(BuildPayload::parse(&bad).is_err(), "relay without next hop");
        let mut bad = b;
        bad[1] = 9;
        assert!(BuildPayload::parse(&bad).is_err());
    }

    #[test]
    fn body_vector() {
        let mut b = [0xffu8; 32];
        Body {
            cmd: Cmd::Data,
            len: 4,
        }
        .emit(&mut b)
        .unwrap();
        b[3..7].copy_from_slice(b"ping");
        assert_eq!(&b[..7], &[1, 0, 4, b'p', b'i', b'n', b'g']);
        assert!(b[7..].iter().all(|&x| x == 0));
        let body = Body::parse(&b).expect("body");
        assert_eq!(&b[body.payload()], b"ping");
        assert!(Body::parse(&[1, 0, 30, 0]).is_err(), "length beyond body");
        assert!(Body::parse(&[9, 0, 0]).is_err(), "unknown command");
        assert_eq!(body_size(&[128, 256], 10), 128);
        assert_eq!(body_size(&[128, 256], 200), 256);
        assert_eq!(body_size(&[128, 256], 300), MAX_BODY);
    }

    #[test]
    fn body_emit_refuses_a_body_too_short_for_its_length() {
        for (size, len) in [(0, 0), (2, 0), (3, 1), (32, 30), (MAX_BODY, MAX_BODY)] {
            let mut b = vec![0xee; size];
            let body = Body {
                cmd: Cmd::Data,
                len,
            };
            assert_eq!(body.emit(&mut b), Err(WireError::Malformed), "{size} {len}");
            assert!(b.iter().all(|&x| x == 0xee), "nothing written");
        }
        let mut b = [0xee; 3];
        assert_eq!(
            Body {
                cmd: Cmd::Keepalive,
                len: 0
            }
            .emit(&mut b),
            Ok(())
        );
        assert_eq!(b, [2, 0, 0]);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = classify(&data);
            let _ = Body::parse(&data);
            let _ = BuildPayload::parse(&data);
            if data.len() >= 2 {
                let _ = CtrlKind::parse(data[0], data.len());
            }
        }

        #[test]
        fn build_payload_round_trip(kb in any::<[u8; 32]>(), key in any::<[u8; 32]>(),
                                    ip in any::<[u8; 16]>(), port in 1u16.., v4 in any::<bool>()) {
            let ip = if v4 { IpAddr::from([ip[0], ip[1], ip[2], ip[3]]) } else { IpAddr::from(ip) };
            let p = BuildPayload { service: Service::Relay, kb, next: Some((SocketAddr::new(ip, port), key)) };
            prop_assert_eq!(BuildPayload::parse(&p.emit()), Ok(p));
        }

        #[test]
        fn body_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..MAX_PAYLOAD)) {
            let size = body_size(&[128, 256, 512, 1024], payload.len());
            let mut b = vec![0xaa; size];
            b[BODY_HEADER..BODY_HEADER + payload.len()].copy_from_slice(&payload);
            Body { cmd: Cmd::Data, len: payload.len() }.emit(&mut b).unwrap();
            let body = Body::parse(&b).expect("parse");
            prop_assert_eq!(&b[body.payload()], &payload[..]);
        }
    }
}
