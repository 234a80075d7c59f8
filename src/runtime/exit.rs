//! The exit's side of a gateway: its TUN device, routes and NAT ([`crate::sys`]),
//! and how the daemon's loop ([`crate::runtime::daemon`]) moves packets between
//! circuits and the TUN through the sans-IO [`Exit`].
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::sync::mpsc;
use tun_rs::AsyncDevice;

use crate::config::{self};
use crate::exit::policy::ExitPolicy;
use crate::exit::vc::Accepted;
use crate::exit::{Closed, Exit, ExitDue, ExitSettings, ExitStats, Owner, Verdict};
use crate::node::{CircuitId, DataPath, Event, Toward};
use crate::proto::addr::{DNS_V4, DNS_V6, EXIT_V4, EXIT_V6};
use crate::proto::vc::{Joined, JOINED_LEN};
use crate::proto::wire::{Cmd, Service, PAYLOAD_OFFSET};
use crate::runtime::driver::{logged, Driver};
use crate::runtime::pool::Pool;
use crate::runtime::tun::{self, Counted, TunReader, TunWriter};
use crate::sys;

/// The exit's side of a gateway daemon: its TUN device, kernel set-up and packet
/// logic, and the task that makes the kernel forget closed circuits' connections.
pub(crate) struct ExitSide {
    pub(crate) policy_summary: String,
    tun: Arc<AsyncDevice>,
    tun_tx: TunWriter,
    net: sys::ExitNet,
    saved: sys::ExitGuardState,
    exit: Exit,
    mtu: usize,
    /// An ICMP error or DNS answer the exit sends back itself.
    answer: Vec<u8>,
    /// Packets a virtual circuit's reorder buffer let out (kept for its capacity).
    ready: Vec<Vec<u8>>,
    to_forget: mpsc::UnboundedSender<Closed>,
    forgotten: mpsc::UnboundedReceiver<Vec<Closed>>,
}

