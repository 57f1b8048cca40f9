//! The rules of SSM Run Command as pure functions: invocation and command statuses, the
//! rate controls (`MaxConcurrency`, `MaxErrors`), what SSM keeps of a script's output and how
//! times are written. Everything the endpoint decides is decided here, so each rule has a unit
//! test and the threads around it only do I/O.
//!
//! Sources (AWS Systems Manager User Guide and API Reference, and the amazon-ssm-agent source):
//! "Understanding command statuses" (statuses, which count against MaxErrors, command
//! aggregation, timeouts), "Run commands at scale" (MaxConcurrency, MaxErrors),
//! `GetCommandInvocation` (24,000 / 8,000 characters, ResponseCode -1 when nothing ran) and the
//! agent's `pluginutil`/`executers` packages (exit code 137 for a stopped script, the
//! "failed to run commands" line, the 2,500-character plugin output with its error title).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

/// The AWS-owned document this endpoint runs without a `CreateDocument`.
pub const RUN_SHELL_SCRIPT: &str = "AWS-RunShellScript";
/// The plugin (step) of `AWS-RunShellScript`, as `GetCommandInvocation` names it.
pub const PLUGIN_NAME: &str = "aws:runShellScript";
/// The account moto answers for; the endpoint speaks for the same one.
pub const ACCOUNT_ID: &str = "123456789012";
/// `GetCommandInvocation.StandardOutputContent` keeps the first 24,000 characters.
pub const STDOUT_LIMIT: usize = 24_000;
/// `GetCommandInvocation.StandardErrorContent` keeps the first 8,000 characters.
pub const STDERR_LIMIT: usize = 8_000;
/// `ListCommandInvocations` `CommandPlugins[].Output`: the agent's 2,500-character summary.
pub const PLUGIN_OUTPUT_LIMIT: usize = 2_500;
/// The agent's exit code for a script it stopped (timeout or cancel): 128 + SIGKILL.
pub const STOPPED_EXIT_CODE: i32 = 137;
/// `ResponseCode` of an invocation whose script never ran.
pub const NOT_RUN_RESPONSE_CODE: i32 = -1;
/// `executionTimeout` default of `AWS-RunShellScript` (seconds).
pub const DEFAULT_EXECUTION_TIMEOUT: u32 = 3_600;
/// `SendCommand.TimeoutSeconds` default, the delivery timeout (seconds).
pub const DEFAULT_DELIVERY_TIMEOUT: u32 = 3_600;
/// `SendCommand.MaxConcurrency` default.
pub const DEFAULT_MAX_CONCURRENCY: &str = "50";
/// `SendCommand.MaxErrors` default.
pub const DEFAULT_MAX_ERRORS: &str = "0";

/// Where one invocation (one instance of a command) stands. Each has SSM's coarse `Status`
/// and its `StatusDetails`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationState {
    /// Not yet received by the agent: waiting for a concurrency slot or for the agent.
    Pending,
    /// Received by the agent and running.
    InProgress,
    /// `CancelCommand` arrived while the script ran; the agent is stopping it.
    Cancelling,
    /// Exit code 0.
    Success,
    /// Non-zero exit code; counts against MaxErrors.
    Failed,
    /// The agent stopped the script at `executionTimeout`; counts against MaxErrors.
    ExecutionTimedOut,
    /// Never delivered before the command expired; does not count against MaxErrors.
    DeliveryTimedOut,
    /// The instance is gone (deregistered) before delivery; does not count against MaxErrors.
    Undeliverable,
    /// Never sent: the command had exceeded MaxErrors ("canceled by the system").
    Terminated,
    /// Cancelled by `CancelCommand`, before or while it ran.
    Cancelled,
}

impl InvocationState {
    /// SSM's coarse `Status` (`CommandInvocationStatus`).
    pub fn status(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::InProgress => "InProgress",
            Self::Cancelling => "Cancelling",
            Self::Success => "Success",
            Self::Failed | Self::Undeliverable => "Failed",
            Self::ExecutionTimedOut | Self::DeliveryTimedOut => "TimedOut",
            Self::Terminated | Self::Cancelled => "Cancelled",
        }
    }

    /// SSM's `StatusDetails`, as the API spells it (no spaces).
    pub fn details(self) -> &'static str {
        match self {
            Self::Pending => "Pending",
            Self::InProgress => "InProgress",
            Self::Cancelling => "Cancelling",
            Self::Success => "Success",
            Self::Failed => "Failed",
            Self::ExecutionTimedOut => "ExecutionTimedOut",
            Self::DeliveryTimedOut => "DeliveryTimedOut",
            Self::Undeliverable => "Undeliverable",
            Self::Terminated => "Terminated",
            Self::Cancelled => "Cancelled",
        }
    }

    /// A terminal state never changes again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Pending | Self::InProgress | Self::Cancelling)
    }

    /// Failed and execution timeouts count against MaxErrors; nothing else does.
    pub fn counts_as_error(self) -> bool {
        matches!(self, Self::Failed | Self::ExecutionTimedOut)
    }
}

