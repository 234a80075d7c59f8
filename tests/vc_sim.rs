//! A virtual circuit's exit side in the deterministic simulation (PROTOCOL §12):
//! a client with two legs through disjoint gateways to one exit streams numbered
//! packets over both; a middle gateway dies; the client moves to the other leg and
//! joins a replacement. The exit's real [`Exit`] and [`DataPath`] carry the packets;
//! the client's side (which leg, when a leg is dead) is scripted here.

mod simnet;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anonnet::exit::policy::ExitPolicy;
use anonnet::exit::{Exit, ExitDue, ExitSettings, Owner, Verdict};
use anonnet::node::{Buffers, CircuitId, DataPath, Toward};
use anonnet::proto::addr::CLIENT_V4;
use anonnet::proto::ip;
use anonnet::proto::reorder::{Reorder, REORDER_TIMEOUT};
use anonnet::proto::vc::{Join, Joined, VcId, JOINED_LEN, VC_ID_LEN};
use anonnet::proto::wire::{Cmd, Service, MAX_DATAGRAM, PAYLOAD_OFFSET};
use etherparse::PacketBuilder;
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
}

impl ExitSide {
    fn serve(&mut self, net: &mut Net) {
        let now = net.now;
        let new = net.events_since(self.node, &mut self.seen);
        for e in new {
            match e {
                Ev::Vc(c, Cmd::Join, p) => {
                    let accepted = self.exit.join(now, c, &p).expect("join");
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
                    let owner = self
                        .exit
                        .from_leg(now, c, seq, pkt.to_vec(), &mut out)
                        .expect("a leg");
                    self.leave(net, owner, out);
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
            let mut reply = udp(SERVER, pool, n, p.len());
            assert_eq!(self.exit.from_tun(&mut reply), Some(owner));
            let (leg, seq) = self.exit.route_back(owner).expect("a leg to reply on");
            let mut buf = vec![0u8; PAYLOAD_OFFSET];
            buf.extend_from_slice(&reply);
            let node = &mut net.nodes[self.node];
            let sent = self.data.send_seq(
                now,
                &mut node.rng,
                &mut node.node,
                Toward::Backward(leg),
                seq.expect("numbered"),
                buf,
                &mut Heap,
            );
            if sent.is_ok() {
                while let Some(t) = self.data.poll_transmit() {
                    net.transmit(self.node, Some(t));
                }
            }
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
        let mut buf = vec![0u8; PAYLOAD_OFFSET];
        buf.extend_from_slice(&p);
        let now = net.now;
        let n = &mut net.nodes[self.node];
        let sent = self.data.send_seq(
            now,
            &mut n.rng,
            &mut n.node,
            Toward::Forward(leg),
            self.seq,
            buf,
            &mut Heap,
        );
        self.seq += 1;
        if sent.is_ok() {
            while let Some(t) = self.data.poll_transmit() {
                net.transmit(self.node, Some(t));
            }
        }
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
    net.jitter = Duration::from_millis(30);
    let g = net.gateways.clone();
    let (client, exit_node) = (net.clients[0], g[4]);
    let leg_a = net.build_up_to(client, &[g[0], g[1], exit_node], Service::Exit);
    let leg_b = net.build_up_to(client, &[g[2], g[3], exit_node], Service::Exit);
    let exit_ip = net.nodes[exit_node].addr.ip();
    let mut x = ExitSide {
        node: exit_node,
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
    };
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
