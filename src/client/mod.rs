//! The client's sans-IO decisions: which gateways a path goes through
//! ([`path`]: path rules, sticky entry guards) and which circuit carries each flow
//! ([`flows`]: the circuit pool and flow isolation).

pub mod flows;
pub mod path;
