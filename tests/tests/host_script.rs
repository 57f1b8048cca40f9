//! The host script suite, on the real engine: every test starts a simulated EC2 host
//! (`dropship_tests::simhost`: its own dockerd with `busybox:1.35`, its own loopback and
//! `/opt`) and runs the real `scripts/deploy-on-host.sh` exactly as SSM would: the command the
//! Lambda renders (`deployer_lambda::plan::render_command`), started by the agent's rules
//! (`sh -c _script.sh`, own process group, SIGKILL to the group to stop it). Bundles come from
//! the real `bundle-and-upload --output`, served over real HTTP; the app is busybox `httpd`
//! with a compose `healthcheck:`.
//!
//! Every World writes a canary secret into `shared/.env`, and every run's output is checked
//! never to contain it. Tests named after a defect of issue 12 failed before its fix.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use deployer_lambda::plan::{render_command, MAX_COMMAND_BYTES};
use dropship_contract::host::{
    check_region, check_s3_endpoint, object_request_target, required_env_value, ExitCode,
    HostResult, HostVar, MAX_REGION_LEN, MAX_S3_ENDPOINT_LEN,
};
use dropship_contract::manifest::{bounds, DeploySettings, EnvRule, ProxySettings, Strategy};
use dropship_tests::host::{
    kill_agent_script, make_bundle, script_pid, sha256_hex, signal, signal_group, wait_until,
    AppFiles, Bundle, Host, Probe, Run, Vars, BUCKET,
};
use dropship_tests::http::Reply;
use dropship_tests::imds::{FAKE_ROLE, IMDS_SESSION_TOKEN};

/// In every World's `shared/.env`; no output of any run may contain it.
const CANARY: &str = "canary-7c1f9e2b-never-printed";

/// One app on one simulated host.
struct World {
    host: Host,
}

/// What the Lambda sends for `vars`: the contract's export header through its one encoder,
/// then the compacted script, checked against SSM's size limit.
fn render(vars: &Vars) -> String {
    let mut list = Vec::new();
    for (name, value) in vars {
        let var = HostVar::ALL
            .into_iter()
            .find(|v| v.name() == name)
            .unwrap_or_else(|| panic!("{name} is not a contract input"));
        list.push((var, value.clone()));
    }
    render_command(&list).expect("the Lambda renders these inputs")
}

impl World {
    fn new(app: &str) -> Self {
        Self::with_host(Host::start(app))
    }

    fn with_host(host: Host) -> Self {
        let w = Self { host };
        w.write_env("");
        w
    }

    /// `shared/.env`: the canary, then `extra`.
    fn write_env(&self, extra: &str) {
        self.host
            .write_shared(".env", &format!("SECRET_KEY={CANARY}\n{extra}"));
    }

    fn bundle(&self, files: AppFiles) -> Bundle {
        make_bundle(&self.host.app, &files)
    }

    fn healthy(&self, version: &str) -> Bundle {
        self.bundle(AppFiles::healthy(8080, version))
    }

    /// Without `health`: its container never becomes healthy.
    fn unhealthy(&self, version: &str) -> Bundle {
        self.bundle(AppFiles::healthy(8080, version).without("health"))
    }

    fn vars(&self, b: &Bundle, version_id: &str, sequencer: &str) -> Vars {
        self.host.deploy_vars(b, version_id, sequencer)
    }

    fn run(&self, vars: &Vars) -> Run {
        checked(self.host.run(&render(vars)))
    }

    fn spawn(&self, vars: &Vars, probe: Option<&Probe>) -> (Child, PathBuf) {
        self.host
            .spawn(&render(vars), probe.map(|p| p.host_dir.as_str()))
    }

    fn finish(&self, child: Child, dir: &Path) -> Run {
        checked(self.host.finish(child, dir))
    }

    fn deploy(&self, b: &Bundle, version_id: &str, sequencer: &str) -> Run {
        self.run(&self.vars(b, version_id, sequencer))
    }

    fn root(&self) -> PathBuf {
        self.host.path("")
    }

    /// Deploys a healthy `version` and returns its release name.
    fn deployed(&self, version: &str, sequencer: &str) -> String {
        let run = self.deploy(&self.healthy(version), &format!("ver-{version}"), sequencer);
        assert_code(&run, 0, "deployed");
        self.host.current().unwrap()
    }

    fn container_ids(&self) -> Vec<String> {
        self.host.running().into_iter().map(|c| c.id).collect()
    }
}

/// Every run: the canary never appears, and the last line is the result.
fn checked(run: Run) -> Run {
    assert!(
        !run.output.contains(CANARY),
        "a .env value reached the output:\n{}",
        run.output
    );
    run
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

/// The host is settled on `version`: `current`, `state.json` and every container of the
/// project agree on one release, it is healthy and serves `version`, nothing pending, no
/// leftovers, no lock held.
fn assert_settled(w: &World, version: &str) {
    let h = &w.host;
    let current = h.current().expect("a current release");
    let st = h.state();
    assert_eq!(st["current"], current.as_str(), "state.json vs current");
    assert_eq!(st["pending"], "", "nothing pending");
    let dir = format!("{}/releases/{current}", h.root);
    let running = h.running();
    assert!(!running.is_empty(), "the app runs");
    for c in &running {
        assert_eq!(c.dir, dir, "container {} runs another release", c.service);
        assert_eq!(c.state, "running", "{c:?}");
    }
    assert_eq!(h.serving().as_deref(), Some(version), "what the app serves");
    assert_eq!(h.get("/app/health").map(|r| r.0), Some(200));
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
    h.sh(&format!("flock -n {}/.lock true", h.root));
}

/// Release names sorted (`Host::releases` order).
fn by_name(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}

// -----------------------------------------------------------------------------------------
// the happy paths and the real engine's gates

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
    assert_settled(&w, "v1");
    // The project name is pinned (app-env on a fresh app root), the container is healthy.
    let containers = w.host.sim.containers(&w.host.project());
    assert_eq!(containers.len(), 1);
    assert_eq!(containers[0].health, "healthy");
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
    let st = w.host.state();
    for (k, v) in [
        ("current", rel.as_str()),
        ("last_good", rel.as_str()),
        ("previous", ""),
        ("version_id", "ver-1"),
        ("sequencer", "00A1"),
        ("sha256", b.sha256.as_str()),
        ("commit", b.commit.as_str()),
        ("env", "staging"),
        ("project", &w.host.project()),
    ] {
        assert_eq!(st[k], v, "state.json {k}");
    }
    let audit = w.host.audit();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["outcome"], "deployed");
    assert_eq!(w.host.releases(), vec![rel]);
}

#[test]
fn second_deploy_replaces_the_container_and_keeps_the_previous_release() {
    let w = World::new("second");
    let first = w.deployed("v1", "0A");
    let ids1 = w.container_ids();
    let run = w.deploy(&w.healthy("v2"), "ver-2", "0B");
    assert_code(&run, 0, "deployed");
    let second = w.host.current().unwrap();
    assert_ne!(first, second);
    assert_eq!(run.field("previous"), first);
    assert_settled(&w, "v2");
    // Really replaced: a new container, the old one gone.
    let ids2 = w.container_ids();
    assert_eq!(ids2.len(), 1);
    assert!(!ids1.contains(&ids2[0]), "the container was not recreated");
    let all = w.host.sim.docker(&["ps", "-a", "-q", "--no-trunc"]);
    assert!(!all.contains(&ids1[0]), "the old container still exists");
    assert_eq!(
        w.host.releases(),
        by_name(vec![first.clone(), second.clone()])
    );
    let st = w.host.state();
    assert_eq!(st["previous"], first.as_str());
    assert_eq!(st["sequencer"], "0B");
}

#[test]
fn same_version_again_is_a_noop_that_checks_what_runs() {
    let w = World::new("noop");
    let b = w.healthy("v1");
    assert_code(&w.deploy(&b, "ver-1", "0A"), 0, "deployed");
    let rel = w.host.current().unwrap();
    let ids = w.container_ids();
    let again = w.deploy(&b, "ver-1", "0A");
    assert_code(&again, 0, "noop");
    assert!(!again.output.contains("[recover]"), "{}", again.output);
    assert_eq!(again.field("release"), rel);
    assert_eq!(w.container_ids(), ids, "nothing restarted");
    assert_eq!(
        w.host.server.hits(&w.host.object_target("ver-1")),
        1,
        "not downloaded again"
    );
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
    let ids = w.container_ids();
    let stale = w.deploy(&old, "ver-1", "0055AED6DCD90281E5");
    assert_code(&stale, 0, "stale");
    assert_eq!(w.host.current().unwrap(), rel);
    assert_eq!(w.container_ids(), ids);
    assert_eq!(
        w.host.server.hits(&w.host.object_target("ver-1")),
        0,
        "stale bundle not fetched"
    );
    // An operator's direct redeploy (no sequencer) goes through; the newest sequencer stays.
    assert_code(&w.deploy(&old, "ver-1", ""), 0, "deployed");
    assert_settled(&w, "v1");
    assert_eq!(w.host.state()["sequencer"], "0062E99A88DC407460");
}

#[test]
fn compose_healthcheck_is_the_gate_without_a_health_url() {
    let w = World::new("hcgate");
    let good = w.deployed("v1", "01");
    let mut vars = w.vars(&w.unhealthy("v2"), "ver-2", "02");
    vars.insert("DROPSHIP_HEALTH_URL".into(), "".into());
    let run = w.run(&vars);
    assert_code(&run, 9, "rolled_back");
    assert!(run.output.contains("no health URL") || run.output.contains("compose up failed"));
    assert_eq!(run.field("release"), good);
    assert_settled(&w, "v1");
    assert_eq!(w.host.state()["last_outcome"], "rolled_back");
}

/// A v2 whose containers are healthy but whose `url` is not: rolled back to v1, saying why.
fn assert_unhealthy_url_rolls_back(name: &str, url: &str, says: &str) {
    let w = World::new(name);
    w.deployed("v1", "01");
    let mut vars = w.vars(&w.healthy("v2"), "ver-2", "02");
    vars.insert("DROPSHIP_HEALTH_URL".into(), url.into());
    vars.insert("DROPSHIP_HEALTH_TIMEOUT".into(), "3".into());
    let run = w.run(&vars);
    assert_code(&run, 9, "rolled_back");
    assert_logged_steps(&run, &["switch", "health", "rollback"]);
    assert!(run.output.contains(says), "{}", run.output);
    assert_settled(&w, "v1");
    assert!(w.host.leftovers().is_empty(), "{:?}", w.host.leftovers());
}

#[test]
fn health_url_is_the_gate_when_compose_says_healthy() {
    // The container is healthy (its healthcheck fetches /app/health), the URL answers 404.
    assert_unhealthy_url_rolls_back(
        "urlgate",
        "http://127.0.0.1:8080/app/ready",
        "answered 4xx/5xx",
    );
}

#[test]
fn a_health_url_answering_a_redirect_is_not_healthy() {
    // busybox httpd answers a directory without its trailing slash with a redirect. Before the
    // fix, curl --fail took the 3xx for healthy and v2 stayed deployed, unchecked.
    assert_unhealthy_url_rolls_back(
        "redirect",
        "http://127.0.0.1:8080/app",
        "answered a redirect",
    );
}

#[test]
fn failing_first_deploy_leaves_nothing_running() {
    let w = World::new("firstbad");
    let run = w.deploy(&w.unhealthy("v1"), "ver-1", "01");
    assert_code(&run, 9, "rolled_back");
    assert_eq!(w.host.current(), None);
    assert!(w.host.running().is_empty(), "{:?}", w.host.running());
    assert!(w.host.get("/app/health").is_none());
    assert_eq!(w.host.state()["current"], "");
}

#[test]
fn compose_up_failures_port_taken_or_container_exiting_roll_back() {
    let w = World::new("upfail");
    w.deployed("v1", "01");
    // A port another container holds.
    w.host.sim.docker(&[
        "run",
        "-d",
        "--name",
        "squatter",
        "-p",
        "127.0.0.1:9090:80",
        dropship_tests::simhost::IMAGE,
        "sleep",
        "600",
    ]);
    let taken = AppFiles::healthy(8080, "v2").with(
        "compose.yaml",
        dropship_tests::host::compose_yaml(8080).replace(
            "      - \"127.0.0.1:8080:8000\"\n",
            "      - \"127.0.0.1:8080:8000\"\n      - \"127.0.0.1:9090:8001\"\n",
        ),
    );
    let run = w.deploy(&w.bundle(taken), "ver-2", "02");
    assert_code(&run, 9, "rolled_back");
    assert_settled(&w, "v1");
    // A container that exits at once.
    let exiting = AppFiles::healthy(8080, "v3").with(
        "compose.yaml",
        dropship_tests::host::compose_yaml(8080).replace(
            "echo start >> /store/starts && exec httpd -f -p 8000 -h /srv",
            "exit 3",
        ),
    );
    let run = w.deploy(&w.bundle(exiting), "ver-3", "03");
    assert_code(&run, 9, "rolled_back");
    assert_settled(&w, "v1");
}

#[test]
fn an_image_missing_from_the_host_and_every_registry_is_refused_before_the_switch() {
    let w = World::new("noimage");
    let good = w.deployed("v1", "01");
    let ids = w.container_ids();
    let missing = AppFiles::healthy(8080, "v2").with(
        "compose.yaml",
        dropship_tests::host::compose_yaml(8080).replace("busybox:1.35", "busybox:9.99-missing"),
    );
    let run = w.deploy(&w.bundle(missing), "ver-2", "02");
    assert_rejected_before_switch(&w, &run, 5, &good, &ids);
    assert!(
        run.message_contains("busybox:9.99-missing"),
        "{}",
        run.output
    );
}

#[test]
fn remove_orphans_removes_a_service_the_new_release_dropped() {
    let w = World::new("orphans");
    let with_side = AppFiles::healthy(8080, "v1").with(
        "compose.yaml",
        format!(
            "{}  side:\n    image: {}\n    init: true\n    command: [\"sleep\", \"600\"]\n",
            dropship_tests::host::compose_yaml(8080).replace("volumes:\n  store:\n", ""),
            dropship_tests::simhost::IMAGE
        ) + "volumes:\n  store:\n",
    );
    assert_code(
        &w.deploy(&w.bundle(with_side), "ver-1", "01"),
        0,
        "deployed",
    );
    let services: Vec<String> = w.host.running().into_iter().map(|c| c.service).collect();
    assert_eq!(services, ["side", "web"]);
    assert_code(&w.deploy(&w.healthy("v2"), "ver-2", "02"), 0, "deployed");
    let services: Vec<String> = w.host.running().into_iter().map(|c| c.service).collect();
    assert_eq!(services, ["web"], "the dropped service's container is gone");
    assert_settled(&w, "v2");
}

