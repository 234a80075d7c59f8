//! A virtual circuit's exit side in the deterministic simulation (PROTOCOL §12):
//! a client with two legs through disjoint gateways to one exit streams numbered
//! packets over both; a middle gateway dies; the client moves to the other leg and
//! joins a replacement. The exit's real [`Exit`] and [`DataPath`] carry the packets;
//! the client's side (which leg, when a leg is dead) is scripted here.

mod simnet;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anonnet::client::virtual_circuit::{LegEnd, LegState, VirtualCircuit};
use anonnet::exit::policy::ExitPolicy;
use anonnet::exit::{Exit, ExitDue, ExitSettings, Owner, Verdict};
use anonnet::node::{Buffers, CircuitId, DataPath, Toward};
use anonnet::proto::addr::CLIENT_V4;
use anonnet::proto::ip;
use anonnet::proto::reorder::{Reorder, REORDER_TIMEOUT};
use anonnet::proto::vc::{Join, Joined, VcId, JOINED_LEN, VC_ID_LEN};
use anonnet::proto::wire::{Cmd, Service, MAX_DATAGRAM, PAYLOAD_OFFSET};
use etherparse::PacketBuilder;
use rand_chacha::rand_core::SeedableRng;
use simnet::{Ev, Net};

const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The client takes a leg for dead this long after its last answer while the other
/// answers (the provisional rule of PROTOCOL §12, scripted here).
const DEAD_AFTER: Duration = Duration::from_millis(750);

struct Heap;

impl Buffers for Heap {
    fn get(&mut self) -> Vec<u8> {
        vec![0; MAX_DATAGRAM + 1]
    }
    fn put(&mut self, _: Vec<u8>) {}
}

/// A UDP packet from the client (or back to it) whose payload names `n`; `len`
/// bytes long, so large ones ride in fragments.
fn udp(src: Ipv4Addr, dst: Ipv4Addr, n: u32, len: usize) -> Vec<u8> {
    let mut body = n.to_be_bytes().to_vec();
    body.resize(len.saturating_sub(28).max(4), 0x5a);
    let mut out = Vec::new();
    PacketBuilder::ipv4(src.octets(), dst.octets(), 64)
        .udp(4000, 443)
        .write(&mut out, &body)
        .expect("udp");
    out
}

/// Sends `packet` as number `seq` from node `from` through its data path (a packet
/// the node refuses, a paced link's, say, is lost like on a network).
fn send_numbered(
    net: &mut Net,
    from: usize,
    data: &mut DataPath,
    to: Toward,
    seq: u32,
    packet: &[u8],
) {
    let mut buf = vec![0u8; PAYLOAD_OFFSET];
    buf.extend_from_slice(packet);
    let (now, n) = (net.now, &mut net.nodes[from]);
    if data
        .send_seq(now, &mut n.rng, &mut n.node, to, seq, buf, &mut Heap)
        .is_ok()
    {
        while let Some(t) = data.poll_transmit() {
            net.transmit(from, Some(t));
        }
    }
}

fn number(p: &[u8]) -> u32 {
    u32::from_be_bytes(p[28..32].try_into().expect("4 bytes"))
}

/// The exit's side: JOINs answered, VDATA reordered, checked and "sent to the
/// internet", which answers every packet; replies go back on the chosen leg.
struct ExitSide {
    node: usize,
    exit: Exit,
    data: DataPath,
    seen: usize,
    /// (time, number, source address) of each packet that left.
    left: Vec<(Duration, u32, IpAddr)>,
    /// Legs a JOIN replaced.
    replaced: Vec<CircuitId>,
    /// The length of the internet's replies (default: the packet's own).
    reply_len: Option<usize>,
    /// The leg each reply went on.
    back: Vec<CircuitId>,
}

impl ExitSide {
    fn new(net: &Net, node: usize) -> Self {
        let exit_ip = net.nodes[node].addr.ip();
        Self {
            node,
            exit: Exit::new(ExitSettings {
                pool4: "100.96.0.0/12".parse().expect("pool4"),
                pool6: "fd00:96::/64".parse().expect("pool6"),
                policy: ExitPolicy::new(&[], &[exit_ip]).expect("policy"),
                max_flows: 64,
                max_pps: 100_000,
            }),
            data: DataPath::default(),
            seen: 0,
            left: Vec::new(),
            replaced: Vec::new(),
            reply_len: None,
            back: Vec::new(),
        }
    }

