//! The operator's commands end to end, for both binaries: resolve the target, read the facts
//! through [`Clients`], decide with the pure modules, print text or JSON, and answer the
//! exit code.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, IsTerminal};
use std::time::Duration;

use anyhow::Context;
use dropship_contract::metadata::ObjectMetadata;
use indicatif::{ProgressBar, ProgressStyle};

use dropship_contract::config::ConfigError;
use dropship_contract::wiring::OutputStream;

use crate::cli::{
    DoctorArgs, InitArgs, LogsArgs, PromoteArgs, ReleasesArgs, RollbackArgs, StatusArgs, WaitArgs,
};
use crate::doctor::DoctorReport;
use crate::doctor_facts::{DoctorClients, DoctorTarget};
use crate::exit::Exit;
use crate::facts::{Clients, HeadFacts};
use crate::history::{self, Facts, VersionEntry, VersionsReport};
use crate::init;
use crate::logs::{self, HostLog, LogsReport, StreamRead};
use crate::promote::{self, PromotePlan, Promoted};
use crate::rollback::{self, Lookup, Restored, RollbackPlan};
use crate::target::{self, Target};
use crate::wait::{self, WaitReport};
use crate::OpsError;

/// Clients for `target`, with the SDK configuration `profile` and `region` select.
pub async fn clients(profile: Option<&str>, region: Option<String>, target: Target) -> Clients {
    Clients::new(&dropship_aws::sdk::load(profile, region).await, target)
}

/// Reads the history and the facts for its newest `limit` entries and builds the report.
pub async fn releases(clients: &Clients, limit: usize) -> Result<VersionsReport, OpsError> {
    let target = &clients.target;
    let history = clients.history().await?;
    let omitted = history.len().saturating_sub(limit);
    let shown: Vec<VersionEntry> = history.into_iter().take(limit).collect();
    let listed: HashSet<String> = clients
        .record_keys(&target.release.records_prefix())
        .await?;
    let mut facts = Facts {
        pointer: clients.pointer(&listed).await?,
        ..Facts::default()
    };
    let mut heads = tokio::task::JoinSet::new();
    for entry in shown.iter().filter(|e| !e.delete_marker) {
        let c = clients.clone();
        let version = entry.version_id.clone();
        heads.spawn(async move {
            let head = c.head_version(&version).await;
            (version, head)
        });
    }
    while let Some(joined) = heads.join_next().await {
        let (version, head) = joined.expect("a metadata read does not panic");
        let decoded = ObjectMetadata::from_headers(&head?.metadata).map_err(|e| e.to_string());
        facts.metadata.insert(version, decoded);
    }
    for entry in &shown {
        let key = target.release.record_key(&entry.version_id);
        if listed.contains(&key) {
            if let Some(record) = clients.read_record(&key).await? {
                facts.records.insert(entry.version_id.clone(), record);
            }
        }
    }
    Ok(VersionsReport {
        app: target.release.app().to_string(),
        env: target.release.env().to_string(),
        bucket: target.bucket.clone(),
        key: target.key(),
        versions: history::rows(&shown, &facts),
        omitted,
    })
}

