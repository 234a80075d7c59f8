//! A handshake flood against one gateway, for the netns tests (`netns-tests/run.sh`,
//! case `handshake-flood`):
//!
//! - junk: LINK_INIT-sized datagrams of random bytes after a LINK_INIT type byte, each
//!   from a random source address of `--spoof` (a raw IPv4 socket writes the IP
//!   header), at `--junk-rate` per second. Their mac1 does not verify.
//! - valid-looking handshakes: LINK_INITs with a correct mac1 (the sender knows the
//!   gateway's public key) around a random Noise message, from one UDP socket bound
//!   to `--from`, at `--init-rate` per second. It answers the gateway's cookie replies
//!   as an honest initiator would: later LINK_INITs carry a valid mac2.
//!
//! ```text
//! handshake_flood --gateway 198.18.2.2:9000 --pubkey KEY --from 198.18.0.1 \
//!     [--spoof 198.19.0.0/16] [--junk-rate 20000] [--init-rate 2000] [--seconds 300]
//! ```
//!
//! It prints `handshake_flood: started` once both sockets are open, stops after
//! `--seconds` (or at SIGTERM/SIGINT, the default action), and ends with one line:
//! `handshake_flood: sent junk J, inits I (with mac2 M), cookie replies C in S s`.
//! Exits 1 if it could not open its sockets or send.

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use etherparse::PacketBuilder;
use ipnet::Ipv4Net;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use anonnet::proto::crypto::{self, MAC_LEN, TAG_LEN, XNONCE_LEN};
use anonnet::proto::identity::PublicKey;
use anonnet::proto::wire::{
    self, Header, MsgType, COOKIE_REPLY_NONCE, COOKIE_REPLY_SEALED, LINK_INIT_LEN,
};

#[derive(Parser)]
#[command(about = "Flood a gateway with junk and valid-looking handshakes")]
struct Args {
    /// The gateway's UDP address (IPv4).
    #[arg(long)]
    gateway: SocketAddrV4,
    /// The gateway's public key (as printed by `anonnet pubkey`).
    #[arg(long)]
    pubkey: String,
    /// The local address the valid-looking handshakes come from (it must be this
    /// host's, so that cookie replies come back).
    #[arg(long)]
    from: Ipv4Addr,
    /// The network the junk's spoofed source addresses are drawn from.
    #[arg(long, default_value = "198.19.0.0/16")]
    spoof: Ipv4Net,
    /// Junk datagrams per second.
    #[arg(long, default_value_t = 20_000)]
    junk_rate: u64,
    /// Valid-looking handshakes per second.
    #[arg(long, default_value_t = 2_000)]
    init_rate: u64,
    /// How long to flood.
    #[arg(long, default_value_t = 300)]
    seconds: u64,
}

/// Sending is paced in steps of this length: each step sends its share of both rates.
const STEP: Duration = Duration::from_millis(1);
/// The mac1 of this many recent LINK_INITs is kept, to open the cookie replies to them.
const REMEMBERED: usize = 8192;
/// IPPROTO_RAW: a raw socket whose sender writes the IP header (raw(7)).
const IPPROTO_RAW: i32 = 255;

