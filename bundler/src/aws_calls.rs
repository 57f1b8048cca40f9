//! The AWS calls `bundle-and-upload` makes to upload, as IAM actions. The uploader policy in
//! `infra/` must grant exactly these plus the operator's (`dropship_operator::aws_calls`);
//! the infra contract test compares the two.

use dropship_aws::AwsCall;

/// `GetBucketVersioning`: refuse a bucket that cannot keep a deploy history.
pub const GET_BUCKET_VERSIONING: AwsCall = AwsCall {
    operation: "s3:GetBucketVersioning",
    iam_action: "s3:GetBucketVersioning",
    why: "refuse a bucket without versioning before writing anything",
};
/// `PutObject`: a bundle small enough for one request.
pub const PUT_OBJECT: AwsCall = AwsCall {
    operation: "s3:PutObject",
    iam_action: "s3:PutObject",
    why: "upload a bundle up to the multipart threshold in one request",
};
/// `CreateMultipartUpload`.
pub const CREATE_MULTIPART_UPLOAD: AwsCall = AwsCall {
    operation: "s3:CreateMultipartUpload",
    iam_action: "s3:PutObject",
    why: "start a streaming upload of a large bundle with its final metadata",
};
/// `UploadPart`.
pub const UPLOAD_PART: AwsCall = AwsCall {
    operation: "s3:UploadPart",
    iam_action: "s3:PutObject",
    why: "send each part while compression goes on",
};
/// `CompleteMultipartUpload`: the new version appears only now.
pub const COMPLETE_MULTIPART_UPLOAD: AwsCall = AwsCall {
    operation: "s3:CompleteMultipartUpload",
    iam_action: "s3:PutObject",
    why: "create the version from the uploaded parts",
};
/// `AbortMultipartUpload`: never leave a partial upload behind.
pub const ABORT_MULTIPART_UPLOAD: AwsCall = AwsCall {
    operation: "s3:AbortMultipartUpload",
    iam_action: "s3:AbortMultipartUpload",
    why: "remove the parts of a failed upload",
};

/// Every SDK call of this crate.
pub const CALLS: &[AwsCall] = &[
    GET_BUCKET_VERSIONING,
    PUT_OBJECT,
    CREATE_MULTIPART_UPLOAD,
    UPLOAD_PART,
    COMPLETE_MULTIPART_UPLOAD,
    ABORT_MULTIPART_UPLOAD,
];

/// The IAM actions behind [`CALLS`], each once.
pub const IAM_ACTIONS: &[&str] = &[
    "s3:GetBucketVersioning",
    "s3:PutObject",
    "s3:AbortMultipartUpload",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iam_actions_are_exactly_the_actions_of_the_calls() {
        assert_eq!(dropship_aws::iam_actions(CALLS), IAM_ACTIONS);
    }
}
