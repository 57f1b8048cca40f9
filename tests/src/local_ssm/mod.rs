//! A local SSM endpoint that tells the truth: the stand-in for the SSM service and its agents
//! that the real `aws-sdk-ssm` clients (the deployer Lambda, `bundle-and-upload status
//! --wait`) reach through `AWS_ENDPOINT_URL_SSM`, while everything else stays on moto.
//!
//! moto records `SendCommand` but never runs anything and answers `Success` for any
//! invocation. This endpoint runs each command on the managed instances it targets (through
//! [`ManagedInstance`]: the simulated hosts, or [`bash_instance::BashInstance`] in its own
//! suite), honouring `MaxConcurrency`, `MaxErrors`, the delivery and execution timeouts and
//! `CancelCommand`, and answers with the real statuses, exit codes and output. It emits the
//! documented status-change events to moto's EventBridge and the full output to moto's
//! CloudWatch Logs. The rules live in [`model`] as pure functions; `docs/testing.md` ("The
//! local SSM endpoint") lists what is reproduced, from which AWS document, and what differs.

mod api;
pub mod bash_instance;
pub mod emit;
pub mod model;
mod wire;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use model::InvocationState;

/// One managed instance as SSM sees it: its agent on a simulated host.
pub trait ManagedInstance: Send + Sync {
    /// EC2 instance id (`i-…`).
    fn instance_id(&self) -> &str;
    /// Tags SSM reports for DescribeInstanceInformation tag filters.
    fn tags(&self) -> Vec<(String, String)>;
    /// Whether the agent is connected now (`PingStatus: Online`); can change at any time.
    fn online(&self) -> bool;
    /// Runs an AWS-RunShellScript `commands` script as the agent does (as root), returning
    /// when it ends or when `stop` fires (then it must stop the script the way the agent
    /// does; `StopReason` says timeout or cancel).
    fn run_shell_script(&self, command_id: &str, script: &str, stop: &StopSignal) -> ScriptRun;
}

/// How one script run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptRun {
    /// The script's exit code (137 when it was stopped).
    pub exit_code: i32,
    /// Everything it wrote to stdout (until it was stopped).
    pub stdout: String,
    /// Everything it wrote to stderr (until it was stopped).
    pub stderr: String,
    /// Why it was stopped, when it was.
    pub stopped: Option<StopReason>,
}

/// Why the agent stopped a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `executionTimeout` passed.
    ExecutionTimeout,
    /// `CancelCommand`.
    Cancel,
}

/// Tells a running script's runner when to stop it: at its execution deadline, or when the
/// command is cancelled. Runners poll [`StopSignal::wait`] between checks of their process.
/// On Linux the agent then sends SIGKILL to the script's whole process group, with no grace
/// period (amazon-ssm-agent `executers`: `syscall.Kill(-pid, SIGKILL)`).
#[derive(Clone)]
pub struct StopSignal {
    inner: Arc<(Mutex<Option<StopReason>>, Condvar)>,
    deadline: Instant,
}

impl StopSignal {
    /// A signal that fires `ExecutionTimeout` after `timeout`, or `Cancel` when cancelled.
    pub fn new(timeout: Duration) -> Self {
        Self {
            inner: Arc::new((Mutex::new(None), Condvar::new())),
            deadline: Instant::now() + timeout,
        }
    }

    /// When the execution timeout fires.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether (and why) the script must stop now.
    pub fn stopped(&self) -> Option<StopReason> {
        let fired = *self.inner.0.lock().unwrap();
        fired.or_else(|| (Instant::now() >= self.deadline).then_some(StopReason::ExecutionTimeout))
    }

    /// Blocks until the signal fires or `at_most` passes; returns [`Self::stopped`].
    pub fn wait(&self, at_most: Duration) -> Option<StopReason> {
        let until = (Instant::now() + at_most).min(self.deadline);
        let (lock, cv) = &*self.inner;
        let mut fired = lock.lock().unwrap();
        while fired.is_none() {
            let now = Instant::now();
            if now >= until {
                break;
            }
            fired = cv.wait_timeout(fired, until - now).unwrap().0;
        }
        drop(fired);
        self.stopped()
    }

