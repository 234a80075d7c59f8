//! Discovery messages: vectors and errors.

use super::*;

#[test]
fn message_vectors() {
    assert_eq!(Message::Get { max: 64 }.to_vec(), [0x01, 0x40]);
    assert_eq!(Message::End { sent: 3 }.to_vec(), [0x03, 0x03]);
    assert_eq!(Message::Refused.to_vec(), [0x04]);
    let d = gw(1);
    let desc = Message::Desc(&d).to_vec();
    assert_eq!(desc[0], 0x02);
    assert_eq!(&desc[1..], &d[..]);
    assert_eq!(desc.len(), Message::Desc(&d).encoded_len());

    assert_eq!(Message::parse(&[0x01, 0x01]), Ok(Message::Get { max: 1 }));
    assert_eq!(Message::parse(&[0x01, 0x40]), Ok(Message::Get { max: 64 }));
    assert_eq!(Message::parse(&[0x03, 0x00]), Ok(Message::End { sent: 0 }));
    assert_eq!(Message::parse(&[0x03, 0x40]), Ok(Message::End { sent: 64 }));
    assert_eq!(Message::parse(&[0x04]), Ok(Message::Refused));
    assert_eq!(Message::parse(&desc), Ok(Message::Desc(&d)));
    for m in [
        Message::Get { max: 9 },
        Message::Desc(&d),
        Message::End { sent: 9 },
        Message::Refused,
        Message::Publish(&d),
    ] {
        assert_eq!(Message::parse(&m.to_vec()), Ok(m));
    }
    let publish = Message::Publish(&d).to_vec();
    assert_eq!(publish[0], 0x05);
    assert_eq!(&publish[1..], &d[..]);
}

#[test]
fn message_errors() {
    let length = |kind, len| Err(MessageError::Length { kind, len });
    assert_eq!(Message::parse(&[]), Err(MessageError::Empty));
    for kind in [0x00, 0x06, 0x12, 0xff] {
        assert_eq!(
            Message::parse(&[kind, 1]),
            Err(MessageError::UnknownType(kind))
        );
    }
    assert_eq!(Message::parse(&[0x01]), length(1, 1));
    assert_eq!(Message::parse(&[0x01, 0x01, 0x00]), length(1, 3));
    assert_eq!(Message::parse(&[0x01, 0x00]), Err(MessageError::Count(0)));
    assert_eq!(Message::parse(&[0x01, 0x41]), Err(MessageError::Count(65)));
    assert_eq!(Message::parse(&[0x03]), length(3, 1));
    assert_eq!(Message::parse(&[0x03, 0x00, 0x00]), length(3, 3));
    assert_eq!(Message::parse(&[0x03, 0x41]), Err(MessageError::Count(65)));
    assert_eq!(Message::parse(&[0x04, 0x00]), length(4, 2));
    let mut desc = vec![0x02; 1 + MIN_DESCRIPTOR_LEN];
    assert!(Message::parse(&desc).is_ok());
    desc.pop();
    assert_eq!(Message::parse(&desc), length(2, MIN_DESCRIPTOR_LEN));
    assert_eq!(Message::parse(&[0x02]), length(2, 1));
    assert_eq!(Message::parse(&[0x05]), length(5, 1));
    let mut desc = vec![0x02; MAX_MESSAGE_LEN];
    assert!(Message::parse(&desc).is_ok());
    desc.push(0);
    assert_eq!(Message::parse(&desc), length(2, MAX_MESSAGE_LEN + 1));
}
