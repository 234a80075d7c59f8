// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::proto::identity::Identity;
use crate::proto::ports::SummaryError;
use proptest::prelude::*;

const NOW: u64 = 1_700_000_000;

fn identity() -> Identity {
    Identity::from_secret([7; 32])
}

fn key() -> SigningKey {
    identity().signing_key()
}

fn sample() -> Descriptor {
    Descriptor {
        identity: key().verifying_key().to_bytes(),
        onion_key: identity().public().0,
        addrs: vec![
            IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
            IpAddr::V6("2001:db8::7".parse().unwrap()),
        ],
        ports: (51820, 51823),
        exit: true,
        policy_summary: "reject 25,119,135-139,445".into(),
        published: NOW,
        expires: NOW + 3 * 3600,
        padding: PaddingBudget {
            rate: 1_250_000,
            share: 50,
        },
    }
}

fn relay() -> Descriptor {
    Descriptor {
        exit: false,
        policy_summary: String::new(),
        ..sample()
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Signs without checking the fields, to make descriptors that break a rule.
fn sign_unchecked(d: &Descriptor) -> Vec<u8> {
    resign(d.encode_body())
}

/// Appends a valid signature by [`key`] to an encoding up to the signature.
fn resign(mut body: Vec<u8>) -> Vec<u8> {
    let signature = key().sign(&signed_message(&body));
    body.extend_from_slice(&signature.to_bytes());
    body
}

/// Both signing and verifying (of a validly signed encoding) reject `d` with `e`.
fn assert_rejected(d: &Descriptor, e: DescriptorError) {
    assert_eq!(d.sign(&key()), Err(e), "sign {d:?}");
    assert_eq!(
        Descriptor::verify(&sign_unchecked(d), NOW),
        Err(e),
        "verify {d:?}"
    );
}

fn assert_accepted(d: &Descriptor) {
    let bytes = d.sign(&key()).unwrap();
    assert_eq!(&Descriptor::verify(&bytes, NOW).unwrap(), d);
}

#[test]
fn fixed_vector() {
    // Computed independently (BLAKE2s, X25519 and Ed25519 of another library).
    let bytes = sample().sign(&key()).unwrap();
    assert_eq!(bytes.len(), 205);
    assert_eq!(&bytes[..2], &[2, 1]);
    assert_eq!(
        bytes[2..34],
        hex("0a955bb6c59feaa6f3d6ad6a0785c64762ee6766de8c9db75231cd6e9f69a41b")
    );
    assert_eq!(
        bytes[34..66],
        hex("13be4feaeaf204c7fd3358fc9c00721881d174278128227ec674f37f7fe97b6d")
    );
    assert_eq!(
        bytes[66..116],
        hex(concat!(
            "000000006553f100",                   // published
            "0000000065541b30",                   // expires
            "ca6c",                               // port_first
            "ca6f",                               // port_last
            "001312d0",                           // padding_rate
            "32",                                 // padding_share
            "02",                                 // n_addrs
            "04c6336407",                         // 198.51.100.7
            "0620010db8000000000000000000000007", // 2001:db8::7
            "0019",                               // summary_len
        ))
    );
    assert_eq!(&bytes[116..141], b"reject 25,119,135-139,445");
    assert_eq!(
        bytes[141..],
        hex(concat!(
            "9e69631ea0e452a0b6c5fac48e16c425d5eef889129abfe9c61b67945aaf580e",
            "cb65b1ec7e1d376fd277d4564f670436c98dd2a44d6c706efe39b9f53b0b8c08",
        ))
    );
    assert_eq!(Descriptor::verify(&bytes, NOW).unwrap(), sample());
}

#[test]
fn round_trip() {
    assert_accepted(&sample());
    assert_accepted(&relay());
    let d = sample();
    assert_eq!(d.key(), identity().public().0);
    let addrs: Vec<SocketAddr> = d.socket_addrs().collect();
    assert_eq!(
        addrs,
        vec![
            "198.51.100.7:51820".parse().unwrap(),
            "[2001:db8::7]:51820".parse().unwrap()
        ]
    );
    // Signing is deterministic.
    assert_eq!(d.sign(&key()).unwrap(), d.sign(&key()).unwrap());
}

/// A valid summary of exactly [`MAX_SUMMARY_LEN`] bytes.
fn longest_summary() -> String {
    let mut summary = String::from("accept 1");
    for i in 0..84 {
        summary.push_str(&format!(",{}", 10000 + 2 * i));
    }
    summary
}

#[test]
fn largest_and_smallest() {
    let summary = longest_summary();
    assert_eq!(summary.len(), MAX_SUMMARY_LEN);
    let big = Descriptor {
        addrs: (1..=4u16)
            .map(|i| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i)))
            .collect(),
        policy_summary: summary,
        ..sample()
    };
    let bytes = big.sign(&key()).unwrap();
    assert_eq!(bytes.len(), MAX_ENCODED_LEN);
    assert_eq!(Descriptor::verify(&bytes, NOW).unwrap(), big);
    let small = Descriptor {
        addrs: vec![IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1))],
        ..relay()
    };
    assert_eq!(small.sign(&key()).unwrap().len(), MIN_DESCRIPTOR_LEN);
}

