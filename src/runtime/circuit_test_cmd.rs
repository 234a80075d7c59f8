//! `anonnet circuit-test`: a circuit to an echo endpoint, payloads of many sizes,
//! every echoed byte checked (a test of the gateways without TUN or root).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::config;
use crate::node::{CircuitId, Event, Node};
use crate::proto::wire::{Cmd, Service, MAX_PAYLOAD};
use crate::runtime::driver::Driver;
use crate::runtime::{client_node_config, hop_specs, CLIENT_BINDS};

/// The largest payload one cell carries.
pub const MAX_SIZE: usize = MAX_PAYLOAD;

/// What `anonnet circuit-test` sends: `bytes` in payloads of `min_size..=max_size`
/// bytes, `window` in flight, then a hold of the circuit.
pub struct Transfer {
    bytes: u64,
    min_size: usize,
    max_size: usize,
    window: usize,
    hold: Duration,
}

impl Transfer {
    /// Checks the command's numbers: `1 <= min_size <= max_size <=` [`MAX_SIZE`], a
    /// window of at least one, a finite non-negative hold in seconds.
    pub fn new(
        bytes: u64,
        min_size: usize,
        max_size: usize,
        window: usize,
        hold: f64,
    ) -> Result<Self> {
        if min_size == 0 || min_size > max_size || max_size > MAX_PAYLOAD {
            bail!("--min-size and --max-size must satisfy 1 <= min <= max <= {MAX_PAYLOAD}");
        }
        if window == 0 {
            bail!("--window must be at least 1");
        }
        if !(hold.is_finite() && hold >= 0.0) {
            bail!("--hold must be a non-negative number of seconds");
        }
        Ok(Self {
            bytes,
            min_size,
            max_size,
            window,
            hold: Duration::from_secs_f64(hold),
        })
    }
}

/// Resend a payload whose echo has not come back after this long.
const RESEND_AFTER: Duration = Duration::from_millis(500);

/// The deterministic content of payload `seq`: its number, then bytes from a
/// ChaCha stream seeded by it, so the receiver can check every byte.
fn payload(seq: u64, t: &Transfer) -> Vec<u8> {
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&seq.to_be_bytes());
    let mut r = ChaCha20Rng::from_seed(seed);
    let span = (t.max_size - t.min_size + 1) as u64;
    // Every payload carries its 8-byte sequence number, so 8 is the smallest size.
    let len = ((t.min_size as u64 + r.next_u64() % span) as usize).max(8);
    let mut v = vec![0u8; len];
    r.fill_bytes(&mut v);
    v[..8].copy_from_slice(&seq.to_be_bytes());
    v
}

/// Builds a circuit through the config's path to an echo endpoint, sends the
/// transfer and checks every echoed byte. Exit status: 0 all verified, 2 corrupted
/// data, 3 circuit down.
pub async fn run(path: &Path, t: Transfer) -> Result<ExitCode> {
    let cfg = config::load_client(path)?;
    let node = Node::new(client_node_config(&cfg));
    let mut d = Driver::new(node, &CLIENT_BINDS)?;
    let specs = hop_specs(&cfg.path);
    let start = Instant::now();
    let id = d
        .node
        .build_circuit(start, &mut d.rng, &specs, Service::Echo)?;
    d.flush().await;
    let mut events = Vec::new();
    // Wait for the build.
    loop {
        d.step(&mut events).await;
        if let Some(code) = down(&events, id, start) {
            return Ok(code);
        }
        if events
            .iter()
            .any(|e| matches!(e, Event::CircuitUp(c) if *c == id))
        {
            break;
        }
    }
    events.clear();
    println!(
        "circuit up: {} hops in {:.1} ms",
        specs.len(),
        start.elapsed().as_secs_f64() * 1e3
    );
    let mut outstanding: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut next_seq = 0u64;
    let mut sent_bytes = 0u64;
    let mut verified_bytes = 0u64;
    let mut verified = 0u64;
    let mut resent = 0u64;
    let xfer = Instant::now();
    while verified_bytes < t.bytes {
        let now = Instant::now();
        let stale: Vec<u64> = outstanding
            .iter()
            .filter(|(_, &at)| now.duration_since(at) >= RESEND_AFTER)
            .map(|(&s, _)| s)
            .collect();
        for seq in stale {
            resent += 1;
            outstanding.insert(seq, now);
            let tx = d
                .node
                .send_payload(now, &mut d.rng, id, &payload(seq, &t))?;
            if let Some(tx) = tx {
                d.sockets.send_recycle(tx).await;
            }
        }
        while outstanding.len() < t.window && sent_bytes < t.bytes {
            let p = payload(next_seq, &t);
            sent_bytes += p.len() as u64;
            outstanding.insert(next_seq, now);
            next_seq += 1;
            if let Some(tx) = d.node.send_payload(now, &mut d.rng, id, &p)? {
                d.sockets.send_recycle(tx).await;
            }
        }
        let resend = outstanding.values().min().map(|&at| at + RESEND_AFTER);
        d.step_until(&mut events, resend).await;
        for e in events.drain(..) {
            match e {
                Event::Data {
                    circuit,
                    cmd: Cmd::Data,
                    buf,
                    range,
                } if circuit == id => {
                    let got = &buf[range];
                    if got.len() < 8 {
                        tracing::warn!("short payload of {} bytes", got.len());
                        return Ok(ExitCode::from(2));
                    }
                    let mut s = [0u8; 8];
                    s.copy_from_slice(&got[..8]);
                    let seq = u64::from_be_bytes(s);
                    if seq >= next_seq || got != payload(seq, &t).as_slice() {
                        tracing::warn!("payload {seq} corrupted");
                        return Ok(ExitCode::from(2));
                    }
                    if outstanding.remove(&seq).is_some() {
                        verified += 1;
                        verified_bytes += got.len() as u64;
                    }
                    d.sockets.pool.put(buf);
                }
                Event::CircuitDown(c, reason) if c == id => {
                    println!(
                        "circuit down: {reason:?} after {:.1} s",
                        start.elapsed().as_secs_f64()
                    );
                    return Ok(ExitCode::from(3));
                }
                _ => {}
            }
        }
    }
    let secs = xfer.elapsed().as_secs_f64();
    println!(
        "verified {verified} payloads, {verified_bytes} bytes in {secs:.2} s ({:.1} MB/s), {resent} resent",
        verified_bytes as f64 / secs / 1e6
    );
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;
    if !t.hold.is_zero() {
        let until = Instant::now() + t.hold;
        println!("holding the circuit for {:.1} s", t.hold.as_secs_f64());
        std::io::stdout()
            .flush()
            .context("cannot write to stdout")?;
        let held = Instant::now();
        while Instant::now() < until {
            tokio::select! {
                () = d.step(&mut events) => {}
                () = tokio::time::sleep_until(until.into()) => break,
            }
            if let Some(code) = down(&events, id, held) {
                return Ok(code);
            }
            events.clear();
        }
        println!("circuit still up");
    }
    d.node.close_circuit(id);
    d.flush().await;
    Ok(ExitCode::SUCCESS)
}

/// Reports a `CircuitDown` for `id` among `events`, with the time since `since`.
fn down(events: &[Event], id: CircuitId, since: Instant) -> Option<ExitCode> {
    events.iter().find_map(|e| match e {
        Event::CircuitDown(c, reason) if *c == id => {
            println!(
                "circuit down: {reason:?} after {:.1} s",
                since.elapsed().as_secs_f64()
            );
            Some(ExitCode::from(3))
        }
        _ => None,
    })
}
