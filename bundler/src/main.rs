//! `bundle-and-upload`: bundle the git tree at HEAD and upload it as a new S3 version.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use dropship_bundler::bundle::{self, BundleError, BundleRequest, Discard, PreparedBundle};
use dropship_bundler::config::{Config, ConfigError, ConfigFile, Overrides, CONFIG_FILE};
use dropship_bundler::ops::aws::Clients;
use dropship_bundler::ops::wait::{self, WaitOptions, WaitReport};
use dropship_bundler::ops::{restore, versions, OpsError, Target};
use dropship_bundler::s3::{Bucket, S3Error};
use dropship_bundler::upload::{self, UploadError, UploadTuning};
use dropship_contract::key::ReleaseKey;
use dropship_contract::metadata::{ObjectMetadata, Source};
use indicatif::{ProgressBar, ProgressStyle};

const EXIT_CODES: &str = "\
Exit codes:
  0  success (with --wait: deployed on every host)
  1  unexpected internal error
  2  usage or dropship.toml invalid; unknown version id or delete marker; restore not confirmed
  3  git state: not a repository, no commits, or uncommitted changes
  4  content refused: secrets, unsafe symlinks, oversized files
  5  AWS refused: bucket missing, versioning off, access denied, no credentials
  6  network failure: retry (a failed upload or restore wrote nothing)
With --wait (upload and restore), once the new version exists:
  7  the deployer refused the version (rejected, no targets, stale): no host was touched
  8  rolled back on at least one host: its previous release serves again
  9  failed on at least one host before switching, or undeliverable, timed out, cancelled
  10 rollback failed on at least one host: it needs an operator
  11 --wait-timeout passed first; follow with `bundle-and-upload status <version>`

Operator commands: `versions`, `status [VERSION]`, `restore VERSION` (see --help of each).";

/// Bundle the git tree at HEAD into a deterministic .tar.gz and upload it to
/// s3://<bucket>/releases/<app>/<env>.tar.gz as a new object version.
#[derive(Parser, Debug)]
#[command(name = "bundle-and-upload", version, after_help = EXIT_CODES, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    upload: UploadArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the deploy history of an app/env: every version of its key with time, branch,
    /// commit, uploader and what the deployer did with it.
    #[command(after_help = EXIT_CODES)]
    Versions(VersionsArgs),
    /// Show what one version did on every host (default: the key's current version).
    #[command(after_help = EXIT_CODES)]
    Status(StatusArgs),
    /// Copy an older version on top of the key (metadata kept, plus `restored-from`), so the
    /// deployer deploys it again as a new version.
    #[command(after_help = EXIT_CODES)]
    Restore(RestoreArgs),
}

/// Which app/env and bucket an operator command reads (dropship.toml, then env, then flags).
#[derive(Args, Debug, Clone)]
struct TargetArgs {
    /// Repository whose dropship.toml to read (any directory inside it).
    #[arg(long, default_value = ".", env = "DROPSHIP_REPO")]
    repo: PathBuf,
    /// Config file (default: dropship.toml at the repository root, if there is one).
    #[arg(long, env = "DROPSHIP_CONFIG")]
    config: Option<PathBuf>,
    /// App name (overrides `app`).
    #[arg(long, env = "DROPSHIP_APP")]
    app: Option<String>,
    /// Environment (overrides `default_env`).
    #[arg(long, short, env = "DROPSHIP_ENV")]
    env: Option<String>,
    /// Artifact bucket (overrides `bucket`).
    #[arg(long, env = "DROPSHIP_BUCKET")]
    bucket: Option<String>,
    /// AWS region (overrides `region`).
    #[arg(long, env = "DROPSHIP_REGION")]
    region: Option<String>,
    /// AWS shared-config profile.
    #[arg(long, env = "DROPSHIP_AWS_PROFILE")]
    profile: Option<String>,
}

/// `--wait` and its settings, shared by upload and restore.
#[derive(Args, Debug, Clone)]
struct WaitArgs {
    /// Follow the deploy of the new version to a per-host result; the exit code reflects it.
    #[arg(long)]
    wait: bool,
    /// How long --wait follows before giving up (seconds, or with s, m, h).
    #[arg(long, default_value = "15m", value_parser = wait::parse_duration, env = "DROPSHIP_WAIT_TIMEOUT")]
    wait_timeout: Duration,
    /// Pause between polls while waiting, in milliseconds.
    #[arg(long, default_value_t = 2000, env = "DROPSHIP_POLL_INTERVAL_MS")]
    poll_interval_ms: u64,
}

