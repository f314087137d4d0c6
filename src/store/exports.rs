//! Exports: which connection, which email column and fields, which segments, and each segment's target list.

use super::db::{sql, Tx};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{now, Result, Store, StoreError};

/// What happens to members who leave a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnLeave {
    /// Unsubscribe them from the list.
    Remove,
    /// Leave them on the list.
    Keep,
}

impl OnLeave {
    pub fn as_str(self) -> &'static str {
        match self {
            OnLeave::Remove => "remove",
            OnLeave::Keep => "keep",
        }
    }
}

/// What an export sends for a field whose value is NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum NullFields {
    /// Send `null`: Iterable clears the field.
    Clear,
    /// Leave the field out: Iterable keeps what it has.
    Skip,
}

impl NullFields {
    pub fn as_str(self) -> &'static str {
        match self {
            NullFields::Clear => "clear",
            NullFields::Skip => "skip",
        }
    }
}

/// How a field's values are encoded as JSON. The first five can be asked for (`--field COL:TYPE`); `Object` and
/// `Array` are only ever remembered, from a JSON source's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Long,
    Double,
    Boolean,
    /// Sent as Iterable's `yyyy-MM-dd HH:mm:ss +00:00`.
    Date,
    Object,
    Array,
}

impl FieldType {
    /// The types `--field COL:TYPE` accepts.
    pub const CHOSEN: [FieldType; 5] =
        [FieldType::String, FieldType::Long, FieldType::Double, FieldType::Boolean, FieldType::Date];

    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Long => "long",
            FieldType::Double => "double",
            FieldType::Boolean => "boolean",
            FieldType::Date => "date",
            FieldType::Object => "object",
            FieldType::Array => "array",
        }
    }

    pub fn parse(text: &str) -> Option<FieldType> {
        [FieldType::Object, FieldType::Array].into_iter().chain(FieldType::CHOSEN).find(|t| t.as_str() == text)
    }
}

/// A profile column sent as an Iterable data field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldMap {
    pub column: String,
    pub iterable_field: String,
    /// The type asked for with `--field COL:TYPE`; None lets the values decide.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field_type: Option<FieldType>,
    /// The type the field was first sent as, when no type was asked for: later runs encode it the same way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sent_type: Option<FieldType>,
}

impl FieldMap {
    /// A field sent as the values decide.
    pub fn new(column: impl Into<String>, iterable_field: impl Into<String>) -> FieldMap {
        FieldMap { column: column.into(), iterable_field: iterable_field.into(), field_type: None, sent_type: None }
    }
}

