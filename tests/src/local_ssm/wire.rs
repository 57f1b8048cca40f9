//! SSM's wire protocol, AWS JSON 1.1: `POST /` with `X-Amz-Target: AmazonSSM.<Operation>`
//! and a JSON body; answers `application/x-amz-json-1.1`, errors as
//! `{"__type": "...", "message": "..."}` with `X-Amzn-ErrorType`. Plain `std::net`, HTTP/1.1
//! with keep-alive (the SDK pools connections), one thread per connection. Signatures are
//! not checked.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use super::api::{self, ApiError};
use super::{model, Shared};

/// Accepts connections until the endpoint shuts down.
pub fn serve(listener: TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("local-ssm-http".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if shared.shutdown.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    let shared = shared.clone();
                    let _ = std::thread::Builder::new()
                        .name("local-ssm-conn".into())
                        .spawn(move || {
                            let _ = connection(conn, &shared);
                        });
                }
            }
        })
        .expect("spawn the local SSM server thread")
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    target: Option<String>,
    close: bool,
    body: Vec<u8>,
}

fn connection(conn: TcpStream, shared: &Arc<Shared>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut writer = conn;
    while let Some(request) = read_request(&mut reader)? {
        let (status, body, error_type) = respond(shared, &request);
        let reason = if status == 200 { "OK" } else { "Bad Request" };
        let mut head = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nx-amzn-RequestId: {}\r\n",
            body.len(),
            model::uuid()
        );
        if let Some(t) = error_type {
            head.push_str(&format!("X-Amzn-ErrorType: {t}\r\n"));
        }
        if request.close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        writer.write_all(head.as_bytes())?;
        writer.write_all(&body)?;
        writer.flush()?;
        if request.close {
            break;
        }
    }
    Ok(())
}

/// Status, body and error type for one request.
fn respond(shared: &Arc<Shared>, request: &Request) -> (u16, Vec<u8>, Option<String>) {
    let result = route(shared, request);
    match result {
        Ok(v) => (200, v.to_string().into_bytes(), None),
        Err(ApiError {
            status,
            code,
            message,
        }) => {
            let body = json!({ "__type": code, "message": message });
            let short = code.rsplit('#').next().unwrap_or(&code).to_string();
            (status, body.to_string().into_bytes(), Some(short))
        }
    }
}

fn route(shared: &Arc<Shared>, request: &Request) -> Result<Value, ApiError> {
    let unknown = |what: String| ApiError {
        status: 400,
        code: "com.amazon.coral.service#UnknownOperationException".into(),
        message: what,
    };
    if request.method != "POST" || request.path != "/" {
        return Err(unknown(format!(
            "{} {} is not an SSM request (POST / with X-Amz-Target: AmazonSSM.<Operation>)",
            request.method, request.path
        )));
    }
    let operation = request
        .target
        .as_deref()
        .and_then(|t| t.strip_prefix("AmazonSSM."))
        .ok_or_else(|| {
            unknown(format!(
                "X-Amz-Target {:?} does not name an SSM operation (AmazonSSM.<Operation>)",
                request.target
            ))
        })?;
    let body: Value = if request.body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&request.body).map_err(|e| ApiError {
            status: 400,
            code: "SerializationException".into(),
            message: format!("the request body is not JSON: {e}"),
        })?
    };
    api::handle(shared, operation, &body)
}

/// Reads one request; `None` at a clean end of the connection.
fn read_request(reader: &mut impl BufRead) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let http10 = parts.next() == Some("HTTP/1.0");
    let (mut length, mut chunked, mut target, mut close) = (0usize, false, None, http10);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        let Some((name, value)) = header.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => length = value.parse().unwrap_or(0),
            "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
            "x-amz-target" => target = Some(value.to_string()),
            "connection" => close = value.eq_ignore_ascii_case("close"),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    }
    Ok(Some(Request {
        method,
        path,
        target,
        close,
        body,
    }))
}
