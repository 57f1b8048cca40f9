//! Clients for the moto server that `scripts/test` starts: the real AWS SDK over HTTP,
//! pointed at `AWS_ENDPOINT_URL`. Suites share one server, so every test names its own
//! buckets and tags with [`unique`] and never resets global state.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_sdk_s3::types::{BucketVersioningStatus, VersioningConfiguration};

/// The moto endpoint; panics with the command that provides it when unset.
pub fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| {
        panic!("AWS_ENDPOINT_URL is not set: run the suites through scripts/test, which starts moto server")
    })
}

/// The variables a child process (the Lambda binary, a Python handler) needs to reach the
/// same moto server as this process, as `scripts/test` exported them. Panics naming the one
/// missing; the session token is passed only when set.
pub fn aws_env() -> Vec<(String, String)> {
    let mut env = Vec::new();
    for k in [
        "AWS_ENDPOINT_URL",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
    ] {
        let v = std::env::var(k).unwrap_or_else(|_| panic!("{k} must be set (scripts/test)"));
        env.push((k.to_owned(), v));
    }
    if let Ok(token) = std::env::var("AWS_SESSION_TOKEN") {
        env.push(("AWS_SESSION_TOKEN".to_owned(), token));
    }
    env
}

/// SDK configuration from the environment scripts/test exported (endpoint, test credentials).
pub async fn sdk_config() -> aws_config::SdkConfig {
    endpoint();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await
}

/// An S3 client with path-style addressing (moto serves every bucket on one host). Response
/// checksums are validated only when required: moto answers a multipart object with one
/// part's SHA-256 where S3 gives a composite `…-N` value; suites compare full SHA-256s
/// themselves.
pub async fn s3() -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(&sdk_config().await)
        .force_path_style(true)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// An EC2 client for the shared moto server.
pub async fn ec2() -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_config().await)
}

/// An SSM client for the shared moto server.
pub async fn ssm() -> aws_sdk_ssm::Client {
    aws_sdk_ssm::Client::new(&sdk_config().await)
}

/// An EventBridge client for the shared moto server (the local pipeline's rule).
pub async fn events() -> aws_sdk_eventbridge::Client {
    aws_sdk_eventbridge::Client::new(&sdk_config().await)
}

/// A CloudWatch Logs client for the shared moto server.
pub async fn logs() -> aws_sdk_cloudwatchlogs::Client {
    aws_sdk_cloudwatchlogs::Client::new(&sdk_config().await)
}

/// An SQS client for the shared moto server (the queue that captures the rule's events).
pub async fn sqs() -> aws_sdk_sqs::Client {
    aws_sdk_sqs::Client::new(&sdk_config().await)
}

/// A name no other test (or earlier run against the same server) uses: `prefix-<pid>-<n>-<t>`,
/// lower-case and short enough for a bucket name.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{t:x}", std::process::id())
}

/// Creates a bucket, with versioning enabled when `versioned`; returns its name.
pub async fn create_bucket(s3: &aws_sdk_s3::Client, prefix: &str, versioned: bool) -> String {
    let bucket = unique(prefix);
    s3.create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
    if versioned {
        s3.put_bucket_versioning()
            .bucket(&bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("enable versioning on {bucket}: {e:?}"));
    }
    bucket
}

/// Version ids of `key` (delete markers excluded), as S3 lists them: newest first.
pub async fn versions_of(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<String> {
    let out = s3
        .list_object_versions()
        .bucket(bucket)
        .prefix(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("list versions of s3://{bucket}/{key}: {e:?}"));
    out.versions()
        .iter()
        .filter(|v| v.key() == Some(key))
        .filter_map(|v| v.version_id().map(str::to_string))
        .collect()
}

/// Multipart uploads still open in `bucket` (keys).
pub async fn open_multipart_uploads(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let out = s3
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("list multipart uploads of {bucket}: {e:?}"));
    out.uploads()
        .iter()
        .filter_map(|u| u.key().map(str::to_string))
        .collect()
}

/// The port of the moto endpoint on loopback (forwarded into simulated hosts, so the S3
/// endpoint the Lambda hands them works there).
pub fn port() -> u16 {
    let url = endpoint();
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("AWS_ENDPOINT_URL {url} has no port"))
}