impl WaitArgs {
    fn options(&self) -> WaitOptions {
        WaitOptions {
            timeout: self.wait_timeout,
            poll: Duration::from_millis(self.poll_interval_ms.max(10)),
        }
    }
}

#[derive(Args, Debug, Clone)]
struct VersionsArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Show this many newest versions.
    #[arg(long, default_value_t = 20)]
    limit: usize,
    /// One table for every environment listed in dropship.toml.
    #[arg(long)]
    all_envs: bool,
    /// Print JSON (an array with one entry per app/env) instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Clone)]
struct StatusArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Version id to report on (default: the key's current version).
    version: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Clone)]
struct RestoreArgs {
    #[command(flatten)]
    target: TargetArgs,
    /// Version id to restore (see `versions`).
    version_id: String,
    /// Do not ask for confirmation (required when not on a terminal).
    #[arg(long, short)]
    yes: bool,
    #[command(flatten)]
    wait: WaitArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug, Clone)]
struct UploadArgs {
    /// Repository to bundle (any directory inside it).
    #[arg(long, default_value = ".", env = "DROPSHIP_REPO")]
    repo: PathBuf,
    /// Config file (default: dropship.toml at the repository root).
    #[arg(long, env = "DROPSHIP_CONFIG")]
    config: Option<PathBuf>,
    /// App name (overrides `app`).
    #[arg(long, env = "DROPSHIP_APP")]
    app: Option<String>,
    /// Environment to deploy to (overrides `default_env`).
    #[arg(long, short, env = "DROPSHIP_ENV")]
    env: Option<String>,
    /// Artifact bucket (overrides `bucket`).
    #[arg(long, env = "DROPSHIP_BUCKET")]
    bucket: Option<String>,
    /// AWS region (overrides `region`; default: the AWS SDK's resolution).
    #[arg(long, env = "DROPSHIP_REGION")]
    region: Option<String>,
    /// AWS shared-config profile.
    #[arg(long, env = "DROPSHIP_AWS_PROFILE")]
    profile: Option<String>,
    /// Branch to record (default: git's, or the CI's on a detached HEAD).
    #[arg(long, env = "DROPSHIP_BRANCH")]
    branch: Option<String>,
    /// Bundle tracked and untracked (not ignored) working-tree files, marked dirty.
    #[arg(long)]
    allow_dirty: bool,
    /// Allow one path that looks like a secret (repeatable).
    #[arg(long = "allow-secret", value_name = "PATH")]
    allow_secret: Vec<String>,
    /// Largest file allowed in the bundle, in bytes.
    #[arg(long, env = "DROPSHIP_MAX_FILE_BYTES")]
    max_file_bytes: Option<u64>,
    /// gzip level, 1 (fast) to 9 (small).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=9), env = "DROPSHIP_LEVEL")]
    level: u32,
    /// Compression threads (default: all cores).
    #[arg(long, env = "DROPSHIP_THREADS")]
    threads: Option<usize>,
    /// Bundles larger than this many bytes use a streaming multipart upload.
    #[arg(long, default_value_t = 16 * 1024 * 1024, env = "DROPSHIP_MULTIPART_THRESHOLD")]
    multipart_threshold: u64,
    /// Multipart part size in bytes (at least 5 MiB).
    #[arg(long, default_value_t = 8 * 1024 * 1024, env = "DROPSHIP_PART_SIZE")]
    part_size: usize,
    /// Write the bundle to FILE instead of uploading (e.g. a CI artifact).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Do everything except the upload (no AWS calls) and print the summary.
    #[arg(long)]
    dry_run: bool,
    /// Print the summary as JSON on stdout (for CI).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    wait: WaitArgs,
}

/// Maps failures to the documented exit codes.
fn exit_code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<UploadError>() {
            return match e {
                UploadError::Bundle(b) => bundle_code(b),
                UploadError::S3(s) => s3_code(s),
                UploadError::TreeChanged { .. } => 6,
                UploadError::MultipartAborted { cause, .. } => s3_code(cause),
                UploadError::Internal(_) => 1,
            };
        }
        if let Some(b) = cause.downcast_ref::<BundleError>() {
            return bundle_code(b);
        }
        if let Some(s) = cause.downcast_ref::<S3Error>() {
            return s3_code(s);
        }
        if let Some(o) = cause.downcast_ref::<OpsError>() {
            return match o {
                OpsError::S3(s) => s3_code(s),
                o if o.is_usage() => 2,
                o if o.is_transient() => 6,
                _ => 5,
            };
        }
        if cause.downcast_ref::<ConfigError>().is_some() {
            return 2;
        }
    }
    1
}

