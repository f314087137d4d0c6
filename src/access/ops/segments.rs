//! Adding, changing and removing segments, for the CLI and the HTTP API alike: the source and its query checked
//! the same way, a database password sealed or kept as a reference, the exports that send the segment still
//! finding their columns. A segment records how it was saved ([`segment_origin`]): one saved over HTTP may name
//! only files inside `[sources] allowed_dirs` and PostgreSQL URLs that name no file and no socket, at saving and at
//! every later read (`crate::source::Reach`), and nothing may make the service read a file or an environment variable
//! of the host's.

use std::path::Path;

use secrecy::SecretString;

use crate::config::Config;
use crate::secrets::{self, MasterKey};
use crate::source::{self, Reach, SourceSpec};
use crate::store::{Segment, SegmentOrigin, SourcePassword, Store, StoreError};

use super::{Caller, OpError};
use crate::access::{audit, manage_segments, Actor};

/// Where a postgres source's password comes from when it is not in the URL. `Env` and `File` are for the CLI
/// only: over HTTP they would let a request send any environment variable or file of the host to a database server
/// of its choosing.
#[derive(Debug, Clone)]
pub enum PasswordRef {
    Env(String),
    File(String),
    /// The password itself, sealed with the master key when saved.
    Value(SecretString),
}

/// How a segment saved by `actor` counts: from the CLI when the operator at the host's shell saves it, over the
/// HTTP API when an account does. It decides what the segment's source may reach, then and at every read
/// ([`SegmentOrigin::reach`]).
pub fn segment_origin(actor: &Actor) -> SegmentOrigin {
    match actor {
        Actor::Local { .. } => SegmentOrigin::Cli,
        Actor::User(_) => SegmentOrigin::Http,
    }
}

/// A new segment.
#[derive(Debug, Clone)]
pub struct SegmentAdd {
    pub name: String,
    pub source: String,
    pub password_ref: Option<PasswordRef>,
    pub query: Option<String>,
    /// Save without reading a first row to check the source.
    pub skip_check: bool,
}

/// A change to a segment; absent values stay as they are.
#[derive(Debug, Clone, Default)]
pub struct SegmentEdit {
    pub source: Option<String>,
    pub password_ref: Option<PasswordRef>,
    /// Drop the segment's database password.
    pub no_password: bool,
    pub query: Option<String>,
    pub skip_check: bool,
}

/// A segment as saved, with its source as it may be shown (password replaced by `***`) and a note on where its
/// password comes from.
pub struct SavedSegment {
    pub segment: Segment,
    pub shown_source: String,
    pub password_note: String,
}

/// Where a segment's database password will come from once saved.
enum NewPassword {
    None,
    /// Given in the URL (or kept from before under another source): sealed with the master key when saved.
    Seal(SecretString),
    Env(String),
    File(String),
    /// The segment's sealed password, unchanged with its unchanged source.
    Keep(SourcePassword),
}

impl NewPassword {
    fn from_ref(r: &PasswordRef) -> Result<NewPassword, OpError> {
        Ok(match r {
            PasswordRef::Env(var) => {
                if var.is_empty() || var.contains(['=', '\0']) {
                    return Err(OpError::Invalid(format!(
                        "--password-env {var:?} is not an environment variable name"
                    )));
                }
                NewPassword::Env(var.clone())
            }
            PasswordRef::File(path) => NewPassword::File(if path.starts_with(secrets::CREDENTIALS_DIR) {
                path.clone()
            } else {
                std::path::absolute(path).unwrap_or_else(|_| path.into()).display().to_string()
            }),
            PasswordRef::Value(password) => NewPassword::Seal(password.clone()),
        })
    }

    /// The password, to check the source with now.
    fn resolve(
        &self,
        segment: &str,
        id: i64,
        source: &str,
        master_key_path: &Path,
    ) -> Result<Option<SecretString>, secrets::SecretError> {
        Ok(match self {
            NewPassword::None => None,
            NewPassword::Seal(password) => Some(password.clone()),
            NewPassword::Env(var) => Some(secrets::read_password_env(segment, var)?),
            NewPassword::File(path) => Some(secrets::read_password_file(segment, path)?),
            NewPassword::Keep(kept) => secrets::resolve_password_of(segment, id, source, kept, master_key_path)?,
        })
    }

    /// The master key to seal the password with, when it is to be sealed. Refused when it is missing or wrong
    /// while other secrets are sealed with it (never replaced by a new one).
    async fn master_key(&self, store: &Store, path: &Path) -> Result<Option<MasterKey>, OpError> {
        if !matches!(self, NewPassword::Seal(_)) {
            return Ok(None);
        }
        let (connections, segments, channels) =
            (store.connections().await?, store.segments().await?, store.channels().await?);
        let sealed = secrets::sealed_secrets(&connections, &segments, &channels);
        MasterKey::for_sealing(path, &sealed).map(Some).map_err(|e| OpError::Unreadable {
            secret: true,
            message: format!(
                "{e} To keep the password out of the store instead, use --password-env VAR or --password-file PATH."
            ),
        })
    }

