//! The harness of the authenticated hostile peer, shared by `tests/hostile_peer.rs`
//! (seeded random actions) and the fuzz targets in `fuzz/` (actions from the
//! fuzzer's bytes).
//!
//! Real [`Node`]s in memory on a virtual clock: a hostile client with three real
//! circuits through three gateways, an honest client with one, the exit's real
//! [`Exit`] and [`Reassembler`]. A [`Session`] applies [`Action`]s: forged cells
//! sealed with the hostile client's keys (or, backward, the gateways' keys towards
//! it), forged link control, and time passing while the honest client sends. It
//! checks as it goes that each datagram a node handles produces a transmit or an
//! event or moves a counter, that the honest client's circuit stays up and every one
//! of its packets leaves the exit, and that tables stay bounded.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anonnet::exit::policy::ExitPolicy;
use anonnet::exit::vc::{Accepted, VC_REORDER_BYTES};
use anonnet::exit::{Exit, ExitDue, ExitSettings, Owner, Verdict};
use anonnet::node::{
    Adaptive, CircuitId, DownReason, Event, ForgedBackward, ForgedForward, HopSpec, MachineSpec,
    Node, NodeConfig, Output, Transmit, FRONT_DEFAULT, TAIL_LEN,
};
use anonnet::proto::addr::CLIENT_V4;
use anonnet::proto::framing::{Carrier, Reassembler};
use anonnet::proto::identity::Identity;
use anonnet::proto::vc::{split_vdata, Joined, JOINED_LEN, SEQ_LEN};
use anonnet::proto::wire::{Cmd, Service, PAYLOAD_OFFSET, SLOTS};
use etherparse::PacketBuilder;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

pub const HOSTILE: usize = 0;
pub const HONEST: usize = 1;
pub const G1: usize = 2;
pub const G2: usize = 3;
pub const G3: usize = 4;
pub const GATEWAYS: [usize; 3] = [G1, G2, G3];

/// The internet server behind the exit.
pub const SERVER: [u8; 4] = [198, 18, 5, 2];
/// The exit's own underlay address (its policy refuses it).
pub const EXIT_OWN: [u8; 4] = [198, 18, 4, 2];

pub struct Peer {
    addr: SocketAddr,
    node: Node,
    rng: ChaCha20Rng,
}

/// The datagrams handled and those that left no trace.
#[derive(Default)]
struct Audit {
    handled: u64,
    uncounted: u64,
    first_uncounted: Vec<String>,
}

pub struct Net {
    now: Instant,
    peers: Vec<Peer>,
    specs: Vec<HopSpec>,
    pub exit: Exit,
    reasm: HashMap<(usize, CircuitId), Reassembler>,
    answer: Vec<u8>,
    audit: Audit,
    /// Circuits of the exit (`G3`) that belong to the honest client.
    honest_at_exit: BTreeSet<CircuitId>,
    /// Relayed circuits of each gateway that belong to the honest client.
    honest_relays: HashMap<usize, BTreeSet<CircuitId>>,
    /// Packets of the honest client the exit forwarded.
    honest_forwarded: u64,
    /// Own circuits that went down, by node.
    down: Vec<(usize, CircuitId, DownReason)>,
}

