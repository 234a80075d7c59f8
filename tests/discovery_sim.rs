//! Convergence of peer-to-peer discovery: how fast a new client learns a network of
//! 10,000 gateways that gossip among themselves, and what lying gateways achieve.
//! Prints a markdown table (`cargo test --test discovery_sim -- --nocapture`); the
//! table in `docs/SECURITY.md` comes from this test.
//!
//! The client runs the real code end to end: its `Crawler` picks the gateways, every
//! answer is made of real payload bytes (by an honest gateway's real `Server`, or
//! forged by a liar), and its `Store` verifies and caps what arrives. Calls stand in
//! for circuits: a query reaches the gateway only if one of the addresses the client
//! has for the key (`Store::addresses`: the held descriptor's, then a contender's)
//! belongs to the gateway with that onion key (elsewhere the NK handshake cannot
//! complete and the query times out); 1% of payloads are lost.
//!
//! Time runs in rounds of 10 client steps: a step is one query round trip (1 s),
//! with 3 queries open; a round is the gateways' gossip interval (10 s).
//! Gateway gossip is simulated with sampling to stay fast: each round every gateway
//! asks one random peer it knows and learns what that peer's `Server` would send,
//! the peer's own descriptor and a uniform sample of the others it knows (63 of
//! them), tracked as sets of gateway numbers. When the client asks a gateway, that
//! gateway's answer comes from a real `Store` holding its own descriptor and a
//! uniform sample of 64 of the gateways it knows, which its `Server` answers from
//! (its own descriptor first, then 63 of the sample: a uniform sample of what it
//! knows, as from its full store).
//!
//! Scenarios: all gateways honest; 10% refusing to share; 5% liars. Unless a
//! scenario says otherwise, the client asks every gateway but its bootstrap one
//! through that gateway (its via, PROTOCOL §11), so only the bootstrap gateway sees
//! its address. Liars answer
//! gossip with liars only, and answer the client with 64 descriptors: their own, 23
//! of other liars, and forgeries (4 honest descriptors with a broken signature, 4
//! expired ones, 1 claim on an honest onion key by the liar's own identity, 15 claims
//! on honest onion keys and 16 new gateways by fresh identities). The fresh
//! identities' addresses are in 4 /24s of the liars' ("packed"), or, in the last
//! scenario, the claims on honest keys are spread over the liars' own /24s. The
//! last three scenarios measure the exposure the via removes: the client asking
//! every gateway directly, and liars who lie only to the client, which they can
//! tell by its address when it asks them directly and cannot through the via.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anonnet::discovery::{Crawler, Message, Progress, Server, Session, Source, Store, StoreLimits};
use anonnet::proto::descriptor::Descriptor;
use anonnet::proto::descriptor::PaddingBudget;
use anonnet::proto::identity::Identity;
use ed25519_dalek::SigningKey;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Gateways in the network.
const N: usize = 10_000;
/// Descriptors of others each gateway starts with.
const BOOTSTRAP: usize = 8;
/// Descriptors asked for per query, by the client and in gossip.
const PER_QUERY: u8 = 64;
/// The client's open queries.
const PARALLEL: usize = 3;
/// A query's round trip (circuit build, request, answer): one step of the client.
const STEP: Duration = Duration::from_secs(1);
/// Client steps per gossip round: every gateway gossips once per 10 s.
const STEPS: u64 = 10;
/// The client's query timeout.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Payloads lost on the way to the client, per mille.
const LOSS_PER_MILLE: u32 = 10;
/// Rounds simulated at most.
const MAX_ROUNDS: u64 = 100;
/// Start of the virtual clock (unix seconds).
const T0: u64 = 1_700_000_000;
/// The /24s the liars' fresh identities use (`45.67.x.0/24`).
const SYBIL_NETS: u8 = 4;
/// Rounds within which the honest network must take the client to 99%.
const HONEST_BOUND: u64 = 80;

/// What a gateway does with requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Honest,
    Refusing,
    Liar,
}

/// Where liars put the claims on honest onion keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Squats {
    /// In the fresh identities' few /24s.
    Packed,
    /// In the liars' own /24s.
    Spread,
}

