// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

//! PADDING cells: addressed to any hop of a circuit, relayed like DATA before it,
//! echoed on request, and counted apart from everything else.

use super::*;
use crate::proto::wire::{MAX_DATAGRAM, MAX_PAYLOAD, PADDING_ECHO};

/// What each node has received so far.
fn received(net: &Mini) -> Vec<u64> {
    net.nodes.iter().map(|n| n.1.stats().rx_datagrams).collect()
}

/// A PADDING to each hop of a 3-hop circuit reaches that hop, and only it: the
/// hops before relay it (its cell has the size of DATA with as long a payload), it
/// is dropped and counted there, no event arises anywhere, and the hops after it
/// receive nothing.
#[test]
fn padding_reaches_the_hop_it_is_addressed_to_and_is_relayed_like_data() {
    let (mut net, specs) = Mini::new(3);
    let id = net.circuit(&specs);
    let now = net.now;
    let data = {
        let (_, client, rng) = &mut net.nodes[0];
        client
            .send_payload(now, rng, id, &[7; 300])
            .unwrap()
            .unwrap()
    };
    let (data_len, entry) = (data.buf.len(), data.dst);
    net.deliver(0, data);
    assert!(net.client_got(&[7; 300]), "the echo service answers DATA");
    for hop in 0..3 {
        let before = received(&net);
        let relayed: Vec<u64> = net
            .nodes
            .iter()
            .map(|n| n.1.stats().relayed_forward)
            .collect();
        let (_, client, rng) = &mut net.nodes[0];
        let t = client
            .send_padding(now, rng, id, hop, 300, false, Vec::new())
            .unwrap()
            .unwrap();
        assert_eq!(t.buf.len(), data_len, "as long as DATA of 300 bytes");
        assert_eq!(t.dst, entry);
        let size = t.buf.len() as u64;
        net.deliver(0, t);
        let after = received(&net);
        for (i, node) in net.nodes.iter_mut().enumerate().skip(1) {
            let h = i - 1;
            let s = node.1.stats();
            let got = u64::from(h <= hop);
            assert_eq!(
                after[i] - before[i],
                got,
                "hop {h} of a PADDING to hop {hop}"
            );
            let relays = u64::from(h < hop);
            assert_eq!(s.relayed_forward - relayed[i], relays, "hop {h} relays it");
            assert_eq!(s.padding_received, u64::from(h == hop));
            if h == hop {
                assert_eq!(s.padding_bytes_received, size);
            }
            assert_eq!(s.padding_sent, 0);
            assert!(node.1.poll_event().is_none(), "no service sees padding");
        }
        assert_eq!(after[0], before[0], "nothing comes back");
        for node in &mut net.nodes[1..] {
            node.1.stats.padding_received = 0;
            node.1.stats.padding_bytes_received = 0;
        }
    }
    let s = net.nodes[0].1.stats();
    assert_eq!(s.padding_sent, 3);
    assert_eq!(s.padding_bytes_sent, 3 * data_len as u64);
    assert!(net.nodes.iter().all(|n| n.1.stats().dropped_protocol == 0));
}

/// With the echo flag, the hop answers with one PADDING of the same size, which the
/// client drops and counts; nothing reaches the TUN side (no event).
#[test]
fn an_echoed_padding_comes_back_as_long_and_is_dropped_by_the_client() {
    let (mut net, specs) = Mini::new(3);
    let id = net.circuit(&specs);
    let now = net.now;
    while net.nodes[0].1.poll_event().is_some() {}
    let before = received(&net);
    let (_, client, rng) = &mut net.nodes[0];
    let t = client
        .send_padding(now, rng, id, 1, 40, true, Vec::new())
        .unwrap()
        .unwrap();
    let size = t.buf.len() as u64;
    net.deliver(0, t);
    let middle = net.nodes[2].1.stats();
    assert_eq!((middle.padding_received, middle.padding_sent), (1, 1));
    assert_eq!(middle.padding_bytes_sent, size, "the echo is as long");
    assert_eq!(net.nodes[1].1.stats().relayed_backward, 1);
    assert_eq!(received(&net)[3], before[3], "the exit never sees it");
    let client = net.nodes[0].1.stats();
    assert_eq!(
        (client.padding_received, client.padding_bytes_received),
        (1, size)
    );
    assert_eq!(client.dropped_protocol, 0);
    assert!(net.nodes[0].1.poll_event().is_none());
    assert!(net.nodes[0].1.is_up(id));
}

