//! `segment add | edit | list | preview | remove`.

use std::path::Path;

use clap::{Args, Subcommand};
use secrecy::SecretString;
use serde_json::json;

use super::error::ErrorKind;
use super::{exit, Ctx, Exit};
use crate::secrets::{self, MasterKey};
use crate::source::{self, SourceSpec};
use crate::store::{Segment, SourcePassword, Store};

/// The help of `--source`.
const SOURCE_HELP: &str = "sqlite:PATH, a postgres://… URL, csv:PATH (with a header row) or jsonl:PATH. A password \
                           in a postgres URL is stored encrypted with the master key; --password-env or \
                           --password-file keep it out of your shell history (and out of the store).";

#[derive(Debug, Subcommand)]
pub enum SegmentCmd {
    /// Add a segment: a named query whose rows are the members and whose columns are the fields.
    Add {
        /// Segment name; the Iterable list gets exactly this name.
        name: String,
        #[arg(long, value_name = "SOURCE", help = SOURCE_HELP)]
        source: String,
        #[command(flatten)]
        password: PasswordArgs,
        /// The SQL query selecting the members (sqlite and postgres only).
        #[arg(long, value_name = "SQL")]
        query: Option<String>,
        /// Save without reading a first row to check the source.
        #[arg(long)]
        skip_check: bool,
    },
    /// Change a segment's source, password or query, with the same checks as `add`. Exports that send it keep what
    /// they put on its list, so their next run sends only the difference (a narrower query removes the leavers). A
    /// new postgres URL without password keeps the segment's password (see --no-password).
    Edit {
        name: String,
        #[arg(long, value_name = "SOURCE", help = SOURCE_HELP)]
        source: Option<String>,
        #[command(flatten)]
        password: PasswordArgs,
        /// Drop the segment's database password (the server then needs none, or finds it in PGPASSWORD or
        /// ~/.pgpass).
        #[arg(long, conflicts_with_all = ["password_env", "password_file"])]
        no_password: bool,
        /// The SQL query selecting the members (sqlite and postgres only).
        #[arg(long, value_name = "SQL")]
        query: Option<String>,
        /// Save without reading a first row to check the source and the columns the exports need.
        #[arg(long)]
        skip_check: bool,
    },
    /// List segments.
    List,
    /// Show the first rows of a segment.
    Preview {
        name: String,
        /// Rows to show.
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// Remove a segment that no export sends (remove it from exports with `export edit EXPORT --remove-segment`).
    Remove { name: String },
}

/// Where a postgres source's database password comes from when it is not in the URL.
#[derive(Debug, Args)]
pub struct PasswordArgs {
    /// Read the postgres source's database password from this environment variable at each use (only the
    /// variable's name is stored).
    #[arg(long, value_name = "VAR", conflicts_with = "password_file")]
    password_env: Option<String>,
    /// Read the postgres source's database password from the first line of this file at each use (only the path is
    /// stored). A systemd credential is written '$CREDENTIALS_DIRECTORY/NAME' (quoted).
    #[arg(long, value_name = "PATH")]
    password_file: Option<String>,
}

impl PasswordArgs {
    fn given(&self) -> bool {
        self.password_env.is_some() || self.password_file.is_some()
    }

