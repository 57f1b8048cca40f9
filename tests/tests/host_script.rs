//! The host script suite: the real `scripts/deploy-on-host.sh` under bash, in a sandbox
//! directory standing in for the host, with `tests/shim/docker` first on PATH (compose
//! `config` is the real Docker Compose v2 binary; `up` starts a real HTTP server serving the
//! release, so `/health` comes from the release's own files). Bundles are built by the real
//! `bundle-and-upload --output` and served over real HTTP.

use std::fs;
use std::path::Path;
use std::time::Duration;

use dropship_contract::host::{ExitCode, HostResult, HostVar};
use dropship_tests::host::{
    compose_yaml, kill_group, make_bundle, wait_until, AppFiles, Bundle, Run, Sandbox, Vars,
};
use dropship_tests::http::{free_port, get, FileServer, Reply};

/// One app on one sandbox host, with its bundle server and published port.
struct World {
    host: Sandbox,
    server: FileServer,
    port: u16,
}

impl World {
    fn new(app: &str) -> Self {
        Self {
            host: Sandbox::new(app),
            server: FileServer::start(),
            port: free_port(),
        }
    }

    fn bundle(&self, files: AppFiles) -> Bundle {
        make_bundle(&self.host.app, &files)
    }

    fn healthy(&self, version: &str) -> Bundle {
        self.bundle(AppFiles::healthy(self.port, version))
    }

    /// Serves `bundle` at `/<name>.tar.gz` and returns deploy inputs for it.
    fn vars(&self, bundle: &Bundle, name: &str, version_id: &str, sequencer: &str) -> Vars {
        let path = format!("/{name}.tar.gz");
        self.server.set(&path, Reply::Body(bundle.bytes.clone()));
        self.host.deploy_vars(
            bundle,
            &self.server.url(&path),
            version_id,
            sequencer,
            self.port,
        )
    }

    fn deploy(&self, bundle: &Bundle, version_id: &str, sequencer: &str) -> Run {
        let vars = self.vars(bundle, version_id, version_id, sequencer);
        self.host.run(&vars)
    }

    /// What the running "container" answers for `path`.
    fn get(&self, path: &str) -> Option<(u16, String)> {
        get(&format!("http://127.0.0.1:{}{path}", self.port))
    }

    fn serving_version(&self) -> Option<String> {
        match self.get("/version.txt") {
            Some((200, body)) => Some(body.trim().to_string()),
            _ => None,
        }
    }

    /// Makes the shim's next `compose up` pause (a slow container start) until the returned
    /// file is removed; forgets earlier `up` calls.
    fn hold_compose_up(&self) -> std::path::PathBuf {
        let _ = fs::remove_file(self.host.shim_state().join("up-started"));
        let hold = self.host.shim_state().join("hold-up");
        fs::write(&hold, "").unwrap();
        hold
    }

    /// Waits until a run is inside `compose up` (the shim marks it).
    fn wait_compose_up_started(&self) {
        let marker = self.host.shim_state().join("up-started");
        assert!(
            wait_until(Duration::from_secs(120), || marker.exists()),
            "no run reached compose up"
        );
    }

    fn root(&self) -> std::path::PathBuf {
        self.host.app_root()
    }
}

fn assert_code(run: &Run, code: i32, outcome: &str) {
    assert_eq!(
        (run.code, run.outcome()),
        (code, outcome),
        "unexpected result; output:\n{}",
        run.output
    );
    assert_eq!(
        run.result["exit_code"], code,
        "exit_code in the result line"
    );
    // The contract's reader sees the same thing the Lambda and CLI will.
    let parsed = HostResult::from_output(&run.output).expect("contract parses the result line");
    assert_eq!(parsed.exit_code, code);
    assert!(
        ExitCode::from_code(code).is_some(),
        "{code} is a contract exit code"
    );
}

/// Every log line before the result carries a UTC timestamp and a step name.
fn assert_logged_steps(run: &Run, steps: &[&str]) {
    for step in steps {
        assert!(
            run.output.lines().any(|l| {
                l.len() > 22
                    && l.as_bytes()[4] == b'-'
                    && l.as_bytes()[19] == b'Z'
                    && l[21..].starts_with(&format!("[{step}]"))
            }),
            "no timestamped [{step}] line in:\n{}",
            run.output
        );
    }
}

