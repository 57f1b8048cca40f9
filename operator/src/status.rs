//! `status [version]`: what happened to one object version on every host.
//!
//! Facts come from the deploy record (which commands went to which instances) and from one
//! `GetCommandInvocation` per instance. The parent command's status is never used: SSM marks a
//! command `Success` when every invocation finished, even when some were undeliverable or
//! timed out, so only each invocation says what a host did. Within an invocation, the host
//! script's exit code ([`ExitCode`]) is authoritative and its `DROPSHIP_RESULT` line adds the
//! detail (release, message); SSM keeps only the first 24,000 characters of stdout, so the line
//! can be missing and the exit code must be enough.

use std::collections::BTreeMap;

use dropship_contract::fleet::{self, FleetOutcome, OnFailure, Purpose, StoredResult};
pub use dropship_contract::fleet::{host_status, HostState, HostStatus, Invocation, Observed};
use dropship_contract::host::HostOutcome;
use dropship_contract::record::{DeployRecord, Outcome};
use serde::{Deserialize, Serialize};

use crate::exit::Exit;
use crate::short;
use crate::table::Table;

/// Where the deploy of a version stands, before looking at hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// No deploy record yet: the deployer has not processed the upload's event.
    NoRecord,
    /// The deployer claimed the version and is verifying or sending.
    Dispatching,
    /// Commands were sent; see the hosts.
    Dispatched,
    /// The deployer refused the version (`rejected`, `no_targets`, `skipped_stale`): nothing
    /// reached a host.
    Refused {
        /// The record's outcome.
        outcome: Outcome,
        /// The record's reason.
        reason: String,
    },
}

/// Everything `status` reports about one version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployStatus {
    /// App name.
    pub app: String,
    /// Environment name.
    pub env: String,
    /// The object version.
    pub version_id: String,
    /// Commit of the version, when known (record metadata or object metadata).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Deploy phase from the record.
    #[serde(flatten)]
    pub phase: Phase,
    /// One line per targeted host, in record order.
    pub hosts: Vec<HostStatus>,
    /// The rollout (records written by a deployer with the fleet loop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetView>,
    /// The overall verdict.
    pub verdict: Verdict,
}

/// The rollout as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FleetView {
    /// What a failure does.
    pub on_failure: OnFailure,
    /// Waves planned and sent.
    pub waves: usize,
    /// Waves sent so far.
    pub sent: u32,
    /// How the fleet ended, once settled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<FleetOutcome>,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The hosts sent back to their previous release, and what they did.
    pub rollback: Vec<HostStatus>,
}

/// Every (command, instance) pair a record sent, in order, without duplicates.
pub fn invocation_pairs(record: &DeployRecord) -> Vec<(String, String)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for batch in &record.commands {
        for instance in &batch.instance_ids {
            if seen.insert((batch.command_id.clone(), instance.clone())) {
                out.push((batch.command_id.clone(), instance.clone()));
            }
        }
    }
    out
}

/// The phase a record puts a version in.
pub fn phase_of(record: Option<&DeployRecord>) -> Phase {
    match record {
        None => Phase::NoRecord,
        Some(r) => match r.outcome {
            Outcome::Dispatching => Phase::Dispatching,
            Outcome::Dispatched => Phase::Dispatched,
            other => Phase::Refused {
                outcome: other,
                reason: r.reason.clone().unwrap_or_default(),
            },
        },
    }
}

/// The verdict of a settled fleet.
pub fn verdict_of_fleet(outcome: FleetOutcome) -> Verdict {
    match outcome {
        FleetOutcome::Deployed => Verdict::Succeeded,
        FleetOutcome::RolledBack => Verdict::RolledBack,
        FleetOutcome::Failed => Verdict::Failed,
        FleetOutcome::PartiallyDeployed => Verdict::PartiallyDeployed,
        FleetOutcome::RollbackFailed => Verdict::RollbackFailed,
    }
}

