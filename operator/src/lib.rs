//! `dropship`, the operator's command: what was deployed where (`releases`), what happened
//! on every host (`status`), each host's full output (`logs`), putting an older release back
//! (`rollback`), copying a release that deployed everywhere to the next environment
//! (`promote`), writing a first `dropship.toml` (`init`), whether the AWS side is wired
//! (`doctor`), and following a deploy to its per-host result (used by `bundle-and-upload
//! --wait` too).
//!
//! Functional core, thin shell: [`history`], [`status`], [`logs`], [`rollback`], [`promote`],
//! [`init`], [`doctor`] and [`wait`] turn facts (object versions, metadata, deploy records,
//! SSM invocations, log streams, the bucket/rule/instance wiring, the repository's files)
//! into tables, outcomes and decisions; [`facts`] and [`doctor_facts`] are the AWS edges that
//! fetch those facts, and [`facts`] makes the one write (`CopyObject` for a rollback or a
//! promotion); [`commands`] puts the two together for the binaries and [`cli`] holds their
//! arguments. [`exit`] is the one exit-code table of both binaries, [`table`] renders
//! aligned text.

pub mod aws_calls;
pub mod cli;
pub mod commands;
pub mod doctor;
pub mod doctor_facts;
pub mod exit;
pub mod facts;
pub mod history;
pub mod init;
pub mod logs;
pub mod promote;
pub mod rollback;
pub mod status;
pub mod table;
pub mod target;
pub mod wait;

use dropship_aws::AwsError;
use dropship_contract::record::RecordError;

pub use target::Target;

/// The version of both binaries with the commit they were built from (`build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DROPSHIP_BUILD_COMMIT"),
    ")"
);

/// Why an operator command could not do what was asked; every message names the object,
/// the cause and what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// An AWS call failed (bucket missing, access denied, throttled, network, …).
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The key has no object versions at all.
    #[error("{url} has no versions yet: upload one with `bundle-and-upload` first (or check --app/--env/--bucket)")]
    NoVersions {
        /// `s3://bucket/key`.
        url: String,
    },
    /// The version id is not one of the key's versions.
    #[error("version {version_id:?} of {url} does not exist: list the versions with `dropship releases` and pass one of those ids; nothing was written")]
    UnknownVersion {
        /// `s3://bucket/key`.
        url: String,
        /// The id asked for.
        version_id: String,
    },
    /// The version id names a delete marker, which has no bytes to restore.
    #[error("version {version_id:?} of {url} is a delete marker, not a release: it has no bytes to restore; pick an upload from `dropship releases`; nothing was written")]
    DeleteMarker {
        /// `s3://bucket/key`.
        url: String,
        /// The id asked for.
        version_id: String,
    },
    /// The version's metadata does not follow the contract, so the deployer would refuse it.
    #[error("version {version_id:?} of {url} has no valid dropship metadata ({cause}): the deployer would reject it; restore a version uploaded by bundle-and-upload; nothing was written")]
    InvalidMetadata {
        /// `s3://bucket/key`.
        url: String,
        /// The version read.
        version_id: String,
        /// What is wrong.
        cause: String,
    },
    /// A deploy record exists but cannot be read.
    #[error("deploy record s3://{bucket}/{key} cannot be read: {cause}; if it was written by a newer deployer, upgrade dropship")]
    BadRecord {
        /// Bucket.
        bucket: String,
        /// Record key.
        key: String,
        /// Parse error.
        cause: RecordError,
    },
    /// The operator did not confirm a restore.
    #[error(
        "rollback to version {version_id:?} of {url} was not confirmed: {why}; nothing was written"
    )]
    NotConfirmed {
        /// `s3://bucket/key`.
        url: String,
        /// The version to restore.
        version_id: String,
        /// Why (not a terminal, or answered no).
        why: String,
    },
    /// `promote`: the source version did not deploy on every host of its environment.
    #[error("version {version_id:?} of {url} is `{verdict}` in its environment, not `succeeded` (deployed on every host), so it is not promoted to {to_env}; see `dropship status {version_id}`, promote a version that succeeded (--version), or pass --force to promote it anyway; nothing was written")]
    NotPromotable {
        /// `s3://bucket/key` of the source.
        url: String,
        /// The source version.
        version_id: String,
        /// Its verdict.
        verdict: &'static str,
        /// The target environment.
        to_env: String,
    },
    /// `promote`: the source version was uploaded from a developer's machine or a dirty tree.
    #[error("version {version_id:?} of {url} {why}, so it is not promoted to {to_env}: promote a version CI built from a commit (--version), or pass --force to promote it anyway; nothing was written")]
    UntrustedSource {
        /// `s3://bucket/key` of the source.
        url: String,
        /// The source version.
        version_id: String,
        /// What makes it untrusted.
        why: String,
        /// The target environment.
        to_env: String,
    },
    /// `promote` without `--version` and without a confirmation.
    #[error("promoting version {version_id:?} of {url} (its current version) to {to_env} was not confirmed: {why}; nothing was written")]
    PromoteNotConfirmed {
        /// `s3://bucket/key` of the source.
        url: String,
        /// The version that would have been copied.
        version_id: String,
        /// The target environment.
        to_env: String,
        /// Why (no terminal, or answered no).
        why: String,
    },
    /// `promote` was given one environment twice.
    #[error("cannot promote environment {env:?} to itself: name two different environments (`dropship promote <from-env> <to-env>`); to redeploy a version of one environment use `dropship rollback`; nothing was written")]
    SameEnvironment {
        /// The environment named twice.
        env: String,
    },
    /// `init` found a `dropship.toml` already.
    #[error("{} already exists: nothing was changed; edit it (README, `dropship.toml` reference), or move it away and run `dropship init` again", path.display())]
    ConfigExists {
        /// The existing file.
        path: std::path::PathBuf,
    },
    /// The deployer has not written a record for the version: nothing was sent yet.
    #[error("version {version_id:?} of {url} has no deploy record yet: the deployer has not processed it (see `dropship status {version_id}`); wait, or follow it with `dropship logs {version_id} --follow`")]
    NoRecord {
        /// `s3://bucket/key`.
        url: String,
        /// The version asked for.
        version_id: String,
    },
    /// The command-output log group does not exist.
    #[error("CloudWatch Logs group {group} does not exist: the Lambda's DROPSHIP_LOG_GROUP is not set or the hosts' profile cannot write logs; check the group name (--log-group, DROPSHIP_LOG_GROUP, `log_group` in dropship.toml) against the Lambda's DROPSHIP_LOG_GROUP (infra/ output command_output_log_group)")]
    LogGroupMissing {
        /// The group asked for.
        group: String,
    },
    /// `--host` names an instance the deploy sent nothing to.
    #[error("the deploy of version {version_id:?} sent nothing to {host}: it went to {}; pass one of those to --host", if hosts.is_empty() { "no host".to_string() } else { hosts.join(", ") })]
    HostNotInDeploy {
        /// The version.
        version_id: String,
        /// The instance asked for.
        host: String,
        /// The instances it was sent to.
        hosts: Vec<String>,
    },
}