#[test]
fn first_deploy_unpacks_links_switches_and_serves() {
    let w = World::new("first");
    let b = w.healthy("v1");
    let run = w.deploy(&b, "ver-1", "00A1");
    assert_code(&run, 0, "deployed");
    assert_logged_steps(
        &run,
        &[
            "lock",
            "idempotency",
            "preflight",
            "download",
            "verify",
            "unpack",
            "shared",
            "config",
            "switch",
            "compose",
            "health",
            "result",
        ],
    );
    let rel = w.host.current().expect("current link");
    assert_eq!(run.field("release"), rel);
    assert_eq!(run.field("previous"), "");
    assert_eq!(run.field("version_id"), "ver-1");
    assert_eq!(run.field("commit"), b.commit);
    assert!(rel.ends_with(&b.commit[..7]), "release name {rel}");
    // What runs: the shim's server serves exactly this release directory.
    assert_eq!(w.get("/health").map(|r| r.0), Some(200));
    assert_eq!(w.serving_version().as_deref(), Some("v1"));
    let running = w.host.running();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].3, w.root().join("releases").join(&rel));
    // What is on disk.
    let dir = w.root().join("releases").join(&rel);
    assert!(dir.join(".dropship/manifest.json").is_file());
    let release: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join(".dropship/release.json")).unwrap())
            .unwrap();
    assert_eq!(release["version_id"], "ver-1");
    assert_eq!(release["sha256"], b.sha256.as_str());
    assert_eq!(
        fs::read_link(dir.join(".env")).unwrap(),
        Path::new("../../shared/.env")
    );
    assert_eq!(
        fs::read_link(dir.join("data")).unwrap(),
        Path::new("../../shared/data")
    );
    assert!(w.root().join("shared/data").is_dir());
    assert!(w.root().join("shared/.env").is_file());
    let st = w.host.state();
    assert_eq!(st["current"], rel.as_str());
    assert_eq!(st["last_good"], rel.as_str());
    assert_eq!(st["previous"], "");
    assert_eq!(st["version_id"], "ver-1");
    assert_eq!(st["sequencer"], "00A1");
    assert_eq!(st["sha256"], b.sha256.as_str());
    assert_eq!(st["commit"], b.commit.as_str());
    let audit = w.host.audit();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["outcome"], "deployed");
    assert!(w.host.leftovers().is_empty(), "{:?}", w.host.leftovers());
    assert_eq!(w.host.releases(), vec![rel]);
}

/// Release names in the order `Host::releases` lists them: by name. Two deploys within
/// one second share the time part of their names and then sort by commit, not by time.
fn by_name(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

#[test]
fn second_deploy_switches_current_and_keeps_previous() {
    let w = World::new("second");
    let r1 = w.deploy(&w.healthy("v1"), "ver-1", "0A");
    assert_code(&r1, 0, "deployed");
    let first = w.host.current().unwrap();
    let pid1 = w.host.running()[0].1;
    let r2 = w.deploy(&w.healthy("v2"), "ver-2", "0B");
    assert_code(&r2, 0, "deployed");
    let second = w.host.current().unwrap();
    assert_ne!(first, second);
    assert_eq!(r2.field("previous"), first);
    assert_eq!(w.serving_version().as_deref(), Some("v2"));
    let running = w.host.running();
    assert_eq!(running.len(), 1, "the old container was replaced");
    assert_ne!(running[0].1, pid1);
    assert_eq!(
        w.host.releases(),
        by_name(vec![first.clone(), second.clone()])
    );
    let st = w.host.state();
    assert_eq!(st["current"], second.as_str());
    assert_eq!(st["previous"], first.as_str());
    assert_eq!(st["sequencer"], "0B");
    assert_eq!(w.host.audit().len(), 2);
}

#[test]
fn same_version_again_is_a_noop() {
    let w = World::new("noop");
    let b = w.healthy("v1");
    assert_code(&w.deploy(&b, "ver-1", "0A"), 0, "deployed");
    let rel = w.host.current().unwrap();
    let pid = w.host.running()[0].1;
    let state_before = fs::read_to_string(w.root().join("state.json")).unwrap();
    let again = w.deploy(&b, "ver-1", "0A");
    assert_code(&again, 0, "noop");
    assert_eq!(again.field("release"), rel);
    assert_eq!(w.host.current().unwrap(), rel);
    assert_eq!(w.host.releases(), vec![rel]);
    assert_eq!(w.host.running()[0].1, pid, "nothing restarted");
    assert_eq!(
        fs::read_to_string(w.root().join("state.json")).unwrap(),
        state_before
    );
    // The bundle was not even downloaded again.
    assert_eq!(w.server.hits("/ver-1.tar.gz"), 1);
    assert_eq!(w.host.audit().last().unwrap()["outcome"], "noop");
}

#[test]
fn older_sequencer_is_stale_and_empty_sequencer_redeploys() {
    let w = World::new("stale");
    let old = w.healthy("v1");
    let new = w.healthy("v2");
    assert_code(
        &w.deploy(&new, "ver-2", "0062E99A88DC407460"),
        0,
        "deployed",
    );
    let rel = w.host.current().unwrap();
    let pid = w.host.running()[0].1;
    // An event that happened earlier arrives late.
    let stale = w.deploy(&old, "ver-1", "0055AED6DCD90281E5");
    assert_code(&stale, 0, "stale");
    assert_eq!(w.host.current().unwrap(), rel);
    assert_eq!(w.host.releases(), vec![rel.clone()]);
    assert_eq!(w.host.running()[0].1, pid);
    assert_eq!(w.serving_version().as_deref(), Some("v2"));
    assert_eq!(
        w.server.hits("/ver-1.tar.gz"),
        0,
        "stale bundle not fetched"
    );
    assert_eq!(w.host.state()["version_id"], "ver-2");
    // An operator's direct redeploy (no sequencer) of the old version goes through, and the
    // newest sequencer seen stays recorded.
    let redeploy = w.deploy(&old, "ver-1", "");
    assert_code(&redeploy, 0, "deployed");
    assert_eq!(w.serving_version().as_deref(), Some("v1"));
    assert_eq!(w.host.state()["sequencer"], "0062E99A88DC407460");
}

#[test]
fn failing_health_rolls_back_to_the_previous_release() {
    let w = World::new("rollback");
    assert_code(&w.deploy(&w.healthy("v1"), "ver-1", "01"), 0, "deployed");
    let good = w.host.current().unwrap();
    // v2 has no `health` file: its server answers 404 on /health.
    let bad = w.bundle(AppFiles::healthy(w.port, "v2").without("health"));
    let run = w.deploy(&bad, "ver-2", "02");
    assert_code(&run, 9, "rolled_back");
    assert_logged_steps(&run, &["switch", "health", "rollback"]);
    assert_eq!(run.field("release"), good);
    let attempted = run.field("attempted").to_string();
    assert!(!attempted.is_empty() && attempted != good);
    // Previous release is back and serving.
    assert_eq!(w.host.current().unwrap(), good);
    assert_eq!(w.serving_version().as_deref(), Some("v1"));
    assert_eq!(w.get("/health").map(|r| r.0), Some(200));
    assert_eq!(w.host.running()[0].3, w.root().join("releases").join(&good));
    let st = w.host.state();
    assert_eq!(st["current"], good.as_str());
    assert_eq!(st["version_id"], "ver-1");
    assert_eq!(st["last_outcome"], "rolled_back");
    assert_eq!(st["last_failed"], attempted.as_str());
    assert_eq!(w.host.audit().last().unwrap()["outcome"], "rolled_back");
    // The same good release deploys fine afterwards (the failed version is retried fully).
    assert_code(&w.deploy(&w.healthy("v3"), "ver-3", "03"), 0, "deployed");
}

#[test]
fn failing_first_deploy_leaves_nothing_running() {
    let w = World::new("firstbad");
    let bad = w.bundle(AppFiles::healthy(w.port, "v1").without("health"));
    let run = w.deploy(&bad, "ver-1", "01");
    assert_code(&run, 9, "rolled_back");
    assert_eq!(w.host.current(), None);
    assert!(w.host.running().is_empty());
    assert!(w.get("/health").is_none());
    assert_eq!(w.host.state()["current"], "");
}

/// Deploys v1, then `bad` and checks that nothing was switched and v1 still runs untouched.
fn assert_rejected_before_switch(w: &World, run: &Run, code: i32, good: &str, pid: u32) {
    assert_code(run, code, "failed");
    assert_eq!(run.field("release"), good);
    assert_eq!(w.host.current().as_deref(), Some(good));
    assert_eq!(
        w.host.releases(),
        vec![good.to_string()],
        "new release removed"
    );
    assert!(w.host.leftovers().is_empty(), "{:?}", w.host.leftovers());
    let running = w.host.running();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].1, pid, "running container untouched");
    assert_eq!(w.serving_version().as_deref(), Some("v1"));
    assert_eq!(w.host.state()["version_id"], "ver-1");
    assert_eq!(w.host.audit().last().unwrap()["outcome"], "failed");
}