/// `releases`: one report per app/env asked for.
pub async fn run_releases(args: ReleasesArgs) -> anyhow::Result<Exit> {
    let resolved = target::resolve(&args.target, args.all_envs)?;
    let mut reports = Vec::new();
    for target in resolved.targets {
        let c = clients(
            args.target.profile.as_deref(),
            resolved.region.clone(),
            target,
        )
        .await;
        reports.push(releases(&c, args.limit).await?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        let text: Vec<String> = reports.iter().map(VersionsReport::render).collect();
        print!("{}", crate::terminal_safe(&text.join("\n")));
    }
    Ok(Exit::Success)
}

/// One `status` pass over `version` of the clients' target.
async fn status_now(c: &Clients, version: &str) -> Result<crate::status::DeployStatus, OpsError> {
    let release = &c.target.release;
    wait::status_once(
        c,
        release.app(),
        release.env(),
        version,
        Duration::from_millis(400),
    )
    .await
}

/// `status [VERSION]`: exits 0 whenever it could read the facts.
pub async fn run_status(args: StatusArgs) -> anyhow::Result<Exit> {
    let (target, region) = target::resolve(&args.target, false)?.single();
    let c = clients(args.target.profile.as_deref(), region, target).await;
    let (version, head) = version_or_current(&c, args.version_id.clone()).await?;
    let mut status = status_now(&c, &version).await?;
    if status.commit.is_none() {
        status.commit = ObjectMetadata::from_headers(&head.metadata)
            .ok()
            .map(|m| m.commit);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", crate::terminal_safe(&status.render()));
    }
    Ok(Exit::Success)
}

/// Reads the facts a rollback needs and plans it; nothing is written.
pub async fn prepare_rollback(
    clients: &Clients,
    version_id: &str,
) -> Result<RollbackPlan, OpsError> {
    let history = clients.history().await?;
    // Refuse unknown ids and delete markers before reading anything else.
    let (meta, etag) = match rollback::lookup(&history, version_id) {
        Lookup::Version(_) => {
            let head = clients.head_version(version_id).await?;
            let meta = ObjectMetadata::from_headers(&head.metadata).map_err(|e| e.to_string());
            (meta, head.etag)
        }
        _ => (Err(String::new()), None),
    };
    rollback::plan(&clients.target, &history, version_id, meta, etag)
}

/// The one write of a rollback or a promotion: `version_id` of `source`'s key copied onto
/// `dest`'s key with `metadata`, only while the source still has `etag`. Returns the new
/// version id.
async fn copy_checked(
    dest: &Clients,
    source: &Target,
    version_id: &str,
    etag: Option<&str>,
    metadata: &ObjectMetadata,
) -> Result<String, OpsError> {
    let headers = metadata
        .to_headers()
        .map_err(|e| OpsError::InvalidMetadata {
            url: source.url(),
            version_id: version_id.to_string(),
            cause: e.to_string(),
        })?;
    dest.copy_version(&source.key(), version_id, etag, &headers)
        .await
}

/// The one write of a rollback: the conditional copy.
pub async fn execute_rollback(
    clients: &Clients,
    plan: &RollbackPlan,
) -> Result<Restored, OpsError> {
    let new_version = copy_checked(
        clients,
        &plan.target,
        &plan.source.version_id,
        plan.etag.as_deref(),
        &plan.metadata,
    )
    .await?;
    Ok(plan.restored(new_version))
}

/// Asks `question` on the terminal (stderr) and reads the answer from `stdin`: whether it
/// was yes. Rollback and promote confirm a copy the same way.
fn answered_yes(stdin: &std::io::Stdin, question: &str) -> anyhow::Result<bool> {
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .context("reading the confirmation from the terminal")?;
    Ok(rollback::is_yes(&answer))
}

/// `rollback VERSION`: checks, asks, copies, and with `--wait` follows the new version.
pub async fn run_rollback(args: RollbackArgs) -> anyhow::Result<Exit> {
    let (target, region) = target::resolve(&args.target, false)?.single();
    let c = clients(args.target.profile.as_deref(), region, target).await;
    let plan = prepare_rollback(&c, &args.version_id).await?;
    let not_confirmed = |why: String| OpsError::NotConfirmed {
        url: plan.target.url(),
        version_id: plan.source.version_id.clone(),
        why,
    };
    let stdin = std::io::stdin();
    match rollback::consent(
        args.yes,
        stdin.is_terminal(),
        std::io::stderr().is_terminal(),
    ) {
        rollback::Consent::Given => {}
        rollback::Consent::Ask => {
            eprint!("{}", crate::terminal_safe(&plan.describe()));
            if !answered_yes(&stdin, "Roll back to this version?")? {
                return Err(not_confirmed("the answer was not yes".into()).into());
            }
        }
        rollback::Consent::Refuse(why) => {
            eprint!("{}", crate::terminal_safe(&plan.describe()));
            return Err(not_confirmed(why).into());
        }
    }
    let restored = execute_rollback(&c, &plan).await?;
    report_created(&c, restored, "rollback", &args.wait, args.json).await
}

/// What a command that created a version by a copy (rollback, promote) reports.
trait CreatedVersion: serde::Serialize {
    /// The human summary.
    fn text(&self) -> String;
    /// The new version id.
    fn version_id(&self) -> &str;
    /// Its commit.
    fn commit(&self) -> &str;
}

/// Both results carry `version_id`, `commit` and a `render()`.
macro_rules! created_version {
    ($($t:ty),*) => {$(
        impl CreatedVersion for $t {
            fn text(&self) -> String {
                self.render()
            }
            fn version_id(&self) -> &str {
                &self.version_id
            }
            fn commit(&self) -> &str {
                &self.commit
            }
        }
    )*};
}
created_version!(Restored, Promoted);

/// Output of a command that created a version (rollback, promote), with the deploy when
/// `--wait` was given.
#[derive(serde::Serialize)]
struct CreatedOutput<T: serde::Serialize> {
    #[serde(flatten)]
    created: T,
    #[serde(skip_serializing_if = "Option::is_none")]
    deploy: Option<WaitReport>,
}

/// The end of a command (`what`) whose copy created a version on the clients' key: prints
/// its summary (unless JSON), follows the deploy with `--wait`, prints the JSON, and answers
/// the exit code (the deploy's with `--wait`).
async fn report_created<T: CreatedVersion>(
    c: &Clients,
    created: T,
    what: &str,
    wait: &WaitArgs,
    json: bool,
) -> anyhow::Result<Exit> {
    if !json {
        print!("{}", crate::terminal_safe(&created.text()));
    }
    let (version, commit) = (
        created.version_id().to_string(),
        created.commit().to_string(),
    );
    let deploy = if wait.wait {
        Some(follow(c, &version, &commit, wait, json).await.with_context(|| {
            format!("version {version} was created by the {what}, but following its deploy failed")
        })?)
    } else {
        None
    };
    let code = deploy
        .as_ref()
        .map(WaitReport::exit_code)
        .unwrap_or(Exit::Success);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&CreatedOutput { created, deploy })?
        );
    }
    Ok(code)
}

