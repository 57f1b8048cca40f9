//! The fleet: what each host did with a command, and what the whole fleet does next.
//!
//! Two halves, both pure. [`host_status`] reads one SSM invocation (`GetCommandInvocation`)
//! into a [`HostState`]: the host script's exit code ([`ExitCode`]) is authoritative and its
//! `DROPSHIP_RESULT` line adds the detail (SSM keeps only the first 24,000 characters of
//! stdout, so the line can be missing). The Lambda stores that per host ([`StoredResult`])
//! and the operator's `status` shows it. [`decide`] is the rollout's state machine: from the
//! record's [`Fleet`] and the stored results it says whether to wait, send the next wave,
//! send the hosts that switched back ([`OnFailure::RollbackFleet`]), or settle the fleet's
//! [`FleetOutcome`]. The Lambda acts on it; `versions`, `status` and `--wait` read its result.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::host::{ExitCode, HostOutcome, HostResult};
use crate::record::RECORD_FORMAT;

/// One `GetCommandInvocation` answer, in the API's field names so documented JSON shapes (and
/// `aws ssm get-command-invocation` output) deserialise into it as they are.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Invocation {
    /// SSM command id.
    pub command_id: String,
    /// Instance id.
    pub instance_id: String,
    /// `Pending`, `InProgress`, `Delayed`, `Success`, `Cancelled`, `TimedOut`, `Failed`,
    /// `Cancelling`.
    pub status: String,
    /// The finer status: `Pending`, `In Progress`, `Delayed`, `Success`, `Delivery Timed Out`,
    /// `Execution Timed Out`, `Failed`, `Cancelled`, `Undeliverable`, `Terminated`.
    pub status_details: String,
    /// The script's exit code (`-1` while it has not finished).
    pub response_code: i32,
    /// The first 24,000 characters of stdout.
    pub standard_output_content: String,
    /// The first 8,000 characters of stderr.
    pub standard_error_content: String,
    /// The command's comment (dropship's start with `dropship `).
    pub comment: String,
}

/// What SSM said about one (command, instance) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// SSM answered `InvocationDoesNotExist` (or `InvalidCommandId`): right after `SendCommand`
    /// the invocations are not registered yet. Reported as dispatched.
    NotYet {
        /// The SSM error code.
        code: String,
    },
    /// SSM answered `InvalidCommandId` or `InvalidInstanceId`: it no longer knows the command
    /// (history is kept 30 days; or the region differs from the deployer's).
    Gone {
        /// The SSM error code.
        code: String,
    },
    /// The invocation.
    Found(Invocation),
}

/// A host's state for one version, from the operator's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// Sent, not started (pending, delayed, or not registered yet).
    Dispatched,
    /// The host script is running.
    InProgress,
    /// Deployed, already current, or skipped as stale (exit 0).
    Success,
    /// The new release failed after the switch; the previous release is back (exit 9).
    RolledBack,
    /// SSM cancelled the invocation (by an operator, or `MaxErrors` reached): never ran.
    Cancelled,
    /// SSM no longer knows the invocation: the outcome cannot be read any more.
    Unknown,
    /// SSM could not reach the instance (not managed, stopped, gone): never ran.
    Undeliverable,
    /// Not delivered within the delivery timeout, or killed after the execution timeout.
    TimedOut,
    /// The script failed before switching (exit 2–8): the previous release still serves.
    Failed,
    /// The rollback failed too (exit 10): the host needs an operator.
    RollbackFailed,
    /// In a later wave of the rollout, not sent yet.
    Queued,
    /// The rollout stopped before this host's wave: it never received the version.
    NotSent,
    /// Tagged and running, but SSM did not report it online at dispatch: not sent to.
    Offline,
}

impl HostState {
    /// Whether the host will not change state any more for this command.
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            HostState::Dispatched | HostState::InProgress | HostState::Queued
        )
    }

    /// The table / JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            HostState::Dispatched => "dispatched",
            HostState::InProgress => "in_progress",
            HostState::Success => "success",
            HostState::RolledBack => "rolled_back",
            HostState::Cancelled => "cancelled",
            HostState::Unknown => "unknown",
            HostState::Undeliverable => "undeliverable",
            HostState::TimedOut => "timed_out",
            HostState::Failed => "failed",
            HostState::RollbackFailed => "rollback_failed",
            HostState::Queued => "queued",
            HostState::NotSent => "not_sent",
            HostState::Offline => "offline",
        }
    }

    /// Severity for aggregation: higher is worse.
    fn severity(self) -> u8 {
        match self {
            HostState::Success | HostState::NotSent | HostState::Offline => 0,
            HostState::Dispatched | HostState::Queued => 1,
            HostState::InProgress => 2,
            HostState::RolledBack => 3,
            HostState::Cancelled => 4,
            HostState::Unknown => 5,
            HostState::Undeliverable => 6,
            HostState::TimedOut => 7,
            HostState::Failed => 8,
            HostState::RollbackFailed => 9,
        }
    }

    /// The worse of two states (aggregation).
    pub fn worse(self, other: HostState) -> HostState {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

impl std::fmt::Display for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host's line in `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostStatus {
    /// Instance id.
    pub instance_id: String,
    /// SSM command id.
    pub command_id: String,
    /// What the operator needs to know.
    pub state: HostState,
    /// SSM's `StatusDetails` (or `Status`), empty when not registered yet.
    pub ssm_status: String,
    /// The script's exit code, once it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The script's `DROPSHIP_RESULT`, when stdout still had it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<HostResult>,
    /// One line: why, or what was deployed.
    pub detail: String,
}

fn state_from_exit(code: i32) -> HostState {
    match ExitCode::from_code(code) {
        Some(ExitCode::Ok) => HostState::Success,
        Some(ExitCode::RolledBack) => HostState::RolledBack,
        Some(ExitCode::RollbackFailed) => HostState::RollbackFailed,
        _ => HostState::Failed,
    }
}

