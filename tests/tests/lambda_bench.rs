//! Cold start and memory of the Rust Lambda next to an equivalent Python 3.11 + boto3
//! handler (`benches/python_handler/`), both run as custom runtimes through the same local
//! Runtime API against the same moto server and local SSM endpoint, each on a fresh version
//! of a real bundle.
//!
//! In the normal suite this checks both handlers dispatch and that the Rust one stays within
//! its budget; `scripts/bench-lambda` runs it in release mode with `DROPSHIP_BENCH_RUNS` and
//! `DROPSHIP_BENCH_REPORT` (a JSON-lines file it summarises into the side-by-side table).

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use dropship_contract::metadata::{ObjectMetadata, Source};
use dropship_tests::bins;
use dropship_tests::host::{make_bundle, AppFiles, Bundle};
use dropship_tests::lambda_rt::LambdaProcess;
use dropship_tests::local_ssm::bash_instance::BashInstance;
use dropship_tests::local_ssm::{LocalSsm, LocalSsmConfig};
use dropship_tests::moto;
use serde_json::{json, Value};

const ENV: &str = "staging";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Runtime {
    Rust,
    Python,
}

#[derive(Debug)]
struct Sample {
    init: Duration,
    invoke: Duration,
    peak_rss_kib: u64,
    result: Value,
}

struct Setup {
    s3: aws_sdk_s3::Client,
    bucket: String,
    app: String,
    bundle: Bundle,
    /// SSM for both runtimes: the local endpoint, whose agents run on hosts without an engine.
    ssm: LocalSsm,
}

async fn setup() -> Setup {
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "bench", true).await;
    let app = moto::unique("bench");
    let ec2 = moto::ec2().await;
    let ids = moto::run_tagged_instances(&ec2, &app, ENV, 2, Some(&moto::host_profile(&app, ENV)))
        .await
        .expect("run instances");
    let ssm = LocalSsm::start(LocalSsmConfig::from_env());
    ssm.create_deploy_document().await;
    for id in &ids {
        ssm.add_instance(BashInstance::without_engine(
            id,
            &[("dropship:app", app.as_str()), ("dropship:env", ENV)],
        ));
    }
    let bundle = make_bundle(&app, &AppFiles::healthy(8080, "bench"));
    Setup {
        s3,
        bucket,
        app,
        bundle,
        ssm,
    }
}

impl Setup {
    fn key(&self) -> String {
        format!("releases/{}/{ENV}.tar.gz", self.app)
    }

    /// A fresh version of the bundle and its "Object Created" event.
    async fn fresh_event(&self, n: usize) -> Value {
        let meta = ObjectMetadata {
            app: self.app.clone(),
            env: ENV.into(),
            branch: "main".into(),
            commit: self.bundle.commit.clone(),
            dirty: false,
            sha256: self.bundle.sha256.clone(),
            created: "2026-11-23T09:00:00Z".into(),
            uploader: "bench".into(),
            source: Source::Local,
            message: "test release".into(),
            restored_from: None,
            promoted_from: None,
        };
        let mut req = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(self.key())
            .body(ByteStream::from(self.bundle.bytes.clone()));
        for (k, v) in meta.to_headers().unwrap() {
            req = req.metadata(k, v);
        }
        let version = req.send().await.unwrap().version_id().unwrap().to_owned();
        json!({
            "version": "0", "id": format!("bench-{n}"), "detail-type": "Object Created",
            "source": "aws.s3", "account": "123456789012", "time": "2026-11-23T09:00:00Z",
            "region": "us-east-1", "resources": [],
            "detail": {"version": "0", "bucket": {"name": self.bucket},
                "object": {"key": self.key(), "size": self.bundle.bytes.len(), "etag": "x",
                           "version-id": version, "sequencer": format!("{:020X}", n + 1)},
                "request-id": "r", "requester": "1", "source-ip-address": "127.0.0.1",
                "reason": "PutObject"}
        })
    }
}

