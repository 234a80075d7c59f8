//! nftables rulesets as text, each applied as one atomic `nft -f -` transaction. The
//! `nft` child is awaited on the async runtime (tokio's process support), so its
//! thread runs the other tasks (TUN readers, the metrics server, the exit's
//! conntrack cleaner) meanwhile.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Output, Stdio};

use anyhow::{bail, Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

/// The client's table (family `inet`): the kill switch.
pub(super) const CLIENT_TABLE: &str = "anonnet";
/// The exit's table (family `inet`): forwarding filter, NAT, MSS clamping.
pub(super) const EXIT_TABLE: &str = "anonnet-exit";
/// Named set of allowed IPv4 gateway `address . port` pairs.
const GATEWAYS4: &str = "gateways4";
/// Named set of allowed IPv6 gateway `address . port` pairs.
const GATEWAYS6: &str = "gateways6";

/// Ruleset text built line by line, indented with tabs as `nft list` prints it.
struct Text(String);

impl Text {
    fn new(start: String) -> Self {
        Text(start)
    }

    fn line(&mut self, depth: usize, text: impl AsRef<str>) {
        for _ in 0..depth {
            self.0.push('\t');
        }
        self.0.push_str(text.as_ref());
        self.0.push('\n');
    }
}

/// Lines that create `inet <table>` if missing and then delete it: the start of a
/// transaction that replaces the table, or all of one that only removes it.
pub(super) fn delete_table(table: &str) -> String {
    format!("table inet {table} {{\n}}\ndelete table inet {table}\n")
}

/// The gateways of one family as sorted, de-duplicated `address . port` elements.
fn gateway_elements(gateways: &[SocketAddr], v6: bool) -> Vec<String> {
    let set: BTreeSet<(IpAddr, u16)> = gateways
        .iter()
        .filter(|g| g.is_ipv6() == v6)
        .map(|g| (g.ip(), g.port()))
        .collect();
    set.into_iter()
        .map(|(ip, port)| format!("{ip} . {port}"))
        .collect()
}

/// Router and neighbour discovery, link-local by construction (hop limit 255).
const ND_ACCEPT: &str = "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept";

/// The client's kill switch (see the module documentation), replacing any previous
/// `inet anonnet` table in the same transaction.
pub(super) fn client_ruleset(
    tun: &str,
    fwmark: u32,
    addrs: &[IpNet],
    gateways: &[SocketAddr],
    relay_ports: Option<(u16, u16)>,
) -> String {
    let mut t = Text::new(delete_table(CLIENT_TABLE));
    t.line(0, format!("table inet {CLIENT_TABLE} {{"));
    for (name, v6, ty) in [
        (GATEWAYS4, false, "ipv4_addr"),
        (GATEWAYS6, true, "ipv6_addr"),
    ] {
        t.line(1, format!("set {name} {{"));
        t.line(2, format!("type {ty} . inet_service"));
        let elements = gateway_elements(gateways, v6);
        if !elements.is_empty() {
            t.line(2, format!("elements = {{ {} }}", elements.join(", ")));
        }
        t.line(1, "}");
    }
    t.line(1, "chain output {");
    t.line(2, "type filter hook output priority filter; policy drop;");
    t.line(2, "oifname \"lo\" accept");
    t.line(2, format!("oifname \"{tun}\" accept"));
    t.line(
        2,
        format!("meta mark {fwmark:#x} ip daddr . udp dport @{GATEWAYS4} accept"),
    );
    t.line(
        2,
        format!("meta mark {fwmark:#x} ip6 daddr . udp dport @{GATEWAYS6} accept"),
    );
    let ports = relay_ports.map(|(first, last)| {
        if first == last {
            first.to_string()
        } else {
            format!("{first}-{last}")
        }
    });
    if let Some(ports) = &ports {
        t.line(2, format!("meta mark {fwmark:#x} udp sport {ports} accept"));
    }
    t.line(2, "udp sport 68 udp dport 67 accept");
    t.line(2, "udp sport 546 udp dport 547 accept");
    t.line(2, ND_ACCEPT);
    t.line(1, "}");
    t.line(1, "chain input {");
    t.line(2, "type filter hook input priority filter; policy drop;");
    t.line(2, "iifname \"lo\" accept");
    t.line(2, format!("iifname \"{tun}\" accept"));
    t.line(2, "ct state established,related accept");
    if let Some(ports) = &ports {
        t.line(2, format!("udp dport {ports} accept"));
    }
    t.line(2, "udp sport 67 udp dport 68 accept");
    t.line(2, "udp sport 547 udp dport 546 accept");
    t.line(2, ND_ACCEPT);
    t.line(1, "}");
    t.line(1, "chain forward {");
    t.line(2, "type filter hook forward priority filter; policy drop;");
    t.line(2, format!("iifname \"{tun}\" accept"));
    t.line(2, format!("oifname \"{tun}\" accept"));
    t.line(1, "}");
    t.line(1, "chain preraw {");
    t.line(
        2,
        "type filter hook prerouting priority raw; policy accept;",
    );
    for net in addrs {
        let proto = if net.addr().is_ipv6() { "ip6" } else { "ip" };
        t.line(
            2,
            format!(
                "iifname != \"{tun}\" {proto} daddr {} fib saddr type != local drop",
                net.addr()
            ),
        );
    }
    t.line(1, "}");
    t.line(1, "chain premangle {");
    t.line(
        2,
        "type filter hook prerouting priority mangle; policy accept;",
    );
    t.line(2, "meta l4proto udp meta mark set ct mark");
    t.line(1, "}");
    t.line(1, "chain postmangle {");
    t.line(
        2,
        "type filter hook postrouting priority mangle; policy accept;",
    );
    t.line(
        2,
        format!("meta l4proto udp meta mark {fwmark:#x} ct mark set meta mark"),
    );
    t.line(1, "}");
    t.line(0, "}");
    t.0
}

/// One transaction that replaces the contents of both gateway sets.
pub(super) fn gateway_update(gateways: &[SocketAddr]) -> String {
    let mut t = Text::new(String::new());
    for (name, v6) in [(GATEWAYS4, false), (GATEWAYS6, true)] {
        t.line(0, format!("flush set inet {CLIENT_TABLE} {name}"));
        let elements = gateway_elements(gateways, v6);
        if !elements.is_empty() {
            t.line(
                0,
                format!(
                    "add element inet {CLIENT_TABLE} {name} {{ {} }}",
                    elements.join(", ")
                ),
            );
        }
    }
    t.0
}

/// What the exit's ruleset needs to know.
pub(super) struct ExitRules<'a> {
    pub tun: &'a str,
    pub pool4: Ipv4Net,
    pub pool6: Ipv6Net,
    pub dns: &'a [IpAddr],
    pub upstream4: Option<Ipv4Addr>,
    pub upstream6: Option<Ipv6Addr>,
}

