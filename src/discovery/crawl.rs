//! A crawl over a node's DIRECTORY circuits: the [`Crawler`]'s choices carried
//! out on one-hop circuits of a [`Node`]. Bootstrap gateways are asked first; a
//! contested gateway is tried at the addresses of both claims and the first circuit
//! up asks it; a gossiping gateway publishes its own descriptor before its `Get`.
//! Sans-IO: the node queues the handshakes, and what is to be sent goes to an
//! [`Outbox`] the driver empties.

use std::collections::HashMap;
use std::time::Instant;

use rand_core::{CryptoRng, RngCore};

use super::crawler::{CrawlStats, Crawler, Progress, PER_QUERY, QUERY_TIMEOUT};
use super::message::Message;
use super::outbox::Outbox;
use super::store::Store;
use crate::node::{CircuitId, Event, HopSpec, Node};
use crate::proto::wire::Service;

/// One crawl in progress: bootstrap queries first, then whom the crawler picks.
pub struct Crawl {
    crawler: Crawler,
    bootstrap: Vec<HopSpec>,
    /// Open queries: circuit → the gateway asked.
    open: HashMap<CircuitId, [u8; 32]>,
    started: bool,
    /// A gateway's own descriptor, published to each peer before the `Get`.
    announce: Option<Vec<u8>>,
}

impl Crawl {
    /// A client's crawl: until `target` gateways are known or all were asked.
    #[must_use]
    pub fn new(target: usize, bootstrap: Vec<HopSpec>) -> Self {
        Self::with(Crawler::new(target, PER_QUERY, QUERY_TIMEOUT), bootstrap)
    }

    /// A gateway's gossip round: a few random known peers (and `bootstrap`), each
    /// first told of this gateway's own descriptor (`own`, if it publishes one).
    #[must_use]
    pub fn gossip(bootstrap: Vec<HopSpec>, own: Option<&[u8]>) -> Self {
        let mut c = Self::with(Crawler::gossip(QUERY_TIMEOUT), bootstrap);
        c.announce = own.map(|d| Message::Publish(d).to_vec());
        c
    }

    fn with(crawler: Crawler, bootstrap: Vec<HopSpec>) -> Self {
        Self {
            crawler,
            bootstrap,
            open: HashMap::new(),
            started: false,
            announce: None,
        }
    }

    /// Counters of the crawl.
    #[must_use]
    pub fn stats(&self) -> &CrawlStats {
        self.crawler.stats()
    }

    /// Whether the crawl has nothing left to do.
    #[must_use]
    pub fn done(&self, store: &Store) -> bool {
        self.started && self.open.is_empty() && self.crawler.done(store)
    }

    /// Opens the circuits of new queries (bootstrap ones on the first call); the
    /// node queues their handshakes.
    pub fn advance(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        node: &mut Node,
        store: &Store,
    ) {
        if !self.started {
            self.started = true;
            for b in std::mem::take(&mut self.bootstrap) {
                if let Ok(id) = node.build_circuit(now, rng, &[b], Service::Directory) {
                    self.crawler.ask(now, b.key);
                    self.open.insert(id, b.key);
                }
            }
        }
        for key in self.crawler.on_timeout(now) {
            self.close_key(node, key);
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
            for addr in addrs.into_iter().take(tries) {
                if let Ok(id) =
                    node.build_circuit(now, rng, &[HopSpec { addr, key }], Service::Directory)
                {
                    self.open.insert(id, key);
                    opened = true;
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
            self.open.remove(&id);
            node.close_circuit(id);
        }
    }

    fn close(&mut self, node: &mut Node, id: CircuitId) {
        self.open.remove(&id);
        node.close_circuit(id);
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
                        Ok(t) => out.transmits.push(t),
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
