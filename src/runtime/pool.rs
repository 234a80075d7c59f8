//! The datagram buffers every daemon shares between its tasks and the core.

use std::sync::{Arc, Mutex};

use crate::node::Buffers;
use crate::proto::wire::MAX_DATAGRAM;

/// Buffers kept for reuse; beyond this many, returned buffers are freed.
pub(crate) const POOL_CAP: usize = 4096;

/// Datagram buffers shared by the receive tasks and the core, so that steady-state
/// traffic allocates nothing: a buffer goes socket -> node (relayed in place) ->
/// socket -> pool -> socket. Every buffer has the same capacity, large enough for a
/// datagram and, in a tunnel daemon, for a TUN packet read at `PAYLOAD_OFFSET`.
#[derive(Clone)]
pub struct Pool {
    bufs: Arc<Mutex<Vec<Vec<u8>>>>,
    capacity: usize,
}

impl Default for Pool {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl Pool {
    /// A pool of buffers of at least `capacity` bytes (never less than a datagram).
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            bufs: Arc::default(),
            capacity: capacity.max(MAX_DATAGRAM + 1),
        }
    }

    /// A buffer of `MAX_DATAGRAM + 1` bytes (one more than any valid datagram, so an
    /// oversized one is seen as such rather than truncated to a valid length).
    #[must_use]
    pub fn get(&self) -> Vec<u8> {
        let reused = self.bufs.lock().ok().and_then(|mut p| p.pop());
        let mut buf = reused.unwrap_or_else(|| Vec::with_capacity(self.capacity));
        buf.resize(MAX_DATAGRAM + 1, 0);
        buf
    }

    /// Returns a buffer for reuse.
    pub fn put(&self, buf: Vec<u8>) {
        if let Ok(mut p) = self.bufs.lock() {
            if p.len() < POOL_CAP && buf.capacity() >= self.capacity {
                p.push(buf);
            }
        }
    }
}

impl Buffers for Pool {
    fn get(&mut self) -> Vec<u8> {
        Pool::get(self)
    }
    fn put(&mut self, buf: Vec<u8>) {
        Pool::put(self, buf);
    }
}
