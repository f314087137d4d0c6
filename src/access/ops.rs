//! The changes a person asks for that the CLI and the HTTP API share: each checks who may do it (through the
//! verdicts of `crate::access`), validates its input the same way for both, changes the store and records the
//! audit row. Callers only turn `OpError` into an exit code or an HTTP status.

use crate::config::Config;
use crate::schedule::Schedule;
use crate::source::{self, SourceSpec};
use crate::store::{
    Export, FieldMap, FieldType, NewExport, NullFields, OnLeave, ProjectType, Segment, Store, StoreError, User,
};
use crate::sync::{check_field_name, check_identity_settings};

use super::{audit, change_export, use_connection, Actor, Denied, ExportFacts};

pub mod channels;
mod connection_edit;
mod export_edit;
pub mod segments;

pub use connection_edit::{edit_connection, leave_connection_export_user, ConnectionEdit};
pub use export_edit::{edit_export, ExportEdit};

/// Why an operation was not done.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Denied(#[from] Denied),
    /// The input is wrong; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    /// The change conflicts with what is stored; the message names only what the caller may see.
    #[error("{0}")]
    Conflict(String),
    /// The export is running (CLI: exit 75; API: 409). When `cancellable`, asking again with cancel_run stops that
    /// run first: each surface says how (`--cancel-run`, `"cancel_run": true`, a button).
    #[error("{message}")]
    Busy { message: String, cancellable: bool },
    /// The change started and stopped part-way; the message says how to finish it.
    #[error("{0}")]
    Failed(String),
    /// Iterable refused the key (`bad_key`), or could not be asked.
    #[error("{message}")]
    Iterable { message: String, bad_key: bool },
    #[error(transparent)]
    Secret(#[from] crate::secrets::SecretError),
    /// A segment's source text is wrong, or names a source that cannot be read.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    /// A source or its password could not be read while checking a segment (`secret`: the password, or the master
    /// key to seal it); the message says what to do.
    #[error("{message}")]
    Unreadable { message: String, secret: bool },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::sync::ChangeRefused> for OpError {
    fn from(e: crate::sync::ChangeRefused) -> OpError {
        use crate::sync::ChangeRefused;
        match e {
            e @ ChangeRefused::Running { .. } => OpError::Busy { message: e.to_string(), cancellable: true },
            e @ ChangeRefused::StillRunning { .. } => OpError::Busy { message: e.to_string(), cancellable: false },
            ChangeRefused::Store(e) => OpError::Store(e),
            e => OpError::Failed(e.to_string()),
        }
    }
}

/// Who acts, and from where (for the audit: `cli`, or `api ADDRESS`).
pub struct Caller<'a> {
    pub actor: &'a Actor,
    pub origin: &'a str,
}

/// A new export, as the CLI's flags or the API's JSON give it.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub name: String,
    pub connection: String,
    pub segments: Vec<String>,
    /// The email column; optional where a user id identifies members (see `check_identity_settings`).
    pub email_field: Option<String>,
    /// The user id column (userID-based and hybrid projects).
    pub user_id_field: Option<String>,
    /// COLUMN or COLUMN=ITERABLE_FIELD.
    pub fields: Vec<String>,
    pub on_leave: OnLeave,
    pub schedule: String,
    /// Save without reading the segments to check that the columns exist.
    pub skip_check: bool,
    /// What a field's empty value does in Iterable.
    pub null_fields: NullFields,
    /// Iterable does not create users it does not know (hybrid and userID-based projects).
    pub existing_users_only: bool,
    /// Channels to tell, as CHANNEL[:EVENTS].
    pub notify: Vec<String>,
}