/// One IAM Query API call to moto (`Action` and its parameters); returns the `<Arn>` of the
/// answer. The Rust SDK for IAM is not a dependency of the project: this is the only IAM the
/// suites need.
fn iam_query(action: &str, params: &[(&str, &str)]) -> String {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--fail", "-X", "POST", &format!("{}/", endpoint())])
        .args([
            "-H",
            "Authorization: AWS4-HMAC-SHA256 Credential=test/20261129/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
        ])
        .args(["--data-urlencode", &format!("Action={action}")])
        .args(["--data-urlencode", "Version=2010-05-08"]);
    for (k, v) in params {
        cmd.args(["--data-urlencode", &format!("{k}={v}")]);
    }
    let out = cmd.output().expect("run curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{action} {params:?}: {body}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    body.split("<Arn>")
        .nth(1)
        .and_then(|rest| rest.split("</Arn>").next())
        .unwrap_or_else(|| panic!("{action} answered without an Arn: {body}"))
        .to_owned()
}

/// Creates the instance profile `name` in moto's IAM (RunInstances refuses a profile IAM does
/// not know), once per test process; returns its ARN.
pub fn create_instance_profile(name: &str) -> String {
    static CREATED: std::sync::Mutex<Option<std::collections::HashMap<String, String>>> =
        std::sync::Mutex::new(None);
    let mut created = CREATED.lock().unwrap_or_else(|e| e.into_inner());
    let created = created.get_or_insert_with(Default::default);
    if let Some(arn) = created.get(name) {
        return arn.clone();
    }
    let arn = iam_query("CreateInstanceProfile", &[("InstanceProfileName", name)]);
    created.insert(name.to_owned(), arn.clone());
    arn
}

/// The deployer's `DROPSHIP_INSTANCE_PROFILE_ARN` in the suites (moto's account): the
/// Lambda refuses to start without one, and sends only to instances carrying the profile of
/// the release's own app and environment.
pub const HOST_PROFILE_TEMPLATE: &str =
    "arn:aws:iam::123456789012:instance-profile/dropship-host-{app}.{env}";

/// The (app, env)'s host instance profile, as [`HOST_PROFILE_TEMPLATE`] names it, created in
/// moto's IAM; returns its ARN (to attach at RunInstances).
pub fn host_profile(app: &str, env: &str) -> String {
    let arn = create_instance_profile(&format!("dropship-host-{app}.{env}"));
    assert_eq!(
        arn,
        HOST_PROFILE_TEMPLATE
            .replace("{app}", app)
            .replace("{env}", env),
        "moto's instance-profile ARN"
    );
    arn
}

/// Creates a role Lambda may assume in moto's IAM (CreateFunction refuses a role IAM does not
/// know); returns its ARN.
pub fn create_lambda_role(name: &str) -> String {
    iam_query(
        "CreateRole",
        &[
            ("RoleName", name),
            (
                "AssumeRolePolicyDocument",
                r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"lambda.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
            ),
        ],
    )
}

/// A Lambda client for the shared moto server.
pub async fn lambda() -> aws_sdk_lambda::Client {
    aws_sdk_lambda::Client::new(&sdk_config().await)
}

/// Runs `n` instances tagged `dropship:app=<app>` and `dropship:env=<env>`, with the instance
/// profile `profile_arn` attached when given; returns their ids, sorted. One RunInstances per
/// instance: moto attaches a profile to the first instance of a call only.
pub async fn run_tagged_instances(
    ec2: &aws_sdk_ec2::Client,
    app: &str,
    env: &str,
    n: usize,
    profile_arn: Option<&str>,
) -> Result<Vec<String>, String> {
    use aws_sdk_ec2::types::{
        IamInstanceProfileSpecification, InstanceType, ResourceType, Tag, TagSpecification,
    };
    let tags = TagSpecification::builder()
        .resource_type(ResourceType::Instance)
        .tags(Tag::builder().key("dropship:app").value(app).build())
        .tags(Tag::builder().key("dropship:env").value(env).build())
        .build();
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..n {
        let out = ec2
            .run_instances()
            .image_id("ami-12c6146b")
            .instance_type(InstanceType::T3Micro)
            .min_count(1)
            .max_count(1)
            .tag_specifications(tags.clone())
            .set_iam_instance_profile(
                profile_arn.map(|arn| IamInstanceProfileSpecification::builder().arn(arn).build()),
            )
            .send()
            .await
            .map_err(|e| format!("RunInstances: {e:?}"))?;
        ids.extend(
            out.instances()
                .iter()
                .filter_map(|i| i.instance_id().map(str::to_owned)),
        );
    }
    ids.sort();
    Ok(ids)
}