impl ExitSide {
    pub(crate) async fn start(cfg: &config::ExitConfig) -> Result<Self> {
        let own = sys::own_addresses();
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
        if !sys::ipv6_usable() {
            tracing::info!(
                "IPv6 is switched off on this host (net.ipv6.conf.all/default.disable_ipv6): \
                 the exit carries IPv4 only"
            );
        }
        let net = sys::ExitNet {
            tun: cfg.tun.clone(),
            // Without IPv6 on this host, the exit's device has none either.
            addrs: [
                IpNet::V4(Ipv4Net::from(EXIT_V4)),
                IpNet::V6(Ipv6Net::from(EXIT_V6)),
            ]
            .into_iter()
            .filter(|a| a.addr().is_ipv4() || sys::ipv6_usable())
            .collect(),
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
        let (to_forget, forgotten) = spawn_forgetter();
        Ok(Self {
            policy_summary,
            tun_tx: TunWriter::new(Arc::clone(&tun)),
            tun,
            net,
            saved,
            exit,
            mtu: cfg.mtu as usize,
            answer: Vec::new(),
            ready: Vec::new(),
            to_forget,
            forgotten,
        })
    }

    /// Replaces the exit policy (SIGHUP); returns its summary, which the
    /// descriptor publishes.
    pub(crate) fn set_policy(&mut self, policy: ExitPolicy) -> String {
        self.policy_summary = policy.summary();
        self.exit.set_policy(policy);
        self.policy_summary.clone()
    }

    /// Removes the exit's routes, NAT and TUN device.
    pub(crate) async fn stop(self) -> Result<()> {
        drop(self.tun_tx);
        drop(self.tun);
        sys::exit_down(&self.net, &self.saved)
            .await
            .context("cleaning up the exit")
    }

    pub(crate) fn spawn_reader(&self, pool: Pool) -> TunReader {
        tun::spawn_reader(Arc::clone(&self.tun), pool, self.mtu)
    }

    pub(crate) fn tun_name(&self) -> &str {
        &self.net.tun
    }

    pub(crate) fn stats(&self) -> ExitStats {
        self.exit.stats()
    }

    /// The next batch of pool addresses whose connections the kernel forgot.
    pub(crate) async fn forgotten(&mut self) -> Option<Vec<Closed>> {
        self.forgotten.recv().await
    }

    /// Hands forgotten pool addresses back to the exit for reuse.
    pub(crate) fn release(&mut self, batch: Vec<Closed>) {
        for closed in batch {
            self.exit.release(closed);
        }
    }

    /// An exit circuit's cell (a packet reassembled, ordered, checked and sent to
    /// the TUN device or answered; a JOIN answered), or its closing.
    pub(crate) async fn on_event(
        &mut self,
        d: &mut Driver,
        data: &mut DataPath,
        now: Instant,
        e: Event,
    ) {
        match e {
            Event::ServiceData {
                circuit,
                service: Service::Exit,
                cmd,
                mut buf,
                range,
            } => {
                match cmd {
                    Cmd::Data => {
                        if let Some(p) = logged(data.receive(now, circuit, &mut buf[range])) {
                            let verdict = self.exit.from_circuit(now, circuit, p, &mut self.answer);
                            match verdict {
                                Verdict::Forward => self.tun_tx.push(p).await,
                                Verdict::Answer => {
                                    self.answer_back(d, data, now, Owner::Circuit(circuit))
                                        .await;
                                }
                                Verdict::Drop => {}
                            }
                        }
                    }
                    Cmd::Join => self.on_join(d, now, circuit, &buf[range]).await,
                    Cmd::VData => self.on_vdata(d, data, now, circuit, &mut buf[range]).await,
                    _ => {}
                }
                d.sockets.pool.put(buf);
            }
            Event::ServiceClosed(circuit, _) => {
                if let Some(closed) = self.exit.close(now, circuit) {
                    // The forgetter lives as long as this side.
                    let _ = self.to_forget.send(closed);
                }
                data.forget(circuit);
            }
            Event::Data { buf, .. } | Event::ServiceData { buf, .. } => {
                d.sockets.pool.put(buf);
            }
            Event::CircuitUp(_) | Event::CircuitDown(..) => {}
        }
    }

    /// A JOIN: answered with JOINED, or the circuit is destroyed.
    async fn on_join(&mut self, d: &mut Driver, now: Instant, circuit: CircuitId, payload: &[u8]) {
        let node = &d.node;
        let joined = self
            .exit
            .join(now, circuit, payload, &|c| node.last_forward(c));
        match joined {
            Ok(Accepted { legs, replaced }) => {
                tracing::debug!(
                    "circuit {} joined a virtual circuit ({legs} legs)",
                    circuit.0
                );
                if let Some(old) = replaced {
                    tracing::debug!("circuit {} replaced as a leg: destroyed", old.0);
                    d.node.destroy_service(old);
                }
                let mut out = d.sockets.pool.get();
                out.clear();
                out.resize(PAYLOAD_OFFSET, 0);
                out.extend_from_slice(&Joined { legs }.emit());
                match d
                    .node
                    .send_backward_cell(now, circuit, Cmd::Joined, out, JOINED_LEN)
                {
                    Ok(Some(t)) => d.sockets.send_recycle(t).await,
                    Ok(None) => {}
                    Err(e) => tracing::debug!("JOINED not sent: {e}"),
                }
            }
            Err(e) => {
                tracing::debug!("circuit {}: JOIN refused: {e}", circuit.0);
                d.node.destroy_service(circuit);
            }
        }
    }

    /// A VDATA payload of a leg: its packet, once whole, through the virtual
    /// circuit's reorder buffer; what that lets out goes on to the TUN device.
    async fn on_vdata(
        &mut self,
        d: &mut Driver,
        data: &mut DataPath,
        now: Instant,
        circuit: CircuitId,
        payload: &mut [u8],
    ) {
        let Some(vc) = self.exit.vcs().vc_of(circuit) else {
            self.exit.misrouted();
            return;
        };
        let Some((seq, owned)) = d.receive_numbered(now, data, circuit, payload) else {
            return;
        };
        let mut ready = std::mem::take(&mut self.ready);
        // A packet the reorder buffer drops may still let others out.
        if let Err(buf) = self.exit.from_leg(now, circuit, seq, owned, &mut ready) {
            d.sockets.pool.put(buf);
        }
        for p in ready.drain(..) {
            self.forward(d, data, now, Owner::Vc(vc), p).await;
        }
        self.ready = ready;
    }

    /// A packet of `owner` in `buf[PAYLOAD_OFFSET..]`, let out of a reorder buffer:
    /// checked and sent to the TUN device or answered.
    async fn forward(
        &mut self,
        d: &mut Driver,
        data: &mut DataPath,
        now: Instant,
        owner: Owner,
        mut buf: Vec<u8>,
    ) {
        let pkt = &mut buf[PAYLOAD_OFFSET..];
        match self.exit.from_circuit(now, owner, pkt, &mut self.answer) {
            Verdict::Forward => self.tun_tx.push(pkt).await,
            Verdict::Answer => self.answer_back(d, data, now, owner).await,
            Verdict::Drop => {}
        }
        d.sockets.pool.put(buf);
    }

    /// Sends the exit's own answer (in `self.answer`) back to `owner`'s client.
    async fn answer_back(
        &mut self,
        d: &mut Driver,
        data: &mut DataPath,
        now: Instant,
        owner: Owner,
    ) {
        let mut out = d.sockets.pool.get();
        out.clear();
        out.resize(PAYLOAD_OFFSET, 0);
        out.extend_from_slice(&self.answer);
        self.send_back(d, data, now, owner, out).await;
    }

    /// Sends the packet in `buf[PAYLOAD_OFFSET..]` back to `owner`'s client: on its
    /// circuit, or numbered on the chosen leg of its virtual circuit.
    async fn send_back(
        &mut self,
        d: &mut Driver,
        data: &mut DataPath,
        now: Instant,
        owner: Owner,
        buf: Vec<u8>,
    ) {
        let node = &d.node;
        let route = self.exit.route_back(now, owner, &|c| node.last_forward(c));
        match route {
            Some((c, seq)) => {
                d.send_numbered(now, data, Toward::Backward(c), seq, buf)
                    .await
            }
            None => d.sockets.pool.put(buf),
        }
    }

    /// When [`ExitSide::poll`] has something to do.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.exit.poll_timeout()
    }

