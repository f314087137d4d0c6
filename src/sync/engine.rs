//! One run of one export, from lock to finish.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::TryStreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::email::normalize_email;
use super::fields::FieldEncoder;
use super::lock::{LockError, RunLock};
use super::progress::{Phase, Progress};
use super::send::{Sender, TargetRun};
use super::SyncError;
use crate::config::Config;
use crate::iterable::{IterableClient, Pacer, RequestObserver, RetrySettings};
use crate::secrets::resolve_api_key;
use crate::source::{self, Columns, SourceSpec};
use crate::store::{Export, IssueKind, OnLeave, PlanSession, RunStatus, RunTargetCounts, Store, Target, TargetPlan};

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
    /// Recorded with the run, e.g. that it is a follow-up queued while the previous run was in progress.
    pub note: Option<String>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { trigger: "manual".into(), dry_run: false, full: false, allow_mass_removal: false, note: None }
    }
}

/// What a run did (or, for a dry run, would do) to one list.
#[derive(Debug, Clone, Serialize)]
pub struct ListReport {
    pub list_name: String,
    pub list_id: Option<i64>,
    pub source_rows: u64,
    pub members: u64,
    pub to_add: u64,
    pub to_remove: u64,
    pub unchanged: u64,
    pub invalid: u64,
    pub duplicates: u64,
    pub added: u64,
    pub removed: u64,
    pub rejected: u64,
    /// Dry runs only: a few members of each kind.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub examples_add: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub examples_remove: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub examples_invalid: Vec<(String, String)>,
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
}

impl RunReport {
    pub fn succeeded(&self) -> bool {
        self.status == RunStatus::Succeeded
    }
}

const EXAMPLES: usize = 5;

/// What planning needs to know about the run it plans for.
#[derive(Clone, Copy)]
struct PlanContext<'a> {
    /// None for dry runs, which record nothing.
    run_id: Option<i64>,
    opts: &'a RunOptions,
    progress: &'a Progress,
    cancel: &'a CancellationToken,
}

/// Members staged per write to the plan connection; the next chunk is read while one is written.
const STAGE_CHUNK_ROWS: usize = 4000;
/// A chunk fills by whole source batches, so it can exceed `STAGE_CHUNK_ROWS` by up to one batch.
const BATCH_SLACK: usize = 1024;

/// Runs exports. Holds one pacer per connection, so runs of one connection share its pace.
#[derive(Clone)]
pub struct Engine {
    store: Store,
    config: Arc<Config>,
    pacers: Arc<Mutex<HashMap<i64, Arc<Pacer>>>>,
    observer: Option<Arc<dyn RequestObserver>>,
}

impl Engine {
    pub fn new(store: Store, config: Arc<Config>) -> Engine {
        Engine { store, config, pacers: Default::default(), observer: None }
    }

    /// Reports every Iterable request of this engine's runs to `observer` (the daemon's metrics).
    pub fn with_observer(mut self, observer: Arc<dyn RequestObserver>) -> Engine {
        self.observer = Some(observer);
        self
    }

    /// The same engine (pacers, observer) with another config, after a reload.
    pub fn with_config(&self, config: Arc<Config>) -> Engine {
        Engine { store: self.store.clone(), config, pacers: self.pacers.clone(), observer: self.observer.clone() }
    }