#[test]
fn compose_profiles_are_really_enabled() {
    let w = World::new("profiles");
    let files = AppFiles::healthy(8080, "v1").with(
        "compose.yaml",
        format!(
            "{}  worker:\n    image: {}\n    init: true\n    profiles: [\"extra\"]\n    command: [\"sleep\", \"600\"]\n",
            dropship_tests::host::compose_yaml(8080).replace("volumes:\n  store:\n", ""),
            dropship_tests::simhost::IMAGE
        ) + "volumes:\n  store:\n",
    );
    let b = w.bundle(files);
    assert_code(&w.deploy(&b, "ver-1", "01"), 0, "deployed");
    let services: Vec<String> = w.host.running().into_iter().map(|c| c.service).collect();
    assert_eq!(services, ["web"], "profile not enabled: no worker");
    let mut vars = w.vars(&b, "ver-2", "02");
    vars.insert("DROPSHIP_PROFILES".into(), "extra".into());
    assert_code(&w.run(&vars), 0, "deployed");
    let services: Vec<String> = w.host.running().into_iter().map(|c| c.service).collect();
    assert_eq!(services, ["web", "worker"]);
}

#[test]
fn named_volumes_env_and_shared_data_survive_deploys_and_rollbacks() {
    let w = World::new("data");
    let v1 = w.bundle(AppFiles::healthy(8080, "v1").with("data/seed.txt", "seed v1\n"));
    assert_code(&w.deploy(&v1, "ver-1", "01"), 0, "deployed");
    assert_eq!(
        fs::read_to_string(w.root().join("shared/data/seed.txt")).unwrap(),
        "seed v1\n"
    );
    // The app writes through its mount of shared/data.
    w.host.sh(&format!(
        "docker exec {} sh -c 'echo rows=1 > /srv/data/app.db'",
        w.container_ids()[0]
    ));
    let v2 = w.bundle(AppFiles::healthy(8080, "v2").with("data/seed.txt", "seed v2\n"));
    assert_code(&w.deploy(&v2, "ver-2", "02"), 0, "deployed");
    assert_code(
        &w.deploy(&w.unhealthy("v3"), "ver-3", "03"),
        9,
        "rolled_back",
    );
    assert_code(&w.run(&w.host.rollback_vars("")), 0, "rolled_back");
    assert_settled(&w, "v1");
    assert_eq!(
        fs::read_to_string(w.root().join("shared/.env")).unwrap(),
        format!("SECRET_KEY={CANARY}\n")
    );
    assert_eq!(
        fs::read_to_string(w.root().join("shared/data/seed.txt")).unwrap(),
        "seed v1\n",
        "a later bundle's seed never overwrites shared/"
    );
    assert_eq!(w.host.get("/data/app.db"), Some((200, "rows=1\n".into())));
    // The named volume (project-scoped) kept every start: v1, v2, v3 (failed), v2 again
    // (rollback), v1 (requested rollback).
    let starts = w.host.sh(&format!(
        "docker exec {} cat /store/starts",
        w.container_ids()[0]
    ));
    assert_eq!(starts.lines().count(), 5, "{starts}");
    for rel in w.host.releases() {
        let d = w.root().join("releases").join(&rel);
        assert!(fs::symlink_metadata(d.join("data")).unwrap().is_symlink());
        assert!(fs::symlink_metadata(d.join(".env")).unwrap().is_symlink());
    }
}

// -----------------------------------------------------------------------------------------
// refusals before the switch

