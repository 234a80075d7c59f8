//! `anonnet gateway [--exit]`: a relay, optionally an exit, with its directory
//! service and gossip; set up here, run by the daemon loop ([`crate::runtime::daemon`]).
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;

use crate::config::identity_file;
use crate::config::{self};
use crate::discovery::{published_addrs, DirectorySettings, GatewayDiscovery};
use crate::node::{Node, NodeConfig};
use crate::proto::descriptor::PaddingBudget;
use crate::proto::identity::Identity;
use crate::runtime::daemon::Daemon;
use crate::runtime::discovery::unix_now;
use crate::runtime::driver::Driver;
use crate::runtime::exit::ExitSide;
use crate::runtime::{flush_stdout, hop_specs, replay};

/// Sets a gateway up: reads the identity, sets up the exit side (with `exit`),
/// discovery and the sockets, and prints the readiness line. What was set up is
/// removed again when a later step fails. The daemon relays (and exits) until
/// SIGINT or SIGTERM; its `stop` removes the exit's kernel state.
pub(crate) async fn start(cfg: &config::GatewayConfig, exit: bool) -> Result<Daemon> {
    let id = identity_file::read(&cfg.identity)?;
    let exit_side = if exit {
        Some(ExitSide::start(&cfg.exit).await?)
    } else {
        None
    };
    let summary = exit_side.as_ref().map(|x| x.policy_summary.clone());
    match bind(cfg, &id, summary) {
        Ok((d, discovery)) => {
            let bound: Vec<String> = d.sockets.local_addrs().map(|a| a.to_string()).collect();
            // The readiness line scripts wait for.
            println!(
                "anonnet gateway {} listening on {}{}",
                id.public(),
                bound.join(" "),
                if exit {
                    format!(" (exit via {})", cfg.exit.tun)
                } else {
                    String::new()
                }
            );
            flush_stdout()?;
            Ok(Daemon::new(d, None, exit_side, Some(discovery)))
        }
        Err(e) => {
            if let Some(x) = exit_side {
                if let Err(e) = x.stop().await {
                    tracing::error!("{e:#}");
                }
            }
            Err(e)
        }
    }
}

/// Discovery and the sockets with their node; `exit_summary` is the exit's policy
/// summary (`None`: not an exit).
fn bind(
    cfg: &config::GatewayConfig,
    id: &Identity,
    exit_summary: Option<String>,
) -> Result<(Driver, GatewayDiscovery)> {
    let exit = exit_summary.is_some();
    let discovery = gateway_discovery(cfg, id, exit_summary)?;
    let node = Node::new(NodeConfig {
        exit,
        ..gateway_node_config(cfg, id, NodeConfig::default())
    });
    let addrs: Vec<_> = cfg.listen_addrs().collect();
    let mtu = if exit { cfg.exit.mtu as usize } else { 0 };
    let mut d = Driver::tunnel(node, &addrs, None, mtu)?;
    d.keep_handshakes(&replay::path_for(&cfg.identity))?;
    Ok((d, discovery))
}

/// A gateway's discovery from its config: its descriptor publishes the addresses
/// [`published_addrs`] chooses; `exit_summary` is the exit's policy summary.
pub(crate) fn gateway_discovery(
    cfg: &config::GatewayConfig,
    id: &Identity,
    exit_summary: Option<String>,
) -> Result<GatewayDiscovery> {
    let disc = &cfg.discovery;
    let addrs = published_addrs(&disc.publish, &cfg.listen, &crate::sys::own_addresses());
    if addrs.is_empty() {
        tracing::info!("no public address to publish: this gateway is not announced to others");
    }
    let settings = DirectorySettings {
        addrs,
        ports: (cfg.listen_ports.first, cfg.listen_ports.last),
        exit_summary,
        share: disc.share,
        rate: disc.rate,
        lifetime: disc.descriptor_lifetime_secs,
        padding: PaddingBudget {
            rate: cfg.padding_rate,
            share: cfg.padding_share,
        },
    };
    let bootstrap = hop_specs(&disc.bootstrap);
    Ok(GatewayDiscovery::new(
        id.clone(),
        settings,
        bootstrap,
        Instant::now(),
        unix_now(),
    )?)
}

/// `anonnet gateway [--exit] --config FILE`.
pub async fn gateway(path: &Path, exit: bool) -> Result<ExitCode> {
    let cfg = config::load_gateway(path)?;
    let mut daemon = start(&cfg, exit).await?;
    let result = daemon.run().await;
    if let Err(e) = daemon.stop().await {
        tracing::error!("{e:#}");
    }
    result.map(|()| ExitCode::SUCCESS)
}

/// The node settings of a gateway config (relaying and the directory service), on
/// top of `base`.
pub(crate) fn gateway_node_config(
    cfg: &config::GatewayConfig,
    id: &Identity,
    base: NodeConfig,
) -> NodeConfig {
    NodeConfig {
        static_key: Some(*id.secret()),
        echo: cfg.echo,
        directory: true,
        idle_timeout: cfg.idle_timeout(),
        handshake_rate: cfg.handshake_rate,
        max_circuits: cfg.max_circuits,
        pace_limit: cfg.max_constant_rate,
        pace_budget: cfg.constant_budget,
        padding_rate: cfg.padding_rate,
        padding_share: cfg.padding_share,
        own_addrs: crate::sys::own_addresses(),
        ..base
    }
}
