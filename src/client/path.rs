//! Path selection: which gateways a circuit goes through, and the client's sticky
//! entry guards.
//!
//! The rules of a path (see [`select_path`]):
//!
//! - no gateway appears twice (candidates sharing a key count as one gateway);
//! - no two hops share an IPv4 /16 or an IPv6 /32, comparing every address of one
//!   with every address of the other (an IPv4-mapped IPv6 address counts as the IPv4
//!   address it carries), so one operator in one network cannot hold two positions;
//! - the last hop is an exit whose [`PortSummary`](crate::proto::ports::PortSummary) accepts the destination port;
//! - the first hop is one of the client's guards ([`Guards`]) when it has any.
//!
//! Middle hops are not the client's other guards when a path of the same length
//! exists without them: each leg of a virtual circuit starts at a guard of its own
//! (PROTOCOL §12), and a leg whose middle took a guard would leave the next leg none.
//!
//! Within these rules every position is filled uniformly at random: the exit first,
//! then the entry, then the middle hops in order. A gateway is eligible for a
//! position only if the path can still be completed with it, so selection never runs
//! into a dead end and fails only when no valid path exists (or when proving that
//! takes more than [`SEARCH_BUDGET`] steps, which needs descriptors whose addresses
//! overlap in contrived ways).
//!
//! Sans-IO: time is a `u64` of unix seconds passed in, randomness comes from the
//! caller's RNG.

use std::collections::HashSet;
use std::net::IpAddr;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::discovery::Candidate;
use crate::proto::crypto::below;
use crate::proto::identity::PublicKey;
use crate::proto::wire::MAX_HOPS;

/// Random draws tried for a position before falling back to a scan of every
/// candidate in random order.
const DRAWS: usize = 32;

/// Candidate examinations one [`select_path`] call may spend completing partial
/// paths. Deciding whether a path exists is a search that only overlapping
/// multi-address descriptors make expensive; past this budget the call fails with
/// [`PathError::SearchLimit`] rather than return a path that is not uniform.
pub const SEARCH_BUDGET: u64 = 1_000_000;

/// Most guards a [`Guards`] set keeps.
pub const MAX_GUARDS: usize = 64;

/// Largest time or lifetime [`Guards`] stores, so that its TOML form (signed 64-bit
/// integers) always round-trips.
const MAX_SECS: u64 = i64::MAX.unsigned_abs();

/// How many hops a path has (1 to [`MAX_HOPS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathLength {
    /// Exactly this many hops.
    Fixed(u8),
    /// A length drawn uniformly from this inclusive range for each path.
    Range(u8, u8),
}

impl PathLength {
    /// The inclusive bounds, if valid.
    fn bounds(self) -> Option<(usize, usize)> {
        let (lo, hi) = match self {
            PathLength::Fixed(n) => (n, n),
            PathLength::Range(lo, hi) => (lo, hi),
        };
        let (lo, hi) = (usize::from(lo), usize::from(hi));
        (1 <= lo && lo <= hi && hi <= MAX_HOPS).then_some((lo, hi))
    }
}

/// The client's rules for building paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// Number of hops.
    pub length: PathLength,
    /// Networks no two hops may share.
    pub subnets: Subnets,
}

/// The prefix lengths that define "the same network" for the path rules: IPv4 /16
/// and IPv6 /32 by default (one operator or provider), as in Tor. Test networks,
/// which live in one /15 (198.18.0.0/15), use longer prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnets {
    /// IPv4 prefix length, 0 to 32 (0: all IPv4 addresses are one network).
    pub v4: u8,
    /// IPv6 prefix length, 0 to 128.
    pub v6: u8,
}

impl Default for Subnets {
    fn default() -> Self {
        Subnets { v4: 16, v6: 32 }
    }
}

