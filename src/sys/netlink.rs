//! Links, addresses, routes and policy rules over rtnetlink.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use ipnet::IpNet;
use nix::errno::Errno;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteHeader, RouteMessage, RouteScope};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder, RuleAddRequest};
use tokio::task::JoinHandle;

/// The main routing table.
pub(super) const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// Address family of a route or rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

impl Family {
    pub(super) const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// "IPv4" or "IPv6".
    pub(super) fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    /// The option of the `ip` command that selects this family.
    fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    /// The default route's destination, `0.0.0.0/0` or `::/0`.
    pub(super) fn default_net(self) -> IpNet {
        match self {
            Family::V4 => IpNet::V4(ipnet::Ipv4Net::default()),
            Family::V6 => IpNet::V6(ipnet::Ipv6Net::default()),
        }
    }

    fn version(self) -> IpVersion {
        match self {
            Family::V4 => IpVersion::V4,
            Family::V6 => IpVersion::V6,
        }
    }
}

/// One of the two policy rules of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rule {
    /// `not fwmark <fwmark> lookup <table>`.
    NotFwmark {
        priority: u32,
        fwmark: u32,
        table: u32,
    },
    /// `lookup main suppress_prefixlength 0`.
    SuppressMain { priority: u32 },
}

impl Rule {
    fn priority(self) -> u32 {
        match self {
            Rule::NotFwmark { priority, .. } | Rule::SuppressMain { priority } => priority,
        }
    }

    /// The rule as `ip rule` prints it.
    pub(super) fn describe(self, family: Family) -> String {
        match self {
            Rule::NotFwmark {
                priority,
                fwmark,
                table,
            } => format!(
                "{} rule {priority}: not fwmark {fwmark:#x} lookup {table}",
                family.name()
            ),
            Rule::SuppressMain { priority } => format!(
                "{} rule {priority}: lookup main suppress_prefixlength 0",
                family.name()
            ),
        }
    }

    fn fill<T>(self, mut req: RuleAddRequest<T>) -> RuleAddRequest<T> {
        req = req.action(RuleAction::ToTable).priority(self.priority());
        match self {
            Rule::NotFwmark { fwmark, table, .. } => {
                req = req.fw_mark(fwmark).table_id(table);
                req.message_mut().header.flags |= RuleFlags::Invert;
            }
            Rule::SuppressMain { .. } => {
                req = req.table_id(MAIN_TABLE);
                req.message_mut()
                    .attributes
                    .push(RuleAttribute::SuppressPrefixLen(0));
            }
        }
        req
    }

    fn matches(self, msg: &RuleMessage) -> bool {
        let attrs = &msg.attributes;
        let has_priority = attrs.contains(&RuleAttribute::Priority(self.priority()));
        let table = attrs
            .iter()
            .find_map(|a| match a {
                RuleAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(msg.header.table));
        if !has_priority || msg.header.action != RuleAction::ToTable {
            return false;
        }
        match self {
            Rule::NotFwmark {
                fwmark, table: t, ..
            } => {
                msg.header.flags.contains(RuleFlags::Invert)
                    && attrs.contains(&RuleAttribute::FwMark(fwmark))
                    && table == t
            }
            Rule::SuppressMain { .. } => {
                attrs.contains(&RuleAttribute::SuppressPrefixLen(0)) && table == MAIN_TABLE
            }
        }
    }
}

/// The errno of a netlink error reply, if that is what `e` is.
fn errno(e: &rtnetlink::Error) -> Option<Errno> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(Errno::from_raw(-m.raw_code())),
        _ => None,
    }
}

/// A route netlink connection; its background task ends when this is dropped.
pub(super) struct Netlink {
    handle: Handle,
    task: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    /// Opens a route netlink socket. Must be called inside a tokio runtime.
    pub(super) fn connect() -> Result<Self> {
        let (conn, handle, _) = rtnetlink::new_connection()
            .context("cannot open a route netlink socket: is this Linux?")?;
        let task = tokio::spawn(conn);
        Ok(Netlink { handle, task })
    }

