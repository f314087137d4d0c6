//! The changes a person asks for that the CLI and the HTTP API share: each checks who may do it (through the
//! verdicts of `crate::access`), validates its input the same way for both, changes the store and records the
//! audit row. Callers only turn `OpError` into an exit code or an HTTP status.

use crate::config::Config;
use crate::schedule::Schedule;
use crate::source::{self, SourceSpec};
use crate::store::{Export, FieldMap, NewExport, OnLeave, Segment, Store, StoreError, User};
use crate::sync::check_field_name;

use super::{audit, change_export, use_connection, Actor, Denied, ExportFacts};

/// Why an operation was not done.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The input is wrong; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// The change conflicts with what is stored; the message names only what the caller may see.
    #[error("{0}")]
    Conflict(String),
    /// The export is running (CLI: exit 75; API: 409); asking again with cancel_run stops that run first.
    #[error("{0}")]
    Busy(String),
    /// The change started and stopped part-way; the message says how to finish it.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who acts, and from where (for the audit: `cli`, or `api ADDRESS`).
pub struct Caller<'a> {
    pub actor: &'a Actor,
    pub origin: &'a str,
}

/// A new export, as the CLI's flags or the API's JSON give it.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub name: String,
    pub connection: String,
    pub segments: Vec<String>,
    pub email_field: String,
    /// COLUMN or COLUMN=ITERABLE_FIELD.
    pub fields: Vec<String>,
    pub on_leave: OnLeave,
    pub schedule: String,
    /// Save without reading the segments to check that the columns exist.
    pub skip_check: bool,
}

/// Parses `COLUMN` or `COLUMN=ITERABLE_FIELD`.
pub fn parse_field(text: &str) -> Result<FieldMap, String> {
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

/// Two fields may not send to one Iterable field.
pub fn check_unique_fields(fields: &[FieldMap]) -> Result<(), String> {
    let mut names: Vec<&str> = fields.iter().map(|f| f.iterable_field.as_str()).collect();
    names.sort();
    match names.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(format!("two fields send to the Iterable field '{}'", w[0])),
        None => Ok(()),
    }
}

/// Reads a segment's first row to check that it has the email column and every field's column.
pub async fn check_columns(seg: &Segment, email_field: &str, fields: &[FieldMap]) -> Result<(), String> {
    let spec: SourceSpec = seg.source.parse().map_err(|e| format!("segment '{}': {e}", seg.name))?;
    let (columns, _) = source::preview(&spec, seg.query.as_deref(), 1)
        .await
        .map_err(|e| format!("segment '{}' could not be read: {e} (add --skip-check to save anyway)", seg.name))?;
    let wanted = std::iter::once(email_field).chain(fields.iter().map(|f| f.column.as_str()));
    for col in wanted {
        if !columns.iter().any(|c| c == col) {
            return Err(format!(
                "segment '{}' has no column '{col}'; its columns are: {}",
                seg.name,
                columns.join(", ")
            ));
        }
    }
    Ok(())
}

/// Adds an export: checks, saves (without running it), makes its creator an export user, audits.
pub async fn create_export(
    store: &Store,
    config: &Config,
    caller: &Caller<'_>,
    r: &ExportRequest,
) -> Result<Export, OpError> {
    // Before anything is read, and before the name is quoted in any message below.
    crate::store::names::check_export_name(&r.name).map_err(|problem| StoreError::InvalidName {
        what: "export",
        name: r.name.clone(),
        problem,
    })?;
    let fail = |m: String| OpError::Invalid(format!("export '{}' not saved: {m}", r.name));
    let fields = r.fields.iter().map(|f| parse_field(f)).collect::<Result<Vec<_>, _>>().map_err(fail)?;
    check_unique_fields(&fields).map_err(fail)?;
    Schedule::parse(&r.schedule).map_err(|e| fail(format!("--schedule {e}")))?;
    let conn = store.connection(&r.connection).await?;
    use_connection(caller.actor, &conn.usable_by).check(&format!("connection '{}'", r.connection))?;
    let mut segment_ids = Vec::new();
    for name in &r.segments {
        let seg = store.segment(name).await?;
        if segment_ids.contains(&seg.id) {
            return Err(fail(format!("segment '{name}' is given twice")));
        }
        if !r.skip_check {
            check_columns(&seg, &r.email_field, &fields).await.map_err(|e| {
                if caller.actor.is_admin() {
                    fail(e)
                } else {
                    // The reader's error may name the source (a path, a URL): administrators only.
                    fail(format!(
                        "segment '{name}' could not be read, or lacks the column '{}' or a field's column; ask an \
                         administrator to check the segment",
                        r.email_field
                    ))
                }
            })?;
        }
        segment_ids.push(seg.id);
    }
    let export = store
        .add_export(&NewExport {
            name: r.name.clone(),
            connection_id: conn.id,
            email_field: r.email_field.clone(),
            on_leave: r.on_leave,
            schedule: r.schedule.trim().to_string(),
            segment_ids,
            fields,
        })
        .await
        .map_err(|e| match e {
            e @ StoreError::ListManaged { .. } if !caller.actor.is_admin() => OpError::Conflict(e.without_names()),
            e => e.into(),
        })?;
    if let Some(id) = caller.actor.user_id() {
        store.add_export_user(export.id, id, caller.actor.name()).await?;
    }
    audit(store, config, caller.actor, caller.origin, "export.add", Some(&r.name), None).await?;
    Ok(export)
}

