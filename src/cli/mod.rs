//! The command line: argument definitions and one handler file per command group. Handlers turn arguments into
//! library calls and print tables (or JSON with `--json`); they hold no business rules of their own.

mod audit;
mod connection;
pub mod error;
mod export;
mod notify;
mod output;
mod runs;
mod sample;
mod sandbox;
mod segment;
mod signals;
mod store;
mod user;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::Config;
use crate::store::Store;

pub use output::Output;
pub use signals::Signals;

/// Exit codes, so scripts and systemd can tell failures apart.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The command failed, or the export run did not succeed.
    pub const FAILED: u8 = 1;
    /// The command line is wrong (clap's own code).
    pub const USAGE: u8 = 2;
    /// `export verify` found a list that drifted from its segment (members missing or lingering), and did not
    /// repair it.
    pub const DRIFTED: u8 = 3;
    /// The export is already running elsewhere; try again later.
    pub const BUSY: u8 = 75;
    /// The configuration file is invalid; fix it before starting again (systemd: RestartPreventExitStatus=78).
    pub const CONFIG: u8 = 78;
    /// Stopped at once by a second SIGTERM or SIGINT.
    pub const ABORTED: u8 = 130;
}

/// An error that carries its exit code, and the kind of its JSON error document when the code alone does not say
/// it (see `error::ErrorKind::of`).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: u8,
    pub kind: Option<error::ErrorKind>,
    pub message: String,
}

impl Exit {
    pub fn error(code: u8, message: impl Into<String>) -> anyhow::Error {
        Exit { code, kind: None, message: message.into() }.into()
    }

    /// A value given on the command line is refused (exit 1, kind `invalid_input`).
    pub fn invalid(message: impl Into<String>) -> anyhow::Error {
        Exit::with_kind(error::ErrorKind::InvalidInput, message)
    }

    /// A failure (exit 1) whose cause only survives as text, of a known kind.
    pub fn with_kind(kind: error::ErrorKind, message: impl Into<String>) -> anyhow::Error {
        Exit { code: exit::FAILED, kind: Some(kind), message: message.into() }.into()
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "segment-exporter",
    version,
    about = "Keeps Iterable static lists equal to customer segments.",
    long_about = "Keeps Iterable static lists equal to customer segments.\n\n\
        Add an Iterable connection, define segments (named queries over your profiles), and an export that sends \
        each segment to an Iterable list of the same name. Every run sends only what changed since the last \
        successful one, and resumes exactly where it stopped if it was interrupted.\n\n\
        Try it without an Iterable account: `segment-exporter sandbox` serves an Iterable-compatible API locally.",
    after_help = "Exit codes: 0 success, 1 failure (or a run that did not succeed), 2 usage error, \
        3 `export verify` found a list that drifted (and did not repair it), 75 export already running (for edits \
        and removals: add --cancel-run), 78 invalid configuration, \
        130 stopped at once by a second signal."
)]
pub struct Cli {
    /// Configuration file [default: config/segment-exporter.toml when present, else built-in defaults].
    #[arg(long, global = true, env = "SEGMENT_EXPORTER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one JSON document on stdout instead of text, errors included ({"error": {"kind", "message"}}); times
    /// in RFC 3339 UTC.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage Iterable connections (API key, region, privacy consent).
    #[command(subcommand)]
    Connection(connection::ConnectionCmd),
    /// Manage segments: named queries over customer profiles.
    #[command(subcommand)]
    Segment(segment::SegmentCmd),
    /// Manage and run exports: segments sent to Iterable lists.
    #[command(subcommand)]
    Export(export::ExportCmd),
    /// Show run history, runs in progress, and invalid or rejected members.
    Runs(runs::RunsArgs),
    /// Notification channels (webhook, Slack, email) that exports tell when they fail, are stopped by a guard or
    /// recover, and their deliveries.
    #[command(subcommand)]
    Notify(notify::NotifyCmd),
    /// Manage accounts for the HTTP API: admins and contributors, their tokens and passwords.
    #[command(subcommand)]
    User(user::UserCmd),
    /// Show the audit trail: who changed what, when and from where.
    Audit(audit::AuditArgs),
    /// The store itself: migrate a PostgreSQL store's schema, copy a SQLite store into PostgreSQL.
    #[command(subcommand)]
    Store(store::StoreCmd),
    /// Serve an Iterable-compatible API on localhost, to try everything without an Iterable account.
    Sandbox(sandbox::SandboxArgs),
    /// Run as a service: scheduled refreshes, trigger files, the web console (at /), the HTTP API and status
    /// endpoints on daemon.status_listen (HTTPS with daemon.tls_cert and daemon.tls_key); stops cleanly on SIGTERM.
    Daemon,
    /// Exit 0 when the daemon's /healthz answers (for container HEALTHCHECKs), 1 otherwise.
    Healthcheck {
        /// Status address to ask [default: daemon.status_listen, with 0.0.0.0 read as 127.0.0.1].
        #[arg(long, value_name = "ADDR")]
        addr: Option<String>,
    },
    /// Check the configuration file, the listener (HTTPS or plain HTTP, and whether that is allowed on its
    /// address) and the stored exports; exit 78 when the config is invalid.
    Validate,
    /// Write a SQLite file of generated customer profiles (for the demo and the benchmark).
    SampleData(sample::SampleArgs),
    /// Print a shell completion script, e.g. `segment-exporter completions bash > /etc/bash_completion.d/segment-exporter`.
    Completions {
        /// The shell to complete in.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), e.g. `segment-exporter man > /usr/share/man/man1/segment-exporter.1`.
    Man,
}

impl Cli {
    /// Whether this command draws a progress bar on stderr, so info logs would garble it.
    pub fn draws_progress_bar(&self) -> bool {
        use std::io::IsTerminal;
        matches!(&self.command, Command::Export(export::ExportCmd::Run(_)))
            && !self.json
            && std::io::stderr().is_terminal()
    }

