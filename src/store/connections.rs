//! Iterable connections: where to reach Iterable, where the API key comes from, and the privacy consent.

use super::db::{sql, Row};
use chrono::{DateTime, Utc};

use super::{now, Result, Store, StoreError};

/// Where a connection's API key comes from. Only references are stored for `Env` and `File`; `Stored` keys are
/// encrypted (see `crate::secrets`).
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    Env(String),
    File(String),
    Stored { ciphertext: Vec<u8>, nonce: Vec<u8> },
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl KeySource {
    /// Which kind of source it is, as `key_source` stores it: `env`, `file` or `stored`.
    pub fn kind(&self) -> &'static str {
        key_columns(self).0
    }

    /// Where the key comes from, never the key itself.
    pub fn describe(&self) -> String {
        match self {
            KeySource::Env(var) => format!("environment variable {var}"),
            KeySource::File(path) => format!("file {path}"),
            KeySource::Stored { .. } => "stored in the store, encrypted".to_string(),
        }
    }
}

/// The kind of Iterable project a connection reaches: how Iterable identifies a user there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProjectType {
    /// Users are identified by email (offered to some accounts only; none in the EU data centre).
    Email,
    /// Users are identified by userId only; an email is an ordinary field.
    #[value(name = "userid")]
    UserId,
    /// Users are identified by userId or email.
    Hybrid,
}

