//! `promote <from-env> <to-env>`: copy one exact version of the source environment's key onto
//! the target environment's key, server side. Bundles name no environment (manifest format 2),
//! so the copy is byte for byte the bundle the source environment ran; its metadata is the
//! source's under the target environment plus `promoted-from-env` / `promoted-from-version`,
//! and the deployer verifies and dispatches it like any upload.
//!
//! By default only a version whose deploy settled `succeeded` in the source environment (every
//! host ran it, from the deployer's stored results) may be promoted; `--force` overrides that,
//! loudly. Pure: the command that reads the facts and makes the copy is in [`crate::commands`].

use dropship_contract::metadata::ObjectMetadata;
use serde::Serialize;

use crate::history::VersionEntry;
use crate::rollback::{lookup, Lookup};
use crate::status::Verdict;
use crate::{OpsError, Target};

/// Which source version to promote.
pub fn source_version(
    from: &Target,
    history: &[VersionEntry],
    asked: Option<&str>,
) -> Result<VersionEntry, OpsError> {
    let url = from.url();
    if history.is_empty() {
        return Err(OpsError::NoVersions { url });
    }
    match asked {
        Some(id) => match lookup(history, id) {
            Lookup::Version(e) => Ok(e),
            Lookup::DeleteMarker => Err(OpsError::DeleteMarker {
                url,
                version_id: id.to_string(),
            }),
            Lookup::Unknown => Err(OpsError::UnknownVersion {
                url,
                version_id: id.to_string(),
            }),
        },
        None => history
            .iter()
            .find(|e| e.is_latest && !e.delete_marker)
            .cloned()
            .ok_or(OpsError::NoVersions { url }),
    }
}

/// Everything decided before the one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromotePlan {
    /// The source app/env.
    pub from: Target,
    /// The target app/env (same bucket and app).
    pub to: Target,
    /// The source version copied.
    pub source: VersionEntry,
    /// Its ETag, required to still match at copy time.
    pub etag: Option<String>,
    /// Metadata of the new target version.
    pub metadata: ObjectMetadata,
    /// How the source version's deploy ended in the source environment.
    pub verdict: Verdict,
    /// Promoted although the verdict is not `succeeded` or the source is untrusted.
    pub forced: bool,
    /// Why the source version is not a CI build of a commit (`--force` only), if it is not.
    pub untrusted: Option<String>,
}

/// Why a version's metadata says it is not a CI build of a clean commit: `None` when it is.
/// The metadata is self-declared by the uploader, so this stops mistakes (a developer's
/// local or dirty upload to staging going on to production), not a hostile uploader.
pub fn untrusted_source(metadata: &ObjectMetadata) -> Option<String> {
    use dropship_contract::metadata::Source;
    match (metadata.source, metadata.dirty) {
        (Source::Ci, false) => None,
        (Source::Ci, true) => Some("was built from a dirty working tree (dirty=true)".into()),
        (Source::Local, false) => {
            Some("was uploaded from a developer's machine (source=local), not by CI".into())
        }
        (Source::Local, true) => Some(
            "was uploaded from a developer's machine (source=local) from a dirty working tree (dirty=true)"
                .into(),
        ),
    }
}

/// Checks the request against the facts and builds the plan (pure): two different
/// environments of one app, a source version with valid metadata of the source environment,
/// and a `succeeded` verdict unless `force`.
pub fn plan(
    from: &Target,
    to: &Target,
    source: VersionEntry,
    source_metadata: Result<ObjectMetadata, String>,
    etag: Option<String>,
    verdict: Verdict,
    force: bool,
) -> Result<PromotePlan, OpsError> {
    let version_id = source.version_id.clone();
    let metadata = source_metadata.map_err(|cause| OpsError::InvalidMetadata {
        url: from.url(),
        version_id: version_id.clone(),
        cause,
    })?;
    if metadata.app != from.release.app() || metadata.env != from.release.env() {
        return Err(OpsError::InvalidMetadata {
            url: from.url(),
            version_id,
            cause: format!(
                "it names {}/{}, not {}",
                metadata.app, metadata.env, from.release
            ),
        });
    }
    if verdict != Verdict::Succeeded && !force {
        return Err(OpsError::NotPromotable {
            url: from.url(),
            version_id,
            verdict: verdict.as_str(),
            to_env: to.release.env().to_string(),
        });
    }
    let untrusted = untrusted_source(&metadata);
    if let (Some(why), false) = (&untrusted, force) {
        return Err(OpsError::UntrustedSource {
            url: from.url(),
            version_id,
            why: why.clone(),
            to_env: to.release.env().to_string(),
        });
    }
    Ok(PromotePlan {
        from: from.clone(),
        to: to.clone(),
        etag,
        metadata: metadata.promoted(to.release.env(), &source.version_id),
        source,
        verdict,
        forced: verdict != Verdict::Succeeded || untrusted.is_some(),
        untrusted,
    })
}

