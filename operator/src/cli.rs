//! The command-line arguments of `dropship`, shared with `bundle-and-upload` (its `--wait`
//! and the old spellings of the operator's commands), and the process setup both binaries
//! share: logging to stderr (no colour unless on a terminal and `NO_COLOR` is unset) and the
//! async runtime.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use dropship_contract::wiring;

use crate::wait::{self, WaitOptions};

/// Examples shown by `dropship --help`.
const EXAMPLES: &str = "\
Examples:
  dropship releases                      deploy history of the default environment
  dropship releases --all-envs --json    every environment dropship.toml lists, as JSON
  dropship status                        every host's result for the current version
  dropship status 3HL4kqtJlcpXroDT --env production
  dropship rollback 3HL4kqtJlcpXroDT --wait
                                         put that version back and follow it to every host
  dropship promote staging production --version 3HL4kqtJlcpXroDT
                                         that staging version, if it deployed everywhere
  dropship init                          a first dropship.toml from the compose file and .env.example
  dropship logs --follow                 every host's output of the current version, live
  dropship doctor --env production       is the AWS side wired so a deploy reaches every host?
  dropship completions bash > ~/.local/share/bash-completion/completions/dropship";

/// The operator's command: deploy history, per-host results and rollback for the apps
/// `bundle-and-upload` ships to EC2.
#[derive(Parser, Debug)]
#[command(
    name = "dropship",
    version = crate::VERSION,
    after_help = after_help(EXAMPLES),
    propagate_version = true
)]
pub struct Dropship {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `dropship`'s subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the deploy history of an app/env: every version of its key with time, branch,
    /// commit, uploader and what the deployer did with it.
    #[command(visible_alias = "versions", after_help = after_help(
        "Examples:\n  dropship releases\n  dropship releases --limit 5 --env production\n  dropship releases --all-envs --json"
    ))]
    Releases(ReleasesArgs),
    /// Show what one version did on every host (default: the key's current version).
    #[command(after_help = after_help(
        "Examples:\n  dropship status\n  dropship status 3HL4kqtJlcpXroDT --json"
    ))]
    Status(StatusArgs),
    /// Roll back to an older version: copy it on top of the key (metadata kept, plus
    /// `restored-from`), so the deployer deploys it again as a new version.
    #[command(visible_alias = "restore", after_help = after_help(
        "Examples:\n  dropship rollback 3HL4kqtJlcpXroDT          asks for confirmation on a terminal\n  dropship rollback 3HL4kqtJlcpXroDT --yes --wait --json"
    ))]
    Rollback(RollbackArgs),
    /// Promote a release from one environment to the next: copy the exact source version
    /// onto the target environment's key (server side, same bytes; metadata records where it
    /// came from), so the deployer verifies and deploys it there. Only a version that deployed
    /// on every host of the source environment, unless --force.
    // `--version` names the source version here, not dropship's own version.
    #[command(disable_version_flag = true, after_help = after_help(
        "Examples:\n  dropship promote staging production --version 3HL4kqtJlcpXroDT --wait\n  dropship promote staging production              shows staging's current version and asks (terminal only)\n  dropship promote staging production --version 3HL4kqtJlcpXroDT --force --json   even if it did not succeed in staging, or is a local or dirty upload\n\n--env and DROPSHIP_ENV do not apply: the two environments are the arguments."
    ))]
    Promote(PromoteArgs),
    /// Print every host's full output of one deploy (default: the key's current version)
    /// from CloudWatch Logs: each command the deploy sent (waves, fleet rollback, catch-up),
    /// host by host.
    #[command(after_help = after_help(
        "Examples:\n  dropship logs                                  the current version, every host\n  dropship logs 3HL4kqtJlcpXroDT --host i-0a1b2c3d4e5f67890\n  dropship logs --follow                         until the fleet settled and the output stopped\n  dropship logs --log-group /dropship/ssm-command-output --json\n\nThe log group is the deployer Lambda's DROPSHIP_LOG_GROUP: pass --log-group, set\nDROPSHIP_LOG_GROUP, or `log_group` in dropship.toml. The Lambda's own lines about the\ndeploy are added from its group (infra output lambda_log_group): --lambda-log-group,\nDROPSHIP_LAMBDA_LOG_GROUP or `lambda_log_group`."
    ))]
    Logs(LogsArgs),
    /// Check that the AWS side is wired so an upload reaches every host: credentials and
    /// region, bucket (versioning, EventBridge notifications), the release rule and its
    /// target, the deployer Lambda (active, acting on this bucket, app and environment),
    /// tagged instances running and online in SSM, and whether you may upload the release
    /// key (a conditional PutObject that writes nothing). Each fault comes with its fix.
    #[command(after_help = after_help(
        "Examples:\n  dropship doctor\n  dropship doctor --env production --rule dropship-release-uploaded-production\n  dropship doctor --json\n\nExit 0: an upload now would reach every running tagged host; 12: it would not."
    ))]
    Doctor(DoctorArgs),
    /// Write a first, commented dropship.toml at the repository root from what the repository
    /// holds (compose file, services with healthchecks, .env.example names), and print the
    /// next steps. Never overwrites an existing file.
    #[command(after_help = after_help(
        "Examples:\n  dropship init\n  dropship init --repo ../shop"
    ))]
    Init(InitArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Examples:\n  dropship completions bash > ~/.local/share/bash-completion/completions/dropship\n  dropship completions zsh > \"${fpath[1]}/_dropship\""
    )]
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// `text`, then the exit-code table.
pub fn after_help(text: &str) -> String {
    format!("{text}\n\n{}", crate::exit::Exit::help())
}

