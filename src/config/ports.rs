//! Port ranges: `listen_ports` and the like, as ranges or single ports.

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::Deserialize;

use thiserror::Error;

/// An inclusive, non-empty range of UDP ports, none of them 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Most ports a gateway may listen on.
    pub const MAX_PORTS: usize = 1024;

    /// The range holding only `port`.
    pub const fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    /// A checked range; the error is the problem, without a key.
    pub fn new(first: u16, last: u16) -> Result<Self, PortRangeError> {
        if first == 0 || last == 0 {
            return Err(PortRangeError("port 0 is not allowed".into()));
        }
        if first > last {
            return Err(PortRangeError(format!("range {first}-{last} is empty")));
        }
        let range = Self { first, last };
        if range.len() > Self::MAX_PORTS {
            return Err(PortRangeError(format!(
                "range {range} has {} ports, at most {} are allowed",
                range.len(),
                Self::MAX_PORTS
            )));
        }
        Ok(range)
    }

    pub fn iter(&self) -> RangeInclusive<u16> {
        self.first..=self.last
    }

    /// Number of ports.
    pub fn len(&self) -> usize {
        self.iter().len()
    }

    pub fn is_empty(&self) -> bool {
        self.first > self.last
    }

    pub fn contains(&self, port: u16) -> bool {
        self.iter().contains(&port)
    }

    pub(super) fn from_int(n: i64) -> Result<Self, PortRangeError> {
        match u16::try_from(n) {
            Ok(p) => Self::new(p, p),
            Err(_) => Err(PortRangeError(format!("port {n} is out of range 1-65535"))),
        }
    }
}

impl Default for PortRange {
    fn default() -> Self {
        Self::single(9000)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Why a string is not a port range.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct PortRangeError(pub(super) String);

impl FromStr for PortRange {
    type Err = PortRangeError;

    /// `"9000"` or `"9000-9003"` (spaces around the parts are allowed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            PortRangeError(format!(
                "invalid port range {s:?}: expected a port like 9000 or a range like \"9000-9003\""
            ))
        };
        let port = |p: &str| -> Result<u16, PortRangeError> {
            let p = p.trim();
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u16>()
                .map_err(|_| PortRangeError(format!("port {p} is out of range 1-65535")))
        };
        match s.split_once('-') {
            Some((a, b)) => Self::new(port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                Self::new(p, p)
            }
        }
    }
}

/// `listen_ports` as written: an integer or a string.
pub(super) enum RawPorts {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for RawPorts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawPorts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port like 9000 or a range like \"9000-9003\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawPorts, E> {
                Ok(RawPorts::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawPorts, E> {
                Ok(RawPorts::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawPorts, E> {
                Ok(RawPorts::Str(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
