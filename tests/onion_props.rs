//! Property tests of the onion layer arithmetic (`src/proto/onion.rs`): pure crypto, no Node.

use std::collections::HashSet;
use std::time::Instant;

use anonnet::proto::crypto::KEY_LEN;
use anonnet::proto::onion::{
    client_build, client_built, originate, push_in, read_slot0, relay_build, relay_built,
    shift_out, terminal_built, unwrap_backward, wrap_forward, Generation, HopKeys, Reject, Side,
};
use anonnet::proto::wire::{
    BUILD_LEN, BUILD_SLOT_LEN, CTR_FLAG, MAX_BODY, MIN_BODY, REPLY_LEN, REPLY_SLOT_LEN, SLOTS,
    SLOTS_LEN, SLOT_LEN,
};
use proptest::prelude::*;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Client and gateway keys of `n` hops, from random splits.
fn hops(rng: &mut ChaCha20Rng, n: usize, now: Instant) -> (Vec<HopKeys>, Vec<HopKeys>) {
    let mut client = Vec::new();
    let mut gw = Vec::new();
    for _ in 0..n {
        let mut a = [0u8; KEY_LEN];
        let mut b = [0u8; KEY_LEN];
        rng.fill_bytes(&mut a);
        rng.fill_bytes(&mut b);
        client.push(HopKeys::new(Generation::new(
            (a, b),
            Side::Client,
            now,
            false,
        )));
        gw.push(HopKeys::new(Generation::new(
            (a, b),
            Side::Gateway,
            now,
            false,
        )));
    }
    (client, gw)
}

fn random_body(rng: &mut ChaCha20Rng, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    rng.fill_bytes(&mut b);
    b
}

/// Where to flip one bit: before gateway `layer` (0 = right after the client wrapped;
/// for backward cells, `layer` counts relays from the originating hop) at `bit` of the
/// concatenation `slots ‖ body`.
#[derive(Debug, Clone, Copy)]
struct Flip {
    layer: usize,
    bit: usize,
}

fn flip(slots: &mut [u8], body: &mut [u8], bit: usize) {
    let byte = bit / 8;
    let m = 1u8 << (bit % 8);
    if byte < SLOTS_LEN {
        slots[byte] ^= m;
    } else {
        body[byte - SLOTS_LEN] ^= m;
    }
}

/// Outcome of a forward pass: `Ok(body at the target)` or the hop that rejected it.
fn forward(
    rng: &mut ChaCha20Rng,
    client: &mut [HopKeys],
    gw: &mut [HopKeys],
    target: usize,
    plain: &[u8],
    f: Option<Flip>,
    now: Instant,
) -> Result<Vec<u8>, (usize, Reject)> {
    let mut slots = [0u8; SLOTS_LEN];
    let mut body = plain.to_vec();
    wrap_forward(client, target, &mut slots, &mut body, rng).expect("wrap");
    assert_eq!(body.len(), plain.len());
    for (i, g) in gw.iter_mut().enumerate().take(target + 1) {
        if let Some(f) = f.filter(|f| f.layer == i) {
            flip(&mut slots, &mut body, f.bit);
        }
        let (ctr, tag) = read_slot0(&slots);
        g.open(now, ctr, &tag, &mut body).map_err(|e| (i, e))?;
        if i < target {
            assert_eq!(ctr & CTR_FLAG, 0, "hop {i} < target {target} saw TERMINAL");
            let ks = g.opened_by(ctr).open_keystream(ctr);
            shift_out(&mut slots, &ks);
        } else {
            assert_ne!(ctr & CTR_FLAG, 0, "target {target} did not see TERMINAL");
        }
        assert_eq!(body.len(), plain.len());
    }
    Ok(body)
}

