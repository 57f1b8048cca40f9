//! An open-loop HTTP/1.1 load client that runs inside a simulated host's network namespace and
//! keeps one record per request (send and receive instants, status, body, connection reuse,
//! retry, error), for tests that switch what answers a URL while it is under load.
//!
//! Each worker is a thread that first enters the host's network namespace
//! ([`crate::simhost::enter_netns`]), so its sockets reach the host's own loopback (e.g. a port
//! the host's dockerd publishes), then sends `GET`s on a fixed schedule: worker `i` of `n` at
//! `start + i/n · T + k · T`, `T = 1 / its rate`. A worker whose request outlasts its slot
//! sends the next one at once (the lag is recorded in [`Record::scheduled`]) and never skips a
//! slot, so a slow server shows up as latency and lag, not as a silently lower rate.
//!
//! The requests are written by hand over `TcpStream` and responses are read by their framing
//! (RFC 9112 §6.3: no body for 1xx/204/304, chunked, `Content-Length`, or until the server
//! closes). Three client behaviours, workers split among them ([`Mode`]):
//! - [`Mode::Fresh`]: a new connection per request, `Connection: close`;
//! - [`Mode::KeepAlive`]: what careful clients (Go's transport, urllib3, browsers) do: reuse a
//!   persistent connection, but before reuse check the idle socket for the server's close (a
//!   pending EOF), and retry an idempotent request once on a new connection when a *reused*
//!   connection closes before any byte of the response (RFC 9112 §9.3.1); such retries are
//!   counted ([`Record::retried`]);
//! - [`Mode::Naive`]: reuse without checking and never retry (Python's `http.client`).

use std::fmt::Write as _;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::simhost::enter_netns;

/// How a worker uses connections (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// A new connection per request, `Connection: close`.
    Fresh,
    /// Persistent connections, checked for EOF before reuse; one retry of a request whose
    /// reused connection closed before any response byte.
    KeepAlive,
    /// Persistent connections reused unchecked; never a retry.
    Naive,
}

impl Mode {
    /// Every mode, in the order summaries list them.
    pub const ALL: [Mode; 3] = [Mode::Fresh, Mode::KeepAlive, Mode::Naive];
}

/// What to load and how hard.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Where to connect, as seen inside the host's network namespace.
    pub addr: SocketAddr,
    /// Request target, e.g. `/version.txt`.
    pub path: String,
    /// Total requests per second over all workers.
    pub rate_per_sec: u32,
    /// Worker threads; worker `i` uses `modes[i % modes.len()]` and `rate_per_sec / workers`
    /// requests per second (the remainder goes to the first workers).
    pub workers: usize,
    /// The modes the workers are split among (not empty).
    pub modes: Vec<Mode>,
    /// Longest a request may take (connect to the end of the response) before it fails.
    pub timeout: Duration,
}

