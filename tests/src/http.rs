//! A small real HTTP file server for serving bundles to the host script, plus a free-port
//! helper and a plain HTTP GET client. Plain `std::net`, HTTP/1.1 with `Connection: close`.
//!
//! Routes are request targets: a path, or a path with its query (`/b/k?versionId=v`, as the
//! host asks S3 for one version); a target with a query is matched exactly, and falls back
//! to its path alone. With [`FileServer::require_sigv4`] it answers like S3 to a request
//! that does not carry a valid SigV4 signature of the expected role: 403. The signature is
//! recomputed here (AWS's algorithm for S3: the path and query as sent, the signed headers,
//! the payload hash header), which moto never does.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use sha2::{Digest, Sha256};

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
    /// 301 with this `Location` (S3 redirects a request sent to another region's endpoint).
    Redirect(String),
}

/// Who must have signed a request, as S3 requires it of a role session.
#[derive(Debug, Clone)]
pub struct SigV4 {
    /// `Credential=<access key id>/<date>/<region>/s3/aws4_request`.
    pub access_key_id: String,
    /// The key the signature is checked with.
    pub secret_access_key: String,
    /// The region signed for.
    pub region: String,
    /// `x-amz-security-token`, which must be among the signed headers.
    pub session_token: String,
}

#[derive(Default)]
struct Shared {
    routes: HashMap<String, Reply>,
    hits: HashMap<String, usize>,
    /// Header lines (lower-case names) of the last request per target.
    headers: HashMap<String, Vec<(String, String)>>,
    sigv4: Option<SigV4>,
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

    /// Refuse (403) every request that lacks `sig`'s SigV4 authorization and token.
    pub fn require_sigv4(&self, sig: SigV4) {
        self.shared.lock().unwrap().sigv4 = Some(sig);
    }

    /// The headers (lower-case names, in order) of the last request for `target`.
    pub fn last_headers(&self, target: &str) -> Option<Vec<(String, String)>> {
        self.shared.lock().unwrap().headers.get(target).cloned()
    }