    fn serve(&mut self, net: &mut Net) {
        let now = net.now;
        let new = net.events_since(self.node, &mut self.seen);
        for e in new {
            match e {
                Ev::Vc(c, Cmd::Join, p) => {
                    let node = &net.nodes[self.node].node;
                    let heard = |c| node.last_forward(c);
                    let accepted = self.exit.join(now, c, &p, &heard).expect("join");
                    if let Some(old) = accepted.replaced {
                        net.nodes[self.node].node.destroy_service(old);
                        self.replaced.push(old);
                    }
                    let legs = accepted.legs;
                    let mut out = vec![0u8; PAYLOAD_OFFSET];
                    out.extend_from_slice(&Joined { legs }.emit());
                    let n = &mut net.nodes[self.node];
                    let t = n
                        .node
                        .send_backward_cell(now, c, Cmd::Joined, out, JOINED_LEN)
                        .expect("joined");
                    net.transmit(self.node, t);
                }
                Ev::Vc(c, Cmd::VData, mut p) => {
                    let Some((seq, pkt)) = self.data.receive_seq(now, c, &mut p).expect("vdata")
                    else {
                        continue;
                    };
                    let mut out = Vec::new();
                    let vc = self.exit.vcs().vc_of(c).expect("a leg");
                    // A packet the reorder buffer drops may still let others out.
                    let _ = self.exit.from_leg(now, c, seq, pkt.to_vec(), &mut out);
                    self.leave(net, Owner::Vc(vc), out);
                }
                Ev::ExitClosed(c) => {
                    assert_eq!(self.exit.close(now, c), None, "a leg keeps no address");
                    self.data.forget(c);
                }
                _ => {}
            }
        }
        while let Some(due) = self.exit.handle_timeout(now) {
            match due {
                ExitDue::Packets(owner, out) => self.leave(net, owner, out),
                ExitDue::Closed(_) => panic!("the VC lives"),
            }
        }
    }

    /// Packets of `owner` let out in order: through the exit logic to the internet,
    /// whose reply goes back.
    fn leave(&mut self, net: &mut Net, owner: Owner, out: Vec<Vec<u8>>) {
        let now = net.now;
        for mut p in out {
            let v = self.exit.from_circuit(now, owner, &mut p, &mut Vec::new());
            assert_eq!(v, Verdict::Forward);
            let src = ip::summarize(&p).expect("ip").src;
            let n = number(&p);
            self.left.push((net.elapsed(), n, src));
            let IpAddr::V4(pool) = src else { panic!("v4") };
            let mut reply = udp(SERVER, pool, n, self.reply_len.unwrap_or(p.len()));
            assert_eq!(self.exit.from_tun(&mut reply), Some(owner));
            let node = &net.nodes[self.node].node;
            let route = self.exit.route_back(now, owner, &|c| node.last_forward(c));
            let (leg, seq) = route.expect("a leg to reply on");
            let seq = seq.expect("numbered");
            self.back.push(leg);
            send_numbered(
                net,
                self.node,
                &mut self.data,
                Toward::Backward(leg),
                seq,
                &reply,
            );
        }
    }
}

/// The client's side: JOINs, numbered packets on the live legs in turn, replies
/// through its own reorder buffer.
struct ClientSide {
    node: usize,
    vc: VcId,
    data: DataPath,
    seq: u32,
    seen: usize,
    reorder: Reorder,
    joined: BTreeMap<CircuitId, u8>,
    /// (time, number) of each reply let out in order.
    got: Vec<(Duration, u32)>,
}

impl ClientSide {
    fn join(&mut self, net: &mut Net, leg: CircuitId) {
        let j = Join {
            vc: self.vc,
            max_legs: 2,
        }
        .emit();
        let mut buf = vec![0u8; PAYLOAD_OFFSET];
        buf.extend_from_slice(&j);
        let now = net.now;
        let n = &mut net.nodes[self.node];
        let t = n
            .node
            .send_cell(now, &mut n.rng, leg, Cmd::Join, buf, j.len())
            .expect("join");
        net.transmit(self.node, t);
    }

