//! The closed loop after dispatch: a host finished a command → store its result → let the
//! fleet's state machine ([`dropship_contract::fleet::decide`]) say what comes next → do it
//! (the next wave, the fleet rollback, or settling the fleet's
//! outcome and putting the one `Dropship Deployment Finished` event on the bus).
//!
//! Race-free by construction, with no state in the Lambda: each (instance, command) result is
//! its own S3 object, created once (`If-None-Match: *`), so duplicate events store nothing new;
//! every step is claimed on the deploy record with `If-Match` before it is acted on, so two
//! invocations that see the same last result cannot both send the next wave or both notify;
//! out-of-order events only change when the last result arrives, never what is decided. A
//! step whose sender died is taken over after its lease, and the whole decision is re-derived
//! from S3 by any later event for the version, so a crash between storing a result and
//! settling the fleet is recovered by the next event (or by Lambda's retry of this one).

use dropship_contract::events::{DEPLOY_FINISHED, SOURCE};
use dropship_contract::fleet::{
    self, host_status, CommandIndex, Fleet, FleetOutcome, FleetPointer, Purpose, Sending, Step,
    StoredResult,
};
use dropship_contract::key::{command_index_key, release_of_fleet_key, ReleaseKey, FLEETS_PREFIX};
use dropship_contract::record::{DeployRecord, Outcome, RECORD_FORMAT};
use serde_json::json;
use time::OffsetDateTime;
use tracing::{info, warn};

use crate::edges::{Condition, Edges, Written};
use crate::event::HostFinished;
use crate::handler::{Deployer, HandlerError, Invocation, Response};
use crate::plan::{self, HostInputs};
use crate::store::Records;

/// How many times a step is re-decided after losing a conditional write to a concurrent
/// invocation before giving up (Lambda's retry then runs it again).
const MAX_DECISIONS: usize = 8;

impl<E: Edges> Deployer<E> {
    /// One host finished a command: store the result, then move the fleet on.
    pub(crate) async fn host_finished(
        &self,
        done: &HostFinished,
        inv: &Invocation,
    ) -> Result<Response, HandlerError> {
        let edges = self.edges();
        let observed = edges
            .invocation(&done.command_id, &done.instance_id)
            .await?;
        let Some((bucket, index)) = self.command_index(&done.command_id).await? else {
            let ours = matches!(&observed, fleet::Observed::Found(i) if i.comment.starts_with("dropship "));
            if ours && plan::unindexed_command_is_retried(done.requested, OffsetDateTime::now_utc())
            {
                // SendCommand returned, but its sender has not indexed it yet: retry.
                return Err(HandlerError::Busy(format!(
                    "command {} is dropship's but not in the command index yet; Lambda retries",
                    done.command_id
                )));
            }
            return Ok(Response::ignored(format!(
                "command {} is not a dropship command (no index entry{})",
                done.command_id,
                if ours {
                    ", although its Comment looks like one, past the time its sender could index it"
                } else {
                    ""
                }
            )));
        };
        let host = host_status(&done.command_id, &done.instance_id, &observed);
        if !host.state.is_final() {
            // The event said terminal; SSM's API can lag behind its events: retry.
            return Err(HandlerError::Busy(format!(
                "SSM still reports command {} on {} as {}; Lambda retries",
                done.command_id, done.instance_id, host.state
            )));
        }
        let release = ReleaseKey::new(&index.app, &index.env).map_err(|e| {
            HandlerError::Busy(format!(
                "command index of {} is invalid: {e}",
                done.command_id
            ))
        })?;
        let stored = StoredResult {
            format: RECORD_FORMAT,
            app: index.app.clone(),
            env: index.env.clone(),
            version_id: index.version_id.clone(),
            purpose: index.purpose,
            host,
            stored_at: plan::format_time(OffsetDateTime::now_utc()),
        };
        let key = release.result_key(&index.version_id, &done.instance_id, &done.command_id);
        match edges
            .put(&bucket, &key, stored.to_bytes(), Condition::Absent)
            .await?
        {
            Written::Ok(_) => {
                info!(instance_id = %done.instance_id, command_id = %done.command_id,
                    state = %stored.host.state, purpose = index.purpose.as_str(), "host result stored")
            }
            Written::Conflict => {
                info!(key = %key, "host result already stored (a repeated event)")
            }
        }
        self.advance(&bucket, &release, &index.version_id, inv)
            .await
    }

