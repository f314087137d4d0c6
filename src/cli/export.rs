//! `export add | edit | list | show | remove | run | verify | trigger`.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::output::{opt_when, seconds};
use super::{exit, Ctx, Exit};
use crate::access::ops::{self, Caller, ExportRequest, OpError};
use crate::schedule::Schedule;
use crate::store::{DriftKind, NullFields, OnLeave, RunStatus, Verdict};
use crate::sync::{Engine, Phase, Progress, RunOptions, RunReport, SyncError, VerifyOptions, VerifyReport};

#[derive(Debug, Subcommand)]
pub enum ExportCmd {
    /// Add an export: segments sent to Iterable lists of the same names. Saving does not run it.
    Add(AddArgs),
    /// Change an export, with the same checks as `add`. It keeps what it put on its remaining lists, so the next
    /// run sends only the difference.
    Edit(EditArgs),
    /// List exports with their schedule and last run.
    List {
        /// Also list removed exports (marked removed).
        #[arg(long)]
        include_removed: bool,
    },
    /// Show one export, its lists and what is recorded on them.
    Show {
        name: String,
        /// Show the export of this name removed last when none is left.
        #[arg(long)]
        include_removed: bool,
    },
    /// Remove an export: it forgets what it put on its lists (left as they are in Iterable unless --empty-lists);
    /// its run history stays readable (`runs --include-removed`) and its name can be used again.
    Remove {
        name: String,
        /// First unsubscribe from each of its lists the members this export put there (members added otherwise
        /// stay). The mass-removal guard does not apply: you asked for it.
        #[arg(long)]
        empty_lists: bool,
        /// If the export is running (in any process), stop that run (recorded `cancelled`) and then remove it.
        /// Without it, a running export is not removed (exit 75).
        #[arg(long)]
        cancel_run: bool,
    },
    /// Run an export now, in this process; exits 0 only when the run succeeded.
    Run(RunArgs),
    /// Read each list of an export back from Iterable and compare it with the segment and what the export sent:
    /// members missing, not yet sent, lingering, others' and settling. Exits 0 when nothing is missing or
    /// lingering, 3 when a list drifted (and was not repaired), 1 when a list could not be read whole (no verdict),
    /// 75 when the export is running.
    Verify(VerifyArgs),
    /// List, add or remove the export users of an export: the accounts that may see, edit, run and remove it.
    Users {
        name: String,
        /// Make this account an export user (repeatable).
        #[arg(long, value_name = "USER")]
        add: Vec<String>,
        /// Stop this account being an export user (repeatable).
        #[arg(long, value_name = "USER")]
        remove: Vec<String>,
    },
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
    /// The column holding the email address. Required for email-based projects; in a hybrid project it identifies
    /// the rows without a user id; in a userID-based project it is optional and travels beside the user id as the
    /// user's address.
    #[arg(long, value_name = "COLUMN")]
    pub email_field: Option<String>,
    /// The column holding the user id: required for userID-based projects; in a hybrid project a row whose user id
    /// is not NULL is identified by it (sent with preferUserId), the others by email. Refused for email-based
    /// projects. User ids are checked as Iterable checks them (at most 52 characters, printable ASCII, no trailing
    /// space); others count as invalid.
    #[arg(long, value_name = "COLUMN")]
    pub user_id_field: Option<String>,
    /// A column sent as an Iterable data field, optionally renamed and typed: COLUMN, COLUMN=ITERABLE_FIELD, and
    /// either with :TYPE (string, long, double, boolean, date; dates are sent as `yyyy-MM-dd HH:mm:ss +00:00`).
    /// Without a type, a column is sent as the JSON type of its first value, and every later value as that type
    /// (repeatable).
    #[arg(long = "field", value_name = "COLUMN[=ITERABLE_FIELD][:TYPE]")]
    pub fields: Vec<String>,
    /// What a NULL value does: `clear` sends null (Iterable clears the field), `skip` leaves the field as it is.
    #[arg(long, value_enum, default_value = "clear")]
    pub null_fields: NullFields,
    /// Do not create users the project does not know yet (Iterable's `updateExistingUsersOnly`; honoured in hybrid
    /// and userID-based projects only). Such members count as rejected (notFoundEmails or notFoundUserIds) and are
    /// tried again later.
    #[arg(long)]
    pub existing_users_only: bool,
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
    /// Tell a notification channel about this export: CHANNEL, or CHANNEL:EVENT,EVENT with events failed, guard,
    /// recovered, rejected, key, list, drift (default failed,guard,recovered,key). Repeatable; see `notify list`.
    #[arg(long, value_name = "CHANNEL[:EVENTS]")]
    pub notify: Vec<String>,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    pub name: String,
    /// Send another segment too (repeatable). An existing list of its name is adopted, as on a first run.
    #[arg(long = "add-segment", value_name = "SEG")]
    pub add_segments: Vec<String>,
    /// Stop sending a segment (repeatable). Its list stays in Iterable as it is and the export forgets it, unless
    /// --empty-removed-lists.
    #[arg(long = "remove-segment", value_name = "SEG")]
    pub remove_segments: Vec<String>,
    /// First unsubscribe from each removed segment's list the members this export put there (members added
    /// otherwise stay). The mass-removal guard does not apply: you asked for it.
    #[arg(long, requires = "remove_segments")]
    pub empty_removed_lists: bool,
    /// Send another column as an Iterable data field: COLUMN or COLUMN=ITERABLE_FIELD, either with :TYPE as for
    /// `add --field` (repeatable). The next run sends every member again, with the field.
    #[arg(long = "add-field", value_name = "COLUMN[=ITERABLE_FIELD][:TYPE]")]
    pub add_fields: Vec<String>,
    /// Stop sending a column (repeatable); Iterable keeps the values it has.
    #[arg(long = "remove-field", value_name = "COLUMN")]
    pub remove_fields: Vec<String>,
    /// The column holding the email address. Once the export has put members on its lists, refused where the email
    /// identifies members (email-based and hybrid projects): remove the export and add it again instead.
    #[arg(long, value_name = "COLUMN")]
    pub email_field: Option<String>,
    /// The column holding the user id. Once the export has put members on its lists, refused where that changes
    /// who members are (a hybrid export without one may get one: its members keep their emails).
    #[arg(long, value_name = "COLUMN")]
    pub user_id_field: Option<String>,
    /// Do not create users the project does not know yet (as for `add`).
    #[arg(long, conflicts_with = "no_existing_users_only")]
    pub existing_users_only: bool,
    /// Create users the project does not know yet again (the default).
    #[arg(long)]
    pub no_existing_users_only: bool,
    /// `refresh`, `off` or a cron expression with seconds, as for `add`.
    #[arg(long)]
    pub schedule: Option<String>,
    /// What happens to members who leave a segment.
    #[arg(long, value_enum)]
    pub on_leave: Option<OnLeave>,
    /// What a NULL value does: `clear` sends null (Iterable clears the field), `skip` leaves the field as it is.
    #[arg(long, value_enum)]
    pub null_fields: Option<NullFields>,
    /// Save without reading the segments to check that the columns exist.
    #[arg(long)]
    pub skip_check: bool,
    /// If the export is running (in any process), stop that run (recorded `cancelled`) and then edit it. Without
    /// it, a running export is not changed (exit 75).
    #[arg(long)]
    pub cancel_run: bool,
    /// Tell a notification channel about this export (CHANNEL or CHANNEL:EVENT,EVENT, as for `add`); a channel told
    /// already gets these events instead. Repeatable.
    #[arg(long, value_name = "CHANNEL[:EVENTS]")]
    pub notify: Vec<String>,
    /// Stop telling a channel about this export (repeatable).
    #[arg(long, value_name = "CHANNEL")]
    pub no_notify: Vec<String>,
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
    /// Let the run put more new members on a list than sync.mass_addition_share times those on it.
    #[arg(long)]
    pub allow_mass_addition: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    pub name: String,
    /// Send the missing members again and correct the export's memory where Iterable disagreed with it; also sends
    /// what the next run would send. Recorded as a run ("verify and repair").
    #[arg(long)]
    pub repair: bool,
    /// With --repair: also unsubscribe the lingering members (removed by this export, on the list again), through
    /// the mass-removal guard.
    #[arg(long, requires = "repair")]
    pub remove_lingering: bool,
    /// With --repair: let the repair unsubscribe more than sync.mass_removal_share of a list.
    #[arg(long, requires = "repair")]
    pub allow_mass_removal: bool,
    /// With --repair: let the repair put more new members on a list than sync.mass_addition_share times those on it
    /// (members missing from a list emptied by hand count as new once the memory is corrected).
    #[arg(long, requires = "repair")]
    pub allow_mass_addition: bool,
}

