// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use proptest::prelude::*;

fn summary(s: &str) -> PortSummary {
    s.parse().unwrap()
}

#[test]
fn summary_good() {
    let s = summary("accept 80,443,1000-2000");
    for (port, ok) in [
        (0, false),
        (79, false),
        (80, true),
        (443, true),
        (999, false),
        (1000, true),
        (1500, true),
        (2000, true),
        (2001, false),
        (65535, false),
    ] {
        assert_eq!(s.accepts(port), ok, "{port}");
    }
    let s = summary("reject 25,119,135-139,445");
    for (port, ok) in [
        (0, false),
        (1, true),
        (25, false),
        (80, true),
        (135, false),
        (139, false),
        (140, true),
        (445, false),
        (65535, true),
    ] {
        assert_eq!(s.accepts(port), ok, "{port}");
    }
    assert!((1..=65535).all(|p| summary("accept 1-65535").accepts(p)));
    assert!((0..=65535).all(|p| !summary("reject 1-65535").accepts(p)));
    assert!(summary("accept 65535").accepts(65535));
    assert!(summary("accept 1").accepts(1));
    for text in [
        "accept 80,443,1000-2000",
        "reject 25,119,135-139,445",
        "accept 1-65535",
        "reject 1",
        "accept 1,3,65535",
    ] {
        assert_eq!(summary(text).to_string(), text);
    }
}

#[test]
fn summary_bad() {
    for text in [
        "",
        "accept",
        "accept ",
        "reject ",
        "allow 80",
        "Accept 80",
        "accept 0",
        "accept 65536",
        "accept 99999999999",
        "accept 080",
        "accept +80",
        "accept -80",
        "accept 80-",
        "accept 1-2-3",
        "accept 80,",
        "accept ,80",
        "accept 80,,443",
        "accept 80,80",
        "accept 443,80",
        "accept 80-79",
        "accept 1-5,6-10",
        "accept 1-10,5-20",
        "accept 1-10,10",
        "accept  80",
        " accept 80",
        "accept 80 ",
        "accept 80, 443",
        "accept\t80",
        "accept 8O",
        "accept 1-65535,1",
        "accept 5-5",
    ] {
        let err = text.parse::<PortSummary>().unwrap_err();
        assert!(matches!(err, SummaryError(_)), "{text:?}: {err}");
    }
    let long = format!("accept {}", vec!["7"; 300].join(","));
    assert_eq!(
        long.parse::<PortSummary>().unwrap_err(),
        SummaryError("longer than 512 bytes".into())
    );
    assert_eq!(
        "accept 443,80".parse::<PortSummary>().unwrap_err().to_string(),
        "bad port summary: \"accept 443,80\": \"80\" overlaps, touches or precedes the entry before it"
    );
}

fn arb_summary() -> impl Strategy<Value = PortSummary> {
    (
        any::<bool>(),
        prop::collection::btree_set(1u16..=65535, 1..40),
    )
        .prop_map(|(accept, bounds)| {
            let bounds: Vec<u16> = bounds.into_iter().collect();
            let mut ranges: Vec<(u16, u16)> = Vec::new();
            for pair in bounds.chunks(2) {
                let (start, end) = (pair[0], *pair.last().unwrap());
                match ranges.last_mut() {
                    Some(last) if u32::from(last.1) + 1 >= u32::from(start) => last.1 = end,
                    _ => ranges.push((start, end)),
                }
            }
            PortSummary { accept, ranges }
        })
}

proptest! {
    #[test]
    fn summary_round_trip(s in arb_summary(), port in any::<u16>()) {
        let text = s.to_string();
        prop_assert_eq!(text.parse::<PortSummary>().unwrap(), s.clone());
        let listed = s.ranges.iter().any(|&(a, b)| a <= port && port <= b);
        prop_assert_eq!(s.accepts(port), port != 0 && listed == s.accept);
    }

    #[test]
    fn summary_parse_never_panics(text in "(accept|reject)? ?[0-9,-]{0,20}") {
        let _ = text.parse::<PortSummary>();
    }
}
