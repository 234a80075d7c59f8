// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blake2::{Blake2s256, Digest};

use super::crawler::*;
use super::message::*;
use super::server::*;
use super::store::*;
use super::*;
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

#[test]
fn message_vectors() {
    assert_eq!(Message::Get { max: 64 }.to_vec(), [0x01, 0x40]);
    assert_eq!(Message::End { sent: 3 }.to_vec(), [0x03, 0x03]);
    assert_eq!(Message::Refused.to_vec(), [0x04]);
    let d = gw(1);
    let desc = Message::Desc(&d).to_vec();
    assert_eq!(desc[0], 0x02);
    assert_eq!(&desc[1..], &d[..]);
    assert_eq!(desc.len(), Message::Desc(&d).encoded_len());

    assert_eq!(Message::parse(&[0x01, 0x01]), Ok(Message::Get { max: 1 }));
    assert_eq!(Message::parse(&[0x01, 0x40]), Ok(Message::Get { max: 64 }));
    assert_eq!(Message::parse(&[0x03, 0x00]), Ok(Message::End { sent: 0 }));
    assert_eq!(Message::parse(&[0x03, 0x40]), Ok(Message::End { sent: 64 }));
    assert_eq!(Message::parse(&[0x04]), Ok(Message::Refused));
    assert_eq!(Message::parse(&desc), Ok(Message::Desc(&d)));
    for m in [
        Message::Get { max: 9 },
        Message::Desc(&d),
        Message::End { sent: 9 },
        Message::Refused,
        Message::Publish(&d),
    ] {
        assert_eq!(Message::parse(&m.to_vec()), Ok(m));
    }
    let publish = Message::Publish(&d).to_vec();
    assert_eq!(publish[0], 0x05);
    assert_eq!(&publish[1..], &d[..]);
}

#[test]
fn message_errors() {
    let length = |kind, len| Err(MessageError::Length { kind, len });
    assert_eq!(Message::parse(&[]), Err(MessageError::Empty));
    for kind in [0x00, 0x06, 0x12, 0xff] {
        assert_eq!(
            Message::parse(&[kind, 1]),
            Err(MessageError::UnknownType(kind))
        );
    }
    assert_eq!(Message::parse(&[0x01]), length(1, 1));
    assert_eq!(Message::parse(&[0x01, 0x01, 0x00]), length(1, 3));
    assert_eq!(Message::parse(&[0x01, 0x00]), Err(MessageError::Count(0)));
    assert_eq!(Message::parse(&[0x01, 0x41]), Err(MessageError::Count(65)));
    assert_eq!(Message::parse(&[0x03]), length(3, 1));
    assert_eq!(Message::parse(&[0x03, 0x00, 0x00]), length(3, 3));
    assert_eq!(Message::parse(&[0x03, 0x41]), Err(MessageError::Count(65)));
    assert_eq!(Message::parse(&[0x04, 0x00]), length(4, 2));
    let mut desc = vec![0x02; 1 + MIN_DESCRIPTOR_LEN];
    assert!(Message::parse(&desc).is_ok());
    desc.pop();
    assert_eq!(Message::parse(&desc), length(2, MIN_DESCRIPTOR_LEN));
    assert_eq!(Message::parse(&[0x02]), length(2, 1));
    assert_eq!(Message::parse(&[0x05]), length(5, 1));
    let mut desc = vec![0x02; MAX_MESSAGE_LEN];
    assert!(Message::parse(&desc).is_ok());
    desc.push(0);
    assert_eq!(Message::parse(&desc), length(2, MAX_MESSAGE_LEN + 1));
}

#[test]
fn insert_get_and_duplicate() {
    let mut store = Store::default();
    assert!(store.is_empty());
    let d = gw(1);
    assert_eq!(store.insert(&d, NOW, Source::Bootstrap), Ok(Inserted::New));
    assert_eq!(store.len(), 1);
    let entry = store.get(&onion(1)).unwrap();
    assert_eq!(entry.bytes(), &d[..]);
    assert_eq!(entry.source(), Source::Bootstrap);
    assert_eq!(entry.descriptor().key(), onion(1));
    assert_eq!(
        store.insert(&d, NOW, Source::Peer(PEER)),
        Err(Rejected::Duplicate)
    );
    // A held copy that has since expired is reported as expired.
    assert_eq!(
        store.insert(&d, NOW + 3600, Source::Bootstrap),
        Err(Rejected::Invalid(DescriptorError::Expired))
    );
    assert!(store.get(&onion(2)).is_none());
    let stats = store.stats();
    assert_eq!(
        (stats.added, stats.duplicate, stats.arrived_expired),
        (1, 1, 1)
    );
    assert_eq!(stats.rejected(), 2);
    // The duplicate kept its original source.
    assert_eq!(store.get(&onion(1)).unwrap().source(), Source::Bootstrap);
}

#[test]
fn invalid_descriptors_are_counted_by_reason() {
    let mut store = Store::new(StoreLimits {
        max_descriptor_len: MIN_DESCRIPTOR_LEN,
        ..limits()
    });
    let mut bad_sig = gw(1);
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 1;
    let reject = |store: &mut Store, bytes: &[u8], now| store.insert(bytes, now, Source::Bootstrap);
    assert_eq!(
        reject(&mut store, &bad_sig, NOW),
        Err(Rejected::Invalid(DescriptorError::BadSignature))
    );
    assert_eq!(
        reject(&mut store, &gw(2), NOW + 3600),
        Err(Rejected::Invalid(DescriptorError::Expired))
    );
    assert_eq!(
        reject(&mut store, &gw(3), NOW - MAX_CLOCK_SKEW - 1),
        Err(Rejected::Invalid(DescriptorError::NotYetValid))
    );
    let d = gw(4);
    assert_eq!(
        reject(&mut store, &d[..100], NOW),
        Err(Rejected::Invalid(DescriptorError::Truncated))
    );
    let mut version = d.clone();
    version[0] = 2;
    assert_eq!(
        reject(&mut store, &version, NOW),
        Err(Rejected::Invalid(DescriptorError::Version(2)))
    );
    let two = at(5, &[&addr(5), "2001:db8::5"], NOW);
    assert_eq!(
        reject(&mut store, &two, NOW),
        Err(Rejected::Invalid(DescriptorError::TooLong(two.len())))
    );
    assert_eq!(
        reject(&mut store, &[0u8; 5000], NOW),
        Err(Rejected::Invalid(DescriptorError::TooLong(5000)))
    );
    let stats = store.stats();
    assert_eq!(stats.bad_signature, 1);
    assert_eq!(stats.arrived_expired, 1);
    assert_eq!(stats.not_yet_valid, 1);
    assert_eq!(stats.malformed, 2);
    assert_eq!(stats.too_long, 2);
    assert_eq!(stats.rejected(), 7);
    assert!(store.is_empty());
}

