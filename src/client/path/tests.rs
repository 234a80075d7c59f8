// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::proto::descriptor::PaddingBudget;
use crate::proto::ports::PortSummary;
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn key(n: usize) -> [u8; 32] {
    let mut k = [0x5a; 32];
    k[..8].copy_from_slice(&(n as u64).to_le_bytes());
    k
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn summary(s: &str) -> PortSummary {
    s.parse().unwrap()
}

/// Gateway `n` at one address; an exit accepting every port when `exit`.
fn gw(n: usize, addr: IpAddr, exit: bool) -> Candidate {
    Candidate {
        key: key(n),
        addrs: vec![addr],
        port: 51820,
        exit,
        exit_ports: exit.then(|| summary("accept 1-65535")),
        padding: PaddingBudget {
            rate: 1_250_000,
            share: 50,
        },
    }
}

/// `n` gateways, each in its own /16; those with index below `exits` are exits.
fn spread(n: usize, exits: usize) -> Vec<Candidate> {
    (0..n)
        .map(|i| gw(i, v4(20, i as u8, 0, 1), i < exits))
        .collect()
}

fn rules(len: u8) -> PathRules {
    PathRules {
        length: PathLength::Fixed(len),
        subnets: Subnets::default(),
    }
}

// ---- path rules, checked independently ----

fn same_net(a: &IpAddr, b: &IpAddr) -> bool {
    match (a.to_canonical(), b.to_canonical()) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets()[..2] == b.octets()[..2],
        (IpAddr::V6(a), IpAddr::V6(b)) => a.segments()[..2] == b.segments()[..2],
        _ => false,
    }
}

fn exit_accepts(c: &Candidate, port: Option<u16>) -> bool {
    c.exit
        && match port {
            None => true,
            Some(p) => c.exit_ports.as_ref().is_some_and(|s| s.accepts(p)),
        }
}

/// Whether `path` (entry first) obeys every hard rule.
fn valid(cands: &[Candidate], path: &[usize], guards: &[[u8; 32]], port: Option<u16>) -> bool {
    let hops: Vec<&Candidate> = path.iter().map(|&i| &cands[i]).collect();
    let apart = hops.iter().enumerate().all(|(i, a)| {
        hops[i + 1..].iter().all(|b| {
            a.key != b.key
                && !a
                    .addrs
                    .iter()
                    .any(|x| b.addrs.iter().any(|y| same_net(x, y)))
        })
    });
    let reachable = hops.iter().all(|c| !c.addrs.is_empty() && c.port != 0);
    let exit = hops.last().is_some_and(|c| exit_accepts(c, port));
    // A guard is the first reachable candidate with its key.
    let entry = guards.is_empty()
        || path.first().is_some_and(|&i| {
            let k = cands[i].key;
            guards.contains(&k)
                && cands
                    .iter()
                    .position(|c| c.key == k && c.port != 0 && !c.addrs.is_empty())
                    == Some(i)
        });

    apart && reachable && exit && entry
}

/// Every ordered selection of `len` distinct indices of `0..n`.
fn tuples(n: usize, len: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new()];
    for _ in 0..len {
        let mut next = Vec::new();
        for t in &out {
            for i in (0..n).filter(|i| !t.contains(i)) {
                let mut longer = t.clone();
                longer.push(i);
                next.push(longer);
            }
        }
        out = next;
    }
    out
}

fn brute_valid(
    cands: &[Candidate],
    len: usize,
    guards: &[[u8; 32]],
    port: Option<u16>,
) -> Vec<Vec<usize>> {
    tuples(cands.len(), len)
        .into_iter()
        .filter(|t| valid(cands, t, guards, port))
        .collect()
}

fn arb_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u8..3, any::<u8>()).prop_map(|(net, host)| v4(11, 1 + net, 7, host)),
        (0u8..2, any::<u8>()).prop_map(|(net, host)| IpAddr::V6(
            Ipv4Addr::new(11, 1 + net, 9, host).to_ipv6_mapped()
        )),
        (0u16..2, any::<u16>()).prop_map(|(net, host)| IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8 + net,
            1,
            0,
            0,
            0,
            0,
            host
        ))),
    ]
}

