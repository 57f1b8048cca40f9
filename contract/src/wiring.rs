//! How dropship's AWS parts find each other, where more than one component must agree: the
//! instance tags that make a host a target, the CloudWatch Logs names of the hosts' command
//! output, and the names of the EventBridge rule and log group settings. The deployer uses
//! them to send, the operator's `logs` and `doctor` to read and check.

/// Default tag key naming an instance's app (the deployer's `DROPSHIP_APP_TAG_KEY`).
pub const DEFAULT_APP_TAG_KEY: &str = "dropship:app";
/// Default tag key naming an instance's environment (the deployer's `DROPSHIP_ENV_TAG_KEY`).
pub const DEFAULT_ENV_TAG_KEY: &str = "dropship:env";
/// SSM document every deploy command runs.
pub const COMMAND_DOCUMENT: &str = "AWS-RunShellScript";
/// Suffix of the release rule's name in `infra/` (`<name_prefix>-release-uploaded`).
pub const RELEASE_RULE_SUFFIX: &str = "-release-uploaded";

/// The deployer's variable listing the buckets whose uploads it acts on.
pub const ALLOWED_BUCKETS_VAR: &str = "DROPSHIP_ALLOWED_BUCKETS";
/// The deployer's variable listing the apps it acts on (empty: any).
pub const ALLOWED_APPS_VAR: &str = "DROPSHIP_ALLOWED_APPS";
/// The deployer's variable listing the environments it acts on (empty: any).
pub const ALLOWED_ENVIRONMENTS_VAR: &str = "DROPSHIP_ALLOWED_ENVIRONMENTS";
/// The deployer's variable naming the hosts' command-output log group.
pub const LOG_GROUP_VAR: &str = "DROPSHIP_LOG_GROUP";

/// The entries of one of the deployer's comma-separated list variables, trimmed, empty ones
/// dropped: how the deployer reads them and how `doctor` checks them.
pub fn list_value(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Which of a command's two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl OutputStream {
    /// Both, in the order they are shown.
    pub const BOTH: [OutputStream; 2] = [OutputStream::Stdout, OutputStream::Stderr];

    /// The stream name's last part.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// The log stream SSM writes one host's output of one command to when the command has a
/// `CloudWatchOutputConfig`: `<command-id>/<instance-id>/aws-runShellScript/<stdout|stderr>`
/// (the plugin name of `AWS-RunShellScript`'s one step).
pub fn command_log_stream(command_id: &str, instance_id: &str, which: OutputStream) -> String {
    format!(
        "{command_id}/{instance_id}/aws-runShellScript/{}",
        which.as_str()
    )
}

/// True for a valid CloudWatch Logs group name: 1–512 of letters, digits, `_ - / . #`.
pub fn is_log_group_name(name: &str) -> bool {
    (1..=512).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-/.#".contains(&b))
}

/// True for a valid EventBridge rule name: 1–64 of letters, digits, `. - _`.
pub fn is_rule_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_the_ones_ssm_writes() {
        assert_eq!(
            command_log_stream("c-1", "i-2", OutputStream::Stdout),
            "c-1/i-2/aws-runShellScript/stdout"
        );
        assert_eq!(
            command_log_stream("c-1", "i-2", OutputStream::Stderr),
            "c-1/i-2/aws-runShellScript/stderr"
        );
    }

    #[test]
    fn names_are_checked_like_aws_checks_them() {
        assert!(is_log_group_name("/dropship/shop/commands"));
        assert!(is_log_group_name("a#b_c.d-e"));
        for bad in ["", "has space", "quote'", &"g".repeat(513)] {
            assert!(!is_log_group_name(bad), "{bad:?}");
        }
        assert!(is_rule_name("dropship-release-uploaded"));
        for bad in ["", "a/b", "x y", &"r".repeat(65)] {
            assert!(!is_rule_name(bad), "{bad:?}");
        }
    }
}