fn state_from_result(outcome: HostOutcome) -> HostState {
    match outcome {
        HostOutcome::Deployed
        | HostOutcome::Noop
        | HostOutcome::Stale
        | HostOutcome::Status
        | HostOutcome::Superseded => HostState::Success,
        HostOutcome::RolledBack => HostState::RolledBack,
        HostOutcome::Failed => HostState::Failed,
        HostOutcome::RollbackFailed | HostOutcome::Interrupted => HostState::RollbackFailed,
    }
}

fn outcome_word(outcome: HostOutcome) -> &'static str {
    match outcome {
        HostOutcome::Deployed => "deployed",
        HostOutcome::Noop => "already current",
        HostOutcome::Stale => "skipped: older than what the host runs",
        HostOutcome::RolledBack => "rolled back",
        HostOutcome::Failed => "failed",
        HostOutcome::RollbackFailed => "rollback failed",
        HostOutcome::Status => "status",
        HostOutcome::Interrupted => "interrupted",
        HostOutcome::Superseded => "left alone: it runs another version",
    }
}

/// The script finished with `code` (SSM `Success` or `Failed`): the exit code decides, the
/// result line can only make it worse (a mismatch is reported, never hidden).
fn finished(inv: &Invocation, result: Option<HostResult>) -> (HostState, String) {
    let code = inv.response_code;
    let by_code = state_from_exit(code);
    let mut detail = match &result {
        Some(r) => {
            let word = outcome_word(r.outcome);
            let mut d = word.to_string();
            if !r.release.is_empty() {
                d.push_str(&format!(" {}", r.release));
            }
            if !r.message.is_empty() {
                d.push_str(&format!(": {}", r.message));
            }
            d
        }
        None => match ExitCode::from_code(code) {
            Some(c) => format!("exit {code}: {} (no result line in the output SSM kept)", c.describe()),
            None => format!("exit {code}: not a deploy-on-host.sh exit code (no result line in the output SSM kept)"),
        },
    };
    let state = match &result {
        // Exit 0 covers requested rollbacks too: the code is authoritative for success.
        Some(_) if code == 0 => by_code,
        Some(r) => {
            let by_result = state_from_result(r.outcome);
            if r.exit_code != code {
                detail.push_str(&format!(
                    " (result line says exit {}, SSM says {code})",
                    r.exit_code
                ));
            }
            by_code.worse(by_result)
        }
        None => by_code,
    };
    (state, detail)
}

/// Maps what SSM said about one host to its state. Pure: the heart of `status` and `--wait`.
pub fn host_status(command_id: &str, instance_id: &str, observed: &Observed) -> HostStatus {
    let inv = match observed {
        Observed::NotYet { code } => {
            return HostStatus {
                instance_id: instance_id.to_string(),
                command_id: command_id.to_string(),
                state: HostState::Dispatched,
                ssm_status: String::new(),
                exit_code: None,
                result: None,
                detail: format!("sent; SSM has not registered the invocation yet ({code})"),
            }
        }
        Observed::Gone { code } => {
            return HostStatus {
                instance_id: instance_id.to_string(),
                command_id: command_id.to_string(),
                state: HostState::Unknown,
                ssm_status: String::new(),
                exit_code: None,
                result: None,
                detail: format!(
                    "SSM no longer knows this invocation ({code}): its history is kept 30 days; check --region and deploy.log on the host"
                ),
            }
        }
        Observed::Found(inv) => inv,
    };
    let ssm_status = if inv.status_details.is_empty() {
        inv.status.clone()
    } else {
        inv.status_details.clone()
    };
    let result = HostResult::from_output(&inv.standard_output_content);
    let (state, detail, exit_code, result) = match (ssm_status.as_str(), inv.status.as_str()) {
        ("Pending", _) => (HostState::Dispatched, "waiting for the SSM agent".to_string(), None, None),
        ("Delayed", _) => (
            HostState::Dispatched,
            "delayed: the instance was unavailable; SSM retries until the delivery timeout".to_string(),
            None,
            None,
        ),
        ("In Progress" | "InProgress", _) => (HostState::InProgress, "deploy-on-host.sh is running".to_string(), None, None),
        ("Cancelling", _) => (HostState::InProgress, "cancelling".to_string(), None, None),
        ("Success" | "Failed", _) => {
            let (state, detail) = finished(inv, result.clone());
            (state, detail, Some(inv.response_code), result)
        }
        // The API reference spells the details with spaces, the wire and the console without;
        // both are read.
        ("Delivery Timed Out" | "DeliveryTimedOut", _) => (
            HostState::TimedOut,
            "never delivered within the delivery timeout: the host is unchanged; check the SSM agent".to_string(),
            None,
            None,
        ),
        ("Execution Timed Out" | "ExecutionTimedOut", _) | ("TimedOut", _) => (
            HostState::TimedOut,
            "the script was stopped at the execution timeout: check deploy.log on the host; the next deploy recovers".to_string(),
            None,
            result,
        ),
        ("Undeliverable", _) => (
            HostState::Undeliverable,
            "SSM cannot reach the instance (gone, stopped, or no SSM agent/role): the host is unchanged".to_string(),
            None,
            None,
        ),
        ("Cancelled" | "Canceled", _) => (
            HostState::Cancelled,
            "cancelled before it ran: the host is unchanged".to_string(),
            None,
            None,
        ),
        ("Terminated", _) => (
            HostState::Cancelled,
            "not run: the command reached its MaxErrors limit; the host is unchanged".to_string(),
            None,
            None,
        ),
        // An unknown StatusDetails: fall back to the coarse Status.
        (_, "Success" | "Failed") => {
            let (state, detail) = finished(inv, result.clone());
            (state, detail, Some(inv.response_code), result)
        }
        (_, "Pending" | "Delayed") => (HostState::Dispatched, format!("SSM status {ssm_status}"), None, None),
        (_, "InProgress" | "Cancelling") => (HostState::InProgress, format!("SSM status {ssm_status}"), None, None),
        (_, "Cancelled") => (HostState::Cancelled, format!("SSM status {ssm_status}"), None, None),
        (other, _) => (
            HostState::Failed,
            format!("unknown SSM status {other:?}: check the command in the SSM console"),
            None,
            None,
        ),
    };
    HostStatus {
        instance_id: instance_id.to_string(),
        command_id: command_id.to_string(),
        state,
        ssm_status,
        exit_code,
        result,
        detail,
    }
}