    /// How many requests `path` (a request target, as given to [`Self::set`]) received.
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

/// Reads a request's line and headers (lower-case names, trimmed values; the body is never
/// read: every request here is a GET or an empty PUT).
pub(crate) fn read_request(
    conn: &TcpStream,
    timeout: Duration,
) -> std::io::Result<(String, Vec<(String, String)>)> {
    conn.set_read_timeout(Some(timeout))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
        if let Some((name, value)) = line.trim_end().split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    Ok((request_line, headers))
}

fn serve(mut conn: TcpStream, shared: &Mutex<Shared>) -> std::io::Result<()> {
    let (request_line, headers) = read_request(&conn, Duration::from_secs(10))?;
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let path = target.split('?').next().unwrap_or("/").to_string();
    let reply = {
        let mut s = shared.lock().unwrap();
        *s.hits.entry(target.clone()).or_default() += 1;
        let method = request_line.split_whitespace().next().unwrap_or("");
        let authorized = s
            .sigv4
            .as_ref()
            .is_none_or(|sig| sigv4_valid(sig, method, &target, &headers));
        s.headers.insert(target.clone(), headers);
        if !authorized {
            Some(Reply::Status(403))
        } else {
            s.routes
                .get(&target)
                .or_else(|| s.routes.get(&path))
                .cloned()
        }
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
        Some(Reply::Redirect(location)) => {
            conn.write_all(
                format!(
                    "HTTP/1.1 301 Moved Permanently\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )?;
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

/// Whether the request carries an AWS4-HMAC-SHA256 signature for S3 by `sig`'s key, for its
/// region, over the host, the payload hash, the date and the session token (all signed), as
/// S3 computes it: the canonical request from the path and the sorted query as sent.
fn sigv4_valid(sig: &SigV4, method: &str, target: &str, headers: &[(String, String)]) -> bool {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(fields) = header("authorization").and_then(|a| a.strip_prefix("AWS4-HMAC-SHA256 "))
    else {
        return false;
    };
    let field = |name: &str| {
        fields
            .split(',')
            .map(str::trim)
            .find_map(|f| f.strip_prefix(name))
    };
    let (Some(credential), Some(signed), Some(signature)) = (
        field("Credential="),
        field("SignedHeaders="),
        field("Signature="),
    ) else {
        return false;
    };
    let (Some(date_time), Some(payload_hash)) =
        (header("x-amz-date"), header("x-amz-content-sha256"))
    else {
        return false;
    };
    let Some(date) = date_time.get(..8) else {
        return false;
    };
    let scope = format!("{date}/{}/s3/aws4_request", sig.region);
    let signed_names: Vec<&str> = signed.split(';').collect();
    if credential != format!("{}/{scope}", sig.access_key_id)
        || header("x-amz-security-token") != Some(sig.session_token.as_str())
        || ![
            "host",
            "x-amz-content-sha256",
            "x-amz-date",
            "x-amz-security-token",
        ]
        .iter()
        .all(|h| signed_names.contains(h))
    {
        return false;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut params: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    params.sort_unstable();
    let mut canonical_headers = String::new();
    for name in &signed_names {
        let Some(value) = header(name) else {
            return false;
        };
        canonical_headers.push_str(&format!("{name}:{}\n", value.trim()));
    }
    let canonical_request = format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{signed}\n{payload_hash}",
        params.join("&")
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac_sha256(
        format!("AWS4{}", sig.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [sig.region.as_str(), "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    hex::encode(hmac_sha256(&key, string_to_sign.as_bytes())) == signature
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A request curl 7.88 signed (`--aws-sigv4 aws:amz:us-east-1:s3`), whose signature
    /// botocore's `S3SigV4Auth` computes identically for the same credentials and time.
    fn signed_request() -> (SigV4, Vec<(String, String)>) {
        let sig = SigV4 {
            access_key_id: "AKIDEXAMPLE0000000".into(),
            secret_access_key: "secretsecretsecret".into(),
            region: "us-east-1".into(),
            session_token: "TOKEN123".into(),
        };
        let headers = [
            ("host", "127.0.0.1:18777"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE0000000/20261129/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature=524ea614926a9e201df6e4977e0476acba687b78c1b388a4d623aaaa01d59415"),
            ("x-amz-date", "20261129T100955Z"),
            ("x-amz-security-token", "TOKEN123"),
            (
                "x-amz-content-sha256",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        (sig, headers)
    }

    #[test]
    fn sigv4_check_accepts_aws_signatures_and_refuses_any_change() {
        let target = "/b/releases/a/s.tar.gz?versionId=v%2B1";
        let (sig, headers) = signed_request();
        assert!(sigv4_valid(&sig, "GET", target, &headers));
        assert!(!sigv4_valid(
            &sig,
            "GET",
            "/b/releases/a/s.tar.gz?versionId=v2",
            &headers
        ));
        assert!(!sigv4_valid(&sig, "PUT", target, &headers));
        let wrong_secret = SigV4 {
            secret_access_key: "secretsecretsecreT".into(),
            ..sig.clone()
        };
        assert!(!sigv4_valid(&wrong_secret, "GET", target, &headers));
        let wrong_region = SigV4 {
            region: "eu-west-1".into(),
            ..sig.clone()
        };
        assert!(!sigv4_valid(&wrong_region, "GET", target, &headers));
        for (name, value) in [
            ("x-amz-security-token", "TOKEN124"),
            ("host", "127.0.0.1:18778"),
            ("x-amz-date", "20261129T100956Z"),
        ] {
            let mut changed = headers.clone();
            changed.iter_mut().find(|(n, _)| n == name).unwrap().1 = value.into();
            assert!(!sigv4_valid(&sig, "GET", target, &changed), "{name}");
        }
        let unsigned: Vec<_> = headers
            .iter()
            .filter(|(n, _)| n != "authorization")
            .cloned()
            .collect();
        assert!(!sigv4_valid(&sig, "GET", target, &unsigned));
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
