//! The long-running commands: `anonnet up` (the client with its TUN device),
//! `anonnet gateway [--exit]` and `anonnet down`.
//!
//! Like [`crate::runtime::driver`], these only move bytes: packets between a TUN device and
//! the core ([`Node`], [`Exit`], [`crate::proto::framing`]), and the kernel set-up of
//! [`crate::sys`] around them.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::signal::unix::{signal, SignalKind};
use tun_rs::AsyncDevice;

use crate::client::flows::{Build, CircuitPool, FlowRouter, Isolation, Route, NO_EXIT_HOLD};
use crate::client::path::{select_path, Guards, PathLength, PathRules, Subnets};
use crate::config::{self, ClientConfig};
use crate::discovery::{Store, REJECTION_GROUPS};
use crate::exit::packet;
use crate::exit::policy::ExitPolicy;
use crate::exit::policy::PortSummary;
use crate::exit::{Exit, ExitSettings, Verdict};
use crate::node::{CircuitId, Event, HopSpec, Node, NodeConfig, SendError, Transmit};
use crate::proto::framing::{
    self, Reassembler, CLIENT_V4, CLIENT_V6, DNS_V4, DNS_V6, EXIT_V4, EXIT_V6, MAX_FRAGMENTS,
};
use crate::proto::identity::Identity;
use crate::proto::wire::{Service, MAX_PAYLOAD, PAYLOAD_OFFSET};
use crate::runtime::directory::{self, load_cache, save_cache, unix_now, Crawl, Directory};
use crate::runtime::driver::Driver;
use crate::runtime::tun::{self, TunWriter};
use crate::sys;

/// TCP MSS that keeps a segment in one cell: the cell payload less the IPv4 (20)
/// or IPv6 (40) header and the TCP header (20).
const MSS_V4: u16 = (MAX_PAYLOAD - 40) as u16;
const MSS_V6: u16 = (MAX_PAYLOAD - 60) as u16;

fn flush_stdout() -> Result<()> {
    std::io::stdout().flush().context("cannot write to stdout")
}

/// Which way a packet enters a circuit.
#[derive(Clone, Copy)]
enum Toward {
    /// From the client, through its circuit.
    Forward(CircuitId),
    /// From the exit, back to the client of a circuit it terminates.
    Backward(CircuitId),
}

fn seal(
    d: &mut Driver,
    now: Instant,
    to: Toward,
    buf: Vec<u8>,
    len: usize,
) -> Result<Transmit, SendError> {
    match to {
        Toward::Forward(id) => d.node.send_data(now, &mut d.rng, id, buf, len),
        Toward::Backward(id) => d.node.send_backward(now, id, buf, len),
    }
}

/// Sends the packet in `buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + len]` into a circuit,
/// split into fragments if it does not fit in one cell.
async fn send_packet(
    d: &mut Driver,
    now: Instant,
    to: Toward,
    buf: Vec<u8>,
    len: usize,
    frag_id: &mut u16,
) {
    if len <= MAX_PAYLOAD {
        match seal(d, now, to, buf, len) {
            Ok(t) => d.sockets.send_recycle(t).await,
            Err(e) => tracing::debug!("packet dropped: {e}"),
        }
        return;
    }
    let count = framing::fragment_count(len);
    if count > MAX_FRAGMENTS {
        tracing::debug!(
            "packet of {len} bytes dropped: larger than {}",
            framing::MAX_PACKET
        );
        d.sockets.pool.put(buf);
        return;
    }
    let id = *frag_id;
    *frag_id = frag_id.wrapping_add(1);
    for i in 0..count {
        let mut f = d.sockets.pool.get();
        f.resize(PAYLOAD_OFFSET + MAX_PAYLOAD, 0);
        let n = framing::write_fragment(
            &buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + len],
            id,
            i,
            &mut f[PAYLOAD_OFFSET..],
        );
        match seal(d, now, to, f, n) {
            Ok(t) => d.sockets.send_recycle(t).await,
            Err(e) => tracing::debug!("fragment dropped: {e}"),
        }
    }
    d.sockets.pool.put(buf);
}

