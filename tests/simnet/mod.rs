//! The deterministic multi-node simulation of the sans-IO core on a virtual clock,
//! shared by `tests/sim.rs` and `tests/timing_attack.rs`.
//!
//! `Net` owns every node, a queue of datagrams in flight with their delivery time,
//! and a seeded RNG for the network (loss, duplication, jitter). Nothing reads the
//! real clock: time is `base + offset` and advances in `STEP`s.

// Each test file uses a part of the harness.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anonnet::node::{
    CircuitId, DownReason, Event, HopSpec, Node, NodeConfig, Output, Stats, Transmit,
};
use anonnet::proto::identity::Identity;
use anonnet::proto::wire::{Cmd, Service};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

pub const STEP: Duration = Duration::from_millis(5);
pub const CELL: u8 = 0x14;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    Up(CircuitId),
    Down(CircuitId, DownReason),
    Data(CircuitId, Vec<u8>),
    ExitData(CircuitId, Vec<u8>),
    /// A JOIN, JOINED or VDATA payload: at the exit (forward) or the client.
    Vc(CircuitId, Cmd, Vec<u8>),
    ExitClosed(CircuitId),
}

#[derive(Debug, Clone)]
pub struct Dgram {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub buf: Vec<u8>,
}

/// Sees every datagram a node sends; returns false to drop it.
pub type Tap = Box<dyn FnMut(&mut Dgram, &mut ChaCha20Rng) -> bool>;

pub struct SimNode {
    pub addr: SocketAddr,
    pub node: Node,
    pub rng: ChaCha20Rng,
    pub spec: Option<HopSpec>,
    pub alive: bool,
    /// Its settings, to start it again ([`Net::restart`]).
    pub cfg: NodeConfig,
}

pub struct Net {
    pub base: Instant,
    pub now: Instant,
    pub nodes: Vec<SimNode>,
    pub by_addr: HashMap<SocketAddr, usize>,
    pub queue: BTreeMap<(Instant, u64), Dgram>,
    pub seq: u64,
    pub rng: ChaCha20Rng,
    pub loss_pct: u32,
    pub dup_pct: u32,
    pub latency: Duration,
    pub jitter: Duration,
    /// Jitter delays but does not reorder: each (source, destination) keeps its
    /// datagrams in order, as one network path does.
    pub in_order: bool,
    /// When the latest datagram of each (source, destination) arrives.
    pub last_at: HashMap<(SocketAddr, SocketAddr), Instant>,
    pub tap: Option<Tap>,
    /// Extra delay of every datagram to or from an address (a slow gateway).
    pub slow: HashMap<SocketAddr, Duration>,
    pub log: Vec<(Duration, usize, Ev)>,
    pub gateways: Vec<usize>,
    pub clients: Vec<usize>,
}

pub fn gw_addr(i: usize) -> SocketAddr {
    // Every third gateway is IPv6.
    if i % 3 == 2 {
        format!("[2001:db8::{:x}]:9000", i + 1)
    } else {
        format!("198.18.0.{}:9000", i + 1)
    }
    .parse()
    .expect("addr")
}

pub fn client_addr(i: usize) -> SocketAddr {
    if i % 2 == 1 {
        format!("[2001:db8::1:{:x}]:9000", i + 1)
    } else {
        format!("198.18.1.{}:9000", i + 1)
    }
    .parse()
    .expect("addr")
}

impl Net {
    pub fn new(seed: u64, gateways: usize, clients: usize) -> Self {
        Self::with_config(seed, gateways, clients, |_| {})
    }

    pub fn with_config(
        seed: u64,
        gateways: usize,
        clients: usize,
        tweak: impl Fn(&mut NodeConfig),
    ) -> Self {
        let mut master = ChaCha20Rng::seed_from_u64(seed);
        let base = Instant::now();
        let mut net = Self {
            base,
            now: base,
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            rng: ChaCha20Rng::seed_from_u64(master.next_u64()),
            loss_pct: 0,
            dup_pct: 0,
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            in_order: false,
            last_at: HashMap::new(),
            tap: None,
            slow: HashMap::new(),
            log: Vec::new(),
            gateways: Vec::new(),
            clients: Vec::new(),
        };
        for i in 0..gateways {
            let mut rng = ChaCha20Rng::seed_from_u64(master.next_u64());
            let id = Identity::generate(&mut rng);
            let addr = gw_addr(i);
            let mut cfg = NodeConfig {
                static_key: Some(*id.secret()),
                echo: true,
                ..NodeConfig::default()
            };
            tweak(&mut cfg);
            net.gateways.push(net.nodes.len());
            net.push(
                addr,
                cfg,
                rng,
                Some(HopSpec {
                    addr,
                    key: id.public().0,
                }),
            );
        }
        for i in 0..clients {
            let rng = ChaCha20Rng::seed_from_u64(master.next_u64());
            let mut cfg = NodeConfig::default();
            tweak(&mut cfg);
            net.clients.push(net.nodes.len());
            net.push(client_addr(i), cfg, rng, None);
        }
        net
    }

