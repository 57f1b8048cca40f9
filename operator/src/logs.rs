//! `logs [VERSION]`: every host's full output of one deploy, from CloudWatch Logs.
//!
//! SSM keeps only the first 24,000 characters of a command's output; the deployer sends
//! every command with a `CloudWatchOutputConfig` when its `DROPSHIP_LOG_GROUP` is set, and
//! the agent writes each host's output of each command to two streams of that group
//! ([`command_log_stream`]). The deploy record names every command (waves, fleet rollback,
//! catch-up) and its instances, so the streams to read follow from it. This module decides
//! which streams, in which order, under which heading, and when `--follow` may stop; the
//! reads are in [`crate::facts`].

use std::collections::BTreeMap;

use dropship_contract::fleet::{HostState, HostStatus, Purpose};
use dropship_contract::record::DeployRecord;
use dropship_contract::wiring::{command_log_stream, OutputStream};
use serde::Serialize;

use crate::short;

/// One host's part in one command of the deploy, and its two streams.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Section {
    /// Instance id.
    pub instance_id: String,
    /// SSM command id.
    pub command_id: String,
    /// Deploy (a wave) or the fleet rollback.
    pub purpose: Purpose,
    /// 1-based wave of a deploy command, when the fleet plan places the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wave: Option<usize>,
    /// What the host did, as `status` reports it.
    pub state: HostState,
    /// `status`'s one-line detail.
    pub detail: String,
}

impl Section {
    /// The (command, instance) pair.
    pub fn pair(&self) -> (String, String) {
        (self.command_id.clone(), self.instance_id.clone())
    }

    /// The log stream of `which` output.
    pub fn stream(&self, which: OutputStream) -> String {
        command_log_stream(&self.command_id, &self.instance_id, which)
    }

    /// `== i-1  command 8f2c…  deploy (wave 1)  success: deployed …`
    pub fn heading(&self) -> String {
        let what = match (self.purpose, self.wave) {
            (Purpose::Deploy, Some(w)) => format!("deploy (wave {w})"),
            (p, _) => p.as_str().to_string(),
        };
        let detail = if self.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", self.detail)
        };
        format!(
            "== {}  command {}  {what}  {}{detail}",
            self.instance_id,
            short(&self.command_id, 13),
            self.state
        )
    }
}

/// The sections of a deploy, host by host (hosts in the order the record first sent to
/// them, each host's commands in the order they were sent), only `host` when given.
/// `known` holds what `status` knows about each (command, instance) pair; a pair it does not
/// know is `dispatched`.
pub fn sections(record: &DeployRecord, known: &[HostStatus], host: Option<&str>) -> Vec<Section> {
    let state_of = |command: &str, instance: &str| {
        known
            .iter()
            .find(|h| h.command_id == command && h.instance_id == instance)
            .map(|h| (h.state, h.detail.clone()))
            .unwrap_or((HostState::Dispatched, String::new()))
    };
    let wave_of = |instance: &str| {
        record.fleet.as_ref().and_then(|f| {
            f.waves
                .iter()
                .position(|w| w.iter().any(|i| i == instance))
                .map(|i| i + 1)
        })
    };
    let mut by_host: BTreeMap<usize, Vec<Section>> = BTreeMap::new();
    let mut host_order: Vec<String> = Vec::new();
    for batch in &record.commands {
        for instance in &batch.instance_ids {
            if host.is_some_and(|h| h != instance) {
                continue;
            }
            let index = match host_order.iter().position(|h| h == instance) {
                Some(i) => i,
                None => {
                    host_order.push(instance.clone());
                    host_order.len() - 1
                }
            };
            let list = by_host.entry(index).or_default();
            if list.iter().any(|s| s.command_id == batch.command_id) {
                continue;
            }
            let (state, detail) = state_of(&batch.command_id, instance);
            list.push(Section {
                instance_id: instance.clone(),
                command_id: batch.command_id.clone(),
                purpose: batch.purpose,
                wave: (batch.purpose == Purpose::Deploy)
                    .then(|| wave_of(instance))
                    .flatten(),
                state,
                detail,
            });
        }
    }
    by_host.into_values().flatten().collect()
}

/// What one read of one stream found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamRead {
    /// New lines since the last read (possibly none), and where to read on from.
    Lines {
        /// The messages, in order.
        lines: Vec<String>,
        /// CloudWatch's forward token after them.
        next: Option<String>,
    },
    /// The stream does not exist (yet): the agent creates it with the first output.
    Missing,
}

