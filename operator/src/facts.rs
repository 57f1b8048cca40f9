//! The operator's AWS edge: small calls that fetch facts (versions, metadata, deploy
//! records, invocations) and the one write (`CopyObject` for a rollback). No decisions here:
//! the pure modules ([`crate::history`], [`crate::status`]) own the types it fills in.
//!
//! Deploy records are found by listing their prefix before reading them: with the uploader
//! policy's prefix-conditioned `s3:ListBucket`, S3 answers a `GetObject` of a missing key with
//! 403, not 404, so "no record yet" must come from a listing.

use std::collections::{BTreeMap, HashMap, HashSet};

use aws_sdk_s3::types::{ChecksumAlgorithm, MetadataDirective};
use dropship_aws::{classify, error_code, http_status, AwsError, Failure};
use dropship_contract::percent::{self, URI_COMPONENT, URI_PATH};
use dropship_contract::record::{DeployRecord, LatestPointer};

use crate::aws_calls::{
    COPY_OBJECT, DESCRIBE_LOG_GROUPS, FILTER_LOG_EVENTS, GET_COMMAND_INVOCATION, GET_LOG_EVENTS,
    GET_RECORD, HEAD_CURRENT, HEAD_VERSION, LIST_OBJECT_VERSIONS, LIST_RECORDS,
};
use crate::history::{merge_history, VersionEntry};
use crate::logs::StreamRead;
use crate::status::{Invocation, Observed};
use crate::wait::DeployFacts;
use crate::{OpsError, Target};
use dropship_contract::fleet::StoredResult;

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
    /// CloudWatch Logs client (`logs`).
    pub logs: aws_sdk_cloudwatchlogs::Client,
    /// Bucket and app/env.
    pub target: Target,
}

fn millis(t: Option<&aws_smithy_types::DateTime>) -> i64 {
    t.and_then(|t| t.to_millis().ok()).unwrap_or(0)
}

/// Formats an S3 timestamp as RFC 3339 UTC (seconds), or empty when missing.
fn rfc3339(t: Option<&aws_smithy_types::DateTime>) -> String {
    t.and_then(|t| t.fmt(aws_smithy_types::date_time::Format::DateTime).ok())
        .unwrap_or_default()
}

fn head_facts(out: &aws_sdk_s3::operation::head_object::HeadObjectOutput) -> HeadFacts {
    HeadFacts {
        metadata: out.metadata().cloned().unwrap_or_default(),
        etag: out.e_tag().map(str::to_string),
        size: out.content_length(),
    }
}

impl Clients {
    /// Clients for `target` from one SDK configuration.
    pub fn new(sdk: &aws_config::SdkConfig, target: Target) -> Self {
        Self {
            s3: dropship_aws::sdk::s3_client(sdk),
            ssm: aws_sdk_ssm::Client::new(sdk),
            logs: aws_sdk_cloudwatchlogs::Client::new(sdk),
            target,
        }
    }

    fn bucket(&self) -> &str {
        &self.target.bucket
    }

