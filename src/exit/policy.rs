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

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use thiserror::Error;

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
/// `::ffff:0:0/96` (IPv4-mapped) is listed for completeness, like Tor does, but never
/// matches: a mapped destination is matched as the IPv4 address it carries, so the
/// IPv4 entries decide for it.
pub const PRIVATE_V6: [Ipv6Net; 6] = [
    Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 128),
    Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128),
    Ipv6Net::new_assert(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    Ipv6Net::new_assert(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    Ipv6Net::new_assert(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
    Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
];

/// The default tail after the user's rules: these ports are rejected to every
/// address (SMTP, NNTP, NetBIOS, SMB), then everything else is accepted.
const DEFAULT_REJECTED_PORTS: [(u16, u16); 4] = [(25, 25), (119, 119), (135, 139), (445, 445)];

/// Longest port list that [`ExitPolicy::summary`] emits, counting the `accept ` or
/// `reject ` prefix (Tor's `MAX_EXITPOLICY_SUMMARY_LEN`).
pub const MAX_SUMMARY_LEN: usize = 1000;

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
    pub fn allows(&self, dst: IpAddr, port: Option<u16>) -> bool {
        let dst = normalise(dst);
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
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn rule(text: &str) -> Rule {
        text.parse().unwrap()
    }

    fn err(text: &str) -> String {
        text.parse::<Rule>().unwrap_err().to_string()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn net(text: &str) -> Target {
        Target::Net(text.parse().unwrap())
    }

    fn ports(start: u16, end: u16) -> PortRange {
        PortRange::new(start, end).unwrap()
    }

    fn policy(user: &[&str], own: &[&str]) -> ExitPolicy {
        let user: Vec<String> = user.iter().map(|s| s.to_string()).collect();
        let own: Vec<IpAddr> = own.iter().map(|s| ip(s)).collect();
        ExitPolicy::new(&user, &own).unwrap()
    }

    #[test]
    fn parses_every_form() {
        let cases = [
            ("accept *:80", true, Target::Any, ports(80, 80)),
            ("reject *4:*", false, Target::AnyV4, PortRange::ALL),
            ("accept *6:443", true, Target::AnyV6, ports(443, 443)),
            ("accept *", true, Target::Any, PortRange::ALL),
            (
                "accept 192.0.2.7",
                true,
                net("192.0.2.7/32"),
                PortRange::ALL,
            ),
            (
                "reject 10.0.0.0/8:25",
                false,
                net("10.0.0.0/8"),
                ports(25, 25),
            ),
            (
                "accept 0.0.0.0/0:1-1024",
                true,
                net("0.0.0.0/0"),
                ports(1, 1024),
            ),
            (
                "accept [2001:db8::]/32:80-443",
                true,
                net("2001:db8::/32"),
                ports(80, 443),
            ),
            ("accept [::1]:22", true, net("::1/128"), ports(22, 22)),
            (
                "reject [2001:DB8::1]",
                false,
                net("2001:db8::1/128"),
                PortRange::ALL,
            ),
            ("reject [::]/0:*", false, net("::/0"), PortRange::ALL),
            ("reject private:*", false, Target::Private, PortRange::ALL),
            ("REJECT PrivATE", false, Target::Private, PortRange::ALL),
            ("  Accept \t *:1-65535  ", true, Target::Any, PortRange::ALL),
            ("accept *:65535", true, Target::Any, ports(65535, 65535)),
            ("accept *:7-7", true, Target::Any, ports(7, 7)),
        ];
        for (text, accept, target, ports) in cases {
            assert_eq!(
                rule(text),
                Rule {
                    accept,
                    target,
                    ports
                },
                "{text}"
            );
        }
    }

    #[test]
    fn displays_canonically() {
        let cases = [
            ("accept *:80", "accept *:80"),
            ("accept 192.0.2.7", "accept 192.0.2.7:*"),
            ("accept 192.0.2.7/32:80-80", "accept 192.0.2.7:80"),
            ("reject 10.0.0.0/8:25-26", "reject 10.0.0.0/8:25-26"),
            ("accept [2001:DB8::1]/128:80", "accept [2001:db8::1]:80"),
            ("accept [2001:db8::]/32", "accept [2001:db8::]/32:*"),
            ("ACCEPT *:1-65535", "accept *:*"),
            ("reject *4", "reject *4:*"),
            ("reject *6:1-2", "reject *6:1-2"),
            ("reject Private:443", "reject private:443"),
        ];
        for (text, canonical) in cases {
            assert_eq!(rule(text).to_string(), canonical);
            assert_eq!(rule(canonical), rule(text));
        }
    }

    #[test]
    fn error_texts() {
        let cases = [
            (
                "reject 10.0.0.0/33:25",
                r#""reject 10.0.0.0/33:25": mask 33 is longer than 32 bits"#,
            ),
            (
                "accept [::]/129",
                r#""accept [::]/129": mask 129 is longer than 128 bits"#,
            ),
            (
                "  allow *:80 ",
                r#""allow *:80": unknown action "allow", expected `accept` or `reject`"#,
            ),
            (
                "accept 2001:db8::1:80",
                r#""accept 2001:db8::1:80": an IPv6 address must be written in brackets, as in [2001:db8::1]"#,
            ),
            (
                "accept 10.0.0.1/8:80",
                r#""accept 10.0.0.1/8:80": address 10.0.0.1 has bits set beyond the /8 mask (network is 10.0.0.0)"#,
            ),
            (
                "accept *:0",
                r#""accept *:0": invalid port "0", expected 1-65535"#,
            ),
            (
                "accept *:443-80",
                r#""accept *:443-80": port range 443-80 ends before it starts"#,
            ),
            ("accept */8:80", r#""accept */8:80": * takes no mask"#),
            (
                "accept 300.1.1.1:80",
                r#""accept 300.1.1.1:80": invalid address "300.1.1.1""#,
            ),
            (
                "accept",
                r#""accept": expected `accept` or `reject` followed by ADDR[/MASK][:PORT[-PORT]]"#,
            ),
        ];
        for (text, message) in cases {
            assert_eq!(err(text), message);
        }
    }

    #[test]
    fn rejects_bad_forms() {
        let syntax = |rule: &str| PolicyError::Syntax { rule: rule.into() };
        let address = |rule: &str, addr: &str| PolicyError::Address {
            rule: rule.into(),
            addr: addr.into(),
        };
        let port = |rule: &str, port: &str| PolicyError::Port {
            rule: rule.into(),
            port: port.into(),
        };
        let mask = |rule: &str, mask: &str| PolicyError::Mask {
            rule: rule.into(),
            mask: mask.into(),
        };
        let unbracketed = |rule: &str| PolicyError::UnbracketedIpv6 { rule: rule.into() };
        let cases = [
            ("", syntax("")),
            ("   ", syntax("")),
            ("accept *:80 *:81", syntax("accept *:80 *:81")),
            ("accept * :80", syntax("accept * :80")),
            (
                "accept [2001:db8::1:80",
                address("accept [2001:db8::1:80", "[2001:db8::1:80"),
            ),
            (
                "accept [2001:db8::]x:80",
                address("accept [2001:db8::]x:80", "[2001:db8::]x:80"),
            ),
            ("accept [zz::1]:80", address("accept [zz::1]:80", "[zz::1]")),
            (
                "accept [10.0.0.1]:80",
                address("accept [10.0.0.1]:80", "[10.0.0.1]"),
            ),
            ("accept 10.0.0:80", address("accept 10.0.0:80", "10.0.0")),
            ("accept **:80", address("accept **:80", "**")),
            ("accept :80", address("accept :80", "")),
            ("accept ::1", unbracketed("accept ::1")),
            ("accept 2001:db8::/32", unbracketed("accept 2001:db8::/32")),
            (
                "accept 2001:db8::/32:80",
                unbracketed("accept 2001:db8::/32:80"),
            ),
            ("accept 10.0.0.0/", mask("accept 10.0.0.0/", "")),
            ("accept 10.0.0.0/-1", mask("accept 10.0.0.0/-1", "-1")),
            ("accept 10.0.0.0/+8", mask("accept 10.0.0.0/+8", "+8")),
            ("accept [::]/x:80", mask("accept [::]/x:80", "x")),
            (
                "accept 10.0.0.0/99999999999",
                mask("accept 10.0.0.0/99999999999", "99999999999"),
            ),
            (
                "accept 10.0.0.0/4294967295",
                PolicyError::MaskTooLong {
                    rule: "accept 10.0.0.0/4294967295".into(),
                    bits: u32::MAX,
                    max: 32,
                },
            ),
            (
                "accept private/8",
                PolicyError::MaskNotAllowed {
                    rule: "accept private/8".into(),
                    target: "private".into(),
                },
            ),
            (
                "accept *4/0",
                PolicyError::MaskNotAllowed {
                    rule: "accept *4/0".into(),
                    target: "*4".into(),
                },
            ),
            (
                "accept [2001:db8::1]/32",
                PolicyError::HostBits {
                    rule: "accept [2001:db8::1]/32".into(),
                    addr: ip("2001:db8::1"),
                    bits: 32,
                    network: ip("2001:db8::"),
                },
            ),
            ("accept *:65536", port("accept *:65536", "65536")),
            ("accept *:http", port("accept *:http", "http")),
            ("accept *:", port("accept *:", "")),
            ("accept *:80-", port("accept *:80-", "")),
            ("accept *:-80", port("accept *:-80", "")),
            ("accept *:+80", port("accept *:+80", "+80")),
            ("accept *:0-80", port("accept *:0-80", "0")),
            ("accept *:1-2-3", port("accept *:1-2-3", "2-3")),
            ("accept *:80:90", port("accept *:80:90", "80:90")),
            ("accept 1.2.3.4:80/8", port("accept 1.2.3.4:80/8", "80/8")),
            ("accept [::1]:**", port("accept [::1]:**", "**")),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<Rule>(), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn policy_reports_the_bad_user_rule() {
        let user = vec![
            "accept *:80".to_string(),
            "reject 10.0.0.0/33:25".to_string(),
        ];
        assert_eq!(
            ExitPolicy::new(&user, &[]).unwrap_err().to_string(),
            r#""reject 10.0.0.0/33:25": mask 33 is longer than 32 bits"#
        );
    }

    #[test]
    fn first_match_wins() {
        let narrow_first = policy(&["accept 198.51.100.7:80", "reject 198.51.100.0/24:*"], &[]);
        assert!(narrow_first.allows(ip("198.51.100.7"), Some(80)));
        assert!(!narrow_first.allows(ip("198.51.100.7"), Some(81)));
        assert!(!narrow_first.allows(ip("198.51.100.8"), Some(80)));
        assert!(narrow_first.allows(ip("198.51.101.8"), Some(81)));

        let wide_first = policy(&["reject 198.51.100.0/24:*", "accept 198.51.100.7:80"], &[]);
        assert!(!wide_first.allows(ip("198.51.100.7"), Some(80)));

        // A user accept overrides the default tail, but never the private rejects.
        let smtp = policy(&["accept *:25"], &[]);
        assert!(smtp.allows(ip("198.18.0.1"), Some(25)));
        assert!(!smtp.allows(ip("10.0.0.1"), Some(25)));

        let closed = policy(&["accept *:443", "reject *:*"], &[]);
        assert!(closed.allows(ip("198.18.0.1"), Some(443)));
        assert!(!closed.allows(ip("198.18.0.1"), Some(80)));
        assert!(!closed.allows(ip("198.18.0.1"), None));

        let v4_only = policy(&["reject *6:*"], &[]);
        assert!(v4_only.allows(ip("198.18.0.1"), Some(80)));
        assert!(!v4_only.allows(ip("2001:db8::1"), Some(80)));
    }

    #[test]
    fn families_do_not_cross() {
        let v4 = rule("reject 0.0.0.0/0:*");
        assert!(v4.matches(ip("198.18.0.1"), None));
        assert!(!v4.matches(ip("2001:db8::1"), None));
        // A mapped destination is matched as IPv4.
        assert!(v4.matches(ip("::ffff:198.18.0.1"), None));
        let v6 = rule("reject [::]/0:*");
        assert!(!v6.matches(ip("198.18.0.1"), None));
        assert!(!v6.matches(ip("::ffff:198.18.0.1"), None));
        assert!(v6.matches(ip("2001:db8::1"), None));
        assert!(rule("reject *4").matches(ip("::ffff:1.2.3.4"), Some(1)));
        assert!(!rule("reject *6").matches(ip("::ffff:1.2.3.4"), Some(1)));
        assert!(rule("reject *").matches(ip("2001:db8::1"), Some(1)));
        assert!(rule("reject *").matches(ip("1.2.3.4"), Some(1)));
    }

    #[test]
    fn default_tail() {
        let default = policy(&[], &[]);
        for dst in ["198.18.0.1", "2001:db8::1"] {
            let dst = ip(dst);
            for port in [25, 119, 135, 136, 137, 138, 139, 445] {
                assert!(!default.allows(dst, Some(port)), "{dst} port {port}");
            }
            for port in [0, 1, 24, 26, 80, 118, 120, 134, 140, 443, 444, 446, 65535] {
                assert!(default.allows(dst, Some(port)), "{dst} port {port}");
            }
        }
        let tail: Vec<String> = default.rules()[PRIVATE_V4.len() + PRIVATE_V6.len()..]
            .iter()
            .map(Rule::to_string)
            .collect();
        assert_eq!(
            tail,
            [
                "reject *:25",
                "reject *:119",
                "reject *:135-139",
                "reject *:445",
                "accept *:*"
            ]
        );
    }

    #[test]
    fn private_and_own_addresses_rejected() {
        let exit = policy(&["accept *:*"], &["198.51.100.9", "2001:db8:1::9"]);
        for dst in [
            "10.1.2.3",
            "192.168.1.1",
            "172.16.5.5",
            "127.0.0.1",
            "169.254.1.1",
            "0.1.2.3",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::1",
            "::",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "198.51.100.9",
            "2001:db8:1::9",
            "::ffff:198.51.100.9",
        ] {
            for port in [None, Some(80), Some(443)] {
                assert!(!exit.allows(ip(dst), port), "{dst} {port:?}");
            }
        }
        for dst in [
            "198.51.100.8",
            "172.32.0.1",
            "2001:db8:1::8",
            "::ffff:198.18.0.1",
        ] {
            assert!(exit.allows(ip(dst), Some(80)), "{dst}");
        }
        let prefix: Vec<String> = exit.rules()[PRIVATE_V4.len() + PRIVATE_V6.len()..][..2]
            .iter()
            .map(Rule::to_string)
            .collect();
        assert_eq!(
            prefix,
            ["reject 198.51.100.9:*", "reject [2001:db8:1::9]:*"]
        );
    }

    #[test]
    fn user_private_rules_include_own_addresses() {
        // An own address given in mapped form is normalised like destinations.
        let exit = policy(&["accept private:80"], &["::ffff:198.51.100.9"]);
        let private = PRIVATE_V4.len() + PRIVATE_V6.len();
        let expanded = &exit.rules()[private + 1..][..private + 1];
        assert!(expanded
            .iter()
            .all(|r| r.accept && r.ports == ports(80, 80)));
        assert_eq!(expanded[0].to_string(), "accept 0.0.0.0/8:80");
        assert_eq!(expanded[private].to_string(), "accept 198.51.100.9:80");
        assert_eq!(exit.rules()[private * 2 + 2].to_string(), "reject *:25");
        // The leading private rejects still win.
        assert!(!exit.allows(ip("10.0.0.1"), Some(80)));
        assert!(!exit.allows(ip("198.51.100.9"), Some(80)));
        // On its own, a private rule covers the private networks only.
        assert!(rule("accept private:80").matches(ip("::ffff:192.168.0.1"), Some(80)));
        assert!(!rule("accept private:80").matches(ip("198.51.100.9"), Some(80)));
    }

    #[test]
    fn portless_packets() {
        let default = policy(&[], &["198.51.100.9"]);
        assert!(default.allows(ip("198.18.0.1"), None));
        assert!(default.allows(ip("2001:db8::1"), None));
        for dst in ["10.0.0.1", "fe80::1", "::ffff:192.168.0.1", "198.51.100.9"] {
            assert!(!default.allows(ip(dst), None), "{dst}");
        }
        // A port-specific reject does not catch a packet without ports ...
        let no_web = policy(&["reject *:1-1024"], &[]);
        assert!(no_web.allows(ip("198.18.0.1"), None));
        assert!(!no_web.allows(ip("198.18.0.1"), Some(80)));
        // ... and neither does a port-specific accept.
        let web_only = policy(&["accept *:80", "reject *:*"], &[]);
        assert!(!web_only.allows(ip("198.18.0.1"), None));
    }

    #[test]
    fn summaries() {
        assert_eq!(policy(&[], &[]).summary(), "reject 25,119,135-139,445");
        // Own addresses and private rejects do not count.
        assert_eq!(
            policy(
                &["reject 192.168.0.0/24:80"],
                &["198.51.100.9", "2001:db8::9"]
            )
            .summary(),
            "reject 25,119,135-139,445"
        );
        assert_eq!(
            policy(&["accept *:80", "accept *:443", "reject *:*"], &[]).summary(),
            "accept 80,443"
        );
        assert_eq!(
            policy(&["accept *:20-23", "accept *4:80-81", "reject *:*"], &[]).summary(),
            "accept 20-23,80-81"
        );
        assert_eq!(policy(&["reject *:*"], &[]).summary(), "reject 1-65535");
        assert_eq!(policy(&["accept *:*"], &[]).summary(), "accept 1-65535");
        // IPv6 rules and narrow accepts are ignored.
        assert_eq!(
            policy(&["reject *6:*"], &[]).summary(),
            "reject 25,119,135-139,445"
        );
        assert_eq!(
            policy(&["accept 198.51.100.0/24:*", "reject *:*"], &[]).summary(),
            "reject 1-65535"
        );
        // Rejects add up: a /8 is below the cutoff, a /6 (or two /7s) above it.
        assert_eq!(
            policy(&["reject 1.0.0.0/8:80"], &[]).summary(),
            "reject 25,119,135-139,445"
        );
        assert_eq!(
            policy(&["reject 4.0.0.0/6:80"], &[]).summary(),
            "reject 25,80,119,135-139,445"
        );
        assert_eq!(
            policy(&["reject 2.0.0.0/7:80", "reject 4.0.0.0/7:80-81"], &[]).summary(),
            "reject 25,80,119,135-139,445"
        );
        // Once accepted, later rejects do not matter.
        assert_eq!(
            policy(&["accept *:80", "reject *4:*"], &[]).summary(),
            "accept 80"
        );
        assert_eq!(
            policy(&["reject *:1-1000", "accept *:999-1001", "reject *:*"], &[]).summary(),
            "accept 1001"
        );
    }

    #[test]
    fn long_summary_is_cut_at_an_entry() {
        let user: Vec<String> = (1..=2000).map(|n| format!("reject *:{}", 2 * n)).collect();
        let summary = ExitPolicy::new(&user, &[]).unwrap().summary();
        assert!(summary.len() <= MAX_SUMMARY_LEN);
        assert!(summary.len() > MAX_SUMMARY_LEN - 8);
        assert!(summary.starts_with("accept 1,3,5,"));
        assert!(summary.ends_with(|c: char| c.is_ascii_digit()));
    }

    fn arb_v4() -> impl Strategy<Value = Ipv4Addr> {
        prop_oneof![
            any::<u32>().prop_map(Ipv4Addr::from),
            (0u8..2, any::<u8>()).prop_map(|(c, d)| Ipv4Addr::new(198, 51, 100 + c, d)),
            (any::<u8>(), any::<u8>()).prop_map(|(c, d)| Ipv4Addr::new(10, 0, c, d)),
            any::<u8>().prop_map(|d| Ipv4Addr::new(192, 168, 0, d)),
        ]
    }

    fn arb_v6() -> impl Strategy<Value = Ipv6Addr> {
        prop_oneof![
            any::<u128>().prop_map(Ipv6Addr::from),
            (0u16..2, any::<u16>())
                .prop_map(|(c, d)| Ipv6Addr::new(0x2001, 0xdb8, c, 0, 0, 0, 0, d)),
            any::<u16>().prop_map(|d| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, d)),
            arb_v4().prop_map(|a| a.to_ipv6_mapped()),
            (0u16..3).prop_map(|d| Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, d)),
        ]
    }

    fn arb_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![arb_v4().prop_map(IpAddr::V4), arb_v6().prop_map(IpAddr::V6)]
    }

    fn arb_target() -> impl Strategy<Value = Target> {
        prop_oneof![
            Just(Target::Any),
            Just(Target::AnyV4),
            Just(Target::AnyV6),
            Just(Target::Private),
            (arb_v4(), 0u8..=32).prop_map(|(a, bits)| {
                Target::Net(IpNet::V4(Ipv4Net::new_assert(a, bits).trunc()))
            }),
            (arb_v6(), 0u8..=128).prop_map(|(a, bits)| {
                Target::Net(IpNet::V6(Ipv6Net::new_assert(a, bits).trunc()))
            }),
        ]
    }

    fn arb_port() -> impl Strategy<Value = u16> {
        prop_oneof![
            Just(1u16),
            Just(25),
            Just(80),
            Just(443),
            Just(65535),
            1u16..=65535,
        ]
    }

    fn arb_ports() -> impl Strategy<Value = PortRange> {
        prop_oneof![
            Just(PortRange::ALL),
            arb_port().prop_map(|p| PortRange { start: p, end: p }),
            (arb_port(), arb_port()).prop_map(|(a, b)| PortRange {
                start: a.min(b),
                end: a.max(b),
            }),
        ]
    }

    fn arb_rule() -> impl Strategy<Value = Rule> {
        (any::<bool>(), arb_target(), arb_ports()).prop_map(|(accept, target, ports)| Rule {
            accept,
            target,
            ports,
        })
    }

    fn arb_dst_port() -> impl Strategy<Value = Option<u16>> {
        prop_oneof![Just(None), Just(Some(0)), arb_port().prop_map(Some)]
    }

    /// Whether `dst` is in `addr/bits`, by explicit bit arithmetic.
    fn naive_in(addr: IpAddr, bits: u8, dst: IpAddr) -> bool {
        match (addr, dst) {
            (IpAddr::V4(a), IpAddr::V4(d)) => {
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from(a) & mask == u32::from(d) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(d)) => {
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                u128::from(a) & mask == u128::from(d) & mask
            }
            _ => false,
        }
    }

    fn naive_normalise(dst: IpAddr) -> IpAddr {
        match dst {
            IpAddr::V6(a) if u128::from(a) >> 32 == 0xffff => {
                IpAddr::V4(Ipv4Addr::from(u128::from(a) as u32))
            }
            other => other,
        }
    }

    fn naive_private(dst: IpAddr, own: &[IpAddr]) -> bool {
        let nets: [(&str, u8); 15] = [
            ("0.0.0.0", 8),
            ("10.0.0.0", 8),
            ("100.64.0.0", 10),
            ("127.0.0.0", 8),
            ("169.254.0.0", 16),
            ("172.16.0.0", 12),
            ("192.168.0.0", 16),
            ("224.0.0.0", 4),
            ("240.0.0.0", 4),
            ("::", 128),
            ("::1", 128),
            ("fc00::", 7),
            ("fe80::", 10),
            ("ff00::", 8),
            ("::ffff:0:0", 96),
        ];
        nets.iter().any(|&(a, bits)| naive_in(ip(a), bits, dst))
            || own.iter().any(|&a| naive_normalise(a) == dst)
    }

    fn naive_matches(rule: &Rule, dst: IpAddr, port: Option<u16>, own: &[IpAddr]) -> bool {
        let all_ports = rule.ports.start == 1 && rule.ports.end == 65535;
        let port_ok =
            all_ports || port.is_some_and(|p| rule.ports.start <= p && p <= rule.ports.end);
        let addr_ok = match rule.target {
            Target::Any => true,
            Target::AnyV4 => dst.is_ipv4(),
            Target::AnyV6 => dst.is_ipv6(),
            Target::Net(net) => naive_in(net.addr(), net.prefix_len(), dst),
            Target::Private => naive_private(dst, own),
        };
        port_ok && addr_ok
    }

    /// The effective policy evaluated directly from the user's (unexpanded) rules.
    fn naive_allows(user: &[Rule], own: &[IpAddr], dst: IpAddr, port: Option<u16>) -> bool {
        let dst = naive_normalise(dst);
        if naive_private(dst, own) {
            return false;
        }
        if let Some(rule) = user.iter().find(|r| naive_matches(r, dst, port, own)) {
            return rule.accept;
        }
        !matches!(port, Some(25 | 119 | 135..=139 | 445))
    }

    proptest! {
        #[test]
        fn display_round_trips(rule in arb_rule()) {
            let text = rule.to_string();
            prop_assert_eq!(text.parse::<Rule>(), Ok(rule));
            let shouted = format!("  {}  ", text.to_uppercase());
            prop_assert_eq!(shouted.parse::<Rule>(), Ok(rule));
        }

        #[test]
        fn allows_agrees_with_naive_reference(
            user in proptest::collection::vec(arb_rule(), 0..8),
            own in proptest::collection::vec(arb_addr(), 0..3),
            probes in proptest::collection::vec((arb_addr(), arb_dst_port()), 1..40),
        ) {
            let texts: Vec<String> = user.iter().map(Rule::to_string).collect();
            let exit = ExitPolicy::new(&texts, &own).unwrap();
            for (dst, port) in probes {
                prop_assert_eq!(
                    exit.allows(dst, port),
                    naive_allows(&user, &own, dst, port),
                    "{} {:?}",
                    dst,
                    port
                );
            }
        }

        #[test]
        fn parser_never_panics(text in "[a-zA-Z0-9*:/\\[\\]. -]{0,40}") {
            let _ = text.parse::<Rule>();
        }
    }
}
