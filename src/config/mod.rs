//! Gateway and client configuration files (TOML), and the identity files they name
//! ([`identity_file`]).
//!
//! Parsing happens in two steps. First the file is deserialized into private "raw"
//! structs (`deny_unknown_fields`), so syntax errors, unknown keys and wrong types
//! get toml's own message, which names the key and shows the line. Then every value
//! is checked and converted, and the first problem is reported as
//! [`ConfigError::Invalid`] with a key path such as `client.path[2].key` (array
//! indices count from 0). Values that need a key path in their error (addresses,
//! public keys, port ranges, bounded numbers) are therefore read as plain strings or
//! wide integers in the raw structs and converted here.
//!
//! See `examples/gateway.toml` and `examples/client.toml` for commented files.

// Every value of a file a user wrote passes through here: no indexing, slicing,
// unwrap or expect on it (SECURITY.md).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

pub mod identity_file;

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;
use thiserror::Error;

use crate::proto::identity::PublicKey;
use crate::proto::wire::MAX_HOPS;

/// Largest body size class in bytes: the protocol maximum, always an implicit last
/// padding class.
pub const MAX_PADDING_CLASS: u16 = 1251;
/// Smallest configurable padding class in bytes.
pub const MIN_PADDING_CLASS: u16 = 32;

/// An error in a configuration file. Each names one problem.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// TOML syntax error, unknown key, missing key or wrong type (toml's message,
    /// which names the key and quotes the line).
    #[error("{message}")]
    Parse { message: String },
    /// A value that has the right type but is not acceptable.
    #[error("{key}: {problem}")]
    Invalid { key: String, problem: String },
    /// The file could not be read; the reason is the error's `source()`.
    #[error("cannot read config file {}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// An error in the named file (from [`load_gateway`] / [`load_client`]).
    #[error("{}: {error}", .path.display())]
    InFile {
        path: PathBuf,
        error: Box<ConfigError>,
    },
}

impl ConfigError {
    /// The error without the [`ConfigError::InFile`] wrapper.
    pub fn inner(&self) -> &ConfigError {
        match self {
            ConfigError::InFile { error, .. } => error.inner(),
            other => other,
        }
    }

    fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }

    fn parse(e: &toml::de::Error) -> Self {
        ConfigError::Parse {
            message: e.to_string().trim_end().to_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------
// Port ranges

/// An inclusive, non-empty range of UDP ports, none of them 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Most ports a gateway may listen on.
    pub const MAX_PORTS: usize = 1024;

    /// The range holding only `port`.
    pub const fn single(port: u16) -> Self {
        Self {
            first: port,
            last: port,
        }
    }

    /// A checked range; the error is the problem, without a key.
    pub fn new(first: u16, last: u16) -> Result<Self, PortRangeError> {
        if first == 0 || last == 0 {
            return Err(PortRangeError("port 0 is not allowed".into()));
        }
        if first > last {
            return Err(PortRangeError(format!("range {first}-{last} is empty")));
        }
        let range = Self { first, last };
        if range.len() > Self::MAX_PORTS {
            return Err(PortRangeError(format!(
                "range {range} has {} ports, at most {} are allowed",
                range.len(),
                Self::MAX_PORTS
            )));
        }
        Ok(range)
    }

    pub fn iter(&self) -> RangeInclusive<u16> {
        self.first..=self.last
    }

    /// Number of ports.
    pub fn len(&self) -> usize {
        self.iter().len()
    }

    pub fn is_empty(&self) -> bool {
        self.first > self.last
    }

    pub fn contains(&self, port: u16) -> bool {
        self.iter().contains(&port)
    }

    fn from_int(n: i64) -> Result<Self, PortRangeError> {
        match u16::try_from(n) {
            Ok(p) => Self::new(p, p),
            Err(_) => Err(PortRangeError(format!("port {n} is out of range 1-65535"))),
        }
    }
}

impl Default for PortRange {
    fn default() -> Self {
        Self::single(9000)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Why a string is not a port range.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct PortRangeError(String);

impl FromStr for PortRange {
    type Err = PortRangeError;

    /// `"9000"` or `"9000-9003"` (spaces around the parts are allowed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            PortRangeError(format!(
                "invalid port range {s:?}: expected a port like 9000 or a range like \"9000-9003\""
            ))
        };
        let port = |p: &str| -> Result<u16, PortRangeError> {
            let p = p.trim();
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u16>()
                .map_err(|_| PortRangeError(format!("port {p} is out of range 1-65535")))
        };
        match s.split_once('-') {
            Some((a, b)) => Self::new(port(a)?, port(b)?),
            None => {
                let p = port(s)?;
                Self::new(p, p)
            }
        }
    }
}