#[test]
fn every_bit_flip_fails() {
    let bytes = sample().sign(&key()).unwrap();
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert!(Descriptor::verify(&flipped, NOW).is_err(), "bit {bit}");
    }
}

#[test]
fn every_truncation_fails() {
    for d in [sample(), relay()] {
        let bytes = d.sign(&key()).unwrap();
        for len in 0..bytes.len() {
            assert_eq!(
                Descriptor::verify(&bytes[..len], NOW),
                Err(DescriptorError::Truncated),
                "length {len}"
            );
        }
    }
}

#[test]
fn trailing_and_too_long() {
    let mut bytes = sample().sign(&key()).unwrap();
    bytes.push(0);
    assert_eq!(
        Descriptor::verify(&bytes, NOW),
        Err(DescriptorError::TrailingBytes)
    );
    bytes.resize(MAX_DESCRIPTOR_LEN, 0);
    assert_eq!(
        Descriptor::verify(&bytes, NOW),
        Err(DescriptorError::TrailingBytes)
    );
    bytes.push(0);
    assert_eq!(
        Descriptor::verify(&bytes, NOW),
        Err(DescriptorError::TooLong(MAX_DESCRIPTOR_LEN + 1))
    );
    assert_eq!(
        Descriptor::verify(&[1; 4000], NOW),
        Err(DescriptorError::TooLong(4000))
    );
}

#[test]
fn version_and_flags() {
    let body = sample().encode_body();
    for version in [0, 1, 3, 0xff] {
        let mut b = body.clone();
        b[0] = version;
        assert_eq!(
            Descriptor::verify(&resign(b), NOW),
            Err(DescriptorError::Version(version))
        );
    }
    for flags in [0x02, 0x03, 0x80, 0xff] {
        let mut b = body.clone();
        b[1] = flags;
        assert_eq!(
            Descriptor::verify(&resign(b), NOW),
            Err(DescriptorError::BadField("flags"))
        );
    }
}

#[test]
fn addr_count() {
    let none = Descriptor {
        addrs: vec![],
        ..sample()
    };
    assert_rejected(&none, DescriptorError::BadField("addrs"));
    let five = Descriptor {
        addrs: (1..=5u8)
            .map(|i| IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)))
            .collect(),
        ..sample()
    };
    assert_rejected(&five, DescriptorError::BadField("addrs"));
    let four = Descriptor {
        addrs: five.addrs[..4].to_vec(),
        ..sample()
    };
    assert_accepted(&four);
    // A count beyond the limit is rejected before the addresses are read.
    let mut b = sample().encode_body();
    b[91] = 200;
    assert_eq!(
        Descriptor::verify(&resign(b), NOW),
        Err(DescriptorError::BadField("addrs"))
    );
}

#[test]
fn unusable_addrs() {
    for bad in [
        "0.0.0.0",
        "127.0.0.1",
        "127.1.2.3",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "::",
        "::1",
        "ff02::1",
        "ff0e::1",
        "::ffff:198.51.100.7",
    ] {
        let d = Descriptor {
            addrs: vec![sample().addrs[0], bad.parse().unwrap()],
            ..sample()
        };
        assert_rejected(&d, DescriptorError::BadField("addrs"));
    }
    let duplicate = Descriptor {
        addrs: vec![sample().addrs[1], sample().addrs[0], sample().addrs[1]],
        ..sample()
    };
    assert_rejected(&duplicate, DescriptorError::BadField("addrs"));
    for good in ["10.0.0.1", "192.168.1.1", "fd00::1", "fe80::1", "::2"] {
        assert_accepted(&Descriptor {
            addrs: vec![good.parse().unwrap()],
            ..sample()
        });
    }
    let mut b = sample().encode_body();
    b[92] = 5;
    assert_eq!(
        Descriptor::verify(&resign(b), NOW),
        Err(DescriptorError::BadField("family"))
    );
}

#[test]
fn port_range() {
    for bad in [
        (0, 0),
        (0, 1),
        (10, 9),
        (65535, 1),
        (1000, 2024),
        (1, 65535),
    ] {
        let d = Descriptor {
            ports: bad,
            ..sample()
        };
        assert_rejected(&d, DescriptorError::BadField("ports"));
    }
    for good in [(1, 1), (1000, 2023), (65535, 65535), (64512, 65535)] {
        assert_accepted(&Descriptor {
            ports: good,
            ..sample()
        });
    }
}

