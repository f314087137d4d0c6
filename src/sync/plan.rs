//! Planning a run: read every segment of an export into the staging tables, normalise and hash each member, diff
//! the result against what Iterable acknowledged, and apply the guards on mass removal and mass addition.
//!
//! Nothing outside the store changes here, so a failure while planning leaves every list as it was. It owns the
//! staging pipeline (the hot path of a large run: one allocation per member, chunks written while the next one is
//! read); it must not talk to Iterable.

use std::sync::atomic::Ordering;

use futures::TryStreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::fields::FieldEncoder;
use super::identity::{identify, member_hash};
use super::progress::{Phase, Progress};
use super::{RunOptions, SyncError};
use crate::config::Config;
use crate::secrets::resolve_source_password;
use crate::source::{self, Columns, SourceSpec};
use crate::store::{
    ComputeOptions, Export, IssueKind, OnLeave, PlanSession, ProjectType, RunTargetCounts, StagedMember, Store, Target,
    TargetPlan,
};

/// What a run did (or, for a dry run, would do) to one list. A subscribe counts by what it does to the list
/// (`store::AddKind`): `to_add`/`added` are members new on it; `to_update` are members on it already, `updated`
/// those this export had put there (sent again for a changed field, or `--full`) and `already_on_list` those that
/// were on the list when the export adopted it. A dry run cannot tell the last kind on a list not adopted yet: it
/// counts those members in `to_add`.
#[derive(Debug, Clone, Serialize)]
pub struct ListReport {
    pub list_name: String,
    pub list_id: Option<i64>,
    pub source_rows: u64,
    pub members: u64,
    pub to_add: u64,
    pub to_update: u64,
    pub to_remove: u64,
    pub unchanged: u64,
    pub invalid: u64,
    pub duplicates: u64,
    pub added: u64,
    pub updated: u64,
    pub already_on_list: u64,
    pub removed: u64,
    pub rejected: u64,
    /// Dry runs only: a few members of each kind.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub examples_add: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub examples_remove: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub examples_invalid: Vec<InvalidExample>,
}

impl ListReport {
    /// Members the plan subscribes, whatever that does to the list.
    pub fn to_subscribe(&self) -> u64 {
        self.to_add + self.to_update
    }

    /// Members subscribed, whatever that did to the list.
    pub fn subscribed(&self) -> u64 {
        self.added + self.updated + self.already_on_list
    }
}

/// A member a dry run found invalid: its email (or user id) value as the source gave it (None for NULL, shown as
/// JSON null like `runs show --rejected` does) and why it is refused.
#[derive(Debug, Clone, Serialize)]
pub struct InvalidExample {
    pub member: Option<String>,
    pub reason: String,
}

/// Examples of each kind kept for a dry run's report.
pub(super) const EXAMPLES: usize = 5;

/// Members staged per write to the plan connection; the next chunk is read while one is written.
const STAGE_CHUNK_ROWS: usize = 4000;
/// A chunk fills by whole source batches, so it can exceed `STAGE_CHUNK_ROWS` by up to one batch.
const BATCH_SLACK: usize = 1024;

/// What planning needs to know about the run it plans for.
pub(super) struct Planner<'a> {
    pub store: &'a Store,
    pub config: &'a Config,
    pub export: &'a Export,
    /// How the connection's project identifies users.
    pub project_type: ProjectType,
    /// None for dry runs, which record nothing.
    pub run_id: Option<i64>,
    pub full: bool,
    pub progress: &'a Progress,
    pub cancel: &'a CancellationToken,
}