fn python() -> PathBuf {
    let venv = std::env::var_os("DROPSHIP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| bins::workspace_root().join(".venv"));
    let p = venv.join("bin/python");
    assert!(
        p.is_file(),
        "{} missing: scripts/test installs the venv (boto3 comes with moto)",
        p.display()
    );
    p
}

/// Start one runtime, wait for its first poll, invoke it once, read its peak RSS.
fn sample(runtime: Runtime, bucket: &str, ssm_env: &[(String, String)], event: &Value) -> Sample {
    let mut env: Vec<(String, String)> = vec![
        ("DROPSHIP_ALLOWED_BUCKETS".into(), bucket.into()),
        (
            "DROPSHIP_INSTANCE_PROFILE_ARN".into(),
            moto::HOST_PROFILE_TEMPLATE.into(),
        ),
        (
            "DROPSHIP_COMMAND_DOCUMENT".into(),
            dropship_tests::local_ssm::DEPLOY_DOCUMENT.into(),
        ),
    ];
    env.extend(moto::aws_env());
    env.extend(ssm_env.iter().cloned());
    env.push((
        "DROPSHIP_HOST_SCRIPT".into(),
        bins::script("deploy-on-host.sh").display().to_string(),
    ));
    env.push(("RUST_LOG".into(), "warn".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut lambda = match runtime {
        Runtime::Rust => LambdaProcess::start(&env),
        Runtime::Python => {
            let mut cmd = Command::new(python());
            cmd.arg(bins::workspace_root().join("benches/python_handler/bootstrap.py"));
            LambdaProcess::start_command(cmd, &env)
        }
    };
    let init = lambda
        .wait_ready(Duration::from_secs(60))
        .expect("runtime initialised");
    let started = Instant::now();
    let result = lambda
        .invoke(event)
        .unwrap_or_else(|e| panic!("{runtime:?} invocation failed: {e}"));
    let invoke = started.elapsed();
    let peak_rss_kib = lambda.peak_rss_kib().expect("peak RSS readable from /proc");
    Sample {
        init,
        invoke,
        peak_rss_kib,
        result,
    }
}

fn report(runtime: Runtime, s: &Sample) {
    let line = json!({
        "runtime": match runtime { Runtime::Rust => "rust", Runtime::Python => "python" },
        "init_ms": s.init.as_secs_f64() * 1000.0,
        "invoke_ms": s.invoke.as_secs_f64() * 1000.0,
        "peak_rss_kib": s.peak_rss_kib,
    });
    eprintln!("bench sample: {line}");
    if let Some(path) = std::env::var_os("DROPSHIP_BENCH_REPORT") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("report file");
        writeln!(f, "{line}").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_and_python_handlers_dispatch_and_rust_stays_within_budget() {
    let runs: usize = std::env::var("DROPSHIP_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let s = setup().await;
    for run in 0..runs {
        for (i, runtime) in [Runtime::Rust, Runtime::Python].into_iter().enumerate() {
            let event = s.fresh_event(run * 2 + i).await;
            let bucket = s.bucket.clone();
            let ssm_env = s.ssm.aws_env();
            let sample =
                tokio::task::spawn_blocking(move || sample(runtime, &bucket, &ssm_env, &event))
                    .await
                    .unwrap();
            assert_eq!(
                sample.result["outcome"], "dispatched",
                "{runtime:?}: {}",
                sample.result
            );
            assert_eq!(
                sample.result["command_ids"].as_array().map(Vec::len),
                Some(1),
                "{runtime:?}"
            );
            if runtime == Runtime::Rust {
                assert!(
                    sample.peak_rss_kib < 64 * 1024,
                    "Rust Lambda peak RSS {} KiB over 64 MiB",
                    sample.peak_rss_kib
                );
                assert!(
                    sample.init < Duration::from_secs(5),
                    "Rust Lambda init took {:?}",
                    sample.init
                );
            }
            report(runtime, &sample);
        }
    }
}