/// `listen_ports` as written: an integer or a string.
enum RawPorts {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for RawPorts {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawPorts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port like 9000 or a range like \"9000-9003\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawPorts, E> {
                Ok(RawPorts::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawPorts, E> {
                Ok(RawPorts::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawPorts, E> {
                Ok(RawPorts::Str(v.to_owned()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

// ---------------------------------------------------------------------------------
// Gateway

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
    /// The `[exit]` section (used when the gateway runs with `--exit`).
    pub exit: ExitConfig,
    /// The `[discovery]` section.
    pub discovery: DiscoveryConfig,
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
/// Smallest MTU of a tunnel device (IPv6 needs 1280).
pub const MIN_MTU: u32 = 1280;

/// Checks an interface name as the kernel would (1 to 15 bytes, no '/', ':' or
/// whitespace).
fn check_ifname(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(ConfigError::invalid(
            key,
            format!("{name:?} is not a valid interface name (1 to 15 characters, no '/', ':' or spaces)"),
        ));
    }
    Ok(())
}

fn check_mtu(key: &str, mtu: u32) -> Result<(), ConfigError> {
    check_int(
        key,
        u64::from(mtu),
        u64::from(MIN_MTU),
        crate::proto::framing::MAX_PACKET as u64,
    )
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
        mtu: raw
            .mtu
            .map(|m| {
                bounded(
                    "exit.mtu",
                    m,
                    i64::from(MIN_MTU),
                    crate::proto::framing::MAX_PACKET as i64,
                )
            })
            .transpose()?
            .unwrap_or(d.mtu),
        pool4,
        pool6,
        dns_upstream,
        policy: raw.policy,
        max_flows: raw
            .max_flows
            .map(|m| bounded("exit.max_flows", m, 1, 1 << 20))
            .transpose()?
            .unwrap_or(d.max_flows),
        max_pps: raw
            .max_pps
            .map(|m| bounded("exit.max_pps", m, 1, 10_000_000))
            .transpose()?
            .unwrap_or(d.max_pps),
    };
    config.validate()?;
    Ok(config)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
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

/// `key: must be between MIN and MAX, got N`, for integers read wide.
fn bounded<T: TryFrom<i64>>(key: &str, value: i64, min: i64, max: i64) -> Result<T, ConfigError> {
    if value < min || value > max {
        return Err(bounds_error(key, value, min, max));
    }
    T::try_from(value).map_err(|_| bounds_error(key, value, min, max))
}

fn check_int(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(bounds_error(key, value, min, max));
    }
    Ok(())
}

fn bounds_error(
    key: &str,
    value: impl fmt::Display,
    min: impl fmt::Display,
    max: impl fmt::Display,
) -> ConfigError {
    ConfigError::invalid(key, format!("must be between {min} and {max}, got {value}"))
}

/// Parse the text of a gateway config file.
pub fn parse_gateway(text: &str) -> Result<GatewayConfig, ConfigError> {
    let file = toml::from_str::<GatewayFile>(text).map_err(|e| ConfigError::parse(&e))?;
    let exit = parse_exit(file.exit)?;
    let discovery = parse_discovery(file.discovery)?;
    gateway_section(file.gateway, exit, discovery)
}

/// Checks and converts a `[gateway]` section.
fn gateway_section(
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
        exit,
        discovery,
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

/// A relative `file` named in config file `config` is taken relative to its directory.
fn relative_to(config: &Path, file: &mut PathBuf) {
    if file.is_relative() {
        if let Some(dir) = config.parent() {
            *file = dir.join(&*file);
        }
    }
}

// ---------------------------------------------------------------------------------
// Discovery (both gateways and clients)

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
struct RawDiscovery {
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

fn parse_discovery(raw: RawDiscovery) -> Result<DiscoveryConfig, ConfigError> {
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

// ---------------------------------------------------------------------------------
// Client

/// One gateway of a client's path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HopConfig {
    pub addr: SocketAddr,
    pub key: PublicKey,
}

/// The `[client]` section.
#[derive(Clone, Debug, PartialEq)]
pub struct ClientConfig {
    /// Send a keepalive after this long without traffic (0 < x <= 60).
    pub keepalive_secs: f64,
    /// No reply from the path for this long means the circuit is down (> keepalive).
    pub circuit_timeout_secs: f64,
    /// A circuit build not answered within this long has failed.
    pub build_timeout_secs: f64,
    /// Body size classes in bytes, strictly ascending, each in
    /// `MIN_PADDING_CLASS..=MAX_PADDING_CLASS`. See [`ClientConfig::padding_classes`].
    pub padding: Vec<u16>,
    /// 1..=8 hops in order; the first is the entry gateway, the last the exit.
    pub path: Vec<HopConfig>,
    /// The `[tunnel]` section (used by `anonnet up`).
    pub tunnel: TunnelConfig,
    /// The `[discovery]` section: used when `path` is empty.
    pub discovery: DiscoveryConfig,
    /// Circuits kept ready at once (flows are spread over them).
    pub circuits: usize,
    /// How flows are assigned to circuits.
    pub isolation: crate::client::flows::Isolation,
    /// A circuit takes no new flows after this many seconds and is replaced.
    pub circuit_lifetime_secs: u64,
    /// `mode = "mixed"`: the `[gateway]` section this process also relays and serves
    /// the directory with, from the same sockets its own circuits use. `None` for
    /// `mode = "client"` (the default).
    pub relay: Option<GatewayConfig>,
}

/// The `[tunnel]` section of a client config: the `anon0` device and routing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelConfig {
    /// Name of the TUN device.
    pub name: String,
    pub mtu: u32,
    /// Point the host's resolver at the tunnel's DNS address while up.
    pub dns: bool,
    /// Mark on the daemon's own UDP sockets; packets without it use `table`.
    pub fwmark: u32,
    /// Routing table holding the default routes into the tunnel.
    pub table: u32,
    /// Where `up` records what it changed (and the original resolv.conf), so `down` can
    /// undo it, also after a crash and a reboot; also holds the guards and gateway cache.
    pub state_dir: PathBuf,
}

/// Default state directory of the client. On disk, not in `/run` (a tmpfs): after a crash
/// it holds the original `/etc/resolv.conf`, which must survive a reboot, and the guards
/// and gateway cache, which are meant to outlive restarts.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/anonnet";

/// Default fwmark and routing table of the client ("AN").
pub const DEFAULT_FWMARK: u32 = 0x414e;

impl Default for TunnelConfig {
    fn default() -> Self {
        Self {
            name: "anon0".into(),
            mtu: DEFAULT_MTU,
            dns: true,
            fwmark: DEFAULT_FWMARK,
            table: DEFAULT_FWMARK,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
        }
    }
}

impl TunnelConfig {
    /// Check the values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_ifname("tunnel.name", &self.name)?;
        check_mtu("tunnel.mtu", self.mtu)?;
        check_int(
            "tunnel.fwmark",
            u64::from(self.fwmark),
            1,
            u64::from(u32::MAX),
        )?;
        // 253-255 are the kernel's default, main and local tables.
        if self.table == 0 || (253..=255).contains(&self.table) {
            return Err(ConfigError::invalid(
                "tunnel.table",
                format!(
                    "{} is reserved (0, 253, 254 and 255 are the kernel's tables)",
                    self.table
                ),
            ));
        }
        if !self.state_dir.is_absolute() {
            return Err(ConfigError::invalid(
                "tunnel.state_dir",
                format!("{:?} must be an absolute path", self.state_dir),
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    name: Option<String>,
    mtu: Option<i64>,
    dns: Option<bool>,
    fwmark: Option<i64>,
    table: Option<i64>,
    state_dir: Option<PathBuf>,
}

fn parse_tunnel(raw: RawTunnel) -> Result<TunnelConfig, ConfigError> {
    let d = TunnelConfig::default();
    let u32_key = |key: &str, v: Option<i64>, default: u32| -> Result<u32, ConfigError> {
        v.map(|x| bounded(key, x, 1, i64::from(u32::MAX)))
            .transpose()
            .map(|x| x.unwrap_or(default))
    };
    let config = TunnelConfig {
        name: raw.name.unwrap_or(d.name),
        mtu: raw
            .mtu
            .map(|m| {
                bounded(
                    "tunnel.mtu",
                    m,
                    i64::from(MIN_MTU),
                    crate::proto::framing::MAX_PACKET as i64,
                )
            })
            .transpose()?
            .unwrap_or(d.mtu),
        dns: raw.dns.unwrap_or(d.dns),
        fwmark: u32_key("tunnel.fwmark", raw.fwmark, d.fwmark)?,
        table: u32_key("tunnel.table", raw.table, d.table)?,
        state_dir: raw.state_dir.unwrap_or(d.state_dir),
    };
    config.validate()?;
    Ok(config)
}

const DEFAULT_KEEPALIVE: f64 = 2.0;
const DEFAULT_CIRCUIT_TIMEOUT: f64 = 10.0;
const DEFAULT_BUILD_TIMEOUT: f64 = 5.0;
const MAX_TIMEOUT: f64 = 3600.0;

/// Seconds to a `Duration`; validated configs never hit the fallback.
fn secs(value: f64, fallback: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::from_secs_f64(fallback))
}

impl ClientConfig {
    pub fn keepalive(&self) -> Duration {
        secs(self.keepalive_secs, DEFAULT_KEEPALIVE)
    }

    pub fn circuit_timeout(&self) -> Duration {
        secs(self.circuit_timeout_secs, DEFAULT_CIRCUIT_TIMEOUT)
    }

    pub fn build_timeout(&self) -> Duration {
        secs(self.build_timeout_secs, DEFAULT_BUILD_TIMEOUT)
    }

    /// The padding classes including the implicit last class [`MAX_PADDING_CLASS`].
    pub fn padding_classes(&self) -> Vec<u16> {
        let mut classes = self.padding.clone();
        if classes.last() != Some(&MAX_PADDING_CLASS) {
            classes.push(MAX_PADDING_CLASS);
        }
        classes
    }

    /// Check the values (done by [`parse_client`]; useful for configs built in code).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_secs("client.keepalive_secs", self.keepalive_secs, 60.0)?;
        check_secs(
            "client.circuit_timeout_secs",
            self.circuit_timeout_secs,
            MAX_TIMEOUT,
        )?;
        if self.circuit_timeout_secs <= self.keepalive_secs {
            return Err(ConfigError::invalid(
                "client.circuit_timeout_secs",
                format!(
                    "must be greater than keepalive_secs ({}), got {}",
                    self.keepalive_secs, self.circuit_timeout_secs
                ),
            ));
        }
        check_secs(
            "client.build_timeout_secs",
            self.build_timeout_secs,
            MAX_TIMEOUT,
        )?;

        for (i, &class) in self.padding.iter().enumerate() {
            let key = format!("client.padding[{i}]");
            if !(MIN_PADDING_CLASS..=MAX_PADDING_CLASS).contains(&class) {
                return Err(padding_range_error(key, i64::from(class)));
            }
            if let Some(&prev) = i.checked_sub(1).and_then(|p| self.padding.get(p)) {
                if class <= prev {
                    return Err(ConfigError::invalid(
                        key,
                        format!(
                            "{class} is not greater than the previous class {prev} \
                             (classes must be strictly ascending)"
                        ),
                    ));
                }
            }
        }

        if (self.path.is_empty() && self.discovery.bootstrap.is_empty())
            || self.path.len() > MAX_HOPS
        {
            return Err(path_count_error(self.path.len()));
        }
        let mut keys = HashSet::new();
        for (i, hop) in self.path.iter().enumerate() {
            if hop.addr.port() == 0 {
                return Err(ConfigError::invalid(
                    format!("client.path[{i}].addr"),
                    "port 0 is not allowed",
                ));
            }
            if !keys.insert(hop.key) {
                return Err(ConfigError::invalid(
                    format!("client.path[{i}].key"),
                    "gateway appears twice in the path",
                ));
            }
        }
        self.tunnel.validate()
    }
}

fn path_count_error(n: usize) -> ConfigError {
    let hint = if n == 0 {
        " (or list gateways in discovery.bootstrap to discover paths)"
    } else {
        ""
    };
    ConfigError::invalid(
        "client.path",
        format!("need 1 to {MAX_HOPS} hops, got {n}{hint}"),
    )
}

fn check_secs(key: &str, value: f64, max: f64) -> Result<(), ConfigError> {
    // `!(a && b)` rather than `a || b` so that NaN is rejected too.
    if !(value > 0.0 && value <= max) {
        return Err(ConfigError::invalid(
            key,
            format!("must be greater than 0 and at most {max}, got {value}"),
        ));
    }
    Ok(())
}

fn padding_range_error(key: String, value: i64) -> ConfigError {
    ConfigError::invalid(
        key,
        format!("{value} is outside {MIN_PADDING_CLASS}..={MAX_PADDING_CLASS}"),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    client: RawClient,
    #[serde(default)]
    tunnel: RawTunnel,
    #[serde(default)]
    discovery: RawDiscovery,
    gateway: Option<RawGateway>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    #[serde(default = "default_keepalive")]
    keepalive_secs: f64,
    #[serde(default = "default_circuit_timeout")]
    circuit_timeout_secs: f64,
    #[serde(default = "default_build_timeout")]
    build_timeout_secs: f64,
    #[serde(default = "default_padding")]
    padding: Vec<i64>,
    #[serde(default)]
    path: Vec<RawHop>,
    circuits: Option<i64>,
    isolation: Option<String>,
    circuit_lifetime_secs: Option<i64>,
    mode: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHop {
    addr: String,
    key: String,
}

fn default_keepalive() -> f64 {
    DEFAULT_KEEPALIVE
}
fn default_circuit_timeout() -> f64 {
    DEFAULT_CIRCUIT_TIMEOUT
}
fn default_build_timeout() -> f64 {
    DEFAULT_BUILD_TIMEOUT
}
fn default_padding() -> Vec<i64> {
    vec![128, 256, 512, 1024]
}

/// Parse the text of a client config file.
pub fn parse_client(text: &str) -> Result<ClientConfig, ConfigError> {
    let file = toml::from_str::<ClientFile>(text).map_err(|e| ConfigError::parse(&e))?;
    let raw = file.client;
    let tunnel = parse_tunnel(file.tunnel)?;
    let discovery = parse_discovery(file.discovery)?;
    let relay = match (raw.mode.as_deref(), file.gateway) {
        (None | Some("client"), None) => None,
        (None | Some("client"), Some(_)) => {
            return Err(ConfigError::invalid(
                "gateway",
                "a [gateway] section is used only with client.mode = \"mixed\"",
            ))
        }
        (Some("mixed"), Some(g)) => Some(gateway_section(
            g,
            ExitConfig::default(),
            discovery.clone(),
        )?),
        (Some("mixed"), None) => return Err(ConfigError::invalid(
            "client.mode",
            "\"mixed\" needs a [gateway] section (identity, listen, listen_ports) to relay with",
        )),
        (Some(other), _) => {
            return Err(ConfigError::invalid(
                "client.mode",
                format!("{other:?} is not a mode (\"client\" or \"mixed\")"),
            ))
        }
    };

    let mut padding = Vec::with_capacity(raw.padding.len());
    for (i, &class) in raw.padding.iter().enumerate() {
        let key = format!("client.padding[{i}]");
        padding.push(u16::try_from(class).map_err(|_| padding_range_error(key, class))?);
    }

    // The hop count is checked first: a 50-hop path should not be reported as a bad
    // key in hop 30.
    if (raw.path.is_empty() && discovery.bootstrap.is_empty()) || raw.path.len() > MAX_HOPS {
        return Err(path_count_error(raw.path.len()));
    }
    let mut path = Vec::with_capacity(raw.path.len());
    for (i, hop) in raw.path.iter().enumerate() {
        let addr = hop.addr.trim().parse::<SocketAddr>().map_err(|_| {
            ConfigError::invalid(
                format!("client.path[{i}].addr"),
                format!(
                    "invalid socket address {:?} (expected e.g. \"192.0.2.1:9001\" or \"[2001:db8::1]:9001\")",
                    hop.addr
                ),
            )
        })?;
        let key = hop
            .key
            .parse::<PublicKey>()
            .map_err(|e| ConfigError::invalid(format!("client.path[{i}].key"), e.to_string()))?;
        path.push(HopConfig { addr, key });
    }

    let config = ClientConfig {
        keepalive_secs: raw.keepalive_secs,
        circuit_timeout_secs: raw.circuit_timeout_secs,
        build_timeout_secs: raw.build_timeout_secs,
        padding,
        path,
        tunnel,
        discovery,
        circuits: raw
            .circuits
            .map(|n| bounded("client.circuits", n, 1, 16))
            .transpose()?
            .unwrap_or(3),
        isolation: match &raw.isolation {
            None => crate::client::flows::Isolation::PerDestination,
            Some(s) => s
                .parse()
                .map_err(|e: String| ConfigError::invalid("client.isolation", e))?,
        },
        circuit_lifetime_secs: raw
            .circuit_lifetime_secs
            .map(|n| bounded("client.circuit_lifetime_secs", n, 60, 86_400))
            .transpose()?
            .unwrap_or(600),
        relay,
    };
    config.validate()?;
    Ok(config)
}

/// Read and parse a client config file. Errors are prefixed with the path.
pub fn load_client(path: &Path) -> Result<ClientConfig, ConfigError> {
    let text = read(path)?;
    let mut config = parse_client(&text).map_err(|e| in_file(path, e))?;
    if let Some(g) = config.relay.as_mut() {
        relative_to(path, &mut g.identity);
    }
    Ok(config)
}

/// Config files are small; a bigger file is a wrong path, not a config.
const MAX_FILE_LEN: u64 = 1024 * 1024;

fn read(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let io_err = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_LEN + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err)?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(in_file(
            path,
            ConfigError::Parse {
                message: format!("file is larger than {MAX_FILE_LEN} bytes"),
            },
        ));
    }
    String::from_utf8(bytes).map_err(|_| {
        in_file(
            path,
            ConfigError::Parse {
                message: "file is not UTF-8 text".into(),
            },
        )
    })
}

fn in_file(path: &Path, error: ConfigError) -> ConfigError {
    ConfigError::InFile {
        path: path.to_path_buf(),
        error: Box::new(error),
    }
}

#[cfg(test)]
mod tests;
