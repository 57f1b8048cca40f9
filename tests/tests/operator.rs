//! The operator's commands of the real `dropship` binary against moto server over HTTP:
//! `releases`, `status`, `rollback` and `--wait` (also on `bundle-and-upload`), and the old
//! spellings `bundle-and-upload versions|status|restore`, which keep working.
//!
//! Deploy records are written here with the contract types (what the deployer Lambda writes),
//! so these tests do not depend on the Lambda. moto's SSM never runs a command and reports
//! every invocation as `Success` with exit code 0 and empty output, and `SendCommand` reaches
//! every instance in the region; so here `status` is checked for reading each invocation the
//! record names (including one SSM does not know: the "does not exist yet" race), while the
//! mapping of real invocation shapes (rolled back, failed, undeliverable, timed out, …) to
//! host states and `--wait` exit codes is unit-tested in `operator/src/{status,wait}.rs`
//! with documented `GetCommandInvocation` fixtures.

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::InstanceType;
use aws_sdk_s3::primitives::ByteStream;
use dropship_contract::fleet::FleetOutcome;
use dropship_contract::key::ReleaseKey;
use dropship_contract::metadata::ObjectMetadata;
use dropship_contract::metadata::PromotedFrom;
use dropship_contract::record::{
    CommandBatch, DeployRecord, EventFacts, LatestPointer, Outcome, Trigger,
};
use dropship_tests::repo::GitRepo;
use dropship_tests::{bins, moto, records};
use serde_json::Value;
use sha2::{Digest, Sha256};

const APP: &str = "shop";
const ENV: &str = "prod";

/// A throwaway app repository (the shared git helper) with a dropship.toml for `bucket`.
struct AppRepo {
    repo: GitRepo,
}

impl AppRepo {
    fn new(bucket: &str) -> Self {
        let repo = GitRepo::new();
        repo.write(
            "dropship.toml",
            format!("app = \"{APP}\"\nbucket = \"{bucket}\"\nenvironments = [\"{ENV}\"]\ndefault_env = \"{ENV}\"\n"),
        )
        .write(
            "compose.yaml",
            "services:\n  web:\n    image: nginx:alpine\n",
        );
        Self { repo }
    }

    fn write(&self, rel: &str, text: &str) {
        self.repo.write(rel, text);
    }

    fn git(&self, args: &[&str]) -> String {
        self.repo.git(args)
    }

    /// Commits a change to `app.txt`; returns the commit id.
    fn commit(&self, content: &str) -> String {
        self.repo.write("app.txt", content);
        self.repo.commit(&format!("release {content}"))
    }

    /// Stdin closed (not a terminal), fast polling, a known uploader.
    fn prepared(mut cmd: Command, args: &[&str]) -> Command {
        cmd.args(args)
            .env("DROPSHIP_UPLOADER", "operator-suite")
            .env("DROPSHIP_POLL_INTERVAL_MS", "100")
            .stdin(Stdio::null());
        cmd
    }

    /// `bundle-and-upload ARGS` in this repository.
    fn command(&self, args: &[&str]) -> Command {
        Self::prepared(self.repo.bundler(), args)
    }

    /// `dropship ARGS` in this repository.
    fn dropship_command(&self, args: &[&str]) -> Command {
        Self::prepared(self.repo.dropship(), args)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run bundle-and-upload")
    }

    fn dropship(&self, args: &[&str]) -> Output {
        self.dropship_command(args).output().expect("run dropship")
    }

    fn spawn_command(mut cmd: Command) -> Child {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    }

    fn spawn(&self, args: &[&str]) -> Child {
        Self::spawn_command(self.command(args))
    }

    fn spawn_dropship(&self, args: &[&str]) -> Child {
        Self::spawn_command(self.dropship_command(args))
    }

    /// Uploads HEAD; returns the new version id.
    fn upload(&self) -> String {
        let out = self.run(&["--json"]);
        assert_success(&out);
        json(&out)["version_id"]
            .as_str()
            .expect("version_id")
            .to_string()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}", text(&out.stdout)))
}

fn release() -> ReleaseKey {
    ReleaseKey::new(APP, ENV).expect("valid names")
}

fn record(
    bucket: &str,
    version: &str,
    outcome: Outcome,
    commands: &[(&str, Vec<String>)],
) -> DeployRecord {
    let event = EventFacts {
        event_id: Some("event-1".into()),
        event_time: Some("2026-11-23T09:00:00Z".into()),
        reason: Some("PutObject".into()),
        sequencer: Some("0055AED6DCD90281E5".into()),
        ..EventFacts::new(Trigger::Event)
    };
    DeployRecord {
        reason: (outcome == Outcome::Rejected)
            .then(|| "tar entry \"../evil\" escapes the tree".to_string()),
        targets: commands.iter().flat_map(|(_, ids)| ids.clone()).collect(),
        commands: commands
            .iter()
            .map(|(c, ids)| CommandBatch {
                command_id: c.to_string(),
                instance_ids: ids.clone(),
                purpose: Default::default(),
            })
            .collect(),
        updated_at: "2026-11-23T09:00:02Z".into(),
        attempts: 1,
        ..DeployRecord::new(
            bucket,
            &release(),
            version,
            outcome,
            event,
            "2026-11-23T09:00:01Z",
        )
    }
}

