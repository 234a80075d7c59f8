//! Sybil exposure of path selection: how often an adversary running a share of the
//! gateways holds both the entry and the exit of a client's 3-hop circuit, measured
//! by running the real `select_path` and `Guards` code over a simulated network of
//! 1,000 gateways (30% exits), and compared with the analytic expectation for the
//! algorithm. Prints a markdown table (`cargo test --test sybil -- --nocapture`); the
//! table in `docs/SECURITY.md` comes from this test.
//!
//! Adversaries:
//! - spread: hostile gateways in distinct /16s like honest ones (the /16 rule cannot
//!   see them);
//! - packed: all hostile gateways in one /16 (the rule keeps them off a shared path);
//! - lying: spread, and discovery shows the client every hostile gateway but only half
//!   of the honest ones.

use std::net::{IpAddr, Ipv4Addr};

use anonnet::client::path::{select_path, Guards, PathLength, PathRules, Subnets};
use anonnet::discovery::Candidate;
use anonnet::proto::descriptor::PaddingBudget;
use anonnet::proto::ports::PortSummary;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Gateways in the network.
const N: usize = 1_000;
/// Exits per 1,000 gateways, honest and hostile alike.
const EXIT_PER_MILLE: usize = 300;
/// Circuits of fresh clients for the per-circuit share.
const CIRCUITS: usize = 20_000;
/// Clients, and circuits each, for the per-client share.
const CLIENTS: usize = 2_000;
const CIRCUITS_PER_CLIENT: usize = 100;
/// Guard parameters of the simulated clients.
const GUARDS: usize = 3;
const GUARD_LIFETIME: u64 = 90 * 86_400;
/// Destination port of every circuit.
const PORT: u16 = 443;
/// Start of the virtual clock (unix seconds). A client makes one circuit an hour and
/// refreshes its gateway list, and so its guards, once a day.
const T0: u64 = 1_700_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adversary {
    Spread,
    Packed,
    Lying,
}

impl Adversary {
    fn name(self) -> &'static str {
        match self {
            Adversary::Spread => "spread over /16s",
            Adversary::Packed => "packed in one /16",
            Adversary::Lying => "spread + lying discovery",
        }
    }
}

/// A client's view of the network and which of its gateways are hostile.
struct View {
    candidates: Vec<Candidate>,
    hostile: Vec<bool>,
}

impl View {
    fn count(&self, pred: impl Fn(&Candidate, bool) -> bool) -> usize {
        self.candidates
            .iter()
            .zip(&self.hostile)
            .filter(|(c, &h)| pred(c, h))
            .count()
    }
}

fn key(n: usize) -> [u8; 32] {
    let mut k = [0xa5; 32];
    k[..8].copy_from_slice(&(n as u64).to_le_bytes());
    k
}

fn addr(a: usize, b: usize, c: usize, d: usize) -> IpAddr {
    let octet = |x: usize| u8::try_from(x).expect("octet");
    IpAddr::V4(Ipv4Addr::new(octet(a), octet(b), octet(c), octet(d)))
}

/// The network as the client sees it: `hostile` of the `N` gateways are hostile, 30%
/// of each kind are exits; honest gateway `j` sits alone in /16 `(11 + j / 256).(j %
/// 256)`; hostile ones sit alone in /16s from `100.0` on (spread) or share `200.1`
/// (packed). Lying discovery hides every second honest gateway.
fn view(hostile: usize, adversary: Adversary) -> View {
    let honest = N - hostile;
    let summary: PortSummary = "reject 25,119,135-139,445".parse().expect("summary");
    let mut candidates = Vec::new();
    let mut flags = Vec::new();
    let mut push = |n: usize, addr: IpAddr, exit: bool, bad: bool| {
        candidates.push(Candidate {
            key: key(n),
            addrs: vec![addr],
            port: 51820,
            exit,
            exit_ports: exit.then(|| summary.clone()),
            padding: PaddingBudget {
                rate: 1_250_000,
                share: 50,
            },
        });
        flags.push(bad);
    };
    for i in 0..hostile {
        let exit = i < hostile * EXIT_PER_MILLE / 1_000;
        let a = match adversary {
            Adversary::Packed => addr(200, 1, i / 256, i % 256),
            Adversary::Spread | Adversary::Lying => addr(100 + i / 256, i % 256, 0, 1),
        };
        push(i, a, exit, true);
    }
    for j in 0..honest {
        if adversary == Adversary::Lying && j % 2 == 1 {
            continue;
        }
        let exit = j < honest * EXIT_PER_MILLE / 1_000;
        push(hostile + j, addr(11 + j / 256, j % 256, 0, 1), exit, false);
    }
    // Discovery order says nothing about the gateways: shuffle.
    let mut rng = ChaCha20Rng::seed_from_u64(hostile as u64);
    for i in (1..candidates.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        candidates.swap(i, j);
        flags.swap(i, j);
    }
    View {
        candidates,
        hostile: flags,
    }
}

