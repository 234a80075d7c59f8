// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::*;

/// A relayed circuit is one boxed `Relay` plus its entries in `relays` and
/// `circuits`; its size is the bulk of a gateway's memory per idle circuit
/// (docs/DESIGN.md, memory per circuit).
#[test]
fn a_relayed_circuit_stays_small() {
    eprintln!(
        "Relay {} bytes, Entry {} bytes",
        std::mem::size_of::<Relay>(),
        std::mem::size_of::<Entry>()
    );
    assert!(std::mem::size_of::<Relay>() <= 1440);
    assert!(std::mem::size_of::<Entry>() <= 16);
}

use std::net::{IpAddr, Ipv4Addr};

use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::proto::framing::{self, Carrier, PayloadError};
use crate::proto::identity::Identity;
use crate::proto::vc;
use crate::proto::wire::{MsgType, CELL_SAMPLE, CELL_SLOTS, PAYLOAD_OFFSET};

/// Nodes that hand each other every datagram at once, on one fixed clock.
struct Mini {
    now: Instant,
    nodes: Vec<(SocketAddr, Node, ChaCha20Rng)>,
}

impl Mini {
    /// One client (node 0) and `gateways` gateways (nodes 1..), whose specs are returned.
    fn new(gateways: usize) -> (Self, Vec<HopSpec>) {
        let mut rng = ChaCha20Rng::seed_from_u64(23);
        let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1)), 9000);
        let mut nodes = vec![(
            client,
            Node::new(NodeConfig::default()),
            ChaCha20Rng::seed_from_u64(rng.next_u64()),
        )];
        let mut specs = Vec::new();
        for i in 0..gateways {
            let id = Identity::generate(&mut rng);
            let last = u8::try_from(i + 1).expect("few gateways");
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, last)), 9000);
            let cfg = NodeConfig {
                static_key: Some(*id.secret()),
                echo: true,
                exit: true,
                directory: true,
                ..NodeConfig::default()
            };
            nodes.push((
                addr,
                Node::new(cfg),
                ChaCha20Rng::seed_from_u64(rng.next_u64()),
            ));
            specs.push(HopSpec {
                addr,
                key: id.public().0,
            });
        }
        let now = Instant::now();
        (Self { now, nodes }, specs)
    }

    /// Delivers `t` from node `from` and everything it causes, until nothing is left.
    fn deliver(&mut self, from: usize, t: Transmit) {
        let mut queue = VecDeque::from([(self.nodes[from].0, t)]);
        while let Some((src, t)) = queue.pop_front() {
            let Some(i) = self.nodes.iter().position(|n| n.0 == t.dst) else {
                continue;
            };
            let (addr, node, rng) = &mut self.nodes[i];
            if let Output::Transmit(out) =
                node.handle_datagram(self.now, rng, Some(t.dst), src, t.buf)
            {
                queue.push_back((*addr, out));
            }
            while let Some(out) = node.poll_transmit() {
                queue.push_back((*addr, out));
            }
        }
    }

    /// Sends what node `i` has queued and everything it causes.
    fn flush(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].1.poll_transmit() {
            self.deliver(i, t);
        }
    }

    /// Runs every node's timers at `now` and delivers what they send.
    fn tick(&mut self) {
        for i in 0..self.nodes.len() {
            let (_, node, rng) = &mut self.nodes[i];
            node.handle_timeout(self.now, rng);
            self.flush(i);
        }
    }

    /// Runs only the gateways' timers (the client is gone), in 100 ms steps, until `end`.
    fn gateways_alone_until(&mut self, end: Instant) {
        while self.now < end {
            self.now += Duration::from_millis(100);
            for i in 1..self.nodes.len() {
                let (_, node, rng) = &mut self.nodes[i];
                node.handle_timeout(self.now, rng);
                self.flush(i);
            }
        }
    }

    /// Whether the client received `payload` on a circuit.
    fn client_got(&mut self, payload: &[u8]) -> bool {
        std::iter::from_fn(|| self.nodes[0].1.poll_event())
            .any(|e| matches!(e, Event::Data { buf, range, .. } if buf.get(range.clone()) == Some(payload)))
    }

    /// A circuit of the client through `path` to the echo service, up.
    fn circuit(&mut self, path: &[HopSpec]) -> CircuitId {
        self.circuit_to(path, Service::Echo)
    }

    fn circuit_to(&mut self, path: &[HopSpec], service: Service) -> CircuitId {
        let (_, client, rng) = &mut self.nodes[0];
        let id = client
            .build_circuit(self.now, rng, path, service)
            .expect("build");
        self.flush(0);
        assert!(self.nodes[0].1.is_up(id), "circuit up");
        id
    }
}

