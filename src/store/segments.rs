//! Segments: named queries over customer profiles.

use chrono::{DateTime, Utc};

use super::{now, Result, Store, StoreError};

#[derive(Clone, sqlx::FromRow)]
pub struct Segment {
    pub id: i64,
    pub name: String,
    /// The source as stored (`sqlite:PATH`, a postgres URL, `csv:PATH`, `jsonl:PATH`). May hold a password: show
    /// it only through `SourceSpec`'s redacting Display.
    pub source: String,
    pub query: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The stored source may hold a database password: show it only through the redacting Display.
        let source =
            self.source.parse::<crate::source::SourceSpec>().map_or_else(|_| "(unparsable)".into(), |s| s.to_string());
        f.debug_struct("Segment")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("source", &source)
            .finish_non_exhaustive()
    }
}

impl Store {
    pub async fn add_segment(&self, name: &str, source: &str, query: Option<&str>) -> Result<Segment> {
        super::names::check_segment_name(name).map_err(|problem| StoreError::InvalidName {
            what: "segment",
            name: name.into(),
            problem,
        })?;
        sqlx::query("INSERT INTO segments (name, source, query, created_at) VALUES (?, ?, ?, ?)")
            .bind(name)
            .bind(source)
            .bind(query)
            .bind(now())
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::on_insert(e, "segment", name))?;
        self.segment(name).await
    }

    pub async fn segments(&self) -> Result<Vec<Segment>> {
        Ok(sqlx::query_as("SELECT id, name, source, query, created_at FROM segments ORDER BY name")
            .fetch_all(&self.pool)
            .await?)
    }

    pub async fn segment(&self, name: &str) -> Result<Segment> {
        sqlx::query_as("SELECT id, name, source, query, created_at FROM segments WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::not_found("segment", name, "segment list"))
    }

    /// Removes a segment that no export uses.
    pub async fn remove_segment(&self, name: &str) -> Result<()> {
        let segment = self.segment(name).await?;
        let users: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT e.name FROM targets t JOIN exports e ON e.id = t.export_id WHERE t.segment_id = ? ORDER BY e.name",
        )
        .bind(segment.id)
        .fetch_all(&self.pool)
        .await?;
        if !users.is_empty() {
            return Err(StoreError::Conflict(format!(
                "segment '{name}' is used by export(s) {}. Remove it from them first (`export remove NAME`).",
                users.join(", ")
            )));
        }
        sqlx::query("DELETE FROM segments WHERE id = ?").bind(segment.id).execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn a_segments_debug_output_hides_the_database_password() {
        let (_dir, store) = crate::store::test_support::temp_store().await;
        let seg = store.add_segment("s", "postgres://reader:hunter2@db.example/crm", Some("SELECT 1")).await.unwrap();
        let shown = format!("{seg:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("db.example"), "{shown}");
    }
}
