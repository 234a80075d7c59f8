//! Onion layers: the per-hop key generations and the slot arithmetic of
//! `docs/PROTOCOL.md` §4–§5.
//!
//! Invariants this module keeps:
//! - A cell and a build message have the same size on every link, whatever the path
//!   length: hops shift slots and append keystream filler instead of shrinking.
//! - Every slot a hop cannot open is keystream-encrypted under a key of some other hop,
//!   so it looks random to that hop; no hop learns its position or the path length.
//! - A counter is accepted once per key generation (replay window moved only after the
//!   AEAD open succeeded); the TERMINAL/ORIGIN and phase bits are part of the nonce.

use std::time::{Duration, Instant};

use rand_core::{CryptoRng, RngCore};

use crate::proto::crypto::{kdf, keystream, AeadKey, KEY_LEN, TAG_LEN};
use crate::proto::replay::ReplayWindow;
use crate::proto::wire::{
    BUILD_LEN, BUILD_SLOT_LEN, CTR_FLAG, CTR_MASK, CTR_PHASE, REPLY_LEN, REPLY_SLOT_LEN, SLOTS,
    SLOTS_LEN, SLOT_LEN,
};

pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;
pub const REJECT_AFTER_MESSAGES: u64 = 1 << 61;

/// The 8 slots of a cell header, slot 0 first.
pub type Slots = [u8; SLOTS_LEN];

/// One key generation of one hop, seen from one side.
pub struct Generation {
    seal: AeadKey,
    seal_slot: [u8; KEY_LEN],
    open: AeadKey,
    open_slot: [u8; KEY_LEN],
    send_ctr: u64,
    window: ReplayWindow,
    pub born: Instant,
    pub phase: bool,
}

impl std::fmt::Debug for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generation")
            .field("send_ctr", &self.send_ctr)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

/// Which end of the hop this generation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: seals forward, opens backward.
    Client,
    /// The gateway: seals backward, opens forward.
    Gateway,
}

impl Generation {
    /// Keys from a finished NK handshake's split `(k_i2r, k_r2i)`.
    #[must_use]
    pub fn new(
        split: ([u8; KEY_LEN], [u8; KEY_LEN]),
        side: Side,
        born: Instant,
        phase: bool,
    ) -> Self {
        let (fwd, bwd) = split;
        let (s, o) = match side {
            Side::Client => (fwd, bwd),
            Side::Gateway => (bwd, fwd),
        };
        Self {
            seal: AeadKey::new(&kdf(&s, b"anonnet hop aead")),
            seal_slot: kdf(&s, b"anonnet hop slot"),
            open: AeadKey::new(&kdf(&o, b"anonnet hop aead")),
            open_slot: kdf(&o, b"anonnet hop slot"),
            send_ctr: 0,
            window: ReplayWindow::new(REJECT_AFTER_MESSAGES),
            born,
            phase,
        }
    }

    /// Whether this generation may still be used at `now`.
    #[must_use]
    pub fn usable(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.born) < REJECT_AFTER_TIME
    }

    /// Whether the owner should start a new generation: once it is `after` old (at
    /// most [`REKEY_AFTER_TIME`]) or has sent [`REKEY_AFTER_MESSAGES`].
    #[must_use]
    pub fn wants_rekey(&self, now: Instant, after: Duration) -> bool {
        now.saturating_duration_since(self.born) >= after.min(REKEY_AFTER_TIME)
            || self.send_ctr >= REKEY_AFTER_MESSAGES
    }

    /// The next send counter with the given flag, or `None` once exhausted.
    fn next_ctr(&mut self, flag: bool) -> Option<u64> {
        if self.send_ctr >= REJECT_AFTER_MESSAGES {
            return None;
        }
        let c = self.send_ctr;
        self.send_ctr += 1;
        Some(c | if flag { CTR_FLAG } else { 0 } | if self.phase { CTR_PHASE } else { 0 })
    }

    /// Seals `body` in place with the next counter; returns the slot `ctr ‖ tag`.
    pub fn seal(&mut self, flag: bool, body: &mut [u8]) -> Option<[u8; SLOT_LEN]> {
        let ctr = self.next_ctr(flag)?;
        let tag = self.seal.seal(ctr, &[], body);
        Some(slot(ctr, &tag))
    }

    /// Seals `body` in place with counter `ctr` as given (flags and phase bit
    /// included), without moving the send counter. Only a hostile peer's forgeries
    /// (`node::ForgedForward`) use it: sealing twice with one counter reuses a nonce.
    pub fn seal_at(&self, ctr: u64, body: &mut [u8]) -> [u8; SLOT_LEN] {
        let tag = self.seal.seal(ctr, &[], body);
        slot(ctr, &tag)
    }

    /// Keystream of the slots for a counter sealed by this side.
    #[must_use]
    pub fn seal_keystream(&self, ctr: u64) -> Slots {
        slot_keystream(&self.seal_slot, ctr)
    }

    /// Keystream of the slots for a counter opened by this side.
    #[must_use]
    pub fn open_keystream(&self, ctr: u64) -> Slots {
        slot_keystream(&self.open_slot, ctr)
    }

    /// Opens `body` in place if `ctr` is fresh and the tag verifies; moves the window.
    pub fn open(&mut self, ctr: u64, tag: &[u8; TAG_LEN], body: &mut [u8]) -> Result<(), Reject> {
        let n = ctr & CTR_MASK;
        if !self.window.check(n) {
            return Err(Reject::Replay);
        }
        if !self.open.open(ctr, &[], body, tag) {
            return Err(Reject::Auth);
        }
        if self.window.update(n) {
            Ok(())
        } else {
            Err(Reject::Replay)
        }
    }
}