/// One segment of an export and the Iterable list that mirrors it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub id: i64,
    pub segment_id: i64,
    pub segment_name: String,
    pub list_name: String,
    pub list_id: Option<i64>,
    /// When a run last saw the list in Iterable.
    pub list_checked_at: Option<DateTime<Utc>>,
    /// When a run first completed with this target: until then its list is filling (the mass-addition guard leaves
    /// it alone, so an interrupted first fill resumes).
    pub filled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Export {
    pub id: i64,
    pub name: String,
    pub connection_id: Option<i64>,
    pub connection_name: Option<String>,
    /// The column holding the email; None when a userID-based export sends no email.
    pub email_field: Option<String>,
    /// The column holding the user id (userID-based and hybrid projects).
    pub user_id_field: Option<String>,
    pub on_leave: OnLeave,
    pub null_fields: NullFields,
    /// Subscribes do not create users that the project does not know yet (`updateExistingUsersOnly`).
    pub existing_users_only: bool,
    pub schedule: String,
    pub enabled: bool,
    pub fields: Vec<FieldMap>,
    pub targets: Vec<Target>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Set once the export was removed: its row stays so that its run history can still be read.
    pub removed_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct NewExport {
    pub name: String,
    pub connection_id: i64,
    pub email_field: Option<String>,
    pub user_id_field: Option<String>,
    pub on_leave: OnLeave,
    pub null_fields: NullFields,
    pub existing_users_only: bool,
    pub schedule: String,
    pub segment_ids: Vec<i64>,
    pub fields: Vec<FieldMap>,
}

/// An export as it should be after `export edit`: the whole new settings, and which segments to attach or detach.
#[derive(Debug, Clone)]
pub struct ExportChange {
    pub email_field: Option<String>,
    pub user_id_field: Option<String>,
    pub on_leave: OnLeave,
    pub null_fields: NullFields,
    pub existing_users_only: bool,
    pub schedule: String,
    /// The complete new field list (a changed list changes every member's field hash, so all are sent again).
    pub fields: Vec<FieldMap>,
    pub attach_segment_ids: Vec<i64>,
    pub detach_segment_ids: Vec<i64>,
}

/// Every export reads its columns the same way; the only difference is which rows count.
const SELECT_EXPORT: &str = "SELECT e.id, e.name, e.connection_id, c.name AS connection_name, e.email_field, \
     e.user_id_field, e.on_leave, e.null_fields, e.existing_users_only, e.schedule, e.enabled, e.created_at, e.updated_at, e.removed_at FROM exports e \
     LEFT JOIN connections c ON c.id = e.connection_id";

impl Store {
    pub async fn add_export(&self, e: &NewExport) -> Result<Export> {
        super::names::check_export_name(&e.name).map_err(|problem| StoreError::InvalidName {
            what: "export",
            name: e.name.clone(),
            problem,
        })?;
        let mut tx = self.db.begin().await?;
        let at = now();
        let id: i64 = sql(
            "INSERT INTO exports (name, connection_id, email_field, user_id_field, on_leave, null_fields, \
             existing_users_only, schedule, enabled, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, TRUE, $9, $9) \
             RETURNING id",
        )
        .bind(&e.name)
        .bind(e.connection_id)
        .bind(e.email_field.as_deref().unwrap_or(""))
        .bind(&e.user_id_field)
        .bind(e.on_leave.as_str())
        .bind(e.null_fields.as_str())
        .bind(e.existing_users_only)
        .bind(&e.schedule)
        .bind(at)
        .scalar(&mut tx)
        .await
        .map_err(|err| StoreError::on_insert(err, "export", &e.name))?;
        insert_fields(&mut tx, id, &e.fields).await?;
        for (position, segment_id) in e.segment_ids.iter().enumerate() {
            sql("INSERT INTO targets (export_id, segment_id, position, list_name) \
                 SELECT $1, id, $2, name FROM segments WHERE id = $3")
            .bind(id)
            .bind(position as i64)
            .bind(segment_id)
            .execute(&mut tx)
            .await?;
        }
        check_lists_unshared(&mut tx, id).await?;
        tx.commit().await?;
        self.export(&e.name).await
    }

    /// Names of the exports not removed.
    pub async fn export_names(&self) -> Result<Vec<String>> {
        Ok(sql("SELECT name FROM exports WHERE removed_at IS NULL ORDER BY name").scalars(&self.db).await?)
    }

    /// Exports not removed, by name.
    pub async fn exports(&self) -> Result<Vec<Export>> {
        self.exports_where(false).await
    }

    /// Every export, removed ones included, by name then age.
    pub async fn exports_including_removed(&self) -> Result<Vec<Export>> {
        self.exports_where(true).await
    }

    async fn exports_where(&self, include_removed: bool) -> Result<Vec<Export>> {
        let ids: Vec<i64> = sql("SELECT id FROM exports WHERE ($1 OR removed_at IS NULL) ORDER BY name, id")
            .bind(include_removed)
            .scalars(&self.db)
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.export_by_id(id).await?);
        }
        Ok(out)
    }

    /// The export of this name that is not removed.
    pub async fn export(&self, name: &str) -> Result<Export> {
        let id: i64 = sql("SELECT id FROM exports WHERE name = $1 AND removed_at IS NULL")
            .bind(name)
            .scalar_optional(&self.db)
            .await?
            .ok_or_else(|| StoreError::not_found("export", name, "export list"))?;
        self.export_by_id(id).await
    }

    /// The export of this name, or when none is left, the one of that name removed last.
    pub async fn export_including_removed(&self, name: &str) -> Result<Export> {
        let id: i64 = sql(
            "SELECT id FROM exports WHERE name = $1 ORDER BY removed_at IS NULL DESC, removed_at DESC, id DESC LIMIT 1",
        )
        .bind(name)
        .scalar_optional(&self.db)
        .await?
        .ok_or_else(|| StoreError::not_found("export", name, "export list --include-removed"))?;
        self.export_by_id(id).await
    }

    /// An export by id, removed or not. Of a removed export, the targets it had when it was removed.
    pub async fn export_by_id(&self, id: i64) -> Result<Export> {
        let row = sql(format!("{SELECT_EXPORT} WHERE e.id = $1"))
            .bind(id)
            .fetch_optional(&self.db)
            .await?
            .ok_or_else(|| StoreError::not_found("export", &format!("#{id}"), "export list"))?;
        let field_type = |column: &'static str, text: Option<String>| match text {
            None => Ok(None),
            Some(t) => {
                FieldType::parse(&t).map(Some).ok_or_else(|| StoreError::unknown_value("export_fields", column, &t))
            }
        };
        let fields =
            sql("SELECT source_column, iterable_field, field_type, sent_type FROM export_fields WHERE export_id = $1 \
             ORDER BY position")
            .bind(id)
            .fetch_all(&self.db)
            .await?
            .into_iter()
            .map(|r| {
                Ok(FieldMap {
                    column: r.try_get(0)?,
                    iterable_field: r.try_get(1)?,
                    field_type: field_type("field_type", r.try_get(2)?)?,
                    sent_type: field_type("sent_type", r.try_get(3)?)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // A target's segment may have been removed after the target was detached or its export removed.
        let targets =
            sql("SELECT t.id, COALESCE(t.segment_id, 0), COALESCE(s.name, t.list_name), t.list_name, t.list_id, \
             t.list_checked_at, t.filled_at FROM targets t LEFT JOIN segments s ON s.id = t.segment_id \
             WHERE t.export_id = $1 AND t.removed_at IS NULL ORDER BY t.position, t.id")
            .bind(id)
            .fetch_all(&self.db)
            .await?
            .into_iter()
            .map(|r| {
                Ok(Target {
                    id: r.try_get(0)?,
                    segment_id: r.try_get(1)?,
                    segment_name: r.try_get(2)?,
                    list_name: r.try_get(3)?,
                    list_id: r.try_get(4)?,
                    list_checked_at: r.try_get(5)?,
                    filled_at: r.try_get(6)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let on_leave: String = row.try_get("on_leave")?;
        let null_fields: String = row.try_get("null_fields")?;
        Ok(Export {
            id,
            name: row.try_get("name")?,
            connection_id: row.try_get("connection_id")?,
            connection_name: row.try_get("connection_name")?,
            email_field: Some(row.try_get::<String, _>("email_field")?).filter(|f| !f.is_empty()),
            user_id_field: row.try_get("user_id_field")?,
            on_leave: match on_leave.as_str() {
                "remove" => OnLeave::Remove,
                "keep" => OnLeave::Keep,
                other => return Err(StoreError::unknown_value("exports", "on_leave", other)),
            },
            null_fields: match null_fields.as_str() {
                "clear" => NullFields::Clear,
                "skip" => NullFields::Skip,
                other => return Err(StoreError::unknown_value("exports", "null_fields", other)),
            },
            existing_users_only: row.try_get("existing_users_only")?,
            schedule: row.try_get("schedule")?,
            enabled: row.try_get("enabled")?,
            fields,
            targets,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            removed_at: row.try_get("removed_at")?,
        })
    }

    /// Remembers the type each of these fields (by Iterable field name) was first sent as. A type already
    /// remembered is kept.
    pub async fn remember_sent_types(&self, export_id: i64, types: &[(String, FieldType)]) -> Result<()> {
        let mut tx = self.db.begin().await?;
        for (field, t) in types {
            sql("UPDATE export_fields SET sent_type = $1 WHERE export_id = $2 AND iterable_field = $3 \
                 AND sent_type IS NULL")
            .bind(t.as_str())
            .bind(export_id)
            .bind(field)
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes an export: forgets what it put on its lists and disables it for good. The row, its targets and its
    /// runs stay, marked removed, so its history can still be read; its name is free for a new export.
    pub async fn remove_export(&self, name: &str) -> Result<Export> {
        let export = self.export(name).await?;
        let mut tx = self.db.begin().await?;
        soft_delete_exports(&mut tx, "id = $2", export.id).await?;
        tx.commit().await?;
        Ok(export)
    }

    /// Applies an edit. Detached segments' targets are kept for the run history, but what the export put on their
    /// lists is forgotten; attached segments get new targets, whose lists are found (or created) by name on the next
    /// run. Refused, changing nothing, when a list of the result is managed by another export.
    pub async fn edit_export(&self, export_id: i64, c: &ExportChange) -> Result<Export> {
        let mut tx = self.db.begin().await?;
        apply_change(&mut tx, export_id, c).await?;
        tx.commit().await?;
        self.export_by_id(export_id).await
    }

    /// Whether `edit_export` would accept this change now, changing nothing (checked before lists are emptied, so
    /// an edit that would be refused changes no list either).
    pub async fn check_export_change(&self, export_id: i64, c: &ExportChange) -> Result<()> {
        let mut tx = self.db.begin().await?;
        apply_change(&mut tx, export_id, c).await?;
        tx.rollback().await?;
        Ok(())
    }

    /// The members this export put on a target's list (Iterable acknowledged their subscription): the ones that
    /// `--empty-removed-lists` and `--empty-lists` unsubscribe. Members that were on the list otherwise are not.
    pub async fn members_put_there(&self, target_id: i64) -> Result<Vec<String>> {
        // Ours whatever became of later updates (a refused update leaves the member on the list), and never one
        // that was on the list before the export adopted it.
        Ok(sql("SELECT email FROM members WHERE target_id = $1 AND ours \
             AND email NOT IN (SELECT email FROM preexisting_members WHERE target_id = $1) ORDER BY email")
        .bind(target_id)
        .scalars(&self.db)
        .await?)
    }

    /// Whether the export remembers any member on its lists (it has run and put or tried someone there): its
    /// identity columns then can no longer change without turning every member into a leaver and a joiner.
    pub async fn export_remembers_members(&self, export_id: i64) -> Result<bool> {
        Ok(sql("SELECT EXISTS (SELECT 1 FROM members WHERE target_id IN \
             (SELECT id FROM targets WHERE export_id = $1 AND removed_at IS NULL))")
        .bind(export_id)
        .scalar(&self.db)
        .await?)
    }

    /// Forgets members that were unsubscribed outside a run (by emptying a list).
    pub async fn forget_members(&self, target_id: i64, emails: &[String]) -> Result<()> {
        let mut tx = self.db.begin().await?;
        for email in emails {
            sql("DELETE FROM members WHERE target_id = $1 AND email = $2")
                .bind(target_id)
                .bind(email)
                .execute(&mut tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Lists of this export that another export (not removed) also manages on the same connection, with the other
    /// export's name. Stores from before one list had one export may hold such pairs; they keep running.
    pub async fn shared_lists(&self, export_id: i64) -> Result<Vec<(String, String)>> {
        Ok(sql(SHARED_LISTS).bind(export_id).pairs(&self.db).await?)
    }

    /// Records that a run saw the target's list in Iterable just now.
    pub async fn mark_list_seen(&self, target_id: i64) -> Result<()> {
        sql("UPDATE targets SET list_checked_at = $1 WHERE id = $2")
            .bind(now())
            .bind(target_id)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// Records the Iterable list a target writes to. With `forget_members`, what was known about the old list's
    /// members is dropped (the list was recreated, so all members must be sent again).
    pub async fn set_target_list(&self, target_id: i64, list_id: i64, forget_members: bool) -> Result<()> {
        let mut tx = self.db.begin().await?;
        sql("UPDATE targets SET list_id = $1, list_checked_at = $2 WHERE id = $3")
            .bind(list_id)
            .bind(now())
            .bind(target_id)
            .execute(&mut tx)
            .await?;
        if forget_members {
            sql("DELETE FROM members WHERE target_id = $1").bind(target_id).execute(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// (list name, other export) for each list of export $1 that another export not removed manages on its connection.
const SHARED_LISTS: &str = "SELECT DISTINCT t.list_name, oe.name FROM exports e \
     JOIN targets t ON t.export_id = e.id AND t.removed_at IS NULL \
     JOIN exports oe ON oe.connection_id = e.connection_id AND oe.id != e.id AND oe.removed_at IS NULL \
     JOIN targets ot ON ot.export_id = oe.id AND ot.removed_at IS NULL AND ot.list_name = t.list_name \
     WHERE e.id = $1 ORDER BY t.list_name, oe.name";

/// One list is managed by one export: refuses (so the caller's transaction rolls back) when a list of `export_id`
/// is managed by another export on the same connection.
async fn check_lists_unshared(tx: &mut Tx, export_id: i64) -> Result<()> {
    let shared: Vec<(String, String)> = sql(SHARED_LISTS).bind(export_id).pairs(&mut *tx).await?;
    match shared.into_iter().next() {
        Some((list, other)) => Err(StoreError::ListManaged { list, other }),
        None => Ok(()),
    }
}

/// Marks the exports matching `filter` (its `$2` bound to `value`) removed and forgets their members, inside `tx`.
pub(super) async fn soft_delete_exports(tx: &mut Tx, filter: &'static str, value: i64) -> Result<Vec<i64>> {
    let ids: Vec<i64> = sql(format!(
        "UPDATE exports SET removed_at = $1, enabled = FALSE, updated_at = $1 WHERE {filter} AND removed_at IS NULL \
         RETURNING id"
    ))
    .bind(now())
    .bind(value)
    .scalars(&mut *tx)
    .await?;
    for id in &ids {
        sql("DELETE FROM members WHERE target_id IN (SELECT id FROM targets WHERE export_id = $1)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    Ok(ids)
}

async fn insert_fields(tx: &mut Tx, export_id: i64, fields: &[FieldMap]) -> Result<()> {
    for (position, f) in fields.iter().enumerate() {
        sql("INSERT INTO export_fields (export_id, position, source_column, iterable_field, field_type, sent_type) \
             VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(export_id)
        .bind(position as i64)
        .bind(&f.column)
        .bind(&f.iterable_field)
        .bind(f.field_type.map(FieldType::as_str))
        .bind(f.sent_type.map(FieldType::as_str))
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// The statements of an edit, inside the caller's transaction.
async fn apply_change(tx: &mut Tx, export_id: i64, c: &ExportChange) -> Result<()> {
    let at = now();
    let changed = sql("UPDATE exports SET email_field = $1, user_id_field = $2, on_leave = $3, null_fields = $4, \
         existing_users_only = $5, schedule = $6, updated_at = $7 WHERE id = $8 AND removed_at IS NULL")
    .bind(c.email_field.as_deref().unwrap_or(""))
    .bind(&c.user_id_field)
    .bind(c.on_leave.as_str())
    .bind(c.null_fields.as_str())
    .bind(c.existing_users_only)
    .bind(&c.schedule)
    .bind(at)
    .bind(export_id)
    .execute(&mut *tx)
    .await?;
    if changed == 0 {
        return Err(StoreError::Conflict(format!("export #{export_id} was removed meanwhile; nothing was changed")));
    }
    sql("DELETE FROM export_fields WHERE export_id = $1").bind(export_id).execute(&mut *tx).await?;
    insert_fields(&mut *tx, export_id, &c.fields).await?;
    for segment_id in &c.detach_segment_ids {
        sql("DELETE FROM members WHERE target_id IN \
             (SELECT id FROM targets WHERE export_id = $1 AND segment_id = $2 AND removed_at IS NULL)")
        .bind(export_id)
        .bind(segment_id)
        .execute(&mut *tx)
        .await?;
        sql("UPDATE targets SET removed_at = $1 WHERE export_id = $2 AND segment_id = $3 AND removed_at IS NULL")
            .bind(at)
            .bind(export_id)
            .bind(segment_id)
            .execute(&mut *tx)
            .await?;
    }
    for segment_id in &c.attach_segment_ids {
        sql("INSERT INTO targets (export_id, segment_id, position, list_name) \
             SELECT $1, id, (SELECT COALESCE(MAX(position), -1) + 1 FROM targets WHERE export_id = $1), name \
             FROM segments WHERE id = $2")
        .bind(export_id)
        .bind(segment_id)
        .execute(&mut *tx)
        .await?;
    }
    check_lists_unshared(&mut *tx, export_id).await
}