    /// The index entry of `command_id`, searched in every allowed bucket.
    async fn command_index(
        &self,
        command_id: &str,
    ) -> Result<Option<(String, CommandIndex)>, HandlerError> {
        let key = command_index_key(command_id);
        for bucket in &self.config().allowed_buckets {
            if let Some((bytes, _)) = self.edges().get(bucket, &key).await? {
                let index = CommandIndex::from_bytes(&bytes).map_err(|e| {
                    HandlerError::Busy(format!("s3://{bucket}/{key} is unreadable: {e}"))
                })?;
                return Ok(Some((bucket.clone(), index)));
            }
        }
        Ok(None)
    }

    /// Every stored result of one version.
    async fn results(
        &self,
        bucket: &str,
        release: &ReleaseKey,
        version_id: &str,
    ) -> Result<Vec<StoredResult>, HandlerError> {
        let mut out = Vec::new();
        for key in self
            .edges()
            .list(bucket, &release.results_prefix(version_id))
            .await?
        {
            if let Some((bytes, _)) = self.edges().get(bucket, &key).await? {
                match StoredResult::from_bytes(&bytes) {
                    Ok(r) => out.push(r),
                    Err(e) => warn!(key = %key, error = %e, "unreadable host result skipped"),
                }
            }
        }
        Ok(out)
    }

    /// Re-derive the fleet's next step from S3 and take it, until there is nothing to do.
    pub(crate) async fn advance(
        &self,
        bucket: &str,
        release: &ReleaseKey,
        version_id: &str,
        inv: &Invocation,
    ) -> Result<Response, HandlerError> {
        let store = Records::new(self.edges(), bucket);
        let record_key = release.record_key(version_id);
        for _ in 0..MAX_DECISIONS {
            let Some(stored) = store.record(release, version_id).await? else {
                return Err(HandlerError::Busy(format!(
                    "deploy record {record_key} does not exist yet; Lambda retries"
                )));
            };
            let (mut record, etag) = (stored.doc, stored.etag);
            let Some(mut rollout) = record.fleet.clone() else {
                return Ok(Response::from_record(
                    &record,
                    Outcome::Recorded,
                    Some("the record has no rollout (written by an older deployer)".into()),
                    record_key,
                ));
            };
            let now = OffsetDateTime::now_utc();
            if let Some(s) = &rollout.sending {
                let expired = plan::parse_time(&s.lease_until).is_none_or(|t| t < now);
                if !expired {
                    return Ok(Response::from_record(
                        &record,
                        Outcome::Recorded,
                        Some("another invocation is sending the next step".into()),
                        record_key,
                    ));
                }
                warn!(record = %record_key, "a step's sender died; taking the step over (a resend is answered noop/superseded)");
                rollout.sending = None;
            }
            if rollout.outcome.is_some() && !rollout.notified {
                self.notify(&store, &mut record, &etag).await?;
                continue;
            }
            let results = self.results(bucket, release, version_id).await?;
            let step = fleet::decide(
                &rollout,
                &results,
                &record.command_ids_for(Purpose::Deploy),
                &record.command_ids_for(Purpose::Rollback),
            );
            info!(record = %record_key, step = ?step, "fleet step");
            if step == Step::Done {
                // Catch-up waves land after the outcome: keep the per-host summary current.
                let hosts = fleet::host_summaries(
                    &rollout,
                    &results,
                    &record.command_ids_for(Purpose::Deploy),
                    &record.command_ids_for(Purpose::Rollback),
                );
                if hosts != rollout.hosts {
                    rollout.hosts = hosts;
                    record.fleet = Some(rollout.clone());
                    record.updated_at = plan::format_time(now);
                    if store.write_record(&record, Some(&etag)).await? == Written::Conflict {
                        continue;
                    }
                }
            }
            match step {
                Step::Wait | Step::Done => {
                    return Ok(Response::from_record(
                        &record,
                        Outcome::Recorded,
                        rollout.outcome.map(|o| o.as_str().to_owned()),
                        record_key,
                    ))
                }
                Step::Settle { outcome, reason } => {
                    rollout.outcome = Some(outcome);
                    rollout.hosts = fleet::host_summaries(
                        &rollout,
                        &results,
                        &record.command_ids_for(Purpose::Deploy),
                        &record.command_ids_for(Purpose::Rollback),
                    );
                    rollout.reason = Some(reason.clone());
                    rollout.settled_at = Some(plan::format_time(now));
                    record.fleet = Some(rollout);
                    record.updated_at = plan::format_time(now);
                    match store.write_record(&record, Some(&etag)).await? {
                        Written::Ok(new_etag) => {
                            info!(outcome = %outcome, reason = %reason, record = %record_key, "fleet settled");
                            if outcome == FleetOutcome::Deployed {
                                self.move_fleet_pointer(bucket, &record).await?;
                            }
                            self.notify(&store, &mut record, &new_etag).await?;
                        }
                        Written::Conflict => continue,
                    }
                }
                Step::SendWave(wave) => {
                    let hosts = rollout.waves[wave as usize].clone();
                    self.send_step(
                        &store,
                        record,
                        rollout,
                        &etag,
                        Purpose::Deploy,
                        wave,
                        hosts,
                        inv,
                    )
                    .await?;
                }
                Step::RollBack(targets) => {
                    let hosts = targets.into_iter().map(|t| t.instance_id).collect();
                    self.send_step(
                        &store,
                        record,
                        rollout,
                        &etag,
                        Purpose::Rollback,
                        0,
                        hosts,
                        inv,
                    )
                    .await?;
                }
            }
        }
        Err(HandlerError::Busy(format!(
            "deploy record {record_key} kept changing under concurrent invocations; Lambda retries"
        )))
    }

