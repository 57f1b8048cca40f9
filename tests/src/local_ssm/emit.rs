//! What SSM and its agent tell other AWS services, sent to moto through the real SDK clients:
//! the Run Command status-change events (EventBridge `PutEvents` on the default bus) and the
//! command output in CloudWatch Logs. One thread with its own Tokio runtime sends them in the
//! order they happened; failures are kept and shown by [`Emitter::errors`], never swallowed.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use aws_sdk_eventbridge::primitives::DateTime;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;
use serde_json::{json, Value};

use super::model;

/// `detail-type` of a command's status change.
pub const COMMAND_STATUS_CHANGE: &str = "EC2 Command Status-change Notification";
/// `detail-type` of one invocation's status change.
pub const INVOCATION_STATUS_CHANGE: &str = "EC2 Command Invocation Status-change Notification";
/// `source` of every SSM event.
pub const SSM_SOURCE: &str = "aws.ssm";

/// The facts of a command the events carry.
pub struct EventFacts<'a> {
    /// `CommandId`.
    pub command_id: &'a str,
    /// `DocumentName`.
    pub document_name: &'a str,
    /// When the command was requested.
    pub requested: SystemTime,
    /// When it expires (`ExpiresAfter`).
    pub expires_after: SystemTime,
    /// The parameters as sent.
    pub parameters: &'a Value,
    /// The target instance ids.
    pub instance_ids: &'a [String],
    /// The region the instances live in (for their ARNs).
    pub region: &'a str,
}

/// `EC2 Command Invocation Status-change Notification`: detail and resources.
pub fn invocation_event(facts: &EventFacts, instance_id: &str, status: &str) -> Event {
    Event {
        detail_type: INVOCATION_STATUS_CHANGE,
        detail: json!({
            "command-id": facts.command_id,
            "document-name": facts.document_name,
            "instance-id": instance_id,
            "requested-date-time": model::iso_millis(facts.requested),
            "status": status,
        }),
        resources: vec![model::instance_arn(facts.region, instance_id)],
        time: SystemTime::now(),
    }
}

/// `EC2 Command Status-change Notification`: detail and resources (every target).
pub fn command_event(facts: &EventFacts, status: &str) -> Event {
    Event {
        detail_type: COMMAND_STATUS_CHANGE,
        detail: json!({
            "command-id": facts.command_id,
            "document-name": facts.document_name,
            "expire-after": model::iso_millis(facts.expires_after),
            "parameters": facts.parameters,
            "requested-date-time": model::iso_millis(facts.requested),
            "status": status,
        }),
        resources: facts
            .instance_ids
            .iter()
            .map(|id| model::instance_arn(facts.region, id))
            .collect(),
        time: SystemTime::now(),
    }
}

/// One status-change event to put on the default bus.
#[derive(Debug, Clone)]
pub struct Event {
    /// `detail-type`.
    pub detail_type: &'static str,
    /// `detail`.
    pub detail: Value,
    /// `resources` (instance ARNs).
    pub resources: Vec<String>,
    /// The event's `time`.
    pub time: SystemTime,
}

/// One invocation's output for CloudWatch Logs.
pub struct LogUpload {
    /// Log group (created when missing, as the agent does).
    pub group: String,
    /// `(stream name, output)`; empty outputs get no stream.
    pub streams: Vec<(String, String)>,
}

enum Job {
    Event(Event),
    Logs(LogUpload, mpsc::Sender<Result<(), String>>),
    Flush(mpsc::Sender<()>),
}

/// The sending thread; dropping it sends what is queued, then stops the thread.
pub struct Emitter {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    errors: Arc<Mutex<Vec<String>>>,
}

/// How long an invocation waits for its output to reach CloudWatch Logs before it reports
/// the upload as failed.
const LOG_UPLOAD_TIMEOUT: Duration = Duration::from_secs(60);

