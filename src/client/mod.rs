//! The client's sans-IO decisions: which gateways a path goes through
//! ([`path`]: path rules, sticky entry guards; [`avoid`]: gateways that just
//! failed) and which circuit carries each flow
//! ([`flows`]: the circuit pool and flow isolation), which TCP connections each
//! circuit carries, to reset them when it dies ([`conns`]), and what it does to the
//! packets themselves ([`host_packets`]: MSS clamping, refusals), and the virtual
//! circuits that join several circuits to one exit ([`virtual_circuit`]).

// TUN packets, descriptors and the guard state file reach this module: no indexing,
// slicing, unwrap or expect on them (SECURITY.md).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

pub mod avoid;
pub mod conns;
pub mod flows;
pub mod host_packets;
pub mod path;
pub mod virtual_circuit;
