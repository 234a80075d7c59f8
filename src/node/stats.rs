//! What a node counts: datagrams, cells, drops by reason, rekeys.

/// Counters of everything the node dropped or did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    pub rx_datagrams: u64,
    pub dropped_malformed: u64,
    pub dropped_unknown_type: u64,
    pub dropped_unknown_index: u64,
    pub dropped_unknown_circuit: u64,
    pub dropped_auth: u64,
    pub dropped_replay: u64,
    pub dropped_expired: u64,
    pub dropped_handshake_replay: u64,
    pub dropped_rate_limited: u64,
    pub dropped_protocol: u64,
    pub relayed_forward: u64,
    pub relayed_backward: u64,
    pub circuits_accepted: u64,
    pub circuits_refused: u64,
    /// Circuits a peer tore down with DESTROY.
    pub destroys_received: u64,
    /// KEEPALIVEs that came back on the node's own circuits.
    pub keepalives_answered: u64,
    pub rekeys: u64,
    pub link_rekeys: u64,
}