/// A section with the output read so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostLog {
    /// Which host, command and state.
    #[serde(flatten)]
    pub section: Section,
    /// Standard output lines.
    pub stdout: Vec<String>,
    /// Standard error lines.
    pub stderr: Vec<String>,
    /// Streams that did not exist when last read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

/// Everything `logs` prints for one version (`--json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogsReport {
    /// App name.
    pub app: String,
    /// Environment name.
    pub env: String,
    /// The object version.
    pub version_id: String,
    /// CloudWatch Logs group read.
    pub log_group: String,
    /// Whether the deploy had settled when the output was read.
    pub settled: bool,
    /// Host by host.
    pub hosts: Vec<HostLog>,
    /// The deployer Lambda's own lines about this deploy (its log group, when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lambda: Option<LambdaLines>,
    /// Things the operator should know (missing streams and why).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Text for a chunk of new lines of one stream: a heading when the section or the stream
/// changed since the last chunk printed (`last`), then the lines.
pub fn render_chunk(
    last: &mut Option<((String, String), OutputStream)>,
    section: &Section,
    which: OutputStream,
    lines: &[String],
) -> String {
    let mut out = String::new();
    let here = (section.pair(), which);
    if last.as_ref().map(|(p, _)| p) != Some(&here.0) {
        out.push_str(&section.heading());
        out.push('\n');
    }
    if last.as_ref() != Some(&here) {
        out.push_str(&format!("-- {}\n", which.as_str()));
    }
    for line in lines {
        out.push_str(line.strip_suffix('\n').unwrap_or(line));
        out.push('\n');
    }
    *last = Some(here);
    out
}

impl LogsReport {
    /// The text form: each section with its heading and both streams.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}/{} version {}  (log group {})\n",
            self.app, self.env, self.version_id, self.log_group
        );
        for host in &self.hosts {
            out.push('\n');
            let mut last = None;
            for (which, lines) in [
                (OutputStream::Stdout, &host.stdout),
                (OutputStream::Stderr, &host.stderr),
            ] {
                out.push_str(&render_chunk(&mut last, &host.section, which, lines));
                if lines.is_empty() {
                    out.push_str("(no output)\n");
                }
            }
        }
        if self.hosts.is_empty() {
            out.push_str("no command was sent for this version (see `dropship status`)\n");
        }
        if let Some(lambda) = &self.lambda {
            out.push_str(&format!(
                "\n== deployer Lambda (log group {})\n",
                lambda.log_group
            ));
            for line in &lambda.lines {
                out.push_str(line);
                out.push('\n');
            }
            if lambda.lines.is_empty() {
                out.push_str("(no line names this version or its commands)\n");
            }
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }
}

/// The deployer Lambda's lines about one deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LambdaLines {
    /// The Lambda's CloudWatch Logs group.
    pub log_group: String,
    /// Its lines naming the version or one of the deploy's commands, oldest first.
    pub lines: Vec<String>,
}

/// CloudWatch's longest filter pattern.
pub const MAX_FILTER_PATTERN: usize = 1024;

/// What identifies the Lambda's lines about a deploy: the version id (claim, verification,
/// dispatch, settling) and each command id the record names (results, steps sent). A line
/// belongs to the deploy when it contains one of them.
pub fn lambda_terms(version_id: &str, record: Option<&DeployRecord>) -> Vec<String> {
    let mut terms = vec![version_id.to_string()];
    for batch in record.map(|r| r.commands.as_slice()).unwrap_or_default() {
        if !terms.contains(&batch.command_id) {
            terms.push(batch.command_id.clone());
        }
    }
    terms
}

/// The CloudWatch filter pattern matching any of `terms` (`?"a" ?"b"`), or, when that would
/// exceed [`MAX_FILTER_PATTERN`], the first term alone (the caller's [`select_lambda_lines`]
/// is the exact filter either way; the pattern only narrows what CloudWatch sends).
pub fn lambda_filter_pattern(terms: &[String]) -> String {
    let quoted = |t: &String| format!("\"{}\"", t.replace('"', ""));
    let all: Vec<String> = terms.iter().map(|t| format!("?{}", quoted(t))).collect();
    let joined = all.join(" ");
    if joined.len() <= MAX_FILTER_PATTERN || terms.len() < 2 {
        joined
    } else {
        quoted(&terms[0])
    }
}

/// The lines that contain one of `terms`, in their order.
pub fn select_lambda_lines(lines: Vec<String>, terms: &[String]) -> Vec<String> {
    lines
        .into_iter()
        .filter(|l| terms.iter().any(|t| l.contains(t.as_str())))
        .collect()
}