/// A PADDING whose flags are unknown, or that has no flags byte, is a protocol
/// error at the hop; a hop's PADDING that asks the client for an echo is one at
/// the client. Nothing is answered, the circuit stays up.
#[test]
fn padding_with_unknown_or_missing_flags_is_dropped_and_counted() {
    let (mut net, specs) = Mini::new(2);
    let id = net.circuit(&specs);
    let now = net.now;
    for payload in [&[2u8][..], &[0x81, 0], &[]] {
        let (_, client, rng) = &mut net.nodes[0];
        let out = client.send_cmd(now, rng, id, 1, Cmd::Padding, payload, Vec::new());
        let Output::Transmit(t) = out else {
            panic!("sent")
        };
        net.deliver(0, t);
    }
    let exit = net.nodes[2].1.stats();
    assert_eq!(
        (
            exit.dropped_protocol,
            exit.padding_received,
            exit.padding_sent
        ),
        (3, 0, 0)
    );
    // A hop that sends PADDING with the echo flag backward.
    let r = *net.nodes[1].1.relays.keys().next().unwrap();
    let mut buf = vec![0u8; PAYLOAD_OFFSET + 1];
    buf[PAYLOAD_OFFSET] = PADDING_ECHO;
    let out = net.nodes[1].1.originate_body(now, r, Cmd::Padding, 1, buf);
    net.nodes[1].1.push_output(out);
    net.flush(1);
    let client = net.nodes[0].1.stats();
    assert_eq!((client.dropped_protocol, client.padding_received), (1, 0));
    assert!(net.nodes[0].1.is_up(id));
}

/// The client's API refuses a hop its circuit does not have and a payload larger
/// than a cell's.
#[test]
fn padding_to_a_hop_the_circuit_lacks_is_refused() {
    let (mut net, specs) = Mini::new(2);
    let id = net.circuit(&specs);
    let now = net.now;
    let (_, client, rng) = &mut net.nodes[0];
    let err = |r: Result<Option<Transmit>, SendError>| r.err();
    assert_eq!(
        err(client.send_padding(now, rng, id, 2, 10, false, Vec::new())),
        Some(SendError::NoSuchHop(2))
    );
    assert_eq!(
        err(client.send_padding(now, rng, id, 0, MAX_PAYLOAD + 1, false, Vec::new())),
        Some(SendError::TooLarge(MAX_PAYLOAD + 1))
    );
    assert_eq!(
        err(client.send_padding(now, rng, CircuitId(999), 0, 10, false, Vec::new())),
        Some(SendError::NoCircuit)
    );
    assert_eq!(client.stats().padding_sent, 0);
}

/// Runs every node's timers in 10 ms steps for `secs` seconds; the time from the
/// first step in which the client sent padding to the last (`None`: it sent none).
fn run_padding(net: &mut Mini, secs: u64) -> Option<Duration> {
    let end = net.now + Duration::from_secs(secs);
    let mut padded = None;
    while net.now < end {
        let before = net.nodes[0].1.stats().padding_sent;
        net.now += Duration::from_millis(10);
        net.tick();
        if net.nodes[0].1.stats().padding_sent > before {
            let (first, _) = padded.unwrap_or((net.now, net.now));
            padded = Some((first, net.now));
        }
    }
    padded.map(|(first, last)| last - first)
}

/// A 3-hop circuit of a client running FRONT with `budget` over a 0.5 to 1 s
/// window; padding is all its exit carries, so the exit may echo every one.
fn front_circuit(budget: u32) -> (Mini, CircuitId) {
    let (mut net, specs) = Mini::new(3);
    net.nodes[0].1.cfg.adaptive = Some(Adaptive {
        machines: vec![MachineSpec::Front {
            budget,
            window_min: 0.5,
            window_max: 1.0,
            states: 2,
        }],
    });
    net.nodes[3].1.cfg.padding_share = 100;
    let id = net.circuit(&specs);
    (net, id)
}