const MAX_CLOCK_SKEW: u64 = crate::proto::descriptor::MAX_CLOCK_SKEW_SECS;

#[test]
fn newer_same_identity_replaces() {
    let mut store = Store::default();
    let old = at(1, &["11.0.1.1"], NOW - 100);
    let new = at(1, &["11.0.1.2"], NOW - 50);
    let same_time = at(1, &["11.0.1.3"], NOW - 50);
    assert_eq!(
        store.insert(&old, NOW, Source::Bootstrap),
        Ok(Inserted::New)
    );
    assert_eq!(
        store.insert(&new, NOW, Source::Peer(PEER)),
        Ok(Inserted::Replaced)
    );
    assert_eq!(store.get(&onion(1)).unwrap().bytes(), &new[..]);
    assert_eq!(store.get(&onion(1)).unwrap().source(), Source::Peer(PEER));
    assert_eq!(
        store.insert(&old, NOW, Source::Bootstrap),
        Err(Rejected::Stale)
    );
    assert_eq!(
        store.insert(&same_time, NOW, Source::Bootstrap),
        Err(Rejected::Stale)
    );
    assert_eq!(store.len(), 1);
    assert_eq!(store.stats().replaced, 1);
    assert_eq!(store.stats().stale, 2);
}

#[test]
fn another_identity_never_replaces() {
    let mut store = Store::default();
    let honest = gw(1);
    // Identities 9 and 8 claim gateway 1's onion key, newer.
    let squat = claim(9, onion(1), &["11.9.9.9"], NOW + 10);
    let other = claim(8, onion(1), &["11.9.9.8"], NOW + 10);
    assert_eq!(
        store.insert(&honest, NOW, Source::Bootstrap),
        Ok(Inserted::New)
    );
    // The first claim waits as the contender...
    assert_eq!(
        store.insert(&squat, NOW, Source::Peer(onion(9))),
        Ok(Inserted::Contender)
    );
    assert_eq!(store.get(&onion(1)).unwrap().bytes(), &honest[..]);
    assert_eq!(store.contender(&onion(1)).unwrap().bytes(), &squat[..]);
    assert_eq!(store.contested().collect::<Vec<_>>(), vec![&onion(1)]);
    assert_eq!(store.len(), 1);
    // ...one per key.
    assert_eq!(
        store.insert(&other, NOW, Source::Peer(PEER)),
        Err(Rejected::OtherIdentity)
    );
    assert_eq!(
        store.insert(&squat, NOW, Source::Bootstrap),
        Err(Rejected::Duplicate)
    );
    let addresses: Vec<SocketAddr> = vec![
        "11.0.1.1:51820".parse().unwrap(),
        "11.9.9.9:51820".parse().unwrap(),
    ];
    assert_eq!(store.addresses(&onion(1)), addresses);
    assert!(store.addresses(&onion(2)).is_empty());
    // The gateway itself settles the contest for the held descriptor.
    assert_eq!(
        store.insert(&honest, NOW, Source::Peer(onion(1))),
        Err(Rejected::Duplicate)
    );
    assert!(store.contender(&onion(1)).is_none());
    assert_eq!(store.counters.identities.len(), 1);
    assert_eq!(store.counters.per_prefix.len(), 1);
    let stats = *store.stats();
    assert_eq!((stats.contenders, stats.settled), (1, 1));
    assert_eq!((stats.other_identity, stats.duplicate), (1, 2));

    // The other order: the forger came first and keeps the key against third
    // parties, the honest claim waiting...
    let mut store = Store::default();
    assert_eq!(
        store.insert(&squat, NOW, Source::Peer(PEER)),
        Ok(Inserted::New)
    );
    assert_eq!(
        store.insert(&honest, NOW, Source::Peer([1; 32])),
        Ok(Inserted::Contender)
    );
    // ...until the gateway itself, whose circuit proves its onion key, sends it.
    assert_eq!(
        store.insert(&honest, NOW, Source::Peer(onion(1))),
        Ok(Inserted::Reclaimed)
    );
    assert_eq!(store.get(&onion(1)).unwrap().bytes(), &honest[..]);
    assert_eq!(
        store.get(&onion(1)).unwrap().source(),
        Source::Peer(onion(1))
    );
    assert!(store.contender(&onion(1)).is_none());
    assert_eq!((store.stats().reclaimed, store.stats().settled), (1, 1));
    // The forger's identity and network are released.
    assert_eq!(
        store.insert(&gw(9), NOW, Source::Peer(PEER)),
        Ok(Inserted::New)
    );
    assert_eq!(store.counters.per_source.get(&PEER), Some(&1));
    assert_eq!(store.counters.per_prefix.len(), 2);
    // Identity 9 holds its own key now.
    assert_eq!(
        store.insert(
            &claim(9, onion(20), &["11.9.9.9"], NOW + 20),
            NOW,
            Source::Peer(PEER)
        ),
        Err(Rejected::IdentityInUse)
    );
    // A contender's identity is taken too.
    assert_eq!(
        store.insert(&other, NOW, Source::Peer(PEER)),
        Ok(Inserted::Contender)
    );
    assert_eq!(
        store.insert(
            &claim(8, onion(21), &["11.9.9.8"], NOW),
            NOW,
            Source::Peer(PEER)
        ),
        Err(Rejected::IdentityInUse)
    );
}

