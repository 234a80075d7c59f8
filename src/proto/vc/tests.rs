// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use proptest::prelude::*;

#[test]
fn constants() {
    assert_eq!(MAX_VDATA, 1244);
    assert_eq!(JOIN_LEN, 17);
}

#[test]
fn join_vector() {
    let mut b: Vec<u8> = (0u8..16).collect();
    b.push(2);
    let j = Join::parse(&b).unwrap();
    assert_eq!(j.vc.0, <[u8; 16]>::try_from(&b[..16]).unwrap());
    assert_eq!(j.max_legs, 2);
    assert_eq!(j.emit().as_slice(), b.as_slice());
    assert_eq!(format!("{:?}", j.vc), "VcId(..)");
}

#[test]
fn join_rejects_bad_lengths_and_leg_counts() {
    let ok = [7u8; 17];
    for bad in [&ok[..16], &[7u8; 18][..], &[][..]] {
        assert_eq!(Join::parse(bad), Err(WireError::Malformed));
    }
    for legs in [0u8, 5, 255] {
        let mut b = ok;
        b[16] = legs;
        assert_eq!(Join::parse(&b), Err(WireError::Malformed), "{legs}");
    }
    for legs in 1..=MAX_LEGS {
        let mut b = ok;
        b[16] = legs;
        assert_eq!(Join::parse(&b).unwrap().max_legs, legs);
    }
}

#[test]
fn joined_vectors() {
    assert_eq!(Joined::parse(&[3]), Ok(Joined { legs: 3 }));
    assert_eq!(Joined { legs: 4 }.emit(), [4]);
    for bad in [&[0u8][..], &[5], &[], &[1, 1]] {
        assert_eq!(Joined::parse(bad), Err(WireError::Malformed), "{bad:?}");
    }
}

#[test]
fn vdata_vectors() {
    let p = [0, 0, 1, 0, 0x45, 0];
    assert_eq!(split_vdata(&p), Ok((256, &p[4..])));
    assert_eq!(split_vdata(&p[..4]), Err(WireError::Malformed));
    assert_eq!(split_vdata(&[]), Err(WireError::Malformed));
    let mut q = [0u8; 5];
    write_seq(0xdead_beef, &mut q).unwrap();
    assert_eq!(q, [0xde, 0xad, 0xbe, 0xef, 0]);
    assert_eq!(write_seq(1, &mut [0u8; 4]), Err(WireError::Malformed));
}

proptest! {
    #[test]
    fn parsers_take_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..40)) {
        if let Ok(j) = Join::parse(&b) {
            prop_assert_eq!(j.emit().to_vec(), b.clone());
        }
        if let Ok(j) = Joined::parse(&b) {
            prop_assert_eq!(j.emit().to_vec(), b.clone());
        }
        if let Ok((seq, rest)) = split_vdata(&b) {
            let mut c = b.clone();
            write_seq(seq, &mut c).unwrap();
            prop_assert_eq!(&c, &b);
            prop_assert_eq!(rest.len() + SEQ_LEN, b.len());
        }
    }

    #[test]
    fn round_trips(vc in any::<[u8; 16]>(), legs in 1..=MAX_LEGS, seq in any::<u32>(), len in 1..MAX_VDATA) {
        let j = Join { vc: VcId(vc), max_legs: legs };
        prop_assert_eq!(Join::parse(&j.emit()), Ok(j));
        prop_assert_eq!(Joined::parse(&Joined { legs }.emit()), Ok(Joined { legs }));
        let mut p = vec![0x45u8; SEQ_LEN + len];
        write_seq(seq, &mut p).unwrap();
        let (got, rest) = split_vdata(&p).unwrap();
        prop_assert_eq!(got, seq);
        prop_assert_eq!(rest.len(), len);
    }
}
