//! `bundle-and-upload` against moto server over HTTP with the real AWS SDK: objects land as
//! new versions with the metadata contract, multipart works and cleans up after itself, and
//! every refusal or failure leaves the bucket exactly as it was.

use std::collections::HashMap;
use std::fs;

use aws_sdk_s3::types::ChecksumMode;
use dropship_contract::metadata::ObjectMetadata;
use dropship_tests::faults::{Fault, FaultProxy};
use dropship_tests::moto;
use dropship_tests::repo::{run, temp_file, Finished, GitRepo};
use sha2::{Digest, Sha256};

const KEY: &str = "releases/shop/staging.tar.gz";

/// A small committed app configured for `bucket`.
fn app_repo(bucket: &str) -> GitRepo {
    let repo = GitRepo::new();
    repo.write_config("shop", bucket, "")
        .write("compose.yaml", "services:\n  web:\n    image: nginx\n")
        .write("app/index.html", "<h1>v1</h1>\n");
    repo.commit("v1");
    repo
}

fn upload(repo: &GitRepo, extra: &[&str]) -> Finished {
    run(repo
        .bundler()
        .env("AWS_ENDPOINT_URL", moto::endpoint())
        .arg("--json")
        .args(extra))
}

async fn get_version(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    version: &str,
) -> (Vec<u8>, HashMap<String, String>) {
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(KEY)
        .version_id(version)
        .send()
        .await
        .expect("GetObject by version id");
    let meta = out.metadata().cloned().unwrap_or_default();
    let bytes = out.body.collect().await.unwrap().into_bytes().to_vec();
    (bytes, meta)
}

