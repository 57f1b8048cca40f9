//! The AWS I/O at the edges: [`Clients`] implements the handler's edge traits
//! ([`crate::edges`]) with the SDK calls listed in [`crate::aws_calls::CALLS`]. SDK errors go
//! through the workspace's one classification ([`dropship_aws::classify`]); a few answers are
//! contract facts instead of errors ("no such version", "no record yet", "someone else
//! wrote first").

use std::io::{self, Read};

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_ssm::types::{CloudWatchOutputConfig, CommandFilter, CommandFilterKey};
use bytes::Bytes;
use dropship_aws::{classify, http_status, AwsError, Failure};
use dropship_contract::record::CommandBatch;
use dropship_contract::verify::{
    verify_bundle, ExpectedBundle, VerifiedBundle, VerifyError, VerifyLimits,
};
use time::OffsetDateTime;

use crate::aws_calls::{
    DESCRIBE_INSTANCES, DESCRIBE_INSTANCE_INFORMATION, GET_COMMAND_INVOCATION, GET_RECORD,
    GET_VERSION, HEAD_CURRENT, HEAD_VERSION, LIST_COMMANDS, LIST_RESULTS, PUT_EVENTS, PUT_RECORD,
    SEND_COMMAND,
};
use crate::edges::TaggedInstance;
use crate::edges::{
    CommandSender, Condition, Head, InstanceFinder, Notifier, ObjectReader, RecordStore,
    Verification, Written,
};
use crate::plan::{self, format_time, CommandPlan};
use dropship_contract::fleet::{Invocation, Observed};
use std::collections::BTreeSet;

/// How long connecting to an AWS endpoint may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// How long each read of a response may stall (also each read of the streamed bundle): a
/// stalled connection must not hold the invocation, and the slot, until the deadline.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The SDK configuration every client of the function is built from: standard retries (5
/// attempts) and the connect and read timeouts above. The binary loads it once at cold start.
pub fn sdk_loader() -> aws_config::ConfigLoader {
    let retry = aws_config::retry::RetryConfig::standard()
        .with_max_attempts(5)
        .with_initial_backoff(std::time::Duration::from_millis(200));
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .retry_config(retry)
        .timeout_config(timeouts)
}

/// The SDK clients the handler uses.
#[derive(Debug, Clone)]
pub struct Clients {
    /// S3 (releases and records).
    pub s3: aws_sdk_s3::Client,
    /// EC2 (targets).
    pub ec2: aws_sdk_ec2::Client,
    /// SSM (commands).
    pub ssm: aws_sdk_ssm::Client,
    /// EventBridge (the deploy-finished notification).
    pub events: aws_sdk_eventbridge::Client,
}

fn object_url(bucket: &str, key: &str, version_id: &str) -> String {
    format!("s3://{bucket}/{key}?versionId={version_id}")
}

impl Clients {
    /// Clients from one SDK configuration (S3 as [`dropship_aws::sdk::s3_client`] builds it).
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self {
            s3: dropship_aws::sdk::s3_client(sdk),
            ec2: aws_sdk_ec2::Client::new(sdk),
            ssm: aws_sdk_ssm::Client::new(sdk),
            events: aws_sdk_eventbridge::Client::new(sdk),
        }
    }
}

