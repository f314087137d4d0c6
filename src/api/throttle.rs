//! Throttling of authentication, and the paces it keeps.
//!
//! A throttle counts against a *client*: its address (behind trusted proxies, the client's own; see `client`), an
//! IPv6 client its /64, which one host usually holds whole. One client's failures never hold up another's right
//! token or password.
//!
//! - Bearer tokens carry 256 random bits: nobody guesses one, so wrong ones are throttled per client only, in this
//!   process (`TokenFailures`), and a client that ran out is answered 429 before its token is looked at.
//! - Passwords are counted in the store (`Store::take_sign_in_attempt`, at the paces of `SIGN_IN_PACES`) before they
//!   are checked: per client, per (account, client), and per account for clients that gave a wrong password within
//!   the last 15 minutes, so any daemon on the store counts the same attempts and concurrent guesses get no more
//!   checks than sequential ones. A client that has not failed is never refused for the account's pace. "Account"
//!   is the name typed, hashed: a name no account has is throttled alike, so the throttle tells nothing of which
//!   names exist.
//! - The checks themselves (argon2id, slow and memory-hungry on purpose) run a few at a time on blocking threads
//!   (`PasswordChecks`): each client has at most one sign-in waiting for its turn, and clients that have not failed
//!   go first, so a flood may delay a right password but never refuses it, and token requests never wait for them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::Ipv6Net;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::ApiError;
use crate::store::{Admission, Pace, SignInPaces, Store};

/// Wrong tokens allowed per client: a burst of this many, then one more every `TOKEN_REFILL`.
const TOKEN_BURST: u32 = 50;
const TOKEN_REFILL: Duration = Duration::from_secs(3);

/// Password attempts: 50 per client and 20 per (account, client) at once, then one more every 3 s; 20 at once per
/// account from clients that failed lately (about 20 a minute once it is under attack, however many clients).
pub const SIGN_IN_PACES: SignInPaces = SignInPaces {
    client: Pace { burst: 50, every: Duration::from_secs(3) },
    account_client: Pace { burst: 20, every: Duration::from_secs(3) },
    account: Pace { burst: 20, every: Duration::from_secs(3) },
    failure_memory: Duration::from_secs(15 * 60),
};

/// Failed sign-ins are audited once per this span per (name typed, client), with a count.
pub const FAILED_SIGN_IN_AUDIT_WINDOW: Duration = Duration::from_secs(60);

/// When a client whose sign-in is still waiting may send another.
const WAITING_RETRY: Duration = Duration::from_secs(1);

/// Password checks at once: one per core, at most 4 (argon2id takes 19 MiB each).
fn checks_at_once() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4)
}

/// The client a throttle counts a request from `address` against.
pub fn client_key(address: Option<IpAddr>) -> String {
    match address {
        Some(IpAddr::V4(a)) => a.to_string(),
        Some(IpAddr::V6(a)) => Ipv6Net::new(a, 64).expect("64 is a valid prefix length").trunc().to_string(),
        None => "unknown".to_string(),
    }
}

/// The throttles of one daemon process.
#[derive(Default)]
pub struct Throttle {
    pub tokens: TokenFailures,
    checks: PasswordChecks,
    /// Sign-ins the store refused, by client or by (name, client), until they may come back: answered again
    /// without asking the store (its count only grows until then).
    sign_ins_refused: Refusals,
}

impl Throttle {
    /// Lets a password attempt from `client` at the name hashed as `name_key` be checked: counted in the store
    /// first, then admitted among the checks. The permit to check it, or the 429 that answers it (before anything
    /// is hashed) when the client or the name is over its pace, or a sign-in of the client is already waiting.
    pub async fn admit_sign_in(&self, store: &Store, name_key: &str, client: &str) -> Result<CheckPermit, ApiError> {
        const REFUSED: &str = "too many sign-in attempts from this client or at this account";
        let name_and_client = format!("{name_key} {client}");
        let refusals = &self.sign_ins_refused;
        if let Some(wait) = refusals.remaining(client).or_else(|| refusals.remaining(&name_and_client)) {
            return Err(too_many_attempts(REFUSED, wait));
        }
        let Some(turn) = self.checks.wait_turn(client) else {
            return Err(too_many_attempts(
                "a sign-in from this client is already waiting for its answer",
                WAITING_RETRY,
            ));
        };
        let fresh = match store.take_sign_in_attempt(name_key, client, &SIGN_IN_PACES).await? {
            Admission::Checked { fresh } => fresh,
            Admission::Refused { retry_after, whole_client } => {
                tracing::info!(client = %client, "Sign-in refused: too many attempts.");
                refusals.refuse(if whole_client { client } else { &name_and_client }, retry_after);
                return Err(too_many_attempts(REFUSED, retry_after));
            }
        };
        let permit = self.checks.admit(fresh).await;
        drop(turn);
        Ok(permit)
    }
}

