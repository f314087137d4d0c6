//! `connection add | edit | list | show | test | lists | export-user | remove`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use secrecy::SecretString;
use serde_json::json;

use super::error::ErrorKind;
use super::output::{opt_when, when};
use super::{exit, Ctx, Exit};
use crate::access::ops::{self, Caller, ConnectionRequest};
use crate::iterable::{IterableClient, Pacer, Region, RetrySettings};
use crate::secrets;
use crate::store::{Connection, KeySource, ProjectType};

#[derive(Debug, Subcommand)]
pub enum ConnectionCmd {
    /// Add a connection: checks the key against Iterable (GET /api/lists) before saving it.
    Add(AddArgs),
    /// Change a connection: who may use it, its key (checked with Iterable before it replaces the old one), its
    /// region or base URL (the key is checked there), its project type. Its exports keep what they sent.
    Edit(EditArgs),
    /// List connections.
    List,
    /// Show one connection (the key is never shown: only where it comes from and at most its last 4 characters).
    Show { name: String },
    /// Check that Iterable accepts the connection's key now.
    Test { name: String },
    /// List the lists in the connection's Iterable project.
    Lists {
        name: String,
        /// Also fetch each list's size (Iterable allows 5 size calls a minute, so this is slow on real projects).
        #[arg(long)]
        sizes: bool,
    },
    /// Make the local operator (local:OSUSER) the connection's export user, on whose behalf its scheduled runs go.
    ExportUser {
        name: String,
        /// Stop being its export user instead (its scheduled runs then refuse until an administrator adds
        /// themselves).
        #[arg(long)]
        remove: bool,
    },
    /// Remove a connection.
    Remove {
        name: String,
        /// Keep the exports that use it, disabled and without a connection.
        #[arg(long, conflicts_with = "remove_exports")]
        detach_exports: bool,
        /// Remove the exports that use it, as `export remove` does (their history stays readable).
        #[arg(long)]
        remove_exports: bool,
        /// With --remove-exports: if one of them is running (in any process), stop that run (recorded `cancelled`)
        /// first. Without it, the connection is not removed while one runs (exit 75).
        #[arg(long, requires = "remove_exports")]
        cancel_run: bool,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("key").required(true).args(["api_key_env", "api_key_file", "api_key_stdin"])))]
pub struct AddArgs {
    /// Display name of the connection.
    pub name: String,
    /// Read the API key from this environment variable at each use (only the variable's name is stored).
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
    /// Read the API key from this file at each use (only the path is stored). A systemd credential is written
    /// '$CREDENTIALS_DIRECTORY/NAME' (quoted; '$$CREDENTIALS_DIRECTORY/NAME' through systemd-run), read from
    /// wherever systemd puts it for the service.
    #[arg(long, value_name = "PATH")]
    pub api_key_file: Option<String>,
    /// Read the API key from standard input once (prompted without echo on a terminal) and store it encrypted.
    #[arg(long)]
    pub api_key_stdin: bool,
    /// Iterable data centre: us (api.iterable.com) or eu (api.eu.iterable.com).
    #[arg(long, value_enum, default_value = "us")]
    pub region: Region,
    /// Base URL overriding --region (a proxy, or the sandbox, e.g. http://127.0.0.1:8085).
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// The kind of Iterable project the key belongs to: email (users identified by email), userid (by user id
    /// only) or hybrid (by either). Its exports identify members the same way (see "Project types and identity" in
    /// the README): by email, by user id, or by user id where a row has one and by email where not.
    #[arg(long, value_enum, default_value = "hybrid")]
    pub project_type: ProjectType,
    /// Who may use this connection in exports.
    #[arg(long, value_parser = ["admins", "contributors"], default_value = "admins")]
    pub usable_by: String,
    /// Consent that exported profiles (personal data: emails and mapped fields) leave this system for Iterable.
    #[arg(long)]
    pub accept_data_privacy: bool,
    /// Save without checking the key against Iterable.
    #[arg(long)]
    pub skip_verify: bool,
}

