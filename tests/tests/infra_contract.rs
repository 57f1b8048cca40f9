//! Contract between `infra/` (Terraform) and the Rust code it deploys.
//!
//! Providers cannot be downloaded on the build machines, so `terraform validate` cannot run
//! here; instead this test parses the module's HCL and evaluates the parts that matter with a
//! tiny evaluator (variable defaults, locals, `jsonencode`, `tostring`; anything else, such as
//! a resource attribute, becomes the placeholder `${<expression>}`). It then checks the
//! Terraform against what the code exports:
//!
//! - the EventBridge rule's bucket/prefix/suffix against `dropship_contract::key`;
//! - the Lambda's environment variable names against `deployer_lambda::config::ENV_VARS`;
//! - the actions granted to the Lambda role against `deployer_lambda::aws_calls::IAM_ACTIONS`,
//!   and the uploader policy's against `dropship_bundler::aws_calls::IAM_ACTIONS` and
//!   `dropship_operator::aws_calls::IAM_ACTIONS` (one uploader runs both CLIs)
//!   (missing and extra actions are both failures, and the message lists them);
//! - the tag keys of the `ssm:SendCommand` condition against the Lambda's default tag keys.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::path::PathBuf;

use dropship_contract::key::{ReleaseKey, BUNDLE_SUFFIX, RECORDS_PREFIX, RELEASES_PREFIX};
use hcl::expr::{Expression, ObjectKey, TraversalOperator};
use hcl::template::{Element, Template};
use hcl::{Block, Body};
use serde_json::Value;

/// What the Lambda *service* does with the function's role because of a choice made in
/// `infra/` (not in the crate): delivering a failed asynchronous invocation to the
/// on-failure SQS destination of `aws_lambda_function_event_invoke_config`. The service's
/// other use of the role (shipping logs) is `deployer_lambda::aws_calls::PLATFORM_ACTIONS`.
const ASYNC_DESTINATION_ACTIONS: &[&str] = &["sqs:SendMessage"];

/// The document SendCommand may run, and nothing else.
const RUN_SHELL_SCRIPT: &str = "AWS-RunShellScript";

// ----------------------------------------------------------------------------------------
// Loading and evaluating the module
// ----------------------------------------------------------------------------------------

struct Module {
    blocks: Vec<Block>,
}

impl Module {
    /// Parses every `*.tf` file of the module root (`infra/`, not the examples).
    fn load() -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|ext| ext == "tf"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no .tf files in {}", dir.display());
        let mut blocks = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            let body: Body =
                hcl::parse(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
            blocks.extend(body.into_blocks());
        }
        Module { blocks }
    }

    /// `(name, body)` of every `<kind> "<ty>" "<name>"` block (`kind` = resource or data).
    fn all(&self, kind: &str, ty: &str) -> Vec<(&str, &Body)> {
        self.blocks
            .iter()
            .filter(|b| b.identifier() == kind)
            .filter(|b| b.labels().first().map(|l| l.as_str()) == Some(ty))
            .map(|b| {
                let name = b.labels().get(1).map(|l| l.as_str()).unwrap_or_default();
                (name, b.body())
            })
            .collect()
    }

    fn resources(&self, ty: &str) -> Vec<(&str, &Body)> {
        self.all("resource", ty)
    }

    fn resource(&self, ty: &str, name: &str) -> &Body {
        self.resources(ty)
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b)
            .unwrap_or_else(|| panic!("resource {ty}.{name} not found in infra/"))
    }

    /// The one resource of a type (the module creates exactly one bucket, rule, function…).
    fn single(&self, ty: &str) -> (&str, &Body) {
        let all = self.resources(ty);
        assert_eq!(
            all.len(),
            1,
            "expected exactly one {ty} in infra/, found {:?}",
            all.iter().map(|(n, _)| n).collect::<Vec<_>>()
        );
        all[0]
    }

    fn policy_document(&self, name: &str) -> &Body {
        self.all("data", "aws_iam_policy_document")
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b)
            .unwrap_or_else(|| panic!("data.aws_iam_policy_document.{name} not found in infra/"))
    }

    fn evaluator(&self) -> Eval {
        let mut vars = BTreeMap::new();
        let mut locals = BTreeMap::new();
        for block in &self.blocks {
            match block.identifier() {
                "variable" => {
                    let name = block.labels()[0].as_str().to_string();
                    let value = attr(block.body(), "default")
                        .map(literal)
                        .unwrap_or_else(|| placeholder_str(&format!("var.{name}")));
                    vars.insert(name, value);
                }
                "locals" => {
                    for a in block.body().attributes() {
                        locals.insert(a.key().to_string(), a.expr().clone());
                    }
                }
                _ => {}
            }
        }
        Eval { vars, locals }
    }
}

