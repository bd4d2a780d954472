//! `tokenmanager-flood` (see the `flood` module): exit status 0, 1 when `--check` finds a failed
//! target, 2 when the tool itself fails.

use std::process::ExitCode;

use clap::Parser;
use tokenmanager_loadtest::flood::{self, FloodArgs, attack};

fn main() -> ExitCode {
    let mut argv = std::env::args_os();
    if argv.nth(1).is_some_and(|a| a == attack::WORKER_ARG) {
        let args = attack::WorkerArgs::parse_from(std::env::args_os().skip(1));
        return match attack::worker_main(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tokenmanager-flood attack process: {e}");
                ExitCode::from(2)
            }
        };
    }
    let args = FloodArgs::parse();
    // Created before any load, so that a bad path fails fast.
    let json_out = match args
        .json_out
        .as_ref()
        .map(std::fs::File::create)
        .transpose()
    {
        Ok(file) => file,
        Err(e) => {
            eprintln!("tokenmanager-flood: cannot create the JSON report: {e}");
            return ExitCode::from(2);
        }
    };
    let report = match flood::run(&args) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("tokenmanager-flood: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(file) = json_out {
        let mut w = std::io::BufWriter::new(file);
        let written = serde_json::to_writer_pretty(&mut w, &report)
            .map_err(std::io::Error::from)
            .and_then(|()| std::io::Write::write_all(&mut w, b"\n"))
            .and_then(|()| std::io::Write::flush(&mut w));
        if let Err(e) = written {
            eprintln!("tokenmanager-flood: cannot write the JSON report: {e}");
            return ExitCode::from(2);
        }
    }
    if let Err(e) = flood::print_summary(&report, &mut std::io::stdout().lock()) {
        eprintln!("tokenmanager-flood: cannot write the summary: {e}");
        return ExitCode::from(2);
    }
    match flood::outcome::failures(&report.targets) {
        Some(message) if args.check => {
            eprintln!("tokenmanager-flood: {message}");
            ExitCode::from(1)
        }
        Some(_) => {
            println!("(some targets failed; --check would exit 1)");
            ExitCode::SUCCESS
        }
        None => ExitCode::SUCCESS,
    }
}
