//! Which app/environment in which bucket a command works on: `dropship.toml` at the
//! repository root (or `--config`), then `DROPSHIP_*` variables, then flags; outside a
//! repository the flags alone are enough.

use std::path::{Path, PathBuf};
use std::process::Command;

use dropship_contract::config::{Config, ConfigFile, Overrides, CONFIG_FILE};
use dropship_contract::key::ReleaseKey;

use crate::cli::TargetArgs;

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

/// The targets a command reads, and the region they are in.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// One per environment asked for (several with `--all-envs`).
    pub targets: Vec<Target>,
    /// `region` from the file or the flag; `None` leaves it to the SDK.
    pub region: Option<String>,
    /// The config file read (or that would have been), for messages.
    pub config_path: PathBuf,
    /// `log_group` from the file (`logs` lets its flag and variable win).
    pub log_group: Option<String>,
    /// `lambda_log_group` from the file (`logs` lets its flag and variable win).
    pub lambda_log_group: Option<String>,
    /// `rule` from the file (`doctor` lets its flag and variable win).
    pub rule: Option<String>,
}

impl Resolved {
    /// The one target of a command that reads a single app/env.
    pub fn single(self) -> (Target, Option<String>) {
        let region = self.region;
        let target = self
            .targets
            .into_iter()
            .next()
            .expect("resolution yields at least one target");
        (target, region)
    }
}

/// The top of the git repository containing `start`, when there is one.
pub fn repository_root(start: &Path) -> Option<PathBuf> {
    let out = Command::new("git")
        .arg("-C")
        .arg(start)
        .args(["rev-parse", "--show-toplevel"])
        .output()
        .ok()?;
    let root = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !root.trim().is_empty()).then(|| PathBuf::from(root.trim()))
}

/// Resolves the targets of a command; with `all_envs`, one per environment the file lists.
pub fn resolve(args: &TargetArgs, all_envs: bool) -> anyhow::Result<Resolved> {
    let explicit = args.config.is_some();
    let path = match &args.config {
        Some(p) => p.clone(),
        None => repository_root(&args.repo)
            .unwrap_or_else(|| args.repo.clone())
            .join(CONFIG_FILE),
    };
    let file = if explicit || path.is_file() {
        ConfigFile::load(&path)?
    } else {
        ConfigFile::default()
    };
    let listed = file.environments.clone();
    let mut overrides = Overrides {
        app: args.app.clone(),
        bucket: args.bucket.clone(),
        region: args.region.clone(),
        env: args.env.clone(),
        max_file_bytes: None,
    };
    if all_envs && overrides.env.is_none() && file.default_env.is_none() {
        overrides.env = listed.first().cloned();
    }
    let config = Config::resolve(&path, file, overrides)?;
    let bucket = config.require_bucket("--bucket")?;
    let envs: Vec<String> = if all_envs && !listed.is_empty() {
        listed
    } else {
        vec![config.key.env().to_string()]
    };
    let targets = envs
        .iter()
        .map(|env| {
            Ok(Target {
                bucket: bucket.clone(),
                release: ReleaseKey::new(config.key.app(), env)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Resolved {
        targets,
        region: config.region.clone(),
        config_path: config.path.clone(),
        log_group: config.log_group.clone(),
        lambda_log_group: config.lambda_log_group.clone(),
        rule: config.rule.clone(),
    })
}
