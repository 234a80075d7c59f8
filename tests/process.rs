//! End-to-end tests of the real binary: gateways as separate processes on loopback,
//! `circuit-test` as the client.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use anonnet::proto::crypto;
use anonnet::proto::identity::PublicKey;
use anonnet::proto::wire::{self, Header, LINK_INIT_RESERVED};
use common::{circuit_test, client_config, start_gateway, verified_bytes, Gateway};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
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

/// `anonnet --help` lists each command in one short line; `anonnet CMD --help` has
/// the long text.
#[test]
fn help_lists_each_command_in_one_short_line() {
    let out = common::run(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let commands: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    for cmd in [
        "keygen",
        "pubkey",
        "gateway",
        "up",
        "status",
        "discover",
        "down",
        "circuit-test",
    ] {
        let line = commands
            .iter()
            .find(|l| l.trim_start().starts_with(&format!("{cmd} ")))
            .unwrap_or_else(|| panic!("{cmd} is not listed: {text}"));
        assert!(
            line.len() <= 80,
            "{cmd}'s line is {} long: {line:?}",
            line.len()
        );
    }
    for l in text.lines() {
        assert!(l.len() <= 80, "a line of {} characters: {l:?}", l.len());
    }
    let up = common::run(&["up", "--help"]);
    let long = String::from_utf8(up.stdout).expect("utf-8");
    assert!(
        long.contains("kill switch") && long.contains("CAP_NET_ADMIN"),
        "{long}"
    );
}

/// Logs are one format on stderr: a timestamp and the level, no colour off a
/// terminal; no timestamp when stderr is the journal (`JOURNAL_STREAM` names it).
#[test]
fn log_lines_have_no_colour_and_no_timestamp_under_the_journal() {
    use std::os::unix::fs::MetadataExt;
    let dir = TempDir::new().expect("tempdir");
    let missing = dir.path().join("no-such-config.toml");
    let missing = missing.to_str().expect("utf-8 path");
    let log = |name: &str, journal: bool| -> String {
        let path = dir.path().join(name);
        let file = std::fs::File::create(&path).expect("create log");
        let meta = file.metadata().expect("stat log");
        let mut cmd = std::process::Command::new(common::bin());
        cmd.args(["gateway", "--config", missing])
            .stdin(std::process::Stdio::null())
            .stderr(file)
            .env_remove("RUST_LOG")
            .env_remove("JOURNAL_STREAM");
        if journal {
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        let status = cmd.status().expect("run anonnet");
        assert!(!status.success());
        std::fs::read_to_string(&path).expect("read log")
    };
    let plain = log("plain.log", false);
    let line = plain
        .lines()
        .find(|l| l.contains(missing))
        .expect("error line");
    assert!(!plain.contains('\x1b'), "colour codes in a file: {plain:?}");
    assert!(
        line.starts_with("20") && line.contains(" ERROR "),
        "{line:?}"
    );
    let journal = log("journal.log", true);
    let line = journal
        .lines()
        .find(|l| l.contains(missing))
        .expect("error line");
    assert!(
        !journal.contains('\x1b'),
        "colour codes in the journal: {journal:?}"
    );
    assert!(
        line.starts_with("ERROR "),
        "a timestamp under the journal: {line:?}"
    );
}

/// SIGHUP re-reads the config: the log filter changes at once, a file that does not
/// load changes nothing and is named, and changes that need a restart are named.
#[test]
fn sighup_reloads_the_log_filter_and_names_what_waits() {
    let dir = TempDir::new().expect("tempdir");
    let mut gw = start_gateway(dir.path(), "gw", V4, false);
    let text = std::fs::read_to_string(&gw.config).expect("read config");
    let path = gw.config.display().to_string();
    let reload = |gw: &mut Gateway, text: &str, want: &str| -> String {
        std::fs::write(&gw.config, text).expect("write config");
        gw.proc.signal("HUP");
        gw.proc
            .wait_log(Duration::from_secs(10), |l| l.contains(want))
    };
    let line = reload(&mut gw, &format!("log = \"debug\"\n{text}"), "reloaded");
    assert!(
        line.contains(&format!(
            "reloaded {path}: log filter \"debug\" (from the config's log)"
        )),
        "{line}"
    );
    let line = reload(&mut gw, &format!("{text}handshake_rate = 0\n"), "SIGHUP");
    assert!(
        line.contains(&format!(" ERROR SIGHUP: {path}: gateway.handshake_rate: "))
            && line.ends_with("; nothing changed"),
        "{line}"
    );
    let line = reload(
        &mut gw,
        &format!("log = \"warn\"\n{text}handshake_rate = 5\n"),
        "next restart",
    );
    assert!(
        line.contains(&format!("{path}: the changes in [gateway] take effect")),
        "{line}"
    );
    gw.proc.terminate();
    let (st, err) = gw.proc.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{err}");
    // Under "warn", the info lines stop: the third reload's own and the stop's.
    assert_eq!(err.matches("reloaded").count(), 1, "{err}");
    assert!(!err.contains("anonnet gateway stopping"), "{err}");
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

/// A LINK_INIT for the gateway with public key `key` (a real Noise NK msg1 and mac1).
fn link_init(key: &str, sender: u32) -> Vec<u8> {
    let key: PublicKey = key.parse().expect("public key");
    let mut rng = ChaCha20Rng::seed_from_u64(u64::from(sender));
    let mut hs = crypto::noise_initiator(&mut rng, &key.0);
    let mut msg = [0u8; 64];
    hs.write_message(&[0u8; LINK_INIT_RESERVED], &mut msg)
        .expect("msg1");
    let mac1_key = crypto::mac1_key(&key.0);
    wire::emit_link_init(sender, &msg, |c| crypto::mac(&mac1_key, c), |_| None)
}

/// Whether `sock` receives a LINK_RESP to `sender` within `wait`.
fn link_resp(sock: &UdpSocket, sender: u32, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 2048];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        let Ok(n) = sock.recv(&mut buf) else {
            return false;
        };
        if matches!(Header::parse(&buf[..n]), Ok(Header::LinkResp { receiver, .. }) if receiver == sender)
        {
            return true;
        }
    }
    false
}

/// A handshake the gateway accepted before a crash (kill -9) is refused after its
/// restart: the replay cache is kept on disk beside the identity. (Without the file
/// the restarted gateway answered the replay with a LINK_RESP.)
#[test]
fn a_restarted_gateway_refuses_a_replayed_handshake() {
    let dir = TempDir::new().expect("tempdir");
    let mut gw = start_gateway(dir.path(), "gw", V4, false);
    let sock = UdpSocket::bind((V4, 0)).expect("bind");
    sock.connect(gw.addr).expect("connect");
    let recorded = link_init(&gw.key, 1);
    sock.send(&recorded).expect("send");
    assert!(
        link_resp(&sock, 1, Duration::from_secs(5)),
        "the gateway answers a handshake"
    );
    gw.proc.kill();
    let _ = gw.proc.wait_exit(Duration::from_secs(10));
    gw.proc = common::Proc::spawn(
        "gw (restarted)",
        &[
            "gateway",
            "--config",
            gw.config.to_str().expect("utf-8 path"),
        ],
    );
    gw.proc.wait_line(Duration::from_secs(20), |l| {
        l.starts_with("anonnet gateway ")
    });
    sock.send(&recorded).expect("send");
    let replay_answered = link_resp(&sock, 1, Duration::from_secs(1));
    sock.send(&link_init(&gw.key, 2)).expect("send");
    assert!(
        link_resp(&sock, 2, Duration::from_secs(5)),
        "the restarted gateway answers a new handshake"
    );
    let stats = gw.stop();
    assert!(!replay_answered, "the replayed handshake was answered");
    assert_eq!(stats.get("dropped_handshake_replay"), 1, "{}", stats.line);
}

/// Runs `circuit-test` through three fresh gateways with `client` added to the
/// client's `[client]` section, holding the circuit `hold` seconds after sending
/// `bytes`; checks that they all came back, and hands back the gateways to stop.
fn padded_circuit_test(dir: &TempDir, client: &str, bytes: usize, hold: u32) -> Vec<Gateway> {
    let gws = three_gateways(dir, V4);
    let cfg = client_config(dir.path(), "client", &path_of(&gws), 2.0, 10.0);
    let text = std::fs::read_to_string(&cfg).expect("config");
    let text = text.replacen("[client]\n", &format!("[client]\n{client}\n"), 1);
    std::fs::write(&cfg, text).expect("config");
    let (bytes, hold) = (bytes.to_string(), hold.to_string());
    let mut ct = circuit_test(
        &cfg,
        &["--bytes", &bytes, "--window", "16", "--hold", &hold],
    );
    let line = ct.wait_line(Duration::from_secs(60), |l| l.starts_with("verified "));
    println!("{line}");
    assert!(
        verified_bytes(&line) >= bytes.parse().expect("bytes"),
        "{line}"
    );
    let (st, err) = ct.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "circuit-test: {err}");
    gws
}