/// Parses `COLUMN`, `COLUMN=ITERABLE_FIELD`, optionally followed by `:TYPE`.
pub fn parse_field(text: &str) -> Result<FieldMap, String> {
    let (mapping, field_type) = match text.rsplit_once(':') {
        Some((mapping, t)) => {
            let field_type = FieldType::parse(t.trim()).filter(|t| FieldType::CHOSEN.contains(t)).ok_or_else(|| {
                let types: Vec<&str> = FieldType::CHOSEN.iter().map(|t| t.as_str()).collect();
                format!(
                    "--field '{text}': unknown type '{}'; write COLUMN[=ITERABLE_FIELD]:TYPE with TYPE one of {}",
                    t.trim(),
                    types.join(", ")
                )
            })?;
            (mapping, Some(field_type))
        }
        None => (text, None),
    };
    let (column, field) = match mapping.split_once('=') {
        Some((c, f)) => (c.trim(), f.trim()),
        None => (mapping.trim(), mapping.trim()),
    };
    if column.is_empty() {
        return Err(format!("--field '{text}' names no column; write COLUMN or COLUMN=ITERABLE_FIELD"));
    }
    check_field_name(field).map_err(|e| format!("--field '{text}': {e}"))?;
    Ok(FieldMap { field_type, ..FieldMap::new(column, field) })
}

/// Two fields may not send to one Iterable field.
pub fn check_unique_fields(fields: &[FieldMap]) -> Result<(), String> {
    let mut names: Vec<&str> = fields.iter().map(|f| f.iterable_field.as_str()).collect();
    names.sort();
    match names.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(format!("two fields send to the Iterable field '{}'", w[0])),
        None => Ok(()),
    }
}

/// The identity columns of an export (email, then user id, each when given).
pub fn identity_columns<'a>(email_field: Option<&'a str>, user_id_field: Option<&'a str>) -> Vec<&'a str> {
    email_field.into_iter().chain(user_id_field).collect()
}

/// Reads a segment's first row to check that it has the identity columns and every field's column.
pub async fn check_columns(
    seg: &Segment,
    identity: &[&str],
    fields: &[FieldMap],
    config: &Config,
) -> Result<(), String> {
    let spec: SourceSpec = seg.source.parse().map_err(|e| format!("segment '{}': {e}", seg.name))?;
    let reach = seg.reach(&config.sources);
    let password = crate::secrets::resolve_source_password(seg, &config.store.master_key_path())
        .map_err(|e| format!("{e} (add --skip-check to save anyway)"))?;
    let spec = spec.with_password(password);
    let (columns, _) = source::preview(&spec, seg.query.as_deref(), 1, &reach)
        .await
        .map_err(|e| format!("segment '{}' could not be read: {e} (add --skip-check to save anyway)", seg.name))?;
    let wanted = identity.iter().copied().chain(fields.iter().map(|f| f.column.as_str()));
    for col in wanted {
        if !columns.iter().any(|c| c == col) {
            return Err(format!(
                "segment '{}' has no column '{col}'; its columns are: {}",
                seg.name,
                columns.join(", ")
            ));
        }
    }
    Ok(())
}

