//! `anonnet up` and `anonnet down`: setting the client up (its data plane is
//! `client_plane.rs`) and tearing it down.
use std::net::IpAddr;
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
use crate::runtime::daemon::Daemon;
use crate::runtime::driver::Driver;
use crate::runtime::gateway::{gateway_discovery, gateway_node_config};
use crate::runtime::paths::{Chosen, Paths};
use crate::runtime::replay;
use crate::runtime::tun;
use crate::runtime::{client_node_config, flush_stdout, CLIENT_BINDS};
use crate::sys;

pub(crate) fn client_net(cfg: &ClientConfig) -> sys::ClientNet {
    let t = &cfg.tunnel;
    sys::ClientNet {
        tun: t.name.clone(),
        addrs: vec![
            IpNet::V4(Ipv4Net::from(CLIENT_V4)),
            IpNet::V6(Ipv6Net::from(CLIENT_V6)),
        ],
        mtu: t.mtu,
        fwmark: t.fwmark,
        table: t.table,
        gateways: cfg.path.first().map(|h| h.addr).into_iter().collect(),
        relay_ports: cfg
            .relay
            .as_ref()
            .map(|g| (g.listen_ports.first, g.listen_ports.last)),
        dns: if t.dns {
            vec![IpAddr::V4(DNS_V4), IpAddr::V6(DNS_V6)]
        } else {
            Vec::new()
        },
        state_dir: t.state_dir.clone(),
    }
}

/// Builds a circuit and waits until it is up or has failed.
pub(crate) async fn build(
    d: &mut Driver,
    specs: &[HopSpec],
    events: &mut Vec<Event>,
) -> Result<CircuitId, String> {
    let start = Instant::now();
    let id = d
        .node
        .build_circuit(start, &mut d.rng, specs, Service::Exit)
        .map_err(|e| e.to_string())?;
    d.flush().await;
    loop {
        d.step(events).await;
        for e in events.drain(..) {
            match e {
                Event::CircuitUp(c) if c == id => return Ok(id),
                Event::CircuitDown(c, why) if c == id => return Err(format!("{why:?}")),
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
    let net = client_net(cfg);
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
    let armed = sys::kill_switch_armed()?;
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
    let circuit = match build(&mut d, &specs, &mut events).await {
        Ok(c) => {
            if let Some(share) = padding_share {
                d.node.limit_padding(c, share);
            }
            c
        }
        Err(why) => bail!(
            "no reachable gateway: the circuit through {} hops (entry {entry}) did not come up within {:.0} s ({why}); check the gateways' addresses, keys and that they run",
            specs.len(),
            cfg.build_timeout().as_secs_f64(),
        ),
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
        "anonnet up: {} {CLIENT_V4} {CLIENT_V6} mtu {} through {} hops (entry {entry}), circuit built in {build_ms} ms{relaying}",
        net.tun,
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

/// `anonnet up --config FILE`.
pub async fn up(path: &Path) -> Result<ExitCode> {
    let cfg = config::load_client(path)?;
    crate::runtime::state::adopt_old_default(&cfg.tunnel.state_dir);
    let mut daemon = start(&cfg).await?;
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
    crate::runtime::state::adopt_old_default(state_dir);
    let removed = sys::client_down(state_dir).await?;
    if removed.is_empty() {
        println!("anonnet down: nothing to remove");
    }
    for line in removed {
        println!("anonnet down: {line}");
    }
    Ok(ExitCode::SUCCESS)
}