/// A `MaxConcurrency` or `MaxErrors` value: a number of targets or a percentage of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// An absolute number.
    Count(usize),
    /// A percentage of the target count.
    Percent(usize),
}

impl Rate {
    /// How many targets may run at once: a percentage rounds up, and at least one runs (a
    /// command always makes progress).
    pub fn concurrency_for(self, targets: usize) -> usize {
        match self {
            Self::Count(n) => n.max(1),
            Self::Percent(p) => (targets * p).div_ceil(100).max(1),
        }
    }

    /// How many errors are allowed before no new invocation starts: a percentage rounds
    /// down (10% of 50 targets allows 5, and the sixth error stops the command, as the
    /// User Guide's example says).
    pub fn errors_for(self, targets: usize) -> usize {
        match self {
            Self::Count(n) => n,
            Self::Percent(p) => targets * p / 100,
        }
    }
}

/// Parses `MaxConcurrency` with the API's pattern `^([1-9][0-9]*|[1-9][0-9]%|[1-9]%|100%)$`.
pub fn parse_max_concurrency(value: &str) -> Option<Rate> {
    parse_rate(value).filter(|r| match r {
        Rate::Count(n) => *n >= 1,
        Rate::Percent(p) => (1..=100).contains(p),
    })
}

/// Parses `MaxErrors` with the API's pattern `^([1-9][0-9]*|[0]|[1-9][0-9]%|[0-9]%|100%)$`.
pub fn parse_max_errors(value: &str) -> Option<Rate> {
    parse_rate(value).filter(|r| match r {
        Rate::Count(_) => true,
        Rate::Percent(p) => *p <= 100,
    })
}

fn parse_rate(value: &str) -> Option<Rate> {
    let (digits, percent) = match value.strip_suffix('%') {
        Some(d) => (d, true),
        None => (value, false),
    };
    let canonical = digits == "0" || (!digits.starts_with('0') && !digits.is_empty());
    if !canonical || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 9 {
        return None;
    }
    let n: usize = digits.parse().ok()?;
    Some(if percent {
        Rate::Percent(n)
    } else {
        Rate::Count(n)
    })
}

/// Parses `AWS-RunShellScript`'s `executionTimeout` (a string of 1 to 172800 seconds).
pub fn parse_execution_timeout(value: &str) -> Option<u32> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 6 {
        return None;
    }
    value.parse().ok().filter(|s| (1..=172_800).contains(s))
}

/// What the dispatcher of one command does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// Start the next target (in `InstanceIds` order).
    Start,
    /// Wait for a running invocation to end.
    Wait,
    /// Errors exceeded MaxErrors: the targets not yet started end `Terminated`.
    StopForErrors,
    /// Every target has been started.
    AllStarted,
}

/// The dispatcher's view of one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Targets of the command.
    pub targets: usize,
    /// Targets started (handed to delivery), whatever their state now.
    pub started: usize,
    /// Started targets that are not terminal yet (they hold a concurrency slot).
    pub in_flight: usize,
    /// Terminal invocations that count against MaxErrors.
    pub errors: usize,
}

/// Whether another target may start: no new invocation once errors exceed `max_errors`
/// ("if you specify 3, the system stops sending the command when the fourth error is
/// received"), and never more than `max_concurrency` at once. SSM's ramp-up (one target, then
/// two more, …) is acknowledged by the service, not by the agents, so it is not modelled.
pub fn next_dispatch(max_concurrency: usize, max_errors: usize, p: Progress) -> Dispatch {
    if p.started == p.targets {
        Dispatch::AllStarted
    } else if p.errors > max_errors {
        Dispatch::StopForErrors
    } else if p.in_flight < max_concurrency {
        Dispatch::Start
    } else {
        Dispatch::Wait
    }
}

