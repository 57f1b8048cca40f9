//! `rollback <version-id>` (formerly `restore`): copy an older version on top of the key.
//! The copy is a new version with identical bytes and the old version's metadata plus
//! `restored-from`, so the deployer sees an ordinary "Object Created" event and redeploys it
//! through the same checks.
//!
//! Everything is checked before the one write: the id must be an upload of this key (not a
//! delete marker, not another key's), its metadata must satisfy the contract, and the
//! operator must confirm. The copy is conditional on the ETag that was checked. Pure: the
//! command that reads the facts and makes the copy is in [`crate::commands`].

use dropship_contract::metadata::ObjectMetadata;
use serde::Serialize;

use crate::history::VersionEntry;
use crate::{short, OpsError, Target};

/// What the history says about the requested id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// An upload of the key.
    Version(VersionEntry),
    /// A delete marker of the key.
    DeleteMarker,
    /// Not in the key's history.
    Unknown,
}

/// Finds `version_id` in the key's history.
pub fn lookup(history: &[VersionEntry], version_id: &str) -> Lookup {
    match history.iter().find(|e| e.version_id == version_id) {
        Some(e) if e.delete_marker => Lookup::DeleteMarker,
        Some(e) => Lookup::Version(e.clone()),
        None => Lookup::Unknown,
    }
}

/// Everything decided before the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPlan {
    /// Bucket and app/env.
    pub target: Target,
    /// The version to copy.
    pub source: VersionEntry,
    /// The source's ETag, required to still match at copy time.
    pub etag: Option<String>,
    /// Metadata of the new version: the source's plus `restored-from`.
    pub metadata: ObjectMetadata,
    /// The version the key points to now.
    pub current: Option<String>,
}

/// Checks the request against the facts and builds the plan (pure).
pub fn plan(
    target: &Target,
    history: &[VersionEntry],
    version_id: &str,
    source_metadata: Result<ObjectMetadata, String>,
    etag: Option<String>,
) -> Result<RollbackPlan, OpsError> {
    let url = target.url();
    if history.is_empty() {
        return Err(OpsError::NoVersions { url });
    }
    let source = match lookup(history, version_id) {
        Lookup::Version(e) => e,
        Lookup::DeleteMarker => {
            return Err(OpsError::DeleteMarker {
                url,
                version_id: version_id.to_string(),
            })
        }
        Lookup::Unknown => {
            return Err(OpsError::UnknownVersion {
                url,
                version_id: version_id.to_string(),
            })
        }
    };
    let metadata = source_metadata.map_err(|cause| OpsError::InvalidMetadata {
        url: url.clone(),
        version_id: version_id.to_string(),
        cause,
    })?;
    if metadata.app != target.release.app() || metadata.env != target.release.env() {
        return Err(OpsError::InvalidMetadata {
            url,
            version_id: version_id.to_string(),
            cause: format!(
                "it names {}/{}, not {}",
                metadata.app, metadata.env, target.release
            ),
        });
    }
    Ok(RollbackPlan {
        target: target.clone(),
        etag,
        metadata: metadata.restored(version_id),
        current: history
            .iter()
            .find(|e| e.is_latest && !e.delete_marker)
            .map(|e| e.version_id.clone()),
        source,
    })
}

impl RollbackPlan {
    /// What the rollback did once the copy created `new_version`.
    pub fn restored(&self, new_version: String) -> Restored {
        Restored {
            app: self.target.release.app().to_string(),
            env: self.target.release.env().to_string(),
            bucket: self.target.bucket.clone(),
            key: self.target.key(),
            restored_from: self.source.version_id.clone(),
            version_id: new_version,
            commit: self.metadata.commit.clone(),
            branch: self.metadata.branch.clone(),
            sha256: self.metadata.sha256.clone(),
        }
    }

    /// What the operator is asked to confirm.
    pub fn describe(&self) -> String {
        let m = &self.metadata;
        let mut out = format!(
            "Roll back {} to version {}\n  commit   {} ({}{})\n  uploaded {} by {}\n  message  {}\n",
            self.target.url(),
            self.source.version_id,
            m.commit,
            m.branch,
            if m.dirty { ", dirty" } else { "" },
            self.source.modified,
            m.uploader,
            short(&m.message, 72),
        );
        match &self.current {
            Some(c) if *c == self.source.version_id => out.push_str(
                "  note     this is already the current version: rolling back to it redeploys it\n",
            ),
            Some(c) => out.push_str(&format!("  replaces current version {c}\n")),
            None => {
                out.push_str("  the key has no current version (deleted): this brings it back\n")
            }
        }
        out.push_str("A new version is created and the deployer redeploys it to every host.\n");
        out
    }
}

/// How to get the operator's consent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consent {
    /// `--yes` was given.
    Given,
    /// Ask on the terminal.
    Ask,
    /// No terminal to ask on and no `--yes`: refuse.
    Refuse(String),
}

/// Decides how to confirm (pure): `--yes` wins; otherwise both stdin and stderr must be a
/// terminal to ask.
pub fn consent(yes: bool, stdin_tty: bool, stderr_tty: bool) -> Consent {
    if yes {
        Consent::Given
    } else if stdin_tty && stderr_tty {
        Consent::Ask
    } else {
        Consent::Refuse("not running on a terminal, so there is no one to confirm; pass --yes to roll back without asking".into())
    }
}