/// The exit's forwarding filter, NAT and MSS clamping (see the module documentation),
/// replacing any previous `inet anonnet-exit` table in the same transaction.
pub(super) fn exit_ruleset(r: &ExitRules<'_>) -> String {
    let tun = r.tun;
    let mut t = Text::new(delete_table(EXIT_TABLE));
    t.line(0, format!("table inet {EXIT_TABLE} {{"));
    t.line(1, "chain forward {");
    t.line(
        2,
        "type filter hook forward priority filter; policy accept;",
    );
    for dir in ["iifname", "oifname"] {
        t.line(
            2,
            format!("{dir} \"{tun}\" tcp flags syn tcp option maxseg size set rt mtu"),
        );
    }
    t.line(2, format!("iifname \"{tun}\" oifname \"{tun}\" drop"));
    t.line(2, format!("iifname \"{tun}\" accept"));
    t.line(
        2,
        format!("oifname \"{tun}\" ct state established,related accept"),
    );
    t.line(2, format!("oifname \"{tun}\" drop"));
    t.line(1, "}");

    t.line(1, "chain input {");
    t.line(2, "type filter hook input priority filter; policy accept;");
    t.line(
        2,
        format!("iifname \"{tun}\" ct status dnat meta l4proto {{ tcp, udp }} th dport 53 accept"),
    );
    t.line(
        2,
        format!("iifname \"{tun}\" reject with icmpx admin-prohibited"),
    );
    t.line(1, "}");

    t.line(1, "chain dstnat {");
    t.line(
        2,
        "type nat hook prerouting priority dstnat; policy accept;",
    );
    let families = [
        ("ip", false, r.upstream4.map(IpAddr::V4)),
        ("ip6", true, r.upstream6.map(IpAddr::V6)),
    ];
    for (proto, v6, upstream) in families {
        let dns: Vec<String> = r
            .dns
            .iter()
            .filter(|a| a.is_ipv6() == v6)
            .map(IpAddr::to_string)
            .collect();
        let Some(upstream) = upstream else { continue };
        if dns.is_empty() {
            continue;
        }
        for l4 in ["udp", "tcp"] {
            t.line(
                2,
                format!(
                    "iifname \"{tun}\" {proto} daddr {{ {} }} {l4} dport 53 dnat {proto} to {upstream}",
                    dns.join(", ")
                ),
            );
        }
    }
    t.line(1, "}");

    t.line(1, "chain srcnat {");
    t.line(
        2,
        "type nat hook postrouting priority srcnat; policy accept;",
    );
    t.line(
        2,
        format!("ip saddr {} oifname != \"{tun}\" masquerade", r.pool4),
    );
    t.line(
        2,
        format!("ip6 saddr {} oifname != \"{tun}\" masquerade", r.pool6),
    );
    t.line(1, "}");
    t.line(0, "}");
    t.0
}

