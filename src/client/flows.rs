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
use crate::proto::ip::{self, FlowKey};
use crate::proto::ports::PortSummary;

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

/// When a table of idle entries was last swept: the client's tables forget idle
/// entries at most once a second, however many packets ask.
#[derive(Debug, Default)]
pub struct SweepClock(Option<Instant>);

impl SweepClock {
    /// Whether a sweep is due at `now` (then it counts as done).
    pub fn due(&mut self, now: Instant) -> bool {
        let due = self
            .0
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if due {
            self.0 = Some(now);
        }
        due
    }
}

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
    sweeps: SweepClock,
}

impl FlowRouter {
    #[must_use]
    pub fn new(isolation: Isolation) -> Self {
        Self {
            isolation,
            flows: HashMap::new(),
            sweeps: SweepClock::default(),
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
        let summary = ip::summarize(pkt).ok();
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
        if !self.sweeps.due(now) {
            return;
        }
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

/// Paths drawn again at most when a path's exit is one to avoid: past that the known
/// gateways offer too few other exits, and the last draw is taken.
pub const EXIT_REDRAWS: usize = 4;

impl Build {
    /// A path for this build from `draw` (a fresh random path each call) whose exit
    /// (`exit_of`) differs from the ones to avoid, where [`EXIT_REDRAWS`] more draws
    /// find one.
    pub fn choose<P, E>(
        &self,
        mut draw: impl FnMut() -> Result<P, E>,
        exit_of: impl Fn(&P) -> Option<[u8; 32]>,
    ) -> Result<P, E> {
        let mut path = draw()?;
        for _ in 0..EXIT_REDRAWS {
            match exit_of(&path) {
                Some(k) if self.avoid.contains(&k) => path = draw()?,
                _ => break,
            }
        }
        Ok(path)
    }
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

    /// A circuit went down; returns whether it was the pool's. A circuit that was up
    /// (a gateway on it died, say) is replaced at once; after a failed build the next
    /// waits for the back-off. (Backing off for lost circuits too made a pool whose
    /// 3 circuits died together wait 4 s before its first rebuild.)
    pub fn on_down(&mut self, now: Instant, c: CircuitId) -> bool {
        match self.circuits.remove(&c) {
            None => return false,
            Some(p) if p.up => self.next_build = self.next_build.min(now),
            Some(_) => self.build_failed(now),
        }
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

    /// When the pool's decisions next change with nothing happening: the back-off
    /// of the next build ending, a circuit ageing past its lifetime (it takes no new
    /// flows and is replaced) or past twice it (it is retired). A driver wakes then.
    #[must_use]
    pub fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        self.circuits
            .values()
            .flat_map(|p| [p.created + self.lifetime, p.created + self.lifetime * 2])
            .chain([self.next_build])
            .filter(|&t| t > now)
            .min()
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
mod tests;
