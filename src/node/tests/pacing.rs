// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

//! Paced links: the entry paces at the rate its client asks for, capped by its
//! limit; only a link's initiator may ask; a paced client's hops originate
//! full-size cells.

use super::*;
use crate::proto::wire::{CtrlKind, MAX_DATAGRAM};

/// Builds a circuit from the client (node 0) through `path` and runs every node's
/// timers in 1 ms steps until it is up.
fn paced_circuit(net: &mut Mini, path: &[HopSpec], service: Service) -> CircuitId {
    circuit_of(net, 0, path, service)
}

/// The same from node `client`.
fn circuit_of(net: &mut Mini, client: usize, path: &[HopSpec], service: Service) -> CircuitId {
    let (_, node, rng) = &mut net.nodes[client];
    let id = node
        .build_circuit(net.now, rng, path, service)
        .expect("build");
    net.flush(client);
    for _ in 0..1000 {
        if net.nodes[client].1.is_up(id) {
            return id;
        }
        net.now += Duration::from_millis(1);
        net.tick();
    }
    panic!("circuit not up within 1 s");
}

/// Runs every node's timers in `step`s for one second.
fn run_one_second(net: &mut Mini, step: Duration) {
    let end = net.now + Duration::from_secs(1);
    while net.now < end {
        net.now += step;
        net.tick();
    }
}

fn padding_sent(net: &Mini, i: usize) -> u64 {
    net.nodes[i].1.stats().padding_sent
}

/// The client paces its side at its own rate; the entry grants at most its
/// `pace_limit`, so a client cannot make it send more than that.
#[test]
fn the_entry_paces_at_the_rate_asked_capped_by_its_limit() {
    let (mut net, specs) = Mini::new(1);
    net.nodes[0].1.cfg.pace = Some(2000);
    net.nodes[1].1.cfg.pace_limit = 500;
    paced_circuit(&mut net, &specs, Service::Echo);
    assert_eq!(net.nodes[1].1.stats().paces_received, 1);
    let (client, entry) = (padding_sent(&net, 0), padding_sent(&net, 1));
    run_one_second(&mut net, Duration::from_micros(250));
    let client = padding_sent(&net, 0) - client;
    let entry = padding_sent(&net, 1) - entry;
    // The 1 ms steps of the build left the client up to 4 slots behind (at 2,000
    // cells/s), which it catches up in this second.
    assert!((1998..=2004).contains(&client), "client {client}/s");
    assert!((498..=502).contains(&entry), "entry {entry}/s");
    assert_eq!(
        net.nodes[0].1.stats().padding_received,
        padding_sent(&net, 1),
        "the client counts the entry's link padding"
    );
}

/// A gateway whose limit is 0 refuses pacing (counted) and still carries the
/// circuit.
#[test]
fn a_gateway_with_limit_zero_refuses_pacing() {
    let (mut net, specs) = Mini::new(1);
    net.nodes[0].1.cfg.pace = Some(100);
    net.nodes[1].1.cfg.pace_limit = 0;
    paced_circuit(&mut net, &specs, Service::Echo);
    run_one_second(&mut net, Duration::from_millis(1));
    assert_eq!(net.nodes[1].1.stats().pace_refused, 1);
    assert_eq!(padding_sent(&net, 1), 0);
    assert!(padding_sent(&net, 0) >= 99);
}

/// Only a link's initiator asks for pacing: a PACE from the entry to its client is
/// a protocol error, counted, and changes nothing at the client.
#[test]
fn a_pace_from_the_responder_is_dropped() {
    let (mut net, specs) = Mini::new(1);
    net.circuit(&specs);
    let (link, _) = net.nodes[1].1.links.first_key_value().unwrap();
    let link = *link;
    net.nodes[1]
        .1
        .send_ctrl(link, CtrlKind::Pace, 0, &u32::MAX.to_be_bytes());
    let before = net.nodes[0].1.stats().dropped_protocol;
    net.flush(1);
    assert_eq!(net.nodes[0].1.stats().dropped_protocol, before + 1);
    assert!(net.nodes[0].1.links.values().all(|l| l.pace.is_none()));
    run_one_second(&mut net, Duration::from_millis(10));
    assert_eq!(padding_sent(&net, 0), 0);
}

