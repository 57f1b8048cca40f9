//! Lambda configuration from environment variables, read and validated once at cold start.
//!
//! The trust boundary lives here: which buckets are acted on, which instances a release
//! reaches (tag keys) and where it lands on disk (app root) come from this configuration,
//! set by `infra/`, never from the bundle. Where releases and deploy records live in the
//! bucket is not configuration: the contract fixes both prefixes (`dropship_contract::key`)
//! for every component (both CLIs, the Lambda, the Terraform policies and rule).

use dropship_contract::wiring::{
    is_own_document_name, list_value, ALLOWED_APPS_VAR, ALLOWED_BUCKETS_VAR,
    ALLOWED_ENVIRONMENTS_VAR, COMMAND_DOCUMENT_VAR, LOG_GROUP_VAR,
};
use thiserror::Error;

/// Every environment variable the Lambda reads; `infra/` sets exactly these (contract test).
pub const ENV_VARS: &[&str] = &[
    ALLOWED_BUCKETS_VAR,
    "DROPSHIP_APP_ROOT",
    "DROPSHIP_APP_TAG_KEY",
    "DROPSHIP_ENV_TAG_KEY",
    "DROPSHIP_MAX_CONCURRENCY",
    "DROPSHIP_MAX_ERRORS",
    "DROPSHIP_DELIVERY_TIMEOUT_SECS",
    "DROPSHIP_EXECUTION_TIMEOUT_SECS",
    LOG_GROUP_VAR,
    "DROPSHIP_MAX_BUNDLE_BYTES",
    "DROPSHIP_LOCK_TIMEOUT_SECS",
    "DROPSHIP_INSTANCE_PROFILE_ARN",
    COMMAND_DOCUMENT_VAR,
    ALLOWED_APPS_VAR,
    ALLOWED_ENVIRONMENTS_VAR,
];

/// Variables the Lambda also reads that `infra/` never sets: the runtime sets `AWS_REGION`,
/// and the SDK's own endpoint variables (`AWS_ENDPOINT_URL_S3`, else `AWS_ENDPOINT_URL`)
/// point a local run at an S3 emulator. Read here so hosts are told the S3 endpoint this
/// Lambda itself uses.
pub const RUNTIME_VARS: &[&str] = &[
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
];

/// Default instance tags naming the app and the environment a host belongs to (the contract's,
/// shared with the operator's `doctor`).
pub use dropship_contract::wiring::{DEFAULT_APP_TAG_KEY, DEFAULT_ENV_TAG_KEY};
/// Default app root on hosts; `{app}` and `{env}` are substituted.
pub const DEFAULT_APP_ROOT: &str = "/opt/dropship/{app}";
/// Default SSM `MaxConcurrency`: half the fleet at a time.
pub const DEFAULT_MAX_CONCURRENCY: &str = "50%";
/// Default SSM `MaxErrors`: stop the rollout at the first failed host.
pub const DEFAULT_MAX_ERRORS: &str = "0";
/// Default SSM `TimeoutSeconds` (time for the command to reach the hosts).
pub const DEFAULT_DELIVERY_TIMEOUT_SECS: u32 = 600;
/// Default `executionTimeout` of the host script.
pub const DEFAULT_EXECUTION_TIMEOUT_SECS: u32 = 1800;
/// Default largest object verified (2 GiB).
pub const DEFAULT_MAX_BUNDLE_BYTES: u64 = 2 << 30;
/// Default host lock wait passed to the script.
pub const DEFAULT_LOCK_TIMEOUT_SECS: u32 = 300;