/// The two environments must differ (checked before anything is read).
pub fn check_pair(from_env: &str, to_env: &str) -> Result<(), OpsError> {
    if from_env == to_env {
        return Err(OpsError::SameEnvironment {
            env: from_env.to_string(),
        });
    }
    Ok(())
}

impl PromotePlan {
    /// The loud warning `--force` prints when the source deploy did not succeed everywhere
    /// or the source is not a CI build of a clean commit.
    pub fn warning(&self) -> Option<String> {
        if !self.forced {
            return None;
        }
        let mut out = Vec::new();
        if self.verdict != Verdict::Succeeded {
            out.push(format!(
                "WARNING: --force: promoting version {} of {} to {} although its deploy there is `{}`, not `succeeded`: it did not run on every {} host. {} gets it anyway.",
                self.source.version_id,
                self.from.release,
                self.to.release.env(),
                self.verdict.as_str(),
                self.from.release.env(),
                self.to.release,
            ));
        }
        if let Some(why) = &self.untrusted {
            out.push(format!(
                "WARNING: --force: promoting version {} of {} to {} although it {why}.",
                self.source.version_id,
                self.from.release,
                self.to.release.env(),
            ));
        }
        Some(out.join("\n"))
    }

    /// What would be copied, shown before asking (or refusing) when no `--version` was
    /// given. Commit, branch, uploader and message are what the uploader declared.
    pub fn describe(&self) -> String {
        let m = &self.metadata;
        format!(
            "Promote {from} version {v} (its current version) to {to}\n  commit   {c} ({b}{dirty})\n  uploaded {when} by {who} (source={src}; as declared by the uploader)\n  message  {msg}\n  in {fenv}  {verdict}\n",
            from = self.from.url(),
            v = self.source.version_id,
            to = self.to.url(),
            c = m.commit,
            b = m.branch,
            dirty = if m.dirty { ", dirty" } else { "" },
            when = self.source.modified,
            who = m.uploader,
            src = m.source.as_str(),
            msg = crate::short(&m.message, 72),
            fenv = self.from.release.env(),
            verdict = self.verdict.as_str(),
        )
    }

    /// What the promotion did once the copy created `new_version`.
    pub fn promoted(&self, new_version: String) -> Promoted {
        Promoted {
            app: self.to.release.app().to_string(),
            from_env: self.from.release.env().to_string(),
            to_env: self.to.release.env().to_string(),
            bucket: self.to.bucket.clone(),
            source_key: self.from.key(),
            source_version_id: self.source.version_id.clone(),
            source_verdict: self.verdict.as_str(),
            forced: self.forced,
            key: self.to.key(),
            version_id: new_version,
            commit: self.metadata.commit.clone(),
            branch: self.metadata.branch.clone(),
            sha256: self.metadata.sha256.clone(),
        }
    }
}

/// The result of a promotion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Promoted {
    /// App name.
    pub app: String,
    /// Source environment.
    pub from_env: String,
    /// Target environment.
    pub to_env: String,
    /// Bucket.
    pub bucket: String,
    /// Source release key.
    pub source_key: String,
    /// The source version copied.
    pub source_version_id: String,
    /// How its deploy ended in the source environment.
    pub source_verdict: &'static str,
    /// Promoted with `--force` past a verdict other than `succeeded`.
    pub forced: bool,
    /// Target release key.
    pub key: String,
    /// The new target version the copy created.
    pub version_id: String,
    /// Commit of the bundle.
    pub commit: String,
    /// Branch of the bundle.
    pub branch: String,
    /// SHA-256 of the bundle (the source's: the bytes are copied unchanged).
    pub sha256: String,
}

