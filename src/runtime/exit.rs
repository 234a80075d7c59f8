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
use crate::exit::{Closed, Exit, ExitSettings, ExitStats, Verdict};
use crate::node::{DataPath, Event, Toward};
use crate::proto::addr::{DNS_V4, DNS_V6, EXIT_V4, EXIT_V6};
use crate::proto::wire::{Service, PAYLOAD_OFFSET};
use crate::runtime::driver::{logged, Driver};
use crate::runtime::pool::Pool;
use crate::runtime::tun::{self, TunReader, TunWriter};
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
            to_forget,
            forgotten,
        })
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

    pub(crate) fn stats(&self) -> &ExitStats {
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

    /// An exit circuit's packet (reassembled, checked and sent to the TUN device or
    /// answered), or its closing.
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
                mut buf,
                range,
            } => {
                if let Some(p) = logged(data.receive(now, circuit, &mut buf[range])) {
                    match self.exit.from_circuit(now, circuit, p, &mut self.answer) {
                        Verdict::Forward => self.tun_tx.push(p).await,
                        Verdict::Answer => {
                            let mut out = d.sockets.pool.get();
                            out.resize(PAYLOAD_OFFSET + self.answer.len(), 0);
                            out[PAYLOAD_OFFSET..].copy_from_slice(&self.answer);
                            d.send_packet(now, data, Toward::Backward(circuit), out)
                                .await;
                        }
                        Verdict::Drop => {}
                    }
                }
                d.sockets.pool.put(buf);
            }
            Event::ServiceClosed(circuit, _) => {
                if let Some(closed) = self.exit.close(circuit) {
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

    /// A packet from the internet: back into the circuit its pool address belongs
    /// to, or dropped.
    pub(crate) async fn on_tun_packet(
        &mut self,
        d: &mut Driver,
        data: &mut DataPath,
        now: Instant,
        mut buf: Vec<u8>,
    ) {
        match self.exit.from_tun(&mut buf[PAYLOAD_OFFSET..]) {
            Some(c) => d.send_packet(now, data, Toward::Backward(c), buf).await,
            None => d.sockets.pool.put(buf),
        }
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
