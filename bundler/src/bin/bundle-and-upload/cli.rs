//! `bundle-and-upload`'s arguments: the upload's flags, and the old spellings of the
//! operator's commands, which moved to `dropship` and keep working (hidden from `--help`).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use dropship_bundler::pgz::Deflater;
use dropship_operator::cli::{
    after_help, ReleasesArgs, RollbackArgs, StatusArgs, TargetArgs, WaitArgs,
};

/// Examples shown by `bundle-and-upload --help`.
const EXAMPLES: &str = "\
Examples:
  bundle-and-upload --dry-run                  everything but the upload
  bundle-and-upload --env staging --wait       upload, then follow every host to its result
  bundle-and-upload --json --wait              the same, one JSON object for CI
  bundle-and-upload --output bundle.tar.gz     write the bundle only (a CI artifact)

What happens after the upload is the operator's side: `dropship releases`, `dropship status`,
`dropship rollback <version>`.";

/// Bundle the git tree at HEAD into a deterministic .tar.gz and upload it to
/// s3://<bucket>/releases/<app>/<env>.tar.gz as a new object version.
#[derive(Parser, Debug)]
#[command(
    name = "bundle-and-upload",
    version = dropship_operator::VERSION,
    after_help = after_help(EXAMPLES),
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// The old spellings of the operator's commands.
    #[command(subcommand)]
    pub moved: Option<Moved>,
    #[command(flatten)]
    pub upload: UploadArgs,
}

/// Operator commands that moved to `dropship`; each prints where it moved, then runs.
#[derive(Subcommand, Debug)]
pub enum Moved {
    /// Moved to `dropship releases`.
    #[command(hide = true)]
    Versions(ReleasesArgs),
    /// Moved to `dropship status`.
    #[command(hide = true)]
    Status(StatusArgs),
    /// Moved to `dropship rollback`.
    #[command(hide = true)]
    Restore(RollbackArgs),
}

impl Moved {
    /// The one line saying where the command moved.
    pub fn note(&self) -> &'static str {
        match self {
            Moved::Versions(_) => "note: `bundle-and-upload versions` moved to `dropship releases`; this spelling keeps working",
            Moved::Status(_) => "note: `bundle-and-upload status` moved to `dropship status`; this spelling keeps working",
            Moved::Restore(_) => "note: `bundle-and-upload restore` moved to `dropship rollback`; this spelling keeps working",
        }
    }
}

/// What to bundle and where to upload it.
#[derive(Args, Debug, Clone)]
pub struct UploadArgs {
    /// Which repository, app/env, bucket and AWS profile (flags win over dropship.toml).
    #[command(flatten)]
    pub target: TargetArgs,
    /// Branch to record (default: git's, or the CI's on a detached HEAD).
    #[arg(long, env = "DROPSHIP_BRANCH")]
    pub branch: Option<String>,
    /// Bundle tracked and untracked (not ignored) working-tree files, marked dirty.
    #[arg(long)]
    pub allow_dirty: bool,
    /// Allow one path that looks like a secret (repeatable).
    #[arg(long = "allow-secret", value_name = "PATH")]
    pub allow_secret: Vec<String>,
    /// Largest file allowed in the bundle, in bytes.
    #[arg(long, env = "DROPSHIP_MAX_FILE_BYTES")]
    pub max_file_bytes: Option<u64>,
    /// gzip level, 1 (fast) to 9 (small).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=9), env = "DROPSHIP_LEVEL")]
    pub level: u32,
    /// Compression threads (default: all cores).
    #[arg(long, env = "DROPSHIP_THREADS")]
    pub threads: Option<usize>,
    /// Deflate implementation. Hidden: it exists so `scripts/bench-bundle` can measure the
    /// default (libdeflate) against the previous one (zlib-rs) side by side.
    #[arg(long, hide = true, default_value = "libdeflate",
          value_parser = clap::builder::PossibleValuesParser::new(Deflater::NAMES))]
    pub deflater: String,
    /// Bundles larger than this many bytes use a streaming multipart upload.
    #[arg(long, default_value_t = 16 * 1024 * 1024, env = "DROPSHIP_MULTIPART_THRESHOLD")]
    pub multipart_threshold: u64,
    /// Multipart part size in bytes (at least 5 MiB).
    #[arg(long, default_value_t = 8 * 1024 * 1024, env = "DROPSHIP_PART_SIZE")]
    pub part_size: usize,
    /// Write the bundle to FILE instead of uploading (e.g. a CI artifact).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Do everything except the upload (no AWS calls) and print the summary.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as JSON on stdout (for CI).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub wait: WaitArgs,
}
