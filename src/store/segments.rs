//! Segments: named queries over customer profiles, and where a PostgreSQL segment's database password comes from.
//! The password itself is never stored in clear: `source` holds the URL without it, and `password_*` a reference
//! or the password sealed by `crate::secrets`.

use super::db::{sql, Row, Tx};
use chrono::{DateTime, Utc};

use super::{now, Result, Store, StoreError};

/// Where a PostgreSQL segment's database password comes from. Only references are stored for `Env` and `File`
/// (read at each use); `Sealed` passwords are encrypted with the master key (see `crate::secrets`).
#[derive(Clone, Default, PartialEq, Eq)]
pub enum SourcePassword {
    /// No password (or, in a store not yet upgraded, one still inside `source`).
    #[default]
    None,
    Env(String),
    File(String),
    Sealed {
        ciphertext: Vec<u8>,
        nonce: Vec<u8>,
    },
}

impl std::fmt::Debug for SourcePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl SourcePassword {
    /// Where the password comes from, never the password itself.
    pub fn describe(&self) -> String {
        match self {
            SourcePassword::None => "none".to_string(),
            SourcePassword::Env(var) => format!("environment variable {var}"),
            SourcePassword::File(path) => format!("file {path}"),
            SourcePassword::Sealed { .. } => "stored in the store, encrypted".to_string(),
        }
    }

    /// The values of its columns.
    fn columns(&self) -> PasswordColumns<'_> {
        let none = PasswordColumns { kind: None, reference: None, ciphertext: None, nonce: None };
        match self {
            SourcePassword::None => none,
            SourcePassword::Env(var) => PasswordColumns { kind: Some("env"), reference: Some(var), ..none },
            SourcePassword::File(path) => PasswordColumns { kind: Some("file"), reference: Some(path), ..none },
            SourcePassword::Sealed { ciphertext, nonce } => {
                PasswordColumns { kind: Some("stored"), ciphertext: Some(ciphertext), nonce: Some(nonce), ..none }
            }
        }
    }
}

/// How a segment was last saved, which decides what its source may reach at every read (see
/// `crate::access::segment_reach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentOrigin {
    /// Over the HTTP API: an account's request.
    Http,
    /// From the CLI, by the operator on the host.
    Cli,
}

impl SegmentOrigin {
    /// What a source saved from here may reach on this host: from the CLI, what the operator named; over the HTTP
    /// API, only files inside `[sources] allowed_dirs` (as configured now) and PostgreSQL URLs that name no file and
    /// no socket. Decided here once, for saving and for every read.
    pub fn reach(self, sources: &crate::config::SourcesConfig) -> crate::source::Reach {
        match self {
            SegmentOrigin::Cli => crate::source::Reach::Anywhere,
            SegmentOrigin::Http => crate::source::Reach::Within(sources.allowed_dirs.clone()),
        }
    }

    /// As stored, and as `segment list` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            SegmentOrigin::Http => "http",
            SegmentOrigin::Cli => "cli",
        }
    }

    /// The stored value; NULL (saved before origins were recorded, not yet settled by `Store::open_configured`)
    /// reads as `Http`, the confined side.
    fn from_column(value: Option<&str>) -> Result<SegmentOrigin> {
        match value {
            None | Some("http") => Ok(SegmentOrigin::Http),
            Some("cli") => Ok(SegmentOrigin::Cli),
            Some(other) => Err(StoreError::unknown_value("segments", "origin", other)),
        }
    }
}

/// `password_source`, `password_ref`, `password_ciphertext`, `password_nonce`.
struct PasswordColumns<'a> {
    kind: Option<&'static str>,
    reference: Option<&'a str>,
    ciphertext: Option<&'a [u8]>,
    nonce: Option<&'a [u8]>,
}

#[derive(Clone)]
pub struct Segment {
    pub id: i64,
    pub name: String,
    /// The source as stored (`sqlite:PATH`, a postgres URL without password, `csv:PATH`, `jsonl:PATH`). A store
    /// not yet upgraded may still hold a password here: show it only through [`Segment::shown_source`].
    pub source: String,
    pub query: Option<String>,
    pub password: SourcePassword,
    /// How it was last saved (added or changed).
    pub origin: SegmentOrigin,
    pub created_at: DateTime<Utc>,
}

impl Segment {
    /// What its source may reach at a read now (see [`SegmentOrigin::reach`]).
    pub fn reach(&self, sources: &crate::config::SourcesConfig) -> crate::source::Reach {
        self.origin.reach(sources)
    }

