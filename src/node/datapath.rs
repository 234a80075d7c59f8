//! The data path of a tunnel end: IP packets into and out of circuits as tunnel
//! payloads ([`framing`]), whole or in fragments, with one reassembler per circuit.
//!
//! A client puts packets into its own circuits ([`Toward::Forward`]); an exit puts
//! them back into the circuits it terminates ([`Toward::Backward`]). [`DataPath::send`]
//! seals each cell through the [`Node`] and queues the datagrams, which the driver
//! takes with [`DataPath::poll_transmit`] (a paced link's cells wait in the node
//! for their slots and come out of [`Node::poll_transmit`]); [`DataPath::receive`] turns the payloads of
//! a circuit's DATA cells back into packets. Fragment buffers come from the driver's
//! [`Buffers`], so steady-state traffic allocates nothing.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use rand_core::{CryptoRng, RngCore};
use thiserror::Error;

use crate::node::{CircuitId, Node, SendError, Transmit};
use crate::proto::framing::{self, Fragmenter, PayloadError, Reassembler, Split};
use crate::proto::wire::{MAX_PAYLOAD, PAYLOAD_OFFSET};

/// Where a tunnel end gets the buffers of fragments and returns the buffers of
/// packets it has sent in fragments or dropped.
pub trait Buffers {
    /// A buffer to write a datagram into (its length does not matter).
    fn get(&mut self) -> Vec<u8>;
    /// A buffer that is no longer needed.
    fn put(&mut self, buf: Vec<u8>);
}

/// Which way a packet enters a circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    /// From the client, through its own circuit.
    Forward(CircuitId),
    /// From the exit, back to the client of a circuit it terminates.
    Backward(CircuitId),
}

/// Why a packet was not sent (whole or in part).
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    #[error("packet of {0} bytes is larger than {max}", max = framing::MAX_PACKET)]
    TooLarge(usize),
    #[error(transparent)]
    Send(#[from] SendError),
}

/// Fragmentation and reassembly for the circuits of one tunnel end.
#[derive(Debug, Default)]
pub struct DataPath {
    frag: Fragmenter,
    reasm: HashMap<CircuitId, Reassembler>,
    queue: VecDeque<Transmit>,
}

impl DataPath {
    /// Sends the IP packet in `buf[PAYLOAD_OFFSET..]` into a circuit, whole or in
    /// the fragments the [`Fragmenter`] numbers, and queues the datagrams. A packet
    /// is sent whole or not at all: after a fragment fails, the rest are not sent.
    pub fn send(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        node: &mut Node,
        to: Toward,
        buf: Vec<u8>,
        bufs: &mut impl Buffers,
    ) -> Result<(), Dropped> {
        let Some(len) = buf.len().checked_sub(PAYLOAD_OFFSET) else {
            bufs.put(buf);
            return Err(SendError::ShortBuffer.into());
        };
        match self.frag.split(len) {
            Split::Whole => {
                self.queue.extend(seal(now, rng, node, to, buf, len)?);
                Ok(())
            }
            Split::TooLarge => {
                bufs.put(buf);
                Err(Dropped::TooLarge(len))
            }
            Split::Fragments { id, count } => {
                let sent = (0..count).try_for_each(|i| {
                    let packet = buf.get(PAYLOAD_OFFSET..).unwrap_or_default();
                    let mut f = bufs.get();
                    f.resize(PAYLOAD_OFFSET + MAX_PAYLOAD, 0);
                    let written = f
                        .get_mut(PAYLOAD_OFFSET..)
                        .and_then(|out| framing::write_fragment(packet, id, i, out));
                    let Some(n) = written else {
                        bufs.put(f);
                        return Err(Dropped::TooLarge(len));
                    };
                    self.queue.extend(seal(now, rng, node, to, f, n)?);
                    Ok(())
                });
                bufs.put(buf);
                sent
            }
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.queue.pop_front()
    }

    /// The packet a DATA payload of `circuit` completes: the payload itself when it
    /// is a whole packet, the reassembled packet when it is the last missing
    /// fragment, else `None`. A payload that is neither is an error.
    pub fn receive<'a>(
        &'a mut self,
        now: Instant,
        circuit: CircuitId,
        payload: &'a mut [u8],
    ) -> Result<Option<&'a mut [u8]>, PayloadError> {
        self.reasm
            .entry(circuit)
            .or_default()
            .complete(now, payload)
    }

    /// Drops what is being reassembled for a circuit that ended.
    pub fn forget(&mut self, circuit: CircuitId) {
        self.reasm.remove(&circuit);
    }
}

fn seal(
    now: Instant,
    rng: &mut (impl RngCore + CryptoRng),
    node: &mut Node,
    to: Toward,
    buf: Vec<u8>,
    len: usize,
) -> Result<Option<Transmit>, SendError> {
    match to {
        Toward::Forward(id) => node.send_data(now, rng, id, buf, len),
        Toward::Backward(id) => node.send_backward(now, id, buf, len),
    }
}
