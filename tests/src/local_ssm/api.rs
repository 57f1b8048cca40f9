//! SSM's operations with their real request and response shapes (AWS JSON 1.1 members as
//! the API Reference names them) and their real errors. Anything the endpoint does not
//! implement fails loudly instead of being ignored.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Map, Value};

use super::model::{self, InvocationState};
use super::{dispatch, CommandRecord, InvocationRecord, Shared, State};

/// An error as SSM answers it: HTTP status, `__type` and `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status (400 for every client error).
    pub status: u16,
    /// `__type`.
    pub code: String,
    /// `message`.
    pub message: String,
}

fn client_error(code: &str, message: impl Into<String>) -> ApiError {
    ApiError {
        status: 400,
        code: code.to_string(),
        message: message.into(),
    }
}

/// AWS's form for a member that breaks its constraint.
fn validation(member: &str, value: impl std::fmt::Display, constraint: &str) -> ApiError {
    let mut chars = member.chars();
    let camel: String = chars
        .next()
        .map(|c| c.to_ascii_lowercase())
        .into_iter()
        .chain(chars)
        .collect();
    client_error(
        "ValidationException",
        format!("1 validation error detected: Value '{value}' at '{camel}' failed to satisfy constraint: {constraint}"),
    )
}

/// Runs one operation (`X-Amz-Target: AmazonSSM.<operation>`).
pub fn handle(shared: &Arc<Shared>, operation: &str, body: &Value) -> Result<Value, ApiError> {
    if !body.is_object() {
        return Err(client_error(
            "SerializationException",
            "the request body must be a JSON object",
        ));
    }
    match operation {
        "SendCommand" => send_command(shared, body),
        "GetCommandInvocation" => get_command_invocation(shared, body),
        "ListCommandInvocations" => list_command_invocations(shared, body),
        "ListCommands" => list_commands(shared, body),
        "DescribeInstanceInformation" => describe_instance_information(shared, body),
        "CancelCommand" => cancel_command(shared, body),
        "CreateDocument" => create_document(shared, body),
        other => Err(client_error(
            "com.amazon.coral.service#UnknownOperationException",
            format!(
                "operation {other} is not implemented by the local SSM endpoint (it implements SendCommand, GetCommandInvocation, ListCommandInvocations, ListCommands, DescribeInstanceInformation, CancelCommand and CreateDocument)"
            ),
        )),
    }
}

fn serialization(member: &str, expected: &str) -> ApiError {
    client_error(
        "SerializationException",
        format!("{member} must be {expected}"),
    )
}

fn opt_str<'a>(body: &'a Value, member: &str) -> Result<Option<&'a str>, ApiError> {
    match body.get(member) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(serialization(member, "a string")),
    }
}

fn req_str<'a>(body: &'a Value, member: &str) -> Result<&'a str, ApiError> {
    opt_str(body, member)?.ok_or_else(|| validation(member, "null", "Member must not be null"))
}

fn opt_u64(body: &Value, member: &str) -> Result<Option<u64>, ApiError> {
    match body.get(member) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| serialization(member, "a non-negative integer")),
    }
}

fn opt_bool(body: &Value, member: &str) -> Result<Option<bool>, ApiError> {
    match body.get(member) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(serialization(member, "a boolean")),
    }
}

fn str_list(value: &Value, member: &str) -> Result<Vec<String>, ApiError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| serialization(member, "a list of strings"))
            })
            .collect(),
        _ => Err(serialization(member, "a list of strings")),
    }
}

fn opt_list(body: &Value, member: &str) -> Result<Vec<String>, ApiError> {
    str_list(body.get(member).unwrap_or(&Value::Null), member)
}

