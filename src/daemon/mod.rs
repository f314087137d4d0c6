//! The long-running service. Cron ticks, trigger files, store changes and reloads (SIGHUP, through a
//! `DaemonHandle`) all become one `Command` on one channel, consumed by one loop that owns which runs are in flight,
//! which are queued, and the schedule. `Daemon::build` makes it from a config (and, in tests, an already bound
//! listener); `run_until` runs it until a shutdown future completes. It installs no signal handler and never exits
//! the process: `main.rs` turns signals into that future and decides exit codes. Runs themselves are the export
//! engine's (`sync`), each in its own task behind the `Runner` trait; this module only decides when they start,
//! records the end of a run whose task could not (a panic, the end of the shutdown grace), and how the process
//! stops.

pub mod listener;
mod metrics;
mod scheduler;
mod status;
mod triggers;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use metrics::Metrics;
pub use status::{ExportStatus, Shared};
pub use triggers::{check_paths, valid_trigger_name, write_trigger, ALL as TRIGGER_ALL};

use crate::config::Config;
use crate::schedule::Schedule;
use crate::store::{RunStatus, Store};
use crate::sync::{Engine, Progress, RunLock, RunOptions, RunReport, SyncError};
use scheduler::Scheduler;
use status::LastRun;

/// Everything that can ask the daemon to do something.
#[derive(Debug)]
pub enum Command {
    /// Run one export (queued as a follow-up when it is running).
    Run { export: String, trigger: &'static str, note: Option<String> },
    /// Run every enabled export, or only those on the refresh schedule.
    RunAll { trigger: &'static str, refresh_only: bool },
    /// Look for export changes in the store; with `reread_config` (SIGHUP) also re-read the config file.
    Reload { reread_config: bool },
    /// A run task ended, one way or another.
    Finished { export: String, outcome: Outcome },
    /// A person asked for a run through the API; `reply` says what became of the request. `full` and
    /// `allow_mass_removal` apply to the export's next run that starts (this one, or the follow-up it becomes).
    RunNow {
        export: String,
        by: String,
        full: bool,
        allow_mass_removal: bool,
        reply: tokio::sync::oneshot::Sender<RunQueued>,
    },
}

/// What became of a run asked for through the API.
#[derive(Debug)]
pub enum RunQueued {
    /// It started; its progress (and, soon, its run id).
    Started(Arc<Progress>),
    /// The export is running: one follow-up run is queued.
    FollowUp,
    /// At `daemon.max_concurrent_runs`: it waits for a free slot.
    Waiting,
    /// Another process runs the export: it runs when that run ends.
    Elsewhere,
    /// It cannot run (no connection, or the daemon is stopping).
    NotStarted,
}

/// How a run task ended.
#[derive(Debug)]
pub enum Outcome {
    /// The run went (succeeded, failed, refused, interrupted): the engine recorded it.
    Ran(RunReport),
    /// The export is running in another process (a CLI run, a second daemon).
    Busy,
    /// The run could not start, and why.
    NotStarted(String),
    /// The run task panicked, with the panic's message; the engine could not record its end.
    Panicked(String),
    /// The run task was stopped at the end of the shutdown grace period.
    Aborted,
}

/// Runs one export: the engine, or in tests anything that behaves like it.
pub trait Runner: Send + Sync {
    fn run_export<'a>(
        &'a self,
        export: &'a str,
        opts: &'a RunOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunReport, SyncError>>;
}

impl Runner for Engine {
    fn run_export<'a>(
        &'a self,
        export: &'a str,
        opts: &'a RunOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunReport, SyncError>> {
        Box::pin(Engine::run_export(self, export, opts, progress, cancel))
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen for status on {addr}: {cause}. Set daemon.status_listen to a free address, or \"off\".")]
    Listen { addr: String, cause: std::io::Error },
    #[error(transparent)]
    Scheduler(#[from] scheduler::SchedulerError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The configuration cannot be run (exit 78).
    #[error("{0}")]
    Config(String),
}

/// A run this daemon has in flight.
struct InFlight {
    cancel: CancellationToken,
    abort: tokio::task::AbortHandle,
    progress: Arc<Progress>,
    trigger: &'static str,
}

/// The service, built and ready to run: `Daemon::build`, then `run_until` a shutdown future.
pub struct Daemon {
    config: Arc<Config>,
    /// Sends each configuration reloaded to the HTTP API, which reads it per request.
    config_tx: tokio::sync::watch::Sender<Arc<Config>>,
    config_path: Option<PathBuf>,
    store: Store,
    engine: Engine,
    /// Runs exports instead of `engine` (tests).
    runner: Option<Arc<dyn Runner>>,
    shared: Arc<Shared>,
    scheduler: Scheduler,
    tx: mpsc::Sender<Command>,
    rx: Option<mpsc::Receiver<Command>>,
    listener: Option<tokio::net::TcpListener>,
    /// How the listener serves (decided at build, so a refusal stops the start) and, for HTTPS, its TLS config.
    listener_mode: Option<listener::Mode>,
    /// The served certificate, re-read when its files change.
    tls: Option<listener::Certificate>,
    /// The hash of `daemon.metrics_token_file`'s token.
    metrics_token: Option<String>,
    root: CancellationToken,
    running: HashMap<String, InFlight>,
    follow_ups: HashMap<String, &'static str>,
    waiting: VecDeque<(String, &'static str, Option<String>)>,
    /// Exports asked for while another process runs them: started once that process's lock frees.
    elsewhere: HashMap<String, (&'static str, Option<String>)>,
    fingerprint: Option<String>,
    stopping: Option<Instant>,
    /// (full, allow_mass_removal) asked for through the API, for the export's next run that starts.
    run_options: HashMap<String, (bool, bool)>,
}

/// Asks a running daemon to do things, from outside its loop (SIGHUP, tests).
#[derive(Clone)]
pub struct DaemonHandle(mpsc::Sender<Command>);

impl DaemonHandle {
    /// Re-read the config file and the exports (what SIGHUP does).
    pub async fn reload(&self) {
        let _ = self.0.send(Command::Reload { reread_config: true }).await;
    }

    /// Run an export as a trigger file would.
    pub async fn run(&self, export: &str) {
        let _ = self.0.send(Command::Run { export: export.into(), trigger: "trigger-file", note: None }).await;
    }
}

/// The triggers of runs nobody asked for at that moment: they go on behalf of the connection's export user.
const SCHEDULED: [&str; 2] = ["schedule", "missed-schedule"];

/// How often an export queued behind another process's run checks whether that run ended.
const ELSEWHERE_CHECK: Duration = Duration::from_millis(500);
/// After the grace period, how long the loop waits for the stopped run tasks to hand back their runs.
const ABORT_WAIT: Duration = Duration::from_secs(3);

impl Daemon {
    /// Opens the store, marks runs that a stopped process left `running` as interrupted, binds the status
    /// listener (`listener` when given, else `daemon.status_listen`) and starts the scheduler. Nothing runs until
    /// `run_until`.
    pub async fn build(
        config: Config,
        config_path: Option<PathBuf>,
        listener: Option<tokio::net::TcpListener>,
    ) -> Result<Daemon, DaemonError> {
        check_paths(&config, config_path.as_deref()).map_err(DaemonError::Config)?;
        let config = Arc::new(config);
        let tz = config.daemon.tz().map_err(DaemonError::Config)?;
        let store = Store::open_configured(&config).await?;
        let shared = Arc::new(Shared::default());
        let engine = Engine::new(store.clone(), config.clone()).with_observer(shared_observer(&shared));

        let lock_dir = config.store.lock_dir();
        for e in store.exports().await? {
            // Ask first (never taking the lock of a run in flight, nor any lock when no run is left running), then
            // sweep only while holding the lock, so a run that starts meanwhile is never marked. The lock is then
            // held for one SQL statement, which a concurrent `export run` waits out.
            if RunLock::is_held(&lock_dir, e.id) || store.running_run(e.id).await?.is_none() {
                continue;
            }
            let Ok(_lock) = RunLock::try_acquire(&lock_dir, e.id) else { continue };
            let ids = store.interrupt_orphaned_runs(e.id).await?;
            if !ids.is_empty() {
                tracing::warn!(export = %e.name, runs = ?ids, "Runs left unfinished by a stopped process are marked interrupted; the next run resumes them.");
            }
        }

        let listener = match (listener, config.daemon.status_addr()) {
            (Some(l), _) => Some(l),
            (None, Some(addr)) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|cause| DaemonError::Listen { addr: addr.to_string(), cause })?,
            ),
            (None, None) => None,
        };
        let (listener_mode, tls) = match &listener {
            None => (None, None),
            Some(l) => {
                let addr = l.local_addr().map_err(|cause| DaemonError::Listen { addr: "?".into(), cause })?;
                let mode = listener::mode(&config.daemon, addr).map_err(DaemonError::Config)?;
                let tls = match (&config.daemon.tls_cert, &config.daemon.tls_key) {
                    (Some(cert), Some(key)) if mode.is_tls() => {
                        Some(listener::Certificate::load(cert, key).map_err(DaemonError::Config)?)
                    }
                    _ => None,
                };
                (Some(mode), tls)
            }
        };
        let metrics_token = match &config.daemon.metrics_token_file {
            Some(path) => Some(crate::access::credentials::read_metrics_token(path).map_err(DaemonError::Config)?),
            None => None,
        };
        let (tx, rx) = mpsc::channel(256);
        let scheduler = Scheduler::start(tz).await?;
        Ok(Daemon {
            config_tx: tokio::sync::watch::Sender::new(config.clone()),
            config,
            config_path,
            store,
            engine,
            runner: None,
            shared,
            scheduler,
            tx,
            rx: Some(rx),
            listener,
            listener_mode,
            tls,
            metrics_token,
            root: CancellationToken::new(),
            running: HashMap::new(),
            follow_ups: HashMap::new(),
            waiting: VecDeque::new(),
            elsewhere: HashMap::new(),
            fingerprint: None,
            stopping: None,
            run_options: HashMap::new(),
        })
    }

