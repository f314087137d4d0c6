//! The two database engines the store runs on, behind one small query interface: SQLite (embedded, the default)
//! and PostgreSQL (shared by several daemons). Store code writes one SQL text with `$1`, `$2`, ... placeholders
//! (both engines read them) and binds values of the few types the store uses; `Row::try_get` reads them back from
//! either engine. Where the two dialects differ, the caller picks the text with `Db::kind`.
//!
//! A PostgreSQL handle may be fenced (`Fence`): then every transaction it begins, and every statement that is not
//! a plain `SELECT`, first checks that the run's lease is still the one it was given, inside the same transaction,
//! so a daemon that lost its lease (a long pause, a partition) writes nothing more.
//!
//! It owns only execution: pools, transactions, fencing and value conversion. Every SQL statement stays in the
//! store's own files.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, PgPool, PgRow};
use sqlx::sqlite::{SqliteArguments, SqlitePool, SqliteRow};
use sqlx::{Decode, Postgres, Sqlite, Type};

/// Which engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

/// A pool of connections to the store's database.
#[derive(Debug, Clone)]
pub(crate) enum Db {
    Sqlite(SqlitePool),
    /// With the fence of the run whose writes go through it, if any.
    Postgres(PgPool, Option<Arc<Fence>>),
}

/// The lease a run's writes must still hold: export, holder and fencing number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub export_id: i64,
    pub holder: String,
    pub number: i64,
}

/// Fails a transaction whose fence is gone; the error is recognised by `is_fenced`. `FOR KEY SHARE` keeps the
/// lease from being taken over until the transaction ends (a takeover locks the row `FOR UPDATE` first) without
/// holding up its renewals, which update no key: with `FOR SHARE`, a run's many concurrent writes kept the renewal
/// waiting until the lease ran short and the run stopped itself (measured at a million members under load).
const FENCE_CHECK: &str = "SELECT 1 FROM run_leases WHERE export_id = $1 AND holder = $2 AND fence = $3 \
     AND expires_at > clock_timestamp() FOR KEY SHARE";

/// The message of the error a fenced write fails with.
pub(crate) const FENCED: &str = "the run's lease moved on: another daemon holds the export now";

impl Db {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Db::Sqlite(_) => Kind::Sqlite,
            Db::Postgres(..) => Kind::Postgres,
        }
    }

    /// The same pool, its writes fenced by `fence`.
    pub(crate) fn fenced(&self, fence: Fence) -> Db {
        match self {
            Db::Sqlite(p) => Db::Sqlite(p.clone()),
            Db::Postgres(p, _) => Db::Postgres(p.clone(), Some(Arc::new(fence))),
        }
    }

    /// The PostgreSQL pool, for what only PostgreSQL stores do (leases, locks, notifications).
    pub(crate) fn postgres(&self) -> Option<&PgPool> {
        match self {
            Db::Postgres(p, _) => Some(p),
            Db::Sqlite(_) => None,
        }
    }

    /// Starts a transaction (on a fenced pool, one that holds the fence until it ends).
    pub(crate) async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(p) => Tx::Sqlite(p.begin().await?),
            Db::Postgres(p, fence) => {
                let mut tx = p.begin().await?;
                if let Some(f) = fence {
                    check_fence(&mut tx, f).await?;
                }
                Tx::Postgres(tx)
            }
        })
    }

    /// Starts a transaction that holds no fence, even on a fenced pool (for locks held while a run waits on
    /// Iterable: a fence held that long would keep the lease from being renewed).
    pub(crate) async fn begin_unfenced(&self) -> Result<Tx, sqlx::Error> {
        Ok(match self {
            Db::Sqlite(p) => Tx::Sqlite(p.begin().await?),
            Db::Postgres(p, _) => Tx::Postgres(p.begin().await?),
        })
    }

    /// Whether statements on this pool must go through a fenced transaction.
    fn is_fenced(&self) -> bool {
        matches!(self, Db::Postgres(_, Some(_)))
    }

    pub(crate) async fn close(&self) {
        match self {
            Db::Sqlite(p) => p.close().await,
            Db::Postgres(p, _) => p.close().await,
        }
    }
}

/// Checks `fence` inside the transaction `conn` is in (a dedicated connection's own writes).
pub(crate) async fn check_fence(conn: &mut sqlx::PgConnection, fence: &Fence) -> Result<(), sqlx::Error> {
    let held = sqlx::query(FENCE_CHECK)
        .bind(fence.export_id)
        .bind(&fence.holder)
        .bind(fence.number)
        .fetch_optional(conn)
        .await?;
    if held.is_none() {
        return Err(sqlx::Error::Protocol(FENCED.into()));
    }
    Ok(())
}

