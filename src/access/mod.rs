//! Who may do what. Every action a person asks for, from the CLI or the HTTP API, is decided here, by one function
//! per action, from the `Actor` and the stored facts about the thing acted on; the callers only turn the `Verdict`
//! into an exit code or an HTTP status. Also: API tokens and passwords (`credentials`), and the audit trail.
//!
//! This module decides; it does not run exports or change the store beyond the audit rows.

pub mod credentials;

use crate::config::Config;
use crate::store::{AuditEvent, Role, Store, StoreError, User};

/// Who is acting.
#[derive(Debug, Clone)]
pub enum Actor {
    /// The operator at the host's shell (the CLI): an administrator named `local:OSUSER`.
    Local { name: String },
    /// An account, through the API.
    User(User),
}

impl Actor {
    /// The CLI's operator: `local:` and the OS user (`$USER`, else `$LOGNAME`, else `operator`).
    pub fn local() -> Actor {
        let os_user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| "operator".into());
        Actor::Local { name: format!("local:{os_user}") }
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