/// `padding_mode = "constant"` end to end with the real binary: the entry honours the
/// client's PACE (capped at its `max_constant_rate`) and pads the link, the client's
/// data gets through whole, and `circuit-test` reports how much padding it sent.
#[test]
fn constant_padding_mode_carries_a_circuit() {
    let dir = TempDir::new().expect("tempdir");
    let client = "padding_mode = \"constant\"\nconstant_rate = 2000";
    let mut gws = padded_circuit_test(&dir, client, 300_000, 1);
    let entry = gws[0].stop();
    println!("gw1: {}", entry.line);
    assert_eq!(entry.get("paces_received"), 1, "{}", entry.line);
    // The entry paced the link for at least the second of --hold, at its default
    // limit of 1,000 cells/s, and the client's cells all arrived full-size.
    assert!(entry.get("padding_sent") >= 500, "{}", entry.line);
    assert!(entry.get("padding_received") >= 500, "{}", entry.line);
    let middle = gws[1].stop();
    assert_eq!(middle.get("paces_received"), 0, "{}", middle.line);
    assert_eq!(middle.get("padding_sent"), 0, "{}", middle.line);
}

/// `padding_mode = "adaptive"` end to end with the real binary: the client's FRONT
/// machine pads to the last hop of its circuit, which echoes every padding, the hops
/// before it see only cells, and the data gets through whole.
#[test]
fn adaptive_padding_mode_pads_to_the_last_hop() {
    let dir = TempDir::new().expect("tempdir");
    let client = "padding_mode = \"adaptive\"\npadding_machines = [\"front 40 0.1 0.3 2\"]";
    let mut gws = padded_circuit_test(&dir, client, 100_000, 3);
    let last = gws[2].stop();
    println!("gw3: {}", last.line);
    let padded = last.get("padding_received");
    assert!(padded >= 1, "{}", last.line);
    assert_eq!(last.get("padding_sent"), padded, "every padding echoed");
    for gw in &mut gws[..2] {
        let relay = gw.stop();
        assert_eq!(relay.get("padding_received"), 0, "{}", relay.line);
        assert_eq!(relay.get("padding_sent"), 0, "{}", relay.line);
    }
}