/// Notes for streams a finished host should have written and did not: stdout always has the
/// host script's result line, so its absence after the host finished means the output never
/// reached the group.
pub fn missing_notes(log_group: &str, hosts: &[HostLog]) -> Vec<String> {
    let lost: Vec<&HostLog> = hosts
        .iter()
        .filter(|h| {
            h.section.state.is_final()
                && h.missing.contains(&h.section.stream(OutputStream::Stdout))
        })
        .collect();
    if lost.is_empty() {
        return Vec::new();
    }
    let names: Vec<String> = lost
        .iter()
        .map(|h| h.section.stream(OutputStream::Stdout))
        .collect();
    vec![format!(
        "log group {log_group} has no stream {} although the host finished: the hosts' instance profile may lack logs:CreateLogStream/logs:PutLogEvents on the group, the command was sent before the deployer's DROPSHIP_LOG_GROUP was set, or the host never ran it (undeliverable); `dropship status` shows what SSM kept",
        names.join(", ")
    )]
}

/// How many polls in a row without new output, once the deploy settled, end `--follow`
/// (the agent uploads the last lines shortly after the command's status turns final).
pub const QUIET_POLLS: u32 = 2;

/// The state of `--follow` between polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FollowState {
    /// Polls in a row without new output since the deploy settled.
    pub quiet: u32,
}

