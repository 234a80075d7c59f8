//! Prometheus metrics of `anonnet up` and `anonnet gateway`, opt-in (`--metrics
//! ADDR`): `GET /metrics` over HTTP answers with the daemon's counters in the
//! OpenMetrics text format (the `prometheus-client` crate encodes them, `hyper`
//! serves them).
//!
//! The counters live in the daemon loop (the node's, the exit's, the sockets'); a
//! scrape asks the loop for a [`Snapshot`] between two of its turns, as `anonnet
//! status` does, so the data path keeps no shared atomics for it. The names and
//! labels are listed in `docs/DESIGN.md` ("Metrics").

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::exit::ExitStats;
use crate::node::Stats;
use crate::runtime::control::Reply;
use crate::runtime::tun::Counted;

/// The path scrapes ask for.
pub const PATH: &str = "/metrics";
/// The content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 16;
/// A client has this long to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection is closed after this long, whatever it is doing.
const CONNECTION_TIME: Duration = Duration::from_secs(30);
/// How long the daemon may take to answer a scrape (it answers between two turns).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The circuits this node built for itself (a client's, a gateway's discovery),
/// as their events reported them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OwnCircuits {
    /// Circuits that came up.
    pub up: u64,
    /// Circuits that went down or failed to come up, by `DownReason::label`.
    pub down: BTreeMap<&'static str, u64>,
}

/// What a scrape shows: the daemon's counters at one moment.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    /// `client`, `gateway` or `exit`.
    pub role: &'static str,
    pub node: Stats,
    /// The node's `handshake_rate` (tokens per second of each budget).
    pub handshake_rate: u32,
    pub relayed_circuits: usize,
    /// UDP datagrams received and sent, and sends that failed.
    pub received: Counted,
    pub sent: Counted,
    pub send_errors: u64,
    /// Packets read from and written to the TUN device (client and exit).
    pub tun_read: Counted,
    pub tun_written: Counted,
    pub own: OwnCircuits,
    /// A client's pool: circuits up and still building.
    pub pool: Option<(usize, usize)>,
    pub exit: Option<ExitStats>,
}

type Labels = Vec<(String, String)>;
/// Counters by name.
type Named = Vec<(String, u64)>;

fn counter(reg: &mut Registry, name: &str, help: &str, v: u64) {
    reg.register(name, help, ConstCounter::new(v));
}

fn gauge(reg: &mut Registry, name: &str, help: &str, v: usize) {
    reg.register(
        name,
        help,
        ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)),
    );
}

/// A counter family with one label.
fn family(
    reg: &mut Registry,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (String, u64)>,
) {
    let f = Family::<Labels, Counter>::default();
    for (value, n) in values {
        f.get_or_create(&vec![(label.to_owned(), value)]).inc_by(n);
    }
    reg.register(name, help, f);
}

/// A struct's `u64` fields by name (nested structs left out).
fn fields<T: serde::Serialize>(v: &T) -> Named {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Object(m)) => m
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.as_u64()?)))
            .collect(),
        _ => Vec::new(),
    }
}

/// Splits `fields` into those named `prefix` + label and the rest.
fn by_prefix(fields: Named, prefix: &str) -> (Named, Named) {
    let (with, without): (Vec<_>, Vec<_>) =
        fields.into_iter().partition(|(k, _)| k.starts_with(prefix));
    let with = with
        .into_iter()
        .map(|(k, v)| (k.trim_start_matches(prefix).to_owned(), v))
        .collect();
    (with, without)
}

fn in_out(i: &Counted, o: &Counted, f: fn(&Counted) -> u64) -> [(String, u64); 2] {
    [("in".to_owned(), f(i)), ("out".to_owned(), f(o))]
}

