//! Gateways a client's new paths leave out for a while after one failed under a
//! circuit (sans-IO): the entry whose link died or never answered, or the gateway
//! after a hop that reported losing its link to it (TRUNCATED).
//!
//! Without this, a rebuild right after a death draws the dead gateway again with
//! probability (its share of the candidates), and each such build costs a build
//! timeout. A gateway is avoided for [`AVOID_FIRST`]; one that fails again within
//! [`AVOID_MEMORY`] of its last back-off ending is avoided twice as long as the last
//! time, up to [`AVOID_MAX`]. The back-off is short at first because a gateway that
//! restarts is back within seconds, and long at most because the accusation comes
//! from a hop of the client's own circuit, which could as well have dropped the
//! circuit (`docs/SECURITY.md`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// First back-off of a gateway that failed.
pub const AVOID_FIRST: Duration = Duration::from_secs(10);
/// Longest back-off.
pub const AVOID_MAX: Duration = Duration::from_secs(600);
/// A failure this soon after the last back-off ended doubles it.
pub const AVOID_MEMORY: Duration = Duration::from_secs(600);
/// Most gateways remembered; beyond it the one whose back-off ends first goes.
pub const AVOID_CAP: usize = 1_024;
/// Levels of [`Avoid::excludes`], strictest first.
pub const LEVELS: usize = 3;

/// Failed gateways, by key: until when each is avoided, and for how long it was.
#[derive(Debug, Default)]
pub struct Avoid {
    failed: HashMap<[u8; 32], (Instant, Duration)>,
}

impl Avoid {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Gateway `key` failed at `now`: returns how long it is avoided.
    pub fn failed(&mut self, now: Instant, key: [u8; 32]) -> Duration {
        self.failed
            .retain(|_, (until, _)| now.saturating_duration_since(*until) < AVOID_MEMORY);
        let period = match self.failed.get(&key) {
            Some((until, last)) if now < *until => *last,
            Some((_, last)) => (*last * 2).min(AVOID_MAX),
            None => AVOID_FIRST,
        };
        if self.failed.len() >= AVOID_CAP && !self.failed.contains_key(&key) {
            if let Some(k) = self.failed.iter().min_by_key(|(_, v)| v.0).map(|(k, _)| *k) {
                self.failed.remove(&k);
            }
        }
        self.failed.insert(key, (now + period, period));
        period
    }

    /// Whether gateway `key` is being avoided at `now`.
    #[must_use]
    pub fn avoids(&self, now: Instant, key: &[u8; 32]) -> bool {
        self.failed.get(key).is_some_and(|(until, _)| now < *until)
    }

    /// Whether paths drawn at `level` leave gateway `key` out: level 0 every
    /// gateway being avoided; level 1 (when too few gateways are left for a path)
    /// only the one avoided that failed last, the likeliest to be still down; level
    /// 2 none.
    #[must_use]
    pub fn excludes(&self, now: Instant, level: usize, key: &[u8; 32]) -> bool {
        match level {
            0 => self.avoids(now, key),
            1 => self.latest(now).as_ref() == Some(key),
            _ => false,
        }
    }

    /// The avoided gateway that failed last.
    fn latest(&self, now: Instant) -> Option<[u8; 32]> {
        self.failed
            .iter()
            .filter(|(_, (until, _))| now < *until)
            .max_by_key(|(_, (until, period))| until.checked_sub(*period))
            .map(|(k, _)| *k)
    }
}

#[cfg(test)]
mod tests;