/// What a rollout does when a host fails, rolls back, times out or is undeliverable
/// (`[deploy] on_failure` in `dropship.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Stop the rollout and send every host that switched to this version back to the
    /// release it had before: the fleet ends on one version.
    #[default]
    RollbackFleet,
    /// Stop the rollout and leave the hosts that switched on the new version (a mixed fleet,
    /// said so in the record and the notification).
    Leave,
}

impl OnFailure {
    /// The `dropship.toml` / JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::RollbackFleet => "rollback-fleet",
            OnFailure::Leave => "leave",
        }
    }

    /// Parses the `dropship.toml` spelling.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "rollback-fleet" => Some(OnFailure::RollbackFleet),
            "leave" => Some(OnFailure::Leave),
            _ => None,
        }
    }
}

/// Why a command was sent for a version.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Deploy this version (one wave of the rollout).
    #[default]
    Deploy,
    /// Send a host that switched to this version back to its previous release.
    Rollback,
}

impl Purpose {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Deploy => "deploy",
            Purpose::Rollback => "rollback",
        }
    }
}

/// How the fleet ended for one version (`snake_case` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetOutcome {
    /// Every online target runs the version.
    Deployed,
    /// A host failed; every host that had switched is back on its previous release (or the
    /// failing host rolled itself back and no other had switched): one version everywhere.
    RolledBack,
    /// Hosts failed before switching (or were never reached): no host changed.
    Failed,
    /// `on_failure = "leave"`: some hosts run the version, others do not.
    PartiallyDeployed,
    /// At least one host could not be brought back (its own or the fleet's rollback failed):
    /// it needs an operator.
    RollbackFailed,
}

impl FleetOutcome {
    /// The JSON / table spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FleetOutcome::Deployed => "deployed",
            FleetOutcome::RolledBack => "rolled_back",
            FleetOutcome::Failed => "failed",
            FleetOutcome::PartiallyDeployed => "partially_deployed",
            FleetOutcome::RollbackFailed => "rollback_failed",
        }
    }

    /// Whether the deploy did what was asked.
    pub fn succeeded(self) -> bool {
        self == FleetOutcome::Deployed
    }
}

impl std::fmt::Display for FleetOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A step the Lambda is sending right now: other invocations leave it alone until
/// `lease_until`, then take it over (resending is harmless: a host already on the version
/// answers `noop`, a rollback guarded by the version answers `superseded`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sending {
    /// What is being sent.
    pub purpose: Purpose,
    /// The wave's index (0 for rollbacks).
    pub wave: u32,
    /// RFC 3339 UTC end of the sender's lease.
    pub lease_until: String,
}

/// The rollout of one version, kept in its deploy record: the plan and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fleet {
    /// What a failure does.
    pub on_failure: OnFailure,
    /// Online targets in rollout order, one wave per entry; a wave is sent only once every
    /// host of the previous one deployed.
    pub waves: Vec<Vec<String>>,
    /// Tagged, running instances SSM did not report online at dispatch: never sent to, never
    /// counted as failures.
    #[serde(default)]
    pub pending: Vec<String>,
    /// How many waves were sent (the first `sent` of `waves`).
    #[serde(default)]
    pub sent: u32,
    /// Hosts sent back to their previous release, once the fleet rollback started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Vec<String>>,
    /// A step being sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sending: Option<Sending>,
    /// How the fleet ended, once every target is terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<FleetOutcome>,
    /// Why, in words: which hosts failed and what was done about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the outcome was settled (RFC 3339 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<String>,
    /// Whether the `Dropship Deployment Finished` event was put on the bus.
    #[serde(default)]
    pub notified: bool,
    /// Every host's end, written when the outcome is settled.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostSummary>,
}

impl Fleet {
    /// A rollout of `online` targets in waves of `wave_size` (at least 1).
    pub fn new(
        on_failure: OnFailure,
        online: &[String],
        pending: &[String],
        wave_size: usize,
    ) -> Self {
        Self {
            on_failure,
            waves: online
                .chunks(wave_size.max(1))
                .map(<[String]>::to_vec)
                .collect(),
            pending: pending.to_vec(),
            sent: 0,
            rollback: None,
            sending: None,
            outcome: None,
            reason: None,
            settled_at: None,
            notified: false,
            hosts: Vec::new(),
        }
    }

    /// Every online target, in rollout order.
    pub fn targets(&self) -> impl Iterator<Item = &String> {
        self.waves.iter().flatten()
    }

    /// Hosts of the waves sent so far.
    pub fn sent_hosts(&self) -> impl Iterator<Item = &String> {
        self.waves.iter().take(self.sent as usize).flatten()
    }
}

/// Hosts per wave for `targets` hosts under SSM-style `max_concurrency` (`"2"` or `"50%"`):
/// at least 1, a percentage rounded up.
pub fn wave_size(max_concurrency: &str, targets: usize) -> usize {
    let size = match max_concurrency.strip_suffix('%') {
        Some(pct) => pct
            .parse::<usize>()
            .map(|p| (targets * p).div_ceil(100))
            .unwrap_or(1),
        None => max_concurrency.parse::<usize>().unwrap_or(1),
    };
    size.clamp(1, targets.max(1))
}

/// One host's terminal result for one command, stored once in S3 beside the deploy record
/// (`deploy-records/<app>/<env>/<version-id>/results/<instance-id>/<command-id>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResult {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    /// App name.
    pub app: String,
    /// Environment name.
    pub env: String,
    /// The version the command was for.
    pub version_id: String,
    /// Deploy or fleet rollback.
    pub purpose: Purpose,
    /// What the host did (instance and command ids inside).
    pub host: HostStatus,
    /// When it was stored (RFC 3339 UTC).
    pub stored_at: String,
}