/// Why the configuration is unusable; the Lambda refuses to start.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A required variable is unset or empty.
    #[error("{name} is not set: {hint}")]
    Missing {
        /// Variable name.
        name: &'static str,
        /// What to set it to.
        hint: &'static str,
    },
    /// A variable has a value that cannot be used.
    #[error("{name}={value:?} is invalid: {expected}")]
    Invalid {
        /// Variable name.
        name: &'static str,
        /// The value found.
        value: String,
        /// What is accepted.
        expected: String,
    },
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Buckets whose events are acted on.
    pub allowed_buckets: Vec<String>,
    /// App root template on hosts (`{app}`, `{env}` substituted).
    pub app_root: String,
    /// Instance tag key for the app.
    pub app_tag_key: String,
    /// Instance tag key for the environment.
    pub env_tag_key: String,
    /// SSM `MaxConcurrency`.
    pub max_concurrency: String,
    /// SSM `MaxErrors`.
    pub max_errors: String,
    /// SSM `TimeoutSeconds`.
    pub delivery_timeout_secs: u32,
    /// `executionTimeout` of the script.
    pub execution_timeout_secs: u32,
    /// CloudWatch log group for command output (none: output stays in SSM only).
    pub log_group: Option<String>,
    /// The region of the bucket and of this Lambda (`AWS_REGION`): hosts sign their
    /// download for it (`DROPSHIP_REGION`).
    pub region: String,
    /// The S3 endpoint this Lambda uses, handed to hosts as `DROPSHIP_S3_ENDPOINT`: the
    /// SDK's endpoint variable when set (a local emulator), else S3's regional endpoint.
    pub s3_endpoint: String,
    /// Largest object verified.
    pub max_bundle_bytes: u64,
    /// Host lock wait.
    pub lock_timeout_secs: u32,
    /// ARN template (`{app}`, `{env}` substituted) of the instance profile a target must
    /// carry besides its tags: tags can be set by anyone with `ec2:CreateTags`, attaching a
    /// profile needs `iam:PassRole`. Required: without it the Lambda refuses to start (fail
    /// closed; there is no tags-only mode). See [`Config::instance_profile_arn_for`].
    pub instance_profile_arn: String,
    /// The SSM Command document every command is sent with (`DROPSHIP_COMMAND_DOCUMENT`):
    /// the installation's own, which the host-result rule matches by name. Required: without
    /// it the Lambda refuses to start (there is no fallback to `AWS-RunShellScript`, whose
    /// status changes from every shell command in the account would reach the deployer).
    pub command_document: String,
    /// Apps whose events are acted on (`DROPSHIP_ALLOWED_APPS`, comma-separated); empty: any
    /// (local setups; `infra/` always sets it from `apps`).
    pub allowed_apps: Vec<String>,
    /// Environments whose events are acted on (`DROPSHIP_ALLOWED_ENVIRONMENTS`); empty: any.
    pub allowed_environments: Vec<String>,
}

