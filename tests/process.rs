//! End-to-end tests of the real binary: gateways as separate processes on loopback,
//! `circuit-test` as the client.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{circuit_test, client_config, start_gateway, verified_bytes, Gateway};
use tempfile::TempDir;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// Three gateways on `ip`; the last one echoes.
fn three_gateways(dir: &TempDir, ip: IpAddr) -> Vec<Gateway> {
    (1..=3)
        .map(|i| start_gateway(dir.path(), &format!("gw{i}"), ip, i == 3))
        .collect()
}

fn path_of(gws: &[Gateway]) -> Vec<(std::net::SocketAddr, &str)> {
    gws.iter().map(|g| (g.addr, g.key.as_str())).collect()
}

/// Sends ≥10 MB through a 3-hop circuit and checks the tool verified it all.
fn ten_megabytes(ip: IpAddr) {
    let dir = TempDir::new().expect("tempdir");
    let gws = three_gateways(&dir, ip);
    let cfg = client_config(dir.path(), "client", &path_of(&gws), 2.0, 10.0);
    let mut ct = circuit_test(&cfg, &["--bytes", "10500000"]);
    ct.wait_line(Duration::from_secs(20), |l| {
        l.starts_with("circuit up: 3 hops")
    });
    let line = ct.wait_line(Duration::from_secs(300), |l| l.starts_with("verified "));
    println!("{ip}: {line}");
    assert!(verified_bytes(&line) >= 10_000_000, "{line}");
    let (st, err) = ct.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "circuit-test failed: {err}");
}

#[test]
fn ipv4_three_hops_ten_megabytes() {
    ten_megabytes(V4);
}

#[test]
fn ipv6_three_hops_ten_megabytes() {
    if !common::can_bind(V6) {
        println!("note: cannot bind ::1, skipping the IPv6 test");
        return;
    }
    ten_megabytes(V6);
}

#[test]
fn killing_the_middle_gateway_brings_the_circuit_down() {
    let dir = TempDir::new().expect("tempdir");
    let mut gws = three_gateways(&dir, V4);
    let cfg = client_config(dir.path(), "client", &path_of(&gws), 0.5, 3.0);
    let mut ct = circuit_test(&cfg, &["--bytes", "100000", "--hold", "30"]);
    ct.wait_line(Duration::from_secs(60), |l| {
        l.starts_with("holding the circuit")
    });
    gws[1].proc.kill();
    let killed = Instant::now();
    let line = ct.wait_line(Duration::from_secs(10), |l| l.starts_with("circuit "));
    assert!(
        line.starts_with("circuit down: Silent"),
        "unexpected line {line:?}"
    );
    let (st, err) = ct.wait_exit(Duration::from_secs(10));
    let took = killed.elapsed();
    println!("{line} ({took:?} after the kill)");
    assert_eq!(st.code(), Some(3), "circuit-test: {err}");
    assert!(
        took <= Duration::from_millis(4500),
        "circuit down only {took:?} after the kill"
    );
}

#[test]
fn cli_keygen_pubkey_and_config_errors() {
    let dir = TempDir::new().expect("tempdir");
    let key = dir.path().join("id.key");
    let keys = key.to_str().expect("utf-8 path");

    let first = common::run(&["keygen", "--out", keys]);
    assert!(first.status.success());
    let again = common::run(&["keygen", "--out", keys]);
    assert!(!again.status.success(), "keygen overwrote without --force");
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("--force"), "stderr: {err}");

    let forced = common::run(&["keygen", "--out", keys, "--force"]);
    assert!(forced.status.success());
    let public = String::from_utf8(forced.stdout)
        .expect("utf-8")
        .trim()
        .to_string();
    assert_ne!(
        public,
        String::from_utf8_lossy(&first.stdout).trim(),
        "--force did not write a new key"
    );
    let mode = std::fs::metadata(&key).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "identity mode {mode:o}");

    let pk = common::run(&["pubkey", keys]);
    assert!(pk.status.success());
    let printed = String::from_utf8(pk.stdout).expect("utf-8");
    let printed = printed.trim();
    assert_eq!(printed.len(), 44, "{printed:?}");
    assert!(printed
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='));
    assert_eq!(printed, public);

    let gateway_err = |name: &str, body: &str| -> String {
        let cfg = dir.path().join(name);
        std::fs::write(&cfg, format!("[gateway]\nidentity = \"{keys}\"\n{body}"))
            .expect("write config");
        let out = common::run(&["gateway", "--config", cfg.to_str().expect("utf-8 path")]);
        assert!(!out.status.success(), "gateway accepted {body:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = gateway_err(
        "range.toml",
        "listen = [\"127.0.0.1\"]\nlisten_ports = \"9000-8000\"\n",
    );
    assert!(e.contains("listen_ports") && e.contains("empty"), "{e}");
    let e = gateway_err("unknown.toml", "lisen = [\"127.0.0.1\"]\n");
    assert!(e.contains("lisen"), "{e}");

    let missing = dir.path().join("no-such-config.toml");
    let out = common::run(&["gateway", "--config", missing.to_str().expect("utf-8 path")]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains(missing.to_str().expect("utf-8 path")), "{e}");
}

#[test]
fn teardown_and_stats_after_a_clean_run() {
    let dir = TempDir::new().expect("tempdir");
    let mut gws = three_gateways(&dir, V4);
    let cfg = client_config(dir.path(), "client", &path_of(&gws), 2.0, 10.0);
    let mut ct = circuit_test(&cfg, &["--bytes", "200000"]);
    let (st, err) = ct.wait_exit(Duration::from_secs(60));
    assert_eq!(
        st.code(),
        Some(0),
        "circuit-test: {err}\n{}",
        ct.out.join("\n")
    );
    let stats: Vec<_> = gws.iter_mut().map(Gateway::stop).collect();
    for (i, s) in stats.iter().enumerate() {
        println!("gw{}: {}", i + 1, s.line);
        assert!(s.get("rx_datagrams") > 0, "{}", s.line);
    }
    assert!(stats[1].get("relayed_forward") > 0, "{}", stats[1].line);
    assert!(stats[1].get("relayed_backward") > 0, "{}", stats[1].line);
    assert!(stats[0].get("relayed_forward") > 0, "{}", stats[0].line);
}
