//! Contract between `infra/` (Terraform) and the Rust code it deploys, and the trust
//! boundary `infra/` draws.
//!
//! Providers cannot be downloaded on the build machines, so `terraform validate` cannot run
//! here; instead the module's HCL is parsed and evaluated over a scenario (two apps, two
//! environments, GitHub roles for one app, a plain-CI uploader for the other: see
//! [`scenario`]) with `terraform.rs`, and the IAM documents it produces are *asked*
//! questions with `iam.rs` ("may the staging role write the production key?") rather than
//! read. The tests check:
//!
//! - the EventBridge rules against `dropship_contract::key` and `dropship_contract::events`;
//! - the Lambda's environment against `deployer_lambda::config` (names, and that the Lambda
//!   accepts the instance-profile template and maps it to the module's profiles);
//! - the actions granted to the Lambda role and the uploader policies against the IAM
//!   actions the code calls (`aws_calls.rs`; one uploader runs both CLIs, so its policy is
//!   the bundler's and the operator's together), missing and extra both failing;
//! - per-(app, env) rights: uploads, restores and reads of one pair reach only its key and
//!   its records; one GitHub role per pair, trusting only that GitHub environment;
//! - the bucket policy denies by principal; history is append-only; the lifecycle rule
//!   cannot be eroded by cheap copies;
//! - the SCP / permissions-boundary snippets deny what they say to everyone but the
//!   provisioning principals, for the names the module really creates.

#[path = "infra_contract/iam.rs"]
mod iam;
#[path = "infra_contract/terraform.rs"]
mod terraform;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use dropship_contract::key::{ReleaseKey, BUNDLE_SUFFIX, RECORDS_PREFIX, RELEASES_PREFIX};
use dropship_contract::wiring::COMMAND_DOCUMENT_INFIX;
use serde_json::{json, Value};

use iam::{allows, decide, denies, Decision, Request, Statement};
use terraform::{
    as_text, attr, blocks, referenced, symbol, Eval, Instance, Module, ACCOUNT_ID, PARTITION,
};

/// What the Lambda *service* does with the function's role because of a choice made in
/// `infra/` (not in the crate): delivering a failed asynchronous invocation to the
/// on-failure SQS destination of `aws_lambda_function_event_invoke_config`. The service's
/// other use of the role (shipping logs) is `deployer_lambda::aws_calls::PLATFORM_ACTIONS`.
const ASYNC_DESTINATION_ACTIONS: &[&str] = &["sqs:SendMessage"];

/// The AWS-owned shell document: the deployer may not send it, and no rule of the module
/// may match its status changes.
const RUN_SHELL_SCRIPT: &str = "AWS-RunShellScript";

/// The scenario's principals.
const BLOG_STAGING_CI: &str = "arn:aws:iam::111122223333:role/blog-ci-staging";
const ADMIN: &str = "arn:aws:iam::111122223333:role/Admin";
const BUCKET_ARN: &str = "${aws_s3_bucket.artifacts.arn}";

/// Two apps × two environments; GitHub OIDC roles for shop's two environments, a plain-CI
/// role for blog/staging, nobody for blog/production; failure notifications on.
fn scenario() -> Vec<(&'static str, Value)> {
    vec![
        ("bucket_name", json!("acme-artifacts")),
        ("apps", json!(["shop", "blog"])),
        ("lambda_zip_path", json!("bootstrap.zip")),
        (
            "github_oidc_subjects",
            json!({
                "shop/staging": ["repo:acme/shop:environment:staging"],
                "shop/production": ["repo:acme/shop:environment:production"],
            }),
        ),
        (
            "uploader_principal_arns",
            json!({ "blog/staging": [BLOG_STAGING_CI] }),
        ),
        ("failure_topic_enabled", json!(true)),
        (
            "failure_notification_targets",
            json!([{ "arn": "arn:aws:sqs:eu-west-1:111122223333:ops", "role_arn": null }]),
        ),
    ]
}

struct Fixture {
    module: Module,
    eval: Eval,
}

fn fixture() -> Fixture {
    let module = Module::load();
    let eval = module.evaluator(&scenario());
    Fixture { module, eval }
}

fn owned(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn object_arn(key: &str) -> String {
    format!("{BUCKET_ARN}/{key}")
}

/// The (app, env) pairs of the scenario, as `ReleaseKey`s, from the module's own map.
fn pairs(f: &Fixture) -> Vec<(String, ReleaseKey)> {
    let app_envs = f.eval.local("app_envs");
    let map = app_envs.as_object().expect("local.app_envs is a map");
    assert_eq!(map.len(), 4, "two apps × two environments: {map:?}");
    map.iter()
        .map(|(k, v)| {
            let key = ReleaseKey::new(
                v["app"].as_str().expect("app"),
                v["env"].as_str().expect("env"),
            )
            .expect("valid names");
            assert_eq!(k, &format!("{}/{}", key.app(), key.env()));
            (k.clone(), key)
        })
        .collect()
}

/// The instance of a `for_each` block whose key is `key`.
fn instance(f: &Fixture, body: &hcl::Body, key: &str) -> Instance {
    f.eval
        .instances(body)
        .into_iter()
        .find(|i| i.key() == key)
        .unwrap_or_else(|| panic!("no instance with key {key}"))
}

/// A resource instance's evaluated attribute.
fn resource_attr(f: &Fixture, ty: &str, name: &str, key: Option<&str>, attribute: &str) -> String {
    let body = f.module.resource(ty, name);
    let inst = match key {
        Some(k) => instance(f, body, k),
        None => f.eval.instances(body).remove(0),
    };
    f.eval
        .at(&inst)
        .attr_text(body, attribute)
        .unwrap_or_else(|| panic!("{ty}.{name} has no {attribute}"))
}

/// All statements of the policies a role carries inline (`aws_iam_role_policy`), for the
/// role instance `key` (`None` for a single role).
fn inline_statements(f: &Fixture, role: &str, key: Option<&str>) -> Vec<Statement> {
    let mut out = Vec::new();
    for (name, body) in f.module.resources("aws_iam_role_policy") {
        for inst in f.eval.instances(body) {
            if key.is_some_and(|k| inst.key() != k) {
                continue;
            }
            let scope = f.eval.at(&inst);
            let role_ref = scope.attr_text(body, "role").expect("role");
            if referenced("aws_iam_role", &role_ref).as_deref() != Some(role) {
                continue;
            }
            let policy = scope.attr_text(body, "policy").expect("policy");
            let doc = referenced("aws_iam_policy_document", &policy).unwrap_or_else(|| {
                panic!("aws_iam_role_policy.{name}: policy must come from a data.aws_iam_policy_document, got {policy}")
            });
            // A per-pair document (`[each.key]`) is that pair's instance.
            let doc_body = f.module.data("aws_iam_policy_document", &doc);
            let mut doc_instances = f.eval.instances(doc_body);
            let doc_instance = match doc_instances.iter().position(|i| i.key() == inst.key()) {
                Some(i) => doc_instances.remove(i),
                None => doc_instances.remove(0),
            };
            out.extend(iam::document(&f.module, &f.eval, &doc, &doc_instance));
        }
    }
    out
}

/// Managed-policy attachments of a role (instance `key`), as evaluated `policy_arn`s.
fn attached_policy_arns(f: &Fixture, role: &str, key: Option<&str>) -> Vec<String> {
    let mut arns = Vec::new();
    for (_, body) in f.module.resources("aws_iam_role_policy_attachment") {
        for inst in f.eval.instances(body) {
            if key.is_some_and(|k| inst.key() != k) {
                continue;
            }
            let scope = f.eval.at(&inst);
            let role_ref = scope.attr_text(body, "role").expect("role");
            if referenced("aws_iam_role", &role_ref).as_deref() == Some(role) {
                arns.push(scope.attr_text(body, "policy_arn").expect("policy_arn"));
            }
        }
    }
    for (name, body) in f.module.resources("aws_iam_policy_attachment") {
        let roles = attr(body, "roles")
            .map(|e| f.eval.strings(e))
            .unwrap_or_default();
        assert!(
            !roles
                .iter()
                .any(|r| referenced("aws_iam_role", r).as_deref() == Some(role)),
            "aws_iam_policy_attachment.{name} is exclusive and attaches to role {role}; use aws_iam_role_policy_attachment"
        );
    }
    arns
}

/// The uploader policy statements of one (app, env).
fn uploader_statements(f: &Fixture, key: &str) -> Vec<Statement> {
    let body = f.module.data("aws_iam_policy_document", "uploader");
    iam::document(&f.module, &f.eval, "uploader", &instance(f, body, key))
}

/// Whether an uploader holding `policy` may do an action on a resource, and an action on the
/// bucket with an `s3:prefix`.
fn uploader_may(
    policy: &[Statement],
) -> (
    impl Fn(&str, &str) -> bool + '_,
    impl Fn(&str, &str) -> bool + '_,
) {
    const ME: &str = "arn:aws:iam::111122223333:role/uploader";
    (
        move |action: &str, resource: &str| allows(policy, &Request::new(ME, action, resource)),
        move |action: &str, prefix: &str| {
            allows(
                policy,
                &Request::new(ME, action, BUCKET_ARN).with("s3:prefix", &[prefix]),
            )
        },
    )
}

fn bucket_policy(f: &Fixture) -> Vec<Statement> {
    iam::single_document(&f.module, &f.eval, "artifacts_bucket")
}

fn lambda_role(f: &Fixture) -> String {
    let (_, function) = f.module.single("aws_lambda_function");
    referenced(
        "aws_iam_role",
        &f.eval.text(attr(function, "role").expect("role")),
    )
    .expect("function role is a module role")
}

fn granted_actions(statements: &[Statement]) -> BTreeSet<String> {
    statements
        .iter()
        .filter(|s| s.effect == iam::Effect::Allow)
        .flat_map(|s| s.actions.iter().cloned())
        .collect()
}

/// `None` when both sets are equal; otherwise a message naming what is missing and extra.
fn set_difference(
    what: &str,
    actual: &BTreeSet<String>,
    expected: &BTreeSet<String>,
    missing_means: &str,
    extra_means: &str,
) -> Option<String> {
    let missing: Vec<&String> = expected.difference(actual).collect();
    let extra: Vec<&String> = actual.difference(expected).collect();
    if missing.is_empty() && extra.is_empty() {
        return None;
    }
    Some(format!(
        "{what} differ:\n  missing ({missing_means}): {missing:?}\n  extra ({extra_means}): {extra:?}"
    ))
}

fn assert_same_actions(what: &str, granted: &BTreeSet<String>, called: &BTreeSet<String>) {
    if let Some(msg) = set_difference(
        what,
        granted,
        called,
        "called by the code, not granted by infra/",
        "granted by infra/, never called by the code",
    ) {
        panic!("{msg}");
    }
}

fn wildcard_actions(actions: &BTreeSet<String>) -> Vec<&String> {
    actions.iter().filter(|a| a.contains('*')).collect()
}

/// Matches an EventBridge pattern made of exact-value lists and nested objects (the only
/// forms dropship's rules use besides `wildcard`, checked separately).
fn pattern_matches(pattern: &Value, event: &Value) -> bool {
    match pattern {
        Value::Object(fields) => fields.iter().all(|(k, p)| match event.get(k) {
            Some(v) => pattern_matches(p, v),
            None => false,
        }),
        Value::Array(values) => values.iter().any(|v| match (v, event) {
            (Value::Object(filter), Value::String(text)) if filter.contains_key("wildcard") => {
                iam::glob(filter["wildcard"].as_str().expect("wildcard text"), text)
            }
            _ => v == event,
        }),
        other => panic!("unsupported pattern element {other}"),
    }
}

/// The `for_each` key a symbol names: `${aws_x.y["production"].arn}` → `production`.
fn symbol_key(value: &str) -> Option<String> {
    let start = value.find("[\"")? + 2;
    let end = start + value[start..].find("\"]")?;
    Some(value[start..end].to_string())
}

/// `local.environment_classes`: class → its environments.
fn classes(f: &Fixture) -> BTreeMap<String, Vec<String>> {
    serde_json::from_value(f.eval.local("environment_classes")).expect("class → environments")
}

/// Per environment class, its deployer function's environment as Terraform renders it.
fn lambda_envs(f: &Fixture) -> BTreeMap<String, serde_json::Map<String, Value>> {
    let (_, function) = f.module.single("aws_lambda_function");
    let env_block = blocks(function, "environment")
        .next()
        .expect("aws_lambda_function needs an environment block");
    let vars = attr(env_block.body(), "variables").expect("environment.variables");
    f.eval
        .instances(function)
        .into_iter()
        .map(|i| {
            let value = f.eval.at(&i).eval(vars);
            let map = value
                .as_object()
                .expect("environment.variables is an object")
                .clone();
            (i.key().to_string(), map)
        })
        .collect()
}

/// The deployer's own configuration parser over one function's rendered environment (the
/// bucket and document symbols replaced by the names the module gives them).
fn lambda_config(
    f: &Fixture,
    vars: &serde_json::Map<String, Value>,
) -> deployer_lambda::config::Config {
    let document = as_text(&vars["DROPSHIP_COMMAND_DOCUMENT"]);
    let class = symbol_key(&document).expect("the document of one class");
    assert_eq!(
        referenced("aws_ssm_document", &document).as_deref(),
        Some("deploy"),
        "DROPSHIP_COMMAND_DOCUMENT must name the module's document, got {document}"
    );
    let document_name = resource_attr(f, "aws_ssm_document", "deploy", Some(&class), "name");
    deployer_lambda::config::Config::from_lookup(|k| match k {
        "DROPSHIP_ALLOWED_BUCKETS" => Some("acme-artifacts".into()),
        "DROPSHIP_COMMAND_DOCUMENT" => Some(document_name.clone()),
        "AWS_REGION" => Some("eu-west-1".into()),
        "DROPSHIP_LOG_GROUP" => None,
        other => vars.get(other).map(as_text),
    })
    .unwrap_or_else(|e| panic!("the deployer refuses infra/'s environment {vars:?}: {e}"))
}

/// The deployer functions (by class) an event reaches: through every target of every rule
/// whose pattern matches it.
fn functions_reached(f: &Fixture, event: &Value) -> BTreeSet<String> {
    let mut matched = BTreeSet::new();
    for (name, body) in f.module.resources("aws_cloudwatch_event_rule") {
        for inst in f.eval.instances(body) {
            let Some(text) = f.eval.at(&inst).attr_text(body, "event_pattern") else {
                continue;
            };
            let pattern: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name}: event_pattern is not JSON ({e}): {text}"));
            if pattern_matches(&pattern, event) {
                let address = match (&inst.key, attr(body, "for_each")) {
                    (Some(k), Some(_)) => format!("aws_cloudwatch_event_rule.{name}[\"{k}\"]"),
                    (Some(k), None) => format!("aws_cloudwatch_event_rule.{name}[{k}]"),
                    (None, _) => format!("aws_cloudwatch_event_rule.{name}"),
                };
                matched.insert(symbol(&address, "name"));
            }
        }
    }
    let mut reached = BTreeSet::new();
    for (name, target) in f.module.resources("aws_cloudwatch_event_target") {
        for inst in f.eval.instances(target) {
            let scope = f.eval.at(&inst);
            let rule = scope.attr_text(target, "rule").expect("target rule");
            let arn = scope.attr_text(target, "arn").expect("target arn");
            if matched.contains(&rule) && referenced("aws_lambda_function", &arn).is_some() {
                reached.insert(symbol_key(&arn).unwrap_or_else(|| {
                    panic!("aws_cloudwatch_event_target.{name}: {arn} names no function class")
                }));
            }
        }
    }
    reached
}

