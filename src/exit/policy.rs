//! Exit policy: which destinations an exit gateway forwards client packets to.
//!
//! Rules use the syntax of Tor's `ExitPolicy` torrc option, one rule per string:
//!
//! ```text
//! accept|reject ADDR[/MASK][:PORT[-PORT]]
//! ```
//!
//! - `ADDR` is `*` (any address of either family), `*4` (any IPv4 address), `*6` (any
//!   IPv6 address), an IPv4 address, an IPv6 address in brackets (`[2001:db8::]`,
//!   brackets are always required), or the keyword `private`. A `/MASK` (prefix length
//!   in bits) may follow an IPv4 or IPv6 address, never a wildcard or `private`; the
//!   address must have no bits set beyond the mask.
//! - `PORT` is `*`, a port `1..=65535`, or a range `A-B` with `A <= B`. A missing
//!   `:PORT` means `*`.
//! - Keywords are case-insensitive; whitespace around the rule is ignored.
//!
//! `private` stands for the [`PRIVATE_V4`] and [`PRIVATE_V6`] networks plus the exit's
//! own addresses. [`ExitPolicy::new`] expands it into one concrete rule per network
//! and per own address, so [`ExitPolicy::rules`] lists only concrete rules.
//!
//! Destinations are normalised before matching: an IPv4-mapped IPv6 address
//! (`::ffff:10.0.0.1`) is matched as the IPv4 address it carries, so the private
//! IPv4 rules also catch it. An IPv4 rule never matches an IPv6 destination and vice
//! versa; `*` matches both. The first matching rule decides.
//!
//! IPv6 addresses that a translator or relay near the exit turns into IPv4 (NAT64's
//! `64:ff9b::/96`, 6to4's `2002::/16`, Teredo's `2001::/32`, see [`carried_v4`]) are
//! allowed only if both the IPv6 address and the IPv4 address it carries are: else
//! `64:ff9b::10.0.0.1` would reach the exit's LAN through a NAT64 in its network.
//! Forms whose IPv4 address cannot be known or that no network should route
//! (IPv4-compatible `::/96`, local-use NAT64 `64:ff9b:1::/48`, site-local
//! `fec0::/10`) are in [`PRIVATE_V6`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use thiserror::Error;

use crate::proto::ports::MAX_SUMMARY_LEN;

/// IPv4 networks that `private` stands for (besides the exit's own addresses).
pub const PRIVATE_V4: [Ipv4Net; 9] = [
    Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10),
    Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
    Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16),
    Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4),
    Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4),
];

