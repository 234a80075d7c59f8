//! The control socket of `anonnet up`: `anonnet status` asks the running daemon what
//! it is doing, and `anonnet down` asks it to stop (it then removes what it set up
//! itself) instead of tearing the kernel state away under it.
//!
//! The socket is an abstract Unix socket, [`CLIENT_SOCKET`]: abstract names belong to
//! the network namespace, as `anon0`, its routes and its kill switch do, so `down` in
//! one namespace never reaches the daemon of another, a second `up` in the same one
//! is refused before it changes anything, and no stale file outlives a crash. Only
//! root (or the daemon's own user) may use it: the daemon checks each peer's
//! credentials (`SO_PEERCRED`), as a file mode would. An abstract name can be taken
//! by any process of the namespace, so both ends check the other: `status` and
//! `down` trust only a root (or same-user) holder, and `up`, finding the name held
//! by anyone else, runs without a control socket and says why, rather than not
//! running at all.
//!
//! One request per connection: a line, `status` or `stop`; the answer is the rest
//! of the stream (JSON for `status`), or a line `error: ...`.

use std::io::ErrorKind;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener as StdListener, UnixStream as StdStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// The abstract name of the client daemon's control socket.
pub const CLIENT_SOCKET: &str = "anonnet/client";

/// The abstract name of the control socket of the gateway whose listening ports
/// start at `port` (several gateways may share a network namespace, each on its own
/// ports).
#[must_use]
pub fn gateway_socket(port: u16) -> String {
    format!("anonnet/gateway/{port}")
}
/// A request is one short line.
const MAX_REQUEST: usize = 64;
/// A peer has this long to send its request, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an answer may take: the daemon answers between two turns of its loop.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What a peer asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The daemon's state, as JSON.
    Status,
    /// Stop as on SIGTERM, removing what it set up.
    Stop,
}

impl Request {
    /// The request a line names, if any.
    pub fn parse(line: &str) -> Option<Self> {
        match line.trim() {
            "status" => Some(Self::Status),
            "stop" => Some(Self::Stop),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Stop => "stop",
        }
    }
}

/// Where the daemon sends its answer to a request.
pub type Reply = oneshot::Sender<String>;

/// The listening socket: requests arrive through [`Control::recv`].
pub struct Control {
    rx: mpsc::Receiver<(Request, Reply)>,
    task: JoinHandle<()>,
}

