//! The upload flow: bundle once into memory when small (single PUT); when large, hash in a
//! first pass, then stream a second, identical pass into a multipart upload whose parts go
//! out while compression continues. The digest must be in the object's metadata before the
//! upload starts, and bundles are deterministic, so the two passes agree; if the tree
//! changed between them the upload is aborted and nothing is left behind.

use std::collections::BTreeMap;
use std::io::{self, Write};

use dropship_contract::metadata::ObjectMetadata;
use tokio::sync::mpsc;

use crate::archive::Progress;
use crate::bundle::{BundleDigest, BundleError, PreparedBundle};
use crate::pgz::GzipSettings;
use dropship_aws::AwsError;

use crate::s3::{Bucket, PartSink, Uploaded};

/// Tuning for one upload.
#[derive(Debug, Clone, Copy)]
pub struct UploadTuning {
    pub gzip: GzipSettings,
    /// Bundles up to this size are sent with one PUT.
    pub multipart_threshold: u64,
    pub part_size: usize,
}

/// Why an upload did not produce a version.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The bucket cannot keep a deploy history.
    #[error("bucket {bucket:?} has versioning {status}: rollback depends on object versions; enable it with `aws s3api put-bucket-versioning --bucket {bucket} --versioning-configuration Status=Enabled`; nothing was uploaded")]
    VersioningDisabled { bucket: String, status: String },
    #[error("the working tree changed while uploading (first pass sha256 {first}, second {second}); the multipart upload was aborted and no version was created; retry when nothing writes to the tree")]
    TreeChanged { first: String, second: String },
    #[error("{cause}; the multipart upload was aborted{abort_note} and no version was created")]
    MultipartAborted {
        cause: AwsError,
        /// Empty when the abort succeeded; otherwise why it failed (S3's lifecycle rule from
        /// infra/ removes the leftover parts).
        abort_note: String,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

/// Builds metadata once the digest is known (the digest is part of it).
pub type MetadataFor<'a> = &'a dyn Fn(&BundleDigest) -> ObjectMetadata;

/// Keeps bytes in memory up to a limit, then only counts (the hashing writer sees everything).
struct SpillOver {
    limit: u64,
    kept: Option<Vec<u8>>,
}

impl Write for SpillOver {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(kept) = &mut self.kept {
            if (kept.len() + buf.len()) as u64 > self.limit {
                self.kept = None;
            } else {
                kept.extend_from_slice(buf);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Result of an upload.
#[derive(Debug, Clone)]
pub struct UploadOutcome {
    pub uploaded: Uploaded,
    pub digest: BundleDigest,
    pub metadata: ObjectMetadata,
}

/// Bundles and uploads; the bucket's versioning is checked first so a refusal writes nothing.
pub async fn upload(
    bucket: &Bucket,
    prepared: &PreparedBundle,
    tuning: UploadTuning,
    metadata_for: MetadataFor<'_>,
    progress: Progress<'_>,
) -> Result<UploadOutcome, UploadError> {
    match bucket.versioning().await?.as_deref() {
        Some("Enabled") => {}
        other => {
            return Err(UploadError::VersioningDisabled {
                bucket: bucket.name.clone(),
                status: other
                    .map(str::to_lowercase)
                    .unwrap_or_else(|| "never enabled".into()),
            })
        }
    }
    let key = prepared.config.key.object_key();
    let first = tokio::task::block_in_place(|| {
        prepared.write_to(
            SpillOver {
                limit: tuning.multipart_threshold,
                kept: Some(Vec::new()),
            },
            tuning.gzip,
            progress,
        )
    })?;
    let (spill, digest) = first;
    let metadata = metadata_for(&digest);
    let headers = metadata
        .to_headers()
        .map_err(|e| UploadError::Internal(e.to_string()))?;
    let sha = hex::decode(&digest.sha256).map_err(|e| UploadError::Internal(e.to_string()))?;
    if let Some(body) = spill.kept {
        let uploaded = bucket.put(&key, body, &sha, &headers).await?;
        return Ok(UploadOutcome {
            uploaded,
            digest,
            metadata,
        });
    }
    let uploaded = multipart(bucket, prepared, tuning, &key, &headers, &digest).await?;
    Ok(UploadOutcome {
        uploaded,
        digest,
        metadata,
    })
}

async fn multipart(
    bucket: &Bucket,
    prepared: &PreparedBundle,
    tuning: UploadTuning,
    key: &str,
    headers: &BTreeMap<String, String>,
    expected: &BundleDigest,
) -> Result<Uploaded, UploadError> {
    let upload_id = bucket.start_multipart(key, headers).await?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>(2);
    let producer_bundle = prepared.clone();
    let producer = tokio::task::spawn_blocking(move || {
        let sink = PartSink::new(tx, tuning.part_size);
        let (sink, digest) = producer_bundle.write_to(sink, tuning.gzip, &mut |_, _| {})?;
        sink.finish().map_err(BundleError::Io)?;
        Ok::<_, BundleError>(digest)
    });
    let parts = bucket.upload_parts(key, &upload_id, rx).await;
    let produced = producer
        .await
        .map_err(|e| UploadError::Internal(format!("bundling task: {e}")));
    let outcome = match (parts, produced) {
        (Ok(parts), Ok(Ok(digest))) if digest == *expected => bucket
            .complete_multipart(key, &upload_id, parts)
            .await
            .map_err(UploadError::from),
        (Ok(_), Ok(Ok(digest))) => Err(UploadError::TreeChanged {
            first: expected.sha256.clone(),
            second: digest.sha256,
        }),
        (Err(e), _) => Err(e.into()),
        (Ok(_), Ok(Err(e))) => Err(e.into()),
        (Ok(_), Err(e)) => Err(e),
    };
    let Err(err) = outcome else {
        return outcome;
    };
    // The original error is what the user needs to see; the abort is reported beside it.
    let abort_note = match bucket.abort_multipart(key, &upload_id).await {
        Ok(()) => String::new(),
        Err(abort) => {
            tracing::warn!(%abort, upload_id, "could not abort multipart upload");
            format!(" (abort failed: {abort}; the bucket's lifecycle rule removes the parts)")
        }
    };
    Err(match err {
        UploadError::Aws(cause) => UploadError::MultipartAborted { cause, abort_note },
        other => other,
    })
}
