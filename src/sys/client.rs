//! The client's side: routing all traffic into the TUN, the kill switch, DNS.
//!
//! The daemon creates the TUN (`anon0`), then [`client_up`] routes all traffic into it
//! the way `wg-quick` does, for IPv4 and IPv6 alike:
//!
//! - `default dev anon0 table <table>`;
//! - rule [`SUPPRESS_RULE_PRIORITY`] (32762): `lookup main suppress_prefixlength 0`,
//!   so routes of the main table more specific than a default route (the LAN, the
//!   tunnel's own prefix) still apply;
//! - rule [`FWMARK_RULE_PRIORITY`] (32763): `not fwmark <fwmark> lookup <table>`, so
//!   every packet except those of the daemon's own UDP sockets (marked with `SO_MARK`)
//!   goes into the tunnel, while the daemon's packets fall through to the main table.
//!
//! Both come before the kernel's `lookup main` rule (32766) and are kept apart from the
//! 32764/32765 that `wg-quick` usually ends up with, so each tool removes only its own.
//!
//! The kill switch is the nftables table `inet anonnet`:
//!
//! - chain `output` (hook output, policy **drop**) accepts only packets leaving through
//!   `lo` or the TUN; UDP with mark `<fwmark>` to an allowed gateway, whose
//!   `address . port` pairs are in the named sets `gateways4` and `gateways6`
//!   (replaced atomically by [`client_set_gateways`]); DHCPv4 (UDP 68 to 67) and
//!   DHCPv6 (UDP 546 to 547); ICMPv6 router and neighbour solicitations and
//!   advertisements with hop limit 255 (link-local by construction);
//! - chain `input` (hook input, policy **drop**) accepts what arrives on `lo` or the
//!   TUN, replies to what the output chain let out (`ct state established,related`),
//!   other gateways' UDP to the relay ports of a mixed-mode node, DHCP replies and the
//!   same neighbour discovery;
//! - chain `forward` (hook forward, policy **drop**) accepts only packets into or out
//!   of the TUN, so hosts routed through this one (containers, VMs, a LAN behind it)
//!   reach nothing while the tunnel is down, and nothing but the tunnel while it is
//!   up (it is up to their router to source-NAT them to the tunnel's address);
//! - chain `preraw` (hook prerouting, priority raw) drops packets for the tunnel's own
//!   addresses that arrive on another interface, so hosts on the LAN cannot reach
//!   services bound to them;
//! - chains `premangle` and `postmangle` copy the mark of the daemon's UDP flows into
//!   conntrack and back onto their replies, and `net.ipv4.conf.all.src_valid_mark` is
//!   set to 1, so replies from the gateways pass a strict reverse-path filter (both as
//!   `wg-quick` does; the sysctl's previous value is restored by [`client_down`]).
//!
//! The table is not tied to the daemon's process: after the daemon dies (even by
//! SIGKILL), the TUN and its routes vanish, traffic falls back to the main table, and
//! the output and forward chains drop it. Nothing leaks until [`client_down`] removes
//! the table. A host that is also an exit gateway forwards its clients' traffic through
//! its own `anonexit0`, which the forward chain drops: one host is not both.
//!
//! DNS: when [`ClientNet::dns`] is not empty, `/etc/resolv.conf` is saved to the state
//! directory (unless it is a file anonnet wrote, so a restart after a crash never saves
//! anonnet's own file as the original) and rewritten in place (truncated, not renamed:
//! inside a network namespace it is a bind mount) with the tunnel's nameservers. When it
//! is a symlink (systemd-resolved, resolvconf), the file it points to is rewritten. It
//! is restored in place by [`client_down`], unless someone else rewrote it meanwhile.
//!
//! State: [`client_up`] first writes `client-state.toml` in the state directory (tun,
//! table, fwmark, rule priorities, nft table, whether DNS was changed, the previous
//! `src_valid_mark`), before it changes anything, so [`client_down`] can undo a run that
//! crashed half-way, without the configuration.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;

use super::netlink::{Netlink, Rule};
use super::state::ClientState;
use super::{check_ifname, check_mtu, families, host, nft, resolv, state};