    /// Fires `Cancel` (unless it already fired).
    pub fn cancel(&self) {
        let (lock, cv) = &*self.inner;
        let mut fired = lock.lock().unwrap();
        if fired.is_none() && Instant::now() < self.deadline {
            *fired = Some(StopReason::Cancel);
        }
        cv.notify_all();
    }
}

/// Where the endpoint sends events and logs, and the few knobs a test needs.
#[derive(Debug, Clone)]
pub struct LocalSsmConfig {
    /// moto's endpoint (`AWS_ENDPOINT_URL`): EventBridge `PutEvents` and CloudWatch Logs.
    pub moto_endpoint: String,
    /// The region SSM speaks for (instance ARNs in events, `OutputS3Region`).
    pub region: String,
    /// How long one second of a delivery timeout lasts here. AWS's minimum `TimeoutSeconds`
    /// is 30: tests shorten the wait for an offline agent with e.g. 20 ms, while execution
    /// timeouts always run in real seconds.
    pub delivery_second: Duration,
    /// How long a new invocation stays unknown to `GetCommandInvocation`
    /// (`InvocationDoesNotExist`) and `ListCommandInvocations`, as right after SendCommand
    /// on AWS.
    pub registration_delay: Duration,
}

impl LocalSsmConfig {
    /// moto from `AWS_ENDPOINT_URL` and the region from `AWS_REGION` (as `scripts/test`
    /// exports them), real-time delivery timeouts, a 200 ms registration delay.
    pub fn from_env() -> Self {
        Self {
            moto_endpoint: crate::moto::endpoint(),
            region: std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
            delivery_second: Duration::from_secs(1),
            registration_delay: Duration::from_millis(200),
        }
    }
}

/// The endpoint: an HTTP server on `127.0.0.1:<ephemeral>` speaking SSM's JSON 1.1 protocol.
/// Dropping it stops the server, lets running scripts finish (each within its execution
/// timeout), abandons deliveries still waiting for an agent and sends the queued events.
pub struct LocalSsm {
    shared: Arc<Shared>,
    port: u16,
    server: Option<JoinHandle<()>>,
}

/// The command document `infra/` creates for each environment class
/// (`aws_ssm_document.deploy`), from the same file.
pub const DEPLOY_DOCUMENT_CONTENT: &str =
    include_str!("../../../infra/documents/deploy-command.json");
/// The name the suites give it (one deployer serves every environment there; `infra/`
/// names one per class, `<name_prefix>-deploy-<class>`): the deployer's
/// `DROPSHIP_COMMAND_DOCUMENT`.
pub const DEPLOY_DOCUMENT: &str = "dropship-deploy-suite";

