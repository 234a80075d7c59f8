//! A crawl over a node's DIRECTORY circuits: the [`Crawler`]'s choices carried
//! out on circuits of a [`Node`]. Bootstrap gateways are asked first; a contested
//! gateway is tried at the addresses of both claims and the first circuit up asks
//! it; a gossiping gateway publishes its own descriptor before its `Get`.
//!
//! A client's queries go through one gateway, the crawl's *via* (PROTOCOL §11): its
//! guard when it has one, otherwise the first bootstrap gateway whose circuit comes
//! up. Only the via (and the bootstrap gateways, when no guard could be the via)
//! sees the client's address; every other gateway asked sees the via's, so it can
//! neither learn who crawls nor tailor its answer to one client. Gateways gossip
//! directly: their addresses are public.
//!
//! Sans-IO: the node queues the handshakes, and what is to be sent goes to an
//! [`Outbox`] the driver empties.

use std::collections::HashMap;
use std::time::Instant;

use rand_core::{CryptoRng, RngCore};

use super::crawl_plan::{CrawlStats, Crawler, Progress, PER_QUERY, QUERY_TIMEOUT};
use super::message::Message;
use super::outbox::Outbox;
use super::store::Store;
use crate::node::{CircuitId, Event, HopSpec, Node};
use crate::proto::wire::{Cmd, Service};

/// Whom a crawl's queries go through.
#[derive(Debug, Clone, Copy)]
enum Via {
    /// A gateway's gossip: every peer asked directly.
    Direct,
    /// A client whose via is not up yet: only its guard, or else its bootstrap
    /// gateways, are asked (directly), and the first of their circuits up names the
    /// via.
    Pending,
    /// A client's via: every other gateway is asked through it.
    Hop(HopSpec),
}

/// One crawl in progress: bootstrap queries first, then whom the crawler picks.
pub struct Crawl {
    crawler: Crawler,
    /// Bootstrap gateways not asked yet.
    bootstrap: Vec<HopSpec>,
    /// The client's guard, tried as the via before any bootstrap gateway.
    guard: Option<HopSpec>,
    via: Via,
    /// Open queries: circuit → the gateway asked.
    open: HashMap<CircuitId, [u8; 32]>,
    /// While the via is pending: the direct circuits whose gateway would become it.
    candidates: HashMap<CircuitId, HopSpec>,
    started: bool,
    /// A gateway's own descriptor, published to each peer before the `Get`.
    announce: Option<Vec<u8>>,
}

impl Crawl {
    /// A client's crawl: until `target` gateways are known or all were asked. The
    /// bootstrap gateways are asked directly, and the first whose circuit comes up
    /// carries every other query.
    #[must_use]
    pub fn new(target: usize, bootstrap: Vec<HopSpec>) -> Self {
        Self::with(
            Crawler::new(target, PER_QUERY, QUERY_TIMEOUT),
            bootstrap,
            Via::Pending,
        )
    }

    /// A client's crawl through its `guard`, which is asked first and then carries
    /// every other query, the bootstrap ones included; if the guard's circuit does
    /// not come up, as [`Crawl::new`].
    #[must_use]
    pub fn through(target: usize, guard: HopSpec, mut bootstrap: Vec<HopSpec>) -> Self {
        bootstrap.retain(|b| b.key != guard.key);
        let mut c = Self::new(target, bootstrap);
        c.guard = Some(guard);
        c
    }

    /// A gateway's gossip round: a few random known peers (and `bootstrap`), each
    /// asked directly and first told of this gateway's own descriptor (`own`, if it
    /// publishes one).
    #[must_use]
    pub fn gossip(bootstrap: Vec<HopSpec>, own: Option<&[u8]>) -> Self {
        let mut c = Self::with(Crawler::gossip(QUERY_TIMEOUT), bootstrap, Via::Direct);
        c.announce = own.map(|d| Message::Publish(d).to_vec());
        c
    }

    fn with(crawler: Crawler, bootstrap: Vec<HopSpec>, via: Via) -> Self {
        Self {
            crawler,
            bootstrap,
            guard: None,
            via,
            open: HashMap::new(),
            candidates: HashMap::new(),
            started: false,
            announce: None,
        }
    }

    /// Counters of the crawl.
    #[must_use]
    pub fn stats(&self) -> &CrawlStats {
        self.crawler.stats()
    }

    /// The gateway a client's queries go through, once its circuit came up.
    #[must_use]
    pub fn via(&self) -> Option<HopSpec> {
        match self.via {
            Via::Hop(h) => Some(h),
            Via::Direct | Via::Pending => None,
        }
    }

    /// Whether the crawl has nothing left to do: everything asked, or no gateway to
    /// carry the queries came up.
    #[must_use]
    pub fn done(&self, store: &Store) -> bool {
        self.started
            && self.open.is_empty()
            && self.bootstrap.is_empty()
            && (matches!(self.via, Via::Pending) || self.crawler.done(store))
    }

    /// The circuit's path to ask `hop`: through the via, or directly when the crawl
    /// asks directly. The via's own key is asked of the via where the client reached
    /// it, never at another address claimed for it (a claim there would see the
    /// client's address).
    fn path(&self, hop: HopSpec) -> Vec<HopSpec> {
        match self.via {
            Via::Hop(v) if v.key == hop.key => vec![v],
            Via::Hop(v) => vec![v, hop],
            Via::Direct | Via::Pending => vec![hop],
        }
    }

    /// Opens a query's circuit to `hop`; while the via is pending, its gateway is a
    /// candidate for the via.
    fn open_query(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        node: &mut Node,
        hop: HopSpec,
    ) -> bool {
        let path = self.path(hop);
        let Ok(id) = node.build_circuit(now, rng, &path, Service::Directory) else {
            return false;
        };
        self.open.insert(id, hop.key);
        if matches!(self.via, Via::Pending) {
            self.candidates.insert(id, hop);
        }
        true
    }

