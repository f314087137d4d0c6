//! Run requests and scheduled ticks: the rows of the run queue (`crate::queue` owns the rules; this file only
//! stores them). At most one request per export is `queued`; a new one merges into it.

use super::db::{sql, Row, Tx};
use chrono::{DateTime, Utc};

use super::{now, Result, Store, StoreError};

/// What became of a run request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Waiting to be taken.
    Queued,
    /// Taken: a run started (or is starting) for it.
    Started,
    /// It could not start (the export has no connection, a scheduled run without an export user, ...).
    NotStarted,
}

impl RequestState {
    fn parse(s: &str) -> Result<RequestState> {
        match s {
            "queued" => Ok(RequestState::Queued),
            "started" => Ok(RequestState::Started),
            "not_started" => Ok(RequestState::NotStarted),
            other => Err(StoreError::unknown_value("run_requests", "state", other)),
        }
    }
}

/// Why a queued request has not started yet, as the process that looked at it last found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitingFor {
    /// The export is running: this request is its one follow-up.
    CurrentRun,
    /// Every slot (`daemon.max_concurrent_runs`) is taken.
    FreeSlot,
    /// A process that is not a daemon (an `export run`) runs the export.
    AnotherProcess,
}

impl WaitingFor {
    fn as_str(self) -> &'static str {
        match self {
            WaitingFor::CurrentRun => "current_run",
            WaitingFor::FreeSlot => "free_slot",
            WaitingFor::AnotherProcess => "another_process",
        }
    }

    fn parse(s: &str) -> Result<WaitingFor> {
        match s {
            "current_run" => Ok(WaitingFor::CurrentRun),
            "free_slot" => Ok(WaitingFor::FreeSlot),
            "another_process" => Ok(WaitingFor::AnotherProcess),
            other => Err(StoreError::unknown_value("run_requests", "waiting_for", other)),
        }
    }
}

/// A new request for a run of one export.
#[derive(Debug, Clone)]
pub struct NewRunRequest<'a> {
    pub export_id: i64,
    pub trigger: &'a str,
    pub requested_by: Option<&'a str>,
    pub note: Option<&'a str>,
    pub full: bool,
    pub allow_mass_removal: bool,
    pub allow_mass_addition: bool,
    /// A run is asked for (false for a request that asks only for a verify).
    pub wants_run: bool,
    /// A verify of the export's lists is asked for (`crate::sync::VerifyOptions`), with these options.
    pub verify: bool,
    pub repair: bool,
    pub remove_lingering: bool,
}

impl Default for NewRunRequest<'_> {
    /// A request for a run, and nothing else.
    fn default() -> Self {
        NewRunRequest {
            export_id: 0,
            trigger: "",
            requested_by: None,
            note: None,
            full: false,
            allow_mass_removal: false,
            allow_mass_addition: false,
            wants_run: true,
            verify: false,
            repair: false,
            remove_lingering: false,
        }
    }
}

/// A stored run request.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub id: i64,
    pub export_id: i64,
    pub export_name: String,
    pub trigger: String,
    pub requested_by: Option<String>,
    pub note: Option<String>,
    pub full: bool,
    pub allow_mass_removal: bool,
    pub allow_mass_addition: bool,
    pub wants_run: bool,
    pub verify: bool,
    pub repair: bool,
    pub remove_lingering: bool,
    /// Later requests merged into this one.
    pub merged: i64,
    pub state: RequestState,
    pub waiting_for: Option<WaitingFor>,
    pub requested_at: DateTime<Utc>,
    pub run_id: Option<i64>,
    pub reason: Option<String>,
}

const SELECT_REQUEST: &str = "SELECT q.id, q.export_id, e.name AS export_name, q.trigger, q.requested_by, q.note, \
     q.full_resync, q.allow_mass_removal, q.allow_mass_addition, q.merged, q.state, q.waiting_for, q.requested_at, q.run_id, q.reason, \
     q.wants_run, q.verify, q.repair, q.remove_lingering \
     FROM run_requests q JOIN exports e ON e.id = q.export_id";

fn request_from(row: &Row) -> Result<RunRequest> {
    Ok(RunRequest {
        id: row.try_get("id")?,
        export_id: row.try_get("export_id")?,
        export_name: row.try_get("export_name")?,
        trigger: row.try_get("trigger")?,
        requested_by: row.try_get("requested_by")?,
        note: row.try_get("note")?,
        full: row.try_get("full_resync")?,
        allow_mass_removal: row.try_get("allow_mass_removal")?,
        allow_mass_addition: row.try_get("allow_mass_addition")?,
        wants_run: row.try_get("wants_run")?,
        verify: row.try_get("verify")?,
        repair: row.try_get("repair")?,
        remove_lingering: row.try_get("remove_lingering")?,
        merged: row.try_get("merged")?,
        state: RequestState::parse(&row.try_get::<String, _>("state")?)?,
        waiting_for: row.try_get::<Option<String>, _>("waiting_for")?.as_deref().map(WaitingFor::parse).transpose()?,
        requested_at: row.try_get("requested_at")?,
        run_id: row.try_get("run_id")?,
        reason: row.try_get("reason")?,
    })
}

