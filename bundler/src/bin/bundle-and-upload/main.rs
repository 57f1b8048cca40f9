//! `bundle-and-upload`, the developer's and CI's command: argument parsing ([`cli`]),
//! resolution of what to bundle and how ([`resolve`]), the run ([`run`]) and its summary
//! ([`summary`]). The operator's commands moved to `dropship`; their old spellings here
//! print where they moved and run them (`dropship_operator::commands`).

mod cli;
mod resolve;
mod run;
mod summary;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use dropship_bundler::bundle::BundleError;
use dropship_bundler::upload::UploadError;
use dropship_operator::commands;
use dropship_operator::exit::Exit;

use crate::cli::{Cli, Moved};

/// The exit code for a failure, from the first cause in its chain that has one.
fn exit_for(err: &anyhow::Error) -> Exit {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<UploadError>() {
            return match e {
                UploadError::Bundle(b) => exit_for_bundle(b),
                UploadError::Aws(a) | UploadError::MultipartAborted { cause: a, .. } => {
                    Exit::of_aws(a)
                }
                UploadError::VersioningDisabled { .. } => Exit::AwsRefused,
                UploadError::TreeChanged { .. } => Exit::Transient,
                UploadError::Internal(_) => Exit::Internal,
            };
        }
        if let Some(b) = cause.downcast_ref::<BundleError>() {
            return exit_for_bundle(b);
        }
    }
    Exit::of_error(err).unwrap_or(Exit::Internal)
}

fn exit_for_bundle(e: &BundleError) -> Exit {
    match e {
        BundleError::Git(_) => Exit::GitState,
        BundleError::Config(_) => Exit::Usage,
        BundleError::Refused(_) => Exit::ContentRefused,
        BundleError::Io(_) => Exit::Internal,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let upload = &cli.upload;
    if cli.moved.is_none() && upload.wait.wait && (upload.output.is_some() || upload.dry_run) {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--wait follows the deploy of an upload; --output and --dry-run upload nothing: drop one of them",
            )
            .exit();
    }
    dropship_operator::cli::init_logging();
    let runtime = match dropship_operator::cli::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Internal.into();
        }
    };
    if let Some(moved) = &cli.moved {
        eprintln!("{}", moved.note());
    }
    let result = runtime.block_on(async {
        match cli.moved {
            None => run::run_upload(cli.upload).await,
            Some(Moved::Versions(a)) => commands::run_releases(a).await,
            Some(Moved::Status(a)) => commands::run_status(a).await,
            Some(Moved::Restore(a)) => commands::run_rollback(a).await,
        }
    });
    match result {
        Ok(code) => code.into(),
        Err(err) => {
            eprintln!(
                "error: {}",
                dropship_operator::terminal_safe(&format!("{err:#}"))
            );
            exit_for(&err).into()
        }
    }
}
