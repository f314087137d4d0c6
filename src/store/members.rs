//! Member state and run planning.
//!
//! `members` holds what Iterable has acknowledged per target. A run stages the segment's current members in a
//! temporary table on a dedicated connection (`PlanSession`), diffs them against `members` in SQL, and reads the
//! plan back in chunks, so memory does not grow with the segment. Acknowledged batches are written back to
//! `members` together with the run's counters in one transaction: that record is what makes a killed run resume
//! without losing or repeating work, because the next plan is computed against it.
//!
//! A member is its identity: the `email` column of `members`, `preexisting_members` and the staging tables holds a
//! member key, the normalised email or `userId:` and the user id (`crate::sync::identity` decides which). In a
//! hybrid project a member that keeps its email while its key changes (a row gains, loses or changes its user id)
//! is paired with its old record: it is sent as an update and takes the old record over when acknowledged, never an
//! unsubscribe and a subscribe.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::postgres::PgConnection;
use sqlx::sqlite::SqliteConnection;
use sqlx::{ConnectOptions as _, Connection as _, Postgres, QueryBuilder};

use super::db::{sql, Db, Fence, On, Tx};
use super::{Result, Store, StoreError};

/// What a subscribe of a member does to its list, as far as the store knows: the run's counters keep the three
/// apart, so a run that re-sends every member (a field removed, `--full`, a list adopted with its members) does
/// not say it added them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AddKind {
    /// Not on the list: neither put there by this export nor there when it adopted the list (or the list is new).
    #[default]
    New,
    /// Put there by this export before; sent again because a field changed, `--full`, or a refused update's retry.
    Update,
    /// On the list when this export adopted it.
    AlreadyOnList,
}

impl AddKind {
    /// How `plan_add.kind` holds it.
    const fn code(self) -> i64 {
        match self {
            AddKind::New => 0,
            AddKind::Update => 1,
            AddKind::AlreadyOnList => 2,
        }
    }

    fn parse(code: i64) -> Result<AddKind> {
        [AddKind::New, AddKind::Update, AddKind::AlreadyOnList]
            .into_iter()
            .find(|k| k.code() == code)
            .ok_or_else(|| StoreError::unknown_value("plan_add", "kind", &code.to_string()))
    }
}

/// A member that a run wants on a list: its key, the email sent beside a user id, the hash it is remembered with
/// and its data fields as JSON text; `replaces` is the key of the member's old record when a hybrid member changed
/// key (see the module's note).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedAdd {
    pub seq: i64,
    pub email: String,
    pub paired_email: Option<String>,
    pub fields_hash: i64,
    pub fields: String,
    pub replaces: Option<String>,
    pub kind: AddKind,
}

/// A member whose subscription Iterable acknowledged, or rejected (`email` is its key).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckedMember {
    pub email: String,
    pub fields_hash: i64,
    pub paired_email: Option<String>,
    /// The key of the record this member takes over.
    pub replaces: Option<String>,
    /// Which counter of the run its acknowledgement adds to.
    pub kind: AddKind,
}

impl AckedMember {
    pub fn new(key: impl Into<String>, fields_hash: i64) -> AckedMember {
        AckedMember { email: key.into(), fields_hash, ..AckedMember::default() }
    }
}

impl From<PlannedAdd> for AckedMember {
    fn from(add: PlannedAdd) -> AckedMember {
        AckedMember {
            email: add.email,
            fields_hash: add.fields_hash,
            paired_email: add.paired_email,
            replaces: add.replaces,
            kind: add.kind,
        }
    }
}

/// A member read from a segment, staged for the diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedMember {
    pub key: String,
    pub paired_email: Option<String>,
    pub fields_hash: i64,
    pub fields: String,
}

/// How `PlanSession::compute` plans a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComputeOptions {
    /// Every current member is planned as an add.
    pub full: bool,
    /// Leavers are unsubscribed (else only forgotten).
    pub remove_leavers: bool,
    /// Members refused at or before this Unix time are sent again.
    pub retry_rejected_until: i64,
    /// A new member whose email a leaver had is that leaver under a new key (hybrid projects).
    pub match_by_email: bool,
    /// The list was just created again: every member sent is new on it, whatever was recorded.
    pub fresh_list: bool,
}

/// What one target's plan holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TargetPlan {
    /// Distinct valid members in the segment now.
    pub members: u64,
    /// Members to subscribe that are not on the list (`AddKind::New`).
    pub to_add: u64,
    /// Members to subscribe again that are on the list already (`AddKind::Update` and `AlreadyOnList`).
    pub to_update: u64,
    /// Members to unsubscribe from the list.
    pub to_remove: u64,
    /// Members who left but are not unsubscribed (`--on-leave keep`, or not put there by this export); only
    /// forgotten.
    pub to_forget: u64,
    pub unchanged: u64,
}

/// Members recorded for a target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MemberCounts {
    pub subscribed: u64,
    pub rejected: u64,
}

// SQLite allows 32766 bound variables per statement, PostgreSQL 65535; stay well below.
pub(super) const ROWS_PER_STATEMENT: usize = 2000;

/// Rows per statement of the writes made on the pool (acknowledged batches). On SQLite, each of the pool's
/// connections keeps the statements it prepared, and SQLite's program for a statement grows with its rows: with
/// 2,000-row statements the exporter's peak memory in a million-member first export measured 127 to 151 MB (six
/// runs), with 100-row ones 114 to 131 MB (three runs), at the same speed. PostgreSQL keeps its programs on the
/// server, and there ten statements a batch instead of one made sending a million members a second slower.
fn pooled_rows_per_statement(kind: super::Kind) -> usize {
    match kind {
        super::Kind::Sqlite => 100,
        super::Kind::Postgres => ROWS_PER_STATEMENT,
    }
}

/// Rows the plan connection's worker thread may hand over ahead of us while the plan is read back. sqlx's default
/// (50) makes the two threads trade places every few rows; reading a million planned adds spent more time in those
/// hand-offs than in SQLite.
const PLAN_ROW_BUFFER: usize = 1024;

/// A dedicated store connection that owns a run's temporary staging and plan tables. Its SQL is one text for both
/// engines but where noted; the staging of members, the hot path of a large run, is each engine's own (a
/// multi-row insert on SQLite, `COPY` on PostgreSQL).
pub struct PlanSession {
    pub(super) conn: PlanConn,
    /// PostgreSQL: which keys were staged in this session (see `stage_postgres`).
    staging: Staging,
}

/// What a PostgreSQL plan session remembers of the members it staged: a 64-bit hash of each (target, key), so that
/// a key not seen before goes straight into `staged` and only the rest (repeats, and the rare key whose hash another
/// had) into `stage_in` to be settled; and whether rows went in since the last `settle_staged`.
#[derive(Default)]
struct Staging {
    seen: HashSet<u64>,
    unsettled: bool,
}

/// The hash a staged key is remembered by.
fn staged_key_hash(target_id: i64, key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key.as_bytes(), target_id as u64)
}

pub(super) enum PlanConn {
    Sqlite(SqliteConnection),
    /// Taken out of the pool for good (its temporary tables go with it when it closes), with the fence of the run
    /// whose plan it is: the session's own writes to `members` check it.
    Postgres(PgConnection, Option<Arc<Fence>>),
}

impl PlanConn {
    pub(super) fn on(&mut self) -> On<'_> {
        match self {
            PlanConn::Sqlite(c) => On::Sqlite(c),
            PlanConn::Postgres(c, _) => On::Postgres(c),
        }
    }
}

/// A transaction on the plan connection.
enum PlanTx<'c> {
    Sqlite(sqlx::Transaction<'c, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'c, Postgres>),
}

impl PlanTx<'_> {
    fn on(&mut self) -> On<'_> {
        match self {
            PlanTx::Sqlite(t) => On::Sqlite(t),
            PlanTx::Postgres(t) => On::Postgres(t),
        }
    }

    fn kind(&self) -> super::Kind {
        match self {
            PlanTx::Sqlite(_) => super::Kind::Sqlite,
            PlanTx::Postgres(_) => super::Kind::Postgres,
        }
    }

    async fn commit(self) -> Result<()> {
        match self {
            PlanTx::Sqlite(t) => t.commit().await?,
            PlanTx::Postgres(t) => t.commit().await?,
        }
        Ok(())
    }
}

impl PlanConn {
    async fn begin(&mut self) -> Result<PlanTx<'_>> {
        Ok(match self {
            PlanConn::Sqlite(c) => PlanTx::Sqlite(c.begin().await?),
            PlanConn::Postgres(c, _) => PlanTx::Postgres(c.begin().await?),
        })
    }
}