/// `MaxResults` within `[min, 50]` (default 50) and `NextToken` (an offset this endpoint
/// handed out).
fn paging(body: &Value, min: u64) -> Result<(usize, usize), ApiError> {
    let max = opt_u64(body, "MaxResults")?.unwrap_or(50);
    if !(min..=50).contains(&max) {
        return Err(validation(
            "MaxResults",
            max,
            &format!("Member must have value between {min} and 50"),
        ));
    }
    let offset = match opt_str(body, "NextToken")? {
        None => 0,
        Some(t) => t.parse().map_err(|_| {
            client_error("InvalidNextToken", format!("NextToken {t:?} is not valid"))
        })?,
    };
    Ok((max as usize, offset))
}

fn page<T>(items: Vec<T>, (max, offset): (usize, usize)) -> (Vec<T>, Option<String>) {
    let total = items.len();
    let items: Vec<T> = items.into_iter().skip(offset).take(max).collect();
    let next = (offset + max < total).then(|| (offset + max).to_string());
    (items, next)
}

fn with_next(mut out: Map<String, Value>, next: Option<String>) -> Value {
    if let Some(token) = next {
        out.insert("NextToken".into(), Value::String(token));
    }
    Value::Object(out)
}

const UNSUPPORTED_SEND_MEMBERS: [&str; 8] = [
    "Targets",
    "OutputS3BucketName",
    "OutputS3KeyPrefix",
    "OutputS3Region",
    "NotificationConfig",
    "ServiceRoleArn",
    "AlarmConfiguration",
    "DocumentHash",
];

/// `CreateDocument` of a JSON Command document (what `infra/`'s `aws_ssm_document` does);
/// the endpoint keeps version 1 of each.
fn create_document(shared: &Arc<Shared>, body: &Value) -> Result<Value, ApiError> {
    let name = req_str(body, "Name")?;
    let content = req_str(body, "Content")?;
    let kind = opt_str(body, "DocumentType")?.unwrap_or("Command");
    if kind != "Command" {
        return Err(client_error(
            "InvalidDocumentType",
            format!("DocumentType {kind}: the local SSM endpoint creates Command documents only"),
        ));
    }
    let format = opt_str(body, "DocumentFormat")?.unwrap_or("JSON");
    if format != "JSON" {
        return Err(client_error(
            "InvalidDocumentContent",
            format!("DocumentFormat {format}: the local SSM endpoint reads JSON documents only"),
        ));
    }
    if !model::is_creatable_document_name(name) {
        return Err(validation(
            "Name",
            name,
            "Member must satisfy regular expression pattern: ^[a-zA-Z0-9_\\-.]{3,128}$ and must not start with aws, amazon or amzn",
        ));
    }
    let doc = model::parse_command_document(name, content)
        .map_err(|m| client_error("InvalidDocumentContent", m))?;
    let mut st = shared.lock();
    if st.documents.contains_key(name) || name == model::RUN_SHELL_SCRIPT {
        return Err(client_error(
            "DocumentAlreadyExists",
            format!("Document with same name {name} already exists"),
        ));
    }
    let answer = json!({ "DocumentDescription": {
        "Name": doc.name,
        "DocumentType": "Command",
        "DocumentFormat": "JSON",
        "SchemaVersion": doc.schema_version,
        "DocumentVersion": "1",
        "LatestVersion": "1",
        "DefaultVersion": "1",
        "Status": "Active",
        "Owner": model::ACCOUNT_ID,
        "PlatformTypes": ["Linux", "MacOS"],
        "Parameters": doc.parameters.iter().map(|p| json!({"Name": p})).collect::<Vec<_>>(),
    }});
    st.documents.insert(name.to_owned(), doc);
    Ok(answer)
}

