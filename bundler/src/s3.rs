//! The bundler's S3 edge: check the bucket can hold a deploy history, upload one version
//! (single PUT or streaming multipart), and never leave a partial version behind.

use std::collections::BTreeMap;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart,
};
use aws_sdk_s3::Client;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Smallest part S3 accepts (except the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts uploaded at once; bounded so memory stays at a few parts.
pub const PART_CONCURRENCY: usize = 4;

/// An S3 failure, classified so the CLI can say what to do and pick an exit code.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("bucket {bucket:?} does not exist (or is in another account): create it with infra/ or fix `bucket` in dropship.toml")]
    BucketMissing { bucket: String },
    #[error("bucket {bucket:?} has versioning {status}: rollback depends on object versions; enable it with `aws s3api put-bucket-versioning --bucket {bucket} --versioning-configuration Status=Enabled`")]
    VersioningDisabled { bucket: String, status: String },
    #[error("access denied for {action} (IAM action {}) on bucket {bucket:?}: attach the uploader policy from infra/ to these credentials ({detail})", iam_action(action))]
    AccessDenied {
        bucket: String,
        action: &'static str,
        detail: String,
    },
    #[error("no AWS credentials found for {action}: set AWS_PROFILE (or --profile), AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run in CI with a role ({detail})")]
    NoCredentials {
        action: &'static str,
        detail: String,
    },
    #[error("network failure during {action}: {detail}; check connectivity and AWS_REGION/AWS_ENDPOINT_URL, then retry")]
    Network {
        action: &'static str,
        detail: String,
    },
    #[error("{action} failed: {detail}")]
    Other {
        action: &'static str,
        detail: String,
    },
}

impl S3Error {
    /// True when retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, S3Error::Network { .. })
    }
}

/// The IAM action that authorises an S3 API call, for access-denied messages.
pub fn iam_action(api_call: &str) -> &'static str {
    match api_call {
        "GetBucketVersioning" => "s3:GetBucketVersioning",
        "AbortMultipartUpload" => "s3:AbortMultipartUpload",
        "ListObjectVersions" => "s3:ListBucketVersions",
        "ListObjectsV2" => "s3:ListBucket",
        "HeadObject" | "GetObject" => "s3:GetObject or s3:GetObjectVersion",
        _ => "s3:PutObject",
    }
}

/// Maps an SDK error to what the user must do.
pub fn classify<E, R>(err: SdkError<E, R>, bucket: &str, action: &'static str) -> S3Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    // The service's own code and message when it answered; otherwise the transport's story.
    let detail = match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        (Some(code), None) => code.to_string(),
        _ => DisplayErrorContext(&err).to_string(),
    };
    let code = err.code().unwrap_or_default().to_string();
    match code.as_str() {
        "NoSuchBucket" => {
            return S3Error::BucketMissing {
                bucket: bucket.into(),
            }
        }
        "AccessDenied" | "AllAccessDisabled" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" => {
            return S3Error::AccessDenied {
                bucket: bucket.into(),
                action,
                detail,
            }
        }
        _ => {}
    }
    let lower = detail.to_ascii_lowercase();
    if lower.contains("credential")
        && (lower.contains("no ") || lower.contains("provider") || lower.contains("load"))
    {
        return S3Error::NoCredentials { action, detail };
    }
    match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            S3Error::Network { action, detail }
        }
        SdkError::ResponseError(_) => S3Error::Network { action, detail },
        _ => S3Error::Other { action, detail },
    }
}

/// A client for one bucket.
#[derive(Clone, Debug)]
pub struct Bucket {
    pub client: Client,
    pub name: String,
}

/// What S3 answered for an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub version_id: String,
    pub multipart: bool,
}

fn b64(bytes: &[u8]) -> String {
    aws_smithy_types::base64::encode(bytes)
}

impl Bucket {
    /// Refuses buckets that cannot keep a deploy history.
    pub async fn require_versioning(&self) -> Result<(), S3Error> {
        let out = self
            .client
            .get_bucket_versioning()
            .bucket(&self.name)
            .send()
            .await
            .map_err(|e| classify(e, &self.name, "GetBucketVersioning"))?;
        match out.status() {
            Some(BucketVersioningStatus::Enabled) => Ok(()),
            other => Err(S3Error::VersioningDisabled {
                bucket: self.name.clone(),
                status: other
                    .map(|s| s.as_str().to_lowercase())
                    .unwrap_or_else(|| "never enabled".into()),
            }),
        }
    }

