//! Pure planning: every decision the Lambda takes, without any AWS call.
//!
//! The handler feeds in what it read (deploy record, latest pointer, object metadata, the
//! verifier's result, target instances) and gets back what to do. The local pipeline reuses
//! the same functions to render exactly the command a host would receive.

use std::collections::HashMap;

use dropship_contract::fleet::Purpose;
use dropship_contract::host::{packed_script, required_env_value, HostVar, LIST_SEPARATOR};
#[cfg(test)]
use dropship_contract::host::{MAX_REGION_LEN, MAX_S3_ENDPOINT_LEN};
use dropship_contract::key::ReleaseKey;
use dropship_contract::manifest::{switch_budget_secs, DeploySettings};
use dropship_contract::metadata::{MetadataError, ObjectMetadata};
use dropship_contract::record::{
    CommandBatch, DeployRecord, LatestPointer, Outcome, RefusedTarget, Verification,
};
use dropship_contract::sequencer::Sequencer;
use dropship_contract::shell::{self, ShellValueError};
use dropship_contract::verify::{ExpectedBundle, VerifiedBundle, VerifyError};
use thiserror::Error;
use time::{Duration, OffsetDateTime};

use crate::config::Config;
use crate::edges::TaggedInstance;
use crate::event::DeployRequest;

/// The host script, embedded so the command always carries the script this build was tested with.
pub const HOST_SCRIPT: &str = include_str!("../../scripts/deploy-on-host.sh");
/// SendCommand accepts at most 50 instance ids per call.
pub const MAX_INSTANCES_PER_COMMAND: usize = 50;
/// SSM limits a command's `Comment` to 100 characters.
pub const MAX_COMMENT_CHARS: usize = 100;
/// Largest rendered command sent. SSM documents are limited to 64 KB and the parameters of a
/// command travel inside the document invocation, so the script (header + host script) is
/// held to that bound, measured in bytes.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// How long a claim protects a version when the invocation's deadline is unknown: the
/// longest a Lambda invocation can run (15 minutes).
pub const DEFAULT_LEASE_SECS: i64 = 900;

/// Why a version is refused for good; recorded as `rejected` and never retried.
#[derive(Debug, Error)]
pub enum Rejection {
    /// The settings need more time between the switch and the end of a host run than SSM's
    /// execution timeout gives (a host could be killed with an unchecked release).
    #[error(
        "the deploy settings of {env} need up to {need}s from the switch to the end of a host run \
         (health gate, drain and a rollback: {why}), but the execution timeout is {have}s; nothing \
         was sent. Lower health_timeout_secs or [deploy.proxy] drain_timeout_secs, or raise \
         DROPSHIP_EXECUTION_TIMEOUT"
    )]
    SwitchBudget {
        /// The environment.
        env: String,
        /// Seconds needed (`contract::manifest::switch_budget_secs`).
        need: u64,
        /// The execution timeout.
        have: u32,
        /// What adds up.
        why: String,
    },
    /// A value would reach an SSM parameter with `{{`, which Run Command may resolve as a
    /// parameter reference.
    #[error(
        "{name} contains \"{{{{\", which SSM Run Command may resolve as a parameter reference; nothing was sent. Remove it from the branch, settings or key"
    )]
    ParameterReference {
        /// The host variable.
        name: &'static str,
    },
    /// The event names a version S3 does not have (or a delete marker).
    #[error(
        "object s3://{bucket}/{key} version {version_id:?} does not exist ({detail}); \
         nothing was sent. Redeploy an existing version with a direct invocation"
    )]
    VersionMissing {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Version id asked for.
        version_id: String,
        /// What S3 said.
        detail: String,
    },
    /// The object's metadata breaks the contract.
    #[error("object s3://{bucket}/{key} version {version_id:?}: {source}")]
    Metadata {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Version id.
        version_id: String,
        /// The contract violation.
        #[source]
        source: MetadataError,
    },
    /// Metadata names another app/env than the key it was uploaded to.
    #[error(
        "object s3://{bucket}/{key} version {version_id:?}: metadata {field} is {metadata:?} but \
         the key says {key_value:?}; upload the bundle to releases/<its app>/<its env>.tar.gz"
    )]
    MetadataMismatch {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Version id.
        version_id: String,
        /// `app` or `env`.
        field: &'static str,
        /// Value in the metadata.
        metadata: String,
        /// Value from the key.
        key_value: String,
    },
    /// The object is larger than `DROPSHIP_MAX_BUNDLE_BYTES`.
    #[error(
        "object s3://{bucket}/{key} version {version_id:?} is {size} bytes, over the \
         {limit}-byte limit (DROPSHIP_MAX_BUNDLE_BYTES); shrink the bundle or raise the limit"
    )]
    TooLarge {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Version id.
        version_id: String,
        /// Object size.
        size: u64,
        /// Configured limit.
        limit: u64,
    },
    /// The bytes broke the contract (checksum, tar rules, manifest).
    #[error("bundle s3://{bucket}/{key} version {version_id:?} rejected: {source}")]
    Bundle {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Version id.
        version_id: String,
        /// What the verifier found.
        #[source]
        source: VerifyError,
    },
    /// A value cannot be passed to the host script.
    #[error("cannot render the host command: {0}")]
    ShellValue(#[from] ShellValueError),
    /// A list setting contains the list separator and would be split wrongly on the host.
    #[error("deploy setting {name} entry {value:?} contains {LIST_SEPARATOR:?}, which separates list entries for the host script; rename it")]
    ListValue {
        /// Host variable.
        name: &'static str,
        /// Offending entry.
        value: String,
    },
    /// The rendered command exceeds what SSM accepts.
    #[error(
        "rendered command is {bytes} bytes, over the {limit}-byte SSM limit; shorten the \
         metadata (branch, message) or the deploy settings"
    )]
    CommandTooLarge {
        /// Rendered size.
        bytes: usize,
        /// Limit.
        limit: usize,
    },
}

impl Rejection {
    /// The verification summary to record for this rejection, when verification ran.
    pub fn verification(&self, millis: u64) -> Option<Verification> {
        match self {
            Rejection::Bundle { source, .. } => Some(Verification {
                ok: false,
                sha256: match source {
                    VerifyError::ShaMismatch { actual, .. } => Some(actual.clone()),
                    _ => None,
                },
                object_bytes: 0,
                entries: 0,
                unpacked_bytes: 0,
                error: Some(source.to_string()),
                millis,
            }),
            _ => None,
        }
    }
}

/// How a claim on a version is taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// No record yet: create one (`If-None-Match: *`).
    New,
    /// A `dispatching` record whose lease has expired: its invocation died or gave up.
    /// Commands it recorded are kept and their instances not sent to again.
    TakeOver,
    /// An operator's direct invocation of a settled version: deploy it again on purpose.
    Redeploy,
}

/// What to do with a deploy request, given the stored state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Claim the version and go on.
    Proceed(Claim),
    /// Already settled: a repeated event. No second command.
    Duplicate(String),
    /// Another invocation holds a live claim; fail so Lambda retries after it finished.
    Busy(String),
    /// Older than the newest dispatched version of the key: skip.
    Stale(String),
}

/// Parse an RFC 3339 timestamp; `None` when unreadable (treated as expired).
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// RFC 3339 UTC text of a time, as records store it.
pub fn format_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .expect("UTC times format as RFC 3339")
}

