use clap::Parser;
use flux_status::{config::Args, daemon, telemetry};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let level = if args.debug {
        "debug".to_string()
    } else {
        args.log_level.clone()
    };
    if let Err(e) = telemetry::init(args.log_format, &level) {
        eprintln!("flux-status: {e}");
        return ExitCode::from(2);
    }
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flux-status: {e}");
            return ExitCode::from(2);
        }
    };
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "starting flux-status");
    match daemon::run(config, daemon::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "flux-status failed");
            ExitCode::FAILURE
        }
    }
}
