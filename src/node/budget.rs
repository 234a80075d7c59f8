//! The handshake budget: token buckets of `handshake_rate` per second that bound
//! the CPU a node spends on handshakes, one per kind of handshake.

use std::time::Instant;

use crate::proto::bucket::TokenBucket;

use super::Node;

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

/// The three handshake buckets, each full when first used.
#[derive(Default)]
pub(super) struct Budgets {
    link: Option<TokenBucket>,
    build: Option<TokenBucket>,
    rekey: Option<TokenBucket>,
}

impl Node {
    /// Takes a token of `budget` (`handshake_rate` per second, as many at once);
    /// false, counted, when there is none.
    pub(super) fn take_token(&mut self, now: Instant, budget: Budget) -> bool {
        let rate = self.cfg.handshake_rate;
        let b = match budget {
            Budget::Link => &mut self.budgets.link,
            Budget::Build => &mut self.budgets.build,
            Budget::Rekey => &mut self.budgets.rekey,
        };
        let taken = b
            .get_or_insert_with(|| TokenBucket::new(rate, rate, now))
            .take(now);
        let counter = if taken {
            match budget {
                Budget::Link => &mut self.stats.handshakes_link,
                Budget::Build => &mut self.stats.handshakes_build,
                Budget::Rekey => &mut self.stats.handshakes_rekey,
            }
        } else {
            &mut self.stats.dropped_rate_limited
        };
        *counter += 1;
        taken
    }
}
