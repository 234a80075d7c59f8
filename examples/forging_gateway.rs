//! A hostile gateway for the netns tests (`netns-tests/p2p.sh`): a real gateway (it
//! relays circuits with the library's [`Node`] and publishes its own valid
//! descriptor to its bootstrap gateway, so crawling clients ask it), whose directory
//! service answers every `Get` with forgeries of the descriptors it learned:
//!
//! - `copy`: a real gateway's descriptor with this gateway's addresses put in, the
//!   identity and signature left as they were (the signature no longer verifies);
//! - `flip`: a real descriptor with one bit of its signature flipped;
//! - `claim`: a real gateway's onion key with this gateway's addresses, validly
//!   signed by a throwaway identity (a contender the real gateway must win against);
//! - `expired` and `future`: validly signed descriptors of throwaway gateways at
//!   this gateway's addresses whose times are already over or not yet valid.
//!
//! Its own descriptor comes first, as an honest server's does, so it may be listed;
//! nothing else it serves should ever be.
//!
//! ```text
//! forging_gateway --identity FILE --listen 198.18.9.2 --listen 2001:db8:9::2 \
//!     --port 9000 --bootstrap "198.18.1.2:9000 KEY" [--want 8] [--claims-out FILE]
//! ```
//!
//! It prints `forging_gateway KEY listening on ...` once bound, then
//! `forging_gateway: knows N gateways; forging` once it learned `--want` other
//! gateways from its bootstrap gateway (asked again every second until then), and a
//! line per answer it forged. With `--claims-out FILE` it then also writes a valid
//! claim on each gateway it knows ("KEY HEX" lines), which a test can plant in a
//! client's descriptor cache, as if the client had heard the forger first.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::signal::unix::{signal, SignalKind};

use anonnet::config::identity_file;
use anonnet::discovery::{Crawl, Directory, DirectorySettings};
use anonnet::discovery::{Message, Source};
use anonnet::node::{Event, HopSpec, Node, NodeConfig};
use anonnet::proto::descriptor::Descriptor;
use anonnet::proto::descriptor::PaddingBudget;
use anonnet::proto::identity::{Identity, PublicKey};
use anonnet::proto::wire::{Service, PAYLOAD_OFFSET};
use anonnet::runtime::discovery::{crawl_advance, crawl_event, unix_now};
use anonnet::runtime::driver::Driver;

