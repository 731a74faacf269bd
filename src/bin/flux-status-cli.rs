use clap::Parser;
use flux_status::cli::{self, CliArgs};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    // clap exits 2 on usage errors, matching exit::USAGE.
    let args = CliArgs::parse();
    let code = cli::run(args, &mut std::io::stdout(), &mut std::io::stderr()).await;
    ExitCode::from(code)
}
