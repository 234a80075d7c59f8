//! How much memory a gateway spends per idle circuit.
//!
//! ```text
//! cargo run --release --example idle_circuits -- --gateway 127.0.0.1:9000 \
//!     --pubkey KEY --circuits 10000 --gateway-pid PID [--hold-secs 10]
//! ```
//!
//! Builds `--circuits` one-hop circuits to a running `anonnet gateway` over real
//! UDP with the library's [`Node`] and [`Driver`] (as `anonnet circuit-test` does),
//! all on one link, keeps them alive with the node's own keepalives, and reads the
//! gateway's resident set size (`VmRSS` of `/proc/PID/status`) before the first
//! build and after every circuit is up and the gateway has settled for
//! `--hold-secs`. Prints one JSON line on stdout:
//!
//! ```text
//! {"circuits":N,"rss_before_kib":..,"rss_after_kib":..,"bytes_per_circuit":..,"build_secs":..}
//! ```
//!
//! then tears the circuits down and exits 0; exits 1 with an error if not every
//! circuit came up. Progress goes to stderr.
//!
//! A gateway processes at most `handshake_rate` BUILDs per second (default 1,000,
//! token bucket with one second of burst) and drops the rest, so builds are
//! paced at `--rate` (default 800 per second) with at most `--window` in flight; a
//! build that times out is retried. The circuits' terminal service is echo (the
//! gateway needs `echo = true`) or, with `--service directory`, the directory
//! service every gateway runs.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

use anonnet::node::{CircuitId, Event, HopSpec, Node, NodeConfig};
use anonnet::proto::identity::PublicKey;
use anonnet::proto::wire::Service;
use anonnet::runtime::driver::Driver;

#[derive(Parser)]
#[command(about = "Measure a gateway's memory per idle circuit")]
struct Args {
    /// The gateway's UDP address.
    #[arg(long)]
    gateway: SocketAddr,
    /// The gateway's public key (as printed by `anonnet keygen` / `anonnet pubkey`).
    #[arg(long)]
    pubkey: String,
    /// Circuits to build and hold.
    #[arg(long)]
    circuits: usize,
    /// The gateway's process id, for its RSS.
    #[arg(long)]
    gateway_pid: u32,
    /// Seconds to hold the circuits (alive, idle) before reading the RSS again.
    #[arg(long, default_value_t = 10.0)]
    hold_secs: f64,
    /// Circuit builds started per second at most (keep below the gateway's
    /// handshake_rate).
    #[arg(long, default_value_t = 800.0)]
    rate: f64,
    /// Builds in flight at most.
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// The circuits' terminal service.
    #[arg(long, value_enum, default_value_t = Svc::Echo)]
    service: Svc,
    /// Give up if the circuits are not all up after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    timeout_secs: f64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Svc {
    Echo,
    Directory,
}

/// DESTROYs sent per teardown batch, one batch per millisecond-scale step, so the
/// gateway's socket buffer does not overflow.
const TEARDOWN_BATCH: usize = 256;
/// Sleep of a step while the node has nothing to wait for.
const IDLE_SLEEP: Duration = Duration::from_millis(10);

/// One driver step. A step waits for a datagram, the node's next deadline or
/// `wake` (the next paced build); with none of them it only sleeps. (Cancelling a
/// step instead, with a timeout, could drop a datagram it was handling.)
async fn step(d: &mut Driver, events: &mut Vec<Event>, wake: Option<Instant>) {
    if d.node.poll_timeout().is_some() || wake.is_some() {
        d.step_until(events, wake).await;
    } else {
        tokio::time::sleep(IDLE_SLEEP).await;
    }
}

fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no VmRSS line in {path}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("idle_circuits: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idle_circuits: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What the build phase keeps per circuit.
#[derive(Clone, Copy)]
enum State {
    Building,
    Up,
}

async fn run(args: &Args) -> Result<()> {
    if args.circuits == 0 {
        bail!("--circuits must be at least 1");
    }
    if args.rate.is_nan() || args.rate <= 0.0 || args.window == 0 {
        bail!("--rate and --window must be positive");
    }
    let key: PublicKey = args
        .pubkey
        .parse()
        .map_err(|e| anyhow::anyhow!("bad --pubkey: {e}"))?;
    let spec = HopSpec {
        addr: args.gateway,
        key: key.0,
    };
    let service = match args.service {
        Svc::Echo => Service::Echo,
        Svc::Directory => Service::Directory,
    };
    let bind = SocketAddr::new(
        match args.gateway.ip() {
            IpAddr::V4(a) if a.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V6(a) if a.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        },
        0,
    );
    let mut d = Driver::new(Node::new(NodeConfig::default()), &[bind])?;
    let mut events = Vec::new();

    let rss_before = rss_kib(args.gateway_pid)?;
    eprintln!(
        "idle_circuits: gateway RSS {rss_before} KiB; building {} circuits at up to {}/s",
        args.circuits, args.rate
    );

    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.timeout_secs);
    let mut circuits: HashMap<CircuitId, State> = HashMap::with_capacity(args.circuits);
    let (mut building, mut up) = (0usize, 0usize);
    let (mut retried, mut lost) = (0u64, 0u64);
    let mut tokens = 1.0f64;
    let mut last = started;
    let mut report = started;
    while up < args.circuits {
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "only {up} of {} circuits came up within {} s ({building} still building, {retried} builds retried, {lost} circuits lost)",
                args.circuits,
                args.timeout_secs
            );
        }
        // Pace builds: a token bucket with a tenth of a second of burst.
        tokens = (tokens + now.duration_since(last).as_secs_f64() * args.rate)
            .min((args.rate / 10.0).max(1.0));
        last = now;
        while tokens >= 1.0 && building < args.window && up + building < args.circuits {
            tokens -= 1.0;
            let id = d
                .node
                .build_circuit(now, &mut d.rng, &[spec], service)
                .context("cannot build a circuit")?;
            circuits.insert(id, State::Building);
            building += 1;
        }
        d.flush().await;
        // The next build's token, if one is waited for.
        let more = building < args.window && up + building < args.circuits;
        let next = more.then(|| now + Duration::from_secs_f64((1.0 - tokens).max(0.0) / args.rate));
        step(&mut d, &mut events, next).await;
        for e in events.drain(..) {
            match e {
                Event::CircuitUp(c) => {
                    if let Some(s) = circuits.get_mut(&c) {
                        if matches!(s, State::Building) {
                            building -= 1;
                            up += 1;
                        }
                        *s = State::Up;
                    }
                }
                Event::CircuitDown(c, _) => match circuits.remove(&c) {
                    Some(State::Building) => {
                        building -= 1;
                        retried += 1;
                    }
                    Some(State::Up) => {
                        up -= 1;
                        lost += 1;
                    }
                    None => {}
                },
                Event::Data { buf, .. } | Event::ServiceData { buf, .. } => {
                    d.sockets.pool.put(buf);
                }
                Event::ServiceClosed(..) => {}
            }
        }
        if now.duration_since(report) >= Duration::from_secs(1) {
            report = now;
            eprintln!(
                "idle_circuits: {up} up, {building} building, {retried} retried, {lost} lost after {:.1} s",
                now.duration_since(started).as_secs_f64()
            );
        }
    }
    let build_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "idle_circuits: {up} circuits up in {build_secs:.2} s ({retried} builds retried, {lost} lost); holding {} s",
        args.hold_secs
    );

    // Hold: the node sends keepalives; the gateway's circuits stay idle otherwise.
    let hold_until = Instant::now() + Duration::from_secs_f64(args.hold_secs);
    while Instant::now() < hold_until {
        step(&mut d, &mut events, Some(hold_until)).await;
        for e in events.drain(..) {
            match e {
                Event::CircuitDown(c, why) => {
                    bail!(
                        "circuit {c:?} went down while held ({why:?}); client node: {:?}",
                        d.node.stats()
                    )
                }
                Event::Data { buf, .. } | Event::ServiceData { buf, .. } => {
                    d.sockets.pool.put(buf);
                }
                _ => {}
            }
        }
    }
    let rss_after = rss_kib(args.gateway_pid)?;
    let per_circuit = (rss_after.saturating_sub(rss_before) * 1024) as f64 / args.circuits as f64;
    // Fields in a fixed order (serde_json's map would sort them).
    println!(
        "{{\"circuits\":{},\"rss_before_kib\":{rss_before},\"rss_after_kib\":{rss_after},\"bytes_per_circuit\":{},\"build_secs\":{build_secs:.2}}}",
        args.circuits,
        per_circuit.round() as u64,
    );
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;

    // Tear down in batches, so the DESTROYs are not lost to a full socket buffer.
    let ids: Vec<CircuitId> = circuits.keys().copied().collect();
    for batch in ids.chunks(TEARDOWN_BATCH) {
        for &c in batch {
            d.node.close_circuit(c);
        }
        d.flush().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("idle_circuits: {} circuits closed", ids.len());
    Ok(())
}
