//! The authenticated hostile peer, from a seeded RNG: a client that holds valid
//! circuits through the gateways under test sends properly sealed cells whose
//! counters, flags, slots, bodies, commands, lengths, fragment headers, rekey messages
//! and link control messages are arbitrary, and the gateways of those circuits send
//! such cells back to it (the harness and its checks: `tests/forgery/mod.rs`).
//!
//! `ANONNET_HOSTILE_CELLS` (default 100,000) sets the number of forged datagrams and
//! `ANONNET_HOSTILE_SEED` the seed, for longer runs.

mod forgery;

use anonnet::node::TAIL_LEN;
use anonnet::proto::crypto::noise_initiator;
use anonnet::proto::framing::{FRAGMENT, FRAGMENT_DATA};
use anonnet::proto::vc::{JOIN_LEN, SEQ_LEN, VC_ID_LEN};
use anonnet::proto::wire::{Cmd, BODY_HEADER, CTR_FLAG, CTR_PHASE, MAX_BODY, NK_MSG1_EMPTY, SLOTS};
use forgery::{udp, Action, Session, EXIT_OWN, HOSTILE_PATHS, SERVER};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn pick<T: Copy>(rng: &mut ChaCha20Rng, items: &[T]) -> T {
    items[rng.next_u32() as usize % items.len()]
}

fn chance(rng: &mut ChaCha20Rng, percent: u32) -> bool {
    rng.next_u32() % 100 < percent
}

/// A payload an exit circuit might carry: packets to allowed, refused and odd places,
/// fragments with arbitrary headers, or junk.
fn payload(rng: &mut ChaCha20Rng, room: usize) -> Vec<u8> {
    let mut p = match rng.next_u32() % 4 {
        0 => {
            let dst = pick(rng, &[SERVER, EXIT_OWN, [127, 0, 0, 1], [224, 0, 0, 1]]);
            let port = pick(rng, &[53, 25, 443, 0]);
            udp(dst, port, rng.next_u32() as usize % 1400)
        }
        1 => {
            let mut f = vec![
                FRAGMENT,
                0,
                pick(rng, &[0, 1, 2, 255]),
                pick(rng, &[0, 1, 2, 3, 4, 7, 8, 200]),
                pick(rng, &[0, 1, 2, 4, 5, 8, 9, 255]),
            ];
            let n = pick(rng, &[0, 1, FRAGMENT_DATA, FRAGMENT_DATA + 1, 3000]);
            f.extend((0..n).map(|_| rng.next_u32() as u8));
            f
        }
        2 => {
            let mut pkt = udp(SERVER, 443, rng.next_u32() as usize % 200);
            let at = rng.next_u32() as usize % pkt.len();
            pkt[at] = rng.next_u32() as u8;
            pkt.truncate(rng.next_u32() as usize % (pkt.len() + 1));
            pkt
        }
        _ => (0..rng.next_u32() % 64)
            .map(|_| rng.next_u32() as u8)
            .collect(),
    };
    p.truncate(room);
    p
}

/// A body plaintext of a forged cell: any size, any command, any length field.
fn body(rng: &mut ChaCha20Rng, gateway_key: &[u8; 32]) -> Vec<u8> {
    let size = match rng.next_u32() % 10 {
        0 => rng.next_u32() as usize % 40,
        1 => rng.next_u32() as usize % (MAX_BODY + 300),
        _ => pick(rng, &[128, 256, 512, 1024, MAX_BODY]),
    };
    let mut b: Vec<u8> = (0..size).map(|_| rng.next_u32() as u8).collect();
    if size < BODY_HEADER || chance(rng, 10) {
        return b;
    }
    let cmd = pick(
        rng,
        &[
            Cmd::Data as u8,
            Cmd::Data as u8,
            2,
            3,
            4,
            0,
            5,
            0xFF,
            Cmd::Join as u8,
            Cmd::Join as u8,
            Cmd::Joined as u8,
            Cmd::VData as u8,
            Cmd::VData as u8,
            Cmd::VData as u8,
            Cmd::VData as u8,
        ],
    );
    let room = size - BODY_HEADER;
    let inner = match cmd {
        1 => payload(rng, room),
        7 => {
            // JOINs of a few virtual circuits (so legs collide and fill them), with
            // any leg count; or junk.
            let mut j = vec![pick(rng, &[1u8, 2, 3]); VC_ID_LEN];
            j.push(pick(rng, &[0, 1, 2, 4, 5, 255]));
            j.truncate(pick(rng, &[JOIN_LEN, JOIN_LEN, JOIN_LEN - 1, 0]));
            j.truncate(room);
            j
        }
        9 => {
            // A sequence number near the start, past the window or anywhere, then a
            // payload.
            let seq = match rng.next_u32() % 4 {
                0 => rng.next_u32(),
                1 => rng.next_u32() % 300,
                2 => u32::MAX - rng.next_u32() % 4,
                _ => 256 + rng.next_u32() % 4,
            };
            let mut v = seq.to_be_bytes().to_vec();
            v.extend(payload(rng, room.saturating_sub(SEQ_LEN)));
            v.truncate(pick(rng, &[room, room, 3, 0]).min(room));
            v
        }
        3 if chance(rng, 50) => {
            // A valid NK msg1 to the hop: a real rekey the client's node never asked for.
            let mut hs = noise_initiator(rng, gateway_key);
            let mut m = [0u8; 64];
            let n = hs.write_message(&[], &mut m).expect("msg1");
            assert_eq!(n, NK_MSG1_EMPTY);
            m[..n.min(room)].to_vec()
        }
        _ => (0..rng.next_u32() as usize % (room + 1))
            .map(|_| rng.next_u32() as u8)
            .collect(),
    };
    let len = match rng.next_u32() % 6 {
        0 => rng.next_u32() as u16,
        1 => u16::try_from(room + 1).unwrap_or(u16::MAX),
        _ => u16::try_from(inner.len()).unwrap_or(u16::MAX),
    };
    b[0] = cmd;
    b[1..3].copy_from_slice(&len.to_be_bytes());
    b[BODY_HEADER..BODY_HEADER + inner.len()].copy_from_slice(&inner);
    b
}