impl LoadSpec {
    /// `GET path` from `addr`: 240 requests/s from 12 workers split among every mode, 5 s
    /// timeout.
    pub fn new(addr: SocketAddr, path: &str) -> LoadSpec {
        LoadSpec {
            addr,
            path: path.to_owned(),
            rate_per_sec: 240,
            workers: 12,
            modes: Mode::ALL.to_vec(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// One request.
#[derive(Debug, Clone)]
pub struct Record {
    pub mode: Mode,
    /// Index of the worker that sent it.
    pub worker: usize,
    /// When the schedule wanted it sent (`sent - scheduled` is the worker's lag).
    pub scheduled: Instant,
    /// When it was sent (before the connect, for a new connection).
    pub sent: Instant,
    /// When the response ended or the request failed.
    pub done: Instant,
    /// The response's status, `None` when no complete response arrived.
    pub status: Option<u16>,
    /// The response body, first 200 bytes, trimmed.
    pub body: String,
    /// First sent on a connection that had carried a request before.
    pub reused: bool,
    /// Sent a second time on a new connection (only [`Mode::KeepAlive`]).
    pub retried: bool,
    /// Why no complete response arrived (connect, write, read, timeout, parse).
    pub error: Option<String>,
}

impl Record {
    /// A complete response with a 2xx status.
    pub fn ok(&self) -> bool {
        self.error.is_none() && matches!(self.status, Some(200..=299))
    }

    /// Send to end of response (or failure).
    pub fn latency(&self) -> Duration {
        self.done.duration_since(self.sent)
    }

    /// How late the request went out against its schedule.
    pub fn lag(&self) -> Duration {
        self.sent.saturating_duration_since(self.scheduled)
    }
}

/// Load running in a host (see the module docs); [`Load::stop`] ends it and reports.
pub struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    marks: Arc<Mutex<Vec<(String, Instant)>>>,
    workers: Vec<JoinHandle<Vec<Record>>>,
}

impl Load {
    /// Starts `spec.workers` workers in the network namespace of process `netns_pid`
    /// ([`crate::simhost::SimHost::init_pid`]); returns once every worker is in it, their
    /// schedules starting a few milliseconds later. Panics when a worker cannot enter it.
    pub fn start(netns_pid: u32, spec: LoadSpec) -> Load {
        assert!(!spec.modes.is_empty(), "LoadSpec::modes is empty");
        assert!(spec.workers > 0, "LoadSpec::workers is 0");
        let spec = Arc::new(spec);
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let mut gos = Vec::new();
        let mut workers = Vec::new();
        let n = spec.workers;
        let (base, extra) = (
            spec.rate_per_sec as usize / n,
            spec.rate_per_sec as usize % n,
        );
        for i in 0..n {
            let (go_tx, go_rx) = mpsc::channel::<Instant>();
            gos.push(go_tx);
            let w = Worker {
                index: i,
                mode: spec.modes[i % spec.modes.len()],
                rate: (base + usize::from(i < extra)) as f64,
                phase: i as f64 / n as f64,
                spec: spec.clone(),
                stop: stop.clone(),
                request: request_bytes(&spec, spec.modes[i % spec.modes.len()]),
            };
            let ready = ready_tx.clone();
            workers.push(thread::spawn(move || {
                if let Err(e) = enter_netns(netns_pid) {
                    let _ = ready.send(Err(format!("worker {i}: {e}")));
                    return Vec::new();
                }
                let _ = ready.send(Ok(()));
                match go_rx.recv() {
                    Ok(start) => w.run(start),
                    Err(_) => Vec::new(),
                }
            }));
        }
        drop(ready_tx);
        let mut failed = Vec::new();
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed.push(e),
                Err(_) => failed.push("a worker died".into()),
            }
        }
        if !failed.is_empty() {
            drop(gos);
            for w in workers {
                let _ = w.join();
            }
            panic!("load workers could not enter the network namespace of {netns_pid}: {failed:?}");
        }
        let started = Instant::now() + Duration::from_millis(10);
        for go in gos {
            let _ = go.send(started);
        }
        Load {
            started,
            stop,
            marks: Arc::new(Mutex::new(Vec::new())),
            workers,
        }
    }

    /// Records the current instant under `label` (e.g. `"switch"` right before a switch).
    pub fn mark(&self, label: &str) {
        self.marks
            .lock()
            .unwrap()
            .push((label.to_owned(), Instant::now()));
    }

    /// Stops sending (requests in flight finish, within their timeout) and reports every
    /// request, ordered by send instant.
    pub fn stop(self) -> LoadReport {
        let stopped = Instant::now();
        self.stop.store(true, Ordering::SeqCst);
        let mut records: Vec<Record> = self
            .workers
            .into_iter()
            .flat_map(|w| w.join().expect("load worker panicked"))
            .collect();
        records.sort_by_key(|r| r.sent);
        let marks = self.marks.lock().unwrap().clone();
        LoadReport {
            records,
            started: self.started,
            stopped,
            marks,
        }
    }
}

/// Every request of a [`Load`], and the instants it was started, stopped and marked.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Ordered by [`Record::sent`].
    pub records: Vec<Record>,
    pub started: Instant,
    pub stopped: Instant,
    pub marks: Vec<(String, Instant)>,
}