/// Priority of the client's `lookup main suppress_prefixlength 0` rules (IPv4 and IPv6).
pub const SUPPRESS_RULE_PRIORITY: u32 = 32762;
/// Priority of the client's `not fwmark <fwmark> lookup <table>` rules (IPv4 and IPv6).
pub const FWMARK_RULE_PRIORITY: u32 = 32763;

/// The client's side of the tunnel: what [`client_up`] sets up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientNet {
    /// Name of the TUN link, e.g. `anon0`.
    pub tun: String,
    /// Addresses assigned to the TUN, e.g. `100.64.0.2/32` and `fd00:64::2/128`.
    pub addrs: Vec<IpNet>,
    /// MTU of the TUN.
    pub mtu: u32,
    /// Mark the daemon sets on its own UDP sockets (`SO_MARK`); not 0.
    pub fwmark: u32,
    /// Routing table for the tunnel's default routes; not 0, 253, 254 or 255.
    pub table: u32,
    /// The only UDP destinations allowed out while the tunnel is up (the entry gateways).
    pub gateways: Vec<SocketAddr>,
    /// Mixed mode: the relay's UDP ports (first, last). Marked UDP from them may go to
    /// any address, since the relay forwards other clients' circuits to any gateway.
    pub relay_ports: Option<(u16, u16)>,
    /// Resolver addresses inside the tunnel; empty leaves DNS alone.
    pub dns: Vec<IpAddr>,
    /// Directory (e.g. `/var/lib/anonnet`) holding what [`client_down`] needs.
    pub state_dir: PathBuf,
}

pub(super) fn validate_client(net: &ClientNet) -> Result<()> {
    check_ifname("tun", &net.tun)?;
    if net.addrs.is_empty() {
        bail!("addrs is empty: give the tunnel at least one address, e.g. 100.64.0.2/32");
    }
    check_mtu(net.mtu)?;
    if net.fwmark == 0 {
        bail!("fwmark 0 means unmarked: pick a non-zero mark, e.g. 0xca6c");
    }
    if matches!(net.table, 0 | 253..=255) {
        bail!(
            "table {} is reserved (0 unspec, 253 default, 254 main, 255 local): pick another, e.g. 51820",
            net.table
        );
    }
    if let Some(g) = net.gateways.iter().find(|g| g.port() == 0) {
        bail!("gateway {g} has port 0: give the gateway's UDP port");
    }
    if !net.state_dir.is_absolute() {
        bail!(
            "state_dir {} is relative: give an absolute path such as /var/lib/anonnet",
            net.state_dir.display()
        );
    }
    Ok(())
}

/// Checks the nftables table name read from a state file before it goes into a ruleset.
fn check_nft_table(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !ok {
        bail!(
            "nft_table {name:?} in the state file is not a table name anonnet writes: remove the kill switch by hand with `nft delete table inet anonnet`"
        );
    }
    Ok(())
}

/// The two policy rules recorded in `st`.
fn client_rules(st: &ClientState) -> [Rule; 2] {
    [
        Rule::SuppressMain {
            priority: st.suppress_priority,
        },
        Rule::NotFwmark {
            priority: st.fwmark_priority,
            fwmark: st.fwmark,
            table: st.table,
        },
    ]
}

/// Checks before creating anything: the values in `net`, CAP_NET_ADMIN, `/dev/net/tun`,
/// that `/etc/resolv.conf` is writable when [`ClientNet::dns`] is set, the `nft`
/// command, that no link is called [`ClientNet::tun`] and that none of
/// [`ClientNet::addrs`] is assigned to an interface. State left by a run that was not cleaned up is reported
/// (as a warning) and replaced by [`client_up`].
pub async fn client_preflight(net: &ClientNet) -> Result<()> {
    validate_client(net)?;
    host::require_net_admin()?;
    host::require_tun_device()?;
    if !host::ipv6_available() {
        if let Some(a) = net.addrs.iter().find(|a| a.addr().is_ipv6()) {
            bail!("address {a} is IPv6, but this kernel has IPv6 disabled: drop it from addrs or enable IPv6");
        }
    }
    let resolv_conf = Path::new(resolv::RESOLV_CONF);
    if !net.dns.is_empty() && resolv_conf.exists() {
        nix::unistd::eaccess(resolv_conf, nix::unistd::AccessFlags::W_OK).with_context(|| {
            format!(
                "cannot write {}: run anonnet as root, or leave the dns list empty to keep the current resolver",
                resolv_conf.display()
            )
        })?;
    }
    if !nft::installed().await {
        bail!("the `nft` command was not found: install the nftables package (the kill switch needs it)");
    }
    let nl = Netlink::connect()?;
    if nl.link_index(&net.tun).await?.is_some() {
        bail!(
            "network interface {} already exists: is another anonnet running? `anonnet down` removes a stale one",
            net.tun
        );
    }
    let names = nl.link_names().await?;
    for (index, ip) in nl.addresses().await? {
        if let Some(a) = net.addrs.iter().find(|a| a.addr() == ip) {
            let name = names
                .get(&index)
                .cloned()
                .unwrap_or_else(|| format!("interface #{index}"));
            bail!(
                "address conflict: {ip} (from {a}) is already assigned to {name}: pick other tunnel addresses or remove it with `ip addr del {ip} dev {name}`"
            );
        }
    }
    if state::load(&net.state_dir)?.is_some() {
        tracing::warn!(
            "{} is left from an earlier run that was not cleaned up; it will be replaced",
            state::path(&net.state_dir).display()
        );
    }
    Ok(())
}