/// Whether `error` is a write refused because its lease moved on.
pub(crate) fn is_fenced(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Protocol(m) if m == FENCED)
}

/// Whether a statement may change something (anything but a plain `SELECT`).
fn writes(sql: &str) -> bool {
    !sql.trim_start().get(..6).is_some_and(|w| w.eq_ignore_ascii_case("SELECT"))
}

/// A transaction on either engine; dropped without `commit`, it rolls back.
pub(crate) enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

impl Tx {
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Postgres(t) => t.commit().await,
        }
    }

    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.rollback().await,
            Tx::Postgres(t) => t.rollback().await,
        }
    }

    pub(crate) fn kind(&self) -> Kind {
        match self {
            Tx::Sqlite(_) => Kind::Sqlite,
            Tx::Postgres(_) => Kind::Postgres,
        }
    }
}

/// Where a statement runs: on the pool, inside a transaction, or on a dedicated connection (a plan session's).
pub(crate) enum On<'a> {
    Db(&'a Db),
    Tx(&'a mut Tx),
    Sqlite(&'a mut sqlx::SqliteConnection),
    Postgres(&'a mut sqlx::PgConnection),
}

impl<'a> From<&'a mut sqlx::SqliteConnection> for On<'a> {
    fn from(c: &'a mut sqlx::SqliteConnection) -> Self {
        On::Sqlite(c)
    }
}

impl<'a> From<&'a mut sqlx::PgConnection> for On<'a> {
    fn from(c: &'a mut sqlx::PgConnection) -> Self {
        On::Postgres(c)
    }
}

impl<'a> From<&'a Db> for On<'a> {
    fn from(db: &'a Db) -> Self {
        On::Db(db)
    }
}

impl<'a> From<&'a mut Tx> for On<'a> {
    fn from(tx: &'a mut Tx) -> Self {
        On::Tx(tx)
    }
}

impl<'a, 'b: 'a> From<&'a mut &'b mut Tx> for On<'a> {
    fn from(tx: &'a mut &'b mut Tx) -> Self {
        On::Tx(tx)
    }
}

/// A value bound to a statement: the types the store's columns hold.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    I64(Option<i64>),
    F64(Option<f64>),
    Bool(Option<bool>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
    Time(Option<DateTime<Utc>>),
}

macro_rules! arg_from {
    ($variant:ident, $t:ty, $conv:expr) => {
        impl From<$t> for Arg {
            fn from(v: $t) -> Arg {
                #[allow(clippy::redundant_closure_call)]
                Arg::$variant(Some(($conv)(v)))
            }
        }
        impl From<Option<$t>> for Arg {
            fn from(v: Option<$t>) -> Arg {
                #[allow(clippy::redundant_closure_call)]
                Arg::$variant(v.map($conv))
            }
        }
    };
}

arg_from!(I64, i64, |v| v);
arg_from!(I64, &i64, |v: &i64| *v);
arg_from!(I64, i32, i64::from);
arg_from!(I64, u32, i64::from);
arg_from!(F64, f64, |v| v);
arg_from!(Bool, bool, |v| v);
arg_from!(Bool, &bool, |v: &bool| *v);
arg_from!(Text, String, |v| v);
arg_from!(Text, &str, str::to_string);
arg_from!(Text, &String, String::clone);
arg_from!(Bytes, Vec<u8>, |v| v);
arg_from!(Bytes, &[u8], <[u8]>::to_vec);
arg_from!(Bytes, &Vec<u8>, Vec::clone);
arg_from!(Time, DateTime<Utc>, |v| v);
arg_from!(Time, &DateTime<Utc>, |v: &DateTime<Utc>| *v);

impl From<Option<&Option<String>>> for Arg {
    fn from(v: Option<&Option<String>>) -> Arg {
        Arg::Text(v.cloned().flatten())
    }
}

impl From<&Option<String>> for Arg {
    fn from(v: &Option<String>) -> Arg {
        Arg::Text(v.clone())
    }
}

/// A value read from a row of either engine.
pub(crate) trait Value:
    Send + Unpin + for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}

impl<T> Value for T where
    T: Send + Unpin + for<'r> Decode<'r, Sqlite> + Type<Sqlite> + for<'r> Decode<'r, Postgres> + Type<Postgres>
{
}

