//! What a verify reads and records: the members a list holds in Iterable, put beside the segment (staged by the
//! plan) and the export's memory (`members`, `removed_members`) in temporary tables of the plan connection, the
//! categories that comparison gives, the memory corrections of a repair, and the verify's record per list
//! (`run_verify`, `run_verify_examples`).
//!
//! A list is never held in memory here: its members arrive in chunks and every comparison is SQL. It owns no
//! decision about what a verdict means (`crate::sync::verify` does).

use serde::Serialize;

use super::db::{check_fence, sql, On};
use super::members::{rows_of, PlanConn, ROWS_PER_STATEMENT};
use super::{PlanSession, Result, Store, StoreError};

/// What a run was: a run of the export, or a verify of its lists (that may have repaired them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    #[default]
    Run,
    Verify,
    VerifyRepair,
}

impl RunKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RunKind::Run => "run",
            RunKind::Verify => "verify",
            RunKind::VerifyRepair => "verify_repair",
        }
    }

    /// How people read it: "run", "verify", "verify and repair".
    pub fn label(self) -> &'static str {
        match self {
            RunKind::Run => "run",
            RunKind::Verify => "verify",
            RunKind::VerifyRepair => "verify and repair",
        }
    }

    pub(super) fn parse(s: &str) -> Result<RunKind> {
        match s {
            "run" => Ok(RunKind::Run),
            "verify" => Ok(RunKind::Verify),
            "verify_repair" => Ok(RunKind::VerifyRepair),
            other => Err(StoreError::unknown_value("runs", "kind", other)),
        }
    }
}

/// A verify's judgement of one list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing missing, nothing lingering.
    Clean,
    /// Members missing or lingering.
    Drifted,
    /// The members read did not add up to the list's size (or the list could not be read): nothing is concluded
    /// and nothing is repaired.
    NoVerdict,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Drifted => "drifted",
            Verdict::NoVerdict => "no_verdict",
        }
    }

    fn parse(s: &str) -> Result<Verdict> {
        match s {
            "clean" => Ok(Verdict::Clean),
            "drifted" => Ok(Verdict::Drifted),
            "no_verdict" => Ok(Verdict::NoVerdict),
            other => Err(StoreError::unknown_value("run_verify", "verdict", other)),
        }
    }
}

/// The categories of a verify, which do not overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// Put on the list by this export (acknowledged), not on it.
    Missing,
    /// In the segment, not sent yet: the next run sends them.
    NotYetSent,
    /// Removed by this export (acknowledged), on the list again.
    Lingering,
    /// On the list, never put there by this export: left alone.
    Others,
    /// Changed within `sync.verify_settle` before the read: Iterable may not show it yet.
    Settling,
}

impl DriftKind {
    pub const ALL: [DriftKind; 5] =
        [DriftKind::Missing, DriftKind::NotYetSent, DriftKind::Lingering, DriftKind::Others, DriftKind::Settling];

    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::Missing => "missing",
            DriftKind::NotYetSent => "not_yet_sent",
            DriftKind::Lingering => "lingering",
            DriftKind::Others => "others",
            DriftKind::Settling => "settling",
        }
    }

    fn parse(s: &str) -> Result<DriftKind> {
        DriftKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| StoreError::unknown_value("run_verify_examples", "category", s))
    }
}

/// How many members fell in a category, and a few of them (identities).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Category {
    pub count: u64,
    pub examples: Vec<String>,
}

/// What a verify found on one list.
#[derive(Debug, Clone, Serialize)]
pub struct ListVerify {
    pub target_id: i64,
    pub list_name: String,
    pub list_id: Option<i64>,
    pub verdict: Verdict,
    /// Members read from `getUsers`.
    pub read_members: u64,
    /// The list's size as Iterable gave it.
    pub list_size: Option<u64>,
    pub missing: Category,
    pub not_yet_sent: Category,
    pub lingering: Category,
    pub others: Category,
    pub settling: Category,
    /// Why there is no verdict, or what else is worth knowing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl ListVerify {
    pub fn new(target_id: i64, list_name: &str, list_id: Option<i64>) -> ListVerify {
        ListVerify {
            target_id,
            list_name: list_name.to_string(),
            list_id,
            verdict: Verdict::NoVerdict,
            read_members: 0,
            list_size: None,
            missing: Category::default(),
            not_yet_sent: Category::default(),
            lingering: Category::default(),
            others: Category::default(),
            settling: Category::default(),
            note: None,
        }
    }

