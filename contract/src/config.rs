//! `dropship.toml`: the repository's deploy configuration, read by both command-line tools
//! (`bundle-and-upload` to bundle and upload, `dropship` to find the app/env it reports on).
//! Flags and `DROPSHIP_*` variables (handled by the CLI layer) override the file; the result
//! is validated once, here.

use std::path::{Path, PathBuf};

use crate::key::{validate_name, ReleaseKey};
use std::collections::BTreeMap;

use crate::manifest::{settings_for, DeployOverrides, DeploySettings};
use crate::wiring::{is_log_group_name, is_rule_name};
use serde::Deserialize;

/// Name of the config file at the repository root.
pub const CONFIG_FILE: &str = "dropship.toml";
/// Default per-file size limit: larger files belong in an image or object storage, not a bundle.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 100 * 1024 * 1024;

/// A config problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}; create it (see README, `dropship.toml` reference) or pass --config")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
    #[error("no {what} given: set `{key}` in {path}, {env_var}, or pass {flag}")]
    MissingValue {
        what: &'static str,
        key: &'static str,
        env_var: &'static str,
        flag: &'static str,
        path: PathBuf,
    },
}

/// The file as written; every key optional so flags can fill gaps.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub app: Option<String>,
    pub bucket: Option<String>,
    pub region: Option<String>,
    #[serde(default)]
    pub environments: Vec<String>,
    pub default_env: Option<String>,
    #[serde(default)]
    pub excludes: Vec<String>,
    /// Glob patterns of files that look like secrets but that the project vouches for (test
    /// fixtures, public certificates): bundled without an `--allow-secret` each.
    #[serde(default)]
    pub allow_secrets: Vec<String>,
    pub max_file_bytes: Option<u64>,
    #[serde(default)]
    pub deploy: DeploySettings,
    /// Per-environment sections, `[env.<name>]`; each environment must be listed in
    /// `environments`.
    #[serde(default)]
    pub env: BTreeMap<String, EnvSection>,
    /// CloudWatch Logs group of the hosts' command output (the deployer's
    /// `DROPSHIP_LOG_GROUP`), read by `dropship logs`.
    pub log_group: Option<String>,
    /// CloudWatch Logs group of the deployer Lambda itself (infra output `lambda_log_groups`: the environment class's),
    /// from which `dropship logs` adds the Lambda's lines about the deploy.
    pub lambda_log_group: Option<String>,
    /// Name of the EventBridge rule that sends this bucket's uploads to the deployer, checked
    /// by `dropship doctor` (default: found by its event pattern).
    pub rule: Option<String>,
}

/// `[env.<name>]`: what one environment changes. Only deploy settings so far
/// (`[env.<name>.deploy]`, any `[deploy]` key); the section leaves room for more.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvSection {
    #[serde(default)]
    pub deploy: DeployOverrides,
}

/// Values from flags or `DROPSHIP_*` variables that win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub app: Option<String>,
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub env: Option<String>,
    pub max_file_bytes: Option<u64>,
}

/// The resolved, validated configuration for one run.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub key: ReleaseKey,
    /// `None` only when bundling to a file without uploading.
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub excludes: Vec<String>,
    /// `allow_secrets`, validated.
    pub allow_secrets: Vec<String>,
    pub max_file_bytes: u64,
    /// The base deploy settings (`[deploy]`).
    pub deploy: DeploySettings,
    /// Each environment's changes to `deploy` (`[env.<name>.deploy]`), non-empty ones only;
    /// every environment's result was validated.
    pub deploy_overrides: BTreeMap<String, DeployOverrides>,
    /// `log_group`, validated.
    pub log_group: Option<String>,
    /// `lambda_log_group`, validated.
    pub lambda_log_group: Option<String>,
    /// `rule`, validated.
    pub rule: Option<String>,
}

impl ConfigFile {
    /// Reads and parses the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses text read from `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim().replace('\n', " "),
        })
    }
}

impl Config {
    /// The bucket, or the error naming every way to set it (`flag` names the flag, with any
    /// alternative the command offers).
    pub fn require_bucket(&self, flag: &'static str) -> Result<String, ConfigError> {
        self.bucket
            .clone()
            .ok_or_else(|| ConfigError::MissingValue {
                what: "bucket",
                key: "bucket",
                env_var: "DROPSHIP_BUCKET",
                flag,
                path: self.path.clone(),
            })
    }

