//! Deploy records: what the Lambda decided for each object version, stored in S3.
//!
//! One JSON document per version at `deploy-records/<app>/<env>/<version-id>.json` (see
//! [`crate::key::ReleaseKey::record_key`]), first written with `If-None-Match: *` so a repeated
//! event cannot dispatch twice, plus one pointer per app/env at
//! `deploy-records/<app>/<env>/latest.json` naming the newest dispatched version and its S3
//! sequencer, so older events are skipped. The bundler's `versions` and `status` commands
//! read these documents: field names are part of the contract; add fields, never rename.

use serde::{Deserialize, Serialize};

use crate::fleet::{Fleet, Purpose};
use crate::key::ReleaseKey;
use crate::manifest::Manifest;
use crate::metadata::ObjectMetadata;

/// Version of the record format; readers refuse records with a newer number.
pub const RECORD_FORMAT: u32 = 1;

/// What the Lambda did with one object version (`snake_case` in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The version is claimed and being dispatched (or the dispatching invocation died;
    /// another invocation may take over once `lease_until` has passed).
    Dispatching,
    /// `SendCommand` accepted the command for every target; see `command_ids`.
    Dispatched,
    /// The object broke the contract (metadata, checksum, tar rules, manifest): never sent.
    Rejected,
    /// No running instance carried the app/env tags: nothing sent.
    NoTargets,
    /// A record for this version already existed: the event was a repeat (result only,
    /// never stored).
    SkippedDuplicate,
    /// The event's sequencer was older than the newest dispatched one for the key.
    SkippedStale,
    /// The event was not for dropship (other bucket, foreign key, delete marker); result
    /// only, never stored.
    Ignored,
    /// A host's result was stored and the fleet moved on (an SSM status-change event);
    /// result only, never a record's outcome.
    Recorded,
}

impl Outcome {
    /// The JSON / log spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Dispatching => "dispatching",
            Outcome::Dispatched => "dispatched",
            Outcome::Rejected => "rejected",
            Outcome::NoTargets => "no_targets",
            Outcome::SkippedDuplicate => "skipped_duplicate",
            Outcome::SkippedStale => "skipped_stale",
            Outcome::Ignored => "ignored",
            Outcome::Recorded => "recorded",
        }
    }

    /// Whether a stored record with this outcome settles the version for good (a repeat
    /// event is then a duplicate); only `dispatching` can be taken over.
    pub fn is_final(self) -> bool {
        !matches!(self, Outcome::Dispatching)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the Lambda was asked to deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// An EventBridge "Object Created" event from S3.
    Event,
    /// A direct invocation `{bucket, key, version_id}` by an operator (redeploy on purpose).
    Direct,
}

/// Facts from the triggering event, kept for audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventFacts {
    /// Event or direct invocation.
    pub trigger: Trigger,
    /// EventBridge event id (absent for direct invocations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// EventBridge event time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// S3's `reason` (`PutObject`, `CopyObject`, `CompleteMultipartUpload`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// S3 sequencer (upper-case hex) of the event; absent for direct invocations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequencer: Option<String>,
    /// S3 request id of the upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Object size the event reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Object ETag the event reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    /// `detail.requester` as the event payload carries it. S3 fills it in on the events it
    /// sends, but the Lambda cannot tell those from a payload forged by whoever may invoke it
    /// (`lambda:InvokeFunction`) or put events on a rule that targets it: like the object's
    /// `uploader` metadata it is a claim, shown for the record and never used for a decision.
    /// Who really wrote a version is in CloudTrail and the bucket's server access logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    /// The request's source IP address (`detail.source-ip-address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
}

impl EventFacts {
    /// Facts with only the trigger known (a direct invocation has nothing more); events fill
    /// in the rest with struct-update syntax.
    pub fn new(trigger: Trigger) -> Self {
        Self {
            trigger,
            event_id: None,
            event_time: None,
            reason: None,
            sequencer: None,
            request_id: None,
            size: None,
            etag: None,
            requester: None,
            source_ip: None,
        }
    }
}

/// Result of streaming the object through the verifier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verification {
    /// Whether every check passed.
    pub ok: bool,
    /// SHA-256 (lower-case hex) of the bytes actually read, when the stream was read to the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Compressed object size read.
    #[serde(default)]
    pub object_bytes: u64,
    /// Tar entries after the manifest.
    #[serde(default)]
    pub entries: u64,
    /// Sum of regular file sizes (what the host needs on disk).
    #[serde(default)]
    pub unpacked_bytes: u64,
    /// Why verification failed (names the entry and rule), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds spent verifying.
    #[serde(default)]
    pub millis: u64,
}

/// One SSM `SendCommand` call (a batch of at most 50 instances).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandBatch {
    /// SSM command id.
    pub command_id: String,
    /// Instance ids this batch targeted.
    pub instance_ids: Vec<String>,
    /// Deploy (a wave of the rollout) or the fleet rollback.
    #[serde(default)]
    pub purpose: Purpose,
}

