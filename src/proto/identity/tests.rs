// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use rand_core::OsRng;

fn fixed() -> Identity {
    Identity::from_secret([7; 32])
}

#[test]
fn public_matches_x25519() {
    // RFC 7748 section 6.1 test vector (Alice).
    let secret: [u8; 32] = [
        0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2, 0x66,
        0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5, 0x1d, 0xb9,
        0x2c, 0x2a,
    ];
    let public: [u8; 32] = [
        0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e, 0xf7,
        0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e, 0xaa, 0x9b,
        0x4e, 0x6a,
    ];
    let id = Identity::from_secret(secret);
    assert_eq!(id.public(), PublicKey(public));
    assert_eq!(id.secret(), &secret);
}

fn hex32(s: &str) -> [u8; 32] {
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

#[test]
fn signing_key_vector() {
    // Computed independently: seed = BLAKE2s-256(key = secret, message = label),
    // verifying key = Ed25519 public key of that seed (RFC 8032).
    let key = fixed().signing_key();
    assert_eq!(
        key.to_bytes(),
        hex32("7455e600133781ba77b4b31be2287db91e7e65c7c87b6811120a8d66844e54d4")
    );
    assert_eq!(
        key.verifying_key().to_bytes(),
        hex32("0a955bb6c59feaa6f3d6ad6a0785c64762ee6766de8c9db75231cd6e9f69a41b")
    );
}

#[test]
fn signing_key_deterministic_and_distinct() {
    let id = Identity::generate(&mut OsRng);
    let again = Identity::from_secret(*id.secret());
    assert_eq!(id.signing_key().to_bytes(), again.signing_key().to_bytes());
    assert_eq!(
        id.signing_key().verifying_key(),
        again.signing_key().verifying_key()
    );
    // The seed is derived, not the X25519 secret itself.
    assert_ne!(&id.signing_key().to_bytes(), id.secret());
    let other = Identity::generate(&mut OsRng);
    assert_ne!(id.signing_key().to_bytes(), other.signing_key().to_bytes());
    assert_ne!(
        id.signing_key().verifying_key(),
        other.signing_key().verifying_key()
    );
    assert_ne!(
        fixed().signing_key().verifying_key(),
        Identity::from_secret([8; 32]).signing_key().verifying_key()
    );
}

#[test]
fn generate_differs() {
    let a = Identity::generate(&mut OsRng);
    let b = Identity::generate(&mut OsRng);
    assert_ne!(a.secret(), b.secret());
    assert_ne!(a.public(), b.public());
}

#[test]
fn debug_hides_secret() {
    let id = fixed();
    let dbg = format!("{id:?}");
    assert!(dbg.contains("<redacted>"));
    assert!(!dbg.contains(&STANDARD.encode(id.secret())));
    assert!(dbg.contains(&id.public().to_string()));
}

#[test]
fn public_key_text_round_trip() {
    let pk = fixed().public();
    let s = pk.to_string();
    assert_eq!(s.len(), 44);
    assert_eq!(s.parse::<PublicKey>().unwrap(), pk);
    assert_eq!(format!(" {s}\n").parse::<PublicKey>().unwrap(), pk);
}

#[test]
fn public_key_parse_errors() {
    let e = "not base64!".parse::<PublicKey>().unwrap_err();
    assert_eq!(e, PublicKeyError::Base64);
    assert_eq!(e.to_string(), "invalid base64 public key");
    let e = STANDARD.encode([1u8; 31]).parse::<PublicKey>().unwrap_err();
    assert_eq!(e.to_string(), "wrong public key length: 31 bytes != 32");
    let e = STANDARD.encode([1u8; 33]).parse::<PublicKey>().unwrap_err();
    assert_eq!(e, PublicKeyError::Length(33));
    assert_eq!(
        "".parse::<PublicKey>().unwrap_err(),
        PublicKeyError::Length(0)
    );
    // URL-safe alphabet is not the standard one.
    let urlsafe = base64::engine::general_purpose::URL_SAFE.encode([0xfb; 32]);
    assert_eq!(
        urlsafe.parse::<PublicKey>().unwrap_err(),
        PublicKeyError::Base64
    );
}

#[test]
fn public_key_serde() {
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Doc {
        key: PublicKey,
    }
    let pk = fixed().public();
    let text = toml::to_string(&Doc { key: pk }).unwrap();
    assert_eq!(text, format!("key = \"{pk}\"\n"));
    assert_eq!(toml::from_str::<Doc>(&text).unwrap().key, pk);
    let err = toml::from_str::<Doc>("key = \"AAAA\"").err().unwrap();
    assert!(err
        .to_string()
        .contains("wrong public key length: 3 bytes != 32"));
}
