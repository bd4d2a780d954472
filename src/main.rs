use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

// jemalloc instead of glibc's malloc, whose free/consolidate paths took ~15 % of the server's CPU
// on the getToken hit path (bench/README.md); it costs ~4 MiB of idle RSS.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("TOKENMANAGER_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match tokenmanager::cli::Cli::parse().run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Each error's message already names its cause.
            eprintln!("tokenmanager: {error}");
            ExitCode::FAILURE
        }
    }
}
