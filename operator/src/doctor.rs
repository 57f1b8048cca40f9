//! `doctor`: is the AWS side wired so that an upload reaches every host? Checks, in the order
//! a deploy depends on them, each with the fix to apply: credentials and region; the bucket
//! exists, is versioned and sends its events to EventBridge; the release rule exists, is
//! enabled, matches the bucket and has a target (a Lambda function); that Lambda is active
//! and its allow-lists name the bucket, app and environment; instances carry the app/env
//! tags, are running and are online in SSM; the caller may put the release key.
//!
//! Pure: [`DoctorFacts`] (what the AWS edge, [`crate::doctor_facts`], read) in, findings
//! out. A fact the edge did not read because an earlier one failed is `None`, and its checks
//! say so instead of guessing.

use dropship_contract::wiring::{
    list_value, ALLOWED_APPS_VAR, ALLOWED_BUCKETS_VAR, ALLOWED_ENVIRONMENTS_VAR, LOG_GROUP_VAR,
};
use serde::Serialize;

use crate::exit::Exit;

/// What one read found: the value, or why the read failed (the AWS error's message, which
/// names the object, the cause and the fix).
pub type Read<T> = Result<T, String>;

/// The bucket as S3 describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BucketFacts {
    /// `NoSuchBucket`.
    Missing,
    /// It exists.
    Present {
        /// `GetBucketVersioning`'s status (`Enabled`, `Suspended`; `None` = never enabled).
        versioning: Option<String>,
        /// Whether the notification configuration has an `EventBridgeConfiguration`.
        eventbridge: bool,
    },
}

/// One EventBridge rule on the default bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFacts {
    /// Rule name.
    pub name: String,
    /// `ENABLED`, `DISABLED`, …
    pub state: String,
    /// The event pattern (JSON), if the rule has one.
    pub event_pattern: Option<String>,
    /// Target ARNs.
    pub targets: Vec<String>,
}

/// The deployer Lambda the release rule targets, as `GetFunctionConfiguration` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambdaFacts {
    /// Function ARN (the rule's target).
    pub arn: String,
    /// `Active`, `Pending`, `Inactive`, `Failed`.
    pub state: String,
    /// `Successful`, `InProgress`, `Failed` (of the last configuration or code update).
    pub last_update_status: String,
    /// Its environment variables (the deployer's configuration; no secrets live there).
    pub environment: std::collections::BTreeMap<String, String>,
}

/// One EC2 instance carrying the app/env tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceFacts {
    /// Instance id.
    pub id: String,
    /// `running`, `stopped`, `pending`, …
    pub state: String,
}

/// One managed instance as SSM describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFacts {
    /// Instance id.
    pub id: String,
    /// `Online`, `ConnectionLost`, `Inactive`.
    pub ping_status: String,
}

/// What a `PutObject` of the release key with an `If-Match` that cannot match told: S3
/// authorises a request before it evaluates its preconditions, so the answer says whether the
/// caller may upload, and nothing is written either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadFacts {
    /// Refused for its precondition (412; 404 while the key has no version yet; 409 when a
    /// write raced it): authorised.
    Allowed,
    /// Refused with 403: the caller may not put the key (S3's message).
    Denied(String),
    /// Accepted: the service ignored `If-Match` (it is not AWS S3) and wrote this version.
    Written(String),
}

/// Everything `doctor` read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DoctorFacts {
    /// App name.
    pub app: String,
    /// Environment.
    pub env: String,
    /// Artifact bucket.
    pub bucket: String,
    /// The region the SDK will use.
    pub region: Option<String>,
    /// The caller's ARN (`sts:GetCallerIdentity`).
    pub identity: Read<String>,
    /// The bucket.
    pub bucket_facts: Option<Read<BucketFacts>>,
    /// The rule name asked for (`--rule`, `DROPSHIP_RULE`, `rule`); `None`: find it by its
    /// event pattern.
    pub rule_asked: Option<String>,
    /// The rules read: the one asked for (empty if it does not exist), or every rule.
    pub rules: Option<Read<Vec<RuleFacts>>>,
    /// The deployer Lambda the release rule targets (`None`: no Lambda target to read).
    pub lambda: Option<Read<LambdaFacts>>,
    /// Tag keys naming the app and the environment on instances.
    pub tag_keys: (String, String),
    /// Instances with both tags, in any state.
    pub instances: Option<Read<Vec<InstanceFacts>>>,
    /// SSM's view of the running ones.
    pub agents: Option<Read<Vec<AgentFacts>>>,
    /// Whether the caller may put the release key.
    pub upload: Option<Read<UploadFacts>>,
}

/// Which check a finding belongs to, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    /// Credentials and region.
    Credentials,
    /// The bucket exists.
    Bucket,
    /// Versioning is on.
    Versioning,
    /// EventBridge notifications are on.
    Notifications,
    /// The release rule exists, is enabled and matches the bucket.
    Rule,
    /// The rule's target.
    RuleTarget,
    /// The deployer Lambda is active and acts on this bucket, app and environment.
    Deployer,
    /// Instances carry the tags.
    Instances,
    /// They are running.
    Running,
    /// They are online in SSM.
    Ssm,
    /// The caller may put the release key.
    Upload,
}