#[test]
fn padding_budget() {
    for share in [101, 200, 255] {
        let d = Descriptor {
            padding: PaddingBudget { rate: 1, share },
            ..sample()
        };
        assert_rejected(&d, DescriptorError::BadField("padding_share"));
    }
    for (rate, share) in [(0, 0), (0, 100), (u32::MAX, 100), (1, 1)] {
        assert_accepted(&Descriptor {
            padding: PaddingBudget { rate, share },
            ..sample()
        });
    }
}

#[test]
fn summary_rules() {
    for good in [
        "accept 80,443",
        "reject 25,119,135-139,445",
        "accept 1-65535",
        "reject 1-65535",
        "accept 1,3,65535",
        "accept 20-23,80-81",
    ] {
        assert_accepted(&Descriptor {
            policy_summary: good.into(),
            ..sample()
        });
    }
    for bad in [
        "",
        "accept",
        "accept ",
        "allow 80",
        "Accept 80",
        "accept  80",
        "accept 80 ",
        "accept 80,",
        "accept ,80",
        "accept 080",
        "accept +80",
        "accept 0",
        "accept 65536",
        "accept 100000",
        "accept 443,80",
        "accept 80,80",
        "accept 80-80",
        "accept 90-80",
        "accept 80,81",
        "accept 80-90,91",
        "accept 80-90,85",
        "accept 1-2-3",
        "accept 80\u{e9}",
        "accept \u{0663}",
    ] {
        let d = Descriptor {
            policy_summary: bad.into(),
            ..sample()
        };
        assert_rejected(&d, DescriptorError::BadField("policy_summary"));
    }
    let on_relay = Descriptor {
        policy_summary: "accept 80".into(),
        ..relay()
    };
    assert_rejected(&on_relay, DescriptorError::BadField("policy_summary"));

    let long = format!("{},20000", longest_summary());
    assert_eq!(
        long.parse::<PortSummary>(),
        Err(SummaryError("longer than 512 bytes".into())),
        "valid but for its length"
    );
    let d = Descriptor {
        policy_summary: long,
        ..sample()
    };
    assert_rejected(&d, DescriptorError::BadField("policy_summary"));

    // Non-ASCII bytes, even invalid UTF-8, in an encoding.
    let mut b = sample().encode_body();
    let last = b.len() - 1;
    b[last] = 0xff;
    assert_eq!(
        Descriptor::verify(&resign(b), NOW),
        Err(DescriptorError::BadField("policy_summary"))
    );
}

#[test]
fn times() {
    let at = |published, expires| Descriptor {
        published,
        expires,
        ..sample()
    };
    let check = |d: &Descriptor| Descriptor::verify(&d.sign(&key()).unwrap(), NOW);
    assert!(check(&at(NOW + MAX_CLOCK_SKEW_SECS, NOW + 3600)).is_ok());
    assert_eq!(
        check(&at(NOW + MAX_CLOCK_SKEW_SECS + 1, NOW + 3600)),
        Err(DescriptorError::NotYetValid)
    );
    assert_eq!(check(&at(NOW - 3600, NOW)), Err(DescriptorError::Expired));
    assert!(check(&at(NOW - 3600, NOW + 1)).is_ok());
    assert_eq!(
        check(&at(NOW - 7200, NOW - 3600)),
        Err(DescriptorError::Expired)
    );
    assert!(check(&at(NOW - 1, NOW - 1 + MAX_LIFETIME_SECS)).is_ok());
    assert_rejected(
        &at(NOW, NOW + MAX_LIFETIME_SECS + 1),
        DescriptorError::LifetimeTooLong,
    );
    assert_rejected(&at(NOW, NOW), DescriptorError::BadField("expires"));
    assert_rejected(&at(NOW, NOW - 1), DescriptorError::BadField("expires"));
    assert_rejected(&at(u64::MAX, 0), DescriptorError::BadField("expires"));
    // Clocks near the end of time do not overflow.
    let late = at(u64::MAX - 10, u64::MAX);
    let bytes = late.sign(&key()).unwrap();
    assert_eq!(Descriptor::verify(&bytes, u64::MAX - 5).unwrap(), late);
    assert_eq!(
        Descriptor::verify(&bytes, u64::MAX),
        Err(DescriptorError::Expired)
    );
}

