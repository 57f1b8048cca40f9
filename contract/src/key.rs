//! Object key naming: one stable key per app and environment, whose S3 version history is the
//! deploy history, and where the deploy records for each version live.

use std::fmt;

use crate::percent;

/// Prefix of every release key; the EventBridge rule matches on it.
pub const RELEASES_PREFIX: &str = "releases/";
/// Suffix of every release key; the EventBridge rule matches on it.
pub const BUNDLE_SUFFIX: &str = ".tar.gz";
/// Prefix of deploy records, kept apart from releases so uploaders cannot forge records.
pub const RECORDS_PREFIX: &str = "deploy-records/";
/// Prefix of the command index ([`crate::fleet::CommandIndex`]): `_` can start no app name,
/// so the index never collides with an app's records.
pub const COMMANDS_PREFIX: &str = "deploy-records/_commands/";
/// Longest app or environment name (keeps keys, tags and host paths short and predictable).
pub const MAX_NAME_LEN: usize = 63;

/// Why a name or key does not follow the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error(
        "{what} name {name:?} is invalid: use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit"
    )]
    InvalidName { what: &'static str, name: String },
    #[error("object key {key:?} is not a release key: expected {RELEASES_PREFIX}<app>/<env>{BUNDLE_SUFFIX}")]
    NotAReleaseKey { key: String },
}

/// Checks an app or environment name against `[a-z0-9][a-z0-9-]{0,62}`.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), KeyError> {
    let bytes = name.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    if valid {
        Ok(())
    } else {
        Err(KeyError::InvalidName {
            what,
            name: name.to_string(),
        })
    }
}

/// The app/environment pair a release key names; the unit of deploy history.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReleaseKey {
    app: String,
    env: String,
}

impl ReleaseKey {
    /// Builds a key from names, validating both.
    pub fn new(app: &str, env: &str) -> Result<Self, KeyError> {
        validate_name("app", app)?;
        validate_name("environment", env)?;
        Ok(Self {
            app: app.to_string(),
            env: env.to_string(),
        })
    }

    /// Parses an (already URL-decoded) object key such as `releases/shop/staging.tar.gz`.
    pub fn parse(key: &str) -> Result<Self, KeyError> {
        let not_release = || KeyError::NotAReleaseKey {
            key: key.to_string(),
        };
        let rest = key
            .strip_prefix(RELEASES_PREFIX)
            .and_then(|k| k.strip_suffix(BUNDLE_SUFFIX))
            .ok_or_else(not_release)?;
        let (app, env) = rest.split_once('/').ok_or_else(not_release)?;
        Self::new(app, env).map_err(|_| not_release())
    }

    /// The app name.
    pub fn app(&self) -> &str {
        &self.app
    }

    /// The environment name.
    pub fn env(&self) -> &str {
        &self.env
    }

    /// The S3 object key every upload for this app/env goes to.
    pub fn object_key(&self) -> String {
        format!("{RELEASES_PREFIX}{}/{}{BUNDLE_SUFFIX}", self.app, self.env)
    }

    /// Prefix under which this app/env's deploy records live.
    pub fn records_prefix(&self) -> String {
        format!("{RECORDS_PREFIX}{}/{}/", self.app, self.env)
    }

    /// Key of the deploy record for one object version.
    pub fn record_key(&self, version_id: &str) -> String {
        format!(
            "{}{}.json",
            self.records_prefix(),
            encode_version_id(version_id)
        )
    }

    /// Prefix of the per-host results of one version (`…/<v…>/results/`): one object per
    /// (instance, command), written once ([`crate::fleet::StoredResult`]).
    pub fn results_prefix(&self, version_id: &str) -> String {
        format!(
            "{}{}/results/",
            self.records_prefix(),
            encode_version_id(version_id)
        )
    }