/// Nothing was switched and the running release (its very containers) is untouched.
fn assert_rejected_before_switch(w: &World, run: &Run, code: i32, good: &str, ids: &[String]) {
    assert_code(run, code, "failed");
    assert_eq!(run.field("release"), good);
    assert_eq!(w.host.current().as_deref(), Some(good));
    assert!(
        w.host.releases().iter().all(|r| !r.contains(".partial")),
        "{:?}",
        w.host.releases()
    );
    assert!(w.host.leftovers().is_empty(), "{:?}", w.host.leftovers());
    assert_eq!(w.container_ids(), ids, "running containers untouched");
    assert_eq!(w.host.state()["current"], good);
    assert_eq!(w.host.state()["pending"], "");
    assert_eq!(w.host.audit().last().unwrap()["outcome"], "failed");
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
fn invalid_compose_file_is_refused_before_the_switch() {
    let w = World::new("badcompose");
    let good = w.deployed("v1", "01");
    let ids = w.container_ids();
    let broken = w.bundle(
        AppFiles::healthy(8080, "v2").with("compose.yaml", "services:\n  web: [unclosed\n"),
    );
    let run = w.deploy(&broken, "ver-2", "02");
    assert_rejected_before_switch(&w, &run, 7, &good, &ids);
    assert!(run.output.contains("docker compose config rejected"));
}

#[test]
fn checksum_mismatch_is_refused() {
    let w = World::new("badsum");
    let good = w.deployed("v1", "01");
    let ids = w.container_ids();
    let mut vars = w.vars(&w.healthy("v2"), "ver-2", "02");
    vars.insert("DROPSHIP_SHA256".into(), "ab".repeat(32));
    let run = w.run(&vars);
    assert_rejected_before_switch(&w, &run, 5, &good, &ids);
    assert!(run.message_contains("SHA-256 mismatch"));
}

#[test]
fn download_failures_are_refused_403_not_retried_500_retried_truncated_detected() {
    let w = World::new("dlfail");
    let good = w.deployed("v1", "01");
    let ids = w.container_ids();
    let b2 = w.healthy("v2");
    let base = w.vars(&b2, "ver-2", "02");
    for (version, reply, max_hits) in [
        ("forbidden", Reply::Status(403), 1),
        ("broken", Reply::Status(500), 4),
        ("short", Reply::Truncated(b2.bytes.clone()), 4),
        // Redirects are not followed (a signature is for one host), nor taken for the object.
        ("moved", Reply::Status(301), 1),
    ] {
        let target = w.host.object_target(version);
        w.host.server.set(&target, reply);
        let mut vars = base.clone();
        vars.insert("DROPSHIP_VERSION_ID".into(), version.into());
        let run = w.run(&vars);
        assert_rejected_before_switch(&w, &run, 5, &good, &ids);
        assert_eq!(
            w.host.server.hits(&target),
            max_hits,
            "requests for {target}"
        );
    }
    let mut vars = base.clone();
    vars.insert("DROPSHIP_VERSION_ID".into(), "short".into());
    vars.insert("DROPSHIP_BUNDLE_BYTES".into(), "0".into());
    let run = w.run(&vars);
    assert_rejected_before_switch(&w, &run, 5, &good, &ids);
}

#[test]
fn disk_preflight_refuses_bundles_that_do_not_fit() {
    let w = World::new("disk");
    let good = w.deployed("v1", "01");
    let ids = w.container_ids();
    let mut vars = w.vars(&w.healthy("v2"), "ver-2", "02");
    vars.insert("DROPSHIP_UNPACKED_BYTES".into(), "999999999999999".into());
    let run = w.run(&vars);
    assert_rejected_before_switch(&w, &run, 4, &good, &ids);
    assert_eq!(
        w.host.server.hits(&w.host.object_target("ver-2")),
        0,
        "nothing downloaded"
    );
}

#[test]
fn execution_timeout_too_short_for_a_safe_switch_is_refused_before_anything() {
    let w = World::new("shorttime");
    let good = w.deployed("v1", "01");
    let ids = w.container_ids();
    let mut vars = w.vars(&w.healthy("v2"), "ver-2", "02");
    // Health 20 s: the new release's gate and a rollback's need more than 100 s.
    vars.insert("DROPSHIP_EXECUTION_TIMEOUT".into(), "100".into());
    let run = w.run(&vars);
    assert_rejected_before_switch(&w, &run, 4, &good, &ids);
    assert!(run.message_contains("execution timeout"), "{}", run.output);
    assert_eq!(
        w.host.server.hits(&w.host.object_target("ver-2")),
        0,
        "nothing downloaded"
    );
}

#[test]
fn pre_switch_hook_runs_in_the_new_release_and_its_failure_stops_the_deploy() {
    let w = World::new("hook");
    let good = w.deployed("v1", "01");
    let ids = w.container_ids();
    let hook = "#!/usr/bin/env bash\nset -e\necho \"migrating $(cat version.txt) prev=$DROPSHIP_PREVIOUS_RELEASE\" >> data/hook.log\n";
    let ok = w.bundle(AppFiles::healthy(8080, "v2").with("deploy/hook.sh", hook));
    let failing = w.bundle(
        AppFiles::healthy(8080, "v3").with("deploy/hook.sh", "#!/bin/sh\necho no >&2\nexit 3\n"),
    );
    let mut vars = w.vars(&failing, "ver-3", "03");
    vars.insert("DROPSHIP_PRE_SWITCH_HOOK".into(), "deploy/hook.sh".into());
    let run = w.run(&vars);
    assert_rejected_before_switch(&w, &run, 8, &good, &ids);
    let mut vars = w.vars(&ok, "ver-2", "04");
    vars.insert("DROPSHIP_PRE_SWITCH_HOOK".into(), "deploy/hook.sh".into());
    assert_code(&w.run(&vars), 0, "deployed");
    let log = fs::read_to_string(w.root().join("shared/data/hook.log")).unwrap();
    assert_eq!(log, format!("migrating v2 prev={good}\n"));
}

#[test]
fn required_env_rules_presence_non_empty_length_and_pattern_never_print_the_value() {
    let w = World::new("reqenv");
    let good = w.deployed("v1", "01");
    let ids = w.container_ids();
    let rules = vec![
        EnvRule::named("DATABASE_URL"),
        EnvRule {
            min_length: 1,
            ..EnvRule::named("REGION")
        },
        EnvRule {
            min_length: 32,
            ..EnvRule::named("SECRET_KEY")
        },
        EnvRule {
            pattern: Some("(dev|prod)".into()),
            ..EnvRule::named("MODE")
        },
    ];
    let mut vars = w.vars(&w.healthy("v2"), "ver-2", "02");
    vars.insert("DROPSHIP_REQUIRED_ENV".into(), required_env_value(&rules));
    // CANARY is 29 bytes (too short), REGION empty, MODE wrong, DATABASE_URL missing.
    assert!(CANARY.len() < 32);
    w.write_env("REGION=\nMODE=staging-secret-mode\n");
    let run = w.run(&vars);
    assert_rejected_before_switch(&w, &run, 7, &good, &ids);
    let msg = run.field("message");
    for want in [
        "DATABASE_URL is not set",
        "REGION is shorter than 1 bytes",
        "SECRET_KEY is shorter than 32 bytes",
        "MODE does not match its pattern",
    ] {
        assert!(msg.contains(want), "{want}: {msg}");
    }
    assert!(
        !run.output.contains("staging-secret-mode"),
        "{}",
        run.output
    );
    // All rules met: deployed; `export` and quotes are read as compose reads them.
    let long = "k".repeat(40);
    w.host.write_shared(
        ".env",
        &format!("export SECRET_KEY=\"{long}\"\nREGION=eu\nMODE=prod # comment\nDATABASE_URL='postgres://db/app'\n"),
    );
    let run = checked(w.host.run(&render(&vars)));
    assert_code(&run, 0, "deployed");
    assert!(!run.output.contains(&long));
}

#[test]
fn a_malformed_env_line_is_never_printed() {
    let w = World::new("badenv");
    let good = w.deployed("v1", "01");
    let ids = w.container_ids();
    let vars = w.vars(&w.healthy("v2"), "ver-2", "02");
    for bad in [
        "SECRET_TOKEN hunter2-malformed-1\n",
        "SECRET_TOKEN=\"hunter2-malformed-2\n",
        "SECRET TOKEN=hunter2-malformed-3\n",
        "export SECRET TOKEN=hunter2-malformed-4\n",
    ] {
        w.write_env(bad);
        let run = w.run(&vars);
        assert_rejected_before_switch(&w, &run, 7, &good, &ids);
        assert!(run.message_contains("shared/.env line"), "{}", run.output);
        assert!(
            !run.output.contains("hunter2"),
            "{bad:?} printed:\n{}",
            run.output
        );
    }
}

/// Settings at each contract bound pass the host's validation; one past each is refused with
/// exit 2 naming the input, touching nothing. The same cases go through the contract's
/// `DeploySettings::validate`, so both sides decide alike.
#[test]
fn every_deploy_setting_bound_is_the_same_on_the_host_and_in_the_contract() {
    let w = World::new("bounds");
    let b = w.healthy("v1");
    let base = {
        let mut v = w.vars(&b, "ver-1", "01");
        // Validation passes, then the download's checksum fails: nothing is deployed.
        v.insert("DROPSHIP_SHA256".into(), "ab".repeat(32));
        v
    };
    let path = |n: usize| format!("{}{}", "d/".repeat((n - 1) / 2), "x".repeat(2 - n % 2));
    let list = |n: usize, p: &str| (0..n).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
    let rules = |n: usize| {
        (0..n)
            .map(|i| EnvRule::named(&format!("V{i}")))
            .collect::<Vec<_>>()
    };
    let with = |f: &dyn Fn(&mut DeploySettings)| {
        let mut s = DeploySettings::default();
        f(&mut s);
        s
    };
    let proxied = |f: &dyn Fn(&mut ProxySettings)| {
        let mut p = ProxySettings {
            service: "web".into(),
            port: 8000,
            listen: "127.0.0.1:8080".into(),
            health_path: "/".into(),
            drain_timeout_secs: 30,
            image: dropship_tests::simhost::IMAGE.into(),
        };
        f(&mut p);
        with(&|s| {
            s.strategy = Strategy::StartFirst;
            s.proxy = Some(p.clone());
        })
    };
    let long_image = format!("i{}", "m".repeat(bounds::MAX_IMAGE_LEN - 1));
    w.host
        .sim
        .docker(&["tag", dropship_tests::simhost::IMAGE, &long_image]);
    use bounds::*;
    let cases: Vec<(&str, DeploySettings, DeploySettings)> = vec![
        (
            "DROPSHIP_STRATEGY",
            proxied(&|_| {}),
            with(&|s| s.strategy = Strategy::StartFirst),
        ),
        (
            "DROPSHIP_PROXY_SERVICE",
            proxied(&|p| p.service = "s".repeat(MAX_SERVICE_LEN)),
            proxied(&|p| p.service = "s".repeat(MAX_SERVICE_LEN + 1)),
        ),
        ("DROPSHIP_PROXY_SERVICE", with(&|_| {}), {
            let mut s = proxied(&|_| {});
            s.strategy = Strategy::Recreate;
            s
        }),
        (
            "DROPSHIP_PROXY_PORT",
            proxied(&|p| p.port = 65535),
            proxied(&|p| p.port = 65536),
        ),
        (
            "DROPSHIP_PROXY_PORT",
            proxied(&|p| p.port = 1),
            proxied(&|p| p.port = 0),
        ),
        (
            "DROPSHIP_PROXY_LISTEN",
            proxied(&|p| p.listen = "127.0.0.255:65535".into()),
            proxied(&|p| p.listen = "127.0.0.256:8080".into()),
        ),
        (
            "DROPSHIP_PROXY_LISTEN",
            proxied(&|p| p.listen = "0.0.0.0:1".into()),
            proxied(&|p| p.listen = "127.0.0.1:65536".into()),
        ),
        (
            "DROPSHIP_PROXY_LISTEN",
            proxied(&|p| p.listen = "10.0.0.1:80".into()),
            proxied(&|p| p.listen = "127.0.0.01:80".into()),
        ),
        (
            "DROPSHIP_PROXY_HEALTH_PATH",
            proxied(&|p| p.health_path = format!("/{}", "h".repeat(MAX_HEALTH_PATH_LEN - 1))),
            proxied(&|p| p.health_path = format!("/{}", "h".repeat(MAX_HEALTH_PATH_LEN))),
        ),
        (
            "DROPSHIP_PROXY_HEALTH_PATH",
            proxied(&|p| p.health_path = "/a?b=c&d=%20".into()),
            proxied(&|p| p.health_path = "up".into()),
        ),
        (
            "DROPSHIP_PROXY_DRAIN_TIMEOUT",
            proxied(&|p| p.drain_timeout_secs = *DRAIN_TIMEOUT_SECS.end()),
            proxied(&|p| p.drain_timeout_secs = DRAIN_TIMEOUT_SECS.end() + 1),
        ),
        (
            "DROPSHIP_PROXY_IMAGE",
            proxied(&|p| p.image = long_image.clone()),
            proxied(&|p| p.image = format!("{long_image}m")),
        ),
        (
            "DROPSHIP_PROXY_IMAGE",
            proxied(&|_| {}),
            proxied(&|p| p.image = "caddy;id".into()),
        ),
        (
            "DROPSHIP_COMPOSE_FILE",
            with(&|s| s.compose_file = path(MAX_PATH_LEN)),
            with(&|s| s.compose_file = path(MAX_PATH_LEN + 1)),
        ),
        (
            "DROPSHIP_PRE_SWITCH_HOOK",
            with(&|s| s.pre_switch_hook = Some(path(MAX_PATH_LEN))),
            with(&|s| s.pre_switch_hook = Some(path(MAX_PATH_LEN + 1))),
        ),
        (
            "DROPSHIP_SHARED_PATHS",
            with(&|s| s.shared_paths = vec![format!("s{}", path(MAX_PATH_LEN - 1))]),
            with(&|s| s.shared_paths = vec![format!("s{}", path(MAX_PATH_LEN))]),
        ),
        (
            "DROPSHIP_SHARED_PATHS",
            with(&|s| s.shared_paths = list(MAX_SHARED_PATHS, "p")),
            with(&|s| s.shared_paths = list(MAX_SHARED_PATHS + 1, "p")),
        ),
        (
            "DROPSHIP_SHARED_PATHS",
            with(&|s| s.shared_paths = vec!["-data".into(), ".dropshipx".into()]),
            with(&|s| s.shared_paths = vec![".dropship".into()]),
        ),
        (
            "DROPSHIP_SHARED_PATHS",
            with(&|s| s.shared_paths = vec!["data".into(), "data2".into()]),
            with(&|s| s.shared_paths = vec!["data".into(), "data/uploads".into()]),
        ),
        (
            "DROPSHIP_PROFILES",
            with(&|s| s.profiles = vec!["p".repeat(MAX_PROFILE_LEN)]),
            with(&|s| s.profiles = vec!["p".repeat(MAX_PROFILE_LEN + 1)]),
        ),
        (
            "DROPSHIP_PROFILES",
            with(&|s| s.profiles = list(MAX_PROFILES, "p")),
            with(&|s| s.profiles = list(MAX_PROFILES + 1, "p")),
        ),
        (
            "DROPSHIP_HEALTH_URL",
            with(&|s| {
                s.health_url = Some(format!("http://h/{}", "a".repeat(MAX_HEALTH_URL_LEN - 9)))
            }),
            with(&|s| {
                s.health_url = Some(format!("http://h/{}", "a".repeat(MAX_HEALTH_URL_LEN - 8)))
            }),
        ),
        (
            "DROPSHIP_HEALTH_TIMEOUT",
            with(&|s| s.health_timeout_secs = *HEALTH_TIMEOUT_SECS.start()),
            with(&|s| s.health_timeout_secs = HEALTH_TIMEOUT_SECS.start() - 1),
        ),
        (
            "DROPSHIP_HEALTH_TIMEOUT",
            with(&|s| s.health_timeout_secs = *HEALTH_TIMEOUT_SECS.end()),
            with(&|s| s.health_timeout_secs = HEALTH_TIMEOUT_SECS.end() + 1),
        ),
        (
            "DROPSHIP_KEEP_RELEASES",
            with(&|s| s.keep_releases = *KEEP_RELEASES.start()),
            with(&|s| s.keep_releases = KEEP_RELEASES.start() - 1),
        ),
        (
            "DROPSHIP_KEEP_RELEASES",
            with(&|s| s.keep_releases = *KEEP_RELEASES.end()),
            with(&|s| s.keep_releases = KEEP_RELEASES.end() + 1),
        ),
        (
            "DROPSHIP_REQUIRED_ENV",
            with(&|s| s.required_env = rules(MAX_ENV_RULES)),
            with(&|s| s.required_env = rules(MAX_ENV_RULES + 1)),
        ),
        (
            "DROPSHIP_REQUIRED_ENV",
            with(&|s| s.required_env = vec![EnvRule::named(&"V".repeat(MAX_ENV_NAME_LEN))]),
            with(&|s| s.required_env = vec![EnvRule::named(&"V".repeat(MAX_ENV_NAME_LEN + 1))]),
        ),
        (
            "DROPSHIP_REQUIRED_ENV",
            with(&|s| {
                s.required_env = vec![EnvRule {
                    min_length: MAX_ENV_MIN_LENGTH,
                    pattern: Some("a".repeat(MAX_ENV_PATTERN_LEN)),
                    ..EnvRule::named("K")
                }]
            }),
            with(&|s| {
                s.required_env = vec![EnvRule {
                    min_length: MAX_ENV_MIN_LENGTH + 1,
                    ..EnvRule::named("K")
                }]
            }),
        ),
        (
            "DROPSHIP_REQUIRED_ENV",
            with(&|s| {
                s.required_env = vec![EnvRule {
                    pattern: Some("a".repeat(MAX_ENV_PATTERN_LEN)),
                    ..EnvRule::named("K")
                }]
            }),
            with(&|s| {
                s.required_env = vec![EnvRule {
                    pattern: Some("a".repeat(MAX_ENV_PATTERN_LEN + 1)),
                    ..EnvRule::named("K")
                }]
            }),
        ),
    ];
    for (name, at, past) in &cases {
        at.validate()
            .unwrap_or_else(|e| panic!("{name}: the contract refused the bound: {e}"));
        assert!(
            past.validate().is_err(),
            "{name}: the contract accepted {past:?}"
        );
        let run = w.run(&settings_vars(&base, at));
        assert_eq!(
            run.code, 5,
            "{name} at its bound must pass validation (then fail the checksum):\n{}",
            run.output
        );
        let run = w.run(&settings_vars(&base, past));
        assert_code(&run, 2, "failed");
        assert!(run.message_contains(name), "{name}:\n{}", run.output);
    }
    assert_eq!(w.host.current(), None, "nothing was ever deployed");
}

/// `DROPSHIP_REGION` and `DROPSHIP_S3_ENDPOINT` pass on the host exactly when the contract
/// accepts them (valid ones then stop at the disk preflight, before any download).
#[test]
fn region_and_s3_endpoint_rules_are_the_same_on_the_host_and_in_the_contract() {
    let w = World::new("where");
    let mut base = w.vars(&w.healthy("v1"), "ver-1", "01");
    base.insert("DROPSHIP_UNPACKED_BYTES".into(), "999999999999999".into());
    let host_255 = format!("https://{}.com", "a".repeat(MAX_S3_ENDPOINT_LEN - 12));
    let cases: Vec<(&str, String)> = [
        ("DROPSHIP_REGION", "eu-west-1"),
        ("DROPSHIP_REGION", "us-gov-west-1"),
        ("DROPSHIP_REGION", "EU-west-1"),
        ("DROPSHIP_REGION", "eu-west"),
        ("DROPSHIP_REGION", "eu-west-100"),
        ("DROPSHIP_S3_ENDPOINT", "https://s3.eu-west-1.amazonaws.com"),
        ("DROPSHIP_S3_ENDPOINT", "https://10.0.0.5:65535"),
        ("DROPSHIP_S3_ENDPOINT", "https://10.0.0.5:65536"),
        ("DROPSHIP_S3_ENDPOINT", "https://s3.amazonaws.com:0"),
        ("DROPSHIP_S3_ENDPOINT", "https://s3.amazonaws.com/"),
        ("DROPSHIP_S3_ENDPOINT", "https://s3.amazonaws.com/bucket"),
        ("DROPSHIP_S3_ENDPOINT", "https://user@s3.amazonaws.com"),
        ("DROPSHIP_S3_ENDPOINT", "https://s3..amazonaws.com"),
        ("DROPSHIP_S3_ENDPOINT", "http://127.0.0.255:5000"),
        ("DROPSHIP_S3_ENDPOINT", "http://127.0.0.256:5000"),
        ("DROPSHIP_S3_ENDPOINT", "http://localhost"),
        ("DROPSHIP_S3_ENDPOINT", "http://localhost.evil.example"),
        ("DROPSHIP_S3_ENDPOINT", "http://127.0.0.1.evil.example"),
        ("DROPSHIP_S3_ENDPOINT", "http://10.0.0.5"),
        ("DROPSHIP_S3_ENDPOINT", "ftp://s3.amazonaws.com"),
        ("DROPSHIP_S3_ENDPOINT", ""),
    ]
    .into_iter()
    .map(|(n, v)| (n, v.to_owned()))
    .chain([
        (
            "DROPSHIP_REGION",
            format!("us-{}-1", "w".repeat(MAX_REGION_LEN - 5)),
        ),
        (
            "DROPSHIP_REGION",
            format!("us-{}-1", "w".repeat(MAX_REGION_LEN - 4)),
        ),
        ("DROPSHIP_S3_ENDPOINT", host_255.clone()),
        ("DROPSHIP_S3_ENDPOINT", format!("{host_255}m")),
    ])
    .collect();
    let mut verdicts = Vec::new();
    for (name, value) in &cases {
        let contract_ok = if *name == "DROPSHIP_REGION" {
            check_region(value).is_ok()
        } else {
            check_s3_endpoint(value).is_ok()
        };
        let mut vars = base.clone();
        vars.insert(name.to_string(), value.clone());
        let run = w.run(&vars);
        let host_ok = match run.code {
            4 => true,
            2 => {
                assert!(run.message_contains(name), "{name}:\n{}", run.output);
                false
            }
            other => panic!("{name}={value:?}: exit {other}:\n{}", run.output),
        };
        verdicts.push((*name, value.clone(), contract_ok, host_ok));
    }
    let disagree: Vec<_> = verdicts.iter().filter(|v| v.2 != v.3).collect();
    assert!(
        disagree.is_empty(),
        "(name, value, contract, host): {disagree:#?}"
    );
    assert!(verdicts.iter().any(|v| v.2) && verdicts.iter().any(|v| !v.2));
    assert_eq!(w.host.current(), None, "nothing was ever deployed");
}

/// A host whose instance has no role (no instance profile) cannot download: a clear exit 5
/// that says what to attach, before anything is fetched or changed.
#[test]
fn a_host_without_an_instance_role_fails_clearly_and_changes_nothing() {
    let w = World::new("norole");
    let good = w.deployed("v1", "01");
    let ids = w.container_ids();
    w.host.sim.imds().set_role(None);
    let run = w.run(&w.vars(&w.healthy("v2"), "ver-2", "02"));
    assert_rejected_before_switch(&w, &run, 5, &good, &ids);
    assert!(
        run.message_contains("no IAM role") && run.message_contains("instance profile"),
        "{}",
        run.output
    );
    assert_eq!(
        w.host.server.hits(&w.host.object_target("ver-2")),
        0,
        "nothing requested without credentials"
    );
    // With the role back, the same deploy goes through.
    w.host.sim.imds().set_role(Some(FAKE_ROLE));
    assert_code(&w.deploy(&w.healthy("v2"), "ver-2", "02"), 0, "deployed");
}

/// Deploy inputs carrying `s`, rendered as the Lambda renders settings.
fn settings_vars(base: &Vars, s: &DeploySettings) -> Vars {
    let mut v = base.clone();
    for (k, val) in [
        ("DROPSHIP_COMPOSE_FILE", s.compose_file.clone()),
        ("DROPSHIP_PROFILES", s.profiles.join(",")),
        (
            "DROPSHIP_HEALTH_URL",
            s.health_url.clone().unwrap_or_default(),
        ),
        ("DROPSHIP_HEALTH_TIMEOUT", s.health_timeout_secs.to_string()),
        ("DROPSHIP_SHARED_PATHS", s.shared_paths.join(",")),
        ("DROPSHIP_KEEP_RELEASES", s.keep_releases.to_string()),
        ("DROPSHIP_REQUIRED_ENV", required_env_value(&s.required_env)),
        (
            "DROPSHIP_PRE_SWITCH_HOOK",
            s.pre_switch_hook.clone().unwrap_or_default(),
        ),
        ("DROPSHIP_STRATEGY", s.strategy.as_str().to_owned()),
    ] {
        v.insert(k.into(), val);
    }
    let p = s.proxy.as_ref();
    for (k, val) in [
        ("DROPSHIP_PROXY_SERVICE", p.map(|p| p.service.clone())),
        ("DROPSHIP_PROXY_PORT", p.map(|p| p.port.to_string())),
        ("DROPSHIP_PROXY_LISTEN", p.map(|p| p.listen.clone())),
        (
            "DROPSHIP_PROXY_HEALTH_PATH",
            p.map(|p| p.health_path.clone()),
        ),
        (
            "DROPSHIP_PROXY_DRAIN_TIMEOUT",
            p.map(|p| p.drain_timeout_secs.to_string()),
        ),
        ("DROPSHIP_PROXY_IMAGE", p.map(|p| p.image.clone())),
    ] {
        v.insert(k.into(), val.unwrap_or_default());
    }
    // Time enough for the largest health timeout.
    v.insert("DROPSHIP_EXECUTION_TIMEOUT".into(), "172800".into());
    v
}

/// The largest inputs the contract allows, rendered by the Lambda, fit SSM's command size
/// limit and run on a host.
#[test]
fn the_rendered_command_with_the_largest_allowed_inputs_fits_ssm_and_runs() {
    let w = World::new("largest");
    let b = w.healthy("v1");
    let mut vars = w.vars(&b, &"v".repeat(1024), "0".repeat(128).as_str());
    vars.insert("DROPSHIP_SHA256".into(), "ab".repeat(32));
    let s = DeploySettings::largest_allowed();
    s.validate().unwrap();
    // The largest settings are start-first with the longest image name: present on the host
    // (the proxy preflight pulls a missing one), then the download is refused.
    let image = &s.proxy.as_ref().unwrap().image;
    w.host
        .sim
        .docker(&["tag", dropship_tests::simhost::IMAGE, image]);
    let mut vars = settings_vars(&vars, &s);
    let key = format!("releases/{}/{}/staging.tar.gz", "k".repeat(990), w.host.app);
    vars.insert("DROPSHIP_KEY".into(), key.clone());
    // The longest region; the endpoint is the harness's (its longest form is a contract
    // unit test, its bytes are counted by the Lambda's largest-command test).
    vars.insert(
        "DROPSHIP_REGION".into(),
        format!("us-{}-1", "w".repeat(MAX_REGION_LEN - 5)),
    );
    let cmd = render(&vars);
    assert!(cmd.len() <= MAX_COMMAND_BYTES, "{} bytes", cmd.len());
    eprintln!(
        "largest command: {} of {MAX_COMMAND_BYTES} bytes",
        cmd.len()
    );
    // Signed for the longest region, which this server does not expect: it must refuse.
    let target = object_request_target(BUCKET, &key, &"v".repeat(1024));
    w.host.server.set(&target, Reply::Body(b.bytes.clone()));
    let run = checked(w.host.run(&cmd));
    assert_eq!(
        run.code, 5,
        "valid inputs, refused download:\n{}",
        run.output
    );
    assert!(run.message_contains("HTTP 403"), "{}", run.output);
    assert_eq!(w.host.server.hits(&target), 1, "{}", run.output);
}

// -----------------------------------------------------------------------------------------
// issue 12: one test per confirmed defect

#[test]
fn overlapping_shared_paths_never_delete_shared_files() {
    let w = World::new("overlap");
    let good = w.deployed("v1", "01");
    w.host.write_shared("data/uploads/photo.jpg", "precious\n");
    let mut vars = w.vars(&w.healthy("v2"), "ver-2", "02");
    vars.insert(
        "DROPSHIP_SHARED_PATHS".into(),
        ".env,data,data/uploads".into(),
    );
    let run = w.run(&vars);
    assert_code(&run, 2, "failed");
    assert!(run.message_contains("overlaps"), "{}", run.output);
    // Before the fix the second deploy removed shared/data/uploads through the data link.
    assert_eq!(
        fs::read_to_string(w.root().join("shared/data/uploads/photo.jpg")).unwrap(),
        "precious\n"
    );
    assert_eq!(w.host.current().unwrap(), good);
}

#[test]
fn a_failed_state_write_is_a_failed_deploy_not_a_silent_downgrade() {
    // The app root on a small tmpfs of the host's own, filled while v2's health is checked:
    // the commit (state.json) cannot be written.
    let w = World::with_host(Host::start_at("statefull", "/run/full/statefull"));
    w.host
        .sh("mkdir -p /run/full && mount -t tmpfs -o size=48m tmpfs /run/full");
    w.write_env("");
    w.deployed("v1", "01");
    let probe = Probe::install(&w.host);
    probe.pause_at("/^[0-9]+ curl .*app/health/");
    let (mut child, dir) = w.spawn(&w.vars(&w.healthy("v2"), "ver-2", "02"), Some(&probe));
    assert!(
        probe.wait_paused(&mut child).is_some(),
        "v2 never reached its health check"
    );
    fill_disk(&w.host, "/run/full");
    probe.release();
    let run = w.finish(child, &dir);
    // Before the fix: exit 0 "deployed", and the next run's recovery went back to v1.
    assert_code(&run, 9, "rolled_back");
    assert!(
        run.message_contains("state.json could not be written"),
        "{}",
        run.output
    );
    assert_eq!(w.host.serving().as_deref(), Some("v1"));
    assert_eq!(w.host.state()["version_id"], "ver-v1");
    free_disk(&w.host, "/run/full");
    assert_code(&w.deploy(&w.healthy("v2b"), "ver-2b", "03"), 0, "deployed");
    assert_settled(&w, "v2b");
}

fn fill_disk(host: &Host, mount: &str) {
    let out = host
        .sim
        .command("sh")
        .args([
            "-c",
            &format!("cat /dev/zero > {mount}/filler; df -k {mount}"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" 100% "), "not full: {text}");
}

fn free_disk(host: &Host, mount: &str) {
    host.sh(&format!("rm -f {mount}/filler"));
}

#[test]
fn missing_or_unreadable_state_json_never_stops_the_running_app() {
    let w = World::new("nostate");
    let good = w.deployed("v1", "01");
    let ids = w.container_ids();
    for damage in ["rm", "garbage"] {
        match damage {
            "rm" => fs::remove_file(w.root().join("state.json")).unwrap(),
            _ => fs::write(w.root().join("state.json"), "{ not json").unwrap(),
        }
        // A deploy that fails before the switch (wrong checksum).
        let mut vars = w.vars(&w.healthy("v2"), "ver-2", "02");
        vars.insert("DROPSHIP_SHA256".into(), "ab".repeat(32));
        let run = w.run(&vars);
        // Before the fix: `current` removed and the project stopped.
        assert_code(&run, 5, "failed");
        assert!(run.output.contains("[recover]"), "{}", run.output);
        assert_eq!(w.host.current().as_deref(), Some(good.as_str()));
        assert_eq!(w.container_ids(), ids, "verified in place, not restarted");
        assert_eq!(
            w.host.state()["current"],
            good.as_str(),
            "state.json rebuilt"
        );
        assert_eq!(w.host.state()["version_id"], "ver-v1");
        assert_settled(&w, "v1");
    }
}

#[test]
fn killed_during_the_rollbacks_compose_up_the_next_run_restores_what_runs() {
    let w = World::new("exit10kill");
    w.deployed("v1", "01");
    let good = w.deployed("v2", "02");
    let probe = Probe::install(&w.host);
    // The second `compose up` of the broken v3's run is the rollback's: kill the run there,
    // as SSM would.
    probe.pause_at(UP);
    let (mut child, _dir) = w.spawn(&w.vars(&w.unhealthy("v3"), "ver-3", "03"), Some(&probe));
    assert!(
        probe.wait_paused(&mut child).is_some(),
        "v3 never reached compose up"
    );
    probe.pause_next(UP);
    assert!(
        probe.wait_paused(&mut child).is_some(),
        "the rollback never started"
    );
    kill_agent_script(&mut child);
    probe.reset();
    // The broken v3's container runs while state.json and `current` say v2.
    assert_eq!(w.host.current().as_deref(), Some(good.as_str()));
    let v3_dir = w.host.running()[0].dir.clone();
    assert!(!v3_dir.ends_with(&good), "{v3_dir}");
    // A rerun of the good version: before the fix `noop` while v3 served.
    let run = w.deploy(&w.healthy("v2"), "ver-v2", "02");
    assert_code(&run, 0, "noop");
    assert!(run.output.contains("[recover]"), "{}", run.output);
    assert_settled(&w, "v2");
}

/// The probe's pattern for any `docker compose ... up` call.
const UP: &str = "/ docker compose .* up /";

#[test]
fn a_failed_rollback_exit_10_is_recovered_by_the_next_run() {
    let w = World::new("exit10");
    w.deployed("v1", "01");
    let good = w.deployed("v2", "02");
    let health = w.root().join("releases").join(&good).join("health");
    // v3 fails; while it does, v2 loses its health file, so the rollback fails too.
    let probe = Probe::install(&w.host);
    probe.pause_at(UP);
    let (mut child, dir) = w.spawn(&w.vars(&w.unhealthy("v3"), "ver-3", "03"), Some(&probe));
    assert!(probe.wait_paused(&mut child).is_some());
    fs::remove_file(&health).unwrap();
    probe.release();
    let run = w.finish(child, &dir);
    assert_code(&run, 10, "rollback_failed");
    assert_eq!(w.host.state()["last_outcome"], "rollback_failed");
    // The operator fixes v2; the rerun of the good version recovers instead of `noop`.
    fs::write(&health, "ok\n").unwrap();
    let run = w.deploy(&w.healthy("v2"), "ver-v2", "02");
    assert_code(&run, 0, "noop");
    assert!(
        run.output.contains("the last run could not bring"),
        "{}",
        run.output
    );
    assert_settled(&w, "v2");
    assert_eq!(w.host.state()["last_outcome"], "recovered");
}

/// A transfer that sends 1 KiB and then nothing.
fn stalled(w: &World, b: &Bundle) -> Vars {
    let vars = w.vars(b, "ver-2", "02");
    w.host.server.set(
        &w.host.object_target("ver-2"),
        Reply::Stall(b.bytes.clone()),
    );
    vars
}

#[test]
fn a_stalled_download_fails_in_bounded_time_and_never_holds_the_lock() {
    let w = World::new("stall");
    let good = w.deployed("v1", "01");
    let ids = w.container_ids();
    let mut vars = stalled(&w, &w.healthy("v2"));
    // SSM kills at 200 s; the switch and a rollback need 155 s of it (health 20 s each).
    vars.insert("DROPSHIP_EXECUTION_TIMEOUT".into(), "200".into());
    let t0 = Instant::now();
    let run = w.run(&vars);
    let took = t0.elapsed();
    // Before the fix: one attempt alone could take an hour (--max-time 3600).
    assert_rejected_before_switch(&w, &run, 5, &good, &ids);
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert!(
        w.host.sh("pgrep -x curl || true").trim().is_empty(),
        "curl left running"
    );
}

#[test]
fn the_lock_never_outlives_the_script_and_sigterm_stops_a_download_at_once() {
    let w = World::new("orphan");
    w.deployed("v1", "01");
    let vars = stalled(&w, &w.healthy("v2"));
    // SIGKILL to the script alone (not its group): curl must die with it, the lock free.
    let (mut child, _dir) = w.spawn(&vars, None);
    let target = w.host.object_target("ver-2");
    assert!(wait_until(Duration::from_secs(60), || w
        .host
        .server
        .hits(&target)
        > 0));
    let script = script_pid(child.id()).expect("the script runs");
    signal(script, "KILL");
    let _ = child.wait();
    // Before the fix: the orphaned curl kept fd 9 and with it the lock.
    assert!(
        wait_until(Duration::from_secs(5), || w
            .host
            .sh("pgrep -x curl || true")
            .trim()
            .is_empty()),
        "curl outlived the script"
    );
    w.host.sh(&format!("flock -n {}/.lock true", w.host.root));
    // SIGTERM (an operator, systemd): handled at once, not when curl gives up.
    let (child, dir) = w.spawn(&vars, None);
    let hits = w.host.server.hits(&target);
    assert!(wait_until(Duration::from_secs(60), || w
        .host
        .server
        .hits(&target)
        > hits));
    let t0 = Instant::now();
    signal(script_pid(child.id()).expect("the script runs"), "TERM");
    let run = w.finish(child, &dir);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?}",
        t0.elapsed()
    );
    assert_code(&run, 10, "failed");
    assert!(
        run.message_contains("stopped by SIGTERM during download"),
        "{}",
        run.output
    );
    assert!(w.host.sh("pgrep -x curl || true").trim().is_empty());
    assert_settled(&w, "v1");
}