/// Decide between dispatch, duplicate, busy and stale. Events are at-least-once and
/// unordered, so this is the only place that knows the rules:
/// a settled record makes an event a duplicate (a direct invocation redeploys it); a live
/// `dispatching` claim makes it busy; a version that is not the key's current version
/// (`current`, read from S3 itself) is stale, whatever sequencer the payload carries: order
/// never comes from a value anyone allowed to invoke the Lambda could forge. A direct
/// invocation is held to the same rule (operators redeploy the current version; going back is
/// `dropship rollback`, which makes the old bytes current).
pub fn gate(
    request: &DeployRequest,
    existing: Option<&DeployRecord>,
    current: Option<&str>,
    now: OffsetDateTime,
) -> Gate {
    if let Some(record) = existing {
        if record.outcome.is_final() && request.sequencer.is_some() {
            return Gate::Duplicate(format!(
                "version {} of {} was already handled ({} at {}); a repeated event sends no second command",
                request.version_id, request.key, record.outcome, record.updated_at
            ));
        }
        let live_until = record.lease_until.as_deref().and_then(parse_time);
        if let Some(until) = live_until.filter(|u| *u > now && !record.outcome.is_final()) {
            return Gate::Busy(format!(
                "version {} of {} is being dispatched by another invocation (claim valid until {}); retry after it",
                request.version_id,
                request.key,
                format_time(until)
            ));
        }
    }
    if current != Some(request.version_id.as_str()) {
        return Gate::Stale(format!(
            "version {} is not the current version of {} ({}); only the current version deploys: to go back to it, `dropship rollback {}` makes those bytes current",
            request.version_id,
            request.key,
            current.map_or("the key has no current version".to_owned(), |c| format!("current: {c}")),
            request.version_id
        ));
    }
    match existing {
        None => Gate::Proceed(Claim::New),
        Some(r) if r.outcome.is_final() => Gate::Proceed(Claim::Redeploy),
        Some(_) => Gate::Proceed(Claim::TakeOver),
    }
}

/// While a version is verified, the deployer asks S3 for the key's current version again
/// after at most this many bytes of the object read since the last ask…
pub const CURRENCY_CHECK_BYTES: u64 = 32 << 20;
/// …or this long since the last ask (whichever comes first, and only once more bytes
/// arrived): a newer upload stops a long verification within about this time, at a cost of at
/// most one `HeadObject` per 32 MiB read, or per 2 s of a slow download.
pub const CURRENCY_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// When the next check of the key's current version is due during one verification (pure:
/// the caller passes how much was read and how long the download has run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CurrencyChecks {
    last_bytes: u64,
    last_at: std::time::Duration,
    /// Checks made so far.
    pub made: u32,
}

impl CurrencyChecks {
    /// Whether to ask now, `read` bytes into the object and `elapsed` after the download
    /// started.
    pub fn due(&self, read: u64, elapsed: std::time::Duration) -> bool {
        let more = read.saturating_sub(self.last_bytes);
        more >= CURRENCY_CHECK_BYTES
            || (more > 0 && elapsed.saturating_sub(self.last_at) >= CURRENCY_CHECK_INTERVAL)
    }

    /// Records a check made at `read` bytes and `elapsed`.
    pub fn checked(&mut self, read: u64, elapsed: std::time::Duration) {
        self.last_bytes = read;
        self.last_at = elapsed;
        self.made += 1;
    }
}

/// What one check concludes about the version being verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Currency {
    /// Still the key's current version: go on.
    Current,
    /// Another version (or a delete marker, `None`) is current now: only the current version
    /// deploys, so this one never will; stop reading.
    Superseded {
        /// The key's current version now.
        current: Option<String>,
    },
}

/// Compares the key's current version (`HeadObject`) with the one being verified.
pub fn currency(verifying: &str, current: Option<&str>) -> Currency {
    if current == Some(verifying) {
        Currency::Current
    } else {
        Currency::Superseded {
            current: current.map(str::to_owned),
        }
    }
}

/// The reason a verification stopped early settles its version with (`skipped_stale`).
pub fn superseded_reason(
    request: &DeployRequest,
    current: Option<&str>,
    read_bytes: u64,
) -> String {
    format!(
        "version {} of {} was superseded while it was being verified ({}; stopped after {read_bytes} bytes): only the current version deploys, and its own event deploys it",
        request.version_id,
        request.key,
        current.map_or("the key has no current version now".to_owned(), |c| format!("current: {c}")),
    )
}

/// Splits tagged instances into targets and refused ones. Only instances carrying exactly the
/// (app, env)'s profile qualify: tags can be set by anyone allowed `ec2:CreateTags`, attaching
/// a profile needs `iam:PassRole`. There is no tags-only mode (the configuration requires the
/// template).
pub fn qualify_targets(
    instances: Vec<TaggedInstance>,
    want: &str,
) -> (Vec<String>, Vec<RefusedTarget>) {
    let mut targets = Vec::new();
    let mut refused = Vec::new();
    for i in instances {
        match i.profile_arn.as_deref() {
            Some(have) if want == have => targets.push(i.id),
            have => refused.push(RefusedTarget {
                reason: format!(
                    "carries the tags but {} instead of the instance profile {want}; not sent to (attach the module's profile for this app/env)",
                    have.map_or("no instance profile".to_owned(), |h| format!("instance profile {h}"))
                ),
                instance_id: i.id,
            }),
        }
    }
    (targets, refused)
}

/// How long before the Lambda's deadline dispatching stops, so the claim can still be released
/// with the reason recorded (Lambda kills the process at the deadline itself).
pub const DEADLINE_MARGIN_SECS: i64 = 10;

/// The time dispatching may take: until the deadline minus [`DEADLINE_MARGIN_SECS`] (at least
/// one second); `None` when the deadline is unknown.
pub fn dispatch_budget(
    deadline: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Option<std::time::Duration> {
    let left = deadline? - now - Duration::seconds(DEADLINE_MARGIN_SECS);
    Some(std::time::Duration::from_secs_f64(
        left.as_seconds_f64().max(1.0),
    ))
}

/// Whether `pointer` must be replaced by one for `version_id` dispatched with the S3 stamp
/// `sequencer`: strictly newer, or none yet; or the same stamp (versions written within the
/// same second) for another version, the last one dispatched (only the key's current version
/// is) winning.
pub fn pointer_needs_update(
    pointer: Option<&LatestPointer>,
    sequencer: &Sequencer,
    version_id: &str,
) -> bool {
    match pointer.map(|p| (Sequencer::parse(&p.sequencer).ok(), p.version_id.as_str())) {
        Some((Some(current), current_version)) => {
            *sequencer > current || (*sequencer == current && current_version != version_id)
        }
        Some((None, _)) | None => true,
    }
}

/// Decode and check the object's metadata against the contract and the key.
pub fn check_metadata(
    request: &DeployRequest,
    headers: &HashMap<String, String>,
) -> Result<ObjectMetadata, Rejection> {
    let meta = ObjectMetadata::from_headers(headers).map_err(|source| Rejection::Metadata {
        bucket: request.bucket.clone(),
        key: request.key.clone(),
        version_id: request.version_id.clone(),
        source,
    })?;
    for (field, metadata, key_value) in [
        ("app", &meta.app, request.release.app()),
        ("env", &meta.env, request.release.env()),
    ] {
        if metadata != key_value {
            return Err(Rejection::MetadataMismatch {
                bucket: request.bucket.clone(),
                key: request.key.clone(),
                version_id: request.version_id.clone(),
                field,
                metadata: metadata.clone(),
                key_value: key_value.to_owned(),
            });
        }
    }
    Ok(meta)
}

/// What the verifier must find in the bytes, from checked metadata.
pub fn expected_bundle(meta: &ObjectMetadata) -> ExpectedBundle {
    ExpectedBundle {
        app: meta.app.clone(),
        env: meta.env.clone(),
        commit: meta.commit.clone(),
        dirty: meta.dirty,
        branch: meta.branch.clone(),
        sha256: meta.sha256.clone(),
    }
}

/// The record summary of a successful verification.
pub fn verification_summary(v: &VerifiedBundle) -> Verification {
    Verification {
        ok: true,
        sha256: Some(v.sha256.clone()),
        object_bytes: v.object_bytes,
        entries: v.entries,
        unpacked_bytes: v.unpacked_bytes,
        error: None,
        millis: v.millis,
    }
}

/// Everything the host script needs for one deploy.
#[derive(Debug, Clone)]
pub struct HostInputs<'a> {
    /// Lambda configuration (app root, lock timeout).
    pub config: &'a Config,
    /// The request being dispatched.
    pub request: &'a DeployRequest,
    /// Checked object metadata.
    pub metadata: &'a ObjectMetadata,
    /// What verification established (manifest, sizes, digest).
    pub verified: &'a VerifiedBundle,
    /// Deploy this version, or send the host back to the release it had before it (the
    /// fleet rollback, guarded by the version: a host that moved on answers `superseded`).
    pub purpose: Purpose,
    /// The version's ordering stamp from S3 (`DROPSHIP_SEQUENCER`), see
    /// [`dropship_contract::sequencer::order_stamp`].
    pub order_stamp: &'a str,
}

