//! Following a deploy: read the deploy record of a version until the deployer settled it,
//! then read every host's invocation until each is final (or the deadline passes). Used by
//! `status` (one pass) and by `--wait` on upload and restore (polling).

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use dropship_contract::fleet::StoredResult;
use dropship_contract::record::DeployRecord;
use serde::Serialize;

use crate::exit::Exit;
use crate::status::{self, DeployStatus, Observed, Verdict};
use crate::OpsError;

/// Where the facts come from: AWS in the binaries ([`crate::facts::Clients`]), a script in
/// tests.
pub trait DeployFacts {
    /// The deploy record of `version_id`, if written.
    fn record(
        &self,
        version_id: &str,
    ) -> impl Future<Output = Result<Option<DeployRecord>, OpsError>> + Send;
    /// What SSM says about one host of one command.
    fn invocation(
        &self,
        command_id: &str,
        instance_id: &str,
    ) -> impl Future<Output = Result<Observed, OpsError>> + Send;
    /// The per-host results the deployer stored for `version_id`.
    fn results(
        &self,
        version_id: &str,
    ) -> impl Future<Output = Result<Vec<StoredResult>, OpsError>> + Send;
}

/// Polling settings.
#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    /// Give up after this long.
    pub timeout: Duration,
    /// Pause between polls.
    pub poll: Duration,
}

/// What the caller may show while waiting.
#[derive(Debug)]
pub enum Progress<'a> {
    /// No settled deploy record yet.
    WaitingForRecord {
        /// Since the wait started.
        elapsed: Duration,
        /// `true` once a `dispatching` record exists.
        dispatching: bool,
    },
    /// Hosts are being followed.
    Hosts(&'a DeployStatus),
}

/// The end of a wait.
#[derive(Debug, Clone, Serialize)]
pub struct WaitReport {
    /// The last status seen.
    pub status: DeployStatus,
    /// The deadline passed before the deploy settled.
    pub timed_out: bool,
    /// Seconds spent waiting.
    pub waited_secs: f64,
}

impl WaitReport {
    /// The process exit code: the verdict's, or the timeout code.
    pub fn exit_code(&self) -> Exit {
        if self.timed_out {
            Exit::WaitTimeout
        } else {
            self.status.verdict.exit_code()
        }
    }
}

/// Reads every host of `record` once; pairs already final in `known` are not read again.
/// `not_yet_retries` extra reads (with `retry_pause` between) absorb SSM's short
/// "invocation does not exist yet" window.
pub async fn observe<F: DeployFacts>(
    facts: &F,
    record: &DeployRecord,
    known: &mut BTreeMap<(String, String), Observed>,
    stored: &[StoredResult],
    not_yet_retries: u32,
    retry_pause: Duration,
) -> Result<(), OpsError> {
    for (command, instance) in status::invocation_pairs(record) {
        let pair = (command.clone(), instance.clone());
        if stored
            .iter()
            .any(|r| r.host.command_id == command && r.host.instance_id == instance)
        {
            continue; // the deployer stored it: SSM need not be asked (and may have forgotten)
        }
        if let Some(obs) = known.get(&pair) {
            if status::host_status(&command, &instance, obs)
                .state
                .is_final()
            {
                continue;
            }
        }
        let mut obs = facts.invocation(&command, &instance).await?;
        let mut tries = 0;
        while matches!(obs, Observed::NotYet { .. }) && tries < not_yet_retries {
            tries += 1;
            tokio::time::sleep(retry_pause).await;
            obs = facts.invocation(&command, &instance).await?;
        }
        known.insert(pair, obs);
    }
    Ok(())
}

/// One pass for `status`: the record, then every host (with a brief retry for invocations
/// SSM has not registered yet).
pub async fn status_once<F: DeployFacts>(
    facts: &F,
    app: &str,
    env: &str,
    version_id: &str,
    retry_pause: Duration,
) -> Result<DeployStatus, OpsError> {
    let record = facts.record(version_id).await?;
    let mut known = BTreeMap::new();
    let mut results = Vec::new();
    if let Some(r) = &record {
        if r.fleet.is_some() {
            results = facts.results(version_id).await?;
        }
        observe(facts, r, &mut known, &results, 3, retry_pause).await?;
    }
    Ok(status::build(
        app,
        env,
        version_id,
        record.as_ref(),
        &known,
        &results,
    ))
}