/// The command's own `Status` and `StatusDetails`, from its invocations.
///
/// While any runs: `Pending` (no agent has received it), `Cancelling` after `CancelCommand`,
/// else `InProgress`. Once all are terminal: `Cancelled` after `CancelCommand`; `Failed` when
/// every invocation was undeliverable; `Failed` / `TimedOut`(`ExecutionTimedOut`) when errors
/// exceeded MaxErrors; `TimedOut`(`DeliveryTimedOut`) when more than MaxErrors were never
/// delivered; `Success` when every delivered one succeeded (undeliverable ones do not count);
/// else `Failed`(`Incomplete`).
pub fn command_status(
    invocations: &[InvocationState],
    max_errors: usize,
    cancel_requested: bool,
) -> (&'static str, &'static str) {
    use InvocationState as S;
    if invocations.iter().any(|s| !s.is_terminal()) {
        if cancel_requested {
            return ("Cancelling", "Cancelling");
        }
        let received = invocations.iter().any(|s| *s != S::Pending);
        return if received {
            ("InProgress", "InProgress")
        } else {
            ("Pending", "Pending")
        };
    }
    let count = |f: fn(&S) -> bool| invocations.iter().filter(|s| f(s)).count();
    let failed = count(|s| *s == S::Failed);
    let exec_timed_out = count(|s| *s == S::ExecutionTimedOut);
    let delivery_timed_out = count(|s| *s == S::DeliveryTimedOut);
    let undeliverable = count(|s| *s == S::Undeliverable);
    let success = count(|s| *s == S::Success);
    if cancel_requested {
        ("Cancelled", "Cancelled")
    } else if undeliverable == invocations.len() {
        ("Failed", "Failed")
    } else if failed + exec_timed_out > max_errors {
        if exec_timed_out > failed {
            ("TimedOut", "ExecutionTimedOut")
        } else {
            ("Failed", "Failed")
        }
    } else if delivery_timed_out > max_errors {
        ("TimedOut", "DeliveryTimedOut")
    } else if success + undeliverable == invocations.len() {
        ("Success", "Success")
    } else {
        ("Failed", "Incomplete")
    }
}

/// The invocation state of a script that ended: stopped by the agent (timeout or cancel),
/// exit code 0, or anything else.
pub fn finished_state(exit_code: i32, stopped: Option<super::StopReason>) -> InvocationState {
    match stopped {
        Some(super::StopReason::ExecutionTimeout) => InvocationState::ExecutionTimedOut,
        Some(super::StopReason::Cancel) => InvocationState::Cancelled,
        None if exit_code == 0 => InvocationState::Success,
        None => InvocationState::Failed,
    }
}

/// The stderr the agent reports: the script's own, and for a failed run the agent's
/// `failed to run commands: exit status N` line after it (a stopped run gets no such line).
pub fn agent_stderr(stderr: &str, exit_code: i32, state: InvocationState) -> String {
    if state != InvocationState::Failed {
        return stderr.to_string();
    }
    let line = format!("failed to run commands: exit status {exit_code}");
    if stderr.is_empty() {
        line
    } else if stderr.ends_with('\n') {
        format!("{stderr}{line}")
    } else {
        format!("{stderr}\n{line}")
    }
}

/// The first `limit` characters (not bytes) of `text`.
pub fn first_chars(text: &str, limit: usize) -> &str {
    match text.char_indices().nth(limit) {
        Some((byte, _)) => &text[..byte],
        None => text,
    }
}

const ERROR_TITLE: &str = "\n----------ERROR-------\n";
const OUTPUT_TRUNCATED: &str = "\n---Output truncated---";
const ERROR_TRUNCATED: &str = "\n---Error truncated----";

/// `CommandPlugins[].Output`: stdout, then stderr under the agent's error title, cut to
/// 2,500 characters with the agent's truncation markers (both halves shortened when both
/// are long, otherwise the longer one).
pub fn plugin_output(stdout: &str, stderr: &str) -> String {
    let out_len = stdout.chars().count();
    let err_len = stderr.chars().count();
    let title = if err_len > 0 { ERROR_TITLE } else { "" };
    let space = PLUGIN_OUTPUT_LIMIT - title.len();
    if out_len + err_len < space {
        return format!("{stdout}{title}{stderr}");
    }
    if out_len > space / 2 && err_len > space / 2 {
        let half = (space - OUTPUT_TRUNCATED.len() - ERROR_TRUNCATED.len()) / 2;
        return format!(
            "{}{OUTPUT_TRUNCATED}{title}{}{ERROR_TRUNCATED}",
            first_chars(stdout, half),
            first_chars(stderr, half)
        );
    }
    if out_len < space / 2 {
        let keep = space - ERROR_TRUNCATED.len() - out_len;
        return format!(
            "{stdout}{title}{}{ERROR_TRUNCATED}",
            first_chars(stderr, keep)
        );
    }
    let keep = space - OUTPUT_TRUNCATED.len() - err_len;
    format!(
        "{}{OUTPUT_TRUNCATED}{title}{stderr}",
        first_chars(stdout, keep)
    )
}

