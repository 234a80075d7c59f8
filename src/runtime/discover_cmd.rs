//! `anonnet discover`: learn the network and print it.
use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::config::{self};
use crate::discovery::REJECTION_GROUPS;
use crate::node::Node;
use crate::runtime::discovery::{self, load_store, save_cache, unix_now, CRAWL_LIMIT};
use crate::runtime::driver::Driver;
use crate::runtime::paths::{guard_hop, load_guards};
use crate::runtime::{client_node_config, hop_specs, CLIENT_BINDS};

/// `anonnet discover --config FILE [--json]`: learns the network from the cache and
/// the bootstrap gateways and prints what it knows.
pub async fn discover_cmd(path: &Path, json: bool) -> Result<ExitCode> {
    let cfg = config::load_client(path)?;
    crate::runtime::state::adopt_old_default(&cfg.tunnel.state_dir);
    let disc = &cfg.discovery;
    if disc.bootstrap.is_empty() {
        bail!("{}: discovery.bootstrap is empty: list at least one gateway (\"ADDR:PORT PUBLIC-KEY\")", path.display());
    }
    let mut d = Driver::new(Node::new(client_node_config(&cfg)), &CLIENT_BINDS)?;
    let mut store = load_store(&cfg.tunnel.state_dir);
    let cached = store.len();
    let before = *store.stats();
    let mut last = Instant::now();
    // A progress line, redrawn in place, only on a terminal.
    let terminal = std::io::stderr().is_terminal();
    let mut progress = false;
    // Through the saved guard, as `up` crawls (PROTOCOL §11).
    let guard = guard_hop(&load_guards(&cfg), &store);
    let (st, via) = discovery::crawl(
        &mut d,
        &mut store,
        disc.target,
        guard,
        hop_specs(&disc.bootstrap),
        CRAWL_LIMIT,
        |s, st| {
            if terminal && last.elapsed() >= Duration::from_millis(250) {
                last = Instant::now();
                progress = true;
                eprint!(
                    "\rdiscovering: {} gateways known, {} queries ({} answered, {} refused)   ",
                    s.len(),
                    st.queries,
                    st.answered,
                    st.refused
                );
            }
        },
    )
    .await;
    if progress {
        eprintln!();
    }
    tracing::info!(
        "discovery done: {} gateways known ({cached} from the cache); {} queries, {} answered, {} refused, {} unreachable; {}",
        store.len(),
        st.queries,
        st.answered,
        st.refused,
        st.unreachable + st.timed_out,
        via.map_or("no gateway carried the queries".into(), |v| format!(
            "queries after bootstrap went through {} {}",
            v.addr,
            crate::proto::identity::PublicKey(v.key)
        ))
    );
    // What the store refused during this crawl, by reason (forged or stale
    // descriptors show up here).
    let (now, then) = (
        store.stats().rejected_by_reason(),
        before.rejected_by_reason(),
    );
    let reasons: Vec<String> = REJECTION_GROUPS
        .iter()
        .zip(now.iter().zip(then))
        .map(|(name, (n, t))| format!("{} {name}", n - t))
        .collect();
    tracing::info!(
        "discovery rejected {} of {} descriptors received: {}; {} kept as contenders",
        st.descriptors - st.accepted,
        st.descriptors,
        reasons.join(", "),
        store.stats().contenders - before.contenders,
    );
    if let Err(e) = save_cache(&cfg.tunnel.state_dir, &store) {
        tracing::warn!("{e:#}");
    }
    let now = unix_now();
    let mut rows: Vec<_> = store.iter().map(|e| e.descriptor().clone()).collect();
    rows.sort_by_key(|r| r.addrs.first().copied());
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "key": crate::proto::identity::PublicKey(r.onion_key).to_string(),
                    "addrs": r.addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "ports": [r.ports.0, r.ports.1],
                    "exit": r.exit,
                    "policy": r.policy_summary,
                    "published": r.published,
                    "expires": r.expires,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&v).context("cannot format JSON")?
        );
    } else {
        println!(
            "{:<46} {:<34} {:<11} {:<4} {:>8}  POLICY",
            "KEY", "ADDRESSES", "PORTS", "EXIT", "EXPIRES"
        );
        for r in &rows {
            let addrs: Vec<String> = r.addrs.iter().map(ToString::to_string).collect();
            let ports = if r.ports.0 == r.ports.1 {
                r.ports.0.to_string()
            } else {
                format!("{}-{}", r.ports.0, r.ports.1)
            };
            println!(
                "{:<46} {:<34} {:<11} {:<4} {:>7}m  {}",
                crate::proto::identity::PublicKey(r.onion_key).to_string(),
                addrs.join(","),
                ports,
                if r.exit { "yes" } else { "no" },
                r.expires.saturating_sub(now) / 60,
                r.policy_summary
            );
        }
    }
    if st.answered == 0 {
        return Err(discovery::nobody_answered(&hop_specs(&disc.bootstrap)).into());
    }
    Ok(ExitCode::SUCCESS)
}
