// Tests index and unwrap what they built themselves.
#![allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]

use super::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand_core::OsRng;

fn fixed() -> Identity {
    Identity::from_secret([7; 32])
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.key");
    let id = Identity::generate(&mut OsRng);
    write(&id, &path, false).unwrap();
    assert_eq!(mode_of(&path), 0o600);
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# anonnet gateway identity."));
    assert!(text.contains(&format!("# public_key = \"{}\"", id.public())));
    let back = read(&path).unwrap();
    assert_eq!(back.secret(), id.secret());
    assert_eq!(back.public(), id.public());
}

/// `anonnet keygen --out /var/lib/anonnet/identity.key` on a fresh host: the
/// directories are made, private; an error names the path once, with its cause.
#[test]
fn missing_directories_are_made_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("var/lib/anonnet/identity.key");
    write(&fixed(), &path, false).unwrap();
    assert_eq!(read(&path).unwrap().public(), fixed().public());
    assert_eq!(mode_of(path.parent().unwrap()), 0o700);
    let blocked = path.join("identity.key");
    let e = anyhow::Error::from(write(&fixed(), &blocked, false).unwrap_err());
    let text = format!("{e:#}");
    assert!(text.starts_with(&format!(
        "cannot write identity file {}: ",
        blocked.display()
    )));
    assert_eq!(text.matches("os error").count(), 1, "{text}");
}

#[test]
fn refuses_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.key");
    let first = fixed();
    write(&first, &path, false).unwrap();
    let err = write(&Identity::generate(&mut OsRng), &path, false).unwrap_err();
    assert!(matches!(err, IdentityError::Exists { .. }));
    assert_eq!(
        err.to_string(),
        format!(
            "identity file {} already exists; pass --force to overwrite it",
            path.display()
        )
    );
    assert_eq!(read(&path).unwrap().secret(), first.secret());
}

#[test]
fn force_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.key");
    write(&fixed(), &path, false).unwrap();
    // Even an over-open existing file is replaced by a 0600 one.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let second = Identity::generate(&mut OsRng);
    write(&second, &path, true).unwrap();
    assert_eq!(mode_of(&path), 0o600);
    assert_eq!(read(&path).unwrap().secret(), second.secret());
    // No temporary file is left behind.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    // Force on a fresh path works too, also for a bare relative-looking name.
    let fresh = dir.path().join("fresh.key");
    write(&second, &fresh, true).unwrap();
    assert_eq!(mode_of(&fresh), 0o600);
}

#[test]
fn too_open_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("identity.key");
    write(&fixed(), &path, false).unwrap();
    for mode in [0o644, 0o640, 0o604, 0o660] {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        let err = read(&path).unwrap_err();
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
    read(&path).unwrap();
}

#[test]
fn not_found() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.key");
    let err = read(&path).unwrap_err();
    assert!(matches!(err, IdentityError::NotFound { .. }));
    assert!(err.to_string().contains(&path.display().to_string()));
}

fn read_text(text: &[u8]) -> Result<Identity, IdentityError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("id.key");
    let mut f = create_private(&path).unwrap();
    f.write_all(text).unwrap();
    drop(f);
    read(&path)
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