#[derive(Debug, Args)]
pub struct EditArgs {
    pub name: String,
    /// Who may use this connection in exports.
    #[arg(long, value_parser = ["admins", "contributors"])]
    pub usable_by: Option<String>,
    /// Read a new API key from standard input (prompted without echo on a terminal) and store it encrypted, in place
    /// of the old one (wherever that came from).
    #[arg(long)]
    pub api_key_stdin: bool,
    /// Iterable data centre: us or eu.
    #[arg(long, value_enum, conflicts_with = "base_url")]
    pub region: Option<Region>,
    /// Base URL overriding the region (a proxy, or the sandbox).
    #[arg(long, value_name = "URL")]
    pub base_url: Option<String>,
    /// The kind of Iterable project: email, userid or hybrid.
    #[arg(long, value_enum)]
    pub project_type: Option<ProjectType>,
    /// Save without checking the key against Iterable.
    #[arg(long)]
    pub skip_verify: bool,
}

pub async fn run(ctx: &Ctx, cmd: ConnectionCmd) -> anyhow::Result<u8> {
    match cmd {
        ConnectionCmd::Add(args) => add(ctx, args).await,
        ConnectionCmd::Edit(args) => edit(ctx, args).await,
        ConnectionCmd::List => list(ctx).await,
        ConnectionCmd::Show { name } => show(ctx, &name).await,
        ConnectionCmd::Test { name } => test(ctx, &name).await,
        ConnectionCmd::Lists { name, sizes } => lists(ctx, &name, sizes).await,
        ConnectionCmd::ExportUser { name, remove } => super::user::connection_export_user(ctx, &name, remove).await,
        ConnectionCmd::Remove { name, detach_exports, remove_exports, cancel_run } => {
            let store = ctx.store().await?;
            let actor = ctx.actor();
            let caller = Caller { actor: &actor, origin: "cli" };
            let affected =
                ops::remove_connection(&store, &ctx.config, &caller, &name, detach_exports, remove_exports, cancel_run)
                    .await
                    .map_err(super::user::op_error)?;
            if ctx.out.json {
                ctx.out.json(&json!({ "removed": name, "exports": affected, "exports_removed": remove_exports }));
            } else if affected.is_empty() {
                println!("Removed connection '{name}'.");
            } else if remove_exports {
                println!("Removed connection '{name}' and export(s) {}.", affected.join(", "));
            } else {
                println!("Removed connection '{name}'; export(s) {} are detached and disabled.", affected.join(", "));
            }
            Ok(exit::OK)
        }
    }
}

/// A short-lived client for checks: two attempts, so a dead endpoint fails fast.
fn check_client(ctx: &Ctx, base_url: &str, key: &SecretString) -> anyhow::Result<IterableClient> {
    let it = &ctx.config.iterable;
    let retry =
        RetrySettings { max_attempts: 2, min_delay: Duration::from_millis(300), max_delay: Duration::from_secs(2) };
    Ok(IterableClient::new(base_url, key, it.timeout, Arc::new(Pacer::new(it.requests_per_second)), retry)?)
}

async fn add(ctx: &Ctx, a: AddArgs) -> anyhow::Result<u8> {
    if !a.accept_data_privacy {
        // Before a key is read or asked for.
        return Err(Exit::invalid(
            "connection not saved: exports send customer profiles (email addresses and every field you map, which \
             is personal data) out of this system to Iterable's servers. If your organisation allows that, run the \
             command again with --accept-data-privacy; your consent and its time are recorded.",
        ));
    }
    if a.region == Region::Eu && a.project_type == ProjectType::Email {
        eprintln!(
            "warning: Iterable's EU data centre has no email-based projects (only hybrid and userID-based ones); \
             check the project's type in Iterable and give it with --project-type."
        );
    }
    let (source, key) = if let Some(var) = &a.api_key_env {
        (KeySource::Env(var.clone()), secrets::read_key_env(&a.name, var)?)
    } else if let Some(path) = &a.api_key_file {
        let abs = if path.starts_with(secrets::CREDENTIALS_DIR) {
            path.clone()
        } else {
            std::path::absolute(path).unwrap_or_else(|_| path.into()).display().to_string()
        };
        let key = secrets::read_key_file(&a.name, &abs)?;
        (KeySource::File(abs), key)
    } else {
        let key = read_key_stdin()?;
        (KeySource::Stored { ciphertext: vec![], nonce: vec![] }, key)
    };
    let store = ctx.store().await?;
    let actor = ctx.actor();
    let request = ConnectionRequest {
        name: a.name.clone(),
        key_source: source,
        key,
        region: a.region,
        base_url: a.base_url.clone(),
        usable_by: a.usable_by,
        accept_data_privacy: a.accept_data_privacy,
        add_me_as_export_user: true,
        verify: !a.skip_verify,
        project_type: a.project_type,
    };
    let conn = ops::add_connection(&store, &ctx.config, &Caller { actor: &actor, origin: "cli" }, request)
        .await
        .map_err(super::user::op_error)?;
    if ctx.out.json {
        ctx.out.json(&describe(&conn));
    } else {
        let verified = if a.skip_verify {
            "not verified (--skip-verify)"
        } else {
            "Iterable let the key read its lists; whether it may write them shows at the first run"
        };
        println!("Added connection '{}' to {} ({verified}).", conn.name, conn.base_url);
    }
    Ok(exit::OK)
}