/// Whom liars lie to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lies {
    /// Everyone: they answer gossip with liars only, and the client with forgeries.
    Everyone,
    /// The client alone, when they see its address: otherwise (gossip, and queries
    /// that reach them through a via) they behave as honest gateways, so nobody else
    /// sees them lie.
    TheClient,
}

/// How the client reaches the gateways it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asks {
    /// Each gateway directly: every address tried sees the client's (the crawl
    /// before PROTOCOL §11's via).
    Directly,
    /// Through the bootstrap gateway: only the bootstrap gateway sees the client's
    /// address.
    ThroughVia,
}

struct Scenario {
    name: &'static str,
    seed: u64,
    refusing_per_mille: usize,
    liars_per_mille: usize,
    squats: Squats,
    lies: Lies,
    asks: Asks,
}

/// The network: every gateway's keys and signed descriptor.
struct Network {
    keys: Vec<[u8; 32]>,
    identities: Vec<[u8; 32]>,
    signers: Vec<SigningKey>,
    addrs: Vec<IpAddr>,
    /// Every descriptor, verified once.
    all: Store,
    owner: HashMap<IpAddr, usize>,
}

fn build_network() -> Network {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut all = Store::new(StoreLimits {
        max_total: N,
        ..StoreLimits::default()
    });
    let mut net = Network {
        keys: Vec::with_capacity(N),
        identities: Vec::with_capacity(N),
        signers: Vec::with_capacity(N),
        addrs: Vec::with_capacity(N),
        all: Store::default(),
        owner: HashMap::new(),
    };
    for i in 0..N {
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let identity = Identity::from_secret(secret);
        let signer = identity.signing_key();
        // One /24 per gateway: 11.(i / 256).(i % 256).1.
        let addr = IpAddr::V4(Ipv4Addr::new(11, (i >> 8) as u8, i as u8, 1));
        let exit = i % 3 == 0;
        let descriptor = Descriptor {
            identity: signer.verifying_key().to_bytes(),
            onion_key: identity.public().0,
            addrs: vec![addr],
            ports: (51820, 51820),
            exit,
            policy_summary: if exit {
                "reject 25,119,135-139,445".into()
            } else {
                String::new()
            },
            published: T0 - 600,
            expires: T0 + 6 * 3600,
            padding: PaddingBudget {
                rate: 1_250_000,
                share: 50,
            },
        };
        let bytes = descriptor.sign(&signer).expect("valid descriptor");
        all.insert(&bytes, T0, Source::Bootstrap)
            .expect("descriptor accepted");
        net.keys.push(descriptor.onion_key);
        net.identities.push(descriptor.identity);
        net.signers.push(signer);
        net.addrs.push(addr);
        net.owner.insert(addr, i);
    }
    net.all = all;
    net
}

/// A uniform integer in `0..n` (bias below 2^-32 · n, irrelevant here).
fn below(rng: &mut impl RngCore, n: usize) -> usize {
    ((u64::from(rng.next_u32()) * n as u64) >> 32) as usize
}

/// SplitMix64: a fast generator for the gossip model's millions of draws.
struct Fast(u64);

impl RngCore for Fast {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_chacha::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// Marks for drawing without replacement: `epoch` changes per draw.
struct Marks {
    stamp: Vec<u32>,
    epoch: u32,
}

impl Marks {
    fn start(&mut self) {
        self.epoch += 1;
    }

    /// Marks `i`; false if it was already marked in this draw.
    fn mark(&mut self, i: u32) -> bool {
        let slot = &mut self.stamp[i as usize];
        let fresh = *slot != self.epoch;
        *slot = self.epoch;
        fresh
    }
}

/// The gateways one gateway knows: a bit set, and a list while the set is sparse.
#[derive(Clone)]
struct Known {
    bits: Vec<u64>,
    list: Vec<u32>,
    count: usize,
}

impl Known {
    fn new() -> Self {
        Known {
            bits: vec![0; N.div_ceil(64)],
            list: Vec::new(),
            count: 0,
        }
    }

    fn dense(&self) -> bool {
        self.count * 8 >= N
    }

