//! `releases`: the deploy history of an app/env — every object version of its key with who
//! uploaded what, and what the deployer did with it (from the deploy records). Pure: the
//! facts come from [`crate::facts`], the command that gathers them is in [`crate::commands`].

use std::collections::HashMap;

use dropship_contract::fleet::{summary_counts, FleetOutcome, HostState, HostSummary};
use dropship_contract::metadata::ObjectMetadata;
use dropship_contract::record::{DeployRecord, LatestPointer, Outcome};
use serde::Serialize;

use crate::short;
use crate::table::Table;

/// One entry of the key's history as `ListObjectVersions` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionEntry {
    /// S3 version id.
    pub version_id: String,
    /// Last-modified time, RFC 3339 UTC.
    pub modified: String,
    /// Last-modified time in Unix milliseconds (for ordering).
    #[serde(skip)]
    pub modified_ms: i64,
    /// Whether this is the key's current version.
    pub is_latest: bool,
    /// A delete marker rather than an upload.
    pub delete_marker: bool,
    /// Object size (uploads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
}

/// Merges S3's two newest-first lists (versions, delete markers) into one newest-first
/// history. Equal timestamps keep S3's order; the current entry wins a tie.
pub fn merge_history(versions: Vec<VersionEntry>, markers: Vec<VersionEntry>) -> Vec<VersionEntry> {
    let mut out = Vec::with_capacity(versions.len() + markers.len());
    let mut v = versions.into_iter().peekable();
    let mut m = markers.into_iter().peekable();
    loop {
        let take_version = match (v.peek(), m.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(a), Some(b)) => {
                if a.modified_ms != b.modified_ms {
                    a.modified_ms > b.modified_ms
                } else {
                    !b.is_latest
                }
            }
        };
        let next = if take_version { v.next() } else { m.next() };
        out.extend(next);
    }
    out
}

/// What the deployer did with a version, from its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeploySummary {
    /// The record's outcome; `None` without a record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// The record's reason (rejections, no targets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Hosts the command went to.
    pub hosts: usize,
    /// SSM command ids.
    pub command_ids: Vec<String>,
    /// This is the version the newest-dispatched pointer names.
    pub newest_dispatched: bool,
    /// How the fleet ended (records with a rollout), once settled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetOutcome>,
    /// Every host's end of the rollout (from the record, written when the fleet settled).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fleet_hosts: Vec<HostSummary>,
    /// The record has a rollout that is not settled yet.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub rolling_out: bool,
}

impl DeploySummary {
    /// The table cell.
    pub fn cell(&self) -> String {
        let targets = self
            .fleet_hosts
            .iter()
            .filter(|h| h.outcome != HostState::Offline)
            .count();
        let deployed = self
            .fleet_hosts
            .iter()
            .filter(|h| h.outcome == HostState::Success && h.rollback.is_none())
            .count();
        let mut text = match (self.outcome, self.fleet) {
            (Some(Outcome::Dispatched), Some(FleetOutcome::Deployed)) => {
                format!("deployed on {deployed}/{targets}")
            }
            (Some(Outcome::Dispatched), Some(FleetOutcome::RolledBack)) => {
                format!("rolled back (fleet): {}", summary_counts(&self.fleet_hosts))
            }
            (Some(Outcome::Dispatched), Some(FleetOutcome::PartiallyDeployed)) => format!(
                "partially deployed: {deployed}/{targets} run it; {}",
                summary_counts(&self.fleet_hosts)
            ),
            (Some(Outcome::Dispatched), Some(o)) => {
                format!(
                    "{}: {}",
                    o.as_str().replace('_', " "),
                    summary_counts(&self.fleet_hosts)
                )
            }
            (Some(Outcome::Dispatched), None) if self.rolling_out => {
                format!("rolling out to {} host(s)", self.hosts)
            }
            (None, _) => "no record".to_string(),
            (Some(Outcome::Dispatched), None) => format!("dispatched to {} host(s)", self.hosts),
            (Some(Outcome::Rejected), _) => "rejected".to_string(),
            (Some(Outcome::NoTargets), _) => "no targets".to_string(),
            (Some(Outcome::SkippedStale), _) => "skipped (stale)".to_string(),
            (Some(o), _) => o.as_str().replace('_', " "),
        };
        let offline = self.fleet_hosts.len() - targets;
        if offline > 0 {
            text.push_str(&format!(", {offline} offline (not sent)"));
        }
        if let Some(r) = self.reason.as_deref().filter(|r| !r.is_empty()) {
            text.push_str(&format!(": {}", short(r, 60)));
        }
        if self.newest_dispatched {
            text.push_str(" [newest dispatched]");
        }
        text
    }
}

