//! The sans-IO discovery pair end to end, in process: a client's `Crawl` and three
//! gateways' `Directory` services on real `Node`s, datagrams handed from node to
//! node in memory on a virtual clock. The client knows one bootstrap gateway, which
//! knows the other two; the crawl must learn all three descriptors, verified, over
//! real DIRECTORY circuits, and close every circuit it opened. After bootstrap the
//! crawl goes through one gateway (its via): no other gateway may ever receive a
//! datagram from the client's address.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anonnet::discovery::{Crawl, Directory, DirectorySettings, Outbox, Source, Store, StoreLimits};
use anonnet::node::{DownReason, Event, HopSpec, Node, NodeConfig, Output, Transmit};
use anonnet::proto::descriptor::Descriptor;
use anonnet::proto::descriptor::PaddingBudget;
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
    /// Every address a datagram came from, by the address it reached.
    heard: HashMap<SocketAddr, HashSet<SocketAddr>>,
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
            self.heard.entry(t.dst).or_default().insert(src);
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
                        cmd: _,
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
            padding: PaddingBudget {
                rate: 1_250_000,
                share: 50,
            },
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

/// The client (peer 0) and `gateways` gateways (peers 1..), the first of which
/// knows the others.
fn network(gateways: u8) -> (Net, Vec<HopSpec>) {
    let base = Instant::now();
    let client = Peer {
        addr: "198.18.100.2:40000".parse().expect("addr"),
        node: Node::new(NodeConfig::default()),
        rng: ChaCha20Rng::seed_from_u64(1),
        dir: None,
    };
    let mut peers = vec![client];
    let mut specs = Vec::new();
    for n in 1..=gateways {
        let (peer, spec) = gateway(n, u64::from(n) + 1);
        peers.push(peer);
        specs.push(spec);
    }
    let mut net = Net {
        peers,
        wire: VecDeque::new(),
        base,
        now: base,
        heard: HashMap::new(),
    };
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
    let peer = specs[0].key;
    let store0 = &mut net.peers[1].dir.as_mut().expect("gateway").store;
    for d in &others {
        store0
            .insert(d, UNIX_START, Source::Peer(peer))
            .expect("descriptor taken");
    }
    (net, specs)
}

