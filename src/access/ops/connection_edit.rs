//! Changing a connection (`PATCH /api/v1/connections/{name}`, `connection edit`) and giving up being its export
//! user: who may use it, its key (checked live with Iterable before it replaces the old one), its region or base
//! URL, its project type. Owns these checks only; adding and removing connections live in `ops`.

use secrecy::SecretString;

use crate::config::Config;
use crate::iterable::Region;
use crate::secrets::{self, MasterKey};
use crate::store::{Connection, ConnectionUpdate, KeySource, ProjectType, Store};
use crate::sync::check_identity_settings;

use super::{base_url, check_key, managed_connection, Caller, OpError};
use crate::access::{audit, USABLE_BY_CONTRIBUTORS};

/// A change to a connection; absent values stay as they are.
#[derive(Default)]
pub struct ConnectionEdit {
    /// `admins` or `contributors`.
    pub usable_by: Option<String>,
    /// A new API key, stored encrypted (it replaces a key read from an environment variable or a file too).
    pub key: Option<SecretString>,
    pub region: Option<Region>,
    /// Overrides `region` (a proxy, the sandbox).
    pub base_url: Option<String>,
    pub project_type: Option<ProjectType>,
    /// Check the key (the new one, or the current one at a new address) with Iterable before saving.
    pub verify: bool,
}

/// Asks Iterable whether it accepts `key` at `base_url`; the refusal says that `what` was not done and why.
pub(super) async fn verify_key(
    config: &Config,
    base_url: &str,
    key: &SecretString,
    what: &str,
    skip_flag: &str,
) -> Result<(), OpError> {
    match check_key(config, base_url, key).await? {
        Ok(_) => Ok(()),
        Err(e) if e.is_bad_api_key() => Err(OpError::Iterable { message: format!("{what}: {e}"), bad_key: true }),
        Err(e) => Err(OpError::Iterable {
            message: format!(
                "{what}: the key could not be checked: {e}. Fix the base URL or network, or save it unchecked \
                 ({skip_flag})"
            ),
            bad_key: false,
        }),
    }
}

/// Changes a connection (admins only). Returns it as changed.
pub async fn edit_connection(
    store: &Store,
    config: &Config,
    caller: &Caller<'_>,
    name: &str,
    e: ConnectionEdit,
) -> Result<Connection, OpError> {
    let conn = managed_connection(store, caller, name).await?;
    let fail = |m: String| OpError::Invalid(format!("connection '{name}' not changed: {m}"));
    let nothing = e.usable_by.is_none()
        && e.key.is_none()
        && e.region.is_none()
        && e.base_url.is_none()
        && e.project_type.is_none();
    if nothing {
        return Err(fail("nothing to change; give usable_by, api_key, region, base_url or project_type".into()));
    }
    if let Some(u) = &e.usable_by {
        if !["admins", USABLE_BY_CONTRIBUTORS].contains(&u.as_str()) {
            return Err(fail(format!("usable_by '{u}' is neither 'admins' nor 'contributors'")));
        }
    }
    // Every export on it must still fit the project's kind (its identity columns, existing_users_only).
    if let Some(project_type) = e.project_type.filter(|t| *t != conn.project_type) {
        for export_name in store.exports_using_connection(conn.id).await? {
            let export = store.export(&export_name).await?;
            check_identity_settings(
                project_type,
                name,
                export.email_field.as_deref(),
                export.user_id_field.as_deref(),
                export.existing_users_only,
            )
            .map_err(|m| fail(format!("export '{export_name}' would not fit: {m}")))?;
        }
    }
    let (new_url, region) = match (&e.base_url, e.region) {
        (Some(url), _) => (base_url(Region::Us, Some(url))?, None),
        (None, Some(region)) => (region.base_url().to_string(), Some(region.as_str().to_string())),
        (None, None) => (conn.base_url.clone(), conn.region.clone()),
    };
    let moved = new_url != conn.base_url;
    if e.verify && (moved || e.key.is_some()) {
        let key = match &e.key {
            Some(k) => k.clone(),
            None => secrets::resolve_api_key(&conn, &config.store.master_key_path())?,
        };
        verify_key(config, &new_url, &key, &format!("connection '{name}' was not changed"), "skip_verify").await?;
    }
    let key = match &e.key {
        Some(k) => {
            // Every secret already sealed must open with the master key the new one is sealed with.
            let (connections, segments, channels) =
                (store.connections().await?, store.segments().await?, store.channels().await?);
            let sealed = secrets::sealed_secrets(&connections, &segments, &channels);
            let master = MasterKey::for_sealing(&config.store.master_key_path(), &sealed)?;
            let (ciphertext, nonce) = master.seal(name, k);
            Some((KeySource::Stored { ciphertext, nonce }, secrets::last4(k)))
        }
        None => None,
    };
    let update = ConnectionUpdate {
        base_url: new_url,
        region,
        project_type: e.project_type.unwrap_or(conn.project_type),
        usable_by: e.usable_by.clone().unwrap_or_else(|| conn.usable_by.clone()),
        key,
        verified: e.verify && (moved || e.key.is_some()),
    };
    let changed = store.update_connection(conn.id, &update).await?;
    // What changed, never a key or its characters.
    let mut what = Vec::new();
    if changed.usable_by != conn.usable_by {
        what.push(format!("usable by {}", changed.usable_by));
    }
    if e.key.is_some() {
        what.push("key replaced".to_string());
    }
    if moved {
        what.push(format!("base URL {}", changed.base_url));
    }
    if changed.project_type != conn.project_type {
        what.push(format!("project type {}", changed.project_type.as_str()));
    }
    let detail = (!what.is_empty()).then(|| what.join("; "));
    audit(store, config, caller.actor, caller.origin, "connection.edit", Some(name), detail).await?;
    Ok(changed)
}

/// The caller stops being the connection's export user (admins only; the connection must have the caller as its
/// export user). Its scheduled runs then refuse until another administrator adds themselves.
pub async fn leave_connection_export_user(
    store: &Store,
    config: &Config,
    caller: &Caller<'_>,
    connection_name: &str,
) -> Result<(), OpError> {
    let conn = managed_connection(store, caller, connection_name).await?;
    let (current, _) = store.connection_export_user(conn.id).await?;
    if current.as_deref() != Some(caller.actor.name()) {
        return Err(OpError::Conflict(format!(
            "connection '{connection_name}' runs on behalf of {}, not of you; only its export user can step down",
            current.map_or_else(|| "no one".to_string(), |n| format!("'{n}'"))
        )));
    }
    store.clear_connection_export_user(conn.id).await?;
    audit(store, config, caller.actor, caller.origin, "connection.export_user.remove", Some(connection_name), None)
        .await?;
    Ok(())
}