#[tokio::test(flavor = "multi_thread")]
async fn upload_creates_a_version_whose_bytes_and_metadata_match_the_bundle() {
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "up", true).await;
    let repo = app_repo(&bucket);
    let done = upload(&repo, &[]).success();
    let summary = done.json();
    let version = summary["version_id"]
        .as_str()
        .expect("version id in summary")
        .to_string();
    assert_eq!(summary["key"], KEY);
    assert_eq!(summary["multipart"], false);

    // The same commit bundled locally is byte-identical to what S3 holds.
    let (_keep, local) = temp_file("local.tar.gz");
    run(repo.bundler().arg("--output").arg(&local)).success();
    let local = fs::read(&local).unwrap();
    let (bytes, meta) = get_version(&s3, &bucket, &version).await;
    assert_eq!(bytes, local);
    let sha = hex::encode(Sha256::digest(&bytes));
    assert_eq!(summary["sha256"], sha);

    let head = s3
        .head_object()
        .bucket(&bucket)
        .key(KEY)
        .version_id(&version)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(bytes.len() as i64));
    let decoded = ObjectMetadata::from_headers(&meta).expect("metadata satisfies the contract");
    assert_eq!(decoded.app, "shop");
    assert_eq!(decoded.env, "staging");
    assert_eq!(decoded.commit, repo.head());
    assert_eq!(decoded.branch, "main");
    assert_eq!(decoded.sha256, sha);
    assert!(!decoded.dirty);
    assert_eq!(decoded.uploader, "tester@example.com");
    assert_eq!(decoded.message, "v1");
    assert_eq!(decoded.restored_from, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_uploads_make_two_versions_of_one_key() {
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "two", true).await;
    let repo = app_repo(&bucket);
    let first = upload(&repo, &[]).success().json();
    repo.write("app/index.html", "<h1>v2</h1>\n");
    let second_commit = repo.commit("v2");
    let second = upload(&repo, &[]).success().json();
    assert_ne!(first["version_id"], second["version_id"]);

    let versions = moto::versions_of(&s3, &bucket, KEY).await;
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(versions.contains(&first["version_id"].as_str().unwrap().to_string()));
    // Both stay retrievable; the newest is current.
    let (_, meta) = get_version(&s3, &bucket, first["version_id"].as_str().unwrap()).await;
    assert_ne!(
        ObjectMetadata::from_headers(&meta).unwrap().commit,
        second_commit
    );
    let current = s3
        .head_object()
        .bucket(&bucket)
        .key(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(current.version_id(), second["version_id"].as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_and_unicode_branch_names_round_trip_through_metadata() {
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "branches", true).await;
    let repo = app_repo(&bucket);
    for branch in [
        "feature/$(reboot)",
        "it's",
        "a|b&c",
        "ünïcødé/ブランチ",
        "semi;colon `tick` \"quote\" 100%",
    ] {
        let summary = upload(&repo, &["--branch", branch]).success().json();
        let (_, meta) = get_version(&s3, &bucket, summary["version_id"].as_str().unwrap()).await;
        for value in meta.values() {
            assert!(
                value.is_ascii(),
                "S3 metadata values are ASCII on the wire: {value:?}"
            );
        }
        let decoded = ObjectMetadata::from_headers(&meta).unwrap();
        assert_eq!(decoded.branch, branch);
    }
}

/// A deterministic, incompressible payload (xorshift), so the bundle exceeds the threshold.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn large_bundles_use_multipart_and_leave_nothing_open() {
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "multi", true).await;
    let repo = app_repo(&bucket);
    repo.write("assets/a.bin", noise(7 << 20, 1))
        .write("assets/b.bin", noise(6 << 20, 2));
    repo.commit("big assets");
    let summary = upload(
        &repo,
        &["--multipart-threshold", "5242880", "--part-size", "5242880"],
    )
    .success()
    .json();
    assert_eq!(summary["multipart"], true);
    let (bytes, meta) = get_version(&s3, &bucket, summary["version_id"].as_str().unwrap()).await;
    assert!(bytes.len() > 10 << 20, "{} bytes", bytes.len());
    let sha = hex::encode(Sha256::digest(&bytes));
    assert_eq!(summary["sha256"], sha);
    assert_eq!(ObjectMetadata::from_headers(&meta).unwrap().sha256, sha);
    let (_keep, local) = temp_file("local.tar.gz");
    run(repo.bundler().arg("--output").arg(&local)).success();
    assert_eq!(
        fs::read(&local).unwrap(),
        bytes,
        "multipart object equals the local bundle"
    );
    assert!(moto::open_multipart_uploads(&s3, &bucket).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unversioned_bucket_is_refused_with_the_fix_and_nothing_written() {
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "plain", false).await;
    let repo = app_repo(&bucket);
    let done = upload(&repo, &[]);
    assert_eq!(done.code, 5, "{done:#?}");
    assert!(done.stderr.contains("versioning"), "{}", done.stderr);
    assert!(
        done.stderr.contains("put-bucket-versioning"),
        "{}",
        done.stderr
    );
    assert!(done.stderr.contains(&bucket), "{}", done.stderr);
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    assert_eq!(listed.key_count(), Some(0));
    assert!(moto::open_multipart_uploads(&s3, &bucket).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_bucket_is_named_with_what_to_do() {
    let repo = app_repo(&moto::unique("missing"));
    let done = upload(&repo, &[]);
    assert_eq!(done.code, 5, "{done:#?}");
    assert!(done.stderr.contains("does not exist"), "{}", done.stderr);
    assert!(done.stderr.contains("infra/"), "{}", done.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_part_aborts_the_upload_leaving_no_version_and_no_open_upload() {
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "fail", true).await;
    let repo = app_repo(&bucket);
    repo.write("assets/a.bin", noise(12 << 20, 3));
    repo.commit("big");
    let proxy = FaultProxy::start(
        &moto::endpoint(),
        vec![Fault {
            method: "PUT",
            target_contains: "partNumber=2",
            status: 500,
            code: "InternalError",
        }],
    );
    let done = run(repo
        .bundler()
        .env("AWS_ENDPOINT_URL", proxy.endpoint())
        .args(["--multipart-threshold", "5242880", "--part-size", "5242880"]));
    // A 5xx is transient: exit 6, "retry", and nothing was left behind to clean up.
    assert_eq!(done.code, 6, "{done:#?}");
    assert!(done.stderr.contains("retry"), "{}", done.stderr);
    assert!(
        proxy.injected() >= 1,
        "the fault was hit: {:?}",
        proxy.seen()
    );
    assert!(
        proxy
            .seen()
            .iter()
            .any(|r| r.starts_with("DELETE ") && r.contains("uploadId=")),
        "AbortMultipartUpload was sent: {:?}",
        proxy.seen()
    );
    assert!(moto::versions_of(&s3, &bucket, KEY).await.is_empty());
    assert!(moto::open_multipart_uploads(&s3, &bucket).await.is_empty());
    assert!(done.stderr.contains("UploadPart"), "{}", done.stderr);
    assert!(
        done.stderr
            .contains("the multipart upload was aborted and no version was created"),
        "{}",
        done.stderr
    );
    assert!(
        !done.stderr.contains("raw: Response"),
        "no SDK debug dump: {}",
        done.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn access_denied_is_reported_as_such_and_nothing_is_written() {
    let s3 = moto::s3().await;
    let bucket = moto::create_bucket(&s3, "denied", true).await;
    let repo = app_repo(&bucket);
    let proxy = FaultProxy::start(
        &moto::endpoint(),
        vec![Fault {
            method: "PUT",
            target_contains: "/releases/",
            status: 403,
            code: "AccessDenied",
        }],
    );
    let done = run(repo.bundler().env("AWS_ENDPOINT_URL", proxy.endpoint()));
    assert_eq!(done.code, 5, "{done:#?}");
    assert!(
        done.stderr.to_lowercase().contains("access denied"),
        "{}",
        done.stderr
    );
    assert!(
        done.stderr.contains("s3:PutObject"),
        "names the permission: {}",
        done.stderr
    );
    assert!(moto::versions_of(&s3, &bucket, KEY).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn network_failure_and_missing_credentials_say_what_to_do() {
    let repo = app_repo(&moto::unique("net"));
    // A closed port: nothing listens.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let done = run(repo
        .bundler()
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"))
        .env("AWS_MAX_ATTEMPTS", "1"));
    assert_eq!(done.code, 6, "{done:#?}");
    assert!(done.stderr.contains("network"), "{}", done.stderr);
    assert!(done.stderr.contains("retry"), "{}", done.stderr);

    let empty = tempfile::tempdir().unwrap();
    let done = run(repo
        .bundler()
        .env("AWS_ENDPOINT_URL", moto::endpoint())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", empty.path().join("config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            empty.path().join("credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true"));
    assert_eq!(done.code, 5, "{done:#?}");
    assert!(done.stderr.contains("credentials"), "{}", done.stderr);
}