/// Adds an export: checks, saves (without running it), makes its creator an export user, audits.
pub async fn create_export(
    store: &Store,
    config: &Config,
    caller: &Caller<'_>,
    r: &ExportRequest,
) -> Result<Export, OpError> {
    // Before anything is read, and before the name is quoted in any message below.
    crate::store::names::check_export_name(&r.name).map_err(|problem| StoreError::InvalidName {
        what: "export",
        name: r.name.clone(),
        problem,
    })?;
    let fail = |m: String| OpError::Invalid(format!("export '{}' not saved: {m}", r.name));
    let fields = r.fields.iter().map(|f| parse_field(f)).collect::<Result<Vec<_>, _>>().map_err(fail)?;
    check_unique_fields(&fields).map_err(fail)?;
    Schedule::parse(&r.schedule).map_err(|e| fail(format!("--schedule {e}")))?;
    let conn = store.connection(&r.connection).await?;
    use_connection(caller.actor, &conn.usable_by).check(&format!("connection '{}'", r.connection))?;
    let email_field = r.email_field.as_deref().map(str::trim).filter(|f| !f.is_empty());
    let user_id_field = r.user_id_field.as_deref().map(str::trim).filter(|f| !f.is_empty());
    check_identity_settings(conn.project_type, &conn.name, email_field, user_id_field, r.existing_users_only)
        .map_err(fail)?;
    if email_field.is_some() && email_field == user_id_field {
        return Err(fail(format!(
            "--email-field and --user-id-field name the same column '{}'; give each its own",
            email_field.unwrap_or_default()
        )));
    }
    let identity = identity_columns(email_field, user_id_field);
    let (subscribe, _) = channels::check_subscriptions(store, caller.actor, &r.notify, &[], &fail).await?;
    let mut segment_ids = Vec::new();
    for name in &r.segments {
        let seg = store.segment(name).await?;
        if segment_ids.contains(&seg.id) {
            return Err(fail(format!("segment '{name}' is given twice")));
        }
        if !r.skip_check {
            check_columns(&seg, &identity, &fields, config).await.map_err(|e| {
                if caller.actor.is_admin() {
                    fail(e)
                } else {
                    // The reader's error may name the source (a path, a URL): administrators only.
                    fail(format!(
                        "segment '{name}' could not be read, or lacks the column(s) {} or a field's column; ask an \
                         administrator to check the segment",
                        identity.iter().map(|c| format!("'{c}'")).collect::<Vec<_>>().join(", ")
                    ))
                }
            })?;
        }
        segment_ids.push(seg.id);
    }
    let export = store
        .add_export(&NewExport {
            name: r.name.clone(),
            connection_id: conn.id,
            email_field: email_field.map(str::to_string),
            user_id_field: user_id_field.map(str::to_string),
            on_leave: r.on_leave,
            null_fields: r.null_fields,
            existing_users_only: r.existing_users_only,
            schedule: r.schedule.trim().to_string(),
            segment_ids,
            fields,
        })
        .await
        .map_err(|e| match e {
            e @ StoreError::ListManaged { .. } if !caller.actor.is_admin() => OpError::Conflict(e.without_names()),
            // Export names are unique across the store, so a contributor learns that the name is taken: that, and
            // nothing about the export holding it, which they may not be able to see.
            StoreError::Exists { name, .. } if !caller.actor.is_admin() => OpError::Conflict(format!(
                "export '{name}' already exists: export names are unique across the store, whoever made the export. \
                 Pick another name."
            )),
            e => e.into(),
        })?;
    if let Some(id) = caller.actor.user_id() {
        store.add_export_user(export.id, id, caller.actor.name()).await?;
    }
    store.set_subscriptions(export.id, &subscribe, &[]).await?;
    let detail = (!r.notify.is_empty()).then(|| channels::subscription_detail(&r.notify, &[]));
    audit(store, config, caller.actor, caller.origin, "export.add", Some(&r.name), detail).await?;
    Ok(export)
}

/// Adds and removes export users of an export; returns them all. Admins and export users may.
pub async fn change_export_users(
    store: &Store,
    config: &Config,
    caller: &Caller<'_>,
    export_name: &str,
    add: &[String],
    remove: &[String],
) -> Result<Vec<User>, OpError> {
    let export = store.export(export_name).await?;
    let facts = ExportFacts::load(store, &export).await?;
    change_export(caller.actor, &facts).check(&format!("export '{export_name}'"))?;
    for name in add {
        let user = store.user(name).await?;
        store.add_export_user(export.id, user.id, caller.actor.name()).await?;
        audit(store, config, caller.actor, caller.origin, "export.users.add", Some(export_name), Some(name.clone()))
            .await?;
    }
    for name in remove {
        let user = store.user(name).await?;
        if !store.remove_export_user(export.id, user.id).await? {
            return Err(OpError::Invalid(format!("'{name}' is not an export user of export '{export_name}'")));
        }
        audit(store, config, caller.actor, caller.origin, "export.users.remove", Some(export_name), Some(name.clone()))
            .await?;
    }
    Ok(store.export_users(export.id).await?)
}

