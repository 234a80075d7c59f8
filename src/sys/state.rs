//! The client's state file: what `client_down` needs to undo `client_up` without the
//! configuration.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::files::write_atomic;
use serde::{Deserialize, Serialize};

/// Name of the state file inside the state directory.
pub const FILE: &str = "client-state.toml";

/// First line of the state file.
const HEADER: &str =
    "# anonnet client state: `anonnet down` reads this to remove what `anonnet up` made.\n";

/// Everything `client_up` changes that outlives the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ClientState {
    /// Name of the TUN link.
    pub tun: String,
    /// Routing table holding the default routes into the TUN.
    pub table: u32,
    /// Mark of the daemon's own packets.
    pub fwmark: u32,
    /// Priority of the `lookup main suppress_prefixlength 0` rules.
    pub suppress_priority: u32,
    /// Priority of the `not fwmark <fwmark> lookup <table>` rules.
    pub fwmark_priority: u32,
    /// nftables table of family `inet` holding the kill switch.
    pub nft_table: String,
    /// Whether `/etc/resolv.conf` was (or was about to be) replaced.
    pub dns_changed: bool,
    /// `net.ipv4.conf.all.src_valid_mark` before `client_up` set it, if it was read.
    pub src_valid_mark: Option<String>,
}

/// Path of the state file in `dir`.
pub(super) fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Creates `dir` (mode 0700) if needed.
pub(super) fn create_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| {
            format!(
                "cannot create state directory {}: choose a writable state_dir",
                dir.display()
            )
        })
}

/// The state in `dir`, or `None` if there is no state file.
pub(super) fn load(dir: &Path) -> Result<Option<ClientState>> {
    let file = path(dir);
    let text = match fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read state file {}", file.display()))
        }
    };
    parse(&text).map(Some).with_context(|| {
        format!(
            "state file {} is damaged: remove what it describes by hand (ip rule, ip route, nft), then delete it",
            file.display()
        )
    })
}

/// Writes the state to `dir` atomically ([`write_atomic`]).
pub(super) fn save(dir: &Path, state: &ClientState) -> Result<()> {
    create_dir(dir)?;
    let file = path(dir);
    write_atomic(&file, render(state)?.as_bytes()).with_context(|| {
        format!(
            "cannot write state file {}: choose a writable state_dir",
            file.display()
        )
    })
}

/// Deletes the state file; `false` if there was none.
pub(super) fn remove(dir: &Path) -> Result<bool> {
    let file = path(dir);
    match fs::remove_file(&file) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot delete state file {}", file.display())),
    }
}

fn render(state: &ClientState) -> Result<String> {
    let body = toml::to_string(state).context("cannot encode the state file")?;
    Ok(format!("{HEADER}{body}"))
}

fn parse(text: &str) -> Result<ClientState> {
    Ok(toml::from_str(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClientState {
        ClientState {
            tun: "anon0".into(),
            table: 51820,
            fwmark: 0xca6c,
            suppress_priority: 32762,
            fwmark_priority: 32763,
            nft_table: "anonnet".into(),
            dns_changed: true,
            src_valid_mark: Some("0".into()),
        }
    }

    #[test]
    fn round_trip_through_text() {
        let state = sample();
        let text = render(&state).expect("render");
        assert!(text.starts_with(HEADER));
        assert!(text.contains("tun = \"anon0\"\n"));
        assert!(text.contains("table = 51820\n"));
        assert_eq!(parse(&text).expect("parse"), state);
    }

    #[test]
    fn round_trip_without_optional_fields() {
        let state = ClientState {
            dns_changed: false,
            src_valid_mark: None,
            ..sample()
        };
        let text = render(&state).expect("render");
        assert!(!text.contains("src_valid_mark"));
        assert_eq!(parse(&text).expect("parse"), state);
    }

    #[test]
    fn round_trip_through_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("run").join("anonnet");
        assert_eq!(load(&sub).expect("load missing"), None);
        save(&sub, &sample()).expect("save");
        assert_eq!(load(&sub).expect("load"), Some(sample()));
        assert!(remove(&sub).expect("remove"));
        assert!(!remove(&sub).expect("remove again"));
        assert_eq!(load(&sub).expect("load removed"), None);
    }

    #[test]
    fn damaged_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(path(dir.path()), "tun = 3\n").expect("write");
        let err = format!("{:#}", load(dir.path()).expect_err("damaged"));
        assert!(err.contains("client-state.toml is damaged"), "{err}");
    }
}
