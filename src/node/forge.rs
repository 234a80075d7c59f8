//! Forgeries of a hostile peer that holds valid keys, for the tests, fuzz targets and
//! the hostile-client example that play it.
//!
//! A client can seal any bytes for each hop of its own circuit: it chooses every
//! counter (flags and key phase included), the body each hop opens, the command,
//! length and payload inside it, and the slots that leave the hop it addresses. A
//! gateway can likewise send any sealed bytes back towards the client of a circuit
//! through it. None of this needs the library (a client has its keys), so exposing it
//! gives an attacker nothing; it lets the suite test the code behind authentication
//! with the real keys instead of a copy of the sealing code.

use crate::proto::onion;
use crate::proto::wire::{Cell, CELL_HEADER_LEN, SLOTS, SLOTS_LEN, SLOT_LEN};

use super::{CircuitId, Node, Output, SendError, Transmit};

/// Slots after a hop's own: the 7 a forged cell carries past the hop it addresses.
pub const TAIL_LEN: usize = SLOTS_LEN - SLOT_LEN;

/// A forward cell forged by the client of a circuit.
#[derive(Debug, Clone)]
pub struct ForgedForward<'a> {
    /// The hop (0-based) whose layer is innermost; it opens `body`.
    pub target: usize,
    /// Whether `target`'s layer carries TERMINAL, when its counter is the next one.
    pub terminal: bool,
    /// The counter each hop `0..=target` opens, flags and phase bit included as
    /// given; `None` takes the hop's next counter (TERMINAL at `target` if
    /// `terminal`).
    pub counters: [Option<u64>; SLOTS],
    /// The circuit ID on the link, if not the circuit's own.
    pub cid: Option<u32>,
    /// The body plaintext `target` opens, of any length (not only the size classes).
    pub body: &'a [u8],
    /// The slots at positions 0..7 of `target`'s output. Positions `0..7 - target`
    /// come out as given; the rest are keystream filler of the hops before, which no
    /// client chooses.
    pub tail: [u8; TAIL_LEN],
}

/// A backward cell forged by a gateway of a circuit, towards its client.
#[derive(Debug, Clone)]
pub struct ForgedBackward<'a> {
    /// The counter of this hop's layer as given (ORIGIN and phase bits included), or
    /// `None` for the next one with ORIGIN.
    pub counter: Option<u64>,
    /// The body plaintext, of any length.
    pub body: &'a [u8],
    /// Slots 1..8 as this hop sends them.
    pub tail: [u8; TAIL_LEN],
}

impl Node {
    /// The client's forward cell on circuit `id`, sealed as `cell` says, ready to send
    /// to the circuit's first hop.
    pub fn forge_forward(
        &mut self,
        id: CircuitId,
        cell: &ForgedForward<'_>,
    ) -> Result<Transmit, SendError> {
        let own = self.own.get_mut(&id).ok_or(SendError::NoCircuit)?;
        if !own.is_up() {
            return Err(SendError::NotUp);
        }
        let target = cell.target.min(own.keys.len().saturating_sub(1));
        let mut buf = vec![0u8; CELL_HEADER_LEN];
        buf.extend_from_slice(cell.body);
        let mut view = Cell::new_checked(&mut buf).ok_or(SendError::ShortBuffer)?;
        let (rest, body) = view.slots_and_body();
        let mut slots = [[0u8; SLOT_LEN]; SLOTS];
        let hops = own.keys.iter_mut().zip(&mut slots).zip(cell.counters);
        for (j, ((keys, slot), counter)) in hops.enumerate().take(target + 1).rev() {
            *slot = match counter {
                Some(ctr) => keys.current.seal_at(ctr, body),
                None => keys
                    .current
                    .seal(j == target && cell.terminal, body)
                    .ok_or(SendError::Exhausted)?,
            };
        }
        let after = rest.iter_mut().skip((target + 1) * SLOT_LEN);
        for (d, s) in after.zip(&cell.tail) {
            *d = *s;
        }
        let own_slots = slots.get(..=target).ok_or(SendError::NotUp)?;
        onion::lay_forward(&own.keys, own_slots, SLOTS - 1, rest);
        let (link, cid) = own.first;
        match self.finish_cell(link, cell.cid.unwrap_or(cid), buf) {
            Output::Transmit(t) => Ok(t),
            _ => Err(SendError::NotUp),
        }
    }

    /// A LINK_CTRL message on the first link of the client's circuit `id`: any kind
    /// byte, circuit ID, link counter and body, sealed under the link's keys.
    pub fn forge_ctrl(
        &mut self,
        id: CircuitId,
        kind: u8,
        cid: Option<u32>,
        counter: Option<u64>,
        body: &[u8],
    ) -> Result<Transmit, SendError> {
        let own = self.own.get(&id).ok_or(SendError::NoCircuit)?;
        let (link_id, own_cid) = own.first;
        let link = self.links.get_mut(&link_id).ok_or(SendError::NotUp)?;
        let keys = link.keys.as_mut().ok_or(SendError::NotUp)?;
        let ctr = counter.unwrap_or(keys.send_ctr);
        if counter.is_none() {
            keys.send_ctr += 1;
        }
        let buf = keys.ctrl_datagram(ctr, kind, cid.unwrap_or(own_cid), body);
        Ok(Transmit {
            src: link.local,
            dst: link.peer,
            buf,
        })
    }

    /// The circuits this gateway relays or serves, as [`Node::forge_backward`] names
    /// them (a served circuit has the ID of its
    /// [`Event::ServiceData`](super::Event::ServiceData)).
    pub fn relayed(&self) -> impl Iterator<Item = CircuitId> + '_ {
        self.relays.keys().map(|&id| CircuitId(id))
    }

    /// This gateway's backward cell on relayed circuit `id`, sealed as `cell` says,
    /// ready to send towards the client.
    pub fn forge_backward(
        &mut self,
        id: CircuitId,
        cell: &ForgedBackward<'_>,
    ) -> Result<Transmit, SendError> {
        let r = self.relays.get_mut(&id.0).ok_or(SendError::NoCircuit)?;
        let mut buf = vec![0u8; CELL_HEADER_LEN];
        buf.extend_from_slice(cell.body);
        let mut view = Cell::new_checked(&mut buf).ok_or(SendError::ShortBuffer)?;
        let (slots, body) = view.slots_and_body();
        let own = match cell.counter {
            Some(ctr) => r.keys.current.seal_at(ctr, body),
            None => r
                .keys
                .current
                .seal(true, body)
                .ok_or(SendError::Exhausted)?,
        };
        for (d, s) in slots.iter_mut().zip(own.iter().chain(&cell.tail)) {
            *d = *s;
        }
        let (link, cid) = r.prev;
        match self.finish_cell(link, cid, buf) {
            Output::Transmit(t) => Ok(t),
            _ => Err(SendError::NotUp),
        }
    }
}
