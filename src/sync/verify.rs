//! Verify: prove from Iterable itself that each list of an export equals its segment, and repair it on request.
//!
//! A verify holds the export like a run (a run in flight makes it wait or refuses it), reads the segment as a run
//! plans it (staged, nothing recorded), reads each list's size and then its members from `getUsers` as they
//! arrive, and compares the three in the store: members missing, not yet sent, lingering, others' and settling
//! (`store::DriftKind`). When the members read do not add up to the list's size, that list gets no verdict and
//! nothing is repaired. A repair corrects the export's memory where Iterable disagreed with it and then sends
//! like a run, in the same recorded run (`verify_repair`), through the mass-removal guard. It owns the meaning of
//! a verify; it reads and writes state only through `store` and reaches Iterable only through `iterable`.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::engine::{Engine, RunOptions, RunState};
use super::guard::RunGuard;
use super::plan::ListReport;
use super::progress::{Phase, Progress};
use super::send::LIST_READ_CHUNK;
use super::SyncError;
use crate::iterable::{IterableClient, IterableError};
use crate::store::{Export, ListVerify, OnLeave, PlanSession, ProjectType, RunKind, RunStatus, Verdict};

/// Examples kept of each category, per list.
pub const VERIFY_EXAMPLES: u32 = 20;

/// How a verify was asked for.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// What started it: `manual`, `schedule`, `api`, ...
    pub trigger: String,
    /// Send the missing members again and correct the export's memory.
    pub repair: bool,
    /// With `repair`: unsubscribe the lingering members too.
    pub remove_lingering: bool,
    /// With `repair`: let a repair through that would unsubscribe more than `sync.mass_removal_share` of a list.
    pub allow_mass_removal: bool,
    /// With `repair`: let a repair through that would put more new members on a list than
    /// `sync.mass_addition_share` times those the memory keeps there (a list emptied by hand, say).
    pub allow_mass_addition: bool,
    /// The run request (`crate::queue`) this verify answers, if it answers one.
    pub request_id: Option<i64>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            trigger: "manual".into(),
            repair: false,
            remove_lingering: false,
            allow_mass_removal: false,
            allow_mass_addition: false,
            request_id: None,
        }
    }
}

/// What a verify found, and what its repair did.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub export: String,
    pub run_id: i64,
    pub kind: RunKind,
    pub status: RunStatus,
    pub error: Option<String>,
    /// Some list was found missing members or holding lingering ones.
    pub drifted: bool,
    /// Drift this verify found and did not repair (exit code 3 from the CLI).
    pub drift_left: bool,
    pub seconds: f64,
    pub requests: u64,
    pub lists: Vec<ListVerify>,
    /// What the repair sent, per list (a repair only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub repaired: Vec<ListReport>,
}

impl VerifyReport {
    /// Every list got a verdict and the verify (and its repair) ran to its end.
    pub fn succeeded(&self) -> bool {
        self.status == RunStatus::Succeeded
    }
}

