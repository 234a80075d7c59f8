//! The identity file on disk: a gateway's key pair in the text form of
//! [`Identity::to_file_text`], created with mode 0600, fsynced, replaced
//! atomically, and refused when group or others may read it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::proto::identity::Identity;

/// Identity files are tiny; refuse to read more than this (a wrong path could name a
/// huge file).
const MAX_FILE_LEN: u64 = 64 * 1024;

/// Writes the identity file at `path`, created with mode 0600 and fsynced.
///
/// Refuses to replace an existing file unless `force`; with `force` the new file
/// is written next to it and renamed over it, so a crash leaves either the old or
/// the new identity, never a torn one.
pub fn write(id: &Identity, path: &Path, force: bool) -> Result<(), IdentityError> {
    let text = id.to_file_text();
    // A fresh host has no /var/lib/anonnet yet: make it, private (0700).
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| write_error(path, source))?;
    }
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

    crate::files::write_atomic(path, text.as_bytes()).map_err(|source| write_error(path, source))
}

/// Reads an identity file written by [`write()`].
///
/// Rejects files that group or others may access, as ssh does for private keys.
pub fn read(path: &Path) -> Result<Identity, IdentityError> {
    let owned = || path.to_path_buf();
    let file = File::open(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => IdentityError::NotFound { path: owned() },
        _ => IdentityError::Read {
            path: owned(),
            error: source,
        },
    })?;
    // fstat the opened file, not the path, so the check and the read see the same
    // file.
    let meta = file.metadata().map_err(|error| IdentityError::Read {
        path: owned(),
        error,
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
        .map_err(|error| IdentityError::Read {
            path: owned(),
            error,
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
    Identity::parse_file_text(&text).map_err(|problem| IdentityError::Invalid {
        path: owned(),
        problem,
    })
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

fn write_error(path: &Path, error: io::Error) -> IdentityError {
    IdentityError::Write {
        path: path.to_path_buf(),
        error,
    }
}

/// Errors reading or writing identity files. Messages name the path and never contain
/// key material.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("identity file {} already exists; pass --force to overwrite it", .path.display())]
    Exists { path: PathBuf },
    #[error("identity file {} not found (create one with `anonnet keygen`)", .path.display())]
    NotFound { path: PathBuf },
    // The I/O error is in the message, so it is not also a `source` (which would
    // print it twice in an error chain).
    #[error("cannot read identity file {}: {error}", .path.display())]
    Read { path: PathBuf, error: io::Error },
    #[error("cannot write identity file {}: {error}", .path.display())]
    Write { path: PathBuf, error: io::Error },
    #[error(
        "identity file {}: permissions {mode:04o} are too open; run chmod 600 {}",
        .path.display(), .path.display()
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("identity file {}: {problem}", .path.display())]
    Invalid { path: PathBuf, problem: String },
}

#[cfg(test)]
mod tests;
