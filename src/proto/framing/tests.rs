// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use proptest::prelude::*;

fn split(packet: &[u8], id: u16) -> Vec<Vec<u8>> {
    (0..Carrier::Data.fragment_count(packet.len()))
        .map(|i| {
            let mut out = vec![0u8; MAX_PAYLOAD];
            let n = Carrier::Data
                .write_fragment(packet, id, i, &mut out)
                .unwrap();
            out.truncate(n);
            out
        })
        .collect()
}

fn push(r: &mut Reassembler, now: Instant, frag: &[u8]) -> Option<Vec<u8>> {
    match Carrier::Data.classify(frag).expect("valid fragment") {
        Payload::Fragment {
            id,
            index,
            count,
            data,
        } => r.push(now, id, index, count, data).map(|p| p.to_vec()),
        Payload::Packet(_) => panic!("not a fragment"),
    }
}

#[test]
fn header_layout() {
    let packet: Vec<u8> = (0..1300u32).map(|i| (i % 251) as u8).collect();
    let f = split(&packet, 0xabcd);
    assert_eq!(f.len(), 2);
    assert_eq!(&f[0][..5], &[0x10, 0xab, 0xcd, 0, 2]);
    assert_eq!(f[0].len(), MAX_PAYLOAD);
    assert_eq!(&f[1][..5], &[0x10, 0xab, 0xcd, 1, 2]);
    assert_eq!(f[1].len(), FRAGMENT_HEADER + 1300 - FRAGMENT_DATA);
}

#[test]
fn classify_rejects_bad_payloads() {
    assert_eq!(Carrier::Data.classify(&[]), Err(PayloadError::Empty));
    assert_eq!(
        Carrier::Data.classify(&[0x20, 0]),
        Err(PayloadError::UnknownType(0x20))
    );
    assert_eq!(
        Carrier::Data.classify(&[0x10, 0, 0, 0]),
        Err(PayloadError::BadFragment)
    );
    // count 1, index beyond count, too many fragments, short non-last fragment.
    assert_eq!(
        Carrier::Data.classify(&[0x10, 0, 1, 0, 1, 9]),
        Err(PayloadError::BadFragment)
    );
    assert_eq!(
        Carrier::Data.classify(&[0x10, 0, 1, 2, 2, 9]),
        Err(PayloadError::BadFragment)
    );
    assert_eq!(
        Carrier::Data.classify(&[0x10, 0, 1, 0, 5, 9]),
        Err(PayloadError::BadFragment)
    );
    assert_eq!(
        Carrier::Data.classify(&[0x10, 0, 1, 0, 2, 9]),
        Err(PayloadError::BadFragment)
    );
    assert_eq!(
        Carrier::Data.classify(&[0x45, 0]),
        Ok(Payload::Packet(&[0x45, 0]))
    );
    assert_eq!(
        Carrier::Data.classify(&[0x60]),
        Ok(Payload::Packet(&[0x60]))
    );
}

#[test]
fn complete_takes_packets_and_last_fragments() {
    let now = Instant::now();
    let mut r = Reassembler::default();
    let mut whole = vec![0x45u8; 60];
    assert_eq!(
        r.complete(now, &mut whole)
            .expect("a valid payload")
            .map(|p| p.len()),
        Some(60)
    );
    let packet: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    let mut parts = split(&packet, 7);
    let last = parts.pop().expect("fragments");
    for mut f in parts {
        assert_eq!(r.complete(now, &mut f).expect("a valid payload"), None);
    }
    let mut last = last;
    assert_eq!(
        r.complete(now, &mut last)
            .expect("a valid payload")
            .map(|p| p.to_vec()),
        Some(packet)
    );
    assert!(r.complete(now, &mut [0x10]).is_err());
}

#[test]
fn duplicates_and_timeouts_drop() {
    let t0 = Instant::now();
    let packet = vec![7u8; 2000];
    let f = split(&packet, 1);
    let mut r = Reassembler::default();
    assert_eq!(push(&mut r, t0, &f[0]), None);
    assert_eq!(push(&mut r, t0, &f[0]), None);
    assert_eq!(r.dropped, 1);
    // The second half arrives too late: the slot restarts and waits again.
    let late = t0 + REASSEMBLY_TIMEOUT;
    assert_eq!(push(&mut r, late, &f[1]), None);
    assert_eq!(push(&mut r, late, &f[0]), Some(packet));
}

#[test]
fn oldest_slot_is_evicted() {
    let t0 = Instant::now();
    let mut r = Reassembler::default();
    let packets: Vec<Vec<u8>> = (0..=REASSEMBLY_SLOTS as u8)
        .map(|i| vec![i; 1500])
        .collect();
    let frags: Vec<_> = packets
        .iter()
        .enumerate()
        .map(|(i, p)| split(p, i as u16))
        .collect();
    for (i, f) in frags.iter().enumerate() {
        assert_eq!(
            push(&mut r, t0 + Duration::from_millis(i as u64), &f[0]),
            None
        );
    }
    // Packet 0 was evicted by the fifth; the others complete.
    assert_eq!(push(&mut r, t0, &frags[0][1]), None);
    for (i, f) in frags.iter().enumerate().skip(2) {
        assert_eq!(push(&mut r, t0, &f[1]).as_deref(), Some(&packets[i][..]));
    }
}

