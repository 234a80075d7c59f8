//! The ground floor of the core: the bytes on the wire and the cryptography that
//! protects them. Nothing here keeps state across packets beyond what a caller
//! holds (replay windows, reassembly slots); time and randomness are parameters.

// Every datagram, descriptor and cache file is parsed here: no indexing, slicing,
// unwrap or expect on them (SECURITY.md).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

pub mod addr;
pub mod bucket;
pub mod crypto;
pub mod descriptor;
pub mod framing;
pub mod identity;
pub mod iface;
pub mod ip;
pub mod onion;
pub mod ports;
pub mod reorder;
pub mod replay;
pub mod vc;
pub mod wire;
