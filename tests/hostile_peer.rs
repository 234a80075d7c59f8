//! The authenticated hostile peer: a client that holds valid circuits through the
//! gateways under test and sends properly sealed cells whose counters, flags, slots,
//! bodies, commands, lengths, fragment headers, rekey messages and link control
//! messages are arbitrary, and gateways that send such cells back to that client.
//!
//! Everything runs in memory on real [`Node`]s (and the exit's real [`Exit`] and
//! [`Reassembler`]) with a virtual clock and a fixed seed. Each datagram a node
//! handles must either produce something (a transmit or an event) or be counted in
//! its stats; no node may panic; an honest client using the same gateways the whole
//! time must get every packet through; tables stay bounded.
//!
//! `ANONNET_HOSTILE_CELLS` (default 100,000) sets the number of forged cells and
//! `ANONNET_HOSTILE_SEED` the seed, for longer runs.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anonnet::exit::policy::ExitPolicy;
use anonnet::exit::{Exit, ExitSettings, Verdict};
use anonnet::node::{
    CircuitId, Event, ForgedBackward, ForgedForward, HopSpec, Node, NodeConfig, Output, Stats,
    Transmit, TAIL_LEN,
};
use anonnet::proto::addr::CLIENT_V4;
use anonnet::proto::crypto::noise_initiator;
use anonnet::proto::framing::{Reassembler, FRAGMENT, FRAGMENT_DATA};
use anonnet::proto::identity::Identity;
use anonnet::proto::wire::{
    Cmd, Service, BODY_HEADER, CTR_FLAG, CTR_PHASE, MAX_BODY, NK_MSG1_EMPTY, PAYLOAD_OFFSET, SLOTS,
};
use etherparse::PacketBuilder;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

const HOSTILE: usize = 0;
const HONEST: usize = 1;
const G1: usize = 2;
const G2: usize = 3;
const G3: usize = 4;
const GATEWAYS: [usize; 3] = [G1, G2, G3];

/// The internet server behind the exit.
const SERVER: [u8; 4] = [198, 18, 5, 2];
/// The exit's own underlay address (its policy refuses it).
const EXIT_OWN: [u8; 4] = [198, 18, 4, 2];

