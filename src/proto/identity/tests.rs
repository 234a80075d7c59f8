#![allow(clippy::unwrap_used)]

use super::*;
use rand_core::OsRng;

fn fixed() -> Identity {
    Identity::from_secret([7; 32])
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
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

#[test]
fn file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.key");
    let id = Identity::generate(&mut OsRng);
    id.write_file(&path, false).unwrap();
    assert_eq!(mode_of(&path), 0o600);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# anonnet gateway identity."));
    assert!(text.contains(&format!("# public_key = \"{}\"", id.public())));
    let back = Identity::read_file(&path).unwrap();
    assert_eq!(back.secret(), id.secret());
    assert_eq!(back.public(), id.public());
}

#[test]
fn refuses_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.key");
    let first = fixed();
    first.write_file(&path, false).unwrap();
    let err = Identity::generate(&mut OsRng)
        .write_file(&path, false)
        .unwrap_err();
    assert!(matches!(err, IdentityError::Exists { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "identity file {} already exists; pass --force to overwrite it",
            path.display()
        )
    );
    assert_eq!(Identity::read_file(&path).unwrap().secret(), first.secret());
}

#[test]
fn force_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.key");
    fixed().write_file(&path, false).unwrap();
    // Even an over-open existing file is replaced by a 0600 one.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let second = Identity::generate(&mut OsRng);
    second.write_file(&path, true).unwrap();
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(
        Identity::read_file(&path).unwrap().secret(),
        second.secret()
    );
    // No temporary file is left behind.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    // Force on a fresh path works too, also for a bare relative-looking name.
    let fresh = dir.path().join("fresh.key");
    second.write_file(&fresh, true).unwrap();
    assert_eq!(mode_of(&fresh), 0o600);
}

#[test]
fn too_open_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.key");
    fixed().write_file(&path, false).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let err = Identity::read_file(&path).unwrap_err();
        assert!(matches!(err, IdentityError::TooOpen { .. }), "{mode:o}");
        assert_eq!(
            err.to_string(),
            format!(
                "identity file {p}: permissions {mode:04o} are too open; run chmod 600 {p}",
                p = path.display()
            )
        );
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
    Identity::read_file(&path).unwrap();
}

#[test]
fn not_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.key");
    let err = Identity::read_file(&path).unwrap_err();
    assert!(matches!(err, IdentityError::NotFound { .. }));
    assert!(err.to_string().contains(&path.display().to_string()));
}

fn read_text(text: &[u8]) -> Result<Identity, IdentityError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id.key");
    let mut f = create_private(&path).unwrap();
    f.write_all(text).unwrap();
    drop(f);
    Identity::read_file(&path)
}

fn problem(text: &[u8]) -> String {
    match read_text(text).unwrap_err() {
        IdentityError::Invalid { problem, .. } => problem,
        other => panic!("unexpected error {other}"),
    }
}

#[test]
fn garbage_rejected() {
    let secret_b64 = STANDARD.encode([9u8; 32]);
    let p = problem(format!("# comment\nprivate_key = \"{secret_b64}\nx").as_bytes());
    assert_eq!(p, "not a valid TOML file (syntax error on line 2)");
    assert!(!p.contains(&secret_b64));
    assert_eq!(problem(b""), "missing `private_key`");
    assert_eq!(
        problem(b"private_key = 5"),
        "`private_key` must be a base64 string"
    );
    assert_eq!(
        problem(b"private_key = \"%%%\""),
        "`private_key`: invalid base64 public key"
    );
    assert_eq!(
        problem(b"private_key = \"AAAA\""),
        "`private_key`: wrong public key length: 3 bytes != 32"
    );
    assert!(problem(b"privat_key = \"AAAA\"").starts_with("unknown key `privat_key`"));
    assert_eq!(problem(b"\xff\xfe"), "file is not UTF-8 text");
    let big = vec![b'#'; 70_000];
    assert!(problem(&big).starts_with("file is larger than"));
}

#[test]
fn public_key_line_checked() {
    let id = fixed();
    let other = Identity::from_secret([8; 32]).public();
    let secret = STANDARD.encode(id.secret());
    let ok = format!(
        "public_key = \"{}\"\nprivate_key = \"{secret}\"\n",
        id.public()
    );
    assert_eq!(read_text(ok.as_bytes()).unwrap().public(), id.public());
    let bad = format!("public_key = \"{other}\"\nprivate_key = \"{secret}\"\n");
    assert!(problem(bad.as_bytes()).starts_with("`public_key` does not match"));
}

#[test]
fn errors_never_contain_key_material() {
    let secret_b64 = STANDARD.encode([3u8; 32]);
    for text in [
        format!("private_key = \"{secret_b64}"),
        format!("private_key = {secret_b64}"),
        format!("private_key = \"{secret_b64}\"\npublic_key = 1"),
        format!("private_key = '{secret_b64}' junk"),
    ] {
        let msg = read_text(text.as_bytes()).unwrap_err().to_string();
        assert!(!msg.contains(&secret_b64[..20]), "{msg}");
    }
}