impl Config {
    /// Read from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Read through `lookup` (tests pass a map); empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let invalid = |name: &'static str, value: &str, expected: &str| ConfigError::Invalid {
            name,
            value: value.to_owned(),
            expected: expected.to_owned(),
        };

        let buckets_raw = get(ALLOWED_BUCKETS_VAR).ok_or(ConfigError::Missing {
            name: ALLOWED_BUCKETS_VAR,
            hint: "set it to the comma-separated release bucket names",
        })?;
        let allowed_buckets = list_value(&buckets_raw);
        if allowed_buckets.is_empty() {
            return Err(invalid(
                ALLOWED_BUCKETS_VAR,
                &buckets_raw,
                "at least one bucket name",
            ));
        }
        if let Some(bad) = allowed_buckets.iter().find(|b| !is_bucket_name(b)) {
            return Err(invalid(
                ALLOWED_BUCKETS_VAR,
                bad,
                "S3 bucket names (3-63 characters of a-z, 0-9, '.', '-')",
            ));
        }

        let app_root = get("DROPSHIP_APP_ROOT").unwrap_or_else(|| DEFAULT_APP_ROOT.to_owned());
        let sample = app_root.replace("{app}", "a").replace("{env}", "e");
        let root_ok = sample.starts_with('/')
            && sample.len() > 1
            && !sample.contains("//")
            && sample.split('/').all(|s| s != ".." && s != ".")
            && sample
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b));
        if !root_ok {
            return Err(invalid(
                "DROPSHIP_APP_ROOT",
                &app_root,
                "an absolute path of letters, digits, / . _ - with optional {app} and {env}",
            ));
        }

        let tag = |name: &'static str, default: &str| -> Result<String, ConfigError> {
            let v = get(name).unwrap_or_else(|| default.to_owned());
            if v.len() <= 128 && !v.starts_with("aws:") {
                Ok(v)
            } else {
                Err(invalid(
                    name,
                    &v,
                    "an EC2 tag key (≤ 128 characters, not starting with aws:)",
                ))
            }
        };
        let app_tag_key = tag("DROPSHIP_APP_TAG_KEY", DEFAULT_APP_TAG_KEY)?;
        let env_tag_key = tag("DROPSHIP_ENV_TAG_KEY", DEFAULT_ENV_TAG_KEY)?;

        let max_concurrency =
            get("DROPSHIP_MAX_CONCURRENCY").unwrap_or_else(|| DEFAULT_MAX_CONCURRENCY.to_owned());
        if !is_rate(&max_concurrency, 1) {
            return Err(invalid(
                "DROPSHIP_MAX_CONCURRENCY",
                &max_concurrency,
                "a count ≥ 1 or a percentage 1%-100%",
            ));
        }
        let max_errors =
            get("DROPSHIP_MAX_ERRORS").unwrap_or_else(|| DEFAULT_MAX_ERRORS.to_owned());
        if !is_rate(&max_errors, 0) {
            return Err(invalid(
                "DROPSHIP_MAX_ERRORS",
                &max_errors,
                "a count ≥ 0 or a percentage 0%-100%",
            ));
        }

        let number =
            |name: &'static str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
                match get(name) {
                    None => Ok(default),
                    Some(v) => match v.parse::<u64>() {
                        Ok(n) if (min..=max).contains(&n) => Ok(n),
                        _ => Err(invalid(
                            name,
                            &v,
                            &format!("a whole number from {min} to {max}"),
                        )),
                    },
                }
            };
        // Ranges: SSM TimeoutSeconds 30..2592000; executionTimeout up to 172800 (48 h).
        let delivery_timeout_secs = number(
            "DROPSHIP_DELIVERY_TIMEOUT_SECS",
            DEFAULT_DELIVERY_TIMEOUT_SECS.into(),
            30,
            2_592_000,
        )? as u32;
        let execution_timeout_secs = number(
            "DROPSHIP_EXECUTION_TIMEOUT_SECS",
            DEFAULT_EXECUTION_TIMEOUT_SECS.into(),
            60,
            172_800,
        )? as u32;
        let max_bundle_bytes = number(
            "DROPSHIP_MAX_BUNDLE_BYTES",
            DEFAULT_MAX_BUNDLE_BYTES,
            1024,
            5 << 40,
        )?;
        let lock_timeout_secs = number(
            "DROPSHIP_LOCK_TIMEOUT_SECS",
            DEFAULT_LOCK_TIMEOUT_SECS.into(),
            1,
            86_400,
        )? as u32;

        let log_group = get(LOG_GROUP_VAR);
        if let Some(g) = &log_group {
            if !dropship_contract::wiring::is_log_group_name(g) {
                return Err(invalid(
                    LOG_GROUP_VAR,
                    g,
                    "a CloudWatch log group name (letters, digits, _ - / . #)",
                ));
            }
        }

        // Fail closed: a target qualifies by its tags AND the (app, env)'s instance profile;
        // whoever could unset this variable must not turn targeting into tags only.
        let instance_profile_arn =
            get("DROPSHIP_INSTANCE_PROFILE_ARN").ok_or(ConfigError::Missing {
                name: "DROPSHIP_INSTANCE_PROFILE_ARN",
                hint: "set it to the host instance-profile ARN template naming {app} and {env} (infra/ sets it; e.g. arn:aws:iam::111122223333:instance-profile/dropship-host-{app}.{env})",
            })?;
        if !is_instance_profile_arn_template(&instance_profile_arn) {
            return Err(invalid(
                "DROPSHIP_INSTANCE_PROFILE_ARN",
                &instance_profile_arn,
                "an instance-profile ARN template naming {app} and {env}, e.g. arn:aws:iam::111122223333:instance-profile/dropship-host-{app}.{env}",
            ));
        }

        // Fail closed: the host-result rule matches this document by name; an AWS-owned one
        // would bring every shell command's status change in the account to the deployer.
        let command_document = get(COMMAND_DOCUMENT_VAR).ok_or(ConfigError::Missing {
            name: COMMAND_DOCUMENT_VAR,
            hint: "set it to the installation's own SSM Command document (infra/ creates <name_prefix>-deploy-<class> from infra/documents/deploy-command.json and sets it)",
        })?;
        if !is_own_document_name(&command_document) {
            return Err(invalid(
                COMMAND_DOCUMENT_VAR,
                &command_document,
                "the name of this installation's own SSM Command document (3-128 letters, digits, _ - .; not an AWS-owned document such as AWS-RunShellScript)",
            ));
        }

        // Where hosts download from: this Lambda's own region and S3 endpoint, checked by the
        // contract's rules (the host script checks the same ones).
        let region = get("AWS_REGION")
            .or_else(|| get("AWS_DEFAULT_REGION"))
            .ok_or(ConfigError::Missing {
                name: "AWS_REGION",
                hint: "the Lambda runtime sets it; for a local run set it to the bucket's region",
            })?;
        dropship_contract::host::check_region(&region)
            .map_err(|expected| invalid("AWS_REGION", &region, &expected))?;
        let (endpoint_var, s3_endpoint) = match get("AWS_ENDPOINT_URL_S3") {
            Some(e) => ("AWS_ENDPOINT_URL_S3", e),
            None => match get("AWS_ENDPOINT_URL") {
                Some(e) => ("AWS_ENDPOINT_URL", e),
                None => (
                    "AWS_REGION",
                    dropship_contract::host::regional_s3_endpoint(&region),
                ),
            },
        };
        let s3_endpoint = s3_endpoint.trim_end_matches('/').to_owned();
        dropship_contract::host::check_s3_endpoint(&s3_endpoint).map_err(|expected| {
            invalid(
                endpoint_var,
                &s3_endpoint,
                &format!("an S3 endpoint hosts can download from: {expected}"),
            )
        })?;
        // Hosts download from where this variable points: only the region's own S3, or a
        // loopback emulator (a local test run). Anyone able to change the configuration must
        // not be able to send every host to a server of theirs.
        let regional = dropship_contract::host::regional_s3_endpoint(&region);
        if s3_endpoint != regional && !is_loopback_endpoint(&s3_endpoint) {
            return Err(invalid(
                endpoint_var,
                &s3_endpoint,
                &format!("the region's own S3 endpoint {regional}, or a loopback test endpoint (http://127.0.0.1:PORT, http://localhost:PORT); unset it to use {regional}"),
            ));
        }

        // App and environment allow-lists: names as the key module validates them.
        let names = |var: &'static str| -> Result<Vec<String>, ConfigError> {
            let Some(raw) = get(var) else {
                return Ok(Vec::new());
            };
            let list = list_value(&raw);
            if let Some(bad) = list
                .iter()
                .find(|n| dropship_contract::key::validate_name("name", n).is_err())
            {
                return Err(invalid(
                    var,
                    bad,
                    "comma-separated names of 1-63 characters of a-z, 0-9 and '-'",
                ));
            }
            Ok(list)
        };
        let allowed_apps = names(ALLOWED_APPS_VAR)?;
        let allowed_environments = names(ALLOWED_ENVIRONMENTS_VAR)?;

        Ok(Self {
            allowed_buckets,
            app_root,
            app_tag_key,
            env_tag_key,
            max_concurrency,
            max_errors,
            delivery_timeout_secs,
            execution_timeout_secs,
            log_group,
            region,
            s3_endpoint,
            max_bundle_bytes,
            lock_timeout_secs,
            instance_profile_arn,
            command_document,
            allowed_apps,
            allowed_environments,
        })
    }

    /// Whether events for `app` are acted on.
    pub fn app_allowed(&self, app: &str) -> bool {
        self.allowed_apps.is_empty() || self.allowed_apps.iter().any(|a| a == app)
    }

    /// Whether events for `env` are acted on.
    pub fn env_allowed(&self, env: &str) -> bool {
        self.allowed_environments.is_empty() || self.allowed_environments.iter().any(|e| e == env)
    }

    /// Whether events from `bucket` are acted on.
    pub fn bucket_allowed(&self, bucket: &str) -> bool {
        self.allowed_buckets.iter().any(|b| b == bucket)
    }

    /// The app root on hosts for one app/env.
    pub fn app_root_for(&self, app: &str, env: &str) -> String {
        self.app_root.replace("{app}", app).replace("{env}", env)
    }

    /// The ARN of the instance profile every target of `app`/`env` must carry (compared
    /// with `IamInstanceProfile.Arn` from `DescribeInstances`).
    pub fn instance_profile_arn_for(&self, app: &str, env: &str) -> String {
        self.instance_profile_arn
            .replace("{app}", app)
            .replace("{env}", env)
    }
}