/// The one-word answer to "did it deploy?", and the `--wait` exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Not settled yet (no record, dispatching, or hosts still running).
    Pending,
    /// Every host deployed it (or already ran it).
    Succeeded,
    /// The deployer refused the version; no host was touched.
    Refused,
    /// At least one host rolled back to its previous release; none worse.
    RolledBack,
    /// At least one host failed before switching, timed out, was undeliverable or cancelled.
    Failed,
    /// At least one host could not roll back: it needs an operator.
    RollbackFailed,
    /// `on_failure = "leave"` stopped the rollout: some hosts run the version, some do not.
    PartiallyDeployed,
}

impl Verdict {
    /// The `--wait` exit code ([`Exit`]: one table for `--help` and the README).
    pub fn exit_code(self) -> Exit {
        match self {
            Verdict::Succeeded => Exit::Success,
            Verdict::Refused => Exit::DeployRefused,
            Verdict::RolledBack => Exit::RolledBack,
            Verdict::Failed => Exit::HostFailed,
            Verdict::RollbackFailed => Exit::RollbackFailed,
            Verdict::PartiallyDeployed => Exit::HostFailed,
            Verdict::Pending => Exit::WaitTimeout,
        }
    }

    /// The JSON / table spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pending => "pending",
            Verdict::Succeeded => "succeeded",
            Verdict::Refused => "refused",
            Verdict::RolledBack => "rolled_back",
            Verdict::Failed => "failed",
            Verdict::RollbackFailed => "rollback_failed",
            Verdict::PartiallyDeployed => "partially_deployed",
        }
    }
}

/// The verdict from the phase and every host's state: all hosts must be final to settle, and
/// then the worst host decides.
pub fn verdict(phase: &Phase, hosts: &[HostStatus]) -> Verdict {
    match phase {
        Phase::NoRecord | Phase::Dispatching => return Verdict::Pending,
        Phase::Refused { .. } => return Verdict::Refused,
        Phase::Dispatched => {}
    }
    if hosts.iter().any(|h| !h.state.is_final()) {
        return Verdict::Pending;
    }
    let worst = hosts
        .iter()
        .map(|h| h.state)
        .fold(HostState::Success, HostState::worse);
    match worst {
        HostState::Success => Verdict::Succeeded,
        HostState::RolledBack => Verdict::RolledBack,
        HostState::RollbackFailed => Verdict::RollbackFailed,
        _ => Verdict::Failed,
    }
}