    /// Whether this command stops gracefully on a first SIGTERM/SIGINT (so `main` hands it `Signals`) rather than
    /// keeping the default (a signal ends it at once).
    pub fn stops_gracefully(&self) -> bool {
        matches!(&self.command, Command::Daemon | Command::Export(export::ExportCmd::Run(_)))
    }

    /// Whether this command reloads on SIGHUP.
    pub fn reloads_on_hangup(&self) -> bool {
        matches!(&self.command, Command::Daemon)
    }
}

/// What every handler gets: the loaded config and how to print.
pub struct Ctx {
    pub config: Arc<Config>,
    pub config_path: Option<PathBuf>,
    pub out: Output,
    pub signals: Signals,
}

impl Ctx {
    pub async fn store(&self) -> anyhow::Result<Store> {
        Ok(Store::open_configured(&self.config).await?)
    }

    /// Who the CLI acts as: the local administrator, `local:OSUSER`.
    pub fn actor(&self) -> crate::access::Actor {
        crate::access::Actor::local()
    }

    /// Records in the audit trail a change made (or a run asked for) from the CLI.
    pub async fn audit(&self, store: &Store, action: &str, target: &str, detail: Option<String>) -> anyhow::Result<()> {
        let actor = self.actor();
        Ok(crate::access::audit(store, &self.config, &actor, "cli", action, Some(target), detail).await?)
    }
}

/// Runs a parsed command; returns the exit code.
pub async fn run(cli: Cli, config: Config, config_path: Option<PathBuf>, signals: Signals) -> anyhow::Result<u8> {
    let ctx = Ctx { config: Arc::new(config), config_path, out: Output { json: cli.json }, signals };
    match cli.command {
        Command::Connection(cmd) => connection::run(&ctx, cmd).await,
        Command::Segment(cmd) => segment::run(&ctx, cmd).await,
        Command::Export(cmd) => export::run(&ctx, cmd).await,
        Command::Runs(args) => runs::run(&ctx, args).await,
        Command::Notify(cmd) => notify::run(&ctx, cmd).await,
        Command::User(cmd) => user::run(&ctx, cmd).await,
        Command::Audit(args) => audit::run(&ctx, args).await,
        Command::Store(cmd) => store::run(&ctx, cmd).await,
        Command::Sandbox(args) => sandbox::run(&ctx, args).await,
        Command::Daemon => daemon(&ctx).await,
        Command::Healthcheck { addr } => healthcheck(&ctx, addr).await,
        Command::Validate => validate(&ctx).await,
        Command::SampleData(args) => sample::run(&ctx, args).await,
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "segment-exporter", &mut script);
            if ctx.out.json {
                let script = String::from_utf8_lossy(&script);
                ctx.out.json(&serde_json::json!({ "shell": shell.to_string(), "script": script }));
                return Ok(exit::OK);
            }
            output::print_raw(&script)?;
            Ok(exit::OK)
        }
        Command::Man => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            if ctx.out.json {
                ctx.out.json(&serde_json::json!({ "format": "roff", "page": String::from_utf8_lossy(&page) }));
                return Ok(exit::OK);
            }
            output::print_raw(&page)?;
            Ok(exit::OK)
        }
    }
}
async fn daemon(ctx: &Ctx) -> anyhow::Result<u8> {
    let built = crate::daemon::Daemon::build((*ctx.config).clone(), ctx.config_path.clone(), None).await;
    let daemon = match built {
        Ok(d) => d,
        Err(crate::daemon::DaemonError::Config(e)) => return Err(Exit::error(exit::CONFIG, e)),
        Err(e) => return Err(e.into()),
    };
    let (handle, signals) = (daemon.handle(), ctx.signals.clone());
    let reloads = tokio::spawn(async move {
        loop {
            signals.hangup().await;
            handle.reload().await;
        }
    });
    let stop = ctx.signals.stop();
    let result = daemon.run_until(stop.cancelled_owned()).await;
    reloads.abort();
    result?;
    if ctx.out.json {
        ctx.out.json(&serde_json::json!({ "stopped": true }));
    }
    Ok(exit::OK)
}