fn send_command(shared: &Arc<Shared>, body: &Value) -> Result<Value, ApiError> {
    let document = req_str(body, "DocumentName")?;
    let doc = if document == model::RUN_SHELL_SCRIPT {
        model::run_shell_script_document()
    } else {
        shared
            .lock()
            .documents
            .get(document)
            .cloned()
            .ok_or_else(|| {
                client_error(
                    "InvalidDocument",
                    format!("Document {document} does not exist in account {} (create it with CreateDocument; the local SSM endpoint also runs {})", model::ACCOUNT_ID, model::RUN_SHELL_SCRIPT),
                )
            })?
    };
    for member in UNSUPPORTED_SEND_MEMBERS {
        if body.get(member).is_some_and(|v| !v.is_null()) {
            return Err(client_error(
                "ValidationException",
                format!("{member} is not supported by the local SSM endpoint: send InstanceIds, Parameters, TimeoutSeconds, MaxConcurrency, MaxErrors, Comment and CloudWatchOutputConfig"),
            ));
        }
    }
    if let Some(version) = opt_str(body, "DocumentVersion")? {
        if !["$DEFAULT", "$LATEST", "1"].contains(&version) {
            return Err(client_error(
                "InvalidDocumentVersion",
                format!("document version {version} of {document} does not exist"),
            ));
        }
    }
    let instance_ids = opt_list(body, "InstanceIds")?;
    if instance_ids.is_empty() || instance_ids.len() > 50 {
        return Err(validation(
            "InstanceIds",
            format!("{instance_ids:?}"),
            "Member must have length between 1 and 50",
        ));
    }
    for (n, id) in instance_ids.iter().enumerate() {
        if instance_ids[..n].contains(id) {
            return Err(client_error(
                "DuplicateInstanceId",
                format!("instance {id} is listed more than once in InstanceIds"),
            ));
        }
    }
    let (script, execution_timeout) = run_shell_script_parameters(&doc, body.get("Parameters"))?;
    let timeout_seconds =
        opt_u64(body, "TimeoutSeconds")?.unwrap_or(model::DEFAULT_DELIVERY_TIMEOUT.into());
    if !(30..=2_592_000).contains(&timeout_seconds) {
        return Err(validation(
            "TimeoutSeconds",
            timeout_seconds,
            "Member must have value between 30 and 2592000",
        ));
    }
    let max_concurrency =
        opt_str(body, "MaxConcurrency")?.unwrap_or(model::DEFAULT_MAX_CONCURRENCY);
    let concurrency = model::parse_max_concurrency(max_concurrency).ok_or_else(|| {
        validation(
            "MaxConcurrency",
            max_concurrency,
            "Member must satisfy regular expression pattern: ^([1-9][0-9]*|[1-9][0-9]%|[1-9]%|100%)$",
        )
    })?;
    let max_errors = opt_str(body, "MaxErrors")?.unwrap_or(model::DEFAULT_MAX_ERRORS);
    let errors = model::parse_max_errors(max_errors).ok_or_else(|| {
        validation(
            "MaxErrors",
            max_errors,
            "Member must satisfy regular expression pattern: ^([1-9][0-9]*|[0]|[1-9][0-9]%|[0-9]%|100%)$",
        )
    })?;
    let comment = opt_str(body, "Comment")?.unwrap_or_default();
    if comment.chars().count() > 100 {
        return Err(validation(
            "Comment",
            comment,
            "Member must have length less than or equal to 100",
        ));
    }
    let cloudwatch = match body.get("CloudWatchOutputConfig") {
        None | Some(Value::Null) => None,
        Some(c @ Value::Object(_)) => Some((
            opt_str(c, "CloudWatchLogGroupName")?
                .unwrap_or_default()
                .to_string(),
            opt_bool(c, "CloudWatchOutputEnabled")?.unwrap_or(false),
        )),
        Some(_) => return Err(serialization("CloudWatchOutputConfig", "an object")),
    };

    let mut st = shared.lock();
    let unknown: Vec<&str> = instance_ids
        .iter()
        .filter(|id| !st.instances.contains_key(*id))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(client_error(
            "InvalidInstanceId",
            format!(
                "Instances [[{}]] not in a valid state for account {}",
                unknown.join(", "),
                model::ACCOUNT_ID
            ),
        ));
    }
    let requested = SystemTime::now();
    let total = shared
        .cfg
        .delivery_second
        .saturating_mul((timeout_seconds + u64::from(execution_timeout)) as u32);
    let visible_at = Instant::now() + shared.cfg.registration_delay;
    let targets = instance_ids.len();
    let record = CommandRecord {
        id: model::uuid(),
        document_name: document.to_string(),
        plugin: doc.plugin.clone(),
        comment: comment.to_string(),
        parameters: body.get("Parameters").cloned().unwrap_or(json!({})),
        script,
        invocations: instance_ids
            .iter()
            .map(|id| InvocationRecord {
                instance_id: id.clone(),
                state: InvocationState::Pending,
                started: false,
                visible_at,
                stop: None,
                response_code: model::NOT_RUN_RESPONSE_CODE,
                stdout: String::new(),
                stderr: String::new(),
                execution_start: None,
                execution_end: None,
            })
            .collect(),
        instance_ids,
        requested,
        expires_after: requested + total,
        expires_at: Instant::now() + total,
        timeout_seconds: timeout_seconds as u32,
        execution_timeout,
        max_concurrency: max_concurrency.to_string(),
        max_errors: max_errors.to_string(),
        concurrency_limit: concurrency.concurrency_for(targets),
        error_limit: errors.errors_for(targets),
        cloudwatch,
        cancel_requested: false,
        status: ("Pending", "Pending"),
    };
    let answer = json!({ "Command": command_json(&record, &shared.cfg.region) });
    st.commands.push(record);
    let c = st.commands.len() - 1;
    drop(st);
    shared.spawn(format!("ssm-command-{c}"), move |s| dispatch(s, c));
    Ok(answer)
}

