//! The descriptor store: what a node knows of the network, bounded against
//! poisoning, and its cache file.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use rand_core::{CryptoRng, RngCore};
use thiserror::Error;

use super::message::MAX_GET;
use crate::proto::crypto::below;
use crate::proto::descriptor::{Descriptor, DescriptorError, PaddingBudget, MAX_DESCRIPTOR_LEN};
use crate::proto::ports::PortSummary;

mod cache;
mod stats;

pub use self::cache::{CacheReport, CHECKSUM_LEN};
pub use self::stats::{StoreStats, REJECTION_GROUPS};

/// What path selection knows of a gateway (built from a verified descriptor by
/// [`Store::candidates`]).
///
/// A candidate without addresses or with port 0 cannot be reached and is never
/// selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The gateway's static public key.
    pub key: [u8; 32],
    /// The gateway's addresses; all of them count for the /16 and /32 rule.
    pub addrs: Vec<IpAddr>,
    /// The gateway's UDP port.
    pub port: u16,
    /// Whether the gateway offers the exit service.
    pub exit: bool,
    /// Ports the exit accepts to ordinary public addresses. An exit without a summary
    /// is used only when the destination port is unknown.
    pub exit_ports: Option<PortSummary>,
    /// The padding budget its descriptor states.
    pub padding: PaddingBudget,
}

impl Candidate {
    /// The padding share, in percent of a circuit's cells, that this gateway allows
    /// a circuit through it: its `share`, or 0 when it echoes nothing.
    #[must_use]
    pub fn padding_share(&self) -> u8 {
        if self.padding.rate == 0 {
            0
        } else {
            self.padding.share
        }
    }
}

/// Where a stored descriptor came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// This node's own descriptor: never capped, never replaced by another source.
    Own,
    /// From the configuration (bootstrap gateways): asked first by a client crawl.
    Bootstrap,
    /// From an answer of the gateway with this onion key.
    Peer([u8; 32]),
}

/// Anti-poisoning bounds of a [`Store`]. The defaults suit a network of some
/// thousands of gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most descriptors held, contenders included (default 20,000). Own descriptors
    /// are always admitted.
    pub max_total: usize,
    /// Most descriptors one answer may add ([`Store::insert_answer`]; default 64).
    pub per_answer: usize,
    /// Most descriptors held that were learned from one peer (default 2,000).
    pub per_source: usize,
    /// Most descriptors held with an address in one IPv4 /24 or one IPv6 /48
    /// (default 4). A descriptor counts once against each network its addresses are in.
    pub per_prefix: usize,
    /// Longest descriptor accepted, checked before anything else (default
    /// [`MAX_DESCRIPTOR_LEN`]; the descriptor module rejects longer ones anyway).
    pub max_descriptor_len: usize,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            max_total: 20_000,
            per_answer: 64,
            per_source: 2_000,
            per_prefix: 4,
            max_descriptor_len: MAX_DESCRIPTOR_LEN,
        }
    }
}

/// How a descriptor entered the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A gateway the store did not know.
    New,
    /// A newer descriptor of a known gateway, by the same identity.
    Replaced,
    /// The gateway's own descriptor, served by itself, replacing another identity's
    /// claim on its onion key.
    Reclaimed,
    /// Another identity's claim on an onion key the store holds, kept as the key's
    /// contender until the gateway itself settles which is right
    /// ([`Store::contender`]).
    Contender,
}

/// Why the store did not take a descriptor.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum Rejected {
    /// Too long, malformed, badly signed or outside its validity
    /// ([`Descriptor::verify`]).
    #[error(transparent)]
    Invalid(DescriptorError),
    /// Exactly the descriptor the store holds.
    #[error("descriptor already known")]
    Duplicate,
    /// Not newer than the held descriptor of the same identity.
    #[error("descriptor is not newer than the one held")]
    Stale,
    /// Another identity holds the onion key, and the key already has a contender.
    #[error("onion key is held by another identity")]
    OtherIdentity,
    /// The identity already holds another onion key.
    #[error("identity already holds another onion key")]
    IdentityInUse,
    /// The store is full.
    #[error("store is full")]
    TotalCap,
    /// The answer already added its share.
    #[error("answer added too many descriptors")]
    AnswerCap,
    /// The peer already supplied its share of the store.
    #[error("peer supplied too many descriptors")]
    SourceCap,
    /// An address's /24 or /48 is full.
    #[error("too many descriptors in one network")]
    PrefixCap,
}