pub async fn run(ctx: &Ctx, cmd: ExportCmd) -> anyhow::Result<u8> {
    match cmd {
        ExportCmd::Add(args) => add(ctx, args).await,
        ExportCmd::Edit(args) => edit(ctx, args).await,
        ExportCmd::List { include_removed } => list(ctx, include_removed).await,
        ExportCmd::Show { name, include_removed } => show(ctx, &name, include_removed).await,
        ExportCmd::Remove { name, empty_lists, cancel_run } => remove(ctx, &name, empty_lists, cancel_run).await,
        ExportCmd::Run(args) => run_now(ctx, args).await,
        ExportCmd::Verify(args) => verify_now(ctx, args).await,
        ExportCmd::Users { name, add, remove } => super::user::export_users(ctx, &name, &add, &remove).await,
        ExportCmd::Trigger { name, all } => {
            // On a store shared by daemons on several hosts, a trigger is a run request in the store, which any of
            // them takes; a trigger file would reach only the daemons of this host.
            let target = match (&name, all) {
                (_, true) => crate::daemon::TRIGGER_ALL.to_string(),
                (Some(n), _) => {
                    ctx.store().await?.export(n).await?;
                    n.clone()
                }
                _ => unreachable!("clap requires a name or --all"),
            };
            let store = ctx.store().await?;
            if store.kind() == crate::store::Kind::Postgres {
                let done = trigger_in_store(ctx, &store, name.as_deref()).await?;
                ctx.audit(&store, "export.trigger", &target, None).await?;
                return Ok(done);
            }
            let path = crate::daemon::write_trigger(&ctx.config.daemon.trigger_dir, &target).map_err(|e| {
                Exit::error(
                    exit::FAILED,
                    format!(
                        "cannot write the trigger file in {}: {e}. Check daemon.trigger_dir and its permissions.",
                        ctx.config.daemon.trigger_dir.display()
                    ),
                )
            })?;
            // Recorded once the trigger is written: the audit holds what was done.
            ctx.audit(&store, "export.trigger", &target, None).await?;
            let daemon = daemon_answers(&ctx.config).await;
            if ctx.out.json {
                ctx.out.json(&json!({ "trigger_file": path, "daemon_running": daemon }));
            } else {
                let what = if all { "every export".to_string() } else { format!("export '{target}'") };
                let poll = humantime::format_duration(ctx.config.daemon.trigger_poll_interval);
                match daemon {
                    Some(true) => println!(
                        "Wrote {}; the running daemon takes it within about 25 ms (at most {poll}) and runs {what}.",
                        path.display()
                    ),
                    Some(false) => println!(
                        "Wrote {}, but no daemon answers on daemon.status_listen now: the file waits there, and {what} \
                         runs when a daemon watching {} starts.",
                        path.display(),
                        ctx.config.daemon.trigger_dir.display()
                    ),
                    None => println!(
                        "Wrote {}; a running daemon takes it within about 25 ms (at most {poll}) and runs {what}. \
                         (daemon.status_listen is off, so whether a daemon runs cannot be checked.)",
                        path.display()
                    ),
                }
            }
            Ok(exit::OK)
        }
    }
}

