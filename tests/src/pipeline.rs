//! The whole pipeline on this machine, step by step, with the real parts: the sample app in a
//! throwaway git repository, the real `bundle-and-upload`, moto's versioned S3 with EventBridge
//! notifications, a real EventBridge rule whose SQS target captures the emulated event, the
//! built `deployer-lambda` running as a Lambda (loopback Runtime API), and the command the
//! Lambda sent through SSM, run as the SSM agent runs it on two simulated EC2 hosts, each with
//! its own real Docker engine (`crate::simhost`). `scripts/local-pipeline` (the
//! `local-pipeline` binary) narrates it; `tests/tests/e2e.rs` asserts on every step.
//!
//! Simulated hosts: each host has its own PID, network and mount namespaces and dockerd, so the
//! Lambda's default app root (`/opt/dropship/{app}`), the sample's published port
//! (`127.0.0.1:8080`) and its health URL mean on each host what they mean on a real instance,
//! with nothing changed in the command or the script. moto's port is forwarded into each host
//! so the S3 endpoint the Lambda hands hosts works there unchanged; each host reads its
//! role's (fake) credentials from its own metadata service (`crate::imds`). The image the sample uses is pre-loaded into
//! each engine (standing in for the registry pull).
//!
//! moto quirks are not relied on (see docs/testing.md): which instances a command is for is
//! read from the Lambda's deploy record, never from SSM's target list (moto's `SendCommand`
//! reaches every instance); every captured event is delivered, so an extra event for the same
//! version (moto sends two per multipart upload) is just a duplicate.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_eventbridge::types::{RuleState, Target};
use aws_sdk_s3::types::{EventBridgeConfiguration, NotificationConfiguration};
use aws_sdk_sqs::types::QueueAttributeName;
use dropship_contract::key::ReleaseKey;
use dropship_contract::record::DeployRecord;
use serde_json::{json, Value};

use crate::host::wait_until;
use crate::lambda_rt::LambdaProcess;
use crate::local_ssm::{LocalSsm, LocalSsmConfig};
use crate::repo::{self, Finished, GitRepo};
use crate::simhost::{Container, SimAgent, SimHost};
use crate::{bins, moto};
use dropship_contract::events::{
    EC2_SOURCE, INSTANCE_STATE_CHANGE, INVOCATION_STATUS_CHANGE, SSM_SOURCE, TERMINAL_STATUSES,
};

/// Environment of the sample app's releases in the pipeline.
pub const ENV: &str = "staging";
/// The environment `dropship promote` copies staging's version to (hosts only when
/// [`Options::production_hosts`] asks for them).
pub const PROMOTED_ENV: &str = "production";
/// The port the sample app's proxy publishes on each host's loopback (its `health_url`'s port).
pub const APP_PORT: u16 = 8080;
/// How long one second of an SSM delivery timeout lasts in the pipeline (see
/// `LocalSsmConfig::delivery_second`): an offline agent's command times out 100 times sooner
/// than on AWS, so the suite can show it without waiting ten minutes.
pub const DELIVERY_SECOND: Duration = Duration::from_millis(10);
/// How long the harness waits for SSM to report one invocation finished.
const INVOCATION_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a CLI `--wait` may run in the pipeline.
const WAIT_TIMEOUT: Duration = Duration::from_secs(180);
/// Retries of a failed asynchronous Lambda invocation (Lambda's default).
const LAMBDA_RETRIES: u32 = 2;

/// The CloudWatch Logs group the Lambda names for command output (`DROPSHIP_LOG_GROUP`).
pub fn log_group(app: &str) -> String {
    format!("/dropship/{app}/commands")
}

/// The deployer Lambda's own log group (`/aws/lambda/<function>`), where the harness ships
/// the Lambda's stdout as Lambda's runtime does.
pub const LAMBDA_LOG_GROUP: &str = "/aws/lambda/dropship-deployer";

/// Path of the sample app's health endpoint.
pub const HEALTH_PATH: &str = "/public/health";

/// `examples/sample-app`.
pub fn sample_app_dir() -> PathBuf {
    bins::workspace_root().join("examples").join("sample-app")
}

/// What to build the pipeline with.
#[derive(Debug, Clone)]
pub struct Options {
    /// App name (the sample's `sample-app` by default; suites sharing one moto use unique ones,
    /// because targets are selected by the app tag).
    pub app: String,
    /// Bucket name; created versioned with EventBridge notifications.
    pub bucket: String,
    /// Number of simulated hosts.
    pub hosts: usize,
    /// Where the Lambda's JSON logs go (`None`: a file in the pipeline's work directory,
    /// removed with the pipeline).
    pub lambda_log: Option<PathBuf>,
    /// The Lambda's `DROPSHIP_MAX_CONCURRENCY` (hosts per wave); `None`: its default.
    pub max_concurrency: Option<String>,
    /// Simulated hosts tagged for [`PROMOTED_ENV`] (`prod-a`, …), beside the staging ones.
    pub production_hosts: usize,
}

impl Options {
    /// Unique names for a suite sharing one moto server.
    pub fn unique() -> Self {
        Self {
            app: moto::unique("sample"),
            bucket: moto::unique("e2e"),
            hosts: 2,
            lambda_log: None,
            max_concurrency: None,
            production_hosts: 0,
        }
    }
}

/// One simulated EC2 instance.
pub struct Host {
    /// `host-a`, `host-b`, …
    pub name: String,
    /// The moto instance standing for it (tagged `dropship:app`/`dropship:env`).
    pub instance_id: String,
    /// Its `dropship:env` tag: [`ENV`] or [`PROMOTED_ENV`].
    pub env: &'static str,
    /// Its SSM agent (registered with the local SSM endpoint) on its own engine and namespaces.
    pub agent: Arc<SimAgent>,
}

