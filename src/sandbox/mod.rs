//! A local, in-memory, Iterable-compatible HTTP server: the lists endpoints with Iterable's JSON shapes,
//! error envelopes, status codes and limits, users identified as an email-based, userID-based or hybrid project
//! identifies them, plus switchable faults (latency, rate limit, 500s, dropped
//! connections, 200 answers that miscount or truncate, members refused as `invalidDataEmails`), whole requests
//! refused for a field type that conflicts with the first value the project got (`RequestFieldsTypesMismatched`),
//! fields dropped as in a project that does not accept new ones, and request counters. Tests, the demo and the
//! benchmark run against it, and a user can point a connection at it to try the exporter without an Iterable
//! account. It owns only its own memory: no files, no database, nothing from the rest of the crate.
//!
//! Layout: `api` is the HTTP layer (routing, auth, faults, handlers), `project` the state it guards,
//! `wire` the JSON shapes, `validation` the per-identity checks, `faults` and `stats` the knobs and counters.

mod api;
mod faults;
mod project;
mod stats;
mod validation;
mod wire;

#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

pub use faults::{FaultSettings, Faults};
pub use stats::SandboxStats;

use faults::FaultState;
use project::Project;

/// The kind of Iterable project the sandbox imitates (docs/iterable-api.md, "Project types and identity"). Hybrid
/// by default, as a new connection is (`connection add --project-type`), so that what a connection made without the
/// option meets in the sandbox is the project it says it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SandboxProjectType {
    /// Users are identified by email (a userId sent beside it is remembered, not unique);
    /// `updateExistingUsersOnly` is ignored, as Iterable ignores it there.
    Email,
    /// Users are identified by userId only; the email is an ordinary, non-unique field, and a subscriber or
    /// unsubscriber with an email alone identifies nobody (`notFoundEmails`). `getUsers` answers user ids.
    #[value(name = "userid")]
    UserId,
    /// Users are identified by email or userId, both unique; with both given, `preferUserId` looks the user id up
    /// first. `getUsers?preferUserId=true` answers a user's id where it has one, else its email.
    #[default]
    Hybrid,
}

/// How a sandbox behaves. Faults (`latency`, `rate_limit`, `retry_after`, `fail_rate`) can be changed
/// later with [`Sandbox::set_faults`], which also switches on answers that do not account for their batch
/// (`miscount_rate`, `miscount_next`, `truncate_next`); [`Sandbox::set_rejected`] picks members that subscribe
/// refuses with `invalidDataEmails`.
#[derive(Clone)]
pub struct SandboxOptions {
    /// Accepted keys, sent in the `Api-Key` header (or `Api_Key`, which Iterable also accepts).
    pub api_keys: Vec<String>,
    /// Added to every `/api` request before it is answered.
    pub latency: Duration,
    /// Requests per second over all `/api` endpoints, as a token bucket with burst `max(1, rate)`;
    /// `None` means unlimited. A non-positive or non-finite rate also means unlimited.
    pub rate_limit: Option<f64>,
    /// Requests `rate_limit` lets through at once (its bucket's size); `None` means the rate itself (at least 1).
    pub rate_limit_burst: Option<f64>,
    /// Send `Retry-After: <secs>` on 429s. Iterable's docs do not say it does, so the default is off.
    pub retry_after: bool,
    /// Probability (clamped to `0..=1`) that an `/api` request fails: half of the failures answer 500
    /// without applying the change, the other half apply it and then drop the connection.
    pub fail_rate: f64,
    /// For this long after `POST /api/lists`, subscribe and unsubscribe to the new list answer
    /// `invalidListId`, imitating Iterable's propagation delay.
    pub list_propagation: Duration,
    /// Larger request bodies answer 400 `BatchTooLarge`. Assumption: Iterable documents a 4 MB cap only
    /// for `users/bulkUpdate` and nothing for lists/subscribe, so we apply the same cap and error code.
    pub max_body_bytes: usize,
    /// Enforce the per-endpoint limits Iterable documents: `GET /api/lists` 100 a second, and `getUsers`,
    /// `previewUsers` and `{id}/size` 5 a minute per project, answered 429 like `rate_limit`. Default on.
    pub documented_limits: bool,
    /// Whether subscribe creates fields the project has never seen (listed in `createdFields`). Off, such fields
    /// are dropped and listed in `filteredOutFields`, as in a project that does not accept new fields. Default on.
    pub accept_new_fields: bool,
    /// Which kind of project to imitate. Default hybrid, as a new connection.
    pub project_type: SandboxProjectType,
    /// The keys are read-only keys: the GET endpoints answer, and every write (create or delete a list, subscribe,
    /// unsubscribe) is refused with 403 `Forbidden`. Iterable lets a read-only key read lists but not subscribe;
    /// what it answers then is not documented (docs/iterable-api.md, section 1), so the status is an assumption
    /// and the exporter treats a 401 the same. Default off.
    pub read_only_keys: bool,
    /// Hold subscribers to the letter of Iterable's API specification: "Provide an email or a userId (but not
    /// both)". A subscribe with a subscriber that carries both is refused as a whole with 400 `BadParams`, as a
    /// server enforcing its schema would; Iterable itself is not known to (docs/iterable-api.md, section 10).
    /// Default off.
    pub one_identifier_per_subscriber: bool,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        Self {
            api_keys: vec!["sandbox-key".into()],
            latency: Duration::ZERO,
            rate_limit: None,
            rate_limit_burst: None,
            retry_after: false,
            fail_rate: 0.0,
            list_propagation: Duration::ZERO,
            max_body_bytes: 4_000_000,
            documented_limits: true,
            accept_new_fields: true,
            project_type: SandboxProjectType::default(),
            read_only_keys: false,
            one_identifier_per_subscriber: false,
        }
    }
}