impl Check {
    /// The name shown in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Check::Credentials => "credentials",
            Check::Bucket => "bucket",
            Check::Versioning => "versioning",
            Check::Notifications => "notifications",
            Check::Rule => "rule",
            Check::RuleTarget => "rule target",
            Check::Deployer => "deployer",
            Check::Instances => "instances",
            Check::Running => "running",
            Check::Ssm => "ssm",
            Check::Upload => "upload",
        }
    }
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Fine.
    Ok,
    /// Worth knowing; a deploy still reaches every host.
    Warn,
    /// A deploy would not reach every host (or not happen at all).
    Fail,
    /// Not checked: an earlier check failed.
    Skipped,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Which check.
    pub check: Check,
    /// How it came out.
    pub level: Level,
    /// What was found, naming the object.
    pub message: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The account-wide reads an operator role needs for `doctor` (the uploader policy does not
/// grant them: they cannot be limited to one app).
const OPERATOR_ROLE: &str = "events:ListRules, events:ListTargetsByRule, lambda:GetFunctionConfiguration, ec2:DescribeInstances and ssm:DescribeInstanceInformation (an operator role: the uploader policy does not grant them, they cannot be limited to one app)";

fn finding(check: Check, level: Level, message: String, fix: Option<String>) -> Finding {
    Finding {
        check,
        level,
        message,
        fix,
    }
}

fn ok(check: Check, message: String) -> Finding {
    finding(check, Level::Ok, message, None)
}

fn fail(check: Check, message: String, fix: String) -> Finding {
    finding(check, Level::Fail, message, Some(fix))
}

fn skipped(check: Check, why: &str) -> Finding {
    finding(check, Level::Skipped, format!("not checked: {why}"), None)
}

/// Whether a rule's event pattern sends this bucket's "Object Created" events: source
/// `aws.s3`, and the bucket named in `detail.bucket.name` (a pattern without a
/// `detail-type` matches every S3 event, "Object Created" included).
pub fn routes_bucket(event_pattern: &str, bucket: &str) -> bool {
    let Ok(p) = serde_json::from_str::<serde_json::Value>(event_pattern) else {
        return false;
    };
    let lists = |v: &serde_json::Value, s: &str| {
        v.as_array()
            .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(s)))
    };
    let detail_type_ok = p
        .get("detail-type")
        .is_none_or(|d| lists(d, "Object Created"));
    lists(&p["source"], "aws.s3") && detail_type_ok && lists(&p["detail"]["bucket"]["name"], bucket)
}

/// Whether a rule's event pattern sends the "Object Created" event of `key` in `bucket`:
/// [`routes_bucket`], and its `detail.object.key` filters (if any) admit the key. `infra/`
/// has one release rule per environment class (`<name_prefix>-release-uploaded-<class>`),
/// each matching its environments' keys only, so the rule (and the deployer function) of an
/// app/env is the one whose filter admits its key. Filters doctor does not know count as
/// admitting it.
pub fn routes_key(event_pattern: &str, bucket: &str, key: &str) -> bool {
    if !routes_bucket(event_pattern, bucket) {
        return false;
    }
    let Ok(p) = serde_json::from_str::<serde_json::Value>(event_pattern) else {
        return false;
    };
    let Some(filters) = p["detail"]["object"]["key"].as_array() else {
        return true;
    };
    filters.iter().any(|f| match f {
        serde_json::Value::String(exact) => exact == key,
        serde_json::Value::Object(o) => {
            if let Some(w) = o.get("wildcard").and_then(|w| w.as_str()) {
                wildcard_matches(w, key)
            } else if let Some(prefix) = o.get("prefix").and_then(|w| w.as_str()) {
                key.starts_with(prefix)
            } else if let Some(suffix) = o.get("suffix").and_then(|w| w.as_str()) {
                key.ends_with(suffix)
            } else {
                true
            }
        }
        _ => false,
    })
}

/// EventBridge's `wildcard` filter: `*` stands for any run of characters.
fn wildcard_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if parts.len() == 1 {
        return pattern == text;
    }
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

fn is_lambda_function(arn: &str) -> bool {
    arn.starts_with("arn:") && arn.contains(":lambda:") && arn.contains(":function:")
}

fn credentials(f: &DoctorFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    match &f.identity {
        Ok(arn) => out.push(ok(Check::Credentials, format!("calling as {arn}"))),
        Err(e) => out.push(fail(
            Check::Credentials,
            format!("no usable AWS credentials: {e}"),
            "configure credentials (AWS_PROFILE or --profile, `aws sso login`, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and run doctor again".into(),
        )),
    }
    match &f.region {
        Some(r) => out.push(ok(Check::Credentials, format!("region {r}"))),
        None => out.push(fail(
            Check::Credentials,
            "no AWS region".into(),
            "set `region` in dropship.toml, AWS_REGION, or pass --region (the bucket's region)"
                .into(),
        )),
    }
    out
}

