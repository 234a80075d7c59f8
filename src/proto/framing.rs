//! Tunnel payloads: how IP packets ride in the DATA cells of an exit circuit (or
//! the VDATA cells of a virtual circuit's legs, after their sequence number).
//!
//! A tunnel payload is either a whole IP packet (its first nibble
//! is the IP version, 4 or 6) or a fragment of one (first byte [`FRAGMENT`]). A cell
//! carries at most [`MAX_PAYLOAD`] bytes, less than the 1280 bytes IPv6 requires of a
//! link, so larger packets are split into up to [`MAX_FRAGMENTS`] fragments:
//!
//! ```text
//! 0      1        3       4       5
//! | 0x10 | id (2) | index | count | data ...
//! ```
//!
//! Every fragment but the last fills its cell: it carries exactly
//! [`Carrier::stride`] bytes ([`FRAGMENT_DATA`] in DATA cells, 4 fewer in the VDATA
//! cells of a virtual circuit, whose payload starts with a sequence number), so a
//! fragment's offset is `index * stride`. The receiver keeps
//! [`REASSEMBLY_SLOTS`] packets in progress per circuit; a newer id takes the oldest
//! slot, and a slot older than [`REASSEMBLY_TIMEOUT`] is abandoned.

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::proto::vc::MAX_VDATA;
use crate::proto::wire::MAX_PAYLOAD;

/// First byte of a fragment payload (version nibble 1, never an IP version).
pub const FRAGMENT: u8 = 0x10;
/// Bytes before a fragment's data.
pub const FRAGMENT_HEADER: usize = 5;
/// Data bytes in every fragment but the last.
pub const FRAGMENT_DATA: usize = MAX_PAYLOAD - FRAGMENT_HEADER;
/// Fragments per packet at most.
pub const MAX_FRAGMENTS: usize = 4;
/// The largest packet a circuit carries in DATA cells (4,972 bytes): the upper
/// bound of the MTU.
pub const MAX_PACKET: usize = MAX_FRAGMENTS * FRAGMENT_DATA;
/// Packets being reassembled at once per circuit and direction.
pub const REASSEMBLY_SLOTS: usize = 4;
/// A packet whose fragments have not all arrived within this time is dropped.
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(2);

/// A DATA payload that is not a valid tunnel payload.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    #[error("empty payload")]
    Empty,
    #[error("payload type {0:#04x} is neither an IP packet nor a fragment")]
    UnknownType(u8),
    #[error("malformed fragment header")]
    BadFragment,
    #[error("VDATA payload shorter than its sequence number")]
    NoSequence,
}

/// What a DATA payload holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    Packet(&'a [u8]),
    Fragment {
        id: u16,
        index: u8,
        count: u8,
        data: &'a [u8],
    },
}

/// The cells a circuit's tunnel payloads ride in, which set the room for a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Carrier {
    /// DATA: the whole cell payload ([`MAX_PAYLOAD`]).
    #[default]
    Data,
    /// VDATA of a virtual circuit: the cell payload less its sequence number
    /// ([`MAX_VDATA`]).
    VData,
}

impl Carrier {
    /// The most bytes of one tunnel payload.
    #[must_use]
    pub const fn capacity(self) -> usize {
        match self {
            Self::Data => MAX_PAYLOAD,
            Self::VData => MAX_VDATA,
        }
    }

    /// Data bytes in every fragment but the last.
    #[must_use]
    pub const fn stride(self) -> usize {
        self.capacity() - FRAGMENT_HEADER
    }

    /// The largest packet carried: [`MAX_FRAGMENTS`] full fragments.
    #[must_use]
    pub const fn max_packet(self) -> usize {
        MAX_FRAGMENTS * self.stride()
    }

    /// Classifies a tunnel payload.
    pub fn classify(self, payload: &[u8]) -> Result<Payload<'_>, PayloadError> {
        let first = *payload.first().ok_or(PayloadError::Empty)?;
        match first >> 4 {
            4 | 6 => Ok(Payload::Packet(payload)),
            _ if first == FRAGMENT => {
                let Some((&[_, id0, id1, index, count], data)) =
                    payload.split_first_chunk::<FRAGMENT_HEADER>()
                else {
                    return Err(PayloadError::BadFragment);
                };
                let last = usize::from(index) + 1 == usize::from(count);
                let stride = self.stride();
                if data.is_empty()
                    || count < 2
                    || usize::from(count) > MAX_FRAGMENTS
                    || index >= count
                    || (!last && data.len() != stride)
                    || data.len() > stride
                {
                    return Err(PayloadError::BadFragment);
                }
                Ok(Payload::Fragment {
                    id: u16::from_be_bytes([id0, id1]),
                    index,
                    count,
                    data,
                })
            }
            _ => Err(PayloadError::UnknownType(first)),
        }
    }

    /// How many fragments a packet of `len` bytes needs (1 = it fits in one cell
    /// whole).
    #[must_use]
    pub fn fragment_count(self, len: usize) -> usize {
        if len <= self.capacity() {
            1
        } else {
            len.div_ceil(self.stride())
        }
    }

    /// Writes fragment `index` of `packet` (which needs 2 to [`MAX_FRAGMENTS`]
    /// fragments) into `out` and returns the payload length: `None`, with nothing
    /// written, if the packet needs no fragmenting or more than [`MAX_FRAGMENTS`]
    /// fragments, if it has no fragment `index`, or if `out` is shorter than the
    /// fragment.
    pub fn write_fragment(
        self,
        packet: &[u8],
        id: u16,
        index: usize,
        out: &mut [u8],
    ) -> Option<usize> {
        let count = self.fragment_count(packet.len());
        if !(2..=MAX_FRAGMENTS).contains(&count) {
            return None;
        }
        let data = packet.chunks(self.stride()).nth(index)?;
        let (header, body) = out.split_first_chunk_mut::<FRAGMENT_HEADER>()?;
        body.get_mut(..data.len())?.copy_from_slice(data);
        let [id0, id1] = id.to_be_bytes();
        // index < count <= MAX_FRAGMENTS: both fit a byte.
        *header = [FRAGMENT, id0, id1, index as u8, count as u8];
        Some(FRAGMENT_HEADER + data.len())
    }
}

