//! The token bucket every rate limit of the crate uses: the exit's packets per
//! circuit, a gateway's handshakes (per kind and per source), a directory's
//! answers and publications.
//!
//! Sans-IO: the caller passes the current time as an [`Instant`]. Time that appears
//! to run backwards is treated as no time passing.

use std::time::Instant;

/// Nanotokens per token: the bucket counts in billionths of a token so that refill
/// over any number of nanoseconds is exact (`rate` tokens per second is `rate`
/// nanotokens per nanosecond).
const NANO: u64 = 1_000_000_000;

/// Token bucket: `rate` tokens per second, at most `burst` stored; starts full.
///
/// Refill is exact integer arithmetic, so fractions of a token carry over between
/// calls and no rate is lost to rounding. With `rate` 0 the bucket never refills;
/// with `burst` 0 it never grants a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    rate: u32,
    /// Capacity in nanotokens (`burst * NANO`, at most about 4.3e18).
    capacity: u64,
    /// Stored nanotokens, at most `capacity`.
    stored: u64,
    /// Time up to which refill has been credited.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilling at `rate` tokens per second.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let capacity = u64::from(burst) * NANO;
        TokenBucket {
            rate,
            capacity,
            stored: capacity,
            last: now,
        }
    }

    /// The time up to which refill has been credited: the last call that found
    /// time had passed. A bucket unused for `burst / rate` seconds since is full.
    #[must_use]
    pub fn last_used(&self) -> Instant {
        self.last
    }

    /// Credits the refill since the last call and takes one token if there is one.
    /// Returns whether a token was taken.
    pub fn take(&mut self, now: Instant) -> bool {
        self.take_n(now, 1)
    }

    /// The same for `n` tokens at once: all of them or none.
    pub fn take_n(&mut self, now: Instant, n: u32) -> bool {
        if now > self.last {
            let elapsed = now.duration_since(self.last).as_nanos();
            let refill = elapsed.saturating_mul(u128::from(self.rate));
            let room = self.capacity - self.stored;
            self.stored += u64::try_from(refill).map_or(room, |refill| refill.min(room));
            self.last = now;
        }
        let want = u64::from(n) * NANO;
        if self.stored >= want {
            self.stored -= want;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests;