/// Removes what an earlier run recorded in `old` that this run will not replace itself:
/// its rules, and its routes and link when they differ from this run's.
async fn undo_leftovers(nl: &Netlink, old: &ClientState, net: &ClientNet) -> Result<()> {
    for &family in families() {
        for rule in client_rules(old) {
            nl.delete_rule(family, rule).await?;
        }
    }
    if old.tun != net.tun {
        check_ifname("tun in the state file", &old.tun)?;
        if let Some(index) = nl.link_index(&old.tun).await? {
            nl.delete_link(&old.tun, index).await?;
        }
    } else if old.table != net.table {
        if let Some(index) = nl.link_index(&old.tun).await? {
            for &family in families() {
                nl.delete_route(family.default_net(), &old.tun, index, old.table)
                    .await?;
            }
        }
    }
    Ok(())
}

/// Sets up the client after the daemon created the TUN [`ClientNet::tun`] (without
/// addresses), failing without a change if it does not exist: the state file first,
/// then the kill switch, the TUN's addresses, MTU and link state, the default routes and
/// policy rules, and DNS (see the module documentation). Calling it again, or after a
/// crash, replaces what the earlier run made instead of adding to it.
pub async fn client_up(net: &ClientNet) -> Result<()> {
    validate_client(net)?;
    let nl = Netlink::connect()?;
    let index = nl.link_index(&net.tun).await?.with_context(|| {
        format!(
            "network interface {} does not exist: the daemon must create the TUN before client_up",
            net.tun
        )
    })?;
    let old = state::load(&net.state_dir)?;
    let src_valid_mark = match old.as_ref().and_then(|o| o.src_valid_mark.clone()) {
        Some(value) => Some(value),
        None => host::read_sysctl(host::SRC_VALID_MARK)?,
    };
    let st = ClientState {
        tun: net.tun.clone(),
        table: net.table,
        fwmark: net.fwmark,
        suppress_priority: SUPPRESS_RULE_PRIORITY,
        fwmark_priority: FWMARK_RULE_PRIORITY,
        nft_table: nft::CLIENT_TABLE.to_owned(),
        dns_changed: !net.dns.is_empty() || resolv::backup_path(&net.state_dir).exists(),
        src_valid_mark: src_valid_mark.clone(),
    };
    state::save(&net.state_dir, &st)?;

    if let Some(old) = &old {
        undo_leftovers(&nl, old, net).await?;
    }
    nft::apply(
        &nft::client_ruleset(
            &net.tun,
            net.fwmark,
            &net.addrs,
            &net.gateways,
            net.relay_ports,
        ),
        "kill switch (nftables table inet anonnet)",
    )
    .await?;
    if src_valid_mark.is_some() {
        host::write_sysctl(host::SRC_VALID_MARK, "1")?;
    }

    nl.configure_link(&net.tun, index, &net.addrs, net.mtu)
        .await?;
    for &family in families() {
        nl.replace_route(family.default_net(), &net.tun, index, net.table)
            .await?;
    }
    for &family in families() {
        for rule in client_rules(&st) {
            nl.delete_rule(family, rule).await?;
            nl.add_rule(family, rule).await?;
        }
    }

    let resolv_conf = Path::new(resolv::RESOLV_CONF);
    if net.dns.is_empty() {
        if let Some(line) = resolv::restore(resolv_conf, &net.state_dir)? {
            tracing::info!("DNS left to the system: {line}");
        }
    } else {
        resolv::install(resolv_conf, &net.state_dir, &net.dns)?;
    }
    Ok(())
}