impl LoadReport {
    /// Requests of `mode` that failed or got a non-2xx status.
    pub fn failures(&self, mode: Mode) -> Vec<&Record> {
        self.of(mode).filter(|r| !r.ok()).collect()
    }

    /// Requests of `mode`, in send order.
    pub fn of(&self, mode: Mode) -> impl Iterator<Item = &Record> {
        self.records.iter().filter(move |r| r.mode == mode)
    }

    /// Requests sent per second, all modes, between start and stop.
    pub fn achieved_rate(&self) -> f64 {
        self.records.len() as f64 / self.seconds()
    }

    /// Requests of `mode` sent per second between start and stop.
    pub fn rate(&self, mode: Mode) -> f64 {
        self.of(mode).count() as f64 / self.seconds()
    }

    fn seconds(&self) -> f64 {
        self.stopped
            .saturating_duration_since(self.started)
            .as_secs_f64()
            .max(1e-9)
    }

    /// The bodies of the 2xx responses in the order the requests were sent, runs of equal
    /// bodies folded into one: `["v1", "v2"]` for one clean switch, `["v1", "v2", "v1", "v2"]`
    /// when answers flap.
    pub fn bodies_in_send_order(&self) -> Vec<String> {
        let mut runs: Vec<String> = Vec::new();
        for r in self.records.iter().filter(|r| r.ok()) {
            if runs.last() != Some(&r.body) {
                runs.push(r.body.clone());
            }
        }
        runs
    }

    /// How many times the body changed, in send order ([`Self::bodies_in_send_order`]).
    pub fn transitions(&self) -> usize {
        self.bodies_in_send_order().len().saturating_sub(1)
    }

    /// The first instant marked `label`.
    pub fn mark(&self, label: &str) -> Option<Instant> {
        self.marks.iter().find(|(l, _)| l == label).map(|(_, t)| *t)
    }

