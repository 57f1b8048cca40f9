//! A pass-through S3 endpoint in front of moto that answers `GetBucketNotificationConfiguration`
//! the way S3 does. moto stores an `EventBridgeConfiguration` and sends the bucket's events to
//! EventBridge, but its answer to the GET never contains the element (docs/testing.md, moto
//! differences), so a client checking the setting — `dropship doctor` — would see it off.
//!
//! Every request goes to moto unchanged; the endpoint only watches the
//! `PutBucketNotificationConfiguration` requests that pass through it and, in the answer to a
//! later GET of the same bucket, adds `<EventBridgeConfiguration/>` when the last PUT had one.
//! An empty configuration is answered with an empty element, as S3 does (moto sends no
//! body). A bucket whose configuration was never put through it is otherwise answered as
//! moto answers.
//! HTTP/1.1, one request per connection (`Connection: close`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// S3's answer for a bucket without notifications.
const EMPTY_CONFIGURATION: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<NotificationConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"></NotificationConfiguration>";

/// The endpoint; stops when dropped.
pub struct S3NotificationEndpoint {
    port: u16,
    stop: Arc<AtomicBool>,
    server: Option<thread::JoinHandle<()>>,
}

/// One HTTP message: the head (start line and headers, without the blank line) and body.
struct Message {
    head: String,
    body: Vec<u8>,
}

impl Message {
    /// Reads one message; `response_of` is the request's method when reading a response
    /// (a response without a length runs to the end of the connection; one to HEAD has no
    /// body).
    fn read(stream: &mut TcpStream, response_of: Option<&str>) -> std::io::Result<Message> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let split = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..split]).into_owned();
        let mut body = buf[split + 4..].to_vec();
        if response_of == Some("HEAD") {
            return Ok(Message { head, body });
        }
        let length = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok());
        match length {
            Some(len) => {
                while body.len() < len {
                    let n = stream.read(&mut chunk)?;
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            }
            None if response_of.is_some() => {
                stream.read_to_end(&mut body)?;
            }
            None => {}
        }
        Ok(Message { head, body })
    }

    /// The head with `Connection: close` and the body's length, then the body.
    fn bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        for (i, line) in self.head.split("\r\n").enumerate() {
            let name = line
                .split(':')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if i > 0 && (name == "connection" || name == "content-length") {
                continue;
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        let keep_length = header(&self.head, "transfer-encoding").is_some()
            || self.head.starts_with("HTTP/") && self.body.is_empty();
        if keep_length {
            if let Some(len) = header(&self.head, "content-length") {
                out.push_str(&format!("Content-Length: {len}\r\n"));
            }
        } else {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("Connection: close\r\n\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// `(method, bucket)` of a path-style `?notification` request.
fn notification_request(head: &str) -> Option<(String, String)> {
    let mut parts = head.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    let (path, query) = target.split_once('?')?;
    let is_notification = query
        .split('&')
        .any(|p| p == "notification" || p.starts_with("notification="));
    let bucket = path.trim_matches('/');
    (is_notification && !bucket.is_empty() && !bucket.contains('/'))
        .then(|| (method, bucket.to_string()))
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    eventbridge: &Mutex<HashMap<String, bool>>,
) -> std::io::Result<()> {
    let request = Message::read(&mut client, None)?;
    let method = request
        .head
        .split(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut moto = TcpStream::connect(upstream)?;
    moto.write_all(&request.bytes())?;
    let mut response = Message::read(&mut moto, Some(&method))?;
    let ok = response.head.split(' ').nth(1) == Some("200");
    if let (Some((method, bucket)), true) = (notification_request(&request.head), ok) {
        let body = String::from_utf8_lossy(&request.body);
        match method.as_str() {
            "PUT" => {
                let on = body.contains("<EventBridgeConfiguration");
                eventbridge.lock().unwrap().insert(bucket, on);
            }
            "GET" => {
                let mut answer = String::from_utf8_lossy(&response.body).into_owned();
                if answer.trim().is_empty() {
                    // moto answers an empty configuration with an empty body; S3 with an
                    // empty element.
                    answer = EMPTY_CONFIGURATION.to_string();
                }
                let put_on = eventbridge.lock().unwrap().get(&bucket).copied() == Some(true);
                if put_on && !answer.contains("EventBridgeConfiguration") {
                    answer = answer.replace(
                        "</NotificationConfiguration>",
                        "<EventBridgeConfiguration></EventBridgeConfiguration></NotificationConfiguration>",
                    );
                }
                response.body = answer.into_bytes();
            }
            _ => {}
        }
    }
    client.write_all(&response.bytes())
}

impl S3NotificationEndpoint {
    /// Starts it in front of moto (`AWS_ENDPOINT_URL`).
    pub fn start() -> Self {
        let upstream = crate::moto::endpoint();
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(HashMap::new()));
        let server = {
            let stop = stop.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (upstream, state) = (upstream.clone(), state.clone());
                    thread::spawn(move || {
                        if let Err(e) = serve(conn, &upstream, &state) {
                            eprintln!("S3 notification endpoint: {e}");
                        }
                    });
                }
            })
        };
        Self {
            port,
            stop,
            server: Some(server),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The variable that sends a child process's S3 calls here.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        vec![("AWS_ENDPOINT_URL_S3".to_string(), self.endpoint_url())]
    }

    /// An S3 client (path style) for this endpoint.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        let sdk = crate::moto::sdk_config().await;
        let conf = aws_sdk_s3::config::Builder::from(&sdk)
            .endpoint_url(self.endpoint_url())
            .force_path_style(true)
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }
}

impl Drop for S3NotificationEndpoint {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_requests_are_recognised_by_path_and_query() {
        assert_eq!(
            notification_request("GET /b?notification HTTP/1.1"),
            Some(("GET".into(), "b".into()))
        );
        assert_eq!(
            notification_request("PUT /b?notification=&x-id=Put HTTP/1.1"),
            Some(("PUT".into(), "b".into()))
        );
        assert_eq!(
            notification_request("GET /b/?notification HTTP/1.1"),
            Some(("GET".into(), "b".into()))
        );
        assert_eq!(notification_request("GET /b?versioning HTTP/1.1"), None);
        assert_eq!(
            notification_request("GET /b/key?notification HTTP/1.1"),
            None
        );
    }
}