/// IPv6 networks that `private` stands for (besides the exit's own addresses).
///
/// `::/96` holds the unspecified and loopback addresses and the IPv4-compatible
/// addresses (deprecated by RFC 4291), `64:ff9b:1::/48` is NAT64 for local use (RFC
/// 8215; where it carries its IPv4 address depends on the network's prefix length),
/// `fec0::/10` the deprecated site-local addresses (RFC 3879). `::ffff:0:0/96`
/// (IPv4-mapped) is listed for completeness, like Tor does, but never matches: a
/// mapped destination is matched as the IPv4 address it carries, so the IPv4 entries
/// decide for it.
pub const PRIVATE_V6: [Ipv6Net; 7] = [
    Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 96),
    Ipv6Net::new_assert(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
    Ipv6Net::new_assert(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    Ipv6Net::new_assert(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    Ipv6Net::new_assert(Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
    Ipv6Net::new_assert(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
    Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
];

/// The default tail after the user's rules: these ports are rejected to every
/// address (SMTP, NNTP, NetBIOS, SMB), then everything else is accepted.
const DEFAULT_REJECTED_PORTS: [(u16, u16); 4] = [(25, 25), (119, 119), (135, 139), (445, 445)];

/// A port counts as accepted in the summary only while the IPv4 address space
/// rejected for it by earlier non-private rules is at most this many addresses (a
/// /7, as in Tor).
const SUMMARY_REJECT_CUTOFF: u64 = 1 << 25;

/// A rule that cannot be parsed. Every message quotes the rule text (trimmed) and
/// says what is wrong with it.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PolicyError {
    /// The rule is not two words: an action and an address pattern.
    #[error("{rule:?}: expected `accept` or `reject` followed by ADDR[/MASK][:PORT[-PORT]]")]
    Syntax {
        /// The rule text.
        rule: String,
    },
    /// The first word is neither `accept` nor `reject`.
    #[error("{rule:?}: unknown action {action:?}, expected `accept` or `reject`")]
    Action {
        /// The rule text.
        rule: String,
        /// The offending word.
        action: String,
    },
    /// The address is not `*`, `*4`, `*6`, `private`, an IPv4 address or a
    /// bracketed IPv6 address.
    #[error("{rule:?}: invalid address {addr:?}")]
    Address {
        /// The rule text.
        rule: String,
        /// The offending address text.
        addr: String,
    },
    /// An IPv6 address without brackets.
    #[error("{rule:?}: an IPv6 address must be written in brackets, as in [2001:db8::1]")]
    UnbracketedIpv6 {
        /// The rule text.
        rule: String,
    },
    /// The mask is not a decimal number.
    #[error("{rule:?}: invalid mask {mask:?}, expected a prefix length in bits")]
    Mask {
        /// The rule text.
        rule: String,
        /// The offending mask text.
        mask: String,
    },
    /// The mask is longer than the address.
    #[error("{rule:?}: mask {bits} is longer than {max} bits")]
    MaskTooLong {
        /// The rule text.
        rule: String,
        /// The mask given.
        bits: u32,
        /// The address length in bits (32 or 128).
        max: u8,
    },
    /// A mask after a wildcard or `private`.
    #[error("{rule:?}: {target} takes no mask")]
    MaskNotAllowed {
        /// The rule text.
        rule: String,
        /// The wildcard or keyword as written.
        target: String,
    },
    /// The address has bits set beyond its mask.
    #[error(
        "{rule:?}: address {addr} has bits set beyond the /{bits} mask (network is {network})"
    )]
    HostBits {
        /// The rule text.
        rule: String,
        /// The address given.
        addr: IpAddr,
        /// The mask given.
        bits: u8,
        /// The network the address and mask denote.
        network: IpAddr,
    },
    /// A port that is not `*` or a number in `1..=65535`.
    #[error("{rule:?}: invalid port {port:?}, expected 1-65535")]
    Port {
        /// The rule text.
        rule: String,
        /// The offending port text.
        port: String,
    },
    /// A port range whose start is after its end.
    #[error("{rule:?}: port range {start}-{end} ends before it starts")]
    PortRange {
        /// The rule text.
        rule: String,
        /// First port of the range.
        start: u16,
        /// Last port of the range.
        end: u16,
    },
}

/// The addresses a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `*`: every address of either family.
    Any,
    /// `*4`: every IPv4 address.
    AnyV4,
    /// `*6`: every IPv6 address.
    AnyV6,
    /// An IPv4 or IPv6 network (a single address is a /32 or /128). In a rule it
    /// never has bits set beyond its prefix.
    Net(IpNet),
    /// `private`: the [`PRIVATE_V4`] and [`PRIVATE_V6`] networks and the exit's own
    /// addresses. On its own (see [`Rule::matches`]) it covers only the networks.
    Private,
}

impl Target {
    /// Whether `dst` (already normalised, see [`normalise`]) is covered.
    fn contains(&self, dst: IpAddr) -> bool {
        match self {
            Target::Any => true,
            Target::AnyV4 => dst.is_ipv4(),
            Target::AnyV6 => dst.is_ipv6(),
            Target::Net(net) => net.contains(&dst),
            Target::Private => private_nets().any(|net| net.contains(&dst)),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Any => f.write_str("*"),
            Target::AnyV4 => f.write_str("*4"),
            Target::AnyV6 => f.write_str("*6"),
            Target::Private => f.write_str("private"),
            Target::Net(IpNet::V4(net)) if net.prefix_len() == 32 => write!(f, "{}", net.addr()),
            Target::Net(IpNet::V4(net)) => write!(f, "{}/{}", net.addr(), net.prefix_len()),
            Target::Net(IpNet::V6(net)) if net.prefix_len() == 128 => {
                write!(f, "[{}]", net.addr())
            }
            Target::Net(IpNet::V6(net)) => write!(f, "[{}]/{}", net.addr(), net.prefix_len()),
        }
    }
}

