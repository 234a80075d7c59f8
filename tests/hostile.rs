//! A real gateway process under a flood of hostile datagrams: random bytes, and
//! truncated or bit-flipped copies of real traffic captured from a real client. It
//! must answer none of them, stay up, keep serving, and not grow its memory.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{circuit_test, client_config, start_gateway};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use tempfile::TempDir;

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Datagrams of each kind in the flood.
const RANDOM: usize = 10_000;
const MUTATED: usize = 10_000;

/// A UDP relay between one client and one gateway that records every
/// client→gateway datagram.
struct Proxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl Proxy {
    fn start(gateway: SocketAddr) -> Proxy {
        let sock = UdpSocket::bind((V4, 0)).expect("bind the proxy");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("set_read_timeout");
        let addr = sock.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut recorded = Vec::new();
            let mut client: Option<SocketAddr> = None;
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if from == gateway {
                    if let Some(c) = client {
                        let _ = sock.send_to(&buf[..n], c);
                    }
                } else {
                    client = Some(from);
                    recorded.push(buf[..n].to_vec());
                    let _ = sock.send_to(&buf[..n], gateway);
                }
            }
            recorded
        });
        Proxy {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Stops relaying and returns the recorded client→gateway datagrams.
    fn finish(mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("not finished yet")
            .join()
            .expect("proxy thread panicked")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The receive queue (bytes) of the IPv4 UDP socket bound to 127.0.0.1:`port`,
/// from /proc/net/udp.
fn rx_queue(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) != Some(&local.as_str()) {
            return None;
        }
        let (_, rx) = f.get(4)?.split_once(':')?;
        u64::from_str_radix(rx, 16).ok()
    })
}

/// Polls the gateway's receive queue until it holds fewer than `limit` bytes (or
/// 10 s pass, or the queue cannot be read).
fn wait_for_queue_below(port: u16, limit: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while rx_queue(port).is_some_and(|q| q >= limit) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn below(rng: &mut ChaCha20Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

/// Random datagrams: half of arbitrary length 0..1500, half of exactly a message
/// size with a plausible type byte.
fn random_datagrams(rng: &mut ChaCha20Rng) -> Vec<Vec<u8>> {
    (0..RANDOM)
        .map(|i| {
            if i % 2 == 0 {
                let mut d = vec![0u8; below(rng, 1500)];
                rng.fill_bytes(&mut d);
                d
            } else {
                let (len, ty) = match below(rng, 4) {
                    0 => (69, 0x11),
                    1 => (57, 0x12),
                    2 => (1186, 0x13),
                    _ => (233 + below(rng, 1452 - 233 + 1), 0x14),
                };
                // Mostly the type that goes with the size, sometimes another valid one.
                let ty = if below(rng, 4) == 0 {
                    0x11 + below(rng, 4) as u8
                } else {
                    ty
                };
                let mut d = vec![0u8; len];
                rng.fill_bytes(&mut d);
                d[0] = ty;
                d
            }
        })
        .collect()
}

/// Truncated or 1–3-bit-flipped copies of `real` (never an exact copy).
fn mutated_datagrams(rng: &mut ChaCha20Rng, real: &[Vec<u8>]) -> Vec<Vec<u8>> {
    (0..MUTATED)
        .map(|_| {
            let mut d = real[below(rng, real.len())].clone();
            if below(rng, 2) == 0 {
                let len = below(rng, d.len());
                d.truncate(len);
            } else {
                let flips = 1 + below(rng, 3);
                let mut bits = BTreeSet::new();
                while bits.len() < flips {
                    bits.insert(below(rng, d.len() * 8));
                }
                for b in bits {
                    d[b / 8] ^= 1 << (b % 8);
                }
            }
            d
        })
        .collect()
}

#[test]
fn hostile_datagrams_get_no_answer() {
    let dir = TempDir::new().expect("tempdir");
    let mut gw = start_gateway(dir.path(), "gw", V4, true);

    // Warm-up, captured: a real 1-hop circuit through the recording proxy.
    let proxy = Proxy::start(gw.addr);
    let via_proxy = client_config(dir.path(), "proxied", &[(proxy.addr, &gw.key)], 2.0, 10.0);
    let mut ct = circuit_test(&via_proxy, &["--bytes", "300000"]);
    let (st, err) = ct.wait_exit(Duration::from_secs(60));
    assert_eq!(st.code(), Some(0), "warm-up circuit-test: {err}");
    let real = proxy.finish();
    let count = |ty: u8| real.iter().filter(|d| d.first() == Some(&ty)).count();
    println!(
        "captured {} datagrams: {} LINK_INIT, {} LINK_CTRL, {} CELL",
        real.len(),
        count(0x11),
        count(0x13),
        count(0x14)
    );
    assert!(count(0x11) >= 1 && count(0x13) >= 1 && count(0x14) >= 100);

    let mut rng = ChaCha20Rng::seed_from_u64(0x0a11_0e7e);
    let mut flood = random_datagrams(&mut rng);
    flood.extend(mutated_datagrams(&mut rng, &real));
    // Interleave the two kinds.
    for i in (1..flood.len()).rev() {
        flood.swap(i, below(&mut rng, i + 1));
    }

    let rss_before = gw.proc.rss_bytes();
    let attacker = UdpSocket::bind((V4, 0)).expect("bind the attacker");
    let started = Instant::now();
    for (i, d) in flood.iter().enumerate() {
        attacker.send_to(d, gw.addr).expect("send");
        // Backpressure: the gateway must see (and count) every datagram, so wait
        // while its kernel receive queue is deep instead of overflowing it.
        if i % 100 == 99 {
            wait_for_queue_below(gw.addr.port(), 256 << 10);
        }
    }
    println!(
        "sent {} hostile datagrams in {:?}",
        flood.len(),
        started.elapsed()
    );

    // Drain for a second: nothing may come back.
    let mut replies = 0usize;
    let mut buf = [0u8; 2048];
    let until = Instant::now() + Duration::from_secs(1);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        attacker
            .set_read_timeout(Some(left))
            .expect("set_read_timeout");
        match attacker.recv_from(&mut buf) {
            Ok((n, from)) => {
                replies += 1;
                println!("reply of {n} bytes from {from}: {:02x?}", &buf[..n.min(16)]);
            }
            Err(_) => break,
        }
    }

    assert!(gw.proc.is_alive(), "the gateway died under the flood");
    let rss_after = gw.proc.rss_bytes();
    println!("VmRSS before {rss_before} B, after {rss_after} B");

    // Still serves a fresh circuit (directly, not through the proxy).
    let direct = client_config(dir.path(), "direct", &[(gw.addr, &gw.key)], 2.0, 10.0);
    let mut ct = circuit_test(&direct, &["--bytes", "200000"]);
    let (st, err) = ct.wait_exit(Duration::from_secs(60));
    assert_eq!(st.code(), Some(0), "circuit-test after the flood: {err}");

    let stats = gw.stop();
    println!("gateway stats: {}", stats.line);
    println!("dropped in total: {}", stats.dropped());

    assert_eq!(replies, 0, "the gateway answered hostile datagrams");
    assert!(
        rss_after < rss_before + (8 << 20),
        "VmRSS grew from {rss_before} to {rss_after} bytes"
    );
    assert!(
        stats.dropped() >= 19_000,
        "only {} of {} hostile datagrams were counted as dropped",
        stats.dropped(),
        flood.len()
    );
}
