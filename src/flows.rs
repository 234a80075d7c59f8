//! Per-flow routes (sans-IO): which of a client's circuits carries each flow.
//!
//! The client keeps a pool of circuits (through different exits where possible). A
//! new flow is given a random circuit among those still taking new flows, and keeps
//! it while that circuit is up, so one destination (or connection) is never spread
//! over several exits, while different destinations are. What a flow is depends on
//! the [`Isolation`] policy.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};

use crate::node::CircuitId;
use crate::packet::{self, FlowKey};

/// How flows are told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// One flow per destination address: different sites use different circuits.
    PerDestination,
    /// One flow per connection (protocol, addresses, ports).
    PerConnection,
    /// Everything on one circuit at a time.
    Single,
}

impl FromStr for Isolation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "per-destination" => Ok(Self::PerDestination),
            "per-connection" => Ok(Self::PerConnection),
            "single" => Ok(Self::Single),
            other => Err(format!(
                "{other:?} is not an isolation policy (per-destination, per-connection or single)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Flow {
    Destination(IpAddr),
    Connection(FlowKey),
    All,
}

/// Flows no packet was seen of for this long are forgotten.
pub const FLOW_IDLE: Duration = Duration::from_secs(300);
/// At most this many flows are remembered; beyond it the idlest are forgotten.
pub const MAX_FLOWS: usize = 65_536;

/// The flow → circuit table.
#[derive(Debug)]
pub struct FlowRouter {
    isolation: Isolation,
    flows: HashMap<Flow, (CircuitId, Instant)>,
    last_sweep: Option<Instant>,
}

impl FlowRouter {
    #[must_use]
    pub fn new(isolation: Isolation) -> Self {
        Self {
            isolation,
            flows: HashMap::new(),
            last_sweep: None,
        }
    }

    fn flow(&self, pkt: &[u8]) -> Flow {
        let Ok(s) = packet::summarize(pkt) else {
            return Flow::All;
        };
        match self.isolation {
            Isolation::PerDestination => Flow::Destination(s.dst),
            Isolation::PerConnection => Flow::Connection(s.flow()),
            Isolation::Single => Flow::All,
        }
    }

    /// The circuit for packet `pkt`: its flow's circuit while `up` says it is up,
    /// else a uniformly random one of `open` (circuits taking new flows), which the
    /// flow then keeps. `None` when no circuit can take it.
    pub fn route(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        pkt: &[u8],
        up: impl Fn(CircuitId) -> bool,
        open: &[CircuitId],
    ) -> Option<CircuitId> {
        self.sweep(now);
        let flow = self.flow(pkt);
        if let Some((c, seen)) = self.flows.get_mut(&flow) {
            if up(*c) {
                *seen = now;
                return Some(*c);
            }
        }
        if open.is_empty() {
            return None;
        }
        let pick = open[crate::path::below(rng, open.len())];
        if self.flows.len() >= MAX_FLOWS && !self.flows.contains_key(&flow) {
            self.evict_idlest();
        }
        self.flows.insert(flow, (pick, now));
        Some(pick)
    }

    /// Flows currently assigned to circuit `c`.
    #[must_use]
    pub fn flows_on(&self, c: CircuitId) -> usize {
        self.flows.values().filter(|(x, _)| *x == c).count()
    }

    /// Forgets the flows of a circuit that is gone; their next packets get new ones.
    pub fn forget_circuit(&mut self, c: CircuitId) {
        self.flows.retain(|_, (x, _)| *x != c);
    }

    /// Flows remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Forgets idle flows, at most once a second.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_sweep = Some(now);
        self.flows
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < FLOW_IDLE);
    }

    fn evict_idlest(&mut self) {
        if let Some(f) = self
            .flows
            .iter()
            .min_by_key(|(_, (_, t))| *t)
            .map(|(f, _)| *f)
        {
            self.flows.remove(&f);
        }
    }
}

/// First and largest wait before building again after a circuit of the pool failed
/// (doubling in between).
pub const REBUILD_FIRST: Duration = Duration::from_secs(1);
pub const REBUILD_MAX: Duration = Duration::from_secs(30);

