//! Helpers shared by the process-level tests: spawning the `anonnet` binary, waiting
//! for its readiness lines with a deadline, and always cleaning up the children.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_anonnet")
}

/// Runs `anonnet ARGS` to completion (for commands that exit by themselves).
pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run the anonnet binary")
}

/// A running child whose stdout lines arrive on a channel and whose stderr is
/// collected by a thread (so neither pipe can fill up and block it), each line also
/// sent on a channel as it comes. Dropping it kills and reaps the child.
pub struct Proc {
    child: Child,
    lines: Receiver<String>,
    err_lines: Receiver<String>,
    stderr: Option<JoinHandle<String>>,
    /// Every stdout line read so far.
    pub out: Vec<String>,
    status: Option<ExitStatus>,
    name: String,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(bin())
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot spawn the anonnet binary");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (etx, err_lines) = mpsc::channel();
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                s.push_str(&line);
                s.push('\n');
                let _ = etx.send(line);
            }
            s
        });
        Proc {
            child,
            lines,
            err_lines,
            stderr: Some(stderr),
            out: Vec::new(),
            status: None,
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until a stdout line satisfies `pred` and returns it. Panics with
    /// everything the child printed if the deadline passes or stdout closes first.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        match self.try_wait_line(timeout, pred) {
            Some(line) => line,
            None => {
                let why = self.describe();
                panic!(
                    "{}: expected line not seen within {timeout:?}\n{why}",
                    self.name
                )
            }
        }
    }

    /// Like [`Proc::wait_line`], but `None` on timeout or end of stdout.
    pub fn try_wait_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.out.push(line.clone());
                    if pred(&line) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Waits until a stderr line (a log line) satisfies `pred` and returns it.
    /// Panics with everything the child printed if the deadline passes first.
    pub fn wait_log(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err_lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => {}
                Err(_) => {
                    let why = self.describe();
                    panic!(
                        "{}: expected log line not seen within {timeout:?}\n{why}",
                        self.name
                    )
                }
            }
        }
    }

    /// Sends SIGTERM (by PID).
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal named `name` (`HUP`, `TERM`; by PID).
    pub fn signal(&self, name: &str) {
        let st = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("cannot run kill");
        assert!(st.success(), "{}: kill -{name} failed", self.name);
    }

    /// SIGKILL (by PID, through `Child::kill`).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Reads stdout to its end and waits for the exit, within `timeout` (else kills
    /// the child and panics). Returns the status and the whole stderr.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.out.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    self.kill();
                    let why = self.describe();
                    panic!("{}: did not exit within {timeout:?}\n{why}", self.name);
                }
            }
        }
        // stdout is closed: the process is exiting (or has exited).
        let st = self.child.wait().expect("cannot wait for the child");
        self.status = Some(st);
        let err = self.take_stderr();
        (st, err)
    }

    fn take_stderr(&mut self) -> String {
        self.stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Kills the child and returns everything it printed, for failure messages.
    fn describe(&mut self) -> String {
        self.kill();
        let _ = self.child.wait();
        while let Ok(line) = self.lines.try_recv() {
            self.out.push(line);
        }
        let err = self.take_stderr();
        let mut s = String::new();
        let _ = writeln!(s, "--- stdout ---\n{}", self.out.join("\n"));
        let _ = writeln!(s, "--- stderr ---\n{err}");
        s
    }

    /// The child's resident set size in bytes, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("cannot read /proc/PID/status");
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .expect("no VmRSS line");
        let kb: u64 = line
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .expect("bad VmRSS line");
        kb * 1024
    }

    /// True while the process has not exited.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A port that was free on `ip` a moment ago (bind port 0, read it, release it).
pub fn free_port(ip: IpAddr) -> std::io::Result<u16> {
    let s = UdpSocket::bind(SocketAddr::new(ip, 0))?;
    Ok(s.local_addr()?.port())
}

