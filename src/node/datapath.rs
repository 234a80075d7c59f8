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
//!
//! On the legs of a virtual circuit (PROTOCOL §12) packets travel in VDATA cells
//! instead, each payload after the packet's sequence number ([`DataPath::send_seq`],
//! [`DataPath::receive_seq`]); ordering them is the virtual circuit's business.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use rand_core::{CryptoRng, RngCore};
use thiserror::Error;

use crate::node::{CircuitId, Node, SendError, Transmit};
use crate::proto::framing::{Carrier, Fragmenter, PayloadError, Reassembler, Split};
use crate::proto::vc::{self, SEQ_LEN};
use crate::proto::wire::{Cmd, MAX_PAYLOAD, PAYLOAD_OFFSET};

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
    #[error("packet of {0} bytes is larger than a circuit carries")]
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
        self.send_as(now, rng, node, to, None, buf, bufs)
    }

    /// [`DataPath::send`] in VDATA cells: packet number `seq` of a virtual circuit,
    /// on its leg `to`. Every fragment carries the number.
    #[allow(clippy::too_many_arguments)]
    pub fn send_seq(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        node: &mut Node,
        to: Toward,
        seq: u32,
        buf: Vec<u8>,
        bufs: &mut impl Buffers,
    ) -> Result<(), Dropped> {
        self.send_as(now, rng, node, to, Some(seq), buf, bufs)
    }

    #[allow(clippy::too_many_arguments)]
    fn send_as(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        node: &mut Node,
        to: Toward,
        seq: Option<u32>,
        mut buf: Vec<u8>,
        bufs: &mut impl Buffers,
    ) -> Result<(), Dropped> {
        let Some(len) = buf.len().checked_sub(PAYLOAD_OFFSET) else {
            bufs.put(buf);
            return Err(SendError::ShortBuffer.into());
        };
        let (carrier, cmd, head) = match seq {
            None => (Carrier::Data, Cmd::Data, 0),
            Some(_) => (Carrier::VData, Cmd::VData, SEQ_LEN),
        };
        let number = seq.unwrap_or_default().to_be_bytes();
        match self.frag.split(len, carrier) {
            Split::Whole => {
                if seq.is_some() {
                    buf.splice(PAYLOAD_OFFSET..PAYLOAD_OFFSET, number);
                }
                self.queue
                    .extend(seal(now, rng, node, to, cmd, buf, head + len)?);
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
                    let written = f.get_mut(PAYLOAD_OFFSET..).and_then(|out| {
                        let frag = match seq {
                            Some(_) => {
                                let (n, rest) = out.split_first_chunk_mut::<SEQ_LEN>()?;
                                *n = number;
                                rest
                            }
                            None => out,
                        };
                        carrier.write_fragment(packet, id, i, frag)
                    });
                    let Some(n) = written else {
                        bufs.put(f);
                        return Err(Dropped::TooLarge(len));
                    };
                    self.queue
                        .extend(seal(now, rng, node, to, cmd, f, head + n)?);
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
        self.reassembler(circuit, Carrier::Data)
            .complete(now, payload)
    }

    /// [`DataPath::receive`] for a VDATA payload: the packet it completes with its
    /// sequence number.
    pub fn receive_seq<'a>(
        &'a mut self,
        now: Instant,
        circuit: CircuitId,
        payload: &'a mut [u8],
    ) -> Result<Option<(u32, &'a mut [u8])>, PayloadError> {
        let seq = vc::split_vdata(payload)
            .map_err(|_| PayloadError::NoSequence)?
            .0;
        let rest = payload.get_mut(SEQ_LEN..).unwrap_or_default();
        let packet = self
            .reassembler(circuit, Carrier::VData)
            .complete(now, rest)?;
        Ok(packet.map(|p| (seq, p)))
    }

    /// The circuit's reassembler, for payloads of `carrier` (a circuit carries one
    /// kind: what is pending of the other is dropped).
    fn reassembler(&mut self, circuit: CircuitId, carrier: Carrier) -> &mut Reassembler {
        let r = self
            .reasm
            .entry(circuit)
            .or_insert_with(|| Reassembler::new(carrier));
        if r.carrier() != carrier {
            *r = Reassembler::new(carrier);
        }
        r
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
    cmd: Cmd,
    buf: Vec<u8>,
    len: usize,
) -> Result<Option<Transmit>, SendError> {
    match to {
        Toward::Forward(id) => node.send_cell(now, rng, id, cmd, buf, len),
        Toward::Backward(id) => node.send_backward_cell(now, id, cmd, buf, len),
    }
}
