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
//! ([`Identity::signing_key`]), which signs its descriptors (`src/descriptor.rs`). It is
//! derived, not stored, so identity files keep one key and their format.
//!
//! Identity file format (TOML, so people can read it):
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
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
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

/// Identity files are tiny; refuse to read more than this (a wrong path could name a
/// huge file).
const MAX_FILE_LEN: u64 = 64 * 1024;

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

    /// The identity file's text.
    fn to_file_text(&self) -> String {
        format!(
            "# anonnet gateway identity. Keep this file secret (mode 0600).\n\
             # public_key = \"{}\"   (informational, also printed by `anonnet pubkey`)\n\
             private_key = \"{}\"\n",
            self.public(),
            STANDARD.encode(self.secret())
        )
    }

    /// Write the identity file at `path`, created with mode 0600 and fsynced.
    ///
    /// Refuses to replace an existing file unless `force`; with `force` the new file
    /// is written next to it and renamed over it, so a crash leaves either the old or
    /// the new identity, never a torn one.
    pub fn write_file(&self, path: &Path, force: bool) -> Result<(), IdentityError> {
        let text = self.to_file_text();
        if !force {
            return match create_private(path) {
                Ok(file) => write_and_sync(file, &text).map_err(|source| {
                    // Do not leave a partial identity behind.
                    let _ = fs::remove_file(path);
                    write_error(path, source)
                }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(IdentityError::Exists {
                    path: path.to_path_buf(),
                }),
                Err(source) => Err(write_error(path, source)),
            };
        }

        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path.file_name().ok_or_else(|| IdentityError::Write {
            path: path.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = dir.join(tmp_name);

        let result = create_private(&tmp)
            .and_then(|file| write_and_sync(file, &text))
            .and_then(|()| fs::rename(&tmp, path))
            // Make the rename itself durable.
            .and_then(|()| File::open(dir)?.sync_all());
        if let Err(source) = result {
            let _ = fs::remove_file(&tmp);
            return Err(write_error(path, source));
        }
        Ok(())
    }

    /// Read an identity file written by [`Identity::write_file`].
    ///
    /// Rejects files that group or others may access, as ssh does for private keys.
    pub fn read_file(path: &Path) -> Result<Identity, IdentityError> {
        let owned = || path.to_path_buf();
        let file = File::open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => IdentityError::NotFound { path: owned() },
            _ => IdentityError::Read {
                path: owned(),
                source,
            },
        })?;
        // fstat the opened file, not the path, so the check and the read see the same
        // file.
        let meta = file.metadata().map_err(|source| IdentityError::Read {
            path: owned(),
            source,
        })?;
        if !meta.is_file() {
            return Err(IdentityError::Invalid {
                path: owned(),
                problem: "not a regular file".into(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(IdentityError::TooOpen {
                path: owned(),
                mode,
            });
        }
        let mut bytes = Vec::new();
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| IdentityError::Read {
                path: owned(),
                source,
            })?;
        if bytes.len() as u64 > MAX_FILE_LEN {
            return Err(IdentityError::Invalid {
                path: owned(),
                problem: format!("file is larger than {MAX_FILE_LEN} bytes"),
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| IdentityError::Invalid {
            path: owned(),
            problem: "file is not UTF-8 text".into(),
        })?;
        Self::parse(&text).map_err(|problem| IdentityError::Invalid {
            path: owned(),
            problem,
        })
    }

    /// Parse identity file text; the error is a problem description free of key
    /// material.
    fn parse(text: &str) -> Result<Identity, String> {
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

fn create_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

fn write_and_sync(mut file: File, text: &str) -> io::Result<()> {
    // The umask may have cleared bits of 0600; make the mode exactly 0600 so the file
    // stays readable by its owner and `read_file` accepts it.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

fn write_error(path: &Path, source: io::Error) -> IdentityError {
    IdentityError::Write {
        path: path.to_path_buf(),
        source,
    }
}

fn decode_key(s: &str) -> Result<[u8; KEY_LEN], PublicKeyError> {
    let bytes = STANDARD
        .decode(s.trim())
        .map_err(|_| PublicKeyError::Base64)?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| PublicKeyError::Length(bytes.len()))
}

/// Errors reading or writing identity files. Messages name the path and never contain
/// key material.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("identity file {} already exists; pass --force to overwrite it", .path.display())]
    Exists { path: PathBuf },
    #[error("identity file {} not found (create one with `anonnet keygen`)", .path.display())]
    NotFound { path: PathBuf },
    #[error("cannot read identity file {}: {source}", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write identity file {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "identity file {}: permissions {mode:04o} are too open; run chmod 600 {}",
        .path.display(), .path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("identity file {}: {problem}", .path.display())]
    Invalid { path: PathBuf, problem: String },
}

/// A gateway's X25519 public key. Displayed and parsed as standard base64 (44 chars).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

impl PublicKey {
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