    fn has(&self, i: u32) -> bool {
        self.bits[i as usize / 64] & (1 << (i % 64)) != 0
    }

    fn add(&mut self, i: u32) {
        if self.has(i) {
            return;
        }
        self.bits[i as usize / 64] |= 1 << (i % 64);
        self.count += 1;
        if self.dense() {
            self.list = Vec::new();
        } else {
            self.list.push(i);
        }
    }

    /// Up to `k` distinct known gateways other than `exclude`, uniformly.
    fn sample(
        &self,
        rng: &mut Fast,
        k: usize,
        exclude: u32,
        marks: &mut Marks,
        out: &mut Vec<u32>,
    ) {
        out.clear();
        let available = self.count - usize::from(self.has(exclude));
        if available <= k {
            out.extend(self.list.iter().copied().filter(|&i| i != exclude));
            return;
        }
        marks.start();
        while out.len() < k {
            let i = if self.dense() {
                let i = below(rng, N) as u32;
                if !self.has(i) {
                    continue;
                }
                i
            } else {
                self.list[below(rng, self.list.len())]
            };
            if i != exclude && marks.mark(i) {
                out.push(i);
            }
        }
    }
}

/// Forges descriptors with fresh identities.
struct Forger {
    rng: ChaCha20Rng,
}

impl Forger {
    fn sign(
        &mut self,
        signer: &SigningKey,
        onion_key: [u8; 32],
        addr: IpAddr,
        published: u64,
        expires: u64,
    ) -> Vec<u8> {
        Descriptor {
            identity: signer.verifying_key().to_bytes(),
            onion_key,
            addrs: vec![addr],
            ports: (443, 443),
            exit: false,
            policy_summary: String::new(),
            published,
            expires,
            padding: PaddingBudget {
                rate: 1_250_000,
                share: 50,
            },
        }
        .sign(signer)
        .expect("valid forgery")
    }

    fn fresh_signer(&mut self) -> SigningKey {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        SigningKey::from_bytes(&seed)
    }

    fn fresh_key(&mut self) -> [u8; 32] {
        let mut key = [0u8; 32];
        self.rng.fill_bytes(&mut key);
        key
    }