fn s3_upload_event(key: &str) -> Value {
    json!({
        "source": "aws.s3", "detail-type": "Object Created",
        "detail": {"bucket": {"name": symbol("aws_s3_bucket.artifacts", "bucket")},
                   "object": {"key": key, "version-id": "v1"}}
    })
}

fn ssm_status_event(status: &str, document: &str) -> Value {
    use dropship_contract::events::{INVOCATION_STATUS_CHANGE, SSM_SOURCE};
    json!({
        "source": SSM_SOURCE, "detail-type": INVOCATION_STATUS_CHANGE,
        "detail": {"command-id": "c", "instance-id": "i-1", "document-name": document,
                   "requested-date-time": "2026-11-29T00:00:00.000Z", "status": status}
    })
}

/// The name symbol of one class's command document, as the rules see it.
fn document_symbol(class: &str) -> String {
    symbol(&format!("aws_ssm_document.deploy[\"{class}\"]"), "name")
}

// ----------------------------------------------------------------------------------------
// Contract values and the Lambda
// ----------------------------------------------------------------------------------------

#[test]
fn contract_prefixes_in_locals_match_the_key_module() {
    let f = fixture();
    for (local, expected) in [
        ("releases_prefix", RELEASES_PREFIX),
        ("bundle_suffix", BUNDLE_SUFFIX),
        ("records_prefix", RECORDS_PREFIX),
    ] {
        assert_eq!(
            as_text(&f.eval.local(local)),
            expected,
            "local.{local} must equal dropship_contract::key"
        );
    }
}

#[test]
fn release_rules_match_release_keys_of_the_artifact_bucket_only_one_rule_per_key() {
    let f = fixture();
    let (bucket, _) = f.module.single("aws_s3_bucket");
    let rule = f
        .module
        .resource("aws_cloudwatch_event_rule", "release_uploaded");
    let classes = classes(&f);
    let instances = f.eval.instances(rule);
    assert_eq!(
        instances
            .iter()
            .map(|i| i.key().to_string())
            .collect::<BTreeSet<_>>(),
        classes.keys().cloned().collect::<BTreeSet<_>>(),
        "one release rule per environment class"
    );
    for inst in instances {
        let class = inst.key().to_string();
        let pattern_text = f
            .eval
            .at(&inst)
            .attr_text(rule, "event_pattern")
            .expect("event_pattern");
        let pattern: Value = serde_json::from_str(&pattern_text)
            .unwrap_or_else(|e| panic!("event_pattern is not JSON ({e}): {pattern_text}"));

        assert_eq!(pattern["source"], json!(["aws.s3"]));
        assert_eq!(pattern["detail-type"], json!(["Object Created"]));

        let names = pattern["detail"]["bucket"]["name"]
            .as_array()
            .expect("detail.bucket.name");
        assert_eq!(names.len(), 1, "rule must match exactly one bucket");
        let name = as_text(&names[0]);
        assert!(
            [
                symbol(&format!("aws_s3_bucket.{bucket}"), "bucket"),
                symbol(&format!("aws_s3_bucket.{bucket}"), "id"),
            ]
            .contains(&name),
            "rule bucket must be the module's artifact bucket aws_s3_bucket.{bucket}, got {name}"
        );

        // One wildcard per environment of the class (filters of one field are OR-ed), each
        // the contract's prefix AND suffix around exactly that environment.
        let key_filters = pattern["detail"]["object"]["key"]
            .as_array()
            .expect("detail.object.key");
        let wildcards: Vec<&str> = key_filters
            .iter()
            .map(|k| {
                k["wildcard"]
                    .as_str()
                    .expect("key filter must be a wildcard (prefix AND suffix)")
            })
            .collect();
        let expected: Vec<String> = classes[&class]
            .iter()
            .map(|e| format!("{RELEASES_PREFIX}*/{e}{BUNDLE_SUFFIX}"))
            .collect();
        assert_eq!(wildcards, expected, "release rule of {class}");

        for (_, release) in pairs(&f) {
            let ours = classes[&class].iter().any(|e| e == release.env());
            assert_eq!(
                pattern_matches(&pattern, &s3_upload_event(&release.object_key())),
                ours,
                "release rule of {class} and {}",
                release.object_key()
            );
            for other in [
                release.record_key("3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"),
                release.latest_pointer_key(),
                format!("{RELEASES_PREFIX}{}/{}.tar", release.app(), release.env()),
                format!(
                    "{RELEASES_PREFIX}{}/pre-{}{BUNDLE_SUFFIX}",
                    release.app(),
                    release.env()
                ),
                format!("other/{}", release.object_key()),
            ] {
                assert!(
                    !pattern_matches(&pattern, &s3_upload_event(&other)),
                    "rule must not match {other}"
                );
            }
        }
    }
}

/// Isolation between environment classes: production's uploads and host results reach only
/// production's function, whose reserved concurrency is its own (Lambda reserves it for that
/// function and caps the function at it), and the non-production function acts on no
/// production environment whatever reaches it. A staging flood therefore runs in staging's
/// slots only: it can neither take production's nor make production's events queue.
#[test]
fn production_events_reach_only_the_production_function_whose_slots_are_its_own() {
    let f = fixture();
    let classes = classes(&f);
    assert_eq!(
        classes,
        BTreeMap::from([
            ("nonproduction".to_string(), vec!["staging".to_string()]),
            ("production".to_string(), vec!["production".to_string()]),
        ]),
        "the scenario's environments, production_environments' default"
    );
    let class_of = |env: &str| {
        classes
            .iter()
            .find(|(_, envs)| envs.iter().any(|e| e == env))
            .map(|(c, _)| c.clone())
            .expect("every environment has a class")
    };
    // Release uploads: each key reaches its class's function only.
    for (_, release) in pairs(&f) {
        assert_eq!(
            functions_reached(&f, &s3_upload_event(&release.object_key())),
            BTreeSet::from([class_of(release.env())]),
            "{}",
            release.object_key()
        );
    }
    // Host results: of the class's own document only; anyone else's shell commands reach
    // no deployer at all.
    for class in classes.keys() {
        assert_eq!(
            functions_reached(&f, &ssm_status_event("Failed", &document_symbol(class))),
            BTreeSet::from([class.clone()])
        );
    }
    for other in [RUN_SHELL_SCRIPT, "AWS-RunPowerShellScript", "team-tooling"] {
        assert!(
            functions_reached(&f, &ssm_status_event("Success", other)).is_empty(),
            "status changes of {other} must reach no deployer"
        );
    }
    // Each function's slots: reserved per function (a guarantee and a cap), at least one by
    // default, and its allow-list is its class's environments only.
    let (_, function) = f.module.single("aws_lambda_function");
    let envs = lambda_envs(&f);
    for inst in f.eval.instances(function) {
        let class = inst.key().to_string();
        let reserved = f
            .eval
            .at(&inst)
            .eval(attr(function, "reserved_concurrent_executions").expect("reserved concurrency"));
        assert!(
            reserved.as_i64().is_some_and(|n| n >= 1),
            "{class}'s function must reserve its own slots by default, got {reserved}"
        );
        let config = lambda_config(&f, &envs[&class]);
        for (other, other_envs) in classes.iter().filter(|(c, _)| **c != class) {
            for e in other_envs {
                assert!(
                    !config.env_allowed(e),
                    "{class}'s function must refuse {other}'s environment {e}"
                );
            }
        }
    }
    // Reserved concurrency is set per class, and zero (which would stop a class) is refused.
    assert!(validation_accepts(
        "lambda_reserved_concurrency",
        "lambda_reserved_concurrency values",
        json!({"production": 10, "nonproduction": 2})
    ));
    assert!(!validation_accepts(
        "lambda_reserved_concurrency",
        "lambda_reserved_concurrency values",
        json!({"production": 0, "nonproduction": 2})
    ));
}

/// A rule's event pattern, parsed (`key`: the instance of a per-class rule).
fn rule_pattern(f: &Fixture, name: &str, key: Option<&str>) -> Value {
    let text = resource_attr(f, "aws_cloudwatch_event_rule", name, key, "event_pattern");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{name}: event_pattern is not JSON ({e}): {text}"))
}