/// An RNG that returns only 0xFF bytes (a client's filler slots may hold anything).
struct AllOnes;

impl RngCore for AllOnes {
    fn next_u32(&mut self) -> u32 {
        u32::MAX
    }
    fn next_u64(&mut self) -> u64 {
        u64::MAX
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        dest.fill(0xFF);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        dest.fill(0xFF);
        Ok(())
    }
}

impl CryptoRng for AllOnes {}

/// The client's own send path masks a cell whose sample is all 0xFF (its filler
/// slots came from the RNG): the mask's block counter is 0xFFFF_FFFF.
#[test]
fn a_client_masks_a_cell_whose_sample_is_all_ones() {
    let (mut net, specs) = Mini::new(1);
    let id = net.circuit(&specs);
    let t = net.nodes[0]
        .1
        .send_payload(net.now, &mut AllOnes, id, b"ping")
        .expect("send")
        .expect("not paced");
    assert_eq!(&t.buf[CELL_SAMPLE], &[0xFF; 16]);
    let before = net.nodes[1].1.stats().rx_datagrams;
    net.deliver(0, t);
    assert_eq!(net.nodes[1].1.stats().rx_datagrams, before + 1);
    // The counters serialize as a status report shows them.
    let json = serde_json::to_value(net.nodes[1].1.stats()).unwrap();
    assert_eq!(json["rx_datagrams"], before + 1);
    let echoed = net.client_got(b"ping");
    assert!(echoed, "the gateway unmasked the cell and echoed it");
}

/// A client chooses slot 1 at its entry's output: it writes slot 2 as the value it
/// wants XOR the entry's slot keystream, which it knows. The entry then masks its
/// forwarded cell with block counter 0xFFFF_FFFF, which used to panic it.
#[test]
fn a_relay_forwards_a_cell_whose_output_sample_the_client_chose() {
    let (mut net, specs) = Mini::new(2);
    let id = net.circuit(&specs);
    let (_, client, rng) = &mut net.nodes[0];
    let mut t = client
        .send_payload(net.now, rng, id, b"ping")
        .expect("send")
        .expect("not paced");
    let own = &client.own[&id];
    let keys = client.links[&own.first.0].keys.as_ref().expect("link up");
    let mut clear = t.buf.clone();
    let mut cell = Cell::new_checked(&mut clear).expect("a cell");
    mask_header(&keys.send_mask, &mut cell);
    let (ctr0, _) = onion::read_slot0(cell.slots_mut());
    let ks = own.keys[0].current.seal_keystream(ctr0);
    let slot2 = CELL_SLOTS.start + 2 * wire::SLOT_LEN;
    for i in 0..16 {
        t.buf[slot2 + i] = 0xFF ^ ks[wire::SLOT_LEN + i];
    }
    net.deliver(0, t);
    assert_eq!(
        net.nodes[2].1.stats().rx_datagrams,
        3,
        "LINK_INIT, BUILD, the cell"
    );
    let echoed = net.client_got(b"ping");
    assert!(echoed, "the middle opened the forwarded cell and echoed it");
}

