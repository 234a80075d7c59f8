//! `anonnet up` and `anonnet down`: setting the client up (its data plane is
//! `client_plane.rs`) and tearing it down.
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::client::flows::CircuitPool;
use crate::config::identity_file;
use crate::config::{self, ClientConfig};
use crate::node::{CircuitId, Event, HopSpec, Node};
use crate::proto::addr::{CLIENT_V4, CLIENT_V6, DNS_V4, DNS_V6};
use crate::proto::wire::Service;
use crate::runtime::client_plane::ClientPlane;
use crate::runtime::control::{self, Control, Request, CLIENT_SOCKET};
use crate::runtime::daemon::Daemon;
use crate::runtime::diagnose::{diagnose, BuildError};
use crate::runtime::driver::Driver;
use crate::runtime::gateway::{gateway_discovery, gateway_node_config};
use crate::runtime::paths::{Chosen, Paths};
use crate::runtime::reload::Reload;
use crate::runtime::replay;
use crate::runtime::tun;
use crate::runtime::{
    client_node_config, flush_stdout, logging, serve_metrics, Unavailable, CLIENT_BINDS,
};
use crate::sys;

/// The client's kernel set-up from its config; IPv4 only when `ipv6` is false (the
/// host has IPv6 switched off: the kill switch then blocks it).
pub(crate) fn client_net(cfg: &ClientConfig, ipv6: bool) -> sys::ClientNet {
    let t = &cfg.tunnel;
    let v6 = |a: IpAddr| ipv6 || a.is_ipv4();
    sys::ClientNet {
        tun: t.name.clone(),
        addrs: [
            IpNet::V4(Ipv4Net::from(CLIENT_V4)),
            IpNet::V6(Ipv6Net::from(CLIENT_V6)),
        ]
        .into_iter()
        .filter(|a| v6(a.addr()))
        .collect(),
        mtu: t.mtu,
        fwmark: t.fwmark,
        table: t.table,
        gateways: cfg.path.first().map(|h| h.addr).into_iter().collect(),
        relay_ports: cfg
            .relay
            .as_ref()
            .map(|g| (g.listen_ports.first, g.listen_ports.last)),
        dns: if t.dns {
            [IpAddr::V4(DNS_V4), IpAddr::V6(DNS_V6)]
                .into_iter()
                .filter(|a| v6(*a))
                .collect()
        } else {
            Vec::new()
        },
        state_dir: t.state_dir.clone(),
    }
}

/// Builds a circuit for `service` and waits until it is up or has failed.
pub(crate) async fn build(
    d: &mut Driver,
    specs: &[HopSpec],
    service: Service,
    events: &mut Vec<Event>,
) -> Result<CircuitId, BuildError> {
    let start = Instant::now();
    let id = d
        .node
        .build_circuit(start, &mut d.rng, specs, service)
        .map_err(|e| BuildError::NotStarted(e.to_string()))?;
    d.flush().await;
    loop {
        d.step(events).await;
        for e in events.drain(..) {
            match e {
                Event::CircuitUp(c) if c == id => return Ok(id),
                Event::CircuitDown(c, why) if c == id => return Err(BuildError::Down(why)),
                Event::Data { buf, .. } => d.sockets.pool.put(buf),
                _ => {}
            }
        }
    }
}