/// Why a layer was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    Auth,
    Replay,
    Expired,
}

/// The key generations of one hop: the current one, the previous one (still opened
/// until it expires) and, on a gateway, the next one announced by REKEY but not yet
/// confirmed by the client.
///
/// The previous and next generations are boxed: a generation is about 1.2 KiB (its
/// replay window is 1 KiB) and most of the time a hop has neither, so inline they
/// would more than double the memory of every idle circuit. A box moves between
/// `next` and `previous` on promotion instead of being reallocated.
#[derive(Debug)]
pub struct HopKeys {
    pub current: Generation,
    pub previous: Option<Box<Generation>>,
    pub next: Option<Box<Generation>>,
}

impl HopKeys {
    #[must_use]
    pub fn new(current: Generation) -> Self {
        Self {
            current,
            previous: None,
            next: None,
        }
    }

    /// Opens a layer with the generation selected by the phase bit. On a gateway, the
    /// first cell that opens under `next` promotes it to current.
    pub fn open(
        &mut self,
        now: Instant,
        ctr: u64,
        tag: &[u8; TAG_LEN],
        body: &mut [u8],
    ) -> Result<(), Reject> {
        let phase = ctr & CTR_PHASE != 0;
        if let Some(next) = self.next.as_mut().filter(|g| g.phase == phase) {
            next.open(ctr, tag, body)?;
            if let Some(mut n) = self.next.take() {
                std::mem::swap(&mut self.current, &mut *n);
                self.previous = Some(n);
            }
            return Ok(());
        }
        let g = if self.current.phase == phase {
            &mut self.current
        } else {
            self.previous
                .as_mut()
                .filter(|g| g.phase == phase)
                .ok_or(Reject::Auth)?
        };
        if !g.usable(now) {
            return Err(Reject::Expired);
        }
        g.open(ctr, tag, body)
    }

    /// The generation that opened `ctr` (after a successful [`HopKeys::open`]).
    #[must_use]
    pub fn opened_by(&self, ctr: u64) -> &Generation {
        let phase = ctr & CTR_PHASE != 0;
        if self.current.phase == phase {
            &self.current
        } else {
            self.previous
                .as_deref()
                .filter(|g| g.phase == phase)
                .unwrap_or(&self.current)
        }
    }

    /// Installs a new generation as current (client, after REKEY_ACK).
    pub fn rotate(&mut self, g: Generation) {
        let old = std::mem::replace(&mut self.current, g);
        self.previous = Some(reuse(self.previous.take(), old));
    }

    /// Announces the next generation (gateway, on REKEY); it replaces the previous one
    /// because both would carry the same phase bit.
    pub fn announce(&mut self, g: Generation) {
        self.next = Some(reuse(self.previous.take(), g));
    }

    /// Drops the previous generation once it can no longer be used, so its keys are
    /// forgotten (and its memory freed) as soon as they expire.
    pub fn forget_expired(&mut self, now: Instant) {
        if self.previous.as_ref().is_some_and(|g| !g.usable(now)) {
            self.previous = None;
        }
    }
}