fn attr<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes().find(|a| a.key() == key).map(|a| a.expr())
}

fn blocks<'a>(body: &'a Body, ident: &'a str) -> impl Iterator<Item = &'a Block> + 'a {
    body.blocks().filter(move |b| b.identifier() == ident)
}

fn placeholder_str(expr_text: &str) -> Value {
    Value::String(format!("${{{expr_text}}}"))
}

/// Variable defaults are literals (no references allowed by Terraform).
fn literal(expr: &Expression) -> Value {
    Eval {
        vars: BTreeMap::new(),
        locals: BTreeMap::new(),
    }
    .eval(expr)
}

fn as_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

struct Eval {
    vars: BTreeMap<String, Value>,
    locals: BTreeMap<String, Expression>,
}

impl Eval {
    fn eval(&self, expr: &Expression) -> Value {
        match expr {
            Expression::Null => Value::Null,
            Expression::Bool(b) => Value::Bool(*b),
            Expression::Number(n) => serde_json::to_value(n).expect("number"),
            Expression::String(s) => Value::String(s.clone()),
            Expression::Array(items) => Value::Array(items.iter().map(|e| self.eval(e)).collect()),
            Expression::Object(obj) => Value::Object(
                obj.iter()
                    .map(|(k, v)| {
                        let key = match k {
                            ObjectKey::Identifier(id) => id.as_str().to_string(),
                            ObjectKey::Expression(e) => as_text(&self.eval(e)),
                            _ => panic!("unsupported object key {k:?}"),
                        };
                        (key, self.eval(v))
                    })
                    .collect(),
            ),
            Expression::TemplateExpr(t) => {
                let template = Template::from_expr(t).expect("template");
                let mut out = String::new();
                for element in template.elements() {
                    match element {
                        Element::Literal(s) => out.push_str(s),
                        Element::Interpolation(i) => out.push_str(&as_text(&self.eval(&i.expr))),
                        Element::Directive(_) => panic!("template directives are not evaluated"),
                    }
                }
                Value::String(out)
            }
            Expression::Parenthesis(inner) => self.eval(inner),
            Expression::Traversal(t) => {
                if let (Expression::Variable(root), [TraversalOperator::GetAttr(name)]) =
                    (&t.expr, t.operators.as_slice())
                {
                    match root.as_str() {
                        "var" => {
                            if let Some(v) = self.vars.get(name.as_str()) {
                                return v.clone();
                            }
                        }
                        "local" => {
                            if let Some(e) = self.locals.get(name.as_str()) {
                                return self.eval(e);
                            }
                        }
                        _ => {}
                    }
                }
                self.placeholder(expr)
            }
            Expression::FuncCall(call) if call.name.namespace.is_empty() => {
                match (call.name.name.as_str(), call.args.as_slice()) {
                    ("jsonencode", [arg]) => {
                        Value::String(serde_json::to_string(&self.eval(arg)).expect("json"))
                    }
                    ("tostring", [arg]) => Value::String(as_text(&self.eval(arg))),
                    _ => self.placeholder(expr),
                }
            }
            _ => self.placeholder(expr),
        }
    }

    fn placeholder(&self, expr: &Expression) -> Value {
        placeholder_str(&hcl::format::to_string(expr).expect("format expression"))
    }

    fn text(&self, expr: &Expression) -> String {
        as_text(&self.eval(expr))
    }

    fn strings(&self, expr: &Expression) -> Vec<String> {
        match self.eval(expr) {
            Value::Array(items) => items.iter().map(as_text).collect(),
            other => vec![as_text(&other)],
        }
    }
}

/// `"${aws_iam_role.lambda.arn}"` → `Some("lambda")` for `ty` = `aws_iam_role`;
/// `"${data.aws_iam_policy_document.uploader[each.key].json}"` → `Some("uploader")`.
fn referenced(ty: &str, value: &str) -> Option<String> {
    let inner = value.strip_prefix("${")?.strip_suffix('}')?;
    let inner = inner.strip_prefix("data.").unwrap_or(inner);
    let rest = inner.strip_prefix(ty)?.strip_prefix('.')?;
    let name = rest.split(['.', '[']).next()?;
    Some(name.to_string())
}

