//! Object metadata (`x-amz-meta-*`): what the bundler attaches to every upload and what the
//! Lambda checks before any host sees a bundle.

use std::collections::{BTreeMap, HashMap};

use crate::key::{validate_name, KeyError};
use crate::percent::{self, Plus};

/// Version of the object metadata contract (`dropship-format`); bumped on incompatible
/// changes to the metadata keys. The manifest has its own
/// ([`crate::manifest::MANIFEST_FORMAT`]).
pub const FORMAT_VERSION: &str = "1";
/// S3 allows 2 KB of user metadata; stay under it with margin for key names.
pub const MAX_METADATA_BYTES: usize = 2000;
/// Commit messages are truncated to this many bytes (after encoding) in metadata.
pub const MAX_MESSAGE_BYTES: usize = 200;

/// Metadata key names, in one place.
pub mod names {
    pub const FORMAT: &str = "dropship-format";
    pub const APP: &str = "app";
    pub const ENV: &str = "env";
    pub const BRANCH: &str = "branch";
    pub const COMMIT: &str = "commit";
    pub const DIRTY: &str = "dirty";
    pub const SHA256: &str = "sha256";
    pub const CREATED: &str = "created";
    pub const UPLOADER: &str = "uploader";
    pub const SOURCE: &str = "source";
    pub const MESSAGE: &str = "message";
    pub const RESTORED_FROM: &str = "restored-from";
    pub const PROMOTED_FROM_ENV: &str = "promoted-from-env";
    pub const PROMOTED_FROM_VERSION: &str = "promoted-from-version";
}

/// Where an upload came from; lets operators tell hand deploys from pipeline ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Local,
    Ci,
}

impl Source {
    /// The metadata spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Ci => "ci",
        }
    }
}

/// The decoded metadata of one release object version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectMetadata {
    pub app: String,
    pub env: String,
    pub branch: String,
    pub commit: String,
    pub dirty: bool,
    /// Lower-case hex SHA-256 of the whole object.
    pub sha256: String,
    /// RFC 3339 UTC upload time.
    pub created: String,
    pub uploader: String,
    pub source: Source,
    pub message: String,
    /// Set by `restore`: the version id this object was copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    /// Set by `promote`: the environment and version this object was copied from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<PromotedFrom>,
}

/// Where a promoted object came from (`promoted-from-env`, `promoted-from-version`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PromotedFrom {
    /// The source environment.
    pub env: String,
    /// The source key's version id that was copied.
    pub version_id: String,
}

