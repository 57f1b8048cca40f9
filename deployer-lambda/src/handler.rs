//! One invocation, end to end, callable in-process (tests, the local pipeline) and from the
//! Lambda runtime loop in `main.rs`.
//!
//! Order of work: parse → gate on stored state (duplicate, busy, stale) → claim the version
//! with a conditional write → `HeadObject` (metadata) → stream-verify the bytes → find targets
//! → render and send the command in batches → settle the record → advance the pointer.
//! Permanent failures (bad bundle, no targets) settle the record and return `Ok` with the
//! outcome, so Lambda does not retry them; transient ones release the claim and return `Err`
//! so Lambda's async retry applies.

use dropship_contract::record::{DeployRecord, LatestPointer, Outcome, RECORD_FORMAT};
use dropship_contract::tar_rules::Limits;
use dropship_contract::verify::{VerifyError, VerifyLimits};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use time::{Duration, OffsetDateTime};
use tracing::{info, warn};

use crate::aws::{AwsError, Clients, Head};
use crate::config::Config;
use crate::event::{self, DeployRequest, EventError, Request};
use crate::plan::{self, format_time, Claim, Gate, HostInputs, Rejection};
use crate::store::{RecordStore, Stored, Written};

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

/// How a dispatch attempt ended (before the record is settled).
enum Settled {
    Done(Outcome, Option<String>),
}

/// The Lambda's state across invocations: configuration and clients, nothing else.
#[derive(Debug, Clone)]
pub struct Deployer {
    config: Config,
    clients: Clients,
}

fn new_record(
    request: &DeployRequest,
    outcome: Outcome,
    reason: Option<String>,
    now: OffsetDateTime,
    inv: &Invocation,
) -> DeployRecord {
    DeployRecord {
        format: RECORD_FORMAT,
        app: request.release.app().to_owned(),
        env: request.release.env().to_owned(),
        bucket: request.bucket.clone(),
        key: request.key.clone(),
        version_id: request.version_id.clone(),
        outcome,
        reason,
        event: request.facts.clone(),
        metadata: None,
        manifest: None,
        verification: None,
        targets: vec![],
        commands: vec![],
        created_at: format_time(now),
        updated_at: format_time(now),
        lease_until: None,
        attempts: 0,
        last_error: None,
        lambda_request_id: inv.request_id.clone(),
    }
}

impl Deployer {
    /// A deployer for validated configuration and SDK clients.
    pub fn new(config: Config, clients: Clients) -> Self {
        Self { config, clients }
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
        let store = RecordStore::new(
            self.clients.s3.clone(),
            &request.bucket,
            &self.config.records_prefix,
        );
        let record_key = store.record_key(&request.release, &request.version_id);
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
                let mut record = new_record(
                    &request,
                    Outcome::SkippedStale,
                    Some(reason.clone()),
                    now,
                    inv,
                );
                let etag = match &existing {
                    Some(s) => {
                        record.created_at = s.doc.created_at.clone();
                        record.attempts = s.doc.attempts;
                        Some(s.etag.as_str())
                    }
                    None => None,
                };
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
        let (mut record, etag) = match (claim.clone(), existing) {
            (Claim::New, _) | (_, None) => (
                new_record(&request, Outcome::Dispatching, None, now, inv),
                None,
            ),
            (Claim::TakeOver, Some(Stored { doc, etag })) => (doc, Some(etag)),
            (Claim::Redeploy, Some(Stored { mut doc, etag })) => {
                doc.commands.clear();
                doc.targets.clear();
                doc.verification = None;
                doc.manifest = None;
                doc.last_error = None;
                (doc, Some(etag))
            }
        };
        record.outcome = Outcome::Dispatching;
        record.reason = None;
        record.event = request.facts.clone();
        record.attempts += 1;
        record.updated_at = format_time(now);
        record.lambda_request_id = inv.request_id.clone();
        let lease = inv
            .deadline
            .unwrap_or(now + Duration::seconds(plan::DEFAULT_LEASE_SECS))
            + Duration::seconds(5);
        record.lease_until = Some(format_time(lease));
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
            Ok(Settled::Done(outcome, reason)) => {
                record.outcome = outcome;
                record.reason = reason.clone();
                record.lease_until = None;
                record.last_error = None;
                record.updated_at = format_time(OffsetDateTime::now_utc());
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
                record.lease_until = Some(format_time(OffsetDateTime::now_utc()));
                record.last_error = Some(e.to_string());
                record.updated_at = format_time(OffsetDateTime::now_utc());
                if let Err(write) = store.write_record(&record, Some(&etag)).await {
                    warn!(error = %write, "could not release the claim; it expires at its lease");
                }
                warn!(error = %e, key = %request.key, version_id = %request.version_id, "transient failure; Lambda retries");
                Err(e)
            }
        }
    }

    /// Everything after the claim. `Ok` settles the version; `Err` is transient.
    async fn dispatch(
        &self,
        request: &DeployRequest,
        store: &RecordStore,
        record: &mut DeployRecord,
        etag: &mut String,
        takeover: bool,
    ) -> Result<Settled, HandlerError> {
        let rejected = |r: Rejection| Ok(Settled::Done(Outcome::Rejected, Some(r.to_string())));
        let (bucket, key, version) = (&request.bucket, &request.key, &request.version_id);

        // 1. Metadata of exactly this version; a missing version fails closed.
        let (headers, size) = match self.clients.head_version(bucket, key, version).await? {
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
            .clients
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
            .clients
            .running_instances(
                (&c.app_tag_key, request.release.app()),
                (&c.env_tag_key, request.release.env()),
            )
            .await?;
        if targets.is_empty() {
            return Ok(Settled::Done(
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
            .clients
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
            let since = OffsetDateTime::parse(
                &record.created_at,
                &time::format_description::well_known::Rfc3339,
            )
            .unwrap_or_else(|_| OffsetDateTime::now_utc() - Duration::hours(1))
                - Duration::minutes(1);
            for (batch, script) in self
                .clients
                .commands_since(since, &full_plan.comment)
                .await?
            {
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
            let sent = self.clients.send_command(&send_plan, batch).await?;
            info!(command_id = %sent.command_id, instances = ?sent.instance_ids, "SendCommand accepted");
            record.commands.push(sent);
            // Persist progress so a retry never sends to these instances again.
            record.updated_at = format_time(OffsetDateTime::now_utc());
            match store.write_record(record, Some(etag)).await? {
                Written::Ok(e) => *etag = e,
                Written::Conflict => {
                    return Err(HandlerError::LostClaim {
                        record_key: store.record_key(&request.release, version),
                    })
                }
            }
        }
        Ok(Settled::Done(Outcome::Dispatched, None))
    }

    /// Move the latest pointer forward to this dispatched event (never backward).
    async fn advance_pointer(
        &self,
        store: &RecordStore,
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
            let pointer = LatestPointer {
                format: RECORD_FORMAT,
                app: record.app.clone(),
                env: record.env.clone(),
                version_id: record.version_id.clone(),
                sequencer: seq.to_string(),
                commit: record.metadata.as_ref().map(|m| m.commit.clone()),
                dispatched_at: format_time(OffsetDateTime::now_utc()),
            };
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
            store.pointer_key(&request.release)
        )))
    }
}