/// A circuit of the client's pool.
#[derive(Debug)]
struct Pooled {
    up: bool,
    created: Instant,
    /// The exit's key, to spread the pool over different exits.
    exit: [u8; 32],
}

/// The client's pool of circuits: which to build, which take new flows, which to
/// retire. It keeps `target` fresh circuits (younger than `lifetime`), building one
/// at a time, backing off after failures; a circuit past its lifetime takes no new
/// flows and closes once its flows are done (or at twice its lifetime).
#[derive(Debug)]
pub struct CircuitPool {
    target: usize,
    lifetime: Duration,
    circuits: BTreeMap<CircuitId, Pooled>,
    backoff: Duration,
    next_build: Instant,
}

impl CircuitPool {
    /// A pool holding `first`, already up, through exit `exit`.
    #[must_use]
    pub fn new(
        target: usize,
        lifetime: Duration,
        now: Instant,
        first: CircuitId,
        exit: [u8; 32],
    ) -> Self {
        let mut circuits = BTreeMap::new();
        circuits.insert(
            first,
            Pooled {
                up: true,
                created: now,
                exit,
            },
        );
        Self {
            target,
            lifetime,
            circuits,
            backoff: REBUILD_FIRST,
            next_build: now,
        }
    }

    fn fresh(&self, now: Instant, p: &Pooled) -> bool {
        now.saturating_duration_since(p.created) < self.lifetime
    }

    /// Whether `c` is one of the pool's circuits.
    #[must_use]
    pub fn contains(&self, c: CircuitId) -> bool {
        self.circuits.contains_key(&c)
    }

    /// Whether `c` is in the pool and up.
    #[must_use]
    pub fn is_up(&self, c: CircuitId) -> bool {
        self.circuits.get(&c).is_some_and(|p| p.up)
    }

