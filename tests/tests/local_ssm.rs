//! The local SSM endpoint through the real `aws-sdk-ssm` client: statuses and exit codes,
//! output limits and CloudWatch Logs, rate controls, offline agents, the agent's way of
//! stopping a script, the list and describe filters, the status-change events on moto's
//! EventBridge, and loud errors. Scripts run under bash on this machine
//! ([`BashInstance`]); events and logs go to the shared moto server.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ssm::types::{
    CloudWatchOutputConfig, Command, CommandFilter, CommandFilterKey, InstanceInformationFilter,
    InstanceInformationFilterKey, InstanceInformationStringFilter,
};
use dropship_tests::local_ssm::bash_instance::{processes_in_group, BashInstance};
use dropship_tests::local_ssm::{LocalSsm, LocalSsmConfig};
use dropship_tests::moto;
use serde_json::Value;

/// A local endpoint with short delivery timeouts (one second of `TimeoutSeconds` lasts
/// 20 ms, so AWS's minimum of 30 s expires in about 0.6 s).
fn endpoint(registration_delay: Duration) -> LocalSsm {
    LocalSsm::start(LocalSsmConfig {
        delivery_second: Duration::from_millis(20),
        registration_delay,
        ..LocalSsmConfig::from_env()
    })
}

/// Instance ids no other test (or earlier run against the same moto) uses.
fn instance_ids(n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            format!(
                "i-{}",
                &dropship_tests::local_ssm::model::uuid().replace('-', "")[..17]
            )
        })
        .collect()
}

/// Online local instances registered with `ssm`, one per id.
fn instances(ssm: &LocalSsm, ids: &[String]) -> Vec<Arc<BashInstance>> {
    ids.iter()
        .map(|id| {
            let inst = BashInstance::new(id, &[("dropship:app", "shop")]);
            ssm.add_instance(inst.clone());
            inst
        })
        .collect()
}

fn send(
    client: &aws_sdk_ssm::Client,
    ids: &[String],
    script: &str,
) -> aws_sdk_ssm::operation::send_command::builders::SendCommandFluentBuilder {
    client
        .send_command()
        .document_name("AWS-RunShellScript")
        .set_instance_ids(Some(ids.to_vec()))
        .parameters("commands", vec![script.to_string()])
        .timeout_seconds(30)
}

async fn command_id(
    builder: aws_sdk_ssm::operation::send_command::builders::SendCommandFluentBuilder,
) -> String {
    let out = builder.send().await.expect("SendCommand");
    out.command()
        .and_then(Command::command_id)
        .expect("command id")
        .to_string()
}

