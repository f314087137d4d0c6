//! Moving a SQLite store into an empty PostgreSQL database (`store copy`): every row of every table, ids kept,
//! the id counters carried over (so no id is ever handed out twice), then checked: row counts per table and a
//! checksum of each export's members on both sides. The source is only read.
//!
//! Tables and columns come from the PostgreSQL schema (the same version as the SQLite one), so a table added to
//! both is copied without a change here; a SQLite table or column the PostgreSQL schema lacks stops the copy
//! before anything is written.

use std::collections::BTreeMap;

use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;
use sqlx::Row as _;

use super::{Result, Store, StoreError};

/// Tables that belong to one store and are never copied: the target's own bookkeeping, and SQLite's.
const NOT_COPIED: &[&str] = &["_sqlx_migrations", "sqlite_sequence", "upkeep", "store_meta", "replicas", "run_leases"];

/// Rows read and written per round.
const CHUNK: i64 = 5000;

/// What was copied: rows per table, and the members checksum per export, the same on both sides.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CopyReport {
    pub tables: BTreeMap<String, i64>,
    pub exports_checked: usize,
}

/// A column of the target and how its values are read from SQLite.
#[derive(Debug, Clone)]
struct TargetColumn {
    name: String,
    kind: ColumnKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnKind {
    Int,
    Bool,
    Float,
    Text,
    Time,
    Bytes,
}

impl ColumnKind {
    fn of(pg_type: &str) -> Option<ColumnKind> {
        Some(match pg_type {
            "bigint" | "integer" | "smallint" => ColumnKind::Int,
            "boolean" => ColumnKind::Bool,
            "double precision" | "real" => ColumnKind::Float,
            "text" | "character varying" => ColumnKind::Text,
            "timestamp with time zone" => ColumnKind::Time,
            "bytea" => ColumnKind::Bytes,
            _ => return None,
        })
    }
}

impl Store {
    /// Copies this SQLite store into the empty PostgreSQL store `target` (set up already), then checks the copy.
    pub async fn copy_into(&self, target: &Store) -> Result<CopyReport> {
        let source = self.pool().clone();
        let Some(pg) = target.db.postgres().cloned() else {
            return Err(StoreError::Conflict("the target of a copy must be a PostgreSQL store".into()));
        };
        let tables = target_tables(&pg).await?;
        check_covers(&source, &tables).await?;
        refuse_non_empty(&pg, &tables).await?;
        let order = in_reference_order(&pg, &tables).await?;
        // One transaction: a copy that fails part-way leaves the target empty.
        let mut tx = pg.begin().await?;
        let mut counts = BTreeMap::new();
        for table in &order {
            let n = copy_table(&source, &mut tx, table, &tables[table]).await?;
            counts.insert(table.clone(), n);
        }
        carry_id_counters(&source, &mut tx, &tables).await?;
        tx.commit().await?;
        verify_counts(&pg, &counts).await?;
        let exports_checked = verify_members(&source, &pg).await?;
        Ok(CopyReport { tables: counts, exports_checked })
    }
}

/// The target's tables to fill, with their columns (identities the database fills itself left out).
async fn target_tables(pg: &PgPool) -> Result<BTreeMap<String, Vec<TargetColumn>>> {
    let rows = sqlx::query(
        "SELECT table_name::text, column_name::text, data_type::text, \
         (is_identity = 'YES' AND identity_generation = 'ALWAYS') AS generated \
         FROM information_schema.columns WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position",
    )
    .fetch_all(pg)
    .await?;
    let mut tables: BTreeMap<String, Vec<TargetColumn>> = BTreeMap::new();
    for r in rows {
        let (table, column, pg_type, generated): (String, String, String, bool) =
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
        if NOT_COPIED.contains(&table.as_str()) || generated {
            continue;
        }
        let kind = ColumnKind::of(&pg_type).ok_or_else(|| {
            StoreError::Conflict(format!("column {table}.{column} has type {pg_type}, which a copy cannot fill"))
        })?;
        tables.entry(table).or_default().push(TargetColumn { name: column, kind });
    }
    Ok(tables)
}

/// Every SQLite table and column must have its place in the target.
async fn check_covers(source: &SqlitePool, tables: &BTreeMap<String, Vec<TargetColumn>>) -> Result<()> {
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .fetch_all(source)
        .await?;
    for table in names.iter().filter(|t| !NOT_COPIED.contains(&t.as_str())) {
        let Some(columns) = tables.get(table) else {
            return Err(StoreError::Conflict(format!(
                "the PostgreSQL schema has no table {table}: the two stores are not of the same version"
            )));
        };
        let source_columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info($1)").bind(table).fetch_all(source).await?;
        if let Some(missing) = source_columns.iter().find(|c| !columns.iter().any(|t| &t.name == *c)) {
            return Err(StoreError::Conflict(format!(
                "the PostgreSQL schema has no column {table}.{missing}: the two stores are not of the same version"
            )));
        }
    }
    Ok(())
}

/// A copy goes only into a store with nothing in it.
async fn refuse_non_empty(pg: &PgPool, tables: &BTreeMap<String, Vec<TargetColumn>>) -> Result<()> {
    for table in tables.keys() {
        let any: bool = sqlx::query_scalar(&format!("SELECT EXISTS (SELECT 1 FROM {table})")).fetch_one(pg).await?;
        if any {
            return Err(StoreError::Conflict(format!(
                "the target store is not empty (table {table} has rows): a copy goes only into a new, empty \
                 database, so that nothing is mixed or overwritten. Give it an empty database"
            )));
        }
    }
    Ok(())
}

/// Copies one table in chunks, in key order (SQLite's rowid, or the `(target_id, email)` key of the tables without
/// one), so each row is read once whatever the table's size; the rows copied.
async fn copy_table(
    source: &SqlitePool,
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    table: &str,
    columns: &[TargetColumn],
) -> Result<i64> {
    let source_columns: Vec<String> =
        sqlx::query_scalar("SELECT name FROM pragma_table_info($1)").bind(table).fetch_all(source).await?;
    // Columns the SQLite table lacks (none today) keep the target's default.
    let columns: Vec<&TargetColumn> = columns.iter().filter(|c| source_columns.contains(&c.name)).collect();
    let list = columns.iter().map(|c| format!("\"{}\"", c.name)).collect::<Vec<_>>().join(", ");
    let without_rowid: bool =
        sqlx::query_scalar("SELECT sql LIKE '%WITHOUT ROWID%' FROM sqlite_master WHERE type = 'table' AND name = $1")
            .bind(table)
            .fetch_one(source)
            .await?;
    let keyed = if without_rowid {
        let key = primary_key(source, table).await?;
        if key != ["target_id", "email"] {
            return Err(StoreError::Conflict(format!(
                "table {table} has no rowid and a key ({}) a copy does not know how to page through",
                key.join(", ")
            )));
        }
        format!(
            "SELECT {list}, target_id AS k1, email AS k2 FROM \"{table}\" WHERE (target_id, email) > ($1, $2) \
             ORDER BY target_id, email LIMIT {CHUNK}"
        )
    } else {
        format!("SELECT {list}, rowid AS k1, '' AS k2 FROM \"{table}\" WHERE rowid > $1 ORDER BY rowid LIMIT {CHUNK}")
    };
    let (mut k1, mut k2) = (i64::MIN, String::new());
    let mut copied = 0i64;
    loop {
        let mut page = sqlx::query(&keyed).bind(k1);
        if without_rowid {
            page = page.bind(&k2);
        }
        let rows = page.fetch_all(source).await?;
        let Some(last) = rows.last() else { break };
        (k1, k2) = (last.try_get("k1")?, last.try_get("k2")?);
        let placeholders = super::db::values_placeholders(rows.len(), columns.len(), 1);
        let insert = format!("INSERT INTO \"{table}\" ({list}) {placeholders}");
        let mut q = sqlx::query(&insert);
        for row in &rows {
            for (i, c) in columns.iter().enumerate() {
                q = match c.kind {
                    ColumnKind::Int => q.bind(row.try_get::<Option<i64>, _>(i)?),
                    ColumnKind::Bool => q.bind(row.try_get::<Option<bool>, _>(i)?),
                    ColumnKind::Float => q.bind(row.try_get::<Option<f64>, _>(i)?),
                    ColumnKind::Text => q.bind(row.try_get::<Option<String>, _>(i)?),
                    ColumnKind::Bytes => q.bind(row.try_get::<Option<Vec<u8>>, _>(i)?),
                    ColumnKind::Time => q.bind(row.try_get::<Option<chrono::DateTime<chrono::Utc>>, _>(i)?),
                };
            }
        }
        q.execute(&mut **tx).await?;
        copied += rows.len() as i64;
    }
    Ok(copied)
}

/// The primary key columns of a SQLite table, in key order.
async fn primary_key(source: &SqlitePool, table: &str) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT name FROM pragma_table_info($1) WHERE pk > 0 ORDER BY pk")
        .bind(table)
        .fetch_all(source)
        .await?)
}