    /// The pool's circuits.
    pub fn ids(&self) -> impl Iterator<Item = CircuitId> + '_ {
        self.circuits.keys().copied()
    }

    /// A circuit of the pool came up.
    pub fn on_up(&mut self, c: CircuitId) {
        if let Some(p) = self.circuits.get_mut(&c) {
            p.up = true;
            self.backoff = REBUILD_FIRST;
        }
    }

    /// A circuit went down; returns whether it was the pool's. The next build waits
    /// for the back-off.
    pub fn on_down(&mut self, now: Instant, c: CircuitId) -> bool {
        if self.circuits.remove(&c).is_none() {
            return false;
        }
        self.next_build = now + self.backoff;
        self.backoff = (self.backoff * 2).min(REBUILD_MAX);
        true
    }

    /// Whether no circuit of the pool is up.
    #[must_use]
    pub fn all_down(&self) -> bool {
        !self.circuits.values().any(|p| p.up)
    }

    /// When a circuit should be built now: the exits of the fresh circuits, which
    /// the new one should avoid where it can.
    #[must_use]
    pub fn wants_build(&self, now: Instant) -> Option<Vec<[u8; 32]>> {
        let building = self.circuits.values().any(|p| !p.up);
        let fresh: Vec<[u8; 32]> = self
            .circuits
            .values()
            .filter(|p| self.fresh(now, p))
            .map(|p| p.exit)
            .collect();
        (!building && now >= self.next_build && fresh.len() < self.target).then_some(fresh)
    }

    /// A circuit through exit `exit` is being built.
    pub fn building(&mut self, now: Instant, c: CircuitId, exit: [u8; 32]) {
        self.circuits.insert(
            c,
            Pooled {
                up: false,
                created: now,
                exit,
            },
        );
    }

    /// Circuits to close now (removed from the pool and from `router`): past twice
    /// their lifetime, or past it with no flows left while a fresh circuit is up.
    pub fn retire(&mut self, now: Instant, router: &mut FlowRouter) -> Vec<CircuitId> {
        let any_fresh_up = self.circuits.values().any(|p| p.up && self.fresh(now, p));
        let retired: Vec<CircuitId> = self
            .circuits
            .iter()
            .filter(|(c, p)| {
                let age = now.saturating_duration_since(p.created);
                age >= self.lifetime * 2
                    || (age >= self.lifetime && any_fresh_up && router.flows_on(**c) == 0)
            })
            .map(|(c, _)| *c)
            .collect();
        for c in &retired {
            self.circuits.remove(c);
            router.forget_circuit(*c);
        }
        retired
    }

    /// Into `out`: the circuits taking new flows (fresh and up; if none is, any that
    /// is up).
    pub fn open(&self, now: Instant, out: &mut Vec<CircuitId>) {
        out.clear();
        out.extend(
            self.circuits
                .iter()
                .filter(|(_, p)| p.up && self.fresh(now, p))
                .map(|(c, _)| *c),
        );
        if out.is_empty() {
            out.extend(self.circuits.iter().filter(|(_, p)| p.up).map(|(c, _)| *c));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use etherparse::PacketBuilder;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn tcp(dst: [u8; 4], sport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([100, 64, 0, 2], dst, 64)
            .tcp(sport, 443, 1, 1000)
            .write(&mut out, b"x")
            .unwrap();
        out
    }

    const A: CircuitId = CircuitId(1);
    const B: CircuitId = CircuitId(2);
    const C: CircuitId = CircuitId(3);

    #[test]
    fn per_destination_keeps_a_site_on_one_circuit_and_spreads_sites() {
        let mut r = FlowRouter::new(Isolation::PerDestination);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let t = Instant::now();
        let open = [A, B, C];
        let mut used = std::collections::HashSet::new();
        for site in 0..20u8 {
            let first = r
                .route(t, &mut rng, &tcp([198, 18, 9, site], 1000), |_| true, &open)
                .unwrap();
            for port in 1001..1010 {
                let again = r.route(t, &mut rng, &tcp([198, 18, 9, site], port), |_| true, &open);
                assert_eq!(again, Some(first), "site {site} moved");
            }
            used.insert(first);
        }
        assert_eq!(used.len(), 3, "20 sites over 3 circuits use all of them");
        assert_eq!(r.len(), 20);
    }

    #[test]
    fn per_connection_and_single() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let t = Instant::now();
        let mut r = FlowRouter::new(Isolation::PerConnection);
        let mut used = std::collections::HashSet::new();
        for port in 0..40 {
            used.insert(
                r.route(
                    t,
                    &mut rng,
                    &tcp([198, 18, 9, 1], 2000 + port),
                    |_| true,
                    &[A, B],
                )
                .unwrap(),
            );
        }
        assert_eq!(
            used.len(),
            2,
            "connections to one site spread over circuits"
        );
        let mut r = FlowRouter::new(Isolation::Single);
        let first = r
            .route(t, &mut rng, &tcp([198, 18, 9, 1], 1), |_| true, &[A, B, C])
            .unwrap();
        for site in 0..20 {
            assert_eq!(
                r.route(
                    t,
                    &mut rng,
                    &tcp([198, 18, 9, site], 1),
                    |_| true,
                    &[A, B, C]
                ),
                Some(first)
            );
        }
    }

    #[test]
    fn flows_move_only_when_their_circuit_is_gone() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let t = Instant::now();
        let mut r = FlowRouter::new(Isolation::PerDestination);
        let p = tcp([198, 18, 9, 1], 1);
        let c = r.route(t, &mut rng, &p, |_| true, &[A]).unwrap();
        assert_eq!(c, A);
        // A stops taking new flows (old) but is up: the flow stays.
        assert_eq!(r.route(t, &mut rng, &p, |_| true, &[B]), Some(A));
        assert_eq!(r.flows_on(A), 1);
        // A goes down: the flow moves to an open circuit.
        assert_eq!(r.route(t, &mut rng, &p, |c| c != A, &[B]), Some(B));
        r.forget_circuit(B);
        assert_eq!(r.flows_on(B), 0);
        assert_eq!(r.route(t, &mut rng, &p, |_| true, &[]), None);
    }

    #[test]
    fn idle_flows_are_forgotten() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let t = Instant::now();
        let mut r = FlowRouter::new(Isolation::PerDestination);
        r.route(t, &mut rng, &tcp([198, 18, 9, 1], 1), |_| true, &[A]);
        r.route(
            t + FLOW_IDLE,
            &mut rng,
            &tcp([198, 18, 9, 2], 1),
            |_| true,
            &[A],
        );
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn isolation_names() {
        assert_eq!("per-destination".parse(), Ok(Isolation::PerDestination));
        assert_eq!("per-connection".parse(), Ok(Isolation::PerConnection));
        assert_eq!("single".parse(), Ok(Isolation::Single));
        assert!("per-site"
            .parse::<Isolation>()
            .unwrap_err()
            .contains("per-site"));
    }

    #[test]
    fn pool_builds_one_at_a_time_up_to_its_target() {
        let t = Instant::now();
        let life = Duration::from_secs(600);
        let mut p = CircuitPool::new(3, life, t, A, [1; 32]);
        assert_eq!(
            p.wants_build(t),
            Some(vec![[1; 32]]),
            "avoid the first circuit's exit"
        );
        p.building(t, B, [2; 32]);
        assert_eq!(p.wants_build(t), None, "one build at a time");
        p.on_up(B);
        p.building(t, C, [3; 32]);
        p.on_up(C);
        assert_eq!(p.wants_build(t), None, "3 fresh circuits");
        let mut open = Vec::new();
        p.open(t, &mut open);
        assert_eq!(open, [A, B, C]);
    }

    #[test]
    fn pool_backs_off_after_failures() {
        let t = Instant::now();
        let mut p = CircuitPool::new(2, Duration::from_secs(600), t, A, [1; 32]);
        p.building(t, B, [2; 32]);
        assert!(p.on_down(t, B));
        assert_eq!(p.wants_build(t), None);
        assert!(p.wants_build(t + REBUILD_FIRST).is_some());
        p.building(t + REBUILD_FIRST, C, [2; 32]);
        assert!(p.on_down(t + REBUILD_FIRST, C));
        assert_eq!(p.wants_build(t + REBUILD_FIRST * 2), None, "doubled");
        assert!(p.wants_build(t + REBUILD_FIRST * 3).is_some());
        assert!(!p.on_down(t, CircuitId(99)), "not the pool's");
        assert!(p.on_down(t, A));
        assert!(p.all_down());
    }

    #[test]
    fn pool_retires_old_circuits_once_their_flows_are_done() {
        let t = Instant::now();
        let life = Duration::from_secs(600);
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let mut r = FlowRouter::new(Isolation::PerDestination);
        let mut p = CircuitPool::new(1, life, t, A, [1; 32]);
        let site = tcp([198, 18, 9, 1], 1);
        assert_eq!(r.route(t, &mut rng, &site, |c| p.is_up(c), &[A]), Some(A));
        let old = t + life;
        // The flow stays active until the circuit is old.
        let recent = old - Duration::from_secs(10);
        assert_eq!(
            r.route(recent, &mut rng, &site, |c| p.is_up(c), &[A]),
            Some(A)
        );
        let mut open = Vec::new();
        p.open(old, &mut open);
        assert_eq!(
            open,
            [A],
            "no fresh circuit yet: the old one still takes flows"
        );
        assert!(p.wants_build(old).is_some());
        p.building(old, B, [2; 32]);
        p.on_up(B);
        p.open(old, &mut open);
        assert_eq!(open, [B], "new flows go to the fresh circuit");
        assert_eq!(p.retire(old, &mut r), [], "A still carries a flow");
        assert_eq!(
            r.route(old, &mut rng, &site, |c| p.is_up(c), &open),
            Some(A)
        );
        assert_eq!(
            p.retire(t + life * 2, &mut r),
            [A],
            "at twice its lifetime, regardless"
        );
        assert!(!p.contains(A));
        assert_eq!(r.flows_on(A), 0);
    }
}
