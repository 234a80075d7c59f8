//! `anonnet check`: the leak self-test a user runs while `anonnet up` is connected.
//!
//! It asks the `up` of this network namespace for its status (control socket), then
//! looks at what the kernel does with this host's traffic. One line per check:
//!
//! - `tunnel`: the daemon answers and has a circuit up;
//! - `kill-switch`: the kill switch is in the kernel, and a datagram sent straight out
//!   of each other interface (bound to it, `SO_BINDTODEVICE`) is refused. The
//!   datagram goes to a documentation address ([`DIRECT_PROBE4`], [`DIRECT_PROBE6`]),
//!   never to the test server: were the kill switch broken, it would carry the host's
//!   own address to nobody;
//! - `dns`: every nameserver of `/etc/resolv.conf` is reached through the tunnel (the
//!   route the kernel picks has a tunnel source address), and the test server's name
//!   resolved;
//! - `exit-address`: an HTTP request to the test server leaves from a tunnel address,
//!   and the address the server saw is not one of this host's;
//! - `ipv6`: IPv6 to the internet goes through the tunnel, or has no route at all;
//! - `mtu`: an ICMP echo as large as the tunnel's MTU, with DF, is answered.
//!
//! The test server answers an HTTP GET with the address it sees, as plain text (as
//! `http://icanhazip.com/` does; in the netns testbed, the "internet" host).

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::runtime::client::NO_UP;
use crate::runtime::control::{self, CLIENT_SOCKET};
use crate::sys;

/// The test server when none is given.
pub const DEFAULT_SERVER: &str = "http://icanhazip.com/";
/// Where the kill-switch probe is sent (TEST-NET-1, RFC 5737: routed nowhere).
pub const DIRECT_PROBE4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 9);
/// The same for IPv6 (the documentation prefix, RFC 3849).
pub const DIRECT_PROBE6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    9,
);
/// Whose route the IPv6 check looks up when the test server has no IPv6 address (a
/// global unicast address; looking up a route sends nothing).
const IPV6_ROUTE_PROBE: Ipv6Addr = Ipv6Addr::new(0x2606, 0x4700, 0x4700, 0, 0, 0, 0, 0x1111);
/// How long the HTTP request may take, connecting and answering each.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// The test server's answer is a line; more than this is not such a server.
const MAX_ANSWER: usize = 16 * 1024;
/// How long the MTU ping waits for its answer.
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// The ICMP echo identifier of the MTU ping ("an").
const PING_ID: u16 = 0x616e;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The check's name.
    pub check: &'static str,
    /// Whether it passed.
    pub pass: bool,
    /// What it saw, in words.
    pub detail: String,
}

fn outcome(check: &'static str, pass: bool, detail: impl Into<String>) -> Outcome {
    Outcome {
        check,
        pass,
        detail: detail.into(),
    }
}

/// The test server: an HTTP URL answering with the caller's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    host: String,
    port: u16,
    path: String,
}

impl Server {
    /// Parses `--server`: `http://HOST[:PORT][/PATH]`.
    pub fn parse(url: &str) -> Result<Self> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("--server {url:?} is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => bail!(
                "--server {url:?}: the scheme {other:?} is not supported; give an http:// URL"
            ),
            None => bail!("--server {url:?}: give an http:// URL, e.g. {DEFAULT_SERVER}"),
        }
        let host = uri
            .host()
            .with_context(|| format!("--server {url:?} names no host"))?;
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: uri.port_u16().unwrap_or(80),
            path: uri
                .path_and_query()
                .map_or("/", http::uri::PathAndQuery::as_str)
                .to_owned(),
        })
    }

    /// The host, when it is an address rather than a name.
    fn literal(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

/// What the daemon's status says of the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tunnel {
    pid: Option<u64>,
    state: String,
    tun: String,
    addrs: Vec<IpAddr>,
    mtu: u32,
    /// The exits of the circuits that are up.
    exits: Vec<String>,
}