// ----------------------------------------------------------------------------------------
// IAM documents
// ----------------------------------------------------------------------------------------

#[derive(Debug)]
struct Condition {
    test: String,
    variable: String,
    values: Vec<String>,
}

#[derive(Debug)]
struct Statement {
    sid: String,
    actions: Vec<String>,
    resources: Vec<String>,
    conditions: Vec<Condition>,
}

/// The `Allow` statements of a policy document; `Deny`, `not_actions` and `not_resources`
/// are refused because they would make "granted" harder to read off.
fn allow_statements(module: &Module, ev: &Eval, doc: &str) -> Vec<Statement> {
    let body = module.policy_document(doc);
    let mut out = Vec::new();
    for st in blocks(body, "statement") {
        let b = st.body();
        let effect = attr(b, "effect")
            .map(|e| ev.text(e))
            .unwrap_or_else(|| "Allow".into());
        for forbidden in ["not_actions", "not_resources", "not_principals"] {
            assert!(
                attr(b, forbidden).is_none(),
                "{doc}: {forbidden} is not allowed"
            );
        }
        if effect != "Allow" {
            continue;
        }
        let sid = attr(b, "sid").map(|e| ev.text(e)).unwrap_or_default();
        let actions = attr(b, "actions")
            .map(|e| ev.strings(e))
            .unwrap_or_default();
        let resources = attr(b, "resources")
            .map(|e| ev.strings(e))
            .unwrap_or_default();
        let conditions = blocks(b, "condition")
            .map(|c| Condition {
                test: ev.text(attr(c.body(), "test").expect("condition test")),
                variable: ev.text(attr(c.body(), "variable").expect("condition variable")),
                values: ev.strings(attr(c.body(), "values").expect("condition values")),
            })
            .collect();
        out.push(Statement {
            sid,
            actions,
            resources,
            conditions,
        });
    }
    out
}

/// Policy documents attached inline to a role (`aws_iam_role_policy`).
fn inline_policy_docs(module: &Module, ev: &Eval, role: &str) -> Vec<String> {
    let mut docs = Vec::new();
    for (name, body) in module.resources("aws_iam_role_policy") {
        let role_ref = ev.text(attr(body, "role").expect("role"));
        if referenced("aws_iam_role", &role_ref).as_deref() != Some(role) {
            continue;
        }
        let policy = ev.text(attr(body, "policy").expect("policy"));
        let doc = referenced("aws_iam_policy_document", &policy).unwrap_or_else(|| {
            panic!("aws_iam_role_policy.{name}: policy must come from a data.aws_iam_policy_document, got {policy}")
        });
        docs.push(doc);
    }
    docs
}