    /// What came due: packets a reorder buffer stopped waiting for a gap for, virtual
    /// circuits that expired without legs.
    pub(crate) async fn poll(&mut self, d: &mut Driver, data: &mut DataPath, now: Instant) {
        while let Some(due) = self.exit.handle_timeout(now) {
            match due {
                ExitDue::Packets(owner, packets) => {
                    for p in packets {
                        self.forward(d, data, now, owner, p).await;
                    }
                }
                ExitDue::Closed(closed) => {
                    if let Some(closed) = closed {
                        let _ = self.to_forget.send(closed);
                    }
                }
            }
        }
    }

    /// A packet from the internet: back into the circuit or virtual circuit its pool
    /// address belongs to, or dropped.
    pub(crate) async fn on_tun_packet(
        &mut self,
        d: &mut Driver,
        data: &mut DataPath,
        now: Instant,
        mut buf: Vec<u8>,
    ) {
        match self.exit.from_tun(&mut buf[PAYLOAD_OFFSET..]) {
            Some(owner) => self.send_back(d, data, now, owner, buf).await,
            None => d.sockets.pool.put(buf),
        }
    }

    /// The packets written to the TUN device.
    pub(crate) fn tun_written(&self) -> Counted {
        self.tun_tx.written
    }

    pub(crate) async fn flush_tun(&mut self) {
        self.tun_tx.flush().await;
    }
}

/// A task that makes the kernel forget the tracked connections of closed circuits'
/// pool addresses, in batches of whatever closed meanwhile, and hands the addresses
/// back for [`Exit::release`]. It ends when the sender is dropped.
fn spawn_forgetter() -> (
    mpsc::UnboundedSender<Closed>,
    mpsc::UnboundedReceiver<Vec<Closed>>,
) {
    let (to_forget, mut closed_rx) = mpsc::unbounded_channel::<Closed>();
    let (done_tx, forgotten) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(first) = closed_rx.recv().await {
            let mut batch = vec![first];
            while let Ok(more) = closed_rx.try_recv() {
                batch.push(more);
            }
            let sources: Vec<IpNet> = batch
                .iter()
                .flat_map(|c| [IpNet::from(IpAddr::V4(c.v4)), IpNet::from(IpAddr::V6(c.v6))])
                .collect();
            sys::forget_connections(&sources).await;
            if done_tx.send(batch).is_err() {
                break;
            }
        }
    });
    (to_forget, forgotten)
}
