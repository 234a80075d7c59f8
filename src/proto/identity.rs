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
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use rand_core::OsRng;

    fn fixed() -> Identity {
        Identity::from_secret([7; 32])
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn public_matches_x25519() {
        // RFC 7748 section 6.1 test vector (Alice).
        let secret: [u8; 32] = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let public: [u8; 32] = [
            0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e,
            0xf7, 0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e,
            0xaa, 0x9b, 0x4e, 0x6a,
        ];
        let id = Identity::from_secret(secret);
        assert_eq!(id.public(), PublicKey(public));
        assert_eq!(id.secret(), &secret);
    }

    fn hex32(s: &str) -> [u8; 32] {
        let bytes: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        bytes.try_into().unwrap()
    }

    #[test]
    fn signing_key_vector() {
        // Computed independently: seed = BLAKE2s-256(key = secret, message = label),
        // verifying key = Ed25519 public key of that seed (RFC 8032).
        let key = fixed().signing_key();
        assert_eq!(
            key.to_bytes(),
            hex32("7455e600133781ba77b4b31be2287db91e7e65c7c87b6811120a8d66844e54d4")
        );
        assert_eq!(
            key.verifying_key().to_bytes(),
            hex32("0a955bb6c59feaa6f3d6ad6a0785c64762ee6766de8c9db75231cd6e9f69a41b")
        );
    }

    #[test]
    fn signing_key_deterministic_and_distinct() {
        let id = Identity::generate(&mut OsRng);
        let again = Identity::from_secret(*id.secret());
        assert_eq!(id.signing_key().to_bytes(), again.signing_key().to_bytes());
        assert_eq!(
            id.signing_key().verifying_key(),
            again.signing_key().verifying_key()
        );
        // The seed is derived, not the X25519 secret itself.
        assert_ne!(&id.signing_key().to_bytes(), id.secret());
        let other = Identity::generate(&mut OsRng);
        assert_ne!(id.signing_key().to_bytes(), other.signing_key().to_bytes());
        assert_ne!(
            id.signing_key().verifying_key(),
            other.signing_key().verifying_key()
        );
        assert_ne!(
            fixed().signing_key().verifying_key(),
            Identity::from_secret([8; 32]).signing_key().verifying_key()
        );
    }

    #[test]
    fn generate_differs() {
        let a = Identity::generate(&mut OsRng);
        let b = Identity::generate(&mut OsRng);
        assert_ne!(a.secret(), b.secret());
        assert_ne!(a.public(), b.public());
    }

    #[test]
    fn debug_hides_secret() {
        let id = fixed();
        let dbg = format!("{id:?}");
        assert!(dbg.contains("<redacted>"));
        assert!(!dbg.contains(&STANDARD.encode(id.secret())));
        assert!(dbg.contains(&id.public().to_string()));
    }

    #[test]
    fn public_key_text_round_trip() {
        let pk = fixed().public();
        let s = pk.to_string();
        assert_eq!(s.len(), 44);
        assert_eq!(s.parse::<PublicKey>().unwrap(), pk);
        assert_eq!(format!(" {s}\n").parse::<PublicKey>().unwrap(), pk);
    }

    #[test]
    fn public_key_parse_errors() {
        let e = "not base64!".parse::<PublicKey>().unwrap_err();
        assert_eq!(e, PublicKeyError::Base64);
        assert_eq!(e.to_string(), "invalid base64 public key");
        let e = STANDARD.encode([1u8; 31]).parse::<PublicKey>().unwrap_err();
        assert_eq!(e.to_string(), "wrong public key length: 31 bytes != 32");
        let e = STANDARD.encode([1u8; 33]).parse::<PublicKey>().unwrap_err();
        assert_eq!(e, PublicKeyError::Length(33));
        assert_eq!(
            "".parse::<PublicKey>().unwrap_err(),
            PublicKeyError::Length(0)
        );
        // URL-safe alphabet is not the standard one.
        let urlsafe = base64::engine::general_purpose::URL_SAFE.encode([0xfb; 32]);
        assert_eq!(
            urlsafe.parse::<PublicKey>().unwrap_err(),
            PublicKeyError::Base64
        );
    }

    #[test]
    fn public_key_serde() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Doc {
            key: PublicKey,
        }
        let pk = fixed().public();
        let text = toml::to_string(&Doc { key: pk }).unwrap();
        assert_eq!(text, format!("key = \"{pk}\"\n"));
        assert_eq!(toml::from_str::<Doc>(&text).unwrap().key, pk);
        let err = toml::from_str::<Doc>("key = \"AAAA\"").err().unwrap();
        assert!(err
            .to_string()
            .contains("wrong public key length: 3 bytes != 32"));
    }

    #[test]
    fn file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let id = Identity::generate(&mut OsRng);
        id.write_file(&path, false).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# anonnet gateway identity."));
        assert!(text.contains(&format!("# public_key = \"{}\"", id.public())));
        let back = Identity::read_file(&path).unwrap();
        assert_eq!(back.secret(), id.secret());
        assert_eq!(back.public(), id.public());
    }

    #[test]
    fn refuses_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        let first = fixed();
        first.write_file(&path, false).unwrap();
        let err = Identity::generate(&mut OsRng)
            .write_file(&path, false)
            .unwrap_err();
        assert!(matches!(err, IdentityError::Exists { .. }));
        assert_eq!(
            err.to_string(),
            format!(
                "identity file {} already exists; pass --force to overwrite it",
                path.display()
            )
        );
        assert_eq!(Identity::read_file(&path).unwrap().secret(), first.secret());
    }

    #[test]
    fn force_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        fixed().write_file(&path, false).unwrap();
        // Even an over-open existing file is replaced by a 0600 one.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let second = Identity::generate(&mut OsRng);
        second.write_file(&path, true).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(
            Identity::read_file(&path).unwrap().secret(),
            second.secret()
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        // Force on a fresh path works too, also for a bare relative-looking name.
        let fresh = dir.path().join("fresh.key");
        second.write_file(&fresh, true).unwrap();
        assert_eq!(mode_of(&fresh), 0o600);
    }

    #[test]
    fn too_open_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.key");
        fixed().write_file(&path, false).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let err = Identity::read_file(&path).unwrap_err();
            assert!(matches!(err, IdentityError::TooOpen { .. }), "{mode:o}");
            assert_eq!(
                err.to_string(),
                format!(
                    "identity file {p}: permissions {mode:04o} are too open; run chmod 600 {p}",
                    p = path.display()
                )
            );
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        Identity::read_file(&path).unwrap();
    }

    #[test]
    fn not_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.key");
        let err = Identity::read_file(&path).unwrap_err();
        assert!(matches!(err, IdentityError::NotFound { .. }));
        assert!(err.to_string().contains(&path.display().to_string()));
    }

    fn read_text(text: &[u8]) -> Result<Identity, IdentityError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.key");
        let mut f = create_private(&path).unwrap();
        f.write_all(text).unwrap();
        drop(f);
        Identity::read_file(&path)
    }

    fn problem(text: &[u8]) -> String {
        match read_text(text).unwrap_err() {
            IdentityError::Invalid { problem, .. } => problem,
            other => panic!("unexpected error {other}"),
        }
    }

    #[test]
    fn garbage_rejected() {
        let secret_b64 = STANDARD.encode([9u8; 32]);
        let p = problem(format!("# comment\nprivate_key = \"{secret_b64}\nx").as_bytes());
        assert_eq!(p, "not a valid TOML file (syntax error on line 2)");
        assert!(!p.contains(&secret_b64));
        assert_eq!(problem(b""), "missing `private_key`");
        assert_eq!(
            problem(b"private_key = 5"),
            "`private_key` must be a base64 string"
        );
        assert_eq!(
            problem(b"private_key = \"%%%\""),
            "`private_key`: invalid base64 public key"
        );
        assert_eq!(
            problem(b"private_key = \"AAAA\""),
            "`private_key`: wrong public key length: 3 bytes != 32"
        );
        assert!(problem(b"privat_key = \"AAAA\"").starts_with("unknown key `privat_key`"));
        assert_eq!(problem(b"\xff\xfe"), "file is not UTF-8 text");
        let big = vec![b'#'; 70_000];
        assert!(problem(&big).starts_with("file is larger than"));
    }

    #[test]
    fn public_key_line_checked() {
        let id = fixed();
        let other = Identity::from_secret([8; 32]).public();
        let secret = STANDARD.encode(id.secret());
        let ok = format!(
            "public_key = \"{}\"\nprivate_key = \"{secret}\"\n",
            id.public()
        );
        assert_eq!(read_text(ok.as_bytes()).unwrap().public(), id.public());
        let bad = format!("public_key = \"{other}\"\nprivate_key = \"{secret}\"\n");
        assert!(problem(bad.as_bytes()).starts_with("`public_key` does not match"));
    }

    #[test]
    fn errors_never_contain_key_material() {
        let secret_b64 = STANDARD.encode([3u8; 32]);
        for text in [
            format!("private_key = \"{secret_b64}"),
            format!("private_key = {secret_b64}"),
            format!("private_key = \"{secret_b64}\"\npublic_key = 1"),
            format!("private_key = '{secret_b64}' junk"),
        ] {
            let msg = read_text(text.as_bytes()).unwrap_err().to_string();
            assert!(!msg.contains(&secret_b64[..20]), "{msg}");
        }
    }
}
