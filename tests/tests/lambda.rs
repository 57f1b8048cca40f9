//! The deployer Lambda against moto server (S3, EC2) and the local SSM endpoint: real bundles
//! from `bundle-and-upload`, real S3 versions and metadata, real EC2 instances, and SSM
//! commands sent to agents registered for those instances. The agents are
//! `BashInstance::without_engine`: the command really runs, on a "host" with no container
//! engine, and stops at its preflight; this suite's subject is what the Lambda sends (hosts
//! are the simulated hosts' suites). The in-process handler and the built `deployer-lambda`
//! binary (through a local Lambda Runtime API) are both exercised.
//!
//! Commands are attributed to a test by its unique bucket name inside the rendered script.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use deployer_lambda::aws::Clients;
use deployer_lambda::config::Config;
use deployer_lambda::handler::{Deployer, HandlerError, Invocation, Response};
use dropship_contract::fleet::FleetOutcome;
use dropship_contract::host::HostVar;
use dropship_contract::key::ReleaseKey;
use dropship_contract::manifest::{DeploySettings, Manifest, MANIFEST_FORMAT};
use dropship_contract::metadata::{ObjectMetadata, Source};
use dropship_contract::record::{DeployRecord, Outcome};
use dropship_tests::host::{make_bundle, sha256_hex, AppFiles};
use dropship_tests::lambda_rt::LambdaProcess;
use dropship_tests::local_ssm::bash_instance::BashInstance;
use dropship_tests::local_ssm::{LocalSsm, LocalSsmConfig, DEPLOY_DOCUMENT};
use dropship_tests::repo::{run, GitRepo};
use dropship_tests::{moto, records};
use serde_json::{json, Value};

const ENV: &str = "staging";

struct Fixture {
    s3: aws_sdk_s3::Client,
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
    local_ssm: LocalSsm,
    bucket: String,
    app: String,
}

impl Fixture {
    async fn new() -> Self {
        let s3 = moto::s3().await;
        let bucket = moto::create_bucket(&s3, "lambda", true).await;
        let local_ssm = LocalSsm::start(LocalSsmConfig::from_env());
        local_ssm.create_deploy_document().await;
        Self {
            s3,
            ec2: moto::ec2().await,
            ssm: local_ssm.client().await,
            local_ssm,
            bucket,
            app: moto::unique("app"),
        }
    }

    fn key(&self) -> String {
        format!("releases/{}/{ENV}.tar.gz", self.app)
    }

    fn env_vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("DROPSHIP_ALLOWED_BUCKETS", self.bucket.clone()),
            (
                "DROPSHIP_INSTANCE_PROFILE_ARN",
                moto::HOST_PROFILE_TEMPLATE.into(),
            ),
            ("DROPSHIP_MAX_CONCURRENCY", "2".into()),
            ("DROPSHIP_LOG_GROUP", "/dropship/commands".into()),
            ("DROPSHIP_COMMAND_DOCUMENT", DEPLOY_DOCUMENT.into()),
        ]
    }

    async fn deployer(&self) -> Deployer<Clients> {
        self.deployer_with(&[]).await
    }

    /// A deployer whose configuration adds `extra` variables to the suite's.
    async fn deployer_with(&self, extra: &[(&'static str, String)]) -> Deployer<Clients> {
        let mut vars: HashMap<&str, String> = self.env_vars().into_iter().collect();
        vars.extend(extra.iter().cloned());
        // The runtime's variables (region, moto's endpoint) as scripts/test exported them.
        let config = Config::from_lookup(|k| {
            vars.get(k).cloned().or_else(|| {
                deployer_lambda::config::RUNTIME_VARS
                    .contains(&k)
                    .then(|| std::env::var(k).ok())
                    .flatten()
            })
        })
        .expect("valid configuration");
        let clients = Clients {
            ssm: self.ssm.clone(),
            ..Clients::new(&moto::sdk_config().await)
        };
        Deployer::new(config, clients)
    }

    /// Runs `n` instances tagged with `app`/`env` and carrying that pair's host profile, as
    /// the module's hosts do; returns their ids.
    async fn instances(&self, app: &str, env: &str, n: i32) -> Vec<String> {
        let profile = moto::host_profile(app, env);
        self.instances_with_profile(app, env, n, Some(&profile))
            .await
    }

    /// Runs `n` instances tagged with `app`/`env`, with the instance profile `profile_arn`
    /// attached when given; each gets an online SSM agent; returns their ids.
    async fn instances_with_profile(
        &self,
        app: &str,
        env: &str,
        n: i32,
        profile_arn: Option<&str>,
    ) -> Vec<String> {
        let ids = moto::run_tagged_instances(&self.ec2, app, env, n as usize, profile_arn)
            .await
            .expect("run instances");
        for id in &ids {
            self.local_ssm.add_instance(BashInstance::without_engine(
                id,
                &[("dropship:app", app), ("dropship:env", env)],
            ));
        }
        ids
    }

    /// Uploads `bytes` as a new version of the release key with `meta`; returns its version id.
    async fn upload(&self, bytes: Vec<u8>, meta: &ObjectMetadata) -> String {
        let headers = meta.to_headers().expect("valid metadata");
        let mut req = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(self.key())
            .body(ByteStream::from(bytes));
        for (k, v) in headers {
            req = req.metadata(k, v);
        }
        req.send()
            .await
            .expect("upload")
            .version_id()
            .expect("versioned bucket")
            .to_owned()
    }

    fn metadata(&self, commit: &str, sha256: &str) -> ObjectMetadata {
        ObjectMetadata {
            app: self.app.clone(),
            env: ENV.into(),
            branch: "main".into(),
            commit: commit.into(),
            dirty: false,
            sha256: sha256.into(),
            created: "2026-11-23T09:00:00Z".into(),
            uploader: "lambda-suite".into(),
            source: Source::Local,
            message: "test release".into(),
            restored_from: None,
            promoted_from: None,
        }
    }

    /// A real bundle from `bundle-and-upload --output`, uploaded like the bundler does.
    async fn upload_real_bundle(&self, version_label: &str) -> (String, String) {
        let bundle = make_bundle(&self.app, &AppFiles::healthy(8080, version_label));
        let meta = self.metadata(&bundle.commit, &bundle.sha256);
        (self.upload(bundle.bytes, &meta).await, bundle.commit)
    }

    /// The AWS-documented EventBridge "Object Created" event for one version.
    fn event(&self, version_id: &str, sequencer: &str) -> Value {
        event_for(
            &self.bucket,
            &self.key(),
            version_id,
            sequencer,
            "PutObject",
        )
    }

    /// Every SSM command whose script mentions this test's bucket: (command id, script).
    async fn commands(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        let mut token = None;
        loop {
            let out = self
                .ssm
                .list_commands()
                .set_next_token(token)
                .send()
                .await
                .expect("list commands");
            for c in out.commands() {
                let script = c
                    .parameters()
                    .and_then(|p| p.get("commands"))
                    .map(|v| v.join("\n"))
                    .unwrap_or_default();
                if script.contains(&self.bucket) {
                    found.push((c.command_id().unwrap_or_default().to_owned(), script));
                }
            }
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                return found;
            }
        }
    }

    async fn record(&self, version_id: &str) -> Option<DeployRecord> {
        let release = ReleaseKey::new(&self.app, ENV).unwrap();
        let out = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(release.record_key(version_id))
            .send()
            .await
            .ok()?;
        let bytes = out.body.collect().await.unwrap().into_bytes();
        Some(DeployRecord::from_bytes(&bytes).expect("record parses"))
    }

    /// The newest-dispatched pointer.
    async fn pointer(&self) -> Option<dropship_contract::record::LatestPointer> {
        let release = ReleaseKey::new(&self.app, ENV).unwrap();
        let out = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(release.latest_pointer_key())
            .send()
            .await
            .ok()?;
        let bytes = out.body.collect().await.unwrap().into_bytes();
        Some(dropship_contract::record::LatestPointer::from_bytes(&bytes).expect("pointer parses"))
    }

    /// Keys under the records prefix (to prove nothing was written).
    async fn record_keys(&self) -> Vec<String> {
        let out = self
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix("deploy-records/")
            .send()
            .await
            .unwrap();
        out.contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }
}

