//! The data path allocates nothing per packet in steady state.
//!
//! A client and three gateways (the last an exit running [`anonnet::exit::Exit`])
//! exchange IP packets in process, without sockets, the way the drivers move them:
//! buffers come from a pool whose buffers hold a TUN packet at `PAYLOAD_OFFSET`, a
//! "socket" copies each datagram into a fresh pool buffer and recycles the sent one,
//! packets go into and out of the circuit through the tunnel ends' [`DataPath`]s, and
//! the nodes' timers run at their deadlines, the clock jumping from one to the next. After a warm-up that includes a full
//! rekey of every hop and link, the global allocator is armed (counting per thread,
//! through the `allocation-counter` dev-dependency: the crate forbids `unsafe_code`,
//! so the test cannot implement `GlobalAlloc` itself) and 10,000 round trips are
//! pushed through: client -> 3 hops -> exit -> "internet" -> exit -> 3 hops ->
//! client. The test asserts that not one allocation happened and that every packet
//! arrived intact in both directions.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use anonnet::exit::nat;
use anonnet::exit::policy::ExitPolicy;
use anonnet::exit::{Exit, ExitSettings, Owner, Verdict};
use anonnet::node::{
    Buffers, CircuitId, DataPath, Event, HopSpec, Node, NodeConfig, Output, Toward, Transmit,
};
use anonnet::proto::addr::{CLIENT_V4, CLIENT_V6};
use anonnet::proto::framing::MAX_PACKET;
use anonnet::proto::identity::Identity;
use anonnet::proto::ip;
use anonnet::proto::wire::{Cmd, Service, MAX_DATAGRAM, MAX_PAYLOAD, PAYLOAD_OFFSET};
use etherparse::PacketBuilder;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// The tunnel MTU of both ends: the largest packet a circuit carries.
const MTU: usize = MAX_PACKET;
/// Pool buffers as the tunnel daemons size them (`Driver::tunnel`).
const BUF_CAPACITY: usize = PAYLOAD_OFFSET + MTU;
/// Buffers kept by the pool at most (the driver keeps up to 4,096).
const POOL_CAP: usize = 256;
/// Round trips while counting.
const ROUND_TRIPS: u64 = 10_000;
/// Round trips before and after the rekey, uncounted.
const WARMUP: u64 = 1_000;
/// Virtual time between two round trips: 5,000 packets per second each way.
const GAP: Duration = Duration::from_micros(200);
/// Idle time while counting (keepalives only).
const IDLE: Duration = Duration::from_secs(40);

/// IP packet sizes cycled through: single cells (up to `MAX_PAYLOAD` = 1248) and
/// 2, 3 and 4 fragments (up to `MAX_PACKET` = 4972).
const SIZES: [usize; 12] = [
    64, 120, 576, 1000, 1248, 1249, 1400, 1500, 2486, 2487, 4000, 4972,
];

const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);

const CLIENT: usize = 0;
const EXIT: usize = 3;

/// Datagram buffers for reuse, like `driver::Pool`: a buffer taken from an empty
/// pool is allocated, one returned to a full pool (or one too small) is freed.
struct Pool {
    bufs: Vec<Vec<u8>>,
}

impl Pool {
    fn new() -> Self {
        let mut bufs = Vec::with_capacity(POOL_CAP);
        bufs.resize_with(64, || Vec::with_capacity(BUF_CAPACITY));
        Self { bufs }
    }
}

impl Buffers for Pool {
    fn get(&mut self) -> Vec<u8> {
        let mut buf = self
            .bufs
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_CAPACITY));
        buf.resize(MAX_DATAGRAM + 1, 0);
        buf
    }

    fn put(&mut self, buf: Vec<u8>) {
        if self.bufs.len() < POOL_CAP && buf.capacity() >= BUF_CAPACITY {
            self.bufs.push(buf);
        }
    }
}

struct Sim {
    addr: SocketAddr,
    node: Node,
    rng: ChaCha20Rng,
}

/// Counters of what arrived; checked after the counted phase (formatting a
/// message inside it would allocate).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    /// Whole packets that reached the exit equal to what the client sent.
    forward_ok: u64,
    /// Whole packets that reached the client equal to what the server answered.
    backward_ok: u64,
    /// Packets that arrived different from what was sent, or out of turn.
    corrupt: u64,
    /// Exit verdicts other than `Forward`, or replies the exit did not map back.
    exit_refused: u64,
    /// Datagrams a node recycled (dropped) instead of relaying or consuming.
    recycled: u64,
    /// Events other than data (circuits going down, unexpected services).
    other_events: u64,
    /// Send errors.
    send_errors: u64,
}