    fn send(&mut self, net: &mut Net, leg: CircuitId, len: usize) {
        let p = udp(CLIENT_V4, SERVER, self.seq, len);
        send_numbered(
            net,
            self.node,
            &mut self.data,
            Toward::Forward(leg),
            self.seq,
            &p,
        );
        self.seq += 1;
    }

    fn receive(&mut self, net: &mut Net) {
        let now = net.now;
        let new = net.events_since(self.node, &mut self.seen);
        let mut out = Vec::new();
        for e in new {
            match e {
                Ev::Vc(c, Cmd::Joined, p) => {
                    self.joined.insert(c, p[0]);
                }
                Ev::Vc(c, Cmd::VData, mut p) => {
                    if let Some((seq, pkt)) = self.data.receive_seq(now, c, &mut p).expect("vdata")
                    {
                        let _ = self.reorder.push(now, seq, pkt.to_vec(), &mut out);
                    }
                }
                _ => {}
            }
        }
        self.reorder.poll(now, &mut out);
        let t = net.elapsed();
        self.got.extend(out.iter().map(|p| (t, number(p))));
    }
}

/// The longest time without a packet among `times` (sorted) within `from..to`.
fn longest_gap(times: impl Iterator<Item = Duration>, from: Duration, to: Duration) -> Duration {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for t in times.filter(|t| (from..to).contains(t)) {
        gap = gap.max(t - last);
        last = t;
    }
    gap.max(to - last)
}

