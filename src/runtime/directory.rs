//! The discovery driver: runs [`Crawler`] queries over DIRECTORY circuits of a
//! [`Driver`], publishes a gateway's own descriptor and answers other nodes'
//! requests with [`Server`]. It holds no protocol logic beyond moving payloads
//! between circuits and the core of [`crate::discovery`].

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::discovery::{
    CacheReport, Crawler, Message, Progress, Server, Session, Source, Store, StoreLimits,
    PER_QUERY, QUERY_TIMEOUT,
};
use crate::node::{CircuitId, Event, HopSpec};
use crate::proto::descriptor::{Descriptor, MAX_SUMMARY_LEN};
use crate::proto::identity::Identity;
use crate::proto::wire::Service;
use crate::runtime::driver::Driver;

/// Name of the descriptor cache in a state directory.
pub const CACHE_FILE: &str = "descriptors.cache";

/// Seconds since the Unix epoch (descriptor times).
#[must_use]
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Loads the descriptor cache of `dir`; a missing file is an empty store, a corrupt
/// one is reported and what could be read is kept.
#[must_use]
pub fn load_cache(dir: &Path) -> (Store, Option<CacheReport>) {
    match std::fs::read(dir.join(CACHE_FILE)) {
        Ok(bytes) => {
            let (store, report) = Store::decode_cache(&bytes, unix_now(), StoreLimits::default());
            (store, Some(report))
        }
        Err(_) => (Store::new(StoreLimits::default()), None),
    }
}

/// Writes the descriptor cache atomically (a temporary file renamed over the old).
pub fn save_cache(dir: &Path, store: &Store) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let path = dir.join(CACHE_FILE);
    let tmp: PathBuf = dir.join(format!("{CACHE_FILE}.tmp"));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(&store.encode_cache())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot replace {}", path.display()))
}

/// How long a client crawls for gateways at most before giving up.
pub const CRAWL_LIMIT: Duration = Duration::from_secs(60);

/// The descriptor cache of a state directory; a corrupt one is reported, and
/// rebuilt by the next crawl.
pub fn load_store(dir: &Path) -> Store {
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
    pub fn stats(&self) -> &crate::discovery::CrawlStats {
        self.crawler.stats()
    }

    /// Whether the crawl has nothing left to do.
    #[must_use]
    pub fn done(&self, store: &Store) -> bool {
        self.started && self.open.is_empty() && self.crawler.done(store)
    }

    /// Opens the circuits of new queries (bootstrap ones on the first call).
    pub async fn advance(&mut self, d: &mut Driver, store: &Store) {
        let now = Instant::now();
        if !self.started {
            self.started = true;
            for b in std::mem::take(&mut self.bootstrap) {
                if let Ok(id) = d
                    .node
                    .build_circuit(now, &mut d.rng, &[b], Service::Directory)
                {
                    self.crawler.ask(now, b.key);
                    self.open.insert(id, b.key);
                }
            }
        }
        for key in self.crawler.on_timeout(now) {
            self.close_key(d, key);
        }
        while let Some(key) = self.crawler.next_query(now, &mut d.rng, store) {
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
                if let Ok(id) = d.node.build_circuit(
                    now,
                    &mut d.rng,
                    &[HopSpec { addr, key }],
                    Service::Directory,
                ) {
                    self.open.insert(id, key);
                    opened = true;
                }
            }
            if !opened {
                self.crawler.on_failed(&key);
            }
        }
        d.flush().await;
    }

    fn close_key(&mut self, d: &mut Driver, key: [u8; 32]) {
        let ids: Vec<CircuitId> = self
            .open
            .iter()
            .filter(|(_, k)| **k == key)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.open.remove(&id);
            d.node.close_circuit(id);
        }
    }

    fn close(&mut self, d: &mut Driver, id: CircuitId) {
        self.open.remove(&id);
        d.node.close_circuit(id);
    }

    /// Handles an event if it belongs to one of the crawl's circuits; otherwise
    /// hands it back.
    pub async fn on_event(&mut self, d: &mut Driver, store: &mut Store, e: Event) -> Option<Event> {
        match e {
            Event::CircuitUp(id) if self.open.contains_key(&id) => {
                // The first circuit up to a gateway tried at several addresses asks
                // it; the others are closed.
                let key = self.open[&id];
                let others: Vec<CircuitId> = self
                    .open
                    .iter()
                    .filter(|(c, k)| **k == key && **c != id)
                    .map(|(c, _)| *c)
                    .collect();
                for c in others {
                    self.close(d, c);
                }
                let request = self.crawler.request();
                let now = Instant::now();
                for payload in self.announce.iter().chain(std::iter::once(&request)) {
                    match d.node.send_payload(now, &mut d.rng, id, payload) {
                        Ok(t) => d.sockets.send_recycle(t).await,
                        Err(_) => {
                            self.fail(d, id);
                            break;
                        }
                    }
                }
                None
            }
            Event::CircuitDown(id, _) if self.open.contains_key(&id) => {
                self.fail(d, id);
                None
            }
            Event::Data {
                circuit,
                buf,
                range,
            } if self.open.contains_key(&circuit) => {
                let key = self.open[&circuit];
                let finished = !matches!(
                    self.crawler
                        .on_payload(&key, &buf[range], store, unix_now()),
                    Progress::Descriptor(_)
                );
                d.sockets.pool.put(buf);
                if finished {
                    self.close(d, circuit);
                }
                None
            }
            other => Some(other),
        }
    }

    fn fail(&mut self, d: &mut Driver, id: CircuitId) {
        if let Some(key) = self.open.get(&id).copied() {
            // The query fails with the last of its circuits.
            if !self.open.iter().any(|(c, k)| *k == key && *c != id) {
                self.crawler.on_failed(&key);
            }
        }
        self.close(d, id);
    }

    /// Closes every open query (when the caller stops early).
    pub fn abandon(&mut self, d: &mut Driver) {
        let ids: Vec<CircuitId> = self.open.keys().copied().collect();
        for id in ids {
            self.close(d, id);
        }
    }
}

