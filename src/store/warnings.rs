//! Run warnings: what a run wants its reader to know that is neither its error nor about one member (the fields
//! Iterable dropped, say). Each warning is kept once per run.

use super::db::sql;
use super::{Result, Store};

impl Store {
    /// Records a warning of a run; the same warning twice is kept once.
    pub async fn record_run_warning(&self, run_id: i64, warning: &str) -> Result<()> {
        sql("INSERT OR IGNORE INTO run_warnings (run_id, warning) VALUES ($1, $2)")
            .bind(run_id)
            .bind(warning)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// A run's warnings, in the order they were recorded.
    pub async fn run_warnings(&self, run_id: i64) -> Result<Vec<String>> {
        Ok(sql("SELECT warning FROM run_warnings WHERE run_id = $1 ORDER BY rowid")
            .bind(run_id)
            .scalars(&self.db)
            .await?)
    }
}