/// Polls ListCommands until the command reached a terminal status.
async fn finished(client: &aws_sdk_ssm::Client, id: &str) -> Command {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = client
            .list_commands()
            .command_id(id)
            .send()
            .await
            .expect("ListCommands");
        let cmd = out.commands()[0].clone();
        let status = cmd
            .status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        if ["Success", "Failed", "TimedOut", "Cancelled"].contains(&status.as_str()) {
            return cmd;
        }
        assert!(Instant::now() < deadline, "command {id} still {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Inv {
    status: String,
    details: String,
    code: i32,
    stdout: String,
    stderr: String,
    start: String,
    end: String,
}

async fn invocation(client: &aws_sdk_ssm::Client, command: &str, instance: &str) -> Inv {
    let out = client
        .get_command_invocation()
        .command_id(command)
        .instance_id(instance)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GetCommandInvocation {command} {instance}: {e:?}"));
    Inv {
        status: out
            .status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        details: out.status_details().unwrap_or_default().to_string(),
        code: out.response_code(),
        stdout: out
            .standard_output_content()
            .unwrap_or_default()
            .to_string(),
        stderr: out.standard_error_content().unwrap_or_default().to_string(),
        start: out
            .execution_start_date_time()
            .unwrap_or_default()
            .to_string(),
        end: out
            .execution_end_date_time()
            .unwrap_or_default()
            .to_string(),
    }
}

fn status_of(cmd: &Command) -> (String, String) {
    (
        cmd.status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        cmd.status_details().unwrap_or_default().to_string(),
    )
}

fn error_code<E, R>(e: aws_sdk_ssm::error::SdkError<E, R>) -> (String, String)
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata,
{
    let meta = e.as_service_error().map(|s| {
        (
            s.code().unwrap_or_default().to_string(),
            s.message().unwrap_or_default().to_string(),
        )
    });
    meta.unwrap_or_else(|| ("not a service error".into(), String::new()))
}

fn read_nanos(inst: &BashInstance, file: &str) -> u128 {
    std::fs::read_to_string(inst.dir().join(file))
        .unwrap_or_else(|e| panic!("{file} of {}: {e}", inst.dir().display()))
        .trim()
        .parse()
        .expect("nanoseconds")
}

#[tokio::test]
async fn exit_codes_give_the_agents_status_response_code_and_output() {
    let ssm = endpoint(Duration::ZERO);
    let client = ssm.client().await;
    let ids = instance_ids(3);
    let hosts = instances(&ssm, &ids);
    for (host, code) in hosts.iter().zip(["0", "9", "10"]) {
        std::fs::write(host.dir().join("code"), code).unwrap();
    }
    let script = "echo \"deploying on $AWS_SSM_INSTANCE_ID\"\necho warn >&2\nexit \"$(cat code)\"";
    let id = command_id(send(&client, &ids, script).max_errors("3")).await;
    let cmd = finished(&client, &id).await;
    assert_eq!(status_of(&cmd), ("Failed".into(), "Incomplete".into()));
    assert_eq!(
        (cmd.target_count(), cmd.completed_count(), cmd.error_count()),
        (3, 3, 2)
    );

    let ok = invocation(&client, &id, &ids[0]).await;
    assert_eq!(
        (ok.status.as_str(), ok.details.as_str(), ok.code),
        ("Success", "Success", 0)
    );
    assert_eq!(ok.stdout, format!("deploying on {}\n", ids[0]));
    assert_eq!(ok.stderr, "warn\n");
    assert!(
        ok.start.ends_with('Z') && ok.end.ends_with('Z'),
        "{} {}",
        ok.start,
        ok.end
    );
    for (i, code) in [(1, 9), (2, 10)] {
        let inv = invocation(&client, &id, &ids[i]).await;
        assert_eq!(
            (inv.status.as_str(), inv.details.as_str(), inv.code),
            ("Failed", "Failed", code)
        );
        assert_eq!(inv.stdout, format!("deploying on {}\n", ids[i]));
        assert_eq!(
            inv.stderr,
            format!("warn\nfailed to run commands: exit status {code}")
        );
    }
    drop(ssm);
    assert_hosts_ran_once(&hosts);
}

fn assert_hosts_ran_once(hosts: &[Arc<BashInstance>]) {
    for h in hosts {
        assert_eq!(h.process_groups().len(), 1, "{}", h.dir().display());
    }
}

#[tokio::test]
async fn output_is_cut_at_24000_and_8000_characters_and_kept_whole_in_cloudwatch_logs() {
    let ssm = endpoint(Duration::ZERO);
    let client = ssm.client().await;
    let ids = instance_ids(1);
    let _hosts = instances(&ssm, &ids);
    let group = format!("/dropship/{}", moto::unique("ssm-output"));
    // 30,000 two-byte characters on stdout, 9,000 on stderr.
    let script = "yes é | head -n 30000 | tr -d '\\n'\nyes x | head -n 9000 | tr -d '\\n' >&2";
    let id = command_id(
        send(&client, &ids, script).cloud_watch_output_config(
            CloudWatchOutputConfig::builder()
                .cloud_watch_output_enabled(true)
                .cloud_watch_log_group_name(&group)
                .build(),
        ),
    )
    .await;
    let cmd = finished(&client, &id).await;
    assert_eq!(status_of(&cmd), ("Success".into(), "Success".into()));
    let inv = invocation(&client, &id, &ids[0]).await;
    assert_eq!(inv.stdout, "é".repeat(24_000));
    assert_eq!(inv.stderr, "x".repeat(8_000));

    let logs = aws_sdk_cloudwatchlogs::Client::new(&moto::sdk_config().await);
    let stream = |which: &str| format!("{id}/{}/aws-runShellScript/{which}", ids[0]);
    assert_eq!(
        log_text(&logs, &group, &stream("stdout")).await,
        "é".repeat(30_000)
    );
    assert_eq!(
        log_text(&logs, &group, &stream("stderr")).await,
        "x".repeat(9_000)
    );
    assert!(
        ssm.emission_errors().is_empty(),
        "{:?}",
        ssm.emission_errors()
    );
}

/// Every message of a log stream, in order, joined.
async fn log_text(logs: &aws_sdk_cloudwatchlogs::Client, group: &str, stream: &str) -> String {
    let mut text = String::new();
    let mut token: Option<String> = None;
    loop {
        let out = logs
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(true)
            .set_next_token(token.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("GetLogEvents {group} {stream}: {e:?}"));
        for e in out.events() {
            text.push_str(e.message().unwrap_or_default());
        }
        let next = out.next_forward_token().map(str::to_string);
        if next == token || out.events().is_empty() {
            return text;
        }
        token = next;
    }
}

/// Writes the script's start and end (nanoseconds) into its host's directory.
const TIMED_SCRIPT: &str = "date +%s%N > start\nsleep 0.4\ndate +%s%N > end";

fn intervals(hosts: &[Arc<BashInstance>]) -> Vec<(u128, u128)> {
    hosts
        .iter()
        .map(|h| (read_nanos(h, "start"), read_nanos(h, "end")))
        .collect()
}

/// The most scripts that ran at the same moment.
fn most_at_once(intervals: &[(u128, u128)]) -> usize {
    intervals
        .iter()
        .map(|&(s, _)| intervals.iter().filter(|&&(a, b)| a <= s && s < b).count())
        .max()
        .unwrap_or(0)
}

#[tokio::test]
async fn max_concurrency_1_runs_the_targets_one_after_another_in_order() {
    let ssm = endpoint(Duration::ZERO);
    let client = ssm.client().await;
    let ids = instance_ids(3);
    let hosts = instances(&ssm, &ids);
    let id = command_id(send(&client, &ids, TIMED_SCRIPT).max_concurrency("1")).await;
    assert_eq!(status_of(&finished(&client, &id).await).0, "Success");
    let runs = intervals(&hosts);
    for pair in runs.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "overlap or out of order: {runs:?}");
    }
}