/// A column, by name or position.
pub(crate) trait Column: sqlx::ColumnIndex<SqliteRow> + sqlx::ColumnIndex<PgRow> {}

impl<I: sqlx::ColumnIndex<SqliteRow> + sqlx::ColumnIndex<PgRow>> Column for I {}

/// A row of either engine.
pub(crate) enum Row {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

impl Row {
    pub(crate) fn try_get<T: Value, I: Column>(&self, column: I) -> Result<T, sqlx::Error> {
        use sqlx::Row as _;
        match self {
            Row::Sqlite(r) => r.try_get(column),
            Row::Postgres(r) => r.try_get(column),
        }
    }
}

/// `query` with `args` bound in order; a macro, as a function generic over both engines would need a bound per type.
macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut q = $query;
        for a in $args {
            q = match a {
                Arg::I64(v) => q.bind(*v),
                Arg::F64(v) => q.bind(*v),
                Arg::Bool(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.as_deref()),
                Arg::Bytes(v) => q.bind(v.as_deref()),
                Arg::Time(v) => q.bind(*v),
            };
        }
        q
    }};
}

/// A statement with its values, to run on either engine.
#[must_use = "a statement does nothing until it is executed or fetched"]
pub(crate) struct Statement<'s> {
    sql: Cow<'s, str>,
    args: Vec<Arg>,
}

/// A statement: `$1`, `$2`, ... are bound in the order of `bind` calls.
pub(crate) fn sql<'s>(text: impl Into<Cow<'s, str>>) -> Statement<'s> {
    Statement { sql: text.into(), args: Vec::new() }
}

impl<'s> Statement<'s> {
    pub(crate) fn bind(mut self, value: impl Into<Arg>) -> Self {
        self.args.push(value.into());
        self
    }