fn deployed_v1(w: &World) -> (String, u32) {
    assert_code(&w.deploy(&w.healthy("v1"), "ver-1", "01"), 0, "deployed");
    (w.host.current().unwrap(), w.host.running()[0].1)
}

#[test]
fn invalid_compose_file_is_refused_before_the_switch() {
    let w = World::new("badcompose");
    let (good, pid) = deployed_v1(&w);
    let broken = w.bundle(
        AppFiles::healthy(w.port, "v2").with("compose.yaml", "services:\n  web: [unclosed\n"),
    );
    let run = w.deploy(&broken, "ver-2", "02");
    assert_rejected_before_switch(&w, &run, 7, &good, pid);
    assert!(run.output.contains("docker compose config rejected"));
}

#[test]
fn missing_required_env_variable_is_refused_then_accepted_once_set() {
    let w = World::new("reqenv");
    let (good, pid) = deployed_v1(&w);
    w.host
        .write_shared(".env", "OTHER=1\n# DATABASE_URL=commented\n");
    let b2 = w.healthy("v2");
    let mut vars = w.vars(&b2, "ver-2", "ver-2", "02");
    vars.insert("DROPSHIP_REQUIRED_ENV".into(), "OTHER,DATABASE_URL".into());
    let run = w.host.run(&vars);
    assert_rejected_before_switch(&w, &run, 7, &good, pid);
    assert!(run.message_contains("DATABASE_URL"));
    w.host
        .write_shared(".env", "OTHER=1\nexport DATABASE_URL=postgres://db/app\n");
    let run = w.host.run(&vars);
    assert_code(&run, 0, "deployed");
    assert_eq!(w.serving_version().as_deref(), Some("v2"));
}

trait MessageExt {
    fn message_contains(&self, s: &str) -> bool;
}
impl MessageExt for Run {
    fn message_contains(&self, s: &str) -> bool {
        self.field("message").contains(s)
    }
}

#[test]
fn checksum_mismatch_is_refused() {
    let w = World::new("badsum");
    let (good, pid) = deployed_v1(&w);
    let b2 = w.healthy("v2");
    let mut vars = w.vars(&b2, "ver-2", "ver-2", "02");
    vars.insert("DROPSHIP_SHA256".into(), "ab".repeat(32));
    let run = w.host.run(&vars);
    assert_rejected_before_switch(&w, &run, 5, &good, pid);
    assert!(run.message_contains("SHA-256 mismatch"));
}

