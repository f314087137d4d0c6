//! The long-running service. Cron ticks, trigger files, store changes and reloads (SIGHUP, through a
//! `DaemonHandle`) all become one `Command` on one channel, consumed by one loop that owns which runs this process
//! has in flight and the schedule. Runs are asked for through the run queue (`crate::queue`), by this loop and by
//! the HTTP API alike; the loop takes from the queue what it has slots for. `Daemon::build` makes it from a config
//! (and, in tests, an already bound listener) and composes the HTTP app (status, API, console); `run_until` runs it
//! until a shutdown future completes. It installs no signal handler and never exits the process: `main.rs` turns
//! signals into that future and decides exit codes. Runs themselves are the export engine's (`sync`), each in its
//! own task behind the `Runner` trait; this module only decides when they start, records the end of a run whose
//! task could not (a panic, the end of the shutdown grace), and how the process stops.

mod app;
mod cluster;
mod connections;
pub mod host_check;
pub mod listener;
mod metrics;
mod scheduler;
mod status;
mod triggers;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use metrics::Metrics;
pub use status::{ExportStatus, Shared};
pub use triggers::{check_paths, valid_trigger_name, write_trigger, ALL as TRIGGER_ALL};

use crate::config::Config;
use crate::queue::{Ask, RunQueue, Taken, Trigger};
use crate::schedule::Schedule;
use crate::store::{RunStatus, Store, WaitingFor};
use crate::sync::{Engine, Progress, RunGuard, RunLock, RunOptions, RunReport, SyncError, VerifyOptions, VerifyReport};
use scheduler::Scheduler;
use status::LastRun;

/// Everything that can ask the daemon's loop to do something.
#[derive(Debug)]
pub enum Command {
    /// Ask for a run of one export (a trigger file; with `due_at`, one scheduled time of its schedule).
    Run { export: String, trigger: Trigger, due_at: Option<DateTime<Utc>> },
    /// Ask for a run of every enabled export, or only of those on the refresh schedule.
    RunAll { trigger: Trigger, refresh_only: bool, due_at: Option<DateTime<Utc>> },
    /// Look for export changes in the store; with `reread_config` (SIGHUP) also re-read the config file.
    Reload { reread_config: bool },
    /// A run task ended, one way or another.
    Finished { export_id: i64, outcome: Outcome },
}

/// How a run task ended.
#[derive(Debug)]
pub enum Outcome {
    /// The run went (succeeded, failed, refused, interrupted): the engine recorded it.
    Ran(RunReport),
    /// A verify went (and its repair, if it repaired): the engine recorded it.
    Verified(VerifyReport),
    /// The export is running in another process (a CLI run, a second daemon).
    Busy,
    /// The run could not start, and why.
    NotStarted(String),
    /// The run task panicked, with the panic's message; the engine could not record its end.
    Panicked(String),
    /// The run task was stopped at the end of the shutdown grace period.
    Aborted,
}

/// Runs one export whose run lock the run queue took: the engine, or in tests anything that behaves like it.
pub trait Runner: Send + Sync {
    fn run_taken<'a>(
        &'a self,
        guard: RunGuard,
        opts: &'a RunOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunReport, SyncError>>;

    /// Verifies one export whose run lock the run queue took (a runner that cannot verify refuses).
    fn verify_taken<'a>(
        &'a self,
        guard: RunGuard,
        opts: &'a VerifyOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<VerifyReport, SyncError>> {
        let _ = (opts, progress, cancel);
        Box::pin(async move {
            let export = guard.export_id().to_string();
            guard.release(true).await;
            Err(SyncError::NotRunnable { export, why: "this runner does not verify".into() })
        })
    }
}

impl Runner for Engine {
    fn verify_taken<'a>(
        &'a self,
        guard: RunGuard,
        opts: &'a VerifyOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<VerifyReport, SyncError>> {
        Box::pin(Engine::verify_taken(self, guard, opts, progress, cancel))
    }

    fn run_taken<'a>(
        &'a self,
        guard: RunGuard,
        opts: &'a RunOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, Result<RunReport, SyncError>> {
        Box::pin(Engine::run_taken(self, guard, opts, progress, cancel))
    }
}

/// What a task taken from the queue does.
enum Task {
    Run(RunOptions),
    Verify(VerifyOptions),
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
    export: String,
    request_id: i64,
    /// A verify that does not repair, whose request also asked for a run: that run is asked for when it ends.
    then_run: Option<Trigger>,
    cancel: CancellationToken,
    abort: tokio::task::AbortHandle,
    progress: Arc<Progress>,
}