/// CloudWatch Logs messages for one output stream: the output cut into pieces of at most
/// `MAX_LOG_EVENT_CHARS` characters (an event's message must not be empty and stays under
/// 256 KB), so that the messages joined give the output back exactly.
pub fn log_messages(output: &str) -> Vec<String> {
    let mut messages = Vec::new();
    let mut rest = output;
    while !rest.is_empty() {
        let piece = first_chars(rest, MAX_LOG_EVENT_CHARS);
        messages.push(piece.to_string());
        rest = &rest[piece.len()..];
    }
    messages
}

/// 50,000 characters stay under CloudWatch Logs' 256 KB event limit in any UTF-8.
pub const MAX_LOG_EVENT_CHARS: usize = 50_000;

/// The log streams the agent writes: `<command-id>/<instance-id>/<plugin>/stdout` and
/// `…/stderr`, the plugin with `:` written as `-` (`aws-runShellScript` for
/// `AWS-RunShellScript`, the step's name for a schema 2.2 document).
pub fn log_stream(command_id: &str, instance_id: &str, plugin: &str, which: &str) -> String {
    format!(
        "{command_id}/{instance_id}/{}/{which}",
        plugin.replace(':', "-")
    )
}

/// A Command document the endpoint can run: `AWS-RunShellScript`, or one made with
/// `CreateDocument` whose one step is `aws:runShellScript` fed by a `commands` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Document name.
    pub name: String,
    /// The plugin an invocation reports (`PluginName`): `aws:runShellScript` for the AWS
    /// document (schema 1.2), the step's `name` for schema 2.2.
    pub plugin: String,
    /// Parameters the document declares (SendCommand may pass only these).
    pub parameters: Vec<String>,
    /// The parameter feeding the step's `timeoutSeconds`, if any.
    pub timeout_parameter: Option<String>,
    /// Its default (seconds).
    pub default_execution_timeout: u32,
    /// `SchemaVersion` as `CreateDocument` answers it.
    pub schema_version: String,
}

/// `AWS-RunShellScript` as the endpoint knows it.
pub fn run_shell_script_document() -> Document {
    Document {
        name: RUN_SHELL_SCRIPT.into(),
        plugin: PLUGIN_NAME.into(),
        parameters: vec!["commands".into(), "executionTimeout".into()],
        timeout_parameter: Some("executionTimeout".into()),
        default_execution_timeout: DEFAULT_EXECUTION_TIMEOUT,
        schema_version: "1.2".into(),
    }
}

/// Whether `CreateDocument` accepts `name` for a new document: 3-128 of letters, digits,
/// `_ - .`, not starting with the prefixes AWS reserves (`aws`, `amazon`, `amzn`).
pub fn is_creatable_document_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    (3..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        && !["aws", "amazon", "amzn"]
            .iter()
            .any(|p| lower.starts_with(p))
}