#[test]
fn the_role_credentials_and_env_values_never_reach_a_command_line_environment_or_output() {
    let w = World::new("leak");
    w.deployed("v1", "01");
    let hook = "#!/bin/sh\nsleep 2\n";
    let b = w.bundle(AppFiles::healthy(8080, "v2").with("deploy/hook.sh", hook));
    let mut vars = w.vars(&b, "ver-2", "02");
    w.host.server.set(
        &w.host.object_target("ver-2"),
        Reply::Slow(b.bytes.clone(), Duration::from_secs(3)),
    );
    vars.insert("DROPSHIP_PRE_SWITCH_HOOK".into(), "deploy/hook.sh".into());
    let (mut child, dir) = w.spawn(&vars, None);
    // Scan every process of the machine (the host's included) while the run goes on: the
    // role's secret key and session token, and the IMDS session token, are nowhere.
    let secrets = [
        FAKE_ROLE.secret_access_key,
        FAKE_ROLE.session_token,
        IMDS_SESSION_TOKEN,
        CANARY,
    ];
    let mut seen = BTreeSet::new();
    let mut scans = 0;
    while child.try_wait().unwrap().is_none() {
        scans += 1;
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid == std::process::id() {
                continue;
            }
            for what in ["cmdline", "environ"] {
                let bytes = fs::read(format!("/proc/{pid}/{what}")).unwrap_or_default();
                let text = String::from_utf8_lossy(&bytes);
                for s in secrets {
                    if text.contains(s) {
                        let comm =
                            fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                        seen.insert(format!("{s} in {what} of {pid} ({})", comm.trim()));
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = w.finish(child, &dir);
    assert_code(&run, 0, "deployed");
    assert!(scans > 20, "the run was scanned {scans} times only");
    assert!(seen.is_empty(), "{seen:#?}");
    for s in secrets.iter().chain(&[FAKE_ROLE.access_key_id]) {
        assert!(!run.output.contains(s), "{s} in the output");
    }
    // The download really was signed with those credentials (the server checks the shape).
    let headers = w
        .host
        .server
        .last_headers(&w.host.object_target("ver-2"))
        .expect("the bundle was requested");
    let header = |n: &str| headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.clone());
    assert_eq!(
        header("x-amz-security-token").as_deref(),
        Some(FAKE_ROLE.session_token)
    );
    let auth = header("authorization").unwrap();
    assert!(
        auth.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential={}/",
            FAKE_ROLE.access_key_id
        )) && !auth.contains(FAKE_ROLE.secret_access_key),
        "{auth}"
    );
}

/// A tar.gz made by hand (the bundler never writes such entries), with its true SHA-256.
fn hand_made_bundle(setup: &str) -> Bundle {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("tree");
    fs::create_dir_all(&root).unwrap();
    fs::write(
        root.join("compose.yaml"),
        dropship_tests::host::compose_yaml(8080),
    )
    .unwrap();
    fs::write(root.join("health"), "ok\n").unwrap();
    fs::write(root.join("version.txt"), "hand\n").unwrap();
    let st = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -e; cd tree; {setup}; tar czf ../b.tar.gz ${{ENTRIES:-$(ls -A)}}"
        ))
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(st.success(), "building the hand-made tar failed");
    let bytes = fs::read(dir.path().join("b.tar.gz")).unwrap();
    Bundle {
        sha256: sha256_hex(&bytes),
        bytes,
        commit: "c".repeat(40),
    }
}

