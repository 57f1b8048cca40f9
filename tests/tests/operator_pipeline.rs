//! `dropship logs` and `dropship doctor` on the local pipeline (`dropship_tests::pipeline`):
//! a real deploy on two simulated hosts whose command output the local SSM endpoint writes to
//! moto's CloudWatch Logs as the agent does, and the wiring `doctor` checks (moto's S3,
//! EventBridge and EC2, the local SSM endpoint's `DescribeInstanceInformation`), healthy and
//! then deliberately broken (`S3NotificationEndpoint` answers the one S3 read moto gets
//! wrong).

use std::process::{Command, Stdio};

use aws_sdk_s3::types::{
    BucketVersioningStatus, EventBridgeConfiguration, NotificationConfiguration,
    VersioningConfiguration,
};
use dropship_tests::faults::{Fault, FaultProxy};
use dropship_tests::pipeline::{explain, log_group, Options, Pipeline, ENV};
use dropship_tests::repo::Finished;
use dropship_tests::s3_notifications::S3NotificationEndpoint;
use serde_json::Value;

fn start() -> Pipeline {
    Pipeline::start(&Options::unique()).expect("pipeline starts")
}

/// `dropship ARGS` for the pipeline's app, env and bucket, not yet started.
fn dropship_command(p: &Pipeline, args: &[&str]) -> Command {
    let mut cmd = p.repo.dropship();
    cmd.args(args)
        .args(["--app", &p.app, "--env", ENV, "--bucket", &p.bucket])
        .envs(p.local_ssm.aws_env())
        .env_remove("DROPSHIP_LOG_GROUP")
        .env_remove("DROPSHIP_RULE")
        .stdin(Stdio::null());
    cmd
}

fn dropship(p: &Pipeline, args: &[&str]) -> Finished {
    dropship_with(p, args, &[])
}

fn dropship_with(p: &Pipeline, args: &[&str], env: &[(String, String)]) -> Finished {
    let out = dropship_command(p, args)
        .envs(env.iter().cloned())
        .output()
        .expect("dropship runs");
    Finished {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The text of `logs` from one host's heading up to the next host's (or the end).
fn section_of<'a>(text: &'a str, instance_id: &str) -> &'a str {
    let start = text
        .find(&format!("== {instance_id}  "))
        .unwrap_or_else(|| panic!("no section for {instance_id} in:\n{text}"));
    let rest = &text[start + 3..];
    match rest.find("\n== ") {
        Some(end) => &rest[..end],
        None => rest,
    }
}

fn result_line(output: &str) -> &str {
    output
        .lines()
        .find(|l| l.starts_with("DROPSHIP_RESULT "))
        .unwrap_or_else(|| panic!("no result line in SSM's output:\n{output}"))
}

