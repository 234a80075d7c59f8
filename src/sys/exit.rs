//! The exit's side: forwarding and NAT for the circuits' pool addresses.
//!
//! [`exit_up`] configures the exit's TUN, routes the per-circuit pools into it (main
//! table), turns on `net.ipv4.ip_forward` and `net.ipv6.conf.all.forwarding`, and
//! installs the nftables table `inet anonnet-exit`:
//!
//! - chain `forward` (policy accept, so the host's other forwarding is untouched):
//!   clamps the MSS of TCP SYNs entering or leaving the TUN to the route's MTU; drops
//!   packets from the TUN back into it (one client to another's pool address); accepts
//!   everything else from the TUN; towards the TUN accepts only `ct state
//!   established,related` (replies, and ICMP errors about the circuits' own flows) and
//!   drops the rest;
//! - chain `input` (policy accept): of packets from the TUN to the exit host itself
//!   (any address it owns, now or later, and its broadcast addresses: whatever the
//!   kernel delivers locally) accepts only DNS that `dstnat` redirected to a resolver
//!   on the host, and rejects the rest with ICMP administratively prohibited, so
//!   clients cannot reach services of the exit host;
//! - chain `dstnat`: TCP and UDP port 53 from the TUN to one of [`ExitNet::dns`] is
//!   DNATed to the first [`ExitNet::dns_upstream`] address of the same family; a family
//!   without an upstream is not served;
//! - chain `srcnat`: packets from `pool4`/`pool6` that leave through another interface
//!   are masqueraded (NAT44 and NAT66).
//!
//! It then deletes the tracked connections of the pools (an earlier run's), and
//! [`forget_connections`] does the same for each closed circuit's addresses before
//! the exit reuses them.
//!
//! Another table's forward chain with policy drop (Docker sets one up) still drops
//! circuit traffic; such hosts need their own accept rule for the TUN. With
//! `net.ipv6.conf.all.forwarding = 1` the kernel ignores router advertisements on
//! interfaces whose `accept_ra` is 1, so an exit that gets its IPv6 default route from
//! SLAAC needs `accept_ra = 2` on its uplink.

use std::net::IpAddr;

use anyhow::{bail, Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::netlink::{Netlink, MAIN_TABLE};
use super::{check_ifname, check_mtu, conntrack, host, nft};

/// The exit gateway's side of the tunnel: what [`exit_up`] sets up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitNet {
    /// Name of the TUN link, e.g. `anonexit0`, already created by the daemon.
    pub tun: String,
    /// The exit's in-tunnel addresses, e.g. `100.64.0.1/32` and `fd00:64::1/128`.
    pub addrs: Vec<IpNet>,
    /// MTU of the TUN.
    pub mtu: u32,
    /// IPv4 per-circuit addresses, routed into the TUN and masqueraded on the way out.
    pub pool4: Ipv4Net,
    /// IPv6 per-circuit addresses, routed into the TUN and masqueraded on the way out.
    pub pool6: Ipv6Net,
    /// In-tunnel resolver addresses that clients query (e.g. `100.64.0.53`).
    pub dns: Vec<IpAddr>,
    /// Where queries to [`ExitNet::dns`] are forwarded: the first address of each family
    /// is used; a family without one is not served.
    pub dns_upstream: Vec<IpAddr>,
}

/// Sysctl values from before [`exit_up`], for [`exit_down`] to restore. `None` for a
/// sysctl the kernel does not have (IPv6 disabled).
///
/// After a crash, a second [`exit_up`] reads the values the first one set; a daemon that
/// wants the originals back across crashes keeps this (it is serializable) itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitGuardState {
    /// Previous `net.ipv4.ip_forward`.
    pub ipv4_forward: Option<String>,
    /// Previous `net.ipv6.conf.all.forwarding`.
    pub ipv6_forwarding: Option<String>,
}

pub(super) fn validate_exit(net: &ExitNet) -> Result<()> {
    check_ifname("tun", &net.tun)?;
    check_mtu(net.mtu)?;
    if net.pool4.prefix_len() == 0 {
        bail!(
            "pool4 {} would route every IPv4 address into the tunnel: use the circuits' prefix, e.g. 100.64.1.0/24",
            net.pool4
        );
    }
    if net.pool6.prefix_len() == 0 {
        bail!(
            "pool6 {} would route every IPv6 address into the tunnel: use the circuits' prefix, e.g. fd00:64:1::/64",
            net.pool6
        );
    }
    if let Some(ip) = net.dns_upstream.iter().find(|ip| ip.is_loopback()) {
        bail!(
            "dns_upstream {ip} is a loopback address, to which forwarded queries cannot be DNATed: use a resolver reachable over the network (system_resolvers() skips local stubs)"
        );
    }
    Ok(())
}