    /// The statement as SQLite binds it fastest: see `Positional`.
    fn sqlite(&self) -> Positional<'_> {
        Positional::of(&self.sql, &self.args)
    }

    fn postgres(&self) -> sqlx::query::Query<'_, Postgres, PgArguments> {
        bind_all!(sqlx::query(&self.sql), &self.args)
    }

    /// Runs it; the rows it changed.
    pub(crate) async fn execute<'a>(self, on: impl Into<On<'a>>) -> Result<u64, sqlx::Error> {
        let on = on.into();
        if let On::Db(db) = &on {
            if db.is_fenced() && writes(&self.sql) {
                let mut tx = db.begin().await?;
                let n = self.execute_on(On::Tx(&mut tx)).await?;
                tx.commit().await?;
                return Ok(n);
            }
        }
        self.execute_on(on).await
    }

    async fn execute_on(self, on: On<'_>) -> Result<u64, sqlx::Error> {
        Ok(match on {
            On::Db(Db::Sqlite(p)) => self.sqlite().query().execute(p).await?.rows_affected(),
            On::Db(Db::Postgres(p, _)) => self.postgres().execute(p).await?.rows_affected(),
            On::Tx(Tx::Sqlite(t)) => self.sqlite().query().execute(&mut **t).await?.rows_affected(),
            On::Tx(Tx::Postgres(t)) => self.postgres().execute(&mut **t).await?.rows_affected(),
            On::Sqlite(c) => self.sqlite().query().execute(c).await?.rows_affected(),
            On::Postgres(c) => self.postgres().execute(c).await?.rows_affected(),
        })
    }

    pub(crate) async fn fetch_all<'a>(self, on: impl Into<On<'a>>) -> Result<Vec<Row>, sqlx::Error> {
        let on = on.into();
        if let On::Db(db) = &on {
            if db.is_fenced() && writes(&self.sql) {
                let mut tx = db.begin().await?;
                let rows = self.fetch_all_on(On::Tx(&mut tx)).await?;
                tx.commit().await?;
                return Ok(rows);
            }
        }
        self.fetch_all_on(on).await
    }

    async fn fetch_all_on(self, on: On<'_>) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match on {
            On::Db(Db::Sqlite(p)) => self.sqlite().query().fetch_all(p).await?.into_iter().map(Row::Sqlite).collect(),
            On::Db(Db::Postgres(p, _)) => self.postgres().fetch_all(p).await?.into_iter().map(Row::Postgres).collect(),
            On::Tx(Tx::Sqlite(t)) => {
                self.sqlite().query().fetch_all(&mut **t).await?.into_iter().map(Row::Sqlite).collect()
            }
            On::Tx(Tx::Postgres(t)) => {
                self.postgres().fetch_all(&mut **t).await?.into_iter().map(Row::Postgres).collect()
            }
            On::Sqlite(c) => self.sqlite().query().fetch_all(c).await?.into_iter().map(Row::Sqlite).collect(),
            On::Postgres(c) => self.postgres().fetch_all(c).await?.into_iter().map(Row::Postgres).collect(),
        })
    }

    pub(crate) async fn fetch_optional<'a>(self, on: impl Into<On<'a>>) -> Result<Option<Row>, sqlx::Error> {
        let on = on.into();
        if let On::Db(db) = &on {
            if db.is_fenced() && writes(&self.sql) {
                let mut tx = db.begin().await?;
                let row = self.fetch_optional_on(On::Tx(&mut tx)).await?;
                tx.commit().await?;
                return Ok(row);
            }
        }
        self.fetch_optional_on(on).await
    }

    async fn fetch_optional_on(self, on: On<'_>) -> Result<Option<Row>, sqlx::Error> {
        Ok(match on {
            On::Db(Db::Sqlite(p)) => self.sqlite().query().fetch_optional(p).await?.map(Row::Sqlite),
            On::Db(Db::Postgres(p, _)) => self.postgres().fetch_optional(p).await?.map(Row::Postgres),
            On::Tx(Tx::Sqlite(t)) => self.sqlite().query().fetch_optional(&mut **t).await?.map(Row::Sqlite),
            On::Tx(Tx::Postgres(t)) => self.postgres().fetch_optional(&mut **t).await?.map(Row::Postgres),
            On::Sqlite(c) => self.sqlite().query().fetch_optional(c).await?.map(Row::Sqlite),
            On::Postgres(c) => self.postgres().fetch_optional(c).await?.map(Row::Postgres),
        })
    }

    pub(crate) async fn fetch_one<'a>(self, on: impl Into<On<'a>>) -> Result<Row, sqlx::Error> {
        self.fetch_optional(on).await?.ok_or(sqlx::Error::RowNotFound)
    }

    /// The first column of the first row.
    pub(crate) async fn scalar<'a, T: Value>(self, on: impl Into<On<'a>>) -> Result<T, sqlx::Error> {
        self.fetch_one(on).await?.try_get(0)
    }

    /// The first column of the first row, if there is a row.
    pub(crate) async fn scalar_optional<'a, T: Value>(self, on: impl Into<On<'a>>) -> Result<Option<T>, sqlx::Error> {
        self.fetch_optional(on).await?.map(|r| r.try_get(0)).transpose()
    }

    /// The first two columns of every row.
    pub(crate) async fn pairs<'a, A: Value, B: Value>(self, on: impl Into<On<'a>>) -> Result<Vec<(A, B)>, sqlx::Error> {
        self.fetch_all(on).await?.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// The first column of every row.
    pub(crate) async fn scalars<'a, T: Value>(self, on: impl Into<On<'a>>) -> Result<Vec<T>, sqlx::Error> {
        self.fetch_all(on).await?.iter().map(|r| r.try_get(0)).collect()
    }
}

/// A statement rewritten for SQLite with anonymous `?` placeholders, its values in the order they appear.
///
/// SQLite reads `$1` as a named parameter: sqlx asks the name of every parameter it binds, and SQLite finds a name
/// (and, while preparing, checks a new one) by walking the statement's list of names, so a statement with N numbered
/// parameters costs N² to prepare and bind. With anonymous `?` there is no list at all. A multi-row upsert of 6,000
/// values spent half of a million-member first export there (perf, 20.6 s against 7.3 s); small statements were not
/// enough, as every `$N` statement paid it a little.
pub(crate) struct Positional<'s> {
    sql: Cow<'s, str>,
    args: Vec<&'s Arg>,
}