/// The plan tables on SQLite. `seq` orders what is read back (members in email order, as they were planned).
const SQLITE_PLAN_TABLES: &[&str] = &[
    // Before the first temp table: larger pages make the million-row staging tree shallower and its inserts and
    // scans cheaper (measured: staging about an eighth faster than with 4 KiB pages).
    "PRAGMA temp.page_size = 16384",
    "CREATE TEMP TABLE staged (target_id INTEGER NOT NULL, email TEXT NOT NULL, fields_hash INTEGER NOT NULL, \
     fields TEXT NOT NULL, paired_email TEXT, PRIMARY KEY (target_id, email)) WITHOUT ROWID",
    // is_new: no record of the member at all; kind: what its subscribe does to the list (`AddKind`).
    "CREATE TEMP TABLE plan_add (seq INTEGER PRIMARY KEY, target_id INTEGER NOT NULL, email TEXT NOT NULL, \
     fields_hash INTEGER NOT NULL, fields TEXT NOT NULL, is_new INTEGER NOT NULL, paired_email TEXT, \
     replaces TEXT, kind INTEGER NOT NULL)",
    "CREATE TEMP TABLE plan_remove (seq INTEGER PRIMARY KEY, target_id INTEGER NOT NULL, email TEXT NOT NULL, \
     send INTEGER NOT NULL)",
    // Working tables of `compute`, in email order: members new or changed, and members who left.
    "CREATE TEMP TABLE changed (seq INTEGER PRIMARY KEY, email TEXT NOT NULL, fields_hash INTEGER NOT NULL)",
    "CREATE TEMP TABLE gone (seq INTEGER PRIMARY KEY, email TEXT NOT NULL)",
    // Hybrid projects: leavers by their email, and new members paired with the leaver they are.
    "CREATE TEMP TABLE gone_by_email (email TEXT PRIMARY KEY, key TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TEMP TABLE paired (new_key TEXT PRIMARY KEY, old_key TEXT NOT NULL UNIQUE) WITHOUT ROWID",
];

/// The same tables on PostgreSQL: keys compare bytewise (`COLLATE "C"`), as on SQLite and in `members`; members
/// arrive by `COPY`, into `staged` when their key is new to the session and into `stage_in` otherwise, whose first
/// row of each key not staged then goes into `staged` (`stage_postgres`, `settle_staged`).
const POSTGRES_PLAN_TABLES: &[&str] = &[
    "CREATE TEMP TABLE stage_in (seq BIGINT GENERATED ALWAYS AS IDENTITY, target_id BIGINT NOT NULL, \
     email TEXT COLLATE \"C\" NOT NULL, fields_hash BIGINT NOT NULL, fields TEXT NOT NULL, paired_email TEXT)",
    // Its unique index on (target_id, email) is built by `settle_staged`, after the rows are in.
    "CREATE TEMP TABLE staged (target_id BIGINT NOT NULL, email TEXT COLLATE \"C\" NOT NULL, \
     fields_hash BIGINT NOT NULL, fields TEXT NOT NULL, paired_email TEXT)",
    "CREATE TEMP TABLE plan_add (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, target_id BIGINT NOT NULL, \
     email TEXT COLLATE \"C\" NOT NULL, fields_hash BIGINT NOT NULL, fields TEXT NOT NULL, is_new BOOLEAN NOT NULL, \
     paired_email TEXT, replaces TEXT COLLATE \"C\", kind BIGINT NOT NULL)",
    "CREATE TEMP TABLE plan_remove (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, target_id BIGINT NOT NULL, \
     email TEXT COLLATE \"C\" NOT NULL, send BOOLEAN NOT NULL)",
    "CREATE TEMP TABLE changed (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
     email TEXT COLLATE \"C\" NOT NULL, fields_hash BIGINT NOT NULL)",
    "CREATE TEMP TABLE gone (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email TEXT COLLATE \"C\" NOT NULL)",
    "CREATE TEMP TABLE gone_by_email (email TEXT COLLATE \"C\" PRIMARY KEY, key TEXT COLLATE \"C\" NOT NULL)",
    "CREATE TEMP TABLE paired (new_key TEXT COLLATE \"C\" PRIMARY KEY, old_key TEXT COLLATE \"C\" NOT NULL UNIQUE)",
];

/// Session settings of a plan's PostgreSQL connection, set before its first temporary table (after that the server
/// refuses a new `temp_buffers`). Memory is taken as used, up to these bounds, and given back when the session ends.
const POSTGRES_PLAN_SETTINGS: &[&str] = &["SET temp_buffers = '256MB'", "SET work_mem = '64MB'"];

impl Store {
    pub async fn plan_session(&self) -> Result<PlanSession> {
        let mut conn = match &self.db {
            Db::Sqlite(_) => {
                PlanConn::Sqlite(Self::connect_options(&self.path).row_buffer_size(PLAN_ROW_BUFFER).connect().await?)
            }
            Db::Postgres(pool, fence) => {
                let mut conn = pool.acquire().await?.detach();
                // A plan's temporary tables and its sorts hold a whole segment: with the server's defaults (8 MB of
                // temp buffers, 4 MB per sort) a million members spill to temporary files on every step.
                for setting in POSTGRES_PLAN_SETTINGS {
                    if let Err(e) = sqlx::query(setting).execute(&mut conn).await {
                        tracing::debug!(setting, error = %e, "A plan session setting was not taken; planning goes on.");
                    }
                }
                PlanConn::Postgres(conn, fence.clone())
            }
        };
        let tables = match conn {
            PlanConn::Sqlite(_) => SQLITE_PLAN_TABLES,
            PlanConn::Postgres(..) => POSTGRES_PLAN_TABLES,
        };
        for ddl in tables {
            sql(*ddl).execute(conn.on()).await?;
        }
        Ok(PlanSession { conn, staging: Staging::default() })
    }

    /// Members recorded for a target by state. A state this version does not know is an error naming it, never
    /// counted as another.
    pub async fn member_counts(&self, target_id: i64) -> Result<MemberCounts> {
        let row =
            sql("SELECT COUNT(*) FILTER (WHERE state = 'subscribed'), COUNT(*) FILTER (WHERE state = 'rejected'), \
             MIN(CASE WHEN state NOT IN ('subscribed', 'rejected') THEN state END) FROM members WHERE target_id = $1")
            .bind(target_id)
            .fetch_one(&self.db)
            .await?;
        if let Some(unknown) = row.try_get::<Option<String>, _>(2)? {
            return Err(super::StoreError::unknown_value("members", "state", &unknown));
        }
        Ok(MemberCounts { subscribed: row.try_get::<i64, _>(0)? as u64, rejected: row.try_get::<i64, _>(1)? as u64 })
    }

