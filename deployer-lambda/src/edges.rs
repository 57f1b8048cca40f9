//! The handler's AWS edges as small traits, so [`crate::handler::Deployer`] is generic over
//! them: [`crate::aws::Clients`] implements them with the SDK, and the unit tests with
//! in-memory fakes (the claim race, a crashed attempt's takeover, a lost claim and the
//! pointer retry are tested without any emulator).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;

use dropship_aws::AwsError;
use dropship_contract::fleet::Observed;
use dropship_contract::record::CommandBatch;
use dropship_contract::verify::{ExpectedBundle, VerifiedBundle, VerifyError, VerifyLimits};
use time::OffsetDateTime;

use crate::plan::CommandPlan;

/// When a conditional write may happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition<'a> {
    /// Only if the object does not exist (`If-None-Match: *`).
    Absent,
    /// Only if the object still has this ETag (`If-Match`).
    Matches(&'a str),
}

/// Result of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Written; the new ETag.
    Ok(String),
    /// Someone else wrote first (HTTP 412/409): re-read and decide again.
    Conflict,
}

/// What `HeadObject` found for one version.
#[derive(Debug, Clone)]
pub enum Head {
    /// The version exists.
    Found {
        /// User metadata (without `x-amz-meta-`).
        metadata: HashMap<String, String>,
        /// Size in bytes.
        size: u64,
        /// `LastModified` in Unix seconds (the version's ordering stamp).
        last_modified: i64,
    },
    /// No such version (or a delete marker): fail closed.
    Missing(String),
}

/// A running instance carrying an app/env's tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedInstance {
    /// Instance id.
    pub id: String,
    /// `IamInstanceProfile.Arn`, when a profile is attached.
    pub profile_arn: Option<String>,
}

/// Small JSON documents with conditional writes: deploy records and the latest pointer.
pub trait RecordStore {
    /// The object's bytes and ETag; `None` when it does not exist.
    fn get(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<(Vec<u8>, String)>, AwsError>> + Send;
    /// Writes the object if `condition` holds.
    fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        condition: Condition<'_>,
    ) -> impl Future<Output = Result<Written, AwsError>> + Send;
    /// Keys under `prefix` (the per-host results of one version).
    fn list(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> impl Future<Output = Result<Vec<String>, AwsError>> + Send;
}

/// The release objects: one exact version's metadata, bytes and download URL.
pub trait ObjectReader {
    /// `HeadObject` of exactly `version_id`.
    fn head_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
    ) -> impl Future<Output = Result<Head, AwsError>> + Send;
    /// The key's current version id (`HeadObject` without a version); `None` when the key
    /// has none (never written, or a delete marker on top).
    fn current_version(
        &self,
        bucket: &str,
        key: &str,
    ) -> impl Future<Output = Result<Option<String>, AwsError>> + Send;
    /// Streams exactly `version_id` once through the contract's verifier, asking for the
    /// key's current version whenever [`crate::plan::CurrencyChecks`] says a check is due,
    /// and stopping early once another version is current.
    fn verify_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
        expected: ExpectedBundle,
        limits: VerifyLimits,
    ) -> impl Future<Output = Result<Verification, AwsError>> + Send;
}

/// How a verification ended.
// One per invocation, moved once: boxing the verified bundle would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Verification {
    /// The verifier read the object to its decision.
    Done(Result<VerifiedBundle, VerifyError>),
    /// Another version became the key's current one while this one was read: stopped
    /// before the verifier decided.
    Superseded {
        /// The key's current version when the check saw it (`None`: no current version).
        current: Option<String>,
        /// Bytes of the object read until then.
        read_bytes: u64,
        /// `HeadObject` checks made during the download.
        checks: u32,
    },
}

/// The deploy targets.
pub trait InstanceFinder {
    /// Running instances carrying both tags (`(key, value)`), sorted by id, without
    /// duplicates, each with the ARN of its instance profile (if any).
    fn running_instances(
        &self,
        app_tag: (&str, &str),
        env_tag: (&str, &str),
    ) -> impl Future<Output = Result<Vec<TaggedInstance>, AwsError>> + Send;
    /// Which of `instance_ids` SSM reports online (`DescribeInstanceInformation`, ping status
    /// `Online`): only those can receive a command now.
    fn online_instances(
        &self,
        instance_ids: &[String],
    ) -> impl Future<Output = Result<BTreeSet<String>, AwsError>> + Send;
    /// The values of `app_tag_key` and `env_tag_key` of one running instance (`None` when it
    /// is not running or lacks either tag).
    fn instance_tags(
        &self,
        instance_id: &str,
        app_tag_key: &str,
        env_tag_key: &str,
    ) -> impl Future<Output = Result<Option<(String, String)>, AwsError>> + Send;
}

/// The SSM commands.
pub trait CommandSender {
    /// `SendCommand` for one batch of instances.
    fn send_command(
        &self,
        plan: &CommandPlan,
        batch: &[String],
    ) -> impl Future<Output = Result<CommandBatch, AwsError>> + Send;
    /// Commands invoked since `since` whose comment is `comment`, with their scripts: what an
    /// earlier, crashed attempt may have sent.
    fn commands_since(
        &self,
        since: OffsetDateTime,
        comment: &str,
    ) -> impl Future<Output = Result<Vec<(CommandBatch, String)>, AwsError>> + Send;
    /// `GetCommandInvocation` of one (command, instance) pair: what the host did.
    fn invocation(
        &self,
        command_id: &str,
        instance_id: &str,
    ) -> impl Future<Output = Result<Observed, AwsError>> + Send;
}

/// The account's default EventBridge bus.
pub trait Notifier {
    /// `PutEvents` of one event with dropship's source ([`dropship_contract::events::SOURCE`]).
    fn put_event(
        &self,
        detail_type: &str,
        detail: String,
    ) -> impl Future<Output = Result<(), AwsError>> + Send;
}

/// Everything the handler reaches outside itself.
pub trait Edges:
    RecordStore + ObjectReader + InstanceFinder + CommandSender + Notifier + Sync
{
}

impl<T: RecordStore + ObjectReader + InstanceFinder + CommandSender + Notifier + Sync> Edges for T {}
