//! Peer-to-peer discovery (`docs/PROTOCOL.md` §11): how clients and gateways learn the
//! network without a central directory.
//!
//! Every gateway publishes a self-signed [`Descriptor`](crate::proto::descriptor::Descriptor) and keeps a [`Store`] of the
//! descriptors it knows. A requester builds a one-hop circuit to a gateway with the
//! DIRECTORY service and sends one [`Message::Get`]; the gateway's [`Server`] answers
//! with a random sample of its store ([`Message::Desc`] each, then [`Message::End`]) or
//! with [`Message::Refused`]. The [`Crawler`] decides whom to ask and feeds the answers
//! into the requester's store. Clients crawl until they know enough gateways; gateways
//! gossip with the same code, asking a few random peers each round
//! ([`Crawler::gossip`]); [`GatewayDiscovery`] runs a gateway's directory and its
//! gossip rounds on the clock its driver passes in.
//!
//! # Poisoning
//!
//! Any gateway may answer with anything, so the store verifies every descriptor and
//! bounds what one source can add (per answer and in total), what one network can hold
//! (per IPv4 /24 and per IPv6 /48) and the total ([`StoreLimits`]). A descriptor names
//! its gateway by onion key, which anyone can claim (see [`crate::proto::descriptor`]); the
//! store therefore keeps the first identity that claimed an onion key and lets only
//! that identity publish newer versions, and lets one identity hold one onion key.
//! The one exception is a descriptor served by the gateway itself: an answer on a
//! circuit to onion key `K` comes from the holder of `K`'s secret (the NK handshake
//! proves it), so its descriptor for `K` is authentic and replaces another identity's
//! claim. The server puts its own descriptor first in every answer for that reason.
//! A second identity's claim on a held key is kept as the key's contender (one per
//! key, under the same caps), and the crawler asks contested gateways first, at the
//! addresses of both claims: whichever claim is false, the gateway's answer settles
//! the contest, so a forger who claims a key first cannot hide the gateway.
//!
//! Sans-IO: unix seconds (`now_unix`) for descriptor validity and [`Instant`](std::time::Instant)s for
//! timeouts and rate limits are passed in, randomness comes from the caller's RNG.

// Messages from gateways reach this module: no indexing, slicing, unwrap or expect
// on them (SECURITY.md).
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

mod crawl;
mod crawl_plan;
mod directory;
mod gateway;
mod message;
mod outbox;
mod server;
mod store;

pub use self::crawl::Crawl;
pub use self::crawl_plan::{
    CrawlStats, Crawler, Progress, DEFAULT_PARALLEL, GOSSIP_INTERVAL, GOSSIP_PEERS, PER_QUERY,
    QUERY_TIMEOUT,
};
pub use self::directory::{Directory, DirectoryError, DirectorySettings};
pub use self::gateway::{published_addrs, GatewayDiscovery};
pub use self::message::{Message, MessageError, MAX_GET, MAX_MESSAGE_LEN};
pub use self::outbox::Outbox;
pub use self::server::{RefuseReason, Reply, Server, ServerStats, Session, GETS_PER_CIRCUIT};
pub use self::store::*;

#[cfg(test)]
mod tests;
