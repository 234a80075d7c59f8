//! Circuit rekeying (PROTOCOL.md, REKEY): every 120 s each hop of an own circuit
//! runs a fresh Noise NK handshake inside the circuit. The client sends REKEY to the
//! hop, the hop answers REKEY_ACK and announces its new generation, the client
//! rotates to it and confirms with a KEEPALIVE, after which the hop sends under the
//! new keys too. A gateway's answers come out of the same handshake budget as builds.

use std::time::Instant;

use rand_core::{CryptoRng, RngCore};

use super::*;

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
        if !self.take_token(now) {
            return false;
        }
        let Some(sk) = self.cfg.static_key else {
            return false;
        };
        let msg =
            &buf[CELL_HEADER_LEN + BODY_HEADER..CELL_HEADER_LEN + BODY_HEADER + NK_MSG1_EMPTY];
        let mut hs = crypto::noise_responder(rng, &sk);
        let mut p = [0u8; 64];
        if hs.read_message(msg, &mut p).is_err() {
            self.stats.dropped_auth += 1;
            return false;
        }
        let mut e = [0u8; 32];
        e.copy_from_slice(&msg[..32]);
        if !self.remember_handshake(now, &e) {
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
        let b = &mut buf[CELL_HEADER_LEN..];
        b[BODY_HEADER..BODY_HEADER + NK_MSG2_EMPTY].copy_from_slice(&reply);
        Body {
            cmd: Cmd::RekeyAck,
            len: NK_MSG2_EMPTY,
        }
        .emit(b);
        true
    }

    /// Client side: a REKEY_ACK from hop `origin` of own circuit `id` completes the
    /// hop's handshake.
    pub(super) fn on_rekey_ack(
        &mut self,
        now: Instant,
        rng: &mut (impl RngCore + CryptoRng),
        id: CircuitId,
        origin: usize,
        buf: Vec<u8>,
    ) -> Output {
        let Some(own) = self.own.get_mut(&id) else {
            return Output::Recycle(buf);
        };
        let body = &buf[CELL_HEADER_LEN..];
        let hop = &mut own.hops[origin];
        let Some(mut hs) = hop.hs.take() else {
            self.stats.dropped_protocol += 1;
            return Output::Recycle(buf);
        };
        let mut p = [0u8; 64];
        let msg = &body[BODY_HEADER..BODY_HEADER + NK_MSG2_EMPTY];
        if hs.read_message(msg, &mut p).is_err() {
            self.stats.dropped_auth += 1;
            return Output::Recycle(buf);
        }
        hop.rekey_sent = None;
        let keys = &mut own.keys[origin];
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
            let hop = &mut own.hops[j];
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
