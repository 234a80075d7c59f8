//! The handshake budget: token buckets of `handshake_rate` per second that bound
//! the CPU a node spends on handshakes, one per kind of handshake.

use std::time::Instant;

use super::Node;

pub(super) struct TokenBucket {
    pub(super) tokens: f64,
    pub(super) last: Option<Instant>,
}

impl TokenBucket {
    /// Adds the tokens earned since the last refill, up to one second's worth.
    pub(super) fn refill(&mut self, now: Instant, rate: f64) {
        if let Some(last) = self.last {
            self.tokens =
                (self.tokens + now.saturating_duration_since(last).as_secs_f64() * rate).min(rate);
        }
        self.last = Some(now);
    }

    pub(super) fn take(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a handshake token is spent on: each has its own bucket of `handshake_rate`
/// per second, so a flood of one kind (new links from anywhere, BUILDs from one
/// client) cannot starve the others (the rekeys that keep circuits alive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Budget {
    /// LINK_INIT, new links and link rekeys (after its MAC verified).
    Link,
    /// A BUILD slot addressed to this node.
    Build,
    /// REKEY of a circuit this node relays.
    Rekey,
}

/// The three handshake buckets.
pub(super) struct Budgets {
    pub(super) link: TokenBucket,
    pub(super) build: TokenBucket,
    pub(super) rekey: TokenBucket,
}

impl Node {
    pub(super) fn take_token(&mut self, now: Instant, budget: Budget) -> bool {
        let rate = f64::from(self.cfg.handshake_rate);
        let b = match budget {
            Budget::Link => &mut self.budgets.link,
            Budget::Build => &mut self.budgets.build,
            Budget::Rekey => &mut self.budgets.rekey,
        };
        b.refill(now, rate);
        let taken = b.take();
        if !taken {
            self.stats.dropped_rate_limited += 1;
        }
        taken
    }
}