#[test]
fn unsafe_bundles_are_refused_from_their_listing_before_anything_is_unpacked() {
    let w = World::new("unsafe");
    let good = w.deployed("v1", "01");
    let ids = w.container_ids();
    let probe = Probe::install(&w.host);
    for (i, setup) in [
        "ln -s /etc etc-link",
        "mkdir d && ln -s ../../outside d/escape",
        "echo x > tool && chmod 4755 tool",
        "mkfifo pipe",
        "echo x > a && ln a hard",
        // A chain: `a -> .` makes a/a/a/r land at the top, and `../..` then leaves the app.
        "ln -s . a && ln -s ../.. r && ENTRIES='compose.yaml health a a/a/a/r'",
        // Looks inside, resolves outside: b = a/.. = the release's parent.
        "ln -s . a && ln -s a/.. b",
        // A name holding ' -> ' once hid the real target from the listing check.
        "mkdir -p d/d/d && ln -s ../../../.. 'd/d/d/l -> p'",
    ]
    .iter()
    .enumerate()
    {
        let b = hand_made_bundle(&format!("export ENTRIES=; {setup}"));
        let id = format!("unsafe-{i}");
        probe.reset();
        let (child, dir) = w.spawn(&w.vars(&b, &id, "02"), Some(&probe));
        let run = w.finish(child, &dir);
        assert_rejected_before_switch(&w, &run, 6, &good, &ids);
        assert!(
            run.message_contains("unsafe bundle"),
            "{setup}: {}",
            run.output
        );
        // Before the fix the bundle was extracted first and checked afterwards.
        let extracted: Vec<String> = probe
            .trace()
            .into_iter()
            .filter(|l| l.contains(" tar ") && l.contains(" -x "))
            .collect();
        assert!(
            extracted.is_empty(),
            "{setup}: unpacked before the check: {extracted:?}"
        );
    }
}

#[test]
fn entry_times_in_the_future_clock_skew_are_not_an_error() {
    let w = World::new("skew");
    w.deployed("v1", "01");
    let b = hand_made_bundle("touch -d '+1 hour' compose.yaml health version.txt");
    let run = w.deploy(&b, "ver-skew", "02");
    // Before the fix: exit 6 "tar warned ... time stamp in the future".
    assert_code(&run, 0, "deployed");
    assert_settled(&w, "hand");
}

#[test]
fn a_pre_switch_hook_runs_when_the_app_root_path_has_a_symlink() {
    let host = Host::start_at("hooklink", "/opt/link/hooklink");
    host.sh("mkdir -p /opt/real && ln -s real /opt/link");
    let w = World::with_host(host);
    let b = w.bundle(
        AppFiles::healthy(8080, "v1").with("deploy/hook.sh", "#!/bin/sh\ntouch data/hooked\n"),
    );
    let mut vars = w.vars(&b, "ver-1", "01");
    vars.insert("DROPSHIP_PRE_SWITCH_HOOK".into(), "deploy/hook.sh".into());
    let run = w.run(&vars);
    // Before the fix: exit 8 "is not a file inside the release".
    assert_code(&run, 0, "deployed");
    assert!(w
        .host
        .sim
        .path("/opt/real/hooklink/shared/data/hooked")
        .exists());
}

#[test]
fn a_killed_seed_copy_is_never_taken_for_a_seeded_path_and_its_release_is_removed() {
    let w = World::new("seed");
    w.deployed("v1", "01");
    // v2 brings a new shared path with many files to seed.
    let mut files = AppFiles::healthy(8080, "v2");
    for i in 0..300 {
        files = files.with(&format!("assets/{i:03}.txt"), format!("asset {i}\n"));
    }
    let b = w.bundle(files);
    let mut vars = w.vars(&b, "ver-2", "02");
    vars.insert("DROPSHIP_SHARED_PATHS".into(), ".env,data,assets".into());
    let probe = Probe::install(&w.host);
    probe.stop_in("/ cp -a /");
    let (mut child, _dir) = w.spawn(&vars, Some(&probe));
    assert!(
        probe.wait_paused(&mut child).is_some(),
        "the seed copy never started"
    );
    kill_agent_script(&mut child);
    let unswitched: Vec<String> = w
        .host
        .releases()
        .into_iter()
        .filter(|r| {
            w.root()
                .join("releases")
                .join(r)
                .join(".dropship/unswitched")
                .exists()
        })
        .collect();
    assert_eq!(unswitched.len(), 1, "the killed run's release is on disk");
    // Release names have a one-second clock in them: a rerun within the same second may
    // reuse the name, so the killed run's directory is recognised by a mark of its own.
    let killed_mark = w
        .root()
        .join("releases")
        .join(&unswitched[0])
        .join(".dropship/killed-run");
    fs::write(&killed_mark, "").unwrap();
    // The rerun: nothing half-copied is kept, the killed run's release is gone, the seed is
    // complete.
    let run = w.run(&vars);
    assert_code(&run, 0, "deployed");
    let survivors: Vec<String> = w
        .host
        .releases()
        .into_iter()
        .filter(|r| {
            w.root()
                .join("releases")
                .join(r)
                .join(".dropship/killed-run")
                .exists()
        })
        .collect();
    assert!(
        survivors.is_empty(),
        "kept the killed run's release: {survivors:?}"
    );
    let seeded = fs::read_dir(w.root().join("shared/assets"))
        .unwrap()
        .count();
    // Before the fix: the half-copied directory was kept as the seed.
    assert_eq!(seeded, 300);
    assert_settled(&w, "v2");
}

#[test]
fn failed_releases_are_pruned_and_keep_releases_counts_every_release() {
    let w = World::new("prune");
    w.deployed("v1", "01");
    for i in 2..=4 {
        let mut vars = w.vars(
            &w.unhealthy(&format!("v{i}")),
            &format!("ver-{i}"),
            &format!("0{i}"),
        );
        vars.insert("DROPSHIP_KEEP_RELEASES".into(), "2".into());
        assert_code(&w.run(&vars), 9, "rolled_back");
    }
    // Before the fix: four releases (every rolled-back one kept forever).
    assert_eq!(w.host.releases().len(), 2, "{:?}", w.host.releases());
    assert!(w.host.releases().contains(&w.host.current().unwrap()));
    // Healthy deploys with keep 2: the current and the previous.
    let mut names = Vec::new();
    for i in 5..=7 {
        let mut vars = w.vars(
            &w.healthy(&format!("v{i}")),
            &format!("ver-{i}"),
            &format!("0{i}"),
        );
        vars.insert("DROPSHIP_KEEP_RELEASES".into(), "2".into());
        assert_code(&w.run(&vars), 0, "deployed");
        names.push(w.host.current().unwrap());
    }
    assert_eq!(w.host.releases(), by_name(names[1..].to_vec()));
    assert!(wait_until(Duration::from_secs(120), || {
        fs::read_dir(w.root())
            .unwrap()
            .flatten()
            .all(|e| !e.file_name().to_string_lossy().starts_with(".trash."))
    }));
    assert_code(&w.run(&w.host.rollback_vars("")), 0, "rolled_back");
    assert_settled(&w, "v6");
}

#[test]
fn sigterm_right_after_the_switch_never_deletes_the_live_release() {
    let w = World::new("termswitch");
    w.deployed("v1", "01");
    let probe = Probe::install(&w.host);
    // The first call after `mv ... current` is the removal of the release's unswitched mark.
    probe.pause_at("/ rm -f -- .*unswitched/");
    let (mut child, dir) = w.spawn(&w.vars(&w.healthy("v2"), "ver-2", "02"), Some(&probe));
    assert!(probe.wait_paused(&mut child).is_some());
    let live = w.host.current().unwrap();
    // To the whole group: the paused `rm` dies, so the mark stays, and the script's trap
    // runs right after the switch.
    signal_group(&child, "TERM");
    let run = w.finish(child, &dir);
    // A TERM to the whole group also ends the agent's own shell by that signal, so the
    // process status is the agent's; what the script reports is its result line.
    assert_eq!(
        (run.outcome(), &run.result["exit_code"]),
        ("interrupted", &serde_json::json!(10)),
        "{}",
        run.output
    );
    // Before the fix: cleanup deleted the release `current` pointed at.
    assert!(
        w.root().join("releases").join(&live).is_dir(),
        "{live} deleted"
    );
    let status = w.run(&{
        let mut v = w.host.rollback_vars("");
        v.insert("DROPSHIP_ACTION".into(), "status".into());
        v
    });
    assert!(
        status.message_contains("NEEDS RECOVERY"),
        "{}",
        status.output
    );
    let run = w.deploy(&w.healthy("v2"), "ver-2", "02");
    assert_code(&run, 0, "deployed");
    assert_settled(&w, "v2");
}

#[test]
fn a_seeded_env_file_is_not_world_readable() {
    let w = World::new("envmode");
    fs::remove_file(w.root().join("shared/.env")).unwrap();
    let b = hand_made_bundle("printf 'FROM_BUNDLE=1\\n' > .env");
    let run = w.deploy(&b, "ver-1", "01");
    assert_code(&run, 0, "deployed");
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(w.root().join("shared/.env"))
        .unwrap()
        .permissions()
        .mode();
    // Before the fix: 0644 like the bundle's copy.
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
}

#[test]
fn two_environments_on_one_host_are_safe_by_construction() {
    // Same app root for two environments: the second is refused, nothing touched.
    let w = World::new("twoenv");
    let good = w.deployed("v1", "0F");
    let ids = w.container_ids();
    let mut prod = w.vars(&w.healthy("p1"), "ver-p1", "01");
    prod.insert("DROPSHIP_ENV".into(), "production".into());
    prod.insert(
        "DROPSHIP_KEY".into(),
        format!("releases/{}/production.tar.gz", w.host.app),
    );
    let run = w.run(&prod);
    assert_code(&run, 2, "failed");
    assert!(run.message_contains("{env}"), "{}", run.output);
    assert_eq!(w.host.current().unwrap(), good);
    assert_eq!(w.container_ids(), ids);
    // An app root per environment: its own project, its own sequencers (production's older
    // sequencer is not compared with staging's).
    let prod_root = format!("/opt/dropship/{}-production", w.host.app);
    prod.insert("DROPSHIP_APP_ROOT".into(), prod_root.clone());
    let p = w.host.sim.path(&prod_root);
    fs::create_dir_all(p.join("shared")).unwrap();
    fs::write(p.join("shared/.env"), format!("SECRET_KEY={CANARY}\n")).unwrap();
    let prod_bundle = w.bundle(AppFiles::healthy(8081, "p1"));
    let mut prod2 = w.vars(&prod_bundle, "ver-p1", "01");
    for k in ["DROPSHIP_ENV", "DROPSHIP_KEY", "DROPSHIP_APP_ROOT"] {
        prod2.insert(k.into(), prod[k].clone());
    }
    prod2.insert(
        "DROPSHIP_HEALTH_URL".into(),
        "http://127.0.0.1:8081/app/health".into(),
    );
    // Served under production's key, where the host asks S3 for it.
    w.host.server.set(
        &object_request_target(BUCKET, &prod["DROPSHIP_KEY"], "ver-p1"),
        Reply::Body(prod_bundle.bytes.clone()),
    );
    assert_code(&w.run(&prod2), 0, "deployed");
    let staging = w.host.containers(&format!("{}-staging", w.host.app));
    let production = w.host.containers(&format!("{}-production", w.host.app));
    assert_eq!((staging.len(), production.len()), (1, 1));
    assert_eq!(staging[0].id, ids[0], "staging untouched");
    assert_eq!(w.host.serving().as_deref(), Some("v1"));
    assert_eq!(
        w.host
            .sim
            .http_get("http://127.0.0.1:8081/app/version.txt")
            .map(|r| r.1),
        Some("p1\n".into())
    );
}

#[test]
fn an_existing_host_keeps_its_project_containers_and_named_volumes_on_upgrade() {
    // A host deployed by the script before projects were recorded: project = the app.
    let w = World::new("legacy");
    let b1 = w.healthy("v1");
    assert_code(&w.deploy(&b1, "ver-1", "01"), 0, "deployed");
    let rel = w.host.current().unwrap();
    let app = w.host.app.clone();
    w.host.sh(&format!(
        "cd {root} && docker compose -p {app}-staging down && docker compose -p {app} -f releases/{rel}/compose.yaml --env-file releases/{rel}/.env up -d --wait && docker exec $(docker ps -q) sh -c 'echo legacy-start >> /store/starts'",
        root = w.host.root
    ));
    // state.json as the script wrote it before it recorded projects.
    let state = fs::read_to_string(w.root().join("state.json")).unwrap();
    let legacy: Vec<&str> = state
        .lines()
        .filter(|l| {
            !["\"project\"", "\"pending\"", "\"keep_releases\""]
                .iter()
                .any(|k| l.contains(k))
        })
        .collect();
    fs::write(w.root().join("state.json"), legacy.join("\n")).unwrap();
    assert_code(&w.deploy(&w.healthy("v2"), "ver-2", "02"), 0, "deployed");
    assert!(w.host.containers(&format!("{app}-staging")).is_empty());
    let c = w.host.containers(&app);
    assert_eq!(c.len(), 1, "still project {app}");
    assert_eq!(w.host.state()["project"], app.as_str());
    let starts = w
        .host
        .sh(&format!("docker exec {} cat /store/starts", c[0].id));
    assert!(
        starts.contains("legacy-start"),
        "named volume {app}_store carried over: {starts}"
    );
    assert_eq!(w.host.serving().as_deref(), Some("v2"));
}

// -----------------------------------------------------------------------------------------
// SSM: timeout and cancel are SIGKILL to the command's process group, at once

