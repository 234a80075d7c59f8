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
use crate::client::flows::{CircuitPool, FlowRouter, Route, NO_EXIT_HOLD};
use crate::client::host_packets::{clamp_mss, refusal};
use crate::config::identity_file;
use crate::config::{self, ClientConfig};
use crate::node::{CircuitId, DataPath, DownReason, Event, HopSpec, Node, Toward};
use crate::proto::addr::{CLIENT_V4, CLIENT_V6, DNS_V4, DNS_V6};
use crate::proto::identity::PublicKey;
use crate::proto::wire::{Service, PAYLOAD_OFFSET};
use crate::runtime::daemon::Daemon;
use crate::runtime::driver::{logged, Driver};
use crate::runtime::gateway::{gateway_discovery, gateway_node_config};
use crate::runtime::paths::{path_for, Paths};
use crate::runtime::pool::Pool;
use crate::runtime::replay;
use crate::runtime::tun::{self, TunReader, TunWriter};
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

/// The client's data plane: the TUN device, the kernel state that routes the
/// host's traffic into the tunnel (with its kill switch), where paths come from,
/// the circuit pool, the flow router and the TCP connections it tracks. The
/// daemon's loop ([`Daemon`]) hands it events, TUN packets and its deadlines.
pub(crate) struct ClientPlane {
    tun: Arc<AsyncDevice>,
    tun_tx: TunWriter,
    net: sys::ClientNet,
    paths: Paths,
    pool: CircuitPool,
    router: FlowRouter,
    conns: Connections,
    /// Each circuit's path, to blame the gateway that failed under it.
    paths_of: HashMap<CircuitId, Vec<HopSpec>>,
    /// The pool's open circuits, refreshed after each turn's events.
    open_ids: Vec<CircuitId>,
    /// A reset or ICMP error the client answers itself.
    answer: Vec<u8>,
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
    tracing::info!("circuit {} up through {}", circuit.0, hops_text(&specs));
    let pool = CircuitPool::new(
        cfg.circuits,
        Duration::from_secs(cfg.circuit_lifetime_secs),
        Instant::now(),
        circuit,
        specs.last().map(|h| h.key).unwrap_or_default(),
        exit_ports,
    );
    let client = ClientPlane {
        tun_tx: TunWriter::new(Arc::clone(&tun)),
        tun,
        net,
        paths,
        pool,
        router: FlowRouter::new(cfg.isolation),
        conns: Connections::new(),
        paths_of: HashMap::from([(circuit, specs)]),
        open_ids: Vec::new(),
        answer: Vec::new(),
    };
    Ok(Daemon::new(
        d,
        Some(client),
        None,
        relay.map(|(_, discovery, _)| discovery),
    ))
}

impl ClientPlane {
    pub(crate) fn spawn_reader(&self, pool: Pool) -> TunReader {
        tun::spawn_reader(Arc::clone(&self.tun), pool, self.net.mtu as usize)
    }

    pub(crate) fn tun_name(&self) -> &str {
        &self.net.tun
    }

    /// When the pool next wants a turn (a build to pace, a circuit to retire).
    pub(crate) fn poll_timeout(&self, now: Instant) -> Option<Instant> {
        self.pool.poll_timeout(now)
    }

    /// A packet from one of the pool's circuits (to the TUN device), or a circuit
    /// coming up or going down.
    pub(crate) async fn on_event(
        &mut self,
        d: &mut Driver,
        data: &mut DataPath,
        now: Instant,
        e: Event,
    ) {
        match e {
            Event::Data {
                circuit: c,
                mut buf,
                range,
            } if self.pool.contains(c) => {
                if let Some(p) = logged(data.receive(now, c, &mut buf[range])) {
                    clamp_mss(p);
                    self.tun_tx.push(p).await;
                }
                d.sockets.pool.put(buf);
            }
            Event::CircuitUp(c) => {
                self.pool.on_up(c);
                if let Some(path) = self.paths_of.get(&c) {
                    tracing::info!("circuit {} up through {}", c.0, hops_text(path));
                }
            }
            Event::CircuitDown(c, why) => self.circuit_down(data, now, c, why).await,
            Event::Data { buf, .. } | Event::ServiceData { buf, .. } => d.sockets.pool.put(buf),
            Event::ServiceClosed(..) => {}
        }
    }

