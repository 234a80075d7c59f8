//! What a gateway runs for discovery besides relaying: its [`Directory`] (own
//! descriptor and directory service) and its gossip rounds, one every
//! [`GOSSIP_INTERVAL`], on the clock the driver passes in. Which addresses the
//! descriptor publishes is decided here too ([`published_addrs`]).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};

use super::crawl::Crawl;
use super::crawl_plan::GOSSIP_INTERVAL;
use super::directory::{Directory, DirectoryError, DirectorySettings};
use super::outbox::Outbox;
use crate::node::{Event, HopSpec, Node};
use crate::proto::addr::is_tunnel_fixed;
use crate::proto::descriptor::{publishable, MAX_ADDRS};
use crate::proto::identity::Identity;
use crate::proto::wire::{Cmd, Service};

/// The addresses a gateway's descriptor publishes: `publish` when the operator
/// named some, else the specific addresses it listens on, else the host's own
/// (`own`); only publishable ones (no loopback, link-local, multicast, nor the
/// tunnel's fixed addresses, which an exit's TUN device has), at most [`MAX_ADDRS`].
/// None: the gateway is not announced.
#[must_use]
pub fn published_addrs(publish: &[IpAddr], listen: &[IpAddr], own: &[IpAddr]) -> Vec<IpAddr> {
    let specific: Vec<IpAddr> = listen
        .iter()
        .copied()
        .filter(|a| !a.is_unspecified())
        .collect();
    let chosen = if !publish.is_empty() {
        publish
    } else if !specific.is_empty() {
        &specific
    } else {
        own
    };
    chosen
        .iter()
        .copied()
        .filter(|a| publishable(a) && !is_tunnel_fixed(*a))
        .take(MAX_ADDRS)
        .collect()
}

/// A gateway's discovery: its directory service and its gossip with other
/// gateways. Sans-IO: the driver passes the time in, hands over every event, calls
/// [`GatewayDiscovery::poll`] after each and at [`GatewayDiscovery::poll_timeout`],
/// and sends what lands in the [`Outbox`] and the node.
pub struct GatewayDiscovery {
    dir: Directory,
    /// Bootstrap gateways, asked in the first gossip round.
    bootstrap: Vec<HopSpec>,
    gossip: Option<Crawl>,
    next_gossip: Instant,
}

impl GatewayDiscovery {
    /// Signs the gateway's descriptor; the first gossip round starts at the first
    /// [`GatewayDiscovery::poll`].
    pub fn new(
        identity: Identity,
        settings: DirectorySettings,
        bootstrap: Vec<HopSpec>,
        now: Instant,
        now_unix: u64,
    ) -> Result<Self, DirectoryError> {
        Ok(Self {
            dir: Directory::new(identity, settings, now_unix)?,
            bootstrap,
            gossip: None,
            next_gossip: now,
        })
    }

    /// The directory service and its store.
    #[must_use]
    pub fn directory(&self) -> &Directory {
        &self.dir
    }

    /// Publishes the exit's new policy summary (see [`Directory::set_exit_summary`]).
    pub fn set_exit_summary(
        &mut self,
        summary: String,
        now_unix: u64,
    ) -> Result<(), DirectoryError> {
        self.dir.set_exit_summary(summary, now_unix)
    }

    /// Whether a gossip round is under way.
    #[must_use]
    pub fn gossiping(&self) -> bool {
        self.gossip.is_some()
    }

    /// Takes an event if it is discovery's (a gossip query's circuit, a DIRECTORY
    /// request or its circuit closing): what is to be sent, and the buffers spent,
    /// go to `out`, answers in buffers from `buffer`. Hands back every other event.
    #[allow(clippy::too_many_arguments)]
    pub fn on_event(
        &mut self,
        now: Instant,
        now_unix: u64,
        rng: &mut (impl RngCore + CryptoRng),
        node: &mut Node,
        e: Event,
        buffer: impl FnMut() -> Vec<u8>,
        out: &mut Outbox,
    ) -> Option<Event> {
        let e = match self.gossip.as_mut() {
            Some(g) if g.claims(&e) => {
                g.on_event(now, now_unix, rng, node, &mut self.dir.store, e, out)?
            }
            _ => e,
        };
        match e {
            Event::ServiceData {
                circuit,
                service: Service::Directory,
                cmd: Cmd::Data,
                buf,
                range,
            } => {
                let request = buf.get(range).unwrap_or_default();
                self.dir
                    .on_request(now, now_unix, rng, node, circuit, request, buffer, out);
                out.spent.push(buf);
                None
            }
            Event::ServiceClosed(circuit, Service::Directory) => {
                self.dir.closed(circuit);
                None
            }
            other => Some(other),
        }
    }

    /// Does what is due at `now`: re-signs the descriptor, starts a gossip round
    /// every [`GOSSIP_INTERVAL`], opens its queries' circuits (the node queues the
    /// handshakes) and ends it when it has nothing left to do, expiring the store.
    pub fn poll(
        &mut self,
        now: Instant,
        now_unix: u64,
        rng: &mut (impl RngCore + CryptoRng),
        node: &mut Node,
    ) -> Result<(), DirectoryError> {
        self.dir.tick(now_unix)?;
        if self.gossip.is_none() && now >= self.next_gossip {
            self.gossip = Some(Crawl::gossip(
                std::mem::take(&mut self.bootstrap),
                self.dir.own(),
            ));
            self.next_gossip = now + GOSSIP_INTERVAL;
        }
        if let Some(g) = self.gossip.as_mut() {
            g.advance(now, rng, node, &self.dir.store);
            if g.done(&self.dir.store) {
                self.gossip = None;
                self.dir.store.expire(now_unix);
            }
        }
        Ok(())
    }

    /// When [`GatewayDiscovery::poll`] next has something to do with nothing
    /// happening: the next gossip round, a query's timeout, or the re-signing.
    #[must_use]
    pub fn poll_timeout(&self, now: Instant, now_unix: u64) -> Option<Instant> {
        let gossip = match &self.gossip {
            Some(g) => g.poll_timeout(),
            None => Some(self.next_gossip),
        };
        let resign = self
            .dir
            .resign_at()
            .map(|at| now + Duration::from_secs(at.saturating_sub(now_unix)));
        match (gossip, resign) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
