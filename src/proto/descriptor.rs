//! Gateway descriptors: what a gateway publishes about itself so that clients can
//! discover it peer to peer, signed with its Ed25519 identity key
//! ([`crate::proto::identity::Identity::signing_key`]).
//!
//! A descriptor names the gateway's X25519 onion key (the key clients put in their path
//! and that authenticates the gateway in the Noise NK handshakes), where it listens,
//! whether it is an exit and, if so, a Tor-style summary of its exit policy
//! ([`crate::exit::policy::ExitPolicy::summary`]), and when it was published and expires.
//!
//! # Encoding
//!
//! Big-endian, fixed order, no optional fields (`docs/PROTOCOL.md` §10):
//!
//! ```text
//! offset  size  field
//!      0     1  version (2)
//!      1     1  flags: bit 0 exit, the other bits 0
//!      2    32  identity: Ed25519 verifying key
//!     34    32  onion_key: X25519 public key
//!     66     8  published: unix seconds
//!     74     8  expires: unix seconds
//!     82     2  port_first
//!     84     2  port_last
//!     86     4  padding_rate: bytes/s of PADDING it echoes, all circuits together
//!     90     1  padding_share: percent of what it receives it echoes at most (0 to 100)
//!     91     1  n_addrs (1 to 4)
//!     92     …  n_addrs times: family (4 or 6), then 4 or 16 address bytes
//!      …     2  summary_len (0 to 512)
//!      …     …  summary: ASCII
//!      …    64  signature
//! ```
//!
//! The signature is Ed25519 by `identity` over `"anonnet descriptor v2"` followed by
//! every byte before the signature; the prefix is signed, not sent. Verification uses
//! the strict Ed25519 rules (canonical `s`, no small-order keys or `R`).
//!
//! A descriptor is 163 to 738 bytes. Decoding rejects more than
//! [`MAX_DESCRIPTOR_LEN`] bytes before looking at them, reads every length against
//! its bound before the bytes it counts, and accepts one encoding of each descriptor
//! only: known version, no unknown flag bits, no trailing bytes, no IPv4-mapped IPv6
//! address, no repeated address, the summary in the exact form `ExitPolicy::summary`
//! writes.
//!
//! # What a valid descriptor proves
//!
//! Only that the holder of `identity` vouches for the other fields. The identity key is
//! derived from the onion key's secret, but a verifier cannot check that, so a
//! descriptor does not prove possession of `onion_key`: anyone can sign one naming
//! another gateway's onion key. Such a descriptor gains its signer nothing against a
//! client (the NK handshake fails without the onion key's secret), but whoever keeps
//! descriptors by [`Descriptor::key`] must not let one identity replace a descriptor
//! signed by another.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey, SIGNATURE_LENGTH};
use thiserror::Error;

use crate::proto::ports::{PortSummary, MAX_SUMMARY_LEN};

/// The encoding version this module reads and writes.
pub const DESCRIPTOR_VERSION: u8 = 2;
/// Largest encoded descriptor: one fits a cell payload with room for framing.
pub const MAX_DESCRIPTOR_LEN: usize = 1024;
/// Most addresses a descriptor lists.
pub const MAX_ADDRS: usize = 4;
/// Longest validity: `expires - published` is at most this.
pub const MAX_LIFETIME_SECS: u64 = 24 * 3600;
/// `published` may be at most this far ahead of the verifier's clock.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;
/// Most ports in `ports` (`last - first + 1`).
pub const MAX_PORTS: u32 = 1024;

/// Flag bit: the gateway offers the exit service.
const FLAG_EXIT: u8 = 0x01;
/// Prepended to the encoding to form the signed message.
const SIGNING_PREFIX: &[u8] = b"anonnet descriptor v2";
/// Bytes before the first address.
const FIXED_LEN: usize = 92;
/// Shortest descriptor: one IPv4 address and no summary.
pub const MIN_DESCRIPTOR_LEN: usize = FIXED_LEN + 1 + 4 + 2 + SIGNATURE_LENGTH;
/// Longest descriptor the field limits allow.
const MAX_ENCODED_LEN: usize = FIXED_LEN + MAX_ADDRS * 17 + 2 + MAX_SUMMARY_LEN + SIGNATURE_LENGTH;

