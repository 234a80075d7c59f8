// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use proptest::prelude::*;

#[test]
fn classify_vectors() {
    let mut init = vec![0x11, 0, 0, 0, 1];
    init.extend_from_slice(&[0xab; 96]);
    assert_eq!(classify(&init), Ok(MsgType::LinkInit));
    assert_eq!(Header::parse(&init), Ok(Header::LinkInit { sender: 1 }));
    // The lengths before the MACs were added (69, 85) no longer pass.
    for len in [69, 85] {
        assert_eq!(
            classify(&init[..len]),
            Err(WireError::Length {
                kind: MsgType::LinkInit,
                len
            })
        );
    }
    assert_eq!(classify(&[0x21, 0, 0]), Err(WireError::Version(2)));
    assert_eq!(classify(&[0x1f]), Err(WireError::UnknownType(15)));
    assert_eq!(classify(&[]), Err(WireError::Empty));
    let resp = emit_link_resp(0x0102_0304, 0x0506_0708, &[0xcd; 48]);
    assert_eq!(&resp[..9], &[0x12, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(classify(&resp), Ok(MsgType::LinkResp));
    assert_eq!(classify(&[0x13; 13 + 5 + 1 + 16]), Ok(MsgType::LinkCtrl));
    assert_eq!(classify(&[0x13; 13 + 5 + 4 + 16]), Ok(MsgType::LinkCtrl));
    assert!(classify(&[0x13; 13 + 5 + 3 + 16]).is_err());
    assert_eq!(classify(&vec![0x13; 1186]), Ok(MsgType::LinkCtrl));
    assert!(classify(&vec![0x13; 1187]).is_err());
    assert_eq!(classify(&vec![0x14; 1452]), Ok(MsgType::Cell));
    assert!(classify(&vec![0x14; 1453]).is_err());
    assert!(classify(&vec![0x14; 232]).is_err());
    assert_eq!(classify(&vec![0x14; 233]), Ok(MsgType::Cell));
}

#[test]
fn header_vectors() {
    let resp = emit_link_resp(0x0102_0304, 0x0506_0708, &[0xcd; 48]);
    assert_eq!(
        Header::parse(&resp),
        Ok(Header::LinkResp {
            sender: 0x0102_0304,
            receiver: 0x0506_0708
        })
    );
    let mut ctrl = vec![0x13, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 1, 2];
    ctrl.extend_from_slice(&[0; 5 + 1 + 16]);
    assert_eq!(
        Header::parse(&ctrl),
        Ok(Header::LinkCtrl {
            receiver: 9,
            counter: 0x0102
        })
    );
    let mut cell = vec![0x14, 0xff, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
    cell.resize(233, 0);
    assert_eq!(
        Header::parse(&cell),
        Ok(Header::Cell {
            receiver: 0xff00_0001
        })
    );
    assert_eq!(
        Cell::new_checked(&mut cell).map(|c| c.circuit()),
        Some(0xdead_beef)
    );
    assert_eq!(
        Header::parse(&cell[..232]),
        Err(WireError::Length {
            kind: MsgType::Cell,
            len: 232
        })
    );
}

#[test]
fn ctrl_header_vectors() {
    let mut destroy = vec![3, 0, 0, 0, 7, 2];
    assert_eq!(
        CtrlHeader::parse(&destroy),
        Ok(CtrlHeader {
            kind: CtrlKind::Destroy,
            circuit: 7
        })
    );
    destroy.push(0);
    assert_eq!(CtrlHeader::parse(&destroy), Err(WireError::Malformed));
    assert_eq!(CtrlHeader::parse(&[3, 0, 0]), Err(WireError::Malformed));
    assert_eq!(
        CtrlHeader::parse(&[9, 0, 0, 0, 7, 2]),
        Err(WireError::Malformed)
    );
    // PACE: cid 0 and a 4-byte rate, nothing else.
    assert_eq!(
        CtrlHeader::parse(&[7, 0, 0, 0, 0, 0, 0, 0x01, 0xf4]),
        Ok(CtrlHeader {
            kind: CtrlKind::Pace,
            circuit: 0
        })
    );
    assert_eq!(
        CtrlHeader::parse(&[7, 0, 0, 0, 0, 0, 1, 0xf4]),
        Err(WireError::Malformed)
    );
}

#[test]
fn link_init_reserved_vectors() {
    let r = LinkInitReserved {
        replaces: 0x0a0b_0c0d,
        proof: [7; LINK_REKEY_PROOF],
    };
    let b = r.emit();
    assert_eq!(&b[..4], &[0x0a, 0x0b, 0x0c, 0x0d]);
    assert_eq!(&b[4..], &[7; LINK_REKEY_PROOF]);
    let mut payload = b.to_vec();
    payload.extend_from_slice(&[0xee; 8]);
    assert_eq!(LinkInitReserved::parse(&payload), Ok(r));
    assert_eq!(
        LinkInitReserved::parse(&b[..LINK_INIT_RESERVED - 1]),
        Err(WireError::Malformed)
    );
    let fresh = LinkInitReserved::parse(&[0; LINK_INIT_RESERVED]);
    assert_eq!(fresh.map(|r| r.replaces), Ok(0));
}

#[test]
fn emit_link_init_layout() {
    let v = emit_link_init(
        0xdead_beef,
        &[7; 64],
        |covered| {
            assert_eq!(covered.len(), LINK_INIT_MACED.end);
            [9; 16]
        },
        |covered| {
            assert_eq!(covered.len(), LINK_INIT_MAC2ED.end);
            Some([8; 16])
        },
    );
    assert_eq!(v.len(), LINK_INIT_LEN);
    assert_eq!(&v[..5], &[0x11, 0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(&v[LINK_INIT_MSG], &[7; 64]);
    assert_eq!(&v[LINK_INIT_MAC1], &[9; 16]);
    assert_eq!(&v[LINK_INIT_MAC2], &[8; 16]);
    let no_cookie = emit_link_init(1, &[7; 64], |_| [9; 16], |_| None);
    assert_eq!(&no_cookie[LINK_INIT_MAC2], &[0; 16]);
    let c = emit_cookie_reply(0x0102_0304, &[5; 24], &[6; 32]);
    assert_eq!(c.len(), COOKIE_REPLY_LEN);
    assert_eq!(&c[..5], &[0x15, 1, 2, 3, 4]);
    assert_eq!(&c[COOKIE_REPLY_NONCE], &[5; 24]);
    assert_eq!(&c[COOKIE_REPLY_SEALED], &[6; 32]);
    assert_eq!(
        Header::parse(&c),
        Ok(Header::CookieReply {
            receiver: 0x0102_0304
        })
    );
}

#[test]
fn build_payload_vector() {
    let p = BuildPayload {
        service: Service::Relay,
        kb: [0x11; 32],
        next: Some(("198.18.0.2:9001".parse().expect("addr"), [0x22; 32])),
        full: false,
    };
    let b = p.emit();
    assert_eq!(&b[..2], &[1, 0]);
    assert_eq!(&b[34..39], &[4, 198, 18, 0, 2]);
    assert_eq!(&b[51..53], &[0x23, 0x29]);
    assert_eq!(&b[53..85], &[0x22; 32]);
    assert_eq!(&b[85..], &[0; 11]);
    assert_eq!(BuildPayload::parse(&b), Ok(p));
    let v6 = BuildPayload {
        service: Service::Relay,
        kb: [1; 32],
        next: Some(("[2001:db8::1]:443".parse().expect("addr"), [3; 32])),
        full: true,
    };
    assert_eq!(BuildPayload::parse(&v6.emit()), Ok(v6));
    let term = BuildPayload {
        service: Service::Echo,
        kb: [5; 32],
        next: None,
        full: true,
    };
    let b = term.emit();
    assert_eq!(b[34], 0);
    assert_eq!(b[85], BUILD_FLAG_FULL);
    assert_eq!(BuildPayload::parse(&b), Ok(term));
    let mut unknown_flag = b;
    unknown_flag[85] = 2;
    assert_eq!(
        BuildPayload::parse(&unknown_flag),
        Err(WireError::Malformed)
    );
    let mut bad = b;
    bad[1] = 0;
    assert!(BuildPayload::parse(&bad).is_err(), "relay without next hop");
    let mut bad = b;
    bad[1] = 9;
    assert!(BuildPayload::parse(&bad).is_err());
}

#[test]
fn body_vector() {
    let mut b = [0xffu8; 32];
    Body {
        cmd: Cmd::Data,
        len: 4,
    }
    .emit(&mut b)
    .unwrap();
    b[3..7].copy_from_slice(b"ping");
    assert_eq!(&b[..7], &[1, 0, 4, b'p', b'i', b'n', b'g']);
    assert!(b[7..].iter().all(|&x| x == 0));
    let body = Body::parse(&b).expect("body");
    assert_eq!(&b[body.payload()], b"ping");
    assert!(Body::parse(&[1, 0, 30, 0]).is_err(), "length beyond body");
    assert!(Body::parse(&[0, 0, 0]).is_err(), "unknown command");
    assert!(Body::parse(&[10, 0, 0]).is_err(), "unknown command");
    for (byte, cmd) in [(7, Cmd::Join), (8, Cmd::Joined), (9, Cmd::VData)] {
        assert_eq!(Body::parse(&[byte, 0, 0]), Ok(Body { cmd, len: 0 }));
    }
    assert_eq!(
        Body::parse(&[6, 0, 1, PADDING_ECHO]),
        Ok(Body {
            cmd: Cmd::Padding,
            len: 1
        })
    );
    assert_eq!(body_size(&[128, 256], 10), 128);
    assert_eq!(body_size(&[128, 256], 200), 256);
    assert_eq!(body_size(&[128, 256], 300), MAX_BODY);
}

#[test]
fn body_emit_refuses_a_body_too_short_for_its_length() {
    for (size, len) in [(0, 0), (2, 0), (3, 1), (32, 30), (MAX_BODY, MAX_BODY)] {
        let mut b = vec![0xee; size];
        let body = Body {
            cmd: Cmd::Data,
            len,
        };
        assert_eq!(body.emit(&mut b), Err(WireError::Malformed), "{size} {len}");
        assert!(b.iter().all(|&x| x == 0xee), "nothing written");
    }
    let mut b = [0xee; 3];
    assert_eq!(
        Body {
            cmd: Cmd::Keepalive,
            len: 0
        }
        .emit(&mut b),
        Ok(())
    );
    assert_eq!(b, [2, 0, 0]);
}

proptest! {
    #[test]
    fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..1600)) {
        let _ = classify(&data);
        let _ = Body::parse(&data);
        let _ = BuildPayload::parse(&data);
        if data.len() >= 2 {
            let _ = CtrlKind::parse(data[0], data.len());
        }
    }

    #[test]
    fn build_payload_round_trip(kb in any::<[u8; 32]>(), key in any::<[u8; 32]>(),
                                ip in any::<[u8; 16]>(), port in 1u16.., v4 in any::<bool>(),
                                full in any::<bool>()) {
        let ip = if v4 { IpAddr::from([ip[0], ip[1], ip[2], ip[3]]) } else { IpAddr::from(ip) };
        let p = BuildPayload { service: Service::Relay, kb, next: Some((SocketAddr::new(ip, port), key)), full };
        prop_assert_eq!(BuildPayload::parse(&p.emit()), Ok(p));
    }

    #[test]
    fn body_round_trip(payload in proptest::collection::vec(any::<u8>(), 0..MAX_PAYLOAD)) {
        let size = body_size(&[128, 256, 512, 1024], payload.len());
        let mut b = vec![0xaa; size];
        b[BODY_HEADER..BODY_HEADER + payload.len()].copy_from_slice(&payload);
        Body { cmd: Cmd::Data, len: payload.len() }.emit(&mut b).unwrap();
        let body = Body::parse(&b).expect("parse");
        prop_assert_eq!(&b[body.payload()], &payload[..]);
    }
}

/// The checked cell view reads and writes the header at its documented offsets:
/// type, receiver and circuit in bytes 0..9, the mask over 5..33, the sample
/// 33..49, the slots 9..201, the payload after the 3-byte body header.
#[test]
fn cell_view_offsets() {
    assert!(Cell::new_checked(&mut [0u8; CELL_HEADER_LEN - 1]).is_none());
    let mut buf: Vec<u8> = (0..CELL_HEADER_LEN + 40).map(|i| i as u8).collect();
    let mut cell = Cell::new_checked(&mut buf).expect("a header");
    cell.set_address(0x0102_0304, 0xa0b0_c0d0);
    assert_eq!(cell.circuit(), 0xa0b0_c0d0);
    assert_eq!(cell.sample(), std::array::from_fn(|i| (33 + i) as u8));
    assert_eq!(cell.masked_mut().len(), 28);
    cell.masked_mut()[0] ^= 0xff;
    assert_eq!(cell.slots_mut()[SLOTS_LEN - 1], 200);
    assert_eq!(cell.body().len(), 40);
    assert_eq!(cell.payload(2), Some(&[204u8, 205][..]));
    let tail: Vec<u8> = (PAYLOAD_OFFSET..CELL_HEADER_LEN + 40)
        .map(|i| i as u8)
        .collect();
    assert_eq!(cell.payload(37), Some(&tail[..]));
    assert_eq!(cell.payload(38), None);
    cell.payload_mut(1).expect("room")[0] = 0xee;
    assert_eq!(
        &buf[..9],
        &[
            MsgType::Cell.byte(),
            1,
            2,
            3,
            4,
            0xa0 ^ 0xff,
            0xb0,
            0xc0,
            0xd0
        ]
    );
    assert_eq!(buf[PAYLOAD_OFFSET], 0xee);
    assert_eq!(payload_range(5), PAYLOAD_OFFSET..PAYLOAD_OFFSET + 5);
}
