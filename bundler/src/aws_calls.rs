//! The AWS calls `bundle-and-upload` makes, as IAM actions. The uploader policy in `infra/`
//! must grant exactly these; the infra contract test compares the two.

/// IAM actions behind every SDK call in this crate (upload, versions, status, restore).
pub const IAM_ACTIONS: &[&str] = &[
    // GetBucketVersioning: refuse unversioned buckets.
    "s3:GetBucketVersioning",
    // PutObject, CreateMultipartUpload, UploadPart, CompleteMultipartUpload, CopyObject (dest).
    "s3:PutObject",
    // AbortMultipartUpload: never leave a partial upload behind.
    "s3:AbortMultipartUpload",
    // ListParts, used to prove an aborted upload left nothing.
    "s3:ListMultipartUploadParts",
    // HeadObject/GetObject on records and current objects.
    "s3:GetObject",
    // HeadObject/GetObject/CopyObject source by version id.
    "s3:GetObjectVersion",
    // ListObjectsV2 over deploy records.
    "s3:ListBucket",
    // ListObjectVersions: the deploy history.
    "s3:ListBucketVersions",
    // GetCommandInvocation: per-host results for `status` and `--wait`.
    "ssm:GetCommandInvocation",
    // ListCommandInvocations: every host of a command.
    "ssm:ListCommandInvocations",
];