/// An inclusive range of ports, `start <= end`. [`PortRange::ALL`] (`*`) also
/// covers packets without ports and port 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    start: u16,
    end: u16,
}

impl PortRange {
    /// `*`: every port, and packets without ports.
    pub const ALL: PortRange = PortRange {
        start: 1,
        end: 65535,
    };

    /// The range `start..=end`, or `None` unless `1 <= start <= end`.
    pub fn new(start: u16, end: u16) -> Option<Self> {
        (start >= 1 && start <= end).then_some(PortRange { start, end })
    }

    /// First port of the range.
    pub fn start(&self) -> u16 {
        self.start
    }

    /// Last port of the range.
    pub fn end(&self) -> u16 {
        self.end
    }

    /// Whether this is `*`.
    pub fn is_all(&self) -> bool {
        *self == PortRange::ALL
    }

    /// Whether a packet with destination port `port` (`None`: a protocol without
    /// ports) is covered. Only `*` covers `None`.
    pub fn contains(&self, port: Option<u16>) -> bool {
        match port {
            _ if self.is_all() => true,
            None => false,
            Some(p) => self.start <= p && p <= self.end,
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            f.write_str("*")
        } else if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

/// One exit policy rule. Made by parsing (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rule {
    /// `accept` (true) or `reject` (false).
    pub accept: bool,
    target: Target,
    ports: PortRange,
}

impl Rule {
    /// The addresses the rule applies to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The ports the rule applies to.
    pub fn ports(&self) -> PortRange {
        self.ports
    }

    /// Whether the rule applies to a packet to `dst` and `port` (`None`: a protocol
    /// without ports). `dst` is normalised first (see the module documentation).
    /// A [`Target::Private`] rule here covers only the private networks, since a
    /// lone rule does not know the exit's own addresses.
    pub fn matches(&self, dst: IpAddr, port: Option<u16>) -> bool {
        self.matches_normalised(normalise(dst), port)
    }

    fn matches_normalised(&self, dst: IpAddr, port: Option<u16>) -> bool {
        self.ports.contains(port) && self.target.contains(dst)
    }

    fn with_target(&self, target: Target) -> Rule {
        Rule { target, ..*self }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = if self.accept { "accept" } else { "reject" };
        write!(f, "{action} {}:{}", self.target, self.ports)
    }
}

impl FromStr for Rule {
    type Err = PolicyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let rule = text.trim();
        let mut words = rule.split_whitespace();
        let (Some(action), Some(pattern), None) = (words.next(), words.next(), words.next()) else {
            return Err(PolicyError::Syntax { rule: rule.into() });
        };
        let accept = if action.eq_ignore_ascii_case("accept") {
            true
        } else if action.eq_ignore_ascii_case("reject") {
            false
        } else {
            return Err(PolicyError::Action {
                rule: rule.into(),
                action: action.into(),
            });
        };
        let (target, ports) = parse_pattern(rule, pattern)?;
        Ok(Rule {
            accept,
            target,
            ports,
        })
    }
}