impl Tunnel {
    fn from_status(v: &serde_json::Value) -> Result<Self> {
        let c = &v["client"];
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let addrs = c["addresses"]
            .as_array()
            .context("the daemon's status lists no addresses")?
            .iter()
            .filter_map(|a| a.as_str()?.parse::<ipnet::IpNet>().ok())
            .map(|n| n.addr())
            .collect();
        let mut exits: Vec<String> = c["circuits"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|circ| circ["up"].as_bool() == Some(true))
            .flat_map(|circ| circ["legs"].as_array().into_iter().flatten())
            .filter_map(|leg| leg["hops"].as_array()?.last().map(|h| text(&h["addr"])))
            .collect();
        exits.sort();
        exits.dedup();
        Ok(Self {
            pid: v["pid"].as_u64(),
            state: text(&c["state"]),
            tun: text(&c["tun"]),
            addrs,
            mtu: c["mtu"]
                .as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .context("the daemon's status has no MTU")?,
            exits,
        })
    }

    fn is_ours(&self, ip: IpAddr) -> bool {
        self.addrs.contains(&ip.to_canonical())
    }

    fn v4(&self) -> Option<Ipv4Addr> {
        self.addrs.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
    }
}

fn judge_tunnel(t: &Tunnel) -> Outcome {
    let pid = t.pid.map_or_else(String::new, |p| format!(" (pid {p})"));
    if t.state == "up" && !t.exits.is_empty() {
        outcome(
            "tunnel",
            true,
            format!(
                "`anonnet up`{pid} is up on {}, through exit {}",
                t.tun,
                t.exits.join(", ")
            ),
        )
    } else {
        outcome(
            "tunnel",
            false,
            format!(
                "`anonnet up`{pid} is {} with no circuit up: traffic is blocked",
                t.state
            ),
        )
    }
}

/// The kill switch: `installed` (the nftables table is in the kernel) and, per
/// interface and probe address, what sending a datagram straight out of it did.
fn judge_kill_switch(installed: bool, probes: &[(String, SocketAddr, io::Result<()>)]) -> Outcome {
    let left: Vec<String> = probes
        .iter()
        .filter(|(_, _, r)| r.is_ok())
        .map(|(iface, to, _)| format!("{to} out of {iface}"))
        .collect();
    if !left.is_empty() {
        let table = if installed {
            "the kill switch is in the kernel, but"
        } else {
            "the kill switch (nftables table inet anonnet) is not in the kernel:"
        };
        return outcome(
            "kill-switch",
            false,
            format!(
                "{table} a datagram left directly, not through the tunnel: {}",
                left.join(", ")
            ),
        );
    }
    if !installed {
        return outcome(
            "kill-switch",
            false,
            "the kill switch (nftables table inet anonnet) is not in the kernel",
        );
    }
    let refused: Vec<String> = probes
        .iter()
        .filter_map(|(iface, to, r)| {
            r.as_ref()
                .err()
                .map(|e| format!("{to} out of {iface}: {}", short_error(e)))
        })
        .collect();
    let detail = if refused.is_empty() {
        "armed; no interface besides the tunnel to send through".to_owned()
    } else {
        format!("armed; direct datagrams refused ({})", refused.join("; "))
    };
    outcome("kill-switch", true, detail)
}

