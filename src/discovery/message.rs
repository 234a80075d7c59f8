//! The discovery messages: one per DATA payload of a DIRECTORY circuit.

use thiserror::Error;

use crate::proto::descriptor::{MAX_DESCRIPTOR_LEN, MIN_DESCRIPTOR_LEN};

/// Most descriptors one [`Message::Get`] may ask for.
pub const MAX_GET: u8 = 64;
/// Longest discovery message: a [`Message::Desc`] of the largest descriptor.
pub const MAX_MESSAGE_LEN: usize = 1 + MAX_DESCRIPTOR_LEN;

const TYPE_GET: u8 = 1;
const TYPE_DESC: u8 = 2;
const TYPE_END: u8 = 3;
const TYPE_REFUSED: u8 = 4;
const TYPE_PUBLISH: u8 = 5;

const _: () = assert!(MAX_MESSAGE_LEN <= crate::proto::wire::MAX_PAYLOAD);

/// One discovery message: the whole payload of one DATA cell on a DIRECTORY circuit.
///
/// ```text
/// Get      01 max         2 bytes, max 1..=64
/// Desc     02 descriptor  164..=1025 bytes: a descriptor of 163..=1024 bytes
/// End      03 sent        2 bytes, sent 0..=64
/// Refused  04             1 byte
/// Publish  05 descriptor  164..=1025 bytes
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// Requester → gateway: send me up to `max` (1 to [`MAX_GET`]) descriptors.
    Get {
        /// How many descriptors the requester wants.
        max: u8,
    },
    /// Gateway → requester: one signed descriptor, as encoded by
    /// [`Descriptor::sign`](crate::proto::descriptor::Descriptor::sign) (not verified by [`Message::parse`]).
    Desc(&'a [u8]),
    /// Gateway → requester: the answer is complete; `sent` descriptors were sent.
    End {
        /// How many `Desc` messages the answer held (0 to [`MAX_GET`]).
        sent: u8,
    },
    /// Gateway → requester: the gateway does not share its descriptors now.
    Refused,
    /// Gateway → gateway, before a `Get`: the sender's own descriptor, so that a new
    /// gateway becomes known to its bootstrap peers (not verified by
    /// [`Message::parse`]; the receiving store verifies it).
    Publish(&'a [u8]),
}

/// Why a payload is not a discovery message.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum MessageError {
    /// An empty payload.
    #[error("empty discovery message")]
    Empty,
    /// A type byte this version does not know.
    #[error("unknown discovery message type {0}")]
    UnknownType(u8),
    /// A length the type does not allow.
    #[error("discovery message of type {kind} has invalid length {len}")]
    Length {
        /// The type byte.
        kind: u8,
        /// The payload length.
        len: usize,
    },
    /// A count outside 1..=64 (`Get`) or 0..=64 (`End`).
    #[error("discovery message count {0} is out of range")]
    Count(u8),
}

impl<'a> Message<'a> {
    /// Parses one payload strictly: known type, exact length, counts in range. A
    /// `Desc` is only checked for its length; the store verifies the descriptor.
    pub fn parse(payload: &'a [u8]) -> Result<Self, MessageError> {
        let (&kind, rest) = payload.split_first().ok_or(MessageError::Empty)?;
        let bad_length = MessageError::Length {
            kind,
            len: payload.len(),
        };
        match kind {
            TYPE_GET => match *rest {
                [max] if (1..=MAX_GET).contains(&max) => Ok(Message::Get { max }),
                [max] => Err(MessageError::Count(max)),
                _ => Err(bad_length),
            },
            TYPE_DESC => {
                if (MIN_DESCRIPTOR_LEN..=MAX_DESCRIPTOR_LEN).contains(&rest.len()) {
                    Ok(Message::Desc(rest))
                } else {
                    Err(bad_length)
                }
            }
            TYPE_END => match *rest {
                [sent] if sent <= MAX_GET => Ok(Message::End { sent }),
                [sent] => Err(MessageError::Count(sent)),
                _ => Err(bad_length),
            },
            TYPE_PUBLISH => {
                if (MIN_DESCRIPTOR_LEN..=MAX_DESCRIPTOR_LEN).contains(&rest.len()) {
                    Ok(Message::Publish(rest))
                } else {
                    Err(bad_length)
                }
            }
            TYPE_REFUSED if rest.is_empty() => Ok(Message::Refused),
            TYPE_REFUSED => Err(bad_length),
            _ => Err(MessageError::UnknownType(kind)),
        }
    }

    /// Appends the encoding to `out`. Fields are written as given: a message that
    /// breaks the rules [`Message::parse`] enforces is rejected by the receiver.
    pub fn emit(&self, out: &mut Vec<u8>) {
        match *self {
            Message::Get { max } => out.extend_from_slice(&[TYPE_GET, max]),
            Message::Desc(descriptor) => {
                out.push(TYPE_DESC);
                out.extend_from_slice(descriptor);
            }
            Message::End { sent } => out.extend_from_slice(&[TYPE_END, sent]),
            Message::Refused => out.push(TYPE_REFUSED),
            Message::Publish(descriptor) => {
                out.push(TYPE_PUBLISH);
                out.extend_from_slice(descriptor);
            }
        }
    }

    /// The encoding as a new payload.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.emit(&mut out);
        out
    }

    /// Length of the encoding.
    pub fn encoded_len(&self) -> usize {
        match self {
            Message::Get { .. } | Message::End { .. } => 2,
            Message::Desc(descriptor) | Message::Publish(descriptor) => 1 + descriptor.len(),
            Message::Refused => 1,
        }
    }
}