#[test]
fn contenders_count_against_caps_and_expire() {
    let mut store = Store::new(StoreLimits {
        max_total: 3,
        ..limits()
    });
    store.insert(&gw(1), NOW, Source::Bootstrap).unwrap();
    store.insert(&gw(2), NOW, Source::Bootstrap).unwrap();
    // Contenders take room in the store and in their network.
    let c1 = claim(7, onion(1), &["203.0.113.7"], NOW - 1000);
    assert_eq!(
        store.insert(&c1, NOW, Source::Bootstrap),
        Ok(Inserted::Contender)
    );
    assert_eq!(
        store.insert(&gw(3), NOW, Source::Bootstrap),
        Err(Rejected::TotalCap)
    );
    let mut narrow = Store::new(StoreLimits {
        per_prefix: 1,
        ..limits()
    });
    narrow.insert(&gw(1), NOW, Source::Bootstrap).unwrap();
    narrow
        .insert(&at(2, &["203.0.113.2"], NOW), NOW, Source::Bootstrap)
        .unwrap();
    assert_eq!(
        narrow.insert(&c1, NOW, Source::Bootstrap),
        Err(Rejected::PrefixCap)
    );
    // A contender past its expiry goes; one whose held rival expires takes its
    // place.
    assert_eq!(store.expire(NOW + 2600), 1);
    assert!(store.contender(&onion(1)).is_none());
    assert_eq!(store.len(), 2);
    let c2 = claim(8, onion(2), &["203.0.113.8"], NOW + 1000);
    assert_eq!(
        store.insert(&c2, NOW + 2600, Source::Bootstrap),
        Ok(Inserted::Contender)
    );
    assert_eq!(store.expire(NOW + 3600), 2);
    assert_eq!(store.len(), 1);
    assert_eq!(store.get(&onion(2)).unwrap().bytes(), &c2[..]);
    assert_eq!(store.contested().count(), 0);
    assert_eq!(store.counters.identities.len(), 1);
    assert_eq!(store.stats().expired, 3);
    // Contenders are not cached.
    let mut cached = Store::default();
    cached.insert(&gw(1), NOW, Source::Bootstrap).unwrap();
    cached.insert(&c1, NOW, Source::Bootstrap).unwrap();
    let (loaded, report) = Store::decode_cache(&cached.encode_cache(), NOW, limits());
    assert_eq!((report.loaded, loaded.contested().count()), (1, 0));
}

#[test]
fn crawler_asks_contested_gateways_first() {
    let mut rng = rng();
    let now = Instant::now();
    let mut client = store_of(20);
    let squat = claim(90, onion(5), &["203.0.113.90"], NOW + 10);
    assert_eq!(
        client.insert(&squat, NOW, Source::Peer(PEER)),
        Ok(Inserted::Contender)
    );
    let mut crawler = Crawler::new(usize::MAX, 64, Duration::from_secs(5));
    assert_eq!(crawler.next_query(now, &mut rng, &client), Some(onion(5)));
    let mut gateway = Store::default();
    gateway.insert(&gw(5), NOW, Source::Own).unwrap();
    let progress = exchange(&mut crawler, onion(5), &gateway, &mut client, &mut rng);
    assert_eq!(progress[0], Progress::Descriptor(Err(Rejected::Duplicate)));
    assert_eq!(client.contested().count(), 0);
    // A gateway asked before it was contested is asked once more; an answer
    // that does not settle the contest does not bring it back again.
    let asked = crawler.next_query(now, &mut rng, &client).unwrap();
    let held = client.get(&asked).unwrap().descriptor().identity;
    assert_ne!(held, identity(91).signing_key().verifying_key().to_bytes());
    let contest = claim(91, asked, &["203.0.113.91"], NOW + 10);
    assert_eq!(
        client.insert(&contest, NOW, Source::Peer(PEER)),
        Ok(Inserted::Contender)
    );
    assert!(crawler.on_failed(&asked));
    assert_eq!(crawler.next_query(now, &mut rng, &client), Some(asked));
    assert!(crawler.on_failed(&asked));
    assert_ne!(crawler.next_query(now, &mut rng, &client), Some(asked));
    assert_eq!(client.contested().count(), 1);
}

#[test]
fn own_descriptor_is_never_reclaimed_by_a_peer() {
    let mut store = Store::default();
    let mine = gw(1);
    assert_eq!(store.insert(&mine, NOW, Source::Own), Ok(Inserted::New));
    let squat = claim(9, onion(1), &["11.9.9.9"], NOW + 10);
    assert_eq!(
        store.insert(&squat, NOW, Source::Peer(onion(1))),
        Err(Rejected::OtherIdentity)
    );
    // A newer own descriptor replaces the old one.
    let newer = at(1, &[&addr(1)], NOW + 5);
    assert_eq!(
        store.insert(&newer, NOW, Source::Own),
        Ok(Inserted::Replaced)
    );
}

#[test]
fn one_onion_key_per_identity() {
    let mut store = Store::default();
    assert_eq!(
        store.insert(&gw(1), NOW, Source::Bootstrap),
        Ok(Inserted::New)
    );
    let second = claim(1, onion(2), &[&addr(2)], NOW);
    assert_eq!(
        store.insert(&second, NOW, Source::Bootstrap),
        Err(Rejected::IdentityInUse)
    );
    assert_eq!(store.stats().identity_in_use, 1);
    // Once the first descriptor is gone, the identity may hold another key.
    assert_eq!(store.expire(NOW + 3600), 1);
    assert_eq!(
        store.insert(
            &claim(1, onion(2), &[&addr(2)], NOW + 10),
            NOW + 20,
            Source::Bootstrap
        ),
        Ok(Inserted::New)
    );
}

#[test]
fn total_cap() {
    let mut store = Store::new(StoreLimits {
        max_total: 3,
        ..limits()
    });
    for seed in 1..=3 {
        assert_eq!(
            store.insert(&gw(seed), NOW, Source::Bootstrap),
            Ok(Inserted::New)
        );
    }
    assert_eq!(
        store.insert(&gw(4), NOW, Source::Peer(PEER)),
        Err(Rejected::TotalCap)
    );
    // A replacement needs no room; own descriptors are always admitted.
    let newer = at(2, &[&addr(2)], NOW + 1);
    assert_eq!(
        store.insert(&newer, NOW, Source::Peer(PEER)),
        Ok(Inserted::Replaced)
    );
    assert_eq!(store.insert(&gw(5), NOW, Source::Own), Ok(Inserted::New));
    assert_eq!(store.len(), 4);
    assert_eq!(store.stats().total_cap, 1);
}

