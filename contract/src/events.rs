//! Events dropship emits on the account's default EventBridge bus (`docs/architecture.md`,
//! "Events dropship emits"). `infra/` routes them by these values, and the infra contract
//! test compares its rules with them.

/// `source` of every event dropship emits (sources starting with `aws.` are AWS's own).
pub const SOURCE: &str = "dropship";

/// `detail-type` of the one event that ends every deploy.
pub const DEPLOY_FINISHED: &str = "Dropship Deployment Finished";

/// The keys of that event's `detail`. `succeeded` (bool) is what failure rules match on;
/// `bucket` tells installations sharing an account apart.
pub const DEPLOY_FINISHED_DETAIL_KEYS: &[&str] = &[
    "app",
    "env",
    "bucket",
    "key",
    "version_id",
    "commit",
    "branch",
    "uploader",
    "outcome",
    "succeeded",
    "reason",
    "hosts",
    "record_key",
];

/// The keys of each entry of `detail.hosts`.
/// `outcome` is the host's state for the deploy (`not_sent` when the rollout stopped before
/// its wave, `offline` when SSM did not report it online); `rollback` the fleet rollback's
/// state on it (`null` when it was not sent back).
pub const DEPLOY_FINISHED_HOST_KEYS: &[&str] = &["instance_id", "outcome", "exit_code", "rollback"];

/// `source` of SSM's events (the deployer's second rule listens to it).
pub const SSM_SOURCE: &str = "aws.ssm";
/// `detail-type` of one host's command status change.
pub const INVOCATION_STATUS_CHANGE: &str = "EC2 Command Invocation Status-change Notification";
/// The invocation statuses after which a host's command never changes: what the rule
/// matches and what the deployer stores (`detail.status` spellings of the SSM events).
pub const TERMINAL_STATUSES: &[&str] = &[
    "Success",
    "Failed",
    "TimedOut",
    "Cancelled",
    "DeliveryTimedOut",
    "ExecutionTimedOut",
    "Undeliverable",
    "Terminated",
];

/// `source` of EC2's events.
pub const EC2_SOURCE: &str = "aws.ec2";
/// `detail-type` of an instance's state change (`detail.state` `running` starts catch-up).
pub const INSTANCE_STATE_CHANGE: &str = "EC2 Instance State-change Notification";
/// `source` of an EventBridge schedule's events (the periodic reconcile).
pub const SCHEDULE_SOURCE: &str = "aws.events";
/// `detail-type` of an EventBridge schedule's events.
pub const SCHEDULED_EVENT: &str = "Scheduled Event";
