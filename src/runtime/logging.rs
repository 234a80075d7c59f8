//! How every command logs: through `tracing`, to stderr, one line per event.
//!
//! Standard output carries only a command's results (`discover`'s table, `down`'s
//! report, `keygen`'s key) and the daemons' one readiness line (`anonnet up: ...`,
//! `anonnet gateway ... listening on ...`) that scripts wait for. The level is info
//! unless `-v` (debug) or `-vv` (trace) or `RUST_LOG` says otherwise, so the
//! lifecycle of circuits and legs shows in a service's journal. Colours only when
//! stderr is a terminal; no timestamps when stderr is the systemd journal (which
//! stamps each line itself), as `JOURNAL_STREAM` tells (systemd.exec(5)).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber for a process run with `verbose` times `-v`.
pub fn init(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if stderr_is_journal() {
        fmt.without_time().init();
    } else {
        fmt.init();
    }
}

/// Whether stderr is the journal: systemd sets `JOURNAL_STREAM` to the device and
/// inode of the stream it connected, which a child's redirected stderr no longer is.
fn stderr_is_journal() -> bool {
    let Some(var) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    var.to_str()
        .is_some_and(|v| names_stream(v, st.st_dev, st.st_ino))
}

/// Whether a `JOURNAL_STREAM` value (`DEVICE:INODE`, decimal) names this stream.
fn names_stream(var: &str, dev: u64, ino: u64) -> bool {
    var.split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

#[cfg(test)]
mod tests {
    use super::names_stream;

    #[test]
    fn journal_stream_values() {
        assert!(names_stream("8:12345", 8, 12345));
        assert!(!names_stream("8:12345", 8, 12346));
        assert!(!names_stream("9:12345", 8, 12345));
        assert!(!names_stream("8", 8, 12345));
        assert!(!names_stream("8:x", 8, 12345));
        assert!(!names_stream("", 8, 12345));
    }
}
