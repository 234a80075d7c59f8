//! Kernel-facing network setup (Linux only): the client's routing, kill switch and DNS,
//! and the exit gateway's forwarding and NAT.
//!
//! Links, addresses, routes and policy rules are set over rtnetlink; nftables rulesets
//! are piped to `nft -f -` as one transaction each, so a ruleset is installed whole or
//! not at all, and installing it again replaces it instead of adding a copy.
//!
//! - `client.rs` (re-exported here): the client's routing, kill switch and DNS;
//! - `exit.rs` (re-exported here): the exit's forwarding and NAT.

mod client;
mod conntrack;
mod exit;
mod host;
mod netlink;
mod nft;
mod resolv;
mod state;

pub use self::client::*;
pub use self::exit::*;
pub use self::resolv::BACKUP as RESOLV_BACKUP;
pub use self::state::FILE as STATE_FILE;

use std::net::IpAddr;

use anyhow::Result;

use self::netlink::Family;
use crate::proto::iface;

/// Checks a network interface name, which also goes verbatim into nftables rulesets
/// ([`iface::check_name`]); `what` says where it comes from.
fn check_ifname(what: &str, name: &str) -> Result<()> {
    iface::check_name(name).map_err(|e| anyhow::anyhow!("{what} {e}"))
}

/// Checks a tunnel device's MTU ([`iface::check_mtu`]).
fn check_mtu(mtu: u32) -> Result<()> {
    iface::check_mtu(mtu).map_err(|e| anyhow::anyhow!("mtu: {e}"))
}

/// The address families this kernel supports.
fn families() -> &'static [Family] {
    if host::ipv6_available() {
        &Family::BOTH
    } else {
        &Family::BOTH[..1]
    }
}

/// Whether this host gives new interfaces IPv6 (see `host::ipv6_available`): without
/// it, the client and the exit run IPv4 only, and the client's kill switch blocks
/// IPv6.
#[must_use]
pub fn ipv6_usable() -> bool {
    host::ipv6_available()
}

/// The first nameserver of each address family in `/etc/resolv.conf` (IPv4 first),
/// skipping loopback stubs, which cannot be DNAT targets; if that leaves none, those of
/// systemd-resolved's upstream list. Empty if there is none.
pub fn system_resolvers() -> Vec<IpAddr> {
    resolv::system_resolvers()
}

/// Every `nameserver` of `/etc/resolv.conf`, in order (none if it is missing).
pub fn resolv_conf_nameservers() -> Result<Vec<IpAddr>> {
    match std::fs::read_to_string(resolv::RESOLV_CONF) {
        Ok(text) => Ok(resolv::nameservers(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => {
            Err(anyhow::Error::new(e).context(format!("cannot read {}", resolv::RESOLV_CONF)))
        }
    }
}

/// The addresses of this host's interfaces (an exit rejects traffic to them).
pub fn own_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sa) = a.address else { continue };
            if let Some(v4) = sa.as_sockaddr_in() {
                out.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                out.push(IpAddr::V6(v6.ip()));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::client::validate_client;
    use super::exit::validate_exit;
    use super::*;

    fn client() -> ClientNet {
        ClientNet {
            tun: "anon0".into(),
            addrs: vec![
                "100.64.0.2/32".parse().expect("v4"),
                "fd00:64::2/128".parse().expect("v6"),
            ],
            mtu: 1420,
            fwmark: 0xca6c,
            table: 51820,
            gateways: vec!["198.18.0.1:4500".parse().expect("gateway")],
            relay_ports: None,
            dns: vec!["100.64.0.53".parse().expect("dns")],
            state_dir: "/var/lib/anonnet".into(),
        }
    }

    fn invalid(net: ClientNet) -> String {
        format!(
            "{:#}",
            validate_client(&net).expect_err("should be rejected")
        )
    }

    #[test]
    fn accepts_a_sane_client() {
        validate_client(&client()).expect("valid");
    }

    #[test]
    fn rejects_bad_client_values_naming_them() {
        assert!(invalid(ClientNet {
            tun: "anon0\"; flush ruleset".into(),
            ..client()
        })
        .contains("not a usable interface name"));
        assert!(invalid(ClientNet {
            tun: "a-name-longer-than-15".into(),
            ..client()
        })
        .contains("1 to 15"));
        assert!(invalid(ClientNet {
            addrs: vec![],
            ..client()
        })
        .contains("addrs is empty"));
        assert!(invalid(ClientNet {
            mtu: 1000,
            ..client()
        })
        .contains("mtu: must be between 1280 and 4972, got 1000"));
        assert!(invalid(ClientNet {
            fwmark: 0,
            ..client()
        })
        .contains("fwmark 0"));
        assert!(invalid(ClientNet {
            table: 254,
            ..client()
        })
        .contains("table 254 is reserved"));
        assert!(invalid(ClientNet {
            state_dir: "run".into(),
            ..client()
        })
        .contains("state_dir run is relative"));
        assert!(invalid(ClientNet {
            gateways: vec!["198.18.0.1:0".parse().expect("gateway")],
            ..client()
        })
        .contains("port 0"));
    }

    #[test]
    fn rejects_a_loopback_dns_upstream() {
        let net = ExitNet {
            tun: "anonexit0".into(),
            addrs: vec!["100.64.0.1/32".parse().expect("v4")],
            mtu: 1420,
            pool4: "100.64.1.0/24".parse().expect("pool4"),
            pool6: "fd00:64:1::/64".parse().expect("pool6"),
            dns: vec!["100.64.0.53".parse().expect("dns")],
            dns_upstream: vec!["127.0.0.53".parse().expect("upstream")],
        };
        let err = format!("{:#}", validate_exit(&net).expect_err("loopback"));
        assert!(
            err.contains("dns_upstream 127.0.0.53 is a loopback address"),
            "{err}"
        );
        validate_exit(&ExitNet {
            dns_upstream: vec!["198.18.0.53".parse().expect("upstream")],
            ..net
        })
        .expect("valid");
    }
}
