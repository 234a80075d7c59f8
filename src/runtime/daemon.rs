//! One event loop for every long-running command (`anonnet up`, `anonnet gateway`):
//! the [`Driver`] (sockets and node) and the tunnel end's [`DataPath`] in the
//! middle, and the optional parts around them, each a field with its state:
//!
//! - the client's data plane (`ClientPlane`: TUN device, circuit pool, flow
//!   router), for `up`;
//! - the exit's side (`ExitSide`: TUN device, NAT, policy), for `gateway --exit`;
//! - a gateway's discovery ([`GatewayDiscovery`]: directory service and gossip),
//!   for `gateway` and a client that relays (mixed mode).
//!
//! The loop waits in one place for datagrams, TUN packets, the node's and the
//! parts' deadlines, the exit's released addresses, signals (SIGHUP re-reads the
//! config: [`crate::runtime::reload`]) and the control socket's requests
//! (`up`'s: [`Control`]). Each event goes to discovery first, then to the
//! data plane that owns the circuit.

use std::time::Instant;

use anyhow::Result;

use crate::discovery::GatewayDiscovery;
use crate::exit::policy::ExitPolicy;
use crate::exit::Closed;
use crate::node::{DataPath, Event};
use crate::proto::wire::PAYLOAD_OFFSET;
use crate::runtime::client_plane::ClientPlane;
use crate::runtime::control::{Control, Reply, Request};
use crate::runtime::discovery::{discovery_event, discovery_poll, unix_now};
use crate::runtime::driver::Driver;
use crate::runtime::exit::ExitSide;
use crate::runtime::logging;
use crate::runtime::metrics::{encode_snapshot, MetricsServer, OwnCircuits, Snapshot};
use crate::runtime::reload::Reload;
use crate::runtime::tun::Counted;
use crate::runtime::tun::TunReader;
use crate::runtime::{recycle, Asked, Signals};

/// A running daemon: the driver and its optional parts (see the module's doc).
pub(crate) struct Daemon {
    pub(crate) d: Driver,
    data: DataPath,
    /// Packets read from the TUN device of the client or the exit.
    tun_rx: Option<TunReader>,
    client: Option<ClientPlane>,
    exit: Option<ExitSide>,
    discovery: Option<GatewayDiscovery>,
    control: Option<Control>,
    metrics: Option<MetricsServer>,
    /// The config file SIGHUP re-reads.
    reload: Option<Reload>,
    /// What the metrics count outside the parts: own circuits' events, TUN reads.
    own: OwnCircuits,
    tun_read: Counted,
}

impl Daemon {
    /// A daemon of `d` and the given parts; the TUN reader starts here, on the
    /// client's or the exit's device (a daemon has at most one of them).
    pub(crate) fn new(
        d: Driver,
        client: Option<ClientPlane>,
        exit: Option<ExitSide>,
        discovery: Option<GatewayDiscovery>,
    ) -> Self {
        let pool = d.sockets.pool.clone();
        let tun_rx = match (&client, &exit) {
            (Some(c), _) => Some(c.spawn_reader(pool)),
            (None, Some(x)) => Some(x.spawn_reader(pool)),
            (None, None) => None,
        };
        Self {
            d,
            data: DataPath::default(),
            tun_rx,
            client,
            exit,
            discovery,
            control: None,
            metrics: None,
            reload: None,
            own: OwnCircuits::default(),
            tun_read: Counted::default(),
        }
    }

