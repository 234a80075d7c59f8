//! The discovery driver: the descriptor cache on disk, the clock for
//! [`crate::discovery`]'s [`Crawl`] and [`GatewayDiscovery`], and the sending of what they
//! put in their [`Outbox`]. No protocol logic: whom to ask, what to publish and how
//! to answer are the core's.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::discovery::{
    CacheReport, Crawl, CrawlStats, GatewayDiscovery, Outbox, Store, StoreLimits,
};
use crate::files::write_atomic;
use crate::node::{Event, HopSpec};
use crate::proto::identity::PublicKey;
use crate::runtime::driver::Driver;
use crate::runtime::Unavailable;

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

/// Writes the descriptor cache atomically ([`write_atomic`]).
pub fn save_cache(dir: &Path, store: &Store) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
    let path = dir.join(CACHE_FILE);
    write_atomic(&path, &store.encode_cache())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// How long a client crawls for gateways at most before giving up.
pub const CRAWL_LIMIT: Duration = Duration::from_secs(60);

/// The descriptor cache of a state directory; a corrupt one is reported, and
/// rebuilt by the next crawl.
pub fn load_store(dir: &Path) -> Store {
    let (store, report) = load_cache(dir);
    if let Some(r) = report {
        if r.corrupt {
            tracing::warn!(
                "the descriptor cache in {} is damaged: kept {} gateways, it will be rebuilt",
                dir.display(),
                r.loaded
            );
        }
    }
    store
}

/// Sends what discovery put in `out` and returns its spent buffers to the pool.
pub async fn send_outbox(d: &mut Driver, out: &mut Outbox) {
    for t in out.transmits.drain(..) {
        d.sockets.send_recycle(t).await;
    }
    for b in out.spent.drain(..) {
        d.sockets.pool.put(b);
    }
}

/// Feeds an event to a crawl and sends what it answers; hands back the events that
/// are not the crawl's.
pub async fn crawl_event(
    d: &mut Driver,
    crawl: &mut Crawl,
    store: &mut Store,
    e: Event,
) -> Option<Event> {
    if !crawl.claims(&e) {
        return Some(e);
    }
    let mut out = Outbox::default();
    let e = crawl.on_event(
        Instant::now(),
        unix_now(),
        &mut d.rng,
        &mut d.node,
        store,
        e,
        &mut out,
    );
    send_outbox(d, &mut out).await;
    e
}

/// Lets a crawl open the circuits of its next queries and sends their handshakes.
pub async fn crawl_advance(d: &mut Driver, crawl: &mut Crawl, store: &Store) {
    crawl.advance(Instant::now(), &mut d.rng, &mut d.node, store);
    d.flush().await;
}

/// Hands an event to a gateway's discovery and sends what it answers; hands back
/// the events that are not discovery's.
pub(crate) async fn discovery_event(
    d: &mut Driver,
    g: &mut GatewayDiscovery,
    now: Instant,
    e: Event,
) -> Option<Event> {
    let mut out = Outbox::default();
    let pool = &d.sockets.pool;
    let e = g.on_event(
        now,
        unix_now(),
        &mut d.rng,
        &mut d.node,
        e,
        || pool.get(),
        &mut out,
    );
    send_outbox(d, &mut out).await;
    e
}

/// Lets a gateway's discovery do what is due (re-signing, gossip) and sends the
/// handshakes of the circuits it opened.
pub(crate) async fn discovery_poll(
    d: &mut Driver,
    g: &mut GatewayDiscovery,
    now: Instant,
) -> Result<()> {
    g.poll(now, unix_now(), &mut d.rng, &mut d.node)?;
    d.flush().await;
    Ok(())
}

/// The error when no gateway answered a crawl: it names the bootstrap gateways.
#[must_use]
pub fn nobody_answered(bootstrap: &[HopSpec]) -> Unavailable {
    let names: Vec<String> = bootstrap
        .iter()
        .map(|h| format!("{} (key {})", h.addr, PublicKey(h.key).short()))
        .collect();
    Unavailable(format!(
        "no gateway answered discovery; asked the bootstrap gateway(s) {}: each is down or \
         unreachable, or the key given for it is wrong (a gateway ignores a handshake made \
         for another key)",
        names.join(", ")
    ))
}

/// Runs a client's crawl (through `guard` if it has one, PROTOCOL §11) to
/// completion or until `limit`, reporting progress; returns its counters and the
/// gateway its queries went through.
pub async fn crawl(
    d: &mut Driver,
    store: &mut Store,
    target: usize,
    guard: Option<HopSpec>,
    bootstrap: Vec<HopSpec>,
    limit: Duration,
    mut progress: impl FnMut(&Store, &CrawlStats),
) -> (CrawlStats, Option<HopSpec>) {
    let mut c = match guard {
        Some(g) => Crawl::through(target, g, bootstrap),
        None => Crawl::new(target, bootstrap),
    };
    let until = Instant::now() + limit;
    let mut events = Vec::new();
    while Instant::now() < until {
        crawl_advance(d, &mut c, store).await;
        if c.done(store) {
            break;
        }
        let wake = c.poll_timeout().map_or(until, |t| t.min(until));
        d.step_until(&mut events, Some(wake)).await;
        for e in events.drain(..) {
            if let Some(Event::Data { buf, .. }) = crawl_event(d, &mut c, store, e).await {
                d.sockets.pool.put(buf);
            }
        }
        progress(store, c.stats());
    }
    c.abandon(&mut d.node);
    d.flush().await;
    (*c.stats(), c.via())
}
