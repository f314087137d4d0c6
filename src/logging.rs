//! Log setup: human-readable lines on a terminal, JSON lines for journald and collectors, always on stderr so
//! stdout stays clean for tables and `--json` output.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

pub fn init(config: &LogConfig) {
    // The scheduler library logs its own housekeeping at info; keep that out unless asked for.
    let quiet = |f: EnvFilter| f.add_directive("tokio_cron_scheduler=warn".parse().expect("static directive"));
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| quiet(EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"))));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match config.format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Human => builder.with_target(false).with_ansi(std::io::stderr().is_terminal()).try_init(),
    };
}