/// Why no path (or no guard state) could be produced.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PathError {
    /// The path length is outside 1..=8 or its range is empty.
    #[error("path length must be 1 to {MAX_HOPS} hops, with min <= max")]
    BadLength,
    /// No reachable candidate is an exit accepting the port (`None`: no exit at all).
    #[error("{}", no_exit_text(*.port))]
    NoExit {
        /// The destination port asked for.
        port: Option<u16>,
    },
    /// Guards were given but none of them is among the reachable candidates.
    #[error("none of the guards is among the known gateways")]
    NoGuard,
    /// Guards are known but no allowed path can start at one: for one hop a guard
    /// must itself be a usable exit, for more it must fit with one (not the same
    /// gateway, no shared /16 or /32).
    #[error(
        "no path can start at a guard: a one-hop path needs a guard that is a usable exit, \
         a longer one a guard and a usable exit that are different gateways in different \
         /16 and /32 networks"
    )]
    GuardConflict,
    /// Too few gateways in distinct networks for the shortest allowed path.
    #[error(
        "a path needs {needed} gateways in distinct /16 (IPv4) and /32 (IPv6) networks; \
         the longest possible path has {usable}"
    )]
    NotEnoughGateways {
        /// The shortest allowed path length.
        needed: usize,
        /// The longest valid path that exists (all rules applied).
        usable: usize,
    },
    /// Completing partial paths took more than [`SEARCH_BUDGET`] steps.
    #[error("path search gave up after {SEARCH_BUDGET} steps: gateway addresses overlap too much")]
    SearchLimit,
    /// Guard state that does not parse or is inconsistent.
    #[error("bad guard state: {0}")]
    BadGuards(String),
}

fn no_exit_text(port: Option<u16>) -> String {
    match port {
        Some(port) => format!("no reachable exit accepts port {port}"),
        None => "no reachable exit gateway is known".to_string(),
    }
}

/// The network an address belongs to for the path rules (by default its IPv4 /16
/// or IPv6 /32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Net {
    V4(u32),
    V6(u128),
}

fn net(addr: &IpAddr, s: Subnets) -> Net {
    match addr.to_canonical() {
        IpAddr::V4(a) => Net::V4(
            u32::from(a)
                .checked_shr(32 - u32::from(s.v4.min(32)))
                .unwrap_or(0),
        ),
        IpAddr::V6(a) => Net::V6(
            u128::from(a)
                .checked_shr(128 - u32::from(s.v6.min(128)))
                .unwrap_or(0),
        ),
    }
}

/// Whether two candidates share a network.
fn share_net(a: &Candidate, b: &Candidate, s: Subnets) -> bool {
    a.addrs
        .iter()
        .any(|x| b.addrs.iter().any(|y| net(x, s) == net(y, s)))
}

/// Whether two candidates cannot both be on a path (or both be guards).
fn conflict(a: &Candidate, b: &Candidate, s: Subnets) -> bool {
    a.key == b.key || share_net(a, b, s)
}

/// Whether a candidate can be reached at all.
fn reachable(c: &Candidate) -> bool {
    !c.addrs.is_empty() && c.port != 0
}

/// A uniform element of `0..n` among those satisfying `pred`, if any: up to
/// [`DRAWS`] independent draws, then (only if they all miss) a scan in random order.
/// Both stages return the first hit of a uniform process, so the result is uniform.
fn pick<R: RngCore + ?Sized>(
    rng: &mut R,
    n: usize,
    mut pred: impl FnMut(usize) -> bool,
) -> Option<usize> {
    draw(rng, n, &mut pred).or_else(|| scan(rng, n, pred))
}

fn draw<R: RngCore + ?Sized>(
    rng: &mut R,
    n: usize,
    mut pred: impl FnMut(usize) -> bool,
) -> Option<usize> {
    if n == 0 {
        return None;
    }
    (0..DRAWS).map(|_| below(rng, n)).find(|&i| pred(i))
}

fn scan<R: RngCore + ?Sized>(
    rng: &mut R,
    n: usize,
    mut pred: impl FnMut(usize) -> bool,
) -> Option<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for k in 0..n {
        order.swap(k, k + below(rng, n - k));
        let i = *order.get(k)?;
        if pred(i) {
            return Some(i);
        }
    }
    None
}