#[test]
fn fleet_rules_match_the_events_the_lambda_acts_on_and_reach_it() {
    use dropship_contract::events::{EC2_SOURCE, INSTANCE_STATE_CHANGE, TERMINAL_STATUSES};
    let f = fixture();
    // Host results: every terminal status of the contract, nothing else, of the class's own
    // command document only.
    let classes = classes(&f);
    for class in classes.keys() {
        let pattern = rule_pattern(&f, "host_finished", Some(class));
        let ours = document_symbol(class);
        for status in TERMINAL_STATUSES {
            assert!(
                pattern_matches(&pattern, &ssm_status_event(status, &ours)),
                "host_finished of {class} must match status {status}"
            );
        }
        for status in ["Pending", "InProgress", "Delayed", "Cancelling"] {
            assert!(
                !pattern_matches(&pattern, &ssm_status_event(status, &ours)),
                "host_finished must not match {status}"
            );
        }
        for other in classes
            .keys()
            .filter(|c| *c != class)
            .map(|c| document_symbol(c))
            .chain([
                RUN_SHELL_SCRIPT.to_string(),
                "AWS-RunPowerShellScript".to_string(),
            ])
        {
            assert!(
                !pattern_matches(&pattern, &ssm_status_event("Success", &other)),
                "host_finished of {class} must not match document {other}"
            );
        }
    }
    // Instances starting: running only.
    let pattern = rule_pattern(&f, "instance_running", None);
    let ec2_event = |state: &str| {
        json!({"source": EC2_SOURCE, "detail-type": INSTANCE_STATE_CHANGE,
               "detail": {"instance-id": "i-1", "state": state}})
    };
    assert!(pattern_matches(&pattern, &ec2_event("running")));
    for state in [
        "pending",
        "stopping",
        "stopped",
        "shutting-down",
        "terminated",
    ] {
        assert!(!pattern_matches(&pattern, &ec2_event(state)), "{state}");
    }

    // The reconcile: a schedule within the documented bound.
    let reconcile = f.module.resource("aws_cloudwatch_event_rule", "reconcile");
    let schedule = f
        .eval
        .text(attr(reconcile, "schedule_expression").expect("schedule_expression"));
    assert_eq!(schedule, "rate(5 minutes)", "default reconcile period");

    // Each rule reaches the functions it is for, each of which lets exactly that rule
    // invoke it: a class's host results its own function, instance starts every function.
    for class in classes.keys() {
        assert_eq!(
            functions_reached(&f, &ssm_status_event("Success", &document_symbol(class))),
            BTreeSet::from([class.clone()]),
        );
    }
    assert_eq!(
        functions_reached(&f, &ec2_event("running")),
        classes.keys().cloned().collect::<BTreeSet<_>>()
    );
    let permission = f.module.resource("aws_lambda_permission", "events");
    let targets = f.module.resource("aws_cloudwatch_event_target", "deployer");
    let (target_instances, permission_instances) =
        (f.eval.instances(targets), f.eval.instances(permission));
    assert_eq!(target_instances.len(), permission_instances.len());
    for (t, p) in target_instances.iter().zip(&permission_instances) {
        let (ts, ps) = (f.eval.at(t), f.eval.at(p));
        assert_eq!(
            ps.attr_text(permission, "principal").as_deref(),
            Some("events.amazonaws.com")
        );
        let rule = ts.attr_text(targets, "rule").expect("rule");
        assert_eq!(
            ps.attr_text(permission, "source_arn"),
            Some(rule.replace(".name}", ".arn}")),
            "the permission of target {} admits exactly its rule",
            t.key()
        );
        let function = ts.attr_text(targets, "arn").expect("arn");
        assert_eq!(
            ps.attr_text(permission, "function_name"),
            Some(function.replace(".arn}", ".function_name}")),
            "the permission of target {} is on its own function",
            t.key()
        );
    }
    let reconcile_targets: BTreeSet<String> = target_instances
        .iter()
        .filter(|t| {
            f.eval.at(t).attr_text(targets, "rule")
                == Some(symbol("aws_cloudwatch_event_rule.reconcile", "name"))
        })
        .filter_map(|t| symbol_key(&f.eval.at(t).attr_text(targets, "arn").unwrap()))
        .collect();
    assert_eq!(
        reconcile_targets,
        classes.keys().cloned().collect::<BTreeSet<_>>(),
        "the reconcile reaches every function"
    );
}

#[test]
fn rule_targets_and_async_invocations_lose_no_event() {
    let f = fixture();
    let (function, _) = f.module.single("aws_lambda_function");
    let target = f.module.resource("aws_cloudwatch_event_target", "deployer");
    for inst in f.eval.instances(target) {
        let arn = f
            .eval
            .at(&inst)
            .attr_text(target, "arn")
            .expect("target arn");
        assert_eq!(
            referenced("aws_lambda_function", &arn).as_deref(),
            Some(function)
        );
    }

    // Every rule target (deploys and failure notifications) retries and keeps what it could
    // not deliver in a module queue whose policy admits exactly the module's rules.
    let mut rules_with_targets = BTreeSet::new();
    for (name, target) in f.module.resources("aws_cloudwatch_event_target") {
        for inst in f.eval.instances(target) {
            let scope = f.eval.at(&inst);
            assert_eq!(
                blocks(target, "retry_policy").count(),
                1,
                "aws_cloudwatch_event_target.{name} needs a retry_policy"
            );
            let dlq = blocks(target, "dead_letter_config")
                .next()
                .unwrap_or_else(|| panic!("aws_cloudwatch_event_target.{name} needs a DLQ"));
            let dlq_arn = scope.attr_text(dlq.body(), "arn").expect("dlq arn");
            assert_eq!(
                referenced("aws_sqs_queue", &dlq_arn).as_deref(),
                Some("events_dlq"),
                "aws_cloudwatch_event_target.{name}: DLQ must be the module's events queue"
            );
            let rule = scope.attr_text(target, "rule").expect("rule");
            assert!(
                referenced("aws_cloudwatch_event_rule", &rule).is_some(),
                "target {name}: rule {rule}"
            );
            rules_with_targets.insert(rule.replace(".name}", ".arn}"));
        }
    }
    assert!(rules_with_targets.len() >= 6, "{rules_with_targets:?}");
    let dlq_policy = iam::single_document(&f.module, &f.eval, "events_dlq");
    for rule_arn in &rules_with_targets {
        let send = Request::new(
            "events.amazonaws.com",
            "sqs:SendMessage",
            "${aws_sqs_queue.events_dlq.arn}",
        )
        .with("aws:SourceArn", &[rule_arn]);
        assert!(
            decide(&dlq_policy, &send) == Decision::Allowed,
            "the events DLQ must accept dead letters of rule {rule_arn}"
        );
    }
    let foreign = Request::new(
        "events.amazonaws.com",
        "sqs:SendMessage",
        "${aws_sqs_queue.events_dlq.arn}",
    )
    .with(
        "aws:SourceArn",
        &["arn:aws:events:eu-west-1:111122223333:rule/other"],
    );
    assert!(!allows(&dlq_policy, &foreign), "DLQ open to other rules");

    let (_, invoke) = f.module.single("aws_lambda_function_event_invoke_config");
    let on_failure = blocks(invoke, "destination_config")
        .flat_map(|d| blocks(d.body(), "on_failure").collect::<Vec<_>>())
        .next()
        .expect("async invoke config needs an on_failure destination");
    let dest = f
        .eval
        .text(attr(on_failure.body(), "destination").expect("destination"));
    assert!(
        referenced("aws_sqs_queue", &dest).is_some(),
        "on-failure destination must be an SQS queue of the module, got {dest}"
    );

    for (name, queue) in f.module.resources("aws_sqs_queue") {
        let sse = attr(queue, "sqs_managed_sse_enabled").map(|e| f.eval.eval(e));
        let kms = attr(queue, "kms_master_key_id");
        assert!(
            sse == Some(Value::Bool(true)) || kms.is_some(),
            "aws_sqs_queue.{name} must be encrypted"
        );
    }
}

#[test]
fn lambda_environment_is_exactly_what_the_lambda_reads() {
    let f = fixture();
    let (bucket, _) = f.module.single("aws_s3_bucket");
    let classes = classes(&f);
    let envs_by_class = lambda_envs(&f);
    assert_eq!(
        envs_by_class.keys().collect::<Vec<_>>(),
        classes.keys().collect::<Vec<_>>(),
        "one function per environment class"
    );
    let mut served = BTreeSet::new();
    for (class, vars) in &envs_by_class {
        let set: BTreeSet<String> = vars.keys().cloned().collect();
        if let Some(msg) = set_difference(
            "Lambda environment variables",
            &set,
            &owned(deployer_lambda::config::ENV_VARS),
            "read by deployer_lambda::config, not set by infra/",
            "set by infra/, never read",
        ) {
            panic!("{class}: {msg}");
        }

        let value = |name: &str| as_text(&vars[name]);
        // Where releases and records live is the contract's, not configuration: the Lambda
        // reads no prefix variable (the set above is exactly what it reads), and the locals
        // the rule and the policies use equal the contract
        // (contract_prefixes_in_locals_match_the_key_module).
        assert!(
            !set.iter().any(|v| v.ends_with("_PREFIX")),
            "no prefix variables: {set:?}"
        );
        assert_eq!(
            referenced("aws_s3_bucket", &value("DROPSHIP_ALLOWED_BUCKETS")).as_deref(),
            Some(bucket),
            "DROPSHIP_ALLOWED_BUCKETS must be the artifact bucket"
        );
        assert_eq!(
            value("DROPSHIP_APP_TAG_KEY"),
            deployer_lambda::config::DEFAULT_APP_TAG_KEY
        );
        assert_eq!(
            value("DROPSHIP_ENV_TAG_KEY"),
            deployer_lambda::config::DEFAULT_ENV_TAG_KEY
        );
        assert!(
            referenced("aws_cloudwatch_log_group", &value("DROPSHIP_LOG_GROUP")).is_some(),
            "DROPSHIP_LOG_GROUP must name the module's command-output log group"
        );
        assert_eq!(
            value("DROPSHIP_COMMAND_DOCUMENT"),
            document_symbol(class),
            "{class}'s function sends its own class's command document"
        );
        // The allow-lists are exactly the module's apps and the class's environments, and
        // the Lambda's own parser reads them so (events for anything else are refused
        // before any S3 read).
        let config = lambda_config(&f, vars);
        assert_eq!(
            config.command_document,
            format!("dropship{COMMAND_DOCUMENT_INFIX}{class}")
        );
        for (_, release) in &pairs(&f) {
            assert!(
                config.app_allowed(release.app()),
                "{class} lacks {}",
                release.app()
            );
            let ours = classes[class].iter().any(|e| e == release.env());
            assert_eq!(
                config.env_allowed(release.env()),
                ours,
                "{class}'s function and environment {}",
                release.env()
            );
            if ours {
                served.insert(release.env().to_string());
            }
        }
        assert!(!config.app_allowed("not-in-the-module"));
        assert!(!config.env_allowed("not-in-the-module"));
    }
    let all: BTreeSet<String> = pairs(&f).iter().map(|(_, r)| r.env().to_string()).collect();
    assert_eq!(served, all, "every environment has a function");
}

#[test]
fn lambda_requires_each_app_and_envs_own_instance_profile_which_the_module_creates() {
    let f = fixture();
    // The Lambda's own parser accepts what Terraform renders, for every function alike.
    let configs: Vec<_> = lambda_envs(&f)
        .values()
        .map(|vars| lambda_config(&f, vars))
        .collect();
    assert!(configs
        .iter()
        .all(|c| c.instance_profile_arn == configs[0].instance_profile_arn));
    let config = &configs[0];

    let (profile_name, _) = f.module.single("aws_iam_instance_profile");
    let mut seen = BTreeSet::new();
    for (k, key) in pairs(&f) {
        let name = resource_attr(
            &f,
            "aws_iam_instance_profile",
            profile_name,
            Some(&k),
            "name",
        );
        let expected = format!("arn:{PARTITION}:iam::{ACCOUNT_ID}:instance-profile/{name}");
        assert_eq!(
            config.instance_profile_arn_for(key.app(), key.env()),
            expected.clone(),
            "the profile the Lambda requires of {k}'s hosts must be the one the module creates for {k}"
        );
        assert!(
            seen.insert(expected),
            "{k} shares its profile with another pair"
        );

        // Its role is the pair's own host role.
        let role = resource_attr(
            &f,
            "aws_iam_instance_profile",
            profile_name,
            Some(&k),
            "role",
        );
        assert_eq!(role, format!("${{aws_iam_role.host[\"{k}\"].name}}"));
    }
}

#[test]
fn lambda_role_grants_exactly_the_calls_the_lambda_makes() {
    let f = fixture();
    let role = lambda_role(&f);
    let attached = attached_policy_arns(&f, &role, None);
    assert!(
        attached.is_empty(),
        "the Lambda role must carry only inline policies checked here, found attachments: {attached:?}"
    );
    assert!(
        blocks(f.module.resource("aws_iam_role", &role), "inline_policy")
            .next()
            .is_none(),
        "no inline_policy blocks on the Lambda role"
    );

    let statements = inline_statements(&f, &role, None);
    let granted = granted_actions(&statements);
    assert!(
        wildcard_actions(&granted).is_empty(),
        "wildcard actions on the Lambda role: {:?}",
        wildcard_actions(&granted)
    );
    let mut expected = owned(deployer_lambda::aws_calls::IAM_ACTIONS);
    expected.extend(owned(deployer_lambda::aws_calls::PLATFORM_ACTIONS));
    expected.extend(owned(ASYNC_DESTINATION_ACTIONS));
    assert_same_actions("Lambda role actions", &granted, &expected);

    // Log writes reach only the functions' own log groups, every one of them.
    let (_, function) = f.module.single("aws_lambda_function");
    let function_logs: BTreeSet<String> = f
        .eval
        .instances(function)
        .iter()
        .map(|i| {
            let name = f.eval.at(i).attr_text(function, "function_name");
            format!("/aws/lambda/{}", name.expect("function_name"))
        })
        .collect();
    let mut granted_groups = BTreeSet::new();
    for st in statements
        .iter()
        .filter(|s| s.actions.iter().any(|a| a.starts_with("logs:")))
    {
        assert!(
            st.actions.iter().all(|a| a.starts_with("logs:")),
            "statement {:?}: keep logs actions in statements of their own",
            st.sid
        );
        for r in &st.resources {
            let group = r
                .strip_suffix(":*")
                .and_then(|g| referenced("aws_cloudwatch_log_group", g))
                .unwrap_or_else(|| {
                    panic!(
                        "statement {:?}: logs only on a module log group's streams, got {r}",
                        st.sid
                    )
                });
            let group_name = resource_attr(
                &f,
                "aws_cloudwatch_log_group",
                &group,
                symbol_key(r).as_deref(),
                "name",
            );
            assert!(
                function_logs.contains(&group_name),
                "statement {:?}: logs only on the Lambdas' own log groups {function_logs:?}, got {group_name}",
                st.sid
            );
            granted_groups.insert(group_name);
        }
    }
    assert_eq!(
        granted_groups, function_logs,
        "every function may write its logs"
    );

    // The platform-only grant reaches nothing but the on-failure destination queue.
    let (_, invoke) = f.module.single("aws_lambda_function_event_invoke_config");
    let dest = blocks(invoke, "destination_config")
        .flat_map(|d| blocks(d.body(), "on_failure").collect::<Vec<_>>())
        .filter_map(|x| attr(x.body(), "destination").map(|e| f.eval.text(e)))
        .next()
        .expect("on_failure destination");
    let dest_queue = referenced("aws_sqs_queue", &dest).expect("destination queue");
    for st in statements
        .iter()
        .filter(|s| s.actions.iter().any(|a| a.starts_with("sqs:")))
    {
        for r in &st.resources {
            assert_eq!(
                referenced("aws_sqs_queue", r).as_deref(),
                Some(dest_queue.as_str()),
                "statement {:?}: sqs actions only on the on-failure queue",
                st.sid
            );
        }
    }
}