/// An API key from standard input.
fn read_key_stdin() -> anyhow::Result<SecretString> {
    super::read_secret_stdin(
        "Iterable API key (not shown): ",
        "no API key on standard input; pipe it in, e.g. `printf %s \"$KEY\" | segment-exporter connection add NAME --api-key-stdin ...`",
    )
}

async fn edit(ctx: &Ctx, a: EditArgs) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    // Refuse a missing connection before asking for a key.
    store.connection(&a.name).await?;
    let key = if a.api_key_stdin { Some(read_key_stdin()?) } else { None };
    let change = ops::ConnectionEdit {
        usable_by: a.usable_by,
        key,
        region: a.region,
        base_url: a.base_url,
        project_type: a.project_type,
        verify: !a.skip_verify,
    };
    let actor = ctx.actor();
    let conn = ops::edit_connection(&store, &ctx.config, &Caller { actor: &actor, origin: "cli" }, &a.name, change)
        .await
        .map_err(super::user::op_error)?;
    if ctx.out.json {
        ctx.out.json(&describe(&conn));
    } else {
        println!("Changed connection '{}' ({}, usable by {}).", conn.name, conn.base_url, conn.usable_by);
    }
    Ok(exit::OK)
}

fn key_hint(conn: &Connection) -> String {
    let live = match &conn.key {
        KeySource::Stored { .. } => conn.key_last4.clone(),
        KeySource::Env(var) => secrets::read_key_env(&conn.name, var).ok().and_then(|k| secrets::last4(&k)),
        KeySource::File(path) => secrets::read_key_file(&conn.name, path).ok().and_then(|k| secrets::last4(&k)),
    };
    match live {
        Some(l4) => format!("{} (ends in …{l4})", conn.key.describe()),
        None => conn.key.describe(),
    }
}

fn describe(c: &Connection) -> serde_json::Value {
    json!({
        "name": c.name,
        "base_url": c.base_url,
        "region": c.region,
        "project_type": c.project_type,
        "usable_by": c.usable_by,
        "api_key": key_hint(c),
        "privacy_accepted_at": c.privacy_accepted_at,
        "privacy_accepted_by": c.privacy_accepted_by,
        "verified_at": c.verified_at,
        "created_at": c.created_at,
    })
}

async fn list(ctx: &Ctx) -> anyhow::Result<u8> {
    let conns = ctx.store().await?.connections().await?;
    if ctx.out.json {
        ctx.out.json(&conns.iter().map(describe).collect::<Vec<_>>());
    } else if conns.is_empty() {
        println!("No connections yet. Add one with `segment-exporter connection add NAME --api-key-env VAR --accept-data-privacy`.");
    } else {
        let rows = conns
            .iter()
            .map(|c| {
                vec![c.name.clone(), c.base_url.clone(), c.usable_by.clone(), key_hint(c), opt_when(&c.verified_at)]
            })
            .collect();
        ctx.out.table(&["name", "base URL", "usable by", "API key", "verified"], rows);
    }
    Ok(exit::OK)
}