fn bundle_code(e: &BundleError) -> u8 {
    match e {
        BundleError::Git(_) => 3,
        BundleError::Config(_) => 2,
        BundleError::Refused(_) => 4,
        BundleError::Io(_) => 1,
    }
}

fn s3_code(e: &S3Error) -> u8 {
    if e.is_transient() {
        6
    } else {
        5
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.is_none()
        && cli.upload.wait.wait
        && (cli.upload.output.is_some() || cli.upload.dry_run)
    {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--wait follows the deploy of an upload; --output and --dry-run upload nothing: drop one of them",
            )
            .exit();
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DROPSHIP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        None => runtime.block_on(run_upload(cli.upload)),
        Some(Command::Versions(args)) => runtime.block_on(run_versions(args)),
        Some(Command::Status(args)) => runtime.block_on(run_status(args)),
        Some(Command::Restore(args)) => runtime.block_on(run_restore(args)),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(exit_code_for(&err))
        }
    }
}

fn progress_bar(args: &UploadArgs, total: u64) -> ProgressBar {
    if args.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} bundling {msg} {bytes}/{total_bytes} ({binary_bytes_per_sec}) {wide_bar}",
        )
        .expect("valid template"),
    );
    bar
}

fn tuning(args: &UploadArgs) -> UploadTuning {
    UploadTuning {
        level: args.level,
        threads: args.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        multipart_threshold: args.multipart_threshold,
        part_size: args.part_size,
    }
}

/// Who uploaded: explicit, the CI's actor, git's user, or the OS user.
fn uploader(prepared: &PreparedBundle) -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    env("DROPSHIP_UPLOADER")
        .or_else(|| env("GITHUB_ACTOR"))
        .or_else(|| env("GITLAB_USER_LOGIN"))
        .or_else(|| {
            dropship_bundler::git::Repo::discover(prepared.root())
                .ok()
                .and_then(|r| r.config("user.email"))
        })
        .or_else(|| env("USER"))
        .unwrap_or_else(|| "unknown".into())
}

fn source() -> Source {
    let ci = std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false);
    if ci || std::env::var_os("GITHUB_ACTIONS").is_some() {
        Source::Ci
    } else {
        Source::Local
    }
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 ns is valid");
    now.format(&time::format_description::well_known::Rfc3339)
        .expect("UTC time formats")
}

async fn sdk_config(profile: Option<&str>, region: Option<String>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region));
    }
    if let Some(profile) = profile {
        loader = loader.profile_name(profile);
    }
    loader.load().await
}