impl StoredResult {
    /// Serialise for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("result serialises");
        out.push(b'\n');
        out
    }

    /// Parse a stored result, refusing newer formats.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::record::RecordError> {
        let r: Self = serde_json::from_slice(bytes)?;
        if r.format > RECORD_FORMAT {
            return Err(crate::record::RecordError::NewerFormat(r.format));
        }
        Ok(r)
    }
}

/// Which version and step a command id belongs to, stored when the command is sent
/// (`deploy-records/commands/<command-id>.json`) so a status-change event (which names only
/// the command and the instance) finds its deploy record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandIndex {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    /// Bucket of the release object.
    pub bucket: String,
    /// App name.
    pub app: String,
    /// Environment name.
    pub env: String,
    /// The version.
    pub version_id: String,
    /// Deploy or fleet rollback.
    pub purpose: Purpose,
}

impl CommandIndex {
    /// Serialise for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("index serialises");
        out.push(b'\n');
        out
    }

    /// Parse a stored index, refusing newer formats.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::record::RecordError> {
        let r: Self = serde_json::from_slice(bytes)?;
        if r.format > RECORD_FORMAT {
            return Err(crate::record::RecordError::NewerFormat(r.format));
        }
        Ok(r)
    }
}

/// One host's end of a rollout, as the record and the deploy-finished event keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSummary {
    /// Instance id.
    pub instance_id: String,
    /// Its state for the deploy ([`HostState`] spelling: `success`, `rolled_back`,
    /// `not_sent`, `offline`, …).
    pub outcome: HostState,
    /// The host script's exit code for the deploy, when it ran to the end.
    pub exit_code: Option<i32>,
    /// The fleet rollback's state on it, when it was sent back.
    pub rollback: Option<HostState>,
}

/// Every target's (and pending instance's) end of the rollout, in rollout order.
pub fn host_summaries(
    fleet: &Fleet,
    results: &[StoredResult],
    deploy_commands: &BTreeSet<String>,
    rollback_commands: &BTreeSet<String>,
) -> Vec<HostSummary> {
    let deployed = results_by_host(results, Purpose::Deploy, deploy_commands);
    let back = results_by_host(results, Purpose::Rollback, rollback_commands);
    let sent: BTreeSet<&String> = fleet.sent_hosts().collect();
    let mut out: Vec<HostSummary> = fleet
        .targets()
        .map(|id| {
            let h = deployed.get(id.as_str());
            let outcome = match h {
                Some(h) => h.state,
                None if sent.contains(id) => HostState::Dispatched,
                None if fleet.outcome.is_some() => HostState::NotSent,
                None => HostState::Queued,
            };
            HostSummary {
                instance_id: id.clone(),
                outcome,
                exit_code: h.and_then(|h| h.exit_code),
                rollback: back.get(id.as_str()).map(|b| b.state),
            }
        })
        .collect();
    out.extend(fleet.pending.iter().map(|id| HostSummary {
        instance_id: id.clone(),
        outcome: HostState::Offline,
        exit_code: None,
        rollback: None,
    }));
    out
}

/// `2 success, 1 rolled_back, 1 not_sent; 2 sent back` — the counts `versions` shows.
pub fn summary_counts(hosts: &[HostSummary]) -> String {
    let mut by_state: BTreeMap<HostState, usize> = BTreeMap::new();
    for h in hosts {
        *by_state.entry(h.outcome).or_default() += 1;
    }
    let mut text = by_state
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ");
    let back = hosts
        .iter()
        .filter(|h| h.rollback == Some(HostState::Success))
        .count();
    let stuck = hosts
        .iter()
        .filter(|h| h.rollback.is_some_and(|r| r != HostState::Success))
        .count();
    if back > 0 {
        text.push_str(&format!("; {back} sent back"));
    }
    if stuck > 0 {
        text.push_str(&format!("; {stuck} could not be sent back"));
    }
    text
}

/// The version an app/env's whole fleet last converged on (`deploy-records/_fleets/…`):
/// moved forward when a rollout settles `deployed`, never by a rollback or a failure, so a
/// host that starts later gets what the others run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetPointer {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    /// App name.
    pub app: String,
    /// Environment name.
    pub env: String,
    /// The version.
    pub version_id: String,
    /// The version's ordering stamp from S3 ([`crate::sequencer::order_stamp`]): orders two
    /// versions settling out of order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequencer: Option<String>,
    /// When its rollout settled (RFC 3339 UTC).
    pub settled_at: String,
}

impl FleetPointer {
    /// Serialise for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("pointer serialises");
        out.push(b'\n');
        out
    }

    /// Parse a stored pointer, refusing newer formats.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, crate::record::RecordError> {
        let r: Self = serde_json::from_slice(bytes)?;
        if r.format > RECORD_FORMAT {
            return Err(crate::record::RecordError::NewerFormat(r.format));
        }
        Ok(r)
    }

    /// Whether a settled version with stamp `sequencer` replaces this pointer: an older
    /// version never moves it back; a version without a stamp always does.
    pub fn replaced_by(&self, sequencer: Option<&str>) -> bool {
        use crate::sequencer::Sequencer;
        match (self.sequencer.as_deref(), sequencer) {
            (Some(old), Some(new)) => match (Sequencer::parse(old), Sequencer::parse(new)) {
                (Ok(old), Ok(new)) => new >= old,
                _ => true,
            },
            _ => true,
        }
    }
}

/// Instances a settled, deployed fleet must still send its version to: running, tagged,
/// online, and not yet sent it by this rollout (started later, replaced, offline at dispatch,
/// or re-tagged into this app/env). Empty unless the fleet settled `deployed`.
pub fn catch_up_targets(
    fleet: &Fleet,
    running: &[String],
    online: &BTreeSet<String>,
) -> Vec<String> {
    if fleet.outcome != Some(FleetOutcome::Deployed) || fleet.sending.is_some() {
        return Vec::new();
    }
    let sent: BTreeSet<&String> = fleet.sent_hosts().collect();
    running
        .iter()
        .filter(|i| online.contains(*i) && !sent.contains(i))
        .cloned()
        .collect()
}

