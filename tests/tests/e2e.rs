//! End-to-end suite: the pipeline of `scripts/local-pipeline` (`dropship_tests::pipeline`)
//! with assertions on every step. Real parts throughout: the sample app in a git repository,
//! the real `bundle-and-upload`, moto's versioned S3 emitting EventBridge events captured by a
//! real rule into SQS, the built `deployer-lambda` as a Lambda, and the local SSM endpoint
//! running the command as the SSM agent does on two simulated hosts, each with its own real
//! Docker engine. Host results are read from SSM's answers, as the CLI reads them.
//!
//! Where moto differs from AWS the suite does not lean on it (docs/testing.md): targets come
//! from the deployer's record, not SSM's target list; every captured event is delivered;
//! ordering is exercised with documented sequencer fixtures because moto's is constant.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use dropship_contract::metadata::ObjectMetadata;
use dropship_contract::record::Outcome;
use dropship_tests::pipeline::{explain, table, Deploy, HostRun, Options, Pipeline, Upload, ENV};
use serde_json::Value;

const SETTLE: Duration = Duration::from_secs(30);

fn start() -> Pipeline {
    Pipeline::start(&Options::unique()).expect("pipeline starts")
}

fn instance_ids(p: &Pipeline) -> Vec<String> {
    let mut ids: Vec<String> = p.hosts.iter().map(|h| h.instance_id.clone()).collect();
    ids.sort();
    ids
}

/// The version was dispatched to exactly this pipeline's hosts, each host ran the command
/// once with `code`/`outcome`, and every host now serves `serving` healthily.
fn assert_deploy(p: &Pipeline, d: &Deploy, code: i32, outcome: &str, serving: &str) {
    let ctx = || format!("{}\n{}", explain(d), table(p));
    assert_eq!(d.outcome(), "dispatched", "{}", ctx());
    let answer = d.lambda[0].as_ref().unwrap();
    let mut targets: Vec<String> = answer["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    targets.sort();
    assert_eq!(targets, instance_ids(p), "{}", ctx());
    let mut ran: Vec<&str> = d.runs.iter().map(|r| r.instance_id.as_str()).collect();
    ran.sort();
    assert_eq!(ran, instance_ids(p), "one run per host: {}", ctx());
    for r in &d.runs {
        assert_eq!((r.code, r.outcome()), (code, outcome), "{}", ctx());
    }
    let views = p.wait_serving(serving, SETTLE);
    for v in &views {
        assert_eq!(v.commit.as_deref(), Some(serving), "{}", ctx());
        assert_eq!(v.health, Some(200), "health endpoint answers: {}", ctx());
    }
}

fn upload(p: &Pipeline) -> Upload {
    p.upload().expect("bundle-and-upload")
}

/// `bundle-and-upload --wait --json` while the harness delivers the events it causes, as
/// EventBridge does: the CLI's exit code and JSON, and what SSM reports for each host.
fn upload_waiting(p: &mut Pipeline) -> (i32, Value, Vec<HostRun>) {
    let out = p.run_waiting(false, &[]).expect("bundle-and-upload --wait");
    let json: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("--wait --json output ({e}): {}{}", out.stdout, out.stderr));
    let version = json["version_id"].as_str().expect("version_id").to_owned();
    let runs = p.wait_dispatched(&version).expect("SSM reports every host");
    (out.code, json, runs)
}

/// The `--wait` report's per-host (instance, state, exit code), sorted.
fn waited_hosts(json: &Value) -> Vec<(String, String, Option<i64>)> {
    hosts_of(&json["deploy"]["status"])
}

