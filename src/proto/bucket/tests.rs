// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use proptest::prelude::*;
use std::time::Duration;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Takes from the bucket at `now` until it refuses; returns how many it gave.
fn drain(bucket: &mut TokenBucket, now: Instant) -> u32 {
    let mut n = 0;
    while bucket.take(now) {
        n += 1;
    }
    n
}

#[test]
fn bucket_starts_full_and_refills_at_rate() {
    let t0 = Instant::now();
    let mut bucket = TokenBucket::new(10, 5, t0);
    assert_eq!(drain(&mut bucket, t0), 5);
    // 10 per second: one token every 100 ms.
    assert!(!bucket.take(t0 + ms(99)));
    assert!(bucket.take(t0 + ms(100)));
    assert!(!bucket.take(t0 + ms(100)));
    assert_eq!(drain(&mut bucket, t0 + ms(350)), 2);
    // The half token left at 350 ms carries over.
    assert!(bucket.take(t0 + ms(400)));
}

#[test]
fn take_n_takes_all_or_none() {
    let t0 = Instant::now();
    let mut bucket = TokenBucket::new(1000, 1500, t0);
    assert!(bucket.take_n(t0, 1452));
    assert!(!bucket.take_n(t0, 49), "48 left");
    assert!(bucket.take_n(t0, 48));
    assert!(!bucket.take(t0));
    // 1,452 tokens take 1.452 s to come back.
    assert!(!bucket.take_n(t0 + ms(1451), 1452));
    assert!(bucket.take_n(t0 + ms(1452), 1452));
    assert!(
        !bucket.take_n(t0 + ms(10_000), 1501),
        "more than the burst never"
    );
}

#[test]
fn bucket_caps_at_burst() {
    let t0 = Instant::now();
    let mut bucket = TokenBucket::new(10, 5, t0);
    assert_eq!(drain(&mut bucket, t0), 5);
    // A full second would be 10 tokens, but only 5 fit.
    assert_eq!(drain(&mut bucket, t0 + ms(1000)), 5);
    // An hour idle still gives only a burst.
    assert_eq!(drain(&mut bucket, t0 + Duration::from_secs(3600)), 5);
}

#[test]
fn bucket_fractions_are_exact() {
    let t0 = Instant::now();
    let mut bucket = TokenBucket::new(3, 1, t0);
    assert!(bucket.take(t0));
    // 3 per second: 333 ms is 0.999 tokens, 334 ms is 1.002.
    assert!(!bucket.take(t0 + ms(333)));
    assert!(bucket.take(t0 + ms(334)));
    // Sustained over many small steps, exactly rate * seconds tokens are given.
    let mut given = 0;
    for step in 1..=10_000u64 {
        if bucket.take(t0 + ms(334) + Duration::from_micros(997 * step)) {
            given += 1;
        }
    }
    // 9.97 s at 3 per second, plus the 0.002 tokens left over: 29.912 tokens.
    assert_eq!(given, 29);
}

#[test]
fn bucket_zero_rate_and_zero_burst() {
    let t0 = Instant::now();
    let mut no_refill = TokenBucket::new(0, 2, t0);
    assert_eq!(drain(&mut no_refill, t0), 2);
    assert_eq!(drain(&mut no_refill, t0 + Duration::from_secs(1000)), 0);
    let mut empty = TokenBucket::new(1000, 0, t0);
    assert_eq!(drain(&mut empty, t0 + Duration::from_secs(10)), 0);
}

#[test]
fn bucket_extremes_do_not_overflow() {
    let t0 = Instant::now();
    let mut bucket = TokenBucket::new(u32::MAX, u32::MAX, t0);
    assert!(bucket.take(t0));
    assert!(bucket.take(t0 + Duration::from_secs(86_400 * 365 * 100)));
    assert_eq!(bucket.stored, bucket.capacity - NANO);
}

#[test]
fn bucket_time_going_backwards_gives_nothing() {
    let t0 = Instant::now() + Duration::from_secs(10);
    let mut bucket = TokenBucket::new(10, 1, t0);
    assert!(bucket.take(t0));
    assert!(!bucket.take(t0 - Duration::from_secs(5)));
    // Refill resumes from the latest time seen, not from the earlier one.
    assert!(!bucket.take(t0 + ms(99)));
    assert!(bucket.take(t0 + ms(100)));
}

proptest! {
    #[test]
    fn bucket_gives_burst_plus_rate_times_elapsed(
        rate in 1u32..2000,
        burst in 2u32..50,
        raw_steps in proptest::collection::vec(any::<u64>(), 1..200),
    ) {
        // Drained at every step, with each step short enough that its refill fits
        // in the bucket, no token is lost to the burst cap: over time T exactly
        // burst + floor(rate * T) tokens are given.
        let max_step = u64::from(burst - 1) * NANO / u64::from(rate);
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(rate, burst, t0);
        let mut given = u128::from(drain(&mut bucket, t0));
        let mut elapsed_ns: u64 = 0;
        for raw in raw_steps {
            elapsed_ns += raw % (max_step + 1);
            given += u128::from(drain(&mut bucket, t0 + Duration::from_nanos(elapsed_ns)));
        }
        let expected =
            u128::from(burst) + u128::from(rate) * u128::from(elapsed_ns) / u128::from(NANO);
        prop_assert_eq!(given, expected);
    }
}