/// The DNS check: each nameserver with the source address of its route (or why
/// there is none), and the test server's name resolved (`None` when it is an
/// address).
fn judge_dns(
    t: &Tunnel,
    servers: &[(IpAddr, io::Result<IpAddr>)],
    resolved: Option<&Result<Vec<IpAddr>, String>>,
) -> Outcome {
    if servers.is_empty() {
        return outcome("dns", false, "/etc/resolv.conf names no nameserver");
    }
    let outside: Vec<String> = servers
        .iter()
        .filter_map(|(ns, src)| match src {
            Ok(s) if t.is_ours(*s) => None,
            Ok(s) if s.is_loopback() || ns.is_loopback() => Some(format!(
                "{ns} is a resolver on this host: where its queries go cannot be seen from here"
            )),
            Ok(s) => Some(format!("{ns} is reached from {s}, not through {}", t.tun)),
            Err(e) => Some(format!("{ns} has no route ({})", short_error(e))),
        })
        .collect();
    if !outside.is_empty() {
        return outcome("dns", false, outside.join("; "));
    }
    let names: Vec<String> = servers.iter().map(|(ns, _)| ns.to_string()).collect();
    match resolved {
        Some(Err(e)) => outcome(
            "dns",
            false,
            format!(
                "nameservers {} are reached through {}, but resolving failed: {e}",
                names.join(" "),
                t.tun
            ),
        ),
        Some(Ok(addrs)) => outcome(
            "dns",
            true,
            format!(
                "nameservers {} are reached through {}; the test server's name resolved to {}",
                names.join(" "),
                t.tun,
                addrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ),
        None => outcome(
            "dns",
            true,
            format!(
                "nameservers {} are reached through {}",
                names.join(" "),
                t.tun
            ),
        ),
    }
}

/// The exit address: the HTTP request's local address and what the server saw.
fn judge_exit(t: &Tunnel, own: &[IpAddr], asked: &Result<(SocketAddr, IpAddr), String>) -> Outcome {
    let (local, seen) = match asked {
        Ok(x) => *x,
        Err(e) => return outcome("exit-address", false, e.clone()),
    };
    let seen = seen.to_canonical();
    if !t.is_ours(local.ip()) {
        return outcome(
            "exit-address",
            false,
            format!(
                "the request left from {}, not through {}; the server saw {seen}",
                local.ip(),
                t.tun
            ),
        );
    }
    if own.contains(&seen) {
        return outcome(
            "exit-address",
            false,
            format!("the server saw {seen}, an address of this host"),
        );
    }
    let which = t
        .exits
        .iter()
        .find(|e| {
            e.parse::<SocketAddr>()
                .is_ok_and(|a| a.ip().to_canonical() == seen)
        })
        .map_or_else(
            || " (not this host's; the exit's NAT address)".to_owned(),
            |e| format!(" (the exit, {e})"),
        );
    outcome(
        "exit-address",
        true,
        format!("the server saw {seen}{which}"),
    )
}

/// IPv6: the source address of the route to `probe`, or why there is none.
fn judge_ipv6(t: &Tunnel, probe: IpAddr, route: &io::Result<IpAddr>) -> Outcome {
    match route {
        Ok(src) if t.is_ours(*src) => outcome(
            "ipv6",
            true,
            format!("IPv6 to {probe} goes through {} (from {src})", t.tun),
        ),
        Ok(src) => outcome(
            "ipv6",
            false,
            format!(
                "IPv6 to {probe} would leave from {src}, not through {}",
                t.tun
            ),
        ),
        Err(e) => outcome(
            "ipv6",
            true,
            format!(
                "no IPv6 route to {probe} ({}): no IPv6 can leak",
                short_error(e)
            ),
        ),
    }
}

fn judge_mtu(t: &Tunnel, target: Option<Ipv4Addr>, ping: &Result<Duration, String>) -> Outcome {
    let Some(target) = target else {
        return outcome(
            "mtu",
            false,
            "the test server has no IPv4 address to ping with a full-size packet",
        );
    };
    match ping {
        Ok(rtt) => outcome(
            "mtu",
            true,
            format!(
                "a {}-byte ping to {target} with DF came back in {:.1} ms",
                t.mtu,
                rtt.as_secs_f64() * 1e3
            ),
        ),
        Err(e) => outcome(
            "mtu",
            false,
            format!("a {}-byte ping to {target} with DF: {e}", t.mtu),
        ),
    }
}

/// An I/O error's text without Rust's " (os error N)" tail.
fn short_error(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s.get(..i).unwrap_or(&s).to_owned(),
        None => s,
    }
}

