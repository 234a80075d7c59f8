//! The sans-IO discovery pair end to end, in process: a client's `Crawl` and three
//! gateways' `Directory` services on real `Node`s, datagrams handed from node to
//! node in memory on a virtual clock. The client knows one bootstrap gateway, which
//! knows the other two; the crawl must learn all three descriptors, verified, over
//! real DIRECTORY circuits, and close every circuit it opened.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anonnet::discovery::{Crawl, Directory, DirectorySettings, Outbox, Source, Store, StoreLimits};
use anonnet::node::{DownReason, Event, HopSpec, Node, NodeConfig, Output, Transmit};
use anonnet::proto::identity::Identity;
use anonnet::proto::wire::Service;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Unix seconds of the virtual clock's start.
const UNIX_START: u64 = 1_800_000_000;

struct Peer {
    addr: SocketAddr,
    node: Node,
    rng: ChaCha20Rng,
    dir: Option<Directory>,
}

struct Net {
    peers: Vec<Peer>,
    wire: VecDeque<(SocketAddr, Transmit)>,
    base: Instant,
    now: Instant,
}

impl Net {
    fn unix(&self) -> u64 {
        UNIX_START + (self.now - self.base).as_secs()
    }

    fn collect(&mut self, from: usize) {
        let addr = self.peers[from].addr;
        while let Some(t) = self.peers[from].node.poll_transmit() {
            self.wire.push_back((addr, t));
        }
    }

    /// Delivers every datagram in flight, and what those deliveries send.
    fn deliver(&mut self) {
        while let Some((src, t)) = self.wire.pop_front() {
            let Some(to) = self.peers.iter().position(|p| p.addr == t.dst) else {
                continue;
            };
            let now = self.now;
            let p = &mut self.peers[to];
            if let Output::Transmit(out) = p.node.handle_datagram(now, &mut p.rng, None, src, t.buf)
            {
                self.wire.push_back((p.addr, out));
            }
            self.collect(to);
        }
    }

    /// The gateways' directory services answer their DIRECTORY requests.
    fn serve(&mut self) {
        let (now, unix) = (self.now, self.unix());
        for i in 1..self.peers.len() {
            let mut out = Outbox::default();
            let p = &mut self.peers[i];
            let dir = p.dir.as_mut().expect("gateway");
            while let Some(e) = p.node.poll_event() {
                match e {
                    Event::ServiceData {
                        circuit,
                        service: Service::Directory,
                        buf,
                        range,
                    } => dir.on_request(
                        now,
                        unix,
                        &mut p.rng,
                        &mut p.node,
                        circuit,
                        &buf[range],
                        Vec::new,
                        &mut out,
                    ),
                    Event::ServiceClosed(circuit, Service::Directory) => dir.closed(circuit),
                    _ => {}
                }
            }
            let addr = p.addr;
            self.wire
                .extend(out.transmits.into_iter().map(|t| (addr, t)));
            self.collect(i);
        }
    }
}

fn gateway(n: u8, seed: u64) -> (Peer, HopSpec) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let id = Identity::generate(&mut rng);
    let addr: SocketAddr = format!("198.18.{n}.1:9000").parse().expect("addr");
    let node = Node::new(NodeConfig {
        static_key: Some(*id.secret()),
        directory: true,
        ..NodeConfig::default()
    });
    let spec = HopSpec {
        addr,
        key: id.public().0,
    };
    let dir = Directory::new(
        id,
        DirectorySettings {
            addrs: vec![addr.ip()],
            ports: (addr.port(), addr.port()),
            exit_summary: None,
            share: true,
            rate: 100,
            lifetime: 3_600,
        },
        UNIX_START,
    )
    .expect("directory");
    let peer = Peer {
        addr,
        node,
        rng,
        dir: Some(dir),
    };
    (peer, spec)
}

#[test]
fn a_crawl_learns_the_network_from_one_bootstrap_gateway() {
    let base = Instant::now();
    let client = Peer {
        addr: "198.18.100.2:40000".parse().expect("addr"),
        node: Node::new(NodeConfig::default()),
        rng: ChaCha20Rng::seed_from_u64(1),
        dir: None,
    };
    let (g0, bootstrap) = gateway(1, 2);
    let (g1, s1) = gateway(2, 3);
    let (g2, s2) = gateway(3, 4);
    let keys = [bootstrap.key, s1.key, s2.key];
    let mut net = Net {
        peers: vec![client, g0, g1, g2],
        wire: VecDeque::new(),
        base,
        now: base,
    };
    // The bootstrap gateway knows the other two.
    let others: Vec<Vec<u8>> = net.peers[2..]
        .iter()
        .map(|p| {
            p.dir
                .as_ref()
                .and_then(Directory::own)
                .expect("own")
                .to_vec()
        })
        .collect();
    let peer = bootstrap.key;
    let store0 = &mut net.peers[1].dir.as_mut().expect("gateway").store;
    for d in &others {
        store0
            .insert(d, UNIX_START, Source::Peer(peer))
            .expect("descriptor taken");
    }

    let mut store = Store::new(StoreLimits::default());
    let mut crawl = Crawl::new(10, vec![bootstrap]);
    let mut steps = 0;
    while !crawl.done(&store) {
        steps += 1;
        assert!(steps < 500, "the crawl did not finish");
        let (now, unix) = (net.now, net.unix());
        let c = &mut net.peers[0];
        crawl.advance(now, &mut c.rng, &mut c.node, &store);
        net.collect(0);
        net.deliver();
        net.serve();
        net.deliver();
        let mut out = Outbox::default();
        let c = &mut net.peers[0];
        while let Some(e) = c.node.poll_event() {
            let claimed = crawl.claims(&e);
            let unclaimed =
                crawl.on_event(now, unix, &mut c.rng, &mut c.node, &mut store, e, &mut out);
            // `claims` tells a driver beforehand what `on_event` takes.
            assert_eq!(claimed, unclaimed.is_none(), "{unclaimed:?}");
            // What the crawl closed itself comes back as `Closed`, for the driver.
            assert!(
                matches!(
                    unclaimed,
                    None | Some(Event::CircuitDown(_, DownReason::Closed))
                ),
                "an event of no crawl circuit: {unclaimed:?}"
            );
        }
        let addr = c.addr;
        net.wire
            .extend(out.transmits.into_iter().map(|t| (addr, t)));
        net.collect(0);
        net.deliver();
        net.serve();
        net.deliver();
        net.now += Duration::from_millis(10);
        let now = net.now;
        for i in 0..net.peers.len() {
            let p = &mut net.peers[i];
            p.node.handle_timeout(now, &mut p.rng);
            net.collect(i);
        }
        net.deliver();
    }
    assert_eq!(store.len(), 3, "the client knows every gateway");
    for k in &keys {
        assert!(store.get(k).is_some(), "gateway {k:02x?} missing");
    }
    let st = crawl.stats();
    assert_eq!(st.answered, 3, "{st:?}");
    assert_eq!(st.accepted, 3, "{st:?}");
    // Every query circuit was closed: the gateways relay nothing any more.
    for p in &net.peers[1..] {
        assert_eq!(p.node.relayed_circuits(), 0);
    }
}
