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

use crate::exit::packet::{self, FlowKey};
use crate::exit::policy::PortSummary;
use crate::node::CircuitId;

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

/// Where a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Over this circuit.
    Via(CircuitId),
    /// Nowhere yet: no circuit is open (the packet is dropped; its sender retries).
    Wait,
    /// No open circuit's exit accepts this destination port: one should be built
    /// through an exit that does ([`CircuitPool::demand`]).
    NoExit(u16),
}

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

    /// The circuit for packet `pkt`: its flow's circuit while that is up in `pool`
    /// and its exit accepts the packet's destination port; else a uniformly random
    /// one of `open` (circuits taking new flows) whose exit accepts the port, which the
    /// flow then keeps.
    pub fn route(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        pkt: &[u8],
        pool: &CircuitPool,
        open: &[CircuitId],
    ) -> Route {
        self.sweep(now);
        let summary = packet::summarize(pkt).ok();
        let port = summary.and_then(|s| s.dst_port);
        let fits = |c: CircuitId| port.is_none_or(|p| pool.accepts(c, p));
        let flow = match (summary, self.isolation) {
            (Some(s), Isolation::PerDestination) => Flow::Destination(s.dst),
            (Some(s), Isolation::PerConnection) => Flow::Connection(s.flow()),
            _ => Flow::All,
        };
        if let Some((c, seen)) = self.flows.get_mut(&flow) {
            if pool.is_up(*c) && fits(*c) {
                *seen = now;
                return Route::Via(*c);
            }
        }
        let fitting = open.iter().filter(|c| fits(**c)).count();
        if fitting == 0 {
            return match port {
                Some(p) if !open.is_empty() => Route::NoExit(p),
                _ => Route::Wait,
            };
        }
        let nth = crate::proto::crypto::below(rng, fitting);
        let Some(&pick) = open.iter().filter(|c| fits(**c)).nth(nth) else {
            return Route::Wait;
        };
        if self.flows.len() >= MAX_FLOWS && !self.flows.contains_key(&flow) {
            self.evict_idlest();
        }
        self.flows.insert(flow, (pick, now));
        Route::Via(pick)
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
/// How long a destination port that no known exit accepts is answered locally
/// (ICMP administratively prohibited) before a path for it is searched again.
pub const NO_EXIT_HOLD: Duration = Duration::from_secs(60);

/// A circuit of the client's pool.
#[derive(Debug)]
struct Pooled {
    up: bool,
    created: Instant,
    /// The exit's key, to spread the pool over different exits.
    exit: [u8; 32],
    /// The ports the exit's descriptor says it accepts; `None`: not known (a
    /// configured path), taken as all (the exit refuses what it will not carry with
    /// ICMP administratively prohibited).
    ports: Option<PortSummary>,
}

/// What the pool asks to be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Build {
    /// The exits of the fresh circuits, which the new one should avoid where it can.
    pub avoid: Vec<[u8; 32]>,
    /// The destination port its exit must accept (`None`: any exit).
    pub port: Option<u16>,
}

/// The client's pool of circuits: which to build, which take new flows, which to
/// retire. It keeps `target` fresh circuits (younger than `lifetime`), building one
/// at a time, backing off after failures; a circuit past its lifetime takes no new
/// flows and closes once its flows are done (or at twice its lifetime). A flow to a
/// port that no open circuit's exit accepts makes it build one through an exit that
/// does, beyond the target.
#[derive(Debug)]
pub struct CircuitPool {
    target: usize,
    lifetime: Duration,
    circuits: BTreeMap<CircuitId, Pooled>,
    backoff: Duration,
    next_build: Instant,
    /// A destination port waiting for a circuit whose exit accepts it.
    demand: Option<u16>,
    /// Ports no known exit accepts, until when.
    no_exit: HashMap<u16, Instant>,
}