struct Net {
    now: Instant,
    nodes: Vec<Sim>,
    pool: Pool,
    exit: Exit,
    circuit: CircuitId,
    /// The circuit's id at the exit (its relay id there).
    exit_circuit: Option<CircuitId>,
    /// The tunnel ends' data paths: the client's and the exit's.
    client_data: DataPath,
    exit_data: DataPath,
    /// Request and reply templates per size, the reply's destination the pool
    /// address of the circuit (known once it has sent a packet).
    requests: Vec<Vec<u8>>,
    replies: Vec<Vec<u8>>,
    /// The round trip in flight and scratch space for expected packets.
    seq: u64,
    scratch: Vec<u8>,
    answer: Vec<u8>,
    tally: Tally,
}

fn gw_addr(i: usize) -> SocketAddr {
    SocketAddr::from(([198, 18, 0, 10 + i as u8], 9000))
}

/// A UDP packet of `total` bytes from `src` to `dst` (IPv4 or IPv6 by `src`).
fn udp_packet(src: IpAddr, dst: IpAddr, total: usize, fill: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(total);
    let builder = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let header = if src.is_ipv4() { 28 } else { 48 };
    let body: Vec<u8> = (0..total - header)
        .map(|i| (i as u8).wrapping_mul(31) ^ fill)
        .collect();
    builder
        .udp(40000, 443)
        .write(&mut out, &body)
        .expect("packet");
    assert_eq!(out.len(), total);
    out
}

/// Writes round trip `seq`'s stamp into the last 8 bytes of a packet's payload, so
/// that no two packets in a row are equal. (Transport checksums are not checked on
/// the way, only carried and updated incrementally.)
fn stamp(pkt: &mut [u8], seq: u64) {
    let n = pkt.len();
    pkt[n - 8..].copy_from_slice(&seq.to_be_bytes());
}

/// Which template round trip `seq` uses, and the family (odd: IPv6).
fn shape(seq: u64) -> usize {
    (seq % (2 * SIZES.len() as u64)) as usize
}

impl Net {
    fn new() -> Self {
        let mut master = ChaCha20Rng::seed_from_u64(7);
        let base = Instant::now();
        let mut nodes = Vec::new();
        nodes.push(Sim {
            addr: SocketAddr::from(([198, 18, 1, 1], 9000)),
            // Every hop rekeys at 120 s, so the idle window below holds no rekey.
            node: Node::new(NodeConfig {
                rekey_jitter: Duration::ZERO,
                ..NodeConfig::default()
            }),
            rng: ChaCha20Rng::seed_from_u64(master.next_u64()),
        });
        let mut specs = Vec::new();
        for i in 0..3 {
            let mut rng = ChaCha20Rng::seed_from_u64(master.next_u64());
            let id = Identity::generate(&mut rng);
            let addr = gw_addr(i);
            specs.push(HopSpec {
                addr,
                key: id.public().0,
            });
            nodes.push(Sim {
                addr,
                node: Node::new(NodeConfig {
                    static_key: Some(*id.secret()),
                    exit: i == 2,
                    ..NodeConfig::default()
                }),
                rng,
            });
        }
        let exit_ip = nodes[EXIT].addr.ip();
        let exit = Exit::new(ExitSettings {
            pool4: "100.96.0.0/12".parse().expect("pool4"),
            pool6: "fd00:96::/64".parse().expect("pool6"),
            policy: ExitPolicy::new(&[], &[exit_ip]).expect("policy"),
            max_flows: 1024,
            max_pps: 50_000,
        });
        let mut requests = Vec::new();
        for &size in &SIZES {
            requests.push(udp_packet(CLIENT_V4.into(), SERVER_V4.into(), size, 1));
            requests.push(udp_packet(CLIENT_V6.into(), SERVER_V6.into(), size, 2));
        }
        let c = &mut nodes[CLIENT];
        let circuit = c
            .node
            .build_circuit(base, &mut c.rng, &specs, Service::Exit)
            .expect("build");
        Self {
            now: base,
            nodes,
            pool: Pool::new(),
            exit,
            circuit,
            exit_circuit: None,
            client_data: DataPath::default(),
            exit_data: DataPath::default(),
            requests,
            replies: Vec::new(),
            seq: 0,
            scratch: Vec::with_capacity(MAX_PACKET),
            answer: Vec::with_capacity(MAX_PACKET),
            tally: Tally::default(),
        }
    }