    pub fn push(
        &mut self,
        addr: SocketAddr,
        cfg: NodeConfig,
        rng: ChaCha20Rng,
        spec: Option<HopSpec>,
    ) {
        self.by_addr.insert(addr, self.nodes.len());
        self.nodes.push(SimNode {
            addr,
            node: Node::new(cfg.clone()),
            rng,
            spec,
            alive: true,
            cfg,
        });
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    pub fn spec(&self, node: usize) -> HopSpec {
        self.nodes[node].spec.expect("gateway")
    }

    pub fn pct(&mut self, p: u32) -> bool {
        p > 0 && self.rng.next_u32() % 100 < p
    }

    /// Puts what node `from` sent on the network (`None`: the cell waits in the node
    /// for its paced link's slot).
    pub fn transmit(&mut self, from: usize, t: Option<Transmit>) {
        if let Some(t) = t {
            let src = self.nodes[from].addr;
            self.send(Dgram {
                src,
                dst: t.dst,
                buf: t.buf,
            });
        }
    }

    /// Puts a datagram on the network: tap, loss, duplication, latency and jitter.
    pub fn send(&mut self, mut d: Dgram) {
        if let Some(tap) = self.tap.as_mut() {
            if !tap(&mut d, &mut self.rng) {
                return;
            }
        }
        if self.pct(self.loss_pct) {
            return;
        }
        let slow = [d.src, d.dst]
            .iter()
            .filter_map(|a| self.slow.get(a))
            .sum::<Duration>();
        if self.pct(self.dup_pct) {
            let at = self.now + self.delay() + slow;
            self.enqueue(at, d.clone());
        }
        let mut at = self.now + self.delay() + slow;
        if self.in_order {
            let last = self.last_at.entry((d.src, d.dst)).or_insert(at);
            at = at.max(*last);
            *last = at;
        }
        self.enqueue(at, d);
    }

    pub fn delay(&mut self) -> Duration {
        let mut delay = self.latency;
        if !self.jitter.is_zero() {
            let j = u64::try_from(self.jitter.as_nanos()).expect("jitter");
            delay += Duration::from_nanos(self.rng.next_u64() % j);
        }
        delay
    }

    /// Puts a datagram in flight untouched (for replays).
    pub fn enqueue(&mut self, at: Instant, d: Dgram) {
        self.seq += 1;
        self.queue.insert((at, self.seq), d);
    }

    pub fn alive_at(&self, a: SocketAddr) -> Option<usize> {
        self.by_addr
            .get(&a)
            .copied()
            .filter(|&i| self.nodes[i].alive)
    }

    pub fn deliver(&mut self, d: Dgram) {
        let Some(i) = self.alive_at(d.dst) else {
            return;
        };
        if self.by_addr.contains_key(&d.src) && self.alive_at(d.src).is_none() {
            return;
        }
        let now = self.now;
        let n = &mut self.nodes[i];
        if let Output::Transmit(t) =
            n.node
                .handle_datagram(now, &mut n.rng, Some(d.dst), d.src, d.buf)
        {
            let src = n.addr;
            self.send(Dgram {
                src,
                dst: t.dst,
                buf: t.buf,
            });
        }
    }

    pub fn drain(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].alive {
                continue;
            }
            while let Some(t) = self.nodes[i].node.poll_transmit() {
                let src = self.nodes[i].addr;
                self.send(Dgram {
                    src,
                    dst: t.dst,
                    buf: t.buf,
                });
            }
            while let Some(e) = self.nodes[i].node.poll_event() {
                let ev = match e {
                    Event::CircuitUp(c) => Ev::Up(c),
                    Event::CircuitDown(c, r) => Ev::Down(c, r),
                    Event::Data {
                        circuit,
                        cmd: Cmd::Data,
                        buf,
                        range,
                    } => Ev::Data(circuit, buf[range].to_vec()),
                    Event::ServiceData {
                        circuit,
                        cmd: Cmd::Data,
                        buf,
                        range,
                        ..
                    } => Ev::ExitData(circuit, buf[range].to_vec()),
                    Event::Data {
                        circuit,
                        cmd,
                        buf,
                        range,
                    }
                    | Event::ServiceData {
                        circuit,
                        cmd,
                        buf,
                        range,
                        ..
                    } => Ev::Vc(circuit, cmd, buf[range].to_vec()),
                    Event::ServiceClosed(c, _) => Ev::ExitClosed(c),
                };
                let t = self.elapsed();
                self.log.push((t, i, ev));
            }
        }
    }

    pub fn step(&mut self) {
        self.now += STEP;
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let d = entry.remove();
            self.deliver(d);
        }
        let now = self.now;
        for n in &mut self.nodes {
            if !n.alive {
                continue;
            }
            if n.node.poll_timeout().is_some_and(|t| now >= t) {
                n.node.handle_timeout(now, &mut n.rng);
            }
        }
        self.drain();
    }

    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    /// Steps until `done` holds or `limit` passes; whether it held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    pub fn build(&mut self, client: usize, path: &[usize]) -> CircuitId {
        self.build_to(client, path, Service::Echo)
    }

    /// Starts building a circuit of `client` through `path` to `service`.
    pub fn build_to(&mut self, client: usize, path: &[usize], service: Service) -> CircuitId {
        let specs: Vec<HopSpec> = path.iter().map(|&g| self.spec(g)).collect();
        let now = self.now;
        let n = &mut self.nodes[client];
        let id = n
            .node
            .build_circuit(now, &mut n.rng, &specs, service)
            .expect("build");
        self.drain();
        id
    }

    /// Builds a circuit through `path` and waits (5 s at most) until it is up.
    pub fn build_up(&mut self, client: usize, path: &[usize]) -> CircuitId {
        self.build_up_to(client, path, Service::Echo)
    }

    /// [`Net::build_up`] to `service`.
    pub fn build_up_to(&mut self, client: usize, path: &[usize], service: Service) -> CircuitId {
        let from = self.log.len();
        let id = self.build_to(client, path, service);
        self.run_until(Duration::from_secs(5), |n| {
            n.outcome(client, id, from).is_some()
        });
        let outcome = self.outcome(client, id, from);
        assert!(matches!(outcome, Some(Ev::Up(_))), "{outcome:?}");
        id
    }

    pub fn send_payload(&mut self, client: usize, id: CircuitId, payload: &[u8]) {
        let now = self.now;
        let n = &mut self.nodes[client];
        let sent = n
            .node
            .send_payload(now, &mut n.rng, id, payload)
            .expect("send");
        self.transmit(client, sent);
    }

    pub fn close(&mut self, client: usize, id: CircuitId) {
        self.nodes[client].node.close_circuit(id);
        self.drain();
    }

    /// The first Up/Down event of circuit `id` at `client` from log index `from`.
    pub fn outcome(&self, client: usize, id: CircuitId, from: usize) -> Option<Ev> {
        self.log[from..].iter().find_map(|(_, n, e)| match e {
            Ev::Up(c) | Ev::Down(c, _) if *n == client && *c == id => Some(e.clone()),
            _ => None,
        })
    }

    pub fn down_event(&self, client: usize, id: CircuitId) -> Option<(Duration, DownReason)> {
        self.log.iter().find_map(|(t, n, e)| match e {
            Ev::Down(c, r) if *n == client && *c == id => Some((*t, *r)),
            _ => None,
        })
    }

    /// Payloads echoed to `client` on `id`, in arrival order.
    pub fn received(&self, client: usize, id: CircuitId) -> Vec<Vec<u8>> {
        self.log
            .iter()
            .filter_map(|(_, n, e)| match e {
                Ev::Data(c, p) if *n == client && *c == id => Some(p.clone()),
                _ => None,
            })
            .collect()
    }

    /// Node `node`'s events logged since `*seen` (a log index), which moves to the
    /// end of the log.
    pub fn events_since(&self, node: usize, seen: &mut usize) -> Vec<Ev> {
        let new = self.log[*seen..]
            .iter()
            .filter(|(_, n, _)| *n == node)
            .map(|(_, _, e)| e.clone())
            .collect();
        *seen = self.log.len();
        new
    }

    pub fn stats(&self) -> Vec<Stats> {
        self.nodes.iter().map(|n| n.node.stats().clone()).collect()
    }

    pub fn kill(&mut self, node: usize) {
        self.nodes[node].alive = false;
    }

    /// Starts a killed node again: same identity and address, no state.
    pub fn restart(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.node = Node::new(n.cfg.clone());
        n.alive = true;
    }
}

/// `k` distinct random gateways.
pub fn pick_path(rng: &mut ChaCha20Rng, gateways: &[usize], k: usize) -> Vec<usize> {
    let mut pool = gateways.to_vec();
    let mut path = Vec::with_capacity(k);
    for _ in 0..k {
        let i = usize::try_from(rng.next_u32()).expect("u32") % pool.len();
        path.push(pool.swap_remove(i));
    }
    path
}