/// Adds and removes export users of an export; returns them all. Admins and export users may.
pub async fn change_export_users(
    store: &Store,
    config: &Config,
    caller: &Caller<'_>,
    export_name: &str,
    add: &[String],
    remove: &[String],
) -> Result<Vec<User>, OpError> {
    let export = store.export(export_name).await?;
    let facts = ExportFacts::load(store, &export).await?;
    change_export(caller.actor, &facts).check(&format!("export '{export_name}'"))?;
    for name in add {
        let user = store.user(name).await?;
        store.add_export_user(export.id, user.id, caller.actor.name()).await?;
        audit(store, config, caller.actor, caller.origin, "export.users.add", Some(export_name), Some(name.clone()))
            .await?;
    }
    for name in remove {
        let user = store.user(name).await?;
        if !store.remove_export_user(export.id, user.id).await? {
            return Err(OpError::Invalid(format!("'{name}' is not an export user of export '{export_name}'")));
        }
        audit(store, config, caller.actor, caller.origin, "export.users.remove", Some(export_name), Some(name.clone()))
            .await?;
    }
    Ok(store.export_users(export.id).await?)
}

/// Makes the caller (an administrator) the connection's export user: its scheduled runs go on their behalf.
pub async fn become_connection_export_user(
    store: &Store,
    config: &Config,
    caller: &Caller<'_>,
    connection_name: &str,
) -> Result<(), OpError> {
    let conn = store.connection(connection_name).await?;
    super::manage_connection(caller.actor, &conn.usable_by).check(&format!("connection '{connection_name}'"))?;
    store.set_connection_export_user(conn.id, caller.actor.name(), caller.actor.user_id()).await?;
    audit(store, config, caller.actor, caller.origin, "connection.export_user", Some(connection_name), None).await?;
    Ok(())
}

/// How long a removal with `cancel_run` waits for the run to stop (it stops within one batch).
pub const CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Removes an export (export users and admins may): holds its run lock (a run in flight refuses the removal, or is
/// cancelled first with `cancel_run`), optionally empties its lists of what it put there, then forgets it.
pub async fn remove_export(
    store: &Store,
    config: &std::sync::Arc<Config>,
    caller: &Caller<'_>,
    name: &str,
    empty_lists: bool,
    cancel_run: bool,
) -> Result<Vec<crate::sync::empty::Emptied>, OpError> {
    use crate::sync::{lock_for_change, ChangeRefused};
    let export = store.export(name).await?;
    let facts = ExportFacts::load(store, &export).await?;
    change_export(caller.actor, &facts).check(&format!("export '{name}'"))?;
    let _lock = lock_for_change(store, &config.store.lock_dir(), &export, cancel_run, CANCEL_WAIT).await.map_err(
        |e| match e {
            e @ (ChangeRefused::Running { .. } | ChangeRefused::StillRunning { .. }) => OpError::Busy(e.to_string()),
            ChangeRefused::Store(e) => OpError::Store(e),
            e => OpError::Failed(e.to_string()),
        },
    )?;
    let emptied = if empty_lists {
        let engine = crate::sync::Engine::new(store.clone(), config.clone());
        let targets: Vec<&crate::store::Target> = export.targets.iter().collect();
        crate::sync::empty::empty_lists(&engine, store, config.iterable.batch_size, &export, &targets).await.map_err(
            |e| {
                OpError::Failed(format!(
                    "export '{name}' not removed: {e}. The members unsubscribed so far are forgotten, so the same \
                     removal asked again finishes the job"
                ))
            },
        )?
    } else {
        vec![]
    };
    // A run a dead process left `running` would stay so for good: no later run of this export sweeps it.
    store.interrupt_orphaned_runs(export.id).await?;
    store.remove_export(name).await?;
    let detail = empty_lists.then(|| "lists emptied".to_string());
    audit(store, config, caller.actor, caller.origin, "export.remove", Some(name), detail).await?;
    Ok(emptied)
}