    fn index(&self, addr: SocketAddr) -> usize {
        self.nodes
            .iter()
            .position(|s| s.addr == addr)
            .expect("a datagram to a node of the net")
    }

    /// Moves a datagram along until a node consumes or drops it. Each hop goes
    /// "over the wire": the bytes land in a fresh pool buffer and the sent buffer
    /// returns to the pool, as with real sockets.
    fn deliver(&mut self, mut from: usize, mut t: Transmit) {
        loop {
            let to = self.index(t.dst);
            let mut buf = self.pool.get();
            buf[..t.buf.len()].copy_from_slice(&t.buf);
            buf.truncate(t.buf.len());
            self.pool.put(t.buf);
            let remote = self.nodes[from].addr;
            let s = &mut self.nodes[to];
            match s
                .node
                .handle_datagram(self.now, &mut s.rng, Some(s.addr), remote, buf)
            {
                Output::Transmit(next) => {
                    from = to;
                    t = next;
                }
                Output::Consumed => return,
                Output::Recycle(b) => {
                    self.tally.recycled += 1;
                    self.pool.put(b);
                    return;
                }
            }
        }
    }

    /// Delivers everything the nodes queued and handles their events until quiet.
    fn pump(&mut self) {
        loop {
            let mut busy = false;
            for i in 0..self.nodes.len() {
                while let Some(t) = self.nodes[i].node.poll_transmit() {
                    busy = true;
                    self.deliver(i, t);
                }
            }
            for i in 0..self.nodes.len() {
                while let Some(e) = self.nodes[i].node.poll_event() {
                    busy = true;
                    self.on_event(i, e);
                }
            }
            if !busy {
                return;
            }
        }
    }

    /// Runs every node's timer that is due, as the driver does on each wake-up.
    fn tick(&mut self) {
        let now = self.now;
        for s in &mut self.nodes {
            if s.node.poll_timeout().is_some_and(|t| t <= now) {
                s.node.handle_timeout(now, &mut s.rng);
            }
        }
        self.pump();
    }

