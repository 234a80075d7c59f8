#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

/// A packet of `len` bytes (at least 4) that names its number.
fn pkt(seq: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len.max(4)];
    p[..4].copy_from_slice(&seq.to_be_bytes());
    p
}

fn seqs(out: &[Vec<u8>]) -> Vec<u32> {
    out.iter()
        .map(|p| u32::from_be_bytes(p[..4].try_into().unwrap()))
        .collect()
}

fn push(r: &mut Reorder, now: Instant, seq: u32, out: &mut Vec<Vec<u8>>) -> Result<(), Rejected> {
    r.push(now, seq, pkt(seq, 100), out).map_err(|(why, _)| why)
}

#[test]
fn in_order_packets_pass_at_once() {
    let (mut r, t, mut out) = (Reorder::default(), Instant::now(), Vec::new());
    for s in 0..10 {
        push(&mut r, t, s, &mut out).unwrap();
    }
    assert_eq!(seqs(&out), (0..10).collect::<Vec<_>>());
    assert_eq!(r.held_bytes(), 0);
    assert_eq!(r.deadline(), None);
    assert_eq!(r.stats.reordered, 0);
}

#[test]
fn a_late_number_releases_the_ones_behind_it() {
    let (mut r, t, mut out) = (Reorder::default(), Instant::now(), Vec::new());
    push(&mut r, t, 0, &mut out).unwrap();
    push(&mut r, t, 2, &mut out).unwrap();
    push(&mut r, t, 3, &mut out).unwrap();
    assert_eq!(seqs(&out), [0]);
    assert_eq!(r.held_bytes(), 200);
    assert_eq!(r.deadline(), Some(t + REORDER_TIMEOUT));
    push(&mut r, t + Duration::from_millis(5), 1, &mut out).unwrap();
    assert_eq!(seqs(&out), [0, 1, 2, 3]);
    assert_eq!(r.held_bytes(), 0);
    assert_eq!(r.stats.reordered, 2);
    assert_eq!(r.stats.lost, 0);
}

#[test]
fn duplicates_late_and_far_numbers_are_dropped_and_counted() {
    let (mut r, t, mut out) = (Reorder::default(), Instant::now(), Vec::new());
    push(&mut r, t, 0, &mut out).unwrap();
    push(&mut r, t, 5, &mut out).unwrap();
    assert_eq!(push(&mut r, t, 5, &mut out), Err(Rejected::Duplicate));
    assert_eq!(push(&mut r, t, 0, &mut out), Err(Rejected::Late));
    assert_eq!(push(&mut r, t, u32::MAX, &mut out), Err(Rejected::Late));
    push(&mut r, t, REORDER_WINDOW, &mut out).unwrap();
    assert_eq!((r.stats.duplicate, r.stats.late), (1, 2));
    assert_eq!(seqs(&out), [0]);
    assert_eq!(r.held_bytes(), 200);
}

/// A number a window or more ahead moves the window up to it: the numbers left
/// behind are given up (counted lost), the packets held among them go out in order,
/// and the buffer never spans more than the window.
#[test]
fn a_far_number_moves_the_window() {
    let (mut r, t, mut out) = (Reorder::default(), Instant::now(), Vec::new());
    push(&mut r, t, 2, &mut out).unwrap();
    push(&mut r, t, 5, &mut out).unwrap();
    push(&mut r, t, 3 + REORDER_WINDOW, &mut out).unwrap();
    // The window is now 4..4 + REORDER_WINDOW: 2 went out, 0, 1 and 3 were given up;
    // 5 is held still.
    assert_eq!(seqs(&out), [2]);
    assert_eq!((r.stats.out_of_window, r.stats.lost), (1, 3));
    assert_eq!(r.held_span(), usize::try_from(REORDER_WINDOW).unwrap());
    push(&mut r, t, 4, &mut out).unwrap();
    assert_eq!(seqs(&out), [2, 4, 5]);
    assert_eq!(push(&mut r, t, 3, &mut out), Err(Rejected::Late));
    // Half the number space ahead: everything held goes, nothing is kept waiting
    // for a peer's wild number but that packet.
    out.clear();
    push(&mut r, t, 6 + (1 << 30), &mut out).unwrap();
    assert_eq!(seqs(&out), [3 + REORDER_WINDOW]);
    assert_eq!(r.held_bytes(), 100);
    assert_eq!(r.held_span(), usize::try_from(REORDER_WINDOW).unwrap());
}

#[test]
fn a_gap_is_given_up_after_the_timeout() {
    let (mut r, t, mut out) = (Reorder::default(), Instant::now(), Vec::new());
    push(&mut r, t, 1, &mut out).unwrap();
    push(&mut r, t + Duration::from_millis(50), 2, &mut out).unwrap();
    push(&mut r, t + Duration::from_millis(60), 5, &mut out).unwrap();
    r.poll(t + REORDER_TIMEOUT - Duration::from_millis(1), &mut out);
    assert!(out.is_empty());
    r.poll(t + REORDER_TIMEOUT, &mut out);
    assert_eq!(seqs(&out), [1, 2]);
    assert_eq!(r.stats.lost, 1);
    assert_eq!(
        r.deadline(),
        Some(t + Duration::from_millis(60) + REORDER_TIMEOUT)
    );
    // Number 0 comes after it was given up; 3 and 4 never come.
    assert_eq!(
        push(&mut r, t + REORDER_TIMEOUT, 0, &mut out),
        Err(Rejected::Late)
    );
    r.poll(t + Duration::from_secs(1), &mut out);
    assert_eq!(seqs(&out), [1, 2, 5]);
    assert_eq!(r.stats.lost, 3);
    assert_eq!(r.deadline(), None);
    push(&mut r, t + Duration::from_secs(1), 6, &mut out).unwrap();
    assert_eq!(seqs(&out), [1, 2, 5, 6]);
}