/// Adaptive padding: a circuit running FRONT starts padding at its first cell,
/// spreads it over the machine's window, addresses every padding to its last hop
/// (the relays before it see only cells) and gets each one echoed; closing the
/// circuit stops it.
#[test]
fn an_adaptive_circuit_pads_to_its_last_hop_and_back() {
    let (mut net, id) = front_circuit(40);
    assert_eq!(
        run_padding(&mut net, 1),
        None,
        "nothing before the first cell"
    );
    let now = net.now;
    let data = {
        let (_, client, rng) = &mut net.nodes[0];
        client
            .send_payload(now, rng, id, &[7; 100])
            .unwrap()
            .unwrap()
    };
    net.deliver(0, data);
    let span = run_padding(&mut net, 10).expect("padding");
    let sent = net.nodes[0].1.stats().padding_sent;
    assert!((2..40).contains(&sent), "{sent} paddings");
    assert!(
        span >= Duration::from_millis(200),
        "{sent} paddings within {span:?}: not spread over the window"
    );
    let exit = net.nodes[3].1.stats();
    assert_eq!(
        exit.padding_received, sent,
        "every padding reaches the exit"
    );
    assert_eq!(exit.padding_sent, sent, "and is echoed");
    assert_eq!(net.nodes[0].1.stats().padding_received, sent);
    for relay in &net.nodes[1..3] {
        assert_eq!(relay.1.stats().padding_received, 0);
        assert_eq!(relay.1.stats().padding_sent, 0);
    }
    net.nodes[0].1.close_circuit(id);
    net.flush(0);
    let before = net.nodes[0].1.stats().padding_sent;
    assert_eq!(run_padding(&mut net, 10), None);
    assert_eq!(net.nodes[0].1.stats().padding_sent, before);
}

/// Sends `n` full-size PADDINGs with ECHO to the last hop of circuit `id`, one per
/// `every`, delivering each and what it causes.
fn echo_requests(net: &mut Mini, id: CircuitId, n: usize, every: Duration) {
    for _ in 0..n {
        net.now += every;
        let now = net.now;
        let (_, client, rng) = &mut net.nodes[0];
        let t = client
            .send_padding(now, rng, id, 0, MAX_PAYLOAD, true, Vec::new())
            .unwrap()
            .unwrap();
        net.deliver(0, t);
    }
}

/// A gateway's padding budget: whatever a client asks, the echoes it sends stay
/// within `padding_rate` bytes per second (a second's worth at once) and within
/// `padding_share` percent of the datagrams it received; every request beyond is
/// counted, and it echoes up to the budget.
#[test]
fn a_gateway_never_echoes_beyond_its_padding_budget() {
    let (mut net, specs) = Mini::new(1);
    let cell = MAX_DATAGRAM as u64;
    // Ten full-size cells per second, any share.
    net.nodes[1].1.cfg.padding_rate = 10 * MAX_DATAGRAM as u32;
    net.nodes[1].1.cfg.padding_share = 100;
    let id = net.circuit(&specs);
    // 1,000 requests a second for 3 s.
    echo_requests(&mut net, id, 3000, Duration::from_millis(1));
    let s = net.nodes[1].1.stats();
    assert_eq!(s.padding_received, 3000);
    assert!(
        s.padding_bytes_sent <= 4 * 10 * cell,
        "{} bytes echoed in 3 s",
        s.padding_bytes_sent
    );
    assert!(
        s.padding_echoed >= 39,
        "{} echoed: up to the budget",
        s.padding_echoed
    );
    assert_eq!(s.padding_echoed + s.padding_refused, 3000);
    assert_eq!(net.nodes[0].1.stats().padding_received, s.padding_echoed);

    // A tenth of what it received, at any rate.
    let (mut net, specs) = Mini::new(1);
    net.nodes[1].1.cfg.padding_share = 10;
    let id = net.circuit(&specs);
    echo_requests(&mut net, id, 500, Duration::from_millis(1));
    let s = net.nodes[1].1.stats();
    assert!(
        s.padding_echoed * 10 <= s.rx_datagrams,
        "{} echoed of {} received",
        s.padding_echoed,
        s.rx_datagrams
    );
    assert!(
        s.padding_echoed >= 45,
        "{} echoed: up to the share",
        s.padding_echoed
    );
    assert_eq!(s.padding_echoed + s.padding_refused, 500);

    // Rate 0 echoes nothing.
    let (mut net, specs) = Mini::new(1);
    net.nodes[1].1.cfg.padding_rate = 0;
    let id = net.circuit(&specs);
    echo_requests(&mut net, id, 10, Duration::from_millis(100));
    let s = net.nodes[1].1.stats();
    assert_eq!((s.padding_echoed, s.padding_refused), (0, 10));
    assert!(net.nodes[0].1.is_up(id));
}

