//! A local Lambda Runtime API on loopback that runs a real Lambda binary (or any custom
//! runtime, e.g. a Python bootstrap) as AWS would: the process is started with
//! `AWS_LAMBDA_RUNTIME_API` pointing here, polls `GET /2018-06-01/runtime/invocation/next`,
//! and answers with `POST …/invocation/{id}/response` or `…/error` (or `/init/error` when it
//! cannot start). Used by the Lambda suite, the local pipeline and the benchmark.
//!
//! Only what a runtime client needs is implemented: HTTP/1.1 with keep-alive, bodies by
//! `Content-Length` or chunked, one invocation in flight at a time.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// How long one invocation may take before [`LambdaProcess::invoke`] gives up.
pub const INVOKE_TIMEOUT: Duration = Duration::from_secs(120);
/// Deadline handed to the function for each invocation (like a 5-minute function timeout).
pub const FUNCTION_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Default)]
struct Inner {
    queue: VecDeque<(String, Value)>,
    results: HashMap<String, Result<Value, Value>>,
    init_error: Option<Value>,
    first_poll: Option<Instant>,
    shutdown: bool,
}

#[derive(Default)]
struct Shared {
    inner: Mutex<Inner>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One running function process and the Runtime API it talks to.
pub struct LambdaProcess {
    child: Child,
    shared: Arc<Shared>,
    addr: SocketAddr,
    started: Instant,
    next_id: AtomicU64,
}

impl LambdaProcess {
    /// Start the workspace's built `deployer-lambda` with `env` (plus the variables every
    /// Lambda runtime sets); its stdout/stderr (the JSON logs) go to this process's stderr.
    pub fn start(env: &[(&str, &str)]) -> Self {
        Self::start_command(Command::new(crate::bins::binary("deployer-lambda")), env)
    }