/// Splits `ADDR[/MASK][:PORTS]` and parses the parts.
fn parse_pattern(rule: &str, pattern: &str) -> Result<(Target, PortRange), PolicyError> {
    let bad_address = |addr: &str| PolicyError::Address {
        rule: rule.into(),
        addr: addr.into(),
    };
    if let Some(inner) = pattern.strip_prefix('[') {
        let (addr, rest) = inner.split_once(']').ok_or_else(|| bad_address(pattern))?;
        let (mask, ports) = match rest.split_once(':') {
            Some((mask, ports)) => (mask, Some(ports)),
            None => (rest, None),
        };
        let mask = match mask {
            "" => None,
            mask => Some(mask.strip_prefix('/').ok_or_else(|| bad_address(pattern))?),
        };
        let addr = addr
            .parse::<Ipv6Addr>()
            .map_err(|_| bad_address(&format!("[{addr}]")))?;
        let net = parse_net(rule, IpAddr::V6(addr), mask)?;
        return Ok((Target::Net(net), parse_ports(rule, ports)?));
    }

    let looks_ipv6 = |text: &str| text.parse::<Ipv6Addr>().is_ok();
    let before_mask = pattern.split('/').next().unwrap_or(pattern);
    if looks_ipv6(before_mask) || pattern.rsplit_once(':').is_some_and(|(a, _)| looks_ipv6(a)) {
        return Err(PolicyError::UnbracketedIpv6 { rule: rule.into() });
    }
    let (addr_mask, ports) = match pattern.split_once(':') {
        Some((addr_mask, ports)) => (addr_mask, Some(ports)),
        None => (pattern, None),
    };
    let (addr, mask) = match addr_mask.split_once('/') {
        Some((addr, mask)) => (addr, Some(mask)),
        None => (addr_mask, None),
    };
    let keyword = match addr {
        "*" => Some(Target::Any),
        "*4" => Some(Target::AnyV4),
        "*6" => Some(Target::AnyV6),
        _ if addr.eq_ignore_ascii_case("private") => Some(Target::Private),
        _ => None,
    };
    let target = match keyword {
        Some(_) if mask.is_some() => {
            return Err(PolicyError::MaskNotAllowed {
                rule: rule.into(),
                target: addr.into(),
            })
        }
        Some(target) => target,
        None => {
            let addr = addr.parse::<Ipv4Addr>().map_err(|_| bad_address(addr))?;
            Target::Net(parse_net(rule, IpAddr::V4(addr), mask)?)
        }
    };
    Ok((target, parse_ports(rule, ports)?))
}

/// Combines an address and an optional mask into a network with no host bits set.
fn parse_net(rule: &str, addr: IpAddr, mask: Option<&str>) -> Result<IpNet, PolicyError> {
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let bits = match mask {
        None => max,
        Some(mask) => {
            let bits = parse_decimal(mask).ok_or_else(|| PolicyError::Mask {
                rule: rule.into(),
                mask: mask.into(),
            })?;
            match u8::try_from(bits) {
                Ok(bits) if bits <= max => bits,
                _ => {
                    return Err(PolicyError::MaskTooLong {
                        rule: rule.into(),
                        bits,
                        max,
                    })
                }
            }
        }
    };
    let net = IpNet::new(addr, bits).map_err(|_| PolicyError::MaskTooLong {
        rule: rule.into(),
        bits: bits.into(),
        max,
    })?;
    if net.network() != addr {
        return Err(PolicyError::HostBits {
            rule: rule.into(),
            addr,
            bits,
            network: net.network(),
        });
    }
    Ok(net)
}

/// Parses the port part: missing or `*`, `P`, or `A-B`.
fn parse_ports(rule: &str, ports: Option<&str>) -> Result<PortRange, PolicyError> {
    let ports = match ports {
        None | Some("*") => return Ok(PortRange::ALL),
        Some(ports) => ports,
    };
    let port = |text: &str| {
        parse_decimal(text)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p != 0)
            .ok_or_else(|| PolicyError::Port {
                rule: rule.into(),
                port: text.into(),
            })
    };
    let (start, end) = match ports.split_once('-') {
        Some((start, end)) => (port(start)?, port(end)?),
        None => {
            let p = port(ports)?;
            (p, p)
        }
    };
    PortRange::new(start, end).ok_or_else(|| PolicyError::PortRange {
        rule: rule.into(),
        start,
        end,
    })
}

