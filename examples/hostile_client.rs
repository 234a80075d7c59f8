//! A hostile client for the netns tests (`netns-tests/run.sh`, case `hostile-client`):
//! it builds real circuits through the gateways it is given, with the library's
//! [`Node`] over real UDP, and then sends cells that are properly sealed for its own
//! hops but crafted to hurt them ([`Node::forge_forward`], [`Node::forge_ctrl`]):
//!
//! - `mask`: a cell relayed by the entry or a middle hop whose slots after the hop's
//!   own are all 0xFF, so that the hop's output header sample is all 0xFF (the block
//!   counter 0xFFFF_FFFF that used to panic every gateway, SECURITY.md);
//! - `counter`: hop layers under arbitrary counters (random, near the reject limit,
//!   with and without TERMINAL and the key-phase bit);
//! - `body`: bodies of any size, command and length field, and exit payloads with
//!   arbitrary fragment headers, to the last hop;
//! - `ctrl`: link control messages of any kind, circuit ID, counter and size.
//!
//! ```text
//! hostile_client --hop "198.18.2.2:9000 KEY" --hop "198.18.3.2:9000 KEY" \
//!     --hop "198.18.4.2:9000 KEY" [--cells 20000] [--seconds 60] [--rate 2000] [--seed 23]
//! ```
//!
//! It prints `hostile_client: circuit up through N hops` when its first circuit is
//! built, forges `--cells` cells at `--rate` per second (a new circuit, on a new
//! link from a new socket, every [`CELLS_PER_CIRCUIT`] cells or when one goes down),
//! and ends with one line:
//! `hostile_client: forged N cells (mask A (hop 0: A0, hop 1: A1), counter B, body C,
//! ctrl D) on M circuits in S s`, where hop k relayed its mask cells.
//! It stops after `--seconds` in any case, and exits 1 if no circuit ever came up.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use anonnet::node::{CircuitId, Event, ForgedForward, HopSpec, Node, NodeConfig, TAIL_LEN};
use anonnet::proto::framing::{FRAGMENT, FRAGMENT_DATA};
use anonnet::proto::identity::PublicKey;
use anonnet::proto::onion::REJECT_AFTER_MESSAGES;
use anonnet::proto::wire::{Service, BODY_HEADER, CTR_FLAG, CTR_PHASE, MAX_BODY, SLOTS};
use anonnet::runtime::driver::Driver;

#[derive(Parser)]
#[command(about = "Send crafted, validly sealed cells through circuits of one's own")]
struct Args {
    /// A hop, entry first, exit last: "ADDR:PORT KEY" (KEY as `anonnet pubkey` prints it).
    #[arg(long = "hop", required = true)]
    hops: Vec<String>,
    /// Forged cells to send in all.
    #[arg(long, default_value_t = 20_000)]
    cells: u64,
    /// Stop after this many seconds even if not all cells were sent.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Forged cells per second at most.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Seed of the forgeries (the circuits' keys come from the system's RNG).
    #[arg(long, default_value_t = 23)]
    seed: u64,
}

/// Forged cells sent on one circuit before the next is built: forged counters move
/// the hops' replay windows, after which the circuit's own cells are replays.
const CELLS_PER_CIRCUIT: u64 = 500;
/// A build that has not completed by then is given up and started again.
const BUILD_TIMEOUT: Duration = Duration::from_secs(5);

fn parse_hop(s: &str) -> Result<HopSpec> {
    let (addr, key) = s
        .split_once(' ')
        .with_context(|| format!("--hop {s:?}: expected \"ADDR:PORT KEY\""))?;
    let key: PublicKey = key
        .trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("--hop {s:?}: bad key: {e}"))?;
    Ok(HopSpec {
        addr: addr
            .parse()
            .with_context(|| format!("--hop {s:?}: bad address {addr:?}"))?,
        key: key.0,
    })
}

fn pick<T: Copy>(rng: &mut ChaCha20Rng, items: &[T]) -> T {
    items[rng.next_u32() as usize % items.len()]
}