#[test]
fn lambda_writes_only_deploy_records_and_cannot_touch_what_it_must_not() {
    let f = fixture();
    let role = lambda_role(&f);
    let lambda = inline_statements(&f, &role, None);
    let key = ReleaseKey::new("shop", "production").expect("valid");
    let me = symbol(&format!("aws_iam_role.{role}"), "arn");

    let may = |action: &str, resource: &str| allows(&lambda, &Request::new(&me, action, resource));
    assert!(may("s3:GetObjectVersion", &object_arn(&key.object_key())));
    assert!(may("s3:PutObject", &object_arn(&key.latest_pointer_key())));
    assert!(may("s3:PutObject", &object_arn(&key.record_key("v1"))));
    for (action, resource) in [
        ("s3:PutObject", object_arn(&key.object_key())),
        ("s3:DeleteObject", object_arn(&key.record_key("v1"))),
        ("s3:DeleteObjectVersion", object_arn(&key.object_key())),
        ("s3:PutBucketPolicy", BUCKET_ARN.to_string()),
        ("s3:PutLifecycleConfiguration", BUCKET_ARN.to_string()),
        ("iam:PassRole", "*".to_string()),
        ("ec2:CreateTags", "*".to_string()),
        (
            "ssm:SendCommand",
            "arn:aws:ssm:eu-west-1::document/AWS-RunPowerShellScript".to_string(),
        ),
    ] {
        assert!(
            !may(action, &resource),
            "the Lambda role may {action} on {resource}"
        );
    }
    // And the bucket itself refuses the Lambda every write but records.
    let bucket = bucket_policy(&f);
    assert!(denies(
        &bucket,
        &Request::new(&me, "s3:PutObject", &object_arn(&key.object_key()))
    ));
    assert!(!denies(
        &bucket,
        &Request::new(&me, "s3:PutObject", &object_arn(&key.latest_pointer_key()))
    ));
}

#[test]
fn send_command_is_only_dropships_documents_on_instances_with_the_lambdas_tags() {
    let f = fixture();
    let role = lambda_role(&f);
    let statements = inline_statements(&f, &role, None);
    let send: Vec<&Statement> = statements
        .iter()
        .filter(|s| s.actions.iter().any(|a| a == "ssm:SendCommand"))
        .collect();
    assert!(!send.is_empty(), "ssm:SendCommand must be granted");

    let expected_tag_vars: BTreeSet<String> = [
        deployer_lambda::config::DEFAULT_APP_TAG_KEY,
        deployer_lambda::config::DEFAULT_ENV_TAG_KEY,
    ]
    .iter()
    .map(|k| format!("ssm:resourceTag/{k}"))
    .collect();

    let (mut saw_document, mut saw_instances) = (false, false);
    for st in send {
        assert_eq!(
            st.actions,
            vec!["ssm:SendCommand".to_string()],
            "statement {:?}: keep SendCommand in statements of its own",
            st.sid
        );
        for r in &st.resources {
            assert!(r != "*", "statement {:?}: SendCommand on \"*\"", st.sid);
            if referenced("aws_ssm_document", r).is_some() {
                assert_eq!(
                    referenced("aws_ssm_document", r).as_deref(),
                    Some("deploy"),
                    "statement {:?}: only the module's command documents, got {r}",
                    st.sid
                );
                saw_document = true;
            } else if r.contains(":instance/") {
                let tag_vars: BTreeSet<String> = st
                    .conditions
                    .iter()
                    .filter(|c| c.variable.starts_with("ssm:resourceTag/"))
                    .inspect(|c| {
                        assert_eq!(c.test, "StringEquals", "tag condition {}", c.variable);
                        assert!(
                            !c.values.is_empty(),
                            "tag condition {} has no values",
                            c.variable
                        );
                    })
                    .map(|c| c.variable.clone())
                    .collect();
                if let Some(msg) = set_difference(
                    "SendCommand instance tag conditions",
                    &tag_vars,
                    &expected_tag_vars,
                    "tag the Lambda selects by, not required by IAM",
                    "tag required by IAM, not what the Lambda selects by",
                ) {
                    panic!("statement {:?}: {msg}", st.sid);
                }
                saw_instances = true;
            } else {
                panic!(
                    "statement {:?}: SendCommand on unexpected resource {r}",
                    st.sid
                );
            }
        }
    }
    assert!(saw_document, "no SendCommand statement on the document");
    assert!(
        saw_instances,
        "no SendCommand statement on tagged instances"
    );

    // Only the configured apps and environments, as tags on the instance.
    let me = symbol(&format!("aws_iam_role.{role}"), "arn");
    let instance = "arn:aws:ec2:eu-west-1:111122223333:instance/i-0abc";
    let send_to = |app: &str, env: &str| {
        allows(
            &statements,
            &Request::new(&me, "ssm:SendCommand", instance)
                .with("ssm:resourceTag/dropship:app", &[app])
                .with("ssm:resourceTag/dropship:env", &[env]),
        )
    };
    assert!(send_to("shop", "production"));
    assert!(!send_to("other-app", "production"));
    assert!(!send_to("shop", "qa"));

    // Only the module's own documents, one per class: never AWS-RunShellScript (whose status
    // changes from anyone's commands no rule matches) nor any other document.
    let send_doc = |document_arn: &str| {
        allows(
            &statements,
            &Request::new(&me, "ssm:SendCommand", document_arn),
        )
    };
    for class in classes(&f).keys() {
        let arn = symbol(&format!("aws_ssm_document.deploy[\"{class}\"]"), "arn");
        assert!(send_doc(&arn), "the deployer must send {class}'s document");
    }
    for other in [
        format!("arn:aws:ssm:eu-west-1::document/{RUN_SHELL_SCRIPT}"),
        "arn:aws:ssm:eu-west-1::document/AWS-RunPowerShellScript".to_string(),
        format!("arn:aws:ssm:eu-west-1:{ACCOUNT_ID}:document/dropship-deploy-other"),
    ] {
        assert!(!send_doc(&other), "the deployer may send {other}");
    }
}

#[test]
fn the_command_document_is_one_shell_step_fed_by_what_the_lambda_sends() {
    use dropship_contract::wiring::{COMMAND_PARAMETERS, COMMAND_STEP};
    let f = fixture();
    let body = f.module.resource("aws_ssm_document", "deploy");
    let instances = f.eval.instances(body);
    assert_eq!(
        instances
            .iter()
            .map(|i| i.key().to_string())
            .collect::<BTreeSet<_>>(),
        classes(&f).keys().cloned().collect::<BTreeSet<_>>(),
        "one document per environment class"
    );
    for inst in instances {
        let scope = f.eval.at(&inst);
        let class = inst.key();
        assert_eq!(
            scope.attr_text(body, "name"),
            Some(format!("dropship{COMMAND_DOCUMENT_INFIX}{class}"))
        );
        assert!(dropship_contract::wiring::is_own_document_name(
            &scope.attr_text(body, "name").unwrap()
        ));
        assert_eq!(
            scope.attr_text(body, "document_type").as_deref(),
            Some("Command")
        );
        assert_eq!(
            scope.attr_text(body, "document_format").as_deref(),
            Some("JSON")
        );
        let content = scope.attr_text(body, "content").expect("content");
        // The suites create the same document on their SSM endpoint.
        assert_eq!(content, dropship_tests::local_ssm::DEPLOY_DOCUMENT_CONTENT);
        let doc: Value = serde_json::from_str(&content).expect("JSON document");
        assert_eq!(doc["schemaVersion"], "2.2");
        let params: BTreeSet<String> = doc["parameters"]
            .as_object()
            .expect("parameters")
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            params,
            owned(&COMMAND_PARAMETERS),
            "what the deployer sends"
        );
        assert_eq!(doc["parameters"]["commands"]["type"], "StringList");
        assert_eq!(doc["parameters"]["executionTimeout"]["type"], "String");
        let steps = doc["mainSteps"].as_array().expect("mainSteps");
        assert_eq!(steps.len(), 1, "one step");
        assert_eq!(steps[0]["action"], "aws:runShellScript");
        assert_eq!(
            steps[0]["name"], COMMAND_STEP,
            "SSM names the plugin and the output's log streams after the step"
        );
        assert_eq!(steps[0]["inputs"]["runCommand"], "{{ commands }}");
        assert_eq!(
            steps[0]["inputs"]["timeoutSeconds"],
            "{{ executionTimeout }}"
        );
    }
}

// ----------------------------------------------------------------------------------------
// Uploaders and CI: per (app, env), exact key, separate trust
// ----------------------------------------------------------------------------------------

#[test]
fn uploader_policy_grants_exactly_the_calls_the_bundler_makes() {
    let f = fixture();
    let policies = f.module.resources("aws_iam_policy");
    assert_eq!(
        policies.len(),
        1,
        "infra/ must define one (per-pair) uploader aws_iam_policy"
    );
    let (name, body) = policies[0];
    assert_eq!(
        attr(body, "for_each").map(|e| hcl::format::to_string(e).unwrap_or_default()),
        Some("local.app_envs".to_string()),
        "aws_iam_policy.{name}: one uploader policy per (app, env)"
    );
    for (k, _) in pairs(&f) {
        let statements = uploader_statements(&f, &k);
        let granted = granted_actions(&statements);
        assert!(
            wildcard_actions(&granted).is_empty(),
            "wildcard actions in the uploader policy: {:?}",
            wildcard_actions(&granted)
        );
        assert_same_actions(
            "Uploader policy actions",
            &granted,
            &owned(dropship_bundler::aws_calls::IAM_ACTIONS)
                .union(&owned(dropship_operator::aws_calls::IAM_ACTIONS))
                .cloned()
                .collect(),
        );
        let policy = resource_attr(&f, "aws_iam_policy", name, Some(&k), "policy");
        assert_eq!(
            policy,
            format!("${{data.aws_iam_policy_document.uploader[\"{k}\"].json}}"),
            "aws_iam_policy.{name}[{k}] must carry the uploader document of the same pair"
        );
    }
}