const _: () = assert!(MAX_ENCODED_LEN <= MAX_DESCRIPTOR_LEN);
const _: () = assert!(MAX_DESCRIPTOR_LEN < crate::proto::wire::MAX_PAYLOAD);

/// A gateway descriptor (decoded and checked, or about to be signed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Ed25519 verifying key that signs the descriptor.
    pub identity: [u8; 32],
    /// X25519 public key for the NK handshakes: what client configs call the
    /// gateway's key.
    pub onion_key: [u8; 32],
    /// 1 to [`MAX_ADDRS`] distinct unicast addresses: not unspecified, loopback,
    /// multicast, IPv4 broadcast or IPv4-mapped IPv6.
    pub addrs: Vec<IpAddr>,
    /// UDP ports `first..=last` the gateway listens on at each address:
    /// `1 <= first <= last`, at most [`MAX_PORTS`] ports.
    pub ports: (u16, u16),
    /// Whether the gateway offers the exit service.
    pub exit: bool,
    /// Tor-style exit policy summary such as `accept 80,443` or
    /// `reject 25,119,135-139,445`, at most [`MAX_SUMMARY_LEN`] bytes; empty exactly
    /// when `!exit`.
    pub policy_summary: String,
    /// Unix seconds when the descriptor was made.
    pub published: u64,
    /// Unix seconds from which it is no longer valid: after `published`, at most
    /// [`MAX_LIFETIME_SECS`] later.
    pub expires: u64,
    /// How much padding the gateway echoes (its padding budget).
    pub padding: PaddingBudget,
}

/// A gateway's padding budget, as its descriptor states it: clients in adaptive
/// padding mode keep their padding through it within `share`, and send none
/// through a gateway with `rate` 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaddingBudget {
    /// Bytes per second of PADDING it echoes, all circuits together.
    pub rate: u32,
    /// The most it echoes, in percent of the datagrams it receives (0 to 100).
    pub share: u8,
}

/// Why a descriptor cannot be signed or was rejected. Messages name the problem,
/// never key bytes or addresses.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum DescriptorError {
    /// The bytes end before the descriptor does.
    #[error("descriptor is truncated")]
    Truncated,
    /// More than [`MAX_DESCRIPTOR_LEN`] bytes.
    #[error("descriptor is {0} bytes, more than {MAX_DESCRIPTOR_LEN}")]
    TooLong(usize),
    /// An encoding version other than [`DESCRIPTOR_VERSION`].
    #[error("unsupported descriptor version {0}")]
    Version(u8),
    /// A field breaks its rule; names the field.
    #[error("invalid descriptor field `{0}`")]
    BadField(&'static str),
    /// `identity` is not the verifying key of the key asked to sign.
    #[error("descriptor identity is not the signing key's")]
    IdentityMismatch,
    /// The signature does not verify with the embedded identity key.
    #[error("descriptor signature does not verify")]
    BadSignature,
    /// Published more than [`MAX_CLOCK_SKEW_SECS`] in the future.
    #[error("descriptor is published in the future")]
    NotYetValid,
    /// `expires` has passed.
    #[error("descriptor has expired")]
    Expired,
    /// Valid for longer than [`MAX_LIFETIME_SECS`].
    #[error("descriptor lifetime exceeds {MAX_LIFETIME_SECS} seconds")]
    LifetimeTooLong,
    /// Bytes after the signature.
    #[error("trailing bytes after descriptor")]
    TrailingBytes,
}

