//! The long-running service. Cron ticks, trigger files, store changes, SIGHUP and SIGTERM all become one
//! `Command` on one channel, consumed by one loop that owns which runs are in flight, which are queued, and the
//! schedule. Runs themselves are the export engine's (`sync`); this module only decides when they start and
//! how the process stops.

mod metrics;
mod scheduler;
mod status;
mod triggers;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use metrics::Metrics;
pub use status::{ExportStatus, Shared};
pub use triggers::{valid_trigger_name, write_trigger, ALL as TRIGGER_ALL};

use crate::config::Config;
use crate::schedule::Schedule;
use crate::store::{RunStatus, Store};
use crate::sync::{Engine, Progress, RunLock, RunOptions, RunReport};
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
    /// A run ended (its report, or why it could not start).
    Finished { export: String, report: Result<RunReport, String> },
    /// SIGTERM or SIGINT: take no new runs, let batches in flight finish within the grace period, exit.
    Shutdown,
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
    #[error("{0}")]
    Config(String),
}

struct Daemon {
    config: Arc<Config>,
    config_path: Option<PathBuf>,
    store: Store,
    engine: Engine,
    shared: Arc<Shared>,
    scheduler: Scheduler,
    tx: mpsc::Sender<Command>,
    root: CancellationToken,
    running: HashMap<String, CancellationToken>,
    follow_ups: HashMap<String, &'static str>,
    waiting: VecDeque<(String, &'static str, Option<String>)>,
    fingerprint: Option<String>,
    stopping: Option<Instant>,
}

/// Runs the daemon until it is stopped by a signal. Returns when the process should exit (code 0).
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), DaemonError> {
    let config = Arc::new(config);
    let tz = config.daemon.tz().map_err(DaemonError::Config)?;
    let store = Store::open(&config.store.path).await?;
    let shared = Arc::new(Shared::default());
    let engine = Engine::new(store.clone(), config.clone()).with_observer(shared_observer(&shared));

    for e in store.exports().await? {
        if !RunLock::is_held(&config.store.lock_dir(), e.id) {
            let ids = store.interrupt_orphaned_runs(e.id).await?;
            if !ids.is_empty() {
                tracing::warn!(export = %e.name, runs = ?ids, "Runs left unfinished by a stopped process are marked interrupted; the next run resumes them.");
            }
        }
    }

    if let Some(addr) = config.daemon.status_addr() {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|cause| DaemonError::Listen { addr: addr.to_string(), cause })?;
        let local = listener.local_addr().map_err(|cause| DaemonError::Listen { addr: addr.to_string(), cause })?;
        tracing::info!(address = %local, "Status endpoint listening.");
        let app = status::router(shared.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "The status listener stopped.");
            }
        });
    }

    let (tx, mut rx) = mpsc::channel(256);
    spawn_signal_handlers(tx.clone());
    tokio::spawn(triggers::watch(config.daemon.trigger_dir.clone(), config.daemon.trigger_poll_interval, tx.clone()));
    let scheduler = Scheduler::start(tz).await?;
    let mut d = Daemon {
        config: config.clone(),
        config_path,
        store,
        engine,
        shared,
        scheduler,
        tx: tx.clone(),
        root: CancellationToken::new(),
        running: HashMap::new(),
        follow_ups: HashMap::new(),
        waiting: VecDeque::new(),
        fingerprint: None,
        stopping: None,
    };
    d.reload_exports(true).await;
    if config.daemon.run_missed_on_start {
        d.run_missed().await;
    }
    d.shared.lock().ready = true;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(
        refresh = %config.daemon.refresh_schedule, time_zone = %config.daemon.time_zone,
        trigger_dir = %config.daemon.trigger_dir.display(), "Daemon ready."
    );

    let mut reload = tokio::time::interval(config.daemon.reload_interval);
    reload.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = d.stopping.map(|s| s + d.config.daemon.shutdown_grace);
        if d.stopping.is_some() && d.running.is_empty() {
            break;
        }
        let command = tokio::select! {
            c = rx.recv() => c,
            _ = reload.tick(), if d.stopping.is_none() => Some(Command::Reload { reread_config: false }),
            _ = sleep_until(deadline) => {
                tracing::warn!(runs = d.running.len(), "Shutdown grace period over; exiting with runs unfinished. What Iterable acknowledged is recorded, and they resume at the next start.");
                break;
            }
        };
        match command {
            Some(c) => d.handle(c).await,
            None => break,
        }
    }
    d.scheduler.shutdown().await;
    tracing::info!("Daemon stopped.");
    Ok(())
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