/// A client that only sends (a one-way stream to the exit, which answers nothing)
/// still hears from its circuit: it probes with KEEPALIVEs while nothing comes back,
/// so the circuit is not declared silent after `circuit_timeout`.
#[test]
fn a_circuit_that_only_sends_stays_up() {
    let (mut net, specs) = Mini::new(2);
    let id = net.circuit_to(&specs, Service::Exit);
    let cfg = NodeConfig::default();
    let end = net.now + cfg.circuit_timeout * 3;
    while net.now < end {
        net.now += Duration::from_millis(250);
        net.tick();
        let (_, client, rng) = &mut net.nodes[0];
        assert!(client.is_up(id), "circuit up after {:?}", end - net.now);
        let t = client
            .send_payload(net.now, rng, id, &[0x45; 60])
            .expect("send")
            .expect("not paced");
        net.deliver(0, t);
    }
    let answered = net.nodes[0].1.stats().keepalives_answered;
    let probes = (cfg.circuit_timeout * 3).as_millis() / cfg.keepalive.as_millis();
    assert!(
        answered > 0 && u128::from(answered) <= probes,
        "{answered} keepalives"
    );
}

/// Link liveness (PROTOCOL §2, PING): a link that keeps sending and hears nothing
/// back PINGs its peer. A live peer's PONGs keep a one-way stream's links up for as
/// long as it lasts; when the middle dies, the entry's link to it dies within
/// `LINK_DEAD_AFTER` of the first cell it could not deliver, and the entry destroys
/// the circuit towards the client at once.
#[test]
fn one_way_links_stay_up_on_pongs_and_die_with_their_peer() {
    let (mut net, specs) = Mini::new(2);
    let id = net.circuit_to(&specs, Service::Exit);
    let send = |net: &mut Mini| {
        net.now += Duration::from_millis(50);
        net.tick();
        let (_, client, rng) = &mut net.nodes[0];
        if let Ok(Some(t)) = client.send_payload(net.now, rng, id, &[0x45; 60]) {
            net.deliver(0, t);
        }
    };
    let end = net.now + Duration::from_secs(20);
    while net.now < end {
        send(&mut net);
    }
    let stats: Vec<Stats> = net.nodes.iter().map(|n| n.1.stats().clone()).collect();
    assert!(net.nodes[0].1.is_up(id), "the circuit stayed up");
    assert!(
        stats.iter().all(|s| s.links_dead == 0),
        "a live link died: {stats:?}"
    );
    // Between the client's KEEPALIVEs (every 2 s), the gateways' forward links
    // carried the stream alone and asked.
    assert!(stats[1].pongs_received > 0 && stats[2].pings_answered > 0);
    // The middle dies: nothing reaches its address any more.
    net.nodes[2].0 = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 9, 9)), 9000);
    let death = net.now;
    while net.nodes[0].1.is_up(id) && net.now < death + Duration::from_secs(10) {
        send(&mut net);
    }
    let down = std::iter::from_fn(|| net.nodes[0].1.poll_event()).find_map(|e| match e {
        Event::CircuitDown(c, why) if c == id => Some(why),
        _ => None,
    });
    // The entry tells the client which hop it lost (TRUNCATED) before its DESTROY.
    assert_eq!(
        down,
        Some(DownReason::Truncated {
            hop: 0,
            reason: DestroyReason::Unreachable
        })
    );
    assert_eq!(down.and_then(|d| d.failed_hop()), Some(1));
    let after = net.now - death;
    assert!(
        after <= LINK_DEAD_AFTER + Duration::from_millis(100),
        "the circuit went down {after:?} after the middle died"
    );
    assert_eq!(net.nodes[1].1.stats().links_dead, 1);
    assert_eq!(net.nodes[1].1.relayed_circuits(), 0);
}