#[test]
fn the_byte_bound_gives_up_gaps_instead_of_growing() {
    let (mut r, t, mut out) = (Reorder::default(), Instant::now(), Vec::new());
    let len = 1248;
    let fit = u32::try_from(REORDER_BYTES / len).unwrap();
    for s in 1..=fit {
        r.push(t, s, pkt(s, len), &mut out).unwrap();
    }
    assert!(out.is_empty());
    assert!(r.held_bytes() <= REORDER_BYTES);
    r.push(t, fit + 2, pkt(fit + 2, len), &mut out).unwrap();
    // Number 0 was given up: 1..=fit went out, fit + 2 waits for fit + 1.
    assert_eq!(seqs(&out), (1..=fit).collect::<Vec<_>>());
    assert_eq!(r.held_bytes(), len);
    assert_eq!(r.stats.lost, 1);
}

/// A shared budget below `REORDER_BYTES` bounds the buffer the same way, and
/// `clear` drops everything held, giving up the numbers it spans.
#[test]
fn a_smaller_limit_and_flush() {
    let (mut r, t, mut out) = (Reorder::default(), Instant::now(), Vec::new());
    for s in [1, 2, 4] {
        r.push_within(t, s, pkt(s, 1000), 2500, &mut out).unwrap();
    }
    // 4 did not fit beside 1 and 2: gap 0 was given up, 1 and 2 went out.
    assert_eq!(seqs(&out), [1, 2]);
    assert_eq!(r.held_bytes(), 1000);
    out.clear();
    r.push(t, 6, pkt(6, 1000), &mut out).unwrap();
    r.clear();
    assert!(out.is_empty());
    assert_eq!((r.held_bytes(), r.held_span(), r.stats.lost), (0, 0, 1 + 4));
    // Numbers 3..=6 were given up: 7 is next.
    assert_eq!(push(&mut r, t, 6, &mut out), Err(Rejected::Late));
    push(&mut r, t, 7, &mut out).unwrap();
    assert_eq!(seqs(&out), [7]);
}

#[test]
fn numbers_wrap_around() {
    let (t, mut out) = (Instant::now(), Vec::new());
    let start = u32::MAX - 2;
    let mut r = Reorder {
        next: start,
        ..Reorder::default()
    };
    for s in [start + 1, start, 0, u32::MAX, 1] {
        r.push(t, s, pkt(s, 10), &mut out).unwrap();
    }
    assert_eq!(seqs(&out), [start, start + 1, u32::MAX, 0, 1]);
    assert_eq!(r.stats.reordered, 2);
}

#[derive(Debug, Clone)]
enum Op {
    /// A packet `back` numbers before or `ahead` after the sender's next.
    Send {
        offset: i32,
        len: usize,
    },
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (-300i32..600, 1usize..1300).prop_map(|(offset, len)| Op::Send { offset, len }),
        1 => (0u64..400).prop_map(Op::Wait),
    ]
}

proptest! {
    /// Whatever arrives: what comes out is in increasing order with no number
    /// twice, the bounds hold, every packet is delivered, dropped or held, and
    /// nothing is held longer than the timeout after a poll.
    #[test]
    fn order_bounds_and_accounting_hold(ops in proptest::collection::vec(op(), 1..400), base in any::<u32>()) {
        let t0 = Instant::now();
        let mut r = Reorder { next: base, ..Reorder::default() };
        let mut now = t0;
        let mut sender = base;
        let (mut out, mut pushed, mut dropped) = (Vec::new(), 0u64, 0u64);
        for op in ops {
            match op {
                Op::Send { offset, len } => {
                    let seq = sender.wrapping_add_signed(offset);
                    if offset >= 0 { sender = sender.wrapping_add(1); }
                    pushed += 1;
                    if r.push(now, seq, pkt(seq, len), &mut out).is_err() {
                        dropped += 1;
                    }
                }
                Op::Wait(ms) => {
                    now += Duration::from_millis(ms);
                    r.poll(now, &mut out);
                    if let Some(d) = r.deadline() {
                        prop_assert!(d > now);
                    }
                }
            }
            prop_assert!(r.held_bytes() <= REORDER_BYTES);
            prop_assert!(r.held_span() <= usize::try_from(REORDER_WINDOW).unwrap());
        }
        let got = seqs(&out);
        for w in got.windows(2) {
            let step = w[1].wrapping_sub(w[0]);
            prop_assert!((1..1 << 31).contains(&step), "{} then {}", w[0], w[1]);
        }
        let held = r.held.iter().flatten().count() as u64;
        prop_assert_eq!(pushed, got.len() as u64 + dropped + held);
        prop_assert_eq!(r.stats.delivered, got.len() as u64);
        prop_assert_eq!(dropped, r.stats.late + r.stats.duplicate);
        let bytes: usize = r.held.iter().flatten().map(|h| h.buf.len()).sum();
        prop_assert_eq!(bytes, r.held_bytes());
    }
}