struct Peer {
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

struct Net {
    now: Instant,
    peers: Vec<Peer>,
    specs: Vec<HopSpec>,
    exit: Exit,
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
    down: Vec<(usize, CircuitId)>,
}

fn sum(s: &Stats) -> u64 {
    s.dropped_malformed
        + s.dropped_unknown_type
        + s.dropped_unknown_index
        + s.dropped_unknown_circuit
        + s.dropped_auth
        + s.dropped_replay
        + s.dropped_expired
        + s.dropped_handshake_replay
        + s.dropped_rate_limited
        + s.dropped_protocol
        + s.relayed_forward
        + s.relayed_backward
        + s.circuits_accepted
        + s.circuits_refused
        + s.destroys_received
        + s.keepalives_answered
        + s.rekeys
        + s.link_rekeys
}

impl Net {
    fn new(seed: u64) -> Self {
        let mut master = ChaCha20Rng::seed_from_u64(seed);
        let mut peers = Vec::new();
        let mut specs = Vec::new();
        for i in 0..2u8 {
            peers.push(Peer {
                addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 1, i + 1)), 9000),
                node: Node::new(NodeConfig::default()),
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

    fn spec(&self, gateway: usize) -> HopSpec {
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
            let before = sum(p.node.stats());
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
            if !produced && sum(self.peers[i].node.stats()) == before {
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
                mut buf,
                range,
            } => {
                let r = self.reasm.entry((node, circuit)).or_default();
                let Ok(Some(pkt)) = r.complete(self.now, &mut buf[range]) else {
                    return None;
                };
                match self
                    .exit
                    .from_circuit(self.now, circuit, pkt, &mut self.answer)
                {
                    Verdict::Forward => {
                        if self.honest_at_exit.contains(&circuit) {
                            self.honest_forwarded += 1;
                        }
                        None
                    }
                    Verdict::Answer => {
                        let mut out = vec![0u8; PAYLOAD_OFFSET + self.answer.len()];
                        out[PAYLOAD_OFFSET..].copy_from_slice(&self.answer);
                        let len = self.answer.len();
                        self.peers[node]
                            .node
                            .send_backward(self.now, circuit, out, len)
                            .ok()
                    }
                    Verdict::Drop => None,
                }
            }
            Event::Data {
                circuit,
                mut buf,
                range,
            } => {
                let r = self.reasm.entry((node, circuit)).or_default();
                let _ = r.complete(self.now, &mut buf[range]);
                None
            }
            Event::ServiceClosed(circuit, _) => {
                if node == G3 {
                    self.exit.close(circuit);
                }
                self.reasm.remove(&(node, circuit));
                None
            }
            Event::CircuitDown(c, _) => {
                self.down.push((node, c));
                None
            }
            Event::ServiceData { .. } | Event::CircuitUp(_) => None,
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
    }
}

fn pick<T: Copy>(rng: &mut ChaCha20Rng, items: &[T]) -> T {
    items[rng.next_u32() as usize % items.len()]
}

fn chance(rng: &mut ChaCha20Rng, percent: u32) -> bool {
    rng.next_u32() % 100 < percent
}

/// A UDP packet from the client's tunnel address to `dst`.
fn udp(dst: [u8; 4], port: u16, len: usize) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(CLIENT_V4.octets(), dst, 64)
        .udp(40_000, port)
        .write(&mut out, &vec![0x5a; len])
        .expect("packet");
    out
}

/// A payload an exit circuit might carry: packets to allowed, refused and odd places,
/// fragments with arbitrary headers, or junk.
fn payload(rng: &mut ChaCha20Rng, room: usize) -> Vec<u8> {
    let mut p = match rng.next_u32() % 4 {
        0 => {
            let dst = pick(rng, &[SERVER, EXIT_OWN, [127, 0, 0, 1], [224, 0, 0, 1]]);
            let port = pick(rng, &[53, 25, 443, 0]);
            udp(dst, port, rng.next_u32() as usize % 1400)
        }
        1 => {
            let mut f = vec![
                FRAGMENT,
                0,
                pick(rng, &[0, 1, 2, 255]),
                pick(rng, &[0, 1, 2, 3, 4, 7, 8, 200]),
                pick(rng, &[0, 1, 2, 4, 5, 8, 9, 255]),
            ];
            let n = pick(rng, &[0, 1, FRAGMENT_DATA, FRAGMENT_DATA + 1, 3000]);
            f.extend((0..n).map(|_| rng.next_u32() as u8));
            f
        }
        2 => {
            let mut pkt = udp(SERVER, 443, rng.next_u32() as usize % 200);
            let at = rng.next_u32() as usize % pkt.len();
            pkt[at] = rng.next_u32() as u8;
            pkt.truncate(rng.next_u32() as usize % (pkt.len() + 1));
            pkt
        }
        _ => (0..rng.next_u32() % 64)
            .map(|_| rng.next_u32() as u8)
            .collect(),
    };
    p.truncate(room);
    p
}

/// A body plaintext of a forged cell: any size, any command, any length field.
fn body(rng: &mut ChaCha20Rng, gateway_key: &[u8; 32]) -> Vec<u8> {
    let size = match rng.next_u32() % 10 {
        0 => rng.next_u32() as usize % 40,
        1 => rng.next_u32() as usize % (MAX_BODY + 300),
        _ => pick(rng, &[128, 256, 512, 1024, MAX_BODY]),
    };
    let mut b: Vec<u8> = (0..size).map(|_| rng.next_u32() as u8).collect();
    if size < BODY_HEADER || chance(rng, 10) {
        return b;
    }
    let cmd = pick(
        rng,
        &[Cmd::Data as u8, Cmd::Data as u8, 2, 3, 4, 0, 5, 0xFF],
    );
    let room = size - BODY_HEADER;
    let inner = match cmd {
        1 => payload(rng, room),
        3 if chance(rng, 50) => {
            // A valid NK msg1 to the hop: a real rekey the client's node never asked for.
            let mut hs = noise_initiator(rng, gateway_key);
            let mut m = [0u8; 64];
            let n = hs.write_message(&[], &mut m).expect("msg1");
            assert_eq!(n, NK_MSG1_EMPTY);
            m[..n.min(room)].to_vec()
        }
        _ => (0..rng.next_u32() as usize % (room + 1))
            .map(|_| rng.next_u32() as u8)
            .collect(),
    };
    let len = match rng.next_u32() % 6 {
        0 => rng.next_u32() as u16,
        1 => u16::try_from(room + 1).unwrap_or(u16::MAX),
        _ => u16::try_from(inner.len()).unwrap_or(u16::MAX),
    };
    b[0] = cmd;
    b[1..3].copy_from_slice(&len.to_be_bytes());
    b[BODY_HEADER..BODY_HEADER + inner.len()].copy_from_slice(&inner);
    b
}

fn tail(rng: &mut ChaCha20Rng) -> [u8; TAIL_LEN] {
    let mut t = [0u8; TAIL_LEN];
    match rng.next_u32() % 4 {
        0 => t.fill(0xFF),
        1 => {}
        _ => rng.fill_bytes(&mut t),
    }
    t
}

fn counter(rng: &mut ChaCha20Rng) -> Option<u64> {
    let flags = pick(rng, &[0, CTR_FLAG, CTR_PHASE, CTR_FLAG | CTR_PHASE]);
    match rng.next_u32() % 10 {
        0..=5 => None,
        6 => Some(rng.next_u64()),
        7 => Some(flags | (rng.next_u64() % 64)),
        8 => Some(flags | ((1 << 61) - 1 - rng.next_u64() % 4)),
        _ => Some(flags | (rng.next_u64() % 100_000)),
    }
}

/// The hostile client's circuits: (path, service).
const HOSTILE_PATHS: [(&[usize], Service); 3] = [
    (&[G1, G2, G3], Service::Exit),
    (&[G2, G1], Service::Echo),
    (&[G3], Service::Exit),
];

#[test]
fn valid_keys_and_hostile_cells_crash_nothing_and_every_drop_is_counted() {
    let cells: u64 = std::env::var("ANONNET_HOSTILE_CELLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("ANONNET_HOSTILE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(23);
    let mut net = Net::new(seed);
    let start = net.now;
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x686f_7374);

    let mut honest = net
        .build(HONEST, &[G1, G2, G3], Service::Exit)
        .expect("the honest circuit comes up");
    let mut circuits: Vec<Option<CircuitId>> = HOSTILE_PATHS
        .iter()
        .map(|(path, svc)| net.build(HOSTILE, path, *svc))
        .collect();
    assert!(circuits.iter().all(Option::is_some), "hostile circuits up");

    let (mut forged, mut honest_sent, mut rebuilt, mut fresh_starts) = (0u64, 0u64, 0u64, 0u64);
    let mut kinds = [0u64; 4];
    while forged < cells {
        // Rebuild what went down (the hostile client destroys its own circuits).
        // Forged link control can wreck its own link (a counter far ahead makes its
        // next BUILD a replay): then it starts afresh, as a new client would.
        for fresh in [false, true] {
            if fresh {
                net.peers[HOSTILE].node = Node::new(NodeConfig::default());
                fresh_starts += 1;
            }
            for (i, (path, svc)) in HOSTILE_PATHS.iter().enumerate() {
                let up = circuits[i].is_some_and(|c| net.peers[HOSTILE].node.is_up(c));
                if fresh || !up {
                    circuits[i] = net.build(HOSTILE, path, *svc);
                    rebuilt += 1;
                }
            }
            if circuits.iter().all(Option::is_some) {
                break;
            }
            assert!(
                !fresh,
                "a fresh client cannot build after {forged} forged cells"
            );
        }
        if !net.peers[HONEST].node.is_up(honest) {
            panic!(
                "the honest circuit went down after {forged} forged cells: {:?}",
                net.down
            );
        }
        let which = rng.next_u32() as usize % HOSTILE_PATHS.len();
        let Some(id) = circuits[which] else {
            continue;
        };
        let (path, _) = HOSTILE_PATHS[which];
        match rng.next_u32() % 100 {
            0..=69 => {
                let target = rng.next_u32() as usize % path.len();
                let key = net.spec(path[target]).key;
                let b = body(&mut rng, &key);
                let mut counters = [None; SLOTS];
                for c in counters.iter_mut().take(path.len()) {
                    *c = counter(&mut rng);
                }
                let cell = ForgedForward {
                    target,
                    terminal: !chance(&mut rng, 10),
                    counters,
                    cid: chance(&mut rng, 3).then(|| rng.next_u32()),
                    body: &b,
                    tail: tail(&mut rng),
                };
                let Ok(t) = net.peers[HOSTILE].node.forge_forward(id, &cell) else {
                    continue;
                };
                net.deliver(HOSTILE, t);
                kinds[0] += 1;
            }
            70..=84 => {
                // A gateway of one of the hostile client's circuits towards it.
                let g = pick(&mut rng, path);
                let theirs: Vec<CircuitId> = net.peers[g]
                    .node
                    .relayed()
                    .filter(|c| !net.honest_relays.get(&g).is_some_and(|h| h.contains(c)))
                    .collect();
                if theirs.is_empty() {
                    continue;
                }
                let relay = pick(&mut rng, &theirs);
                let b = body(&mut rng, &[0; 32]);
                let cell = ForgedBackward {
                    counter: counter(&mut rng),
                    body: &b,
                    tail: tail(&mut rng),
                };
                let Ok(t) = net.peers[g].node.forge_backward(relay, &cell) else {
                    continue;
                };
                net.deliver(g, t);
                kinds[1] += 1;
            }
            85..=89 => {
                let kind = pick(&mut rng, &[1, 2, 3, 0, 4, 0xFF]);
                let any = rng.next_u32() as usize % 1300;
                let len = pick(&mut rng, &[0, 1, 1152, 512, any]);
                let b: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
                let cid = chance(&mut rng, 20).then(|| rng.next_u32());
                let ctr = chance(&mut rng, 20).then(|| rng.next_u64() % 20_000);
                let Ok(t) = net.peers[HOSTILE].node.forge_ctrl(id, kind, cid, ctr, &b) else {
                    continue;
                };
                net.deliver(HOSTILE, t);
                kinds[2] += 1;
            }
            _ => {
                // Time passes: keepalives, rekeys, timeouts; the honest client sends.
                net.now += Duration::from_millis(u64::from(rng.next_u32() % 400));
                net.tick();
                assert!(
                    net.peers[HONEST].node.is_up(honest),
                    "the honest circuit went down after {forged} forged cells at {:?}: {:?}",
                    net.now - start,
                    net.down
                );
                let p = &mut net.peers[HONEST];
                let pkt = udp(SERVER, 53, 100);
                let t = p
                    .node
                    .send_payload(net.now, &mut p.rng, honest, &pkt)
                    .expect("honest send");
                honest_sent += 1;
                net.deliver(HONEST, t);
                kinds[3] += 1;
                if !net.peers[HONEST].node.is_up(honest) {
                    honest = net
                        .build(HONEST, &[G1, G2, G3], Service::Exit)
                        .expect("the honest circuit comes back");
                }
                continue;
            }
        }
        forged += 1;
    }

    let elapsed = net.now.saturating_duration_since(start);
    eprintln!(
        "{forged} forged cells (forward {}, backward {}, link control {}), {} honest \
         packets, {rebuilt} hostile rebuilds ({fresh_starts} as a fresh client), {} datagrams handled, {elapsed:?}",
        kinds[0], kinds[1], kinds[2], kinds[3], net.audit.handled
    );
    for &g in &GATEWAYS {
        eprintln!("gateway {g}: {:?}", net.peers[g].node.stats());
    }
    eprintln!("hostile client: {:?}", net.peers[HOSTILE].node.stats());
    eprintln!("exit: {:?}", net.exit.stats());
    assert_eq!(
        net.audit.uncounted, 0,
        "datagrams dropped without a count, e.g. {:?}",
        net.audit.first_uncounted
    );
    assert_eq!(
        net.honest_forwarded, honest_sent,
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
}