impl Promoted {
    /// The human summary.
    pub fn render(&self) -> String {
        format!(
            "Promoted {app}/{from} version {sv} to {app}/{to}: new version {v}\n  key      s3://{b}/{k}\n  source   s3://{b}/{sk} ({verdict}{forced})\n  commit   {c} ({br})\n  sha256   {sha}\nThe deployer verifies it and deploys it to every {to} host.\n",
            app = self.app,
            from = self.from_env,
            to = self.to_env,
            sv = self.source_version_id,
            v = self.version_id,
            b = self.bucket,
            k = self.key,
            sk = self.source_key,
            verdict = self.source_verdict,
            forced = if self.forced { ", forced" } else { "" },
            c = self.commit,
            br = self.branch,
            sha = self.sha256,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollback::tests::entry;
    use dropship_contract::key::ReleaseKey;
    use dropship_contract::metadata::{PromotedFrom, Source};

    fn target(env: &str) -> Target {
        Target {
            bucket: "b".into(),
            release: ReleaseKey::new("shop", env).unwrap(),
        }
    }

    fn meta(env: &str) -> ObjectMetadata {
        ObjectMetadata {
            app: "shop".into(),
            env: env.into(),
            branch: "main".into(),
            commit: "a".repeat(40),
            dirty: false,
            sha256: "0".repeat(64),
            created: "2026-11-23T09:00:00Z".into(),
            uploader: "ci".into(),
            source: Source::Ci,
            message: "v1".into(),
            restored_from: None,
            promoted_from: None,
        }
    }

    #[test]
    fn the_current_version_or_the_one_asked_for_is_the_source() {
        let from = target("staging");
        let history = vec![
            entry("v3", true, false),
            entry("m2", false, true),
            entry("v1", false, false),
        ];
        assert_eq!(
            source_version(&from, &history, None).unwrap().version_id,
            "v3"
        );
        assert_eq!(
            source_version(&from, &history, Some("v1"))
                .unwrap()
                .version_id,
            "v1"
        );
        assert!(matches!(
            source_version(&from, &history, Some("m2")),
            Err(OpsError::DeleteMarker { .. })
        ));
        assert!(matches!(
            source_version(&from, &history, Some("nope")),
            Err(OpsError::UnknownVersion { .. })
        ));
        assert!(matches!(
            source_version(&from, &[], None),
            Err(OpsError::NoVersions { .. })
        ));
        // The key's newest entry is a delete marker: no current version to promote.
        let deleted = vec![entry("m9", true, true), entry("v1", false, false)];
        assert!(matches!(
            source_version(&from, &deleted, None),
            Err(OpsError::NoVersions { .. })
        ));
    }

    #[test]
    fn a_succeeded_version_is_promoted_with_its_origin_recorded() {
        let (from, to) = (target("staging"), target("production"));
        let p = plan(
            &from,
            &to,
            entry("v3", true, false),
            Ok(meta("staging")),
            Some("\"e\"".into()),
            Verdict::Succeeded,
            false,
        )
        .unwrap();
        assert!(!p.forced && p.warning().is_none());
        assert_eq!(p.metadata.env, "production");
        assert_eq!(
            p.metadata.promoted_from,
            Some(PromotedFrom {
                env: "staging".into(),
                version_id: "v3".into()
            })
        );
        let done = p.promoted("p1".into());
        assert_eq!(done.key, "releases/shop/production.tar.gz");
        assert_eq!(done.source_key, "releases/shop/staging.tar.gz");
        assert_eq!(done.source_verdict, "succeeded");
        let text = done.render();
        assert!(text.contains("p1") && text.contains("v3"), "{text}");
    }

    #[test]
    fn a_version_not_deployed_everywhere_is_refused_naming_the_verdict_and_force() {
        let (from, to) = (target("staging"), target("production"));
        for verdict in [
            Verdict::RolledBack,
            Verdict::Failed,
            Verdict::PartiallyDeployed,
            Verdict::Pending,
            Verdict::Refused,
            Verdict::RollbackFailed,
        ] {
            let staged = |force| {
                plan(
                    &from,
                    &to,
                    entry("v3", true, false),
                    Ok(meta("staging")),
                    None,
                    verdict,
                    force,
                )
            };
            let err = staged(false).unwrap_err();
            let msg = err.to_string();
            assert!(err.is_usage(), "{msg}");
            assert!(
                msg.contains(verdict.as_str()) && msg.contains("--force") && msg.contains("v3"),
                "{msg}"
            );
            let forced = staged(true).unwrap();
            let warning = forced.warning().unwrap();
            assert!(forced.forced && forced.promoted("p".into()).forced);
            assert!(
                warning.starts_with("WARNING") && warning.contains(verdict.as_str()),
                "{warning}"
            );
        }
    }

    #[test]
    fn foreign_or_broken_metadata_and_one_environment_twice_are_refused() {
        let (from, to) = (target("staging"), target("production"));
        let err = plan(
            &from,
            &to,
            entry("v3", true, false),
            Ok(meta("production")),
            None,
            Verdict::Succeeded,
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("shop/production"), "{err}");
        let err = plan(
            &from,
            &to,
            entry("v3", true, false),
            Err("metadata field \"sha256\" is missing".into()),
            None,
            Verdict::Succeeded,
            true,
        )
        .unwrap_err();
        assert!(err.to_string().contains("sha256"), "{err}");
        let err = check_pair("staging", "staging").unwrap_err();
        assert!(
            err.is_usage() && err.to_string().contains("staging"),
            "{err}"
        );
        check_pair("staging", "production").unwrap();
    }
}
