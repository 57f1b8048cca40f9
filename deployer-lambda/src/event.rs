//! Turning an invocation payload into "deploy this exact object version" or "ignore".
//!
//! Two payloads are accepted: the EventBridge `Object Created` event S3 emits (the
//! AWS-documented detail with `etag`, and moto's variant with `eTag`), and a direct invocation
//! `{"bucket", "key", "version_id"}` an operator sends to redeploy a version on purpose.
//! Events that are not for us (other buckets, foreign keys, deletes) are ignored with a
//! reason; payloads missing something we need are errors naming the missing field.

use aws_lambda_events::eventbridge::EventBridgeEvent;
use dropship_contract::key::{ReleaseKey, BUNDLE_SUFFIX, RELEASES_PREFIX};
use dropship_contract::percent::{self, Plus};
use dropship_contract::record::{EventFacts, Trigger};
use dropship_contract::sequencer::Sequencer;
use serde_json::Value;
use thiserror::Error;

use crate::config::Config;

/// What the invocation asks for.
// One value per invocation: the size difference between the variants is irrelevant.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Deploy one exact object version.
    Deploy(DeployRequest),
    /// One host finished a command (SSM's `EC2 Command Invocation Status-change
    /// Notification` with a terminal status): store its result and move the fleet on.
    HostFinished(HostFinished),
    /// An instance entered `running` (EC2's `EC2 Instance State-change Notification`): if it
    /// carries an app/env's tags, it catches up to that fleet's version.
    InstanceRunning(String),
    /// The periodic reconcile (an EventBridge schedule's `Scheduled Event`): every fleet
    /// sends its version to tagged, online instances it never reached.
    Reconcile,
    /// A release event refused before any S3 read (app/env not allowed, too large); why.
    Refuse(String),
    /// Not for dropship; the reason is logged and returned.
    Ignore(String),
}

pub use dropship_contract::events::{
    EC2_SOURCE, INSTANCE_STATE_CHANGE, INVOCATION_STATUS_CHANGE, SCHEDULED_EVENT, SCHEDULE_SOURCE,
    SSM_SOURCE, TERMINAL_STATUSES,
};

/// One (command, instance) pair that reached a terminal status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFinished {
    /// SSM command id.
    pub command_id: String,
    /// Instance id.
    pub instance_id: String,
    /// The event's status (informational: `GetCommandInvocation` is read for the truth).
    pub status: String,
    /// When the command was sent (`detail.requested-date-time`), if the event says so.
    pub requested: Option<time::OffsetDateTime>,
}

/// One exact object version to verify and dispatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployRequest {
    /// Bucket (allow-listed).
    pub bucket: String,
    /// Decoded object key.
    pub key: String,
    /// App/env the key names.
    pub release: ReleaseKey,
    /// Exact S3 version id.
    pub version_id: String,
    /// S3 sequencer (events only).
    pub sequencer: Option<Sequencer>,
    /// Facts kept in the deploy record.
    pub facts: EventFacts,
}

/// A payload we cannot act on because it is malformed (not merely foreign).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EventError {
    /// A required field is absent or has the wrong type.
    #[error("malformed event: field {0} is missing or not a string")]
    MissingField(String),
    /// The payload is neither an EventBridge event nor a direct invocation.
    #[error(
        "unrecognised payload: expected an EventBridge S3 event (field detail-type) or a direct \
         invocation {{\"bucket\", \"key\", \"version_id\"}}"
    )]
    Unrecognised,
    /// EventBridge envelope does not parse.
    #[error("malformed EventBridge event: {0}")]
    Envelope(String),
    /// The sequencer is not hexadecimal.
    #[error("malformed event: detail.object.sequencer: {0}")]
    Sequencer(String),
    /// A key's percent-encoding is broken.
    #[error("malformed event: object key {0:?} is not valid URL encoding")]
    BadKeyEncoding(String),
}

