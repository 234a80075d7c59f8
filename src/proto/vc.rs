//! The messages of a virtual circuit (PROTOCOL §12): JOIN, which a client sends on
//! each of its legs to the exit, JOINED, the exit's answer, and the sequence number
//! at the front of every VDATA payload. Parsing checks exact lengths and ranges, so
//! whatever a peer holding the circuit's keys sends is either one of these or
//! `Malformed`.

use std::fmt;

use crate::proto::wire::{WireError, MAX_PAYLOAD};

/// Bytes of a virtual circuit's identifier.
pub const VC_ID_LEN: usize = 16;
/// Most legs a virtual circuit may have.
pub const MAX_LEGS: u8 = 4;
/// Bytes of a JOIN payload: `vc(16) ‖ max_legs(1)`.
pub const JOIN_LEN: usize = VC_ID_LEN + 1;
/// Bytes of a JOINED payload: `legs(1)`.
pub const JOINED_LEN: usize = 1;
/// Bytes of the sequence number in front of a VDATA payload.
pub const SEQ_LEN: usize = 4;
/// Most tunnel payload bytes one VDATA cell carries: 1,244.
pub const MAX_VDATA: usize = MAX_PAYLOAD - SEQ_LEN;

/// A virtual circuit's identifier: 16 random bytes the client chose, and the only
/// credential of a leg that joins it. `Debug` shows none of it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VcId(pub [u8; VC_ID_LEN]);

impl fmt::Debug for VcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("VcId(..)")
    }
}

/// JOIN: adds the circuit it arrives on to virtual circuit `vc`, created with room
/// for `max_legs` legs if the exit does not know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Join {
    pub vc: VcId,
    /// 1 to [`MAX_LEGS`].
    pub max_legs: u8,
}

impl Join {
    /// Parses a JOIN payload: exactly [`JOIN_LEN`] bytes, `max_legs` in range.
    pub fn parse(p: &[u8]) -> Result<Self, WireError> {
        let (vc, &[max_legs]) = p
            .split_first_chunk::<VC_ID_LEN>()
            .ok_or(WireError::Malformed)?
        else {
            return Err(WireError::Malformed);
        };
        if !(1..=MAX_LEGS).contains(&max_legs) {
            return Err(WireError::Malformed);
        }
        Ok(Self {
            vc: VcId(*vc),
            max_legs,
        })
    }

    #[must_use]
    pub fn emit(&self) -> [u8; JOIN_LEN] {
        let mut b = [self.max_legs; JOIN_LEN];
        if let Some(vc) = b.first_chunk_mut::<VC_ID_LEN>() {
            *vc = self.vc.0;
        }
        b
    }
}

/// JOINED: the exit added the leg; the virtual circuit now has `legs` legs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// 1 to [`MAX_LEGS`].
    pub legs: u8,
}

impl Joined {
    /// Parses a JOINED payload: exactly one byte, 1 to [`MAX_LEGS`].
    pub fn parse(p: &[u8]) -> Result<Self, WireError> {
        match *p {
            [legs] if (1..=MAX_LEGS).contains(&legs) => Ok(Self { legs }),
            _ => Err(WireError::Malformed),
        }
    }

    #[must_use]
    pub fn emit(&self) -> [u8; JOINED_LEN] {
        [self.legs]
    }
}

/// The sequence number and tunnel payload of a VDATA payload: `seq(4) ‖ payload`,
/// the tunnel payload not empty.
pub fn split_vdata(p: &[u8]) -> Result<(u32, &[u8]), WireError> {
    match p.split_first_chunk::<SEQ_LEN>() {
        Some((seq, rest)) if !rest.is_empty() => Ok((u32::from_be_bytes(*seq), rest)),
        _ => Err(WireError::Malformed),
    }
}

/// Writes `seq` in front of a VDATA payload (its first [`SEQ_LEN`] bytes);
/// `Malformed` if `p` cannot hold it and a tunnel payload.
pub fn write_seq(seq: u32, p: &mut [u8]) -> Result<(), WireError> {
    match p.split_first_chunk_mut::<SEQ_LEN>() {
        Some((head, rest)) if !rest.is_empty() => {
            *head = seq.to_be_bytes();
            Ok(())
        }
        _ => Err(WireError::Malformed),
    }
}

#[cfg(test)]
mod tests;