    /// Runs exports with `runner` instead of the engine (tests inject failures this way).
    pub fn with_runner(mut self, runner: Arc<dyn Runner>) -> Daemon {
        self.runner = Some(runner);
        self
    }

    /// Where the status endpoint listens, if it does.
    pub fn status_address(&self) -> Option<std::net::SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn handle(&self) -> DaemonHandle {
        DaemonHandle(self.tx.clone())
    }

    fn runner(&self) -> Arc<dyn Runner> {
        self.runner.clone().unwrap_or_else(|| Arc::new(self.engine.clone()))
    }

    /// Runs until `shutdown` completes, then stops: no new runs, runs in flight get `daemon.shutdown_grace` to
    /// finish their batches and are recorded `interrupted`; those still going after it are stopped and recorded
    /// `interrupted` too. Returns when the process may exit.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
        let Some(mut rx) = self.rx.take() else { return Ok(()) };
        let stop_tasks = CancellationToken::new();
        let _stop_tasks = stop_tasks.clone().drop_guard();
        if let Some(listener) = self.listener.take() {
            let local = listener.local_addr().ok();
            let address = local.map_or_else(|| "?".to_string(), |a| a.to_string());
            let mode = self.listener_mode.unwrap_or(listener::Mode::PlainLoopback);
            tracing::info!(address = %address, https = mode.is_tls(), "Status endpoint listening.");
            tracing::info!("Listener: {}.", mode.describe(&address));
            if let Some(note) = listener::proxies_note(&self.config.daemon, mode) {
                tracing::info!("Listener: {note}.");
            }
            let api = crate::api::ApiState {
                store: self.store.clone(),
                config: self.config_tx.subscribe(),
                commands: self.tx.clone(),
                shared: self.shared.clone(),
                throttle: Default::default(),
                tls: mode.is_tls(),
                metrics_token: self.metrics_token.clone(),
            };
            let mut private = status::private_router(self.shared.clone());
            if !local.is_some_and(|a| a.ip().is_loopback()) {
                private = private
                    .route_layer(axum::middleware::from_fn_with_state(api.clone(), crate::api::metrics_readers_only));
            }
            let app = status::open_router(self.shared.clone()).merge(private).merge(crate::api::router(api));
            let (tls, stop) = (self.tls.as_ref().map(listener::Certificate::live), stop_tasks.clone());
            tokio::spawn(async move {
                if let Err(e) = listener::serve(listener, tls, app, stop).await {
                    tracing::error!(error = %e, "The status listener stopped.");
                }
            });
        }
        let config = self.config.clone();
        tokio::spawn(triggers::watch(
            config.daemon.trigger_dir.clone(),
            config.daemon.trigger_poll_interval,
            self.store.clone(),
            self.tx.clone(),
            stop_tasks.clone(),
        ));
        self.reload_exports(true).await;
        if config.daemon.run_missed_on_start {
            self.run_missed().await;
        }
        self.shared.lock().ready = true;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        tracing::info!(
            refresh = %config.daemon.refresh_schedule, time_zone = %config.daemon.time_zone,
            trigger_dir = %config.daemon.trigger_dir.display(), "Daemon ready."
        );