#[test]
fn uploader_rights_are_the_exact_release_key_of_one_app_and_env() {
    let f = fixture();
    let all = pairs(&f);
    for (k, own) in &all {
        let policy = uploader_statements(&f, k);
        let (may, may_list) = uploader_may(&policy);

        // Upload, restore (CopyObject = GetObjectVersion on the source version + PutObject
        // on the key), versions, status and --wait.
        assert!(
            may("s3:PutObject", &object_arn(&own.object_key())),
            "{k}: upload"
        );
        assert!(may(
            "s3:AbortMultipartUpload",
            &object_arn(&own.object_key())
        ));
        assert!(
            may("s3:GetObjectVersion", &object_arn(&own.object_key())),
            "{k}: restore source"
        );
        assert!(
            may("s3:GetObject", &object_arn(&own.record_key("v1"))),
            "{k}: read records"
        );
        assert!(may("s3:GetObject", &object_arn(&own.latest_pointer_key())));
        assert!(
            may_list("s3:ListBucketVersions", &own.object_key()),
            "{k}: versions"
        );
        assert!(
            may_list("s3:ListBucket", &own.records_prefix()),
            "{k}: list records"
        );
        assert!(
            may_list("s3:ListBucket", &own.record_key("v1")),
            "{k}: find one record"
        );
        assert!(may("s3:GetBucketVersioning", BUCKET_ARN));

        // Nothing of any other pair (reads of its promotion source apart: see
        // `promote_reads_only_the_source_pair_and_writes_only_its_own_key`), no other key
        // under its own app, no records writes.
        for (other_k, other) in all.iter().filter(|(o, _)| o != k) {
            assert!(
                !may("s3:PutObject", &object_arn(&other.object_key())),
                "{k}'s uploader may write {other_k}'s release key"
            );
            if promotion_source(own).as_ref() == Some(other) {
                continue;
            }
            for action in ["s3:GetObjectVersion", "s3:GetObject"] {
                assert!(
                    !may(action, &object_arn(&other.object_key())),
                    "{k}'s uploader may {action} {other_k}'s release key"
                );
            }
            assert!(!may("s3:GetObject", &object_arn(&other.record_key("v1"))));
            assert!(!may_list("s3:ListBucketVersions", &other.object_key()));
            assert!(!may_list("s3:ListBucket", &other.records_prefix()));
        }
        let app_prefix = format!("{RELEASES_PREFIX}{}/", own.app());
        for stray in [
            format!("{app_prefix}other.tar.gz"),
            format!("{app_prefix}{}-copy{BUNDLE_SUFFIX}", own.env()),
        ] {
            assert!(
                !may("s3:PutObject", &object_arn(&stray)),
                "{k} may write {stray}"
            );
        }
        assert!(
            !may_list("s3:ListBucketVersions", &app_prefix),
            "{k} lists the whole app"
        );
        assert!(!may_list(
            "s3:ListBucket",
            &format!("{RECORDS_PREFIX}{}/", own.app())
        ));
        for action in ["s3:PutObject", "s3:DeleteObject"] {
            assert!(
                !may(action, &object_arn(&own.latest_pointer_key())),
                "{k} may {action} records"
            );
        }
        for (action, resource) in [
            ("s3:DeleteObject", object_arn(&own.object_key())),
            ("s3:DeleteObjectVersion", object_arn(&own.object_key())),
            ("s3:PutBucketVersioning", BUCKET_ARN.to_string()),
            ("s3:PutLifecycleConfiguration", BUCKET_ARN.to_string()),
            ("ssm:SendCommand", "*".to_string()),
            ("iam:PassRole", "*".to_string()),
            ("ec2:CreateTags", "*".to_string()),
        ] {
            assert!(
                !may(action, &resource),
                "{k}'s uploader may {action} on {resource}"
            );
        }
    }
}

/// The default promotion path: each environment from the one listed before it
/// (`staging` -> `production`).
fn promotion_source(to: &ReleaseKey) -> Option<ReleaseKey> {
    (to.env() == "production").then(|| ReleaseKey::new(to.app(), "staging").expect("valid"))
}

/// `dropship promote <from> <to>` is CopyObject of a version of the source key onto the target
/// key, after reading the source's history and deploy records: the target pair's uploader may
/// do exactly that (GetObjectVersion on the source, PutObject on its own key) and nothing more
/// across environments; the source pair gets nothing of the target; `promotions = {}` turns
/// every cross-environment right off, and a custom map moves it.
#[test]
fn promote_reads_only_the_source_pair_and_writes_only_its_own_key() {
    let check = |f: &Fixture, sources: &dyn Fn(&ReleaseKey) -> Option<ReleaseKey>| {
        let all = pairs(f);
        for (k, own) in &all {
            let policy = uploader_statements(f, k);
            let (may, may_list) = uploader_may(&policy);
            let source = sources(own);
            for (other_k, other) in all.iter().filter(|(o, _)| o != k) {
                let is_source = source.as_ref() == Some(other);
                let reads = [
                    may("s3:GetObjectVersion", &object_arn(&other.object_key())),
                    may("s3:GetObject", &object_arn(&other.object_key())),
                    may("s3:GetObject", &object_arn(&other.record_key("v1"))),
                    may("s3:GetObject", &object_arn(&other.latest_pointer_key())),
                    may_list("s3:ListBucketVersions", &other.object_key()),
                    may_list("s3:ListBucket", &other.records_prefix()),
                ];
                assert_eq!(
                    reads, [is_source; 6],
                    "{k}'s uploader reading {other_k} (promotion source: {is_source})"
                );
                for action in ["s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion"] {
                    assert!(
                        !may(action, &object_arn(&other.object_key())),
                        "{k} may {action} {other_k}'s key"
                    );
                    assert!(!may(action, &object_arn(&other.record_key("v1"))));
                }
                // Only the source key's own history, not the app's keys at large.
                assert!(!may_list(
                    "s3:ListBucketVersions",
                    &format!("{RELEASES_PREFIX}{}/", other.app())
                ));
            }
            // The copy's destination: its own key.
            assert!(may("s3:PutObject", &object_arn(&own.object_key())));
        }
    };
    check(&fixture(), &promotion_source);

    let module = Module::load();
    let mut off = scenario();
    off.push(("promotions", json!({})));
    check(
        &Fixture {
            eval: module.evaluator(&off),
            module,
        },
        &|_| None,
    );

    let module = Module::load();
    let mut reversed = scenario();
    reversed.push((
        "promotions",
        json!({ "staging": "production", "qa": "staging" }),
    ));
    check(
        &Fixture {
            eval: module.evaluator(&reversed),
            module,
        },
        &|to: &ReleaseKey| {
            (to.env() == "staging").then(|| ReleaseKey::new(to.app(), "production").unwrap())
        },
    );
}

#[test]
fn each_github_role_trusts_one_github_environment_and_carries_its_pairs_policy() {
    let f = fixture();
    let trust = f.module.data("aws_iam_policy_document", "github_assume");
    let subjects = scenario()
        .into_iter()
        .find(|(k, _)| *k == "github_oidc_subjects")
        .map(|(_, v)| v)
        .expect("scenario subjects");
    let subjects = subjects.as_object().expect("map");
    assert!(subjects.len() >= 2);

    for (k, subs) in subjects {
        let statements =
            iam::document(&f.module, &f.eval, "github_assume", &instance(&f, trust, k));
        assert_eq!(statements.len(), 1, "{k}: one trust statement");
        let st = &statements[0];
        assert_eq!(st.actions, vec!["sts:AssumeRoleWithWebIdentity"]);
        assert_eq!(st.principals.len(), 1);
        assert_eq!(st.principals[0].0, "Federated");
        let sub = st
            .conditions
            .iter()
            .find(|c| c.variable == "token.actions.githubusercontent.com:sub")
            .expect("sub condition");
        assert_eq!(
            sub.test, "StringEquals",
            "{k}: subjects compared exactly (StringLike would let a pattern span environments)"
        );
        assert!(st.conditions.iter().any(|c| c.variable.ends_with(":aud")
            && c.test == "StringEquals"
            && c.values == ["sts.amazonaws.com"]));

        // A token of each environment assumes exactly its own pair's role.
        for (other_k, other_subs) in subjects {
            for s in other_subs.as_array().expect("list") {
                let token = Request::new("github", "sts:AssumeRoleWithWebIdentity", "*")
                    .with(
                        "token.actions.githubusercontent.com:sub",
                        &[s.as_str().expect("str")],
                    )
                    .with(
                        "token.actions.githubusercontent.com:aud",
                        &["sts.amazonaws.com"],
                    );
                // A trust policy names no resource: the role itself is the resource.
                let probe = Statement {
                    principals: vec![],
                    resources: vec!["*".to_string()],
                    ..st.clone()
                };
                assert_eq!(
                    allows(&[probe], &token),
                    other_k == k,
                    "subject {s} vs role {k} (its subjects: {subs})"
                );
            }
        }

        let attachment = f
            .module
            .resource("aws_iam_role_policy_attachment", "github_uploader");
        let scope = f.eval.at(&instance(&f, attachment, k));
        assert_eq!(
            scope.attr_text(attachment, "policy_arn").as_deref(),
            Some(format!("${{aws_iam_policy.uploader[\"{k}\"].arn}}").as_str()),
            "role {k} must carry the uploader policy of {k} and no other"
        );
        assert_eq!(
            scope.attr_text(attachment, "role").as_deref(),
            Some(format!("${{aws_iam_role.github[\"{k}\"].name}}").as_str())
        );
    }
}

#[test]
fn ci_and_host_roles_carry_only_what_they_are_for() {
    let f = fixture();
    let lambda = lambda_role(&f);
    let (_, profile) = f.module.single("aws_iam_instance_profile");
    let host_role = referenced(
        "aws_iam_role",
        &f.eval
            .at(&f.eval.instances(profile)[0])
            .attr_text(profile, "role")
            .expect("role"),
    )
    .expect("instance profile role");

    for (role, body) in f.module.resources("aws_iam_role") {
        if role == lambda || role == host_role {
            continue;
        }
        for inst in f.eval.instances(body) {
            assert!(
                inline_statements(&f, role, Some(inst.key())).is_empty(),
                "CI role {role} must not have inline policies"
            );
            for arn in attached_policy_arns(&f, role, Some(inst.key())) {
                assert!(
                    referenced("aws_iam_policy", &arn).is_some(),
                    "CI role {role} may only carry the module's uploader policy, found {arn}"
                );
            }
        }
    }

    // Host roles: SSM core, writing command output, and reading versions of exactly their own
    // pair's release key (the host downloads with its role: the command carries no
    // credential); nothing else in the bucket. The bucket policy does not deny that read.
    let all = pairs(&f);
    let bucket = bucket_policy(&f);
    for (k, key) in &all {
        let attached = attached_policy_arns(&f, &host_role, Some(k));
        assert_eq!(attached.len(), 1, "host role {k} attachments: {attached:?}");
        assert!(attached[0].ends_with(":iam::aws:policy/AmazonSSMManagedInstanceCore"));
        let statements = inline_statements(&f, &host_role, Some(k));
        let s3_actions: BTreeSet<String> = granted_actions(&statements)
            .into_iter()
            .filter(|a| !a.starts_with("logs:"))
            .collect();
        assert_same_actions(
            &format!("host role {k} actions besides logs"),
            &s3_actions,
            &owned(dropship_contract::host::HOST_IAM_ACTIONS),
        );
        let me = symbol(&format!("aws_iam_role.host[\"{k}\"]"), "arn");
        let may = |action: &str, resource: &str| {
            allows(&statements, &Request::new(&me, action, resource))
        };
        let own = object_arn(&key.object_key());
        assert!(
            may("s3:GetObjectVersion", &own),
            "{k}: download its release"
        );
        assert!(
            !denies(&bucket, &Request::new(&me, "s3:GetObjectVersion", &own)),
            "{k}: the bucket policy denies the host its download"
        );
        for (other_k, other) in all.iter().filter(|(o, _)| o != k) {
            assert!(
                !may("s3:GetObjectVersion", &object_arn(&other.object_key())),
                "{k}'s hosts may read {other_k}'s releases"
            );
        }
        for (action, resource) in [
            ("s3:GetObject", own.clone()),
            ("s3:PutObject", own.clone()),
            ("s3:DeleteObjectVersion", own.clone()),
            ("s3:GetObjectVersion", object_arn(&key.record_key("v1"))),
            ("s3:GetObject", object_arn(&key.latest_pointer_key())),
            (
                "s3:GetObjectVersion",
                object_arn(&format!("{RELEASES_PREFIX}{}/other.tar.gz", key.app())),
            ),
            ("s3:ListBucketVersions", BUCKET_ARN.to_string()),
            ("s3:ListBucket", BUCKET_ARN.to_string()),
        ] {
            assert!(
                !may(action, &resource),
                "{k}'s hosts may {action} {resource}"
            );
        }
    }
}

// ----------------------------------------------------------------------------------------
// The bucket defends itself
// ----------------------------------------------------------------------------------------

