//! `dropship`: the operator's command. Parsing is [`dropship_operator::cli`], each command
//! is in [`dropship_operator::commands`], and the exit code comes from
//! [`dropship_operator::exit::Exit`].

use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use dropship_operator::cli::{self, Command, Dropship};
use dropship_operator::commands;
use dropship_operator::exit::Exit;

fn main() -> ExitCode {
    let args = Dropship::parse();
    if let Command::Completions { shell } = args.command {
        clap_complete::generate(
            shell,
            &mut Dropship::command(),
            "dropship",
            &mut std::io::stdout(),
        );
        return Exit::Success.into();
    }
    cli::init_logging();
    let runtime = match cli::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return Exit::Internal.into();
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Command::Releases(a) => commands::run_releases(a).await,
            Command::Status(a) => commands::run_status(a).await,
            Command::Rollback(a) => commands::run_rollback(a).await,
            Command::Promote(a) => commands::run_promote(a).await,
            Command::Init(a) => commands::run_init(a),
            Command::Logs(a) => commands::run_logs(a).await,
            Command::Doctor(a) => commands::run_doctor(a).await,
            Command::Completions { .. } => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(code) => code.into(),
        Err(err) => {
            eprintln!(
                "error: {}",
                dropship_operator::terminal_safe(&format!("{err:#}"))
            );
            Exit::of_error(&err).unwrap_or(Exit::Internal).into()
        }
    }
}