    pub fn category(&self, kind: DriftKind) -> &Category {
        match kind {
            DriftKind::Missing => &self.missing,
            DriftKind::NotYetSent => &self.not_yet_sent,
            DriftKind::Lingering => &self.lingering,
            DriftKind::Others => &self.others,
            DriftKind::Settling => &self.settling,
        }
    }

    pub fn category_mut(&mut self, kind: DriftKind) -> &mut Category {
        match kind {
            DriftKind::Missing => &mut self.missing,
            DriftKind::NotYetSent => &mut self.not_yet_sent,
            DriftKind::Lingering => &mut self.lingering,
            DriftKind::Others => &mut self.others,
            DriftKind::Settling => &mut self.settling,
        }
    }

    /// Members missing or lingering: what makes a list drifted.
    pub fn drift(&self) -> u64 {
        self.missing.count + self.lingering.count
    }
}

/// The temporary tables of a verify, on the plan connection: each key a line of `getUsers` stands for, the
/// category of each line once compared, and (hybrid projects) the emails of a second read without `preferUserId`,
/// which finds by its email a member whose user has a user id the export never sent.
const SQLITE_LISTED: &[&str] = &[
    "CREATE TEMP TABLE IF NOT EXISTS listed_keys (target_id INTEGER NOT NULL, key TEXT NOT NULL, line TEXT NOT NULL, \
     PRIMARY KEY (target_id, key)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS temp.listed_keys_by_line ON listed_keys (target_id, line)",
    "CREATE TEMP TABLE IF NOT EXISTS listed_class (target_id INTEGER NOT NULL, line TEXT NOT NULL, \
     class INTEGER NOT NULL, PRIMARY KEY (target_id, line)) WITHOUT ROWID",
    "CREATE TEMP TABLE IF NOT EXISTS listed_emails (target_id INTEGER NOT NULL, email TEXT NOT NULL, \
     PRIMARY KEY (target_id, email)) WITHOUT ROWID",
];
const POSTGRES_LISTED: &[&str] = &[
    "CREATE TEMP TABLE IF NOT EXISTS listed_keys (target_id BIGINT NOT NULL, key TEXT COLLATE \"C\" NOT NULL, \
     line TEXT COLLATE \"C\" NOT NULL, PRIMARY KEY (target_id, key))",
    "CREATE INDEX IF NOT EXISTS listed_keys_by_line ON listed_keys (target_id, line)",
    "CREATE TEMP TABLE IF NOT EXISTS listed_class (target_id BIGINT NOT NULL, line TEXT COLLATE \"C\" NOT NULL, \
     class BIGINT NOT NULL, PRIMARY KEY (target_id, line))",
    "CREATE TEMP TABLE IF NOT EXISTS listed_emails (target_id BIGINT NOT NULL, email TEXT COLLATE \"C\" NOT NULL, \
     PRIMARY KEY (target_id, email))",
];

/// The category of a line read from a list, by the first of these that its keys match (`listed_class.class`):
/// a member this export put there (0, on the list as it should be), a segment member not sent yet (1), a member
/// this export removed within the settle window (2, settling) or before it (3, lingering), nobody (4, others').
/// The paired emails are one list probed per key (`IN`): as a correlated `EXISTS`, SQLite scanned the target's
/// members for every key (minutes for a million).
const CLASSIFY_LINES: &str = "INSERT INTO listed_class (target_id, line, class) \
     SELECT $1, k.line, MIN(CASE \
         WHEN EXISTS (SELECT 1 FROM members m WHERE m.target_id = $1 AND m.email = k.key AND m.state = 'subscribed') \
           OR k.key IN (SELECT m.paired_email FROM members m WHERE m.target_id = $1 AND m.paired_email IS NOT NULL \
                        AND m.state = 'subscribed') THEN 0 \
         WHEN EXISTS (SELECT 1 FROM staged s WHERE s.target_id = $1 AND s.email = k.key) THEN 1 \
         WHEN EXISTS (SELECT 1 FROM removed_members r WHERE r.target_id = $1 AND r.email = k.key \
                      AND r.removed_at > $2) THEN 2 \
         WHEN EXISTS (SELECT 1 FROM removed_members r WHERE r.target_id = $1 AND r.email = k.key) THEN 3 \
         ELSE 4 END) \
     FROM listed_keys k WHERE k.target_id = $1 GROUP BY k.line";