    /// 99th percentile latency (ms) of the requests sent in `[from, to]`, any mode and
    /// outcome; `None` when none was sent then.
    pub fn p99_ms_between(&self, from: Instant, to: Instant) -> Option<f64> {
        let mut ms: Vec<f64> = self
            .records
            .iter()
            .filter(|r| r.sent >= from && r.sent <= to)
            .map(|r| r.latency().as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        percentile(&ms, 0.99)
    }

    /// One line per mode that sent anything: sent, ok, failed, retried, reused, rate,
    /// latency p50/p99/max and the worst lag; then one line for all.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let line = |out: &mut String, name: &str, rs: Vec<&Record>| {
            let mut ms: Vec<f64> = rs.iter().map(|r| r.latency().as_secs_f64() * 1e3).collect();
            ms.sort_by(f64::total_cmp);
            let ok = rs.iter().filter(|r| r.ok()).count();
            let lag = rs.iter().map(|r| r.lag()).max().unwrap_or_default();
            let _ = writeln!(
                out,
                "{name:<9} sent {:>5}  ok {:>5}  failed {:>3}  retried {:>3}  reused {:>5}  {:>6.1} req/s  p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms  max lag {:>6.1} ms",
                rs.len(),
                ok,
                rs.len() - ok,
                rs.iter().filter(|r| r.retried).count(),
                rs.iter().filter(|r| r.reused).count(),
                rs.len() as f64 / self.seconds(),
                percentile(&ms, 0.50).unwrap_or(0.0),
                percentile(&ms, 0.99).unwrap_or(0.0),
                ms.last().copied().unwrap_or(0.0),
                lag.as_secs_f64() * 1e3,
            );
        };
        for mode in Mode::ALL {
            let rs: Vec<&Record> = self.of(mode).collect();
            if !rs.is_empty() {
                line(&mut out, &format!("{mode:?}"), rs);
            }
        }
        line(&mut out, "all", self.records.iter().collect());
        out
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn request_bytes(spec: &LoadSpec, mode: Mode) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: dropship-load\r\nAccept: */*\r\n{}\r\n",
        spec.path,
        spec.addr,
        if mode == Mode::Fresh {
            "Connection: close\r\n"
        } else {
            ""
        }
    )
    .into_bytes()
}

struct Worker {
    index: usize,
    mode: Mode,
    /// Requests per second.
    rate: f64,
    /// Offset of the first slot, as a fraction of the interval (spreads the workers).
    phase: f64,
    spec: Arc<LoadSpec>,
    stop: Arc<AtomicBool>,
    request: Vec<u8>,
}

/// A persistent connection between requests.
struct Conn {
    stream: TcpStream,
}

impl Conn {
    /// Whether the idle connection still looks open: nothing to read, in particular no EOF
    /// (a server that closed an idle connection has sent its FIN already).
    fn looks_open(&self) -> bool {
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        let open = matches!(self.stream.peek(&mut b), Err(e) if e.kind() == ErrorKind::WouldBlock);
        open && self.stream.set_nonblocking(false).is_ok()
    }
}

/// A complete response.
struct Response {
    status: u16,
    body: Vec<u8>,
    keep_alive: bool,
}

/// A request that got no complete response.
struct Failure {
    what: String,
    /// The connection was closed or reset before any byte of the response arrived (the
    /// case RFC 9112 §9.3.1 allows a client to retry an idempotent request for).
    closed_before_response: bool,
}

impl Worker {
    fn run(self, start: Instant) -> Vec<Record> {
        let mut records = Vec::new();
        if self.rate <= 0.0 {
            return records;
        }
        let interval = Duration::from_secs_f64(1.0 / self.rate);
        let first = start + interval.mul_f64(self.phase);
        let mut conn: Option<Conn> = None;
        for k in 0u64.. {
            let scheduled = first + interval.mul_f64(k as f64);
            loop {
                if self.stop.load(Ordering::SeqCst) {
                    return records;
                }
                let now = Instant::now();
                if now >= scheduled {
                    break;
                }
                thread::sleep((scheduled - now).min(Duration::from_millis(20)));
            }
            records.push(self.one(scheduled, &mut conn));
        }
        records
    }

    fn one(&self, scheduled: Instant, conn: &mut Option<Conn>) -> Record {
        let sent = Instant::now();
        let deadline = sent + self.spec.timeout;
        let mut record = Record {
            mode: self.mode,
            worker: self.index,
            scheduled,
            sent,
            done: sent,
            status: None,
            body: String::new(),
            reused: false,
            retried: false,
            error: None,
        };
        let previous = match self.mode {
            Mode::Fresh => None,
            Mode::KeepAlive => conn.take().filter(Conn::looks_open),
            Mode::Naive => conn.take(),
        };
        record.reused = previous.is_some();
        let mut outcome = self.exchange_on(previous, deadline);
        if let Err(f) = &outcome {
            if self.mode == Mode::KeepAlive && record.reused && f.closed_before_response {
                record.retried = true;
                outcome = self.exchange_on(None, deadline);
            }
        }
        record.done = Instant::now();
        match outcome {
            Ok((resp, stream)) => {
                record.status = Some(resp.status);
                let n = resp.body.len().min(200);
                record.body = String::from_utf8_lossy(&resp.body[..n]).trim().to_owned();
                if resp.keep_alive && self.mode != Mode::Fresh {
                    *conn = Some(Conn { stream });
                }
            }
            Err(f) => record.error = Some(f.what),
        }
        record
    }

    /// One request on `conn`, or on a new connection when `None`.
    fn exchange_on(
        &self,
        conn: Option<Conn>,
        deadline: Instant,
    ) -> Result<(Response, TcpStream), Failure> {
        let mut stream = match conn {
            Some(c) => c.stream,
            None => {
                let left = deadline.saturating_duration_since(Instant::now());
                let s =
                    TcpStream::connect_timeout(&self.spec.addr, left.max(Duration::from_millis(1)))
                        .map_err(|e| Failure {
                            what: format!("connect: {e}"),
                            closed_before_response: false,
                        })?;
                let _ = s.set_nodelay(true);
                s
            }
        };
        let _ = stream.set_write_timeout(Some(self.spec.timeout));
        if let Err(e) = stream.write_all(&self.request) {
            return Err(Failure {
                closed_before_response: is_closed(&e),
                what: format!("write: {e}"),
            });
        }
        read_response(&mut stream, deadline).map(|r| (r, stream))
    }
}

fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof
    )
}

/// Reads one response (RFC 9112 §6.3 framing) before `deadline`.
fn read_response(stream: &mut TcpStream, deadline: Instant) -> Result<Response, Failure> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut head: Option<Head> = None;
    loop {
        if let Some(h) = &head {
            let body = &buf[h.len..];
            let complete = match h.framing {
                Framing::None => Some((Vec::new(), true)),
                Framing::Length(n) => (body.len() >= n).then(|| (body[..n].to_vec(), true)),
                Framing::Chunked => decode_chunked(body)
                    .map_err(|e| Failure {
                        what: format!("parse: {e}"),
                        closed_before_response: false,
                    })?
                    .map(|b| (b, true)),
                Framing::Close => None,
            };
            if let Some((body, framed)) = complete {
                return Ok(Response {
                    status: h.status,
                    body,
                    keep_alive: h.keep_alive && framed,
                });
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure {
                what: format!("timeout after {} response bytes", buf.len()),
                closed_before_response: false,
            });
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => {
                if let Some(h) = &head {
                    if matches!(h.framing, Framing::Close) {
                        return Ok(Response {
                            status: h.status,
                            body: buf[h.len..].to_vec(),
                            keep_alive: false,
                        });
                    }
                }
                return Err(Failure {
                    what: if buf.is_empty() {
                        "closed before any response byte".into()
                    } else {
                        format!("closed after {} response bytes", buf.len())
                    },
                    closed_before_response: buf.is_empty(),
                });
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if head.is_none() {
                    head = parse_head(&buf).map_err(|e| Failure {
                        what: format!("parse: {e}"),
                        closed_before_response: false,
                    })?;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(Failure {
                    what: format!("timeout after {} response bytes", buf.len()),
                    closed_before_response: false,
                })
            }
            Err(e) => {
                return Err(Failure {
                    closed_before_response: buf.is_empty() && is_closed(&e),
                    what: format!("read after {} response bytes: {e}", buf.len()),
                })
            }
        }
    }
}

enum Framing {
    None,
    Length(usize),
    Chunked,
    Close,
}

struct Head {
    /// Bytes of the status line and header section, final CRLF included.
    len: usize,
    status: u16,
    framing: Framing,
    /// The connection may carry another request once this body is read.
    keep_alive: bool,
}

/// The response head once `buf` holds all of it (`Ok(None)`: not yet). Interim 1xx responses
/// never answer a plain GET here and are refused.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err("response head over 64 KiB".into());
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(format!("status line {status_line:?}")),
    };
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..=999).contains(s))
        .ok_or_else(|| format!("status line {status_line:?}"))?;
    if status < 200 {
        return Err(format!("interim response {status}"));
    }
    let (mut close, mut keep_alive_token, mut chunked, mut length) = (false, false, false, None);
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("header line {line:?}"))?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "connection" => {
                for token in value.split(',').map(|t| t.trim().to_ascii_lowercase()) {
                    close |= token == "close";
                    keep_alive_token |= token == "keep-alive";
                }
            }
            "transfer-encoding" => {
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
            }
            "content-length" => {
                length = Some(
                    value
                        .parse::<usize>()
                        .map_err(|_| format!("Content-Length {value:?}"))?,
                );
            }
            _ => {}
        }
    }
    let framing = if status == 204 || status == 304 {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::Close
    };
    let keep_alive = !close && (http11 || keep_alive_token) && !matches!(framing, Framing::Close);
    Ok(Some(Head {
        len: end + 4,
        status,
        framing,
        keep_alive,
    }))
}

/// The decoded body once `data` holds a whole chunked body (trailers included), else `None`.
fn decode_chunked(data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = data[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&data[at..at + eol]).map_err(|_| "chunk size line")?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| format!("chunk size {line:?}"))?;
        at += eol + 2;
        if size == 0 {
            // Trailer section: header lines up to an empty line.
            loop {
                let Some(eol) = data[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some(body));
                }
            }
        }
        if data.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&data[at..at + size]);
        if &data[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF".into());
        }
        at += size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_and_bodies_are_framed_as_rfc_9112_says() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nv1\n")
            .unwrap()
            .unwrap();
        assert!(matches!(h.framing, Framing::Length(3)) && h.keep_alive && h.status == 200);
        let h = parse_head(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive, "HTTP/1.0 without keep-alive closes");
        let h = parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = parse_head(b"HTTP/1.1 200 OK\r\nDate: x\r\n\r\nabc")
            .unwrap()
            .unwrap();
        assert!(matches!(h.framing, Framing::Close) && !h.keep_alive);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n")
            .unwrap()
            .is_none());
        assert_eq!(
            decode_chunked(b"2\r\nv1\r\n1;x=y\r\n\n\r\n0\r\nT: z\r\n\r\n").unwrap(),
            Some(b"v1\n".to_vec())
        );
        assert_eq!(decode_chunked(b"2\r\nv1\r\n0\r\n").unwrap(), None);
        assert!(decode_chunked(b"zz\r\n").is_err());
    }

    /// A server that answers the first request on each connection and closes the connection
    /// when a second one arrives on it, without a byte: the race RFC 9112 §9.3.1 is about.
    fn closing_server() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    let mut seen = 0;
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        seen += buf[..n].windows(4).filter(|w| w == b"\r\n\r\n").count();
                        if seen >= 2 {
                            break;
                        }
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nv1\n");
                    }
                });
            }
        });
        addr
    }

    fn worker(mode: Mode, addr: SocketAddr) -> Worker {
        let spec = Arc::new(LoadSpec {
            modes: vec![mode],
            ..LoadSpec::new(addr, "/")
        });
        Worker {
            index: 0,
            mode,
            rate: 1.0,
            phase: 0.0,
            request: request_bytes(&spec, mode),
            spec,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    #[test]
    fn keep_alive_retries_once_when_a_reused_connection_closes_and_naive_does_not() {
        let addr = closing_server();
        for (mode, retried, ok) in [(Mode::KeepAlive, true, true), (Mode::Naive, false, false)] {
            let w = worker(mode, addr);
            let mut conn = None;
            let first = w.one(Instant::now(), &mut conn);
            assert!(
                first.ok() && !first.reused && first.body == "v1",
                "{first:?}"
            );
            assert!(conn.is_some(), "kept for reuse");
            let second = w.one(Instant::now(), &mut conn);
            assert!(second.reused, "{second:?}");
            assert_eq!((second.retried, second.ok()), (retried, ok), "{second:?}");
        }
        let w = worker(Mode::Fresh, addr);
        let mut conn = None;
        for _ in 0..2 {
            let r = w.one(Instant::now(), &mut conn);
            assert!(r.ok() && !r.reused && conn.is_none(), "{r:?}");
        }
    }

    #[test]
    fn bodies_fold_into_runs_and_percentiles_use_nearest_rank() {
        let t = Instant::now();
        let rec = |i: u64, body: &str, status: u16| Record {
            mode: Mode::Fresh,
            worker: 0,
            scheduled: t + Duration::from_millis(i),
            sent: t + Duration::from_millis(i),
            done: t + Duration::from_millis(i + i),
            status: Some(status),
            body: body.into(),
            reused: false,
            retried: false,
            error: None,
        };
        let report = LoadReport {
            records: vec![
                rec(1, "v1", 200),
                rec(2, "v1", 200),
                rec(3, "bad", 502),
                rec(4, "v2", 200),
                rec(5, "v2", 200),
            ],
            started: t,
            stopped: t + Duration::from_secs(1),
            marks: vec![],
        };
        assert_eq!(report.bodies_in_send_order(), ["v1", "v2"]);
        assert_eq!(report.transitions(), 1);
        assert_eq!(report.failures(Mode::Fresh).len(), 1);
        assert_eq!(report.achieved_rate(), 5.0);
        assert_eq!(
            report.p99_ms_between(t, t + Duration::from_millis(4)),
            Some(4.0)
        );
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.0));
    }
}