fn join_list(var: HostVar, items: &[String]) -> Result<String, Rejection> {
    if let Some(bad) = items.iter().find(|i| i.contains(LIST_SEPARATOR)) {
        return Err(Rejection::ListValue {
            name: var.name(),
            value: bad.clone(),
        });
    }
    Ok(items.join(&LIST_SEPARATOR.to_string()))
}

/// The deploy settings of the request's environment (the key's, never the bundle's): the
/// manifest's base with that environment's override applied. The verifier already checked
/// them; a failure here is the same rejection.
pub fn deploy_settings(
    request: &DeployRequest,
    verified: &VerifiedBundle,
) -> Result<DeploySettings, Rejection> {
    verified
        .manifest
        .settings_for(request.release.env())
        .map_err(|e| Rejection::Bundle {
            bucket: request.bucket.clone(),
            key: request.key.clone(),
            version_id: request.version_id.clone(),
            source: VerifyError::ManifestSettings(e),
        })
}

/// The value of every host-script input, in [`HostVar::ALL`] order.
pub fn host_vars(inputs: &HostInputs<'_>) -> Result<Vec<(HostVar, String)>, Rejection> {
    let r = inputs.request;
    let deploy = &deploy_settings(r, inputs.verified)?;
    let need = switch_budget_secs(deploy);
    if need > u64::from(inputs.config.execution_timeout_secs) {
        return Err(Rejection::SwitchBudget {
            env: r.release.env().to_owned(),
            need,
            have: inputs.config.execution_timeout_secs,
            why: format!(
                "health_timeout_secs {}, drain {}s",
                deploy.health_timeout_secs,
                deploy.proxy.as_ref().map_or(0, |p| p.drain_timeout_secs)
            ),
        });
    }
    let proxy = deploy.proxy.as_ref();
    let mut out = Vec::with_capacity(HostVar::ALL.len());
    for var in HostVar::ALL {
        let value = match var {
            HostVar::Action => match inputs.purpose {
                Purpose::Deploy => "deploy".to_owned(),
                Purpose::Rollback => "rollback".to_owned(),
            },
            HostVar::App => r.release.app().to_owned(),
            HostVar::Env => r.release.env().to_owned(),
            HostVar::AppRoot => inputs.config.app_root_for(r.release.app(), r.release.env()),
            HostVar::Bucket => r.bucket.clone(),
            HostVar::Key => r.key.clone(),
            HostVar::VersionId => r.version_id.clone(),
            HostVar::Sequencer => inputs.order_stamp.to_owned(),
            HostVar::Sha256 => inputs.verified.sha256.clone(),
            HostVar::Region => inputs.config.region.clone(),
            HostVar::S3Endpoint => inputs.config.s3_endpoint.clone(),
            HostVar::BundleBytes => inputs.verified.object_bytes.to_string(),
            HostVar::UnpackedBytes => inputs.verified.unpacked_bytes.to_string(),
            HostVar::Commit => inputs.metadata.commit.clone(),
            HostVar::ComposeFile => deploy.compose_file.clone(),
            HostVar::Profiles => join_list(var, &deploy.profiles)?,
            HostVar::HealthUrl => deploy.health_url.clone().unwrap_or_default(),
            HostVar::HealthTimeout => deploy.health_timeout_secs.to_string(),
            HostVar::SharedPaths => join_list(var, &deploy.shared_paths)?,
            HostVar::KeepReleases => deploy.keep_releases.to_string(),
            HostVar::RequiredEnv => required_env_value(&deploy.required_env),
            HostVar::PreSwitchHook => deploy.pre_switch_hook.clone().unwrap_or_default(),
            HostVar::Strategy => deploy.strategy.as_str().to_owned(),
            HostVar::ProxyService => proxy.map(|p| p.service.clone()).unwrap_or_default(),
            HostVar::ProxyPort => proxy.map(|p| p.port.to_string()).unwrap_or_default(),
            HostVar::ProxyListen => proxy.map(|p| p.listen.clone()).unwrap_or_default(),
            HostVar::ProxyHealthPath => proxy.map(|p| p.health_path.clone()).unwrap_or_default(),
            HostVar::ProxyDrainTimeout => proxy
                .map(|p| p.drain_timeout_secs.to_string())
                .unwrap_or_default(),
            HostVar::ProxyImage => proxy.map(|p| p.image.clone()).unwrap_or_default(),
            // Empty: the host goes back to the previous release it recorded itself.
            HostVar::RollbackTo => String::new(),
            HostVar::ExpectVersionId => match inputs.purpose {
                Purpose::Deploy => String::new(),
                Purpose::Rollback => r.version_id.clone(),
            },
            HostVar::LockTimeout => inputs.config.lock_timeout_secs.to_string(),
            HostVar::ExecutionTimeout => inputs.config.execution_timeout_secs.to_string(),
        };
        // Run Command resolves `{{ … }}` parameter references in what it is sent.
        if value.contains("{{") {
            return Err(Rejection::ParameterReference { name: var.name() });
        }
        out.push((var, value));
    }
    Ok(out)
}

/// First lines of every command: run under bash whatever shell SSM starts (the agent may
/// use `sh`, which is dash on Ubuntu; the guard is POSIX and re-executes the file in bash).
pub const COMMAND_PREAMBLE: &str = "#!/bin/bash\n\
# dropship deploy command: exported inputs, then scripts/deploy-on-host.sh (packed)\n\
if [ -z \"${BASH_VERSION:-}\" ]; then exec /bin/bash \"$0\" \"$@\"; fi\n";

/// The export header: every input through the contract's one encoder, nothing else.
pub fn render_header(vars: &[(HostVar, String)]) -> Result<String, Rejection> {
    let pairs: Vec<(&str, &str)> = vars.iter().map(|(v, s)| (v.name(), s.as_str())).collect();
    let exports = shell::render_exports(&pairs)?;
    Ok(format!("{COMMAND_PREAMBLE}{exports}"))
}

/// The embedded host script as commands carry it (compacted, compressed, and the lines that
/// unpack and run it: `dropship_contract::host::packed_script`), made once.
pub fn packed_host_script() -> &'static str {
    static PACKED: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PACKED.get_or_init(|| packed_script(HOST_SCRIPT))
}

/// Header followed by the embedded script, refused when SSM would not accept its size.
pub fn render_command(vars: &[(HostVar, String)]) -> Result<String, Rejection> {
    let mut script = render_header(vars)?;
    script.push_str(packed_host_script());
    if script.len() > MAX_COMMAND_BYTES {
        return Err(Rejection::CommandTooLarge {
            bytes: script.len(),
            limit: MAX_COMMAND_BYTES,
        });
    }
    Ok(script)
}

/// The command's `Comment`: app/env, short commit and version id, cut to SSM's 100 characters.
pub fn comment(request: &DeployRequest, commit: &str) -> String {
    let short = commit.get(..12).unwrap_or(commit);
    let text = format!(
        "dropship {}/{} {} v={}",
        request.release.app(),
        request.release.env(),
        short,
        request.version_id
    );
    text.chars().take(MAX_COMMENT_CHARS).collect()
}

