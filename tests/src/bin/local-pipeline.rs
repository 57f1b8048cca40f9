//! `local-pipeline`: the whole deploy pipeline on this machine, narrated (run it through
//! `scripts/local-pipeline`, which installs the tools, builds the binaries and starts moto).
//!
//! Each step runs the CLI as CI and operators run it, with `--wait`, while the harness delivers
//! the events it causes to the Lambda as EventBridge does (S3 uploads, SSM's per-host status
//! changes). Three simulated hosts with real Docker engines, rolled two at a time: v1 and v2
//! deploy everywhere; v3 needs a marker the last host of the rollout lacks, so its container
//! turns unhealthy, it rolls back by itself and the fleet loop sends the first two hosts back
//! to v2 (`--wait` exits 8, v2 serves everywhere); a broken v4 fails on the first host and the
//! rollout stops there; `dropship rollback` to v1 redeploys it everywhere; `dropship promote`
//! copies that exact version to production, whose own host deploys it. Host results are what
//! SSM (the local SSM endpoint) reports and the Lambda stored. Exits non-zero when any step does
//! not end as expected. Then the operator's walkthrough: `dropship releases`, `status` of the
//! rolled-back v3, `logs` of v1 on one host (with the Lambda's own lines), a refused `promote`
//! of v3 and `doctor`, each printed with its exit code. `DROPSHIP_PIPELINE_KEEP=1` keeps the Lambda's log;
//! `DROPSHIP_PIPELINE_VERBOSE=1` prints every host's output.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use aws_sdk_s3::types::{EventBridgeConfiguration, NotificationConfiguration};
use dropship_tests::load::{Load, LoadReport, LoadSpec, Mode};
use dropship_tests::pipeline::{self, HostRun, Options, Pipeline};
use dropship_tests::s3_notifications::S3NotificationEndpoint;
use serde_json::Value;

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
    /// The CLI's exit code with `--wait`.
    wait: i32,
    lambda: String,
    hosts: String,
    serving: String,
    /// Per host: the container serving after the step (short id) and its Docker health.
    containers: String,
    /// Requests that failed under load during the step (new connections and keep-alive
    /// clients that retry as HTTP says), of those sent, through the proxy of every host
    /// that served before it.
    failed: String,
    /// Whether the long-lived `store` service was restarted on any host.
    store: String,
    secs: f64,
}

/// Requests per second each serving host gets while a step runs.
const LOAD_PER_HOST: u32 = 60;