/// Assembles the report from the record, the per-host results the deployer stored, and
/// what SSM said per pair (pairs SSM was not asked about yet count as not registered).
/// Stored results win: they outlive SSM's 30-day history.
pub fn build(
    app: &str,
    env: &str,
    version_id: &str,
    record: Option<&DeployRecord>,
    observed: &BTreeMap<(String, String), Observed>,
    results: &[StoredResult],
) -> DeployStatus {
    let phase = phase_of(record);
    let from_ssm = |command: &str, instance: &str| {
        let obs = observed
            .get(&(command.to_string(), instance.to_string()))
            .cloned()
            .unwrap_or(Observed::NotYet {
                code: "not asked yet".into(),
            });
        host_status(command, instance, &obs)
    };
    let (hosts, fleet_view): (Vec<HostStatus>, Option<FleetView>) = match record
        .and_then(|r| r.fleet.as_ref().map(|f| (r, f)))
    {
        Some((r, f)) => {
            let deploy_cmds = r.command_ids_for(Purpose::Deploy);
            let rollback_cmds = r.command_ids_for(Purpose::Rollback);
            let stored = fleet::results_by_host(results, Purpose::Deploy, &deploy_cmds);
            let stored_back = fleet::results_by_host(results, Purpose::Rollback, &rollback_cmds);
            let command_of = |instance: &str, purpose: Purpose| {
                r.commands
                    .iter()
                    .rev()
                    .find(|c| c.purpose == purpose && c.instance_ids.iter().any(|i| i == instance))
                    .map(|c| c.command_id.clone())
            };
            let hosts: Vec<HostStatus> = fleet::host_summaries(f, results, &deploy_cmds, &rollback_cmds)
                .into_iter()
                .map(|h| match stored.get(h.instance_id.as_str()) {
                    Some(s) => (*s).clone(),
                    None => match (h.outcome, command_of(&h.instance_id, Purpose::Deploy)) {
                        (HostState::Dispatched, Some(c)) => from_ssm(&c, &h.instance_id),
                        (state, _) => HostStatus {
                            instance_id: h.instance_id.clone(),
                            command_id: String::new(),
                            state,
                            ssm_status: String::new(),
                            exit_code: None,
                            result: None,
                            detail: match state {
                                HostState::Queued => "waiting for its wave".into(),
                                HostState::NotSent => "never sent: the rollout stopped before its wave; the host is unchanged".into(),
                                HostState::Offline => "not online in SSM at dispatch: not sent; check its SSM agent".into(),
                                other => other.as_str().into(),
                            },
                        },
                    },
                })
                .collect();
            let rollback: Vec<HostStatus> = f
                .rollback
                .iter()
                .flatten()
                .map(|id| match stored_back.get(id.as_str()) {
                    Some(s) => (*s).clone(),
                    None => match command_of(id, Purpose::Rollback) {
                        Some(c) => from_ssm(&c, id),
                        None => from_ssm("", id),
                    },
                })
                .collect();
            (
                hosts,
                Some(FleetView {
                    on_failure: f.on_failure,
                    waves: f.waves.len(),
                    sent: f.sent,
                    outcome: f.outcome,
                    reason: f.reason.clone(),
                    rollback,
                }),
            )
        }
        None => (
            record
                .map(invocation_pairs)
                .unwrap_or_default()
                .iter()
                .map(|(command, instance)| from_ssm(command, instance))
                .collect(),
            None,
        ),
    };
    let verdict = match (&phase, fleet_view.as_ref()) {
        (Phase::Dispatched, Some(f)) => f.outcome.map(verdict_of_fleet).unwrap_or(Verdict::Pending),
        _ => verdict(&phase, &hosts),
    };
    DeployStatus {
        app: app.to_string(),
        env: env.to_string(),
        version_id: version_id.to_string(),
        commit: record.and_then(|r| r.metadata.as_ref().map(|m| m.commit.clone())),
        phase,
        hosts,
        fleet: fleet_view,
        verdict,
    }
}

/// One row per host under a blank line: the deploy's hosts, or the hosts sent back.
fn host_table(first_column: &str, hosts: &[HostStatus]) -> String {
    let mut t = Table::new([first_column, "STATE", "EXIT", "COMMAND", "DETAIL"]);
    for h in hosts {
        t.row([
            h.instance_id.clone(),
            h.state.to_string(),
            h.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            short(&h.command_id, 13),
            short(&h.detail, 120),
        ]);
    }
    format!("\n{}", t.render())
}

/// Counts of hosts per state, for progress lines.
pub fn counts(hosts: &[HostStatus]) -> BTreeMap<HostState, usize> {
    let mut out = BTreeMap::new();
    for h in hosts {
        *out.entry(h.state).or_insert(0) += 1;
    }
    out
}

