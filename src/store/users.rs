//! Accounts (name, role, the hash of their API token, their argon2id password hash), the export users of each
//! export, a connection's export user, and the audit trail. Tokens and passwords are hashed by `crate::access`
//! before they get here; nothing in this file ever sees one in clear.

use super::db::{sql, Row, Tx};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Serialize;

use super::{now, Result, Store, StoreError};

/// What an account may do; see `crate::access`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Does everything.
    Admin,
    /// Uses the connections open to contributors, and the exports it is an export user of.
    Contributor,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Contributor => "contributor",
        }
    }

    fn parse(s: &str) -> Result<Role> {
        match s {
            "admin" => Ok(Role::Admin),
            "contributor" => Ok(Role::Contributor),
            other => Err(StoreError::unknown_value("users", "role", other)),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An account. The token and password hashes stay in the store: they are not part of this value.
#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub has_password: bool,
    pub token_created_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// One audit row.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub detail: Option<String>,
    pub origin: String,
    /// How many times it happened: 1, but for failed sign-ins, counted into one row a minute per name and client.
    pub count: i64,
}

/// What an audit row says, before it is recorded.
#[derive(Debug, Clone)]
pub struct AuditEvent<'a> {
    pub actor: &'a str,
    pub origin: &'a str,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub detail: Option<String>,
}

const SELECT_USER: &str =
    "SELECT id, name, role, password_hash IS NOT NULL AS has_password, token_created_at, created_at FROM users";

