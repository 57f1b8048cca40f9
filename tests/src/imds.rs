//! The instance metadata service of a simulated host: what EC2 serves at
//! `169.254.169.254:80` inside every instance, standing in for it inside each
//! [`crate::simhost::SimHost`]'s own network namespace. It speaks IMDSv2 as EC2 does: a
//! session token from `PUT /latest/api/token` (with a TTL header of 1-21600 seconds, 400
//! without), every `GET` without a valid token is 401; `GET
//! /latest/meta-data/iam/security-credentials/` names the role (404 when the instance has no
//! instance profile) and `…/<role>` answers the role's temporary credentials in EC2's JSON
//! shape. The credentials are fake ([`FAKE_ROLE`]); moto does not check signatures, the
//! host-script suite's bundle server does (`crate::http::FileServer::require_sigv4`).

use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::http::{read_request, SigV4};

/// The role of every simulated host unless a test takes it away.
pub const FAKE_ROLE: FakeRole = FakeRole {
    name: "dropship-host-sim",
    access_key_id: "ASIAFAKEDROPSHIP0SIM",
    secret_access_key: "fakeSecret/dropship+sim=neverPrinted0123456789",
    session_token: "FakeSessionToken/dropship+sim=neverPrintedIQoJb3JpZ2luX2VjEFAKE",
};

/// A role's name and temporary credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeRole {
    pub name: &'static str,
    pub access_key_id: &'static str,
    pub secret_access_key: &'static str,
    pub session_token: &'static str,
}

impl FakeRole {
    /// What a request signed with this role for `region` carries.
    pub fn sigv4(&self, region: &str) -> SigV4 {
        SigV4 {
            access_key_id: self.access_key_id.to_owned(),
            secret_access_key: self.secret_access_key.to_owned(),
            region: region.to_owned(),
            session_token: self.session_token.to_owned(),
        }
    }
}

/// The session token this stand-in issues (one per service; EC2's differ per request, which
/// the script does not depend on).
pub const IMDS_SESSION_TOKEN: &str = "AQAEAFakeImdsSessionToken-dropship-sim==";

/// A running stand-in; stops when closed (the simulated host closes it when it stops).
pub struct Imds {
    role: Arc<Mutex<Option<FakeRole>>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    listener: Arc<TcpListener>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Imds {
    /// Serves on `listener` (bound at 169.254.169.254:80 inside a host) with [`FAKE_ROLE`].
    pub fn serve(listener: TcpListener) -> Self {
        let listener = Arc::new(listener);
        let role = Arc::new(Mutex::new(Some(FAKE_ROLE)));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, r, n, s) = (
            listener.clone(),
            role.clone(),
            requests.clone(),
            stop.clone(),
        );
        let accept = thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                n.fetch_add(1, Ordering::SeqCst);
                let role = *r.lock().unwrap();
                thread::spawn(move || {
                    let _ = answer(conn, role);
                });
            }
        });
        Self {
            role,
            requests,
            stop,
            listener,
            accept: Some(accept),
        }
    }

    /// The instance's role from now on; `None`: an instance without an instance profile.
    pub fn set_role(&self, role: Option<FakeRole>) {
        *self.role.lock().unwrap() = role;
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// Stops accepting; idempotent.
    pub fn close(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: shutdown on a socket fd we own wakes the blocked accept(); failure is harmless.
        unsafe {
            libc::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&*self.listener),
                libc::SHUT_RDWR,
            )
        };
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Imds {
    fn drop(&mut self) {
        self.close();
    }
}

/// One request, answered as EC2's IMDSv2 answers it.
fn answer(mut conn: TcpStream, role: Option<FakeRole>) -> std::io::Result<()> {
    let (request_line, headers) = read_request(&conn, Duration::from_secs(5))?;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    const CREDENTIALS: &str = "/latest/meta-data/iam/security-credentials/";
    let (status, body) = match method {
        "PUT" if path == "/latest/api/token" => {
            match header("x-aws-ec2-metadata-token-ttl-seconds").and_then(|t| t.parse::<u32>().ok())
            {
                Some(ttl) if (1..=21_600).contains(&ttl) => (200, IMDS_SESSION_TOKEN.to_owned()),
                _ => (400, String::new()),
            }
        }
        "GET" if header("x-aws-ec2-metadata-token").as_deref() != Some(IMDS_SESSION_TOKEN) => {
            (401, String::new())
        }
        "GET" => match (path.strip_prefix(CREDENTIALS), role) {
            (Some(""), Some(r)) => (200, r.name.to_owned()),
            (Some(name), Some(r)) if name == r.name => (200, credentials_json(&r)),
            _ => (404, String::new()),
        },
        _ => (405, String::new()),
    };
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    conn.flush()?;
    conn.shutdown(Shutdown::Both)
}

/// EC2's answer for a role's credentials, spacing included (`"Key" : "value"`).
fn credentials_json(r: &FakeRole) -> String {
    format!(
        "{{\n  \"Code\" : \"Success\",\n  \"LastUpdated\" : \"2026-11-29T09:00:00Z\",\n  \"Type\" : \"AWS-HMAC\",\n  \"AccessKeyId\" : \"{}\",\n  \"SecretAccessKey\" : \"{}\",\n  \"Token\" : \"{}\",\n  \"Expiration\" : \"2026-11-29T15:00:00Z\"\n}}",
        r.access_key_id, r.secret_access_key, r.session_token
    )
}
