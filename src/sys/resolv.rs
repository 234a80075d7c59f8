//! `/etc/resolv.conf`: reading nameservers, replacing the file in place and restoring it.

use std::fs;
use std::io::{ErrorKind, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::files::write_atomic;

/// The system resolver configuration.
pub(super) const RESOLV_CONF: &str = "/etc/resolv.conf";
/// systemd-resolved's list of its upstream servers (`/etc/resolv.conf` then often
/// names only its local stub, 127.0.0.53).
const RESOLVED_UPSTREAMS: &str = "/run/systemd/resolve/resolv.conf";
/// Name of the saved original inside the state directory.
pub const BACKUP: &str = "resolv.conf.orig";
/// First line of a file written by anonnet; how `client_down` recognises it.
const MARKER: &str = "# Written by anonnet";

/// The `nameserver` addresses in `text`, in order. Entries that do not parse (such as
/// link-local IPv6 addresses with a `%zone`) are skipped.
pub(super) fn nameservers(text: &str) -> Vec<IpAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(addr)) => addr.parse().ok(),
                _ => None,
            }
        })
        .collect()
}

/// Whether `ip` can be a DNAT target for traffic forwarded from a tunnel: not loopback,
/// unspecified, or IPv6 link-local (which would need a zone).
fn forwardable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_unspecified(),
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

/// The first forwardable nameserver of each family in `text` (IPv4 first).
pub(super) fn first_per_family(text: &str) -> Vec<IpAddr> {
    let servers: Vec<IpAddr> = nameservers(text)
        .into_iter()
        .filter(|ip| forwardable(*ip))
        .collect();
    let v4 = servers.iter().find(|ip| ip.is_ipv4());
    let v6 = servers.iter().find(|ip| ip.is_ipv6());
    v4.into_iter().chain(v6).copied().collect()
}

/// The first forwardable nameserver of each family in `/etc/resolv.conf`, or, when it
/// has none (a local stub such as systemd-resolved's), in systemd-resolved's upstream
/// list.
pub(super) fn system_resolvers() -> Vec<IpAddr> {
    for file in [RESOLV_CONF, RESOLVED_UPSTREAMS] {
        if let Ok(text) = fs::read_to_string(file) {
            let found = first_per_family(&text);
            if !found.is_empty() {
                return found;
            }
        }
    }
    Vec::new()
}

/// The file anonnet writes: a marker line and the tunnel's nameservers.
pub(super) fn render(dns: &[IpAddr]) -> String {
    let mut s =
        format!("{MARKER} while the tunnel is up; `anonnet down` restores the previous file.\n");
    for ip in dns {
        s.push_str(&format!("nameserver {ip}\n"));
    }
    s
}

fn is_ours(text: &str) -> bool {
    text.starts_with(MARKER)
}

/// Whether the file at `path` is one anonnet wrote.
pub(super) fn written_by_anonnet(path: &Path) -> Result<bool> {
    Ok(is_ours(&read_or_empty(path)?))
}

/// Path of the saved original in the state directory `dir`.
pub(super) fn backup_path(dir: &Path) -> PathBuf {
    dir.join(BACKUP)
}

fn read_or_empty(path: &Path) -> Result<String> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Truncates and rewrites `path` without replacing the file: inside a network namespace
/// `/etc/resolv.conf` is a bind mount, which a rename cannot replace.
fn write_in_place(path: &Path, content: &str) -> Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(content.as_bytes()))
        .with_context(|| {
            format!(
                "cannot write {}: run as root, or leave the dns list empty to keep the current resolver",
                path.display()
            )
        })
}

/// Saves `resolv` to the state directory `dir` unless it is a file anonnet wrote (so a
/// restart after a crash never saves anonnet's own file as the original), then writes
/// `dns` into it in place.
pub(super) fn install(resolv: &Path, dir: &Path, dns: &[IpAddr]) -> Result<()> {
    let current = read_or_empty(resolv)?;
    if !is_ours(&current) {
        let backup = backup_path(dir);
        write_atomic(&backup, current.as_bytes()).with_context(|| {
            format!(
                "cannot save {} to {}: choose a writable state_dir",
                resolv.display(),
                backup.display()
            )
        })?;
    }
    write_in_place(resolv, &render(dns))
}