fn tail(rng: &mut ChaCha20Rng) -> [u8; TAIL_LEN] {
    let mut t = [0u8; TAIL_LEN];
    match rng.next_u32() % 4 {
        0 => t.fill(0xFF),
        1 => {}
        _ => rng.fill_bytes(&mut t),
    }
    t
}

fn counter(rng: &mut ChaCha20Rng) -> Option<u64> {
    let flags = pick(rng, &[0, CTR_FLAG, CTR_PHASE, CTR_FLAG | CTR_PHASE]);
    match rng.next_u32() % 10 {
        0..=5 => None,
        6 => Some(rng.next_u64()),
        7 => Some(flags | (rng.next_u64() % 64)),
        8 => Some(flags | ((1 << 61) - 1 - rng.next_u64() % 4)),
        _ => Some(flags | (rng.next_u64() % 100_000)),
    }
}

/// A random action: mostly forward forgeries, some backward and link control, and
/// time passing.
fn action(rng: &mut ChaCha20Rng, session: &Session) -> Action {
    let circuit = rng.next_u32() as usize % HOSTILE_PATHS.len();
    let (path, _) = HOSTILE_PATHS[circuit];
    match rng.next_u32() % 100 {
        0..=69 => {
            let target = rng.next_u32() as usize % path.len();
            let key = session.net.spec(path[target]).key;
            let mut counters = [None; SLOTS];
            for c in counters.iter_mut().take(path.len()) {
                *c = counter(rng);
            }
            Action::Forward {
                circuit,
                target,
                terminal: !chance(rng, 10),
                counters,
                cid: chance(rng, 3).then(|| rng.next_u32()),
                body: body(rng, &key),
                tail: tail(rng),
            }
        }
        70..=84 => Action::Backward {
            circuit,
            hop: rng.next_u32() as usize,
            pick: rng.next_u32() as usize,
            counter: counter(rng),
            body: body(rng, &[0; 32]),
            tail: tail(rng),
        },
        85..=89 => {
            let kind = pick(rng, &[1, 2, 3, 0, 4, 7, 0xFF]);
            let any = rng.next_u32() as usize % 1300;
            let len = pick(rng, &[0, 1, 4, 1152, 512, any]);
            Action::Ctrl {
                circuit,
                kind,
                cid: chance(rng, 20).then(|| rng.next_u32()),
                counter: chance(rng, 20).then(|| rng.next_u64() % 20_000),
                body: (0..len).map(|_| rng.next_u32() as u8).collect(),
            }
        }
        _ => Action::Wait {
            millis: (rng.next_u32() % 400) as u16,
        },
    }
}

#[test]
fn valid_keys_and_hostile_cells_crash_nothing_and_every_drop_is_counted() {
    let cells: u64 = std::env::var("ANONNET_HOSTILE_CELLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed: u64 = std::env::var("ANONNET_HOSTILE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(23);
    let mut session = Session::new(seed);
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x686f_7374);
    while session.counts.forged() < cells {
        let a = action(&mut rng, &session);
        session.apply(&a);
    }
    session.report();
    session.finish();
    // The cells reached the exit's virtual circuits: legs joined and refused,
    // VDATA off a leg and into a reorder buffer.
    let vc = session.net.exit.stats().vc;
    assert!(
        vc.joined > 0 && vc.refused > 0 && vc.misrouted > 0,
        "{vc:?}"
    );
    assert!(vc.reorder.lost + vc.reorder.delivered > 0, "{vc:?}");
}