/// A client keeps its padding within the share its circuit's gateways allow
/// (`limit_padding`): a padding beyond it is not sent, and counted.
#[test]
fn a_client_pads_within_the_share_its_gateways_allow() {
    let (mut net, id) = front_circuit(400);
    net.nodes[0].1.limit_padding(id, 20);
    for _ in 0..20 {
        net.now += Duration::from_millis(10);
        let now = net.now;
        let (_, client, rng) = &mut net.nodes[0];
        let t = client
            .send_payload(now, rng, id, &[7; 100])
            .unwrap()
            .unwrap();
        net.deliver(0, t);
    }
    run_padding(&mut net, 10);
    let s = net.nodes[0].1.stats();
    let normal = net.nodes[0].1.own[&id].padder.as_ref().unwrap().normal;
    assert!(normal >= 20, "{normal} cells");
    assert!(s.padding_sent >= 1, "it pads up to the share");
    assert!(
        s.padding_sent * 100 <= 20 * (s.padding_sent + normal),
        "{} paddings beside {normal} cells",
        s.padding_sent
    );
    assert!(s.padding_capped >= 1, "FRONT wanted more");
    assert_eq!(net.nodes[3].1.stats().padding_received, s.padding_sent);
}

/// `status` reads each own circuit's age, newest handshake and traffic: every cell's
/// bytes each way, PADDING's apart.
#[test]
fn an_own_circuit_counts_its_bytes_and_its_padding() {
    let (mut net, specs) = Mini::new(3);
    let start = net.now;
    let id = net.circuit(&specs);
    let info = net.nodes[0].1.own_info(id).unwrap();
    assert_eq!(info.created, start);
    assert!(info.last_handshake.is_some_and(|t| t >= start));
    let built = info.traffic;
    let now = net.now;
    let (data, pad) = {
        let (_, client, rng) = &mut net.nodes[0];
        let data = client
            .send_payload(now, rng, id, &[7; 300])
            .unwrap()
            .unwrap();
        let pad = client
            .send_padding(now, rng, id, 1, 40, true, Vec::new())
            .unwrap()
            .unwrap();
        (data, pad)
    };
    let sent = (data.buf.len() + pad.buf.len()) as u64;
    let pad_len = pad.buf.len() as u64;
    net.deliver(0, data);
    net.deliver(0, pad);
    assert!(net.client_got(&[7; 300]));
    let client = net.nodes[0].1.stats().clone();
    let t = net.nodes[0].1.own_info(id).unwrap().traffic;
    assert_eq!(t.sent - built.sent, sent);
    assert_eq!(t.padding_sent, pad_len);
    assert_eq!(
        t.padding_received, client.padding_bytes_received,
        "the echo"
    );
    assert!(
        t.received - built.received > t.padding_received,
        "and the DATA echo"
    );
    let share = t.padding_share().unwrap();
    let want = (t.padding_sent + t.padding_received) as f64 * 100.0 / (t.sent + t.received) as f64;
    assert!(
        (share - want).abs() < 1e-9 && share > 0.0 && share < 100.0,
        "{share}"
    );
    assert_eq!(Traffic::default().padding_share(), None);
    assert!(net.nodes[0].1.own_info(CircuitId(999)).is_none());
}