    /// Uploads a bundle held in memory with one PUT, checksummed end to end.
    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        sha256: &[u8],
        metadata: &BTreeMap<String, String>,
    ) -> Result<Uploaded, S3Error> {
        let out = self
            .client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .content_type("application/gzip")
            .set_metadata(Some(metadata.clone().into_iter().collect()))
            .checksum_sha256(b64(sha256))
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| classify(e, &self.name, "PutObject"))?;
        Ok(Uploaded {
            version_id: out.version_id().unwrap_or_default().to_string(),
            multipart: false,
        })
    }

    /// Starts a multipart upload carrying the final metadata.
    pub async fn start_multipart(
        &self,
        key: &str,
        metadata: &BTreeMap<String, String>,
    ) -> Result<String, S3Error> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.name)
            .key(key)
            .content_type("application/gzip")
            .set_metadata(Some(metadata.clone().into_iter().collect()))
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| classify(e, &self.name, "CreateMultipartUpload"))?;
        out.upload_id().map(str::to_string).ok_or(S3Error::Other {
            action: "CreateMultipartUpload",
            detail: "no upload id returned".into(),
        })
    }

    /// Uploads parts as they arrive, up to [`PART_CONCURRENCY`] at once; returns them in order.
    pub async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        mut parts: mpsc::Receiver<Vec<u8>>,
    ) -> Result<Vec<CompletedPart>, S3Error> {
        let mut running = JoinSet::new();
        let mut done = Vec::new();
        let mut number = 0i32;
        loop {
            while running.len() >= PART_CONCURRENCY {
                done.push(join_part(running.join_next().await)?);
            }
            let Some(body) = parts.recv().await else {
                break;
            };
            number += 1;
            let checksum = b64(&Sha256::digest(&body));
            let request = self
                .client
                .upload_part()
                .bucket(&self.name)
                .key(key)
                .upload_id(upload_id)
                .part_number(number)
                .checksum_sha256(&checksum)
                .body(ByteStream::from(body));
            let bucket = self.name.clone();
            running.spawn(async move {
                let out = request
                    .send()
                    .await
                    .map_err(|e| classify(e, &bucket, "UploadPart"))?;
                Ok::<_, S3Error>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .checksum_sha256(checksum)
                        .build(),
                )
            });
        }
        while let Some(joined) = running.join_next().await {
            done.push(join_part(Some(joined))?);
        }
        done.sort_by_key(|p| p.part_number());
        Ok(done)
    }

    /// Completes a multipart upload; the new version appears only now.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<Uploaded, S3Error> {
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.name)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify(e, &self.name, "CompleteMultipartUpload"))?;
        Ok(Uploaded {
            version_id: out.version_id().unwrap_or_default().to_string(),
            multipart: true,
        })
    }

    /// Aborts a multipart upload so no parts linger (and no version is created).
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.name)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| classify(e, &self.name, "AbortMultipartUpload"))?;
        Ok(())
    }
}

fn join_part(
    joined: Option<Result<Result<CompletedPart, S3Error>, tokio::task::JoinError>>,
) -> Result<CompletedPart, S3Error> {
    match joined {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(S3Error::Other {
            action: "UploadPart",
            detail: e.to_string(),
        }),
        None => Err(S3Error::Other {
            action: "UploadPart",
            detail: "no part task".into(),
        }),
    }
}

/// A `Write` that cuts the bundle into parts and hands them to the uploader; blocks (bounded
/// channel) when the network is slower than compression.
pub struct PartSink {
    tx: mpsc::Sender<Vec<u8>>,
    part_size: usize,
    buffer: Vec<u8>,
}

impl PartSink {
    /// Parts of `part_size` bytes (at least [`MIN_PART_SIZE`]).
    pub fn new(tx: mpsc::Sender<Vec<u8>>, part_size: usize) -> Self {
        let part_size = part_size.max(MIN_PART_SIZE);
        Self {
            tx,
            part_size,
            buffer: Vec::with_capacity(part_size),
        }
    }

    fn send(&mut self) -> std::io::Result<()> {
        let part = std::mem::replace(&mut self.buffer, Vec::with_capacity(self.part_size));
        self.tx
            .blocking_send(part)
            .map_err(|_| std::io::Error::other("upload stopped"))
    }

    /// Sends the last (possibly short) part and closes the stream.
    pub fn finish(mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            self.send()?;
        }
        Ok(())
    }
}

impl std::io::Write for PartSink {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let written = data.len();
        while !data.is_empty() {
            let take = (self.part_size - self.buffer.len()).min(data.len());
            self.buffer.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buffer.len() == self.part_size {
                self.send()?;
            }
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