proptest! {
    #[test]
    fn any_order_reassembles(
        len in MAX_PAYLOAD + 1..=MAX_PACKET,
        id in any::<u16>(),
        seed in any::<u64>(),
    ) {
        let packet: Vec<u8> = (0..len).map(|i| (i as u64 ^ seed) as u8).collect();
        let mut f = split(&packet, id);
        prop_assert!(f.iter().all(|x| x.len() <= MAX_PAYLOAD));
        let n = f.len();
        f.rotate_left((seed % n as u64) as usize);
        let mut r = Reassembler::default();
        let now = Instant::now();
        for (i, frag) in f.iter().enumerate() {
            let out = push(&mut r, now, frag);
            if i + 1 == n {
                prop_assert_eq!(out.as_deref(), Some(&packet[..]));
            } else {
                prop_assert_eq!(out, None);
            }
        }
    }

    #[test]
    fn classify_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = Carrier::Data.classify(&bytes);
    }

    /// Fragment headers with any id, index and count and data of any length up to
    /// two cells, as a client with valid keys can send them: the reassembler never
    /// panics and only returns packets within [`MAX_PACKET`].
    #[test]
    fn reassembler_takes_any_fragment(
        frags in proptest::collection::vec(
            (0u16..4, any::<u8>(), 0u8..8, 0usize..2 * MAX_PAYLOAD),
            1..64,
        ),
    ) {
        let mut r = Reassembler::default();
        let now = Instant::now();
        for (id, index, count, len) in frags {
            let mut p = vec![FRAGMENT, 0, id as u8, index % 8, count];
            p.resize(FRAGMENT_HEADER + len, 0x5a);
            if let Ok(Some(packet)) = r.complete(now, &mut p) {
                prop_assert!(packet.len() <= MAX_PACKET);
            }
        }
    }
}

#[test]
fn an_oversized_last_fragment_is_refused() {
    let mut r = Reassembler::default();
    let now = Instant::now();
    for len in [FRAGMENT_DATA + 1, MAX_PAYLOAD, 2 * MAX_PAYLOAD] {
        let mut p = vec![FRAGMENT, 0, 1, 3, 4];
        p.resize(FRAGMENT_HEADER + len, 0);
        assert_eq!(
            r.complete(now, &mut p),
            Err(PayloadError::BadFragment),
            "{len}"
        );
    }
}

#[test]
fn write_fragment_refuses_what_is_not_a_fragment() {
    let mut out = [0u8; MAX_PAYLOAD];
    let two = vec![7u8; MAX_PAYLOAD + 1];
    assert_eq!(
        Carrier::Data.write_fragment(&[4u8; 100], 0, 0, &mut out),
        None,
        "fits whole"
    );
    assert_eq!(
        Carrier::Data.write_fragment(&vec![6u8; MAX_PACKET + 1], 0, 0, &mut out),
        None
    );
    assert_eq!(
        Carrier::Data.write_fragment(&two, 0, 2, &mut out),
        None,
        "no third fragment"
    );
    assert_eq!(
        Carrier::Data.write_fragment(&two, 0, 0, &mut out[..FRAGMENT_HEADER]),
        None
    );
    assert_eq!(
        Carrier::Data.write_fragment(&two, 0, 1, &mut out),
        Some(FRAGMENT_HEADER + two.len() - FRAGMENT_DATA)
    );
}

#[test]
fn fragmenter_numbers_only_fragmented_packets() {
    let mut f = Fragmenter::default();
    assert_eq!(f.split(MAX_PAYLOAD, Carrier::Data), Split::Whole);
    assert_eq!(
        f.split(MAX_PAYLOAD + 1, Carrier::Data),
        Split::Fragments { id: 0, count: 2 }
    );
    assert_eq!(f.split(1, Carrier::Data), Split::Whole);
    assert_eq!(
        f.split(MAX_PACKET, Carrier::Data),
        Split::Fragments {
            id: 1,
            count: MAX_FRAGMENTS
        }
    );
    assert_eq!(f.split(MAX_PACKET + 1, Carrier::Data), Split::TooLarge);
    let mut wrap = Fragmenter { next_id: u16::MAX };
    assert_eq!(
        wrap.split(MAX_PAYLOAD + 1, Carrier::Data),
        Split::Fragments {
            id: u16::MAX,
            count: 2
        }
    );
    assert_eq!(
        wrap.split(MAX_PAYLOAD + 1, Carrier::Data),
        Split::Fragments { id: 0, count: 2 }
    );
}

/// VDATA fragments leave room for the sequence number: each fills `MAX_VDATA`, the
/// receiver places them at the VDATA stride, and a DATA-sized fragment is refused.
#[test]
fn vdata_fragments_fill_the_vdata_payload() {
    let carrier = Carrier::VData;
    assert_eq!(carrier.stride(), 1239);
    assert_eq!(carrier.fragment_count(MAX_VDATA), 1);
    assert_eq!(carrier.fragment_count(MAX_VDATA + 1), 2);
    let packet: Vec<u8> = (0..carrier.max_packet()).map(|i| (i % 253) as u8).collect();
    let mut r = Reassembler::new(carrier);
    let now = Instant::now();
    let mut whole = None;
    for i in 0..MAX_FRAGMENTS {
        let mut out = vec![0u8; MAX_PAYLOAD];
        let n = carrier.write_fragment(&packet, 9, i, &mut out).unwrap();
        assert_eq!(n, MAX_VDATA);
        whole = r.complete(now, &mut out[..n]).unwrap().map(|p| p.to_vec());
    }
    assert_eq!(whole.as_deref(), Some(&packet[..]));
    let mut f = Fragmenter::default();
    assert_eq!(f.split(carrier.max_packet() + 1, carrier), Split::TooLarge);
    let mut data_sized = vec![0u8; MAX_PAYLOAD];
    let n = Carrier::Data
        .write_fragment(&packet[..2000], 1, 0, &mut data_sized)
        .unwrap();
    assert_eq!(
        r.complete(now, &mut data_sized[..n]),
        Err(PayloadError::BadFragment)
    );
}