/// A TRUNCATED is taken only from a hop that has a successor and only with its
/// 1-byte reason; anything else from a hop holding the circuit's keys is dropped and
/// counted, and the circuit stays up.
#[test]
fn only_a_hop_with_a_successor_truncates_a_circuit() {
    let (mut net, specs) = Mini::new(2);
    let id = net.circuit_to(&specs, Service::Exit);
    let relay = |net: &Mini, i: usize| *net.nodes[i].1.relays.keys().next().expect("relay");
    let originate = |net: &mut Mini, i: usize, len: usize| {
        let r = relay(net, i);
        let mut buf = vec![0u8; PAYLOAD_OFFSET + len.max(1)];
        buf[PAYLOAD_OFFSET] = DestroyReason::Unreachable as u8;
        let now = net.now;
        let out = net.nodes[i]
            .1
            .originate_body(now, r, Cmd::Truncated, len, buf);
        net.nodes[i].1.push_output(out);
        net.flush(i);
    };
    let dropped = |net: &Mini| net.nodes[0].1.stats().dropped_protocol;
    // From the exit, which has no next hop to lose.
    originate(&mut net, 2, 1);
    assert_eq!(dropped(&net), 1);
    // From the entry, with no reason or a longer body.
    originate(&mut net, 1, 0);
    originate(&mut net, 1, 2);
    assert_eq!(dropped(&net), 3);
    assert!(net.nodes[0].1.is_up(id));
    assert_eq!(net.nodes[0].1.stats().truncated, 0);
    // The real thing closes it, blaming the exit, and tells the entry (DESTROY).
    let r = relay(&net, 1);
    let now = net.now;
    net.nodes[1].1.truncate(now, r, DestroyReason::Unreachable);
    net.flush(1);
    assert!(!net.nodes[0].1.is_up(id));
    let down = std::iter::from_fn(|| net.nodes[0].1.poll_event()).find_map(|e| match e {
        Event::CircuitDown(c, why) if c == id => Some(why),
        _ => None,
    });
    assert_eq!(down.and_then(|d| d.failed_hop()), Some(1));
    assert_eq!(net.nodes[0].1.stats().truncated, 1);
    assert_eq!(net.nodes[1].1.relayed_circuits(), 0, "freed at the entry");
}

/// The link's initiator decides when an idle link ends. When the responder's idle
/// timer ran out first (it heard last from the initiator earlier than the other way
/// round), the initiator still took the link for up, and every BUILD it sent on it
/// vanished at the responder as an unknown index; a client retrying kept the link
/// busy, so it never ended. Path client -> G2 -> G1: G1 (the responder of G2's link)
/// tears the idle circuit down first, so it last heard from G2 before G2 last heard
/// from it.
#[test]
fn a_link_stays_usable_until_its_initiator_drops_it() {
    let (mut net, specs) = Mini::new(2);
    let path = [specs[1], specs[0]];
    net.circuit(&path);
    let cfg = NodeConfig::default();
    net.gateways_alone_until(net.now + cfg.idle_timeout + Duration::from_secs(5));
    assert_eq!(
        net.nodes[1].1.relayed_circuits(),
        0,
        "the idle circuit is gone"
    );
    net.nodes[0].1 = Node::new(NodeConfig::default());
    net.circuit(&path);
}

/// A link whose circuit outlived twice the idle timeout stays usable at both ends when
/// that circuit ends from the far side: the idle clock starts when the last circuit
/// leaves, not at the last control message each end heard (for the responder, the
/// BUILD of minutes ago, which had it drop the link at once while its initiator still
/// sent BUILDs on it). Both orders of the two gateways, so each ticks first once.
#[test]
fn a_link_stays_usable_after_a_long_circuit_ends() {
    for order in [[0, 1], [1, 0]] {
        let (mut net, specs) = Mini::new(2);
        let path = [specs[order[0]], specs[order[1]]];
        let id = net.circuit(&path);
        let idle = NodeConfig::default().idle_timeout;
        let end = net.now + idle * 3;
        while net.now < end {
            net.now += Duration::from_secs(1);
            let (_, client, rng) = &mut net.nodes[0];
            let t = client
                .send_data(net.now, rng, id, vec![0x45; PAYLOAD_OFFSET + 20], 20)
                .expect("circuit up")
                .expect("not paced");
            net.deliver(0, t);
            net.tick();
        }
        // The client vanishes; the gateways time its circuit out.
        net.gateways_alone_until(net.now + idle + Duration::from_secs(2));
        for i in 1..net.nodes.len() {
            assert_eq!(net.nodes[i].1.relayed_circuits(), 0, "gateway {i}");
        }
        net.nodes[0].1 = Node::new(NodeConfig::default());
        net.circuit(&path);
    }
}