#[test]
fn download_failures_are_refused_403_not_retried_500_retried_truncated_detected() {
    let w = World::new("dlfail");
    let (good, pid) = deployed_v1(&w);
    let b2 = w.healthy("v2");
    let base = w.vars(&b2, "ver-2", "ver-2", "02");
    for (path, reply, max_hits) in [
        ("/forbidden.tar.gz", Reply::Status(403), 1),
        ("/broken.tar.gz", Reply::Status(500), 4),
        ("/short.tar.gz", Reply::Truncated(b2.bytes.clone()), 4),
    ] {
        w.server.set(path, reply);
        let mut vars = base.clone();
        vars.insert("DROPSHIP_BUNDLE_URL".into(), w.server.url(path));
        let run = w.host.run(&vars);
        assert_rejected_before_switch(&w, &run, 5, &good, pid);
        assert_eq!(w.server.hits(path), max_hits, "requests for {path}");
    }
    // A truncated body is also caught when the size is not announced in advance.
    let mut vars = base.clone();
    vars.insert("DROPSHIP_BUNDLE_URL".into(), w.server.url("/short.tar.gz"));
    vars.insert("DROPSHIP_BUNDLE_BYTES".into(), "0".into());
    let run = w.host.run(&vars);
    assert_rejected_before_switch(&w, &run, 5, &good, pid);
}

#[test]
fn disk_preflight_refuses_bundles_that_do_not_fit() {
    let w = World::new("disk");
    let (good, pid) = deployed_v1(&w);
    let b2 = w.healthy("v2");
    let mut vars = w.vars(&b2, "ver-2", "ver-2", "02");
    vars.insert("DROPSHIP_UNPACKED_BYTES".into(), "999999999999999".into());
    let run = w.host.run(&vars);
    assert_rejected_before_switch(&w, &run, 4, &good, pid);
    assert_eq!(w.server.hits("/ver-2.tar.gz"), 0, "nothing downloaded");
}

#[test]
fn pre_switch_hook_runs_in_the_new_release_and_its_failure_stops_the_deploy() {
    let w = World::new("hook");
    let (good, pid) = deployed_v1(&w);
    let hook = "#!/usr/bin/env bash\nset -e\necho \"migrating $(cat version.txt) prev=$DROPSHIP_PREVIOUS_RELEASE\" >> data/hook.log\n";
    let ok = w.bundle(AppFiles::healthy(w.port, "v2").with("deploy/hook.sh", hook));
    let failing = w.bundle(
        AppFiles::healthy(w.port, "v3").with("deploy/hook.sh", "#!/bin/sh\necho no >&2\nexit 3\n"),
    );
    let mut vars = w.vars(&failing, "ver-3", "ver-3", "03");
    vars.insert("DROPSHIP_PRE_SWITCH_HOOK".into(), "deploy/hook.sh".into());
    let run = w.host.run(&vars);
    assert_rejected_before_switch(&w, &run, 8, &good, pid);
    let mut vars = w.vars(&ok, "ver-2", "ver-2", "04");
    vars.insert("DROPSHIP_PRE_SWITCH_HOOK".into(), "deploy/hook.sh".into());
    let run = w.host.run(&vars);
    assert_code(&run, 0, "deployed");
    let log = fs::read_to_string(w.root().join("shared/data/hook.log")).unwrap();
    assert_eq!(log, format!("migrating v2 prev={good}\n"));
}

#[test]
fn env_and_app_data_survive_deploys_and_rollbacks() {
    let w = World::new("data");
    // The first bundle seeds data/; later bundles carry other seed content that must not win.
    let v1 = w.bundle(AppFiles::healthy(w.port, "v1").with("data/seed.txt", "seed v1\n"));
    assert_code(&w.deploy(&v1, "ver-1", "01"), 0, "deployed");
    assert_eq!(
        fs::read_to_string(w.root().join("shared/data/seed.txt")).unwrap(),
        "seed v1\n"
    );
    // Operator writes .env; the app writes through the release's data link.
    w.host.write_shared(".env", "SECRET=s3cr3t\n");
    fs::write(w.root().join("current/data/app.db"), "rows=1\n").unwrap();
    let v2 = w.bundle(AppFiles::healthy(w.port, "v2").with("data/seed.txt", "seed v2\n"));
    assert_code(&w.deploy(&v2, "ver-2", "02"), 0, "deployed");
    fs::write(w.root().join("current/data/app.db"), "rows=2\n").unwrap();
    let bad = w.bundle(AppFiles::healthy(w.port, "v3").without("health"));
    assert_code(&w.deploy(&bad, "ver-3", "03"), 9, "rolled_back");
    let r = w.host.run(&w.host.rollback_vars(""));
    assert_code(&r, 0, "rolled_back");
    assert_eq!(w.serving_version().as_deref(), Some("v1"));
    for rel in w.host.releases() {
        let d = w.root().join("releases").join(&rel);
        assert!(fs::symlink_metadata(d.join("data")).unwrap().is_symlink());
        assert!(fs::symlink_metadata(d.join(".env")).unwrap().is_symlink());
    }
    assert_eq!(
        fs::read_to_string(w.root().join("shared/.env")).unwrap(),
        "SECRET=s3cr3t\n"
    );
    assert_eq!(
        fs::read_to_string(w.root().join("current/data/app.db")).unwrap(),
        "rows=2\n"
    );
    assert_eq!(
        fs::read_to_string(w.root().join("shared/data/seed.txt")).unwrap(),
        "seed v1\n"
    );
    // The running server sees the same shared data through the release link.
    assert_eq!(
        w.get("/data/app.db").map(|r| r.1),
        Some("rows=2\n".to_string())
    );
}