impl Descriptor {
    /// Signs and encodes: the binary layout of the module documentation followed by a
    /// 64-byte Ed25519 signature over everything before it (with the domain-separation
    /// prefix `"anonnet descriptor v2"` prepended to the signed message, not to the
    /// encoding).
    ///
    /// Checks the field rules first (not the times against a clock); `identity` must
    /// be `key`'s verifying key.
    pub fn sign(&self, key: &SigningKey) -> Result<Vec<u8>, DescriptorError> {
        self.check_fields()?;
        if key.verifying_key().to_bytes() != self.identity {
            return Err(DescriptorError::IdentityMismatch);
        }
        let mut out = self.encode_body();
        let signature = key.sign(&signed_message(&out));
        out.extend_from_slice(&signature.to_bytes());
        Ok(out)
    }

    /// Decodes and verifies: the encoding (strict: exact lengths, no trailing bytes,
    /// canonical encodings only), the field rules, the signature with the embedded
    /// identity key, then the times against `now_unix`.
    pub fn verify(bytes: &[u8], now_unix: u64) -> Result<Descriptor, DescriptorError> {
        if bytes.len() > MAX_DESCRIPTOR_LEN {
            return Err(DescriptorError::TooLong(bytes.len()));
        }
        let descriptor = Self::decode(bytes)?;
        descriptor.check_fields()?;
        let (body, signature) = bytes
            .split_last_chunk::<SIGNATURE_LENGTH>()
            .ok_or(DescriptorError::Truncated)?;
        let signature = Signature::from_bytes(signature);
        VerifyingKey::from_bytes(&descriptor.identity)
            .and_then(|key| key.verify_strict(&signed_message(body), &signature))
            .map_err(|_| DescriptorError::BadSignature)?;
        if descriptor.published > now_unix.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(DescriptorError::NotYetValid);
        }
        if now_unix >= descriptor.expires {
            return Err(DescriptorError::Expired);
        }
        Ok(descriptor)
    }

    /// Which gateway this is, for de-duplication: the onion key.
    pub fn key(&self) -> [u8; 32] {
        self.onion_key
    }

    /// Socket addresses (each address with the first port).
    pub fn socket_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.addrs
            .iter()
            .map(move |&ip| SocketAddr::new(ip, self.ports.0))
    }

    /// The encoding up to the signature, without checking the fields.
    fn encode_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_ENCODED_LEN);
        out.push(DESCRIPTOR_VERSION);
        out.push(if self.exit { FLAG_EXIT } else { 0 });
        out.extend_from_slice(&self.identity);
        out.extend_from_slice(&self.onion_key);
        out.extend_from_slice(&self.published.to_be_bytes());
        out.extend_from_slice(&self.expires.to_be_bytes());
        out.extend_from_slice(&self.ports.0.to_be_bytes());
        out.extend_from_slice(&self.ports.1.to_be_bytes());
        out.extend_from_slice(&self.padding.rate.to_be_bytes());
        out.push(self.padding.share);
        out.push(u8::try_from(self.addrs.len()).unwrap_or(u8::MAX));
        for addr in &self.addrs {
            match addr {
                IpAddr::V4(a) => {
                    out.push(4);
                    out.extend_from_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    out.push(6);
                    out.extend_from_slice(&a.octets());
                }
            }
        }
        let summary_len = u16::try_from(self.policy_summary.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&summary_len.to_be_bytes());
        out.extend_from_slice(self.policy_summary.as_bytes());
        out
    }

    /// Parses the encoding, which ends with the signature (verified by the caller).
    /// Checks what the decoding itself needs (lengths, version, flags, families,
    /// ASCII); [`Descriptor::check_fields`] checks the rest.
    fn decode(bytes: &[u8]) -> Result<Descriptor, DescriptorError> {
        let mut r = Reader { rest: bytes };
        let version = r.u8()?;
        if version != DESCRIPTOR_VERSION {
            return Err(DescriptorError::Version(version));
        }
        let flags = r.u8()?;
        if flags & !FLAG_EXIT != 0 {
            return Err(DescriptorError::BadField("flags"));
        }
        let identity = r.array::<32>()?;
        let onion_key = r.array::<32>()?;
        let published = u64::from_be_bytes(r.array()?);
        let expires = u64::from_be_bytes(r.array()?);
        let ports = (
            u16::from_be_bytes(r.array()?),
            u16::from_be_bytes(r.array()?),
        );
        let padding = PaddingBudget {
            rate: u32::from_be_bytes(r.array()?),
            share: r.u8()?,
        };
        let n_addrs = usize::from(r.u8()?);
        if n_addrs == 0 || n_addrs > MAX_ADDRS {
            return Err(DescriptorError::BadField("addrs"));
        }
        let mut addrs = Vec::with_capacity(n_addrs);
        for _ in 0..n_addrs {
            addrs.push(match r.u8()? {
                4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
                6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
                _ => return Err(DescriptorError::BadField("family")),
            });
        }
        let summary_len = usize::from(u16::from_be_bytes(r.array()?));
        if summary_len > MAX_SUMMARY_LEN {
            return Err(DescriptorError::BadField("policy_summary"));
        }
        let policy_summary = std::str::from_utf8(r.take(summary_len)?)
            .ok()
            .filter(|s| s.is_ascii())
            .ok_or(DescriptorError::BadField("policy_summary"))?
            .to_owned();
        r.array::<SIGNATURE_LENGTH>()?;
        if !r.rest.is_empty() {
            return Err(DescriptorError::TrailingBytes);
        }
        let descriptor = Descriptor {
            identity,
            onion_key,
            addrs,
            ports,
            exit: flags & FLAG_EXIT != 0,
            policy_summary,
            published,
            expires,
            padding,
        };
        Ok(descriptor)
    }

    /// The field rules shared by signing and verifying (all but the clock).
    fn check_fields(&self) -> Result<(), DescriptorError> {
        if self.addrs.is_empty() || self.addrs.len() > MAX_ADDRS {
            return Err(DescriptorError::BadField("addrs"));
        }
        for (i, addr) in self.addrs.iter().enumerate() {
            if !usable_addr(addr) || self.addrs.iter().take(i).any(|a| a == addr) {
                return Err(DescriptorError::BadField("addrs"));
            }
        }
        let (first, last) = self.ports;
        if first == 0 || first > last || u32::from(last - first) >= MAX_PORTS {
            return Err(DescriptorError::BadField("ports"));
        }
        if self.padding.share > 100 {
            return Err(DescriptorError::BadField("padding_share"));
        }
        let summary_ok = if self.exit {
            self.policy_summary.parse::<PortSummary>().is_ok()
        } else {
            self.policy_summary.is_empty()
        };
        if !summary_ok {
            return Err(DescriptorError::BadField("policy_summary"));
        }
        if self.expires <= self.published {
            return Err(DescriptorError::BadField("expires"));
        }
        if self.expires - self.published > MAX_LIFETIME_SECS {
            return Err(DescriptorError::LifetimeTooLong);
        }
        Ok(())
    }
}

/// The message the signature covers.
fn signed_message(body: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_PREFIX.len() + body.len());
    message.extend_from_slice(SIGNING_PREFIX);
    message.extend_from_slice(body);
    message
}

/// A unicast address a client can send to, in its one canonical family.
fn usable_addr(addr: &IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast())
        }
        IpAddr::V6(a) => {
            !(a.is_unspecified()
                || a.is_loopback()
                || a.is_multicast()
                || a.to_ipv4_mapped().is_some())
        }
    }
}

/// Reads a descriptor front to back; every read is bounds-checked.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DescriptorError> {
        let (head, rest) = self
            .rest
            .split_at_checked(n)
            .ok_or(DescriptorError::Truncated)?;
        self.rest = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DescriptorError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DescriptorError> {
        Ok(self.array::<1>()?[0])
    }
}

/// Whether an address belongs in a published descriptor (not loopback, link-local,
/// unspecified or multicast).
#[must_use]
pub fn publishable(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_multicast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests;
