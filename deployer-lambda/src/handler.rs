//! One invocation, end to end, callable in-process (tests, the local pipeline) and from the
//! Lambda runtime loop in `main.rs`. [`Deployer`] is generic over its AWS edges
//! ([`crate::edges::Edges`]): the SDK clients in the Lambda, in-memory fakes in unit tests.
//!
//! Order of work: parse → gate on stored state (duplicate, busy, stale) → claim the version
//! with a conditional write → `HeadObject` (metadata) → stream-verify the bytes → find targets
//! → render and send the command in batches → settle the record → advance the pointer.
//! Permanent failures (bad bundle, no targets) settle the record and return `Ok` with the
//! outcome, so Lambda does not retry them; transient ones release the claim and return `Err`
//! so Lambda's async retry applies.

use dropship_aws::AwsError;
use dropship_contract::record::{DeployRecord, Outcome};
use dropship_contract::tar_rules::Limits;
use dropship_contract::verify::{VerifyError, VerifyLimits};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::config::Config;
use crate::edges::{Edges, Head, Written};
use crate::event::{self, DeployRequest, EventError, Request};
use crate::plan::{self, Claim, Gate, HostInputs, Rejection};
use crate::store::Records;

/// What the invocation answers (also the JSON result Lambda records for it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// What happened.
    pub outcome: Outcome,
    /// Why, in words (rejection reason, ignore reason, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Bucket of the release object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Key of the release object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Version id acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// Commit of the version, once its metadata was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Where the deploy record is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_key: Option<String>,
    /// Instances the command went to.
    #[serde(default)]
    pub targets: Vec<String>,
    /// SSM command ids.
    #[serde(default)]
    pub command_ids: Vec<String>,
}

impl Response {
    fn ignored(reason: String) -> Self {
        Self {
            outcome: Outcome::Ignored,
            reason: Some(reason),
            bucket: None,
            key: None,
            version_id: None,
            commit: None,
            record_key: None,
            targets: vec![],
            command_ids: vec![],
        }
    }

    fn from_record(
        record: &DeployRecord,
        outcome: Outcome,
        reason: Option<String>,
        record_key: String,
    ) -> Self {
        Self {
            outcome,
            reason,
            bucket: Some(record.bucket.clone()),
            key: Some(record.key.clone()),
            version_id: Some(record.version_id.clone()),
            commit: record.metadata.as_ref().map(|m| m.commit.clone()),
            record_key: Some(record_key),
            targets: record.targets.clone(),
            command_ids: record
                .command_ids()
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }
    }
}

/// Why an invocation failed; Lambda retries it (async invocations) and finally sends the
/// event to the on-failure destination.
#[derive(Debug, Error)]
pub enum HandlerError {
    /// The payload is malformed; it names the missing field.
    #[error(transparent)]
    Event(#[from] EventError),
    /// An AWS call failed transiently.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// Another invocation holds the version's claim.
    #[error("{0}")]
    Busy(String),
    /// Reading the object failed mid-stream.
    #[error("reading s3://{bucket}/{key} version {version_id:?} failed: {source}")]
    Read {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Version id.
        version_id: String,
        /// The read error.
        #[source]
        source: VerifyError,
    },
    /// The record changed under a claim this invocation held (its lease ran out).
    #[error(
        "deploy record {record_key} was rewritten by another invocation while this one held \
         the claim (it ran past its lease); check the record and the SSM commands it lists"
    )]
    LostClaim {
        /// The record's key.
        record_key: String,
    },
}

impl HandlerError {
    /// Short error type for the Lambda error response (`errorType`).
    pub fn kind(&self) -> &'static str {
        match self {
            HandlerError::Event(_) => "MalformedEvent",
            HandlerError::Aws(_) => "AwsCallFailed",
            HandlerError::Busy(_) => "VersionBusy",
            HandlerError::Read { .. } => "BundleReadFailed",
            HandlerError::LostClaim { .. } => "LostClaim",
        }
    }
}

/// Facts about the running invocation.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// Lambda's request id, stored in records.
    pub request_id: Option<String>,
    /// When Lambda stops this invocation; the claim lease ends then.
    pub deadline: Option<OffsetDateTime>,
}

/// The Lambda's state across invocations: configuration and its AWS edges, nothing else.
#[derive(Debug, Clone)]
pub struct Deployer<E> {
    config: Config,
    edges: E,
}

