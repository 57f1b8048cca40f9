//! A fault-injecting HTTP proxy in front of moto: every request is forwarded unchanged to
//! the real emulator except those matching a [`Fault`], which get the configured error
//! response instead. Lets suites prove what happens when S3 fails half-way (a part upload
//! refused, access denied) while everything else stays real. A [`Throttle`] slows the
//! responses to matching requests instead (a large download that takes seconds).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A request pattern and the error answered to it.
#[derive(Clone, Debug)]
pub struct Fault {
    /// HTTP method to match, e.g. `PUT`.
    pub method: &'static str,
    /// Substring the request target (path and query) must contain, e.g. `partNumber=2`.
    pub target_contains: &'static str,
    /// Status code answered.
    pub status: u16,
    /// S3 error code in the XML body, e.g. `InternalError` or `AccessDenied`.
    pub code: &'static str,
}

/// A request pattern whose response body is relayed at a fixed rate.
#[derive(Clone, Debug)]
pub struct Throttle {
    /// HTTP method to match, e.g. `GET`.
    pub method: &'static str,
    /// Substring the request target (path and query) must contain, e.g. `versionId=…`.
    pub target_contains: String,
    /// Bytes relayed per second.
    pub bytes_per_sec: usize,
}

/// A running proxy; stops accepting when dropped (the listener thread exits with the process).
pub struct FaultProxy {
    port: u16,
    injected: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
    heads: Heads,
}

/// Each request's line (`METHOD target`) and headers (lower-case names, in order).
type Heads = Arc<Mutex<Vec<(String, Vec<(String, String)>)>>>;

impl FaultProxy {
    /// Starts a proxy on a free loopback port forwarding to `upstream` (`http://host:port`).
    pub fn start(upstream: &str, faults: Vec<Fault>) -> Self {
        Self::start_with(upstream, faults, Vec::new())
    }

    /// Like [`FaultProxy::start`], also relaying the responses to requests matching a
    /// [`Throttle`] at its rate.
    pub fn start_with(upstream: &str, faults: Vec<Fault>, throttles: Vec<Throttle>) -> Self {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let injected = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let heads: Heads = Arc::new(Mutex::new(Vec::new()));
        let (inj, log, hd) = (injected.clone(), seen.clone(), heads.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (upstream, faults, throttles, inj, log, hd) = (
                    upstream.clone(),
                    faults.clone(),
                    throttles.clone(),
                    inj.clone(),
                    log.clone(),
                    hd.clone(),
                );
                std::thread::spawn(move || {
                    let rules = Rules {
                        faults: &faults,
                        throttles: &throttles,
                    };
                    let _ = serve(stream, &upstream, rules, &inj, &log, &hd);
                });
            }
        });
        Self {
            port,
            injected,
            seen,
            heads,
        }
    }

    /// The headers (lower-case names, in order) of every request seen whose line
    /// (`METHOD target`) contains `line_contains`.
    pub fn headers_of(&self, line_contains: &str) -> Vec<Vec<(String, String)>> {
        self.heads
            .lock()
            .expect("proxy log")
            .iter()
            .filter(|(line, _)| line.contains(line_contains))
            .map(|(_, h)| h.clone())
            .collect()
    }

    /// The endpoint to hand to the client under test.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many requests were answered with an injected fault.
    pub fn injected(&self) -> usize {
        self.injected.load(Ordering::SeqCst)
    }

    /// Request lines seen so far (`METHOD target`).
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("proxy log").clone()
    }
}

/// What the proxy does to matching requests.
#[derive(Clone, Copy)]
struct Rules<'a> {
    faults: &'a [Fault],
    throttles: &'a [Throttle],
}

/// Handles one request on one connection (answers with `Connection: close`).
fn serve(
    client: TcpStream,
    upstream: &str,
    rules: Rules<'_>,
    injected: &AtomicUsize,
    seen: &Mutex<Vec<String>>,
    heads: &Heads,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut request_line = String::new();
    let mut headers = Vec::new();
    let mut content_length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if request_line.is_empty() {
            request_line = line.trim_end().to_string();
        }
        let lower = line.to_ascii_lowercase();
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("connection:") {
            continue;
        }
        if line == "\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(line.as_bytes());
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    seen.lock()
        .expect("proxy log")
        .push(format!("{method} {target}"));
    heads
        .lock()
        .expect("proxy log")
        .push((format!("{method} {target}"), headers));
    let mut client = client;
    if let Some(fault) = rules
        .faults
        .iter()
        .find(|f| f.method == method && target.contains(f.target_contains))
    {
        injected.fetch_add(1, Ordering::SeqCst);
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>injected by the test proxy</Message><RequestId>fault</RequestId></Error>",
            fault.code
        );
        write!(
            client,
            "HTTP/1.1 {} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{xml}",
            fault.status,
            xml.len()
        )?;
        return client.flush();
    }
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&head)?;
    up.write_all(&body)?;
    up.flush()?;
    match rules
        .throttles
        .iter()
        .find(|t| t.method == method && target.contains(t.target_contains.as_str()))
    {
        None => {
            std::io::copy(&mut up, &mut client)?;
        }
        Some(t) => {
            // Slices of a tenth of a second's worth, each followed by the rest of its tenth.
            let slice = (t.bytes_per_sec / 10).max(1);
            let mut buf = vec![0u8; slice];
            loop {
                let started = std::time::Instant::now();
                let mut filled = 0;
                while filled < slice {
                    match up.read(&mut buf[filled..])? {
                        0 => break,
                        n => filled += n,
                    }
                }
                if filled == 0 {
                    break;
                }
                client.write_all(&buf[..filled])?;
                client.flush()?;
                let tenth = std::time::Duration::from_millis(100);
                if let Some(rest) = tenth.checked_sub(started.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        }
    }
    client.flush()
}