impl Engine {
    /// Verifies an export now, taking its run lock: a run or verify in flight refuses it (`AlreadyRunning`).
    pub async fn verify_export(
        &self,
        name: &str,
        opts: &VerifyOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> Result<VerifyReport, SyncError> {
        let export = self.store.export(name).await?;
        if let Some(refusal) = check_options(&export, opts) {
            return Err(refusal);
        }
        let guard = self.take_guard(&export).await?;
        self.verify_guarded(export, guard, opts, progress, cancel).await
    }

    /// Verifies the export `guard` holds, taken already (by the run queue).
    pub async fn verify_taken(
        &self,
        guard: RunGuard,
        opts: &VerifyOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> Result<VerifyReport, SyncError> {
        let export = self.store.export_by_id(guard.export_id()).await?;
        if export.removed_at.is_some() {
            guard.release(true).await;
            return Err(SyncError::NotRunnable { export: export.name, why: "it was removed".into() });
        }
        if let Some(refusal) = check_options(&export, opts) {
            guard.release(true).await;
            return Err(refusal);
        }
        self.verify_guarded(export, guard, opts, progress, cancel).await
    }

    async fn verify_guarded(
        &self,
        export: Export,
        guard: RunGuard,
        opts: &VerifyOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> Result<VerifyReport, SyncError> {
        let (engine, cancel, stop_on_loss) = self.under_guard(&guard, &progress, cancel);
        let result = engine.verify_locked(export, &guard, opts, progress, cancel).await;
        stop_on_loss.abort();
        guard.release(true).await;
        result
    }

    async fn verify_locked(
        &self,
        export: Export,
        guard: &RunGuard,
        opts: &VerifyOptions,
        progress: Arc<Progress>,
        cancel: CancellationToken,
    ) -> Result<VerifyReport, SyncError> {
        let started = Instant::now();
        let (connection_id, project_type) = self.runnable(&export).await?;
        let name = export.name.as_str();
        self.store.interrupt_orphaned_runs(export.id).await?;
        let run_cancel = cancel.child_token();
        let client = self.client_for(connection_id).await?.with_cancel(run_cancel.clone()).with_gate(guard.gate());
        let kind = if opts.repair { RunKind::VerifyRepair } else { RunKind::Verify };
        let run_id = self.store.start_requested_run(export.id, &opts.trigger, false, None, opts.request_id).await?;
        self.store.set_run_kind(run_id, kind).await?;
        progress.set_run_id(run_id);
        guard.set_run(run_id).await;
        tracing::info!(export = %name, run_id, trigger = %opts.trigger, repair = opts.repair, "Verify started.");
        let watch = super::cancel::CancelWatch::start(self.store.clone(), run_id, run_cancel.clone());
        let mut state = RunState::new(run_id, connection_id, project_type);
        let mut lists = Vec::new();
        let outcome = self.verify_execute(&export, &mut state, &client, opts, &progress, &run_cancel, &mut lists).await;
        let cancel_requested = watch.stop().await;
        let outcome = outcome.map_err(|e| super::cancel::on_request(e, cancel_requested));
        let (status, error) = match outcome {
            Ok(()) => match lists.iter().find(|l| l.verdict == Verdict::NoVerdict) {
                Some(list) => (
                    RunStatus::Failed,
                    Some(format!(
                        "list '{}': no verdict: {}",
                        list.list_name,
                        list.note.as_deref().unwrap_or("its members could not be read whole")
                    )),
                ),
                None => (RunStatus::Succeeded, None),
            },
            Err(e) => (super::engine::status_of(&e), Some(e.to_string())),
        };
        self.store.finish_run(run_id, status, error.as_deref()).await?;
        self.prune_history(&export).await;
        progress.set_phase(Phase::Done, "");
        let drifted = lists.iter().any(|l| l.verdict == Verdict::Drifted);
        let repaired_ok = opts.repair && status == RunStatus::Succeeded;
        let drift_left = drifted
            && (!repaired_ok
                || (!opts.remove_lingering
                    && lists.iter().any(|l| l.verdict == Verdict::Drifted && l.lingering.count > 0)));
        let repaired =
            if opts.repair { super::engine::merge_counts(state.lists, &self.store.run(run_id).await?) } else { vec![] };
        let report = VerifyReport {
            export: export.name.clone(),
            run_id,
            kind,
            status,
            error,
            drifted,
            drift_left,
            seconds: started.elapsed().as_secs_f64(),
            requests: client.stats().requests.load(std::sync::atomic::Ordering::Relaxed),
            lists,
            repaired,
        };
        let (missing, lingering) =
            report.lists.iter().fold((0, 0), |(m, l), list| (m + list.missing.count, l + list.lingering.count));
        if drifted {
            tracing::warn!(export = %name, run_id, missing, lingering, repaired = repaired_ok, "Verify found lists that drifted from their segments.");
        } else {
            tracing::info!(export = %name, run_id, status = %status, "Verify finished.");
        }
        self.tell_drift(&export, &report).await;
        Ok(report)
    }

    /// Reads every list and compares it; then, for a repair whose every list got a verdict, corrects the
    /// export's memory and sends like a run.
    #[allow(clippy::too_many_arguments)]
    async fn verify_execute(
        &self,
        export: &Export,
        state: &mut RunState,
        client: &IterableClient,
        opts: &VerifyOptions,
        progress: &Arc<Progress>,
        cancel: &CancellationToken,
        lists: &mut Vec<ListVerify>,
    ) -> Result<(), SyncError> {
        let mut session = self.store.plan_session().await?;
        // The segment as a run would plan it now, recorded nowhere: what is not yet sent.
        let planner = self.planner(export, state.project_type, None, &RunOptions::default(), progress, cancel);
        planner.plan(&mut session, &mut Vec::new()).await?;
        let mut settled = Vec::new();
        for target in &export.targets {
            let mut list = ListVerify::new(target.id, &target.list_name, target.list_id);
            match target.list_id {
                None => {
                    list.note =
                        Some("this export has not made or found the list in Iterable yet: run the export first".into())
                }
                Some(list_id) => {
                    progress.set_phase(Phase::Reading, &target.list_name);
                    let settled_before =
                        self.verify_list(&mut session, client, state.project_type, list_id, &mut list).await?;
                    settled.push((target.id, settled_before));
                }
            }
            self.store.record_verify(state.run_id, &list).await?;
            lists.push(list);
        }
        if !opts.repair {
            return Ok(());
        }
        if lists.iter().any(|l| l.verdict == Verdict::NoVerdict) {
            // Repair nothing on a read that cannot be trusted (the run ends failed, saying which list).
            return Ok(());
        }
        for (target_id, settled_before) in settled {
            if lists.iter().any(|l| l.target_id == target_id && l.verdict == Verdict::Drifted) {
                session.correct_memory(target_id, settled_before, opts.remove_lingering).await?;
            }
        }
        drop(session);
        let export = self.store.export_by_id(export.id).await?;
        let run_opts = RunOptions {
            trigger: opts.trigger.clone(),
            allow_mass_removal: opts.allow_mass_removal,
            allow_mass_addition: opts.allow_mass_addition,
            ..RunOptions::default()
        };
        self.execute(&export, state, client, &run_opts, progress, cancel).await
    }

    /// Reads one list (its size, then its members) into the session and sorts it into `list`'s categories.
    /// Returns the settle cutoff used (Unix seconds).
    async fn verify_list(
        &self,
        session: &mut PlanSession,
        client: &IterableClient,
        project_type: ProjectType,
        list_id: i64,
        list: &mut ListVerify,
    ) -> Result<i64, SyncError> {
        let iterable = |error| match error {
            IterableError::Cancelled { .. } => SyncError::Interrupted,
            error => SyncError::Iterable { list: list.list_name.clone(), error },
        };
        let size = client.list_size(list_id).await.map_err(iterable)?;
        let settle = chrono::Duration::from_std(self.config.sync.verify_settle).unwrap_or(chrono::TimeDelta::MAX);
        let settled_before = (crate::store::now() - settle).timestamp();
        session.start_listing(list.target_id).await?;
        let prefer_user_id = project_type != ProjectType::Email;
        let mut reader =
            client.list_users(list_id, prefer_user_id, self.config.iterable.timeout).await.map_err(iterable)?;
        let mut read = 0u64;
        while let Some(lines) = reader.next_lines(LIST_READ_CHUNK).await.map_err(iterable)? {
            read += lines.len() as u64;
            let keyed: Vec<(String, Vec<String>)> = lines
                .into_iter()
                .map(|line| {
                    let keys = super::identity::keys_of_listed_user(project_type, &line);
                    (line, keys)
                })
                .collect();
            session.add_listed(list.target_id, &keyed).await?;
        }
        list.read_members = read;
        list.list_size = Some(size);
        if read == size && project_type == ProjectType::Hybrid {
            // `preferUserId` names a user by its user id where it has one: a member this export sent by its email
            // alone is found by a second read, of emails.
            let mut reader = client.list_users(list_id, false, self.config.iterable.timeout).await.map_err(iterable)?;
            let mut by_email = 0u64;
            while let Some(lines) = reader.next_lines(LIST_READ_CHUNK).await.map_err(iterable)? {
                by_email += lines.len() as u64;
                let emails: Vec<String> = lines
                    .iter()
                    .filter_map(|line| super::email::normalize_email(&serde_json::Value::String(line.clone())).ok())
                    .collect();
                session.add_listed_emails(list.target_id, &emails).await?;
            }
            if by_email != size {
                read = by_email;
                list.read_members = by_email;
            }
        }
        if read != size {
            list.verdict = Verdict::NoVerdict;
            list.note = Some(format!(
                "getUsers answered {read} members, but Iterable gives the list's size as {size}; the read cannot be \
                 trusted, so nothing is concluded and nothing is repaired. Verify again later."
            ));
            tracing::warn!(list = %list.list_name, list_id, read, size, "A list read did not add up to its size; no verdict.");
            return Ok(settled_before);
        }
        session.classify(list.target_id, settled_before, VERIFY_EXAMPLES, list).await?;
        list.verdict = if list.drift() > 0 { Verdict::Drifted } else { Verdict::Clean };
        tracing::debug!(list = %list.list_name, list_id, read, missing = list.missing.count,
            lingering = list.lingering.count, others = list.others.count, settling = list.settling.count,
            not_yet_sent = list.not_yet_sent.count, "List verified.");
        Ok(settled_before)
    }
}

/// Why options cannot do what they say, checked before anything is read; None when they can.
fn check_options(export: &Export, opts: &VerifyOptions) -> Option<SyncError> {
    let why = if opts.remove_lingering && !opts.repair {
        "--remove-lingering removes members only as part of a repair: add --repair"
    } else if opts.remove_lingering && export.on_leave == OnLeave::Keep {
        "it keeps members who leave (--on-leave keep), so it removes no one: drop --remove-lingering, or change the \
         export with `export edit --on-leave remove`"
    } else {
        return None;
    };
    Some(SyncError::NotRunnable { export: export.name.clone(), why: why.into() })
}

impl Engine {
    /// Raises the `drift` event of notifications (through the engine's teller, when it has one): a verify with a
    /// verdict on every list tells how many members are missing or lingering and left so, and a clean one ends a
    /// drift told before. Counts and list names only: identities stay out of it. A failure to record it is logged
    /// and does not fail the verify.
    async fn tell_drift(&self, export: &Export, report: &VerifyReport) {
        let Some(teller) = &self.teller else { return };
        if report.status != RunStatus::Succeeded && !(report.kind == RunKind::VerifyRepair && report.drifted) {
            return;
        }
        if report.lists.iter().any(|l| l.verdict == Verdict::NoVerdict) {
            return;
        }
        let drifted: Vec<&ListVerify> = report.lists.iter().filter(|l| l.verdict == Verdict::Drifted).collect();
        let differing =
            if report.drift_left { drifted.iter().map(|l| l.missing.count + l.lingering.count).sum() } else { 0 };
        let lists: Vec<String> =
            if report.drift_left { drifted.iter().map(|l| l.list_name.clone()).collect() } else { vec![] };
        if let Err(e) = teller.drift(&self.store, export, report.run_id, differing, &lists).await {
            tracing::warn!(export = %export.name, run_id = report.run_id, error = %e, "Cannot record the drift notification.");
        }
    }
}
