//! Sign-in throttling state: how many password attempts each client, each account and each (account, client) has
//! made lately, and when each client last gave a wrong password. It lives in the store so that every daemon on it
//! counts the same attempts; the paces are the caller's (`crate::api`) to decide. Keys are hashes and addresses:
//! nothing here ever sees a name as typed or a password.
//!
//! Each key is a generic cell rate (GCRA): `due_at` is one period past the moment the key's allowance is whole
//! again, an attempt moves it one period on, and an attempt is let through while it lies at most `burst - 1`
//! periods ahead. An attempt's check and count against all its keys are one transaction, so concurrent attempts
//! get no more than the same attempts in sequence.

use std::time::Duration;

use super::db::{sql, Tx};

use super::{now, Result, Store};

/// A pace of attempts: `burst` at once, then one more every `every`.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub burst: u32,
    pub every: Duration,
}

impl Pace {
    fn every_ms(self) -> i64 {
        millis(self.every).max(1)
    }

    /// How far ahead `due_at` may lie for an attempt to go through.
    fn tolerance_ms(self) -> i64 {
        self.every_ms().saturating_mul(i64::from(self.burst.max(1) - 1))
    }
}

/// The paces password attempts are held to, and how long a wrong password marks its client.
#[derive(Debug, Clone, Copy)]
pub struct SignInPaces {
    /// Attempts from one client, whatever the account.
    pub client: Pace,
    /// Attempts at one account from one client.
    pub account_client: Pace,
    /// Attempts at one account from clients that failed within `failure_memory`. Those of clients that did not
    /// are let through at once, but count here too.
    pub account: Pace,
    /// How long after its last wrong password a client counts as one that failed.
    pub failure_memory: Duration,
}

/// What becomes of a password attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Its password may be checked now. `fresh`: its client gave no wrong password within the failure memory.
    Checked { fresh: bool },
    /// Over one of its paces: not checked, and not counted; the next attempt could go through after `retry_after`
    /// (`whole_client`: at any account; otherwise at this one).
    Refused { retry_after: Duration, whole_client: bool },
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn now_ms() -> i64 {
    now().timestamp_millis()
}

fn client_key(client: &str) -> String {
    format!("client {client}")
}

fn account_key(account: &str) -> String {
    format!("account {account}")
}

fn account_client_key(account: &str, client: &str) -> String {
    format!("account {account} client {client}")
}

/// Counts one attempt against `key` if its pace allows it (or whatever it says, with `force`); the client's last
/// failure, when it was let through; None when it was not. The caller has moved a `due_at` in the past to now.
async fn take(
    tx: &mut Tx,
    key: &str,
    pace: Pace,
    force: bool,
    memory: Duration,
    at: i64,
) -> Result<Option<Option<i64>>> {
    let row: Option<Option<i64>> =
        sql("INSERT INTO sign_in_limits (key, due_at, expires_at) VALUES ($1, $2 + $3, $2 + $3 + $6) \
         ON CONFLICT (key) DO UPDATE SET due_at = sign_in_limits.due_at + $3, \
             expires_at = sign_in_limits.due_at + $3 + $6 \
         WHERE $5 OR sign_in_limits.due_at - $2 <= $4 \
         RETURNING failed_at")
        .bind(key)
        .bind(at)
        .bind(pace.every_ms())
        .bind(pace.tolerance_ms())
        .bind(force)
        .bind(millis(memory))
        .scalar_optional(&mut *tx)
        .await?;
    Ok(row)
}