impl Net {
    fn new(seed: u64) -> Self {
        let mut master = ChaCha20Rng::seed_from_u64(seed);
        let mut peers = Vec::new();
        let mut specs = Vec::new();
        for i in 0..2u8 {
            // Both clients pad (the shipped machines), so forged cells reach the
            // padding machines too.
            let cfg = NodeConfig {
                adaptive: Some(Adaptive {
                    machines: vec![MachineSpec::Netflow, FRONT_DEFAULT],
                }),
                ..NodeConfig::default()
            };
            peers.push(Peer {
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 1, i + 1)), 9000),
                node: Node::new(cfg),
                rng: ChaCha20Rng::seed_from_u64(master.next_u64()),
            });
        }
        for i in 0..3u8 {
            let id = Identity::generate(&mut master);
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 2, i + 1)), 9000);
            let cfg = NodeConfig {
                static_key: Some(*id.secret()),
                echo: true,
                exit: true,
                ..NodeConfig::default()
            };
            peers.push(Peer {
                addr,
                node: Node::new(cfg),
                rng: ChaCha20Rng::seed_from_u64(master.next_u64()),
            });
            specs.push(HopSpec {
                addr,
                key: id.public().0,
            });
        }
        let exit = Exit::new(ExitSettings {
            pool4: "100.96.0.0/16".parse().expect("pool4"),
            pool6: "fd00:96::/64".parse().expect("pool6"),
            policy: ExitPolicy::new(&[], &[IpAddr::from(EXIT_OWN)]).expect("policy"),
            max_flows: 256,
            max_pps: 1_000_000,
        });
        Self {
            now: Instant::now(),
            peers,
            specs,
            exit,
            reasm: HashMap::new(),
            answer: Vec::new(),
            audit: Audit::default(),
            honest_at_exit: BTreeSet::new(),
            honest_relays: HashMap::new(),
            honest_forwarded: 0,
            down: Vec::new(),
        }
    }

    pub fn spec(&self, gateway: usize) -> HopSpec {
        self.specs[gateway - G1]
    }

    /// Delivers `t`, sent by node `from`, and everything it causes.
    fn deliver(&mut self, from: usize, t: Transmit) {
        let mut queue = VecDeque::from([(from, t)]);
        while let Some((src, t)) = queue.pop_front() {
            let Some(i) = self.peers.iter().position(|p| p.addr == t.dst) else {
                continue;
            };
            let src_addr = self.peers[src].addr;
            let p = &mut self.peers[i];
            let before = p.node.stats().outcomes();
            let out = p
                .node
                .handle_datagram(self.now, &mut p.rng, Some(t.dst), src_addr, t.buf);
            let mut produced = !matches!(out, Output::Recycle(_));
            if let Output::Transmit(out) = out {
                queue.push_back((i, out));
            }
            while let Some(out) = self.peers[i].node.poll_transmit() {
                produced = true;
                queue.push_back((i, out));
            }
            while let Some(e) = self.peers[i].node.poll_event() {
                produced = true;
                if let Some(answer) = self.on_event(i, e) {
                    queue.push_back((i, answer));
                }
            }
            self.audit.handled += 1;
            if !produced && self.peers[i].node.stats().outcomes() == before {
                self.audit.uncounted += 1;
                if self.audit.first_uncounted.len() < 5 {
                    let after = self.peers[i].node.stats().clone();
                    self.audit
                        .first_uncounted
                        .push(format!("node {i} from {src}: {after:?}"));
                }
            }
        }
    }

    /// What the drivers do with an event: the exit's reassembly and policy, the
    /// clients' reassembly. Returns the exit's answer, if any.
    fn on_event(&mut self, node: usize, e: Event) -> Option<Transmit> {
        match e {
            Event::ServiceData {
                circuit,
                service: Service::Exit,
                cmd: Cmd::Data,
                mut buf,
                range,
            } => {
                let r = self.reasm.entry((node, circuit)).or_default();
                let Ok(Some(pkt)) = r.complete(self.now, &mut buf[range]) else {
                    return None;
                };
                let verdict = self
                    .exit
                    .from_circuit(self.now, circuit, pkt, &mut self.answer);
                self.exit_verdict(node, Owner::Circuit(circuit), verdict)
            }
            Event::ServiceData {
                circuit,
                service: Service::Exit,
                cmd: Cmd::Join,
                buf,
                range,
            } => match self.exit.join(self.now, circuit, &buf[range], &|c| {
                self.peers[node].node.last_forward(c)
            }) {
                Ok(Accepted { legs, replaced }) => {
                    if let Some(old) = replaced {
                        self.peers[node].node.destroy_service(old);
                    }
                    let mut out = vec![0u8; PAYLOAD_OFFSET];
                    out.extend_from_slice(&Joined { legs }.emit());
                    self.peers[node]
                        .node
                        .send_backward_cell(self.now, circuit, Cmd::Joined, out, JOINED_LEN)
                        .ok()
                        .flatten()
                }
                Err(_) => {
                    self.peers[node].node.destroy_service(circuit);
                    None
                }
            },
            Event::ServiceData {
                circuit,
                service: Service::Exit,
                cmd: Cmd::VData,
                mut buf,
                range,
            } => {
                let payload = &mut buf[range];
                let (seq, rest) = match split_vdata(payload) {
                    Ok((seq, _)) => (seq, &mut payload[SEQ_LEN..]),
                    Err(_) => return None,
                };
                let r = self
                    .reasm
                    .entry((node, circuit))
                    .or_insert_with(|| Reassembler::new(Carrier::VData));
                let Ok(Some(pkt)) = r.complete(self.now, rest) else {
                    return None;
                };
                let mut ready = Vec::new();
                let Ok(owner) =
                    self.exit
                        .from_leg(self.now, circuit, seq, pkt.to_vec(), &mut ready)
                else {
                    return None;
                };
                let mut answer = None;
                for mut p in ready {
                    let verdict = self
                        .exit
                        .from_circuit(self.now, owner, &mut p, &mut self.answer);
                    answer = answer.or(self.exit_verdict(node, owner, verdict));
                }
                answer
            }
            Event::Data {
                circuit,
                mut buf,
                range,
                ..
            } => {
                let r = self.reasm.entry((node, circuit)).or_default();
                let _ = r.complete(self.now, &mut buf[range]);
                None
            }
            Event::ServiceClosed(circuit, _) => {
                if node == G3 {
                    // No kernel here whose connection tracking must forget them first.
                    if let Some(closed) = self.exit.close(self.now, circuit) {
                        self.exit.release(closed);
                    }
                }
                self.reasm.remove(&(node, circuit));
                None
            }
            Event::CircuitDown(c, reason) => {
                self.down.push((node, c, reason));
                None
            }
            Event::ServiceData { .. } | Event::CircuitUp(_) => None,
        }
    }

    /// What the exit does with its verdict on a packet of `owner`: counts an honest
    /// packet that left, or answers a refused one.
    fn exit_verdict(&mut self, node: usize, owner: Owner, verdict: Verdict) -> Option<Transmit> {
        match verdict {
            Verdict::Forward => {
                if matches!(owner, Owner::Circuit(c) if self.honest_at_exit.contains(&c)) {
                    self.honest_forwarded += 1;
                }
                None
            }
            Verdict::Answer => {
                let mut out = vec![0u8; PAYLOAD_OFFSET + self.answer.len()];
                out[PAYLOAD_OFFSET..].copy_from_slice(&self.answer);
                let len = self.answer.len();
                let peer = &self.peers[node].node;
                let (leg, seq) = self
                    .exit
                    .route_back(self.now, owner, &|c| peer.last_forward(c))?;
                let node = &mut self.peers[node].node;
                match seq {
                    None => node.send_backward(self.now, leg, out, len),
                    Some(n) => {
                        out.splice(PAYLOAD_OFFSET..PAYLOAD_OFFSET, n.to_be_bytes());
                        node.send_backward_cell(self.now, leg, Cmd::VData, out, len + SEQ_LEN)
                    }
                }
                .ok()
                .flatten()
            }
            Verdict::Drop => None,
        }
    }

    fn flush(&mut self, node: usize) {
        while let Some(t) = self.peers[node].node.poll_transmit() {
            self.deliver(node, t);
        }
    }

    /// Builds a circuit of `client` through `path` to `service`; `None` if it did not
    /// come up.
    fn build(&mut self, client: usize, path: &[usize], service: Service) -> Option<CircuitId> {
        let hops: Vec<HopSpec> = path.iter().map(|&g| self.spec(g)).collect();
        let before: HashMap<usize, BTreeSet<CircuitId>> = GATEWAYS
            .iter()
            .map(|&g| (g, self.peers[g].node.relayed().collect()))
            .collect();
        let p = &mut self.peers[client];
        let id = p
            .node
            .build_circuit(self.now, &mut p.rng, &hops, service)
            .ok()?;
        self.flush(client);
        if client == HONEST {
            for &g in &GATEWAYS {
                let new: Vec<CircuitId> = self.peers[g]
                    .node
                    .relayed()
                    .filter(|c| !before[&g].contains(c))
                    .collect();
                if g == G3 {
                    self.honest_at_exit.extend(new.iter().copied());
                }
                self.honest_relays.entry(g).or_default().extend(new);
            }
        }
        self.peers[client].node.is_up(id).then_some(id)
    }

    /// Runs every node's timers at `now`.
    fn tick(&mut self) {
        for i in 0..self.peers.len() {
            let p = &mut self.peers[i];
            p.node.handle_timeout(self.now, &mut p.rng);
            self.flush(i);
            while let Some(e) = self.peers[i].node.poll_event() {
                if let Some(t) = self.on_event(i, e) {
                    self.deliver(i, t);
                }
            }
        }
        while let Some(due) = self.exit.handle_timeout(self.now) {
            match due {
                ExitDue::Packets(owner, packets) => {
                    for mut p in packets {
                        let verdict =
                            self.exit
                                .from_circuit(self.now, owner, &mut p, &mut self.answer);
                        if let Some(t) = self.exit_verdict(G3, owner, verdict) {
                            self.deliver(G3, t);
                        }
                    }
                }
                ExitDue::Closed(closed) => {
                    if let Some(closed) = closed {
                        self.exit.release(closed);
                    }
                }
            }
        }
    }
}