/// Whether a daemon answers on the configured status listener; None when the listener is off.
async fn daemon_answers(config: &crate::config::Config) -> Option<bool> {
    let addr = config.daemon.status_addr()?.replace("0.0.0.0", "127.0.0.1").replace("[::]", "[::1]");
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
    let answer = client.get(format!("http://{addr}/healthz")).send().await;
    Some(answer.is_ok_and(|r| r.status().is_success()))
}

async fn add(ctx: &Ctx, a: AddArgs) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let request = ExportRequest {
        name: a.name.clone(),
        connection: a.connection.clone(),
        segments: a.segments.clone(),
        email_field: a.email_field.clone(),
        user_id_field: a.user_id_field.clone(),
        fields: a.fields.clone(),
        on_leave: a.on_leave,
        schedule: a.schedule.clone(),
        skip_check: a.skip_check,
        null_fields: a.null_fields,
        existing_users_only: a.existing_users_only,
        notify: a.notify.clone(),
    };
    let actor = ctx.actor();
    let export = ops::create_export(&store, &ctx.config, &Caller { actor: &actor, origin: "cli" }, &request)
        .await
        .map_err(|e| match e {
            OpError::Store(e) => anyhow::Error::from(e),
            e => Exit::invalid(e.to_string()),
        })?;
    if ctx.out.json {
        ctx.out.json(&export);
    } else {
        println!(
            "Added export '{}': {} segment(s) to connection '{}'. Run it with `segment-exporter export run {}`.",
            export.name,
            export.targets.len(),
            a.connection,
            export.name
        );
    }
    Ok(exit::OK)
}