impl Host {
    /// The simulated host.
    pub fn sim(&self) -> &SimHost {
        self.agent.host()
    }
}

/// What one host looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostView {
    /// Release `current` points at.
    pub release: Option<String>,
    /// Commit in that release's manifest.
    pub commit: Option<String>,
    /// HTTP status of the health endpoint on the host's loopback (`None`: nothing answers).
    pub health: Option<u16>,
    /// The app's running container (the sample has one service), with its Docker health.
    pub container: Option<Container>,
}

/// One SSM command invocation on one host, as SSM reports it (`GetCommandInvocation`).
#[derive(Debug, Clone)]
pub struct HostRun {
    pub host: String,
    pub instance_id: String,
    pub command_id: String,
    /// SSM's `Status` (`Success`, `Failed`, `TimedOut`, `Cancelled`).
    pub status: String,
    /// SSM's `StatusDetails` (`Success`, `Failed`, `DeliveryTimedOut`, `Undeliverable`, …).
    pub details: String,
    /// SSM's `ResponseCode`: the script's exit code (-1 when it never ran).
    pub code: i32,
    /// The `DROPSHIP_RESULT` JSON (Null when the line is missing).
    pub result: Value,
    /// `StandardOutputContent` then `StandardErrorContent` (SSM keeps the first 24,000 and
    /// 8,000 characters).
    pub output: String,
}

impl HostRun {
    /// `result.outcome`.
    pub fn outcome(&self) -> &str {
        self.result["outcome"].as_str().unwrap_or("")
    }
}

/// An upload or restore: the new object version.
#[derive(Debug, Clone)]
pub struct Upload {
    pub version_id: String,
    pub commit: String,
    /// The CLI's `--json` summary.
    pub summary: Value,
}

/// One version carried through EventBridge, the Lambda and the hosts.
#[derive(Debug, Clone)]
pub struct Deploy {
    /// Events captured for the version (normally one).
    pub events: Vec<Value>,
    /// The Lambda's answer to each delivery (Err: its error document).
    pub lambda: Vec<Result<Value, Value>>,
    /// Commands newly run on hosts.
    pub runs: Vec<HostRun>,
}

impl Deploy {
    /// The first delivery's outcome (`dispatched`, `rejected`, …).
    pub fn outcome(&self) -> String {
        match self.lambda.first() {
            Some(Ok(v)) => v["outcome"].as_str().unwrap_or("").to_owned(),
            Some(Err(e)) => format!("error {}", e["errorType"].as_str().unwrap_or("")),
            None => "not delivered".into(),
        }
    }
}

/// The pipeline's AWS resources, hosts, repository and Lambda.
pub struct Pipeline {
    rt: tokio::runtime::Runtime,
    pub s3: aws_sdk_s3::Client,
    /// SSM client of the local SSM endpoint.
    pub ssm: aws_sdk_ssm::Client,
    /// The local SSM endpoint (declared before the hosts: dropping it waits for the scripts it
    /// runs on them).
    pub local_ssm: LocalSsm,
    events: aws_sdk_eventbridge::Client,
    sqs: aws_sdk_sqs::Client,
    pub app: String,
    pub bucket: String,
    pub queue_url: String,
    /// Queue of the rule that captures `Dropship Deployment Finished` events.
    pub notify_queue_url: String,
    /// Every rule this pipeline created (removed with it).
    rules: Vec<String>,
    pub rule: String,
    pub repo: GitRepo,
    /// The [`ENV`] hosts, which every upload and rollback goes to.
    pub hosts: Vec<Host>,
    /// The [`PROMOTED_ENV`] hosts (none unless asked for).
    pub production: Vec<Host>,
    lambda: LambdaProcess,
    /// Holds the Lambda's log unless the caller chose where it goes.
    work: tempfile::TempDir,
    /// The Lambda's JSON log lines.
    pub lambda_log: PathBuf,
    /// Bytes of `lambda_log` already shipped to [`LAMBDA_LOG_GROUP`].
    lambda_log_shipped: Mutex<u64>,
    logs: aws_sdk_cloudwatchlogs::Client,
    own_log: bool,
    /// Events received from SQS and not yet handed out.
    inbox: Mutex<Vec<Value>>,
    /// Deliveries the Lambda failed, retried as Lambda retries async invocations: (payload,
    /// attempts so far, not before).
    retries: Mutex<Vec<(Value, u32, Instant)>>,
    /// (command id, instance id) invocations already reported by [`Self::wait_dispatched`].
    reported: Mutex<HashSet<(String, String)>>,
}

impl Pipeline {
    /// Creates the bucket, rule, queue, instances, hosts and repository, and starts the Lambda.
    pub fn start(opts: &Options) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        // SSM is the local endpoint (it runs commands on the hosts and answers truthfully);
        // everything else is moto. Delivery timeouts run 100 times faster than AWS's (an
        // offline agent's 600 s become 6 s); execution timeouts run in real time.
        let local_ssm = LocalSsm::start(LocalSsmConfig {
            delivery_second: DELIVERY_SECOND,
            ..LocalSsmConfig::from_env()
        });
        // The command document infra/ creates, the way Terraform creates it.
        let document = rt.block_on(local_ssm.create_deploy_document());
        let (s3, ssm, ec2, events, sqs) = rt.block_on(async {
            (
                moto::s3().await,
                local_ssm.client().await,
                moto::ec2().await,
                moto::events().await,
                moto::sqs().await,
            )
        });
        let logs = rt.block_on(moto::logs());
        ReleaseKey::new(&opts.app, ENV).map_err(|e| anyhow!("app name: {e}"))?;

