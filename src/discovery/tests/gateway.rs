//! A gateway's discovery on a virtual clock: which addresses it publishes, when it
//! gossips and re-signs, and which events it takes.

use std::net::IpAddr;

use super::*;
use crate::node::{Event, HopSpec, Node, NodeConfig, Transmit};
use crate::proto::descriptor::PaddingBudget;
use crate::proto::wire::Service;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

fn gateway_node() -> Node {
    Node::new(NodeConfig {
        static_key: Some(*identity(1).secret()),
        directory: true,
        ..NodeConfig::default()
    })
}

fn discovery(lifetime: u64, bootstrap: Vec<HopSpec>, t0: Instant) -> GatewayDiscovery {
    discovery_of(None, lifetime, bootstrap, t0)
}

/// An exit's discovery when `exit_summary` is its policy summary.
fn discovery_of(
    exit_summary: Option<&str>,
    lifetime: u64,
    bootstrap: Vec<HopSpec>,
    t0: Instant,
) -> GatewayDiscovery {
    let settings = DirectorySettings {
        addrs: ips(&["198.18.0.1"]),
        ports: (9000, 9000),
        exit_summary: exit_summary.map(str::to_owned),
        share: true,
        rate: 10,
        lifetime,
        padding: PaddingBudget {
            rate: 40_000,
            share: 7,
        },
    };
    GatewayDiscovery::new(identity(1), settings, bootstrap, t0, NOW).unwrap()
}

/// Where the node's queued datagrams go (the handshakes of the circuits opened).
fn sent_to(node: &mut Node) -> Vec<SocketAddr> {
    std::iter::from_fn(|| node.poll_transmit())
        .map(|t: Transmit| t.dst)
        .collect()
}

#[test]
fn published_addresses_are_the_operators_then_the_listened_then_the_hosts() {
    let own = ips(&["127.0.0.1", "fe80::1", "198.18.5.5", "2001:db8::5"]);
    let named = ips(&["198.18.1.1", "127.0.0.1"]);
    assert_eq!(
        published_addrs(&named, &ips(&["198.18.2.2"]), &own),
        ips(&["198.18.1.1"]),
        "discovery.publish wins; loopback is never published"
    );
    assert_eq!(
        published_addrs(&[], &ips(&["0.0.0.0", "198.18.2.2", "::"]), &own),
        ips(&["198.18.2.2"]),
        "then the specific listen addresses"
    );
    assert_eq!(
        published_addrs(&[], &ips(&["0.0.0.0", "::"]), &own),
        ips(&["198.18.5.5", "2001:db8::5"]),
        "then the host's own, without loopback and link-local"
    );
    assert!(published_addrs(&[], &ips(&["127.0.0.1"]), &own).is_empty());
    // An exit's TUN device has the tunnel's fixed addresses: a client that took one
    // for the gateway's would send its handshakes into its own tunnel.
    let exit_host = ips(&["100.64.0.1", "198.18.4.2", "fd00:64::1", "2001:db8:4::2"]);
    assert_eq!(
        published_addrs(&[], &ips(&["0.0.0.0", "::"]), &exit_host),
        ips(&["198.18.4.2", "2001:db8:4::2"]),
        "never the tunnel's addresses"
    );
    let many: Vec<IpAddr> = (1..=20).map(|i| ip(&format!("198.18.9.{i}"))).collect();
    assert_eq!(
        published_addrs(&many, &[], &own).len(),
        crate::proto::descriptor::MAX_ADDRS
    );
}