/// The shell step's parameters: `commands` (required, joined with newlines as the agent
/// writes its script) and the document's timeout parameter (`executionTimeout`), only those
/// the document declares.
fn run_shell_script_parameters(
    doc: &model::Document,
    parameters: Option<&Value>,
) -> Result<(String, u32), ApiError> {
    let invalid = |m: String| client_error("InvalidParameters", m);
    let params = match parameters {
        Some(Value::Object(p)) => p,
        None | Some(Value::Null) => {
            return Err(invalid("Parameter \"commands\" is required".into()))
        }
        Some(_) => return Err(serialization("Parameters", "a map of string lists")),
    };
    for key in params.keys() {
        if !doc.parameters.contains(key)
            || !(key == "commands" || doc.timeout_parameter.as_ref() == Some(key))
        {
            return Err(invalid(format!(
                "Parameter \"{key}\" is not supported by {} on the local SSM endpoint (commands, {})",
                doc.name,
                doc.timeout_parameter.as_deref().unwrap_or("no timeout parameter")
            )));
        }
    }
    let commands = str_list(params.get("commands").unwrap_or(&Value::Null), "commands")?;
    if commands.is_empty() {
        return Err(invalid("Parameter \"commands\" is required".into()));
    }
    let timeout = match doc.timeout_parameter.as_ref().and_then(|p| params.get(p)) {
        None => doc.default_execution_timeout,
        Some(v) => {
            let values = str_list(v, "executionTimeout")?;
            match values.as_slice() {
                [one] => model::parse_execution_timeout(one).ok_or_else(|| {
                    invalid(format!(
                        "Parameter \"executionTimeout\" value {one:?} is not valid: a whole number of seconds from 1 to 172800"
                    ))
                })?,
                _ => return Err(invalid("Parameter \"executionTimeout\" takes one value".into())),
            }
        }
    };
    Ok((commands.join("\n"), timeout))
}

fn cloudwatch_json(cmd: &CommandRecord) -> Value {
    let (group, enabled) = cmd.cloudwatch.clone().unwrap_or_default();
    json!({ "CloudWatchLogGroupName": group, "CloudWatchOutputEnabled": enabled })
}