impl OpsError {
    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            OpsError::Aws(e) => e.is_transient(),
            _ => false,
        }
    }

    /// True when the request itself was wrong (unknown version, not confirmed, …), as opposed
    /// to AWS refusing or failing.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            OpsError::NoVersions { .. }
                | OpsError::UnknownVersion { .. }
                | OpsError::DeleteMarker { .. }
                | OpsError::InvalidMetadata { .. }
                | OpsError::NotConfirmed { .. }
                | OpsError::NoRecord { .. }
                | OpsError::HostNotInDeploy { .. }
                | OpsError::NotPromotable { .. }
                | OpsError::UntrustedSource { .. }
                | OpsError::PromoteNotConfirmed { .. }
                | OpsError::SameEnvironment { .. }
                | OpsError::ConfigExists { .. }
        )
    }
}

/// Text for the operator's terminal: every control character except newline and tab (ESC,
/// CSI, BEL, carriage return, backspace, DEL, the C1 controls) is shown as a visible escape
/// (`\x1b`, `\u{9b}`), so host output, commit messages, branch names and anything else an
/// uploader or a host declared cannot move the cursor, rewrite lines, set the window title or
/// hide text. `--json` output is escaped by the JSON encoder instead.
pub fn terminal_safe(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {
                let n = c as u32;
                if n < 0x80 {
                    out.push_str(&format!("\\x{n:02x}"));
                } else {
                    out.push_str(&format!("\\u{{{n:x}}}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// [`terminal_safe`] for one table cell or line: newlines and tabs are escaped too.
pub fn terminal_safe_line(text: &str) -> String {
    terminal_safe(text)
        .replace('\n', "\\n")
        .replace('\t', "\\t")
}

/// First `n` characters, for table columns (full values stay in `--json`).
pub fn short(value: &str, n: usize) -> String {
    if value.chars().count() <= n {
        value.to_string()
    } else {
        let mut out: String = value.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// A commit id abbreviated like git does (first 12 hex digits, no ellipsis).
pub fn short_commit(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_from_uploaders_and_hosts_never_reach_the_terminal_raw() {
        let hostile = "fix\x1b]0;owned\x07 \x1b[2J\x1b[1A\rok\u{9b}31m\x08\x7f";
        let safe = terminal_safe(hostile);
        assert!(!safe.chars().any(|c| c.is_control()), "{safe:?}");
        assert_eq!(
            safe,
            "fix\\x1b]0;owned\\x07 \\x1b[2J\\x1b[1A\\x0dok\\u{9b}31m\\x08\\x7f"
        );
        assert_eq!(
            terminal_safe("line one\n\tindented é"),
            "line one\n\tindented é"
        );
        assert_eq!(terminal_safe_line("a\nb\tc"), "a\\nb\\tc");
        // Tables escape every cell (a cell is one line).
        let mut t = table::Table::new(["COMMIT", "MESSAGE"]);
        t.row(["abc", "ship it\x1b[8m hidden\nsecond line"]);
        let out = t.render();
        assert!(!out.contains('\x1b'), "{out:?}");
        assert_eq!(out.lines().count(), 2, "{out:?}");
    }

    #[test]
    fn short_truncates_on_characters_and_marks_it() {
        assert_eq!(short("abc", 5), "abc");
        assert_eq!(short("abcdef", 4), "abc…");
        assert_eq!(short("ééééé", 3), "éé…");
        assert_eq!(short_commit(&"a".repeat(40)), "a".repeat(12));
        assert_eq!(short_commit("abc"), "abc");
    }

    #[test]
    fn usage_errors_are_told_apart_from_aws_failures() {
        let unknown = OpsError::UnknownVersion {
            url: "s3://b/releases/a/e.tar.gz".into(),
            version_id: "v1".into(),
        };
        assert!(unknown.is_usage() && !unknown.is_transient());
        let msg = unknown.to_string();
        assert!(
            msg.contains("\"v1\"")
                && msg.contains("s3://b/releases/a/e.tar.gz")
                && msg.contains("versions"),
            "{msg}"
        );
        let net = OpsError::Aws(dropship_aws::AwsError::new(
            &aws_calls::GET_COMMAND_INVOCATION,
            "command c-1",
            dropship_aws::Failure::Network,
            "timeout".into(),
        ));
        assert!(net.is_transient() && !net.is_usage());
    }
}