/// A UDP packet from the client's tunnel address to `dst`.
pub fn udp(dst: [u8; 4], port: u16, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(CLIENT_V4.octets(), dst, 64)
        .udp(40_000, port)
        .write(&mut out, &vec![0x5a; len])
        .expect("packet");
    out
}

/// The hostile client's circuits: (path, service).
pub const HOSTILE_PATHS: [(&[usize], Service); 3] = [
    (&[G1, G2, G3], Service::Exit),
    (&[G2, G1], Service::Echo),
    (&[G3], Service::Exit),
];

/// One step of a hostile session.
#[derive(Debug, Clone)]
pub enum Action {
    /// The hostile client forges a forward cell on its circuit `circuit`
    /// (an index into [`HOSTILE_PATHS`], taken modulo).
    Forward {
        circuit: usize,
        target: usize,
        terminal: bool,
        counters: [Option<u64>; SLOTS],
        cid: Option<u32>,
        body: Vec<u8>,
        tail: [u8; TAIL_LEN],
    },
    /// Hop `hop` of the hostile client's circuit `circuit` forges a backward cell on
    /// one of its relayed circuits that is not the honest client's (`pick` modulo).
    Backward {
        circuit: usize,
        hop: usize,
        pick: usize,
        counter: Option<u64>,
        body: Vec<u8>,
        tail: [u8; TAIL_LEN],
    },
    /// The hostile client forges a link control message on its circuit's first link.
    Ctrl {
        circuit: usize,
        kind: u8,
        cid: Option<u32>,
        counter: Option<u64>,
        body: Vec<u8>,
    },
    /// Time passes (timers run) and the honest client sends a packet.
    Wait { millis: u16 },
}