fn arb_candidate() -> impl Strategy<Value = Candidate> {
    let summaries = prop_oneof![
        Just(None),
        Just(Some("accept 1-65535")),
        Just(Some("accept 80,443")),
        Just(Some("reject 25")),
        Just(Some("reject 1-65535")),
        Just(Some("accept 22")),
    ];
    (
        0usize..9,
        prop::collection::vec(arb_addr(), 0..3),
        prop::bool::weighted(0.95),
        any::<bool>(),
        summaries,
    )
        .prop_map(|(k, addrs, reachable, exit, s)| Candidate {
            key: key(k),
            addrs,
            port: if reachable { 443 } else { 0 },
            exit,
            exit_ports: s.map(summary),
            padding: PaddingBudget {
                rate: 1_250_000,
                share: 50,
            },
        })
}

fn arb_length() -> impl Strategy<Value = PathLength> {
    prop_oneof![
        (1u8..=5).prop_map(PathLength::Fixed),
        (1u8..=5, 0u8..3).prop_map(|(lo, extra)| PathLength::Range(lo, lo + extra)),
    ]
}

fn arb_port() -> impl Strategy<Value = Option<u16>> {
    prop_oneof![Just(None), Just(Some(80)), Just(Some(22)), Just(Some(25))]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Against a brute-force search: every path is valid and of an allowed length;
    /// an error comes only when no valid path exists, and names the right reason.
    #[test]
    fn paths_match_brute_force(
        cands in prop::collection::vec(arb_candidate(), 0..=7),
        length in arb_length(),
        guard_keys in prop::collection::vec(0usize..9, 0..3),
        port in arb_port(),
        seed in any::<u64>(),
    ) {
        let guards: Vec<[u8; 32]> = guard_keys.into_iter().map(key).collect();
        let rules = PathRules { length, subnets: Subnets::default() };
        let (lo, hi) = length.bounds().unwrap();
        let result = select_path(&mut rng(seed), &cands, &rules, &guards, port);
        let feasible: Vec<usize> = (lo..=hi)
            .filter(|&len| !brute_valid(&cands, len, &guards, port).is_empty())
            .collect();
        match result {
            Ok(path) => {
                prop_assert!(valid(&cands, &path, &guards, port), "{:?}", path);
                prop_assert!((lo..=hi).contains(&path.len()));
                // The entry is an exit only when no non-exit entry fits the same exit.
                if guards.is_empty() && path.len() >= 2 && cands[path[0]].exit {
                    let exit = *path.last().unwrap();
                    let others = brute_valid(&cands, path.len(), &guards, port);
                    prop_assert!(!others
                        .iter()
                        .any(|p| *p.last().unwrap() == exit && !cands[p[0]].exit));
                }
                // A middle hop is a guard only when no path of this length spares them.
                let guard_middle = |p: &[usize]| {
                    p.len() > 2 && p[1..p.len() - 1].iter().any(|&i| guards.contains(&cands[i].key))
                };
                if guards.len() > 1 && guard_middle(&path) {
                    let others = brute_valid(&cands, path.len(), &guards, port);
                    prop_assert!(!others.iter().any(|p| !guard_middle(p)), "{:?}", path);
                }
            }
            Err(err) => {
                prop_assert!(feasible.is_empty(), "{} but {:?} feasible", err, feasible);
                let any_exit = cands
                    .iter()
                    .any(|c| c.port != 0 && !c.addrs.is_empty() && exit_accepts(c, port));
                let usable = (1..lo)
                    .rev()
                    .find(|&len| !brute_valid(&cands, len, &guards, port).is_empty())
                    .unwrap_or(0);
                let guard_known = cands.iter().any(|c| {
                    c.port != 0 && !c.addrs.is_empty() && guards.contains(&c.key)
                });
                let expected = if !guards.is_empty() && !guard_known {
                    PathError::NoGuard
                } else if !any_exit {
                    PathError::NoExit { port }
                } else if usable == 0 && !guards.is_empty() {
                    PathError::GuardConflict
                } else {
                    PathError::NotEnoughGateways { needed: lo, usable }
                };
                prop_assert_eq!(err, expected);
            }
        }
    }

    /// Larger random sets: every returned path obeys every rule.
    #[test]
    fn paths_obey_rules(
        cands in prop::collection::vec(arb_candidate(), 0..40),
        length in arb_length(),
        guard_keys in prop::collection::vec(0usize..9, 0..4),
        port in arb_port(),
        seed in any::<u64>(),
    ) {
        let guards: Vec<[u8; 32]> = guard_keys.into_iter().map(key).collect();
        let (lo, hi) = length.bounds().unwrap();
        let mut r = rng(seed);
        for _ in 0..8 {
            if let Ok(path) = select_path(&mut r, &cands, &PathRules { length, subnets: Subnets::default() }, &guards, port) {
                prop_assert!(valid(&cands, &path, &guards, port));
                prop_assert!((lo..=hi).contains(&path.len()));
            }
        }
    }
}

