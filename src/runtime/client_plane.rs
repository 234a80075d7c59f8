//! The client's data plane, one part of the daemon (`runtime::daemon`): packets
//! between the TUN device and circuits, the pool of circuits kept filled, and the
//! kill switch's allowed entries.
//!
//! With `client.legs` above 1 each circuit of the pool is a virtual circuit
//! ([`VirtualCircuit`], PROTOCOL §12): the pool, the flow router and the connection
//! tracker know it by the id of its first leg (its handle); its legs are built,
//! joined, probed and replaced here, and its packets go numbered on the leg it
//! chooses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tun_rs::AsyncDevice;

use crate::client::conns::{Connections, Segment};
use crate::client::flows::{CircuitPool, FlowRouter, Isolation, Route, NO_EXIT_HOLD};
use crate::client::host_packets::{clamp_mss, refusal};
use crate::client::virtual_circuit::{LegState, VirtualCircuit};
use crate::node::{CircuitId, DataPath, DownReason, Event, HopSpec, Node, Toward};
use crate::proto::framing::Carrier;
use crate::proto::identity::PublicKey;
use crate::proto::wire::{Cmd, Service, PAYLOAD_OFFSET};
use crate::runtime::driver::{logged, Driver};
use crate::runtime::paths::{path_for, Chosen, Paths};
use crate::runtime::pool::Pool;
use crate::runtime::tun::{self, Counted, TunReader, TunWriter};
use crate::sys;

/// The client's data plane: the TUN device, the kernel state that routes the
/// host's traffic into the tunnel (with its kill switch), where paths come from,
/// the circuit pool, the flow router and the TCP connections it tracks. The
/// daemon's loop (`runtime::daemon`) hands it events, TUN packets and its deadlines.
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
    /// Legs of each circuit: 1 is a plain circuit, more a virtual circuit.
    legs: u8,
    /// The virtual circuits, by handle (the id of their first leg).
    vcs: HashMap<CircuitId, VirtualCircuit>,
    /// The handle of each leg's virtual circuit.
    leg_of: HashMap<CircuitId, CircuitId>,
    /// When a virtual circuit may next try to build a leg, after a failure.
    leg_retry: HashMap<CircuitId, Instant>,
    /// Packets a reorder buffer let out (kept for its capacity).
    ready: Vec<Vec<u8>>,
}

/// A virtual circuit that found no path for a new leg tries again after this long.
const LEG_RETRY: Duration = Duration::from_secs(5);

