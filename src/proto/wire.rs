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
            matches!(body, Some(1 | PACE_LEN | BUILD_LEN | REPLY_LEN))
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
    /// is masked and read with [`Cell::circuit`] once the mask is removed.
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

/// A CELL datagram (PROTOCOL §2, CELL), smoltcp style: [`Cell::new_checked`] splits
/// off the fixed-size header once, so every accessor reads or writes fixed offsets
/// of an array and none can be out of range. A node opens it in place, layer by
/// layer, and sends the same buffer on.
///
/// ```text
/// 0      1              5             9             33            201
/// | type | receiver (4) | circuit (4) | slot 0 (24) | slots 1..8   | body ...
///                       '------ masked ------------'  '- sample: first 16 bytes of slot 1
/// ```
#[derive(Debug)]
pub struct Cell<'a> {
    head: &'a mut [u8; CELL_HEADER_LEN],
    body: &'a mut [u8],
}

impl<'a> Cell<'a> {
    /// The cell in `buf`; `None` if it is shorter than a cell header.
    pub fn new_checked(buf: &'a mut [u8]) -> Option<Self> {
        let (head, body) = buf.split_first_chunk_mut::<CELL_HEADER_LEN>()?;
        Some(Self { head, body })
    }

    /// The circuit ID (bytes 5..9), once the header mask is removed.
    #[must_use]
    pub fn circuit(&self) -> u32 {
        u32::from_be_bytes([self.head[5], self.head[6], self.head[7], self.head[8]])
    }

    /// Writes the clear fields of an outgoing cell: type, the receiver's index on
    /// the link, and the circuit ID (before the mask goes on).
    pub fn set_address(&mut self, receiver: u32, circuit: u32) {
        let [t, r0, r1, r2, r3, c0, c1, c2, c3, ..] = &mut *self.head;
        *t = MsgType::Cell.byte();
        [*r0, *r1, *r2, *r3] = receiver.to_be_bytes();
        [*c0, *c1, *c2, *c3] = circuit.to_be_bytes();
    }

    /// The sample the header mask is derived from ([`CELL_SAMPLE`]).
    #[must_use]
    pub fn sample(&self) -> [u8; CELL_SAMPLE.end - CELL_SAMPLE.start] {
        let mut sample = [0; CELL_SAMPLE.end - CELL_SAMPLE.start];
        sample.copy_from_slice(&self.head[CELL_SAMPLE]);
        sample
    }

    /// The bytes the header mask covers ([`CELL_MASKED`]: circuit ID and slot 0).
    pub fn masked_mut(&mut self) -> &mut [u8] {
        &mut self.head[CELL_MASKED]
    }

    /// The 8 slots of the header ([`CELL_SLOTS`]).
    pub fn slots_mut(&mut self) -> &mut [u8; SLOTS_LEN] {
        let [_, _, _, _, _, _, _, _, _, slots @ ..] = &mut *self.head;
        slots
    }

    /// The slots and the body at once: what one onion layer works on.
    pub fn slots_and_body(&mut self) -> (&mut [u8; SLOTS_LEN], &mut [u8]) {
        let [_, _, _, _, _, _, _, _, _, slots @ ..] = &mut *self.head;
        (slots, &mut *self.body)
    }

    /// The body: the body header ([`BODY_HEADER`]), the payload, the padding.
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &*self.body
    }

    pub fn body_mut(&mut self) -> &mut [u8] {
        &mut *self.body
    }

    /// The first `len` payload bytes (after the body header), if the body has them.
    #[must_use]
    pub fn payload(&self, len: usize) -> Option<&[u8]> {
        self.body.get(BODY_HEADER..BODY_HEADER.checked_add(len)?)
    }

    /// As [`Cell::payload`], to write.
    pub fn payload_mut(&mut self, len: usize) -> Option<&mut [u8]> {
        self.body
            .get_mut(BODY_HEADER..BODY_HEADER.checked_add(len)?)
    }
}

/// Where a payload of `len` bytes lies in a cell datagram's buffer.
#[must_use]
pub fn payload_range(len: usize) -> std::ops::Range<usize> {
    PAYLOAD_OFFSET..PAYLOAD_OFFSET + len
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
    /// The sender asks for a constant-rate link: `rate(4)` cells per second, 0 to
    /// stop (PROTOCOL §2, pacing).
    Pace = 7,
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
            7 => Self::Pace,
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
            Self::Pace => PACE_LEN,
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
    /// Every backward cell this hop originates has a body of `MAX_BODY` bytes
    /// ([`BUILD_FLAG_FULL`]), so that a constant-rate link carries one cell size.
    pub full: bool,
}

/// The body of a PACE: the rate in cells per second.
pub const PACE_LEN: usize = 4;

/// The BUILD payload flag (byte 85) asking the hop for full-size backward cells.
pub const BUILD_FLAG_FULL: u8 = 1;

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
        let full = match b[85] {
            0 => false,
            BUILD_FLAG_FULL => true,
            _ => return Err(WireError::Malformed),
        };
        Ok(Self {
            service,
            kb,
            next,
            full,
        })
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
        if self.full {
            b[85] = BUILD_FLAG_FULL;
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
    /// Padding (PROTOCOL §5): `flags(1) ‖ filler`, dropped by the hop it is addressed
    /// to (or by the client, backward). Flag [`PADDING_ECHO`] asks that hop to answer
    /// with one PADDING of the same payload length; no other flag is defined.
    Padding = 6,
    /// Forward to the exit: joins this circuit to a virtual circuit as one of its
    /// legs (PROTOCOL §12, [`crate::proto::vc::Join`]).
    Join = 7,
    /// Backward from the exit: the JOIN was accepted ([`crate::proto::vc::Joined`]).
    Joined = 8,
    /// A sequenced tunnel payload on a joined leg, either way: `seq(4) ‖ payload`.
    VData = 9,
}

/// The PADDING flag that asks the hop for one PADDING back.
pub const PADDING_ECHO: u8 = 1;

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
            6 => Cmd::Padding,
            7 => Cmd::Join,
            8 => Cmd::Joined,
            9 => Cmd::VData,
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
mod tests;