impl Planner<'_> {
    /// Plans every target in turn, pushing each list's report onto `lists` as soon as it is planned, so a
    /// failure part-way still reports the lists planned before it.
    pub async fn plan(&self, session: &mut PlanSession, lists: &mut Vec<ListReport>) -> Result<(), SyncError> {
        // One encoder for all lists: a field's type, once taken from its first value, holds for every list.
        let mut encoder = FieldEncoder::new(&self.export.fields, self.export.null_fields);
        for target in &self.export.targets {
            self.progress.set_phase(Phase::Reading, &target.list_name);
            let report = self.plan_target(target, session, &mut encoder).await?;
            lists.push(report);
        }
        let inferred = encoder.inferred_types();
        if self.run_id.is_some() && !inferred.is_empty() {
            self.store.remember_sent_types(self.export.id, &inferred).await?;
        }
        let planned: u64 = lists.iter().map(|l| l.to_subscribe() + l.to_remove).sum();
        self.progress.planned.store(planned, Ordering::Relaxed);
        Ok(())
    }

    /// Members refused at or before this Unix time are sent again.
    pub fn retry_until(&self) -> i64 {
        self.config.sync.retry_rejected_until(crate::store::now())
    }

    /// How a target's plan is computed: `full` re-sends every member; on a `fresh_list` (created again) every member
    /// is new.
    pub fn compute_options(&self, full: bool, fresh_list: bool) -> ComputeOptions {
        ComputeOptions {
            full,
            fresh_list,
            remove_leavers: self.export.on_leave == OnLeave::Remove,
            retry_rejected_until: self.retry_until(),
            // Only in a hybrid project do an email and a user id both name one user, so that a member keeping either
            // is the same member.
            match_by_email: self.project_type == ProjectType::Hybrid,
        }
    }

    async fn plan_target(
        &self,
        target: &Target,
        session: &mut PlanSession,
        encoder: &mut FieldEncoder,
    ) -> Result<ListReport, SyncError> {
        let (export, progress) = (self.export, self.progress);
        let segment = self.store.segment(&target.segment_name).await?;
        let spec: SourceSpec = segment.source.parse().map_err(|error| SyncError::Source {
            segment: segment.name.clone(),
            source_name: "its stored source".into(),
            error,
        })?;
        let spec = spec.with_password(resolve_source_password(&segment, &self.config.store.master_key_path())?);
        let source_err =
            |error| SyncError::Source { segment: segment.name.clone(), source_name: spec.to_string(), error };
        // The identity columns first (the email, then the user id, each when the export has it), then the fields.
        let mut columns: Vec<String> = export.email_field.iter().chain(&export.user_id_field).cloned().collect();
        let email_at = export.email_field.is_some().then_some(0);
        let user_id_at = export.user_id_field.is_some().then_some(usize::from(email_at.is_some()));
        let identity_columns = columns.len();
        columns.extend(export.fields.iter().map(|f| f.column.clone()));
        let project_type = self.project_type;
        let reach = segment.reach(&self.config.sources);
        let stream =
            source::read(&spec, segment.query.as_deref(), Columns::Only(columns), &reach).await.map_err(source_err)?;
        let max_issues = self.config.sync.max_recorded_issues;
        let (mut source_rows, mut invalid) = (0u64, 0u64);
        let mut examples_invalid = Vec::new();
        let mut issues: Vec<(Option<String>, String)> = Vec::new();
        let mut buf = String::new();
        let mut batches = stream.batches;
        // Two chunks take turns: while the store writes one into the staging table (on its own thread), the next
        // is read from the source and normalised here.
        let mut filling: Vec<StagedMember> = Vec::with_capacity(STAGE_CHUNK_ROWS + BATCH_SLACK);
        let mut writing: Vec<StagedMember> = Vec::with_capacity(STAGE_CHUNK_ROWS + BATCH_SLACK);
        loop {
            let write = async {
                if writing.is_empty() {
                    Ok(())
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
                    progress.rows_read.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    for row in batch {
                        let identity = identify(project_type, email_at.map(|i| &row[i]), user_id_at.map(|i| &row[i]));
                        let checked = match identity {
                            Ok(id) => match encoder.encode(&row[identity_columns..], &mut buf) {
                                Ok(hash) => Ok(StagedMember {
                                    fields_hash: member_hash(hash, id.paired_email.as_deref()),
                                    key: id.key,
                                    paired_email: id.paired_email,
                                    fields: buf.clone(),
                                }),
                                Err(reason) => Err((Some(id.key), reason)),
                            },
                            Err(refusal) => Err(refusal),
                        };
                        match checked {
                            Ok(member) => filling.push(member),
                            Err((member, reason)) => {
                                invalid += 1;
                                if examples_invalid.len() < EXAMPLES {
                                    examples_invalid
                                        .push(InvalidExample { member: member.clone(), reason: reason.clone() });
                                }
                                if self.run_id.is_some() && invalid <= max_issues {
                                    issues.push((member, reason));
                                }
                            }
                        }
                    }
                }
                // In key order, a chunk's inserts walk the staging tree forwards instead of jumping around it
                // (measured in the sqlite3 shell: a million inserts about 40% faster). The sort is stable, so of two
                // rows with one key the first is still staged first and kept.
                filling.sort_by(|a, b| a.key.cmp(&b.key));
                Ok::<bool, SyncError>(ended)
            };
            let (written, ended) = futures::join!(write, read);
            written?;
            // A shutdown while a large segment is read: nothing was sent yet, so stopping here loses nothing.
            if self.cancel.is_cancelled() {
                return Err(SyncError::Interrupted);
            }
            let ended = ended?;
            writing.clear();
            std::mem::swap(&mut writing, &mut filling);
            if ended {
                session.stage(target.id, &writing).await?;
                break;
            }
        }
        let valid = source_rows - invalid;
        let plan: TargetPlan = session.compute(target.id, &self.compute_options(self.full, false)).await?;
        // The staged members are the valid ones less duplicates.
        let staged_new = plan.members;
        if let Some(run_id) = self.run_id {
            let counts = RunTargetCounts { source_rows, invalid, duplicates: valid - staged_new, ..Default::default() };
            self.store.record_plan(run_id, target.id, &target.list_name, &plan, &counts).await?;
            self.store.record_issues(run_id, target.id, IssueKind::Invalid, &issues).await?;
        }
        tracing::info!(
            export = %export.name, list = %target.list_name, source_rows, invalid, duplicates = valid - staged_new,
            to_add = plan.to_add, to_update = plan.to_update, to_remove = plan.to_remove, unchanged = plan.unchanged,
            "Planned list."
        );
        Ok(ListReport {
            list_name: target.list_name.clone(),
            list_id: target.list_id,
            source_rows,
            members: plan.members,
            to_add: plan.to_add,
            to_update: plan.to_update,
            to_remove: plan.to_remove,
            unchanged: plan.unchanged,
            invalid,
            duplicates: valid - staged_new,
            added: 0,
            updated: 0,
            already_on_list: 0,
            removed: 0,
            rejected: 0,
            examples_add: vec![],
            examples_remove: vec![],
            examples_invalid,
        })
    }

    /// The guards, counted from the export's memory (no request): the refusal of a run that one of them stops, or
    /// None when the run may go on. The removal guard is checked first: a run both would stop names its removals.
    pub async fn check_guards(&self, lists: &[ListReport], opts: &RunOptions) -> Result<Option<SyncError>, SyncError> {
        if !opts.allow_mass_removal {
            if let Some(refusal) = self.check_mass_removal(lists).await? {
                return Ok(Some(refusal));
            }
        }
        if !opts.allow_mass_addition {
            return self.check_mass_addition(lists).await;
        }
        Ok(None)
    }

    /// The mass-removal guard: a run that would unsubscribe more than `sync.mass_removal_share` of a list.
    async fn check_mass_removal(&self, lists: &[ListReport]) -> Result<Option<SyncError>, SyncError> {
        let share = self.config.sync.mass_removal_share;
        let mut details = Vec::new();
        for (target, list) in self.export.targets.iter().zip(lists) {
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

    /// The mass-addition guard: a run that would put on a list more new members (not on it by the export's memory;
    /// re-sends of members there do not count) than `sync.mass_addition_share` times those the memory records
    /// there. A list still filling (no run completed with it, so an interrupted first fill resumes) and a list
    /// holding fewer than `sync.mass_addition_min_list_size` members are left alone.
    async fn check_mass_addition(&self, lists: &[ListReport]) -> Result<Option<SyncError>, SyncError> {
        let share = self.config.sync.mass_addition_share;
        let min_size = self.config.sync.mass_addition_min_list_size;
        let mut details = Vec::new();
        for (target, list) in self.export.targets.iter().zip(lists) {
            if list.to_add == 0 || target.filled_at.is_none() {
                continue;
            }
            let on_list = self.store.member_counts(target.id).await?.subscribed;
            if on_list < min_size.max(1) {
                continue;
            }
            if list.to_add as f64 > share * on_list as f64 {
                details.push(format!(
                    "list '{}' would gain {} new members on top of its {} ({:.0}%, more than \
                     sync.mass_addition_share {:.0}%)",
                    list.list_name,
                    list.to_add,
                    on_list,
                    list.to_add as f64 / on_list as f64 * 100.0,
                    share * 100.0
                ));
            }
        }
        Ok((!details.is_empty()).then_some(SyncError::MassAddition { details }))
    }
}
