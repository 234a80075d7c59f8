//! The handshake replay cache on disk (PROTOCOL §8, SECURITY.md): a gateway remembers
//! the ephemeral key of every handshake it accepted for `HANDSHAKE_REPLAY_TIME`, and
//! this file keeps them across a restart, so that a handshake recorded before a crash
//! (a BUILD a hostile previous hop saw, replayed to see where the gateway extends it)
//! is still refused after it.
//!
//! The file lives beside the identity file (`IDENTITY.replay`): it belongs to that
//! key. Records are 40 bytes, `key (32) ‖ wall-clock time accepted (8, ms since the
//! Unix epoch, big-endian)`, appended at the end of every driver step that accepted
//! handshakes; a record cut short by a crash is ignored. At start, and every `COMPACT_EVERY`, the file is rewritten (a new file
//! renamed over it) with only the keys still remembered.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::files::write_atomic;
use crate::node::Node;

/// Bytes per record.
pub const RECORD: usize = 40;
/// How often the file is rewritten with only the keys still remembered.
pub const COMPACT_EVERY: Duration = Duration::from_secs(60);

/// The appended file and how far the node's remembered keys have been written.
pub struct ReplayFile {
    path: PathBuf,
    file: File,
    written: u64,
    compacted: Instant,
    warned: bool,
}

/// The replay file of the identity at `identity`.
#[must_use]
pub fn path_for(identity: &Path) -> PathBuf {
    let mut p = identity.as_os_str().to_owned();
    p.push(".replay");
    PathBuf::from(p)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Parses records; each key with its age at `now_ms` (0 for a time in the future). A
/// trailing partial record is ignored.
#[must_use]
pub fn parse(bytes: &[u8], now_ms: u64) -> Vec<([u8; 32], Duration)> {
    bytes
        .chunks_exact(RECORD)
        .filter_map(|r| {
            let (key, t) = r.split_first_chunk::<32>()?;
            let t = u64::from_be_bytes(t.try_into().ok()?);
            Some((*key, Duration::from_millis(now_ms.saturating_sub(t))))
        })
        .collect()
}

fn record(key: &[u8; 32], at_ms: u64) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..32].copy_from_slice(key);
    r[32..].copy_from_slice(&at_ms.to_be_bytes());
    r
}

impl ReplayFile {
    /// Reads the file at `path` (if any) into `node`, rewrites it with what is still
    /// remembered and opens it for appending. Fails, naming the path, if it cannot be
    /// read or written: a gateway that cannot keep its replay cache does not start.
    pub fn open(path: &Path, node: &mut Node, now: Instant) -> Result<Self> {
        let wall = unix_ms(SystemTime::now());
        match fs::read(path) {
            Ok(bytes) => node.preload_handshakes(now, &mut parse(&bytes, wall)),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read the handshake replay file {}", path.display())
                })
            }
        }
        let file = rewrite(path, node, now, wall)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            written: node.handshakes_remembered(),
            compacted: now,
            warned: false,
        })
    }

    /// Appends the keys `node` remembered since the last call, and compacts the file
    /// every [`COMPACT_EVERY`]. A failure is reported once on stderr and retried
    /// at the next call (the keys stay in memory meanwhile).
    pub fn record(&mut self, node: &Node, now: Instant) {
        let wall = unix_ms(SystemTime::now());
        let result = if now.saturating_duration_since(self.compacted) >= COMPACT_EVERY {
            rewrite(&self.path, node, now, wall).map(|f| {
                self.file = f;
                self.compacted = now;
            })
        } else if node.handshakes_remembered() == self.written {
            return;
        } else {
            let buf: Vec<u8> = node
                .remembered_since(self.written)
                .flat_map(|k| record(k, wall))
                .collect();
            self.file.write_all(&buf).map_err(anyhow::Error::from)
        };
        match result {
            Ok(()) => {
                self.written = node.handshakes_remembered();
                self.warned = false;
            }
            Err(e) if !self.warned => {
                self.warned = true;
                tracing::warn!(
                    "cannot write the handshake replay file {}: {e:#}",
                    self.path.display()
                );
            }
            Err(_) => {}
        }
    }
}

/// Writes every key `node` remembers to a new file renamed over `path`; returns it
/// opened for appending.
fn rewrite(path: &Path, node: &Node, now: Instant, wall: u64) -> Result<File> {
    let ctx = || format!("cannot write the handshake replay file {}", path.display());
    let buf: Vec<u8> = node
        .remembered(now)
        .flat_map(|(k, age)| {
            record(
                k,
                wall.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)),
            )
        })
        .collect();
    write_atomic(path, &buf).with_context(ctx)?;
    OpenOptions::new().append(true).open(path).with_context(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{NodeConfig, HANDSHAKE_REPLAY_TIME};

    #[test]
    fn records_parse_with_their_ages_and_a_cut_record_is_ignored() {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&record(&[1; 32], 10_000));
        bytes.extend_from_slice(&record(&[2; 32], 70_000));
        bytes.extend_from_slice(&record(&[3; 32], 99_000)[..17]);
        let got = parse(&bytes, 60_000);
        assert_eq!(
            got,
            vec![
                ([1; 32], Duration::from_secs(50)),
                ([2; 32], Duration::ZERO)
            ]
        );
    }

    #[test]
    fn the_path_is_beside_the_identity() {
        assert_eq!(
            path_for(Path::new("/var/lib/anonnet/identity.key")),
            Path::new("/var/lib/anonnet/identity.key.replay")
        );
    }

    /// What one run remembered, a second run over the same file remembers too (keys
    /// older than the replay time excepted), and the file then holds only those.
    #[test]
    fn a_second_run_remembers_what_the_first_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("id.key.replay");
        let old = unix_ms(SystemTime::now()) - 200_000;
        fs::write(&path, record(&[9; 32], old)).expect("write");
        let now = Instant::now();
        let mut first = Node::new(NodeConfig::default());
        let mut file = ReplayFile::open(&path, &mut first, now).expect("open");
        assert_eq!(first.remembered(now).count(), 0, "a key older than 180 s");
        assert!(first.remember_handshake(now, &[7; 32]));
        assert!(first.remember_handshake(now, &[8; 32]));
        file.record(&first, now);
        assert_eq!(fs::read(&path).expect("read").len(), 2 * RECORD);
        drop(file);

        let mut second = Node::new(NodeConfig::default());
        let later = now + Duration::from_secs(1);
        let _file = ReplayFile::open(&path, &mut second, later).expect("open");
        let keys: Vec<[u8; 32]> = second.remembered(later).map(|(k, _)| *k).collect();
        assert_eq!(keys, vec![[7; 32], [8; 32]]);
        assert!(!second.remember_handshake(later, &[7; 32]), "a replay");
        assert!(second
            .remembered(later)
            .all(|(_, age)| age < HANDSHAKE_REPLAY_TIME));
    }
}