/// Why an object's metadata breaks the contract; the Lambda refuses such objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error(
        "metadata field {0:?} is missing: upload with bundle-and-upload so every field is set"
    )]
    Missing(&'static str),
    #[error("metadata field {field:?} has unsupported value {value:?}: {expected}")]
    Invalid {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error(transparent)]
    Name(#[from] KeyError),
    #[error("metadata is {0} bytes, over the {MAX_METADATA_BYTES}-byte limit: shorten the branch name or uploader")]
    TooLarge(usize),
}

/// True for a full hex commit id (SHA-1 or SHA-256 object format).
pub fn is_full_commit(commit: &str) -> bool {
    (commit.len() == 40 || commit.len() == 64)
        && commit
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// True for a lower-case 64-hex SHA-256 digest.
pub fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ObjectMetadata {
    /// Encodes to `x-amz-meta-*` header values (without the prefix), sorted by name.
    pub fn to_headers(&self) -> Result<BTreeMap<String, String>, MetadataError> {
        self.validate()?;
        let mut out = BTreeMap::new();
        let mut put = |k: &str, v: &str| {
            out.insert(k.to_string(), percent_encode(v));
        };
        put(names::FORMAT, FORMAT_VERSION);
        put(names::APP, &self.app);
        put(names::ENV, &self.env);
        put(names::BRANCH, &self.branch);
        put(names::COMMIT, &self.commit);
        put(names::DIRTY, if self.dirty { "true" } else { "false" });
        put(names::SHA256, &self.sha256);
        put(names::CREATED, &self.created);
        put(names::UPLOADER, &self.uploader);
        put(names::SOURCE, self.source.as_str());
        if let Some(from) = &self.restored_from {
            put(names::RESTORED_FROM, from);
        }
        if let Some(from) = &self.promoted_from {
            put(names::PROMOTED_FROM_ENV, &from.env);
            put(names::PROMOTED_FROM_VERSION, &from.version_id);
        }
        let message = truncate_encoded(&self.message, MAX_MESSAGE_BYTES);
        out.insert(names::MESSAGE.to_string(), message);
        let size: usize = out.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > MAX_METADATA_BYTES {
            return Err(MetadataError::TooLarge(size));
        }
        Ok(out)
    }

    /// The metadata of a restore: the same upload facts (branch, commit, sha256, uploader,
    /// created, …) with `restored-from` set to the version copied. A restore of a restore
    /// names the version it copied, not the original upload.
    pub fn restored(&self, from_version_id: &str) -> Self {
        Self {
            restored_from: Some(from_version_id.to_string()),
            promoted_from: None,
            ..self.clone()
        }
    }

    /// The metadata of a promotion to `to_env`: the same upload facts (branch, commit, sha256,
    /// uploader, created, …) under the target environment, with where it came from. A
    /// restore mark of the source environment does not travel.
    pub fn promoted(&self, to_env: &str, from_version_id: &str) -> Self {
        Self {
            env: to_env.to_string(),
            restored_from: None,
            promoted_from: Some(PromotedFrom {
                env: self.env.clone(),
                version_id: from_version_id.to_string(),
            }),
            ..self.clone()
        }
    }

    /// Decodes and validates metadata as S3 returns it (keys without `x-amz-meta-`).
    pub fn from_headers(headers: &HashMap<String, String>) -> Result<Self, MetadataError> {
        let get = |name: &'static str| -> Result<String, MetadataError> {
            let raw = headers.get(name).ok_or(MetadataError::Missing(name))?;
            percent_decode(raw).ok_or_else(|| MetadataError::Invalid {
                field: name,
                value: raw.clone(),
                expected: "percent-encoded UTF-8",
            })
        };
        let format = get(names::FORMAT)?;
        if format != FORMAT_VERSION {
            return Err(MetadataError::Invalid {
                field: names::FORMAT,
                value: format,
                expected: "format 1; upgrade the deployer to read newer bundles",
            });
        }
        let dirty = match get(names::DIRTY)?.as_str() {
            "true" => true,
            "false" => false,
            other => {
                return Err(MetadataError::Invalid {
                    field: names::DIRTY,
                    value: other.to_string(),
                    expected: "true or false",
                })
            }
        };
        let source = match get(names::SOURCE)?.as_str() {
            "local" => Source::Local,
            "ci" => Source::Ci,
            other => {
                return Err(MetadataError::Invalid {
                    field: names::SOURCE,
                    value: other.to_string(),
                    expected: "local or ci",
                })
            }
        };
        let restored_from = match headers.get(names::RESTORED_FROM) {
            Some(_) => Some(get(names::RESTORED_FROM)?),
            None => None,
        };
        let promoted_from = match (
            headers.contains_key(names::PROMOTED_FROM_ENV),
            headers.contains_key(names::PROMOTED_FROM_VERSION),
        ) {
            (false, false) => None,
            (true, true) => Some(PromotedFrom {
                env: get(names::PROMOTED_FROM_ENV)?,
                version_id: get(names::PROMOTED_FROM_VERSION)?,
            }),
            (true, false) => return Err(MetadataError::Missing(names::PROMOTED_FROM_VERSION)),
            (false, true) => return Err(MetadataError::Missing(names::PROMOTED_FROM_ENV)),
        };
        let meta = Self {
            app: get(names::APP)?,
            env: get(names::ENV)?,
            branch: get(names::BRANCH)?,
            commit: get(names::COMMIT)?,
            dirty,
            sha256: get(names::SHA256)?,
            created: get(names::CREATED)?,
            uploader: get(names::UPLOADER)?,
            source,
            message: headers
                .get(names::MESSAGE)
                .map(|m| percent_decode_lossy(m))
                .unwrap_or_default(),
            restored_from,
            promoted_from,
        };
        meta.validate()?;
        Ok(meta)
    }

    fn validate(&self) -> Result<(), MetadataError> {
        validate_name("app", &self.app)?;
        validate_name("environment", &self.env)?;
        if let Some(from) = &self.promoted_from {
            validate_name("environment", &from.env)?;
        }
        if !is_full_commit(&self.commit) {
            return Err(MetadataError::Invalid {
                field: names::COMMIT,
                value: self.commit.clone(),
                expected: "a full lower-case hex commit id (40 or 64 characters)",
            });
        }
        if !is_sha256_hex(&self.sha256) {
            return Err(MetadataError::Invalid {
                field: names::SHA256,
                value: self.sha256.clone(),
                expected: "64 lower-case hex characters",
            });
        }
        Ok(())
    }
}

/// Encodes a metadata value so any Unicode survives S3's ASCII-only metadata.
fn percent_encode(value: &str) -> String {
    percent::encode(value, &percent::METADATA)
}

/// Decodes [`percent_encode`]; `None` on malformed escapes or invalid UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    percent::decode(value, Plus::Literal)
}