/// The exit of a paced client's circuit answers in full-size cells (BUILD flag
/// FULL), whatever the payload; an unpaced client's exit uses the size classes.
#[test]
fn a_paced_clients_exit_answers_in_full_cells() {
    for pace in [Some(100), None] {
        let (mut net, specs) = Mini::new(2);
        net.nodes[0].1.cfg.pace = pace;
        let id = paced_circuit(&mut net, &specs, Service::Exit);
        let (_, client, rng) = &mut net.nodes[0];
        let sent = client.send_payload(net.now, rng, id, &[0x45; 20]).unwrap();
        match sent {
            Some(t) => net.deliver(0, t),
            None => run_one_second(&mut net, Duration::from_millis(10)),
        }
        let exit = &mut net.nodes[2].1;
        let circuit = std::iter::from_fn(|| exit.poll_event())
            .find_map(|e| match e {
                Event::ServiceData { circuit, .. } => Some(circuit),
                _ => None,
            })
            .expect("the exit got the DATA");
        let mut buf = vec![0u8; PAYLOAD_OFFSET + 10];
        buf[PAYLOAD_OFFSET..].fill(7);
        let t = exit
            .send_backward(net.now, circuit, buf, 10)
            .unwrap()
            .expect("the exit's link to the middle is not paced");
        let full = t.buf.len() == MAX_DATAGRAM;
        assert_eq!(full, pace.is_some(), "{} bytes", t.buf.len());
    }
}

/// A stopping client does not wait for its paced link's slots: the cells that wait
/// and the CLOSE go out at once, so the entry ends the circuits now (and the exit
/// frees their addresses) instead of at its idle timeout.
#[test]
fn shutdown_sends_what_a_paced_link_holds_at_once() {
    let (mut net, specs) = Mini::new(1);
    net.nodes[0].1.cfg.pace = Some(10);
    let id = paced_circuit(&mut net, &specs, Service::Echo);
    let (_, client, rng) = &mut net.nodes[0];
    let sent = client
        .send_payload(net.now, rng, id, b"last words")
        .unwrap();
    assert!(sent.is_none(), "the cell waits for its slot");
    client.shutdown();
    let before = net.nodes[1].1.stats().clone();
    net.flush(0);
    let entry = net.nodes[1].1.stats().clone();
    assert_eq!(
        entry.rx_datagrams,
        before.rx_datagrams + 2,
        "the waiting cell and the CLOSE, nothing else"
    );
    assert_eq!(entry.padding_received, before.padding_received);
    assert_eq!(entry.links_closed, 1, "the entry got the CLOSE");
    assert_eq!(net.nodes[1].1.relayed_circuits(), 0);
}

/// A gateway paces all its clients' links together at most at its budget: with a
/// limit of 1,000 and a budget of 2,500 cells/s, four clients that each ask for
/// 1,000 get 1,000, 1,000, 500 and a refusal, and the entry sends 2,500 padding
/// cells a second in all.
#[test]
fn a_gateway_paces_its_clients_within_its_budget() {
    let (mut net, specs) = Mini::new(1);
    net.nodes[1].1.cfg.pace_budget = 2500;
    net.nodes[0].1.cfg.pace = Some(1000);
    for i in 1..4u8 {
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 1, 1 + i)), 9000);
        let cfg = NodeConfig {
            pace: Some(1000),
            ..NodeConfig::default()
        };
        let rng = ChaCha20Rng::seed_from_u64(u64::from(i));
        net.nodes.push((addr, Node::new(cfg), rng));
    }
    for client in [0, 2, 3, 4] {
        circuit_of(&mut net, client, &specs, Service::Echo);
    }
    let entry = net.nodes[1].1.stats().clone();
    assert_eq!((entry.paces_received, entry.pace_refused), (3, 1));
    run_one_second(&mut net, Duration::from_micros(250));
    let sent = net.nodes[1].1.stats().padding_sent - entry.padding_sent;
    assert!((2490..=2510).contains(&sent), "{sent} padding cells/s");
    let got: Vec<u64> = [0, 2, 3, 4]
        .iter()
        .map(|&c| net.nodes[c].1.stats().padding_received)
        .collect();
    assert_eq!(got[3], 0, "the refused client's link is not paced: {got:?}");
}