/// Which app/env and bucket an operator command reads (dropship.toml, then env, then flags).
#[derive(Args, Debug, Clone)]
pub struct TargetArgs {
    /// Repository whose dropship.toml to read (any directory inside it).
    #[arg(long, default_value = ".", env = "DROPSHIP_REPO")]
    pub repo: PathBuf,
    /// Config file (default: dropship.toml at the repository root, if there is one).
    #[arg(long, env = "DROPSHIP_CONFIG")]
    pub config: Option<PathBuf>,
    /// App name (overrides `app`).
    #[arg(long, env = "DROPSHIP_APP")]
    pub app: Option<String>,
    /// Environment (overrides `default_env`).
    #[arg(long, short, env = "DROPSHIP_ENV")]
    pub env: Option<String>,
    /// Artifact bucket (overrides `bucket`).
    #[arg(long, env = "DROPSHIP_BUCKET")]
    pub bucket: Option<String>,
    /// AWS region (overrides `region`).
    #[arg(long, env = "DROPSHIP_REGION")]
    pub region: Option<String>,
    /// AWS shared-config profile.
    #[arg(long, env = "DROPSHIP_AWS_PROFILE")]
    pub profile: Option<String>,
}

/// `--wait` and its settings (upload and rollback).
#[derive(Args, Debug, Clone)]
pub struct WaitArgs {
    /// Follow the deploy of the new version to a per-host result; the exit code reflects it.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait follows before giving up (seconds, or with s, m, h).
    #[arg(long, default_value = "15m", value_parser = wait::parse_duration, env = "DROPSHIP_WAIT_TIMEOUT")]
    pub wait_timeout: Duration,
    /// Pause between polls while waiting, in milliseconds.
    #[arg(long, default_value_t = 2000, env = "DROPSHIP_POLL_INTERVAL_MS")]
    pub poll_interval_ms: u64,
}

impl WaitArgs {
    /// The polling settings.
    pub fn options(&self) -> WaitOptions {
        WaitOptions {
            timeout: self.wait_timeout,
            poll: Duration::from_millis(self.poll_interval_ms.max(10)),
        }
    }
}

/// `releases`.
#[derive(Args, Debug, Clone)]
pub struct ReleasesArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Show this many newest versions.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// One table for every environment listed in dropship.toml.
    #[arg(long)]
    pub all_envs: bool,
    /// Print JSON (an array with one entry per app/env) instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// `status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Version id to report on (default: the key's current version).
    #[arg(value_name = "VERSION")]
    pub version_id: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `rollback`.
#[derive(Args, Debug, Clone)]
pub struct RollbackArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Version id to roll back to (see `releases`).
    #[arg(value_name = "VERSION")]
    pub version_id: String,
    /// Do not ask for confirmation (required when not on a terminal).
    #[arg(long, short)]
    pub yes: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `promote`.
