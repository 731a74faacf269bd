use flux_status::cli::{self, CliArgs};
use flux_status::config;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // clap exits 2 on usage errors, matching exit::USAGE.
    let args: CliArgs = config::parse_args();
    let code = cli::run(args, &mut std::io::stdout(), &mut std::io::stderr()).await;
    ExitCode::from(code)
}