impl Emitter {
    /// Starts the thread; its clients reach `endpoint` (moto) in `region`.
    pub fn start(endpoint: String, region: String) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let errs = errors.clone();
        let thread = std::thread::Builder::new()
            .name("local-ssm-emit".into())
            .spawn(move || run(endpoint, region, rx, errs))
            .expect("spawn the local SSM emitter thread");
        Self {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            errors,
        }
    }

    /// Queues an event (sent in order, asynchronously).
    pub fn event(&self, event: Event) {
        self.send(Job::Event(event));
    }

    /// Uploads output and waits until CloudWatch Logs has it, as the agent finishes its
    /// upload before it reports the invocation's final status.
    pub fn upload_logs(&self, upload: LogUpload) -> Result<(), String> {
        let group = upload.group.clone();
        let (done, wait) = mpsc::channel();
        self.send(Job::Logs(upload, done));
        wait.recv_timeout(LOG_UPLOAD_TIMEOUT)
            .unwrap_or_else(|_| Err(format!("CloudWatch Logs upload to {group} did not finish")))
    }

    /// Waits until everything queued so far was sent.
    pub fn flush(&self) {
        let (done, wait) = mpsc::channel();
        self.send(Job::Flush(done));
        let _ = wait.recv_timeout(LOG_UPLOAD_TIMEOUT);
    }

    /// Every failed `PutEvents` or CloudWatch Logs call so far.
    pub fn errors(&self) -> Vec<String> {
        self.errors.lock().unwrap().clone()
    }

    fn send(&self, job: Job) {
        if let Some(tx) = self.tx.lock().unwrap().as_ref() {
            let _ = tx.send(job);
        }
    }
}

impl Emitter {
    /// Sends what is queued, then ends the thread; later events are dropped.
    pub fn stop(&self) {
        self.tx.lock().unwrap().take();
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
        }
    }
}