    /// The reference asked for, if any.
    fn reference(&self) -> anyhow::Result<Option<NewPassword>> {
        if let Some(var) = &self.password_env {
            if var.is_empty() || var.contains(['=', '\0']) {
                return Err(Exit::invalid(format!("--password-env {var:?} is not an environment variable name")));
            }
            return Ok(Some(NewPassword::Env(var.clone())));
        }
        Ok(self.password_file.as_ref().map(|path| {
            let path = if path.starts_with(secrets::CREDENTIALS_DIR) {
                path.clone()
            } else {
                std::path::absolute(path).unwrap_or_else(|_| path.into()).display().to_string()
            };
            NewPassword::File(path)
        }))
    }
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
    /// The password, to check the source with now.
    fn resolve(
        &self,
        segment: &str,
        id: i64,
        source: &str,
        master_key_path: &Path,
    ) -> anyhow::Result<Option<SecretString>> {
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
    async fn master_key(&self, store: &Store, path: &Path) -> anyhow::Result<Option<MasterKey>> {
        if !matches!(self, NewPassword::Seal(_)) {
            return Ok(None);
        }
        let (connections, segments) = (store.connections().await?, store.segments().await?);
        let sealed = secrets::sealed_secrets(&connections, &segments);
        MasterKey::for_sealing(path, &sealed).map(Some).map_err(|e| {
            Exit::with_kind(
                ErrorKind::Secret,
                format!("{e} To keep the password out of the store instead, use --password-env VAR or --password-file PATH."),
            )
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
fn new_password(spec: &SourceSpec, args: &PasswordArgs) -> anyhow::Result<NewPassword> {
    if args.given() && !matches!(spec, SourceSpec::Postgres { .. }) {
        return Err(Exit::invalid(format!(
            "a {} source takes no password; --password-env and --password-file are for postgres sources",
            spec.kind()
        )));
    }
    match (spec.password(), args.reference()?) {
        (Some(_), Some(_)) => Err(Exit::invalid(
            "the URL already holds a password: give it either in the URL or with --password-env / --password-file, \
             not both",
        )),
        (Some(password), None) => Ok(NewPassword::Seal(password.clone())),
        (None, Some(reference)) => Ok(reference),
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

/// A stored segment's source, ready to read: its database password resolved from wherever the segment keeps it.
fn readable(ctx: &Ctx, seg: &Segment) -> anyhow::Result<SourceSpec> {
    let spec: SourceSpec = seg.source.parse()?;
    Ok(spec.with_password(secrets::resolve_source_password(seg, &ctx.config.store.master_key_path())?))
}

pub async fn run(ctx: &Ctx, cmd: SegmentCmd) -> anyhow::Result<u8> {
    match cmd {
        SegmentCmd::Add { name, source, password, query, skip_check } => {
            // The name becomes the Iterable list's name; check it before reading the source.
            crate::store::names::check_segment_name(&name).map_err(|problem| {
                crate::store::StoreError::InvalidName { what: "segment", name: name.clone(), problem }
            })?;
            let spec = source.parse::<SourceSpec>()?.absolute();
            let password = new_password(&spec, &password)?;
            let query = query.filter(|q| !q.trim().is_empty());
            check_source(&spec, &query)?;
            let stored = spec.to_stored();
            let master_key_path = ctx.config.store.master_key_path();
            if !skip_check {
                let not_saved = |kind: ErrorKind, e: String| {
                    Exit::with_kind(
                        kind,
                        format!("segment '{name}' not saved: {e} (add --skip-check to save it anyway)"),
                    )
                };
                let readable = spec.clone().with_password(
                    password
                        .resolve(&name, 0, &stored, &master_key_path)
                        .map_err(|e| not_saved(ErrorKind::Secret, e.to_string()))?,
                );
                source::preview(&readable, query.as_deref(), 1)
                    .await
                    .map_err(|e| not_saved(ErrorKind::Source, e.to_string()))?;
            }
            let store = ctx.store().await?;
            let master = password.master_key(&store, &master_key_path).await?;
            let seg = store
                .add_segment_with_password(&name, &stored, query.as_deref(), |id| {
                    password.record(master.as_ref(), id, &stored)
                })
                .await?;
            let (shown, note) = described(&spec, &seg.password);
            ctx.audit(&store, "segment.add", &name, None).await?;
            if ctx.out.json {
                ctx.out.json(&json!({ "name": seg.name, "source": shown, "query": seg.query }));
            } else {
                println!("Added segment '{}' ({shown}{note}).", seg.name);
            }
            Ok(exit::OK)
        }
        SegmentCmd::Edit { name, source, password, no_password, query, skip_check } => {
            edit(ctx, &name, source, &password, no_password, query, skip_check).await
        }
        SegmentCmd::List => {
            let segments = ctx.store().await?.segments().await?;
            let shown: Vec<_> = segments
                .iter()
                .map(|s| {
                    let source = s.shown_source();
                    (s, source)
                })
                .collect();
            if ctx.out.json {
                let v: Vec<_> = shown.iter().map(|(s, src)| json!({ "name": s.name, "source": src, "query": s.query, "created_at": s.created_at })).collect();
                ctx.out.json(&v);
            } else if shown.is_empty() {
                println!("No segments yet. Add one with `segment-exporter segment add NAME --source sqlite:PATH --query SQL`.");
            } else {
                let rows = shown
                    .iter()
                    .map(|(s, src)| vec![s.name.clone(), src.clone(), s.query.clone().unwrap_or_else(|| "-".into())])
                    .collect();
                ctx.out.table(&["name", "source", "query"], rows);
            }
            Ok(exit::OK)
        }
        SegmentCmd::Preview { name, limit } => {
            let seg = ctx.store().await?.segment(&name).await?;
            let spec = readable(ctx, &seg)?;
            let (columns, rows) = source::preview(&spec, seg.query.as_deref(), limit)
                .await
                .map_err(|e| Exit::with_kind(ErrorKind::Source, format!("segment '{name}': {e}")))?;
            if ctx.out.json {
                let v: Vec<serde_json::Map<String, serde_json::Value>> =
                    rows.into_iter().map(|r| columns.iter().cloned().zip(r).collect()).collect();
                ctx.out.json(&v);
            } else {
                let cols: Vec<&str> = columns.iter().map(String::as_str).collect();
                let rows = rows
                    .into_iter()
                    .map(|r| r.into_iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect())
                    .collect();
                ctx.out.table(&cols, rows);
            }
            Ok(exit::OK)
        }
        SegmentCmd::Remove { name } => {
            let store = ctx.store().await?;
            store.remove_segment(&name).await?;
            ctx.audit(&store, "segment.remove", &name, None).await?;
            if ctx.out.json {
                ctx.out.json(&json!({ "removed": name }));
            } else {
                println!("Removed segment '{name}'.");
            }
            Ok(exit::OK)
        }
    }
}

/// A SQL source needs a query; a file source takes none.
fn check_source(spec: &SourceSpec, query: &Option<String>) -> anyhow::Result<()> {
    match (spec.takes_query(), query) {
        (true, None) => Err(Exit::invalid(
            format!("a {} source needs --query SQL selecting the members, e.g. --query \"SELECT email, tier FROM profiles WHERE tier = 'gold'\"", spec.kind()),
        )),
        (false, Some(_)) => Err(Exit::invalid(
            format!("a {} source takes no --query: every row of the file is a member", spec.kind()),
        )),
        _ => Ok(()),
    }
}

async fn edit(
    ctx: &Ctx,
    name: &str,
    source: Option<String>,
    password_args: &PasswordArgs,
    no_password: bool,
    query: Option<String>,
    skip_check: bool,
) -> anyhow::Result<u8> {
    let fail = |m: String| Exit::invalid(format!("segment '{name}' not changed: {m}"));
    if source.is_none() && query.is_none() && !password_args.given() && !no_password {
        return Err(fail(
            "nothing to change; give --source, --query, --password-env, --password-file or --no-password".into(),
        ));
    }
    let store = ctx.store().await?;
    let seg = store.segment(name).await?;
    let master_key_path = ctx.config.store.master_key_path();
    // Without --source, the stored one (in a store not yet upgraded it may still hold its password: it is then
    // sealed now, like a password given in a new URL).
    let spec = match &source {
        Some(s) => s.parse::<SourceSpec>()?.absolute(),
        None if password_args.given() || no_password => seg.source.parse::<SourceSpec>()?.to_stored().parse()?,
        None => seg.source.parse::<SourceSpec>()?,
    };
    let stored = spec.to_stored();
    let password = if no_password {
        if !matches!(spec, SourceSpec::Postgres { .. }) {
            return Err(fail(format!("a {} source has no password to drop", spec.kind())));
        }
        if source.is_some() && spec.password().is_some() {
            return Err(fail("--no-password, but the new URL holds a password".into()));
        }
        NewPassword::None
    } else {
        match new_password(&spec, password_args).map_err(|e| fail(e.to_string()))? {
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
    let query = match query {
        Some(q) => Some(q).filter(|q| !q.trim().is_empty()),
        None if spec.takes_query() => seg.query.clone(),
        None => None,
    };
    check_source(&spec, &query)?;
    if !skip_check {
        let resolved = password.resolve(name, seg.id, &seg.source, &master_key_path).map_err(|e| {
            Exit::with_kind(
                ErrorKind::Secret,
                format!("segment '{name}' not changed: {e} (add --skip-check to save it anyway)"),
            )
        })?;
        let readable = spec.clone().with_password(resolved);
        let (columns, _) = source::preview(&readable, query.as_deref(), 1)
            .await
            .map_err(|e| fail(format!("{e} (add --skip-check to save it anyway)")))?;
        // Every export that sends the segment must still find its columns.
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
    let master = password.master_key(&store, &master_key_path).await?;
    let record = password.record(master.as_ref(), seg.id, &stored);
    let seg = store.edit_segment(name, &stored, query.as_deref(), &record).await?;
    let (shown, note) = described(&spec, &seg.password);
    ctx.audit(&store, "segment.edit", name, None).await?;
    if ctx.out.json {
        ctx.out.json(&json!({ "name": seg.name, "source": shown, "query": seg.query }));
    } else {
        println!(
            "Changed segment '{}' ({shown}{note}). Exports that send it send only the difference on their next run.",
            seg.name
        );
    }
    Ok(exit::OK)
}
