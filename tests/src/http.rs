//! A small real HTTP file server for serving bundles to the host script, plus a free-port
//! helper and a plain HTTP GET client. Plain `std::net`, HTTP/1.1 with `Connection: close`.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

/// What the server answers for one path.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with this body.
    Body(Vec<u8>),
    /// This status with a short text body.
    Status(u16),
    /// 200 announcing the full length but closing the connection after half the body.
    Truncated(Vec<u8>),
    /// 200 with this body, sent in small pieces spread over the duration (a slow network).
    Slow(Vec<u8>, Duration),
    /// 200 announcing the full length, then half of the body (at most 1 KiB), then nothing
    /// more while the client stays connected (at most two minutes): a stalled transfer.
    Stall(Vec<u8>),
}

#[derive(Default)]
struct Shared {
    routes: HashMap<String, Reply>,
    hits: HashMap<String, usize>,
}

/// A file server on `127.0.0.1:<ephemeral>` running in a background thread until dropped.
pub struct FileServer {
    port: u16,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
}

impl FileServer {
    /// Binds an ephemeral port and starts serving (404 for unknown paths).
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (shared.clone(), stop.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let s = s.clone();
                    thread::spawn(move || {
                        let _ = serve(conn, &s);
                    });
                }
            }
        });
        Self { port, shared, stop }
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Sets the reply for `path` (which starts with `/`).
    pub fn set(&self, path: &str, reply: Reply) {
        self.shared
            .lock()
            .unwrap()
            .routes
            .insert(path.to_string(), reply);
    }

    /// How many requests `path` received.
    pub fn hits(&self, path: &str) -> usize {
        self.shared
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock accept().
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(mut conn: TcpStream, shared: &Mutex<Shared>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .split('?')
        .next()
        .unwrap_or("/")
        .to_string();
    let reply = {
        let mut s = shared.lock().unwrap();
        *s.hits.entry(path.clone()).or_default() += 1;
        s.routes.get(&path).cloned()
    };
    let head = |status: u16, reason: &str, len: usize| {
        format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
        )
    };
    match reply {
        Some(Reply::Body(body)) => {
            conn.write_all(head(200, "OK", body.len()).as_bytes())?;
            conn.write_all(&body)?;
        }
        Some(Reply::Truncated(body)) => {
            conn.write_all(head(200, "OK", body.len()).as_bytes())?;
            conn.write_all(&body[..body.len() / 2])?;
            conn.flush()?;
        }
        Some(Reply::Slow(body, over)) => {
            conn.write_all(head(200, "OK", body.len()).as_bytes())?;
            let pieces = 50;
            for chunk in body.chunks(body.len().div_ceil(pieces).max(1)) {
                conn.write_all(chunk)?;
                conn.flush()?;
                thread::sleep(over / pieces as u32);
            }
        }
        Some(Reply::Stall(body)) => {
            conn.write_all(head(200, "OK", body.len()).as_bytes())?;
            conn.write_all(&body[..(body.len() / 2).min(1024)])?;
            conn.flush()?;
            // Hold the connection until the client gives up (read sees its close).
            conn.set_read_timeout(Some(Duration::from_millis(200)))?;
            let mut buf = [0u8; 512];
            let until = std::time::Instant::now() + Duration::from_secs(120);
            while std::time::Instant::now() < until {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            return Ok(());
        }
        Some(Reply::Status(code)) => {
            let body = format!("status {code}\n");
            conn.write_all(head(code, "Status", body.len()).as_bytes())?;
            conn.write_all(body.as_bytes())?;
        }
        None => {
            let body = b"not found\n";
            conn.write_all(head(404, "Not Found", body.len()).as_bytes())?;
            conn.write_all(body)?;
        }
    }
    conn.flush()?;
    conn.shutdown(Shutdown::Both)
}

/// A port that was free a moment ago and that this process has not handed out before
/// (so parallel tests in one binary never share one).
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .expect("bind 127.0.0.1:0")
            .local_addr()
            .expect("local addr")
            .port();
        if given.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// A GET answer: status and body. `None` when nothing answers or the response is malformed.
pub fn get(url: &str) -> Option<(u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut conn = TcpStream::connect(hostport).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}