    /// What to store for segment `id` whose stored source is `source`.
    fn record(self, master: Option<&MasterKey>, id: i64, source: &str) -> SourcePassword {
        match self {
            NewPassword::None => SourcePassword::None,
            NewPassword::Env(var) => SourcePassword::Env(var),
            NewPassword::File(path) => SourcePassword::File(path),
            NewPassword::Keep(kept) => kept,
            NewPassword::Seal(password) => master
                .expect("a master key is loaded for a password to seal")
                .seal_source_password(id, source, &password),
        }
    }
}

/// The password of a new source: the one in its URL, or a reference; never both, and only for postgres sources.
fn new_password(spec: &SourceSpec, given: Option<&PasswordRef>) -> Result<NewPassword, OpError> {
    if given.is_some() && !matches!(spec, SourceSpec::Postgres { .. }) {
        return Err(OpError::Invalid(format!(
            "a {} source takes no password; --password-env and --password-file are for postgres sources",
            spec.kind()
        )));
    }
    match (spec.password(), given) {
        (Some(_), Some(_)) => Err(OpError::Invalid(
            "the URL already holds a password: give it either in the URL or with --password-env / --password-file, \
             not both"
                .into(),
        )),
        (Some(password), None) => Ok(NewPassword::Seal(password.clone())),
        (None, Some(reference)) => NewPassword::from_ref(reference),
        (None, None) => Ok(NewPassword::None),
    }
}

/// How the source is shown, and a note on where its password comes from (human output).
fn described(spec: &SourceSpec, password: &SourcePassword) -> (String, String) {
    let note = match password {
        SourcePassword::None => String::new(),
        other => format!("; password: {}", other.describe()),
    };
    (spec.shown(*password != SourcePassword::None), note)
}

/// A SQL source needs a query; a file source takes none.
fn check_source(spec: &SourceSpec, query: &Option<String>) -> Result<(), OpError> {
    match (spec.takes_query(), query) {
        (true, None) => Err(OpError::Invalid(format!(
            "a {} source needs --query SQL selecting the members, e.g. --query \"SELECT email, tier FROM profiles \
             WHERE tier = 'gold'\"",
            spec.kind()
        ))),
        (false, Some(_)) => Err(OpError::Invalid(format!(
            "a {} source takes no --query: every row of the file is a member",
            spec.kind()
        ))),
        _ => Ok(()),
    }
}

/// The source as it may be saved under `reach` (see `crate::source::for_saving`).
fn confine(spec: SourceSpec, reach: &Reach, segment: &str) -> Result<SourceSpec, OpError> {
    source::for_saving(spec, reach)
        .map_err(|refusal| OpError::Invalid(format!("segment '{segment}' not saved: {refusal}")))
}

/// Adds a segment (admins only): checks the source (reads a first row unless `skip_check`), seals a password given
/// in the URL, audits.
pub async fn add_segment(
    store: &Store,
    config: &Config,
    caller: &Caller<'_>,
    r: SegmentAdd,
) -> Result<SavedSegment, OpError> {
    manage_segments(caller.actor).check("segments")?;
    let origin = segment_origin(caller.actor);
    let reach = origin.reach(&config.sources);
    let name = r.name;
    // The name becomes the Iterable list's name; check it before reading the source.
    crate::store::names::check_segment_name(&name).map_err(|problem| StoreError::InvalidName {
        what: "segment",
        name: name.clone(),
        problem,
    })?;
    let spec = confine(r.source.parse::<SourceSpec>()?.absolute(), &reach, &name)?;
    let password = new_password(&spec, r.password_ref.as_ref())?;
    let query = r.query.filter(|q| !q.trim().is_empty());
    check_source(&spec, &query)?;
    let stored = spec.to_stored();
    let master_key_path = config.store.master_key_path();
    if !r.skip_check {
        let not_saved = |secret: bool, e: String| OpError::Unreadable {
            secret,
            message: format!(
                "segment '{name}' not saved: {e} (add --skip-check to save it anyway; `segment preview {name:?}` then \
                 shows what it reads, and `segment edit {name:?} --query SQL` changes it)"
            ),
        };
        let readable = spec.clone().with_password(
            password.resolve(&name, 0, &stored, &master_key_path).map_err(|e| not_saved(true, e.to_string()))?,
        );
        source::preview(&readable, query.as_deref(), 1, &reach).await.map_err(|e| not_saved(false, e.to_string()))?;
    }
    let master = password.master_key(store, &master_key_path).await?;
    let seg = store
        .add_segment_with_password(&name, &stored, query.as_deref(), origin, |id| {
            password.record(master.as_ref(), id, &stored)
        })
        .await?;
    let (shown_source, password_note) = described(&spec, &seg.password);
    audit(store, config, caller.actor, caller.origin, "segment.add", Some(&name), None).await?;
    Ok(SavedSegment { segment: seg, shown_source, password_note })
}