        // The Lambda, as a Lambda (started first: its cold start overlaps the setup).
        let work = tempfile::Builder::new()
            .prefix("dropship-pipeline-")
            .tempdir()?;
        // The Lambda's default app root (/opt/dropship/{app}) is every host's own /opt.
        let mut env: Vec<(String, String)> = vec![
            ("DROPSHIP_ALLOWED_BUCKETS".into(), opts.bucket.clone()),
            // Only instances with the (app, env)'s host profile are targets, as with infra/.
            (
                "DROPSHIP_INSTANCE_PROFILE_ARN".into(),
                moto::HOST_PROFILE_TEMPLATE.into(),
            ),
            // Full command output to CloudWatch Logs (SSM keeps only 24,000 characters).
            ("DROPSHIP_LOG_GROUP".into(), log_group(&opts.app)),
            ("DROPSHIP_COMMAND_DOCUMENT".into(), document.clone()),
        ];
        if let Some(m) = &opts.max_concurrency {
            env.push(("DROPSHIP_MAX_CONCURRENCY".into(), m.clone()));
        }
        env.extend(moto::aws_env());
        env.extend(local_ssm.aws_env());
        let borrowed: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let lambda_log = match &opts.lambda_log {
            Some(path) => path.clone(),
            None => work.path().join("deployer-lambda.log"),
        };
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("exec \"$0\" >>\"$1\" 2>&1")
            .arg(bins::binary("deployer-lambda"))
            .arg(&lambda_log);
        let mut lambda = LambdaProcess::start_command(cmd, &borrowed);

        // Bucket: versioned, every object event to EventBridge.
        rt.block_on(async {
            s3.create_bucket().bucket(&opts.bucket).send().await?;
            s3.put_bucket_versioning()
                .bucket(&opts.bucket)
                .versioning_configuration(
                    aws_sdk_s3::types::VersioningConfiguration::builder()
                        .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                        .build(),
                )
                .send()
                .await?;
            s3.put_bucket_notification_configuration()
                .bucket(&opts.bucket)
                .notification_configuration(
                    NotificationConfiguration::builder()
                        .event_bridge_configuration(EventBridgeConfiguration::builder().build())
                        .build(),
                )
                .send()
                .await?;
            anyhow::Ok(())
        })
        .with_context(|| format!("creating bucket {}", opts.bucket))?;

        // The rule of infra/events.tf, with an SQS queue as its target instead of the Lambda,
        // so the event EventBridge emits is captured and then delivered to the Lambda.
        let queue = format!("{}-events", opts.bucket);
        let rule = format!("{}-release-uploaded", opts.bucket);
        let pattern = json!({
            "source": ["aws.s3"],
            "detail-type": ["Object Created"],
            "detail": {
                "bucket": {"name": [opts.bucket]},
                "object": {"key": [{"wildcard": "releases/*.tar.gz"}]}
            }
        });
        let queue_url = rt.block_on(capture(&events, &sqs, &queue, &rule, &pattern))?;
        // What infra/notifications.tf routes to SNS: every deploy-finished event of this
        // bucket, captured on its own queue so tests count what really reached the bus.
        let notify_queue = format!("{}-finished", opts.bucket);
        let notify_rule = format!("{}-deploy-finished", opts.bucket);
        let notify_pattern = json!({
            "source": [dropship_contract::events::SOURCE],
            "detail-type": [dropship_contract::events::DEPLOY_FINISHED],
            "detail": {"bucket": [opts.bucket]}
        });
        let notify_queue_url = rt.block_on(capture(
            &events,
            &sqs,
            &notify_queue,
            &notify_rule,
            &notify_pattern,
        ))?;

        // Instances tagged for the app/env, one simulated host each (engines start in parallel).
        let staging_ids = rt.block_on(run_instances(&ec2, &opts.app, ENV, opts.hosts))?;
        let production_ids = if opts.production_hosts > 0 {
            rt.block_on(run_instances(
                &ec2,
                &opts.app,
                PROMOTED_ENV,
                opts.production_hosts,
            ))?
        } else {
            Vec::new()
        };
        let instance_ids: Vec<String> =
            staging_ids.iter().chain(&production_ids).cloned().collect();

