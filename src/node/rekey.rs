//! Circuit rekeying (PROTOCOL.md, REKEY): every 60 to 120 s (a random time per hop
//! and generation, [`REKEY_JITTER`]) each hop of an own circuit runs a fresh Noise NK
//! handshake inside the circuit. The client sends REKEY to the
//! hop, the hop answers REKEY_ACK and announces its new generation, the client
//! rotates to it and confirms with a KEEPALIVE, after which the hop sends under the
//! new keys too. A gateway's answers come out of their own handshake budget, so a
//! flood of new links or BUILDs cannot starve the rekeys that keep circuits alive.

use std::time::Instant;

use rand_core::{CryptoRng, RngCore};

use crate::proto::crypto;
use crate::proto::onion::{Generation, Side};
use crate::proto::wire::{Body, Cell, Cmd, NK_MSG1_EMPTY, NK_MSG2_EMPTY};

use super::rekey_after;
use super::{Budget, CircuitId, Node, Output, RelayId};

impl Node {
    /// Gateway side: answers a REKEY on relayed circuit `id` in `buf` (the body
    /// becomes the REKEY_ACK); false when the cell is to be dropped.
    pub(super) fn answer_rekey(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: RelayId,
        buf: &mut [u8],
    ) -> bool {
        if !self.take_token(now, Budget::Rekey) {
            return false;
        }
        let Some(sk) = self.cfg.static_key else {
            return false;
        };
        let Some(mut cell) = Cell::new_checked(buf) else {
            self.stats.dropped_malformed += 1;
            return false;
        };
        let Some(msg) = cell.payload(NK_MSG1_EMPTY) else {
            self.stats.dropped_malformed += 1;
            return false;
        };
        let mut hs = crypto::noise_responder(rng, &sk);
        let mut p = [0u8; 64];
        if hs.read_message(msg, &mut p).is_err() {
            self.stats.dropped_auth += 1;
            return false;
        }
        if !self.remember_handshake(now, msg) {
            return false;
        }
        let mut reply = [0u8; NK_MSG2_EMPTY];
        if hs.write_message(&[], &mut reply).is_err() {
            return false;
        }
        let Some(r) = self.relays.get_mut(&id) else {
            return false;
        };
        let phase = !r.keys.current.phase;
        r.keys.announce(Generation::new(
            crypto::split(&mut hs),
            Side::Gateway,
            now,
            phase,
        ));
        self.stats.rekeys += 1;
        // The REKEY's body held NK msg1, as long as the reply.
        let Some(dst) = cell.payload_mut(NK_MSG2_EMPTY) else {
            return false;
        };
        dst.copy_from_slice(&reply);
        Body {
            cmd: Cmd::RekeyAck,
            len: NK_MSG2_EMPTY,
        }
        .emit(cell.body_mut())
        .is_ok()
    }

    /// Client side: a REKEY_ACK from hop `origin` of own circuit `id` completes the
    /// hop's handshake.
    pub(super) fn on_rekey_ack(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: CircuitId,
        origin: usize,
        mut buf: Vec<u8>,
    ) -> Output {
        let Some(own) = self.own.get_mut(&id) else {
            return Output::Recycle(buf);
        };
        let msg = Cell::new_checked(&mut buf)
            .and_then(|c| <[u8; NK_MSG2_EMPTY]>::try_from(c.payload(NK_MSG2_EMPTY)?).ok());
        let (Some(hop), Some(keys), Some(msg)) =
            (own.hops.get_mut(origin), own.keys.get_mut(origin), msg)
        else {
            self.stats.dropped_malformed += 1;
            return Output::Recycle(buf);
        };
        let Some(mut hs) = hop.hs.take() else {
            self.stats.dropped_protocol += 1;
            return Output::Recycle(buf);
        };
        let mut p = [0u8; 64];
        if hs.read_message(&msg, &mut p).is_err() {
            self.stats.dropped_auth += 1;
            return Output::Recycle(buf);
        }
        hop.rekey_sent = None;
        hop.rekey_after = rekey_after(rng, self.cfg.rekey_jitter);
        let phase = !keys.current.phase;
        keys.rotate(Generation::new(
            crypto::split(&mut hs),
            Side::Client,
            now,
            phase,
        ));
        self.stats.rekeys += 1;
        // Confirm promptly so the hop switches its sending key too.
        let out = self.send_cmd(now, rng, id, origin, Cmd::Keepalive, &[], buf);
        self.push_output(out);
        Output::Consumed
    }

    /// Client side: sends REKEY to each `(circuit, hop)` due one.
    pub(super) fn start_rekeys(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        due: &[(CircuitId, usize)],
    ) {
        for &(id, j) in due {
            let Some(own) = self.own.get_mut(&id) else {
                continue;
            };
            let Some(hop) = own.hops.get_mut(j) else {
                continue;
            };
            let mut hs = crypto::noise_initiator(rng, &hop.spec.key);
            let mut msg = [0u8; NK_MSG1_EMPTY];
            if hs.write_message(&[], &mut msg).is_err() {
                continue;
            }
            hop.hs = Some(hs);
            hop.rekey_sent = Some(now);
            let buf = self.spare.pop().unwrap_or_default();
            let out = self.send_cmd(now, rng, id, j, Cmd::Rekey, &msg, buf);
            self.push_output(out);
        }
    }
}