/// Sets the client up: checks the host, creates the TUN device and sockets, finds a
/// path (crawling for gateways if the cache has none), builds the first circuit,
/// and routes the host's traffic into the tunnel. Prints the readiness line scripts
/// wait for. The daemon then moves packets until SIGINT or SIGTERM; its `stop`
/// removes everything set up here.
pub(crate) async fn start(cfg: &ClientConfig) -> Result<Daemon> {
    let ipv6 = sys::ipv6_usable();
    if !ipv6 {
        tracing::info!(
            "IPv6 is switched off on this host (net.ipv6.conf.all/default.disable_ipv6): \
             the tunnel carries IPv4 only, and the kill switch blocks IPv6"
        );
    }
    let net = client_net(cfg, ipv6);
    sys::client_preflight(&net).await?;
    let relay = match &cfg.relay {
        Some(g) => {
            let id = identity_file::read(&g.identity)?;
            Some((g, gateway_discovery(g, &id, None)?, id))
        }
        None => None,
    };
    let tun = tun::create(&net.tun, tun::offload_from_env())?;
    let (node, binds) = match &relay {
        Some((g, _, id)) => (
            Node::new(gateway_node_config(g, id, client_node_config(cfg))),
            g.listen_addrs().collect(),
        ),
        None => (Node::new(client_node_config(cfg)), CLIENT_BINDS.to_vec()),
    };
    let mut d = Driver::tunnel(node, &binds, Some(net.fwmark), net.mtu as usize)?;
    if let Some((g, _, _)) = &relay {
        d.keep_handshakes(&replay::path_for(&g.identity))?;
    }
    let mut net = net;
    // A kill switch left by a run that died lets out only that run's entry: let
    // this run's first hop and bootstrap gateways out instead (the table stays,
    // so the host stays cut off) before contacting any of them.
    // A crawl goes only to the guard it goes through and the bootstrap gateways.
    let own = relay.as_ref().map(|(_, _, id)| id.public().0);
    let mut paths = Paths::load(cfg, own)?;
    let armed = sys::kill_switch_armed().await?;
    if armed {
        net.gateways = cfg
            .path
            .first()
            .into_iter()
            .chain(&cfg.discovery.bootstrap)
            .map(|h| h.addr)
            .chain(paths.crawl_guard().map(|g| g.addr))
            .collect();
        sys::client_set_gateways(&net).await?;
    }
    paths.discover(cfg, &mut d).await?;
    let Chosen {
        specs,
        exit_ports,
        padding_share,
    } = paths.next(&mut d.rng, None)?;
    let entry = specs.first().map(|h| h.addr).context("the path is empty")?;
    if armed && !net.gateways.contains(&entry) {
        net.gateways.push(entry);
        sys::client_set_gateways(&net).await?;
    }
    net.gateways = vec![entry];
    let mut events = Vec::new();
    let started = Instant::now();
    let circuit = match build(&mut d, &specs, Service::Exit, &mut events).await {
        Ok(c) => {
            if let Some(share) = padding_share {
                d.node.limit_padding(c, share);
            }
            c
        }
        Err(why) => {
            tracing::info!("the first circuit did not come up ({why}): finding the hop at fault");
            let blame = diagnose(&mut d, &specs, &why, &mut events).await;
            return Err(Unavailable(format!(
                "the circuit through {} hops did not come up: {blame}",
                specs.len()
            ))
            .into());
        }
    };
    let build_ms = started.elapsed().as_millis();
    if let Err(e) = sys::client_up(&net).await {
        let _ = sys::client_down(&net.state_dir).await;
        return Err(e.context("cannot route traffic into the tunnel"));
    }
    let relaying = match &relay {
        Some((_, _, id)) => {
            let bound: Vec<String> = d.sockets.local_addrs().map(|a| a.to_string()).collect();
            format!(
                "; relaying as gateway {} on {}",
                id.public(),
                bound.join(" ")
            )
        }
        None => String::new(),
    };
    println!(
        "anonnet up: {} {} mtu {} through {} hops (entry {entry}), circuit built in {build_ms} ms{relaying}",
        net.tun,
        net.addrs
            .iter()
            .map(|a| a.addr().to_string())
            .collect::<Vec<_>>()
            .join(" "),
        net.mtu,
        specs.len()
    );
    flush_stdout()?;
    let pool = CircuitPool::new(
        cfg.circuits,
        Duration::from_secs(cfg.circuit_lifetime_secs),
        Instant::now(),
        circuit,
        specs.last().map(|h| h.key).unwrap_or_default(),
        exit_ports,
    );
    let client = ClientPlane::new(
        tun,
        net,
        paths,
        pool,
        cfg.isolation,
        cfg.legs,
        &mut d.rng,
        (circuit, specs),
    );
    Ok(Daemon::new(
        d,
        Some(client),
        None,
        relay.map(|(_, discovery, _)| discovery),
    ))
}