/// Picks a random path and returns indices into `candidates`, entry first, exit last.
///
/// Rules: never the same gateway twice; never two gateways sharing an IPv4 /16 or an
/// IPv6 /32 (any of their addresses); the last hop is an exit whose summary accepts
/// `dst_port` (`None`: any exit); the first hop is one of `guards` when `guards` is
/// non-empty (a guard is the first reachable candidate with its key), else a non-exit
/// gateway when one fits (any gateway otherwise), which keeps exit capacity for the
/// exit position; middle hops are any gateways but the client's guards, or when no
/// path of that length spares them, any gateways. Candidates without addresses or
/// with port 0 are never used.
///
/// The length is drawn uniformly from the rules' range; if no valid path of that
/// length exists, the nearest shorter lengths are tried, then the longer ones. The exit
/// is chosen first, uniformly among the exits that some valid path ends at; then the
/// entry uniformly among the entries that fit with it; then each middle hop uniformly
/// among the gateways that still leave a valid completion. An error is returned only
/// when no valid path of any allowed length exists (or, for pathologically
/// overlapping addresses, when the search exceeds [`SEARCH_BUDGET`]); it names the
/// reason.
pub fn select_path(
    rng: &mut (impl RngCore + CryptoRng),
    candidates: &[Candidate],
    rules: &PathRules,
    guards: &[[u8; 32]],
    dst_port: Option<u16>,
) -> Result<Vec<usize>, PathError> {
    select(rng, candidates, rules, guards, dst_port, None)
}

/// A path for a new leg of a virtual circuit (PROTOCOL §12): as [`select_path`],
/// ending at the exit whose key is `exit` (an error if it is not among the
/// candidates as a reachable exit). The caller leaves the other legs' gateways out of
/// `candidates` and `guards`, so that the legs share only the exit.
pub fn select_leg(
    rng: &mut (impl RngCore + CryptoRng),
    candidates: &[Candidate],
    rules: &PathRules,
    guards: &[[u8; 32]],
    exit: [u8; 32],
) -> Result<Vec<usize>, PathError> {
    select(rng, candidates, rules, guards, None, Some(exit))
}

fn select(
    rng: &mut (impl RngCore + CryptoRng),
    candidates: &[Candidate],
    rules: &PathRules,
    guards: &[[u8; 32]],
    dst_port: Option<u16>,
    exit: Option<[u8; 32]>,
) -> Result<Vec<usize>, PathError> {
    let (lo, hi) = rules.length.bounds().ok_or(PathError::BadLength)?;
    let mut search = Search::new(candidates, guards, dst_port, rules.subnets);
    search.exit = exit;
    if !guards.is_empty() && search.guards.is_empty() {
        return Err(PathError::NoGuard);
    }
    let first = lo + below(rng, hi - lo + 1);
    let lengths = (lo..=first).rev().chain(first + 1..=hi);
    let spares: &[bool] = if guards.len() > 1 {
        &[true, false]
    } else {
        &[false]
    };
    for len in lengths {
        for &spare in spares {
            search.spare = spare;
            let path = search.try_length(rng, len);
            if search.exhausted() {
                return Err(PathError::SearchLimit);
            }
            if let Some(path) = path {
                return Ok(path);
            }
        }
    }
    search.spare = false;
    if !(0..candidates.len()).any(|i| search.exit_ok(i)) {
        return Err(PathError::NoExit { port: dst_port });
    }
    let usable = (1..lo).rev().find(|&len| search.exists(len)).unwrap_or(0);
    if search.exhausted() {
        return Err(PathError::SearchLimit);
    }
    if usable == 0 && !guards.is_empty() {
        return Err(PathError::GuardConflict);
    }
    Err(PathError::NotEnoughGateways { needed: lo, usable })
}