/// The snapshot in the OpenMetrics text format.
#[must_use]
pub fn encode_snapshot(s: &Snapshot) -> String {
    let mut reg = Registry::with_prefix("anonnet");
    reg.register(
        "build",
        "The daemon's role and version",
        Info::new(vec![
            ("role".to_owned(), s.role.to_owned()),
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ]),
    );
    family(
        &mut reg,
        "datagrams",
        "UDP datagrams received (in) and sent (out)",
        "direction",
        in_out(&s.received, &s.sent, |c| c.packets),
    );
    family(
        &mut reg,
        "datagram_bytes",
        "Bytes of the UDP datagrams received (in) and sent (out)",
        "direction",
        in_out(&s.received, &s.sent, |c| c.bytes),
    );
    counter(
        &mut reg,
        "send_errors",
        "UDP datagrams whose send failed",
        s.send_errors,
    );
    family(
        &mut reg,
        "tun_packets",
        "Packets read from (in) and written to (out) the TUN device",
        "direction",
        in_out(&s.tun_read, &s.tun_written, |c| c.packets),
    );
    family(
        &mut reg,
        "tun_bytes",
        "Bytes of the packets read from (in) and written to (out) the TUN device",
        "direction",
        in_out(&s.tun_read, &s.tun_written, |c| c.bytes),
    );
    gauge(
        &mut reg,
        "relayed_circuits",
        "Circuits this node relays now",
        s.relayed_circuits,
    );
    counter(
        &mut reg,
        "circuits_up",
        "Own circuits that came up",
        s.own.up,
    );
    family(
        &mut reg,
        "circuits_down",
        "Own circuits that went down or did not come up, by reason",
        "reason",
        s.own.down.iter().map(|(r, n)| ((*r).to_owned(), *n)),
    );
    if let Some((up, building)) = s.pool {
        let f = Family::<Labels, prometheus_client::metrics::gauge::Gauge>::default();
        for (state, n) in [("up", up), ("building", building)] {
            f.get_or_create(&vec![("state".to_owned(), state.to_owned())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        reg.register("pool_circuits", "The client's circuits, by state", f);
    }
    gauge(
        &mut reg,
        "handshake_rate",
        "Handshakes of each budget (link, build, rekey) processed per second at most",
        s.handshake_rate as usize,
    );
    node_metrics(&mut reg, &s.node);
    if let Some(x) = &s.exit {
        exit_metrics(&mut reg, x);
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// The node's counters: drops by reason, handshakes by budget, padding by
/// direction, the others one counter each.
fn node_metrics(reg: &mut Registry, stats: &Stats) {
    let all = fields(stats);
    let (dropped, rest) = by_prefix(all, "dropped_");
    family(
        reg,
        "dropped",
        "Datagrams the node dropped, by reason",
        "reason",
        dropped,
    );
    let (handshakes, rest) = by_prefix(rest, "handshakes_");
    family(
        reg,
        "handshakes",
        "Handshake tokens taken, by budget (those refused: dropped{reason=\"rate_limited\"})",
        "budget",
        handshakes,
    );
    let (padding_bytes, rest) = by_prefix(rest, "padding_bytes_");
    family(
        reg,
        "padding_bytes",
        "Bytes of padding cells on the wire, received and sent",
        "direction",
        padding_bytes,
    );
    for (k, v) in rest {
        if k == "rx_datagrams" {
            continue;
        }
        counter(
            reg,
            &format!("node_{k}"),
            &format!("The node's {k} counter"),
            v,
        );
    }
}

/// The exit's counters: drops by reason, its virtual circuits, the others one
/// counter each (`rejected_policy`: packets the exit policy refused).
fn exit_metrics(reg: &mut Registry, x: &ExitStats) {
    let (dropped, rest) = by_prefix(fields(x), "dropped_");
    family(
        reg,
        "exit_dropped",
        "Packets the exit dropped, by reason",
        "reason",
        dropped,
    );
    for (k, v) in rest {
        counter(
            reg,
            &format!("exit_{k}"),
            &format!("The exit's {k} counter"),
            v,
        );
    }
    for (k, v) in fields(&x.vc) {
        counter(
            reg,
            &format!("exit_vc_{k}"),
            &format!("The exit's virtual circuits: {k}"),
            v,
        );
    }
}

/// The listening endpoint: scrapes arrive through [`MetricsServer::recv`], each with
/// where to send the text.
pub struct MetricsServer {
    rx: mpsc::Receiver<Reply>,
    task: JoinHandle<()>,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl MetricsServer {
    /// Listens on `addr`.
    pub async fn bind(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(8);
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!("metrics: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    continue;
                };
                let tx = tx.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| answer(req, tx.clone()));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    let _ = timeout(CONNECTION_TIME, conn).await;
                    drop(slot);
                });
            }
        });
        Ok(Self { rx, task, addr })
    }

    /// The next scrape.
    pub async fn recv(&mut self) -> Option<Reply> {
        self.rx.recv().await
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One HTTP request: the daemon's metrics for `GET /metrics`.
async fn answer(
    req: Request<Incoming>,
    tx: mpsc::Sender<Reply>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = if req.method() != Method::GET {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_owned(),
        )
    } else if req.uri().path() != PATH {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("the metrics are at {PATH}\n"),
        )
    } else {
        let (reply, text) = oneshot::channel();
        let asked = tx.send(reply).await.is_ok();
        match timeout(ANSWER_TIMEOUT, text).await {
            Ok(Ok(text)) if asked => (StatusCode::OK, OPENMETRICS, text),
            _ => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "the daemon did not answer\n".to_owned(),
            ),
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = ctype.parse() {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn snapshot_encodes_every_family_with_its_labels() {
        let mut s = Snapshot {
            role: "exit",
            handshake_rate: 300,
            relayed_circuits: 3,
            received: Counted {
                packets: 10,
                bytes: 1500,
            },
            sent: Counted {
                packets: 7,
                bytes: 900,
            },
            pool: Some((2, 1)),
            exit: Some(ExitStats {
                forwarded: 5,
                rejected_policy: 2,
                dropped_rate: 4,
                ..ExitStats::default()
            }),
            ..Snapshot::default()
        };
        s.node.dropped_auth = 6;
        s.node.dropped_rate_limited = 1;
        s.node.handshakes_build = 8;
        s.node.padding_bytes_sent = 1024;
        s.node.relayed_forward = 11;
        s.own.up = 2;
        s.own.down.insert("build_timeout", 3);
        let text = encode_snapshot(&s);
        for (series, want) in [
            ("anonnet_datagrams_total{direction=\"in\"}", 10.0),
            ("anonnet_datagram_bytes_total{direction=\"out\"}", 900.0),
            ("anonnet_relayed_circuits", 3.0),
            ("anonnet_circuits_up_total", 2.0),
            ("anonnet_circuits_down_total{reason=\"build_timeout\"}", 3.0),
            ("anonnet_pool_circuits{state=\"building\"}", 1.0),
            ("anonnet_handshake_rate", 300.0),
            ("anonnet_dropped_total{reason=\"auth\"}", 6.0),
            ("anonnet_dropped_total{reason=\"rate_limited\"}", 1.0),
            ("anonnet_handshakes_total{budget=\"build\"}", 8.0),
            ("anonnet_padding_bytes_total{direction=\"sent\"}", 1024.0),
            ("anonnet_node_relayed_forward_total", 11.0),
            ("anonnet_exit_forwarded_total", 5.0),
            ("anonnet_exit_rejected_policy_total", 2.0),
            ("anonnet_exit_dropped_total{reason=\"rate\"}", 4.0),
            ("anonnet_exit_vc_created_total", 0.0),
        ] {
            assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
        }
        assert!(
            text.contains("anonnet_build_info{role=\"exit\",version=\""),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
        assert!(
            !text.contains("rx_datagrams"),
            "counted as anonnet_datagrams"
        );
    }

    #[test]
    fn a_relay_has_no_exit_or_pool_metrics() {
        let text = encode_snapshot(&Snapshot {
            role: "gateway",
            ..Snapshot::default()
        });
        assert!(!text.contains("anonnet_exit_"), "{text}");
        assert!(!text.contains("anonnet_pool_circuits"), "{text}");
        assert_eq!(
            value(&text, "anonnet_dropped_total{reason=\"mac\"}"),
            Some(0.0)
        );
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_what_the_daemon_answers_at_the_path_only() {
        let mut server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = server.addr;
        let daemon = tokio::spawn(async move {
            let reply = server.recv().await.unwrap();
            reply.send("anonnet_x 1\n# EOF\n".to_owned()).unwrap();
            server
        });
        let ok = get(addr, PATH).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("application/openmetrics-text"), "{ok}");
        assert!(ok.ends_with("anonnet_x 1\n# EOF\n"), "{ok}");
        let _server = daemon.await.unwrap();
        let other = get(addr, "/").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
    }

    #[tokio::test]
    async fn a_taken_address_is_named() {
        let first = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let err = MetricsServer::bind(first.addr).await.err().unwrap();
        assert!(
            format!("{err:#}").contains(&format!("cannot serve metrics on {}", first.addr)),
            "{err:#}"
        );
    }
}
