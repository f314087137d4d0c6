//! `export add | list | show | remove | run`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::output::{opt_when, seconds};
use super::{exit, Ctx, Exit};
use crate::schedule::Schedule;
use crate::source::{self, SourceSpec};
use crate::store::{FieldMap, NewExport, OnLeave, RunStatus, StoreError};
use crate::sync::{check_field_name, Engine, Phase, Progress, RunOptions, RunReport, SyncError};

#[derive(Debug, Subcommand)]
pub enum ExportCmd {
    /// Add an export: segments sent to Iterable lists of the same names. Saving does not run it.
    Add(AddArgs),
    /// List exports with their schedule and last run.
    List,
    /// Show one export, its lists and what is recorded on them.
    Show { name: String },
    /// Remove an export and everything stored about its members (the Iterable lists are left as they are).
    Remove { name: String },
    /// Run an export now, in this process; exits 0 only when the run succeeded.
    Run(RunArgs),
    /// Ask the running daemon to run an export soon, by writing a trigger file into daemon.trigger_dir.
    Trigger {
        /// The export to run.
        #[arg(required_unless_present = "all")]
        name: Option<String>,
        /// Run every export.
        #[arg(long, conflicts_with = "name")]
        all: bool,
    },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    pub name: String,
    /// The connection to send through.
    #[arg(long)]
    pub connection: String,
    /// A segment to send (repeat for several); each goes to the Iterable list named like it.
    #[arg(long = "segment", value_name = "SEG", required = true)]
    pub segments: Vec<String>,
    /// The column holding the email address.
    #[arg(long, value_name = "COLUMN")]
    pub email_field: String,
    /// A column sent as an Iterable data field, optionally renamed: COLUMN or COLUMN=ITERABLE_FIELD (repeatable).
    #[arg(long = "field", value_name = "COLUMN[=ITERABLE_FIELD]")]
    pub fields: Vec<String>,
    /// What happens to members who leave a segment.
    #[arg(long, value_enum, default_value = "remove")]
    pub on_leave: OnLeave,
    /// `refresh` (the daemon's refresh schedule), `off` (on demand only) or a cron expression with seconds,
    /// e.g. "0 30 2 * * *".
    #[arg(long, default_value = "refresh")]
    pub schedule: String,
    /// Save without reading the segments to check that the columns exist.
    #[arg(long)]
    pub skip_check: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    pub name: String,
    /// Compute and print the plan (per list: to add, to remove, unchanged, invalid, with examples); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Re-send every current member (to repair a list edited by hand); members who left are still removed.
    #[arg(long)]
    pub full: bool,
    /// Let the run unsubscribe more than sync.mass_removal_share of a list.
    #[arg(long)]
    pub allow_mass_removal: bool,
}

pub async fn run(ctx: &Ctx, cmd: ExportCmd) -> anyhow::Result<u8> {
    match cmd {
        ExportCmd::Add(args) => add(ctx, args).await,
        ExportCmd::List => list(ctx).await,
        ExportCmd::Show { name } => show(ctx, &name).await,
        ExportCmd::Remove { name } => {
            ctx.store().await?.remove_export(&name).await?;
            if ctx.out.json {
                ctx.out.json(&json!({ "removed": name }));
            } else {
                println!("Removed export '{name}' and what was stored about its members. Its Iterable lists were not changed.");
            }
            Ok(exit::OK)
        }
        ExportCmd::Run(args) => run_now(ctx, args).await,
        ExportCmd::Trigger { name, all } => {
            let target = match (&name, all) {
                (_, true) => crate::daemon::TRIGGER_ALL.to_string(),
                (Some(n), _) => {
                    ctx.store().await?.export(n).await?;
                    n.clone()
                }
                _ => unreachable!("clap requires a name or --all"),
            };
            let path = crate::daemon::write_trigger(&ctx.config.daemon.trigger_dir, &target).map_err(|e| {
                Exit::error(
                    exit::FAILED,
                    format!(
                        "cannot write the trigger file in {}: {e}. Check daemon.trigger_dir and its permissions.",
                        ctx.config.daemon.trigger_dir.display()
                    ),
                )
            })?;
            if ctx.out.json {
                ctx.out.json(&json!({ "trigger_file": path }));
            } else {
                println!(
                    "Wrote {}; the daemon runs {} within a few seconds.",
                    path.display(),
                    if all { "every export".to_string() } else { format!("export '{target}'") }
                );
            }
            Ok(exit::OK)
        }
    }
}