#[test]
fn answer_cap() {
    let mut store = Store::new(StoreLimits {
        per_answer: 2,
        ..limits()
    });
    let mut answer = Answer::new(PEER);
    assert_eq!(answer.peer(), PEER);
    assert_eq!(
        store.insert_answer(&mut answer, &gw(1), NOW),
        Ok(Inserted::New)
    );
    // Rejections do not use up the answer's share.
    assert_eq!(
        store.insert_answer(&mut answer, &gw(1), NOW),
        Err(Rejected::Duplicate)
    );
    assert_eq!(
        store.insert_answer(&mut answer, &gw(2), NOW),
        Ok(Inserted::New)
    );
    assert_eq!(answer.added(), 2);
    assert_eq!(
        store.insert_answer(&mut answer, &gw(3), NOW),
        Err(Rejected::AnswerCap)
    );
    // The next answer of the same peer has its own share.
    let mut next = Answer::new(PEER);
    assert_eq!(
        store.insert_answer(&mut next, &gw(3), NOW),
        Ok(Inserted::New)
    );
    assert_eq!(store.get(&onion(3)).unwrap().source(), Source::Peer(PEER));
    assert_eq!(store.stats().answer_cap, 1);
}

#[test]
fn source_cap() {
    let mut store = Store::new(StoreLimits {
        per_source: 3,
        ..limits()
    });
    for seed in 1..=3 {
        assert_eq!(
            store.insert(&gw(seed), NOW, Source::Peer(PEER)),
            Ok(Inserted::New)
        );
    }
    assert_eq!(
        store.insert(&gw(4), NOW, Source::Peer(PEER)),
        Err(Rejected::SourceCap)
    );
    // A peer at its cap may still update what it supplied.
    let newer = at(1, &[&addr(1)], NOW + 1);
    assert_eq!(
        store.insert(&newer, NOW, Source::Peer(PEER)),
        Ok(Inserted::Replaced)
    );
    // Other sources are unaffected.
    assert_eq!(
        store.insert(&gw(4), NOW, Source::Peer([1; 32])),
        Ok(Inserted::New)
    );
    assert_eq!(
        store.insert(&gw(5), NOW, Source::Bootstrap),
        Ok(Inserted::New)
    );
    // Moving a descriptor to another source frees a place.
    let newer = at(2, &[&addr(2)], NOW + 1);
    assert_eq!(
        store.insert(&newer, NOW, Source::Bootstrap),
        Ok(Inserted::Replaced)
    );
    assert_eq!(
        store.insert(&gw(6), NOW, Source::Peer(PEER)),
        Ok(Inserted::New)
    );
    assert_eq!(store.stats().source_cap, 1);
    // Expiry frees the share too.
    assert_eq!(store.expire(NOW + 3601), 6);
    assert!(store.counters.per_source.is_empty());
}

#[test]
fn prefix_cap_v4() {
    let mut store = Store::default();
    for seed in 1..=4 {
        let a = format!("198.51.100.{seed}");
        assert_eq!(
            store.insert(&at(seed, &[&a], NOW), NOW, Source::Peer(PEER)),
            Ok(Inserted::New)
        );
    }
    let fifth = at(5, &["198.51.100.200"], NOW);
    assert_eq!(
        store.insert(&fifth, NOW, Source::Peer(PEER)),
        Err(Rejected::PrefixCap)
    );
    // Any address in a full network is enough to reject.
    let mixed = at(5, &["198.51.101.1", "198.51.100.201"], NOW);
    assert_eq!(
        store.insert(&mixed, NOW, Source::Bootstrap),
        Err(Rejected::PrefixCap)
    );
    // The neighbouring /24 is another network.
    assert_eq!(
        store.insert(&at(5, &["198.51.101.1"], NOW), NOW, Source::Peer(PEER)),
        Ok(Inserted::New)
    );
    // A held descriptor may move within its full network, not into another one.
    let moved = at(1, &["198.51.100.99"], NOW + 1);
    assert_eq!(
        store.insert(&moved, NOW, Source::Peer(PEER)),
        Ok(Inserted::Replaced)
    );
    for seed in 6..=8 {
        let a = format!("198.51.101.{seed}");
        assert_eq!(
            store.insert(&at(seed, &[&a], NOW), NOW, Source::Peer(PEER)),
            Ok(Inserted::New)
        );
    }
    let into_full = at(2, &["198.51.101.50"], NOW + 1);
    assert_eq!(
        store.insert(&into_full, NOW, Source::Peer(PEER)),
        Err(Rejected::PrefixCap)
    );
    // Own descriptors are exempt.
    assert_eq!(
        store.insert(&at(9, &["198.51.100.9"], NOW), NOW, Source::Own),
        Ok(Inserted::New)
    );
    assert_eq!(store.stats().prefix_cap, 3);
}

#[test]
fn prefix_cap_v6_and_multi_address() {
    let mut store = Store::default();
    // Two addresses in one /24 count once.
    let double = at(1, &["203.0.113.1", "203.0.113.2"], NOW);
    assert_eq!(
        store.insert(&double, NOW, Source::Bootstrap),
        Ok(Inserted::New)
    );
    for seed in 2..=4 {
        let a = format!("203.0.113.{}", 10 + seed);
        assert_eq!(
            store.insert(&at(seed, &[&a], NOW), NOW, Source::Bootstrap),
            Ok(Inserted::New)
        );
    }
    assert_eq!(
        store.insert(&at(5, &["203.0.113.99"], NOW), NOW, Source::Bootstrap),
        Err(Rejected::PrefixCap)
    );
    for seed in 10..=13 {
        let a = format!("2001:db8:1:{seed:x}::1");
        assert_eq!(
            store.insert(&at(seed, &[&a], NOW), NOW, Source::Bootstrap),
            Ok(Inserted::New)
        );
    }
    assert_eq!(
        store.insert(
            &at(14, &["2001:db8:1:ffff::1"], NOW),
            NOW,
            Source::Bootstrap
        ),
        Err(Rejected::PrefixCap)
    );
    assert_eq!(
        store.insert(&at(14, &["2001:db8:2::1"], NOW), NOW, Source::Bootstrap),
        Ok(Inserted::New)
    );
}

