//! `segment add | edit | list | preview | remove`.

use clap::{Args, Subcommand};
use serde_json::json;

use super::error::ErrorKind;
use super::user::op_error;
use super::{exit, Ctx, Exit};
use crate::access::ops::segments::{PasswordRef, SavedSegment, SegmentAdd, SegmentEdit};
use crate::access::ops::{self, Caller};
use crate::secrets;
use crate::source::{self, SourceSpec};
use crate::store::Segment;

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
    /// stored). A systemd credential is written '$CREDENTIALS_DIRECTORY/NAME' (quoted; '$$CREDENTIALS_DIRECTORY/NAME'
    /// through systemd-run).
    #[arg(long, value_name = "PATH")]
    password_file: Option<String>,
}

impl PasswordArgs {
    /// The reference asked for, if any.
    fn reference(&self) -> Option<PasswordRef> {
        match (&self.password_env, &self.password_file) {
            (Some(var), _) => Some(PasswordRef::Env(var.clone())),
            (None, Some(path)) => Some(PasswordRef::File(path.clone())),
            (None, None) => None,
        }
    }
}

/// A stored segment's source, ready to read: its database password resolved from wherever the segment keeps it.
fn readable(ctx: &Ctx, seg: &Segment) -> anyhow::Result<SourceSpec> {
    let spec: SourceSpec = seg.source.parse()?;
    Ok(spec.with_password(secrets::resolve_source_password(seg, &ctx.config.store.master_key_path())?))
}

pub async fn run(ctx: &Ctx, cmd: SegmentCmd) -> anyhow::Result<u8> {
    match cmd {
        SegmentCmd::Add { name, source, password, query, skip_check } => {
            let store = ctx.store().await?;
            let actor = ctx.actor();
            let request = SegmentAdd { name, source, password_ref: password.reference(), query, skip_check };
            let saved =
                ops::segments::add_segment(&store, &ctx.config, &caller(&actor), request).await.map_err(op_error)?;
            print_saved(ctx, &saved, "Added segment");
            Ok(exit::OK)
        }
        SegmentCmd::Edit { name, source, password, no_password, query, skip_check } => {
            let store = ctx.store().await?;
            let actor = ctx.actor();
            let change = SegmentEdit { source, password_ref: password.reference(), no_password, query, skip_check };
            let saved = ops::segments::edit_segment(&store, &ctx.config, &caller(&actor), &name, change)
                .await
                .map_err(op_error)?;
            print_saved(ctx, &saved, "Changed segment");
            Ok(exit::OK)
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
                let v: Vec<_> = shown.iter().map(|(s, src)| json!({ "name": s.name, "source": src, "query": s.query, "saved_from": s.origin.as_str(), "created_at": s.created_at })).collect();
                ctx.out.json(&v);
            } else if shown.is_empty() {
                println!("No segments yet. Add one with `segment-exporter segment add NAME --source sqlite:PATH --query SQL`.");
            } else {
                let rows = shown
                    .iter()
                    .map(|(s, src)| {
                        let query = s.query.clone().unwrap_or_else(|| "-".into());
                        vec![s.name.clone(), src.clone(), query, s.origin.as_str().to_string()]
                    })
                    .collect();
                ctx.out.table(&["name", "source", "query", "saved from"], rows);
            }
            Ok(exit::OK)
        }
        SegmentCmd::Preview { name, limit } => {
            let seg = ctx.store().await?.segment(&name).await?;
            let spec = readable(ctx, &seg)?;
            // A segment saved over the HTTP API reads confined here too: the operator may run this on a file an
            // attacker swapped for a link.
            let (columns, rows) = source::preview(&spec, seg.query.as_deref(), limit, &seg.reach(&ctx.config.sources))
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
            let actor = ctx.actor();
            ops::segments::remove_segment(&store, &ctx.config, &caller(&actor), &name).await.map_err(op_error)?;
            if ctx.out.json {
                ctx.out.json(&json!({ "removed": name }));
            } else {
                println!("Removed segment '{name}'.");
            }
            Ok(exit::OK)
        }
    }
}

fn caller(actor: &crate::access::Actor) -> Caller<'_> {
    Caller { actor, origin: "cli" }
}

fn print_saved(ctx: &Ctx, saved: &SavedSegment, done: &str) {
    let seg = &saved.segment;
    if ctx.out.json {
        ctx.out.json(&json!({ "name": seg.name, "source": saved.shown_source, "query": seg.query }));
    } else if done == "Added segment" {
        println!("{done} '{}' ({}{}).", seg.name, saved.shown_source, saved.password_note);
    } else {
        println!(
            "{done} '{}' ({}{}). Exports that send it send only the difference on their next run.",
            seg.name, saved.shown_source, saved.password_note
        );
    }
}
