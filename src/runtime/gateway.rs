//! `anonnet gateway [--exit]`: a relay, optionally an exit, with its directory
//! service.
use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::config::identity_file;
use crate::config::{self};
use crate::node::{Node, NodeConfig};
use crate::proto::identity::Identity;
use crate::runtime::driver::Driver;
use crate::runtime::exit::ExitSide;
use crate::runtime::services::GatewayServices;
use crate::runtime::{flush_stdout, recycle, Signals};

/// `anonnet gateway [--exit] --config FILE`.
pub async fn gateway(path: &Path, exit: bool) -> Result<ExitCode> {
    let cfg = config::load_gateway(path)?;
    let id = identity_file::read(&cfg.identity)?;
    let mut exit_side = if exit {
        Some(ExitSide::start(&cfg.exit).await?)
    } else {
        None
    };
    let services = match GatewayServices::new(&cfg, id.clone(), exit_side.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            if let Some(x) = exit_side.take() {
                x.stop().await;
            }
            return Err(e);
        }
    };
    let node = Node::new(NodeConfig {
        exit,
        ..gateway_node_config(&cfg, &id, NodeConfig::default())
    });
    let addrs: Vec<_> = cfg.listen_addrs().collect();
    let mtu = if exit { cfg.exit.mtu as usize } else { 0 };
    let d = match Driver::tunnel(node, &addrs, None, mtu) {
        Ok(d) => d,
        Err(e) => {
            if let Some(x) = exit_side.take() {
                x.stop().await;
            }
            return Err(e);
        }
    };
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
    let result = match exit_side {
        Some(mut x) => {
            let r = x.run(d, services).await;
            x.stop().await;
            r
        }
        None => relay_only(d, services).await,
    };
    result.map(|()| ExitCode::SUCCESS)
}

pub(crate) async fn relay_only(mut d: Driver, mut services: GatewayServices) -> Result<()> {
    let mut signals = Signals::new()?;
    let mut events = Vec::new();
    loop {
        tokio::select! {
            () = d.step(&mut events) => {}
            _ = services.wake.tick() => {}
            () = signals.recv() => break,
        }
        for e in events.drain(..) {
            if let Some(e) = services.on_event(&mut d, e).await {
                recycle(&d, e);
            }
        }
        services.tick(&mut d).await?;
    }
    eprintln!("anonnet gateway stopping: {:?}", d.node.stats());
    Ok(())
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
        ..base
    }
}