/// The source address the kernel picks for traffic to `dst` (connecting a UDP socket
/// looks the route up; nothing is sent).
fn route_source(dst: IpAddr) -> io::Result<IpAddr> {
    let any: IpAddr = if dst.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    let s = UdpSocket::bind((any, 0))?;
    s.connect((dst, 53))?;
    Ok(s.local_addr()?.ip())
}

/// Sends one datagram to `to` straight out of `iface`, past the routing tables.
fn send_direct(iface: &str, to: SocketAddr) -> io::Result<()> {
    let s = Socket::new(Domain::for_address(to), Type::DGRAM, Some(Protocol::UDP))?;
    s.bind_device(Some(iface.as_bytes()))?;
    s.send_to(
        b"anonnet check: a kill switch drops this",
        &SockAddr::from(to),
    )
    .map(drop)
}

/// The interfaces other than loopback and the tunnel.
fn other_interfaces(tun: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = nix::net::if_::if_nameindex()
        .context("cannot list the network interfaces")?
        .iter()
        .filter_map(|i| i.name().to_str().ok().map(str::to_owned))
        .filter(|n| n != "lo" && n != tun)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Asks the test server at `addr` which address it sees: the request's local
/// address and the answer.
fn whoami(server: &Server, addr: SocketAddr) -> Result<(SocketAddr, IpAddr), String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{what} {addr}: {e}");
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .map_err(|e| fail("cannot connect to the test server at", &short_error(&e)))?;
    let local = s
        .local_addr()
        .map_err(|e| fail("no local address towards", &e))?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(HTTP_TIMEOUT)))
        .map_err(|e| fail("cannot set timeouts towards", &e))?;
    let host = match server.literal() {
        Some(IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => server.host.clone(),
    };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: anonnet-check\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
        server.path
    );
    s.write_all(request.as_bytes())
        .map_err(|e| fail("cannot send the request to", &short_error(&e)))?;
    let mut answer = Vec::new();
    s.take(u64::try_from(MAX_ANSWER).unwrap_or(u64::MAX))
        .read_to_end(&mut answer)
        .map_err(|e| fail("no answer from", &short_error(&e)))?;
    let seen = parse_answer(&answer).map_err(|e| fail("the test server at", &e))?;
    Ok((local, seen))
}

/// The address in a test server's HTTP answer.
fn parse_answer(answer: &[u8]) -> Result<IpAddr, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let body_at = match response.parse(answer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("sent an incomplete HTTP answer".into()),
        Err(e) => return Err(format!("sent no HTTP answer ({e})")),
    };
    if response.code != Some(200) {
        return Err(format!(
            "answered HTTP {} {}",
            response.code.unwrap_or(0),
            response.reason.unwrap_or("")
        ));
    }
    let body = String::from_utf8_lossy(answer.get(body_at..).unwrap_or_default());
    let text = body.trim();
    text.parse::<IpAddr>().map_err(|_| {
        format!(
            "answered {:?}, not an address",
            text.chars().take(60).collect::<String>()
        )
    })
}

