//! Path selection: which gateways a circuit goes through, and the client's sticky
//! entry guards.
//!
//! The rules of a path (see [`select_path`]):
//!
//! - no gateway appears twice (candidates sharing a key count as one gateway);
//! - no two hops share an IPv4 /16 or an IPv6 /32, comparing every address of one
//!   with every address of the other (an IPv4-mapped IPv6 address counts as the IPv4
//!   address it carries), so one operator in one network cannot hold two positions;
//! - the last hop is an exit whose [`PortSummary`] accepts the destination port;
//! - the first hop is one of the client's guards ([`Guards`]) when it has any.
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
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::MAX_HOPS;
use crate::exit::policy::MAX_SUMMARY_LEN;
use crate::proto::identity::PublicKey;

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

/// What path selection knows of a gateway (built from a verified descriptor by the
/// caller).
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

/// Tor-style policy summary (`accept 80,443,1000-2000` or `reject 25,119,135-139,445`):
/// which ports an exit accepts to ordinary public addresses, as produced by
/// [`crate::exit::policy::ExitPolicy::summary`].
///
/// Parsing is strict: `accept` or `reject`, one space, then comma-separated ports
/// (`1..=65535`, no leading zeros) or ranges `A-B` with `A <= B`, in ascending order
/// with a gap between consecutive entries (adjacent ranges are written as one), at most
/// [`MAX_SUMMARY_LEN`] bytes in all. Accepting every port is `accept 1-65535`,
/// rejecting every port `reject 1-65535`. [`fmt::Display`] writes the same form back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSummary {
    /// Whether `ranges` lists the accepted ports (else the rejected ones).
    accept: bool,
    /// Inclusive port ranges, ascending, non-empty, with gaps between them.
    ranges: Vec<(u16, u16)>,
}