/// Hands the client's events to `crawl` and puts what it sends on the wire.
fn events(net: &mut Net, crawl: &mut Crawl, store: &mut Store) {
    let (now, unix) = (net.now, net.unix());
    let mut out = Outbox::default();
    let c = &mut net.peers[0];
    while let Some(e) = c.node.poll_event() {
        let claimed = crawl.claims(&e);
        let unclaimed = crawl.on_event(now, unix, &mut c.rng, &mut c.node, store, e, &mut out);
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
}

/// Runs `crawl` to its end on a virtual clock; returns what the client learned.
fn run(net: &mut Net, crawl: &mut Crawl) -> Store {
    let mut store = Store::new(StoreLimits::default());
    let mut steps = 0;
    while !crawl.done(&store) {
        steps += 1;
        assert!(steps < 2_000, "the crawl did not finish");
        // The events of the last timeouts first, as a driver sees them.
        events(net, crawl, &mut store);
        let now = net.now;
        let c = &mut net.peers[0];
        crawl.advance(now, &mut c.rng, &mut c.node, &store);
        net.collect(0);
        net.deliver();
        net.serve();
        net.deliver();
        events(net, crawl, &mut store);
        net.now += Duration::from_millis(10);
        let now = net.now;
        for i in 0..net.peers.len() {
            let p = &mut net.peers[i];
            p.node.handle_timeout(now, &mut p.rng);
            net.collect(i);
        }
        net.deliver();
    }
    store
}

/// The gateways (by number, 1..) that heard from the client's address.
fn heard_the_client(net: &Net) -> Vec<usize> {
    let client = net.peers[0].addr;
    (1..net.peers.len())
        .filter(|&i| {
            net.heard
                .get(&net.peers[i].addr)
                .is_some_and(|from| from.contains(&client))
        })
        .collect()
}

/// Every gateway known, every query answered, every circuit closed.
fn learned_all(net: &Net, store: &Store, specs: &[HopSpec], crawl: &Crawl) {
    assert_eq!(store.len(), specs.len(), "the client knows every gateway");
    for s in specs {
        assert!(
            store.get(&s.key).is_some(),
            "gateway {:02x?} missing",
            s.key
        );
    }
    let st = crawl.stats();
    assert_eq!(st.answered as usize, specs.len(), "{st:?}");
    assert_eq!(st.accepted as usize, specs.len(), "{st:?}");
    // Every query circuit was closed: the gateways relay nothing any more.
    for p in &net.peers[1..] {
        assert_eq!(p.node.relayed_circuits(), 0);
    }
}

#[test]
fn a_crawl_learns_the_network_from_one_bootstrap_gateway() {
    let (mut net, specs) = network(3);
    let mut crawl = Crawl::new(10, vec![specs[0]]);
    let store = run(&mut net, &mut crawl);
    learned_all(&net, &store, &specs, &crawl);
    // The bootstrap gateway carried the crawl: only it saw the client's address.
    assert_eq!(crawl.via().map(|v| v.key), Some(specs[0].key));
    assert_eq!(heard_the_client(&net), [1]);
    for i in 2..=3 {
        let from = &net.heard[&net.peers[i].addr];
        assert_eq!(
            from,
            &HashSet::from([net.peers[1].addr]),
            "gateway {i} heard from others than the via"
        );
    }
}

#[test]
fn a_crawl_through_a_guard_shows_the_client_to_the_guard_alone() {
    // Gateway 4 is the client's guard; the bootstrap gateway 1 knows 2..4.
    let (mut net, specs) = network(4);
    let guard = specs[3];
    let mut crawl = Crawl::through(10, guard, vec![specs[0]]);
    let store = run(&mut net, &mut crawl);
    learned_all(&net, &store, &specs, &crawl);
    assert_eq!(crawl.via().map(|v| v.key), Some(guard.key));
    assert_eq!(heard_the_client(&net), [4], "the bootstrap gateway too");
}

#[test]
fn a_crawl_whose_guard_is_down_falls_back_to_its_bootstrap_gateway() {
    let (mut net, specs) = network(3);
    // Nobody answers at the guard's address.
    let guard = HopSpec {
        addr: "198.18.50.1:9000".parse().expect("addr"),
        key: [7; 32],
    };
    let mut crawl = Crawl::through(10, guard, vec![specs[0]]);
    let store = run(&mut net, &mut crawl);
    learned_all(&net, &store, &specs, &crawl);
    assert_eq!(crawl.via().map(|v| v.key), Some(specs[0].key));
    assert_eq!(heard_the_client(&net), [1]);
    assert_eq!(crawl.stats().unreachable + crawl.stats().timed_out, 1);
}

#[test]
fn a_claim_on_the_via_key_elsewhere_never_hears_the_client() {
    let (mut net, specs) = network(3);
    // A claim on the bootstrap gateway's onion key at another address, by another
    // identity.
    let elsewhere: SocketAddr = "198.18.9.1:9000".parse().expect("addr");
    let forger = Identity::generate(&mut ChaCha20Rng::seed_from_u64(99)).signing_key();
    let claim = Descriptor {
        identity: forger.verifying_key().to_bytes(),
        onion_key: specs[0].key,
        addrs: vec![elsewhere.ip()],
        ports: (elsewhere.port(), elsewhere.port()),
        exit: false,
        policy_summary: String::new(),
        published: UNIX_START,
        expires: UNIX_START + 3_600,
        padding: PaddingBudget {
            rate: 1_250_000,
            share: 50,
        },
    }
    .sign(&forger)
    .expect("signed");
    // Gateway 2 holds it and hands it out: the client contests the key, and asks
    // the bootstrap gateway again.
    net.peers[2]
        .dir
        .as_mut()
        .expect("gateway")
        .store
        .insert(&claim, UNIX_START, Source::Peer([5; 32]))
        .expect("claim taken");
    let mut crawl = Crawl::new(10, vec![specs[0]]);
    let store = run(&mut net, &mut crawl);
    assert!(crawl.stats().queries > 3, "the contest was not asked");
    assert_eq!(crawl.via().map(|v| v.key), Some(specs[0].key));
    assert!(
        !net.heard
            .get(&elsewhere)
            .is_some_and(|from| from.contains(&net.peers[0].addr)),
        "the claimed address heard the client"
    );
    assert_eq!(heard_the_client(&net), [1]);
    // The gateway itself settled the claim.
    let held = store.get(&specs[0].key).expect("held");
    assert_eq!(held.descriptor().addrs, [specs[0].addr.ip()]);
}