/// The fleet rollback's `Comment`: like [`comment`], marked as a rollback.
pub fn rollback_comment(request: &DeployRequest, commit: &str) -> String {
    let text = format!(
        "dropship rollback {}",
        &comment(request, commit)["dropship ".len()..]
    );
    text.chars().take(MAX_COMMENT_CHARS).collect()
}

/// What a record keeps of the dispatch that later steps (waves, the fleet rollback) need to
/// render their command again: the request, the checked metadata and the verified bundle.
/// `None` when the record never got that far (it has no fleet then either).
pub fn resumed_inputs(
    record: &DeployRecord,
) -> Option<(DeployRequest, ObjectMetadata, VerifiedBundle, String)> {
    let metadata = record.metadata.clone()?;
    let manifest = record.manifest.clone()?;
    let v = record.verification.as_ref().filter(|v| v.ok)?;
    let release = ReleaseKey::new(&record.app, &record.env).ok()?;
    let sequencer = match &record.event.sequencer {
        Some(s) => Some(s.parse::<Sequencer>().ok()?),
        None => None,
    };
    let request = DeployRequest {
        bucket: record.bucket.clone(),
        key: record.key.clone(),
        release,
        version_id: record.version_id.clone(),
        sequencer,
        facts: record.event.clone(),
    };
    let verified = VerifiedBundle {
        manifest,
        sha256: v.sha256.clone()?,
        object_bytes: v.object_bytes,
        entries: v.entries,
        unpacked_bytes: v.unpacked_bytes,
        millis: v.millis,
    };
    Some((
        request,
        metadata,
        verified,
        record.stamp.clone().unwrap_or_default(),
    ))
}

/// Split instance ids into SendCommand calls of at most 50.
pub fn batches(instance_ids: &[String]) -> Vec<Vec<String>> {
    instance_ids
        .chunks(MAX_INSTANCES_PER_COMMAND)
        .map(<[String]>::to_vec)
        .collect()
}

/// One planned SendCommand family: the same script for every batch of targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandPlan {
    /// The installation's own command document ([`Config::command_document`]).
    pub document_name: String,
    /// Header + host script: the `commands` parameter.
    pub script: String,
    /// `executionTimeout` parameter (seconds, as SSM wants it: a string).
    pub execution_timeout: String,
    /// `TimeoutSeconds` (delivery).
    pub timeout_seconds: i32,
    /// `MaxConcurrency`.
    pub max_concurrency: String,
    /// `MaxErrors`.
    pub max_errors: String,
    /// `Comment`.
    pub comment: String,
    /// CloudWatch log group for the output, when configured.
    pub log_group: Option<String>,
    /// Instance ids per SendCommand call.
    pub batches: Vec<Vec<String>>,
    /// Deploy or fleet rollback (recorded with each batch).
    pub purpose: Purpose,
}

/// Plan the command for `targets` (instances not yet sent to).
pub fn plan_command(inputs: &HostInputs<'_>, targets: &[String]) -> Result<CommandPlan, Rejection> {
    let vars = host_vars(inputs)?;
    let script = render_command(&vars)?;
    let c = inputs.config;
    Ok(CommandPlan {
        document_name: c.command_document.clone(),
        script,
        execution_timeout: c.execution_timeout_secs.to_string(),
        timeout_seconds: i32::try_from(c.delivery_timeout_secs).unwrap_or(i32::MAX),
        max_concurrency: c.max_concurrency.clone(),
        max_errors: c.max_errors.clone(),
        comment: match inputs.purpose {
            Purpose::Deploy => comment(inputs.request, &inputs.metadata.commit),
            Purpose::Rollback => rollback_comment(inputs.request, &inputs.metadata.commit),
        },
        log_group: c.log_group.clone(),
        batches: batches(targets),
        purpose: inputs.purpose,
    })
}

/// Instances in `targets` that no recorded command reached yet, in order.
pub fn remaining_targets(targets: &[String], record: &DeployRecord) -> Vec<String> {
    targets
        .iter()
        .filter(|t| !record.commands.iter().any(|c| c.instance_ids.contains(t)))
        .cloned()
        .collect()
}

/// Whether a command's script was rendered for `version_id` (used to recognise commands a
/// crashed attempt sent): the exact export line of the version id.
pub fn script_is_for_version(script: &str, version_id: &str) -> bool {
    match shell::render_exports(&[(HostVar::VersionId.name(), version_id)]) {
        Ok(line) => script.lines().any(|l| format!("{l}\n") == line),
        Err(_) => false,
    }
}

/// Whether a command found after a crashed attempt may be adopted as this attempt's own: its
/// script must be exactly the one this attempt renders (`ours`), and it must have gone only to
/// instances of this wave. A matching `Comment` or version line alone proves nothing: any
/// principal with `ssm:SendCommand` can write both.
pub fn is_adoptable(script: &str, batch: &CommandBatch, ours: &str, wave: &[String]) -> bool {
    script == ours
        && !batch.instance_ids.is_empty()
        && batch.instance_ids.iter().all(|i| wave.contains(i))
}

/// How long after it was sent a command with dropship's `Comment` but no command-index entry
/// is still taken for one of the deployer's own whose sender has not indexed it yet: the
/// sender indexes right after `SendCommand` returns, within its invocation (at most 15
/// minutes), plus a margin.
pub const INDEX_GRACE_SECS: i64 = 20 * 60;