#[test]
fn expire_keeps_the_index() {
    let mut store = Store::default();
    for seed in 0..20 {
        let published = NOW - 3000 + u64::from(seed) * 100;
        assert_eq!(
            store.insert(&at(seed, &[&addr(seed)], published), NOW, Source::Bootstrap),
            Ok(Inserted::New)
        );
    }
    // Gateway `seed` expires at NOW + 600 + seed * 100.
    assert_eq!(store.expire(NOW), 0);
    assert_eq!(store.expire(NOW + 1_000), 5);
    assert_eq!(store.len(), 15);
    for seed in 0..20 {
        assert_eq!(store.get(&onion(seed)).is_some(), seed >= 5, "{seed}");
    }
    for (i, entry) in store.entries.iter().enumerate() {
        assert_eq!(store.index[&entry.descriptor.key()], i);
    }
    assert_eq!(store.stats().expired, 5);
    assert_eq!(store.expire(u64::MAX), 15);
    assert!(store.is_empty());
    assert!(store.index.is_empty());
    assert!(store.counters.identities.is_empty());
    assert!(store.counters.per_prefix.is_empty());
}

fn store_of(n: u32) -> Store {
    let mut store = Store::default();
    for seed in 0..n {
        store.insert(&gw(seed), NOW, Source::Bootstrap).unwrap();
    }
    store
}

#[test]
fn sample_bounds_and_uniformity() {
    let mut rng = rng();
    assert!(Store::default().sample(&mut rng, 5).is_empty());
    let store = store_of(10);
    assert!(store.sample(&mut rng, 0).is_empty());
    let all = store.sample(&mut rng, 100);
    assert_eq!(all.len(), 10);
    let distinct: HashSet<&[u8]> = all.iter().copied().collect();
    assert_eq!(distinct.len(), 10);
    // Each of 10 descriptors is drawn by a 3-sample with probability 3/10.
    let mut hits: HashMap<&[u8], u32> = HashMap::new();
    for _ in 0..10_000 {
        let s = store.sample(&mut rng, 3);
        assert_eq!(s.len(), 3);
        assert_eq!(s.iter().collect::<HashSet<_>>().len(), 3);
        for bytes in s {
            *hits.entry(bytes).or_default() += 1;
        }
    }
    assert_eq!(hits.len(), 10);
    for count in hits.values() {
        assert!((2_800..=3_200).contains(count), "{count}");
    }
    // Large samples take the other algorithm.
    let indices = sample_indices(&mut rng, 1_000, 500);
    assert_eq!(indices.iter().collect::<HashSet<_>>().len(), 500);
    assert!(indices.iter().all(|&i| i < 1_000));
}