impl CircuitPool {
    /// A pool holding `first`, already up, through exit `exit` accepting `ports`.
    #[must_use]
    pub fn new(
        target: usize,
        lifetime: Duration,
        now: Instant,
        first: CircuitId,
        exit: [u8; 32],
        ports: Option<PortSummary>,
    ) -> Self {
        let mut circuits = BTreeMap::new();
        circuits.insert(
            first,
            Pooled {
                up: true,
                created: now,
                exit,
                ports,
            },
        );
        Self {
            target,
            lifetime,
            circuits,
            backoff: REBUILD_FIRST,
            next_build: now,
            demand: None,
            no_exit: HashMap::new(),
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

    /// Whether `c`'s exit accepts destination port `port`.
    #[must_use]
    pub fn accepts(&self, c: CircuitId, port: u16) -> bool {
        self.circuits
            .get(&c)
            .is_some_and(|p| p.ports.as_ref().is_none_or(|s| s.accepts(port)))
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
        self.build_failed(now);
        true
    }

    /// A build could not start (no path): the next waits for the back-off.
    pub fn build_failed(&mut self, now: Instant) {
        self.next_build = now + self.backoff;
        self.backoff = (self.backoff * 2).min(REBUILD_MAX);
    }

    /// Whether no circuit of the pool is up.
    #[must_use]
    pub fn all_down(&self) -> bool {
        !self.circuits.values().any(|p| p.up)
    }

    /// A flow wants destination port `port`, which no open circuit's exit accepts.
    /// Returns `false` when no known exit accepts it ([`Self::no_exit`] within the
    /// last [`NO_EXIT_HOLD`]): the flow should be refused.
    pub fn demand(&mut self, now: Instant, port: u16) -> bool {
        if self.no_exit.get(&port).is_some_and(|until| now < *until) {
            return false;
        }
        self.no_exit.retain(|_, until| now < *until);
        if self.demand.is_none() {
            self.demand = Some(port);
        }
        true
    }

    /// No path ends at an exit accepting `port`.
    pub fn no_exit(&mut self, now: Instant, port: u16) {
        if self.demand == Some(port) {
            self.demand = None;
        }
        self.no_exit.insert(port, now + NO_EXIT_HOLD);
    }

    /// What should be built now, if anything: a circuit for a demanded port, or one
    /// more fresh circuit when fewer than the target are fresh.
    #[must_use]
    pub fn wants_build(&self, now: Instant) -> Option<Build> {
        let building = self.circuits.values().any(|p| !p.up);
        if building || now < self.next_build {
            return None;
        }
        let avoid: Vec<[u8; 32]> = self
            .circuits
            .values()
            .filter(|p| self.fresh(now, p))
            .map(|p| p.exit)
            .collect();
        if self.demand.is_some() {
            return Some(Build {
                avoid,
                port: self.demand,
            });
        }
        (avoid.len() < self.target).then_some(Build { avoid, port: None })
    }

    /// A circuit through exit `exit`, accepting `ports`, is being built; it answers
    /// the demanded port if its exit accepts it.
    pub fn building(
        &mut self,
        now: Instant,
        c: CircuitId,
        exit: [u8; 32],
        ports: Option<PortSummary>,
    ) {
        if let Some(d) = self.demand {
            if ports.as_ref().is_none_or(|s| s.accepts(d)) {
                self.demand = None;
            }
        }
        self.circuits.insert(
            c,
            Pooled {
                up: false,
                created: now,
                exit,
                ports,
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

    fn via(r: Route) -> CircuitId {
        match r {
            Route::Via(c) => c,
            other => panic!("not routed: {other:?}"),
        }
    }

    /// A pool of `ids`, all up, through exits accepting `ports` (`None`: unknown).
    fn pool_of(ids: &[CircuitId], ports: Option<&str>) -> CircuitPool {
        let t = Instant::now();
        let summary = ports.map(|s| s.parse::<PortSummary>().unwrap());
        let mut p = CircuitPool::new(
            8,
            Duration::from_secs(600),
            t,
            ids[0],
            [0; 32],
            summary.clone(),
        );
        for (i, &c) in ids.iter().enumerate().skip(1) {
            p.building(t, c, [u8::try_from(i).unwrap(); 32], summary.clone());
            p.on_up(c);
        }
        p
    }

    const A: CircuitId = CircuitId(1);
    const B: CircuitId = CircuitId(2);
    const C: CircuitId = CircuitId(3);

    #[test]
    fn per_destination_keeps_a_site_on_one_circuit_and_spreads_sites() {
        let mut r = FlowRouter::new(Isolation::PerDestination);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let all = pool_of(&[A, B, C], None);
        let t = Instant::now();
        let open = [A, B, C];
        let mut used = std::collections::HashSet::new();
        for site in 0..20u8 {
            let first = via(r.route(t, &mut rng, &tcp([198, 18, 9, site], 1000), &all, &open));
            for port in 1001..1010 {
                let again = r.route(t, &mut rng, &tcp([198, 18, 9, site], port), &all, &open);
                assert_eq!(again, Route::Via(first), "site {site} moved");
            }
            used.insert(first);
        }
        assert_eq!(used.len(), 3, "20 sites over 3 circuits use all of them");
        assert_eq!(r.len(), 20);
    }

    #[test]
    fn per_connection_and_single() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let all = pool_of(&[A, B, C], None);
        let t = Instant::now();
        let mut r = FlowRouter::new(Isolation::PerConnection);
        let mut used = std::collections::HashSet::new();
        for port in 0..40 {
            used.insert(via(r.route(
                t,
                &mut rng,
                &tcp([198, 18, 9, 1], 2000 + port),
                &all,
                &[A, B],
            )));
        }
        assert_eq!(
            used.len(),
            2,
            "connections to one site spread over circuits"
        );
        let mut r = FlowRouter::new(Isolation::Single);
        let first = via(r.route(t, &mut rng, &tcp([198, 18, 9, 1], 1), &all, &[A, B, C]));
        for site in 0..20 {
            assert_eq!(
                r.route(t, &mut rng, &tcp([198, 18, 9, site], 1), &all, &[A, B, C]),
                Route::Via(first)
            );
        }
    }

    #[test]
    fn flows_move_only_when_their_circuit_is_gone() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let all = pool_of(&[A, B, C], None);
        let t = Instant::now();
        let mut r = FlowRouter::new(Isolation::PerDestination);
        let p = tcp([198, 18, 9, 1], 1);
        let without_a = pool_of(&[B], None);
        let c = via(r.route(t, &mut rng, &p, &all, &[A]));
        assert_eq!(c, A);
        // A stops taking new flows (old) but is up: the flow stays.
        assert_eq!(r.route(t, &mut rng, &p, &all, &[B]), Route::Via(A));
        assert_eq!(r.flows_on(A), 1);
        // A goes down: the flow moves to an open circuit.
        assert_eq!(r.route(t, &mut rng, &p, &without_a, &[B]), Route::Via(B));
        r.forget_circuit(B);
        assert_eq!(r.flows_on(B), 0);
        assert_eq!(r.route(t, &mut rng, &p, &all, &[]), Route::Wait);
    }

    #[test]
    fn idle_flows_are_forgotten() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let all = pool_of(&[A, B, C], None);
        let t = Instant::now();
        let mut r = FlowRouter::new(Isolation::PerDestination);
        r.route(t, &mut rng, &tcp([198, 18, 9, 1], 1), &all, &[A]);
        r.route(
            t + FLOW_IDLE,
            &mut rng,
            &tcp([198, 18, 9, 2], 1),
            &all,
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
        let mut p = CircuitPool::new(3, life, t, A, [1; 32], None);
        assert_eq!(
            p.wants_build(t),
            Some(Build {
                avoid: vec![[1; 32]],
                port: None
            }),
            "avoid the first circuit's exit"
        );
        p.building(t, B, [2; 32], None);
        assert_eq!(p.wants_build(t), None, "one build at a time");
        p.on_up(B);
        p.building(t, C, [3; 32], None);
        p.on_up(C);
        assert_eq!(p.wants_build(t), None, "3 fresh circuits");
        let mut open = Vec::new();
        p.open(t, &mut open);
        assert_eq!(open, [A, B, C]);
    }

    #[test]
    fn pool_backs_off_after_failures() {
        let t = Instant::now();
        let mut p = CircuitPool::new(2, Duration::from_secs(600), t, A, [1; 32], None);
        p.building(t, B, [2; 32], None);
        assert!(p.on_down(t, B));
        assert_eq!(p.wants_build(t), None);
        assert!(p.wants_build(t + REBUILD_FIRST).is_some());
        p.building(t + REBUILD_FIRST, C, [2; 32], None);
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
        let mut p = CircuitPool::new(1, life, t, A, [1; 32], None);
        let site = tcp([198, 18, 9, 1], 1);
        assert_eq!(r.route(t, &mut rng, &site, &p, &[A]), Route::Via(A));
        let old = t + life;
        // The flow stays active until the circuit is old.
        let recent = old - Duration::from_secs(10);
        assert_eq!(r.route(recent, &mut rng, &site, &p, &[A]), Route::Via(A));
        let mut open = Vec::new();
        p.open(old, &mut open);
        assert_eq!(
            open,
            [A],
            "no fresh circuit yet: the old one still takes flows"
        );
        assert!(p.wants_build(old).is_some());
        p.building(old, B, [2; 32], None);
        p.on_up(B);
        p.open(old, &mut open);
        assert_eq!(open, [B], "new flows go to the fresh circuit");
        assert_eq!(p.retire(old, &mut r), [], "A still carries a flow");
        assert_eq!(r.route(old, &mut rng, &site, &p, &open), Route::Via(A));
        assert_eq!(
            p.retire(t + life * 2, &mut r),
            [A],
            "at twice its lifetime, regardless"
        );
        assert!(!p.contains(A));
        assert_eq!(r.flows_on(A), 0);
    }

    fn tcp_to(dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([100, 64, 0, 2], dst, 64)
            .tcp(40000, dport, 1, 1000)
            .write(&mut out, b"x")
            .unwrap();
        out
    }

    #[test]
    fn flows_go_only_to_exits_accepting_their_port() {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let t = Instant::now();
        let mut p = pool_of(&[A], Some("accept 80,443"));
        p.building(t, B, [2; 32], Some("reject 25".parse().unwrap()));
        p.on_up(B);
        p.building(t, C, [3; 32], Some("accept 25".parse().unwrap()));
        p.on_up(C);
        let mut r = FlowRouter::new(Isolation::PerDestination);
        let site = [198, 18, 9, 1];
        for _ in 0..50 {
            let mut r = FlowRouter::new(Isolation::PerConnection);
            assert_eq!(
                r.route(t, &mut rng, &tcp_to(site, 25), &p, &[A, B, C]),
                Route::Via(C)
            );
            assert_ne!(
                via(r.route(t, &mut rng, &tcp_to(site, 22), &p, &[A, B, C])),
                A
            );
        }
        // A destination's flow moves when a new port is one its exit refuses.
        let first = via(r.route(t, &mut rng, &tcp_to(site, 443), &p, &[A, B]));
        assert_eq!(
            r.route(t, &mut rng, &tcp_to(site, 25), &p, &[A, B, C]),
            Route::Via(C)
        );
        assert_ne!(first, C);
        // ICMP has no port: any circuit.
        let mut ping = Vec::new();
        PacketBuilder::ipv4([100, 64, 0, 2], [198, 18, 9, 2], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut ping, b"x")
            .unwrap();
        assert!(matches!(
            r.route(t, &mut rng, &ping, &p, &[A]),
            Route::Via(A)
        ));
    }

    #[test]
    fn a_port_no_open_exit_accepts_asks_for_a_circuit_or_is_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let t = Instant::now();
        let mut p = CircuitPool::new(
            1,
            Duration::from_secs(600),
            t,
            A,
            [1; 32],
            Some("accept 80,443".parse().unwrap()),
        );
        let mut r = FlowRouter::new(Isolation::PerDestination);
        let smtp = tcp_to([198, 18, 9, 1], 25);
        assert_eq!(r.route(t, &mut rng, &smtp, &p, &[A]), Route::NoExit(25));
        assert_eq!(p.wants_build(t), None, "the target of 1 is met");
        assert!(p.demand(t, 25));
        assert!(p.demand(t, 26), "one demand at a time; the later waits");
        assert_eq!(
            p.wants_build(t),
            Some(Build {
                avoid: vec![[1; 32]],
                port: Some(25)
            })
        );
        p.building(t, B, [2; 32], Some("accept 80".parse().unwrap()));
        p.on_down(t, B);
        assert_eq!(
            p.wants_build(t + REBUILD_FIRST).map(|b| b.port),
            Some(Some(25)),
            "still wanted"
        );
        p.no_exit(t, 25);
        assert!(!p.demand(t, 25), "refused while held");
        assert!(!p.demand(t + NO_EXIT_HOLD - Duration::from_millis(1), 25));
        assert!(
            p.demand(t + NO_EXIT_HOLD, 25),
            "searched again after the hold"
        );
        p.building(
            t + NO_EXIT_HOLD,
            C,
            [3; 32],
            Some("reject 22".parse().unwrap()),
        );
        p.on_up(C);
        assert_eq!(p.wants_build(t + NO_EXIT_HOLD), None, "answered by C");
        assert_eq!(r.route(t, &mut rng, &smtp, &p, &[A, C]), Route::Via(C));
    }
}
