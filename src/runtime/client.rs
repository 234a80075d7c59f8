//! `anonnet up` and `anonnet down`: the client with its TUN device.
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tun_rs::AsyncDevice;

use crate::client::conns::{Connections, Segment};
use crate::client::flows::{CircuitPool, FlowRouter, Isolation, Route, NO_EXIT_HOLD};
use crate::client::packets::{clamp_mss, refusal};
use crate::config::identity_file;
use crate::config::{self, ClientConfig};
use crate::node::{CircuitId, DataPath, Event, HopSpec, Node, Toward};
use crate::proto::addr::{CLIENT_V4, CLIENT_V6, DNS_V4, DNS_V6};
use crate::proto::identity::PublicKey;
use crate::proto::ports::PortSummary;
use crate::proto::wire::{Service, PAYLOAD_OFFSET};
use crate::runtime::driver::{logged, Driver};
use crate::runtime::gateway::gateway_node_config;
use crate::runtime::paths::{path_for, Paths};
use crate::runtime::replay;
use crate::runtime::services::{services_wake, GatewayServices};
use crate::runtime::tun::{self, TunWriter};
use crate::runtime::{client_node_config, flush_stdout, Signals, CLIENT_BINDS};
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

/// The client's settings for its pool of circuits.
pub(crate) struct PoolSettings {
    circuits: usize,
    lifetime: Duration,
    isolation: Isolation,
}

/// The client's data plane, from set-up to tear-down: the TUN device, the sockets
/// and node ([`Driver`]), where paths come from, the circuit pool and flow router,
/// the optional relay services of mixed mode, and the kernel state that routes the
/// host's traffic into the tunnel (with its kill switch).
///
/// [`Client::start`] sets it all up and returns only once the first circuit is up
/// and traffic is routed; [`Client::run`] moves packets until SIGINT or SIGTERM and
/// then closes its circuits; [`Client::stop`] removes everything `start` set up.
pub struct Client {
    d: Driver,
    tun: Arc<AsyncDevice>,
    net: sys::ClientNet,
    paths: Paths,
    /// The circuit `start` built: its id, its path and the ports its exit accepts.
    first: (CircuitId, Vec<HopSpec>, Option<PortSummary>),
    settings: PoolSettings,
    relay: Option<GatewayServices>,
}