#[tokio::test]
async fn a_percentage_max_concurrency_is_taken_of_the_targets() {
    let ssm = endpoint(Duration::ZERO);
    let client = ssm.client().await;
    let ids = instance_ids(4);
    let hosts = instances(&ssm, &ids);
    let id = command_id(send(&client, &ids, TIMED_SCRIPT).max_concurrency("50%")).await;
    assert_eq!(status_of(&finished(&client, &id).await).0, "Success");
    let runs = intervals(&hosts);
    assert_eq!(most_at_once(&runs), 2, "50% of 4 targets: {runs:?}");
}

#[tokio::test]
async fn max_errors_0_stops_after_the_first_failure_and_terminates_the_rest() {
    let ssm = endpoint(Duration::ZERO);
    let client = ssm.client().await;
    let ids = instance_ids(3);
    let hosts = instances(&ssm, &ids);
    let script = "touch ran\nexit 1";
    let id = command_id(
        send(&client, &ids, script)
            .max_concurrency("1")
            .max_errors("0"),
    )
    .await;
    let cmd = finished(&client, &id).await;
    assert_eq!(status_of(&cmd), ("Failed".into(), "Failed".into()));
    let first = invocation(&client, &id, &ids[0]).await;
    assert_eq!((first.details.as_str(), first.code), ("Failed", 1));
    assert!(hosts[0].dir().join("ran").exists());
    for (i, host) in hosts.iter().enumerate().skip(1) {
        let inv = invocation(&client, &id, &ids[i]).await;
        assert_eq!(
            (inv.status.as_str(), inv.details.as_str(), inv.code),
            ("Cancelled", "Terminated", -1)
        );
        assert!(inv.start.is_empty() && inv.stdout.is_empty());
        assert!(!host.dir().join("ran").exists(), "a terminated target ran");
    }
}

#[tokio::test]
async fn an_offline_agent_times_out_on_delivery_without_counting_against_max_errors() {
    let ssm = endpoint(Duration::ZERO);
    let client = ssm.client().await;
    let ids = instance_ids(3);
    let hosts = instances(&ssm, &ids);
    hosts[0].set_online(false);
    let script = "touch ran";
    // MaxErrors 0 and one at a time: had the delivery timeout counted as an error, the two
    // others would have been terminated.
    let id = command_id(
        send(&client, &ids, script)
            .max_concurrency("1")
            .max_errors("0")
            .parameters("executionTimeout", vec!["1".into()]),
    )
    .await;
    let cmd = finished(&client, &id).await;
    let offline = invocation(&client, &id, &ids[0]).await;
    assert_eq!(
        (
            offline.status.as_str(),
            offline.details.as_str(),
            offline.code
        ),
        ("TimedOut", "DeliveryTimedOut", -1)
    );
    assert!(!hosts[0].dir().join("ran").exists());
    for (i, host) in hosts.iter().enumerate().skip(1) {
        assert_eq!(invocation(&client, &id, &ids[i]).await.details, "Success");
        assert!(host.dir().join("ran").exists());
    }
    assert_eq!(cmd.delivery_timed_out_count(), 1);
    assert_eq!(cmd.error_count(), 0);
    assert_eq!(
        status_of(&cmd),
        ("TimedOut".into(), "DeliveryTimedOut".into())
    );
}