impl<E: Edges> Deployer<E> {
    /// A deployer for validated configuration and its edges (SDK clients in the Lambda).
    pub fn new(config: Config, edges: E) -> Self {
        Self { config, edges }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Handle one invocation payload.
    pub async fn handle(
        &self,
        payload: &Value,
        inv: &Invocation,
    ) -> Result<Response, HandlerError> {
        let request = match event::parse(payload, &self.config) {
            Ok(Request::Deploy(r)) => r,
            Ok(Request::Ignore(reason)) => {
                info!(outcome = "ignored", reason = %reason, "event ignored");
                return Ok(Response::ignored(reason));
            }
            Err(e) => {
                warn!(error = %e, "malformed invocation payload");
                return Err(e.into());
            }
        };
        let store = Records::new(&self.edges, &request.bucket);
        let record_key = request.release.record_key(&request.version_id);
        let now = OffsetDateTime::now_utc();
        let existing = store.record(&request.release, &request.version_id).await?;
        let pointer = match request.sequencer {
            Some(_) => store.pointer(&request.release).await?,
            None => None,
        };
        let gate = plan::gate(
            &request,
            existing.as_ref().map(|s| &s.doc),
            pointer.as_ref().map(|s| &s.doc),
            now,
        );
        let request_id = inv.request_id.as_deref();
        let claim = match gate {
            Gate::Proceed(claim) => claim,
            Gate::Duplicate(reason) => {
                let record = existing.expect("a duplicate has a record").doc;
                info!(outcome = "skipped_duplicate", key = %request.key, version_id = %request.version_id, reason = %reason, "repeated event: no second command");
                if record.outcome == Outcome::Dispatched {
                    // A previous attempt may have dispatched and failed before moving the pointer.
                    self.advance_pointer(&store, &request, &record).await?;
                }
                return Ok(Response::from_record(
                    &record,
                    Outcome::SkippedDuplicate,
                    Some(reason),
                    record_key,
                ));
            }
            Gate::Busy(reason) => {
                warn!(key = %request.key, version_id = %request.version_id, reason = %reason, "version claimed by another invocation");
                return Err(HandlerError::Busy(reason));
            }
            Gate::Stale(reason) => {
                info!(outcome = "skipped_stale", key = %request.key, version_id = %request.version_id, reason = %reason, "older event skipped");
                let old = existing.as_ref();
                let record =
                    plan::stale_record(&request, &reason, old.map(|s| &s.doc), now, request_id);
                let etag = old.map(|s| s.etag.as_str());
                if store.write_record(&record, etag).await? == Written::Conflict {
                    info!(record = %record_key, "stale record already written by another invocation");
                }
                return Ok(Response::from_record(
                    &record,
                    Outcome::SkippedStale,
                    Some(reason),
                    record_key,
                ));
            }
        };

        // Claim the version.
        let etag = existing.as_ref().map(|s| s.etag.clone());
        let lease_until = plan::lease_end(inv.deadline, now);
        let mut record = plan::claim_record(
            &request,
            &claim,
            existing.map(|s| s.doc),
            now,
            lease_until,
            request_id,
        );
        let etag = match claim {
            Claim::New => None,
            Claim::TakeOver | Claim::Redeploy => etag,
        };
        let mut etag = match store.write_record(&record, etag.as_deref()).await? {
            Written::Ok(e) => e,
            Written::Conflict => {
                let reason = format!(
                    "version {} of {} was claimed by another invocation at the same moment; retry to see its outcome",
                    request.version_id, request.key
                );
                warn!(reason = %reason, "lost the claim race");
                return Err(HandlerError::Busy(reason));
            }
        };
        info!(key = %request.key, version_id = %request.version_id, claim = ?claim, attempt = record.attempts, "version claimed");

        let result = self
            .dispatch(
                &request,
                &store,
                &mut record,
                &mut etag,
                claim == Claim::TakeOver,
            )
            .await;
        match result {
            Ok((outcome, reason)) => {
                plan::settle(
                    &mut record,
                    outcome,
                    reason.clone(),
                    OffsetDateTime::now_utc(),
                );
                match store.write_record(&record, Some(&etag)).await? {
                    Written::Ok(_) => {}
                    Written::Conflict => return Err(HandlerError::LostClaim { record_key }),
                }
                if outcome == Outcome::Dispatched {
                    self.advance_pointer(&store, &request, &record).await?;
                    info!(outcome = "dispatched", key = %request.key, version_id = %request.version_id,
                        commit = record.metadata.as_ref().map(|m| m.commit.as_str()).unwrap_or_default(),
                        targets = ?record.targets, command_ids = ?record.command_ids(), "deploy command sent");
                } else {
                    warn!(outcome = %outcome, key = %request.key, version_id = %request.version_id,
                        reason = reason.as_deref().unwrap_or_default(), "nothing sent");
                }
                Ok(Response::from_record(&record, outcome, reason, record_key))
            }
            Err(e) => {
                // Release the claim at once so Lambda's retry can take over, keeping progress.
                plan::release_claim(&mut record, e.to_string(), OffsetDateTime::now_utc());
                if let Err(write) = store.write_record(&record, Some(&etag)).await {
                    warn!(error = %write, "could not release the claim; it expires at its lease");
                }
                warn!(error = %e, key = %request.key, version_id = %request.version_id, "transient failure; Lambda retries");
                Err(e)
            }
        }
    }

    /// Everything after the claim. `Ok` is the outcome (and why) that settles the version;
    /// `Err` is transient.
    async fn dispatch(
        &self,
        request: &DeployRequest,
        store: &Records<'_, E>,
        record: &mut DeployRecord,
        etag: &mut String,
        takeover: bool,
    ) -> Result<(Outcome, Option<String>), HandlerError> {
        let rejected = |r: Rejection| Ok((Outcome::Rejected, Some(r.to_string())));
        let (bucket, key, version) = (&request.bucket, &request.key, &request.version_id);

        // 1. Metadata of exactly this version; a missing version fails closed.
        let (headers, size) = match self.edges.head_version(bucket, key, version).await? {
            Head::Found { metadata, size } => (metadata, size),
            Head::Missing(detail) => {
                return rejected(Rejection::VersionMissing {
                    bucket: bucket.clone(),
                    key: key.clone(),
                    version_id: version.clone(),
                    detail,
                })
            }
        };
        let metadata = match plan::check_metadata(request, &headers) {
            Ok(m) => m,
            Err(r) => return rejected(r),
        };
        record.metadata = Some(metadata.clone());
        if size > self.config.max_bundle_bytes {
            return rejected(Rejection::TooLarge {
                bucket: bucket.clone(),
                key: key.clone(),
                version_id: version.clone(),
                size,
                limit: self.config.max_bundle_bytes,
            });
        }

        // 2. Stream the bytes once through the verifier.
        let limits = VerifyLimits {
            max_object_bytes: self.config.max_bundle_bytes,
            entries: Limits::default(),
        };
        let started = std::time::Instant::now();
        let verified = match self
            .edges
            .verify_version(
                bucket,
                key,
                version,
                plan::expected_bundle(&metadata),
                limits,
            )
            .await?
        {
            Ok(v) => v,
            Err(e) if e.is_transient() => {
                return Err(HandlerError::Read {
                    bucket: bucket.clone(),
                    key: key.clone(),
                    version_id: version.clone(),
                    source: e,
                })
            }
            Err(source) => {
                let r = Rejection::Bundle {
                    bucket: bucket.clone(),
                    key: key.clone(),
                    version_id: version.clone(),
                    source,
                };
                record.verification = r.verification(started.elapsed().as_millis() as u64);
                return rejected(r);
            }
        };
        record.verification = Some(plan::verification_summary(&verified));
        record.manifest = Some(verified.manifest.clone());
        info!(key = %key, version_id = %version, bytes = verified.object_bytes, entries = verified.entries,
            millis = verified.millis, "bundle verified");

        // 3. Targets.
        let c = &self.config;
        let targets = self
            .edges
            .running_instances(
                (&c.app_tag_key, request.release.app()),
                (&c.env_tag_key, request.release.env()),
            )
            .await?;
        if targets.is_empty() {
            return Ok((
                Outcome::NoTargets,
                Some(format!(
                    "no running instance is tagged {}={} and {}={}; nothing was sent. Tag the hosts, then redeploy version {} with a direct invocation",
                    c.app_tag_key,
                    request.release.app(),
                    c.env_tag_key,
                    request.release.env(),
                    version
                )),
            ));
        }
        record.targets = targets.clone();

        // 4. The command.
        let url = self
            .edges
            .presign_version(bucket, key, version, c.presign_ttl_secs)
            .await?;
        let inputs = HostInputs {
            config: c,
            request,
            metadata: &metadata,
            verified: &verified,
            bundle_url: &url,
        };
        let full_plan = match plan::plan_command(&inputs, &targets) {
            Ok(p) => p,
            Err(r) => return rejected(r),
        };

        // 5. After a crashed attempt, adopt the commands it sent but could not record.
        if takeover {
            let since = plan::adoption_window_start(record, OffsetDateTime::now_utc());
            for (batch, script) in self.edges.commands_since(since, &full_plan.comment).await? {
                let known = record
                    .commands
                    .iter()
                    .any(|c| c.command_id == batch.command_id);
                if !known && plan::script_is_for_version(&script, version) {
                    info!(command_id = %batch.command_id, "adopting a command sent by an earlier attempt");
                    record.commands.push(batch);
                }
            }
        }
        let remaining = plan::remaining_targets(&targets, record);
        let send_plan = plan::CommandPlan {
            batches: plan::batches(&remaining),
            ..full_plan
        };
        for batch in &send_plan.batches {
            let sent = self.edges.send_command(&send_plan, batch).await?;
            info!(command_id = %sent.command_id, instances = ?sent.instance_ids, "SendCommand accepted");
            record.commands.push(sent);
            // Persist progress so a retry never sends to these instances again.
            record.updated_at = plan::format_time(OffsetDateTime::now_utc());
            match store.write_record(record, Some(etag)).await? {
                Written::Ok(e) => *etag = e,
                Written::Conflict => {
                    return Err(HandlerError::LostClaim {
                        record_key: request.release.record_key(version),
                    })
                }
            }
        }
        Ok((Outcome::Dispatched, None))
    }

    /// Move the latest pointer forward to this dispatched event (never backward).
    async fn advance_pointer(
        &self,
        store: &Records<'_, E>,
        request: &DeployRequest,
        record: &DeployRecord,
    ) -> Result<(), HandlerError> {
        let Some(seq) = &request.sequencer else {
            return Ok(());
        };
        for _ in 0..5 {
            let current = store.pointer(&request.release).await?;
            if !plan::pointer_needs_update(current.as_ref().map(|s| &s.doc), seq) {
                return Ok(());
            }
            let pointer = plan::pointer_to(request, record, seq, OffsetDateTime::now_utc());
            match store
                .write_pointer(
                    &request.release,
                    &pointer,
                    current.as_ref().map(|s| s.etag.as_str()),
                )
                .await?
            {
                Written::Ok(_) => return Ok(()),
                Written::Conflict => continue,
            }
        }
        Err(HandlerError::Busy(format!(
            "latest pointer {} kept changing under concurrent writes; retry",
            request.release.latest_pointer_key()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fakes::{FakeAws, Interference, COMMIT};
    use dropship_contract::host::HostVar;
    use dropship_contract::key::ReleaseKey;
    use dropship_contract::record::{CommandBatch, EventFacts, LatestPointer, Trigger};
    use dropship_contract::shell;
    use serde_json::json;

    const VERSION: &str = "v2";
    const SEQUENCER: &str = "00BB";

    fn config() -> Config {
        Config::from_lookup(|k| (k == "DROPSHIP_ALLOWED_BUCKETS").then(|| "rel-bucket".to_owned()))
            .unwrap()
    }

    fn release() -> ReleaseKey {
        ReleaseKey::new("shop", "prod").unwrap()
    }

    fn event() -> Value {
        json!({
            "version": "0", "id": "e-1", "detail-type": "Object Created", "source": "aws.s3",
            "account": "1", "time": "2026-11-23T09:00:00Z", "region": "us-east-1",
            "resources": [],
            "detail": {"version": "0", "bucket": {"name": "rel-bucket"},
                "object": {"key": "releases/shop/prod.tar.gz", "size": 1, "etag": "x",
                           "version-id": VERSION, "sequencer": SEQUENCER},
                "reason": "PutObject"}
        })
    }

    fn request() -> DeployRequest {
        match event::parse(&event(), &config()).unwrap() {
            Request::Deploy(d) => d,
            Request::Ignore(r) => panic!("{r}"),
        }
    }

    async fn handle(fake: FakeAws) -> (Result<Response, HandlerError>, Deployer<FakeAws>) {
        let deployer = Deployer::new(config(), fake);
        let inv = Invocation {
            request_id: Some("this-invocation".into()),
            deadline: None,
        };
        let result = deployer.handle(&event(), &inv).await;
        (result, deployer)
    }

    fn record_key() -> String {
        release().record_key(VERSION)
    }

    fn stored_record(fake: &FakeAws) -> DeployRecord {
        DeployRecord::from_bytes(&fake.object(&record_key()).expect("record stored")).unwrap()
    }

    fn stored_pointer(fake: &FakeAws) -> LatestPointer {
        LatestPointer::from_bytes(
            &fake
                .object(&release().latest_pointer_key())
                .expect("pointer"),
        )
        .unwrap()
    }

    /// A `dispatching` record of another invocation, leased until `lease_until`.
    fn claimed_by_other(lease_until: &str, commands: Vec<CommandBatch>) -> DeployRecord {
        DeployRecord {
            lease_until: Some(lease_until.to_owned()),
            attempts: 1,
            lambda_request_id: Some("other-invocation".into()),
            targets: vec!["i-1".into(), "i-2".into(), "i-3".into()],
            commands,
            ..DeployRecord::new(
                "rel-bucket",
                &release(),
                VERSION,
                Outcome::Dispatching,
                EventFacts::new(Trigger::Event),
                "2026-11-23T09:00:00Z",
            )
        }
    }

    fn pointer(version: &str, sequencer: &str) -> Vec<u8> {
        LatestPointer::new(&release(), version, sequencer, None, "2026-11-23T09:00:00Z").to_bytes()
    }

    #[tokio::test]
    async fn a_first_event_claims_dispatches_settles_and_moves_the_pointer() {
        let (result, d) = handle(FakeAws::with_instances(&["i-1", "i-2"])).await;
        let response = result.unwrap();
        assert_eq!(response.outcome, Outcome::Dispatched);
        assert_eq!(d.edges.sent_to(), ["i-1", "i-2"]);
        let record = stored_record(&d.edges);
        assert_eq!(record.outcome, Outcome::Dispatched);
        assert_eq!((record.attempts, record.lease_until.as_deref()), (1, None));
        assert_eq!(record.command_ids(), ["cmd-1"]);
        assert_eq!(stored_pointer(&d.edges).version_id, VERSION);
        assert_eq!(stored_pointer(&d.edges).sequencer, SEQUENCER);
    }

    #[tokio::test]
    async fn losing_the_claim_race_sends_nothing_and_asks_for_a_retry() {
        let fake = FakeAws::with_instances(&["i-1"]);
        // Another invocation creates the record between our read and our conditional create.
        fake.interferences.lock().unwrap().push(Interference {
            key: record_key(),
            nth: 0,
            body: claimed_by_other("2999-01-01T00:00:00Z", vec![]).to_bytes(),
        });
        let (result, d) = handle(fake).await;
        let err = result.unwrap_err();
        assert!(
            matches!(&err, HandlerError::Busy(r) if r.contains("claimed by another invocation at the same moment")),
            "{err}"
        );
        assert_eq!(err.kind(), "VersionBusy");
        assert!(d.edges.sent_to().is_empty(), "no command without the claim");
        assert_eq!(
            stored_record(&d.edges).lambda_request_id.as_deref(),
            Some("other-invocation"),
            "the winner's record is untouched"
        );
    }

    #[tokio::test]
    async fn a_live_claim_of_another_invocation_makes_the_event_busy() {
        let fake = FakeAws::with_instances(&["i-1"]);
        fake.preload(
            &record_key(),
            claimed_by_other("2999-01-01T00:00:00Z", vec![]).to_bytes(),
        );
        let (result, d) = handle(fake).await;
        assert!(matches!(result, Err(HandlerError::Busy(r)) if r.contains("claim valid until")));
        assert!(d.edges.sent_to().is_empty());
    }

    #[tokio::test]
    async fn a_takeover_adopts_what_the_crashed_attempt_sent_and_sends_only_the_rest() {
        let mut fake = FakeAws::with_instances(&["i-1", "i-2", "i-3"]);
        let recorded = CommandBatch {
            command_id: "cmd-recorded".into(),
            instance_ids: vec!["i-1".into()],
        };
        // The crashed attempt recorded its first batch, then sent a second and died before
        // recording it; its lease has run out.
        fake.preload(
            &record_key(),
            claimed_by_other("2026-11-23T09:05:00Z", vec![recorded]).to_bytes(),
        );
        let comment = plan::comment(&request(), COMMIT);
        let script_for =
            |version: &str| shell::render_exports(&[(HostVar::VersionId.name(), version)]).unwrap();
        let unrecorded = CommandBatch {
            command_id: "cmd-unrecorded".into(),
            instance_ids: vec!["i-2".into()],
        };
        let other_version = CommandBatch {
            command_id: "cmd-other-version".into(),
            instance_ids: vec!["i-3".into()],
        };
        fake.earlier = vec![
            (unrecorded, script_for(VERSION), comment.clone()),
            (other_version, script_for("v1"), comment),
        ];
        let (result, d) = handle(fake).await;
        assert_eq!(result.unwrap().outcome, Outcome::Dispatched);
        assert_eq!(
            d.edges.sent_to(),
            ["i-3"],
            "i-1 and i-2 already have the command"
        );
        let record = stored_record(&d.edges);
        assert_eq!(
            record.command_ids(),
            ["cmd-recorded", "cmd-unrecorded", "cmd-1"]
        );
        assert_eq!(record.attempts, 2);
        assert_eq!(
            record.created_at, "2026-11-23T09:00:00Z",
            "first claim time kept"
        );
        assert_eq!(record.lambda_request_id.as_deref(), Some("this-invocation"));
        assert_eq!(record.outcome, Outcome::Dispatched);
    }

    #[tokio::test]
    async fn a_claim_rewritten_mid_dispatch_is_lost_and_never_overwritten() {
        let fake = FakeAws::with_instances(&["i-1"]);
        // Our lease ran out while sending: another invocation took the version over before
        // we recorded the batch we sent (our second write of the record).
        let theirs = claimed_by_other("2999-01-01T00:00:00Z", vec![]);
        fake.interferences.lock().unwrap().push(Interference {
            key: record_key(),
            nth: 1,
            body: theirs.to_bytes(),
        });
        let (result, d) = handle(fake).await;
        let err = result.unwrap_err();
        assert!(
            matches!(&err, HandlerError::LostClaim { record_key: k } if *k == record_key()),
            "{err}"
        );
        assert_eq!(err.kind(), "LostClaim");
        assert_eq!(
            d.edges.sent_to(),
            ["i-1"],
            "sent once, before the loss was seen"
        );
        assert_eq!(
            stored_record(&d.edges),
            theirs,
            "their record is not overwritten"
        );
        assert!(d.edges.object(&release().latest_pointer_key()).is_none());
    }

    #[tokio::test]
    async fn the_pointer_write_retries_after_an_older_concurrent_write() {
        let fake = FakeAws::with_instances(&["i-1"]);
        fake.interferences.lock().unwrap().push(Interference {
            key: release().latest_pointer_key(),
            nth: 0,
            body: pointer("v1", "00AA"),
        });
        let (result, d) = handle(fake).await;
        assert_eq!(result.unwrap().outcome, Outcome::Dispatched);
        let p = stored_pointer(&d.edges);
        assert_eq!(
            (p.version_id.as_str(), p.sequencer.as_str()),
            (VERSION, SEQUENCER)
        );
        assert_eq!(p.commit.as_deref(), Some(COMMIT));
    }

    #[tokio::test]
    async fn the_pointer_never_moves_back_over_a_newer_concurrent_write() {
        let fake = FakeAws::with_instances(&["i-1"]);
        fake.interferences.lock().unwrap().push(Interference {
            key: release().latest_pointer_key(),
            nth: 0,
            body: pointer("v3", "00CC"),
        });
        let (result, d) = handle(fake).await;
        assert_eq!(result.unwrap().outcome, Outcome::Dispatched);
        assert_eq!(stored_pointer(&d.edges).version_id, "v3");
    }

    #[tokio::test]
    async fn a_pointer_that_keeps_changing_fails_the_invocation_for_a_retry() {
        let fake = FakeAws::with_instances(&["i-1"]);
        for nth in 0..5 {
            fake.interferences.lock().unwrap().push(Interference {
                key: release().latest_pointer_key(),
                nth,
                body: pointer(&format!("old-{nth}"), "00AA"),
            });
        }
        let (result, d) = handle(fake).await;
        assert!(
            matches!(&result, Err(HandlerError::Busy(r)) if r.contains("kept changing")),
            "{result:?}"
        );
        // The version itself is settled: a retry is a duplicate that moves the pointer.
        assert_eq!(stored_record(&d.edges).outcome, Outcome::Dispatched);
        let inv = Invocation::default();
        let again = d.handle(&event(), &inv).await.unwrap();
        assert_eq!(again.outcome, Outcome::SkippedDuplicate);
        assert_eq!(stored_pointer(&d.edges).version_id, VERSION);
        assert_eq!(d.edges.sent_to(), ["i-1"], "still one command");
    }
}
