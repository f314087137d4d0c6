//! Web console sessions: the hash of each session id, whose account it is, when it was last used and when it ends.
//! Session ids are made and hashed by `crate::access::credentials`; nothing here ever sees one in clear, and the
//! timeouts are the caller's (the config's) to decide.

use super::db::sql;
use chrono::{DateTime, Utc};

use super::{now, Result, Store};

/// A stored session, with the id of its account.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: i64,
    pub user_id: i64,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A live session as its account's owner and administrators see it: never its id or hash.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionListing {
    pub id: i64,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Where its sign-in came from, e.g. "api 203.0.113.9".
    pub origin: String,
}

impl Store {
    /// The sessions of `user_id` that have not ended (not past `expires_at`, used since `idle_since`), newest
    /// first.
    pub async fn user_sessions(&self, user_id: i64, idle_since: DateTime<Utc>) -> Result<Vec<SessionListing>> {
        let rows = sql("SELECT id, created_at, last_seen_at, expires_at, origin FROM sessions \
             WHERE user_id = $1 AND expires_at > $2 AND last_seen_at > $3 ORDER BY id DESC")
        .bind(user_id)
        .bind(now())
        .bind(idle_since)
        .fetch_all(&self.db)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SessionListing {
                    id: r.try_get("id")?,
                    created_at: r.try_get("created_at")?,
                    last_seen_at: r.try_get("last_seen_at")?,
                    expires_at: r.try_get("expires_at")?,
                    origin: r.try_get("origin")?,
                })
            })
            .collect()
    }

    /// Ends session `id` if it is one of `user_id`'s; false when it is not (or no longer) there.
    pub async fn remove_session_of(&self, user_id: i64, id: i64) -> Result<bool> {
        let done =
            sql("DELETE FROM sessions WHERE id = $1 AND user_id = $2").bind(id).bind(user_id).execute(&self.db).await?;
        Ok(done > 0)
    }

    /// Records a new session of `user_id` ending at `expires_at` at the latest.
    pub async fn add_session(
        &self,
        secret_hash: &str,
        user_id: i64,
        expires_at: DateTime<Utc>,
        origin: &str,
    ) -> Result<Session> {
        let at = now();
        let id = sql("INSERT INTO sessions (secret_hash, user_id, created_at, last_seen_at, expires_at, origin) \
             VALUES ($1, $2, $3, $3, $4, $5) RETURNING id")
        .bind(secret_hash)
        .bind(user_id)
        .bind(at)
        .bind(expires_at)
        .bind(origin)
        .scalar(&self.db)
        .await?;
        Ok(Session { id, user_id, created_at: at, last_seen_at: at, expires_at })
    }

    /// The session whose id hashes to `secret_hash`, expired or not (the caller judges).
    pub async fn session(&self, secret_hash: &str) -> Result<Option<Session>> {
        let row = sql("SELECT id, user_id, created_at, last_seen_at, expires_at FROM sessions WHERE secret_hash = $1")
            .bind(secret_hash)
            .fetch_optional(&self.db)
            .await?;
        row.map(|r| {
            Ok(Session {
                id: r.try_get("id")?,
                user_id: r.try_get("user_id")?,
                created_at: r.try_get("created_at")?,
                last_seen_at: r.try_get("last_seen_at")?,
                expires_at: r.try_get("expires_at")?,
            })
        })
        .transpose()
    }

    /// Notes that a session was used now (its idle timeout starts again).
    pub async fn touch_session(&self, id: i64) -> Result<()> {
        sql("UPDATE sessions SET last_seen_at = $1 WHERE id = $2").bind(now()).bind(id).execute(&self.db).await?;
        Ok(())
    }

    /// Ends one session; false when there was none.
    pub async fn remove_session(&self, id: i64) -> Result<bool> {
        let done = sql("DELETE FROM sessions WHERE id = $1").bind(id).execute(&self.db).await?;
        Ok(done > 0)
    }

    /// Ends every session of an account (its password changed); how many there were.
    pub async fn remove_user_sessions(&self, user_id: i64) -> Result<u64> {
        let done = sql("DELETE FROM sessions WHERE user_id = $1").bind(user_id).execute(&self.db).await?;
        Ok(done)
    }

    /// Removes the sessions that ended (past `expires_at`, or unused since `idle_since`).
    pub async fn prune_sessions(&self, idle_since: DateTime<Utc>) -> Result<u64> {
        let done = sql("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at <= $2")
            .bind(now())
            .bind(idle_since)
            .execute(&self.db)
            .await?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::on_both;
    use crate::store::Role;

    on_both! {
    async fn a_session_is_found_by_its_hash_pruned_once_idle_and_ends_with_its_account(store: Store) {
        let ann = store.add_user("ann", Role::Admin, "!").await.unwrap();
        let later = now() + chrono::Duration::hours(1);
        let first = store.add_session("aa", ann.id, later, "api 127.0.0.1").await.unwrap();
        store.add_session("bb", ann.id, later, "api 127.0.0.1").await.unwrap();
        assert_eq!(store.session("aa").await.unwrap().unwrap().id, first.id);
        assert!(store.session("cc").await.unwrap().is_none());

        sql("UPDATE sessions SET last_seen_at = $1 WHERE secret_hash = 'bb'")
            .bind(now() - chrono::Duration::hours(2))
            .execute(&store.db)
            .await
            .unwrap();
        assert_eq!(store.prune_sessions(now() - chrono::Duration::hours(1)).await.unwrap(), 1);
        assert!(store.session("bb").await.unwrap().is_none(), "idle for two hours: pruned");
        let listed = store.user_sessions(ann.id, now() - chrono::Duration::hours(1)).await.unwrap();
        assert_eq!(listed.iter().map(|l| l.id).collect::<Vec<_>>(), [first.id]);
        assert_eq!(listed[0].origin, "api 127.0.0.1");
        let ben = store.add_user("ben", Role::Admin, "!").await.unwrap();
        assert!(!store.remove_session_of(ben.id, first.id).await.unwrap(), "not ben's session to end");
        assert!(store.remove_session_of(ann.id, first.id).await.unwrap());
        assert!(store.user_sessions(ann.id, now() - chrono::Duration::hours(1)).await.unwrap().is_empty());

        store.remove_user("ann").await.unwrap();
        assert!(store.session("aa").await.unwrap().is_none(), "the account is gone, so is its session");
    }
    }
}