fn parse_field(text: &str) -> Result<FieldMap, String> {
    let (column, field) = match text.split_once('=') {
        Some((c, f)) => (c.trim(), f.trim()),
        None => (text.trim(), text.trim()),
    };
    if column.is_empty() {
        return Err(format!("--field '{text}' names no column; write COLUMN or COLUMN=ITERABLE_FIELD"));
    }
    check_field_name(field).map_err(|e| format!("--field '{text}': {e}"))?;
    Ok(FieldMap { column: column.into(), iterable_field: field.into() })
}

async fn add(ctx: &Ctx, a: AddArgs) -> anyhow::Result<u8> {
    // Before anything is read, and before the name is quoted in any message below.
    crate::store::names::check_export_name(&a.name).map_err(|problem| StoreError::InvalidName {
        what: "export",
        name: a.name.clone(),
        problem,
    })?;
    let fail = |m: String| Exit::error(exit::FAILED, format!("export '{}' not saved: {m}", a.name));
    let fields = a.fields.iter().map(|f| parse_field(f)).collect::<Result<Vec<_>, _>>().map_err(fail)?;
    let mut names: Vec<&str> = fields.iter().map(|f| f.iterable_field.as_str()).collect();
    names.sort();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(fail(format!("two --field options send to the Iterable field '{}'", w[0])));
    }
    Schedule::parse(&a.schedule).map_err(|e| fail(format!("--schedule {e}")))?;
    let store = ctx.store().await?;
    let conn = store.connection(&a.connection).await?;
    let mut segment_ids = Vec::new();
    for name in &a.segments {
        let seg = store.segment(name).await?;
        if segment_ids.contains(&seg.id) {
            return Err(fail(format!("segment '{name}' is given twice")));
        }
        if !a.skip_check {
            let spec: SourceSpec = seg.source.parse()?;
            let (columns, _) = source::preview(&spec, seg.query.as_deref(), 1).await.map_err(|e| {
                fail(format!("segment '{name}' could not be read: {e} (add --skip-check to save anyway)"))
            })?;
            let wanted = std::iter::once(&a.email_field).chain(fields.iter().map(|f| &f.column));
            for col in wanted {
                if !columns.contains(col) {
                    return Err(fail(format!(
                        "segment '{name}' has no column '{col}'; its columns are: {}",
                        columns.join(", ")
                    )));
                }
            }
        }
        segment_ids.push(seg.id);
    }
    let export = store
        .add_export(&NewExport {
            name: a.name.clone(),
            connection_id: conn.id,
            email_field: a.email_field.clone(),
            on_leave: a.on_leave,
            schedule: a.schedule.trim().to_string(),
            segment_ids,
            fields,
        })
        .await?;
    if ctx.out.json {
        ctx.out.json(&export);
    } else {
        println!(
            "Added export '{}': {} segment(s) to connection '{}'. Run it with `segment-exporter export run {}`.",
            export.name,
            export.targets.len(),
            conn.name,
            export.name
        );
    }
    Ok(exit::OK)
}

async fn list(ctx: &Ctx) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let mut rows = Vec::new();
    let mut values = Vec::new();
    for e in store.exports().await? {
        let last = store.runs(Some(&e.name), 1).await?.into_iter().next();
        let segments: Vec<&str> = e.targets.iter().map(|t| t.segment_name.as_str()).collect();
        let daemon = &ctx.config.daemon;
        let tz = daemon.tz().unwrap_or(chrono_tz::UTC);
        let next = Schedule::parse(&e.schedule)
            .ok()
            .filter(|_| e.enabled)
            .and_then(|s| s.next_after(Some(&daemon.refresh_schedule), &chrono::Utc::now().with_timezone(&tz)))
            .map(|t| super::output::when(&t));
        let next_text = match (e.schedule.as_str(), &next) {
            ("off", _) => "on demand".to_string(),
            (_, Some(t)) => t.clone(),
            _ => "-".into(),
        };
        rows.push(vec![
            e.name.clone(),
            e.connection_name.clone().unwrap_or_else(|| "(detached)".into()),
            segments.join(", "),
            e.schedule.clone(),
            next_text,
            last.as_ref().map_or("never run".into(), |r| format!("#{} {}", r.id, r.status)),
            opt_when(&last.as_ref().map(|r| r.started_at)),
        ]);
        values.push(json!({
            "name": e.name, "connection": e.connection_name, "segments": segments, "schedule": e.schedule,
            "enabled": e.enabled, "next_run": next, "last_run": last.as_ref().map(|r| json!({"id": r.id, "status": r.status, "started_at": r.started_at})),
        }));
    }
    if ctx.out.json {
        ctx.out.json(&values);
    } else if rows.is_empty() {
        println!("No exports yet. Add one with `segment-exporter export add NAME --connection CONN --segment SEG --email-field COLUMN`.");
    } else {
        ctx.out.table(&["name", "connection", "segments", "schedule", "next run", "last run", "started"], rows);
    }
    Ok(exit::OK)
}