fn s3_client(shared: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
    // A custom endpoint (moto, MinIO, LocalStack) serves buckets by path, not by host name.
    let path_style = std::env::var_os("AWS_ENDPOINT_URL").is_some()
        || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
    let conf = aws_sdk_s3::config::Builder::from(shared)
        .force_path_style(path_style)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

async fn s3_bucket(args: &UploadArgs, region: Option<String>, bucket: String) -> Bucket {
    let shared = sdk_config(args.profile.as_deref(), region).await;
    Bucket {
        client: s3_client(&shared),
        name: bucket,
    }
}

async fn clients(profile: Option<&str>, region: Option<String>, target: Target) -> Clients {
    let shared = sdk_config(profile, region).await;
    Clients {
        s3: s3_client(&shared),
        ssm: aws_sdk_ssm::Client::new(&shared),
        target,
    }
}

async fn run_upload(args: UploadArgs) -> anyhow::Result<u8> {
    let started = Instant::now();
    let request = BundleRequest {
        repo_dir: args.repo.clone(),
        config_path: args.config.clone(),
        overrides: Overrides {
            app: args.app.clone(),
            bucket: args.bucket.clone(),
            region: args.region.clone(),
            env: args.env.clone(),
            max_file_bytes: args.max_file_bytes,
        },
        allow_dirty: args.allow_dirty,
        allowed_secrets: args.allow_secret.clone(),
        branch: args.branch.clone(),
    };
    let prepared = bundle::prepare(&request)?;
    let bar = progress_bar(&args, prepared.plan.file_bytes);
    let files = prepared.plan.entries.len() as u64;
    let mut on_progress = |entries: u64, bytes: u64| {
        bar.set_position(bytes);
        bar.set_message(format!("{entries}/{files} entries"));
    };
    let tuning = tuning(&args);
    let summary = if let Some(output) = &args.output {
        let digest = write_output(&prepared, output, &tuning, &mut on_progress)?;
        bar.finish_and_clear();
        Summary::new(&prepared, digest.sha256, digest.bytes).with_output(output)
    } else if args.dry_run {
        let (_, digest) =
            prepared.write_to(Discard, tuning.level, tuning.threads, &mut on_progress)?;
        bar.finish_and_clear();
        let mut s = Summary::new(&prepared, digest.sha256, digest.bytes);
        s.dry_run = true;
        s.bucket = prepared.config.bucket.clone();
        s
    } else {
        let bucket_name = prepared.config.bucket.clone().with_context(|| {
            format!(
                "no bucket given: set `bucket` in {}, DROPSHIP_BUCKET, or pass --bucket (or use --output FILE to only bundle)",
                prepared.config.path.display()
            )
        })?;
        let bucket = s3_bucket(&args, prepared.config.region.clone(), bucket_name.clone()).await;

        let uploader = uploader(&prepared);
        let created = now_rfc3339();
        let metadata_for = |digest: &bundle::BundleDigest| {
            Ok(ObjectMetadata {
                app: prepared.manifest.app.clone(),
                env: prepared.manifest.env.clone(),
                branch: prepared.branch.clone(),
                commit: prepared.head.commit.clone(),
                dirty: prepared.dirty,
                sha256: digest.sha256.clone(),
                created: created.clone(),
                uploader: uploader.clone(),
                source: source(),
                message: prepared.head.subject.clone(),
                restored_from: None,
            })
        };
        let outcome =
            upload::upload(&bucket, &prepared, tuning, &metadata_for, &mut on_progress).await?;
        bar.finish_and_clear();
        let mut s = Summary::new(&prepared, outcome.digest.sha256, outcome.digest.bytes);
        s.bucket = Some(bucket_name);
        s.key = Some(prepared.config.key.object_key());
        s.version_id = Some(outcome.uploaded.version_id);
        s.multipart = Some(outcome.uploaded.multipart);
        s
    };
    let seconds = started.elapsed().as_secs_f64();
    let version = match (&summary.version_id, args.wait.wait) {
        (Some(v), true) => v.clone(),
        (None, true) => {
            anyhow::bail!("S3 returned no version id for the upload: is versioning still enabled on the bucket?")
        }
        (_, false) => {
            summary.print(args.json, seconds);
            return Ok(0);
        }
    };
    if !args.json {
        summary.print(false, seconds);
    }
    let target = Target {
        bucket: summary.bucket.clone().unwrap_or_default(),
        release: prepared.config.key.clone(),
    };
    let clients = clients(
        args.profile.as_deref(),
        prepared.config.region.clone(),
        target,
    )
    .await;
    let report = follow(
        &clients,
        &version,
        &prepared.head.commit,
        &args.wait,
        args.json,
    )
    .await
    .with_context(|| format!("version {version} was uploaded, but following its deploy failed"))?;
    let mut summary = summary;
    let code = report.exit_code();
    summary.deploy = Some(report);
    if args.json {
        summary.print(true, seconds);
    }
    Ok(code)
}

/// Follows a deploy with progress on a terminal (state changes on stderr otherwise) and
/// prints the per-host table unless JSON was asked for. `commit` is the new version's, shown
/// while the deploy record (which also carries it) is not there yet.
async fn follow(
    clients: &Clients,
    version: &str,
    commit: &str,
    args: &WaitArgs,
    json: bool,
) -> anyhow::Result<WaitReport> {
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
            } => {
                format!("waiting for the deployer to pick up version {version}")
            }
            wait::Progress::WaitingForRecord {
                dispatching: true, ..
            } => "the deployer is verifying the bundle and sending commands".to_string(),
            wait::Progress::Hosts(s) => format!(
                "{} host(s): {}",
                s.hosts.len(),
                dropship_bundler::ops::status::counts_line(&s.hosts)
            ),
        };
        if line != last {
            if tty {
                bar.set_message(line.clone());
            } else if !json {
                eprintln!("wait: {line}");
            }
            last = line;
        }
    };
    let target = &clients.target;
    let mut report = wait::follow(
        clients,
        target.release.app(),
        target.release.env(),
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
        print!("{}", report.status.render());
        if report.timed_out {
            eprintln!(
                "still pending after {:.0}s (--wait-timeout): follow with `bundle-and-upload status {version}`",
                report.waited_secs
            );
        }
    }
    Ok(report)
}

