//! The `segment-exporter` binary: parse the command line, load the config, call into the library, map errors to
//! exit codes.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::error::ErrorKind as ClapErrorKind;
use clap::Parser;
use segment_exporter::cli::error::{self, ErrorKind};
use segment_exporter::cli::{self, exit, Cli, Exit, Output, Signals};
use segment_exporter::config::Config;

// Rows cross threads on their way from a source to the store (the SQLite worker, the reader task, the engine), so
// most allocations are freed on another thread than the one that made them; glibc's allocator serialises that on
// its arena locks and spent about a tenth of a million-member plan there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Read before parsing: a command line that clap refuses has no parsed flag to ask.
    let json = std::env::args_os().skip(1).take_while(|a| a != "--").any(|a| a == "--json");
    let out = Output { json };
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !json || matches!(e.kind(), ClapErrorKind::DisplayHelp | ClapErrorKind::DisplayVersion) => e.exit(),
        Err(e) => {
            // clap's own text (with the usage) for people, the error document for scripts.
            let _ = e.print();
            out.json(&error::document(ErrorKind::Usage, &error::usage_message(&e), None));
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(exit::USAGE));
        }
    };
    let (config, path) = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            if json {
                out.json(&error::document_of(&e.into()));
            }
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
            let e = Exit::error(exit::FAILED, format!("cannot start the async runtime: {e}"));
            return fail(out, &e);
        }
    };
    let result = runtime.block_on(async {
        let signals = if cli.stops_gracefully() {
            Signals::install(cli.reloads_on_hangup())
                .map_err(|e| anyhow::anyhow!("cannot listen for stop signals: {e}"))?
        } else {
            Signals::none()
        };
        tokio::select! {
            result = cli::run(cli, config, path, signals.clone()) => result,
            // The first stop signal is the command's to handle gracefully; a second one means now.
            () = signals.aborted() => {
                tracing::warn!("Second stop signal: exiting at once. Acknowledged batches are recorded; the next run resumes.");
                if out.json {
                    let message = "stopped at once by a second stop signal; acknowledged batches are recorded and the next run resumes";
                    out.json(&error::document(ErrorKind::Aborted, message, None));
                }
                // Not a return through the runtime, which would wait for blocking tasks (a source read) to end.
                std::process::exit(exit::ABORTED.into());
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => fail(out, &e),
    }
}

/// Reports a failed command (on stderr, and as the one JSON document with `--json`) and returns its exit code.
fn fail(out: Output, e: &anyhow::Error) -> ExitCode {
    // A configuration that cannot be run (a store schema of another version, another master key) exits 78, which
    // systemd does not restart on, whatever the error's type.
    let code = e
        .downcast_ref::<Exit>()
        .map_or_else(|| if ErrorKind::of(e) == ErrorKind::Config { exit::CONFIG } else { exit::FAILED }, |x| x.code);
    eprintln!("error: {e:#}");
    if out.json {
        out.json(&error::document_of(e));
    }
    ExitCode::from(code)
}