/// The fleet with a catch-up wave of `hosts` planned (an unsent wave of a dead attempt is
/// dropped first); they leave `pending`.
pub fn plan_catch_up(fleet: &Fleet, hosts: &[String]) -> Fleet {
    let mut f = fleet.clone();
    f.waves.truncate(f.sent as usize);
    f.waves.push(hosts.to_vec());
    f.pending.retain(|p| !hosts.contains(p));
    f
}

/// A host to send back, and where to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackTarget {
    /// Instance id.
    pub instance_id: String,
    /// The release it had before (`previous` of its result line); empty when the result line
    /// was lost: the host script then uses the previous release it recorded itself.
    pub previous_release: String,
}

/// What the rollout does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Results are still missing (or another invocation is sending): nothing to do now.
    Wait,
    /// Send wave `n` (0-based).
    SendWave(u32),
    /// Send these hosts back to their previous release (the version is the guard).
    RollBack(Vec<RollbackTarget>),
    /// Every target is terminal: record this and tell the bus.
    Settle {
        /// How the fleet ended.
        outcome: FleetOutcome,
        /// Why, in words.
        reason: String,
    },
    /// Already settled.
    Done,
}

/// The terminal results of one purpose, per instance, counting only commands the record sent
/// for that purpose (a command a crashed attempt sent twice counts once: the last one).
pub fn results_by_host<'a>(
    results: &'a [StoredResult],
    purpose: Purpose,
    commands: &BTreeSet<String>,
) -> BTreeMap<&'a str, &'a HostStatus> {
    let mut out = BTreeMap::new();
    for r in results.iter().filter(|r| r.purpose == purpose) {
        if commands.contains(&r.host.command_id) && r.host.state.is_final() {
            out.insert(r.host.instance_id.as_str(), &r.host);
        }
    }
    out
}

/// Whether a host may run this version now: it deployed it, or the script was stopped
/// mid-run (execution timeout, result lost), so only the host knows. The fleet rollback sends
/// these back; the version guard makes the others answer `superseded`.
fn may_have_switched(h: &HostStatus) -> bool {
    match h.state {
        HostState::Success => h
            .result
            .as_ref()
            .is_some_and(|r| r.outcome == HostOutcome::Deployed),
        HostState::TimedOut => !h.ssm_status.starts_with("Delivery"),
        HostState::Unknown => true,
        _ => false,
    }
}