impl<'s> Positional<'s> {
    /// Rewrites every `$N` outside quotes and comments to `?`, binding the N-th value there (a value named twice is
    /// bound twice). A text without `$N` is kept as it is, its values in the order given.
    pub(crate) fn of(sql: &'s str, args: &'s [Arg]) -> Self {
        if !sql.contains('$') {
            return Positional { sql: Cow::Borrowed(sql), args: args.iter().collect() };
        }
        let bytes = sql.as_bytes();
        let mut out = String::with_capacity(sql.len());
        let mut order = Vec::with_capacity(args.len());
        let mut copied = 0;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                quote @ (b'\'' | b'"') => {
                    // To the closing quote; a doubled quote inside reads as two quoted runs, which is the same.
                    i += 1;
                    while i < bytes.len() && bytes[i] != quote {
                        i += 1;
                    }
                    i += 1;
                }
                b'-' if bytes.get(i + 1) == Some(&b'-') => {
                    while i < bytes.len() && bytes[i] != b'\n' {
                        i += 1;
                    }
                }
                b'/' if bytes.get(i + 1) == Some(&b'*') => {
                    i += 2;
                    while i < bytes.len() && !(bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/')) {
                        i += 1;
                    }
                    i += 2;
                }
                b'$' if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                    let start = i;
                    i += 1;
                    let mut n = 0usize;
                    while let Some(d) = bytes.get(i).filter(|b| b.is_ascii_digit()) {
                        n = n * 10 + usize::from(d - b'0');
                        i += 1;
                    }
                    out.push_str(&sql[copied..start]);
                    out.push('?');
                    copied = i;
                    // A number with no value binds NULL, as sqlx does for an unbound `$N`; the store never does it.
                    debug_assert!((1..=args.len()).contains(&n), "${n} in a statement with {} values", args.len());
                    order.push(n.checked_sub(1).and_then(|k| args.get(k)).unwrap_or(&NULL));
                }
                _ => i += 1,
            }
        }
        if order.is_empty() {
            return Positional { sql: Cow::Borrowed(sql), args: args.iter().collect() };
        }
        out.push_str(&sql[copied.min(sql.len())..]);
        Positional { sql: Cow::Owned(out), args: order }
    }

    fn query(&self) -> sqlx::query::Query<'_, Sqlite, SqliteArguments<'_>> {
        bind_all!(sqlx::query(&self.sql), &self.args)
    }
}

const NULL: Arg = Arg::I64(None);

/// `VALUES ($n, ...), (...)` for `rows` rows of `columns` values each, numbered from `$first`: the multi-row
/// insert both engines take (bind the values row by row, in order).
pub(crate) fn values_placeholders(rows: usize, columns: usize, first: usize) -> String {
    let mut out = String::with_capacity(rows * columns * 6 + 8);
    out.push_str("VALUES ");
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..columns {
            if c > 0 {
                out.push_str(", ");
            }
            out.push('$');
            out.push_str(&(first + r * columns + c).to_string());
        }
        out.push(')');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_selects_go_unfenced() {
        assert!(!writes("SELECT 1"));
        assert!(!writes("  select id FROM runs"));
        assert!(writes("UPDATE runs SET status = 'x'"));
        assert!(writes("INSERT INTO runs (id) VALUES (1) RETURNING id"));
        assert!(writes("WITH x AS (SELECT 1) DELETE FROM runs"));
        assert!(writes("DELETE FROM runs"));
    }

    fn texts(p: &Positional) -> Vec<Option<String>> {
        p.args.iter().map(|a| if let Arg::Text(t) = a { t.clone() } else { None }).collect()
    }

    #[test]
    fn sqlite_gets_anonymous_placeholders_with_values_in_the_order_they_appear() {
        let args: Vec<Arg> = ["a", "b", "c"].into_iter().map(Arg::from).collect();
        let p =
            Positional::of("SELECT $3, $1 || '$2' || \"$2\" /* $2 */ FROM t WHERE x = $1 -- $2\n AND y = $2", &args);
        assert_eq!(p.sql, "SELECT ?, ? || '$2' || \"$2\" /* $2 */ FROM t WHERE x = ? -- $2\n AND y = ?");
        assert_eq!(texts(&p), [Some("c".into()), Some("a".into()), Some("a".into()), Some("b".into())]);
        let p = Positional::of("SELECT '$1', 'it''s $1' FROM t", &args);
        assert!(matches!(p.sql, Cow::Borrowed("SELECT '$1', 'it''s $1' FROM t")));
        assert_eq!(texts(&p), [Some("a".into()), Some("b".into()), Some("c".into())]);
        let p = Positional::of("VALUES ($1, $2, $3), ($1, $3, $2)", &args);
        assert_eq!(p.sql, "VALUES (?, ?, ?), (?, ?, ?)");
        assert_eq!(p.args.len(), 6);
    }

    #[test]
    fn multi_row_placeholders_number_every_value_in_row_order() {
        assert_eq!(values_placeholders(2, 3, 1), "VALUES ($1, $2, $3), ($4, $5, $6)");
        assert_eq!(values_placeholders(1, 2, 4), "VALUES ($4, $5)");
    }
}
