//! The AWS calls `bundle-and-upload` makes, as IAM actions. The uploader policy in `infra/`
//! must grant exactly these; the infra contract test compares the two.

/// IAM actions behind every SDK call in this crate (upload, versions, status, restore, --wait).
pub const IAM_ACTIONS: &[&str] = &[
    // GetBucketVersioning: refuse unversioned buckets.
    "s3:GetBucketVersioning",
    // PutObject, CreateMultipartUpload, UploadPart, CompleteMultipartUpload; CopyObject
    // (destination) for `restore`.
    "s3:PutObject",
    // AbortMultipartUpload: never leave a partial upload behind.
    "s3:AbortMultipartUpload",
    // GetObject on deploy records and the latest pointer; HeadObject of the current version
    // (`status` without a version).
    "s3:GetObject",
    // HeadObject by version id (`versions`, `status`, `restore`); CopyObject source by
    // version id (`restore`).
    "s3:GetObjectVersion",
    // ListObjectsV2 over deploy records: with a prefix-conditioned ListBucket, a GetObject of a
    // missing record is a 403, so records are listed before they are read.
    "s3:ListBucket",
    // ListObjectVersions: the deploy history (`versions`, `restore`).
    "s3:ListBucketVersions",
    // GetCommandInvocation: one per host of each command in a deploy record (`status`,
    // `--wait`). ListCommandInvocations is not used: its output is cut at 2,500 characters,
    // which can lose the host script's last-line result.
    "ssm:GetCommandInvocation",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_unique_service_prefixed_and_without_wildcards() {
        let mut sorted = IAM_ACTIONS.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), IAM_ACTIONS.len());
        for a in IAM_ACTIONS {
            assert!(a.starts_with("s3:") || a.starts_with("ssm:"), "{a}");
            assert!(!a.contains('*'), "{a}");
        }
    }
}
