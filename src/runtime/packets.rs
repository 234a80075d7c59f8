//! Moving packets between a TUN device and circuits: whole or in fragments
//! (as [`framing`] decides), sealed by the node and sent on the sockets.
use std::time::Instant;

use anyhow::Result;

use crate::node::{CircuitId, SendError, Transmit};
use crate::proto::framing::{self, Fragmenter, Reassembler, Split};
use crate::proto::wire::{MAX_PAYLOAD, PAYLOAD_OFFSET};
use crate::runtime::driver::Driver;

/// Which way a packet enters a circuit.
#[derive(Clone, Copy)]
pub(crate) enum Toward {
    /// From the client, through its circuit.
    Forward(CircuitId),
    /// From the exit, back to the client of a circuit it terminates.
    Backward(CircuitId),
}

pub(crate) fn seal(
    d: &mut Driver,
    now: Instant,
    to: Toward,
    buf: Vec<u8>,
    len: usize,
) -> Result<Transmit, SendError> {
    match to {
        Toward::Forward(id) => d.node.send_data(now, &mut d.rng, id, buf, len),
        Toward::Backward(id) => d.node.send_backward(now, id, buf, len),
    }
}

/// Sends the packet in `buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + len]` into a circuit,
/// whole or in the fragments `frag` numbers.
pub(crate) async fn send_packet(
    d: &mut Driver,
    now: Instant,
    to: Toward,
    buf: Vec<u8>,
    len: usize,
    frag: &mut Fragmenter,
) {
    match frag.split(len) {
        Split::Whole => match seal(d, now, to, buf, len) {
            Ok(t) => d.sockets.send_recycle(t).await,
            Err(e) => tracing::debug!("packet dropped: {e}"),
        },
        Split::TooLarge => {
            tracing::debug!(
                "packet of {len} bytes dropped: larger than {}",
                framing::MAX_PACKET
            );
            d.sockets.pool.put(buf);
        }
        Split::Fragments { id, count } => {
            for i in 0..count {
                let mut f = d.sockets.pool.get();
                f.resize(PAYLOAD_OFFSET + MAX_PAYLOAD, 0);
                let Some(n) = framing::write_fragment(
                    &buf[PAYLOAD_OFFSET..PAYLOAD_OFFSET + len],
                    id,
                    i,
                    &mut f[PAYLOAD_OFFSET..],
                ) else {
                    d.sockets.pool.put(f);
                    break;
                };
                match seal(d, now, to, f, n) {
                    Ok(t) => d.sockets.send_recycle(t).await,
                    Err(e) => tracing::debug!("fragment dropped: {e}"),
                }
            }
            d.sockets.pool.put(buf);
        }
    }
}

/// The packet a DATA payload completes, if any (a bad payload is logged and dropped).
pub(crate) fn unwrap_payload<'a>(
    now: Instant,
    payload: &'a mut [u8],
    reasm: &'a mut Reassembler,
) -> Option<&'a mut [u8]> {
    reasm.complete(now, payload).unwrap_or_else(|e| {
        tracing::debug!("payload dropped: {e}");
        None
    })
}
