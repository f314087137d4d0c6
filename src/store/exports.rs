//! Exports: which connection, which email column and fields, which segments, and each segment's target list.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

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

/// A profile column sent as an Iterable data field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldMap {
    pub column: String,
    pub iterable_field: String,
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
}

#[derive(Debug, Clone, Serialize)]
pub struct Export {
    pub id: i64,
    pub name: String,
    pub connection_id: Option<i64>,
    pub connection_name: Option<String>,
    pub email_field: String,
    pub on_leave: OnLeave,
    pub schedule: String,
    pub enabled: bool,
    pub fields: Vec<FieldMap>,
    pub targets: Vec<Target>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewExport {
    pub name: String,
    pub connection_id: i64,
    pub email_field: String,
    pub on_leave: OnLeave,
    pub schedule: String,
    pub segment_ids: Vec<i64>,
    pub fields: Vec<FieldMap>,
}

impl Store {
    pub async fn add_export(&self, e: &NewExport) -> Result<Export> {
        super::names::check_export_name(&e.name).map_err(|problem| StoreError::InvalidName {
            what: "export",
            name: e.name.clone(),
            problem,
        })?;
        let mut tx = self.pool.begin().await?;
        let at = now();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO exports (name, connection_id, email_field, on_leave, schedule, enabled, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?, 1, ?, ?) RETURNING id",
        )
        .bind(&e.name)
        .bind(e.connection_id)
        .bind(&e.email_field)
        .bind(e.on_leave.as_str())
        .bind(&e.schedule)
        .bind(at)
        .bind(at)
        .fetch_one(&mut *tx)
        .await
        .map_err(|err| StoreError::on_insert(err, "export", &e.name))?;
        for (position, f) in e.fields.iter().enumerate() {
            sqlx::query(
                "INSERT INTO export_fields (export_id, position, source_column, iterable_field) VALUES (?, ?, ?, ?)",
            )
            .bind(id)
            .bind(position as i64)
            .bind(&f.column)
            .bind(&f.iterable_field)
            .execute(&mut *tx)
            .await?;
        }
        for (position, segment_id) in e.segment_ids.iter().enumerate() {
            sqlx::query(
                "INSERT INTO targets (export_id, segment_id, position, list_name) \
                 SELECT ?, id, ?, name FROM segments WHERE id = ?",
            )
            .bind(id)
            .bind(position as i64)
            .bind(segment_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.export(&e.name).await
    }

    pub async fn export_names(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT name FROM exports ORDER BY name").fetch_all(&self.pool).await?)
    }

    pub async fn exports(&self) -> Result<Vec<Export>> {
        let mut out = Vec::new();
        for name in self.export_names().await? {
            out.push(self.export(&name).await?);
        }
        Ok(out)
    }

    pub async fn export(&self, name: &str) -> Result<Export> {
        let row = sqlx::query(
            "SELECT e.id, e.name, e.connection_id, c.name AS connection_name, e.email_field, e.on_leave, e.schedule, \
             e.enabled, e.created_at, e.updated_at FROM exports e LEFT JOIN connections c ON c.id = e.connection_id \
             WHERE e.name = ?",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::not_found("export", name, "export list"))?;
        let id: i64 = row.try_get("id")?;
        let fields = sqlx::query(
            "SELECT source_column, iterable_field FROM export_fields WHERE export_id = ? ORDER BY position",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| Ok(FieldMap { column: r.try_get(0)?, iterable_field: r.try_get(1)? }))
        .collect::<Result<Vec<_>>>()?;
        let targets = sqlx::query(
            "SELECT t.id, t.segment_id, s.name, t.list_name, t.list_id, t.list_checked_at FROM targets t \
             JOIN segments s ON s.id = t.segment_id WHERE t.export_id = ? ORDER BY t.position",
        )
        .bind(id)
        .fetch_all(&self.pool)
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
            })
        })
        .collect::<Result<Vec<_>>>()?;
        let on_leave: String = row.try_get("on_leave")?;
        Ok(Export {
            id,
            name: row.try_get("name")?,
            connection_id: row.try_get("connection_id")?,
            connection_name: row.try_get("connection_name")?,
            email_field: row.try_get("email_field")?,
            on_leave: match on_leave.as_str() {
                "remove" => OnLeave::Remove,
                "keep" => OnLeave::Keep,
                other => return Err(StoreError::unknown_value("exports", "on_leave", other)),
            },
            schedule: row.try_get("schedule")?,
            enabled: row.try_get("enabled")?,
            fields,
            targets,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        })
    }

    /// Deletes an export with its targets, member records and run history.
    pub async fn remove_export(&self, name: &str) -> Result<()> {
        let export = self.export(name).await?;
        sqlx::query("DELETE FROM exports WHERE id = ?").bind(export.id).execute(&self.pool).await?;
        Ok(())
    }

    /// Records that a run saw the target's list in Iterable just now.
    pub async fn mark_list_seen(&self, target_id: i64) -> Result<()> {
        sqlx::query("UPDATE targets SET list_checked_at = ? WHERE id = ?")
            .bind(now())
            .bind(target_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records the Iterable list a target writes to. With `forget_members`, what was known about the old list's
    /// members is dropped (the list was recreated, so all members must be sent again).
    pub async fn set_target_list(&self, target_id: i64, list_id: i64, forget_members: bool) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE targets SET list_id = ?, list_checked_at = ? WHERE id = ?")
            .bind(list_id)
            .bind(now())
            .bind(target_id)
            .execute(&mut *tx)
            .await?;
        if forget_members {
            sqlx::query("DELETE FROM members WHERE target_id = ?").bind(target_id).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