/// `g` in `slot`'s box if there is one (a rekey then allocates nothing here).
fn reuse(slot: Option<Box<Generation>>, g: Generation) -> Box<Generation> {
    match slot {
        Some(mut b) => {
            *b = g;
            b
        }
        None => Box::new(g),
    }
}

#[must_use]
pub fn slot(ctr: u64, tag: &[u8; TAG_LEN]) -> [u8; SLOT_LEN] {
    let mut s = [0u8; SLOT_LEN];
    s[..8].copy_from_slice(&ctr.to_be_bytes());
    s[8..].copy_from_slice(tag);
    s
}

/// Splits the first slot of `slots` (a slot or a cell's slots) into counter and tag.
#[must_use]
pub fn read_slot0<const N: usize>(slots: &[u8; N]) -> (u64, [u8; TAG_LEN]) {
    // N >= SLOT_LEN (checked at compile time): the default is never taken.
    const { assert!(N >= SLOT_LEN) };
    let slot: [u8; SLOT_LEN] = slots.first_chunk().copied().unwrap_or_default();
    let [c0, c1, c2, c3, c4, c5, c6, c7, tag @ ..] = slot;
    (u64::from_be_bytes([c0, c1, c2, c3, c4, c5, c6, c7]), tag)
}

/// Keystream bytes computed for a slot keystream: 4 ChaCha20 blocks, of which the
/// first 3 are used. The `chacha20` crate's AVX2 backend computes 4 blocks at a time
/// and, for a request of 3, computes 4 for each of them (313 ns against 140 ns for
/// 256 bytes on the bench machine).
const SLOT_KEYSTREAM_COMPUTED: usize = 256;

#[must_use]
pub fn slot_keystream(key: &[u8; KEY_LEN], ctr: u64) -> Slots {
    let mut ks = [0u8; SLOT_KEYSTREAM_COMPUTED];
    keystream(key, &crate::proto::crypto::nonce_bytes(ctr), &mut ks);
    let mut slots = [0u8; SLOTS_LEN];
    slots.copy_from_slice(&ks[..SLOTS_LEN]);
    slots
}

fn xor(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d ^= s;
    }
}

fn copy(dst: &mut [u8], src: &[u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
    }
}

/// Forward relay (and client unwrap): drop slot 0, decrypt slots 1..7 into 0..6,
/// append keystream filler.
pub fn shift_out(slots: &mut Slots, ks: &Slots) {
    slots.copy_within(SLOT_LEN..SLOTS_LEN, 0);
    xor(
        &mut slots[..SLOTS_LEN - SLOT_LEN],
        &ks[..SLOTS_LEN - SLOT_LEN],
    );
    slots[SLOTS_LEN - SLOT_LEN..SLOTS_LEN].copy_from_slice(&ks[SLOTS_LEN - SLOT_LEN..]);
}

/// Backward relay: encrypt slots 0..6 into 1..7 (slot 7 is filler and dropped), then
/// write this hop's slot 0.
pub fn push_in(slots: &mut Slots, ks: &Slots, own: &[u8; SLOT_LEN]) {
    slots.copy_within(0..SLOTS_LEN - SLOT_LEN, SLOT_LEN);
    xor(&mut slots[SLOT_LEN..SLOTS_LEN], &ks[..SLOTS_LEN - SLOT_LEN]);
    slots[..SLOT_LEN].copy_from_slice(own);
}

/// Backward origin: this hop's slot 0, then keystream filler.
pub fn originate(slots: &mut Slots, ks: &Slots, own: &[u8; SLOT_LEN]) {
    slots[..SLOT_LEN].copy_from_slice(own);
    slots[SLOT_LEN..SLOTS_LEN].copy_from_slice(&ks[..SLOTS_LEN - SLOT_LEN]);
}