/// The connection `name`, once the caller may change it (404 for a connection it may not see, 403 otherwise).
async fn managed_connection(
    store: &Store,
    caller: &Caller<'_>,
    name: &str,
) -> Result<crate::store::Connection, OpError> {
    let conn = store.connection(name).await?;
    super::manage_connection(caller.actor, &conn.usable_by).check(&format!("connection '{name}'"))?;
    Ok(conn)
}

/// Makes the caller (an administrator) the connection's export user: its scheduled runs go on their behalf.
pub async fn become_connection_export_user(
    store: &Store,
    config: &Config,
    caller: &Caller<'_>,
    connection_name: &str,
) -> Result<(), OpError> {
    let conn = managed_connection(store, caller, connection_name).await?;
    store.set_connection_export_user(conn.id, caller.actor.name(), caller.actor.user_id()).await?;
    audit(store, config, caller.actor, caller.origin, "connection.export_user", Some(connection_name), None).await?;
    Ok(())
}

/// How long a removal with `cancel_run` waits for the run to stop (it stops within one batch).
pub const CANCEL_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Removes an export (export users and admins may): holds its run lock (a run in flight refuses the removal, or is
/// cancelled first with `cancel_run`), optionally empties its lists of what it put there, then forgets it.
pub async fn remove_export(
    store: &Store,
    config: &std::sync::Arc<Config>,
    caller: &Caller<'_>,
    name: &str,
    empty_lists: bool,
    cancel_run: bool,
) -> Result<Vec<crate::sync::empty::Emptied>, OpError> {
    use crate::sync::lock_for_change;
    let export = store.export(name).await?;
    let facts = ExportFacts::load(store, &export).await?;
    change_export(caller.actor, &facts).check(&format!("export '{name}'"))?;
    let guard = lock_for_change(store, config, &export, cancel_run, CANCEL_WAIT).await?;
    let removed = async {
        let emptied = if empty_lists {
            let engine = crate::sync::Engine::new(store.clone(), config.clone());
            let targets: Vec<&crate::store::Target> = export.targets.iter().collect();
            crate::sync::empty::empty_lists(&engine, store, config.iterable.batch_size, &export, &targets)
                .await
                .map_err(|e| {
                    OpError::Failed(format!(
                        "export '{name}' not removed: {e}. The members unsubscribed so far are forgotten, so the same \
                         removal asked again finishes the job"
                    ))
                })?
        } else {
            vec![]
        };
        // A run a dead process left `running` would stay so for good: no later run of this export sweeps it.
        store.interrupt_orphaned_runs(export.id).await?;
        store.remove_export(name).await?;
        let detail = empty_lists.then(|| "lists emptied".to_string());
        audit(store, config, caller.actor, caller.origin, "export.remove", Some(name), detail).await?;
        Ok(emptied)
    }
    .await;
    guard.release(true).await;
    removed
}

/// A new connection, as the CLI's flags or the API's JSON give it.
pub struct ConnectionRequest {
    pub name: String,
    /// Where the key comes from: a reference (environment variable, file) kept as is, or `Stored` (any
    /// ciphertext), which seals `key` with the master key.
    pub key_source: crate::store::KeySource,
    pub key: secrecy::SecretString,
    pub region: crate::iterable::Region,
    /// Overrides `region` (a proxy, the sandbox).
    pub base_url: Option<String>,
    /// `admins` or `contributors`.
    pub usable_by: String,
    pub accept_data_privacy: bool,
    /// Make the caller the connection's export user (the CLI's operator always is).
    pub add_me_as_export_user: bool,
    /// Check the key against Iterable (GET /api/lists) before saving.
    pub verify: bool,
    /// How the Iterable project identifies users.
    pub project_type: ProjectType,
}

/// The Iterable API address: `base_url` when given (checked), else the region's.
pub fn base_url(region: crate::iterable::Region, base_url: Option<&str>) -> Result<String, OpError> {
    match base_url {
        Some(url) => {
            let parsed = reqwest::Url::parse(url).map_err(|e| {
                OpError::Invalid(format!("base URL '{url}' is not a URL ({e}); write it like https://api.iterable.com"))
            })?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(OpError::Invalid(format!("base URL '{url}' must start with http:// or https://")));
            }
            Ok(url.trim_end_matches('/').to_string())
        }
        None => Ok(region.base_url().to_string()),
    }
}

