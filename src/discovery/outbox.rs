//! What discovery hands its driver: datagrams to send, and buffers it is done with.

use crate::node::Transmit;

/// Filled by [`super::Crawl`] and [`super::Directory`], emptied by the driver.
#[derive(Debug, Default)]
pub struct Outbox {
    pub transmits: Vec<Transmit>,
    pub spent: Vec<Vec<u8>>,
}
