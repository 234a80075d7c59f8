//! The `[gateway]` and `[exit]` sections and gateway config files.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

use crate::node::{PACE_BUDGET, PACE_LIMIT, PADDING_RATE, PADDING_SHARE};
use crate::proto::iface;

use super::discovery::{parse_discovery, DiscoveryConfig, RawDiscovery};
use super::ports::{PortRange, RawPorts};
use super::{
    bounded, bounded_or, check_int, in_file, parse_log, read, relative_to, ConfigError,
    MAX_CONSTANT_RATE,
};

/// The `[gateway]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Path of the identity file written by `anonnet keygen`.
    pub identity: PathBuf,
    /// Addresses to bind; each is combined with every port of `listen_ports`.
    pub listen: Vec<IpAddr>,
    pub listen_ports: PortRange,
    /// Test facility: act as an echo endpoint for circuits that ask for it.
    pub echo: bool,
    /// A relayed circuit idle this long is torn down (1..=3600).
    pub idle_timeout_secs: u64,
    /// Most handshakes of each kind (links, BUILDs, rekeys) processed per second (> 0).
    pub handshake_rate: u32,
    /// Most circuits held at once (> 0).
    pub max_circuits: usize,
    /// The highest rate, in cells per second, at which this gateway paces a
    /// client's link when the client asks (constant padding mode); 0 refuses.
    pub max_constant_rate: u32,
    /// The most cells per second this gateway paces all its clients' links at
    /// together; a client asking for more than is left gets what is left.
    pub constant_budget: u32,
    /// The most bytes per second of PADDING this gateway echoes to clients'
    /// adaptive padding, all circuits together; 0 echoes none.
    pub padding_rate: u32,
    /// The most PADDING it echoes, in percent of the datagrams it receives.
    pub padding_share: u8,
    /// The `[exit]` section (used when the gateway runs with `--exit`).
    pub exit: ExitConfig,
    /// The `[discovery]` section.
    pub discovery: DiscoveryConfig,
    /// The top-level `log`: the log filter (`None`: info), applied at start and on
    /// SIGHUP unless `RUST_LOG` or `-v` is given. `None` in a mixed client's
    /// `[gateway]`, whose file's `log` is the client's.
    pub log: Option<String>,
}

/// The `[exit]` section of a gateway config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitConfig {
    /// Name of the exit's TUN device.
    pub tun: String,
    /// MTU of the exit's TUN device (the largest packet sent into a circuit).
    pub mtu: u32,
    /// Per-circuit addresses: circuit `i` gets host `i + 1` of each pool.
    pub pool4: Ipv4Net,
    pub pool6: Ipv6Net,
    /// Resolvers the exit forwards the tunnel's DNS queries to; empty means the
    /// exit's own `/etc/resolv.conf` nameservers, read at start.
    pub dns_upstream: Vec<IpAddr>,
    /// Exit policy rules in Tor's syntax, before the default tail.
    pub policy: Vec<String>,
    /// Most live flows (5-tuples) per circuit.
    pub max_flows: usize,
    /// Most packets per second a circuit may send out.
    pub max_pps: u32,
}

impl Default for ExitConfig {
    fn default() -> Self {
        Self {
            tun: "anonexit0".into(),
            mtu: DEFAULT_MTU,
            pool4: Ipv4Net::new(std::net::Ipv4Addr::new(100, 96, 0, 0), 12).unwrap_or_default(),
            pool6: Ipv6Net::new(std::net::Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0), 64)
                .unwrap_or_default(),
            dns_upstream: Vec::new(),
            policy: Vec::new(),
            max_flows: 1024,
            max_pps: 250_000,
        }
    }
}

/// Default MTU of the tunnel devices: IPv6's minimum, so that both families work.
pub const DEFAULT_MTU: u32 = 1280;

/// Highest `gateway.constant_budget`: a million full-size cells per second are
/// 11.6 Gbit/s each way.
pub const MAX_CONSTANT_BUDGET: u32 = 1_000_000;

