//! Where a client's paths come from: its configured path, or the gateways it
//! discovered, with sticky entry guards kept in the state directory.
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::client::avoid::{Avoid, LEVELS};
use crate::client::flows::Build;
use crate::client::path::{
    select_leg, select_path, Guards, PathError, PathLength, PathRules, Subnets,
};
use crate::config::ClientConfig;
use crate::discovery::{Candidate, Store};
use crate::files::write_atomic;
use crate::node::HopSpec;
use crate::proto::ports::PortSummary;
use crate::runtime::discovery::{self, load_store, save_cache, unix_now, CRAWL_LIMIT};
use crate::runtime::driver::Driver;
use crate::runtime::hop_specs;

/// Name of the guard state in the state directory.
pub(crate) const GUARDS_FILE: &str = "guards.toml";

/// Where a client's paths come from: the config's fixed path, or the gateways it
/// discovered, with sticky entry guards.
pub(crate) enum Paths {
    Fixed(Vec<HopSpec>),
    Discovered {
        store: Box<Store>,
        guards: Guards,
        rules: PathRules,
        state_dir: std::path::PathBuf,
        /// Mixed mode: this process's own gateway key, never a hop of its paths.
        own: Option<[u8; 32]>,
        /// Gateways that just failed, left out while a path exists without them.
        avoid: Avoid,
    },
}

impl Paths {
    /// For `anonnet status`: how many gateways the client knows and its guards'
    /// keys (`None`: a fixed path).
    pub(crate) fn known(&self) -> Option<(usize, Vec<[u8; 32]>)> {
        match self {
            Self::Fixed(_) => None,
            Self::Discovered { store, guards, .. } => Some((store.len(), guards.keys().collect())),
        }
    }

    /// The configured path, or discovery from the cache and the guards saved in the
    /// state directory (no network yet: [`Paths::discover`] crawls when needed).
    pub(crate) fn load(cfg: &ClientConfig, own: Option<[u8; 32]>) -> Result<Self> {
        if !cfg.path.is_empty() {
            if let Some(i) = cfg.path.iter().position(|h| Some(h.key.0) == own) {
                bail!("client.path[{i}] is this process's own gateway (client.mode = \"mixed\"): its paths must go through other gateways");
            }
            return Ok(Self::Fixed(hop_specs(&cfg.path)));
        }
        let disc = &cfg.discovery;
        let state_dir = cfg.tunnel.state_dir.clone();
        let rules = PathRules {
            length: if disc.hops.0 == disc.hops.1 {
                PathLength::Fixed(disc.hops.0)
            } else {
                PathLength::Range(disc.hops.0, disc.hops.1)
            },
            subnets: Subnets {
                v4: disc.subnet_v4,
                v6: disc.subnet_v6,
            },
        };
        let guards = load_guards(cfg).with_rules(&rules);
        Ok(Self::Discovered {
            store: Box::new(load_store(&state_dir)),
            guards,
            rules,
            state_dir,
            own,
            avoid: Avoid::new(),
        })
    }

    /// Gateway `key` failed under a circuit: new paths leave it out for the
    /// returned back-off (`None` for a configured path, which has no other).
    pub(crate) fn failed(&mut self, now: Instant, key: [u8; 32]) -> Option<Duration> {
        match self {
            Self::Fixed(_) => None,
            Self::Discovered { avoid, .. } => Some(avoid.failed(now, key)),
        }
    }

    /// The gateway a crawl would go through: the oldest saved guard the cache has an
    /// address for (`None` for a configured path, or before any guard was chosen).
    pub(crate) fn crawl_guard(&self) -> Option<HopSpec> {
        match self {
            Self::Fixed(_) => None,
            Self::Discovered { store, guards, .. } => guard_hop(guards, store),
        }
    }

    /// Crawls from the bootstrap gateways (through the saved guard, if any) when the
    /// cache cannot give a path, and saves what it learned.
    pub(crate) async fn discover(&mut self, cfg: &ClientConfig, d: &mut Driver) -> Result<()> {
        if self.next(&mut d.rng, None).is_ok() {
            return Ok(());
        }
        let guard = self.crawl_guard();
        if let Self::Discovered {
            store, state_dir, ..
        } = self
        {
            let disc = &cfg.discovery;
            tracing::info!(
                "discovering gateways from {} bootstrap gateway(s){}",
                disc.bootstrap.len(),
                guard.map_or(String::new(), |g| format!(
                    " through the guard at {}",
                    g.addr
                ))
            );
            let (st, _) = discovery::crawl(
                d,
                store,
                disc.target,
                guard,
                hop_specs(&disc.bootstrap),
                CRAWL_LIMIT,
                |_, _| {},
            )
            .await;
            if let Err(e) = save_cache(state_dir, store) {
                tracing::warn!("{e:#}");
            }
            if st.answered == 0 && store.is_empty() {
                return Err(discovery::nobody_answered(&hop_specs(&disc.bootstrap)).into());
            }
        }
        Ok(())
    }

    /// A fresh path (the fixed one, or a random one by the path rules whose exit
    /// accepts destination port `port`, without the gateways being avoided if there
    /// is one).
    pub(crate) fn next(
        &mut self,
        rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
        port: Option<u16>,
    ) -> Result<Chosen> {
        if let Self::Fixed(specs) = self {
            return Ok(Chosen {
                specs: specs.clone(),
                exit_ports: None,
                padding_share: None,
            });
        }
        self.draw(rng, &[], |rng, pool, rules, guards| {
            select_path(rng, pool, rules, guards, port)
        })
    }