/// Probability that a fresh client's circuit has a hostile entry and exit, for the
/// algorithm as specified: guards are drawn one by one, uniformly among gateways that
/// share no /16 with an earlier guard; the exit uniformly among all exits; the entry
/// uniformly among the guards outside the exit's /16. The view has `n` gateways,
/// `exits` exits of which `hostile_exits` are hostile; honest gateways are alone in
/// their /16s and the `hostile` ones fill `blocks` /16s equally (`blocks == hostile`
/// when spread).
fn expected_share(
    n: usize,
    hostile: usize,
    blocks: usize,
    exits: usize,
    hostile_exits: usize,
) -> f64 {
    let size = hostile / blocks;
    let honest = n - hostile;
    // dist[j][c]: probability of j hostile blocks and c honest gateways among the guards.
    let mut dist = vec![vec![0.0f64; GUARDS + 1]; GUARDS + 1];
    dist[0][0] = 1.0;
    for _ in 0..GUARDS {
        let mut next = vec![vec![0.0f64; GUARDS + 1]; GUARDS + 1];
        for j in 0..=GUARDS {
            for c in 0..=GUARDS {
                let p = dist[j][c];
                if p == 0.0 {
                    continue;
                }
                let bad = (blocks - j) * size;
                let good = honest - c;
                let avail = (bad + good) as f64;
                next[j + 1][c] += p * bad as f64 / avail;
                next[j][c + 1] += p * good as f64 / avail;
            }
        }
        dist = next;
    }
    let g = GUARDS as f64;
    let mut entry_hostile = 0.0;
    for (j, row) in dist.iter().enumerate() {
        let pj: f64 = row.iter().sum();
        let j = j as f64;
        // The exit's block is among the guards' blocks with probability j / blocks;
        // then that guard is excluded.
        let in_exit_block = j / blocks as f64;
        let with = if j >= 1.0 { (j - 1.0) / (g - 1.0) } else { 0.0 };
        entry_hostile += pj * (in_exit_block * with + (1.0 - in_exit_block) * j / g);
    }
    hostile_exits as f64 / exits as f64 * entry_hostile
}

/// Probability that a client keeping one set of guards for all its circuits has at
/// least one circuit with a hostile entry and exit, in a view where every gateway is
/// alone in its /16 (spread, lying). The guards are a uniform 3-subset; with `a`
/// hostile exits and `b` hostile non-exits among them, a circuit is compromised with
/// probability `q = ((he - a)(a + b) / 3 + a (a + b - 1) / 2) / exits`: the exit is
/// hostile, and the entry is drawn from the guards other than the exit.
fn expected_clients_guards(n: usize, exits: usize, hostile_exits: usize, hostile: usize) -> f64 {
    let kinds = [hostile_exits, hostile - hostile_exits, n - hostile];
    // dist[a][b]: probability of a hostile exits and b hostile non-exits as guards.
    let mut dist = vec![vec![0.0f64; GUARDS + 1]; GUARDS + 1];
    dist[0][0] = 1.0;
    for step in 0..GUARDS {
        let mut next = vec![vec![0.0f64; GUARDS + 1]; GUARDS + 1];
        for a in 0..=step {
            for b in 0..=step - a {
                let p = dist[a][b];
                let c = step - a - b;
                let left = [kinds[0] - a, kinds[1] - b, kinds[2] - c];
                let avail = (n - step) as f64;
                next[a + 1][b] += p * left[0] as f64 / avail;
                next[a][b + 1] += p * left[1] as f64 / avail;
                next[a][b] += p * left[2] as f64 / avail;
            }
        }
        dist = next;
    }
    let g = GUARDS as f64;
    let mut ever = 0.0;
    for (a, row) in dist.iter().enumerate() {
        for (b, &p) in row.iter().enumerate() {
            let (af, hf) = (a as f64, (a + b) as f64);
            let q = ((hostile_exits - a) as f64 * hf / g
                + if a > 0 {
                    af * (hf - 1.0) / (g - 1.0)
                } else {
                    0.0
                })
                / exits as f64;
            ever += p * (1.0 - (1.0 - q).powi(CIRCUITS_PER_CLIENT as i32));
        }
    }
    ever
}