/// Highest `gateway.padding_rate`: 1 GB/s.
pub const MAX_PADDING_RATE: u32 = 1_000_000_000;

/// Checks an interface name ([`iface::check_name`]).
pub(super) fn check_ifname(key: &str, name: &str) -> Result<(), ConfigError> {
    iface::check_name(name).map_err(|e| ConfigError::invalid(key, e.to_string()))
}

/// Checks a tunnel device's MTU ([`iface::check_mtu`]).
pub(super) fn check_mtu(key: &str, mtu: u32) -> Result<(), ConfigError> {
    iface::check_mtu(mtu).map_err(|e| ConfigError::invalid(key, e.to_string()))
}

impl ExitConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_ifname("exit.tun", &self.tun)?;
        check_mtu("exit.mtu", self.mtu)?;
        if self.pool4.prefix_len() > 30 {
            return Err(ConfigError::invalid(
                "exit.pool4",
                format!(
                    "{} is too small: need a prefix of /30 or shorter",
                    self.pool4
                ),
            ));
        }
        if self.pool6.prefix_len() > 126 {
            return Err(ConfigError::invalid(
                "exit.pool6",
                format!(
                    "{} is too small: need a prefix of /126 or shorter",
                    self.pool6
                ),
            ));
        }
        for (key, addr) in [
            ("exit.pool4", IpAddr::V4(crate::proto::addr::EXIT_V4)),
            ("exit.pool4", IpAddr::V4(crate::proto::addr::DNS_V4)),
            ("exit.pool6", IpAddr::V6(crate::proto::addr::EXIT_V6)),
            ("exit.pool6", IpAddr::V6(crate::proto::addr::DNS_V6)),
        ] {
            let inside = match addr {
                IpAddr::V4(a) => self.pool4.contains(&a),
                IpAddr::V6(a) => self.pool6.contains(&a),
            };
            if inside {
                return Err(ConfigError::invalid(
                    key,
                    format!("must not contain the tunnel's fixed address {addr}"),
                ));
            }
        }
        check_int("exit.max_flows", self.max_flows as u64, 1, 1 << 20)?;
        check_int("exit.max_pps", u64::from(self.max_pps), 1, 10_000_000)?;
        Ok(())
    }
}

