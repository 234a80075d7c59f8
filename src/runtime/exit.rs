//! The exit's side of a gateway: its TUN device, routes and NAT ([`crate::sys`]),
//! and the loop that moves packets between circuits and the TUN through the
//! sans-IO [`Exit`].
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::sync::mpsc;
use tun_rs::AsyncDevice;

use crate::config::{self};
use crate::exit::policy::ExitPolicy;
use crate::exit::{Closed, Exit, ExitSettings, Verdict};
use crate::node::{DataPath, Event, Toward};
use crate::proto::addr::{DNS_V4, DNS_V6, EXIT_V4, EXIT_V6};
use crate::proto::wire::{Service, PAYLOAD_OFFSET};
use crate::runtime::driver::{logged, Driver};
use crate::runtime::services::GatewayServices;
use crate::runtime::tun::{self, TunWriter};
use crate::runtime::Signals;
use crate::sys;

/// The exit's TUN device, kernel set-up and packet logic.
pub(crate) struct ExitSide {
    pub(crate) policy_summary: String,
    tun: Arc<AsyncDevice>,
    net: sys::ExitNet,
    saved: sys::ExitGuardState,
    exit: Exit,
    mtu: usize,
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
        Ok(Self {
            policy_summary,
            tun,
            net,
            saved,
            exit,
            mtu: cfg.mtu as usize,
        })
    }

    pub(crate) async fn stop(self) {
        if let Err(e) = sys::exit_down(&self.net, &self.saved).await {
            eprintln!("anonnet: error: cleaning up the exit: {e:#}");
        }
    }

    pub(crate) async fn run(
        &mut self,
        d: &mut Driver,
        services: &mut GatewayServices,
    ) -> Result<()> {
        let mut signals = Signals::new()?;
        let mut tun_rx = tun::spawn_reader(Arc::clone(&self.tun), d.sockets.pool.clone(), self.mtu);
        let mut tun_tx = TunWriter::new(Arc::clone(&self.tun));
        let mut events = Vec::new();
        let mut packets = Vec::new();
        let mut data = DataPath::default();
        let mut answer = Vec::new();
        let (to_forget, mut forgotten) = spawn_forgetter();
        loop {
            let open = tokio::select! {
                open = d.step_with(&mut events, Some(&mut tun_rx.rx), &mut packets, None) => open,
                _ = services.wake.tick() => true,
                Some(batch) = forgotten.recv() => {
                    for closed in batch {
                        self.exit.release(closed);
                    }
                    true
                }
                () = signals.recv() => break,
            };
            if !open {
                bail!("the TUN device {} failed", self.net.tun);
            }
            let now = Instant::now();
            for e in events.drain(..) {
                let Some(e) = services.on_event(d, e).await else {
                    continue;
                };
                match e {
                    Event::ServiceData {
                        circuit,
                        service: Service::Exit,
                        mut buf,
                        range,
                    } => {
                        if let Some(p) = logged(data.receive(now, circuit, &mut buf[range])) {
                            match self.exit.from_circuit(now, circuit, p, &mut answer) {
                                Verdict::Forward => tun_tx.push(p).await,
                                Verdict::Answer => {
                                    let mut out = d.sockets.pool.get();
                                    out.resize(PAYLOAD_OFFSET + answer.len(), 0);
                                    out[PAYLOAD_OFFSET..].copy_from_slice(&answer);
                                    let to = Toward::Backward(circuit);
                                    d.send_packet(now, &mut data, to, out).await;
                                }
                                Verdict::Drop => {}
                            }
                        }
                        d.sockets.pool.put(buf);
                    }
                    Event::ServiceClosed(circuit, _) => {
                        if let Some(closed) = self.exit.close(circuit) {
                            // The forgetter lives as long as this loop.
                            let _ = to_forget.send(closed);
                        }
                        data.forget(circuit);
                    }
                    Event::Data { buf, .. } | Event::ServiceData { buf, .. } => {
                        d.sockets.pool.put(buf);
                    }
                    Event::CircuitUp(_) | Event::CircuitDown(..) => {}
                }
            }
            services.tick(d).await?;
            for mut buf in packets.drain(..) {
                match self.exit.from_tun(&mut buf[PAYLOAD_OFFSET..]) {
                    Some(c) => {
                        d.send_packet(now, &mut data, Toward::Backward(c), buf)
                            .await
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
