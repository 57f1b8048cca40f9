//! Running an upload: bundle into a file (`--output`), nowhere (`--dry-run`) or S3, then with
//! `--wait` follow the deploy like `dropship status` does.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use dropship_bundler::bundle::{self, Discard, PreparedBundle};
use dropship_bundler::s3::Bucket;
use dropship_bundler::upload::{self, UploadTuning};
use dropship_contract::metadata::ObjectMetadata;
use dropship_operator::commands;
use dropship_operator::exit::Exit;
use dropship_operator::Target;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::UploadArgs;
use crate::resolve;
use crate::summary::Summary;

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

/// Bundles, uploads (or writes `--output`, or only measures with `--dry-run`), and with
/// `--wait` follows the deploy; the exit code reflects the deploy.
pub async fn run_upload(args: UploadArgs) -> anyhow::Result<Exit> {
    let started = Instant::now();
    let prepared = bundle::prepare(&resolve::request(&args))?;
    let bar = progress_bar(&args, prepared.plan.file_bytes);
    let files = prepared.plan.entries.len() as u64;
    let mut on_progress = |entries: u64, bytes: u64| {
        bar.set_position(bytes);
        bar.set_message(format!("{entries}/{files} entries"));
    };
    let tuning = resolve::tuning(&args);
    let summary = if let Some(output) = &args.output {
        let digest = write_output(&prepared, output, &tuning, &mut on_progress)?;
        bar.finish_and_clear();
        Summary::new(&prepared, digest.sha256, digest.bytes).with_output(output)
    } else if args.dry_run {
        let (_, digest) = prepared.write_to(Discard, tuning.gzip, &mut on_progress)?;
        bar.finish_and_clear();
        let mut s = Summary::new(&prepared, digest.sha256, digest.bytes);
        s.dry_run = true;
        s.bucket = prepared.config.bucket.clone();
        s
    } else {
        let bucket_name = prepared
            .config
            .require_bucket("--bucket (or use --output FILE to only bundle)")?;
        let profile = args.target.profile.as_deref();
        let sdk = dropship_aws::sdk::load(profile, prepared.config.region.clone()).await;
        let bucket = Bucket {
            client: dropship_aws::sdk::s3_client(&sdk),
            name: bucket_name.clone(),
        };
        let uploader = resolve::uploader(&prepared);
        let source = resolve::source();
        let created = resolve::now_rfc3339();
        let metadata_for = |digest: &bundle::BundleDigest| ObjectMetadata {
            app: prepared.manifest.app.clone(),
            env: prepared.config.key.env().to_string(),
            branch: prepared.branch.clone(),
            commit: prepared.head.commit.clone(),
            dirty: prepared.dirty,
            sha256: digest.sha256.clone(),
            created: created.clone(),
            uploader: uploader.clone(),
            source,
            message: prepared.head.subject.clone(),
            restored_from: None,
            promoted_from: None,
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
            return Ok(Exit::Success);
        }
    };
    if !args.json {
        summary.print(false, seconds);
    }
    let target = Target {
        bucket: summary.bucket.clone().unwrap_or_default(),
        release: prepared.config.key.clone(),
    };
    let clients = commands::clients(
        args.target.profile.as_deref(),
        prepared.config.region.clone(),
        target,
    )
    .await;
    let report = commands::follow(
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

/// Writes next to the target and renames, so a failed run never leaves a partial file.
pub fn write_output(
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
            tuning.gzip,
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
