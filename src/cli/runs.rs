//! `runs [--export NAME] [--limit N]` and `runs show RUN_ID [--rejected]`.

use clap::{Args, Subcommand};
use serde_json::json;

use super::output::{opt_when, seconds, when};
use super::{exit, Ctx};
use crate::store::{Run, RunFilter, RunKind, RunStatus};
use crate::sync::RunGuard;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RunsArgs {
    #[command(subcommand)]
    pub command: Option<RunsCmd>,
    /// Only runs of this export.
    #[arg(long)]
    pub export: Option<String>,
    /// Also show runs of removed exports (marked removed), e.g. the history of an export whose name is now used
    /// by another.
    #[arg(long)]
    pub include_removed: bool,
    /// How many runs to show, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

#[derive(Debug, Subcommand)]
pub enum RunsCmd {
    /// Show one run per list.
    Show {
        run_id: i64,
        /// List the invalid and rejected members with their reasons.
        #[arg(long)]
        rejected: bool,
        /// How many invalid or rejected members to list.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
}

/// Reads a run again when its row said running but nobody holds its export: it either ended between the two looks
/// (the row now says how) or its process died, and it is shown as interrupted (the next run of its export resumes
/// it).
async fn settle(ctx: &Ctx, store: &crate::store::Store, run: &mut Run) -> anyhow::Result<()> {
    if run.status == RunStatus::Running && !RunGuard::is_held(store, &ctx.config, run.export_id).await {
        *run = store.run(run.id).await?;
        if run.status == RunStatus::Running && !RunGuard::is_held(store, &ctx.config, run.export_id).await {
            run.status = RunStatus::Interrupted;
        }
    }
    Ok(())
}

/// The export's name, marked when the export was removed (a new export may have its name).
fn export_label(run: &Run) -> String {
    if run.export_removed {
        format!("{} (removed)", run.export_name)
    } else {
        run.export_name.clone()
    }
}

fn progress_text(run: &Run) -> (String, Option<f64>, Option<f64>) {
    let (planned, done) = run.progress();
    let elapsed =
        (run.finished_at.unwrap_or_else(chrono::Utc::now) - run.started_at).num_milliseconds() as f64 / 1000.0;
    let rate = (elapsed > 0.0).then(|| done as f64 / elapsed);
    let left = rate.filter(|r| *r > 0.0).map(|r| planned.saturating_sub(done) as f64 / r);
    (format!("{done}/{planned}"), rate, left)
}

pub async fn run(ctx: &Ctx, args: RunsArgs) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    match args.command {
        None => {
            if let Some(name) = &args.export {
                if args.include_removed {
                    store.export_including_removed(name).await?;
                } else {
                    store.export(name).await?;
                }
            }
            let filter = RunFilter {
                export: args.export.as_deref(),
                include_removed: args.include_removed,
                ..RunFilter::default()
            };
            let mut runs = store.runs_matching(filter, args.limit).await?;
            for run in &mut runs {
                settle(ctx, &store, run).await?;
            }
            if ctx.out.json {
                let v: Vec<_> = runs
                    .iter()
                    .map(|r| {
                        let (_, rate, left) = progress_text(r);
                        let (planned, done) = r.progress();
                        let mut v = serde_json::to_value(r).expect("serialisable");
                        v["status"] = json!(r.status);
                        v["progress"] =
                            json!({ "planned": planned, "done": done, "per_second": rate, "seconds_left": left });
                        v
                    })
                    .collect();
                ctx.out.json(&v);
            } else if runs.is_empty() {
                println!("No runs yet.");
            } else {
                let rows = runs
                    .iter()
                    .map(|r| {
                        let status = r.status;
                        let (done, rate, left) = progress_text(r);
                        let sum = |f: fn(&crate::store::RunTargetCounts) -> u64| {
                            r.targets.iter().map(|t| f(&t.counts)).sum::<u64>().to_string()
                        };
                        let detail = if status == RunStatus::Running {
                            format!(
                                "{done} at {:.0}/s{}",
                                rate.unwrap_or(0.0),
                                left.map(|s| format!(", ~{} left", seconds(s))).unwrap_or_default()
                            )
                        } else {
                            r.finished_at
                                .map_or("-".into(), |f| seconds((f - r.started_at).num_milliseconds() as f64 / 1000.0))
                        };
                        vec![
                            r.id.to_string(),
                            export_label(r),
                            match r.kind {
                                RunKind::Run => r.trigger.clone(),
                                kind => format!("{} ({})", r.trigger, kind.label()),
                            },
                            status.to_string(),
                            when(&r.started_at),
                            detail,
                            sum(|c| c.added),
                            // Members on the list already, whoever put them there (`runs show` tells them apart).
                            sum(|c| c.updated + c.already_on_list),
                            sum(|c| c.removed),
                            sum(|c| c.invalid),
                            sum(|c| c.rejected),
                        ]
                    })
                    .collect();
                ctx.out.table(
                    &[
                        "run",
                        "export",
                        "trigger",
                        "status",
                        "started",
                        "took / progress",
                        "added",
                        "updated",
                        "removed",
                        "invalid",
                        "rejected",
                    ],
                    rows,
                );
            }
        }
        Some(RunsCmd::Show { run_id, rejected, limit }) => {
            let mut run = store.run(run_id).await?;
            settle(ctx, &store, &mut run).await?;
            let issues = if rejected { store.run_issues(run_id, limit).await? } else { vec![] };
            let warnings = store.run_warnings(run_id).await?;
            let verified = store.run_verify(run_id).await?;
            let status = run.status;
            if ctx.out.json {
                let mut v = serde_json::to_value(&run)?;
                v["status"] = json!(status);
                v["warnings"] = json!(warnings);
                if run.kind != RunKind::Run {
                    v["verify"] = json!(verified);
                }
                if rejected {
                    v["issues"] = json!(issues);
                }
                ctx.out.json(&v);
            } else {
                let rows = vec![
                    vec!["run".into(), format!("#{} of export {}", run.id, export_label(&run))],
                    vec!["kind".into(), run.kind.label().into()],
                    vec!["trigger".into(), run.trigger.clone()],
                    vec!["status".into(), status.to_string()],
                    vec!["started".into(), when(&run.started_at)],
                    vec!["finished".into(), opt_when(&run.finished_at)],
                    vec!["full re-send".into(), if run.full_resync { "yes" } else { "no" }.into()],
                    vec!["note".into(), run.note.clone().unwrap_or_else(|| "-".into())],
                    vec!["error".into(), run.error.clone().unwrap_or_else(|| "-".into())],
                ];
                let mut rows = rows;
                rows.extend(warnings.iter().map(|w| vec!["warning".into(), w.clone()]));
                ctx.out.table(&["", ""], rows);
                // A verify: per list what it found.
                for l in &verified {
                    let list = match l.list_id {
                        Some(id) => format!("{} (id {id})", l.list_name),
                        None => l.list_name.clone(),
                    };
                    let mut rows = vec![vec!["list".into(), list], vec!["verify".into(), drift_line(l)]];
                    if let Some(note) = &l.note {
                        rows.push(vec!["note".into(), note.clone()]);
                    }
                    ctx.out.table(&["", ""], rows);
                }
                // One block per list: what it planned, what it did, what it did not send.
                for t in &run.targets {
                    let c = &t.counts;
                    let list = match t.list_id {
                        Some(id) => format!("{} (id {id})", t.list_name),
                        None => t.list_name.clone(),
                    };
                    let rows = vec![
                        vec!["list".into(), list],
                        vec!["rows read".into(), c.source_rows.to_string()],
                        vec![
                            "planned".into(),
                            format!(
                                "{} to add, {} to update, {} to remove; {} unchanged",
                                c.planned_add, c.planned_update, c.planned_remove, c.unchanged
                            ),
                        ],
                        vec![
                            "done".into(),
                            format!(
                                "{} added, {} updated, {} already there, {} removed",
                                c.added, c.updated, c.already_on_list, c.removed
                            ),
                        ],
                        vec![
                            "not sent".into(),
                            format!(
                                "{} invalid, {} duplicates, {} rejected by Iterable",
                                c.invalid, c.duplicates, c.rejected
                            ),
                        ],
                    ];
                    ctx.out.table(&["", ""], rows);
                }
                if rejected {
                    if issues.is_empty() {
                        println!("No invalid or rejected members.");
                    } else {
                        let rows = issues
                            .iter()
                            .map(|i| {
                                vec![
                                    i.list_name.clone(),
                                    format!("{:?}", i.kind).to_lowercase(),
                                    match i.member.as_deref() {
                                        None => "(null)".into(),
                                        Some("") => "(empty)".into(),
                                        Some(m) => m.into(),
                                    },
                                    i.reason.clone(),
                                ]
                            })
                            .collect();
                        ctx.out.table(&["list", "kind", "member", "reason"], rows);
                    }
                }
            }
        }
    }
    Ok(exit::OK)
}

/// A verify of one list in a line: its verdict and the count of each category.
pub(crate) fn drift_line(l: &crate::store::ListVerify) -> String {
    let verdict = match l.verdict {
        crate::store::Verdict::Clean => "clean",
        crate::store::Verdict::Drifted => "drifted",
        crate::store::Verdict::NoVerdict => "no verdict",
    };
    format!(
        "{verdict}: {} missing, {} not yet sent, {} lingering, {} others', {} settling ({} read of {})",
        l.missing.count,
        l.not_yet_sent.count,
        l.lingering.count,
        l.others.count,
        l.settling.count,
        l.read_members,
        l.list_size.map_or("?".into(), |n| n.to_string())
    )
}