        let mut shutdown = std::pin::pin!(shutdown);
        let mut reload = tokio::time::interval(config.daemon.reload_interval);
        reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut elsewhere = tokio::time::interval(ELSEWHERE_CHECK);
        elsewhere.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut aborted_at: Option<Instant> = None;
        loop {
            if self.stopping.is_some() && self.running.is_empty() {
                break;
            }
            let deadline = match aborted_at {
                Some(at) => Some(at + ABORT_WAIT),
                None => self.stopping.map(|s| s + self.config.daemon.shutdown_grace),
            };
            let command = tokio::select! {
                c = rx.recv() => c,
                _ = &mut shutdown, if self.stopping.is_none() => {
                    self.begin_shutdown().await;
                    continue;
                }
                _ = reload.tick(), if self.stopping.is_none() => Some(Command::Reload { reread_config: false }),
                _ = elsewhere.tick(), if !self.elsewhere.is_empty() => {
                    self.start_freed().await;
                    continue;
                }
                _ = sleep_until(deadline) => {
                    if aborted_at.is_some() {
                        tracing::error!(runs = self.running.len(), "Stopped runs did not hand back in time; exiting. Their runs stay `running` until the next start marks them interrupted.");
                        break;
                    }
                    tracing::warn!(runs = self.running.len(), "Shutdown grace period over; stopping the runs still going. What Iterable acknowledged is recorded, and they resume at the next start.");
                    for run in self.running.values() {
                        run.abort.abort();
                    }
                    aborted_at = Some(Instant::now());
                    continue;
                }
            };
            match command {
                Some(c) => self.handle_command(c).await,
                None => break,
            }
        }
        self.scheduler.shutdown().await;
        tracing::info!("Daemon stopped.");
        Ok(())
    }
}