impl FollowState {
    /// After a poll: whether to stop (the fleet settled and every stream stopped growing).
    pub fn after_poll(&mut self, settled: bool, grew: bool) -> bool {
        self.quiet = if settled && !grew { self.quiet + 1 } else { 0 };
        self.quiet >= QUIET_POLLS
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropship_contract::fleet::{Fleet, OnFailure};
    use dropship_contract::record::{CommandBatch, EventFacts, Outcome, Trigger};

    fn record(commands: &[(&str, &[&str], Purpose)]) -> DeployRecord {
        let release = dropship_contract::key::ReleaseKey::new("shop", "prod").unwrap();
        let mut r = DeployRecord::new(
            "b",
            &release,
            "v1",
            Outcome::Dispatched,
            EventFacts::new(Trigger::Event),
            "2026-11-29T00:00:00Z",
        );
        r.commands = commands
            .iter()
            .map(|(c, ids, p)| CommandBatch {
                command_id: (*c).into(),
                instance_ids: ids.iter().map(|i| (*i).to_string()).collect(),
                purpose: *p,
            })
            .collect();
        r.fleet = Some(Fleet::new(
            OnFailure::RollbackFleet,
            &["i-1".into(), "i-2".into()],
            &[],
            1,
        ));
        r
    }

    fn known(command: &str, instance: &str, state: HostState) -> HostStatus {
        HostStatus {
            instance_id: instance.into(),
            command_id: command.into(),
            state,
            ssm_status: String::new(),
            exit_code: None,
            result: None,
            detail: format!("{state} detail"),
        }
    }

    #[test]
    fn sections_go_host_by_host_with_every_command_of_each() {
        let r = record(&[
            ("c-w1", &["i-1"], Purpose::Deploy),
            ("c-w2", &["i-2"], Purpose::Deploy),
            ("c-back", &["i-1"], Purpose::Rollback),
        ]);
        let states = [
            known("c-w1", "i-1", HostState::Success),
            known("c-w2", "i-2", HostState::RolledBack),
            known("c-back", "i-1", HostState::Success),
        ];
        let s = sections(&r, &states, None);
        let order: Vec<(&str, &str)> = s
            .iter()
            .map(|s| (s.instance_id.as_str(), s.command_id.as_str()))
            .collect();
        assert_eq!(order, [("i-1", "c-w1"), ("i-1", "c-back"), ("i-2", "c-w2")]);
        assert_eq!(s[0].wave, Some(1));
        assert_eq!(s[1].wave, None, "a rollback has no wave");
        assert_eq!(s[2].wave, Some(2));
        assert_eq!(s[2].state, HostState::RolledBack);
        assert!(
            s[0].heading().contains("deploy (wave 1)"),
            "{}",
            s[0].heading()
        );
        assert!(s[1].heading().contains("rollback"), "{}", s[1].heading());

        let only = sections(&r, &states, Some("i-2"));
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].instance_id, "i-2");
        assert!(sections(&r, &states, Some("i-9")).is_empty());
    }

    #[test]
    fn a_pair_status_does_not_know_is_dispatched() {
        let r = record(&[("c-1", &["i-1", "i-2"], Purpose::Deploy)]);
        let s = sections(&r, &[known("c-1", "i-1", HostState::Success)], None);
        assert_eq!(s[1].state, HostState::Dispatched);
        assert!(s[1].detail.is_empty());
    }

    #[test]
    fn chunks_repeat_headings_only_when_the_stream_changes() {
        let r = record(&[("c-1", &["i-1", "i-2"], Purpose::Deploy)]);
        let s = sections(&r, &[], None);
        let mut last = None;
        let a = render_chunk(&mut last, &s[0], OutputStream::Stdout, &["one\n".into()]);
        assert!(
            a.starts_with("== i-1") && a.ends_with("-- stdout\none\n"),
            "{a}"
        );
        let b = render_chunk(&mut last, &s[0], OutputStream::Stdout, &["two".into()]);
        assert_eq!(b, "two\n");
        let c = render_chunk(&mut last, &s[0], OutputStream::Stderr, &["err".into()]);
        assert_eq!(c, "-- stderr\nerr\n");
        let d = render_chunk(&mut last, &s[1], OutputStream::Stderr, &["x".into()]);
        assert!(
            d.starts_with("== i-2") && d.contains("-- stderr\nx\n"),
            "{d}"
        );
    }

    #[test]
    fn a_finished_host_without_stdout_stream_is_explained() {
        let r = record(&[("c-1", &["i-1", "i-2"], Purpose::Deploy)]);
        let s = sections(
            &r,
            &[
                known("c-1", "i-1", HostState::Success),
                known("c-1", "i-2", HostState::InProgress),
            ],
            None,
        );
        let log = |section: &Section| HostLog {
            section: section.clone(),
            stdout: vec![],
            stderr: vec![],
            missing: vec![
                section.stream(OutputStream::Stdout),
                section.stream(OutputStream::Stderr),
            ],
        };
        let notes = missing_notes("/g", &[log(&s[0]), log(&s[1])]);
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].contains("c-1/i-1/deploy/stdout")
                && !notes[0].contains("i-2")
                && notes[0].contains("logs:PutLogEvents")
                && notes[0].contains("/g"),
            "{}",
            notes[0]
        );
        // Still running: not yet a fault.
        assert!(missing_notes("/g", &[log(&s[1])]).is_empty());
    }

    #[test]
    fn follow_stops_only_after_the_fleet_settled_and_output_stopped() {
        let mut f = FollowState::default();
        assert!(!f.after_poll(false, false));
        assert!(!f.after_poll(false, false), "not settled: keep polling");
        assert!(!f.after_poll(true, true), "settled but still growing");
        assert!(!f.after_poll(true, false));
        assert!(!f.after_poll(true, true), "growth resets the count");
        assert!(!f.after_poll(true, false));
        assert!(f.after_poll(true, false));
    }

    #[test]
    fn the_lambda_lines_of_a_deploy_are_those_naming_its_version_or_commands() {
        let r = record(&[
            ("cmd-1", &["i-1", "i-2"], Purpose::Deploy),
            ("cmd-2", &["i-1"], Purpose::Rollback),
        ]);
        let terms = lambda_terms("ver-9", Some(&r));
        assert_eq!(terms, ["ver-9", "cmd-1", "cmd-2"]);
        assert_eq!(
            lambda_filter_pattern(&terms),
            r#"?"ver-9" ?"cmd-1" ?"cmd-2""#
        );
        let lines = vec![
            r#"{"fields":{"message":"version claimed","version_id":"ver-9"}}"#.to_string(),
            r#"{"fields":{"message":"version claimed","version_id":"ver-8"}}"#.to_string(),
            r#"{"fields":{"message":"step sent","command_id":"cmd-2"}}"#.to_string(),
            r#"{"fields":{"message":"deployer ready"}}"#.to_string(),
        ];
        let kept = select_lambda_lines(lines.clone(), &terms);
        assert_eq!(kept, [lines[0].clone(), lines[2].clone()]);
        // Without a record only the version identifies the deploy.
        assert_eq!(lambda_terms("ver-9", None), ["ver-9"]);
    }

    #[test]
    fn a_filter_pattern_too_long_for_cloudwatch_narrows_by_the_version_alone() {
        let mut terms = vec!["ver-9".to_string()];
        terms.extend((0..40).map(|i| format!("{i:036}")));
        let pattern = lambda_filter_pattern(&terms);
        assert_eq!(pattern, r#""ver-9""#);
        assert!(lambda_filter_pattern(&terms[..20]).len() <= MAX_FILTER_PATTERN);
        // A quote inside a term cannot end the quoted phrase early.
        assert_eq!(lambda_filter_pattern(&["a\"b".to_string()]), r#"?"ab""#);
    }
}
