//! The manifest (first entry of every bundle) and the deploy settings it carries from
//! `dropship.toml` to the host.

use serde::{Deserialize, Serialize};

use crate::fleet::OnFailure;

/// Path of the manifest inside a bundle; it must be the first entry.
pub const MANIFEST_PATH: &str = ".dropship/manifest.json";
/// Directory inside a bundle reserved for dropship's own files.
pub const DROPSHIP_DIR: &str = ".dropship";

/// How a release is run on the host. Lives in `[deploy]` of `dropship.toml` and travels in
/// the manifest; where it lands on disk and which hosts get it are *not* here (trust boundary).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeploySettings {
    /// Compose file inside the bundle.
    pub compose_file: String,
    /// Compose profiles to enable.
    pub profiles: Vec<String>,
    /// URL polled after `compose up`; `None` relies on `up --wait` alone.
    pub health_url: Option<String>,
    /// Seconds the health gate waits before rolling back.
    pub health_timeout_secs: u32,
    /// Paths under the host's `shared/` linked into every release (e.g. `.env`, `data`).
    pub shared_paths: Vec<String>,
    /// Releases kept on the host (the current and last good are never pruned).
    pub keep_releases: u32,
    /// Variables that must be set in the host's `shared/.env` before switching.
    pub required_env: Vec<String>,
    /// Script inside the bundle run before the switch (migrations, backups).
    pub pre_switch_hook: Option<String>,
    /// What the rollout does when a host fails (`rollback-fleet` or `leave`); read by the
    /// Lambda, never sent to hosts.
    pub on_failure: OnFailure,
}

impl Default for DeploySettings {
    fn default() -> Self {
        Self {
            compose_file: "compose.yaml".into(),
            profiles: Vec::new(),
            health_url: None,
            health_timeout_secs: 60,
            shared_paths: vec![".env".into()],
            keep_releases: 5,
            required_env: Vec::new(),
            pre_switch_hook: None,
            on_failure: OnFailure::default(),
        }
    }
}

/// A deploy setting that would be unsafe or meaningless on a host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("deploy setting {field} = {value:?} is invalid: {expected}")]
pub struct SettingsError {
    pub field: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// A relative path that cannot leave the release directory: no leading `/`, no `.`/`..`
/// components, only `[A-Za-z0-9._-]` in each segment.
pub fn is_safe_relative_path(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 255
        && path.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn is_profile_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

impl DeploySettings {
    /// Checks every field; the bundler calls it on config load, the Lambda on the manifest.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let bad = |field, value: &str, expected| SettingsError {
            field,
            value: value.to_string(),
            expected,
        };
        if !is_safe_relative_path(&self.compose_file) {
            return Err(bad(
                "compose_file",
                &self.compose_file,
                "a relative path inside the repository (letters, digits, . _ - and /)",
            ));
        }
        if let Some(p) = self.profiles.iter().find(|p| !is_profile_name(p)) {
            return Err(bad(
                "profiles",
                p,
                "profile names of letters, digits, _ . -",
            ));
        }
        if let Some(url) = &self.health_url {
            let ok = (url.starts_with("http://") || url.starts_with("https://"))
                && url.len() <= 2048
                && !url.bytes().any(|b| b.is_ascii_control() || b == b' ');
            if !ok {
                return Err(bad(
                    "health_url",
                    url,
                    "an http:// or https:// URL without spaces",
                ));
            }
        }
        if !(1..=3600).contains(&self.health_timeout_secs) {
            return Err(bad(
                "health_timeout_secs",
                &self.health_timeout_secs.to_string(),
                "1 to 3600 seconds",
            ));
        }
        if let Some(p) = self.shared_paths.iter().find(|p| !is_safe_relative_path(p)) {
            return Err(bad(
                "shared_paths",
                p,
                "relative paths (letters, digits, . _ - and /), without '..'",
            ));
        }
        if !(2..=100).contains(&self.keep_releases) {
            return Err(bad(
                "keep_releases",
                &self.keep_releases.to_string(),
                "2 to 100 (the current and the previous release are always kept)",
            ));
        }
        if let Some(v) = self.required_env.iter().find(|v| !is_env_name(v)) {
            return Err(bad("required_env", v, "variable names like DATABASE_URL"));
        }
        if let Some(hook) = &self.pre_switch_hook {
            if !is_safe_relative_path(hook) {
                return Err(bad(
                    "pre_switch_hook",
                    hook,
                    "a relative path to a script in the repository",
                ));
            }
        }
        Ok(())
    }
}