/// Puts the saved original back in place, if anonnet's file is still there, and deletes
/// the saved copy. Returns what it did, or `None` if there was no saved copy.
pub(super) fn restore(resolv: &Path, dir: &Path) -> Result<Option<String>> {
    let backup = backup_path(dir);
    let saved = match fs::read_to_string(&backup) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read {}", backup.display()));
        }
    };
    let line = if is_ours(&read_or_empty(resolv)?) {
        write_in_place(resolv, &saved)?;
        format!("restored {}", resolv.display())
    } else {
        format!(
            "left {} as it is: it was changed after anonnet wrote it",
            resolv.display()
        )
    };
    fs::remove_file(&backup).with_context(|| format!("cannot delete {}", backup.display()))?;
    Ok(Some(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# Generated by NetworkManager
search example.org
nameserver 127.0.0.53
nameserver fe80::1%eth0
nameserver\t198.18.0.53  # office
;nameserver 198.18.0.99
nameserver 2001:db8::53
nameserver fe80::2
options edns0 trust-ad
nameserver 198.18.0.54
";

    #[test]
    fn parses_nameserver_lines_only() {
        let expected: Vec<IpAddr> = [
            "127.0.0.53",
            "198.18.0.53",
            "2001:db8::53",
            "fe80::2",
            "198.18.0.54",
        ]
        .iter()
        .map(|s| s.parse().expect("address"))
        .collect();
        assert_eq!(nameservers(SAMPLE), expected);
        assert!(nameservers("").is_empty());
        assert!(nameservers("nameserver\nnameserver not-an-address\n").is_empty());
    }

    #[test]
    fn first_per_family_skips_unforwardable_servers() {
        let expected: Vec<IpAddr> = vec![
            "198.18.0.53".parse().expect("v4"),
            "2001:db8::53".parse().expect("v6"),
        ];
        assert_eq!(first_per_family(SAMPLE), expected);
        assert!(first_per_family("nameserver 127.0.0.53\nnameserver ::1\n").is_empty());
    }

    #[test]
    fn install_and_restore_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let resolv = dir.path().join("resolv.conf");
        let state = dir.path().join("state");
        fs::create_dir(&state).expect("state dir");
        fs::write(&resolv, SAMPLE).expect("write");
        let dns: Vec<IpAddr> = vec!["100.64.0.53".parse().expect("dns")];

        assert!(!written_by_anonnet(&resolv).expect("before"));
        install(&resolv, &state, &dns).expect("install");
        assert!(written_by_anonnet(&resolv).expect("installed"));
        let ours = fs::read_to_string(&resolv).expect("read");
        assert!(ours.starts_with(MARKER));
        assert!(ours.ends_with("\nnameserver 100.64.0.53\n"));
        assert_eq!(nameservers(&ours), dns);

        // A second install (a restart after a crash) must keep the first original.
        install(&resolv, &state, &dns).expect("install again");
        assert_eq!(
            fs::read_to_string(backup_path(&state)).expect("backup"),
            SAMPLE
        );

        let line = restore(&resolv, &state).expect("restore");
        assert_eq!(line, Some(format!("restored {}", resolv.display())));
        assert_eq!(fs::read_to_string(&resolv).expect("read"), SAMPLE);
        assert!(!written_by_anonnet(&resolv).expect("restored"));
        assert!(!backup_path(&state).exists());
        assert_eq!(restore(&resolv, &state).expect("restore again"), None);
    }

    #[test]
    fn restore_keeps_a_file_someone_else_rewrote() {
        let dir = tempfile::tempdir().expect("tempdir");
        let resolv = dir.path().join("resolv.conf");
        fs::write(&resolv, SAMPLE).expect("write");
        install(&resolv, dir.path(), &["100.64.0.53".parse().expect("dns")]).expect("install");
        fs::write(&resolv, "nameserver 198.18.1.1\n").expect("rewrite");
        let line = restore(&resolv, dir.path())
            .expect("restore")
            .expect("a line");
        assert!(line.starts_with("left "), "{line}");
        assert_eq!(
            fs::read_to_string(&resolv).expect("read"),
            "nameserver 198.18.1.1\n"
        );
        assert!(!backup_path(dir.path()).exists());
    }
}