/// Asks Iterable for the project's lists with `key`: the number of lists, or what Iterable (or the network) said.
pub async fn check_key(
    config: &Config,
    base_url: &str,
    key: &secrecy::SecretString,
) -> Result<Result<usize, crate::iterable::IterableError>, OpError> {
    use crate::iterable::{IterableClient, Pacer, RetrySettings};
    let it = &config.iterable;
    // Two attempts, so a dead endpoint fails fast.
    let retry = RetrySettings {
        max_attempts: 2,
        min_delay: std::time::Duration::from_millis(300),
        max_delay: std::time::Duration::from_secs(2),
    };
    let pacer = std::sync::Arc::new(Pacer::new(it.requests_per_second));
    let client = IterableClient::new(base_url, key, it.timeout, pacer, retry)
        .map_err(|e| OpError::Invalid(format!("cannot ask Iterable at {base_url}: {e}")))?;
    Ok(client.lists().await.map(|lists| lists.len()))
}

/// The "Connect" step: admins only; checks the consent, the URL and (unless told not to) the key with Iterable,
/// seals a stored key, saves, sets the export user, audits.
pub async fn add_connection(
    store: &Store,
    config: &Config,
    caller: &Caller<'_>,
    r: ConnectionRequest,
) -> Result<crate::store::Connection, OpError> {
    use crate::secrets::{self, MasterKey};
    use crate::store::KeySource;
    super::add_connection(caller.actor).check("connections")?;
    if !r.accept_data_privacy {
        return Err(OpError::Invalid(
            "connection not saved: exports send customer profiles (email addresses and every field you map, which \
             is personal data) out of this system to Iterable's servers. If your organisation allows that, agree to \
             the data-privacy terms (--accept-data-privacy, or \"accept_data_privacy\": true); your consent and its \
             time are recorded."
                .into(),
        ));
    }
    if !["admins", super::USABLE_BY_CONTRIBUTORS].contains(&r.usable_by.as_str()) {
        return Err(OpError::Invalid(format!(
            "connection '{}' not saved: usable_by '{}' is neither 'admins' nor 'contributors'",
            r.name, r.usable_by
        )));
    }
    let base_url = base_url(r.region, r.base_url.as_deref())?;
    if r.verify {
        let what = format!("connection '{}' was not saved", r.name);
        connection_edit::verify_key(config, &base_url, &r.key, &what, "--skip-verify").await?;
    }
    let source = match r.key_source {
        KeySource::Stored { .. } => {
            // Every secret already sealed (API keys and segments' database passwords) must open with the key.
            let (connections, segments, channels) =
                (store.connections().await?, store.segments().await?, store.channels().await?);
            let sealed = secrets::sealed_secrets(&connections, &segments, &channels);
            let master = MasterKey::for_sealing(&config.store.master_key_path(), &sealed)?;
            let (ciphertext, nonce) = master.seal(&r.name, &r.key);
            KeySource::Stored { ciphertext, nonce }
        }
        other => other,
    };
    let last4 = matches!(source, KeySource::Stored { .. }).then(|| secrets::last4(&r.key)).flatten();
    let conn = store
        .add_connection(&crate::store::NewConnection {
            name: r.name.clone(),
            base_url,
            region: r.base_url.is_none().then(|| r.region.as_str().to_string()),
            project_type: r.project_type,
            usable_by: r.usable_by,
            key: source,
            key_last4: last4,
            privacy_accepted_by: caller.actor.name().to_string(),
            verified: r.verify,
        })
        .await?;
    // The CLI's connections run on the local operator's behalf, so their scheduled runs never lack an export user.
    if r.add_me_as_export_user || caller.actor.user_id().is_none() {
        store.set_connection_export_user(conn.id, caller.actor.name(), caller.actor.user_id()).await?;
    }
    let detail = format!("usable by {}; data privacy accepted", conn.usable_by);
    audit(store, config, caller.actor, caller.origin, "connection.add", Some(&conn.name), Some(detail)).await?;
    Ok(conn)
}

