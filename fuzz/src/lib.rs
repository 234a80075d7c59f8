//! Fuzz targets that start from established circuits: the fuzzer's bytes become the
//! actions of a hostile session (`tests/forgery/mod.rs`, the harness the test suite's
//! `tests/hostile_peer.rs` drives from a seeded RNG), so the fuzzer explores the code
//! behind authentication with the real keys of a hostile client or gateway.

#[path = "../../tests/forgery/mod.rs"]
pub mod forgery;

use std::sync::atomic::{AtomicU64, Ordering};

use anonnet::node::TAIL_LEN;
use anonnet::proto::wire::{SLOTS, SLOT_LEN};
use libfuzzer_sys::arbitrary::{Result, Unstructured};

use crate::forgery::{Action, Session};

/// Who forges: the client (forward cells and link control, against the gateways) or
/// the gateways of its circuits (backward cells, against the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Gateway,
}

/// The seed of every session: a crash reproduces from its input alone.
const SEED: u64 = 23;

/// Sessions run and forged datagrams sent, over the whole fuzzing process.
static RUNS: AtomicU64 = AtomicU64::new(0);
static FORGED: AtomicU64 = AtomicU64::new(0);

// The encoding is compact so that one input holds many actions: a body's length is
// two bytes, the tail a mode byte (and at most one slot of bytes), the counters a mask
// byte and one u64 per hop it names.

fn body(u: &mut Unstructured<'_>) -> Result<Vec<u8>> {
    let n = usize::from(u.arbitrary::<u16>()?) % 1601;
    let n = n.min(u.len());
    Ok(u.bytes(n)?.to_vec())
}

fn tail(u: &mut Unstructured<'_>) -> Result<[u8; TAIL_LEN]> {
    let mut t = [0u8; TAIL_LEN];
    match u.arbitrary::<u8>()? {
        0 => {}
        1 => {
            let slot: [u8; SLOT_LEN] = u.arbitrary()?;
            for chunk in t.chunks_mut(SLOT_LEN) {
                chunk.copy_from_slice(&slot);
            }
        }
        b => t.fill(b),
    }
    Ok(t)
}

fn counters(u: &mut Unstructured<'_>) -> Result<[Option<u64>; SLOTS]> {
    let mask: u8 = u.arbitrary()?;
    let mut c = [None; SLOTS];
    for (i, slot) in c.iter_mut().enumerate() {
        if mask & (1 << i) != 0 {
            *slot = Some(u.arbitrary()?);
        }
    }
    Ok(c)
}

fn small(u: &mut Unstructured<'_>) -> Result<usize> {
    Ok(usize::from(u.arbitrary::<u8>()?))
}

fn action(u: &mut Unstructured<'_>, side: Side) -> Result<Action> {
    if u.ratio(1u8, 8u8)? {
        return Ok(Action::Wait {
            millis: u.arbitrary()?,
        });
    }
    Ok(match side {
        Side::Client if u.ratio(1u8, 6u8)? => Action::Ctrl {
            circuit: small(u)?,
            kind: u.arbitrary()?,
            cid: u.arbitrary()?,
            counter: u.arbitrary()?,
            body: body(u)?,
        },
        Side::Client => Action::Forward {
            circuit: small(u)?,
            target: small(u)?,
            terminal: u.arbitrary()?,
            counters: counters(u)?,
            cid: u.arbitrary()?,
            tail: tail(u)?,
            body: body(u)?,
        },
        Side::Gateway => Action::Backward {
            circuit: small(u)?,
            hop: small(u)?,
            pick: small(u)?,
            counter: u.arbitrary()?,
            tail: tail(u)?,
            body: body(u)?,
        },
    })
}

/// Runs the actions `data` encodes, from a fresh session with established circuits.
pub fn run(data: &[u8], side: Side) {
    let mut u = Unstructured::new(data);
    let mut session = Session::new(SEED);
    while !u.is_empty() {
        let Ok(a) = action(&mut u, side) else {
            break;
        };
        session.apply(&a);
    }
    session.finish();
    let forged =
        FORGED.fetch_add(session.counts.forged(), Ordering::Relaxed) + session.counts.forged();
    let runs = RUNS.fetch_add(1, Ordering::Relaxed) + 1;
    if runs.is_power_of_two() && runs >= 1024 {
        eprintln!("hostile sessions: {runs} runs, {forged} forged datagrams");
    }
}
