// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::proto::ports::{PortSummary, MAX_SUMMARY_LEN};
use proptest::prelude::*;

fn rule(text: &str) -> Rule {
    text.parse().unwrap()
}

fn summary(s: &str) -> PortSummary {
    s.parse().unwrap()
}

fn err(text: &str) -> String {
    text.parse::<Rule>().unwrap_err().to_string()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn ipv6(text: &str) -> Ipv6Addr {
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
fn ipv6_forms_carrying_ipv4_are_checked_as_ipv4() {
    let exit = policy(&["reject 198.51.100.1:*"], &["198.18.4.2"]);
    for dst in [
        // NAT64 (RFC 6052) to a private, a rejected and an own address.
        "64:ff9b::10.0.0.1",
        "64:ff9b::198.51.100.1",
        "64:ff9b::198.18.4.2",
        // 6to4 (RFC 3056): 2002:AABB:CCDD:: carries AA.BB.CC.DD.
        "2002:0a00:0001::1",
        "2002:c633:6401:1::",
        "2002:7f00:0001::",
        // Teredo (RFC 4380): the client's address, inverted, in the last 32 bits.
        "2001:0:4136:e378:8000:63bf:f5ff:fffe",
        // IPv4-compatible, local-use NAT64, site-local.
        "::10.0.0.1",
        "::198.18.0.1",
        "64:ff9b:1::a00:1",
        "fec0::1",
    ] {
        assert!(!exit.allows(ip(dst), Some(80)), "{dst}");
    }
    for dst in [
        "64:ff9b::198.18.0.1",
        "2002:c612:0001::1",
        "2001:0:4136:e378:8000:63bf:39ed:fffe",
        "2001:db8::1",
    ] {
        assert!(exit.allows(ip(dst), Some(80)), "{dst}");
    }
    assert_eq!(
        carried_v4(ipv6("64:ff9b::198.18.0.1")),
        Some("198.18.0.1".parse().unwrap())
    );
    assert_eq!(
        carried_v4(ipv6("2002:c612:0001::1")),
        Some("198.18.0.1".parse().unwrap())
    );
    assert_eq!(
        carried_v4(ipv6("2001:0:4136:e378:8000:63bf:39ed:fffe")),
        Some("198.18.0.1".parse().unwrap())
    );
    assert_eq!(carried_v4(ipv6("2001:db8::c612:1")), None);
    assert_eq!(carried_v4(ipv6("64:ff9b:1::c612:1")), None);
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
        (0u16..2, any::<u16>()).prop_map(|(c, d)| Ipv6Addr::new(0x2001, 0xdb8, c, 0, 0, 0, 0, d)),
        any::<u16>().prop_map(|d| Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, d)),
        arb_v4().prop_map(|a| a.to_ipv6_mapped()),
        (0u16..3).prop_map(|d| Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, d)),
        arb_v4().prop_map(|a| Ipv6Addr::from((0x64_ff9b_u128 << 96) | u128::from(u32::from(a)))),
        arb_v4()
            .prop_map(|a| Ipv6Addr::from((0x2002_u128 << 112) | (u128::from(u32::from(a)) << 80))),
        arb_v4().prop_map(|a| Ipv6Addr::from((0x2001_0000_u128 << 96) | u128::from(!u32::from(a)))),
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
        (arb_v4(), 0u8..=32)
            .prop_map(|(a, bits)| { Target::Net(IpNet::V4(Ipv4Net::new_assert(a, bits).trunc())) }),
        (arb_v6(), 0u8..=128)
            .prop_map(|(a, bits)| { Target::Net(IpNet::V6(Ipv6Net::new_assert(a, bits).trunc())) }),
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
    let nets: [(&str, u8); 16] = [
        ("0.0.0.0", 8),
        ("10.0.0.0", 8),
        ("100.64.0.0", 10),
        ("127.0.0.0", 8),
        ("169.254.0.0", 16),
        ("172.16.0.0", 12),
        ("192.168.0.0", 16),
        ("224.0.0.0", 4),
        ("240.0.0.0", 4),
        ("::", 96),
        ("64:ff9b:1::", 48),
        ("fc00::", 7),
        ("fe80::", 10),
        ("fec0::", 10),
        ("ff00::", 8),
        ("::ffff:0:0", 96),
    ];
    nets.iter().any(|&(a, bits)| naive_in(ip(a), bits, dst))
        || own.iter().any(|&a| naive_normalise(a) == dst)
}

fn naive_matches(rule: &Rule, dst: IpAddr, port: Option<u16>, own: &[IpAddr]) -> bool {
    let all_ports = rule.ports.start == 1 && rule.ports.end == 65535;
    let port_ok = all_ports || port.is_some_and(|p| rule.ports.start <= p && p <= rule.ports.end);
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
    let carried = match dst {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            match s {
                [0x64, 0xff9b, 0, 0, 0, 0, ..] => Some(Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                )),
                [0x2002, a, b, ..] => Some(Ipv4Addr::new(
                    (a >> 8) as u8,
                    a as u8,
                    (b >> 8) as u8,
                    b as u8,
                )),
                [0x2001, 0, ..] => Some(Ipv4Addr::new(
                    !(s[6] >> 8) as u8,
                    !s[6] as u8,
                    !(s[7] >> 8) as u8,
                    !s[7] as u8,
                )),
                _ => None,
            }
        }
        IpAddr::V4(_) => None,
    };
    naive_decides(user, own, dst, port)
        && carried.is_none_or(|v4| naive_decides(user, own, IpAddr::V4(v4), port))
}

fn naive_decides(user: &[Rule], own: &[IpAddr], dst: IpAddr, port: Option<u16>) -> bool {
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

/// Every summary the exit policy writes parses, prints back the same, and (for
/// policies without address-specific rules) agrees with the policy on a public
/// address.
#[test]
fn policy_summaries_parse() {
    let public = IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34));
    let cases: [&[&str]; 6] = [
        &[],
        &["accept *:80", "accept *:443", "reject *:*"],
        &["accept *:20-23", "accept *:80-81", "reject *:*"],
        &["reject *:*"],
        &["accept *:*"],
        &["reject *:1-1000", "accept *:999-1001", "reject *:*"],
    ];
    for user in cases {
        let user: Vec<String> = user.iter().map(|s| s.to_string()).collect();
        let policy = ExitPolicy::new(&user, &[]).unwrap();
        let text = policy.summary();
        let parsed = summary(&text);
        assert_eq!(parsed.to_string(), text);
        for port in 1..=2000 {
            assert_eq!(
                parsed.accepts(port),
                policy.allows(public, Some(port)),
                "{user:?} port {port}"
            );
        }
    }
    let user: Vec<String> = (1..=2000).map(|n| format!("reject *:{}", 2 * n)).collect();
    let text = ExitPolicy::new(&user, &[]).unwrap().summary();
    assert_eq!(summary(&text).to_string(), text);
}
