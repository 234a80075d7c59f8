//! The crawler: whom to ask next, and what the answers do to the store.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};

use super::message::{Message, MAX_GET};
use super::store::{Answer, Entry, Inserted, Rejected, Source, Store};
use crate::proto::crypto::below;

/// Outstanding queries a [`Crawler`] allows unless told otherwise.
pub const DEFAULT_PARALLEL: usize = 3;
/// Peers a gateway asks per gossip round ([`Crawler::gossip`]).
pub const GOSSIP_PEERS: u64 = 3;
/// How often a gateway runs a gossip round.
pub const GOSSIP_INTERVAL: Duration = Duration::from_secs(300);
/// A query with no complete answer after this long is abandoned.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Descriptors a client's crawl asks of each gateway.
pub const PER_QUERY: u8 = 64;

/// Random draws tried when picking a gateway to ask before falling back to a scan.
const DRAWS: usize = 32;

/// What a [`Crawler`] did, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CrawlStats {
    /// Queries started.
    pub queries: u64,
    /// Queries that ended with `End`.
    pub answered: u64,
    /// Queries that ended with `Refused`.
    pub refused: u64,
    /// Queries closed by their timeout.
    pub timed_out: u64,
    /// Queries whose circuit could not be built or broke ([`Crawler::on_failed`]).
    pub unreachable: u64,
    /// Queries closed because the gateway broke the protocol.
    pub violations: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// Descriptors received.
    pub descriptors: u64,
    /// Descriptors the store took.
    pub accepted: u64,
}

/// What one received payload did ([`Crawler::on_payload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A descriptor, and what the store made of it; the query stays open.
    Descriptor(Result<Inserted, Rejected>),
    /// `End`: the query is complete.
    Answered {
        /// The count the gateway announced.
        sent: u8,
        /// The descriptors that arrived (fewer when cells were lost).
        received: u8,
    },
    /// `Refused`: the query is closed.
    Refused,
    /// Malformed, not a gateway's message, or more descriptors than asked for: the
    /// query is closed and the driver should close its circuit.
    Violation,
    /// No open query to this gateway: ignored.
    Ignored,
}

/// An open query.
#[derive(Debug, Clone)]
struct Pending {
    started: Instant,
    answer: Answer,
    received: u8,
}

/// The iterative discovery client: whom to ask next and what the answers mean.
///
/// The driver asks [`Crawler::next_query`] for a gateway, opens a DIRECTORY circuit to
/// it (trying [`Store::addresses`] in order), sends [`Crawler::request`], feeds every
/// payload received on the circuit to [`Crawler::on_payload`], reports a circuit that
/// cannot be built with [`Crawler::on_failed`] and calls [`Crawler::on_timeout`] at
/// [`Crawler::poll_timeout`]. Each gateway is asked once per crawl, with at most
/// `parallel` queries open: contested gateways first (their answer settles the
/// contest), then bootstrap gateways, otherwise uniformly at random among the known
/// ones not yet asked. A gateway asked before its key was contested is asked once
/// more.
#[derive(Debug, Clone)]
pub struct Crawler {
    target: usize,
    per_query: u8,
    timeout: Duration,
    parallel: usize,
    budget: u64,
    bootstrap_first: bool,
    asked: HashSet<[u8; 32]>,
    /// Contested keys asked since they were contested.
    settling: HashSet<[u8; 32]>,
    pending: HashMap<[u8; 32], Pending>,
    stats: CrawlStats,
}

impl Crawler {
    /// A crawl that stops once the store holds `target` descriptors (or every known
    /// gateway was asked), asking each gateway for `per_query` descriptors (clamped to
    /// 1..=64) and giving up on a query after `timeout`. At most
    /// [`DEFAULT_PARALLEL`] queries are open at once.
    pub fn new(target: usize, per_query: u8, timeout: Duration) -> Self {
        Crawler {
            target,
            per_query: per_query.clamp(1, MAX_GET),
            timeout,
            parallel: DEFAULT_PARALLEL,
            budget: u64::MAX,
            bootstrap_first: true,
            asked: HashSet::new(),
            settling: HashSet::new(),
            pending: HashMap::new(),
            stats: CrawlStats::default(),
        }
    }

    /// A gateway's gossip round: asks [`GOSSIP_PEERS`] random known peers (bootstrap
    /// gateways get no preference) for [`MAX_GET`] descriptors each. Run one every
    /// gossip interval.
    pub fn gossip(timeout: Duration) -> Self {
        let mut crawler = Crawler::new(usize::MAX, MAX_GET, timeout).with_budget(GOSSIP_PEERS);
        crawler.bootstrap_first = false;
        crawler
    }

    /// Allows `parallel` (at least 1) open queries.
    pub fn with_parallel(mut self, parallel: usize) -> Self {
        self.parallel = parallel.max(1);
        self
    }

    /// Starts at most `queries` queries in all.
    pub fn with_budget(mut self, queries: u64) -> Self {
        self.budget = queries;
        self
    }

    /// Counters of the crawl.
    pub fn stats(&self) -> &CrawlStats {
        &self.stats
    }

    /// Queries open now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The payload to send on a query's circuit: `Get { max: per_query }`.
    pub fn request(&self) -> Vec<u8> {
        Message::Get {
            max: self.per_query,
        }
        .to_vec()
    }

    /// Opens a query to a gateway known only by address and key (a bootstrap
    /// gateway without a descriptor yet); its answer is then fed to
    /// [`Crawler::on_payload`] like any other. Its own descriptor, served over the
    /// authenticated circuit, counts as proven.
    pub fn ask(&mut self, now: Instant, key: [u8; 32]) {
        self.asked.insert(key);
        self.pending.insert(
            key,
            Pending {
                started: now,
                answer: Answer::new(key),
                received: 0,
            },
        );
        self.stats.queries += 1;
    }