/// Client: wraps `body` for hops `0..=target` (the cell is TERMINAL at `target`) and
/// writes the 8 slots. Returns `None` if a hop's counters are exhausted or `target`
/// is not a hop of `hops`.
pub fn wrap_forward(
    hops: &mut [HopKeys],
    target: usize,
    slots: &mut Slots,
    body: &mut [u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Option<()> {
    rng.fill_bytes(slots);
    let hops = hops.get_mut(..=target)?;
    let mut own = [[0u8; SLOT_LEN]; SLOTS];
    let own = own.get_mut(..hops.len())?;
    for (j, (o, hop)) in own.iter_mut().zip(hops.iter_mut()).enumerate().rev() {
        *o = hop.current.seal(j == target, body)?;
    }
    lay_forward(hops, own, target, slots);
    Some(())
}

/// Writes the slot value `own[j]` of each hop `j` at position `j`, then pre-applies the
/// keystream of every hop `i` before position `last` (for the counter in `own[i]`) to
/// the positions `i + 1..=last`, so that each hop's shift leaves the later slots as
/// they were written.
pub fn lay_forward(hops: &[HopKeys], own: &[[u8; SLOT_LEN]], last: usize, slots: &mut Slots) {
    for (p, o) in slots.chunks_exact_mut(SLOT_LEN).zip(own) {
        copy(p, o);
    }
    for (i, (o, hop)) in own.iter().zip(hops).take(last).enumerate() {
        let (ctr, _) = read_slot0(o);
        let ks = hop.current.seal_keystream(ctr);
        let later = slots.chunks_exact_mut(SLOT_LEN).take(last + 1).skip(i + 1);
        for (p, k) in later.zip(ks.chunks_exact(SLOT_LEN)) {
            xor(p, k);
        }
    }
}

/// Client: peels backward layers hop by hop until one carries ORIGIN. Returns the
/// index of the originating hop.
pub fn unwrap_backward(
    now: Instant,
    hops: &mut [HopKeys],
    slots: &mut Slots,
    body: &mut [u8],
) -> Result<usize, Reject> {
    for (i, hop) in hops.iter_mut().enumerate() {
        let (ctr, tag) = read_slot0(slots);
        hop.open(now, ctr, &tag, body)?;
        if ctr & CTR_FLAG != 0 {
            return Ok(i);
        }
        let ks = hop.opened_by(ctr).open_keystream(ctr);
        shift_out(slots, &ks);
    }
    Err(Reject::Auth)
}

/// A build keystream key pair derived from a hop's `kb`.
fn build_keystreams(
    kb: &[u8; KEY_LEN],
) -> (Box<[u8; BUILD_LEN]>, [u8; REPLY_LEN - REPLY_SLOT_LEN]) {
    let mut f = Box::new([0u8; BUILD_LEN]);
    keystream(&kdf(kb, b"anonnet build fwd"), &[0; 12], &mut f[..]);
    let mut b = [0u8; REPLY_LEN - REPLY_SLOT_LEN];
    keystream(&kdf(kb, b"anonnet build bwd"), &[0; 12], &mut b);
    (f, b)
}

/// Client: lays out the BUILD slots for `msgs[j]` (hop j's NK msg1) given each hop's
/// `kb`. Unused slots are random.
pub fn client_build(
    msgs: &[[u8; BUILD_SLOT_LEN]],
    kbs: &[[u8; KEY_LEN]],
    rng: &mut (impl RngCore + CryptoRng),
) -> Box<[u8; BUILD_LEN]> {
    let mut out = Box::new([0u8; BUILD_LEN]);
    rng.fill_bytes(&mut out[..]);
    for (p, m) in out.chunks_exact_mut(BUILD_SLOT_LEN).zip(msgs) {
        copy(p, m);
    }
    for (i, kb) in kbs.iter().enumerate().take(msgs.len().saturating_sub(1)) {
        let (ksf, _) = build_keystreams(kb);
        let later = out
            .chunks_exact_mut(BUILD_SLOT_LEN)
            .take(msgs.len())
            .skip(i + 1);
        for (p, k) in later.zip(ksf.chunks_exact(BUILD_SLOT_LEN)) {
            xor(p, k);
        }
    }
    out
}

/// Relay: turns the BUILD it received into the one for its next hop, in place.
pub fn relay_build(slots: &mut [u8; BUILD_LEN], kb: &[u8; KEY_LEN]) {
    let (ksf, _) = build_keystreams(kb);
    let ksf: &[u8; BUILD_LEN] = &ksf;
    const TAIL: usize = BUILD_LEN - BUILD_SLOT_LEN;
    slots.copy_within(BUILD_SLOT_LEN..BUILD_LEN, 0);
    xor(&mut slots[..TAIL], &ksf[..TAIL]);
    slots[TAIL..BUILD_LEN].copy_from_slice(&ksf[TAIL..]);
}

/// Terminal hop: the BUILT it originates.
#[must_use]
pub fn terminal_built(reply: &[u8; REPLY_SLOT_LEN], kb: &[u8; KEY_LEN]) -> [u8; REPLY_LEN] {
    let (_, ksb) = build_keystreams(kb);
    let mut out = [0u8; REPLY_LEN];
    out[..REPLY_SLOT_LEN].copy_from_slice(reply);
    out[REPLY_SLOT_LEN..].copy_from_slice(&ksb);
    out
}

/// Relay: prepends its reply to the BUILT from its next hop, in place.
pub fn relay_built(slots: &mut [u8; REPLY_LEN], reply: &[u8; REPLY_SLOT_LEN], kb: &[u8; KEY_LEN]) {
    let (_, ksb) = build_keystreams(kb);
    slots.copy_within(0..REPLY_LEN - REPLY_SLOT_LEN, REPLY_SLOT_LEN);
    xor(&mut slots[REPLY_SLOT_LEN..REPLY_LEN], &ksb);
    slots[..REPLY_SLOT_LEN].copy_from_slice(reply);
}

/// Client: the reply slot of each of `kbs.len()` hops.
#[must_use]
pub fn client_built(slots: &[u8; REPLY_LEN], kbs: &[[u8; KEY_LEN]]) -> Vec<[u8; REPLY_SLOT_LEN]> {
    let mut cur = *slots;
    let mut out = Vec::with_capacity(kbs.len());
    for kb in kbs {
        let mut r = [0u8; REPLY_SLOT_LEN];
        r.copy_from_slice(&cur[..REPLY_SLOT_LEN]);
        out.push(r);
        let (_, ksb) = build_keystreams(kb);
        cur.copy_within(REPLY_SLOT_LEN..REPLY_LEN, 0);
        xor(&mut cur[..REPLY_LEN - REPLY_SLOT_LEN], &ksb);
    }
    out
}

#[cfg(test)]
mod tests {
    // Tests index and unwrap what they built themselves.
    #![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn slot_keystream_is_the_first_192_bytes_of_the_stream() {
        let key = [7u8; KEY_LEN];
        for ctr in [0u64, 1, (1 << 62) | 5, u64::MAX] {
            let mut direct = [0u8; SLOTS_LEN];
            keystream(&key, &crate::proto::crypto::nonce_bytes(ctr), &mut direct);
            assert_eq!(slot_keystream(&key, ctr), direct);
        }
    }

    fn generation(now: Instant, phase: bool) -> Generation {
        Generation::new(([1; KEY_LEN], [2; KEY_LEN]), Side::Gateway, now, phase)
    }

    /// Every relayed circuit holds one generation inline (docs/DESIGN.md, memory per
    /// circuit): its 1 KiB replay window, four 32-byte keys and a few counters.
    #[test]
    fn a_generation_stays_small() {
        eprintln!(
            "Generation {} bytes, HopKeys {} bytes",
            std::mem::size_of::<Generation>(),
            std::mem::size_of::<HopKeys>()
        );
        assert!(std::mem::size_of::<Generation>() <= 1216);
        assert!(std::mem::size_of::<HopKeys>() <= 1232);
    }

    #[test]
    fn expired_previous_generation_is_forgotten() {
        let t0 = Instant::now();
        let mut keys = HopKeys::new(generation(t0, false));
        keys.rotate(generation(t0 + REKEY_AFTER_TIME, true));
        keys.forget_expired(t0 + REJECT_AFTER_TIME - Duration::from_millis(1));
        assert!(keys.previous.is_some(), "still usable");
        keys.forget_expired(t0 + REJECT_AFTER_TIME);
        assert!(keys.previous.is_none(), "expired keys are dropped");
        assert!(keys.current.phase);
    }

    #[test]
    fn announced_generation_is_promoted_by_its_first_cell() {
        let t0 = Instant::now();
        let (fwd, bwd) = ([3; KEY_LEN], [4; KEY_LEN]);
        let mut client = Generation::new((fwd, bwd), Side::Client, t0, true);
        let mut gw = HopKeys::new(generation(t0, false));
        gw.rotate(generation(t0, true));
        // REKEY: the next generation (phase false) replaces the previous one.
        gw.announce(Generation::new((fwd, bwd), Side::Gateway, t0, false));
        assert!(gw.previous.is_none() && gw.next.is_some());
        client.phase = false;
        let mut body = [7u8; 64];
        let slot = client.seal(true, &mut body).expect("seal");
        let (ctr, tag) = read_slot0(&slot);
        gw.open(t0, ctr, &tag, &mut body).expect("opens under next");
        assert_eq!(body, [7u8; 64]);
        assert!(gw.next.is_none(), "promoted");
        assert!(!gw.current.phase);
        assert!(gw.previous.as_ref().is_some_and(|g| g.phase));
    }
}