/// Removes a connection (admins only). Exports that use it are detached (kept, disabled) or removed, as asked; with
/// neither, the removal is refused while exports use it. With `cancel_run`, runs in flight on it are cancelled
/// first; without, an export being removed that is running refuses the removal (`Busy`), and detached ones are not
/// waited for. Returns the exports concerned.
pub async fn remove_connection(
    store: &Store,
    config: &Config,
    caller: &Caller<'_>,
    name: &str,
    detach_exports: bool,
    remove_exports: bool,
    cancel_run: bool,
) -> Result<Vec<String>, OpError> {
    use crate::sync::lock_for_change;
    let conn = managed_connection(store, caller, name).await?;
    // Exports that go on must not go on writing through it: hold each one's run lock (a run in flight refuses the
    // removal, or is cancelled first) until the removal is committed.
    let mut locks = Vec::new();
    if remove_exports || (detach_exports && cancel_run) {
        for export_name in store.exports_using_connection(conn.id).await? {
            let export = store.export(&export_name).await?;
            let lock =
                lock_for_change(store, config, &export, cancel_run, CANCEL_WAIT).await.map_err(
                    |e| match OpError::from(e) {
                        OpError::Busy { message, cancellable } => OpError::Busy {
                            message: format!("connection '{name}' not removed: {message}"),
                            cancellable,
                        },
                        other => other,
                    },
                )?;
            locks.push(lock);
        }
    }
    let affected = store.remove_connection(name, detach_exports, remove_exports).await;
    for lock in locks {
        lock.release(true).await;
    }
    let affected = affected?;
    let detail = match (affected.is_empty(), remove_exports) {
        (true, _) => None,
        (false, true) => Some("exports removed".to_string()),
        (false, false) => Some("exports detached".to_string()),
    };
    audit(store, config, caller.actor, caller.origin, "connection.remove", Some(name), detail).await?;
    Ok(affected)
}

/// Whether `export edit` may give an export these identity columns. A member is its identity: once the export has
/// put members on its lists, a new identity column would make every member a leaver under its old identity and a
/// joiner under its new one. So it is refused then, saying what to do, except where members keep their identity: the
/// email column of a userID-based export (there only the user's address, sent as an update), and a user id column
/// given to a hybrid export that had none (each member keeps its email, which matches it to its record).
pub async fn check_identity_change(
    store: &Store,
    project_type: ProjectType,
    export: &Export,
    email_field: Option<&str>,
    user_id_field: Option<&str>,
) -> Result<(), OpError> {
    let email_changed = export.email_field.as_deref() != email_field;
    let user_id_changed = export.user_id_field.as_deref() != user_id_field;
    let changes_identity = match project_type {
        ProjectType::Email => email_changed,
        ProjectType::UserId => user_id_changed,
        ProjectType::Hybrid => email_changed || (user_id_changed && export.user_id_field.is_some()),
    };
    if !changes_identity || !store.export_remembers_members(export.id).await? {
        return Ok(());
    }
    let email_flag = match project_type {
        ProjectType::Email => true,
        ProjectType::UserId => false,
        ProjectType::Hybrid => email_changed,
    };
    let (flag, before, after) = if email_flag {
        ("--email-field", export.email_field.as_deref(), email_field)
    } else {
        ("--user-id-field", export.user_id_field.as_deref(), user_id_field)
    };
    let name = |c: Option<&str>| c.map_or("none".to_string(), |c| format!("'{c}'"));
    Err(OpError::Conflict(format!(
        "{flag} would change who the members of export '{}' are (column {} instead of {}), and it has already put \
         members on its lists: each would be unsubscribed as who it was and subscribed again as who it is now. To send \
         the same segments identified by the new column, remove the export (`export remove {} --empty-lists` takes \
         off its lists the members it put there) and add it again, or add a new export for new lists.",
        export.name,
        name(after),
        name(before),
        export.name
    )))
}