#[test]
fn logs_prints_every_hosts_full_output_of_a_real_deploy_and_follows_it_live() {
    let mut p = start();
    let group = log_group(&p.app);
    p.commit_release("v1");
    let up = p.upload().expect("bundle-and-upload");
    let v1 = up.version_id.clone();

    // --follow started before the deployer saw the upload: it waits for the record, prints
    // output as it arrives and ends by itself once the fleet settled and the output stopped.
    let follower = dropship_command(
        &p,
        &[
            "logs",
            &v1,
            "--follow",
            "--log-group",
            &group,
            "--poll-interval-ms",
            "200",
            "--timeout",
            "150s",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("dropship logs --follow starts");
    let d = p.deploy(&v1).expect("v1 deploys");
    assert_eq!(d.runs.len(), 2, "{}", explain(&d));
    let followed = follower.wait_with_output().expect("--follow ends");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&followed.stdout).into_owned(),
        String::from_utf8_lossy(&followed.stderr).into_owned(),
    );
    assert_eq!(followed.status.code(), Some(0), "{stdout}\n{stderr}");
    for run in &d.runs {
        let section = section_of(&stdout, &run.instance_id);
        assert!(
            section.contains(result_line(&run.output)),
            "--follow shows {}'s result line:\n{stdout}",
            run.instance_id
        );
    }
    assert!(
        stdout
            .trim_end()
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("== settled (see `dropship status ")),
        "{stdout}"
    );

    // Without --follow (default: the current version): host by host, each headed by host,
    // command, purpose and state, with every line SSM kept of its stdout.
    let out = dropship(&p, &["logs", "--log-group", &group]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let record = p.record(&v1).unwrap().expect("record");
    let first_sent = &record.commands[0].instance_ids[0];
    for run in &d.runs {
        let section = section_of(&out.stdout, &run.instance_id);
        let heading = section.lines().next().unwrap();
        assert!(
            heading.contains(&run.command_id[..12])
                && heading.contains("deploy (wave")
                && heading.contains("success"),
            "heading: {heading}"
        );
        let stdout_part = section
            .split("-- stdout\n")
            .nth(1)
            .and_then(|s| s.split("\n-- stderr").next())
            .expect("a stdout part");
        assert!(
            stdout_part.contains(result_line(&run.output)),
            "{}'s full stdout in the logs:\n{}",
            run.instance_id,
            out.stdout
        );
    }
    let first_host = out.stdout.find("== i-").unwrap();
    assert_eq!(
        out.stdout[first_host..].find(&format!("== {first_sent}")),
        Some(0),
        "hosts in the order the deploy sent to them:\n{}",
        out.stdout
    );

    // --json: the same, structured, with the deployer Lambda's own lines about v1 from its
    // group (the harness ships the Lambda's stdout there, as Lambda's runtime does).
    let json = dropship(
        &p,
        &[
            "logs",
            &v1,
            "--log-group",
            &group,
            "--lambda-log-group",
            dropship_tests::pipeline::LAMBDA_LOG_GROUP,
            "--json",
        ],
    );
    assert_eq!(json.code, 0, "{}", json.stderr);
    let report: Value = json.json();
    assert_eq!(
        report["lambda"]["log_group"],
        dropship_tests::pipeline::LAMBDA_LOG_GROUP
    );
    let lambda_lines: Vec<&str> = report["lambda"]["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        lambda_lines
            .iter()
            .any(|l| l.contains("version claimed") && l.contains(v1.as_str())),
        "{lambda_lines:#?}"
    );
    assert!(
        lambda_lines
            .iter()
            .any(|l| l.contains(&d.runs[0].command_id) && l.contains("host result")),
        "the Lambda's lines about the deploy's command: {lambda_lines:#?}"
    );
    assert!(
        lambda_lines.iter().all(|l| l.contains(v1.as_str())
            || record.commands.iter().any(|c| l.contains(&c.command_id))),
        "only lines about this deploy: {lambda_lines:#?}"
    );
    // A Lambda group that does not exist is a note naming the setting, not a failure.
    let nogroup = dropship(
        &p,
        &[
            "logs",
            &v1,
            "--log-group",
            &group,
            "--lambda-log-group",
            "/aws/lambda/nope",
        ],
    );
    assert_eq!(nogroup.code, 0, "{}", nogroup.stderr);
    assert!(
        nogroup.stdout.contains("/aws/lambda/nope does not exist")
            && nogroup.stdout.contains("lambda_log_group"),
        "{}",
        nogroup.stdout
    );
    assert_eq!(report["version_id"], v1.as_str());
    assert_eq!(report["log_group"], group.as_str());
    assert_eq!(report["settled"], true);
    let hosts = report["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{report:#}");
    for h in hosts {
        assert_eq!(
            (h["purpose"].as_str(), h["state"].as_str()),
            (Some("deploy"), Some("success"))
        );
        let run = d
            .runs
            .iter()
            .find(|r| h["instance_id"] == r.instance_id.as_str())
            .expect("a host of the deploy");
        assert_eq!(h["command_id"], run.command_id.as_str());
        assert!(
            h["stdout"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l.as_str().unwrap().trim_end() == result_line(&run.output)),
            "{h:#}"
        );
    }

    // --host: one host only; an instance the deploy never reached is refused by name.
    let other = &d.runs[1].instance_id;
    let one = dropship(&p, &["logs", &v1, "--log-group", &group, "--host", other]);
    assert_eq!(one.code, 0, "{}", one.stderr);
    assert_eq!(one.stdout.matches("\n== i-").count(), 1, "{}", one.stdout);
    assert!(one.stdout.contains(&format!("== {other}  ")));
    let stranger = dropship(
        &p,
        &[
            "logs",
            &v1,
            "--log-group",
            &group,
            "--host",
            "i-0000000000000dead",
        ],
    );
    assert_eq!(stranger.code, 2, "{}", stranger.stderr);
    for run in &d.runs {
        assert!(
            stranger.stderr.contains(&run.instance_id),
            "{}",
            stranger.stderr
        );
    }
    assert!(stranger.stderr.contains("--host"), "{}", stranger.stderr);

    // Where the group comes from: nowhere → usage error naming every way to set it; a group
    // that does not exist → AWS refused, naming it and the likely cause.
    let none = dropship(&p, &["logs", &v1]);
    assert_eq!(none.code, 2, "{}", none.stderr);
    for needle in ["--log-group", "DROPSHIP_LOG_GROUP", "log_group"] {
        assert!(none.stderr.contains(needle), "{needle}: {}", none.stderr);
    }
    let missing = format!("/dropship/{}/nothing-here", p.app);
    let gone = dropship(&p, &["logs", &v1, "--log-group", &missing]);
    assert_eq!(gone.code, 5, "{}", gone.stderr);
    assert!(
        gone.stderr.contains(&missing)
            && gone
                .stderr
                .contains("the Lambda's DROPSHIP_LOG_GROUP is not set or the hosts' profile cannot write logs"),
        "{}",
        gone.stderr
    );
    // The group from DROPSHIP_LOG_GROUP works like the flag.
    let from_env = dropship_command(&p, &["logs", &v1])
        .env("DROPSHIP_LOG_GROUP", &group)
        .output()
        .unwrap();
    assert_eq!(from_env.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&from_env.stdout), out.stdout);
}