    /// Records a subscribe batch that Iterable acknowledged, and the run's counters, in one transaction.
    /// `subscribed` are on the list now, and marked as put there by this export. `rejected` were refused (or not
    /// sent, being too large): they are tried again once `sync.retry_rejected_interval` has passed or their fields
    /// changed; `forgotten` were refused as GDPR-forgotten and are never sent again. A refusal leaves "put there by
    /// this export" as it was, so such a member is still unsubscribed when it leaves.
    pub async fn ack_subscribed(
        &self,
        run_id: i64,
        target_id: i64,
        subscribed: &[AckedMember],
        rejected: &[AckedMember],
        forgotten: &[AckedMember],
    ) -> Result<()> {
        let mut tx = self.db.begin().await?;
        let of_kind = |kind| subscribed.iter().filter(|m| m.kind == kind).count();
        let counts = AckCounts {
            added: of_kind(AddKind::New),
            updated: of_kind(AddKind::Update),
            already_on_list: of_kind(AddKind::AlreadyOnList),
            rejected: rejected.len() + forgotten.len(),
            removed: 0,
        };
        // A member that changed key takes its old record over first (whether "ours", whether on the list before it
        // was adopted), so the upserts below update it. Such members are few: one statement each.
        for m in subscribed.iter().chain(rejected).chain(forgotten) {
            let Some(old) = &m.replaces else { continue };
            for text in [
                "UPDATE members SET email = $3 WHERE target_id = $1 AND email = $2 \
                 AND NOT EXISTS (SELECT 1 FROM members o WHERE o.target_id = $1 AND o.email = $3)",
                "DELETE FROM members WHERE target_id = $1 AND email = $2",
                "UPDATE preexisting_members SET email = $3 WHERE target_id = $1 AND email = $2 \
                 AND NOT EXISTS (SELECT 1 FROM preexisting_members o WHERE o.target_id = $1 AND o.email = $3)",
            ] {
                sql(text).bind(target_id).bind(old).bind(&m.email).execute(&mut tx).await?;
            }
        }
        let acked_at = super::now().timestamp();
        for chunk in subscribed.chunks(pooled_rows_per_statement(tx.kind())) {
            let text = format!(
                "INSERT INTO members (target_id, email, fields_hash, paired_email, state, ours, acked_at) {} \
                 ON CONFLICT (target_id, email) DO UPDATE SET fields_hash = excluded.fields_hash, \
                 state = 'subscribed', ours = TRUE, rejected_at = NULL, retry_rejected = TRUE, \
                 paired_email = excluded.paired_email, acked_at = excluded.acked_at",
                rows_of(chunk.len(), &["$1", "?", "?", "?", "'subscribed'", "TRUE", "$2"], 3)
            );
            let mut q = sql(text).bind(target_id).bind(acked_at);
            for m in chunk {
                q = q.bind(&m.email).bind(m.fields_hash).bind(&m.paired_email);
            }
            q.execute(&mut tx).await?;
            // On the list again: no longer one this export removed (see `removed_members`).
            let list = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect::<Vec<_>>().join(", ");
            let mut q =
                sql(format!("DELETE FROM removed_members WHERE target_id = $1 AND email IN ({list})")).bind(target_id);
            for m in chunk {
                q = q.bind(&m.email);
            }
            q.execute(&mut tx).await?;
        }
        let refused_at = super::now().timestamp();
        for (members, retry) in [(rejected, true), (forgotten, false)] {
            for chunk in members.chunks(pooled_rows_per_statement(tx.kind())) {
                let text = format!(
                    "INSERT INTO members (target_id, email, fields_hash, paired_email, state, ours, rejected_at, \
                     retry_rejected) {} \
                     ON CONFLICT (target_id, email) DO UPDATE SET fields_hash = excluded.fields_hash, \
                     state = 'rejected', rejected_at = excluded.rejected_at, retry_rejected = excluded.retry_rejected, \
                     paired_email = excluded.paired_email",
                    rows_of(chunk.len(), &["$1", "?", "?", "?", "'rejected'", "FALSE", "$2", "$3"], 4)
                );
                let mut q = sql(text).bind(target_id).bind(refused_at).bind(retry);
                for m in chunk {
                    q = q.bind(&m.email).bind(m.fields_hash).bind(&m.paired_email);
                }
                q.execute(&mut tx).await?;
            }
        }
        // The counters last: see `count_acks`.
        count_acks(&mut tx, run_id, target_id, counts).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets which members were on a target's list before the export adopted it: the list was recreated, and
    /// the new one holds only what this export puts there.
    pub async fn forget_preexisting(&self, target_id: i64) -> Result<()> {
        sql("DELETE FROM preexisting_members WHERE target_id = $1").bind(target_id).execute(&self.db).await?;
        Ok(())
    }

    /// Records the members (keys) a list held when this export adopted it: they are never unsubscribed by it.
    pub async fn record_preexisting(&self, target_id: i64, emails: &[String]) -> Result<()> {
        let mut tx = self.db.begin().await?;
        for chunk in emails.chunks(pooled_rows_per_statement(tx.kind())) {
            let text = format!(
                "INSERT INTO preexisting_members (target_id, email) {} ON CONFLICT DO NOTHING",
                rows_of(chunk.len(), &["$1", "?"], 2)
            );
            let mut q = sql(text).bind(target_id);
            for e in chunk {
                q = q.bind(e);
            }
            q.execute(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records an unsubscribe batch (member keys) that Iterable acknowledged, and the run's counters, in one
    /// transaction.
    pub async fn ack_unsubscribed(&self, run_id: i64, target_id: i64, emails: &[String]) -> Result<()> {
        let mut tx = self.db.begin().await?;
        for chunk in emails.chunks(pooled_rows_per_statement(tx.kind())) {
            let list = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect::<Vec<_>>().join(", ");
            let mut q = sql(format!("DELETE FROM members WHERE target_id = $1 AND email IN ({list})")).bind(target_id);
            for e in chunk {
                q = q.bind(e);
            }
            q.execute(&mut tx).await?;
            // Remembered as removed, so a verify that finds them on the list again can say so (lingering).
            let text = format!(
                "INSERT INTO removed_members (target_id, email, removed_at) {} \
                 ON CONFLICT (target_id, email) DO UPDATE SET removed_at = excluded.removed_at",
                rows_of(chunk.len(), &["$1", "?", "$2"], 3)
            );
            let mut q = sql(text).bind(target_id).bind(super::now().timestamp());
            for e in chunk {
                q = q.bind(e);
            }
            q.execute(&mut tx).await?;
        }
        count_acks(&mut tx, run_id, target_id, AckCounts { removed: emails.len(), ..AckCounts::default() }).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// `VALUES (...), (...)` for `rows` rows shaped like `row`: each `?` becomes the next placeholder, numbered from
/// `$first`, row after row; anything else (a shared `$1`, a literal) is written as it is in every row.
pub(super) fn rows_of(rows: usize, row: &[&str], first: usize) -> String {
    let per_row = row.iter().filter(|c| **c == "?").count();
    let mut out = String::with_capacity(rows * row.len() * 6 + 8);
    out.push_str("VALUES ");
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        let mut n = first + r * per_row;
        for (i, c) in row.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            if *c == "?" {
                out.push('$');
                out.push_str(&n.to_string());
                n += 1;
            } else {
                out.push_str(c);
            }
        }
        out.push(')');
    }
    out
}

/// What one acknowledged batch adds to its run's counters.
#[derive(Default)]
struct AckCounts {
    added: usize,
    updated: usize,
    already_on_list: usize,
    rejected: usize,
    removed: usize,
}

/// Adds a batch to its run's counters, owner-checked: only while the run is still `running`. Otherwise (it was
/// cancelled, or its export removed) the caller's transaction is dropped, so the batch records nothing.
///
/// Called last in its transaction, just before the commit: every batch of a run updates this one row, so the row
/// stays locked from here to the commit, and batches in flight together wait on each other only that long. Called
/// first, on PostgreSQL it serialised whole batches (each update waited 200 to 400 ms behind the others' upserts,
/// measured at a million members with sixteen in flight).
async fn count_acks(tx: &mut Tx, run_id: i64, target_id: i64, counts: AckCounts) -> Result<()> {
    let counted = sql(
        "UPDATE run_targets SET added = added + $1, updated = updated + $2, already_on_list = already_on_list + $3, \
         rejected = rejected + $4, removed = removed + $5 WHERE run_id = $6 AND target_id = $7 \
         AND EXISTS (SELECT 1 FROM runs WHERE id = run_targets.run_id AND status = 'running')",
    )
    .bind(counts.added as i64)
    .bind(counts.updated as i64)
    .bind(counts.already_on_list as i64)
    .bind(counts.rejected as i64)
    .bind(counts.removed as i64)
    .bind(run_id)
    .bind(target_id)
    .execute(&mut *tx)
    .await?;
    if counted != 1 {
        return Err(StoreError::RunNotRunning { run_id });
    }
    Ok(())
}

/// The email of a member row, in SQL: the key itself, or beside a user id key the paired email.
macro_rules! email_of {
    ($t:literal) => {
        concat!(
            "(CASE WHEN substr(",
            $t,
            ".email, 1, 7) = 'userId:' THEN ",
            $t,
            ".paired_email ELSE ",
            $t,
            ".email END)"
        )
    };
}

/// What a planned subscribe does to the list, in SQL over the recorded member `m` (NULL when none), as an `AddKind`
/// code: a member this export put there is updated, unless `$2` (the list is a new one). Members there before the
/// export adopted the list are marked afterwards (`mark_already_on_list`).
macro_rules! add_kind {
    () => {
        "(CASE WHEN $2 OR m.email IS NULL OR NOT m.ours THEN 0 ELSE 1 END)"
    };
}
// The codes written as literals in SQL here (`add_kind!`, `pair_by_email`).
const _: () = assert!(AddKind::New.code() == 0 && AddKind::Update.code() == 1);

/// A plan statement for `kind`: SQLite reads `CROSS JOIN ... ON` as a join that keeps its order (the plan's
/// statements rely on it to walk the small side first); PostgreSQL takes no `ON` after `CROSS JOIN` and orders
/// joins by itself.
fn for_engine(kind: super::Kind, text: &'static str) -> std::borrow::Cow<'static, str> {
    match kind {
        super::Kind::Sqlite => text.into(),
        super::Kind::Postgres => text.replace("CROSS JOIN", "JOIN").into(),
    }
}

/// Hybrid projects: pairs each new member (planned, `is_new`) with the leaver (in `gone`) that had its email, one
/// to one. A paired member is planned as an update replacing the leaver's record, and the leaver is no longer one.
/// Run only when there are both new members and leavers, so an unchanged re-run never gets here.
async fn pair_by_email(tx: &mut PlanTx<'_>, target_id: i64, fresh_list: bool) -> Result<()> {
    let kind = tx.kind();
    sql(for_engine(
        kind,
        concat!(
            "INSERT INTO gone_by_email (email, key) SELECT ",
            email_of!("m"),
            ", m.email FROM gone g CROSS JOIN members m ON m.target_id = $1 AND m.email = g.email \
         WHERE ",
            email_of!("m"),
            " IS NOT NULL ORDER BY g.seq ON CONFLICT DO NOTHING"
        ),
    ))
    .bind(target_id)
    .execute(tx.on())
    .await?;
    sql(for_engine(
        kind,
        concat!(
            "INSERT INTO paired (new_key, old_key) SELECT p.email, ge.key FROM plan_add p \
         CROSS JOIN gone_by_email ge ON ge.email = ",
            email_of!("p"),
            " WHERE p.target_id = $1 AND p.is_new ORDER BY p.seq ON CONFLICT DO NOTHING"
        ),
    ))
    .bind(target_id)
    .execute(tx.on())
    .await?;
    // The member is on the list when its old record is (put there by this export).
    sql(for_engine(
        kind,
        "UPDATE plan_add SET is_new = FALSE, \
         replaces = (SELECT old_key FROM paired WHERE new_key = plan_add.email), \
         kind = CASE WHEN $2 THEN 0 WHEN (SELECT m.ours FROM paired p CROSS JOIN members m \
                ON m.target_id = $1 AND m.email = p.old_key WHERE p.new_key = plan_add.email) THEN 1 ELSE 0 END \
         WHERE target_id = $1 AND is_new AND email IN (SELECT new_key FROM paired)",
    ))
    .bind(target_id)
    .bind(fresh_list)
    .execute(tx.on())
    .await?;
    sql("DELETE FROM gone WHERE email IN (SELECT old_key FROM paired)").execute(tx.on()).await?;
    Ok(())
}

/// Marks the planned members that were on the target's list when this export adopted it, and that it did not put
/// there since, as already on the list. Returns whether any was. Costs nothing for a list the export created.
async fn mark_already_on_list(on: &mut PlanConnOrTx<'_, '_>, target_id: i64) -> Result<bool> {
    let adopted: bool = sql("SELECT EXISTS (SELECT 1 FROM preexisting_members WHERE target_id = $1)")
        .bind(target_id)
        .scalar(on.on())
        .await?;
    if !adopted {
        return Ok(false);
    }
    // A member that changed key is on the list by its old key, as the acknowledgement carries it over.
    let marked = sql(
        "UPDATE plan_add SET kind = $2 WHERE target_id = $1 AND kind = $3 AND EXISTS \
         (SELECT 1 FROM preexisting_members p WHERE p.target_id = $1 AND p.email IN (plan_add.email, plan_add.replaces))",
    )
    .bind(target_id)
    .bind(AddKind::AlreadyOnList.code())
    .bind(AddKind::New.code())
    .execute(on.on())
    .await?;
    Ok(marked > 0)
}

/// The plan connection, or a transaction on it: what the helpers shared by `compute` and `note_adopted` run on.
enum PlanConnOrTx<'a, 'c> {
    Conn(&'a mut PlanConn),
    Tx(&'a mut PlanTx<'c>),
}

impl PlanConnOrTx<'_, '_> {
    fn on(&mut self) -> On<'_> {
        match self {
            PlanConnOrTx::Conn(c) => c.on(),
            PlanConnOrTx::Tx(t) => t.on(),
        }
    }
}

/// The planned subscribes of a target, in one pass: those of members with no record at all, and by kind, those
/// new on the list and those on it already.
struct PlannedCounts {
    unrecorded: u64,
    to_add: u64,
    to_update: u64,
}

async fn count_planned(on: &mut PlanConnOrTx<'_, '_>, target_id: i64) -> Result<PlannedCounts> {
    let row = sql(
        "SELECT COUNT(*) FILTER (WHERE is_new), COUNT(*) FILTER (WHERE kind = $2), COUNT(*) FILTER (WHERE kind != $2) \
         FROM plan_add WHERE target_id = $1",
    )
    .bind(target_id)
    .bind(AddKind::New.code())
    .fetch_one(on.on())
    .await?;
    let n = |i: usize| row.try_get::<i64, _>(i).map(|v| v as u64);
    Ok(PlannedCounts { unrecorded: n(0)?, to_add: n(1)?, to_update: n(2)? })
}

impl PlanSession {
    /// Adds members to the staging table; of duplicates (same target and key) the first staged is kept, and
    /// `compute` counts the members left (`TargetPlan::members`).
    pub async fn stage(&mut self, target_id: i64, rows: &[StagedMember]) -> Result<()> {
        match &mut self.conn {
            PlanConn::Sqlite(conn) => stage_sqlite(conn, target_id, rows).await,
            PlanConn::Postgres(conn, _) => stage_postgres(conn, &mut self.staging, target_id, rows).await,
        }
    }

    /// Diffs the staged members of a target against what Iterable acknowledged, filling the plan tables (see
    /// `ComputeOptions`). Members refused as forgotten are never planned; leavers are unsubscribed only when this
    /// export put them on the list and they were not there before it adopted the list. With `match_by_email`, a new
    /// member whose email a leaver had is that leaver under a new key: planned as an update that replaces it.
    pub async fn compute(&mut self, target_id: i64, o: &ComputeOptions) -> Result<TargetPlan> {
        let ComputeOptions { full, remove_leavers, retry_rejected_until, match_by_email, fresh_list } = *o;
        if let PlanConn::Postgres(conn, _) = &mut self.conn {
            refresh_member_statistics(conn).await?;
        }
        let unsettled = self.staging.unsettled;
        let mut tx = self.conn.begin().await?;
        let kind = tx.kind();
        if unsettled {
            settle_staged(&mut tx).await?;
        }
        sql("DELETE FROM plan_add WHERE target_id = $1").bind(target_id).execute(tx.on()).await?;
        sql("DELETE FROM plan_remove WHERE target_id = $1").bind(target_id).execute(tx.on()).await?;
        for text in ["DELETE FROM changed", "DELETE FROM gone", "DELETE FROM gone_by_email", "DELETE FROM paired"] {
            sql(text).execute(tx.on()).await?;
        }
        let row = sql("SELECT (SELECT COUNT(*) FROM members WHERE target_id = $1), \
                    (SELECT COUNT(*) FROM staged WHERE target_id = $1)")
        .bind(target_id)
        .fetch_one(tx.on())
        .await?;
        let (recorded, staged): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        let planned = if full || recorded == 0 {
            // Everyone is sent: one pass over the staged members.
            sql(concat!(
                "INSERT INTO plan_add (target_id, email, fields_hash, fields, is_new, paired_email, kind) \
                 SELECT s.target_id, s.email, s.fields_hash, s.fields, m.email IS NULL, s.paired_email, ",
                add_kind!(),
                " FROM staged s LEFT JOIN members m ON m.target_id = s.target_id AND m.email = s.email \
                 WHERE s.target_id = $1 AND ($3 OR m.email IS NULL OR m.fields_hash != s.fields_hash) \
                 AND (m.email IS NULL OR m.retry_rejected) ORDER BY s.email"
            ))
            .bind(target_id)
            .bind(fresh_list)
            .bind(full)
            .execute(tx.on())
            .await?
        } else {
            // A re-run: both sides are sorted by email, so as a top-level EXCEPT SQLite merges them in one pass
            // (measured: under half the time of looking each staged member up), and only the few members found
            // new or changed are looked up again for their fields.
            // PostgreSQL hashes one side and probes it with the other, faster as an anti-join than as EXCEPT (0.56 s
            // against 0.70 s at a million members, measured in psql).
            let changed = match kind {
                super::Kind::Sqlite => {
                    "INSERT INTO changed (email, fields_hash) \
                     SELECT email, fields_hash FROM staged WHERE target_id = $1 \
                     EXCEPT SELECT email, fields_hash FROM members WHERE target_id = $1 ORDER BY 1, 2"
                }
                super::Kind::Postgres => {
                    "INSERT INTO changed (email, fields_hash) \
                     SELECT s.email, s.fields_hash FROM staged s WHERE s.target_id = $1 AND NOT EXISTS \
                     (SELECT 1 FROM members m WHERE m.target_id = $1 AND m.email = s.email \
                      AND m.fields_hash = s.fields_hash) ORDER BY 1, 2"
                }
            };
            sql(changed).bind(target_id).execute(tx.on()).await?;
            // Refused members whose retry is due, and unchanged (changed ones are in `changed` already). On SQLite
            // through the partial index of rejected members (few): left to itself, it walks every member of the
            // target. PostgreSQL picks that index by itself.
            let retry_due = match kind {
                super::Kind::Sqlite => {
                    "INSERT INTO changed (email, fields_hash) \
                     SELECT m.email, m.fields_hash FROM members m INDEXED BY members_rejected \
                     WHERE m.target_id = $1 AND m.state = 'rejected' AND m.retry_rejected \
                     AND (m.rejected_at IS NULL OR m.rejected_at <= $2) \
                     AND EXISTS (SELECT 1 FROM staged s WHERE s.target_id = $1 AND s.email = m.email \
                                 AND s.fields_hash = m.fields_hash)"
                }
                super::Kind::Postgres => {
                    "INSERT INTO changed (email, fields_hash) \
                     SELECT m.email, m.fields_hash FROM members m \
                     WHERE m.target_id = $1 AND m.state = 'rejected' AND m.retry_rejected \
                     AND (m.rejected_at IS NULL OR m.rejected_at <= $2) \
                     AND EXISTS (SELECT 1 FROM staged s WHERE s.target_id = $1 AND s.email = m.email \
                                 AND s.fields_hash = m.fields_hash)"
                }
            };
            sql(retry_due).bind(target_id).bind(retry_rejected_until).execute(tx.on()).await?;
            sql(for_engine(
                kind,
                concat!(
                    "INSERT INTO plan_add (target_id, email, fields_hash, fields, is_new, paired_email, kind) \
                 SELECT s.target_id, s.email, s.fields_hash, s.fields, m.email IS NULL, s.paired_email, ",
                    add_kind!(),
                    " FROM changed c \
                 CROSS JOIN staged s ON s.target_id = $1 AND s.email = c.email \
                 LEFT JOIN members m ON m.target_id = $1 AND m.email = c.email \
                 WHERE m.email IS NULL OR m.retry_rejected ORDER BY c.seq"
                ),
            ))
            .bind(target_id)
            .bind(fresh_list)
            .execute(tx.on())
            .await?
        };
        // Every staged member that is not new matches exactly one recorded member, so the recorded members beyond
        // those are the leavers. When there are none (the usual re-run), they are not searched for at all. Pairing
        // and adoption below may change the kinds counted here.
        let mut counts = count_planned(&mut PlanConnOrTx::Tx(&mut tx), target_id).await?;
        let new = counts.unrecorded as i64;
        let mut kinds_changed = false;
        if recorded - (staged - new) > 0 {
            // As for `changed` above, an anti-join on PostgreSQL (0.79 s as EXCEPT at a million members).
            let gone = match kind {
                super::Kind::Sqlite => {
                    "INSERT INTO gone (email) \
                     SELECT email FROM members WHERE target_id = $1 \
                     EXCEPT SELECT email FROM staged WHERE target_id = $1 ORDER BY 1"
                }
                super::Kind::Postgres => {
                    "INSERT INTO gone (email) \
                     SELECT m.email FROM members m WHERE m.target_id = $1 AND NOT EXISTS \
                     (SELECT 1 FROM staged s WHERE s.target_id = $1 AND s.email = m.email) ORDER BY 1"
                }
            };
            sql(gone).bind(target_id).execute(tx.on()).await?;
            if match_by_email && new > 0 {
                pair_by_email(&mut tx, target_id, fresh_list).await?;
                kinds_changed = true;
            }
            sql(for_engine(
                kind,
                "INSERT INTO plan_remove (target_id, email, send) \
                 SELECT m.target_id, m.email, ($2 AND m.ours AND NOT EXISTS (SELECT 1 FROM preexisting_members p \
                        WHERE p.target_id = $1 AND p.email = m.email)) FROM gone g \
                 CROSS JOIN members m ON m.target_id = $1 AND m.email = g.email ORDER BY g.seq",
            ))
            .bind(target_id)
            .bind(remove_leavers)
            .execute(tx.on())
            .await?;
        }
        let row = sql(
            "SELECT COUNT(*) FILTER (WHERE send), COUNT(*) FILTER (WHERE NOT send) FROM plan_remove WHERE target_id = $1",
        )
        .bind(target_id)
        .fetch_one(tx.on())
        .await?;
        let (to_remove, to_forget): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        if !fresh_list && mark_already_on_list(&mut PlanConnOrTx::Tx(&mut tx), target_id).await? {
            kinds_changed = true;
        }
        if kinds_changed {
            counts = count_planned(&mut PlanConnOrTx::Tx(&mut tx), target_id).await?;
        }
        if kind == super::Kind::Postgres {
            // Read back a chunk at a time while sending: without statistics the planner took the plan for a few
            // rows, and some of the chunks of a million planned adds took 200 ms each instead of 3 ms to read.
            sql("ANALYZE plan_add, plan_remove").execute(tx.on()).await?;
        }
        tx.commit().await?;
        self.staging.unsettled = false;
        let members = staged as u64;
        Ok(TargetPlan {
            members,
            to_add: counts.to_add,
            to_update: counts.to_update,
            to_remove: to_remove as u64,
            to_forget: to_forget as u64,
            unchanged: members - planned,
        })
    }

    /// After a run adopted the target's list (and recorded the members it held): the planned members found on it
    /// are already on the list, not new. Returns the planned subscribes again: (new on the list, on it already).
    pub async fn note_adopted(&mut self, target_id: i64) -> Result<(u64, u64)> {
        let mut on = PlanConnOrTx::Conn(&mut self.conn);
        mark_already_on_list(&mut on, target_id).await?;
        let counts = count_planned(&mut on, target_id).await?;
        Ok((counts.to_add, counts.to_update))
    }

    /// The next chunk of planned adds after `after_seq`.
    pub async fn adds(&mut self, target_id: i64, after_seq: i64, limit: usize) -> Result<Vec<PlannedAdd>> {
        let rows = sql("SELECT seq, email, fields_hash, fields, paired_email, replaces, kind FROM plan_add \
             WHERE target_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
        .bind(target_id)
        .bind(after_seq)
        .bind(limit as i64)
        .fetch_all(self.conn.on())
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(PlannedAdd {
                    seq: r.try_get(0)?,
                    email: r.try_get(1)?,
                    fields_hash: r.try_get(2)?,
                    fields: r.try_get(3)?,
                    paired_email: r.try_get(4)?,
                    replaces: r.try_get(5)?,
                    kind: AddKind::parse(r.try_get(6)?)?,
                })
            })
            .collect()
    }

    /// The next chunk of members to unsubscribe after `after_seq`, as (seq, email).
    pub async fn removes(&mut self, target_id: i64, after_seq: i64, limit: usize) -> Result<Vec<(i64, String)>> {
        let rows =
            sql("SELECT seq, email FROM plan_remove WHERE target_id = $1 AND send AND seq > $2 ORDER BY seq LIMIT $3")
                .bind(target_id)
                .bind(after_seq)
                .bind(limit as i64)
                .fetch_all(self.conn.on())
                .await?;
        rows.into_iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Drops the records of leavers that are not unsubscribed (kept on the list, or rejected by Iterable). On
    /// PostgreSQL, checked against the run's fence like its other writes.
    pub async fn forget_leavers(&mut self, target_id: i64) -> Result<u64> {
        const FORGET: &str = "DELETE FROM members WHERE target_id = $1 AND email IN \
             (SELECT email FROM plan_remove WHERE target_id = $1 AND NOT send)";
        match &mut self.conn {
            PlanConn::Sqlite(c) => Ok(sql(FORGET).bind(target_id).execute(On::Sqlite(c)).await?),
            PlanConn::Postgres(c, fence) => {
                let mut tx = c.begin().await?;
                if let Some(fence) = fence {
                    super::db::check_fence(&mut tx, fence).await?;
                }
                let n = sql(FORGET).bind(target_id).execute(On::Postgres(&mut tx)).await?;
                tx.commit().await?;
                Ok(n)
            }
        }
    }
}

/// Staging on SQLite: multi-row inserts of borrowed values (the hot path of a million-member run).
async fn stage_sqlite(conn: &mut SqliteConnection, target_id: i64, rows: &[StagedMember]) -> Result<()> {
    let mut tx = conn.begin().await?;
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        // Members of email-based exports have no paired email: the column is left to its default rather than
        // bound a NULL per row, on the hot path of a large run.
        let paired = chunk.iter().any(|m| m.paired_email.is_some());
        let mut q: QueryBuilder<sqlx::Sqlite> = QueryBuilder::new(if paired {
            "INSERT OR IGNORE INTO staged (target_id, email, fields_hash, fields, paired_email) "
        } else {
            "INSERT OR IGNORE INTO staged (target_id, email, fields_hash, fields) "
        });
        q.push_values(chunk, |mut b, m| {
            b.push_bind(target_id).push_bind(&m.key).push_bind(m.fields_hash).push_bind(&m.fields);
            if paired {
                b.push_bind(&m.paired_email);
            }
        });
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Staging on PostgreSQL, by `COPY` (CSV). A member whose key this session has not staged before goes straight
/// into `staged`, which has no index yet; the others (repeats of a key, and the rare new key whose hash another key
/// had) go into `stage_in`, for `settle_staged` to keep the first of each key. Deciding that here, by a hash of
/// each key (16 to 32 MB for a million), spares the server sorting every staged row to find the repeats:
/// measured at a million members, settling took 1.35 s that way and 0.35 s this way (with `ANALYZE`).
async fn stage_postgres(
    conn: &mut PgConnection,
    staging: &mut Staging,
    target_id: i64,
    rows: &[StagedMember],
) -> Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let (mut fresh, mut repeats) = (Vec::with_capacity(rows.len() * 96), Vec::new());
    for m in rows {
        use std::io::Write as _;
        let csv = if staging.seen.insert(staged_key_hash(target_id, &m.key)) { &mut fresh } else { &mut repeats };
        let _ = write!(csv, "{target_id},");
        csv_text(csv, &m.key);
        let _ = write!(csv, ",{},", m.fields_hash);
        csv_text(csv, &m.fields);
        csv.push(b',');
        if let Some(p) = &m.paired_email {
            csv_text(csv, p);
        }
        csv.push(b'\n');
    }
    staging.unsettled = true;
    for (table, csv) in [("staged", fresh), ("stage_in", repeats)] {
        if csv.is_empty() {
            continue;
        }
        let mut copy = conn
            .copy_in_raw(&format!(
                "COPY {table} (target_id, email, fields_hash, fields, paired_email) FROM STDIN WITH (FORMAT csv)"
            ))
            .await?;
        copy.send(csv).await?;
        copy.finish().await?;
    }
    Ok(())
}

/// PostgreSQL: builds `staged`'s unique index once its first rows are in (over a million rows at once, 0.23 s; the
/// same rows inserted into the index one by one took 1.7 s), adds the first row of each key of `stage_in` that
/// `staged` does not hold yet, and `ANALYZE`s it: a temporary table is never analyzed by autovacuum, and without
/// it the diff's plans were chosen for a few thousand rows. Nothing to do on SQLite, which stages into `staged`
/// directly.
async fn settle_staged(tx: &mut PlanTx<'_>) -> Result<()> {
    if let PlanTx::Postgres(_) = tx {
        for text in [
            "CREATE UNIQUE INDEX IF NOT EXISTS staged_key ON staged (target_id, email)",
            "INSERT INTO staged (target_id, email, fields_hash, fields, paired_email) \
             SELECT DISTINCT ON (target_id, email) target_id, email, fields_hash, fields, paired_email FROM stage_in \
             ORDER BY target_id, email, seq ON CONFLICT DO NOTHING",
            "TRUNCATE stage_in",
            "ANALYZE staged",
        ] {
            sql(text).execute(tx.on()).await?;
        }
    }
    Ok(())
}

/// PostgreSQL: `ANALYZE members` when it changed by much more than its statistics know, before a plan relies on
/// them. A store just filled by a first export has none until autovacuum gets there (a minute or more): then the
/// planner takes `members` for a small table, and an acknowledged unsubscribe batch (`email IN (...)` of 1,000)
/// walked every member of the target, 165 ms a batch, and 17 s once the statement's plan went generic; with
/// statistics it takes 9 ms (measured in psql at a million members). `ANALYZE` samples a fixed number of rows (80 ms
/// there). The threshold stays above autovacuum's own (50 rows and 10%), so it rarely does autovacuum's work twice.
async fn refresh_member_statistics(conn: &mut PgConnection) -> Result<()> {
    let stale: Option<bool> = sql("SELECT s.n_mod_since_analyze > 10000 + 0.2 * GREATEST(c.reltuples, 0) \
         FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid WHERE s.relid = 'members'::regclass")
    .scalar_optional(On::Postgres(conn))
    .await?;
    if stale == Some(true) {
        tracing::debug!("Refreshing the statistics of the members table before planning.");
        sql("ANALYZE members").execute(On::Postgres(conn)).await?;
    }
    Ok(())
}

/// A CSV field, quoted (an empty text is then `""`, told apart from NULL, which is nothing at all).
fn csv_text(out: &mut Vec<u8>, text: &str) {
    out.push(b'"');
    for b in text.bytes() {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::{on_both, temp_store};
    use crate::store::IssueKind;

    async fn target(store: &Store) -> i64 {
        crate::store::test_support::an_export(store).await.targets[0].id
    }

    fn row(email: &str, hash: i64) -> StagedMember {
        StagedMember { key: email.to_string(), paired_email: None, fields_hash: hash, fields: "{}".to_string() }
    }

    fn opts(full: bool, remove_leavers: bool) -> ComputeOptions {
        ComputeOptions { full, remove_leavers, retry_rejected_until: 0, match_by_email: false, fresh_list: false }
    }

    on_both! {
    async fn the_plan_holds_joiners_changed_members_and_leavers_only(store: Store) {
        let t = target(&store).await;
        let run = store.start_run(1, "manual", false, None).await.unwrap();
        store.record_plan(run, t, "s", &TargetPlan::default(), &Default::default()).await.unwrap();
        let acked = |e: &str, h: i64| AckedMember::new(e, h);
        store
            .ack_subscribed(
                run,
                t,
                &[acked("a@x.com", 1), acked("b@x.com", 1), acked("c@x.com", 1)],
                &[acked("r@x.com", 1)],
                &[],
            )
            .await
            .unwrap();

        let mut s = store.plan_session().await.unwrap();
        // b unchanged, c changed, d joins, a and r leave; a duplicate row is ignored.
        s.stage(t, &[row("b@x.com", 1), row("c@x.com", 2), row("d@x.com", 1)]).await.unwrap();
        s.stage(t, &[row("d@x.com", 9)]).await.unwrap();
        let plan = s.compute(t, &opts(false, true)).await.unwrap();
        assert_eq!(plan, TargetPlan { members: 3, to_add: 1, to_update: 1, to_remove: 1, to_forget: 1, unchanged: 1 });
        let adds: Vec<(String, i64)> =
            s.adds(t, 0, 10).await.unwrap().into_iter().map(|a| (a.email, a.fields_hash)).collect();
        assert_eq!(adds, vec![("c@x.com".into(), 2), ("d@x.com".into(), 1)], "of two rows of d, the first staged");
        let removes: Vec<String> = s.removes(t, 0, 10).await.unwrap().into_iter().map(|(_, e)| e).collect();
        assert_eq!(removes, vec!["a@x.com"], "rejected members are forgotten, not unsubscribed");

        // --full re-sends everyone; --on-leave keep only forgets leavers.
        let full = s.compute(t, &opts(true, false)).await.unwrap();
        assert_eq!((full.to_add, full.to_update, full.to_remove, full.to_forget), (1, 2, 0, 2));
        // On a list created again, every member is new.
        let fresh = s.compute(t, &ComputeOptions { fresh_list: true, ..opts(true, false) }).await.unwrap();
        assert_eq!((fresh.to_add, fresh.to_update), (3, 0));
        let full = s.compute(t, &opts(true, false)).await.unwrap();
        assert_eq!(full.to_forget, 2);
        assert_eq!(s.forget_leavers(t).await.unwrap(), 2);
        assert_eq!(store.member_counts(t).await.unwrap(), MemberCounts { subscribed: 2, rejected: 0 });
    }
    }

    #[tokio::test]
    #[ignore = "needs PostgreSQL at TEST_POSTGRES_URL; .ci/run runs it"]
    async fn postgres_members_are_analyzed_before_a_plan_when_a_run_changed_them_by_much_more_than_their_statistics_know(
    ) {
        let (_db, store) = crate::store::test_support::temp_postgres_store().await;
        // Autovacuum off for the table, so that only the plan can have analyzed it.
        sql("ALTER TABLE members SET (autovacuum_enabled = false)").execute(&store.db).await.unwrap();
        let t = target(&store).await;
        let run = store.start_run(1, "manual", false, None).await.unwrap();
        store.record_plan(run, t, "s", &TargetPlan::default(), &Default::default()).await.unwrap();
        let acked: Vec<AckedMember> = (0..12_000).map(|i| AckedMember::new(format!("m{i}@x.com"), 1)).collect();
        store.ack_subscribed(run, t, &acked, &[], &[]).await.unwrap();
        let estimate = || sql("SELECT reltuples::BIGINT FROM pg_class WHERE oid = 'members'::regclass");
        assert!(estimate().scalar::<i64>(&store.db).await.unwrap() < 0, "never analyzed yet");
        // The server counts the changes once the writing connection reports them (within about 10 s of going idle).
        let stat = |column: &str| format!("SELECT {column} FROM pg_stat_user_tables WHERE relid = 'members'::regclass");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while sql(stat("n_mod_since_analyze")).scalar::<i64>(&store.db).await.unwrap() < 12_000 {
            assert!(std::time::Instant::now() < deadline, "the server never counted the 12,000 changes");
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }

        let mut s = store.plan_session().await.unwrap();
        s.stage(t, &[row("m1@x.com", 1)]).await.unwrap();
        s.compute(t, &opts(false, false)).await.unwrap();
        assert_eq!(estimate().scalar::<i64>(&store.db).await.unwrap(), 12_000, "analyzed by the plan");
        // Analyzed, it is not analyzed again by the next plan.
        s.compute(t, &opts(false, false)).await.unwrap();
        assert_eq!(sql(stat("analyze_count")).scalar::<i64>(&store.db).await.unwrap(), 1);
    }

    on_both! {
    async fn of_repeated_keys_the_first_staged_is_kept_even_when_a_new_key_looks_like_one_seen_before(store: Store) {
        let t = target(&store).await;
        let other = t + 1000; // the plan tables hold any target id
        let mut s = store.plan_session().await.unwrap();
        // On PostgreSQL, b's key is made to look seen (as a key whose hash another had would): it must still be
        // staged, by the slower path.
        s.staging.seen.insert(staged_key_hash(t, "b@x.com"));
        // Repeats in one chunk, across chunks, and the same key for another target (not a repeat).
        s.stage(t, &[row("a@x.com", 1), row("a@x.com", 2), row("b@x.com", 3), row("b@x.com", 4)]).await.unwrap();
        s.stage(t, &[row("c@x.com", 5), row("a@x.com", 6)]).await.unwrap();
        s.stage(other, &[row("a@x.com", 7)]).await.unwrap();
        let plan = s.compute(t, &opts(false, true)).await.unwrap();
        assert_eq!((plan.members, plan.to_add), (3, 3), "{plan:?}");
        let adds: Vec<(String, i64)> =
            s.adds(t, 0, 10).await.unwrap().into_iter().map(|a| (a.email, a.fields_hash)).collect();
        assert_eq!(adds, vec![("a@x.com".into(), 1), ("b@x.com".into(), 3), ("c@x.com".into(), 5)]);
        // Staging goes on after a compute (the index is built by then): still the first of each key.
        s.stage(t, &[row("c@x.com", 8), row("d@x.com", 9)]).await.unwrap();
        let plan = s.compute(t, &opts(false, true)).await.unwrap();
        assert_eq!((plan.members, plan.to_add), (4, 4), "{plan:?}");
        let adds: Vec<(String, i64)> =
            s.adds(t, 0, 10).await.unwrap().into_iter().map(|a| (a.email, a.fields_hash)).collect();
        assert_eq!(adds[2..], [("c@x.com".into(), 5), ("d@x.com".into(), 9)]);
        let plan = s.compute(other, &opts(false, true)).await.unwrap();
        assert_eq!((plan.members, plan.to_add), (1, 1), "{plan:?}");
        assert_eq!(s.adds(other, 0, 10).await.unwrap()[0].fields_hash, 7);
    }
    }

    on_both! {
    async fn subscribes_count_as_added_updated_or_already_on_the_list_by_what_they_do_to_it(store: Store) {
        let t = target(&store).await;
        let run = store.start_run(1, "manual", false, None).await.unwrap();
        let mut s = store.plan_session().await.unwrap();
        // The first run plans everyone as new; the list, found by name, turns out to hold p already.
        s.stage(t, &[row("a@x.com", 1), row("p@x.com", 1), row("n@x.com", 1)]).await.unwrap();
        let plan = s.compute(t, &opts(false, true)).await.unwrap();
        assert_eq!((plan.to_add, plan.to_update), (3, 0));
        store.record_plan(run, t, "s", &plan, &Default::default()).await.unwrap();
        store.record_preexisting(t, &["p@x.com".to_string()]).await.unwrap();
        assert_eq!(s.note_adopted(t).await.unwrap(), (2, 1));
        let adds = s.adds(t, 0, 10).await.unwrap();
        let kinds: Vec<(&str, AddKind)> = adds.iter().map(|a| (a.email.as_str(), a.kind)).collect();
        assert_eq!(
            kinds,
            vec![("a@x.com", AddKind::New), ("n@x.com", AddKind::New), ("p@x.com", AddKind::AlreadyOnList)]
        );
        let acked: Vec<AckedMember> = adds.into_iter().map(AckedMember::from).collect();
        store.ack_subscribed(run, t, &acked, &[], &[]).await.unwrap();
        let c = store.run(run).await.unwrap().targets[0].counts.clone();
        assert_eq!((c.added, c.updated, c.already_on_list), (2, 0, 1));

        // Next run: a's field changed (an update), n and p are unchanged, z joins, and so does q, which was on the
        // list when it was adopted.
        store.record_preexisting(t, &["q@x.com".to_string()]).await.unwrap();
        s.stage(t, &[row("q@x.com", 1), row("z@x.com", 1)]).await.unwrap();
        sql("UPDATE staged SET fields_hash = 2 WHERE email = 'a@x.com'").execute(s.conn.on()).await.unwrap();
        let plan = s.compute(t, &opts(false, true)).await.unwrap();
        assert_eq!((plan.to_add, plan.to_update, plan.unchanged), (1, 2, 2), "{plan:?}");
        let kinds: Vec<AddKind> = s.adds(t, 0, 10).await.unwrap().into_iter().map(|a| a.kind).collect();
        assert_eq!(kinds, vec![AddKind::Update, AddKind::AlreadyOnList, AddKind::New]);
    }
    }

    on_both! {
    async fn plan_sessions_one_after_another_each_start_with_tables_of_their_own(store: Store) {
        let t = target(&store).await;
        // More sessions than the pool has connections: none may meet the tables of one before it.
        for i in 0..14 {
            let mut s = store.plan_session().await.unwrap();
            s.stage(t, &[row(&format!("m{i}@x.com"), 1)]).await.unwrap();
            let plan = s.compute(t, &opts(false, true)).await.unwrap();
            assert_eq!(plan.members, 1, "session {i} saw another's staged members");
        }
    }
    }

    on_both! {
    async fn acknowledged_unsubscribes_drop_members_and_count_progress(store: Store) {
        let t = target(&store).await;
        let run = store.start_run(1, "manual", false, None).await.unwrap();
        let plan = TargetPlan::default();
        store.record_plan(run, t, "s", &plan, &Default::default()).await.unwrap();
        let many: Vec<AckedMember> = (0..4500).map(|i| AckedMember::new(format!("u{i}@x.com"), 0)).collect();
        store.ack_subscribed(run, t, &many, &[], &[]).await.unwrap();
        let gone: Vec<String> = (0..2500).map(|i| format!("u{i}@x.com")).collect();
        store.ack_unsubscribed(run, t, &gone).await.unwrap();
        assert_eq!(store.member_counts(t).await.unwrap().subscribed, 2000);
        let r = store.run(run).await.unwrap();
        assert_eq!((r.targets[0].counts.added, r.targets[0].counts.removed), (4500, 2500));
    }
    }

    #[tokio::test]
    async fn unknown_stored_enum_values_fail_loudly_naming_table_column_and_value() {
        let (_dir, store) = temp_store().await;
        let t = target(&store).await;
        let run = store.start_run(1, "manual", false, None).await.unwrap();
        store.record_plan(run, t, "s", &TargetPlan::default(), &Default::default()).await.unwrap();
        store.record_issues(run, t, IssueKind::Invalid, &[(None, "bad".into())]).await.unwrap();
        let acked = AckedMember::new("a@x.com", 1);
        store.ack_subscribed(run, t, &[acked], &[], &[]).await.unwrap();
        // Values a newer version might write; the CHECK constraints of this version would refuse them.
        let mut conn = store.pool().acquire().await.unwrap();
        sqlx::query("PRAGMA ignore_check_constraints = ON").execute(&mut *conn).await.unwrap();
        for sql in [
            "UPDATE runs SET status = 'paused'",
            "UPDATE exports SET on_leave = 'archive'",
            "UPDATE run_issues SET kind = 'skipped'",
            "UPDATE members SET state = 'parked'",
        ] {
            sqlx::query(sql).execute(&mut *conn).await.unwrap();
        }
        sqlx::query("PRAGMA ignore_check_constraints = OFF").execute(&mut *conn).await.unwrap();
        drop(conn);
        let run_err = store.run(run).await.unwrap_err().to_string();
        assert!(run_err.contains("runs.status") && run_err.contains("\"paused\""), "{run_err}");
        let export_err = store.export("e").await.unwrap_err().to_string();
        assert!(export_err.contains("exports.on_leave") && export_err.contains("\"archive\""), "{export_err}");
        let state_err = store.member_counts(t).await.unwrap_err().to_string();
        assert!(state_err.contains("members.state") && state_err.contains("\"parked\""), "{state_err}");
        let issue_err = store.run_issues(run, 10).await.unwrap_err().to_string();
        assert!(issue_err.contains("run_issues.kind") && issue_err.contains("\"skipped\""), "{issue_err}");
    }

    #[tokio::test]
    async fn a_store_from_before_member_outcomes_upgrades_keeping_who_was_subscribed_by_the_export() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        {
            // The store as the previous release left it: migrations up to 20261130000199 only.
            let mut old = sqlx::migrate!("./migrations/sqlite");
            // Later migrations that `target` below needs (it adds the export with today's code) are applied too.
            old.migrations = old
                .migrations
                .iter()
                .filter(|m| m.version < 20261130000200 || m.version >= 20261201000300)
                .cloned()
                .collect::<Vec<_>>()
                .into();
            let pool = sqlx::SqlitePool::connect_with(Store::connect_options(&path)).await.unwrap();
            old.run(&pool).await.unwrap();
            pool.close().await;
        }
        {
            let store = Store::open_without_migrating(&path).await;
            let t = target(&store).await;
            for (email, state) in [("a@x.com", "subscribed"), ("r@x.com", "rejected")] {
                sqlx::query("INSERT INTO members (target_id, email, fields_hash, state) VALUES (?, ?, 1, ?)")
                    .bind(t)
                    .bind(email)
                    .bind(state)
                    .execute(store.pool())
                    .await
                    .unwrap();
            }
            store.close().await;
        }
        let store = Store::open(&path).await.unwrap();
        let rows: Vec<(String, String, bool, Option<i64>, bool)> =
            sqlx::query_as("SELECT email, state, ours, rejected_at, retry_rejected FROM members ORDER BY email")
                .fetch_all(store.pool())
                .await
                .unwrap();
        assert_eq!(
            rows,
            vec![
                ("a@x.com".into(), "subscribed".into(), true, None, true),
                ("r@x.com".into(), "rejected".into(), false, None, true),
            ]
        );
        // The old rejected member is due for a retry at once; the subscribed one is unchanged.
        let t: i64 = sqlx::query_scalar("SELECT id FROM targets").fetch_one(store.pool()).await.unwrap();
        let mut s = store.plan_session().await.unwrap();
        s.stage(t, &[row("a@x.com", 1), row("r@x.com", 1)]).await.unwrap();
        let plan = s.compute(t, &opts(false, true)).await.unwrap();
        assert_eq!((plan.to_add, plan.unchanged), (1, 1));
    }

    on_both! {
    async fn leavers_are_removed_only_when_ours_and_not_on_the_list_before_it_was_adopted(store: Store) {
        let t = target(&store).await;
        let run = store.start_run(1, "manual", false, None).await.unwrap();
        store.record_plan(run, t, "s", &TargetPlan::default(), &Default::default()).await.unwrap();
        let acked = |e: &str| AckedMember::new(e, 1);
        store.record_preexisting(t, &["pre@x.com".to_string()]).await.unwrap();
        store
            .ack_subscribed(run, t, &[acked("ours@x.com"), acked("pre@x.com"), acked("later@x.com")], &[], &[])
            .await
            .unwrap();
        // A later update of one of ours is refused: it stays ours.
        store.ack_subscribed(run, t, &[], &[acked("later@x.com")], &[]).await.unwrap();
        store.ack_subscribed(run, t, &[], &[acked("never@x.com")], &[]).await.unwrap();
        let mut s = store.plan_session().await.unwrap();
        let plan = s.compute(t, &opts(false, true)).await.unwrap();
        assert_eq!((plan.to_remove, plan.to_forget), (2, 2), "{plan:?}");
        let mut removes: Vec<String> = s.removes(t, 0, 10).await.unwrap().into_iter().map(|(_, e)| e).collect();
        removes.sort();
        assert_eq!(removes, vec!["later@x.com", "ours@x.com"]);
    }
    }

    on_both! {
    async fn a_hybrid_member_that_keeps_its_email_under_a_new_key_is_an_update_taking_its_record_over(store: Store) {
        let t = target(&store).await;
        let run = store.start_run(1, "manual", false, None).await.unwrap();
        store.record_plan(run, t, "s", &TargetPlan::default(), &Default::default()).await.unwrap();
        let by_id =
            |key: &str, email: &str| AckedMember { paired_email: Some(email.into()), ..AckedMember::new(key, 1) };
        let before = [
            AckedMember::new("a@x.com", 1),
            by_id("userId:u2", "b@x.com"),
            by_id("userId:u3", "c@x.com"),
            AckedMember::new("e@x.com", 1),
        ];
        store.ack_subscribed(run, t, &before, &[], &[]).await.unwrap();
        store.record_preexisting(t, &["a@x.com".to_string()]).await.unwrap();
        let staged_by_id = |key: &str, email: &str| StagedMember { paired_email: Some(email.into()), ..row(key, 1) };
        let mut s = store.plan_session().await.unwrap();
        // a gains a user id, u2 loses its user id, u3's user id changes; e leaves.
        let now = [staged_by_id("userId:u1", "a@x.com"), row("b@x.com", 1), staged_by_id("userId:u9", "c@x.com")];
        s.stage(t, &now).await.unwrap();

        // Compared by key alone, each of the three would leave and join.
        let by_key = s.compute(t, &opts(false, true)).await.unwrap();
        assert_eq!((by_key.to_add, by_key.to_remove, by_key.to_forget), (3, 3, 1), "{by_key:?}");

        let hybrid = ComputeOptions { match_by_email: true, ..opts(false, true) };
        let plan = s.compute(t, &hybrid).await.unwrap();
        assert_eq!((plan.to_add, plan.to_update, plan.to_remove, plan.to_forget), (0, 3, 1, 0), "{plan:?}");
        let removes: Vec<String> = s.removes(t, 0, 10).await.unwrap().into_iter().map(|(_, k)| k).collect();
        assert_eq!(removes, vec!["e@x.com"]);
        let adds = s.adds(t, 0, 10).await.unwrap();
        let mut replaced: Vec<(String, Option<String>)> =
            adds.iter().map(|a| (a.email.clone(), a.replaces.clone())).collect();
        replaced.sort();
        assert_eq!(
            replaced,
            vec![
                ("b@x.com".into(), Some("userId:u2".into())),
                ("userId:u1".into(), Some("a@x.com".into())),
                ("userId:u9".into(), Some("userId:u3".into())),
            ]
        );

        // Acknowledged, each takes its old record over: a's stays pre-existing (never unsubscribed by this export).
        let acked: Vec<AckedMember> = adds.into_iter().map(AckedMember::from).collect();
        store.ack_subscribed(run, t, &acked, &[], &[]).await.unwrap();
        let mut keys: Vec<String> = sql("SELECT email FROM members").scalars(&store.db).await.unwrap();
        keys.sort();
        assert_eq!(keys, vec!["b@x.com", "e@x.com", "userId:u1", "userId:u9"]);
        let pre: Vec<String> = sql("SELECT email FROM preexisting_members").scalars(&store.db).await.unwrap();
        assert_eq!(pre, vec!["userId:u1"]);
        let again = s.compute(t, &hybrid).await.unwrap();
        assert_eq!((again.to_add, again.to_remove, again.unchanged), (0, 1, 3), "{again:?}");
    }
    }
}
