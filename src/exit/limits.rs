//! Per-circuit limits at the exit: a table of live flows with a cap on how many a
//! circuit may hold at once (the packet rate is metered by a
//! [`TokenBucket`](crate::proto::bucket::TokenBucket)).
//!
//! Sans-IO: the caller passes the current time as an [`Instant`]. Time that appears
//! to run backwards is treated as no time passing.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

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
