//! The tokio runtime: drivers that move bytes between UDP sockets, TUN devices and
//! the sans-IO core, and the long-running commands assembled from them. Nothing
//! here makes a protocol decision: that is the core's (`node`, `exit`, `client`,
//! `discovery`, `proto`); the kernel set-up is [`crate::sys`]'s.
//!
//! - [`daemon`]: the one event loop of `up` and `gateway`, over optional parts;
//! - [`diagnose`]: which hop a circuit that did not come up failed at, and why;
//! - [`client`]: `anonnet up` / `down` / `status`, with [`client_plane`] (the
//!   client's data plane) and [`control`] (the control socket `status` and `down`
//!   ask);
//! - [`gateway`]: `anonnet gateway [--exit]`, with [`exit`] (the exit's TUN side);
//! - [`discover_cmd`]: `anonnet discover`; [`check_cmd`]: `anonnet check` (the leak
//!   self-test); [`circuit_test_cmd`]: `anonnet circuit-test`;
//! - [`driver`] (the node between the sockets; the data path's datagrams), with
//!   [`sockets`] (UDP through quinn-udp) and [`pool`] (the shared buffers); [`tun`]
//!   (TUN device I/O), [`paths`] (where paths come from),
//!   [`discovery`] (the discovery driver: crawls, the directory service, gossip),
//!   [`replay`] (a gateway's handshake replay cache on disk), [`logging`] (where
//!   and how every command logs), [`state`] (the client's state directory),
//!   [`metrics`] (the daemons' Prometheus endpoint), [`reload`] (what SIGHUP
//!   changes).

pub mod check_cmd;
pub mod circuit_test_cmd;
pub mod client;
pub mod client_plane;
pub mod control;
pub mod daemon;
pub mod diagnose;
pub mod discover_cmd;
pub mod discovery;
pub mod driver;
pub mod exit;
pub mod gateway;
pub mod logging;
pub mod metrics;
pub mod paths;
pub mod pool;
pub mod reload;
pub mod replay;
pub mod sockets;
pub mod state;
pub mod tun;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{self, ClientConfig};
use crate::node::{Event, HopSpec, NodeConfig};
use crate::runtime::driver::Driver;

/// A failure of the network rather than of the config or the host: no gateway
/// answered, a circuit did not come up. `anonnet` then exits with
/// [`EXIT_UNAVAILABLE`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// The exit status for a bad config (`EX_CONFIG` of sysexits.h): the systemd units
/// do not restart on it (`RestartPreventExitStatus`).
pub const EXIT_CONFIG: u8 = 78;
/// The exit status for a network that did not answer ([`Unavailable`];
/// `EX_UNAVAILABLE`): worth restarting later.
pub const EXIT_UNAVAILABLE: u8 = 69;

/// The exit status for error `e`: [`EXIT_CONFIG`] when a config file is at fault,
/// [`EXIT_UNAVAILABLE`] when the network is, else 1.
#[must_use]
pub fn exit_status(e: &anyhow::Error) -> u8 {
    if e.chain()
        .any(<dyn std::error::Error>::is::<config::ConfigError>)
    {
        EXIT_CONFIG
    } else if e.chain().any(<dyn std::error::Error>::is::<Unavailable>) {
        EXIT_UNAVAILABLE
    } else {
        1
    }
}

/// The Prometheus endpoint at `addr` (`--metrics`), if asked for; its readiness
/// line on stdout.
pub(crate) async fn serve_metrics(
    addr: Option<SocketAddr>,
) -> Result<Option<metrics::MetricsServer>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let m = metrics::MetricsServer::bind(addr).await?;
    tracing::info!("metrics at http://{}{}", m.addr, metrics::PATH);
    Ok(Some(m))
}

pub(crate) fn flush_stdout() -> Result<()> {
    std::io::stdout().flush().context("cannot write to stdout")
}

/// The signals a daemon acts on.
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// What a signal asks of a daemon.
pub(crate) enum Asked {
    /// SIGTERM or SIGINT: stop, removing what it set up.
    Stop,
    /// SIGHUP: re-read the config file ([`reload`]).
    Reload,
}

impl Signals {
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?,
        })
    }

    pub(crate) async fn recv(&mut self) -> Asked {
        tokio::select! {
            _ = self.term.recv() => Asked::Stop,
            _ = self.int.recv() => Asked::Stop,
            _ = self.hup.recv() => Asked::Reload,
        }
    }
}

/// Returns an unclaimed event's buffer to the pool.
pub(crate) fn recycle(d: &Driver, e: Event) {
    if let Event::Data { buf, .. } | Event::ServiceData { buf, .. } = e {
        d.sockets.pool.put(buf);
    }
}

/// A client binds an ephemeral port on every IPv4 and IPv6 address.
pub const CLIENT_BINDS: [SocketAddr; 2] = [
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
    SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), 0),
];

/// The node settings of a client config.
#[must_use]
pub fn client_node_config(cfg: &ClientConfig) -> NodeConfig {
    NodeConfig {
        keepalive: cfg.keepalive(),
        circuit_timeout: cfg.circuit_timeout(),
        build_timeout: cfg.build_timeout(),
        padding: cfg.padding_classes().into_iter().map(usize::from).collect(),
        pace: cfg.padding_mode.pace(),
        adaptive: cfg.padding_mode.adaptive(),
        ..NodeConfig::default()
    }
}

/// The hops of a config path, as the node takes them.
#[must_use]
pub fn hop_specs(hops: &[config::HopConfig]) -> Vec<HopSpec> {
    hops.iter()
        .map(|h| HopSpec {
            addr: h.addr,
            key: h.key.0,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config error anywhere in the chain is 78, a network failure 69, the rest 1.
    #[test]
    fn exit_statuses() {
        let bad = anyhow::Error::new(config::ConfigError::Parse {
            message: "unknown field".into(),
        })
        .context("cannot start");
        assert_eq!(exit_status(&bad), EXIT_CONFIG);
        let silent = anyhow::Error::new(Unavailable("no gateway answered".into()));
        assert_eq!(exit_status(&silent.context("up")), EXIT_UNAVAILABLE);
        assert_eq!(exit_status(&anyhow::anyhow!("no CAP_NET_ADMIN")), 1);
    }
}
