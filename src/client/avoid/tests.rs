use super::*;

const G: [u8; 32] = [7; 32];

#[test]
fn a_failed_gateway_is_avoided_for_the_back_off_then_used_again() {
    let t = Instant::now();
    let mut a = Avoid::new();
    assert!(!a.avoids(t, &G));
    assert_eq!(a.failed(t, G), AVOID_FIRST);
    assert!(a.avoids(t + AVOID_FIRST - Duration::from_millis(1), &G));
    assert!(!a.avoids(t + AVOID_FIRST, &G));
    assert!(!a.avoids(t, &[8; 32]), "only the one that failed");
}

#[test]
fn repeated_failures_double_the_back_off_up_to_the_cap_and_are_forgotten() {
    let t = Instant::now();
    let mut a = Avoid::new();
    let mut now = t;
    let mut periods = Vec::new();
    for _ in 0..9 {
        let p = a.failed(now, G);
        periods.push(p.as_secs());
        now += p;
    }
    assert_eq!(periods, [10, 20, 40, 80, 160, 320, 600, 600, 600]);
    // Failing again while avoided (another circuit through it) does not double it.
    assert_eq!(a.failed(now - Duration::from_secs(1), G), AVOID_MAX);
    // Long healthy: a new failure starts over.
    assert_eq!(a.failed(now + AVOID_MAX + AVOID_MEMORY, G), AVOID_FIRST);
}

#[test]
fn when_paths_run_short_the_last_failure_is_left_out_longest() {
    let t = Instant::now();
    let mut a = Avoid::new();
    let (old, new) = ([1; 32], [2; 32]);
    a.failed(t, old);
    a.failed(t, old);
    let now = t + Duration::from_secs(5);
    a.failed(now, new);
    let levels = |k: &[u8; 32]| {
        (0..LEVELS)
            .map(|l| a.excludes(now, l, k))
            .collect::<Vec<_>>()
    };
    assert_eq!(levels(&old), [true, false, false]);
    assert_eq!(levels(&new), [true, true, false]);
    assert_eq!(levels(&G), [false, false, false]);
    // Once its back-off ended, a gateway is left out at no level.
    let later = now + AVOID_MAX;
    assert!(!(0..LEVELS).any(|l| a.excludes(later, l, &new)));
}

#[test]
fn the_table_is_bounded() {
    let t = Instant::now();
    let mut a = Avoid::new();
    for i in 0..AVOID_CAP + 10 {
        let mut k = [0u8; 32];
        k[..8].copy_from_slice(&(i as u64).to_le_bytes());
        a.failed(t + Duration::from_millis(i as u64), k);
    }
    assert_eq!(a.failed.len(), AVOID_CAP);
    assert!(!a.avoids(t, &[0; 32]), "the earliest to end went first");
}
