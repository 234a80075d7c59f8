//! Per-flow routes (sans-IO): which of a client's circuits carries each flow.
//!
//! The client keeps a pool of circuits (through different exits where possible). A
//! new flow is given a random circuit among those still taking new flows, and keeps
//! it while that circuit is up, so one destination (or connection) is never spread
//! over several exits, while different destinations are. What a flow is depends on
//! the [`Isolation`] policy.

use std::collections::HashMap;
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
        let pick = open[(rng.next_u32() as usize) % open.len()];
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
}