/// The `store` service's start count on a host (lines of its `starts` file), if it runs.
fn store_starts(p: &Pipeline, host: &pipeline::Host, env: &str) -> Option<usize> {
    let out = host.sim().docker_output(&[
        "exec",
        &format!("{}-{env}-store-1", p.app),
        "cat",
        "/var/lib/store/starts",
    ]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).lines().count())
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
        hosts: 3,
        lambda_log: Some(log.clone()),
        max_concurrency: Some("2".into()),
        production_hosts: 1,
    };
    let mut p = Pipeline::start(&opts)?;
    say(&format!(
        "bucket s3://{} (versioned, EventBridge notifications); rule {} -> SQS capture queue",
        p.bucket, p.rule
    ));
    for h in p.all_hosts() {
        say(&format!(
            "{} = instance {} (tags dropship:app={}, dropship:env={}): its own dockerd (pid {}), \
             network and /opt, SSM agent online; the app on its own 127.0.0.1:{}",
            h.name,
            h.instance_id,
            p.app,
            h.env,
            h.sim().dockerd_pid().map_or("?".into(), |p| p.to_string()),
            pipeline::APP_PORT
        ));
    }
    say(&format!(
        "deployer-lambda running as a Lambda (pid {}); SSM at the local endpoint {}; sample app in a throwaway git repo",
        p.lambda_pid(),
        p.local_ssm.endpoint_url()
    ));
    say(&format!(
        "setup took {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let mut rows = Vec::new();

    let c1 = p.commit_release("v1");
    let v1 = step(&mut p, &mut rows, "upload v1", 0, &c1, Cli::Upload)?;

    let c2 = p.commit_release("v2");
    step(&mut p, &mut rows, "upload v2", 0, &c2, Cli::Upload)?;

    // v3's healthcheck needs data/ready in the host's shared data; the last host of the
    // rollout (waves of two, by instance id) has none: the first wave switches, the last
    // host's container turns unhealthy and it rolls back, and the fleet loop sends the first
    // two back to v2.
    let mut order: Vec<&pipeline::Host> = p.hosts.iter().collect();
    order.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    let last = order.last().map(|h| h.name.clone()).unwrap_or_default();
    for h in &order[..order.len() - 1] {
        std::fs::write(p.app_root(h).join("shared/data/ready"), "yes\n")?;
    }
    say(&format!("v3 needs shared/data/ready, which {last} lacks"));
    let compose = std::fs::read_to_string(p.repo.path().join("compose.yaml"))?;
    let healthcheck =
        r#"test: ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8000/public/health"]"#;
    if !compose.contains(healthcheck) {
        bail!("the sample's compose healthcheck changed; update the v3 step");
    }
    p.repo.write(
        "compose.yaml",
        compose.replace(
            healthcheck,
            r#"test: ["CMD", "test", "-f", "/srv/data/ready"]"#,
        ),
    );
    p.commit_release("v3");
    let v3 = step(&mut p, &mut rows, "v3 (last host bad)", 8, &c2, Cli::Upload)?;
    p.repo.write("compose.yaml", compose);
    p.repo.commit("sample app: v3's healthcheck reverted");

    // broken v4: no health endpoint at all; the first wave rolls back, the third host never
    // gets it.
    p.commit_broken()?;
    step(&mut p, &mut rows, "upload broken v4", 8, &c2, Cli::Upload)?;

    let restored = step(
        &mut p,
        &mut rows,
        "rollback to v1",
        0,
        &c1,
        Cli::Rollback(v1.clone()),
    )?;

    // What staging runs now (v1's bytes, deployed on every staging host) goes to production,
    // named by its version (promote copies nothing it was not told to, off a terminal).
    step(
        &mut p,
        &mut rows,
        "promote to prod",
        0,
        &c1,
        Cli::Promote(restored),
    )?;

    let elapsed = started.elapsed();
    println!();
    println!(
        "{:<18} {:<36} {:<8} {:<5} {:<12} {:<62} {:<11} {:<22} {:<8} {:>5}",
        "STEP",
        "S3 VERSION",
        "COMMIT",
        "WAIT",
        "FLEET",
        "HOSTS (state exit; sent back)",
        "SERVING",
        "FAILED REQ (of sent)",
        "STORE",
        "SECS"
    );
    for r in &rows {
        println!(
            "{:<18} {:<36} {:<8} {:<5} {:<12} {:<62} {:<11} {:<22} {:<8} {:>5.1}",
            r.step,
            r.version,
            r.commit,
            r.wait,
            r.lambda,
            r.hosts,
            r.serving,
            r.failed,
            r.store,
            r.secs
        );
    }
    println!(
        "FAILED REQ: requests through each serving host's proxy during the step ({LOAD_PER_HOST}/s per host; new connections and keep-alive clients that retry as HTTP says) that got no 2xx; naive: a keep-alive client that never retries. STORE: hosts whose long-lived store service restarted."
    );
    println!();
    println!("hosts now:");
    println!("{}", pipeline::table(&p));
    println!();
    println!(
        "pipeline time: {:.1} s (setup, 4 uploads, a rollback and a promotion with --wait, events, Lambda, 14 host runs)",
        elapsed.as_secs_f64()
    );

    // The operator's side of the same pipeline: what they would run next.
    p.ship_lambda_log()?;
    let first = p
        .hosts
        .iter()
        .map(|h| h.instance_id.clone())
        .min()
        .unwrap_or_default();
    let log_group = pipeline::log_group(&p.app);
    // moto never returns the EventBridgeConfiguration it stores: doctor's S3 reads go through
    // the pass-through endpoint that answers as S3 does (the pipeline's setting, put again).
    let s3_fix = S3NotificationEndpoint::start();
    p.block_on(async {
        s3_fix
            .client()
            .await
            .put_bucket_notification_configuration()
            .bucket(&p.bucket)
            .notification_configuration(
                NotificationConfiguration::builder()
                    .event_bridge_configuration(EventBridgeConfiguration::builder().build())
                    .build(),
            )
            .send()
            .await
    })?;
    println!();
    println!("operator walkthrough (the `dropship` CLI against this pipeline):");
    for args in [
        vec!["releases"],
        vec!["status", v3.as_str()],
        vec![
            "logs",
            v1.as_str(),
            "--host",
            first.as_str(),
            "--log-group",
            log_group.as_str(),
            "--lambda-log-group",
            pipeline::LAMBDA_LOG_GROUP,
        ],
    ] {
        operator(&p, &args, &[])?;
    }
    // Production's history: the promoted copy says where it came from.
    operator_in(&p, pipeline::PROMOTED_ENV, &["releases"], &[])?;
    // v3 was rolled back in staging: promoting it is refused, and nothing is written.
    operator(
        &p,
        &[
            "promote",
            pipeline::ENV,
            pipeline::PROMOTED_ENV,
            "--version",
            v3.as_str(),
        ],
        &[],
    )?;
    operator(&p, &["doctor"], &s3_fix.aws_env())?;
    drop(p);
    if std::env::var("DROPSHIP_PIPELINE_KEEP").as_deref() == Ok("1") {
        println!("logs kept in {}", work.keep().display());
    }
    Ok(())
}

/// Runs `dropship ARGS` as an operator would (this pipeline's app, staging and bucket;
/// SSM at the local endpoint) and prints the command, its output and its exit code.
fn operator(p: &Pipeline, args: &[&str], env: &[(String, String)]) -> Result<()> {
    operator_in(p, pipeline::ENV, args, env)
}

/// [`operator`] for the environment `deploy_env`, which the printed command names.
fn operator_in(
    p: &Pipeline,
    deploy_env: &str,
    args: &[&str],
    env: &[(String, String)],
) -> Result<()> {
    let out = p
        .repo
        .dropship()
        .args(args)
        .args(["--app", &p.app, "--env", deploy_env, "--bucket", &p.bucket])
        .envs(p.local_ssm.aws_env())
        .envs(env.iter().cloned())
        .stdin(std::process::Stdio::null())
        .output()?;
    println!();
    if deploy_env == pipeline::ENV {
        println!("$ dropship {}", args.join(" "));
    } else {
        println!("$ dropship {} --env {deploy_env}", args.join(" "));
    }
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    println!("(exit {})", out.status.code().unwrap_or(-1));
    Ok(())
}

/// What a step runs.
enum Cli {
    /// `bundle-and-upload --wait` of HEAD.
    Upload,
    /// `dropship rollback <version> --yes --wait`.
    Rollback(String),
    /// `dropship promote staging production --version <version> --wait`.
    Promote(String),
}

/// Runs one step with `--wait`, checks its exit code and that every host serves `serving`
/// healthily afterwards, records a row; returns the new S3 version id.
fn step(
    p: &mut Pipeline,
    rows: &mut Vec<Row>,
    name: &'static str,
    expect_wait: i32,
    serving: &str,
    cli: Cli,
) -> Result<String> {
    let t = Instant::now();
    let env = match &cli {
        Cli::Promote(_) => pipeline::PROMOTED_ENV,
        _ => pipeline::ENV,
    };
    // Load through the proxy of every host that serves before the step, and the store's
    // start count on each.
    let before: Vec<(String, Option<usize>)> = p
        .hosts_in(env)
        .iter()
        .map(|h| (h.name.clone(), store_starts(p, h, env)))
        .collect();
    let loads: Vec<Load> = p
        .hosts_in(env)
        .iter()
        .filter(|h| p.view(h).health == Some(200))
        .map(|h| {
            let mut spec = LoadSpec::new(
                format!("127.0.0.1:{}", pipeline::APP_PORT).parse().unwrap(),
                "/public/health",
            );
            spec.rate_per_sec = LOAD_PER_HOST;
            spec.workers = 6;
            Load::start(h.sim().init_pid(), spec)
        })
        .collect();
    let out = match &cli {
        Cli::Upload => p.run_waiting(false, &[])?,
        Cli::Rollback(v) => p.run_waiting(true, &["rollback", v, "--yes"])?,
        Cli::Promote(v) => p.run_waiting(
            true,
            &[
                "promote",
                pipeline::ENV,
                pipeline::PROMOTED_ENV,
                "--version",
                v,
            ],
        )?,
    };
    let json: Value = serde_json::from_str(&out.stdout).map_err(|e| {
        anyhow!(
            "{name}: the CLI printed no JSON ({e}), exit {}: {}{}",
            out.code,
            out.stdout,
            out.stderr
        )
    })?;
    let version = ["new_version_id", "version_id"]
        .iter()
        .find_map(|k| json[*k].as_str())
        .ok_or_else(|| anyhow!("{name}: no version id in {json}"))?
        .to_owned();
    let runs = p.wait_dispatched_in(env, &version)?;
    if out.code != expect_wait {
        bail!(
            "{name}: --wait exited {} (expected {expect_wait}): {}\n{}",
            out.code,
            out.stderr,
            explain(&runs)
        );
    }
    let views = p.wait_serving_in(env, serving, Duration::from_secs(30));
    if views
        .iter()
        .any(|v| v.commit.as_deref() != Some(serving) || v.health != Some(200))
    {
        bail!(
            "{name}: {serving} is not served healthily on every {env} host:\n{}\n{}",
            pipeline::table(p),
            explain(&runs)
        );
    }
    if std::env::var("DROPSHIP_PIPELINE_VERBOSE").as_deref() == Ok("1") {
        for r in &runs {
            println!("  --- {} ({}) exit {}", r.host, r.instance_id, r.code);
            for l in r.output.lines() {
                println!("  | {l}");
            }
        }
    }
    let record = p.record_in(env, &version)?;
    let lambda = record.as_ref().map_or("no record".into(), |r| {
        r.fleet
            .as_ref()
            .and_then(|f| f.outcome)
            .map_or(r.outcome.as_str().to_owned(), |o| o.as_str().to_owned())
    });
    let name_of = |id: &str| {
        p.all_hosts()
            .find(|h| h.instance_id == id)
            .map_or(id.to_owned(), |h| {
                h.name.trim_start_matches("host-").to_owned()
            })
    };
    let hosts = record
        .as_ref()
        .and_then(|r| r.fleet.as_ref())
        .map(|f| {
            f.hosts
                .iter()
                .map(|h| {
                    let mut cell = format!("{} {}", name_of(&h.instance_id), h.outcome);
                    if let Some(code) = h.exit_code {
                        cell.push_str(&format!(" {code}"));
                    }
                    if let Some(back) = h.rollback {
                        cell.push_str(&format!("; back {back}"));
                    }
                    cell
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let reports: Vec<LoadReport> = loads.into_iter().map(Load::stop).collect();
    let failed = if reports.is_empty() {
        "- (nothing served)".to_owned()
    } else {
        let count = |modes: &[Mode]| -> (usize, usize) {
            let sent = reports
                .iter()
                .flat_map(|r| modes.iter().map(move |m| r.of(*m).count()))
                .sum();
            let failed = reports
                .iter()
                .flat_map(|r| modes.iter().map(move |m| r.failures(*m).len()))
                .sum();
            (failed, sent)
        };
        let (failed, sent) = count(&[Mode::Fresh, Mode::KeepAlive]);
        let (naive, _) = count(&[Mode::Naive]);
        format!("{failed}/{sent} (naive {naive})")
    };
    let restarted: Vec<String> = before
        .iter()
        .filter_map(|(name, was)| {
            let host = p.all_hosts().find(|h| &h.name == name)?;
            let now = store_starts(p, host, env);
            match (was, now) {
                (Some(a), Some(b)) if *a == b => None,
                (None, Some(_)) => None,
                _ => Some(name.trim_start_matches("host-").to_owned()),
            }
        })
        .collect();
    let store = if restarted.is_empty() {
        "never".to_owned()
    } else {
        format!("on {}", restarted.join(", "))
    };
    let containers = views
        .iter()
        .map(|v| match &v.container {
            Some(c) => format!("{} {}", &c.id[..12.min(c.id.len())], c.health),
            None => "none".into(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let served = views
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
    let row = Row {
        step: name,
        commit: json["commit"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(7)
            .collect(),
        version: version.clone(),
        wait: out.code,
        lambda,
        hosts,
        serving: served,
        containers,
        failed,
        store,
        secs: t.elapsed().as_secs_f64(),
    };
    say(&format!(
        "{}: version {} (commit {}) -> Lambda {} -> {} -> --wait exit {} -> serving {} ({}); failed requests under load {}; store restarted {}",
        row.step,
        row.version,
        row.commit,
        row.lambda,
        row.hosts,
        row.wait,
        row.serving,
        row.containers,
        row.failed,
        row.store
    ));
    rows.push(row);
    Ok(version)
}

fn say(line: &str) {
    println!("- {line}");
}

/// Each host's SSM status, exit code and last lines, for failure messages.
fn explain(runs: &[HostRun]) -> String {
    runs.iter()
        .map(|r| {
            let tail: Vec<&str> = r.output.lines().rev().take(12).collect();
            format!(
                "{} ({}) {} / {} exit {}:\n  {}",
                r.host,
                r.instance_id,
                r.status,
                r.details,
                r.code,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}
