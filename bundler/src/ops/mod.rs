//! Operator commands: `versions`, `status`, `restore` and `--wait`.
//!
//! Functional core, thin shell: [`versions`], [`status`], [`restore`] and [`wait`] turn facts
//! (object versions, metadata, deploy records, SSM invocations) into tables, outcomes and
//! decisions with pure functions; [`aws`] holds the few small clients that fetch those facts
//! and make the one write (`CopyObject` for a restore). [`table`] renders aligned text.

pub mod aws;
pub mod restore;
pub mod status;
pub mod table;
pub mod versions;
pub mod wait;

use dropship_contract::key::ReleaseKey;
use dropship_contract::record::RecordError;

use crate::s3::S3Error;

/// One app/environment in one bucket: the unit every operator command works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Artifact bucket.
    pub bucket: String,
    /// App and environment (hence the release key and the records prefix).
    pub release: ReleaseKey,
}

impl Target {
    /// The release object key, `releases/<app>/<env>.tar.gz`.
    pub fn key(&self) -> String {
        self.release.object_key()
    }

    /// `s3://bucket/key`, for messages.
    pub fn url(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key())
    }
}

/// An SSM failure, classified so the CLI can say what to do.
#[derive(Debug, thiserror::Error)]
pub enum SsmError {
    /// The credentials lack the SSM read permission.
    #[error("access denied for {action} on command {command_id}: attach the uploader policy from infra/ (it grants ssm:GetCommandInvocation) to these credentials ({detail})")]
    AccessDenied {
        /// The SSM operation.
        action: &'static str,
        /// The command being read.
        command_id: String,
        /// SDK error text.
        detail: String,
    },
    /// No credentials could be loaded.
    #[error("no AWS credentials found for {action}: set AWS_PROFILE (or --profile), or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY ({detail})")]
    NoCredentials {
        /// The SSM operation.
        action: &'static str,
        /// SDK error text.
        detail: String,
    },
    /// The request never got an answer.
    #[error("network failure during {action}: {detail}; check connectivity and AWS_REGION/AWS_ENDPOINT_URL, then retry")]
    Network {
        /// The SSM operation.
        action: &'static str,
        /// SDK error text.
        detail: String,
    },
    /// Anything else SSM answered.
    #[error("{action} on command {command_id} failed: {detail}")]
    Other {
        /// The SSM operation.
        action: &'static str,
        /// The command being read.
        command_id: String,
        /// SDK error text.
        detail: String,
    },
}

/// Why an operator command could not do what was asked; every message names the object,
/// the cause and what to do.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// S3 refused or failed (bucket missing, access denied, network, …).
    #[error(transparent)]
    S3(#[from] S3Error),
    /// SSM refused or failed.
    #[error(transparent)]
    Ssm(#[from] SsmError),
    /// The key has no object versions at all.
    #[error("{url} has no versions yet: upload one with `bundle-and-upload` first (or check --app/--env/--bucket)")]
    NoVersions {
        /// `s3://bucket/key`.
        url: String,
    },
    /// The version id is not one of the key's versions.
    #[error("version {version_id:?} of {url} does not exist: list the versions with `bundle-and-upload versions` and pass one of those ids; nothing was written")]
    UnknownVersion {
        /// `s3://bucket/key`.
        url: String,
        /// The id asked for.
        version_id: String,
    },
    /// The version id names a delete marker, which has no bytes to restore.
    #[error("version {version_id:?} of {url} is a delete marker, not a release: it has no bytes to restore; pick an upload from `bundle-and-upload versions`; nothing was written")]
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
    #[error("deploy record s3://{bucket}/{key} cannot be read: {cause}; if it was written by a newer deployer, upgrade bundle-and-upload")]
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
        "restore of version {version_id:?} of {url} was not confirmed: {why}; nothing was written"
    )]
    NotConfirmed {
        /// `s3://bucket/key`.
        url: String,
        /// The version to restore.
        version_id: String,
        /// Why (not a terminal, or answered no).
        why: String,
    },
}

impl OpsError {
    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            OpsError::S3(e) => e.is_transient(),
            OpsError::Ssm(SsmError::Network { .. }) => true,
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
        )
    }
}

/// Formats an S3 timestamp as RFC 3339 UTC (seconds), or empty when missing.
pub fn rfc3339(t: Option<&aws_smithy_types::DateTime>) -> String {
    t.and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok())
        .unwrap_or_default()
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
        let net = OpsError::Ssm(SsmError::Network {
            action: "GetCommandInvocation",
            detail: "timeout".into(),
        });
        assert!(net.is_transient() && !net.is_usage());
    }
}
