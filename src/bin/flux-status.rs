use flux_status::config::{self, Args};
use flux_status::{daemon, telemetry};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Args = config::parse_args();
    if let Err(e) = telemetry::init(args.log_format, telemetry::level(&args)) {
        eprintln!("flux-status: {e}");
        return ExitCode::from(2);
    }
    let workers = args.worker_threads;
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flux-status: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flux-status: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        workers,
        "starting flux-status"
    );
    match runtime.block_on(daemon::run(config, daemon::shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "flux-status failed");
            ExitCode::FAILURE
        }
    }
}
