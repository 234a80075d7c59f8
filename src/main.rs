//! The `anonnet` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use rand_core::OsRng;

use anonnet::config::{self, identity_file};
use anonnet::proto::identity::Identity;
use anonnet::runtime::{self, circuit_test_cmd as circuit_test};

/// anonnet: a multi-hop anonymizing VPN. Packets are wrapped in one layer of Noise
/// encryption per gateway and sent over UDP through a chain of 1 to 8 gateways.
#[derive(Parser)]
#[command(
    version,
    about = "A multi-hop anonymizing IP VPN: onion layers of Noise over UDP",
    long_about = None,
    after_help = "Exit status: 0 done; 78 a bad config file; 69 the network failed (no gateway\n\
                  answered, a circuit did not come up); 1 any other error; 2 bad arguments."
)]
struct Cli {
    /// Logs (stderr): info, -v debug, -vv trace; RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The `--metrics` option of the daemons.
#[derive(clap::Args)]
struct MetricsArg {
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9477):
    /// counters of circuits, traffic, drops by reason, handshakes, padding and
    /// the exit policy. Off by default; whoever reaches ADDR can read them, so
    /// keep it on loopback or a private network.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a gateway identity (key pair) in a new file
    ///
    /// Writes a new X25519 key pair to the file (mode 0600) and prints its public
    /// key, the form client configs and bootstrap lines use.
    Keygen {
        /// Where to write the identity.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print an identity's public key
    ///
    /// Prints the public key of an identity file, in the form client configs use.
    Pubkey {
        /// The identity file written by `anonnet keygen`.
        file: PathBuf,
    },
    /// Run a gateway: relay circuits, or with --exit be an exit
    ///
    /// Relays circuits for clients and other gateways, answers discovery and
    /// gossips descriptors (see examples/gateway.toml). With --exit it also sends
    /// the circuits' packets out to the internet. Runs until SIGINT/SIGTERM;
    /// SIGHUP re-reads the config: its log filter and exit.policy change at once.
    Gateway {
        /// The gateway's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Also be an exit: send circuits' packets out through a TUN device with
        /// NAT, under the exit policy of the config's [exit] section. Needs root
        /// (CAP_NET_ADMIN).
        #[arg(long)]
        exit: bool,
        #[command(flatten)]
        metrics: MetricsArg,
    },
    /// Route all of this host's traffic through the tunnel (root)
    ///
    /// Creates the TUN device (anon0), builds circuits to exits (through the
    /// configured path, or random paths among discovered gateways), and routes all
    /// of this host's traffic through them, each destination on its own circuit,
    /// with a kill switch that blocks everything else. Runs in the foreground until
    /// SIGINT/SIGTERM, then removes all it set up; SIGHUP re-reads the config's
    /// log filter. Needs root (CAP_NET_ADMIN).
    Up {
        /// The client's TOML config (see examples/client.toml).
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        metrics: MetricsArg,
    },
    /// Learn the network and list the gateways known
    ///
    /// Asks the bootstrap gateways of a client config, then the gateways they name,
    /// and prints every gateway known (also kept in the state directory's cache,
    /// which `up` uses). No root needed.
    Discover {
        /// The client's TOML config with a [discovery] section.
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show what `anonnet up` or a gateway is doing (root)
    ///
    /// Asks the `anonnet up` of this network namespace over its control socket:
    /// its state (up, or blocked while no circuit is up), whether the kill switch is
    /// in the kernel, the device and DNS, each circuit with its legs (hops with
    /// addresses and the first characters of their keys, round trip), the guards
    /// and how many gateways it knows. With --gateway PORT, asks the gateway
    /// listening from that port instead: the circuits it relays, its counters (and
    /// an exit's). Exits 1 when none runs.
    Status {
        /// Ask the gateway whose listen_ports start at PORT (root or its user).
        #[arg(long, value_name = "PORT")]
        gateway: Option<u16>,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Test the running tunnel for leaks (root)
    ///
    /// While `anonnet up` runs in this network namespace, checks that: it has a
    /// circuit up; the kill switch is in the kernel and refuses a datagram sent
    /// straight out of every other interface; every nameserver is reached through
    /// the tunnel; a test server sees the exit's address, not this host's; IPv6
    /// goes through the tunnel or nowhere; a packet as large as the tunnel's MTU
    /// gets through. One PASS/FAIL line per check, then a summary. Exit status: 0
    /// all passed, 1 a check failed or no `up` runs.
    Check {
        /// The test server: an http:// URL answering with the address it sees, as
        /// plain text.
        #[arg(long, default_value = runtime::check_cmd::DEFAULT_SERVER)]
        server: String,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Stop `anonnet up`, or undo what a killed one left (root)
    ///
    /// With an `anonnet up` running in this network namespace, asks it to stop
    /// (it removes what it set up, as on SIGTERM) and waits until it has. Else
    /// removes everything a killed `up` left (routes, rules, kill switch, DNS,
    /// device), as recorded in its state directory; the kill switch stays until
    /// then.
    Down {
        /// Take the state directory from this client config.
        #[arg(long, conflicts_with = "state_dir")]
        config: Option<PathBuf>,
        /// The state directory `up` used (default /var/lib/anonnet).
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// Check a circuit end to end against an echo gateway
    ///
    /// Builds a circuit through the configured path to an echo endpoint, sends
    /// payloads of many sizes and checks every echoed byte (a test without TUN).
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
        #[arg(long, default_value_t = circuit_test::MAX_SIZE)]
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
    runtime::logging::init(cli.verbose);
    match run(cli.cmd) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(runtime::exit_status(&e))
        }
    }
}

fn run(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Keygen { out, force } => {
            let id = Identity::generate(&mut OsRng);
            identity_file::write(&id, &out, force)?;
            println!("{}", id.public());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Pubkey { file } => {
            println!("{}", identity_file::read(&file)?.public());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Gateway {
            config,
            exit,
            metrics,
        } => tokio_runtime()?.block_on(runtime::gateway::gateway(&config, exit, metrics.metrics)),
        Cmd::Up { config, metrics } => {
            tokio_runtime()?.block_on(runtime::client::up(&config, metrics.metrics))
        }
        Cmd::Discover { config, json } => {
            tokio_runtime()?.block_on(runtime::discover_cmd::discover_cmd(&config, json))
        }
        Cmd::Status {
            gateway: Some(port),
            json,
        } => tokio_runtime()?.block_on(runtime::gateway::status(port, json)),
        Cmd::Status {
            gateway: None,
            json,
        } => tokio_runtime()?.block_on(runtime::client::status(json)),
        Cmd::Check { server, json } => {
            tokio_runtime()?.block_on(runtime::check_cmd::check_cmd(&server, json))
        }
        Cmd::Down { config, state_dir } => {
            let dir = match (config, state_dir) {
                (Some(c), _) => config::load_client(&c)?.tunnel.state_dir,
                (None, Some(d)) => d,
                (None, None) => config::TunnelConfig::default().state_dir,
            };
            tokio_runtime()?.block_on(runtime::client::down(&dir))
        }
        Cmd::CircuitTest {
            config,
            bytes,
            min_size,
            max_size,
            window,
            hold,
        } => {
            let t = circuit_test::Transfer::new(bytes, min_size, max_size, window, hold)?;
            tokio_runtime()?.block_on(circuit_test::run(&config, t))
        }
    }
}

fn tokio_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