#[test]
fn a_virtual_circuit_keeps_its_address_and_order_when_a_leg_dies() {
    let mut net = Net::with_config(41, 7, 1, |c| c.exit = c.static_key.is_some());
    // Each leg keeps its packets in order (the reorder buffer relies on it), the
    // legs' delays differ by up to 30 ms.
    net.jitter = Duration::from_millis(30);
    net.in_order = true;
    let g = net.gateways.clone();
    let (client, exit_node) = (net.clients[0], g[4]);
    let leg_a = net.build_up_to(client, &[g[0], g[1], exit_node], Service::Exit);
    let leg_b = net.build_up_to(client, &[g[2], g[3], exit_node], Service::Exit);
    let mut x = ExitSide::new(&net, exit_node);
    let mut c = ClientSide {
        node: client,
        vc: VcId([0x42; VC_ID_LEN]),
        data: DataPath::default(),
        seq: 0,
        seen: 0,
        reorder: Reorder::default(),
        joined: BTreeMap::new(),
        got: Vec::new(),
    };
    for leg in [leg_a, leg_b] {
        c.join(&mut net, leg);
    }
    let step = |net: &mut Net, x: &mut ExitSide, c: &mut ClientSide| {
        net.step();
        x.serve(net);
        c.receive(net);
    };
    while c.joined.len() < 2 {
        step(&mut net, &mut x, &mut c);
        assert!(net.elapsed() < Duration::from_secs(10), "legs joined");
    }
    assert_eq!(c.joined.values().copied().max(), Some(2));

    // 8 s of traffic over the legs in turn (one packet per 5 ms step, some in
    // fragments); the middle of leg A dies at 1 s; the client stops using A
    // DEAD_AFTER later; at 2 s a replacement leg C joins and takes turns with B.
    let start = net.elapsed();
    let kill_at = start + Duration::from_secs(1);
    let dead_at = kill_at + DEAD_AFTER;
    let mut leg_c = None;
    let mut sent_on_a_after_kill = Vec::new();
    let mut i = 0u32;
    while net.elapsed() < start + Duration::from_secs(8) {
        let now = net.elapsed();
        if now >= kill_at && net.nodes[g[1]].alive {
            net.kill(g[1]);
        }
        if now >= start + Duration::from_secs(2) && leg_c.is_none() {
            let id = net.build_to(client, &[g[5], g[6], exit_node], Service::Exit);
            leg_c = Some(id);
        }
        if let Some(id) = leg_c {
            if net.nodes[client].node.is_up(id) && !c.joined.contains_key(&id) {
                c.join(&mut net, id);
                c.joined.insert(id, 0);
            }
        }
        let live: Vec<CircuitId> = [Some(leg_a), Some(leg_b), leg_c]
            .into_iter()
            .flatten()
            .filter(|&l| (l != leg_a || now < dead_at) && c.joined.get(&l).is_some_and(|&n| n > 0))
            .collect();
        let leg = live[i as usize % live.len()];
        // Packets still on their way through the middle when it dies are lost too.
        if leg == leg_a && now + Duration::from_millis(100) >= kill_at {
            sent_on_a_after_kill.push(c.seq);
        }
        let len = if i % 7 == 3 { 2000 } else { 300 };
        c.send(&mut net, leg, len);
        i += 1;
        step(&mut net, &mut x, &mut c);
    }
    // Let the last packets and replies arrive.
    for _ in 0..100 {
        step(&mut net, &mut x, &mut c);
    }
    let end = net.elapsed();

    // One address for the whole VC, before and after the route changed.
    let addrs: std::collections::BTreeSet<IpAddr> = x.left.iter().map(|l| l.2).collect();
    assert_eq!(addrs.len(), 1, "{addrs:?}");
    // The exit let packets out in order, each once; only those sent on the dead
    // leg are missing.
    let numbers: Vec<u32> = x.left.iter().map(|l| l.1).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "in order, once");
    let missing: Vec<u32> = (0..c.seq).filter(|n| !numbers.contains(n)).collect();
    assert!(
        missing.iter().all(|n| sent_on_a_after_kill.contains(n)),
        "lost only on the dead leg: {missing:?}"
    );
    assert!(!missing.is_empty(), "the dead leg lost packets");
    // Replies came back in order, all of those the exit sent once the client had
    // moved: the exit replies on the leg the latest packet came on.
    let got: Vec<u32> = c.got.iter().map(|g| g.1).collect();
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "replies in order, once"
    );
    let after_move: Vec<u32> = x
        .left
        .iter()
        .filter(|l| l.0 > dead_at + Duration::from_millis(200))
        .map(|l| l.1)
        .collect();
    assert!(after_move.len() > 300);
    assert!(
        after_move.iter().all(|n| got.contains(n)),
        "no reply lost after the move"
    );
    // The longest stall at the exit: a gap left by the dead leg holds the packets
    // behind it for the reorder timeout, no longer; the others keep flowing.
    let stall = longest_gap(
        x.left.iter().map(|l| l.0),
        start,
        end - Duration::from_millis(500),
    );
    assert!(
        stall <= REORDER_TIMEOUT + Duration::from_millis(50),
        "stalled {stall:?}"
    );
    // The replacement C joined in place of A, the leg quiet since its middle died
    // (the exit could not have heard A's DESTROY through the dead middle).
    let vc = x
        .exit
        .vcs()
        .vc_of(leg_b_at_exit(&x, &net, exit_node))
        .expect("B is a leg");
    assert_eq!(x.exit.vcs().legs(&vc).len(), 2);
    assert_eq!(c.joined.get(&leg_c.expect("C built")), Some(&2));
    let stats = x.exit.stats().vc;
    assert_eq!(
        (stats.created, stats.joined, stats.legs_replaced),
        (1, 3, 1)
    );
    assert_eq!(x.replaced.len(), 1);
    assert_ne!(
        x.replaced[0],
        leg_b_at_exit(&x, &net, exit_node),
        "A was replaced"
    );
    assert!(stats.reorder.reordered > 0, "{stats:?}");
    eprintln!(
        "sent {}, left {}, lost {} on the dead leg, replies {}, longest stall {stall:?}, {stats:?}",
        c.seq,
        numbers.len(),
        missing.len(),
        got.len()
    );
}

/// The exit's id of the circuit whose last JOIN it answered first: leg B's.
fn leg_b_at_exit(x: &ExitSide, net: &Net, exit_node: usize) -> CircuitId {
    net.log
        .iter()
        .filter(|(_, n, _)| *n == exit_node)
        .filter_map(|(_, _, e)| match e {
            Ev::Vc(c, Cmd::Join, _) => Some(*c),
            _ => None,
        })
        .find(|c| x.exit.vcs().vc_of(*c).is_some())
        .expect("a live leg")
}