// ---- path selection ----

#[test]
fn bad_lengths() {
    let cands = spread(10, 5);
    for length in [
        PathLength::Fixed(0),
        PathLength::Fixed(9),
        PathLength::Range(0, 3),
        PathLength::Range(3, 2),
        PathLength::Range(2, 9),
    ] {
        assert_eq!(
            select_path(
                &mut rng(1),
                &cands,
                &PathRules {
                    length,
                    subnets: Subnets::default()
                },
                &[],
                None
            ),
            Err(PathError::BadLength)
        );
    }
    for len in 1..=8 {
        let path = select_path(&mut rng(1), &cands, &rules(len), &[], None).unwrap();
        assert_eq!(path.len(), usize::from(len));
    }
}

#[test]
fn errors_name_the_reason() {
    let mut cands = spread(6, 2);
    cands[0].exit_ports = Some(summary("accept 80"));
    cands[1].exit_ports = None;
    let r = rules(3);
    assert!(select_path(&mut rng(2), &cands, &r, &[], Some(80)).is_ok());
    assert_eq!(
        select_path(&mut rng(2), &cands, &r, &[], Some(443)),
        Err(PathError::NoExit { port: Some(443) })
    );
    assert_eq!(
        select_path(&mut rng(2), &spread(6, 0), &r, &[], None),
        Err(PathError::NoExit { port: None })
    );
    assert_eq!(
        select_path(&mut rng(2), &cands, &r, &[key(99)], None),
        Err(PathError::NoGuard)
    );
    // The only guard shares a /16 with both exits.
    let mut near = cands.clone();
    near[5].addrs = vec![v4(20, 0, 0, 2), v4(20, 1, 0, 2)];
    assert_eq!(
        select_path(&mut rng(2), &near, &r, &[key(5)], None),
        Err(PathError::GuardConflict)
    );
    // Six gateways in four /16s: at most four hops.
    let mut packed = cands.clone();
    packed[4].addrs = vec![v4(20, 2, 9, 9)];
    packed[5].addrs = vec![v4(20, 3, 9, 9)];
    assert!(select_path(&mut rng(2), &packed, &rules(4), &[], None).is_ok());
    assert_eq!(
        select_path(&mut rng(2), &packed, &rules(5), &[], None),
        Err(PathError::NotEnoughGateways {
            needed: 5,
            usable: 4
        })
    );
    assert_eq!(
        PathError::NotEnoughGateways {
            needed: 5,
            usable: 4
        }
        .to_string(),
        "a path needs 5 gateways in distinct /16 (IPv4) and /32 (IPv6) networks; \
         the longest possible path has 4"
    );
    assert_eq!(
        PathError::NoExit { port: Some(443) }.to_string(),
        "no reachable exit accepts port 443"
    );
}

