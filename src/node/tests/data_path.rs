// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

//! The data path through real nodes: fragmentation, reassembly, buffers.

use super::*;

/// Buffers from the heap, counted.
#[derive(Default)]
struct Counted {
    gets: usize,
    puts: usize,
}

impl Buffers for Counted {
    fn get(&mut self) -> Vec<u8> {
        self.gets += 1;
        vec![0; wire::MAX_DATAGRAM + 1]
    }
    fn put(&mut self, _: Vec<u8>) {
        self.puts += 1;
    }
}

/// An IPv4-looking packet of `len` bytes (the data path reads only the version).
fn ip_packet(len: usize, seed: u8) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
    p[0] = 0x45;
    p
}

/// `packet` at `PAYLOAD_OFFSET` of a buffer, as a TUN read leaves it.
fn tun_buf(packet: &[u8]) -> Vec<u8> {
    let mut buf = vec![0; PAYLOAD_OFFSET];
    buf.extend_from_slice(packet);
    buf
}

impl Mini {
    /// Node `i`'s events' payloads through `dp`: the packets they complete.
    fn packets_at(&mut self, i: usize, dp: &mut DataPath) -> Vec<(CircuitId, Vec<u8>)> {
        let mut got = Vec::new();
        while let Some(e) = self.nodes[i].1.poll_event() {
            if let Event::Data {
                circuit,
                mut buf,
                range,
                ..
            }
            | Event::ServiceData {
                circuit,
                mut buf,
                range,
                ..
            } = e
            {
                if let Some(p) = dp
                    .receive(self.now, circuit, &mut buf[range])
                    .expect("payload")
                {
                    got.push((circuit, p.to_vec()));
                }
            }
        }
        got
    }

    /// Sends a packet from node `i` through `dp` and delivers its datagrams.
    fn send_through(&mut self, i: usize, dp: &mut DataPath, to: Toward, packet: &[u8]) {
        let (_, node, rng) = &mut self.nodes[i];
        dp.send(
            self.now,
            rng,
            node,
            to,
            tun_buf(packet),
            &mut Counted::default(),
        )
        .expect("sent");
        while let Some(t) = dp.poll_transmit() {
            self.deliver(i, t);
        }
    }
}

/// Packets of every size a circuit carries cross it both ways intact: whole up to
/// `MAX_PAYLOAD`, in 2 to 4 fragments above.
#[test]
fn the_data_path_carries_packets_of_every_size_both_ways() {
    let (mut net, specs) = Mini::new(1);
    let id = net.circuit_to(&specs, Service::Exit);
    let (mut client, mut exit) = (DataPath::default(), DataPath::default());
    let sizes = [
        20,
        1000,
        MAX_PAYLOAD,
        MAX_PAYLOAD + 1,
        2486,
        2487,
        4000,
        framing::MAX_PACKET,
    ];
    for (seed, &len) in sizes.iter().enumerate() {
        let packet = ip_packet(len, seed as u8);
        net.send_through(0, &mut client, Toward::Forward(id), &packet);
        let got = net.packets_at(1, &mut exit);
        assert_eq!(got.len(), 1, "{len} bytes forward");
        let (at_exit, p) = &got[0];
        assert_eq!(p, &packet, "{len} bytes forward");
        let reply = ip_packet(len, !(seed as u8));
        net.send_through(1, &mut exit, Toward::Backward(*at_exit), &reply);
        assert_eq!(
            net.packets_at(0, &mut client),
            [(id, reply)],
            "{len} bytes back"
        );
    }
}

/// A fragmented packet takes one buffer per fragment and gives its own back; a
/// packet too large for a circuit, or one sent into no circuit, is dropped with its
/// buffer returned and nothing queued.
#[test]
fn the_data_path_accounts_for_every_buffer() {
    let (mut net, specs) = Mini::new(1);
    let id = net.circuit_to(&specs, Service::Exit);
    let mut dp = DataPath::default();
    let (_, node, rng) = &mut net.nodes[0];
    let mut bufs = Counted::default();
    let packet = tun_buf(&ip_packet(4000, 1));
    dp.send(net.now, rng, node, Toward::Forward(id), packet, &mut bufs)
        .expect("sent");
    assert_eq!((bufs.gets, bufs.puts), (4, 1));
    assert_eq!(std::iter::from_fn(|| dp.poll_transmit()).count(), 4);

    let mut bufs = Counted::default();
    let big = tun_buf(&ip_packet(framing::MAX_PACKET + 1, 1));
    let sent = dp.send(net.now, rng, node, Toward::Forward(id), big, &mut bufs);
    assert_eq!(sent, Err(Dropped::TooLarge(framing::MAX_PACKET + 1)));
    assert_eq!((bufs.gets, bufs.puts), (0, 1));
    let sent = dp.send(
        net.now,
        rng,
        node,
        Toward::Forward(id),
        vec![0; 3],
        &mut bufs,
    );
    assert_eq!(sent, Err(Dropped::Send(SendError::ShortBuffer)));
    let nowhere = Toward::Forward(CircuitId(id.0 + 1));
    let sent = dp.send(
        net.now,
        rng,
        node,
        nowhere,
        tun_buf(&ip_packet(3000, 1)),
        &mut bufs,
    );
    assert_eq!(sent, Err(Dropped::Send(SendError::NoCircuit)));
    assert!(dp.poll_transmit().is_none());
}