/// Members this export put on the list (acknowledged) that the list does not hold, on either identifier, in
/// either read.
const NOT_LISTED: &str = "FROM members m WHERE m.target_id = $1 AND m.state = 'subscribed' \
     AND NOT EXISTS (SELECT 1 FROM listed_keys k WHERE k.target_id = $1 AND k.key = m.email) \
     AND NOT (m.paired_email IS NOT NULL \
              AND EXISTS (SELECT 1 FROM listed_keys k WHERE k.target_id = $1 AND k.key = m.paired_email)) \
     AND NOT EXISTS (SELECT 1 FROM listed_emails e WHERE e.target_id = $1 AND e.email = m.email) \
     AND NOT (m.paired_email IS NOT NULL \
              AND EXISTS (SELECT 1 FROM listed_emails e WHERE e.target_id = $1 AND e.email = m.paired_email))";

/// Keys found on the list only by the second read's emails (a hybrid user that has a user id this export never
/// sent): each stands for a line of the first read that matched no key, counted there as others'. Members this
/// export put there, segment members not sent yet, and members it removed (with when).
const FOUND_BY_EMAIL_ONLY: &str = "SELECT e.email, \
         EXISTS (SELECT 1 FROM members m WHERE m.target_id = $1 AND m.state = 'subscribed' AND m.email = e.email), \
         EXISTS (SELECT 1 FROM staged s WHERE s.target_id = $1 AND s.email = e.email), \
         (SELECT MAX(r.removed_at) FROM removed_members r WHERE r.target_id = $1 AND r.email = e.email) \
     FROM listed_emails e WHERE e.target_id = $1 \
     AND NOT EXISTS (SELECT 1 FROM listed_keys k WHERE k.target_id = $1 AND k.key = e.email) \
     AND NOT EXISTS (SELECT 1 FROM members m WHERE m.target_id = $1 AND m.paired_email = e.email \
                     AND EXISTS (SELECT 1 FROM listed_keys k WHERE k.target_id = $1 AND k.key = m.email))";

/// Segment members with no record of being sent.
const NOT_YET_SENT: &str = "FROM staged s WHERE s.target_id = $1 \
     AND NOT EXISTS (SELECT 1 FROM members m WHERE m.target_id = $1 AND m.email = s.email)";

impl PlanSession {
    /// Empties (creating them the first time) the tables a list's read goes into, for one target.
    pub async fn start_listing(&mut self, target_id: i64) -> Result<()> {
        let ddl = match self.conn {
            PlanConn::Sqlite(_) => SQLITE_LISTED,
            PlanConn::Postgres(..) => POSTGRES_LISTED,
        };
        for text in ddl {
            sql(*text).execute(self.conn.on()).await?;
        }
        for text in [
            "DELETE FROM listed_keys WHERE target_id = $1",
            "DELETE FROM listed_class WHERE target_id = $1",
            "DELETE FROM listed_emails WHERE target_id = $1",
        ] {
            sql(text).bind(target_id).execute(self.conn.on()).await?;
        }
        Ok(())
    }