/// The state of one [`select_path`] call.
struct Search<'a> {
    cands: &'a [Candidate],
    port: Option<u16>,
    /// The key the exit must have, if one is fixed.
    exit: Option<[u8; 32]>,
    /// Whether the client has guards (then the entry must be one).
    guarded: bool,
    /// Indices of reachable candidates whose key is a guard.
    guards: Vec<usize>,
    /// The guards' keys, and whether middle hops must not have one.
    guard_keys: Vec<[u8; 32]>,
    spare: bool,
    /// Candidate examinations so far.
    work: u64,
    subnets: Subnets,
}

impl<'a> Search<'a> {
    fn new(
        cands: &'a [Candidate],
        guards: &[[u8; 32]],
        port: Option<u16>,
        subnets: Subnets,
    ) -> Self {
        let mut guard_idx: Vec<usize> = find_keys(cands, guards).into_iter().flatten().collect();
        guard_idx.sort_unstable();
        guard_idx.dedup();
        Search {
            cands,
            port,
            exit: None,
            guarded: !guards.is_empty(),
            guards: guard_idx,
            guard_keys: guards.to_vec(),
            spare: false,
            work: 0,
            subnets,
        }
    }

    fn exhausted(&self) -> bool {
        self.work > SEARCH_BUDGET
    }

    /// Whether candidate `i` may be the last hop.
    fn exit_ok(&self, i: usize) -> bool {
        self.cands.get(i).is_some_and(|c| {
            c.exit
                && self.exit.is_none_or(|k| k == c.key)
                && reachable(c)
                && match (self.port, &c.exit_ports) {
                    (None, _) => true,
                    (Some(port), Some(summary)) => summary.accepts(port),
                    (Some(_), None) => false,
                }
        })
    }

    /// Whether candidate `i` may be a middle hop: not a guard while sparing them.
    fn middle_ok(&self, i: usize) -> bool {
        !self.spare
            || self
                .cands
                .get(i)
                .is_some_and(|c| !self.guard_keys.contains(&c.key))
    }

    /// Whether candidate `i` is reachable and fits with every hop in `chosen`.
    fn fits(&mut self, i: usize, chosen: &[usize]) -> bool {
        self.work += 1;
        let Some(c) = self.cands.get(i) else {
            return false;
        };
        reachable(c)
            && chosen.iter().all(|&j| {
                self.cands
                    .get(j)
                    .is_some_and(|d| !conflict(c, d, self.subnets))
            })
    }

    /// Whether `m` more candidates can join `chosen`: middle hops, or with no
    /// guards the entry and middle hops. Tries indices from `from` on in order
    /// (depth-first, pruned by [`Search::bound`]).
    fn extend(&mut self, chosen: &mut Vec<usize>, m: usize, from: usize) -> bool {
        if m == 0 {
            return true;
        }
        let mut failed = false;
        for i in from..self.cands.len() {
            if self.exhausted() {
                return false;
            }
            if !self.middle_ok(i) || !self.fits(i, chosen) {
                continue;
            }
            if failed && self.bound(chosen, i) < m {
                return false;
            }
            chosen.push(i);
            let ok = self.extend(chosen, m - 1, i + 1);
            chosen.pop();
            if ok {
                return true;
            }
            failed = true;
        }
        false
    }

    /// An upper bound on how many candidates from index `from` on can join `chosen`
    /// together. Members with an IPv4 address use pairwise distinct /16s and members
    /// without one use distinct IPv6 /32s, so the count is at most (distinct /16s) +
    /// (distinct /32s of IPv4-less candidates); symmetrically with the families
    /// swapped.
    fn bound(&mut self, chosen: &[usize], from: usize) -> usize {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        let mut v4_only = Vec::new();
        let mut v6_only = Vec::new();
        for i in from..self.cands.len() {
            if !self.fits(i, chosen) {
                continue;
            }
            let Some(c) = self.cands.get(i) else {
                continue;
            };
            let nets: Vec<Net> = c.addrs.iter().map(|a| net(a, self.subnets)).collect();
            let has4 = nets.iter().any(|n| matches!(n, Net::V4(_)));
            let has6 = nets.iter().any(|n| matches!(n, Net::V6(_)));
            for n in nets {
                match n {
                    Net::V4(_) if !has6 => v4_only.push(n),
                    Net::V6(_) if !has4 => v6_only.push(n),
                    _ => {}
                }
                match n {
                    Net::V4(_) => v4.push(n),
                    Net::V6(_) => v6.push(n),
                }
            }
        }
        let distinct = |v: &mut Vec<Net>| {
            v.sort_unstable();
            v.dedup();
            v.len()
        };
        let (d4, d6) = (distinct(&mut v4), distinct(&mut v6));
        let (d4_only, d6_only) = (distinct(&mut v4_only), distinct(&mut v6_only));
        (d4 + d6_only).min(d6 + d4_only)
    }