#[derive(Default)]
struct Counts {
    junk: u64,
    inits: u64,
    with_mac2: u64,
    cookies: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handshake_flood: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let key: PublicKey = args
        .pubkey
        .parse()
        .map_err(|e| anyhow::anyhow!("bad --pubkey: {e}"))?;
    let mac1_key = crypto::mac1_key(&key.0);
    let cookie_key = crypto::cookie_key(&key.0);
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(IPPROTO_RAW)))
        .context("cannot open a raw IPv4 socket (root needed)")?;
    let udp = UdpSocket::bind(SocketAddr::new(IpAddr::V4(args.from), 0))
        .with_context(|| format!("cannot bind a UDP socket to {}", args.from))?;
    udp.set_nonblocking(true)
        .context("cannot make the UDP socket non-blocking")?;
    let gateway = SocketAddr::V4(args.gateway);
    let dst = SockAddr::from(gateway);
    println!("handshake_flood: started");
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;

    let mut rng = ChaCha8Rng::from_entropy();
    let mut counts = Counts::default();
    let mut sent_mac1: HashMap<u32, [u8; MAC_LEN]> = HashMap::with_capacity(REMEMBERED);
    let mut cookie: Option<[u8; MAC_LEN]> = None;
    let mut packet = Vec::with_capacity(64 + LINK_INIT_LEN);
    let mut rx = [0u8; 128];
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let mut step = start;
    while step < end {
        let elapsed = step.duration_since(start).as_secs_f64();
        let junk_due = (elapsed * args.junk_rate as f64) as u64;
        while counts.junk < junk_due {
            let src = random_addr(&mut rng, args.spoof);
            let mut payload = [0u8; LINK_INIT_LEN];
            rng.fill_bytes(&mut payload);
            payload[0] = MsgType::LinkInit.byte();
            packet.clear();
            PacketBuilder::ipv4(src.octets(), args.gateway.ip().octets(), 64)
                .udp(random_port(&mut rng), args.gateway.port())
                .write(&mut packet, &payload)
                .context("cannot build a junk packet")?;
            send_raw(&raw, &packet, &dst)?;
            counts.junk += 1;
        }
        let inits_due = (elapsed * args.init_rate as f64) as u64;
        while counts.inits < inits_due {
            let sender = rng.next_u32();
            let mut msg1 = [0u8; 64];
            rng.fill_bytes(&mut msg1);
            let buf = wire::emit_link_init(
                sender,
                &msg1,
                |c| crypto::mac(&mac1_key, c),
                |c| cookie.map(|k| crypto::mac(&k, c)),
            );
            if sent_mac1.len() >= REMEMBERED {
                sent_mac1.clear();
            }
            if let Some(mac1) = buf
                .get(wire::LINK_INIT_MAC1)
                .and_then(|m| m.try_into().ok())
            {
                sent_mac1.insert(sender, mac1);
            }
            match udp.send_to(&buf, gateway) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("cannot send a handshake"),
            }
            counts.inits += 1;
            counts.with_mac2 += u64::from(cookie.is_some());
        }
        loop {
            match udp.recv_from(&mut rx) {
                Ok((n, from)) if from == gateway => {
                    if let Some(c) = open_reply(&cookie_key, &sent_mac1, &rx[..n]) {
                        cookie = Some(c);
                        counts.cookies += 1;
                    }
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("cannot receive"),
            }
        }
        step += STEP;
        if let Some(wait) = step.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    println!(
        "handshake_flood: sent junk {}, inits {} (with mac2 {}), cookie replies {} in {:.1} s",
        counts.junk,
        counts.inits,
        counts.with_mac2,
        counts.cookies,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The cookie in a COOKIE_REPLY to one of the LINK_INITs sent (by its mac1).
fn open_reply(
    key: &[u8; 32],
    sent_mac1: &HashMap<u32, [u8; MAC_LEN]>,
    d: &[u8],
) -> Option<[u8; MAC_LEN]> {
    let Ok(Header::CookieReply { receiver }) = Header::parse(d) else {
        return None;
    };
    let mac1 = sent_mac1.get(&receiver)?;
    let nonce: &[u8; XNONCE_LEN] = d.get(COOKIE_REPLY_NONCE)?.try_into().ok()?;
    let sealed: &[u8; MAC_LEN + TAG_LEN] = d.get(COOKIE_REPLY_SEALED)?.try_into().ok()?;
    crypto::open_cookie(key, nonce, mac1, sealed)
}

fn send_raw(raw: &Socket, packet: &[u8], dst: &SockAddr) -> Result<()> {
    match raw.send_to(packet, dst) {
        Ok(_) => Ok(()),
        // A full send buffer drops this one, as a congested link would.
        Err(e)
            if e.kind() == ErrorKind::WouldBlock
                || e.raw_os_error() == Some(nix::errno::Errno::ENOBUFS as i32) =>
        {
            Ok(())
        }
        Err(e) => bail!("cannot send a junk datagram: {e}"),
    }
}

fn random_addr(rng: &mut ChaCha8Rng, net: Ipv4Net) -> Ipv4Addr {
    let host_bits = 32 - u32::from(net.prefix_len());
    let host = if host_bits == 0 {
        0
    } else {
        rng.next_u32() & (u32::MAX >> (32 - host_bits))
    };
    Ipv4Addr::from(u32::from(net.network()) | host)
}

fn random_port(rng: &mut ChaCha8Rng) -> u16 {
    1024 + (rng.next_u32() % 64512) as u16
}