impl ClientPlane {
    /// The plane of a client whose first circuit (with its path) is up in `pool`;
    /// with `legs` above 1 that circuit becomes the first leg of a virtual circuit.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        tun: Arc<AsyncDevice>,
        net: sys::ClientNet,
        paths: Paths,
        pool: CircuitPool,
        isolation: Isolation,
        legs: u8,
        rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
        (circuit, path): (CircuitId, Vec<HopSpec>),
    ) -> Self {
        tracing::info!("circuit {} up through {}", circuit.0, hops_text(&path));
        let mut vcs = HashMap::new();
        let mut leg_of = HashMap::new();
        if legs > 1 {
            let exit = path.last().map(|h| h.key).unwrap_or_default();
            let mut vc = VirtualCircuit::new(rng, legs, exit);
            vc.add_leg(circuit, path.iter().map(|h| h.key).collect());
            vcs.insert(circuit, vc);
            leg_of.insert(circuit, circuit);
        }
        Self {
            tun_tx: TunWriter::new(Arc::clone(&tun)),
            tun,
            net,
            paths,
            pool,
            router: FlowRouter::new(isolation),
            conns: Connections::new(),
            paths_of: HashMap::from([(circuit, path)]),
            open_ids: Vec::new(),
            answer: Vec::new(),
            legs,
            vcs,
            leg_of,
            leg_retry: HashMap::new(),
            ready: Vec::new(),
        }
    }

    /// The cells the circuits carry packets in.
    fn carrier(&self) -> Carrier {
        if self.legs > 1 {
            Carrier::VData
        } else {
            Carrier::Data
        }
    }

    pub(crate) fn spawn_reader(&self, pool: Pool) -> TunReader {
        tun::spawn_reader(Arc::clone(&self.tun), pool, self.net.mtu as usize)
    }

    /// What `anonnet status` shows of the client: its state, device, DNS, each
    /// circuit of the pool with its legs (hops, round trip, last heard), the guards
    /// and how many gateways it knows.
    pub(crate) fn status(&self, now: Instant, node: &Node) -> serde_json::Value {
        use serde_json::json;
        let leg = |c: CircuitId, state: &str| {
            let hops: Vec<_> = self.paths_of.get(&c).map_or_else(Vec::new, |p| {
                p.iter()
                    .map(|h| json!({"addr": h.addr.to_string(), "key": short_key(&h.key)}))
                    .collect()
            });
            let info = node.own_info(c);
            let secs_ago = |t: Instant| now.saturating_duration_since(t).as_secs();
            json!({
                "circuit": c.0,
                "state": state,
                "hops": hops,
                "rtt_ms": node.rtt(c).map(|d| d.as_secs_f64() * 1e3),
                "last_heard_ms_ago": node
                    .last_heard(c)
                    .map(|t| u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)),
                "age_s": info.map(|i| secs_ago(i.created)),
                "last_handshake_s_ago": info.and_then(|i| i.last_handshake).map(secs_ago),
                "bytes_sent": info.map(|i| i.traffic.sent),
                "bytes_received": info.map(|i| i.traffic.received),
                "padding_percent": info.and_then(|i| i.traffic.padding_share()),
            })
        };
        let circuits: Vec<_> = self
            .pool
            .ids()
            .map(|id| {
                let up = self.pool.is_up(id);
                let legs: Vec<_> = match self.vcs.get(&id) {
                    Some(vc) => vc
                        .legs()
                        .iter()
                        .map(|l| {
                            let state = match l.state {
                                LegState::Building => "building",
                                LegState::Joining(_) => "joining",
                                LegState::Live => "live",
                            };
                            leg(l.circuit, state)
                        })
                        .collect(),
                    None => vec![leg(id, if up { "up" } else { "building" })],
                };
                json!({"id": id.0, "up": up, "flows": self.router.flows_on(id), "legs": legs})
            })
            .collect();
        let (known, guards) = match self.paths.known() {
            Some((n, g)) => (Some(n), g.iter().map(short_key).collect()),
            None => (None, Vec::new()),
        };
        json!({
            "state": if self.pool.all_down() { "blocked" } else { "up" },
            "tun": self.net.tun,
            "addresses": self.net.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "mtu": self.net.mtu,
            "dns": self.net.dns.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "circuits": circuits,
            "guards": guards,
            "known_gateways": known,
        })
    }

    /// The pool's circuits up, and those still building.
    pub(crate) fn circuit_counts(&self) -> (usize, usize) {
        let up = self.pool.ids().filter(|&c| self.pool.is_up(c)).count();
        (up, self.pool.ids().count() - up)
    }

    /// The packets written to the TUN device.
    pub(crate) fn tun_written(&self) -> Counted {
        self.tun_tx.written
    }

    pub(crate) fn tun_name(&self) -> &str {
        &self.net.tun
    }

    /// When the pool next wants a turn (a build to pace, a circuit to retire), or a
    /// virtual circuit (a reorder timeout, a probe, a leg to check or rebuild).
    pub(crate) fn poll_timeout(&self, now: Instant, node: &Node) -> Option<Instant> {
        let vcs = self.vcs.iter().filter_map(|(h, vc)| {
            let rebuild = vc
                .builds_leg()
                .then(|| self.leg_retry.get(h).copied().unwrap_or(now));
            vc.poll_timeout(node).into_iter().chain(rebuild).min()
        });
        self.pool.poll_timeout(now).into_iter().chain(vcs).min()
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
                cmd: Cmd::Data,
                mut buf,
                range,
            } if self.pool.contains(c) && !self.leg_of.contains_key(&c) => {
                if let Some(p) = logged(data.receive(now, c, &mut buf[range])) {
                    clamp_mss(p, Carrier::Data);
                    self.tun_tx.push(p).await;
                }
                d.sockets.pool.put(buf);
            }
            Event::Data {
                circuit: c,
                cmd: Cmd::Joined,
                buf,
                range,
            } if self.leg_of.contains_key(&c) => {
                self.on_joined(c, &buf[range]);
                d.sockets.pool.put(buf);
            }
            Event::Data {
                circuit: c,
                cmd: Cmd::VData,
                mut buf,
                range,
            } if self.leg_of.contains_key(&c) => {
                self.on_vdata(d, data, now, c, &mut buf[range]).await;
                d.sockets.pool.put(buf);
            }
            Event::CircuitUp(c) => {
                if !self.leg_of.contains_key(&c) {
                    self.pool.on_up(c);
                }
                if let Some(path) = self.paths_of.get(&c) {
                    tracing::info!("circuit {} up through {}", c.0, hops_text(path));
                }
            }
            Event::CircuitDown(c, why) => match self.leg_of.remove(&c) {
                Some(h) => self.leg_down(data, now, h, c, why).await,
                // The first leg of a virtual circuit, which the VC closed itself.
                None if self.vcs.contains_key(&c) => {}
                None => self.circuit_down(data, now, c, why).await,
            },
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
        let avoided = self.blame(now, c, why);
        tracing::info!(
            "circuit {} down ({why:?}){avoided}; {} TCP connection(s) on it reset",
            c.0,
            resets.len()
        );
        for rst in resets {
            self.tun_tx.push(&rst).await;
        }
        if self.pool.all_down() {
            tracing::warn!("circuit down ({why:?}); traffic is blocked until one is rebuilt");
        }
    }

    /// Forgets circuit `c`'s path, and says which hop failed under it (new paths
    /// avoid it for a while), for the log.
    fn blame(&mut self, now: Instant, c: CircuitId, why: DownReason) -> String {
        let path = self.paths_of.remove(&c).unwrap_or_default();
        let blamed = why.failed_hop().and_then(|i| Some((i, *path.get(i)?)));
        match blamed {
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
        }
    }

    /// A JOINED on leg `c`: the leg carries packets; the virtual circuit's first
    /// makes it up in the pool.
    fn on_joined(&mut self, c: CircuitId, payload: &[u8]) {
        let Some(&h) = self.leg_of.get(&c) else {
            return;
        };
        let Some(vc) = self.vcs.get_mut(&h) else {
            return;
        };
        let was_up = vc.is_up();
        if vc.on_joined(c, payload) {
            let live = vc
                .legs()
                .iter()
                .filter(|l| l.state == LegState::Live)
                .count();
            tracing::info!("circuit {}: leg {} joined ({live} live)", h.0, c.0);
            if !was_up {
                self.pool.on_up(h);
            }
        }
    }

    /// A VDATA on leg `c`: its packet, once whole, through the virtual circuit's
    /// reorder buffer to the TUN device.
    async fn on_vdata(
        &mut self,
        d: &mut Driver,
        data: &mut DataPath,
        now: Instant,
        c: CircuitId,
        payload: &mut [u8],
    ) {
        let Some(vc) = self.leg_of.get(&c).and_then(|h| self.vcs.get_mut(h)) else {
            return;
        };
        let Some((seq, owned)) = d.receive_numbered(now, data, c, payload) else {
            return;
        };
        let mut ready = std::mem::take(&mut self.ready);
        if let Err((_, buf)) = vc.receive(now, c, seq, owned, &mut ready) {
            d.sockets.pool.put(buf);
        }
        self.deliver(d, &mut ready).await;
        self.ready = ready;
    }

    /// Writes packets a reorder buffer let out (laid out as TUN reads) to the TUN
    /// device.
    async fn deliver(&mut self, d: &mut Driver, ready: &mut Vec<Vec<u8>>) {
        for mut p in ready.drain(..) {
            if let Some(pkt) = p.get_mut(PAYLOAD_OFFSET..) {
                clamp_mss(pkt, Carrier::VData);
                self.tun_tx.push(pkt).await;
            }
            d.sockets.pool.put(p);
        }
    }

    /// Leg `c` of virtual circuit `h` went down: its traffic moves to the other
    /// legs (a replacement is built in `maintain`); with no leg left the virtual
    /// circuit is down.
    async fn leg_down(
        &mut self,
        data: &mut DataPath,
        now: Instant,
        h: CircuitId,
        c: CircuitId,
        why: DownReason,
    ) {
        data.forget(c);
        let avoided = self.blame(now, c, why);
        let Some(vc) = self.vcs.get_mut(&h) else {
            return;
        };
        vc.on_down(c);
        if !vc.legs().is_empty() {
            tracing::info!(
                "circuit {}: leg {} down ({why:?}){avoided}; its traffic moved to the {} other leg(s)",
                h.0,
                c.0,
                vc.legs().len()
            );
            return;
        }
        self.vcs.remove(&h);
        self.leg_retry.remove(&h);
        self.circuit_down(data, now, h, why).await;
    }

    /// What the virtual circuits have due: JOINs on legs that came up, probes,
    /// legs found dead, packets whose gap timed out, and a new leg for each that
    /// lacks one.
    async fn maintain_vcs(
        &mut self,
        d: &mut Driver,
        data: &mut DataPath,
        now: Instant,
    ) -> Result<()> {
        let handles: Vec<CircuitId> = self.vcs.keys().copied().collect();
        let mut ready = std::mem::take(&mut self.ready);
        let mut sent = Vec::new();
        for h in handles {
            let Some(vc) = self.vcs.get_mut(&h) else {
                continue;
            };
            let up: Vec<CircuitId> = vc
                .legs()
                .iter()
                .filter(|l| l.state == LegState::Building && d.node.is_up(l.circuit))
                .map(|l| l.circuit)
                .collect();
            for c in up {
                match vc.on_up(now, &mut d.node, &mut d.rng, c) {
                    Ok(Some(t)) => sent.push(t),
                    Ok(None) => {}
                    Err(e) => tracing::debug!("JOIN on leg {} not sent: {e}", c.0),
                }
            }
            if vc.poll_timeout(&d.node).is_some_and(|t| t <= now) {
                for (c, why) in
                    vc.handle_timeout(now, &mut d.node, &mut d.rng, &mut ready, &mut sent)
                {
                    tracing::info!(
                        "circuit {}: leg {} dead ({why:?}); its traffic moved to the {} other leg(s)",
                        h.0,
                        c.0,
                        vc.legs().len()
                    );
                    self.leg_of.remove(&c);
                    data.forget(c);
                    // Which of its gateways failed is not known: new paths avoid
                    // them all for a while. Each later hop counts as failing a
                    // moment later, so that when paths run short the entry (a
                    // guard, scarce) is used again before the middles.
                    let path = self.paths_of.remove(&c).unwrap_or_default();
                    let relays = path.iter().take(path.len().saturating_sub(1));
                    let times = (0u64..).map(|i| now + Duration::from_millis(i));
                    for (at, hop) in times.zip(relays) {
                        self.paths.failed(at, hop.key);
                    }
                }
            }
            let retry = self.leg_retry.get(&h).is_none_or(|&t| t <= now);
            if vc.builds_leg() && retry {
                self.build_leg(d, now, h).await?;
            }
        }
        for t in sent {
            d.sockets.send_recycle(t).await;
        }
        self.deliver(d, &mut ready).await;
        self.ready = ready;
        Ok(())
    }

    /// Starts building an exit circuit through `specs` (its entry let through the
    /// kill switch first), padding within `padding_share` when its gateways limit it.
    async fn start_build(
        &mut self,
        d: &mut Driver,
        now: Instant,
        specs: &[HopSpec],
        padding_share: Option<u8>,
    ) -> Result<CircuitId> {
        self.allow_entry(specs).await?;
        let id = d
            .node
            .build_circuit(now, &mut d.rng, specs, Service::Exit)
            .map_err(|e| anyhow::anyhow!("cannot build a circuit: {e}"))?;
        if let Some(share) = padding_share {
            d.node.limit_padding(id, share);
        }
        Ok(id)
    }

    /// Builds a new leg for virtual circuit `h`: to its exit, avoiding its other
    /// legs' gateways.
    async fn build_leg(&mut self, d: &mut Driver, now: Instant, h: CircuitId) -> Result<()> {
        let Some(vc) = self.vcs.get(&h) else {
            return Ok(());
        };
        let chosen = self.paths.next_leg(&mut d.rng, vc.exit(), &vc.avoid());
        let Chosen {
            specs,
            padding_share,
            ..
        } = match chosen {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("circuit {}: no path for another leg: {e:#}", h.0);
                self.leg_retry.insert(h, now + LEG_RETRY);
                return Ok(());
            }
        };
        let c = self.start_build(d, now, &specs, padding_share).await?;
        tracing::info!(
            "circuit {}: leg {} building through {}",
            h.0,
            c.0,
            hops_text(&specs)
        );
        if let Some(vc) = self.vcs.get_mut(&h) {
            vc.add_leg(c, specs.iter().map(|hop| hop.key).collect());
        }
        self.leg_of.insert(c, h);
        self.paths_of.insert(c, specs);
        self.leg_retry.remove(&h);
        Ok(())
    }

    /// Lets a path's entry out through the kill switch.
    async fn allow_entry(&mut self, specs: &[HopSpec]) -> Result<()> {
        if let Some(entry) = specs.first().map(|h| h.addr) {
            if !self.net.gateways.contains(&entry) {
                self.net.gateways.push(entry);
                sys::client_set_gateways(&self.net).await?;
            }
        }
        Ok(())
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
                Ok(Chosen {
                    specs,
                    exit_ports: ports,
                    padding_share,
                }) => {
                    let exit = specs.last().map(|h| h.key).unwrap_or_default();
                    let id = self.start_build(d, now, &specs, padding_share).await?;
                    self.pool.building(now, id, exit, ports);
                    tracing::info!("circuit {} building through {}", id.0, hops_text(&specs));
                    if self.legs > 1 {
                        let mut vc = VirtualCircuit::new(&mut d.rng, self.legs, exit);
                        vc.add_leg(id, specs.iter().map(|h| h.key).collect());
                        self.vcs.insert(id, vc);
                        self.leg_of.insert(id, id);
                    }
                    self.paths_of.insert(id, specs);
                }
                Err(e) => match want.port {
                    Some(port) => {
                        tracing::warn!(
                            "no known exit accepts port {port}; refusing it for {} s ({e:#})",
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
            for rst in self.conns.circuit_down(now, c) {
                self.tun_tx.push(&rst).await;
            }
            for leg in self.close_circuit(d, c) {
                data.forget(leg);
                self.paths_of.remove(&leg);
            }
        }
        self.maintain_vcs(d, data, now).await?;
        self.pool.open(now, &mut self.open_ids);
        Ok(())
    }

    /// Closes a circuit of the pool: a plain circuit, or every leg of a virtual
    /// circuit. Returns the circuits closed.
    fn close_circuit(&mut self, d: &mut Driver, c: CircuitId) -> Vec<CircuitId> {
        let legs = match self.vcs.remove(&c) {
            Some(vc) => vc.legs().iter().map(|l| l.circuit).collect(),
            None => vec![c],
        };
        self.leg_retry.remove(&c);
        for &leg in &legs {
            self.leg_of.remove(&leg);
            d.node.close_circuit(leg);
        }
        legs
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
                let len = pkt.len();
                let (leg, seq) = match self.vcs.get_mut(&c) {
                    Some(vc) => match vc.route(now, &d.node, len) {
                        Some((leg, seq)) => (leg, Some(seq)),
                        // Not joined yet: dropped (TCP sends it again).
                        None => {
                            d.sockets.pool.put(buf);
                            return;
                        }
                    },
                    None => (c, None),
                };
                if let Some(seg) = &seg {
                    self.conns.carried(now, seg, c);
                }
                let carrier = self.carrier();
                clamp_mss(&mut buf[PAYLOAD_OFFSET..], carrier);
                d.send_numbered(now, data, Toward::Forward(leg), seq, buf)
                    .await;
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
        for (h, vc) in &self.vcs {
            let s = vc.stats();
            let r = s.reorder;
            tracing::info!(
                "circuit {}: {} legs joined, {} found dead, {} went down; replies: {} delivered, \
                 {} waited for an earlier one, {} lost, {} late, {} duplicate, {} out of window, \
                 at most {} bytes held",
                h.0,
                s.joined,
                s.legs_dead,
                s.legs_down,
                r.delivered,
                r.reordered,
                r.lost,
                r.late,
                r.duplicate,
                r.out_of_window,
                r.held_peak
            );
        }
        let ids: Vec<CircuitId> = self.pool.ids().collect();
        for c in ids {
            self.close_circuit(d, c);
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
/// The first 8 characters of a key's base64 form: enough to tell gateways apart in
/// `anonnet status`.
fn short_key(key: &[u8; 32]) -> String {
    PublicKey(*key).short()
}

fn hops_text(path: &[HopSpec]) -> String {
    let hops: Vec<String> = path.iter().map(|h| h.addr.to_string()).collect();
    hops.join(" -> ")
}