    /// The next gateway to ask, if a query slot is free, the crawl is not done and
    /// the budget allows: a contested gateway not asked since it was contested, else
    /// an unasked bootstrap gateway, else a uniformly random known gateway not yet
    /// asked (never this node's own). The query counts as open from `now`.
    pub fn next_query(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        store: &Store,
    ) -> Option<[u8; 32]> {
        if self.pending.len() >= self.parallel
            || self.stats.queries >= self.budget
            || store.len() >= self.target
        {
            return None;
        }
        let key = self.pick(rng, store)?;
        self.asked.insert(key);
        if store.contender(&key).is_some() {
            self.settling.insert(key);
        }
        self.pending.insert(
            key,
            Pending {
                started: now,
                answer: Answer::new(key),
                received: 0,
            },
        );
        self.stats.queries += 1;
        Some(key)
    }

    /// Handles one payload received on the query circuit to gateway `key`, storing
    /// descriptors in `store` (verified at `now_unix`).
    pub fn on_payload(
        &mut self,
        key: &[u8; 32],
        payload: &[u8],
        store: &mut Store,
        now_unix: u64,
    ) -> Progress {
        self.stats.bytes_received += payload.len() as u64;
        let Some(pending) = self.pending.get_mut(key) else {
            return Progress::Ignored;
        };
        match Message::parse(payload) {
            Ok(Message::Desc(bytes)) if pending.received < self.per_query => {
                pending.received += 1;
                self.stats.descriptors += 1;
                let result = store.insert_answer(&mut pending.answer, bytes, now_unix);
                if result.is_ok() {
                    self.stats.accepted += 1;
                }
                Progress::Descriptor(result)
            }
            Ok(Message::End { sent }) if sent <= self.per_query => {
                let received = pending.received;
                self.pending.remove(key);
                self.stats.answered += 1;
                Progress::Answered { sent, received }
            }
            Ok(Message::Refused) => {
                self.pending.remove(key);
                self.stats.refused += 1;
                Progress::Refused
            }
            _ => {
                self.pending.remove(key);
                self.stats.violations += 1;
                Progress::Violation
            }
        }
    }

    /// The query to `key` cannot go on (its circuit failed to build or broke).
    /// Returns whether a query was open.
    pub fn on_failed(&mut self, key: &[u8; 32]) -> bool {
        let open = self.pending.remove(key).is_some();
        if open {
            self.stats.unreachable += 1;
        }
        open
    }

    /// Closes the queries open for `timeout` or longer at `now` and returns their
    /// gateways (the driver closes their circuits).
    pub fn on_timeout(&mut self, now: Instant) -> Vec<[u8; 32]> {
        let timeout = self.timeout;
        let expired: Vec<[u8; 32]> = self
            .pending
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.started) >= timeout)
            .map(|(key, _)| *key)
            .collect();
        for key in &expired {
            self.pending.remove(key);
        }
        self.stats.timed_out += expired.len() as u64;
        expired
    }

    /// When the earliest open query times out.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| p.started + self.timeout)
            .min()
    }

    /// Whether the crawl is over: the store holds `target` descriptors, or no query is
    /// open and no known gateway is left to ask (or the budget is spent).
    pub fn done(&self, store: &Store) -> bool {
        store.len() >= self.target
            || (self.pending.is_empty()
                && (self.stats.queries >= self.budget
                    || (self.unsettled(store).next().is_none()
                        && !store.entries.iter().any(|e| self.askable(e)))))
    }

    /// Contested keys not asked since they were contested (and not open now).
    fn unsettled<'a>(&'a self, store: &'a Store) -> impl Iterator<Item = [u8; 32]> + 'a {
        store
            .contested()
            .filter(|key| !self.settling.contains(*key) && !self.pending.contains_key(*key))
            .copied()
    }

    /// Whether `entry` is a gateway this crawl may still ask.
    fn askable(&self, entry: &Entry) -> bool {
        entry.source != Source::Own && !self.asked.contains(&entry.descriptor.key())
    }

    /// A gateway to ask: a contested one not asked since, then an unasked bootstrap
    /// gateway, then uniformly among the unasked ones (random draws first, a full
    /// scan only when they all miss; both return the first hit of a uniform process,
    /// so the choice is uniform).
    fn pick(&mut self, rng: &mut impl RngCore, store: &Store) -> Option<[u8; 32]> {
        let contested: Vec<[u8; 32]> = self.unsettled(store).collect();
        if !contested.is_empty() {
            return contested.get(below(rng, contested.len())).copied();
        }
        if self.bootstrap_first {
            let bootstrap: Vec<[u8; 32]> = store
                .entries
                .iter()
                .filter(|e| e.source == Source::Bootstrap && self.askable(e))
                .map(|e| e.descriptor.key())
                .collect();
            if !bootstrap.is_empty() {
                return bootstrap.get(below(rng, bootstrap.len())).copied();
            }
            self.bootstrap_first = false;
        }
        let n = store.entries.len();
        if n == 0 {
            return None;
        }
        let drawn = (0..DRAWS)
            .filter_map(|_| store.entries.get(below(rng, n)))
            .find(|e| self.askable(e));
        let entry = match drawn {
            Some(entry) => entry,
            None => {
                let left: Vec<&Entry> = store.entries.iter().filter(|e| self.askable(e)).collect();
                if left.is_empty() {
                    return None;
                }
                left.get(below(rng, left.len())).copied()?
            }
        };
        Some(entry.descriptor.key())
    }
}