/// A status report's per-host (instance, state, exit code), sorted.
fn hosts_of(status: &Value) -> Vec<(String, String, Option<i64>)> {
    let mut v: Vec<(String, String, Option<i64>)> = status["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("no hosts in {status:#}"))
        .iter()
        .map(|h| {
            (
                h["instance_id"].as_str().unwrap().to_owned(),
                h["state"].as_str().unwrap().to_owned(),
                h["exit_code"].as_i64(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Every host of `p` in `state` with `code`.
fn all_hosts(p: &Pipeline, state: &str, code: Option<i64>) -> Vec<(String, String, Option<i64>)> {
    instance_ids(p)
        .into_iter()
        .map(|i| (i, state.to_owned(), code))
        .collect()
}

#[test]
fn v1_v2_broken_v3_rolls_back_rollback_to_v1_and_the_operator_commands_tell_it() {
    let mut p = start();

    // v1 through `bundle-and-upload --wait`, as CI runs it: exit 0, deployed on both hosts,
    // as SSM reports it (status, response code, output) and as the hosts serve it.
    let c1 = p.commit_release("v1");
    let (code, json, runs) = upload_waiting(&mut p);
    assert_eq!(code, 0, "--wait exit code: {json:#}");
    assert_eq!(json["commit"], c1.as_str());
    let v1 = json["version_id"].as_str().unwrap().to_owned();
    assert_eq!(
        waited_hosts(&json),
        all_hosts(&p, "success", Some(0)),
        "{json:#}"
    );
    assert_eq!(runs.len(), 2, "one invocation per host");
    for r in &runs {
        assert_eq!(
            (r.status.as_str(), r.code, r.outcome()),
            ("Success", 0, "deployed"),
            "{}",
            r.output
        );
    }
    let views = p.wait_serving(&c1, SETTLE);
    assert!(views.iter().all(|v| v.health == Some(200)), "{}", table(&p));
    let r1: Vec<Option<String>> = views.iter().map(|v| v.release.clone()).collect();
    let containers1: Vec<String> = views
        .iter()
        .map(|v| v.container.clone().expect("a container serves").id)
        .collect();

    // v2 replaces it: new releases, new containers (the old ones are gone).
    let c2 = p.commit_release("v2");
    let v2 = upload(&p);
    let d = p.deploy(&v2.version_id).unwrap();
    assert_eq!(d.events.len(), 1, "one event per PutObject");
    assert_eq!(d.events[0]["detail"]["object"]["key"], p.key().as_str());
    assert_deploy(&p, &d, 0, "deployed", &c2);
    let views = p.views();
    let r2: Vec<Option<String>> = views.iter().map(|v| v.release.clone()).collect();
    assert_ne!(r1, r2);
    for (v, old) in views.iter().zip(&containers1) {
        let c = v.container.as_ref().expect("a container serves");
        assert_ne!(&c.id, old, "the container was replaced");
        assert_eq!(c.health, "healthy");
    }
    for run in &d.runs {
        assert!(!run.result["previous"].as_str().unwrap_or("").is_empty());
    }

    // Broken v3 (no health endpoint) through --wait, one host per wave: the first host
    // switches, the container's own healthcheck fails, `compose up --wait` fails, it rolls
    // back to v2; the rollout stops, so the second host never receives v3: exit 8.
    let c3 = p.commit_broken().unwrap();
    let (code, json, runs) = upload_waiting(&mut p);
    assert_eq!(
        code, 8,
        "--wait exit code for a rolled-back deploy: {json:#}"
    );
    assert_eq!(json["commit"], c3.as_str());
    let v3 = json["version_id"].as_str().unwrap().to_owned();
    let (first, second) = (instance_ids(&p)[0].clone(), instance_ids(&p)[1].clone());
    let v3_hosts = vec![
        (first.clone(), "rolled_back".to_string(), Some(9)),
        (second.clone(), "not_sent".to_string(), None),
    ];
    assert_eq!(waited_hosts(&json), v3_hosts, "{json:#}");
    assert_eq!(
        json["deploy"]["status"]["fleet"]["outcome"], "rolled_back",
        "{json:#}"
    );
    assert_eq!(runs.len(), 1, "the second host never got v3");
    for r in &runs {
        assert_eq!(
            (r.status.as_str(), r.code, r.outcome()),
            ("Failed", 9, "rolled_back")
        );
        assert!(
            r.result["attempted"]
                .as_str()
                .unwrap_or("")
                .ends_with(&c3[..7]),
            "the broken release was tried: {}",
            r.output
        );
        // The real engine's verdict: the container's own healthcheck failed, Docker marked it
        // unhealthy and `compose up --wait` failed naming it; the host rolled back on that.
        assert!(
            r.output.contains("is unhealthy") && r.output.contains("docker compose up failed"),
            "{}",
            r.output
        );
    }
    let views = p.wait_serving(&c2, SETTLE);
    let after: Vec<Option<String>> = views.iter().map(|v| v.release.clone()).collect();
    assert_eq!(after, r2, "v2's own release serves again");
    assert!(views.iter().all(|v| v.health == Some(200)), "{}", table(&p));

    // `dropship status v3`: per host, rolled back with the host's exit code, read from SSM.
    let out = p.dropship(&["status", &v3, "--json"]).success();
    let status = out.json();
    assert_eq!(status["version_id"], v3.as_str(), "{status:#}");
    assert_eq!(status["commit"], c3.as_str(), "{status:#}");
    assert_eq!(hosts_of(&status), v3_hosts, "{status:#}");
    let record = p.record(&v3).unwrap().unwrap();
    assert_eq!(record.outcome, Outcome::Dispatched);
    let rolled = status["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["instance_id"] == first.as_str())
        .unwrap();
    assert_eq!(rolled["command_id"], record.commands[0].command_id.as_str());
    assert_eq!(rolled["result"]["outcome"], "rolled_back", "{rolled:#}");
    assert_eq!(
        record.commands.len(),
        1,
        "no second wave, nothing to send back"
    );

    // `dropship rollback v1`: a new version with v1's bytes and metadata, deployed like any upload.
    let out = p.dropship(&["rollback", &v1, "--yes", "--json"]).success();
    let summary = out.json();
    let r = summary["new_version_id"]
        .as_str()
        .or(summary["version_id"].as_str())
        .unwrap()
        .to_owned();
    assert_ne!(r, v1);
    assert_eq!(summary["restored_from"], v1.as_str(), "{summary:#}");
    let d = p.deploy(&r).unwrap();
    assert_eq!(d.events.len(), 1);
    assert_deploy(&p, &d, 0, "deployed", &c1);

    // releases: the key's history with what the deployer did for each.
    let out = p.dropship(&["releases", "--json"]).success();
    let report = &out.json()[0];
    let rows = report["versions"].as_array().unwrap();
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["version_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [&r, &v3, &v2.version_id, &v1],
        "newest first: {report:#}"
    );
    let commits: Vec<&str> = rows
        .iter()
        .map(|r| r["metadata"]["commit"].as_str().unwrap())
        .collect();
    assert_eq!(commits, [&c1, &c3, &c2, &c1]);
    for row in rows {
        assert_eq!(row["deploy"]["outcome"], "dispatched", "{row:#}");
    }
    let fleets: Vec<&str> = rows
        .iter()
        .map(|r| r["deploy"]["fleet"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        fleets,
        ["deployed", "rolled_back", "deployed", "deployed"],
        "{report:#}"
    );
    let text = p.dropship(&["releases"]).success().stdout;
    assert!(text.contains("deployed on 2/2"), "{text}");
    assert!(
        text.contains("rolled back (fleet): 1 rolled_back, 1 not_sent"),
        "{text}"
    );
    assert_eq!(rows[0]["is_latest"], true);
    assert_eq!(rows[0]["metadata"]["restored_from"], v1.as_str());
    assert!(rows[1..]
        .iter()
        .all(|r| r["metadata"]["restored_from"].is_null()));
    // `newest_dispatched` is not asserted here: moto gives every event the same sequencer, so
    // the deployer's pointer (which only moves to a strictly newer one) stays on v1. The
    // ordering test below covers it with S3-like sequencers.

    // The old spelling still works and says where it moved; the default version is the key's
    // current one (the rollback).
    let out = p.cli(&["status", "--json"]).success();
    assert_eq!(out.json()["version_id"], r.as_str());
    assert!(out.stderr.contains("dropship status"), "{}", out.stderr);
}

#[test]
fn a_rollback_that_fails_too_exits_10_and_status_says_so() {
    let mut p = start();
    let c1 = p.commit_release("v1");
    let (code, json, _) = upload_waiting(&mut p);
    assert_eq!(code, 0, "{json:#}");
    p.wait_serving(&c1, SETTLE);
    // The previous release is damaged on disk (someone deleted a file of it on the host):
    // a rollback to it cannot come up healthy either.
    for (h, v) in p.hosts.iter().zip(p.views()) {
        let release = v.release.expect("v1 is current");
        let health = p
            .app_root(h)
            .join("releases")
            .join(&release)
            .join("public/health");
        std::fs::remove_file(&health).unwrap();
    }
    p.commit_broken().unwrap();
    let (code, json, runs) = upload_waiting(&mut p);
    assert_eq!(
        code, 10,
        "--wait exit code when the rollback failed too: {json:#}"
    );
    let ids = instance_ids(&p);
    let expected = vec![
        (ids[0].clone(), "rollback_failed".to_string(), Some(10)),
        (ids[1].clone(), "not_sent".to_string(), None),
    ];
    assert_eq!(waited_hosts(&json), expected, "{json:#}");
    assert_eq!(
        json["deploy"]["status"]["fleet"]["outcome"],
        "rollback_failed"
    );
    assert_eq!(runs.len(), 1, "the rollout stopped after the first host");
    for r in &runs {
        assert_eq!(
            (r.status.as_str(), r.code, r.outcome()),
            ("Failed", 10, "rollback_failed")
        );
    }
    let version = json["version_id"].as_str().unwrap();
    let status = p.dropship(&["status", version, "--json"]).success().json();
    assert_eq!(hosts_of(&status), expected, "{status:#}");
    // Nothing healthy serves on the first host, and status said so.
    let first = p.hosts.iter().find(|h| h.instance_id == ids[0]).unwrap();
    assert_ne!(p.view(first).health, Some(200), "{}", table(&p));
}

#[test]
fn an_offline_agent_is_recorded_pending_then_catches_up_once_when_it_comes_online() {
    let mut p = start();
    let c1 = p.commit_release("v1");
    let offline = &p.hosts[1];
    offline.agent.set_online(false);
    let (offline_id, online_id) = (offline.instance_id.clone(), p.hosts[0].instance_id.clone());
    let (code, json, runs) = upload_waiting(&mut p);
    assert_eq!(
        code, 0,
        "an instance SSM does not report online never fails the deploy: {json:#}"
    );
    let hosts = waited_hosts(&json);
    assert!(
        hosts.contains(&(online_id.clone(), "success".into(), Some(0))),
        "{json:#}"
    );
    assert!(
        hosts.contains(&(offline_id.clone(), "offline".into(), None)),
        "{json:#}"
    );
    assert_eq!(runs.len(), 1, "nothing was sent to the offline instance");
    let version = json["version_id"].as_str().unwrap();
    let record = p.record(version).unwrap().unwrap();
    let rollout = record.fleet.expect("rollout");
    assert_eq!(rollout.pending, std::slice::from_ref(&offline_id));
    assert!(rollout.reason.unwrap().contains("not online in SSM"));
    let status = p.dropship(&["status", version, "--json"]).success().json();
    let detail = status["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["instance_id"] == offline_id.as_str())
        .map(|h| h["detail"].as_str().unwrap_or("").to_owned())
        .unwrap();
    assert!(detail.contains("not online in SSM"), "{status:#}");
    // The reached host serves v1; the offline one was never touched.
    let views = p.views();
    assert_eq!(views[0].commit.as_deref(), Some(c1.as_str()));
    assert_eq!(views[1].release, None, "{}", table(&p));
    let finished = p.notifications().unwrap();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["detail"]["outcome"], "deployed");

    // Its agent comes back and EC2 reports the instance running — twice (events are at least
    // once): it receives v1 by itself, exactly once.
    p.hosts[1].agent.set_online(true);
    let back = p
        .hosts
        .iter()
        .find(|h| h.instance_id == offline_id)
        .unwrap();
    p.instance_started(back).unwrap();
    p.instance_started(back).unwrap();
    let version_owned = version.to_owned();
    p.deliver_until("the offline host catches up", |p| {
        p.record(&version_owned)
            .unwrap()
            .and_then(|r| r.fleet)
            .is_some_and(|f| {
                f.hosts
                    .iter()
                    .all(|h| h.outcome == dropship_contract::fleet::HostState::Success)
            })
    })
    .unwrap();
    p.deliver_pending().unwrap(); // the duplicate, if it was still queued
    let record = p.record(version).unwrap().unwrap();
    let to_offline: Vec<_> = record
        .commands
        .iter()
        .filter(|c| c.instance_ids.contains(&offline_id))
        .collect();
    assert_eq!(to_offline.len(), 1, "caught up once: {:?}", record.commands);
    let views = p.wait_serving(&c1, SETTLE);
    assert!(views.iter().all(|v| v.health == Some(200)), "{}", table(&p));
    let text = p.dropship(&["releases"]).success().stdout;
    assert!(text.contains("deployed on 2/2"), "{text}");
    assert!(
        p.notifications().unwrap().is_empty(),
        "catch-up is not a new deploy"
    );
}

/// The version's deploy-finished notifications that reached the bus (through the rule).
fn finished_for(seen: &[Value], version: &str) -> Vec<Value> {
    seen.iter()
        .filter(|e| e["detail"]["version_id"] == version)
        .cloned()
        .collect()
}

/// Hosts of `p` in rollout order (waves go by sorted instance id).
fn in_rollout_order(p: &Pipeline) -> Vec<&dropship_tests::pipeline::Host> {
    let mut hosts: Vec<&dropship_tests::pipeline::Host> = p.hosts.iter().collect();
    hosts.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    hosts
}

#[test]
fn four_hosts_one_at_a_time_a_failure_on_host_3_rolls_the_fleet_back_and_leave_keeps_it_mixed() {
    let mut p = Pipeline::start(&Options {
        hosts: 4,
        max_concurrency: Some("1".into()),
        ..Options::unique()
    })
    .expect("pipeline starts");
    let c1 = p.commit_release("v1");
    let (code, json, _) = upload_waiting(&mut p);
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(waited_hosts(&json), all_hosts(&p, "success", Some(0)));
    let v1 = json["version_id"].as_str().unwrap().to_owned();
    p.wait_serving(&c1, SETTLE);

    // v2 needs a marker in the shared data that host 3 lacks: its container never becomes
    // healthy there (a real compose healthcheck), the others pass.
    let order: Vec<String> = in_rollout_order(&p)
        .iter()
        .map(|h| h.instance_id.clone())
        .collect();
    for (i, h) in in_rollout_order(&p).into_iter().enumerate() {
        if i != 2 {
            std::fs::write(p.app_root(h).join("shared/data/ready"), "yes\n").unwrap();
        }
    }
    let compose = std::fs::read_to_string(p.repo.path().join("compose.yaml")).unwrap();
    let needs_ready = compose.replace(
        r#"test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8000/public/health"]"#,
        r#"test: ["CMD", "test", "-f", "/srv/data/ready"]"#,
    );
    assert_ne!(
        compose, needs_ready,
        "the sample's healthcheck line changed"
    );
    p.repo.write("compose.yaml", needs_ready);
    let c2 = p.commit_release("v2");
    let (code, json, _) = upload_waiting(&mut p);
    assert_eq!(code, 8, "--wait: the fleet rolled back: {json:#}");
    let v2 = json["version_id"].as_str().unwrap().to_owned();
    let expected = vec![
        (order[0].clone(), "success".to_string(), Some(0)),
        (order[1].clone(), "success".to_string(), Some(0)),
        (order[2].clone(), "rolled_back".to_string(), Some(9)),
        (order[3].clone(), "not_sent".to_string(), None),
    ];
    assert_eq!(waited_hosts(&json), expected, "{json:#}");
    let fleet = &json["deploy"]["status"]["fleet"];
    assert_eq!(fleet["outcome"], "rolled_back", "{json:#}");
    let sent_back: Vec<(String, String)> = fleet["rollback"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["instance_id"].as_str().unwrap().into(),
                h["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        sent_back,
        vec![
            (order[0].clone(), "success".into()),
            (order[1].clone(), "success".into())
        ],
        "hosts 1 and 2 were sent back: {json:#}"
    );
    // Every host serves v1 again; host 4 never ran v2 at all.
    let views = p.wait_serving(&c1, SETTLE);
    assert!(views.iter().all(|v| v.health == Some(200)), "{}", table(&p));
    let fourth = in_rollout_order(&p)[3];
    assert!(
        p.audit(fourth)
            .iter()
            .all(|e| e["version_id"] != v2.as_str()),
        "host 4 never ran v2"
    );
    // The SSM side agrees: three deploy commands, one rollback command for two hosts.
    let record = p.record(&v2).unwrap().unwrap();
    let purposes: Vec<(String, usize)> = record
        .commands
        .iter()
        .map(|c| (c.purpose.as_str().to_owned(), c.instance_ids.len()))
        .collect();
    assert_eq!(
        purposes,
        [
            ("deploy".into(), 1),
            ("deploy".into(), 1),
            ("deploy".into(), 1),
            ("rollback".into(), 2)
        ]
    );
    // status, releases and the bus say the same.
    let status = p.dropship(&["status", &v2, "--json"]).success().json();
    assert_eq!(hosts_of(&status), expected, "{status:#}");
    assert_eq!(status["verdict"], "rolled_back");
    let text = p.dropship(&["releases"]).success().stdout;
    assert!(
        text.contains("rolled back (fleet): 2 success, 1 rolled_back, 1 not_sent; 2 sent back"),
        "{text}"
    );
    let seen = p.notifications().unwrap();
    let finished = finished_for(&seen, &v2);
    assert_eq!(finished.len(), 1, "exactly one notification: {seen:#?}");
    assert_eq!(finished[0]["source"], "dropship");
    assert_eq!(finished[0]["detail-type"], "Dropship Deployment Finished");
    assert_eq!(finished[0]["detail"]["outcome"], "rolled_back");
    assert_eq!(finished[0]["detail"]["succeeded"], false);
    assert_eq!(finished[0]["detail"]["commit"], c2.as_str());
    assert_eq!(finished_for(&seen, &v1)[0]["detail"]["outcome"], "deployed");

    // The same failure with on_failure = "leave": hosts 1 and 2 keep v3, host 3 rolled itself
    // back, host 4 never got it — a mixed fleet, and every report says so.
    let toml = std::fs::read_to_string(p.repo.path().join("dropship.toml")).unwrap();
    p.repo
        .write("dropship.toml", format!("{toml}on_failure = \"leave\"\n"));
    let c3 = p.commit_release("v3");
    let (code, json, _) = upload_waiting(&mut p);
    assert_eq!(code, 9, "--wait: partially deployed: {json:#}");
    let v3 = json["version_id"].as_str().unwrap().to_owned();
    assert_eq!(waited_hosts(&json), expected, "{json:#}");
    assert_eq!(
        json["deploy"]["status"]["fleet"]["outcome"],
        "partially_deployed"
    );
    assert_eq!(json["deploy"]["status"]["verdict"], "partially_deployed");
    let serving: Vec<Option<String>> = in_rollout_order(&p)
        .into_iter()
        .map(|h| p.view(h).commit)
        .collect();
    assert_eq!(
        serving,
        [
            Some(c3.clone()),
            Some(c3.clone()),
            Some(c1.clone()),
            Some(c1.clone())
        ],
        "{}",
        table(&p)
    );
    let finished = finished_for(&p.notifications().unwrap(), &v3);
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["detail"]["outcome"], "partially_deployed");
    assert!(finished[0]["detail"]["reason"]
        .as_str()
        .unwrap()
        .contains("on_failure = leave"));
}

/// Command ids in a version's record.
fn d_commands(p: &Pipeline, version_id: &str) -> Vec<String> {
    p.record(version_id)
        .unwrap()
        .map(|r| r.commands.into_iter().map(|c| c.command_id).collect())
        .unwrap_or_default()
}

#[test]
fn the_same_event_delivered_twice_deploys_once_per_host() {
    let mut p = start();
    let c1 = p.commit_release("v1");
    let v1 = upload(&p);
    let events = p.events_for(&v1.version_id, SETTLE).unwrap();
    let event = events[0].clone();

    let first = p.deliver(&event).unwrap();
    assert_eq!(first["outcome"], "dispatched", "{first}");
    p.settle(&v1.version_id).unwrap();
    let runs = p.wait_dispatched(&v1.version_id).unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs
        .iter()
        .all(|r| r.code == 0 && r.outcome() == "deployed"));

    // EventBridge delivers at least once: the same event again.
    let second = p.deliver(&event).unwrap();
    assert_eq!(second["outcome"], "skipped_duplicate", "{second}");
    assert_eq!(
        p.wait_dispatched(&v1.version_id).unwrap().len(),
        0,
        "no second command"
    );
    assert_eq!(
        d_commands(&p, &v1.version_id).len(),
        2,
        "one command per wave"
    );
    assert_eq!(
        p.notifications().unwrap().len(),
        1,
        "one deploy, one notification"
    );

    for h in &p.hosts {
        let deployed: Vec<Value> = p
            .audit(h)
            .into_iter()
            .filter(|e| e["version_id"] == v1.version_id.as_str())
            .collect();
        assert_eq!(deployed.len(), 1, "{}: {deployed:?}", h.name);
        assert_eq!(p.releases(h).len(), 1, "{}", h.name);
    }
    let views = p.wait_serving(&c1, SETTLE);
    assert!(views.iter().all(|v| v.health == Some(200)), "{}", table(&p));
}

/// moto stamps every event with the same `sequencer`; S3's grow with each write to a key.
/// These fixtures replace it with what S3 would send for two successive writes (same
/// length, hex, increasing), so ordering is decided by the sequencer as on AWS.
fn with_sequencer(event: &Value, sequencer: &str) -> Value {
    let mut e = event.clone();
    e["detail"]["object"]["sequencer"] = Value::String(sequencer.to_owned());
    e
}

#[test]
fn events_delivered_out_of_order_leave_the_newest_release() {
    let mut p = start();
    let c1 = p.commit_release("v1");
    let v1 = upload(&p);
    let c2 = p.commit_release("v2");
    let v2 = upload(&p);
    let e1 = with_sequencer(
        &p.events_for(&v1.version_id, SETTLE).unwrap()[0],
        "0062E99A88DC407460",
    );
    let e2 = with_sequencer(
        &p.events_for(&v2.version_id, SETTLE).unwrap()[0],
        "0062E99A88DC4074A0",
    );

    // The newer event arrives first and is deployed.
    let a = p.deliver(&e2).unwrap();
    assert_eq!(a["outcome"], "dispatched", "{a}");
    p.settle(&v2.version_id).unwrap();
    let runs = p.wait_dispatched(&v2.version_id).unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs.iter().all(|r| r.code == 0), "{runs:?}");

    // The older one arrives late: skipped, recorded, nothing sent.
    let b = p.deliver(&e1).unwrap();
    assert_eq!(b["outcome"], "skipped_stale", "{b}");
    assert_eq!(p.wait_dispatched(&v1.version_id).unwrap().len(), 0);
    let record = p
        .record(&v1.version_id)
        .unwrap()
        .expect("stale is recorded");
    assert_eq!(record.outcome, Outcome::SkippedStale);
    assert!(record.commands.is_empty());

    let views = p.wait_serving(&c2, SETTLE);
    for v in &views {
        assert_eq!(v.commit.as_deref(), Some(c2.as_str()), "{}", table(&p));
        assert_eq!(v.health, Some(200));
    }
    assert_ne!(c1, c2);
    let out = p.dropship(&["releases", "--json"]).success();
    let rows = out.json()[0]["versions"].clone();
    let row = |id: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["version_id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(row(&v2.version_id)["deploy"]["newest_dispatched"], true);
    assert_eq!(row(&v1.version_id)["deploy"]["outcome"], "skipped_stale");
}

// ---------------------------------------------------------------------------------------
// A hostile bundle: a real bundle with one more entry, `../x`, uploaded with valid metadata
// (correct SHA-256 of the new bytes) straight through the SDK, as a compromised uploader
// could. The bundler would refuse to build it; the deployer must refuse to send it.

fn gzip(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = child.stdin.take().unwrap();
    let data = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// A ustar header + data for a regular file named `name` (any bytes, `..` included).
fn tar_file(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let mut octal = |at: usize, width: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = width - 1);
        h[at..at + width].copy_from_slice(s.as_bytes());
    };
    octal(100, 8, 0o644);
    octal(108, 8, 0);
    octal(116, 8, 0);
    octal(124, 12, data.len() as u64);
    octal(136, 12, 1_700_000_000);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

/// `bundle` (tar.gz) with `extra` appended before the end-of-archive blocks.
fn append_entry(bundle: &[u8], extra: Vec<u8>) -> Vec<u8> {
    let mut tar = gzip(&["-d", "-c"], bundle);
    while tar.len() >= 512 && tar[tar.len() - 512..].iter().all(|b| *b == 0) {
        tar.truncate(tar.len() - 512);
    }
    tar.extend(extra);
    tar.resize(tar.len() + 1024, 0);
    gzip(&["-n", "-c"], &tar)
}

#[test]
fn a_hostile_bundle_never_reaches_a_host() {
    let mut p = start();
    let c1 = p.commit_release("v1");
    let v1 = upload(&p);
    let d = p.deploy(&v1.version_id).unwrap();
    assert_deploy(&p, &d, 0, "deployed", &c1);
    let before: Vec<Vec<String>> = p.hosts.iter().map(|h| p.releases(h)).collect();

    let (bytes, meta) = p.block_on(async {
        let got =
            p.s3.get_object()
                .bucket(&p.bucket)
                .key(p.key())
                .version_id(&v1.version_id)
                .send()
                .await
                .unwrap();
        let headers = got.metadata().cloned().unwrap_or_default();
        let bytes = got.body.collect().await.unwrap().into_bytes().to_vec();
        (bytes, headers)
    });
    let hostile = append_entry(&bytes, tar_file("../x", b"escaped\n"));
    let mut meta = ObjectMetadata::from_headers(&meta).expect("v1 metadata is valid");
    meta.sha256 = dropship_tests::host::sha256_hex(&hostile);
    meta.message = "hostile".into();
    let headers = meta.to_headers().unwrap();
    let version = p.block_on(async {
        let mut req =
            p.s3.put_object()
                .bucket(&p.bucket)
                .key(p.key())
                .body(ByteStream::from(hostile));
        for (k, v) in headers {
            req = req.metadata(k, v);
        }
        req.send().await.unwrap().version_id().unwrap().to_owned()
    });

    let d = p.deploy(&version).unwrap();
    assert_eq!(d.outcome(), "rejected", "{}", explain(&d));
    let answer = d.lambda[0].as_ref().unwrap();
    assert!(
        answer["reason"].as_str().unwrap_or("").contains("../x"),
        "{answer}"
    );
    assert!(d.runs.is_empty(), "{}", explain(&d));
    let record = p.record(&version).unwrap().unwrap();
    assert_eq!(record.outcome, Outcome::Rejected);
    assert!(record.commands.is_empty());

    // Hosts unchanged: same releases, v1 serving, nothing written outside a release.
    let after: Vec<Vec<String>> = p.hosts.iter().map(|h| p.releases(h)).collect();
    assert_eq!(before, after);
    for h in &p.hosts {
        let root = p.app_root(h);
        assert!(!root.join("x").exists() && !root.join("releases/x").exists());
    }
    let views = p.wait_serving(&c1, SETTLE);
    assert!(views.iter().all(|v| v.health == Some(200)), "{}", table(&p));

    // The operator commands say so.
    let out = p.dropship(&["releases", "--json"]).success();
    let top = out.json()[0]["versions"][0].clone();
    assert_eq!(top["version_id"], version.as_str());
    assert_eq!(top["deploy"]["outcome"], "rejected", "{top:#}");
    assert_eq!(top["deploy"]["hosts"], 0, "{top:#}");
    let out = p.dropship(&["status", &version, "--json"]).success();
    let status = out.json();
    assert_eq!(status["phase"], "refused", "{status:#}");
    assert_eq!(status["verdict"], "refused", "{status:#}");
    assert_eq!(status["hosts"].as_array().map(Vec::len), Some(0));
}

/// A `[env.staging.deploy]` override reaches the staging hosts through a bundle that names no
/// environment: the override's compose profile starts its service there, beside the base
/// settings' one.
#[test]
fn an_environment_override_runs_on_that_environments_hosts() {
    let mut p = start();
    let config = std::fs::read_to_string(p.repo.path().join("dropship.toml")).unwrap();
    p.repo.write(
        "dropship.toml",
        format!("{config}\n[env.{ENV}.deploy]\nprofiles = [\"extra\"]\n"),
    );
    let compose = std::fs::read_to_string(p.repo.path().join("compose.yaml")).unwrap();
    p.repo.write(
        "compose.yaml",
        compose.replacen(
            "\nvolumes:\n",
            "\n  extra:\n    image: busybox:1.35\n    init: true\n    command: [\"sleep\", \"3600\"]\n    profiles: [\"extra\"]\nvolumes:\n",
            1,
        ),
    );
    let commit = p.commit_release("override");
    let up = p.upload().unwrap();
    let d = p.deploy(&up.version_id).unwrap();
    assert_deploy(&p, &d, 0, "deployed", &commit);
    let project = format!("{}-{ENV}", p.app);
    for h in &p.hosts {
        let mut services: Vec<String> = h
            .sim()
            .containers(&project)
            .into_iter()
            .map(|c| c.service)
            .collect();
        services.sort();
        assert_eq!(services, ["extra", "store", "web"], "{}", table(&p));
    }
}
