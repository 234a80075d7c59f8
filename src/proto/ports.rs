//! Port summaries: which destination ports an exit accepts to ordinary public
//! addresses, as its descriptor says (Tor style). The exit writes one from its policy
//! ([`ExitPolicy::summary`](crate::exit::policy::ExitPolicy::summary)); descriptors
//! are checked, and clients choose exits, with the one parser here.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// Longest summary, counting the `accept ` or `reject ` prefix: what a descriptor
/// carries (it must fit a 1,024-byte descriptor with four addresses).
pub const MAX_SUMMARY_LEN: usize = 512;

/// A port summary that does not parse.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("bad port summary: {0}")]
pub struct SummaryError(pub String);

/// A parsed port summary (`accept 80,443,1000-2000` or `reject 25,119,135-139,445`):
/// which ports an exit accepts to ordinary public addresses, as produced by
/// [`crate::exit::policy::ExitPolicy::summary`].
///
/// Parsing is strict: `accept` or `reject`, one space, then comma-separated ports
/// (`1..=65535`, no leading zeros) or ranges `A-B` with `A <= B`, in ascending order
/// with a gap between consecutive entries (adjacent ranges are written as one), at most
/// [`MAX_SUMMARY_LEN`] bytes in all. Accepting every port is `accept 1-65535`,
/// rejecting every port `reject 1-65535`. [`fmt::Display`] writes the same form back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSummary {
    /// Whether `ranges` lists the accepted ports (else the rejected ones).
    accept: bool,
    /// Inclusive port ranges, ascending, non-empty, with gaps between them.
    ranges: Vec<(u16, u16)>,
}

impl PortSummary {
    /// Whether the exit accepts `port`. Port 0 is never accepted.
    pub fn accepts(&self, port: u16) -> bool {
        if port == 0 {
            return false;
        }
        let listed = self
            .ranges
            .binary_search_by(|&(start, end)| {
                if end < port {
                    std::cmp::Ordering::Less
                } else if start > port {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok();
        listed == self.accept
    }
}

impl FromStr for PortSummary {
    type Err = SummaryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_SUMMARY_LEN {
            return Err(SummaryError(format!("longer than {MAX_SUMMARY_LEN} bytes")));
        }
        let bad = |problem: &str| SummaryError(format!("{s:?}: {problem}"));
        let (action, list) = s
            .split_once(' ')
            .ok_or_else(|| bad("expected `accept` or `reject`, a space and a port list"))?;
        let accept = match action {
            "accept" => true,
            "reject" => false,
            _ => return Err(bad("expected `accept` or `reject`")),
        };
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for item in list.split(',') {
            let (start, end) = match item.split_once('-') {
                Some((start, end)) => (parse_port(start), parse_port(end)),
                None => (parse_port(item), parse_port(item)),
            };
            let (Some(start), Some(end)) = (start, end) else {
                return Err(bad(&format!(
                    "{item:?} is not a port 1-65535 or a range A-B"
                )));
            };
            if start > end {
                return Err(bad(&format!("{item:?} is an empty range")));
            }
            if start == end && item.contains('-') {
                return Err(bad(&format!("{item:?}: a single port is written alone")));
            }
            if let Some(&(_, prev_end)) = ranges.last() {
                if u32::from(start) <= u32::from(prev_end) + 1 {
                    return Err(bad(&format!(
                        "{item:?} overlaps, touches or precedes the entry before it"
                    )));
                }
            }
            ranges.push((start, end));
        }
        Ok(PortSummary { accept, ranges })
    }
}

/// A port number `1..=65535` written as plain decimal digits without leading zeros.
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for PortSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.accept { "accept " } else { "reject " })?;
        for (i, &(start, end)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