impl ObjectReader for Clients {
    async fn head_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
    ) -> Result<Head, AwsError> {
        let res = self
            .s3
            .head_object()
            .bucket(bucket)
            .key(key)
            .version_id(version_id)
            .send()
            .await;
        match res {
            Ok(out) => {
                if out.delete_marker() == Some(true) {
                    return Ok(Head::Missing("it is a delete marker".into()));
                }
                Ok(Head::Found {
                    metadata: out.metadata().cloned().unwrap_or_default(),
                    size: out.content_length().unwrap_or(0).max(0) as u64,
                    last_modified: out.last_modified().map(|t| t.secs()).unwrap_or(0),
                })
            }
            Err(err) => match http_status(&err) {
                // 404 no such key/version, 400 malformed version id, 405 a delete marker.
                Some(s @ (400 | 404 | 405)) => Ok(Head::Missing(format!("S3 answered HTTP {s}"))),
                _ => Err(classify(
                    &HEAD_VERSION,
                    object_url(bucket, key, version_id),
                    &err,
                )),
            },
        }
    }

    async fn current_version(&self, bucket: &str, key: &str) -> Result<Option<String>, AwsError> {
        match self.s3.head_object().bucket(bucket).key(key).send().await {
            Ok(out) if out.delete_marker() == Some(true) => Ok(None),
            Ok(out) => Ok(out.version_id().map(str::to_owned)),
            // No such key, or a delete marker on top (404 with x-amz-delete-marker).
            Err(err) if matches!(http_status(&err), Some(404 | 405)) => Ok(None),
            Err(err) => Err(classify(
                &HEAD_CURRENT,
                format!("s3://{bucket}/{key}"),
                &err,
            )),
        }
    }

    /// Streams through the verifier in constant memory, checking the key's current version
    /// on the way ([`verify_stream_while_current`]).
    async fn verify_version(
        &self,
        bucket: &str,
        key: &str,
        version_id: &str,
        expected: ExpectedBundle,
        limits: VerifyLimits,
    ) -> Result<Verification, AwsError> {
        let out = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .version_id(version_id)
            .send()
            .await
            .map_err(|e| classify(&GET_VERSION, object_url(bucket, key, version_id), &e))?;
        let current = || self.current_version(bucket, key);
        Ok(verify_stream_while_current(out.body, expected, limits, version_id, current).await)
    }
}

impl InstanceFinder for Clients {
    async fn running_instances(
        &self,
        app_tag: (&str, &str),
        env_tag: (&str, &str),
    ) -> Result<Vec<TaggedInstance>, AwsError> {
        use aws_sdk_ec2::types::Filter;
        let object = format!(
            "instances tagged {}={} and {}={}",
            app_tag.0, app_tag.1, env_tag.0, env_tag.1
        );
        let mut ids = Vec::new();
        let mut pages = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name(format!("tag:{}", app_tag.0))
                    .values(app_tag.1)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name(format!("tag:{}", env_tag.0))
                    .values(env_tag.1)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("running")
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(&DESCRIBE_INSTANCES, object.clone(), &e))?;
            for reservation in page.reservations() {
                for instance in reservation.instances() {
                    // Double-check what the filters promise: state and both tags.
                    let running = instance.state().and_then(|s| s.name()).map(|n| n.as_str())
                        == Some("running");
                    let tagged = |k: &str, v: &str| {
                        instance
                            .tags()
                            .iter()
                            .any(|t| t.key() == Some(k) && t.value() == Some(v))
                    };
                    if running && tagged(app_tag.0, app_tag.1) && tagged(env_tag.0, env_tag.1) {
                        if let Some(id) = instance.instance_id() {
                            ids.push(TaggedInstance {
                                id: id.to_owned(),
                                profile_arn: instance
                                    .iam_instance_profile()
                                    .and_then(|p| p.arn())
                                    .map(str::to_owned),
                            });
                        }
                    }
                }
            }
        }
        ids.sort_by(|a, b| a.id.cmp(&b.id));
        ids.dedup_by(|a, b| a.id == b.id);
        Ok(ids)
    }

    async fn instance_tags(
        &self,
        instance_id: &str,
        app_tag_key: &str,
        env_tag_key: &str,
    ) -> Result<Option<(String, String)>, AwsError> {
        let object = format!("instance {instance_id}");
        let out = match self
            .ec2
            .describe_instances()
            .instance_ids(instance_id)
            .send()
            .await
        {
            Ok(out) => out,
            // InvalidInstanceID.NotFound / .Malformed: nothing to catch up.
            Err(e) if http_status(&e) == Some(400) => return Ok(None),
            Err(e) => return Err(classify(&DESCRIBE_INSTANCES, object, &e)),
        };
        for reservation in out.reservations() {
            for instance in reservation.instances() {
                let running =
                    instance.state().and_then(|s| s.name()).map(|n| n.as_str()) == Some("running");
                let tag = |k: &str| {
                    instance
                        .tags()
                        .iter()
                        .find(|t| t.key() == Some(k))
                        .and_then(|t| t.value())
                        .map(str::to_owned)
                };
                if let (true, Some(app), Some(env)) = (running, tag(app_tag_key), tag(env_tag_key))
                {
                    return Ok(Some((app, env)));
                }
            }
        }
        Ok(None)
    }

    async fn online_instances(
        &self,
        instance_ids: &[String],
    ) -> Result<BTreeSet<String>, AwsError> {
        let pings =
            dropship_aws::ssm::agent_pings(&self.ssm, &DESCRIBE_INSTANCE_INFORMATION, instance_ids)
                .await?;
        let online = pings
            .into_iter()
            .filter(|p| p.is_online())
            .map(|p| p.instance_id)
            .collect();
        Ok(online)
    }
}