/// Runs a crawl to completion or until `limit`, reporting progress; returns its
/// counters.
pub async fn crawl(
    d: &mut Driver,
    store: &mut Store,
    target: usize,
    bootstrap: Vec<HopSpec>,
    limit: Duration,
    mut progress: impl FnMut(&Store, &crate::discovery::CrawlStats),
) -> crate::discovery::CrawlStats {
    let mut c = Crawl::new(target, bootstrap);
    let until = Instant::now() + limit;
    let mut events = Vec::new();
    while Instant::now() < until {
        c.advance(d, store).await;
        if c.done(store) {
            break;
        }
        tokio::select! {
            () = d.step(&mut events) => {}
            () = tokio::time::sleep_until(until.into()) => {}
        }
        for e in events.drain(..) {
            if let Some(Event::Data { buf, .. }) = c.on_event(d, store, e).await {
                d.sockets.pool.put(buf);
            }
        }
        progress(store, c.stats());
    }
    c.abandon(d);
    d.flush().await;
    *c.stats()
}

/// A gateway's own descriptor and the directory service it runs.
pub struct Directory {
    pub store: Store,
    server: Server,
    sessions: HashMap<CircuitId, Session>,
    identity: Identity,
    /// This gateway's descriptor before signing; `None` when it has no address to
    /// publish (e.g. it listens on loopback only).
    template: Option<Descriptor>,
    lifetime: u64,
    resign_at: u64,
}

impl Directory {
    /// Signs this gateway's descriptor (unless `addrs` is empty) and starts a store
    /// holding it.
    pub fn new(
        identity: Identity,
        addrs: Vec<IpAddr>,
        ports: (u16, u16),
        exit_summary: Option<String>,
        share: bool,
        rate: u32,
        lifetime: u64,
    ) -> Result<Self> {
        let signing = identity.signing_key();
        let summary = exit_summary.map(|s| truncate_summary(&s));
        let template = (!addrs.is_empty()).then(|| Descriptor {
            identity: signing.verifying_key().to_bytes(),
            onion_key: identity.public().0,
            addrs,
            ports,
            exit: summary.is_some(),
            policy_summary: summary.unwrap_or_default(),
            published: 0,
            expires: 0,
        });
        let mut dir = Self {
            store: Store::new(StoreLimits::default()),
            server: Server::new(share, rate),
            sessions: HashMap::new(),
            identity,
            template,
            lifetime,
            resign_at: 0,
        };
        dir.resign(unix_now())?;
        Ok(dir)
    }

    /// Re-signs the descriptor at half its lifetime.
    pub fn tick(&mut self) -> Result<()> {
        let now = unix_now();
        if now >= self.resign_at {
            self.resign(now)?;
        }
        Ok(())
    }

    fn resign(&mut self, now: u64) -> Result<()> {
        let Some(mut desc) = self.template.clone() else {
            self.resign_at = u64::MAX;
            return Ok(());
        };
        desc.published = now;
        desc.expires = now + self.lifetime;
        let bytes = desc.sign(&self.identity.signing_key()).context(
            "cannot sign this gateway's descriptor (check discovery.publish and listen_ports)",
        )?;
        self.store
            .insert(&bytes, now, Source::Own)
            .map_err(|e| anyhow::anyhow!("own descriptor refused: {e:?}"))?;
        self.resign_at = now + self.lifetime / 2;
        Ok(())
    }

    /// This gateway's current signed descriptor, if it publishes one.
    #[must_use]
    pub fn own(&self) -> Option<&[u8]> {
        self.template.as_ref()?;
        self.store
            .iter()
            .find(|e| e.source() == Source::Own)
            .map(|e| e.bytes())
    }

    /// Takes a request that arrived on a DIRECTORY circuit: a published descriptor
    /// (stored), or a `Get` (answered).
    pub async fn on_request(&mut self, d: &mut Driver, circuit: CircuitId, request: &[u8]) {
        let now = Instant::now();
        if self
            .server
            .publish(now, &mut self.store, request, unix_now())
        {
            return;
        }
        let session = self.sessions.entry(circuit).or_default();
        let mut out = Vec::new();
        self.server
            .handle(now, &mut d.rng, &self.store, session, request, &mut out);
        for payload in out {
            let mut buf = d.sockets.pool.get();
            buf.resize(crate::proto::wire::PAYLOAD_OFFSET + payload.len(), 0);
            buf[crate::proto::wire::PAYLOAD_OFFSET..].copy_from_slice(&payload);
            match d.node.send_backward(now, circuit, buf, payload.len()) {
                Ok(t) => d.sockets.send_recycle(t).await,
                Err(e) => tracing::debug!("directory answer dropped: {e}"),
            }
        }
    }

    /// Forgets a closed circuit's session.
    pub fn closed(&mut self, circuit: CircuitId) {
        self.sessions.remove(&circuit);
    }
}

/// Cuts a policy summary at a comma so it fits a descriptor. The summary only guides
/// clients' choice of exit; the exit enforces its full policy either way.
fn truncate_summary(s: &str) -> String {
    if s.len() <= MAX_SUMMARY_LEN {
        return s.to_string();
    }
    let cut = s[..MAX_SUMMARY_LEN].rfind(',').unwrap_or(0);
    s[..cut].to_string()
}
