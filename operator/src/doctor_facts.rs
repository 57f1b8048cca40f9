//! `doctor`'s AWS edge: reads the facts [`crate::doctor`] checks, in the same order, and
//! nothing else. Each read that fails is kept as its error message (a fact too); when the
//! credentials do not work, nothing else is read.

use aws_sdk_s3::types::BucketVersioningStatus;
use dropship_aws::{classify, error_code, http_status};

use crate::aws_calls::{
    DESCRIBE_INSTANCES, DESCRIBE_INSTANCE_INFORMATION, GET_BUCKET_NOTIFICATION,
    GET_BUCKET_VERSIONING, GET_CALLER_IDENTITY, GET_FUNCTION_CONFIGURATION, LIST_RULES,
    LIST_TARGETS_BY_RULE, PUT_PROBE,
};
use crate::doctor::{
    lambda_target, AgentFacts, BucketFacts, DoctorFacts, InstanceFacts, LambdaFacts, Read,
    RuleFacts, UploadFacts,
};

/// The `If-Match` of the upload probe: not an MD5 or multipart ETag, so no object ever has it.
const NEVER_AN_ETAG: &str = "\"dropship-doctor-probe-never-an-etag\"";

/// The `Content-MD5` of the upload probe: sixteen zero bytes, never the digest of its empty
/// body (`1B2M2Y8AsgTpgAmY7PhCfg==`), so a service that ignored `If-Match` would still refuse
/// to store it (`BadDigest`) instead of writing an empty current version.
pub const WRONG_CONTENT_MD5: &str = "AAAAAAAAAAAAAAAAAAAAAA==";

/// The clients `doctor` reads with.
#[derive(Debug, Clone)]
pub struct DoctorClients {
    sts: aws_sdk_sts::Client,
    lambda: aws_sdk_lambda::Client,
    s3: aws_sdk_s3::Client,
    events: aws_sdk_eventbridge::Client,
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
}

/// What `doctor` is asked to check.
#[derive(Debug, Clone)]
pub struct DoctorTarget {
    /// App name.
    pub app: String,
    /// Environment.
    pub env: String,
    /// Artifact bucket.
    pub bucket: String,
    /// Rule name, when given.
    pub rule: Option<String>,
    /// Tag keys (app, env).
    pub tag_keys: (String, String),
}

impl DoctorClients {
    /// Clients from one SDK configuration.
    pub fn new(sdk: &aws_config::SdkConfig) -> Self {
        Self {
            sts: aws_sdk_sts::Client::new(sdk),
            lambda: aws_sdk_lambda::Client::new(sdk),
            s3: dropship_aws::sdk::s3_client(sdk),
            events: aws_sdk_eventbridge::Client::new(sdk),
            ec2: aws_sdk_ec2::Client::new(sdk),
            ssm: aws_sdk_ssm::Client::new(sdk),
        }
    }

    /// Reads every fact, in check order.
    pub async fn read(&self, t: &DoctorTarget, region: Option<String>) -> DoctorFacts {
        let identity = self.identity().await;
        let reachable = identity.is_ok();
        let mut facts = DoctorFacts {
            app: t.app.clone(),
            env: t.env.clone(),
            bucket: t.bucket.clone(),
            region,
            identity,
            bucket_facts: None,
            rule_asked: t.rule.clone(),
            rules: None,
            lambda: None,
            tag_keys: t.tag_keys.clone(),
            instances: None,
            agents: None,
            upload: None,
        };
        if !reachable {
            return facts;
        }
        let bucket = self.bucket(&t.bucket).await;
        let bucket_exists = matches!(bucket, Ok(BucketFacts::Present { .. }));
        facts.bucket_facts = Some(bucket);
        let rules = self.rules(t.rule.as_deref()).await;
        if let Ok(rules) = &rules {
            let key = dropship_contract::key::ReleaseKey::new(&t.app, &t.env)
                .map(|k| k.object_key())
                .unwrap_or_default();
            if let Some(arn) = lambda_target(rules, t.rule.as_deref(), &t.bucket, &key) {
                facts.lambda = Some(self.lambda(&arn).await);
            }
        }
        facts.rules = Some(rules);
        let instances = self.instances(t).await;
        let running: Vec<String> = instances
            .iter()
            .flatten()
            .filter(|i| i.state == "running")
            .map(|i| i.id.clone())
            .collect();
        if !running.is_empty() {
            facts.agents = Some(self.agents(&running).await);
        }
        facts.instances = Some(instances);
        if bucket_exists {
            facts.upload = Some(self.upload(t).await);
        }
        facts
    }

    /// Whether the caller may put the release key: a `PutObject` that S3 refuses for its
    /// `If-Match` after authorising it. Nothing is written, so no event and no deploy.
    async fn upload(&self, t: &DoctorTarget) -> Read<UploadFacts> {
        let key = dropship_contract::key::ReleaseKey::new(&t.app, &t.env)
            .map_err(|e| e.to_string())?
            .object_key();
        let url = format!("s3://{}/{key}", t.bucket);
        let answer = self
            .s3
            .put_object()
            .bucket(&t.bucket)
            .key(&key)
            .if_match(NEVER_AN_ETAG)
            .content_md5(WRONG_CONTENT_MD5)
            .body(aws_sdk_s3::primitives::ByteStream::from_static(b""))
            .send()
            .await;
        match answer {
            Ok(out) => Ok(UploadFacts::Written(
                out.version_id().unwrap_or("(no version id)").to_string(),
            )),
            Err(e) => match http_status(&e) {
                Some(412) | Some(404) | Some(409) => Ok(UploadFacts::Allowed),
                // The body is checked only in a request S3 has authorised.
                Some(400)
                    if matches!(
                        error_code(&e).as_deref(),
                        Some("BadDigest" | "InvalidDigest")
                    ) =>
                {
                    Ok(UploadFacts::Allowed)
                }
                Some(403) => Ok(UploadFacts::Denied(
                    classify(&PUT_PROBE, url, &e).to_string(),
                )),
                _ => Err(classify(&PUT_PROBE, url, &e).to_string()),
            },
        }
    }

