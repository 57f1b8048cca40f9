//! The bundler's S3 edge: check the bucket can hold a deploy history, upload one version
//! (single PUT or streaming multipart), and never leave a partial version behind.

use std::collections::BTreeMap;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use dropship_aws::{classify, AwsError, Failure};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::aws_calls::{
    ABORT_MULTIPART_UPLOAD, COMPLETE_MULTIPART_UPLOAD, CREATE_MULTIPART_UPLOAD,
    GET_BUCKET_VERSIONING, PUT_OBJECT, UPLOAD_PART,
};

/// Smallest part S3 accepts (except the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;
/// Parts uploaded at once; bounded so memory stays at a few parts.
pub const PART_CONCURRENCY: usize = 4;

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
    /// `bucket "name"`, for messages.
    fn described(&self) -> String {
        format!("bucket {:?}", self.name)
    }

    /// The bucket's versioning status (`Enabled`, `Suspended`), `None` when never enabled.
    pub async fn versioning(&self) -> Result<Option<String>, AwsError> {
        let out = self
            .client
            .get_bucket_versioning()
            .bucket(&self.name)
            .send()
            .await
            .map_err(|e| classify(&GET_BUCKET_VERSIONING, self.described(), &e))?;
        Ok(out.status().map(|s| s.as_str().to_owned()))
    }

    /// Uploads a bundle held in memory with one PUT, checksummed end to end.
    pub async fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        sha256: &[u8],
        metadata: &BTreeMap<String, String>,
    ) -> Result<Uploaded, AwsError> {
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
            .map_err(|e| classify(&PUT_OBJECT, self.described(), &e))?;
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
    ) -> Result<String, AwsError> {
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
            .map_err(|e| classify(&CREATE_MULTIPART_UPLOAD, self.described(), &e))?;
        out.upload_id().map(str::to_string).ok_or_else(|| {
            AwsError::new(
                &CREATE_MULTIPART_UPLOAD,
                self.described(),
                Failure::Refused,
                "S3 returned no upload id".into(),
            )
        })
    }

    /// Uploads parts as they arrive, up to [`PART_CONCURRENCY`] at once; returns them in order.
    pub async fn upload_parts(
        &self,
        key: &str,
        upload_id: &str,
        mut parts: mpsc::Receiver<Vec<u8>>,
    ) -> Result<Vec<CompletedPart>, AwsError> {
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
            let bucket = self.described();
            running.spawn(async move {
                let out = request
                    .send()
                    .await
                    .map_err(|e| classify(&UPLOAD_PART, bucket, &e))?;
                Ok::<_, AwsError>(
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
    ) -> Result<Uploaded, AwsError> {
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
            .map_err(|e| classify(&COMPLETE_MULTIPART_UPLOAD, self.described(), &e))?;
        Ok(Uploaded {
            version_id: out.version_id().unwrap_or_default().to_string(),
            multipart: true,
        })
    }

    /// Aborts a multipart upload so no parts linger (and no version is created).
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), AwsError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.name)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| classify(&ABORT_MULTIPART_UPLOAD, self.described(), &e))?;
        Ok(())
    }
}

fn join_part(
    joined: Option<Result<Result<CompletedPart, AwsError>, tokio::task::JoinError>>,
) -> Result<CompletedPart, AwsError> {
    let failed = |detail: String| {
        AwsError::new(
            &UPLOAD_PART,
            "a part of the bundle",
            Failure::Refused,
            detail,
        )
    };
    match joined {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(failed(format!("the part's task failed: {e}"))),
        None => Err(failed("no part task".into())),
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