/// A circuit's partial packets are forgotten with it.
#[test]
fn the_data_path_forgets_a_circuits_fragments() {
    let packet = ip_packet(2000, 3);
    let mut first = vec![0; MAX_PAYLOAD];
    let n = Carrier::Data
        .write_fragment(&packet, 5, 0, &mut first)
        .expect("fragment 0");
    first.truncate(n);
    let mut last = vec![0; MAX_PAYLOAD];
    let n = Carrier::Data
        .write_fragment(&packet, 5, 1, &mut last)
        .expect("fragment 1");
    last.truncate(n);
    let (now, c) = (Instant::now(), CircuitId(9));
    let mut dp = DataPath::default();
    assert_eq!(dp.receive(now, c, &mut first.clone()), Ok(None));
    let whole = dp
        .receive(now, c, &mut last.clone())
        .expect("payload")
        .map(|p| p.to_vec());
    assert_eq!(whole, Some(packet));
    assert_eq!(dp.receive(now, c, &mut first), Ok(None));
    dp.forget(c);
    assert_eq!(dp.receive(now, c, &mut last), Ok(None));
}

/// Node `i`'s events as (circuit, command, payload).
fn cells_at(net: &mut Mini, i: usize) -> Vec<(CircuitId, Cmd, Vec<u8>)> {
    std::iter::from_fn(|| net.nodes[i].1.poll_event())
        .filter_map(|e| match e {
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
            } => Some((circuit, cmd, buf[range].to_vec())),
            _ => None,
        })
        .collect()
}

/// JOIN goes to the exit service and JOINED back; VDATA carries numbered packets,
/// whole and in fragments that leave room for the number, both ways.
#[test]
fn virtual_circuit_cells_cross_a_circuit_both_ways() {
    let (mut net, specs) = Mini::new(2);
    let id = net.circuit_to(&specs, Service::Exit);
    let join = vc::Join {
        vc: vc::VcId([5; vc::VC_ID_LEN]),
        max_legs: 2,
    }
    .emit();
    let mut buf = vec![0u8; PAYLOAD_OFFSET];
    buf.extend_from_slice(&join);
    let (_, node, rng) = &mut net.nodes[0];
    let t = node
        .send_cell(net.now, rng, id, Cmd::Join, buf, join.len())
        .expect("sent");
    net.deliver(0, t.expect("not paced"));
    let got = cells_at(&mut net, 2);
    assert_eq!(got.len(), 1);
    let (at_exit, cmd, payload) = &got[0];
    assert_eq!((*cmd, payload.as_slice()), (Cmd::Join, &join[..]));
    let mut back = vec![0u8; PAYLOAD_OFFSET];
    back.extend_from_slice(&vc::Joined { legs: 1 }.emit());
    let now = net.now;
    let t = net.nodes[2]
        .1
        .send_backward_cell(now, *at_exit, Cmd::Joined, back, vc::JOINED_LEN)
        .expect("sent");
    net.deliver(2, t.expect("not paced"));
    assert_eq!(cells_at(&mut net, 0), [(id, Cmd::Joined, vec![1])]);

    let (mut client, mut exit) = (DataPath::default(), DataPath::default());
    for (seq, len) in [
        (7u32, 100),
        (8, vc::MAX_VDATA),
        (9, vc::MAX_VDATA + 1),
        (10, 4000),
    ] {
        let packet = ip_packet(len, seq as u8);
        let (_, node, rng) = &mut net.nodes[0];
        let mut bufs = Counted::default();
        client
            .send_seq(
                now,
                rng,
                node,
                Toward::Forward(id),
                seq,
                tun_buf(&packet),
                &mut bufs,
            )
            .expect("sent");
        let mut got = Vec::new();
        while let Some(t) = client.poll_transmit() {
            net.deliver(0, t);
        }
        for (c, cmd, mut p) in cells_at(&mut net, 2) {
            assert_eq!((c, cmd), (*at_exit, Cmd::VData));
            assert!(p.len() <= MAX_PAYLOAD);
            if let Some((n, whole)) = exit.receive_seq(now, c, &mut p).expect("payload") {
                got.push((n, whole.to_vec()));
            }
        }
        assert_eq!(got, [(seq, packet.clone())], "{len} bytes forward");
        let (_, node, rng) = &mut net.nodes[2];
        exit.send_seq(
            now,
            rng,
            node,
            Toward::Backward(*at_exit),
            !seq,
            tun_buf(&packet),
            &mut bufs,
        )
        .expect("sent");
        while let Some(t) = exit.poll_transmit() {
            net.deliver(2, t);
        }
        let mut back = Vec::new();
        for (c, cmd, mut p) in cells_at(&mut net, 0) {
            assert_eq!((c, cmd), (id, Cmd::VData));
            if let Some((n, whole)) = client.receive_seq(now, c, &mut p).expect("payload") {
                back.push((n, whole.to_vec()));
            }
        }
        assert_eq!(back, [(!seq, packet)], "{len} bytes back");
    }
    // A VDATA payload too short for its number is an error, not a packet.
    assert_eq!(
        exit.receive_seq(now, *at_exit, &mut [0, 1, 2]),
        Err(PayloadError::NoSequence)
    );
}