/// Whether the kill switch (`inet anonnet`) is in place: while `up` runs, or left by
/// a run that died (then it lets out only the gateways of that run until
/// [`client_set_gateways`] or [`client_up`] replaces them).
pub async fn kill_switch_armed() -> Result<bool> {
    nft::table_exists(nft::CLIENT_TABLE).await
}

/// Replaces the set of allowed gateways with [`ClientNet::gateways`], atomically.
pub async fn client_set_gateways(net: &ClientNet) -> Result<()> {
    if let Some(g) = net.gateways.iter().find(|g| g.port() == 0) {
        bail!("gateway {g} has port 0: give the gateway's UDP port");
    }
    nft::apply(&nft::gateway_update(&net.gateways), "gateway set update")
        .await
        .context(
            "cannot update the allowed gateways: is the client up? (client_up creates nftables table inet anonnet)",
        )
}

/// Removes everything [`client_up`] made, as recorded in `state_dir`: policy rules,
/// routes, the TUN link if it still exists, `/etc/resolv.conf`, the sysctl, the kill
/// switch and the state file. Idempotent; works after the daemon was killed and when
/// there is nothing to remove. Returns one line per thing removed.
pub async fn client_down(state_dir: &Path) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let Some(st) = state::load(state_dir)? else {
        if nft::table_exists(nft::CLIENT_TABLE).await? {
            nft::apply(
                &nft::delete_table(nft::CLIENT_TABLE),
                "removal of nftables table inet anonnet",
            )
            .await?;
            done.push(format!(
                "removed nftables table inet {} (the kill switch)",
                nft::CLIENT_TABLE
            ));
        }
        let resolv_conf = Path::new(resolv::RESOLV_CONF);
        if resolv::written_by_anonnet(resolv_conf)? {
            done.push(format!(
                "left {} as it is: anonnet wrote it, but {} holds no state and no saved copy (was another state_dir used?); put your resolver back by hand",
                resolv_conf.display(),
                state_dir.display()
            ));
        }
        return Ok(done);
    };
    check_ifname("tun in the state file", &st.tun)?;
    check_nft_table(&st.nft_table)?;

    let nl = Netlink::connect()?;
    for &family in families() {
        for rule in client_rules(&st) {
            if nl.delete_rule(family, rule).await? > 0 {
                done.push(format!("removed {}", rule.describe(family)));
            }
        }
    }
    if let Some(index) = nl.link_index(&st.tun).await? {
        for &family in families() {
            let dest = family.default_net();
            if nl.delete_route(dest, &st.tun, index, st.table).await? {
                done.push(format!(
                    "removed route {dest} dev {} table {}",
                    st.tun, st.table
                ));
            }
        }
        if nl.delete_link(&st.tun, index).await? {
            done.push(format!("deleted network interface {}", st.tun));
        }
    }
    let resolv_conf = Path::new(resolv::RESOLV_CONF);
    match resolv::restore(resolv_conf, state_dir)? {
        Some(line) => done.push(line),
        None if st.dns_changed => done.push(format!(
            "left {} as it is: no saved copy of it in {}",
            resolv_conf.display(),
            state_dir.display()
        )),
        None => {}
    }
    if let Some(previous) = &st.src_valid_mark {
        if host::read_sysctl(host::SRC_VALID_MARK)?.as_ref() != Some(previous) {
            host::write_sysctl(host::SRC_VALID_MARK, previous)?;
            done.push(format!(
                "restored sysctl {} = {previous}",
                host::SRC_VALID_MARK
            ));
        }
    }
    if nft::table_exists(&st.nft_table).await? {
        nft::apply(
            &nft::delete_table(&st.nft_table),
            "removal of the kill switch",
        )
        .await?;
        done.push(format!(
            "removed nftables table inet {} (the kill switch)",
            st.nft_table
        ));
    }
    if state::remove(state_dir)? {
        done.push(format!("removed {}", state::path(state_dir).display()));
    }
    Ok(done)
}
