//! `segment-exporter store`: the store itself. `migrate` brings a PostgreSQL store's schema up to this version
//! (never done implicitly, so replicas of the previous release go on meanwhile); `copy` moves a SQLite store into
//! an empty PostgreSQL database.

use clap::{Args, Subcommand};
use serde_json::json;

use super::{exit, Ctx, Exit};
use crate::store::{Kind, Store};

#[derive(Debug, Subcommand)]
pub enum StoreCmd {
    /// Bring a PostgreSQL store's schema up to this version. The migrations keep the previous release working on
    /// the new schema, so replicas of it go on while this runs; upgrade them afterwards. A SQLite store is brought
    /// up to date whenever it is opened.
    Migrate,
    /// Copy the configured SQLite store into an empty PostgreSQL database: connections and sealed keys (the same
    /// master key reads them), segments, exports and what they put on their lists, run history, accounts, tokens,
    /// sessions and the audit, ids kept. The source is only read; stop the daemon first.
    Copy(CopyArgs),
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The PostgreSQL database to copy into, e.g. postgres://segment_exporter@db.internal/exports. It must be
    /// empty. Give its password with --to-password-env or --to-password-file, not in the URL.
    #[arg(long, value_name = "URL")]
    to: String,
    /// Environment variable holding the target's password.
    #[arg(long, value_name = "VAR", conflicts_with = "to_password_file")]
    to_password_env: Option<String>,
    /// File holding the target's password (its first line).
    #[arg(long, value_name = "PATH")]
    to_password_file: Option<std::path::PathBuf>,
}

pub async fn run(ctx: &Ctx, cmd: StoreCmd) -> anyhow::Result<u8> {
    match cmd {
        StoreCmd::Migrate => migrate(ctx).await,
        StoreCmd::Copy(args) => copy(ctx, args).await,
    }
}

async fn migrate(ctx: &Ctx) -> anyhow::Result<u8> {
    let Some(url) = ctx.config.store.postgres_url() else {
        let store = ctx.store().await?;
        store.close().await;
        if ctx.out.json {
            ctx.out.json(&json!({ "store": ctx.config.store.describe(), "applied": [] }));
        } else {
            println!(
                "{} is up to date (a SQLite store is brought up to date whenever it is opened).",
                ctx.config.store.describe()
            );
        }
        return Ok(exit::OK);
    };
    let applied = crate::store::migrate_postgres(&ctx.config.store, &url).await?;
    if ctx.out.json {
        ctx.out.json(&json!({ "store": ctx.config.store.describe(), "applied": applied }));
    } else if applied.is_empty() {
        println!(
            "{} is up to date (schema version {}).",
            ctx.config.store.describe(),
            crate::store::known_schema_version()
        );
    } else {
        println!(
            "Migrated {} to schema version {} (applied {}). Replicas of this version may start now; those of the \
             previous one go on, and stop taking new runs once they see the newer schema.",
            ctx.config.store.describe(),
            crate::store::known_schema_version(),
            applied.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(exit::OK)
}

async fn copy(ctx: &Ctx, args: CopyArgs) -> anyhow::Result<u8> {
    if ctx.config.store.postgres_url().is_some() {
        return Err(Exit::invalid(
            "the configured store is PostgreSQL already: `store copy` copies a SQLite store (store.path) into \
             PostgreSQL. Run it with the configuration that names the SQLite store",
        ));
    }
    let lock_dir = ctx.config.store.lock_dir();
    // The store to itself: no daemon on it, and none starting, while it is copied.
    let Some(_whole) = crate::sync::DaemonLock::exclusive(&lock_dir)? else {
        return Err(Exit::error(
            exit::BUSY,
            format!(
                "a daemon uses the store {} now: stop it (a copy must see the store at rest), then copy again",
                ctx.config.store.path.display()
            ),
        ));
    };
    let source = ctx.store().await?;
    let mut runs = Vec::new();
    for export in source.exports().await? {
        match crate::sync::RunLock::try_acquire(&lock_dir, export.id) {
            Ok(lock) => runs.push(lock),
            Err(_) => {
                return Err(Exit::error(
                    exit::BUSY,
                    format!("export '{}' is running in another process: let it finish, then copy again", export.name),
                ))
            }
        }
    }
    // The copy reads the same secrets with the same key: make sure one exists to hand to every replica.
    let key_path = ctx.config.store.master_key_path();
    crate::secrets::MasterKey::load(&key_path, true)?;
    let mut target_config = (*ctx.config).clone();
    target_config.store.url = Some(args.to.clone());
    target_config.store.password_env = args.to_password_env;
    target_config.store.password_file = args.to_password_file;
    if target_config.store.postgres_url().as_deref() != Some(args.to.as_str()) {
        return Err(Exit::invalid(format!(
            "{} is set in this environment and would name the target instead of --to: unset it for the copy",
            crate::config::STORE_URL_ENV
        )));
    }
    let target = Store::open_configured(&target_config).await?;
    if target.kind() != Kind::Postgres {
        return Err(Exit::invalid("--to must name a PostgreSQL database (postgres://...)"));
    }
    let report = source.copy_into(&target).await?;
    drop(runs);
    // Recorded in the new store (the source stays as it was).
    ctx.audit(&target, "store.copy", &ctx.config.store.describe(), None).await?;
    let rows: i64 = report.tables.values().sum();
    if ctx.out.json {
        ctx.out.json(&json!({
            "from": ctx.config.store.describe(),
            "to": target_config.store.describe(),
            "tables": report.tables,
            "exports_checked": report.exports_checked,
        }));
    } else {
        println!(
            "Copied {rows} rows from {} to {}; every table's row count and {} export(s)' members checked. The source \
             is unchanged.\nNext: give every daemon the same master key ({} or {}) and store.url, then start them.",
            ctx.config.store.describe(),
            target_config.store.describe(),
            report.exports_checked,
            key_path.display(),
            crate::secrets::MASTER_KEY_ENV
        );
    }
    Ok(exit::OK)
}