/// The rollout's state machine. Pure: every combination of per-host results is unit-tested.
/// `deploy_commands` / `rollback_commands` are the command ids the record sent per purpose.
pub fn decide(
    fleet: &Fleet,
    results: &[StoredResult],
    deploy_commands: &BTreeSet<String>,
    rollback_commands: &BTreeSet<String>,
) -> Step {
    if fleet.outcome.is_some() {
        return Step::Done;
    }
    if fleet.sending.is_some() {
        return Step::Wait;
    }
    let deployed = results_by_host(results, Purpose::Deploy, deploy_commands);
    let sent: Vec<&String> = fleet.sent_hosts().collect();
    if sent.is_empty() {
        return if fleet.waves.is_empty() {
            Step::Settle {
                outcome: FleetOutcome::Failed,
                reason: "no online target: nothing was sent".into(),
            }
        } else {
            Step::SendWave(0)
        };
    }
    if sent.iter().any(|h| !deployed.contains_key(h.as_str())) {
        return Step::Wait;
    }
    let bad: Vec<&HostStatus> = sent
        .iter()
        .map(|h| deployed[h.as_str()])
        .filter(|s| s.state != HostState::Success)
        .collect();
    let total = fleet.targets().count();
    if bad.is_empty() {
        if (fleet.sent as usize) < fleet.waves.len() {
            return Step::SendWave(fleet.sent);
        }
        let mut reason = format!("deployed on {total} of {total} online hosts");
        if !fleet.pending.is_empty() {
            reason.push_str(&format!(
                "; {} tagged host(s) not online in SSM were not sent to: {}",
                fleet.pending.len(),
                fleet.pending.join(", ")
            ));
        }
        return Step::Settle {
            outcome: FleetOutcome::Deployed,
            reason,
        };
    }
    let failed_words = bad
        .iter()
        .map(|s| format!("{} {}", s.instance_id, s.state))
        .collect::<Vec<_>>()
        .join(", ");
    let unsent = total - sent.len();
    let stopped = if unsent > 0 {
        format!("; the rollout stopped: {unsent} host(s) never received it")
    } else {
        String::new()
    };
    let host_rollback_failed = bad.iter().any(|s| s.state == HostState::RollbackFailed);
    let switched: Vec<&HostStatus> = sent
        .iter()
        .map(|h| deployed[h.as_str()])
        .filter(|s| may_have_switched(s))
        .collect();
    let without_switch = |what: &str| {
        let outcome = if host_rollback_failed {
            FleetOutcome::RollbackFailed
        } else if bad.iter().any(|s| s.state == HostState::RolledBack) {
            FleetOutcome::RolledBack
        } else {
            FleetOutcome::Failed
        };
        Step::Settle {
            outcome,
            reason: format!("{failed_words}{stopped}{what}"),
        }
    };
    if switched.is_empty() {
        return without_switch("; no host had switched");
    }
    match fleet.on_failure {
        OnFailure::Leave => {
            if host_rollback_failed {
                return without_switch("; on_failure = leave kept the switched hosts");
            }
            let names: Vec<&str> = switched.iter().map(|s| s.instance_id.as_str()).collect();
            Step::Settle {
                outcome: FleetOutcome::PartiallyDeployed,
                reason: format!(
                    "{failed_words}{stopped}; on_failure = leave: {} run(s) the new version: {}",
                    names.len(),
                    names.join(", ")
                ),
            }
        }
        OnFailure::RollbackFleet => match &fleet.rollback {
            None => Step::RollBack(
                switched
                    .iter()
                    .map(|s| RollbackTarget {
                        instance_id: s.instance_id.clone(),
                        previous_release: s
                            .result
                            .as_ref()
                            .map(|r| r.previous.clone())
                            .unwrap_or_default(),
                    })
                    .collect(),
            ),
            Some(sent_back) => {
                let back = results_by_host(results, Purpose::Rollback, rollback_commands);
                if sent_back.iter().any(|h| !back.contains_key(h.as_str())) {
                    return Step::Wait;
                }
                let stuck: Vec<String> = sent_back
                    .iter()
                    .map(|h| back[h.as_str()])
                    .filter(|s| s.state != HostState::Success)
                    .map(|s| format!("{} {}", s.instance_id, s.state))
                    .collect();
                if stuck.is_empty() && !host_rollback_failed {
                    Step::Settle {
                        outcome: FleetOutcome::RolledBack,
                        reason: format!(
                            "{failed_words}{stopped}; {} host(s) that had switched were sent back: {}",
                            sent_back.len(),
                            sent_back.join(", ")
                        ),
                    }
                } else {
                    Step::Settle {
                        outcome: FleetOutcome::RollbackFailed,
                        reason: format!(
                            "{failed_words}{stopped}; fleet rollback could not bring back: {}",
                            if stuck.is_empty() {
                                "(the failing host's own rollback failed)".to_string()
                            } else {
                                stuck.join(", ")
                            }
                        ),
                    }
                }
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `GetCommandInvocation` answer as the API documents it.
    fn invocation(instance: &str, details: &str, code: i32, out: &str) -> Invocation {
        let status = match details {
            "Delivery Timed Out" | "Execution Timed Out" => "TimedOut",
            "Undeliverable" | "Terminated" => "Failed",
            other => other,
        };
        serde_json::from_value(serde_json::json!({
            "CommandId": "c-1", "InstanceId": instance, "Status": status,
            "StatusDetails": details, "ResponseCode": code,
            "StandardOutputContent": out, "StandardErrorContent": "",
        }))
        .unwrap()
    }

    fn line(outcome: &str, code: i32, previous: &str) -> String {
        format!(
            "[deploy] ...\nDROPSHIP_RESULT {{\"outcome\":\"{outcome}\",\"release\":\"r2\",\"previous\":\"{previous}\",\"version_id\":\"v\",\"commit\":\"c\",\"exit_code\":{code},\"message\":\"m\"}}\n"
        )
    }

    /// What a host did, by a short name.
    fn host(instance: &str, command: &str, what: &str) -> HostStatus {
        let inv = match what {
            "deployed" => invocation(instance, "Success", 0, &line("deployed", 0, "r1")),
            "noop" => invocation(instance, "Success", 0, &line("noop", 0, "r1")),
            "superseded" => invocation(instance, "Success", 0, &line("superseded", 0, "")),
            "back" => invocation(instance, "Success", 0, &line("deployed", 0, "r2")),
            "rolled_back" => invocation(instance, "Failed", 9, &line("rolled_back", 9, "r1")),
            "failed" => invocation(instance, "Failed", 7, &line("failed", 7, "r1")),
            "rollback_failed" => {
                invocation(instance, "Failed", 10, &line("rollback_failed", 10, "r1"))
            }
            "exec_timeout" => invocation(instance, "Execution Timed Out", -1, ""),
            "delivery_timeout" => invocation(instance, "Delivery Timed Out", -1, ""),
            "undeliverable" => invocation(instance, "Undeliverable", -1, ""),
            "terminated" => invocation(instance, "Terminated", -1, ""),
            "running" => invocation(instance, "InProgress", -1, ""),
            other => panic!("unknown host fixture {other}"),
        };
        host_status(command, instance, &Observed::Found(inv))
    }

    fn stored(purpose: Purpose, h: HostStatus) -> StoredResult {
        StoredResult {
            format: RECORD_FORMAT,
            app: "shop".into(),
            env: "prod".into(),
            version_id: "v".into(),
            purpose,
            host: h,
            stored_at: "2026-11-29T00:00:00Z".into(),
        }
    }

    fn ids(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("i-{i}")).collect()
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    /// A fleet of `n` hosts in waves of one, `sent` waves sent, each wave `w` sent as
    /// command `d<w>`; deploy results given per host by name.
    fn fleet(n: usize, sent: u32, on_failure: OnFailure) -> Fleet {
        Fleet {
            sent,
            ..Fleet::new(on_failure, &ids(n), &[], 1)
        }
    }

    fn deploy_results(whats: &[&str]) -> Vec<StoredResult> {
        whats
            .iter()
            .enumerate()
            .map(|(i, w)| {
                stored(
                    Purpose::Deploy,
                    host(&format!("i-{}", i + 1), &format!("d{i}"), w),
                )
            })
            .collect()
    }

    fn deploy_commands(n: usize) -> BTreeSet<String> {
        (0..n).map(|i| format!("d{i}")).collect()
    }

    fn settled(step: Step) -> (FleetOutcome, String) {
        match step {
            Step::Settle { outcome, reason } => (outcome, reason),
            other => panic!("expected a settled fleet, got {other:?}"),
        }
    }

    #[test]
    fn waves_follow_max_concurrency_rounding_up() {
        assert_eq!(wave_size("50%", 4), 2);
        assert_eq!(wave_size("50%", 3), 2);
        assert_eq!(wave_size("1", 4), 1);
        assert_eq!(wave_size("10", 4), 4);
        assert_eq!(wave_size("0", 4), 1);
        assert_eq!(wave_size("1%", 4), 1);
        assert_eq!(wave_size("100%", 0), 1);
        let f = Fleet::new(OnFailure::RollbackFleet, &ids(5), &[], 2);
        assert_eq!(
            f.waves,
            vec![
                ids(5)[..2].to_vec(),
                ids(5)[2..4].to_vec(),
                ids(5)[4..].to_vec()
            ]
        );
    }

    #[test]
    fn a_new_fleet_sends_its_first_wave_and_an_empty_one_settles_failed() {
        let f = fleet(2, 0, OnFailure::RollbackFleet);
        assert_eq!(decide(&f, &[], &set(&[]), &set(&[])), Step::SendWave(0));
        let empty = Fleet::new(OnFailure::RollbackFleet, &[], &ids(2), 1);
        assert_eq!(
            settled(decide(&empty, &[], &set(&[]), &set(&[]))).0,
            FleetOutcome::Failed
        );
    }

    #[test]
    fn the_next_wave_goes_only_when_every_host_of_the_sent_ones_deployed() {
        let f = fleet(3, 1, OnFailure::RollbackFleet);
        assert_eq!(decide(&f, &[], &deploy_commands(1), &set(&[])), Step::Wait);
        let running = deploy_results(&["running"]);
        assert_eq!(
            decide(&f, &running, &deploy_commands(1), &set(&[])),
            Step::Wait
        );
        let r = deploy_results(&["deployed"]);
        assert_eq!(
            decide(&f, &r, &deploy_commands(1), &set(&[])),
            Step::SendWave(1)
        );
        let f2 = fleet(3, 2, OnFailure::RollbackFleet);
        let r2 = deploy_results(&["deployed", "noop"]);
        assert_eq!(
            decide(&f2, &r2, &deploy_commands(2), &set(&[])),
            Step::SendWave(2)
        );
        let f3 = fleet(3, 3, OnFailure::RollbackFleet);
        let r3 = deploy_results(&["deployed", "noop", "deployed"]);
        let (o, reason) = settled(decide(&f3, &r3, &deploy_commands(3), &set(&[])));
        assert_eq!(o, FleetOutcome::Deployed);
        assert_eq!(reason, "deployed on 3 of 3 online hosts");
    }

    #[test]
    fn pending_hosts_are_named_and_never_count_as_failures() {
        let f = Fleet {
            sent: 1,
            ..Fleet::new(OnFailure::RollbackFleet, &ids(1), &["i-9".into()], 1)
        };
        let (o, reason) = settled(decide(
            &f,
            &deploy_results(&["deployed"]),
            &deploy_commands(1),
            &set(&[]),
        ));
        assert_eq!(o, FleetOutcome::Deployed);
        assert!(
            reason.contains("not online in SSM were not sent to: i-9"),
            "{reason}"
        );
    }

    #[test]
    fn results_of_commands_the_record_did_not_send_are_ignored() {
        let f = fleet(1, 1, OnFailure::RollbackFleet);
        let r = deploy_results(&["deployed"]);
        assert_eq!(decide(&f, &r, &set(&["other"]), &set(&[])), Step::Wait);
    }

    #[test]
    fn a_failure_after_two_switched_hosts_sends_exactly_those_back_with_their_previous() {
        // Four hosts one at a time; host 3 fails health and rolls itself back.
        let f = fleet(4, 3, OnFailure::RollbackFleet);
        let r = deploy_results(&["deployed", "deployed", "rolled_back"]);
        match decide(&f, &r, &deploy_commands(3), &set(&[])) {
            Step::RollBack(targets) => {
                assert_eq!(
                    targets,
                    vec![
                        RollbackTarget {
                            instance_id: "i-1".into(),
                            previous_release: "r1".into()
                        },
                        RollbackTarget {
                            instance_id: "i-2".into(),
                            previous_release: "r1".into()
                        },
                    ]
                );
            }
            other => panic!("expected a fleet rollback, got {other:?}"),
        }
    }

    #[test]
    fn the_fleet_rollback_settles_once_every_host_sent_back_answered() {
        let f = Fleet {
            rollback: Some(vec!["i-1".into(), "i-2".into()]),
            ..fleet(4, 3, OnFailure::RollbackFleet)
        };
        let mut r = deploy_results(&["deployed", "deployed", "rolled_back"]);
        let rb = set(&["rb"]);
        assert_eq!(decide(&f, &r, &deploy_commands(3), &rb), Step::Wait);
        r.push(stored(Purpose::Rollback, host("i-1", "rb", "back")));
        assert_eq!(decide(&f, &r, &deploy_commands(3), &rb), Step::Wait);
        r.push(stored(Purpose::Rollback, host("i-2", "rb", "superseded")));
        let (o, reason) = settled(decide(&f, &r, &deploy_commands(3), &rb));
        assert_eq!(o, FleetOutcome::RolledBack);
        assert!(reason.contains("i-3 rolled_back"), "{reason}");
        assert!(reason.contains("1 host(s) never received it"), "{reason}");
        assert!(reason.contains("sent back: i-1, i-2"), "{reason}");
    }

    #[test]
    fn a_host_that_cannot_be_sent_back_settles_rollback_failed() {
        let f = Fleet {
            rollback: Some(vec!["i-1".into()]),
            ..fleet(2, 2, OnFailure::RollbackFleet)
        };
        let mut r = deploy_results(&["deployed", "failed"]);
        r.push(stored(
            Purpose::Rollback,
            host("i-1", "rb", "rollback_failed"),
        ));
        let (o, reason) = settled(decide(&f, &r, &deploy_commands(2), &set(&["rb"])));
        assert_eq!(o, FleetOutcome::RollbackFailed);
        assert!(
            reason.contains("could not bring back: i-1 rollback_failed"),
            "{reason}"
        );
    }

    #[test]
    fn leave_keeps_the_switched_hosts_and_says_the_fleet_is_mixed() {
        let f = fleet(4, 3, OnFailure::Leave);
        let r = deploy_results(&["deployed", "deployed", "rolled_back"]);
        let (o, reason) = settled(decide(&f, &r, &deploy_commands(3), &set(&[])));
        assert_eq!(o, FleetOutcome::PartiallyDeployed);
        assert!(
            reason.contains("2 run(s) the new version: i-1, i-2"),
            "{reason}"
        );
    }

    #[test]
    fn failures_without_any_switch_settle_without_a_rollback_step() {
        for (what, outcome) in [
            ("rolled_back", FleetOutcome::RolledBack),
            ("failed", FleetOutcome::Failed),
            ("undeliverable", FleetOutcome::Failed),
            ("delivery_timeout", FleetOutcome::Failed),
            ("terminated", FleetOutcome::Failed),
            ("rollback_failed", FleetOutcome::RollbackFailed),
        ] {
            for on_failure in [OnFailure::RollbackFleet, OnFailure::Leave] {
                let f = fleet(2, 1, on_failure);
                let r = deploy_results(&[what]);
                let (o, reason) = settled(decide(&f, &r, &deploy_commands(1), &set(&[])));
                assert_eq!(o, outcome, "{what} with {on_failure:?}: {reason}");
                assert!(reason.contains("1 host(s) never received it"), "{reason}");
            }
        }
    }

    #[test]
    fn a_host_stopped_mid_run_is_sent_the_guarded_rollback_with_its_own_previous() {
        let f = fleet(2, 2, OnFailure::RollbackFleet);
        let r = deploy_results(&["exec_timeout", "failed"]);
        match decide(&f, &r, &deploy_commands(2), &set(&[])) {
            Step::RollBack(t) => assert_eq!(
                t,
                vec![RollbackTarget {
                    instance_id: "i-1".into(),
                    previous_release: String::new()
                }]
            ),
            other => panic!("expected a rollback, got {other:?}"),
        }
    }

    #[test]
    fn the_own_rollback_failing_wins_over_a_successful_fleet_rollback() {
        let f = Fleet {
            rollback: Some(vec!["i-1".into()]),
            ..fleet(2, 2, OnFailure::RollbackFleet)
        };
        let mut r = deploy_results(&["deployed", "rollback_failed"]);
        r.push(stored(Purpose::Rollback, host("i-1", "rb", "back")));
        assert_eq!(
            settled(decide(&f, &r, &deploy_commands(2), &set(&["rb"]))).0,
            FleetOutcome::RollbackFailed
        );
    }

    #[test]
    fn a_settled_or_sending_fleet_does_nothing() {
        let mut f = fleet(1, 1, OnFailure::RollbackFleet);
        f.sending = Some(Sending {
            purpose: Purpose::Deploy,
            wave: 1,
            lease_until: "x".into(),
        });
        assert_eq!(
            decide(
                &f,
                &deploy_results(&["deployed"]),
                &deploy_commands(1),
                &set(&[])
            ),
            Step::Wait
        );
        f.sending = None;
        f.outcome = Some(FleetOutcome::Deployed);
        assert_eq!(decide(&f, &[], &set(&[]), &set(&[])), Step::Done);
    }

    #[test]
    fn stored_results_round_trip_and_spell_as_documented() {
        let r = stored(Purpose::Rollback, host("i-1", "rb", "rolled_back"));
        assert_eq!(StoredResult::from_bytes(&r.to_bytes()).unwrap(), r);
        let v: serde_json::Value = serde_json::from_slice(&r.to_bytes()).unwrap();
        assert_eq!(v["purpose"], "rollback");
        assert_eq!(v["host"]["state"], "rolled_back");
        assert_eq!(v["host"]["exit_code"], 9);
        assert_eq!(
            serde_json::to_value(OnFailure::RollbackFleet).unwrap(),
            "rollback-fleet"
        );
        assert_eq!(OnFailure::parse("leave"), Some(OnFailure::Leave));
        assert_eq!(OnFailure::parse("Leave"), None);
        assert_eq!(
            serde_json::to_value(FleetOutcome::PartiallyDeployed).unwrap(),
            "partially_deployed"
        );
    }

    #[test]
    fn catch_up_sends_a_deployed_fleets_version_once_to_online_hosts_it_never_reached() {
        let mut f = Fleet {
            sent: 1,
            outcome: Some(FleetOutcome::Deployed),
            ..Fleet::new(OnFailure::RollbackFleet, &ids(2)[..1], &["i-2".into()], 1)
        };
        let running: Vec<String> = vec!["i-1".into(), "i-2".into(), "i-3".into()];
        let online = set(&["i-1", "i-2"]);
        assert_eq!(
            catch_up_targets(&f, &running, &online),
            ["i-2"],
            "i-3 is not online yet"
        );
        let planned = plan_catch_up(&f, &["i-2".into()]);
        assert_eq!(
            planned.waves,
            [vec!["i-1".to_string()], vec!["i-2".to_string()]]
        );
        assert!(planned.pending.is_empty());
        // Once sent, the host is no candidate again (a second event changes nothing).
        f = Fleet { sent: 2, ..planned };
        assert!(catch_up_targets(&f, &running, &online).is_empty());
        // A dead attempt's unsent wave is replaced, not stacked.
        let stale = Fleet {
            sent: 1,
            ..plan_catch_up(&f, &["i-3".into()])
        };
        let again = plan_catch_up(&stale, &["i-3".into()]);
        assert_eq!(again.waves.len(), 2);
        // Only a fleet that converged on the version catches up; not while sending.
        for outcome in [
            None,
            Some(FleetOutcome::RolledBack),
            Some(FleetOutcome::PartiallyDeployed),
        ] {
            let g = Fleet {
                outcome,
                ..f.clone()
            };
            assert!(catch_up_targets(&g, &["i-9".into()], &set(&["i-9"])).is_empty());
        }
    }

    #[test]
    fn the_fleet_pointer_only_moves_forward() {
        let p = FleetPointer {
            format: RECORD_FORMAT,
            app: "shop".into(),
            env: "prod".into(),
            version_id: "v2".into(),
            sequencer: Some("0062E99A88DC4074A0".into()),
            settled_at: "2026-11-29T00:00:00Z".into(),
        };
        assert!(
            !p.replaced_by(Some("0062E99A88DC407460")),
            "an older event's version"
        );
        assert!(p.replaced_by(Some("0062E99A88DC4074B0")));
        assert!(p.replaced_by(None), "an operator's direct redeploy");
        assert_eq!(FleetPointer::from_bytes(&p.to_bytes()).unwrap(), p);
        let key = crate::key::ReleaseKey::new("shop", "prod")
            .unwrap()
            .fleet_key();
        assert_eq!(key, "deploy-records/_fleets/shop/prod.json");
        assert_eq!(
            crate::key::release_of_fleet_key(&key),
            Some(crate::key::ReleaseKey::new("shop", "prod").unwrap())
        );
        assert_eq!(
            crate::key::release_of_fleet_key("deploy-records/_fleets/Shop/prod.json"),
            None
        );
    }
}