/// Backward pass from gateway `origin`; `Ok((origin seen by the client, body))`.
fn backward(
    now: Instant,
    client: &mut [HopKeys],
    gw: &mut [HopKeys],
    origin: usize,
    plain: &[u8],
    f: Option<Flip>,
) -> Result<(usize, Vec<u8>), Reject> {
    let mut slots = [0u8; SLOTS_LEN];
    let mut body = plain.to_vec();
    let own = gw[origin].current.seal(true, &mut body).expect("seal");
    let (ctr, _) = read_slot0(&own);
    originate(&mut slots, &gw[origin].current.seal_keystream(ctr), &own);
    for (layer, i) in (0..origin).rev().enumerate() {
        if let Some(f) = f.filter(|f| f.layer == layer) {
            flip(&mut slots, &mut body, f.bit);
        }
        let s = gw[i].current.seal(false, &mut body).expect("seal");
        let (ctr, _) = read_slot0(&s);
        push_in(&mut slots, &gw[i].current.seal_keystream(ctr), &s);
        assert_eq!(body.len(), plain.len());
    }
    if let Some(f) = f.filter(|f| f.layer == origin) {
        flip(&mut slots, &mut body, f.bit);
    }
    let j = unwrap_backward(now, client, &mut slots, &mut body)?;
    Ok((j, body))
}

fn body_len() -> impl Strategy<Value = usize> {
    prop_oneof![Just(MIN_BODY), Just(128usize), MIN_BODY..=MAX_BODY]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn forward_round_trip(seed in any::<u64>(), n in 1usize..=SLOTS, t in 0usize..SLOTS, len in body_len()) {
        let now = Instant::now();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let target = t % n;
        let (mut client, mut gw) = hops(&mut rng, n, now);
        let plain = random_body(&mut rng, len);
        // Several cells in a row, so counters move.
        for _ in 0..3 {
            let got = forward(&mut rng, &mut client, &mut gw, target, &plain, None, now);
            prop_assert_eq!(got.as_deref(), Ok(&plain[..]));
        }
    }

    #[test]
    fn backward_round_trip(seed in any::<u64>(), n in 1usize..=SLOTS, o in 0usize..SLOTS, len in body_len()) {
        let now = Instant::now();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let origin = o % n;
        let (mut client, mut gw) = hops(&mut rng, n, now);
        let plain = random_body(&mut rng, len);
        for _ in 0..3 {
            let got = backward(now, &mut client, &mut gw, origin, &plain, None);
            prop_assert_eq!(got, Ok((origin, plain.clone())));
        }
    }

    #[test]
    fn forward_bit_flip_never_delivers_corruption(
        seed in any::<u64>(), n in 1usize..=SLOTS, t in 0usize..SLOTS,
        layer in 0usize..SLOTS, bit in any::<prop::sample::Index>(), len in body_len(),
    ) {
        let now = Instant::now();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let target = t % n;
        let layer = layer % (target + 1);
        let bit = bit.index((SLOTS_LEN + len) * 8);
        let (mut client, mut gw) = hops(&mut rng, n, now);
        let plain = random_body(&mut rng, len);
        let r = forward(&mut rng, &mut client, &mut gw, target, &plain, Some(Flip { layer, bit }), now);
        check_forward_flip(target, layer, bit, &plain, r)?;
    }

    #[test]
    fn backward_bit_flip_never_delivers_corruption(
        seed in any::<u64>(), n in 1usize..=SLOTS, o in 0usize..SLOTS,
        layer in 0usize..SLOTS, bit in any::<prop::sample::Index>(), len in body_len(),
    ) {
        let now = Instant::now();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let origin = o % n;
        let layer = layer % (origin + 1);
        let bit = bit.index((SLOTS_LEN + len) * 8);
        let (mut client, mut gw) = hops(&mut rng, n, now);
        let plain = random_body(&mut rng, len);
        let r = backward(now, &mut client, &mut gw, origin, &plain, Some(Flip { layer, bit }));
        check_backward_flip(origin, layer, bit, &plain, r)?;
    }

    #[test]
    fn replayed_layer_is_rejected(seed in any::<u64>(), n in 1usize..=SLOTS, len in body_len()) {
        let now = Instant::now();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (mut client, mut gw) = hops(&mut rng, n, now);
        let plain = random_body(&mut rng, len);
        let mut slots = [0u8; SLOTS_LEN];
        let mut body = plain.clone();
        wrap_forward(&mut client, 0, &mut slots, &mut body, &mut rng).expect("wrap");
        let (ctr, tag) = read_slot0(&slots);
        let mut first = body.clone();
        prop_assert_eq!(gw[0].open(now, ctr, &tag, &mut first), Ok(()));
        prop_assert_eq!(&first, &plain);
        let mut second = body.clone();
        prop_assert_eq!(gw[0].open(now, ctr, &tag, &mut second), Err(Reject::Replay));
        // A later fresh cell still opens.
        let got = forward(&mut rng, &mut client, &mut gw, 0, &plain, None, now);
        prop_assert_eq!(got.as_deref(), Ok(&plain[..]));
    }

    #[test]
    fn build_slots_round_trip(seed in any::<u64>(), n in 1usize..=SLOTS) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let mut msgs = vec![[0u8; BUILD_SLOT_LEN]; n];
        let mut kbs = vec![[0u8; KEY_LEN]; n];
        let mut replies = vec![[0u8; REPLY_SLOT_LEN]; n];
        for j in 0..n {
            rng.fill_bytes(&mut msgs[j]);
            rng.fill_bytes(&mut kbs[j]);
            rng.fill_bytes(&mut replies[j]);
        }
        let mut slots = client_build(&msgs, &kbs, &mut rng);
        prop_assert_eq!(slots.len(), BUILD_LEN);
        for j in 0..n {
            prop_assert_eq!(&slots[..BUILD_SLOT_LEN], &msgs[j][..], "hop {} slot 0", j);
            if j + 1 < n {
                relay_build(&mut slots, &kbs[j]);
                prop_assert_eq!(slots.len(), BUILD_LEN);
            }
        }
        let mut back = terminal_built(&replies[n - 1], &kbs[n - 1]);
        prop_assert_eq!(back.len(), REPLY_LEN);
        for i in (0..n - 1).rev() {
            relay_built(&mut back, &replies[i], &kbs[i]);
        }
        prop_assert_eq!(client_built(&back, &kbs), replies);
    }
}