async fn put_pointer(s3: &aws_sdk_s3::Client, bucket: &str, version: &str) {
    let pointer = LatestPointer::new(
        &release(),
        version,
        "0055AED6DCD90281E5",
        None,
        "2026-11-23T09:00:02Z",
    );
    s3.put_object()
        .bucket(bucket)
        .key(LatestPointer::s3_key(&release()))
        .body(ByteStream::from(pointer.to_bytes()))
        .send()
        .await
        .expect("write latest pointer");
}

/// Every version id and delete marker id of the release key (what "nothing written" compares).
async fn history(s3: &aws_sdk_s3::Client, bucket: &str) -> (Vec<String>, Vec<String>) {
    let key = release().object_key();
    let out = s3
        .list_object_versions()
        .bucket(bucket)
        .prefix(&key)
        .send()
        .await
        .expect("list versions");
    let versions = moto::versions_of(s3, bucket, &key).await;
    let markers = out
        .delete_markers()
        .iter()
        .filter(|m| m.key() == Some(key.as_str()))
        .filter_map(|m| m.version_id().map(str::to_string))
        .collect();
    (versions, markers)
}

/// Two running instances and an SSM command sent to them; returns (command id, instance ids).
async fn sent_command() -> (String, Vec<String>) {
    let ec2 = moto::ec2().await;
    let out = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .instance_type(InstanceType::T3Micro)
        .min_count(2)
        .max_count(2)
        .send()
        .await
        .expect("run instances");
    let ids: Vec<String> = out
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    let ssm = moto::ssm().await;
    // The deployer's own command document, created as infra/ creates it.
    let document = moto::unique("dropship-deploy");
    ssm.create_document()
        .name(&document)
        .content(dropship_tests::local_ssm::DEPLOY_DOCUMENT_CONTENT)
        .document_type(aws_sdk_ssm::types::DocumentType::Command)
        .document_format(aws_sdk_ssm::types::DocumentFormat::Json)
        .send()
        .await
        .expect("create the command document in moto");
    let sent = ssm
        .send_command()
        .document_name(&document)
        .set_instance_ids(Some(ids.clone()))
        .parameters("commands", vec!["true".to_string()])
        .send()
        .await
        .expect("send command");
    let command_id = sent
        .command()
        .and_then(|c| c.command_id())
        .expect("command id")
        .to_string();
    (command_id, ids)
}

