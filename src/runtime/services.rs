//! What every gateway runs besides relaying: its descriptor and directory
//! service, and gossip with other gateways.
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::config;
use crate::discovery::GOSSIP_INTERVAL;
use crate::discovery::{Crawl, Directory, DirectorySettings};
use crate::node::{Event, HopSpec};
use crate::proto::descriptor::publishable;
use crate::proto::identity::Identity;
use crate::proto::wire::Service;
use crate::runtime::directory::{crawl_advance, crawl_event, directory_request, unix_now};
use crate::runtime::driver::Driver;
use crate::sys;

/// Resolves when the gateway services (if any) want a turn.
pub(crate) async fn services_wake(services: Option<&mut GatewayServices>) {
    match services {
        Some(s) => {
            s.wake.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// How often an idle gateway's loop wakes for its services.
pub(crate) const SERVICES_TICK: Duration = Duration::from_millis(250);

/// What every gateway runs besides relaying: its descriptor and directory service,
/// and gossip with other gateways.
pub(crate) struct GatewayServices {
    dir: Directory,
    bootstrap: Vec<HopSpec>,
    gossip: Option<Crawl>,
    next_gossip: Instant,
    /// Wakes the loop for gossip and re-signing when no traffic does.
    pub(crate) wake: tokio::time::Interval,
}

impl GatewayServices {
    /// The services of a gateway config; `exit_policy` is the exit's policy summary
    /// for the descriptor (`None`: not an exit).
    pub(crate) fn new(
        cfg: &config::GatewayConfig,
        id: Identity,
        exit_policy: Option<String>,
    ) -> Result<Self> {
        let disc = &cfg.discovery;
        let addrs = if disc.publish.is_empty() {
            let specific: Vec<IpAddr> = cfg
                .listen
                .iter()
                .copied()
                .filter(|a| !a.is_unspecified())
                .collect();
            if specific.is_empty() {
                sys::own_addresses()
                    .into_iter()
                    .filter(publishable)
                    .collect()
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
            DirectorySettings {
                addrs,
                ports: (cfg.listen_ports.first, cfg.listen_ports.last),
                exit_summary: exit_policy,
                share: disc.share,
                rate: disc.rate,
                lifetime: disc.descriptor_lifetime_secs,
            },
            unix_now(),
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

    pub(crate) async fn on_event(&mut self, d: &mut Driver, e: Event) -> Option<Event> {
        let e = match self.gossip.as_mut() {
            Some(g) => crawl_event(d, g, &mut self.dir.store, e).await?,
            None => e,
        };
        match e {
            Event::ServiceData {
                circuit,
                service: Service::Directory,
                buf,
                range,
            } => {
                directory_request(d, &mut self.dir, circuit, &buf[range]).await;
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

    pub(crate) async fn tick(&mut self, d: &mut Driver) -> Result<()> {
        self.dir.tick(unix_now())?;
        let now = Instant::now();
        if self.gossip.is_none() && now >= self.next_gossip {
            self.gossip = Some(Crawl::gossip(
                std::mem::take(&mut self.bootstrap),
                self.dir.own(),
            ));
            self.next_gossip = now + GOSSIP_INTERVAL;
        }
        if let Some(g) = self.gossip.as_mut() {
            crawl_advance(d, g, &self.dir.store).await;
            if g.done(&self.dir.store) {
                self.gossip = None;
                self.dir.store.expire(unix_now());
            }
        }
        Ok(())
    }
}