/// The stored document for one object version (`deploy-records/<app>/<env>/<v…>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRecord {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    /// App name from the key.
    pub app: String,
    /// Environment name from the key.
    pub env: String,
    /// Bucket of the release object.
    pub bucket: String,
    /// Release object key (`releases/<app>/<env>.tar.gz`).
    pub key: String,
    /// Exact S3 version id this record is about.
    pub version_id: String,
    /// What happened.
    pub outcome: Outcome,
    /// Human-readable why (rejection reason, "no running instance tagged …", …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The triggering event.
    pub event: EventFacts,
    /// Decoded object metadata, when it could be read and was valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<ObjectMetadata>,
    /// Manifest from the bundle, when verification got that far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Manifest>,
    /// Verification result, when verification ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
    /// Instance ids the command was (or would have been) sent to.
    #[serde(default)]
    pub targets: Vec<String>,
    /// SSM commands sent, one per batch of ≤ 50 instances.
    #[serde(default)]
    pub commands: Vec<CommandBatch>,
    /// When this version was first claimed (RFC 3339 UTC).
    pub created_at: String,
    /// When this document was last written (RFC 3339 UTC).
    pub updated_at: String,
    /// For `dispatching`: until when the claiming invocation may still be running; after
    /// that another invocation may take the version over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<String>,
    /// How many invocations have worked on this version.
    #[serde(default)]
    pub attempts: u32,
    /// Last transient error that made an attempt give up (it was retried).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// AWS request id of the Lambda invocation that wrote this document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_request_id: Option<String>,
    /// The rollout (waves, fleet rollback, settled outcome), once the command was planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Fleet>,
    /// The version's ordering stamp from S3 itself ([`crate::sequencer::order_stamp`] of its
    /// `LastModified`), what hosts compare (`DROPSHIP_SEQUENCER`); never a payload value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stamp: Option<String>,
    /// Instances that carried the tags but were refused as targets, and why (e.g. not the
    /// (app, env)'s instance profile: tags alone can be set by anyone allowed to tag).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_targets: Vec<RefusedTarget>,
}

/// A tagged instance the deployer refused to send to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedTarget {
    /// Instance id.
    pub instance_id: String,
    /// Why, in words.
    pub reason: String,
}

impl DeployRecord {
    /// A record of `version_id` of `release`'s key in `bucket`, first written `at` (RFC 3339
    /// UTC), before anything was verified or sent.
    pub fn new(
        bucket: &str,
        release: &ReleaseKey,
        version_id: &str,
        outcome: Outcome,
        event: EventFacts,
        at: &str,
    ) -> Self {
        Self {
            format: RECORD_FORMAT,
            app: release.app().to_owned(),
            env: release.env().to_owned(),
            bucket: bucket.to_owned(),
            key: release.object_key(),
            version_id: version_id.to_owned(),
            outcome,
            reason: None,
            event,
            metadata: None,
            manifest: None,
            verification: None,
            targets: vec![],
            commands: vec![],
            created_at: at.to_owned(),
            updated_at: at.to_owned(),
            lease_until: None,
            attempts: 0,
            last_error: None,
            lambda_request_id: None,
            fleet: None,
            stamp: None,
            refused_targets: Vec::new(),
        }
    }

    /// Where this record is stored.
    pub fn s3_key(&self) -> Result<String, crate::key::KeyError> {
        Ok(ReleaseKey::new(&self.app, &self.env)?.record_key(&self.version_id))
    }

    /// Command ids sent for `purpose`.
    pub fn command_ids_for(&self, purpose: Purpose) -> std::collections::BTreeSet<String> {
        self.commands
            .iter()
            .filter(|c| c.purpose == purpose)
            .map(|c| c.command_id.clone())
            .collect()
    }

    /// All SSM command ids, in send order.
    pub fn command_ids(&self) -> Vec<&str> {
        self.commands
            .iter()
            .map(|c| c.command_id.as_str())
            .collect()
    }

    /// Serialise for storage (pretty, trailing newline) — what `PutObject` sends.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("deploy record serialises");
        out.push(b'\n');
        out
    }

    /// Parse a stored record, refusing formats newer than this reader.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RecordError> {
        let record: Self = serde_json::from_slice(bytes)?;
        if record.format > RECORD_FORMAT {
            return Err(RecordError::NewerFormat(record.format));
        }
        Ok(record)
    }
}

/// The per-app/env pointer (`deploy-records/<app>/<env>/latest.json`) to the newest
/// dispatched version; events with an older sequencer are skipped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatestPointer {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    /// App name.
    pub app: String,
    /// Environment name.
    pub env: String,
    /// Version id of the newest dispatched object.
    pub version_id: String,
    /// Its S3 sequencer (upper-case hex); compare with [`crate::sequencer::Sequencer`].
    pub sequencer: String,
    /// Its commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// When it was dispatched (RFC 3339 UTC).
    pub dispatched_at: String,
}