fn bytes(rng: &mut ChaCha20Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

/// A body of a size class holding a DATA command whose payload is `payload`.
fn data_body(rng: &mut ChaCha20Rng, payload: &[u8]) -> Vec<u8> {
    let size = pick(rng, &[128, 256, 512, 1024, MAX_BODY]).max(BODY_HEADER + payload.len());
    let mut b = vec![0u8; size];
    b[0] = 1;
    b[1..3].copy_from_slice(
        &u16::try_from(payload.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    b[BODY_HEADER..BODY_HEADER + payload.len()].copy_from_slice(payload);
    b
}

/// A body of any size whose command byte and length field are arbitrary, or whose
/// payload is a fragment with an arbitrary header.
fn hostile_body(rng: &mut ChaCha20Rng) -> Vec<u8> {
    if rng.next_u32() % 2 == 0 {
        let header = [
            FRAGMENT,
            0,
            pick(rng, &[0, 1, 255]),
            pick(rng, &[0, 1, 3, 4, 7, 8, 200]),
            pick(rng, &[0, 1, 2, 4, 5, 9, 255]),
        ];
        let mut payload = header.to_vec();
        let n = pick(rng, &[0, 1, FRAGMENT_DATA - 8, FRAGMENT_DATA]);
        payload.extend(bytes(rng, n));
        return data_body(rng, &payload);
    }
    let size = pick(
        rng,
        &[0, 2, 3, 40, 128, 700, 1024, MAX_BODY, MAX_BODY + 200],
    );
    let mut b = bytes(rng, size);
    if let Some(head) = b.get_mut(..BODY_HEADER) {
        head[0] = pick(rng, &[0, 1, 2, 3, 4, 5, 0xFF]);
        let len = pick(rng, &[0, 1, (size as u16).wrapping_sub(2), u16::MAX]);
        head[1..3].copy_from_slice(&len.to_be_bytes());
    }
    b
}

fn hostile_counter(rng: &mut ChaCha20Rng) -> u64 {
    let flags = pick(rng, &[0, CTR_FLAG, CTR_PHASE, CTR_FLAG | CTR_PHASE]);
    match rng.next_u32() % 4 {
        0 => rng.next_u64(),
        1 => flags | (rng.next_u64() % 64),
        2 => flags | (REJECT_AFTER_MESSAGES - 1 - rng.next_u64() % 4),
        _ => flags | REJECT_AFTER_MESSAGES,
    }
}

#[derive(Default)]
struct Tally {
    /// Mask cells by the hop that relays them with the all-0xFF sample.
    mask: [u64; SLOTS],
    counter: u64,
    body: u64,
    ctrl: u64,
}

impl Tally {
    fn total(&self) -> u64 {
        self.mask.iter().sum::<u64>() + self.counter + self.body + self.ctrl
    }
}

/// Forges one cell on circuit `id` of `hops` hops; `None` if the node refused (the
/// circuit is not up). A `spoiling` circuit gets the cells that move its hops' and
/// its link's replay windows (`counter`, `ctrl`), after which its own cells are
/// replays; the others get `mask` and `body` cells, which its hops accept.
fn forge(
    d: &mut Driver,
    rng: &mut ChaCha20Rng,
    id: CircuitId,
    hops: usize,
    spoiling: bool,
    tally: &mut Tally,
) -> Option<anonnet::node::Transmit> {
    let last = hops - 1;
    let mut cell = ForgedForward {
        target: last,
        terminal: true,
        counters: [None; SLOTS],
        cid: None,
        body: &[],
        tail: [0u8; TAIL_LEN],
    };
    let body;
    match (spoiling, rng.next_u32() % 2) {
        (false, 0) if hops > 1 => {
            cell.target = rng.next_u32() as usize % last;
            cell.terminal = false;
            let payload = bytes(rng, 60);
            body = data_body(rng, &payload);
            cell.tail = [0xFF; TAIL_LEN];
            cell.body = &body;
            let t = d.node.forge_forward(id, &cell).ok()?;
            tally.mask[cell.target] += 1;
            return Some(t);
        }
        (true, 0) => {
            cell.target = rng.next_u32() as usize % hops;
            cell.terminal = rng.next_u32() % 2 == 0;
            for c in cell.counters.iter_mut().take(cell.target + 1) {
                if rng.next_u32() % 2 == 0 {
                    *c = Some(hostile_counter(rng));
                }
            }
            rng.fill_bytes(&mut cell.tail);
            let size = pick(rng, &[128, 512, MAX_BODY]);
            body = bytes(rng, size);
            cell.body = &body;
            let t = d.node.forge_forward(id, &cell).ok()?;
            tally.counter += 1;
            return Some(t);
        }
        (false, _) => {
            if rng.next_u32() % 8 == 0 {
                cell.cid = Some(rng.next_u32());
            }
            body = hostile_body(rng);
            cell.body = &body;
            let t = d.node.forge_forward(id, &cell).ok()?;
            tally.body += 1;
            return Some(t);
        }
        (true, _) => {}
    }
    let kind = pick(rng, &[0, 1, 2, 3, 4, 0xFF]);
    let cid = (rng.next_u32() % 4 == 0).then(|| rng.next_u32());
    let counter = (rng.next_u32() % 4 == 0).then(|| rng.next_u64());
    let n = pick(rng, &[0, 1, 2, 64, 512, 1152, 1300]);
    let t = d
        .node
        .forge_ctrl(id, kind, cid, counter, &bytes(rng, n))
        .ok()?;
    tally.ctrl += 1;
    Some(t)
}

/// One driver step: a datagram, a timer of the node, or a millisecond.
async fn step(d: &mut Driver, wake: &mut tokio::time::Interval, events: &mut Vec<Event>) {
    d.flush().await;
    tokio::select! {
        () = d.step(events) => {}
        _ = wake.tick() => {}
    }
}

/// Builds a circuit through `path` and waits for it; `None` if it went down or did
/// not come up within [`BUILD_TIMEOUT`].
async fn build(
    d: &mut Driver,
    wake: &mut tokio::time::Interval,
    path: &[HopSpec],
) -> Result<Option<CircuitId>> {
    let started = Instant::now();
    let id = d
        .node
        .build_circuit(started, &mut d.rng, path, Service::Exit)
        .context("cannot build a circuit")?;
    let mut events = Vec::new();
    while started.elapsed() < BUILD_TIMEOUT {
        step(d, wake, &mut events).await;
        for e in events.drain(..) {
            match e {
                Event::CircuitUp(c) if c == id => return Ok(Some(id)),
                Event::CircuitDown(c, _) if c == id => return Ok(None),
                e => recycle(d, e),
            }
        }
    }
    Ok(None)
}

fn recycle(d: &mut Driver, e: Event) {
    if let Event::Data { buf, .. } | Event::ServiceData { buf, .. } = e {
        d.sockets.pool.put(buf);
    }
}

async fn run(args: &Args) -> Result<()> {
    let path: Vec<HopSpec> = args
        .hops
        .iter()
        .map(|h| parse_hop(h))
        .collect::<Result<_>>()?;
    if path.len() > SLOTS {
        bail!("at most {SLOTS} --hop, got {}", path.len());
    }
    if args.rate == 0 {
        bail!("--rate must be at least 1");
    }
    let bind = SocketAddr::new(
        match path[0].addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        },
        0,
    );
    let mut rng = ChaCha20Rng::seed_from_u64(args.seed);
    let mut wake = tokio::time::interval(Duration::from_millis(1));
    wake.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut events = Vec::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut tally = Tally::default();
    let mut circuits = 0u64;
    while tally.total() < args.cells && Instant::now() < deadline {
        // A new node and socket for every circuit: forged link counters spoil the
        // link they were sent on, for this client as for any.
        let mut d = Driver::new(Node::new(NodeConfig::default()), &[bind])?;
        let Some(id) = build(&mut d, &mut wake, &path).await? else {
            continue;
        };
        circuits += 1;
        if circuits == 1 {
            println!("hostile_client: circuit up through {} hops", path.len());
            std::io::stdout()
                .flush()
                .context("cannot write to stdout")?;
        }
        let mut sent = 0;
        let mut up = true;
        while up
            && sent < CELLS_PER_CIRCUIT
            && tally.total() < args.cells
            && Instant::now() < deadline
        {
            // Paced: the cells due by now at `rate` per second.
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            let due = micros.saturating_mul(args.rate) / 1_000_000;
            while tally.total() < due.min(args.cells) && sent < CELLS_PER_CIRCUIT {
                let spoiling = circuits % 2 == 0;
                let Some(t) = forge(&mut d, &mut rng, id, path.len(), spoiling, &mut tally) else {
                    break;
                };
                d.sockets.send_recycle(t).await;
                sent += 1;
            }
            step(&mut d, &mut wake, &mut events).await;
            for e in events.drain(..) {
                match e {
                    Event::CircuitDown(c, _) if c == id => up = false,
                    e => recycle(&mut d, e),
                }
            }
        }
        d.node.close_circuit(id);
        d.flush().await;
    }
    if circuits == 0 {
        bail!("no circuit came up within {} s", args.seconds);
    }
    let by_hop: Vec<String> = tally
        .mask
        .iter()
        .take(path.len() - 1)
        .enumerate()
        .map(|(hop, n)| format!("hop {hop}: {n}"))
        .collect();
    println!(
        "hostile_client: forged {} cells (mask {} ({}), counter {}, body {}, ctrl {}) on {circuits} circuits in {:.1} s",
        tally.total(),
        tally.mask.iter().sum::<u64>(),
        by_hop.join(", "),
        tally.counter,
        tally.body,
        tally.ctrl,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hostile_client: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostile_client: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
