//! The descriptor cache file: a node's store kept across restarts.

use blake2::{Blake2s256, Digest};

use super::{Source, Store, StoreLimits};
use crate::proto::descriptor::MAX_DESCRIPTOR_LEN;

/// Start of a cache file.
const CACHE_MAGIC: &[u8; 8] = b"ANONDIR\0";
/// Cache file format version.
const CACHE_VERSION: u8 = 1;
/// Length of the BLAKE2s-256 checksum that ends a cache file.
pub const CHECKSUM_LEN: usize = 32;
/// Cache record source tags.
const TAG_OWN: u8 = 0;
const TAG_BOOTSTRAP: u8 = 1;
const TAG_PEER: u8 = 2;

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

impl Store {
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
        let parts = bytes
            .split_last_chunk::<CHECKSUM_LEN>()
            .and_then(|(body, checksum)| Some((body, body.get(header..)?, checksum)));
        let Some((body, mut rest, checksum)) = parts.filter(|(body, _, _)| {
            body.strip_prefix(&CACHE_MAGIC[..])
                .and_then(<[u8]>::first)
                .is_some_and(|&v| v == CACHE_VERSION)
        }) else {
            report.corrupt = true;
            return (store, report);
        };
        if Blake2s256::digest(body)[..] != checksum[..] {
            report.corrupt = true;
        }
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