/// The service, built and ready to run: `Daemon::build`, then `run_until` a shutdown future.
pub struct Daemon {
    /// A SQLite store's daemon lock, shared, held while this daemon lives (`store copy` needs the store whole).
    _daemon_lock: Option<crate::sync::DaemonLock>,
    config: Arc<Config>,
    /// Sends each configuration reloaded to the HTTP API, which reads it per request.
    config_tx: tokio::sync::watch::Sender<Arc<Config>>,
    config_path: Option<PathBuf>,
    store: Store,
    queue: RunQueue,
    engine: Engine,
    /// Decides what the ends of runs the engine could not finish tell.
    notifier: crate::notify::Notifier,
    /// Delivers notifications, in a task of its own.
    outbox: crate::notify::Outbox,
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
    /// How many client connections the listener keeps, and for how long idle (decided at build, with the listener).
    limits: Option<listener::Limits>,
    /// The hash of `daemon.metrics_token_file`'s token.
    metrics_token: Option<String>,
    root: CancellationToken,
    /// This process's runs in flight, by export id.
    running: HashMap<i64, InFlight>,
    /// Whether a queued request waits for another process's run to end (its lock is looked at again).
    waits_for_another_process: bool,
    fingerprint: Option<String>,
    stopping: Option<Instant>,
    /// How long to wait before resuming an export's run the store cut short, doubling while it keeps happening.
    resume_backoff: HashMap<i64, Duration>,
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
        let _ = self.0.send(Command::Run { export: export.into(), trigger: Trigger::TriggerFile, due_at: None }).await;
    }
}