    /// Claims a step on the record, sends it, records the command. A lost claim is not an
    /// error (someone else took the step); the caller re-decides.
    #[allow(clippy::too_many_arguments)]
    async fn send_step(
        &self,
        store: &Records<'_, E>,
        mut record: DeployRecord,
        mut rollout: Fleet,
        etag: &str,
        purpose: Purpose,
        wave: u32,
        hosts: Vec<String>,
        inv: &Invocation,
    ) -> Result<(), HandlerError> {
        let now = OffsetDateTime::now_utc();
        rollout.sending = Some(Sending {
            purpose,
            wave,
            lease_until: plan::format_time(plan::lease_end(inv.deadline, now)),
        });
        record.fleet = Some(rollout.clone());
        record.updated_at = plan::format_time(now);
        let mut etag = match store.write_record(&record, Some(etag)).await? {
            Written::Ok(e) => e,
            Written::Conflict => return Ok(()),
        };
        let Some((request, metadata, verified, stamp)) = plan::resumed_inputs(&record) else {
            return Err(HandlerError::Busy(format!(
                "deploy record of {} version {} lacks the verified bundle facts a next step needs",
                record.key, record.version_id
            )));
        };
        let c = self.config();
        let inputs = HostInputs {
            config: c,
            request: &request,
            metadata: &metadata,
            verified: &verified,
            purpose,
            order_stamp: &stamp,
        };
        let step_plan = plan::plan_command(&inputs, &hosts).map_err(|r| {
            HandlerError::Busy(format!("the next step's command cannot be rendered: {r}"))
        })?;
        for batch in &step_plan.batches {
            let sent = self.edges().send_command(&step_plan, batch).await?;
            info!(command_id = %sent.command_id, instances = ?sent.instance_ids, purpose = purpose.as_str(), wave, "step sent");
            self.index_command(&request.bucket, &record, &sent.command_id, purpose)
                .await?;
            record.commands.push(sent);
        }
        match purpose {
            Purpose::Deploy => rollout.sent = wave + 1,
            Purpose::Rollback => rollout.rollback = Some(hosts),
        }
        rollout.sending = None;
        record.fleet = Some(rollout);
        record.updated_at = plan::format_time(OffsetDateTime::now_utc());
        match store.write_record(&record, Some(&etag)).await? {
            Written::Ok(e) => etag = e,
            Written::Conflict => {
                return Err(HandlerError::LostClaim {
                    record_key: record.s3_key().unwrap_or_default(),
                })
            }
        }
        let _ = etag;
        Ok(())
    }

    /// Writes the command index entry that lets a status-change event find its record.
    pub(crate) async fn index_command(
        &self,
        bucket: &str,
        record: &DeployRecord,
        command_id: &str,
        purpose: Purpose,
    ) -> Result<(), HandlerError> {
        let index = CommandIndex {
            format: RECORD_FORMAT,
            bucket: bucket.to_owned(),
            app: record.app.clone(),
            env: record.env.clone(),
            version_id: record.version_id.clone(),
            purpose,
        };
        // Absent: a retry that indexes the same command again finds it there: fine.
        self.edges()
            .put(
                bucket,
                &command_index_key(command_id),
                index.to_bytes(),
                Condition::Absent,
            )
            .await?;
        Ok(())
    }