    /// Whether some valid path of `len` hops ends at exit `e`.
    fn exit_fits(&mut self, e: usize, len: usize) -> bool {
        if len == 1 {
            return !self.guarded || self.guards.contains(&e);
        }
        let mut chosen = vec![e];
        if !self.guarded {
            return self.extend(&mut chosen, len - 1, 0);
        }
        for k in 0..self.guards.len() {
            let Some(&g) = self.guards.get(k) else {
                break;
            };
            if self.fits(g, &chosen) {
                chosen.push(g);
                let ok = self.extend(&mut chosen, len - 2, 0);
                chosen.pop();
                if ok {
                    return true;
                }
            }
        }
        false
    }

    /// Whether a valid path of `len` hops exists.
    fn exists(&mut self, len: usize) -> bool {
        self.bound(&[], 0) >= len
            && (0..self.cands.len()).any(|e| self.exit_ok(e) && self.exit_fits(e, len))
    }

    /// A uniformly chosen valid path of `len` hops, if one exists.
    fn try_length<R: RngCore + ?Sized>(&mut self, rng: &mut R, len: usize) -> Option<Vec<usize>> {
        let n = self.cands.len();
        let exit_pred = |s: &mut Self, e: usize| s.exit_ok(e) && s.exit_fits(e, len);
        let exit = match draw(rng, n, |e| exit_pred(self, e)) {
            Some(e) => e,
            None if self.bound(&[], 0) < len => return None,
            None => scan(rng, n, |e| exit_pred(self, e))?,
        };
        if len == 1 {
            return Some(vec![exit]);
        }
        let mut chosen = vec![exit];
        let entry = if self.guarded {
            let guards = self.guards.clone();
            let k = pick(rng, guards.len(), |k| {
                guards
                    .get(k)
                    .is_some_and(|&g| self.completes(&mut chosen, g, len - 2))
            });
            *guards.get(k?)?
        } else {
            let cands = self.cands;
            pick(rng, n, |i| {
                cands.get(i).is_some_and(|c| !c.exit) && self.completes(&mut chosen, i, len - 2)
            })
            .or_else(|| pick(rng, n, |i| self.completes(&mut chosen, i, len - 2)))?
        };
        chosen.push(entry);
        for left in (0..len - 2).rev() {
            let middle = pick(rng, n, |i| {
                self.middle_ok(i) && self.completes(&mut chosen, i, left)
            })?;
            chosen.push(middle);
        }
        // chosen = [exit, entry, middles...] becomes [entry, middles..., exit].
        chosen.rotate_left(1);
        Some(chosen)
    }

    /// Whether `i` fits with `chosen` and `m` more candidates can then join.
    fn completes(&mut self, chosen: &mut Vec<usize>, i: usize, m: usize) -> bool {
        if !self.fits(i, chosen) {
            return false;
        }
        chosen.push(i);
        let ok = self.extend(chosen, m, 0);
        chosen.pop();
        ok
    }
}