#[derive(Args, Debug, Clone)]
pub struct PromoteArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Environment to promote from (its key's version is copied).
    #[arg(value_name = "FROM_ENV")]
    pub from_env: String,
    /// Environment to promote to (its key gets the copy).
    #[arg(value_name = "TO_ENV")]
    pub to_env: String,
    /// Source version id. Without it, the source key's current version is shown and must be
    /// confirmed on a terminal (refused off a terminal).
    #[arg(long, value_name = "VERSION")]
    pub version: Option<String>,
    /// Promote even if the version did not deploy on every host of the source environment, or
    /// was uploaded from a developer's machine or a dirty tree.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `init`.
#[derive(Args, Debug, Clone)]
pub struct InitArgs {
    /// Repository to write dropship.toml for (any directory inside it; outside a git
    /// repository, that directory).
    #[arg(long, default_value = ".", env = "DROPSHIP_REPO")]
    pub repo: PathBuf,
}

/// `logs`.
#[derive(Args, Debug, Clone)]
pub struct LogsArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Version id whose deploy to show (default: the key's current version).
    #[arg(value_name = "VERSION")]
    pub version_id: Option<String>,
    /// Only this instance's output.
    #[arg(long, value_name = "INSTANCE_ID")]
    pub host: Option<String>,
    /// Keep printing new output until the fleet settled and every stream stopped growing.
    #[arg(long, short)]
    pub follow: bool,
    /// How long --follow runs before giving up (seconds, or with s, m, h).
    #[arg(long, default_value = "15m", value_parser = wait::parse_duration)]
    pub timeout: Duration,
    /// Pause between polls with --follow, in milliseconds.
    #[arg(long, default_value_t = 2000, env = "DROPSHIP_POLL_INTERVAL_MS")]
    pub poll_interval_ms: u64,
    /// CloudWatch Logs group of the hosts' command output (overrides `log_group`).
    #[arg(long, env = "DROPSHIP_LOG_GROUP", value_parser = log_group_name)]
    pub log_group: Option<String>,
    /// CloudWatch Logs group of the deployer Lambda (infra output `lambda_log_groups`, the environment class's;
    /// overrides `lambda_log_group`): adds the Lambda's own lines about the deploy.
    #[arg(long, env = "DROPSHIP_LAMBDA_LOG_GROUP", value_parser = log_group_name)]
    pub lambda_log_group: Option<String>,
    /// Print JSON (with --follow: once, at the end) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `doctor`.
#[derive(Args, Debug, Clone)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// The release rule's name (overrides `rule`; default: the rule whose event pattern
    /// matches the bucket's "Object Created" events).
    #[arg(long, env = "DROPSHIP_RULE", value_parser = rule_name)]
    pub rule: Option<String>,
    /// Tag key naming an instance's app (the deployer's DROPSHIP_APP_TAG_KEY).
    #[arg(long, default_value = wiring::DEFAULT_APP_TAG_KEY, env = "DROPSHIP_APP_TAG_KEY")]
    pub app_tag_key: String,
    /// Tag key naming an instance's environment (the deployer's DROPSHIP_ENV_TAG_KEY).
    #[arg(long, default_value = wiring::DEFAULT_ENV_TAG_KEY, env = "DROPSHIP_ENV_TAG_KEY")]
    pub env_tag_key: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

fn log_group_name(text: &str) -> Result<String, String> {
    if wiring::is_log_group_name(text) {
        Ok(text.to_string())
    } else {
        Err("not a CloudWatch Logs group name: use 1 to 512 letters, digits and _ - / . #".into())
    }
}

fn rule_name(text: &str) -> Result<String, String> {
    if wiring::is_rule_name(text) {
        Ok(text.to_string())
    } else {
        Err("not an EventBridge rule name: use 1 to 64 letters, digits and . - _".into())
    }
}

/// Whether colour may be used on stderr: a terminal, and `NO_COLOR` unset or empty.
pub fn color_on_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Logs to stderr at `DROPSHIP_LOG` (default `warn`), coloured only where allowed.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(color_on_stderr())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DROPSHIP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
}

/// The multi-threaded runtime both binaries run their commands on.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