    /// Names this settled, deployed version as the one its fleet runs (forward only).
    async fn move_fleet_pointer(
        &self,
        bucket: &str,
        record: &DeployRecord,
    ) -> Result<(), HandlerError> {
        let release = ReleaseKey::new(&record.app, &record.env)
            .map_err(|e| HandlerError::Busy(format!("record names an invalid app/env: {e}")))?;
        let key = release.fleet_key();
        let pointer = FleetPointer {
            format: RECORD_FORMAT,
            app: record.app.clone(),
            env: record.env.clone(),
            version_id: record.version_id.clone(),
            // S3's own stamp of the version, never an event payload's sequencer.
            sequencer: record.stamp.clone(),
            settled_at: plan::format_time(OffsetDateTime::now_utc()),
        };
        for _ in 0..MAX_DECISIONS {
            let current = self.edges().get(bucket, &key).await?;
            let condition = match &current {
                None => Condition::Absent,
                Some((bytes, etag)) => {
                    if let Ok(old) = FleetPointer::from_bytes(bytes) {
                        if !old.replaced_by(pointer.sequencer.as_deref()) {
                            info!(fleet = %key, kept = %old.version_id, "an older version settled; the fleet pointer stays");
                            return Ok(());
                        }
                    }
                    Condition::Matches(etag)
                }
            };
            if let Written::Ok(_) = self
                .edges()
                .put(bucket, &key, pointer.to_bytes(), condition)
                .await?
            {
                info!(fleet = %key, version_id = %pointer.version_id, "fleet pointer moved");
                return Ok(());
            }
        }
        Err(HandlerError::Busy(format!(
            "fleet pointer {key} kept changing; Lambda retries"
        )))
    }

    /// An instance started: if its tags name an app/env with a converged fleet, it catches up.
    pub(crate) async fn instance_running(
        &self,
        instance_id: &str,
        inv: &Invocation,
    ) -> Result<Response, HandlerError> {
        let c = self.config();
        let Some((app, env)) = self
            .edges()
            .instance_tags(instance_id, &c.app_tag_key, &c.env_tag_key)
            .await?
        else {
            return Ok(Response::ignored(format!(
                "instance {instance_id} is not running with both {} and {} tags",
                c.app_tag_key, c.env_tag_key
            )));
        };
        let Ok(release) = ReleaseKey::new(&app, &env) else {
            return Ok(Response::ignored(format!(
                "instance {instance_id} is tagged {app:?}/{env:?}, not a valid app/env"
            )));
        };
        // Every environment class's function gets this event (it names no tag): each acts
        // on its own apps and environments only.
        if let Some(why) = not_ours(c, &release) {
            return Ok(Response::ignored(format!("instance {instance_id}: {why}")));
        }
        let mut sent = Vec::new();
        for bucket in &c.allowed_buckets {
            sent.extend(
                self.catch_up(bucket, &release, Some(instance_id), inv)
                    .await?,
            );
        }
        Ok(Response {
            targets: sent,
            ..Response::ignored(format!(
                "instance {instance_id} of {release} checked for catch-up"
            ))
        })
    }

    /// The periodic reconcile: every fleet of every allowed bucket catches up.
    pub(crate) async fn reconcile(&self, inv: &Invocation) -> Result<Response, HandlerError> {
        let mut sent = Vec::new();
        for bucket in &self.config().allowed_buckets {
            for key in self.edges().list(bucket, FLEETS_PREFIX).await? {
                if let Some(release) =
                    release_of_fleet_key(&key).filter(|r| not_ours(self.config(), r).is_none())
                {
                    sent.extend(self.catch_up(bucket, &release, None, inv).await?);
                }
            }
        }
        Ok(Response {
            targets: sent,
            ..Response::ignored("reconciled every fleet".into())
        })
    }

