//! The tokio runtime: drivers that move bytes between UDP sockets, TUN devices and
//! the sans-IO core, and the long-running commands assembled from them. Nothing
//! here makes a protocol decision.

pub mod daemon;
pub mod directory;
pub mod driver;
pub mod tun;
