//! `export edit` and `PATCH /api/v1/exports/{name}`: one change, checked the same way for both (who may, which
//! segments and fields, the columns), then saved under the export's run lock. Owns nothing else.

use std::sync::Arc;

use crate::config::Config;
use crate::schedule::Schedule;
use crate::store::{Export, ExportChange, NullFields, OnLeave, Segment, StoreError, Target};
use crate::sync::empty::{empty_lists, Emptied};
use crate::sync::{lock_for_change, Engine};

use super::{
    check_columns, check_identity_change, check_unique_fields, identity_columns, parse_field, Caller, OpError,
    CANCEL_WAIT,
};
use crate::access::{change_export, ExportFacts};
use crate::store::Store;

/// A change to an export, as the CLI's flags or the API's JSON give it. Absent values stay as they are.
#[derive(Debug, Clone, Default)]
pub struct ExportEdit {
    pub add_segments: Vec<String>,
    pub remove_segments: Vec<String>,
    /// First unsubscribe, from each removed segment's list, the members this export put there.
    pub empty_removed_lists: bool,
    /// COLUMN[=ITERABLE_FIELD][:TYPE].
    pub add_fields: Vec<String>,
    /// Columns no longer sent.
    pub remove_fields: Vec<String>,
    /// The email column; `Some("")` drops it (where a user id identifies members).
    pub email_field: Option<String>,
    /// The user id column; `Some("")` drops it.
    pub user_id_field: Option<String>,
    /// Do not create users the project does not know yet (`Some(false)`: create them again).
    pub existing_users_only: Option<bool>,
    pub schedule: Option<String>,
    pub on_leave: Option<OnLeave>,
    pub null_fields: Option<NullFields>,
    /// Save without reading the segments to check that the columns exist.
    pub skip_check: bool,
    /// Stop a run in flight first (else a running export is not changed: `Busy`).
    pub cancel_run: bool,
    /// Channels to tell (CHANNEL[:EVENTS]; replaces the events of a channel already told).
    pub notify: Vec<String>,
    /// Channels to stop telling.
    pub no_notify: Vec<String>,
}

