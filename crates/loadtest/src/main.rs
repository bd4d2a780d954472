use std::process::ExitCode;

use clap::Parser;
use tokenmanager_loadtest::{LoadtestArgs, print_report, run};

fn main() -> ExitCode {
    let report = match run(LoadtestArgs::parse()) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("tokenmanager-loadtest: {error}");
            return ExitCode::FAILURE;
        }
    };
    match print_report(&report, &mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tokenmanager-loadtest: cannot write the report: {error}");
            ExitCode::FAILURE
        }
    }
}