/// Follows the deploy of `version_id` until it settles or `options.timeout` passes.
/// Transient AWS failures are retried until the deadline; others end the wait.
pub async fn follow<F: DeployFacts>(
    facts: &F,
    app: &str,
    env: &str,
    version_id: &str,
    options: WaitOptions,
    on_progress: &mut (dyn FnMut(Progress<'_>) + Send),
) -> Result<WaitReport, OpsError> {
    let started = Instant::now();
    let deadline = started + options.timeout;
    let mut known = BTreeMap::new();
    let mut record: Option<DeployRecord> = None;
    let mut results: Vec<StoredResult> = Vec::new();
    loop {
        let step = async {
            // A record with a rollout changes until its fleet is settled (waves, rollback).
            let unsettled = |r: &DeployRecord| {
                !r.outcome.is_final() || r.fleet.as_ref().is_some_and(|f| f.outcome.is_none())
            };
            if record.as_ref().is_none_or(unsettled) {
                record = facts.record(version_id).await?;
                if record.as_ref().is_some_and(|r| r.fleet.is_some()) {
                    results = facts.results(version_id).await?;
                }
            }
            if let Some(r) = record.as_ref().filter(|r| r.outcome.is_final()) {
                observe(facts, r, &mut known, &results, 0, Duration::ZERO).await?;
            }
            Ok::<_, OpsError>(())
        };
        match step.await {
            Ok(()) => {}
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                tracing::warn!(error = %e, "transient failure while following the deploy; retrying");
            }
            Err(e) => return Err(e),
        }
        let settled_record = record.as_ref().filter(|r| r.outcome.is_final());
        let current = status::build(app, env, version_id, settled_record, &known, &results);
        match settled_record {
            None => on_progress(Progress::WaitingForRecord {
                elapsed: started.elapsed(),
                dispatching: record.is_some(),
            }),
            Some(_) => on_progress(Progress::Hosts(&current)),
        }
        let timed_out = Instant::now() >= deadline;
        if current.verdict != Verdict::Pending || timed_out {
            return Ok(WaitReport {
                timed_out: current.verdict == Verdict::Pending,
                status: current,
                waited_secs: started.elapsed().as_secs_f64(),
            });
        }
        let pause = options
            .poll
            .min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
    }
}

/// Parses `--wait-timeout`: seconds, or a number with `s`, `m` or `h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = number.parse().map_err(|_| {
        format!(
            "{text:?} is not a duration: use seconds, or a number with s, m or h (e.g. 90, 15m)"
        )
    })?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => {
            return Err(format!(
                "{text:?} has unknown unit {unit:?}: use s, m or h (e.g. 90s, 15m, 1h)"
            ))
        }
    };
    if secs == 0 {
        return Err("the wait timeout must be greater than 0".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws_calls::GET_COMMAND_INVOCATION;
    use crate::status::{HostState, Invocation};
    use dropship_aws::{AwsError, Failure};
    use dropship_contract::fleet::{Fleet, FleetOutcome, OnFailure, Purpose};
    use dropship_contract::key::ReleaseKey;
    use dropship_contract::record::RECORD_FORMAT;
    use dropship_contract::record::{CommandBatch, EventFacts, Outcome, Trigger};
    use std::sync::Mutex;

    fn record(outcome: Outcome, hosts: &[&str]) -> DeployRecord {
        DeployRecord {
            targets: hosts.iter().map(|s| s.to_string()).collect(),
            commands: vec![CommandBatch {
                command_id: "c-1".into(),
                instance_ids: hosts.iter().map(|s| s.to_string()).collect(),
                purpose: Default::default(),
            }],
            attempts: 1,
            ..DeployRecord::new(
                "b",
                &ReleaseKey::new("shop", "prod").unwrap(),
                "v9",
                outcome,
                EventFacts::new(Trigger::Event),
                "2026-11-23T09:00:01Z",
            )
        }
    }

    fn inv(status: &str, details: &str, code: i32) -> Observed {
        Observed::Found(Invocation {
            command_id: "c-1".into(),
            instance_id: String::new(),
            status: status.into(),
            status_details: details.into(),
            response_code: code,
            standard_output_content: String::new(),
            standard_error_content: String::new(),
            comment: String::new(),
        })
    }

    /// Scripted facts: records in order (last repeats), invocations per host in order.
    struct Script {
        records: Mutex<Vec<Option<DeployRecord>>>,
        /// `Err(text)` is a transient network failure.
        hosts: Mutex<BTreeMap<String, Vec<Result<Observed, &'static str>>>>,
        calls: Mutex<Vec<String>>,
        /// Stored results per read (last repeats).
        stored: Mutex<Vec<Vec<StoredResult>>>,
    }

    impl Script {
        fn new(
            records: Vec<Option<DeployRecord>>,
            hosts: Vec<(&str, Vec<Result<Observed, &'static str>>)>,
        ) -> Self {
            Self {
                records: Mutex::new(records),
                hosts: Mutex::new(hosts.into_iter().map(|(h, v)| (h.to_string(), v)).collect()),
                calls: Mutex::new(Vec::new()),
                stored: Mutex::new(vec![Vec::new()]),
            }
        }
    }

    fn pop<T: Clone>(list: &mut Vec<T>) -> T {
        if list.len() > 1 {
            list.remove(0)
        } else {
            list[0].clone()
        }
    }

    impl DeployFacts for Script {
        async fn results(&self, _version_id: &str) -> Result<Vec<StoredResult>, OpsError> {
            self.calls.lock().unwrap().push("results".into());
            Ok(pop(&mut self.stored.lock().unwrap()))
        }

        async fn record(&self, _version_id: &str) -> Result<Option<DeployRecord>, OpsError> {
            self.calls.lock().unwrap().push("record".into());
            Ok(pop(&mut self.records.lock().unwrap()))
        }

        async fn invocation(
            &self,
            _command_id: &str,
            instance_id: &str,
        ) -> Result<Observed, OpsError> {
            self.calls.lock().unwrap().push(instance_id.to_string());
            let mut hosts = self.hosts.lock().unwrap();
            pop(hosts.get_mut(instance_id).expect("scripted host")).map_err(|detail| {
                OpsError::Aws(AwsError::new(
                    &GET_COMMAND_INVOCATION,
                    instance_id,
                    Failure::Network,
                    detail.into(),
                ))
            })
        }
    }

    fn fast(timeout_ms: u64) -> WaitOptions {
        WaitOptions {
            timeout: Duration::from_millis(timeout_ms),
            poll: Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn follows_record_then_hosts_to_a_final_result() {
        let dispatched = record(Outcome::Dispatched, &["i-1", "i-2"]);
        let facts = Script::new(
            vec![
                None,
                Some(record(Outcome::Dispatching, &[])),
                Some(dispatched),
            ],
            vec![
                (
                    "i-1",
                    vec![
                        Ok(Observed::NotYet {
                            code: "InvocationDoesNotExist".into(),
                        }),
                        Ok(inv("InProgress", "In Progress", -1)),
                        Ok(inv("Success", "Success", 0)),
                    ],
                ),
                (
                    "i-2",
                    vec![
                        Ok(inv("Pending", "Pending", -1)),
                        Ok(inv("Failed", "Failed", 9)),
                    ],
                ),
            ],
        );
        let mut seen = Vec::new();
        let report = follow(&facts, "shop", "prod", "v9", fast(5_000), &mut |p| {
            seen.push(match p {
                Progress::WaitingForRecord { dispatching, .. } => format!("record:{dispatching}"),
                Progress::Hosts(s) => format!("hosts:{}", status::counts_line(&s.hosts)),
            })
        })
        .await
        .unwrap();
        assert!(!report.timed_out);
        assert_eq!(report.status.verdict, Verdict::RolledBack);
        assert_eq!(report.exit_code(), Exit::RolledBack);
        assert_eq!(report.status.hosts[0].state, HostState::Success);
        assert_eq!(report.status.hosts[1].state, HostState::RolledBack);
        assert_eq!(seen[0], "record:false");
        assert_eq!(seen[1], "record:true");
        assert!(seen.last().unwrap().starts_with("hosts:"), "{seen:?}");
        // Final hosts are not read again: i-2 was final after its 2nd read.
        let calls = facts.calls.lock().unwrap();
        assert_eq!(calls.iter().filter(|c| *c == "i-2").count(), 2, "{calls:?}");
        assert_eq!(calls.iter().filter(|c| *c == "i-1").count(), 3, "{calls:?}");
    }

    /// A stored result, as the deployer writes it.
    fn stored(
        instance: &str,
        command: &str,
        purpose: Purpose,
        details: &str,
        code: i32,
    ) -> StoredResult {
        let mut i = match inv(if code == 0 { "Success" } else { "Failed" }, details, code) {
            Observed::Found(i) => i,
            _ => unreachable!(),
        };
        i.command_id = command.into();
        i.instance_id = instance.into();
        StoredResult {
            format: RECORD_FORMAT,
            app: "shop".into(),
            env: "prod".into(),
            version_id: "v9".into(),
            purpose,
            host: status::host_status(command, instance, &Observed::Found(i)),
            stored_at: "2026-11-23T09:01:00Z".into(),
        }
    }

    #[tokio::test]
    async fn a_rollout_is_followed_through_stored_results_to_the_fleet_outcome() {
        // Two hosts in two waves: the record changes as waves go out and the fleet settles;
        // SSM has forgotten every command (the stored results are the only truth).
        let mut wave1 = record(Outcome::Dispatched, &["i-1"]);
        wave1.fleet = Some(Fleet {
            sent: 1,
            ..Fleet::new(
                OnFailure::RollbackFleet,
                &["i-1".into(), "i-2".into()],
                &[],
                1,
            )
        });
        let mut wave2 = wave1.clone();
        wave2.commands.push(CommandBatch {
            command_id: "c-2".into(),
            instance_ids: vec!["i-2".into()],
            purpose: Purpose::Deploy,
        });
        wave2.fleet.as_mut().unwrap().sent = 2;
        let mut settled = wave2.clone();
        settled.fleet.as_mut().unwrap().outcome = Some(FleetOutcome::Deployed);
        let facts = Script::new(
            vec![Some(wave1), Some(wave2), Some(settled)],
            vec![
                (
                    "i-1",
                    vec![Ok(Observed::Gone {
                        code: "InvalidCommandId".into(),
                    })],
                ),
                (
                    "i-2",
                    vec![Ok(Observed::Gone {
                        code: "InvalidCommandId".into(),
                    })],
                ),
            ],
        );
        *facts.stored.lock().unwrap() = vec![
            vec![],
            vec![stored("i-1", "c-1", Purpose::Deploy, "Success", 0)],
            vec![
                stored("i-1", "c-1", Purpose::Deploy, "Success", 0),
                stored("i-2", "c-2", Purpose::Deploy, "Success", 0),
            ],
        ];
        let report = follow(&facts, "shop", "prod", "v9", fast(5_000), &mut |_| {})
            .await
            .unwrap();
        assert_eq!(report.status.verdict, Verdict::Succeeded, "{report:?}");
        assert_eq!(report.exit_code(), Exit::Success);
        let states: Vec<HostState> = report.status.hosts.iter().map(|h| h.state).collect();
        assert_eq!(states, [HostState::Success, HostState::Success]);
        assert_eq!(
            report.status.fleet.as_ref().unwrap().outcome,
            Some(FleetOutcome::Deployed)
        );
    }

    #[tokio::test]
    async fn a_fleet_rolled_back_waits_to_exit_8_and_shows_hosts_sent_back_and_never_sent() {
        let mut r = record(Outcome::Dispatched, &["i-1"]);
        r.commands.push(CommandBatch {
            command_id: "c-2".into(),
            instance_ids: vec!["i-2".into()],
            purpose: Purpose::Deploy,
        });
        r.commands.push(CommandBatch {
            command_id: "c-3".into(),
            instance_ids: vec!["i-1".into()],
            purpose: Purpose::Rollback,
        });
        r.fleet = Some(Fleet {
            sent: 2,
            rollback: Some(vec!["i-1".into()]),
            outcome: Some(FleetOutcome::RolledBack),
            reason: Some("i-2 rolled_back".into()),
            ..Fleet::new(
                OnFailure::RollbackFleet,
                &["i-1".into(), "i-2".into(), "i-3".into()],
                &[],
                1,
            )
        });
        let facts = Script::new(vec![Some(r)], vec![]);
        *facts.stored.lock().unwrap() = vec![vec![
            stored("i-1", "c-1", Purpose::Deploy, "Success", 0),
            stored("i-2", "c-2", Purpose::Deploy, "Failed", 9),
            stored("i-1", "c-3", Purpose::Rollback, "Success", 0),
        ]];
        let report = follow(&facts, "shop", "prod", "v9", fast(5_000), &mut |_| {})
            .await
            .unwrap();
        assert_eq!(report.exit_code(), Exit::RolledBack);
        let states: Vec<HostState> = report.status.hosts.iter().map(|h| h.state).collect();
        assert_eq!(
            states,
            [
                HostState::Success,
                HostState::RolledBack,
                HostState::NotSent
            ]
        );
        let f = report.status.fleet.as_ref().unwrap();
        assert_eq!(f.rollback.len(), 1);
        assert_eq!(f.rollback[0].state, HostState::Success);
        let text = report.status.render();
        assert!(
            text.contains("fleet: rolled_back — i-2 rolled_back"),
            "{text}"
        );
        assert!(text.contains("SENT BACK"), "{text}");
        assert!(text.contains("never sent"), "{text}");
        // Everything came from the stored results: SSM was never asked.
        assert!(!facts
            .calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.starts_with("i-")));
    }

    #[tokio::test]
    async fn a_refused_version_ends_the_wait_without_reading_ssm() {
        let mut rejected = record(Outcome::Rejected, &[]);
        rejected.commands.clear();
        let facts = Script::new(vec![Some(rejected)], vec![]);
        let report = follow(&facts, "shop", "prod", "v9", fast(5_000), &mut |_| {})
            .await
            .unwrap();
        assert_eq!(report.status.verdict, Verdict::Refused);
        assert_eq!(report.exit_code(), Exit::DeployRefused);
        assert_eq!(*facts.calls.lock().unwrap(), ["record"]);
    }

    #[tokio::test]
    async fn the_deadline_ends_the_wait_with_the_timeout_code() {
        let facts = Script::new(vec![None], vec![]);
        let report = follow(&facts, "shop", "prod", "v9", fast(30), &mut |_| {})
            .await
            .unwrap();
        assert!(report.timed_out);
        assert_eq!(report.exit_code(), Exit::WaitTimeout);
        let running = Script::new(
            vec![Some(record(Outcome::Dispatched, &["i-1"]))],
            vec![("i-1", vec![Ok(inv("InProgress", "In Progress", -1))])],
        );
        let report = follow(&running, "shop", "prod", "v9", fast(30), &mut |_| {})
            .await
            .unwrap();
        assert!(report.timed_out);
        assert_eq!(report.status.hosts[0].state, HostState::InProgress);
        assert_eq!(report.exit_code().code(), 11);
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_the_deadline() {
        let net = || Err("connection reset");
        let facts = Script::new(
            vec![Some(record(Outcome::Dispatched, &["i-1"]))],
            vec![("i-1", vec![net(), net(), Ok(inv("Success", "Success", 0))])],
        );
        let report = follow(&facts, "shop", "prod", "v9", fast(5_000), &mut |_| {})
            .await
            .unwrap();
        assert_eq!(report.exit_code(), Exit::Success);
    }

    #[tokio::test]
    async fn status_once_retries_briefly_then_reports_dispatched() {
        let facts = Script::new(
            vec![Some(record(Outcome::Dispatched, &["i-1", "i-2"]))],
            vec![
                (
                    "i-1",
                    vec![Ok(Observed::NotYet {
                        code: "InvocationDoesNotExist".into(),
                    })],
                ),
                (
                    "i-2",
                    vec![
                        Ok(Observed::NotYet {
                            code: "InvocationDoesNotExist".into(),
                        }),
                        Ok(inv("Success", "Success", 0)),
                    ],
                ),
            ],
        );
        let s = status_once(&facts, "shop", "prod", "v9", Duration::from_millis(1))
            .await
            .unwrap();
        assert_eq!(s.hosts[0].state, HostState::Dispatched);
        assert_eq!(s.hosts[1].state, HostState::Success);
        assert_eq!(s.verdict, Verdict::Pending);
        let calls = facts.calls.lock().unwrap();
        assert_eq!(
            calls.iter().filter(|c| *c == "i-1").count(),
            4,
            "1 read + 3 retries: {calls:?}"
        );
    }

    #[test]
    fn wait_timeouts_parse_with_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5d").unwrap_err().contains("unit"));
        assert!(parse_duration("soon").is_err());
    }
}
