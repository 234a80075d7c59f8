//! The client's data plane, one part of the daemon (`runtime::daemon`): packets
//! between the TUN device and circuits, the pool of circuits kept filled, and the
//! kill switch's allowed entries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use tun_rs::AsyncDevice;

use crate::client::conns::{Connections, Segment};
use crate::client::flows::{CircuitPool, FlowRouter, Isolation, Route, NO_EXIT_HOLD};
use crate::client::host_packets::{clamp_mss, refusal};
use crate::node::{CircuitId, DataPath, DownReason, Event, HopSpec, Toward};
use crate::proto::identity::PublicKey;
use crate::proto::wire::{Cmd, Service, PAYLOAD_OFFSET};
use crate::runtime::driver::{logged, Driver};
use crate::runtime::paths::{path_for, Chosen, Paths};
use crate::runtime::pool::Pool;
use crate::runtime::tun::{self, TunReader, TunWriter};
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
}

impl ClientPlane {
    /// The plane of a client whose first circuit (with its path) is up in `pool`.
    pub(crate) fn new(
        tun: Arc<AsyncDevice>,
        net: sys::ClientNet,
        paths: Paths,
        pool: CircuitPool,
        isolation: Isolation,
        (circuit, path): (CircuitId, Vec<HopSpec>),
    ) -> Self {
        tracing::info!("circuit {} up through {}", circuit.0, hops_text(&path));
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
        }
    }

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
                cmd: Cmd::Data,
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
                Ok(Chosen {
                    specs,
                    exit_ports: ports,
                    padding_share,
                }) => {
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
                    if let Some(share) = padding_share {
                        d.node.limit_padding(id, share);
                    }
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
