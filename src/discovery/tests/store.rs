//! The store: what it admits, the caps against poisoning, sampling, candidates and the cache file.

use super::*;
use crate::proto::descriptor::PaddingBudget;

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
    version[0] = 1;
    assert_eq!(
        reject(&mut store, &version, NOW),
        Err(Rejected::Invalid(DescriptorError::Version(1)))
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
        padding: PaddingBudget {
            rate: 1_250_000,
            share: 30,
        },
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
    assert_eq!(c.padding, exit.padding);
    assert_eq!(c.padding_share(), 30);
    let silent = Candidate {
        padding: PaddingBudget { rate: 0, share: 30 },
        ..c.clone()
    };
    assert_eq!(silent.padding_share(), 0, "it echoes nothing");
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