#[test]
fn bucket_policy_denies_writes_deletes_and_setting_changes_by_principal() {
    let f = fixture();
    let policy = bucket_policy(&f);
    let github = |k: &str| format!("${{aws_iam_role.github[\"{k}\"].arn}}");
    let lambda = symbol(&format!("aws_iam_role.{}", lambda_role(&f)), "arn");
    let provisioning = "${data.aws_iam_session_context.current.issuer_arn}";
    let key = |app: &str, env: &str| ReleaseKey::new(app, env).expect("valid");
    let (shop_stg, shop_prod, blog_stg, blog_prod) = (
        key("shop", "staging"),
        key("shop", "production"),
        key("blog", "staging"),
        key("blog", "production"),
    );
    let denied = |who: &str, action: &str, resource: &str| {
        denies(&policy, &Request::new(who, action, resource))
    };

    // releases/: each key only by its own uploaders; nobody else, whatever their IAM says.
    let writers = [
        (github("shop/staging"), &shop_stg),
        (github("shop/production"), &shop_prod),
        (BLOG_STAGING_CI.to_string(), &blog_stg),
    ];
    for (who, own) in &writers {
        for target in [&shop_stg, &shop_prod, &blog_stg, &blog_prod] {
            assert_eq!(
                denied(who, "s3:PutObject", &object_arn(&target.object_key())),
                target.object_key() != own.object_key(),
                "{who} writing {}",
                target.object_key()
            );
        }
    }
    for who in [ADMIN, lambda.as_str(), provisioning] {
        for target in [&shop_stg, &shop_prod, &blog_stg, &blog_prod] {
            assert!(
                denied(who, "s3:PutObject", &object_arn(&target.object_key())),
                "{who} may write {}",
                target.object_key()
            );
        }
        assert!(denied(
            who,
            "s3:PutObject",
            &object_arn("releases/new-app/production.tar.gz")
        ));
    }
    // blog/production has no uploader: nobody writes it.
    assert!(denied(
        BLOG_STAGING_CI,
        "s3:PutObject",
        &object_arn(&blog_prod.object_key())
    ));

    // deploy-records/: only the Lambda (a forged latest.json would skip every later deploy).
    assert!(!denied(
        &lambda,
        "s3:PutObject",
        &object_arn(&shop_prod.latest_pointer_key())
    ));
    for (who, _) in &writers {
        assert!(denied(
            who,
            "s3:PutObject",
            &object_arn(&shop_prod.latest_pointer_key())
        ));
        assert!(denied(
            who,
            "s3:PutObject",
            &object_arn(&shop_prod.record_key("v1"))
        ));
    }
    assert!(denied(
        ADMIN,
        "s3:PutObject",
        &object_arn(&shop_prod.latest_pointer_key())
    ));

    // History is append-only for everyone: no version deleted, no delete marker.
    for who in [ADMIN, lambda.as_str(), provisioning, BLOG_STAGING_CI] {
        for resource in [shop_prod.object_key(), shop_prod.latest_pointer_key()] {
            assert!(denied(
                who,
                "s3:DeleteObjectVersion",
                &object_arn(&resource)
            ));
            assert!(
                denied(who, "s3:DeleteObject", &object_arn(&resource)),
                "delete marker"
            );
        }
    }

    // Versioning, lifecycle, the policy itself…: only the provisioning principal.
    for action in [
        "s3:PutBucketVersioning",
        "s3:PutLifecycleConfiguration",
        "s3:PutBucketPolicy",
        "s3:DeleteBucketPolicy",
        "s3:PutBucketNotification",
        "s3:PutBucketLogging",
        "s3:PutBucketPublicAccessBlock",
        "s3:DeleteBucket",
    ] {
        assert!(
            !denied(provisioning, action, BUCKET_ARN),
            "provisioning refused {action}"
        );
        for who in [ADMIN, lambda.as_str(), BLOG_STAGING_CI] {
            assert!(denied(who, action, BUCKET_ARN), "{who} may {action}");
        }
    }

    // Reads stay open to IAM (the Lambda reads releases, uploaders read their history), and
    // plain HTTP is refused to everyone.
    assert!(!denied(
        &lambda,
        "s3:GetObjectVersion",
        &object_arn(&shop_prod.object_key())
    ));
    assert!(denies(
        &policy,
        &Request::new(
            &lambda,
            "s3:GetObjectVersion",
            &object_arn(&shop_prod.object_key())
        )
        .with("aws:SecureTransport", &["false"])
    ));
}

/// Every S3 action that puts bytes, a version, a delete marker or an object attribute into
/// the bucket. PutObject also authorises CopyObject and every multipart step.
const OBJECT_WRITE_PATHS: &[&str] = &[
    "s3:PutObject",
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:ReplicateObject",
    "s3:ReplicateDelete",
    "s3:ReplicateTags",
    "s3:InitiateReplication",
    "s3:ObjectOwnerOverrideToBucketOwner",
    "s3:PutObjectTagging",
    "s3:PutObjectVersionTagging",
    "s3:DeleteObjectTagging",
    "s3:DeleteObjectVersionTagging",
    "s3:PutObjectAcl",
    "s3:PutObjectVersionAcl",
    "s3:PutObjectRetention",
    "s3:PutObjectLegalHold",
    "s3:BypassGovernanceRetention",
    "s3:RestoreObject",
];