/// The app/env and bucket for an operator command, plus the environments dropship.toml lists.
struct Resolved {
    targets: Vec<Target>,
    region: Option<String>,
}

fn resolve_targets(args: &TargetArgs, all_envs: bool) -> anyhow::Result<Resolved> {
    let explicit = args.config.is_some();
    let path = match &args.config {
        Some(p) => p.clone(),
        None => dropship_bundler::git::Repo::discover(&args.repo)
            .map(|r| r.root().join(CONFIG_FILE))
            .unwrap_or_else(|_| args.repo.join(CONFIG_FILE)),
    };
    let file = if explicit || path.is_file() {
        ConfigFile::load(&path)?
    } else {
        ConfigFile::default()
    };
    let listed = file.environments.clone();
    let mut overrides = Overrides {
        app: args.app.clone(),
        bucket: args.bucket.clone(),
        region: args.region.clone(),
        env: args.env.clone(),
        max_file_bytes: None,
    };
    if all_envs && overrides.env.is_none() && file.default_env.is_none() {
        overrides.env = listed.first().cloned();
    }
    let config = Config::resolve(&path, file, overrides)?;
    let bucket = config.bucket.clone().with_context(|| {
        format!(
            "no bucket given: set `bucket` in {}, DROPSHIP_BUCKET, or pass --bucket",
            config.path.display()
        )
    })?;
    let envs: Vec<String> = if all_envs && !listed.is_empty() {
        listed
    } else {
        vec![config.key.env().to_string()]
    };
    let targets = envs
        .iter()
        .map(|env| {
            Ok(Target {
                bucket: bucket.clone(),
                release: ReleaseKey::new(config.key.app(), env)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Resolved {
        targets,
        region: config.region.clone(),
    })
}

async fn run_versions(args: VersionsArgs) -> anyhow::Result<u8> {
    let resolved = resolve_targets(&args.target, args.all_envs)?;
    let mut reports = Vec::new();
    for target in resolved.targets {
        let c = clients(
            args.target.profile.as_deref(),
            resolved.region.clone(),
            target,
        )
        .await;
        reports.push(versions::run(&c, args.limit).await?);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        let text: Vec<String> = reports.iter().map(|r| r.render()).collect();
        print!("{}", text.join("\n"));
    }
    Ok(0)
}

async fn run_status(args: StatusArgs) -> anyhow::Result<u8> {
    let resolved = resolve_targets(&args.target, false)?;
    let target = resolved
        .targets
        .into_iter()
        .next()
        .context("no app/env resolved")?;
    let c = clients(args.target.profile.as_deref(), resolved.region, target).await;
    let version = match args.version.clone() {
        Some(v) => v,
        None => c
            .current_version()
            .await?
            .ok_or_else(|| OpsError::NoVersions {
                url: c.target.url(),
            })?,
    };
    let Some(head) = c.head_if_exists(&version).await? else {
        return Err(OpsError::UnknownVersion {
            url: c.target.url(),
            version_id: version,
        }
        .into());
    };
    let mut status = wait::status_once(
        &c,
        c.target.release.app(),
        c.target.release.env(),
        &version,
        Duration::from_millis(400),
    )
    .await?;
    if status.commit.is_none() {
        status.commit = ObjectMetadata::from_headers(&head.metadata)
            .ok()
            .map(|m| m.commit);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(0)
}

/// Output of `restore`, with the deploy when `--wait` was given.
#[derive(serde::Serialize)]
struct RestoreOutput {
    #[serde(flatten)]
    restored: restore::Restored,
    #[serde(skip_serializing_if = "Option::is_none")]
    deploy: Option<WaitReport>,
}

async fn run_restore(args: RestoreArgs) -> anyhow::Result<u8> {
    let resolved = resolve_targets(&args.target, false)?;
    let target = resolved
        .targets
        .into_iter()
        .next()
        .context("no app/env resolved")?;
    let c = clients(args.target.profile.as_deref(), resolved.region, target).await;
    let plan = restore::prepare(&c, &args.version_id).await?;
    let not_confirmed = |why: String| OpsError::NotConfirmed {
        url: plan.target.url(),
        version_id: plan.source.version_id.clone(),
        why,
    };
    match restore::consent(
        args.yes,
        std::io::stdin().is_terminal(),
        std::io::stderr().is_terminal(),
    ) {
        restore::Consent::Given => {}
        restore::Consent::Ask => {
            eprint!("{}Restore this version? [y/N] ", plan.describe());
            let mut answer = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut answer)
                .context("reading the confirmation from the terminal")?;
            if !restore::is_yes(&answer) {
                return Err(not_confirmed("the answer was not yes".into()).into());
            }
        }
        restore::Consent::Refuse(why) => {
            eprint!("{}", plan.describe());
            return Err(not_confirmed(why).into());
        }
    }
    let restored = restore::execute(&c, &plan).await?;
    if !args.json {
        print!("{}", restored.render());
    }
    let deploy = if args.wait.wait {
        let version = restored.version_id.clone();
        Some(
            follow(&c, &version, &restored.commit, &args.wait, args.json)
                .await
                .with_context(|| format!("version {version} was created by the restore, but following its deploy failed"))?,
        )
    } else {
        None
    };
    let code = deploy.as_ref().map(WaitReport::exit_code).unwrap_or(0);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&RestoreOutput { restored, deploy })?
        );
    }
    Ok(code)
}