async fn show(ctx: &Ctx, name: &str) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let e = store.export(name).await?;
    let mut lists = Vec::new();
    for t in &e.targets {
        let counts = store.member_counts(t.id).await?;
        lists.push((t, counts));
    }
    let last_success = store.last_success(e.id).await?;
    if ctx.out.json {
        let mut v = serde_json::to_value(&e)?;
        v["lists"] = json!(lists
            .iter()
            .map(|(t, c)| json!({"list_name": t.list_name, "list_id": t.list_id, "segment": t.segment_name, "members": c.subscribed, "rejected": c.rejected}))
            .collect::<Vec<_>>());
        v["last_success"] = json!(last_success);
        ctx.out.json(&v);
    } else {
        let fields: Vec<String> = e.fields.iter().map(|f| format!("{}={}", f.column, f.iterable_field)).collect();
        let rows = vec![
            vec!["name".into(), e.name.clone()],
            vec!["connection".into(), e.connection_name.clone().unwrap_or_else(|| "(detached: disabled)".into())],
            vec!["email column".into(), e.email_field.clone()],
            vec!["fields".into(), if fields.is_empty() { "-".into() } else { fields.join(", ") }],
            vec!["on leave".into(), e.on_leave.as_str().into()],
            vec!["schedule".into(), e.schedule.clone()],
            vec!["last success".into(), opt_when(&last_success)],
        ];
        ctx.out.table(&["", ""], rows);
        let rows = lists
            .iter()
            .map(|(t, c)| {
                vec![
                    t.list_name.clone(),
                    t.list_id.map_or("(not created yet)".into(), |id| id.to_string()),
                    c.subscribed.to_string(),
                    c.rejected.to_string(),
                ]
            })
            .collect();
        ctx.out.table(&["list (= segment)", "Iterable list id", "members sent", "rejected"], rows);
    }
    Ok(exit::OK)
}

/// Shows progress while a run goes: a bar on a terminal, a log line every few seconds otherwise.
fn spawn_progress_display(
    progress: Arc<Progress>,
    json: bool,
    finished: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let tty = std::io::stderr().is_terminal() && !json;
    tokio::spawn(async move {
        let bar_style = ProgressStyle::with_template("{spinner} {prefix:>10} [{bar:30}] {pos}/{len} members {msg}")
            .expect("static template")
            .progress_chars("=> ");
        let bar = tty.then(|| ProgressBar::new(0));
        let mut tick = tokio::time::interval(if tty { Duration::from_millis(150) } else { Duration::from_secs(5) });
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = finished.cancelled() => break,
            }
            let (phase, list) = progress.phase();
            if phase == Phase::Done {
                break;
            }
            let (done, planned, rate, left) = progress.snapshot();
            let rows = progress.rows_read.load(std::sync::atomic::Ordering::Relaxed);
            match &bar {
                Some(bar) => {
                    if planned == 0 {
                        bar.set_style(
                            ProgressStyle::with_template("{spinner} {prefix:>10} {msg}").expect("static template"),
                        );
                    } else {
                        bar.set_style(bar_style.clone());
                    }
                    bar.set_length(planned.max(done));
                    bar.set_position(done);
                    bar.set_prefix(format!("{phase:?}").to_lowercase());
                    let eta = left.map(|s| format!(", ~{} left", seconds(s))).unwrap_or_default();
                    bar.set_message(if phase == Phase::Reading {
                        format!("({rows} rows read from '{list}')")
                    } else {
                        format!("({rate:.0}/s{eta}) {list}")
                    });
                    bar.tick();
                }
                None => {
                    tracing::info!(phase = ?phase, list = %list, rows_read = rows, done, planned, per_second = rate as u64,
                        seconds_left = left.map(|s| s as u64), "Run progress.");
                }
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    })
}

