// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::node::{MachineSpec, FRONT_DEFAULT};

const GATEWAY_EXAMPLE: &str = include_str!("../../examples/gateway.toml");
const CLIENT_EXAMPLE: &str = include_str!("../../examples/client.toml");

const K1: &str = "REPLACE+with+anonnet+pubkey+output+hop1AAAA=";
const K2: &str = "REPLACE+with+anonnet+pubkey+output+hop2AAAA=";
const K3: &str = "REPLACE+with+anonnet+pubkey+output+hop3AAAA=";

fn gateway_err(text: &str) -> String {
    parse_gateway(text).unwrap_err().to_string()
}

fn client_err(text: &str) -> String {
    parse_client(text).unwrap_err().to_string()
}

fn gw(extra: &str) -> String {
    format!("[gateway]\nidentity = \"/x/identity.key\"\n{extra}\n")
}

fn hops(n: usize) -> String {
    (0..n)
        .map(|i| {
            let key = crate::proto::identity::PublicKey([i as u8 + 1; 32]);
            format!(
                "[[client.path]]\naddr = \"127.0.0.1:{}\"\nkey = \"{key}\"\n",
                9001 + i
            )
        })
        .collect()
}

fn cl(extra: &str, hop_count: usize) -> String {
    format!("[client]\n{extra}\n{}", hops(hop_count))
}

#[test]
fn gateway_example_parses() {
    let c = parse_gateway(GATEWAY_EXAMPLE).unwrap();
    assert_eq!(c.identity, PathBuf::from("/var/lib/anonnet/identity.key"));
    // As it is, the example runs on a VPS (README "Run it for real"): every address,
    // port 9000, the defaults.
    let defaults = parse_gateway(&gw("")).unwrap();
    assert_eq!(c.listen, defaults.listen);
    assert_eq!(c.listen_ports, PortRange::single(9000));
    assert_eq!(c.exit, defaults.exit);
    assert!(!c.echo);
    assert_eq!(c.idle_timeout(), Duration::from_secs(30));
}

#[test]
fn client_example_parses() {
    let c = parse_client(CLIENT_EXAMPLE).unwrap();
    // Discovery from the one bootstrap line a user fills in; the rest are defaults.
    assert!(c.path.is_empty());
    assert_eq!(c.discovery.bootstrap.len(), 1);
    assert_eq!(
        c.discovery.bootstrap[0].addr,
        "203.0.113.10:9000".parse().unwrap()
    );
    assert_eq!(c.discovery.bootstrap[0].key, K1.parse().unwrap());
    let only_bootstrap = format!("[discovery]\nbootstrap = [\"203.0.113.10:9000 {K1}\"]\n");
    let defaults = parse_client(&only_bootstrap).unwrap();
    assert_eq!(c.discovery, defaults.discovery);
    assert_eq!((c.legs, c.circuits), (defaults.legs, defaults.circuits));
    assert_eq!(c.tunnel, defaults.tunnel);
    assert!(
        client_err("").contains("discovery.bootstrap"),
        "{}",
        client_err("")
    );
    assert_eq!(c.keepalive(), Duration::from_secs(2));
    assert_eq!(c.circuit_timeout(), Duration::from_secs(10));
    assert_eq!(c.build_timeout(), Duration::from_secs(5));
    assert_eq!(c.padding, [128, 256, 512, 1024]);
    assert_eq!(c.padding_classes(), [128, 256, 512, 1024, 1251]);
    assert_eq!(
        c.padding_mode,
        PaddingMode::Adaptive {
            machines: DEFAULT_PADDING_MACHINES.to_vec()
        }
    );
}

#[test]
fn gateway_defaults() {
    let c = parse_gateway(&gw("")).unwrap();
    assert_eq!(
        c,
        GatewayConfig {
            identity: "/x/identity.key".into(),
            listen: vec!["0.0.0.0".parse().unwrap(), "::".parse().unwrap()],
            listen_ports: PortRange::single(9000),
            echo: false,
            idle_timeout_secs: 30,
            handshake_rate: 1000,
            max_circuits: 100_000,
            max_constant_rate: 1000,
            constant_budget: 20_000,
            padding_rate: 1_250_000,
            padding_share: 50,
            exit: ExitConfig::default(),
            discovery: DiscoveryConfig::default(),
            log: None,
        }
    );
    assert_eq!(c.listen_addrs().count(), 2);
}