/// Reads the facts a promotion needs (the source version, its metadata and how its deploy
/// ended in the source environment) and plans it; nothing is written.
pub async fn prepare_promote(
    source: &Clients,
    to: &Target,
    asked: Option<&str>,
    force: bool,
) -> Result<PromotePlan, OpsError> {
    let history = source.history().await?;
    let entry = promote::source_version(&source.target, &history, asked)?;
    let head = source.head_version(&entry.version_id).await?;
    let meta = ObjectMetadata::from_headers(&head.metadata).map_err(|e| e.to_string());
    let verdict = status_now(source, &entry.version_id).await?.verdict;
    promote::plan(&source.target, to, entry, meta, head.etag, verdict, force)
}

/// `promote FROM TO`: checks the source version's deploy, copies it onto the target key
/// (the one write), and with `--wait` follows the new version to every target host.
pub async fn run_promote(args: PromoteArgs) -> anyhow::Result<Exit> {
    promote::check_pair(&args.from_env, &args.to_env)?;
    let resolve_env = |env: &str| {
        let mut t = args.target.clone();
        t.env = Some(env.to_string());
        target::resolve(&t, false)
    };
    let (from, region) = resolve_env(&args.from_env)?.single();
    let (to, _) = resolve_env(&args.to_env)?.single();
    let sdk = dropship_aws::sdk::load(args.target.profile.as_deref(), region).await;
    let source = Clients::new(&sdk, from);
    let dest = Clients::new(&sdk, to);
    let plan = prepare_promote(&source, &dest.target, args.version.as_deref(), args.force).await?;
    if let Some(warning) = plan.warning() {
        eprintln!("{}", crate::terminal_safe(&warning));
    }
    // Without --version the source key's current version is whatever its least-trusted
    // writer put there last: show it and ask, or refuse when there is no one to ask.
    if args.version.is_none() {
        let not_confirmed = |why: String| OpsError::PromoteNotConfirmed {
            url: plan.from.url(),
            version_id: plan.source.version_id.clone(),
            to_env: plan.to.release.env().to_string(),
            why,
        };
        let stdin = std::io::stdin();
        eprint!("{}", crate::terminal_safe(&plan.describe()));
        if stdin.is_terminal() && std::io::stderr().is_terminal() {
            if !answered_yes(&stdin, "Promote this version?")? {
                return Err(not_confirmed("the answer was not yes".into()).into());
            }
        } else {
            return Err(not_confirmed(format!(
                "not running on a terminal, so there is no one to confirm which version is copied; name it: --version {}",
                plan.source.version_id
            ))
            .into());
        }
    }
    let new_version = copy_checked(
        &dest,
        &plan.from,
        &plan.source.version_id,
        plan.etag.as_deref(),
        &plan.metadata,
    )
    .await?;
    let promoted = plan.promoted(new_version);
    report_created(&dest, promoted, "promotion", &args.wait, args.json).await
}