/// Decode an S3 notification key: `+` is a space and `%XX` a byte (UTF-8).
pub fn decode_key(raw: &str) -> Result<String, EventError> {
    percent::decode(raw, Plus::Space).ok_or_else(|| EventError::BadKeyEncoding(raw.to_owned()))
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn required<'a>(v: &'a Value, path: &[&str], shown: &str) -> Result<&'a str, EventError> {
    str_at(v, path).ok_or_else(|| EventError::MissingField(shown.to_owned()))
}

/// The app/env a decoded key names, when it is a release key
/// (`releases/<app>/<env>.tar.gz`, [`ReleaseKey::parse`]).
fn release_for(key: &str) -> Option<ReleaseKey> {
    ReleaseKey::parse(key).ok()
}

/// Parse an invocation payload.
pub fn parse(payload: &Value, config: &Config) -> Result<Request, EventError> {
    if payload.get("detail-type").is_some() || payload.get("detail").is_some() {
        parse_eventbridge(payload, config)
    } else if payload.get("bucket").is_some()
        || payload.get("key").is_some()
        || payload.get("version_id").is_some()
    {
        parse_direct(payload, config)
    } else {
        Err(EventError::Unrecognised)
    }
}

/// SSM's per-host status change: only terminal statuses of the installation's own command
/// document matter.
fn parse_ssm(detail_type: &str, detail: &Value, config: &Config) -> Result<Request, EventError> {
    if detail_type != INVOCATION_STATUS_CHANGE {
        return Ok(Request::Ignore(format!(
            "aws.ssm detail-type {detail_type:?} is not {INVOCATION_STATUS_CHANGE:?}"
        )));
    }
    let document = required(detail, &["document-name"], "detail.document-name")?;
    if document != config.command_document {
        return Ok(Request::Ignore(format!(
            "command document {document:?} is not this deployer's {}",
            config.command_document
        )));
    }
    let status = required(detail, &["status"], "detail.status")?;
    if !TERMINAL_STATUSES.contains(&status) {
        return Ok(Request::Ignore(format!(
            "invocation status {status:?} is not terminal"
        )));
    }
    Ok(Request::HostFinished(HostFinished {
        command_id: required(detail, &["command-id"], "detail.command-id")?.to_owned(),
        instance_id: required(detail, &["instance-id"], "detail.instance-id")?.to_owned(),
        status: status.to_owned(),
        requested: str_at(detail, &["requested-date-time"]).and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        }),
    }))
}