impl Mini {
    /// Restarts gateway `i` with another handshake rate (same key).
    fn set_handshake_rate(&mut self, i: usize, rate: u32) {
        let cfg = NodeConfig {
            handshake_rate: rate,
            ..self.nodes[i].1.cfg.clone()
        };
        self.nodes[i].1 = Node::new(cfg);
    }
}

/// LINK_INITs of junk (any sender can forge the first byte and the length) are
/// dropped on their MAC before they cost a handshake token: with a budget of 20, 200 of
/// them in the same instant leave the next client's handshake untouched.
#[test]
fn junk_link_inits_cost_no_handshake_token() {
    let (mut net, specs) = Mini::new(1);
    net.set_handshake_rate(1, 20);
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let (addr, gateway, grng) = &mut net.nodes[1];
    for i in 0..200u16 {
        let mut junk = vec![0u8; wire::LINK_INIT_LEN];
        rng.fill_bytes(&mut junk);
        junk[0] = MsgType::LinkInit.byte();
        let spoofed = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 1000 + i);
        let out = gateway.handle_datagram(net.now, grng, Some(*addr), spoofed, junk);
        assert!(matches!(out, Output::Recycle(_)));
        assert!(gateway.poll_transmit().is_none(), "no answer to junk");
    }
    assert_eq!(gateway.stats().dropped_mac, 200);
    assert_eq!(gateway.stats().dropped_rate_limited, 0);
    net.circuit(&specs);
}

/// A flood of BUILDs and new links at the moment a circuit rekeys does not starve the
/// rekey: each kind of handshake has its own budget.
#[test]
fn a_rekey_does_not_wait_for_builds_or_links() {
    let (mut net, specs) = Mini::new(1);
    let id = net.circuit(&specs);
    let end = net.now + onion::REKEY_AFTER_TIME + Duration::from_secs(1);
    while net.now < end {
        net.now += Duration::from_millis(500);
        let gateway = &mut net.nodes[1].1;
        while gateway.take_token(net.now, Budget::Build) {}
        while gateway.take_token(net.now, Budget::Link) {}
        net.tick();
        assert!(net.nodes[0].1.is_up(id));
    }
    assert_eq!(net.nodes[1].1.stats().rekeys, 1, "the hop answered REKEY");
}

/// Every handshake token taken is counted under its budget, every one refused as
/// rate limited (the metrics' `anonnet_handshakes_total{budget}`).
#[test]
fn handshake_tokens_are_counted_by_budget() {
    let (mut net, specs) = Mini::new(1);
    net.set_handshake_rate(1, 5);
    net.circuit(&specs);
    let s = net.nodes[1].1.stats().clone();
    assert_eq!(
        (s.handshakes_link, s.handshakes_build, s.handshakes_rekey),
        (1, 1, 0)
    );
    let gateway = &mut net.nodes[1].1;
    let mut taken = 0;
    while gateway.take_token(net.now, Budget::Rekey) {
        taken += 1;
    }
    let s = gateway.stats();
    assert_eq!((s.handshakes_rekey, s.dropped_rate_limited), (taken, 1));
    assert_eq!(taken, 5);
}