/// For each key, the first reachable candidate with that key: the entry that stands
/// for the gateway when several share a key. One pass, ending once every key is found.
fn find_keys(candidates: &[Candidate], keys: &[[u8; 32]]) -> Vec<Option<usize>> {
    let mut found = vec![None; keys.len()];
    let mut missing = keys.len();
    // A bitmap of the keys' first bytes filters out almost every candidate cheaply.
    let mut firsts = [0u64; 4];
    let bit = |first: u8| (usize::from(first >> 6), 1u64 << (first & 63));
    for k in keys {
        let (word, b) = bit(k[0]);
        if let Some(w) = firsts.get_mut(word) {
            *w |= b;
        }
    }
    for (i, c) in candidates.iter().enumerate() {
        if missing == 0 {
            break;
        }
        let (word, b) = bit(c.key[0]);
        if firsts.get(word).is_some_and(|w| w & b != 0) {
            for (f, k) in found.iter_mut().zip(keys) {
                if f.is_none() && *k == c.key && reachable(c) {
                    *f = Some(i);
                    missing -= 1;
                }
            }
        }
    }
    found
}

/// Sticky entry guards, as in Tor: a small persistent set, each guard kept for
/// `lifetime_secs` from when it was chosen, replaced when expired or gone from the
/// candidate list. No two guards are the same gateway or share an IPv4 /16 or IPv6
/// /32.
///
/// Persisted as TOML ([`Guards::to_toml`], [`Guards::from_toml`]; the serde form is
/// the same document):
///
/// ```toml
/// count = 3
/// lifetime_secs = 7776000
///
/// [[guard]]
/// key = "<base64 public key>"
/// chosen_at = 1700000000
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "GuardsFile", into = "GuardsFile")]
pub struct Guards {
    count: usize,
    lifetime_secs: u64,
    /// Current guards, oldest choice first.
    guards: Vec<Guard>,
    /// Networks no two guards may share (not persisted: a client setting).
    #[serde(skip)]
    subnets: Subnets,
    /// Whether exits become guards only when other gateways do not fit: paths have
    /// 2 hops or more, so a guard never needs to be the exit (a client setting).
    #[serde(skip)]
    exits_last: bool,
}

/// One guard and when it was chosen (unix seconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Guard {
    key: PublicKey,
    chosen_at: u64,
}

/// The persisted form of [`Guards`], checked on the way in.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct GuardsFile {
    count: usize,
    lifetime_secs: u64,
    #[serde(default, rename = "guard")]
    guards: Vec<Guard>,
}

impl TryFrom<GuardsFile> for Guards {
    type Error = String;

    fn try_from(file: GuardsFile) -> Result<Self, String> {
        let bad = |problem: String| Err(problem);
        if file.count > MAX_GUARDS {
            return bad(format!("count {} is above {MAX_GUARDS}", file.count));
        }
        if file.lifetime_secs > MAX_SECS {
            return bad(format!("lifetime_secs {} is too large", file.lifetime_secs));
        }
        if file.guards.len() > file.count {
            return bad(format!(
                "{} guards listed but count is {}",
                file.guards.len(),
                file.count
            ));
        }
        let mut seen = HashSet::new();
        for guard in &file.guards {
            if !seen.insert(guard.key) {
                return bad(format!("guard {} is listed twice", guard.key));
            }
            if guard.chosen_at > MAX_SECS {
                return bad(format!(
                    "guard {}: chosen_at {} is too large",
                    guard.key, guard.chosen_at
                ));
            }
        }
        Ok(Guards {
            count: file.count,
            lifetime_secs: file.lifetime_secs,
            guards: file.guards,
            subnets: Subnets::default(),
            exits_last: true,
        })
    }
}

impl From<Guards> for GuardsFile {
    fn from(g: Guards) -> Self {
        GuardsFile {
            count: g.count,
            lifetime_secs: g.lifetime_secs,
            guards: g.guards,
        }
    }
}

impl Guards {
    /// An empty set that will hold `count` guards (at most [`MAX_GUARDS`]), each kept
    /// for `lifetime_secs` (at most 2^63 - 1) from when it was chosen.
    pub fn new(count: usize, lifetime_secs: u64) -> Self {
        Guards {
            count: count.min(MAX_GUARDS),
            lifetime_secs: lifetime_secs.min(MAX_SECS),
            guards: Vec::new(),
            subnets: Subnets::default(),
            exits_last: true,
        }
    }

