//! `local-pipeline`: the whole deploy pipeline on this machine, narrated (run it through
//! `scripts/local-pipeline`, which installs the tools, builds the binaries and starts moto).
//!
//! v1 and v2 deploy on two simulated hosts with real Docker engines, a broken v3 (its container
//! turns unhealthy) rolls back by itself on both (v2 keeps serving), and `restore` of v1
//! redeploys it. Exits non-zero when any step does not end as
//! expected. Logs of the Lambda and of each host's command stay in the work directory named
//! at the end when `DROPSHIP_PIPELINE_KEEP=1`.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use dropship_tests::pipeline::{self, Deploy, Options, Pipeline, Upload};

fn main() {
    if let Err(e) = run() {
        eprintln!("local-pipeline: {e:#}");
        std::process::exit(1);
    }
}

struct Row {
    step: &'static str,
    version: String,
    commit: String,
    lambda: String,
    hosts: String,
    serving: String,
    /// Per host: the container serving after the step (short id) and its Docker health.
    containers: String,
    secs: f64,
}

fn run() -> Result<()> {
    let started = Instant::now();
    let work = tempfile::Builder::new()
        .prefix("dropship-pipeline-")
        .tempdir()?;
    let log = work.path().join("deployer-lambda.log");
    let opts = Options {
        app: "sample-app".into(),
        bucket: "dropship-artifacts".into(),
        hosts: 2,
        lambda_log: Some(log.clone()),
    };
    let mut p = Pipeline::start(&opts)?;
    say(&format!(
        "bucket s3://{} (versioned, EventBridge notifications); rule {} -> SQS capture queue",
        p.bucket, p.rule
    ));
    for h in &p.hosts {
        say(&format!(
            "{} = instance {} (tags dropship:app={}, dropship:env={}): its own dockerd (pid {}), \
             network and /opt; the app on its own 127.0.0.1:{}",
            h.name,
            h.instance_id,
            p.app,
            pipeline::ENV,
            h.sim.dockerd_pid().map_or("?".into(), |p| p.to_string()),
            pipeline::APP_PORT
        ));
    }
    say(&format!(
        "deployer-lambda running as a Lambda (pid {}); sample app in a throwaway git repo",
        p.lambda_pid()
    ));

    let mut rows = Vec::new();

    say(&format!(
        "setup took {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    // v1
    let t = Instant::now();
    let c1 = p.commit_release("v1");
    let v1 = p.upload()?;
    let d = p.deploy(&v1.version_id)?;
    expect_served(&p, &d, "v1", &c1)?;
    rows.push(row(&p, "upload v1", &v1, &d, t));
    narrate(&rows, &d);

    // v2
    let t = Instant::now();
    let c2 = p.commit_release("v2");
    let v2 = p.upload()?;
    let d = p.deploy(&v2.version_id)?;
    expect_served(&p, &d, "v2", &c2)?;
    rows.push(row(&p, "upload v2", &v2, &d, t));
    narrate(&rows, &d);

    // broken v3: its container's healthcheck fails after the switch, `compose up --wait`
    // reports it unhealthy, and each host rolls back to v2
    let t = Instant::now();
    let _c3 = p.commit_broken()?;
    let v3 = p.upload()?;
    let d = p.deploy(&v3.version_id)?;
    if d.runs.len() != p.hosts.len() || d.runs.iter().any(|r| r.code != 9) {
        bail!(
            "broken v3 was not rolled back on every host: {:?}",
            codes(&d)
        );
    }
    expect_served(&p, &d, "v2 after the rollback", &c2)?;
    rows.push(row(&p, "upload broken v3", &v3, &d, t));
    narrate(&rows, &d);

    // restore v1
    let t = Instant::now();
    let r = p.restore(&v1.version_id)?;
    let d = p.deploy(&r.version_id)?;
    expect_served(&p, &d, "restored v1", &c1)?;
    rows.push(row(&p, "restore v1", &r, &d, t));
    narrate(&rows, &d);

    let elapsed = started.elapsed();
    println!();
    println!(
        "{:<17} {:<36} {:<8} {:<11} {:<22} {:<8} {:<40} {:>5}",
        "STEP",
        "S3 VERSION",
        "COMMIT",
        "LAMBDA",
        "HOSTS (exit code)",
        "SERVING",
        "CONTAINERS (docker health)",
        "SECS"
    );
    for r in &rows {
        println!(
            "{:<17} {:<36} {:<8} {:<11} {:<22} {:<8} {:<40} {:>5.1}",
            r.step, r.version, r.commit, r.lambda, r.hosts, r.serving, r.containers, r.secs
        );
    }
    println!();
    println!("hosts now:");
    println!("{}", pipeline::table(&p));
    println!();
    println!(
        "pipeline time: {:.1} s (setup, 4 uploads/restores, events, Lambda, 8 host runs)",
        elapsed.as_secs_f64()
    );
    drop(p);
    if std::env::var("DROPSHIP_PIPELINE_KEEP").as_deref() == Ok("1") {
        println!("logs kept in {}", work.keep().display());
    }
    Ok(())
}

fn say(line: &str) {
    println!("- {line}");
}

fn narrate(rows: &[Row], d: &Deploy) {
    if std::env::var("DROPSHIP_PIPELINE_VERBOSE").as_deref() == Ok("1") {
        for r in &d.runs {
            println!("  --- {} ({}) exit {}", r.host, r.instance_id, r.code);
            for l in r.output.lines() {
                println!("  | {l}");
            }
        }
    }
    if let Some(r) = rows.last() {
        say(&format!(
            "{}: version {} (commit {}) -> Lambda {} -> {} -> serving {}",
            r.step, r.version, r.commit, r.lambda, r.hosts, r.serving
        ));
    }
}

fn codes(d: &Deploy) -> Vec<(String, i32, String)> {
    d.runs
        .iter()
        .map(|r| (r.host.clone(), r.code, r.outcome().to_owned()))
        .collect()
}

fn row(p: &Pipeline, step: &'static str, u: &Upload, d: &Deploy, t: Instant) -> Row {
    let secs = t.elapsed().as_secs_f64();
    let hosts = d
        .runs
        .iter()
        .map(|r| format!("{} ({})", r.outcome(), r.code))
        .collect::<Vec<_>>();
    let hosts = if hosts.iter().all(|h| h == &hosts[0]) && !hosts.is_empty() {
        format!("{}x {}", hosts.len(), hosts[0])
    } else {
        hosts.join(", ")
    };
    let views = p.views();
    let containers = views
        .iter()
        .map(|v| match &v.container {
            Some(c) => format!("{} {}", &c.id[..12.min(c.id.len())], c.health),
            None => "none".into(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let serving = views
        .iter()
        .map(|v| {
            let label = p.repo.git(&[
                "show",
                "-s",
                "--format=%s",
                v.commit.as_deref().unwrap_or("HEAD"),
            ]);
            label.trim().trim_start_matches("sample app ").to_owned()
        })
        .collect::<Vec<_>>()
        .join(", ");
    Row {
        step,
        version: u.version_id.clone(),
        commit: u.commit.chars().take(7).collect(),
        lambda: d.outcome(),
        hosts,
        serving,
        containers,
        secs,
    }
}

fn expect_served(p: &Pipeline, d: &Deploy, what: &str, commit: &str) -> Result<()> {
    let views = p.wait_serving(commit, Duration::from_secs(20));
    if views
        .iter()
        .any(|v| v.commit.as_deref() != Some(commit) || v.health != Some(200))
    {
        bail!(
            "{what} ({commit}) is not served healthily on every host:\n{}\n{}",
            pipeline::table(p),
            pipeline::explain(d)
        );
    }
    Ok(())
}