/// What a session did, for the report.
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub forward: u64,
    pub backward: u64,
    pub ctrl: u64,
    pub honest_sent: u64,
    pub rebuilt: u64,
    pub fresh_starts: u64,
}

impl Counts {
    /// Forged datagrams sent.
    pub fn forged(&self) -> u64 {
        self.forward + self.backward + self.ctrl
    }
}

/// A network with established circuits, driven by [`Action`]s.
pub struct Session {
    pub net: Net,
    pub start: Instant,
    circuits: Vec<Option<CircuitId>>,
    honest: CircuitId,
    pub counts: Counts,
}

impl Session {
    pub fn new(seed: u64) -> Self {
        let mut net = Net::new(seed);
        let start = net.now;
        let honest = net
            .build(HONEST, &[G1, G2, G3], Service::Exit)
            .expect("the honest circuit comes up");
        let circuits: Vec<Option<CircuitId>> = HOSTILE_PATHS
            .iter()
            .map(|(path, svc)| net.build(HOSTILE, path, *svc))
            .collect();
        assert!(circuits.iter().all(Option::is_some), "hostile circuits up");
        Self {
            net,
            start,
            circuits,
            honest,
            counts: Counts::default(),
        }
    }

    /// Rebuilds the hostile client's circuits that went down (it destroys its own).
    /// Forged link control can wreck its own link (a counter far ahead makes its next
    /// BUILD a replay): then it starts afresh, as a new client would.
    fn rebuild(&mut self) {
        if self.build_missing() {
            return;
        }
        self.net.peers[HOSTILE].node = Node::new(NodeConfig::default());
        self.circuits.fill(None);
        self.counts.fresh_starts += 1;
        if !self.build_missing() {
            self.report();
            panic!(
                "a fresh client cannot build {:?}: {:?}, down: {:?}",
                self.circuits,
                self.counts,
                &self.net.down[self.net.down.len().saturating_sub(6)..]
            );
        }
    }

    /// Builds the hostile circuits that are not up; whether all are up now.
    fn build_missing(&mut self) -> bool {
        for (i, (path, svc)) in HOSTILE_PATHS.iter().enumerate() {
            let up = self.circuits[i].is_some_and(|c| self.net.peers[HOSTILE].node.is_up(c));
            if !up {
                self.circuits[i] = self.net.build(HOSTILE, path, *svc);
                self.counts.rebuilt += 1;
            }
        }
        self.circuits.iter().all(Option::is_some)
    }