/// A probe (a KEEPALIVE with its send time) measures a circuit's round trip: 3 hops
/// of 10 ms each way take 60 ms, seen at 5 ms steps; it also refreshes when the
/// circuit last heard anything.
#[test]
fn a_probe_measures_the_round_trip_of_a_leg() {
    let mut net = Net::new(43, 3, 1);
    let client = net.clients[0];
    let path = net.gateways.clone();
    let id = net.build_up(client, &path);
    assert_eq!(
        net.nodes[client].node.rtt(id),
        None,
        "no KEEPALIVE answered yet"
    );
    let mut rtts = Vec::new();
    for _ in 0..5 {
        net.run_for(Duration::from_millis(200));
        let (now, n) = (net.now, &mut net.nodes[client]);
        let t = n.node.probe(now, &mut n.rng, id).expect("probe");
        net.transmit(client, t);
        let sent = net.now;
        net.run_until(Duration::from_secs(1), |n| {
            n.nodes[client].node.last_heard(id) > Some(sent)
        });
        rtts.push(net.nodes[client].node.rtt(id).expect("measured"));
    }
    assert!(
        rtts.iter()
            .all(|r| (Duration::from_millis(60)..=Duration::from_millis(90)).contains(r)),
        "{rtts:?}"
    );
}

/// The client's side run by the real [`VirtualCircuit`]: its legs' events, its
/// timers, its packets through the data path.
struct VcClient {
    node: usize,
    vc: VirtualCircuit,
    data: DataPath,
    seen: usize,
    /// Legs the VC found dead, with when.
    dead: Vec<(Duration, CircuitId, LegEnd)>,
    /// (time, number) of each reply let out in order.
    got: Vec<(Duration, u32)>,
    /// The leg each packet took, by number.
    took: Vec<CircuitId>,
}

impl VcClient {
    fn step(&mut self, net: &mut Net) {
        let now = net.now;
        let mut out = Vec::new();
        for e in net.events_since(self.node, &mut self.seen) {
            match e {
                Ev::Up(c) if self.vc.has_leg(c) => {
                    let n = &mut net.nodes[self.node];
                    let t = self
                        .vc
                        .on_up(now, &mut n.node, &mut n.rng, c)
                        .expect("join");
                    net.transmit(self.node, t);
                }
                Ev::Down(c, _) => {
                    self.vc.on_down(c);
                }
                Ev::Vc(c, Cmd::Joined, p) => assert!(self.vc.on_joined(c, &p)),
                Ev::Vc(c, Cmd::VData, mut p) => {
                    if let Some((seq, pkt)) = self.data.receive_seq(now, c, &mut p).expect("vdata")
                    {
                        let _ = self.vc.receive(now, c, seq, pkt.to_vec(), &mut out);
                    }
                }
                _ => {}
            }
        }
        let due = self
            .vc
            .poll_timeout(&net.nodes[self.node].node)
            .is_some_and(|t| t <= now);
        if due {
            let mut sent = Vec::new();
            let n = &mut net.nodes[self.node];
            let dead = self
                .vc
                .handle_timeout(now, &mut n.node, &mut n.rng, &mut out, &mut sent);
            for t in sent {
                net.transmit(self.node, Some(t));
            }
            let t = net.elapsed();
            self.dead
                .extend(dead.into_iter().map(|(c, why)| (t, c, why)));
            net.drain();
        }
        let t = net.elapsed();
        self.got.extend(out.iter().map(|p| (t, number(p))));
    }

    fn send(&mut self, net: &mut Net, len: usize) {
        let now = net.now;
        let Some((leg, seq)) = self.vc.route(now, &net.nodes[self.node].node, len) else {
            return;
        };
        assert_eq!(seq as usize, self.took.len());
        self.took.push(leg);
        let p = udp(CLIENT_V4, SERVER, seq, len);
        send_numbered(
            net,
            self.node,
            &mut self.data,
            Toward::Forward(leg),
            seq,
            &p,
        );
    }
}