/// A verified descriptor held by a [`Store`]. Entries exist only after
/// verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub(super) bytes: Vec<u8>,
    pub(super) descriptor: Descriptor,
    pub(super) source: Source,
}

impl Entry {
    /// The signed encoding, as received.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The decoded descriptor.
    pub fn descriptor(&self) -> &Descriptor {
        &self.descriptor
    }

    /// Who supplied the held version.
    pub fn source(&self) -> Source {
        self.source
    }
}

/// One answer being read from a peer, for the per-answer cap of
/// [`Store::insert_answer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    peer: [u8; 32],
    added: usize,
}

impl Answer {
    /// A new answer from the gateway with onion key `peer`.
    pub fn new(peer: [u8; 32]) -> Self {
        Answer { peer, added: 0 }
    }

    /// The answering gateway.
    pub fn peer(&self) -> [u8; 32] {
        self.peer
    }

    /// Descriptors this answer added to the store so far.
    pub fn added(&self) -> usize {
        self.added
    }
}

/// A network for the per-network cap: an IPv4 /24 or an IPv6 /48.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Prefix {
    V4([u8; 3]),
    V6([u8; 6]),
}

/// The distinct networks of a descriptor's addresses.
fn prefixes(descriptor: &Descriptor) -> Vec<Prefix> {
    let mut out: Vec<Prefix> = Vec::with_capacity(descriptor.addrs.len());
    for addr in &descriptor.addrs {
        let prefix = match addr {
            IpAddr::V4(a) => {
                let o = a.octets();
                Prefix::V4([o[0], o[1], o[2]])
            }
            IpAddr::V6(a) => {
                let o = a.octets();
                Prefix::V6([o[0], o[1], o[2], o[3], o[4], o[5]])
            }
        };
        if !out.contains(&prefix) {
            out.push(prefix);
        }
    }
    out
}

/// Whether a descriptor for onion key `key` from `source` is authentic: this node's
/// own, or served by the gateway `key` itself over a circuit its handshake
/// authenticated.
fn authoritative(source: Source, key: &[u8; 32]) -> bool {
    match source {
        Source::Own => true,
        Source::Bootstrap => false,
        Source::Peer(peer) => peer == *key,
    }
}

/// The descriptors a node knows, one per onion key ([`Descriptor::key`]).
///
/// Every descriptor is verified on the way in and checked against the
/// [`StoreLimits`]. A held descriptor is replaced only by a newer one (later
/// `published`) by the same identity, or by the gateway's own descriptor served by
/// itself ([`Inserted::Reclaimed`]); an identity holds at most one onion key (an
/// honest gateway's identity is derived from its onion key's secret). Another
/// identity's claim on a held key is kept aside as its contender
/// ([`Inserted::Contender`]) until the gateway's own descriptor settles the contest;
/// contenders count against the caps, and one whose held rival expires takes its
/// place.
#[derive(Debug, Clone)]
pub struct Store {
    pub(super) limits: StoreLimits,
    pub(super) entries: Vec<Entry>,
    /// Onion key → index in `entries`.
    pub(super) index: HashMap<[u8; 32], usize>,
    /// Onion key of a held entry → another identity's claim on it.
    pub(super) contenders: BTreeMap<[u8; 32], Entry>,
    pub(super) counters: Counters,
    pub(super) stats: StoreStats,
}

/// What the caps and the identity rule count, kept in step with a store's entries.
#[derive(Debug, Clone, Default)]
pub(super) struct Counters {
    /// Identity → the onion key it holds.
    pub(super) identities: HashMap<[u8; 32], [u8; 32]>,
    /// Peer → descriptors held from it.
    pub(super) per_source: HashMap<[u8; 32], usize>,
    /// Network → descriptors held with an address in it.
    pub(super) per_prefix: HashMap<Prefix, usize>,
}

impl Counters {
    /// Adds or removes an entry's share.
    pub(super) fn account(&mut self, entry: &Entry, add: bool) {
        if let Source::Peer(peer) = entry.source {
            bump(&mut self.per_source, peer, add);
        }
        for prefix in prefixes(&entry.descriptor) {
            bump(&mut self.per_prefix, prefix, add);
        }
        let (identity, key) = (entry.descriptor.identity, entry.descriptor.key());
        if add {
            self.identities.insert(identity, key);
        } else if self.identities.get(&identity) == Some(&key) {
            self.identities.remove(&identity);
        }
    }
}