/// Reads a JSON Command document as `CreateDocument` receives it. The endpoint runs schema
/// 2.2 documents with exactly one `aws:runShellScript` step whose `runCommand` is
/// `{{ commands }}` (a declared StringList parameter) and whose `timeoutSeconds`, if given,
/// is `{{ <a declared String parameter> }}`; anything else is refused with a message saying
/// what the endpoint runs (AWS would accept more, and the endpoint must not pretend).
pub fn parse_command_document(name: &str, content: &str) -> Result<Document, String> {
    let doc: serde_json::Value =
        serde_json::from_str(content).map_err(|e| format!("Content is not JSON: {e}"))?;
    let schema = doc["schemaVersion"].as_str().unwrap_or_default();
    if schema != "2.2" {
        return Err(format!(
            "schemaVersion {schema:?}: the local SSM endpoint runs schema 2.2 Command documents"
        ));
    }
    let params = doc["parameters"].as_object().cloned().unwrap_or_default();
    let reference = |v: &serde_json::Value| -> Option<String> {
        let t = v.as_str()?.trim();
        let inner = t.strip_prefix("{{")?.strip_suffix("}}")?.trim();
        Some(inner.to_owned())
    };
    let steps = doc["mainSteps"].as_array().cloned().unwrap_or_default();
    let [step] = steps.as_slice() else {
        return Err(format!(
            "{} mainSteps: the local SSM endpoint runs documents of one aws:runShellScript step",
            steps.len()
        ));
    };
    if step["action"] != "aws:runShellScript" {
        return Err(format!(
            "action {}: the local SSM endpoint runs aws:runShellScript steps only",
            step["action"]
        ));
    }
    let plugin = step["name"].as_str().unwrap_or_default().to_owned();
    if plugin.is_empty() {
        return Err("the step has no name".into());
    }
    let commands = reference(&step["inputs"]["runCommand"])
        .filter(|p| params.get(p).is_some_and(|d| d["type"] == "StringList"))
        .ok_or("inputs.runCommand must be {{ <a StringList parameter> }}")?;
    if commands != "commands" {
        return Err(format!(
            "runCommand takes {{{{ {commands} }}}}: the endpoint feeds the step from a parameter named commands"
        ));
    }
    let timeout_parameter = match step["inputs"].get("timeoutSeconds") {
        None => None,
        Some(v) => Some(
            reference(v)
                .filter(|p| params.get(p).is_some_and(|d| d["type"] == "String"))
                .ok_or("inputs.timeoutSeconds must be {{ <a String parameter> }}")?,
        ),
    };
    let default_execution_timeout = match &timeout_parameter {
        None => DEFAULT_EXECUTION_TIMEOUT,
        Some(p) => match params[p].get("default") {
            None => DEFAULT_EXECUTION_TIMEOUT,
            Some(d) => d
                .as_str()
                .and_then(parse_execution_timeout)
                .ok_or_else(|| format!("parameter {p}'s default {d} is not 1-172800 seconds"))?,
        },
    };
    Ok(Document {
        name: name.to_owned(),
        plugin,
        parameters: params.keys().cloned().collect(),
        timeout_parameter,
        default_execution_timeout,
        schema_version: schema.to_owned(),
    })
}

/// The agent's log group when `CloudWatchLogGroupName` is not given: `/aws/ssm/<document>`.
pub fn default_log_group(document: &str) -> String {
    format!("/aws/ssm/{document}")
}

/// The ARN EventBridge events and SSM name an instance by.
pub fn instance_arn(region: &str, instance_id: &str) -> String {
    format!("arn:aws:ec2:{region}:{ACCOUNT_ID}:instance/{instance_id}")
}

/// A time as the JSON 1.1 protocol sends timestamps: seconds since the epoch, with
/// milliseconds.
pub fn epoch_seconds(t: SystemTime) -> f64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_millis() as f64) / 1000.0
}

/// `2016-07-10T21:51:30.049Z`: how events and `GetCommandInvocation`'s execution times
/// write a time.
pub fn iso_millis(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let dt = OffsetDateTime::from_unix_timestamp(d.as_secs() as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        d.subsec_millis()
    )
}

/// `ExecutionElapsedTime` as an ISO 8601 duration, the way SSM writes it (`PT1H0.271S`,
/// `PT2.5S` is written `PT2.500S`).
pub fn iso_duration(d: Duration) -> String {
    let total_ms = d.as_millis();
    let hours = total_ms / 3_600_000;
    let minutes = (total_ms / 60_000) % 60;
    let millis = total_ms % 60_000;
    let mut s = String::from("PT");
    if hours > 0 {
        s.push_str(&format!("{hours}H"));
    }
    if minutes > 0 {
        s.push_str(&format!("{minutes}M"));
    }
    s.push_str(&format!("{}.{:03}S", millis / 1000, millis % 1000));
    s
}

/// Parses a `ListCommands` `InvokedAfter`/`InvokedBefore` value (ISO 8601, e.g.
/// `2024-05-01T12:00:00Z`, fractions allowed).
pub fn parse_filter_time(value: &str) -> Option<SystemTime> {
    let dt = OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = dt.unix_timestamp_nanos();
    if nanos < 0 {
        return None;
    }
    Some(UNIX_EPOCH + Duration::from_nanos(nanos as u64))
}

