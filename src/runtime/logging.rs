//! How every command logs: through `tracing`, to stderr, one line per event.
//!
//! Standard output carries only a command's results (`discover`'s table, `down`'s
//! report, `keygen`'s key) and the daemons' one readiness line (`anonnet up: ...`,
//! `anonnet gateway ... listening on ...`) that scripts wait for. The filter is, by
//! precedence: `RUST_LOG`, then `-v` (debug) or `-vv` (trace), then the config
//! file's `log` (the daemons read it at start and again on SIGHUP,
//! [`apply_config`]), then info; so the lifecycle of circuits and legs shows in a
//! service's journal. Colours only when stderr is a terminal; no timestamps when
//! stderr is the systemd journal (which stamps each line itself), as
//! `JOURNAL_STREAM` tells (systemd.exec(5)).

use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Where the log filter in force comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterSource {
    /// The `RUST_LOG` environment variable.
    Env,
    /// `-v` or `-vv` on the command line.
    Flag,
    /// The config file's `log`.
    Config,
    /// None of them: info.
    Default,
}

impl fmt::Display for FilterSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FilterSource::Env => "from RUST_LOG, which the config's log does not override",
            FilterSource::Flag => "from -v, which the config's log does not override",
            FilterSource::Config => "from the config's log",
            FilterSource::Default => "the default, as the config has no log",
        })
    }
}

/// The filter by precedence: `RUST_LOG` (`env`, when valid), then `-v` counted
/// `verbose` times, then the config's `log`, then info.
fn choose<'a>(
    env: Option<&'a str>,
    verbose: u8,
    config: Option<&'a str>,
) -> (&'a str, FilterSource) {
    match (env, verbose, config) {
        (Some(e), _, _) => (e, FilterSource::Env),
        (None, 1, _) => ("debug", FilterSource::Flag),
        (None, 2.., _) => ("trace", FilterSource::Flag),
        (None, 0, Some(c)) => (c, FilterSource::Config),
        (None, 0, None) => ("info", FilterSource::Default),
    }
}

/// What [`apply_config`] needs of the start: the filter's handle and what outranks
/// the config.
struct Installed {
    handle: reload::Handle<EnvFilter, Registry>,
    env: Option<String>,
    verbose: u8,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// Installs the subscriber for a process run with `verbose` times `-v`.
pub fn init(verbose: u8) {
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| EnvFilter::try_new(v).is_ok());
    let (directives, _) = choose(env.as_deref(), verbose, None);
    let (filter, handle) = reload::Layer::new(EnvFilter::new(directives));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let registry = tracing_subscriber::registry().with(filter);
    if stderr_is_journal() {
        registry.with(fmt.without_time()).init();
    } else {
        registry.with(fmt).init();
    }
    let _ = INSTALLED.set(Installed {
        handle,
        env,
        verbose,
    });
}

/// Applies a config file's `log` (checked by [`crate::config`]) unless `RUST_LOG`
/// or `-v` chose the filter: at a daemon's start and on SIGHUP. Returns the filter
/// in force and where it comes from.
pub fn apply_config(log: Option<&str>) -> (String, FilterSource) {
    let Some(i) = INSTALLED.get() else {
        return (String::new(), FilterSource::Default);
    };
    let (directives, source) = choose(i.env.as_deref(), i.verbose, log);
    if let Err(e) = EnvFilter::try_new(directives)
        .map_err(|e| e.to_string())
        .and_then(|f| i.handle.reload(f).map_err(|e| e.to_string()))
    {
        tracing::warn!("cannot set the log filter {directives:?}: {e}");
    }
    (directives.to_owned(), source)
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
    use super::{choose, names_stream, FilterSource};

    #[test]
    fn filter_precedence() {
        assert_eq!(choose(None, 0, None), ("info", FilterSource::Default));
        assert_eq!(
            choose(None, 0, Some("warn")),
            ("warn", FilterSource::Config)
        );
        assert_eq!(choose(None, 1, Some("warn")), ("debug", FilterSource::Flag));
        assert_eq!(choose(None, 3, Some("warn")), ("trace", FilterSource::Flag));
        assert_eq!(
            choose(Some("anonnet=trace"), 1, Some("warn")),
            ("anonnet=trace", FilterSource::Env)
        );
    }

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