    /// Answers `metrics`' scrapes from now on.
    pub(crate) fn with_metrics(mut self, metrics: Option<MetricsServer>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Re-reads `reload`'s file on SIGHUP from now on.
    pub(crate) fn with_reload(mut self, reload: Reload) -> Self {
        self.reload = Some(reload);
        self
    }

    /// SIGHUP: re-reads the config file; applies its log filter and an exit's
    /// policy (republished in the descriptor), and names the changes that wait for a
    /// restart. A file that does not load, or a policy that cannot be built,
    /// changes nothing.
    fn reload(&mut self) {
        let Some(r) = self.reload.as_mut() else {
            tracing::info!("SIGHUP: no config file to re-read");
            return;
        };
        let path = r.path.display().to_string();
        let (changes, applied) = match r.reread(self.exit.is_some()) {
            Ok(read) => read,
            Err(e) => {
                tracing::error!("SIGHUP: {e}; nothing changed");
                return;
            }
        };
        let policy = match &changes.policy {
            Some(rules) => match ExitPolicy::new(rules, &crate::sys::own_addresses()) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::error!("SIGHUP: {path}: exit.policy: {e}; nothing changed");
                    return;
                }
            },
            None => None,
        };
        let (filter, source) = logging::apply_config(changes.log.as_deref());
        let mut done = vec![format!("log filter {filter:?} ({source})")];
        if let (Some(p), Some(x)) = (policy, self.exit.as_mut()) {
            let summary = x.set_policy(p);
            if let Some(g) = self.discovery.as_mut() {
                if let Err(e) = g.set_exit_summary(summary.clone(), unix_now()) {
                    tracing::warn!("the new exit policy is not published: {e}");
                }
            }
            done.push(format!("exit policy now \"{summary}\""));
        }
        r.commit(applied);
        tracing::info!("reloaded {path}: {}", done.join("; "));
        if !changes.restart.is_empty() {
            tracing::warn!(
                "{path}: the changes in {} take effect at the next restart",
                changes.restart.join(", ")
            );
        }
    }

    fn role(&self) -> &'static str {
        match (&self.client, &self.exit) {
            (Some(_), _) => "client",
            (None, Some(_)) => "exit",
            (None, None) => "gateway",
        }
    }

    /// The daemon's counters for a scrape, in the OpenMetrics text format.
    fn metrics(&self) -> String {
        let d = &self.d;
        let tun_written = match (&self.client, &self.exit) {
            (Some(c), _) => c.tun_written(),
            (None, Some(x)) => x.tun_written(),
            (None, None) => Counted::default(),
        };
        encode_snapshot(&Snapshot {
            role: self.role(),
            node: d.node.stats().clone(),
            handshake_rate: d.node.handshake_rate(),
            relayed_circuits: d.node.relayed_circuits(),
            received: d.received,
            sent: d.sockets.sent,
            send_errors: d.sockets.send_errors,
            tun_read: self.tun_read,
            tun_written,
            own: self.own.clone(),
            pool: self.client.as_ref().map(ClientPlane::circuit_counts),
            exit: self.exit.as_ref().map(ExitSide::stats),
        })
    }

    /// Serves `control`'s requests from now on.
    pub(crate) fn with_control(mut self, control: Control) -> Self {
        self.control = Some(control);
        self
    }

    /// The daemon's state for `anonnet status`, as JSON.
    fn status(&self) -> String {
        let now = Instant::now();
        let mut v = serde_json::json!({
            "pid": std::process::id(),
            "role": self.role(),
            "relayed_circuits": self.d.node.relayed_circuits(),
            "node": self.d.node.stats(),
        });
        if let Some(x) = &self.exit {
            v["exit"] = serde_json::to_value(x.stats()).unwrap_or_default();
        }
        if let Some(c) = &self.client {
            v["client"] = c.status(now, &self.d.node);
        }
        format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default())
    }

    /// Runs until SIGINT or SIGTERM (or until the TUN device fails); then closes
    /// the client's circuits and tells every peer this node stops (CLOSE on every
    /// link), so they rebuild at once.
    pub(crate) async fn run(&mut self) -> Result<()> {
        let mut signals = Signals::new()?;
        let mut events = Vec::new();
        let mut packets = Vec::new();
        let mut request: Option<(Request, Reply)> = None;
        let mut scrape: Option<Reply> = None;
        let mut reload = false;
        let result = loop {
            let Self {
                d,
                tun_rx,
                exit,
                client,
                discovery,
                control,
                metrics,
                ..
            } = self;
            let now = Instant::now();
            let wake = [
                client.as_ref().and_then(|c| c.poll_timeout(now, &d.node)),
                exit.as_ref().and_then(ExitSide::poll_timeout),
                discovery
                    .as_ref()
                    .and_then(|g| g.poll_timeout(now, unix_now())),
            ]
            .into_iter()
            .flatten()
            .min();
            let tun = tun_rx.as_mut().map(|r| &mut r.rx);
            let open = tokio::select! {
                open = d.step_with(&mut events, tun, &mut packets, wake) => open,
                Some(batch) = released(exit.as_mut()) => {
                    if let Some(x) = exit.as_mut() {
                        x.release(batch);
                    }
                    true
                }
                asked = signals.recv() => match asked {
                    Asked::Stop => break Ok(()),
                    Asked::Reload => {
                        reload = true;
                        true
                    }
                },
                Some(r) = next_request(control.as_mut()) => {
                    request = Some(r);
                    true
                }
                Some(r) = next_scrape(metrics.as_mut()) => {
                    scrape = Some(r);
                    true
                }
            };
            if std::mem::take(&mut reload) {
                self.reload();
            }
            if let Some(reply) = scrape.take() {
                let _ = reply.send(self.metrics());
            }
            if let Some((req, reply)) = request.take() {
                match req {
                    Request::Status => {
                        let _ = reply.send(self.status());
                    }
                    Request::Stop => {
                        tracing::info!("stopping: asked on the control socket");
                        let _ = reply.send(format!("stopping {}\n", std::process::id()));
                        break Ok(());
                    }
                }
            }
            if !open {
                break Err(self.tun_failed());
            }
            let now = Instant::now();
            for e in events.drain(..) {
                self.on_event(now, e).await;
            }
            if let Err(e) = self.poll(now).await {
                break Err(e);
            }
            for buf in packets.drain(..) {
                self.on_tun_packet(now, buf).await;
            }
            if let Some(c) = self.client.as_mut() {
                c.flush_tun().await;
            }
            if let Some(x) = self.exit.as_mut() {
                x.flush_tun().await;
            }
            self.d.flush().await;
        };
        if let Some(c) = self.client.as_mut() {
            c.close(&mut self.d);
        }
        self.d.node.shutdown();
        self.d.flush().await;
        if self.client.is_none() {
            // Its counters, one JSON object as `status --gateway --json` has them.
            let mut v = serde_json::json!({"node": self.d.node.stats()});
            if let Some(x) = &self.exit {
                v["exit"] = serde_json::to_value(x.stats()).unwrap_or_default();
            }
            tracing::info!("anonnet gateway stopping: {v}");
        }
        result
    }

    fn tun_failed(&self) -> anyhow::Error {
        let name = match (&self.client, &self.exit) {
            (Some(c), _) => c.tun_name(),
            (None, Some(x)) => x.tun_name(),
            (None, None) => "",
        };
        anyhow::anyhow!("the TUN device {name} failed")
    }

    /// Hands an event to discovery, then to the data plane of its circuit; an event
    /// nobody claims has its buffer returned.
    async fn on_event(&mut self, now: Instant, e: Event) {
        match &e {
            Event::CircuitUp(_) => self.own.up += 1,
            Event::CircuitDown(_, why) => *self.own.down.entry(why.label()).or_default() += 1,
            _ => {}
        }
        let d = &mut self.d;
        let e = match self.discovery.as_mut() {
            Some(g) => match discovery_event(d, g, now, e).await {
                Some(e) => e,
                None => return,
            },
            None => e,
        };
        if let Some(c) = self.client.as_mut() {
            c.on_event(d, &mut self.data, now, e).await;
        } else if let Some(x) = self.exit.as_mut() {
            x.on_event(d, &mut self.data, now, e).await;
        } else {
            recycle(d, e);
        }
    }

    /// What the parts have due after the events: the client's pool (builds,
    /// retirements), the exit's virtual circuits (reorder timeouts, expiry),
    /// discovery's re-signing and gossip.
    async fn poll(&mut self, now: Instant) -> Result<()> {
        if let Some(c) = self.client.as_mut() {
            c.maintain(&mut self.d, &mut self.data, now).await?;
        }
        if let Some(x) = self.exit.as_mut() {
            x.poll(&mut self.d, &mut self.data, now).await;
        }
        if let Some(g) = self.discovery.as_mut() {
            discovery_poll(&mut self.d, g, now).await?;
        }
        Ok(())
    }

    /// A packet read from the TUN device, to the data plane that owns the device.
    async fn on_tun_packet(&mut self, now: Instant, buf: Vec<u8>) {
        self.tun_read.add(buf.len().saturating_sub(PAYLOAD_OFFSET));
        if let Some(c) = self.client.as_mut() {
            c.on_tun_packet(&mut self.d, &mut self.data, now, buf).await;
        } else if let Some(x) = self.exit.as_mut() {
            x.on_tun_packet(&mut self.d, &mut self.data, now, buf).await;
        } else {
            self.d.sockets.pool.put(buf);
        }
    }

    /// Stops the TUN reader and removes the kernel state the parts set up; returns
    /// what the client's clean-up removed.
    pub(crate) async fn stop(self) -> Result<Vec<String>> {
        drop(self.tun_rx);
        if let Some(x) = self.exit {
            x.stop().await?;
        }
        match self.client {
            Some(c) => c.stop().await,
            None => Ok(Vec::new()),
        }
    }
}

/// The exit's next batch of released pool addresses; never resolves without an
/// exit.
/// The control socket's next request; never, without one.
async fn next_scrape(metrics: Option<&mut MetricsServer>) -> Option<Reply> {
    match metrics {
        Some(m) => m.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_request(control: Option<&mut Control>) -> Option<(Request, Reply)> {
    match control {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

async fn released(exit: Option<&mut ExitSide>) -> Option<Vec<Closed>> {
    match exit {
        Some(x) => x.forgotten().await,
        None => std::future::pending().await,
    }
}
