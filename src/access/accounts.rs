//! Account management as one set of operations for the CLI's `user` commands and the API's `/users` (the web
//! console's Users screen): each checks `manage_users`, keeps at least one administrator account once there is
//! one, and writes its audit row; sessions are the exception, as every account may see and end its own. Tokens are
//! returned once, to be shown once; passwords only pass through.

use secrecy::SecretString;

use super::ops::{Caller, OpError};
use super::{audit, credentials, manage_sessions, manage_users, Actor};
use crate::config::Config;
use crate::store::{Role, SessionListing, Store, User};

/// Adds an account with its first API token.
pub async fn add_user(
    store: &Store,
    config: &Config,
    c: &Caller<'_>,
    name: &str,
    role: Role,
) -> Result<(User, SecretString), OpError> {
    manage_users(c.actor).check("accounts")?;
    let (user, token) = super::create_user(store, name, role).await?;
    audit(store, config, c.actor, c.origin, "user.add", Some(name), Some(format!("role {role}"))).await?;
    Ok((user, token))
}

/// Whether taking `name`'s administrator role away (removal or demotion) would leave accounts but no admin,
/// which would lock the team out of everything but the host's CLI.
async fn last_admin(store: &Store, name: &str) -> Result<bool, OpError> {
    let users = store.users().await?;
    let admins: Vec<&User> = users.iter().filter(|u| u.role == Role::Admin).collect();
    Ok(admins.len() == 1 && admins[0].name == name && users.len() > 1)
}

fn keep_one_admin(name: &str, what: &str) -> OpError {
    OpError::Conflict(format!(
        "account '{name}' is the last administrator: {what} would leave the other accounts without one; make \
         another account an administrator first"
    ))
}

/// Removes an account; its token and sessions stop working at once.
pub async fn remove_user(store: &Store, config: &Config, c: &Caller<'_>, name: &str) -> Result<User, OpError> {
    manage_users(c.actor).check("accounts")?;
    // A missing account is never the last admin: `remove_user` below answers that it does not exist.
    if !matches!(c.actor, Actor::Local { .. }) && last_admin(store, name).await? {
        return Err(keep_one_admin(name, "removing it"));
    }
    let user = store.remove_user(name).await?;
    audit(store, config, c.actor, c.origin, "user.remove", Some(name), None).await?;
    Ok(user)
}

/// Changes an account's role; answers the account before and after.
pub async fn set_role(
    store: &Store,
    config: &Config,
    c: &Caller<'_>,
    name: &str,
    role: Role,
) -> Result<(User, User), OpError> {
    manage_users(c.actor).check("accounts")?;
    let before = store.user(name).await?;
    if role != Role::Admin && !matches!(c.actor, Actor::Local { .. }) && last_admin(store, name).await? {
        return Err(keep_one_admin(name, "making it a contributor"));
    }
    let user = store.set_user_role(name, role).await?;
    let detail = format!("{} -> {role}", before.role);
    audit(store, config, c.actor, c.origin, "user.role", Some(name), Some(detail)).await?;
    Ok((before, user))
}

/// Replaces an account's API token; the old one stops working at once.
pub async fn rotate_token(
    store: &Store,
    config: &Config,
    c: &Caller<'_>,
    name: &str,
) -> Result<(User, SecretString), OpError> {
    manage_users(c.actor).check("accounts")?;
    let (user, token) = super::rotate_token(store, name).await?;
    audit(store, config, c.actor, c.origin, "user.token.rotate", Some(name), None).await?;
    Ok((user, token))
}

/// Sets (or resets) the password an account signs in to the web console with.
pub async fn set_password(
    store: &Store,
    config: &Config,
    c: &Caller<'_>,
    name: &str,
    password: SecretString,
) -> Result<User, OpError> {
    manage_users(c.actor).check("accounts")?;
    store.user(name).await?;
    credentials::check_password(&password)
        .map_err(|e| OpError::Invalid(format!("password of '{name}' not set: {e}")))?;
    // argon2id is slow on purpose: keep it off the runtime's threads.
    let hash = tokio::task::spawn_blocking(move || credentials::hash_password(&password))
        .await
        .map_err(|e| OpError::Failed(format!("password of '{name}' not set: {e}")))?;
    let user = store.set_user_password(name, &hash).await?;
    // Whoever signed in with the old password is signed out.
    let ended = store.remove_user_sessions(user.id).await?;
    let detail = (ended > 0).then(|| format!("{ended} session(s) ended"));
    audit(store, config, c.actor, c.origin, "user.password", Some(name), detail).await?;
    Ok(user)
}

/// The account `name` as whose sessions `c` may see and end, or "does not exist" when it may not (so a contributor
/// learns nothing of other accounts).
async fn session_owner(store: &Store, c: &Caller<'_>, name: &str) -> Result<User, OpError> {
    let what = format!("account '{name}'");
    let user = match store.user(name).await {
        Ok(u) => u,
        Err(crate::store::StoreError::NotFound { .. }) if !c.actor.is_admin() => {
            return Err(super::Denied::NotFound(what).into())
        }
        Err(e) => return Err(e.into()),
    };
    manage_sessions(c.actor, user.id).check(&what)?;
    Ok(user)
}

/// The web console sessions of `name` that have not ended, newest first.
pub async fn sessions(
    store: &Store,
    config: &Config,
    c: &Caller<'_>,
    name: &str,
) -> Result<Vec<SessionListing>, OpError> {
    let user = session_owner(store, c, name).await?;
    let idle = config.daemon.session_idle();
    let since = chrono::Utc::now().checked_sub_signed(idle).unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    Ok(store.user_sessions(user.id, since).await?)
}

/// Ends one session of `name` (`only`) or all of them: the browsers holding them are signed out at their next
/// request. Answers how many ended; asking to end a session that is not there is "does not exist".
pub async fn end_sessions(
    store: &Store,
    config: &Config,
    c: &Caller<'_>,
    name: &str,
    only: Option<i64>,
) -> Result<u64, OpError> {
    let user = session_owner(store, c, name).await?;
    let (ended, detail) = match only {
        Some(id) if store.remove_session_of(user.id, id).await? => (1, format!("session {id}")),
        Some(id) => return Err(super::Denied::NotFound(format!("session {id} of account '{name}'")).into()),
        None => {
            let ended = store.remove_user_sessions(user.id).await?;
            (ended, format!("all {ended} session(s)"))
        }
    };
    audit(store, config, c.actor, c.origin, "session.end", Some(name), Some(detail)).await?;
    Ok(ended)
}
