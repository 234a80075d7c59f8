//! Per-circuit limits at the exit: a packet-rate token bucket and a table of live
//! flows with a cap on how many a circuit may hold at once.
//!
//! Both are sans-IO: the caller passes the current time as an [`Instant`]. Time that
//! appears to run backwards is treated as no time passing.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

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

    /// Credits the refill since the last call and takes one token if there is one.
    /// Returns whether a token was taken.
    pub fn take(&mut self, now: Instant) -> bool {
        if now > self.last {
            let elapsed = now.duration_since(self.last).as_nanos();
            let refill = elapsed.saturating_mul(u128::from(self.rate));
            let room = self.capacity - self.stored;
            self.stored += u64::try_from(refill).map_or(room, |refill| refill.min(room));
            self.last = now;
        }
        if self.stored >= NANO {
            self.stored -= NANO;
            true
        } else {
            false
        }
    }
}

/// One live flow in the [`FlowTable`]'s recency list.
#[derive(Debug, Clone)]
struct Node<K> {
    key: K,
    /// When the flow last had a packet.
    seen: Instant,
    /// The next older flow.
    older: Option<usize>,
    /// The next newer flow.
    newer: Option<usize>,
}

/// The set of a circuit's live flows, at most `max` at once; a flow idle for `idle`
/// is forgotten.
///
/// A flow last seen at `t` is live until `t + idle` (exclusive). The live flows are
/// kept in a doubly linked list ordered by last packet, stored in a slab of nodes
/// indexed by a hash map, so a refresh moves a node to the newest end and expiry pops
/// from the oldest end, both in O(1). Slots of forgotten flows are reused, so a
/// packet of a known flow never allocates, and storage never exceeds `max` nodes.
#[derive(Debug, Clone)]
pub struct FlowTable<K> {
    max: usize,
    idle: Duration,
    /// Slab index of each live flow's node.
    index: HashMap<K, usize>,
    /// Node slab; slots listed in `free` are unused.
    nodes: Vec<Node<K>>,
    free: Vec<usize>,
    oldest: Option<usize>,
    newest: Option<usize>,
    /// Latest time seen, so that time never runs backwards in the list.
    now: Option<Instant>,
}

// Slots index `nodes` only as this table hands them out (its free list and links),
// never as input gives them.
#[allow(clippy::indexing_slicing)]
impl<K: Copy + Eq + Hash> FlowTable<K> {
    /// An empty table admitting at most `max` live flows, each forgotten after
    /// `idle` without packets.
    pub fn new(max: usize, idle: Duration) -> Self {
        FlowTable {
            max,
            idle,
            index: HashMap::new(),
            nodes: Vec::new(),
            free: Vec::new(),
            oldest: None,
            newest: None,
            now: None,
        }
    }

    /// A packet of flow `key` at `now`: a known flow is refreshed and admitted; a
    /// new flow is admitted if fewer than `max` flows are live after expiring idle
    /// ones. Amortized O(1).
    pub fn admit(&mut self, now: Instant, key: K) -> bool {
        let now = match self.now {
            Some(latest) if latest > now => latest,
            _ => now,
        };
        self.now = Some(now);
        self.expire(now);

        if let Some(&slot) = self.index.get(&key) {
            self.nodes[slot].seen = now;
            self.unlink(slot);
            self.link_newest(slot);
            return true;
        }
        if self.index.len() >= self.max {
            return false;
        }
        let node = Node {
            key,
            seen: now,
            older: None,
            newer: None,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.nodes[slot] = node;
                slot
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.link_newest(slot);
        self.index.insert(key, slot);
        true
    }

    /// Number of live flows, as of the last [`FlowTable::admit`].
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no flow is live, as of the last [`FlowTable::admit`].
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Forgets the flows idle at `now`, oldest first.
    fn expire(&mut self, now: Instant) {
        while let Some(slot) = self.oldest {
            if now.duration_since(self.nodes[slot].seen) < self.idle {
                break;
            }
            self.unlink(slot);
            self.index.remove(&self.nodes[slot].key);
            self.free.push(slot);
        }
    }

    /// Takes a node out of the recency list.
    fn unlink(&mut self, slot: usize) {
        let Node { older, newer, .. } = self.nodes[slot];
        match older {
            Some(older_slot) => self.nodes[older_slot].newer = newer,
            None => self.oldest = newer,
        }
        match newer {
            Some(newer_slot) => self.nodes[newer_slot].older = older,
            None => self.newest = older,
        }
    }

    /// Puts an unlinked node at the newest end of the recency list.
    fn link_newest(&mut self, slot: usize) {
        self.nodes[slot].older = self.newest;
        self.nodes[slot].newer = None;
        match self.newest {
            Some(newest) => self.nodes[newest].newer = Some(slot),
            None => self.oldest = Some(slot),
        }
        self.newest = Some(slot);
    }
}

#[cfg(test)]
mod tests;