async fn show(ctx: &Ctx, name: &str) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let c = store.connection(name).await?;
    let exports = store.exports_using_connection(c.id).await?;
    let export_user = store.connection_export_user(c.id).await?.0;
    let problem = crate::access::connection_export_user_problem(&store, &c).await?;
    if ctx.out.json {
        let mut v = describe(&c);
        v["exports"] = json!(exports);
        v["export_user"] = json!(export_user);
        v["export_user_problem"] = json!(problem);
        ctx.out.json(&v);
    } else {
        let rows = vec![
            vec!["name".into(), c.name.clone()],
            vec!["base URL".into(), c.base_url.clone()],
            vec!["region".into(), c.region.clone().unwrap_or_else(|| "(custom base URL)".into())],
            vec!["project type".into(), c.project_type.as_str().into()],
            vec!["usable by".into(), c.usable_by.clone()],
            vec!["API key".into(), key_hint(&c)],
            vec!["privacy consent".into(), format!("{} by {}", when(&c.privacy_accepted_at), c.privacy_accepted_by)],
            vec!["verified".into(), opt_when(&c.verified_at)],
            vec!["exports".into(), if exports.is_empty() { "-".into() } else { exports.join(", ") }],
            vec!["export user".into(), problem.unwrap_or_else(|| export_user.unwrap_or_else(|| "-".into()))],
        ];
        ctx.out.table(&["", ""], rows);
    }
    Ok(exit::OK)
}

async fn client_of(ctx: &Ctx, name: &str) -> anyhow::Result<(crate::store::Store, Connection, IterableClient)> {
    let store = ctx.store().await?;
    let conn = store.connection(name).await?;
    let key = secrets::resolve_api_key(&conn, &ctx.config.store.master_key_path())?;
    let client = check_client(ctx, &conn.base_url, &key)?;
    Ok((store, conn, client))
}

async fn test(ctx: &Ctx, name: &str) -> anyhow::Result<u8> {
    let (store, conn, client) = client_of(ctx, name).await?;
    let started = Instant::now();
    match client.lists().await {
        Ok(lists) => {
            store.mark_connection_verified(conn.id).await?;
            let ms = started.elapsed().as_millis() as u64;
            if ctx.out.json {
                ctx.out.json(&json!({ "connection": name, "ok": true, "lists": lists.len(), "latency_ms": ms }));
            } else {
                println!(
                    "Connection '{name}' reads lists: Iterable accepted the key and lists {} list(s) ({ms} ms). \
                     Whether it may write them (a read-only key may not) shows at the next run.",
                    lists.len()
                );
            }
            Ok(exit::OK)
        }
        Err(e) => {
            // With --json, `main` prints this as the one error document.
            Err(Exit::with_kind(ErrorKind::Iterable, format!("connection '{name}' does not work: {e}")))
        }
    }
}

/// Iterable's `createdAt` (milliseconds since the epoch) as a time, which JSON output shows in RFC 3339.
fn epoch_millis(ms: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(ms)
}

async fn lists(ctx: &Ctx, name: &str, sizes: bool) -> anyhow::Result<u8> {
    let (_, _, client) = client_of(ctx, name).await?;
    let lists = client.lists().await?;
    let mut rows = Vec::new();
    for l in &lists {
        let size = if sizes { Some(client.list_size(l.id).await?) } else { None };
        rows.push((l, size));
    }
    if ctx.out.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(l, size)| json!({ "id": l.id, "name": l.name, "list_type": l.list_type, "created_at": l.created_at.and_then(epoch_millis), "size": size }))
            .collect();
        ctx.out.json(&v);
    } else {
        let mut header = vec!["id", "name", "type"];
        if sizes {
            header.push("members");
        }
        let table = rows
            .iter()
            .map(|(l, size)| {
                let mut r = vec![l.id.to_string(), l.name.clone(), l.list_type.clone().unwrap_or_default()];
                if let Some(s) = size {
                    r.push(s.to_string());
                }
                r
            })
            .collect();
        ctx.out.table(&header, table);
    }
    Ok(exit::OK)
}
