//! The `[discovery]` section, in gateway and client configs alike.

use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use crate::proto::identity::PublicKey;
use crate::proto::wire::MAX_HOPS;

use super::ports::{PortRange, RawPorts};
use super::{bounded, ConfigError};

/// One gateway: a bootstrap gateway, or a hop of a client's fixed path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HopConfig {
    pub addr: SocketAddr,
    pub key: PublicKey,
}

/// The `[discovery]` section, in gateway and client configs alike. Gateways use
/// `share`, `publish`, `descriptor_lifetime_secs`, `rate` and `bootstrap` (peers to
/// gossip with); clients use `bootstrap`, `target`, `hops`, `guards`,
/// `guard_lifetime_days` and the subnet prefixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// Gateways to ask first: address and public key.
    pub bootstrap: Vec<HopConfig>,
    /// Stop discovering once this many gateways are known.
    pub target: usize,
    /// Path length, or a range to draw it from.
    pub hops: (u8, u8),
    /// Number of sticky entry guards.
    pub guards: usize,
    pub guard_lifetime_days: u64,
    /// No two hops (or guards) share an IPv4 network of this prefix length.
    pub subnet_v4: u8,
    /// Likewise for IPv6.
    pub subnet_v6: u8,
    /// Answer other nodes' discovery requests (a gateway may refuse).
    pub share: bool,
    /// Addresses this gateway publishes in its descriptor; empty: the listen
    /// addresses, or when those are wildcards, this host's global addresses.
    pub publish: Vec<IpAddr>,
    /// Lifetime of this gateway's descriptor; it is re-signed at half-life.
    pub descriptor_lifetime_secs: u64,
    /// Discovery requests answered per second at most.
    pub rate: u32,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            bootstrap: Vec::new(),
            target: 1000,
            hops: (3, 3),
            guards: 3,
            guard_lifetime_days: 60,
            subnet_v4: 16,
            subnet_v6: 32,
            share: true,
            publish: Vec::new(),
            descriptor_lifetime_secs: 3 * 3600,
            rate: 100,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscovery {
    #[serde(default)]
    bootstrap: Vec<String>,
    target: Option<i64>,
    hops: Option<RawPorts>,
    guards: Option<i64>,
    guard_lifetime_days: Option<i64>,
    subnet_v4: Option<i64>,
    subnet_v6: Option<i64>,
    share: Option<bool>,
    #[serde(default)]
    publish: Vec<String>,
    descriptor_lifetime_secs: Option<i64>,
    rate: Option<i64>,
}

pub(super) fn parse_discovery(raw: RawDiscovery) -> Result<DiscoveryConfig, ConfigError> {
    let d = DiscoveryConfig::default();
    let mut bootstrap = Vec::with_capacity(raw.bootstrap.len());
    for (i, line) in raw.bootstrap.iter().enumerate() {
        let key = format!("discovery.bootstrap[{i}]");
        let mut parts = line.split_whitespace();
        let (Some(addr), Some(pk), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ConfigError::invalid(
                key,
                format!("{line:?} is not \"ADDR:PORT PUBLIC-KEY\""),
            ));
        };
        let addr = addr
            .parse::<SocketAddr>()
            .map_err(|_| ConfigError::invalid(&key, format!("invalid socket address {addr:?}")))?;
        if addr.port() == 0 {
            return Err(ConfigError::invalid(key, "port 0 is not allowed"));
        }
        let pk = pk
            .parse::<PublicKey>()
            .map_err(|e| ConfigError::invalid(&key, e.to_string()))?;
        bootstrap.push(HopConfig { addr, key: pk });
    }
    let hops = match raw.hops {
        None => d.hops,
        Some(h) => {
            let r = match h {
                RawPorts::Int(n) => PortRange::from_int(n),
                RawPorts::Str(s) => s.parse(),
            }
            .map_err(|_| {
                ConfigError::invalid(
                    "discovery.hops",
                    "expected a hop count like 3 or a range like \"2-4\"",
                )
            })?;
            if r.first < 1 || usize::from(r.last) > MAX_HOPS {
                return Err(ConfigError::invalid(
                    "discovery.hops",
                    format!("must be within 1 to {MAX_HOPS}, got {}-{}", r.first, r.last),
                ));
            }
            (r.first as u8, r.last as u8)
        }
    };
    let mut publish = Vec::with_capacity(raw.publish.len());
    for (i, a) in raw.publish.iter().enumerate() {
        publish.push(a.trim().parse::<IpAddr>().map_err(|_| {
            ConfigError::invalid(
                format!("discovery.publish[{i}]"),
                format!("invalid IP address {a:?}"),
            )
        })?);
    }
    let opt =
        |key: &str, v: Option<i64>, min: i64, max: i64, default: u64| -> Result<u64, ConfigError> {
            v.map(|x| bounded::<u64>(key, x, min, max))
                .transpose()
                .map(|x| x.unwrap_or(default))
        };
    Ok(DiscoveryConfig {
        bootstrap,
        target: opt("discovery.target", raw.target, 1, 100_000, d.target as u64)? as usize,
        hops,
        guards: opt("discovery.guards", raw.guards, 0, 64, d.guards as u64)? as usize,
        guard_lifetime_days: opt(
            "discovery.guard_lifetime_days",
            raw.guard_lifetime_days,
            1,
            3650,
            d.guard_lifetime_days,
        )?,
        subnet_v4: opt(
            "discovery.subnet_v4",
            raw.subnet_v4,
            0,
            32,
            u64::from(d.subnet_v4),
        )? as u8,
        subnet_v6: opt(
            "discovery.subnet_v6",
            raw.subnet_v6,
            0,
            128,
            u64::from(d.subnet_v6),
        )? as u8,
        share: raw.share.unwrap_or(d.share),
        publish,
        descriptor_lifetime_secs: opt(
            "discovery.descriptor_lifetime_secs",
            raw.descriptor_lifetime_secs,
            600,
            crate::proto::descriptor::MAX_LIFETIME_SECS as i64,
            d.descriptor_lifetime_secs,
        )?,
        rate: opt("discovery.rate", raw.rate, 1, 100_000, u64::from(d.rate))? as u32,
    })
}