/// A client on a [`VirtualCircuit`] of two joined legs through `g[0], g[1]` and
/// `g[2], g[3]` to the exit `g[4]`, and that exit's side.
fn vc_on_two_legs(net: &mut Net, seed: u64) -> (ExitSide, VcClient) {
    let g = net.gateways.clone();
    let (client, exit_node) = (net.clients[0], g[4]);
    let key = |n: &Net, i: usize| n.spec(i).key;
    let mut x = ExitSide::new(net, exit_node);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
    let mut c = VcClient {
        node: client,
        vc: VirtualCircuit::new(&mut rng, 2, key(net, exit_node)),
        data: DataPath::default(),
        seen: net.log.len(),
        dead: Vec::new(),
        got: Vec::new(),
        took: Vec::new(),
    };
    for path in [[g[0], g[1], exit_node], [g[2], g[3], exit_node]] {
        let id = net.build_to(client, &path, Service::Exit);
        c.vc.add_leg(id, path.iter().map(|&i| key(net, i)).collect());
    }
    while !c.vc.legs().iter().all(|l| l.state == LegState::Live) {
        vc_step(net, &mut x, &mut c);
        assert!(net.elapsed() < Duration::from_secs(10), "legs joined");
    }
    (x, c)
}

fn vc_step(net: &mut Net, x: &mut ExitSide, c: &mut VcClient) {
    net.step();
    x.serve(net);
    c.step(net);
}

/// A download: the client sends little (its acknowledgements), the exit much. The
/// bytes the client receives count as bulk, so its packets spread over both legs,
/// and the exit's replies, which take the leg of the latest packet, spread with
/// them: both legs carry the download, in order at the client.
#[test]
fn a_download_spreads_over_the_legs() {
    let mut net = Net::with_config(53, 7, 1, |c| c.exit = c.static_key.is_some());
    let (mut x, mut c) = vc_on_two_legs(&mut net, 9);
    // 60 bytes out and 1,200 back every 5 ms: 1.2 KB and 24 KB per BULK_WINDOW.
    x.reply_len = Some(1200);
    for _ in 0..600 {
        c.send(&mut net, 60);
        vc_step(&mut net, &mut x, &mut c);
    }
    for _ in 0..100 {
        vc_step(&mut net, &mut x, &mut c);
    }
    // From the first second on (the probes measured both legs). The exit's ids of
    // the legs are its own.
    let back = &x.back[200..];
    let mut per_leg = BTreeMap::new();
    for l in back {
        *per_leg.entry(l).or_insert(0usize) += 1;
    }
    let first = per_leg.values().next().copied().unwrap_or(0);
    let share = first as f64 / back.len() as f64;
    assert_eq!(per_leg.len(), 2, "{per_leg:?}");
    assert!(
        (0.3..0.7).contains(&share),
        "one leg carried {share:.2} of the download"
    );
    let got: Vec<u32> = c.got.iter().map(|g| g.1).collect();
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order, once");
    assert_eq!(got.len(), x.back.len(), "every reply arrived");
    eprintln!(
        "one leg's share of the download {share:.2}, {:?}",
        c.vc.stats()
    );
}