/// A fresh version-4 UUID (command ids, request ids) from the kernel's random source.
pub fn uuid() -> String {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("read /dev/urandom");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local_ssm::StopReason;
    use InvocationState as S;

    #[test]
    fn statuses_pair_the_coarse_status_with_the_api_details() {
        let cases = [
            (S::Pending, "Pending", "Pending"),
            (S::InProgress, "InProgress", "InProgress"),
            (S::Cancelling, "Cancelling", "Cancelling"),
            (S::Success, "Success", "Success"),
            (S::Failed, "Failed", "Failed"),
            (S::ExecutionTimedOut, "TimedOut", "ExecutionTimedOut"),
            (S::DeliveryTimedOut, "TimedOut", "DeliveryTimedOut"),
            (S::Undeliverable, "Failed", "Undeliverable"),
            (S::Terminated, "Cancelled", "Terminated"),
            (S::Cancelled, "Cancelled", "Cancelled"),
        ];
        for (state, status, details) in cases {
            assert_eq!((state.status(), state.details()), (status, details));
        }
        let errors: Vec<_> = cases
            .iter()
            .filter(|c| c.0.counts_as_error())
            .map(|c| c.0)
            .collect();
        assert_eq!(errors, vec![S::Failed, S::ExecutionTimedOut]);
        let running: Vec<_> = cases
            .iter()
            .filter(|c| !c.0.is_terminal())
            .map(|c| c.0)
            .collect();
        assert_eq!(running, vec![S::Pending, S::InProgress, S::Cancelling]);
    }

    #[test]
    fn rates_follow_the_api_patterns() {
        assert_eq!(parse_max_concurrency("1"), Some(Rate::Count(1)));
        assert_eq!(parse_max_concurrency("50%"), Some(Rate::Percent(50)));
        assert_eq!(parse_max_concurrency("100%"), Some(Rate::Percent(100)));
        for bad in ["0", "0%", "101%", "01", "", "%", "1.5", "-1", "ten", "5 "] {
            assert_eq!(parse_max_concurrency(bad), None, "{bad:?}");
        }
        assert_eq!(parse_max_errors("0"), Some(Rate::Count(0)));
        assert_eq!(parse_max_errors("0%"), Some(Rate::Percent(0)));
        assert_eq!(parse_max_errors("3"), Some(Rate::Count(3)));
        for bad in ["00", "101%", "", "x", "-1"] {
            assert_eq!(parse_max_errors(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn percentages_round_up_for_concurrency_and_down_for_errors() {
        assert_eq!(Rate::Percent(50).concurrency_for(4), 2);
        assert_eq!(Rate::Percent(50).concurrency_for(3), 2);
        assert_eq!(Rate::Percent(10).concurrency_for(3), 1);
        assert_eq!(Rate::Percent(100).concurrency_for(7), 7);
        assert_eq!(Rate::Count(10).concurrency_for(3), 10);
        // The User Guide: 10% of 50 targets, the sixth error stops the command.
        assert_eq!(Rate::Percent(10).errors_for(50), 5);
        assert_eq!(Rate::Percent(10).errors_for(3), 0);
        assert_eq!(Rate::Percent(50).errors_for(4), 2);
        assert_eq!(Rate::Count(0).errors_for(4), 0);
    }

    #[test]
    fn execution_timeout_is_one_second_to_two_days() {
        assert_eq!(parse_execution_timeout("1"), Some(1));
        assert_eq!(parse_execution_timeout("172800"), Some(172_800));
        for bad in ["0", "172801", "", "01", "1s", "-5"] {
            assert_eq!(parse_execution_timeout(bad), None, "{bad:?}");
        }
    }

    fn progress(targets: usize, started: usize, in_flight: usize, errors: usize) -> Progress {
        Progress {
            targets,
            started,
            in_flight,
            errors,
        }
    }

    #[test]
    fn dispatch_respects_concurrency_and_stops_after_max_errors() {
        assert_eq!(next_dispatch(1, 0, progress(3, 0, 0, 0)), Dispatch::Start);
        assert_eq!(next_dispatch(1, 0, progress(3, 1, 1, 0)), Dispatch::Wait);
        assert_eq!(next_dispatch(2, 0, progress(3, 1, 1, 0)), Dispatch::Start);
        assert_eq!(next_dispatch(1, 0, progress(3, 1, 0, 0)), Dispatch::Start);
        // MaxErrors 0: the first error stops it; MaxErrors 3: the fourth does.
        assert_eq!(
            next_dispatch(1, 0, progress(3, 1, 0, 1)),
            Dispatch::StopForErrors
        );
        assert_eq!(next_dispatch(1, 3, progress(9, 3, 0, 3)), Dispatch::Start);
        assert_eq!(
            next_dispatch(1, 3, progress(9, 4, 0, 4)),
            Dispatch::StopForErrors
        );
        assert_eq!(
            next_dispatch(1, 0, progress(3, 3, 0, 2)),
            Dispatch::AllStarted
        );
    }

    #[test]
    fn command_status_while_running() {
        assert_eq!(
            command_status(&[S::Pending, S::Pending], 0, false),
            ("Pending", "Pending")
        );
        assert_eq!(
            command_status(&[S::Success, S::Pending], 0, false),
            ("InProgress", "InProgress")
        );
        assert_eq!(
            command_status(&[S::InProgress, S::Pending], 0, true),
            ("Cancelling", "Cancelling")
        );
    }

    #[test]
    fn command_status_once_every_invocation_ended() {
        let st = |inv: &[S], max_errors| command_status(inv, max_errors, false);
        assert_eq!(st(&[S::Success, S::Success], 0), ("Success", "Success"));
        assert_eq!(st(&[S::Success, S::Failed], 0), ("Failed", "Failed"));
        assert_eq!(st(&[S::Success, S::Failed], 1), ("Failed", "Incomplete"));
        assert_eq!(
            st(&[S::ExecutionTimedOut, S::Terminated], 0),
            ("TimedOut", "ExecutionTimedOut")
        );
        assert_eq!(st(&[S::Failed, S::Terminated], 0), ("Failed", "Failed"));
        // Undeliverable ones neither fail the command nor make it incomplete…
        assert_eq!(
            st(&[S::Success, S::Undeliverable], 0),
            ("Success", "Success")
        );
        // …unless every invocation was undeliverable.
        assert_eq!(st(&[S::Undeliverable], 0), ("Failed", "Failed"));
        // Delivery timeouts do not count as errors, but make the command incomplete or,
        // beyond MaxErrors, timed out.
        assert_eq!(
            st(&[S::Success, S::DeliveryTimedOut], 1),
            ("Failed", "Incomplete")
        );
        assert_eq!(
            st(&[S::Success, S::DeliveryTimedOut], 0),
            ("TimedOut", "DeliveryTimedOut")
        );
        assert_eq!(
            command_status(&[S::Success, S::Cancelled], 0, true),
            ("Cancelled", "Cancelled")
        );
    }

    #[test]
    fn a_finished_script_maps_to_its_state() {
        assert_eq!(finished_state(0, None), S::Success);
        assert_eq!(finished_state(9, None), S::Failed);
        assert_eq!(finished_state(-1, None), S::Failed);
        assert_eq!(
            finished_state(137, Some(StopReason::ExecutionTimeout)),
            S::ExecutionTimedOut
        );
        assert_eq!(finished_state(0, Some(StopReason::Cancel)), S::Cancelled);
    }

    #[test]
    fn a_failed_run_gets_the_agents_line_after_the_scripts_stderr() {
        assert_eq!(
            agent_stderr("boom\n", 9, S::Failed),
            "boom\nfailed to run commands: exit status 9"
        );
        assert_eq!(
            agent_stderr("", 10, S::Failed),
            "failed to run commands: exit status 10"
        );
        assert_eq!(agent_stderr("warn\n", 0, S::Success), "warn\n");
        assert_eq!(agent_stderr("", 137, S::ExecutionTimedOut), "");
    }

    #[test]
    fn first_chars_counts_characters_not_bytes() {
        assert_eq!(first_chars("héllo", 2), "hé");
        assert_eq!(first_chars("abc", 10), "abc");
        assert_eq!(first_chars("", 3), "");
        let long = "é".repeat(STDOUT_LIMIT + 5);
        assert_eq!(
            first_chars(&long, STDOUT_LIMIT).chars().count(),
            STDOUT_LIMIT
        );
    }

    #[test]
    fn plugin_output_joins_and_truncates_like_the_agent() {
        assert_eq!(plugin_output("out\n", ""), "out\n");
        assert_eq!(
            plugin_output("out\n", "err\n"),
            "out\n\n----------ERROR-------\nerr\n"
        );
        let both = plugin_output(&"o".repeat(5000), &"e".repeat(5000));
        assert!(
            both.chars().count() <= PLUGIN_OUTPUT_LIMIT,
            "{}",
            both.len()
        );
        assert!(both.contains(OUTPUT_TRUNCATED) && both.contains(ERROR_TRUNCATED));
        let long_out = plugin_output(&"o".repeat(5000), "e");
        assert!(long_out.chars().count() <= PLUGIN_OUTPUT_LIMIT);
        assert!(long_out.contains(OUTPUT_TRUNCATED) && long_out.ends_with("\ne"));
        let long_err = plugin_output("o", &"e".repeat(5000));
        assert!(long_err.chars().count() <= PLUGIN_OUTPUT_LIMIT);
        assert!(long_err.starts_with("o\n---") && long_err.ends_with(ERROR_TRUNCATED));
    }

    #[test]
    fn log_messages_join_back_to_the_output() {
        assert!(log_messages("").is_empty());
        assert_eq!(log_messages("a\n\nb\n"), vec!["a\n\nb\n"]);
        let long = "x\n".repeat(MAX_LOG_EVENT_CHARS) + "y";
        let m = log_messages(&long);
        assert_eq!(m.len(), 3);
        assert_eq!(m.concat(), long);
        assert_eq!(
            log_stream("c-1", "i-2", PLUGIN_NAME, "stdout"),
            "c-1/i-2/aws-runShellScript/stdout"
        );
        assert_eq!(
            default_log_group(RUN_SHELL_SCRIPT),
            "/aws/ssm/AWS-RunShellScript"
        );
    }

    #[test]
    fn a_schema_2_2_document_of_one_shell_step_names_the_plugin_after_its_step() {
        let content = include_str!("../../../infra/documents/deploy-command.json");
        let doc = parse_command_document("dropship-deploy-x", content).unwrap();
        assert_eq!(doc.plugin, dropship_contract::wiring::COMMAND_STEP);
        assert_eq!(doc.timeout_parameter.as_deref(), Some("executionTimeout"));
        assert_eq!(
            log_stream("c-1", "i-2", &doc.plugin, "stdout"),
            dropship_contract::wiring::command_log_stream(
                "c-1",
                "i-2",
                dropship_contract::wiring::OutputStream::Stdout
            )
        );
        assert_eq!(
            log_stream("c-1", "i-2", PLUGIN_NAME, "stderr"),
            "c-1/i-2/aws-runShellScript/stderr"
        );
        for (bad, why) in [
            (r#"{"schemaVersion":"1.2"}"#, "schema 2.2"),
            (
                r#"{"schemaVersion":"2.2","mainSteps":[{"action":"aws:runPowerShellScript","name":"p","inputs":{}}]}"#,
                "aws:runShellScript steps only",
            ),
            (
                r#"{"schemaVersion":"2.2","parameters":{"commands":{"type":"String"}},"mainSteps":[{"action":"aws:runShellScript","name":"s","inputs":{"runCommand":"{{ commands }}"}}]}"#,
                "StringList",
            ),
        ] {
            let err = parse_command_document("d-1", bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert!(is_creatable_document_name("dropship-deploy-production"));
        assert!(!is_creatable_document_name("AWS-RunShellScript"));
        assert!(!is_creatable_document_name("amzn-x"));
    }

    #[test]
    fn times_are_written_as_ssm_writes_them() {
        let t = UNIX_EPOCH + Duration::from_millis(1_468_187_490_049);
        assert_eq!(iso_millis(t), "2016-07-10T21:51:30.049Z");
        assert_eq!(epoch_seconds(t), 1_468_187_490.049);
        assert_eq!(iso_duration(Duration::from_millis(3_600_271)), "PT1H0.271S");
        assert_eq!(iso_duration(Duration::from_millis(2_500)), "PT2.500S");
        assert_eq!(iso_duration(Duration::from_millis(61_000)), "PT1M1.000S");
        assert_eq!(parse_filter_time("2016-07-10T21:51:30.049Z"), Some(t));
        assert_eq!(
            parse_filter_time("2016-07-10T21:51:30Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_468_187_490))
        );
        assert_eq!(parse_filter_time("yesterday"), None);
    }

    #[test]
    fn uuids_are_version_4() {
        let a = uuid();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!("89ab".contains(&a[19..20]));
        assert_ne!(a, uuid());
    }
}