/// Finished requests and scheduled ticks are kept this long, to answer "what became of it" and to keep a tick
/// from firing twice; then pruned.
const KEEP_DECIDED: chrono::TimeDelta = chrono::TimeDelta::days(2);

impl Store {
    /// Queues a request, or merges it into the export's queued one (options OR-ed). Returns the request's id and
    /// whether it merged.
    pub async fn enqueue_run(&self, request: &NewRunRequest<'_>) -> Result<(i64, bool)> {
        let mut tx = self.db.begin().await?;
        let queued = enqueue(&mut tx, request).await?;
        tx.commit().await?;
        Ok(queued)
    }

    /// Queues the run of a scheduled time `due_at` of an export, unless that time was queued already (by this
    /// process or another): each scheduled time runs once. Returns the request, or None when it was queued before.
    pub async fn enqueue_scheduled_run(
        &self,
        request: &NewRunRequest<'_>,
        due_at: DateTime<Utc>,
    ) -> Result<Option<(i64, bool)>> {
        let mut tx = self.db.begin().await?;
        let fresh = sql("INSERT INTO schedule_ticks (export_id, due_at) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(request.export_id)
            .bind(due_at)
            .execute(&mut tx)
            .await?
            == 1;
        if !fresh {
            return Ok(None);
        }
        let queued = enqueue(&mut tx, request).await?;
        tx.commit().await?;
        Ok(Some(queued))
    }

    /// The queued requests, oldest first.
    pub async fn queued_requests(&self) -> Result<Vec<RunRequest>> {
        let text = format!("{SELECT_REQUEST} WHERE q.state = 'queued' ORDER BY q.id");
        sql(&text).fetch_all(&self.db).await?.iter().map(request_from).collect()
    }

    pub async fn run_request(&self, id: i64) -> Result<RunRequest> {
        let text = format!("{SELECT_REQUEST} WHERE q.id = $1");
        match sql(&text).bind(id).fetch_optional(&self.db).await? {
            Some(row) => request_from(&row),
            None => Err(StoreError::not_found("run request", &id.to_string(), "runs")),
        }
    }

    /// Whether a request of this export waits.
    pub async fn queued_request_of(&self, export_id: i64) -> Result<Option<RunRequest>> {
        let text = format!("{SELECT_REQUEST} WHERE q.state = 'queued' AND q.export_id = $1");
        sql(&text).bind(export_id).fetch_optional(&self.db).await?.as_ref().map(request_from).transpose()
    }

    /// Records why a queued request has not started yet.
    pub async fn set_request_waiting(&self, id: i64, waiting_for: WaitingFor) -> Result<()> {
        sql("UPDATE run_requests SET waiting_for = $1 WHERE id = $2 AND state = 'queued'")
            .bind(waiting_for.as_str())
            .bind(id)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// Takes a queued request for process `claimer`; false when another took it (or it merged away) first.
    pub async fn claim_request(&self, id: i64, claimer: &str) -> Result<bool> {
        Ok(sql("UPDATE run_requests SET state = 'started', waiting_for = NULL, decided_at = $1, claimed_by = $2 \
             WHERE id = $3 AND state = 'queued'")
        .bind(now())
        .bind(claimer)
        .bind(id)
        .execute(&self.db)
        .await?
            == 1)
    }

    /// A request that cannot start, and why (with the run that recorded the refusal, if one did).
    pub async fn refuse_request(&self, id: i64, reason: &str, run_id: Option<i64>) -> Result<()> {
        sql("UPDATE run_requests SET state = 'not_started', waiting_for = NULL, decided_at = $1, reason = $2, \
             run_id = $3 WHERE id = $4 AND state != 'started'")
        .bind(now())
        .bind(reason)
        .bind(run_id)
        .bind(id)
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// A taken request whose run did not start after all (the export was busy by the time it tried, or the
    /// process is stopping): queued again, unless another request of the export is queued meanwhile, which it
    /// then merges into.
    pub async fn requeue_request(&self, id: i64) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let Some(row) =
            sql("SELECT export_id, full_resync, allow_mass_removal, wants_run, verify, repair, remove_lingering, \
             allow_mass_addition FROM run_requests WHERE id = $1 AND state = 'started' AND run_id IS NULL")
            .bind(id)
            .fetch_optional(&mut tx)
            .await?
        else {
            return Ok(());
        };
        let (export_id, full, allow): (i64, bool, bool) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let (wants_run, verify, repair, remove_lingering): (bool, bool, bool, bool) =
            (row.try_get(3)?, row.try_get(4)?, row.try_get(5)?, row.try_get(6)?);
        let allow_addition: bool = row.try_get(7)?;
        let merged = sql(
            "UPDATE run_requests SET full_resync = full_resync OR $1, allow_mass_removal = allow_mass_removal OR $2, \
             wants_run = wants_run OR $4, verify = verify OR $5, repair = repair OR $6, \
             remove_lingering = remove_lingering OR $7, allow_mass_addition = allow_mass_addition OR $8, \
             merged = merged + 1 WHERE export_id = $3 AND state = 'queued'",
        )
        .bind(full)
        .bind(allow)
        .bind(export_id)
        .bind(wants_run)
        .bind(verify)
        .bind(repair)
        .bind(remove_lingering)
        .bind(allow_addition)
        .execute(&mut tx)
        .await?;
        if merged == 1 {
            sql("UPDATE run_requests SET state = 'not_started', reason = 'merged into a later request', \
                 decided_at = $1 WHERE id = $2")
            .bind(now())
            .bind(id)
            .execute(&mut tx)
            .await?;
        } else {
            sql("UPDATE run_requests SET state = 'queued', claimed_by = NULL, decided_at = NULL WHERE id = $1")
                .bind(id)
                .execute(&mut tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Requests taken more than a minute ago whose run never started (the process that took them stopped in
    /// between): queued again.
    pub async fn requeue_abandoned_requests(&self) -> Result<()> {
        let ids: Vec<i64> =
            sql("SELECT id FROM run_requests WHERE state = 'started' AND run_id IS NULL AND decided_at < $1")
                .bind(now() - chrono::TimeDelta::minutes(1))
                .scalars(&self.db)
                .await?;
        for id in ids {
            self.requeue_request(id).await?;
        }
        Ok(())
    }

    /// Wakes every daemon listening on a PostgreSQL store (an export was let go: its follow-up may start). Nothing
    /// on SQLite, where one process takes the runs.
    pub async fn notify_queue(&self) -> Result<()> {
        if self.db.kind() == super::Kind::Postgres {
            sql("SELECT pg_notify($1, '')").bind(QUEUE_CHANNEL).execute(&self.db).await?;
        }
        Ok(())
    }

    /// Listens for queue notifications (PostgreSQL stores); None on SQLite.
    pub async fn listen_queue(&self) -> Result<Option<sqlx::postgres::PgListener>> {
        let Some(pool) = self.db.postgres() else { return Ok(None) };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
        listener.listen(QUEUE_CHANNEL).await?;
        Ok(Some(listener))
    }

    /// Drops requests decided, and scheduled ticks due, more than two days ago.
    pub async fn prune_requests(&self) -> Result<()> {
        let cutoff = now() - KEEP_DECIDED;
        sql("DELETE FROM run_requests WHERE state != 'queued' AND decided_at < $1")
            .bind(cutoff)
            .execute(&self.db)
            .await?;
        sql("DELETE FROM schedule_ticks WHERE due_at < $1").bind(cutoff).execute(&self.db).await?;
        Ok(())
    }
}

/// The channel daemons on a PostgreSQL store listen on: a request was queued, or an export let go.
pub const QUEUE_CHANNEL: &str = "segment_exporter_queue";

async fn enqueue(tx: &mut Tx, r: &NewRunRequest<'_>) -> Result<(i64, bool)> {
    if tx.kind() == super::Kind::Postgres {
        // Delivered at commit, to every daemon listening.
        sql("SELECT pg_notify($1, '')").bind(QUEUE_CHANNEL).execute(&mut *tx).await?;
    }
    let row = sql(
        "INSERT INTO run_requests (export_id, trigger, requested_by, note, full_resync, allow_mass_removal, state, \
         requested_at, wants_run, verify, repair, remove_lingering, allow_mass_addition) \
         VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $10, $11, $12) \
         ON CONFLICT (export_id) WHERE state = 'queued' DO UPDATE SET \
         full_resync = run_requests.full_resync OR excluded.full_resync, \
         allow_mass_removal = run_requests.allow_mass_removal OR excluded.allow_mass_removal, \
         allow_mass_addition = run_requests.allow_mass_addition OR excluded.allow_mass_addition, \
         wants_run = run_requests.wants_run OR excluded.wants_run, verify = run_requests.verify OR excluded.verify, \
         repair = run_requests.repair OR excluded.repair, \
         remove_lingering = run_requests.remove_lingering OR excluded.remove_lingering, \
         merged = run_requests.merged + 1 \
         RETURNING id, merged",
    )
    .bind(r.export_id)
    .bind(r.trigger)
    .bind(r.requested_by)
    .bind(r.note)
    .bind(r.full)
    .bind(r.allow_mass_removal)
    .bind(now())
    .bind(r.wants_run)
    .bind(r.verify)
    .bind(r.repair)
    .bind(r.remove_lingering)
    .bind(r.allow_mass_addition)
    .fetch_one(&mut *tx)
    .await?;
    Ok((row.try_get(0)?, row.try_get::<i64, _>(1)? > 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{an_export, on_both};

    fn ask(export_id: i64, trigger: &str, full: bool) -> NewRunRequest<'_> {
        NewRunRequest { export_id, trigger, full, ..NewRunRequest::default() }
    }

    on_both! {
    async fn a_verify_asked_for_while_a_run_waits_merges_into_it_and_keeps_both(store: Store) {
        let e = an_export(&store).await;
        let (first, _) = store.enqueue_run(&ask(e.id, "api", false)).await.unwrap();
        let verify = NewRunRequest {
            export_id: e.id,
            trigger: "api",
            wants_run: false,
            verify: true,
            repair: true,
            ..NewRunRequest::default()
        };
        let (again, merged) = store.enqueue_run(&verify).await.unwrap();
        assert_eq!((again, merged), (first, true));
        let r = store.run_request(first).await.unwrap();
        assert!(r.wants_run && r.verify && r.repair && !r.remove_lingering, "{r:?}");
    }
    }

    on_both! {
    async fn a_request_made_while_one_waits_merges_into_it_and_a_taken_one_does_not(store: Store) {
        let e = an_export(&store).await;
        let (first, merged) = store.enqueue_run(&ask(e.id, "api", false)).await.unwrap();
        assert!(!merged);
        let (again, merged) = store.enqueue_run(&ask(e.id, "trigger-file", true)).await.unwrap();
        assert_eq!((again, merged), (first, true), "one request waits per export");
        let r = store.run_request(first).await.unwrap();
        assert!(r.full, "options are OR-ed into the waiting request");
        assert_eq!((r.trigger.as_str(), r.merged, r.state), ("api", 1, RequestState::Queued));

        assert!(store.claim_request(first, "me").await.unwrap());
        assert!(!store.claim_request(first, "someone else").await.unwrap(), "a request is taken once");
        let (next, merged) = store.enqueue_run(&ask(e.id, "api", false)).await.unwrap();
        assert!(next != first && !merged, "once taken, a new request waits on its own (the follow-up)");
        // The taken one could not start after all: it merges into the one waiting now, never two waiting.
        store.requeue_request(first).await.unwrap();
        assert_eq!(store.run_request(first).await.unwrap().state, RequestState::NotStarted);
        let waiting = store.queued_requests().await.unwrap();
        assert_eq!(waiting.len(), 1);
        assert!(waiting[0].full && waiting[0].id == next);
    }
    }

    on_both! {
    async fn a_scheduled_time_is_queued_once_whoever_asks(store: Store) {
        let e = an_export(&store).await;
        let due = chrono::DateTime::parse_from_rfc3339("2026-12-06T02:30:00Z").unwrap().to_utc();
        let first = store.enqueue_scheduled_run(&ask(e.id, "schedule", false), due).await.unwrap();
        assert!(first.is_some());
        let (id, _) = first.unwrap();
        assert!(store.claim_request(id, "a").await.unwrap());
        // Another process's clock fires the same tick after the first request was taken: nothing new is queued.
        assert_eq!(store.enqueue_scheduled_run(&ask(e.id, "schedule", false), due).await.unwrap(), None);
        assert!(store.queued_requests().await.unwrap().is_empty());
        let later = due + chrono::TimeDelta::hours(24);
        assert!(store.enqueue_scheduled_run(&ask(e.id, "schedule", false), later).await.unwrap().is_some());
    }
    }

    on_both! {
    async fn a_run_started_for_a_request_is_linked_to_it(store: Store) {
        let e = an_export(&store).await;
        let (id, _) = store.enqueue_run(&ask(e.id, "api", false)).await.unwrap();
        assert!(store.claim_request(id, "me").await.unwrap());
        let run_id = store.start_requested_run(e.id, "api", false, None, Some(id)).await.unwrap();
        let r = store.run_request(id).await.unwrap();
        assert_eq!((r.state, r.run_id), (RequestState::Started, Some(run_id)));
        // A started request with its run is never put back.
        store.requeue_request(id).await.unwrap();
        assert_eq!(store.run_request(id).await.unwrap().state, RequestState::Started);
    }
    }
}
