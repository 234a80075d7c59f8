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
//!      0     1  version (1)
//!      1     1  flags: bit 0 exit, the other bits 0
//!      2    32  identity: Ed25519 verifying key
//!     34    32  onion_key: X25519 public key
//!     66     8  published: unix seconds
//!     74     8  expires: unix seconds
//!     82     2  port_first
//!     84     2  port_last
//!     86     1  n_addrs (1 to 4)
//!     87     …  n_addrs times: family (4 or 6), then 4 or 16 address bytes
//!      …     2  summary_len (0 to 512)
//!      …     …  summary: ASCII
//!      …    64  signature
//! ```
//!
//! The signature is Ed25519 by `identity` over `"anonnet descriptor v1"` followed by
//! every byte before the signature; the prefix is signed, not sent. Verification uses
//! the strict Ed25519 rules (canonical `s`, no small-order keys or `R`).
//!
//! A descriptor is 158 to 733 bytes. Decoding rejects more than
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

/// The encoding version this module reads and writes.
pub const DESCRIPTOR_VERSION: u8 = 1;
/// Largest encoded descriptor: one fits a cell payload with room for framing.
pub const MAX_DESCRIPTOR_LEN: usize = 1024;
/// Most addresses a descriptor lists.
pub const MAX_ADDRS: usize = 4;
/// Longest validity: `expires - published` is at most this.
pub const MAX_LIFETIME_SECS: u64 = 24 * 3600;
/// `published` may be at most this far ahead of the verifier's clock.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;
/// Longest exit policy summary.
pub const MAX_SUMMARY_LEN: usize = 512;
/// Most ports in `ports` (`last - first + 1`).
pub const MAX_PORTS: u32 = 1024;