    fn pacer(&self, connection_id: i64) -> Arc<Pacer> {
        let mut pacers = self.pacers.lock().expect("pacers lock");
        pacers
            .entry(connection_id)
            .or_insert_with(|| Arc::new(Pacer::new(self.config.iterable.requests_per_second)))
            .clone()
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
        .map(|c| c.with_observer(self.observer.clone()))
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
        let started = Instant::now();
        let export = self.store.export(name).await?;
        let connection_id = export.connection_id.ok_or_else(|| SyncError::NotRunnable {
            export: name.into(),
            why: "it has no connection (its connection was removed). Remove it and add it again with --connection."
                .into(),
        })?;
        if export.targets.is_empty() {
            return Err(SyncError::NotRunnable { export: name.into(), why: "it has no segments".into() });
        }
        if opts.dry_run {
            let mut session = self.store.plan_session().await?;
            let ctx = PlanContext { run_id: None, opts, progress: &progress, cancel: &cancel };
            let (lists, failure) = self.plan(&export, &mut session, &ctx).await;
            if let Some(e) = failure {
                return Err(e);
            }
            let mut lists = lists;
            for (report, target) in lists.iter_mut().zip(&export.targets) {
                report.examples_add =
                    session.adds(target.id, 0, EXAMPLES).await?.into_iter().map(|a| a.email).collect();
                report.examples_remove =
                    session.removes(target.id, 0, EXAMPLES).await?.into_iter().map(|(_, e)| e).collect();
            }
            let (status, error) = match self.check_mass_removal(&export, &lists, opts).await? {
                Some(e) => (RunStatus::Refused, Some(e.to_string())),
                None => (RunStatus::Succeeded, None),
            };
            progress.set_phase(Phase::Done, "");
            return Ok(RunReport {
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
            });
        }

        let _lock = match RunLock::try_acquire(&self.config.store.lock_dir(), export.id) {
            Ok(lock) => lock,
            Err(LockError::Busy { .. }) => {
                let running = self.store.runs(Some(name), 20).await?;
                let run_id = running.iter().find(|r| r.status == RunStatus::Running).map(|r| r.id);
                return Err(SyncError::AlreadyRunning { export: name.into(), run_id });
            }
            Err(e) => return Err(e.into()),
        };
        let mut resumed_runs = self.store.interrupt_orphaned_runs(export.id).await?;
        if let Some(last) = self.store.runs(Some(name), 1).await?.first() {
            if last.status == RunStatus::Interrupted && !resumed_runs.contains(&last.id) {
                resumed_runs.push(last.id);
            }
        }
        if !resumed_runs.is_empty() {
            tracing::warn!(export = %name, runs = ?resumed_runs, "Earlier run(s) of this export stopped unfinished; this run completes their work.");
        }
        let client = self.client_for(connection_id).await?;
        let resumes = (!resumed_runs.is_empty()).then(|| {
            format!("resumes run(s) {}", resumed_runs.iter().map(|i| format!("#{i}")).collect::<Vec<_>>().join(", "))
        });
        let note = match (opts.note.clone(), resumes) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        };
        let run_id = self.store.start_run(export.id, &opts.trigger, opts.full, note.as_deref()).await?;
        progress.set_run_id(run_id);
        tracing::info!(export = %name, run_id, trigger = %opts.trigger, full = opts.full, "Run started.");