fn bucket(f: &DoctorFacts) -> Vec<Finding> {
    let b = &f.bucket;
    let checks = [Check::Bucket, Check::Versioning, Check::Notifications];
    let facts = match &f.bucket_facts {
        None => return checks.map(|c| skipped(c, "no credentials")).to_vec(),
        Some(Err(e)) => {
            let mut out = vec![fail(
                Check::Bucket,
                format!("cannot read bucket {b}: {e}"),
                format!("check that bucket {b} exists in this account and region and that the uploader policy (infra/) grants s3:GetBucketVersioning and s3:GetBucketNotification on it"),
            )];
            out.extend(
                checks[1..]
                    .iter()
                    .map(|c| skipped(*c, "the bucket could not be read")),
            );
            return out;
        }
        Some(Ok(facts)) => facts,
    };
    match facts {
        BucketFacts::Missing => {
            let mut out = vec![fail(
                Check::Bucket,
                format!("bucket {b} does not exist"),
                format!("create it with infra/ (terraform apply), or fix `bucket` in dropship.toml / --bucket (now {b})"),
            )];
            out.extend(checks[1..].iter().map(|c| skipped(*c, "no bucket")));
            out
        }
        BucketFacts::Present {
            versioning,
            eventbridge,
        } => {
            let mut out = vec![ok(Check::Bucket, format!("bucket {b} exists"))];
            if versioning.as_deref() == Some("Enabled") {
                out.push(ok(Check::Versioning, "versioning is Enabled".into()));
            } else {
                out.push(fail(
                    Check::Versioning,
                    format!(
                        "bucket {b} has versioning {}: uploads overwrite each other, the deployer refuses unversioned objects and rollback has nothing to restore",
                        versioning.as_deref().unwrap_or("never enabled")
                    ),
                    format!("aws s3api put-bucket-versioning --bucket {b} --versioning-configuration Status=Enabled (infra/ sets it)"),
                ));
            }
            if *eventbridge {
                out.push(ok(
                    Check::Notifications,
                    "object events go to EventBridge".into(),
                ));
            } else {
                out.push(fail(
                    Check::Notifications,
                    format!("bucket {b} does not send its events to EventBridge: an upload triggers nothing"),
                    format!("aws s3api put-bucket-notification-configuration --bucket {b} --notification-configuration '{{\"EventBridgeConfiguration\":{{}}}}' (infra/ sets it)"),
                ));
            }
            out
        }
    }
}

fn rule(f: &DoctorFacts) -> Vec<Finding> {
    let b = &f.bucket;
    let rules = match &f.rules {
        None => {
            return vec![
                skipped(Check::Rule, "no credentials"),
                skipped(Check::RuleTarget, "no credentials"),
            ]
        }
        Some(Err(e)) => {
            return vec![
                fail(
                    Check::Rule,
                    format!("cannot list EventBridge rules: {e}"),
                    format!("run doctor with a role that may {OPERATOR_ROLE}"),
                ),
                skipped(Check::RuleTarget, "the rules could not be read"),
            ]
        }
        Some(Ok(rules)) => rules,
    };
    let key = release_object_key(f);
    let Some(rule) = release_rule(rules, f.rule_asked.as_deref(), b, &key) else {
        let message = match &f.rule_asked {
            Some(name) => format!("EventBridge rule {name} does not exist on the default bus"),
            None => format!("no EventBridge rule on the default bus sends bucket {b}'s \"Object Created\" events of {key} anywhere: an upload reaches no deployer"),
        };
        return vec![
            fail(
                Check::Rule,
                message,
                "create it with infra/ (events.tf, `<name_prefix>-release-uploaded-<class>`), or name the existing rule with --rule / DROPSHIP_RULE / `rule` in dropship.toml".into(),
            ),
            skipped(Check::RuleTarget, "no rule"),
        ];
    };
    let how = if f.rule_asked.is_some() {
        "named"
    } else {
        "found by its pattern"
    };
    let mut out = Vec::new();
    let matches = rule
        .event_pattern
        .as_deref()
        .is_some_and(|p| routes_key(p, b, &key));
    if rule.state != "ENABLED" {
        out.push(fail(
            Check::Rule,
            format!(
                "rule {} ({how}) is {}: uploads trigger nothing",
                rule.name, rule.state
            ),
            format!("aws events enable-rule --name {}", rule.name),
        ));
    } else if !matches {
        out.push(fail(
            Check::Rule,
            format!("rule {} ({how}) does not match bucket {b}'s \"Object Created\" events of {key} (source aws.s3, detail.bucket.name {b}, detail.object.key admitting the key)", rule.name),
            format!("fix its event pattern (infra/events.tf), or name the rule of bucket {b} with --rule"),
        ));
    } else {
        out.push(ok(
            Check::Rule,
            format!(
                "rule {} ({how}) is ENABLED and matches bucket {b}",
                rule.name
            ),
        ));
    }
    if rule.targets.is_empty() {
        out.push(fail(
            Check::RuleTarget,
            format!("rule {} has no target: events go nowhere", rule.name),
            "point it at the deployer Lambda (infra/events.tf does)".into(),
        ));
    } else if let Some(arn) = rule.targets.iter().find(|t| is_lambda_function(t)) {
        out.push(ok(Check::RuleTarget, format!("target {arn}")));
    } else {
        out.push(finding(
            Check::RuleTarget,
            Level::Warn,
            format!("rule {} targets {}, not a Lambda function", rule.name, rule.targets.join(", ")),
            Some("fine if that target forwards the events to the deployer; otherwise point the rule at the deployer Lambda (infra/events.tf)".into()),
        ));
    }
    out
}

/// The release key doctor checks (`releases/<app>/<env>.tar.gz`; the raw names when they are
/// not valid, which the key check reports).
fn release_object_key(f: &DoctorFacts) -> String {
    dropship_contract::key::ReleaseKey::new(&f.app, &f.env)
        .map(|k| k.object_key())
        .unwrap_or_else(|_| format!("releases/{}/{}.tar.gz", f.app, f.env))
}

/// The release rule: the one named (`--rule`), else the rules whose pattern routes the
/// uploads of `key` in the bucket (one per environment class in `infra/`); with several
/// candidates, the best one speaks (enabled first).
pub fn release_rule<'a>(
    rules: &'a [RuleFacts],
    asked: Option<&str>,
    bucket: &str,
    key: &str,
) -> Option<&'a RuleFacts> {
    let found: Vec<&RuleFacts> = match asked {
        Some(name) => rules.iter().filter(|r| r.name == name).collect(),
        None => rules
            .iter()
            .filter(|r| {
                r.event_pattern
                    .as_deref()
                    .is_some_and(|p| routes_key(p, bucket, key))
            })
            .collect(),
    };
    found
        .iter()
        .find(|r| r.state == "ENABLED")
        .or(found.first())
        .copied()
}

