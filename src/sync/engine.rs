//! One run of one export, from lock to finish.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::guard::RunGuard;
use super::lock::LockError;
use super::plan::{ListReport, Planner, EXAMPLES};
use super::progress::{Phase, Progress};
use super::send::{Sender, TargetRun};
use super::SyncError;
use crate::config::Config;
use crate::iterable::{IterableClient, ListReadLimits, Pacer, RequestObserver, RetrySettings};
use crate::secrets::resolve_api_key;
use crate::store::{Export, ProjectType, RunStatus, Store, TargetPlan};

/// How a run was asked for.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// What started it: `manual`, `schedule`, `trigger-file`, ...
    pub trigger: String,
    /// Compute and show the plan; change nothing anywhere.
    pub dry_run: bool,
    /// Re-send every current member (to repair a list edited by hand); leavers are still removed.
    pub full: bool,
    /// Let a run through that would unsubscribe more than `sync.mass_removal_share` of a list.
    pub allow_mass_removal: bool,
    /// Let a run through that would put more new members on a list than `sync.mass_addition_share` times those
    /// on it.
    pub allow_mass_addition: bool,
    /// Recorded with the run, e.g. that it is a follow-up queued while the previous run was in progress.
    pub note: Option<String>,
    /// The run request (`crate::queue`) this run answers, if it answers one.
    pub request_id: Option<i64>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            trigger: "manual".into(),
            dry_run: false,
            full: false,
            allow_mass_removal: false,
            allow_mass_addition: false,
            note: None,
            request_id: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub export: String,
    /// None for dry runs, which are not recorded.
    pub run_id: Option<i64>,
    pub dry_run: bool,
    pub status: RunStatus,
    pub error: Option<String>,
    pub seconds: f64,
    pub requests: u64,
    pub rate_limited: u64,
    pub lists: Vec<ListReport>,
    /// A run that an interrupted one left unfinished, which this run completed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resumed_runs: Vec<i64>,
    /// What the user should know that is neither the error nor about one member (fields Iterable dropped).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The run stopped because the store was out of reach for a moment: it is to be resumed once it answers.
    #[serde(skip)]
    pub store_unreachable: bool,
}

impl RunReport {
    pub fn succeeded(&self) -> bool {
        self.status == RunStatus::Succeeded
    }
}

/// Runs exports. Holds one pacer per connection, so runs of one connection share its pace.
#[derive(Clone)]
pub struct Engine {
    pub(super) store: Store,
    pub(super) config: Arc<Config>,
    pacers: Arc<Mutex<HashMap<i64, Arc<Pacer>>>>,
    /// Per connection: the turns of its project's whole-list reads (`getUsers`, sizes), shared by its exports.
    list_reads: Arc<Mutex<HashMap<i64, Arc<ListReadLimits>>>>,
    observer: Option<Arc<dyn RequestObserver>>,
    pub(super) teller: Option<Arc<dyn super::RunEndTeller>>,
}

impl Engine {
    pub fn new(store: Store, config: Arc<Config>) -> Engine {
        Engine {
            store,
            config,
            pacers: Default::default(),
            list_reads: Default::default(),
            observer: None,
            teller: None,
        }
    }

    /// Has `teller` decide what each run's end tells (notifications), written with the end in one transaction.
    pub fn with_teller(mut self, teller: Arc<dyn super::RunEndTeller>) -> Engine {
        self.teller = Some(teller);
        self
    }

    /// Reports every Iterable request of this engine's runs to `observer` (the daemon's metrics).
    pub fn with_observer(mut self, observer: Arc<dyn RequestObserver>) -> Engine {
        self.observer = Some(observer);
        self
    }

    /// The same engine (pacers, observer) with another config, after a reload.
    pub fn with_config(&self, config: Arc<Config>) -> Engine {
        Engine { config, ..self.clone() }
    }