/// The answer to an attempt over its throttle's pace: `why`, and when to come back (also in `Retry-After`).
pub fn too_many_attempts(why: &str, retry_after: Duration) -> ApiError {
    // Whole seconds, rounded up: coming back at the time said must not be too early.
    let seconds = u64::try_from(retry_after.as_millis().div_ceil(1000)).unwrap_or(u64::MAX).max(1);
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", format!("{why}; try again in {seconds} s"))
        .retry_after(seconds)
}

/// Keys refused until some instant.
#[derive(Default)]
pub struct Refusals {
    until: Mutex<HashMap<String, Instant>>,
}

/// Refusals kept before the ended ones are swept out.
const REFUSALS_SWEPT_ABOVE: usize = 4096;

impl Refusals {
    /// How long `key` is still refused, if it is.
    pub fn remaining(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut until = self.until.lock();
        match until.get(key) {
            Some(end) if *end > now => Some(*end - now),
            Some(_) => {
                until.remove(key);
                None
            }
            None => None,
        }
    }

    /// Refuses `key` for `span`.
    pub fn refuse(&self, key: &str, span: Duration) {
        let now = Instant::now();
        let mut until = self.until.lock();
        if until.len() >= REFUSALS_SWEPT_ABOVE {
            until.retain(|_, end| *end > now);
        }
        until.insert(key.to_string(), now + span);
    }
}

/// Wrong tokens per client.
pub struct TokenFailures {
    limiter: DefaultKeyedRateLimiter<String>,
    blocked: Refusals,
}

impl Default for TokenFailures {
    fn default() -> Self {
        let quota = Quota::with_period(TOKEN_REFILL)
            .expect("non-zero period")
            .allow_burst(NonZeroU32::new(TOKEN_BURST).expect("non-zero"));
        TokenFailures { limiter: RateLimiter::keyed(quota), blocked: Refusals::default() }
    }
}

impl TokenFailures {
    /// How long `client` must still wait, when its wrong tokens ran out.
    pub fn blocked_for(&self, client: &str) -> Option<Duration> {
        self.blocked.remaining(client)
    }

    /// Counts a wrong token from `client`.
    pub fn failed(&self, client: &str) {
        let key = client.to_string();
        if let Err(not_until) = self.limiter.check_key(&key) {
            // At least one refill period: a client that ran out stays out for a while, whatever the clock's
            // rounding says.
            let wait = not_until.wait_time_from(DefaultClock::default().now()).max(TOKEN_REFILL);
            self.blocked.refuse(&key, wait);
        }
        // Clients whose allowance is whole again need no state.
        if self.limiter.len() > 10_000 {
            self.limiter.retain_recent();
        }
    }
}

/// The admission of password checks: a few at a time, each client with at most one sign-in waiting, clients that
/// have not failed first.
pub struct PasswordChecks {
    queue: Arc<Mutex<Queue>>,
}

struct Queue {
    /// Checks that may start now.
    free: usize,
    /// Sign-ins waiting for a check: of clients that have not failed lately, then of those that have.
    fresh: VecDeque<oneshot::Sender<CheckPermit>>,
    failed: VecDeque<oneshot::Sender<CheckPermit>>,
    /// Clients with a sign-in waiting.
    waiting: HashSet<String>,
}

impl Default for PasswordChecks {
    fn default() -> Self {
        PasswordChecks::new(checks_at_once())
    }
}

impl PasswordChecks {
    fn new(at_once: usize) -> Self {
        let queue = Queue { free: at_once, fresh: VecDeque::new(), failed: VecDeque::new(), waiting: HashSet::new() };
        PasswordChecks { queue: Arc::new(Mutex::new(queue)) }
    }

    /// Marks a sign-in of `client` as waiting, until the returned turn is dropped; None when one of its sign-ins
    /// is waiting already (it is then over its share).
    pub fn wait_turn(&self, client: &str) -> Option<Turn> {
        let fresh_entry = self.queue.lock().waiting.insert(client.to_string());
        fresh_entry.then(|| Turn { queue: self.queue.clone(), client: client.to_string() })
    }