        // infra/events.tf's second rule: every host's terminal command status, to the same
        // Lambda (here: the same queue, delivered in arrival order). Narrowed to this
        // pipeline's instances: suites run pipelines side by side on one moto, whose
        // PutEvents fails as a whole when any matching rule's queue is gone.
        let ssm_rule = format!("{}-host-finished", opts.bucket);
        let ssm_pattern = json!({
            "source": [SSM_SOURCE],
            "detail-type": [INVOCATION_STATUS_CHANGE],
            "detail": {
                "document-name": [document.as_str()],
                "status": TERMINAL_STATUSES,
                "instance-id": instance_ids,
            }
        });
        rt.block_on(async {
            let arn = queue_arn(&sqs, &queue_url).await?;
            put_rule_to(&events, &ssm_rule, &ssm_pattern, &arn).await
        })
        .with_context(|| format!("creating rule {ssm_rule}"))?;
        // infra/events.tf's third rule: an instance entering `running` (catch-up).
        let started_rule = format!("{}-instance-running", opts.bucket);
        let started_pattern = json!({
            "source": [EC2_SOURCE],
            "detail-type": [INSTANCE_STATE_CHANGE],
            "detail": {"state": ["running"], "instance-id": instance_ids}
        });
        rt.block_on(async {
            let arn = queue_arn(&sqs, &queue_url).await?;
            put_rule_to(&events, &started_rule, &started_pattern, &arn).await
        })
        .with_context(|| format!("creating rule {started_rule}"))?;
        let letter = |i: usize| (b'a' + i as u8) as char;
        let placed: Vec<(String, String, &'static str)> = staging_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (format!("host-{}", letter(i)), id.clone(), ENV))
            .chain(
                production_ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| (format!("prod-{}", letter(i)), id.clone(), PROMOTED_ENV)),
            )
            .collect();
        // Every engine starts in parallel, whatever its environment.
        let sims = SimHost::start_many(
            &placed
                .iter()
                .map(|(name, _, _)| name.as_str())
                .collect::<Vec<_>>(),
        );
        let moto_port = moto::port();
        let (mut hosts, mut production) = (Vec::new(), Vec::new());
        for ((name, instance_id, env), sim) in placed.into_iter().zip(sims) {
            // The network path from the instance to S3 (the endpoint hosts get is moto's).
            sim.forward_port(moto_port);
            // The sample app runs start-first: its proxy's image, as a registry pull would
            // bring it.
            sim.import_proxy_image();
            // What an operator puts on each host once: the shared .env (see .env.example).
            let shared = sim.path(&format!("/opt/dropship/{}/shared", opts.app));
            fs::create_dir_all(&shared)?;
            let env_file = shared.join(".env");
            fs::write(
                &env_file,
                "# the sample app's services read nothing from here\n",
            )?;
            fs::set_permissions(
                &env_file,
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )?;
            let agent = SimAgent::new(
                sim,
                &instance_id,
                &[("dropship:app", opts.app.as_str()), ("dropship:env", env)],
            );
            local_ssm.add_instance(agent.clone());
            let host = Host {
                name,
                instance_id,
                env,
                agent,
            };
            if env == ENV {
                hosts.push(host);
            } else {
                production.push(host);
            }
        }

        // A throwaway repository holding the sample app.
        let repo = GitRepo::new();
        copy_tree(&sample_app_dir(), repo.path())?;

        lambda
            .wait_ready(Duration::from_secs(60))
            .map_err(|e| anyhow!("deployer-lambda did not start: {e}"))?;