    /// Adds lines read from a list, each with the member keys it may stand for.
    pub async fn add_listed(&mut self, target_id: i64, lines: &[(String, Vec<String>)]) -> Result<()> {
        let rows: Vec<(&str, &str)> =
            lines.iter().flat_map(|(line, keys)| keys.iter().map(move |k| (k.as_str(), line.as_str()))).collect();
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let text = format!(
                "INSERT INTO listed_keys (target_id, key, line) {} ON CONFLICT DO NOTHING",
                rows_of(chunk.len(), &["$1", "?", "?"], 2)
            );
            let mut q = sql(text).bind(target_id);
            for (key, line) in chunk {
                q = q.bind(*key).bind(*line);
            }
            q.execute(self.conn.on()).await?;
        }
        Ok(())
    }

    /// Adds the emails of a hybrid list's second read (without `preferUserId`).
    pub async fn add_listed_emails(&mut self, target_id: i64, emails: &[String]) -> Result<()> {
        for chunk in emails.chunks(ROWS_PER_STATEMENT) {
            let text = format!(
                "INSERT INTO listed_emails (target_id, email) {} ON CONFLICT DO NOTHING",
                rows_of(chunk.len(), &["$1", "?"], 2)
            );
            let mut q = sql(text).bind(target_id);
            for email in chunk {
                q = q.bind(email);
            }
            q.execute(self.conn.on()).await?;
        }
        Ok(())
    }

    /// Sorts the list read (`add_listed`) and the target's segment (staged) and memory into the categories of
    /// `report`, with up to `examples` of each. `settled_before` (Unix seconds): a change after it may not show yet
    /// (settling).
    pub async fn classify(
        &mut self,
        target_id: i64,
        settled_before: i64,
        examples: u32,
        report: &mut ListVerify,
    ) -> Result<()> {
        sql(CLASSIFY_LINES).bind(target_id).bind(settled_before).execute(self.conn.on()).await?;
        let by_class: Vec<(i64, i64)> =
            sql("SELECT class, COUNT(*) FROM listed_class WHERE target_id = $1 GROUP BY class")
                .bind(target_id)
                .fetch_all(self.conn.on())
                .await?
                .iter()
                .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)?)))
                .collect::<Result<_>>()?;
        let lines_of = |class: i64| by_class.iter().find(|(c, _)| *c == class).map_or(0, |(_, n)| *n as u64);
        let settling_lines = lines_of(2);
        report.lingering.count = lines_of(3);
        report.others.count = lines_of(4);
        for (kind, class) in [(DriftKind::Lingering, 3), (DriftKind::Others, 4), (DriftKind::Settling, 2)] {
            let found: Vec<String> =
                sql("SELECT line FROM listed_class WHERE target_id = $3 AND class = $1 ORDER BY line LIMIT $2")
                    .bind(class)
                    .bind(examples as i64)
                    .bind(target_id)
                    .scalars(self.conn.on())
                    .await?;
            report.category_mut(kind).examples = found;
        }
        let counts = sql(format!(
            "SELECT COUNT(*) FILTER (WHERE COALESCE(m.acked_at, 0) <= $2), \
             COUNT(*) FILTER (WHERE COALESCE(m.acked_at, 0) > $2) {NOT_LISTED}"
        ))
        .bind(target_id)
        .bind(settled_before)
        .fetch_one(self.conn.on())
        .await?;
        report.missing.count = counts.try_get::<i64, _>(0)? as u64;
        let settling_members = counts.try_get::<i64, _>(1)? as u64;
        report.settling.count = settling_lines + settling_members;
        report.missing.examples =
            sql(format!("SELECT m.email {NOT_LISTED} AND COALESCE(m.acked_at, 0) <= $2 ORDER BY m.email LIMIT $3"))
                .bind(target_id)
                .bind(settled_before)
                .bind(examples as i64)
                .scalars(self.conn.on())
                .await?;
        let room = (examples as usize).saturating_sub(report.settling.examples.len());
        let more: Vec<String> =
            sql(format!("SELECT m.email {NOT_LISTED} AND COALESCE(m.acked_at, 0) > $2 ORDER BY m.email LIMIT $3"))
                .bind(target_id)
                .bind(settled_before)
                .bind(room as i64)
                .scalars(self.conn.on())
                .await?;
        report.settling.examples.extend(more);
        report.not_yet_sent.count =
            sql(format!("SELECT COUNT(*) {NOT_YET_SENT}")).bind(target_id).scalar::<i64>(self.conn.on()).await? as u64;
        report.not_yet_sent.examples = sql(format!("SELECT s.email {NOT_YET_SENT} ORDER BY s.email LIMIT $2"))
            .bind(target_id)
            .bind(examples as i64)
            .scalars(self.conn.on())
            .await?;
        // Found by their email alone (hybrid): their users' lines of the first read were counted as others'.
        let found = sql(FOUND_BY_EMAIL_ONLY).bind(target_id).fetch_all(self.conn.on()).await?;
        for row in found {
            let email: String = row.try_get(0)?;
            let (ours, staged): (bool, bool) = (row.try_get(1)?, row.try_get(2)?);
            let removed_at: Option<i64> = row.try_get(3)?;
            let moved_to = match removed_at {
                _ if ours || staged => None,
                Some(at) if at > settled_before => Some(DriftKind::Settling),
                Some(_) => Some(DriftKind::Lingering),
                None => continue,
            };
            report.others.count = report.others.count.saturating_sub(1);
            if let Some(kind) = moved_to {
                let category = report.category_mut(kind);
                category.count += 1;
                if category.examples.len() < examples as usize {
                    category.examples.push(email);
                }
            }
        }
        Ok(())
    }

    /// A repair's correction of the export's memory where the list read (`classify` done) disagrees with it:
    /// members missing (settled) are forgotten, so the next plan sends those still in the segment again; with
    /// `remove_lingering`, members lingering are recorded as put there by this export, so the plan unsubscribes
    /// them as leavers (through the mass-removal guard). One transaction, checked against the run's fence.
    pub async fn correct_memory(&mut self, target_id: i64, settled_before: i64, remove_lingering: bool) -> Result<()> {
        let forget_missing = format!(
            "DELETE FROM members WHERE target_id = $1 AND email IN \
             (SELECT m.email {NOT_LISTED} AND COALESCE(m.acked_at, 0) <= $2)"
        );
        // A lingering line's key that a removed member has: recorded as on the list, put there by this export.
        const ADOPT_LINGERING: &str = "INSERT INTO members (target_id, email, fields_hash, state, ours) \
             SELECT $1, r.email, 0, 'subscribed', TRUE FROM removed_members r \
             JOIN listed_keys k ON k.target_id = $1 AND k.key = r.email \
             JOIN listed_class c ON c.target_id = $1 AND c.line = k.line AND c.class = 3 \
             WHERE r.target_id = $1 ON CONFLICT (target_id, email) DO NOTHING";
        // The same, found by email alone in a hybrid list's second read.
        const ADOPT_LINGERING_BY_EMAIL: &str = "INSERT INTO members (target_id, email, fields_hash, state, ours) \
             SELECT $1, r.email, 0, 'subscribed', TRUE FROM removed_members r \
             JOIN listed_emails e ON e.target_id = $1 AND e.email = r.email \
             WHERE r.target_id = $1 AND r.removed_at <= $2 \
             AND NOT EXISTS (SELECT 1 FROM listed_keys k WHERE k.target_id = $1 AND k.key = r.email) \
             ON CONFLICT (target_id, email) DO NOTHING";
        const FORGET_LINGERING: &str = "DELETE FROM removed_members WHERE target_id = $1 AND email IN \
             (SELECT email FROM members WHERE target_id = $1 AND state = 'subscribed')";
        match &mut self.conn {
            PlanConn::Sqlite(c) => {
                use sqlx::Connection as _;
                let mut tx = c.begin().await?;
                sql(forget_missing.as_str()).bind(target_id).bind(settled_before).execute(On::Sqlite(&mut tx)).await?;
                if remove_lingering {
                    sql(ADOPT_LINGERING).bind(target_id).execute(On::Sqlite(&mut tx)).await?;
                    sql(ADOPT_LINGERING_BY_EMAIL)
                        .bind(target_id)
                        .bind(settled_before)
                        .execute(On::Sqlite(&mut tx))
                        .await?;
                    sql(FORGET_LINGERING).bind(target_id).execute(On::Sqlite(&mut tx)).await?;
                }
                tx.commit().await?;
            }
            PlanConn::Postgres(c, fence) => {
                use sqlx::Connection as _;
                let mut tx = c.begin().await?;
                if let Some(fence) = fence {
                    check_fence(&mut tx, fence).await?;
                }
                sql(forget_missing.as_str())
                    .bind(target_id)
                    .bind(settled_before)
                    .execute(On::Postgres(&mut tx))
                    .await?;
                if remove_lingering {
                    sql(ADOPT_LINGERING).bind(target_id).execute(On::Postgres(&mut tx)).await?;
                    sql(ADOPT_LINGERING_BY_EMAIL)
                        .bind(target_id)
                        .bind(settled_before)
                        .execute(On::Postgres(&mut tx))
                        .await?;
                    sql(FORGET_LINGERING).bind(target_id).execute(On::Postgres(&mut tx)).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

impl Store {
    /// Marks what a run is (`runs.kind`); runs start as `run`.
    pub async fn set_run_kind(&self, run_id: i64, kind: RunKind) -> Result<()> {
        sql("UPDATE runs SET kind = $1 WHERE id = $2").bind(kind.as_str()).bind(run_id).execute(&self.db).await?;
        Ok(())
    }

    /// When the export's last verify started, if it had one.
    pub async fn last_verify_at(&self, export_id: i64) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        Ok(sql("SELECT MAX(started_at) FROM runs WHERE export_id = $1 AND kind IN ('verify', 'verify_repair')")
            .bind(export_id)
            .scalar(&self.db)
            .await?)
    }

    /// Records what a verify found on one list, with its examples.
    pub async fn record_verify(&self, run_id: i64, list: &ListVerify) -> Result<()> {
        let mut tx = self.db.begin().await?;
        sql("INSERT INTO run_verify (run_id, target_id, list_name, list_id, verdict, read_members, list_size, \
             missing, not_yet_sent, lingering, others, settling, note) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)")
        .bind(run_id)
        .bind(list.target_id)
        .bind(&list.list_name)
        .bind(list.list_id)
        .bind(list.verdict.as_str())
        .bind(list.read_members as i64)
        .bind(list.list_size.map(|n| n as i64))
        .bind(list.missing.count as i64)
        .bind(list.not_yet_sent.count as i64)
        .bind(list.lingering.count as i64)
        .bind(list.others.count as i64)
        .bind(list.settling.count as i64)
        .bind(&list.note)
        .execute(&mut tx)
        .await?;
        for kind in DriftKind::ALL {
            for member in &list.category(kind).examples {
                sql("INSERT INTO run_verify_examples (run_id, target_id, category, member) VALUES ($1, $2, $3, $4)")
                    .bind(run_id)
                    .bind(list.target_id)
                    .bind(kind.as_str())
                    .bind(member)
                    .execute(&mut tx)
                    .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// What a verify found, per list in the order recorded; empty for a run that is no verify.
    pub async fn run_verify(&self, run_id: i64) -> Result<Vec<ListVerify>> {
        let rows = sql("SELECT target_id, list_name, list_id, verdict, read_members, list_size, missing, \
             not_yet_sent, lingering, others, settling, note FROM run_verify WHERE run_id = $1 ORDER BY target_id")
        .bind(run_id)
        .fetch_all(&self.db)
        .await?;
        let mut out = Vec::new();
        for r in rows {
            let n = |i: usize| -> Result<u64> { Ok(r.try_get::<i64, _>(i)? as u64) };
            let verdict: String = r.try_get(3)?;
            let mut list = ListVerify::new(r.try_get(0)?, &r.try_get::<String, _>(1)?, r.try_get(2)?);
            list.verdict = Verdict::parse(&verdict)?;
            list.read_members = n(4)?;
            list.list_size = r.try_get::<Option<i64>, _>(5)?.map(|s| s as u64);
            list.missing.count = n(6)?;
            list.not_yet_sent.count = n(7)?;
            list.lingering.count = n(8)?;
            list.others.count = n(9)?;
            list.settling.count = n(10)?;
            list.note = r.try_get(11)?;
            out.push(list);
        }
        let examples = sql("SELECT target_id, category, member FROM run_verify_examples WHERE run_id = $1 \
             ORDER BY target_id, category, member")
        .bind(run_id)
        .fetch_all(&self.db)
        .await?;
        for r in examples {
            let target_id: i64 = r.try_get(0)?;
            let kind = DriftKind::parse(&r.try_get::<String, _>(1)?)?;
            if let Some(list) = out.iter_mut().find(|l| l.target_id == target_id) {
                list.category_mut(kind).examples.push(r.try_get(2)?);
            }
        }
        Ok(out)
    }
}
