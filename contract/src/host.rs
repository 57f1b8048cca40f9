//! The host script's interface: the variables the Lambda exports for it, the exit codes it
//! returns, and the result line it prints last. `scripts/deploy-on-host.sh` documents the same
//! table; the host-script suite checks the two agree.

use serde::{Deserialize, Serialize};

/// Every input of `deploy-on-host.sh`, in the order the Lambda renders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostVar {
    Action,
    App,
    Env,
    AppRoot,
    Bucket,
    Key,
    VersionId,
    Sequencer,
    Sha256,
    BundleUrl,
    BundleBytes,
    UnpackedBytes,
    Commit,
    ComposeFile,
    Profiles,
    HealthUrl,
    HealthTimeout,
    SharedPaths,
    KeepReleases,
    RequiredEnv,
    PreSwitchHook,
    RollbackTo,
    ExpectVersionId,
    LockTimeout,
}

impl HostVar {
    /// All inputs, for rendering and for checking the script's documented table.
    pub const ALL: [HostVar; 24] = [
        HostVar::Action,
        HostVar::App,
        HostVar::Env,
        HostVar::AppRoot,
        HostVar::Bucket,
        HostVar::Key,
        HostVar::VersionId,
        HostVar::Sequencer,
        HostVar::Sha256,
        HostVar::BundleUrl,
        HostVar::BundleBytes,
        HostVar::UnpackedBytes,
        HostVar::Commit,
        HostVar::ComposeFile,
        HostVar::Profiles,
        HostVar::HealthUrl,
        HostVar::HealthTimeout,
        HostVar::SharedPaths,
        HostVar::KeepReleases,
        HostVar::RequiredEnv,
        HostVar::PreSwitchHook,
        HostVar::RollbackTo,
        HostVar::ExpectVersionId,
        HostVar::LockTimeout,
    ];

    /// The environment variable name.
    pub fn name(self) -> &'static str {
        match self {
            HostVar::Action => "DROPSHIP_ACTION",
            HostVar::App => "DROPSHIP_APP",
            HostVar::Env => "DROPSHIP_ENV",
            HostVar::AppRoot => "DROPSHIP_APP_ROOT",
            HostVar::Bucket => "DROPSHIP_BUCKET",
            HostVar::Key => "DROPSHIP_KEY",
            HostVar::VersionId => "DROPSHIP_VERSION_ID",
            HostVar::Sequencer => "DROPSHIP_SEQUENCER",
            HostVar::Sha256 => "DROPSHIP_SHA256",
            HostVar::BundleUrl => "DROPSHIP_BUNDLE_URL",
            HostVar::BundleBytes => "DROPSHIP_BUNDLE_BYTES",
            HostVar::UnpackedBytes => "DROPSHIP_UNPACKED_BYTES",
            HostVar::Commit => "DROPSHIP_COMMIT",
            HostVar::ComposeFile => "DROPSHIP_COMPOSE_FILE",
            HostVar::Profiles => "DROPSHIP_PROFILES",
            HostVar::HealthUrl => "DROPSHIP_HEALTH_URL",
            HostVar::HealthTimeout => "DROPSHIP_HEALTH_TIMEOUT",
            HostVar::SharedPaths => "DROPSHIP_SHARED_PATHS",
            HostVar::KeepReleases => "DROPSHIP_KEEP_RELEASES",
            HostVar::RequiredEnv => "DROPSHIP_REQUIRED_ENV",
            HostVar::PreSwitchHook => "DROPSHIP_PRE_SWITCH_HOOK",
            HostVar::RollbackTo => "DROPSHIP_ROLLBACK_TO",
            HostVar::ExpectVersionId => "DROPSHIP_EXPECT_VERSION_ID",
            HostVar::LockTimeout => "DROPSHIP_LOCK_TIMEOUT",
        }
    }
}

/// Separator of list-valued inputs (profiles, shared paths, required variables).
pub const LIST_SEPARATOR: char = ',';

/// The script's exit codes; distinct so SSM's per-host status says what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ExitCode {
    /// Deployed, no-op, stale, or a requested rollback done.
    Ok = 0,
    BadInput = 2,
    LockTimeout = 3,
    PreflightFailed = 4,
    DownloadFailed = 5,
    UnpackFailed = 6,
    ConfigInvalid = 7,
    HookFailed = 8,
    RolledBack = 9,
    RollbackFailed = 10,
}