#[test]
fn ssm_timeout_sigkill_to_the_group_after_the_switch_is_recorded_said_and_recovered() {
    let w = World::new("ssmkill");
    let good = w.deployed("v1", "01");
    let probe = Probe::install(&w.host);
    probe.pause_at(UP);
    let (mut child, dir) = w.spawn(&w.vars(&w.healthy("v2"), "ver-2", "02"), Some(&probe));
    assert!(probe.wait_paused(&mut child).is_some());
    // What amazon-ssm-agent does on executionTimeout or CancelCommand.
    kill_agent_script(&mut child);
    probe.release();
    let out = fs::read_to_string(dir.join("stdout")).unwrap();
    // The output SSM kept ends with the provisional result: interrupted, exit 10.
    let r = HostResult::from_output(&out).expect("a result line survived the kill");
    assert_eq!(
        (r.exit_code, format!("{:?}", r.outcome)),
        (10, "Interrupted".into())
    );
    assert!(
        r.message.contains(&format!("restores {good} first")),
        "{}",
        r.message
    );
    let st = w.host.state();
    assert!(
        st["pending"].as_str().unwrap().starts_with("deploy "),
        "{st}"
    );
    // `status` says so.
    let mut sv = w.host.rollback_vars("");
    sv.insert("DROPSHIP_ACTION".into(), "status".into());
    let status = w.run(&sv);
    assert_code(&status, 0, "status");
    assert!(
        status.message_contains("NEEDS RECOVERY"),
        "{}",
        status.output
    );
    // Any next run (here a stale event) first restores and checks the committed release.
    let stale = w.deploy(&w.healthy("v0"), "ver-0", "00");
    assert_code(&stale, 0, "stale");
    assert!(stale.output.contains("[recover]"));
    assert_settled(&w, "v1");
    assert_code(&w.deploy(&w.healthy("v2"), "ver-2", "02"), 0, "deployed");
    assert_settled(&w, "v2");
}

// -----------------------------------------------------------------------------------------
// kill -9 at every step, a full disk at every step

/// Points worth stopping at, from a clean run's calls: the first of each run of calls with
/// the same command and first argument (a loop of identical calls is one step), each named
/// by that key and its occurrence (`/^[0-9]+ tar -t( |$)/2`), so a run that retries a health
/// check one more time still stops at the same step.
/// The steps of a deploy between which a kill leaves a different state behind, as probe
/// patterns (`/ERE/k`: the k-th call matching): the lock held while recovery looks at the
/// containers; a partial download; an unpacked release not yet renamed into place; a release
/// with half its shared links; the `pending` write; the switch; the unswitched mark still on
/// the live release; compose up; the health check; the commit; the prune.
const DEPLOY_STEPS: [&str; 11] = [
    "/^[0-9]+ docker ps /",
    "/^[0-9]+ curl -q --config /",
    "/^[0-9]+ mv -T -- .*[.]partial /",
    "/^[0-9]+ ln -s -- ([.][.]/)+shared//",
    "/^[0-9]+ mv -f -- .*state[.]json[.]tmp/1",
    "/^[0-9]+ mv -T -f -- /",
    "/^[0-9]+ rm -f -- .*unswitched/",
    "/^[0-9]+ docker compose .* up /",
    "/^[0-9]+ curl -q --globoff --fail/",
    "/^[0-9]+ mv -f -- .*state[.]json[.]tmp/2",
    "/^[0-9]+ mv -T -- .*[.]trash/",
];

/// Where a full disk makes a difference to a deploy: the disk fills right before these calls,
/// so they and every write after them find it full: the download, the unpack, `release.json`
/// (after its `rm`), the shared links, the `pending` write (after the image check), the
/// switch's temporary link, the commit (after the health check) and the prune.
const DISK_STEPS: [&str; 8] = [
    "/^[0-9]+ curl -q --config /",
    "/^[0-9]+ tar .* -x /",
    "/^[0-9]+ rm -f -- .*release[.]json/",
    "/^[0-9]+ ln -s -- ([.][.]/)+shared//",
    "/^[0-9]+ docker image inspect /",
    "/^[0-9]+ ln -s -- releases//",
    "/^[0-9]+ curl -q --globoff --fail/",
    "/^[0-9]+ mv -T -- .*[.]trash/",
];

/// The steps of a rollback, as [`DEPLOY_STEPS`].
const ROLLBACK_STEPS: [&str; 6] = [
    "/^[0-9]+ docker ps /",
    "/^[0-9]+ mv -f -- .*state[.]json[.]tmp/1",
    "/^[0-9]+ mv -T -f -- /",
    "/^[0-9]+ docker compose .* up /",
    "/^[0-9]+ curl -q --globoff --fail/",
    "/^[0-9]+ mv -f -- .*state[.]json[.]tmp/2",
];

/// The calls of the probe's last (clean) run at each of `steps`; panics when one is missing,
/// so a loop over them cannot pass by seeing none.
fn step_points(probe: &Probe, steps: &[&str]) -> Vec<(String, String)> {
    steps
        .iter()
        .map(|step| {
            let (re, k) = step[1..].rsplit_once('/').unwrap();
            let k: usize = k.parse().unwrap_or(1);
            let line = probe.calls_matching(re).into_iter().nth(k - 1);
            let line = line.unwrap_or_else(|| {
                panic!(
                    "the clean run never made step {step}; calls: {:#?}",
                    probe.trace()
                )
            });
            (step.to_string(), line)
        })
        .collect()
}

/// Every kill point of the run `vars(i)` makes: pause there, SIGKILL the group (SSM), rerun
/// the same inputs, check the host settled on `expect(i)`. Iteration 0 is a clean run that
/// records the calls.
fn kill_at_every_step(
    w: &World,
    vars: &dyn Fn(usize) -> Vars,
    rerun_ok: &[&str],
    steps: &[&str],
    expect: &dyn Fn(usize) -> String,
) {
    let probe = Probe::install(&w.host);
    probe.reset();
    let (child, dir) = w.spawn(&vars(0), Some(&probe));
    let clean = w.finish(child, &dir);
    assert!(rerun_ok.contains(&clean.outcome()), "{}", clean.output);
    assert_settled(w, &expect(0));
    let points = step_points(&probe, steps);
    eprintln!("{} kill points", points.len());
    for (i, (n, line)) in points.iter().enumerate() {
        let i = i + 1;
        probe.pause_at(n);
        let (mut child, _dir) = w.spawn(&vars(i), Some(&probe));
        if probe.wait_paused(&mut child).is_none() {
            let _ = child.wait();
            panic!("the run of iteration {i} never reached call {line}");
        }
        kill_agent_script(&mut child);
        probe.reset();
        let run = w.run(&vars(i));
        assert!(
            rerun_ok.contains(&run.outcome()),
            "killed at {line}: the rerun said {}:\n{}",
            run.outcome(),
            run.output
        );
        assert_settled(w, &expect(i));
    }
}

/// `vars` with `keep_releases = 2`, so that a deploy over two releases prunes one.
fn keep_two(mut vars: Vars) -> Vars {
    vars.insert("DROPSHIP_KEEP_RELEASES".into(), "2".into());
    vars
}

/// Healthy bundles made once each, on first use.
struct Bundles<'a> {
    w: &'a World,
    prefix: &'static str,
    made: std::cell::RefCell<Vec<Bundle>>,
}

impl Bundles<'_> {
    fn get(&self, i: usize) -> Bundle {
        let mut made = self.made.borrow_mut();
        while made.len() <= i {
            let n = made.len();
            made.push(self.w.healthy(&format!("{}{n}", self.prefix)));
        }
        made[i].clone()
    }
}

#[test]
fn kill_9_at_every_step_of_a_deploy_then_a_rerun_leaves_a_checked_release() {
    let w = World::new("kill9");
    w.deployed("base", "01");
    // Two releases before the loop and keep_releases = 2: every run also prunes.
    w.deployed("base2", "02");
    let bundles = Bundles {
        w: &w,
        prefix: "k",
        made: Default::default(),
    };
    kill_at_every_step(
        &w,
        &|i| keep_two(w.vars(&bundles.get(i), &format!("ver-k{i}"), "")),
        &["deployed", "noop"],
        &DEPLOY_STEPS,
        &|i| format!("k{i}"),
    );
}

#[test]
fn kill_9_at_every_step_of_a_rollback_then_a_rerun_leaves_a_checked_release() {
    let w = World::new("kill9rb");
    w.deployed("a", "01");
    w.deployed("b", "02");
    // Iteration i rolls back from b to a (even i) or from a to b; the expected version makes
    // a rerun after a kill past the commit `superseded` instead of a second rollback.
    let from = |i: usize| if i.is_multiple_of(2) { "b" } else { "a" };
    kill_at_every_step(
        &w,
        &|i| {
            let mut v = w.host.rollback_vars("");
            v.insert(
                "DROPSHIP_EXPECT_VERSION_ID".into(),
                format!("ver-{}", from(i)),
            );
            v
        },
        &["rolled_back", "superseded"],
        &ROLLBACK_STEPS,
        &|i| {
            if from(i) == "b" {
                "a".into()
            } else {
                "b".into()
            }
        },
    );
}

#[test]
fn a_full_disk_at_every_step_leaves_the_running_release_serving() {
    let w = World::with_host(Host::start_at("diskfull", "/run/full/diskfull"));
    w.host
        .sh("mkdir -p /run/full && mount -t tmpfs -o size=48m tmpfs /run/full");
    w.write_env("");
    w.deployed("base", "01");
    w.deployed("base2", "02");
    let bundles = Bundles {
        w: &w,
        prefix: "f",
        made: Default::default(),
    };
    let vars = |i: usize| keep_two(w.vars(&bundles.get(i), &format!("ver-f{i}"), ""));
    let probe = Probe::install(&w.host);
    probe.reset();
    let (child, dir) = w.spawn(&vars(0), Some(&probe));
    assert_code(&w.finish(child, &dir), 0, "deployed");
    let mut serving = "f0".to_string();
    for (i, (n, line)) in step_points(&probe, &DISK_STEPS).iter().enumerate() {
        let i = i + 1;
        probe.pause_at(n);
        let (mut child, dir) = w.spawn(&vars(i), Some(&probe));
        assert!(
            probe.wait_paused(&mut child).is_some(),
            "never reached {line}"
        );
        fill_disk(&w.host, "/run/full");
        probe.release();
        let run = w.finish(child, &dir);
        match run.outcome() {
            // The disk filled after everything that writes.
            "deployed" => serving = format!("f{i}"),
            "failed" | "rolled_back" => {}
            other => panic!("disk full at {line}: {other}:\n{}", run.output),
        }
        assert_eq!(
            w.host.serving().as_deref(),
            Some(serving.as_str()),
            "disk full at {line}:\n{}",
            run.output
        );
        free_disk(&w.host, "/run/full");
        probe.reset();
        let rerun = w.run(&vars(i));
        assert!(
            ["deployed", "noop"].contains(&rerun.outcome()),
            "{}",
            rerun.output
        );
        serving = format!("f{i}");
        assert_settled(&w, &serving);
    }
}

// -----------------------------------------------------------------------------------------
// locks, rollback action, status, inputs

#[test]
fn two_deploys_started_together_one_waits_for_the_lock() {
    let w = World::new("lock");
    let b = w.healthy("v1");
    let vars = w.vars(&b, "ver-1", "01");
    let probe = Probe::install(&w.host);
    probe.pause_at(UP);
    let (mut a, da) = w.spawn(&vars, Some(&probe));
    assert!(probe.wait_paused(&mut a).is_some());
    let (b_child, db) = w.spawn(&vars, None);
    let waiting = || {
        fs::read_to_string(db.join("stdout"))
            .unwrap_or_default()
            .contains("[lock] another deploy holds")
    };
    assert!(wait_until(Duration::from_secs(30), waiting));
    let mut impatient = vars.clone();
    impatient.insert("DROPSHIP_LOCK_TIMEOUT".into(), "1".into());
    assert_code(&w.run(&impatient), 3, "failed");
    probe.release();
    let ra = w.finish(a, &da);
    let rb = w.finish(b_child, &db);
    let mut outcomes = vec![ra.outcome().to_string(), rb.outcome().to_string()];
    outcomes.sort();
    assert_eq!(outcomes, vec!["deployed", "noop"], "{ra:?}\n{rb:?}");
    assert_eq!(w.host.releases().len(), 1);
    assert_eq!(
        w.host.server.hits(&w.host.object_target("ver-1")),
        1,
        "only one download"
    );
    assert_settled(&w, "v1");
}

#[test]
fn explicit_rollback_action_switches_to_previous_or_named_release() {
    let w = World::new("rbaction");
    let r1 = w.deployed("v1", "01");
    let r2 = w.deployed("v2", "02");
    let run = w.run(&w.host.rollback_vars(""));
    assert_code(&run, 0, "rolled_back");
    assert_eq!(run.field("release"), r1);
    assert_eq!(run.field("previous"), r2);
    assert_eq!(run.field("version_id"), "ver-v1");
    assert_settled(&w, "v1");
    let st = w.host.state();
    assert_eq!(st["previous"], r2.as_str());
    assert_eq!(st["version_id"], "ver-v1");
    assert_code(&w.run(&w.host.rollback_vars(&r2)), 0, "rolled_back");
    assert_settled(&w, "v2");
    assert_code(&w.run(&w.host.rollback_vars(&r2)), 0, "noop");
    assert_code(
        &w.run(&w.host.rollback_vars("20000101T000000Z-0000000")),
        2,
        "failed",
    );
    assert_code(&w.run(&w.host.rollback_vars("../../etc")), 2, "failed");
    assert_eq!(w.host.current().unwrap(), r2);
    assert_code(&w.deploy(&w.healthy("v3"), "ver-3", "03"), 0, "deployed");
}

#[test]
fn rollback_with_an_expected_version_is_superseded_when_the_host_moved_on() {
    let w = World::new("expect");
    let r1 = w.deployed("v1", "01");
    w.deployed("v2", "02");
    let ids = w.container_ids();
    let mut vars = w.host.rollback_vars("");
    vars.insert("DROPSHIP_EXPECT_VERSION_ID".into(), "ver-v1".into());
    let run = w.run(&vars);
    assert_code(&run, 0, "superseded");
    assert_eq!(w.container_ids(), ids, "nothing done");
    vars.insert("DROPSHIP_EXPECT_VERSION_ID".into(), "ver-v2".into());
    let run = w.run(&vars);
    assert_code(&run, 0, "rolled_back");
    assert_eq!(run.field("release"), r1);
    assert_settled(&w, "v1");
}

#[test]
fn rollback_on_a_host_with_only_its_first_deploy_refuses_and_touches_nothing() {
    let w = World::new("rbfirst");
    let r1 = w.deployed("v1", "01");
    let ids = w.container_ids();
    let run = w.run(&w.host.rollback_vars(""));
    assert_code(&run, 2, "failed");
    assert!(run.message_contains("first deploy"), "{}", run.output);
    assert_eq!(w.host.current().unwrap(), r1);
    assert_eq!(w.container_ids(), ids);
}

