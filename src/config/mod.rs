//! Gateway and client configuration files (TOML), and the identity files they name
//! ([`identity_file`]).
//!
//! Parsing happens in two steps. First the file is deserialized into private "raw"
//! structs (`deny_unknown_fields`), so syntax errors, unknown keys and wrong types
//! get toml's own message, which names the key and shows the line. Then every value
//! is checked and converted, and the first problem is reported as
//! [`ConfigError::Invalid`] with a key path such as `client.path[2].key` (array
//! indices count from 0). Values that need a key path in their error (addresses,
//! public keys, port ranges, bounded numbers) are therefore read as plain strings or
//! wide integers in the raw structs and converted here.
//!
//! See `examples/gateway.toml` and `examples/client.toml` for commented files.

// Every value of a file a user wrote passes through here: no indexing, slicing,
// unwrap or expect on it (SECURITY.md).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

mod client;
mod discovery;
mod gateway;
pub mod identity_file;
mod ports;

pub use self::client::*;
pub use self::discovery::*;
pub use self::gateway::*;
pub use self::ports::*;

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Largest body size class in bytes: the protocol maximum, always an implicit last
/// padding class.
pub const MAX_PADDING_CLASS: u16 = 1251;
/// Smallest configurable padding class in bytes.
pub const MIN_PADDING_CLASS: u16 = 32;
/// Highest constant padding rate, in cells per second, a client asks for or a
/// gateway grants (`client.constant_rate`, `gateway.max_constant_rate`): 10,000
/// full-size cells are 116 Mbit/s each way.
pub const MAX_CONSTANT_RATE: u32 = 10_000;

/// An error in a configuration file. Each names one problem.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// TOML syntax error, unknown key, missing key or wrong type (toml's message,
    /// which names the key and quotes the line).
    #[error("{message}")]
    Parse { message: String },
    /// A value that has the right type but is not acceptable.
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
    /// The file could not be read; the reason is the error's `source()`.
    #[error("cannot read config file {}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An error in the named file (from [`load_gateway`] / [`load_client`]).
    #[error("{}: {error}", .path.display())]
    InFile {
        path: PathBuf,
        error: Box<ConfigError>,
    },
}

impl ConfigError {
    /// The error without the [`ConfigError::InFile`] wrapper.
    pub fn inner(&self) -> &ConfigError {
        match self {
            ConfigError::InFile { error, .. } => error.inner(),
            other => other,
        }
    }

    fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }

    fn parse(e: &toml::de::Error) -> Self {
        ConfigError::Parse {
            message: e.to_string().trim_end().to_owned(),
        }
    }
}

/// `key: must be between MIN and MAX, got N`, for integers read wide.
fn bounded<T: TryFrom<i64>>(key: &str, value: i64, min: i64, max: i64) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(bounds_error(key, value, min, max));
    }
    T::try_from(value).map_err(|_| bounds_error(key, value, min, max))
}

/// An optional key: `default` when absent, else checked as by [`bounded`].
fn bounded_or<T: TryFrom<i64>>(
    key: &str,
    value: Option<i64>,
    (min, max): (i64, i64),
    default: T,
) -> Result<T, ConfigError> {
    value.map_or(Ok(default), |v| bounded(key, v, min, max))
}

fn check_int(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(bounds_error(key, value, min, max));
    }
    Ok(())
}

fn bounds_error(
    key: &str,
    value: impl fmt::Display,
    min: impl fmt::Display,
    max: impl fmt::Display,
) -> ConfigError {
    ConfigError::invalid(key, format!("must be between {min} and {max}, got {value}"))
}

/// The levels a `log` value may name.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks the top-level `log`: a level, or comma-separated `tracing` directives as in
/// `RUST_LOG` (`info,anonnet::discovery=debug`), each a level or `TARGET=LEVEL`. A
/// bare word that is not a level is refused, where `tracing` would take it for a
/// target and silence everything else (`log = "debg"`).
fn parse_log(value: Option<String>) -> Result<Option<String>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let v = value.trim();
    let level = |s: &str| LOG_LEVELS.contains(&s.trim().to_ascii_lowercase().as_str());
    let bad = v.is_empty()
        || v.split(',').any(|d| match d.rsplit_once('=') {
            Some((target, l)) => target.trim().is_empty() || !level(l),
            None => !level(d),
        })
        || tracing_subscriber::EnvFilter::try_new(v).is_err();
    if bad {
        return Err(ConfigError::invalid(
            "log",
            format!(
                "{value:?} is not a log filter: a level ({}) or directives like \"info,anonnet::discovery=debug\"",
                LOG_LEVELS.join(", ")
            ),
        ));
    }
    Ok(Some(v.to_owned()))
}

/// A relative `file` named in config file `config` is taken relative to its directory.
fn relative_to(config: &Path, file: &mut PathBuf) {
    if file.is_relative() {
        if let Some(dir) = config.parent() {
            *file = dir.join(&*file);
        }
    }
}

fn check_secs(key: &str, value: f64, max: f64) -> Result<(), ConfigError> {
    // `!(a && b)` rather than `a || b` so that NaN is rejected too.
    if !(value > 0.0 && value <= max) {
        return Err(ConfigError::invalid(
            key,
            format!("must be greater than 0 and at most {max}, got {value}"),
        ));
    }
    Ok(())
}

/// Config files are small; a bigger file is a wrong path, not a config.
const MAX_FILE_LEN: u64 = 1024 * 1024;

fn read(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let io_err = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(in_file(
            path,
            ConfigError::Parse {
                message: format!("file is larger than {MAX_FILE_LEN} bytes"),
            },
        ));
    }
    String::from_utf8(bytes).map_err(|_| {
        in_file(
            path,
            ConfigError::Parse {
                message: "file is not UTF-8 text".into(),
            },
        )
    })
}

fn in_file(path: &Path, error: ConfigError) -> ConfigError {
    ConfigError::InFile {
        path: path.to_path_buf(),
        error: Box::new(error),
    }
}

#[cfg(test)]
mod tests;