/// `http(s)://localhost[:PORT]` or `http(s)://127.x.x.x[:PORT]` (already checked by
/// `check_s3_endpoint`): an emulator on this machine, as the test suites run.
fn is_loopback_endpoint(endpoint: &str) -> bool {
    let Some(rest) = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
    else {
        return false;
    };
    let host = rest.split_once(':').map_or(rest, |(h, _)| h);
    host == "localhost"
        || (host.starts_with("127.")
            && host.split('.').count() == 4
            && host.split('.').all(|p| p.parse::<u8>().is_ok()))
}

/// `arn:<partition>:iam::<account>:instance-profile/<path and name>` naming `{app}` and
/// `{env}` once each, so that one (app, env)'s profile never qualifies for another.
fn is_instance_profile_arn_template(t: &str) -> bool {
    let parts: Vec<&str> = t.splitn(6, ':').collect();
    let [arn, partition, service, region, account, resource] = parts.as_slice() else {
        return false;
    };
    let name_ok = resource.strip_prefix("instance-profile/").is_some_and(|n| {
        n.matches("{app}").count() == 1
            && n.matches("{env}").count() == 1
            && n.replace("{app}", "a")
                .replace("{env}", "e")
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-/".contains(&b))
    });
    *arn == "arn"
        && !partition.is_empty()
        && *service == "iam"
        && region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && name_ok
}

