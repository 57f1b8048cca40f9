//! The operator commands' AWS edge: small calls that fetch facts (versions, metadata, deploy
//! records, invocations) and the one write (`CopyObject` for a restore). No decisions here.
//!
//! Deploy records are found by listing their prefix before reading them: with the uploader
//! policy's prefix-conditioned `s3:ListBucket`, S3 answers a `GetObject` of a missing key with
//! 403, not 404, so "no record yet" must come from a listing.

use std::collections::{BTreeMap, HashMap, HashSet};

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::types::{ChecksumAlgorithm, MetadataDirective};
use dropship_contract::record::{DeployRecord, LatestPointer};

use super::status::{Invocation, Observed};
use super::versions::VersionEntry;
use super::wait::DeployFacts;
use super::{OpsError, SsmError, Target};
use crate::s3::{classify, S3Error};

/// What `HeadObject` of one version says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadFacts {
    /// User metadata (keys without `x-amz-meta-`), as S3 returns it.
    pub metadata: HashMap<String, String>,
    /// The version's ETag (quoted, as S3 sends it).
    pub etag: Option<String>,
    /// Size in bytes.
    pub size: Option<i64>,
}

/// The SDK clients the operator commands use, and the target they read.
#[derive(Debug, Clone)]
pub struct Clients {
    /// S3 client (path style against custom endpoints).
    pub s3: aws_sdk_s3::Client,
    /// SSM client.
    pub ssm: aws_sdk_ssm::Client,
    /// Bucket and app/env.
    pub target: Target,
}

fn ssm_error<E, R>(err: SdkError<E, R>, action: &'static str, command_id: &str) -> SsmError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let detail = DisplayErrorContext(&err).to_string();
    let code = err.code().unwrap_or_default().to_string();
    if code == "AccessDeniedException" || code == "UnrecognizedClientException" {
        return SsmError::AccessDenied {
            action,
            command_id: command_id.to_string(),
            detail,
        };
    }
    let lower = detail.to_ascii_lowercase();
    if lower.contains("credential")
        && (lower.contains("no ") || lower.contains("provider") || lower.contains("load"))
    {
        return SsmError::NoCredentials { action, detail };
    }
    match &err {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            SsmError::Network { action, detail }
        }
        _ => SsmError::Other {
            action,
            command_id: command_id.to_string(),
            detail,
        },
    }
}

fn millis(t: Option<&aws_smithy_types::DateTime>) -> i64 {
    t.and_then(|t| t.to_millis().ok()).unwrap_or(0)
}

