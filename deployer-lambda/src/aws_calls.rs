//! The AWS calls the Lambda's code makes, and the IAM actions they need.
//!
//! `infra/` grants the function's role exactly [`IAM_ACTIONS`] (plus what the Lambda service
//! itself does with the role, see [`PLATFORM_ACTIONS`]); a contract test in `tests/` compares
//! the two, so a new SDK call without a grant (or a grant nobody uses) fails the build.
//! Keep [`CALLS`] next to the code: every SDK call in this crate appears there once.

pub use dropship_aws::AwsCall;

/// `HeadObject` of the event's version.
pub const HEAD_VERSION: AwsCall = AwsCall {
    operation: "s3:HeadObject (versionId)",
    iam_action: "s3:GetObjectVersion",
    why: "read the release version's metadata before anything else",
};
/// `GetObject` of the event's version.
pub const GET_VERSION: AwsCall = AwsCall {
    operation: "s3:GetObject (versionId)",
    iam_action: "s3:GetObjectVersion",
    why: "stream the exact version through the verifier",
};
/// `GetObject` of a deploy record or the latest pointer.
pub const GET_RECORD: AwsCall = AwsCall {
    operation: "s3:GetObject",
    iam_action: "s3:GetObject",
    why: "read the deploy record and the latest-dispatched pointer",
};
/// What makes a missing record a 404 rather than a 403.
pub const RECORD_NOT_WRITTEN_YET: AwsCall = AwsCall {
    operation: "s3:GetObject (a record not written yet)",
    iam_action: "s3:ListBucket",
    why: "S3 answers 404 rather than 403 for a missing key only with s3:ListBucket; the first event of every version reads a record that does not exist yet",
};
/// Conditional `PutObject` of a record or the pointer.
pub const PUT_RECORD: AwsCall = AwsCall {
    operation: "s3:PutObject (If-None-Match / If-Match)",
    iam_action: "s3:PutObject",
    why: "claim a version and write its deploy record and the latest pointer",
};
/// `DescribeInstances` by tags.
pub const DESCRIBE_INSTANCES: AwsCall = AwsCall {
    operation: "ec2:DescribeInstances",
    iam_action: "ec2:DescribeInstances",
    why: "find the running instances tagged with the app and environment",
};
/// `SendCommand` of the host script.
pub const SEND_COMMAND: AwsCall = AwsCall {
    operation: "ssm:SendCommand",
    iam_action: "ssm:SendCommand",
    why: "run the host script (the installation's command document) on the targets",
};
/// `ListCommands` after a crashed attempt.
pub const LIST_COMMANDS: AwsCall = AwsCall {
    operation: "ssm:ListCommands",
    iam_action: "ssm:ListCommands",
    why: "after a crashed attempt, find commands it already sent so none is sent twice",
};
/// `HeadObject` without a version: the key's current version.
pub const HEAD_CURRENT: AwsCall = AwsCall {
    operation: "s3:HeadObject",
    iam_action: "s3:GetObject",
    why: "only the key's current version deploys: order comes from S3, not from the event",
};
/// `ListObjectsV2` of one version's per-host results.
pub const LIST_RESULTS: AwsCall = AwsCall {
    operation: "s3:ListObjectsV2",
    iam_action: "s3:ListBucket",
    why: "read every stored host result of a version to decide the fleet's next step",
};
/// `DescribeInstanceInformation` of the tagged instances.
pub const DESCRIBE_INSTANCE_INFORMATION: AwsCall = AwsCall {
    operation: "ssm:DescribeInstanceInformation",
    iam_action: "ssm:DescribeInstanceInformation",
    why: "send only to instances SSM reports online; record the others as pending",
};
/// `GetCommandInvocation` of a finished (command, instance) pair.
pub const GET_COMMAND_INVOCATION: AwsCall = AwsCall {
    operation: "ssm:GetCommandInvocation",
    iam_action: "ssm:GetCommandInvocation",
    why: "read a host's result (exit code, result line) when SSM reports it finished",
};
/// `PutEvents` on the default bus.
pub const PUT_EVENTS: AwsCall = AwsCall {
    operation: "events:PutEvents",
    iam_action: "events:PutEvents",
    why: "the one Dropship Deployment Finished event that ends every deploy",
};

/// Every SDK call of this crate. `HeadObject`/`GetObject` with a `versionId` are authorised
/// by `s3:GetObjectVersion`, not `s3:GetObject`. Nothing is presigned: hosts download with
/// their own instance role (`dropship_contract::host::HOST_IAM_ACTIONS`).
pub const CALLS: &[AwsCall] = &[
    HEAD_VERSION,
    GET_VERSION,
    GET_RECORD,
    RECORD_NOT_WRITTEN_YET,
    PUT_RECORD,
    DESCRIBE_INSTANCES,
    SEND_COMMAND,
    LIST_COMMANDS,
    HEAD_CURRENT,
    LIST_RESULTS,
    DESCRIBE_INSTANCE_INFORMATION,
    GET_COMMAND_INVOCATION,
    PUT_EVENTS,
];

/// The IAM actions behind [`CALLS`], each once: what `infra/` grants the function's code.
pub const IAM_ACTIONS: &[&str] = &[
    "s3:GetObject",
    "s3:GetObjectVersion",
    "s3:PutObject",
    "s3:ListBucket",
    "ec2:DescribeInstances",
    "ssm:SendCommand",
    "ssm:ListCommands",
    "ssm:DescribeInstanceInformation",
    "ssm:GetCommandInvocation",
    "events:PutEvents",
];

/// Actions the Lambda *service* performs with the function's role, not this code: shipping
/// the binary's stdout (the JSON `tracing` logs) to the function's CloudWatch log group.
pub const PLATFORM_ACTIONS: &[&str] = &["logs:CreateLogStream", "logs:PutLogEvents"];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn iam_actions_are_exactly_the_actions_of_the_calls() {
        let from_calls: BTreeSet<&str> = dropship_aws::iam_actions(CALLS).into_iter().collect();
        let listed: BTreeSet<&str> = IAM_ACTIONS.iter().copied().collect();
        assert_eq!(
            listed.len(),
            IAM_ACTIONS.len(),
            "IAM_ACTIONS has duplicates"
        );
        assert_eq!(from_calls, listed);
        for a in IAM_ACTIONS.iter().chain(PLATFORM_ACTIONS) {
            let (service, action) = a.split_once(':').expect("service:Action");
            assert!(!service.is_empty() && action.chars().next().unwrap().is_ascii_uppercase());
            assert!(!a.contains('*'), "no wildcards: {a}");
        }
    }
}