impl Drop for Emitter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(endpoint: String, region: String, rx: mpsc::Receiver<Job>, errors: Arc<Mutex<Vec<String>>>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime for the local SSM emitter");
    let (events, logs) = rt.block_on(async {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(aws_config::Region::new(region))
            .load()
            .await;
        (
            aws_sdk_eventbridge::Client::new(&conf),
            aws_sdk_cloudwatchlogs::Client::new(&conf),
        )
    });
    let record = |e: String| {
        eprintln!("local SSM endpoint: {e}");
        errors.lock().unwrap().push(e);
    };
    for job in rx {
        match job {
            Job::Event(event) => {
                if let Err(e) = rt.block_on(put_event(&events, &event)) {
                    record(e);
                }
            }
            Job::Logs(upload, done) => {
                let result = rt.block_on(put_logs(&logs, &upload));
                if let Err(e) = &result {
                    record(e.clone());
                }
                let _ = done.send(result);
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

async fn put_event(client: &aws_sdk_eventbridge::Client, event: &Event) -> Result<(), String> {
    let what = format!("PutEvents {} {}", event.detail_type, event.detail);
    let entry = PutEventsRequestEntry::builder()
        .source(SSM_SOURCE)
        .detail_type(event.detail_type)
        .detail(event.detail.to_string())
        .set_resources(Some(event.resources.clone()))
        .time(DateTime::from(event.time))
        .build();
    let out = client
        .put_events()
        .entries(entry)
        .send()
        .await
        .map_err(|e| {
            format!(
                "{what}: {}",
                aws_sdk_eventbridge::error::DisplayErrorContext(e)
            )
        })?;
    if out.failed_entry_count() > 0 {
        let why: Vec<String> = out
            .entries()
            .iter()
            .filter_map(|e| {
                e.error_code()
                    .map(|c| format!("{c}: {}", e.error_message().unwrap_or_default()))
            })
            .collect();
        return Err(format!("{what}: entry refused ({})", why.join("; ")));
    }
    Ok(())
}

async fn put_logs(
    client: &aws_sdk_cloudwatchlogs::Client,
    upload: &LogUpload,
) -> Result<(), String> {
    use aws_sdk_cloudwatchlogs::error::DisplayErrorContext;
    let group = &upload.group;
    if let Err(e) = client.create_log_group().log_group_name(group).send().await {
        let exists = e
            .as_service_error()
            .is_some_and(|s| s.is_resource_already_exists_exception());
        if !exists {
            return Err(format!(
                "CreateLogGroup {group}: {}",
                DisplayErrorContext(e)
            ));
        }
    }
    for (stream, output) in &upload.streams {
        let messages = model::log_messages(output);
        if messages.is_empty() {
            continue;
        }
        if let Err(e) = client
            .create_log_stream()
            .log_group_name(group)
            .log_stream_name(stream)
            .send()
            .await
        {
            let exists = e
                .as_service_error()
                .is_some_and(|s| s.is_resource_already_exists_exception());
            if !exists {
                return Err(format!(
                    "CreateLogStream {group} {stream}: {}",
                    DisplayErrorContext(e)
                ));
            }
        }
        let now = model::epoch_seconds(SystemTime::now());
        let timestamp = (now * 1000.0) as i64;
        // PutLogEvents takes up to 1 MB per call: 16 pieces of ≤ 50,000 characters at a time.
        for batch in messages.chunks(16) {
            let events: Vec<InputLogEvent> = batch
                .iter()
                .map(|m| {
                    InputLogEvent::builder()
                        .timestamp(timestamp)
                        .message(m)
                        .build()
                        .expect("timestamp and message are set")
                })
                .collect();
            client
                .put_log_events()
                .log_group_name(group)
                .log_stream_name(stream)
                .set_log_events(Some(events))
                .send()
                .await
                .map_err(|e| {
                    format!("PutLogEvents {group} {stream}: {}", DisplayErrorContext(e))
                })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn documented() -> Value {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/ssm-run-command-events.json"
        );
        serde_json::from_str(&std::fs::read_to_string(path).expect("events fixture"))
            .expect("fixture is JSON")
    }

    fn keys(v: &Value) -> BTreeSet<String> {
        v.as_object().expect("object").keys().cloned().collect()
    }

    fn facts(parameters: &Value, ids: &[String]) -> EventFacts<'static> {
        let parameters: &'static Value = Box::leak(Box::new(parameters.clone()));
        let ids: &'static [String] = Box::leak(ids.to_vec().into_boxed_slice());
        EventFacts {
            command_id: "e8d3c0e4-71f7-4491-898f-c9b35bee5f3b",
            document_name: "AWS-RunShellScript",
            requested: SystemTime::UNIX_EPOCH + Duration::from_millis(1_468_187_490_049),
            expires_after: SystemTime::UNIX_EPOCH + Duration::from_millis(1_468_533_690_049),
            parameters,
            instance_ids: ids,
            region: "us-east-1",
        }
    }

    #[test]
    fn the_invocation_event_has_the_documented_shape() {
        let doc = &documented()["invocation_status_change"];
        let f = facts(&json!({"commands": ["date"]}), &["i-9bb89e2b".into()]);
        let ev = invocation_event(&f, "i-9bb89e2b", "Success");
        assert_eq!(ev.detail_type, doc["detail-type"]);
        assert_eq!(SSM_SOURCE, doc["source"]);
        assert_eq!(keys(&ev.detail), keys(&doc["detail"]));
        assert_eq!(
            ev.detail["requested-date-time"],
            doc["detail"]["requested-date-time"]
        );
        assert_eq!(ev.detail["instance-id"], "i-9bb89e2b");
        assert_eq!(
            ev.resources,
            vec!["arn:aws:ec2:us-east-1:123456789012:instance/i-9bb89e2b"]
        );
    }

    #[test]
    fn the_command_event_has_the_documented_shape() {
        let doc = &documented()["command_status_change"];
        let params = doc["detail"]["parameters"].clone();
        let f = facts(&params, &["i-abcd1111".into()]);
        let ev = command_event(&f, "Success");
        assert_eq!(ev.detail_type, doc["detail-type"]);
        assert_eq!(keys(&ev.detail), keys(&doc["detail"]));
        assert_eq!(ev.detail["expire-after"], doc["detail"]["expire-after"]);
        assert_eq!(ev.detail["parameters"], doc["detail"]["parameters"]);
        assert_eq!(ev.resources, vec![doc["resources"][0].as_str().unwrap()]);
    }
}