/// The packet a DATA payload completes, if any (a bad payload is logged and dropped).
fn unwrap_payload<'a>(
    now: Instant,
    payload: &'a mut [u8],
    reasm: &'a mut Reassembler,
) -> Option<&'a mut [u8]> {
    reasm.complete(now, payload).unwrap_or_else(|e| {
        tracing::debug!("payload dropped: {e}");
        None
    })
}

/// Lowers the MSS of TCP SYNs so that segments fit in one cell.
fn clamp(pkt: &mut [u8]) {
    let mss = if pkt.first().is_some_and(|b| b >> 4 == 6) {
        MSS_V6
    } else {
        MSS_V4
    };
    packet::clamp_mss(pkt, mss);
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

// ---- gateway ----------------------------------------------------------------------

/// The addresses of this host's interfaces (an exit rejects traffic to them).
fn own_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sa) = a.address else { continue };
            if let Some(v4) = sa.as_sockaddr_in() {
                out.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                out.push(IpAddr::V6(v6.ip()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `anonnet gateway [--exit] --config FILE`.
pub async fn gateway(path: &Path, exit: bool) -> Result<ExitCode> {
    let cfg = config::load_gateway(path)?;
    let id = Identity::read_file(&cfg.identity)?;
    let mut exit_side = if exit {
        Some(ExitSide::start(&cfg.exit).await?)
    } else {
        None
    };
    let services = match GatewayServices::new(&cfg, id.clone(), exit_side.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            if let Some(x) = exit_side.take() {
                x.stop().await;
            }
            return Err(e);
        }
    };
    let node = Node::new(NodeConfig {
        exit,
        ..gateway_node_config(&cfg, &id, NodeConfig::default())
    });
    let addrs: Vec<_> = cfg.listen_addrs().collect();
    let mtu = if exit { cfg.exit.mtu as usize } else { 0 };
    let d = match Driver::tunnel(node, &addrs, None, mtu) {
        Ok(d) => d,
        Err(e) => {
            if let Some(x) = exit_side.take() {
                x.stop().await;
            }
            return Err(e);
        }
    };
    let bound: Vec<String> = d.sockets.local_addrs().map(|a| a.to_string()).collect();
    // The readiness line scripts wait for.
    println!(
        "anonnet gateway {} listening on {}{}",
        id.public(),
        bound.join(" "),
        if exit {
            format!(" (exit via {})", cfg.exit.tun)
        } else {
            String::new()
        }
    );
    flush_stdout()?;
    let result = match exit_side {
        Some(mut x) => {
            let r = x.run(d, services).await;
            x.stop().await;
            r
        }
        None => relay_only(d, services).await,
    };
    result.map(|()| ExitCode::SUCCESS)
}

async fn relay_only(mut d: Driver, mut services: GatewayServices) -> Result<()> {
    let mut signals = Signals::new()?;
    let mut events = Vec::new();
    loop {
        tokio::select! {
            () = d.step(&mut events) => {}
            _ = services.wake.tick() => {}
            () = signals.recv() => break,
        }
        for e in events.drain(..) {
            if let Some(e) = services.on_event(&mut d, e).await {
                recycle(&d, e);
            }
        }
        services.tick(&mut d).await?;
    }
    eprintln!("anonnet gateway stopping: {:?}", d.node.stats());
    Ok(())
}

/// The node settings of a gateway config (relaying and the directory service), on
/// top of `base`.
fn gateway_node_config(cfg: &config::GatewayConfig, id: &Identity, base: NodeConfig) -> NodeConfig {
    NodeConfig {
        static_key: Some(*id.secret()),
        echo: cfg.echo,
        directory: true,
        idle_timeout: cfg.idle_timeout(),
        handshake_rate: cfg.handshake_rate,
        max_circuits: cfg.max_circuits,
        ..base
    }
}

/// Resolves when the gateway services (if any) want a turn.
async fn services_wake(services: Option<&mut GatewayServices>) {
    match services {
        Some(s) => {
            s.wake.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Returns an unclaimed event's buffer to the pool.
fn recycle(d: &Driver, e: Event) {
    if let Event::Data { buf, .. } | Event::ServiceData { buf, .. } = e {
        d.sockets.pool.put(buf);
    }
}

/// How often an idle gateway's loop wakes for its services.
const SERVICES_TICK: Duration = Duration::from_millis(250);
/// How often a gateway gossips with a few known peers.
const GOSSIP_INTERVAL: Duration = Duration::from_secs(300);

/// What every gateway runs besides relaying: its descriptor and directory service,
/// and gossip with other gateways.
struct GatewayServices {
    dir: Directory,
    bootstrap: Vec<HopSpec>,
    gossip: Option<Crawl>,
    next_gossip: Instant,
    /// Wakes the loop for gossip and re-signing when no traffic does.
    wake: tokio::time::Interval,
}

impl GatewayServices {
    fn new(cfg: &config::GatewayConfig, id: Identity, exit: Option<&ExitSide>) -> Result<Self> {
        let disc = &cfg.discovery;
        let addrs = if disc.publish.is_empty() {
            let specific: Vec<IpAddr> = cfg
                .listen
                .iter()
                .copied()
                .filter(|a| !a.is_unspecified())
                .collect();
            if specific.is_empty() {
                own_addresses().into_iter().filter(publishable).collect()
            } else {
                specific
            }
        } else {
            disc.publish.clone()
        };
        let addrs: Vec<IpAddr> = addrs
            .into_iter()
            .filter(publishable)
            .take(crate::proto::descriptor::MAX_ADDRS)
            .collect();
        if addrs.is_empty() {
            tracing::info!("no public address to publish: this gateway is not announced to others");
        }
        let dir = Directory::new(
            id,
            addrs,
            (cfg.listen_ports.first, cfg.listen_ports.last),
            exit.map(|x| x.policy_summary.clone()),
            disc.share,
            disc.rate,
            disc.descriptor_lifetime_secs,
        )?;
        let bootstrap = disc
            .bootstrap
            .iter()
            .map(|h| HopSpec {
                addr: h.addr,
                key: h.key.0,
            })
            .collect();
        Ok(Self {
            dir,
            bootstrap,
            gossip: None,
            next_gossip: Instant::now(),
            wake: tokio::time::interval(SERVICES_TICK),
        })
    }

    async fn on_event(&mut self, d: &mut Driver, e: Event) -> Option<Event> {
        let e = match self.gossip.as_mut() {
            Some(g) => g.on_event(d, &mut self.dir.store, e).await?,
            None => e,
        };
        match e {
            Event::ServiceData {
                circuit,
                service: Service::Directory,
                buf,
                range,
            } => {
                self.dir.on_request(d, circuit, &buf[range]).await;
                d.sockets.pool.put(buf);
                None
            }
            Event::ServiceClosed(circuit, Service::Directory) => {
                self.dir.closed(circuit);
                None
            }
            other => Some(other),
        }
    }

    async fn tick(&mut self, d: &mut Driver) -> Result<()> {
        self.dir.tick()?;
        let now = Instant::now();
        if self.gossip.is_none() && now >= self.next_gossip {
            self.gossip = Some(Crawl::gossip(
                std::mem::take(&mut self.bootstrap),
                self.dir.own(),
            ));
            self.next_gossip = now + GOSSIP_INTERVAL;
        }
        if let Some(g) = self.gossip.as_mut() {
            g.advance(d, &self.dir.store).await;
            if g.done(&self.dir.store) {
                self.gossip = None;
                self.dir.store.expire(unix_now());
            }
        }
        Ok(())
    }
}

/// Whether an address belongs in a published descriptor (not loopback, link-local,
/// unspecified or multicast).
fn publishable(a: &IpAddr) -> bool {
    match a {
        IpAddr::V4(v4) => {
            !(v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_multicast())
        }
        IpAddr::V6(v6) => {
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// The exit's TUN device, kernel set-up and packet logic.
struct ExitSide {
    policy_summary: String,
    tun: Arc<AsyncDevice>,
    net: sys::ExitNet,
    saved: sys::ExitGuardState,
    exit: Exit,
    mtu: usize,
}

impl ExitSide {
    async fn start(cfg: &config::ExitConfig) -> Result<Self> {
        let own = own_addresses();
        let policy = ExitPolicy::new(&cfg.policy, &own).context("exit.policy")?;
        let policy_summary = policy.summary();
        let dns_upstream = if cfg.dns_upstream.is_empty() {
            sys::system_resolvers()
        } else {
            cfg.dns_upstream.clone()
        };
        if dns_upstream.is_empty() {
            tracing::warn!("no DNS upstream (exit.dns_upstream unset and no nameserver in /etc/resolv.conf): clients' DNS will fail");
        }
        let net = sys::ExitNet {
            tun: cfg.tun.clone(),
            addrs: vec![
                IpNet::V4(Ipv4Net::from(EXIT_V4)),
                IpNet::V6(Ipv6Net::from(EXIT_V6)),
            ],
            mtu: cfg.mtu,
            pool4: cfg.pool4,
            pool6: cfg.pool6,
            dns: vec![IpAddr::V4(DNS_V4), IpAddr::V6(DNS_V6)],
            dns_upstream,
        };
        let tun = tun::create(&cfg.tun, tun::offload_from_env())?;
        let saved = match sys::exit_up(&net).await {
            Ok(s) => s,
            Err(e) => {
                drop(tun);
                return Err(e.context("cannot set up the exit's routes and NAT"));
            }
        };
        let exit = Exit::new(ExitSettings {
            pool4: cfg.pool4,
            pool6: cfg.pool6,
            policy,
            max_flows: cfg.max_flows,
            max_pps: cfg.max_pps,
        });
        Ok(Self {
            policy_summary,
            tun,
            net,
            saved,
            exit,
            mtu: cfg.mtu as usize,
        })
    }

    async fn stop(self) {
        if let Err(e) = sys::exit_down(&self.net, &self.saved).await {
            eprintln!("anonnet: error: cleaning up the exit: {e:#}");
        }
    }

    async fn run(&mut self, mut d: Driver, mut services: GatewayServices) -> Result<()> {
        let mut signals = Signals::new()?;
        let mut tun_rx = tun::spawn_reader(Arc::clone(&self.tun), d.sockets.pool.clone(), self.mtu);
        let mut tun_tx = TunWriter::new(Arc::clone(&self.tun));
        let mut events = Vec::new();
        let mut packets = Vec::new();
        let mut reasm: HashMap<CircuitId, Reassembler> = HashMap::new();
        let mut answer = Vec::new();
        let mut frag_id = 0u16;
        loop {
            let open = tokio::select! {
                open = d.step_with(&mut events, Some(&mut tun_rx.rx), &mut packets) => open,
                _ = services.wake.tick() => true,
                () = signals.recv() => break,
            };
            if !open {
                bail!("the TUN device {} failed", self.net.tun);
            }
            let now = Instant::now();
            for e in events.drain(..) {
                let Some(e) = services.on_event(&mut d, e).await else {
                    continue;
                };
                match e {
                    Event::ServiceData {
                        circuit,
                        service: Service::Exit,
                        mut buf,
                        range,
                    } => {
                        let r = reasm.entry(circuit).or_default();
                        if let Some(p) = unwrap_payload(now, &mut buf[range], r) {
                            match self.exit.from_circuit(now, circuit, p, &mut answer) {
                                Verdict::Forward => tun_tx.push(p).await,
                                Verdict::Answer => {
                                    let mut out = d.sockets.pool.get();
                                    out.resize(PAYLOAD_OFFSET + answer.len(), 0);
                                    out[PAYLOAD_OFFSET..].copy_from_slice(&answer);
                                    let len = answer.len();
                                    send_packet(
                                        &mut d,
                                        now,
                                        Toward::Backward(circuit),
                                        out,
                                        len,
                                        &mut frag_id,
                                    )
                                    .await;
                                }
                                Verdict::Drop => {}
                            }
                        }
                        d.sockets.pool.put(buf);
                    }
                    Event::ServiceClosed(circuit, _) => {
                        self.exit.close(circuit);
                        reasm.remove(&circuit);
                    }
                    Event::Data { buf, .. } | Event::ServiceData { buf, .. } => {
                        d.sockets.pool.put(buf);
                    }
                    Event::CircuitUp(_) | Event::CircuitDown(..) => {}
                }
            }
            services.tick(&mut d).await?;
            for mut buf in packets.drain(..) {
                let len = buf.len() - PAYLOAD_OFFSET;
                match self.exit.from_tun(&mut buf[PAYLOAD_OFFSET..]) {
                    Some(c) => {
                        send_packet(&mut d, now, Toward::Backward(c), buf, len, &mut frag_id).await
                    }
                    None => d.sockets.pool.put(buf),
                }
            }
            tun_tx.flush().await;
        }
        eprintln!(
            "anonnet gateway stopping: {:?} {:?}",
            d.node.stats(),
            self.exit.stats()
        );
        Ok(())
    }
}

// ---- client -----------------------------------------------------------------------

/// A client binds an ephemeral port on every IPv4 and IPv6 address.
pub const CLIENT_BINDS: [SocketAddr; 2] = [
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
    SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0),
];

/// The node settings of a client config.
#[must_use]
pub fn client_node_config(cfg: &ClientConfig) -> NodeConfig {
    NodeConfig {
        keepalive: cfg.keepalive(),
        circuit_timeout: cfg.circuit_timeout(),
        build_timeout: cfg.build_timeout(),
        padding: cfg.padding_classes().into_iter().map(usize::from).collect(),
        ..NodeConfig::default()
    }
}

/// The hops of a config path, as the node takes them.
#[must_use]
pub fn hop_specs(hops: &[config::HopConfig]) -> Vec<HopSpec> {
    hops.iter()
        .map(|h| HopSpec {
            addr: h.addr,
            key: h.key.0,
        })
        .collect()
}

/// How long a client crawls for gateways at most before giving up.
const CRAWL_LIMIT: Duration = Duration::from_secs(60);
/// Name of the guard state in the state directory.
const GUARDS_FILE: &str = "guards.toml";

/// Where a client's paths come from: the config's fixed path, or the gateways it
/// discovered, with sticky entry guards.
enum Paths {
    Fixed(Vec<HopSpec>),
    Discovered {
        store: Box<Store>,
        guards: Guards,
        rules: PathRules,
        state_dir: std::path::PathBuf,
        /// Mixed mode: this process's own gateway key, never a hop of its paths.
        own: Option<[u8; 32]>,
    },
}

impl Paths {
    /// The configured path, or discovery: the cache in the state directory, and a
    /// crawl from the bootstrap gateways when the cache cannot give a path.
    async fn new(cfg: &ClientConfig, d: &mut Driver, own: Option<[u8; 32]>) -> Result<Self> {
        if !cfg.path.is_empty() {
            if let Some(i) = cfg.path.iter().position(|h| Some(h.key.0) == own) {
                bail!("client.path[{i}] is this process's own gateway (client.mode = \"mixed\"): its paths must go through other gateways");
            }
            return Ok(Self::Fixed(hop_specs(&cfg.path)));
        }
        let disc = &cfg.discovery;
        let state_dir = cfg.tunnel.state_dir.clone();
        let rules = PathRules {
            length: if disc.hops.0 == disc.hops.1 {
                PathLength::Fixed(disc.hops.0)
            } else {
                PathLength::Range(disc.hops.0, disc.hops.1)
            },
            subnets: Subnets {
                v4: disc.subnet_v4,
                v6: disc.subnet_v6,
            },
        };
        let guards = std::fs::read_to_string(state_dir.join(GUARDS_FILE))
            .ok()
            .and_then(|t| Guards::from_toml(&t).ok())
            .unwrap_or_else(|| Guards::new(disc.guards, disc.guard_lifetime_days * 86_400))
            .with_subnets(rules.subnets);
        let store = load_store(&state_dir);
        let mut paths = Self::Discovered {
            store: Box::new(store),
            guards,
            rules,
            state_dir: state_dir.clone(),
            own,
        };
        if paths.next(&mut d.rng, None).is_err() {
            if let Self::Discovered { store, .. } = &mut paths {
                eprintln!(
                    "anonnet: discovering gateways from {} bootstrap gateway(s)",
                    disc.bootstrap.len()
                );
                directory::crawl(
                    d,
                    store,
                    disc.target,
                    hop_specs(&disc.bootstrap),
                    CRAWL_LIMIT,
                    |_, _| {},
                )
                .await;
                if let Err(e) = save_cache(&state_dir, store) {
                    tracing::warn!("{e:#}");
                }
            }
        }
        Ok(paths)
    }

    /// A fresh path (the fixed one, or a random one by the path rules whose exit
    /// accepts destination port `port`), with the ports its exit's descriptor accepts
    /// (`None` for a configured path).
    fn next(
        &mut self,
        rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
        port: Option<u16>,
    ) -> Result<(Vec<HopSpec>, Option<PortSummary>)> {
        match self {
            Self::Fixed(specs) => Ok((specs.clone(), None)),
            Self::Discovered {
                store,
                guards,
                rules,
                state_dir,
                own,
            } => {
                let mut cands = store.candidates();
                cands.retain(|c| Some(c.key) != *own);
                let keys = guards.refresh(rng, &cands, unix_now());
                let tmp = state_dir.join(format!("{GUARDS_FILE}.tmp"));
                let saved = std::fs::create_dir_all(&*state_dir)
                    .and_then(|()| std::fs::write(&tmp, guards.to_toml()))
                    .and_then(|()| std::fs::rename(&tmp, state_dir.join(GUARDS_FILE)));
                if let Err(e) = saved {
                    tracing::warn!(
                        "cannot save the entry guards in {}: {e}",
                        state_dir.display()
                    );
                }
                let path = select_path(rng, &cands, rules, &keys, port).map_err(|e| {
                    anyhow::anyhow!("no path through the {} known gateways: {e}", cands.len())
                })?;
                let ports = path.last().and_then(|&i| cands[i].exit_ports.clone());
                let specs = path
                    .into_iter()
                    .map(|i| HopSpec {
                        addr: SocketAddr::new(cands[i].addrs[0], cands[i].port),
                        key: cands[i].key,
                    })
                    .collect();
                Ok((specs, ports))
            }
        }
    }
}

/// The descriptor cache of a state directory; a corrupt one is reported, and
/// rebuilt by the next crawl.
fn load_store(dir: &Path) -> Store {
    let (store, report) = load_cache(dir);
    if let Some(r) = report {
        if r.corrupt {
            eprintln!(
                "anonnet: the descriptor cache in {} is damaged: kept {} gateways, it will be rebuilt",
                dir.display(),
                r.loaded
            );
        }
    }
    store
}

/// `anonnet discover --config FILE [--json]`: learns the network from the cache and
/// the bootstrap gateways and prints what it knows.
pub async fn discover_cmd(path: &Path, json: bool) -> Result<ExitCode> {
    let cfg = config::load_client(path)?;
    let disc = &cfg.discovery;
    if disc.bootstrap.is_empty() {
        bail!("{}: discovery.bootstrap is empty: list at least one gateway (\"ADDR:PORT PUBLIC-KEY\")", path.display());
    }
    let mut d = Driver::new(Node::new(client_node_config(&cfg)), &CLIENT_BINDS)?;
    let mut store = load_store(&cfg.tunnel.state_dir);
    let cached = store.len();
    let before = *store.stats();
    let mut last = Instant::now();
    let st = directory::crawl(
        &mut d,
        &mut store,
        disc.target,
        hop_specs(&disc.bootstrap),
        CRAWL_LIMIT,
        |s, st| {
            if last.elapsed() >= Duration::from_millis(250) {
                last = Instant::now();
                eprint!(
                    "\rdiscovering: {} gateways known, {} queries ({} answered, {} refused)   ",
                    s.len(),
                    st.queries,
                    st.answered,
                    st.refused
                );
            }
        },
    )
    .await;
    eprintln!(
        "\rdiscovery done: {} gateways known ({cached} from the cache); {} queries, {} answered, {} refused, {} unreachable",
        store.len(),
        st.queries,
        st.answered,
        st.refused,
        st.unreachable + st.timed_out
    );
    // What the store refused during this crawl, by reason (forged or stale
    // descriptors show up here).
    let (now, then) = (
        store.stats().rejected_by_reason(),
        before.rejected_by_reason(),
    );
    let reasons: Vec<String> = REJECTION_GROUPS
        .iter()
        .zip(now.iter().zip(then))
        .map(|(name, (n, t))| format!("{} {name}", n - t))
        .collect();
    eprintln!(
        "discovery rejected {} of {} descriptors received: {}; {} kept as contenders",
        st.descriptors - st.accepted,
        st.descriptors,
        reasons.join(", "),
        store.stats().contenders - before.contenders,
    );
    if let Err(e) = save_cache(&cfg.tunnel.state_dir, &store) {
        eprintln!("anonnet: warning: {e:#}");
    }
    let now = unix_now();
    let mut rows: Vec<_> = store.iter().map(|e| e.descriptor().clone()).collect();
    rows.sort_by_key(|r| r.addrs.first().copied());
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "key": crate::proto::identity::PublicKey(r.onion_key).to_string(),
                    "addrs": r.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "ports": [r.ports.0, r.ports.1],
                    "exit": r.exit,
                    "policy": r.policy_summary,
                    "published": r.published,
                    "expires": r.expires,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).context("cannot format JSON")?
        );
    } else {
        println!(
            "{:<46} {:<34} {:<11} {:<4} {:>8}  POLICY",
            "KEY", "ADDRESSES", "PORTS", "EXIT", "EXPIRES"
        );
        for r in &rows {
            let addrs: Vec<String> = r.addrs.iter().map(ToString::to_string).collect();
            let ports = if r.ports.0 == r.ports.1 {
                r.ports.0.to_string()
            } else {
                format!("{}-{}", r.ports.0, r.ports.1)
            };
            println!(
                "{:<46} {:<34} {:<11} {:<4} {:>7}m  {}",
                crate::proto::identity::PublicKey(r.onion_key).to_string(),
                addrs.join(","),
                ports,
                if r.exit { "yes" } else { "no" },
                r.expires.saturating_sub(now) / 60,
                r.policy_summary
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn client_net(cfg: &ClientConfig) -> sys::ClientNet {
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
async fn build(
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

/// `anonnet up --config FILE`.
pub async fn up(path: &Path) -> Result<ExitCode> {
    let cfg = config::load_client(path)?;
    let net = client_net(&cfg);
    sys::client_preflight(&net).await?;
    let relay = match &cfg.relay {
        Some(g) => {
            let id = Identity::read_file(&g.identity)?;
            Some((g, GatewayServices::new(g, id.clone(), None)?, id))
        }
        None => None,
    };
    let tun = tun::create(&net.tun, tun::offload_from_env())?;
    let (node, binds) = match &relay {
        Some((g, _, id)) => (
            Node::new(gateway_node_config(g, id, client_node_config(&cfg))),
            g.listen_addrs().collect(),
        ),
        None => (Node::new(client_node_config(&cfg)), CLIENT_BINDS.to_vec()),
    };
    let mut d = Driver::tunnel(node, &binds, Some(net.fwmark), net.mtu as usize)?;
    let own = relay.as_ref().map(|(_, _, id)| id.public().0);
    let mut paths = Paths::new(&cfg, &mut d, own).await?;
    let (specs, exit_ports) = paths.next(&mut d.rng, None)?;
    let entry = specs.first().map(|h| h.addr).context("the path is empty")?;
    let mut net = net;
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
    let settings = PoolSettings {
        circuits: cfg.circuits,
        lifetime: Duration::from_secs(cfg.circuit_lifetime_secs),
        isolation: cfg.isolation,
    };
    let exit_key = specs.last().map(|h| h.key).unwrap_or_default();
    let result = client_loop(
        &mut d,
        &tun,
        &mut net,
        &mut paths,
        (circuit, exit_key, exit_ports),
        &settings,
        relay.map(|(_, services, _)| services),
    )
    .await;
    drop(tun);
    let cleaned = sys::client_down(&net.state_dir).await;
    result?;
    for line in cleaned.context("cleaning up")? {
        eprintln!("anonnet down: {line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The client's settings for its pool of circuits.
struct PoolSettings {
    circuits: usize,
    lifetime: Duration,
    isolation: Isolation,
}

/// A path for `build` whose exit differs from the ones it avoids where the known
/// gateways allow.
fn path_for(
    paths: &mut Paths,
    rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
    build: &Build,
) -> Result<(Vec<HopSpec>, Option<PortSummary>)> {
    let mut path = paths.next(rng, build.port)?;
    for _ in 0..4 {
        match path.0.last() {
            Some(h) if build.avoid.contains(&h.key) => path = paths.next(rng, build.port)?,
            _ => break,
        }
    }
    Ok(path)
}

async fn client_loop(
    d: &mut Driver,
    tun: &Arc<AsyncDevice>,
    net: &mut sys::ClientNet,
    paths: &mut Paths,
    first: (CircuitId, [u8; 32], Option<PortSummary>),
    settings: &PoolSettings,
    mut relay: Option<GatewayServices>,
) -> Result<()> {
    let mut signals = Signals::new()?;
    let mut tun_rx = tun::spawn_reader(Arc::clone(tun), d.sockets.pool.clone(), net.mtu as usize);
    let mut tun_tx = TunWriter::new(Arc::clone(tun));
    let mut events = Vec::new();
    let mut packets = Vec::new();
    let mut reasm: HashMap<CircuitId, Reassembler> = HashMap::new();
    let mut frag_id = 0u16;
    let mut pool = CircuitPool::new(
        settings.circuits,
        settings.lifetime,
        Instant::now(),
        first.0,
        first.1,
        first.2,
    );
    let mut router = FlowRouter::new(settings.isolation);
    let mut open_ids = Vec::new();
    let mut answer = Vec::new();
    loop {
        let open = tokio::select! {
            open = d.step_with(&mut events, Some(&mut tun_rx.rx), &mut packets) => open,
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
                    let r = reasm.entry(c).or_default();
                    if let Some(p) = unwrap_payload(now, &mut buf[range], r) {
                        clamp(p);
                        tun_tx.push(p).await;
                    }
                    d.sockets.pool.put(buf);
                }
                Event::CircuitUp(c) => pool.on_up(c),
                Event::CircuitDown(c, why) => {
                    if pool.on_down(now, c) {
                        router.forget_circuit(c);
                        reasm.remove(&c);
                        if pool.all_down() {
                            eprintln!(
                                "anonnet: circuit down ({why:?}); traffic is blocked until one is rebuilt"
                            );
                        }
                    }
                }
                Event::Data { buf, .. } | Event::ServiceData { buf, .. } => d.sockets.pool.put(buf),
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
            reasm.remove(&c);
            d.node.close_circuit(c);
        }
        pool.open(now, &mut open_ids);
        for mut buf in packets.drain(..) {
            let pkt = &buf[PAYLOAD_OFFSET..];
            match router.route(now, &mut d.rng, pkt, &pool, &open_ids) {
                Route::Via(c) => {
                    let len = buf.len() - PAYLOAD_OFFSET;
                    clamp(&mut buf[PAYLOAD_OFFSET..]);
                    send_packet(d, now, Toward::Forward(c), buf, len, &mut frag_id).await;
                    continue;
                }
                Route::NoExit(port) if !pool.demand(now, port) => {
                    refuse(&mut tun_tx, pkt, &mut answer).await;
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
    d.flush().await;
    Ok(())
}

/// Answers `pkt` on the TUN with ICMP administratively prohibited from the exit's
/// tunnel address, as an exit refusing it would.
async fn refuse(tun: &mut TunWriter, pkt: &[u8], answer: &mut Vec<u8>) {
    let Ok(s) = packet::summarize(pkt) else {
        return;
    };
    if packet::icmp_prohibited(pkt, framing::exit_addr(s.dst), answer).is_ok() {
        tun.push(answer).await;
    }
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