impl ExitCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ExitCode; 10] = [
        ExitCode::Ok,
        ExitCode::BadInput,
        ExitCode::LockTimeout,
        ExitCode::PreflightFailed,
        ExitCode::DownloadFailed,
        ExitCode::UnpackFailed,
        ExitCode::ConfigInvalid,
        ExitCode::HookFailed,
        ExitCode::RolledBack,
        ExitCode::RollbackFailed,
    ];

    /// The numeric process exit code.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// Maps a process exit code back; `None` for codes the script never returns.
    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// One line for operators.
    pub fn describe(self) -> &'static str {
        match self {
            ExitCode::Ok => "deployed, already current, stale (skipped) or rollback done",
            ExitCode::BadInput => "bad input: nothing was touched",
            ExitCode::LockTimeout => "another deploy held the host lock too long",
            ExitCode::PreflightFailed => "preflight failed (disk space or docker compose missing)",
            ExitCode::DownloadFailed => "download or SHA-256 verification failed",
            ExitCode::UnpackFailed => "unpacking the bundle failed",
            ExitCode::ConfigInvalid => "compose file or .env invalid",
            ExitCode::HookFailed => "pre-switch hook failed",
            ExitCode::RolledBack => "new release failed compose up or health; previous release restored",
            ExitCode::RollbackFailed => {
                "rollback also failed, or the script was stopped: the host needs an operator or a rerun"
            }
        }
    }
}

/// Prefix of the script's last output line.
pub const RESULT_PREFIX: &str = "DROPSHIP_RESULT ";

/// What the host reports in its result line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostOutcome {
    Deployed,
    Noop,
    Stale,
    RolledBack,
    Failed,
    RollbackFailed,
    Status,
    /// Printed before a step after which only a complete run leaves the host verified (the
    /// switch). It stays the last result line only when the run was killed there (SSM's
    /// timeout or cancel is SIGKILL to the whole process group): the next run restores the
    /// committed release first. Exit code 10.
    Interrupted,
    /// `rollback` with `DROPSHIP_EXPECT_VERSION_ID`: the host's committed version is another
    /// one (it moved on, or never got it), so nothing was done. Exit code 0.
    Superseded,
}

/// The JSON after [`RESULT_PREFIX`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostResult {
    pub outcome: HostOutcome,
    #[serde(default)]
    pub release: String,
    #[serde(default)]
    pub previous: String,
    #[serde(default)]
    pub version_id: String,
    #[serde(default)]
    pub commit: String,
    pub exit_code: i32,
    #[serde(default)]
    pub message: String,
}

impl HostResult {
    /// Finds the last result line in a script's output.
    pub fn from_output(output: &str) -> Option<Self> {
        output
            .lines()
            .rev()
            .find_map(|line| line.strip_prefix(RESULT_PREFIX))
            .and_then(|json| serde_json::from_str(json).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_distinct_and_round_trip() {
        let mut codes: Vec<i32> = ExitCode::ALL.iter().map(|c| c.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), ExitCode::ALL.len());
        for c in ExitCode::ALL {
            assert_eq!(ExitCode::from_code(c.code()), Some(c));
        }
        assert_eq!(ExitCode::from_code(1), None);
    }

    #[test]
    fn variable_names_are_unique_and_prefixed() {
        let mut names: Vec<&str> = HostVar::ALL.iter().map(|v| v.name()).collect();
        assert!(names.iter().all(|n| n.starts_with("DROPSHIP_")));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), HostVar::ALL.len());
    }

    #[test]
    fn reads_the_last_result_line() {
        let out = "step lock\nDROPSHIP_RESULT {\"outcome\":\"noop\",\"exit_code\":0}\nnoise\nDROPSHIP_RESULT {\"outcome\":\"rolled_back\",\"release\":\"r2\",\"exit_code\":9}\n";
        let r = HostResult::from_output(out).unwrap();
        assert_eq!(r.outcome, HostOutcome::RolledBack);
        assert_eq!(r.release, "r2");
        assert_eq!(r.exit_code, 9);
        assert!(HostResult::from_output("nothing").is_none());
    }
}