/// Percent-encodes a `CopySource` component (keeps `/` in keys).
fn encode_copy_source(value: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Clients {
    fn bucket(&self) -> &str {
        &self.target.bucket
    }

    /// Every version and delete marker of the release key, newest first.
    pub async fn history(&self) -> Result<Vec<VersionEntry>, OpsError> {
        let key = self.target.key();
        let mut versions = Vec::new();
        let mut markers = Vec::new();
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        loop {
            let out = self
                .s3
                .list_object_versions()
                .bucket(self.bucket())
                .prefix(&key)
                .set_key_marker(key_marker.clone())
                .set_version_id_marker(version_marker.clone())
                .send()
                .await
                .map_err(|e| classify(e, self.bucket(), "ListObjectVersions"))?;
            for v in out
                .versions()
                .iter()
                .filter(|v| v.key() == Some(key.as_str()))
            {
                versions.push(VersionEntry {
                    version_id: v.version_id().unwrap_or_default().to_string(),
                    modified: super::rfc3339(v.last_modified()),
                    modified_ms: millis(v.last_modified()),
                    is_latest: v.is_latest().unwrap_or(false),
                    delete_marker: false,
                    size: v.size(),
                });
            }
            for m in out
                .delete_markers()
                .iter()
                .filter(|m| m.key() == Some(key.as_str()))
            {
                markers.push(VersionEntry {
                    version_id: m.version_id().unwrap_or_default().to_string(),
                    modified: super::rfc3339(m.last_modified()),
                    modified_ms: millis(m.last_modified()),
                    is_latest: m.is_latest().unwrap_or(false),
                    delete_marker: true,
                    size: None,
                });
            }
            if out.is_truncated() != Some(true) {
                break;
            }
            key_marker = out.next_key_marker().map(str::to_string);
            version_marker = out.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() && version_marker.is_none() {
                break;
            }
        }
        Ok(super::versions::merge_history(versions, markers))
    }

    /// `HeadObject` of one version (metadata, ETag, size).
    pub async fn head_version(&self, version_id: &str) -> Result<HeadFacts, OpsError> {
        let out = self
            .s3
            .head_object()
            .bucket(self.bucket())
            .key(self.target.key())
            .version_id(version_id)
            .send()
            .await
            .map_err(|e| classify(e, self.bucket(), "HeadObject"))?;
        Ok(HeadFacts {
            metadata: out.metadata().cloned().unwrap_or_default(),
            etag: out.e_tag().map(str::to_string),
            size: out.content_length(),
        })
    }

    /// `HeadObject` of one version; `None` when S3 does not know the id for this key (404, or
    /// 400 for an id that is not even well-formed).
    pub async fn head_if_exists(&self, version_id: &str) -> Result<Option<HeadFacts>, OpsError> {
        match self
            .s3
            .head_object()
            .bucket(self.bucket())
            .key(self.target.key())
            .version_id(version_id)
            .send()
            .await
        {
            Ok(out) => Ok(Some(HeadFacts {
                metadata: out.metadata().cloned().unwrap_or_default(),
                etag: out.e_tag().map(str::to_string),
                size: out.content_length(),
            })),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                if matches!(status, Some(400 | 404 | 405)) {
                    Ok(None)
                } else {
                    Err(classify(e, self.bucket(), "HeadObject").into())
                }
            }
        }
    }

    /// The version id the key currently points to; `None` when it has no current version
    /// (never uploaded, or the newest version is a delete marker).
    pub async fn current_version(&self) -> Result<Option<String>, OpsError> {
        match self
            .s3
            .head_object()
            .bucket(self.bucket())
            .key(self.target.key())
            .send()
            .await
        {
            Ok(out) => Ok(out.version_id().map(str::to_string)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(classify(e, self.bucket(), "HeadObject").into()),
        }
    }

    /// Keys under this app/env's deploy-records prefix (or a narrower prefix under it).
    pub async fn record_keys(&self, prefix: &str) -> Result<HashSet<String>, OpsError> {
        let mut keys = HashSet::new();
        let mut token = None::<String>;
        loop {
            let out = self
                .s3
                .list_objects_v2()
                .bucket(self.bucket())
                .prefix(prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| classify(e, self.bucket(), "ListObjectsV2"))?;
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_string)),
            );
            token = out.next_continuation_token().map(str::to_string);
            if out.is_truncated() != Some(true) || token.is_none() {
                break;
            }
        }
        Ok(keys)
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, OpsError> {
        match self
            .s3
            .get_object()
            .bucket(self.bucket())
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let body = out.body.collect().await.map_err(|e| S3Error::Network {
                    action: "GetObject",
                    detail: format!("reading s3://{}/{key}: {e}", self.bucket()),
                })?;
                Ok(Some(body.into_bytes().to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(classify(e, self.bucket(), "GetObject").into()),
        }
    }

    /// Reads a deploy record known to exist (listed); `None` if it vanished meanwhile.
    pub async fn read_record(&self, key: &str) -> Result<Option<DeployRecord>, OpsError> {
        let Some(bytes) = self.get_bytes(key).await? else {
            return Ok(None);
        };
        DeployRecord::from_bytes(&bytes)
            .map(Some)
            .map_err(|cause| OpsError::BadRecord {
                bucket: self.bucket().to_string(),
                key: key.to_string(),
                cause,
            })
    }

    /// The deploy record of one version, if the deployer wrote one.
    pub async fn record(&self, version_id: &str) -> Result<Option<DeployRecord>, OpsError> {
        let key = self.target.release.record_key(version_id);
        if !self.record_keys(&key).await?.contains(&key) {
            return Ok(None);
        }
        self.read_record(&key).await
    }

    /// The newest-dispatched pointer, if any version was dispatched.
    pub async fn pointer(
        &self,
        listed: &HashSet<String>,
    ) -> Result<Option<LatestPointer>, OpsError> {
        let key = self.target.release.latest_pointer_key();
        if !listed.contains(&key) {
            return Ok(None);
        }
        let Some(bytes) = self.get_bytes(&key).await? else {
            return Ok(None);
        };
        LatestPointer::from_bytes(&bytes)
            .map(Some)
            .map_err(|cause| OpsError::BadRecord {
                bucket: self.bucket().to_string(),
                key,
                cause,
            })
    }

    /// Copies `version_id` on top of the key with `metadata` (REPLACE), only if the source
    /// still has `etag`. Returns the new version id.
    pub async fn copy_version(
        &self,
        version_id: &str,
        etag: Option<&str>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<String, OpsError> {
        let key = self.target.key();
        let source = format!(
            "{}/{}?versionId={}",
            self.bucket(),
            encode_copy_source(&key, true),
            encode_copy_source(version_id, false)
        );
        let out = self
            .s3
            .copy_object()
            .bucket(self.bucket())
            .key(&key)
            .copy_source(source)
            .set_copy_source_if_match(etag.map(str::to_string))
            .metadata_directive(MetadataDirective::Replace)
            .set_metadata(Some(metadata.clone().into_iter().collect()))
            .content_type("application/gzip")
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .map_err(|e| classify(e, self.bucket(), "CopyObject"))?;
        out.version_id().map(str::to_string).ok_or_else(|| {
            S3Error::Other {
                action: "CopyObject",
                detail: format!(
                    "S3 returned no version id for the copy onto s3://{}/{key}: is versioning still enabled?",
                    self.bucket()
                ),
            }
            .into()
        })
    }

    /// One `GetCommandInvocation`; "does not exist (yet)" is a fact, not an error.
    pub async fn invocation(
        &self,
        command_id: &str,
        instance_id: &str,
    ) -> Result<Observed, OpsError> {
        match self
            .ssm
            .get_command_invocation()
            .command_id(command_id)
            .instance_id(instance_id)
            .send()
            .await
        {
            Ok(out) => Ok(Observed::Found(Invocation {
                command_id: out.command_id().unwrap_or(command_id).to_string(),
                instance_id: out.instance_id().unwrap_or(instance_id).to_string(),
                status: out
                    .status()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default(),
                status_details: out.status_details().unwrap_or_default().to_string(),
                response_code: out.response_code(),
                standard_output_content: out
                    .standard_output_content()
                    .unwrap_or_default()
                    .to_string(),
                standard_error_content: out
                    .standard_error_content()
                    .unwrap_or_default()
                    .to_string(),
            })),
            Err(e) => {
                // The error type normally comes from the JSON body; the protocol also sends it
                // in `X-Amzn-ErrorType`, which is all that is left when the body cannot be
                // parsed (moto answers this operation's errors with an XML body).
                let code = e
                    .code()
                    .map(str::to_string)
                    .or_else(|| {
                        e.raw_response()
                            .and_then(|r| r.headers().get("x-amzn-errortype"))
                            .map(|v| v.split(':').next().unwrap_or(v).to_string())
                    })
                    .unwrap_or_default();
                match code.as_str() {
                    "InvocationDoesNotExist" => Ok(Observed::NotYet { code }),
                    "InvalidCommandId" | "InvalidInstanceId" => Ok(Observed::Gone { code }),
                    _ => Err(ssm_error(e, "GetCommandInvocation", command_id).into()),
                }
            }
        }
    }
}

impl DeployFacts for Clients {
    async fn record(&self, version_id: &str) -> Result<Option<DeployRecord>, OpsError> {
        Clients::record(self, version_id).await
    }

    async fn invocation(&self, command_id: &str, instance_id: &str) -> Result<Observed, OpsError> {
        Clients::invocation(self, command_id, instance_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_source_keeps_key_slashes_and_escapes_the_rest() {
        assert_eq!(
            encode_copy_source("releases/shop/prod.tar.gz", true),
            "releases/shop/prod.tar.gz"
        );
        assert_eq!(encode_copy_source("a/b+c d", true), "a/b%2Bc%20d");
        assert_eq!(
            encode_copy_source("3HL4kq/J+x=", false),
            "3HL4kq%2FJ%2Bx%3D"
        );
    }
}