/// How long until `key` lets an attempt through again.
async fn wait_for(tx: &mut Tx, key: &str, pace: Pace, at: i64) -> Result<Duration> {
    let due: i64 = sql("SELECT due_at FROM sign_in_limits WHERE key = $1")
        .bind(key)
        .scalar_optional(&mut *tx)
        .await?
        .unwrap_or(at);
    let ms = (due - pace.tolerance_ms() - at).max(0);
    Ok(Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

impl Store {
    /// Takes a password attempt at `account` (a hash of the name typed) from `client` before its password is
    /// checked: counted against the client, the (account, client) and the account in one transaction, or refused
    /// without counting when the client or the (account, client) is over its pace, or when the account is and the
    /// client failed lately. A client that did not fail lately is never refused for the account's pace.
    pub async fn take_sign_in_attempt(&self, account: &str, client: &str, paces: &SignInPaces) -> Result<Admission> {
        let at = now_ms();
        let (by_client, by_account, by_both) =
            (client_key(client), account_key(account), account_client_key(account, client));
        let mut tx = self.db.begin().await?;
        // A write first, so that SQLite takes the write lock at once (a read first would have to upgrade).
        sql("DELETE FROM sign_in_limits WHERE expires_at < $1").bind(at).execute(&mut tx).await?;
        sql("UPDATE sign_in_limits SET due_at = $1 WHERE key IN ($2, $3, $4) AND due_at < $1")
            .bind(at)
            .bind(&by_client)
            .bind(&by_account)
            .bind(&by_both)
            .execute(&mut tx)
            .await?;
        let memory = paces.failure_memory;
        let Some(failed_at) = take(&mut tx, &by_client, paces.client, false, memory, at).await? else {
            let retry_after = wait_for(&mut tx, &by_client, paces.client, at).await?;
            return Ok(Admission::Refused { retry_after, whole_client: true });
        };
        if take(&mut tx, &by_both, paces.account_client, false, memory, at).await?.is_none() {
            let retry_after = wait_for(&mut tx, &by_both, paces.account_client, at).await?;
            return Ok(Admission::Refused { retry_after, whole_client: false });
        }
        let fresh = failed_at.is_none_or(|t| t < at - millis(memory));
        if take(&mut tx, &by_account, paces.account, fresh, memory, at).await?.is_none() {
            let retry_after = wait_for(&mut tx, &by_account, paces.account, at).await?;
            return Ok(Admission::Refused { retry_after, whole_client: false });
        }
        tx.commit().await?;
        Ok(Admission::Checked { fresh })
    }

    /// Notes that `client` gave a wrong password (its attempt was counted already).
    pub async fn sign_in_failed(&self, client: &str) -> Result<()> {
        sql("UPDATE sign_in_limits SET failed_at = $1 WHERE key = $2")
            .bind(now_ms())
            .bind(client_key(client))
            .execute(&self.db)
            .await?;
        Ok(())
    }

    /// Gives back what a right password from `client` at `account` counted: the (account, client) starts afresh
    /// and the client has its attempt back. Its last failure stays: signing in to one account does not make a
    /// client that guessed at others new.
    pub async fn sign_in_succeeded(&self, account: &str, client: &str, paces: &SignInPaces) -> Result<()> {
        let mut tx = self.db.begin().await?;
        sql("DELETE FROM sign_in_limits WHERE key = $1")
            .bind(account_client_key(account, client))
            .execute(&mut tx)
            .await?;
        sql("UPDATE sign_in_limits SET due_at = due_at - $1 WHERE key = $2")
            .bind(paces.client.every_ms())
            .bind(client_key(client))
            .execute(&mut tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::on_both;

    const SECOND: Duration = Duration::from_secs(1);

    fn paces(client: u32, account_client: u32, account: u32) -> SignInPaces {
        let pace = |burst| Pace { burst, every: 60 * SECOND };
        SignInPaces {
            client: pace(client),
            account_client: pace(account_client),
            account: pace(account),
            failure_memory: 600 * SECOND,
        }
    }

    fn refused(a: Admission) -> bool {
        matches!(a, Admission::Refused { .. })
    }

    on_both! {
    async fn each_pace_refuses_once_spent_without_counting_the_refused_attempt(store: Store) {
        let p = paces(5, 3, 100);
        for _ in 0..3 {
            assert_eq!(store.take_sign_in_attempt("a", "c1", &p).await.unwrap(), Admission::Checked { fresh: true });
        }
        let Admission::Refused { retry_after, whole_client: false } =
            store.take_sign_in_attempt("a", "c1", &p).await.unwrap()
        else {
            panic!("the (account, client) pace is spent");
        };
        assert!(retry_after > 50 * SECOND && retry_after <= 60 * SECOND, "{retry_after:?}");
        // The refusal counted nothing against the client: two more at another account, then the client is spent.
        assert!(!refused(store.take_sign_in_attempt("b", "c1", &p).await.unwrap()));
        assert!(!refused(store.take_sign_in_attempt("b", "c1", &p).await.unwrap()));
        let spent = store.take_sign_in_attempt("b", "c1", &p).await.unwrap();
        assert!(matches!(spent, Admission::Refused { whole_client: true, .. }), "the client's 5 are spent");
        assert!(!refused(store.take_sign_in_attempt("a", "c2", &p).await.unwrap()), "another client is not");
    }
    }

    on_both! {
    async fn the_accounts_pace_refuses_clients_that_failed_and_lets_fresh_ones_through_counting_them(store: Store) {
        let p = paces(100, 100, 2);
        for client in ["c1", "c2"] {
            assert!(!refused(store.take_sign_in_attempt("a", client, &p).await.unwrap()));
            store.sign_in_failed(client).await.unwrap();
        }
        assert!(refused(store.take_sign_in_attempt("a", "c1", &p).await.unwrap()), "c1 failed, and a is spent");
        let fresh = store.take_sign_in_attempt("a", "c3", &p).await.unwrap();
        assert_eq!(fresh, Admission::Checked { fresh: true }, "c3 never failed: it goes ahead");
        let Admission::Refused { retry_after, .. } = store.take_sign_in_attempt("a", "c2", &p).await.unwrap() else {
            panic!("c2 failed");
        };
        assert!(retry_after > 110 * SECOND, "c3's attempt counted too: {retry_after:?}");
        assert!(!refused(store.take_sign_in_attempt("other", "c1", &p).await.unwrap()), "another account is not held");
        store.sign_in_succeeded("other", "c1", &p).await.unwrap();
        let at = store.take_sign_in_attempt("other", "c1", &p).await.unwrap();
        assert_eq!(at, Admission::Checked { fresh: false }, "a success does not make a client that failed new");
    }
    }

    on_both! {
    async fn concurrent_attempts_are_counted_exactly_as_many_as_the_pace_allows(store: Store) {
        let p = paces(1000, 7, 1000);
        let attempts: Vec<_> = (0..40)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.take_sign_in_attempt("a", "c", &p).await.unwrap() })
            })
            .collect();
        let mut checked = 0;
        for a in attempts {
            checked += usize::from(!refused(a.await.unwrap()));
        }
        assert_eq!(checked, 7);
    }
    }
}