impl LocalSsm {
    /// Creates [`DEPLOY_DOCUMENT`] from [`DEPLOY_DOCUMENT_CONTENT`] through the real API
    /// (`CreateDocument`, JSON, `Command`), as Terraform's `aws_ssm_document` does; returns
    /// its name.
    pub async fn create_deploy_document(&self) -> String {
        self.client()
            .await
            .create_document()
            .name(DEPLOY_DOCUMENT)
            .content(DEPLOY_DOCUMENT_CONTENT)
            .document_type(aws_sdk_ssm::types::DocumentType::Command)
            .document_format(aws_sdk_ssm::types::DocumentFormat::Json)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "CreateDocument {DEPLOY_DOCUMENT} on the local SSM endpoint: {}",
                    aws_sdk_ssm::error::DisplayErrorContext(&e)
                )
            });
        DEPLOY_DOCUMENT.to_owned()
    }

    /// Binds an ephemeral loopback port and starts serving.
    pub fn start(cfg: LocalSsmConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            emitter: emit::Emitter::start(cfg.moto_endpoint.clone(), cfg.region.clone()),
            cfg,
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            shutdown: AtomicBool::new(false),
            workers: Mutex::new(Vec::new()),
        });
        let server = wire::serve(listener, shared.clone());
        Self {
            shared,
            port,
            server: Some(server),
        }
    }

    /// `http://127.0.0.1:<port>`: the value of `AWS_ENDPOINT_URL_SSM`.
    pub fn endpoint_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The variables a child process (the Lambda binary, `bundle-and-upload`) needs to reach
    /// this endpoint for SSM, beside [`crate::moto::aws_env`] for everything else.
    pub fn aws_env(&self) -> Vec<(String, String)> {
        ssm_env(&self.endpoint_url())
    }

    /// A real `aws-sdk-ssm` client for this endpoint (credentials and region from the
    /// environment, as for moto).
    pub async fn client(&self) -> aws_sdk_ssm::Client {
        let sdk = crate::moto::sdk_config().await;
        let conf = aws_sdk_ssm::config::Builder::from(&sdk)
            .endpoint_url(self.endpoint_url())
            .build();
        aws_sdk_ssm::Client::from_conf(conf)
    }

    /// Registers an instance's agent (a host that starts late can be added at any time).
    pub fn add_instance(&self, instance: Arc<dyn ManagedInstance>) {
        let now = SystemTime::now();
        let id = instance.instance_id().to_string();
        self.shared.lock().instances.insert(
            id,
            Registered {
                instance,
                registered: now,
                last_ping: now,
            },
        );
        self.shared.changed.notify_all();
    }

    /// Deregisters an instance (terminated, or its managed-instance record removed): commands
    /// still waiting for it end `Undeliverable`; new ones are refused (`InvalidInstanceId`).
    pub fn remove_instance(&self, instance_id: &str) {
        self.shared.lock().instances.remove(instance_id);
        self.shared.changed.notify_all();
    }

    /// Waits until every event and log queued so far reached moto.
    pub fn flush(&self) {
        self.shared.emitter.flush();
    }

    /// Every `PutEvents` / CloudWatch Logs call that failed so far (tests assert none).
    pub fn emission_errors(&self) -> Vec<String> {
        self.shared.emitter.errors()
    }
}

/// `AWS_ENDPOINT_URL_SSM=<url>`: the one variable that points a child's SSM client at a local
/// endpoint.
pub fn ssm_env(endpoint_url: &str) -> Vec<(String, String)> {
    vec![("AWS_ENDPOINT_URL_SSM".to_string(), endpoint_url.to_string())]
}

impl Drop for LocalSsm {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        // Unblock accept().
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
        loop {
            let next = self.shared.workers.lock().unwrap().pop();
            match next {
                Some(worker) => {
                    let _ = worker.join();
                }
                None => break,
            }
        }
        // Let go of the agents now: an idle keep-alive connection's thread holds `shared` for
        // up to its read timeout, and a simulated host (its engine's data, its directory) is
        // removed only when the last reference to its agent goes. A process that exits sooner
        // would leave the directory behind.
        self.shared.lock().instances.clear();
        self.shared.emitter.flush();
        self.shared.emitter.stop();
    }
}

/// A registered agent.
struct Registered {
    instance: Arc<dyn ManagedInstance>,
    registered: SystemTime,
    last_ping: SystemTime,
}

/// Everything SSM knows, behind one lock.
#[derive(Default)]
struct State {
    commands: Vec<CommandRecord>,
    instances: BTreeMap<String, Registered>,
    /// Documents made with `CreateDocument` (`AWS-RunShellScript` is always there).
    documents: BTreeMap<String, model::Document>,
}

/// One `SendCommand`.
struct CommandRecord {
    id: String,
    document_name: String,
    /// The plugin each invocation reports (the document's one step).
    plugin: String,
    comment: String,
    /// The parameters as sent (echoed by ListCommands and in events).
    parameters: Value,
    /// `commands` joined with newlines, as the agent writes its `_script.sh`.
    script: String,
    instance_ids: Vec<String>,
    requested: SystemTime,
    /// `ExpiresAfter`: requested + (TimeoutSeconds + executionTimeout) × `delivery_second`.
    expires_after: SystemTime,
    expires_at: Instant,
    timeout_seconds: u32,
    execution_timeout: u32,
    max_concurrency: String,
    max_errors: String,
    concurrency_limit: usize,
    error_limit: usize,
    /// `CloudWatchOutputConfig` as sent: group name (may be empty) and enabled.
    cloudwatch: Option<(String, bool)>,
    cancel_requested: bool,
    status: (&'static str, &'static str),
    invocations: Vec<InvocationRecord>,
}