    /// Merges file and overrides and validates the result.
    pub fn resolve(path: &Path, file: ConfigFile, over: Overrides) -> Result<Self, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        let deploy_overrides = environment_overrides(&file, &invalid)?;
        let app = over
            .app
            .or(file.app)
            .ok_or_else(|| ConfigError::MissingValue {
                what: "app name",
                key: "app",
                env_var: "DROPSHIP_APP",
                flag: "--app",
                path: path.to_path_buf(),
            })?;
        validate_name("app", &app).map_err(|e| invalid("app", e.to_string()))?;
        for env in &file.environments {
            validate_name("environment", env)
                .map_err(|e| invalid("environments", e.to_string()))?;
        }
        let env = over
            .env
            .or(file.default_env.clone())
            .or_else(|| (file.environments.len() == 1).then(|| file.environments[0].clone()))
            .ok_or_else(|| ConfigError::MissingValue {
                what: "environment",
                key: "default_env",
                env_var: "DROPSHIP_ENV",
                flag: "--env",
                path: path.to_path_buf(),
            })?;
        if !file.environments.is_empty() && !file.environments.contains(&env) {
            return Err(invalid(
                "environments",
                format!(
                    "environment {env:?} is not listed (listed: {}); add it or pick one of those",
                    file.environments.join(", ")
                ),
            ));
        }
        let key =
            ReleaseKey::new(&app, &env).map_err(|e| invalid("environments", e.to_string()))?;
        let bucket = over.bucket.or(file.bucket);
        if let Some(b) = &bucket {
            let ok = (3..=63).contains(&b.len())
                && b.bytes().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.'
                });
            if !ok {
                return Err(invalid(
                    "bucket",
                    format!("{b:?} is not a valid S3 bucket name: use 3 to 63 lowercase letters, digits, - and ."),
                ));
            }
        }
        let max_file_bytes = over
            .max_file_bytes
            .or(file.max_file_bytes)
            .unwrap_or(DEFAULT_MAX_FILE_BYTES);
        if max_file_bytes == 0 {
            return Err(invalid("max_file_bytes", "must be greater than 0".into()));
        }
        for (key, patterns, example) in [
            ("excludes", &file.excludes, "docs/**"),
            (
                "allow_secrets",
                &file.allow_secrets,
                "tests/fixtures/**/*.pem",
            ),
        ] {
            for pattern in patterns {
                if pattern.is_empty() || pattern.starts_with('/') || pattern.contains("..") {
                    return Err(invalid(
                        key,
                        format!(
                            "{pattern:?}: use repository-relative glob patterns like \"{example}\""
                        ),
                    ));
                }
            }
        }
        file.deploy
            .validate()
            .map_err(|e| invalid("deploy", e.to_string()))?;
        if let Some(group) = file.log_group.as_deref().filter(|g| !is_log_group_name(g)) {
            return Err(invalid(
                "log_group",
                format!("{group:?} is not a CloudWatch Logs group name: use 1 to 512 letters, digits and _ - / . # (the deployer's DROPSHIP_LOG_GROUP)"),
            ));
        }
        if let Some(group) = file
            .lambda_log_group
            .as_deref()
            .filter(|g| !is_log_group_name(g))
        {
            return Err(invalid(
                "lambda_log_group",
                format!("{group:?} is not a CloudWatch Logs group name: use 1 to 512 letters, digits and _ - / . # (infra output lambda_log_groups, e.g. /aws/lambda/dropship-deployer-production)"),
            ));
        }
        if let Some(rule) = file.rule.as_deref().filter(|r| !is_rule_name(r)) {
            return Err(invalid(
                "rule",
                format!("{rule:?} is not an EventBridge rule name: use 1 to 64 letters, digits and . - _"),
            ));
        }
        Ok(Self {
            path: path.to_path_buf(),
            key,
            bucket,
            region: over.region.or(file.region),
            excludes: file.excludes,
            allow_secrets: file.allow_secrets,
            max_file_bytes,
            deploy: file.deploy,
            deploy_overrides,
            log_group: file.log_group,
            lambda_log_group: file.lambda_log_group,
            rule: file.rule,
        })
    }
}

