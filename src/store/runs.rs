//! Run history: one row per run, one per (run, target) with plan and progress counters, and the members a run
//! could not send (invalid) or that Iterable refused (rejected).

use super::db::{sql, values_placeholders, Row};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{now, Result, Store, StoreError, TargetPlan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    /// The process stopped (killed, crashed, shut down) before the run finished; the next run resumes it.
    Interrupted,
    /// Stopped before changing anything, e.g. by the mass-removal guard.
    Refused,
    /// Stopped because someone asked (`--cancel-run` of `export remove`/`edit`, `connection remove`); what
    /// Iterable acknowledged before is recorded.
    Cancelled,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Refused => "refused",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// Reads `runs.status`; an unknown value is an error, never taken for another status.
    fn parse(s: &str) -> Result<RunStatus> {
        match s {
            "running" => Ok(RunStatus::Running),
            "succeeded" => Ok(RunStatus::Succeeded),
            "failed" => Ok(RunStatus::Failed),
            "interrupted" => Ok(RunStatus::Interrupted),
            "refused" => Ok(RunStatus::Refused),
            "cancelled" => Ok(RunStatus::Cancelled),
            other => Err(StoreError::unknown_value("runs", "status", other)),
        }
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A list's plan and progress in one run. Each subscribe counts by what it did to the list (`AddKind`): `added`
/// members are new on it, `updated` ones were put there by this export before (sent again for a changed field, or
/// `--full`), `already_on_list` ones were on it when the export adopted it. Runs recorded before this split count
/// every subscribe as added.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunTargetCounts {
    pub source_rows: u64,
    /// Subscribes planned of members new on the list.
    pub planned_add: u64,
    /// Subscribes planned of members on the list already (updated, or already there when it was adopted).
    pub planned_update: u64,
    pub planned_remove: u64,
    pub unchanged: u64,
    pub invalid: u64,
    pub duplicates: u64,
    pub added: u64,
    pub updated: u64,
    pub already_on_list: u64,
    pub removed: u64,
    pub rejected: u64,
}

impl RunTargetCounts {
    /// Subscribes planned, whatever they do to the list.
    pub fn planned_subscribes(&self) -> u64 {
        self.planned_add + self.planned_update
    }

    /// Subscribes acknowledged, whatever they did to the list.
    pub fn subscribed(&self) -> u64 {
        self.added + self.updated + self.already_on_list
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RunTarget {
    pub target_id: i64,
    pub list_name: String,
    pub list_id: Option<i64>,
    #[serde(flatten)]
    pub counts: RunTargetCounts,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: i64,
    pub export_id: i64,
    pub export_name: String,
    pub trigger: String,
    pub status: RunStatus,
    pub full_resync: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    pub pid: Option<i64>,
    pub note: Option<String>,
    pub targets: Vec<RunTarget>,
    /// The run's export was removed since (its name may belong to another export now).
    pub export_removed: bool,
    /// A run, or a verify (and repair) of the export's lists.
    pub kind: super::RunKind,
}

impl Run {
    /// Members planned (adds plus removes) and done so far, over all lists.
    pub fn progress(&self) -> (u64, u64) {
        self.targets.iter().fold((0, 0), |(planned, done), t| {
            let c = &t.counts;
            (planned + c.planned_subscribes() + c.planned_remove, done + c.subscribed() + c.rejected + c.removed)
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IssueKind {
    Invalid,
    Rejected,
}

impl IssueKind {
    /// Reads `run_issues.kind`; an unknown value is an error.
    fn parse(s: &str) -> Result<IssueKind> {
        match s {
            "invalid" => Ok(IssueKind::Invalid),
            "rejected" => Ok(IssueKind::Rejected),
            other => Err(StoreError::unknown_value("run_issues", "kind", other)),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Issue {
    pub list_name: String,
    pub kind: IssueKind,
    pub member: Option<String>,
    pub reason: String,
}

/// This process, as recorded with the runs it starts (`runs.owner`): its pid and a random token, since pids are
/// reused. Only the owner finishes a run.
pub fn process_owner() -> &'static str {
    static OWNER: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("pid {} token {:016x}", std::process::id(), rand::random::<u64>()));
    &OWNER
}

/// Of an offending value only this much is stored: enough to recognise it, never a 10 MB field on every run.
const MAX_STORED_MEMBER_BYTES: usize = 256;
const MAX_STORED_REASON_BYTES: usize = 512;

/// `text` cut to at most `max` bytes on a character boundary, marked with an ellipsis when cut.
pub(super) fn clip(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

const SELECT_RUN: &str = "SELECT r.id, r.export_id, e.name AS export_name, r.trigger, r.status, r.full_resync, \
     r.started_at, r.finished_at, r.error, r.pid, r.note, e.removed_at IS NOT NULL AS export_removed, r.kind \
     FROM runs r JOIN exports e ON e.id = r.export_id";

/// Which runs a listing wants.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunFilter<'a> {
    /// Only the runs of the export of this name (with `include_removed`, of every export that had the name).
    pub export: Option<&'a str>,
    /// Only the runs of the exports this account is an export user of.
    pub export_user: Option<i64>,
    /// Runs of removed exports too.
    pub include_removed: bool,
}

impl Store {
    pub async fn start_run(&self, export_id: i64, trigger: &str, full: bool, note: Option<&str>) -> Result<i64> {
        self.start_requested_run(export_id, trigger, full, note, None).await
    }

    /// Records the start of a run; the request it answers (`request_id`), if any, points at it from then on, in
    /// the same transaction.
    pub async fn start_requested_run(
        &self,
        export_id: i64,
        trigger: &str,
        full: bool,
        note: Option<&str>,
        request_id: Option<i64>,
    ) -> Result<i64> {
        let mut tx = self.db.begin().await?;
        let run_id: i64 =
            sql("INSERT INTO runs (export_id, trigger, status, full_resync, started_at, pid, note, owner) \
             VALUES ($1, $2, 'running', $3, $4, $5, $6, $7) RETURNING id")
            .bind(export_id)
            .bind(trigger)
            .bind(full)
            .bind(now())
            .bind(std::process::id() as i64)
            .bind(note)
            .bind(process_owner())
            .scalar(&mut tx)
            .await?;
        if let Some(request_id) = request_id {
            sql("UPDATE run_requests SET run_id = $1 WHERE id = $2")
                .bind(run_id)
                .bind(request_id)
                .execute(&mut tx)
                .await?;
        }
        tx.commit().await?;
        Ok(run_id)
    }

    /// Marks runs of an export that are still `running` as interrupted. Called by whoever holds the export's run
    /// lock, so such runs belong to a process that is gone.
    pub async fn interrupt_orphaned_runs(&self, export_id: i64) -> Result<Vec<i64>> {
        Ok(sql("UPDATE runs SET status = 'interrupted', finished_at = $1, \
             error = COALESCE(error, 'the process running it stopped before it finished') \
             WHERE export_id = $2 AND status = 'running' RETURNING id")
        .bind(now())
        .bind(export_id)
        .scalars(&self.db)
        .await?)
    }

    /// Finishes a run this process started and that is still `running`. Returns false, and says so, when that
    /// changed nothing (another process marked the run, or it was never this process's).
    /// A succeeded run marks its targets' lists filled (see `Target::filled_at`), in the same transaction.
    pub async fn finish_run(&self, run_id: i64, status: RunStatus, error: Option<&str>) -> Result<bool> {
        self.finish_run_telling(run_id, status, error, &super::Tidings::default()).await
    }

    /// Records a target's plan for a run: `counts` holds the source rows, invalid and duplicate members.
    pub async fn record_plan(
        &self,
        run_id: i64,
        target_id: i64,
        list_name: &str,
        plan: &TargetPlan,
        counts: &RunTargetCounts,
    ) -> Result<()> {
        sql("INSERT INTO run_targets (run_id, target_id, list_name, source_rows, planned_add, planned_update, \
             planned_remove, unchanged, invalid, duplicates) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)")
        .bind(run_id)
        .bind(target_id)
        .bind(list_name)
        .bind(counts.source_rows as i64)
        .bind(plan.to_add as i64)
        .bind(plan.to_update as i64)
        .bind(plan.to_remove as i64)
        .bind(plan.unchanged as i64)
        .bind(counts.invalid as i64)
        .bind(counts.duplicates as i64)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Updates a target's planned subscribes after its list was resolved: recreated (everyone is sent again, new on
    /// the new list) or adopted (its members found on it are no longer new).
    pub async fn replan_adds(&self, run_id: i64, target_id: i64, plan: &TargetPlan) -> Result<()> {
        sql(
            "UPDATE run_targets SET planned_add = $1, planned_update = $2, unchanged = $3 WHERE run_id = $4 AND target_id = $5",
        )
        .bind(plan.to_add as i64)
        .bind(plan.to_update as i64)
        .bind(plan.unchanged as i64)
            .bind(run_id)
            .bind(target_id)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    pub async fn record_run_list(&self, run_id: i64, target_id: i64, list_id: i64) -> Result<()> {
        sql("UPDATE run_targets SET list_id = $1 WHERE run_id = $2 AND target_id = $3")
            .bind(list_id)
            .bind(run_id)
            .bind(target_id)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// Stores invalid or rejected members with their reasons.
    pub async fn record_issues(
        &self,
        run_id: i64,
        target_id: i64,
        kind: IssueKind,
        issues: &[(Option<String>, String)],
    ) -> Result<()> {
        let kind = match kind {
            IssueKind::Invalid => "invalid",
            IssueKind::Rejected => "rejected",
        };
        for chunk in issues.chunks(2000) {
            let text = format!(
                "INSERT INTO run_issues (run_id, target_id, kind, member, reason) {}",
                values_placeholders(chunk.len(), 5, 1)
            );
            let mut q = sql(text);
            for (member, reason) in chunk {
                q = q
                    .bind(run_id)
                    .bind(target_id)
                    .bind(kind)
                    .bind(member.as_deref().map(|m| clip(m, MAX_STORED_MEMBER_BYTES)))
                    .bind(clip(reason, MAX_STORED_REASON_BYTES));
            }
            q.execute(&self.db).await?;
        }
        Ok(())
    }

    /// Keeps history bounded: drops runs that finished before `cutoff` (with their per-list counts and issues,
    /// by cascade), except each export's latest run, and drops the invalid/rejected members of all but the last
    /// `keep_issue_runs` runs of `export_id`. Returns (runs pruned, issue rows pruned).
    pub async fn prune_history(
        &self,
        export_id: i64,
        cutoff: DateTime<Utc>,
        keep_issue_runs: u32,
    ) -> Result<(u64, u64)> {
        let mut tx = self.db.begin().await?;
        let runs = sql("DELETE FROM runs WHERE status != 'running' AND finished_at IS NOT NULL AND finished_at < $1 \
             AND id NOT IN (SELECT MAX(id) FROM runs GROUP BY export_id)")
        .bind(cutoff)
        .execute(&mut tx)
        .await?;
        let issues = sql("DELETE FROM run_issues WHERE run_id IN \
             (SELECT id FROM runs WHERE export_id = $1 ORDER BY id DESC LIMIT $3 OFFSET $2)")
        .bind(export_id)
        .bind(keep_issue_runs as i64)
        .bind(i64::MAX)
        .execute(&mut tx)
        .await?;
        tx.commit().await?;
        Ok((runs, issues))
    }

    /// Runs of exports not removed (of the one named `export`, if given), newest first.
    pub async fn runs(&self, export: Option<&str>, limit: u32) -> Result<Vec<Run>> {
        self.runs_matching(RunFilter { export, ..RunFilter::default() }, limit).await
    }

    /// The newest `limit` runs that match `filter`, newest first. The filter is part of the query, so the limit
    /// counts only matching runs.
    pub async fn runs_matching(&self, filter: RunFilter<'_>, limit: u32) -> Result<Vec<Run>> {
        let rows = sql(format!(
            "{SELECT_RUN} WHERE ($1 IS NULL OR e.name = $1) AND ($3 OR e.removed_at IS NULL) \
             AND ($4 IS NULL OR r.export_id IN (SELECT export_id FROM export_users WHERE user_id = $4)) \
             ORDER BY r.id DESC LIMIT $2"
        ))
        .bind(filter.export)
        .bind(limit as i64)
        .bind(filter.include_removed)
        .bind(filter.export_user)
        .fetch_all(&self.db)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.run_from_row(row).await?);
        }
        Ok(out)
    }

    pub async fn run(&self, id: i64) -> Result<Run> {
        let row = sql(format!("{SELECT_RUN} WHERE r.id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await?
            .ok_or_else(|| StoreError::not_found("run", &id.to_string(), "runs"))?;
        self.run_from_row(row).await
    }

    /// The latest run of one export (by id, so a removed export's runs are not mixed with a new one's).
    pub async fn last_run(&self, export_id: i64) -> Result<Option<Run>> {
        let row = sql(format!("{SELECT_RUN} WHERE r.export_id = $1 ORDER BY r.id DESC LIMIT 1"))
            .bind(export_id)
            .fetch_optional(&self.db)
            .await?;
        match row {
            Some(row) => Ok(Some(self.run_from_row(row).await?)),
            None => Ok(None),
        }
    }

    /// The most recent successful run of an export.
    pub async fn last_success(&self, export_id: i64) -> Result<Option<DateTime<Utc>>> {
        Ok(sql("SELECT MAX(finished_at) FROM runs WHERE export_id = $1 AND status = 'succeeded'")
            .bind(export_id)
            .scalar(&self.db)
            .await?)
    }

    async fn run_from_row(&self, row: Row) -> Result<Run> {
        let id: i64 = row.try_get("id")?;
        let targets =
            sql("SELECT target_id, list_name, list_id, source_rows, planned_add, planned_remove, unchanged, invalid, \
             duplicates, added, removed, rejected, planned_update, updated, already_on_list FROM run_targets \
             WHERE run_id = $1 ORDER BY rowid")
            .bind(id)
            .fetch_all(&self.db)
            .await?
            .into_iter()
            .map(|r| {
                let n = |i: usize| r.try_get::<i64, _>(i).map(|v| v as u64);
                Ok(RunTarget {
                    target_id: r.try_get(0)?,
                    list_name: r.try_get(1)?,
                    list_id: r.try_get(2)?,
                    counts: RunTargetCounts {
                        source_rows: n(3)?,
                        planned_add: n(4)?,
                        planned_update: n(12)?,
                        planned_remove: n(5)?,
                        unchanged: n(6)?,
                        invalid: n(7)?,
                        duplicates: n(8)?,
                        added: n(9)?,
                        updated: n(13)?,
                        already_on_list: n(14)?,
                        removed: n(10)?,
                        rejected: n(11)?,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let status: String = row.try_get("status")?;
        Ok(Run {
            id,
            export_id: row.try_get("export_id")?,
            export_name: row.try_get("export_name")?,
            trigger: row.try_get("trigger")?,
            status: RunStatus::parse(&status)?,
            full_resync: row.try_get("full_resync")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            error: row.try_get("error")?,
            pid: row.try_get("pid")?,
            note: row.try_get("note")?,
            targets,
            export_removed: row.try_get("export_removed")?,
            kind: super::RunKind::parse(&row.try_get::<String, _>("kind")?)?,
        })
    }

    /// The run of an export still recorded `running`, if any (it may belong to a process that is gone).
    pub async fn running_run(&self, export_id: i64) -> Result<Option<i64>> {
        Ok(sql("SELECT MAX(id) FROM runs WHERE export_id = $1 AND status = 'running'")
            .bind(export_id)
            .scalar(&self.db)
            .await?)
    }

    /// Asks a running run to stop, whichever process runs it (it polls `cancel_requested`). False when the run is
    /// not running.
    pub async fn request_cancel(&self, run_id: i64) -> Result<bool> {
        Ok(sql(
            "UPDATE runs SET cancel_requested_at = COALESCE(cancel_requested_at, $1) WHERE id = $2 AND status = 'running'",
        )
        .bind(now())
        .bind(run_id)
        .execute(&self.db)
        .await?
            == 1)
    }

    /// Whether someone asked this run to stop.
    pub async fn cancel_requested(&self, run_id: i64) -> Result<bool> {
        Ok(sql("SELECT cancel_requested_at IS NOT NULL FROM runs WHERE id = $1")
            .bind(run_id)
            .scalar_optional(&self.db)
            .await?
            .unwrap_or(false))
    }

    pub async fn run_issues(&self, run_id: i64, limit: u32) -> Result<Vec<Issue>> {
        let rows = sql(
            "SELECT t.list_name, i.kind, i.member, i.reason FROM run_issues i JOIN targets t ON t.id = i.target_id \
             WHERE i.run_id = $1 ORDER BY i.rowid LIMIT $2",
        )
        .bind(run_id)
        .bind(limit as i64)
        .fetch_all(&self.db)
        .await?;
        rows.into_iter()
            .map(|r| {
                let kind: String = r.try_get(1)?;
                Ok(Issue {
                    list_name: r.try_get(0)?,
                    kind: IssueKind::parse(&kind)?,
                    member: r.try_get(2)?,
                    reason: r.try_get(3)?,
                })
            })
            .collect()
    }
}
