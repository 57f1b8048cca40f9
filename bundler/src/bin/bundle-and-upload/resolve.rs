//! From arguments to what the run needs: the bundle request, the compression and upload
//! tuning, and the upload facts (who, from where, when) that go into the metadata.

use dropship_bundler::bundle::{BundleRequest, PreparedBundle};
use dropship_bundler::pgz::{Deflater, GzipSettings};
use dropship_bundler::upload::UploadTuning;
use dropship_contract::config::Overrides;
use dropship_contract::metadata::Source;

use crate::cli::UploadArgs;

/// The bundle the arguments ask for.
pub fn request(args: &UploadArgs) -> BundleRequest {
    let target = &args.target;
    BundleRequest {
        repo_dir: target.repo.clone(),
        config_path: target.config.clone(),
        overrides: Overrides {
            app: target.app.clone(),
            bucket: target.bucket.clone(),
            region: target.region.clone(),
            env: target.env.clone(),
            max_file_bytes: args.max_file_bytes,
        },
        allow_dirty: args.allow_dirty,
        allowed_secrets: args.allow_secret.clone(),
        branch: args.branch.clone(),
    }
}

/// Compression (level, threads, deflater), multipart threshold and part size.
pub fn tuning(args: &UploadArgs) -> UploadTuning {
    UploadTuning {
        gzip: GzipSettings {
            level: args.level,
            threads: args.threads.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            }),
            deflater: Deflater::from_name(&args.deflater)
                .expect("clap accepts only Deflater::NAMES"),
        },
        multipart_threshold: args.multipart_threshold,
        part_size: args.part_size,
    }
}

/// Who uploaded: explicit, the CI's actor, git's user, or the OS user.
pub fn uploader(prepared: &PreparedBundle) -> String {
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

/// Where the upload runs: CI (`CI=true|1`, GitHub Actions) or a developer's machine.
pub fn source() -> Source {
    let ci = std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false);
    if ci || std::env::var_os("GITHUB_ACTIONS").is_some() {
        Source::Ci
    } else {
        Source::Local
    }
}

/// Now, as the metadata's `created` (RFC 3339 UTC, whole seconds).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 ns is valid");
    now.format(&time::format_description::well_known::Rfc3339)
        .expect("UTC time formats")
}
