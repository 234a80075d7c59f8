//! Facts about the host and its sysctls: capabilities, the TUN driver, IPv6 support.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Bit of CAP_NET_ADMIN in the capability sets.
const CAP_NET_ADMIN: u32 = 12;

/// Forwarding of IPv4 packets.
pub(super) const IPV4_FORWARD: &str = "net.ipv4.ip_forward";
/// Forwarding of IPv6 packets (all interfaces).
pub(super) const IPV6_FORWARDING: &str = "net.ipv6.conf.all.forwarding";
/// Whether the IPv4 reverse path filter takes packet marks into account.
pub(super) const SRC_VALID_MARK: &str = "net.ipv4.conf.all.src_valid_mark";

/// The effective capability set from the text of `/proc/self/status`.
pub(super) fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Fails unless this process has CAP_NET_ADMIN.
pub(super) fn require_net_admin() -> Result<()> {
    let status =
        fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let caps = effective_caps(&status)
        .context("cannot find CapEff in /proc/self/status: is /proc mounted?")?;
    if caps & (1 << CAP_NET_ADMIN) == 0 {
        bail!(
            "no CAP_NET_ADMIN (effective capabilities {caps:#x}): run anonnet as root, or grant it CAP_NET_ADMIN"
        );
    }
    Ok(())
}

/// Fails unless `/dev/net/tun` exists.
pub(super) fn require_tun_device() -> Result<()> {
    if !Path::new("/dev/net/tun").exists() {
        bail!(
            "/dev/net/tun does not exist: load the tun module (`modprobe tun`), or in a container pass the device through (e.g. `--device /dev/net/tun`)"
        );
    }
    Ok(())
}

/// IPv6 switched off on every interface, and on interfaces created from now on.
const IPV6_DISABLE: [&str; 2] = [
    "net.ipv6.conf.all.disable_ipv6",
    "net.ipv6.conf.default.disable_ipv6",
];

/// Whether a new interface can have IPv6: the kernel has it (it may be built
/// without it or disabled at boot, `ipv6.disable=1`), and it is not switched off by
/// `net.ipv6.conf.{all,default}.disable_ipv6 = 1` (common on VPSes; a new TUN device
/// would refuse IPv6 addresses with EACCES).
pub(super) fn ipv6_available() -> bool {
    Path::new("/proc/sys/net/ipv6").exists()
        && IPV6_DISABLE
            .iter()
            .all(|s| read_sysctl(s).ok().flatten().as_deref() != Some("1"))
}

fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

/// The value of sysctl `name` (trimmed), or `None` if it does not exist.
pub(super) fn read_sysctl(name: &str) -> Result<Option<String>> {
    match fs::read_to_string(sysctl_path(name)) {
        Ok(v) => Ok(Some(v.trim().to_owned())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read sysctl {name}")),
    }
}

/// Sets sysctl `name` to `value` (in this process's network namespace).
pub(super) fn write_sysctl(name: &str, value: &str) -> Result<()> {
    fs::write(sysctl_path(name), format!("{value}\n"))
        .with_context(|| format!("cannot set sysctl {name} = {value}: run anonnet as root"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_effective_capabilities() {
        let status = "Name:\tanonnet\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert_eq!(
            effective_caps("CapEff:\t0000000000001000\n"),
            Some(1 << CAP_NET_ADMIN)
        );
        assert_eq!(effective_caps("Name:\tx\n"), None);
    }

    #[test]
    fn sysctl_names_map_to_proc_paths() {
        assert_eq!(
            sysctl_path(IPV6_FORWARDING),
            "/proc/sys/net/ipv6/conf/all/forwarding"
        );
    }
}
