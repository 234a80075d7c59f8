//! Gateway identities: the long-term X25519 static key pair a gateway proves it holds
//! in every Noise handshake (clients know it in advance; Noise NK).
//!
//! Public keys are written as standard padded base64 of the 32 key bytes (44
//! characters, as WireGuard does); that is the copy-pasteable form used in configs.
//!
//! The secret is kept in an `x25519_dalek::StaticSecret`, which wipes it on drop. It is
//! stored and written exactly as generated (not clamped): X25519 clamps at use, both in
//! `x25519-dalek` and in `snow`, so the file round-trips byte-exact and both agree on
//! the public key.
//!
//! The same secret also yields the gateway's Ed25519 signing key
//! ([`Identity::signing_key`]), which signs its descriptors (`src/proto/descriptor.rs`). It is
//! derived, not stored, so identity files keep one key and their format.
//!
//! Identity file format (TOML, so people can read it; the file itself, with its mode
//! 0600, is read and written by [`crate::config::identity_file`]):
//!
//! ```text
//! # anonnet gateway identity. Keep this file secret (mode 0600).
//! # public_key = "<base64>"   (informational, also printed by `anonnet pubkey`)
//! private_key = "<base64>"
//! ```
//!
//! An uncommented `public_key` is accepted and must match the private key. Errors
//! never contain key material (TOML syntax errors are reported by line only, since
//! the offending line may hold the key).

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand_core::{CryptoRng, RngCore};
use thiserror::Error;
use x25519_dalek::StaticSecret;

/// Length of X25519 keys in bytes.
pub const KEY_LEN: usize = 32;

/// Domain-separation label of the Ed25519 signing key derived from the X25519 secret.
const SIGNING_KEY_LABEL: &[u8] = b"anonnet ed25519 identity v1";

/// A gateway's long-term X25519 static key pair.
#[derive(Clone)]
pub struct Identity {
    secret: StaticSecret,
}

impl Identity {
    /// A new random identity.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rng.fill_bytes(&mut bytes);
        Self::from_secret(bytes)
    }

    /// The identity with this secret key (any 32 bytes; clamped at use).
    pub fn from_secret(bytes: [u8; KEY_LEN]) -> Self {
        Self {
            secret: StaticSecret::from(bytes),
        }
    }

    /// The secret key bytes, e.g. for `snow::Builder::local_private_key`.
    pub fn secret(&self) -> &[u8; KEY_LEN] {
        self.secret.as_bytes()
    }

    /// The public key that clients put in their path.
    pub fn public(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.secret).to_bytes())
    }

    /// The Ed25519 key that signs this gateway's descriptors:
    /// `KDF(secret, "anonnet ed25519 identity v1")` used as the Ed25519 seed.
    pub fn signing_key(&self) -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&crate::proto::crypto::kdf(
            self.secret(),
            SIGNING_KEY_LABEL,
        ))
    }

    /// The identity file's text (written by [`crate::config::identity_file`]).
    #[must_use]
    pub fn to_file_text(&self) -> String {
        format!(
            "# anonnet gateway identity. Keep this file secret (mode 0600).\n\
             # public_key = \"{}\"   (informational, also printed by `anonnet pubkey`)\n\
             private_key = \"{}\"\n",
            self.public(),
            STANDARD.encode(self.secret())
        )
    }

    /// Parses identity file text; the error is a problem description free of key
    /// material.
    pub fn parse_file_text(text: &str) -> Result<Identity, String> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            // Only the line: toml's own message quotes the offending line, which may
            // be the private key.
            match e.span().and_then(|s| text.get(..s.start)) {
                Some(before) => format!(
                    "not a valid TOML file (syntax error on line {})",
                    before.matches('\n').count() + 1
                ),
                None => "not a valid TOML file".into(),
            }
        })?;
        for key in table.keys() {
            if key != "private_key" && key != "public_key" {
                return Err(format!(
                    "unknown key `{key}` (expected `private_key` and optionally `public_key`)"
                ));
            }
        }
        let private = match table.get("private_key") {
            None => return Err("missing `private_key`".into()),
            Some(toml::Value::String(s)) => s,
            Some(_) => return Err("`private_key` must be a base64 string".into()),
        };
        let bytes = decode_key(private).map_err(|e| format!("`private_key`: {e}"))?;
        let identity = Identity::from_secret(bytes);
        match table.get("public_key") {
            None => {}
            Some(toml::Value::String(s)) => {
                let public: PublicKey = s.parse().map_err(|e| format!("`public_key`: {e}"))?;
                if public != identity.public() {
                    return Err("`public_key` does not match `private_key` \
                                (remove the `public_key` line or fix it)"
                        .into());
                }
            }
            Some(_) => return Err("`public_key` must be a base64 string".into()),
        }
        Ok(identity)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public())
            .field("secret", &"<redacted>")
            .finish()
    }
}

fn decode_key(s: &str) -> Result<[u8; KEY_LEN], PublicKeyError> {
    let bytes = STANDARD
        .decode(s.trim())
        .map_err(|_| PublicKeyError::Base64)?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| PublicKeyError::Length(bytes.len()))
}

/// A gateway's X25519 public key. Displayed and parsed as standard base64 (44 chars).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
    /// The first 8 characters of the key's text: enough to tell the gateways of a
    /// status or an error apart.
    #[must_use]
    pub fn short(&self) -> String {
        self.to_string().chars().take(8).collect()
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl From<[u8; KEY_LEN]> for PublicKey {
    fn from(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// Why a string is not a public key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PublicKeyError {
    #[error("invalid base64 public key")]
    Base64,
    #[error("wrong public key length: {0} bytes != 32")]
    Length(usize),
}

impl FromStr for PublicKey {
    type Err = PublicKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        decode_key(s).map(PublicKey)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