/// A non-empty string of ASCII digits as a number, or `None` (signs, spaces and
/// values above `u32::MAX` are refused).
fn parse_decimal(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The address a destination is matched as: IPv4-mapped IPv6 addresses become IPv4.
fn normalise(dst: IpAddr) -> IpAddr {
    dst.to_canonical()
}

/// The IPv4 address that an IPv6 destination reaches through a translator or relay:
/// NAT64 with the well-known prefix `64:ff9b::/96` (RFC 6052: the last 32 bits), 6to4
/// `2002::/16` (RFC 3056: bits 16..48) and Teredo `2001::/32` (RFC 4380: the last 32
/// bits, inverted).
pub fn carried_v4(dst: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(dst);
    let low = (bits & 0xffff_ffff) as u32;
    if bits >> 32 == 0x0064_ff9b_u128 << 64 {
        Some(Ipv4Addr::from(low))
    } else if bits >> 112 == 0x2002 {
        Some(Ipv4Addr::from((bits >> 80) as u32))
    } else if bits >> 96 == 0x2001_0000 {
        Some(Ipv4Addr::from(!low))
    } else {
        None
    }
}

/// The private networks, both families.
fn private_nets() -> impl Iterator<Item = IpNet> {
    PRIVATE_V4
        .into_iter()
        .map(IpNet::V4)
        .chain(PRIVATE_V6.into_iter().map(IpNet::V6))
}

/// An exit's effective policy: a list of concrete rules, first match wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitPolicy {
    rules: Vec<Rule>,
}

impl ExitPolicy {
    /// The effective policy: first the private/own-address rejects (`reject
    /// private:*`, with each of `own` as an exact /32 or /128 reject), then the
    /// user's rules in order, then the default tail: reject `*:25`, `*:119`,
    /// `*:135-139`, `*:445`, then accept `*:*`.
    ///
    /// Every `private` rule (the leading one and any of the user's) is expanded into
    /// one rule per private network and one per own address, with the same action
    /// and ports. Own addresses are normalised like destinations.
    pub fn new(user_rules: &[String], own: &[IpAddr]) -> Result<Self, PolicyError> {
        let own: Vec<IpNet> = own.iter().map(|&a| IpNet::from(normalise(a))).collect();
        let mut rules = Vec::new();
        let mut push = |rule: Rule| {
            if rule.target == Target::Private {
                rules.extend(
                    private_nets()
                        .chain(own.iter().copied())
                        .map(|net| rule.with_target(Target::Net(net))),
                );
            } else {
                rules.push(rule);
            }
        };
        push(Rule {
            accept: false,
            target: Target::Private,
            ports: PortRange::ALL,
        });
        for text in user_rules {
            push(text.parse()?);
        }
        for (start, end) in DEFAULT_REJECTED_PORTS {
            push(Rule {
                accept: false,
                target: Target::Any,
                ports: PortRange { start, end },
            });
        }
        push(Rule {
            accept: true,
            target: Target::Any,
            ports: PortRange::ALL,
        });
        Ok(ExitPolicy { rules })
    }

    /// Decides for a destination. `port` is `None` for protocols without ports
    /// (ICMP and others): such packets match only rules whose port part is `*`.
    /// An IPv6 destination that carries an IPv4 address (see [`carried_v4`]) is
    /// allowed only if that IPv4 address is too.
    pub fn allows(&self, dst: IpAddr, port: Option<u16>) -> bool {
        let dst = normalise(dst);
        let carried = match dst {
            IpAddr::V6(v6) => carried_v4(v6),
            IpAddr::V4(_) => None,
        };
        self.decides(dst, port) && carried.is_none_or(|v4| self.decides(v4.into(), port))
    }

    /// The action of the first rule matching a normalised destination.
    fn decides(&self, dst: IpAddr, port: Option<u16>) -> bool {
        self.rules
            .iter()
            .find(|rule| rule.matches_normalised(dst, port))
            .is_some_and(|rule| rule.accept)
    }

