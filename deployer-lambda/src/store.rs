//! Deploy records and the latest-dispatched pointer of one bucket, typed, over any
//! [`RecordStore`] (S3 in the Lambda, memory in the unit tests).
//!
//! Every write is conditional (`If-None-Match: *` to create, `If-Match: <etag>` to replace),
//! so two invocations racing on one version cannot both claim it, and the pointer only ever
//! moves forward. This state lives in S3, never in the Lambda's memory. Keys come from the
//! contract ([`ReleaseKey::record_key`], [`ReleaseKey::latest_pointer_key`]), the same for
//! every component.

use dropship_aws::{AwsError, Failure};
use dropship_contract::key::ReleaseKey;
use dropship_contract::record::{DeployRecord, LatestPointer, RecordError};

use crate::aws_calls::{GET_RECORD, PUT_RECORD};
use crate::edges::{Condition, RecordStore, Written};

/// A stored document and the ETag that guards replacing it.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    /// The parsed document.
    pub doc: T,
    /// Its ETag (for `If-Match`).
    pub etag: String,
}

/// The records of one bucket.
#[derive(Debug)]
pub struct Records<'a, S> {
    store: &'a S,
    bucket: &'a str,
}

fn unreadable(key: &str, bucket: &str, e: RecordError, what: &str) -> AwsError {
    AwsError::new(
        &GET_RECORD,
        format!("s3://{bucket}/{key}"),
        Failure::Refused,
        format!("{e}; fix or delete the {what} object"),
    )
}

fn condition(etag: Option<&str>) -> Condition<'_> {
    match etag {
        Some(etag) => Condition::Matches(etag),
        None => Condition::Absent,
    }
}

impl<'a, S: RecordStore> Records<'a, S> {
    /// The records in `bucket`.
    pub fn new(store: &'a S, bucket: &'a str) -> Self {
        Self { store, bucket }
    }

    /// The record of one version, if any. An unreadable record is an error naming it (never
    /// silently overwritten).
    pub async fn record(
        &self,
        release: &ReleaseKey,
        version_id: &str,
    ) -> Result<Option<Stored<DeployRecord>>, AwsError> {
        let key = release.record_key(version_id);
        match self.store.get(self.bucket, &key).await? {
            None => Ok(None),
            Some((bytes, etag)) => {
                let doc = DeployRecord::from_bytes(&bytes)
                    .map_err(|e| unreadable(&key, self.bucket, e, "record"))?;
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
        let key = record.s3_key().map_err(|e| {
            AwsError::new(
                &PUT_RECORD,
                format!("deploy record of {}/{}", record.app, record.env),
                Failure::Refused,
                e.to_string(),
            )
        })?;
        self.store
            .put(self.bucket, &key, record.to_bytes(), condition(etag))
            .await
    }

    /// The latest-dispatched pointer of one app/env, if any.
    pub async fn pointer(
        &self,
        release: &ReleaseKey,
    ) -> Result<Option<Stored<LatestPointer>>, AwsError> {
        let key = release.latest_pointer_key();
        match self.store.get(self.bucket, &key).await? {
            None => Ok(None),
            Some((bytes, etag)) => {
                let doc = LatestPointer::from_bytes(&bytes)
                    .map_err(|e| unreadable(&key, self.bucket, e, "pointer"))?;
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
        let key = release.latest_pointer_key();
        self.store
            .put(self.bucket, &key, pointer.to_bytes(), condition(etag))
            .await
    }
}