/// The nftables command.
const NFT: &str = "nft";

/// Runs `program` with `args`, feeding it `stdin`, and awaits its output. `Ok(None)`
/// if the program is not installed.
async fn run(program: &str, args: &[&str], stdin: &str) -> Result<Option<Output>> {
    let mut child = match Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot run {program}")),
    };
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .await
            .with_context(|| format!("cannot pass the ruleset to {program}"))?;
    }
    let output = child
        .wait_with_output()
        .await
        .with_context(|| format!("cannot run {program}"))?;
    Ok(Some(output))
}

/// Applies `ruleset` as one transaction: all of it or, on error, none of it.
pub(super) async fn apply(ruleset: &str, what: &str) -> Result<()> {
    let Some(output) = run(NFT, &["-f", "-"], ruleset).await? else {
        bail!("cannot install the {what}: the `nft` command was not found; install the nftables package");
    };
    if !output.status.success() {
        bail!(
            "nft rejected the {what} ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Whether the `nft` command can be run.
pub(super) async fn installed() -> bool {
    matches!(run(NFT, &["--version"], "").await, Ok(Some(o)) if o.status.success())
}

/// Whether table `inet <table>` exists; `false` when nft is not installed.
pub(super) async fn table_exists(table: &str) -> Result<bool> {
    let output = run(NFT, &["list", "table", "inet", table], "").await?;
    Ok(output.is_some_and(|o| o.status.success()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While a ruleset is being applied, the runtime's one thread runs other tasks:
    /// a timer ticks every 20 ms through a 400 ms child.
    #[tokio::test(flavor = "current_thread")]
    async fn a_running_nft_leaves_the_runtime_free() {
        use std::sync::atomic::{AtomicU32, Ordering};
        use std::sync::Arc;
        let ticks = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&ticks);
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        let out = run("sh", &["-c", "cat; sleep 0.4"], "table inet x {\n}\n")
            .await
            .expect("sh runs")
            .expect("sh is installed");
        let n = ticks.load(Ordering::Relaxed);
        ticker.abort();
        assert_eq!(
            out.stdout, b"table inet x {\n}\n",
            "the ruleset reached stdin"
        );
        assert!(n >= 10, "only {n} ticks of 20 ms during a 400 ms child");
        assert!(run("/nonexistent/nft", &[], "")
            .await
            .expect("not found")
            .is_none());
    }

    #[test]
    fn client_ruleset_snapshot() {
        let addrs: Vec<IpNet> = vec![
            "100.64.0.2/32".parse().expect("v4 net"),
            "fd00:64::2/128".parse().expect("v6 net"),
        ];
        let gateways: Vec<SocketAddr> = vec![
            "198.18.0.9:4500".parse().expect("v4 gateway"),
            "198.18.0.1:4500".parse().expect("v4 gateway"),
            "198.18.0.1:4500".parse().expect("v4 gateway"),
            "[2001:db8::1]:4501".parse().expect("v6 gateway"),
        ];
        let expected = "\
table inet anonnet {
}
delete table inet anonnet
table inet anonnet {
\tset gateways4 {
\t\ttype ipv4_addr . inet_service
\t\telements = { 198.18.0.1 . 4500, 198.18.0.9 . 4500 }
\t}
\tset gateways6 {
\t\ttype ipv6_addr . inet_service
\t\telements = { 2001:db8::1 . 4501 }
\t}
\tchain output {
\t\ttype filter hook output priority filter; policy drop;
\t\toifname \"lo\" accept
\t\toifname \"anon0\" accept
\t\tmeta mark 0xca6c ip daddr . udp dport @gateways4 accept
\t\tmeta mark 0xca6c ip6 daddr . udp dport @gateways6 accept
\t\tudp sport 68 udp dport 67 accept
\t\tudp sport 546 udp dport 547 accept
\t\ticmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy drop;
\t\tiifname \"lo\" accept
\t\tiifname \"anon0\" accept
\t\tct state established,related accept
\t\tudp sport 67 udp dport 68 accept
\t\tudp sport 547 udp dport 546 accept
\t\ticmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255 accept
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy drop;
\t\tiifname \"anon0\" accept
\t\toifname \"anon0\" accept
\t}
\tchain preraw {
\t\ttype filter hook prerouting priority raw; policy accept;
\t\tiifname != \"anon0\" ip daddr 100.64.0.2 fib saddr type != local drop
\t\tiifname != \"anon0\" ip6 daddr fd00:64::2 fib saddr type != local drop
\t}
\tchain premangle {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tmeta l4proto udp meta mark set ct mark
\t}
\tchain postmangle {
\t\ttype filter hook postrouting priority mangle; policy accept;
\t\tmeta l4proto udp meta mark 0xca6c ct mark set meta mark
\t}
}
";
        assert_eq!(
            client_ruleset("anon0", 0xca6c, &addrs, &gateways, None),
            expected
        );
    }

    #[test]
    fn mixed_mode_lets_marked_relay_traffic_reach_any_gateway() {
        let s = client_ruleset("anon0", 0xca6c, &[], &[], Some((9000, 9003)));
        let rule = "\t\tmeta mark 0xca6c udp sport 9000-9003 accept\n";
        assert!(s.contains(rule), "{s}");
        assert!(
            s.find(rule) < s.find("\t\tudp sport 68 udp dport 67 accept"),
            "inside the output chain"
        );
        let input = &s[s.find("\tchain input {").expect("input chain")..];
        let input = &input[..input.find("\t}\n").expect("end of the input chain")];
        assert!(
            input.contains("\t\tudp dport 9000-9003 accept\n"),
            "other gateways reach the relay port: {s}"
        );
        let one = client_ruleset("anon0", 1, &[], &[], Some((9000, 9000)));
        assert!(one.contains("\t\tmeta mark 0x1 udp sport 9000 accept\n"));
        assert!(!client_ruleset("anon0", 1, &[], &[], None).contains("sport 9000"));
    }

    #[test]
    fn client_ruleset_without_gateways_declares_empty_sets() {
        let s = client_ruleset("anon0", 1, &[], &[], None);
        assert!(s.contains("\tset gateways4 {\n\t\ttype ipv4_addr . inet_service\n\t}\n"));
        assert!(s.contains("\tset gateways6 {\n\t\ttype ipv6_addr . inet_service\n\t}\n"));
        assert!(!s.contains("elements"));
    }

    #[test]
    fn gateway_update_flushes_both_sets_in_one_transaction() {
        let gateways: Vec<SocketAddr> = vec!["198.18.0.1:4500".parse().expect("gateway")];
        assert_eq!(
            gateway_update(&gateways),
            "flush set inet anonnet gateways4\n\
             add element inet anonnet gateways4 { 198.18.0.1 . 4500 }\n\
             flush set inet anonnet gateways6\n"
        );
    }

    #[test]
    fn exit_ruleset_snapshot() {
        let dns: Vec<IpAddr> = vec![
            "100.64.0.53".parse().expect("v4"),
            "fd00:64::53".parse().expect("v6"),
        ];
        let rules = ExitRules {
            tun: "anonexit0",
            pool4: "100.64.1.0/24".parse().expect("pool4"),
            pool6: "fd00:64:1::/64".parse().expect("pool6"),
            dns: &dns,
            upstream4: Some("198.18.0.53".parse().expect("upstream4")),
            upstream6: None,
        };
        let expected = "\
table inet anonnet-exit {
}
delete table inet anonnet-exit
table inet anonnet-exit {
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname \"anonexit0\" tcp flags syn tcp option maxseg size set rt mtu
\t\toifname \"anonexit0\" tcp flags syn tcp option maxseg size set rt mtu
\t\tiifname \"anonexit0\" oifname \"anonexit0\" drop
\t\tiifname \"anonexit0\" accept
\t\toifname \"anonexit0\" ct state established,related accept
\t\toifname \"anonexit0\" drop
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tiifname \"anonexit0\" ct status dnat meta l4proto { tcp, udp } th dport 53 accept
\t\tiifname \"anonexit0\" reject with icmpx admin-prohibited
\t}
\tchain dstnat {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tiifname \"anonexit0\" ip daddr { 100.64.0.53 } udp dport 53 dnat ip to 198.18.0.53
\t\tiifname \"anonexit0\" ip daddr { 100.64.0.53 } tcp dport 53 dnat ip to 198.18.0.53
\t}
\tchain srcnat {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tip saddr 100.64.1.0/24 oifname != \"anonexit0\" masquerade
\t\tip6 saddr fd00:64:1::/64 oifname != \"anonexit0\" masquerade
\t}
}
";
        assert_eq!(exit_ruleset(&rules), expected);
    }

    #[test]
    fn exit_ruleset_serves_ipv6_dns_only_with_an_ipv6_upstream() {
        let dns: Vec<IpAddr> = vec!["fd00:64::53".parse().expect("v6")];
        let mut rules = ExitRules {
            tun: "x0",
            pool4: "100.64.1.0/24".parse().expect("pool4"),
            pool6: "fd00:64:1::/64".parse().expect("pool6"),
            dns: &dns,
            upstream4: Some("198.18.0.53".parse().expect("upstream4")),
            upstream6: None,
        };
        assert!(!exit_ruleset(&rules).contains("dnat ip"));
        rules.upstream6 = Some("2001:db8::53".parse().expect("upstream6"));
        let s = exit_ruleset(&rules);
        assert!(s.contains(
            "iifname \"x0\" ip6 daddr { fd00:64::53 } udp dport 53 dnat ip6 to 2001:db8::53\n"
        ));
        assert!(!s.contains("dnat ip to"));
    }
}
