//! The `oddsfeed` binary: parse the configuration, pick the subcommand, nothing else.

use clap::Parser;
use oddsfeed::config::Cli;

/// Memory freed when clients leave goes back to the system (BENCHMARKS.md, "Memory"): glibc's
/// malloc kept the peak of a thousand stalled connections after they were gone.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings: a background thread purges freed pages after a second, straight to
/// the system (no lazy MADV_FREE stage, whose pages still count in RSS).
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static _rjem_malloc_conf: &[u8] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

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
