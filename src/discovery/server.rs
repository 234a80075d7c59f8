//! The directory server: a gateway's answers to `Get` and `Publish`.

use std::time::Instant;

use rand_core::{CryptoRng, RngCore};

use super::message::{Message, MAX_GET};
use super::store::{sample_indices, Source, Store};
use crate::proto::bucket::TokenBucket;

/// [`Message::Get`]s a [`Server`] answers on one circuit; later ones are refused.
pub const GETS_PER_CIRCUIT: u8 = 1;

/// Why a [`Server`] refused a `Get`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefuseReason {
    /// The gateway does not share (`discovery.share = false`).
    NotSharing,
    /// The global rate limit is exhausted.
    Busy,
    /// The circuit already had its [`GETS_PER_CIRCUIT`] answers.
    CircuitQuota,
}

/// What a [`Server`] did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Answered with `sent` descriptors and an `End`.
    Answered {
        /// Descriptors sent.
        sent: u8,
    },
    /// Answered with `Refused`.
    Refused(RefuseReason),
    /// Not a `Get`: nothing sent (the driver may close the circuit).
    Ignored,
}

/// What a [`Server`] did, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServerStats {
    /// Gets answered with descriptors.
    pub answered: u64,
    /// Gets refused because the gateway does not share.
    pub refused_not_sharing: u64,
    /// Gets refused by the global rate limit.
    pub refused_busy: u64,
    /// Gets refused by the per-circuit limit.
    pub refused_quota: u64,
    /// Requests that were not a valid `Get`.
    pub ignored: u64,
    /// Descriptors sent.
    pub descriptors_sent: u64,
    /// Published descriptors the store took.
    pub published: u64,
    /// Published descriptors dropped: over the rate limit or refused by the store.
    pub published_dropped: u64,
}

/// Per-circuit state of a [`Server`]: the driver keeps one per DIRECTORY circuit.
/// Requesters are anonymous, so the only per-requester limit is per circuit; a
/// requester that wants more builds another circuit, which the handshake rate limit
/// bounds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Session {
    gets: u8,
}

/// Answers `Get`s from a gateway's store: its own descriptors first, then a uniform
/// random sample of the others, `max` in all, then `End`. Refuses when configured not
/// to share, when a global token bucket (`rate_per_sec`, one second of burst) is
/// empty, or after [`GETS_PER_CIRCUIT`] answers on one circuit.
#[derive(Debug, Clone)]
pub struct Server {
    share: bool,
    rate_per_sec: u32,
    bucket: Option<TokenBucket>,
    /// Bounds the descriptors other gateways may publish here.
    publish_bucket: Option<TokenBucket>,
    stats: ServerStats,
}

impl Server {
    /// A server that shares (or not) and answers at most `rate_per_sec` `Get`s per
    /// second over all circuits (0: none).
    pub fn new(share: bool, rate_per_sec: u32) -> Self {
        Server {
            share,
            rate_per_sec,
            bucket: None,
            publish_bucket: None,
            stats: ServerStats::default(),
        }
    }

    /// Takes a `Publish` (a gateway announcing its own descriptor): verifies and
    /// stores it like a descriptor learned without a peer, since it proves nothing
    /// of its anonymous sender, under the store's caps and at most `rate_per_sec`
    /// per second. Returns false when `request` is not a `Publish` (then it is for
    /// [`Server::handle`]). Publishing gets no answer.
    pub fn publish(
        &mut self,
        now: Instant,
        store: &mut Store,
        request: &[u8],
        now_unix: u64,
    ) -> bool {
        let Ok(Message::Publish(bytes)) = Message::parse(request) else {
            return false;
        };
        let rate = self.rate_per_sec;
        let bucket = self
            .publish_bucket
            .get_or_insert_with(|| TokenBucket::new(rate, rate, now));
        if bucket.take(now) && store.insert(bytes, now_unix, Source::Bootstrap).is_ok() {
            self.stats.published += 1;
        } else {
            self.stats.published_dropped += 1;
        }
        true
    }

    /// Counters of what the server did.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Handles one request payload received on the circuit of `session` and pushes
    /// the response payloads (each at most [`MAX_MESSAGE_LEN`](super::MAX_MESSAGE_LEN) bytes) onto `out`.
    pub fn handle(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        store: &Store,
        session: &mut Session,
        request: &[u8],
        out: &mut Vec<Vec<u8>>,
    ) -> Reply {
        let Ok(Message::Get { max }) = Message::parse(request) else {
            self.stats.ignored += 1;
            return Reply::Ignored;
        };
        let refused = if !self.share {
            Some(RefuseReason::NotSharing)
        } else if session.gets >= GETS_PER_CIRCUIT {
            Some(RefuseReason::CircuitQuota)
        } else {
            session.gets += 1;
            let rate = self.rate_per_sec;
            let bucket = self
                .bucket
                .get_or_insert_with(|| TokenBucket::new(rate, rate, now));
            (!bucket.take(now)).then_some(RefuseReason::Busy)
        };
        if let Some(reason) = refused {
            let counter = match reason {
                RefuseReason::NotSharing => &mut self.stats.refused_not_sharing,
                RefuseReason::Busy => &mut self.stats.refused_busy,
                RefuseReason::CircuitQuota => &mut self.stats.refused_quota,
            };
            *counter += 1;
            // A gateway that does not share still hands out its own descriptor, so
            // that it can be found; it withholds the others.
            if reason == RefuseReason::NotSharing {
                for entry in store.entries.iter().filter(|e| e.source == Source::Own) {
                    out.push(Message::Desc(&entry.bytes).to_vec());
                }
            }
            out.push(Message::Refused.to_vec());
            return Reply::Refused(reason);
        }
        let max = usize::from(max);
        let own = store
            .entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| entry.source == Source::Own)
            .map(|(i, _)| i)
            .take(max);
        let mut picked: Vec<usize> = own.collect();
        let others = sample_indices(rng, store.entries.len(), max + picked.len());
        for i in others {
            if picked.len() == max {
                break;
            }
            if store
                .entries
                .get(i)
                .is_some_and(|e| e.source != Source::Own)
            {
                picked.push(i);
            }
        }
        for e in picked.iter().filter_map(|&i| store.entries.get(i)) {
            out.push(Message::Desc(&e.bytes).to_vec());
        }
        let sent = u8::try_from(picked.len()).unwrap_or(MAX_GET);
        out.push(Message::End { sent }.to_vec());
        self.stats.answered += 1;
        self.stats.descriptors_sent += u64::from(sent);
        Reply::Answered { sent }
    }
}