impl ProjectType {
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectType::Email => "email",
            ProjectType::UserId => "userid",
            ProjectType::Hybrid => "hybrid",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Connection {
    pub id: i64,
    pub name: String,
    pub base_url: String,
    pub region: Option<String>,
    pub project_type: ProjectType,
    pub usable_by: String,
    pub key: KeySource,
    pub key_last4: Option<String>,
    pub privacy_accepted_at: DateTime<Utc>,
    pub privacy_accepted_by: String,
    pub verified_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct NewConnection {
    pub name: String,
    pub base_url: String,
    pub region: Option<String>,
    pub project_type: ProjectType,
    pub usable_by: String,
    pub key: KeySource,
    pub key_last4: Option<String>,
    pub privacy_accepted_by: String,
    pub verified: bool,
}

/// A connection as it should be after an edit: the whole new settings, and a new key when one replaces the old.
#[derive(Debug, Clone)]
pub struct ConnectionUpdate {
    pub base_url: String,
    pub region: Option<String>,
    pub project_type: ProjectType,
    pub usable_by: String,
    /// The new key and its last characters.
    pub key: Option<(KeySource, Option<String>)>,
    /// The key was checked with Iterable just now.
    pub verified: bool,
}

const SELECT: &str =
    "SELECT id, name, base_url, region, project_type, usable_by, key_source, key_ref, key_ciphertext, key_nonce, \
     key_last4, privacy_accepted_at, privacy_accepted_by, verified_at, created_at FROM connections";

fn from_row(row: Row) -> Result<Connection> {
    let source: String = row.try_get("key_source")?;
    let key_ref: Option<String> = row.try_get("key_ref")?;
    let key = match source.as_str() {
        "env" => KeySource::Env(key_ref.unwrap_or_default()),
        "file" => KeySource::File(key_ref.unwrap_or_default()),
        _ => KeySource::Stored {
            ciphertext: row.try_get::<Option<Vec<u8>>, _>("key_ciphertext")?.unwrap_or_default(),
            nonce: row.try_get::<Option<Vec<u8>>, _>("key_nonce")?.unwrap_or_default(),
        },
    };
    let project_type: String = row.try_get("project_type")?;
    Ok(Connection {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        base_url: row.try_get("base_url")?,
        region: row.try_get("region")?,
        project_type: match project_type.as_str() {
            "email" => ProjectType::Email,
            "userid" => ProjectType::UserId,
            "hybrid" => ProjectType::Hybrid,
            other => return Err(StoreError::unknown_value("connections", "project_type", other)),
        },
        usable_by: row.try_get("usable_by")?,
        key,
        key_last4: row.try_get("key_last4")?,
        privacy_accepted_at: row.try_get("privacy_accepted_at")?,
        privacy_accepted_by: row.try_get("privacy_accepted_by")?,
        verified_at: row.try_get("verified_at")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    pub async fn add_connection(&self, c: &NewConnection) -> Result<Connection> {
        let KeyColumns(source, key_ref, ciphertext, nonce) = key_columns(&c.key);
        let at = now();
        sql("INSERT INTO connections (name, base_url, region, project_type, usable_by, key_source, key_ref, \
             key_ciphertext, key_nonce, key_last4, privacy_accepted_at, privacy_accepted_by, verified_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)")
        .bind(&c.name)
        .bind(&c.base_url)
        .bind(&c.region)
        .bind(c.project_type.as_str())
        .bind(&c.usable_by)
        .bind(source)
        .bind(key_ref)
        .bind(ciphertext)
        .bind(nonce)
        .bind(&c.key_last4)
        .bind(at)
        .bind(&c.privacy_accepted_by)
        .bind(c.verified.then_some(at))
        .bind(at)
        .execute(&self.db)
        .await
        .map_err(|e| StoreError::on_insert(e, "connection", &c.name))?;
        self.connection(&c.name).await
    }

    pub async fn connections(&self) -> Result<Vec<Connection>> {
        let rows = sql(format!("{SELECT} ORDER BY name")).fetch_all(&self.db).await?;
        rows.into_iter().map(from_row).collect()
    }

    pub async fn connection(&self, name: &str) -> Result<Connection> {
        let row = sql(format!("{SELECT} WHERE name = $1")).bind(name).fetch_optional(&self.db).await?;
        row.map(from_row).transpose()?.ok_or_else(|| StoreError::not_found("connection", name, "connection list"))
    }

    pub async fn connection_by_id(&self, id: i64) -> Result<Connection> {
        let row = sql(format!("{SELECT} WHERE id = $1")).bind(id).fetch_optional(&self.db).await?;
        row.map(from_row)
            .transpose()?
            .ok_or_else(|| StoreError::not_found("connection", &id.to_string(), "connection list"))
    }

    pub async fn mark_connection_verified(&self, id: i64) -> Result<()> {
        sql("UPDATE connections SET verified_at = $1 WHERE id = $2").bind(now()).bind(id).execute(&self.db).await?;
        Ok(())
    }

    /// Names of the exports that use a connection.
    pub async fn exports_using_connection(&self, id: i64) -> Result<Vec<String>> {
        Ok(sql("SELECT name FROM exports WHERE connection_id = $1 AND removed_at IS NULL ORDER BY name")
            .bind(id)
            .scalars(&self.db)
            .await?)
    }

    /// Removes a connection. Exports that use it are detached (kept, disabled) or removed (as `export remove` does),
    /// as asked; with
    /// neither, the removal is refused while exports use it.
    pub async fn remove_connection(&self, name: &str, detach: bool, remove_exports: bool) -> Result<Vec<String>> {
        let conn = self.connection(name).await?;
        let users = self.exports_using_connection(conn.id).await?;
        if !users.is_empty() && !detach && !remove_exports {
            return Err(StoreError::Conflict(format!(
                "connection '{name}' is used by export(s) {}. Run again with --detach-exports (they stay, disabled) \
                 or --remove-exports (they are removed and forget what they put on their lists).",
                users.join(", ")
            )));
        }
        let mut tx = self.db.begin().await?;
        if remove_exports {
            super::exports::soft_delete_exports(&mut tx, "connection_id = $2", conn.id).await?;
        } else {
            sql("UPDATE exports SET connection_id = NULL, enabled = FALSE, updated_at = $1 WHERE connection_id = $2 AND removed_at IS NULL")
                .bind(now())
                .bind(conn.id)
                .execute(&mut tx)
                .await?;
        }
        sql("DELETE FROM connections WHERE id = $1").bind(conn.id).execute(&mut tx).await?;
        tx.commit().await?;
        Ok(users)
    }

    /// Changes a connection's settings (and key, when a new one is given); its exports keep what they sent.
    pub async fn update_connection(&self, id: i64, u: &ConnectionUpdate) -> Result<Connection> {
        let mut tx = self.db.begin().await?;
        sql("UPDATE connections SET base_url = $1, region = $2, project_type = $3, usable_by = $4 WHERE id = $5")
            .bind(&u.base_url)
            .bind(&u.region)
            .bind(u.project_type.as_str())
            .bind(&u.usable_by)
            .bind(id)
            .execute(&mut tx)
            .await?;
        if let Some((key, last4)) = &u.key {
            let KeyColumns(source, key_ref, ciphertext, nonce) = key_columns(key);
            sql(
                "UPDATE connections SET key_source = $1, key_ref = $2, key_ciphertext = $3, key_nonce = $4, key_last4 = $5 \
                 WHERE id = $6",
            )
            .bind(source)
            .bind(key_ref)
            .bind(ciphertext)
            .bind(nonce)
            .bind(last4)
            .bind(id)
            .execute(&mut tx)
            .await?;
        }
        if u.verified {
            sql("UPDATE connections SET verified_at = $1 WHERE id = $2").bind(now()).bind(id).execute(&mut tx).await?;
        }
        tx.commit().await?;
        self.connection_by_id(id).await
    }

    /// The connection has no export user any more: its scheduled runs refuse until an administrator adds themselves.
    pub async fn clear_connection_export_user(&self, id: i64) -> Result<()> {
        sql("UPDATE connections SET export_user = NULL, export_user_id = NULL WHERE id = $1")
            .bind(id)
            .execute(&self.db)
            .await?;
        Ok(())
    }
}

/// The values of `key_source`, `key_ref`, `key_ciphertext` and `key_nonce`.
struct KeyColumns<'a>(&'static str, Option<&'a str>, Option<&'a [u8]>, Option<&'a [u8]>);

fn key_columns(key: &KeySource) -> KeyColumns<'_> {
    match key {
        KeySource::Env(v) => KeyColumns("env", Some(v), None, None),
        KeySource::File(p) => KeyColumns("file", Some(p), None, None),
        KeySource::Stored { ciphertext, nonce } => KeyColumns("stored", None, Some(ciphertext), Some(nonce)),
    }
}