/// Whether a finished command that looks like dropship's but has no index entry is retried
/// (its sender may still index it) rather than ignored: only while it is younger than
/// [`INDEX_GRACE_SECS`] (unknown age: retried). Anyone with `ssm:SendCommand` can copy the
/// `Comment`; past the grace such commands cost one invocation each, not a retry chain into
/// the failure queue.
pub fn unindexed_command_is_retried(
    requested: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> bool {
    requested.is_none_or(|t| now - t < Duration::seconds(INDEX_GRACE_SECS))
}

/// When a claim taken `now` stops protecting the version: the invocation's deadline (the
/// longest it can still run) plus a few seconds, or [`DEFAULT_LEASE_SECS`] when unknown.
pub fn lease_end(deadline: Option<OffsetDateTime>, now: OffsetDateTime) -> OffsetDateTime {
    deadline.unwrap_or(now + Duration::seconds(DEFAULT_LEASE_SECS)) + Duration::seconds(5)
}

/// The `dispatching` record that claims `request`'s version until `lease_until`: a new one;
/// an expired claim taken over as it is (the batches it recorded are kept, so their
/// instances are not sent to again); or a settled record cleared for a deliberate redeploy.
pub fn claim_record(
    request: &DeployRequest,
    claim: &Claim,
    existing: Option<DeployRecord>,
    now: OffsetDateTime,
    lease_until: OffsetDateTime,
    lambda_request_id: Option<&str>,
) -> DeployRecord {
    let mut record = match (claim, existing) {
        (Claim::TakeOver, Some(doc)) => doc,
        (Claim::Redeploy, Some(doc)) => DeployRecord {
            commands: vec![],
            targets: vec![],
            verification: None,
            manifest: None,
            last_error: None,
            ..doc
        },
        (Claim::New, _) | (_, None) => DeployRecord::new(
            &request.bucket,
            &request.release,
            &request.version_id,
            Outcome::Dispatching,
            request.facts.clone(),
            &format_time(now),
        ),
    };
    record.outcome = Outcome::Dispatching;
    record.reason = None;
    record.event = request.facts.clone();
    record.attempts += 1;
    record.updated_at = format_time(now);
    record.lambda_request_id = lambda_request_id.map(str::to_owned);
    record.lease_until = Some(format_time(lease_until));
    record
}

/// The record of a version skipped as stale; it keeps the first-claim time and the attempt
/// count of a record that was already there.
pub fn stale_record(
    request: &DeployRequest,
    reason: &str,
    existing: Option<&DeployRecord>,
    now: OffsetDateTime,
    lambda_request_id: Option<&str>,
) -> DeployRecord {
    let mut record = DeployRecord::new(
        &request.bucket,
        &request.release,
        &request.version_id,
        Outcome::SkippedStale,
        request.facts.clone(),
        &format_time(now),
    );
    record.reason = Some(reason.to_owned());
    record.lambda_request_id = lambda_request_id.map(str::to_owned);
    if let Some(old) = existing {
        record.created_at = old.created_at.clone();
        record.attempts = old.attempts;
    }
    record
}

/// Settles a claimed record with its final `outcome`: the lease ends, the error is gone.
pub fn settle(
    record: &mut DeployRecord,
    outcome: Outcome,
    reason: Option<String>,
    now: OffsetDateTime,
) {
    record.outcome = outcome;
    record.reason = reason;
    record.lease_until = None;
    record.last_error = None;
    record.updated_at = format_time(now);
}

/// Releases a claim after a transient failure: the lease ends now so Lambda's retry can
/// take over at once, keeping the progress and the error.
pub fn release_claim(record: &mut DeployRecord, error: String, now: OffsetDateTime) {
    record.lease_until = Some(format_time(now));
    record.last_error = Some(error);
    record.updated_at = format_time(now);
}

/// The pointer to `request`'s dispatched version (its commit from `record`), written `now`
/// for the event with `sequencer`.
pub fn pointer_to(
    request: &DeployRequest,
    record: &DeployRecord,
    sequencer: &Sequencer,
    now: OffsetDateTime,
) -> LatestPointer {
    LatestPointer::new(
        &request.release,
        &request.version_id,
        &sequencer.to_string(),
        record.metadata.as_ref().map(|m| m.commit.clone()),
        &format_time(now),
    )
}

/// When the commands a crashed attempt may have sent can start: a minute before the
/// version was first claimed (clock skew), or an hour ago when that time is unreadable.
pub fn adoption_window_start(record: &DeployRecord, now: OffsetDateTime) -> OffsetDateTime {
    parse_time(&record.created_at).unwrap_or(now - Duration::hours(1)) - Duration::minutes(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{parse, Request};
    use dropship_contract::key::ReleaseKey;
    use dropship_contract::manifest::{DeploySettings, Manifest, MANIFEST_FORMAT};
    use dropship_contract::record::{EventFacts, Trigger};
    use proptest::prelude::*;
    use serde_json::json;
    use std::process::Command;

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

    fn request(version: &str, sequencer: Option<&str>) -> DeployRequest {
        let payload = match sequencer {
            Some(seq) => json!({
                "version": "0", "id": "e-1", "detail-type": "Object Created", "source": "aws.s3",
                "account": "1", "time": "2026-11-23T09:00:00Z", "region": "us-east-1",
                "resources": [],
                "detail": {"version": "0", "bucket": {"name": "rel-bucket"},
                    "object": {"key": "releases/shop/prod.tar.gz", "size": 1, "etag": "x",
                               "version-id": version, "sequencer": seq},
                    "reason": "PutObject"}
            }),
            None => {
                json!({"bucket": "rel-bucket", "key": "releases/shop/prod.tar.gz", "version_id": version})
            }
        };
        match parse(&payload, &config()).unwrap() {
            Request::Deploy(d) => d,
            other => panic!("not a deploy: {other:?}"),
        }
    }

    fn record(version: &str, outcome: Outcome, lease_until: Option<&str>) -> DeployRecord {
        DeployRecord {
            lease_until: lease_until.map(str::to_owned),
            attempts: 1,
            ..DeployRecord::new(
                "rel-bucket",
                &ReleaseKey::new("shop", "prod").unwrap(),
                version,
                outcome,
                EventFacts::new(Trigger::Event),
                "2026-11-23T09:00:00Z",
            )
        }
    }

    fn pointer(version: &str, seq: &str) -> LatestPointer {
        LatestPointer::new(
            &ReleaseKey::new("shop", "prod").unwrap(),
            version,
            seq,
            None,
            "2026-11-23T09:00:00Z",
        )
    }

    fn now() -> OffsetDateTime {
        parse_time("2026-11-23T10:00:00Z").unwrap()
    }

    #[test]
    fn currency_is_checked_every_32_mib_or_2_s_of_reading_and_only_then() {
        let ms = std::time::Duration::from_millis;
        // A fast download of 1 GiB in 1 MiB chunks within 4 s: one check per 32 MiB.
        let mut checks = CurrencyChecks::default();
        for i in 1..=1024u64 {
            let (read, at) = (i << 20, ms(i * 4));
            if checks.due(read, at) {
                checks.checked(read, at);
            }
        }
        assert_eq!(checks.made, 32, "1 GiB costs 32 HeadObject calls");
        // A slow one: 1 MiB every 500 ms for 20 s: one check per 2 s.
        let mut checks = CurrencyChecks::default();
        for i in 1..=40u64 {
            let (read, at) = (i << 20, ms(i * 500));
            if checks.due(read, at) {
                checks.checked(read, at);
            }
        }
        assert_eq!(checks.made, 10);
        // Nothing new read: no check, however long it stalls (the read timeout bounds that).
        let mut checks = CurrencyChecks::default();
        checks.checked(5, ms(0));
        assert!(!checks.due(5, ms(60_000)));
        assert!(checks.due(6, ms(2_000)));
        assert!(!checks.due(6, ms(1_999)));
        assert!(!CurrencyChecks::default().due(0, ms(0)));
    }

    #[test]
    fn a_version_is_superseded_once_another_or_none_is_current() {
        assert_eq!(currency("v1", Some("v1")), Currency::Current);
        assert_eq!(
            currency("v1", Some("v2")),
            Currency::Superseded {
                current: Some("v2".into())
            }
        );
        assert_eq!(currency("v1", None), Currency::Superseded { current: None });
        let ev = request("v1", Some("0055AED6DCD90281E6"));
        let why = superseded_reason(&ev, Some("v2"), 1 << 20);
        assert!(
            why.contains("v1") && why.contains("current: v2") && why.contains("1048576 bytes"),
            "{why}"
        );
    }

    #[test]
    fn gate_new_duplicate_busy_takeover_and_redeploy() {
        let ev = request("v2", Some("0055AED6DCD90281E6"));
        let cur = Some("v2");
        assert_eq!(gate(&ev, None, cur, now()), Gate::Proceed(Claim::New));
        let done = record("v2", Outcome::Dispatched, None);
        assert!(
            matches!(gate(&ev, Some(&done), cur, now()), Gate::Duplicate(r) if r.contains("already handled"))
        );
        for final_outcome in [Outcome::Rejected, Outcome::NoTargets, Outcome::SkippedStale] {
            let r = record("v2", final_outcome, None);
            assert!(matches!(
                gate(&ev, Some(&r), cur, now()),
                Gate::Duplicate(_)
            ));
        }
        let live = record("v2", Outcome::Dispatching, Some("2026-11-23T10:05:00Z"));
        assert!(
            matches!(gate(&ev, Some(&live), cur, now()), Gate::Busy(r) if r.contains("10:05:00"))
        );
        let expired = record("v2", Outcome::Dispatching, Some("2026-11-23T09:59:59Z"));
        assert_eq!(
            gate(&ev, Some(&expired), cur, now()),
            Gate::Proceed(Claim::TakeOver)
        );
        let direct = request("v2", None);
        assert_eq!(
            gate(&direct, Some(&done), cur, now()),
            Gate::Proceed(Claim::Redeploy)
        );
        assert_eq!(gate(&direct, None, cur, now()), Gate::Proceed(Claim::New));
    }

    #[test]
    fn only_the_keys_current_version_deploys_whatever_the_payload_says() {
        // A forged event with a maximal sequencer for an old version: stale.
        let forged = request("v1", Some(&"F".repeat(128)));
        assert!(matches!(
            gate(&forged, None, Some("v2"), now()),
            Gate::Stale(r) if r.contains("not the current version") && r.contains("current: v2")
        ));
        // An operator's direct invocation of an old version: refused the same way, with
        // what to do instead.
        let direct_old = request("v1", None);
        assert!(matches!(
            gate(&direct_old, None, Some("v2"), now()),
            Gate::Stale(r) if r.contains("dropship rollback v1")
        ));
        // A key whose current version is gone (delete marker): nothing deploys.
        assert!(matches!(
            gate(&request("v2", Some("01")), None, None, now()),
            Gate::Stale(r) if r.contains("no current version")
        ));
        // A stale takeover is skipped too.
        let expired = record("v1", Outcome::Dispatching, Some("2026-11-23T09:00:00Z"));
        assert!(matches!(
            gate(&forged, Some(&expired), Some("v2"), now()),
            Gate::Stale(_)
        ));
        // The order stamp sent to hosts comes from S3, not from the payload.
        assert_eq!(
            dropship_contract::sequencer::order_stamp(1_764_400_000).len(),
            8
        );
    }

    #[test]
    fn only_instances_with_the_app_envs_profile_are_targets() {
        let inst = |id: &str, profile: Option<&str>| TaggedInstance {
            id: id.into(),
            profile_arn: profile.map(str::to_owned),
        };
        let want = "arn:aws:iam::111122223333:instance-profile/dropship-host-shop.prod";
        let (targets, refused) = qualify_targets(
            vec![
                inst("i-1", Some(want)),
                inst("i-2", None),
                inst(
                    "i-3",
                    Some("arn:aws:iam::111122223333:instance-profile/dropship-host-shop.staging"),
                ),
            ],
            want,
        );
        assert_eq!(targets, ["i-1"]);
        let ids: Vec<&str> = refused.iter().map(|r| r.instance_id.as_str()).collect();
        assert_eq!(ids, ["i-2", "i-3"]);
        assert!(refused[0].reason.contains("no instance profile"));
        assert!(refused[1].reason.contains("shop.staging"));
    }

    #[test]
    fn dispatch_stops_before_the_deadline() {
        let t = now();
        let d = dispatch_budget(Some(t + Duration::seconds(60)), t).unwrap();
        assert_eq!(d.as_secs(), 50);
        assert_eq!(
            dispatch_budget(Some(t + Duration::seconds(3)), t)
                .unwrap()
                .as_secs(),
            1
        );
        assert_eq!(dispatch_budget(None, t), None);
    }

    #[test]
    fn the_pointer_moves_only_forward() {
        let newest = pointer("v2", "0055AED6DCD90281E6");
        assert!(pointer_needs_update(
            Some(&newest),
            &Sequencer::parse("0055AED6DCD90281E7").unwrap(),
            "v3"
        ));
        assert!(!pointer_needs_update(
            Some(&newest),
            &Sequencer::parse("0055AED6DCD90281E6").unwrap(),
            "v2"
        ));
        assert!(!pointer_needs_update(
            Some(&newest),
            &Sequencer::parse("0055").unwrap(),
            "v1"
        ));
        // The same stamp (one second) for another version: the last dispatched wins.
        assert!(pointer_needs_update(
            Some(&newest),
            &Sequencer::parse("0055AED6DCD90281E6").unwrap(),
            "v3"
        ));
        assert!(pointer_needs_update(
            None,
            &Sequencer::parse("01").unwrap(),
            "v1"
        ));
    }

    fn meta() -> ObjectMetadata {
        crate::fakes::metadata()
    }

    fn headers(m: &ObjectMetadata) -> HashMap<String, String> {
        m.to_headers().unwrap().into_iter().collect()
    }

    #[test]
    fn metadata_must_match_the_key() {
        let r = request("v1", Some("01"));
        assert_eq!(check_metadata(&r, &headers(&meta())).unwrap(), meta());
        let mut other_env = meta();
        other_env.env = "staging".into();
        let err = check_metadata(&r, &headers(&other_env))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("env") && err.contains("staging") && err.contains("prod"),
            "{err}"
        );
        let mut other_app = meta();
        other_app.app = "blog".into();
        let err = check_metadata(&r, &headers(&other_app))
            .unwrap_err()
            .to_string();
        assert!(err.contains("app") && err.contains("blog"), "{err}");
        let mut no_sha = headers(&meta());
        no_sha.remove("sha256");
        let err = check_metadata(&r, &no_sha).unwrap_err().to_string();
        assert!(
            err.contains("sha256") && err.contains("releases/shop/prod.tar.gz"),
            "{err}"
        );
        let mut short = headers(&meta());
        short.insert("commit".into(), "abc".into());
        assert!(check_metadata(&r, &short)
            .unwrap_err()
            .to_string()
            .contains("commit"));
    }

    /// One bundle, two environments: each host command carries its own environment's
    /// settings (the base, or the base with that environment's override), whatever the
    /// bundle's bytes (which name no environment).
    #[test]
    fn each_environment_renders_its_own_profile_from_one_bundle() {
        let c = config();
        let m = meta();
        let mut v = verified(DeploySettings {
            profiles: vec!["web".into()],
            ..DeploySettings::default()
        });
        v.manifest.overrides.insert(
            "prod".into(),
            dropship_contract::manifest::DeployOverrides {
                profiles: Some(vec!["web".into(), "prod-extras".into()]),
                on_failure: Some(dropship_contract::fleet::OnFailure::Leave),
                ..Default::default()
            },
        );
        let prod = request("v.1", Some("0A"));
        let mut staging = prod.clone();
        staging.release = ReleaseKey::new("shop", "staging").unwrap();
        staging.key = staging.release.object_key();
        let profiles_of = |r: &DeployRequest| {
            let inputs = HostInputs {
                config: &c,
                request: r,
                metadata: &m,
                verified: &v,
                purpose: Purpose::Deploy,
                order_stamp: "6923A0B0",
            };
            let vars = host_vars(&inputs).unwrap();
            let script = render_command(&vars).unwrap();
            let profiles = vars
                .iter()
                .find(|(h, _)| *h == HostVar::Profiles)
                .unwrap()
                .1
                .clone();
            assert!(
                script.contains(&profiles),
                "the rendered command carries {profiles}"
            );
            profiles
        };
        assert_eq!(profiles_of(&prod), "web,prod-extras");
        assert_eq!(profiles_of(&staging), "web");
        assert_eq!(
            deploy_settings(&prod, &v).unwrap().on_failure,
            dropship_contract::fleet::OnFailure::Leave
        );
        assert_eq!(
            deploy_settings(&staging, &v).unwrap().on_failure,
            dropship_contract::fleet::OnFailure::RollbackFleet
        );
        // An override that makes the key's environment invalid is a rejection of the bundle.
        v.manifest.overrides.get_mut("prod").unwrap().keep_releases = Some(0);
        let err = deploy_settings(&prod, &v).unwrap_err();
        assert!(err.to_string().contains("keep_releases"), "{err}");
        deploy_settings(&staging, &v).unwrap();
    }

    fn verified(deploy: DeploySettings) -> VerifiedBundle {
        VerifiedBundle {
            manifest: Manifest {
                format: MANIFEST_FORMAT,
                app: "shop".into(),
                branch: "main".into(),
                commit: meta().commit,
                commit_time: 1,
                dirty: false,
                message: "m".into(),
                files: 2,
                bytes: 10,
                deploy,
                overrides: Default::default(),
                legacy_env: None,
            },
            sha256: "a".repeat(64),
            object_bytes: 1234,
            entries: 2,
            unpacked_bytes: 10,
            millis: 1,
        }
    }

    #[test]
    fn start_first_settings_reach_the_host_and_must_fit_the_execution_timeout() {
        use dropship_contract::manifest::{ProxySettings, Strategy};
        let mut c = config();
        let r = request("v.1", Some("0A"));
        let m = meta();
        let deploy = DeploySettings {
            strategy: Strategy::StartFirst,
            proxy: Some(ProxySettings {
                service: "web".into(),
                port: 8000,
                listen: "127.0.0.1:8080".into(),
                health_path: "/up".into(),
                drain_timeout_secs: 45,
                image: "caddy:2.11.7".into(),
            }),
            health_timeout_secs: 60,
            ..DeploySettings::default()
        };
        let v = verified(deploy);
        let inputs = |c: &Config| {
            let i = HostInputs {
                config: c,
                request: &r,
                metadata: &m,
                verified: &v,
                purpose: Purpose::Deploy,
                order_stamp: "6923A0B0",
            };
            host_vars(&i)
        };
        let vars = inputs(&c).unwrap();
        let get = |h: HostVar| vars.iter().find(|(v, _)| *v == h).unwrap().1.clone();
        assert_eq!(get(HostVar::Strategy), "start-first");
        assert_eq!(get(HostVar::ProxyService), "web");
        assert_eq!(get(HostVar::ProxyPort), "8000");
        assert_eq!(get(HostVar::ProxyListen), "127.0.0.1:8080");
        assert_eq!(get(HostVar::ProxyHealthPath), "/up");
        assert_eq!(get(HostVar::ProxyDrainTimeout), "45");
        assert_eq!(get(HostVar::ProxyImage), "caddy:2.11.7");
        // 2 * (2 * 60 + 30) + 45 + 15 = 360 seconds from the switch to the end of a run.
        c.execution_timeout_secs = 360;
        inputs(&c).unwrap();
        c.execution_timeout_secs = 359;
        let err = inputs(&c).unwrap_err();
        assert!(
            matches!(
                err,
                Rejection::SwitchBudget {
                    need: 360,
                    have: 359,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("drain_timeout_secs"), "{err}");
        // recreate sends the strategy and empty proxy inputs.
        let plain = verified(DeploySettings::default());
        let i = HostInputs {
            config: &config(),
            request: &r,
            metadata: &m,
            verified: &plain,
            purpose: Purpose::Deploy,
            order_stamp: "6923A0B0",
        };
        let vars = host_vars(&i).unwrap();
        for (var, value) in vars {
            match var {
                HostVar::Strategy => assert_eq!(value, "recreate"),
                HostVar::ProxyService
                | HostVar::ProxyPort
                | HostVar::ProxyListen
                | HostVar::ProxyHealthPath
                | HostVar::ProxyDrainTimeout
                | HostVar::ProxyImage => assert_eq!(value, "", "{var:?}"),
                _ => {}
            }
        }
    }

    #[test]
    fn host_vars_cover_every_input_from_the_right_source() {
        let c = config();
        let r = request("v.1", Some("0A"));
        let m = meta();
        let deploy = DeploySettings {
            profiles: vec!["web".into(), "worker".into()],
            health_url: Some("http://127.0.0.1:8000/health".into()),
            required_env: vec!["DB_URL".into()],
            ..DeploySettings::default()
        };
        let v = verified(deploy);
        let inputs = HostInputs {
            config: &c,
            request: &r,
            metadata: &m,
            verified: &v,
            purpose: Purpose::Deploy,
            order_stamp: "6923A0B0",
        };
        let vars = host_vars(&inputs).unwrap();
        assert_eq!(
            vars.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
            HostVar::ALL.to_vec()
        );
        let get = |h: HostVar| vars.iter().find(|(v, _)| *v == h).unwrap().1.clone();
        assert_eq!(get(HostVar::AppRoot), "/opt/dropship/shop");
        assert_eq!(get(HostVar::VersionId), "v.1");
        // The S3-derived stamp, not the event's sequencer ("0A" in this request).
        assert_eq!(get(HostVar::Sequencer), "6923A0B0");
        assert_eq!(get(HostVar::Profiles), "web,worker");
        assert_eq!(get(HostVar::SharedPaths), ".env");
        assert_eq!(get(HostVar::BundleBytes), "1234");
        assert_eq!(get(HostVar::UnpackedBytes), "10");
        assert_eq!(get(HostVar::Commit), m.commit);
        assert_eq!(get(HostVar::LockTimeout), "300");
        assert_eq!(get(HostVar::Region), "eu-west-1");
        assert_eq!(
            get(HostVar::S3Endpoint),
            "https://s3.eu-west-1.amazonaws.com"
        );
        // A direct invocation carries no sequencer; the host still gets the S3 stamp.
        let direct = request("v.1", None);
        let inputs = HostInputs {
            request: &direct,
            ..inputs
        };
        let vars = host_vars(&inputs).unwrap();
        let stamp = vars.iter().find(|(v, _)| *v == HostVar::Sequencer).unwrap();
        assert_eq!(stamp.1, "6923A0B0");
        // A value with a parameter reference never reaches SSM.
        let hostile = DeploySettings {
            health_url: Some("http://127.0.0.1/{{ssm:secret}}".into()),
            ..DeploySettings::default()
        };
        let v2 = verified(hostile);
        let inputs = HostInputs {
            verified: &v2,
            ..inputs
        };
        assert!(matches!(
            host_vars(&inputs),
            Err(Rejection::ParameterReference {
                name: "DROPSHIP_HEALTH_URL"
            })
        ));
        let inputs = HostInputs {
            request: &direct,
            verified: &v,
            ..inputs
        };
        let plan = plan_command(
            &inputs,
            &(0..120).map(|i| format!("i-{i:017x}")).collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(
            plan.batches.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![50, 50, 20]
        );
        assert!(plan.script.starts_with(COMMAND_PREAMBLE));
        assert!(plan.script.ends_with(packed_host_script()));
        assert!(plan
            .script
            .contains("export DROPSHIP_S3_ENDPOINT='https://s3.eu-west-1.amazonaws.com'\n"));
        // Nothing in the command grants access: no signature, credential or token.
        for secret in [
            "X-Amz-Signature",
            "X-Amz-Credential",
            "X-Amz-Security-Token",
        ] {
            assert!(!plan.script.contains(secret), "{secret}");
        }
        assert!(script_is_for_version(&plan.script, "v.1"));
        assert!(!script_is_for_version(&plan.script, "v.2"));
        assert_eq!(plan.document_name, "dropship-deploy-production");
        assert_eq!(
            (plan.max_concurrency.as_str(), plan.max_errors.as_str()),
            ("50%", "0")
        );
        assert_eq!(
            (plan.timeout_seconds, plan.execution_timeout.as_str()),
            (600, "1800")
        );
    }

    /// The command rendered from the largest inputs the contract allows fits SSM's limit, with
    /// the host script as it is today. Bounded by the contract: names (63), commit (64 hex),
    /// S3 version ids (1,024), paths (255), the health URL (2,048), the S3 endpoint (255) and
    /// the region (32). The list settings have no
    /// bound in the contract: 20 entries of 64 characters each are reserved for each of them;
    /// beyond what fits, the Lambda refuses with `CommandTooLarge` (tested below).
    #[test]
    fn the_largest_allowed_inputs_fit_the_ssm_command_limit() {
        let c = Config::from_lookup(|k| match k {
            "DROPSHIP_ALLOWED_BUCKETS" => Some("rel-bucket".to_owned()),
            "DROPSHIP_INSTANCE_PROFILE_ARN" => Some(
                "arn:aws:iam::111122223333:instance-profile/dropship-host-{app}.{env}".to_owned(),
            ),
            "DROPSHIP_COMMAND_DOCUMENT" => Some("dropship-deploy-production".to_owned()),
            "DROPSHIP_APP_ROOT" => Some(format!("/{}/{{app}}/{{env}}", "r".repeat(120))),
            "AWS_REGION" => Some(format!("us-{}-1", "w".repeat(MAX_REGION_LEN - 5))),
            _ => None,
        })
        .unwrap();
        // The command budget reserves the contract's longest endpoint, although the
        // configuration accepts only the region's own one or a loopback emulator.
        let mut c = c;
        c.s3_endpoint = format!("https://{}.com", "e".repeat(MAX_S3_ENDPOINT_LEN - 12));
        c.execution_timeout_secs = 172_800;
        let name = "a".repeat(63);
        let version = "V".repeat(1024);
        let payload = json!({"bucket": "rel-bucket", "key": format!("releases/{name}/{name}.tar.gz"), "version_id": version});
        let r = match parse(&payload, &c).unwrap() {
            Request::Deploy(d) => d,
            other => panic!("not a deploy: {other:?}"),
        };
        let m = ObjectMetadata {
            app: name.clone(),
            env: name.clone(),
            commit: "f".repeat(64),
            ..meta()
        };
        let deploy = DeploySettings::largest_allowed();
        deploy.validate().expect("these settings are allowed");
        let v = verified(deploy);
        assert_eq!(c.region.len(), MAX_REGION_LEN);
        assert_eq!(c.s3_endpoint.len(), MAX_S3_ENDPOINT_LEN);
        let inputs = HostInputs {
            config: &c,
            request: &r,
            metadata: &m,
            verified: &v,
            purpose: Purpose::Deploy,
            order_stamp: "6923A0B0",
        };
        let plan = plan_command(&inputs, &["i-1".into()]).expect("the largest inputs render");
        assert!(
            plan.script.len() <= MAX_COMMAND_BYTES,
            "{} bytes",
            plan.script.len()
        );
        let sent_script = packed_host_script().len();
        let header = plan.script.len() - sent_script;
        eprintln!(
            "largest command: {} bytes (header {header}, host script {sent_script} as sent, {} compacted), limit {MAX_COMMAND_BYTES}",
            plan.script.len(),
            dropship_contract::host::compact_script(HOST_SCRIPT).len(),
        );
    }

    #[test]
    fn oversized_commands_and_bad_values_are_refused() {
        let c = config();
        let r = request("v1", Some("0A"));
        let m = meta();
        let with_health_url = |url: String| {
            verified(DeploySettings {
                health_url: Some(url),
                ..DeploySettings::default()
            })
        };
        // Values past their bounds never get this far (the settings are validated first); the
        // size guard still stands behind them.
        let v = with_health_url("https://x/".to_owned() + &"a".repeat(MAX_COMMAND_BYTES));
        let inputs = HostInputs {
            config: &c,
            request: &r,
            metadata: &m,
            verified: &v,
            purpose: Purpose::Deploy,
            order_stamp: "6923A0B0",
        };
        let err = plan_command(&inputs, &["i-1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("health_url"), "{err}");
        let err =
            render_command(&[(HostVar::HealthUrl, "a".repeat(MAX_COMMAND_BYTES))]).unwrap_err();
        assert!(matches!(err, Rejection::CommandTooLarge { .. }), "{err}");
        assert!(err.to_string().contains("SSM limit"));
        let v = with_health_url("https://x/\0".to_owned());
        let inputs = HostInputs {
            verified: &v,
            ..inputs
        };
        let err = plan_command(&inputs, &["i-1".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("health_url") && err.contains("control characters"),
            "{err}"
        );
        // And the encoder behind it refuses a NUL by the variable's name.
        let err = render_command(&[(HostVar::HealthUrl, "https://x/\0".into())])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("NUL") && err.contains("DROPSHIP_HEALTH_URL"),
            "{err}"
        );
    }

    #[test]
    fn comment_names_app_env_commit_and_version_within_100_chars() {
        let r = request("3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY", Some("0A"));
        let c = comment(&r, &meta().commit);
        assert_eq!(
            c,
            "dropship shop/prod 0123456789ab v=3HL4kqtJlcpXroDTDmJ.rmSpXd3dIbrHY"
        );
        let long = request(&"v".repeat(200), Some("0A"));
        assert_eq!(
            comment(&long, &meta().commit).chars().count(),
            MAX_COMMENT_CHARS
        );
    }

    #[test]
    fn remaining_targets_skip_instances_already_sent_to() {
        let mut r = record("v1", Outcome::Dispatching, None);
        r.commands.push(CommandBatch {
            command_id: "c".into(),
            instance_ids: vec!["i-1".into()],
            purpose: Purpose::Deploy,
        });
        let all = vec!["i-1".to_owned(), "i-2".to_owned()];
        assert_eq!(remaining_targets(&all, &r), vec!["i-2".to_owned()]);
    }

    /// Source `header` with real bash and print each input NUL-terminated.
    fn bash_values(header: &str, dir: &std::path::Path) -> Vec<String> {
        let mut script = header.to_owned();
        script.push_str("printf '%s\\0'");
        for v in HostVar::ALL {
            script.push_str(&format!(" \"${}\"", v.name()));
        }
        script.push('\n');
        // From a file: one argument of `bash -c` may hold 128 KiB only, and 26 hostile values
        // of up to 8 KiB, quoted, can exceed that.
        let file = dir.join("header.sh");
        std::fs::write(&file, &script).expect("write the header");
        let out = Command::new("bash")
            .args(["--noprofile", "--norc"])
            .arg(&file)
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LC_ALL", "C.UTF-8")
            .output()
            .expect("bash is needed for the header tests");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "bash wrote to stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut v: Vec<String> = out
            .stdout
            .split(|b| *b == 0)
            .map(|s| String::from_utf8(s.to_vec()).unwrap())
            .collect();
        assert_eq!(v.pop().as_deref(), Some(""));
        v
    }

    fn hostile() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("'".to_owned()),
            Just("\"".to_owned()),
            Just("$(touch pwned)".to_owned()),
            Just("`touch pwned`".to_owned()),
            Just("${HOME}".to_owned()),
            Just("'; touch pwned; '".to_owned()),
            Just("\n".to_owned()),
            Just("\\".to_owned()),
            Just("*".to_owned()),
            any::<String>().prop_map(|s| s.replace('\0', "")),
        ];
        prop_oneof![
            4 => proptest::collection::vec(piece.clone(), 0..16).prop_map(|v| v.concat()),
            1 => proptest::collection::vec(piece, 1..6).prop_map(|v| {
                let unit = v.concat() + "x";
                unit.repeat(8 * 1024 / unit.len() + 1)
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// The header the Lambda sends, sourced by real bash, yields exactly the original
        /// values for every input and executes nothing.
        #[test]
        fn rendered_header_round_trips_through_bash(values in proptest::collection::vec(hostile(), HostVar::ALL.len())) {
            let vars: Vec<(HostVar, String)> = HostVar::ALL.iter().copied().zip(values.iter().cloned()).collect();
            let header = render_header(&vars).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let got = bash_values(&header, dir.path());
            prop_assert_eq!(&got, &values);
            prop_assert!(!dir.path().join("pwned").exists(), "header executed a command");
        }
    }

    #[test]
    fn the_preamble_reexecutes_under_bash_from_sh() {
        let dir = tempfile::tempdir().unwrap();
        let vars: Vec<(HostVar, String)> = HostVar::ALL
            .iter()
            .map(|v| (*v, "it's $(x)".to_owned()))
            .collect();
        let file = dir.path().join("_script.sh");
        let header = render_header(&vars).unwrap();
        std::fs::write(
            &file,
            format!("{header}printf '%s|%s' \"$BASH_VERSION\" \"$DROPSHIP_APP\"\n"),
        )
        .unwrap();
        let out = Command::new("sh").arg(&file).output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let (bash_version, app) = text.split_once('|').unwrap();
        assert!(
            !bash_version.is_empty(),
            "not re-executed under bash: {text:?}"
        );
        assert_eq!(app, "it's $(x)");
    }
}
