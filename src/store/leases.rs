//! Run leases and the replicas that hold them (PostgreSQL stores, shared by several daemons).
//!
//! A lease says which process runs an export now: its holder, an expiry on the database's clock (so hosts whose
//! clocks disagree still agree on it) and a fencing number that grows with every new holder. The holder renews it;
//! a lease not renewed in time is lost, and another process may take it. Taking a lease that was lost (not let go)
//! says how long to wait before sending anything: a request of the old holder may still be in flight. Writes of a
//! run go through a store fenced with its lease (`Store::fenced`), so a holder that lost it records nothing more.
//!
//! SQLite stores have no leases: one host, and an OS file lock per export (`crate::sync::RunLock`) does the job.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::db::{sql, Fence};
use super::{Result, Store, StoreError};

/// A lease taken.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseGrant {
    pub fence: Fence,
    /// Wait this long before sending anything: the previous holder lost the lease without letting go, and a
    /// request of its may still land.
    pub settle: Duration,
    /// The previous holder lost it (it did not let go): its run, if one was recorded, is left for this one to end.
    pub taken_over: bool,
}

/// Who holds the lease of an export now, while it is live.
#[derive(Debug, Clone)]
pub struct LeaseHolder {
    pub holder: String,
    pub run_id: Option<i64>,
    /// The holder's last published progress (JSON), written with its renewals.
    pub progress: Option<String>,
    pub expires_at: DateTime<Utc>,
}