async fn edit(ctx: &Ctx, a: EditArgs) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let actor = ctx.actor();
    let change = ops::ExportEdit {
        add_segments: a.add_segments,
        remove_segments: a.remove_segments,
        empty_removed_lists: a.empty_removed_lists,
        add_fields: a.add_fields,
        remove_fields: a.remove_fields,
        email_field: a.email_field,
        user_id_field: a.user_id_field,
        existing_users_only: match (a.existing_users_only, a.no_existing_users_only) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        schedule: a.schedule,
        on_leave: a.on_leave,
        null_fields: a.null_fields,
        skip_check: a.skip_check,
        cancel_run: a.cancel_run,
        notify: a.notify,
        no_notify: a.no_notify,
    };
    let caller = Caller { actor: &actor, origin: "cli" };
    let before = store.export(&a.name).await?;
    let (edited, emptied) =
        ops::edit_export(&store, &ctx.config, &caller, &a.name, &change).await.map_err(super::user::op_error)?;
    if ctx.out.json {
        let mut v = serde_json::to_value(&edited)?;
        v["emptied"] = json!(emptied);
        ctx.out.json(&v);
    } else {
        println!("Changed export '{}'. Its next run sends only what differs from what it already sent.", edited.name);
        let detached = before.targets.iter().filter(|t| change.remove_segments.contains(&t.segment_name));
        for t in detached {
            match emptied.iter().find(|e| e.list_name == t.list_name) {
                Some(e) => println!(
                    "List '{}': unsubscribed the {} member(s) this export put there; the export no longer manages it.",
                    e.list_name, e.unsubscribed
                ),
                None => {
                    println!("List '{}' is left in Iterable as it is; the export no longer manages it.", t.list_name)
                }
            }
        }
    }
    Ok(exit::OK)
}

async fn remove(ctx: &Ctx, name: &str, empty: bool, cancel_run: bool) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let actor = ctx.actor();
    let caller = Caller { actor: &actor, origin: "cli" };
    let emptied =
        ops::remove_export(&store, &ctx.config, &caller, name, empty, cancel_run).await.map_err(|e| match e {
            OpError::Store(e) => anyhow::Error::from(e),
            OpError::Busy { message, cancellable } => super::user::busy(message, cancellable),
            e => Exit::error(exit::FAILED, e.to_string()),
        })?;
    if ctx.out.json {
        ctx.out.json(&json!({ "removed": name, "emptied": emptied }));
    } else if empty {
        let total: u64 = emptied.iter().map(|e| e.unsubscribed).sum();
        println!(
            "Removed export '{name}' after unsubscribing the {total} member(s) it had put on its lists. Its history \
             stays readable with `segment-exporter runs --export {name} --include-removed`."
        );
    } else {
        println!(
            "Removed export '{name}'; its Iterable lists were not changed. Its history stays readable with \
             `segment-exporter runs --export {name} --include-removed`."
        );
    }
    Ok(exit::OK)
}