/// The first entry of every bundle: what it is and how to run it. Only facts that are the same
/// for the same commit and config, so bundles stay byte-reproducible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Contract version (`1`).
    pub format: u32,
    pub app: String,
    pub env: String,
    pub branch: String,
    pub commit: String,
    /// Commit time, seconds since the epoch (also every entry's mtime).
    pub commit_time: i64,
    pub dirty: bool,
    /// First line of the commit message.
    pub message: String,
    /// Number of entries after the manifest (files, directories, symlinks).
    pub files: u64,
    /// Sum of regular file sizes after the manifest.
    pub bytes: u64,
    pub deploy: DeploySettings,
}

impl Manifest {
    /// Canonical bytes written into the bundle (stable key order, trailing newline).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("manifest serialises");
        out.push(b'\n');
        out
    }

    /// Parses manifest bytes read from a bundle.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        DeploySettings::default().validate().unwrap();
    }

    #[test]
    fn unsafe_settings_are_refused_with_the_field_named() {
        let cases: Vec<(DeploySettings, &str)> = vec![
            (
                DeploySettings {
                    compose_file: "../compose.yaml".into(),
                    ..Default::default()
                },
                "compose_file",
            ),
            (
                DeploySettings {
                    compose_file: "/etc/compose.yaml".into(),
                    ..Default::default()
                },
                "compose_file",
            ),
            (
                DeploySettings {
                    shared_paths: vec!["data/../../etc".into()],
                    ..Default::default()
                },
                "shared_paths",
            ),
            (
                DeploySettings {
                    required_env: vec!["A B".into()],
                    ..Default::default()
                },
                "required_env",
            ),
            (
                DeploySettings {
                    profiles: vec!["$(x)".into()],
                    ..Default::default()
                },
                "profiles",
            ),
            (
                DeploySettings {
                    health_url: Some("file:///etc/passwd".into()),
                    ..Default::default()
                },
                "health_url",
            ),
            (
                DeploySettings {
                    keep_releases: 1,
                    ..Default::default()
                },
                "keep_releases",
            ),
            (
                DeploySettings {
                    health_timeout_secs: 0,
                    ..Default::default()
                },
                "health_timeout_secs",
            ),
            (
                DeploySettings {
                    pre_switch_hook: Some("x/../../y".into()),
                    ..Default::default()
                },
                "pre_switch_hook",
            ),
        ];
        for (settings, field) in cases {
            let err = settings.validate().unwrap_err();
            assert_eq!(err.field, field);
            assert!(err.to_string().contains(field));
        }
    }

    #[test]
    fn manifest_round_trips_and_refuses_unknown_fields() {
        let m = Manifest {
            format: 1,
            app: "shop".into(),
            env: "prod".into(),
            branch: "main".into(),
            commit: "f".repeat(40),
            commit_time: 1_700_000_000,
            dirty: false,
            message: "init".into(),
            files: 3,
            bytes: 42,
            deploy: DeploySettings::default(),
        };
        assert_eq!(Manifest::from_bytes(&m.to_bytes()).unwrap(), m);
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_bytes()).unwrap();
        v["surprise"] = serde_json::json!(1);
        assert!(Manifest::from_bytes(v.to_string().as_bytes()).is_err());
    }
}