/// Candidates that are the edges of a complete graph on 12 /16s: a path is a
/// matching, so at most 6 hops fit, which the search bound cannot see; proving
/// that 8 do not fit exceeds the budget.
#[test]
fn search_budget() {
    let mut cands = Vec::new();
    for a in 0..12u8 {
        for b in a + 1..12 {
            let n = cands.len();
            cands.push(Candidate {
                key: key(n),
                addrs: vec![v4(30, a, 0, 1), v4(30, b, 0, 1)],
                port: 443,
                exit: true,
                exit_ports: None,
                padding: PaddingBudget {
                    rate: 1_250_000,
                    share: 50,
                },
            });
        }
    }
    let path = select_path(&mut rng(3), &cands, &rules(6), &[], None).unwrap();
    assert!(valid(&cands, &path, &[], None));
    assert_eq!(
        select_path(&mut rng(3), &cands, &rules(8), &[], None),
        Err(PathError::SearchLimit)
    );
}

#[test]
fn unreachable_and_duplicate_gateways_are_avoided() {
    let mut cands = spread(4, 1);
    cands[1].addrs.clear();
    cands[2].port = 0;
    assert_eq!(
        select_path(&mut rng(4), &cands, &rules(3), &[], None),
        Err(PathError::NotEnoughGateways {
            needed: 3,
            usable: 2
        })
    );
    // A second descriptor for gateway 0 at another address is the same gateway.
    let mut dup = spread(3, 1);
    dup.push(gw(0, v4(99, 9, 9, 9), false));
    assert_eq!(
        select_path(&mut rng(4), &dup, &rules(4), &[], None),
        Err(PathError::NotEnoughGateways {
            needed: 4,
            usable: 3
        })
    );
}

#[test]
fn mapped_and_v6_addresses_conflict() {
    let mut cands = spread(3, 1);
    cands[1].addrs = vec![IpAddr::V6(Ipv4Addr::new(20, 0, 200, 1).to_ipv6_mapped())];
    assert!(select_path(&mut rng(5), &cands, &rules(3), &[], None).is_err());
    let v6 = |s: u16, h: u16| IpAddr::V6(Ipv6Addr::new(0x2001, s, 0xffff, 0, 0, 0, 0, h));
    let mut cands = spread(3, 1);
    cands[1].addrs.push(v6(0xdb8, 1));
    cands[2].addrs.push(v6(0xdb8, 2));
    assert!(select_path(&mut rng(5), &cands, &rules(3), &[], None).is_err());
    cands[2].addrs[1] = v6(0xdb9, 2);
    assert!(select_path(&mut rng(5), &cands, &rules(3), &[], None).is_ok());
}

#[test]
fn subnet_prefixes_are_configurable() {
    // Three gateways in one /16 but distinct /24s, as in a test network.
    let mut cands = spread(3, 1);
    for (i, c) in cands.iter_mut().enumerate() {
        c.addrs = vec![IpAddr::V4(Ipv4Addr::new(198, 18, i as u8 + 2, 2))];
    }
    assert!(matches!(
        select_path(&mut rng(5), &cands, &rules(3), &[], None),
        Err(PathError::NotEnoughGateways {
            needed: 3,
            usable: 1
        })
    ));
    let narrow = PathRules {
        length: PathLength::Fixed(3),
        subnets: Subnets { v4: 24, v6: 64 },
    };
    let path = select_path(&mut rng(5), &cands, &narrow, &[], None).unwrap();
    assert_eq!(path.len(), 3);
    let mut guards = Guards::new(3, 100);
    assert_eq!(guards.refresh(&mut rng(5), &cands, 0).len(), 1);
    let mut guards = Guards::new(3, 100).with_rules(&narrow);
    assert_eq!(guards.refresh(&mut rng(5), &cands, 0).len(), 3);
}