    /// Advances the virtual clock, from each node's deadline to the next, as the
    /// drivers sleep until [`Node::poll_timeout`].
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        let mut spins = 0;
        while let Some(t) = self
            .nodes
            .iter()
            .filter_map(|s| s.node.poll_timeout())
            .min()
            .filter(|&t| t <= until)
        {
            spins = if t <= self.now { spins + 1 } else { 0 };
            assert!(spins < 8, "a timer stays due");
            self.now = self.now.max(t);
            self.tick();
        }
        self.now = until;
        self.tick();
    }

    /// The packet in `buf[PAYLOAD_OFFSET..]` into the circuit through the data path
    /// of its end (the client's forward, the exit's backward), as the drivers send it.
    fn send_packet(&mut self, to: Toward, buf: Vec<u8>) {
        let (from, data) = match to {
            Toward::Forward(_) => (CLIENT, &mut self.client_data),
            Toward::Backward(_) => (EXIT, &mut self.exit_data),
        };
        let s = &mut self.nodes[from];
        if data
            .send(self.now, &mut s.rng, &mut s.node, to, buf, &mut self.pool)
            .is_err()
        {
            self.tally.send_errors += 1;
        }
        while let Some(t) = match to {
            Toward::Forward(_) => self.client_data.poll_transmit(),
            Toward::Backward(_) => self.exit_data.poll_transmit(),
        } {
            self.deliver(from, t);
        }
    }

    /// The client sends round trip `seq`'s request.
    fn send_request(&mut self, seq: u64) {
        self.seq = seq;
        let mut buf = tun_read(&mut self.pool, &self.requests[shape(seq)]);
        stamp(&mut buf[PAYLOAD_OFFSET..], seq);
        self.send_packet(Toward::Forward(self.circuit), buf);
    }

    fn on_event(&mut self, node: usize, e: Event) {
        match (node, e) {
            (
                EXIT,
                Event::ServiceData {
                    circuit,
                    service: Service::Exit,
                    cmd: Cmd::Data,
                    mut buf,
                    range,
                },
            ) => {
                self.exit_circuit = Some(circuit);
                self.at_exit(circuit, &mut buf[range]);
                self.pool.put(buf);
            }
            (
                CLIENT,
                Event::Data {
                    circuit,
                    cmd: Cmd::Data,
                    mut buf,
                    range,
                },
            ) if circuit == self.circuit => {
                self.at_client(&mut buf[range]);
                self.pool.put(buf);
            }
            (CLIENT, Event::CircuitUp(c)) if c == self.circuit => {}
            (_, Event::Data { buf, .. } | Event::ServiceData { buf, .. }) => {
                self.tally.other_events += 1;
                self.pool.put(buf);
            }
            _ => self.tally.other_events += 1,
        }
    }

    /// The exit's side (`runtime/exit.rs` ExitSide::run): reassemble, check, apply the
    /// exit logic, and let the "internet" answer through the TUN path.
    fn at_exit(&mut self, circuit: CircuitId, payload: &mut [u8]) {
        let now = self.now;
        let seq = self.seq;
        let Some(pkt) = self.exit_data.receive(now, circuit, payload).ok().flatten() else {
            return;
        };
        let want = &self.requests[shape(seq)];
        let intact = pkt.len() == want.len()
            && pkt[..pkt.len() - 8] == want[..want.len() - 8]
            && pkt[pkt.len() - 8..] == seq.to_be_bytes();
        if !intact {
            self.tally.corrupt += 1;
            return;
        }
        self.tally.forward_ok += 1;
        if self.exit.from_circuit(now, circuit, pkt, &mut self.answer) != Verdict::Forward {
            self.tally.exit_refused += 1;
            return;
        }
        let Some(reply) = self.replies.get(shape(seq)) else {
            // Before the reply templates exist (the pool address is not known yet).
            return;
        };
        if ip::summarize(pkt).map(|s| s.src).ok() != ip::summarize(reply).map(|s| s.dst).ok() {
            self.tally.exit_refused += 1;
            return;
        }
        let mut buf = tun_read(&mut self.pool, reply);
        stamp(&mut buf[PAYLOAD_OFFSET..], seq);
        match self.exit.from_tun(&mut buf[PAYLOAD_OFFSET..]) {
            Some(Owner::Circuit(c)) if c == circuit => self.send_packet(Toward::Backward(c), buf),
            _ => {
                self.tally.exit_refused += 1;
                self.pool.put(buf);
            }
        }
    }

    /// The client's side: reassemble and compare with the server's reply as the
    /// exit must have rewritten it (destination back to the client's address).
    fn at_client(&mut self, payload: &mut [u8]) {
        let now = self.now;
        let seq = self.seq;
        let circuit = self.circuit;
        let Some(pkt) = self
            .client_data
            .receive(now, circuit, payload)
            .ok()
            .flatten()
        else {
            return;
        };
        let reply = &self.replies[shape(seq)];
        self.scratch.clear();
        self.scratch.extend_from_slice(reply);
        stamp(&mut self.scratch, seq);
        let client = if reply[0] >> 4 == 4 {
            IpAddr::V4(CLIENT_V4)
        } else {
            IpAddr::V6(CLIENT_V6)
        };
        if nat::set_dst(&mut self.scratch, client).is_ok() && pkt == &self.scratch[..] {
            self.tally.backward_ok += 1;
        } else {
            self.tally.corrupt += 1;
        }
    }

    /// One full round trip: request out, reply back, then the clock moves on.
    fn round_trip(&mut self, seq: u64) {
        self.send_request(seq);
        self.pump();
        self.now += GAP;
        self.tick();
    }
}

/// A packet read from a TUN device into a pool buffer at `PAYLOAD_OFFSET`.
fn tun_read(pool: &mut Pool, pkt: &[u8]) -> Vec<u8> {
    let mut buf = pool.get();
    buf.resize(PAYLOAD_OFFSET + MTU, 0);
    buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + pkt.len()].copy_from_slice(pkt);
    buf.truncate(PAYLOAD_OFFSET + pkt.len());
    buf
}