/// Whether a circuit (entry first) has a hostile entry and exit.
fn compromised(path: &[usize], hostile: &[bool]) -> bool {
    hostile[path[0]] && hostile[path[path.len() - 1]]
}

/// A measured share and its expectation.
struct Share {
    measured: f64,
    expected: f64,
    samples: usize,
}

impl Share {
    fn new(count: usize, samples: usize, expected: f64) -> Self {
        Share {
            measured: count as f64 / samples as f64,
            expected,
            samples,
        }
    }

    /// Standard deviation of the measured share if the expectation is right.
    fn sigma(&self) -> f64 {
        (self.expected * (1.0 - self.expected) / self.samples as f64).sqrt()
    }

    /// Whether the measurement is within 4 standard deviations (plus one sample) of
    /// the expectation.
    fn agrees(&self) -> bool {
        (self.measured - self.expected).abs() <= 4.0 * self.sigma() + 1.0 / self.samples as f64
    }

    /// `measured (expected ± sigma)` in percent with `decimals` decimals.
    fn cell(&self, decimals: usize) -> String {
        format!(
            "{} ({} ± {:.*})",
            pct(self.measured, decimals),
            pct(self.expected, decimals),
            decimals,
            100.0 * self.sigma()
        )
    }
}

struct Row {
    adversary: Adversary,
    hostile: usize,
    hostile_in_view: f64,
    hostile_exit_share: f64,
    circuits: Share,
    clients_guards: Share,
    clients_no_guards: Share,
}