    /// Opens the circuits of new queries (the guard's, then the bootstrap ones,
    /// first); the node queues their handshakes.
    pub fn advance(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        node: &mut Node,
        store: &Store,
    ) {
        if !self.started {
            self.started = true;
            if let Some(g) = self.guard.take() {
                if self.open_query(now, rng, node, g) {
                    self.crawler.ask(now, g.key);
                }
            }
        }
        for key in self.crawler.on_timeout(now) {
            self.close_key(node, key);
        }
        // Bootstrap gateways are asked through the via once it is up, or directly
        // when no guard is on its way to become it.
        if matches!(self.via, Via::Direct | Via::Hop(_)) || self.candidates.is_empty() {
            for b in std::mem::take(&mut self.bootstrap) {
                if self.open_query(now, rng, node, b) {
                    self.crawler.ask(now, b.key);
                }
            }
        }
        if matches!(self.via, Via::Pending) {
            return;
        }
        while let Some(key) = self.crawler.next_query(now, rng, store) {
            // A contested gateway is tried at the addresses of both claims at once
            // (PROTOCOL §11): only the holder of the key completes a handshake, and
            // the held claim may be the false one. Otherwise its first address.
            let addrs = store.addresses(&key);
            let tries = if store.contender(&key).is_some() {
                addrs.len()
            } else {
                1
            };
            let mut opened = false;
            let mut paths = Vec::new();
            for addr in addrs.into_iter().take(tries) {
                let hop = HopSpec { addr, key };
                // Both claims of the via's key lead to the via: one circuit.
                let path = self.path(hop);
                if !paths.contains(&path) {
                    opened |= self.open_query(now, rng, node, hop);
                    paths.push(path);
                }
            }
            if !opened {
                self.crawler.on_failed(&key);
            }
        }
    }

    fn close_key(&mut self, node: &mut Node, key: [u8; 32]) {
        let ids: Vec<CircuitId> = self
            .open
            .iter()
            .filter(|(_, k)| **k == key)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.close(node, id);
        }
    }

    fn close(&mut self, node: &mut Node, id: CircuitId) {
        self.open.remove(&id);
        self.candidates.remove(&id);
        node.close_circuit(id);
    }

    /// When the crawl next has something to do with nothing happening: its earliest
    /// open query times out. A driver wakes then and calls [`Crawl::advance`].
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.crawler.poll_timeout()
    }

    /// Whether an event is about one of the crawl's circuits, so that a driver
    /// passes every other event (the data path's) on without more work.
    #[must_use]
    pub fn claims(&self, e: &Event) -> bool {
        match e {
            Event::CircuitUp(id) | Event::CircuitDown(id, _) => self.open.contains_key(id),
            Event::Data { circuit, .. } => self.open.contains_key(circuit),
            Event::ServiceData { .. } | Event::ServiceClosed(..) => false,
        }
    }

    /// Handles an event if it belongs to one of the crawl's circuits (what is to be
    /// sent, and the buffers spent, go to `out`); otherwise hands it back.
    #[allow(clippy::too_many_arguments)]
    pub fn on_event(
        &mut self,
        now: Instant,
        now_unix: u64,
        rng: &mut (impl RngCore + CryptoRng),
        node: &mut Node,
        store: &mut Store,
        e: Event,
        out: &mut Outbox,
    ) -> Option<Event> {
        match e {
            Event::CircuitUp(id) if self.open.contains_key(&id) => {
                // The first circuit up to a gateway tried at several addresses asks
                // it; the others are closed.
                let &key = self.open.get(&id)?;
                if let Some(hop) = self.candidates.remove(&id) {
                    self.via = Via::Hop(hop);
                    self.candidates.clear();
                }
                let others: Vec<CircuitId> = self
                    .open
                    .iter()
                    .filter(|(c, k)| **k == key && **c != id)
                    .map(|(c, _)| *c)
                    .collect();
                for c in others {
                    self.close(node, c);
                }
                let request = self.crawler.request();
                for payload in self.announce.iter().chain(std::iter::once(&request)) {
                    match node.send_payload(now, rng, id, payload) {
                        Ok(t) => out.transmits.extend(t),
                        Err(_) => {
                            self.fail(node, id);
                            break;
                        }
                    }
                }
                None
            }
            Event::CircuitDown(id, _) if self.open.contains_key(&id) => {
                self.fail(node, id);
                None
            }
            Event::Data {
                circuit,
                cmd: Cmd::Data,
                buf,
                range,
            } if self.open.contains_key(&circuit) => {
                let &key = self.open.get(&circuit)?;
                let payload = buf.get(range).unwrap_or_default();
                let finished = !matches!(
                    self.crawler.on_payload(&key, payload, store, now_unix),
                    Progress::Descriptor(_)
                );
                out.spent.push(buf);
                if finished {
                    self.close(node, circuit);
                }
                None
            }
            other => Some(other),
        }
    }

    fn fail(&mut self, node: &mut Node, id: CircuitId) {
        if let Some(key) = self.open.get(&id).copied() {
            // The query fails with the last of its circuits.
            if !self.open.iter().any(|(c, k)| *k == key && *c != id) {
                self.crawler.on_failed(&key);
            }
        }
        self.close(node, id);
    }

    /// Closes every open query (when the caller stops early).
    pub fn abandon(&mut self, node: &mut Node) {
        let ids: Vec<CircuitId> = self.open.keys().copied().collect();
        for id in ids {
            self.close(node, id);
        }
    }
}