impl CommandSender for Clients {
    async fn send_command(
        &self,
        plan: &CommandPlan,
        batch: &[String],
    ) -> Result<CommandBatch, AwsError> {
        let mut req = self
            .ssm
            .send_command()
            .document_name(&plan.document_name)
            .set_instance_ids(Some(batch.to_vec()))
            .parameters("commands", vec![plan.script.clone()])
            .parameters("executionTimeout", vec![plan.execution_timeout.clone()])
            .timeout_seconds(plan.timeout_seconds)
            .max_concurrency(&plan.max_concurrency)
            .max_errors(&plan.max_errors)
            .comment(&plan.comment);
        if let Some(group) = &plan.log_group {
            req = req.cloud_watch_output_config(
                CloudWatchOutputConfig::builder()
                    .cloud_watch_log_group_name(group)
                    .cloud_watch_output_enabled(true)
                    .build(),
            );
        }
        let object = format!("instances {}", batch.join(","));
        let out = req
            .send()
            .await
            .map_err(|e| classify(&SEND_COMMAND, object.clone(), &e))?;
        let command_id = out.command().and_then(|c| c.command_id()).ok_or_else(|| {
            AwsError::new(
                &SEND_COMMAND,
                object,
                Failure::Refused,
                "response carried no command id".into(),
            )
        })?;
        Ok(CommandBatch {
            command_id: command_id.to_owned(),
            instance_ids: batch.to_vec(),
            purpose: plan.purpose,
        })
    }

    async fn commands_since(
        &self,
        since: OffsetDateTime,
        comment: &str,
    ) -> Result<Vec<(CommandBatch, String)>, AwsError> {
        let object = format!("commands invoked after {}", format_time(since));
        let mut found = Vec::new();
        let mut pages = self
            .ssm
            .list_commands()
            .filters(
                CommandFilter::builder()
                    .key(CommandFilterKey::InvokedAfter)
                    .value(format_time(since))
                    .build()
                    .map_err(|e| {
                        AwsError::new(
                            &LIST_COMMANDS,
                            object.clone(),
                            Failure::Refused,
                            e.to_string(),
                        )
                    })?,
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(&LIST_COMMANDS, object.clone(), &e))?;
            for c in page.commands() {
                if c.comment() != Some(comment) {
                    continue;
                }
                let script = c
                    .parameters()
                    .and_then(|p| p.get("commands"))
                    .map(|v| v.join("\n"))
                    .unwrap_or_default();
                if let Some(id) = c.command_id() {
                    found.push((
                        CommandBatch {
                            command_id: id.to_owned(),
                            instance_ids: c.instance_ids().to_vec(),
                            purpose: Default::default(),
                        },
                        script,
                    ));
                }
            }
        }
        Ok(found)
    }

    async fn invocation(&self, command_id: &str, instance_id: &str) -> Result<Observed, AwsError> {
        let res = self
            .ssm
            .get_command_invocation()
            .command_id(command_id)
            .instance_id(instance_id)
            .send()
            .await;
        match res {
            Ok(out) => Ok(Observed::Found(Invocation {
                command_id: command_id.to_owned(),
                instance_id: instance_id.to_owned(),
                status: out
                    .status()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
                status_details: out.status_details().unwrap_or_default().to_owned(),
                response_code: out.response_code(),
                standard_output_content: out
                    .standard_output_content()
                    .unwrap_or_default()
                    .to_owned(),
                standard_error_content: out.standard_error_content().unwrap_or_default().to_owned(),
                comment: out.comment().unwrap_or_default().to_owned(),
            })),
            Err(e) => {
                let code = e.as_service_error().and_then(|s| {
                    use aws_smithy_types::error::metadata::ProvideErrorMetadata;
                    s.code().map(str::to_owned)
                });
                match code.as_deref() {
                    Some(c @ "InvocationDoesNotExist") => {
                        Ok(Observed::NotYet { code: c.to_owned() })
                    }
                    Some(c @ ("InvalidCommandId" | "InvalidInstanceId")) => {
                        Ok(Observed::Gone { code: c.to_owned() })
                    }
                    _ => Err(classify(
                        &GET_COMMAND_INVOCATION,
                        format!("command {command_id} on {instance_id}"),
                        &e,
                    )),
                }
            }
        }
    }
}

