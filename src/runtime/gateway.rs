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
use crate::runtime::replay;
use crate::runtime::services::GatewayServices;
use crate::runtime::{flush_stdout, recycle, Signals};

/// A gateway, from set-up to tear-down: its sockets and node ([`Driver`]), its
/// directory and gossip services, and, for an exit, the TUN device, routes and NAT.
///
/// [`Gateway::start`] sets it all up and prints the readiness line;
/// [`Gateway::run`] relays until SIGINT or SIGTERM; [`Gateway::stop`] removes the
/// exit's kernel state.
pub struct Gateway {
    d: Driver,
    services: GatewayServices,
    exit: Option<ExitSide>,
}

impl Gateway {
    /// Reads the identity, sets up the exit side (with `exit`), the services and the
    /// sockets. What was set up is removed again when a later step fails.
    pub async fn start(cfg: &config::GatewayConfig, exit: bool) -> Result<Self> {
        let id = identity_file::read(&cfg.identity)?;
        let exit_side = if exit {
            Some(ExitSide::start(&cfg.exit).await?)
        } else {
            None
        };
        match Self::bind(cfg, &id, exit_side.as_ref()) {
            Ok((d, services)) => {
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
                Ok(Self {
                    d,
                    services,
                    exit: exit_side,
                })
            }
            Err(e) => {
                if let Some(x) = exit_side {
                    x.stop().await;
                }
                Err(e)
            }
        }
    }

    /// The services and the sockets with their node.
    fn bind(
        cfg: &config::GatewayConfig,
        id: &Identity,
        exit: Option<&ExitSide>,
    ) -> Result<(Driver, GatewayServices)> {
        let services =
            GatewayServices::new(cfg, id.clone(), exit.map(|x| x.policy_summary.clone()))?;
        let node = Node::new(NodeConfig {
            exit: exit.is_some(),
            ..gateway_node_config(cfg, id, NodeConfig::default())
        });
        let addrs: Vec<_> = cfg.listen_addrs().collect();
        let mtu = if exit.is_some() {
            cfg.exit.mtu as usize
        } else {
            0
        };
        let mut d = Driver::tunnel(node, &addrs, None, mtu)?;
        d.keep_handshakes(&replay::path_for(&cfg.identity))?;
        Ok((d, services))
    }

    /// Relays (and exits) until SIGINT or SIGTERM; then tells its peers it stops
    /// (CLOSE on every link), so they rebuild at once.
    pub async fn run(&mut self) -> Result<()> {
        let result = match self.exit.as_mut() {
            Some(x) => x.run(&mut self.d, &mut self.services).await,
            None => relay_only(&mut self.d, &mut self.services).await,
        };
        self.d.node.shutdown();
        self.d.flush().await;
        result
    }

    /// Removes the exit's routes, NAT and TUN device.
    pub async fn stop(self) {
        if let Some(x) = self.exit {
            x.stop().await;
        }
    }
}

/// `anonnet gateway [--exit] --config FILE`.
pub async fn gateway(path: &Path, exit: bool) -> Result<ExitCode> {
    let cfg = config::load_gateway(path)?;
    let mut gateway = Gateway::start(&cfg, exit).await?;
    let result = gateway.run().await;
    gateway.stop().await;
    result.map(|()| ExitCode::SUCCESS)
}

async fn relay_only(d: &mut Driver, services: &mut GatewayServices) -> Result<()> {
    let mut signals = Signals::new()?;
    let mut events = Vec::new();
    loop {
        tokio::select! {
            () = d.step(&mut events) => {}
            _ = services.wake.tick() => {}
            () = signals.recv() => break,
        }
        for e in events.drain(..) {
            if let Some(e) = services.on_event(d, e).await {
                recycle(d, e);
            }
        }
        services.tick(d).await?;
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
        own_addrs: crate::sys::own_addresses(),
        ..base
    }
}
