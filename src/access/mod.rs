//! Who may do what. Every action a person asks for, from the CLI or the HTTP API, is decided here, by one function
//! per action, from the `Actor` and the stored facts about the thing acted on; the callers only turn the `Verdict`
//! into an exit code or an HTTP status. Also: API tokens and passwords (`credentials`), and the audit trail.
//!
//! This module decides; it does not run exports or change the store beyond the audit rows.

pub mod accounts;
pub mod credentials;
pub mod ops;
pub mod wording;

use crate::config::Config;
use crate::store::{AuditEvent, Role, Store, StoreError, User};

/// The operator's name: the first of `$USER`, `$LOGNAME` and the system's name for the user that is not empty, or
/// `operator`.
fn os_user(env: impl Fn(&str) -> Option<String>, system: impl FnOnce() -> Option<String>) -> String {
    ["USER", "LOGNAME"]
        .into_iter()
        .filter_map(&env)
        .chain(std::iter::once_with(system).flatten())
        .find(|name| !name.trim().is_empty())
        .unwrap_or_else(|| "operator".into())
}

/// Who is acting.
#[derive(Debug, Clone)]
pub enum Actor {
    /// The operator at the host's shell (the CLI): an administrator named `local:OSUSER`.
    Local { name: String },
    /// An account, through the API.
    User(User),
}

impl Actor {
    /// The CLI's operator: `local:` and the OS user (`$USER`, else `$LOGNAME`, else the name the system gives the
    /// effective user id, else `operator`). Root in a container (`docker exec`) has neither variable set, but is
    /// still `root` to the system.
    pub fn local() -> Actor {
        let system = || nix::unistd::User::from_uid(nix::unistd::geteuid()).ok().flatten().map(|u| u.name);
        Actor::Local { name: format!("local:{}", os_user(|var| std::env::var(var).ok(), system)) }
    }

    /// The name audit rows and consents record.
    pub fn name(&self) -> &str {
        match self {
            Actor::Local { name } => name,
            Actor::User(u) => &u.name,
        }
    }

    pub fn is_admin(&self) -> bool {
        match self {
            Actor::Local { .. } => true,
            Actor::User(u) => u.role == Role::Admin,
        }
    }

    /// The account, unless this is the local operator.
    pub fn user_id(&self) -> Option<i64> {
        match self {
            Actor::Local { .. } => None,
            Actor::User(u) => Some(u.id),
        }
    }
}

/// Records an audit row for a change or a run asked for by `actor`, from `origin` (`cli`, or `api ADDRESS`).
/// Never give it a secret: details are shown to administrators as they are.
pub async fn audit(
    store: &Store,
    config: &Config,
    actor: &Actor,
    origin: &str,
    action: &str,
    target: Option<&str>,
    detail: Option<String>,
) -> Result<(), StoreError> {
    let event = AuditEvent { actor: actor.name(), origin, action, target, detail };
    store.record_audit(&event, config.store.audit_retention).await
}

/// Adds an account and its first token, shown to the caller once.
pub async fn create_user(store: &Store, name: &str, role: Role) -> Result<(User, secrecy::SecretString), StoreError> {
    // "!" is no hex SHA-256, so no token matches the account until its first one is set just below.
    let user = store.add_user(name, role, "!").await?;
    let token = credentials::new_token(user.id);
    let user = store.set_user_token(name, &token.hash).await?;
    Ok((user, token.token))
}

/// Replaces an account's token; the old one stops working at once.
pub async fn rotate_token(store: &Store, name: &str) -> Result<(User, secrecy::SecretString), StoreError> {
    let user = store.user(name).await?;
    let token = credentials::new_token(user.id);
    let user = store.set_user_token(name, &token.hash).await?;
    Ok((user, token.token))
}

/// What an action may do for an actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// The actor may not know the thing exists: answer as if it did not (HTTP 404).
    NotFound,
    /// The actor may see the thing but not do this to it (HTTP 403).
    Forbidden,
}

impl Verdict {
    /// `Ok` when allowed; else the refusal, naming `what` only when the actor may see it.
    pub fn check(self, what: &str) -> Result<(), Denied> {
        match self {
            Verdict::Allow => Ok(()),
            Verdict::NotFound => Err(Denied::NotFound(what.to_string())),
            Verdict::Forbidden => Err(Denied::Forbidden(what.to_string())),
        }
    }
}

/// A refused action. `NotFound` reads exactly like a missing thing, so it reveals nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("{0}: only an administrator (or, for an export, one of its export users) may do this")]
    Forbidden(String),
}

/// Who may use a connection, as stored in `usable_by`.
pub const USABLE_BY_CONTRIBUTORS: &str = "contributors";

/// What decides who may act on an export: who may use its connection, and its export users.
#[derive(Debug, Clone, Default)]
pub struct ExportFacts {
    /// The connection's `usable_by`; None for an export detached from its connection.
    pub connection_usable_by: Option<String>,
    pub export_user_ids: Vec<i64>,
}

impl ExportFacts {
    pub async fn load(store: &Store, export: &crate::store::Export) -> Result<ExportFacts, StoreError> {
        let connection_usable_by = match export.connection_id {
            Some(id) => Some(store.connection_by_id(id).await?.usable_by),
            None => None,
        };
        let export_user_ids = store.export_users(export.id).await?.into_iter().map(|u| u.id).collect();
        Ok(ExportFacts { connection_usable_by, export_user_ids })
    }
}

/// Whose exports (and runs) an actor sees: every one, or those of which it is an export user. `see_export` decides
/// one export by it, and listings filter by it in their query (so that a limit counts only what the caller sees).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportScope {
    All,
    ExportUserOf(i64),
}

