//! Deploy records and the latest-dispatched pointer in S3, next to the releases.
//!
//! Every write is conditional (`If-None-Match: *` to create, `If-Match: <etag>` to replace),
//! so two invocations racing on one version cannot both claim it, and the pointer only ever
//! moves forward. This state lives in S3, never in the Lambda's memory.

use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use dropship_contract::key::{ReleaseKey, RECORDS_PREFIX};
use dropship_contract::record::{DeployRecord, LatestPointer};

use crate::aws::AwsError;

/// A stored document and the ETag that guards replacing it.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    /// The parsed document.
    pub doc: T,
    /// Its ETag (for `If-Match`).
    pub etag: String,
}

/// Result of a conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Written; the new ETag.
    Ok(String),
    /// Someone else wrote first (HTTP 412/409): re-read and decide again.
    Conflict,
}

/// Records of one bucket.
#[derive(Debug, Clone)]
pub struct RecordStore {
    s3: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

fn status_of<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

fn err<E: std::error::Error + 'static>(
    call: &'static str,
    object: String,
    e: &SdkError<E>,
) -> AwsError {
    let status = status_of(e)
        .map(|s| format!("HTTP {s}: "))
        .unwrap_or_default();
    AwsError {
        call,
        object,
        detail: format!("{status}{}", DisplayErrorContext(e)),
    }
}

impl RecordStore {
    /// Records under `prefix` (the configured `DROPSHIP_RECORDS_PREFIX`) in `bucket`.
    pub fn new(s3: aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Self {
        Self {
            s3,
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
        }
    }

    /// Bucket the records live in.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Swap the contract's default records prefix for the configured one.
    fn with_prefix(&self, key: String) -> String {
        match key.strip_prefix(RECORDS_PREFIX) {
            Some(rest) => format!("{}{rest}", self.prefix),
            None => key,
        }
    }

    /// Key of the record for one version.
    pub fn record_key(&self, release: &ReleaseKey, version_id: &str) -> String {
        self.with_prefix(release.record_key(version_id))
    }

    /// Key of the latest pointer of one app/env.
    pub fn pointer_key(&self, release: &ReleaseKey) -> String {
        self.with_prefix(release.latest_pointer_key())
    }

    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, String)>, AwsError> {
        let object = format!("s3://{}/{key}", self.bucket);
        match self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let etag = out.e_tag().unwrap_or_default().to_owned();
                let bytes = out.body.collect().await.map_err(|e| AwsError {
                    call: "s3:GetObject",
                    object: object.clone(),
                    detail: e.to_string(),
                })?;
                Ok(Some((bytes.into_bytes().to_vec(), etag)))
            }
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(err("s3:GetObject", object, &e)),
        }
    }

    async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        if_match: Option<&str>,
    ) -> Result<Written, AwsError> {
        let mut req = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        req = match if_match {
            Some(etag) => req.if_match(etag),
            None => req.if_none_match("*"),
        };
        match req.send().await {
            Ok(out) => Ok(Written::Ok(out.e_tag().unwrap_or_default().to_owned())),
            Err(e) if matches!(status_of(&e), Some(412 | 409)) => Ok(Written::Conflict),
            Err(e) => Err(err(
                "s3:PutObject",
                format!("s3://{}/{key}", self.bucket),
                &e,
            )),
        }
    }

    /// The record of one version, if any. An unreadable record is an error naming it (never
    /// silently overwritten).
    pub async fn record(
        &self,
        release: &ReleaseKey,
        version_id: &str,
    ) -> Result<Option<Stored<DeployRecord>>, AwsError> {
        let key = self.record_key(release, version_id);
        match self.get(&key).await? {
            None => Ok(None),
            Some((bytes, etag)) => {
                let doc = DeployRecord::from_bytes(&bytes).map_err(|e| AwsError {
                    call: "s3:GetObject",
                    object: format!("s3://{}/{key}", self.bucket),
                    detail: format!("{e}; fix or delete the record object"),
                })?;
                Ok(Some(Stored { doc, etag }))
            }
        }
    }

    /// Create (`etag` None) or replace (`If-Match`) a record.
    pub async fn write_record(
        &self,
        record: &DeployRecord,
        etag: Option<&str>,
    ) -> Result<Written, AwsError> {
        let release = ReleaseKey::new(&record.app, &record.env).map_err(|e| AwsError {
            call: "s3:PutObject",
            object: format!("deploy record of {}/{}", record.app, record.env),
            detail: e.to_string(),
        })?;
        let key = self.record_key(&release, &record.version_id);
        self.put(&key, record.to_bytes(), etag).await
    }

    /// The latest-dispatched pointer of one app/env, if any.
    pub async fn pointer(
        &self,
        release: &ReleaseKey,
    ) -> Result<Option<Stored<LatestPointer>>, AwsError> {
        let key = self.pointer_key(release);
        match self.get(&key).await? {
            None => Ok(None),
            Some((bytes, etag)) => {
                let doc = LatestPointer::from_bytes(&bytes).map_err(|e| AwsError {
                    call: "s3:GetObject",
                    object: format!("s3://{}/{key}", self.bucket),
                    detail: format!("{e}; fix or delete the pointer object"),
                })?;
                Ok(Some(Stored { doc, etag }))
            }
        }
    }

    /// Create or replace the pointer, conditional on what was read.
    pub async fn write_pointer(
        &self,
        release: &ReleaseKey,
        pointer: &LatestPointer,
        etag: Option<&str>,
    ) -> Result<Written, AwsError> {
        let key = self.pointer_key(release);
        self.put(&key, pointer.to_bytes(), etag).await
    }
}