fn user_from_row(row: Row) -> Result<User> {
    Ok(User {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: Role::parse(&row.try_get::<String, _>("role")?)?,
        has_password: row.try_get("has_password")?,
        token_created_at: row.try_get("token_created_at")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Inserts an audit row and prunes the rows older than `retention`; the new row's id.
async fn insert_audit(tx: &mut Tx, event: &AuditEvent<'_>, retention: std::time::Duration) -> Result<i64> {
    let at = now();
    let cutoff = at - ChronoDuration::from_std(retention).unwrap_or(ChronoDuration::MAX);
    let id = sql(
        "INSERT INTO audit (at, actor, action, target, detail, origin) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(at)
    .bind(event.actor)
    .bind(event.action)
    .bind(event.target)
    .bind(&event.detail)
    .bind(event.origin)
    .scalar(&mut *tx)
    .await?;
    sql("DELETE FROM audit WHERE at < $1").bind(cutoff).execute(&mut *tx).await?;
    Ok(id)
}

impl Store {
    /// Adds an account with the hash of its first token.
    pub async fn add_user(&self, name: &str, role: Role, token_hash: &str) -> Result<User> {
        super::names::check_user_name(name).map_err(|problem| StoreError::InvalidName {
            what: "user",
            name: name.to_string(),
            problem,
        })?;
        let at = now();
        sql("INSERT INTO users (name, role, token_hash, token_created_at, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(name)
            .bind(role.as_str())
            .bind(token_hash)
            .bind(at)
            .bind(at)
            .execute(&self.db)
            .await
            .map_err(|e| StoreError::on_insert(e, "user", name))?;
        self.user(name).await
    }

    pub async fn users(&self) -> Result<Vec<User>> {
        let rows = sql(format!("{SELECT_USER} ORDER BY name")).fetch_all(&self.db).await?;
        rows.into_iter().map(user_from_row).collect()
    }

    /// Whether any account exists (the API answers 401 to everyone until one does).
    pub async fn has_users(&self) -> Result<bool> {
        Ok(sql("SELECT COUNT(*) FROM users").scalar::<i64>(&self.db).await? > 0)
    }

    pub async fn user(&self, name: &str) -> Result<User> {
        let row = sql(format!("{SELECT_USER} WHERE name = $1")).bind(name).fetch_optional(&self.db).await?;
        row.map(user_from_row).transpose()?.ok_or_else(|| StoreError::not_found("user", name, "user list"))
    }

    pub async fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        let row = sql(format!("{SELECT_USER} WHERE id = $1")).bind(id).fetch_optional(&self.db).await?;
        row.map(user_from_row).transpose()
    }

    /// The stored token hash of an account, for `crate::access` to compare in constant time.
    pub async fn user_token_hash(&self, id: i64) -> Result<Option<String>> {
        Ok(sql("SELECT token_hash FROM users WHERE id = $1").bind(id).scalar_optional(&self.db).await?)
    }

    /// The stored argon2id hash of an account's password, if it has one.
    pub async fn user_password_hash(&self, id: i64) -> Result<Option<String>> {
        Ok(sql("SELECT password_hash FROM users WHERE id = $1")
            .bind(id)
            .scalar_optional::<Option<String>>(&self.db)
            .await?
            .flatten())
    }

    /// The account after an update of it; an update that touched no row means there is no such account.
    async fn updated_user(&self, name: &str, rows: u64) -> Result<User> {
        if rows == 0 {
            return Err(StoreError::not_found("user", name, "user list"));
        }
        self.user(name).await
    }

    /// Replaces an account's token hash: the old token stops working with this statement.
    pub async fn set_user_token(&self, name: &str, token_hash: &str) -> Result<User> {
        let done = sql("UPDATE users SET token_hash = $1, token_created_at = $2 WHERE name = $3")
            .bind(token_hash)
            .bind(now())
            .bind(name)
            .execute(&self.db)
            .await?;
        self.updated_user(name, done).await
    }

    pub async fn set_user_password(&self, name: &str, password_hash: &str) -> Result<User> {
        let done = sql("UPDATE users SET password_hash = $1 WHERE name = $2")
            .bind(password_hash)
            .bind(name)
            .execute(&self.db)
            .await?;
        self.updated_user(name, done).await
    }

    pub async fn set_user_role(&self, name: &str, role: Role) -> Result<User> {
        let done =
            sql("UPDATE users SET role = $1 WHERE name = $2").bind(role.as_str()).bind(name).execute(&self.db).await?;
        self.updated_user(name, done).await
    }

    /// Removes an account: its token stops working, and it is no longer an export user of anything.
    pub async fn remove_user(&self, name: &str) -> Result<User> {
        let user = self.user(name).await?;
        sql("DELETE FROM users WHERE id = $1").bind(user.id).execute(&self.db).await?;
        Ok(user)
    }

    /// The accounts that are export users of an export, by name.
    pub async fn export_users(&self, export_id: i64) -> Result<Vec<User>> {
        let rows =
            sql("SELECT u.id, u.name, u.role, u.password_hash IS NOT NULL AS has_password, u.token_created_at, \
             u.created_at FROM users u JOIN export_users x ON x.user_id = u.id WHERE x.export_id = $1 ORDER BY u.name")
            .bind(export_id)
            .fetch_all(&self.db)
            .await?;
        rows.into_iter().map(user_from_row).collect()
    }

    /// Makes an account an export user of an export; adding one twice changes nothing.
    pub async fn add_export_user(&self, export_id: i64, user_id: i64, added_by: &str) -> Result<()> {
        sql("INSERT INTO export_users (export_id, user_id, added_by, added_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (export_id, user_id) DO NOTHING")
        .bind(export_id)
        .bind(user_id)
        .bind(added_by)
        .bind(now())
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Whether the account was an export user (and no longer is).
    pub async fn remove_export_user(&self, export_id: i64, user_id: i64) -> Result<bool> {
        let done = sql("DELETE FROM export_users WHERE export_id = $1 AND user_id = $2")
            .bind(export_id)
            .bind(user_id)
            .execute(&self.db)
            .await?;
        Ok(done > 0)
    }

    /// Sets the account on whose behalf a connection's scheduled runs go: a user, or the local operator
    /// (`user_id` None, `name` `local:OSUSER`).
    pub async fn set_connection_export_user(&self, connection_id: i64, name: &str, user_id: Option<i64>) -> Result<()> {
        sql("UPDATE connections SET export_user = $1, export_user_id = $2 WHERE id = $3")
            .bind(name)
            .bind(user_id)
            .bind(connection_id)
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// A connection's export user: its name and, unless it is the local operator, its account id.
    pub async fn connection_export_user(&self, connection_id: i64) -> Result<(Option<String>, Option<i64>)> {
        let row = sql("SELECT export_user, export_user_id FROM connections WHERE id = $1")
            .bind(connection_id)
            .fetch_optional(&self.db)
            .await?;
        match row {
            Some(r) => Ok((r.try_get("export_user")?, r.try_get("export_user_id")?)),
            None => Ok((None, None)),
        }
    }

    /// Records an audit row, and prunes rows older than `retention` in the same transaction.
    pub async fn record_audit(&self, event: &AuditEvent<'_>, retention: std::time::Duration) -> Result<()> {
        let mut tx = self.db.begin().await?;
        insert_audit(&mut tx, event, retention).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records an event that may come in floods (a failed sign-in) at most once per `window` per `key`: the first
    /// makes an audit row, the others within the window add one to its count. `key` must hold no secret.
    pub async fn record_audit_counted(
        &self,
        key: &str,
        event: &AuditEvent<'_>,
        window: std::time::Duration,
        retention: std::time::Duration,
    ) -> Result<()> {
        let at = now().timestamp_millis();
        let window_start = at - i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let mut tx = self.db.begin().await?;
        // A write first (SQLite then takes the write lock at once): a window that ended starts again, without its row.
        sql("INSERT INTO audit_windows (key, audit_id, since) VALUES ($1, NULL, $2) \
             ON CONFLICT (key) DO UPDATE SET audit_id = NULL, since = $2 WHERE audit_windows.since <= $3")
        .bind(key)
        .bind(at)
        .bind(window_start)
        .execute(&mut tx)
        .await?;
        let counted =
            sql("UPDATE audit SET count = count + 1 WHERE id = (SELECT audit_id FROM audit_windows WHERE key = $1)")
                .bind(key)
                .execute(&mut tx)
                .await?;
        if counted == 0 {
            let id = insert_audit(&mut tx, event, retention).await?;
            sql("UPDATE audit_windows SET audit_id = $1 WHERE key = $2").bind(id).bind(key).execute(&mut tx).await?;
            sql("DELETE FROM audit_windows WHERE since <= $1").bind(window_start).execute(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Audit rows, newest first; only `actor`'s when given.
    pub async fn audit(&self, actor: Option<&str>, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = sql("SELECT id, at, actor, action, target, detail, origin, count FROM audit \
             WHERE ($1 IS NULL OR actor = $1) ORDER BY id DESC LIMIT $2")
        .bind(actor)
        .bind(limit as i64)
        .fetch_all(&self.db)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get("id")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    detail: r.try_get("detail")?,
                    origin: r.try_get("origin")?,
                    count: r.try_get("count")?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::on_both;

    fn event(action: &str) -> AuditEvent<'_> {
        AuditEvent { actor: "ann", origin: "cli", action, target: Some("x"), detail: None }
    }

    on_both! {
    async fn audit_rows_older_than_the_retention_are_pruned_as_new_ones_are_added(store: Store) {
        let year = std::time::Duration::from_secs(365 * 24 * 3600);
        store.record_audit(&event("old"), year).await.unwrap();
        sql("UPDATE audit SET at = $1").bind(now() - ChronoDuration::days(30)).execute(&store.db).await.unwrap();
        store.record_audit(&event("recent"), year).await.unwrap();
        assert_eq!(store.audit(None, 10).await.unwrap().len(), 2, "30 days is within a year");
        store.record_audit(&event("newest"), std::time::Duration::from_secs(7 * 24 * 3600)).await.unwrap();
        let left: Vec<String> = store.audit(None, 10).await.unwrap().into_iter().map(|r| r.action).collect();
        assert_eq!(left, vec!["newest", "recent"]);
    }
    }

    on_both! {
    async fn a_counted_event_makes_one_row_per_key_and_window_and_counts_the_rest_on_it(store: Store) {
        let (minute, year) = (std::time::Duration::from_secs(60), std::time::Duration::from_secs(365 * 24 * 3600));
        for key in ["ann c1", "ann c1", "ann c2", "ann c1"] {
            store.record_audit_counted(key, &event("session.sign_in.failed"), minute, year).await.unwrap();
        }
        let rows = store.audit(None, 10).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.count).collect::<Vec<_>>(), [1, 3], "newest first: c2's, then c1's");
        // Once its minute is over, a key starts a new row.
        sql("UPDATE audit_windows SET since = since - 61000").execute(&store.db).await.unwrap();
        store.record_audit_counted("ann c1", &event("session.sign_in.failed"), minute, year).await.unwrap();
        let rows = store.audit(None, 10).await.unwrap();
        assert_eq!(rows.iter().map(|r| r.count).collect::<Vec<_>>(), [1, 1, 3]);
        assert_eq!(
            sql("SELECT COUNT(*) FROM audit_windows").scalar::<i64>(&store.db).await.unwrap(),
            1,
            "the ended windows are gone"
        );
    }
    }

    on_both! {
    async fn removing_an_account_removes_it_from_the_export_users(store: Store) {
        let conn = store
            .add_connection(&crate::store::NewConnection {
                name: "c".into(),
                base_url: "http://x".into(),
                region: None,
                project_type: crate::store::ProjectType::Hybrid,
                usable_by: "contributors".into(),
                key: crate::store::KeySource::Env("K".into()),
                key_last4: None,
                privacy_accepted_by: "local:t".into(),
                verified: false,
            })
            .await
            .unwrap();
        let seg = store.add_segment("s", "csv:/x.csv", None).await.unwrap();
        let export = store
            .add_export(&crate::store::NewExport {
                name: "e".into(),
                connection_id: conn.id,
                email_field: Some("email".into()),
                user_id_field: None,
                on_leave: crate::store::OnLeave::Remove,
                null_fields: crate::store::NullFields::Clear,
                existing_users_only: false,
                schedule: "off".into(),
                segment_ids: vec![seg.id],
                fields: vec![],
            })
            .await
            .unwrap();
        let bob = store.add_user("bob", Role::Contributor, "!").await.unwrap();
        store.add_export_user(export.id, bob.id, "ann").await.unwrap();
        store.add_export_user(export.id, bob.id, "ann").await.unwrap();
        assert_eq!(store.export_users(export.id).await.unwrap().len(), 1);
        store.remove_user("bob").await.unwrap();
        assert!(store.export_users(export.id).await.unwrap().is_empty());
        let again = store.add_user("bob", Role::Contributor, "!").await.unwrap();
        assert_ne!(again.id, bob.id, "ids are never reused, so a new 'bob' inherits nothing");
    }
    }
}