fn spawn_signal_handlers(tx: mpsc::Sender<Command>) {
    use tokio::signal::unix::{signal, SignalKind};
    let stop_tx = tx.clone();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("Cannot listen for SIGTERM/SIGINT.");
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        let _ = stop_tx.send(Command::Shutdown).await;
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!(
            "Second stop signal: exiting at once. Acknowledged batches are recorded; runs resume at the next start."
        );
        std::process::exit(130);
    });
    tokio::spawn(async move {
        let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            if tx.send(Command::Reload { reread_config: true }).await.is_err() {
                return;
            }
        }
    });
}

impl Daemon {
    async fn handle(&mut self, command: Command) {
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
                let dst_changed = self.scheduler.offset_changed();
                if dst_changed {
                    tracing::info!("The time zone's UTC offset changed (daylight saving time); rescheduling.");
                }
                self.reload_exports(reread_config || dst_changed).await;
            }
            Command::Finished { export, report } => self.finished(export, report).await,
            Command::Shutdown => self.begin_shutdown().await,
        }
    }

    async fn request_run(&mut self, export: String, trigger: &'static str, note: Option<String>) {
        if self.stopping.is_some() {
            return tracing::info!(export = %export, trigger, "Stopping; not starting new runs.");
        }
        match self.store.export(&export).await {
            Ok(e) if e.enabled && e.connection_id.is_some() => {}
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
        if self.running.len() >= self.config.daemon.max_concurrent_runs {
            tracing::info!(export = %export, trigger, running = self.running.len(), "At daemon.max_concurrent_runs; the run waits for a free slot.");
            self.waiting.push_back((export, trigger, note));
            return;
        }
        self.start_run(export, trigger, note);
    }

    fn start_run(&mut self, export: String, trigger: &'static str, note: Option<String>) {
        let cancel = self.root.child_token();
        let progress = Arc::new(Progress::default());
        self.running.insert(export.clone(), cancel.clone());
        self.shared.metrics.run_started();
        self.set_status(&export, |s| {
            s.running = true;
            s.progress = Some(progress.clone());
        });
        let (engine, tx) = (self.engine.clone(), self.tx.clone());
        let opts = RunOptions { trigger: trigger.to_string(), note, ..RunOptions::default() };
        tokio::spawn(async move {
            let done = CancellationToken::new();
            tokio::spawn(log_progress(export.clone(), progress.clone(), done.clone()));
            let report = engine.run_export(&export, &opts, progress, cancel).await.map_err(|e| e.to_string());
            done.cancel();
            let _ = tx.send(Command::Finished { export, report }).await;
        });
    }

    async fn finished(&mut self, export: String, report: Result<RunReport, String>) {
        self.running.remove(&export);
        self.shared.metrics.run_finished(&export, report.as_ref().ok());
        if let Err(e) = &report {
            tracing::warn!(export = %export, error = %e, "Run could not start.");
        }
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
        self.scheduler.shutdown().await;
        self.root.cancel();
    }

    /// SIGHUP: re-read the config; a config with errors is rejected with every error, and the old one stays.
    fn reload_config(&mut self) {
        let loaded = Config::load(self.config_path.as_deref());
        match loaded {
            Err(e) => tracing::error!("Config reload rejected; the previous configuration stays in force. {e}"),
            Ok((new, _)) => {
                if new.daemon.time_zone != self.config.daemon.time_zone
                    || new.daemon.status_listen != self.config.daemon.status_listen
                    || new.daemon.trigger_dir != self.config.daemon.trigger_dir
                    || new.store != self.config.store
                {
                    tracing::warn!("daemon.time_zone, daemon.status_listen, daemon.trigger_dir and [store] take effect at the next restart.");
                }
                let mut kept = new;
                kept.daemon.time_zone = self.config.daemon.time_zone.clone();
                kept.daemon.status_listen = self.config.daemon.status_listen.clone();
                kept.daemon.trigger_dir = self.config.daemon.trigger_dir.clone();
                kept.store = self.config.store.clone();
                self.config = Arc::new(kept);
                self.engine = self.engine.with_config(self.config.clone());
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
                follow_up_queued: self.follow_ups.contains_key(name),
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