/// The `Command` object (SendCommand, ListCommands).
fn command_json(cmd: &CommandRecord, region: &str) -> Value {
    let count =
        |f: fn(InvocationState) -> bool| cmd.invocations.iter().filter(|i| f(i.state)).count();
    json!({
        "CommandId": cmd.id,
        "DocumentName": cmd.document_name,
        "DocumentVersion": "$DEFAULT",
        "Comment": cmd.comment,
        "ExpiresAfter": model::epoch_seconds(cmd.expires_after),
        "Parameters": cmd.parameters,
        "InstanceIds": cmd.instance_ids,
        "Targets": [],
        "RequestedDateTime": model::epoch_seconds(cmd.requested),
        "Status": cmd.status.0,
        "StatusDetails": cmd.status.1,
        "OutputS3Region": region,
        "OutputS3BucketName": "",
        "OutputS3KeyPrefix": "",
        "MaxConcurrency": cmd.max_concurrency,
        "MaxErrors": cmd.max_errors,
        "TargetCount": cmd.invocations.len(),
        "CompletedCount": count(InvocationState::is_terminal),
        "ErrorCount": count(InvocationState::counts_as_error),
        "DeliveryTimedOutCount": count(|s| s == InvocationState::DeliveryTimedOut),
        "ServiceRole": "",
        "CloudWatchOutputConfig": cloudwatch_json(cmd),
        "TimeoutSeconds": cmd.timeout_seconds,
    })
}

fn get_command_invocation(shared: &Arc<Shared>, body: &Value) -> Result<Value, ApiError> {
    let command_id = req_str(body, "CommandId")?;
    let instance_id = req_str(body, "InstanceId")?;
    if let Some(plugin) = opt_str(body, "PluginName")? {
        let st = shared.lock();
        if let Some(cmd) = st.commands.iter().find(|c| c.id == command_id) {
            if plugin != cmd.plugin {
                return Err(client_error(
                    "InvalidPluginName",
                    format!(
                        "plugin {plugin} is not a step of {} (its step is {})",
                        cmd.document_name, cmd.plugin
                    ),
                ));
            }
        }
    }
    let st = shared.lock();
    let found = st
        .commands
        .iter()
        .find(|c| c.id == command_id)
        .and_then(|c| {
            c.invocations
                .iter()
                .find(|i| i.instance_id == instance_id && Instant::now() >= i.visible_at)
                .map(|i| (c, i))
        });
    let Some((cmd, inv)) = found else {
        return Err(client_error(
            "InvocationDoesNotExist",
            format!("no invocation of command {command_id} on instance {instance_id} (yet)"),
        ));
    };
    let time = |t: Option<SystemTime>| t.map(model::iso_millis).unwrap_or_default();
    let elapsed = match (inv.execution_start, inv.execution_end) {
        (Some(s), Some(e)) => model::iso_duration(e.duration_since(s).unwrap_or(Duration::ZERO)),
        _ => String::new(),
    };
    Ok(json!({
        "CommandId": cmd.id,
        "InstanceId": inv.instance_id,
        "Comment": cmd.comment,
        "DocumentName": cmd.document_name,
        "DocumentVersion": "$DEFAULT",
        "PluginName": cmd.plugin,
        "ResponseCode": inv.response_code,
        "ExecutionStartDateTime": time(inv.execution_start),
        "ExecutionElapsedTime": elapsed,
        "ExecutionEndDateTime": time(inv.execution_end),
        "Status": inv.state.status(),
        "StatusDetails": inv.state.details(),
        "StandardOutputContent": model::first_chars(&inv.stdout, model::STDOUT_LIMIT),
        "StandardOutputUrl": "",
        "StandardErrorContent": model::first_chars(&inv.stderr, model::STDERR_LIMIT),
        "StandardErrorUrl": "",
        "CloudWatchOutputConfig": cloudwatch_json(cmd),
    }))
}

/// `ListCommands` / `ListCommandInvocations` filters.
#[derive(Default)]
struct CommandFilters {
    invoked_after: Option<SystemTime>,
    invoked_before: Option<SystemTime>,
    status: Option<String>,
    document_name: Option<String>,
    /// `Executing` or `Complete`.
    stage: Option<String>,
}

const FILTER_STATUSES: [&str; 7] = [
    "Pending",
    "InProgress",
    "Success",
    "Cancelled",
    "Failed",
    "TimedOut",
    "Cancelling",
];