#[test]
fn doctor_passes_the_healthy_pipeline_and_names_each_fault_of_a_miswired_one() {
    let p = start();
    // moto never returns the EventBridgeConfiguration it stores: doctor's S3 calls go through
    // an endpoint that answers as S3 does, from the configuration put through it (the
    // pipeline's own, put again).
    let s3_fix = S3NotificationEndpoint::start();
    let notifications = |on: bool| {
        p.block_on(async {
            let config = if on {
                NotificationConfiguration::builder()
                    .event_bridge_configuration(EventBridgeConfiguration::builder().build())
                    .build()
            } else {
                NotificationConfiguration::builder().build()
            };
            s3_fix
                .client()
                .await
                .put_bucket_notification_configuration()
                .bucket(&p.bucket)
                .notification_configuration(config)
                .send()
                .await
                .expect("notification configuration put");
        })
    };
    notifications(true);
    let doctor = |args: &[&str]| dropship_with(&p, args, &s3_fix.aws_env());

    let versions = || {
        p.block_on(async {
            p.s3.list_object_versions()
                .bucket(&p.bucket)
                .prefix(p.key())
                .send()
                .await
                .expect("versions listed")
                .versions()
                .len()
        })
    };
    let versions_before = versions();
    let healthy = doctor(&["doctor"]);
    assert_eq!(healthy.code, 0, "{}{}", healthy.stdout, healthy.stderr);
    let may_put = format!("the caller may put s3://{}/{}", p.bucket, p.key());
    for needle in [
        may_put.as_str(),
        "calling as arn:",
        &format!("bucket {} exists", p.bucket),
        "versioning is Enabled",
        "object events go to EventBridge",
        &format!("rule {} (found by its pattern) is ENABLED", p.rule),
        "2 instance(s) tagged dropship:app=",
        "all 2 online in SSM",
        "ready: an upload now would reach every running tagged host",
    ] {
        assert!(
            healthy.stdout.contains(needle),
            "{needle:?} in:\n{}",
            healthy.stdout
        );
    }
    // The pipeline's rule targets a capture queue, not the Lambda: said, not a fault.
    assert!(
        healthy.stdout.contains("warn  rule target"),
        "{}",
        healthy.stdout
    );
    // The upload check's conditional PutObject wrote nothing.
    assert_eq!(versions(), versions_before, "doctor wrote a version");

    // A caller S3 refuses the key to: the one fault, with the policy to use; nothing written.
    let denying = FaultProxy::start(
        &s3_fix.endpoint_url(),
        vec![Fault {
            method: "PUT",
            target_contains: "/releases/",
            status: 403,
            code: "AccessDenied",
        }],
    );
    let denied = dropship_with(
        &p,
        &["doctor", "--json"],
        &[("AWS_ENDPOINT_URL_S3".to_string(), denying.endpoint())],
    );
    assert_eq!(denied.code, 12, "{}{}", denied.stdout, denied.stderr);
    assert_eq!(denying.injected(), 1, "one probe, refused");
    let report = denied.json();
    let failed: Vec<&Value> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["level"] == "fail")
        .collect();
    assert_eq!(failed.len(), 1, "{report:#}");
    assert_eq!(failed[0]["check"], "upload");
    let message = failed[0]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("may not put s3://{}/{}", p.bucket, p.key())),
        "{message}"
    );
    assert!(
        failed[0]["fix"]
            .as_str()
            .unwrap()
            .contains("uploader_policy_arns"),
        "{report:#}"
    );
    assert_eq!(versions(), versions_before);

    // A release rule that targets a deployer Lambda: doctor reads the function's
    // configuration. One whose allow-list leaves this environment out refuses every upload
    // silently; doctor names the variable and the fix, then passes once it is listed.
    let function = format!("{}-deployer", p.bucket);
    let lambda_rule = format!("{}-to-lambda", p.bucket);
    let role = dropship_tests::moto::create_lambda_role(&function);
    let lambda = p.block_on(dropship_tests::moto::lambda());
    let configure = |environments: &str| {
        aws_sdk_lambda::types::Environment::builder()
            .variables("DROPSHIP_ALLOWED_BUCKETS", p.bucket.as_str())
            .variables("DROPSHIP_ALLOWED_ENVIRONMENTS", environments)
            .variables("DROPSHIP_LOG_GROUP", log_group(&p.app))
            .build()
    };
    p.block_on(async {
        // An empty zip (its end-of-central-directory record alone): moto stores the code.
        let mut empty_zip = b"PK\x05\x06".to_vec();
        empty_zip.resize(22, 0);
        let arn = lambda
            .create_function()
            .function_name(&function)
            .runtime(aws_sdk_lambda::types::Runtime::Providedal2023)
            .handler("bootstrap")
            .role(&role)
            .code(
                aws_sdk_lambda::types::FunctionCode::builder()
                    .zip_file(aws_sdk_lambda::primitives::Blob::new(empty_zip))
                    .build(),
            )
            .environment(configure("production"))
            .send()
            .await
            .expect("function created")
            .function_arn()
            .expect("an arn")
            .to_string();
        let events = dropship_tests::moto::events().await;
        let pattern = serde_json::json!({
            "source": ["aws.s3"],
            "detail-type": ["Object Created"],
            "detail": {"bucket": {"name": [p.bucket]}, "object": {"key": [{"prefix": "releases/"}]}}
        });
        events
            .put_rule()
            .name(&lambda_rule)
            .event_pattern(pattern.to_string())
            .send()
            .await
            .expect("rule created");
        events
            .put_targets()
            .rule(&lambda_rule)
            .targets(
                aws_sdk_eventbridge::types::Target::builder()
                    .id("deployer")
                    .arn(arn)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .expect("target set");
    });
    let refused = doctor(&["doctor", "--rule", &lambda_rule]);
    assert_eq!(refused.code, 12, "{}{}", refused.stdout, refused.stderr);
    let fault = format!(
        "deployer {function} refuses environment {ENV}: DROPSHIP_ALLOWED_ENVIRONMENTS is \"production\""
    );
    let at = refused
        .stdout
        .find(&fault)
        .unwrap_or_else(|| panic!("{fault:?} in:\n{}", refused.stdout));
    let next = refused.stdout[at..].lines().nth(1).unwrap_or_default();
    assert!(
        next.contains("fix:") && next.contains("`environments` variable"),
        "{}",
        refused.stdout
    );
    p.block_on(async {
        lambda
            .update_function_configuration()
            .function_name(&function)
            .environment(configure(&format!("production, {ENV}")))
            .send()
            .await
            .expect("configuration updated");
    });
    let listed = doctor(&["doctor", "--rule", &lambda_rule]);
    assert_eq!(listed.code, 0, "{}{}", listed.stdout, listed.stderr);
    assert!(
        listed.stdout.contains(&format!(
            "deployer {function} is Active and acts on bucket {}, app {}, environment {ENV}",
            p.bucket, p.app
        )),
        "{}",
        listed.stdout
    );
    p.block_on(async {
        let events = dropship_tests::moto::events().await;
        events
            .remove_targets()
            .rule(&lambda_rule)
            .ids("deployer")
            .send()
            .await
            .expect("target removed");
        events
            .delete_rule()
            .name(&lambda_rule)
            .send()
            .await
            .expect("rule deleted");
        lambda
            .delete_function()
            .function_name(&function)
            .send()
            .await
            .expect("function deleted");
    });

    // Mis-wire it three ways: versioning suspended, the release rule gone, one agent offline.
    p.block_on(async {
        p.s3.put_bucket_versioning()
            .bucket(&p.bucket)
            .versioning_configuration(
                VersioningConfiguration::builder()
                    .status(BucketVersioningStatus::Suspended)
                    .build(),
            )
            .send()
            .await
            .expect("versioning suspended");
        let events = dropship_tests::moto::events().await;
        events
            .remove_targets()
            .rule(&p.rule)
            .ids("capture")
            .send()
            .await
            .expect("targets removed");
        events
            .delete_rule()
            .name(&p.rule)
            .send()
            .await
            .expect("rule deleted");
    });
    let offline = &p.hosts[1];
    offline.agent.set_online(false);
    notifications(false);

    let broken = doctor(&["doctor"]);
    assert_eq!(broken.code, 12, "{}{}", broken.stdout, broken.stderr);
    let text = &broken.stdout;
    for (fault, fix) in [
        ("versioning Suspended", "put-bucket-versioning"),
        (
            "does not send its events to EventBridge",
            "EventBridgeConfiguration",
        ),
        (
            &*format!(
                "no EventBridge rule on the default bus sends bucket {}'s",
                p.bucket
            ),
            "--rule",
        ),
        (
            &*format!(
                "{} is running but not online in SSM (ConnectionLost)",
                offline.instance_id
            ),
            "AmazonSSMManagedInstanceCore",
        ),
    ] {
        let at = text
            .find(fault)
            .unwrap_or_else(|| panic!("fault {fault:?} not named in:\n{text}"));
        let next = text[at..].lines().nth(1).unwrap_or_default();
        assert!(
            next.contains("fix:") && next.contains(fix),
            "fix {fix:?} under {fault:?}:\n{text}"
        );
    }
    assert!(text.contains("not ready: 4 fault(s)"), "{text}");
    assert!(
        !text.contains(&format!(
            "{} is running but not online",
            p.hosts[0].instance_id
        )),
        "{text}"
    );

    // --json: exactly those four checks fail; a named rule that is gone is named.
    let json = doctor(&["doctor", "--json"]);
    assert_eq!(json.code, 12);
    let report = json.json();
    assert_eq!(report["ready"], false);
    let failed: Vec<&str> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["level"] == "fail")
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed,
        ["versioning", "notifications", "rule", "ssm"],
        "{report:#}"
    );
    let named = doctor(&["doctor", "--rule", &p.rule]);
    assert_eq!(named.code, 12);
    assert!(
        named.stdout.contains(&format!(
            "EventBridge rule {} does not exist on the default bus",
            p.rule
        )),
        "{}",
        named.stdout
    );
    let bad_name = doctor(&["doctor", "--rule", "no/slashes"]);
    assert_eq!(bad_name.code, 2, "{}", bad_name.stderr);
}