/// One instance of a command.
struct InvocationRecord {
    instance_id: String,
    state: InvocationState,
    /// Handed to delivery (holds a concurrency slot until terminal).
    started: bool,
    visible_at: Instant,
    stop: Option<StopSignal>,
    response_code: i32,
    /// Full outputs (what CloudWatch Logs gets); the API cuts them.
    stdout: String,
    stderr: String,
    execution_start: Option<SystemTime>,
    execution_end: Option<SystemTime>,
}

impl CommandRecord {
    fn facts<'a>(&'a self, region: &'a str) -> emit::EventFacts<'a> {
        emit::EventFacts {
            command_id: &self.id,
            document_name: &self.document_name,
            requested: self.requested,
            expires_after: self.expires_after,
            parameters: &self.parameters,
            instance_ids: &self.instance_ids,
            region,
        }
    }

    fn states(&self) -> Vec<InvocationState> {
        self.invocations.iter().map(|i| i.state).collect()
    }
}

/// The state and the threads' means to wait for and announce changes.
struct Shared {
    cfg: LocalSsmConfig,
    state: Mutex<State>,
    /// Notified on every state change (an invocation moved, a cancel, an instance came or went).
    changed: Condvar,
    emitter: emit::Emitter,
    shutdown: AtomicBool,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// How often waiting threads look at an agent's `online()` (it can change at any time and
/// says nothing when it does).
const POLL: Duration = Duration::from_millis(20);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// Moves an invocation to `to`, emits its status-change event and, when the command's
    /// own status changes with it, the command's.
    fn transition(&self, st: &mut State, c: usize, i: usize, to: InvocationState) {
        let region = &self.cfg.region;
        let cmd = &mut st.commands[c];
        if cmd.invocations[i].state == to {
            return;
        }
        cmd.invocations[i].state = to;
        let instance = cmd.invocations[i].instance_id.clone();
        self.emitter.event(emit::invocation_event(
            &cmd.facts(region),
            &instance,
            to.status(),
        ));
        self.refresh_command_status(cmd);
        self.changed.notify_all();
    }

    fn refresh_command_status(&self, cmd: &mut CommandRecord) {
        let status = model::command_status(&cmd.states(), cmd.error_limit, cmd.cancel_requested);
        if status != cmd.status {
            cmd.status = status;
            self.emitter
                .event(emit::command_event(&cmd.facts(&self.cfg.region), status.0));
        }
    }

    fn spawn(self: &Arc<Self>, name: String, work: impl FnOnce(Arc<Shared>) + Send + 'static) {
        let shared = self.clone();
        let handle = std::thread::Builder::new()
            .name(name)
            .spawn(move || work(shared))
            .expect("spawn a local SSM thread");
        self.workers.lock().unwrap().push(handle);
    }
}