/// Changes an export (its export users and admins may); it keeps what it put on its remaining lists, so the next
/// run sends only the difference. Returns the export as changed and the lists emptied.
pub async fn edit_export(
    store: &Store,
    config: &Arc<Config>,
    caller: &Caller<'_>,
    name: &str,
    a: &ExportEdit,
) -> Result<(Export, Vec<Emptied>), OpError> {
    let fail = |m: String| OpError::Invalid(format!("export '{name}' not changed: {m}"));
    let export = store.export(name).await?;
    let facts = ExportFacts::load(store, &export).await?;
    change_export(caller.actor, &facts).check(&format!("export '{name}'"))?;
    let attached = |segment: &str| export.targets.iter().find(|t| t.segment_name == segment);

    let mut detach: Vec<&Target> = Vec::new();
    for segment in &a.remove_segments {
        let target = attached(segment).ok_or_else(|| {
            let names: Vec<&str> = export.targets.iter().map(|t| t.segment_name.as_str()).collect();
            fail(format!("--remove-segment '{segment}': the export does not send it; it sends {}", names.join(", ")))
        })?;
        if detach.iter().any(|t| t.id == target.id) {
            return Err(fail(format!("--remove-segment '{segment}' is given twice")));
        }
        detach.push(target);
    }
    let mut attach: Vec<Segment> = Vec::new();
    for segment in &a.add_segments {
        let seg = store.segment(segment).await?;
        if attached(segment).is_some() && !a.remove_segments.contains(segment) {
            return Err(fail(format!("--add-segment '{segment}': the export already sends it")));
        }
        if a.remove_segments.contains(segment) {
            return Err(fail(format!("segment '{segment}' is both added and removed")));
        }
        if attach.iter().any(|s| s.id == seg.id) {
            return Err(fail(format!("--add-segment '{segment}' is given twice")));
        }
        attach.push(seg);
    }
    if export.targets.len() - detach.len() + attach.len() == 0 {
        return Err(fail("an export needs at least one segment; remove the export instead (`export remove`)".into()));
    }

    let mut fields = export.fields.clone();
    for column in &a.remove_fields {
        let before = fields.len();
        fields.retain(|f| &f.column != column);
        if fields.len() == before {
            let sent: Vec<&str> = export.fields.iter().map(|f| f.column.as_str()).collect();
            return Err(fail(format!(
                "--remove-field '{column}': the export does not send that column; it sends {}",
                if sent.is_empty() { "none".to_string() } else { sent.join(", ") }
            )));
        }
    }
    let added = a.add_fields.iter().map(|f| parse_field(f)).collect::<Result<Vec<_>, _>>().map_err(fail)?;
    for f in &added {
        if fields.iter().any(|g| g.column == f.column) {
            return Err(fail(format!(
                "--add-field '{}': the column is already sent; remove it first (--remove-field {})",
                f.column, f.column
            )));
        }
    }
    fields.extend(added.iter().cloned());
    check_unique_fields(&fields).map_err(fail)?;
    let schedule = match &a.schedule {
        Some(s) => {
            Schedule::parse(s).map_err(|e| fail(format!("--schedule {e}")))?;
            s.trim().to_string()
        }
        None => export.schedule.clone(),
    };
    let given = |f: &Option<String>| f.as_deref().map(str::trim).map(str::to_string);
    let email_field =
        given(&a.email_field).map_or_else(|| export.email_field.clone(), |f| Some(f).filter(|f| !f.is_empty()));
    let user_id_field =
        given(&a.user_id_field).map_or_else(|| export.user_id_field.clone(), |f| Some(f).filter(|f| !f.is_empty()));
    let existing_users_only = a.existing_users_only.unwrap_or(export.existing_users_only);
    let change = ExportChange {
        email_field: email_field.clone(),
        user_id_field: user_id_field.clone(),
        on_leave: a.on_leave.unwrap_or(export.on_leave),
        null_fields: a.null_fields.unwrap_or(export.null_fields),
        existing_users_only,
        schedule,
        fields: fields.clone(),
        attach_segment_ids: attach.iter().map(|s| s.id).collect(),
        detach_segment_ids: detach.iter().map(|t| t.segment_id).collect(),
    };
    let (subscribe, unsubscribe) =
        super::channels::check_subscriptions(store, caller.actor, &a.notify, &a.no_notify, &fail).await?;
    let subscriptions_only = change.attach_segment_ids.is_empty()
        && change.detach_segment_ids.is_empty()
        && change.fields == export.fields
        && change.email_field == export.email_field
        && change.user_id_field == export.user_id_field
        && change.existing_users_only == export.existing_users_only
        && change.on_leave == export.on_leave
        && change.null_fields == export.null_fields
        && change.schedule == export.schedule;
    if subscriptions_only && !(subscribe.is_empty() && unsubscribe.is_empty()) {
        // Nothing a run reads changes: no lock, no check of the segments.
        store.set_subscriptions(export.id, &subscribe, &unsubscribe).await?;
        let detail = super::channels::subscription_detail(&a.notify, &a.no_notify);
        crate::access::audit(store, config, caller.actor, caller.origin, "export.notify", Some(name), Some(detail))
            .await?;
        return Ok((store.export(name).await?, vec![]));
    }
    if subscriptions_only {
        return Err(fail("nothing to change; see `segment-exporter export edit --help`".into()));
    }
    if email_field.is_some() && email_field == user_id_field {
        return Err(fail("--email-field and --user-id-field name the same column; give each its own".into()));
    }
    // The identity settings must fit the connection's kind of project, and may not change who members are once
    // some are on the lists.
    if let Some(connection_id) = export.connection_id {
        let conn = store.connection_by_id(connection_id).await?;
        crate::sync::check_identity_settings(
            conn.project_type,
            &conn.name,
            email_field.as_deref(),
            user_id_field.as_deref(),
            existing_users_only,
        )
        .map_err(fail)?;
        check_identity_change(store, conn.project_type, &export, email_field.as_deref(), user_id_field.as_deref())
            .await
            .map_err(|e| match e {
                // It contradicts what is stored (members on the lists): a conflict.
                OpError::Conflict(m) => OpError::Conflict(format!("export '{name}' not changed: {m}")),
                e => e,
            })?;
    }
    if !a.skip_check {
        let identity = identity_columns(email_field.as_deref(), user_id_field.as_deref());
        // The reader's error may name the source (a path, a URL): administrators only.
        let unreadable = |segment: &str, e: String| {
            if caller.actor.is_admin() {
                fail(e)
            } else {
                let columns: Vec<String> = identity.iter().map(|c| format!("'{c}'")).collect();
                fail(format!(
                    "segment '{segment}' could not be read, or lacks the column(s) {} or a field's column; ask an \
                     administrator to check the segment",
                    columns.join(", ")
                ))
            }
        };
        // New segments need every column; kept segments only the columns that are new to them.
        let columns_changed = a.email_field.is_some() || a.user_id_field.is_some() || !added.is_empty();
        for seg in &attach {
            check_columns(seg, &identity, &fields, config).await.map_err(|e| unreadable(&seg.name, e))?;
        }
        if columns_changed {
            for t in export.targets.iter().filter(|t| !detach.iter().any(|d| d.id == t.id)) {
                let seg = store.segment(&t.segment_name).await?;
                check_columns(&seg, &identity, &fields, config).await.map_err(|e| unreadable(&seg.name, e))?;
            }
        }
    }
    // Everything that can refuse the edit is checked before a list is emptied.
    let refused = |e: StoreError| match e {
        // Names the other export: administrators only.
        e @ StoreError::ListManaged { .. } if !caller.actor.is_admin() => fail(e.without_names()),
        e => fail(e.to_string()),
    };
    store.check_export_change(export.id, &change).await.map_err(refused)?;
    let guard = lock_for_change(store, config, &export, a.cancel_run, CANCEL_WAIT).await?;
    let edited = async {
        let emptied = if a.empty_removed_lists {
            let engine = Engine::new(store.clone(), config.clone());
            empty_lists(&engine, store, config.iterable.batch_size, &export, &detach)
                .await
                .map_err(|e| fail(format!("{e}. The lists were partly emptied; run the same edit again to finish")))?
        } else {
            vec![]
        };
        let edited = store.edit_export(export.id, &change).await.map_err(refused)?;
        store.set_subscriptions(export.id, &subscribe, &unsubscribe).await?;
        let detail = (!(a.notify.is_empty() && a.no_notify.is_empty()))
            .then(|| super::channels::subscription_detail(&a.notify, &a.no_notify));
        crate::access::audit(store, config, caller.actor, caller.origin, "export.edit", Some(name), detail).await?;
        Ok((edited, emptied))
    }
    .await;
    guard.release(true).await;
    edited
}