fn check_forward_flip(
    target: usize,
    layer: usize,
    bit: usize,
    plain: &[u8],
    r: Result<Vec<u8>, (usize, Reject)>,
) -> Result<(), TestCaseError> {
    let byte = bit / 8;
    // At layer L, slots 0..=target-L belong to hops L..=target; the rest is filler.
    let real = byte >= SLOTS_LEN || byte / SLOT_LEN <= target - layer;
    match r {
        Ok(body) => {
            prop_assert_eq!(&body[..], plain, "flip delivered a corrupted body");
            prop_assert!(
                !real,
                "flip of real byte {} at layer {} went unnoticed",
                byte,
                layer
            );
        }
        Err((hop, e)) => {
            prop_assert!(
                real,
                "flip of filler byte {} rejected at hop {}: {:?}",
                byte,
                hop,
                e
            );
            prop_assert!(hop >= layer && hop <= target);
            // A flipped high counter bit may exceed the counter limit (Replay).
            prop_assert!(matches!(e, Reject::Auth | Reject::Replay), "{:?}", e);
        }
    }
    Ok(())
}

fn check_backward_flip(
    origin: usize,
    layer: usize,
    bit: usize,
    plain: &[u8],
    r: Result<(usize, Vec<u8>), Reject>,
) -> Result<(), TestCaseError> {
    let byte = bit / 8;
    // After `layer` relays below the origin, slots 0..=layer are real.
    let real = byte >= SLOTS_LEN || byte / SLOT_LEN <= layer;
    match r {
        Ok((j, body)) => {
            prop_assert_eq!(j, origin);
            prop_assert_eq!(&body[..], plain, "flip delivered a corrupted body");
            prop_assert!(
                !real,
                "flip of real byte {} at layer {} went unnoticed",
                byte,
                layer
            );
        }
        Err(e) => {
            prop_assert!(real, "flip of filler byte {} rejected: {:?}", byte, e);
            prop_assert!(matches!(e, Reject::Auth | Reject::Replay), "{:?}", e);
        }
    }
    Ok(())
}

