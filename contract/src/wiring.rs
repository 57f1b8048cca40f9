//! How dropship's AWS parts find each other, where more than one component must agree: the
//! instance tags that make a host a target, the CloudWatch Logs names of the hosts' command
//! output, and the names of the EventBridge rule and log group settings. The deployer uses
//! them to send, the operator's `logs` and `doctor` to read and check.

/// Default tag key naming an instance's app (the deployer's `DROPSHIP_APP_TAG_KEY`).
pub const DEFAULT_APP_TAG_KEY: &str = "dropship:app";
/// Default tag key naming an instance's environment (the deployer's `DROPSHIP_ENV_TAG_KEY`).
pub const DEFAULT_ENV_TAG_KEY: &str = "dropship:env";
/// The deployer's variable naming the SSM document every command it sends runs: the
/// installation's own Command document (`infra/`'s `aws_ssm_document.deploy`, content in
/// `infra/documents/deploy-command.json`), never the AWS-owned `AWS-RunShellScript`, so the
/// EventBridge rules can match dropship's commands and nothing else in the account.
pub const COMMAND_DOCUMENT_VAR: &str = "DROPSHIP_COMMAND_DOCUMENT";
/// Prefix of the name `infra/` gives each command document: `<name_prefix>-deploy-<class>`
/// (one per environment class, so each class's host results reach only its own function).
pub const COMMAND_DOCUMENT_INFIX: &str = "-deploy-";
/// The one step (`mainSteps[0].name`, action `aws:runShellScript`) of the command document:
/// SSM reports it as each invocation's plugin (`PluginName`) and names the output's log
/// streams after it ([`command_log_stream`]).
pub const COMMAND_STEP: &str = "deploy";
/// The command document's parameters, as the deployer sends them: the rendered host command
/// (`commands`, a StringList) and the script's `executionTimeout` (seconds, a String).
pub const COMMAND_PARAMETERS: [&str; 2] = ["commands", "executionTimeout"];
/// Part of the release rules' names in `infra/` (`<name_prefix>-release-uploaded-<class>`, one per
/// environment class).
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
/// `CloudWatchOutputConfig`: `<command-id>/<instance-id>/<step>/<stdout|stderr>`, the step
/// being the command document's one step, [`COMMAND_STEP`].
pub fn command_log_stream(command_id: &str, instance_id: &str, which: OutputStream) -> String {
    format!(
        "{command_id}/{instance_id}/{COMMAND_STEP}/{}",
        which.as_str()
    )
}

/// True for a name the deployer may send commands with: an SSM document name (3–128 of
/// letters, digits, `_ - .`) that is not AWS-owned (`AWS-`, `Amazon`, `aws` prefixes are
/// reserved for AWS's documents, and a rule matching one would match every such command in
/// the account).
pub fn is_own_document_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    (3..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        && !lower.starts_with("aws")
        && !lower.starts_with("amazon")
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
            "c-1/i-2/deploy/stdout"
        );
        assert_eq!(
            command_log_stream("c-1", "i-2", OutputStream::Stderr),
            "c-1/i-2/deploy/stderr"
        );
    }

    #[test]
    fn only_an_installations_own_document_is_a_command_document() {
        for good in ["dropship-deploy-production", "acme.deploy_1", "abc"] {
            assert!(is_own_document_name(good), "{good}");
        }
        for bad in [
            "AWS-RunShellScript",
            "aws-anything",
            "AmazonInspector-x",
            "ab",
            "has space",
            "a/b",
            &"d".repeat(129),
        ] {
            assert!(!is_own_document_name(bad), "{bad:?}");
        }
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