impl PortSummary {
    /// Whether the exit accepts `port`. Port 0 is never accepted.
    pub fn accepts(&self, port: u16) -> bool {
        if port == 0 {
            return false;
        }
        let listed = self
            .ranges
            .binary_search_by(|&(start, end)| {
                if end < port {
                    std::cmp::Ordering::Less
                } else if start > port {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok();
        listed == self.accept
    }
}

impl FromStr for PortSummary {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() > MAX_SUMMARY_LEN {
            return Err(PathError::BadSummary(format!(
                "longer than {MAX_SUMMARY_LEN} bytes"
            )));
        }
        let bad = |problem: &str| PathError::BadSummary(format!("{s:?}: {problem}"));
        let (action, list) = s
            .split_once(' ')
            .ok_or_else(|| bad("expected `accept` or `reject`, a space and a port list"))?;
        let accept = match action {
            "accept" => true,
            "reject" => false,
            _ => return Err(bad("expected `accept` or `reject`")),
        };
        let mut ranges: Vec<(u16, u16)> = Vec::new();
        for item in list.split(',') {
            let (start, end) = match item.split_once('-') {
                Some((start, end)) => (parse_port(start), parse_port(end)),
                None => (parse_port(item), parse_port(item)),
            };
            let (Some(start), Some(end)) = (start, end) else {
                return Err(bad(&format!(
                    "{item:?} is not a port 1-65535 or a range A-B"
                )));
            };
            if start > end {
                return Err(bad(&format!("{item:?} is an empty range")));
            }
            if let Some(&(_, prev_end)) = ranges.last() {
                if u32::from(start) <= u32::from(prev_end) + 1 {
                    return Err(bad(&format!(
                        "{item:?} overlaps, touches or precedes the entry before it"
                    )));
                }
            }
            ranges.push((start, end));
        }
        Ok(PortSummary { accept, ranges })
    }
}

/// A port number `1..=65535` written as plain decimal digits without leading zeros.
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

impl fmt::Display for PortSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.accept { "accept " } else { "reject " })?;
        for (i, &(start, end)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

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

/// Why no path (or no guard state, or no port summary) could be produced.
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
    /// A port summary that does not parse.
    #[error("bad port summary: {0}")]
    BadSummary(String),
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

/// A uniform integer in `0..n` (`n > 0`), by rejection (no modulo bias).
pub(crate) fn below<R: RngCore + ?Sized>(rng: &mut R, n: usize) -> usize {
    let n = n as u64;
    let skip = n.wrapping_neg() % n;
    loop {
        let v = rng.next_u64();
        if v >= skip {
            return (v % n) as usize;
        }
    }
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
        let j = k + below(rng, n - k);
        order.swap(k, j);
        if pred(order[k]) {
            return Some(order[k]);
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
/// exit position; middle hops are any gateways. Candidates without addresses or with
/// port 0 are never used.
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
    let (lo, hi) = rules.length.bounds().ok_or(PathError::BadLength)?;
    let mut search = Search::new(candidates, guards, dst_port, rules.subnets);
    if !guards.is_empty() && search.guards.is_empty() {
        return Err(PathError::NoGuard);
    }
    let first = lo + below(rng, hi - lo + 1);
    let lengths = (lo..=first).rev().chain(first + 1..=hi);
    for len in lengths {
        let path = search.try_length(rng, len);
        if search.exhausted() {
            return Err(PathError::SearchLimit);
        }
        if let Some(path) = path {
            return Ok(path);
        }
    }
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
    /// Whether the client has guards (then the entry must be one).
    guarded: bool,
    /// Indices of reachable candidates whose key is a guard.
    guards: Vec<usize>,
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
            guarded: !guards.is_empty(),
            guards: guard_idx,
            work: 0,
            subnets,
        }
    }

    fn exhausted(&self) -> bool {
        self.work > SEARCH_BUDGET
    }

    /// Whether candidate `i` may be the last hop.
    fn exit_ok(&self, i: usize) -> bool {
        let c = &self.cands[i];
        c.exit
            && reachable(c)
            && match (self.port, &c.exit_ports) {
                (None, _) => true,
                (Some(port), Some(summary)) => summary.accepts(port),
                (Some(_), None) => false,
            }
    }

    /// Whether candidate `i` is reachable and fits with every hop in `chosen`.
    fn fits(&mut self, i: usize, chosen: &[usize]) -> bool {
        self.work += 1;
        let c = &self.cands[i];
        reachable(c)
            && chosen
                .iter()
                .all(|&j| !conflict(c, &self.cands[j], self.subnets))
    }

    /// Whether `m` more candidates (any role) can join `chosen`, trying indices from
    /// `from` on in order (depth-first, pruned by [`Search::bound`]).
    fn extend(&mut self, chosen: &mut Vec<usize>, m: usize, from: usize) -> bool {
        if m == 0 {
            return true;
        }
        let mut failed = false;
        for i in from..self.cands.len() {
            if self.exhausted() {
                return false;
            }
            if !self.fits(i, chosen) {
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
            let nets: Vec<Net> = self.cands[i]
                .addrs
                .iter()
                .map(|a| net(a, self.subnets))
                .collect();
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
            let g = self.guards[k];
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
            let guards = std::mem::take(&mut self.guards);
            let k = pick(rng, guards.len(), |k| {
                self.completes(&mut chosen, guards[k], len - 2)
            });
            self.guards = guards;
            self.guards[k?]
        } else {
            let cands = self.cands;
            pick(rng, n, |i| {
                !cands[i].exit && self.completes(&mut chosen, i, len - 2)
            })
            .or_else(|| pick(rng, n, |i| self.completes(&mut chosen, i, len - 2)))?
        };
        chosen.push(entry);
        for left in (0..len - 2).rev() {
            let middle = pick(rng, n, |i| self.completes(&mut chosen, i, left))?;
            chosen.push(middle);
        }
        chosen.swap(0, 1);
        chosen[1..].rotate_left(1);
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
    for k in keys {
        firsts[usize::from(k[0] >> 6)] |= 1 << (k[0] & 63);
    }
    let mut i = 0;
    while missing > 0 && i < candidates.len() {
        let first = candidates[i].key[0];
        if firsts[usize::from(first >> 6)] & (1 << (first & 63)) != 0 {
            for k in 0..keys.len() {
                let c = &candidates[i];
                if found[k].is_none() && keys[k] == c.key && reachable(c) {
                    found[k] = Some(i);
                    missing -= 1;
                }
            }
        }
        i += 1;
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
        }
    }

    /// The same set with other networks for the "no two guards share a network" rule.
    #[must_use]
    pub fn with_subnets(mut self, subnets: Subnets) -> Self {
        self.subnets = subnets;
        self
    }

    /// Drops expired guards (chosen `lifetime_secs` or more before `now_unix`) and
    /// guards not among the reachable `candidates` (a guard is the first reachable
    /// candidate with its key), then any guard that shares a /16 or
    /// /32 with an older one (gateways can move), then tops up to `count` with
    /// candidates chosen uniformly among those that are not guards and share no
    /// network with one. Returns the current guard keys, oldest choice first (fewer
    /// than `count` if the candidates do not allow more).
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
        self.guards.retain(|_| match found.next().flatten() {
            Some(i)
                if kept
                    .iter()
                    .all(|&k| !conflict(&candidates[k], &candidates[i], subnets)) =>
            {
                kept.push(i);
                true
            }
            _ => false,
        });
        self.guards.truncate(self.count);
        kept.truncate(self.count);
        while kept.len() < self.count {
            let fits = |i: usize| {
                let c = &candidates[i];
                reachable(c)
                    && kept.iter().all(|&k| !conflict(&candidates[k], c, subnets))
                    && candidates[..i]
                        .iter()
                        .all(|d| d.key != c.key || !reachable(d))
            };
            let Some(i) = pick(rng, candidates.len(), fits) else {
                break;
            };
            kept.push(i);
            self.guards.push(Guard {
                key: PublicKey(candidates[i].key),
                chosen_at: now_unix.min(MAX_SECS),
            });
        }
        self.guards.iter().map(|g| g.key.0).collect()
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
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::exit::policy::ExitPolicy;
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

    // ---- port summaries ----

    #[test]
    fn summary_good() {
        let s = summary("accept 80,443,1000-2000");
        for (port, ok) in [
            (0, false),
            (79, false),
            (80, true),
            (443, true),
            (999, false),
            (1000, true),
            (1500, true),
            (2000, true),
            (2001, false),
            (65535, false),
        ] {
            assert_eq!(s.accepts(port), ok, "{port}");
        }
        let s = summary("reject 25,119,135-139,445");
        for (port, ok) in [
            (0, false),
            (1, true),
            (25, false),
            (80, true),
            (135, false),
            (139, false),
            (140, true),
            (445, false),
            (65535, true),
        ] {
            assert_eq!(s.accepts(port), ok, "{port}");
        }
        assert!((1..=65535).all(|p| summary("accept 1-65535").accepts(p)));
        assert!((0..=65535).all(|p| !summary("reject 1-65535").accepts(p)));
        assert!(summary("accept 65535").accepts(65535));
        assert!(summary("accept 1").accepts(1));
        for text in [
            "accept 80,443,1000-2000",
            "reject 25,119,135-139,445",
            "accept 1-65535",
            "reject 1",
            "accept 1,3,65535",
        ] {
            assert_eq!(summary(text).to_string(), text);
        }
    }

    #[test]
    fn summary_bad() {
        for text in [
            "",
            "accept",
            "accept ",
            "reject ",
            "allow 80",
            "Accept 80",
            "accept 0",
            "accept 65536",
            "accept 99999999999",
            "accept 080",
            "accept +80",
            "accept -80",
            "accept 80-",
            "accept 1-2-3",
            "accept 80,",
            "accept ,80",
            "accept 80,,443",
            "accept 80,80",
            "accept 443,80",
            "accept 80-79",
            "accept 1-5,6-10",
            "accept 1-10,5-20",
            "accept 1-10,10",
            "accept  80",
            " accept 80",
            "accept 80 ",
            "accept 80, 443",
            "accept\t80",
            "accept 8O",
            "accept 1-65535,1",
        ] {
            let err = text.parse::<PortSummary>().unwrap_err();
            assert!(matches!(err, PathError::BadSummary(_)), "{text:?}: {err}");
        }
        let long = format!("accept {}", vec!["7"; 600].join(","));
        assert_eq!(
            long.parse::<PortSummary>().unwrap_err(),
            PathError::BadSummary("longer than 1000 bytes".into())
        );
        assert_eq!(
            "accept 443,80".parse::<PortSummary>().unwrap_err().to_string(),
            "bad port summary: \"accept 443,80\": \"80\" overlaps, touches or precedes the entry before it"
        );
    }

    /// Every summary the exit policy writes parses, prints back the same, and (for
    /// policies without address-specific rules) agrees with the policy on a public
    /// address.
    #[test]
    fn policy_summaries_parse() {
        let public = v4(93, 184, 216, 34);
        let cases: [&[&str]; 6] = [
            &[],
            &["accept *:80", "accept *:443", "reject *:*"],
            &["accept *:20-23", "accept *:80-81", "reject *:*"],
            &["reject *:*"],
            &["accept *:*"],
            &["reject *:1-1000", "accept *:999-1001", "reject *:*"],
        ];
        for user in cases {
            let user: Vec<String> = user.iter().map(|s| s.to_string()).collect();
            let policy = ExitPolicy::new(&user, &[]).unwrap();
            let text = policy.summary();
            let parsed = summary(&text);
            assert_eq!(parsed.to_string(), text);
            for port in 1..=2000 {
                assert_eq!(
                    parsed.accepts(port),
                    policy.allows(public, Some(port)),
                    "{user:?} port {port}"
                );
            }
        }
        let user: Vec<String> = (1..=2000).map(|n| format!("reject *:{}", 2 * n)).collect();
        let text = ExitPolicy::new(&user, &[]).unwrap().summary();
        assert_eq!(summary(&text).to_string(), text);
    }

    fn arb_summary() -> impl Strategy<Value = PortSummary> {
        (
            any::<bool>(),
            prop::collection::btree_set(1u16..=65535, 1..40),
        )
            .prop_map(|(accept, bounds)| {
                let bounds: Vec<u16> = bounds.into_iter().collect();
                let mut ranges: Vec<(u16, u16)> = Vec::new();
                for pair in bounds.chunks(2) {
                    let (start, end) = (pair[0], *pair.last().unwrap());
                    match ranges.last_mut() {
                        Some(last) if u32::from(last.1) + 1 >= u32::from(start) => last.1 = end,
                        _ => ranges.push((start, end)),
                    }
                }
                PortSummary { accept, ranges }
            })
    }

    proptest! {
        #[test]
        fn summary_round_trip(s in arb_summary(), port in any::<u16>()) {
            let text = s.to_string();
            prop_assert_eq!(text.parse::<PortSummary>().unwrap(), s.clone());
            let listed = s.ranges.iter().any(|&(a, b)| a <= port && port <= b);
            prop_assert_eq!(s.accepts(port), port != 0 && listed == s.accept);
        }

        #[test]
        fn summary_parse_never_panics(text in "(accept|reject)? ?[0-9,-]{0,20}") {
            let _ = text.parse::<PortSummary>();
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
        let mut guards = Guards::new(3, 100).with_subnets(narrow.subnets);
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
}