impl Control {
    /// Listens on the abstract socket `name` for `daemon` (how errors name it, e.g.
    /// "`anonnet up`", with `hint` saying what to do about another one). Fails when
    /// a daemon of this network namespace (a root or same-user process) holds it;
    /// `None`, with a warning, when another process does.
    pub fn bind(name: &str, daemon: &str, hint: &str) -> Result<Option<Self>> {
        let addr = SocketAddr::from_abstract_name(name)?;
        let std = match StdListener::bind_addr(&addr) {
            Ok(l) => l,
            Err(e) if e.kind() == ErrorKind::AddrInUse => {
                return match holder(&addr) {
                    Some((uid, pid)) if !trusted(uid) => {
                        tracing::warn!(
                            "the control socket @{name} is held by uid {uid} (pid {}), not by an \
                             anonnet daemon: running without one (`anonnet status` and `anonnet \
                             down` cannot reach this daemon; SIGTERM stops it)",
                            pid.map_or("?".into(), |p| p.to_string())
                        );
                        Ok(None)
                    }
                    _ => bail!(
                        "another {daemon} runs in this network namespace (its control \
                         socket @{name} is taken): {hint}"
                    ),
                };
            }
            Err(e) => return Err(e).with_context(|| format!("cannot listen on @{name}")),
        };
        std.set_nonblocking(true)?;
        let listener = UnixListener::from_std(std)?;
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(stream, tx.clone()));
                    }
                    Err(e) => {
                        tracing::debug!("control socket: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Some(Self { rx, task }))
    }

    /// The next request, with where to send its answer.
    pub async fn recv(&mut self) -> Option<(Request, Reply)> {
        self.rx.recv().await
    }

    /// Stops listening; once it returns, the name is free.
    pub async fn close(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether a peer of user `uid` may use, or hold, the control socket: root or
/// this process's user.
fn trusted(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

/// The user and process holding the abstract address, if one accepts connections.
fn holder(addr: &SocketAddr) -> Option<(u32, Option<i32>)> {
    let s = StdStream::connect_addr(addr).ok()?;
    let cred = nix::sys::socket::getsockopt(&s, nix::sys::socket::sockopt::PeerCredentials).ok()?;
    Some((cred.uid(), Some(cred.pid())))
}

/// One connection: the peer's credentials, its request, the daemon's answer.
async fn serve(mut stream: UnixStream, tx: mpsc::Sender<(Request, Reply)>) {
    let allowed = stream.peer_cred().is_ok_and(|c| trusted(c.uid()));
    // The request is read first, also from a peer that is refused: closing with
    // unread bytes would reset the connection before the peer reads the refusal.
    let mut buf = [0u8; MAX_REQUEST];
    let line = match timeout(IO_TIMEOUT, read_line(&mut stream, &mut buf)).await {
        Ok(Some(line)) => line,
        _ => return,
    };
    let answer = if !allowed {
        "error: only root may use anonnet's control socket\n".to_owned()
    } else {
        match Request::parse(&line) {
            None => format!("error: unknown request {line:?} (status, stop)\n"),
            Some(req) => {
                let (reply, answer) = oneshot::channel();
                if tx.send((req, reply)).await.is_err() {
                    return;
                }
                match timeout(ANSWER_TIMEOUT, answer).await {
                    Ok(Ok(a)) => a,
                    _ => return,
                }
            }
        }
    };
    let _ = timeout(IO_TIMEOUT, stream.write_all(answer.as_bytes())).await;
}

/// Reads up to a newline (or the end) within `buf`'s length; `None` when the line
/// does not fit or is not UTF-8.
async fn read_line(stream: &mut UnixStream, buf: &mut [u8]) -> Option<String> {
    let mut n = 0;
    loop {
        let rest = buf.get_mut(n..)?;
        if rest.is_empty() {
            return None;
        }
        let got = stream.read(rest).await.ok()?;
        let end = n + got;
        if got == 0 || buf.get(n..end)?.contains(&b'\n') {
            let text = std::str::from_utf8(buf.get(..end)?).ok()?;
            return Some(text.lines().next().unwrap_or("").to_owned());
        }
        n = end;
    }
}

/// Asks the daemon of this network namespace behind `name`: its answer and its
/// process id (as this process sees it), or `None` when no daemon listens.
pub async fn ask(name: &str, req: Request) -> Result<Option<(String, Option<i32>)>> {
    let addr = SocketAddr::from_abstract_name(name)?;
    let std = match StdStream::connect_addr(&addr) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound) => {
            return Ok(None)
        }
        Err(e) => return Err(e).with_context(|| format!("cannot connect to @{name}")),
    };
    std.set_nonblocking(true)?;
    let mut stream = UnixStream::from_std(std)?;
    let cred = stream
        .peer_cred()
        .with_context(|| format!("cannot tell who holds @{name}"))?;
    let pid = cred.pid();
    if !trusted(cred.uid()) {
        bail!(
            "@{name} is held by uid {} (pid {}), not by an anonnet daemon: not asking it",
            cred.uid(),
            pid.map_or("?".into(), |p| p.to_string())
        );
    }
    let mut out = String::new();
    timeout(ANSWER_TIMEOUT, async {
        stream
            .write_all(format!("{}\n", req.as_str()).as_bytes())
            .await?;
        stream.read_to_string(&mut out).await
    })
    .await
    .with_context(|| format!("the daemon behind @{name} did not answer within 5 s"))?
    .with_context(|| format!("cannot talk to the daemon behind @{name}"))?;
    if let Some(e) = out.strip_prefix("error: ") {
        bail!("the daemon refused: {}", e.trim_end());
    }
    if out.is_empty() {
        bail!("the daemon behind @{name} closed the connection without an answer");
    }
    Ok(Some((out, pid)))
}

/// The status of the daemon behind `name`, as JSON; `none` says what is missing
/// when no daemon listens.
pub async fn status_of(name: &str, none: &str) -> Result<serde_json::Value> {
    let Some((answer, _)) = ask(name, Request::Status).await? else {
        bail!("{none} (nothing listens on @{name})");
    };
    serde_json::from_str(&answer).context("the daemon's status is not JSON")
}

/// Prints a status as JSON, or as `text` makes it into lines.
pub fn print_status(
    v: &serde_json::Value,
    json: bool,
    text: fn(&serde_json::Value) -> String,
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        print!("{}", text(v));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(Request::parse("status\n"), Some(Request::Status));
        assert_eq!(Request::parse(" stop "), Some(Request::Stop));
        assert_eq!(Request::parse("STOP"), None);
        assert_eq!(Request::parse(""), None);
    }

    /// A request goes to the daemon's side and its answer back; a second listener
    /// on the name is refused; a name nobody holds answers `None`.
    #[tokio::test]
    async fn ask_and_answer() {
        let name = format!("anonnet-test/{}", std::process::id());
        let mut control = Control::bind(&name, "test", "")
            .expect("bind")
            .expect("not held");
        assert!(
            Control::bind(&name, "test", "").is_err(),
            "a second listener was allowed"
        );
        let daemon = tokio::spawn(async move {
            let (req, reply) = control.recv().await.expect("a request");
            assert_eq!(req, Request::Status);
            reply.send("{\"state\":\"up\"}\n".into()).expect("reply");
            control
        });
        let (answer, pid) = ask(&name, Request::Status)
            .await
            .expect("ask")
            .expect("an answer");
        assert_eq!(answer, "{\"state\":\"up\"}\n");
        assert_eq!(pid, i32::try_from(std::process::id()).ok());
        daemon.await.expect("daemon").close().await;
        assert_eq!(ask(&name, Request::Status).await.expect("ask"), None);
    }
}
