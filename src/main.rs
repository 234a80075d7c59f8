//! The `anonnet` command line.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use rand_chacha::rand_core::{OsRng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;

use anonnet::config;
use anonnet::node::{CircuitId, Event, Node};
use anonnet::proto::identity::Identity;
use anonnet::proto::wire::{Service, MAX_PAYLOAD};
use anonnet::runtime::daemon;
use anonnet::runtime::driver::Driver;

/// anonnet: a multi-hop anonymizing VPN. Packets are wrapped in one layer of Noise
/// encryption per gateway and sent over UDP through a chain of 1 to 8 gateways.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log verbosity: -v info, -vv debug (RUST_LOG overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a gateway identity (an X25519 key pair) in a new file, mode 0600.
    Keygen {
        /// Where to write the identity.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print an identity's public key, in the form client configs use.
    Pubkey {
        /// The identity file written by `anonnet keygen`.
        file: PathBuf,
    },
    /// Run a gateway that relays circuits (see examples/gateway.toml).
    Gateway {
        /// The gateway's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Also be an exit: send circuits' packets out through a TUN device with
        /// NAT, under the exit policy of the config's [exit] section. Needs root
        /// (CAP_NET_ADMIN).
        #[arg(long)]
        exit: bool,
    },
    /// Bring up the tunnel: create the TUN device (anon0), build circuits to exits
    /// (through the configured path, or random paths among discovered gateways), and
    /// route all of this host's traffic through them, each destination on its own
    /// circuit, with a kill switch that blocks everything else. Runs in the
    /// foreground until SIGINT/SIGTERM, then removes all it set up. Needs root
    /// (CAP_NET_ADMIN).
    Up {
        /// The client's TOML config (see examples/client.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Learn the network: ask the bootstrap gateways of a client config, then the
    /// gateways they name, and print every gateway known (also kept in the state
    /// directory's cache, which `up` uses). No root needed.
    Discover {
        /// The client's TOML config with a [discovery] section.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove everything `anonnet up` set up (routes, rules, kill switch, DNS,
    /// device), e.g. after the daemon was killed. The kill switch stays until then.
    Down {
        /// Take the state directory from this client config.
        #[arg(long, conflicts_with = "state_dir")]
        config: Option<PathBuf>,
        /// The state directory `up` used (default /run/anonnet).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Build a circuit through the configured path to an echo endpoint, send
    /// payloads of many sizes and check every echoed byte (a test without TUN).
    /// Exit status: 0 all verified, 2 corrupted data, 3 circuit down.
    CircuitTest {
        /// The client's TOML config (see examples/client.toml); its last hop must
        /// have `echo = true`.
        #[arg(long)]
        config: PathBuf,
        /// Total payload bytes to send and verify.
        #[arg(long, default_value_t = 1_000_000)]
        bytes: u64,
        /// Smallest payload size (payloads carry an 8-byte sequence number, so at least 8).
        #[arg(long, default_value_t = 1)]
        min_size: usize,
        /// Largest payload size (at most 1248).
        #[arg(long, default_value_t = MAX_PAYLOAD)]
        max_size: usize,
        /// Payloads in flight at once.
        #[arg(long, default_value_t = 64)]
        window: usize,
        /// After the transfer, keep the circuit up this many seconds and report if
        /// it goes down.
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("anonnet: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Keygen { out, force } => {
            let id = Identity::generate(&mut OsRng);
            id.write_file(&out, force)?;
            println!("{}", id.public());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pubkey { file } => {
            println!("{}", Identity::read_file(&file)?.public());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Gateway { config, exit } => runtime()?.block_on(daemon::gateway(&config, exit)),
        Cmd::Up { config } => runtime()?.block_on(daemon::up(&config)),
        Cmd::Discover { config, json } => runtime()?.block_on(daemon::discover_cmd(&config, json)),
        Cmd::Down { config, state_dir } => {
            let dir = match (config, state_dir) {
                (Some(c), _) => config::load_client(&c)?.tunnel.state_dir,
                (None, Some(d)) => d,
                (None, None) => config::TunnelConfig::default().state_dir,
            };
            runtime()?.block_on(daemon::down(&dir))
        }
        Cmd::CircuitTest {
            config,
            bytes,
            min_size,
            max_size,
            window,
            hold,
        } => {
            if min_size == 0 || min_size > max_size || max_size > MAX_PAYLOAD {
                bail!("--min-size and --max-size must satisfy 1 <= min <= max <= {MAX_PAYLOAD}");
            }
            if window == 0 {
                bail!("--window must be at least 1");
            }
            if !(hold.is_finite() && hold >= 0.0) {
                bail!("--hold must be a non-negative number of seconds");
            }
            let t = Transfer {
                bytes,
                min_size,
                max_size,
                window,
                hold: Duration::from_secs_f64(hold),
            };
            runtime()?.block_on(circuit_test(config, t))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

struct Transfer {
    bytes: u64,
    min_size: usize,
    max_size: usize,
    window: usize,
    hold: Duration,
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

async fn circuit_test(path: PathBuf, t: Transfer) -> Result<ExitCode> {
    let cfg = config::load_client(&path)?;
    let node = Node::new(daemon::client_node_config(&cfg));
    let mut d = Driver::new(node, &daemon::CLIENT_BINDS)?;
    let specs = daemon::hop_specs(&cfg.path);
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
        "circuit up: {} hops in {} ms",
        specs.len(),
        start.elapsed().as_millis()
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
            d.sockets.send_recycle(tx).await;
        }
        while outstanding.len() < t.window && sent_bytes < t.bytes {
            let p = payload(next_seq, &t);
            sent_bytes += p.len() as u64;
            outstanding.insert(next_seq, now);
            next_seq += 1;
            let tx = d.node.send_payload(now, &mut d.rng, id, &p)?;
            d.sockets.send_recycle(tx).await;
        }
        d.step(&mut events).await;
        for e in events.drain(..) {
            match e {
                Event::Data {
                    circuit,
                    buf,
                    range,
                } if circuit == id => {
                    let got = &buf[range];
                    if got.len() < 8 {
                        eprintln!("circuit-test: short payload of {} bytes", got.len());
                        return Ok(ExitCode::from(2));
                    }
                    let mut s = [0u8; 8];
                    s.copy_from_slice(&got[..8]);
                    let seq = u64::from_be_bytes(s);
                    if seq >= next_seq || got != payload(seq, &t).as_slice() {
                        eprintln!("circuit-test: payload {seq} corrupted");
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
