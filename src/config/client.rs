//! The `[client]` and `[tunnel]` sections and client config files.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::node::{Adaptive, MachineError, MachineSpec, FRONT_DEFAULT};
use crate::proto::identity::PublicKey;
use crate::proto::iface;
use crate::proto::wire::MAX_HOPS;

use super::discovery::{parse_discovery, DiscoveryConfig, HopConfig, RawDiscovery};
use super::gateway::{
    check_ifname, check_mtu, gateway_section, ExitConfig, GatewayConfig, RawGateway, DEFAULT_MTU,
};
use super::{
    bounded_or, check_int, check_secs, in_file, parse_log, read, relative_to, ConfigError,
    MAX_CONSTANT_RATE, MAX_PADDING_CLASS, MIN_PADDING_CLASS,
};

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
    /// Padding in time (`padding_mode`, `constant_rate`).
    pub padding_mode: PaddingMode,
    /// 1..=8 hops in order; the first is the entry gateway, the last the exit.
    pub path: Vec<HopConfig>,
    /// The `[tunnel]` section (used by `anonnet up`).
    pub tunnel: TunnelConfig,
    /// The `[discovery]` section: used when `path` is empty.
    pub discovery: DiscoveryConfig,
    /// Circuits kept ready at once (flows are spread over them).
    pub circuits: usize,
    /// Routes of each circuit, 1 to 4 (PROTOCOL §12): above 1, each circuit of the
    /// pool is a virtual circuit of this many legs to one exit. Default 2 with
    /// discovery, 1 with a fixed path (one route).
    pub legs: u8,
    /// How flows are assigned to circuits.
    pub isolation: crate::client::flows::Isolation,
    /// A circuit takes no new flows after this many seconds and is replaced.
    pub circuit_lifetime_secs: u64,
    /// `mode = "mixed"`: the `[gateway]` section this process also relays and serves
    /// the directory with, from the same sockets its own circuits use. `None` for
    /// `mode = "client"` (the default).
    pub relay: Option<GatewayConfig>,
    /// The top-level `log`: the log filter (`None`: info), applied at start and on
    /// SIGHUP unless `RUST_LOG` or `-v` is given.
    pub log: Option<String>,
}

/// How a client hides when and how much it sends (`client.padding_mode`).
#[derive(Clone, Debug, PartialEq)]
pub enum PaddingMode {
    /// No padding in time: cells go out when there is something to send.
    Off,
    /// Each circuit runs these `maybenot` padding machines
    /// (`client.padding_machines`; PROTOCOL §5, adaptive padding). The default mode,
    /// with [`DEFAULT_PADDING_MACHINES`].
    Adaptive { machines: Vec<MachineSpec> },
    /// PipeNet: the link to each entry carries `rate` full-size cells per second
    /// in both directions whatever the traffic (`client.constant_rate`).
    Constant { rate: u32 },
}

impl PaddingMode {
    /// The rate the node paces entry links at, if any.
    #[must_use]
    pub fn pace(&self) -> Option<u32> {
        match self {
            Self::Constant { rate } => Some(*rate),
            Self::Off | Self::Adaptive { .. } => None,
        }
    }

    /// The node's adaptive padding, if any.
    #[must_use]
    pub fn adaptive(&self) -> Option<Adaptive> {
        match self {
            Self::Adaptive { machines } => Some(Adaptive {
                machines: machines.clone(),
            }),
            Self::Off | Self::Constant { .. } => None,
        }
    }
}

/// Default `client.padding_machines`.
pub const DEFAULT_PADDING_MACHINES: [MachineSpec; 2] = [MachineSpec::Netflow, FRONT_DEFAULT];
/// Most `client.padding_machines`.
pub const MAX_PADDING_MACHINES: usize = 8;

