//! The client's state directory (`tunnel.state_dir`, default `/var/lib/anonnet`,
//! the systemd unit's `StateDirectory`): its guards and descriptor cache, which must
//! outlive restarts and reboots, and the undo record and saved `resolv.conf` of a
//! running `up`, which must outlive a crash followed by a reboot (docs/SECURITY.md,
//! "reboot-dns"). Releases before the default moved kept all four in
//! `/run/anonnet`, a tmpfs: [`adopt_old_default`] moves them over.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::config::DEFAULT_STATE_DIR;
use crate::runtime::discovery::CACHE_FILE;
use crate::runtime::paths::GUARDS_FILE;

/// Where the state directory was by default before it moved to
/// [`DEFAULT_STATE_DIR`].
pub const OLD_STATE_DIR: &str = "/run/anonnet";

/// With the default state directory `dir`, moves what a release before the move
/// left in [`OLD_STATE_DIR`] into it (see [`migrate`]). A failure is logged: the
/// command goes on without the old state.
pub fn adopt_old_default(dir: &Path) {
    if dir != Path::new(DEFAULT_STATE_DIR) {
        return;
    }
    if let Err(e) = migrate(Path::new(OLD_STATE_DIR), dir) {
        tracing::warn!("{e:#}");
    }
}

/// Moves the state files from `old` into `new` (created, mode 0700, if needed): each
/// one that `new` does not have, logging what moved. A file `new` has already stays
/// in `old`. Returns the names moved.
pub fn migrate(old: &Path, new: &Path) -> Result<Vec<&'static str>> {
    let mut moved = Vec::new();
    for name in [
        GUARDS_FILE,
        CACHE_FILE,
        crate::sys::STATE_FILE,
        crate::sys::RESOLV_BACKUP,
    ] {
        let from = old.join(name);
        let to = new.join(name);
        if !from.is_file() || to.exists() {
            continue;
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(new)
            .with_context(|| format!("cannot create the state directory {}", new.display()))?;
        let what = || format!("cannot move {} to {}", from.display(), to.display());
        match fs::rename(&from, &to) {
            Ok(()) => {}
            // Another file system (/run is a tmpfs): copy, then remove.
            Err(e) if e.kind() == ErrorKind::CrossesDevices => {
                fs::copy(&from, &to).with_context(what)?;
                fs::remove_file(&from).with_context(what)?;
            }
            Err(e) => return Err(e).with_context(what),
        }
        tracing::info!(
            "moved {} to {} (the state directory's old default)",
            from.display(),
            to.display()
        );
        moved.push(name);
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_state_moves_once_and_never_over_new() {
        let tmp = tempfile::TempDir::new().expect("tempdir");
        let (old, new) = (tmp.path().join("run"), tmp.path().join("lib/anonnet"));
        fs::create_dir_all(&old).expect("mkdir");
        for (name, text) in [
            (GUARDS_FILE, "old guards"),
            (CACHE_FILE, "old cache"),
            (crate::sys::STATE_FILE, "old record"),
            ("unrelated", "stays"),
        ] {
            fs::write(old.join(name), text).expect("write");
        }
        assert_eq!(
            migrate(&old, &new).expect("migrate"),
            vec![GUARDS_FILE, CACHE_FILE, crate::sys::STATE_FILE]
        );
        assert_eq!(
            fs::read_to_string(new.join(CACHE_FILE)).expect("read"),
            "old cache"
        );
        assert!(!old.join(GUARDS_FILE).exists());
        assert!(old.join("unrelated").exists() && !new.join("unrelated").exists());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&new).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A file the new directory has already is kept; the old one stays put.
        fs::write(old.join(GUARDS_FILE), "older guards").expect("write");
        fs::write(new.join(GUARDS_FILE), "new guards").expect("write");
        assert!(migrate(&old, &new).expect("migrate").is_empty());
        assert_eq!(
            fs::read_to_string(new.join(GUARDS_FILE)).expect("read"),
            "new guards"
        );
        assert!(old.join(GUARDS_FILE).exists());
        // Nothing to move: no old directory at all.
        assert!(migrate(&tmp.path().join("none"), &new)
            .expect("migrate")
            .is_empty());
    }
}