    /// A path for a new leg of a virtual circuit: by the path rules, ending at
    /// `exit`, through none of the gateways in `others` (the other legs'), from a
    /// guard that is not one of them. A fixed path has no second route.
    pub(crate) fn next_leg(
        &mut self,
        rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
        exit: [u8; 32],
        others: &[[u8; 32]],
    ) -> Result<Chosen> {
        if let Self::Fixed(_) = self {
            bail!("a fixed path (client.path) is one route: a virtual circuit of more than one leg needs discovery");
        }
        self.draw(rng, others, |rng, pool, rules, guards| {
            select_leg(rng, pool, rules, guards, exit)
        })
    }

    /// A random path from the discovered gateways but `leave_out` by `select`
    /// (given the candidates, the rules and the usable guards), saving the guards.
    fn draw<R: rand_core::RngCore + rand_core::CryptoRng>(
        &mut self,
        rng: &mut R,
        leave_out: &[[u8; 32]],
        mut select: impl FnMut(
            &mut R,
            &[Candidate],
            &PathRules,
            &[[u8; 32]],
        ) -> Result<Vec<usize>, PathError>,
    ) -> Result<Chosen> {
        match self {
            Self::Fixed(_) => bail!("a fixed path is not drawn"),
            Self::Discovered {
                store,
                guards,
                rules,
                state_dir,
                own,
                avoid,
            } => {
                let mut cands = store.candidates();
                cands.retain(|c| Some(c.key) != *own);
                let mut keys = guards.refresh(rng, &cands, unix_now());
                cands.retain(|c| !leave_out.contains(&c.key));
                if !keys.is_empty() {
                    keys.retain(|k| !leave_out.contains(k));
                    if keys.is_empty() {
                        bail!("every entry guard is on another leg: no guard left for this one");
                    }
                }
                let saved = std::fs::create_dir_all(&*state_dir).and_then(|()| {
                    write_atomic(&state_dir.join(GUARDS_FILE), guards.to_toml().as_bytes())
                });
                if let Err(e) = saved {
                    tracing::warn!(
                        "cannot save the entry guards in {}: {e}",
                        state_dir.display()
                    );
                }
                // The guards are chosen from all: a guard that just failed stays one.
                // Gateways that just failed are left out, fewer of them when no path
                // exists without them all (client::avoid).
                let now = Instant::now();
                let mut level = 0;
                let (path, cands) = loop {
                    let pool: Vec<_> = cands
                        .iter()
                        .filter(|c| !avoid.excludes(now, level, &c.key))
                        .cloned()
                        .collect();
                    let guards: Vec<[u8; 32]> = keys
                        .iter()
                        .filter(|k| !avoid.excludes(now, level, k))
                        .copied()
                        .collect();
                    let path = select(rng, &pool, rules, &guards);
                    if path.is_ok() || level + 1 >= LEVELS {
                        break (path, pool);
                    }
                    level += 1;
                };
                if level > 0 && path.is_ok() {
                    tracing::info!(
                        "no path without all the gateways that just failed: some may be used"
                    );
                }
                let path = path.map_err(|e| {
                    anyhow::anyhow!("no path through the {} known gateways: {e}", cands.len())
                })?;
                let hop = |i: usize| {
                    let c = cands.get(i)?;
                    let addr = SocketAddr::new(*c.addrs.first()?, c.port);
                    Some((HopSpec { addr, key: c.key }, c))
                };
                // select_path only names reachable candidates, which have an address.
                let hops: Vec<_> = path
                    .into_iter()
                    .map(hop)
                    .collect::<Option<_>>()
                    .ok_or_else(|| anyhow::anyhow!("the chosen path names an unknown gateway"))?;
                Ok(Chosen {
                    exit_ports: hops.last().and_then(|(_, c)| c.exit_ports.clone()),
                    padding_share: hops.iter().map(|(_, c)| c.padding_share()).min(),
                    specs: hops.into_iter().map(|(h, _)| h).collect(),
                })
            }
        }
    }
}

/// The guards saved in the client's state directory, or a new empty set.
pub(crate) fn load_guards(cfg: &ClientConfig) -> Guards {
    let disc = &cfg.discovery;
    std::fs::read_to_string(cfg.tunnel.state_dir.join(GUARDS_FILE))
        .ok()
        .and_then(|t| Guards::from_toml(&t).ok())
        .unwrap_or_else(|| Guards::new(disc.guards, disc.guard_lifetime_days * 86_400))
}

/// The oldest of `guards` that `store` has an address for, as a crawl's via
/// (PROTOCOL §11).
pub(crate) fn guard_hop(guards: &Guards, store: &Store) -> Option<HopSpec> {
    guards.keys().find_map(|key| {
        let addr = *store.addresses(&key).first()?;
        Some(HopSpec { addr, key })
    })
}

/// A path for `build` whose exit differs from the ones it avoids where the known
/// gateways allow ([`Build::choose`]).
pub(crate) fn path_for(
    paths: &mut Paths,
    rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
    build: &Build,
) -> Result<Chosen> {
    build.choose(
        || paths.next(rng, build.port),
        |c| c.specs.last().map(|h| h.key),
    )
}

/// A path [`Paths::next`] chose.
pub(crate) struct Chosen {
    pub(crate) specs: Vec<HopSpec>,
    /// The ports its exit's descriptor accepts (`None` for a configured path).
    pub(crate) exit_ports: Option<PortSummary>,
    /// The least padding share its gateways' descriptors allow
    /// ([`crate::discovery::Candidate::padding_share`]; `None` for a configured
    /// path, whose gateways state none).
    pub(crate) padding_share: Option<u8>,
}