/// An ICMP echo request of exactly `size` bytes from `src` to `dst`, with DF.
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, size: u32, seq: u16) -> Result<Vec<u8>, String> {
    let payload_len = usize::try_from(size)
        .ok()
        .and_then(|s| s.checked_sub(28))
        .ok_or_else(|| format!("MTU {size} is too small for a ping"))?;
    let payload = vec![0xa5; payload_len];
    let mut ip = etherparse::Ipv4Header::new(
        0,
        64,
        etherparse::IpNumber::ICMP,
        src.octets(),
        dst.octets(),
    )
    .map_err(|e| e.to_string())?;
    ip.dont_fragment = true;
    let builder =
        etherparse::PacketBuilder::ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
            .icmpv4_echo_request(PING_ID, seq);
    let mut out = Vec::with_capacity(builder.size(payload_len));
    builder
        .write(&mut out, &payload)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Whether `packet` (IPv4 with its header) is the echo reply to `seq` from `from`,
/// as large as the request: its size, if so.
fn echo_reply_size(packet: &[u8], from: Ipv4Addr, seq: u16) -> Option<usize> {
    let ip = etherparse::Ipv4Slice::from_slice(packet).ok()?;
    if ip.header().source_addr() != from {
        return None;
    }
    let icmp = etherparse::Icmpv4Slice::from_slice(ip.payload().payload).ok()?;
    match icmp.icmp_type() {
        etherparse::Icmpv4Type::EchoReply(e) if e.id == PING_ID && e.seq == seq => {
            Some(packet.len())
        }
        _ => None,
    }
}

/// Pings `dst` from the tunnel's `src` with a packet of `size` bytes and DF set: the
/// round trip, or why there was none.
fn ping_full_size(src: Ipv4Addr, dst: Ipv4Addr, size: u32) -> Result<Duration, String> {
    let seq = u16::try_from(std::process::id() & 0xffff).unwrap_or(1);
    let request = echo_request(src, dst, size, seq)?;
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
        .map_err(|e| format!("cannot open a raw ICMP socket: {}", short_error(&e)))?;
    s.set_header_included_v4(true)
        .map_err(|e| format!("cannot build the IP header: {}", short_error(&e)))?;
    let start = Instant::now();
    s.send_to(&request, &SockAddr::from(SocketAddr::new(dst.into(), 0)))
        .map_err(|e| format!("cannot send: {}", short_error(&e)))?;
    let mut reader = s;
    let mut buf = vec![0u8; 65_536];
    loop {
        let left = PING_TIMEOUT.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(format!(
                "no answer within {} s (packets this large are lost on the way)",
                PING_TIMEOUT.as_secs()
            ));
        }
        reader
            .set_read_timeout(Some(left))
            .map_err(|e| short_error(&e))?;
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(format!("cannot receive: {}", short_error(&e))),
        };
        match echo_reply_size(buf.get(..n).unwrap_or_default(), dst, seq) {
            Some(got) if got == request.len() => return Ok(start.elapsed()),
            Some(got) => return Err(format!("the answer had {got} bytes, not {}", request.len())),
            None => {}
        }
    }
}