fn run(hostile: usize, adversary: Adversary, seed: u64) -> Row {
    let view = view(hostile, adversary);
    let cands = &view.candidates;
    let rules = PathRules {
        length: PathLength::Fixed(3),
        subnets: Subnets::default(),
    };
    let mut rng = ChaCha20Rng::seed_from_u64(seed);

    let mut bad_circuits = 0usize;
    for _ in 0..CIRCUITS {
        let mut guards = Guards::new(GUARDS, GUARD_LIFETIME);
        let keys = guards.refresh(&mut rng, cands, T0);
        let path = select_path(&mut rng, cands, &rules, &keys, Some(PORT)).expect("path");
        bad_circuits += usize::from(compromised(&path, &view.hostile));
    }

    let mut ever_guards = 0usize;
    let mut ever_no_guards = 0usize;
    for _ in 0..CLIENTS {
        let mut guards = Guards::new(GUARDS, GUARD_LIFETIME);
        let mut hit = false;
        let mut keys = Vec::new();
        for t in 0..CIRCUITS_PER_CLIENT as u64 {
            if t % 24 == 0 {
                keys = guards.refresh(&mut rng, cands, T0 + 3_600 * t);
            }
            let path = select_path(&mut rng, cands, &rules, &keys, Some(PORT)).expect("path");
            hit |= compromised(&path, &view.hostile);
        }
        ever_guards += usize::from(hit);
        let mut hit = false;
        for _ in 0..CIRCUITS_PER_CLIENT {
            let path = select_path(&mut rng, cands, &rules, &[], Some(PORT)).expect("path");
            hit |= compromised(&path, &view.hostile);
        }
        ever_no_guards += usize::from(hit);
    }

    let n = cands.len();
    let exits = view.count(|c, _| c.exit);
    let hostile_exits = view.count(|c, h| c.exit && h);
    let hostile_non_exits = hostile - hostile_exits;
    let exit_share = hostile_exits as f64 / exits as f64;
    // Packed: a hostile exit shares its /16 with every other hostile gateway, so no
    // path has a hostile entry too.
    let (circuit, with_guards, no_guards) = match adversary {
        Adversary::Packed => (
            expected_share(n, hostile, 1, exits, hostile_exits),
            0.0,
            0.0,
        ),
        Adversary::Spread | Adversary::Lying => {
            // Without guards the entry is a uniform non-exit.
            let per_circuit = exit_share * hostile_non_exits as f64 / (n - exits) as f64;
            (
                expected_share(n, hostile, hostile, exits, hostile_exits),
                expected_clients_guards(n, exits, hostile_exits, hostile),
                1.0 - (1.0 - per_circuit).powi(CIRCUITS_PER_CLIENT as i32),
            )
        }
    };
    Row {
        adversary,
        hostile,
        hostile_in_view: hostile as f64 / n as f64,
        hostile_exit_share: exit_share,
        circuits: Share::new(bad_circuits, CIRCUITS, circuit),
        clients_guards: Share::new(ever_guards, CLIENTS, with_guards),
        clients_no_guards: Share::new(ever_no_guards, CLIENTS, no_guards),
    }
}

fn pct(x: f64, decimals: usize) -> String {
    format!("{:.*}%", decimals, 100.0 * x)
}

#[test]
fn sybil_exposure() {
    // The model's spread case has a closed form: entry hostile with (H - 1) / (N - 1).
    let closed = 0.3 * 99.0 / 999.0;
    assert!((expected_share(1_000, 100, 100, 300, 90) - closed).abs() < 1e-12);

    // One thread per scenario, each with its own seeded RNG: the table is the same
    // whatever the scheduling.
    let scenarios: Vec<(usize, Adversary)> = [50, 100, 200]
        .into_iter()
        .flat_map(|h| [Adversary::Spread, Adversary::Packed, Adversary::Lying].map(|a| (h, a)))
        .collect();
    let rows: Vec<Row> = std::thread::scope(|scope| {
        let handles: Vec<_> = scenarios
            .iter()
            .enumerate()
            .map(|(i, &(hostile, adversary))| {
                scope.spawn(move || run(hostile, adversary, 0x5b11 + i as u64))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("scenario"))
            .collect()
    });

    println!(
        "| adversary | hostile k | hostile in view | hostile among exits | circuits with \
         hostile entry and exit: measured (expected ± σ) | ideal k² | clients ever \
         compromised, 3 guards | same, no guards |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let k = r.hostile as f64 / N as f64;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.adversary.name(),
            pct(k, 0),
            pct(r.hostile_in_view, 1),
            pct(r.hostile_exit_share, 1),
            r.circuits.cell(3),
            pct(k * k, 3),
            r.clients_guards.cell(1),
            r.clients_no_guards.cell(1),
        );
    }

    for r in &rows {
        let name = format!("{} at {}", r.adversary.name(), r.hostile);
        for (what, share) in [
            ("circuits", &r.circuits),
            ("clients with guards", &r.clients_guards),
            ("clients without guards", &r.clients_no_guards),
        ] {
            assert!(
                share.agrees(),
                "{name}, {what}: measured {} expected {}",
                share.measured,
                share.expected
            );
        }
        if r.adversary == Adversary::Packed {
            assert_eq!(r.circuits.measured, 0.0, "{name}");
            assert_eq!(r.clients_guards.measured, 0.0, "{name}");
            assert_eq!(r.clients_no_guards.measured, 0.0, "{name}");
        } else {
            assert!(
                r.clients_guards.measured < r.clients_no_guards.measured,
                "{name}: guards do not help"
            );
        }
    }
}