/// Adds one to or removes one from `key`'s count, dropping counts that reach zero.
fn bump<K: Copy + Eq + std::hash::Hash>(map: &mut HashMap<K, usize>, key: K, add: bool) {
    if add {
        *map.entry(key).or_insert(0) += 1;
    } else if let Some(count) = map.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            map.remove(&key);
        }
    }
}

impl Default for Store {
    fn default() -> Self {
        Store::new(StoreLimits::default())
    }
}

impl Store {
    /// An empty store with these limits.
    pub fn new(limits: StoreLimits) -> Self {
        Store {
            limits,
            entries: Vec::new(),
            index: HashMap::new(),
            contenders: BTreeMap::new(),
            counters: Counters::default(),
            stats: StoreStats::default(),
        }
    }

    /// The limits the store enforces.
    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// Counters of what the store took and rejected.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Descriptors held (contenders aside).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The held descriptor of the gateway with onion key `key`.
    pub fn get(&self, key: &[u8; 32]) -> Option<&Entry> {
        self.index.get(key).and_then(|&i| self.entries.get(i))
    }

    /// Every held descriptor, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.entries.iter()
    }

    /// Another identity's claim on the held key `key`, if one is waiting.
    pub fn contender(&self, key: &[u8; 32]) -> Option<&Entry> {
        self.contenders.get(key)
    }

    /// The onion keys with a contender, in ascending order.
    pub fn contested(&self) -> impl Iterator<Item = &[u8; 32]> + '_ {
        self.contenders.keys()
    }

    /// Where to reach gateway `key`: the held descriptor's socket addresses, then
    /// its contender's (without repeats). Only the gateway holding the onion key's
    /// secret completes the handshake at any of them.
    pub fn addresses(&self, key: &[u8; 32]) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = Vec::new();
        for entry in self.get(key).into_iter().chain(self.contender(key)) {
            for addr in entry.descriptor.socket_addrs() {
                if !out.contains(&addr) {
                    out.push(addr);
                }
            }
        }
        out
    }

    /// Verifies `bytes` against `now_unix` and stores the descriptor if the rules
    /// and limits allow (the per-answer cap aside: see [`Store::insert_answer`]).
    /// Bytes identical to a held descriptor or contender are reported as
    /// [`Rejected::Duplicate`] without verifying the signature again.
    pub fn insert(
        &mut self,
        bytes: &[u8],
        now_unix: u64,
        source: Source,
    ) -> Result<Inserted, Rejected> {
        let result = self.admit(bytes, now_unix, source, None, None);
        self.stats.count(&result);
        result
    }

    /// [`Store::insert`] for a descriptor of `answer`, from its peer, with the
    /// per-answer cap on top.
    pub fn insert_answer(
        &mut self,
        answer: &mut Answer,
        bytes: &[u8],
        now_unix: u64,
    ) -> Result<Inserted, Rejected> {
        let result = self.admit(
            bytes,
            now_unix,
            Source::Peer(answer.peer),
            Some(answer.added),
            None,
        );
        self.stats.count(&result);
        if result.is_ok() {
            answer.added += 1;
        }
        result
    }

    /// Stores a copy of an entry of another store under `source`, with the same
    /// rules and limits as [`Store::insert`] except that the signature, verified
    /// when the entry was made, is not checked again (expiry is).
    pub fn insert_entry(
        &mut self,
        entry: &Entry,
        now_unix: u64,
        source: Source,
    ) -> Result<Inserted, Rejected> {
        let result = self.admit(
            &entry.bytes,
            now_unix,
            source,
            None,
            Some(&entry.descriptor),
        );
        self.stats.count(&result);
        result
    }

    /// Removes the descriptors (held and contenders) that have expired at
    /// `now_unix`; returns how many. A contender whose held rival expired takes its
    /// place.
    pub fn expire(&mut self, now_unix: u64) -> usize {
        let mut removed = 0;
        let mut i = 0;
        while let Some(entry) = self.entries.get(i) {
            if now_unix >= entry.descriptor.expires {
                self.remove_at(i);
                removed += 1;
            } else {
                i += 1;
            }
        }
        let expired: Vec<[u8; 32]> = self
            .contenders
            .iter()
            .filter(|(_, entry)| now_unix >= entry.descriptor.expires)
            .map(|(key, _)| *key)
            .collect();
        for key in &expired {
            if let Some(entry) = self.contenders.remove(key) {
                self.counters.account(&entry, false);
            }
        }
        removed += expired.len();
        let orphans: Vec<[u8; 32]> = self
            .contenders
            .keys()
            .filter(|key| !self.index.contains_key(*key))
            .copied()
            .collect();
        for key in orphans {
            if let Some(entry) = self.contenders.remove(&key) {
                self.index.insert(key, self.entries.len());
                self.entries.push(entry);
            }
        }
        self.stats.expired += removed as u64;
        removed
    }

    /// Up to `n` held descriptors, drawn uniformly at random without replacement,
    /// in random order.
    pub fn sample(&self, rng: &mut (impl RngCore + CryptoRng), n: usize) -> Vec<&[u8]> {
        sample_indices(rng, self.entries.len(), n)
            .into_iter()
            .filter_map(|i| self.entries.get(i).map(|e| e.bytes.as_slice()))
            .collect()
    }

    /// Every held gateway as a path-selection candidate (the first port, the exit
    /// ports parsed from the summary). A gateway whose summary does not parse is not
    /// offered as an exit.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.entries
            .iter()
            .map(|entry| {
                let d = &entry.descriptor;
                let exit_ports = if d.exit {
                    d.policy_summary.parse::<PortSummary>().ok()
                } else {
                    None
                };
                Candidate {
                    key: d.key(),
                    addrs: d.addrs.clone(),
                    port: d.ports.0,
                    exit: exit_ports.is_some(),
                    exit_ports,
                    padding: d.padding,
                }
            })
            .collect()
    }

    /// The checks of [`Store::insert`] without the counting; `verified` is the
    /// decoding of `bytes` when an earlier verification made it.
    fn admit(
        &mut self,
        bytes: &[u8],
        now_unix: u64,
        source: Source,
        answer_added: Option<usize>,
        verified: Option<&Descriptor>,
    ) -> Result<Inserted, Rejected> {
        if bytes.len() > self.limits.max_descriptor_len {
            return Err(Rejected::Invalid(DescriptorError::TooLong(bytes.len())));
        }
        if let Some((copy, contender)) = self.copy_of(bytes) {
            if now_unix >= copy.descriptor.expires {
                return Err(Rejected::Invalid(DescriptorError::Expired));
            }
            let key = copy.descriptor.key();
            if !authoritative(source, &key) {
                return Err(Rejected::Duplicate);
            }
            // The gateway itself confirms one of the claims: settle without verifying
            // the same bytes again.
            if !contender {
                self.settle(&key);
                return Err(Rejected::Duplicate);
            }
            let descriptor = copy.descriptor.clone();
            return self.place(bytes.to_vec(), descriptor, source, answer_added);
        }
        let descriptor = match verified {
            Some(d) if now_unix >= d.expires => {
                return Err(Rejected::Invalid(DescriptorError::Expired))
            }
            Some(d) => d.clone(),
            None => Descriptor::verify(bytes, now_unix).map_err(Rejected::Invalid)?,
        };
        self.place(bytes.to_vec(), descriptor, source, answer_added)
    }

    /// The held entry or contender (and which) whose bytes are exactly `bytes`,
    /// found by the onion key at its offset in the encoding (PROTOCOL §10).
    fn copy_of(&self, bytes: &[u8]) -> Option<(&Entry, bool)> {
        let key: [u8; 32] = bytes.get(34..66)?.try_into().ok()?;
        let same = |entry: &&Entry| entry.bytes == bytes;
        match self.get(&key).filter(same) {
            Some(held) => Some((held, false)),
            None => self.contender(&key).filter(same).map(|c| (c, true)),
        }
    }

    /// The identity, replacement and cap rules for a verified descriptor; stores it
    /// if they allow.
    // `held` is a position from `index`, which insert and remove keep in step with
    // `entries`.
    #[allow(clippy::indexing_slicing)]
    fn place(
        &mut self,
        bytes: Vec<u8>,
        descriptor: Descriptor,
        source: Source,
        answer_added: Option<usize>,
    ) -> Result<Inserted, Rejected> {
        let key = descriptor.key();
        let authentic = authoritative(source, &key);
        if authentic {
            self.settle(&key);
        }
        let held = self.index.get(&key).copied();
        let mut outcome = Inserted::New;
        if let Some(i) = held {
            let old = &self.entries[i];
            if old.descriptor.identity != descriptor.identity {
                if old.source == Source::Own && source != Source::Own {
                    return Err(Rejected::OtherIdentity);
                }
                if !authentic {
                    return self.contend(bytes, descriptor, source, answer_added);
                }
                outcome = Inserted::Reclaimed;
            } else if descriptor.published <= old.descriptor.published {
                return Err(if old.bytes == bytes {
                    Rejected::Duplicate
                } else {
                    Rejected::Stale
                });
            } else {
                outcome = Inserted::Replaced;
            }
        }
        if self
            .counters
            .identities
            .get(&descriptor.identity)
            .is_some_and(|holds| *holds != key)
        {
            return Err(Rejected::IdentityInUse);
        }
        if source != Source::Own {
            self.check_caps(&descriptor, source, held, answer_added)?;
        }
        let entry = Entry {
            bytes,
            descriptor,
            source,
        };
        let i = match held {
            Some(i) => {
                let old = std::mem::replace(&mut self.entries[i], entry);
                self.counters.account(&old, false);
                i
            }
            None => {
                self.index.insert(key, self.entries.len());
                self.entries.push(entry);
                self.entries.len() - 1
            }
        };
        self.counters.account(&self.entries[i], true);
        Ok(outcome)
    }

    /// Drops the contender of `key`: its gateway has spoken for itself.
    fn settle(&mut self, key: &[u8; 32]) {
        if let Some(contender) = self.contenders.remove(key) {
            self.counters.account(&contender, false);
            self.stats.settled += 1;
        }
    }

    /// Keeps a claim on a held key by another identity as the key's contender, if
    /// it has none and the identity rule and caps allow.
    fn contend(
        &mut self,
        bytes: Vec<u8>,
        descriptor: Descriptor,
        source: Source,
        answer_added: Option<usize>,
    ) -> Result<Inserted, Rejected> {
        let key = descriptor.key();
        if self.contenders.contains_key(&key) {
            return Err(Rejected::OtherIdentity);
        }
        if self.counters.identities.contains_key(&descriptor.identity) {
            return Err(Rejected::IdentityInUse);
        }
        self.check_caps(&descriptor, source, None, answer_added)?;
        let entry = Entry {
            bytes,
            descriptor,
            source,
        };
        self.counters.account(&entry, true);
        self.contenders.insert(key, entry);
        Ok(Inserted::Contender)
    }

    /// The limits for a descriptor about to replace entry `held` (if any): the held
    /// entry's own share is not counted against it.
    fn check_caps(
        &self,
        descriptor: &Descriptor,
        source: Source,
        held: Option<usize>,
        answer_added: Option<usize>,
    ) -> Result<(), Rejected> {
        let old = held.and_then(|i| self.entries.get(i));
        if answer_added.is_some_and(|added| added >= self.limits.per_answer) {
            return Err(Rejected::AnswerCap);
        }
        if let Source::Peer(peer) = source {
            let from_peer = self.counters.per_source.get(&peer).copied().unwrap_or(0)
                - usize::from(old.is_some_and(|old| old.source == source));
            if from_peer >= self.limits.per_source {
                return Err(Rejected::SourceCap);
            }
        }
        if old.is_none() && self.entries.len() + self.contenders.len() >= self.limits.max_total {
            return Err(Rejected::TotalCap);
        }
        let old_prefixes = old.map(|old| prefixes(&old.descriptor)).unwrap_or_default();
        for prefix in prefixes(descriptor) {
            let count = self.counters.per_prefix.get(&prefix).copied().unwrap_or(0)
                - usize::from(old_prefixes.contains(&prefix));
            if count >= self.limits.per_prefix {
                return Err(Rejected::PrefixCap);
            }
        }
        Ok(())
    }

    /// Removes entry `i`, keeping the index in step.
    fn remove_at(&mut self, i: usize) {
        let entry = self.entries.swap_remove(i);
        self.index.remove(&entry.descriptor.key());
        if let Some(moved) = self.entries.get(i) {
            self.index.insert(moved.descriptor.key(), i);
        }
        self.counters.account(&entry, false);
    }
}

/// `min(k, n)` distinct indices of `0..n`, uniformly at random, in random order.
pub(super) fn sample_indices(rng: &mut impl RngCore, n: usize, k: usize) -> Vec<usize> {
    let k = k.min(n);
    let mut chosen: Vec<usize> = if k <= usize::from(MAX_GET) {
        // Floyd's algorithm: each k-subset equally likely.
        let mut chosen = Vec::with_capacity(k);
        for j in n - k..n {
            let t = below(rng, j + 1);
            chosen.push(if chosen.contains(&t) { j } else { t });
        }
        chosen
    } else {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k {
            let j = i + below(rng, n - i);
            all.swap(i, j);
        }
        all.truncate(k);
        all
    };
    for i in (1..chosen.len()).rev() {
        let j = below(rng, i + 1);
        chosen.swap(i, j);
    }
    chosen
}