/// `3 success, 1 in_progress` style summary.
pub fn counts_line(hosts: &[HostStatus]) -> String {
    counts(hosts)
        .iter()
        .map(|(s, n)| format!("{n} {s}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl DeployStatus {
    /// Hosts whose script reported `outcome` (from the result line SSM kept).
    pub fn hosts_with(&self, outcome: HostOutcome) -> Vec<&str> {
        self.hosts
            .iter()
            .filter(|h| h.result.as_ref().is_some_and(|r| r.outcome == outcome))
            .map(|h| h.instance_id.as_str())
            .collect()
    }

    /// The human report: a headline, the verdict (naming hosts where the success was a no-op
    /// or a stale skip), then one row per host.
    pub fn render(&self) -> String {
        let mut out = format!("{}/{} version {}", self.app, self.env, self.version_id);
        if let Some(c) = &self.commit {
            out.push_str(&format!(" (commit {})", crate::short_commit(c)));
        }
        out.push('\n');
        match &self.phase {
            Phase::NoRecord => out.push_str(
                "  deploy: no deploy record yet — the deployer has not processed this upload; if this lasts, check the EventBridge rule, the Lambda's logs and its DLQ\n",
            ),
            Phase::Dispatching => out.push_str("  deploy: dispatching — the deployer is verifying the bundle and sending commands\n"),
            Phase::Refused { outcome, reason } => {
                out.push_str(&format!("  deploy: {outcome} — nothing reached a host"));
                if !reason.is_empty() {
                    out.push_str(&format!(": {reason}"));
                }
                out.push('\n');
            }
            Phase::Dispatched => {
                out.push_str(&format!(
                    "  deploy: dispatched to {} host(s): {}\n",
                    self.hosts.len(),
                    counts_line(&self.hosts)
                ));
            }
        }
        if let Some(f) = &self.fleet {
            out.push_str(&format!(
                "  rollout: {} of {} wave(s) sent, on_failure = {}\n",
                f.sent,
                f.waves,
                f.on_failure.as_str()
            ));
            match (&f.outcome, &f.reason) {
                (Some(o), Some(r)) => out.push_str(&format!("  fleet: {o} — {r}\n")),
                (Some(o), None) => out.push_str(&format!("  fleet: {o}\n")),
                _ => out.push_str("  fleet: not settled yet\n"),
            }
        }
        out.push_str(&format!("  verdict: {}\n", self.verdict.as_str()));
        for (outcome, said) in [
            (HostOutcome::Noop, "already ran this version (no-op)"),
            (
                HostOutcome::Stale,
                "skipped it as older than what they run (stale)",
            ),
        ] {
            let hosts = self.hosts_with(outcome);
            if !hosts.is_empty() {
                out.push_str(&format!("  note: {} {said}\n", hosts.join(", ")));
            }
        }
        if !self.hosts.is_empty() {
            out.push_str(&host_table("HOST", &self.hosts));
        }
        if let Some(f) = self.fleet.as_ref().filter(|f| !f.rollback.is_empty()) {
            out.push_str(&host_table("SENT BACK", &f.rollback));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropship_contract::key::ReleaseKey;
    use dropship_contract::record::{CommandBatch, EventFacts, Trigger};

    /// A `GetCommandInvocation` response as the AWS CLI prints it (shape from the SSM API
    /// reference), with the fields that matter here.
    fn fixture(json: &str) -> Observed {
        Observed::Found(serde_json::from_str(json).expect("fixture parses"))
    }

    fn result_line(outcome: &str, code: i32, release: &str, message: &str) -> String {
        format!(
            "[dropship] step lock\\n[dropship] result {outcome}\\nDROPSHIP_RESULT {{\\\"outcome\\\":\\\"{outcome}\\\",\\\"release\\\":\\\"{release}\\\",\\\"previous\\\":\\\"r1\\\",\\\"version_id\\\":\\\"v2\\\",\\\"commit\\\":\\\"abc\\\",\\\"exit_code\\\":{code},\\\"message\\\":\\\"{message}\\\",\\\"attempted\\\":\\\"\\\"}}\\n"
        )
    }

    fn finished_fixture(status: &str, details: &str, code: i32, stdout: &str) -> Observed {
        fixture(&format!(
            r#"{{
                "CommandId": "c-1",
                "InstanceId": "i-0abc",
                "Comment": "dropship shop/prod v2",
                "DocumentName": "AWS-RunShellScript",
                "DocumentVersion": "$DEFAULT",
                "PluginName": "aws:runShellScript",
                "ResponseCode": {code},
                "ExecutionStartDateTime": "2026-11-23T09:00:03.000Z",
                "ExecutionElapsedTime": "PT12.5S",
                "ExecutionEndDateTime": "2026-11-23T09:00:15.500Z",
                "Status": "{status}",
                "StatusDetails": "{details}",
                "StandardOutputContent": "{stdout}",
                "StandardOutputUrl": "",
                "StandardErrorContent": "",
                "StandardErrorUrl": "",
                "CloudWatchOutputConfig": {{"CloudWatchLogGroupName": "", "CloudWatchOutputEnabled": false}}
            }}"#
        ))
    }

    fn state(obs: &Observed) -> HostState {
        host_status("c-1", "i-0abc", obs).state
    }

    #[test]
    fn finished_invocations_map_by_exit_code_and_result_line() {
        let ok = finished_fixture(
            "Success",
            "Success",
            0,
            &result_line("deployed", 0, "r2", "healthy"),
        );
        let s = host_status("c-1", "i-0abc", &ok);
        assert_eq!(s.state, HostState::Success);
        assert_eq!(s.exit_code, Some(0));
        assert_eq!(s.result.as_ref().unwrap().release, "r2");
        assert!(s.detail.starts_with("deployed r2"), "{}", s.detail);

        let noop = finished_fixture("Success", "Success", 0, &result_line("noop", 0, "r2", ""));
        assert_eq!(state(&noop), HostState::Success);
        // Exit 0 that was a no-op or a stale skip is named, not passed off as a deploy.
        let rec = record(Outcome::Dispatched, &[("c-1", &["i-0abc"])]);
        let seen = obs(&[("c-1", "i-0abc", noop.clone())]);
        let text = build("shop", "prod", "v2", Some(&rec), &seen, &[]).render();
        assert!(
            text.contains("verdict: succeeded")
                && text.contains("note: i-0abc already ran this version (no-op)"),
            "{text}"
        );
        let stale = finished_fixture("Success", "Success", 0, &result_line("stale", 0, "r3", ""));
        assert_eq!(state(&stale), HostState::Success);

        let rolled = finished_fixture(
            "Failed",
            "Failed",
            9,
            &result_line("rolled_back", 9, "r1", "health failed"),
        );
        let s = host_status("c-1", "i-0abc", &rolled);
        assert_eq!(s.state, HostState::RolledBack);
        assert!(s.detail.contains("health failed"), "{}", s.detail);

        let stuck = finished_fixture(
            "Failed",
            "Failed",
            10,
            &result_line("rollback_failed", 10, "r2", "x"),
        );
        assert_eq!(state(&stuck), HostState::RollbackFailed);

        for code in [2, 3, 4, 5, 6, 7, 8] {
            let f = finished_fixture(
                "Failed",
                "Failed",
                code,
                &result_line("failed", code, "", "bad"),
            );
            assert_eq!(state(&f), HostState::Failed, "exit {code}");
        }
    }

    #[test]
    fn exit_code_decides_when_the_result_line_was_truncated_away() {
        for (code, want) in [
            (0, HostState::Success),
            (9, HostState::RolledBack),
            (10, HostState::RollbackFailed),
            (5, HostState::Failed),
            (127, HostState::Failed),
        ] {
            let status = if code == 0 { "Success" } else { "Failed" };
            let obs = finished_fixture(
                status,
                status,
                code,
                "[dropship] lots of output cut at 24000 chars",
            );
            let s = host_status("c-1", "i-0abc", &obs);
            assert_eq!(s.state, want, "exit {code}");
            assert!(s.result.is_none());
            assert!(s.detail.contains(&format!("exit {code}")), "{}", s.detail);
        }
    }

    #[test]
    fn a_result_line_that_disagrees_can_only_make_it_worse() {
        // Script said rolled back but the process exited 10 (e.g. killed during rollback).
        let obs = finished_fixture(
            "Failed",
            "Failed",
            10,
            &result_line("rolled_back", 9, "r1", ""),
        );
        let s = host_status("c-1", "i-0abc", &obs);
        assert_eq!(s.state, HostState::RollbackFailed);
        assert!(s.detail.contains("SSM says 10"), "{}", s.detail);
        // Exit 9 but the line says rollback_failed: worse wins.
        let obs = finished_fixture(
            "Failed",
            "Failed",
            9,
            &result_line("rollback_failed", 10, "r1", ""),
        );
        assert_eq!(state(&obs), HostState::RollbackFailed);
    }

    #[test]
    fn running_and_waiting_invocations_are_not_final() {
        let pending = finished_fixture("Pending", "Pending", -1, "");
        let delayed = finished_fixture("Delayed", "Delayed", -1, "");
        let running = finished_fixture("InProgress", "In Progress", -1, "");
        assert_eq!(state(&pending), HostState::Dispatched);
        assert_eq!(state(&delayed), HostState::Dispatched);
        assert_eq!(state(&running), HostState::InProgress);
        let missing = Observed::NotYet {
            code: "InvocationDoesNotExist".into(),
        };
        let s = host_status("c-1", "i-0abc", &missing);
        assert_eq!(s.state, HostState::Dispatched);
        assert!(s.detail.contains("InvocationDoesNotExist"));
        let gone = host_status(
            "c-1",
            "i-0abc",
            &Observed::Gone {
                code: "InvalidCommandId".into(),
            },
        );
        assert_eq!(gone.state, HostState::Unknown);
        assert!(gone.state.is_final());
        for s in [HostState::Dispatched, HostState::InProgress] {
            assert!(!s.is_final());
        }
    }

    #[test]
    fn hosts_that_never_ran_are_told_apart() {
        for details in ["Delivery Timed Out", "DeliveryTimedOut"] {
            let never = host_status(
                "c-1",
                "i-0abc",
                &finished_fixture("TimedOut", details, -1, ""),
            );
            assert_eq!(never.state, HostState::TimedOut, "{details}");
            assert!(never.detail.contains("never delivered"), "{details}");
        }
        let exec = host_status(
            "c-1",
            "i-0abc",
            &finished_fixture("TimedOut", "Execution Timed Out", -1, "partial"),
        );
        assert_eq!(exec.state, HostState::TimedOut);
        assert!(exec.detail.contains("execution timeout"));
        let exec = host_status(
            "c-1",
            "i-0abc",
            &finished_fixture("TimedOut", "ExecutionTimedOut", 137, "partial"),
        );
        assert!(exec.detail.contains("execution timeout"));
        assert_eq!(
            state(&finished_fixture("Failed", "Undeliverable", -1, "")),
            HostState::Undeliverable
        );
        assert_eq!(
            state(&finished_fixture("Cancelled", "Terminated", -1, "")),
            HostState::Cancelled
        );
        assert_eq!(
            state(&finished_fixture("Cancelled", "Cancelled", -1, "")),
            HostState::Cancelled
        );
        // A status detail this code does not know falls back to the coarse status.
        assert_eq!(
            state(&finished_fixture("InProgress", "Something New", -1, "")),
            HostState::InProgress
        );
        assert_eq!(
            state(&finished_fixture("Weird", "", -1, "")),
            HostState::Failed
        );
    }

    fn record(outcome: Outcome, batches: &[(&str, &[&str])]) -> DeployRecord {
        DeployRecord {
            reason: (outcome == Outcome::Rejected).then(|| "sha256 mismatch".to_string()),
            targets: batches
                .iter()
                .flat_map(|(_, i)| i.iter().map(|s| s.to_string()))
                .collect(),
            commands: batches
                .iter()
                .map(|(c, i)| CommandBatch {
                    command_id: c.to_string(),
                    instance_ids: i.iter().map(|s| s.to_string()).collect(),
                    purpose: Default::default(),
                })
                .collect(),
            attempts: 1,
            ..DeployRecord::new(
                "b",
                &ReleaseKey::new("shop", "prod").unwrap(),
                "v2",
                outcome,
                EventFacts::new(Trigger::Event),
                "2026-11-23T09:00:01Z",
            )
        }
    }

    fn obs(entries: &[(&str, &str, Observed)]) -> BTreeMap<(String, String), Observed> {
        entries
            .iter()
            .map(|(c, i, o)| ((c.to_string(), i.to_string()), o.clone()))
            .collect()
    }

    #[test]
    fn every_invocation_of_every_batch_is_read_and_the_worst_host_decides() {
        let rec = record(
            Outcome::Dispatched,
            &[("c-1", &["i-1", "i-2"]), ("c-2", &["i-3"])],
        );
        let ok = finished_fixture("Success", "Success", 0, "");
        let rolled = finished_fixture("Failed", "Failed", 9, "");
        let all_ok = obs(&[
            ("c-1", "i-1", ok.clone()),
            ("c-1", "i-2", ok.clone()),
            ("c-2", "i-3", ok.clone()),
        ]);
        let s = build("shop", "prod", "v2", Some(&rec), &all_ok, &[]);
        assert_eq!(s.hosts.len(), 3);
        assert_eq!(s.verdict, Verdict::Succeeded);
        assert_eq!(s.verdict.exit_code(), Exit::Success);

        // The second batch's one host rolled back: the parent commands might both say
        // "Success"-complete, but the verdict must not.
        let one_rolled = obs(&[
            ("c-1", "i-1", ok.clone()),
            ("c-1", "i-2", ok.clone()),
            ("c-2", "i-3", rolled),
        ]);
        let s = build("shop", "prod", "v2", Some(&rec), &one_rolled, &[]);
        assert_eq!(s.verdict, Verdict::RolledBack);
        assert_eq!(s.verdict.exit_code(), Exit::RolledBack);
        assert_eq!(s.hosts[2].instance_id, "i-3");
        assert_eq!(s.hosts[2].command_id, "c-2");

        // A host not registered yet keeps the whole deploy pending.
        let partial = obs(&[("c-1", "i-1", ok.clone()), ("c-1", "i-2", ok.clone())]);
        let s = build("shop", "prod", "v2", Some(&rec), &partial, &[]);
        assert_eq!(s.verdict, Verdict::Pending);
        assert_eq!(s.hosts[2].state, HostState::Dispatched);

        let undeliverable = finished_fixture("Failed", "Undeliverable", -1, "");
        let stuck = finished_fixture("Failed", "Failed", 10, "");
        let mixed = obs(&[
            ("c-1", "i-1", undeliverable),
            ("c-1", "i-2", ok.clone()),
            ("c-2", "i-3", ok.clone()),
        ]);
        assert_eq!(
            build("shop", "prod", "v2", Some(&rec), &mixed, &[]).verdict,
            Verdict::Failed
        );
        let worst = obs(&[
            ("c-1", "i-1", stuck),
            ("c-1", "i-2", finished_fixture("Failed", "Failed", 9, "")),
            ("c-2", "i-3", ok),
        ]);
        let s = build("shop", "prod", "v2", Some(&rec), &worst, &[]);
        assert_eq!(s.verdict, Verdict::RollbackFailed);
        assert_eq!(s.verdict.exit_code(), Exit::RollbackFailed);
        assert!(s.render().contains("rollback_failed"));
    }

    #[test]
    fn records_without_dispatch_settle_or_wait_without_hosts() {
        let none = build("shop", "prod", "v2", None, &BTreeMap::new(), &[]);
        assert_eq!(none.phase, Phase::NoRecord);
        assert_eq!(none.verdict, Verdict::Pending);
        assert!(none.render().contains("no deploy record yet"));
        let claiming = record(Outcome::Dispatching, &[]);
        assert_eq!(
            build("shop", "prod", "v2", Some(&claiming), &BTreeMap::new(), &[]).verdict,
            Verdict::Pending
        );
        let rejected = record(Outcome::Rejected, &[]);
        let s = build("shop", "prod", "v2", Some(&rejected), &BTreeMap::new(), &[]);
        assert_eq!(s.verdict, Verdict::Refused);
        assert_eq!(s.verdict.exit_code(), Exit::DeployRefused);
        assert!(s.render().contains("sha256 mismatch"), "{}", s.render());
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["phase"], "refused");
        assert_eq!(json["outcome"], "rejected");
        assert_eq!(json["verdict"], "refused");
        assert_eq!(
            build(
                "shop",
                "prod",
                "v2",
                Some(&record(Outcome::NoTargets, &[])),
                &BTreeMap::new(),
                &[]
            )
            .verdict,
            Verdict::Refused
        );
    }

    #[test]
    fn duplicate_pairs_are_read_once() {
        let rec = record(
            Outcome::Dispatched,
            &[("c-1", &["i-1", "i-1"]), ("c-1", &["i-1"])],
        );
        assert_eq!(
            invocation_pairs(&rec),
            vec![("c-1".to_string(), "i-1".to_string())]
        );
    }
}