#[tokio::test]
async fn an_agent_back_online_before_the_command_expires_runs_it() {
    let ssm = LocalSsm::start(LocalSsmConfig {
        delivery_second: Duration::from_millis(200),
        registration_delay: Duration::ZERO,
        ..LocalSsmConfig::from_env()
    });
    let client = ssm.client().await;
    let ids = instance_ids(1);
    let hosts = instances(&ssm, &ids);
    hosts[0].set_online(false);
    let id = command_id(send(&client, &ids, "touch ran")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = invocation(&client, &id, &ids[0]).await;
    assert_eq!((waiting.status.as_str(), waiting.code), ("Pending", -1));
    assert!(!hosts[0].dir().join("ran").exists());
    hosts[0].set_online(true);
    assert_eq!(status_of(&finished(&client, &id).await).0, "Success");
    assert!(hosts[0].dir().join("ran").exists());
}

#[tokio::test]
async fn a_deregistered_instance_is_undeliverable_and_an_unknown_one_is_refused() {
    let ssm = endpoint(Duration::ZERO);
    let client = ssm.client().await;
    let ids = instance_ids(2);
    let hosts = instances(&ssm, &ids);
    hosts[0].set_online(false);
    let id = command_id(send(&client, &ids, "touch ran").timeout_seconds(3600)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ssm.remove_instance(&ids[0]);
    let cmd = finished(&client, &id).await;
    let gone = invocation(&client, &id, &ids[0]).await;
    assert_eq!(
        (gone.status.as_str(), gone.details.as_str(), gone.code),
        ("Failed", "Undeliverable", -1)
    );
    // Undeliverable neither fails the command nor makes it incomplete.
    assert_eq!(status_of(&cmd), ("Success".into(), "Success".into()));

    let refused = send(&client, &ids, "touch again").send().await.unwrap_err();
    let (code, message) = error_code(refused);
    assert_eq!(code, "InvalidInstanceId");
    assert!(
        message.contains(&ids[0]) && !message.contains(&ids[1]),
        "{message}"
    );
    assert!(!hosts[1].dir().join("again").exists());
}

/// Waits until the script wrote `file` in the host's directory.
async fn wait_for_file(host: &BashInstance, file: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !host.dir().join(file).exists() {
        assert!(Instant::now() < deadline, "{file} never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A script that traps SIGTERM, starts a child in its process group and waits.
const LONG_SCRIPT: &str =
    "trap 'echo TERM > trapped' TERM\necho started\nsleep 30 &\necho $! > child\nwait";

fn assert_group_gone(host: &BashInstance) {
    let groups = host.process_groups();
    assert_eq!(groups.len(), 1);
    assert_eq!(
        processes_in_group(groups[0]),
        Vec::<u32>::new(),
        "processes left"
    );
    let child = std::fs::read_to_string(host.dir().join("child")).unwrap();
    let child_stat = std::fs::read_to_string(format!("/proc/{}/stat", child.trim()));
    assert!(
        child_stat.map_or(true, |s| s.contains(") Z ")),
        "the script's background child {} survived",
        child.trim()
    );
    // SIGKILL cannot be trapped: the script's TERM trap never ran.
    assert!(
        !host.dir().join("trapped").exists(),
        "the script saw a catchable signal"
    );
}

#[tokio::test]
async fn the_execution_timeout_kills_the_scripts_process_group_like_the_agent() {
    let ssm = endpoint(Duration::ZERO);
    let client = ssm.client().await;
    let ids = instance_ids(1);
    let hosts = instances(&ssm, &ids);
    let id = command_id(
        send(&client, &ids, LONG_SCRIPT).parameters("executionTimeout", vec!["1".into()]),
    )
    .await;
    let cmd = finished(&client, &id).await;
    assert_eq!(
        status_of(&cmd),
        ("TimedOut".into(), "ExecutionTimedOut".into())
    );
    assert_eq!(cmd.error_count(), 1);
    let inv = invocation(&client, &id, &ids[0]).await;
    assert_eq!(
        (inv.status.as_str(), inv.details.as_str(), inv.code),
        ("TimedOut", "ExecutionTimedOut", 137)
    );
    assert_eq!(inv.stdout, "started\n");
    assert_group_gone(&hosts[0]);
}

#[tokio::test]
async fn cancel_command_kills_the_running_script_and_cancels_the_waiting_ones() {
    let ssm = endpoint(Duration::ZERO);
    let client = ssm.client().await;
    let ids = instance_ids(2);
    let hosts = instances(&ssm, &ids);
    let id = command_id(send(&client, &ids, LONG_SCRIPT).max_concurrency("1")).await;
    wait_for_file(&hosts[0], "child").await;
    assert_eq!(invocation(&client, &id, &ids[0]).await.status, "InProgress");
    client
        .cancel_command()
        .command_id(&id)
        .send()
        .await
        .expect("CancelCommand");
    let cmd = finished(&client, &id).await;
    assert_eq!(status_of(&cmd), ("Cancelled".into(), "Cancelled".into()));
    let running = invocation(&client, &id, &ids[0]).await;
    assert_eq!((running.details.as_str(), running.code), ("Cancelled", 137));
    assert_eq!(running.stdout, "started\n");
    assert_group_gone(&hosts[0]);
    let waiting = invocation(&client, &id, &ids[1]).await;
    assert_eq!((waiting.details.as_str(), waiting.code), ("Cancelled", -1));
    assert!(
        hosts[1].process_groups().is_empty(),
        "a cancelled target ran"
    );

    let unknown = client
        .cancel_command()
        .command_id("00000000-0000-4000-8000-000000000000")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(unknown).0, "InvalidCommandId");
}

#[tokio::test]
async fn get_command_invocation_before_the_invocation_exists() {
    let ssm = endpoint(Duration::from_secs(2));
    let client = ssm.client().await;
    let ids = instance_ids(1);
    let _hosts = instances(&ssm, &ids);
    let id = command_id(send(&client, &ids, "true")).await;
    let early = client
        .get_command_invocation()
        .command_id(&id)
        .instance_id(&ids[0])
        .send()
        .await
        .unwrap_err();
    assert!(
        early
            .as_service_error()
            .is_some_and(|e| e.is_invocation_does_not_exist()),
        "{early:?}"
    );
    let listed = client
        .list_command_invocations()
        .command_id(&id)
        .send()
        .await
        .unwrap();
    assert!(listed.command_invocations().is_empty());
    finished(&client, &id).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        match client
            .get_command_invocation()
            .command_id(&id)
            .instance_id(&ids[0])
            .send()
            .await
        {
            Ok(out) => break out,
            Err(e) => {
                assert!(e
                    .as_service_error()
                    .is_some_and(|e| e.is_invocation_does_not_exist()));
                assert!(Instant::now() < deadline, "the invocation never appeared");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(found.status_details(), Some("Success"));
    for (command, instance) in [
        (id.as_str(), "i-0000000000000dead"),
        ("00000000-0000-4000-8000-000000000000", ids[0].as_str()),
    ] {
        let err = client
            .get_command_invocation()
            .command_id(command)
            .instance_id(instance)
            .send()
            .await
            .unwrap_err();
        assert!(err
            .as_service_error()
            .is_some_and(|e| e.is_invocation_does_not_exist()));
    }
}

#[tokio::test]
async fn list_command_invocations_details_carry_the_plugin_output() {
    let ssm = endpoint(Duration::ZERO);
    let client = ssm.client().await;
    let ids = instance_ids(2);
    let _hosts = instances(&ssm, &ids);
    let id =
        command_id(send(&client, &ids, "echo out\necho err >&2\nexit 3").max_errors("2")).await;
    finished(&client, &id).await;
    let out = client
        .list_command_invocations()
        .command_id(&id)
        .details(true)
        .send()
        .await
        .unwrap();
    let listed: Vec<&str> = out
        .command_invocations()
        .iter()
        .map(|i| i.instance_id().unwrap_or_default())
        .collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>());
    for inv in out.command_invocations() {
        assert_eq!(inv.status_details(), Some("Failed"));
        let plugins = inv.command_plugins();
        assert_eq!(plugins.len(), 1);
        assert_eq!(plugins[0].name(), Some("aws:runShellScript"));
        assert_eq!(plugins[0].response_code(), 3);
        assert_eq!(
            plugins[0].output(),
            Some("out\n\n----------ERROR-------\nerr\nfailed to run commands: exit status 3")
        );
        assert!(plugins[0].response_finish_date_time().is_some());
    }
    let one = client
        .list_command_invocations()
        .command_id(&id)
        .instance_id(&ids[1])
        .send()
        .await
        .unwrap();
    assert_eq!(one.command_invocations().len(), 1);
    assert!(one.command_invocations()[0].command_plugins().is_empty());
}

fn filter(key: CommandFilterKey, value: &str) -> CommandFilter {
    CommandFilter::builder()
        .key(key)
        .value(value)
        .build()
        .unwrap()
}

fn ids_of(commands: &[Command]) -> Vec<String> {
    commands
        .iter()
        .map(|c| c.command_id().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn list_commands_filters_as_the_lambda_uses_them() {
    let ssm = endpoint(Duration::ZERO);
    let client = ssm.client().await;
    let ids = instance_ids(2);
    let _hosts = instances(&ssm, &ids);
    let first = command_id(send(&client, &ids[..1], "true").comment("first")).await;
    finished(&client, &first).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = time::OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = command_id(
        send(&client, &ids, "exit 4")
            .comment("second")
            .max_errors("2"),
    )
    .await;
    finished(&client, &second).await;

    let list = |filters: Vec<CommandFilter>| {
        let client = client.clone();
        async move {
            let out = client
                .list_commands()
                .set_filters(Some(filters))
                .send()
                .await
                .expect("ListCommands");
            ids_of(out.commands())
        }
    };
    let rfc3339 = between
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert_eq!(
        list(vec![]).await,
        vec![second.clone(), first.clone()],
        "newest first"
    );
    assert_eq!(
        list(vec![filter(CommandFilterKey::InvokedAfter, &rfc3339)]).await,
        vec![second.clone()]
    );
    assert_eq!(
        list(vec![filter(CommandFilterKey::InvokedBefore, &rfc3339)]).await,
        vec![first.clone()]
    );
    assert_eq!(
        list(vec![filter(CommandFilterKey::Status, "Success")]).await,
        vec![first.clone()]
    );
    assert_eq!(
        list(vec![filter(CommandFilterKey::Status, "Failed")]).await,
        vec![second.clone()]
    );
    assert_eq!(
        list(vec![filter(CommandFilterKey::ExecutionStage, "Executing")]).await,
        Vec::<String>::new()
    );
    assert_eq!(
        list(vec![filter(
            CommandFilterKey::DocumentName,
            "AWS-RunShellScript"
        )])
        .await
        .len(),
        2
    );
    let by_instance = client
        .list_commands()
        .instance_id(&ids[1])
        .send()
        .await
        .unwrap();
    assert_eq!(ids_of(by_instance.commands()), vec![second.clone()]);
    let by_id = client
        .list_commands()
        .command_id(&first)
        .send()
        .await
        .unwrap();
    let cmd = &by_id.commands()[0];
    assert_eq!(cmd.comment(), Some("first"));
    assert_eq!(
        cmd.parameters().unwrap()["commands"],
        vec!["true".to_string()]
    );

    // The paginator the Lambda uses follows NextToken across pages of one.
    let mut pages = client
        .list_commands()
        .max_results(1)
        .into_paginator()
        .send();
    let mut paged = Vec::new();
    while let Some(page) = pages.next().await {
        paged.extend(ids_of(page.expect("page").commands()));
    }
    assert_eq!(paged, vec![second.clone(), first.clone()]);

    // The deployer Lambda's own query: commands since a time, with its comment.
    use deployer_lambda::edges::CommandSender;
    let mut lambda = deployer_lambda::aws::Clients::new(&moto::sdk_config().await);
    lambda.ssm = client.clone();
    let found = lambda
        .commands_since(between, "second")
        .await
        .expect("commands_since");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0.command_id, second);
    assert_eq!(found[0].0.instance_ids, ids);
    assert_eq!(found[0].1, "exit 4");

    let bad_key = client
        .list_commands()
        .filters(filter(CommandFilterKey::from("Colour"), "blue"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(bad_key).0, "InvalidFilterKey");
    let bad_time = client
        .list_commands()
        .filters(filter(CommandFilterKey::InvokedAfter, "yesterday"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(bad_time).0, "InvalidFilterValue");
    let unknown = client
        .list_commands()
        .command_id("00000000-0000-4000-8000-000000000000")
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(unknown).0, "InvalidCommandId");
}

#[tokio::test]
async fn describe_instance_information_filters_by_id_ping_status_and_tag() {
    let ssm = endpoint(Duration::ZERO);
    let client = ssm.client().await;
    let ids = instance_ids(3);
    let tagged = |id: &str, env: &str| {
        let inst = BashInstance::new(id, &[("dropship:app", "shop"), ("dropship:env", env)]);
        ssm.add_instance(inst.clone());
        inst
    };
    let _a = tagged(&ids[0], "staging");
    let b = tagged(&ids[1], "staging");
    let _c = tagged(&ids[2], "production");
    b.set_online(false);
    let describe = |filters: Vec<InstanceInformationStringFilter>| {
        let client = client.clone();
        async move {
            let out = client
                .describe_instance_information()
                .set_filters(Some(filters))
                .send()
                .await
                .expect("DescribeInstanceInformation");
            out.instance_information_list()
                .iter()
                .map(|i| {
                    (
                        i.instance_id().unwrap_or_default().to_string(),
                        i.ping_status()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or_default(),
                    )
                })
                .collect::<Vec<_>>()
        }
    };
    let f = |key: &str, values: &[&str]| {
        InstanceInformationStringFilter::builder()
            .key(key)
            .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
            .build()
            .unwrap()
    };
    let mut sorted = ids.clone();
    sorted.sort();
    let all = describe(vec![]).await;
    assert_eq!(all.iter().map(|i| i.0.clone()).collect::<Vec<_>>(), sorted);
    assert_eq!(
        describe(vec![f("InstanceIds", &[ids[1].as_str()])]).await,
        vec![(ids[1].clone(), "ConnectionLost".to_string())]
    );
    let online: BTreeSet<String> = describe(vec![f("PingStatus", &["Online"])])
        .await
        .into_iter()
        .map(|i| i.0)
        .collect();
    assert_eq!(online, BTreeSet::from([ids[0].clone(), ids[2].clone()]));
    let staging: BTreeSet<String> = describe(vec![f("tag:dropship:env", &["staging"])])
        .await
        .into_iter()
        .map(|i| i.0)
        .collect();
    assert_eq!(staging, BTreeSet::from([ids[0].clone(), ids[1].clone()]));
    assert_eq!(
        describe(vec![
            f("tag:dropship:env", &["staging"]),
            f("PingStatus", &["Online"])
        ])
        .await,
        vec![(ids[0].clone(), "Online".to_string())]
    );
    let legacy = client
        .describe_instance_information()
        .instance_information_filter_list(
            InstanceInformationFilter::builder()
                .key(InstanceInformationFilterKey::InstanceIds)
                .value_set(&ids[2])
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let info = &legacy.instance_information_list()[0];
    assert_eq!(info.instance_id(), Some(ids[2].as_str()));
    assert_eq!(
        info.resource_type().map(|r| r.as_str()),
        Some("EC2Instance")
    );
    assert_eq!(info.platform_type().map(|p| p.as_str()), Some("Linux"));

    let bad = client
        .describe_instance_information()
        .filters(f("PingStatus", &["Sleepy"]))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(bad).0, "InvalidInstanceInformationFilterValue");
    let unsupported = client
        .describe_instance_information()
        .filters(f("IamRole", &["x"]))
        .send()
        .await
        .unwrap_err();
    assert_eq!(error_code(unsupported).0, "InvalidFilterKey");
}

#[tokio::test]
async fn status_change_events_reach_an_eventbridge_rule_with_the_documented_shape() {
    use aws_sdk_eventbridge::types::{RuleState, Target};
    use aws_sdk_sqs::types::QueueAttributeName;

    let ssm = endpoint(Duration::ZERO);
    let client = ssm.client().await;
    let ids = instance_ids(1);
    let _hosts = instances(&ssm, &ids);
    let arn = format!("arn:aws:ec2:{}:123456789012:instance/{}", region(), ids[0]);

    let sqs = moto::sqs().await;
    let events = moto::events().await;
    let queue = moto::unique("ssm-events");
    let queue_url = sqs
        .create_queue()
        .queue_name(&queue)
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let pattern = serde_json::json!({
        "source": ["aws.ssm"],
        "detail-type": [
            "EC2 Command Status-change Notification",
            "EC2 Command Invocation Status-change Notification"
        ],
        "resources": [arn],
    });
    events
        .put_rule()
        .name(&queue)
        .event_pattern(pattern.to_string())
        .state(RuleState::Enabled)
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .rule(&queue)
        .targets(
            Target::builder()
                .id("capture")
                .arn(queue_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let id = command_id(send(&client, &ids, "exit 9")).await;
    finished(&client, &id).await;
    ssm.flush();
    assert!(
        ssm.emission_errors().is_empty(),
        "{:?}",
        ssm.emission_errors()
    );

    let mut got: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < 4 && Instant::now() < deadline {
        let out = sqs
            .receive_message()
            .queue_url(&queue_url)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        for m in out.messages() {
            got.push(serde_json::from_str(m.body().unwrap()).unwrap());
        }
    }
    let seen: Vec<(String, String)> = got
        .iter()
        .map(|e| {
            (
                e["detail-type"].as_str().unwrap().to_string(),
                e["detail"]["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let invocation_statuses: Vec<&str> = seen
        .iter()
        .filter(|(t, _)| t.contains("Invocation"))
        .map(|(_, s)| s.as_str())
        .collect();
    assert_eq!(
        invocation_statuses,
        vec!["InProgress", "Failed"],
        "{seen:?}"
    );
    let command_statuses: Vec<&str> = seen
        .iter()
        .filter(|(t, _)| !t.contains("Invocation"))
        .map(|(_, s)| s.as_str())
        .collect();
    assert_eq!(command_statuses, vec!["InProgress", "Failed"], "{seen:?}");

    let fixture: Value =
        serde_json::from_str(include_str!("../fixtures/ssm-run-command-events.json")).unwrap();
    let keys = |v: &Value| {
        v.as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    for event in &got {
        assert_eq!(event["source"], "aws.ssm");
        assert_eq!(event["resources"], serde_json::json!([arn]));
        assert_eq!(event["detail"]["command-id"], id.as_str());
        assert_eq!(event["detail"]["document-name"], "AWS-RunShellScript");
        let doc = if event["detail-type"]
            .as_str()
            .unwrap()
            .contains("Invocation")
        {
            assert_eq!(event["detail"]["instance-id"], ids[0].as_str());
            &fixture["invocation_status_change"]
        } else {
            assert_eq!(
                event["detail"]["parameters"]["commands"],
                serde_json::json!(["exit 9"])
            );
            &fixture["command_status_change"]
        };
        assert_eq!(keys(&event["detail"]), keys(&doc["detail"]), "{event}");
        // The envelope is EventBridge's (moto's here): it carries every field AWS documents
        // but `account`, which moto leaves out of what it delivers to a target.
        let mut envelope = keys(doc);
        envelope.remove("account");
        assert_eq!(keys(event), envelope, "{event}");
    }
}

fn region() -> String {
    std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into())
}

#[tokio::test]
async fn bad_requests_fail_loudly_and_change_nothing() {
    let ssm = endpoint(Duration::ZERO);
    let client = ssm.client().await;
    let ids = instance_ids(1);
    let hosts = instances(&ssm, &ids);

    let unknown_op = client.get_parameter().name("x").send().await.unwrap_err();
    let (code, message) = error_code(unknown_op);
    assert_eq!(code, "UnknownOperationException");
    assert!(message.contains("GetParameter"), "{message}");

    let cases: Vec<(
        aws_sdk_ssm::operation::send_command::builders::SendCommandFluentBuilder,
        &str,
    )> = vec![
        (
            send(&client, &ids, "true").document_name("AWS-RunPowerShellScript"),
            "InvalidDocument",
        ),
        (
            client
                .send_command()
                .document_name("AWS-RunShellScript")
                .set_instance_ids(Some(ids.clone())),
            "InvalidParameters",
        ),
        (
            send(&client, &ids, "true").parameters("workingDirectory", vec!["/tmp".into()]),
            "InvalidParameters",
        ),
        (
            send(&client, &ids, "true").parameters("executionTimeout", vec!["0".into()]),
            "InvalidParameters",
        ),
        (
            send(&client, &ids, "true").timeout_seconds(5),
            "ValidationException",
        ),
        (
            send(&client, &ids, "true").max_concurrency("0"),
            "ValidationException",
        ),
        (
            send(&client, &ids, "true").max_errors("-1"),
            "ValidationException",
        ),
        (
            send(&client, &ids, "true").comment("c".repeat(101)),
            "ValidationException",
        ),
        (
            send(&client, &[ids[0].clone(), ids[0].clone()], "true"),
            "DuplicateInstanceId",
        ),
        (send(&client, &[], "true"), "ValidationException"),
        (
            send(&client, &ids, "true").output_s3_bucket_name("logs"),
            "ValidationException",
        ),
    ];
    for (request, expected) in cases {
        let err = request.send().await.unwrap_err();
        let (code, message) = error_code(err);
        assert_eq!(code, expected, "{message}");
        assert!(!message.is_empty());
    }
    let listed = client.list_commands().send().await.unwrap();
    assert!(
        listed.commands().is_empty(),
        "a refused command was recorded"
    );
    assert!(
        hosts[0].process_groups().is_empty(),
        "a refused command ran"
    );
}