/// `init`: reads the repository, writes dropship.toml only if there is none, prints the
/// next steps.
pub fn run_init(args: InitArgs) -> anyhow::Result<Exit> {
    let root = target::repository_root(&args.repo).unwrap_or_else(|| args.repo.clone());
    // Absolute, so the app name comes from the directory's name even for `--repo .`.
    let root = std::fs::canonicalize(&root).unwrap_or(root);
    let facts = init::RepoFacts::read(&root);
    let path = init::config_path(&root);
    init::write_new(&path, &init::render(&facts))?;
    print!("{}", crate::terminal_safe(&init::next_steps(&facts, &path)));
    Ok(Exit::Success)
}

/// Follows a deploy with progress on a terminal (state changes on stderr otherwise) and
/// prints the per-host table unless JSON was asked for. `commit` is the new version's, shown
/// while the deploy record (which also carries it) is not there yet.
pub async fn follow(
    clients: &Clients,
    version: &str,
    commit: &str,
    args: &WaitArgs,
    json: bool,
) -> Result<WaitReport, OpsError> {
    let tty = !json && std::io::stderr().is_terminal();
    let bar = if tty {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut last = String::new();
    let mut on_progress = |p: wait::Progress<'_>| {
        let line = match p {
            wait::Progress::WaitingForRecord {
                dispatching: false, ..
            } => format!("waiting for the deployer to pick up version {version}"),
            wait::Progress::WaitingForRecord {
                dispatching: true, ..
            } => "the deployer is verifying the bundle and sending commands".to_string(),
            wait::Progress::Hosts(s) => format!(
                "{} host(s): {}",
                s.hosts.len(),
                crate::status::counts_line(&s.hosts)
            ),
        };
        if line != last {
            if tty {
                bar.set_message(crate::terminal_safe_line(&line));
            } else if !json {
                eprintln!("wait: {}", crate::terminal_safe(&line));
            }
            last = line;
        }
    };
    let release = &clients.target.release;
    let mut report = wait::follow(
        clients,
        release.app(),
        release.env(),
        version,
        args.options(),
        &mut on_progress,
    )
    .await?;
    report
        .status
        .commit
        .get_or_insert_with(|| commit.to_string());
    bar.finish_and_clear();
    if !json {
        println!();
        print!("{}", crate::terminal_safe(&report.status.render()));
        if report.timed_out {
            eprintln!(
                "still pending after {:.0}s (--wait-timeout): follow with `dropship status {version}`",
                report.waited_secs
            );
        }
    }
    Ok(report)
}

/// The version a read command is about (the one given, or the key's current version) and
/// its `HeadObject`; an id the key does not have is [`OpsError::UnknownVersion`].
async fn version_or_current(
    c: &Clients,
    given: Option<String>,
) -> Result<(String, HeadFacts), OpsError> {
    let version = match given {
        Some(v) => v,
        None => c
            .current_version()
            .await?
            .ok_or_else(|| OpsError::NoVersions {
                url: c.target.url(),
            })?,
    };
    let head = c.head_version(&version).await?;
    Ok((version, head))
}