fn command_filters(body: &Value) -> Result<CommandFilters, ApiError> {
    let mut f = CommandFilters::default();
    let list = match body.get("Filters") {
        None | Some(Value::Null) => return Ok(f),
        Some(Value::Array(l)) => l,
        Some(_) => return Err(serialization("Filters", "a list of {key, value}")),
    };
    for filter in list {
        let key = req_str(filter, "key")?;
        let value = req_str(filter, "value")?;
        let bad = || {
            client_error(
                "InvalidFilterValue",
                format!("filter {key} does not take the value {value:?}"),
            )
        };
        match key {
            "InvokedAfter" => f.invoked_after = Some(model::parse_filter_time(value).ok_or_else(bad)?),
            "InvokedBefore" => f.invoked_before = Some(model::parse_filter_time(value).ok_or_else(bad)?),
            "Status" if FILTER_STATUSES.contains(&value) => f.status = Some(value.into()),
            "ExecutionStage" if ["Executing", "Complete"].contains(&value) => f.stage = Some(value.into()),
            "DocumentName" => f.document_name = Some(value.into()),
            "Status" | "ExecutionStage" => return Err(bad()),
            other => {
                return Err(client_error(
                    "InvalidFilterKey",
                    format!("filter key {other} is not one of InvokedAfter, InvokedBefore, Status, ExecutionStage, DocumentName"),
                ))
            }
        }
    }
    Ok(f)
}

impl CommandFilters {
    /// Whether a command (or one of its invocations) with this status passes.
    fn admits(&self, cmd: &CommandRecord, status: &str, terminal: bool) -> bool {
        self.invoked_after.is_none_or(|t| cmd.requested >= t)
            && self.invoked_before.is_none_or(|t| cmd.requested < t)
            && self.status.as_deref().is_none_or(|s| s == status)
            && self
                .document_name
                .as_deref()
                .is_none_or(|d| d == cmd.document_name)
            && self
                .stage
                .as_deref()
                .is_none_or(|s| (s == "Complete") == terminal)
    }
}

/// Commands newest first, as SSM lists them.
fn newest_first(st: &State) -> impl Iterator<Item = &CommandRecord> {
    st.commands.iter().rev()
}

fn list_commands(shared: &Arc<Shared>, body: &Value) -> Result<Value, ApiError> {
    let command_id = opt_str(body, "CommandId")?;
    let instance_id = opt_str(body, "InstanceId")?;
    let filters = command_filters(body)?;
    let paging = paging(body, 1)?;
    let st = shared.lock();
    if let Some(id) = command_id {
        if !st.commands.iter().any(|c| c.id == id) {
            return Err(client_error(
                "InvalidCommandId",
                format!("command {id} does not exist"),
            ));
        }
    }
    let commands: Vec<Value> = newest_first(&st)
        .filter(|c| command_id.is_none_or(|id| c.id == id))
        .filter(|c| instance_id.is_none_or(|id| c.instance_ids.iter().any(|i| i == id)))
        .filter(|c| {
            let terminal = c.invocations.iter().all(|i| i.state.is_terminal());
            filters.admits(c, c.status.0, terminal)
        })
        .map(|c| command_json(c, &shared.cfg.region))
        .collect();
    let (commands, next) = page(commands, paging);
    let mut out = Map::new();
    out.insert("Commands".into(), Value::Array(commands));
    Ok(with_next(out, next))
}