#[test]
fn signature_binds_identity() {
    let other = Identity::from_secret([8; 32]).signing_key();
    assert_eq!(
        sample().sign(&other),
        Err(DescriptorError::IdentityMismatch)
    );
    // Signed by another key than the embedded identity.
    let claimed = Descriptor {
        identity: other.verifying_key().to_bytes(),
        ..sample()
    };
    assert_eq!(
        Descriptor::verify(&sign_unchecked(&claimed), NOW),
        Err(DescriptorError::BadSignature)
    );
    // An identity that is not a curve point.
    let mut b = sample().encode_body();
    b[2..34].copy_from_slice(&[0xff; 32]);
    assert_eq!(
        Descriptor::verify(&resign(b), NOW),
        Err(DescriptorError::BadSignature)
    );
    // The signing prefix is part of the message.
    let body = sample().encode_body();
    let mut bare = body.clone();
    bare.extend_from_slice(&key().sign(&body).to_bytes());
    assert_eq!(
        Descriptor::verify(&bare, NOW),
        Err(DescriptorError::BadSignature)
    );
}

#[test]
fn error_texts() {
    assert_eq!(
        DescriptorError::BadField("ports").to_string(),
        "invalid descriptor field `ports`"
    );
    assert_eq!(
        DescriptorError::TooLong(2000).to_string(),
        "descriptor is 2000 bytes, more than 1024"
    );
    assert_eq!(
        DescriptorError::LifetimeTooLong.to_string(),
        "descriptor lifetime exceeds 86400 seconds"
    );
}

/// Ports as a canonical summary list: sorted, deduplicated, adjacent ports merged.
fn summary_of(accept: bool, mut ports: Vec<u16>) -> String {
    ports.sort_unstable();
    ports.dedup();
    let mut ranges: Vec<(u16, u16)> = Vec::new();
    for p in ports {
        match ranges.last_mut() {
            Some((_, hi)) if u32::from(*hi) + 1 == u32::from(p) => *hi = p,
            _ => ranges.push((p, p)),
        }
    }
    let list: Vec<String> = ranges
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect();
    let action = if accept { "accept" } else { "reject" };
    if list.is_empty() {
        format!("{action} 1-65535")
    } else {
        format!("{action} {}", list.join(","))
    }
}

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        any::<[u8; 16]>().prop_map(|b| IpAddr::V6(Ipv6Addr::from(b))),
    ]
    .prop_filter("usable", usable_addr)
}

fn descriptor() -> impl Strategy<Value = (Descriptor, SigningKey)> {
    (
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        proptest::collection::hash_set(addr(), 1..=MAX_ADDRS),
        1..=u16::MAX,
        0..MAX_PORTS as u16,
        proptest::option::of((
            any::<bool>(),
            proptest::collection::vec(1..=u16::MAX, 0..60),
        )),
        0..u64::MAX - MAX_LIFETIME_SECS,
        1..=MAX_LIFETIME_SECS,
        any::<u32>(),
        0..=100u8,
    )
        .prop_map(
            |(secret, onion_key, addrs, first, span, exit, published, lifetime, rate, share)| {
                let key = Identity::from_secret(secret).signing_key();
                let d = Descriptor {
                    identity: key.verifying_key().to_bytes(),
                    onion_key,
                    addrs: addrs.into_iter().collect(),
                    ports: (first, first.saturating_add(span)),
                    exit: exit.is_some(),
                    policy_summary: exit
                        .map(|(accept, ports)| summary_of(accept, ports))
                        .unwrap_or_default(),
                    published,
                    expires: published + lifetime,
                    padding: PaddingBudget { rate, share },
                };
                (d, key)
            },
        )
}

proptest! {
    #[test]
    fn valid_descriptors_round_trip((d, key) in descriptor()) {
        let bytes = d.sign(&key).unwrap();
        prop_assert!((MIN_DESCRIPTOR_LEN..=MAX_ENCODED_LEN).contains(&bytes.len()));
        prop_assert_eq!(Descriptor::verify(&bytes, d.published).unwrap(), d.clone());
        prop_assert_eq!(Descriptor::verify(&bytes, d.expires - 1).unwrap(), d);
    }

    #[test]
    fn edited_descriptors_fail(
        (d, key) in descriptor(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let bytes = d.sign(&key).unwrap();
        let mut edited = bytes.clone();
        for (at, value) in edits {
            edited[at.index(bytes.len())] = value;
        }
        let result = Descriptor::verify(&edited, d.published);
        prop_assert_eq!(result.is_ok(), edited == bytes);
    }

    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..1100),
        now in any::<u64>(),
    ) {
        let _ = Descriptor::verify(&bytes, now);
    }

    #[test]
    fn plausible_bytes_never_panic(
        head in proptest::collection::vec(any::<u8>(), 85),
        n_addrs in 0u8..6,
        tail in proptest::collection::vec(any::<u8>(), 0..700),
    ) {
        let mut bytes = vec![DESCRIPTOR_VERSION];
        bytes.extend_from_slice(&head);
        bytes[1] &= FLAG_EXIT;
        bytes.push(n_addrs);
        bytes.extend_from_slice(&tail);
        let _ = Descriptor::verify(&bytes, 0);
    }
}
