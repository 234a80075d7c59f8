//! Peer-to-peer discovery (`docs/PROTOCOL.md` §11): how clients and gateways learn the
//! network without a central directory.
//!
//! Every gateway publishes a self-signed [`Descriptor`] and keeps a [`Store`] of the
//! descriptors it knows. A requester builds a one-hop circuit to a gateway with the
//! DIRECTORY service and sends one [`Message::Get`]; the gateway's [`Server`] answers
//! with a random sample of its store ([`Message::Desc`] each, then [`Message::End`]) or
//! with [`Message::Refused`]. The [`Crawler`] decides whom to ask and feeds the answers
//! into the requester's store. Clients crawl until they know enough gateways; gateways
//! gossip with the same code, asking a few random peers each round
//! ([`Crawler::gossip`]).
//!
//! # Poisoning
//!
//! Any gateway may answer with anything, so the store verifies every descriptor and
//! bounds what one source can add (per answer and in total), what one network can hold
//! (per IPv4 /24 and per IPv6 /48) and the total ([`StoreLimits`]). A descriptor names
//! its gateway by onion key, which anyone can claim (see [`crate::proto::descriptor`]); the
//! store therefore keeps the first identity that claimed an onion key and lets only
//! that identity publish newer versions, and lets one identity hold one onion key.
//! The one exception is a descriptor served by the gateway itself: an answer on a
//! circuit to onion key `K` comes from the holder of `K`'s secret (the NK handshake
//! proves it), so its descriptor for `K` is authentic and replaces another identity's
//! claim. The server puts its own descriptor first in every answer for that reason.
//! A second identity's claim on a held key is kept as the key's contender (one per
//! key, under the same caps), and the crawler asks contested gateways first, at the
//! addresses of both claims: whichever claim is false, the gateway's answer settles
//! the contest, so a forger who claims a key first cannot hide the gateway.
//!
//! Sans-IO: unix seconds (`now_unix`) for descriptor validity and [`Instant`]s for
//! timeouts and rate limits are passed in, randomness comes from the caller's RNG.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use blake2::{Blake2s256, Digest};
use rand_core::{CryptoRng, RngCore};
use thiserror::Error;

use crate::exit::limits::TokenBucket;
use crate::exit::policy::PortSummary;
use crate::proto::crypto::below;
use crate::proto::descriptor::{
    Descriptor, DescriptorError, MAX_DESCRIPTOR_LEN, MIN_DESCRIPTOR_LEN,
};

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
}

/// Most descriptors one [`Message::Get`] may ask for.
pub const MAX_GET: u8 = 64;
/// Longest discovery message: a [`Message::Desc`] of the largest descriptor.
pub const MAX_MESSAGE_LEN: usize = 1 + MAX_DESCRIPTOR_LEN;
/// [`Message::Get`]s a [`Server`] answers on one circuit; later ones are refused.
pub const GETS_PER_CIRCUIT: u8 = 1;
/// Outstanding queries a [`Crawler`] allows unless told otherwise.
pub const DEFAULT_PARALLEL: usize = 3;
/// Peers a gateway asks per gossip round ([`Crawler::gossip`]).
pub const GOSSIP_PEERS: u64 = 3;

const TYPE_GET: u8 = 1;
const TYPE_DESC: u8 = 2;
const TYPE_END: u8 = 3;
const TYPE_REFUSED: u8 = 4;
const TYPE_PUBLISH: u8 = 5;

const _: () = assert!(MAX_MESSAGE_LEN <= crate::proto::wire::MAX_PAYLOAD);

/// Random draws tried when picking a gateway to ask before falling back to a scan.
const DRAWS: usize = 32;

/// Start of a cache file.
const CACHE_MAGIC: &[u8; 8] = b"ANONDIR\0";
/// Cache file format version.
const CACHE_VERSION: u8 = 1;
/// Length of the BLAKE2s-256 checksum that ends a cache file.
const CHECKSUM_LEN: usize = 32;
/// Cache record source tags.
const TAG_OWN: u8 = 0;
const TAG_BOOTSTRAP: u8 = 1;
const TAG_PEER: u8 = 2;