fn is_bucket_name(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
}

/// SSM rate value: a plain count ≥ `min`, or a percentage `min%..=100%`.
fn is_rate(v: &str, min: u64) -> bool {
    match v.strip_suffix('%') {
        Some(p) => p.parse::<u64>().is_ok_and(|n| (min..=100).contains(&n)),
        None => v.parse::<u64>().is_ok_and(|n| n >= min),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.entry("AWS_REGION".into())
            .or_insert_with(|| "eu-west-1".into());
        map.entry("DROPSHIP_INSTANCE_PROFILE_ARN".into())
            .or_insert_with(|| PROFILE.into());
        map.entry(COMMAND_DOCUMENT_VAR.into())
            .or_insert_with(|| DOCUMENT.into());
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const PROFILE: &str = "arn:aws:iam::111122223333:instance-profile/dropship-host-{app}.{env}";
    const DOCUMENT: &str = "dropship-deploy-production";

    #[test]
    fn refuses_to_start_without_its_own_command_document() {
        for unset in [None, Some(""), Some("  ")] {
            let err = Config::from_lookup(|k| match k {
                "DROPSHIP_ALLOWED_BUCKETS" => Some("rel".into()),
                "AWS_REGION" => Some("eu-west-1".into()),
                "DROPSHIP_INSTANCE_PROFILE_ARN" => Some(PROFILE.into()),
                "DROPSHIP_COMMAND_DOCUMENT" => unset.map(str::to_owned),
                _ => None,
            })
            .unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Missing {
                        name: "DROPSHIP_COMMAND_DOCUMENT",
                        ..
                    }
                ),
                "{unset:?}: {err}"
            );
            assert!(err.to_string().contains("infra/documents"), "{err}");
        }
        for aws_owned in ["AWS-RunShellScript", "AWS-RunPowerShellScript", "x"] {
            let err = cfg(&[
                ("DROPSHIP_ALLOWED_BUCKETS", "rel"),
                ("DROPSHIP_COMMAND_DOCUMENT", aws_owned),
            ])
            .unwrap_err();
            assert!(
                err.to_string().contains("DROPSHIP_COMMAND_DOCUMENT")
                    && err.to_string().contains("own SSM Command document"),
                "{aws_owned}: {err}"
            );
        }
        let c = cfg(&[("DROPSHIP_ALLOWED_BUCKETS", "rel")]).unwrap();
        assert_eq!(c.command_document, DOCUMENT);
    }

    #[test]
    fn refuses_to_start_without_the_instance_profile_template() {
        for unset in [None, Some(""), Some("  ")] {
            let err = Config::from_lookup(|k| match k {
                "DROPSHIP_ALLOWED_BUCKETS" => Some("rel".into()),
                "AWS_REGION" => Some("eu-west-1".into()),
                "DROPSHIP_INSTANCE_PROFILE_ARN" => unset.map(str::to_owned),
                _ => None,
            })
            .unwrap_err();
            assert!(
                matches!(
                    err,
                    ConfigError::Missing {
                        name: "DROPSHIP_INSTANCE_PROFILE_ARN",
                        ..
                    }
                ),
                "{unset:?}: {err}"
            );
            assert!(err.to_string().contains("{app} and {env}"), "{err}");
        }
    }

    #[test]
    fn hosts_are_sent_only_to_the_regions_s3_or_a_loopback_emulator() {
        for (var, endpoint) in [
            ("AWS_ENDPOINT_URL_S3", "https://s3.attacker.example"),
            ("AWS_ENDPOINT_URL", "https://evil.example:8443"),
            ("AWS_ENDPOINT_URL_S3", "https://s3.us-east-1.amazonaws.com"),
            (
                "AWS_ENDPOINT_URL_S3",
                "https://s3.eu-west-1.amazonaws.com.evil.example",
            ),
            ("AWS_ENDPOINT_URL_S3", "https://127.0.0.1.nip.io"),
        ] {
            let err = cfg(&[("DROPSHIP_ALLOWED_BUCKETS", "rel"), (var, endpoint)]).unwrap_err();
            assert!(
                err.to_string().contains(var) && err.to_string().contains("region's own"),
                "{var}={endpoint}: {err}"
            );
        }
        for endpoint in [
            "https://s3.eu-west-1.amazonaws.com",
            "http://127.0.0.1:5000",
            "http://localhost:9000",
            "https://localhost:4443",
        ] {
            let c = cfg(&[
                ("DROPSHIP_ALLOWED_BUCKETS", "rel"),
                ("AWS_ENDPOINT_URL_S3", endpoint),
            ])
            .unwrap_or_else(|e| panic!("{endpoint}: {e}"));
            assert_eq!(c.s3_endpoint, endpoint);
        }
    }

    #[test]
    fn defaults_follow_the_architecture_table() {
        let c = cfg(&[("DROPSHIP_ALLOWED_BUCKETS", "rel-a, rel-b")]).unwrap();
        assert_eq!(c.allowed_buckets, vec!["rel-a", "rel-b"]);
        assert_eq!(c.app_root_for("shop", "prod"), "/opt/dropship/shop");
        assert_eq!(c.app_tag_key, DEFAULT_APP_TAG_KEY);
        assert_eq!(c.env_tag_key, DEFAULT_ENV_TAG_KEY);
        assert_eq!(c.max_concurrency, "50%");
        assert_eq!(c.max_errors, "0");
        assert_eq!(c.delivery_timeout_secs, 600);
        assert_eq!(c.execution_timeout_secs, 1800);
        assert_eq!(c.log_group, None);
        assert_eq!(c.region, "eu-west-1");
        assert_eq!(c.s3_endpoint, "https://s3.eu-west-1.amazonaws.com");
        assert_eq!(c.max_bundle_bytes, 2_147_483_648);
        assert_eq!(c.lock_timeout_secs, 300);
        assert_eq!(
            c.instance_profile_arn_for("shop", "prod"),
            "arn:aws:iam::111122223333:instance-profile/dropship-host-shop.prod"
        );
        assert!(c.bucket_allowed("rel-b") && !c.bucket_allowed("other"));
    }

    #[test]
    fn every_variable_read_is_listed() {
        // Every lookup goes through ENV_VARS: record the names asked for.
        let asked = std::cell::RefCell::new(Vec::new());
        let _ = Config::from_lookup(|k| {
            asked.borrow_mut().push(k.to_owned());
            match k {
                "DROPSHIP_ALLOWED_BUCKETS" => Some("b-1".to_owned()),
                "AWS_DEFAULT_REGION" => Some("eu-west-1".to_owned()),
                "DROPSHIP_INSTANCE_PROFILE_ARN" => Some(PROFILE.to_owned()),
                "DROPSHIP_COMMAND_DOCUMENT" => Some(DOCUMENT.to_owned()),
                _ => None,
            }
        })
        .unwrap();
        let mut asked = asked.into_inner();
        asked.sort();
        asked.dedup();
        let mut listed: Vec<String> = ENV_VARS
            .iter()
            .chain(RUNTIME_VARS)
            .map(|s| s.to_string())
            .collect();
        listed.sort();
        assert_eq!(asked, listed);
    }

    #[test]
    fn invalid_values_are_refused_with_the_variable_named() {
        let base = ("DROPSHIP_ALLOWED_BUCKETS", "rel");
        assert!(matches!(
            cfg(&[]),
            Err(ConfigError::Missing {
                name: "DROPSHIP_ALLOWED_BUCKETS",
                ..
            })
        ));
        for (name, value) in [
            ("DROPSHIP_ALLOWED_BUCKETS", "UPPER"),
            ("DROPSHIP_APP_ROOT", "relative/{app}"),
            ("DROPSHIP_APP_ROOT", "/opt/../etc"),
            ("DROPSHIP_APP_ROOT", "/opt/$(x)"),
            ("DROPSHIP_APP_TAG_KEY", "aws:app"),
            ("DROPSHIP_MAX_CONCURRENCY", "0"),
            ("DROPSHIP_MAX_CONCURRENCY", "150%"),
            ("DROPSHIP_MAX_ERRORS", "-1"),
            ("DROPSHIP_DELIVERY_TIMEOUT_SECS", "5"),
            ("DROPSHIP_EXECUTION_TIMEOUT_SECS", "soon"),
            ("AWS_REGION", "Europe"),
            ("AWS_ENDPOINT_URL", "http://moto:5000"),
            ("AWS_ENDPOINT_URL_S3", "https://s3.example/path"),
            ("DROPSHIP_MAX_BUNDLE_BYTES", "1"),
            ("DROPSHIP_LOCK_TIMEOUT_SECS", "0"),
            ("DROPSHIP_LOG_GROUP", "bad group"),
            (
                "DROPSHIP_INSTANCE_PROFILE_ARN",
                "arn:aws:iam::111122223333:instance-profile/dropship-host",
            ),
            (
                "DROPSHIP_INSTANCE_PROFILE_ARN",
                "arn:aws:iam::111122223333:instance-profile/dropship-{app}",
            ),
            (
                "DROPSHIP_INSTANCE_PROFILE_ARN",
                "arn:aws:iam::111122223333:role/dropship-{app}.{env}",
            ),
            (
                "DROPSHIP_INSTANCE_PROFILE_ARN",
                "arn:aws:iam::1111:instance-profile/dropship-{app}.{env}",
            ),
            (
                "DROPSHIP_INSTANCE_PROFILE_ARN",
                "arn:aws:iam::111122223333:instance-profile/x-{app}.{env}.{app}",
            ),
        ] {
            let pairs: Vec<(&str, &str)> = if name == base.0 {
                vec![(name, value)]
            } else {
                vec![base, (name, value)]
            };
            let err = cfg(&pairs).unwrap_err();
            assert!(err.to_string().contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn hosts_get_the_s3_endpoint_this_lambda_uses() {
        let c = cfg(&[
            ("DROPSHIP_ALLOWED_BUCKETS", "rel"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000/"),
        ])
        .unwrap();
        assert_eq!(c.s3_endpoint, "http://127.0.0.1:5000");
        let c = cfg(&[
            ("DROPSHIP_ALLOWED_BUCKETS", "rel"),
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:5000"),
            ("AWS_ENDPOINT_URL_S3", "http://localhost:9000"),
        ])
        .unwrap();
        assert_eq!(c.s3_endpoint, "http://localhost:9000");
        let c = cfg(&[
            ("DROPSHIP_ALLOWED_BUCKETS", "rel"),
            ("AWS_REGION", "cn-north-1"),
        ])
        .unwrap();
        assert_eq!(c.s3_endpoint, "https://s3.cn-north-1.amazonaws.com.cn");
        let missing = Config::from_lookup(|k| match k {
            "DROPSHIP_ALLOWED_BUCKETS" => Some("rel".into()),
            "DROPSHIP_INSTANCE_PROFILE_ARN" => Some(PROFILE.into()),
            "DROPSHIP_COMMAND_DOCUMENT" => Some(DOCUMENT.into()),
            _ => None,
        });
        assert!(matches!(
            missing,
            Err(ConfigError::Missing {
                name: "AWS_REGION",
                ..
            })
        ));
    }

    #[test]
    fn app_root_substitutes_app_and_env() {
        let c = cfg(&[
            ("DROPSHIP_ALLOWED_BUCKETS", "rel"),
            ("DROPSHIP_APP_ROOT", "/srv/{app}-{env}"),
            ("DROPSHIP_MAX_CONCURRENCY", "10"),
            ("DROPSHIP_LOG_GROUP", "/dropship/commands"),
        ])
        .unwrap();
        assert_eq!(c.app_root_for("shop", "prod"), "/srv/shop-prod");
        assert_eq!(c.log_group.as_deref(), Some("/dropship/commands"));
    }

    #[test]
    fn instance_profile_template_names_each_app_and_env_its_own_profile() {
        let c = cfg(&[
            ("DROPSHIP_ALLOWED_BUCKETS", "rel"),
            (
                "DROPSHIP_INSTANCE_PROFILE_ARN",
                "arn:aws:iam::111122223333:instance-profile/dropship-host-{app}.{env}",
            ),
        ])
        .unwrap();
        assert_eq!(
            c.instance_profile_arn_for("shop", "production"),
            "arn:aws:iam::111122223333:instance-profile/dropship-host-shop.production"
        );
        assert_ne!(
            c.instance_profile_arn_for("shop", "staging"),
            c.instance_profile_arn_for("blog", "staging")
        );
    }
}
