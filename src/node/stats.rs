//! What a node counts: datagrams, cells, drops by reason, rekeys.

/// Counters of everything the node dropped or did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub rx_datagrams: u64,
    pub dropped_malformed: u64,
    pub dropped_unknown_type: u64,
    pub dropped_unknown_index: u64,
    pub dropped_unknown_circuit: u64,
    pub dropped_auth: u64,
    /// LINK_INITs whose MAC did not verify (junk, or sent without the gateway's key):
    /// dropped before they cost a handshake token.
    pub dropped_mac: u64,
    pub dropped_replay: u64,
    pub dropped_expired: u64,
    pub dropped_handshake_replay: u64,
    pub dropped_rate_limited: u64,
    pub dropped_protocol: u64,
    pub relayed_forward: u64,
    pub relayed_backward: u64,
    pub circuits_accepted: u64,
    pub circuits_refused: u64,
    /// Circuits freed when the table was full, from the link that held the most.
    pub circuits_evicted: u64,
    /// Circuits a peer tore down with DESTROY.
    pub destroys_received: u64,
    /// KEEPALIVEs that came back on the node's own circuits.
    pub keepalives_answered: u64,
    pub rekeys: u64,
    pub link_rekeys: u64,
    /// LINK_INITs answered with a COOKIE_REPLY (under load, without a valid mac2).
    pub cookies_sent: u64,
    /// COOKIE_REPLYs accepted (the handshake was sent again with mac2).
    pub cookies_received: u64,
    /// PINGs answered with a PONG.
    pub pings_answered: u64,
    /// PONGs received (answers to this node's PINGs).
    pub pongs_received: u64,
    /// Links declared dead: they sent and heard nothing back for `LINK_DEAD_AFTER`.
    pub links_dead: u64,
    /// Links the peer closed (CLOSE: it is stopping).
    pub links_closed: u64,
    /// TRUNCATEDs: sent by a relay for a circuit whose next hop's link died, or
    /// received by a client (which then closed the circuit).
    pub truncated: u64,
    /// PADDING cells this node sent (a client's, or a hop's echo) and link padding
    /// cells of its paced links, and their bytes on the wire.
    pub padding_sent: u64,
    pub padding_bytes_sent: u64,
    /// PADDING cells addressed to this node (a hop's, or a client's from a hop)
    /// and link padding cells, and their bytes on the wire.
    pub padding_received: u64,
    pub padding_bytes_received: u64,
    /// PACEs honoured: a peer's link is paced at the rate it asked for, capped.
    pub paces_received: u64,
    /// PACEs refused (this gateway's `pace_limit` is 0, or its `pace_budget` is
    /// taken by other links).
    pub pace_refused: u64,
    /// Datagrams that waited in a paced link's queue for a slot.
    pub pace_queued: u64,
    /// Datagrams dropped because a paced link's queue was full.
    pub pace_dropped: u64,
    /// PADDINGs this gateway echoed (also in `padding_sent`).
    pub padding_echoed: u64,
    /// Echo requests left unanswered: the echo would have gone over this gateway's
    /// `padding_rate` or `padding_share` (the request still counts as received).
    pub padding_refused: u64,
    /// Paddings this client's machines scheduled but did not send: they would have
    /// gone over the share its circuit's gateways allow.
    pub padding_capped: u64,
    /// Handshake tokens taken, by budget (`handshake_rate` per second each): new
    /// links and link rekeys, BUILDs, circuit rekeys. Those refused are in
    /// `dropped_rate_limited`.
    pub handshakes_link: u64,
    pub handshakes_build: u64,
    pub handshakes_rekey: u64,
}

impl Stats {
    /// Every counter but `rx_datagrams`, summed: a datagram the node handled without
    /// sending or reporting anything moved at least one of them (tests/forgery).
    #[must_use]
    pub fn outcomes(&self) -> u64 {
        let Self {
            rx_datagrams: _,
            dropped_malformed,
            dropped_unknown_type,
            dropped_unknown_index,
            dropped_unknown_circuit,
            dropped_auth,
            dropped_mac,
            dropped_replay,
            dropped_expired,
            dropped_handshake_replay,
            dropped_rate_limited,
            dropped_protocol,
            relayed_forward,
            relayed_backward,
            circuits_accepted,
            circuits_refused,
            circuits_evicted,
            destroys_received,
            keepalives_answered,
            rekeys,
            link_rekeys,
            cookies_sent,
            cookies_received,
            pings_answered,
            pongs_received,
            links_dead,
            links_closed,
            truncated,
            padding_sent,
            padding_bytes_sent: _,
            padding_received,
            padding_bytes_received: _,
            paces_received,
            pace_refused,
            pace_queued,
            pace_dropped,
            padding_echoed: _,
            padding_refused,
            padding_capped: _,
            handshakes_link: _,
            handshakes_build: _,
            handshakes_rekey: _,
        } = self;
        [
            dropped_malformed,
            dropped_unknown_type,
            dropped_unknown_index,
            dropped_unknown_circuit,
            dropped_auth,
            dropped_mac,
            dropped_replay,
            dropped_expired,
            dropped_handshake_replay,
            dropped_rate_limited,
            dropped_protocol,
            relayed_forward,
            relayed_backward,
            circuits_accepted,
            circuits_refused,
            circuits_evicted,
            destroys_received,
            keepalives_answered,
            rekeys,
            link_rekeys,
            cookies_sent,
            cookies_received,
            pings_answered,
            pongs_received,
            links_dead,
            links_closed,
            truncated,
            padding_sent,
            padding_received,
            paces_received,
            pace_refused,
            pace_queued,
            pace_dropped,
            padding_refused,
        ]
        .into_iter()
        .fold(0u64, |sum, &c| sum.saturating_add(c))
    }
}