struct Args {
    identity: PathBuf,
    listen: Vec<IpAddr>,
    port: u16,
    bootstrap: Vec<HopSpec>,
    want: usize,
    claims_out: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        identity: PathBuf::new(),
        listen: Vec::new(),
        port: 9000,
        bootstrap: Vec::new(),
        want: 1,
        claims_out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--identity" => a.identity = value.into(),
            "--listen" => a
                .listen
                .push(value.parse().context("--listen: an IP address")?),
            "--port" => a.port = value.parse().context("--port")?,
            "--want" => a.want = value.parse().context("--want")?,
            "--claims-out" => a.claims_out = Some(value.into()),
            "--bootstrap" => {
                let (addr, key) = value
                    .split_once(' ')
                    .context("--bootstrap: \"ADDR:PORT KEY\"")?;
                a.bootstrap.push(HopSpec {
                    addr: addr.parse().context("--bootstrap address")?,
                    key: key
                        .trim()
                        .parse::<PublicKey>()
                        .context("--bootstrap key")?
                        .0,
                });
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if a.listen.is_empty() || a.identity.as_os_str().is_empty() {
        bail!("--identity and --listen are required");
    }
    Ok(a)
}

/// `real`'s encoding with `addrs` in place of its addresses and its own identity and
/// signature kept: a copy whose signature no longer covers what it says. (Signed by a
/// throwaway key for the layout, then the identity at offset 2 and the signature, the
/// last 64 bytes, put back: `docs/PROTOCOL.md` §10.)
fn copy_with_addrs(
    rng: &mut Rng,
    real: &[u8],
    d: &Descriptor,
    addrs: &[IpAddr],
) -> Option<Vec<u8>> {
    let mut out = resigned(rng, d, addrs, d.published, d.expires)?;
    out[2..34].copy_from_slice(&d.identity);
    let (n, m) = (out.len(), real.len());
    out[n - 64..].copy_from_slice(&real[m - 64..]);
    Some(out)
}

type Rng = rand_chacha::ChaCha20Rng;

/// `d` with `addrs` and these times, validly signed by a new throwaway identity.
fn resigned(
    rng: &mut Rng,
    d: &Descriptor,
    addrs: &[IpAddr],
    published: u64,
    expires: u64,
) -> Option<Vec<u8>> {
    let key = Identity::generate(rng).signing_key();
    Descriptor {
        identity: key.verifying_key().to_bytes(),
        addrs: addrs.to_vec(),
        published,
        expires,
        ..d.clone()
    }
    .sign(&key)
    .ok()
}

/// The forged answer to a `Get` for `max` descriptors: own descriptor first, then
/// forgeries of every other descriptor held, then two throwaway gateways with bad
/// times; at most `max` in all, then `End`. Returns the payloads and a summary.
fn forge(rng: &mut Rng, dir: &Directory, addrs: &[IpAddr], max: u8) -> (Vec<Vec<u8>>, String) {
    let now = unix_now();
    let mut descs: Vec<(&str, Vec<u8>)> = Vec::new();
    if let Some(own) = dir.own() {
        descs.push(("own", own.to_vec()));
    }
    let mut template = None;
    for e in dir.store.iter().filter(|e| e.source() != Source::Own) {
        let (bytes, d) = (e.bytes(), e.descriptor());
        if let Some(c) = copy_with_addrs(rng, bytes, d, addrs) {
            descs.push(("copy", c));
        }
        let mut flipped = bytes.to_vec();
        let n = flipped.len();
        flipped[n - 64] ^= 0x01;
        descs.push(("flip", flipped));
        if let Some(c) = resigned(rng, d, addrs, now, now + 3600) {
            descs.push(("claim", c));
        }
        template = Some(d.clone());
    }
    if let Some(mut t) = template {
        // Throwaway gateways of their own (new onion keys), valid but for their times.
        t.onion_key = Identity::generate(rng).public().0;
        if let Some(c) = resigned(rng, &t, addrs, now - 7200, now - 3600) {
            descs.push(("expired", c));
        }
        t.onion_key = Identity::generate(rng).public().0;
        if let Some(c) = resigned(rng, &t, addrs, now + 7200, now + 10_800) {
            descs.push(("future", c));
        }
    }
    descs.truncate(usize::from(max));
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for (k, _) in &descs {
        match kinds.iter_mut().find(|(x, _)| x == k) {
            Some((_, n)) => *n += 1,
            None => kinds.push((k, 1)),
        }
    }
    let summary = kinds
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    let sent = u8::try_from(descs.len()).unwrap_or(u8::MAX);
    let mut out: Vec<Vec<u8>> = descs
        .iter()
        .map(|(_, b)| Message::Desc(b).to_vec())
        .collect();
    out.push(Message::End { sent }.to_vec());
    (out, summary)
}

/// Writes a valid claim (see `claim` above) on each gateway known, one per line:
/// the claimed key, a space, the descriptor in hex. A test can plant one in a
/// client's cache, as if the client had heard the forger first.
fn write_claims(
    rng: &mut Rng,
    dir: &Directory,
    addrs: &[IpAddr],
    path: &std::path::Path,
) -> Result<()> {
    let now = unix_now();
    let mut text = String::new();
    for e in dir.store.iter().filter(|e| e.source() != Source::Own) {
        let d = e.descriptor();
        if let Some(c) = resigned(rng, d, addrs, now, now + 3600) {
            let hex: String = c.iter().map(|b| format!("{b:02x}")).collect();
            text.push_str(&format!("{} {hex}\n", PublicKey(d.onion_key)));
        }
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args = parse_args()?;
    let id = identity_file::read(&args.identity)?;
    let mut dir = Directory::new(
        id.clone(),
        DirectorySettings {
            addrs: args.listen.clone(),
            ports: (args.port, args.port),
            exit_summary: None,
            share: true,
            rate: 100,
            lifetime: 10_800,
            padding: PaddingBudget {
                rate: 1_250_000,
                share: 50,
            },
        },
        unix_now(),
    )?;
    let node = Node::new(NodeConfig {
        static_key: Some(*id.secret()),
        directory: true,
        ..NodeConfig::default()
    });
    let binds: Vec<SocketAddr> = args
        .listen
        .iter()
        .map(|&ip| SocketAddr::new(ip, args.port))
        .collect();
    let mut d = Driver::new(node, &binds)?;
    let bound: Vec<String> = d.sockets.local_addrs().map(|a| a.to_string()).collect();
    println!(
        "forging_gateway {} listening on {}",
        id.public(),
        bound.join(" ")
    );
    std::io::stdout().flush()?;

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut wake = tokio::time::interval(Duration::from_millis(250));
    let mut gossip: Option<Crawl> = None;
    let mut next_gossip = Instant::now();
    let mut ready = false;
    let mut events = Vec::new();
    loop {
        tokio::select! {
            () = d.step(&mut events) => {}
            _ = wake.tick() => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        for e in events.drain(..) {
            let e = match gossip.as_mut() {
                Some(g) => match crawl_event(&mut d, g, &mut dir.store, e).await {
                    Some(e) => e,
                    None => continue,
                },
                None => e,
            };
            match e {
                Event::ServiceData {
                    circuit,
                    service: Service::Directory,
                    cmd: _,
                    buf,
                    range,
                } => {
                    if let Ok(Message::Get { max }) = Message::parse(&buf[range]) {
                        let (payloads, summary) = forge(&mut d.rng, &dir, &args.listen, max);
                        let now = Instant::now();
                        for p in payloads {
                            let mut b = d.sockets.pool.get();
                            b.resize(PAYLOAD_OFFSET + p.len(), 0);
                            b[PAYLOAD_OFFSET..].copy_from_slice(&p);
                            if let Ok(Some(t)) = d.node.send_backward(now, circuit, b, p.len()) {
                                d.sockets.send_recycle(t).await;
                            }
                        }
                        println!("forging_gateway: answered a Get with {summary}");
                        std::io::stdout().flush()?;
                    }
                    d.sockets.pool.put(buf);
                }
                Event::Data { buf, .. } | Event::ServiceData { buf, .. } => d.sockets.pool.put(buf),
                _ => {}
            }
        }
        dir.tick(unix_now())?;
        // Gossip with the bootstrap gateway (publishing our own descriptor) until it
        // has told us of `want` other gateways.
        let known = dir
            .store
            .iter()
            .filter(|e| e.source() != Source::Own)
            .count();
        if gossip.is_none() && !ready && Instant::now() >= next_gossip {
            gossip = Some(Crawl::gossip(args.bootstrap.clone(), dir.own()));
            next_gossip = Instant::now() + Duration::from_secs(1);
        }
        if let Some(g) = gossip.as_mut() {
            crawl_advance(&mut d, g, &dir.store).await;
            if g.done(&dir.store) {
                gossip = None;
            }
        }
        if !ready && known >= args.want {
            ready = true;
            if let Some(path) = &args.claims_out {
                write_claims(&mut d.rng, &dir, &args.listen, path)?;
            }
            println!("forging_gateway: knows {known} gateways; forging");
            std::io::stdout().flush()?;
        }
    }
    Ok(())
}
