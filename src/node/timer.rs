//! The node's deadlines: one named timer per link, relayed circuit and own circuit,
//! and one for the node's housekeeping, each at the exact instant its owner next has
//! something to do (a retransmission, a keepalive, a rekey, a timeout).
//!
//! An owner's deadline is a pure function of its state; the node sets it again after
//! each run of the owner's timer and whenever its state changes in a way that can
//! bring the deadline forward (a new link, a circuit coming up, a link's last
//! circuit leaving). Changes that only push a deadline back (traffic refreshing an
//! idle clock) leave the timer where it is: it fires early, finds nothing to do and
//! is set again, so the data path never touches this table.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use crate::node::CircuitId;

/// Whose deadline a timer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Timer {
    /// Handshake retransmission, link rekey and expiry, liveness probes, idle link.
    Link(u64),
    /// Build timeout, idle circuit, expired keys of a circuit this node relays.
    Relay(u64),
    /// Build timeout, silence, keepalives and rekeys of the node's own circuit.
    Own(CircuitId),
    /// Forgetting old handshake keys and idle per-source budgets.
    Housekeeping,
    /// The next slot of a paced link.
    Pace(u64),
    /// The next padding or machine timer of an own circuit's adaptive padding.
    Padding(CircuitId),
}

/// Timers by deadline (ties in `Timer` order: links, relays, own circuits).
#[derive(Debug, Default)]
pub(super) struct TimerTable {
    at: HashMap<Timer, Instant>,
    queue: BTreeSet<(Instant, Timer)>,
}

impl TimerTable {
    /// Sets `timer` to `deadline`, or stops it when there is none.
    pub(super) fn set(&mut self, timer: Timer, deadline: Option<Instant>) {
        let old = match deadline {
            Some(d) => self.at.insert(timer, d),
            None => self.at.remove(&timer),
        };
        if old == deadline {
            return;
        }
        if let Some(old) = old {
            self.queue.remove(&(old, timer));
        }
        if let Some(d) = deadline {
            self.queue.insert((d, timer));
        }
    }

    /// Sets `timer` to `deadline` unless it is set to an earlier one.
    pub(super) fn set_earlier(&mut self, timer: Timer, deadline: Instant) {
        if self.at.get(&timer).is_none_or(|&d| d > deadline) {
            self.set(timer, Some(deadline));
        }
    }

    /// The earliest deadline.
    pub(super) fn next(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// Removes and returns a timer whose deadline is at or before `now`, earliest first.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        let &(at, timer) = self.queue.first()?;
        if at > now {
            return None;
        }
        self.queue.pop_first();
        self.at.remove(&timer);
        Some(timer)
    }

    /// The deadline of `timer`, if it is set.
    #[cfg(test)]
    pub(super) fn get(&self, timer: Timer) -> Option<Instant> {
        self.at.get(&timer).copied()
    }
}

/// The earliest of some instants.
#[derive(Default)]
pub(super) struct Deadline(pub(super) Option<Instant>);

impl Deadline {
    pub(super) fn add(&mut self, at: Instant) {
        self.0 = Some(self.0.map_or(at, |d| d.min(at)));
    }
}