/// The message is informational; a truncated escape must not make metadata unreadable.
fn percent_decode_lossy(value: &str) -> String {
    percent_decode(value).unwrap_or_else(|| value.to_string())
}

/// Encodes and truncates at a character boundary so the result stays decodable.
fn truncate_encoded(value: &str, max: usize) -> String {
    let mut out = String::new();
    for ch in value.chars() {
        let mut buf = [0u8; 4];
        let enc = percent_encode(ch.encode_utf8(&mut buf));
        if out.len() + enc.len() > max {
            break;
        }
        out.push_str(&enc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ObjectMetadata {
        ObjectMetadata {
            app: "shop".into(),
            env: "prod".into(),
            branch: "feature/$(reboot)".into(),
            commit: "a".repeat(40),
            dirty: false,
            sha256: "0".repeat(64),
            created: "2026-11-23T09:00:00Z".into(),
            uploader: "ci@runner".into(),
            source: Source::Ci,
            message: "Fix: it's done | a&b — ünïcode".into(),
            restored_from: None,
            promoted_from: None,
        }
    }

    fn round_trip(meta: &ObjectMetadata) -> ObjectMetadata {
        let headers: HashMap<String, String> = meta.to_headers().unwrap().into_iter().collect();
        for v in headers.values() {
            assert!(v.is_ascii(), "{v:?} must be ASCII");
        }
        ObjectMetadata::from_headers(&headers).unwrap()
    }

    #[test]
    fn hostile_and_unicode_values_round_trip() {
        for branch in [
            "feature/$(reboot)",
            "it's",
            "a|b&c",
            "日本語/ブランチ",
            "100%",
            "`x`\n",
        ] {
            let mut meta = sample();
            meta.branch = branch.into();
            assert_eq!(round_trip(&meta).branch, branch);
        }
        assert_eq!(round_trip(&sample()), sample());
    }

    #[test]
    fn restored_from_is_written_only_for_restores_and_round_trips() {
        let plain = sample().to_headers().unwrap();
        assert!(!plain.contains_key(names::RESTORED_FROM));
        let restored = sample().restored("3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY");
        let headers = restored.to_headers().unwrap();
        assert_eq!(
            headers[names::RESTORED_FROM],
            "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"
        );
        let back = round_trip(&restored);
        assert_eq!(
            back.restored_from.as_deref(),
            Some("3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY")
        );
        assert_eq!(
            ObjectMetadata {
                restored_from: None,
                promoted_from: None,
                ..back
            },
            sample()
        );
        // Version ids are opaque: anything survives the encoding.
        let odd = sample().restored("a+b/c=d%e f");
        assert_eq!(
            round_trip(&odd).restored_from.as_deref(),
            Some("a+b/c=d%e f")
        );
        // A restore of a restore names the version it copied.
        assert_eq!(restored.restored("v2").restored_from.as_deref(), Some("v2"));
        // Malformed escapes in restored-from are refused like any other field.
        let mut bad: HashMap<String, String> = plain.into_iter().collect();
        bad.insert(names::RESTORED_FROM.into(), "%zz".into());
        assert!(matches!(
            ObjectMetadata::from_headers(&bad),
            Err(MetadataError::Invalid {
                field: names::RESTORED_FROM,
                ..
            })
        ));
    }

    #[test]
    fn promotions_record_their_source_and_round_trip() {
        let restored = ObjectMetadata {
            env: "staging".into(),
            ..sample().restored("older")
        };
        let promoted = restored.promoted("production", "3HL4kqtJlcpXroDT");
        assert_eq!(promoted.env, "production");
        assert_eq!(promoted.restored_from, None);
        assert_eq!(
            promoted.promoted_from,
            Some(PromotedFrom {
                env: "staging".into(),
                version_id: "3HL4kqtJlcpXroDT".into()
            })
        );
        assert_eq!(
            (&promoted.commit, &promoted.sha256, &promoted.uploader),
            (&restored.commit, &restored.sha256, &restored.uploader)
        );
        let headers = promoted.to_headers().unwrap();
        assert_eq!(headers[names::PROMOTED_FROM_ENV], "staging");
        assert_eq!(headers[names::PROMOTED_FROM_VERSION], "3HL4kqtJlcpXroDT");
        assert_eq!(round_trip(&promoted), promoted);
        assert!(!sample()
            .to_headers()
            .unwrap()
            .contains_key(names::PROMOTED_FROM_ENV));
        // Half a promotion mark, or a forged environment name, is refused.
        let full: HashMap<String, String> = headers.into_iter().collect();
        for (drop, missing) in [
            (names::PROMOTED_FROM_ENV, names::PROMOTED_FROM_ENV),
            (names::PROMOTED_FROM_VERSION, names::PROMOTED_FROM_VERSION),
        ] {
            let mut half = full.clone();
            half.remove(drop);
            assert_eq!(
                ObjectMetadata::from_headers(&half),
                Err(MetadataError::Missing(missing))
            );
        }
        let mut forged = full;
        forged.insert(names::PROMOTED_FROM_ENV.into(), "../prod".into());
        assert!(matches!(
            ObjectMetadata::from_headers(&forged),
            Err(MetadataError::Name(_))
        ));
    }

    #[test]
    fn long_messages_are_truncated_on_a_character_boundary() {
        let mut meta = sample();
        meta.message = "é".repeat(500);
        let back = round_trip(&meta);
        assert!(!back.message.is_empty());
        assert!(back.message.chars().all(|c| c == 'é'));
        assert!(meta.to_headers().unwrap()["message"].len() <= MAX_MESSAGE_BYTES);
    }

    #[test]
    fn missing_and_forged_fields_are_refused() {
        let headers: HashMap<String, String> = sample().to_headers().unwrap().into_iter().collect();
        let mut no_sha = headers.clone();
        no_sha.remove("sha256");
        assert_eq!(
            ObjectMetadata::from_headers(&no_sha),
            Err(MetadataError::Missing("sha256"))
        );
        let mut short = headers.clone();
        short.insert("commit".into(), "abc123".into());
        let err = ObjectMetadata::from_headers(&short)
            .unwrap_err()
            .to_string();
        assert!(err.contains("commit") && err.contains("abc123"), "{err}");
        let mut future = headers.clone();
        future.insert("dropship-format".into(), "2".into());
        assert!(ObjectMetadata::from_headers(&future).is_err());
        let mut bad_app = headers;
        bad_app.insert("app".into(), "../etc".into());
        assert!(matches!(
            ObjectMetadata::from_headers(&bad_app),
            Err(MetadataError::Name(_))
        ));
    }

    #[test]
    fn oversized_metadata_is_refused() {
        let mut meta = sample();
        meta.branch = "b".repeat(1900);
        assert!(matches!(meta.to_headers(), Err(MetadataError::TooLarge(_))));
    }
}