/// The release rule's Lambda target, if it has one: the function the deployer check reads.
pub fn lambda_target(
    rules: &[RuleFacts],
    asked: Option<&str>,
    bucket: &str,
    key: &str,
) -> Option<String> {
    release_rule(rules, asked, bucket, key)?
        .targets
        .iter()
        .find(|t| is_lambda_function(t))
        .cloned()
}

/// The deployer acts on an upload only when it is active and its allow-lists name the
/// bucket, the app and the environment; anything else is an upload that silently does
/// nothing (the event is refused before any read).
fn deployer(f: &DoctorFacts) -> Vec<Finding> {
    let facts = match &f.lambda {
        None => {
            let why = match &f.rules {
                None => "no credentials",
                Some(Err(_)) => "the rules could not be read",
                Some(Ok(_)) => "the release rule has no Lambda target to read",
            };
            return vec![skipped(Check::Deployer, why)];
        }
        Some(Err(e)) => {
            return vec![fail(
            Check::Deployer,
            format!("the deployer Lambda's configuration could not be read: {e}"),
            "grant lambda:GetFunctionConfiguration on the deployer function to this operator role"
                .into(),
        )]
        }
        Some(Ok(l)) => l,
    };
    let name = facts.arn.rsplit(':').next().unwrap_or(&facts.arn);
    let mut out = Vec::new();
    if facts.state != "Active" || facts.last_update_status == "Failed" {
        out.push(fail(
            Check::Deployer,
            format!(
                "deployer {name} is {} (last update {}): it runs no deploy",
                facts.state, facts.last_update_status
            ),
            format!("aws lambda get-function-configuration --function-name {name} shows StateReason; re-apply infra/ (terraform apply)"),
        ));
    }
    let var = |k: &str| facts.environment.get(k).map(String::as_str).unwrap_or("");
    let buckets = list_value(var(ALLOWED_BUCKETS_VAR));
    if !buckets.iter().any(|b| b == &f.bucket) {
        out.push(fail(
            Check::Deployer,
            format!(
                "deployer {name} ignores uploads to bucket {}: {ALLOWED_BUCKETS_VAR} is {:?}",
                f.bucket,
                var(ALLOWED_BUCKETS_VAR)
            ),
            format!("add {} to {ALLOWED_BUCKETS_VAR} (infra/ sets it from the bucket it creates), or upload to a listed bucket", f.bucket),
        ));
    }
    for (list_var, value, what, infra) in [
        (ALLOWED_APPS_VAR, &f.app, "app", "apps"),
        (
            ALLOWED_ENVIRONMENTS_VAR,
            &f.env,
            "environment",
            "environments",
        ),
    ] {
        let listed = list_value(var(list_var));
        if !listed.is_empty() && !listed.contains(value) {
            out.push(fail(
                Check::Deployer,
                format!(
                    "deployer {name} refuses {what} {value}: {list_var} is {:?}",
                    var(list_var)
                ),
                format!(
                    "add {value} to the module's `{infra}` variable (it sets {list_var}) and apply"
                ),
            ));
        }
    }
    if out.is_empty() {
        out.push(ok(
            Check::Deployer,
            format!(
                "deployer {name} is Active and acts on bucket {}, app {}, environment {}",
                f.bucket, f.app, f.env
            ),
        ));
    }
    if var(LOG_GROUP_VAR).is_empty() {
        out.push(finding(
            Check::Deployer,
            Level::Warn,
            format!("deployer {name} has no {LOG_GROUP_VAR}: SSM keeps only 24,000 characters of each host's output and `dropship logs` has nothing to read"),
            Some(format!("set {LOG_GROUP_VAR} (infra/ sets it to its command_output_log_group)")),
        ));
    }
    out
}

