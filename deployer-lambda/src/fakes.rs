//! In-memory fakes of the handler's edges, for unit tests of the paths an emulator cannot
//! stage on demand: two invocations racing for one claim, a takeover after a crash, a claim
//! lost mid-dispatch, and pointer writes that conflict.
//!
//! The record store keeps S3's conditional-write semantics (`If-None-Match: *`, `If-Match`
//! on an ETag that changes with every write); "another invocation" is a [`Interference`]
//! that writes first, just before a chosen put of ours.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use dropship_aws::AwsError;
use dropship_contract::fleet::{Invocation, Observed, OnFailure};
use dropship_contract::manifest::{DeploySettings, Manifest, MANIFEST_FORMAT};
use dropship_contract::metadata::{ObjectMetadata, Source};
use dropship_contract::record::CommandBatch;
use dropship_contract::verify::{ExpectedBundle, VerifiedBundle, VerifyLimits};
use time::OffsetDateTime;

use crate::edges::TaggedInstance;
use crate::edges::{
    CommandSender, Condition, Head, InstanceFinder, Notifier, ObjectReader, RecordStore,
    Verification, Written,
};
use crate::plan::CommandPlan;

/// Another writer: before our `nth` put (0-based) to `key`, it replaces the object with
/// `body` (a fresh ETag), as a concurrent invocation would.
pub struct Interference {
    pub key: String,
    pub nth: usize,
    pub body: Vec<u8>,
}

/// What the fake AWS holds and what it was asked.
#[derive(Default)]
pub struct FakeAws {
    /// Objects by key: bytes and ETag.
    pub objects: Mutex<HashMap<String, (Vec<u8>, String)>>,
    /// Puts seen per key (to place interferences).
    puts: Mutex<HashMap<String, usize>>,
    etags: Mutex<u64>,
    pub interferences: Mutex<Vec<Interference>>,
    /// The release version's metadata headers.
    pub metadata: HashMap<String, String>,
    /// Running tagged instances.
    pub instances: Mutex<Vec<String>>,
    /// Commands an earlier attempt sent: (batch, script, comment).
    pub earlier: Vec<(CommandBatch, String, String)>,
    /// Commands sent by the handler: (batch, script).
    pub sent: Mutex<Vec<(CommandBatch, String)>>,
    /// Tagged instances SSM does not report online.
    pub offline: Mutex<Vec<String>>,
    /// What `GetCommandInvocation` answers per (command id, instance id).
    pub invocations: Mutex<HashMap<(String, String), Invocation>>,
    /// Events put on the bus: (detail-type, detail).
    pub events: Mutex<Vec<(String, String)>>,
    /// The bundle manifest's `on_failure`.
    pub on_failure: OnFailure,
    /// The key's current version (`with_instances` makes it the handler tests' `v2`).
    pub current: Mutex<Option<String>>,
    /// Set: a check during verification finds this current version (a newer upload), and
    /// the verification stops early.
    pub superseded_while_verifying: Mutex<Option<Option<String>>>,
    /// Instance profile ARN per instance; an instance not listed carries its app/env's
    /// profile as [`TEST_PROFILE_TEMPLATE`] names it ("" here: no profile at all).
    pub profiles: Mutex<HashMap<String, String>>,
}

/// The instance-profile template the unit tests' configurations name.
pub const TEST_PROFILE_TEMPLATE: &str =
    "arn:aws:iam::111122223333:instance-profile/dropship-host-{app}.{env}";

/// The commit of the fake release.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Valid metadata of `shop/prod`, as the bundler writes it.
pub fn metadata() -> ObjectMetadata {
    ObjectMetadata {
        app: "shop".into(),
        env: "prod".into(),
        branch: "main".into(),
        commit: COMMIT.into(),
        dirty: false,
        sha256: "a".repeat(64),
        created: "2026-11-23T09:00:00Z".into(),
        uploader: "ci".into(),
        source: Source::Ci,
        message: "m".into(),
        restored_from: None,
        promoted_from: None,
    }
}

impl FakeAws {
    /// A release of `shop/prod` whose bundle verifies, and these running instances.
    pub fn with_instances(instances: &[&str]) -> Self {
        Self {
            metadata: metadata()
                .to_headers()
                .expect("valid metadata")
                .into_iter()
                .collect(),
            instances: Mutex::new(instances.iter().map(|s| s.to_string()).collect()),
            current: Mutex::new(Some("v2".into())),
            ..Self::default()
        }
    }

    fn next_etag(&self) -> String {
        let mut n = self.etags.lock().unwrap();
        *n += 1;
        format!("\"etag-{n}\"")
    }

    /// Stores `body` at `key` as if someone else wrote it.
    pub fn preload(&self, key: &str, body: Vec<u8>) {
        let etag = self.next_etag();
        self.objects
            .lock()
            .unwrap()
            .insert(key.to_owned(), (body, etag));
    }

    /// The object at `key`.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        self.objects
            .lock()
            .unwrap()
            .get(key)
            .map(|(b, _)| b.clone())
    }

    /// The instance ids every sent command reached, in order.
    pub fn sent_to(&self) -> Vec<String> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .flat_map(|(b, _)| b.instance_ids.clone())
            .collect()
    }
}

impl RecordStore for FakeAws {
    async fn get(&self, _bucket: &str, key: &str) -> Result<Option<(Vec<u8>, String)>, AwsError> {
        Ok(self.objects.lock().unwrap().get(key).cloned())
    }