async fn list(ctx: &Ctx, include_removed: bool) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let mut rows = Vec::new();
    let mut values = Vec::new();
    let exports = if include_removed { store.exports_including_removed().await? } else { store.exports().await? };
    for e in exports {
        let last = store.last_run(e.id).await?;
        let segments: Vec<&str> = e.targets.iter().map(|t| t.segment_name.as_str()).collect();
        let daemon = &ctx.config.daemon;
        let tz = daemon.tz().unwrap_or(chrono_tz::UTC);
        let next = Schedule::parse(&e.schedule)
            .ok()
            .filter(|_| e.enabled && e.removed_at.is_none())
            .and_then(|s| s.next_after(Some(&daemon.refresh_schedule), &chrono::Utc::now().with_timezone(&tz)));
        let next_text = match (e.schedule.as_str(), &next) {
            _ if e.removed_at.is_some() => "-".to_string(),
            ("off", _) => "on demand".to_string(),
            (_, Some(t)) => super::output::when(t),
            _ => "-".into(),
        };
        rows.push(vec![
            if e.removed_at.is_some() { format!("{} (removed)", e.name) } else { e.name.clone() },
            e.connection_name.clone().unwrap_or_else(|| "(detached)".into()),
            segments.join(", "),
            e.schedule.clone(),
            next_text,
            last.as_ref().map_or("never run".into(), |r| format!("#{} {}", r.id, r.status)),
            opt_when(&last.as_ref().map(|r| r.started_at)),
        ]);
        values.push(json!({
            "name": e.name, "connection": e.connection_name, "segments": segments, "schedule": e.schedule,
            "enabled": e.enabled, "removed_at": e.removed_at, "next_run": next, "last_run": last.as_ref().map(|r| json!({"id": r.id, "status": r.status, "started_at": r.started_at})),
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

async fn show(ctx: &Ctx, name: &str, include_removed: bool) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let e = if include_removed { store.export_including_removed(name).await? } else { store.export(name).await? };
    let mut lists = Vec::new();
    for t in &e.targets {
        let counts = store.member_counts(t.id).await?;
        lists.push((t, counts));
    }
    let last_success = store.last_success(e.id).await?;
    let subscriptions = store.subscriptions(e.id).await?;
    if ctx.out.json {
        let mut v = serde_json::to_value(&e)?;
        v["lists"] = json!(lists
            .iter()
            .map(|(t, c)| json!({"list_name": t.list_name, "list_id": t.list_id, "segment": t.segment_name, "members": c.subscribed, "rejected": c.rejected}))
            .collect::<Vec<_>>());
        v["last_success"] = json!(last_success);
        v["notify"] = json!(subscriptions);
        ctx.out.json(&v);
    } else {
        let fields: Vec<String> = e
            .fields
            .iter()
            .map(|f| match f.field_type {
                Some(t) => format!("{}={}:{}", f.column, f.iterable_field, t.as_str()),
                None => format!("{}={}", f.column, f.iterable_field),
            })
            .collect();
        let rows = vec![
            vec!["name".into(), e.name.clone()],
            vec!["connection".into(), e.connection_name.clone().unwrap_or_else(|| "(detached: disabled)".into())],
            vec!["email column".into(), e.email_field.clone().unwrap_or_else(|| "(none)".into())],
            vec!["user id column".into(), e.user_id_field.clone().unwrap_or_else(|| "(none)".into())],
            vec!["fields".into(), if fields.is_empty() { "-".into() } else { fields.join(", ") }],
            vec!["on leave".into(), e.on_leave.as_str().into()],
            vec!["null fields".into(), e.null_fields.as_str().into()],
            vec!["existing users only".into(), if e.existing_users_only { "yes" } else { "no" }.into()],
            vec!["schedule".into(), e.schedule.clone()],
            vec!["last success".into(), opt_when(&last_success)],
            vec![
                "notifies".into(),
                if subscriptions.is_empty() {
                    "-".into()
                } else {
                    subscriptions
                        .iter()
                        .map(|s| {
                            let events: Vec<&str> = s.events.iter().map(|e| e.as_str()).collect();
                            format!("{} ({})", s.channel, events.join(", "))
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                },
            ],
        ];
        let mut rows = rows;
        if let Some(at) = e.removed_at {
            rows.push(vec!["removed".into(), super::output::when(&at)]);
        }
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

/// Runs the export until it ends or, after a first Ctrl-C or SIGTERM (which cancels `cancel`), until
/// `daemon.shutdown_grace` has passed: batches in flight finish and are recorded within it, and a run still going
/// after it is dropped and recorded `interrupted`. (A second signal is `main`'s: exit 130 at once.)
async fn run_with_grace(
    ctx: &Ctx,
    engine: &Engine,
    name: &str,
    opts: &RunOptions,
    progress: Arc<Progress>,
    cancel: CancellationToken,
) -> anyhow::Result<Result<RunReport, SyncError>> {
    let grace = ctx.config.daemon.shutdown_grace;
    let mut run = Box::pin(engine.run_export(name, opts, progress.clone(), cancel.clone()));
    let grace_over = async {
        cancel.cancelled().await;
        tracing::warn!(grace = %humantime::format_duration(grace), "Stopping: finishing the batches in flight within daemon.shutdown_grace (signal again to exit at once).");
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = &mut run => return Ok(result),
        () = grace_over => {}
    }
    // Dropping the run releases its lock; its row is ours to finish.
    drop(run);
    let why = format!(
        "stopped when daemon.shutdown_grace ({}) ran out after a stop signal; what Iterable acknowledged is recorded and the next run resumes from there",
        humantime::format_duration(grace)
    );
    if let Some(run_id) = progress.run_id() {
        ctx.store().await?.finish_run(run_id, RunStatus::Interrupted, Some(&why)).await?;
        return Err(Exit::error(exit::FAILED, format!("run #{run_id} of export '{name}' {why}")));
    }
    Err(Exit::error(exit::FAILED, format!("export '{name}' {why}")))
}

async fn run_now(ctx: &Ctx, a: RunArgs) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    // An export that does not exist is refused before anything is recorded: the audit holds what was asked of
    // something there.
    store.export(&a.name).await?;
    let what = if a.dry_run { "export.run.dry" } else { "export.run" };
    ctx.audit(&store, what, &a.name, (a.full || a.allow_mass_removal || a.allow_mass_addition).then(|| run_flags(&a)))
        .await?;
    let notifier = crate::notify::Notifier::new(ctx.config.clone());
    let engine = Engine::new(store.clone(), ctx.config.clone()).with_teller(Arc::new(notifier));
    let progress = Arc::new(Progress::default());
    let cancel = ctx.signals.stop();
    let finished = CancellationToken::new();
    let display = spawn_progress_display(progress.clone(), ctx.out.json, finished.clone());
    let opts = RunOptions {
        trigger: "manual".into(),
        dry_run: a.dry_run,
        full: a.full,
        allow_mass_removal: a.allow_mass_removal,
        allow_mass_addition: a.allow_mass_addition,
        ..RunOptions::default()
    };
    let result = run_with_grace(ctx, &engine, &a.name, &opts, progress.clone(), cancel).await;
    finished.cancel();
    let _ = display.await;
    let result = result?;
    let report = match result {
        Ok(r) => r,
        Err(e @ SyncError::AlreadyRunning { .. }) => return Err(Exit::error(exit::BUSY, e.to_string())),
        Err(e) => return Err(e.into()),
    };
    print_report(ctx, &report);
    if !report.dry_run {
        deliver_notifications(ctx, &store).await;
    }
    Ok(if report.succeeded() { exit::OK } else { exit::FAILED })
}

async fn verify_now(ctx: &Ctx, a: VerifyArgs) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    store.export(&a.name).await?;
    let flags = [
        (a.repair, "repair"),
        (a.remove_lingering, "remove lingering"),
        (a.allow_mass_removal, "allow mass removal"),
        (a.allow_mass_addition, "allow mass addition"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, name)| *name)
    .collect::<Vec<_>>()
    .join(", ");
    ctx.audit(&store, "export.verify", &a.name, (!flags.is_empty()).then_some(flags)).await?;
    let notifier = crate::notify::Notifier::new(ctx.config.clone());
    let engine = Engine::new(store.clone(), ctx.config.clone()).with_teller(Arc::new(notifier));
    let progress = Arc::new(Progress::default());
    let cancel = ctx.signals.stop();
    let opts = VerifyOptions {
        trigger: "manual".into(),
        repair: a.repair,
        remove_lingering: a.remove_lingering,
        allow_mass_removal: a.allow_mass_removal,
        allow_mass_addition: a.allow_mass_addition,
        request_id: None,
    };
    let report = match engine.verify_export(&a.name, &opts, progress, cancel).await {
        Ok(r) => r,
        Err(e @ SyncError::AlreadyRunning { .. }) => return Err(Exit::error(exit::BUSY, e.to_string())),
        Err(e) => return Err(e.into()),
    };
    print_verify(ctx, &report);
    deliver_notifications(ctx, &store).await;
    Ok(if !report.succeeded() {
        exit::FAILED
    } else if report.drift_left {
        exit::DRIFTED
    } else {
        exit::OK
    })
}

/// A verify's report: per list its verdict and the count of each category, then examples.
pub(crate) fn print_verify(ctx: &Ctx, r: &VerifyReport) {
    if ctx.out.json {
        ctx.out.json(r);
        if let Some(e) = &r.error {
            eprintln!("error: {e}");
        }
        return;
    }
    let what = if r.kind == crate::store::RunKind::VerifyRepair { "Verify and repair" } else { "Verify" };
    println!("{what} #{} of export '{}' {} in {}.", r.run_id, r.export, r.status, seconds(r.seconds));
    let rows = r
        .lists
        .iter()
        .map(|l| {
            vec![
                l.list_name.clone(),
                l.list_id.map_or("-".into(), |id| id.to_string()),
                verdict_text(l.verdict).into(),
                l.missing.count.to_string(),
                l.not_yet_sent.count.to_string(),
                l.lingering.count.to_string(),
                l.others.count.to_string(),
                l.settling.count.to_string(),
            ]
        })
        .collect();
    ctx.out.table(&["list", "list id", "verdict", "missing", "not yet sent", "lingering", "others'", "settling"], rows);
    for l in &r.lists {
        if let Some(note) = &l.note {
            println!("{}: {note}", l.list_name);
        }
        for kind in DriftKind::ALL {
            let c = l.category(kind);
            if !c.examples.is_empty() {
                println!("{} {}: {}", l.list_name, drift_kind_text(kind), c.examples.join(", "));
            }
        }
    }
    if !r.repaired.is_empty() {
        let (added, removed) = r.repaired.iter().fold((0, 0), |(a, d), l| (a + l.added, d + l.removed));
        println!("Repair: {added} member(s) sent again or added, {removed} removed.");
    }
    if r.drift_left {
        println!(
            "The lists drifted from their segments. `segment-exporter export verify {} --repair` sends the missing \
             members again (add --remove-lingering to remove the lingering ones).",
            r.export
        );
    }
    if let Some(e) = &r.error {
        eprintln!("error: {e}");
    }
}

fn verdict_text(v: Verdict) -> &'static str {
    match v {
        Verdict::Clean => "clean",
        Verdict::Drifted => "drifted",
        Verdict::NoVerdict => "no verdict",
    }
}

fn drift_kind_text(k: DriftKind) -> &'static str {
    match k {
        DriftKind::Missing => "missing",
        DriftKind::NotYetSent => "not yet sent",
        DriftKind::Lingering => "lingering",
        DriftKind::Others => "others'",
        DriftKind::Settling => "settling",
    }
}

/// Delivers what the run told (and anything else due) before the command exits, for at most `notify.run_wait`:
/// without a daemon, no one else would. What is left stays in the outbox for the daemon or the next run.
async fn deliver_notifications(ctx: &Ctx, store: &crate::store::Store) {
    let outbox = crate::notify::Outbox::new(store.clone(), ctx.config.clone());
    match outbox.drain(ctx.config.notify.run_wait).await {
        Ok(0) => {}
        Ok(left) => tracing::warn!(
            left,
            "Notifications not delivered yet stay in the outbox: the daemon, or the next `export run`, delivers them. See `segment-exporter notify log`."
        ),
        Err(e) => tracing::warn!(error = %e, "Cannot deliver notifications now; they stay in the outbox."),
    }
}

/// The options of a run asked for, for its audit row.
fn run_flags(a: &RunArgs) -> String {
    [(a.full, "full"), (a.allow_mass_removal, "allow mass removal"), (a.allow_mass_addition, "allow mass addition")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect::<Vec<_>>()
        .join(", ")
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
                    l.to_update.to_string(),
                    l.to_remove.to_string(),
                    l.unchanged.to_string(),
                    l.invalid.to_string(),
                    l.duplicates.to_string(),
                ]
            })
            .collect();
        ctx.out.table(
            &["list", "list id", "to add", "to update", "to remove", "unchanged", "invalid", "duplicates"],
            rows,
        );
        if r.lists.iter().any(|l| l.list_id.is_none() && l.to_add > 0) {
            println!(
                "A list not found yet may hold members already: the run counts those as already there, not added."
            );
        }
        for l in &r.lists {
            if !l.examples_add.is_empty() {
                println!("{}: would send e.g. {}", l.list_name, l.examples_add.join(", "));
            }
            if !l.examples_remove.is_empty() {
                println!("{}: would remove e.g. {}", l.list_name, l.examples_remove.join(", "));
            }
            for ex in &l.examples_invalid {
                let member = ex.member.as_ref().map_or_else(|| "(null)".to_string(), |m| format!("{m:?}"));
                println!("{}: invalid {member}: {}", l.list_name, ex.reason);
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
                    l.added.to_string(),
                    l.updated.to_string(),
                    l.already_on_list.to_string(),
                    l.removed.to_string(),
                    l.unchanged.to_string(),
                    l.invalid.to_string(),
                    l.rejected.to_string(),
                ]
            })
            .collect();
        ctx.out.table(
            &[
                "list",
                "list id",
                "members",
                "added",
                "updated",
                "already there",
                "removed",
                "unchanged",
                "invalid",
                "rejected",
            ],
            rows,
        );
        let (sent, planned) = r.lists.iter().fold((0, 0), |(s, p), l| {
            (s + l.subscribed() + l.rejected + l.removed, p + l.to_subscribe() + l.to_remove)
        });
        if sent < planned && matches!(r.status, RunStatus::Failed | RunStatus::Interrupted | RunStatus::Cancelled) {
            println!("{sent} of the {planned} planned changes were made and recorded; the next run makes the rest.");
        }
        println!("{} request(s) to Iterable, {} answered 429.", r.requests, r.rate_limited);
        for w in &r.warnings {
            println!("Warning: {w}");
        }
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
        eprintln!("Nothing was changed on any list.");
    }
}