impl GatewayConfig {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }

    /// Every socket address to bind: each of `listen` with each port.
    pub fn listen_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.listen
            .iter()
            .flat_map(|ip| self.listen_ports.iter().map(|p| SocketAddr::new(*ip, p)))
    }

    /// Check the values (done by [`parse_gateway`]; useful for configs built in code).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.identity.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "gateway.identity",
                "must not be empty",
            ));
        }
        if self.listen.is_empty() {
            return Err(ConfigError::invalid(
                "gateway.listen",
                "need at least one address",
            ));
        }
        let mut seen = HashSet::new();
        for (i, ip) in self.listen.iter().enumerate() {
            if !seen.insert(ip) {
                return Err(ConfigError::invalid(
                    format!("gateway.listen[{i}]"),
                    format!("{ip} is listed twice"),
                ));
            }
        }
        PortRange::new(self.listen_ports.first, self.listen_ports.last)
            .map_err(|e| ConfigError::invalid("gateway.listen_ports", e.0))?;
        check_int("gateway.idle_timeout_secs", self.idle_timeout_secs, 1, 3600)?;
        check_int(
            "gateway.max_constant_rate",
            u64::from(self.max_constant_rate),
            0,
            u64::from(MAX_CONSTANT_RATE),
        )?;
        check_int(
            "gateway.constant_budget",
            u64::from(self.constant_budget),
            0,
            u64::from(MAX_CONSTANT_BUDGET),
        )?;
        check_int(
            "gateway.padding_rate",
            u64::from(self.padding_rate),
            0,
            u64::from(MAX_PADDING_RATE),
        )?;
        check_int(
            "gateway.padding_share",
            u64::from(self.padding_share),
            0,
            100,
        )?;
        check_int(
            "gateway.handshake_rate",
            u64::from(self.handshake_rate),
            1,
            u64::from(u32::MAX),
        )?;
        check_int(
            "gateway.max_circuits",
            self.max_circuits as u64,
            1,
            u64::from(u32::MAX),
        )?;
        self.exit.validate()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayFile {
    log: Option<String>,
    gateway: RawGateway,
    #[serde(default)]
    exit: RawExit,
    #[serde(default)]
    discovery: RawDiscovery,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExit {
    tun: Option<String>,
    mtu: Option<i64>,
    pool4: Option<String>,
    pool6: Option<String>,
    #[serde(default)]
    dns_upstream: Vec<String>,
    #[serde(default)]
    policy: Vec<String>,
    max_flows: Option<i64>,
    max_pps: Option<i64>,
}

fn parse_exit(raw: RawExit) -> Result<ExitConfig, ConfigError> {
    let d = ExitConfig::default();
    let mut dns_upstream = Vec::with_capacity(raw.dns_upstream.len());
    for (i, s) in raw.dns_upstream.iter().enumerate() {
        dns_upstream.push(s.trim().parse::<IpAddr>().map_err(|_| {
            ConfigError::invalid(
                format!("exit.dns_upstream[{i}]"),
                format!("invalid IP address {s:?} (no port: DNS uses 53)"),
            )
        })?);
    }
    let net = |key: &str, v: Option<String>| -> Result<Option<IpNet>, ConfigError> {
        v.map(|s| {
            s.trim().parse::<IpNet>().map_err(|_| {
                ConfigError::invalid(
                    key,
                    format!("invalid prefix {s:?} (expected e.g. \"100.96.0.0/12\")"),
                )
            })
        })
        .transpose()
    };
    let pool4 = match net("exit.pool4", raw.pool4)? {
        None => d.pool4,
        Some(IpNet::V4(n)) => n.trunc(),
        Some(IpNet::V6(n)) => {
            return Err(ConfigError::invalid(
                "exit.pool4",
                format!("{n} is not an IPv4 prefix"),
            ))
        }
    };
    let pool6 = match net("exit.pool6", raw.pool6)? {
        None => d.pool6,
        Some(IpNet::V6(n)) => n.trunc(),
        Some(IpNet::V4(n)) => {
            return Err(ConfigError::invalid(
                "exit.pool6",
                format!("{n} is not an IPv6 prefix"),
            ))
        }
    };
    for (i, rule) in raw.policy.iter().enumerate() {
        rule.parse::<crate::exit::policy::Rule>()
            .map_err(|e| ConfigError::invalid(format!("exit.policy[{i}]"), e.to_string()))?;
    }
    let config = ExitConfig {
        tun: raw.tun.unwrap_or(d.tun),
        mtu: bounded_or(
            "exit.mtu",
            raw.mtu,
            (i64::from(iface::MIN_MTU), i64::from(iface::MAX_MTU)),
            d.mtu,
        )?,
        pool4,
        pool6,
        dns_upstream,
        policy: raw.policy,
        max_flows: bounded_or("exit.max_flows", raw.max_flows, (1, 1 << 20), d.max_flows)?,
        max_pps: bounded_or("exit.max_pps", raw.max_pps, (1, 10_000_000), d.max_pps)?,
    };
    config.validate()?;
    Ok(config)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGateway {
    identity: PathBuf,
    #[serde(default = "default_listen")]
    listen: Vec<String>,
    listen_ports: Option<RawPorts>,
    #[serde(default)]
    echo: bool,
    #[serde(default = "default_idle_timeout")]
    idle_timeout_secs: i64,
    #[serde(default = "default_handshake_rate")]
    handshake_rate: i64,
    #[serde(default = "default_max_circuits")]
    max_circuits: i64,
    max_constant_rate: Option<i64>,
    constant_budget: Option<i64>,
    padding_rate: Option<i64>,
    padding_share: Option<i64>,
}

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0".into(), "::".into()]
}
fn default_idle_timeout() -> i64 {
    30
}
fn default_handshake_rate() -> i64 {
    1000
}
fn default_max_circuits() -> i64 {
    100_000
}

/// Parse the text of a gateway config file.
pub fn parse_gateway(text: &str) -> Result<GatewayConfig, ConfigError> {
    let file = toml::from_str::<GatewayFile>(text).map_err(|e| ConfigError::parse(&e))?;
    let log = parse_log(file.log)?;
    let exit = parse_exit(file.exit)?;
    let discovery = parse_discovery(file.discovery)?;
    Ok(GatewayConfig {
        log,
        ..gateway_section(file.gateway, exit, discovery)?
    })
}

/// Checks and converts a `[gateway]` section.
pub(super) fn gateway_section(
    raw: RawGateway,
    exit: ExitConfig,
    discovery: DiscoveryConfig,
) -> Result<GatewayConfig, ConfigError> {
    let mut listen = Vec::with_capacity(raw.listen.len());
    for (i, s) in raw.listen.iter().enumerate() {
        let key = format!("gateway.listen[{i}]");
        match s.trim().parse::<IpAddr>() {
            Ok(ip) => listen.push(ip),
            Err(_) if s.trim().parse::<SocketAddr>().is_ok() => {
                return Err(ConfigError::invalid(
                    key,
                    format!("{s:?} includes a port; put ports in gateway.listen_ports"),
                ))
            }
            Err(_) => {
                return Err(ConfigError::invalid(
                    key,
                    format!("invalid IP address {s:?}"),
                ))
            }
        }
    }

    let listen_ports = match &raw.listen_ports {
        None => Ok(PortRange::default()),
        Some(RawPorts::Int(n)) => PortRange::from_int(*n),
        Some(RawPorts::Str(s)) => s.parse(),
    }
    .map_err(|e| ConfigError::invalid("gateway.listen_ports", e.0))?;

    let config = GatewayConfig {
        identity: raw.identity,
        listen,
        listen_ports,
        echo: raw.echo,
        idle_timeout_secs: bounded("gateway.idle_timeout_secs", raw.idle_timeout_secs, 1, 3600)?,
        handshake_rate: bounded(
            "gateway.handshake_rate",
            raw.handshake_rate,
            1,
            i64::from(u32::MAX),
        )?,
        max_circuits: bounded(
            "gateway.max_circuits",
            raw.max_circuits,
            1,
            i64::from(u32::MAX),
        )?,
        max_constant_rate: bounded_or(
            "gateway.max_constant_rate",
            raw.max_constant_rate,
            (0, i64::from(MAX_CONSTANT_RATE)),
            PACE_LIMIT,
        )?,
        constant_budget: bounded_or(
            "gateway.constant_budget",
            raw.constant_budget,
            (0, i64::from(MAX_CONSTANT_BUDGET)),
            PACE_BUDGET,
        )?,
        padding_rate: bounded_or(
            "gateway.padding_rate",
            raw.padding_rate,
            (0, i64::from(MAX_PADDING_RATE)),
            PADDING_RATE,
        )?,
        padding_share: bounded_or(
            "gateway.padding_share",
            raw.padding_share,
            (0, 100),
            PADDING_SHARE,
        )?,
        exit,
        discovery,
        log: None,
    };
    config.validate()?;
    Ok(config)
}

/// Read and parse a gateway config file. Errors are prefixed with the path. A relative
/// `identity` path is taken relative to the config file's directory, so the result
/// does not depend on the working directory.
pub fn load_gateway(path: &Path) -> Result<GatewayConfig, ConfigError> {
    let text = read(path)?;
    let mut config = parse_gateway(&text).map_err(|e| in_file(path, e))?;
    relative_to(path, &mut config.identity);
    Ok(config)
}
