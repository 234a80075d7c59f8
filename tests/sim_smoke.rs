use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anonnet::identity::Identity;
use anonnet::node::{Event, HopSpec, Node, NodeConfig, Output};
use anonnet::wire::Service;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

#[test]
fn three_hop_echo() {
    let mut rng = ChaCha20Rng::from_seed([1; 32]);
    let now0 = Instant::now();
    let mut nodes = Vec::new();
    let mut specs = Vec::new();
    for i in 0..3 {
        let id = Identity::generate(&mut rng);
        let addr: SocketAddr = format!("127.0.0.1:{}", 9001 + i).parse().unwrap();
        specs.push(HopSpec {
            addr,
            key: id.public().0,
        });
        nodes.push((
            addr,
            Node::new(NodeConfig {
                static_key: Some(*id.secret()),
                echo: true,
                ..NodeConfig::default()
            }),
        ));
    }
    let caddr: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    nodes.push((caddr, Node::new(NodeConfig::default())));
    let c = 3;
    let now = now0;
    let id = nodes[c]
        .1
        .build_circuit(now, &mut rng, &specs, Service::Echo)
        .unwrap();
    let mut q: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)> = VecDeque::new();
    let mut got = Vec::new();
    let mut up = false;
    for round in 0..200 {
        for i in 0..nodes.len() {
            let src = nodes[i].0;
            while let Some(t) = nodes[i].1.poll_transmit() {
                q.push_back((src, t.dst, t.buf));
            }
            while let Some(e) = nodes[i].1.poll_event() {
                match e {
                    Event::CircuitUp(_) => up = true,
                    Event::Data { buf, range, .. } => got.push(buf[range].to_vec()),
                    Event::CircuitDown(_, r) => panic!("down {r:?}"),
                }
            }
        }
        if up && round % 10 == 0 && got.len() < 5 {
            let payload = vec![round as u8; 100 + round * 3];
            let t = nodes[c]
                .1
                .send_payload(now, &mut rng, id, &payload)
                .unwrap();
            q.push_back((caddr, t.dst, t.buf));
        }
        while let Some((src, dst, buf)) = q.pop_front() {
            let n = nodes.iter().position(|(a, _)| *a == dst).unwrap();
            if let Output::Transmit(t) =
                nodes[n]
                    .1
                    .handle_datagram(now, &mut rng, Some(dst), src, buf)
            {
                q.push_back((dst, t.dst, t.buf));
            }
        }
        let _ = Duration::ZERO;
    }
    assert!(
        up,
        "circuit up; stats {:?}",
        nodes
            .iter()
            .map(|n| n.1.stats().clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        got.len(),
        5,
        "stats {:?}",
        nodes
            .iter()
            .map(|n| n.1.stats().clone())
            .collect::<Vec<_>>()
    );
}