/// First Ctrl-C or SIGTERM: finish the batches in flight, record them, stop. Second: exit at once.
fn spawn_signal_handler(cancel: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        wait_for_stop_signal(&mut term).await;
        tracing::warn!("Stopping: finishing the batches in flight (signal again to exit at once).");
        cancel.cancel();
        wait_for_stop_signal(&mut term).await;
        tracing::warn!("Exiting at once; acknowledged batches are recorded and the next run resumes.");
        std::process::exit(130);
    });
}

async fn wait_for_stop_signal(term: &mut Option<tokio::signal::unix::Signal>) {
    match term.as_mut() {
        Some(t) => tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = t.recv() => {} },
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run_now(ctx: &Ctx, a: RunArgs) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let engine = Engine::new(store, ctx.config.clone());
    let progress = Arc::new(Progress::default());
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    let finished = CancellationToken::new();
    let display = spawn_progress_display(progress.clone(), ctx.out.json, finished.clone());
    let opts = RunOptions {
        trigger: "manual".into(),
        dry_run: a.dry_run,
        full: a.full,
        allow_mass_removal: a.allow_mass_removal,
        note: None,
    };
    let result = engine.run_export(&a.name, &opts, progress.clone(), cancel).await;
    finished.cancel();
    let _ = display.await;
    let report = match result {
        Ok(r) => r,
        Err(e @ SyncError::AlreadyRunning { .. }) => return Err(Exit::error(exit::BUSY, e.to_string())),
        Err(e) => return Err(e.into()),
    };
    print_report(ctx, &report);
    Ok(if report.succeeded() { exit::OK } else { exit::FAILED })
}

fn print_report(ctx: &Ctx, r: &RunReport) {
    if ctx.out.json {
        ctx.out.json(r);
        if let Some(e) = &r.error {
            eprintln!("error: {e}");
        }
        return;
    }
    if r.dry_run {
        println!("Dry run of export '{}': nothing was changed.", r.export);
        let rows = r
            .lists
            .iter()
            .map(|l| {
                vec![
                    l.list_name.clone(),
                    l.list_id.map_or("(to find or create)".into(), |id| id.to_string()),
                    l.to_add.to_string(),
                    l.to_remove.to_string(),
                    l.unchanged.to_string(),
                    l.invalid.to_string(),
                    l.duplicates.to_string(),
                ]
            })
            .collect();
        ctx.out.table(&["list", "list id", "to add", "to remove", "unchanged", "invalid", "duplicates"], rows);
        for l in &r.lists {
            if !l.examples_add.is_empty() {
                println!("{}: would add e.g. {}", l.list_name, l.examples_add.join(", "));
            }
            if !l.examples_remove.is_empty() {
                println!("{}: would remove e.g. {}", l.list_name, l.examples_remove.join(", "));
            }
            for (member, reason) in &l.examples_invalid {
                println!("{}: invalid {member:?}: {reason}", l.list_name);
            }
        }
    } else {
        let id = r.run_id.map(|i| format!("#{i} ")).unwrap_or_default();
        println!("Run {id}of export '{}' {} in {}.", r.export, r.status, seconds(r.seconds));
        if !r.resumed_runs.is_empty() {
            println!("It completed the work of interrupted run(s) {:?}.", r.resumed_runs);
        }
        let rows = r
            .lists
            .iter()
            .map(|l| {
                vec![
                    l.list_name.clone(),
                    l.list_id.map_or("-".into(), |id| id.to_string()),
                    l.members.to_string(),
                    format!("{}/{}", l.added, l.to_add),
                    format!("{}/{}", l.removed, l.to_remove),
                    l.unchanged.to_string(),
                    l.invalid.to_string(),
                    l.rejected.to_string(),
                ]
            })
            .collect();
        ctx.out.table(&["list", "list id", "members", "added", "removed", "unchanged", "invalid", "rejected"], rows);
        println!("{} request(s) to Iterable, {} answered 429.", r.requests, r.rate_limited);
        if r.lists.iter().any(|l| l.invalid + l.rejected > 0) {
            if let Some(id) = r.run_id {
                println!("See invalid and rejected members with `segment-exporter runs show {id} --rejected`.");
            }
        }
    }
    if let Some(e) = &r.error {
        eprintln!("error: {e}");
    }
    if r.status == RunStatus::Refused && !r.dry_run {
        eprintln!("Nothing was removed from any list.");
    }
}