/// A daemon sharing the store, as it last said.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replica {
    pub id: String,
    pub host: String,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
    pub version: String,
    pub schema_version: i64,
    /// Digest of the settings that shape a run (`[iterable]`, `[sync]`, `daemon.time_zone`).
    pub settings: String,
    /// JSON: runs held, exports skipped and why, stopping.
    pub status: String,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Store {
    /// The same store, its writes fenced by `fence`: once the lease is another's, they fail (`is_fenced`).
    pub fn fenced(&self, fence: Fence) -> Store {
        Store { db: self.db.fenced(fence), path: self.path.clone() }
    }

    /// Takes the lease of export `export_id` for `holder`, unless another holds it live. `settle_after` is how
    /// long after a lost lease's expiry nothing may be sent (`iterable.timeout`).
    pub async fn take_lease(
        &self,
        export_id: i64,
        holder: &str,
        ttl: Duration,
        settle_after: Duration,
    ) -> Result<Option<LeaseGrant>> {
        // Never wait on the lease row: a holder's write holds it for milliseconds, and a frozen holder's until the
        // server ends its idle transaction; either way the export counts as busy now, and is asked again shortly.
        let mut tx = self.db.begin_unfenced().await?;
        sql("SET LOCAL lock_timeout = '300ms'").execute(&mut tx).await?;
        // A takeover waits for the writes fenced by the old lease (they hold the row `FOR KEY SHARE`): an upsert
        // that changes no key would not.
        let locked =
            sql("SELECT 1 FROM run_leases WHERE export_id = $1 FOR UPDATE").bind(export_id).execute(&mut tx).await;
        match locked {
            Ok(_) => {}
            // 55P03: lock_not_available.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let taken = sql(
            "INSERT INTO run_leases (export_id, holder, fence, expires_at, renewed_at) \
             VALUES ($1, $2, 1, clock_timestamp() + make_interval(secs => $3), clock_timestamp()) \
             ON CONFLICT (export_id) DO UPDATE SET holder = EXCLUDED.holder, fence = run_leases.fence + 1, \
             expires_at = EXCLUDED.expires_at, renewed_at = EXCLUDED.renewed_at, run_id = NULL, progress = NULL, \
             lost_at = CASE WHEN run_leases.holder IS NOT NULL THEN run_leases.expires_at ELSE run_leases.lost_at END \
             WHERE run_leases.holder IS NULL OR run_leases.expires_at <= clock_timestamp() \
             RETURNING fence, lost_at IS NOT NULL AS lost, \
             CAST(GREATEST(0, COALESCE(EXTRACT(EPOCH FROM (lost_at + make_interval(secs => $4) - clock_timestamp())), 0)) \
             AS DOUBLE PRECISION) AS settle",
        )
        .bind(export_id)
        .bind(holder)
        .bind(secs(ttl))
        .bind(secs(settle_after))
        .fetch_optional(&mut tx)
        .await;
        let row = match taken {
            Ok(row) => row,
            // 55P03: lock_not_available.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        tx.commit().await?;
        let Some(row) = row else { return Ok(None) };
        let settle: f64 = row.try_get("settle")?;
        Ok(Some(LeaseGrant {
            fence: Fence { export_id, holder: holder.to_string(), number: row.try_get("fence")? },
            settle: Duration::from_secs_f64(settle.max(0.0)),
            taken_over: row.try_get("lost")?,
        }))
    }

    /// Renews a lease held, publishing the run's progress with it. False when it is no longer this holder's (it
    /// expired first, and another may have it): the run must stop at once.
    pub async fn renew_lease(&self, fence: &Fence, ttl: Duration, progress: Option<&str>) -> Result<bool> {
        Ok(sql("UPDATE run_leases SET expires_at = clock_timestamp() + make_interval(secs => $4), \
             renewed_at = clock_timestamp(), progress = COALESCE($5, progress) \
             WHERE export_id = $1 AND holder = $2 AND fence = $3 AND expires_at > clock_timestamp()")
        .bind(fence.export_id)
        .bind(&fence.holder)
        .bind(fence.number)
        .bind(secs(ttl))
        .bind(progress)
        .execute(&self.db)
        .await?
            == 1)
    }

    /// Records which run the lease holder is running (for every daemon's `/status` and `GET /runs/ID`).
    pub async fn set_lease_run(&self, fence: &Fence, run_id: i64) -> Result<()> {
        sql("UPDATE run_leases SET run_id = $4 WHERE export_id = $1 AND holder = $2 AND fence = $3")
            .bind(fence.export_id)
            .bind(&fence.holder)
            .bind(fence.number)
            .bind(run_id)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// Lets a lease go. `clean`: no request of the holder is in flight any more, so the next holder may send at
    /// once; otherwise it waits as after a lost lease.
    pub async fn release_lease(&self, fence: &Fence, clean: bool) -> Result<()> {
        sql("UPDATE run_leases SET holder = NULL, expires_at = NULL, run_id = NULL, progress = NULL, \
             lost_at = CASE WHEN $4 THEN NULL ELSE clock_timestamp() END \
             WHERE export_id = $1 AND holder = $2 AND fence = $3")
        .bind(fence.export_id)
        .bind(&fence.holder)
        .bind(fence.number)
        .bind(clean)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Who holds export `export_id`'s lease, while it is live (never anyone on SQLite, which has no leases).
    pub async fn lease_holder(&self, export_id: i64) -> Result<Option<LeaseHolder>> {
        if self.db.kind() == super::Kind::Sqlite {
            return Ok(None);
        }
        let row = sql("SELECT holder, run_id, progress, expires_at FROM run_leases \
             WHERE export_id = $1 AND holder IS NOT NULL AND expires_at > clock_timestamp()")
        .bind(export_id)
        .fetch_optional(&self.db)
        .await?;
        row.map(|r| {
            Ok(LeaseHolder {
                holder: r.try_get("holder")?,
                run_id: r.try_get("run_id")?,
                progress: r.try_get("progress")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    /// The live lease of the run `run_id`, if one holds it.
    pub async fn lease_of_run(&self, run_id: i64) -> Result<Option<LeaseHolder>> {
        if self.db.kind() == super::Kind::Sqlite {
            return Ok(None);
        }
        let export_id: Option<i64> = sql("SELECT export_id FROM run_leases WHERE run_id = $1 AND holder IS NOT NULL \
             AND expires_at > clock_timestamp()")
        .bind(run_id)
        .scalar_optional(&self.db)
        .await?;
        match export_id {
            Some(id) => self.lease_holder(id).await,
            None => Ok(None),
        }
    }

    /// Exports whose holder lost its lease (it expired, not let go): their runs wait for another daemon.
    pub async fn lost_leases(&self) -> Result<Vec<i64>> {
        Ok(sql("SELECT export_id FROM run_leases WHERE holder IS NOT NULL AND expires_at <= clock_timestamp() \
             ORDER BY export_id")
        .scalars(&self.db)
        .await?)
    }

    /// Says this replica is alive, with what it knows and does.
    pub async fn heartbeat(&self, replica: &Replica) -> Result<()> {
        sql("INSERT INTO replicas (id, host, started_at, seen_at, version, schema_version, settings, status) \
             VALUES ($1, $2, $3, clock_timestamp(), $4, $5, $6, $7) \
             ON CONFLICT (id) DO UPDATE SET seen_at = clock_timestamp(), version = EXCLUDED.version, \
             schema_version = EXCLUDED.schema_version, settings = EXCLUDED.settings, status = EXCLUDED.status")
        .bind(&replica.id)
        .bind(&replica.host)
        .bind(replica.started_at)
        .bind(&replica.version)
        .bind(replica.schema_version)
        .bind(&replica.settings)
        .bind(&replica.status)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Forgets a replica (it stopped cleanly).
    pub async fn forget_replica(&self, id: &str) -> Result<()> {
        sql("DELETE FROM replicas WHERE id = $1").bind(id).execute(&self.db).await?;
        Ok(())
    }

    /// The replicas seen within `recent`, newest first; older rows are removed.
    pub async fn replicas(&self, recent: Duration) -> Result<Vec<Replica>> {
        sql("DELETE FROM replicas WHERE seen_at < clock_timestamp() - make_interval(secs => $1)")
            .bind(secs(recent))
            .execute(&self.db)
            .await?;
        let rows =
            sql("SELECT id, host, started_at, seen_at, version, schema_version, settings, status FROM replicas \
             ORDER BY started_at, id")
            .fetch_all(&self.db)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Replica {
                    id: r.try_get("id")?,
                    host: r.try_get("host")?,
                    started_at: r.try_get("started_at")?,
                    seen_at: r.try_get("seen_at")?,
                    version: r.try_get("version")?,
                    schema_version: r.try_get("schema_version")?,
                    settings: r.try_get("settings")?,
                    status: r.try_get("status")?,
                })
            })
            .collect()
    }

    /// The newest schema version applied to the store (PostgreSQL), for the check a replica makes with its
    /// renewals.
    pub async fn schema_version(&self) -> Result<i64> {
        Ok(sql("SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success").scalar(&self.db).await?)
    }

    /// Whether this is a store fenced writes were refused on (`StoreError::Sql` of a fenced write).
    pub fn fenced_out(error: &StoreError) -> bool {
        matches!(error, StoreError::Sql(e) if super::db::is_fenced(e))
    }
}

/// The lock of one connection's lists across every daemon (PostgreSQL): a session advisory lock on a connection of
/// its own, touched every few seconds while held. A process that dies lets go with its connection; one that
/// freezes stops touching it, and the server ends the idle session (`idle_session_timeout`), letting go too.
pub struct ListsLock {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for ListsLock {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Advisory lock keys of connections' lists: this prefix in the high 32 bits, the connection id in the low.
const LISTS_LOCK_SPACE: i64 = 0x4c49_5354 << 32; // "LIST"

/// How often a held lists lock is touched, and how long the server waits for a touch before ending the session.
const LISTS_LOCK_TOUCH: Duration = Duration::from_secs(2);
const LISTS_LOCK_IDLE: Duration = Duration::from_secs(15);

impl Store {
    /// Waits until this process holds the lock of connection `connection_id`'s lists (PostgreSQL), trying every
    /// `retry`; None when `cancel` ends the wait first.
    pub async fn lock_lists(
        &self,
        connection_id: i64,
        retry: Duration,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<Option<ListsLock>> {
        let Some(pool) = self.db.postgres() else { return Ok(None) };
        let mut conn = pool.acquire().await?.detach();
        // Not every server has it (PostgreSQL 14 and later do); without it a frozen holder keeps the lock longer.
        let idle = format!("SET idle_session_timeout = {}", LISTS_LOCK_IDLE.as_millis());
        let _ = sqlx::query(&idle).execute(&mut conn).await;
        let key = LISTS_LOCK_SPACE | (connection_id & 0xffff_ffff);
        loop {
            let got: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut conn).await?;
            if got {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(retry) => {}
                _ = cancel.cancelled() => return Ok(None),
            }
        }
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(LISTS_LOCK_TOUCH) => {
                        if sqlx::query("SELECT 1").execute(&mut conn).await.is_err() {
                            return;
                        }
                    }
                    _ = &mut stopped => break,
                }
            }
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut conn).await;
            let _ = sqlx::Connection::close(conn).await;
        });
        Ok(Some(ListsLock { stop: Some(stop) }))
    }
}

impl Store {
    /// Every live lease: (export id, holder, run id, progress JSON).
    pub async fn live_leases(&self) -> Result<Vec<(i64, LeaseHolder)>> {
        if self.db.kind() == super::Kind::Sqlite {
            return Ok(vec![]);
        }
        let rows = sql("SELECT export_id, holder, run_id, progress, expires_at FROM run_leases \
             WHERE holder IS NOT NULL AND expires_at > clock_timestamp() ORDER BY export_id")
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("export_id")?,
                    LeaseHolder {
                        holder: r.try_get("holder")?,
                        run_id: r.try_get("run_id")?,
                        progress: r.try_get("progress")?,
                        expires_at: r.try_get("expires_at")?,
                    },
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::test_support::{an_export, temp_postgres_store};

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    #[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
    async fn postgres_renewals_never_wait_behind_the_runs_own_fenced_writes_and_a_takeover_does() {
        let (_db, store) = temp_postgres_store().await;
        let export = an_export(&store).await;
        let grant = store.take_lease(export.id, "a", TTL, Duration::ZERO).await.unwrap().expect("a free lease");
        // A fenced write in progress, as sixteen concurrent batches of a large run keep one open at every moment.
        let fenced = store.fenced(grant.fence.clone());
        let mut open = fenced.db.begin().await.unwrap();
        sql("SELECT 1").execute(&mut open).await.unwrap();
        let renewed = tokio::time::timeout(Duration::from_secs(5), store.renew_lease(&grant.fence, TTL, None)).await;
        assert!(matches!(renewed, Ok(Ok(true))), "the renewal waited behind the holder's own write: {renewed:?}");
        // Expired now: another daemon may take it over, but only once the write that checked the old fence ended.
        sql("UPDATE run_leases SET expires_at = clock_timestamp() - INTERVAL '1 second' WHERE export_id = $1")
            .bind(export.id)
            .execute(&store.db)
            .await
            .unwrap();
        let taken = store.take_lease(export.id, "b", TTL, Duration::ZERO).await.unwrap();
        assert!(taken.is_none(), "taken over while a write fenced by the old lease was still open");
        open.rollback().await.unwrap();
        let taken = store.take_lease(export.id, "b", TTL, Duration::ZERO).await.unwrap().expect("free once it ended");
        assert_eq!(taken.fence.number, grant.fence.number + 1);
        assert!(taken.taken_over);
    }
}