    /// The index of the link called `name`, or `None` if there is none.
    pub(super) async fn link_index(&self, name: &str) -> Result<Option<u32>> {
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(Some(link.header.index)),
            Ok(None) => Ok(None),
            Err(e) if errno(&e) == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot look up network interface {name}")),
        }
    }

    /// Every link's name by index.
    pub(super) async fn link_names(&self) -> Result<HashMap<u32, String>> {
        let mut names = HashMap::new();
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links
            .try_next()
            .await
            .context("cannot list the network interfaces")?
        {
            if let Some(name) = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }) {
                names.insert(link.header.index, name);
            }
        }
        Ok(names)
    }

    /// Every address assigned in this namespace, with the index of its link.
    pub(super) async fn addresses(&self) -> Result<Vec<(u32, IpAddr)>> {
        let mut found = Vec::new();
        let mut addrs = self.handle.address().get().execute();
        while let Some(msg) = addrs
            .try_next()
            .await
            .context("cannot list the addresses of the network interfaces")?
        {
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                found.push((msg.header.index, ip));
            }
        }
        Ok(found)
    }

    /// Sets the MTU, brings the link up and assigns `addrs` (replacing any with the same
    /// address, so a second call changes nothing). IPv6 addresses skip duplicate address
    /// detection, so they are usable at once.
    pub(super) async fn configure_link(
        &self,
        name: &str,
        index: u32,
        addrs: &[IpNet],
        mtu: u32,
    ) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).mtu(mtu).up().build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .with_context(|| {
                format!("cannot set MTU {mtu} and bring up {name}: check that the MTU is in the range the device accepts")
            })?;
        for net in addrs {
            let mut req = self
                .handle
                .address()
                .add(index, net.addr(), net.prefix_len())
                .replace();
            if net.addr().is_ipv6() {
                let msg = req.message_mut();
                msg.header.flags |= AddressHeaderFlags::Nodad;
                msg.attributes
                    .push(AddressAttribute::Flags(AddressFlags::Nodad));
            }
            req.execute()
                .await
                .with_context(|| format!("cannot assign address {net} to {name}"))?;
        }
        Ok(())
    }

    /// Deletes the link with this index.
    pub(super) async fn delete_link(&self, name: &str, index: u32) -> Result<bool> {
        match self.handle.link().del(index).execute().await {
            Ok(()) => Ok(true),
            Err(e) if errno(&e) == Some(Errno::ENODEV) => Ok(false),
            Err(e) => Err(e).with_context(|| {
                format!("cannot delete network interface {name}: delete it by hand with `ip link del {name}`")
            }),
        }
    }

    fn route_message(dest: IpNet, index: u32, table: u32) -> RouteMessage {
        match dest {
            IpNet::V4(net) => RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .output_interface(index)
                .scope(RouteScope::Link)
                .table_id(table)
                .build(),
            IpNet::V6(net) => RouteMessageBuilder::<Ipv6Addr>::new()
                .destination_prefix(net.network(), net.prefix_len())
                .output_interface(index)
                .table_id(table)
                .build(),
        }
    }

    /// Adds `dest dev <index> table <table>`, replacing a route to the same destination.
    pub(super) async fn replace_route(
        &self,
        dest: IpNet,
        name: &str,
        index: u32,
        table: u32,
    ) -> Result<()> {
        let msg = Self::route_message(dest, index, table);
        self.handle
            .route()
            .add(msg)
            .replace()
            .execute()
            .await
            .with_context(|| format!("cannot add route {dest} dev {name} table {table}"))
    }

    /// Deletes `dest dev <index> table <table>`; `false` if there was no such route.
    pub(super) async fn delete_route(
        &self,
        dest: IpNet,
        name: &str,
        index: u32,
        table: u32,
    ) -> Result<bool> {
        let msg = Self::route_message(dest, index, table);
        match self.handle.route().del(msg).execute().await {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno(&e), Some(Errno::ESRCH | Errno::ENOENT)) => Ok(false),
            Err(e) => Err(e).with_context(|| {
                format!("cannot delete route {dest} dev {name} table {table}: delete it by hand with `ip route del {dest} dev {name} table {table}`")
            }),
        }
    }

    /// Adds `rule` for `family`.
    pub(super) async fn add_rule(&self, family: Family, rule: Rule) -> Result<()> {
        let req = self.handle.rule().add();
        let result = match family {
            Family::V4 => rule.fill(req.v4()).execute().await,
            Family::V6 => rule.fill(req.v6()).execute().await,
        };
        result.with_context(|| format!("cannot add {}", rule.describe(family)))
    }

    /// Deletes every copy of `rule` for `family`; returns how many there were.
    pub(super) async fn delete_rule(&self, family: Family, rule: Rule) -> Result<usize> {
        let mut found = Vec::new();
        let mut rules = self.handle.rule().get(family.version()).execute();
        loop {
            match rules.try_next().await {
                Ok(Some(msg)) if rule.matches(&msg) => found.push(msg),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if errno(&e) == Some(Errno::EAFNOSUPPORT) => return Ok(0),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot list the {} policy rules", family.name()))
                }
            }
        }
        let count = found.len();
        for msg in found {
            match self.handle.rule().del(msg).execute().await {
                Ok(()) => {}
                Err(e) if errno(&e) == Some(Errno::ENOENT) => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "cannot delete {}: delete it by hand with `ip {} rule del priority {}`",
                            rule.describe(family),
                            family.flag(),
                            rule.priority()
                        )
                    })
                }
            }
        }
        Ok(count)
    }
}