/// Writes next to the target and renames, so a failed run never leaves a partial file.
fn write_output(
    prepared: &PreparedBundle,
    output: &std::path::Path,
    tuning: &UploadTuning,
    progress: &mut dyn FnMut(u64, u64),
) -> anyhow::Result<bundle::BundleDigest> {
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = tempfile_in(dir, output)?;
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = prepared
        .write_to(
            std::io::BufWriter::with_capacity(1 << 20, file),
            tuning.level,
            tuning.threads,
            progress,
        )
        .map_err(anyhow::Error::from)
        .and_then(|(w, digest)| {
            let file = w
                .into_inner()
                .map_err(|e| anyhow::anyhow!("flushing {}: {}", tmp.display(), e.error()))?;
            file.sync_all()?;
            Ok(digest)
        });
    match result {
        Ok(digest) => {
            std::fs::rename(&tmp, output)
                .with_context(|| format!("cannot move bundle to {}", output.display()))?;
            Ok(digest)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn tempfile_in(dir: &std::path::Path, output: &std::path::Path) -> anyhow::Result<PathBuf> {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    Ok(dir.join(format!(".{name}.{}.partial", std::process::id())))
}

/// What the user (or CI) sees at the end.
#[derive(Debug, serde::Serialize)]
struct Summary {
    app: String,
    env: String,
    commit: String,
    branch: String,
    dirty: bool,
    files: u64,
    unpacked_bytes: u64,
    bytes: u64,
    sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    bucket: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    multipart: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<String>,
    dry_run: bool,
    /// The followed deploy, with `--wait`.
    #[serde(skip_serializing_if = "Option::is_none")]
    deploy: Option<WaitReport>,
}

impl Summary {
    fn new(p: &PreparedBundle, sha256: String, bytes: u64) -> Self {
        Self {
            app: p.manifest.app.clone(),
            env: p.manifest.env.clone(),
            commit: p.head.commit.clone(),
            branch: p.branch.clone(),
            dirty: p.dirty,
            files: p.manifest.files,
            unpacked_bytes: p.manifest.bytes,
            bytes,
            sha256,
            bucket: None,
            key: None,
            version_id: None,
            multipart: None,
            output: None,
            dry_run: false,
            deploy: None,
        }
    }

    fn with_output(mut self, output: &std::path::Path) -> Self {
        self.output = Some(output.display().to_string());
        self
    }

    fn print(&self, json: bool, seconds: f64) {
        if json {
            println!(
                "{}",
                serde_json::to_string(self).expect("summary serialises")
            );
            return;
        }
        let what = if self.output.is_some() {
            "Bundled"
        } else if self.dry_run {
            "Dry run (nothing uploaded)"
        } else {
            "Uploaded"
        };
        println!("{what} {}/{} in {seconds:.2}s", self.app, self.env);
        if let (Some(bucket), Some(key)) = (&self.bucket, &self.key) {
            println!("  key      s3://{bucket}/{key}");
        }
        if let Some(v) = &self.version_id {
            println!("  version  {v}");
        }
        if let Some(o) = &self.output {
            println!("  file     {o}");
        }
        println!(
            "  size     {} bytes ({} entries, {} bytes unpacked)",
            self.bytes, self.files, self.unpacked_bytes
        );
        println!("  sha256   {}", self.sha256);
        let dirty = if self.dirty { ", dirty" } else { "" };
        println!("  commit   {} ({}{dirty})", self.commit, self.branch);
    }
}
