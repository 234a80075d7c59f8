// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blake2::{Blake2s256, Digest};

use super::crawl_plan::*;
use super::message::*;
use super::server::*;
use super::store::*;
use super::*;
use crate::proto::descriptor::PaddingBudget;
use crate::proto::descriptor::{Descriptor, DescriptorError, MIN_DESCRIPTOR_LEN};
use crate::proto::identity::Identity;
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;

const NOW: u64 = 1_700_000_000;
const PEER: [u8; 32] = [0xee; 32];

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(7)
}

fn identity(seed: u32) -> Identity {
    let mut secret = [0x5a; 32];
    secret[..4].copy_from_slice(&seed.to_be_bytes());
    Identity::from_secret(secret)
}

fn onion(seed: u32) -> [u8; 32] {
    identity(seed).public().0
}

/// An address in a /24 of its own for each seed.
fn addr(seed: u32) -> String {
    format!("11.{}.{}.1", (seed >> 8) & 0xff, seed & 0xff)
}

/// A descriptor of `onion_key` signed by the identity of `signer`.
fn claim(signer: u32, onion_key: [u8; 32], addrs: &[&str], published: u64) -> Vec<u8> {
    let key = identity(signer).signing_key();
    Descriptor {
        identity: key.verifying_key().to_bytes(),
        onion_key,
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        ports: (51820, 51820),
        exit: false,
        policy_summary: String::new(),
        published,
        expires: published + 3600,
        padding: PaddingBudget {
            rate: 1_250_000,
            share: 50,
        },
    }
    .sign(&key)
    .unwrap()
}

/// Gateway `seed`'s own descriptor at `addrs`.
fn at(seed: u32, addrs: &[&str], published: u64) -> Vec<u8> {
    claim(seed, onion(seed), addrs, published)
}

/// Gateway `seed`'s own descriptor in its own /24.
fn gw(seed: u32) -> Vec<u8> {
    at(seed, &[&addr(seed)], NOW)
}

fn limits() -> StoreLimits {
    StoreLimits::default()
}

fn store_of(n: u32) -> Store {
    let mut store = Store::default();
    for seed in 0..n {
        store.insert(&gw(seed), NOW, Source::Bootstrap).unwrap();
    }
    store
}

fn mixed_store() -> Store {
    let mut store = Store::default();
    store.insert(&gw(0), NOW, Source::Own).unwrap();
    store.insert(&gw(1), NOW, Source::Bootstrap).unwrap();
    for seed in 2..6 {
        store
            .insert(&gw(seed), NOW, Source::Peer(onion(1)))
            .unwrap();
    }
    let late = at(6, &[&addr(6)], NOW + 500);
    store.insert(&late, NOW, Source::Peer(PEER)).unwrap();
    store
}

fn get(max: u8) -> Vec<u8> {
    Message::Get { max }.to_vec()
}

/// Answers a query of `crawler` to gateway `key` from `stores[key]`; returns the
/// progress of each payload.
fn exchange(
    crawler: &mut Crawler,
    key: [u8; 32],
    server_store: &Store,
    client: &mut Store,
    rng: &mut ChaCha20Rng,
) -> Vec<Progress> {
    let mut server = Server::new(true, 100);
    let mut out = Vec::new();
    server.handle(
        Instant::now(),
        rng,
        server_store,
        &mut Session::default(),
        &crawler.request(),
        &mut out,
    );
    out.iter()
        .map(|payload| crawler.on_payload(&key, payload, client, NOW))
        .collect()
}

proptest! {
    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1300)) {
        if let Ok(m) = Message::parse(&bytes) {
            prop_assert_eq!(m.to_vec(), bytes);
        }
    }

    #[test]
    fn insert_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..1100),
        now in any::<u64>(),
    ) {
        let mut store = Store::default();
        prop_assert!(store.insert(&bytes, now, Source::Peer(PEER)).is_err());
        prop_assert_eq!(store.stats().rejected(), 1);
    }

    #[test]
    fn decode_cache_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..3000),
        header in any::<bool>(),
    ) {
        let mut bytes = bytes;
        if header {
            let mut with = b"ANONDIR\0\x01".to_vec();
            with.extend_from_slice(&bytes);
            bytes = with;
        }
        let (store, report) = Store::decode_cache(&bytes, NOW, StoreLimits::default());
        prop_assert!(report.corrupt);
        prop_assert_eq!(store.len(), report.loaded);
    }

    #[test]
    fn edited_caches_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let cache = cached();
        let mut bad = cache.clone();
        for (at, value) in edits {
            bad[at.index(cache.len())] = value;
        }
        bad.truncate(cut.index(cache.len() + 1));
        let (store, report) = Store::decode_cache(&bad, NOW, StoreLimits::default());
        prop_assert_eq!(report.corrupt, bad != cache);
        prop_assert!(report.loaded + report.dropped <= 7);
        prop_assert_eq!(store.len(), report.loaded);
    }
}

/// The cache of [`mixed_store`], made once.
fn cached() -> Vec<u8> {
    static CACHE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    CACHE.get_or_init(|| mixed_store().encode_cache()).clone()
}

mod crawl;
mod gateway;
mod message;
mod store;