/// `export trigger` on a PostgreSQL store: a run request per export, which the first daemon with a free slot
/// takes (woken by the store's notification).
async fn trigger_in_store(ctx: &Ctx, store: &crate::store::Store, name: Option<&str>) -> anyhow::Result<u8> {
    let exports = match name {
        Some(n) => vec![store.export(n).await?],
        None => store.exports().await?.into_iter().filter(|e| e.enabled && e.connection_id.is_some()).collect(),
    };
    let queue = crate::queue::RunQueue::new(store.clone(), ctx.config.clone());
    let mut requests = Vec::new();
    for e in &exports {
        let ask = crate::queue::Ask {
            export_id: e.id,
            trigger: crate::queue::Trigger::TriggerFile,
            requested_by: None,
            full: false,
            allow_mass_removal: false,
            allow_mass_addition: false,
            verify: None,
        };
        requests.push(json!({ "export": e.name, "request_id": queue.ask(&ask).await? }));
    }
    if ctx.out.json {
        ctx.out.json(&json!({ "requests": requests }));
    } else {
        for r in &requests {
            println!(
                "Asked for a run of export '{}' (request #{}): the first daemon sharing the store with a free slot \
                 takes it.",
                r["export"].as_str().unwrap_or_default(),
                r["request_id"]
            );
        }
    }
    Ok(exit::OK)
}
