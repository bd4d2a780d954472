use std::process::ExitCode;

use clap::Parser;
use tokenmanager::config::LogFormat;
use tracing_subscriber::EnvFilter;

// jemalloc instead of glibc's malloc, whose free/consolidate paths took ~15 % of the server's CPU
// on the getToken hit path (bench/README.md); it costs ~4 MiB of idle RSS. Its symbols are
// unprefixed (Cargo.toml), so it also serves the C libraries' malloc: OpenSSL's allocations are
// most of a TLS connection's memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// jemalloc's options, read at its first allocation (MALLOC_CONF from the environment applies
// after these). By default a freed page stays dirty for 10 s and is only purged when a later
// malloc or free of the same arena happens to check the clock: after a burst of connections an
// idle process can keep its peak RSS indefinitely. A background thread purges on time instead,
// and dirty pages decay within ~1 s; muzzy_decay_ms:0 (the default, spelt out) then returns them
// with MADV_DONTNEED at once, since MADV_FREE'd (muzzy) pages would still count in RSS until the
// kernel is short of memory.
#[unsafe(export_name = "malloc_conf")]
static MALLOC_CONF: Option<&std::ffi::c_char> = Some(
    // SAFETY: a pointer to a 'static C string literal, whose first byte is a valid c_char.
    unsafe { &*c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr() },
);

fn main() -> ExitCode {
    let cli = tokenmanager::cli::Cli::parse();
    let filter =
        EnvFilter::try_from_env("TOKENMANAGER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format() {
        LogFormat::Json => log.json().flatten_event(true).init(),
        LogFormat::Text => log
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Each error's message already names its cause.
            eprintln!("tokenmanager: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