fn parse_eventbridge(payload: &Value, config: &Config) -> Result<Request, EventError> {
    // moto sends `time` as epoch seconds (a number); AWS as RFC 3339. Keep the raw value for
    // the record and let the envelope type parse the rest.
    let raw_time = payload.get("time").map(|t| match t {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let mut envelope_json = payload.clone();
    if let Some(obj) = envelope_json.as_object_mut() {
        if !matches!(obj.get("time"), Some(Value::String(_))) {
            obj.remove("time");
        }
    }
    let envelope: EventBridgeEvent<Value> =
        serde_json::from_value(envelope_json).map_err(|e| EventError::Envelope(e.to_string()))?;
    if envelope.source == SSM_SOURCE {
        return parse_ssm(&envelope.detail_type, &envelope.detail, config);
    }
    if envelope.source == EC2_SOURCE && envelope.detail_type == INSTANCE_STATE_CHANGE {
        let state = required(&envelope.detail, &["state"], "detail.state")?;
        if state != "running" {
            return Ok(Request::Ignore(format!(
                "instance state {state:?} is not running"
            )));
        }
        let id = required(&envelope.detail, &["instance-id"], "detail.instance-id")?;
        return Ok(Request::InstanceRunning(id.to_owned()));
    }
    if envelope.source == SCHEDULE_SOURCE && envelope.detail_type == SCHEDULED_EVENT {
        return Ok(Request::Reconcile);
    }
    if envelope.source != "aws.s3" {
        return Ok(Request::Ignore(format!(
            "event source {:?} is not aws.s3",
            envelope.source
        )));
    }
    if envelope.detail_type != "Object Created" {
        return Ok(Request::Ignore(format!(
            "detail-type {:?} is not \"Object Created\" (deletes and delete markers are not deployed)",
            envelope.detail_type
        )));
    }
    let detail = &envelope.detail;
    let bucket = required(detail, &["bucket", "name"], "detail.bucket.name")?;
    let raw_key = required(detail, &["object", "key"], "detail.object.key")?;
    if !config.bucket_allowed(bucket) {
        return Ok(Request::Ignore(format!(
            "bucket {bucket:?} is not in DROPSHIP_ALLOWED_BUCKETS"
        )));
    }
    let key = decode_key(raw_key)?;
    let Some(release) = release_for(&key) else {
        return Ok(Request::Ignore(format!(
            "key {key:?} is not a release key ({RELEASES_PREFIX}<app>/<env>{BUNDLE_SUFFIX})"
        )));
    };
    let version_id = required(
        detail,
        &["object", "version-id"],
        "detail.object.version-id",
    )?;
    if version_id.is_empty() || version_id == "null" {
        return Err(EventError::MissingField(
            "detail.object.version-id (is bucket versioning enabled?)".into(),
        ));
    }
    let sequencer_raw = required(detail, &["object", "sequencer"], "detail.object.sequencer")?;
    let sequencer =
        Sequencer::parse(sequencer_raw).map_err(|e| EventError::Sequencer(e.to_string()))?;
    let etag = str_at(detail, &["object", "etag"])
        .or_else(|| str_at(detail, &["object", "eTag"]))
        .map(str::to_owned);
    let size = detail
        .get("object")
        .and_then(|o| o.get("size"))
        .and_then(Value::as_u64);
    let facts = EventFacts {
        trigger: Trigger::Event,
        event_id: envelope.id.clone(),
        event_time: envelope.time.map(|t| t.to_rfc3339()).or(raw_time),
        reason: str_at(detail, &["reason"]).map(str::to_owned),
        sequencer: Some(sequencer.to_string()),
        request_id: str_at(detail, &["request-id"]).map(str::to_owned),
        size,
        etag,
        requester: str_at(detail, &["requester"]).map(str::to_owned),
        source_ip: str_at(detail, &["source-ip-address"]).map(str::to_owned),
    };
    if let Some(refusal) = refuse_before_reading(config, &release, size) {
        return Ok(Request::Refuse(refusal));
    }
    Ok(Request::Deploy(DeployRequest {
        bucket: bucket.to_owned(),
        key,
        release,
        version_id: version_id.to_owned(),
        sequencer: Some(sequencer),
        facts,
    }))
}

fn parse_direct(payload: &Value, config: &Config) -> Result<Request, EventError> {
    let bucket = required(payload, &["bucket"], "bucket")?;
    let key = required(payload, &["key"], "key")?;
    let version_id = required(payload, &["version_id"], "version_id")?;
    if version_id.is_empty() {
        return Err(EventError::MissingField("version_id".into()));
    }
    if !config.bucket_allowed(bucket) {
        return Ok(Request::Ignore(format!(
            "bucket {bucket:?} is not in DROPSHIP_ALLOWED_BUCKETS"
        )));
    }
    // Direct payloads carry the key as-is (not URL-encoded).
    let Some(release) = release_for(key) else {
        return Ok(Request::Ignore(format!(
            "key {key:?} is not a release key ({RELEASES_PREFIX}<app>/<env>{BUNDLE_SUFFIX})"
        )));
    };
    if let Some(refusal) = refuse_before_reading(config, &release, None) {
        return Ok(Request::Refuse(refusal));
    }
    Ok(Request::Deploy(DeployRequest {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        release,
        version_id: version_id.to_owned(),
        sequencer: None,
        facts: EventFacts::new(Trigger::Direct),
    }))
}

/// What is refused before any S3 read (so a flood of foreign or oversized events costs no
/// reads and no record writes): an app or environment outside the configured allow-lists,
/// and an object the event says is larger than the bundle limit.
fn refuse_before_reading(
    config: &Config,
    release: &ReleaseKey,
    size: Option<u64>,
) -> Option<String> {
    if !config.app_allowed(release.app()) {
        return Some(format!(
            "app {:?} is not in DROPSHIP_ALLOWED_APPS; nothing was read or sent",
            release.app()
        ));
    }
    if !config.env_allowed(release.env()) {
        return Some(format!(
            "environment {:?} is not in DROPSHIP_ALLOWED_ENVIRONMENTS; nothing was read or sent",
            release.env()
        ));
    }
    match size {
        Some(size) if size > config.max_bundle_bytes => Some(format!(
            "the event reports {size} bytes, over the {}-byte limit (DROPSHIP_MAX_BUNDLE_BYTES); nothing was read or sent",
            config.max_bundle_bytes
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Config {
        Config::from_lookup(|k| match k {
            "DROPSHIP_ALLOWED_BUCKETS" => Some("rel-bucket".to_owned()),
            "DROPSHIP_INSTANCE_PROFILE_ARN" => Some(
                "arn:aws:iam::111122223333:instance-profile/dropship-host-{app}.{env}".to_owned(),
            ),
            "DROPSHIP_COMMAND_DOCUMENT" => Some("dropship-deploy-production".to_owned()),
            "AWS_REGION" => Some("eu-west-1".to_owned()),
            _ => None,
        })
        .unwrap()
    }

    /// The sample from the Amazon S3 user guide ("Amazon EventBridge event message structure").
    fn aws_sample(reason: &str, key: &str) -> Value {
        json!({
            "version": "0",
            "id": "17793124-05d4-b198-2fde-7ededc63b103",
            "detail-type": "Object Created",
            "source": "aws.s3",
            "account": "111122223333",
            "time": "2021-11-12T00:00:00Z",
            "region": "ca-central-1",
            "resources": ["arn:aws:s3:::rel-bucket"],
            "detail": {
                "version": "0",
                "bucket": {"name": "rel-bucket"},
                "object": {
                    "key": key,
                    "size": 5,
                    "etag": "b1946ac92492d2347c6235b4d2611184",
                    "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
                    "sequencer": "617f08299329d189"
                },
                "request-id": "N4N7GDK58NMKJ12R",
                "requester": "123456789012",
                "source-ip-address": "1.2.3.4",
                "reason": reason
            }
        })
    }

    /// What moto 5.2 sends: `eTag`, numeric `time`, constant sequencer and reason.
    fn moto_sample(key: &str) -> Value {
        json!({
            "version": "0",
            "id": "a4d6d2c4-0000-0000-0000-000000000000",
            "detail-type": "Object Created",
            "source": "aws.s3",
            "account": "123456789012",
            "time": 1732352400.123,
            "region": "us-east-1",
            "resources": ["arn:aws:s3:::rel-bucket"],
            "detail": {
                "version": "0",
                "bucket": {"name": "rel-bucket"},
                "object": {
                    "key": key,
                    "size": 1234,
                    "eTag": "0f343b0931126a20f133d67c2b018a3b",
                    "version-id": "f0c0a0b6-1111-2222-3333-444455556666",
                    "sequencer": "617f08299329d189"
                },
                "request-id": "N4N7GDK58NMKJ12R",
                "requester": "123456789012",
                "source-ip-address": "1.2.3.4",
                "reason": "ObjectCreated"
            }
        })
    }

    fn deploy(req: Request) -> DeployRequest {
        match req {
            Request::Deploy(d) => d,
            other => panic!("not a deploy: {other:?}"),
        }
    }

    #[test]
    fn only_status_changes_of_the_deployers_own_document_are_host_results() {
        let event = |document: &str| {
            json!({
                "version": "0", "id": "e", "source": "aws.ssm", "account": "111122223333",
                "time": "2024-05-01T12:00:00Z", "region": "eu-west-1", "resources": [],
                "detail-type": "EC2 Command Invocation Status-change Notification",
                "detail": {"command-id": "c-1", "instance-id": "i-1", "document-name": document,
                    "status": "Success", "requested-date-time": "2024-05-01T11:59:00Z"}
            })
        };
        match parse(&event("dropship-deploy-production"), &config()).unwrap() {
            Request::HostFinished(h) => assert_eq!(
                (h.command_id.as_str(), h.instance_id.as_str()),
                ("c-1", "i-1")
            ),
            other => panic!("not a host result: {other:?}"),
        }
        for other in ["AWS-RunShellScript", "dropship-deploy-nonproduction"] {
            match parse(&event(other), &config()).unwrap() {
                Request::Ignore(why) => assert!(why.contains(other), "{why}"),
                r => panic!("{other}: {r:?}"),
            }
        }
    }

    #[test]
    fn parses_the_aws_documented_event_for_every_reason() {
        for reason in ["PutObject", "CopyObject", "CompleteMultipartUpload"] {
            let d =
                deploy(parse(&aws_sample(reason, "releases/shop/prod.tar.gz"), &config()).unwrap());
            assert_eq!(d.bucket, "rel-bucket");
            assert_eq!(d.key, "releases/shop/prod.tar.gz");
            assert_eq!((d.release.app(), d.release.env()), ("shop", "prod"));
            assert_eq!(d.version_id, "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e");
            assert_eq!(d.sequencer.unwrap().as_str(), "617F08299329D189");
            assert_eq!(d.facts.reason.as_deref(), Some(reason));
            assert_eq!(
                d.facts.etag.as_deref(),
                Some("b1946ac92492d2347c6235b4d2611184")
            );
            assert_eq!(d.facts.trigger, Trigger::Event);
            assert_eq!(
                d.facts.event_time.as_deref(),
                Some("2021-11-12T00:00:00+00:00")
            );
        }
    }

    #[test]
    fn parses_motos_variant() {
        let d = deploy(parse(&moto_sample("releases/shop/prod.tar.gz"), &config()).unwrap());
        assert_eq!(
            d.facts.etag.as_deref(),
            Some("0f343b0931126a20f133d67c2b018a3b")
        );
        assert_eq!(d.facts.event_time.as_deref(), Some("1732352400.123"));
        assert_eq!(d.facts.size, Some(1234));
    }

    #[test]
    fn ignores_foreign_events_with_a_reason() {
        let c = config();
        let mut other_bucket = aws_sample("PutObject", "releases/shop/prod.tar.gz");
        other_bucket["detail"]["bucket"]["name"] = json!("someone-else");
        let mut deleted = aws_sample("DeleteObject", "releases/shop/prod.tar.gz");
        deleted["detail-type"] = json!("Object Deleted");
        deleted["detail"]["deletion-type"] = json!("Delete Marker Created");
        let mut not_s3 = aws_sample("PutObject", "releases/shop/prod.tar.gz");
        not_s3["source"] = json!("aws.ec2");
        for (payload, why) in [
            (other_bucket, "someone-else"),
            (deleted, "Object Deleted"),
            (not_s3, "aws.ec2"),
            (
                aws_sample("PutObject", "releases/shop/prod.zip"),
                "not a release key",
            ),
            (
                aws_sample("PutObject", "deploy-records/shop/prod/latest.json"),
                "not a release key",
            ),
            (
                aws_sample("PutObject", "releases/Shop/prod.tar.gz"),
                "not a release key",
            ),
        ] {
            match parse(&payload, &c).unwrap() {
                Request::Ignore(r) => assert!(r.contains(why), "{r}"),
                other => panic!("{other:?} should be ignored"),
            }
        }
    }

    #[test]
    fn decodes_keys_with_spaces_plus_and_percent() {
        assert_eq!(
            decode_key("releases/my+app/x.tar.gz").unwrap(),
            "releases/my app/x.tar.gz"
        );
        assert_eq!(decode_key("a%2Bb").unwrap(), "a+b");
        assert_eq!(decode_key("100%25").unwrap(), "100%");
        assert_eq!(decode_key("a%20b+c").unwrap(), "a b c");
        assert_eq!(decode_key("caf%C3%A9").unwrap(), "café");
        assert_eq!(
            decode_key("releases/shop/prod.tar.gz").unwrap(),
            "releases/shop/prod.tar.gz"
        );
        assert!(decode_key("bad%zz").is_err());
        assert!(decode_key("bad%4").is_err());
        assert!(decode_key("bad%FF").is_err());
        // An encoded release key is recognised once decoded ...
        let d = deploy(
            parse(
                &aws_sample("PutObject", "releases%2Fshop%2Fprod.tar.gz"),
                &config(),
            )
            .unwrap(),
        );
        assert_eq!(d.key, "releases/shop/prod.tar.gz");
        // ... and keys with spaces, '+' or '%' are foreign, whatever their encoding.
        for key in [
            "releases/my+shop/prod.tar.gz",
            "releases/shop%25/prod.tar.gz",
            "releases/a%2Bb/prod.tar.gz",
        ] {
            assert!(
                matches!(
                    parse(&aws_sample("PutObject", key), &config()).unwrap(),
                    Request::Ignore(_)
                ),
                "{key}"
            );
        }
        let err = parse(
            &aws_sample("PutObject", "releases/%zz/prod.tar.gz"),
            &config(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("URL encoding"), "{err}");
    }

    #[test]
    fn malformed_events_name_the_missing_field() {
        let c = config();
        type Mutation = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|v| {
                    v["detail"]["object"]
                        .as_object_mut()
                        .unwrap()
                        .remove("version-id");
                }),
                "detail.object.version-id",
            ),
            (
                Box::new(|v| {
                    v["detail"]["object"]
                        .as_object_mut()
                        .unwrap()
                        .remove("sequencer");
                }),
                "detail.object.sequencer",
            ),
            (
                Box::new(|v| {
                    v["detail"]["object"].as_object_mut().unwrap().remove("key");
                }),
                "detail.object.key",
            ),
            (
                Box::new(|v| {
                    v["detail"].as_object_mut().unwrap().remove("bucket");
                }),
                "detail.bucket.name",
            ),
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("source");
                }),
                "source",
            ),
            (
                Box::new(|v| {
                    v["detail"]["object"]["sequencer"] = json!("xyz");
                }),
                "sequencer",
            ),
        ];
        for (mutate, field) in cases {
            let mut payload = aws_sample("PutObject", "releases/shop/prod.tar.gz");
            mutate(&mut payload);
            let err = parse(&payload, &c).unwrap_err();
            assert!(err.to_string().contains(field), "{field}: {err}");
        }
        assert_eq!(
            parse(&json!({"hello": 1}), &c).unwrap_err(),
            EventError::Unrecognised
        );
    }

    #[test]
    fn direct_invocation() {
        let c = config();
        let d = deploy(
            parse(&json!({"bucket": "rel-bucket", "key": "releases/shop/prod.tar.gz", "version_id": "v1"}), &c)
                .unwrap(),
        );
        assert_eq!(d.version_id, "v1");
        assert_eq!(d.sequencer, None);
        assert_eq!(d.facts.trigger, Trigger::Direct);
        let err = parse(
            &json!({"bucket": "rel-bucket", "key": "releases/shop/prod.tar.gz"}),
            &c,
        )
        .unwrap_err();
        assert!(err.to_string().contains("version_id"), "{err}");
        let err = parse(&json!({"bucket": "rel-bucket", "version_id": "v"}), &c).unwrap_err();
        assert!(err.to_string().contains("key"), "{err}");
        assert!(matches!(
            parse(
                &json!({"bucket": "nope", "key": "releases/shop/prod.tar.gz", "version_id": "v"}),
                &c
            )
            .unwrap(),
            Request::Ignore(_)
        ));
    }
}
