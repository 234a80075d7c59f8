//! The handshake replay cache: the ephemeral keys of accepted handshakes, kept for
//! `HANDSHAKE_REPLAY_TIME` (at most `HANDSHAKE_REPLAY_CAP`), so that a replayed
//! LINK_INIT or BUILD is dropped; and what a driver needs to keep them across a
//! restart.

use std::time::{Duration, Instant};

use super::timer::Timer;
use super::{Node, HANDSHAKE_REPLAY_CAP, HANDSHAKE_REPLAY_TIME};

impl Node {
    /// Records a handshake ephemeral key; false if it was seen before (a replay).
    pub(crate) fn remember_handshake(&mut self, now: Instant, e: &[u8]) -> bool {
        let Some(&key) = e.first_chunk::<32>() else {
            self.stats.dropped_malformed += 1;
            return false;
        };
        if self.seen.contains(&key) {
            self.stats.dropped_handshake_replay += 1;
            return false;
        }
        if self.seen_order.len() >= HANDSHAKE_REPLAY_CAP {
            if let Some((old, _)) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        self.seen.insert(key);
        self.seen_order.push_back((key, now));
        self.seen_total += 1;
        self.timers
            .set_earlier(Timer::Housekeeping, now + HANDSHAKE_REPLAY_TIME);
        true
    }

    /// How many handshakes this node has remembered so far (a position for
    /// [`Node::remembered_since`]).
    #[must_use]
    pub fn handshakes_remembered(&self) -> u64 {
        self.seen_total
    }

    /// The handshake keys remembered after the first `since` of
    /// [`Node::handshakes_remembered`] that are still remembered, oldest first: what a
    /// driver writes down so that a restarted node still refuses their replays.
    pub fn remembered_since(&self, since: u64) -> impl Iterator<Item = &[u8; 32]> {
        let new = usize::try_from(self.seen_total.saturating_sub(since)).unwrap_or(usize::MAX);
        let skip = self.seen_order.len().saturating_sub(new);
        self.seen_order.iter().skip(skip).map(|(k, _)| k)
    }

    /// Every remembered handshake key with its age at `now`, oldest first.
    pub fn remembered(&self, now: Instant) -> impl Iterator<Item = (&[u8; 32], Duration)> {
        self.seen_order
            .iter()
            .map(move |(k, t)| (k, now.saturating_duration_since(*t)))
    }

    /// Remembers handshake keys a previous run of this node accepted, each `age` old
    /// at `now` (those older than [`HANDSHAKE_REPLAY_TIME`] are skipped): their
    /// replays are dropped as if this node had never stopped. Call it before the
    /// node handles anything.
    pub fn preload_handshakes(&mut self, now: Instant, entries: &mut [([u8; 32], Duration)]) {
        entries.sort_by_key(|e| std::cmp::Reverse(e.1));
        for &(key, age) in entries.iter() {
            if age >= HANDSHAKE_REPLAY_TIME || self.seen_order.len() >= HANDSHAKE_REPLAY_CAP {
                continue;
            }
            if self.seen.insert(key) {
                self.seen_order
                    .push_back((key, now.checked_sub(age).unwrap_or(now)));
            }
        }
        self.schedule_housekeeping(now);
    }
}
