//! `inferpick-agent`: parse flags, set up logging, run until SIGTERM or Ctrl-C.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use inferpick_agent::cli::LogFormat;
use inferpick_agent::{AgentError, Args, Config};

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("INFERPICK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Installs the SIGTERM handler now (before the agent says it started) and returns a future that
/// resolves on SIGTERM or Ctrl-C.
fn terminated() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler installs");
    async move {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if args.once {
        // --once prints the report on stdout and nothing else; errors are one line on stderr.
        let config = match Config::from_args(&args) {
            Ok(c) => c,
            Err(errors) => {
                eprintln!("inferpick-agent: {}", AgentError::Config(errors));
                return ExitCode::from(64);
            }
        };
        return match inferpick_agent::once(config).await {
            Ok(report) => {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("a report serializes")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("inferpick-agent: {e}");
                ExitCode::FAILURE
            }
        };
    }
    init_tracing(args.log_format);
    match inferpick_agent::run(args, terminated()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ AgentError::Config(_)) => {
            eprintln!("inferpick-agent: {e}");
            ExitCode::from(64)
        }
        Err(e) => {
            eprintln!("inferpick-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