    async fn list(&self, _bucket: &str, prefix: &str) -> Result<Vec<String>, AwsError> {
        let mut keys: Vec<String> = self
            .objects
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn put(
        &self,
        _bucket: &str,
        key: &str,
        body: Vec<u8>,
        condition: Condition<'_>,
    ) -> Result<Written, AwsError> {
        let nth = {
            let mut puts = self.puts.lock().unwrap();
            let n = puts.entry(key.to_owned()).or_insert(0);
            *n += 1;
            *n - 1
        };
        let interfering = {
            let mut all = self.interferences.lock().unwrap();
            all.iter()
                .position(|i| i.key == key && i.nth == nth)
                .map(|at| all.remove(at))
        };
        if let Some(other) = interfering {
            self.preload(key, other.body);
        }
        let etag = self.next_etag();
        let mut objects = self.objects.lock().unwrap();
        let current = objects.get(key).map(|(_, e)| e.as_str());
        let allowed = match condition {
            Condition::Absent => current.is_none(),
            Condition::Matches(want) => current == Some(want),
        };
        if !allowed {
            return Ok(Written::Conflict);
        }
        objects.insert(key.to_owned(), (body, etag.clone()));
        Ok(Written::Ok(etag))
    }
}

impl ObjectReader for FakeAws {
    async fn head_version(
        &self,
        _bucket: &str,
        _key: &str,
        _version_id: &str,
    ) -> Result<Head, AwsError> {
        Ok(Head::Found {
            metadata: self.metadata.clone(),
            size: 1234,
            last_modified: 1_764_400_000,
        })
    }

    async fn current_version(&self, _bucket: &str, _key: &str) -> Result<Option<String>, AwsError> {
        Ok(self.current.lock().unwrap().clone())
    }

    async fn verify_version(
        &self,
        _bucket: &str,
        _key: &str,
        _version_id: &str,
        expected: ExpectedBundle,
        _limits: VerifyLimits,
    ) -> Result<Verification, AwsError> {
        if let Some(current) = self.superseded_while_verifying.lock().unwrap().clone() {
            return Ok(Verification::Superseded {
                current,
                read_bytes: 1 << 20,
                checks: 1,
            });
        }
        Ok(Verification::Done(Ok(VerifiedBundle {
            manifest: Manifest {
                format: MANIFEST_FORMAT,
                app: expected.app,
                branch: expected.branch,
                commit: expected.commit,
                commit_time: 1,
                dirty: expected.dirty,
                message: "m".into(),
                files: 2,
                bytes: 10,
                deploy: DeploySettings {
                    on_failure: self.on_failure,
                    ..DeploySettings::default()
                },
                overrides: Default::default(),
                legacy_env: None,
            },
            sha256: expected.sha256,
            object_bytes: 1234,
            entries: 2,
            unpacked_bytes: 10,
            millis: 1,
        })))
    }
}

impl InstanceFinder for FakeAws {
    async fn running_instances(
        &self,
        app_tag: (&str, &str),
        env_tag: (&str, &str),
    ) -> Result<Vec<TaggedInstance>, AwsError> {
        let profiles = self.profiles.lock().unwrap();
        let own = TEST_PROFILE_TEMPLATE
            .replace("{app}", app_tag.1)
            .replace("{env}", env_tag.1);
        Ok(self
            .instances
            .lock()
            .unwrap()
            .iter()
            .map(|id| TaggedInstance {
                id: id.clone(),
                profile_arn: match profiles.get(id) {
                    None => Some(own.clone()),
                    Some(p) if p.is_empty() => None,
                    Some(p) => Some(p.clone()),
                },
            })
            .collect())
    }

    async fn instance_tags(
        &self,
        instance_id: &str,
        _app_tag_key: &str,
        _env_tag_key: &str,
    ) -> Result<Option<(String, String)>, AwsError> {
        Ok(self
            .instances
            .lock()
            .unwrap()
            .iter()
            .any(|i| i == instance_id)
            .then(|| ("shop".to_owned(), "prod".to_owned())))
    }

    async fn online_instances(
        &self,
        instance_ids: &[String],
    ) -> Result<BTreeSet<String>, AwsError> {
        Ok(instance_ids
            .iter()
            .filter(|i| !self.offline.lock().unwrap().contains(i))
            .cloned()
            .collect())
    }
}

impl CommandSender for FakeAws {
    async fn send_command(
        &self,
        plan: &CommandPlan,
        batch: &[String],
    ) -> Result<CommandBatch, AwsError> {
        let mut sent = self.sent.lock().unwrap();
        let command = CommandBatch {
            command_id: format!("cmd-{}", sent.len() + 1),
            instance_ids: batch.to_vec(),
            purpose: plan.purpose,
        };
        sent.push((command.clone(), plan.script.clone()));
        Ok(command)
    }

    async fn commands_since(
        &self,
        _since: OffsetDateTime,
        comment: &str,
    ) -> Result<Vec<(CommandBatch, String)>, AwsError> {
        Ok(self
            .earlier
            .iter()
            .filter(|(_, _, c)| c == comment)
            .map(|(b, s, _)| (b.clone(), s.clone()))
            .collect())
    }

    async fn invocation(&self, command_id: &str, instance_id: &str) -> Result<Observed, AwsError> {
        Ok(self
            .invocations
            .lock()
            .unwrap()
            .get(&(command_id.to_owned(), instance_id.to_owned()))
            .cloned()
            .map(Observed::Found)
            .unwrap_or(Observed::NotYet {
                code: "InvocationDoesNotExist".into(),
            }))
    }
}

impl Notifier for FakeAws {
    async fn put_event(&self, detail_type: &str, detail: String) -> Result<(), AwsError> {
        self.events
            .lock()
            .unwrap()
            .push((detail_type.to_owned(), detail));
        Ok(())
    }
}