/// Sets up the exit gateway (see the module documentation) on the TUN the daemon
/// created. Replaces the ruleset of an earlier run instead of adding to it. Returns the
/// sysctl values to restore with [`exit_down`].
pub async fn exit_up(net: &ExitNet) -> Result<ExitGuardState> {
    validate_exit(net)?;
    host::require_net_admin()?;
    let nl = Netlink::connect()?;
    let index = nl.link_index(&net.tun).await?.with_context(|| {
        format!(
            "network interface {} does not exist: the daemon must create the TUN before exit_up",
            net.tun
        )
    })?;
    nl.configure_link(&net.tun, index, &net.addrs, net.mtu)
        .await?;
    nl.replace_route(IpNet::V4(net.pool4.trunc()), &net.tun, index, MAIN_TABLE)
        .await?;
    if host::ipv6_available() {
        nl.replace_route(IpNet::V6(net.pool6.trunc()), &net.tun, index, MAIN_TABLE)
            .await?;
    }

    let upstream4 = net.dns_upstream.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    });
    let upstream6 = net.dns_upstream.iter().find_map(|ip| match ip {
        IpAddr::V6(v6) => Some(*v6),
        IpAddr::V4(_) => None,
    });
    let rules = nft::ExitRules {
        tun: &net.tun,
        pool4: net.pool4.trunc(),
        pool6: net.pool6.trunc(),
        dns: &net.dns,
        upstream4,
        upstream6,
    };
    nft::apply(
        &nft::exit_ruleset(&rules),
        "exit ruleset (nftables table inet anonnet-exit)",
    )
    .await?;
    // An earlier run's circuits held these addresses: their flows must not reach the
    // clients that get the addresses now.
    forget_connections(&[IpNet::V4(net.pool4.trunc()), IpNet::V6(net.pool6.trunc())]).await;

    let saved = ExitGuardState {
        ipv4_forward: host::read_sysctl(host::IPV4_FORWARD)?,
        ipv6_forwarding: host::read_sysctl(host::IPV6_FORWARDING)?,
    };
    if saved.ipv4_forward.is_some() {
        host::write_sysctl(host::IPV4_FORWARD, "1")?;
    }
    if saved.ipv6_forwarding.is_some() {
        host::write_sysctl(host::IPV6_FORWARDING, "1")?;
    }
    Ok(saved)
}

/// Deletes the kernel's tracked connections whose original source is in one of
/// `sources` (pool addresses of closed circuits, or whole pools). A failure is logged,
/// not returned: the exit keeps serving, at the risk the caller guards against.
pub async fn forget_connections(sources: &[IpNet]) {
    match conntrack::forget_sources(sources).await {
        Ok(n) => tracing::debug!("forgot {n} tracked connections of {sources:?}"),
        Err(e) => tracing::warn!(
            "cannot delete tracked connections of {sources:?}: {e:#}; late replies to closed circuits may reach the clients that reuse their addresses"
        ),
    }
}

/// Undoes [`exit_up`]: restores the sysctls in `saved` (first, so nothing is forwarded
/// unfiltered), removes the nftables table and the pool routes. Idempotent.
pub async fn exit_down(net: &ExitNet, saved: &ExitGuardState) -> Result<()> {
    check_ifname("tun", &net.tun)?;
    if let Some(value) = &saved.ipv4_forward {
        host::write_sysctl(host::IPV4_FORWARD, value)?;
    }
    if let Some(value) = &saved.ipv6_forwarding {
        host::write_sysctl(host::IPV6_FORWARDING, value)?;
    }
    if nft::table_exists(nft::EXIT_TABLE).await? {
        nft::apply(
            &nft::delete_table(nft::EXIT_TABLE),
            "removal of nftables table inet anonnet-exit",
        )
        .await?;
    }
    let nl = Netlink::connect()?;
    if let Some(index) = nl.link_index(&net.tun).await? {
        nl.delete_route(IpNet::V4(net.pool4.trunc()), &net.tun, index, MAIN_TABLE)
            .await?;
        if host::ipv6_available() {
            nl.delete_route(IpNet::V6(net.pool6.trunc()), &net.tun, index, MAIN_TABLE)
                .await?;
        }
    }
    Ok(())
}