async fn healthcheck(ctx: &Ctx, addr: Option<String>) -> anyhow::Result<u8> {
    let addr = match addr.or_else(|| ctx.config.daemon.status_addr().map(str::to_string)) {
        Some(a) => a.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]"),
        None => {
            return Err(Exit::error(exit::FAILED, "daemon.status_listen is off; give --addr or turn the listener on"))
        }
    };
    let scheme = if ctx.config.daemon.tls_cert.is_some() { "https" } else { "http" };
    // The certificate names the service's public host, not the address asked here; and the check sends nothing
    // secret and only reads "ok", so it does not verify the certificate.
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .danger_accept_invalid_certs(scheme == "https")
        .build()?;
    let url = format!("{scheme}://{addr}/healthz");
    match client.get(&url).send().await {
        Ok(r) if r.status().is_success() => {
            if ctx.out.json {
                ctx.out.json(&serde_json::json!({ "healthy": true, "address": addr, "status": r.status().as_u16() }));
            } else {
                println!("healthy");
            }
            Ok(exit::OK)
        }
        Ok(r) => Err(Exit::error(exit::FAILED, format!("{url} answered {}", r.status()))),
        Err(e) => Err(Exit::error(exit::FAILED, format!("{url} did not answer: {e}"))),
    }
}