/// The first round starts at once and asks the bootstrap gateway; it ends when its
/// query times out; the next starts exactly one gossip interval after the first and
/// asks the peer that published itself meanwhile. Nothing is sent between.
#[test]
fn gossip_runs_every_interval_on_the_clock_it_is_given() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let boot: SocketAddr = "198.18.0.2:9000".parse().unwrap();
    let mut rng = rng();
    let mut node = gateway_node();
    let mut g = discovery(
        86_400,
        vec![HopSpec {
            addr: boot,
            key: onion(2),
        }],
        t0,
    );
    assert_eq!(g.poll_timeout(t0, NOW), Some(t0));
    g.poll(t0, NOW, &mut rng, &mut node).unwrap();
    assert!(g.gossiping());
    assert_eq!(sent_to(&mut node), [boot]);
    assert_eq!(g.poll_timeout(t0, NOW), Some(t0 + QUERY_TIMEOUT));

    let before = t0 + QUERY_TIMEOUT - ms(1);
    g.poll(before, NOW, &mut rng, &mut node).unwrap();
    assert!(g.gossiping(), "the query is still open");
    g.poll(t0 + QUERY_TIMEOUT, NOW, &mut rng, &mut node)
        .unwrap();
    assert!(!g.gossiping(), "the round ends with its timed-out query");
    let next = t0 + GOSSIP_INTERVAL;
    assert_eq!(g.poll_timeout(t0 + QUERY_TIMEOUT, NOW), Some(next));

    // A peer publishes itself on a DIRECTORY circuit; other events are handed back.
    let mut out = Outbox::default();
    let publish = Message::Publish(&gw(3)).to_vec();
    let len = publish.len();
    let e = Event::ServiceData {
        circuit: crate::node::CircuitId(77),
        service: Service::Directory,
        cmd: crate::proto::wire::Cmd::Data,
        buf: publish,
        range: 0..len,
    };
    let later = t0 + ms(500);
    let pool = Vec::new;
    assert!(g
        .on_event(later, NOW, &mut rng, &mut node, e, pool, &mut out)
        .is_none());
    assert_eq!(g.directory().store.len(), 2);
    let json = serde_json::to_value(g.directory().store.stats()).unwrap();
    assert_eq!(
        json["added"], 2,
        "the store's counters as a status report shows them"
    );
    assert_eq!(out.spent.len(), 1, "the request's buffer is handed back");
    let other = Event::CircuitUp(crate::node::CircuitId(78));
    assert!(g
        .on_event(later, NOW, &mut rng, &mut node, other, pool, &mut out)
        .is_some());

    g.poll(next - ms(1), NOW, &mut rng, &mut node).unwrap();
    assert!(
        sent_to(&mut node).is_empty(),
        "no round before the interval"
    );
    g.poll(next, NOW, &mut rng, &mut node).unwrap();
    assert!(g.gossiping());
    let peer: SocketAddr = format!("{}:51820", addr(3)).parse().unwrap();
    assert_eq!(sent_to(&mut node), [peer]);
}

/// The descriptor is re-signed at half its lifetime, and the driver is woken for
/// it when no gossip is due earlier.
#[test]
fn the_descriptor_is_resigned_at_half_its_lifetime() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let mut rng = rng();
    let mut node = gateway_node();
    let mut g = discovery(3600, Vec::new(), t0);
    g.poll(t0, NOW, &mut rng, &mut node).unwrap();
    assert!(!g.gossiping(), "a round with nobody to ask ends at once");
    assert_eq!(g.directory().resign_at(), Some(NOW + 1800));
    assert_eq!(
        g.poll_timeout(t0, NOW + 1790),
        Some(t0 + s(10)),
        "re-signing 10 s away comes before the next round"
    );
    let first = g.directory().own().unwrap().to_vec();
    g.poll(t0 + s(1799), NOW + 1799, &mut rng, &mut node)
        .unwrap();
    assert_eq!(g.directory().own().unwrap(), &first[..]);
    g.poll(t0 + s(1800), NOW + 1800, &mut rng, &mut node)
        .unwrap();
    let again = Descriptor::verify(g.directory().own().unwrap(), NOW + 1800).unwrap();
    assert_eq!(again.published, NOW + 1800);
    assert_eq!(
        again.padding,
        PaddingBudget {
            rate: 40_000,
            share: 7
        },
        "it states its padding budget"
    );
    assert_eq!(g.directory().resign_at(), Some(NOW + 3600));
}

/// An exit whose policy is reloaded publishes the new summary at once, as a newer
/// descriptor (stores keep only a strictly newer one), even within the same second.
#[test]
fn a_reloaded_policy_is_published_at_once() {
    let t0 = Instant::now();
    let mut g = discovery_of(Some("accept 1-65535"), 3600, Vec::new(), t0);
    let own =
        |g: &GatewayDiscovery| Descriptor::verify(g.directory().own().unwrap(), NOW + 5).unwrap();
    assert_eq!(own(&g).published, NOW);
    g.set_exit_summary("reject 25".into(), NOW).unwrap();
    let d = own(&g);
    assert_eq!(
        (d.policy_summary.as_str(), d.published),
        ("reject 25", NOW + 1)
    );
    assert_eq!(g.directory().resign_at(), Some(NOW + 1 + 1800));
    let bytes = g.directory().own().unwrap().to_vec();
    g.set_exit_summary("reject 25".into(), NOW + 2).unwrap();
    assert_eq!(
        g.directory().own().unwrap(),
        &bytes[..],
        "the same summary: not re-signed"
    );

    // A relay has no policy to publish.
    let mut relay = discovery(3600, Vec::new(), t0);
    let bytes = relay.directory().own().unwrap().to_vec();
    relay.set_exit_summary("reject 25".into(), NOW + 3).unwrap();
    assert_eq!(relay.directory().own().unwrap(), &bytes[..]);
    assert!(own(&relay).policy_summary.is_empty());
}