    fn pacer(&self, connection_id: i64) -> Arc<Pacer> {
        let mut pacers = self.pacers.lock().expect("pacers lock");
        pacers
            .entry(connection_id)
            .or_insert_with(|| Arc::new(Pacer::new(self.config.iterable.requests_per_second)))
            .clone()
    }

    fn list_read_limits(&self, connection_id: i64) -> Arc<ListReadLimits> {
        self.list_reads.lock().expect("list reads lock").entry(connection_id).or_default().clone()
    }

    /// A client for a stored connection, with its key resolved.
    pub async fn client_for(&self, connection_id: i64) -> Result<IterableClient, SyncError> {
        let conn = self.store.connection_by_id(connection_id).await?;
        let key = resolve_api_key(&conn, &self.config.store.master_key_path())?;
        IterableClient::new(
            &conn.base_url,
            &key,
            self.config.iterable.timeout,
            self.pacer(conn.id),
            RetrySettings::from(&self.config.iterable),
        )
        .map(|c| c.with_observer(self.observer.clone()).with_list_read_limits(self.list_read_limits(conn.id)))
        .map_err(SyncError::IterableSetup)
    }

    /// Runs an export now. Errors before a run could start (unknown export, already running, no key) are `Err`;
    /// a run that started and failed is recorded and returned as a report with its status and error.
    pub async fn run_export(
        &self,
        name: &str,
        opts: &RunOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> Result<RunReport, SyncError> {
        let export = self.store.export(name).await?;
        if opts.dry_run {
            return self.dry_run(export, opts, progress, cancel).await;
        }
        let guard = self.take_guard(&export).await?;
        self.run_guarded(export, guard, opts, progress, cancel).await
    }

    /// Takes `export`'s run guard for work started here; when another run holds it, the refusal names that run.
    pub(super) async fn take_guard(&self, export: &Export) -> Result<RunGuard, SyncError> {
        match RunGuard::take(&self.store, &self.config, export.id).await {
            Ok(guard) => Ok(guard),
            Err(LockError::Busy { .. }) => {
                let run_id = self.store.running_run(export.id).await?;
                Err(SyncError::AlreadyRunning { export: export.name.clone(), run_id })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// For work under `guard` (a run, a verify): the engine whose writes go through the guard's store, a token
    /// cancelled with `cancel` or when the lease is lost, and the watch that does the latter (abort it at the end).
    /// The guard publishes `progress` with its renewals.
    pub(super) fn under_guard(
        &self,
        guard: &RunGuard,
        progress: &Arc<Progress>,
        cancel: CancellationToken,
    ) -> (Engine, CancellationToken, tokio::task::JoinHandle<()>) {
        let cancel = cancel.child_token();
        let lost = guard.lost();
        let stop_on_loss = tokio::spawn({
            let cancel = cancel.clone();
            async move {
                lost.cancelled().await;
                cancel.cancel();
            }
        });
        guard.publish(progress.clone());
        (self.for_run(guard), cancel, stop_on_loss)
    }

    /// Runs the export `guard` holds, taken already (by the run queue). As `run_export` otherwise.
    pub async fn run_taken(
        &self,
        guard: RunGuard,
        opts: &RunOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> Result<RunReport, SyncError> {
        let export = self.store.export_by_id(guard.export_id()).await?;
        if export.removed_at.is_some() {
            guard.release(true).await;
            return Err(SyncError::NotRunnable { export: export.name, why: "it was removed".into() });
        }
        self.run_guarded(export, guard, opts, progress, cancel).await
    }

    /// A recorded run under `guard`: its writes go through the guard's store (fenced by the lease on PostgreSQL),
    /// its requests through the guard's gate, and it stops when the lease is lost. The guard is let go when the run
    /// ends (dropped unreleased, should this future be dropped: a lease then expires by itself).
    async fn run_guarded(
        &self,
        export: Export,
        guard: RunGuard,
        opts: &RunOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> Result<RunReport, SyncError> {
        let (engine, cancel, stop_on_loss) = self.under_guard(&guard, &progress, cancel);
        let result = engine.run_locked(export, &guard, opts, progress, cancel).await;
        stop_on_loss.abort();
        guard.release(true).await;
        result
    }

    /// This engine writing through `guard`'s store (fenced by its lease on PostgreSQL).
    pub(super) fn for_run(&self, guard: &RunGuard) -> Engine {
        Engine { store: guard.store_for_run(&self.store), ..self.clone() }
    }

    /// The connection of an export that can run, and its project type; why not otherwise.
    pub(super) async fn runnable(&self, export: &Export) -> Result<(i64, ProjectType), SyncError> {
        let name = &export.name;
        let connection_id = export.connection_id.ok_or_else(|| SyncError::NotRunnable {
            export: name.clone(),
            why: "it has no connection (its connection was removed). Remove it and add it again with --connection."
                .into(),
        })?;
        if export.targets.is_empty() {
            return Err(SyncError::NotRunnable { export: name.clone(), why: "it has no segments".into() });
        }
        let connection = self.store.connection_by_id(connection_id).await?;
        // Stored settings that a store edited by hand (or an older check) let through: refused before any request.
        if let Err(why) = super::identity::check_export_identity(connection.project_type, export) {
            return Err(SyncError::NotRunnable { export: name.clone(), why });
        }
        Ok((connection_id, connection.project_type))
    }

    /// A plan, shown and never recorded: no lock, no request.
    async fn dry_run(
        &self,
        export: Export,
        opts: &RunOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> Result<RunReport, SyncError> {
        let started = Instant::now();
        let (_, project_type) = self.runnable(&export).await?;
        let mut session = self.store.plan_session().await?;
        let planner = self.planner(&export, project_type, None, opts, &progress, &cancel);
        let mut lists = Vec::new();
        planner.plan(&mut session, &mut lists).await?;
        for (report, target) in lists.iter_mut().zip(&export.targets) {
            report.examples_add = session.adds(target.id, 0, EXAMPLES).await?.into_iter().map(|a| a.email).collect();
            report.examples_remove =
                session.removes(target.id, 0, EXAMPLES).await?.into_iter().map(|(_, e)| e).collect();
        }
        let (status, error) = match planner.check_guards(&lists, opts).await? {
            Some(e) => (RunStatus::Refused, Some(e.to_string())),
            None => (RunStatus::Succeeded, None),
        };
        progress.set_phase(Phase::Done, "");
        Ok(RunReport {
            export: export.name,
            run_id: None,
            dry_run: true,
            status,
            error,
            seconds: started.elapsed().as_secs_f64(),
            requests: 0,
            rate_limited: 0,
            lists,
            resumed_runs: vec![],
            warnings: vec![],
            store_unreachable: false,
        })
    }

    /// A recorded run of `export`, whose run lock `_lock` this holds until the run's end is recorded.
    async fn run_locked(
        &self,
        export: Export,
        guard: &RunGuard,
        opts: &RunOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> Result<RunReport, SyncError> {
        let started = Instant::now();
        let (connection_id, project_type) = self.runnable(&export).await?;
        let name = export.name.as_str();
        let mut resumed_runs = self.store.interrupt_orphaned_runs(export.id).await?;
        if let Some(last) = self.store.runs(Some(name), 1).await?.first() {
            if last.status == RunStatus::Interrupted && !resumed_runs.contains(&last.id) {
                resumed_runs.push(last.id);
            }
        }
        if !resumed_runs.is_empty() {
            tracing::warn!(export = %name, runs = ?resumed_runs, "Earlier run(s) of this export stopped unfinished; this run completes their work.");
        }
        let run_cancel = cancel.child_token();
        let client = self.client_for(connection_id).await?.with_cancel(run_cancel.clone()).with_gate(guard.gate());
        let resumes = (!resumed_runs.is_empty()).then(|| {
            format!("resumes run(s) {}", resumed_runs.iter().map(|i| format!("#{i}")).collect::<Vec<_>>().join(", "))
        });
        let note = match (opts.note.clone(), resumes) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        };
        let run_id = self
            .store
            .start_requested_run(export.id, &opts.trigger, opts.full, note.as_deref(), opts.request_id)
            .await?;
        progress.set_run_id(run_id);
        guard.set_run(run_id).await;
        tracing::info!(export = %name, run_id, trigger = %opts.trigger, full = opts.full, "Run started.");

        // A cancel asked for from another process (`--cancel-run`) stops this run's waits and batches too.
        let watch = super::cancel::CancelWatch::start(self.store.clone(), run_id, run_cancel.clone());
        let mut state = RunState::new(run_id, connection_id, project_type);
        let outcome = self.execute(&export, &mut state, &client, opts, &progress, &run_cancel).await;
        let cancel_requested = watch.stop().await;
        let outcome = outcome.map_err(|e| super::cancel::on_request(e, cancel_requested)).map_err(|e| match e {
            // Stopped by its own lease, not by a shutdown: say so.
            SyncError::Interrupted if guard.lost().is_cancelled() => SyncError::LeaseLost,
            e => e,
        });
        let store_unreachable = matches!(&outcome, Err(SyncError::Store(e)) if e.is_transient());
        let key_refused = matches!(&outcome, Err(e) if e.key_refused());
        let (status, error) = match outcome {
            Ok(()) => (RunStatus::Succeeded, None),
            Err(e) => (status_of(&e), Some(e.to_string())),
        };
        let lists = std::mem::take(&mut state.lists);
        let dropped: Vec<String> = state.dropped_fields.lock().expect("dropped fields lock").iter().cloned().collect();
        if !dropped.is_empty() {
            let warning = format!(
                "Iterable dropped the field(s) {} (filteredOutFields): the project does not accept new fields. Add \
                 them to the project's data schema in Iterable, or stop sending them (export edit --remove-field).",
                dropped.iter().map(|f| format!("'{f}'")).collect::<Vec<_>>().join(", ")
            );
            tracing::warn!(export = %name, run_id, fields = ?dropped, "Iterable dropped fields this export sends.");
            self.store.record_run_warning(run_id, &warning).await?;
        }
        let warnings = self.store.run_warnings(run_id).await?;
        let end = super::RunEnd {
            export: export.clone(),
            run_id,
            status,
            error: error.clone(),
            key_refused,
            recreated_lists: std::mem::take(&mut state.recreated_lists),
        };
        let tidings = match &self.teller {
            Some(teller) => teller.tidings(&self.store, &end).await.unwrap_or_else(|e| {
                tracing::error!(export = %name, run_id, error = %e, "Cannot work out the notifications of this run's end; none are sent for it.");
                Default::default()
            }),
            None => Default::default(),
        };
        self.store.finish_run_telling(run_id, status, error.as_deref(), &tidings).await?;
        self.prune_history(&export).await;
        progress.set_phase(Phase::Done, "");
        let run = self.store.run(run_id).await?;
        let lists = merge_counts(lists, &run);
        let stats = client.stats();
        let report = RunReport {
            export: export.name.clone(),
            run_id: Some(run_id),
            dry_run: false,
            status,
            error,
            seconds: started.elapsed().as_secs_f64(),
            requests: stats.requests.load(Ordering::Relaxed),
            rate_limited: stats.rate_limited.load(Ordering::Relaxed),
            lists,
            resumed_runs,
            warnings,
            store_unreachable,
        };
        let sum = |count: fn(&ListReport) -> u64| report.lists.iter().map(count).sum::<u64>();
        let (added, updated, already_on_list) = (sum(|l| l.added), sum(|l| l.updated), sum(|l| l.already_on_list));
        let (removed, rejected, invalid) = (sum(|l| l.removed), sum(|l| l.rejected), sum(|l| l.invalid));
        match status {
            RunStatus::Succeeded => {
                tracing::info!(export = %name, run_id, added, updated, already_on_list, removed, rejected, invalid, seconds = report.seconds, "Run finished.")
            }
            _ => {
                tracing::warn!(export = %name, run_id, status = %status, added, updated, already_on_list, removed, rejected, invalid, error = report.error.as_deref().unwrap_or(""), "Run did not succeed.")
            }
        }
        Ok(report)
    }

    /// Builds the planner of one run (or dry run, with no `run_id`).
    pub(super) fn planner<'a>(
        &'a self,
        export: &'a Export,
        project_type: ProjectType,
        run_id: Option<i64>,
        opts: &RunOptions,
        progress: &'a Progress,
        cancel: &'a CancellationToken,
    ) -> Planner<'a> {
        Planner {
            store: &self.store,
            config: &self.config,
            export,
            project_type,
            run_id,
            full: opts.full,
            progress,
            cancel,
        }
    }

    /// The whole of a recorded run after its row exists: plan, guard, resolve the lists, send. What was planned
    /// and done so far stays in `state` whichever way it ends.
    pub(super) async fn execute(
        &self,
        export: &Export,
        state: &mut RunState,
        client: &IterableClient,
        opts: &RunOptions,
        progress: &Arc<Progress>,
        cancel: &CancellationToken,
    ) -> Result<(), SyncError> {
        let run_id = state.run_id;
        let mut session = self.store.plan_session().await?;
        let planner = self.planner(export, state.project_type, Some(run_id), opts, progress, cancel);
        planner.plan(&mut session, &mut state.lists).await?;
        if let Some(refusal) = planner.check_guards(&state.lists, opts).await? {
            return Err(refusal);
        }
        if cancel.is_cancelled() {
            return Err(SyncError::Interrupted);
        }
        let sender =
            Sender::new(self.store.clone(), client.clone(), self.config.clone(), progress.clone(), cancel.clone())
                .reporting_dropped_fields(state.dropped_fields.clone())
                .for_project(state.project_type);
        if state.nothing_to_send() && self.lists_recently_seen(export) {
            // No request at all when nothing changed and every list was seen lately: a list deleted in Iterable
            // meanwhile is noticed (and recreated and refilled) by the next run that sends something or whose
            // check is due (sync.list_check_interval), or by `--full`.
            for (target, list) in export.targets.iter().zip(&state.lists) {
                session.forget_leavers(target.id).await?;
                if let Some(list_id) = list.list_id {
                    self.store.record_run_list(run_id, target.id, list_id).await?;
                }
            }
            return Ok(());
        }
        progress.set_phase(Phase::Resolving, "");
        let resolved = sender.resolve_lists(export, state.connection_id, run_id).await?;
        for ((target, resolved), list) in export.targets.iter().zip(resolved).zip(state.lists.iter_mut()) {
            list.list_id = Some(resolved.list_id);
            if resolved.recreated {
                state.recreated_lists.push(target.list_name.clone());
                // The old list is gone: everything must be sent again, new on the new list, so re-plan this target
                // as a full one.
                let plan = session.compute(target.id, &planner.compute_options(true, true)).await?;
                let more = (plan.to_add + plan.to_update).saturating_sub(list.to_subscribe());
                progress.planned.fetch_add(more, Ordering::Relaxed);
                (list.to_add, list.to_update, list.unchanged) = (plan.to_add, plan.to_update, plan.unchanged);
                self.store.replan_adds(run_id, target.id, &plan).await?;
            } else if resolved.adopted {
                // The list found by name held members already: those the plan sends are not new on it.
                (list.to_add, list.to_update) = session.note_adopted(target.id).await?;
                let plan = TargetPlan {
                    to_add: list.to_add,
                    to_update: list.to_update,
                    unchanged: list.unchanged,
                    ..TargetPlan::default()
                };
                self.store.replan_adds(run_id, target.id, &plan).await?;
            }
            session.forget_leavers(target.id).await?;
            progress.set_phase(Phase::Sending, &target.list_name);
            let target_run = TargetRun {
                run_id,
                target,
                list_id: resolved.list_id,
                created_at: resolved.created_at,
                existing_users_only: export.existing_users_only,
            };
            sender.send_target(&mut session, &target_run, export.on_leave).await?;
        }
        Ok(())
    }

    /// Bounds the run history after each run (`store.history_retention`, `sync.keep_issue_runs`). A failure
    /// here loses nothing and does not fail the run.
    pub(super) async fn prune_history(&self, export: &Export) {
        let retention =
            chrono::Duration::from_std(self.config.store.history_retention).unwrap_or(chrono::TimeDelta::MAX);
        let cutoff =
            crate::store::now().checked_sub_signed(retention).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        match self.store.prune_history(export.id, cutoff, self.config.sync.keep_issue_runs).await {
            Ok((0, 0)) => {}
            Ok((runs, issues)) => {
                tracing::debug!(export = %export.name, runs, issues, "Pruned old run history.")
            }
            Err(e) => {
                tracing::warn!(export = %export.name, error = %e, "Could not prune old run history; it will be tried again after the next run.")
            }
        }
    }

    /// Whether every list of the export was seen in Iterable within `sync.list_check_interval`.
    fn lists_recently_seen(&self, export: &Export) -> bool {
        let check_every =
            chrono::Duration::from_std(self.config.sync.list_check_interval).unwrap_or(chrono::TimeDelta::MAX);
        export
            .targets
            .iter()
            .all(|t| t.list_id.is_some() && t.list_checked_at.is_some_and(|at| crate::store::now() - at < check_every))
    }
}

/// The lists of one recorded run as far as it got: each list's plan and, once sent, what was done to it. Kept
/// outside `execute` so that a run that fails part-way still reports what it planned.
pub(super) struct RunState {
    pub run_id: i64,
    pub connection_id: i64,
    pub project_type: ProjectType,
    pub lists: Vec<ListReport>,
    pub dropped_fields: super::send::DroppedFields,
    /// Lists found deleted in Iterable and recreated.
    pub recreated_lists: Vec<String>,
}

impl RunState {
    pub fn new(run_id: i64, connection_id: i64, project_type: ProjectType) -> RunState {
        RunState {
            run_id,
            connection_id,
            project_type,
            lists: Vec::new(),
            dropped_fields: Default::default(),
            recreated_lists: Vec::new(),
        }
    }

    fn nothing_to_send(&self) -> bool {
        self.lists.iter().all(|l| l.to_subscribe() == 0 && l.to_remove == 0)
    }
}

/// How a run that ended in `error` is recorded.
pub(super) fn status_of(error: &SyncError) -> RunStatus {
    match error {
        SyncError::Interrupted | SyncError::LeaseLost => RunStatus::Interrupted,
        SyncError::Cancelled => RunStatus::Cancelled,
        SyncError::MassRemoval { .. } | SyncError::MassAddition { .. } => RunStatus::Refused,
        // The store was out of reach for a moment (a restarted server, a cut connection): what was recorded stands,
        // and the next run resumes from there.
        SyncError::Store(e) if e.is_transient() => RunStatus::Interrupted,
        _ => RunStatus::Failed,
    }
}

/// Takes the progress counters recorded in the store into the reports.
pub(super) fn merge_counts(mut lists: Vec<ListReport>, run: &crate::store::Run) -> Vec<ListReport> {
    for l in &mut lists {
        if let Some(t) = run.targets.iter().find(|t| t.list_name == l.list_name) {
            l.added = t.counts.added;
            l.updated = t.counts.updated;
            l.already_on_list = t.counts.already_on_list;
            l.removed = t.counts.removed;
            l.rejected = t.counts.rejected;
            l.list_id = t.list_id.or(l.list_id);
        }
    }
    lists
}