#[test]
fn status_prints_state_and_a_result_line() {
    let w = World::new("status");
    let mut vars = w.host.rollback_vars("");
    vars.insert("DROPSHIP_ACTION".into(), "status".into());
    fs::remove_dir_all(w.root()).unwrap();
    let empty = w.run(&vars);
    assert_code(&empty, 0, "status");
    assert!(!w.root().exists(), "status creates nothing");
    w.write_env("");
    w.deployed("v1", "01");
    let run = w.run(&vars);
    assert_code(&run, 0, "status");
    assert_eq!(run.field("release"), w.host.current().unwrap());
    assert_eq!(run.field("version_id"), "ver-v1");
    assert!(run.output.contains("\"last_good\""));
    assert!(!run.message_contains("NEEDS RECOVERY"), "{}", run.output);
    assert!(
        run.output.contains("running") || run.output.contains("Up"),
        "{}",
        run.output
    );
}

#[test]
fn hostile_values_are_data_bad_ones_exit_2_touching_nothing() {
    let w = World::new("hostile");
    let b = w.healthy("v1");
    let payloads = [
        "$(touch /tmp/pwned)",
        "`touch /tmp/pwned`",
        "x'; touch /tmp/pwned; '",
        "x\"; touch /tmp/pwned; \"",
        "x\ntouch /tmp/pwned",
        "ok,$(touch /tmp/pwned)",
        "x\nDROPSHIP_RESULT {\"outcome\":\"deployed\"}",
        "../../../etc",
        "-rf",
    ];
    let canary = w.host.sim.path("/tmp/pwned");
    let deploy_vars = w.vars(&b, "ver-1", "01");
    let mut accepted = Vec::new();
    for input in HostVar::ALL {
        let name = input.name();
        for p in &payloads {
            let rollback_input = matches!(input, HostVar::RollbackTo | HostVar::ExpectVersionId);
            let mut v = if rollback_input {
                w.host.rollback_vars("")
            } else {
                deploy_vars.clone()
            };
            v.insert(name.to_string(), p.to_string());
            if input == HostVar::VersionId {
                // Where the contract says that version is: the script must encode it alike.
                w.host.serve(&b, p);
            }
            let run = w.run(&v);
            assert!(!canary.exists(), "{name}={p:?} executed code");
            // Only the script's own result lines: the provisional one before a switch, the
            // final one last.
            let results: Vec<&str> = run
                .output
                .lines()
                .filter(|l| l.starts_with("DROPSHIP_RESULT"))
                .collect();
            for (i, l) in results.iter().enumerate() {
                let r: serde_json::Value =
                    serde_json::from_str(&l["DROPSHIP_RESULT ".len()..]).expect("a JSON result");
                let last = i + 1 == results.len();
                assert!(
                    last || r["outcome"] == "interrupted",
                    "{name}={p:?} forged {l}"
                );
            }
            if run.code == 2 {
                assert_eq!(results.len(), 1, "{name}={p:?}:\n{}", run.output);
                assert_eq!(run.outcome(), "failed");
                assert!(
                    run.field("message").contains(name),
                    "{name}={p:?}: message names the input:\n{}",
                    run.output
                );
                assert!(
                    !w.root().join("releases").exists(),
                    "{name}={p:?} touched the app root"
                );
            } else {
                accepted.push((name, p.to_string(), run));
                w.host.reset();
                w.write_env("");
            }
        }
    }
    // A version id (and the expected one) may hold quotes, `$()`, backticks and a leading
    // dash; a path may start with a dash. Such values are data: recorded verbatim, or looked
    // up as the file they name. Everything else was refused.
    for (name, p, run) in &accepted {
        match (*name, p.as_str()) {
            ("DROPSHIP_VERSION_ID", _) => {
                assert_code(run, 0, "deployed");
                assert_eq!(run.field("version_id"), p.as_str(), "recorded verbatim");
            }
            ("DROPSHIP_EXPECT_VERSION_ID", _) => assert_code(run, 0, "superseded"),
            ("DROPSHIP_SHARED_PATHS", "-rf") => assert_code(run, 0, "deployed"),
            ("DROPSHIP_COMPOSE_FILE", "-rf") => assert_code(run, 7, "failed"),
            ("DROPSHIP_PRE_SWITCH_HOOK", "-rf") => assert_code(run, 8, "failed"),
            _ => panic!(
                "{name}={p:?} was accepted (exit {}):\n{}",
                run.code, run.output
            ),
        }
    }
    let want: BTreeSet<&str> = payloads
        .iter()
        .copied()
        .filter(|p| !p.contains('\n') && !p.contains('/'))
        .collect();
    for name in ["DROPSHIP_VERSION_ID", "DROPSHIP_EXPECT_VERSION_ID"] {
        let got: BTreeSet<&str> = accepted
            .iter()
            .filter(|a| a.0 == name)
            .map(|a| a.1.as_str())
            .collect();
        assert_eq!(
            got, want,
            "{name}: every payload without a newline or '/' is valid"
        );
    }
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

// -----------------------------------------------------------------------------------------
// third pass (issue 20): each test is named after a defect found by an adversarial run and
// failed on the script before its fix

/// Inside the host, `cat <path>` as an unprivileged user (uid 65534): whether it could read.
fn readable_by_nobody(w: &World, host_path: &str) -> bool {
    let out = w
        .host
        .sim
        .command("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "cat",
            "--",
            host_path,
        ])
        .output()
        .unwrap();
    out.status.success()
}

#[test]
fn a_failed_deploy_never_stops_the_running_app_whatever_form_current_has() {
    let w = World::new("curform");
    let good = w.deployed("v1", "01");
    let ids = w.container_ids();
    let broken = w.bundle(
        AppFiles::healthy(8080, "v2").with("compose.yaml", "services:\n  web: [unclosed\n"),
    );
    let link = w.root().join("current");
    let absolute = format!("{}/releases/{good}", w.host.root);
    for form in [
        format!("releases/{good}/"),
        format!("./releases/{good}"),
        absolute.clone(),
        format!("{absolute}/"),
        String::new(),
    ] {
        fs::remove_file(w.root().join("state.json")).unwrap();
        fs::remove_file(&link).unwrap();
        if !form.is_empty() {
            std::os::unix::fs::symlink(&form, &link).unwrap();
        }
        let run = w.deploy(&broken, "ver-2", "02");
        // Before the fix: "a container … runs from …, not the committed release", compose
        // down, `current` removed, exit 7 with nothing running.
        assert_code(&run, 7, "failed");
        assert_eq!(
            w.container_ids(),
            ids,
            "form {form:?}: the app was restarted"
        );
        assert_eq!(w.host.serving().as_deref(), Some("v1"), "form {form:?}");
        assert_eq!(w.host.current().as_deref(), Some(good.as_str()));
        assert_eq!(w.host.state()["current"], good.as_str(), "form {form:?}");
        assert_eq!(w.host.state()["version_id"], "ver-v1");
        assert_settled(&w, "v1");
    }
}

#[test]
fn bundle_content_is_unreadable_to_other_users_during_download_and_unpack() {
    let w = World::new("modes");
    w.deployed("v1", "01");
    let b = hand_made_bundle("printf 'IN_BUNDLE=bundle-secret-value\\n' > .env");
    let vars = w.vars(&b, "ver-2", "02");
    w.host.server.set(
        &w.host.object_target("ver-2"),
        Reply::Slow(b.bytes.clone(), Duration::from_secs(4)),
    );
    let probe = Probe::install(&w.host);
    probe.pause_at("/mkdir -p -- .*\\.partial/\\.dropship$/");
    let (mut child, dir) = w.spawn(&vars, Some(&probe));
    // During the download: the partial file is the owner's alone from its first byte.
    let mut download = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            download = fs::read_dir(w.root()).ok().and_then(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .find(|n| n.starts_with(".download."))
            });
            download.as_ref().is_some_and(|d| {
                fs::metadata(w.root().join(d).join("bundle")).is_ok_and(|m| m.len() > 0)
            })
        }),
        "no download in progress seen"
    );
    let download = download.unwrap();
    let file = format!("{}/{download}/bundle", w.host.root);
    // Before the fix: 0644 for the whole transfer, and uid 65534 read it.
    assert!(
        !readable_by_nobody(&w, &file),
        "{file} readable during the download"
    );
    assert!(
        fs::metadata(w.root().join(&download).join("bundle")).is_ok(),
        "the download ended before it was checked"
    );
    // During the unpack: the bundle's .env sits in a release only its owner can enter.
    let paused = probe
        .wait_paused(&mut child)
        .expect("the run reached the unpack");
    let partial = paused
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_end_matches("/.dropship");
    assert!(fs::symlink_metadata(w.host.sim.path(&format!("{partial}/.env"))).is_ok());
    assert!(
        !readable_by_nobody(&w, &format!("{partial}/.env")),
        "the bundle's .env was readable while unpacked"
    );
    // Once the shared paths are linked, the release opens to the app's users.
    probe.pause_next("/ config -q$/");
    probe
        .wait_paused(&mut child)
        .expect("the run reached compose config");
    let release = partial.trim_end_matches(".partial");
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(w.host.sim.path(release))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755, "{mode:o}");
    assert!(
        fs::symlink_metadata(w.host.sim.path(&format!("{release}/.env")))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(readable_by_nobody(&w, &format!("{release}/version.txt")));
    probe.release();
    let run = w.finish(child, &dir);
    assert_code(&run, 0, "deployed");
    assert!(!run.output.contains("bundle-secret-value"));
    assert_settled(&w, "hand");
}

#[test]
fn seeded_secret_looking_files_stay_unreadable_to_other_users() {
    let w = World::new("seedmode");
    let b = hand_made_bundle(
        "mkdir -p certs/tls && printf k > certs/tls/server.key && printf p > certs/public.txt && printf c > certs/tls/ca.pub",
    );
    let mut vars = w.vars(&b, "ver-1", "01");
    vars.insert("DROPSHIP_SHARED_PATHS".into(), ".env,certs".into());
    let run = w.run(&vars);
    assert_code(&run, 0, "deployed");
    use std::os::unix::fs::PermissionsExt;
    let mode = |rel: &str| {
        fs::metadata(w.root().join("shared").join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    // Before the fix: the key kept the bundle's 0644.
    assert_eq!(mode("certs/tls/server.key"), 0o600);
    assert_eq!(
        mode("certs/public.txt"),
        0o644,
        "other files keep their mode"
    );
    assert_eq!(mode("certs/tls/ca.pub"), 0o644, "public keys are no secret");
}

#[test]
fn seeded_secret_names_are_the_bundlers() {
    // The host script's list of secret-looking names is the bundler's, both ways.
    let text = fs::read_to_string(dropship_tests::bins::script("deploy-on-host.sh")).unwrap();
    let list = |name: &str| -> Vec<String> {
        let head = format!("readonly {name}=(");
        let start = text
            .find(&head)
            .unwrap_or_else(|| panic!("{name} in the script"));
        let body = &text[start + head.len()..];
        let body = &body[..body.find(')').unwrap()];
        body.split_whitespace()
            .map(|g| g.trim_matches('\'').to_owned())
            .collect()
    };
    let want = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        list("SECRET_GLOBS"),
        want(dropship_bundler::select::SECRET_PATTERNS)
    );
    assert_eq!(
        list("SECRET_EXCEPTION_GLOBS"),
        want(dropship_bundler::select::SECRET_EXCEPTIONS)
    );
}

#[test]
fn after_state_json_is_lost_an_older_event_is_still_stale() {
    let w = World::new("lostseq");
    w.deployed("v1", "0010");
    let good = w.deployed("v2", "0030");
    for lost in ["state.json", "state.json and deploy.log"] {
        fs::remove_file(w.root().join("state.json")).unwrap();
        if lost.contains("deploy.log") {
            fs::remove_file(w.root().join("deploy.log")).unwrap();
        }
        let run = w.deploy(&w.healthy("v-old"), "ver-old", "0020");
        // Before the fix: deployed, exit 0, the older version running.
        assert_code(&run, 0, "stale");
        assert_eq!(w.host.current().as_deref(), Some(good.as_str()), "{lost}");
        assert_eq!(w.host.state()["sequencer"], "0030", "{lost}");
        assert_settled(&w, "v2");
    }
}

#[test]
fn after_state_json_is_lost_rollback_goes_to_the_release_before() {
    let w = World::new("lostprev");
    let first = w.deployed("v1", "01");
    w.deployed("v2", "02");
    let third = w.deployed("v3", "03");
    // Rolled back once by request: v1 is current, v3 is what came before it.
    let run = w.run(&w.host.rollback_vars(&first));
    assert_code(&run, 0, "rolled_back");
    fs::remove_file(w.root().join("state.json")).unwrap();
    let run = w.run(&w.host.rollback_vars(""));
    // Before the fix: exit 2 "no previous release … the first deploy on this host".
    assert_code(&run, 0, "rolled_back");
    assert_eq!(w.host.current().as_deref(), Some(third.as_str()));
    assert_settled(&w, "v3");
    // Without deploy.log: the newest release older than the current one.
    fs::remove_file(w.root().join("state.json")).unwrap();
    fs::remove_file(w.root().join("deploy.log")).unwrap();
    let run = w.run(&w.host.rollback_vars(""));
    assert_code(&run, 0, "rolled_back");
    assert_ne!(w.host.current().as_deref(), Some(third.as_str()));
    assert_eq!(w.host.state()["previous"], third.as_str());
}

#[test]
fn a_curlrc_never_changes_the_signed_download_or_prints_a_token() {
    let w = World::new("curlrc");
    w.deployed("v1", "01");
    // A root's .curlrc that a hand run or a wrapper (HOME set) would read.
    fs::write(
        w.host.sim.path("/root/.curlrc"),
        "verbose\nlocation\ntrace-ascii = /tmp/curl-trace\n",
    )
    .unwrap();
    let with_home = |vars: &Vars| format!("export HOME=/root\n{}", render(vars));
    let secrets = [
        FAKE_ROLE.secret_access_key,
        FAKE_ROLE.session_token,
        IMDS_SESSION_TOKEN,
    ];
    let run = checked(
        w.host
            .run(&with_home(&w.vars(&w.healthy("v2"), "ver-2", "02"))),
    );
    assert_code(&run, 0, "deployed");
    for s in secrets {
        // Before the fix: `verbose` printed the IMDS and session tokens.
        assert!(
            !run.output.contains(s),
            "{s} in the output:\n{}",
            run.output
        );
    }
    assert!(
        !w.host.sim.path("/tmp/curl-trace").exists(),
        "the .curlrc was read"
    );
    // A redirect is never followed, so the signed request and token go nowhere else.
    let elsewhere = dropship_tests::http::FileServer::start();
    w.host.sim.forward_port(elsewhere.port());
    let b = w.healthy("v3");
    let vars = w.vars(&b, "ver-3", "03");
    w.host.server.set(
        &w.host.object_target("ver-3"),
        Reply::Redirect(elsewhere.url("/stolen")),
    );
    let run = checked(w.host.run(&with_home(&vars)));
    assert_code(&run, 5, "failed");
    assert_eq!(elsewhere.hits("/stolen"), 0, "the redirect was followed");
    for s in secrets {
        assert!(!run.output.contains(s), "{s} in the output");
    }
    assert_settled(&w, "v2");
}

#[test]
fn a_redeploy_of_a_stopped_or_unhealthy_app_never_reports_it_running() {
    let w = World::new("stopped");
    let good = w.deployed("v1", "01");
    let vars = w.vars(&w.healthy("v1"), "ver-v1", "01");
    // Stopped (compose stop, a crash, a reboot without a restart policy).
    w.host
        .sh(&format!("docker compose -p {} stop", w.host.project()));
    let run = w.run(&vars);
    // Before the fix: "noop … already current and runs" with the container exited.
    assert_code(&run, 0, "noop");
    assert!(run.output.contains("is not running"), "{}", run.output);
    assert_settled(&w, "v1");
    // Unhealthy: its health file gone, the compose healthcheck fails.
    let health = w.root().join(format!("releases/{good}/health"));
    fs::remove_file(&health).unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || !w
            .host
            .sim
            .docker(&["ps", "--filter", "health=unhealthy", "-q"])
            .trim()
            .is_empty()),
        "the container never turned unhealthy"
    );
    let run = w.run(&vars);
    assert_code(&run, 10, "rollback_failed");
    assert!(run.message_contains("not healthy"), "{}", run.output);
    // Repaired: the next run brings it back and says so.
    fs::write(&health, "ok\n").unwrap();
    let run = w.run(&vars);
    assert_code(&run, 0, "noop");
    assert_settled(&w, "v1");
}