/// Default `client.constant_rate`: 200 full-size cells per second each way, 2 Mbit/s
/// of payload for 2.3 Mbit/s on the wire.
pub const DEFAULT_CONSTANT_RATE: u32 = 200;
/// Lowest `client.constant_rate` (cells per second): below it a page takes minutes.
pub const MIN_CONSTANT_RATE: u32 = 10;

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
    let u32_key = |key: &str, v: Option<i64>, default: u32| {
        bounded_or(key, v, (1, i64::from(u32::MAX)), default)
    };
    let config = TunnelConfig {
        name: raw.name.unwrap_or(d.name),
        mtu: bounded_or(
            "tunnel.mtu",
            raw.mtu,
            (i64::from(iface::MIN_MTU), i64::from(iface::MAX_MTU)),
            d.mtu,
        )?,
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

        if let PaddingMode::Constant { rate } = self.padding_mode {
            check_int(
                "client.constant_rate",
                u64::from(rate),
                u64::from(MIN_CONSTANT_RATE),
                u64::from(MAX_CONSTANT_RATE),
            )?;
        }
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

fn padding_range_error(key: String, value: i64) -> ConfigError {
    ConfigError::invalid(
        key,
        format!("{value} is outside {MIN_PADDING_CLASS}..={MAX_PADDING_CLASS}"),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    log: Option<String>,
    /// Optional: a file of only `[discovery] bootstrap = [...]` is a whole config.
    #[serde(default)]
    client: RawClient,
    #[serde(default)]
    tunnel: RawTunnel,
    #[serde(default)]
    discovery: RawDiscovery,
    gateway: Option<RawGateway>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawClient {
    keepalive_secs: f64,
    circuit_timeout_secs: f64,
    build_timeout_secs: f64,
    padding: Vec<i64>,
    padding_mode: Option<String>,
    constant_rate: Option<i64>,
    padding_machines: Option<Vec<String>>,
    path: Vec<RawHop>,
    circuits: Option<i64>,
    legs: Option<i64>,
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

impl Default for RawClient {
    fn default() -> Self {
        Self {
            keepalive_secs: DEFAULT_KEEPALIVE,
            circuit_timeout_secs: DEFAULT_CIRCUIT_TIMEOUT,
            build_timeout_secs: DEFAULT_BUILD_TIMEOUT,
            padding: vec![128, 256, 512, 1024],
            padding_mode: None,
            constant_rate: None,
            padding_machines: None,
            path: Vec::new(),
            circuits: None,
            legs: None,
            isolation: None,
            circuit_lifetime_secs: None,
            mode: None,
        }
    }
}

/// Parse the text of a client config file.
pub fn parse_client(text: &str) -> Result<ClientConfig, ConfigError> {
    let file = toml::from_str::<ClientFile>(text).map_err(|e| ConfigError::parse(&e))?;
    let raw = file.client;
    let log = parse_log(file.log)?;
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

    let padding_mode = parse_padding_mode(
        raw.padding_mode.as_deref(),
        raw.constant_rate,
        raw.padding_machines.as_deref(),
    )?;
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

    let discovered = path.is_empty();
    let config = ClientConfig {
        keepalive_secs: raw.keepalive_secs,
        circuit_timeout_secs: raw.circuit_timeout_secs,
        build_timeout_secs: raw.build_timeout_secs,
        padding,
        padding_mode,
        path,
        tunnel,
        discovery,
        circuits: bounded_or("client.circuits", raw.circuits, (1, 16), 3)?,
        legs: match (raw.legs, discovered) {
            (Some(n), false) if n > 1 => {
                return Err(ConfigError::invalid(
                    "client.legs",
                    format!(
                        "{n} legs need discovery: a fixed client.path is one route \
                         (remove client.path, or set legs = 1)"
                    ),
                ))
            }
            (n, _) => bounded_or(
                "client.legs",
                n,
                (1, i64::from(crate::proto::vc::MAX_LEGS)),
                if discovered { 2 } else { 1 },
            )?,
        },
        isolation: match &raw.isolation {
            None => crate::client::flows::Isolation::PerDestination,
            Some(s) => s
                .parse()
                .map_err(|e: String| ConfigError::invalid("client.isolation", e))?,
        },
        circuit_lifetime_secs: bounded_or(
            "client.circuit_lifetime_secs",
            raw.circuit_lifetime_secs,
            (60, 86_400),
            600,
        )?,
        relay,
        log,
    };
    config.validate()?;
    Ok(config)
}

/// `client.padding_mode`, with `client.constant_rate`, which only the constant mode
/// takes, and `client.padding_machines`, which only the adaptive mode takes.
fn parse_padding_mode(
    mode: Option<&str>,
    rate: Option<i64>,
    machines: Option<&[String]>,
) -> Result<PaddingMode, ConfigError> {
    let only = |key: &str, mode: &str| {
        ConfigError::invalid(
            key,
            format!("is used only with client.padding_mode = {mode:?}"),
        )
    };
    let mode = mode.unwrap_or("adaptive");
    if rate.is_some() && mode != "constant" {
        return Err(only("client.constant_rate", "constant"));
    }
    if machines.is_some() && mode != "adaptive" {
        return Err(only("client.padding_machines", "adaptive"));
    }
    match mode {
        "off" => Ok(PaddingMode::Off),
        "adaptive" => Ok(PaddingMode::Adaptive {
            machines: machines.map_or(Ok(DEFAULT_PADDING_MACHINES.to_vec()), parse_machines)?,
        }),
        "constant" => {
            let rate = bounded_or(
                "client.constant_rate",
                rate,
                (i64::from(MIN_CONSTANT_RATE), i64::from(MAX_CONSTANT_RATE)),
                DEFAULT_CONSTANT_RATE,
            )?;
            Ok(PaddingMode::Constant { rate })
        }
        other => Err(ConfigError::invalid(
            "client.padding_mode",
            format!("{other:?} is not a padding mode (\"off\", \"adaptive\" or \"constant\")"),
        )),
    }
}

/// `client.padding_machines`: 1 to [`MAX_PADDING_MACHINES`] machine names.
fn parse_machines(names: &[String]) -> Result<Vec<MachineSpec>, ConfigError> {
    if names.is_empty() || names.len() > MAX_PADDING_MACHINES {
        return Err(ConfigError::invalid(
            "client.padding_machines",
            format!(
                "needs 1 to {MAX_PADDING_MACHINES} machines, got {}",
                names.len()
            ),
        ));
    }
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            name.parse().map_err(|e: MachineError| {
                ConfigError::invalid(format!("client.padding_machines[{i}]"), e.to_string())
            })
        })
        .collect()
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