fn list_command_invocations(shared: &Arc<Shared>, body: &Value) -> Result<Value, ApiError> {
    let command_id = opt_str(body, "CommandId")?;
    let instance_id = opt_str(body, "InstanceId")?;
    let details = opt_bool(body, "Details")?.unwrap_or(false);
    let filters = command_filters(body)?;
    let paging = paging(body, 1)?;
    let region = &shared.cfg.region;
    let st = shared.lock();
    let now = Instant::now();
    let mut items = Vec::new();
    for cmd in newest_first(&st).filter(|c| command_id.is_none_or(|id| c.id == id)) {
        for inv in &cmd.invocations {
            if now < inv.visible_at
                || instance_id.is_some_and(|id| id != inv.instance_id)
                || !filters.admits(cmd, inv.state.status(), inv.state.is_terminal())
            {
                continue;
            }
            let plugins = if details {
                let mut plugin = json!({
                    "Name": cmd.plugin,
                    "Status": inv.state.status(),
                    "StatusDetails": inv.state.details(),
                    "ResponseCode": inv.response_code,
                    "Output": model::plugin_output(&inv.stdout, &inv.stderr),
                    "StandardOutputUrl": "",
                    "StandardErrorUrl": "",
                    "OutputS3Region": region,
                    "OutputS3BucketName": "",
                    "OutputS3KeyPrefix": "",
                });
                if let Some(t) = inv.execution_start {
                    plugin["ResponseStartDateTime"] = json!(model::epoch_seconds(t));
                }
                if let Some(t) = inv.execution_end {
                    plugin["ResponseFinishDateTime"] = json!(model::epoch_seconds(t));
                }
                vec![plugin]
            } else {
                Vec::new()
            };
            items.push(json!({
                "CommandId": cmd.id,
                "InstanceId": inv.instance_id,
                "InstanceName": "",
                "Comment": cmd.comment,
                "DocumentName": cmd.document_name,
                "DocumentVersion": "$DEFAULT",
                "RequestedDateTime": model::epoch_seconds(cmd.requested),
                "Status": inv.state.status(),
                "StatusDetails": inv.state.details(),
                "TraceOutput": "",
                "StandardOutputUrl": "",
                "StandardErrorUrl": "",
                "CommandPlugins": plugins,
                "ServiceRole": "",
                "CloudWatchOutputConfig": cloudwatch_json(cmd),
            }));
        }
    }
    let (items, next) = page(items, paging);
    let mut out = Map::new();
    out.insert("CommandInvocations".into(), Value::Array(items));
    Ok(with_next(out, next))
}

/// One instance as `DescribeInstanceInformation` filters see it.
struct InstanceView {
    id: String,
    online: bool,
    tags: Vec<(String, String)>,
    registered: SystemTime,
    last_ping: SystemTime,
}

impl InstanceView {
    fn ping_status(&self) -> &'static str {
        if self.online {
            "Online"
        } else {
            "ConnectionLost"
        }
    }

    /// Whether the instance passes one filter (any of `values`).
    fn admits(&self, key: &str, values: &[String]) -> Result<bool, ApiError> {
        let any = |v: &str| values.iter().any(|x| x == v);
        Ok(match key {
            "InstanceIds" => any(&self.id),
            "PingStatus" => {
                if let Some(bad) = values
                    .iter()
                    .find(|v| !["Online", "ConnectionLost", "Inactive"].contains(&v.as_str()))
                {
                    return Err(client_error(
                        "InvalidInstanceInformationFilterValue",
                        format!("PingStatus does not take the value {bad:?} (Online, ConnectionLost, Inactive)"),
                    ));
                }
                any(self.ping_status())
            }
            "PlatformTypes" => any("Linux"),
            "ResourceType" => any("EC2Instance"),
            "tag-key" => self.tags.iter().any(|(k, _)| any(k)),
            _ => match key.strip_prefix("tag:") {
                Some(tag) => self.tags.iter().any(|(k, v)| k == tag && any(v)),
                None => {
                    return Err(client_error(
                        "InvalidFilterKey",
                        format!("filter key {key} is not supported by the local SSM endpoint (InstanceIds, PingStatus, PlatformTypes, ResourceType, tag-key, tag:<key>)"),
                    ))
                }
            },
        })
    }
}

