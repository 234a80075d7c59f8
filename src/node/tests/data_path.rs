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
    let n = framing::write_fragment(&packet, 5, 0, &mut first).expect("fragment 0");
    first.truncate(n);
    let mut last = vec![0; MAX_PAYLOAD];
    let n = framing::write_fragment(&packet, 5, 1, &mut last).expect("fragment 1");
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