    /// The effective rules, in order (see [`ExitPolicy::new`]).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Tor-style port summary for a descriptor, such as `reject 25,119,135-139,445`
    /// or `accept 80,443`: which ports are accepted to most public IPv4 addresses.
    ///
    /// Computed like Tor's `policy_summarize`. For each port the IPv4 rules covering
    /// it are walked in order. A reject of a network that lies inside a private
    /// network is ignored; any other reject adds the size of its network to the
    /// port's rejected address count. An accept of all IPv4 addresses (`*`, `*4`,
    /// `0.0.0.0/0`) accepts the port if at most 2^25 addresses were rejected before
    /// it; narrower accepts are ignored. Ports never accepted are rejected.
    ///
    /// The shorter of the accept and reject lists is emitted (`accept` on a tie),
    /// except that `accept 1-65535` and `reject 1-65535` are used when one list is
    /// empty. If both lists are longer than [`MAX_SUMMARY_LEN`], the accept list is
    /// cut at the last whole entry that fits.
    pub fn summary(&self) -> String {
        let mut starts: Vec<u32> = vec![1];
        for rule in &self.rules {
            if summary_effect(rule) != SummaryEffect::Ignore {
                starts.push(rule.ports.start.into());
                starts.push(u32::from(rule.ports.end) + 1);
            }
        }
        starts.sort_unstable();
        starts.dedup();
        starts.retain(|&p| p <= 65535);

        let mut accepts = String::new();
        let mut rejects = String::new();
        let mut run: Option<(u32, u32, bool)> = None;
        let ends = starts.iter().skip(1).map(|&s| s - 1).chain([65535]);
        for (&start, end) in starts.iter().zip(ends) {
            let accepted = self.summary_accepts(start);
            run = match run {
                Some((run_start, _, run_accepted)) if run_accepted == accepted => {
                    Some((run_start, end, accepted))
                }
                Some(finished) => {
                    push_range(&mut accepts, &mut rejects, finished);
                    Some((start, end, accepted))
                }
                None => Some((start, end, accepted)),
            };
        }
        if let Some(finished) = run {
            push_range(&mut accepts, &mut rejects, finished);
        }

        if accepts.is_empty() {
            return "reject 1-65535".into();
        }
        if rejects.is_empty() {
            return "accept 1-65535".into();
        }
        let limit = MAX_SUMMARY_LEN - "accept ".len();
        if accepts.len() > limit && rejects.len() > limit {
            let cut = accepts[..=limit].rfind(',').unwrap_or(0);
            accepts.truncate(cut);
            format!("accept {accepts}")
        } else if rejects.len() < accepts.len() {
            format!("reject {rejects}")
        } else {
            format!("accept {accepts}")
        }
    }

    /// Whether `port` counts as accepted in the summary (see [`ExitPolicy::summary`]).
    fn summary_accepts(&self, port: u32) -> bool {
        let Ok(port) = u16::try_from(port) else {
            return false;
        };
        let mut rejected: u64 = 0;
        for rule in self.rules.iter().filter(|r| r.ports.contains(Some(port))) {
            match summary_effect(rule) {
                SummaryEffect::Ignore => {}
                SummaryEffect::Reject(count) => rejected += count,
                SummaryEffect::AcceptAll => {
                    if rejected <= SUMMARY_REJECT_CUTOFF {
                        return true;
                    }
                }
            }
        }
        false
    }
}

/// What a rule contributes to the IPv4 port summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SummaryEffect {
    /// Nothing: an IPv6 rule, a narrow accept, or a reject of a private network.
    Ignore,
    /// A reject of this many non-private IPv4 addresses.
    Reject(u64),
    /// An accept of every IPv4 address.
    AcceptAll,
}

fn summary_effect(rule: &Rule) -> SummaryEffect {
    let net = match rule.target {
        Target::AnyV6 | Target::Private | Target::Net(IpNet::V6(_)) => {
            return SummaryEffect::Ignore
        }
        Target::Any | Target::AnyV4 => Ipv4Net::default(),
        Target::Net(IpNet::V4(net)) => net,
    };
    if rule.accept {
        if net.prefix_len() == 0 {
            SummaryEffect::AcceptAll
        } else {
            SummaryEffect::Ignore
        }
    } else if PRIVATE_V4.iter().any(|private| private.contains(&net)) {
        SummaryEffect::Ignore
    } else {
        SummaryEffect::Reject(1 << (32 - u32::from(net.prefix_len())))
    }
}

/// Appends a run of ports to the accept or reject list.
fn push_range(
    accepts: &mut String,
    rejects: &mut String,
    (start, end, accepted): (u32, u32, bool),
) {
    let list = if accepted { accepts } else { rejects };
    if !list.is_empty() {
        list.push(',');
    }
    if start == end {
        list.push_str(&start.to_string());
    } else {
        list.push_str(&format!("{start}-{end}"));
    }
}

#[cfg(test)]
mod tests;
