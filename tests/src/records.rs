//! Deploy records as the deployer Lambda writes them (contract types), for suites that need a
//! settled deploy without running a fleet: what `status`, `promote` and `--wait` read.

use aws_sdk_s3::primitives::ByteStream;
use dropship_contract::fleet::{Fleet, FleetOutcome, OnFailure};
use dropship_contract::key::ReleaseKey;
use dropship_contract::record::{DeployRecord, EventFacts, Outcome, Trigger};

/// The record of `version_id` of `release` whose rollout to `hosts` (one wave, sent) settled
/// `outcome`.
pub fn settled(
    bucket: &str,
    release: &ReleaseKey,
    version_id: &str,
    hosts: &[String],
    outcome: FleetOutcome,
) -> DeployRecord {
    let mut fleet = Fleet::new(OnFailure::RollbackFleet, hosts, &[], hosts.len().max(1));
    fleet.sent = 1;
    fleet.outcome = Some(outcome);
    fleet.reason = Some(format!("settled {outcome:?} (written by the suite)"));
    fleet.settled_at = Some("2026-11-23T09:00:05Z".into());
    DeployRecord {
        targets: hosts.to_vec(),
        fleet: Some(fleet),
        attempts: 1,
        updated_at: "2026-11-23T09:00:05Z".into(),
        ..DeployRecord::new(
            bucket,
            release,
            version_id,
            Outcome::Dispatched,
            EventFacts::new(Trigger::Event),
            "2026-11-23T09:00:01Z",
        )
    }
}

/// Writes `record` where the deployer keeps it.
pub async fn put(s3: &aws_sdk_s3::Client, bucket: &str, record: &DeployRecord) {
    s3.put_object()
        .bucket(bucket)
        .key(record.s3_key().expect("record key"))
        .body(ByteStream::from(record.to_bytes()))
        .send()
        .await
        .expect("write deploy record");
}