        let run_cancel = cancel.child_token();
        let watch = super::cancel::CancelWatch::start(self.store.clone(), run_id, run_cancel.clone());
        let outcome = self.execute(&export, run_id, &client, opts, &progress, &run_cancel).await;
        let cancel_requested = watch.stop().await;
        let outcome = outcome.map_err(|(e, lists)| (super::cancel::on_request(e, cancel_requested), lists));
        let (status, error, lists) = match outcome {
            Ok(lists) => (RunStatus::Succeeded, None, lists),
            Err((e, lists)) => {
                let status = match &e {
                    SyncError::Interrupted => RunStatus::Interrupted,
                    SyncError::Cancelled => RunStatus::Cancelled,
                    SyncError::MassRemoval { .. } => RunStatus::Refused,
                    _ => RunStatus::Failed,
                };
                (status, Some(e.to_string()), lists)
            }
        };
        self.store.finish_run(run_id, status, error.as_deref()).await?;
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
            requests: stats.requests.load(std::sync::atomic::Ordering::Relaxed),
            rate_limited: stats.rate_limited.load(std::sync::atomic::Ordering::Relaxed),
            lists,
            resumed_runs,
        };
        let (added, removed, rejected, invalid) = report
            .lists
            .iter()
            .fold((0, 0, 0, 0), |a, l| (a.0 + l.added, a.1 + l.removed, a.2 + l.rejected, a.3 + l.invalid));
        match status {
            RunStatus::Succeeded => {
                tracing::info!(export = %name, run_id, added, removed, rejected, invalid, seconds = report.seconds, "Run finished.")
            }
            _ => {
                tracing::warn!(export = %name, run_id, status = %status, added, removed, rejected, invalid, error = report.error.as_deref().unwrap_or(""), "Run did not succeed.")
            }
        }
        Ok(report)
    }

    /// The whole of a recorded run after its row exists. On failure, returns what was planned so far.
    async fn execute(
        &self,
        export: &Export,
        run_id: i64,
        client: &IterableClient,
        opts: &RunOptions,
        progress: &Arc<Progress>,
        cancel: &CancellationToken,
    ) -> Result<Vec<ListReport>, (SyncError, Vec<ListReport>)> {
        let mut session = self.store.plan_session().await.map_err(|e| (e.into(), vec![]))?;
        let ctx = PlanContext { run_id: Some(run_id), opts, progress, cancel };
        let (mut lists, failure) = self.plan(export, &mut session, &ctx).await;
        if let Some(e) = failure {
            return Err((e, lists));
        }
        match self.check_mass_removal(export, &lists, opts).await {
            Ok(None) => {}
            Ok(Some(e)) => return Err((e, lists)),
            Err(e) => return Err((e, lists)),
        }
        if cancel.is_cancelled() {
            return Err((SyncError::Interrupted, lists));
        }
        let sender =
            Sender::new(self.store.clone(), client.clone(), self.config.clone(), progress.clone(), cancel.clone());
        let nothing_to_send = lists.iter().all(|l| l.to_add == 0 && l.to_remove == 0);
        let check_every =
            chrono::Duration::from_std(self.config.sync.list_check_interval).unwrap_or(chrono::TimeDelta::MAX);
        let lists_recently_seen = export
            .targets
            .iter()
            .all(|t| t.list_id.is_some() && t.list_checked_at.is_some_and(|at| crate::store::now() - at < check_every));
        if nothing_to_send && lists_recently_seen {
            // No request at all when nothing changed and every list was seen lately: a list deleted in Iterable
            // meanwhile is noticed (and recreated and refilled) by the next run that sends something or whose
            // check is due (sync.list_check_interval), or by `--full`.
            for (target, list) in export.targets.iter().zip(&lists) {
                if let Err(e) = session.forget_leavers(target.id).await {
                    return Err((e.into(), lists));
                }
                if let Some(list_id) = list.list_id {
                    if let Err(e) = self.store.record_run_list(run_id, target.id, list_id).await {
                        return Err((e.into(), lists));
                    }
                }
            }
            return Ok(lists);
        }
        progress.set_phase(Phase::Resolving, "");
        let resolved = match sender.resolve_lists(export, run_id).await {
            Ok(r) => r,
            Err(e) => return Err((e, lists)),
        };
        for (i, target) in export.targets.iter().enumerate() {
            let (list_id, recreated, created_at) = resolved[i];
            lists[i].list_id = Some(list_id);
            let mut target_run = TargetRun { run_id, target, list_id, created_at };
            if recreated {
                // The old list is gone: everything must be sent again, so re-plan this target as a full one.
                let plan = session.compute(target.id, true, export.on_leave == OnLeave::Remove).await;
                match plan {
                    Ok(p) => {
                        progress
                            .planned
                            .fetch_add(p.to_add.saturating_sub(lists[i].to_add), std::sync::atomic::Ordering::Relaxed);
                        lists[i].to_add = p.to_add;
                        lists[i].unchanged = p.unchanged;
                        if let Err(e) = self.store.replan_adds(run_id, target.id, p.to_add, p.unchanged).await {
                            return Err((e.into(), lists));
                        }
                    }
                    Err(e) => return Err((e.into(), lists)),
                }
            }
            target_run.list_id = list_id;
            if let Err(e) = session.forget_leavers(target.id).await {
                return Err((e.into(), lists));
            }
            progress.set_phase(Phase::Sending, &target.list_name);
            if let Err(e) = sender.send_target(&mut session, &target_run, export.on_leave).await {
                return Err((e, lists));
            }
        }
        Ok(lists)
    }

    /// Reads every segment into the staging tables and diffs it. Nothing outside the store changes here, so a
    /// failure leaves every list as it was.
    async fn plan(
        &self,
        export: &Export,
        session: &mut PlanSession,
        ctx: &PlanContext<'_>,
    ) -> (Vec<ListReport>, Option<SyncError>) {
        let progress = ctx.progress;
        let mut lists = Vec::new();
        for target in &export.targets {
            progress.set_phase(Phase::Reading, &target.list_name);
            match self.plan_target(export, target, session, ctx).await {
                Ok(report) => lists.push(report),
                Err(e) => return (lists, Some(e)),
            }
        }
        let planned: u64 = lists.iter().map(|l| l.to_add + l.to_remove).sum();
        progress.planned.store(planned, std::sync::atomic::Ordering::Relaxed);
        (lists, None)
    }

    async fn plan_target(
        &self,
        export: &Export,
        target: &Target,
        session: &mut PlanSession,
        ctx: &PlanContext<'_>,
    ) -> Result<ListReport, SyncError> {
        let PlanContext { run_id, opts, progress, cancel } = *ctx;
        let segment = self.store.segment(&target.segment_name).await?;
        let spec: SourceSpec = segment.source.parse().map_err(|error| SyncError::Source {
            segment: segment.name.clone(),
            source_name: "its stored source".into(),
            error,
        })?;
        let source_err =
            |error| SyncError::Source { segment: segment.name.clone(), source_name: spec.to_string(), error };
        let mut columns = vec![export.email_field.clone()];
        columns.extend(export.fields.iter().map(|f| f.column.clone()));
        let stream = source::read(&spec, segment.query.as_deref(), Columns::Only(columns)).await.map_err(source_err)?;
        let encoder = FieldEncoder::new(&export.fields);
        let max_issues = self.config.sync.max_recorded_issues;
        let (mut source_rows, mut invalid, mut staged_new) = (0u64, 0u64, 0u64);
        let mut examples_invalid = Vec::new();
        let mut issues: Vec<(Option<String>, String)> = Vec::new();
        let mut buf = String::new();
        let mut batches = stream.batches;
        // Two chunks take turns: while the store writes one into the staging table (on its own thread), the next
        // is read from the source and normalised here.
        let mut filling: Vec<(String, i64, String)> = Vec::with_capacity(STAGE_CHUNK_ROWS + BATCH_SLACK);
        let mut writing: Vec<(String, i64, String)> = Vec::with_capacity(STAGE_CHUNK_ROWS + BATCH_SLACK);
        loop {
            let write = async {
                if writing.is_empty() {
                    Ok(0)
                } else {
                    session.stage(target.id, &writing).await
                }
            };
            let read = async {
                let mut ended = false;
                while filling.len() < STAGE_CHUNK_ROWS {
                    let Some(batch) = batches.try_next().await.map_err(source_err)? else {
                        ended = true;
                        break;
                    };
                    source_rows += batch.len() as u64;
                    progress.rows_read.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    for row in batch {
                        match normalize_email(&row[0]) {
                            Ok(email) => {
                                let hash = encoder.encode(&row[1..], &mut buf);
                                filling.push((email, hash, buf.clone()));
                            }
                            Err(reason) => {
                                invalid += 1;
                                let member = row[0].as_str().map(str::to_string);
                                if examples_invalid.len() < EXAMPLES {
                                    examples_invalid
                                        .push((member.clone().unwrap_or_else(|| row[0].to_string()), reason.clone()));
                                }
                                if run_id.is_some() && invalid <= max_issues {
                                    issues.push((member, reason));
                                }
                            }
                        }
                    }
                }
                // In email order, a chunk's inserts walk the staging tree forwards instead of jumping around it
                // (measured in the sqlite3 shell: a million inserts about 40% faster). The sort is stable, so of two
                // rows with one email the first is still staged first and kept.
                filling.sort_by(|a, b| a.0.cmp(&b.0));
                Ok::<bool, SyncError>(ended)
            };
            let (written, ended) = futures::join!(write, read);
            staged_new += written?;
            // A shutdown while a large segment is read: nothing was sent yet, so stopping here loses nothing.
            if cancel.is_cancelled() {
                return Err(SyncError::Interrupted);
            }
            let ended = ended?;
            writing.clear();
            std::mem::swap(&mut writing, &mut filling);
            if ended {
                staged_new += session.stage(target.id, &writing).await?;
                break;
            }
        }
        let valid = source_rows - invalid;
        let plan: TargetPlan = session.compute(target.id, opts.full, export.on_leave == OnLeave::Remove).await?;
        if let Some(run_id) = run_id {
            let counts = RunTargetCounts { source_rows, invalid, duplicates: valid - staged_new, ..Default::default() };
            self.store.record_plan(run_id, target.id, &target.list_name, &plan, &counts).await?;
            self.store.record_issues(run_id, target.id, IssueKind::Invalid, &issues).await?;
        }
        tracing::info!(
            export = %export.name, list = %target.list_name, source_rows, invalid, duplicates = valid - staged_new,
            to_add = plan.to_add, to_remove = plan.to_remove, unchanged = plan.unchanged, "Planned list."
        );
        Ok(ListReport {
            list_name: target.list_name.clone(),
            list_id: target.list_id,
            source_rows,
            members: plan.members,
            to_add: plan.to_add,
            to_remove: plan.to_remove,
            unchanged: plan.unchanged,
            invalid,
            duplicates: valid - staged_new,
            added: 0,
            removed: 0,
            rejected: 0,
            examples_add: vec![],
            examples_remove: vec![],
            examples_invalid,
        })
    }

    /// Bounds the run history after each run (`store.history_retention`, `sync.keep_issue_runs`). A failure
    /// here loses nothing and does not fail the run.
    async fn prune_history(&self, export: &Export) {
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

    /// The mass-removal guard: refuses a run that would unsubscribe more than the configured share of a list.
    async fn check_mass_removal(
        &self,
        export: &Export,
        lists: &[ListReport],
        opts: &RunOptions,
    ) -> Result<Option<SyncError>, SyncError> {
        if opts.allow_mass_removal {
            return Ok(None);
        }
        let share = self.config.sync.mass_removal_share;
        let mut details = Vec::new();
        for (target, list) in export.targets.iter().zip(lists) {
            if list.to_remove == 0 {
                continue;
            }
            let on_list = self.store.member_counts(target.id).await?.subscribed;
            let removing = list.to_remove as f64 / on_list.max(1) as f64;
            if removing > share {
                details.push(format!(
                    "list '{}' would lose {} of its {} members ({:.0}%, more than sync.mass_removal_share {:.0}%)",
                    list.list_name,
                    list.to_remove,
                    on_list,
                    removing * 100.0,
                    share * 100.0
                ));
            }
        }
        Ok((!details.is_empty()).then_some(SyncError::MassRemoval { details }))
    }
}

/// Takes the progress counters recorded in the store into the reports.
fn merge_counts(mut lists: Vec<ListReport>, run: &crate::store::Run) -> Vec<ListReport> {
    for l in &mut lists {
        if let Some(t) = run.targets.iter().find(|t| t.list_name == l.list_name) {
            l.added = t.counts.added;
            l.removed = t.counts.removed;
            l.rejected = t.counts.rejected;
            l.list_id = t.list_id.or(l.list_id);
        }
    }
    lists
}