    /// The source for output and messages, with `***` where a database password goes.
    pub fn shown_source(&self) -> String {
        self.source
            .parse::<crate::source::SourceSpec>()
            .map_or_else(|_| "(unreadable)".into(), |s| s.shown(self.password != SourcePassword::None))
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("source", &self.shown_source())
            .field("password", &self.password)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

const SELECT: &str = "SELECT id, name, source, query, password_source, password_ref, password_ciphertext, \
     password_nonce, origin, created_at FROM segments";

fn from_row(row: Row) -> Result<Segment> {
    let kind: Option<String> = row.try_get("password_source")?;
    let reference = || -> Result<String> { Ok(row.try_get::<Option<String>, _>("password_ref")?.unwrap_or_default()) };
    let password = match kind.as_deref() {
        None => SourcePassword::None,
        Some("env") => SourcePassword::Env(reference()?),
        Some("file") => SourcePassword::File(reference()?),
        Some("stored") => SourcePassword::Sealed {
            ciphertext: row.try_get::<Option<Vec<u8>>, _>("password_ciphertext")?.unwrap_or_default(),
            nonce: row.try_get::<Option<Vec<u8>>, _>("password_nonce")?.unwrap_or_default(),
        },
        Some(other) => return Err(StoreError::unknown_value("segments", "password_source", other)),
    };
    Ok(Segment {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        source: row.try_get("source")?,
        query: row.try_get("query")?,
        password,
        origin: SegmentOrigin::from_column(row.try_get::<Option<String>, _>("origin")?.as_deref())?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Adds a segment without a database password, as saved from the CLI.
    pub async fn add_segment(&self, name: &str, source: &str, query: Option<&str>) -> Result<Segment> {
        self.add_segment_with_password(name, source, query, SegmentOrigin::Cli, |_| SourcePassword::None).await
    }

    /// Adds a segment saved from `origin` whose database password is `password(id)`, given the new segment's id (a
    /// sealed password is bound to it). The segment and its password are saved together or not at all.
    pub async fn add_segment_with_password(
        &self,
        name: &str,
        source: &str,
        query: Option<&str>,
        origin: SegmentOrigin,
        password: impl FnOnce(i64) -> SourcePassword,
    ) -> Result<Segment> {
        super::names::check_segment_name(name).map_err(|problem| StoreError::InvalidName {
            what: "segment",
            name: name.into(),
            problem,
        })?;
        let mut tx = self.db.begin().await?;
        let id: i64 = sql(
            "INSERT INTO segments (name, source, query, origin, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(name)
        .bind(source)
        .bind(query)
        .bind(origin.as_str())
        .bind(now())
        .scalar(&mut tx)
        .await
        .map_err(|e| StoreError::on_insert(e, "segment", name))?;
        set_password(&mut tx, id, &password(id)).await?;
        tx.commit().await?;
        self.segment(name).await
    }

    pub async fn segments(&self) -> Result<Vec<Segment>> {
        let rows = sql(format!("{SELECT} ORDER BY name")).fetch_all(&self.db).await?;
        rows.into_iter().map(from_row).collect()
    }

    pub async fn segment(&self, name: &str) -> Result<Segment> {
        sql(format!("{SELECT} WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.db)
            .await?
            .map(from_row)
            .transpose()?
            .ok_or_else(|| StoreError::not_found("segment", name, "segment list"))
    }

    /// Changes a segment's source, query and password, saved from `origin`. Exports that use it keep what they put on
    /// its list, so their next run sends only the difference.
    pub async fn edit_segment(
        &self,
        name: &str,
        source: &str,
        query: Option<&str>,
        origin: SegmentOrigin,
        password: &SourcePassword,
    ) -> Result<Segment> {
        let segment = self.segment(name).await?;
        let mut tx = self.db.begin().await?;
        sql("UPDATE segments SET source = $1, query = $2, origin = $3 WHERE id = $4")
            .bind(source)
            .bind(query)
            .bind(origin.as_str())
            .bind(segment.id)
            .execute(&mut tx)
            .await?;
        set_password(&mut tx, segment.id, password).await?;
        tx.commit().await?;
        self.segment(name).await
    }

    /// Segments that may still hold a database password inside their source, as versions before source passwords
    /// were kept apart stored it: PostgreSQL sources with no password kept apart.
    pub(crate) async fn segments_with_password_in_source(&self) -> Result<Vec<Segment>> {
        let rows = sql(format!("{SELECT} WHERE password_source IS NULL AND source LIKE 'postgres%' ORDER BY id"))
            .fetch_all(&self.db)
            .await?;
        let segments: Vec<Segment> = rows.into_iter().map(from_row).collect::<Result<_>>()?;
        Ok(segments
            .into_iter()
            .filter(|s| s.source.parse::<crate::source::SourceSpec>().is_ok_and(|spec| spec.password().is_some()))
            .collect())
    }

    /// Replaces sources that held a password in clear by the source without it and the password sealed, in one
    /// transaction: (segment id, source as it was, source without password, sealed password). A row changed
    /// meanwhile (edited by another process) is left as it is. Returns how many were replaced.
    pub(crate) async fn replace_passwords_in_source(
        &self,
        sealed: &[(i64, String, String, SourcePassword)],
    ) -> Result<u64> {
        let mut tx = self.db.begin().await?;
        let mut replaced = 0;
        for (id, old_source, new_source, password) in sealed {
            let columns = password.columns();
            replaced += sql(
                "UPDATE segments SET source = $1, password_source = $2, password_ref = $3, password_ciphertext = $4, \
                 password_nonce = $5 WHERE id = $6 AND source = $7 AND password_source IS NULL",
            )
            .bind(new_source)
            .bind(columns.kind)
            .bind(columns.reference)
            .bind(columns.ciphertext)
            .bind(columns.nonce)
            .bind(id)
            .bind(old_source)
            .execute(&mut tx)
            .await?;
        }
        tx.commit().await?;
        Ok(replaced)
    }

    /// Segments saved before the store recorded how (origin NULL): (id, source as stored, whether the audit trail
    /// records its latest add or change, since it was added, as coming over the API).
    pub(crate) async fn segments_without_origin(&self) -> Result<Vec<(i64, String, bool)>> {
        let rows = sql("SELECT s.id, s.source, COALESCE((SELECT a.origin LIKE 'api %' FROM audit a \
             WHERE a.target = s.name AND a.action IN ('segment.add', 'segment.edit') AND a.at >= s.created_at \
             ORDER BY a.id DESC LIMIT 1), FALSE) AS over_api FROM segments s WHERE s.origin IS NULL ORDER BY s.id")
        .fetch_all(&self.db)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
    }

    /// Records how segments saved before origins were recorded count: (id, origin). A row settled meanwhile (by
    /// another process, or saved again) is left as it is. Returns how many were settled.
    pub(crate) async fn settle_origins(&self, settled: &[(i64, SegmentOrigin)]) -> Result<u64> {
        let mut tx = self.db.begin().await?;
        let mut done = 0;
        for (id, origin) in settled {
            done += sql("UPDATE segments SET origin = $1 WHERE id = $2 AND origin IS NULL")
                .bind(origin.as_str())
                .bind(id)
                .execute(&mut tx)
                .await?;
        }
        tx.commit().await?;
        Ok(done)
    }

    /// Members counted by the latest run that read the whole segment (its rows less invalid and duplicate ones),
    /// and when that run ended; None before any.
    pub async fn segment_last_count(&self, segment_id: i64) -> Result<Option<(u64, DateTime<Utc>)>> {
        let row =
            sql("SELECT rt.source_rows - rt.invalid - rt.duplicates AS members, r.finished_at FROM run_targets rt \
             JOIN targets t ON t.id = rt.target_id JOIN runs r ON r.id = rt.run_id \
             WHERE t.segment_id = $1 AND r.status IN ('succeeded', 'refused') AND r.finished_at IS NOT NULL \
             ORDER BY r.finished_at DESC, r.id DESC LIMIT 1")
            .bind(segment_id)
            .fetch_optional(&self.db)
            .await?;
        match row {
            Some(r) => Ok(Some((r.try_get::<i64, _>("members")?.max(0) as u64, r.try_get("finished_at")?))),
            None => Ok(None),
        }
    }

    /// Exports (not removed) that send this segment.
    pub async fn exports_using_segment(&self, segment_id: i64) -> Result<Vec<String>> {
        Ok(sql("SELECT DISTINCT e.name FROM targets t JOIN exports e ON e.id = t.export_id \
             WHERE t.segment_id = $1 AND t.removed_at IS NULL AND e.removed_at IS NULL ORDER BY e.name")
        .bind(segment_id)
        .scalars(&self.db)
        .await?)
    }

    /// Removes a segment that no export uses (removed exports and segments removed from exports keep their history
    /// without it).
    pub async fn remove_segment(&self, name: &str) -> Result<()> {
        let segment = self.segment(name).await?;
        let users: Vec<String> = sql("SELECT DISTINCT e.name FROM targets t JOIN exports e ON e.id = t.export_id \
             WHERE t.segment_id = $1 AND t.removed_at IS NULL AND e.removed_at IS NULL ORDER BY e.name")
        .bind(segment.id)
        .scalars(&self.db)
        .await?;
        if !users.is_empty() {
            return Err(StoreError::Conflict(format!(
                "segment '{name}' is used by export(s) {}. Remove it from them first (`segment-exporter export edit EXPORT --remove-segment {name}`).",
                users.join(", ")
            )));
        }
        sql("DELETE FROM segments WHERE id = $1").bind(segment.id).execute(&self.db).await?;
        Ok(())
    }
}

async fn set_password(tx: &mut Tx, id: i64, password: &SourcePassword) -> Result<()> {
    let columns = password.columns();
    sql("UPDATE segments SET password_source = $1, password_ref = $2, password_ciphertext = $3, password_nonce = $4 \
         WHERE id = $5")
    .bind(columns.kind)
    .bind(columns.reference)
    .bind(columns.ciphertext)
    .bind(columns.nonce)
    .bind(id)
    .execute(tx)
    .await?;
    Ok(())
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