#[test]
fn candidates_from_descriptors() {
    let key = identity(1).signing_key();
    let exit = Descriptor {
        identity: key.verifying_key().to_bytes(),
        onion_key: onion(1),
        addrs: vec!["11.0.1.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
        ports: (443, 450),
        exit: true,
        policy_summary: "accept 80,443".into(),
        published: NOW,
        expires: NOW + 3600,
    };
    let mut store = Store::default();
    store
        .insert(&exit.sign(&key).unwrap(), NOW, Source::Bootstrap)
        .unwrap();
    store.insert(&gw(2), NOW, Source::Bootstrap).unwrap();
    // A summary that does not parse (made here without the store's checks).
    let mut odd = store.entries[1].clone();
    odd.descriptor.exit = true;
    odd.descriptor.policy_summary = "allow all".into();
    odd.descriptor.onion_key = onion(3);
    odd.descriptor.identity = [3; 32];
    store.counters.account(&odd, true);
    store.index.insert(onion(3), 2);
    store.entries.push(odd);

    let candidates = store.candidates();
    assert_eq!(candidates.len(), 3);
    let c = &candidates[0];
    assert_eq!(c.key, onion(1));
    assert_eq!(c.addrs, exit.addrs);
    assert_eq!(c.port, 443);
    assert!(c.exit);
    let ports = c.exit_ports.as_ref().unwrap();
    assert!(ports.accepts(443) && !ports.accepts(22));
    assert!(!candidates[1].exit && candidates[1].exit_ports.is_none());
    assert_eq!(candidates[1].port, 51820);
    assert!(!candidates[2].exit && candidates[2].exit_ports.is_none());
}

#[test]
fn insert_entry_copies_without_verifying() {
    let source = store_of(3);
    let mut copy = Store::default();
    let entry = source.get(&onion(1)).unwrap();
    assert_eq!(
        copy.insert_entry(entry, NOW, Source::Own),
        Ok(Inserted::New)
    );
    assert_eq!(copy.get(&onion(1)).unwrap().source(), Source::Own);
    assert_eq!(
        copy.insert_entry(entry, NOW, Source::Bootstrap),
        Err(Rejected::Duplicate)
    );
    assert_eq!(
        copy.insert_entry(
            source.get(&onion(2)).unwrap(),
            NOW + 3600,
            Source::Bootstrap
        ),
        Err(Rejected::Invalid(DescriptorError::Expired))
    );
    let mut small = Store::new(StoreLimits {
        max_descriptor_len: 100,
        ..limits()
    });
    assert!(matches!(
        small.insert_entry(entry, NOW, Source::Bootstrap),
        Err(Rejected::Invalid(DescriptorError::TooLong(_)))
    ));
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

#[test]
fn cache_round_trip() {
    let store = mixed_store();
    let cache = store.encode_cache();
    assert_eq!(&cache[..9], b"ANONDIR\0\x01");
    let (loaded, report) = Store::decode_cache(&cache, NOW, limits());
    assert_eq!(
        report,
        CacheReport {
            loaded: 7,
            dropped: 0,
            corrupt: false
        }
    );
    for entry in store.iter() {
        assert_eq!(loaded.get(&entry.descriptor.key()), Some(entry));
    }
    assert_eq!(
        Store::decode_cache(&loaded.encode_cache(), NOW, limits()).1,
        report
    );
    // Later, all but the late descriptor have expired; tighter limits drop more.
    let (later, report) = Store::decode_cache(&cache, NOW + 3600, limits());
    assert_eq!(
        (report.loaded, report.dropped, report.corrupt),
        (1, 6, false)
    );
    assert!(later.get(&onion(6)).is_some());
    let tight = StoreLimits {
        per_source: 2,
        ..limits()
    };
    let (_, report) = Store::decode_cache(&cache, NOW, tight);
    assert_eq!(
        (report.loaded, report.dropped, report.corrupt),
        (5, 2, false)
    );
    // An empty store.
    let empty = Store::default().encode_cache();
    assert_eq!(empty.len(), 9 + CHECKSUM_LEN);
    let (store, report) = Store::decode_cache(&empty, NOW, limits());
    assert!(store.is_empty() && !report.corrupt);
}

#[test]
fn corrupt_caches() {
    let cache = mixed_store().encode_cache();
    for len in 0..cache.len() {
        let (store, report) = Store::decode_cache(&cache[..len], NOW, limits());
        assert!(report.corrupt, "truncated to {len}");
        assert_eq!(store.len(), report.loaded);
        assert!(report.loaded <= 7);
    }
    let mut flipped = 0;
    for bit in 0..cache.len() * 8 {
        let mut bad = cache.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let (store, report) = Store::decode_cache(&bad, NOW, limits());
        assert!(report.corrupt, "bit {bit}");
        assert!(report.loaded + report.dropped <= 7);
        assert_eq!(store.len(), report.loaded);
        flipped += 1;
    }
    assert_eq!(flipped, cache.len() * 8);
    let mut rng = rng();
    for len in [0, 1, 40, 41, 500, 5_000] {
        let mut garbage = vec![0u8; len];
        rng.fill_bytes(&mut garbage);
        let (store, report) = Store::decode_cache(&garbage, NOW, limits());
        assert!(report.corrupt && store.is_empty());
        garbage[..len.min(9)].copy_from_slice(&b"ANONDIR\0\x01"[..len.min(9)]);
        let (_, report) = Store::decode_cache(&garbage, NOW, limits());
        assert!(report.corrupt);
    }
    // A record claiming more than a descriptor's length stops the reading.
    let mut long = b"ANONDIR\0\x01\x01\x04\x01".to_vec();
    long.extend_from_slice(&[0; 1025]);
    let checksum = Blake2s256::digest(&long);
    long.extend_from_slice(&checksum);
    let (store, report) = Store::decode_cache(&long, NOW, limits());
    assert!(report.corrupt && store.is_empty());
}

fn get(max: u8) -> Vec<u8> {
    Message::Get { max }.to_vec()
}

#[test]
fn server_answers_own_first_then_a_sample() {
    let mut store = store_of(100);
    store.insert(&gw(1000), NOW, Source::Own).unwrap();
    let mut server = Server::new(true, 100);
    let mut rng = rng();
    let now = Instant::now();
    for max in [1, 5, 64] {
        let mut out = Vec::new();
        let reply = server.handle(
            now,
            &mut rng,
            &store,
            &mut Session::default(),
            &get(max),
            &mut out,
        );
        assert_eq!(reply, Reply::Answered { sent: max });
        assert_eq!(out.len(), usize::from(max) + 1);
        assert!(out
            .iter()
            .all(|p| p.len() <= crate::proto::wire::MAX_PAYLOAD));
        assert_eq!(out[0], Message::Desc(&gw(1000)).to_vec());
        let descs: HashSet<&[u8]> = out[..usize::from(max)]
            .iter()
            .map(|p| match Message::parse(p) {
                Ok(Message::Desc(d)) => d,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(descs.len(), usize::from(max));
        assert_eq!(
            Message::parse(out.last().unwrap()),
            Ok(Message::End { sent: max })
        );
    }
    // A small store is sent whole.
    let small = store_of(3);
    let mut out = Vec::new();
    let reply = server.handle(
        now,
        &mut rng,
        &small,
        &mut Session::default(),
        &get(64),
        &mut out,
    );
    assert_eq!(reply, Reply::Answered { sent: 3 });
    assert_eq!(out.len(), 4);
    let mut out = Vec::new();
    let reply = server.handle(
        now,
        &mut rng,
        &Store::default(),
        &mut Session::default(),
        &get(64),
        &mut out,
    );
    assert_eq!(reply, Reply::Answered { sent: 0 });
    assert_eq!(out, vec![vec![0x03, 0x00]]);
    assert_eq!(server.stats().answered, 5);
    assert_eq!(server.stats().descriptors_sent, 1 + 5 + 64 + 3);
}

#[test]
fn server_refusals() {
    let store = store_of(5);
    let mut rng = rng();
    let now = Instant::now();
    let refused = vec![vec![0x04]];

    let mut closed = Server::new(false, 100);
    let mut out = Vec::new();
    let reply = closed.handle(
        now,
        &mut rng,
        &store,
        &mut Session::default(),
        &get(8),
        &mut out,
    );
    assert_eq!(reply, Reply::Refused(RefuseReason::NotSharing));
    assert_eq!(
        out, refused,
        "a store without an own descriptor: Refused alone"
    );
    let mut own_store = Store::default();
    own_store.insert(&gw(0), NOW, Source::Own).unwrap();
    let mut out = Vec::new();
    Server::new(false, 100).handle(
        now,
        &mut rng,
        &own_store,
        &mut Session::default(),
        &get(8),
        &mut out,
    );
    assert_eq!(
        out,
        vec![Message::Desc(&gw(0)).to_vec(), vec![0x04]],
        "own descriptor, then Refused"
    );

    // One Get per circuit.
    let mut server = Server::new(true, 100);
    let mut session = Session::default();
    let mut out = Vec::new();
    server.handle(now, &mut rng, &store, &mut session, &get(8), &mut out);
    let mut out = Vec::new();
    let reply = server.handle(now, &mut rng, &store, &mut session, &get(8), &mut out);
    assert_eq!(reply, Reply::Refused(RefuseReason::CircuitQuota));
    assert_eq!(out, refused);

    // The global rate: 2 per second with one second of burst.
    let mut server = Server::new(true, 2);
    let mut answer = |at: Instant| {
        let mut out = Vec::new();
        server.handle(
            at,
            &mut rng,
            &store,
            &mut Session::default(),
            &get(8),
            &mut out,
        )
    };
    assert_eq!(answer(now), Reply::Answered { sent: 5 });
    assert_eq!(answer(now), Reply::Answered { sent: 5 });
    assert_eq!(answer(now), Reply::Refused(RefuseReason::Busy));
    assert_eq!(
        answer(now + Duration::from_millis(499)),
        Reply::Refused(RefuseReason::Busy)
    );
    assert_eq!(
        answer(now + Duration::from_millis(500)),
        Reply::Answered { sent: 5 }
    );
    assert_eq!(
        answer(now + Duration::from_secs(10)),
        Reply::Answered { sent: 5 }
    );
    assert_eq!(
        answer(now + Duration::from_secs(10)),
        Reply::Answered { sent: 5 }
    );
    assert_eq!(
        answer(now + Duration::from_secs(10)),
        Reply::Refused(RefuseReason::Busy)
    );
    assert_eq!(server.stats().refused_busy, 3);

    let mut silent = Server::new(true, 0);
    let mut out = Vec::new();
    let reply = silent.handle(
        now,
        &mut rng,
        &store,
        &mut Session::default(),
        &get(8),
        &mut out,
    );
    assert_eq!(reply, Reply::Refused(RefuseReason::Busy));

    // Anything but a Get is ignored without an answer.
    let mut server = Server::new(true, 100);
    for request in [
        vec![],
        vec![0x01, 0x00],
        vec![0x03, 0x01],
        vec![0x04],
        vec![0x09],
    ] {
        let mut out = Vec::new();
        let reply = server.handle(
            now,
            &mut rng,
            &store,
            &mut Session::default(),
            &request,
            &mut out,
        );
        assert_eq!(reply, Reply::Ignored);
        assert!(out.is_empty());
    }
    assert_eq!(server.stats().ignored, 5);
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

#[test]
fn crawler_asks_bootstrap_first_then_everyone_once() {
    let mut rng = rng();
    let now = Instant::now();
    // Gateway g knows everyone; the client starts from gateways 1 and 2 and holds
    // its own descriptor 0.
    let mut everyone = store_of(30);
    let mut client = Store::default();
    client.insert(&gw(0), NOW, Source::Own).unwrap();
    client.insert(&gw(1), NOW, Source::Bootstrap).unwrap();
    client.insert(&gw(2), NOW, Source::Bootstrap).unwrap();
    everyone.insert(&gw(99), NOW, Source::Own).unwrap();

    let mut crawler = Crawler::new(usize::MAX, 8, Duration::from_secs(5)).with_parallel(2);
    assert_eq!(crawler.request(), vec![0x01, 0x08]);
    let first = crawler.next_query(now, &mut rng, &client).unwrap();
    let second = crawler.next_query(now, &mut rng, &client).unwrap();
    let mut firsts = [first, second];
    firsts.sort_unstable();
    let mut boot = [onion(1), onion(2)];
    boot.sort_unstable();
    assert_eq!(firsts, boot);
    // Two open queries: no third.
    assert_eq!(crawler.next_query(now, &mut rng, &client), None);
    assert_eq!(crawler.pending(), 2);

    let progress = exchange(&mut crawler, first, &everyone, &mut client, &mut rng);
    assert_eq!(progress.len(), 9);
    assert_eq!(
        progress.last(),
        Some(&Progress::Answered {
            sent: 8,
            received: 8
        })
    );
    assert!(matches!(
        progress[0],
        Progress::Descriptor(Ok(Inserted::New))
    ));
    assert_eq!(crawler.stats().answered, 1);
    assert!(crawler.on_failed(&second));
    assert!(!crawler.on_failed(&second));

    let mut asked = HashSet::from([first, second]);
    while !crawler.done(&client) {
        let Some(key) = crawler.next_query(now, &mut rng, &client) else {
            panic!("not done but nothing to ask");
        };
        assert!(asked.insert(key), "asked twice");
        assert_ne!(key, onion(0), "asked itself");
        exchange(&mut crawler, key, &everyone, &mut client, &mut rng);
    }
    // Everyone known was asked once, itself excepted.
    assert_eq!(asked.len(), client.len() - 1);
    assert_eq!(client.len(), 31);
    let stats = crawler.stats();
    assert_eq!(stats.queries, 30);
    assert_eq!(stats.answered, 29);
    assert_eq!(stats.unreachable, 1);
    assert_eq!(stats.descriptors, 29 * 8);
    assert_eq!(stats.accepted, 28);
    assert!(stats.bytes_received > 29 * 8 * 158);
    assert_eq!(crawler.next_query(now, &mut rng, &client), None);
}

#[test]
fn crawler_target_budget_and_gossip() {
    let mut rng = rng();
    let now = Instant::now();
    let store = store_of(10);
    let mut crawler = Crawler::new(10, 64, Duration::from_secs(5));
    assert!(crawler.done(&store));
    assert_eq!(crawler.next_query(now, &mut rng, &store), None);

    let mut gossip = Crawler::gossip(Duration::from_secs(5));
    assert_eq!(gossip.request(), vec![0x01, 0x40]);
    let mut asked = Vec::new();
    for _ in 0..GOSSIP_PEERS {
        asked.push(gossip.next_query(now, &mut rng, &store).unwrap());
        gossip.on_failed(asked.last().unwrap());
    }
    assert_eq!(gossip.next_query(now, &mut rng, &store), None);
    assert!(gossip.done(&store));
    assert_eq!(asked.iter().collect::<HashSet<_>>().len(), 3);
    // Gossip gives bootstrap gateways no preference: over many rounds the peers
    // asked are spread over the store.
    let mut seen = HashSet::new();
    for _ in 0..100 {
        let mut round = Crawler::gossip(Duration::from_secs(5));
        while let Some(key) = round.next_query(now, &mut rng, &store) {
            seen.insert(key);
        }
    }
    assert_eq!(seen.len(), 10);
    assert_eq!(
        Crawler::new(5, 0, Duration::ZERO).request(),
        vec![0x01, 0x01]
    );
    assert_eq!(
        Crawler::new(5, 200, Duration::ZERO).request(),
        vec![0x01, 0x40]
    );
}

#[test]
fn crawler_refusal_timeout_and_violations() {
    let mut rng = rng();
    let t0 = Instant::now();
    let mut client = store_of(6);
    let timeout = Duration::from_secs(5);
    let mut crawler = Crawler::new(usize::MAX, 2, timeout).with_parallel(6);
    let keys: Vec<[u8; 32]> = (0..6)
        .map(|i| {
            crawler
                .next_query(t0 + Duration::from_secs(i), &mut rng, &client)
                .unwrap()
        })
        .collect();
    assert_eq!(crawler.poll_timeout(), Some(t0 + timeout));
    let d = gw(50);

    assert_eq!(
        crawler.on_payload(&keys[0], &[0x04], &mut client, NOW),
        Progress::Refused
    );
    assert_eq!(
        crawler.on_payload(&keys[0], &[0x04], &mut client, NOW),
        Progress::Ignored
    );
    assert_eq!(
        crawler.on_payload(&keys[1], &[0x07], &mut client, NOW),
        Progress::Violation
    );
    assert_eq!(
        crawler.on_payload(&keys[2], &get(3), &mut client, NOW),
        Progress::Violation
    );
    // More descriptors than asked for.
    let desc = Message::Desc(&d).to_vec();
    assert!(matches!(
        crawler.on_payload(&keys[3], &desc, &mut client, NOW),
        Progress::Descriptor(Ok(Inserted::New))
    ));
    assert_eq!(
        crawler.on_payload(&keys[3], &desc, &mut client, NOW),
        Progress::Descriptor(Err(Rejected::Duplicate))
    );
    assert_eq!(
        crawler.on_payload(&keys[3], &desc, &mut client, NOW),
        Progress::Violation
    );
    // An End announcing more than asked for.
    assert_eq!(
        crawler.on_payload(&keys[4], &[0x03, 0x03], &mut client, NOW),
        Progress::Violation
    );
    // A lost Desc: End says 2, one arrived.
    assert!(matches!(
        crawler.on_payload(&keys[5], &Message::Desc(&gw(51)).to_vec(), &mut client, NOW),
        Progress::Descriptor(Ok(Inserted::New))
    ));
    assert_eq!(crawler.pending(), 1);
    assert_eq!(
        crawler.poll_timeout(),
        Some(t0 + Duration::from_secs(5) + timeout)
    );
    assert!(crawler.on_timeout(t0 + Duration::from_secs(9)).is_empty());
    assert_eq!(
        crawler.on_timeout(t0 + Duration::from_secs(10)),
        vec![keys[5]]
    );
    assert_eq!(crawler.poll_timeout(), None);
    assert_eq!(
        crawler.on_payload(&keys[5], &[0x03, 0x02], &mut client, NOW),
        Progress::Ignored
    );
    let stats = crawler.stats();
    assert_eq!(
        (
            stats.refused,
            stats.violations,
            stats.timed_out,
            stats.answered
        ),
        (1, 4, 1, 0)
    );
    assert_eq!(stats.descriptors, 3);
    assert_eq!(stats.accepted, 2);
}

#[test]
fn crawler_reclaims_a_squatted_gateway_by_asking_it() {
    let mut rng = rng();
    let now = Instant::now();
    // The client learned a claim on gateway 1's key by identity 9, at gateway 1's
    // real address (so the circuit reaches gateway 1).
    let mut client = Store::default();
    let squat = claim(9, onion(1), &[&addr(1)], NOW + 10);
    client.insert(&squat, NOW, Source::Peer(PEER)).unwrap();
    let mut gateway = Store::default();
    gateway.insert(&gw(1), NOW, Source::Own).unwrap();
    let mut crawler = Crawler::new(usize::MAX, 64, Duration::from_secs(5));
    let key = crawler.next_query(now, &mut rng, &client).unwrap();
    assert_eq!(key, onion(1));
    let progress = exchange(&mut crawler, key, &gateway, &mut client, &mut rng);
    assert_eq!(progress[0], Progress::Descriptor(Ok(Inserted::Reclaimed)));
    assert_eq!(client.get(&onion(1)).unwrap().bytes(), &gw(1)[..]);
}

#[test]
fn crawler_asks_a_bootstrap_gateway_known_only_by_key() {
    let mut rng = rng();
    let now = Instant::now();
    let mut client = Store::default();
    let mut gateway = Store::default();
    gateway.insert(&gw(1), NOW, Source::Own).unwrap();
    gateway.insert(&gw(2), NOW, Source::Bootstrap).unwrap();
    let mut crawler = Crawler::new(usize::MAX, 64, Duration::from_secs(5));
    crawler.ask(now, onion(1));
    assert_eq!(crawler.pending(), 1);
    let progress = exchange(&mut crawler, onion(1), &gateway, &mut client, &mut rng);
    assert!(matches!(
        progress.last(),
        Some(Progress::Answered {
            sent: 2,
            received: 2
        })
    ));
    // Its own descriptor came over the authenticated circuit: held as proven.
    assert_eq!(
        client.get(&onion(1)).unwrap().source(),
        Source::Peer(onion(1))
    );
    assert_eq!(client.len(), 2);
    // Asked once: the crawler does not pick it again.
    assert_ne!(crawler.next_query(now, &mut rng, &client), Some(onion(1)));
}

#[test]
fn server_stores_published_descriptors_within_its_rate() {
    let now = Instant::now();
    let mut store = Store::default();
    let mut server = Server::new(true, 2);
    assert!(
        !server.publish(now, &mut store, &get(8), NOW),
        "a Get is not a Publish"
    );
    for seed in 1..=3 {
        let msg = Message::Publish(&gw(seed)).to_vec();
        assert!(server.publish(now, &mut store, &msg, NOW));
    }
    assert_eq!(store.len(), 2, "the third exceeds 2 per second");
    assert_eq!(store.get(&onion(1)).unwrap().source(), Source::Bootstrap);
    assert_eq!(
        (server.stats().published, server.stats().published_dropped),
        (2, 1)
    );
    let forged = Message::Publish(&[0x11; MIN_DESCRIPTOR_LEN]).to_vec();
    assert!(server.publish(now + Duration::from_secs(1), &mut store, &forged, NOW));
    assert_eq!(store.len(), 2, "an invalid descriptor is dropped");
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

mod gateway;