/// Keys are redacted: even sandbox keys are secrets by habit.
impl fmt::Debug for SandboxOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxOptions")
            .field("api_keys", &format_args!("[{} redacted]", self.api_keys.len()))
            .field("latency", &self.latency)
            .field("rate_limit", &self.rate_limit)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("retry_after", &self.retry_after)
            .field("fail_rate", &self.fail_rate)
            .field("list_propagation", &self.list_propagation)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("accept_new_fields", &self.accept_new_fields)
            .field("project_type", &self.project_type)
            .field("read_only_keys", &self.read_only_keys)
            .field("one_identifier_per_subscriber", &self.one_identifier_per_subscriber)
            .finish()
    }
}

/// A handle on one sandbox's shared state; clones serve and inspect the same project.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    api_keys: Vec<String>,
    max_body_bytes: usize,
    list_propagation: Duration,
    project_type: SandboxProjectType,
    read_only_keys: bool,
    one_identifier_per_subscriber: bool,
    /// Each lock is held only for O(batch) work, never across an `.await`.
    project: Mutex<Project>,
    /// Lowercased emails that subscribe refuses with `invalidDataEmails`, as Iterable does for data it cannot take.
    rejected: Mutex<std::collections::HashSet<String>>,
    faults: Mutex<FaultState>,
    stats: Mutex<SandboxStats>,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox").field("faults", &self.faults()).finish_non_exhaustive()
    }
}

impl Sandbox {
    pub fn new(opts: SandboxOptions) -> Self {
        let mut faults = FaultState::new(opts.latency, opts.rate_limit, opts.fail_rate, opts.retry_after);
        if opts.rate_limit_burst.is_some() {
            faults.apply(&Faults { rate_limit_burst: opts.rate_limit_burst, ..Faults::default() });
        }
        if opts.documented_limits {
            faults.enforce_documented_limits(std::time::Instant::now());
        }
        let inner = Inner {
            api_keys: opts.api_keys,
            max_body_bytes: opts.max_body_bytes,
            list_propagation: opts.list_propagation,
            project_type: opts.project_type,
            read_only_keys: opts.read_only_keys,
            one_identifier_per_subscriber: opts.one_identifier_per_subscriber,
            project: Mutex::new(Project::new(opts.accept_new_fields, opts.project_type)),
            rejected: Mutex::new(Default::default()),
            faults: Mutex::new(faults),
            stats: Mutex::new(SandboxStats::default()),
        };
        Self { inner: Arc::new(inner) }
    }

    /// The `/api` endpoints plus the `/_sandbox` control endpoints, bound to this sandbox's state.
    pub fn router(&self) -> axum::Router {
        api::router(self.clone())
    }

    /// Serve on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // Connect info lets the 401 envelope report the caller's ip, as Iterable's does.
        let app = self.router().into_make_service_with_connect_info::<SocketAddr>();
        axum::serve(listener, app).with_graceful_shutdown(shutdown).await
    }

    /// Bind 127.0.0.1:0, serve in the background until the task is aborted or the runtime ends, and
    /// return the base URL, like `http://127.0.0.1:PORT`.
    pub async fn spawn(self) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let address = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(error) = self.serve(listener, std::future::pending()).await {
                tracing::warn!(%error, "Sandbox server stopped serving.");
            }
        });
        Ok((format!("http://{address}"), task))
    }

    pub fn stats(&self) -> SandboxStats {
        self.inner.stats.lock().clone()
    }

    pub fn reset_stats(&self) {
        *self.inner.stats.lock() = SandboxStats::default();
    }

    /// The list's members as `getUsers` names them, sorted: emails (lowercase), in a userID-based project user
    /// ids; `None` when no such list exists.
    pub fn list_members(&self, list_id: i64) -> Option<Vec<String>> {
        let project = self.inner.project.lock();
        project.members(list_id, false).map(|members| members.into_iter().map(str::to_owned).collect())
    }

    /// The list's members as (userId, email) pairs, sorted; `None` when no such list exists.
    pub fn list_identities(&self, list_id: i64) -> Option<Vec<(Option<String>, Option<String>)>> {
        self.inner.project.lock().member_identities(list_id)
    }

    /// The email and profile fields of the user with this user id, or `None` when there is no such user.
    #[allow(clippy::type_complexity)]
    pub fn user_by_user_id(
        &self,
        user_id: &str,
    ) -> Option<(Option<String>, serde_json::Map<String, serde_json::Value>)> {
        let project = self.inner.project.lock();
        project.user_by_user_id(user_id).map(|(email, fields)| (email.map(str::to_owned), fields.clone()))
    }

    /// The profile fields of the user with this (lowercase) email, or `None` when there is no such user.
    pub fn user_fields(&self, email: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
        self.inner.project.lock().user_data_fields(email).cloned()
    }

    /// Change the fault settings at run time; fields left `None` keep their value. Out-of-range values
    /// are clamped (`fail_rate`) or switch the limit off (`rate_limit`); see [`Faults::validate`].
    /// Changing `rate_limit` starts a new, full bucket.
    pub fn set_faults(&self, f: Faults) {
        self.inner.faults.lock().apply(&f);
    }

    /// From now on, subscribe refuses these members (and only these) with `invalidDataEmails`, applying nothing
    /// for them; an empty set ends it. Also `POST /_sandbox/reject {"emails": [...]}`.
    pub fn set_rejected<S: AsRef<str>>(&self, emails: &[S]) {
        *self.inner.rejected.lock() = emails.iter().map(|e| e.as_ref().trim().to_lowercase()).collect();
    }

    pub fn faults(&self) -> FaultSettings {
        self.inner.faults.lock().settings()
    }
}
