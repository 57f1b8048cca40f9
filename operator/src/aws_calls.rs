//! The AWS calls `dropship` (and `bundle-and-upload --wait`) make, as IAM actions. The
//! uploader policy in `infra/` grants exactly these plus the upload's
//! (`dropship_bundler::aws_calls`); the infra contract test compares the two.
//!
//! Deploy records are listed before they are read: with the uploader policy's
//! prefix-conditioned `s3:ListBucket`, S3 answers a `GetObject` of a missing key with 403,
//! not 404, so "no record yet" must come from a listing.

use dropship_aws::AwsCall;

/// `ListObjectVersions` of the release key: the deploy history.
pub const LIST_OBJECT_VERSIONS: AwsCall = AwsCall {
    operation: "s3:ListObjectVersions",
    iam_action: "s3:ListBucketVersions",
    why: "the deploy history (releases, rollback, promote: of the source key)",
};
/// `HeadObject` with a version id: one version's metadata.
pub const HEAD_VERSION: AwsCall = AwsCall {
    operation: "s3:HeadObject (versionId)",
    iam_action: "s3:GetObjectVersion",
    why: "a version's metadata (releases, status, rollback, promote: of the source version)",
};
/// `HeadObject` without a version id: which version is current.
pub const HEAD_CURRENT: AwsCall = AwsCall {
    operation: "s3:HeadObject",
    iam_action: "s3:GetObject",
    why: "the key's current version (status without a version)",
};
/// `ListObjectsV2` under the app/env's records prefix.
pub const LIST_RECORDS: AwsCall = AwsCall {
    operation: "s3:ListObjectsV2",
    iam_action: "s3:ListBucket",
    why: "which deploy records exist, before reading them (promote: the source's)",
};
/// `GetObject` of a deploy record or the latest pointer.
pub const GET_RECORD: AwsCall = AwsCall {
    operation: "s3:GetObject",
    iam_action: "s3:GetObject",
    why: "read deploy records and the newest-dispatched pointer",
};
/// `CopyObject` onto the release key (the destination).
pub const COPY_OBJECT: AwsCall = AwsCall {
    operation: "s3:CopyObject",
    iam_action: "s3:PutObject",
    why: "rollback: the old version copied on top of the key; promote: the source version copied onto the target key",
};
/// `CopyObject` from a version id (the source).
pub const COPY_SOURCE: AwsCall = AwsCall {
    operation: "s3:CopyObject (source versionId)",
    iam_action: "s3:GetObjectVersion",
    why: "rollback, promote: read the version copied (promote: on the source key)",
};
/// `GetCommandInvocation`: for a host whose result the deployer has not stored yet (live
/// progress). Optional: the uploader policy does not grant it (it cannot be limited to one
/// app's commands), and without it such a host shows as dispatched until its stored result
/// arrives. `ListCommandInvocations` is not used: its output is cut at 2,500 characters,
/// which can lose the host script's last-line result.
pub const GET_COMMAND_INVOCATION: AwsCall = AwsCall {
    operation: "ssm:GetCommandInvocation",
    iam_action: "ssm:GetCommandInvocation",
    why: "live progress of hosts without a stored result yet (optional)",
};