/// Resolves the test server's name through the system resolver.
fn resolve(server: &Server) -> Result<Vec<IpAddr>, String> {
    let mut addrs: Vec<IpAddr> = (server.host.as_str(), server.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", server.host))?
        .map(|a| a.ip())
        .collect();
    addrs.sort_by_key(|a| (a.is_ipv6(), *a));
    addrs.dedup();
    if addrs.is_empty() {
        return Err(format!("{} has no address", server.host));
    }
    Ok(addrs)
}

/// Runs every check against the tunnel described by the daemon's `status`, whose
/// kill switch is `installed` in the kernel or not.
fn run_checks(
    status: &serde_json::Value,
    installed: bool,
    server: &Server,
) -> Result<Vec<Outcome>> {
    let t = Tunnel::from_status(status)?;
    let mut out = vec![judge_tunnel(&t)];

    let mut probes = Vec::new();
    for iface in other_interfaces(&t.tun)? {
        for to in [DIRECT_PROBE4, DIRECT_PROBE6] {
            let r = send_direct(&iface, to);
            // No route, or no such family on this interface: nothing to leak there.
            if r.as_ref()
                .err()
                .and_then(io::Error::raw_os_error)
                .is_some_and(is_no_route)
            {
                continue;
            }
            probes.push((iface.clone(), to, r));
        }
    }
    out.push(judge_kill_switch(installed, &probes));

    let resolved = match server.literal() {
        Some(ip) => Ok(vec![ip]),
        None => resolve(server),
    };
    let nameservers: Vec<(IpAddr, io::Result<IpAddr>)> = sys::resolv_conf_nameservers()?
        .into_iter()
        .map(|ns| (ns, route_source(ns)))
        .collect();
    out.push(judge_dns(
        &t,
        &nameservers,
        server.literal().is_none().then_some(&resolved),
    ));

    let target = resolved.as_ref().ok().and_then(|a| a.first().copied());
    let asked = match target {
        Some(ip) => whoami(server, SocketAddr::new(ip, server.port)),
        None => Err(format!(
            "cannot ask the test server: {}",
            resolved.as_ref().err().map_or("no address", String::as_str)
        )),
    };
    out.push(judge_exit(&t, &sys::own_addresses(), &asked));

    let probe6 = resolved
        .as_ref()
        .ok()
        .and_then(|a| a.iter().find(|a| a.is_ipv6()).copied())
        .unwrap_or(IpAddr::V6(IPV6_ROUTE_PROBE));
    out.push(judge_ipv6(&t, probe6, &route_source(probe6)));

    let target4 = resolved.as_ref().ok().and_then(|a| {
        a.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
    });
    let ping = match (t.v4(), target4) {
        (Some(src), Some(dst)) => ping_full_size(src, dst, t.mtu),
        (None, _) => Err("the tunnel has no IPv4 address".to_owned()),
        (_, None) => Err("no IPv4 address to ping".to_owned()),
    };
    out.push(judge_mtu(&t, target4, &ping));
    Ok(out)
}

/// Errors of a datagram sent out of an interface that mean it cannot go there at
/// all (no route, no address of that family), rather than that it was refused.
fn is_no_route(errno: i32) -> bool {
    use nix::errno::Errno;
    [
        Errno::ENETUNREACH,
        Errno::EHOSTUNREACH,
        Errno::EADDRNOTAVAIL,
        Errno::EAFNOSUPPORT,
        Errno::ENETDOWN,
    ]
    .iter()
    .any(|e| *e as i32 == errno)
}

/// The lines of `anonnet check`, and the summary line.
fn render(outcomes: &[Outcome]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for o in outcomes {
        let _ = writeln!(
            s,
            "{} {}: {}",
            if o.pass { "PASS" } else { "FAIL" },
            o.check,
            o.detail
        );
    }
    let failed = outcomes.iter().filter(|o| !o.pass).count();
    let _ = writeln!(
        s,
        "anonnet check: {} passed, {failed} failed",
        outcomes.len() - failed
    );
    s
}

/// `anonnet check [--server URL] [--json]`: exit status 0 when every check passed,
/// 1 when one failed.
pub async fn check_cmd(server: &str, json: bool) -> Result<ExitCode> {
    let server = Server::parse(server)?;
    let status = control::status_of(CLIENT_SOCKET, NO_UP).await?;
    let installed = sys::kill_switch_armed().await?;
    let outcomes = tokio::task::spawn_blocking(move || run_checks(&status, installed, &server))
        .await
        .context("the checks did not finish")??;
    let failed = outcomes.iter().filter(|o| !o.pass).count();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "checks": outcomes,
                "passed": outcomes.len() - failed,
                "failed": failed,
            }))?
        );
    } else {
        print!("{}", render(&outcomes));
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tunnel() -> Tunnel {
        Tunnel::from_status(&serde_json::json!({
            "pid": 7,
            "client": {
                "state": "up", "tun": "anon0", "mtu": 1280,
                "addresses": ["100.64.0.2/32", "fd00:64::2/128"], "dns": ["100.64.0.53"],
                "circuits": [
                    {"id": 1, "up": true, "legs": [{"hops": [
                        {"addr": "198.18.2.2:9000"}, {"addr": "198.18.4.2:9000"}]}]},
                    {"id": 3, "up": false, "legs": [{"hops": [{"addr": "198.18.9.9:9000"}]}]}],
            },
        }))
        .expect("a status")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn status_gives_addresses_and_the_exits_of_circuits_up() {
        let t = tunnel();
        assert_eq!(t.addrs, vec![ip("100.64.0.2"), ip("fd00:64::2")]);
        assert_eq!(t.exits, vec!["198.18.4.2:9000".to_owned()]);
        assert_eq!(t.v4(), Some(Ipv4Addr::new(100, 64, 0, 2)));
        assert!(judge_tunnel(&t).pass);
        let blocked = Tunnel {
            state: "blocked".into(),
            exits: Vec::new(),
            ..t
        };
        let o = judge_tunnel(&blocked);
        assert!(!o.pass && o.detail.contains("blocked"), "{o:?}");
    }

    #[test]
    fn server_urls() {
        let s = Server::parse("http://www.anonnet.test:8080/ip?x=1").expect("a URL");
        assert_eq!(
            (s.host.as_str(), s.port, s.path.as_str()),
            ("www.anonnet.test", 8080, "/ip?x=1")
        );
        assert_eq!(s.literal(), None);
        let s = Server::parse("http://[2001:db8:ff::1]").expect("a URL");
        assert_eq!((s.port, s.path.as_str()), (80, "/"));
        assert_eq!(s.literal(), Some(ip("2001:db8:ff::1")));
        for bad in [
            "https://icanhazip.com/",
            "icanhazip.com",
            "http://",
            "not a url",
        ] {
            let e = format!("{:#}", Server::parse(bad).expect_err(bad));
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn test_server_answers() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n198.18.4.2\n";
        assert_eq!(parse_answer(ok), Ok(ip("198.18.4.2")));
        let e = parse_answer(b"HTTP/1.1 404 Not Found\r\n\r\nnope").expect_err("404");
        assert!(e.contains("404"), "{e}");
        let e = parse_answer(b"HTTP/1.1 200 OK\r\n\r\n<html>").expect_err("html");
        assert!(e.contains("not an address"), "{e}");
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 200 OK\r\nContent-").is_err());
    }

    /// The MTU ping is exactly the MTU long, carries DF, and its echo reply (built
    /// here as the far end would) is recognised; other replies are not.
    #[test]
    fn full_size_ping() {
        let (src, dst) = (Ipv4Addr::new(100, 64, 0, 2), Ipv4Addr::new(198, 18, 0, 1));
        let req = echo_request(src, dst, 1280, 9).expect("a request");
        assert_eq!(req.len(), 1280);
        let sliced = etherparse::Ipv4Slice::from_slice(&req).expect("IPv4");
        assert!(sliced.header().dont_fragment());
        let payload = sliced
            .payload()
            .payload
            .get(8..)
            .expect("a payload")
            .to_vec();
        let reply = |from: Ipv4Addr, seq: u16| {
            let b = etherparse::PacketBuilder::ipv4(from.octets(), src.octets(), 60)
                .icmpv4_echo_reply(PING_ID, seq);
            let mut out = Vec::new();
            b.write(&mut out, &payload).expect("a reply");
            out
        };
        assert_eq!(echo_reply_size(&reply(dst, 9), dst, 9), Some(1280));
        assert_eq!(echo_reply_size(&reply(dst, 10), dst, 9), None);
        assert_eq!(echo_reply_size(&reply(src, 9), dst, 9), None);
        assert_eq!(echo_reply_size(&req, dst, 9), None);
        assert!(echo_request(src, dst, 20, 1).is_err());
    }

    fn refused() -> io::Result<()> {
        Err(io::Error::from_raw_os_error(1))
    }

    #[test]
    fn kill_switch() {
        let to = DIRECT_PROBE4;
        let o = judge_kill_switch(true, &[("eth0".into(), to, refused())]);
        assert!(o.pass, "{o:?}");
        assert!(
            o.detail
                .contains("192.0.2.1:9 out of eth0: Operation not permitted"),
            "{o:?}"
        );
        let o = judge_kill_switch(
            true,
            &[("eth0".into(), to, refused()), ("wlan0".into(), to, Ok(()))],
        );
        assert!(
            !o.pass && o.detail.contains("192.0.2.1:9 out of wlan0"),
            "{o:?}"
        );
        let o = judge_kill_switch(false, &[("eth0".into(), to, Ok(()))]);
        assert!(
            !o.pass && o.detail.contains("not in the kernel") && o.detail.contains("left directly"),
            "{o:?}"
        );
        let o = judge_kill_switch(false, &[("eth0".into(), to, refused())]);
        assert!(!o.pass, "{o:?}");
        assert!(judge_kill_switch(true, &[]).pass);
        assert!(is_no_route(nix::errno::Errno::ENETUNREACH as i32));
        assert!(!is_no_route(nix::errno::Errno::EPERM as i32));
    }

    #[test]
    fn dns() {
        let t = tunnel();
        let through = [(ip("100.64.0.53"), Ok(ip("100.64.0.2")))];
        assert!(judge_dns(&t, &through, None).pass);
        let resolved = Ok(vec![ip("198.18.0.1")]);
        assert!(judge_dns(&t, &through, Some(&resolved)).pass);
        let o = judge_dns(&t, &through, Some(&Err("cannot resolve x".into())));
        assert!(!o.pass && o.detail.contains("cannot resolve x"), "{o:?}");
        let stub = [(ip("127.0.0.53"), Ok(ip("127.0.0.1")))];
        let o = judge_dns(&t, &stub, None);
        assert!(
            !o.pass && o.detail.contains("resolver on this host"),
            "{o:?}"
        );
        let plain = [through[0].0, ip("192.168.1.1")]
            .into_iter()
            .zip([Ok(ip("100.64.0.2")), Ok(ip("192.168.1.20"))])
            .collect::<Vec<_>>();
        let o = judge_dns(&t, &plain, None);
        assert!(
            !o.pass
                && o.detail
                    .contains("192.168.1.1 is reached from 192.168.1.20"),
            "{o:?}"
        );
        assert!(!judge_dns(&t, &[], None).pass);
    }

    #[test]
    fn exit_address() {
        let t = tunnel();
        let own = [ip("198.18.1.2"), ip("100.64.0.2")];
        let via = |local: &str, seen: &str| -> Result<(SocketAddr, IpAddr), String> {
            Ok((SocketAddr::new(ip(local), 40000), ip(seen)))
        };
        let o = judge_exit(&t, &own, &via("100.64.0.2", "::ffff:198.18.4.2"));
        assert!(
            o.pass && o.detail.contains("(the exit, 198.18.4.2:9000)"),
            "{o:?}"
        );
        let o = judge_exit(&t, &own, &via("100.64.0.2", "203.0.113.7"));
        assert!(o.pass && o.detail.contains("NAT address"), "{o:?}");
        assert!(!judge_exit(&t, &own, &via("100.64.0.2", "198.18.1.2")).pass);
        assert!(!judge_exit(&t, &own, &via("198.18.1.2", "198.18.4.2")).pass);
        assert!(!judge_exit(&t, &own, &Err("cannot connect".into())).pass);
    }

    #[test]
    fn ipv6_and_mtu() {
        let t = tunnel();
        let probe = ip("2001:db8:ff::1");
        assert!(judge_ipv6(&t, probe, &Ok(ip("fd00:64::2"))).pass);
        assert!(!judge_ipv6(&t, probe, &Ok(ip("2001:db8:1::2"))).pass);
        assert!(judge_ipv6(&t, probe, &Err(io::Error::from_raw_os_error(101))).pass);
        let dst = Some(Ipv4Addr::new(198, 18, 0, 1));
        assert!(judge_mtu(&t, dst, &Ok(Duration::from_millis(2))).pass);
        assert!(!judge_mtu(&t, dst, &Err("no answer".into())).pass);
        assert!(!judge_mtu(&t, None, &Ok(Duration::ZERO)).pass);
    }

    #[test]
    fn lines_and_summary() {
        let text = render(&[
            outcome("tunnel", true, "up"),
            outcome("mtu", false, "no answer"),
        ]);
        assert_eq!(
            text,
            "PASS tunnel: up\nFAIL mtu: no answer\nanonnet check: 1 passed, 1 failed\n"
        );
    }
}