/// The `[env.<name>.deploy]` overrides of `file`, checked: each names an environment
/// `environments` lists, and each environment's effective settings are valid.
fn environment_overrides(
    file: &ConfigFile,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<BTreeMap<String, DeployOverrides>, ConfigError> {
    let mut out = BTreeMap::new();
    for (name, section) in &file.env {
        if !file.environments.contains(name) {
            let listed = if file.environments.is_empty() {
                "`environments` is not set".to_string()
            } else {
                format!("`environments` lists {}", file.environments.join(", "))
            };
            return Err(invalid(
                "env",
                format!("[env.{name}] names environment {name:?}, but {listed}: fix the section's name or add {name:?} to `environments`"),
            ));
        }
        settings_for(
            &file.deploy,
            &BTreeMap::from([(name.clone(), section.deploy.clone())]),
            name,
        )
        .map_err(|e| invalid("env", format!("[env.{name}.deploy]: {e}")))?;
        if section.deploy != DeployOverrides::default() {
            out.insert(name.clone(), section.deploy.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(text: &str, over: Overrides) -> Result<Config, ConfigError> {
        let path = Path::new("dropship.toml");
        Config::resolve(path, ConfigFile::parse(path, text)?, over)
    }

    #[test]
    fn file_values_are_used_and_overrides_win() {
        let text = "app = \"shop\"\nbucket = \"artifacts\"\nenvironments = [\"staging\", \"prod\"]\ndefault_env = \"staging\"\n[deploy]\nhealth_url = \"http://127.0.0.1:8080/health\"\n";
        let c = resolve(text, Overrides::default()).unwrap();
        assert_eq!(c.key.object_key(), "releases/shop/staging.tar.gz");
        assert_eq!(c.bucket.as_deref(), Some("artifacts"));
        assert_eq!(
            c.deploy.health_url.as_deref(),
            Some("http://127.0.0.1:8080/health")
        );
        let c = resolve(
            text,
            Overrides {
                env: Some("prod".into()),
                bucket: Some("other".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.key.env(), "prod");
        assert_eq!(c.bucket.as_deref(), Some("other"));
    }

    #[test]
    fn unknown_keys_name_the_file_and_key() {
        let err = resolve("app = \"shop\"\nbuckett = \"x\"\n", Overrides::default()).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("dropship.toml") && msg.contains("buckett"),
            "{msg}"
        );
        let err = resolve(
            "app = \"shop\"\n[deploy]\ncompose = \"x\"\n",
            Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("compose"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let cases = [
            ("app = \"Shop\"\ndefault_env = \"a\"\n", "`app`"),
            (
                "app = \"shop\"\nenvironments = [\"a\"]\ndefault_env = \"b\"\n",
                "`environments`",
            ),
            (
                "app = \"shop\"\ndefault_env = \"a\"\nbucket = \"UP\"\n",
                "`bucket`",
            ),
            (
                "app = \"shop\"\ndefault_env = \"a\"\nexcludes = [\"../x\"]\n",
                "`excludes`",
            ),
            (
                "app = \"shop\"\ndefault_env = \"a\"\nallow_secrets = [\"/etc/*.pem\"]\n",
                "`allow_secrets`",
            ),
            (
                "app = \"shop\"\ndefault_env = \"a\"\n[deploy]\nkeep_releases = 1\n",
                "keep_releases",
            ),
            (
                "app = \"shop\"\ndefault_env = \"a\"\nmax_file_bytes = 0\n",
                "`max_file_bytes`",
            ),
        ];
        for (text, needle) in cases {
            let msg = resolve(text, Overrides::default()).unwrap_err().to_string();
            assert!(
                msg.contains(needle) && msg.contains("dropship.toml"),
                "{msg} lacks {needle}"
            );
        }
    }

    #[test]
    fn required_env_takes_plain_names_and_rule_tables() {
        use crate::manifest::EnvRule;
        let text = "app = \"shop\"\ndefault_env = \"a\"\n[deploy]\nrequired_env = [\"DATABASE_URL\", { name = \"SECRET_KEY\", min_length = 32 }, { name = \"MODE\", pattern = \"dev|prod\" }, { name = \"REGION\", non_empty = true }]\n";
        let c = resolve(text, Overrides::default()).unwrap();
        assert_eq!(
            c.deploy.required_env,
            vec![
                EnvRule::named("DATABASE_URL"),
                EnvRule {
                    min_length: 32,
                    ..EnvRule::named("SECRET_KEY")
                },
                EnvRule {
                    pattern: Some("dev|prod".into()),
                    ..EnvRule::named("MODE")
                },
                EnvRule {
                    min_length: 1,
                    ..EnvRule::named("REGION")
                },
            ]
        );
        for (rule, needle) in [
            ("{ name = \"A\", pattern = \"(\" }", "pattern"),
            ("{ name = \"A\", min_len = 3 }", "min_len"),
            ("{ name = \"A B\" }", "required_env"),
        ] {
            let text =
                format!("app = \"shop\"\ndefault_env = \"a\"\n[deploy]\nrequired_env = [{rule}]\n");
            let msg = resolve(&text, Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains(needle) && msg.contains("dropship.toml"),
                "{msg}"
            );
        }
    }

    #[test]
    fn missing_env_says_how_to_set_it() {
        let msg = resolve(
            "app = \"shop\"\nenvironments = [\"a\", \"b\"]\n",
            Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            msg.contains("--env") && msg.contains("DROPSHIP_ENV"),
            "{msg}"
        );
        let single = resolve(
            "app = \"shop\"\nenvironments = [\"only\"]\n",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(single.key.env(), "only");
    }

    #[test]
    fn log_group_and_rule_are_read_and_checked() {
        let c = resolve(
            "app = \"shop\"\ndefault_env = \"prod\"\nlog_group = \"/dropship/shop/commands\"\nlambda_log_group = \"/aws/lambda/dropship-deployer\"\nrule = \"dropship-release-uploaded\"\n",
            Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.log_group.as_deref(), Some("/dropship/shop/commands"));
        assert_eq!(c.rule.as_deref(), Some("dropship-release-uploaded"));
        assert_eq!(
            c.lambda_log_group.as_deref(),
            Some("/aws/lambda/dropship-deployer")
        );
        for (text, key) in [
            ("log_group = \"has space\"\n", "log_group"),
            ("lambda_log_group = \"\"\n", "lambda_log_group"),
            ("rule = \"a/b\"\n", "rule"),
        ] {
            let text = format!("app = \"shop\"\ndefault_env = \"prod\"\n{text}");
            let msg = resolve(&text, Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains(&format!("key `{key}`")) && msg.contains("dropship.toml"),
                "{msg}"
            );
        }
    }

    #[test]
    fn environment_overrides_are_read_checked_and_kept_per_environment() {
        let text = "app = \"shop\"\nenvironments = [\"staging\", \"production\"]\ndefault_env = \"staging\"\n[deploy]\nprofiles = [\"web\"]\n[env.production.deploy]\nprofiles = [\"web\", \"prod\"]\nkeep_releases = 10\n[env.staging.deploy]\n";
        let c = resolve(text, Overrides::default()).unwrap();
        assert_eq!(c.deploy.profiles, ["web"]);
        // The empty staging section is no override at all.
        assert_eq!(
            c.deploy_overrides.keys().collect::<Vec<_>>(),
            ["production"]
        );
        let prod = settings_for(&c.deploy, &c.deploy_overrides, "production").unwrap();
        assert_eq!((prod.profiles.len(), prod.keep_releases), (2, 10));
        // The same overrides whichever environment is being bundled.
        let p = resolve(
            text,
            Overrides {
                env: Some("production".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.deploy_overrides, c.deploy_overrides);
    }

    #[test]
    fn overrides_of_unlisted_environments_or_with_bad_values_are_refused() {
        for (text, needles) in [
            (
                "app = \"shop\"\nenvironments = [\"staging\", \"production\"]\ndefault_env = \"staging\"\n[env.prod.deploy]\nprofiles = [\"p\"]\n",
                &["[env.prod]", "\"prod\"", "staging, production", "add \"prod\" to `environments`"][..],
            ),
            (
                "app = \"shop\"\ndefault_env = \"staging\"\n[env.staging.deploy]\nprofiles = [\"p\"]\n",
                &["`environments` is not set"][..],
            ),
            (
                "app = \"shop\"\nenvironments = [\"staging\"]\n[env.staging.deploy]\nkeep_releases = 1\n",
                &["[env.staging.deploy]", "keep_releases"][..],
            ),
            (
                "app = \"shop\"\nenvironments = [\"staging\"]\n[env.staging.deploy]\nprofile = [\"x\"]\n",
                &["profile"][..],
            ),
            (
                "app = \"shop\"\nenvironments = [\"staging\"]\n[env.staging]\nbucket = \"x\"\n",
                &["bucket"][..],
            ),
        ] {
            let msg = resolve(text, Overrides::default()).unwrap_err().to_string();
            for needle in needles {
                assert!(msg.contains(needle) && msg.contains("dropship.toml"), "{msg} lacks {needle}");
            }
        }
    }
}