impl Client {
    /// Checks the host, creates the TUN device and sockets, finds a path (crawling
    /// for gateways if the cache has none), builds the first circuit, and routes the
    /// host's traffic into the tunnel. Prints the readiness line scripts wait for.
    pub async fn start(cfg: &ClientConfig) -> Result<Self> {
        let net = client_net(cfg);
        sys::client_preflight(&net).await?;
        let relay = match &cfg.relay {
            Some(g) => {
                let id = identity_file::read(&g.identity)?;
                Some((g, GatewayServices::new(g, id.clone(), None)?, id))
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
        let (specs, exit_ports) = paths.next(&mut d.rng, None)?;
        let entry = specs.first().map(|h| h.addr).context("the path is empty")?;
        if armed && !net.gateways.contains(&entry) {
            net.gateways.push(entry);
            sys::client_set_gateways(&net).await?;
        }
        net.gateways = vec![entry];
        let mut events = Vec::new();
        let started = Instant::now();
        let circuit = match build(&mut d, &specs, &mut events).await {
            Ok(c) => c,
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
        Ok(Self {
            d,
            tun,
            net,
            paths,
            first: (circuit, specs, exit_ports),
            settings: PoolSettings {
                circuits: cfg.circuits,
                lifetime: Duration::from_secs(cfg.circuit_lifetime_secs),
                isolation: cfg.isolation,
            },
            relay: relay.map(|(_, services, _)| services),
        })
    }

    /// Moves packets between the TUN device and circuits, keeps the pool of
    /// circuits filled, and serves mixed mode's relay, until SIGINT or SIGTERM; then
    /// closes its circuits.
    pub async fn run(&mut self) -> Result<()> {
        let Self {
            d,
            tun: device,
            net,
            paths,
            first,
            settings,
            relay,
        } = self;
        let mut signals = Signals::new()?;
        let mut tun_rx =
            tun::spawn_reader(Arc::clone(device), d.sockets.pool.clone(), net.mtu as usize);
        let mut tun_tx = TunWriter::new(Arc::clone(device));
        let mut events = Vec::new();
        let mut packets = Vec::new();
        let mut data = DataPath::default();
        let mut pool = CircuitPool::new(
            settings.circuits,
            settings.lifetime,
            Instant::now(),
            first.0,
            first.1.last().map(|h| h.key).unwrap_or_default(),
            first.2.take(),
        );
        // Each circuit's path, to blame the gateway that failed under it.
        let mut paths_of: HashMap<CircuitId, Vec<HopSpec>> = HashMap::new();
        tracing::info!("circuit {} up through {}", first.0 .0, hops_text(&first.1));
        paths_of.insert(first.0, std::mem::take(&mut first.1));
        let mut router = FlowRouter::new(settings.isolation);
        let mut conns = Connections::new();
        let mut open_ids = Vec::new();
        let mut answer = Vec::new();
        loop {
            // The driver wakes for the node's deadlines and for the pool's.
            let wake = pool.poll_timeout(Instant::now());
            let open = tokio::select! {
                open = d.step_with(&mut events, Some(&mut tun_rx.rx), &mut packets, wake) => open,
                () = services_wake(relay.as_mut()) => true,
                () = signals.recv() => break,
            };
            if !open {
                bail!("the TUN device {} failed", net.tun);
            }
            let now = Instant::now();
            for e in events.drain(..) {
                let e = match relay.as_mut() {
                    Some(services) => match services.on_event(d, e).await {
                        Some(e) => e,
                        None => continue,
                    },
                    None => e,
                };
                match e {
                    Event::Data {
                        circuit: c,
                        mut buf,
                        range,
                    } if pool.contains(c) => {
                        if let Some(p) = logged(data.receive(now, c, &mut buf[range])) {
                            clamp_mss(p);
                            tun_tx.push(p).await;
                        }
                        d.sockets.pool.put(buf);
                    }
                    Event::CircuitUp(c) => {
                        pool.on_up(c);
                        if let Some(path) = paths_of.get(&c) {
                            tracing::info!("circuit {} up through {}", c.0, hops_text(path));
                        }
                    }
                    Event::CircuitDown(c, why) => {
                        if pool.on_down(now, c) {
                            router.forget_circuit(c);
                            data.forget(c);
                            let resets = conns.circuit_down(now, c);
                            let path = paths_of.remove(&c).unwrap_or_default();
                            let blamed = why.failed_hop().and_then(|i| Some((i, *path.get(i)?)));
                            let avoided = match blamed {
                                Some((i, hop)) => match paths.failed(now, hop.key) {
                                    Some(t) => format!(
                                        "; hop {} ({} at {}) failed: new paths avoid it for {} s",
                                        i + 1,
                                        PublicKey(hop.key),
                                        hop.addr,
                                        t.as_secs()
                                    ),
                                    None => format!("; hop {} ({}) failed", i + 1, hop.addr),
                                },
                                None => String::new(),
                            };
                            tracing::info!(
                                "circuit {} down ({why:?}){avoided}; {} TCP connection(s) on it reset",
                                c.0,
                                resets.len()
                            );
                            for rst in resets {
                                tun_tx.push(&rst).await;
                            }
                            if pool.all_down() {
                                eprintln!(
                                    "anonnet: circuit down ({why:?}); traffic is blocked until one is rebuilt"
                                );
                            }
                        }
                    }
                    Event::Data { buf, .. } | Event::ServiceData { buf, .. } => {
                        d.sockets.pool.put(buf)
                    }
                    Event::ServiceClosed(..) => {}
                }
            }
            if let Some(want) = pool.wants_build(now) {
                match path_for(paths, &mut d.rng, &want) {
                    Ok((specs, ports)) => {
                        if let Some(entry) = specs.first().map(|h| h.addr) {
                            if !net.gateways.contains(&entry) {
                                net.gateways.push(entry);
                                sys::client_set_gateways(net).await?;
                            }
                        }
                        let exit = specs.last().map(|h| h.key).unwrap_or_default();
                        let id = d
                            .node
                            .build_circuit(now, &mut d.rng, &specs, Service::Exit)
                            .map_err(|e| anyhow::anyhow!("cannot build a circuit: {e}"))?;
                        pool.building(now, id, exit, ports);
                        tracing::info!("circuit {} building through {}", id.0, hops_text(&specs));
                        paths_of.insert(id, specs);
                    }
                    Err(e) => match want.port {
                        Some(port) => {
                            eprintln!("anonnet: no known exit accepts port {port}; refusing it for {} s ({e:#})", NO_EXIT_HOLD.as_secs());
                            pool.no_exit(now, port);
                        }
                        None => {
                            tracing::warn!("{e:#}");
                            pool.build_failed(now);
                        }
                    },
                }
            }
            if let Some(services) = relay.as_mut() {
                services.tick(d).await?;
            }
            for c in pool.retire(now, &mut router) {
                data.forget(c);
                paths_of.remove(&c);
                for rst in conns.circuit_down(now, c) {
                    tun_tx.push(&rst).await;
                }
                d.node.close_circuit(c);
            }
            pool.open(now, &mut open_ids);
            for mut buf in packets.drain(..) {
                let pkt = &buf[PAYLOAD_OFFSET..];
                let seg = Segment::parse(pkt);
                if let Some(seg) = &seg {
                    if conns.refuse(now, seg, &mut answer) {
                        if !answer.is_empty() {
                            tun_tx.push(&answer).await;
                        }
                        d.sockets.pool.put(buf);
                        continue;
                    }
                }
                match router.route(now, &mut d.rng, pkt, &pool, &open_ids) {
                    Route::Via(c) => {
                        if let Some(seg) = &seg {
                            conns.carried(now, seg, c);
                        }
                        clamp_mss(&mut buf[PAYLOAD_OFFSET..]);
                        d.send_packet(now, &mut data, Toward::Forward(c), buf).await;
                        continue;
                    }
                    Route::NoExit(port) if !pool.demand(now, port) => {
                        if refusal(pkt, &mut answer) {
                            tun_tx.push(&answer).await;
                        }
                    }
                    Route::NoExit(_) | Route::Wait => {}
                }
                d.sockets.pool.put(buf);
            }
            tun_tx.flush().await;
            d.flush().await;
        }
        let ids: Vec<CircuitId> = pool.ids().collect();
        for c in ids {
            d.node.close_circuit(c);
        }
        d.node.shutdown();
        d.flush().await;
        Ok(())
    }

    /// Removes the TUN device and everything `start` set up in the kernel; returns
    /// what was removed.
    pub async fn stop(self) -> Result<Vec<String>> {
        drop(self.tun);
        sys::client_down(&self.net.state_dir)
            .await
            .context("cleaning up")
    }
}

/// A path as the logs show it: each hop's address, entry first.
fn hops_text(path: &[HopSpec]) -> String {
    let hops: Vec<String> = path.iter().map(|h| h.addr.to_string()).collect();
    hops.join(" -> ")
}

/// `anonnet up --config FILE`.
pub async fn up(path: &Path) -> Result<ExitCode> {
    let cfg = config::load_client(path)?;
    let mut client = Client::start(&cfg).await?;
    let result = client.run().await;
    let cleaned = client.stop().await;
    result?;
    for line in cleaned? {
        eprintln!("anonnet down: {line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `anonnet down`: removes what `up` set up, as recorded in `state_dir`.
pub async fn down(state_dir: &Path) -> Result<ExitCode> {
    let removed = sys::client_down(state_dir).await?;
    if removed.is_empty() {
        println!("anonnet down: nothing to remove");
    }
    for line in removed {
        println!("anonnet down: {line}");
    }
    Ok(ExitCode::SUCCESS)
}