/// The target's tables in an order that fills every referenced table before the tables that refer to it.
async fn in_reference_order(pg: &PgPool, tables: &BTreeMap<String, Vec<TargetColumn>>) -> Result<Vec<String>> {
    let edges: Vec<(String, String)> = sqlx::query_as(
        "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint \
         WHERE contype = 'f' AND connamespace = current_schema()::regnamespace",
    )
    .fetch_all(pg)
    .await?;
    let mut order: Vec<String> = Vec::new();
    let mut left: Vec<&String> = tables.keys().collect();
    while !left.is_empty() {
        let ready: Vec<&String> = left
            .iter()
            .copied()
            .filter(|t| {
                edges.iter().all(|(from, to)| from != *t || to == *t || order.contains(to) || !tables.contains_key(to))
            })
            .collect();
        if ready.is_empty() {
            return Err(StoreError::Conflict("the tables of the store refer to each other in a cycle".into()));
        }
        left.retain(|t| !ready.contains(t));
        order.extend(ready.into_iter().cloned());
    }
    Ok(order)
}

/// Each identity of the target continues after the highest id the source ever handed out (its AUTOINCREMENT
/// counter, which remembers ids of rows deleted since), so no id is reused.
async fn carry_id_counters(
    source: &SqlitePool,
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    tables: &BTreeMap<String, Vec<TargetColumn>>,
) -> Result<()> {
    let counters: Vec<(String, i64)> =
        sqlx::query_as("SELECT name, seq FROM sqlite_sequence").fetch_all(source).await.unwrap_or_default();
    for (table, columns) in tables {
        if !columns.iter().any(|c| c.name == "id") {
            continue;
        }
        let sequence: Option<String> =
            sqlx::query_scalar("SELECT pg_get_serial_sequence($1, 'id')").bind(table).fetch_one(&mut **tx).await?;
        let Some(sequence) = sequence else { continue };
        let max: Option<i64> =
            sqlx::query_scalar(&format!("SELECT MAX(id) FROM \"{table}\"")).fetch_one(&mut **tx).await?;
        let counter = counters.iter().find(|(n, _)| n == table).map(|(_, s)| *s);
        let last = max.into_iter().chain(counter).max();
        if let Some(last) = last {
            sqlx::query("SELECT setval($1, $2)").bind(&sequence).bind(last).execute(&mut **tx).await?;
        }
    }
    Ok(())
}

