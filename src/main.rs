//! The `segment-exporter` binary: parse the command line, load the config, call into the library, map errors to
//! exit codes.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use segment_exporter::cli::{self, exit, Cli, Exit};
use segment_exporter::config::Config;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (config, path) = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(exit::CONFIG);
        }
    };
    let mut log = config.log.clone();
    if cli.draws_progress_bar() && std::env::var_os("RUST_LOG").is_none() {
        // The bar and the final table say what info lines would; warnings and errors still show.
        log.level = "warn".into();
    }
    segment_exporter::logging::init(&log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match runtime.block_on(cli::run(cli, config, path)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = e.downcast_ref::<Exit>().map_or(exit::FAILED, |x| x.code);
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}
