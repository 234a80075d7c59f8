//! anonnet: a multi-hop anonymizing IP VPN.
//!
//! The crate is split into a sans-IO core (every module except `driver`), which holds
//! all protocol logic and takes time and randomness as inputs, and thin drivers that
//! move bytes between sockets and the core. See `docs/DESIGN.md`.

pub mod config;
pub mod crypto;
pub mod daemon;
pub mod descriptor;
pub mod discover;
pub mod discovery;
pub mod driver;
pub mod exit;
pub mod flows;
pub mod identity;
pub mod limits;
pub mod node;
pub mod onion;
pub mod packet;
pub mod path;
pub mod policy;
pub mod replay;
pub mod sys;
pub mod tun_io;
pub mod tunnel;
pub mod wire;
