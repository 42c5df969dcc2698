//! The `tickstream` binary: reads configuration, sets up logging, and runs the
//! server until SIGTERM or SIGINT.

use std::process::ExitCode;

use clap::Parser;
use tickstream::config::{CandlesCommand, Cli, Command, Config, LogFormat};

fn main() -> ExitCode {
    // A missing .env is normal; a malformed one is worth saying.
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            eprintln!("tickstream: .env: {e}");
            return ExitCode::from(2);
        }
    }
    let cli = Cli::parse();
    let command = cli.command.clone();
    let config = match Config::from_cli(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tickstream: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tickstream: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Candles {
        action: CandlesCommand::Rebuild { channel },
    }) = command
    {
        return rebuild(&runtime, config, channel);
    }
    // `serve` (or no command) serves.
    match runtime.block_on(tickstream::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tickstream stopped");
            eprintln!("tickstream: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tickstream candles rebuild`: one line per channel, then a total; a refusal (candles
/// off, no Redis, not a channel name) or a store error exits 1 naming it.
fn rebuild(runtime: &tokio::runtime::Runtime, config: Config, channel: Option<String>) -> ExitCode {
    let result = runtime.block_on(tickstream::rebuild_candles(&config, channel, |channel, ticks| {
        println!("{channel}: candles rebuilt from {ticks} ticks");
    }));
    match result {
        Ok(channels) => {
            println!("{channels} channel(s) rebuilt");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tickstream: candles rebuild: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.init(),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