    /// Waits for a password check to be allowed to start; `fresh`: its client has not failed lately, so it goes
    /// ahead of those that have. The check may run as long as the permit lives.
    pub async fn admit(&self, fresh: bool) -> CheckPermit {
        loop {
            let waiting = {
                let mut q = self.queue.lock();
                if q.free > 0 && q.fresh.is_empty() && q.failed.is_empty() {
                    q.free -= 1;
                    return CheckPermit { queue: Some(self.queue.clone()) };
                }
                let (tx, rx) = oneshot::channel();
                if fresh {
                    q.fresh.push_back(tx);
                } else {
                    q.failed.push_back(tx);
                }
                rx
            };
            // A sender is dropped unsent only with the queue itself; then ask again.
            if let Ok(permit) = waiting.await {
                return permit;
            }
        }
    }
}

/// A client's place among the waiting sign-ins.
pub struct Turn {
    queue: Arc<Mutex<Queue>>,
    client: String,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.queue.lock().waiting.remove(&self.client);
    }
}

/// Leave to run one password check; the next waiting sign-in gets it when dropped.
pub struct CheckPermit {
    queue: Option<Arc<Mutex<Queue>>>,
}

impl Drop for CheckPermit {
    fn drop(&mut self) {
        let Some(queue) = self.queue.take() else { return };
        loop {
            let next = {
                let mut q = queue.lock();
                match q.fresh.pop_front().or_else(|| q.failed.pop_front()) {
                    Some(next) => next,
                    None => {
                        q.free += 1;
                        return;
                    }
                }
            };
            match next.send(CheckPermit { queue: Some(queue.clone()) }) {
                Ok(()) => return,
                // Its sign-in is gone (the client hung up): offer the check to the next one.
                Err(mut unused) => unused.queue = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_client_is_its_64_and_an_ipv4_client_its_address() {
        let key = |s: &str| client_key(Some(s.parse().unwrap()));
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(key("203.0.113.9"), "203.0.113.9");
        assert_ne!(key("203.0.113.9"), key("203.0.113.10"));
        assert_eq!(client_key(None), "unknown");
    }

    #[test]
    fn wrong_tokens_block_their_client_only() {
        let t = TokenFailures::default();
        for _ in 0..TOKEN_BURST {
            t.failed("a");
        }
        assert!(t.blocked_for("a").is_none(), "the burst is allowed");
        t.failed("a");
        assert!(t.blocked_for("a").is_some_and(|d| d > Duration::ZERO && d <= TOKEN_REFILL * 2));
        assert!(t.blocked_for("b").is_none());
    }

    #[test]
    fn a_client_has_one_sign_in_waiting_at_most() {
        let checks = PasswordChecks::new(1);
        let turn = checks.wait_turn("a").expect("the first");
        assert!(checks.wait_turn("a").is_none(), "a second one of the same client");
        assert!(checks.wait_turn("b").is_some(), "another client's");
        drop(turn);
        assert!(checks.wait_turn("a").is_some(), "once the first is through");
    }

    #[tokio::test]
    async fn checks_run_a_few_at_a_time_and_clients_that_have_not_failed_go_first() {
        let checks = Arc::new(PasswordChecks::new(1));
        let running = checks.admit(false).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (name, fresh) in [("failed 1", false), ("failed 2", false), ("fresh", true)] {
            let (c, order) = (checks.clone(), order.clone());
            waiters.push(tokio::spawn(async move {
                let _permit = c.admit(fresh).await;
                order.lock().push(name);
            }));
            // Each waits in turn before the next arrives.
            while {
                let q = checks.queue.lock();
                q.fresh.len() + q.failed.len()
            } < waiters.len()
            {
                tokio::task::yield_now().await;
            }
        }
        // One that gave up waiting does not keep the check from the others.
        let gave_up = {
            let c = checks.clone();
            tokio::spawn(async move { c.admit(true).await })
        };
        while checks.queue.lock().fresh.len() < 2 {
            tokio::task::yield_now().await;
        }
        gave_up.abort();
        let _ = gave_up.await;
        assert!(order.lock().is_empty(), "one check at a time");
        drop(running);
        for w in waiters {
            w.await.unwrap();
        }
        assert_eq!(*order.lock(), ["fresh", "failed 1", "failed 2"]);
        assert_eq!(checks.queue.lock().free, 1, "the check is free again");
    }
}