    async fn lambda(&self, arn: &str) -> Read<LambdaFacts> {
        let out = self
            .lambda
            .get_function_configuration()
            .function_name(arn)
            .send()
            .await
            .map_err(|e| {
                classify(&GET_FUNCTION_CONFIGURATION, format!("function {arn}"), &e).to_string()
            })?;
        Ok(LambdaFacts {
            arn: arn.to_string(),
            state: out
                .state()
                .map_or("unknown".into(), |s| s.as_str().to_string()),
            last_update_status: out
                .last_update_status()
                .map_or("unknown".into(), |s| s.as_str().to_string()),
            environment: out
                .environment()
                .and_then(|e| e.variables())
                .map(|v| v.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
        })
    }

    async fn identity(&self) -> Read<String> {
        let out = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| classify(&GET_CALLER_IDENTITY, "the caller", &e).to_string())?;
        Ok(out.arn().unwrap_or("an unnamed principal").to_string())
    }

    async fn bucket(&self, bucket: &str) -> Read<BucketFacts> {
        let url = format!("s3://{bucket}");
        let versioning = match self.s3.get_bucket_versioning().bucket(bucket).send().await {
            Ok(out) => out
                .status()
                .map(|s: &BucketVersioningStatus| s.as_str().to_string()),
            Err(e) if http_status(&e) == Some(404) => return Ok(BucketFacts::Missing),
            Err(e) => return Err(classify(&GET_BUCKET_VERSIONING, url, &e).to_string()),
        };
        let notification = self
            .s3
            .get_bucket_notification_configuration()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| classify(&GET_BUCKET_NOTIFICATION, url, &e).to_string())?;
        Ok(BucketFacts::Present {
            versioning,
            eventbridge: notification.event_bridge_configuration().is_some(),
        })
    }

    /// The rule named `asked` (none if it does not exist), or every rule of the default bus,
    /// with the targets of each that could be the release rule.
    async fn rules(&self, asked: Option<&str>) -> Read<Vec<RuleFacts>> {
        let mut rules = Vec::new();
        let mut token = None::<String>;
        loop {
            let out = self
                .events
                .list_rules()
                .set_name_prefix(asked.map(str::to_string))
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| classify(&LIST_RULES, "the default event bus", &e).to_string())?;
            for r in out.rules() {
                let name = r.name().unwrap_or_default().to_string();
                if asked.is_some_and(|a| a != name) {
                    continue;
                }
                rules.push(RuleFacts {
                    name,
                    state: r
                        .state()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                    event_pattern: r.event_pattern().map(str::to_string),
                    targets: Vec::new(),
                });
            }
            token = out.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        for rule in &mut rules {
            let routes_s3 = rule
                .event_pattern
                .as_deref()
                .is_some_and(|p| p.contains("aws.s3"));
            if asked.is_none() && !routes_s3 {
                continue; // cannot be the release rule: its targets do not matter
            }
            let out = self
                .events
                .list_targets_by_rule()
                .rule(&rule.name)
                .send()
                .await
                .map_err(|e| {
                    classify(&LIST_TARGETS_BY_RULE, format!("rule {}", rule.name), &e).to_string()
                })?;
            rule.targets = out.targets().iter().map(|t| t.arn().to_string()).collect();
        }
        Ok(rules)
    }

    async fn instances(&self, t: &DoctorTarget) -> Read<Vec<InstanceFacts>> {
        use aws_sdk_ec2::types::Filter;
        let (app_key, env_key) = &t.tag_keys;
        let object = format!(
            "instances tagged {app_key}={} and {env_key}={}",
            t.app, t.env
        );
        let mut out = Vec::new();
        let mut pages = self
            .ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name(format!("tag:{app_key}"))
                    .values(&t.app)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name(format!("tag:{env_key}"))
                    .values(&t.env)
                    .build(),
            )
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page =
                page.map_err(|e| classify(&DESCRIBE_INSTANCES, object.clone(), &e).to_string())?;
            for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                let state = instance.state().and_then(|s| s.name()).map(|n| n.as_str());
                if state == Some("terminated") {
                    continue; // gone for good: not a host of the app any more
                }
                if let Some(id) = instance.instance_id() {
                    out.push(InstanceFacts {
                        id: id.to_string(),
                        state: state.unwrap_or("unknown").to_string(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn agents(&self, instance_ids: &[String]) -> Read<Vec<AgentFacts>> {
        let pings =
            dropship_aws::ssm::agent_pings(&self.ssm, &DESCRIBE_INSTANCE_INFORMATION, instance_ids)
                .await
                .map_err(|e| e.to_string())?;
        let out = pings
            .into_iter()
            .map(|p| AgentFacts {
                id: p.instance_id,
                ping_status: p.ping_status,
            })
            .collect();
        Ok(out)
    }
}