#[test]
fn retention_keeps_n_and_never_prunes_current_or_previous() {
    let w = World::new("retain");
    let mut names = Vec::new();
    for i in 1..=4 {
        let b = w.healthy(&format!("v{i}"));
        let mut vars = w.vars(
            &b,
            &format!("ver-{i}"),
            &format!("ver-{i}"),
            &format!("0{i}"),
        );
        vars.insert("DROPSHIP_KEEP_RELEASES".into(), "2".into());
        assert_code(&w.host.run(&vars), 0, "deployed");
        names.push(w.host.current().unwrap());
    }
    assert_eq!(w.host.releases(), by_name(names[2..].to_vec()));
    // keep 1 still keeps the previous good release (the rollback target).
    let b = w.healthy("v5");
    let mut vars = w.vars(&b, "ver-5", "ver-5", "05");
    vars.insert("DROPSHIP_KEEP_RELEASES".into(), "1".into());
    assert_code(&w.host.run(&vars), 0, "deployed");
    let current = w.host.current().unwrap();
    assert_eq!(
        w.host.releases(),
        by_name(vec![names[3].clone(), current.clone()])
    );
    let st = w.host.state();
    assert_eq!(st["previous"], names[3].as_str());
    // Pruned releases were moved aside at once and are deleted in the background.
    let trash_gone = wait_until(Duration::from_secs(120), || {
        fs::read_dir(w.root())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(".trash."))
    });
    assert!(trash_gone, "pruned releases were never deleted");
    // Rolling back still works after pruning.
    assert_code(&w.host.run(&w.host.rollback_vars("")), 0, "rolled_back");
    assert_eq!(w.serving_version().as_deref(), Some("v4"));
}

/// A tar.gz made by hand (the bundler never writes such entries), served with its true SHA-256.
fn hand_made_bundle(w: &World, setup: &str) -> Bundle {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("compose.yaml"), compose_yaml(w.port)).unwrap();
    fs::write(root.join("health"), "ok\n").unwrap();
    let out = dir.path().join("b.tar.gz");
    let st = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -e; cd tree; {setup}; tar czf ../b.tar.gz *"))
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(st.success(), "building the hand-made tar failed");
    let bytes = fs::read(out).unwrap();
    Bundle {
        sha256: dropship_tests::host::sha256_hex(&bytes),
        bytes,
        commit: "c".repeat(40),
    }
}

#[test]
fn unsafe_tar_entries_are_refused_before_unpacking() {
    let w = World::new("unsafe");
    let (good, pid) = deployed_v1(&w);
    for (i, setup) in [
        "ln -s /etc etc-link",
        "mkdir d && ln -s ../../outside d/escape",
        "echo x > tool && chmod 4755 tool",
        "mkfifo pipe",
        "echo x > a && ln a hard",
    ]
    .iter()
    .enumerate()
    {
        let b = hand_made_bundle(&w, setup);
        let id = format!("unsafe-{i}");
        let run = w.host.run(&w.vars(&b, &id, &id, "02"));
        assert_rejected_before_switch(&w, &run, 6, &good, pid);
        assert!(
            run.message_contains("unsafe bundle"),
            "{setup}: {}",
            run.output
        );
    }
}

#[test]
fn two_deploys_started_together_one_waits_for_the_lock() {
    let w = World::new("lock");
    let b = w.healthy("v1");
    let vars = w.vars(&b, "ver-1", "ver-1", "01");
    let hold = w.hold_compose_up();
    let logs = [
        w.host.dir.path().join("a.log"),
        w.host.dir.path().join("b.log"),
    ];
    let a = w.host.spawn(&vars, &logs[0]);
    let b_child = w.host.spawn(&vars, &logs[1]);
    // One run reaches compose up (holding the lock) while the other waits for the lock.
    w.wait_compose_up_started();
    let waiting = |p: &Path| {
        fs::read_to_string(p)
            .unwrap_or_default()
            .contains("[lock] another deploy holds")
    };
    assert!(wait_until(Duration::from_secs(30), || logs
        .iter()
        .any(|p| waiting(p))));
    // A third run with a short lock timeout gives up with exit 3 and touches nothing.
    let mut impatient = vars.clone();
    impatient.insert("DROPSHIP_LOCK_TIMEOUT".into(), "1".into());
    let third = w.host.run(&impatient);
    assert_code(&third, 3, "failed");
    fs::remove_file(&hold).unwrap();
    let ra = w.host.finish(a, &logs[0]);
    let rb = w.host.finish(b_child, &logs[1]);
    let mut outcomes = vec![ra.outcome().to_string(), rb.outcome().to_string()];
    outcomes.sort();
    assert_eq!(outcomes, vec!["deployed", "noop"], "{ra:?}\n{rb:?}");
    assert_eq!(ra.code + rb.code, 0);
    assert_eq!(w.host.releases().len(), 1);
    assert_eq!(w.serving_version().as_deref(), Some("v1"));
    assert_eq!(w.host.running().len(), 1);
    assert_eq!(w.server.hits("/ver-1.tar.gz"), 1, "only one download");
}