/// True if a UDP socket can be bound on `ip`.
pub fn can_bind(ip: IpAddr) -> bool {
    UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Creates an identity with `anonnet keygen` and returns (path, public key).
pub fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{name}.key"));
    let out = run(&["keygen", "--out", path.to_str().expect("utf-8 path")]);
    assert!(
        out.status.success(),
        "keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout)
        .expect("utf-8 key")
        .trim()
        .to_string();
    (path, key)
}

/// A running gateway.
pub struct Gateway {
    pub proc: Proc,
    pub key: String,
    pub addr: SocketAddr,
    pub config: PathBuf,
}

/// Starts a gateway on `ip` (a fresh free port, retried if another test grabbed it
/// in between) and waits for its readiness line.
pub fn start_gateway(dir: &Path, name: &str, ip: IpAddr, echo: bool) -> Gateway {
    let (identity, key) = keygen(dir, name);
    let config = dir.join(format!("{name}.toml"));
    for _attempt in 0..5 {
        let port = free_port(ip).expect("cannot find a free port");
        std::fs::write(
            &config,
            format!(
                "[gateway]\nidentity = \"{}\"\nlisten = [\"{ip}\"]\nlisten_ports = {port}\n\
                 echo = {echo}\nidle_timeout_secs = 30\n",
                identity.display()
            ),
        )
        .expect("cannot write the gateway config");
        let mut proc = Proc::spawn(
            name,
            &["gateway", "--config", config.to_str().expect("utf-8 path")],
        );
        let Some(line) = proc.try_wait_line(Duration::from_secs(20), |l| {
            l.starts_with("anonnet gateway ")
        }) else {
            // Most likely the port was taken meanwhile: try another one.
            let (st, err) = proc.wait_exit(Duration::from_secs(10));
            eprintln!("{name}: gateway did not start ({st}): {err}");
            continue;
        };
        let want = format!("anonnet gateway {key} listening on ");
        assert!(
            line.starts_with(&want),
            "unexpected readiness line {line:?}"
        );
        let addr: SocketAddr = line[want.len()..]
            .split_whitespace()
            .next()
            .and_then(|a| a.parse().ok())
            .expect("readiness line without an address");
        assert_eq!(addr, SocketAddr::new(ip, port));
        return Gateway {
            proc,
            key,
            addr,
            config,
        };
    }
    panic!("{name}: the gateway could not be started");
}

impl Gateway {
    /// SIGTERM, wait for exit 0, and return the stats printed on stderr.
    pub fn stop(&mut self) -> Stats {
        self.proc.terminate();
        let (st, err) = self.proc.wait_exit(Duration::from_secs(10));
        assert!(st.success(), "gateway exited with {st}: {err}");
        Stats::parse(&err)
            .unwrap_or_else(|| panic!("no stats line in the gateway's stderr:\n{err}"))
    }
}

/// The node counters of a gateway's last log line (`anonnet gateway stopping:
/// {"node": {..}, ..}`).
#[derive(Debug)]
pub struct Stats {
    pub line: String,
    pub fields: BTreeMap<String, u64>,
}

impl Stats {
    pub fn parse(stderr: &str) -> Option<Stats> {
        const PREFIX: &str = "anonnet gateway stopping: ";
        let line = stderr.lines().find(|l| l.contains(PREFIX))?;
        let v: serde_json::Value = serde_json::from_str(line.split_once(PREFIX)?.1).ok()?;
        let fields = v["node"]
            .as_object()?
            .iter()
            .map(|(k, n)| Some((k.clone(), n.as_u64()?)))
            .collect::<Option<_>>()?;
        Some(Stats {
            line: line.to_string(),
            fields,
        })
    }

    pub fn get(&self, name: &str) -> u64 {
        *self
            .fields
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {}", self.line))
    }

    /// The sum of every `dropped_*` counter.
    pub fn dropped(&self) -> u64 {
        self.fields
            .iter()
            .filter(|(k, _)| k.starts_with("dropped_"))
            .map(|(_, v)| v)
            .sum()
    }
}

/// Writes a client config for `hops` (address, key) and returns its path.
pub fn client_config(
    dir: &Path,
    name: &str,
    hops: &[(SocketAddr, &str)],
    keepalive_secs: f64,
    circuit_timeout_secs: f64,
) -> PathBuf {
    let mut s = format!(
        "[client]\nkeepalive_secs = {keepalive_secs:?}\ncircuit_timeout_secs = {circuit_timeout_secs:?}\n\
         build_timeout_secs = 5.0\n"
    );
    for (addr, key) in hops {
        let _ = write!(s, "\n[[client.path]]\naddr = \"{addr}\"\nkey = \"{key}\"\n");
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, s).expect("cannot write the client config");
    path
}

/// Starts `anonnet circuit-test --config CONFIG EXTRA...`.
pub fn circuit_test(config: &Path, extra: &[&str]) -> Proc {
    let mut args = vec![
        "circuit-test",
        "--config",
        config.to_str().expect("utf-8 path"),
    ];
    args.extend_from_slice(extra);
    Proc::spawn("circuit-test", &args)
}

/// The byte count of a `verified N payloads, B bytes in ...` line.
pub fn verified_bytes(line: &str) -> u64 {
    line.split_once(", ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?}"))
}