impl ExportScope {
    /// The account whose exports alone are seen; None when all are.
    pub fn export_user(self) -> Option<i64> {
        match self {
            ExportScope::All => None,
            ExportScope::ExportUserOf(id) => Some(id),
        }
    }
}

pub fn export_scope(actor: &Actor) -> ExportScope {
    match actor.user_id() {
        Some(id) if !actor.is_admin() => ExportScope::ExportUserOf(id),
        _ => ExportScope::All,
    }
}

pub(crate) fn admin_or(actor: &Actor, otherwise: Verdict) -> Verdict {
    if actor.is_admin() {
        Verdict::Allow
    } else {
        otherwise
    }
}

/// See a connection (its name, Iterable region or URL, who may use it; never its key).
pub fn see_connection(actor: &Actor, usable_by: &str) -> Verdict {
    admin_or(actor, if usable_by == USABLE_BY_CONTRIBUTORS { Verdict::Allow } else { Verdict::NotFound })
}

/// Create exports on a connection.
pub fn use_connection(actor: &Actor, usable_by: &str) -> Verdict {
    see_connection(actor, usable_by)
}

/// See where a connection's key comes from and its last characters.
pub fn see_connection_key(actor: &Actor) -> Verdict {
    admin_or(actor, Verdict::Forbidden)
}

/// Add connections.
pub fn add_connection(actor: &Actor) -> Verdict {
    admin_or(actor, Verdict::Forbidden)
}

/// Change or remove a connection, or become its export user.
pub fn manage_connection(actor: &Actor, usable_by: &str) -> Verdict {
    match see_connection(actor, usable_by) {
        Verdict::Allow => admin_or(actor, Verdict::Forbidden),
        other => other,
    }
}

/// See an export, its lists, its runs and their rejected members.
pub fn see_export(actor: &Actor, facts: &ExportFacts) -> Verdict {
    match export_scope(actor) {
        ExportScope::All => Verdict::Allow,
        ExportScope::ExportUserOf(id) if facts.export_user_ids.contains(&id) => Verdict::Allow,
        ExportScope::ExportUserOf(_) => Verdict::NotFound,
    }
}

/// Edit an export, change its export users, or remove it.
pub fn change_export(actor: &Actor, facts: &ExportFacts) -> Verdict {
    see_export(actor, facts)
}

/// Run an export on demand: an export user may, while its connection is open to contributors.
pub fn run_export(actor: &Actor, facts: &ExportFacts) -> Verdict {
    match see_export(actor, facts) {
        Verdict::Allow if !actor.is_admin() => match facts.connection_usable_by.as_deref() {
            Some(u) if u != USABLE_BY_CONTRIBUTORS => Verdict::Forbidden,
            _ => Verdict::Allow,
        },
        other => other,
    }
}

/// See segments' names, columns and sizes.
pub fn see_segments(_actor: &Actor) -> Verdict {
    Verdict::Allow
}

/// See a segment's source (URL, path) and query.
pub fn see_segment_source(actor: &Actor) -> Verdict {
    admin_or(actor, Verdict::Forbidden)
}

/// Add, change or remove segments.
pub fn manage_segments(actor: &Actor) -> Verdict {
    admin_or(actor, Verdict::Forbidden)
}

/// Add, change or remove accounts.
pub fn manage_users(actor: &Actor) -> Verdict {
    admin_or(actor, Verdict::Forbidden)
}

/// See and end the web console sessions of account `owner`: administrators anyone's, every account its own. To
/// anyone else another account's sessions do not exist.
pub fn manage_sessions(actor: &Actor, owner: i64) -> Verdict {
    if actor.user_id() == Some(owner) {
        Verdict::Allow
    } else {
        admin_or(actor, Verdict::NotFound)
    }
}

/// Add, see, test or remove channels.
pub fn manage_channels(actor: &Actor) -> Verdict {
    admin_or(actor, Verdict::Forbidden)
}

/// Subscribe an export (that the actor may change) to a channel.
pub fn use_channel(actor: &Actor, channel: &crate::store::Channel) -> Verdict {
    admin_or(
        actor,
        if channel.usable_by == crate::store::ChannelAudience::Contributors {
            Verdict::Allow
        } else {
            Verdict::NotFound
        },
    )
}

/// Read the audit trail.
pub fn read_audit(actor: &Actor) -> Verdict {
    admin_or(actor, Verdict::Forbidden)
}

/// Why a connection's scheduled runs cannot go now, if they cannot: its export user must be the local operator or
/// an account that is still an administrator.
pub async fn connection_export_user_problem(
    store: &Store,
    connection: &crate::store::Connection,
) -> Result<Option<String>, StoreError> {
    let (name, id) = store.connection_export_user(connection.id).await?;
    let fix = format!(
        "an administrator must add themselves as its export user (`segment-exporter connection export-user {}` on \
         the host, or POST /api/v1/connections/{}/export-user)",
        connection.name, connection.name
    );
    let Some(name) = name else {
        return Ok(Some(format!("connection '{}' has no export user: {fix}", connection.name)));
    };
    let Some(id) = id else { return Ok(None) };
    Ok(match store.user_by_id(id).await? {
        Some(u) if u.role == Role::Admin => None,
        Some(_) => Some(format!(
            "connection '{}' runs on behalf of '{name}', who is no longer an administrator: {fix}",
            connection.name
        )),
        None => Some(format!(
            "connection '{}' runs on behalf of '{name}', whose account was removed: {fix}",
            connection.name
        )),
    })
}

#[cfg(test)]
mod tests;