/// Changes a segment's source, password or query (admins only), with the same checks as `add_segment`; every export
/// that sends it must still find its columns. Exports keep what they put on its list.
pub async fn edit_segment(
    store: &Store,
    config: &Config,
    caller: &Caller<'_>,
    name: &str,
    e: SegmentEdit,
) -> Result<SavedSegment, OpError> {
    let seg = store.segment(name).await?;
    manage_segments(caller.actor).check(&format!("segment '{name}'"))?;
    let origin = segment_origin(caller.actor);
    let reach = origin.reach(&config.sources);
    let fail = |m: String| OpError::Invalid(format!("segment '{name}' not changed: {m}"));
    let password_given = e.password_ref.is_some();
    if e.source.is_none() && e.query.is_none() && !password_given && !e.no_password {
        return Err(fail(
            "nothing to change; give --source, --query, --password-env, --password-file or --no-password".into(),
        ));
    }
    let master_key_path = config.store.master_key_path();
    // Without a new source, the stored one (in a store not yet upgraded it may still hold its password: it is then
    // sealed now, like a password given in a new URL).
    let spec = match &e.source {
        Some(s) => s.parse::<SourceSpec>()?.absolute(),
        None if password_given || e.no_password => seg.source.parse::<SourceSpec>()?.to_stored().parse()?,
        None => seg.source.parse::<SourceSpec>()?,
    };
    // Over HTTP the segment as it will be must read only what is allowed, even when only its query changes.
    let spec = confine(spec, &reach, name)?;
    let stored = spec.to_stored();
    let password = if e.no_password {
        if !matches!(spec, SourceSpec::Postgres { .. }) {
            return Err(fail(format!("a {} source has no password to drop", spec.kind())));
        }
        if e.source.is_some() && spec.password().is_some() {
            return Err(fail("--no-password, but the new URL holds a password".into()));
        }
        NewPassword::None
    } else {
        match new_password(&spec, e.password_ref.as_ref()).map_err(|e| fail(e.to_string()))? {
            // A new URL without password, and no reference given: the segment keeps its password.
            NewPassword::None if matches!(spec, SourceSpec::Postgres { .. }) => match &seg.password {
                SourcePassword::None => NewPassword::None,
                SourcePassword::Env(var) => NewPassword::Env(var.clone()),
                SourcePassword::File(path) => NewPassword::File(path.clone()),
                sealed @ SourcePassword::Sealed { .. } if stored == seg.source => NewPassword::Keep(sealed.clone()),
                // Sealed with the old source: opened now to be sealed again with the new one.
                SourcePassword::Sealed { .. } => match secrets::resolve_source_password(&seg, &master_key_path)? {
                    Some(password) => NewPassword::Seal(password),
                    None => NewPassword::None,
                },
            },
            other => other,
        }
    };
    // A new file source drops the old query; a new SQL source keeps it unless another is given.
    let query = match e.query {
        Some(q) => Some(q).filter(|q| !q.trim().is_empty()),
        None if spec.takes_query() => seg.query.clone(),
        None => None,
    };
    check_source(&spec, &query)?;
    if !e.skip_check {
        let resolved =
            password.resolve(name, seg.id, &seg.source, &master_key_path).map_err(|e| OpError::Unreadable {
                secret: true,
                message: format!("segment '{name}' not changed: {e} (add --skip-check to save it anyway)"),
            })?;
        let readable = spec.clone().with_password(resolved);
        let (columns, _) = source::preview(&readable, query.as_deref(), 1, &reach)
            .await
            .map_err(|e| fail(format!("{e} (add --skip-check to save it anyway)")))?;
        for export_name in store.exports_using_segment(seg.id).await? {
            let export = store.export(&export_name).await?;
            let wanted =
                export.email_field.iter().chain(&export.user_id_field).chain(export.fields.iter().map(|f| &f.column));
            for col in wanted {
                if !columns.contains(col) {
                    return Err(fail(format!(
                        "export '{export_name}' needs the column '{col}', which the new query does not have; its \
                         columns are: {} (add --skip-check to save it anyway)",
                        columns.join(", ")
                    )));
                }
            }
        }
    }
    let master = password.master_key(store, &master_key_path).await?;
    let record = password.record(master.as_ref(), seg.id, &stored);
    let seg = store.edit_segment(name, &stored, query.as_deref(), origin, &record).await?;
    let (shown_source, password_note) = described(&spec, &seg.password);
    audit(store, config, caller.actor, caller.origin, "segment.edit", Some(name), None).await?;
    Ok(SavedSegment { segment: seg, shown_source, password_note })
}

/// Removes a segment that no export sends (admins only).
pub async fn remove_segment(store: &Store, config: &Config, caller: &Caller<'_>, name: &str) -> Result<(), OpError> {
    store.segment(name).await?;
    manage_segments(caller.actor).check(&format!("segment '{name}'"))?;
    store.remove_segment(name).await?;
    audit(store, config, caller.actor, caller.origin, "segment.remove", Some(name), None).await?;
    Ok(())
}