    /// The same set for paths under `rules`: their networks for the "no two guards
    /// share a network" rule, and exits as guards only as a last resort unless a
    /// path may have one hop (whose gateway is both guard and exit).
    #[must_use]
    pub fn with_rules(mut self, rules: &PathRules) -> Self {
        self.subnets = rules.subnets;
        self.exits_last = rules.length.bounds().is_some_and(|(lo, _)| lo >= 2);
        self
    }

    /// Drops expired guards (chosen `lifetime_secs` or more before `now_unix`) and
    /// guards not among the reachable `candidates` (a guard is the first reachable
    /// candidate with its key), then any guard that shares a /16 or
    /// /32 with an older one (gateways can move), then tops up to `count` with
    /// candidates chosen uniformly among those that are not guards and share no
    /// network with one, gateways that are not exits first (see
    /// [`Guards::with_rules`]): an exit among the guards may be the exit of a
    /// virtual circuit, which then cannot start a leg there, and exits are kept for
    /// the exit position. Returns the current guard
    /// keys, oldest choice first (fewer than `count` if the candidates do not allow
    /// more).
    pub fn refresh(
        &mut self,
        rng: &mut (impl RngCore + CryptoRng),
        candidates: &[Candidate],
        now_unix: u64,
    ) -> Vec<[u8; 32]> {
        let lifetime = self.lifetime_secs;
        let subnets = self.subnets;
        self.guards
            .retain(|g| now_unix.saturating_sub(g.chosen_at) < lifetime);
        let keys: Vec<[u8; 32]> = self.guards.iter().map(|g| g.key.0).collect();
        let mut found = find_keys(candidates, &keys).into_iter();
        let mut kept: Vec<usize> = Vec::new();
        let fits = |kept: &[usize], c: &Candidate| {
            kept.iter()
                .all(|&k| candidates.get(k).is_some_and(|d| !conflict(d, c, subnets)))
        };
        self.guards.retain(|_| {
            let next = found.next().flatten();
            match next.and_then(|i| Some((i, candidates.get(i)?))) {
                Some((i, c)) if fits(&kept, c) => {
                    kept.push(i);
                    true
                }
                _ => false,
            }
        });
        self.guards.truncate(self.count);
        kept.truncate(self.count);
        while kept.len() < self.count {
            let new = |i: usize| {
                candidates.get(i).is_some_and(|c| {
                    reachable(c)
                        && fits(&kept, c)
                        && candidates
                            .iter()
                            .take(i)
                            .all(|d| d.key != c.key || !reachable(d))
                })
            };
            let relay = |i: usize| {
                new(i) && (!self.exits_last || candidates.get(i).is_some_and(|c| !c.exit))
            };
            let Some((i, c)) = pick(rng, candidates.len(), relay)
                .or_else(|| pick(rng, candidates.len(), new))
                .and_then(|i| Some((i, candidates.get(i)?)))
            else {
                break;
            };
            kept.push(i);
            self.guards.push(Guard {
                key: PublicKey(c.key),
                chosen_at: now_unix.min(MAX_SECS),
            });
        }
        self.guards.iter().map(|g| g.key.0).collect()
    }

    /// The current guard keys as saved, oldest choice first (without the refresh
    /// [`Guards::refresh`] does).
    pub fn keys(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        self.guards.iter().map(|g| g.key.0)
    }

    /// The guard state as a TOML document (see [`Guards`]).
    pub fn to_toml(&self) -> String {
        let mut out = format!(
            "count = {}\nlifetime_secs = {}\n",
            self.count, self.lifetime_secs
        );
        for g in &self.guards {
            out.push_str(&format!(
                "\n[[guard]]\nkey = \"{}\"\nchosen_at = {}\n",
                g.key, g.chosen_at
            ));
        }
        out
    }

    /// Parses guard state written by [`Guards::to_toml`]. Unknown keys, malformed
    /// keys, duplicate guards and more guards than `count` are errors.
    pub fn from_toml(s: &str) -> Result<Self, PathError> {
        toml::from_str(s).map_err(|e| PathError::BadGuards(e.message().to_string()))
    }
}

#[cfg(test)]
mod tests;
