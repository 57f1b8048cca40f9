//! A [`ManagedInstance`] that runs scripts with a plain `bash -c` on this machine, in its own
//! temporary directory and its own process group: the test double the local SSM endpoint's
//! own suite uses. It stops a script the way the agent does on Linux: SIGKILL to the whole
//! process group at once, no grace period (amazon-ssm-agent `executers_unix.go`:
//! `Setpgid: true`, then `syscall.Kill(-pid, syscall.SIGKILL)`). The simulated hosts plug in
//! through the same trait.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{ManagedInstance, ScriptRun, StopSignal};

/// A local "instance": an id, tags, an agent that can go offline, and a working directory.
pub struct BashInstance {
    id: String,
    tags: Vec<(String, String)>,
    online: AtomicBool,
    dir: tempfile::TempDir,
    region: String,
    /// Process group of every run, in order (the group id is the script's pid).
    groups: Mutex<Vec<u32>>,
    /// Run scripts as on a host without a container engine, in a private mount namespace
    /// with empty `/opt` and `/tmp` (see [`BashInstance::without_engine`]).
    sealed: bool,
}

impl BashInstance {
    /// An online instance with `tags`, its scripts running in a fresh temporary directory.
    pub fn new(id: &str, tags: &[(&str, &str)]) -> Arc<Self> {
        Arc::new(Self {
            id: id.to_string(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            online: AtomicBool::new(true),
            dir: tempfile::tempdir().expect("temporary directory for a local instance"),
            region: std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
            groups: Mutex::new(Vec::new()),
            sealed: false,
        })
    }

    /// An online instance whose scripts run as on a host without a container engine: in a
    /// private mount namespace whose `/opt` and `/tmp` are fresh tmpfs (nothing a script
    /// writes there reaches this machine), with `PATH` only and no Docker engine or Compose
    /// plugin reachable. The deploy script really runs there and stops at its preflight
    /// (exit 4): what the Lambda suite's instances are, since its subject is what the Lambda
    /// sends, not what a host does with it (the simulated hosts are for that).
    pub fn without_engine(id: &str, tags: &[(&str, &str)]) -> Arc<Self> {
        let mut instance = Arc::into_inner(Self::new(id, tags)).expect("a fresh instance");
        instance.sealed = true;
        Arc::new(instance)
    }

    /// Connects or disconnects the agent.
    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::SeqCst);
    }

    /// The directory scripts run in (their `$PWD`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process group of each run so far.
    pub fn process_groups(&self) -> Vec<u32> {
        self.groups.lock().unwrap().clone()
    }
}

/// Live (not zombie) processes whose process group is `pgid`, from `/proc`.
pub fn processes_in_group(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // Fields after "(comm) ": state ppid pgrp …
                    let rest = s.rsplit_once(") ")?.1.to_string();
                    let mut f = rest.split_whitespace();
                    let state = f.next()?;
                    let _ppid = f.next()?;
                    let pgrp: u32 = f.next()?.parse().ok()?;
                    Some(state != "Z" && pgrp == pgid)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Runs `cmd` the way amazon-ssm-agent runs a command's script on Linux: as the leader of a
/// new process group with stdout and stderr piped; the run ends when the script has exited
/// and its output pipes are closed (a background job still holding them keeps it running), or
/// when `stop` fires, which is SIGKILL to the whole group at once (exit code 137).
/// `spawned` learns the process group id. Used by [`BashInstance`] and the simulated hosts.
pub fn run_as_agent(mut cmd: Command, stop: &StopSignal, spawned: impl FnOnce(u32)) -> ScriptRun {
    use std::os::unix::process::CommandExt;
    let spawned_child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn();
    let mut child = match spawned_child {
        Ok(c) => c,
        Err(e) => {
            return ScriptRun {
                exit_code: 1,
                stdout: String::new(),
                stderr: format!("the script could not start: {e}"),
                stopped: None,
            }
        }
    };
    let pgid = child.id();
    spawned(pgid);
    let (out, out_reader) = drain(child.stdout.take().expect("piped stdout"));
    let (err, err_reader) = drain(child.stderr.take().expect("piped stderr"));
    let mut exit = None;
    let stopped = loop {
        if exit.is_none() {
            exit = child.try_wait().expect("wait for the script");
        }
        if exit.is_some() && out_reader.is_finished() && err_reader.is_finished() {
            break None;
        }
        if let Some(reason) = stop.wait(Duration::from_millis(10)) {
            kill_group(pgid);
            break Some(reason);
        }
    };
    if exit.is_none() {
        exit = child.wait().ok();
    }
    let _ = out_reader.join();
    let _ = err_reader.join();
    let text = |b: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&b.lock().unwrap()).into_owned();
    let exit_code = match stopped {
        Some(_) => super::model::STOPPED_EXIT_CODE,
        None => exit
            .and_then(|s| {
                use std::os::unix::process::ExitStatusExt;
                s.code().or_else(|| s.signal().map(|sig| 128 + sig))
            })
            .unwrap_or(1),
    };
    ScriptRun {
        exit_code,
        stdout: text(&out),
        stderr: text(&err),
        stopped,
    }
}

/// Reads a pipe to its end on a thread; the text is shared so a stopped run keeps what the
/// script wrote until then.
fn drain(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    let handle = std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    (buf, handle)
}

/// SIGKILL to every process of the group, as the agent does.
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

impl ManagedInstance for BashInstance {
    fn instance_id(&self) -> &str {
        &self.id
    }

    fn tags(&self) -> Vec<(String, String)> {
        self.tags.clone()
    }

    fn online(&self) -> bool {
        self.online.load(Ordering::SeqCst)
    }

    fn run_shell_script(&self, _command_id: &str, script: &str, stop: &StopSignal) -> ScriptRun {
        let mut cmd = if self.sealed {
            let mut c = Command::new("unshare");
            c.args([
                "--mount",
                "--propagation",
                "private",
                "--fork",
                "--",
                "sh",
                "-c",
            ])
            .arg(
                "mount -t tmpfs -o size=64m tmpfs /opt && mount -t tmpfs -o size=64m tmpfs /tmp \
                     && exec bash -c \"$1\"",
            )
            .arg("sh")
            .arg(script)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            );
            c
        } else {
            let mut c = Command::new("bash");
            c.arg("-c").arg(script);
            c
        };
        cmd.current_dir(self.dir())
            .env("AWS_SSM_INSTANCE_ID", &self.id)
            .env("AWS_SSM_REGION_NAME", &self.region);
        run_as_agent(cmd, stop, |pgid| self.groups.lock().unwrap().push(pgid))
    }
}