/// Handshakes with a valid mac1 (anyone who knows the gateway's public key can make
/// one) from spoofed sources drain the LINK_INIT budget; the gateway, now under load,
/// answers each with a cookie instead of a handshake. A client at a real address gets
/// its cookie, sends its LINK_INIT again with mac2 at once, and comes through.
#[test]
fn under_load_a_client_with_a_cookie_comes_through_a_spoofed_flood() {
    let (mut net, specs) = Mini::new(1);
    net.set_handshake_rate(1, 20);
    net.spoofed_link_inits(&specs[0], 100, Duration::ZERO);
    let s = net.nodes[1].1.stats().clone();
    assert_eq!(s.dropped_mac, 0);
    assert!(s.dropped_auth >= 10 && s.dropped_auth <= 11, "{s:?}");
    assert_eq!(s.cookies_sent + s.dropped_auth, 100, "{s:?}");
    net.circuit(&specs);
    assert_eq!(net.nodes[0].1.stats().cookies_received, 1);
    assert_eq!(net.nodes[1].1.stats().cookies_sent, s.cookies_sent + 1);
}

/// A flood that goes on keeps the gateway under load for as long as it lasts: after the
/// first half second's burst, none of 500 spoofed LINK_INITs over 5 s (5 times the
/// handshake rate) reaches a Diffie-Hellman. (Measured by the bucket's level instead,
/// the load state ended every 1.5 s while few took a token, and 65 did.)
#[test]
fn a_lasting_flood_keeps_the_gateway_under_load() {
    let (mut net, specs) = Mini::new(1);
    net.set_handshake_rate(1, 20);
    net.spoofed_link_inits(&specs[0], 500, Duration::from_millis(10));
    let s = net.nodes[1].1.stats().clone();
    assert!(s.dropped_auth <= 11, "{s:?}");
    assert_eq!(s.cookies_sent + s.dropped_auth, 500, "{s:?}");
}

impl Mini {
    /// `n` LINK_INITs with a valid mac1 for `gateway` (node 1) around random Noise
    /// messages, from spoofed sources, `every` apart on the virtual clock.
    fn spoofed_link_inits(&mut self, gateway: &HopSpec, n: u16, every: Duration) {
        let mac1_key = crypto::mac1_key(&gateway.key);
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        for i in 0..n {
            let mut msg = [0u8; 64];
            rng.fill_bytes(&mut msg);
            let init = wire::emit_link_init(
                u32::from(i) + 1,
                &msg,
                |c| crypto::mac(&mac1_key, c),
                |_| None,
            );
            let spoofed = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)), 1000 + i);
            let (addr, node, grng) = &mut self.nodes[1];
            node.handle_datagram(self.now, grng, Some(*addr), spoofed, init);
            while node.poll_transmit().is_some() {}
            self.now += every;
        }
    }
}

/// A BUILD may not extend to this host (loopback, the gateway's own address: a loop
/// through itself, or UDP to its local services) or to an address no relay lives at;
/// the gateway refuses it with DESTROY and sends nothing there.
#[test]
fn a_build_to_this_host_or_nowhere_is_refused() {
    let (mut net, specs) = Mini::new(1);
    let own = specs[0].addr;
    let cfg = NodeConfig {
        own_addrs: vec![own.ip()],
        ..net.nodes[1].1.cfg.clone()
    };
    net.nodes[1].1 = Node::new(cfg);
    let bad = [
        "127.0.0.1:9000",
        "[::1]:9000",
        "[::ffff:127.0.0.1]:9000",
        "198.18.0.1:53",
        "224.0.0.251:5353",
        "255.255.255.255:9000",
        "169.254.1.1:9000",
        "[fe80::1]:9000",
        "0.0.0.0:9000",
    ];
    for (i, next) in bad.iter().enumerate() {
        let hop = HopSpec {
            addr: next.parse().unwrap(),
            key: specs[0].key,
        };
        let (_, client, rng) = &mut net.nodes[0];
        let id = client
            .build_circuit(net.now, rng, &[specs[0], hop], Service::Echo)
            .expect("build");
        net.flush(0);
        assert!(!net.nodes[0].1.is_up(id), "{next}");
        let g = net.nodes[1].1.stats();
        assert_eq!(g.circuits_refused, i as u64 + 1, "{next}");
        assert_eq!(g.circuits_accepted, 0, "{next}");
        assert_eq!(
            net.nodes[0].1.stats().destroys_received,
            i as u64 + 1,
            "{next}"
        );
    }
    let t = net.nodes[1].1.stats().clone();
    assert_eq!(
        t.rx_datagrams,
        1 + bad.len() as u64,
        "LINK_INIT and the BUILDs"
    );
}