fn event_for(bucket: &str, key: &str, version_id: &str, sequencer: &str, reason: &str) -> Value {
    json!({
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2026-11-23T09:00:00Z",
        "region": "us-east-1",
        "resources": [format!("arn:aws:s3:::{bucket}")],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": key, "size": 5, "etag": "b1946ac92492d2347c6235b4d2611184",
                       "version-id": version_id, "sequencer": sequencer},
            "request-id": "N4N7GDK58NMKJ12R",
            "requester": "123456789012",
            "source-ip-address": "1.2.3.4",
            "reason": reason
        }
    })
}

async fn handle(d: &Deployer<Clients>, payload: &Value) -> Result<Response, HandlerError> {
    d.handle(
        payload,
        &Invocation {
            request_id: Some("test".into()),
            deadline: None,
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifies_a_real_bundle_and_dispatches_to_only_the_tagged_running_instances() {
    let f = Fixture::new().await;
    let targets = f.instances(&f.app, ENV, 2).await;
    let stopped = f.instances(&f.app, ENV, 1).await;
    f.ec2
        .stop_instances()
        .set_instance_ids(Some(stopped.clone()))
        .send()
        .await
        .unwrap();
    let other_env = f.instances(&f.app, "prod", 1).await;
    let (version, commit) = f.upload_real_bundle("one").await;

    let d = f.deployer().await;
    let res = handle(&d, &f.event(&version, "0055AED6DCD90281E5"))
        .await
        .expect("dispatch");
    assert_eq!(res.outcome, Outcome::Dispatched, "{res:?}");
    assert_eq!(res.targets, targets, "only the tagged running instances");
    assert!(!res
        .targets
        .iter()
        .any(|t| stopped.contains(t) || other_env.contains(t)));
    assert_eq!(res.command_ids.len(), 1);
    assert_eq!(res.commit.as_deref(), Some(commit.as_str()));

    let record = f.record(&version).await.expect("deploy record written");
    assert_eq!(record.outcome, Outcome::Dispatched);
    assert_eq!(record.targets, targets);
    assert_eq!(record.commands[0].instance_ids, targets);
    assert_eq!(
        record.command_ids(),
        res.command_ids
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    let verification = record.verification.as_ref().unwrap();
    assert!(
        verification.ok && verification.entries >= 3,
        "{verification:?}"
    );
    assert_eq!(record.metadata.as_ref().unwrap().commit, commit);
    assert_eq!(record.manifest.as_ref().unwrap().app, f.app);
    assert_eq!(
        record.event.sequencer.as_deref(),
        Some("0055AED6DCD90281E5")
    );
    assert!(record.lease_until.is_none());

    // What moto recorded: the header exporting every input, then the embedded script.
    let commands = f.commands().await;
    assert_eq!(commands.len(), 1);
    let (id, script) = &commands[0];
    assert_eq!(id, &res.command_ids[0]);
    assert!(script.starts_with(deployer_lambda::plan::COMMAND_PREAMBLE));
    assert!(script.ends_with(deployer_lambda::plan::packed_host_script()));
    for var in HostVar::ALL {
        assert!(
            script.contains(&format!("\nexport {}=", var.name())),
            "{} exported",
            var.name()
        );
    }
    assert!(script.contains(&format!("export DROPSHIP_VERSION_ID='{version}'\n")));
    assert!(script.contains(&format!("export DROPSHIP_COMMIT='{commit}'\n")));
    assert!(script.contains(&format!(
        "export DROPSHIP_APP_ROOT='/opt/dropship/{}'\n",
        f.app
    )));
    let cmd = f.ssm.list_commands().command_id(id).send().await.unwrap();
    let cmd = &cmd.commands()[0];
    assert_eq!(cmd.document_name(), Some(DEPLOY_DOCUMENT));
    assert_eq!(cmd.max_concurrency(), Some("2"));
    assert_eq!(cmd.max_errors(), Some("0"));
    let comment = cmd.comment().unwrap_or_default();
    assert!(
        comment.contains(&f.app) && comment.contains(&version) && comment.contains(&commit[..12]),
        "{comment}"
    );
    assert_eq!(
        cmd.parameters().unwrap()["executionTimeout"],
        vec!["1800".to_owned()]
    );
    // moto lists every instance of the region as targets (a quirk): ours must be among them.
    for t in &targets {
        assert!(cmd.instance_ids().contains(t));
    }

    // What any reader of ListCommands sees grants nothing: no presigned URL (signature,
    // credential, token), none of the Lambda's own credentials.
    let parameters = cmd.parameters().unwrap();
    let listed: String = parameters.values().flatten().cloned().collect();
    assert!(listed.contains(&version), "the parameters hold the command");
    for secret in [
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "Signature=",
    ] {
        assert!(
            !listed.contains(secret),
            "{secret} in the command's parameters"
        );
    }
    for var in ["AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] {
        let value = std::env::var(var).unwrap_or_default();
        assert!(
            value.is_empty() || !listed.contains(&format!("'{value}'")),
            "{var} in the command's parameters"
        );
    }

    // Only where the bundle is: the S3 endpoint the Lambda uses, its region, the exact version.
    let exported = |name: &str| {
        let prefix = format!("export {name}='");
        script
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or_else(|| panic!("{name} not exported plainly"))
            .to_owned()
    };
    let endpoint = exported("DROPSHIP_S3_ENDPOINT");
    assert_eq!(endpoint, moto::endpoint().trim_end_matches('/'));
    let region = exported("DROPSHIP_REGION");
    assert_eq!(region, std::env::var("AWS_REGION").unwrap());
    assert_eq!(exported("DROPSHIP_BUCKET"), f.bucket);
    assert_eq!(exported("DROPSHIP_KEY"), f.key());
    // The host's request (path style, signed like the host script signs it, with a role's
    // credentials, here moto's test ones) gets exactly this version's bytes from moto.
    let target = dropship_contract::host::object_request_target(&f.bucket, &f.key(), &version);
    let config = format!(
        "url = \"{endpoint}{target}\"\nuser = \"{}:{}\"\nheader = \"x-amz-security-token: {}\"\nheader = \"x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"\n",
        std::env::var("AWS_ACCESS_KEY_ID").unwrap(),
        std::env::var("AWS_SECRET_ACCESS_KEY").unwrap(),
        std::env::var("AWS_SESSION_TOKEN").unwrap_or_default(),
    );
    let mut curl = std::process::Command::new("curl")
        .args(["--config", "-", "-fsS", "--aws-sigv4"])
        .arg(format!("aws:amz:{region}:s3"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut curl.stdin.take().unwrap(), config.as_bytes()).unwrap();
    let out = curl.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(exported("DROPSHIP_SHA256"), sha256_hex(&out.stdout));
}

/// The value the header exports for `var`.
fn exported<'a>(script: &'a str, var: &str) -> &'a str {
    let prefix = format!("export {var}=");
    script
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("{var} not exported"))
        .trim_matches('\'')
}

/// One real bundle (from `bundle-and-upload`, with a production override of the compose
/// profiles) deploys to staging with staging's settings; once staging deployed it on every
/// host, `dropship promote` copies the exact version to production, whose bytes are the same,
/// and the deployer verifies it and dispatches it to the production hosts with production's
/// settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_version_is_verified_and_dispatched_with_its_environments_settings() {
    let f = Fixture::new().await;
    let staging_hosts = f.instances(&f.app, "staging", 1).await;
    let production_hosts = f.instances(&f.app, "production", 2).await;
    let repo = GitRepo::new();
    repo.write_config(
        &f.app,
        &f.bucket,
        "[deploy]\nprofiles = [\"web\"]\n[env.production.deploy]\nprofiles = [\"web\", \"prod\"]\n",
    )
    .write(
        "compose.yaml",
        "services:\n  web:\n    image: nginx:alpine\n",
    );
    repo.commit("two environments");
    // Uploaded by CI (promote refuses a developer's local upload without --force).
    let staged = run(repo.bundler().arg("--json").env("CI", "true"))
        .success()
        .json()["version_id"]
        .as_str()
        .expect("version id")
        .to_owned();

    let d = f.deployer().await;
    let res = handle(&d, &f.event(&staged, "00A1"))
        .await
        .expect("staging");
    assert_eq!(res.outcome, Outcome::Dispatched, "{res:?}");
    assert_eq!(res.targets, staging_hosts);
    let commands = f.commands().await;
    assert_eq!(commands.len(), 1);
    assert_eq!(exported(&commands[0].1, "DROPSHIP_PROFILES"), "web");
    let staging_sha = exported(&commands[0].1, "DROPSHIP_SHA256").to_owned();
    // The hosts' results stand in here (the suite's hosts have no engine): the fleet settled
    // `deployed`, as the deployer records it.
    let staging = ReleaseKey::new(&f.app, "staging").unwrap();
    records::put(
        &f.s3,
        &f.bucket,
        &records::settled(
            &f.bucket,
            &staging,
            &staged,
            &staging_hosts,
            FleetOutcome::Deployed,
        ),
    )
    .await;

    let promoted = run(repo.dropship().args([
        "promote",
        "staging",
        "production",
        "--version",
        &staged,
        "--json",
    ]))
    .success()
    .json();
    assert_eq!(promoted["source_version_id"], staged.as_str());
    assert_eq!(promoted["sha256"], staging_sha.as_str());
    let version = promoted["version_id"].as_str().unwrap().to_owned();
    let production = ReleaseKey::new(&f.app, "production").unwrap();
    let res = handle(
        &d,
        &event_for(
            &f.bucket,
            &production.object_key(),
            &version,
            "00A2",
            "CopyObject",
        ),
    )
    .await
    .expect("production");
    assert_eq!(res.outcome, Outcome::Dispatched, "{res:?}");
    assert_eq!(res.targets, production_hosts);
    let commands = f.commands().await;
    let (_, script) = commands
        .iter()
        .find(|(id, _)| id == &res.command_ids[0])
        .expect("the production command");
    assert_eq!(exported(script, "DROPSHIP_PROFILES"), "web,prod");
    assert_eq!(exported(script, "DROPSHIP_SHA256"), staging_sha);
    assert_eq!(exported(script, "DROPSHIP_ENV"), "production");
    assert_eq!(exported(script, "DROPSHIP_VERSION_ID"), version);
    let out =
        f.s3.get_object()
            .bucket(&f.bucket)
            .key(production.object_key())
            .version_id(&version)
            .send()
            .await
            .unwrap();
    let bytes = out.body.collect().await.unwrap().into_bytes();
    assert_eq!(sha256_hex(&bytes), staging_sha, "the bytes staging ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_event_sends_one_command() {
    let f = Fixture::new().await;
    f.instances(&f.app, ENV, 1).await;
    let (version, _) = f.upload_real_bundle("dup").await;
    let d = f.deployer().await;
    let event = f.event(&version, "00AA");
    let first = handle(&d, &event).await.unwrap();
    assert_eq!(first.outcome, Outcome::Dispatched);
    let second = handle(&d, &event).await.unwrap();
    assert_eq!(second.outcome, Outcome::SkippedDuplicate);
    assert!(second.reason.unwrap().contains("already handled"));
    assert_eq!(
        second.command_ids, first.command_ids,
        "the duplicate reports the original command"
    );
    // Also a copy of the event delivered with another EventBridge id (at-least-once).
    let mut again = event.clone();
    again["id"] = json!("another-delivery");
    assert_eq!(
        handle(&d, &again).await.unwrap().outcome,
        Outcome::SkippedDuplicate
    );
    assert_eq!(f.commands().await.len(), 1, "exactly one SSM command");
    assert_eq!(f.record(&version).await.unwrap().attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_a_version_that_is_no_longer_current_is_skipped() {
    let f = Fixture::new().await;
    f.instances(&f.app, ENV, 1).await;
    let (v1, _) = f.upload_real_bundle("v1").await;
    let (v2, _) = f.upload_real_bundle("v2").await;
    let d = f.deployer().await;
    // v2's event arrives first; v1's after it (whatever its sequencer says).
    assert_eq!(
        handle(&d, &f.event(&v2, "0055AED6DCD90281E6"))
            .await
            .unwrap()
            .outcome,
        Outcome::Dispatched
    );
    let res = handle(&d, &f.event(&v1, "0055AED6DCD90281E5FF"))
        .await
        .unwrap();
    assert_eq!(res.outcome, Outcome::SkippedStale, "{res:?}");
    assert!(res.reason.as_deref().unwrap().contains(&v2));
    let commands = f.commands().await;
    assert_eq!(commands.len(), 1);
    assert!(commands[0]
        .1
        .contains(&format!("DROPSHIP_VERSION_ID='{v2}'")));
    assert_eq!(f.record(&v1).await.unwrap().outcome, Outcome::SkippedStale);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_events_borrowed_instances_and_foreign_environments_are_refused_and_real_uploads_still_deploy(
) {
    let f = Fixture::new().await;
    let profile = moto::create_instance_profile(&format!("dropship-host-{}.{ENV}", f.app));
    let good = f
        .instances_with_profile(&f.app, ENV, 1, Some(&profile))
        .await;
    // Tagged by someone allowed ec2:CreateTags, but not given the module's profile.
    let borrowed = f.instances_with_profile(&f.app, ENV, 1, None).await;
    let d = f
        .deployer_with(&[
            (
                "DROPSHIP_INSTANCE_PROFILE_ARN",
                "arn:aws:iam::123456789012:instance-profile/dropship-host-{app}.{env}".into(),
            ),
            ("DROPSHIP_ALLOWED_APPS", f.app.clone()),
            ("DROPSHIP_ALLOWED_ENVIRONMENTS", ENV.into()),
        ])
        .await;
    let (v1, _) = f.upload_real_bundle("v1").await;
    let (v2, _) = f.upload_real_bundle("v2").await;

    // A forged event for the old version with a maximal sequencer: refused and recorded.
    let forged = handle(&d, &f.event(&v1, &"F".repeat(128))).await.unwrap();
    assert_eq!(forged.outcome, Outcome::SkippedStale, "{forged:?}");
    assert!(forged.reason.unwrap().contains("not the current version"));
    assert_eq!(f.record(&v1).await.unwrap().outcome, Outcome::SkippedStale);
    // A direct invocation of the old version: refused the same way (operators redeploy the
    // current version; `dropship rollback` goes back).
    let direct = json!({"bucket": f.bucket, "key": f.key(), "version_id": v1});
    let res = handle(&d, &direct).await.unwrap();
    assert_eq!(res.outcome, Outcome::SkippedStale, "{res:?}");
    assert!(res
        .reason
        .unwrap()
        .contains(&format!("dropship rollback {v1}")));
    // An environment outside the allow-list: refused before any S3 read, nothing written.
    let before = f.record_keys().await;
    let foreign = event_for(
        &f.bucket,
        &format!("releases/{}/prod.tar.gz", f.app),
        &v2,
        "01",
        "PutObject",
    );
    let res = handle(&d, &foreign).await.unwrap();
    assert_eq!(res.outcome, Outcome::Rejected, "{res:?}");
    assert!(res
        .reason
        .unwrap()
        .contains("DROPSHIP_ALLOWED_ENVIRONMENTS"));
    assert_eq!(f.record_keys().await, before, "nothing recorded for it");
    assert!(f.commands().await.is_empty(), "nothing sent so far");

    // The real upload deploys, to the instance with the profile only; the other is recorded.
    let res = handle(&d, &f.event(&v2, "0055AED6DCD90281E6"))
        .await
        .unwrap();
    assert_eq!(res.outcome, Outcome::Dispatched, "{res:?}");
    assert_eq!(res.targets, good);
    let record = f.record(&v2).await.unwrap();
    assert_eq!(record.refused_targets.len(), 1);
    assert_eq!(record.refused_targets[0].instance_id, borrowed[0]);
    assert!(
        record.refused_targets[0]
            .reason
            .contains("no instance profile"),
        "{:?}",
        record.refused_targets
    );
    event_facts_recorded(&record);
    // Hosts order by S3's own stamp, never by a payload's sequencer.
    let commands = f.commands().await;
    assert_eq!(commands.len(), 1);
    let stamp = record.stamp.clone().expect("stamp recorded");
    assert_eq!(stamp.len(), 8);
    assert!(commands[0]
        .1
        .contains(&format!("export DROPSHIP_SEQUENCER='{stamp}'")));
    assert!(!commands[0].1.contains("FFFFFFFF"));
    // The duplicate of the real event never moves the pointer to its own payload's value.
    let mut dup = f.event(&v2, &"F".repeat(128));
    dup["id"] = json!("replayed");
    assert_eq!(
        handle(&d, &dup).await.unwrap().outcome,
        Outcome::SkippedDuplicate
    );
    let pointer = f.pointer().await.expect("pointer");
    assert_eq!(
        pointer.sequencer, stamp,
        "S3's stamp, never a payload's sequencer"
    );
}

/// The event's requester and source address are kept as the payload states them (claims
/// like the uploader metadata: a forged event carries whatever it likes).
fn event_facts_recorded(record: &DeployRecord) {
    assert_eq!(record.event.requester.as_deref(), Some("123456789012"));
    assert_eq!(record.event.source_ip.as_deref(), Some("1.2.3.4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_running_target_means_no_command_and_a_recorded_reason() {
    let f = Fixture::new().await;
    let (version, _) = f.upload_real_bundle("lonely").await;
    let d = f.deployer().await;
    let res = handle(&d, &f.event(&version, "01")).await.unwrap();
    assert_eq!(res.outcome, Outcome::NoTargets);
    assert!(res
        .reason
        .as_deref()
        .unwrap()
        .contains(&format!("dropship:app={}", f.app)));
    assert!(f.commands().await.is_empty());
    let record = f.record(&version).await.unwrap();
    assert_eq!(record.outcome, Outcome::NoTargets);
    assert!(
        record.verification.unwrap().ok,
        "verified before looking for targets"
    );
}

// ---------------------------------------------------------------------------------------
// Hostile bundles: hand-made archives (the bundler would refuse to build them).

struct Entry {
    path: &'static str,
    kind: u8,
    mode: u32,
    data: Vec<u8>,
    link: &'static str,
}

fn entry(path: &'static str, data: &[u8]) -> Entry {
    Entry {
        path,
        kind: b'0',
        mode: 0o644,
        data: data.to_vec(),
        link: "",
    }
}

fn special(path: &'static str, kind: u8, link: &'static str) -> Entry {
    Entry {
        path,
        kind,
        mode: 0o644,
        data: vec![],
        link,
    }
}

/// A ustar archive written byte by byte, so any name or type can be stored.
fn ustar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = [0u8; 512];
        h[..e.path.len()].copy_from_slice(e.path.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = width - 1);
            h[at..at + width].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, u64::from(e.mode));
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, e.data.len() as u64);
        octal(&mut h, 136, 12, 1_700_000_000);
        h[156] = e.kind;
        h[157..157 + e.link.len()].copy_from_slice(e.link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    out.stdout
}

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn manifest_bytes(app: &str, rest: &[Entry]) -> Vec<u8> {
    Manifest {
        format: MANIFEST_FORMAT,
        app: app.into(),
        branch: "main".into(),
        commit: COMMIT.into(),
        commit_time: 1_700_000_000,
        dirty: false,
        message: "test release".into(),
        files: rest.len() as u64,
        bytes: rest
            .iter()
            .filter(|e| e.kind == b'0')
            .map(|e| e.data.len() as u64)
            .sum(),
        deploy: DeploySettings::default(),
        overrides: Default::default(),
        legacy_env: None,
    }
    .to_bytes()
}

/// A bundle with a correct manifest followed by `rest`.
fn hostile_bundle(app: &str, rest: Vec<Entry>) -> Vec<u8> {
    let mut all = vec![Entry {
        path: ".dropship/manifest.json",
        kind: b'0',
        mode: 0o644,
        data: manifest_bytes(app, &rest),
        link: "",
    }];
    all.extend(rest);
    gzip(&ustar(&all))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hostile_bundle_is_rejected_with_its_reason_and_nothing_is_sent() {
    let f = Fixture::new().await;
    f.instances(&f.app, ENV, 1).await;
    let d = f.deployer().await;
    let app = f.app.clone();
    let compose = || entry("compose.yaml", b"services: {}\n");
    type Case = (
        &'static str,
        Vec<u8>,
        Box<dyn Fn(&mut ObjectMetadata)>,
        &'static str,
    );
    let keep = || -> Box<dyn Fn(&mut ObjectMetadata)> { Box::new(|_| {}) };
    let cases: Vec<Case> = vec![
        (
            "parent path",
            hostile_bundle(&app, vec![compose(), entry("../x", b"x")]),
            keep(),
            "'..'",
        ),
        (
            "absolute path",
            hostile_bundle(&app, vec![compose(), entry("/etc/x", b"x")]),
            keep(),
            "absolute",
        ),
        (
            "symlink to / then through it",
            hostile_bundle(
                &app,
                vec![
                    compose(),
                    special("link", b'2', "/"),
                    entry("link/file", b"x"),
                ],
            ),
            keep(),
            "\"link\"",
        ),
        (
            "symlink inside then through it",
            hostile_bundle(
                &app,
                vec![
                    compose(),
                    special("link", b'2', "."),
                    entry("link/file", b"x"),
                ],
            ),
            keep(),
            "beneath symlink",
        ),
        (
            "symlink chain that climbs through a symlink",
            hostile_bundle(
                &app,
                vec![
                    compose(),
                    special("s", b'2', "."),
                    special("t", b'2', "s/.."),
                    special("u", b'2', "t/.."),
                    special("v", b'2', "u/etc"),
                ],
            ),
            keep(),
            "and then up (..)",
        ),
        (
            "hardlink",
            hostile_bundle(&app, vec![compose(), special("hard", b'1', "compose.yaml")]),
            keep(),
            "hardlink",
        ),
        (
            "char device",
            hostile_bundle(&app, vec![compose(), special("dev", b'3', "")]),
            keep(),
            "character device",
        ),
        (
            "fifo",
            hostile_bundle(&app, vec![compose(), special("fifo", b'6', "")]),
            keep(),
            "FIFO",
        ),
        (
            "setuid",
            hostile_bundle(
                &app,
                vec![
                    compose(),
                    Entry {
                        mode: 0o4755,
                        ..entry("suid", b"x")
                    },
                ],
            ),
            keep(),
            "setuid",
        ),
        (
            "sha mismatch",
            hostile_bundle(&app, vec![compose()]),
            Box::new(|m| m.sha256 = "0".repeat(64)),
            "SHA-256",
        ),
        (
            "missing manifest",
            gzip(&ustar(&[compose()])),
            keep(),
            "no manifest",
        ),
        (
            "metadata app differs from key",
            hostile_bundle(&app, vec![compose()]),
            Box::new(|m| m.app = "other-app".into()),
            "metadata app",
        ),
        (
            "metadata env differs from key",
            hostile_bundle(&app, vec![compose()]),
            Box::new(|m| m.env = "prod".into()),
            "metadata env",
        ),
        (
            "format-1 manifest naming its environment",
            {
                let rest = vec![compose()];
                let mut old: Value = serde_json::from_slice(&manifest_bytes(&app, &rest)).unwrap();
                old["format"] = 1.into();
                old["env"] = ENV.into();
                let mut all = vec![Entry {
                    path: ".dropship/manifest.json",
                    kind: b'0',
                    mode: 0o644,
                    data: old.to_string().into_bytes(),
                    link: "",
                }];
                all.extend(rest);
                gzip(&ustar(&all))
            },
            keep(),
            "manifest format 1 was written by an older bundle-and-upload",
        ),
    ];
    for (i, (name, bytes, tweak, reason)) in cases.into_iter().enumerate() {
        let mut meta = f.metadata(COMMIT, &sha256_hex(&bytes));
        tweak(&mut meta);
        let version = f.upload(bytes, &meta).await;
        let res = handle(&d, &f.event(&version, &format!("{:02X}", i + 1)))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(res.outcome, Outcome::Rejected, "{name}: {res:?}");
        let why = res.reason.clone().unwrap_or_default();
        assert!(
            why.contains(reason),
            "{name}: reason {why:?} should mention {reason:?}"
        );
        assert!(
            why.contains(&version),
            "{name}: reason names the version: {why}"
        );
        let record = f
            .record(&version)
            .await
            .unwrap_or_else(|| panic!("{name}: record"));
        assert_eq!(record.outcome, Outcome::Rejected, "{name}");
        assert_eq!(record.reason.as_deref(), Some(why.as_str()));
        assert!(
            record.commands.is_empty() && record.targets.is_empty(),
            "{name}"
        );
        assert!(f.commands().await.is_empty(), "{name}: a command was sent");
        // A repeat of the event does not retry a rejected bundle.
        let again = handle(&d, &f.event(&version, &format!("{:02X}", i + 1)))
            .await
            .unwrap();
        assert_eq!(again.outcome, Outcome::SkippedDuplicate, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_version_fails_closed() {
    let f = Fixture::new().await;
    f.instances(&f.app, ENV, 1).await;
    let (real, _) = f.upload_real_bundle("x").await;
    let d = f.deployer().await;
    // S3 says which version is current: a version it does not have never is.
    let res = handle(&d, &f.event("no-such-version-id", "05"))
        .await
        .unwrap();
    assert_eq!(res.outcome, Outcome::SkippedStale);
    let reason = res.reason.unwrap();
    assert!(
        reason.contains("not the current version") && reason.contains(&real),
        "{reason}"
    );
    assert!(f.commands().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_foreign_events_change_nothing() {
    let f = Fixture::new().await;
    f.instances(&f.app, ENV, 1).await;
    let (version, _) = f.upload_real_bundle("x").await;
    let d = f.deployer().await;
    let mut malformed = f.event(&version, "01");
    malformed["detail"]["object"]
        .as_object_mut()
        .unwrap()
        .remove("version-id");
    let err = handle(&d, &malformed).await.unwrap_err();
    assert!(matches!(err, HandlerError::Event(_)));
    assert!(
        err.to_string().contains("detail.object.version-id"),
        "{err}"
    );
    // Foreign: another bucket, a non-release key, a delete marker.
    let other_bucket = event_for(
        "someone-elses-bucket",
        &f.key(),
        &version,
        "01",
        "PutObject",
    );
    let foreign_key = event_for(
        &f.bucket,
        &format!("releases/{}/notes.txt", f.app),
        &version,
        "01",
        "PutObject",
    );
    let mut deleted = f.event(&version, "02");
    deleted["detail-type"] = json!("Object Deleted");
    deleted["detail"]["deletion-type"] = json!("Delete Marker Created");
    for payload in [other_bucket, foreign_key, deleted] {
        let res = handle(&d, &payload).await.unwrap();
        assert_eq!(res.outcome, Outcome::Ignored, "{res:?}");
    }
    assert!(f.record_keys().await.is_empty(), "no record written");
    assert!(f.commands().await.is_empty(), "no command sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_url_encoding_are_decoded_for_every_reason() {
    let f = Fixture::new().await;
    f.instances(&f.app, ENV, 1).await;
    let (version, _) = f.upload_real_bundle("enc").await;
    let d = f.deployer().await;
    let encoded = f.key().replace('/', "%2F");
    let res = handle(
        &d,
        &event_for(
            &f.bucket,
            &encoded,
            &version,
            "0A",
            "CompleteMultipartUpload",
        ),
    )
    .await
    .unwrap();
    assert_eq!(res.outcome, Outcome::Dispatched, "{res:?}");
    assert_eq!(res.key.as_deref(), Some(f.key().as_str()));
}

// ---------------------------------------------------------------------------------------
// The built binary, run as a Lambda through the Runtime API.

fn process_env(f: &Fixture) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = f
        .env_vars()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    env.extend(moto::aws_env());
    env.extend(f.local_ssm.aws_env());
    env
}

fn borrowed(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_as_a_lambda_through_the_runtime_api() {
    let f = Fixture::new().await;
    let targets = f.instances(&f.app, ENV, 1).await;
    let (version, _) = f.upload_real_bundle("bin").await;
    let env = process_env(&f);
    let event = f.event(&version, "0B");
    let bucket = f.bucket.clone();
    let (init, first, second, malformed) = tokio::task::spawn_blocking(move || {
        let mut lambda = LambdaProcess::start(&borrowed(&env));
        let init = lambda
            .wait_ready(Duration::from_secs(30))
            .expect("function initialised");
        let first = lambda.invoke(&event).expect("first invocation succeeds");
        let second = lambda.invoke(&event).expect("second invocation succeeds");
        let malformed = lambda
            .invoke(&json!({"bucket": bucket, "key": "releases/x/y.tar.gz"}))
            .unwrap_err();
        (init, first, second, malformed)
    })
    .await
    .unwrap();
    assert!(init < Duration::from_secs(30));
    assert_eq!(first["outcome"], "dispatched", "{first}");
    assert_eq!(first["targets"], json!(targets));
    assert_eq!(second["outcome"], "skipped_duplicate", "{second}");
    assert_eq!(malformed["errorType"], "MalformedEvent", "{malformed}");
    assert!(
        malformed["errorMessage"]
            .as_str()
            .unwrap()
            .contains("version_id"),
        "{malformed}"
    );
    assert_eq!(f.commands().await.len(), 1);
}

/// `gzip -9` of `bytes` (deflate's best ratio, about 1030:1 on zeros).
fn gzip_best(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip");
    let mut stdin = child.stdin.take().unwrap();
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// A bundle of `app` whose manifest is honest and whose `gib` files are 1 GiB of zeros each
/// (the per-file limit, under the 8 GiB total): a few MB that inflate to gigabytes. The tar
/// stream is cut into gzip members (`tar -xz` reads them all); each run of zeros is one 64 MiB
/// member repeated.
fn gzip_bomb(app: &str, gib: u64) -> Vec<u8> {
    const FILE: u64 = 1 << 30;
    let names = [
        "zeros-1", "zeros-2", "zeros-3", "zeros-4", "zeros-5", "zeros-6", "zeros-7",
    ];
    assert!((1..=names.len() as u64).contains(&gib));
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        app: app.into(),
        branch: "main".into(),
        commit: COMMIT.into(),
        commit_time: 1_700_000_000,
        dirty: false,
        message: "test release".into(),
        files: gib,
        bytes: gib * FILE,
        deploy: DeploySettings::default(),
        overrides: Default::default(),
        legacy_env: None,
    }
    .to_bytes();
    // A file's header whose size field says 1 GiB, its checksum recomputed.
    let header = |name: &'static str| {
        let mut h = ustar(&[entry(name, b"")]);
        h.truncate(512);
        h[124..136].copy_from_slice(format!("{FILE:011o}\0").as_bytes());
        h[148..156].copy_from_slice(b"        ");
        let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    };
    let mut first = ustar(&[Entry {
        path: ".dropship/manifest.json",
        kind: b'0',
        mode: 0o644,
        data: manifest,
        link: "",
    }]);
    first.truncate(first.len() - 1024);
    let zeros = gzip_best(&vec![0u8; 64 << 20]);
    let mut object = Vec::new();
    for (i, name) in names.iter().take(gib as usize).enumerate() {
        let mut head = if i == 0 { first.clone() } else { Vec::new() };
        head.extend_from_slice(&header(name));
        object.extend_from_slice(&gzip_best(&head));
        for _ in 0..(FILE >> 26) {
            object.extend_from_slice(&zeros);
        }
    }
    object.extend_from_slice(&gzip_best(&[0u8; 1024]));
    object
}

/// A staging upload of a gzip bomb (4 GiB from about 4 MB) and a production release deployed
/// at the same time, each in its own function process (Lambda runs concurrent invocations in
/// separate execution environments): the bomb is refused after inflating at most the verifier's
/// free allowance, in bounded time and memory, and the production deploy is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzip_bomb_is_refused_in_bounded_time_and_memory_and_a_concurrent_deploy_proceeds() {
    let staging = Fixture::new().await;
    staging.instances(&staging.app, ENV, 1).await;
    let bomb = gzip_bomb(&staging.app, 4);
    let bomb_bytes = bomb.len();
    assert!(bomb_bytes < 8 << 20, "{bomb_bytes} bytes");
    let meta = staging.metadata(COMMIT, &sha256_hex(&bomb));
    let bomb_version = staging.upload(bomb, &meta).await;
    let bomb_event = staging.event(&bomb_version, "0B0B");

    let production = Fixture::new().await;
    let targets = production.instances(&production.app, ENV, 1).await;
    let (real_version, _) = production.upload_real_bundle("prod").await;
    let real_event = production.event(&real_version, "0C0C");

    let (bomb_env, real_env) = (process_env(&staging), process_env(&production));
    let run = |env: Vec<(String, String)>, event: Value| {
        std::thread::spawn(move || {
            let mut lambda = LambdaProcess::start(&borrowed(&env));
            lambda
                .wait_ready(Duration::from_secs(30))
                .expect("function initialised");
            let idle_kib = lambda.peak_rss_kib().expect("VmHWM");
            let started = std::time::Instant::now();
            let result = lambda.invoke(&event).expect("invocation answered");
            let took = started.elapsed();
            let peak_kib = lambda.peak_rss_kib().expect("VmHWM");
            (result, took, idle_kib, peak_kib)
        })
    };
    let (bomb_run, real_run) = (run(bomb_env, bomb_event), run(real_env, real_event));
    let (bomb_result, bomb_took, bomb_idle, bomb_peak) = bomb_run.join().unwrap();
    let (real_result, real_took, _, _) = real_run.join().unwrap();
    eprintln!(
        "gzip bomb: {bomb_bytes} bytes declaring 4 GiB, refused in {:.2} s, peak RSS {} MiB ({} MiB before the invocation); concurrent production deploy {:.2} s",
        bomb_took.as_secs_f64(),
        bomb_peak / 1024,
        bomb_idle / 1024,
        real_took.as_secs_f64()
    );
    assert_eq!(bomb_result["outcome"], "rejected", "{bomb_result}");
    assert!(
        bomb_result["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("decompression bomb"),
        "{bomb_result}"
    );
    assert!(
        bomb_took < Duration::from_secs(10),
        "bomb took {bomb_took:?}"
    );
    assert!(
        bomb_peak < 128 * 1024,
        "bomb verification peaked at {bomb_peak} KiB"
    );
    assert!(
        staging.commands().await.is_empty(),
        "nothing sent for the bomb"
    );
    assert_eq!(real_result["outcome"], "dispatched", "{real_result}");
    assert_eq!(real_result["targets"], json!(targets));
    assert!(
        real_took < Duration::from_secs(20),
        "production took {real_took:?}"
    );
}

/// Bytes that deflate cannot shrink (xorshift64), so a bundle holding them is as large as
/// they are.
fn incompressible(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A newer upload of the key while the deployer is still reading a large bundle: the
/// verification stops at the deployer's next check of the key's current version (HeadObject,
/// at most every 2 s or 32 MiB read), well before the download would end, and the event is
/// settled as stale with nothing sent. The download runs through a proxy that relays it at
/// 8 MiB/s, so the whole verification would take about 8 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verification_stops_when_a_newer_version_of_the_key_becomes_current() {
    use dropship_tests::faults::{FaultProxy, Throttle};
    const RATE: usize = 8 << 20;
    let f = Fixture::new().await;
    f.instances(&f.app, ENV, 1).await;
    let bundle = make_bundle(
        &f.app,
        &AppFiles::healthy(8080, "large").with("blob.bin", incompressible(64 << 20)),
    );
    let bundle_bytes = bundle.bytes.len();
    let meta = f.metadata(&bundle.commit, &bundle.sha256);
    let large = f.upload(bundle.bytes, &meta).await;
    let whole_download = Duration::from_secs_f64(bundle_bytes as f64 / RATE as f64);

    let proxy = FaultProxy::start_with(
        &moto::endpoint(),
        Vec::new(),
        vec![Throttle {
            method: "GET",
            target_contains: format!("versionId={large}"),
            bytes_per_sec: RATE,
        }],
    );
    let mut env = process_env(&f);
    env.push(("AWS_ENDPOINT_URL_S3".into(), proxy.endpoint()));
    let event = f.event(&large, "0D0D");
    let run = std::thread::spawn(move || {
        let mut lambda = LambdaProcess::start(&borrowed(&env));
        lambda
            .wait_ready(Duration::from_secs(30))
            .expect("function initialised");
        let started = std::time::Instant::now();
        let result = lambda.invoke(&event).expect("invocation answered");
        (result, started.elapsed())
    });

    // Once the download is under way, a newer version becomes the key's current one.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !proxy
        .seen()
        .iter()
        .any(|l| l.starts_with("GET") && l.contains(&large))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the deployer never started downloading: {:?}",
            proxy.seen()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let uploaded = std::time::Instant::now();
    let (newer, _) = f.upload_real_bundle("newer").await;
    let (result, took) = tokio::task::spawn_blocking(move || run.join().unwrap())
        .await
        .unwrap();
    let stopped_after_upload = uploaded.elapsed();
    let heads = proxy
        .seen()
        .iter()
        .filter(|l| l.starts_with("HEAD") && !l.contains("versionId"))
        .count();
    eprintln!(
        "superseded verification: {bundle_bytes} bytes (whole download {:.1} s at 8 MiB/s), invocation {:.2} s, stopped {:.2} s after the newer upload, {heads} HeadObject of the current version (1 before the claim)",
        whole_download.as_secs_f64(),
        took.as_secs_f64(),
        stopped_after_upload.as_secs_f64()
    );
    assert_eq!(result["outcome"], "skipped_stale", "{result}");
    let reason = result["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&newer) && reason.contains("while it was being verified"),
        "{result}"
    );
    assert!(
        took < whole_download,
        "verification ran {took:?}, the whole download takes {whole_download:?}"
    );
    assert!(
        stopped_after_upload < Duration::from_secs(5),
        "stopped {stopped_after_upload:?} after the newer upload"
    );
    assert!(f.commands().await.is_empty(), "nothing sent for {large}");
    assert!(
        heads <= 2 + (took.as_secs() as usize) / 2,
        "{heads} HeadObject calls in {took:?}"
    );
    let record = f
        .record(&large)
        .await
        .expect("the superseded version's record");
    assert_eq!(record.outcome, Outcome::SkippedStale, "{record:?}");
}

#[test]
fn invalid_configuration_fails_at_cold_start_naming_the_variable() {
    let mut lambda = LambdaProcess::start(&[
        ("DROPSHIP_ALLOWED_BUCKETS", "rel"),
        ("DROPSHIP_MAX_CONCURRENCY", "0"),
    ]);
    let err = lambda.wait_ready(Duration::from_secs(30)).unwrap_err();
    let message = err["errorMessage"].as_str().unwrap_or_default().to_owned();
    assert!(
        message.contains("DROPSHIP_MAX_CONCURRENCY") && message.contains("\"0\""),
        "{err}"
    );
    let status = lambda
        .wait_exit(Duration::from_secs(10))
        .expect("the process exits");
    assert!(!status.success());
    assert!(
        lambda.init_error().is_some(),
        "reported through /init/error"
    );
}
