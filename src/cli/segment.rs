//! `segment add | edit | list | preview | remove`.

use clap::Subcommand;
use serde_json::json;

use super::error::ErrorKind;
use super::{exit, Ctx, Exit};
use crate::source::{self, SourceSpec};

#[derive(Debug, Subcommand)]
pub enum SegmentCmd {
    /// Add a segment: a named query whose rows are the members and whose columns are the fields.
    Add {
        /// Segment name; the Iterable list gets exactly this name.
        name: String,
        /// sqlite:PATH, a postgres://… URL, csv:PATH (with a header row) or jsonl:PATH.
        #[arg(long, value_name = "SOURCE")]
        source: String,
        /// The SQL query selecting the members (sqlite and postgres only).
        #[arg(long, value_name = "SQL")]
        query: Option<String>,
        /// Save without reading a first row to check the source.
        #[arg(long)]
        skip_check: bool,
    },
    /// Change a segment's source or query, with the same checks as `add`. Exports that send it keep what they put
    /// on its list, so their next run sends only the difference (a narrower query removes the leavers).
    Edit {
        name: String,
        /// sqlite:PATH, a postgres://… URL, csv:PATH (with a header row) or jsonl:PATH.
        #[arg(long, value_name = "SOURCE")]
        source: Option<String>,
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

pub async fn run(ctx: &Ctx, cmd: SegmentCmd) -> anyhow::Result<u8> {
    match cmd {
        SegmentCmd::Add { name, source, query, skip_check } => {
            // The name becomes the Iterable list's name; check it before reading the source.
            crate::store::names::check_segment_name(&name).map_err(|problem| {
                crate::store::StoreError::InvalidName { what: "segment", name: name.clone(), problem }
            })?;
            let spec = source.parse::<SourceSpec>()?.absolute();
            let query = query.filter(|q| !q.trim().is_empty());
            check_source(&spec, &query)?;
            if !skip_check {
                source::preview(&spec, query.as_deref(), 1).await.map_err(|e| {
                    Exit::with_kind(
                        ErrorKind::Source,
                        format!("segment '{name}' not saved: {e} (add --skip-check to save it anyway)"),
                    )
                })?;
            }
            let store = ctx.store().await?;
            let seg = store.add_segment(&name, &spec.to_stored(), query.as_deref()).await?;
            if ctx.out.json {
                ctx.out.json(&json!({ "name": seg.name, "source": spec.to_string(), "query": seg.query }));
            } else {
                println!("Added segment '{}' ({}).", seg.name, spec);
            }
            Ok(exit::OK)
        }
        SegmentCmd::Edit { name, source, query, skip_check } => edit(ctx, &name, source, query, skip_check).await,
        SegmentCmd::List => {
            let segments = ctx.store().await?.segments().await?;
            let shown: Vec<_> = segments
                .iter()
                .map(|s| {
                    let source = s
                        .source
                        .parse::<SourceSpec>()
                        .map(|sp| sp.to_string())
                        .unwrap_or_else(|_| "(unreadable)".into());
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
            let spec: SourceSpec = seg.source.parse()?;
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
            ctx.store().await?.remove_segment(&name).await?;
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
    query: Option<String>,
    skip_check: bool,
) -> anyhow::Result<u8> {
    let fail = |m: String| Exit::invalid(format!("segment '{name}' not changed: {m}"));
    if source.is_none() && query.is_none() {
        return Err(fail("nothing to change; give --source and/or --query".into()));
    }
    let store = ctx.store().await?;
    let seg = store.segment(name).await?;
    let spec = match &source {
        Some(s) => s.parse::<SourceSpec>()?.absolute(),
        None => seg.source.parse::<SourceSpec>()?,
    };
    // A new file source drops the old query; a new SQL source keeps it unless another is given.
    let query = match query {
        Some(q) => Some(q).filter(|q| !q.trim().is_empty()),
        None if spec.takes_query() => seg.query.clone(),
        None => None,
    };
    check_source(&spec, &query)?;
    if !skip_check {
        let (columns, _) = source::preview(&spec, query.as_deref(), 1)
            .await
            .map_err(|e| fail(format!("{e} (add --skip-check to save it anyway)")))?;
        // Every export that sends the segment must still find its columns.
        for export_name in store.exports_using_segment(seg.id).await? {
            let export = store.export(&export_name).await?;
            let wanted = std::iter::once(&export.email_field).chain(export.fields.iter().map(|f| &f.column));
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
    let seg = store.edit_segment(name, &spec.to_stored(), query.as_deref()).await?;
    if ctx.out.json {
        ctx.out.json(&json!({ "name": seg.name, "source": spec.to_string(), "query": seg.query }));
    } else {
        println!(
            "Changed segment '{}' ({}). Exports that send it send only the difference on their next run.",
            seg.name, spec
        );
    }
    Ok(exit::OK)
}