    async fn circuit_down(
        &mut self,
        data: &mut DataPath,
        now: Instant,
        c: CircuitId,
        why: DownReason,
    ) {
        if !self.pool.on_down(now, c) {
            return;
        }
        self.router.forget_circuit(c);
        data.forget(c);
        let resets = self.conns.circuit_down(now, c);
        let path = self.paths_of.remove(&c).unwrap_or_default();
        let blamed = why.failed_hop().and_then(|i| Some((i, *path.get(i)?)));
        let avoided = match blamed {
            Some((i, hop)) => match self.paths.failed(now, hop.key) {
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
            self.tun_tx.push(&rst).await;
        }
        if self.pool.all_down() {
            eprintln!("anonnet: circuit down ({why:?}); traffic is blocked until one is rebuilt");
        }
    }

    /// Keeps the pool filled: builds the circuit it wants (letting its entry out
    /// through the kill switch), retires old circuits, and notes which are open.
    pub(crate) async fn maintain(
        &mut self,
        d: &mut Driver,
        data: &mut DataPath,
        now: Instant,
    ) -> Result<()> {
        if let Some(want) = self.pool.wants_build(now) {
            match path_for(&mut self.paths, &mut d.rng, &want) {
                Ok((specs, ports)) => {
                    if let Some(entry) = specs.first().map(|h| h.addr) {
                        if !self.net.gateways.contains(&entry) {
                            self.net.gateways.push(entry);
                            sys::client_set_gateways(&self.net).await?;
                        }
                    }
                    let exit = specs.last().map(|h| h.key).unwrap_or_default();
                    let id = d
                        .node
                        .build_circuit(now, &mut d.rng, &specs, Service::Exit)
                        .map_err(|e| anyhow::anyhow!("cannot build a circuit: {e}"))?;
                    self.pool.building(now, id, exit, ports);
                    tracing::info!("circuit {} building through {}", id.0, hops_text(&specs));
                    self.paths_of.insert(id, specs);
                }
                Err(e) => match want.port {
                    Some(port) => {
                        eprintln!(
                            "anonnet: no known exit accepts port {port}; refusing it for {} s ({e:#})",
                            NO_EXIT_HOLD.as_secs()
                        );
                        self.pool.no_exit(now, port);
                    }
                    None => {
                        tracing::warn!("{e:#}");
                        self.pool.build_failed(now);
                    }
                },
            }
        }
        for c in self.pool.retire(now, &mut self.router) {
            data.forget(c);
            self.paths_of.remove(&c);
            for rst in self.conns.circuit_down(now, c) {
                self.tun_tx.push(&rst).await;
            }
            d.node.close_circuit(c);
        }
        self.pool.open(now, &mut self.open_ids);
        Ok(())
    }

    /// A packet the host sent: refused (a connection whose circuit died), routed
    /// into a circuit, or held while its flow waits for one.
    pub(crate) async fn on_tun_packet(
        &mut self,
        d: &mut Driver,
        data: &mut DataPath,
        now: Instant,
        mut buf: Vec<u8>,
    ) {
        let pkt = &buf[PAYLOAD_OFFSET..];
        let seg = Segment::parse(pkt);
        if let Some(seg) = &seg {
            if self.conns.refuse(now, seg, &mut self.answer) {
                if !self.answer.is_empty() {
                    self.tun_tx.push(&self.answer).await;
                }
                d.sockets.pool.put(buf);
                return;
            }
        }
        match self
            .router
            .route(now, &mut d.rng, pkt, &self.pool, &self.open_ids)
        {
            Route::Via(c) => {
                if let Some(seg) = &seg {
                    self.conns.carried(now, seg, c);
                }
                clamp_mss(&mut buf[PAYLOAD_OFFSET..]);
                d.send_packet(now, data, Toward::Forward(c), buf).await;
                return;
            }
            Route::NoExit(port) if !self.pool.demand(now, port) => {
                if refusal(pkt, &mut self.answer) {
                    self.tun_tx.push(&self.answer).await;
                }
            }
            Route::NoExit(_) | Route::Wait => {}
        }
        d.sockets.pool.put(buf);
    }

    pub(crate) async fn flush_tun(&mut self) {
        self.tun_tx.flush().await;
    }

    /// Closes every circuit of the pool (when the daemon stops).
    pub(crate) fn close(&mut self, d: &mut Driver) {
        for c in self.pool.ids() {
            d.node.close_circuit(c);
        }
    }

    /// Removes the TUN device and everything `start` set up in the kernel; returns
    /// what was removed.
    pub(crate) async fn stop(self) -> Result<Vec<String>> {
        drop(self.tun_tx);
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
    let mut daemon = start(&cfg).await?;
    let result = daemon.run().await;
    let cleaned = daemon.stop().await;
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
