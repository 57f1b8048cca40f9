//! The exit codes of both command-line tools (`bundle-and-upload` and `dropship`), in one
//! enum: `--help` renders its table from it, and a test holds the README's table to it.

use dropship_aws::AwsError;
use dropship_contract::config::ConfigError;

use crate::OpsError;

/// How a command ended, as its process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exit {
    /// Success; with `--wait`: deployed on every host.
    Success,
    /// An unexpected internal error.
    Internal,
    /// The request was wrong: usage, `dropship.toml`, an unknown version, no confirmation.
    Usage,
    /// Git cannot give a bundle: not a repository, no commits, uncommitted changes.
    GitState,
    /// The content was refused: secrets, unsafe symlinks, oversized files.
    ContentRefused,
    /// AWS refused, and a person must fix it.
    AwsRefused,
    /// A transient AWS failure: retrying may succeed.
    Transient,
    /// `--wait`: the deployer refused the version.
    DeployRefused,
    /// `--wait`: rolled back (the fleet is back on one version).
    RolledBack,
    /// `--wait`: failed before any host switched, or partially deployed.
    HostFailed,
    /// `--wait`: the rollback failed on at least one host.
    RollbackFailed,
    /// `--wait`: `--wait-timeout` passed first.
    WaitTimeout,
    /// `doctor`: a deploy would not reach every host.
    NotReady,
}