#[test]
fn the_verdict_survives_ssm_keeping_only_24000_characters_of_output() {
    let w = World::new("bigout");
    w.deployed("v1", "01");
    // A hook (a migration, a build) that prints far more than SSM keeps.
    let hook = "#!/bin/sh\ni=0\nwhile [ $i -lt 8000 ]; do echo \"migration step $i of a long and chatty hook\"; i=$((i+1)); done\n";
    for (version, code, outcome, tail) in
        [("v2", 0, "deployed", ""), ("v3", 8, "failed", "exit 3\n")]
    {
        let hook = if tail.is_empty() {
            hook.to_owned()
        } else {
            format!("{hook}{tail}")
        };
        let b = w.bundle(AppFiles::healthy(8080, version).with("deploy/hook.sh", hook));
        let mut vars = w.vars(
            &b,
            &format!("ver-{version}"),
            &format!("0{}", &version[1..]),
        );
        vars.insert("DROPSHIP_PRE_SWITCH_HOOK".into(), "deploy/hook.sh".into());
        let run = w.run(&vars);
        assert_code(&run, code, outcome);
        assert!(
            run.output.contains("migration step 0 "),
            "the hook's output is shown"
        );
        assert!(
            run.output.contains("output cut here"),
            "{}",
            run.output.len()
        );
        // What SSM keeps (the first 24,000 characters) holds the final verdict: before the
        // fix the provisional `interrupted` line or nothing at all.
        assert!(run.output.chars().count() <= 24_000, "{}", run.output.len());
        let kept: String = run.output.chars().take(24_000).collect();
        let verdict = HostResult::from_output(&kept).expect("a result line in what SSM keeps");
        assert_eq!((verdict.exit_code, run.outcome()), (code, outcome));
    }
    assert_settled(&w, "v2");
}

#[test]
fn the_hooks_output_is_redacted() {
    let w = World::new("hookleak");
    w.deployed("v1", "01");
    // A failing migration that prints its DSN, built from the .env's secret.
    let hook = "#!/bin/sh\necho \"connecting to postgres://app:$(sed -n 's/^SECRET_KEY=//p' .env)@db/app\"\necho 'migration failed' >&2\nexit 1\n";
    let b = w.bundle(AppFiles::healthy(8080, "v2").with("deploy/hook.sh", hook));
    let mut vars = w.vars(&b, "ver-2", "02");
    vars.insert("DROPSHIP_PRE_SWITCH_HOOK".into(), "deploy/hook.sh".into());
    // `checked` (in `run`) fails when the canary secret reaches the output: before the fix it did.
    let run = w.run(&vars);
    assert_code(&run, 8, "failed");
    assert!(
        run.output
            .contains("connecting to postgres://app:<redacted .env value>@db/app"),
        "{}",
        run.output
    );
    assert!(run.output.contains("migration failed"));
    assert_settled(&w, "v1");
}

#[test]
fn the_documented_app_root_rotation_moves_the_app_and_keeps_its_data() {
    let w = World::new("rotate");
    w.deployed("v1", "01");
    let v2 = w.deployed("v2", "02");
    let starts = |w: &World| {
        w.host
            .sh("docker run --rm -v rotate-staging_store:/store busybox:1.35 cat /store/starts")
            .lines()
            .count()
    };
    let before = starts(&w);
    // docs/operations.md, "Rotating to a new app root": freeze (the lock is free), copy the
    // root without its lock, point the deployer at the new root, deploy once.
    let old = w.host.root.clone();
    let new = "/opt/apps/rotate/staging";
    w.host.sh(&format!("flock -n {old}/.lock true"));
    w.host.sh(&format!(
        "mkdir -p /opt/apps/rotate && cp -a {old} {new} && rm -f {new}/.lock"
    ));
    let mut vars = w.vars(&w.healthy("v3"), "ver-3", "03");
    vars.insert("DROPSHIP_APP_ROOT".into(), new.into());
    let run = w.run(&vars);
    // Before the fix: exit 2, "another app root runs it".
    assert_code(&run, 0, "deployed");
    assert!(run.output.contains("takes it over"), "{}", run.output);
    let running = w.host.running();
    assert!(!running.is_empty());
    for c in &running {
        assert!(c.dir.starts_with(&format!("{new}/releases/")), "{c:?}");
        assert_eq!(c.state, "running");
    }
    assert_eq!(w.host.serving().as_deref(), Some("v3"));
    // The named volume carried over (its start counter went on, not from zero).
    assert!(starts(&w) > before, "the store volume was replaced");
    // The copied releases are the new root's rollback targets.
    let mut back = w.host.rollback_vars("");
    back.insert("DROPSHIP_APP_ROOT".into(), new.into());
    let run = w.run(&back);
    assert_code(&run, 0, "rolled_back");
    assert_eq!(run.field("release"), v2);
    assert_eq!(w.host.serving().as_deref(), Some("v2"));
    // A root that is not a copy (nothing committed there) still may not take the project.
    let mut stranger = w.vars(&w.healthy("v4"), "ver-4", "04");
    stranger.insert("DROPSHIP_APP_ROOT".into(), "/opt/apps/other".into());
    let run = w.run(&stranger);
    assert_code(&run, 2, "failed");
    assert_eq!(w.host.serving().as_deref(), Some("v2"));
}

#[test]
fn app_root_slashes_and_unset_shared_paths_follow_the_documented_rules() {
    let w = World::new("lowrules");
    for root in ["//", "/opt//x", "///"] {
        let mut vars = w.vars(&w.healthy("v1"), "ver-1", "01");
        vars.insert("DROPSHIP_APP_ROOT".into(), root.into());
        let run = w.run(&vars);
        // Before the fix: `//` passed as `/`.
        assert_code(&run, 2, "failed");
        assert!(run.message_contains("DROPSHIP_APP_ROOT"), "{}", run.output);
    }
    assert!(!w.root().join("state.json").exists(), "nothing was touched");
    // Empty and unset DROPSHIP_SHARED_PATHS are the same: nothing linked.
    for unset in [true, false] {
        w.host.reset();
        let mut vars = w.vars(&w.healthy("v1"), "ver-1", "01");
        if unset {
            vars.remove("DROPSHIP_SHARED_PATHS");
        } else {
            vars.insert("DROPSHIP_SHARED_PATHS".into(), String::new());
        }
        let run = w.run(&vars);
        assert_code(&run, 0, "deployed");
        let release = w.root().join("releases").join(w.host.current().unwrap());
        for p in [".env", "data"] {
            let linked = fs::symlink_metadata(release.join(p))
                .map(|m| m.file_type().is_symlink())
                .unwrap_or(false);
            assert!(!linked, "unset={unset}: {p} was linked");
        }
    }
}

// -----------------------------------------------------------------------------------------
// long-lived services (issue 21, item 1): a service is recreated only when its own definition
// changed, and only it

/// The suite's `web` (which mounts the release itself, so it changes with every release)
/// beside a long-lived `db`: its data under the shared path `data`, its definition from
/// `DB_MODE` (the shared `.env`), counting its own starts in `shared/data/db/starts`.
fn web_and_db_compose() -> String {
    let web = dropship_tests::host::compose_yaml(8080);
    let (services, volumes) = web.split_once("volumes:\n  store:").unwrap();
    format!(
        "{services}    depends_on: [db]\n  db:\n    image: {image}\n    init: true\n    restart: unless-stopped\n    command: [\"sh\", \"-c\", \"echo start >> /db/starts && exec sleep 2147483647\"]\n    environment:\n      DB_MODE: \"${{DB_MODE:-a}}\"\n    volumes:\n      - ./data/db:/db\nvolumes:\n  store:{volumes}",
        image = dropship_tests::simhost::IMAGE
    )
}

#[test]
fn a_long_lived_service_is_never_restarted_for_nothing() {
    let w = World::new("longlived");
    let files = |v: &str| AppFiles::healthy(8080, v).with("compose.yaml", web_and_db_compose());
    let deploy = |v: &str, seq: &str| {
        let mut vars = w.vars(&w.bundle(files(v)), &format!("ver-{v}"), seq);
        vars.insert("DROPSHIP_KEEP_RELEASES".into(), "2".into());
        w.run(&vars)
    };
    let db = || {
        w.host
            .sim
            .docker(&[
                "inspect",
                "-f",
                "{{.Id}} {{.State.StartedAt}} {{.State.Status}}",
                "longlived-staging-db-1",
            ])
            .trim()
            .to_owned()
    };
    let starts = || {
        fs::read_to_string(w.root().join("shared/data/db/starts"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let run = deploy("v1", "01");
    assert_code(&run, 0, "deployed");
    let first = w.host.current().unwrap();
    let original = db();
    assert!(original.ends_with(" running"), "{original}");
    assert_eq!(starts(), 1);

    // A new release of web: web is recreated, db is left alone (and web's depends_on does not
    // restart it).
    let web_before = w.container_ids();
    let run = deploy("v2", "02");
    assert_code(&run, 0, "deployed");
    assert!(
        run.output
            .contains("kept running (definition unchanged): db"),
        "{}",
        run.output
    );
    assert!(
        run.output.contains("recreating: web (changed)"),
        "{}",
        run.output
    );
    assert_eq!(db(), original, "db was restarted by a deploy");
    assert_ne!(w.container_ids(), web_before, "web was not recreated");
    assert_eq!(w.host.serving().as_deref(), Some("v2"));
    assert_eq!(w.host.state()["last_outcome"], "deployed");
    // A failed deploy (web never healthy) and its automatic rollback.
    let broken = w.bundle(files("v3").without("health"));
    let mut vars = w.vars(&broken, "ver-v3", "03");
    vars.insert("DROPSHIP_KEEP_RELEASES".into(), "2".into());
    let run = w.run(&vars);
    assert_code(&run, 9, "rolled_back");
    assert_eq!(db(), original, "db was restarted by a failed deploy");
    // A requested rollback.
    let run = w.run(&w.host.rollback_vars(&first));
    assert_code(&run, 0, "rolled_back");
    assert_eq!(db(), original, "db was restarted by a rollback");
    assert_eq!(w.host.serving().as_deref(), Some("v1"));
    // Recovery: state.json lost, and web stopped.
    fs::remove_file(w.root().join("state.json")).unwrap();
    w.host.sim.docker(&["stop", "longlived-staging-web-1"]);
    let run = w.run(&w.host.rollback_vars(""));
    assert_code(&run, 0, "rolled_back");
    assert!(run.output.contains("[recover]"), "{}", run.output);
    assert_eq!(db(), original, "db was restarted by recovery");
    // Releases pruned down to two, but not the one db's mounts go through.
    let run = deploy("v4", "04");
    assert_code(&run, 0, "deployed");
    assert_eq!(db(), original);
    assert_eq!(starts(), 1, "db started once in all");

    // db's own definition changes (its environment, from the shared .env): recreated once.
    w.write_env("DB_MODE=b\n");
    let run = deploy("v5", "05");
    assert_code(&run, 0, "deployed");
    assert!(run.output.contains("db (changed)"), "{}", run.output);
    let changed = db();
    assert_ne!(
        changed, original,
        "db was not recreated for its new definition"
    );
    assert_eq!(starts(), 2);
    let run = deploy("v6", "06");
    assert_code(&run, 0, "deployed");
    assert_eq!(db(), changed, "db was restarted again without a change");
    assert_eq!(starts(), 2);
    assert_settled_services(&w, "v6");
}

/// `assert_settled` for an app whose long-lived services may run from an earlier release:
/// every container belongs to the committed release (its `.dropship/services` lists the
/// container's definition), runs, and the app serves `version`.
fn assert_settled_services(w: &World, version: &str) {
    let h = &w.host;
    let current = h.current().expect("a current release");
    assert_eq!(h.state()["current"], current.as_str());
    assert_eq!(h.state()["pending"], "");
    let listed = fs::read_to_string(
        w.root()
            .join(format!("releases/{current}/.dropship/services")),
    )
    .expect("the committed release lists its services");
    for c in h.running() {
        assert_eq!(c.state, "running", "{c:?}");
        let def = h.sim.docker(&[
            "inspect",
            "-f",
            "{{index .Config.Labels \"dropship.def\"}}",
            &c.id,
        ]);
        assert!(
            listed
                .lines()
                .any(|l| l == format!("{} {}", c.service, def.trim())),
            "{c:?} has definition {def} not in {listed}"
        );
        assert!(
            h.path("")
                .join(c.dir.trim_start_matches(&format!("{}/", h.root)))
                .is_dir(),
            "{c:?}: the release it was created from is gone"
        );
    }
    assert_eq!(h.serving().as_deref(), Some(version));
    assert!(h.leftovers().is_empty(), "{:?}", h.leftovers());
}

#[path = "host_script/start_first.rs"]
mod start_first;