/// Every byte of every layer, for a few path shapes (exhaustive, small body).
#[test]
fn exhaustive_bit_flips() {
    let now = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let len = MIN_BODY;
    for (n, target) in [(1, 0), (3, 2), (3, 1), (8, 7)] {
        let plain = random_body(&mut rng, len);
        for layer in 0..=target {
            // Every byte, a different bit position in consecutive bytes.
            for byte in 0..SLOTS_LEN + len {
                let bit = byte * 8 + byte % 8;
                let (mut client, mut gw) = hops(&mut rng, n, now);
                let f = Some(Flip { layer, bit });
                let r = forward(&mut rng, &mut client, &mut gw, target, &plain, f, now);
                check_forward_flip(target, layer, bit, &plain, r).expect("forward");
                let r = backward(now, &mut client, &mut gw, target, &plain, f);
                check_backward_flip(target, layer, bit, &plain, r).expect("backward");
            }
        }
    }
}

/// Sizes never depend on the path length, and unused positions look random whatever
/// the path length.
#[test]
fn position_hiding() {
    let now = Instant::now();
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    for n in [1usize, 8] {
        let mut build_vals = HashSet::new();
        let mut cell_vals = HashSet::new();
        let mut build_first: Option<Vec<u8>> = None;
        let mut build_const = true;
        for _ in 0..64 {
            let mut msgs = vec![[0u8; BUILD_SLOT_LEN]; n];
            let mut kbs = vec![[0u8; KEY_LEN]; n];
            for j in 0..n {
                // Fixed, low-entropy messages: any spread comes from the construction.
                msgs[j] = [u8::try_from(j).expect("j"); BUILD_SLOT_LEN];
                rng.fill_bytes(&mut kbs[j]);
            }
            let mut b = client_build(&msgs, &kbs, &mut rng);
            assert_eq!(b.len(), BUILD_LEN);
            if n > 1 {
                relay_build(&mut b, &kbs[0]);
                assert_eq!(b.len(), BUILD_LEN);
            }
            // Unused positions as seen on the wire: for n = 1, slots 1..7 sent by the
            // client; for n = 8, the filler slot 7 appended by hop 1.
            let unused = if n == 1 {
                &b[BUILD_SLOT_LEN..]
            } else {
                &b[BUILD_LEN - BUILD_SLOT_LEN..]
            };
            build_vals.extend(unused.iter().copied());
            match &build_first {
                None => build_first = Some(unused.to_vec()),
                Some(f) => build_const &= f[..] == unused[..],
            }
            assert!(unused.iter().any(|&x| x != 0));

            let (mut client, mut gw) = hops(&mut rng, n, now);
            let mut slots = [0u8; SLOTS_LEN];
            let mut body = vec![0u8; MIN_BODY];
            wrap_forward(&mut client, n - 1, &mut slots, &mut body, &mut rng).expect("wrap");
            assert_eq!(slots.len(), SLOTS_LEN);
            assert_eq!(body.len(), MIN_BODY);
            if n > 1 {
                let (ctr, tag) = read_slot0(&slots);
                gw[0].open(now, ctr, &tag, &mut body).expect("open");
                shift_out(&mut slots, &gw[0].opened_by(ctr).open_keystream(ctr));
                cell_vals.extend(slots[SLOTS_LEN - SLOT_LEN..].iter().copied());
            } else {
                cell_vals.extend(slots[SLOT_LEN..].iter().copied());
            }
        }
        assert!(!build_const, "n={n}: unused build bytes constant");
        assert!(
            build_vals.len() > 200,
            "n={n}: build filler spans {} values",
            build_vals.len()
        );
        assert!(
            cell_vals.len() > 200,
            "n={n}: cell filler spans {} values",
            cell_vals.len()
        );
    }
}