/// How a packet goes into a circuit's cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Whole, in one cell.
    Whole,
    /// As `count` fragments that share `id`, each written by [`Carrier::write_fragment`].
    Fragments { id: u16, count: usize },
    /// Larger than [`Carrier::max_packet`]: not carried.
    TooLarge,
}

/// Numbers the fragmented packets one sender puts into a circuit. Ids wrap: a
/// receiver keeps only [`REASSEMBLY_SLOTS`] packets in progress, so an id comes
/// back long after its slot was freed or abandoned.
#[derive(Debug, Default)]
pub struct Fragmenter {
    next_id: u16,
}

impl Fragmenter {
    /// How a packet of `len` bytes is sent in `carrier`'s cells; a fragmented packet
    /// takes the next id.
    pub fn split(&mut self, len: usize, carrier: Carrier) -> Split {
        match carrier.fragment_count(len) {
            1 => Split::Whole,
            count if count > MAX_FRAGMENTS => Split::TooLarge,
            count => {
                let id = self.next_id;
                self.next_id = id.wrapping_add(1);
                Split::Fragments { id, count }
            }
        }
    }
}

#[derive(Debug)]
struct Slot {
    id: u16,
    count: u8,
    have: u8,
    len: usize,
    started: Instant,
    buf: Vec<u8>,
}

/// Reassembles fragmented packets of one circuit and direction. Memory is bounded:
/// [`REASSEMBLY_SLOTS`] buffers of [`MAX_PACKET`] bytes, allocated once.
#[derive(Debug, Default)]
pub struct Reassembler {
    carrier: Carrier,
    slots: Vec<Slot>,
    /// Fragments dropped: duplicates, inconsistent counts, abandoned packets.
    pub dropped: u64,
}

impl Reassembler {
    /// A reassembler of the tunnel payloads of `carrier`'s cells.
    #[must_use]
    pub fn new(carrier: Carrier) -> Self {
        Self {
            carrier,
            ..Self::default()
        }
    }

    /// The cells whose payloads it takes.
    #[must_use]
    pub fn carrier(&self) -> Carrier {
        self.carrier
    }

    /// The packet a DATA payload completes: the payload itself when it is a whole
    /// packet, the reassembled packet when it is the last missing fragment, else
    /// `None`. A payload that is neither is an error.
    pub fn complete<'a>(
        &'a mut self,
        now: Instant,
        payload: &'a mut [u8],
    ) -> Result<Option<&'a mut [u8]>, PayloadError> {
        Ok(match self.carrier.classify(payload)? {
            Payload::Packet(_) => Some(payload),
            Payload::Fragment {
                id,
                index,
                count,
                data,
            } => self.push(now, id, index, count, data),
        })
    }

    /// Adds a fragment that [`Carrier::classify`] accepted (so `index < count <=`
    /// [`MAX_FRAGMENTS`] and `data` fits its place); returns the whole packet once
    /// its last fragment is in.
    fn push(
        &mut self,
        now: Instant,
        id: u16,
        index: u8,
        count: u8,
        data: &[u8],
    ) -> Option<&mut [u8]> {
        let found = self.slots.iter().position(|s| s.id == id && s.have != 0);
        let pos = match found {
            Some(p)
                if self.slots.get(p).is_some_and(|s| {
                    now.saturating_duration_since(s.started) < REASSEMBLY_TIMEOUT
                }) =>
            {
                p
            }
            found => {
                let p = found.unwrap_or_else(|| self.free_slot(now));
                let s = self.slots.get_mut(p)?;
                self.dropped += u64::from(s.have.count_ones());
                s.id = id;
                s.count = count;
                s.have = 0;
                s.len = 0;
                s.started = now;
                p
            }
        };
        let s = self.slots.get_mut(pos)?;
        let start = usize::from(index) * self.carrier.stride();
        let (Some(bit), Some(place)) = (
            1u8.checked_shl(u32::from(index)),
            s.buf.get_mut(start..start + data.len()),
        ) else {
            self.dropped += 1;
            return None;
        };
        if s.count != count || s.have & bit != 0 {
            self.dropped += 1;
            return None;
        }
        place.copy_from_slice(data);
        s.have |= bit;
        if index + 1 == count {
            s.len = start + data.len();
        }
        if u32::from(s.have) + 1 == 1 << count {
            s.have = 0;
            return s.buf.get_mut(..s.len);
        }
        None
    }

    /// An empty slot, or the oldest one (whose partial packet is abandoned).
    fn free_slot(&mut self, now: Instant) -> usize {
        if let Some(p) = self.slots.iter().position(|s| s.have == 0) {
            return p;
        }
        if self.slots.len() < REASSEMBLY_SLOTS {
            self.slots.push(Slot {
                id: 0,
                count: 0,
                have: 0,
                len: 0,
                started: now,
                buf: vec![0; MAX_PACKET],
            });
            return self.slots.len() - 1;
        }
        self.slots
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| s.started)
            .map_or(0, |(i, _)| i)
    }
}

#[cfg(test)]
mod tests;
