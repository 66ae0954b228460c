//! The `oddsfeed` binary: parse the configuration, pick the subcommand, nothing else.

use clap::Parser;
use oddsfeed::config::Cli;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // A missing .env is normal; a malformed one is worth a word.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("oddsfeed: ignoring .env: {e}");
    }
    let cli = Cli::parse();
    oddsfeed::telemetry::init_tracing(cli.config.log_format);
    match oddsfeed::app::run(cli.command, cli.config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "oddsfeed failed");
            std::process::ExitCode::FAILURE
        }
    }
}