    fn sybil_addr(&mut self) -> IpAddr {
        let net = (self.rng.next_u32() % u32::from(SYBIL_NETS)) as u8;
        let host = 1 + (self.rng.next_u32() % 254) as u8;
        IpAddr::V4(Ipv4Addr::new(45, 67, net, host))
    }
}

/// When the client first knew a share of the gateways.
#[derive(Clone, Copy, Default)]
struct Milestone {
    round: Option<u64>,
    queries: u64,
    bytes: u64,
    /// Share of liars among the gateways the client knows then, in percent.
    liars: f64,
}

struct Outcome {
    name: &'static str,
    denominator: usize,
    milestones: [Milestone; 3],
    rounds: u64,
    known: usize,
    queries: u64,
    refused: u64,
    timed_out: u64,
    bytes: u64,
    sybils_held: usize,
    sybil_bound: usize,
    squats_held: usize,
    liars_at_end: f64,
    rejected: String,
    gateway_known_median: usize,
    /// Addresses that saw the client's, and how many of them are liars'.
    exposed: usize,
    exposed_to_liars: usize,
}

const SHARES: [f64; 3] = [0.50, 0.90, 0.99];

fn run(net: &Network, scenario: &Scenario, seed: u64) -> Outcome {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut fast = Fast(seed);
    let mut roles = vec![Role::Honest; N];
    let mut order: Vec<usize> = (0..N).collect();
    for i in (1..N).rev() {
        order.swap(i, below(&mut rng, i + 1));
    }
    let liars_n = N * scenario.liars_per_mille / 1000;
    let refusing_n = N * scenario.refusing_per_mille / 1000;
    for &i in &order[..liars_n] {
        roles[i] = Role::Liar;
    }
    for &i in &order[liars_n..liars_n + refusing_n] {
        roles[i] = Role::Refusing;
    }
    let liars: Vec<u32> = (0..N as u32)
        .filter(|&i| roles[i as usize] == Role::Liar)
        .collect();
    let mut liar_set = Known::new();
    for &i in &liars {
        liar_set.add(i);
    }

    // Every gateway starts with its own descriptor and BOOTSTRAP random others.
    let mut known = vec![Known::new(); N];
    for (i, k) in known.iter_mut().enumerate() {
        k.add(i as u32);
        while k.count < 1 + BOOTSTRAP {
            k.add(below(&mut fast, N) as u32);
        }
    }
    let mut marks = Marks {
        stamp: vec![0; N],
        epoch: 0,
    };
    let mut servers: Vec<Server> = roles
        .iter()
        .map(|&role| Server::new(role != Role::Refusing, 10))
        .collect();
    let mut forger = Forger {
        rng: ChaCha20Rng::seed_from_u64(seed ^ 0xf0f0),
    };

    // The client bootstraps from one honest gateway.
    let entry = order[liars_n + refusing_n];
    let mut client = Store::default();
    client
        .insert_entry(
            net.all.get(&net.keys[entry]).expect("entry gateway"),
            T0,
            Source::Bootstrap,
        )
        .expect("bootstrap accepted");
    let mut crawler = Crawler::new(usize::MAX, PER_QUERY, TIMEOUT).with_parallel(PARALLEL);
    // Addresses that saw the client's: the bootstrap gateway's, and through a via
    // no other.
    let mut exposed: HashSet<IpAddr> = HashSet::from([net.addrs[entry]]);
    let counted: Vec<usize> = (0..N).filter(|&i| roles[i] != Role::Liar).collect();
    let denominator = counted.len();
    let base = Instant::now();
    let mut milestones = [Milestone::default(); 3];
    let mut scratch = Vec::with_capacity(64);
    let mut round = 0;
    let mut learned = 0;
    while round < MAX_ROUNDS && milestones[2].round.is_none() {
        round += 1;

        // Gossip: every gateway but the liars asks one random peer it knows; liars
        // who lie to the client alone gossip as honest gateways do.
        let lies_in_gossip = scenario.lies == Lies::Everyone;
        for g in 0..N {
            if roles[g] == Role::Liar && lies_in_gossip {
                continue;
            }
            known[g].sample(&mut fast, 1, g as u32, &mut marks, &mut scratch);
            let Some(&peer) = scratch.first() else {
                continue;
            };
            match roles[peer as usize] {
                Role::Refusing => continue,
                Role::Liar if lies_in_gossip => {
                    liar_set.sample(&mut fast, 63, peer, &mut marks, &mut scratch)
                }
                Role::Liar | Role::Honest => {
                    known[peer as usize].sample(&mut fast, 63, peer, &mut marks, &mut scratch)
                }
            }
            known[g].add(peer);
            for &i in &scratch {
                known[g].add(i);
            }
        }

        // The client: STEPS times, timeouts, new queries and their answers.
        for step in 0..STEPS {
            let now = base + STEP * ((round - 1) * STEPS + step) as u32;
            let now_unix = T0 + (round - 1) * STEPS + step;
            crawler.on_timeout(now);
            let mut answers: Vec<([u8; 32], Vec<Vec<u8>>)> = Vec::new();
            while let Some(key) = crawler.next_query(now, &mut rng, &client) {
                let tried = client.addresses(&key);
                if scenario.asks == Asks::Directly {
                    exposed.extend(tried.iter().map(|a| a.ip()));
                }
                let reached = tried
                    .iter()
                    .filter_map(|addr| net.owner.get(&addr.ip()).copied())
                    .find(|&g| net.keys[g] == key);
                let Some(g) = reached else {
                    // Nobody at these addresses holds the onion key: the circuit is
                    // never built and the query times out.
                    continue;
                };
                let mut out = Vec::new();
                // A liar lies to the client if it lies to everyone, or if it sees
                // the client's address.
                let lies = match scenario.lies {
                    Lies::Everyone => true,
                    Lies::TheClient => scenario.asks == Asks::Directly,
                };
                if roles[g] == Role::Liar && lies {
                    liar_answer(
                        net,
                        g,
                        &liars,
                        scenario.squats,
                        now_unix,
                        &mut rng,
                        &mut forger,
                        &mut out,
                    );
                } else {
                    let mut store = Store::default();
                    store
                        .insert_entry(net.all.get(&key).expect("own"), now_unix, Source::Own)
                        .expect("own descriptor");
                    known[g].sample(&mut fast, 64, g as u32, &mut marks, &mut scratch);
                    for &i in &scratch {
                        let entry = net.all.get(&net.keys[i as usize]).expect("known");
                        store
                            .insert_entry(entry, now_unix, Source::Bootstrap)
                            .expect("sample fits");
                    }
                    servers[g].handle(
                        now,
                        &mut rng,
                        &store,
                        &mut Session::default(),
                        &crawler.request(),
                        &mut out,
                    );
                }
                answers.push((key, out));
            }
            for (key, payloads) in answers {
                for payload in payloads {
                    if rng.next_u32() % 1000 < LOSS_PER_MILLE {
                        continue;
                    }
                    let progress = crawler.on_payload(&key, &payload, &mut client, now_unix);
                    assert_ne!(
                        progress,
                        Progress::Violation,
                        "answers keep to the protocol"
                    );
                }
            }
        }
        learned = counted
            .iter()
            .filter(|&&g| {
                client
                    .get(&net.keys[g])
                    .is_some_and(|e| e.descriptor().identity == net.identities[g])
            })
            .count();
        for (milestone, share) in milestones.iter_mut().zip(SHARES) {
            if milestone.round.is_none() && learned as f64 >= share * denominator as f64 {
                *milestone = Milestone {
                    round: Some(round),
                    queries: crawler.stats().queries,
                    bytes: crawler.stats().bytes_received,
                    liars: liar_share(net, &client, &liars, learned),
                };
            }
        }
    }

    // What the client holds of the forgeries, contenders included: fresh identities
    // (in the 4 packed /24s, or also in the liars' /24s when spread), and honest keys
    // held by another identity at the end.
    let identities: HashSet<[u8; 32]> = net.identities.iter().copied().collect();
    let contenders = client.contested().filter_map(|key| client.contender(key));
    let sybils_held = client
        .iter()
        .chain(contenders)
        .filter(|e| !identities.contains(&e.descriptor().identity))
        .count();
    let squats_held = counted
        .iter()
        .filter(|&&g| {
            client
                .get(&net.keys[g])
                .is_some_and(|e| e.descriptor().identity != net.identities[g])
        })
        .count();
    let per_prefix = client.limits().per_prefix;
    let sybil_bound = match scenario.squats {
        _ if liars.is_empty() => 0,
        Squats::Packed => per_prefix * usize::from(SYBIL_NETS),
        Squats::Spread => per_prefix * (usize::from(SYBIL_NETS) + liars.len()),
    };
    let s = client.stats();
    let rejected = if s.rejected() == s.duplicate {
        "duplicates only".into()
    } else {
        format!(
            "{} bad signature, {} expired, {} other identity, {} identity reused, {} /24 cap",
            s.bad_signature, s.arrived_expired, s.other_identity, s.identity_in_use, s.prefix_cap
        )
    };
    let mut sizes: Vec<usize> = (0..N)
        .filter(|&g| roles[g] != Role::Liar)
        .map(|g| known[g].count)
        .collect();
    sizes.sort_unstable();
    let stats = crawler.stats();
    let exposed_to_liars = exposed
        .iter()
        .filter(|a| net.owner.get(a).is_none_or(|&g| roles[g] == Role::Liar))
        .count();
    Outcome {
        name: scenario.name,
        denominator,
        milestones,
        rounds: round,
        known: learned,
        queries: stats.queries,
        refused: stats.refused,
        timed_out: stats.timed_out,
        bytes: stats.bytes_received,
        sybils_held,
        sybil_bound,
        squats_held,
        liars_at_end: liar_share(net, &client, &liars, learned),
        rejected,
        gateway_known_median: sizes[sizes.len() / 2],
        exposed: exposed.len(),
        exposed_to_liars,
    }
}

/// Liars among the gateways the client knows (liars and `learned` others), in
/// percent.
fn liar_share(net: &Network, client: &Store, liars: &[u32], learned: usize) -> f64 {
    let known = liars
        .iter()
        .filter(|&&g| client.get(&net.keys[g as usize]).is_some())
        .count();
    100.0 * known as f64 / (known + learned).max(1) as f64
}

/// A liar's answer to the client: 64 descriptors and an End.
#[allow(clippy::too_many_arguments)]
fn liar_answer(
    net: &Network,
    liar: usize,
    liars: &[u32],
    squats: Squats,
    now_unix: u64,
    rng: &mut ChaCha20Rng,
    forger: &mut Forger,
    out: &mut Vec<Vec<u8>>,
) {
    let desc = |bytes: &[u8]| Message::Desc(bytes).to_vec();
    let bytes_of = |g: usize| net.all.get(&net.keys[g]).expect("gateway").bytes().to_vec();
    let honest = |rng: &mut ChaCha20Rng| loop {
        let g = below(rng, N);
        if !liars.contains(&(g as u32)) {
            return g;
        }
    };
    let published = now_unix - 60;
    let expires = now_unix + 6 * 3600;
    out.push(desc(&bytes_of(liar)));
    for _ in 0..23 {
        out.push(desc(&bytes_of(liars[below(rng, liars.len())] as usize)));
    }
    for _ in 0..4 {
        let mut broken = bytes_of(honest(rng));
        let last = broken.len() - 1;
        broken[last] ^= 0x01;
        out.push(desc(&broken));
    }
    for _ in 0..4 {
        let signer = forger.fresh_signer();
        let (key, addr) = (forger.fresh_key(), forger.sybil_addr());
        out.push(desc(&forger.sign(
            &signer,
            key,
            addr,
            now_unix - 7200,
            now_unix - 1,
        )));
    }
    let own_claim = forger.sign(
        &net.signers[liar],
        net.keys[honest(rng)],
        net.addrs[liar],
        published,
        expires,
    );
    out.push(desc(&own_claim));
    for _ in 0..15 {
        let signer = forger.fresh_signer();
        let addr = match squats {
            Squats::Packed => forger.sybil_addr(),
            Squats::Spread => {
                let IpAddr::V4(a) = net.addrs[liars[below(rng, liars.len())] as usize] else {
                    unreachable!("gateways have IPv4 addresses")
                };
                let o = a.octets();
                IpAddr::V4(Ipv4Addr::new(
                    o[0],
                    o[1],
                    o[2],
                    2 + (rng.next_u32() % 250) as u8,
                ))
            }
        };
        let key = net.keys[honest(rng)];
        out.push(desc(&forger.sign(&signer, key, addr, published, expires)));
    }
    for _ in 0..16 {
        let signer = forger.fresh_signer();
        let (key, addr) = (forger.fresh_key(), forger.sybil_addr());
        out.push(desc(&forger.sign(&signer, key, addr, published, expires)));
    }
    out.push(Message::End { sent: 64 }.to_vec());
}

/// When a share was reached: round, queries, bytes and, with liars, their share of
/// the client's view.
fn cell(m: &Milestone, with_liars: bool) -> String {
    let Some(round) = m.round else {
        return "not reached".into();
    };
    let mut text = format!(
        "round {round}: {} queries, {:.1} MB",
        m.queries,
        m.bytes as f64 / 1e6
    );
    if with_liars {
        text.push_str(&format!(", {:.1}% liars", m.liars));
    }
    text
}

#[test]
fn discovery_convergence() {
    let started = Instant::now();
    let net = build_network();
    let built = started.elapsed();
    let scenario = |name, seed, refusing_per_mille, liars_per_mille, squats, lies, asks| Scenario {
        name,
        seed,
        refusing_per_mille,
        liars_per_mille,
        squats,
        lies,
        asks,
    };
    let (packed, spread, everyone, client) = (
        Squats::Packed,
        Squats::Spread,
        Lies::Everyone,
        Lies::TheClient,
    );
    let (direct, via) = (Asks::Directly, Asks::ThroughVia);
    let scenarios = [
        scenario("all honest", 100, 0, 0, packed, everyone, via),
        scenario("10% refuse to share", 101, 100, 0, packed, everyone, via),
        scenario(
            "5% liars, forgeries packed in 4 /24s",
            102,
            0,
            50,
            packed,
            everyone,
            via,
        ),
        scenario(
            "5% liars, key claims spread over their /24s",
            103,
            0,
            50,
            spread,
            everyone,
            via,
        ),
        scenario(
            "all honest, every gateway asked directly (before the via)",
            100,
            0,
            0,
            packed,
            everyone,
            direct,
        ),
        scenario(
            "5% liars lying to the client alone, asked directly (before the via)",
            104,
            0,
            50,
            packed,
            client,
            direct,
        ),
        scenario(
            "5% liars lying to the client alone, asked through the via",
            104,
            0,
            50,
            packed,
            client,
            via,
        ),
    ];
    let outcomes: Vec<Outcome> = scenarios.iter().map(|s| run(&net, s, s.seed)).collect();

    println!();
    println!("| scenario | 50% known | 90% known | 99% known | at the end | refused, timed out | rejected by the client | fresh identities held (bound) | honest keys held by a forger | gateways' median view | addresses that saw the client's (liars') |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (o, s) in outcomes.iter().zip(&scenarios) {
        let with_liars = s.liars_per_mille > 0;
        let end = Milestone {
            round: Some(o.rounds),
            queries: o.queries,
            bytes: o.bytes,
            liars: o.liars_at_end,
        };
        println!(
            "| {} | {} | {} | {} | {:.1}% of {}, {} | {}, {} | {} | {} ({}) | {} | {} | {} ({}) |",
            o.name,
            cell(&o.milestones[0], with_liars),
            cell(&o.milestones[1], with_liars),
            cell(&o.milestones[2], with_liars),
            100.0 * o.known as f64 / o.denominator as f64,
            o.denominator,
            cell(&end, with_liars),
            o.refused,
            o.timed_out,
            o.rejected,
            o.sybils_held,
            o.sybil_bound,
            o.squats_held,
            o.gateway_known_median,
            o.exposed,
            o.exposed_to_liars,
        );
    }
    println!();
    println!(
        "network built in {:.1} s, total {:.1} s",
        built.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    let honest = &outcomes[0];
    assert!(
        honest.milestones[2]
            .round
            .is_some_and(|r| r <= HONEST_BOUND),
        "honest network: 99% within {HONEST_BOUND} rounds"
    );
    assert!(outcomes[1].milestones[2]
        .round
        .is_some_and(|r| r <= HONEST_BOUND));
    for o in &outcomes[2..4] {
        assert!(
            o.known as f64 >= 0.9 * o.denominator as f64,
            "{}: learned {} of {} honest gateways",
            o.name,
            o.known,
            o.denominator
        );
        assert!(o.sybils_held <= o.sybil_bound, "{}", o.name);
    }
    assert_eq!(outcomes[0].sybils_held + outcomes[0].squats_held, 0);

    // Through the via only the bootstrap gateway saw the client's address; asked
    // directly, every gateway asked did.
    for (o, s) in outcomes.iter().zip(&scenarios) {
        match s.asks {
            Asks::ThroughVia => assert_eq!(o.exposed, 1, "{}", o.name),
            Asks::Directly => assert!(o.exposed as u64 >= o.queries, "{}", o.name),
        }
    }
    // Liars that lie to the client alone reach it when they see its address, and
    // never through the via: nothing forged arrives, and its view holds liars in
    // their share of the network.
    let (targeted, hidden) = (&outcomes[5], &outcomes[6]);
    assert!(
        targeted.rejected.contains("bad signature"),
        "{}",
        targeted.rejected
    );
    assert_eq!(hidden.rejected, "duplicates only");
    assert_eq!(hidden.squats_held + hidden.sybils_held, 0);
    assert!(hidden.liars_at_end < 5.5, "{}", hidden.liars_at_end);
    assert!(
        hidden.milestones[2]
            .round
            .is_some_and(|r| r <= HONEST_BOUND),
        "through the via, targeting liars cannot slow the crawl"
    );
}