    /// Key of one host's result for one command of `version_id`. Instance and command ids
    /// come from SSM; they are percent-encoded like version ids so neither can add a segment.
    pub fn result_key(&self, version_id: &str, instance_id: &str, command_id: &str) -> String {
        format!(
            "{}{}/{}.json",
            self.results_prefix(version_id),
            encode_version_id(instance_id),
            encode_version_id(command_id)
        )
    }

    /// Key of the fleet pointer: the version the whole fleet of this app/env last converged
    /// on, what instances that start later catch up to.
    pub fn fleet_key(&self) -> String {
        format!("{FLEETS_PREFIX}{}/{}.json", self.app, self.env)
    }

    /// Key of the pointer to the newest dispatched version (used for ordering).
    pub fn latest_pointer_key(&self) -> String {
        format!("{}latest.json", self.records_prefix())
    }
}

/// Prefix of the fleet pointers ([`crate::fleet::FleetPointer`]), one per app/env.
pub const FLEETS_PREFIX: &str = "deploy-records/_fleets/";

/// The app/env a fleet pointer key names (`deploy-records/_fleets/<app>/<env>.json`).
pub fn release_of_fleet_key(key: &str) -> Option<ReleaseKey> {
    let rest = key.strip_prefix(FLEETS_PREFIX)?.strip_suffix(".json")?;
    let (app, env) = rest.split_once('/')?;
    ReleaseKey::new(app, env).ok()
}

/// Key of the index entry of one SSM command id.
pub fn command_index_key(command_id: &str) -> String {
    format!("{COMMANDS_PREFIX}{}.json", encode_version_id(command_id))
}

impl fmt::Display for ReleaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.env)
    }
}

/// Version ids are opaque S3 strings; record keys keep them to a safe alphabet (`v` + the
/// id in [`percent::RECORD_NAME`]) so a version id can never add a path segment or collide
/// with `latest.json`.
fn encode_version_id(version_id: &str) -> String {
    format!("v{}", percent::encode(version_id, &percent::RECORD_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_a_release_key() {
        let key = ReleaseKey::new("shop", "staging").unwrap();
        assert_eq!(key.object_key(), "releases/shop/staging.tar.gz");
        assert_eq!(ReleaseKey::parse(&key.object_key()).unwrap(), key);
    }

    #[test]
    fn rejects_foreign_keys() {
        for bad in [
            "releases/shop/staging.tar",
            "releases/shop.tar.gz",
            "releases/shop/eu/staging.tar.gz",
            "releases/Shop/staging.tar.gz",
            "releases/-shop/staging.tar.gz",
            "other/shop/staging.tar.gz",
            "releases/shop/staging .tar.gz",
            "deploy-records/shop/staging/latest.json",
            "releases//staging.tar.gz",
        ] {
            assert!(
                matches!(ReleaseKey::parse(bad), Err(KeyError::NotAReleaseKey { .. })),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn names_follow_the_pattern() {
        assert!(validate_name("app", "a").is_ok());
        assert!(validate_name("app", "0-a-9").is_ok());
        assert!(validate_name("app", &"a".repeat(63)).is_ok());
        assert!(validate_name("app", &"a".repeat(64)).is_err());
        assert!(validate_name("app", "").is_err());
        assert!(validate_name("app", "a_b").is_err());
        let err = validate_name("app", "A").unwrap_err().to_string();
        assert!(err.contains("\"A\"") && err.contains("a-z"), "{err}");
    }

    #[test]
    fn record_keys_cannot_escape_their_prefix() {
        let key = ReleaseKey::new("shop", "prod").unwrap();
        assert_eq!(
            key.record_key("3sL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"),
            "deploy-records/shop/prod/v3sL4kqtJlcpXroDTDmJ~2ErmSpXd3dIbrHY.json"
        );
        assert_eq!(
            key.record_key("../latest"),
            "deploy-records/shop/prod/v~2E~2E~2Flatest.json"
        );
        assert_ne!(key.record_key("latest"), key.latest_pointer_key());
    }
}