/// Managed-policy attachments of a role, as the evaluated `policy_arn` strings.
fn attached_policy_arns(module: &Module, ev: &Eval, role: &str) -> Vec<String> {
    let mut arns = Vec::new();
    for (_, body) in module.resources("aws_iam_role_policy_attachment") {
        let role_ref = ev.text(attr(body, "role").expect("role"));
        if referenced("aws_iam_role", &role_ref).as_deref() == Some(role) {
            arns.push(ev.text(attr(body, "policy_arn").expect("policy_arn")));
        }
    }
    for (name, body) in module.resources("aws_iam_policy_attachment") {
        let roles = attr(body, "roles")
            .map(|e| ev.strings(e))
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

fn granted_actions(statements: &[Statement]) -> BTreeSet<String> {
    statements
        .iter()
        .flat_map(|s| s.actions.iter().cloned())
        .collect()
}

fn owned(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
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

fn contains_wildcard_action(actions: &BTreeSet<String>) -> Vec<&String> {
    actions.iter().filter(|a| a.contains('*')).collect()
}

fn display_list<T: Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// EventBridge `wildcard` matching (only `*`, no escapes needed for our patterns).
fn wildcard_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

// ----------------------------------------------------------------------------------------
// Tests
// ----------------------------------------------------------------------------------------

#[test]
fn contract_prefixes_in_locals_match_the_key_module() {
    let module = Module::load();
    let ev = module.evaluator();
    for (local, expected) in [
        ("releases_prefix", RELEASES_PREFIX),
        ("bundle_suffix", BUNDLE_SUFFIX),
        ("records_prefix", RECORDS_PREFIX),
    ] {
        let expr = ev
            .locals
            .get(local)
            .unwrap_or_else(|| panic!("local.{local} missing in infra/"));
        assert_eq!(
            ev.text(expr),
            expected,
            "local.{local} must equal dropship_contract::key"
        );
    }
}

#[test]
fn rule_matches_release_keys_of_the_artifact_bucket_only() {
    let module = Module::load();
    let ev = module.evaluator();
    let (bucket, _) = module.single("aws_s3_bucket");
    let (_, rule) = module.single("aws_cloudwatch_event_rule");

    let pattern_text = ev.text(attr(rule, "event_pattern").expect("event_pattern"));
    let pattern: Value = serde_json::from_str(&pattern_text)
        .unwrap_or_else(|e| panic!("event_pattern is not JSON ({e}): {pattern_text}"));

    assert_eq!(pattern["source"], serde_json::json!(["aws.s3"]));
    assert_eq!(
        pattern["detail-type"],
        serde_json::json!(["Object Created"])
    );

    let names = pattern["detail"]["bucket"]["name"]
        .as_array()
        .expect("detail.bucket.name");
    assert_eq!(names.len(), 1, "rule must match exactly one bucket");
    let name = as_text(&names[0]);
    assert!(
        [
            format!("${{aws_s3_bucket.{bucket}.bucket}}"),
            format!("${{aws_s3_bucket.{bucket}.id}}")
        ]
        .contains(&name),
        "rule bucket must be the module's artifact bucket aws_s3_bucket.{bucket}, got {name}"
    );

    let key_filters = pattern["detail"]["object"]["key"]
        .as_array()
        .expect("detail.object.key");
    assert_eq!(
        key_filters.len(),
        1,
        "one key filter (several would be OR-ed): {key_filters:?}"
    );
    let wildcard = key_filters[0]["wildcard"]
        .as_str()
        .expect("key filter must be a wildcard (prefix AND suffix)");
    assert_eq!(wildcard, format!("{RELEASES_PREFIX}*{BUNDLE_SUFFIX}"));

    let release = ReleaseKey::new("shop", "production").expect("valid names");
    assert!(wildcard_matches(wildcard, &release.object_key()));
    for other in [
        release.record_key("3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"),
        release.latest_pointer_key(),
        format!("{RELEASES_PREFIX}shop/production.tar"),
        format!("other/{}", release.object_key()),
    ] {
        assert!(
            !wildcard_matches(wildcard, &other),
            "rule must not match {other}"
        );
    }
}

#[test]
fn rule_target_and_async_invocations_lose_no_event() {
    let module = Module::load();
    let ev = module.evaluator();
    let (function, _) = module.single("aws_lambda_function");
    let (_, target) = module.single("aws_cloudwatch_event_target");

    let arn = ev.text(attr(target, "arn").expect("target arn"));
    assert_eq!(
        referenced("aws_lambda_function", &arn).as_deref(),
        Some(function)
    );
    assert!(
        blocks(target, "retry_policy").count() == 1,
        "rule target needs a retry_policy"
    );
    let dlq = blocks(target, "dead_letter_config")
        .next()
        .expect("rule target needs a dead_letter_config");
    let dlq_arn = ev.text(attr(dlq.body(), "arn").expect("dlq arn"));
    assert!(
        referenced("aws_sqs_queue", &dlq_arn).is_some(),
        "DLQ must be an SQS queue of the module, got {dlq_arn}"
    );

    let (_, invoke) = module.single("aws_lambda_function_event_invoke_config");
    let on_failure = blocks(invoke, "destination_config")
        .flat_map(|d| blocks(d.body(), "on_failure").collect::<Vec<_>>())
        .next()
        .expect("async invoke config needs an on_failure destination");
    let dest = ev.text(attr(on_failure.body(), "destination").expect("destination"));
    assert!(
        referenced("aws_sqs_queue", &dest).is_some(),
        "on-failure destination must be an SQS queue of the module, got {dest}"
    );

    for (name, queue) in module.resources("aws_sqs_queue") {
        let sse = attr(queue, "sqs_managed_sse_enabled").map(|e| ev.eval(e));
        let kms = attr(queue, "kms_master_key_id");
        assert!(
            sse == Some(Value::Bool(true)) || kms.is_some(),
            "aws_sqs_queue.{name} must be encrypted"
        );
    }
}

#[test]
fn lambda_environment_is_exactly_what_the_lambda_reads() {
    let module = Module::load();
    let ev = module.evaluator();
    let (bucket, _) = module.single("aws_s3_bucket");
    let (_, function) = module.single("aws_lambda_function");

    let env_block = blocks(function, "environment")
        .next()
        .expect("aws_lambda_function needs an environment block");
    let vars = ev.eval(attr(env_block.body(), "variables").expect("environment.variables"));
    let vars = vars
        .as_object()
        .expect("environment.variables is an object");

    let set: BTreeSet<String> = vars.keys().cloned().collect();
    let read: BTreeSet<String> = deployer_lambda::config::ENV_VARS
        .iter()
        .map(|s| s.to_string())
        .collect();
    if let Some(msg) = set_difference(
        "Lambda environment variables",
        &set,
        &read,
        "read by deployer_lambda::config, not set by infra/",
        "set by infra/, never read",
    ) {
        panic!("{msg}");
    }

    let value = |name: &str| as_text(&vars[name]);
    // Where releases and records live is the contract's, not configuration: the Lambda reads
    // no prefix variable (the set above is exactly what it reads), and the locals the rule and
    // the policies use equal the contract (contract_prefixes_in_locals_match_the_key_module).
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
}

#[test]
fn lambda_role_grants_exactly_the_calls_the_lambda_makes() {
    let module = Module::load();
    let ev = module.evaluator();
    let (_, function) = module.single("aws_lambda_function");
    let role_ref = ev.text(attr(function, "role").expect("role"));
    let role = referenced("aws_iam_role", &role_ref).expect("function role is a module role");

    let attached = attached_policy_arns(&module, &ev, &role);
    assert!(
        attached.is_empty(),
        "the Lambda role must carry only inline policies checked here, found attachments: {}",
        display_list(&attached)
    );
    assert!(
        blocks(module.resource("aws_iam_role", &role), "inline_policy")
            .next()
            .is_none(),
        "no inline_policy blocks on the Lambda role"
    );

    let statements: Vec<Statement> = inline_policy_docs(&module, &ev, &role)
        .iter()
        .flat_map(|doc| allow_statements(&module, &ev, doc))
        .collect();
    let granted = granted_actions(&statements);
    assert!(
        contains_wildcard_action(&granted).is_empty(),
        "wildcard actions on the Lambda role: {:?}",
        contains_wildcard_action(&granted)
    );

    let mut expected = owned(deployer_lambda::aws_calls::IAM_ACTIONS);
    expected.extend(owned(deployer_lambda::aws_calls::PLATFORM_ACTIONS));
    expected.extend(owned(ASYNC_DESTINATION_ACTIONS));
    assert_same_actions("Lambda role actions", &granted, &expected);

    // Log writes reach only the function's own log group: the group Lambda writes to is
    // /aws/lambda/<function name>, so the granted group must carry exactly that name.
    let function_name = ev.text(attr(function, "function_name").expect("function_name"));
    for st in statements
        .iter()
        .filter(|s| s.actions.iter().any(|a| a.starts_with("logs:")))
    {
        assert!(
            st.actions.iter().all(|a| a.starts_with("logs:")),
            "statement {:?}: keep logs actions in statements of their own",
            st.sid
        );
        assert!(
            !st.resources.is_empty(),
            "statement {:?}: resources",
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
            let group_name = ev.text(
                attr(module.resource("aws_cloudwatch_log_group", &group), "name")
                    .expect("log group name"),
            );
            assert_eq!(
                group_name,
                format!("/aws/lambda/{function_name}"),
                "statement {:?}: logs only on the Lambda's own log group",
                st.sid
            );
        }
    }

    // The platform-only grant reaches nothing but the on-failure destination queue.
    let (_, invoke) = module.single("aws_lambda_function_event_invoke_config");
    let dest = blocks(invoke, "destination_config")
        .flat_map(|d| blocks(d.body(), "on_failure").collect::<Vec<_>>())
        .filter_map(|f| attr(f.body(), "destination").map(|e| ev.text(e)))
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
fn lambda_writes_only_deploy_records_and_reads_only_releases_and_records() {
    let module = Module::load();
    let ev = module.evaluator();
    let (bucket, _) = module.single("aws_s3_bucket");
    let bucket_arn = format!("${{aws_s3_bucket.{bucket}.arn}}");
    let (_, function) = module.single("aws_lambda_function");
    let role = referenced(
        "aws_iam_role",
        &ev.text(attr(function, "role").expect("role")),
    )
    .expect("function role");
    let statements: Vec<Statement> = inline_policy_docs(&module, &ev, &role)
        .iter()
        .flat_map(|doc| allow_statements(&module, &ev, doc))
        .collect();
    let is_bucket_level =
        |a: &String| a.starts_with("s3:ListBucket") || a.starts_with("s3:GetBucket");

    let mut s3_statements = 0;
    for st in statements
        .iter()
        .filter(|s| s.actions.iter().any(|a| a.starts_with("s3:")))
    {
        s3_statements += 1;
        let bucket_level = st.actions.iter().all(is_bucket_level);
        assert!(
            bucket_level || !st.actions.iter().any(is_bucket_level),
            "statement {:?}: keep bucket-level and object-level S3 actions apart ({})",
            st.sid,
            display_list(&st.actions)
        );
        assert!(
            !st.resources.is_empty(),
            "statement {:?}: resources",
            st.sid
        );
        for r in &st.resources {
            if bucket_level {
                assert_eq!(
                    r, &bucket_arn,
                    "statement {:?}: bucket-level actions only on the artifact bucket",
                    st.sid
                );
                continue;
            }
            let path = r
                .strip_prefix(&format!("{bucket_arn}/"))
                .unwrap_or_else(|| {
                    panic!(
                        "statement {:?}: object resource {r} outside the artifact bucket",
                        st.sid
                    )
                });
            let ok = if st.actions.iter().any(|a| a == "s3:PutObject") {
                path == format!("{RECORDS_PREFIX}*")
            } else {
                path == format!("{RELEASES_PREFIX}*") || path == format!("{RECORDS_PREFIX}*")
            };
            assert!(
                ok,
                "statement {:?} ({}) has resource {r}: writes go only to {RECORDS_PREFIX}*, reads only to {RELEASES_PREFIX}* and {RECORDS_PREFIX}*",
                st.sid,
                display_list(&st.actions)
            );
        }
    }
    assert!(s3_statements > 0, "the Lambda role grants no S3 access");
}

#[test]
fn send_command_is_only_run_shell_script_on_instances_with_the_lambdas_tags() {
    let module = Module::load();
    let ev = module.evaluator();
    let (_, function) = module.single("aws_lambda_function");
    let role_ref = ev.text(attr(function, "role").expect("role"));
    let role = referenced("aws_iam_role", &role_ref).expect("function role");
    let statements: Vec<Statement> = inline_policy_docs(&module, &ev, &role)
        .iter()
        .flat_map(|doc| allow_statements(&module, &ev, doc))
        .collect();
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

    let mut saw_document = false;
    let mut saw_instances = false;
    for st in send {
        assert_eq!(
            st.actions,
            vec!["ssm:SendCommand".to_string()],
            "statement {:?}: keep SendCommand in statements of its own",
            st.sid
        );
        assert!(
            !st.resources.is_empty(),
            "statement {:?}: resources",
            st.sid
        );
        for r in &st.resources {
            assert!(r != "*", "statement {:?}: SendCommand on \"*\"", st.sid);
            if r.contains(":document/") {
                assert!(
                    r.ends_with(&format!("::document/{RUN_SHELL_SCRIPT}")),
                    "statement {:?}: only the AWS-owned {RUN_SHELL_SCRIPT} document, got {r}",
                    st.sid
                );
                saw_document = true;
            } else if r.contains(":instance/") {
                let tag_vars: BTreeSet<String> = st
                    .conditions
                    .iter()
                    .filter(|c| c.variable.starts_with("ssm:resourceTag/"))
                    .inspect(|c| {
                        assert!(
                            matches!(c.test.as_str(), "StringEquals" | "StringLike"),
                            "tag condition {} uses {}",
                            c.variable,
                            c.test
                        );
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
}

#[test]
fn uploader_policy_grants_exactly_the_calls_the_bundler_makes() {
    let module = Module::load();
    let ev = module.evaluator();
    let policies = module.resources("aws_iam_policy");
    assert!(
        !policies.is_empty(),
        "infra/ must define the uploader aws_iam_policy"
    );
    let mut docs = BTreeSet::new();
    for (name, body) in &policies {
        let policy = ev.text(attr(body, "policy").expect("policy"));
        let doc = referenced("aws_iam_policy_document", &policy).unwrap_or_else(|| {
            panic!("aws_iam_policy.{name}: policy must come from a data.aws_iam_policy_document")
        });
        docs.insert(doc);
    }
    assert_eq!(
        docs.len(),
        1,
        "one uploader policy document expected, found {docs:?}"
    );
    let doc = docs.into_iter().next().expect("one document");
    let statements = allow_statements(&module, &ev, &doc);
    let granted = granted_actions(&statements);
    assert!(
        contains_wildcard_action(&granted).is_empty(),
        "wildcard actions in the uploader policy: {:?}",
        contains_wildcard_action(&granted)
    );
    assert_same_actions(
        "Uploader policy actions",
        &granted,
        &owned(dropship_bundler::aws_calls::IAM_ACTIONS)
            .union(&owned(dropship_operator::aws_calls::IAM_ACTIONS))
            .cloned()
            .collect(),
    );

    // Writes only under releases/<app>/ (each.key of the per-app policy).
    for st in statements.iter().filter(|s| {
        s.actions
            .iter()
            .any(|a| a == "s3:PutObject" || a == "s3:AbortMultipartUpload")
    }) {
        for r in &st.resources {
            let path = r.split_once("}/").map(|(_, p)| p).unwrap_or("");
            assert_eq!(
                path,
                format!("{RELEASES_PREFIX}${{each.key}}/*"),
                "statement {:?}: uploads only under {RELEASES_PREFIX}<app>/",
                st.sid
            );
        }
    }
}

#[test]
fn ci_roles_carry_only_the_uploader_policy() {
    let module = Module::load();
    let ev = module.evaluator();
    let (_, function) = module.single("aws_lambda_function");
    let lambda_role = referenced(
        "aws_iam_role",
        &ev.text(attr(function, "role").expect("role")),
    )
    .expect("function role");
    let (profile_name, profile) = module.single("aws_iam_instance_profile");
    let instance_role = referenced(
        "aws_iam_role",
        &ev.text(attr(profile, "role").expect("instance profile role")),
    )
    .unwrap_or_else(|| panic!("aws_iam_instance_profile.{profile_name} role"));

    for (role, _) in module.resources("aws_iam_role") {
        if role == lambda_role || role == instance_role {
            continue;
        }
        assert!(
            inline_policy_docs(&module, &ev, role).is_empty(),
            "CI role {role} must not have inline policies"
        );
        for arn in attached_policy_arns(&module, &ev, role) {
            assert!(
                referenced("aws_iam_policy", &arn).is_some(),
                "CI role {role} may only carry the module's uploader policy, found {arn}"
            );
        }
    }

    // Instance profile: SSM core + writing command output, nothing that reads the bucket.
    let attached = attached_policy_arns(&module, &ev, &instance_role);
    assert_eq!(attached.len(), 1, "instance role attachments: {attached:?}");
    assert!(attached[0].ends_with(":iam::aws:policy/AmazonSSMManagedInstanceCore"));
    for doc in inline_policy_docs(&module, &ev, &instance_role) {
        for st in allow_statements(&module, &ev, &doc) {
            assert!(
                st.actions.iter().all(|a| a.starts_with("logs:")),
                "instance role statement {:?} grants {}",
                st.sid,
                display_list(&st.actions)
            );
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
    assert!(wildcard_matches("releases/*.tar.gz", "releases/a/b.tar.gz"));
    assert!(!wildcard_matches("releases/*.tar.gz", "releases/.tar"));
}

#[test]
fn readme_documents_every_input_and_output() {
    let module = Module::load();
    let readme_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../infra/README.md");
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
    let declared = |kind: &str| -> BTreeSet<String> {
        module
            .blocks
            .iter()
            .filter(|b| b.identifier() == kind)
            .map(|b| b.labels()[0].as_str().to_string())
            .collect()
    };
    for (heading, kind) in [("Inputs", "variable"), ("Outputs", "output")] {
        if let Some(msg) = set_difference(
            &format!("README {heading} table"),
            &table(heading),
            &declared(kind),
            &format!("{kind} in infra/, not in the README"),
            &format!("in the README, no such {kind}"),
        ) {
            panic!("{msg}");
        }
    }
}