#[test]
fn next_hops_allowed_only_away_from_this_host() {
    let own: Vec<IpAddr> = vec![
        "198.18.0.1".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
    ];
    let ok = |s: &str, lo| relay::next_hop_allowed(s.parse().unwrap(), &own, lo);
    assert!(ok("198.18.0.2:9000", false));
    assert!(ok("[2001:db8::2]:9000", false));
    assert!(!ok("198.18.0.1:9001", false));
    assert!(!ok("[2001:db8::1]:9000", false));
    assert!(!ok("[::ffff:198.18.0.1]:9000", false));
    assert!(!ok("127.0.0.1:9001", false));
    // A network that lives on loopback (tests, a local demo) may use it.
    assert!(ok("127.0.0.1:9001", true));
    assert!(ok("198.18.0.1:9001", true));
    assert!(!ok("224.0.0.1:9001", true));
    assert!(!ok("127.0.0.1:0", true));
}

/// One client fills the circuit table; another client's BUILD then frees one of the
/// first one's circuits (DESTROY) instead of being refused, while the first client,
/// holding the most, is refused one more.
#[test]
fn a_full_circuit_table_makes_room_from_the_link_that_holds_the_most() {
    let (mut net, specs) = Mini::new(1);
    let cfg = NodeConfig {
        max_circuits: 4,
        ..net.nodes[1].1.cfg.clone()
    };
    net.nodes[1].1 = Node::new(cfg);
    let hog: Vec<CircuitId> = (0..4).map(|_| net.circuit(&specs)).collect();
    let other = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2)), 9000);
    net.nodes.push((
        other,
        Node::new(NodeConfig::default()),
        ChaCha20Rng::seed_from_u64(9),
    ));
    let (_, client, rng) = &mut net.nodes[2];
    let id = client
        .build_circuit(net.now, rng, &specs, Service::Echo)
        .expect("build");
    net.flush(2);
    assert!(net.nodes[2].1.is_up(id), "the second client got a circuit");
    let g = net.nodes[1].1.stats().clone();
    assert_eq!((g.circuits_evicted, g.circuits_refused), (1, 0));
    let hog_up = hog.iter().filter(|&&c| net.nodes[0].1.is_up(c)).count();
    assert_eq!(hog_up, 3, "one of the first client's circuits was freed");
    let (_, client, rng) = &mut net.nodes[0];
    let more = client
        .build_circuit(net.now, rng, &specs, Service::Echo)
        .expect("build");
    net.flush(0);
    assert!(!net.nodes[0].1.is_up(more), "the largest link is refused");
    assert_eq!(net.nodes[1].1.stats().circuits_refused, 1);
}

mod data_path;
mod deadlines;
mod pacing;
mod padding;

/// A KEEPALIVE answer's stamp is the client's own send time, but a hostile exit can
/// write any: one from the future or beyond the clock's range gives no round trip.
#[test]
fn a_keepalive_stamp_from_the_future_gives_no_round_trip() {
    let created = Instant::now();
    let now = created + Duration::from_millis(500);
    let stamp = |us: u64| us.to_be_bytes();
    assert_eq!(
        circuit::round_trip(now, created, stamp(440_000)),
        Some(Duration::from_millis(60))
    );
    assert_eq!(circuit::round_trip(now, created, stamp(500_001)), None);
    assert_eq!(circuit::round_trip(now, created, stamp(u64::MAX)), None);
}