/// Starts the command's targets in `InstanceIds` order within its rate controls, until every
/// invocation is terminal.
fn dispatch(shared: Arc<Shared>, c: usize) {
    let mut st = shared.lock();
    loop {
        if shared.shutting_down() {
            return;
        }
        let cmd = &st.commands[c];
        let progress = model::Progress {
            targets: cmd.invocations.len(),
            started: cmd
                .invocations
                .iter()
                .filter(|i| i.started || i.state.is_terminal())
                .count(),
            in_flight: cmd
                .invocations
                .iter()
                .filter(|i| i.started && !i.state.is_terminal())
                .count(),
            errors: cmd
                .invocations
                .iter()
                .filter(|i| i.state.counts_as_error())
                .count(),
        };
        match model::next_dispatch(cmd.concurrency_limit, cmd.error_limit, progress) {
            model::Dispatch::Start => {
                let i = cmd
                    .invocations
                    .iter()
                    .position(|i| !i.started && !i.state.is_terminal())
                    .expect("a target not started yet");
                st.commands[c].invocations[i].started = true;
                let name = format!("ssm-{}", st.commands[c].invocations[i].instance_id);
                shared.spawn(name, move |s| deliver_and_run(s, c, i));
                continue;
            }
            model::Dispatch::StopForErrors => {
                let waiting: Vec<usize> = (0..cmd.invocations.len())
                    .filter(|&i| {
                        !cmd.invocations[i].started && !cmd.invocations[i].state.is_terminal()
                    })
                    .collect();
                for i in waiting {
                    shared.transition(&mut st, c, i, InvocationState::Terminated);
                }
                continue;
            }
            model::Dispatch::AllStarted
                if cmd.invocations.iter().all(|i| i.state.is_terminal()) =>
            {
                return;
            }
            model::Dispatch::AllStarted | model::Dispatch::Wait => {}
        }
        st = shared.changed.wait_timeout(st, POLL * 5).unwrap().0;
    }
}

/// One invocation: wait for the agent (until the command expires or the instance is gone),
/// run the script with its execution timeout, upload its output, report.
fn deliver_and_run(shared: Arc<Shared>, c: usize, i: usize) {
    let mut st = shared.lock();
    let instance = loop {
        if shared.shutting_down() || st.commands[c].invocations[i].state.is_terminal() {
            return;
        }
        let id = st.commands[c].invocations[i].instance_id.clone();
        let expired = Instant::now() >= st.commands[c].expires_at;
        let gone_or_expired = match st.instances.get_mut(&id) {
            None => Some(InvocationState::Undeliverable),
            Some(reg) if reg.instance.online() => {
                reg.last_ping = SystemTime::now();
                break reg.instance.clone();
            }
            Some(_) if expired => Some(InvocationState::DeliveryTimedOut),
            Some(_) => None,
        };
        if let Some(end) = gone_or_expired {
            shared.transition(&mut st, c, i, end);
            return;
        }
        st = shared.changed.wait_timeout(st, POLL).unwrap().0;
    };
    let cmd = &mut st.commands[c];
    let stop = StopSignal::new(Duration::from_secs(cmd.execution_timeout.into()));
    let (command_id, script, plugin) = (cmd.id.clone(), cmd.script.clone(), cmd.plugin.clone());
    let log_group = match &cmd.cloudwatch {
        Some((group, true)) if group.is_empty() => {
            Some(model::default_log_group(&cmd.document_name))
        }
        Some((group, true)) => Some(group.clone()),
        _ => None,
    };
    cmd.invocations[i].stop = Some(stop.clone());
    cmd.invocations[i].execution_start = Some(SystemTime::now());
    shared.transition(&mut st, c, i, InvocationState::InProgress);
    let instance_id = st.commands[c].invocations[i].instance_id.clone();
    drop(st);

    let run = instance.run_shell_script(&command_id, &script, &stop);

    let state = model::finished_state(run.exit_code, run.stopped);
    let response_code = if run.stopped.is_some() {
        model::STOPPED_EXIT_CODE
    } else {
        run.exit_code
    };
    let stderr = model::agent_stderr(&run.stderr, run.exit_code, state);
    if let Some(group) = log_group {
        // A failed upload is recorded by the emitter (and shown by emission_errors); the
        // invocation still reports what the script did, as the agent does.
        let _ = shared.emitter.upload_logs(emit::LogUpload {
            group,
            streams: vec![
                (
                    model::log_stream(&command_id, &instance_id, &plugin, "stdout"),
                    run.stdout.clone(),
                ),
                (
                    model::log_stream(&command_id, &instance_id, &plugin, "stderr"),
                    stderr.clone(),
                ),
            ],
        });
    }
    let mut st = shared.lock();
    let inv = &mut st.commands[c].invocations[i];
    inv.response_code = response_code;
    inv.stdout = run.stdout;
    inv.stderr = stderr;
    inv.execution_end = Some(SystemTime::now());
    shared.transition(&mut st, c, i, state);
}