#[test]
fn entry_prefers_non_exits() {
    let cands = spread(6, 5);
    let mut r = rng(6);
    for _ in 0..200 {
        let path = select_path(&mut r, &cands, &rules(2), &[], None).unwrap();
        assert_eq!(path[0], 5);
    }
    // Only exits: the entry is an exit.
    let cands = spread(3, 3);
    let path = select_path(&mut r, &cands, &rules(3), &[], None).unwrap();
    assert!(path.iter().all(|&i| cands[i].exit));
}

#[test]
fn entry_is_a_guard() {
    let cands = spread(20, 10);
    let guards = [key(3), key(15)];
    let mut r = rng(7);
    let mut entries = BTreeMap::new();
    for _ in 0..400 {
        let path = select_path(&mut r, &cands, &rules(3), &guards, Some(80)).unwrap();
        *entries.entry(path[0]).or_insert(0) += 1;
        assert_ne!(path[2], path[0]);
    }
    assert_eq!(entries.keys().copied().collect::<Vec<_>>(), vec![3, 15]);
    // One hop: the guard must itself be an exit.
    let path = select_path(&mut r, &cands, &rules(1), &guards, None).unwrap();
    assert_eq!(path, vec![3]);
}

/// Middle hops are not the other guards while other gateways fit, so that each leg
/// of a virtual circuit can start at a guard of its own; they are when none fit.
#[test]
fn middles_spare_the_other_guards() {
    let cands = spread(5, 1);
    let guards = [key(1), key(2)];
    let mut r = rng(8);
    let mut entries = BTreeMap::new();
    for _ in 0..200 {
        let path = select_path(&mut r, &cands, &rules(3), &guards, None).unwrap();
        *entries.entry(path[0]).or_insert(0) += 1;
        assert!([3, 4].contains(&path[1]), "{path:?}");
        let leg = select_leg(&mut r, &cands, &rules(3), &guards, key(0)).unwrap();
        assert!([3, 4].contains(&leg[1]), "{leg:?}");
    }
    assert_eq!(entries.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    let cands = spread(3, 1);
    let path = select_path(&mut r, &cands, &rules(3), &guards, None).unwrap();
    assert!(path == [1, 2, 0] || path == [2, 1, 0], "{path:?}");
}

/// Pearson's statistic of `counts` against equal expectations.
fn chi_square(counts: &[u32]) -> f64 {
    let total: u32 = counts.iter().sum();
    let expected = f64::from(total) / counts.len() as f64;
    counts
        .iter()
        .map(|&c| (f64::from(c) - expected).powi(2) / expected)
        .sum()
}

#[test]
fn exit_is_uniform() {
    let cands = spread(30, 10);
    let mut counts = [0u32; 10];
    let mut r = rng(8);
    for _ in 0..10_000 {
        let path = select_path(&mut r, &cands, &rules(3), &[], Some(443)).unwrap();
        counts[*path.last().unwrap()] += 1;
    }
    // 9 degrees of freedom: P(chi2 > 27.88) = 0.001.
    assert!(chi_square(&counts) < 27.88, "{counts:?}");
}

/// Constraints remove exits that cannot end a path; the others stay equally likely,
/// and so do the entries and middles that fit.
#[test]
fn uniform_under_constraints() {
    let mut cands = spread(12, 6);
    // Exit 0 shares the /16 of both guards: never usable. Exit 1 shares the /16 of
    // guard 10 only.
    cands[10].addrs.push(v4(20, 0, 5, 5));
    cands[11].addrs.push(v4(20, 0, 6, 6));
    cands[10].addrs.push(v4(20, 1, 5, 5));
    let guards = [key(10), key(11)];
    let mut exits = [0u32; 6];
    let mut entries_after_1 = [0u32; 2];
    let mut middles = [0u32; 12];
    let mut r = rng(9);
    for _ in 0..12_000 {
        let path = select_path(&mut r, &cands, &rules(3), &guards, None).unwrap();
        exits[path[2]] += 1;
        if path[2] == 1 {
            entries_after_1[path[0] - 10] += 1;
        }
        middles[path[1]] += 1;
    }
    assert_eq!(exits[0], 0);
    assert_eq!(entries_after_1[0], 0);
    assert!(chi_square(&exits[1..]) < 18.47, "{exits:?}");
    // Middles: any gateway but the two guards, weighted by how many (entry, exit)
    // pairs leave them free; the non-exits 6..10 are never excluded by an exit.
    assert!(chi_square(&middles[6..10]) < 16.27, "{middles:?}");
}

#[test]
fn length_ranges() {
    let cands = spread(10, 4);
    let mut r = rng(10);
    let mut lengths = [0u32; 9];
    for _ in 0..4_000 {
        let rules = PathRules {
            length: PathLength::Range(2, 5),
            subnets: Subnets::default(),
        };
        lengths[select_path(&mut r, &cands, &rules, &[], None)
            .unwrap()
            .len()] += 1;
    }
    assert_eq!(lengths[..2], [0, 0]);
    assert_eq!(lengths[6..], [0, 0, 0]);
    assert!(chi_square(&lengths[2..6]) < 16.27, "{lengths:?}");
    // Only three /16s: a 2-4 range yields lengths 2 and 3, never an error.
    let mut few = spread(5, 2);
    few[3].addrs = vec![v4(20, 2, 1, 1)];
    few[4].addrs = vec![v4(20, 2, 1, 2)];
    let mut seen = [false; 5];
    for _ in 0..200 {
        let rules = PathRules {
            length: PathLength::Range(2, 4),
            subnets: Subnets::default(),
        };
        seen[select_path(&mut r, &few, &rules, &[], None).unwrap().len()] = true;
    }
    assert_eq!(seen, [false, false, true, true, false]);
}

#[test]
fn below_is_in_range() {
    let mut r = rng(11);
    for n in [1, 2, 3, 7, 1000, usize::MAX] {
        for _ in 0..100 {
            assert!(below(&mut r, n) < n);
        }
    }
}

// ---- guards ----

#[test]
fn guards_round_trip() {
    let cands = spread(20, 5);
    let mut guards = Guards::new(3, 90 * 86_400);
    let keys = guards.refresh(&mut rng(12), &cands, 1_700_000_000);
    assert_eq!(keys.len(), 3);
    let text = guards.to_toml();
    assert!(text.starts_with("count = 3\nlifetime_secs = 7776000\n\n[[guard]]\nkey = \""));
    assert_eq!(Guards::from_toml(&text).unwrap(), guards);
    let serde_text = toml::to_string(&guards).unwrap();
    assert_eq!(toml::from_str::<Guards>(&serde_text).unwrap(), guards);
    assert_eq!(Guards::from_toml(&serde_text).unwrap(), guards);
    let empty = Guards::new(2, 60);
    assert_eq!(Guards::from_toml(&empty.to_toml()).unwrap(), empty);
    // Extreme values are capped so the file always reads back.
    let mut huge = Guards::new(usize::MAX, u64::MAX);
    huge.refresh(&mut rng(12), &cands, u64::MAX);
    assert_eq!(Guards::from_toml(&huge.to_toml()).unwrap(), huge);
}

#[test]
fn guards_bad_state() {
    let k = PublicKey(key(1));
    let guard = |k: PublicKey, t: u64| format!("\n[[guard]]\nkey = \"{k}\"\nchosen_at = {t}\n");
    let head = "count = 2\nlifetime_secs = 100\n";
    for (text, problem) in [
        (
            format!("{head}{}{}", guard(k, 1), guard(k, 2)),
            "listed twice",
        ),
        (
            format!(
                "count = 1\nlifetime_secs = 100\n{}{}",
                guard(k, 1),
                guard(PublicKey(key(2)), 1)
            ),
            "2 guards listed but count is 1",
        ),
        (format!("{head}colour = 1\n"), "unknown field"),
        (
            format!("{head}\n[[guard]]\nkey = \"AAAA\"\nchosen_at = 1\n"),
            "public key",
        ),
        (
            format!("{head}{}", guard(k, 1).replace("chosen_at", "when")),
            "unknown field",
        ),
        (
            "count = 65\nlifetime_secs = 1\n".into(),
            "count 65 is above 64",
        ),
        ("count = -1\nlifetime_secs = 1\n".into(), "invalid value"),
        ("lifetime_secs = 1\n".into(), "missing field"),
    ] {
        match Guards::from_toml(&text) {
            Err(PathError::BadGuards(msg)) => {
                assert!(msg.contains(problem), "{text:?}: {msg}")
            }
            other => panic!("{text:?}: {other:?}"),
        }
    }
}

#[test]
fn guards_expire_on_a_virtual_clock() {
    let cands = spread(50, 10);
    let mut guards = Guards::new(3, 100);
    let mut r = rng(13);
    let first = guards.refresh(&mut r, &cands, 1_000);
    for now in [1_000, 1_050, 1_099] {
        assert_eq!(guards.refresh(&mut r, &cands, now), first);
    }
    // A clock that steps back keeps them too.
    assert_eq!(guards.refresh(&mut r, &cands, 10), first);
    guards.refresh(&mut r, &cands, 1_100);
    assert_eq!(guards.guards.len(), 3);
    assert!(guards.guards.iter().all(|g| g.chosen_at == 1_100));
    // A zero lifetime renews every time.
    let mut none_kept = Guards::new(3, 0);
    none_kept.refresh(&mut r, &cands, 5);
    none_kept.refresh(&mut r, &cands, 5);
    assert!(none_kept.guards.iter().all(|g| g.chosen_at == 5));
    assert!(Guards::new(0, 100).refresh(&mut r, &cands, 5).is_empty());
}

#[test]
fn guards_replaced_when_gone() {
    let cands = spread(50, 10);
    let mut guards = Guards::new(3, 1_000);
    let mut r = rng(14);
    let first = guards.refresh(&mut r, &cands, 0);
    let gone = first[1];
    let fewer: Vec<Candidate> = cands.iter().filter(|c| c.key != gone).cloned().collect();
    let second = guards.refresh(&mut r, &fewer, 10);
    assert_eq!(second.len(), 3);
    assert_eq!(second[..2], [first[0], first[2]]);
    assert!(!second.contains(&gone));
    assert_eq!(guards.guards[2].chosen_at, 10);
    assert_eq!(guards.guards[0].chosen_at, 0);
    // An unreachable descriptor counts as gone.
    let mut unreachable = fewer.clone();
    let i = unreachable.iter().position(|c| c.key == second[0]).unwrap();
    unreachable[i].port = 0;
    let third = guards.refresh(&mut r, &unreachable, 20);
    assert_eq!(third[..2], [second[1], second[2]]);
    assert!(!third.contains(&second[0]));
}

/// Guards are gateways that are not exits while enough of those fit: a guard that
/// is an exit could be a virtual circuit's exit and start none of its legs.
#[test]
fn guards_are_not_exits_while_others_fit() {
    let cands = spread(12, 6);
    let mut r = rng(21);
    for _ in 0..50 {
        let keys = Guards::new(3, 1_000).refresh(&mut r, &cands, 0);
        assert_eq!(keys.len(), 3);
        assert!(keys
            .iter()
            .all(|k| cands.iter().any(|c| c.key == *k && !c.exit)));
    }
    // One gateway is not an exit: it and two exits.
    let few = spread(4, 3);
    let keys = Guards::new(3, 1_000).refresh(&mut r, &few, 0);
    assert_eq!(keys.len(), 3);
    assert!(keys.contains(&few[3].key));
    // Paths of one hop need a guard that is an exit: any gateway may be one.
    let one_hop = Guards::new(3, 1_000).with_rules(&rules(1));
    let exits = (0..50)
        .filter(|_| {
            let keys = one_hop.clone().refresh(&mut r, &cands, 0);
            keys.iter()
                .any(|k| cands.iter().any(|c| c.key == *k && c.exit))
        })
        .count();
    assert!(exits > 40, "{exits} of 50 sets had an exit");
}

#[test]
fn guards_never_share_a_network() {
    // 40 gateways in 4 /16s.
    let cands: Vec<Candidate> = (0..40)
        .map(|i| gw(i, v4(40, (i % 4) as u8, 0, i as u8), false))
        .collect();
    let mut r = rng(15);
    for _ in 0..100 {
        let mut guards = Guards::new(3, 1_000);
        let keys = guards.refresh(&mut r, &cands, 0);
        assert_eq!(keys.len(), 3);
        let nets: HashSet<u8> = keys.iter().map(|k| k[0] % 4).collect();
        assert_eq!(nets.len(), 3);
    }
    // Only two /16s: two guards.
    let two: Vec<Candidate> = cands.iter().filter(|c| c.key[0] % 4 < 2).cloned().collect();
    assert_eq!(Guards::new(3, 1_000).refresh(&mut r, &two, 0).len(), 2);
    // A guard that moves into an older guard's /16 is dropped and replaced.
    let mut guards = Guards::new(2, 1_000);
    let keys = guards.refresh(&mut r, &cands, 0);
    let mut moved = cands.clone();
    let older = cands.iter().find(|c| c.key == keys[0]).unwrap().addrs[0];
    let i = moved.iter().position(|c| c.key == keys[1]).unwrap();
    moved[i].addrs = vec![older];
    let after = guards.refresh(&mut r, &moved, 1);
    assert_eq!(after[0], keys[0]);
    assert_ne!(after[1], keys[1]);
}

proptest! {
    #[test]
    fn guards_obey_rules(
        cands in prop::collection::vec(arb_candidate(), 0..30),
        count in 0usize..5,
        seed in any::<u64>(),
        steps in prop::collection::vec((0u64..50, 0usize..30), 1..6),
    ) {
        let mut guards = Guards::new(count, 60);
        let mut r = rng(seed);
        let mut now = 0;
        let mut view = cands.clone();
        for (dt, drop) in steps {
            now += dt;
            if drop < view.len() {
                view.remove(drop);
            }
            let keys = guards.refresh(&mut r, &view, now);
            prop_assert!(keys.len() <= count);
            let found: Vec<&Candidate> = keys
                .iter()
                .map(|k| view.iter().find(|c| c.key == *k && reachable(c)).unwrap())
                .collect();
            for (i, a) in found.iter().enumerate() {
                for b in &found[i + 1..] {
                    prop_assert!(!conflict(a, b, Subnets::default()));
                }
            }
            prop_assert_eq!(Guards::from_toml(&guards.to_toml()).unwrap(), guards.clone());
        }
    }
}

/// A leg's path ends at the VC's exit, whichever other exits there are, starts at a
/// guard when there are guards, and uses only the candidates it is given (the
/// caller leaves the other legs' gateways out).
#[test]
fn a_legs_path_ends_at_the_given_exit() {
    let cands = spread(10, 4);
    let guards = [key(6), key(7)];
    for seed in 0..50 {
        let exit = key(seed as usize % 4);
        let path = select_leg(&mut rng(seed), &cands, &rules(3), &guards, exit).unwrap();
        assert_eq!(cands[path[2]].key, exit, "seed {seed}");
        assert!(guards.contains(&cands[path[0]].key), "seed {seed}");
        assert!(valid(&cands, &path, &guards, None), "seed {seed}");
    }
    // The exit is no candidate (left out, or never known), or not an exit.
    let without: Vec<Candidate> = cands.iter().filter(|c| c.key != key(0)).cloned().collect();
    assert_eq!(
        select_leg(&mut rng(1), &without, &rules(3), &[], key(0)),
        Err(PathError::NoExit { port: None })
    );
    assert_eq!(
        select_leg(&mut rng(1), &cands, &rules(3), &[], key(8)),
        Err(PathError::NoExit { port: None })
    );
}