/// Waits until the key has more than `before` versions; returns the newest.
async fn next_version(s3: &aws_sdk_s3::Client, bucket: &str, before: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let versions = moto::versions_of(s3, bucket, &release().object_key()).await;
        if versions.len() > before {
            return versions[0].clone();
        }
        assert!(Instant::now() < deadline, "no new version appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for a spawned command and returns its output.
async fn finish(mut child: Child) -> Output {
    tokio::task::spawn_blocking(move || {
        let status = child.wait().expect("wait for bundle-and-upload");
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_end(&mut stdout)
            .expect("read stdout");
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_end(&mut stderr)
            .expect("read stderr");
        Output {
            status,
            stdout,
            stderr,
        }
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_lists_uploads_with_branch_commit_uploader_and_deploy_outcome() {
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "ops-versions", true).await;
    let repo = AppRepo::new(&bucket);
    let c1 = repo.commit("one");
    let v1 = repo.upload();
    repo.git(&["checkout", "-q", "-b", "feature/$(reboot)"]);
    let c2 = repo.commit("two");
    let v2 = repo.upload();
    let c3 = repo.commit("three");
    let v3 = repo.upload();
    records::put(
        &s3,
        &bucket,
        &record(
            &bucket,
            &v1,
            Outcome::Dispatched,
            &[("cmd-1", vec!["i-01".into(), "i-02".into()])],
        ),
    )
    .await;
    records::put(&s3, &bucket, &record(&bucket, &v2, Outcome::Rejected, &[])).await;
    put_pointer(&s3, &bucket, &v1).await;

    let out = repo.dropship(&["releases", "--json"]);
    assert_success(&out);
    let reports = json(&out);
    assert_eq!(reports.as_array().map(Vec::len), Some(1), "{reports}");
    let report = &reports[0];
    assert_eq!(report["app"], APP);
    assert_eq!(report["env"], ENV);
    assert_eq!(report["key"], release().object_key());
    let rows = report["versions"].as_array().expect("versions");
    let ids: Vec<&str> = rows
        .iter()
        .map(|r| r["version_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [v3.as_str(), v2.as_str(), v1.as_str()], "newest first");
    assert_eq!(rows[0]["is_latest"], true);
    assert_eq!(rows[2]["is_latest"], false);
    for (row, commit, branch) in [
        (&rows[0], &c3, "feature/$(reboot)"),
        (&rows[1], &c2, "feature/$(reboot)"),
        (&rows[2], &c1, "main"),
    ] {
        assert_eq!(row["metadata"]["commit"], commit.as_str());
        assert_eq!(row["metadata"]["branch"], branch);
        assert_eq!(row["metadata"]["uploader"], "operator-suite");
        assert!(row["modified"].as_str().unwrap().ends_with('Z'), "{row}");
    }
    assert!(
        rows[0]["deploy"].get("outcome").is_none(),
        "no record for v3: {}",
        rows[0]
    );
    assert_eq!(rows[1]["deploy"]["outcome"], "rejected");
    assert!(rows[1]["deploy"]["reason"]
        .as_str()
        .unwrap()
        .contains("../evil"));
    assert_eq!(rows[2]["deploy"]["outcome"], "dispatched");
    assert_eq!(rows[2]["deploy"]["hosts"], 2);
    assert_eq!(rows[2]["deploy"]["newest_dispatched"], true);
    assert_eq!(rows[1]["deploy"]["newest_dispatched"], false);

    // The old spelling keeps working and says where it moved.
    let out = repo.run(&["versions"]);
    assert_success(&out);
    assert!(
        text(&out.stderr).contains("moved to `dropship releases`"),
        "{}",
        text(&out.stderr)
    );
    let table = text(&out.stdout);
    let line = |v: &str| {
        table
            .lines()
            .find(|l| l.contains(v))
            .unwrap_or_else(|| panic!("{v} missing:\n{table}"))
            .to_string()
    };
    assert!(
        line(&v3).starts_with('*')
            && line(&v3).contains(&c3[..12])
            && line(&v3).contains("no record"),
        "{table}"
    );
    assert!(
        line(&v2).contains("rejected") && line(&v2).contains(&c2[..12]),
        "{table}"
    );
    assert!(
        line(&v1).contains("dispatched to 2 host(s)") && line(&v1).contains("main"),
        "{table}"
    );

    let out = repo.dropship(&["versions", "--json", "--limit", "2"]);
    assert_success(&out);
    let limited = json(&out);
    assert_eq!(limited[0]["versions"].as_array().unwrap().len(), 2);
    assert_eq!(limited[0]["omitted"], 1);

    // --all-envs: one report per environment dropship.toml lists.
    repo.write(
        "dropship.toml",
        &format!(
            "app = \"{APP}\"\nbucket = \"{bucket}\"\nenvironments = [\"{ENV}\", \"staging\"]\n"
        ),
    );
    let out = repo.dropship(&["releases", "--json", "--all-envs"]);
    assert_success(&out);
    let all = json(&out);
    let envs: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["env"].as_str().unwrap())
        .collect();
    assert_eq!(envs, [ENV, "staging"]);
    assert_eq!(all[0]["versions"].as_array().unwrap().len(), 3);
    assert_eq!(all[1]["versions"].as_array().unwrap().len(), 0);
    assert_eq!(all[1]["key"], "releases/shop/staging.tar.gz");

    // Outside the repository, flags alone name the target.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(bins::binary("dropship"))
        .args([
            "releases", "--json", "--app", APP, "--env", ENV, "--bucket", &bucket,
        ])
        .current_dir(elsewhere.path())
        .env_remove("DROPSHIP_ENV")
        .output()
        .unwrap();
    assert_success(&out);
    assert_eq!(json(&out)[0]["versions"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_copies_a_version_with_identical_bytes_and_restored_from() {
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "ops-restore", true).await;
    let repo = AppRepo::new(&bucket);
    let c1 = repo.commit("one");
    let v1 = repo.upload();
    repo.commit("two");
    let v2 = repo.upload();

    let out = repo.dropship(&["rollback", &v1, "--yes", "--json"]);
    assert_success(&out);
    let restored = json(&out);
    let v3 = restored["version_id"]
        .as_str()
        .expect("new version id")
        .to_string();
    assert_eq!(restored["restored_from"], v1.as_str());
    assert_eq!(restored["commit"], c1.as_str());

    let (versions, _) = history(&s3, &bucket).await;
    assert_eq!(
        versions,
        [v3.clone(), v2.clone(), v1.clone()],
        "one new version on top"
    );
    let (old_bytes, old_meta) = get_version(&s3, &bucket, &release(), &v1).await;
    let (new_bytes, new_meta) = get_version(&s3, &bucket, &release(), &v3).await;
    assert_eq!(new_bytes, old_bytes, "identical bytes");
    assert_eq!(new_meta.restored_from.as_deref(), Some(v1.as_str()));
    assert_eq!(
        ObjectMetadata {
            restored_from: None,
            promoted_from: None,
            ..new_meta.clone()
        },
        old_meta
    );
    let current = s3
        .head_object()
        .bucket(&bucket)
        .key(release().object_key())
        .send()
        .await
        .unwrap();
    assert_eq!(current.version_id(), Some(v3.as_str()));
    assert_eq!(current.content_type(), Some("application/gzip"));

    // `releases` shows where it came from.
    let out = repo.dropship(&["releases"]);
    assert_success(&out);
    let table = text(&out.stdout);
    assert!(
        table.contains(&format!("restored from {}", &v1[..v1.len().min(15)])),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_refuses_unknown_versions_delete_markers_and_missing_consent_writing_nothing() {
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "ops-refuse", true).await;
    let repo = AppRepo::new(&bucket);
    repo.commit("one");
    let v1 = repo.upload();
    s3.delete_object()
        .bucket(&bucket)
        .key(release().object_key())
        .send()
        .await
        .expect("delete");
    let before = history(&s3, &bucket).await;
    assert_eq!(before.0, std::slice::from_ref(&v1));
    let marker = before.1.first().expect("a delete marker").clone();

    let out = repo.dropship(&["rollback", &marker, "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("delete marker")
            && err.contains(&marker)
            && err.contains("nothing was written"),
        "{err}"
    );

    let out = repo.dropship(&["restore", "no-such-version", "--yes"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("\"no-such-version\"")
            && err.contains("does not exist")
            && err.contains("versions"),
        "{err}"
    );

    // A real version, but no terminal to confirm on and no --yes.
    let out = repo.run(&["restore", &v1]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("not confirmed") && err.contains("--yes"),
        "{err}"
    );
    assert!(err.contains(&v1), "shows what would be restored: {err}");

    assert_eq!(history(&s3, &bucket).await, before, "nothing was written");

    // With consent the deleted key comes back.
    let out = repo.dropship(&["rollback", &v1, "--yes", "--json"]);
    assert_success(&out);
    assert_eq!(history(&s3, &bucket).await.0.len(), 2);
}

/// A repository deploying `APP` to staging and production (staging by default).
fn two_env_repo(bucket: &str) -> GitRepo {
    let repo = GitRepo::new();
    repo.write_config(APP, bucket, "")
        .write(
            "compose.yaml",
            "services:\n  web:\n    image: nginx:alpine\n",
        )
        .write("app.txt", "one");
    repo.commit("release one");
    repo
}

/// `bundle-and-upload --json ARGS` in `repo` as CI runs it (`CI=true`: source=ci).
fn ci_upload(repo: &GitRepo, args: &[&str]) -> Output {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    AppRepo::prepared(repo.bundler(), &all)
        .env("CI", "true")
        .output()
        .expect("run bundle-and-upload")
}

/// `dropship ARGS` in `repo`: stdin closed, fast polling.
fn dropship_in(repo: &GitRepo, args: &[&str]) -> Output {
    AppRepo::prepared(repo.dropship(), args)
        .output()
        .expect("run dropship")
}

fn staging() -> ReleaseKey {
    ReleaseKey::new(APP, "staging").expect("valid names")
}

fn production() -> ReleaseKey {
    ReleaseKey::new(APP, "production").expect("valid names")
}

/// Every version id of `release`'s key, newest first.
async fn versions(s3: &aws_sdk_s3::Client, bucket: &str, release: &ReleaseKey) -> Vec<String> {
    moto::versions_of(s3, bucket, &release.object_key()).await
}

async fn get_version(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    release: &ReleaseKey,
    version: &str,
) -> (Vec<u8>, ObjectMetadata) {
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(release.object_key())
        .version_id(version)
        .send()
        .await
        .expect("get version");
    let meta = ObjectMetadata::from_headers(&out.metadata().cloned().unwrap_or_default())
        .expect("valid metadata");
    let bytes = out
        .body
        .collect()
        .await
        .expect("body")
        .into_bytes()
        .to_vec();
    (bytes, meta)
}

#[tokio::test(flavor = "multi_thread")]
async fn promote_copies_a_version_deployed_on_every_staging_host_to_production_byte_for_byte() {
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "ops-promote", true).await;
    let repo = two_env_repo(&bucket);
    let up = ci_upload(&repo, &[]);
    assert_success(&up);
    let staged = json(&up)["version_id"].as_str().unwrap().to_string();
    let hosts = vec!["i-0staging1".to_string(), "i-0staging2".to_string()];
    records::put(
        &s3,
        &bucket,
        &records::settled(&bucket, &staging(), &staged, &hosts, FleetOutcome::Deployed),
    )
    .await;

    let out = dropship_in(
        &repo,
        &[
            "promote",
            "staging",
            "production",
            "--version",
            &staged,
            "--json",
        ],
    );
    assert_success(&out);
    assert!(
        !text(&out.stderr).contains("WARNING"),
        "{}",
        text(&out.stderr)
    );
    let promoted = json(&out);
    let prod_version = promoted["version_id"].as_str().unwrap().to_string();
    assert_eq!(promoted["from_env"], "staging");
    assert_eq!(promoted["to_env"], "production");
    assert_eq!(promoted["source_version_id"], staged.as_str());
    assert_eq!(promoted["source_verdict"], "succeeded");
    assert_eq!(promoted["forced"], false);
    assert_eq!(promoted["key"], production().object_key());

    assert_eq!(
        versions(&s3, &bucket, &production()).await,
        std::slice::from_ref(&prod_version)
    );
    let (staged_bytes, staged_meta) = get_version(&s3, &bucket, &staging(), &staged).await;
    let (prod_bytes, prod_meta) = get_version(&s3, &bucket, &production(), &prod_version).await;
    let sha = |b: &[u8]| hex::encode(Sha256::digest(b));
    assert_eq!(sha(&prod_bytes), sha(&staged_bytes), "same bytes");
    assert_eq!(prod_meta.sha256, sha(&prod_bytes));
    assert_eq!(promoted["sha256"], prod_meta.sha256.as_str());
    assert_eq!(prod_meta.env, "production");
    assert_eq!(
        prod_meta.promoted_from,
        Some(PromotedFrom {
            env: "staging".into(),
            version_id: staged.clone()
        })
    );
    assert_eq!(
        ObjectMetadata {
            env: "staging".into(),
            promoted_from: None,
            ..prod_meta
        },
        staged_meta
    );
    // Staging is untouched.
    assert_eq!(
        versions(&s3, &bucket, &staging()).await,
        std::slice::from_ref(&staged)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn promote_refuses_a_version_not_deployed_everywhere_unless_forced_writing_nothing() {
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "ops-promote-refuse", true).await;
    let repo = two_env_repo(&bucket);
    let up = ci_upload(&repo, &[]);
    assert_success(&up);
    let rolled_back = json(&up)["version_id"].as_str().unwrap().to_string();
    let hosts = vec!["i-0staging1".to_string()];
    records::put(
        &s3,
        &bucket,
        &records::settled(
            &bucket,
            &staging(),
            &rolled_back,
            &hosts,
            FleetOutcome::RolledBack,
        ),
    )
    .await;

    // Rolled back in staging: refused, naming the verdict and --force.
    let out = dropship_in(&repo, &["promote", "staging", "production"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("`rolled_back`")
            && err.contains("--force")
            && err.contains(&rolled_back)
            && err.contains("nothing was written"),
        "{err}"
    );
    // Not deployed yet (no record): refused as pending.
    repo.write("app.txt", "two");
    repo.commit("release two");
    let up = ci_upload(&repo, &[]);
    assert_success(&up);
    let pending = json(&up)["version_id"].as_str().unwrap().to_string();
    let out = dropship_in(&repo, &["promote", "staging", "production", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("`pending`"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "no JSON for a refusal");
    // One environment twice, an unknown environment, an unknown version.
    for (args, needle) in [
        (&["promote", "staging", "staging"][..], "to itself"),
        (
            &["promote", "staging", "prod"][..],
            "\"prod\" is not listed",
        ),
        (
            &["promote", "staging", "production", "--version", "nope"][..],
            "does not exist",
        ),
    ] {
        let out = dropship_in(&repo, args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    assert!(
        versions(&s3, &bucket, &production()).await.is_empty(),
        "nothing was written"
    );

    // --force promotes the rolled-back version, loudly.
    let out = dropship_in(
        &repo,
        &[
            "promote",
            "staging",
            "production",
            "--version",
            &rolled_back,
            "--force",
            "--json",
        ],
    );
    assert_success(&out);
    let err = text(&out.stderr);
    assert!(
        err.contains("WARNING") && err.contains("rolled_back") && err.contains(&rolled_back),
        "{err}"
    );
    let promoted = json(&out);
    assert_eq!(promoted["forced"], true);
    assert_eq!(promoted["source_verdict"], "rolled_back");
    assert_eq!(promoted["source_version_id"], rolled_back.as_str());
    assert_eq!(versions(&s3, &bucket, &production()).await.len(), 1);
    assert_ne!(pending, rolled_back);
}

#[tokio::test(flavor = "multi_thread")]
async fn promote_names_its_version_off_a_terminal_and_refuses_local_or_dirty_sources_unless_forced()
{
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "ops-promote-trust", true).await;
    let repo = two_env_repo(&bucket);
    let settle = |version: String| {
        let (s3, bucket) = (s3.clone(), bucket.clone());
        async move {
            let hosts = vec!["i-0staging1".to_string()];
            records::put(
                &s3,
                &bucket,
                &records::settled(
                    &bucket,
                    &staging(),
                    &version,
                    &hosts,
                    FleetOutcome::Deployed,
                ),
            )
            .await;
        }
    };

    // A developer's upload from their machine (no CI): deployed everywhere in staging, still
    // not promoted without --force.
    let up = AppRepo::prepared(repo.bundler(), &["--json"])
        .output()
        .unwrap();
    assert_success(&up);
    let local = json(&up)["version_id"].as_str().unwrap().to_string();
    settle(local.clone()).await;
    let out = dropship_in(
        &repo,
        &["promote", "staging", "production", "--version", &local],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("source=local")
            && err.contains("--force")
            && err.contains(&local)
            && err.contains("nothing was written"),
        "{err}"
    );

    // A dirty tree, even from CI: refused the same way.
    repo.write("app.txt", "uncommitted");
    let up = ci_upload(&repo, &["--allow-dirty"]);
    assert_success(&up);
    let dirty = json(&up)["version_id"].as_str().unwrap().to_string();
    settle(dirty.clone()).await;
    let out = dropship_in(
        &repo,
        &["promote", "staging", "production", "--version", &dirty],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("dirty=true"),
        "{}",
        text(&out.stderr)
    );

    // A CI build of a commit, deployed everywhere: without --version, off a terminal, the
    // command shows what it would copy and asks for the version instead of copying it.
    repo.write("app.txt", "two");
    repo.commit("release \x1b]0;pwned\x07two");
    let up = ci_upload(&repo, &[]);
    assert_success(&up);
    let good = json(&up)["version_id"].as_str().unwrap().to_string();
    settle(good.clone()).await;
    let out = dropship_in(&repo, &["promote", "staging", "production"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("--version {good}"))
            && err.contains("not running on a terminal")
            && err.contains("source=ci")
            && err.contains("nothing was written"),
        "{err}"
    );
    // The commit message is shown, its escape sequence neutralised.
    assert!(err.contains("\\x1b]0;pwned\\x07two"), "{err}");
    assert!(
        !out.stderr.contains(&0x1b),
        "raw ESC reached the terminal: {err:?}"
    );
    assert!(
        versions(&s3, &bucket, &production()).await.is_empty(),
        "nothing was written"
    );

    // Named, it is promoted; --force takes the local one, loudly.
    let out = dropship_in(
        &repo,
        &[
            "promote",
            "staging",
            "production",
            "--version",
            &good,
            "--json",
        ],
    );
    assert_success(&out);
    assert_eq!(json(&out)["source_version_id"], good.as_str());
    let out = dropship_in(
        &repo,
        &[
            "promote",
            "staging",
            "production",
            "--version",
            &local,
            "--force",
            "--json",
        ],
    );
    assert_success(&out);
    let err = text(&out.stderr);
    assert!(
        err.contains("WARNING") && err.contains("source=local"),
        "{err}"
    );
    assert_eq!(versions(&s3, &bucket, &production()).await.len(), 2);
}

/// `doctor`'s upload check sends a PutObject that must never store anything: besides an
/// `If-Match` no object has, a `Content-MD5` that is not its body's, so a service that ignored
/// the precondition would still refuse the body; S3 answering `BadDigest` (it checks bodies only
/// of requests it authorised) counts as "may put".
#[tokio::test(flavor = "multi_thread")]
async fn doctor_upload_probe_carries_a_wrong_content_md5_and_reads_bad_digest_as_allowed() {
    use dropship_tests::faults::{Fault, FaultProxy};
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "ops-doctor-md5", true).await;
    s3.put_bucket_notification_configuration()
        .bucket(&bucket)
        .notification_configuration(
            aws_sdk_s3::types::NotificationConfiguration::builder()
                .event_bridge_configuration(
                    aws_sdk_s3::types::EventBridgeConfiguration::builder().build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("notifications to EventBridge");
    let app = AppRepo::new(&bucket);
    app.repo.commit("one");
    let proxy = FaultProxy::start(
        &std::env::var("AWS_ENDPOINT_URL").expect("moto endpoint"),
        vec![Fault {
            method: "PUT",
            target_contains: "/releases/",
            status: 400,
            code: "BadDigest",
        }],
    );
    let out = app
        .dropship_command(&["doctor", "--json"])
        .env("AWS_ENDPOINT_URL_S3", proxy.endpoint())
        .output()
        .expect("run dropship");
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json: {e}: {}", text(&out.stderr)));
    let puts = proxy.headers_of("PUT ");
    assert_eq!(
        puts.len(),
        1,
        "one probe: {:?}\n{}{}",
        proxy.seen(),
        text(&out.stdout),
        text(&out.stderr)
    );
    let header = |name: &str| {
        puts[0]
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert!(header("if-match").is_some(), "{:?}", puts[0]);
    let md5 = header("content-md5").unwrap_or_else(|| panic!("no Content-MD5: {:?}", puts[0]));
    // MD5 of the empty body, which a conforming service would accept.
    assert_ne!(md5, "1B2M2Y8AsgTpgAmY7PhCfg==");
    assert_eq!(md5.len(), 24, "a base64 MD5: {md5}");
    let upload = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["check"] == "upload")
        .unwrap_or_else(|| panic!("no upload finding: {report:#}"));
    assert_ne!(upload["level"], "fail", "{upload:#}");
    assert!(
        upload["message"]
            .as_str()
            .unwrap_or_default()
            .contains("may put"),
        "{upload:#}"
    );
    assert_eq!(proxy.injected(), 1);
    assert!(versions(&s3, &bucket, &ReleaseKey::new(APP, ENV).unwrap())
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reads_each_invocation_the_record_names() {
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "ops-status", true).await;
    let repo = AppRepo::new(&bucket);
    let c1 = repo.commit("one");
    let v1 = repo.upload();
    let (command, ids) = sent_command().await;
    // A second batch names an instance SSM has no invocation for: the "does not exist yet"
    // answer must read as dispatched, not as an error or a success.
    let ghost = "i-0000000000000dead".to_string();
    records::put(
        &s3,
        &bucket,
        &record(
            &bucket,
            &v1,
            Outcome::Dispatched,
            &[(&command, ids.clone()), (&command, vec![ghost.clone()])],
        ),
    )
    .await;

    let out = repo.dropship(&["status", "--json", &v1]);
    assert_success(&out);
    let status = json(&out);
    assert_eq!(status["version_id"], v1.as_str());
    assert_eq!(status["commit"], c1.as_str());
    assert_eq!(status["phase"], "dispatched");
    let hosts = status["hosts"].as_array().expect("hosts");
    assert_eq!(hosts.len(), 3);
    for (host, id) in hosts.iter().zip(&ids) {
        assert_eq!(host["instance_id"], id.as_str());
        assert_eq!(host["command_id"], command.as_str());
        assert_eq!(host["state"], "success", "{host}");
        assert_eq!(host["exit_code"], 0);
    }
    assert_eq!(hosts[2]["instance_id"], ghost.as_str());
    assert_eq!(hosts[2]["state"], "dispatched");
    assert!(
        hosts[2]["detail"]
            .as_str()
            .unwrap()
            .contains("InvocationDoesNotExist"),
        "{}",
        hosts[2]
    );
    assert_eq!(status["verdict"], "pending", "one host has not reported");

    // Default version: the key's current one. Text output lists every host.
    let out = repo.run(&["status"]);
    assert_success(&out);
    let report = text(&out.stdout);
    assert!(
        report.contains(&v1) && report.contains(&ghost) && report.contains(&ids[0]),
        "{report}"
    );
    assert!(report.contains("verdict: pending"), "{report}");

    // A newer upload without a record yet, and a version that does not exist.
    repo.commit("two");
    let v2 = repo.upload();
    let out = repo.dropship(&["status", "--json"]);
    assert_success(&out);
    let status = json(&out);
    assert_eq!(status["version_id"], v2.as_str());
    assert_eq!(status["phase"], "no_record");
    let out = repo.dropship(&["status", "missing-version"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );

    // A rejected version: nothing reached a host, no SSM reads needed.
    records::put(&s3, &bucket, &record(&bucket, &v2, Outcome::Rejected, &[])).await;
    let out = repo.dropship(&["status"]);
    assert_success(&out);
    let report = text(&out.stdout);
    assert!(
        report.contains("rejected")
            && report.contains("../evil")
            && report.contains("verdict: refused"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_follows_the_deploy_and_the_exit_code_reflects_it() {
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "ops-wait", true).await;
    let repo = AppRepo::new(&bucket);

    // Dispatched to two hosts that succeed ⇒ 0, with the per-host result in the JSON.
    repo.commit("one");
    let child = repo.spawn(&["--json", "--wait", "--wait-timeout", "60"]);
    let v1 = next_version(&s3, &bucket, 0).await;
    let (command, ids) = sent_command().await;
    records::put(
        &s3,
        &bucket,
        &record(&bucket, &v1, Outcome::Dispatching, &[]),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    records::put(
        &s3,
        &bucket,
        &record(
            &bucket,
            &v1,
            Outcome::Dispatched,
            &[(&command, ids.clone())],
        ),
    )
    .await;
    let out = finish(child).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let summary = json(&out);
    assert_eq!(summary["version_id"], v1.as_str());
    assert_eq!(summary["deploy"]["status"]["verdict"], "succeeded");
    assert_eq!(summary["deploy"]["timed_out"], false);
    assert_eq!(
        summary["deploy"]["status"]["hosts"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Rejected by the deployer ⇒ 7; the text report says why.
    repo.commit("two");
    let child = repo.spawn(&["--wait", "--wait-timeout", "60"]);
    let v2 = next_version(&s3, &bucket, 1).await;
    records::put(&s3, &bucket, &record(&bucket, &v2, Outcome::Rejected, &[])).await;
    let out = finish(child).await;
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("../evil"),
        "{}",
        text(&out.stdout)
    );

    // Nobody processes the upload ⇒ 11 after --wait-timeout, and the upload itself stands.
    let c3 = repo.commit("three");
    let started = Instant::now();
    let out = repo.run(&["--wait", "--wait-timeout", "2s"]);
    assert_eq!(out.status.code(), Some(11), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        text(&out.stdout).contains(&format!("(commit {})", &c3[..12])),
        "{}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).contains("dropship status"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        moto::versions_of(&s3, &bucket, &release().object_key())
            .await
            .len(),
        3
    );

    // rollback --wait follows the new version the copy created.
    let child = repo.spawn_dropship(&[
        "rollback",
        &v1,
        "--yes",
        "--json",
        "--wait",
        "--wait-timeout",
        "60",
    ]);
    let v4 = next_version(&s3, &bucket, 3).await;
    records::put(
        &s3,
        &bucket,
        &record(&bucket, &v4, Outcome::Dispatched, &[(&command, ids)]),
    )
    .await;
    let out = finish(child).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let restored = json(&out);
    assert_eq!(restored["version_id"], v4.as_str());
    assert_eq!(restored["restored_from"], v1.as_str());
    assert_eq!(restored["deploy"]["status"]["verdict"], "succeeded");

    // --wait with --dry-run is a usage error, before anything happens.
    let out = repo.run(&["--wait", "--dry-run"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

fn help(binary: &str, args: &[&str]) -> String {
    let out = Command::new(bins::binary(binary))
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("CLICOLOR_FORCE")
        .output()
        .unwrap();
    assert_success(&out);
    text(&out.stdout)
}

#[test]
fn bundle_and_upload_help_shows_the_upload_wait_and_every_exit_code() {
    let help = help("bundle-and-upload", &["--help"]);
    for needle in [
        "--wait",
        "--wait-timeout",
        "--output",
        "--dry-run",
        "Examples:",
        "dropship rollback",
        "  8  --wait: rolled back: a host failed",
        "  11 --wait: --wait-timeout passed first",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    assert!(
        !help.contains("Commands:"),
        "the moved operator commands are hidden:\n{help}"
    );
}

#[test]
fn dropship_help_examples_version_completions_and_no_color() {
    let top = help("dropship", &["--help"]);
    for needle in [
        "releases",
        "status",
        "rollback",
        "completions",
        "Examples:",
        "  6  transient AWS failure",
        "  10 --wait: rollback failed",
    ] {
        assert!(top.contains(needle), "--help lacks {needle:?}:\n{top}");
    }
    assert!(help("dropship", &["rollback", "--help"]).contains("--yes"));
    for read in ["releases", "status"] {
        let h = help("dropship", &[read, "--help"]);
        assert!(
            h.contains("--json") && h.contains("Examples:"),
            "{read}:\n{h}"
        );
    }
    // `--version` names the commit it was built from (or `unknown` outside a checkout).
    let version = help("dropship", &["--version"]);
    let commit = version
        .trim()
        .strip_prefix("dropship 0.1.0 (commit ")
        .and_then(|v| v.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected --version: {version}"));
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{version}"
    );
    assert_eq!(
        help("bundle-and-upload", &["--version"]).trim(),
        version.trim().replace("dropship", "bundle-and-upload")
    );
    let bash = help("dropship", &["completions", "bash"]);
    assert!(
        bash.contains("_dropship") && bash.contains("rollback"),
        "{bash}"
    );
    // Colour only where allowed: forced, clap styles the help; NO_COLOR wins over that.
    let styled = |no_color: bool| {
        let mut cmd = Command::new(bins::binary("dropship"));
        cmd.arg("--help").env("CLICOLOR_FORCE", "1");
        if no_color {
            cmd.env("NO_COLOR", "1");
        } else {
            cmd.env_remove("NO_COLOR");
        }
        text(&cmd.output().unwrap().stdout).contains('\u{1b}')
    };
    assert!(styled(false), "CLICOLOR_FORCE colours the help");
    assert!(!styled(true), "NO_COLOR removes every colour");
}