async fn validate(ctx: &Ctx) -> anyhow::Result<u8> {
    crate::daemon::check_paths(&ctx.config, ctx.config_path.as_deref()).map_err(|e| Exit::error(exit::CONFIG, e))?;
    let listener = listener_check(&ctx.config).map_err(|e| Exit::error(exit::CONFIG, e))?;
    let mut problems: Vec<String> =
        crate::daemon::host_check::missing_public_hosts(&ctx.config.daemon).into_iter().collect();
    let store = ctx.store().await?;
    for export in store.exports().await? {
        if let Err(e) = crate::schedule::Schedule::parse(&export.schedule) {
            problems.push(format!("export '{}': schedule {e}", export.name));
        }
        if export.connection_id.is_none() {
            problems.push(format!("export '{}' has no connection (it is disabled)", export.name));
        }
    }
    // Scheduled runs on these connections would be refused.
    for conn in store.connections().await? {
        if let Some(problem) = crate::access::connection_export_user_problem(&store, &conn).await? {
            problems.push(problem);
        }
    }
    problems.extend(sources_check(&ctx.config, &store).await?);
    let smtp = &ctx.config.smtp;
    for channel in store.channels().await? {
        if channel.kind == crate::store::ChannelKind::Email && (smtp.host.is_none() || smtp.from.is_none()) {
            problems.push(format!(
                "channel '{}' sends email, but [smtp] host and from are not both set: its notifications wait in the \
                 outbox until they are",
                channel.name
            ));
        }
    }
    let shared = (store.kind() == crate::store::Kind::Postgres).then(|| {
        let s = &ctx.config.store;
        format!(
            "Shared store: leases renewed every {}, lost after {}; a run whose daemon is lost is taken over then, plus \
             iterable.timeout ({}).",
            humantime::format_duration(s.lease_renew),
            humantime::format_duration(s.lease_ttl),
            humantime::format_duration(ctx.config.iterable.timeout)
        )
    });
    let source = ctx.config_path.as_ref().map_or("built-in defaults".to_string(), |p| p.display().to_string());
    if ctx.out.json {
        ctx.out
            .json(&serde_json::json!({ "config": source, "valid": true, "listener": listener, "warnings": problems }));
    } else {
        println!("Configuration OK ({source}); store: {}.", ctx.config.store.describe());
        println!("Listener: {listener}.");
        if let Some(shared) = shared {
            println!("{shared}");
        }
        for p in &problems {
            println!("warning: {p}");
        }
    }
    Ok(exit::OK)
}

/// What `[sources] allowed_dirs` will let segments saved over the HTTP API read: folders that are not there, a
/// kernel that cannot confine SQLite, and segments saved over HTTP that will not be read as things stand.
async fn sources_check(config: &Config, store: &crate::store::Store) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let dirs = &config.sources.allowed_dirs;
    for dir in dirs.iter().filter(|dir| !dir.is_dir()) {
        problems.push(format!(
            "sources.allowed_dirs: '{}' is not a folder here; segments saved over the HTTP API cannot read from it",
            dir.display()
        ));
    }
    if !dirs.is_empty() {
        if let Err(why) = crate::source::sqlite_confinement_available() {
            problems.push(format!("sources.allowed_dirs: {why}; csv: and jsonl: segments are read as usual"));
        }
    }
    for seg in store.segments().await? {
        let Ok(spec) = seg.source.parse::<crate::source::SourceSpec>() else { continue };
        if let Err(why) = crate::source::check_reach(&spec, &seg.reach(&config.sources)) {
            problems.push(format!("segment '{}' (saved over the HTTP API) will not be read: {why}", seg.name));
        }
    }
    Ok(problems)
}

/// What the listener will serve, as the daemon will decide it at start (its TLS files read, too), or why it will
/// refuse to start.
fn listener_check(config: &Config) -> Result<String, String> {
    use crate::daemon::listener;
    let d = &config.daemon;
    let Some(addr) = d.status_addr() else { return Ok("off (daemon.status_listen = \"off\")".into()) };
    let parsed = addr.parse().map_err(|_| format!("daemon.status_listen '{addr}' is not an address"))?;
    let mode = listener::mode(d, parsed)?;
    if let (Some(cert), Some(key)) = (&d.tls_cert, &d.tls_key) {
        listener::tls_config(cert, key)?;
    }
    if let Some(file) = &d.metrics_token_file {
        crate::access::credentials::read_metrics_token(file)?;
    }
    let mut notes = vec![mode.describe(addr)];
    notes.extend(listener::proxies_note(d, mode));
    notes.push(listener::connections_note(d));
    notes.push(crate::daemon::host_check::names_note(d));
    Ok(notes.join("; "))
}

/// A secret from standard input: typed without echo on a terminal, else its first line; `missing` is the error
/// when there is none.
pub(crate) fn read_secret_stdin(prompt: &str, missing: &str) -> anyhow::Result<secrecy::SecretString> {
    use std::io::{IsTerminal as _, Read as _};
    let text = if std::io::stdin().is_terminal() {
        // Typed or pasted by a person: do not echo it.
        rpassword::prompt_password(prompt)?
    } else {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        text
    };
    let secret = text.lines().next().unwrap_or("").trim().to_string();
    if secret.is_empty() {
        return Err(Exit::invalid(missing));
    }
    Ok(secrecy::SecretString::from(secret))
}