/// Where one stream of one section stands between polls.
#[derive(Default)]
struct StreamCursor {
    /// CloudWatch's forward token after the last read.
    next: Option<String>,
    /// Lines read so far.
    lines: Vec<String>,
    /// The stream did not exist at the last read.
    missing: bool,
}

/// `logs [VERSION]`: reads every stream the deploy record implies, host by host; with
/// `--follow`, keeps reading until the fleet settled and the output stopped growing.
pub async fn run_logs(args: LogsArgs) -> anyhow::Result<Exit> {
    let resolved = target::resolve(&args.target, false)?;
    let log_group = match args.log_group.clone().or(resolved.log_group.clone()) {
        Some(g) => g,
        None => {
            return Err(ConfigError::MissingValue {
                what: "log group (the deployer Lambda's DROPSHIP_LOG_GROUP)",
                key: "log_group",
                env_var: "DROPSHIP_LOG_GROUP",
                flag: "--log-group",
                path: resolved.config_path.clone(),
            }
            .into())
        }
    };
    let lambda_group = args
        .lambda_log_group
        .clone()
        .or(resolved.lambda_log_group.clone());
    let (target, region) = resolved.single();
    let c = clients(args.target.profile.as_deref(), region, target).await;
    let (version, _) = version_or_current(&c, args.version_id.clone()).await?;
    // With --follow the group may appear with the first output (an agent creates it when it
    // may); it is checked once the deploy settled without any output instead.
    if !args.follow && !c.log_group_exists(&log_group).await? {
        return Err(OpsError::LogGroupMissing { group: log_group }.into());
    }
    let release = c.target.release.clone();
    let started = std::time::Instant::now();
    let poll = Duration::from_millis(args.poll_interval_ms.max(10));
    let stream_text = args.follow && !args.json;
    let mut cursors: BTreeMap<(String, String, OutputStream), StreamCursor> = BTreeMap::new();
    let mut follow_state = logs::FollowState::default();
    let mut printed = None;
    let (sections, settled, timed_out) = loop {
        let status = status_now(&c, &version).await?;
        let record = c.record(&version).await?;
        let settled = status.verdict != crate::status::Verdict::Pending;
        let sections = match &record {
            Some(r) => {
                let mut known = status.hosts.clone();
                if let Some(f) = &status.fleet {
                    known.extend(f.rollback.iter().cloned());
                }
                logs::sections(r, &known, args.host.as_deref())
            }
            None if !args.follow => {
                return Err(OpsError::NoRecord {
                    url: c.target.url(),
                    version_id: version,
                }
                .into())
            }
            None => Vec::new(),
        };
        if let (Some(host), true) = (&args.host, settled || !args.follow) {
            if sections.is_empty() {
                let sent_to: Vec<String> = record
                    .iter()
                    .flat_map(crate::status::invocation_pairs)
                    .map(|(_, i)| i)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                return Err(OpsError::HostNotInDeploy {
                    version_id: version,
                    host: host.clone(),
                    hosts: sent_to,
                }
                .into());
            }
        }
        let mut grew = false;
        for section in &sections {
            for which in OutputStream::BOTH {
                let cursor = cursors
                    .entry((
                        section.command_id.clone(),
                        section.instance_id.clone(),
                        which,
                    ))
                    .or_default();
                match c
                    .read_stream(&log_group, &section.stream(which), cursor.next.as_deref())
                    .await?
                {
                    StreamRead::Missing => cursor.missing = true,
                    StreamRead::Lines { lines, next } => {
                        cursor.missing = false;
                        cursor.next = next;
                        if !lines.is_empty() {
                            grew = true;
                            if stream_text {
                                print!(
                                    "{}",
                                    crate::terminal_safe(&logs::render_chunk(
                                        &mut printed,
                                        section,
                                        which,
                                        &lines
                                    ))
                                );
                            }
                            cursor.lines.extend(lines);
                        }
                    }
                }
            }
        }
        if !args.follow || follow_state.after_poll(settled, grew) {
            break (sections, settled, false);
        }
        if started.elapsed() >= args.timeout {
            break (sections, settled, true);
        }
        tokio::time::sleep(poll).await;
    };
    let hosts: Vec<HostLog> = sections
        .into_iter()
        .map(|section| {
            let mut take = |which| {
                cursors
                    .remove(&(
                        section.command_id.clone(),
                        section.instance_id.clone(),
                        which,
                    ))
                    .unwrap_or_default()
            };
            let (out, err) = (take(OutputStream::Stdout), take(OutputStream::Stderr));
            let missing = [
                (OutputStream::Stdout, out.missing),
                (OutputStream::Stderr, err.missing),
            ]
            .into_iter()
            .filter(|(_, m)| *m)
            .map(|(w, _)| section.stream(w))
            .collect();
            HostLog {
                section,
                stdout: out.lines,
                stderr: err.lines,
                missing,
            }
        })
        .collect();
    let nothing_read = hosts
        .iter()
        .all(|h| h.stdout.is_empty() && h.stderr.is_empty());
    if args.follow && nothing_read && !c.log_group_exists(&log_group).await? {
        return Err(OpsError::LogGroupMissing { group: log_group }.into());
    }
    let mut notes = logs::missing_notes(&log_group, &hosts);
    let lambda = match lambda_group {
        Some(group) => {
            let record = c.record(&version).await?;
            let terms = logs::lambda_terms(&version, record.as_ref());
            match c
                .filter_lines(&group, &logs::lambda_filter_pattern(&terms))
                .await?
            {
                Some(lines) => Some(logs::LambdaLines {
                    log_group: group,
                    lines: logs::select_lambda_lines(lines, &terms),
                }),
                None => {
                    notes.push(format!(
                        "the deployer Lambda's log group {group} does not exist: check `lambda_log_group` against the infra output lambda_log_groups (the group of the environment's class)"
                    ));
                    None
                }
            }
        }
        None => None,
    };
    if let (Some(l), true) = (&lambda, stream_text) {
        println!("== deployer Lambda (log group {})", l.log_group);
        for line in &l.lines {
            println!("{}", crate::terminal_safe(line));
        }
    }
    let report = LogsReport {
        app: release.app().to_string(),
        env: release.env().to_string(),
        version_id: version.clone(),
        lambda,
        notes,
        log_group,
        settled,
        hosts,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if stream_text {
        for note in &report.notes {
            println!("note: {}", crate::terminal_safe(note));
        }
        println!(
            "== {} (see `dropship status {version}`)",
            if settled {
                "settled"
            } else {
                "not settled yet"
            }
        );
    } else {
        print!("{}", crate::terminal_safe(&report.render()));
    }
    if timed_out {
        eprintln!(
            "the deploy of {version} had not settled after {:.0}s (--timeout): run `dropship logs {version} --follow` again",
            started.elapsed().as_secs_f64()
        );
        return Ok(Exit::WaitTimeout);
    }
    Ok(Exit::Success)
}

/// `doctor`: reads the facts, checks them, prints the findings; exits 0 only when a deploy
/// would reach every host.
pub async fn run_doctor(args: DoctorArgs) -> anyhow::Result<Exit> {
    let resolved = target::resolve(&args.target, false)?;
    let rule = args.rule.clone().or(resolved.rule.clone());
    let (target, region) = resolved.single();
    let sdk = dropship_aws::sdk::load(args.target.profile.as_deref(), region).await;
    let asked = DoctorTarget {
        app: target.release.app().to_string(),
        env: target.release.env().to_string(),
        bucket: target.bucket.clone(),
        rule,
        tag_keys: (args.app_tag_key.clone(), args.env_tag_key.clone()),
    };
    let facts = DoctorClients::new(&sdk)
        .read(&asked, sdk.region().map(|r| r.to_string()))
        .await;
    let report = DoctorReport::of(&facts);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::terminal_safe(&report.render()));
    }
    Ok(report.exit_code())
}