/// The client's [`VirtualCircuit`] on two legs, one slower: interactive packets take
/// the faster, a bulk transfer spreads over both; the faster leg's middle dies
/// during the transfer; the VC finds it dead within a second and moves its traffic
/// to the other; a replacement leg avoiding the survivor's gateways joins within
/// 5 s of the death; the exit delivers in order from one address throughout.
#[test]
fn a_client_vc_spreads_bulk_and_leaves_a_dead_leg_within_a_second() {
    let mut net = Net::with_config(47, 7, 1, |c| c.exit = c.static_key.is_some());
    let g = net.gateways.clone();
    // Leg B's entry adds 5 ms each way: B is slower but within SLOW_FACTOR of A.
    let b_entry = net.nodes[g[2]].addr;
    net.slow.insert(b_entry, Duration::from_millis(5));
    let (client, exit_node) = (net.clients[0], g[4]);
    let key = |n: &Net, i: usize| n.spec(i).key;
    let (mut x, mut c) = vc_on_two_legs(&mut net, 5);
    let (leg_a, leg_b) = (c.vc.legs()[0].circuit, c.vc.legs()[1].circuit);
    assert!(!c.vc.wants_leg());
    let step = vc_step;
    // Interactive: a small packet every 50 ms for 2 s, each on the faster leg once
    // the probes measured both (the first 500 ms).
    for i in 0..40 {
        c.send(&mut net, 100);
        for _ in 0..10 {
            step(&mut net, &mut x, &mut c);
        }
        let _ = i;
    }
    let rtt = |net: &Net, l| net.nodes[client].node.rtt(l);
    assert!(
        rtt(&net, leg_a) < rtt(&net, leg_b),
        "{:?} {:?}",
        rtt(&net, leg_a),
        rtt(&net, leg_b)
    );
    assert!(
        c.took[10..].iter().all(|&l| l == leg_a),
        "interactive on the fastest: {:?} a {leg_a:?}",
        &c.took
    );
    // Bulk: 1,000 bytes every 5 ms for 6 s; A's middle dies after 2 s.
    let bulk_from = c.took.len();
    let start = net.elapsed();
    let kill_at = start + Duration::from_secs(2);
    let mut killed_seq = None;
    let mut leg_c = None;
    while net.elapsed() < start + Duration::from_secs(6) {
        if net.elapsed() >= kill_at && killed_seq.is_none() {
            net.kill(g[1]);
            killed_seq = Some(c.took.len());
        }
        if c.vc.wants_leg() && leg_c.is_none() {
            let want = [key(&net, g[2]), key(&net, g[3])];
            assert_eq!(c.vc.avoid(), want, "the survivor's gateways");
            let path = [g[5], g[6], exit_node];
            let id = net.build_to(client, &path, Service::Exit);
            c.vc.add_leg(id, path.iter().map(|&i| key(&net, i)).collect());
            leg_c = Some((id, net.elapsed()));
        }
        c.send(&mut net, 1000);
        step(&mut net, &mut x, &mut c);
    }
    for _ in 0..100 {
        step(&mut net, &mut x, &mut c);
    }
    let killed_seq = killed_seq.expect("killed");
    // A is suspect twice its round trip and 50 ms after the first packet it did not
    // answer, which may be the first of a later run on it (a run ends when its leg
    // turns suspect): from 300 ms (60 packets) after the kill nothing goes on it.
    let late_on_a = c.took[killed_seq + 60..]
        .iter()
        .filter(|&&l| l == leg_a)
        .count();
    assert_eq!(
        late_on_a, 0,
        "packets on the broken leg 300 ms after the kill"
    );
    let before_kill = &c.took[bulk_from..killed_seq];
    let on_a = before_kill.iter().filter(|&&l| l == leg_a).count();
    let share = on_a as f64 / before_kill.len() as f64;
    assert!(
        (0.4..0.75).contains(&share),
        "A carried {share:.2} of the bulk"
    );
    // Found dead within a second; the survivor took everything from then on.
    let &(found, dead_leg, why) = c.dead.first().expect("A found dead");
    assert_eq!((dead_leg, why), (leg_a, LegEnd::Silent));
    let detect = found - kill_at;
    assert!(
        detect <= Duration::from_secs(1),
        "found dead after {detect:?}"
    );
    let (leg_c, asked) = leg_c.expect("a replacement was asked for");
    assert!(asked - kill_at <= Duration::from_secs(1));
    let joined_c =
        c.vc.legs()
            .iter()
            .any(|l| l.circuit == leg_c && l.state == LegState::Live);
    assert!(joined_c, "the replacement joined");
    // The exit: one address, in order, and no stall longer than half a second.
    let addrs: std::collections::BTreeSet<IpAddr> = x.left.iter().map(|l| l.2).collect();
    assert_eq!(addrs.len(), 1);
    let numbers: Vec<u32> = x.left.iter().map(|l| l.1).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "in order, once");
    let end = net.elapsed();
    let stall = longest_gap(
        x.left.iter().map(|l| l.0),
        start,
        end - Duration::from_millis(500),
    );
    assert!(stall <= Duration::from_millis(500), "stalled {stall:?}");
    let got: Vec<u32> = c.got.iter().map(|g| g.1).collect();
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "replies in order, once"
    );
    assert!(
        got.len() * 10 >= numbers.len() * 9,
        "{} replies of {}",
        got.len(),
        numbers.len()
    );
    let s = c.vc.stats();
    assert_eq!((s.joined, s.legs_dead), (3, 1));
    eprintln!(
        "A's bulk share {share:.2}, found dead after {detect:?}, longest stall {stall:?}, \
         {} sent, {} left the exit, {} replies, {s:?}",
        c.took.len(),
        numbers.len(),
        got.len()
    );
}