fn describe_instance_information(shared: &Arc<Shared>, body: &Value) -> Result<Value, ApiError> {
    let mut filters: Vec<(String, Vec<String>)> = Vec::new();
    let has = |m: &str| body.get(m).is_some_and(|v| !v.is_null());
    if has("Filters") && has("InstanceInformationFilterList") {
        return Err(client_error(
            "InvalidFilter",
            "send either Filters or InstanceInformationFilterList, not both",
        ));
    }
    for (member, key_member, values_member) in [
        ("Filters", "Key", "Values"),
        ("InstanceInformationFilterList", "key", "valueSet"),
    ] {
        match body.get(member) {
            None | Some(Value::Null) => {}
            Some(Value::Array(list)) => {
                for f in list {
                    let key = req_str(f, key_member)?.to_string();
                    let values = opt_list(f, values_member)?;
                    if values.is_empty() {
                        return Err(client_error(
                            "InvalidInstanceInformationFilterValue",
                            format!("filter {key} needs at least one value"),
                        ));
                    }
                    filters.push((key, values));
                }
            }
            Some(_) => return Err(serialization(member, "a list of filters")),
        }
    }
    let paging = paging(body, 5)?;
    let mut st = shared.lock();
    let now = SystemTime::now();
    let views: Vec<InstanceView> = st
        .instances
        .iter_mut()
        .map(|(id, reg)| {
            let online = reg.instance.online();
            if online {
                reg.last_ping = now;
            }
            InstanceView {
                id: id.clone(),
                online,
                tags: reg.instance.tags(),
                registered: reg.registered,
                last_ping: reg.last_ping,
            }
        })
        .collect();
    drop(st);
    let mut list = Vec::new();
    for view in views {
        let mut admitted = true;
        for (key, values) in &filters {
            admitted &= view.admits(key, values)?;
        }
        if admitted {
            list.push(json!({
                "InstanceId": view.id,
                "PingStatus": view.ping_status(),
                "LastPingDateTime": model::epoch_seconds(view.last_ping),
                "AgentVersion": "3.3.0.0",
                "IsLatestVersion": true,
                "PlatformType": "Linux",
                "PlatformName": "Debian GNU/Linux",
                "PlatformVersion": "12",
                "ResourceType": "EC2Instance",
                "RegistrationDate": model::epoch_seconds(view.registered),
                "SourceId": view.id,
                "SourceType": "AWS::EC2::Instance",
            }));
        }
    }
    let (list, next) = page(list, paging);
    let mut out = Map::new();
    out.insert("InstanceInformationList".into(), Value::Array(list));
    Ok(with_next(out, next))
}

fn cancel_command(shared: &Arc<Shared>, body: &Value) -> Result<Value, ApiError> {
    let command_id = req_str(body, "CommandId")?;
    let instance_ids = opt_list(body, "InstanceIds")?;
    let mut st = shared.lock();
    let Some(c) = st.commands.iter().position(|c| c.id == command_id) else {
        return Err(client_error(
            "InvalidCommandId",
            format!("command {command_id} does not exist"),
        ));
    };
    let cmd = &st.commands[c];
    if let Some(stranger) = instance_ids
        .iter()
        .find(|id| !cmd.instance_ids.contains(id))
    {
        return Err(client_error(
            "InvalidInstanceId",
            format!("instance {stranger} is not a target of command {command_id}"),
        ));
    }
    let selected: Vec<usize> = (0..cmd.invocations.len())
        .filter(|&i| {
            instance_ids.is_empty() || instance_ids.contains(&cmd.invocations[i].instance_id)
        })
        .collect();
    let whole = selected.len() == cmd.invocations.len();
    if whole && !cmd.invocations.iter().all(|i| i.state.is_terminal()) {
        st.commands[c].cancel_requested = true;
    }
    for i in selected {
        let inv = &st.commands[c].invocations[i];
        match (inv.state, inv.stop.clone()) {
            (InvocationState::InProgress, Some(stop)) => {
                shared.transition(&mut st, c, i, InvocationState::Cancelling);
                stop.cancel();
            }
            (InvocationState::Pending, _) => {
                shared.transition(&mut st, c, i, InvocationState::Cancelled)
            }
            _ => {}
        }
    }
    let cmd = &mut st.commands[c];
    shared.refresh_command_status(cmd);
    shared.changed.notify_all();
    Ok(json!({}))
}