/// `anonnet up --config FILE [--metrics ADDR]`.
pub async fn up(path: &Path, metrics: Option<SocketAddr>) -> Result<ExitCode> {
    let cfg = config::load_client(path)?;
    logging::apply_config(cfg.log.as_deref());
    // First: a second `up` in this network namespace stops here, having changed nothing.
    let control = Control::bind(
        CLIENT_SOCKET,
        "`anonnet up`",
        "`anonnet status` shows it, `anonnet down` stops it",
    )?;
    let metrics = serve_metrics(metrics).await?;
    crate::runtime::state::adopt_old_default(&cfg.tunnel.state_dir);
    let mut daemon = start(&cfg)
        .await?
        .with_metrics(metrics)
        .with_reload(Reload::client(path.to_path_buf(), cfg));
    if let Some(control) = control {
        daemon = daemon.with_control(control);
    }
    let result = daemon.run().await;
    let cleaned = daemon.stop().await;
    result?;
    for line in cleaned? {
        tracing::info!("on exit: {line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `anonnet down`: removes what `up` set up, as recorded in `state_dir`.
pub async fn down(state_dir: &Path) -> Result<ExitCode> {
    let asked = control::ask(CLIENT_SOCKET, Request::Stop).await?;
    if let Some((answer, pid)) = &asked {
        let pid = *pid;
        let pid = pid.context("the running daemon's process id is unknown")?;
        tracing::debug!("control socket: {}", answer.trim_end());
        wait_gone(pid, STOP_WAIT).await.with_context(|| {
            format!(
                "the running `anonnet up` (pid {pid}) did not stop within {} s",
                STOP_WAIT.as_secs()
            )
        })?;
        println!(
            "anonnet down: the running `anonnet up` (pid {pid}) stopped and removed what it set up"
        );
    }
    crate::runtime::state::adopt_old_default(state_dir);
    let removed = sys::client_down(state_dir).await?;
    if removed.is_empty() && asked.is_none() {
        println!("anonnet down: nothing to remove");
    }
    for line in removed {
        println!("anonnet down: {line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// How long `down` waits for a running daemon it asked to stop: its stop removes
/// the kernel state and restores DNS, well within the systemd unit's 15 s.
const STOP_WAIT: Duration = Duration::from_secs(15);

/// Waits until process `pid` has exited (a zombie its parent has not reaped yet
/// counts: its cleanup is done), at most `limit`.
async fn wait_gone(pid: i32, limit: Duration) -> Result<()> {
    let stat = std::path::PathBuf::from(format!("/proc/{pid}/stat"));
    let running = || {
        std::fs::read_to_string(&stat).is_ok_and(|s| {
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|state| !matches!(state, 'Z' | 'X'))
        })
    };
    let end = Instant::now() + limit;
    while running() {
        if Instant::now() >= end {
            bail!("still running");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// What `status` and `check` say when no `up` runs.
pub(crate) const NO_UP: &str = "no `anonnet up` runs in this network namespace";

/// `anonnet status [--json]`: asks the running `up` of this network namespace.
pub async fn status(json: bool) -> Result<ExitCode> {
    let mut v = control::status_of(CLIENT_SOCKET, NO_UP).await?;
    // The kill switch is the kernel's: looked up here, not taken from the daemon.
    v["kill_switch"] = serde_json::Value::Bool(sys::kill_switch_armed().await?);
    control::print_status(&v, json, status_text)?;
    Ok(ExitCode::SUCCESS)
}

/// `anonnet status` as lines for a person.
/// A byte count for people: B, KiB, MiB or GiB.
fn size(n: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

fn status_text(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_owned();
    let list = |v: &serde_json::Value| {
        v.as_array()
            .map(|a| a.iter().map(&s).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let c = &v["client"];
    let mut out = String::new();
    let _ = writeln!(
        out,
        "anonnet up (pid {}): {}; kill switch {}",
        v["pid"],
        s(&c["state"]),
        if v["kill_switch"].as_bool() == Some(true) {
            "armed"
        } else {
            "NOT INSTALLED"
        }
    );
    let _ = writeln!(
        out,
        "  {} {} mtu {}; DNS {}",
        s(&c["tun"]),
        list(&c["addresses"]),
        c["mtu"],
        list(&c["dns"])
    );
    for circ in c["circuits"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  circuit {} ({}, {} flows)",
            circ["id"],
            if circ["up"].as_bool() == Some(true) {
                "up"
            } else {
                "building"
            },
            circ["flows"]
        );
        for leg in circ["legs"].as_array().into_iter().flatten() {
            let hops: Vec<String> = leg["hops"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| format!("{} [{}]", s(&h["addr"]), s(&h["key"])))
                .collect();
            let rtt = leg["rtt_ms"]
                .as_f64()
                .map_or_else(|| "rtt ?".to_owned(), |r| format!("rtt {r:.1} ms"));
            let _ = writeln!(
                out,
                "    leg {} {}: {}; {rtt}",
                leg["circuit"],
                s(&leg["state"]),
                hops.join(" -> ")
            );
            if let Some(age) = leg["age_s"].as_u64() {
                let handshake = leg["last_handshake_s_ago"].as_u64().map_or_else(
                    || "no handshake yet".to_owned(),
                    |h| format!("handshake {h} s ago"),
                );
                let padding = leg["padding_percent"]
                    .as_f64()
                    .map_or_else(String::new, |p| format!(" ({p:.1}% padding)"));
                let _ = writeln!(
                    out,
                    "      age {age} s, {handshake}; {} out, {} in{padding}",
                    size(leg["bytes_sent"].as_u64().unwrap_or(0)),
                    size(leg["bytes_received"].as_u64().unwrap_or(0)),
                );
            }
        }
    }
    match c["known_gateways"].as_u64() {
        Some(n) => {
            let _ = writeln!(out, "  guards {}; {n} gateways known", list(&c["guards"]));
        }
        None => {
            let _ = writeln!(out, "  a fixed path (client.path)");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{size, status_text};

    /// `anonnet status` for a person: one line per circuit and leg, hops with their
    /// short keys; the kill switch as found in the kernel.
    #[test]
    fn status_lines() {
        let v = serde_json::json!({
            "pid": 42,
            "kill_switch": true,
            "client": {
                "state": "up", "tun": "anon0", "mtu": 1280,
                "addresses": ["100.64.0.2/32", "fd00:64::2/128"], "dns": ["100.64.0.53"],
                "circuits": [{"id": 2, "up": true, "flows": 3, "legs": [
                    {"circuit": 2, "state": "live", "rtt_ms": 1.25, "hops": [
                        {"addr": "198.18.2.2:9000", "key": "AbCdEfGh"},
                        {"addr": "198.18.4.2:9000", "key": "IjKlMnOp"}],
                     "age_s": 95, "last_handshake_s_ago": 35, "bytes_sent": 1_572_864,
                     "bytes_received": 52_428_800, "padding_percent": 3.26},
                    {"circuit": 4, "state": "building", "rtt_ms": null, "hops": [],
                     "age_s": 1, "last_handshake_s_ago": null, "bytes_sent": 900,
                     "bytes_received": 0, "padding_percent": 0.0}]}],
                "guards": ["AbCdEfGh", "QrStUvWx"], "known_gateways": 8,
            },
        });
        assert_eq!(
            status_text(&v),
            "anonnet up (pid 42): up; kill switch armed\n\
             \x20 anon0 100.64.0.2/32 fd00:64::2/128 mtu 1280; DNS 100.64.0.53\n\
             \x20 circuit 2 (up, 3 flows)\n\
             \x20   leg 2 live: 198.18.2.2:9000 [AbCdEfGh] -> 198.18.4.2:9000 [IjKlMnOp]; rtt 1.2 ms\n\
             \x20     age 95 s, handshake 35 s ago; 1.5 MiB out, 50.0 MiB in (3.3% padding)\n\
             \x20   leg 4 building: ; rtt ?\n\
             \x20     age 1 s, no handshake yet; 900 B out, 0 B in (0.0% padding)\n\
             \x20 guards AbCdEfGh QrStUvWx; 8 gateways known\n"
        );
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
        let mut off = v;
        off["kill_switch"] = serde_json::Value::Bool(false);
        assert!(status_text(&off).contains("kill switch NOT INSTALLED"));
    }
}