impl Notifier for Clients {
    async fn put_event(&self, detail_type: &str, detail: String) -> Result<(), AwsError> {
        use aws_sdk_eventbridge::types::PutEventsRequestEntry;
        let object = format!("event {detail_type:?} on the default bus");
        let out = self
            .events
            .put_events()
            .entries(
                PutEventsRequestEntry::builder()
                    .source(dropship_contract::events::SOURCE)
                    .detail_type(detail_type)
                    .detail(detail)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify(&PUT_EVENTS, object.clone(), &e))?;
        if out.failed_entry_count() > 0 {
            let why = out
                .entries()
                .iter()
                .filter_map(|e| e.error_message())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(AwsError::new(
                &PUT_EVENTS,
                object,
                Failure::Network,
                format!("the bus refused the entry: {why}"),
            ));
        }
        Ok(())
    }
}

impl RecordStore for Clients {
    async fn get(&self, bucket: &str, key: &str) -> Result<Option<(Vec<u8>, String)>, AwsError> {
        let object = format!("s3://{bucket}/{key}");
        match self.s3.get_object().bucket(bucket).key(key).send().await {
            Ok(out) => {
                let etag = out.e_tag().unwrap_or_default().to_owned();
                let bytes = out.body.collect().await.map_err(|e| {
                    AwsError::new(&GET_RECORD, object.clone(), Failure::Network, e.to_string())
                })?;
                Ok(Some((bytes.into_bytes().to_vec(), etag)))
            }
            Err(e) if http_status(&e) == Some(404) => Ok(None),
            Err(e) => Err(classify(&GET_RECORD, object, &e)),
        }
    }

    async fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        condition: Condition<'_>,
    ) -> Result<Written, AwsError> {
        let req = self
            .s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        let req = match condition {
            Condition::Matches(etag) => req.if_match(etag),
            Condition::Absent => req.if_none_match("*"),
        };
        match req.send().await {
            Ok(out) => Ok(Written::Ok(out.e_tag().unwrap_or_default().to_owned())),
            Err(e) if matches!(http_status(&e), Some(412 | 409)) => Ok(Written::Conflict),
            Err(e) => Err(classify(&PUT_RECORD, format!("s3://{bucket}/{key}"), &e)),
        }
    }

    async fn list(&self, bucket: &str, prefix: &str) -> Result<Vec<String>, AwsError> {
        let object = format!("s3://{bucket}/{prefix}");
        let mut keys = Vec::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(&LIST_RESULTS, object.clone(), &e))?;
            keys.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
        }
        Ok(keys)
    }
}

/// Feeds the async body into the synchronous verifier through a bounded channel: at most
/// `CHANNEL_CHUNKS` body chunks are in flight, so memory stays constant whatever the size.
const CHANNEL_CHUNKS: usize = 8;

struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Verify an S3 body stream (or any [`ByteStream`], e.g. a file) with the contract verifier,
/// on a blocking thread, reading the stream exactly once.
pub async fn verify_stream(
    body: ByteStream,
    expected: ExpectedBundle,
    limits: VerifyLimits,
) -> Result<VerifiedBundle, VerifyError> {
    let never = || async { Ok::<_, AwsError>(None) };
    match verify_stream_checking(body, expected, limits, None, never).await {
        Verification::Done(result) => result,
        Verification::Superseded { .. } => unreachable!("no version to supersede"),
    }
}

/// [`verify_stream`] of `version_id`, asking `current` for the key's current version whenever
/// [`plan::CurrencyChecks`] says so (bounded: at most one call per 32 MiB or 2 s read) and
/// stopping the download as soon as another version is current (the verifier then sees the
/// stream end and gives up). A failed check does not stop anything: the check only saves
/// work, the gate before the claim decides what deploys.
pub async fn verify_stream_while_current<F, Fut>(
    body: ByteStream,
    expected: ExpectedBundle,
    limits: VerifyLimits,
    version_id: &str,
    current: F,
) -> Verification
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<String>, AwsError>>,
{
    verify_stream_checking(body, expected, limits, Some(version_id), current).await
}

async fn verify_stream_checking<F, Fut>(
    mut body: ByteStream,
    expected: ExpectedBundle,
    limits: VerifyLimits,
    version_id: Option<&str>,
    mut current: F,
) -> Verification
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<String>, AwsError>>,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(CHANNEL_CHUNKS);
    let reader = ChannelReader {
        rx,
        current: Bytes::new(),
    };
    let verifier = tokio::task::spawn_blocking(move || verify_bundle(reader, &expected, &limits));
    let pump = async move {
        let started = std::time::Instant::now();
        let mut checks = plan::CurrencyChecks::default();
        let mut read: u64 = 0;
        while let Some(chunk) = body.next().await {
            let item = chunk.map_err(|e| io::Error::other(e.to_string()));
            let failed = item.is_err();
            if let Ok(bytes) = &item {
                read += bytes.len() as u64;
            }
            // The verifier stops reading once it has decided: then the send fails; stop too.
            if tx.send(item).await.is_err() || failed {
                break;
            }
            let Some(ours) = version_id else { continue };
            if !checks.due(read, started.elapsed()) {
                continue;
            }
            checks.checked(read, started.elapsed());
            match current().await {
                Ok(now) => {
                    if let plan::Currency::Superseded { current } =
                        plan::currency(ours, now.as_deref())
                    {
                        // Dropping the sender ends the verifier's stream: it stops too.
                        return Some(Verification::Superseded {
                            current,
                            read_bytes: read,
                            checks: checks.made,
                        });
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, version_id = %ours, "checking the key's current version during verification failed; verifying on")
                }
            }
        }
        None
    };
    let (superseded, result) = tokio::join!(pump, verifier);
    if let Some(stopped) = superseded {
        return stopped;
    }
    Verification::Done(result.unwrap_or_else(|join| {
        Err(VerifyError::Read {
            offset: 0,
            source: io::Error::other(format!("verifier thread failed: {join}")),
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removing the timeouts (from the loader, or the loader from the clients) fails here: a
    /// stalled S3 read would otherwise hold an invocation to its deadline.
    #[tokio::test]
    async fn every_client_bounds_connecting_and_each_read() {
        let sdk = sdk_loader()
            .region(aws_config::Region::new("eu-west-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            ))
            .load()
            .await;
        let clients = Clients::new(&sdk);
        let check = |what: &str, t: Option<&aws_config::timeout::TimeoutConfig>| {
            let t = t.unwrap_or_else(|| panic!("{what}: no timeout configuration"));
            assert_eq!(t.read_timeout(), Some(READ_TIMEOUT), "{what} read timeout");
            assert_eq!(
                t.connect_timeout(),
                Some(CONNECT_TIMEOUT),
                "{what} connect timeout"
            );
        };
        check("S3", clients.s3.config().timeout_config());
        check("EC2", clients.ec2.config().timeout_config());
        check("SSM", clients.ssm.config().timeout_config());
        check("EventBridge", clients.events.config().timeout_config());
        assert!(READ_TIMEOUT <= std::time::Duration::from_secs(60));
    }
}