    /// Start any custom runtime `command` (for example `python3 bootstrap.py`) the same way.
    pub fn start_command(mut command: Command, env: &[(&str, &str)]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the Runtime API on loopback");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared::default());
        {
            let shared = shared.clone();
            thread::spawn(move || serve(listener, shared));
        }
        command
            .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "dropship-deployer")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/dropship-deployer")
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
            .env("AWS_EXECUTION_ENV", "AWS_Lambda_provided.al2023")
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            command.env(k, v);
        }
        let started = Instant::now();
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting the function process {command:?}: {e}"));
        Self {
            child,
            shared,
            addr,
            started,
            next_id: AtomicU64::new(1),
        }
    }

    /// The Runtime API address (`host:port`).
    pub fn runtime_api(&self) -> String {
        self.addr.to_string()
    }

    /// The function's process id (for RSS measurements).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident set size of the function process so far, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Time from process start to its first poll for an invocation (the init phase), waiting
    /// up to `timeout`; `Err` carries the init error or exit status when it never got there.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration, Value> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.shared.lock();
        loop {
            if let Some(t) = inner.first_poll {
                return Ok(t - self.started);
            }
            if let Some(e) = inner.init_error.clone() {
                return Err(e);
            }
            drop(inner);
            if let Ok(Some(status)) = self.child.try_wait() {
                let init = self.shared.lock().init_error.clone();
                return Err(init.unwrap_or_else(|| {
                    serde_json::json!({"errorType": "Runtime.ExitError", "errorMessage": format!("function exited during init: {status}")})
                }));
            }
            if Instant::now() >= deadline {
                return Err(
                    serde_json::json!({"errorType": "Timeout", "errorMessage": "function did not poll for an invocation in time"}),
                );
            }
            inner = self.shared.lock();
            inner = self
                .shared
                .changed
                .wait_timeout(inner, Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The init error the function reported (`/init/error`), if any.
    pub fn init_error(&self) -> Option<Value> {
        self.shared.lock().init_error.clone()
    }

    /// Invoke the function once with `payload`: `Ok(response)` or `Err(error document)`
    /// (`errorType`, `errorMessage`), as Lambda would record it.
    pub fn invoke(&mut self, payload: &Value) -> Result<Value, Value> {
        let id = format!(
            "{:08x}-0000-4000-8000-{:012x}",
            std::process::id(),
            self.next_id.fetch_add(1, Ordering::Relaxed)
        );
        {
            let mut inner = self.shared.lock();
            inner.queue.push_back((id.clone(), payload.clone()));
            self.shared.changed.notify_all();
        }
        let deadline = Instant::now() + INVOKE_TIMEOUT;
        loop {
            {
                let mut inner = self.shared.lock();
                if let Some(r) = inner.results.remove(&id) {
                    return r;
                }
                inner = self
                    .shared
                    .changed
                    .wait_timeout(inner, Duration::from_millis(50))
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                if let Some(r) = inner.results.remove(&id) {
                    return r;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(
                    serde_json::json!({"errorType": "Runtime.ExitError", "errorMessage": format!("function exited: {status}")}),
                );
            }
            if Instant::now() >= deadline {
                return Err(
                    serde_json::json!({"errorType": "Timeout", "errorMessage": format!("no answer within {INVOKE_TIMEOUT:?}")}),
                );
            }
        }
    }

    /// Wait for the process to exit (e.g. after a failed init), up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for LambdaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.shared.lock().shutdown = true;
        self.shared.changed.notify_all();
        // Unblock the accept loop.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.lock().shutdown {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = shared.clone();
        thread::spawn(move || {
            let _ = connection(stream, &shared);
        });
    }
}

struct HttpRequest {
    method: String,
    path: String,
    close: bool,
    body: Vec<u8>,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<HttpRequest>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let mut length = 0usize;
    let mut chunked = false;
    let mut close = false;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((name, value)) = h.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    }
    Ok(Some(HttpRequest {
        method,
        path,
        close,
        body,
    }))
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

fn parse_body(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

fn connection(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    const PREFIX: &str = "/2018-06-01/runtime/";
    while let Some(req) = read_request(&mut reader)? {
        let route = req
            .path
            .strip_prefix(PREFIX)
            .unwrap_or(&req.path)
            .to_owned();
        match (req.method.as_str(), route.as_str()) {
            ("GET", "invocation/next") => {
                let mut inner = shared.lock();
                inner.first_poll.get_or_insert_with(Instant::now);
                shared.changed.notify_all();
                let (id, payload) = loop {
                    if inner.shutdown {
                        return Ok(());
                    }
                    if let Some(next) = inner.queue.pop_front() {
                        break next;
                    }
                    inner = shared
                        .changed
                        .wait_timeout(inner, Duration::from_millis(200))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                };
                drop(inner);
                let deadline = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    + FUNCTION_TIMEOUT;
                let body = serde_json::to_vec(&payload).unwrap_or_default();
                respond(
                    &mut writer,
                    "200 OK",
                    &[
                        ("Lambda-Runtime-Aws-Request-Id", id),
                        (
                            "Lambda-Runtime-Deadline-Ms",
                            deadline.as_millis().to_string(),
                        ),
                        (
                            "Lambda-Runtime-Invoked-Function-Arn",
                            "arn:aws:lambda:us-east-1:123456789012:function:dropship-deployer"
                                .into(),
                        ),
                        (
                            "Lambda-Runtime-Trace-Id",
                            "Root=1-00000000-000000000000000000000000;Sampled=0".into(),
                        ),
                    ],
                    &body,
                )?;
            }
            ("POST", "init/error") => {
                shared.lock().init_error = Some(parse_body(&req.body));
                shared.changed.notify_all();
                respond(&mut writer, "202 Accepted", &[], b"{\"status\":\"OK\"}")?;
            }
            ("POST", r) if r.starts_with("invocation/") => {
                let rest = &r["invocation/".len()..];
                let (id, kind) = rest.split_once('/').unwrap_or((rest, ""));
                let value = parse_body(&req.body);
                let result = match kind {
                    "response" => Ok(value),
                    "error" => Err(value),
                    _ => {
                        respond(&mut writer, "404 Not Found", &[], b"{}")?;
                        continue;
                    }
                };
                shared.lock().results.insert(id.to_owned(), result);
                shared.changed.notify_all();
                respond(&mut writer, "202 Accepted", &[], b"{\"status\":\"OK\"}")?;
            }
            _ => respond(&mut writer, "404 Not Found", &[], b"{}")?,
        }
        if req.close {
            return Ok(());
        }
    }
    Ok(())
}

/// Whether `path` is an executable file (used to explain a missing build clearly).
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
