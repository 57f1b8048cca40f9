//! `bundle-and-upload`: bundle the git tree at HEAD and upload it as a new S3 version.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use dropship_bundler::bundle::{self, BundleError, BundleRequest, Discard, PreparedBundle};
use dropship_bundler::config::Overrides;
use dropship_bundler::s3::{Bucket, S3Error};
use dropship_bundler::upload::{self, UploadError, UploadTuning};
use dropship_contract::metadata::{ObjectMetadata, Source};
use indicatif::{ProgressBar, ProgressStyle};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  unexpected internal error
  2  usage or dropship.toml invalid
  3  git state: not a repository, no commits, or uncommitted changes
  4  content refused: secrets, unsafe symlinks, oversized files
  5  AWS refused: bucket missing, versioning off, access denied, no credentials
  6  network failure: nothing was uploaded; retry";

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
enum Command {}

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
}

/// Maps failures to the documented exit codes.
fn exit_code_for(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<UploadError>() {
            return match e {
                UploadError::Bundle(b) => bundle_code(b),
                UploadError::S3(s) => s3_code(s),
                UploadError::TreeChanged { .. } => 6,
                UploadError::Internal(_) => 1,
            };
        }
        if let Some(b) = cause.downcast_ref::<BundleError>() {
            return bundle_code(b);
        }
        if let Some(s) = cause.downcast_ref::<S3Error>() {
            return s3_code(s);
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
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DROPSHIP_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        None => runtime.block_on(run_upload(cli.upload)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
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
        ProgressStyle::with_template("{spinner} bundling {msg} {bytes}/{total_bytes} ({binary_bytes_per_sec}) {wide_bar}")
            .expect("valid template"),
    );
    bar
}

fn tuning(args: &UploadArgs) -> UploadTuning {
    UploadTuning {
        level: args.level,
        threads: args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
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
    let ci = std::env::var("CI").map(|v| v == "true" || v == "1").unwrap_or(false);
    if ci || std::env::var_os("GITHUB_ACTIONS").is_some() {
        Source::Ci
    } else {
        Source::Local
    }
}

fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc().replace_nanosecond(0).expect("0 ns is valid");
    now.format(&time::format_description::well_known::Rfc3339)
        .expect("UTC time formats")
}

async fn s3_bucket(args: &UploadArgs, region: Option<String>, bucket: String) -> Bucket {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(aws_config::Region::new(region));
    }
    if let Some(profile) = &args.profile {
        loader = loader.profile_name(profile);
    }
    let shared = loader.load().await;
    // A custom endpoint (moto, MinIO, LocalStack) serves buckets by path, not by host name.
    let path_style = std::env::var_os("AWS_ENDPOINT_URL").is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(path_style)
        .build();
    Bucket {
        client: aws_sdk_s3::Client::from_conf(conf),
        name: bucket,
    }
}

async fn run_upload(args: UploadArgs) -> anyhow::Result<()> {
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
        let (_, digest) = prepared.write_to(Discard, tuning.level, tuning.threads, &mut on_progress)?;
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
        let outcome = upload::upload(&bucket, &prepared, tuning, &metadata_for, &mut on_progress).await?;
        bar.finish_and_clear();
        let mut s = Summary::new(&prepared, outcome.digest.sha256, outcome.digest.bytes);
        s.bucket = Some(bucket_name);
        s.key = Some(prepared.config.key.object_key());
        s.version_id = Some(outcome.uploaded.version_id);
        s.multipart = Some(outcome.uploaded.multipart);
        s
    };
    summary.print(args.json, started.elapsed().as_secs_f64());
    Ok(())
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
    let file = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = prepared
        .write_to(std::io::BufWriter::with_capacity(1 << 20, file), tuning.level, tuning.threads, progress)
        .map_err(anyhow::Error::from)
        .and_then(|(w, digest)| {
            let file = w.into_inner().map_err(|e| anyhow::anyhow!("flushing {}: {}", tmp.display(), e.error()))?;
            file.sync_all()?;
            Ok(digest)
        });
    match result {
        Ok(digest) => {
            std::fs::rename(&tmp, output).with_context(|| format!("cannot move bundle to {}", output.display()))?;
            Ok(digest)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn tempfile_in(dir: &std::path::Path, output: &std::path::Path) -> anyhow::Result<PathBuf> {
    let name = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "bundle".into());
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
        }
    }

    fn with_output(mut self, output: &std::path::Path) -> Self {
        self.output = Some(output.display().to_string());
        self
    }

    fn print(&self, json: bool, seconds: f64) {
        if json {
            println!("{}", serde_json::to_string(self).expect("summary serialises"));
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