impl LatestPointer {
    /// The pointer naming `version_id` of `release`, dispatched `at` for the event with
    /// `sequencer`.
    pub fn new(
        release: &ReleaseKey,
        version_id: &str,
        sequencer: &str,
        commit: Option<String>,
        at: &str,
    ) -> Self {
        Self {
            format: RECORD_FORMAT,
            app: release.app().to_owned(),
            env: release.env().to_owned(),
            version_id: version_id.to_owned(),
            sequencer: sequencer.to_owned(),
            commit,
            dispatched_at: at.to_owned(),
        }
    }

    /// Where the pointer for `release` is stored.
    pub fn s3_key(release: &ReleaseKey) -> String {
        release.latest_pointer_key()
    }

    /// Serialise for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("pointer serialises");
        out.push(b'\n');
        out
    }

    /// Parse a stored pointer, refusing formats newer than this reader.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RecordError> {
        let pointer: Self = serde_json::from_slice(bytes)?;
        if pointer.format > RECORD_FORMAT {
            return Err(RecordError::NewerFormat(pointer.format));
        }
        Ok(pointer)
    }
}

/// Why a stored record or pointer cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not valid JSON for the record type.
    #[error("deploy record is not valid JSON for this format: {0}")]
    Json(#[from] serde_json::Error),
    /// Written by a newer dropship.
    #[error(
        "deploy record has format {0}, newer than {RECORD_FORMAT}: upgrade dropship to read it"
    )]
    NewerFormat(u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DeployRecord {
        let release = ReleaseKey::new("shop", "prod").unwrap();
        let event = EventFacts {
            event_id: Some("e".into()),
            event_time: Some("2026-11-23T09:00:00Z".into()),
            reason: Some("PutObject".into()),
            sequencer: Some("0055AED6DCD90281E5".into()),
            size: Some(10),
            ..EventFacts::new(Trigger::Event)
        };
        DeployRecord {
            verification: Some(Verification {
                ok: true,
                sha256: Some("0".repeat(64)),
                object_bytes: 10,
                entries: 2,
                unpacked_bytes: 5,
                error: None,
                millis: 1,
            }),
            targets: vec!["i-1".into()],
            commands: vec![CommandBatch {
                command_id: "c-1".into(),
                instance_ids: vec!["i-1".into()],
                purpose: Purpose::Deploy,
            }],
            updated_at: "2026-11-23T09:00:02Z".into(),
            attempts: 1,
            ..DeployRecord::new(
                "b",
                &release,
                "3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY",
                Outcome::Dispatched,
                event,
                "2026-11-23T09:00:01Z",
            )
        }
    }

    #[test]
    fn record_roundtrips_with_stable_field_names() {
        let r = sample();
        let bytes = r.to_bytes();
        assert_eq!(DeployRecord::from_bytes(&bytes).unwrap(), r);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["outcome"], "dispatched");
        assert_eq!(v["event"]["trigger"], "event");
        assert_eq!(v["commands"][0]["command_id"], "c-1");
        assert_eq!(v["verification"]["ok"], true);
        assert_eq!(r.command_ids(), vec!["c-1"]);
    }

    #[test]
    fn record_key_uses_the_contract_key_functions() {
        let r = sample();
        let key = r.s3_key().unwrap();
        assert!(key.starts_with("deploy-records/shop/prod/"), "{key}");
        assert!(key.ends_with(".json"));
        let release = ReleaseKey::new("shop", "prod").unwrap();
        assert_eq!(key, release.record_key(&r.version_id));
        assert_eq!(
            LatestPointer::s3_key(&release),
            "deploy-records/shop/prod/latest.json"
        );
    }

    #[test]
    fn outcomes_spell_as_documented() {
        for (o, s) in [
            (Outcome::Dispatching, "dispatching"),
            (Outcome::Dispatched, "dispatched"),
            (Outcome::Rejected, "rejected"),
            (Outcome::NoTargets, "no_targets"),
            (Outcome::SkippedDuplicate, "skipped_duplicate"),
            (Outcome::SkippedStale, "skipped_stale"),
            (Outcome::Ignored, "ignored"),
            (Outcome::Recorded, "recorded"),
        ] {
            assert_eq!(serde_json::to_value(o).unwrap(), s);
            assert_eq!(o.as_str(), s);
        }
        assert!(!Outcome::Dispatching.is_final());
        assert!(Outcome::Rejected.is_final());
    }

    #[test]
    fn newer_formats_are_refused() {
        let mut r = sample();
        r.format = RECORD_FORMAT + 1;
        assert!(matches!(
            DeployRecord::from_bytes(&r.to_bytes()),
            Err(RecordError::NewerFormat(_))
        ));
        let p = LatestPointer::new(
            &ReleaseKey::new("shop", "prod").unwrap(),
            "v",
            "00AB",
            None,
            "2026-11-23T09:00:02Z",
        );
        assert_eq!(LatestPointer::from_bytes(&p.to_bytes()).unwrap(), p);
    }
}