fn hosts(f: &DoctorFacts) -> Vec<Finding> {
    let (app_key, env_key) = &f.tag_keys;
    let tags = format!("{app_key}={} and {env_key}={}", f.app, f.env);
    let instances = match &f.instances {
        None => {
            return [Check::Instances, Check::Running, Check::Ssm]
                .map(|c| skipped(c, "no credentials"))
                .to_vec()
        }
        Some(Err(e)) => {
            return vec![
                fail(
                    Check::Instances,
                    format!("cannot list instances tagged {tags}: {e}"),
                    format!("run doctor with a role that may {OPERATOR_ROLE}"),
                ),
                skipped(Check::Running, "instances could not be listed"),
                skipped(Check::Ssm, "instances could not be listed"),
            ]
        }
        Some(Ok(list)) => list,
    };
    if instances.is_empty() {
        return vec![
            fail(
                Check::Instances,
                format!("no instance is tagged {tags}: a deploy has no target"),
                format!("tag the app's instances: aws ec2 create-tags --resources <instance-id> --tags Key={app_key},Value={} Key={env_key},Value={}", f.app, f.env),
            ),
            skipped(Check::Running, "no instances"),
            skipped(Check::Ssm, "no instances"),
        ];
    }
    let mut out = vec![ok(
        Check::Instances,
        format!("{} instance(s) tagged {tags}", instances.len()),
    )];
    let running: Vec<&InstanceFacts> = instances.iter().filter(|i| i.state == "running").collect();
    for i in instances.iter().filter(|i| i.state != "running") {
        out.push(finding(
            Check::Running,
            Level::Warn,
            format!("{} is {}: not deployed to now; it gets the fleet's version when it starts (catch-up)", i.id, i.state),
            Some(format!("start it if it should serve: aws ec2 start-instances --instance-ids {}", i.id)),
        ));
    }
    if running.is_empty() {
        out.push(fail(
            Check::Running,
            format!("none of the instances tagged {tags} is running: a deploy has no target"),
            "start them (aws ec2 start-instances) or tag the running ones".into(),
        ));
        out.push(skipped(Check::Ssm, "no running instance"));
        return out;
    }
    out.push(ok(Check::Running, format!("{} running", running.len())));
    let agents = match &f.agents {
        None => {
            out.push(skipped(Check::Ssm, "no running instance"));
            return out;
        }
        Some(Err(e)) => {
            out.push(fail(
                Check::Ssm,
                format!("cannot read SSM's managed instances: {e}"),
                format!("run doctor with a role that may {OPERATOR_ROLE}"),
            ));
            return out;
        }
        Some(Ok(a)) => a,
    };
    let mut online = 0;
    for i in &running {
        match agents.iter().find(|a| a.id == i.id) {
            Some(a) if a.ping_status == "Online" => online += 1,
            seen => {
                let status = seen.map_or("not registered".to_string(), |a| a.ping_status.clone());
                out.push(fail(
                    Check::Ssm,
                    format!("{} is running but not online in SSM ({status}): a deploy skips it until it comes online", i.id),
                    "check that the SSM agent runs on it, its instance profile has AmazonSSMManagedInstanceCore (infra/ attaches it), and it reaches the SSM endpoints (NAT or VPC endpoints)".into(),
                ));
            }
        }
    }
    if online == running.len() {
        out.push(ok(Check::Ssm, format!("all {online} online in SSM")));
    }
    out
}

/// The release key's object URL, as the upload check names it.
fn release_url(f: &DoctorFacts) -> String {
    match dropship_contract::key::ReleaseKey::new(&f.app, &f.env) {
        Ok(key) => format!("s3://{}/{}", f.bucket, key.object_key()),
        Err(_) => format!("the release key of {}/{} in {}", f.app, f.env, f.bucket),
    }
}

fn upload(f: &DoctorFacts) -> Vec<Finding> {
    let url = release_url(f);
    let found = match &f.upload {
        None => return vec![skipped(Check::Upload, "no bucket to upload to")],
        Some(Err(e)) => {
            return vec![fail(
                Check::Upload,
                format!("cannot tell whether the caller may put {url}: {e}"),
                "retry; if it persists, check the network path to S3".into(),
            )]
        }
        Some(Ok(found)) => found,
    };
    match found {
        UploadFacts::Allowed => vec![ok(
            Check::Upload,
            format!("the caller may put {url} (a conditional PutObject that cannot match was authorised and refused for its precondition; nothing was written; SSE-KMS key use is checked only on a real upload)"),
        )],
        UploadFacts::Denied(e) => vec![fail(
            Check::Upload,
            format!("the caller may not put {url}: {e}"),
            format!("run the upload with the uploader role or policy infra/ makes for {}/{} (outputs uploader_policy_arns, github_role_arns)", f.app, f.env),
        )],
        UploadFacts::Written(version) => vec![fail(
            Check::Upload,
            format!("the service wrote an empty version {version} of {url}: it ignored If-Match, which AWS S3 honours; the deployer rejects that version, but it is now the key's current one"),
            "this is not AWS S3's behaviour: check the endpoint (AWS_ENDPOINT_URL), then roll back to the last good version with `dropship rollback <version>`".into(),
        )],
    }
}

