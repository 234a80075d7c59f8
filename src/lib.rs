//! anonnet: a multi-hop anonymizing IP VPN.
//!
//! The folders are the floors (see `docs/DESIGN.md`, "Map"):
//!
//! - the sans-IO core, which holds all protocol logic and takes time and randomness
//!   as inputs: [`proto`] (wire formats and cryptography), [`node`] (the link and
//!   circuit state machine), [`exit`] (policy, packet rewriting, NAT), [`discovery`]
//!   (descriptor store, directory server, crawler) and [`client`] (path selection,
//!   guards, flow routing);
//! - [`config`]: the TOML files, parsed into the core's settings;
//! - [`runtime`]: the tokio drivers that move bytes between sockets, TUN devices and
//!   the core, and the long-running commands built from them;
//! - [`sys`]: what touches the kernel (netlink, nftables, the resolver).
//!
//! `tests/layers.rs` fails when a core folder imports a driver, an OS crate, a clock
//! or an entropy source.

pub mod client;
pub mod config;
pub mod discovery;
pub mod exit;
pub mod files;
pub mod node;
pub mod proto;
pub mod runtime;
pub mod sys;
