//! `inferpick-lab`: parses the command line and runs one subcommand; the library does the work.

use std::process::ExitCode;

use clap::Parser;
use inferpick_lab::cli::{Cli, Command, run};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo and the bake-off run agents and a picker in this process; their warnings would
    // bury the table.
    let default = match cli.command {
        Command::Demo(_) | Command::Bench(_) => "error",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("INFERPICK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inferpick-lab: {e:#}");
            ExitCode::from(1)
        }
    }
}
