//! `inferpick-picker`: parses flags, sets up logging, binds, and runs the service until SIGTERM.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use inferpick_picker::{Args, Settings, run};

/// Exit status for a bad configuration (EX_CONFIG-style usage error, as in sysexits).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let settings = match Settings::from_args(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("inferpick-picker: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match serve(settings) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            match e.downcast_ref::<inferpick_picker::RunError>() {
                Some(inferpick_picker::RunError::Config(_)) => ExitCode::from(EXIT_CONFIG),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

#[tokio::main]
async fn serve(settings: Settings) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let http = listener.local_addr()?;
    let grpc = settings
        .grpc_listen
        .map_or_else(|| "off".to_string(), |a| a.to_string());
    // Installed before "listening" is logged: a SIGTERM sent as soon as the picker says it is up
    // must stop it cleanly, not kill it with the default action.
    let shutdown = shutdown()?;
    tracing::info!(%http, policy = %settings.policy, grpc = %grpc, "listening");
    run(settings, listener, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}

/// Installs the SIGTERM handler now and returns a future that resolves on SIGTERM or Ctrl-C.
fn shutdown() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown signal received");
    })
}

/// Logs to stderr, as text or (with `INFERPICK_LOG_FORMAT=json`) JSON lines; `RUST_LOG` filters.
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("INFERPICK_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}