/// How often a request queued behind another process's run looks at whether that run ended.
const ELSEWHERE_CHECK: Duration = Duration::from_millis(500);
/// How often a daemon on a shared (PostgreSQL) store looks at the queue without being woken.
const QUEUE_POLL: Duration = Duration::from_secs(1);
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
        let daemon_lock =
            match store.kind() {
                crate::store::Kind::Sqlite => match crate::sync::DaemonLock::shared(&config.store.lock_dir()) {
                    Ok(Some(lock)) => Some(lock),
                    Ok(None) => return Err(DaemonError::Config(
                        "the store is being copied (`segment-exporter store copy`): start the daemon once the copy \
                         ended, on the store the configuration names"
                            .into(),
                    )),
                    Err(e) => {
                        return Err(DaemonError::Config(format!(
                            "cannot take the daemon lock beside the store ({}): {e}",
                            config.store.lock_dir().display()
                        )))
                    }
                },
                crate::store::Kind::Postgres => None,
            };
        let shared = Arc::new(Shared::default());
        let notifier = crate::notify::Notifier::new(config.clone());
        let engine = Engine::new(store.clone(), config.clone())
            .with_observer(shared_observer(&shared))
            .with_teller(Arc::new(notifier.clone()));
        let outbox =
            crate::notify::Outbox::new(store.clone(), config.clone()).with_observer(delivery_observer(&shared));

        // On PostgreSQL, runs left by a daemon that stopped are taken over through their leases.
        let lock_dir = config.store.lock_dir();
        let exports = if store.kind() == crate::store::Kind::Sqlite { store.exports().await? } else { vec![] };
        for e in exports {
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
        let (listener_mode, tls, limits) = match &listener {
            None => (None, None, None),
            Some(l) => {
                let addr = l.local_addr().map_err(|cause| DaemonError::Listen { addr: "?".into(), cause })?;
                let mode = listener::mode(&config.daemon, addr).map_err(DaemonError::Config)?;
                let tls = match (&config.daemon.tls_cert, &config.daemon.tls_key) {
                    (Some(cert), Some(key)) if mode.is_tls() => {
                        Some(listener::Certificate::load(cert, key).map_err(DaemonError::Config)?)
                    }
                    _ => None,
                };
                (Some(mode), tls, Some(connection_limits(&config.daemon)))
            }
        };
        let metrics_token = match &config.daemon.metrics_token_file {
            Some(path) => Some(crate::access::credentials::read_metrics_token(path).map_err(DaemonError::Config)?),
            None => None,
        };
        let (tx, rx) = mpsc::channel(256);
        let scheduler = Scheduler::start(tz).await?;
        let queue = RunQueue::new(store.clone(), config.clone());
        if let Err(error) = queue.tidy().await {
            tracing::warn!(%error, "Could not tidy the run queue; it is tried again at the next start.");
        }
        Ok(Daemon {
            _daemon_lock: daemon_lock,
            config_tx: tokio::sync::watch::Sender::new(config.clone()),
            config,
            config_path,
            store,
            queue,
            engine,
            notifier,
            outbox,
            runner: None,
            shared,
            scheduler,
            tx,
            rx: Some(rx),
            listener,
            listener_mode,
            tls,
            limits,
            metrics_token,
            root: CancellationToken::new(),
            running: HashMap::new(),
            waits_for_another_process: false,
            fingerprint: None,
            stopping: None,
            resume_backoff: HashMap::new(),
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
            if let Some(warning) = host_check::missing_public_hosts(&self.config.daemon) {
                tracing::warn!("Listener: {warning}.");
            }
            let api = crate::api::ApiState {
                store: self.store.clone(),
                config: self.config_tx.subscribe(),
                queue: self.queue.clone(),
                throttle: Default::default(),
                tls: mode.is_tls(),
                metrics_token: self.metrics_token.clone(),
            };
            let app = app::compose(api, self.shared.clone(), local);
            let (tls, stop) = (self.tls.as_ref().map(listener::Certificate::live), stop_tasks.clone());
            let limits = self.limits.unwrap_or_else(|| connection_limits(&self.config.daemon));
            tokio::spawn(listener::serve(listener, tls, app, limits, stop));
        }
        let config = self.config.clone();
        tokio::spawn(triggers::watch(
            config.daemon.trigger_dir.clone(),
            config.daemon.trigger_poll_interval,
            self.store.clone(),
            self.tx.clone(),
            stop_tasks.clone(),
        ));
        cluster::spawn(self.store.clone(), self.queue.clone(), config.clone(), self.shared.clone(), stop_tasks.clone());
        tokio::spawn(self.outbox.clone().run(stop_tasks.clone()));
        self.reload_exports(true).await;
        if config.daemon.run_missed_on_start {
            self.run_missed().await;
        }
        self.dispatch().await;
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
        // On a shared store, requests of other daemons wake this one by notification; this catches any missed.
        let shared_store = self.store.kind() == crate::store::Kind::Postgres;
        let mut queue_poll = tokio::time::interval(QUEUE_POLL);
        queue_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                _ = self.queue.woken(), if self.stopping.is_none() => {
                    self.dispatch().await;
                    continue;
                }
                _ = elsewhere.tick(), if self.waits_for_another_process && self.stopping.is_none() => {
                    self.dispatch().await;
                    continue;
                }
                _ = queue_poll.tick(), if shared_store && self.stopping.is_none() => {
                    self.dispatch().await;
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

fn delivery_observer(shared: &Arc<Shared>) -> Arc<dyn crate::notify::DeliveryObserver> {
    struct Observer(Arc<Shared>);
    impl crate::notify::DeliveryObserver for Observer {
        fn delivery(&self, channel: &str, outcome: &'static str) {
            self.0.metrics.delivery(channel, outcome);
        }
    }
    Arc::new(Observer(shared.clone()))
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
            Command::Run { export, trigger, due_at } => {
                match self.store.export(&export).await {
                    Ok(e) => self.ask(&e, trigger, due_at).await,
                    Err(_) => {
                        tracing::warn!(export = %export, trigger = trigger.as_str(), "No export has this name; check the trigger file name or schedule.")
                    }
                }
                // At once, so that requests taken in order meet each other as they would one by one.
                self.dispatch().await;
            }
            Command::RunAll { trigger, refresh_only, due_at } => {
                let exports = match self.store.exports().await {
                    Ok(e) => e,
                    Err(e) => return tracing::error!(error = %e, "Cannot read exports from the store."),
                };
                for e in exports {
                    if !refresh_only || Schedule::parse(&e.schedule) == Ok(Schedule::Refresh) {
                        self.ask(&e, trigger, due_at).await;
                    }
                }
                self.dispatch().await;
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
            Command::Finished { export_id, outcome } => self.finished(export_id, outcome).await,
        }
    }

    /// Puts a request for a run of `export` in the queue (with `due_at`, the run of that scheduled time, once).
    async fn ask(&self, export: &crate::store::Export, trigger: Trigger, due_at: Option<DateTime<Utc>>) {
        if !export.enabled || export.connection_id.is_none() {
            return tracing::warn!(export = %export.name, trigger = trigger.as_str(), "Export is disabled (no connection); not running it.");
        }
        let ask = Ask {
            export_id: export.id,
            trigger,
            requested_by: None,
            full: false,
            allow_mass_removal: false,
            allow_mass_addition: false,
            verify: None,
        };
        let asked = match due_at {
            Some(due_at) => self.queue.ask_scheduled(&ask, due_at).await.map(|id| id.is_some()),
            None => self.queue.ask(&ask).await.map(|_| true),
        };
        match asked {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(export = %export.name, due_at = ?due_at, "This scheduled time was queued already.")
            }
            Err(e) => tracing::error!(export = %export.name, error = %e, "Cannot queue the run request."),
        }
    }

    /// Starts what the queue has for this process's free slots.
    async fn dispatch(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        {
            let s = self.shared.lock();
            if s.paused.is_some() || s.store_unreachable.is_some() {
                return;
            }
        }
        let running = self.running.keys().copied().collect();
        let free = self.config.daemon.max_concurrent_runs.saturating_sub(self.running.len());
        match self.queue.take(&running, free).await {
            Ok(taken) => {
                for t in taken {
                    self.start_taken(t).await;
                }
            }
            Err(e) => tracing::error!(error = %e, "Cannot read the run queue; trying again shortly."),
        }
        self.waits_for_another_process = self.queue.waits_for_another_process().await.unwrap_or(true);
    }

    /// Starts the run of a request taken from the queue, or refuses it (recorded with the request).
    async fn start_taken(&mut self, taken: Taken) {
        let Taken { request, guard } = taken;
        let trigger = Trigger::parse(&request.trigger).unwrap_or(Trigger::TriggerFile);
        let export = match self.store.export_by_id(request.export_id).await {
            Ok(e) if e.removed_at.is_none() && e.enabled && e.connection_id.is_some() => e,
            Ok(e) => {
                tracing::warn!(export = %e.name, trigger = trigger.as_str(), "Export is disabled or removed; not running it.");
                return self
                    .refuse(request.id, "the export is disabled (it has no connection) or was removed", None)
                    .await;
            }
            Err(e) => {
                return tracing::error!(request = request.id, error = %e, "Cannot read the export of a run request.")
            }
        };
        if trigger.is_scheduled() {
            if let Some((why, run_id)) = self.refuse_without_export_user(&export, trigger).await {
                return self.refuse(request.id, &why, run_id).await;
            }
        }
        let follow_up = match request.waiting_for {
            Some(WaitingFor::CurrentRun) => Some("while the previous run was in progress"),
            Some(WaitingFor::AnotherProcess) => Some("while a run in another process was in progress"),
            _ => None,
        };
        let note =
            [request.note.clone(), follow_up.map(|when| format!("follow-up: requested ({}) {when}", trigger.as_str()))]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ");
        if follow_up.is_some() {
            tracing::info!(export = %export.name, trigger = trigger.as_str(), "Starting the follow-up run queued while the export was running.");
        }
        if request.verify {
            let opts = VerifyOptions {
                trigger: trigger.as_str().to_string(),
                repair: request.repair,
                remove_lingering: request.remove_lingering,
                allow_mass_removal: request.allow_mass_removal,
                allow_mass_addition: request.allow_mass_addition,
                request_id: Some(request.id),
            };
            let then_run = (request.wants_run && !request.repair).then_some(trigger);
            return self.start_task(export, request.id, guard, Task::Verify(opts), then_run);
        }
        let opts = RunOptions {
            trigger: trigger.as_str().to_string(),
            note: (!note.is_empty()).then_some(note),
            full: request.full,
            allow_mass_removal: request.allow_mass_removal,
            allow_mass_addition: request.allow_mass_addition,
            request_id: Some(request.id),
            ..RunOptions::default()
        };
        self.start_task(export, request.id, guard, Task::Run(opts), None);
    }

    async fn refuse(&self, request_id: i64, why: &str, run_id: Option<i64>) {
        if let Err(e) = self.queue.refuse(request_id, why, run_id).await {
            tracing::error!(request = request_id, error = %e, "Cannot record why a run request did not start.");
        }
    }

    /// Scheduled runs go on behalf of their connection's export user; when that account is gone or no longer an
    /// administrator, the run is recorded `refused` with the reason (naming what an administrator must do) instead.
    /// Returns why, and the run that records it.
    async fn refuse_without_export_user(
        &self,
        export: &crate::store::Export,
        trigger: Trigger,
    ) -> Option<(String, Option<i64>)> {
        let connection_id = export.connection_id?;
        let problem = match self.store.connection_by_id(connection_id).await {
            Ok(conn) => crate::access::connection_export_user_problem(&self.store, &conn).await,
            Err(e) => Err(e),
        };
        let why = match problem {
            Ok(Some(why)) => why,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(export = %export.name, error = %e, "Cannot read the connection's export user.");
                return None;
            }
        };
        tracing::warn!(export = %export.name, trigger = trigger.as_str(), reason = %why, "Scheduled run refused.");
        let recorded = match self.store.start_run(export.id, trigger.as_str(), false, None).await {
            Ok(run_id) => self
                .notifier
                .finish_run(&self.store, export, run_id, RunStatus::Refused, Some(&why))
                .await
                .map(|_| run_id),
            Err(e) => Err(e),
        };
        match recorded {
            Ok(run_id) => Some((why, Some(run_id))),
            Err(e) => {
                tracing::error!(export = %export.name, error = %e, "Cannot record the refused run.");
                Some((why, None))
            }
        }
    }

    fn start_task(
        &mut self,
        export: crate::store::Export,
        request_id: i64,
        guard: RunGuard,
        task: Task,
        then_run: Option<Trigger>,
    ) {
        let cancel = self.root.child_token();
        let progress = Arc::new(Progress::default());
        self.shared.metrics.run_started();
        self.set_status(&export.name, |s| {
            s.running = true;
            s.progress = Some(progress.clone());
        });
        let (runner, tx, export_id) = (self.runner(), self.tx.clone(), export.id);
        let task = tokio::spawn({
            let (progress, cancel) = (progress.clone(), cancel.clone());
            async move {
                match task {
                    Task::Run(opts) => runner.run_taken(guard, &opts, progress, cancel).await.map(Outcome::Ran),
                    Task::Verify(opts) => {
                        runner.verify_taken(guard, &opts, progress, cancel).await.map(Outcome::Verified)
                    }
                }
            }
        });
        let abort = task.abort_handle();
        tokio::spawn({
            let (name, progress) = (export.name.clone(), progress.clone());
            async move {
                let done = CancellationToken::new();
                tokio::spawn(log_progress(name, progress, done.clone()));
                // The run is its own task, so a panic in it ends here as an error instead of never.
                let outcome = match task.await {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(SyncError::AlreadyRunning { .. })) => Outcome::Busy,
                    Ok(Err(e)) => Outcome::NotStarted(e.to_string()),
                    Err(e) if e.is_panic() => Outcome::Panicked(panic_message(e.into_panic())),
                    Err(_) => Outcome::Aborted,
                };
                done.cancel();
                let _ = tx.send(Command::Finished { export_id, outcome }).await;
            }
        });
        self.queue.live().insert(export.id, progress.clone());
        self.running.insert(export.id, InFlight { export: export.name, request_id, then_run, cancel, abort, progress });
    }

    async fn finished(&mut self, export_id: i64, outcome: Outcome) {
        let Some(run) = self.running.remove(&export_id) else { return };
        run.cancel.cancel();
        let export = run.export.clone();
        match &outcome {
            Outcome::Ran(report) => {
                if report.succeeded() {
                    self.resume_backoff.remove(&export_id);
                }
                // Stopping on a shared store: the run let its lease go with what it sent recorded, and another
                // daemon continues it now rather than at the next schedule. A run the store cut short is resumed
                // once it answers, after a pause that grows while it keeps failing.
                let stopping = self.stopping.is_some();
                if report.status == RunStatus::Interrupted
                    && self.store.kind() == crate::store::Kind::Postgres
                    && (stopping || report.store_unreachable)
                {
                    let ask = Ask {
                        export_id,
                        trigger: Trigger::Takeover,
                        requested_by: None,
                        full: false,
                        allow_mass_removal: false,
                        allow_mass_addition: false,
                        verify: None,
                    };
                    if stopping {
                        // Now, before this process exits.
                        match self.queue.ask(&ask).await {
                            Ok(_) => tracing::info!(export = %export, "Stopping: another daemon continues this run."),
                            Err(e) => {
                                tracing::warn!(export = %export, error = %e, "Cannot hand the run over; the next run resumes it, or another daemon once its lease lapses.")
                            }
                        }
                    } else {
                        let (delay, queue, name) =
                            (self.next_resume_delay(export_id), self.queue.clone(), export.clone());
                        tokio::spawn(async move {
                            tokio::time::sleep(delay).await;
                            match queue.ask(&ask).await {
                                Ok(_) => tracing::info!(export = %name, "Resuming the run the store cut short."),
                                Err(e) => {
                                    tracing::warn!(export = %name, error = %e, "Cannot ask for the run to be resumed yet; the next run resumes it, or another daemon once its lease lapses.")
                                }
                            }
                        });
                    }
                }
            }
            Outcome::Verified(_) => {
                if let Some(trigger) = run.then_run {
                    // The request asked for a run too: a verify that does not repair sends nothing.
                    let ask = Ask {
                        export_id,
                        trigger,
                        requested_by: None,
                        full: false,
                        allow_mass_removal: false,
                        allow_mass_addition: false,
                        verify: None,
                    };
                    if let Err(e) = self.queue.ask(&ask).await {
                        tracing::warn!(export = %export, error = %e, "Cannot ask for the run that was asked for with the verify.");
                    }
                }
            }
            Outcome::Busy => {
                if let Err(e) = self.queue.put_back(run.request_id).await {
                    tracing::error!(export = %export, error = %e, "Cannot put the run request back in the queue.");
                }
            }
            Outcome::NotStarted(e) => {
                tracing::warn!(export = %export, error = %e, "Run could not start.");
                self.refuse(run.request_id, e, None).await;
            }
            Outcome::Panicked(message) => {
                tracing::error!(export = %export, run_id = run.progress.run_id(), panic = %message, "The run crashed (a bug: please report it); it is recorded failed. What Iterable acknowledged is recorded, and the next run resumes from there.");
                let error = format!("the run crashed: {message}. What Iterable acknowledged is recorded; the next run resumes from there");
                self.record_end(&run, RunStatus::Failed, &error).await;
            }
            Outcome::Aborted => {
                let error = format!(
                    "stopped when daemon.shutdown_grace ({}) ran out during a shutdown; what Iterable acknowledged is recorded and the next run resumes from there",
                    humantime::format_duration(self.config.daemon.shutdown_grace)
                );
                self.record_end(&run, RunStatus::Interrupted, &error).await;
            }
        }
        // Only once its end is recorded: GET /runs/{id} never shows a run "running" without its live progress.
        self.queue.live().remove(export_id);
        self.refresh_status(&export).await;
        // Its notifications are in the outbox now: delivered at once rather than at the next poll.
        self.outbox.wake();
        // Counted last, so whoever sees the count in /metrics finds the run's end in /status too.
        match &outcome {
            Outcome::Ran(report) => self.shared.metrics.run_finished(&export, Some(report)),
            Outcome::Verified(report) => self.shared.metrics.verify_finished(&export, report),
            Outcome::Busy => self.shared.metrics.run_not_started(),
            _ => self.shared.metrics.run_finished(&export, None),
        }
        if let Outcome::Ran(report) = &outcome {
            self.ask_verify_when_due(export_id, &export, report).await;
        }
        self.dispatch().await;
    }

    /// After a run's sends, a verify of its lists when `sync.verify_interval` has passed since the export's last
    /// one: report only (never a repair), queued like a run, on the schedule's behalf.
    async fn ask_verify_when_due(&self, export_id: i64, export: &str, report: &RunReport) {
        let Some(interval) = self.config.sync.verify_interval else { return };
        if report.status != RunStatus::Succeeded || self.stopping.is_some() {
            return;
        }
        let due = match self.store.last_verify_at(export_id).await {
            Ok(None) => true,
            Ok(Some(at)) => chrono::Duration::from_std(interval).is_ok_and(|iv| crate::store::now() - at >= iv),
            Err(e) => {
                tracing::warn!(export = %export, error = %e, "Cannot read when the export was last verified.");
                false
            }
        };
        if !due {
            return;
        }
        let ask = Ask {
            export_id,
            trigger: Trigger::Schedule,
            requested_by: None,
            full: false,
            allow_mass_removal: false,
            allow_mass_addition: false,
            verify: Some(crate::queue::VerifyAsk::default()),
        };
        match self.queue.ask(&ask).await {
            Ok(_) => {
                tracing::info!(export = %export, "A verify of the export's lists is due (sync.verify_interval); queued it.")
            }
            Err(e) => tracing::warn!(export = %export, error = %e, "Cannot queue the verify that is due."),
        }
    }

    /// The pause before resuming export `export_id`'s run once more: 1 s, then twice the last, at most a minute.
    fn next_resume_delay(&mut self, export_id: i64) -> Duration {
        let delay = self
            .resume_backoff
            .get(&export_id)
            .map_or(Duration::from_secs(1), |d| (*d * 2).min(Duration::from_secs(60)));
        self.resume_backoff.insert(export_id, delay);
        delay
    }

    /// Records the end of a run whose task could not (it panicked or was stopped), when its row exists.
    async fn record_end(&self, run: &InFlight, status: RunStatus, error: &str) {
        let Some(run_id) = run.progress.run_id() else { return };
        let recorded = match self.store.export(&run.export).await {
            Ok(export) => self.notifier.finish_run(&self.store, &export, run_id, status, Some(error)).await,
            Err(_) => self.store.finish_run(run_id, status, Some(error)).await,
        };
        if let Err(e) = recorded {
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
                    || (new.daemon.max_connections, new.daemon.idle_timeout)
                        != (self.config.daemon.max_connections, self.config.daemon.idle_timeout)
                    || (&new.daemon.tls_cert, &new.daemon.tls_key, new.daemon.allow_plain_http)
                        != (
                            &self.config.daemon.tls_cert,
                            &self.config.daemon.tls_key,
                            self.config.daemon.allow_plain_http,
                        )
                {
                    tracing::warn!("daemon.time_zone, daemon.status_listen, daemon.tls_cert, daemon.tls_key, daemon.allow_plain_http, daemon.metrics_token_file, daemon.max_connections, daemon.idle_timeout, daemon.trigger_dir and [store] take effect at the next restart.");
                }
                let mut kept = new;
                kept.daemon.time_zone = self.config.daemon.time_zone.clone();
                kept.daemon.status_listen = self.config.daemon.status_listen.clone();
                kept.daemon.tls_cert = self.config.daemon.tls_cert.clone();
                kept.daemon.tls_key = self.config.daemon.tls_key.clone();
                kept.daemon.allow_plain_http = self.config.daemon.allow_plain_http;
                kept.daemon.metrics_token_file = self.config.daemon.metrics_token_file.clone();
                kept.daemon.max_connections = self.config.daemon.max_connections;
                kept.daemon.idle_timeout = self.config.daemon.idle_timeout;
                kept.daemon.trigger_dir = self.config.daemon.trigger_dir.clone();
                kept.store = self.config.store.clone();
                self.config = Arc::new(kept);
                self.notifier = crate::notify::Notifier::new(self.config.clone());
                self.engine = self.engine.with_config(self.config.clone()).with_teller(Arc::new(self.notifier.clone()));
                self.queue.set_config(self.config.clone());
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
                    self.ask(&e, Trigger::MissedSchedule, Some(due)).await;
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
        let next_run = crate::schedule::next_run(&e, &self.config.daemon);
        let running = self.running.contains_key(&e.id);
        let follow_up_queued = running && matches!(self.queue.waiting_request(e.id).await, Ok(Some(_)));
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
                follow_up_queued,
                progress,
            },
        );
    }
}

/// Raises the descriptor limit and decides the listener's connection cap under it, saying so in the log.
fn connection_limits(daemon: &crate::config::DaemonConfig) -> listener::Limits {
    let configured = daemon.max_connections;
    let max_connections = match connections::raise_descriptor_limit() {
        Ok(limit) => {
            let cap = connections::cap(configured, limit);
            if cap < configured {
                tracing::warn!(
                    descriptors = limit,
                    reserved = connections::RESERVED_DESCRIPTORS,
                    "daemon.max_connections ({configured}) is more than the descriptor limit leaves: client \
                     connections at most {cap}. Raise the limit (LimitNOFILE= in the systemd unit, ulimit -n) to \
                     serve more."
                );
            } else {
                tracing::info!(descriptors = limit, "Listener: client connections at most {cap}.");
            }
            cap
        }
        Err(e) => {
            tracing::warn!("{e}; client connections at most {configured} (daemon.max_connections).");
            configured
        }
    };
    listener::Limits { max_connections, idle_timeout: daemon.idle_timeout }
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