        Ok(Self {
            rt,
            s3,
            ssm,
            local_ssm,
            events,
            sqs,
            app: opts.app.clone(),
            bucket: opts.bucket.clone(),
            queue_url,
            notify_queue_url,
            rules: vec![rule.clone(), ssm_rule, started_rule, notify_rule],
            rule,
            repo,
            hosts,
            production,
            lambda,
            own_log: opts.lambda_log.is_none(),
            lambda_log,
            lambda_log_shipped: Mutex::new(0),
            logs,
            work,
            inbox: Mutex::new(Vec::new()),
            retries: Mutex::new(Vec::new()),
            reported: Mutex::new(HashSet::new()),
        })
    }

    /// Runs an SDK future on the pipeline's runtime (for suites reaching moto directly).
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The release key.
    pub fn key(&self) -> String {
        format!("releases/{}/{ENV}.tar.gz", self.app)
    }

    /// The Lambda process id.
    pub fn lambda_pid(&self) -> u32 {
        self.lambda.pid()
    }

    /// Commits the working tree with `label` written to `public/version.txt`; returns the commit.
    pub fn commit_release(&self, label: &str) -> String {
        self.repo.write("public/version.txt", format!("{label}\n"));
        self.repo.commit(&format!("sample app {label}"))
    }

    /// Runs the sample app's `make-broken.sh` (removes the health endpoint); returns the commit.
    pub fn commit_broken(&self) -> Result<String> {
        let out = Command::new("bash")
            .arg(self.repo.path().join("make-broken.sh"))
            .current_dir(self.repo.path())
            .env("GIT_AUTHOR_NAME", "Dropship Test")
            .env("GIT_AUTHOR_EMAIL", "test@example.com")
            .env("GIT_COMMITTER_NAME", "Dropship Test")
            .env("GIT_COMMITTER_EMAIL", "test@example.com")
            .output()?;
        if !out.status.success() {
            bail!("make-broken.sh: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Puts the health endpoint back (after [`Self::commit_broken`]); returns the commit.
    pub fn commit_fixed(&self, label: &str) -> String {
        self.repo.write("public/health", "ok\n");
        self.commit_release(label)
    }

    /// `bundle-and-upload ARGS` in the repository, for this app, env and bucket.
    pub fn cli(&self, args: &[&str]) -> Finished {
        repo::run(&mut self.tool(self.repo.bundler(), args))
    }

    /// `dropship ARGS` (the operator's commands) for this app, env and bucket.
    pub fn dropship(&self, args: &[&str]) -> Finished {
        repo::run(&mut self.tool(self.repo.dropship(), args))
    }

    /// A CLI command with this pipeline's app, env, bucket and SSM endpoint, run as CI runs it
    /// (`CI=true`: uploads say source=ci, which `promote` requires without `--force`).
    fn tool(&self, mut cmd: Command, args: &[&str]) -> Command {
        cmd.args(args)
            .args(["--app", &self.app, "--env", ENV, "--bucket", &self.bucket])
            .envs(self.local_ssm.aws_env())
            .env("CI", "true")
            .stdin(Stdio::null());
        cmd
    }

    /// Uploads HEAD with the real bundler.
    pub fn upload(&self) -> Result<Upload> {
        let out = self.cli(&["--json"]);
        if out.code != 0 {
            bail!(
                "bundle-and-upload exited {}: {}{}",
                out.code,
                out.stdout,
                out.stderr
            );
        }
        let summary = out.json();
        Ok(Upload {
            version_id: str_field(&summary, "version_id")?,
            commit: str_field(&summary, "commit")?,
            summary,
        })
    }

    /// `bundle-and-upload restore VERSION --yes`: a new version with that version's bytes.
    pub fn restore(&self, version_id: &str) -> Result<Upload> {
        let out = self.cli(&["restore", version_id, "--yes", "--json"]);
        if out.code != 0 {
            bail!("restore exited {}: {}{}", out.code, out.stdout, out.stderr);
        }
        let summary = out.json();
        let new = ["version_id", "new_version_id"]
            .iter()
            .find_map(|k| summary[*k].as_str())
            .ok_or_else(|| anyhow!("restore --json has no version id: {summary}"))?
            .to_owned();
        let commit = summary["commit"].as_str().unwrap_or_default().to_owned();
        Ok(Upload {
            version_id: new,
            commit,
            summary,
        })
    }

    /// Drains the queue into the inbox; returns how many events arrived.
    fn poll_queue(&self) -> Result<usize> {
        let messages = self.rt.block_on(async {
            let out = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(0)
                .send()
                .await?;
            let messages = out.messages.unwrap_or_default();
            for m in &messages {
                if let Some(handle) = &m.receipt_handle {
                    self.sqs
                        .delete_message()
                        .queue_url(&self.queue_url)
                        .receipt_handle(handle)
                        .send()
                        .await?;
                }
            }
            anyhow::Ok(messages)
        })?;
        let mut inbox = self.inbox.lock().unwrap();
        for m in &messages {
            let body = m.body.as_deref().unwrap_or_default();
            let event: Value =
                serde_json::from_str(body).with_context(|| format!("event body: {body}"))?;
            inbox.push(event);
        }
        Ok(messages.len())
    }

    /// Every captured event for `version_id`, waiting up to `timeout` for the first.
    pub fn events_for(&self, version_id: &str, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            self.poll_queue()?;
            let mut inbox = self.inbox.lock().unwrap();
            let (mine, rest): (Vec<Value>, Vec<Value>) = inbox
                .drain(..)
                .partition(|e| e["detail"]["object"]["version-id"] == version_id);
            *inbox = rest;
            if !mine.is_empty() {
                return Ok(mine);
            }
            drop(inbox);
            if Instant::now() >= deadline {
                bail!("no EventBridge event for version {version_id} within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Events captured but not handed out (e.g. for other keys).
    pub fn pending_events(&self) -> Result<Vec<Value>> {
        self.poll_queue()?;
        Ok(self.inbox.lock().unwrap().clone())
    }

    /// Delivers one payload to the Lambda (through its Runtime API).
    pub fn deliver(&mut self, payload: &Value) -> Result<Value, Value> {
        self.lambda.invoke(payload)
    }

    /// The deployer's record for a version of the [`ENV`] key.
    pub fn record(&self, version_id: &str) -> Result<Option<DeployRecord>> {
        self.record_in(ENV, version_id)
    }

    /// The deployer's record for a version of `env`'s key.
    pub fn record_in(&self, env: &str, version_id: &str) -> Result<Option<DeployRecord>> {
        let key = ReleaseKey::new(&self.app, env)
            .map_err(|e| anyhow!("{e}"))?
            .record_key(version_id);
        self.rt.block_on(async {
            match self
                .s3
                .get_object()
                .bucket(&self.bucket)
                .key(&key)
                .send()
                .await
            {
                Ok(out) => {
                    let bytes = out.body.collect().await?.into_bytes();
                    Ok(Some(
                        DeployRecord::from_bytes(&bytes).map_err(|e| anyhow!("{e}"))?,
                    ))
                }
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
                Err(e) => Err(anyhow!("reading {key}: {e:?}")),
            }
        })
    }

    /// Waits until SSM reports every invocation of every command the deployer's record of
    /// `version_id` lists as finished, and returns the ones not reported before (each
    /// (command, instance) once), read from SSM's answers (`GetCommandInvocation`), never from
    /// the harness's own bookkeeping.
    pub fn wait_dispatched(&self, version_id: &str) -> Result<Vec<HostRun>> {
        self.wait_dispatched_in(ENV, version_id)
    }

    /// [`Self::wait_dispatched`] for a version of `env`'s key.
    pub fn wait_dispatched_in(&self, env: &str, version_id: &str) -> Result<Vec<HostRun>> {
        let Some(record) = self.record_in(env, version_id)? else {
            return Ok(Vec::new());
        };
        let mut runs = Vec::new();
        for batch in &record.commands {
            for instance in &batch.instance_ids {
                let pair = (batch.command_id.clone(), instance.clone());
                if self.reported.lock().unwrap().contains(&pair) {
                    continue;
                }
                let host = self
                    .all_hosts()
                    .find(|h| &h.instance_id == instance)
                    .ok_or_else(|| anyhow!("command for unknown instance {instance}"))?;
                runs.push(self.wait_invocation(host, &batch.command_id)?);
                self.reported.lock().unwrap().insert(pair);
            }
        }
        Ok(runs)
    }

    /// Polls `GetCommandInvocation` for (command, host) until its status is terminal.
    fn wait_invocation(&self, host: &Host, command_id: &str) -> Result<HostRun> {
        let deadline = Instant::now() + INVOCATION_TIMEOUT;
        loop {
            let answer = self.rt.block_on(
                self.ssm
                    .get_command_invocation()
                    .command_id(command_id)
                    .instance_id(&host.instance_id)
                    .send(),
            );
            if let Ok(inv) = answer {
                let status = inv
                    .status()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default();
                if matches!(
                    status.as_str(),
                    "Success" | "Failed" | "TimedOut" | "Cancelled"
                ) {
                    let mut output = inv.standard_output_content().unwrap_or_default().to_owned();
                    output.push_str(inv.standard_error_content().unwrap_or_default());
                    let result = output
                        .lines()
                        .rev()
                        .find_map(|l| l.strip_prefix("DROPSHIP_RESULT "))
                        .and_then(|j| serde_json::from_str(j).ok())
                        .unwrap_or(Value::Null);
                    return Ok(HostRun {
                        host: host.name.clone(),
                        instance_id: host.instance_id.clone(),
                        command_id: command_id.to_owned(),
                        details: inv.status_details().unwrap_or_default().to_owned(),
                        status,
                        code: inv.response_code(),
                        result,
                        output,
                    });
                }
            }
            // InvocationDoesNotExist right after SendCommand, or still running.
            if Instant::now() >= deadline {
                bail!(
                    "SSM did not report command {command_id} on {} as finished within {INVOCATION_TIMEOUT:?}",
                    host.name
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Delivers every event captured so far to the Lambda (what EventBridge does with the
    /// rule's target); a delivery the Lambda fails is retried twice, a second apart, as
    /// Lambda retries asynchronous invocations. Returns how many were delivered.
    pub fn deliver_pending(&mut self) -> Result<usize> {
        self.poll_queue()?;
        let mut events: Vec<(Value, u32)> = self
            .inbox
            .lock()
            .unwrap()
            .drain(..)
            .map(|e| (e, 0))
            .collect();
        let now = Instant::now();
        let due: Vec<(Value, u32, Instant)> = {
            let mut retries = self.retries.lock().unwrap();
            let (due, later) = retries.drain(..).partition(|(_, _, at)| *at <= now);
            *retries = later;
            due
        };
        events.extend(due.into_iter().map(|(e, n, _)| (e, n)));
        for (e, attempts) in &events {
            if self.deliver(e).is_err() && *attempts < LAMBDA_RETRIES {
                self.retries.lock().unwrap().push((
                    e.clone(),
                    attempts + 1,
                    Instant::now() + Duration::from_secs(1),
                ));
            }
        }
        if !events.is_empty() {
            self.ship_lambda_log()?;
        }
        Ok(events.len())
    }

    /// Sends the Lambda's new complete lines to [`LAMBDA_LOG_GROUP`], one event per line, as
    /// Lambda's runtime sends a function's stdout to its group (one stream per process).
    pub fn ship_lambda_log(&self) -> Result<()> {
        use aws_sdk_cloudwatchlogs::types::InputLogEvent;
        use std::io::{Read, Seek, SeekFrom};
        let mut shipped = self.lambda_log_shipped.lock().unwrap();
        // Only what was written since the last shipping is read.
        let mut log = std::fs::File::open(&self.lambda_log)?;
        log.seek(SeekFrom::Start(*shipped))?;
        let mut text = Vec::new();
        log.read_to_end(&mut text)?;
        let Some(last_newline) = text.iter().rposition(|b| *b == b'\n') else {
            return Ok(());
        };
        let end = last_newline + 1;
        let lines: Vec<String> = String::from_utf8_lossy(&text[..end])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        let stream = format!("local/[$LATEST]{}", self.lambda_pid());
        self.rt.block_on(async {
            let group = self
                .logs
                .create_log_group()
                .log_group_name(LAMBDA_LOG_GROUP)
                .send()
                .await;
            if let Err(e) = group {
                if !e
                    .as_service_error()
                    .is_some_and(|s| s.is_resource_already_exists_exception())
                {
                    bail!("CreateLogGroup {LAMBDA_LOG_GROUP}: {e:?}");
                }
            }
            let created = self
                .logs
                .create_log_stream()
                .log_group_name(LAMBDA_LOG_GROUP)
                .log_stream_name(&stream)
                .send()
                .await;
            if let Err(e) = created {
                if !e
                    .as_service_error()
                    .is_some_and(|s| s.is_resource_already_exists_exception())
                {
                    bail!("CreateLogStream {stream}: {e:?}");
                }
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64;
            for batch in lines.chunks(500) {
                let events = batch
                    .iter()
                    .map(|m| {
                        InputLogEvent::builder()
                            .timestamp(now)
                            .message(m)
                            .build()
                            .expect("timestamp and message are set")
                    })
                    .collect();
                self.logs
                    .put_log_events()
                    .log_group_name(LAMBDA_LOG_GROUP)
                    .log_stream_name(&stream)
                    .set_log_events(Some(events))
                    .send()
                    .await
                    .map_err(|e| anyhow!("PutLogEvents {stream}: {e:?}"))?;
            }
            anyhow::Ok(())
        })?;
        *shipped += end as u64;
        Ok(())
    }

    /// Puts on the bus what EC2 emits when `host`'s instance enters `running` (moto's EC2
    /// emits no events; the shape is the documented one), as after a start or a reboot into
    /// service.
    pub fn instance_started(&self, host: &Host) -> Result<()> {
        use aws_sdk_eventbridge::types::PutEventsRequestEntry;
        let out = self.rt.block_on(
            self.events
                .put_events()
                .entries(
                    PutEventsRequestEntry::builder()
                        .source(EC2_SOURCE)
                        .detail_type(INSTANCE_STATE_CHANGE)
                        .resources(format!(
                            "arn:aws:ec2:{}:123456789012:instance/{}",
                            crate::simhost::region(),
                            host.instance_id
                        ))
                        .detail(
                            json!({"instance-id": host.instance_id, "state": "running"})
                                .to_string(),
                        )
                        .build(),
                )
                .send(),
        )?;
        if out.failed_entry_count() > 0 {
            bail!("PutEvents refused the instance event: {:?}", out.entries());
        }
        Ok(())
    }

    /// Delivers events until `done` holds (or the wait timeout passes).
    pub fn deliver_until(&mut self, what: &str, mut done: impl FnMut(&Self) -> bool) -> Result<()> {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            self.deliver_pending()?;
            if done(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("{what}: not within {WAIT_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `Dropship Deployment Finished` events that reached the bus so far (read once).
    pub fn notifications(&self) -> Result<Vec<Value>> {
        self.rt.block_on(async {
            let mut all = Vec::new();
            loop {
                let out = self
                    .sqs
                    .receive_message()
                    .queue_url(&self.notify_queue_url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(0)
                    .send()
                    .await?;
                let messages = out.messages.unwrap_or_default();
                if messages.is_empty() {
                    break;
                }
                for m in &messages {
                    let body = m.body.as_deref().unwrap_or_default();
                    all.push(serde_json::from_str::<Value>(body)?);
                    if let Some(handle) = &m.receipt_handle {
                        self.sqs
                            .delete_message()
                            .queue_url(&self.notify_queue_url)
                            .receipt_handle(handle)
                            .send()
                            .await?;
                    }
                }
            }
            anyhow::Ok(all)
        })
    }

    /// Delivers events until the rollout of `version_id` is settled (every wave, the fleet
    /// rollback, the outcome): what EventBridge and Lambda do by themselves in AWS.
    pub fn settle(&mut self, version_id: &str) -> Result<DeployRecord> {
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            self.deliver_pending()?;
            if let Some(r) = self.record(version_id)? {
                let settled = match &r.fleet {
                    Some(f) => f.outcome.is_some() && f.notified,
                    None => r.outcome.is_final(),
                };
                if settled {
                    return Ok(r);
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "the rollout of {version_id} did not settle within {WAIT_TIMEOUT:?}; local SSM emission errors: {:?}",
                    self.local_ssm.emission_errors()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `bundle-and-upload ARGS --wait --json` (or `dropship ARGS` when `operator`) while
    /// delivering the events it causes to the Lambda, as EventBridge would; returns the
    /// command's exit code and output once it exits.
    pub fn run_waiting(&mut self, operator: bool, args: &[&str]) -> Result<Finished> {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--wait", "--json"]);
        let base = if operator {
            self.repo.dropship()
        } else {
            self.repo.bundler()
        };
        let mut cmd = self.tool(base, &all);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the CLI with --wait")?;
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let read = |pipe: Option<std::process::ChildStdout>| {
            std::thread::spawn(move || {
                let mut s = String::new();
                if let Some(mut p) = pipe {
                    let _ = std::io::Read::read_to_string(&mut p, &mut s);
                }
                s
            })
        };
        let stdout = read(out);
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut p) = err {
                let _ = std::io::Read::read_to_string(&mut p, &mut s);
            }
            s
        });
        let deadline = Instant::now() + WAIT_TIMEOUT;
        let status = loop {
            self.deliver_pending()?;
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                bail!("the CLI with --wait did not finish within {WAIT_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        Ok(Finished {
            code: status.code().unwrap_or(-1),
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }

    /// One version end to end: its captured events to the Lambda, then the commands on hosts.
    pub fn deploy(&mut self, version_id: &str) -> Result<Deploy> {
        let events = self.events_for(version_id, Duration::from_secs(30))?;
        let lambda = events.iter().map(|e| self.deliver(e)).collect();
        self.settle(version_id)?;
        let runs = self.wait_dispatched(version_id)?;
        Ok(Deploy {
            events,
            lambda,
            runs,
        })
    }

    /// What `host` serves now.
    pub fn view(&self, host: &Host) -> HostView {
        let root = self.app_root(host);
        let release = fs::read_link(root.join("current"))
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
        let commit = release.as_ref().and_then(|r| {
            let manifest = root
                .join("releases")
                .join(r)
                .join(".dropship/manifest.json");
            let v: Value = serde_json::from_slice(&fs::read(manifest).ok()?).ok()?;
            v["commit"].as_str().map(str::to_owned)
        });
        let health = host.sim().http_get(&health_url()).map(|(status, _)| status);
        // The host script runs a fresh app root as compose project `<app>-<env>`.
        let project = format!("{}-{}", self.app, host.env);
        let container = host
            .sim()
            .containers(&project)
            .into_iter()
            .find(|c| c.service == "web");
        HostView {
            release,
            commit,
            health,
            container,
        }
    }

    /// The app root on `host`, as a machine path (`/opt/dropship/<app>` on the host).
    pub fn app_root(&self, host: &Host) -> PathBuf {
        host.sim().path(&format!("/opt/dropship/{}", self.app))
    }

    /// Release directory names on `host`, sorted.
    pub fn releases(&self, host: &Host) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.app_root(host).join("releases"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// `deploy.log` on `host`, one JSON object per line.
    pub fn audit(&self, host: &Host) -> Vec<Value> {
        fs::read_to_string(self.app_root(host).join("deploy.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Every [`ENV`] host's view.
    pub fn views(&self) -> Vec<HostView> {
        self.views_in(ENV)
    }

    /// The hosts tagged for `env`.
    pub fn hosts_in(&self, env: &str) -> &[Host] {
        if env == ENV {
            &self.hosts
        } else {
            &self.production
        }
    }

    /// Every host of every environment.
    pub fn all_hosts(&self) -> impl Iterator<Item = &Host> {
        self.hosts.iter().chain(&self.production)
    }

    /// Every `env` host's view.
    pub fn views_in(&self, env: &str) -> Vec<HostView> {
        self.hosts_in(env).iter().map(|h| self.view(h)).collect()
    }

    /// Waits until every [`ENV`] host serves `commit` healthily; returns the views either way.
    pub fn wait_serving(&self, commit: &str, timeout: Duration) -> Vec<HostView> {
        self.wait_serving_in(ENV, commit, timeout)
    }

    /// [`Self::wait_serving`] for the hosts of `env`.
    pub fn wait_serving_in(&self, env: &str, commit: &str, timeout: Duration) -> Vec<HostView> {
        wait_until(timeout, || {
            self.views_in(env)
                .iter()
                .all(|v| v.commit.as_deref() == Some(commit) && v.health == Some(200))
        });
        self.views_in(env)
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.rt.block_on(async {
            // Rules first: an event matching a rule whose queue is gone fails on moto.
            for rule in &self.rules {
                let _ = self
                    .events
                    .remove_targets()
                    .rule(rule)
                    .ids("capture")
                    .send()
                    .await;
                let _ = self.events.delete_rule().name(rule).send().await;
            }
            for queue in [&self.queue_url, &self.notify_queue_url] {
                let _ = self.sqs.delete_queue().queue_url(queue).send().await;
            }
        });
        // The LambdaProcess and each SimHost (its dockerd, by PID) stop when dropped; the
        // work directory with the Lambda's log goes with the pipeline.
        let _ = (&self.own_log, &self.work);
    }
}

/// An SQS queue and a rule that sends matching events to it; returns the queue URL.
async fn capture(
    events: &aws_sdk_eventbridge::Client,
    sqs: &aws_sdk_sqs::Client,
    queue: &str,
    rule: &str,
    pattern: &Value,
) -> Result<String> {
    let queue_url = sqs
        .create_queue()
        .queue_name(queue)
        .send()
        .await?
        .queue_url
        .ok_or_else(|| anyhow!("CreateQueue answered without a QueueUrl"))?;
    let arn = queue_arn(sqs, &queue_url).await?;
    put_rule_to(events, rule, pattern, &arn)
        .await
        .with_context(|| format!("creating rule {rule} and queue {queue}"))?;
    Ok(queue_url)
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Result<String> {
    sqs.get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| anyhow!("GetQueueAttributes answered without a QueueArn"))
}

async fn put_rule_to(
    events: &aws_sdk_eventbridge::Client,
    rule: &str,
    pattern: &Value,
    target_arn: &str,
) -> Result<()> {
    events
        .put_rule()
        .name(rule)
        .event_pattern(pattern.to_string())
        .state(RuleState::Enabled)
        .send()
        .await?;
    let put = events
        .put_targets()
        .rule(rule)
        .targets(Target::builder().id("capture").arn(target_arn).build()?)
        .send()
        .await?;
    if put.failed_entry_count != 0 {
        bail!("PutTargets failed: {:?}", put.failed_entries);
    }
    Ok(())
}

/// `http://127.0.0.1:8080/public/health`: the sample's health URL, on each host's loopback.
pub fn health_url() -> String {
    format!("http://127.0.0.1:{APP_PORT}{HEALTH_PATH}")
}

fn str_field(v: &Value, key: &str) -> Result<String> {
    v[key]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no {key} in {v}"))
}

async fn run_instances(
    ec2: &aws_sdk_ec2::Client,
    app: &str,
    env: &str,
    n: usize,
) -> Result<Vec<String>> {
    let profile = moto::host_profile(app, env);
    moto::run_tagged_instances(ec2, app, env, n, Some(&profile))
        .await
        .map_err(|e| anyhow!(e))
}

/// Copies a directory tree of regular files and directories.
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            fs::create_dir_all(&dst)?;
            copy_tree(&src, &dst)?;
        } else if kind.is_file() {
            fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// A short table of host views (for the narrative and failure messages): the release, the
/// container serving it and its Docker health, and the health URL's answer.
pub fn table(p: &Pipeline) -> String {
    let mut rows = BTreeMap::new();
    for h in p.all_hosts() {
        let v = p.view(h);
        let (container, docker_health) = match &v.container {
            Some(c) => (c.id.chars().take(12).collect::<String>(), c.health.clone()),
            None => ("-".into(), "-".into()),
        };
        rows.insert(
            h.name.clone(),
            format!(
                "{:<8} {:<20} {:<34} {:<12} {:<9} {}",
                h.name,
                h.instance_id,
                v.release.unwrap_or_else(|| "-".into()),
                container,
                docker_health,
                v.health.map_or("down".into(), |s| s.to_string())
            ),
        );
    }
    let mut out = format!(
        "{:<8} {:<20} {:<34} {:<12} {:<9} {}\n",
        "HOST", "INSTANCE", "CURRENT RELEASE", "CONTAINER", "DOCKER", "HEALTH URL"
    );
    out.push_str(&rows.into_values().collect::<Vec<_>>().join("\n"));
    out
}

/// Everything a deploy produced, for failure messages: the Lambda's answers and each host
/// run's exit code and last lines.
pub fn explain(d: &Deploy) -> String {
    let mut out = format!("events: {}\n", d.events.len());
    for l in &d.lambda {
        out.push_str(&format!("lambda: {l:?}\n"));
    }
    for r in &d.runs {
        let tail: Vec<&str> = r.output.lines().rev().take(12).collect();
        out.push_str(&format!(
            "{} ({}) exit {}:\n  {}\n",
            r.host,
            r.instance_id,
            r.code,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
        ));
    }
    out
}