async fn verify_counts(pg: &PgPool, counts: &BTreeMap<String, i64>) -> Result<()> {
    for (table, expected) in counts {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM \"{table}\"")).fetch_one(pg).await?;
        if n != *expected {
            return Err(StoreError::Conflict(format!(
                "the copy of table {table} holds {n} rows, the source {expected}: the copy is not to be trusted; \
                 drop the target database and copy again"
            )));
        }
    }
    Ok(())
}

/// Compares a checksum of every export's members on both sides; the exports checked.
async fn verify_members(source: &SqlitePool, pg: &PgPool) -> Result<usize> {
    const MEMBERS: &str = "SELECT t.export_id, m.target_id, m.email, m.fields_hash, m.state, m.ours, m.rejected_at, \
         m.retry_rejected, m.paired_email FROM members m JOIN targets t ON t.id = m.target_id";
    let mut left: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    for row in sqlx::query(MEMBERS).fetch_all(source).await? {
        let e = left.entry(row.try_get(0)?).or_default();
        e.0 += 1;
        e.1 = e.1.wrapping_add(member_hash(&MemberRow::from_sqlite(&row)?));
    }
    let mut right: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
    for row in sqlx::query(MEMBERS).fetch_all(pg).await? {
        let e = right.entry(row.try_get(0)?).or_default();
        e.0 += 1;
        e.1 = e.1.wrapping_add(member_hash(&MemberRow::from_postgres(&row)?));
    }
    if left != right {
        let export = left.keys().chain(right.keys()).find(|k| left.get(k) != right.get(k)).copied().unwrap_or(0);
        return Err(StoreError::Conflict(format!(
            "the members of export #{export} differ between the source and the copy: the copy is not to be \
             trusted; drop the target database and copy again"
        )));
    }
    Ok(left.len())
}

/// One member, as both engines read it.
struct MemberRow {
    target_id: i64,
    email: String,
    fields_hash: i64,
    state: String,
    ours: bool,
    rejected_at: Option<i64>,
    retry_rejected: bool,
    paired_email: Option<String>,
}

impl MemberRow {
    fn from_sqlite(r: &sqlx::sqlite::SqliteRow) -> Result<MemberRow> {
        Ok(MemberRow {
            target_id: r.try_get(1)?,
            email: r.try_get(2)?,
            fields_hash: r.try_get(3)?,
            state: r.try_get(4)?,
            ours: r.try_get(5)?,
            rejected_at: r.try_get(6)?,
            retry_rejected: r.try_get(7)?,
            paired_email: r.try_get(8)?,
        })
    }

    fn from_postgres(r: &sqlx::postgres::PgRow) -> Result<MemberRow> {
        Ok(MemberRow {
            target_id: r.try_get(1)?,
            email: r.try_get(2)?,
            fields_hash: r.try_get(3)?,
            state: r.try_get(4)?,
            ours: r.try_get(5)?,
            rejected_at: r.try_get(6)?,
            retry_rejected: r.try_get(7)?,
            paired_email: r.try_get(8)?,
        })
    }
}

fn member_hash(m: &MemberRow) -> u64 {
    let text = format!(
        "{}\0{}\0{}\0{}\0{}\0{:?}\0{}\0{:?}",
        m.target_id, m.email, m.fields_hash, m.state, m.ours, m.rejected_at, m.retry_rejected, m.paired_email
    );
    xxhash_rust::xxh3::xxh3_64(text.as_bytes())
}