/// One row of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionRow {
    /// The S3 version and its listing facts.
    #[serde(flatten)]
    pub entry: VersionEntry,
    /// Decoded metadata (uploads by bundle-and-upload).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMetadata>,
    /// Why the metadata could not be decoded, when it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata_error: Option<String>,
    /// What the deployer did.
    pub deploy: DeploySummary,
}

/// `versions` for one app/env.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionsReport {
    /// App name.
    pub app: String,
    /// Environment name.
    pub env: String,
    /// Bucket.
    pub bucket: String,
    /// Release key.
    pub key: String,
    /// Newest first.
    pub versions: Vec<VersionRow>,
    /// Entries older than the shown ones (cut by `--limit`).
    pub omitted: usize,
}

/// Facts gathered for the shown entries.
#[derive(Debug, Default)]
pub struct Facts {
    /// Metadata per version id (uploads only).
    pub metadata: HashMap<String, Result<ObjectMetadata, String>>,
    /// Deploy records per version id.
    pub records: HashMap<String, DeployRecord>,
    /// The newest-dispatched pointer.
    pub pointer: Option<LatestPointer>,
}

/// Builds the rows (pure): history order, metadata, record outcome, pointer mark.
pub fn rows(history: &[VersionEntry], facts: &Facts) -> Vec<VersionRow> {
    history
        .iter()
        .map(|entry| {
            let (metadata, metadata_error) = match facts.metadata.get(&entry.version_id) {
                Some(Ok(m)) => (Some(m.clone()), None),
                Some(Err(e)) => (None, Some(e.clone())),
                None => (None, None),
            };
            let record = facts.records.get(&entry.version_id);
            let deploy = DeploySummary {
                outcome: record.map(|r| r.outcome),
                reason: record.and_then(|r| r.reason.clone()),
                hosts: record
                    .map(|r| r.commands.iter().map(|c| c.instance_ids.len()).sum())
                    .unwrap_or(0),
                command_ids: record
                    .map(|r| r.command_ids().into_iter().map(str::to_string).collect())
                    .unwrap_or_default(),
                newest_dispatched: facts
                    .pointer
                    .as_ref()
                    .is_some_and(|p| p.version_id == entry.version_id),
                fleet: record
                    .and_then(|r| r.fleet.as_ref())
                    .and_then(|f| f.outcome),
                fleet_hosts: record
                    .and_then(|r| r.fleet.as_ref())
                    .map(|f| f.hosts.clone())
                    .unwrap_or_default(),
                rolling_out: record
                    .and_then(|r| r.fleet.as_ref())
                    .is_some_and(|f| f.outcome.is_none()),
            };
            VersionRow {
                entry: entry.clone(),
                metadata,
                metadata_error,
                deploy,
            }
        })
        .collect()
}