fn shared_observer(shared: &Arc<Shared>) -> Arc<dyn crate::iterable::RequestObserver> {
    struct Observer(Arc<Shared>);
    impl crate::iterable::RequestObserver for Observer {
        fn observe(&self, endpoint: &str, status: Option<u16>, elapsed: Duration) {
            self.0.metrics.observe(endpoint, status, elapsed);
        }
    }
    Arc::new(Observer(shared.clone()))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// The text of a panic's payload.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

impl Daemon {
    async fn handle_command(&mut self, command: Command) {
        match command {
            Command::Run { export, trigger, note } => self.request_run(export, trigger, note).await,
            Command::RunAll { trigger, refresh_only } => {
                let exports = match self.store.exports().await {
                    Ok(e) => e,
                    Err(e) => return tracing::error!(error = %e, "Cannot read exports from the store."),
                };
                for e in exports.into_iter().filter(|e| e.enabled && e.connection_id.is_some()) {
                    if !refresh_only || Schedule::parse(&e.schedule) == Ok(Schedule::Refresh) {
                        self.request_run(e.name, trigger, None).await;
                    }
                }
            }
            Command::Reload { reread_config } => {
                if reread_config {
                    self.reload_config();
                }
                self.refresh_certificate();
                let dst_changed = self.scheduler.offset_changed();
                if dst_changed {
                    tracing::info!("The time zone's UTC offset changed (daylight saving time); rescheduling.");
                }
                self.reload_exports(reread_config || dst_changed).await;
            }
            Command::Finished { export, outcome } => self.finished(export, outcome).await,
            Command::RunNow { export, by, full, allow_mass_removal, reply } => {
                let was_running = self.running.contains_key(&export);
                if full || allow_mass_removal {
                    let asked = self.run_options.entry(export.clone()).or_default();
                    asked.0 |= full;
                    asked.1 |= allow_mass_removal;
                }
                self.request_run(export.clone(), "api", Some(format!("asked for by {by}"))).await;
                let queued = match self.running.get(&export) {
                    Some(run) if !was_running => RunQueued::Started(run.progress.clone()),
                    Some(_) if self.follow_ups.contains_key(&export) => RunQueued::FollowUp,
                    _ if self.waiting.iter().any(|(e, _, _)| *e == export) => RunQueued::Waiting,
                    _ if self.elsewhere.contains_key(&export) => RunQueued::Elsewhere,
                    _ => RunQueued::NotStarted,
                };
                let _ = reply.send(queued);
            }
        }
    }

    async fn request_run(&mut self, export: String, trigger: &'static str, note: Option<String>) {
        if self.stopping.is_some() {
            return tracing::info!(export = %export, trigger, "Stopping; not starting new runs.");
        }
        match self.store.export(&export).await {
            Ok(e) if e.enabled && e.connection_id.is_some() => {
                if SCHEDULED.contains(&trigger) && self.refuse_without_export_user(&e, trigger).await {
                    return;
                }
            }
            Ok(_) => {
                return tracing::warn!(export = %export, trigger, "Export is disabled (no connection); not running it.")
            }
            Err(_) => {
                return tracing::warn!(export = %export, trigger, "No export has this name; check the trigger file name or schedule.")
            }
        }
        if self.running.contains_key(&export) {
            if self.follow_ups.contains_key(&export) {
                tracing::info!(export = %export, trigger, "A follow-up run is already queued; this request is merged into it.");
            } else {
                tracing::info!(export = %export, trigger, "Export is running; queued one follow-up run.");
                self.follow_ups.insert(export.clone(), trigger);
                self.set_status(&export, |s| s.follow_up_queued = true);
            }
            return;
        }
        if self.waiting.iter().any(|(e, _, _)| *e == export) {
            return tracing::info!(export = %export, trigger, "Export is already waiting for a free slot.");
        }
        if self.elsewhere.contains_key(&export) {
            return tracing::info!(export = %export, trigger, "A run is already queued behind the other process's run; this request is merged into it.");
        }
        if self.running_elsewhere(&export).await {
            return self.queue_elsewhere(export, trigger);
        }
        if self.running.len() >= self.config.daemon.max_concurrent_runs {
            tracing::info!(export = %export, trigger, running = self.running.len(), "At daemon.max_concurrent_runs; the run waits for a free slot.");
            self.waiting.push_back((export, trigger, note));
            return;
        }
        self.start_run(export, trigger, note);
    }

    /// Scheduled runs go on behalf of their connection's export user; when that account is gone or no longer an
    /// administrator, the run is recorded `refused` with the reason (naming what an administrator must do) instead.
    async fn refuse_without_export_user(&self, export: &crate::store::Export, trigger: &'static str) -> bool {
        let Some(connection_id) = export.connection_id else { return false };
        let problem = match self.store.connection_by_id(connection_id).await {
            Ok(conn) => crate::access::connection_export_user_problem(&self.store, &conn).await,
            Err(e) => Err(e),
        };
        let why = match problem {
            Ok(Some(why)) => why,
            Ok(None) => return false,
            Err(e) => {
                tracing::error!(export = %export.name, error = %e, "Cannot read the connection's export user.");
                return false;
            }
        };
        tracing::warn!(export = %export.name, trigger, reason = %why, "Scheduled run refused.");
        let recorded = match self.store.start_run(export.id, trigger, false, None).await {
            Ok(run_id) => self.store.finish_run(run_id, RunStatus::Refused, Some(&why)).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = recorded {
            tracing::error!(export = %export.name, error = %e, "Cannot record the refused run.");
        }
        true
    }

    /// Whether another process (a CLI run, a second daemon) holds the export's run lock. Asks without taking it.
    async fn running_elsewhere(&self, export: &str) -> bool {
        let Ok(e) = self.store.export(export).await else { return false };
        !self.running.contains_key(export) && RunLock::is_held(&self.config.store.lock_dir(), e.id)
    }

    /// Queues one run of `export` for when the other process's run ends, as a follow-up of that run.
    fn queue_elsewhere(&mut self, export: String, trigger: &'static str) {
        tracing::info!(export = %export, trigger, "Export is running in another process; queued one follow-up run for when it ends.");
        let note = Some(format!("follow-up: requested ({trigger}) while a run in another process was in progress"));
        self.set_status(&export, |s| s.follow_up_queued = true);
        self.elsewhere.insert(export, (trigger, note));
    }

    /// Starts the runs queued behind other processes' runs that have ended.
    async fn start_freed(&mut self) {
        let names: Vec<String> = self.elsewhere.keys().cloned().collect();
        for name in names {
            if !self.running_elsewhere(&name).await {
                if let Some((trigger, note)) = self.elsewhere.remove(&name) {
                    self.request_run(name, trigger, note).await;
                }
            }
        }
    }

    fn start_run(&mut self, export: String, trigger: &'static str, note: Option<String>) {
        let cancel = self.root.child_token();
        let progress = Arc::new(Progress::default());
        self.shared.metrics.run_started();
        self.set_status(&export, |s| {
            s.running = true;
            s.progress = Some(progress.clone());
        });
        let (runner, tx) = (self.runner(), self.tx.clone());
        let (full, allow_mass_removal) = self.run_options.remove(&export).unwrap_or_default();
        let opts = RunOptions { trigger: trigger.to_string(), note, full, allow_mass_removal, ..RunOptions::default() };
        let task = tokio::spawn({
            let (export, progress, cancel) = (export.clone(), progress.clone(), cancel.clone());
            async move { runner.run_export(&export, &opts, progress, cancel).await }
        });
        let abort = task.abort_handle();
        tokio::spawn({
            let (export, progress) = (export.clone(), progress.clone());
            async move {
                let done = CancellationToken::new();
                tokio::spawn(log_progress(export.clone(), progress, done.clone()));
                // The run is its own task, so a panic in it ends here as an error instead of never.
                let outcome = match task.await {
                    Ok(Ok(report)) => Outcome::Ran(report),
                    Ok(Err(SyncError::AlreadyRunning { .. })) => Outcome::Busy,
                    Ok(Err(e)) => Outcome::NotStarted(e.to_string()),
                    Err(e) if e.is_panic() => Outcome::Panicked(panic_message(e.into_panic())),
                    Err(_) => Outcome::Aborted,
                };
                done.cancel();
                let _ = tx.send(Command::Finished { export, outcome }).await;
            }
        });
        self.shared.in_flight.lock().expect("in-flight lock").insert(export.clone(), progress.clone());
        self.running.insert(export, InFlight { cancel, abort, progress, trigger });
    }

    async fn finished(&mut self, export: String, outcome: Outcome) {
        let Some(run) = self.running.remove(&export) else { return };
        run.cancel.cancel();
        match &outcome {
            Outcome::Ran(report) => self.shared.metrics.run_finished(&export, Some(report)),
            Outcome::Busy => {
                self.shared.metrics.run_not_started();
                if self.stopping.is_none() {
                    self.queue_elsewhere(export.clone(), run.trigger);
                }
            }
            Outcome::NotStarted(e) => {
                self.shared.metrics.run_finished(&export, None);
                tracing::warn!(export = %export, error = %e, "Run could not start.");
            }
            Outcome::Panicked(message) => {
                self.shared.metrics.run_finished(&export, None);
                tracing::error!(export = %export, run_id = run.progress.run_id(), panic = %message, "The run crashed (a bug: please report it); it is recorded failed. What Iterable acknowledged is recorded, and the next run resumes from there.");
                let error = format!("the run crashed: {message}. What Iterable acknowledged is recorded; the next run resumes from there");
                self.record_end(&run, RunStatus::Failed, &error).await;
            }
            Outcome::Aborted => {
                self.shared.metrics.run_finished(&export, None);
                let error = format!(
                    "stopped when daemon.shutdown_grace ({}) ran out during a shutdown; what Iterable acknowledged is recorded and the next run resumes from there",
                    humantime::format_duration(self.config.daemon.shutdown_grace)
                );
                self.record_end(&run, RunStatus::Interrupted, &error).await;
            }
        }
        // Only once its end is recorded: GET /runs/{id} never shows a run "running" without its live progress.
        self.shared.in_flight.lock().expect("in-flight lock").remove(&export);
        self.refresh_status(&export).await;
        if let Some(trigger) = self.follow_ups.remove(&export) {
            let note = Some(format!("follow-up: requested ({trigger}) while the previous run was in progress"));
            self.request_run(export, trigger, note).await;
        }
        while self.running.len() < self.config.daemon.max_concurrent_runs && self.stopping.is_none() {
            let Some((export, trigger, note)) = self.waiting.pop_front() else { break };
            self.start_run(export, trigger, note);
        }
    }

    /// Records the end of a run whose task could not (it panicked or was stopped), when its row exists.
    async fn record_end(&self, run: &InFlight, status: RunStatus, error: &str) {
        let Some(run_id) = run.progress.run_id() else { return };
        if let Err(e) = self.store.finish_run(run_id, status, Some(error)).await {
            tracing::error!(run_id, error = %e, "Cannot record the end of the run; the next start marks it interrupted.");
        }
    }

    async fn begin_shutdown(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        self.stopping = Some(Instant::now());
        self.shared.lock().stopping = true;
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        tracing::info!(
            runs = self.running.len(), grace = %humantime::format_duration(self.config.daemon.shutdown_grace),
            "Stopping: no new runs; letting batches in flight finish."
        );
        self.waiting.clear();
        self.follow_ups.clear();
        self.elsewhere.clear();
        self.scheduler.shutdown().await;
        self.root.cancel();
    }

    /// SIGHUP: re-read the config; a config with errors is rejected with every error, and the old one stays.
    /// Serves the certificate's files anew once they changed on disk (a renewal): new connections get it.
    fn refresh_certificate(&mut self) {
        match self.tls.as_mut().and_then(listener::Certificate::refresh) {
            None => {}
            Some(Ok(())) => tracing::info!("TLS certificate reloaded: new connections get the one now on disk."),
            Some(Err(e)) => tracing::error!(
                "TLS certificate not reloaded; the previous one is still served until the files are fixed. {e}"
            ),
        }
    }

    fn reload_config(&mut self) {
        let loaded = Config::load(self.config_path.as_deref());
        match loaded {
            Err(e) => tracing::error!("Config reload rejected; the previous configuration stays in force. {e}"),
            Ok((new, _)) => {
                if new.daemon.time_zone != self.config.daemon.time_zone
                    || new.daemon.status_listen != self.config.daemon.status_listen
                    || new.daemon.trigger_dir != self.config.daemon.trigger_dir
                    || new.store != self.config.store
                    || new.daemon.metrics_token_file != self.config.daemon.metrics_token_file
                    || (&new.daemon.tls_cert, &new.daemon.tls_key, new.daemon.allow_plain_http)
                        != (
                            &self.config.daemon.tls_cert,
                            &self.config.daemon.tls_key,
                            self.config.daemon.allow_plain_http,
                        )
                {
                    tracing::warn!("daemon.time_zone, daemon.status_listen, daemon.tls_cert, daemon.tls_key, daemon.allow_plain_http, daemon.metrics_token_file, daemon.trigger_dir and [store] take effect at the next restart.");
                }
                let mut kept = new;
                kept.daemon.time_zone = self.config.daemon.time_zone.clone();
                kept.daemon.status_listen = self.config.daemon.status_listen.clone();
                kept.daemon.tls_cert = self.config.daemon.tls_cert.clone();
                kept.daemon.tls_key = self.config.daemon.tls_key.clone();
                kept.daemon.allow_plain_http = self.config.daemon.allow_plain_http;
                kept.daemon.metrics_token_file = self.config.daemon.metrics_token_file.clone();
                kept.daemon.trigger_dir = self.config.daemon.trigger_dir.clone();
                kept.store = self.config.store.clone();
                self.config = Arc::new(kept);
                self.engine = self.engine.with_config(self.config.clone());
                self.config_tx.send_replace(self.config.clone());
                tracing::info!("Configuration reloaded.");
            }
        }
    }

    /// Picks up exports added, changed or removed with the CLI, rebuilding the schedule when they changed.
    async fn reload_exports(&mut self, force: bool) {
        let exports = match self.store.exports().await {
            Ok(e) => e,
            Err(e) => return tracing::error!(error = %e, "Cannot read exports from the store."),
        };
        let fingerprint = exports
            .iter()
            .map(|e| format!("{}|{}|{}|{}|{}", e.id, e.name, e.schedule, e.enabled, e.updated_at))
            .collect::<Vec<_>>()
            .join("\n");
        let changed = self.fingerprint.as_ref().is_some_and(|old| *old != fingerprint);
        if !force && !changed {
            return;
        }
        self.fingerprint = Some(fingerprint);
        if let Err(e) = self.scheduler.set_jobs(&self.config.daemon.refresh_schedule, &exports, &self.tx).await {
            tracing::error!(error = %e, "Cannot schedule the exports.");
        }
        let names: Vec<String> = exports.iter().map(|e| e.name.clone()).collect();
        {
            let mut s = self.shared.lock();
            let gone: Vec<String> = s.exports.keys().filter(|n| !names.contains(n)).cloned().collect();
            for n in gone {
                s.exports.remove(&n);
                self.shared.metrics.forget_export(&n);
            }
        }
        for name in &names {
            self.refresh_status(name).await;
        }
        if changed {
            tracing::info!(exports = names.len(), "Exports changed in the store; schedule updated.");
        }
    }

    /// At start-up: run once each export whose scheduled time passed since its last run (or its creation).
    async fn run_missed(&mut self) {
        let Ok(exports) = self.store.exports().await else { return };
        let Ok(tz) = self.config.daemon.tz() else { return };
        let now = chrono::Utc::now();
        for e in exports.into_iter().filter(|e| e.enabled && e.connection_id.is_some()) {
            let Ok(schedule) = Schedule::parse(&e.schedule) else { continue };
            let last = self.store.runs(Some(&e.name), 1).await.ok().and_then(|r| r.first().map(|r| r.started_at));
            let since = last.unwrap_or(e.created_at).with_timezone(&tz);
            if let Some(due) = schedule.next_after(Some(&self.config.daemon.refresh_schedule), &since) {
                if due <= now {
                    tracing::info!(export = %e.name, due = %due, "A scheduled run was missed while the daemon was down; running it now.");
                    self.request_run(e.name, "missed-schedule", None).await;
                }
            }
        }
    }

    fn set_status(&self, export: &str, f: impl FnOnce(&mut ExportStatus)) {
        if let Some(s) = self.shared.lock().exports.get_mut(export) {
            f(s);
        }
    }

    async fn refresh_status(&self, name: &str) {
        let Ok(e) = self.store.export(name).await else { return };
        let last = self.store.runs(Some(name), 1).await.ok().and_then(|r| r.into_iter().next());
        let last_success = self.store.last_success(e.id).await.ok().flatten();
        let tz = self.config.daemon.tz().unwrap_or(chrono_tz::UTC);
        let next_run = Schedule::parse(&e.schedule).ok().filter(|_| e.enabled).and_then(|s| {
            s.next_after(Some(&self.config.daemon.refresh_schedule), &chrono::Utc::now().with_timezone(&tz))
        });
        let running = self.running.contains_key(name);
        let mut s = self.shared.lock();
        let progress = if running { s.exports.get(name).and_then(|x| x.progress.clone()) } else { None };
        s.exports.insert(
            name.to_string(),
            ExportStatus {
                schedule: e.schedule,
                enabled: e.enabled && e.connection_id.is_some(),
                next_run,
                last_run: last.map(|r| LastRun {
                    id: r.id,
                    status: if r.status == RunStatus::Running && !running {
                        "interrupted".into()
                    } else {
                        r.status.to_string()
                    },
                    trigger: r.trigger,
                    started_at: r.started_at,
                    finished_at: r.finished_at,
                }),
                last_success,
                running,
                follow_up_queued: self.follow_ups.contains_key(name) || self.elsewhere.contains_key(name),
                progress,
            },
        );
    }
}

/// Logs a run's progress every few seconds while it goes.
async fn log_progress(export: String, progress: Arc<Progress>, done: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = done.cancelled() => return,
        }
        let (sent, planned, rate, left) = progress.snapshot();
        let (phase, list) = progress.phase();
        tracing::info!(
            export = %export, phase = ?phase, list = %list, done = sent, planned, per_second = rate as u64,
            seconds_left = left.map(|s| s as u64), "Run progress."
        );
    }
}