/// A net whose circuit is up, has carried `2 * WARMUP` round trips of every shape and
/// has been through a rekey of every hop and link.
fn warmed_up() -> Net {
    let mut net = Net::new();
    net.pump();
    net.advance(Duration::from_millis(100));
    assert!(
        net.nodes[CLIENT].node.is_up(net.circuit),
        "circuit did not come up: {:?}",
        net.tally
    );

    // One request per family gives the circuit its pool addresses; the server's
    // replies go to them.
    net.round_trip(0);
    net.round_trip(1);
    let (pool4, pool6) = net
        .exit
        .addresses(net.exit_circuit.expect("the exit saw the circuit"))
        .expect("pool addresses");
    net.replies = SIZES
        .iter()
        .flat_map(|&size| {
            [
                udp_packet(SERVER_V4.into(), pool4.into(), size, 3),
                udp_packet(SERVER_V6.into(), pool6.into(), size, 4),
            ]
        })
        .collect();

    // Warm up, rekey every hop and link (REKEY_AFTER_TIME is 120 s: the client's
    // keepalives hold the circuit meanwhile), and warm up again under the new keys.
    for seq in 2..WARMUP {
        net.round_trip(seq);
    }
    net.advance(Duration::from_secs(125));
    for seq in WARMUP..2 * WARMUP {
        net.round_trip(seq);
    }
    let stats: Vec<_> = net.nodes.iter().map(|s| s.node.stats().clone()).collect();
    assert!(
        stats[1..].iter().all(|s| s.rekeys >= 1),
        "every hop rekeyed during the warm-up: {stats:?}"
    );
    assert!(
        stats.iter().map(|s| s.link_rekeys).sum::<u64>() >= 3,
        "every link rekeyed during the warm-up: {stats:?}"
    );
    assert_eq!(net.tally.corrupt, 0, "{:?}", net.tally);
    net
}

/// The counter is live: a zero below cannot pass because nothing was counted.
#[test]
fn counter_counts() {
    let info = allocation_counter::measure(|| {
        std::hint::black_box(Box::new(1u64));
    });
    assert_eq!(info.count_total, 1);
}

#[test]
fn data_path_allocates_nothing_in_steady_state() {
    let mut net = warmed_up();
    let before = net.tally;

    let first = 2 * WARMUP;
    let info = allocation_counter::measure(|| {
        for seq in first..first + ROUND_TRIPS {
            net.round_trip(seq);
        }
    });

    let got = net.tally;
    assert_eq!(
        got.forward_ok - before.forward_ok,
        ROUND_TRIPS,
        "every request reached the exit intact: {got:?}"
    );
    assert_eq!(
        got.backward_ok - before.backward_ok,
        ROUND_TRIPS,
        "every reply reached the client intact: {got:?}"
    );
    assert_eq!(
        (got.corrupt, got.exit_refused, got.send_errors),
        (0, 0, 0),
        "{got:?}"
    );
    assert_eq!(
        got.recycled, before.recycled,
        "a datagram was dropped: {got:?}"
    );
    assert_eq!(
        got.other_events, before.other_events,
        "unexpected events: {got:?}"
    );
    assert!(
        net.nodes[CLIENT].node.is_up(net.circuit),
        "the circuit stayed up"
    );
    let fragmented = SIZES.iter().filter(|&&s| s > MAX_PAYLOAD).count();
    eprintln!(
        "{ROUND_TRIPS} round trips ({} of {} sizes fragmented), {} allocations, {} bytes",
        fragmented,
        SIZES.len(),
        info.count_total,
        info.bytes_total
    );
    assert_eq!(
        info.count_total, 0,
        "the data path allocated {} times ({} bytes) over {ROUND_TRIPS} round trips",
        info.count_total, info.bytes_total
    );
}

#[test]
fn idle_circuit_keepalives_allocate_nothing() {
    let mut net = warmed_up();
    let before = net.nodes[CLIENT].node.stats().clone();
    let tally = net.tally;
    // 40 s without data: the client sends a KEEPALIVE every 2 s, the exit answers,
    // and every node runs its timers. (The window ends before the keys replaced
    // by the warm-up's rekey expire at 180 s: key lifecycle events, a rekey every
    // 120 s and the expiry after it, allocate a little and are not per packet.)
    let info = allocation_counter::measure(|| net.advance(IDLE));
    let after = net.nodes[CLIENT].node.stats().clone();
    assert!(
        net.nodes[CLIENT].node.is_up(net.circuit),
        "keepalives held the circuit"
    );
    // Keepalive answers end at the client (as `Output::Recycle`); nothing else moved.
    assert_eq!(
        Tally {
            recycled: tally.recycled,
            ..net.tally
        },
        tally,
        "nothing but keepalives moved"
    );
    // Every keepalive answer arrives as a backward cell the client opens.
    assert!(
        after.rx_datagrams - before.rx_datagrams >= 18,
        "keepalives were answered: {before:?} -> {after:?}"
    );
    eprintln!(
        "{IDLE:?} idle: {} datagrams received by the client, {} allocations, {} bytes",
        after.rx_datagrams - before.rx_datagrams,
        info.count_total,
        info.bytes_total
    );
    assert_eq!(
        info.count_total, 0,
        "keepalives allocated {} times ({} bytes) in {IDLE:?}",
        info.count_total, info.bytes_total
    );
}
