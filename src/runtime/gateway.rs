//! `anonnet gateway [--exit]`: a relay, optionally an exit, with its directory
//! service and gossip; set up here, run by the daemon loop ([`crate::runtime::daemon`]).
use std::net::SocketAddr;
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
use crate::runtime::control::{self, gateway_socket, Control};
use crate::runtime::daemon::Daemon;
use crate::runtime::discovery::unix_now;
use crate::runtime::driver::Driver;
use crate::runtime::exit::ExitSide;
use crate::runtime::reload::Reload;
use crate::runtime::{flush_stdout, hop_specs, logging, replay, serve_metrics};

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

/// `anonnet gateway [--exit] --config FILE [--metrics ADDR]`.
pub async fn gateway(path: &Path, exit: bool, metrics: Option<SocketAddr>) -> Result<ExitCode> {
    let cfg = config::load_gateway(path)?;
    let metrics = serve_metrics(metrics).await?;
    let port = cfg.listen_ports.first;
    // A gateway runs without a control socket rather than not at all (another on
    // these ports fails to bind them anyway).
    let control = Control::bind(
        &gateway_socket(port),
        &format!("gateway on port {port}"),
        &format!("`anonnet status --gateway {port}` shows it"),
    )
    .unwrap_or_else(|e| {
        tracing::warn!("running without a control socket: {e:#}");
        None
    });
    logging::apply_config(cfg.log.as_deref());
    let mut daemon = start(&cfg, exit)
        .await?
        .with_metrics(metrics)
        .with_reload(Reload::gateway(path.to_path_buf(), cfg));
    if let Some(control) = control {
        daemon = daemon.with_control(control);
    }
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

/// `anonnet status --gateway PORT [--json]`: asks the gateway of this network
/// namespace that listens from `port`.
pub async fn status(port: u16, json: bool) -> Result<ExitCode> {
    let v = control::status_of(
        &gateway_socket(port),
        &format!("no gateway on port {port} runs in this network namespace"),
    )
    .await?;
    control::print_status(&v, json, status_text)?;
    Ok(ExitCode::SUCCESS)
}

/// The counters of `v` (an object of numbers) that are not zero, as "name N".
fn nonzero(v: &serde_json::Value) -> String {
    let parts: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, n)| n.as_u64().filter(|n| *n > 0).map(|n| format!("{k} {n}")))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// `anonnet status --gateway` as lines for a person.
fn status_text(v: &serde_json::Value) -> String {
    let n = &v["node"];
    let count = |k: &str| n[k].as_u64().unwrap_or(0);
    let drops: serde_json::Map<String, serde_json::Value> = n
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with("dropped_"))
        .map(|(k, x)| (k.clone(), x.clone()))
        .collect();
    let mut out = format!(
        "anonnet gateway (pid {}, {}): {} circuits relayed now\n\
         \x20 circuits {} accepted, {} refused, {} evicted; cells relayed {} forward, {} backward\n\
         \x20 dropped: {}\n",
        v["pid"],
        v["role"].as_str().unwrap_or("?"),
        v["relayed_circuits"],
        count("circuits_accepted"),
        count("circuits_refused"),
        count("circuits_evicted"),
        count("relayed_forward"),
        count("relayed_backward"),
        nonzero(&serde_json::Value::Object(drops)),
    );
    if v["exit"].is_object() {
        out.push_str(&format!("  exit: {}\n", nonzero(&v["exit"])));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::status_text;

    /// A gateway's status: the circuits it relays, its cells, its nonzero drops,
    /// an exit's counters.
    #[test]
    fn status_lines() {
        let v = serde_json::json!({
            "pid": 7, "role": "exit", "relayed_circuits": 2,
            "node": {"circuits_accepted": 5, "circuits_refused": 1, "circuits_evicted": 0,
                     "relayed_forward": 100, "relayed_backward": 90,
                     "dropped_auth": 3, "dropped_replay": 0, "rx_datagrams": 200},
            "exit": {"forwarded": 40, "returned": 38, "rejected_policy": 0, "vc": {"joins": 1}},
        });
        assert_eq!(
            status_text(&v),
            "anonnet gateway (pid 7, exit): 2 circuits relayed now\n\
             \x20 circuits 5 accepted, 1 refused, 0 evicted; cells relayed 100 forward, 90 backward\n\
             \x20 dropped: dropped_auth 3\n\
             \x20 exit: forwarded 40, returned 38\n"
        );
        let mut relay = v;
        relay["exit"] = serde_json::Value::Null;
        relay["node"]["dropped_auth"] = 0.into();
        assert!(status_text(&relay).ends_with("  dropped: none\n"));
    }
}