    /// Sends the fleet's version to the tagged, online instances its rollout never reached
    /// (only `only`, when given); once per instance: the claim on the record (a catch-up wave
    /// with a lease) is what deduplicates repeated events. Returns the instances sent to.
    async fn catch_up(
        &self,
        bucket: &str,
        release: &ReleaseKey,
        only: Option<&str>,
        inv: &Invocation,
    ) -> Result<Vec<String>, HandlerError> {
        let Some((bytes, _)) = self.edges().get(bucket, &release.fleet_key()).await? else {
            return Ok(Vec::new());
        };
        let pointer = FleetPointer::from_bytes(&bytes).map_err(|e| {
            HandlerError::Busy(format!(
                "s3://{bucket}/{} is unreadable: {e}",
                release.fleet_key()
            ))
        })?;
        let store = Records::new(self.edges(), bucket);
        let c = self.config();
        for _ in 0..MAX_DECISIONS {
            let Some(stored) = store.record(release, &pointer.version_id).await? else {
                return Ok(Vec::new());
            };
            let Some(rollout) = stored.doc.fleet.clone() else {
                return Ok(Vec::new());
            };
            let tagged = self
                .edges()
                .running_instances(
                    (&c.app_tag_key, release.app()),
                    (&c.env_tag_key, release.env()),
                )
                .await?;
            // The same qualification as at dispatch: only the (app, env)'s instance profile.
            let expected = c.instance_profile_arn_for(release.app(), release.env());
            let (mut running, _refused) = plan::qualify_targets(tagged, &expected);
            if let Some(id) = only {
                running.retain(|r| r == id);
            }
            let sent_hosts: std::collections::BTreeSet<&String> = rollout.sent_hosts().collect();
            running.retain(|r| !sent_hosts.contains(r));
            if running.is_empty() {
                return Ok(Vec::new());
            }
            let online = self.edges().online_instances(&running).await?;
            let ready = fleet::catch_up_targets(&rollout, &running, &online);
            if ready.is_empty() {
                if only.is_some() && rollout.sending.is_none() {
                    // Started but its agent has not registered yet: Lambda's retries (and the
                    // periodic reconcile) come back for it.
                    return Err(HandlerError::Busy(format!(
                        "instance {} of {release} is not online in SSM yet; retried",
                        running.join(", ")
                    )));
                }
                return Ok(Vec::new());
            }
            let planned = fleet::plan_catch_up(&rollout, &ready);
            let wave = planned.waves.len() as u32 - 1;
            info!(fleet = %release, version_id = %pointer.version_id, instances = ?ready, "catching up");
            let before = stored.doc.commands.len();
            self.send_step(
                &store,
                stored.doc,
                planned,
                &stored.etag,
                Purpose::Deploy,
                wave,
                ready.clone(),
                inv,
            )
            .await?;
            // A lost claim means another invocation took this step: decide again.
            let after = store
                .record(release, &pointer.version_id)
                .await?
                .map(|r| r.doc.commands.len())
                .unwrap_or(before);
            if after > before {
                return Ok(ready);
            }
        }
        Err(HandlerError::Busy(format!(
            "fleet of {release} kept changing; Lambda retries"
        )))
    }

    /// Puts the one `Dropship Deployment Finished` event on the bus, then marks the record.
    async fn notify(
        &self,
        store: &Records<'_, E>,
        record: &mut DeployRecord,
        etag: &str,
    ) -> Result<(), HandlerError> {
        let detail = finished_detail(record);
        self.edges()
            .put_event(DEPLOY_FINISHED, detail.to_string())
            .await?;
        info!(source = SOURCE, detail_type = DEPLOY_FINISHED, record = %record.s3_key().unwrap_or_default(), "deploy-finished event sent");
        if let Some(f) = record.fleet.as_mut() {
            f.notified = true;
        }
        record.updated_at = plan::format_time(OffsetDateTime::now_utc());
        if store.write_record(record, Some(etag)).await? == Written::Conflict {
            warn!("record changed after the event was sent; a later invocation may send it again");
        }
        Ok(())
    }
}

/// Why this deployer leaves `release` to another (its app or environment is not on this
/// deployer's allow-lists: another environment class's function serves it), or `None`.
fn not_ours(c: &crate::config::Config, release: &ReleaseKey) -> Option<String> {
    if !c.app_allowed(release.app()) {
        Some(format!(
            "app {} is not one this deployer acts on (DROPSHIP_ALLOWED_APPS)",
            release.app()
        ))
    } else if !c.env_allowed(release.env()) {
        Some(format!(
            "environment {} is another class's (DROPSHIP_ALLOWED_ENVIRONMENTS)",
            release.env()
        ))
    } else {
        None
    }
}

/// The `detail` of the deploy-finished event ([`dropship_contract::events`] lists its keys).
pub fn finished_detail(record: &DeployRecord) -> serde_json::Value {
    let rollout = record.fleet.as_ref();
    let outcome = rollout.and_then(|f| f.outcome);
    let meta = record.metadata.as_ref();
    json!({
        "app": record.app,
        "env": record.env,
        "bucket": record.bucket,
        "key": record.key,
        "version_id": record.version_id,
        "commit": meta.map(|m| m.commit.as_str()),
        "branch": meta.map(|m| m.branch.as_str()),
        "uploader": meta.map(|m| m.uploader.as_str()),
        "outcome": outcome.map(|o| o.as_str()),
        "succeeded": outcome.is_some_and(|o| o.succeeded()),
        "reason": rollout.and_then(|f| f.reason.as_deref()),
        "hosts": rollout.map(|f| f.hosts.clone()).unwrap_or_default(),
        "record_key": record.s3_key().unwrap_or_default(),
    })
}