/// `DescribeLogGroups` with the group as the prefix: does the command-output group exist.
pub const DESCRIBE_LOG_GROUPS: AwsCall = AwsCall {
    operation: "logs:DescribeLogGroups",
    iam_action: "logs:DescribeLogGroups",
    why: "logs: tell a missing log group from a stream not written yet",
};
/// `GetLogEvents` of one host's output stream of one command.
pub const GET_LOG_EVENTS: AwsCall = AwsCall {
    operation: "logs:GetLogEvents",
    iam_action: "logs:GetLogEvents",
    why: "logs: each host's full output of each command",
};
/// `FilterLogEvents` on the deployer Lambda's own group: its lines about one deploy.
pub const FILTER_LOG_EVENTS: AwsCall = AwsCall {
    operation: "logs:FilterLogEvents",
    iam_action: "logs:FilterLogEvents",
    why: "logs: the deployer Lambda's own lines about the deploy",
};
/// `GetFunctionConfiguration` of the release rule's Lambda target.
pub const GET_FUNCTION_CONFIGURATION: AwsCall = AwsCall {
    operation: "lambda:GetFunctionConfiguration",
    iam_action: "lambda:GetFunctionConfiguration",
    why: "doctor: the deployer is active and its allow-lists name the bucket, app and environment",
};
/// `GetCallerIdentity`: who the credentials are. AWS authorises it for every principal, so
/// no policy grants it (it is not in [`CALLS`]).
pub const GET_CALLER_IDENTITY: AwsCall = AwsCall {
    operation: "sts:GetCallerIdentity",
    iam_action: "sts:GetCallerIdentity",
    why: "doctor: the credentials work, and whose they are",
};
/// `GetBucketVersioning` of the artifact bucket.
pub const GET_BUCKET_VERSIONING: AwsCall = AwsCall {
    operation: "s3:GetBucketVersioning",
    iam_action: "s3:GetBucketVersioning",
    why: "doctor: the bucket exists and is versioned",
};
/// `GetBucketNotificationConfiguration` of the artifact bucket.
pub const GET_BUCKET_NOTIFICATION: AwsCall = AwsCall {
    operation: "s3:GetBucketNotificationConfiguration",
    iam_action: "s3:GetBucketNotification",
    why: "doctor: the bucket sends its events to EventBridge",
};
/// `ListRules` on the default bus.
pub const LIST_RULES: AwsCall = AwsCall {
    operation: "events:ListRules",
    iam_action: "events:ListRules",
    why: "doctor: the release rule exists, is enabled and matches the bucket",
};
/// `ListTargetsByRule` of the release rule.
pub const LIST_TARGETS_BY_RULE: AwsCall = AwsCall {
    operation: "events:ListTargetsByRule",
    iam_action: "events:ListTargetsByRule",
    why: "doctor: the release rule has a target",
};
/// `DescribeInstances` filtered by the app/env tags.
pub const DESCRIBE_INSTANCES: AwsCall = AwsCall {
    operation: "ec2:DescribeInstances",
    iam_action: "ec2:DescribeInstances",
    why: "doctor: instances carry the tags and are running",
};
/// `DescribeInstanceInformation` of the running tagged instances.
pub const DESCRIBE_INSTANCE_INFORMATION: AwsCall = AwsCall {
    operation: "ssm:DescribeInstanceInformation",
    iam_action: "ssm:DescribeInstanceInformation",
    why: "doctor: the running instances are online in SSM",
};

/// `PutObject` of the release key with an `If-Match` no object has: S3 authorises it, then
/// refuses it for its precondition, so nothing is written and no deploy starts.
pub const PUT_PROBE: AwsCall = AwsCall {
    operation: "s3:PutObject (If-Match that cannot match)",
    iam_action: "s3:PutObject",
    why: "doctor: the caller may upload to the release key (nothing is written)",
};

/// Every SDK call of this crate.
pub const CALLS: &[AwsCall] = &[
    LIST_OBJECT_VERSIONS,
    HEAD_VERSION,
    HEAD_CURRENT,
    LIST_RECORDS,
    GET_RECORD,
    COPY_OBJECT,
    COPY_SOURCE,
    GET_BUCKET_VERSIONING,
    GET_BUCKET_NOTIFICATION,
    PUT_PROBE,
];

/// Calls the uploader policy does not grant, because they cannot be limited to one app/env:
/// `status` makes its one when allowed and skips it when denied; `logs` and `doctor`'s
/// account-wide checks need an operator role and say so when denied.
pub const OPTIONAL_CALLS: &[AwsCall] = &[
    GET_COMMAND_INVOCATION,
    DESCRIBE_LOG_GROUPS,
    GET_LOG_EVENTS,
    FILTER_LOG_EVENTS,
    LIST_RULES,
    LIST_TARGETS_BY_RULE,
    DESCRIBE_INSTANCES,
    DESCRIBE_INSTANCE_INFORMATION,
    GET_FUNCTION_CONFIGURATION,
];

/// The IAM actions behind [`CALLS`], each once.
pub const IAM_ACTIONS: &[&str] = &[
    "s3:ListBucketVersions",
    "s3:GetObjectVersion",
    "s3:GetObject",
    "s3:ListBucket",
    "s3:PutObject",
    "s3:GetBucketVersioning",
    "s3:GetBucketNotification",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iam_actions_are_exactly_the_actions_of_the_calls() {
        assert_eq!(dropship_aws::iam_actions(CALLS), IAM_ACTIONS);
    }
}