    /// Lets `time` pass, running the nodes' timers at their deadlines as the drivers
    /// do; the honest circuit must stay up.
    fn pass(&mut self, time: Duration) {
        let net = &mut self.net;
        let end = net.now + time;
        let mut spins = 0;
        while net.now < end {
            let next = net.peers.iter().filter_map(|p| p.node.poll_timeout()).min();
            // A run may set another timer at once (a PING a keepalive asked for), but
            // a timer that stays due is a driver spinning.
            spins = if next.is_some_and(|t| t <= net.now) {
                spins + 1
            } else {
                0
            };
            assert!(spins < 8, "a timer stays due at {:?}", net.now - self.start);
            net.now = next.map_or(end, |t| t.clamp(net.now, end));
            net.tick();
        }
        assert!(
            net.peers[HONEST].node.is_up(self.honest),
            "the honest circuit went down at {:?}: {:?} ({:?})",
            net.now - self.start,
            net.down,
            self.counts
        );
    }

    /// Applies one action and checks the invariants.
    pub fn apply(&mut self, action: &Action) {
        self.rebuild();
        match action {
            Action::Forward {
                circuit,
                target,
                terminal,
                counters,
                cid,
                body,
                tail,
            } => {
                let which = circuit % HOSTILE_PATHS.len();
                let Some(id) = self.circuits[which] else {
                    return;
                };
                let cell = ForgedForward {
                    target: *target,
                    terminal: *terminal,
                    counters: *counters,
                    cid: *cid,
                    body,
                    tail: *tail,
                };
                if let Ok(t) = self.net.peers[HOSTILE].node.forge_forward(id, &cell) {
                    self.net.deliver(HOSTILE, t);
                    self.counts.forward += 1;
                }
            }
            Action::Backward {
                circuit,
                hop,
                pick,
                counter,
                body,
                tail,
            } => {
                let (path, _) = HOSTILE_PATHS[circuit % HOSTILE_PATHS.len()];
                let g = path[hop % path.len()];
                let honest = self.net.honest_relays.get(&g);
                let theirs: Vec<CircuitId> = self.net.peers[g]
                    .node
                    .relayed()
                    .filter(|c| !honest.is_some_and(|h| h.contains(c)))
                    .collect();
                if theirs.is_empty() {
                    return;
                }
                let relay = theirs[pick % theirs.len()];
                let cell = ForgedBackward {
                    counter: *counter,
                    body,
                    tail: *tail,
                };
                if let Ok(t) = self.net.peers[g].node.forge_backward(relay, &cell) {
                    self.net.deliver(g, t);
                    self.counts.backward += 1;
                }
            }
            Action::Ctrl {
                circuit,
                kind,
                cid,
                counter,
                body,
            } => {
                let Some(id) = self.circuits[circuit % HOSTILE_PATHS.len()] else {
                    return;
                };
                if let Ok(t) = self.net.peers[HOSTILE]
                    .node
                    .forge_ctrl(id, *kind, *cid, *counter, body)
                {
                    self.net.deliver(HOSTILE, t);
                    self.counts.ctrl += 1;
                }
            }
            Action::Wait { millis } => {
                self.pass(Duration::from_millis(u64::from(*millis)));
                let p = &mut self.net.peers[HONEST];
                let pkt = udp(SERVER, 53, 100);
                let t = p
                    .node
                    .send_payload(self.net.now, &mut p.rng, self.honest, &pkt)
                    .expect("honest send")
                    .expect("not paced");
                self.counts.honest_sent += 1;
                self.net.deliver(HONEST, t);
            }
        }
        assert_eq!(
            self.net.audit.uncounted, 0,
            "a datagram was dropped without a count: {:?}",
            self.net.audit.first_uncounted
        );
    }

    /// The checks at the end of a session.
    pub fn finish(&self) {
        let net = &self.net;
        assert_eq!(
            net.honest_forwarded, self.counts.honest_sent,
            "every packet of the honest client left the exit"
        );
        for &g in &GATEWAYS {
            let n = net.peers[g].node.relayed_circuits();
            assert!(n <= 16, "gateway {g} holds {n} circuits");
        }
        assert!(
            net.exit.circuits() <= 16,
            "exit holds {} circuits",
            net.exit.circuits()
        );
        let vcs = net.exit.vcs();
        assert!(vcs.held_bytes() <= VC_REORDER_BYTES);
        assert!(vcs.len() <= 16, "exit holds {} virtual circuits", vcs.len());
    }

    /// A report of the session on stderr.
    pub fn report(&self) {
        let net = &self.net;
        eprintln!(
            "{:?}, {} datagrams handled, {:?} of virtual time",
            self.counts,
            net.audit.handled,
            net.now - self.start
        );
        for &g in &GATEWAYS {
            eprintln!("gateway {g}: {:?}", net.peers[g].node.stats());
        }
        eprintln!("hostile client: {:?}", net.peers[HOSTILE].node.stats());
        eprintln!("exit: {:?}", net.exit.stats());
    }
}