/// Flag bit: the gateway offers the exit service.
const FLAG_EXIT: u8 = 0x01;
/// Prepended to the encoding to form the signed message.
const SIGNING_PREFIX: &[u8] = b"anonnet descriptor v1";
/// Bytes before the first address.
const FIXED_LEN: usize = 87;
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
    /// prefix `"anonnet descriptor v1"` prepended to the signed message, not to the
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
        let (descriptor, body_len, signature) = Self::decode(bytes)?;
        descriptor.check_fields()?;
        let signature = Signature::from_bytes(&signature);
        VerifyingKey::from_bytes(&descriptor.identity)
            .and_then(|key| key.verify_strict(&signed_message(&bytes[..body_len]), &signature))
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

    /// Parses the encoding; returns the descriptor, the offset of the signature and
    /// the signature. Checks what the decoding itself needs (lengths, version, flags, families,
    /// ASCII); [`Descriptor::check_fields`] checks the rest.
    fn decode(
        bytes: &[u8],
    ) -> Result<(Descriptor, usize, [u8; SIGNATURE_LENGTH]), DescriptorError> {
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
        let body_len = bytes.len() - r.rest.len();
        let signature = r.array()?;
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
        };
        Ok((descriptor, body_len, signature))
    }

    /// The field rules shared by signing and verifying (all but the clock).
    fn check_fields(&self) -> Result<(), DescriptorError> {
        if self.addrs.is_empty() || self.addrs.len() > MAX_ADDRS {
            return Err(DescriptorError::BadField("addrs"));
        }
        for (i, addr) in self.addrs.iter().enumerate() {
            if !usable_addr(addr) || self.addrs[..i].contains(addr) {
                return Err(DescriptorError::BadField("addrs"));
            }
        }
        let (first, last) = self.ports;
        if first == 0 || first > last || u32::from(last - first) >= MAX_PORTS {
            return Err(DescriptorError::BadField("ports"));
        }
        let summary_ok = if self.exit {
            self.policy_summary.len() <= MAX_SUMMARY_LEN && valid_summary(&self.policy_summary)
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

/// Whether `s` is a summary in the form `ExitPolicy::summary` writes: `accept ` or
/// `reject `, then comma-separated ports (`P`) and ranges (`P-Q`, `P < Q`) in
/// 1..=65535, decimal without leading zeros, ascending, neither overlapping nor
/// adjacent.
fn valid_summary(s: &str) -> bool {
    let Some(list) = s
        .strip_prefix("accept ")
        .or_else(|| s.strip_prefix("reject "))
    else {
        return false;
    };
    let mut lowest = 1u32;
    for entry in list.split(',') {
        let range = match entry.split_once('-') {
            Some((lo, hi)) => port(lo).zip(port(hi)).filter(|(lo, hi)| lo < hi),
            None => port(entry).map(|p| (p, p)),
        };
        match range {
            Some((lo, hi)) if lo >= lowest => lowest = hi + 2,
            _ => return false,
        }
    }
    true
}

/// A port written in decimal without leading zeros, 1..=65535.
fn port(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 5 || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|p| (1..=65535).contains(p))
}

/// Reads a descriptor front to back; every read is bounds-checked.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DescriptorError> {
        if self.rest.len() < n {
            return Err(DescriptorError::Truncated);
        }
        let (head, rest) = self.rest.split_at(n);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::exit::policy::ExitPolicy;
    use crate::proto::identity::Identity;
    use proptest::prelude::*;

    const NOW: u64 = 1_700_000_000;

    fn identity() -> Identity {
        Identity::from_secret([7; 32])
    }

    fn key() -> SigningKey {
        identity().signing_key()
    }

    fn sample() -> Descriptor {
        Descriptor {
            identity: key().verifying_key().to_bytes(),
            onion_key: identity().public().0,
            addrs: vec![
                IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
                IpAddr::V6("2001:db8::7".parse().unwrap()),
            ],
            ports: (51820, 51823),
            exit: true,
            policy_summary: "reject 25,119,135-139,445".into(),
            published: NOW,
            expires: NOW + 3 * 3600,
        }
    }

    fn relay() -> Descriptor {
        Descriptor {
            exit: false,
            policy_summary: String::new(),
            ..sample()
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Signs without checking the fields, to make descriptors that break a rule.
    fn sign_unchecked(d: &Descriptor) -> Vec<u8> {
        resign(d.encode_body())
    }

    /// Appends a valid signature by [`key`] to an encoding up to the signature.
    fn resign(mut body: Vec<u8>) -> Vec<u8> {
        let signature = key().sign(&signed_message(&body));
        body.extend_from_slice(&signature.to_bytes());
        body
    }

    /// Both signing and verifying (of a validly signed encoding) reject `d` with `e`.
    fn assert_rejected(d: &Descriptor, e: DescriptorError) {
        assert_eq!(d.sign(&key()), Err(e), "sign {d:?}");
        assert_eq!(
            Descriptor::verify(&sign_unchecked(d), NOW),
            Err(e),
            "verify {d:?}"
        );
    }

    fn assert_accepted(d: &Descriptor) {
        let bytes = d.sign(&key()).unwrap();
        assert_eq!(&Descriptor::verify(&bytes, NOW).unwrap(), d);
    }

    #[test]
    fn fixed_vector() {
        // Computed independently (BLAKE2s, X25519 and Ed25519 of another library).
        let bytes = sample().sign(&key()).unwrap();
        assert_eq!(bytes.len(), 200);
        assert_eq!(&bytes[..2], &[1, 1]);
        assert_eq!(
            bytes[2..34],
            hex("0a955bb6c59feaa6f3d6ad6a0785c64762ee6766de8c9db75231cd6e9f69a41b")
        );
        assert_eq!(
            bytes[34..66],
            hex("13be4feaeaf204c7fd3358fc9c00721881d174278128227ec674f37f7fe97b6d")
        );
        assert_eq!(
            bytes[66..111],
            hex(concat!(
                "000000006553f100",                   // published
                "0000000065541b30",                   // expires
                "ca6c",                               // port_first
                "ca6f",                               // port_last
                "02",                                 // n_addrs
                "04c6336407",                         // 198.51.100.7
                "0620010db8000000000000000000000007", // 2001:db8::7
                "0019",                               // summary_len
            ))
        );
        assert_eq!(&bytes[111..136], b"reject 25,119,135-139,445");
        assert_eq!(
            bytes[136..],
            hex(concat!(
                "83841b228e5d8050b8c34830e93b5348fb06f1037b178a47c3211326306db8a4",
                "ff9fde32e48c18b53a16a02743e8318529306a5ce1f7be75ad9dd1b269433c05",
            ))
        );
        assert_eq!(Descriptor::verify(&bytes, NOW).unwrap(), sample());
    }

    #[test]
    fn round_trip() {
        assert_accepted(&sample());
        assert_accepted(&relay());
        let d = sample();
        assert_eq!(d.key(), identity().public().0);
        let addrs: Vec<SocketAddr> = d.socket_addrs().collect();
        assert_eq!(
            addrs,
            vec![
                "198.51.100.7:51820".parse().unwrap(),
                "[2001:db8::7]:51820".parse().unwrap()
            ]
        );
        // Signing is deterministic.
        assert_eq!(d.sign(&key()).unwrap(), d.sign(&key()).unwrap());
    }

    /// A valid summary of exactly [`MAX_SUMMARY_LEN`] bytes.
    fn longest_summary() -> String {
        let mut summary = String::from("accept 1");
        for i in 0..84 {
            summary.push_str(&format!(",{}", 10000 + 2 * i));
        }
        summary
    }

    #[test]
    fn largest_and_smallest() {
        let summary = longest_summary();
        assert_eq!(summary.len(), MAX_SUMMARY_LEN);
        let big = Descriptor {
            addrs: (1..=4u16)
                .map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i)))
                .collect(),
            policy_summary: summary,
            ..sample()
        };
        let bytes = big.sign(&key()).unwrap();
        assert_eq!(bytes.len(), MAX_ENCODED_LEN);
        assert_eq!(Descriptor::verify(&bytes, NOW).unwrap(), big);
        let small = Descriptor {
            addrs: vec![IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1))],
            ..relay()
        };
        assert_eq!(small.sign(&key()).unwrap().len(), MIN_DESCRIPTOR_LEN);
    }

    #[test]
    fn every_bit_flip_fails() {
        let bytes = sample().sign(&key()).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(Descriptor::verify(&flipped, NOW).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn every_truncation_fails() {
        for d in [sample(), relay()] {
            let bytes = d.sign(&key()).unwrap();
            for len in 0..bytes.len() {
                assert_eq!(
                    Descriptor::verify(&bytes[..len], NOW),
                    Err(DescriptorError::Truncated),
                    "length {len}"
                );
            }
        }
    }

    #[test]
    fn trailing_and_too_long() {
        let mut bytes = sample().sign(&key()).unwrap();
        bytes.push(0);
        assert_eq!(
            Descriptor::verify(&bytes, NOW),
            Err(DescriptorError::TrailingBytes)
        );
        bytes.resize(MAX_DESCRIPTOR_LEN, 0);
        assert_eq!(
            Descriptor::verify(&bytes, NOW),
            Err(DescriptorError::TrailingBytes)
        );
        bytes.push(0);
        assert_eq!(
            Descriptor::verify(&bytes, NOW),
            Err(DescriptorError::TooLong(MAX_DESCRIPTOR_LEN + 1))
        );
        assert_eq!(
            Descriptor::verify(&[1; 4000], NOW),
            Err(DescriptorError::TooLong(4000))
        );
    }

    #[test]
    fn version_and_flags() {
        let body = sample().encode_body();
        for version in [0, 2, 0x11, 0xff] {
            let mut b = body.clone();
            b[0] = version;
            assert_eq!(
                Descriptor::verify(&resign(b), NOW),
                Err(DescriptorError::Version(version))
            );
        }
        for flags in [0x02, 0x03, 0x80, 0xff] {
            let mut b = body.clone();
            b[1] = flags;
            assert_eq!(
                Descriptor::verify(&resign(b), NOW),
                Err(DescriptorError::BadField("flags"))
            );
        }
    }

    #[test]
    fn addr_count() {
        let none = Descriptor {
            addrs: vec![],
            ..sample()
        };
        assert_rejected(&none, DescriptorError::BadField("addrs"));
        let five = Descriptor {
            addrs: (1..=5u8)
                .map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)))
                .collect(),
            ..sample()
        };
        assert_rejected(&five, DescriptorError::BadField("addrs"));
        let four = Descriptor {
            addrs: five.addrs[..4].to_vec(),
            ..sample()
        };
        assert_accepted(&four);
        // A count beyond the limit is rejected before the addresses are read.
        let mut b = sample().encode_body();
        b[86] = 200;
        assert_eq!(
            Descriptor::verify(&resign(b), NOW),
            Err(DescriptorError::BadField("addrs"))
        );
    }

    #[test]
    fn unusable_addrs() {
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "127.1.2.3",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "::",
            "::1",
            "ff02::1",
            "ff0e::1",
            "::ffff:198.51.100.7",
        ] {
            let d = Descriptor {
                addrs: vec![sample().addrs[0], bad.parse().unwrap()],
                ..sample()
            };
            assert_rejected(&d, DescriptorError::BadField("addrs"));
        }
        let duplicate = Descriptor {
            addrs: vec![sample().addrs[1], sample().addrs[0], sample().addrs[1]],
            ..sample()
        };
        assert_rejected(&duplicate, DescriptorError::BadField("addrs"));
        for good in ["10.0.0.1", "192.168.1.1", "fd00::1", "fe80::1", "::2"] {
            assert_accepted(&Descriptor {
                addrs: vec![good.parse().unwrap()],
                ..sample()
            });
        }
        let mut b = sample().encode_body();
        b[87] = 5;
        assert_eq!(
            Descriptor::verify(&resign(b), NOW),
            Err(DescriptorError::BadField("family"))
        );
    }

    #[test]
    fn port_range() {
        for bad in [
            (0, 0),
            (0, 1),
            (10, 9),
            (65535, 1),
            (1000, 2024),
            (1, 65535),
        ] {
            let d = Descriptor {
                ports: bad,
                ..sample()
            };
            assert_rejected(&d, DescriptorError::BadField("ports"));
        }
        for good in [(1, 1), (1000, 2023), (65535, 65535), (64512, 65535)] {
            assert_accepted(&Descriptor {
                ports: good,
                ..sample()
            });
        }
    }

    #[test]
    fn summary_rules() {
        for good in [
            "accept 80,443",
            "reject 25,119,135-139,445",
            "accept 1-65535",
            "reject 1-65535",
            "accept 1,3,65535",
            "accept 20-23,80-81",
        ] {
            assert_accepted(&Descriptor {
                policy_summary: good.into(),
                ..sample()
            });
        }
        for bad in [
            "",
            "accept",
            "accept ",
            "allow 80",
            "Accept 80",
            "accept  80",
            "accept 80 ",
            "accept 80,",
            "accept ,80",
            "accept 080",
            "accept +80",
            "accept 0",
            "accept 65536",
            "accept 100000",
            "accept 443,80",
            "accept 80,80",
            "accept 80-80",
            "accept 90-80",
            "accept 80,81",
            "accept 80-90,91",
            "accept 80-90,85",
            "accept 1-2-3",
            "accept 80\u{e9}",
            "accept \u{0663}",
        ] {
            let d = Descriptor {
                policy_summary: bad.into(),
                ..sample()
            };
            assert_rejected(&d, DescriptorError::BadField("policy_summary"));
        }
        let on_relay = Descriptor {
            policy_summary: "accept 80".into(),
            ..relay()
        };
        assert_rejected(&on_relay, DescriptorError::BadField("policy_summary"));

        let long = format!("{},20000", longest_summary());
        assert!(valid_summary(&long));
        let d = Descriptor {
            policy_summary: long,
            ..sample()
        };
        assert_rejected(&d, DescriptorError::BadField("policy_summary"));

        // Non-ASCII bytes, even invalid UTF-8, in an encoding.
        let mut b = sample().encode_body();
        let last = b.len() - 1;
        b[last] = 0xff;
        assert_eq!(
            Descriptor::verify(&resign(b), NOW),
            Err(DescriptorError::BadField("policy_summary"))
        );
    }

    #[test]
    fn exit_policy_summaries_fit() {
        for rules in [
            vec![],
            vec!["accept *:80", "accept *:443", "reject *:*"],
            vec!["accept *:20-23", "accept *4:80-81", "reject *:*"],
            vec!["reject *:*"],
            vec!["accept *:*"],
        ] {
            let rules: Vec<String> = rules.into_iter().map(String::from).collect();
            let summary = ExitPolicy::new(&rules, &[]).unwrap().summary();
            assert_accepted(&Descriptor {
                policy_summary: summary,
                ..sample()
            });
        }
    }

    #[test]
    fn times() {
        let at = |published, expires| Descriptor {
            published,
            expires,
            ..sample()
        };
        let check = |d: &Descriptor| Descriptor::verify(&d.sign(&key()).unwrap(), NOW);
        assert!(check(&at(NOW + MAX_CLOCK_SKEW_SECS, NOW + 3600)).is_ok());
        assert_eq!(
            check(&at(NOW + MAX_CLOCK_SKEW_SECS + 1, NOW + 3600)),
            Err(DescriptorError::NotYetValid)
        );
        assert_eq!(check(&at(NOW - 3600, NOW)), Err(DescriptorError::Expired));
        assert!(check(&at(NOW - 3600, NOW + 1)).is_ok());
        assert_eq!(
            check(&at(NOW - 7200, NOW - 3600)),
            Err(DescriptorError::Expired)
        );
        assert!(check(&at(NOW - 1, NOW - 1 + MAX_LIFETIME_SECS)).is_ok());
        assert_rejected(
            &at(NOW, NOW + MAX_LIFETIME_SECS + 1),
            DescriptorError::LifetimeTooLong,
        );
        assert_rejected(&at(NOW, NOW), DescriptorError::BadField("expires"));
        assert_rejected(&at(NOW, NOW - 1), DescriptorError::BadField("expires"));
        assert_rejected(&at(u64::MAX, 0), DescriptorError::BadField("expires"));
        // Clocks near the end of time do not overflow.
        let late = at(u64::MAX - 10, u64::MAX);
        let bytes = late.sign(&key()).unwrap();
        assert_eq!(Descriptor::verify(&bytes, u64::MAX - 5).unwrap(), late);
        assert_eq!(
            Descriptor::verify(&bytes, u64::MAX),
            Err(DescriptorError::Expired)
        );
    }

    #[test]
    fn signature_binds_identity() {
        let other = Identity::from_secret([8; 32]).signing_key();
        assert_eq!(
            sample().sign(&other),
            Err(DescriptorError::IdentityMismatch)
        );
        // Signed by another key than the embedded identity.
        let claimed = Descriptor {
            identity: other.verifying_key().to_bytes(),
            ..sample()
        };
        assert_eq!(
            Descriptor::verify(&sign_unchecked(&claimed), NOW),
            Err(DescriptorError::BadSignature)
        );
        // An identity that is not a curve point.
        let mut b = sample().encode_body();
        b[2..34].copy_from_slice(&[0xff; 32]);
        assert_eq!(
            Descriptor::verify(&resign(b), NOW),
            Err(DescriptorError::BadSignature)
        );
        // The signing prefix is part of the message.
        let body = sample().encode_body();
        let mut bare = body.clone();
        bare.extend_from_slice(&key().sign(&body).to_bytes());
        assert_eq!(
            Descriptor::verify(&bare, NOW),
            Err(DescriptorError::BadSignature)
        );
    }

    #[test]
    fn error_texts() {
        assert_eq!(
            DescriptorError::BadField("ports").to_string(),
            "invalid descriptor field `ports`"
        );
        assert_eq!(
            DescriptorError::TooLong(2000).to_string(),
            "descriptor is 2000 bytes, more than 1024"
        );
        assert_eq!(
            DescriptorError::LifetimeTooLong.to_string(),
            "descriptor lifetime exceeds 86400 seconds"
        );
    }

    /// Ports as a canonical summary list: sorted, deduplicated, adjacent ports merged.
    fn summary_of(accept: bool, mut ports: Vec<u16>) -> String {
        ports.sort_unstable();
        ports.dedup();
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for p in ports {
            match ranges.last_mut() {
                Some((_, hi)) if u32::from(*hi) + 1 == u32::from(p) => *hi = p,
                _ => ranges.push((p, p)),
            }
        }
        let list: Vec<String> = ranges
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        let action = if accept { "accept" } else { "reject" };
        if list.is_empty() {
            format!("{action} 1-65535")
        } else {
            format!("{action} {}", list.join(","))
        }
    }

    fn addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
            any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        ]
        .prop_filter("usable", usable_addr)
    }

    fn descriptor() -> impl Strategy<Value = (Descriptor, SigningKey)> {
        (
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            proptest::collection::hash_set(addr(), 1..=MAX_ADDRS),
            1..=u16::MAX,
            0..MAX_PORTS as u16,
            proptest::option::of((
                any::<bool>(),
                proptest::collection::vec(1..=u16::MAX, 0..60),
            )),
            0..u64::MAX - MAX_LIFETIME_SECS,
            1..=MAX_LIFETIME_SECS,
        )
            .prop_map(
                |(secret, onion_key, addrs, first, span, exit, published, lifetime)| {
                    let key = Identity::from_secret(secret).signing_key();
                    let d = Descriptor {
                        identity: key.verifying_key().to_bytes(),
                        onion_key,
                        addrs: addrs.into_iter().collect(),
                        ports: (first, first.saturating_add(span)),
                        exit: exit.is_some(),
                        policy_summary: exit
                            .map(|(accept, ports)| summary_of(accept, ports))
                            .unwrap_or_default(),
                        published,
                        expires: published + lifetime,
                    };
                    (d, key)
                },
            )
    }

    proptest! {
        #[test]
        fn valid_descriptors_round_trip((d, key) in descriptor()) {
            let bytes = d.sign(&key).unwrap();
            prop_assert!((MIN_DESCRIPTOR_LEN..=MAX_ENCODED_LEN).contains(&bytes.len()));
            prop_assert_eq!(Descriptor::verify(&bytes, d.published).unwrap(), d.clone());
            prop_assert_eq!(Descriptor::verify(&bytes, d.expires - 1).unwrap(), d);
        }

        #[test]
        fn edited_descriptors_fail(
            (d, key) in descriptor(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let bytes = d.sign(&key).unwrap();
            let mut edited = bytes.clone();
            for (at, value) in edits {
                edited[at.index(bytes.len())] = value;
            }
            let result = Descriptor::verify(&edited, d.published);
            prop_assert_eq!(result.is_ok(), edited == bytes);
        }

        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..1100),
            now in any::<u64>(),
        ) {
            let _ = Descriptor::verify(&bytes, now);
        }

        #[test]
        fn plausible_bytes_never_panic(
            head in proptest::collection::vec(any::<u8>(), 85),
            n_addrs in 0u8..6,
            tail in proptest::collection::vec(any::<u8>(), 0..700),
        ) {
            let mut bytes = vec![DESCRIPTOR_VERSION];
            bytes.extend_from_slice(&head);
            bytes[1] &= FLAG_EXIT;
            bytes.push(n_addrs);
            bytes.extend_from_slice(&tail);
            let _ = Descriptor::verify(&bytes, 0);
        }
    }
}