impl VersionsReport {
    /// The human table.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{}/{}  s3://{}/{}\n",
            self.app, self.env, self.bucket, self.key
        );
        if self.versions.is_empty() {
            out.push_str("  no versions yet: upload one with `bundle-and-upload`\n");
            return out;
        }
        let mut t = Table::new([
            "", "VERSION", "UPLOADED", "BRANCH", "COMMIT", "UPLOADER", "DEPLOY",
        ]);
        for row in &self.versions {
            let mark = if row.entry.is_latest { "*" } else { "" };
            if row.entry.delete_marker {
                t.row([
                    mark,
                    &row.entry.version_id,
                    &row.entry.modified,
                    "(delete marker)",
                    "",
                    "",
                    "",
                ]);
                continue;
            }
            let (branch, commit, uploader) = match (&row.metadata, &row.metadata_error) {
                (Some(m), _) => {
                    let mut commit = crate::short_commit(&m.commit).to_string();
                    if m.dirty {
                        commit.push_str("+dirty");
                    }
                    let mut branch = short(&m.branch, 32);
                    if let Some(from) = &m.restored_from {
                        branch.push_str(&format!(" (restored from {})", short(from, 16)));
                    }
                    if let Some(from) = &m.promoted_from {
                        branch.push_str(&format!(
                            " (promoted from {} {})",
                            from.env,
                            short(&from.version_id, 16)
                        ));
                    }
                    (branch, commit, short(&m.uploader, 24))
                }
                (None, Some(e)) => (
                    format!("(invalid metadata: {})", short(e, 40)),
                    String::new(),
                    String::new(),
                ),
                (None, None) => (String::new(), String::new(), String::new()),
            };
            t.row([
                mark.to_string(),
                row.entry.version_id.clone(),
                row.entry.modified.clone(),
                branch,
                commit,
                uploader,
                row.deploy.cell(),
            ]);
        }
        out.push_str(&t.render());
        if self.omitted > 0 {
            out.push_str(&format!(
                "  … {} older version(s) not shown (raise --limit)\n",
                self.omitted
            ));
        }
        out.push_str("  * = current version of the key\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropship_contract::key::ReleaseKey;
    use dropship_contract::metadata::Source;
    use dropship_contract::record::{CommandBatch, EventFacts, Trigger};

    fn entry(id: &str, ms: i64, latest: bool, marker: bool) -> VersionEntry {
        VersionEntry {
            version_id: id.into(),
            modified: format!("t{ms}"),
            modified_ms: ms,
            is_latest: latest,
            delete_marker: marker,
            size: (!marker).then_some(10),
        }
    }

    #[test]
    fn history_merges_versions_and_markers_newest_first() {
        let versions = vec![
            entry("v3", 30, false, false),
            entry("v2", 20, false, false),
            entry("v1", 10, false, false),
        ];
        let markers = vec![entry("m2", 40, true, true), entry("m1", 20, false, true)];
        let ids: Vec<String> = merge_history(versions, markers)
            .into_iter()
            .map(|e| e.version_id)
            .collect();
        assert_eq!(ids, ["m2", "v3", "v2", "m1", "v1"]);
        // Same millisecond: the current entry first.
        let ids: Vec<String> = merge_history(
            vec![entry("v1", 5, false, false)],
            vec![entry("m1", 5, true, true)],
        )
        .into_iter()
        .map(|e| e.version_id)
        .collect();
        assert_eq!(ids, ["m1", "v1"]);
    }

    fn meta(commit: char, branch: &str) -> ObjectMetadata {
        ObjectMetadata {
            app: "shop".into(),
            env: "prod".into(),
            branch: branch.into(),
            commit: commit.to_string().repeat(40),
            dirty: false,
            sha256: "0".repeat(64),
            created: "2026-11-23T09:00:00Z".into(),
            uploader: "dev@example.com".into(),
            source: Source::Local,
            message: "m".into(),
            restored_from: None,
            promoted_from: None,
        }
    }

    fn record(version: &str, outcome: Outcome, hosts: &[&str]) -> DeployRecord {
        DeployRecord {
            reason: (outcome == Outcome::Rejected).then(|| "tar entry ../x escapes".to_string()),
            targets: hosts.iter().map(|s| s.to_string()).collect(),
            commands: if hosts.is_empty() {
                vec![]
            } else {
                vec![CommandBatch {
                    command_id: format!("cmd-{version}"),
                    instance_ids: hosts.iter().map(|s| s.to_string()).collect(),
                    purpose: Default::default(),
                }]
            },
            attempts: 1,
            ..DeployRecord::new(
                "b",
                &ReleaseKey::new("shop", "prod").unwrap(),
                version,
                outcome,
                EventFacts::new(Trigger::Event),
                "2026-11-23T09:00:01Z",
            )
        }
    }

    #[test]
    fn rows_join_metadata_records_and_the_pointer() {
        let history = vec![
            entry("v4", 40, true, false),
            entry("m1", 35, false, true),
            entry("v3", 30, false, false),
            entry("v2", 20, false, false),
            entry("v1", 10, false, false),
        ];
        let mut restored = meta('a', "main");
        restored.restored_from = Some("v1".into());
        let mut facts = Facts::default();
        facts.metadata.insert("v4".into(), Ok(restored));
        let mut promoted = meta('c', "feature/x");
        promoted.promoted_from = Some(dropship_contract::metadata::PromotedFrom {
            env: "staging".into(),
            version_id: "s7".into(),
        });
        facts.metadata.insert("v3".into(), Ok(promoted));
        facts.metadata.insert(
            "v2".into(),
            Err("metadata field \"sha256\" is missing".into()),
        );
        facts.metadata.insert("v1".into(), Ok(meta('a', "main")));
        facts
            .records
            .insert("v3".into(), record("v3", Outcome::Rejected, &[]));
        facts.records.insert(
            "v1".into(),
            record("v1", Outcome::Dispatched, &["i-1", "i-2"]),
        );
        facts.pointer = Some(LatestPointer::new(
            &ReleaseKey::new("shop", "prod").unwrap(),
            "v1",
            "00AA",
            None,
            "2026-11-23T09:00:02Z",
        ));
        let rows = rows(&history, &facts);
        assert_eq!(rows.len(), 5);
        assert_eq!(rows[0].deploy.outcome, None);
        assert_eq!(rows[0].deploy.cell(), "no record");
        assert_eq!(rows[2].deploy.outcome, Some(Outcome::Rejected));
        assert!(rows[2].deploy.cell().contains("escapes"));
        assert_eq!(rows[4].deploy.hosts, 2);
        assert_eq!(rows[4].deploy.command_ids, ["cmd-v1"]);
        assert!(rows[4].deploy.newest_dispatched);
        assert!(!rows[0].deploy.newest_dispatched);

        let report = VersionsReport {
            app: "shop".into(),
            env: "prod".into(),
            bucket: "b".into(),
            key: "releases/shop/prod.tar.gz".into(),
            versions: rows,
            omitted: 3,
        };
        let text = report.render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains("VERSION") && lines[1].contains("DEPLOY"),
            "{text}"
        );
        assert!(
            lines[2].starts_with('*') && lines[2].contains("restored from v1"),
            "{text}"
        );
        assert!(lines[3].contains("(delete marker)"), "{text}");
        assert!(
            lines[4].contains("feature/x (promoted from staging s7)")
                && lines[4].contains(&"c".repeat(12))
                && lines[4].contains("rejected"),
            "{text}"
        );
        assert!(lines[5].contains("invalid metadata"), "{text}");
        assert!(
            lines[6].contains("dispatched to 2 host(s) [newest dispatched]"),
            "{text}"
        );
        assert!(text.contains("3 older version(s) not shown"), "{text}");

        let json = serde_json::to_value(&report).unwrap();
        let v1 = &json["versions"][4];
        assert_eq!(v1["version_id"], "v1");
        assert_eq!(v1["metadata"]["commit"], "a".repeat(40));
        assert_eq!(v1["deploy"]["outcome"], "dispatched");
        assert_eq!(json["versions"][1]["delete_marker"], true);
        assert_eq!(json["versions"][0]["metadata"]["restored_from"], "v1");
    }

    #[test]
    fn the_deploy_cell_tells_the_fleet_outcome_with_per_host_counts() {
        let host = |id: &str, outcome: HostState, rollback: Option<HostState>| HostSummary {
            instance_id: id.into(),
            outcome,
            exit_code: None,
            rollback,
        };
        let summary = |fleet, hosts: Vec<HostSummary>| DeploySummary {
            outcome: Some(Outcome::Dispatched),
            reason: None,
            hosts: 4,
            command_ids: vec![],
            newest_dispatched: false,
            fleet,
            fleet_hosts: hosts,
            rolling_out: false,
        };
        let rolled = summary(
            Some(FleetOutcome::RolledBack),
            vec![
                host("i-1", HostState::Success, Some(HostState::Success)),
                host("i-2", HostState::Success, Some(HostState::Success)),
                host("i-3", HostState::RolledBack, None),
                host("i-4", HostState::NotSent, None),
            ],
        );
        assert_eq!(
            rolled.cell(),
            "rolled back (fleet): 2 success, 1 rolled_back, 1 not_sent; 2 sent back"
        );
        let deployed = summary(
            Some(FleetOutcome::Deployed),
            vec![
                host("i-1", HostState::Success, None),
                host("i-2", HostState::Offline, None),
            ],
        );
        assert_eq!(deployed.cell(), "deployed on 1/1, 1 offline (not sent)");
        let mixed = summary(
            Some(FleetOutcome::PartiallyDeployed),
            vec![
                host("i-1", HostState::Success, None),
                host("i-2", HostState::Failed, None),
                host("i-3", HostState::NotSent, None),
            ],
        );
        assert!(
            mixed.cell().starts_with("partially deployed: 1/3 run it;"),
            "{}",
            mixed.cell()
        );
        let rolling = DeploySummary {
            rolling_out: true,
            ..summary(None, vec![])
        };
        assert_eq!(rolling.cell(), "rolling out to 4 host(s)");
    }
}