/// JOIN and VDATA reach only an exit: an echo or directory service drops them, and
/// only DATA, JOIN and VDATA are sent with a payload.
#[test]
fn virtual_circuit_cells_need_the_exit_service() {
    let (mut net, specs) = Mini::new(1);
    for service in [Service::Echo, Service::Directory] {
        let id = net.circuit_to(&specs, service);
        let before = net.nodes[1].1.stats().dropped_protocol;
        for cmd in [Cmd::Join, Cmd::VData] {
            let (_, node, rng) = &mut net.nodes[0];
            let t = node
                .send_cell(net.now, rng, id, cmd, vec![0u8; PAYLOAD_OFFSET + 20], 20)
                .expect("sent");
            net.deliver(0, t.expect("not paced"));
        }
        assert!(cells_at(&mut net, 1).is_empty(), "{service:?}");
        assert!(
            cells_at(&mut net, 0).is_empty(),
            "{service:?}: nothing echoed"
        );
        assert_eq!(net.nodes[1].1.stats().dropped_protocol, before + 2);
    }
    let id = net.circuit_to(&specs, Service::Exit);
    let (_, node, rng) = &mut net.nodes[0];
    for cmd in [Cmd::Keepalive, Cmd::Joined, Cmd::Padding, Cmd::Rekey] {
        let sent = node.send_cell(net.now, rng, id, cmd, vec![0u8; PAYLOAD_OFFSET], 0);
        assert_eq!(sent.err(), Some(SendError::Command(cmd)));
    }
}

/// An exit that refuses a JOIN destroys the circuit: the client sees it go down,
/// the exit's side is told it closed.
#[test]
fn an_exit_destroys_a_circuit_whose_join_it_refused() {
    let (mut net, specs) = Mini::new(1);
    let id = net.circuit_to(&specs, Service::Exit);
    let (_, node, rng) = &mut net.nodes[0];
    let t = node
        .send_cell(
            net.now,
            rng,
            id,
            Cmd::Join,
            vec![0u8; PAYLOAD_OFFSET + 3],
            3,
        )
        .expect("sent");
    net.deliver(0, t.expect("not paced"));
    let (at_exit, _, _) = cells_at(&mut net, 1)[0].clone();
    net.nodes[1].1.destroy_service(at_exit);
    net.flush(1);
    let closed = std::iter::from_fn(|| net.nodes[1].1.poll_event())
        .any(|e| matches!(e, Event::ServiceClosed(c, Service::Exit) if c == at_exit));
    assert!(closed);
    let down = std::iter::from_fn(|| net.nodes[0].1.poll_event())
        .any(|e| matches!(e, Event::CircuitDown(c, _) if c == id));
    assert!(down, "the client's circuit went down");
    assert!(!net.nodes[0].1.is_up(id));
}