#[test]
fn exit_section() {
    let c = parse_gateway(&gw(
        "[exit]\ntun = \"ex0\"\npool4 = \"100.100.0.0/16\"\ndns_upstream = [\"198.18.0.1\"]\npolicy = [\"reject *:8080\"]\nmax_flows = 10",
    ))
    .unwrap();
    assert_eq!(c.exit.tun, "ex0");
    assert_eq!(c.exit.pool4.to_string(), "100.100.0.0/16");
    assert_eq!(c.exit.pool6, ExitConfig::default().pool6);
    assert_eq!(
        c.exit.dns_upstream,
        ["198.18.0.1".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(c.exit.max_flows, 10);
    assert_eq!(c.exit.mtu, 1280);
    let err = |extra: &str| gateway_err(&gw(&format!("[exit]\n{extra}")));
    assert_eq!(
        err("pool4 = \"2001:db8::/64\""),
        "exit.pool4: 2001:db8::/64 is not an IPv4 prefix"
    );
    assert_eq!(
        err("pool4 = \"100.64.0.0/24\""),
        "exit.pool4: must not contain the tunnel's fixed address 100.64.0.1"
    );
    assert_eq!(
        err("tun = \"a very long name\""),
        "exit.tun: \"a very long name\" is not a usable interface name: use 1 to 15 letters, digits, '-', '_' or '.'"
    );
    assert_eq!(
        err("mtu = 1000"),
        "exit.mtu: must be between 1280 and 4972, got 1000"
    );
    assert_eq!(
        err("dns_upstream = [\"1.2.3.4:53\"]"),
        "exit.dns_upstream[0]: invalid IP address \"1.2.3.4:53\" (no port: DNS uses 53)"
    );
    assert!(err("bogus = 1").contains("unknown field `bogus`"));
    assert!(err("policy = [\"accept *:80\", \"allow *:22\"]").starts_with("exit.policy[1]: "));
}

#[test]
fn discovery_section() {
    let key = crate::proto::identity::PublicKey([7; 32]);
    let c = parse_client(&format!(
        "[client]\n[discovery]\nbootstrap = [\"198.18.2.2:9000 {key}\"]\nhops = \"2-4\"\nsubnet_v4 = 24\n"
    ))
    .unwrap();
    assert!(c.path.is_empty());
    assert_eq!(c.discovery.bootstrap[0].addr.to_string(), "198.18.2.2:9000");
    assert_eq!(c.discovery.bootstrap[0].key, key);
    assert_eq!((c.discovery.hops, c.discovery.subnet_v4), ((2, 4), 24));
    assert_eq!(c.circuits, 3);
    assert_eq!(c.legs, 2, "two routes per circuit with discovery");
    assert_eq!(c.isolation, crate::client::flows::Isolation::PerDestination);
    let with = |legs: &str| {
        parse_client(&format!(
            "[client]
legs = {legs}
[discovery]
bootstrap = [\"198.18.2.2:9000 {key}\"]\n"
        ))
    };
    assert_eq!(with("4").unwrap().legs, 4);
    assert_eq!(with("1").unwrap().legs, 1);
    assert_eq!(
        with("5").unwrap_err().to_string(),
        "client.legs: must be between 1 and 4, got 5"
    );
    assert_eq!(
        parse_client(&cl("", 3)).unwrap().legs,
        1,
        "a fixed path is one route"
    );
    assert_eq!(parse_client(&cl("legs = 1", 3)).unwrap().legs, 1);
    assert_eq!(
        client_err(&cl("legs = 2", 3)),
        "client.legs: 2 legs need discovery: a fixed client.path is one route (remove client.path, or set legs = 1)"
    );
    assert_eq!(
        client_err(&cl("isolation = \"per-site\"", 1)),
        "client.isolation: \"per-site\" is not an isolation policy (per-destination, per-connection or single)"
    );
    assert_eq!(
        client_err(&cl("circuits = 0", 1)),
        "client.circuits: must be between 1 and 16, got 0"
    );
    let err = |extra: &str| client_err(&format!("{}[discovery]\n{extra}\n", cl("", 1)));
    assert_eq!(
        err("bootstrap = [\"198.18.2.2:9000\"]"),
        "discovery.bootstrap[0]: \"198.18.2.2:9000\" is not \"ADDR:PORT PUBLIC-KEY\""
    );
    assert_eq!(
        err("hops = 9"),
        "discovery.hops: must be within 1 to 8, got 9-9"
    );
    assert_eq!(
        err("subnet_v4 = 33"),
        "discovery.subnet_v4: must be between 0 and 32, got 33"
    );
    let g = parse_gateway(&gw(
        "[discovery]\nshare = false\npublish = [\"198.18.2.2\"]",
    ))
    .unwrap();
    assert!(!g.discovery.share);
    assert_eq!(
        g.discovery.publish,
        ["198.18.2.2".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn tunnel_section() {
    let c = parse_client(&cl("", 3)).unwrap();
    assert_eq!(c.tunnel, TunnelConfig::default());
    assert_eq!(c.tunnel.name, "anon0");
    let c = parse_client(&format!(
        "{}[tunnel]\nname = \"t0\"\nmtu = 1400\ndns = false\nstate_dir = \"/tmp/x\"\n",
        cl("", 1)
    ))
    .unwrap();
    assert_eq!(
        (c.tunnel.name.as_str(), c.tunnel.mtu, c.tunnel.dns),
        ("t0", 1400, false)
    );
    let err = |extra: &str| client_err(&format!("{}[tunnel]\n{extra}\n", cl("", 1)));
    assert_eq!(
        err("table = 254"),
        "tunnel.table: 254 is reserved (0, 253, 254 and 255 are the kernel's tables)"
    );
    assert_eq!(
        err("state_dir = \"run\""),
        "tunnel.state_dir: \"run\" must be an absolute path"
    );
    assert_eq!(
        err("mtu = 9000"),
        "tunnel.mtu: must be between 1280 and 4972, got 9000"
    );
}

#[test]
fn gateway_ports_forms() {
    let ports = |v: &str| {
        parse_gateway(&gw(&format!("listen_ports = {v}")))
            .unwrap()
            .listen_ports
    };
    assert_eq!(ports("9000"), PortRange::single(9000));
    assert_eq!(ports("\"9000\""), PortRange::single(9000));
    assert_eq!(
        ports("\"9000-9003\""),
        PortRange {
            first: 9000,
            last: 9003
        }
    );
    assert_eq!(
        ports("\" 9000 - 9003 \""),
        PortRange {
            first: 9000,
            last: 9003
        }
    );
    assert_eq!(ports("\"1-1024\"").len(), 1024);
    let c = parse_gateway(&gw(
        "listen = [\"127.0.0.1\", \"::1\"]\nlisten_ports = \"9000-9003\"",
    ))
    .unwrap();
    assert_eq!(c.listen_addrs().count(), 8);
}

#[test]
fn gateway_port_errors() {
    let e = |v: &str| gateway_err(&gw(&format!("listen_ports = {v}")));
    assert_eq!(
        e("\"9000-8000\""),
        "gateway.listen_ports: range 9000-8000 is empty"
    );
    assert_eq!(e("0"), "gateway.listen_ports: port 0 is not allowed");
    assert_eq!(e("\"0-10\""), "gateway.listen_ports: port 0 is not allowed");
    assert_eq!(
        e("70000"),
        "gateway.listen_ports: port 70000 is out of range 1-65535"
    );
    assert_eq!(
        e("-1"),
        "gateway.listen_ports: port -1 is out of range 1-65535"
    );
    assert_eq!(
        e("\"9000-70000\""),
        "gateway.listen_ports: port 70000 is out of range 1-65535"
    );
    assert_eq!(
        e("\"1000-3000\""),
        "gateway.listen_ports: range 1000-3000 has 2001 ports, at most 1024 are allowed"
    );
    assert_eq!(
        e("\"abc\""),
        "gateway.listen_ports: invalid port range \"abc\": expected a port like 9000 or a range like \"9000-9003\""
    );
    assert!(e("\"+5\"").starts_with("gateway.listen_ports: invalid port range"));
    assert!(e("\"9000-\"").starts_with("gateway.listen_ports: invalid port range"));
    // Wrong type: toml's message with the expectation.
    assert!(e("true").contains("a port like 9000 or a range like"));
}

#[test]
fn gateway_value_errors() {
    assert_eq!(
        gateway_err(&gw("listen = []")),
        "gateway.listen: need at least one address"
    );
    assert_eq!(
        gateway_err(&gw("listen = [\"127.0.0.1\", \"localhost\"]")),
        "gateway.listen[1]: invalid IP address \"localhost\""
    );
    assert_eq!(
        gateway_err(&gw("listen = [\"127.0.0.1:9000\"]")),
        "gateway.listen[0]: \"127.0.0.1:9000\" includes a port; put ports in gateway.listen_ports"
    );
    assert_eq!(
        gateway_err(&gw("listen = [\"::1\", \"::1\"]")),
        "gateway.listen[1]: ::1 is listed twice"
    );
    assert_eq!(
        gateway_err(&gw("idle_timeout_secs = 0")),
        "gateway.idle_timeout_secs: must be between 1 and 3600, got 0"
    );
    assert_eq!(
        gateway_err(&gw("idle_timeout_secs = 3601")),
        "gateway.idle_timeout_secs: must be between 1 and 3600, got 3601"
    );
    assert_eq!(
        gateway_err(&gw("handshake_rate = 0")),
        "gateway.handshake_rate: must be between 1 and 4294967295, got 0"
    );
    assert_eq!(
        gateway_err(&gw("max_circuits = -3")),
        "gateway.max_circuits: must be between 1 and 4294967295, got -3"
    );
    assert_eq!(
        gateway_err("[gateway]\nidentity = \"\""),
        "gateway.identity: must not be empty"
    );
}

#[test]
fn gateway_parse_errors() {
    let e = gateway_err(&gw("lisen = [\"::1\"]"));
    assert!(e.contains("unknown field `lisen`"), "{e}");
    assert!(e.contains("line 3"), "{e}");
    let e = gateway_err("[gateway]\n");
    assert!(e.contains("missing field `identity`"), "{e}");
    let e = gateway_err(&gw("echo = \"yes\""));
    assert!(
        e.contains("echo = \"yes\"") && e.contains("expected a boolean"),
        "{e}"
    );
    let e = gateway_err("[gatway]\nidentity = \"x\"");
    assert!(e.contains("unknown field `gatway`"), "{e}");
    let e = gateway_err("");
    assert!(e.contains("missing field `gateway`"), "{e}");
    assert!(matches!(
        parse_gateway("[[[").unwrap_err(),
        ConfigError::Parse { .. }
    ));
}

#[test]
fn client_defaults_and_bounds() {
    let c = parse_client(&cl("", 1)).unwrap();
    assert_eq!(c.keepalive_secs, 2.0);
    assert_eq!(c.padding_classes(), [128, 256, 512, 1024, 1251]);
    let c = parse_client(&cl(
        "keepalive_secs = 0.5\ncircuit_timeout_secs = 1.5\npadding = []",
        8,
    ))
    .unwrap();
    assert_eq!(c.keepalive(), Duration::from_millis(500));
    assert_eq!(c.circuit_timeout(), Duration::from_millis(1500));
    assert_eq!(c.path.len(), 8);
    assert_eq!(c.padding_classes(), [1251]);
    let c = parse_client(&cl("padding = [32, 1251]", 1)).unwrap();
    assert_eq!(c.padding_classes(), [32, 1251]);
    let c = parse_client(&format!(
        "[client]\n[[client.path]]\naddr = \"[::1]:9001\"\nkey = \"{K1}\"\n"
    ))
    .unwrap();
    assert!(c.path[0].addr.is_ipv6());
}

fn path_of(keys: &[&str]) -> String {
    let mut text = String::from("[client]\n");
    for (i, key) in keys.iter().enumerate() {
        text += &format!(
            "[[client.path]]\naddr = \"127.0.0.1:{}\"\nkey = \"{key}\"\n",
            9001 + i
        );
    }
    text
}

#[test]
fn client_path_errors() {
    assert_eq!(
        client_err("[client]\n"),
        "client.path: need 1 to 8 hops, got 0 (or list gateways in discovery.bootstrap to discover paths)"
    );
    assert_eq!(
        client_err(&cl("", 9)),
        "client.path: need 1 to 8 hops, got 9"
    );
    assert_eq!(
        client_err(&path_of(&[K1, K2, "not a key"])),
        "client.path[2].key: invalid base64 public key"
    );
    assert_eq!(
        client_err(&path_of(&[K1, K2, "AAAA"])),
        "client.path[2].key: wrong public key length: 3 bytes != 32"
    );
    assert_eq!(
        client_err(&path_of(&[K1, K2, K3, K2])),
        "client.path[3].key: gateway appears twice in the path"
    );
    assert_eq!(
        client_err(&path_of(&[K1, K1])),
        "client.path[1].key: gateway appears twice in the path"
    );
    let good = path_of(&[K1, K2, K3]);
    assert_eq!(
        client_err(&good.replace("127.0.0.1:9002", "localhost:9002")),
        "client.path[1].addr: invalid socket address \"localhost:9002\" \
         (expected e.g. \"192.0.2.1:9001\" or \"[2001:db8::1]:9001\")"
    );
    assert_eq!(
        client_err(&good.replace("127.0.0.1:9002", "[::1]:0")),
        "client.path[1].addr: port 0 is not allowed"
    );
    let e = client_err(&good.replace("key = ", "kee = "));
    assert!(e.contains("unknown field `kee`"), "{e}");
    let e = client_err(&good.replace(&format!("key = \"{K3}\""), ""));
    assert!(e.contains("missing field `key`"), "{e}");
}

#[test]
fn client_value_errors() {
    assert_eq!(
        client_err(&cl("padding = [128, 2000]", 1)),
        "client.padding[1]: 2000 is outside 32..=1251"
    );
    assert_eq!(
        client_err(&cl("padding = [16]", 1)),
        "client.padding[0]: 16 is outside 32..=1251"
    );
    assert_eq!(
        client_err(&cl("padding = [128, -1]", 1)),
        "client.padding[1]: -1 is outside 32..=1251"
    );
    assert_eq!(
        client_err(&cl("padding = [256, 128]", 1)),
        "client.padding[1]: 128 is not greater than the previous class 256 (classes must be strictly ascending)"
    );
    assert_eq!(
        client_err(&cl("padding = [256, 256]", 1)),
        "client.padding[1]: 256 is not greater than the previous class 256 (classes must be strictly ascending)"
    );
    assert_eq!(
        client_err(&cl("keepalive_secs = 0", 1)),
        "client.keepalive_secs: must be greater than 0 and at most 60, got 0"
    );
    assert_eq!(
        client_err(&cl("keepalive_secs = nan", 1)),
        "client.keepalive_secs: must be greater than 0 and at most 60, got NaN"
    );
    assert_eq!(
        client_err(&cl("keepalive_secs = 61", 1)),
        "client.keepalive_secs: must be greater than 0 and at most 60, got 61"
    );
    assert_eq!(
        client_err(&cl("circuit_timeout_secs = 2", 1)),
        "client.circuit_timeout_secs: must be greater than keepalive_secs (2), got 2"
    );
    assert_eq!(
        client_err(&cl("build_timeout_secs = inf", 1)),
        "client.build_timeout_secs: must be greater than 0 and at most 3600, got inf"
    );
    assert_eq!(
        client_err(&cl("build_timeout_secs = -1.5", 1)),
        "client.build_timeout_secs: must be greater than 0 and at most 3600, got -1.5"
    );
    let e = client_err(&cl("keepalive = 2", 1));
    assert!(e.contains("unknown field `keepalive`"), "{e}");
    let e = client_err(&cl("keepalive_secs = \"2\"", 1));
    assert!(e.contains("keepalive_secs"), "{e}");
}

#[test]
fn port_range_display_and_parse() {
    assert_eq!(PortRange::single(9000).to_string(), "9000");
    assert_eq!(
        PortRange {
            first: 9000,
            last: 9003
        }
        .to_string(),
        "9000-9003"
    );
    let r: PortRange = "9000-9003".parse().unwrap();
    assert_eq!(r.iter().collect::<Vec<_>>(), [9000, 9001, 9002, 9003]);
    assert!(r.contains(9002) && !r.contains(9004));
    assert_eq!(r.len(), 4);
    assert!(!r.is_empty());
    assert_eq!(
        "65535".parse::<PortRange>().unwrap(),
        PortRange::single(65535)
    );
}

#[test]
fn load_prefixes_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        gw("listen_ports = \"9-1\"").replace("/x/identity.key", "id.key"),
    )
    .unwrap();
    let err = load_gateway(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: gateway.listen_ports: range 9-1 is empty",
            path.display()
        )
    );
    assert!(matches!(err.inner(), ConfigError::Invalid { .. }));

    std::fs::write(&path, gw("").replace("/x/identity.key", "id.key")).unwrap();
    assert_eq!(
        load_gateway(&path).unwrap().identity,
        dir.path().join("id.key")
    );

    let missing = dir.path().join("nope.toml");
    let err = load_client(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert_eq!(
        err.to_string(),
        format!("cannot read config file {}", missing.display())
    );

    let cpath = dir.path().join("client.toml");
    std::fs::write(&cpath, "[client]\n").unwrap();
    assert_eq!(
        load_client(&cpath).unwrap_err().to_string(),
        format!("{}: client.path: need 1 to 8 hops, got 0 (or list gateways in discovery.bootstrap to discover paths)", cpath.display())
    );
}

#[test]
fn mixed_mode_needs_and_takes_a_gateway_section() {
    let base = format!("[client]\n{}", hops(3));
    let with = |mode: &str, gateway: &str| format!("[client]\n{mode}\n{}{gateway}", hops(3));
    assert!(parse_client(&base).unwrap().relay.is_none());
    assert!(parse_client(&with("mode = \"client\"", ""))
        .unwrap()
        .relay
        .is_none());
    let c = parse_client(&with(
        "mode = \"mixed\"",
        "[gateway]\nidentity = \"gw.key\"\nlisten = [\"198.18.5.2\"]\nlisten_ports = \"9000-9001\"\n",
    ))
    .unwrap();
    let g = c.relay.unwrap();
    assert_eq!(g.listen, ["198.18.5.2".parse::<IpAddr>().unwrap()]);
    assert_eq!((g.listen_ports.first, g.listen_ports.last), (9000, 9001));
    assert_eq!(
        client_err(&with("mode = \"mixed\"", "")),
        "client.mode: \"mixed\" needs a [gateway] section (identity, listen, listen_ports) to relay with"
    );
    assert_eq!(
        client_err(&with("", "[gateway]\nidentity = \"gw.key\"\n")),
        "gateway: a [gateway] section is used only with client.mode = \"mixed\""
    );
    assert_eq!(
        client_err(&with("mode = \"relay\"", "")),
        "client.mode: \"relay\" is not a mode (\"client\" or \"mixed\")"
    );
    assert_eq!(
        client_err(&with(
            "mode = \"mixed\"",
            "[gateway]\nidentity = \"gw.key\"\nlisten_ports = \"9-1\"\n"
        )),
        "gateway.listen_ports: range 9-1 is empty"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.toml");
    std::fs::write(
        &path,
        with("mode = \"mixed\"", "[gateway]\nidentity = \"gw.key\"\n"),
    )
    .unwrap();
    assert_eq!(
        load_client(&path).unwrap().relay.unwrap().identity,
        dir.path().join("gw.key")
    );
}

#[test]
fn padding_modes() {
    let mode = |extra: &str| parse_client(&cl(extra, 1)).unwrap().padding_mode;
    assert_eq!(mode(""), mode("padding_mode = \"adaptive\""));
    assert_eq!(mode("padding_mode = \"off\""), PaddingMode::Off);
    assert_eq!(
        mode("padding_mode = \"constant\""),
        PaddingMode::Constant { rate: 200 }
    );
    assert_eq!(
        mode("padding_mode = \"constant\"\nconstant_rate = 1000"),
        PaddingMode::Constant { rate: 1000 }
    );
    assert_eq!(PaddingMode::Constant { rate: 50 }.pace(), Some(50));
    assert_eq!(PaddingMode::Off.pace(), None);
    assert_eq!(
        client_err(&cl("padding_mode = \"pipenet\"", 1)),
        "client.padding_mode: \"pipenet\" is not a padding mode (\"off\", \"adaptive\" or \"constant\")"
    );
    let adaptive = mode("padding_mode = \"adaptive\"");
    assert_eq!(
        adaptive,
        PaddingMode::Adaptive {
            machines: vec![MachineSpec::Netflow, FRONT_DEFAULT]
        }
    );
    assert_eq!(adaptive.pace(), None);
    assert_eq!(
        adaptive.adaptive().map(|a| a.machines.len()),
        Some(2),
        "the node runs them"
    );
    assert_eq!(PaddingMode::Off.adaptive(), None);
    assert_eq!(
        mode("padding_mode = \"adaptive\"\npadding_machines = [\"front 40 0.5 3 2\"]"),
        PaddingMode::Adaptive {
            machines: vec![MachineSpec::Front {
                budget: 40,
                window_min: 0.5,
                window_max: 3.0,
                states: 2
            }]
        }
    );
    assert_eq!(
        client_err(&cl(
            "padding_mode = \"adaptive\"\npadding_machines = [\"netflow\", \"tamaraw\"]",
            1
        )),
        "client.padding_machines[1]: unknown padding machine \"tamaraw\" (known: netflow, \
         front [budget window_min window_max states])"
    );
    assert_eq!(
        client_err(&cl(
            "padding_mode = \"adaptive\"\npadding_machines = [\"front 1 1 14 4\"]",
            1
        )),
        "client.padding_machines[0]: front takes 4 numbers or none: budget (2..=100000), \
         window_min and window_max (seconds, 0.1 <= window_min < window_max <= 600) and \
         states (1..=16), not \"front 1 1 14 4\""
    );
    assert_eq!(
        client_err(&cl("padding_mode = \"adaptive\"\npadding_machines = []", 1)),
        "client.padding_machines: needs 1 to 8 machines, got 0"
    );
    assert_eq!(
        mode("padding_machines = [\"netflow\"]"),
        PaddingMode::Adaptive {
            machines: vec![MachineSpec::Netflow]
        }
    );
    assert_eq!(
        client_err(&cl(
            "padding_mode = \"off\"\npadding_machines = [\"netflow\"]",
            1
        )),
        "client.padding_machines: is used only with client.padding_mode = \"adaptive\""
    );
    assert_eq!(
        client_err(&cl("padding_mode = \"adaptive\"\nconstant_rate = 100", 1)),
        "client.constant_rate: is used only with client.padding_mode = \"constant\""
    );
    assert_eq!(
        client_err(&cl("padding_mode = \"constant\"\nconstant_rate = 5", 1)),
        "client.constant_rate: must be between 10 and 10000, got 5"
    );
    assert_eq!(
        client_err(&cl("constant_rate = 100", 1)),
        "client.constant_rate: is used only with client.padding_mode = \"constant\""
    );
    let gw_rate = |extra: &str| parse_gateway(&gw(extra)).unwrap().max_constant_rate;
    assert_eq!(gw_rate("max_constant_rate = 0"), 0);
    assert_eq!(gw_rate("max_constant_rate = 10000"), 10_000);
    assert_eq!(
        gateway_err(&gw("max_constant_rate = 10001")),
        "gateway.max_constant_rate: must be between 0 and 10000, got 10001"
    );
    let budget = |extra: &str| parse_gateway(&gw(extra)).unwrap().constant_budget;
    assert_eq!(budget("constant_budget = 0"), 0);
    assert_eq!(budget("constant_budget = 500000"), 500_000);
    assert_eq!(
        gateway_err(&gw("constant_budget = -1")),
        "gateway.constant_budget: must be between 0 and 1000000, got -1"
    );
    let echo = |extra: &str| {
        let g = parse_gateway(&gw(extra)).unwrap();
        (g.padding_rate, g.padding_share)
    };
    assert_eq!(echo("padding_rate = 0\npadding_share = 100"), (0, 100));
    assert_eq!(
        gateway_err(&gw("padding_share = 101")),
        "gateway.padding_share: must be between 0 and 100, got 101"
    );
    assert_eq!(
        gateway_err(&gw("padding_rate = 1000000001")),
        "gateway.padding_rate: must be between 0 and 1000000000, got 1000000001"
    );
}

#[test]
fn log_filter() {
    let g = |log: &str| parse_gateway(&format!("log = {log:?}\n{}", gw("")));
    assert_eq!(g("debug").unwrap().log.as_deref(), Some("debug"));
    assert_eq!(
        g(" info,anonnet::discovery=trace ").unwrap().log.as_deref(),
        Some("info,anonnet::discovery=trace")
    );
    assert_eq!(parse_gateway(&gw("")).unwrap().log, None);
    for bad in ["", "debg", "info,anonnet", "anonnet=loud", "=debug"] {
        let e = g(bad).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "log: {bad:?} is not a log filter: a level (off, error"
            )),
            "{bad:?}: {e}"
        );
    }
    let c = |log: &str| parse_client(&format!("log = {log:?}\n{}", cl("", 1)));
    assert_eq!(c("warn").unwrap().log.as_deref(), Some("warn"));
    assert!(c("verbose").unwrap_err().to_string().starts_with("log: "));
    // Below a table, `log` belongs to it: an unknown key there, named by toml.
    assert!(parse_gateway(&gw("log = \"debug\"")).is_err());
}