/// One discovery message: the whole payload of one DATA cell on a DIRECTORY circuit.
///
/// ```text
/// Get      01 max         2 bytes, max 1..=64
/// Desc     02 descriptor  159..=1025 bytes: a descriptor of 158..=1024 bytes
/// End      03 sent        2 bytes, sent 0..=64
/// Refused  04             1 byte
/// Publish  05 descriptor  159..=1025 bytes
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message<'a> {
    /// Requester → gateway: send me up to `max` (1 to [`MAX_GET`]) descriptors.
    Get {
        /// How many descriptors the requester wants.
        max: u8,
    },
    /// Gateway → requester: one signed descriptor, as encoded by
    /// [`Descriptor::sign`] (not verified by [`Message::parse`]).
    Desc(&'a [u8]),
    /// Gateway → requester: the answer is complete; `sent` descriptors were sent.
    End {
        /// How many `Desc` messages the answer held (0 to [`MAX_GET`]).
        sent: u8,
    },
    /// Gateway → requester: the gateway does not share its descriptors now.
    Refused,
    /// Gateway → gateway, before a `Get`: the sender's own descriptor, so that a new
    /// gateway becomes known to its bootstrap peers (not verified by
    /// [`Message::parse`]; the receiving store verifies it).
    Publish(&'a [u8]),
}

/// Why a payload is not a discovery message.
#[derive(Debug, Clone, Copy, Error, PartialEq, Eq)]
pub enum MessageError {
    /// An empty payload.
    #[error("empty discovery message")]
    Empty,
    /// A type byte this version does not know.
    #[error("unknown discovery message type {0}")]
    UnknownType(u8),
    /// A length the type does not allow.
    #[error("discovery message of type {kind} has invalid length {len}")]
    Length {
        /// The type byte.
        kind: u8,
        /// The payload length.
        len: usize,
    },
    /// A count outside 1..=64 (`Get`) or 0..=64 (`End`).
    #[error("discovery message count {0} is out of range")]
    Count(u8),
}

impl<'a> Message<'a> {
    /// Parses one payload strictly: known type, exact length, counts in range. A
    /// `Desc` is only checked for its length; the store verifies the descriptor.
    pub fn parse(payload: &'a [u8]) -> Result<Self, MessageError> {
        let (&kind, rest) = payload.split_first().ok_or(MessageError::Empty)?;
        let bad_length = MessageError::Length {
            kind,
            len: payload.len(),
        };
        match kind {
            TYPE_GET => match *rest {
                [max] if (1..=MAX_GET).contains(&max) => Ok(Message::Get { max }),
                [max] => Err(MessageError::Count(max)),
                _ => Err(bad_length),
            },
            TYPE_DESC => {
                if (MIN_DESCRIPTOR_LEN..=MAX_DESCRIPTOR_LEN).contains(&rest.len()) {
                    Ok(Message::Desc(rest))
                } else {
                    Err(bad_length)
                }
            }
            TYPE_END => match *rest {
                [sent] if sent <= MAX_GET => Ok(Message::End { sent }),
                [sent] => Err(MessageError::Count(sent)),
                _ => Err(bad_length),
            },
            TYPE_PUBLISH => {
                if (MIN_DESCRIPTOR_LEN..=MAX_DESCRIPTOR_LEN).contains(&rest.len()) {
                    Ok(Message::Publish(rest))
                } else {
                    Err(bad_length)
                }
            }
            TYPE_REFUSED if rest.is_empty() => Ok(Message::Refused),
            TYPE_REFUSED => Err(bad_length),
            _ => Err(MessageError::UnknownType(kind)),
        }
    }

    /// Appends the encoding to `out`. Fields are written as given: a message that
    /// breaks the rules [`Message::parse`] enforces is rejected by the receiver.
    pub fn emit(&self, out: &mut Vec<u8>) {
        match *self {
            Message::Get { max } => out.extend_from_slice(&[TYPE_GET, max]),
            Message::Desc(descriptor) => {
                out.push(TYPE_DESC);
                out.extend_from_slice(descriptor);
            }
            Message::End { sent } => out.extend_from_slice(&[TYPE_END, sent]),
            Message::Refused => out.push(TYPE_REFUSED),
            Message::Publish(descriptor) => {
                out.push(TYPE_PUBLISH);
                out.extend_from_slice(descriptor);
            }
        }
    }

    /// The encoding as a new payload.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.emit(&mut out);
        out
    }

    /// Length of the encoding.
    pub fn encoded_len(&self) -> usize {
        match self {
            Message::Get { .. } | Message::End { .. } => 2,
            Message::Desc(descriptor) | Message::Publish(descriptor) => 1 + descriptor.len(),
            Message::Refused => 1,
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

/// The names of [`StoreStats::rejected_by_reason`]'s groups, in order.
pub const REJECTION_GROUPS: [&str; 6] = [
    "bad signature",
    "expired",
    "not yet valid",
    "malformed",
    "over a limit or held by another identity",
    "duplicate or stale",
];

/// What a [`Store`] did, by outcome. Every rejection is counted once, under one
/// reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Descriptors of new gateways.
    pub added: u64,
    /// Newer versions replacing held ones.
    pub replaced: u64,
    /// Self-served descriptors replacing another identity's claim.
    pub reclaimed: u64,
    /// Descriptors removed by [`Store::expire`].
    pub expired: u64,
    /// Rejected: longer than the size cap.
    pub too_long: u64,
    /// Rejected: malformed (layout or field rules).
    pub malformed: u64,
    /// Rejected: the signature does not verify.
    pub bad_signature: u64,
    /// Rejected: published too far in the future.
    pub not_yet_valid: u64,
    /// Rejected: already expired on arrival.
    pub arrived_expired: u64,
    /// Claims kept as contenders.
    pub contenders: u64,
    /// Contests settled by the gateway's own descriptor.
    pub settled: u64,
    /// Rejected: already held.
    pub duplicate: u64,
    /// Rejected: not newer than the held version.
    pub stale: u64,
    /// Rejected: another identity holds the onion key and it already has a
    /// contender.
    pub other_identity: u64,
    /// Rejected: the identity holds another onion key.
    pub identity_in_use: u64,
    /// Rejected: store full.
    pub total_cap: u64,
    /// Rejected: per-answer cap.
    pub answer_cap: u64,
    /// Rejected: per-source cap.
    pub source_cap: u64,
    /// Rejected: per-network cap.
    pub prefix_cap: u64,
}

impl StoreStats {
    /// All rejections.
    pub fn rejected(&self) -> u64 {
        self.rejected_by_reason().iter().sum()
    }

    /// The rejections in the groups a crawl reports ([`REJECTION_GROUPS`]).
    #[must_use]
    pub fn rejected_by_reason(&self) -> [u64; 6] {
        [
            self.bad_signature,
            self.arrived_expired,
            self.not_yet_valid,
            self.malformed + self.too_long,
            self.total_cap
                + self.answer_cap
                + self.source_cap
                + self.prefix_cap
                + self.identity_in_use
                + self.other_identity,
            self.duplicate + self.stale,
        ]
    }

    fn count(&mut self, result: &Result<Inserted, Rejected>) {
        let counter = match result {
            Ok(Inserted::New) => &mut self.added,
            Ok(Inserted::Replaced) => &mut self.replaced,
            Ok(Inserted::Reclaimed) => &mut self.reclaimed,
            Ok(Inserted::Contender) => &mut self.contenders,
            Err(Rejected::Invalid(error)) => match error {
                DescriptorError::TooLong(_) => &mut self.too_long,
                DescriptorError::BadSignature => &mut self.bad_signature,
                DescriptorError::NotYetValid => &mut self.not_yet_valid,
                DescriptorError::Expired => &mut self.arrived_expired,
                DescriptorError::Truncated
                | DescriptorError::Version(_)
                | DescriptorError::BadField(_)
                | DescriptorError::IdentityMismatch
                | DescriptorError::LifetimeTooLong
                | DescriptorError::TrailingBytes => &mut self.malformed,
            },
            Err(Rejected::Duplicate) => &mut self.duplicate,
            Err(Rejected::Stale) => &mut self.stale,
            Err(Rejected::OtherIdentity) => &mut self.other_identity,
            Err(Rejected::IdentityInUse) => &mut self.identity_in_use,
            Err(Rejected::TotalCap) => &mut self.total_cap,
            Err(Rejected::AnswerCap) => &mut self.answer_cap,
            Err(Rejected::SourceCap) => &mut self.source_cap,
            Err(Rejected::PrefixCap) => &mut self.prefix_cap,
        };
        *counter += 1;
    }
}

/// A verified descriptor held by a [`Store`]. Entries exist only after
/// verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    bytes: Vec<u8>,
    descriptor: Descriptor,
    source: Source,
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
enum Prefix {
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

/// What [`Store::decode_cache`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheReport {
    /// Descriptors loaded into the store.
    pub loaded: usize,
    /// Records read whose descriptor was invalid, expired or over a cap.
    pub dropped: usize,
    /// The file is not a whole, intact cache: wrong header, checksum mismatch or a
    /// record that does not parse (reading stopped there).
    pub corrupt: bool,
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
    limits: StoreLimits,
    entries: Vec<Entry>,
    /// Onion key → index in `entries`.
    index: HashMap<[u8; 32], usize>,
    /// Onion key of a held entry → another identity's claim on it.
    contenders: BTreeMap<[u8; 32], Entry>,
    counters: Counters,
    stats: StoreStats,
}

/// What the caps and the identity rule count, kept in step with a store's entries.
#[derive(Debug, Clone, Default)]
struct Counters {
    /// Identity → the onion key it holds.
    identities: HashMap<[u8; 32], [u8; 32]>,
    /// Peer → descriptors held from it.
    per_source: HashMap<[u8; 32], usize>,
    /// Network → descriptors held with an address in it.
    per_prefix: HashMap<Prefix, usize>,
}

impl Counters {
    /// Adds or removes an entry's share.
    fn account(&mut self, entry: &Entry, add: bool) {
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
        self.index.get(key).map(|&i| &self.entries[i])
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
        while i < self.entries.len() {
            if now_unix >= self.entries[i].descriptor.expires {
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
            .map(|i| self.entries[i].bytes.as_slice())
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
                }
            })
            .collect()
    }

    /// The cache file form: the magic `ANONDIR\0`, version 1, one record per held
    /// descriptor (`source` 0 own, 1 bootstrap or 2 peer followed by the peer's
    /// 32-byte onion key; a 2-byte length; the descriptor), and a BLAKE2s-256 of
    /// everything before it. Contenders are not kept.
    pub fn encode_cache(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(CACHE_MAGIC.len() + 1 + CHECKSUM_LEN + self.entries.len() * 260);
        out.extend_from_slice(CACHE_MAGIC);
        out.push(CACHE_VERSION);
        for entry in &self.entries {
            match entry.source {
                Source::Own => out.push(TAG_OWN),
                Source::Bootstrap => out.push(TAG_BOOTSTRAP),
                Source::Peer(peer) => {
                    out.push(TAG_PEER);
                    out.extend_from_slice(&peer);
                }
            }
            let len = u16::try_from(entry.bytes.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&entry.bytes);
        }
        let checksum = Blake2s256::digest(&out);
        out.extend_from_slice(&checksum);
        out
    }

    /// Reads a cache file into a new store with `limits`, re-verifying every
    /// descriptor against `now_unix` and applying the limits. Never fails: invalid,
    /// expired or over-cap descriptors are dropped and counted; a damaged file yields
    /// the records read before the damage and `corrupt`.
    pub fn decode_cache(bytes: &[u8], now_unix: u64, limits: StoreLimits) -> (Store, CacheReport) {
        let mut store = Store::new(limits);
        let mut report = CacheReport::default();
        let header = CACHE_MAGIC.len() + 1;
        if bytes.len() < header + CHECKSUM_LEN
            || bytes[..CACHE_MAGIC.len()] != CACHE_MAGIC[..]
            || bytes[CACHE_MAGIC.len()] != CACHE_VERSION
        {
            report.corrupt = true;
            return (store, report);
        }
        let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if Blake2s256::digest(body)[..] != checksum[..] {
            report.corrupt = true;
        }
        let mut rest = &body[header..];
        while !rest.is_empty() {
            let Some((source, descriptor, after)) = read_record(rest) else {
                report.corrupt = true;
                break;
            };
            rest = after;
            match store.insert(descriptor, now_unix, source) {
                Ok(_) => report.loaded += 1,
                Err(_) => report.dropped += 1,
            }
        }
        (store, report)
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
        let old = held.map(|i| &self.entries[i]);
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

/// One cache record: its source, its descriptor bytes and what follows.
fn read_record(bytes: &[u8]) -> Option<(Source, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (source, rest) = match tag {
        TAG_OWN => (Source::Own, rest),
        TAG_BOOTSTRAP => (Source::Bootstrap, rest),
        TAG_PEER => {
            let (peer, rest) = split(rest, 32)?;
            (Source::Peer(peer.try_into().ok()?), rest)
        }
        _ => return None,
    };
    let (len, rest) = split(rest, 2)?;
    let len = usize::from(u16::from_be_bytes(len.try_into().ok()?));
    if len > MAX_DESCRIPTOR_LEN {
        return None;
    }
    let (descriptor, rest) = split(rest, len)?;
    Some((source, descriptor, rest))
}

/// `bytes` split after `n` bytes, if it has that many.
fn split(bytes: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (bytes.len() >= n).then(|| bytes.split_at(n))
}

/// `min(k, n)` distinct indices of `0..n`, uniformly at random, in random order.
fn sample_indices(rng: &mut impl RngCore, n: usize, k: usize) -> Vec<usize> {
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
    /// the response payloads (each at most [`MAX_MESSAGE_LEN`] bytes) onto `out`.
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
            if store.entries[i].source != Source::Own {
                picked.push(i);
            }
        }
        for &i in &picked {
            out.push(Message::Desc(&store.entries[i].bytes).to_vec());
        }
        let sent = u8::try_from(picked.len()).unwrap_or(MAX_GET);
        out.push(Message::End { sent }.to_vec());
        self.stats.answered += 1;
        self.stats.descriptors_sent += u64::from(sent);
        Reply::Answered { sent }
    }
}

/// What a [`Crawler`] did, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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
            return Some(contested[below(rng, contested.len())]);
        }
        if self.bootstrap_first {
            let bootstrap: Vec<[u8; 32]> = store
                .entries
                .iter()
                .filter(|e| e.source == Source::Bootstrap && self.askable(e))
                .map(|e| e.descriptor.key())
                .collect();
            if !bootstrap.is_empty() {
                return Some(bootstrap[below(rng, bootstrap.len())]);
            }
            self.bootstrap_first = false;
        }
        let n = store.entries.len();
        if n == 0 {
            return None;
        }
        let drawn = (0..DRAWS)
            .map(|_| &store.entries[below(rng, n)])
            .find(|e| self.askable(e));
        let entry = match drawn {
            Some(entry) => entry,
            None => {
                let left: Vec<&Entry> = store.entries.iter().filter(|e| self.askable(e)).collect();
                if left.is_empty() {
                    return None;
                }
                left[below(rng, left.len())]
            }
        };
        Some(entry.descriptor.key())
    }
}

#[cfg(test)]
mod tests;