impl Exit {
    /// Every code, in order.
    pub const ALL: [Exit; 13] = [
        Exit::Success,
        Exit::Internal,
        Exit::Usage,
        Exit::GitState,
        Exit::ContentRefused,
        Exit::AwsRefused,
        Exit::Transient,
        Exit::DeployRefused,
        Exit::RolledBack,
        Exit::HostFailed,
        Exit::RollbackFailed,
        Exit::WaitTimeout,
        Exit::NotReady,
    ];

    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Internal => 1,
            Exit::Usage => 2,
            Exit::GitState => 3,
            Exit::ContentRefused => 4,
            Exit::AwsRefused => 5,
            Exit::Transient => 6,
            Exit::DeployRefused => 7,
            Exit::RolledBack => 8,
            Exit::HostFailed => 9,
            Exit::RollbackFailed => 10,
            Exit::WaitTimeout => 11,
            Exit::NotReady => 12,
        }
    }

    /// What the code means, as the README's table and `--help` say it.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Success => "success; with `--wait`: the fleet settled `deployed`: every online host ran it (the report names hosts where that was a no-op or a stale skip, and `offline` hosts that catch up later)",
            Exit::Internal => "unexpected internal error",
            Exit::Usage => "usage or `dropship.toml` invalid; unknown version id or delete marker; rollback not confirmed; `promote` of a version that did not deploy on every source host, or of a local or dirty upload (without `--force`), or without `--version` off a terminal (or not confirmed)",
            Exit::GitState => "git state: not a repository, no commits, or uncommitted changes",
            Exit::ContentRefused => "content refused: secrets, unsafe symlinks, oversized files",
            Exit::AwsRefused => "AWS refused: bucket missing, versioning off, access denied, no credentials",
            Exit::Transient => "transient AWS failure (throttling, a 5xx answer, network): retry; a failed upload or rollback wrote nothing (multipart uploads are aborted)",
            Exit::DeployRefused => "`--wait`: the deployer refused the version (rejected, no targets, stale): no host was touched",
            Exit::RolledBack => "`--wait`: rolled back: a host failed and every host that had switched is back on its previous release (the fleet runs one version)",
            Exit::HostFailed => "`--wait`: failed before any host switched (undeliverable, timed out, failed before switching), or `partially_deployed` (`on_failure = \"leave\"`)",
            Exit::RollbackFailed => "`--wait`: rollback failed on at least one host (its own or the fleet's): it needs an operator",
            Exit::WaitTimeout => "`--wait`: `--wait-timeout` passed first; follow with `dropship status <version>`; `logs --follow`: `--timeout` passed first",
            Exit::NotReady => "`doctor`: a deploy would not reach every host; each fault is named with its fix",
        }
    }

    /// The table for `--help` (plain text, no Markdown).
    pub fn help() -> String {
        let mut out = String::from("Exit codes:\n");
        for e in Exit::ALL {
            out.push_str(&format!(
                "  {:<3}{}\n",
                e.code(),
                e.meaning().replace('`', "")
            ));
        }
        out
    }

    /// The Markdown table the README carries (`| code | meaning |`).
    pub fn markdown_table() -> String {
        let mut out = String::from("| code | meaning |\n| --- | --- |\n");
        for e in Exit::ALL {
            out.push_str(&format!("| {} | {} |\n", e.code(), e.meaning()));
        }
        out
    }

    /// The code of a failed AWS call: transient failures say "retry", the rest "fix it".
    pub fn of_aws(err: &AwsError) -> Exit {
        if err.is_transient() {
            Exit::Transient
        } else {
            Exit::AwsRefused
        }
    }

    /// The code of a failed operator command.
    pub fn of_ops(err: &OpsError) -> Exit {
        match err {
            OpsError::Aws(e) => Exit::of_aws(e),
            e if e.is_usage() => Exit::Usage,
            _ => Exit::AwsRefused,
        }
    }

    /// The code for an error of the operator's side (AWS, operator, `dropship.toml`), found
    /// anywhere in its chain; `None` when none of those caused it.
    pub fn of_error(err: &anyhow::Error) -> Option<Exit> {
        err.chain().find_map(|cause| {
            if let Some(e) = cause.downcast_ref::<OpsError>() {
                Some(Exit::of_ops(e))
            } else if let Some(e) = cause.downcast_ref::<AwsError>() {
                Some(Exit::of_aws(e))
            } else if cause.downcast_ref::<ConfigError>().is_some() {
                Some(Exit::Usage)
            } else {
                None
            }
        })
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropship_aws::Failure;

    #[test]
    fn codes_are_distinct_and_in_order() {
        for (i, e) in Exit::ALL.iter().enumerate() {
            assert_eq!(usize::from(e.code()), i, "{e:?}");
        }
    }

    #[test]
    fn the_readme_table_is_the_enum() {
        let readme = include_str!("../../README.md");
        let table = Exit::markdown_table();
        assert!(
            readme.contains(&table),
            "README.md's exit-code table must be exactly:\n{table}"
        );
        let cli = include_str!("../../docs/operations-cli.md");
        assert!(
            cli.contains(&table),
            "docs/operations-cli.md's exit-code table must be exactly:\n{table}"
        );
    }

    #[test]
    fn help_lists_every_code_without_markdown() {
        let help = Exit::help();
        assert_eq!(help.lines().count(), 14);
        assert!(
            help.contains("  8  --wait: rolled back: a host failed"),
            "{help}"
        );
        assert!(
            help.contains("  11 --wait: --wait-timeout passed first"),
            "{help}"
        );
        assert!(!help.contains('`'));
    }

    #[test]
    fn aws_failures_map_to_retry_or_fix() {
        let call = crate::aws_calls::GET_RECORD;
        let err = |f| AwsError::new(&call, "s3://b/k", f, "x".into());
        assert_eq!(Exit::of_aws(&err(Failure::Throttled)), Exit::Transient);
        assert_eq!(Exit::of_aws(&err(Failure::ServiceFault)), Exit::Transient);
        assert_eq!(Exit::of_aws(&err(Failure::Network)), Exit::Transient);
        assert_eq!(Exit::of_aws(&err(Failure::AccessDenied)), Exit::AwsRefused);
        assert_eq!(Exit::of_aws(&err(Failure::NoCredentials)), Exit::AwsRefused);
        assert_eq!(Exit::of_aws(&err(Failure::NotFound)), Exit::AwsRefused);
        let wrapped = anyhow::Error::new(OpsError::Aws(err(Failure::Throttled)))
            .context("following the deploy failed");
        assert_eq!(Exit::of_error(&wrapped), Some(Exit::Transient));
        let usage = anyhow::Error::new(OpsError::NoVersions {
            url: "s3://b/k".into(),
        });
        assert_eq!(Exit::of_error(&usage), Some(Exit::Usage));
        assert_eq!(Exit::of_error(&anyhow::anyhow!("other")), None);
    }
}