#[test]
fn sigkill_during_unpack_then_rerun_is_consistent() {
    let w = World::new("killunpack");
    let (good, _) = deployed_v1(&w);
    let mut files = AppFiles::healthy(w.port, "v2");
    for i in 0..200 {
        files = files.with(&format!("assets/{i:03}.txt"), format!("asset {i}\n"));
    }
    let b2 = w.bundle(files);
    let vars = w.vars(&b2, "ver-2", "ver-2", "02");
    // The tar shim holds the extraction open once every file is written (tar not returned).
    let state = w.host.shim_state();
    fs::write(state.join("hold-unpack"), "").unwrap();
    let log = w.host.dir.path().join("kill.log");
    let mut child = w.host.spawn(&vars, &log);
    assert!(
        wait_until(Duration::from_secs(120), || state
            .join("unpack-started")
            .exists()),
        "the run never reached the unpack"
    );
    let partial: Vec<_> = fs::read_dir(w.root().join("releases"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .collect();
    assert_eq!(partial.len(), 1, "one .partial release being unpacked");
    assert!(partial[0].join("assets/199.txt").is_file());
    kill_group(&mut child);
    fs::remove_file(state.join("hold-unpack")).unwrap();
    // Killed mid-unpack: still v1 everywhere, and the kill left the .partial behind.
    assert_eq!(w.host.current().unwrap(), good);
    assert_eq!(w.serving_version().as_deref(), Some("v1"));
    assert_eq!(w.host.state()["current"], good.as_str());
    assert!(partial[0].exists());
    // The rerun is not blocked by a stale lock, cleans up and deploys.
    let mut rerun = vars.clone();
    rerun.insert("DROPSHIP_LOCK_TIMEOUT".into(), "2".into());
    let run = w.host.run(&rerun);
    assert_code(&run, 0, "deployed");
    assert!(run.output.contains("[cleanup] removing leftover"));
    assert!(!partial[0].exists());
    assert!(w.host.leftovers().is_empty(), "{:?}", w.host.leftovers());
    assert_eq!(w.serving_version().as_deref(), Some("v2"));
    assert_eq!(w.host.releases().len(), 2);
}

#[test]
fn sigkill_during_compose_then_rerun_is_consistent() {
    let w = World::new("killcompose");
    let (good, _) = deployed_v1(&w);
    let b2 = w.healthy("v2");
    let vars = w.vars(&b2, "ver-2", "ver-2", "02");
    let hold = w.hold_compose_up();
    let log = w.host.dir.path().join("kill.log");
    let mut child = w.host.spawn(&vars, &log);
    w.wait_compose_up_started();
    // Killed after the switch, inside compose up: current points at the uncommitted release.
    kill_group(&mut child);
    fs::remove_file(&hold).unwrap();
    assert_ne!(w.host.current().unwrap(), good);
    assert_eq!(w.host.state()["current"], good.as_str());
    // A rerun of a stale event: recovers the committed release, then skips.
    let stale_vars = w.vars(&w.healthy("v0"), "ver-0", "ver-0", "00");
    let mut stale_vars = stale_vars;
    stale_vars.insert("DROPSHIP_LOCK_TIMEOUT".into(), "2".into());
    let stale = w.host.run(&stale_vars);
    assert_code(&stale, 0, "stale");
    assert!(stale.output.contains("[recover]"));
    assert_eq!(w.host.current().unwrap(), good);
    assert_eq!(w.serving_version().as_deref(), Some("v1"));
    // Rerunning the killed deploy completes it.
    let run = w.host.run(&vars);
    assert_code(&run, 0, "deployed");
    assert_eq!(w.serving_version().as_deref(), Some("v2"));
    assert_eq!(w.host.state()["previous"], good.as_str());
    assert!(w.host.leftovers().is_empty(), "{:?}", w.host.leftovers());
}

#[test]
fn sigkill_during_first_compose_then_rerun_is_consistent() {
    let w = World::new("killfirst");
    let b = w.healthy("v1");
    let vars = w.vars(&b, "ver-1", "ver-1", "01");
    let hold = w.hold_compose_up();
    let log = w.host.dir.path().join("kill.log");
    let mut child = w.host.spawn(&vars, &log);
    w.wait_compose_up_started();
    kill_group(&mut child);
    fs::remove_file(&hold).unwrap();
    let run = w.host.run(&vars);
    assert_code(&run, 0, "deployed");
    assert_eq!(w.serving_version().as_deref(), Some("v1"));
    assert_eq!(w.host.running().len(), 1);
}

#[test]
fn explicit_rollback_action_switches_to_previous_or_named_release() {
    let w = World::new("rbaction");
    assert_code(&w.deploy(&w.healthy("v1"), "ver-1", "01"), 0, "deployed");
    let r1 = w.host.current().unwrap();
    assert_code(&w.deploy(&w.healthy("v2"), "ver-2", "02"), 0, "deployed");
    let r2 = w.host.current().unwrap();
    let run = w.host.run(&w.host.rollback_vars(""));
    assert_code(&run, 0, "rolled_back");
    assert_eq!(run.field("release"), r1);
    assert_eq!(run.field("previous"), r2);
    assert_eq!(run.field("version_id"), "ver-1");
    assert_eq!(w.host.current().unwrap(), r1);
    assert_eq!(w.serving_version().as_deref(), Some("v1"));
    let st = w.host.state();
    assert_eq!(st["current"], r1.as_str());
    assert_eq!(st["previous"], r2.as_str());
    assert_eq!(st["version_id"], "ver-1");
    // Named target.
    let run = w.host.run(&w.host.rollback_vars(&r2));
    assert_code(&run, 0, "rolled_back");
    assert_eq!(w.serving_version().as_deref(), Some("v2"));
    // Already current: no-op. Unknown or malformed: bad input, nothing changes.
    assert_code(&w.host.run(&w.host.rollback_vars(&r2)), 0, "noop");
    let missing = w
        .host
        .run(&w.host.rollback_vars("20000101T000000Z-0000000"));
    assert_code(&missing, 2, "failed");
    let malformed = w.host.run(&w.host.rollback_vars("../../etc"));
    assert_code(&malformed, 2, "failed");
    assert_eq!(w.host.current().unwrap(), r2);
    // The deploy after a rollback re-deploys normally.
    assert_code(&w.deploy(&w.healthy("v3"), "ver-3", "03"), 0, "deployed");
}

#[test]
fn status_prints_state_and_a_result_line() {
    let w = World::new("status");
    let mut vars = w.host.rollback_vars("");
    vars.insert("DROPSHIP_ACTION".into(), "status".into());
    let empty = w.host.run(&vars);
    assert_code(&empty, 0, "status");
    assert!(!w.root().exists(), "status creates nothing");
    assert_code(&w.deploy(&w.healthy("v1"), "ver-1", "01"), 0, "deployed");
    let run = w.host.run(&vars);
    assert_code(&run, 0, "status");
    assert_eq!(run.field("release"), w.host.current().unwrap());
    assert_eq!(run.field("version_id"), "ver-1");
    assert!(run.output.contains("\"last_good\""));
    assert!(run.output.contains("running"), "{}", run.output);
}

#[test]
fn hostile_values_are_data_bad_ones_exit_2_touching_nothing() {
    let w = World::new("hostile");
    let b = w.healthy("v1");
    // The script runs with the sandbox as its working directory.
    let canary = w.host.dir.path().join("pwned");
    let payloads = [
        "$(touch pwned)",
        "`touch pwned`",
        "x'; touch pwned; '",
        "x\"; touch pwned; \"",
        "x\ntouch pwned",
        "ok,$(touch pwned)",
        "x\nDROPSHIP_RESULT {\"outcome\":\"deployed\"}",
        "../../../etc",
        "-rf",
    ];
    let deploy_vars = w.vars(&b, "ver-1", "ver-1", "01");
    // Every input the contract names; DROPSHIP_ROLLBACK_TO is read by the rollback action.
    let mut accepted = Vec::new();
    for input in HostVar::ALL {
        let name = input.name();
        for p in &payloads {
            let mut v = if input == HostVar::RollbackTo {
                w.host.rollback_vars("")
            } else {
                deploy_vars.clone()
            };
            v.insert(name.to_string(), p.to_string());
            let run = w.host.run(&v);
            assert!(!canary.exists(), "{name}={p:?} executed code");
            assert_eq!(
                run.output
                    .lines()
                    .filter(|l| l.starts_with("DROPSHIP_RESULT"))
                    .count(),
                1,
                "{name}={p:?} forged a result line:\n{}",
                run.output
            );
            if run.code == 2 {
                assert_eq!(run.outcome(), "failed");
                assert!(
                    run.field("message").contains(name),
                    "{name}={p:?}: message names the input:\n{}",
                    run.output
                );
                assert!(!w.root().exists(), "{name}={p:?} created the app root");
            } else {
                accepted.push((name, p.to_string(), run));
                w.host.reset();
            }
        }
    }
    // Values that are legitimately data for an input (a version id may hold quotes, `$()`,
    // backticks and a leading dash) pass through verbatim; everything else was refused.
    // The rollback guard holds a version id too; a deploy does not read it.
    let (guard, accepted): (Vec<_>, Vec<_>) = accepted
        .into_iter()
        .partition(|(name, _, _)| *name == "DROPSHIP_EXPECT_VERSION_ID");
    for (_, _, run) in &guard {
        assert_code(run, 0, "deployed");
        assert_eq!(run.field("version_id"), "ver-1");
    }
    for (name, p, run) in &accepted {
        assert!(
            *name == "DROPSHIP_VERSION_ID",
            "{name}={p:?} was accepted (exit {}):\n{}",
            run.code,
            run.output
        );
        assert_code(run, 0, "deployed");
        assert_eq!(run.field("version_id"), p.as_str(), "recorded verbatim");
    }
    let mut got: Vec<&str> = accepted.iter().map(|a| a.1.as_str()).collect();
    let mut want: Vec<&str> = payloads
        .iter()
        .copied()
        .filter(|p| !p.contains('\n') && !p.contains('/'))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(
        got, want,
        "every payload without a newline or '/' is a valid version id, recorded verbatim"
    );

    // Free-form inputs full of shell syntax at once: deployed, used as data, stored verbatim.
    let evil = "'\"$(touch pwned)`touch pwned`;&|<>*{a,b}[1-2]";
    let mut v = w.vars(&b, "ver-evil", "ver-evil", "01");
    v.insert("DROPSHIP_VERSION_ID".into(), format!("v{evil}"));
    v.insert(
        "DROPSHIP_KEY".into(),
        format!("releases/{evil}/hostile/staging.tar.gz"),
    );
    // URLs cannot hold whitespace: the same syntax with ${IFS} in place of spaces.
    let evil_url = evil.replace(' ', "${IFS}");
    let url = format!("{}?sig={evil_url}", w.server.url("/ver-evil.tar.gz"));
    v.insert("DROPSHIP_BUNDLE_URL".into(), url);
    let health = format!("http://127.0.0.1:{}/health?x={evil_url}", w.port);
    v.insert("DROPSHIP_HEALTH_URL".into(), health.clone());
    let run = w.host.run(&v);
    assert_code(&run, 0, "deployed");
    assert!(!canary.exists(), "executed code");
    assert_eq!(run.field("version_id"), format!("v{evil}"));
    let rel = w.host.current().unwrap();
    let release: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(
            w.root()
                .join("releases")
                .join(&rel)
                .join(".dropship/release.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(release["version_id"], format!("v{evil}").as_str());
    assert_eq!(
        release["key"],
        format!("releases/{evil}/hostile/staging.tar.gz").as_str()
    );
    assert_eq!(release["health_url"], health.as_str());
    assert_eq!(w.host.state()["version_id"], format!("v{evil}").as_str());
    assert_eq!(
        w.host.audit().last().unwrap()["version_id"],
        format!("v{evil}").as_str()
    );
    assert_eq!(w.server.hits("/ver-evil.tar.gz"), 1);
}

/// The script's header documents exactly the contract's inputs (in order) and exit codes, and
/// its body reads no other `DROPSHIP_*` input.
#[test]
fn script_header_matches_the_contract() {
    let text = fs::read_to_string(dropship_tests::bins::script("deploy-on-host.sh")).unwrap();
    let header: Vec<&str> = text
        .lines()
        .take_while(|l| l.starts_with('#') || l.is_empty())
        .collect();
    let section = |start: &str, end: &str| -> Vec<&str> {
        let from = header
            .iter()
            .position(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("header has no {start:?} section"));
        let to = header[from..]
            .iter()
            .position(|l| l.starts_with(end))
            .map(|i| from + i)
            .unwrap_or_else(|| panic!("header has no {end:?} section"));
        header[from + 1..to].to_vec()
    };
    let documented: Vec<String> = section("# Inputs:", "# Exit codes")
        .iter()
        .filter_map(|l| l.trim_start_matches('#').split_whitespace().next())
        .filter(|w| w.starts_with("DROPSHIP_"))
        .map(str::to_string)
        .collect();
    let contract: Vec<String> = HostVar::ALL.iter().map(|v| v.name().to_string()).collect();
    assert_eq!(
        documented, contract,
        "documented inputs vs contract::host::HostVar::ALL"
    );

    let codes: Vec<(i32, String)> = section("# Exit codes", "# Output:")
        .iter()
        .filter_map(|l| {
            let rest = l.trim_start_matches('#').trim_start();
            let (num, what) = rest.split_once(char::is_whitespace)?;
            Some((num.parse().ok()?, what.trim().to_string()))
        })
        .collect();
    let numbers: Vec<i32> = codes.iter().map(|c| c.0).collect();
    let contract_codes: Vec<i32> = ExitCode::ALL.iter().map(|c| c.code()).collect();
    assert_eq!(
        numbers, contract_codes,
        "documented exit codes vs ExitCode::ALL"
    );
    assert!(
        codes.iter().all(|c| !c.1.is_empty()),
        "every code is described"
    );

    // Every `${DROPSHIP_X...}` the body expands is a documented input.
    let body = &text[header.iter().map(|l| l.len() + 1).sum::<usize>()..];
    let mut read: Vec<String> = body
        .match_indices("${DROPSHIP_")
        .map(|(i, _)| {
            body[i + 2..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    read.sort();
    read.dedup();
    let mut want = contract.clone();
    want.sort();
    assert_eq!(read, want, "inputs the script reads vs the contract");
}

#[test]
fn sigterm_during_compose_reports_exit_10_and_the_rerun_recovers() {
    let w = World::new("termcompose");
    let (good, _) = deployed_v1(&w);
    let b2 = w.healthy("v2");
    let vars = w.vars(&b2, "ver-2", "ver-2", "02");
    let hold = w.hold_compose_up();
    let log = w.host.dir.path().join("term.log");
    let child = w.host.spawn(&vars, &log);
    w.wait_compose_up_started();
    // SSM's timeout: SIGTERM to the whole group (the shim dies, the script reports).
    let st = std::process::Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", child.id())])
        .status()
        .unwrap();
    assert!(st.success());
    let run = w.host.finish(child, &log);
    fs::remove_file(&hold).unwrap();
    assert_code(&run, 10, "failed");
    assert!(run.output.contains("[signal] terminated"), "{}", run.output);
    assert!(w.host.leftovers().is_empty(), "{:?}", w.host.leftovers());
    assert_eq!(w.host.state()["current"], good.as_str());
    // The rerun recovers the committed release first, then deploys.
    let again = w.host.run(&vars);
    assert_code(&again, 0, "deployed");
    assert!(again.output.contains("[recover]"), "{}", again.output);
    assert_eq!(w.serving_version().as_deref(), Some("v2"));
    assert_eq!(w.host.state()["previous"], good.as_str());
}