    fn version_url(&self, version_id: &str) -> String {
        format!("{}?versionId={version_id}", self.target.url())
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
                .map_err(|e| classify(&LIST_OBJECT_VERSIONS, self.target.url(), &e))?;
            for v in out
                .versions()
                .iter()
                .filter(|v| v.key() == Some(key.as_str()))
            {
                versions.push(VersionEntry {
                    version_id: v.version_id().unwrap_or_default().to_string(),
                    modified: rfc3339(v.last_modified()),
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
                    modified: rfc3339(m.last_modified()),
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
        Ok(merge_history(versions, markers))
    }

    /// `HeadObject` of one version (metadata, ETag, size); an id S3 does not know for this
    /// key is [`OpsError::UnknownVersion`].
    pub async fn head_version(&self, version_id: &str) -> Result<HeadFacts, OpsError> {
        self.head_if_exists(version_id)
            .await?
            .ok_or_else(|| OpsError::UnknownVersion {
                url: self.target.url(),
                version_id: version_id.to_string(),
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
            Ok(out) => Ok(Some(head_facts(&out))),
            Err(e) if matches!(http_status(&e), Some(400 | 404 | 405)) => Ok(None),
            Err(e) => Err(classify(&HEAD_VERSION, self.version_url(version_id), &e).into()),
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
            Err(e) => Err(classify(&HEAD_CURRENT, self.target.url(), &e).into()),
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
                .map_err(|e| {
                    classify(
                        &LIST_RECORDS,
                        format!("s3://{}/{prefix}", self.bucket()),
                        &e,
                    )
                })?;
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
                let body = out.body.collect().await.map_err(|e| {
                    AwsError::new(
                        &GET_RECORD,
                        format!("s3://{}/{key}", self.bucket()),
                        Failure::Network,
                        e.to_string(),
                    )
                })?;
                Ok(Some(body.into_bytes().to_vec()))
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => {
                Err(classify(&GET_RECORD, format!("s3://{}/{key}", self.bucket()), &e).into())
            }
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

    /// The per-host results the deployer stored for `version_id` (unreadable ones are errors
    /// naming the object).
    pub async fn results(&self, version_id: &str) -> Result<Vec<StoredResult>, OpsError> {
        let prefix = self.target.release.results_prefix(version_id);
        let mut keys: Vec<String> = self.record_keys(&prefix).await?.into_iter().collect();
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(bytes) = self.get_bytes(&key).await? else {
                continue;
            };
            out.push(
                StoredResult::from_bytes(&bytes).map_err(|cause| OpsError::BadRecord {
                    bucket: self.bucket().to_string(),
                    key,
                    cause,
                })?,
            );
        }
        Ok(out)
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

    /// Copies `version_id` of `source_key` (this key for a rollback, another environment's
    /// for a promotion) on top of the key with `metadata` (REPLACE), server side, only if the
    /// source still has `etag`. Returns the new version id.
    pub async fn copy_version(
        &self,
        source_key: &str,
        version_id: &str,
        etag: Option<&str>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<String, OpsError> {
        let key = self.target.key();
        let source = format!(
            "{}/{}?versionId={}",
            self.bucket(),
            percent::encode(source_key, &URI_PATH),
            percent::encode(version_id, &URI_COMPONENT)
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
            .map_err(|e| classify(&COPY_OBJECT, self.target.url(), &e))?;
        out.version_id().map(str::to_string).ok_or_else(|| {
            AwsError::new(
                &COPY_OBJECT,
                self.target.url(),
                Failure::Refused,
                "S3 returned no version id for the copy: is versioning still enabled?".into(),
            )
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
                comment: out.comment().unwrap_or_default().to_string(),
            })),
            Err(e) => {
                // The error type normally comes from the JSON body; `error_code` falls back to
                // the `X-Amzn-ErrorType` header, all that is left when the body cannot be
                // parsed (moto answers this operation's errors with an XML body).
                let code = error_code(&e).unwrap_or_default();
                match code.as_str() {
                    "InvocationDoesNotExist" => Ok(Observed::NotYet { code }),
                    // An optional call (the uploader policy does not grant it): the host's
                    // stored result, once the deployer has it, is what counts.
                    "AccessDeniedException" | "AccessDenied" => Ok(Observed::NotYet {
                        code: format!(
                            "{code}: no ssm:GetCommandInvocation; waiting for the stored result"
                        ),
                    }),
                    "InvalidCommandId" | "InvalidInstanceId" => Ok(Observed::Gone { code }),
                    _ => Err(classify(
                        &GET_COMMAND_INVOCATION,
                        format!("command {command_id} on {instance_id}"),
                        &e,
                    )
                    .into()),
                }
            }
        }
    }
}

/// One line per entry of a CloudWatch event's message: writers (the SSM agent, the Lambda
/// runtime) put many lines in one event.
fn message_lines<'a>(messages: impl Iterator<Item = Option<&'a str>>) -> Vec<String> {
    messages
        .flat_map(|m| m.unwrap_or_default().lines())
        .map(str::to_string)
        .collect()
}

impl Clients {
    /// Whether the CloudWatch Logs group `group` exists.
    pub async fn log_group_exists(&self, group: &str) -> Result<bool, OpsError> {
        let mut token = None::<String>;
        loop {
            let out = self
                .logs
                .describe_log_groups()
                .log_group_name_prefix(group)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| classify(&DESCRIBE_LOG_GROUPS, format!("log group {group}"), &e))?;
            if out
                .log_groups()
                .iter()
                .any(|g| g.log_group_name() == Some(group))
            {
                return Ok(true);
            }
            token = out.next_token().map(str::to_string);
            if token.is_none() {
                return Ok(false);
            }
        }
    }

    /// Every line of `group` (all its streams, oldest first) that CloudWatch's filter
    /// `pattern` matches; `None` when the group does not exist.
    pub async fn filter_lines(
        &self,
        group: &str,
        pattern: &str,
    ) -> Result<Option<Vec<String>>, OpsError> {
        let mut lines = Vec::new();
        let mut token = None::<String>;
        loop {
            let out = match self
                .logs
                .filter_log_events()
                .log_group_name(group)
                .filter_pattern(pattern)
                .set_next_token(token.clone())
                .send()
                .await
            {
                Ok(out) => out,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_not_found_exception()) =>
                {
                    return Ok(None)
                }
                Err(e) => {
                    return Err(
                        classify(&FILTER_LOG_EVENTS, format!("log group {group}"), &e).into(),
                    )
                }
            };
            lines.extend(message_lines(out.events().iter().map(|e| e.message())));
            token = out.next_token().map(str::to_string);
            if token.is_none() {
                return Ok(Some(lines));
            }
        }
    }

    /// Every line of `stream` after `from` (a forward token of an earlier read; `None`:
    /// from the start), up to the end CloudWatch has now.
    pub async fn read_stream(
        &self,
        group: &str,
        stream: &str,
        from: Option<&str>,
    ) -> Result<StreamRead, OpsError> {
        let mut lines = Vec::new();
        let mut token = from.map(str::to_string);
        loop {
            let out = match self
                .logs
                .get_log_events()
                .log_group_name(group)
                .log_stream_name(stream)
                .start_from_head(true)
                .set_next_token(token.clone())
                .send()
                .await
            {
                Ok(out) => out,
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_not_found_exception()) =>
                {
                    return Ok(StreamRead::Missing)
                }
                Err(e) => {
                    return Err(classify(
                        &GET_LOG_EVENTS,
                        format!("log stream {stream} of group {group}"),
                        &e,
                    )
                    .into())
                }
            };
            let next = out.next_forward_token().map(str::to_string);
            let events = out.events();
            lines.extend(message_lines(events.iter().map(|e| e.message())));
            // The end: no events, or the same token back (CloudWatch's end-of-stream answer).
            let at_end = events.is_empty() || next.is_none() || next == token;
            token = next.or(token);
            if at_end {
                return Ok(StreamRead::Lines { lines, next: token });
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

    async fn results(&self, version_id: &str) -> Result<Vec<StoredResult>, OpsError> {
        Clients::results(self, version_id).await
    }
}