/// Whether an answer to the prompt means yes (`y` or `yes`, any case).
pub fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// The result of a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Restored {
    /// App name.
    pub app: String,
    /// Environment name.
    pub env: String,
    /// Bucket.
    pub bucket: String,
    /// Release key.
    pub key: String,
    /// The version copied.
    pub restored_from: String,
    /// The new version the copy created.
    pub version_id: String,
    /// Commit of the restored bundle.
    pub commit: String,
    /// Branch of the restored bundle.
    pub branch: String,
    /// SHA-256 of the bundle (unchanged by the copy).
    pub sha256: String,
}

impl Restored {
    /// The human summary.
    pub fn render(&self) -> String {
        format!(
            "Rolled back {}/{} to version {}: copied as new version {}\n  key      s3://{}/{}\n  commit   {} ({})\n  sha256   {}\n",
            self.app, self.env, self.restored_from, self.version_id, self.bucket, self.key, self.commit, self.branch, self.sha256
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use dropship_contract::key::ReleaseKey;
    use dropship_contract::metadata::Source;

    fn target() -> Target {
        Target {
            bucket: "b".into(),
            release: ReleaseKey::new("shop", "prod").unwrap(),
        }
    }

    /// A history entry of the key (an upload, or a delete marker).
    pub(crate) fn entry(id: &str, latest: bool, marker: bool) -> VersionEntry {
        VersionEntry {
            version_id: id.into(),
            modified: "2026-11-23T09:00:00Z".into(),
            modified_ms: 0,
            is_latest: latest,
            delete_marker: marker,
            size: None,
        }
    }

    fn meta() -> ObjectMetadata {
        ObjectMetadata {
            app: "shop".into(),
            env: "prod".into(),
            branch: "main".into(),
            commit: "a".repeat(40),
            dirty: false,
            sha256: "0".repeat(64),
            created: "2026-11-23T09:00:00Z".into(),
            uploader: "dev".into(),
            source: Source::Local,
            message: "v1".into(),
            restored_from: Some("older".into()),
            promoted_from: None,
        }
    }

    fn history() -> Vec<VersionEntry> {
        vec![
            entry("v3", true, false),
            entry("m1", false, true),
            entry("v1", false, false),
        ]
    }

    #[test]
    fn plans_a_copy_with_the_source_metadata_plus_restored_from() {
        let p = plan(
            &target(),
            &history(),
            "v1",
            Ok(meta()),
            Some("\"etag\"".into()),
        )
        .unwrap();
        assert_eq!(p.metadata.restored_from.as_deref(), Some("v1"));
        assert_eq!(p.metadata.commit, "a".repeat(40));
        assert_eq!(p.metadata.created, meta().created);
        assert_eq!(p.current.as_deref(), Some("v3"));
        assert_eq!(p.etag.as_deref(), Some("\"etag\""));
        let text = p.describe();
        assert!(
            text.contains("replaces current version v3") && text.contains(&"a".repeat(40)),
            "{text}"
        );
    }

    #[test]
    fn refuses_unknown_ids_delete_markers_bad_metadata_and_foreign_apps() {
        let err = plan(&target(), &history(), "nope", Ok(meta()), None).unwrap_err();
        assert!(matches!(err, OpsError::UnknownVersion { .. }), "{err}");
        let err = plan(&target(), &history(), "m1", Ok(meta()), None).unwrap_err();
        assert!(matches!(err, OpsError::DeleteMarker { .. }), "{err}");
        assert!(
            err.to_string().contains("delete marker")
                && err.to_string().contains("nothing was written")
        );
        let err = plan(
            &target(),
            &history(),
            "v1",
            Err("field sha256 missing".into()),
            None,
        )
        .unwrap_err();
        assert!(
            matches!(err, OpsError::InvalidMetadata { .. }) && err.to_string().contains("sha256"),
            "{err}"
        );
        let mut other = meta();
        other.env = "staging".into();
        let err = plan(&target(), &history(), "v1", Ok(other), None).unwrap_err();
        assert!(err.to_string().contains("shop/staging"), "{err}");
        let err = plan(&target(), &[], "v1", Ok(meta()), None).unwrap_err();
        assert!(matches!(err, OpsError::NoVersions { .. }));
    }

    #[test]
    fn restoring_the_current_version_is_allowed_and_said() {
        let p = plan(&target(), &history(), "v3", Ok(meta()), None).unwrap();
        assert!(p.describe().contains("already the current version"));
    }

    #[test]
    fn consent_needs_yes_or_a_terminal() {
        assert_eq!(consent(true, false, false), Consent::Given);
        assert_eq!(consent(false, true, true), Consent::Ask);
        assert!(matches!(consent(false, false, true), Consent::Refuse(m) if m.contains("--yes")));
        assert!(matches!(consent(false, true, false), Consent::Refuse(_)));
        assert!(is_yes("y\n") && is_yes(" YES ") && !is_yes("") && !is_yes("no") && !is_yes("yep"));
    }
}