#[test]
fn every_write_path_into_the_bucket_is_denied_to_every_principal_but_the_prefixs_writer() {
    let f = fixture();
    let policy = bucket_policy(&f);
    let github = |k: &str| format!("${{aws_iam_role.github[\"{k}\"].arn}}");
    let lambda = symbol(&format!("aws_iam_role.{}", lambda_role(&f)), "arn");
    let provisioning = "${data.aws_iam_session_context.current.issuer_arn}".to_string();
    // A role of this account that replicates from a bucket of its own (its IAM policy
    // allows s3:Replicate* here; in one account no bucket-policy Allow is needed).
    let replicator = "arn:aws:iam::111122223333:role/replication".to_string();
    let key = |app: &str, env: &str| ReleaseKey::new(app, env).expect("valid");
    let keys = [
        key("shop", "staging"),
        key("shop", "production"),
        key("blog", "staging"),
        key("blog", "production"),
    ];
    // Who legitimately writes (PutObject) each release key.
    let writers: BTreeMap<String, Vec<String>> = BTreeMap::from([
        (keys[0].object_key(), vec![github("shop/staging")]),
        (keys[1].object_key(), vec![github("shop/production")]),
        (keys[2].object_key(), vec![BLOG_STAGING_CI.to_string()]),
        (keys[3].object_key(), vec![]),
    ]);
    let principals = [
        github("shop/staging"),
        github("shop/production"),
        BLOG_STAGING_CI.to_string(),
        ADMIN.to_string(),
        lambda.clone(),
        provisioning.clone(),
        replicator,
    ];
    let mut objects: Vec<String> = Vec::new();
    for k in &keys {
        objects.extend([
            k.object_key(),
            k.record_key("v1"),
            k.result_key("v1", "i-1", "c-1"),
            k.fleet_key(),
            k.latest_pointer_key(),
        ]);
    }
    objects.push(dropship_contract::key::command_index_key("c-1"));
    objects.push("releases/new-app/production.tar.gz".to_string());

    let mut wrong = Vec::new();
    for who in &principals {
        for object in &objects {
            for action in OBJECT_WRITE_PATHS {
                let may = match *action {
                    "s3:PutObject" if object.starts_with(RELEASES_PREFIX) => {
                        match writers.get(object) {
                            Some(w) => w.iter().any(|x| x == who),
                            // A key of no configured pair: the bucket policy leaves it to the
                            // uploaders' own (exact-key) policies, and the Lambda's allow-lists
                            // refuse its events; everyone else is denied.
                            None => writers.values().flatten().any(|x| x == who),
                        }
                    }
                    "s3:PutObject" => object.starts_with(RECORDS_PREFIX) && *who == lambda,
                    // Tags, ACLs, locks, restores: only provisioning (no component uses them).
                    a if a.starts_with("s3:PutObject")
                        || a.starts_with("s3:DeleteObjectTagging")
                        || a.starts_with("s3:DeleteObjectVersionTagging")
                        || a == "s3:BypassGovernanceRetention"
                        || a == "s3:RestoreObject" =>
                    {
                        *who == provisioning
                    }
                    // Deletes, delete markers, replication of any kind: nobody.
                    _ => false,
                };
                let denied = denies(&policy, &Request::new(who, action, &object_arn(object)));
                if denied == may {
                    wrong.push(format!(
                        "{who} {action} {object}: bucket policy {} (expected {})",
                        if denied { "denies" } else { "does not deny" },
                        if may { "allowed" } else { "denied" }
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} write paths wrong:\n  {}",
        wrong.len(),
        wrong.join("\n  ")
    );
}

#[test]
fn bucket_policy_with_no_uploader_at_all_refuses_every_release_write() {
    let module = Module::load();
    let mut s = scenario();
    s.retain(|(k, _)| !matches!(*k, "github_oidc_subjects" | "uploader_principal_arns"));
    let eval = module.evaluator(&s);
    let policy = iam::single_document(&module, &eval, "artifacts_bucket");
    let key = ReleaseKey::new("shop", "production").expect("valid");
    for who in [ADMIN, BLOG_STAGING_CI] {
        assert!(denies(
            &policy,
            &Request::new(who, "s3:PutObject", &object_arn(&key.object_key()))
        ));
    }
}

#[test]
fn lifecycle_expiry_of_a_version_never_depends_on_later_uploads() {
    // S3 expires a noncurrent version when it has been noncurrent for `noncurrent_days`
    // AND (if set) at least `newer_noncurrent_versions` newer noncurrent versions exist.
    // With the second clause, N cheap copies make every older version expire at once.
    let f = fixture();
    let (_, lifecycle) = f.module.single("aws_s3_bucket_lifecycle_configuration");
    let rules: Vec<_> = blocks(lifecycle, "rule").collect();
    assert_eq!(rules.len(), 1, "one lifecycle rule");
    let rule = rules[0].body();
    for forbidden in ["expiration", "transition", "noncurrent_version_transition"] {
        assert!(
            blocks(rule, forbidden).next().is_none(),
            "lifecycle rule must not have {forbidden}: current versions never expire and noncurrent ones stay restorable by CopyObject"
        );
    }
    let expiration = blocks(rule, "noncurrent_version_expiration")
        .next()
        .expect("noncurrent_version_expiration");
    let days = attr(expiration.body(), "noncurrent_days")
        .map(|e| f.eval.eval(e).as_u64().expect("days"))
        .expect("noncurrent_days");
    let newer = attr(expiration.body(), "newer_noncurrent_versions")
        .map(|e| f.eval.eval(e).as_u64().expect("count"));

    let expires = |age_days: u64, newer_versions: u64| {
        age_days >= days && newer.is_none_or(|n| newer_versions >= n)
    };
    for age in [0, 1, days.saturating_sub(1), days, days + 1, days * 10] {
        assert_eq!(
            expires(age, 0),
            expires(age, 10_000),
            "a version replaced {age} days ago expires differently after 10,000 more uploads"
        );
    }
    assert!(days >= 30, "rollback window of {days} days");

    // The window cannot be configured below 30 days.
    let variable = f.module.variable("noncurrent_version_expiration_days");
    let validation = blocks(variable, "validation").next().expect("validation");
    let condition =
        hcl::format::to_string(attr(validation.body(), "condition").expect("condition"))
            .expect("format");
    assert!(
        condition.contains("var.noncurrent_version_expiration_days >= 30"),
        "validation must refuse windows under 30 days: {condition}"
    );
}

#[test]
fn access_logging_is_an_option_that_only_provisioning_can_turn_off() {
    let f = fixture();
    let (_, logging) = f.module.single("aws_s3_bucket_logging");
    let count = hcl::format::to_string(attr(logging, "count").expect("count")).expect("format");
    assert!(
        count.contains("var.access_log_bucket"),
        "logging follows var.access_log_bucket: {count}"
    );
    assert_eq!(f.eval.instances(logging).len(), 0, "off by default");
    let on = Module::load();
    let mut s = scenario();
    s.push(("access_log_bucket", json!("acme-logs")));
    let eval = on.evaluator(&s);
    let body = on.resource("aws_s3_bucket_logging", "artifacts");
    let instances = eval.instances(body);
    assert_eq!(instances.len(), 1, "on when a log bucket is given");
    let scope = eval.at(&instances[0]);
    assert_eq!(
        scope.attr_text(body, "target_bucket").as_deref(),
        Some("acme-logs")
    );
    assert_eq!(
        scope.attr_text(body, "bucket").as_deref(),
        Some(symbol("aws_s3_bucket.artifacts", "id").as_str())
    );
    assert!(denies(
        &bucket_policy(&f),
        &Request::new(ADMIN, "s3:PutBucketLogging", BUCKET_ARN)
    ));
}

// ----------------------------------------------------------------------------------------
// Targets that can't be borrowed: SCP and permissions-boundary snippets
// ----------------------------------------------------------------------------------------

#[test]
fn target_protection_snippets_deny_tag_and_profile_changes_outside_provisioning() {
    let f = fixture();
    let policies_dir = terraform::infra_dir().join("policies");
    let placeholders = BTreeSet::from([
        "@ACCOUNT_ID@",
        "@APP_TAG_KEY@",
        "@ENV_TAG_KEY@",
        "@NAME_PREFIX@",
        "@PARTITION@",
        "@PROVISIONING_PRINCIPAL_ARNS@",
    ]);
    let rendered = f.eval.local("target_protection_policies");
    let arn = |kind: &str, name: &str| format!("arn:aws:iam::{ACCOUNT_ID}:{kind}/{name}");

    // The names the module really creates.
    let (profile, _) = f.module.single("aws_iam_instance_profile");
    let hosts: Vec<(String, String)> = pairs(&f)
        .into_iter()
        .map(|(k, _)| {
            let name = resource_attr(&f, "aws_iam_instance_profile", profile, Some(&k), "name");
            (arn("role", &name), arn("instance-profile", &name))
        })
        .collect();
    let lambda_name = resource_attr(&f, "aws_iam_role", &lambda_role(&f), None, "name");
    let github_name = resource_attr(
        &f,
        "aws_iam_role",
        "github",
        Some("shop/production"),
        "name",
    );
    let uploader_policy = resource_attr(
        &f,
        "aws_iam_policy",
        "uploader",
        Some("shop/production"),
        "name",
    );
    let provisioning = "${data.aws_iam_session_context.current.issuer_arn}";

    for (file, is_scp) in [
        ("dropship-targets-scp.json", true),
        ("dropship-targets-permissions-boundary.json", false),
    ] {
        let raw = std::fs::read_to_string(policies_dir.join(file)).expect("snippet");
        let _: Value =
            serde_json::from_str(&raw).unwrap_or_else(|e| panic!("{file} is not JSON: {e}"));
        for found in raw.split('@').skip(1).step_by(2) {
            assert!(
                placeholders.contains(format!("@{found}@").as_str()),
                "{file}: unknown placeholder @{found}@"
            );
        }
        let name = if is_scp {
            "scp"
        } else {
            "permissions-boundary"
        };
        let text = as_text(&rendered[name]);
        assert!(
            !text.contains('@'),
            "{file}: placeholder left after rendering: {text}"
        );
        let policy: Value = serde_json::from_str(&text).expect("rendered JSON");
        let statements = iam::from_json(&policy);
        for st in &statements {
            assert!(
                st.effect == iam::Effect::Deny || !is_scp,
                "{file}: an SCP snippet only denies"
            );
        }
        // Under an SCP the provisioning principal keeps its rights; a boundary is attached
        // only to the others.
        let attackers: Vec<&str> = vec![ADMIN, BLOG_STAGING_CI];
        let blocked = |who: &str, req: Request| {
            let req = Request {
                principal: who.to_string(),
                ..req
            };
            denies(&statements, &req)
        };
        let tag = |keys: &[&str]| {
            Request::new(
                "",
                "ec2:CreateTags",
                "arn:aws:ec2:eu-west-1:111122223333:instance/i-1",
            )
            .with("aws:TagKeys", keys)
        };
        for who in &attackers {
            assert!(
                blocked(who, tag(&["dropship:app"])),
                "{file}: {who} retags dropship:app"
            );
            assert!(blocked(who, tag(&["Name", "dropship:env"])));
            assert!(blocked(
                who,
                Request::new("", "ec2:DeleteTags", "*").with("aws:TagKeys", &["dropship:env"])
            ));
            assert!(
                !blocked(who, tag(&["Name"])),
                "{file}: other tags stay free"
            );
            for (role, profile) in &hosts {
                assert!(
                    blocked(who, Request::new("", "iam:PassRole", role)),
                    "{file}: {who} passes {role}"
                );
                assert!(blocked(
                    who,
                    Request::new(
                        "",
                        "ec2:AssociateIamInstanceProfile",
                        "arn:aws:ec2:eu-west-1:111122223333:instance/i-1"
                    )
                    .with("ec2:InstanceProfile", &[profile])
                ));
                assert!(blocked(
                    who,
                    Request::new("", "iam:RemoveRoleFromInstanceProfile", profile)
                ));
            }
            for role in [&lambda_name, &github_name] {
                for action in [
                    "iam:PutRolePolicy",
                    "iam:AttachRolePolicy",
                    "iam:UpdateAssumeRolePolicy",
                ] {
                    assert!(
                        blocked(who, Request::new("", action, &arn("role", role))),
                        "{file}: {who} {action} {role}"
                    );
                }
            }
            assert!(blocked(
                who,
                Request::new(
                    "",
                    "iam:CreatePolicyVersion",
                    &arn("policy", &uploader_policy)
                )
            ));
            assert!(!blocked(
                who,
                Request::new("", "iam:PassRole", &arn("role", "app-task-role"))
            ));
        }
        if is_scp {
            assert!(
                !blocked(provisioning, tag(&["dropship:app"])),
                "provisioning retags"
            );
            assert!(!blocked(
                provisioning,
                Request::new("", "iam:PassRole", &hosts[0].0)
            ));
        } else {
            let anyone = Request::new(ADMIN, "ec2:RunInstances", "*");
            assert!(
                allows(&statements, &anyone),
                "the boundary caps only dropship's resources"
            );
            assert!(blocked(
                ADMIN,
                Request::new("", "iam:DeleteRolePermissionsBoundary", "*")
            ));
        }
    }
}

#[test]
fn deployer_function_role_and_rules_are_changed_only_by_provisioning() {
    let f = fixture();
    let rendered = f.eval.local("target_protection_policies");
    let function_arns: BTreeMap<String, String> =
        serde_json::from_value(f.eval.local("function_arns")).expect("class → ARN");
    let (_, function) = f.module.single("aws_lambda_function");
    let instances = f.eval.instances(function);
    assert_eq!(instances.len(), function_arns.len());
    for inst in &instances {
        assert_eq!(
            function_arns[inst.key()],
            format!(
                "arn:aws:lambda:eu-west-1:{ACCOUNT_ID}:function:{}",
                f.eval
                    .at(inst)
                    .attr_text(function, "function_name")
                    .expect("function_name")
            ),
            "local.function_arns names the deployer function of {}",
            inst.key()
        );
    }
    let role_arn = format!(
        "arn:aws:iam::{ACCOUNT_ID}:role/{}",
        resource_attr(&f, "aws_iam_role", &lambda_role(&f), None, "name")
    );
    let rule_arns: Vec<String> = f
        .module
        .resources("aws_cloudwatch_event_rule")
        .into_iter()
        .flat_map(|(_, body)| {
            f.eval
                .instances(body)
                .into_iter()
                .map(|i| {
                    let n = f.eval.at(&i).attr_text(body, "name").expect("rule name");
                    format!("arn:aws:events:eu-west-1:{ACCOUNT_ID}:rule/{n}")
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(rule_arns.len() >= 4, "the module's rules: {rule_arns:?}");
    let provisioning = "${data.aws_iam_session_context.current.issuer_arn}";
    let function_changes = [
        "lambda:UpdateFunctionCode",
        "lambda:UpdateFunctionConfiguration",
        "lambda:DeleteFunction",
        "lambda:PutFunctionConcurrency",
        "lambda:DeleteFunctionConcurrency",
        "lambda:PutFunctionEventInvokeConfig",
        "lambda:UpdateFunctionEventInvokeConfig",
        "lambda:AddPermission",
        "lambda:PublishVersion",
        "lambda:CreateAlias",
        "lambda:CreateFunction",
    ];
    let rule_changes = [
        "events:PutRule",
        "events:PutTargets",
        "events:RemoveTargets",
        "events:DisableRule",
        "events:DeleteRule",
    ];
    for file in ["scp", "permissions-boundary"] {
        let policy: Value = serde_json::from_str(&as_text(&rendered[file])).expect("rendered JSON");
        let statements = iam::from_json(&policy);
        let blocked = |who: &str, action: &str, resource: &str| {
            denies(&statements, &Request::new(who, action, resource))
        };
        for (who, function_arn) in [ADMIN, BLOG_STAGING_CI]
            .into_iter()
            .flat_map(|who| function_arns.values().map(move |arn| (who, arn)))
        {
            for action in function_changes {
                for resource in [function_arn.clone(), format!("{function_arn}:live")] {
                    assert!(
                        blocked(who, action, &resource),
                        "{file}: {who} may {action} {resource}"
                    );
                }
            }
            assert!(
                blocked(who, "iam:PassRole", &role_arn),
                "{file}: {who} may pass the deployer role to a function of their own"
            );
            for rule in &rule_arns {
                for action in rule_changes {
                    assert!(
                        blocked(who, action, rule),
                        "{file}: {who} may {action} {rule}"
                    );
                }
            }
            // Everything else stays with IAM.
            let other_function = format!("arn:aws:lambda:eu-west-1:{ACCOUNT_ID}:function:app-api");
            assert!(!blocked(who, "lambda:UpdateFunctionCode", &other_function));
            assert!(!blocked(who, "lambda:InvokeFunction", function_arn));
            assert!(!blocked(
                who,
                "events:PutRule",
                &format!("arn:aws:events:eu-west-1:{ACCOUNT_ID}:rule/app-nightly")
            ));
        }
        if file == "scp" {
            for (action, function_arn) in function_changes
                .iter()
                .flat_map(|a| function_arns.values().map(move |arn| (a, arn)))
            {
                assert!(
                    !blocked(provisioning, action, function_arn),
                    "provisioning {action}"
                );
            }
            assert!(!blocked(provisioning, "iam:PassRole", &role_arn));
            assert!(!blocked(provisioning, "events:PutTargets", &rule_arns[0]));
        }
    }
}

#[test]
fn deployer_role_credentials_work_only_inside_the_deployer_function() {
    let f = fixture();
    let role = lambda_role(&f);
    let policy = inline_statements(&f, &role, None);
    let function_arns: BTreeMap<String, String> =
        serde_json::from_value(f.eval.local("function_arns")).expect("class → ARN");
    assert_eq!(function_arns.len(), 2, "{function_arns:?}");
    for function_arn in function_arns.values() {
        credentials_work_only_inside(&policy, function_arn);
    }
}

fn credentials_work_only_inside(policy: &[Statement], function_arn: &str) {
    let me = format!("arn:aws:iam::{ACCOUNT_ID}:role/dropship-deployer-lambda");
    let record = object_arn("deploy-records/shop/production/v1.json");
    let put = |source: Option<&str>| {
        let req = Request::new(&me, "s3:PutObject", &record);
        match source {
            Some(s) => req.with("lambda:SourceFunctionArn", &[s]),
            None => req,
        }
    };
    assert!(
        allows(policy, &put(Some(function_arn))),
        "the deployer's own code writes records"
    );
    let other = format!("arn:aws:lambda:eu-west-1:{ACCOUNT_ID}:function:made-by-someone");
    assert!(
        denies(policy, &put(Some(&other))),
        "a function created with the deployer role is refused"
    );
    let send = Request::new(
        &me,
        "ssm:SendCommand",
        "${aws_ssm_document.deploy[\"production\"].arn}",
    );
    assert!(denies(
        policy,
        &send.clone().with("lambda:SourceFunctionArn", &[&other])
    ));
    assert!(allows(
        policy,
        &send.with("lambda:SourceFunctionArn", &[function_arn])
    ));
    // The Lambda service's own calls with the role (the on-failure destination) carry no
    // source function and stay allowed.
    let queue = policy
        .iter()
        .find(|s| s.actions.iter().any(|a| a == "sqs:SendMessage"))
        .expect("the on-failure destination grant")
        .resources[0]
        .clone();
    assert!(allows(
        policy,
        &Request::new(&me, "sqs:SendMessage", &queue)
    ));
}

// ----------------------------------------------------------------------------------------
// Failure notifications
// ----------------------------------------------------------------------------------------

#[test]
fn failure_rule_matches_only_failed_deploys_of_this_bucket_and_reaches_its_targets() {
    use dropship_contract::events;
    let f = fixture();
    let rule = f
        .module
        .resource("aws_cloudwatch_event_rule", "deploy_failed");
    let inst = f.eval.instances(rule).remove(0);
    let scope = f.eval.at(&inst);
    assert!(attr(rule, "event_bus_name").is_none(), "the default bus");
    let pattern: Value =
        serde_json::from_str(&scope.attr_text(rule, "event_pattern").expect("pattern"))
            .expect("JSON");
    for key in pattern["detail"].as_object().expect("detail").keys() {
        assert!(
            events::DEPLOY_FINISHED_DETAIL_KEYS.contains(&key.as_str()),
            "the rule matches detail.{key}, which the event does not carry"
        );
    }
    let bucket = symbol("aws_s3_bucket.artifacts", "bucket");
    let event = |bucket: &str, succeeded: bool, source: &str| {
        json!({
            "source": source,
            "detail-type": events::DEPLOY_FINISHED,
            "detail": {
                "app": "shop", "env": "production", "bucket": bucket,
                "key": "releases/shop/production.tar.gz", "version_id": "v2",
                "commit": "ab".repeat(20), "branch": "main", "uploader": "ci",
                "outcome": if succeeded { "deployed" } else { "rolled_back" },
                "succeeded": succeeded,
                "hosts": [{ "instance_id": "i-1", "outcome": "rolled_back", "exit_code": 9 }],
                "record_key": "deploy-records/shop/production/v2.json",
            }
        })
    };
    assert!(pattern_matches(
        &pattern,
        &event(&bucket, false, events::SOURCE)
    ));
    assert!(!pattern_matches(
        &pattern,
        &event(&bucket, true, events::SOURCE)
    ));
    assert!(!pattern_matches(
        &pattern,
        &event("other-bucket", false, events::SOURCE)
    ));
    assert!(!pattern_matches(&pattern, &event(&bucket, false, "aws.s3")));

    // Targets: the module's topic (publishable only by this rule, with a key EventBridge
    // may use) and every target the user passed.
    let mut targets = BTreeMap::new();
    for (name, target) in f.module.resources("aws_cloudwatch_event_target") {
        for inst in f.eval.instances(target) {
            let s = f.eval.at(&inst);
            if s.attr_text(target, "rule")
                .is_some_and(|r| r.contains("deploy_failed"))
            {
                targets.insert(
                    format!("{name}[{}]", inst.key()),
                    s.attr_text(target, "arn").expect("arn"),
                );
            }
        }
    }
    let values: BTreeSet<&String> = targets.values().collect();
    assert!(
        values.contains(&symbol("aws_sns_topic.deploy_failures[0]", "arn")),
        "{targets:?}"
    );
    assert!(
        values.contains(&"arn:aws:sqs:eu-west-1:111122223333:ops".to_string()),
        "{targets:?}"
    );

    let topic_policy = iam::document(
        &f.module,
        &f.eval,
        "deploy_failures_topic",
        &f.eval.instances(
            f.module
                .data("aws_iam_policy_document", "deploy_failures_topic"),
        )[0],
    );
    let rule_arn = symbol("aws_cloudwatch_event_rule.deploy_failed[0]", "arn");
    let publish = |source_arn: &str| {
        Request::new(
            "events.amazonaws.com",
            "sns:Publish",
            &symbol("aws_sns_topic.deploy_failures[0]", "arn"),
        )
        .with("aws:SourceArn", &[source_arn])
    };
    let topic_principal = |st: &Statement| {
        st.principals
            .iter()
            .any(|(t, ids)| t == "Service" && ids == &["events.amazonaws.com"])
    };
    assert!(topic_policy.iter().all(topic_principal));
    assert!(allows(&topic_policy, &publish(&rule_arn)));
    assert!(!allows(
        &topic_policy,
        &publish("arn:aws:events:eu-west-1:111122223333:rule/other")
    ));
    let mut as_someone_else = publish(&rule_arn);
    as_someone_else.principal = ADMIN.to_string();
    assert!(!allows(&topic_policy, &as_someone_else));
    let key_policy = iam::single_document(&f.module, &f.eval, "notifications_key");
    assert!(key_policy.iter().any(|st| topic_principal(st)
        && st
            .actions
            .iter()
            .any(|a| a.starts_with("kms:GenerateDataKey"))));

    // Off by default: no rule, no topic.
    let off = Module::load();
    let mut s = scenario();
    s.retain(|(k, _)| !matches!(*k, "failure_topic_enabled" | "failure_notification_targets"));
    let eval = off.evaluator(&s);
    assert!(eval
        .instances(off.resource("aws_cloudwatch_event_rule", "deploy_failed"))
        .is_empty());
    assert!(eval
        .instances(off.resource("aws_sns_topic", "deploy_failures"))
        .is_empty());
}

#[test]
fn architecture_doc_describes_the_events_dropship_emits() {
    use dropship_contract::events;
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md");
    let doc = std::fs::read_to_string(&path).expect("docs/architecture.md");
    let start = doc
        .find("\n### Events dropship emits\n")
        .or_else(|| doc.find("\n## Events dropship emits\n"))
        .expect("docs/architecture.md has an \"Events dropship emits\" section");
    let section: String = doc[start + 1..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("## ") && !l.starts_with("### "))
        .collect::<Vec<_>>()
        .join("\n");
    for needle in [events::SOURCE, events::DEPLOY_FINISHED]
        .iter()
        .chain(events::DEPLOY_FINISHED_DETAIL_KEYS)
        .chain(events::DEPLOY_FINISHED_HOST_KEYS)
    {
        assert!(
            section.contains(&format!("`{needle}`")),
            "the section does not name `{needle}`"
        );
    }
}

// ----------------------------------------------------------------------------------------
// Examples and docs
// ----------------------------------------------------------------------------------------

/// Whether `variable`'s validation whose error message contains `marker` accepts `value`
/// (the other inputs as in the scenario): its condition evaluated as Terraform would.
fn validation_accepts(variable: &str, marker: &str, value: Value) -> bool {
    let module = Module::load();
    let body = module.variable(variable);
    let validation = blocks(body, "validation")
        .find(|v| {
            attr(v.body(), "error_message")
                .and_then(|e| hcl::format::to_string(e).ok())
                .is_some_and(|m| m.contains(marker))
        })
        .unwrap_or_else(|| panic!("variable {variable} has no validation saying {marker:?}"));
    let mut s = scenario();
    s.retain(|(k, _)| *k != variable);
    s.push((
        Box::leak(variable.to_string().into_boxed_str()) as &'static str,
        value,
    ));
    let eval = module.evaluator(&s);
    eval.eval(attr(validation.body(), "condition").expect("condition"))
        .as_bool()
        .expect("a validation condition is a bool")
}

#[test]
fn the_module_refuses_a_subject_of_another_environment_and_wildcard_uploaders() {
    let subjects = |k: &str, sub: &str| json!({ k: [sub] });
    let own_env = "its pair's own environment";
    assert!(validation_accepts(
        "github_oidc_subjects",
        own_env,
        subjects("shop/production", "repo:acme/shop:environment:production")
    ));
    for (k, sub) in [
        ("shop/production", "repo:acme/shop:environment:staging"),
        ("shop/staging", "repo:acme/shop:environment:production"),
        (
            "shop/production",
            "repo:acme/shop:environment:production-copy",
        ),
        (
            "shop/production",
            "repo:acme/shop:environment:preproduction",
        ),
    ] {
        assert!(
            !validation_accepts("github_oidc_subjects", own_env, subjects(k, sub)),
            "{k} accepts {sub}"
        );
    }
    let exact = "exact ARNs";
    assert!(validation_accepts(
        "uploader_principal_arns",
        exact,
        json!({ "blog/staging": [BLOG_STAGING_CI] })
    ));
    for arn in [
        "*",
        "arn:aws:iam::111122223333:role/*",
        "arn:aws:iam::111122223333:role/blog-ci-?",
        "arn:aws:iam::*:role/blog-ci-staging",
    ] {
        assert!(
            !validation_accepts(
                "uploader_principal_arns",
                exact,
                json!({ "blog/staging": [BLOG_STAGING_CI, arn] })
            ),
            "accepts {arn}"
        );
    }
}

#[test]
fn example_root_gives_each_environment_its_own_github_subject() {
    let example = Module::load_dir(&terraform::infra_dir().join("examples/basic"));
    let block = example
        .blocks
        .iter()
        .find(|b| b.identifier() == "module")
        .expect("module block");
    let eval = Module::load().evaluator(&scenario());
    let subjects =
        eval.eval(attr(block.body(), "github_oidc_subjects").expect("github_oidc_subjects"));
    let mut seen = BTreeSet::new();
    for (k, subs) in subjects.as_object().expect("map") {
        let (_, env) = k.split_once('/').expect("key is <app>/<env>");
        for s in subs.as_array().expect("list") {
            let s = s.as_str().expect("string");
            assert!(
                s.ends_with(&format!(":environment:{env}")),
                "{k}: subject {s} is not the {env} environment"
            );
            assert!(seen.insert(s.to_string()), "subject {s} serves two pairs");
        }
    }
    assert!(seen.len() >= 2);
}

#[test]
fn example_workflows_pin_actions_by_commit_and_use_a_role_per_environment() {
    let dir = terraform::infra_dir().join("examples/github-actions");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("workflows")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in &files {
        let text = std::fs::read_to_string(file).expect("workflow");
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("- uses:") || l.starts_with("uses:"))
        {
            let reference = line.split_once("uses:").expect("uses").1.trim();
            let reference = reference.split_whitespace().next().expect("action");
            let (_, rev) = reference
                .split_once('@')
                .unwrap_or_else(|| panic!("{}: {reference} has no @ref", file.display()));
            assert!(
                rev.len() == 40 && rev.bytes().all(|b| b.is_ascii_hexdigit()),
                "{}: {reference} is not pinned by commit",
                file.display()
            );
        }
        assert!(
            !text.contains("--tag"),
            "{}: install by --rev, not a tag",
            file.display()
        );
    }

    let deploy = std::fs::read_to_string(dir.join("deploy.yml")).expect("deploy.yml");
    let job = |name: &str| -> String {
        let start = deploy
            .find(&format!("\n  {name}:\n"))
            .unwrap_or_else(|| panic!("job {name}"));
        deploy[start + 1..]
            .lines()
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with("    "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let role_of = |job_text: &str| -> String {
        job_text
            .lines()
            .find_map(|l| l.trim().strip_prefix("role-to-assume:"))
            .expect("role-to-assume")
            .trim()
            .to_string()
    };
    let (staging, production) = (job("staging"), job("production"));
    assert!(staging.contains("environment: staging"));
    assert!(production.contains("environment: production"));
    assert_ne!(
        role_of(&staging),
        role_of(&production),
        "one role per environment"
    );
    assert!(
        deploy.contains("--rev"),
        "deploy.yml installs the bundler by --rev"
    );
    // Production gets staging's exact bytes: the version staging uploaded, promoted, never
    // forced past a failed staging deploy, and never rebuilt.
    assert!(staging.contains("bundle-and-upload --env staging --wait"));
    assert!(
        production.contains("dropship promote staging production --version")
            && production.contains("needs.staging.outputs.version"),
        "{production}"
    );
    assert!(!production.contains("--force"), "{production}");
    assert!(!production.contains("bundle-and-upload"), "{production}");
}

#[test]
fn example_workflow_checks_cached_binaries_against_a_pinned_checksum_before_running_them() {
    let dir = terraform::infra_dir().join("examples/github-actions");
    let deploy = std::fs::read_to_string(dir.join("deploy.yml")).expect("deploy.yml");
    // Steps of the whole file, in order: (step text).
    let steps: Vec<&str> = deploy.split("\n      - ").skip(1).collect();
    let mut checked = 0;
    for (i, step) in steps.iter().enumerate() {
        if !step.contains("uses: actions/cache@") {
            continue;
        }
        let path = step
            .lines()
            .find_map(|l| l.trim().strip_prefix("path:"))
            .expect("cache path")
            .trim();
        let name = path.rsplit('/').next().expect("binary name");
        assert!(path.starts_with("~/.cargo/bin/"), "{path}");
        // The first later step that runs the binary must come after a checksum check of it.
        let runs = |s: &str| {
            s.lines().any(|l| {
                let l = l.trim();
                l.starts_with(&format!("{name} ")) || l.starts_with(&format!("run: {name} "))
            })
        };
        let check = steps[i + 1..]
            .iter()
            .position(|s| s.contains("sha256sum --check") && s.contains(&format!("bin/{name}\"")))
            .unwrap_or_else(|| {
                panic!("{name}: restored from the cache, never checked by checksum")
            });
        let first_run = steps[i + 1..]
            .iter()
            .position(|s| runs(s))
            .unwrap_or_else(|| panic!("{name} is never run"));
        assert!(
            check < first_run,
            "{name} runs before its checksum is checked"
        );
        let verify = steps[i + 1 + check];
        assert!(
            !verify.contains("if:"),
            "{name}: the check runs on cache hits too: {verify}"
        );
        let var = verify
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '$'))
            .find_map(|t| t.strip_prefix('$').filter(|v| v.ends_with("_SHA256")))
            .unwrap_or_else(|| panic!("{name}: no pinned *_SHA256 variable: {verify}"));
        let pinned = deploy
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{var}:")))
            .unwrap_or_else(|| panic!("{var} is not pinned in the workflow's env"))
            .trim();
        assert!(
            pinned.len() == 64 && pinned.bytes().all(|b| b.is_ascii_hexdigit()),
            "{var}: {pinned}"
        );
        checked += 1;
    }
    assert_eq!(checked, 2, "bundle-and-upload and dropship are cached");
}

#[test]
fn readme_documents_every_input_and_output() {
    let module = Module::load();
    let readme_path = terraform::infra_dir().join("README.md");
    let readme = std::fs::read_to_string(&readme_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", readme_path.display()));

    // Names in the first column of the table under `## <heading>`.
    let table = |heading: &str| -> BTreeSet<String> {
        let start = readme
            .find(&format!("\n## {heading}\n"))
            .unwrap_or_else(|| panic!("infra/README.md has no `## {heading}` section"));
        readme[start + 1..]
            .lines()
            .skip(1)
            .take_while(|l| !l.starts_with("## "))
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once("` |").map(|(name, _)| name.to_string()))
            .collect()
    };
    for (heading, kind) in [("Inputs", "variable"), ("Outputs", "output")] {
        if let Some(msg) = set_difference(
            &format!("README {heading} table"),
            &table(heading),
            &module.declared(kind).into_iter().collect(),
            &format!("{kind} in infra/, not in the README"),
            &format!("in the README, no such {kind}"),
        ) {
            panic!("{msg}");
        }
    }
}

#[test]
fn differences_name_missing_and_extra_items() {
    let expected = owned(&["s3:GetObject", "s3:PutObject"]);
    let actual = owned(&["s3:GetObject", "s3:DeleteObject"]);
    let msg = set_difference("actions", &actual, &expected, "not granted", "not called")
        .expect("sets differ");
    assert!(
        msg.contains("missing (not granted): [\"s3:PutObject\"]"),
        "{msg}"
    );
    assert!(
        msg.contains("extra (not called): [\"s3:DeleteObject\"]"),
        "{msg}"
    );
    assert!(set_difference("actions", &expected, &expected, "", "").is_none());
}