/// Every check's findings, in order.
pub fn findings(f: &DoctorFacts) -> Vec<Finding> {
    let mut out = credentials(f);
    out.extend(bucket(f));
    out.extend(rule(f));
    out.extend(deployer(f));
    out.extend(hosts(f));
    out.extend(upload(f));
    out
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DoctorReport {
    /// App name.
    pub app: String,
    /// Environment.
    pub env: String,
    /// Bucket.
    pub bucket: String,
    /// Whether an upload now would reach every running tagged host.
    pub ready: bool,
    /// In check order.
    pub findings: Vec<Finding>,
}

impl DoctorReport {
    /// Checks `facts`.
    pub fn of(facts: &DoctorFacts) -> Self {
        let findings = findings(facts);
        Self {
            app: facts.app.clone(),
            env: facts.env.clone(),
            bucket: facts.bucket.clone(),
            ready: !findings.iter().any(|f| f.level == Level::Fail),
            findings,
        }
    }

    /// `Success` when a deploy would reach every host, else `NotReady`.
    pub fn exit_code(&self) -> Exit {
        if self.ready {
            Exit::Success
        } else {
            Exit::NotReady
        }
    }

    /// The text form: one line per finding, the fix under each fault, then the verdict.
    pub fn render(&self) -> String {
        let mut out = format!(
            "doctor: {}/{} in bucket {}\n",
            self.app, self.env, self.bucket
        );
        for f in &self.findings {
            let level = match f.level {
                Level::Ok => "ok",
                Level::Warn => "warn",
                Level::Fail => "FAIL",
                Level::Skipped => "skip",
            };
            out.push_str(&format!(
                "  {level:<5} {:<14}{}\n",
                f.check.as_str(),
                f.message
            ));
            if let Some(fix) = &f.fix {
                out.push_str(&format!("  {:<20}fix: {fix}\n", ""));
            }
        }
        let faults = self
            .findings
            .iter()
            .filter(|f| f.level == Level::Fail)
            .count();
        if self.ready {
            out.push_str("ready: an upload now would reach every running tagged host\n");
        } else {
            out.push_str(&format!(
                "not ready: {faults} fault(s); an upload now would not reach every host\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATTERN: &str = r#"{"source":["aws.s3"],"detail-type":["Object Created"],"detail":{"bucket":{"name":["art"]},"object":{"key":[{"wildcard":"releases/*.tar.gz"}]}}}"#;

    fn healthy() -> DoctorFacts {
        DoctorFacts {
            app: "shop".into(),
            env: "prod".into(),
            bucket: "art".into(),
            region: Some("eu-west-1".into()),
            identity: Ok("arn:aws:iam::1:user/alice".into()),
            bucket_facts: Some(Ok(BucketFacts::Present {
                versioning: Some("Enabled".into()),
                eventbridge: true,
            })),
            rule_asked: None,
            rules: Some(Ok(vec![
                RuleFacts {
                    name: "other".into(),
                    state: "ENABLED".into(),
                    event_pattern: Some(r#"{"source":["aws.ec2"]}"#.into()),
                    targets: vec![],
                },
                RuleFacts {
                    name: "dropship-release-uploaded".into(),
                    state: "ENABLED".into(),
                    event_pattern: Some(PATTERN.into()),
                    targets: vec!["arn:aws:lambda:eu-west-1:1:function:dropship-deployer".into()],
                },
            ])),
            lambda: Some(Ok(LambdaFacts {
                arn: "arn:aws:lambda:eu-west-1:1:function:dropship-deployer".into(),
                state: "Active".into(),
                last_update_status: "Successful".into(),
                environment: [
                    ("DROPSHIP_ALLOWED_BUCKETS", "other, art"),
                    ("DROPSHIP_ALLOWED_APPS", "shop"),
                    ("DROPSHIP_ALLOWED_ENVIRONMENTS", ""),
                    ("DROPSHIP_LOG_GROUP", "/dropship/ssm-command-output"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            })),
            tag_keys: ("dropship:app".into(), "dropship:env".into()),
            instances: Some(Ok(vec![
                InstanceFacts {
                    id: "i-1".into(),
                    state: "running".into(),
                },
                InstanceFacts {
                    id: "i-2".into(),
                    state: "running".into(),
                },
            ])),
            agents: Some(Ok(vec![
                AgentFacts {
                    id: "i-1".into(),
                    ping_status: "Online".into(),
                },
                AgentFacts {
                    id: "i-2".into(),
                    ping_status: "Online".into(),
                },
            ])),
            upload: Some(Ok(UploadFacts::Allowed)),
        }
    }

    fn faults(r: &DoctorReport) -> Vec<(Check, &str)> {
        r.findings
            .iter()
            .filter(|f| f.level == Level::Fail)
            .map(|f| (f.check, f.message.as_str()))
            .collect()
    }

    #[test]
    fn a_healthy_setup_is_ready_and_says_why() {
        let r = DoctorReport::of(&healthy());
        assert!(r.ready, "{}", r.render());
        assert_eq!(r.exit_code(), Exit::Success);
        assert!(r.findings.iter().all(|f| f.level == Level::Ok), "{r:?}");
        let text = r.render();
        assert!(
            text.contains("dropship-release-uploaded (found by its pattern)"),
            "{text}"
        );
        assert!(
            text.contains("all 2 online in SSM") && text.contains("ready:"),
            "{text}"
        );
        // The checks come in the documented order.
        let order: Vec<Check> = r.findings.iter().map(|f| f.check).collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
    }

    #[test]
    fn each_fault_is_named_with_its_fix() {
        let mut f = healthy();
        f.bucket_facts = Some(Ok(BucketFacts::Present {
            versioning: Some("Suspended".into()),
            eventbridge: false,
        }));
        f.rules = Some(Ok(vec![]));
        f.agents = Some(Ok(vec![
            AgentFacts {
                id: "i-1".into(),
                ping_status: "Online".into(),
            },
            AgentFacts {
                id: "i-2".into(),
                ping_status: "ConnectionLost".into(),
            },
        ]));
        let r = DoctorReport::of(&f);
        assert!(!r.ready);
        assert_eq!(r.exit_code(), Exit::NotReady);
        let checks: Vec<Check> = faults(&r).iter().map(|(c, _)| *c).collect();
        assert_eq!(
            checks,
            [
                Check::Versioning,
                Check::Notifications,
                Check::Rule,
                Check::Ssm
            ]
        );
        let text = r.render();
        for needle in [
            "versioning Suspended",
            "put-bucket-versioning --bucket art --versioning-configuration Status=Enabled",
            "EventBridgeConfiguration",
            "no EventBridge rule",
            "--rule",
            "i-2 is running but not online in SSM (ConnectionLost)",
            "AmazonSSMManagedInstanceCore",
            "not ready: 4 fault(s)",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        assert!(!text.contains("i-1 is running but not online"), "{text}");
    }

    #[test]
    fn a_missing_bucket_skips_what_depends_on_it() {
        let mut f = healthy();
        f.bucket_facts = Some(Ok(BucketFacts::Missing));
        let r = DoctorReport::of(&f);
        assert_eq!(faults(&r), [(Check::Bucket, "bucket art does not exist")]);
        let skipped: Vec<Check> = r
            .findings
            .iter()
            .filter(|f| f.level == Level::Skipped)
            .map(|f| f.check)
            .collect();
        assert_eq!(skipped, [Check::Versioning, Check::Notifications]);
    }

    #[test]
    fn no_credentials_fails_first_and_skips_the_rest() {
        let f = DoctorFacts {
            identity: Err("no credentials in the environment".into()),
            region: None,
            bucket_facts: None,
            rules: None,
            lambda: None,
            instances: None,
            agents: None,
            upload: None,
            ..healthy()
        };
        let r = DoctorReport::of(&f);
        assert_eq!(
            faults(&r).iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            [Check::Credentials, Check::Credentials]
        );
        assert!(r.render().contains("AWS_PROFILE"));
        assert!(r.render().contains("--region"));
        assert!(r.findings.iter().skip(2).all(|f| f.level == Level::Skipped));
    }

    #[test]
    fn a_named_rule_must_exist_be_enabled_and_match_the_bucket() {
        let mut f = healthy();
        f.rule_asked = Some("mine".into());
        let r = DoctorReport::of(&f);
        assert_eq!(
            faults(&r),
            [(
                Check::Rule,
                "EventBridge rule mine does not exist on the default bus"
            )]
        );

        f.rule_asked = Some("other".into());
        let r = DoctorReport::of(&f);
        let msgs: Vec<&str> = faults(&r).iter().map(|(_, m)| *m).collect();
        assert!(msgs[0].contains("does not match bucket art"), "{msgs:?}");
        assert!(msgs[1].contains("has no target"), "{msgs:?}");

        let mut f = healthy();
        if let Some(Ok(rules)) = &mut f.rules {
            rules[1].state = "DISABLED".into();
        }
        let r = DoctorReport::of(&f);
        assert!(r
            .render()
            .contains("aws events enable-rule --name dropship-release-uploaded"));
        assert!(!r.ready);
    }

    #[test]
    fn a_target_that_is_not_a_lambda_is_a_warning() {
        let mut f = healthy();
        if let Some(Ok(rules)) = &mut f.rules {
            rules[1].targets = vec!["arn:aws:sqs:eu-west-1:1:queue".into()];
        }
        let r = DoctorReport::of(&f);
        assert!(r.ready);
        assert!(r
            .findings
            .iter()
            .any(|x| x.check == Check::RuleTarget && x.level == Level::Warn));
    }

    #[test]
    fn stopped_instances_warn_and_none_running_fails() {
        let mut f = healthy();
        f.instances = Some(Ok(vec![
            InstanceFacts {
                id: "i-1".into(),
                state: "running".into(),
            },
            InstanceFacts {
                id: "i-3".into(),
                state: "stopped".into(),
            },
        ]));
        let r = DoctorReport::of(&f);
        assert!(r.ready, "{}", r.render());
        assert!(r.render().contains("i-3 is stopped"));

        f.instances = Some(Ok(vec![InstanceFacts {
            id: "i-3".into(),
            state: "stopped".into(),
        }]));
        let r = DoctorReport::of(&f);
        assert_eq!(faults(&r)[0].0, Check::Running);

        f.instances = Some(Ok(vec![]));
        let r = DoctorReport::of(&f);
        assert!(faults(&r)[0]
            .1
            .contains("no instance is tagged dropship:app=shop and dropship:env=prod"));
        assert!(r.render().contains("aws ec2 create-tags"));

        let mut f = healthy();
        f.agents = Some(Ok(vec![]));
        let r = DoctorReport::of(&f);
        assert_eq!(faults(&r).len(), 2, "both unregistered: {}", r.render());
        assert!(r.render().contains("(not registered)"));
    }

    #[test]
    fn patterns_route_a_bucket_only_when_they_name_it() {
        assert!(routes_bucket(PATTERN, "art"));
        assert!(!routes_bucket(PATTERN, "other"));
        assert!(routes_bucket(
            r#"{"source":["aws.s3"],"detail":{"bucket":{"name":["art"]}}}"#,
            "art"
        ));
        assert!(!routes_bucket(
            r#"{"source":["aws.s3"],"detail-type":["Object Deleted"],"detail":{"bucket":{"name":["art"]}}}"#,
            "art"
        ));
        assert!(!routes_bucket("not json", "art"));
    }

    #[test]
    fn a_deployer_that_would_ignore_the_upload_is_a_fault_naming_the_variable_and_fix() {
        let with = |change: &dyn Fn(&mut LambdaFacts)| {
            let mut f = healthy();
            if let Some(Ok(l)) = &mut f.lambda {
                change(l);
            }
            DoctorReport::of(&f)
        };
        let set = |k: &str, v: &str| {
            let (k, v) = (k.to_string(), v.to_string());
            move |l: &mut LambdaFacts| {
                l.environment.insert(k.clone(), v.clone());
            }
        };
        for (change, needle, fix) in [
            (
                Box::new(set("DROPSHIP_ALLOWED_BUCKETS", "other")) as Box<dyn Fn(&mut LambdaFacts)>,
                "ignores uploads to bucket art: DROPSHIP_ALLOWED_BUCKETS is \"other\"",
                "add art to DROPSHIP_ALLOWED_BUCKETS",
            ),
            (
                Box::new(set("DROPSHIP_ALLOWED_APPS", "blog, wiki")),
                "refuses app shop: DROPSHIP_ALLOWED_APPS is \"blog, wiki\"",
                "`apps` variable",
            ),
            (
                Box::new(set("DROPSHIP_ALLOWED_ENVIRONMENTS", "staging")),
                "refuses environment prod: DROPSHIP_ALLOWED_ENVIRONMENTS is \"staging\"",
                "`environments` variable",
            ),
            (
                Box::new(|l: &mut LambdaFacts| l.state = "Failed".into()),
                "deployer dropship-deployer is Failed",
                "terraform apply",
            ),
        ] {
            let r = with(&*change);
            assert!(!r.ready, "{}", r.render());
            assert_eq!(r.exit_code(), Exit::NotReady);
            let fault = r
                .findings
                .iter()
                .find(|f| f.check == Check::Deployer && f.level == Level::Fail)
                .unwrap_or_else(|| panic!("no deployer fault in {}", r.render()));
            assert!(fault.message.contains(needle), "{}", fault.message);
            assert!(fault.fix.as_deref().unwrap().contains(fix), "{fault:?}");
        }
        // No log group: a warning, the deploy still reaches every host.
        let r = with(&|l: &mut LambdaFacts| {
            l.environment.remove("DROPSHIP_LOG_GROUP");
        });
        assert!(r.ready, "{}", r.render());
        assert!(r
            .findings
            .iter()
            .any(|f| f.check == Check::Deployer && f.level == Level::Warn));
        // Unreadable: a fault naming the permission; no Lambda target: skipped.
        let mut f = healthy();
        f.lambda = Some(Err("AccessDenied".into()));
        let r = DoctorReport::of(&f);
        assert!(
            r.render().contains("lambda:GetFunctionConfiguration"),
            "{}",
            r.render()
        );
        assert!(!r.ready);
        f.lambda = None;
        let r = DoctorReport::of(&f);
        assert!(r
            .findings
            .iter()
            .any(|f| f.check == Check::Deployer && f.level == Level::Skipped));
    }

    #[test]
    fn the_lambda_read_is_the_release_rules_target() {
        let f = healthy();
        let Some(Ok(rules)) = &f.rules else { panic!() };
        let key = "releases/shop/prod.tar.gz";
        assert_eq!(
            lambda_target(rules, None, "art", key).as_deref(),
            Some("arn:aws:lambda:eu-west-1:1:function:dropship-deployer")
        );
        assert_eq!(lambda_target(rules, Some("other"), "art", key), None);
        assert_eq!(lambda_target(rules, None, "elsewhere", key), None);
    }

    #[test]
    fn the_rule_of_the_key_s_environment_class_is_the_release_rule() {
        let rule = |name: &str, env: &str, function: &str| RuleFacts {
            name: name.into(),
            state: "ENABLED".into(),
            event_pattern: Some(format!(
                r#"{{"source":["aws.s3"],"detail-type":["Object Created"],"detail":{{"bucket":{{"name":["art"]}},"object":{{"key":[{{"wildcard":"releases/*/{env}.tar.gz"}}]}}}}}}"#
            )),
            targets: vec![format!("arn:aws:lambda:eu-west-1:1:function:{function}")],
        };
        let rules = [
            rule(
                "d-release-uploaded-nonproduction",
                "staging",
                "d-deployer-nonproduction",
            ),
            rule(
                "d-release-uploaded-production",
                "production",
                "d-deployer-production",
            ),
        ];
        assert_eq!(
            lambda_target(&rules, None, "art", "releases/shop/production.tar.gz").as_deref(),
            Some("arn:aws:lambda:eu-west-1:1:function:d-deployer-production")
        );
        assert_eq!(
            lambda_target(&rules, None, "art", "releases/shop/staging.tar.gz").as_deref(),
            Some("arn:aws:lambda:eu-west-1:1:function:d-deployer-nonproduction")
        );
        assert_eq!(
            lambda_target(&rules, None, "art", "releases/shop/qa.tar.gz"),
            None
        );
        assert!(wildcard_matches(
            "releases/*/prod.tar.gz",
            "releases/a/prod.tar.gz"
        ));
        assert!(!wildcard_matches(
            "releases/*/prod.tar.gz",
            "releases/a/pre-prod.tar.gz"
        ));
        assert!(wildcard_matches("a*b*c", "aXbYc") && !wildcard_matches("a*b*c", "aXc"));
    }

    #[test]
    fn an_upload_the_caller_may_not_make_is_a_fault_and_an_ignored_precondition_is_said_loudly() {
        let r = DoctorReport::of(&healthy());
        let line = r
            .findings
            .iter()
            .find(|f| f.check == Check::Upload)
            .expect("an upload finding");
        assert_eq!(line.level, Level::Ok);
        assert!(
            line.message.contains("s3://art/releases/shop/prod.tar.gz"),
            "{}",
            line.message
        );
        assert!(
            line.message.contains("nothing was written"),
            "{}",
            line.message
        );

        let mut f = healthy();
        f.upload = Some(Ok(UploadFacts::Denied("AccessDenied".into())));
        let r = DoctorReport::of(&f);
        assert!(!r.ready);
        assert_eq!(r.exit_code(), Exit::NotReady);
        let (check, message) = faults(&r)[0];
        assert_eq!(check, Check::Upload);
        assert!(
            message.contains("may not put s3://art/releases/shop/prod.tar.gz"),
            "{message}"
        );
        assert!(
            r.render().contains("uploader_policy_arns"),
            "{}",
            r.render()
        );

        f.upload = Some(Ok(UploadFacts::Written("v9".into())));
        let r = DoctorReport::of(&f);
        assert_eq!(faults(&r)[0].0, Check::Upload);
        assert!(r.render().contains("empty version v9"), "{}", r.render());
        assert!(r.render().contains("dropship rollback"), "{}", r.render());

        f.upload = None;
        let r = DoctorReport::of(&f);
        assert!(r.ready, "not checked is not a fault");
        assert!(r
            .findings
            .iter()
            .any(|f| f.check == Check::Upload && f.level == Level::Skipped));
    }
}
