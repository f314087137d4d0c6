//! `user add | list | show | remove | role | token | password | sessions | sign-out`: accounts for the HTTP API and
//! the web console. The CLI acts as the local administrator; every change is audited.

use std::io::{IsTerminal, Read};

use clap::Subcommand;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::output::when;
use super::{exit, Ctx, Exit};
use crate::access::accounts;
use crate::access::ops::{self, Caller, OpError};
use crate::store::{Role, User};

#[derive(Debug, Subcommand)]
pub enum UserCmd {
    /// Add an account and print its API token (shown this once: store it now).
    Add {
        name: String,
        /// admin: does everything; contributor: uses the connections open to contributors and its own exports.
        #[arg(long, value_enum)]
        role: Role,
    },
    /// List accounts.
    List,
    /// Show one account.
    Show { name: String },
    /// Remove an account: its token stops working and it is no longer an export user of anything.
    Remove { name: String },
    /// Change an account's role.
    Role {
        name: String,
        #[arg(value_enum)]
        role: Role,
    },
    /// Replace an account's API token; the old one stops working at once. Prints the new one once.
    Token {
        name: String,
        /// Required: says that the old token is to stop working.
        #[arg(long, required = true)]
        rotate: bool,
    },
    /// Set an account's password (for the web console's sign-in); its signed-in sessions end. Prompted twice
    /// without echo on a terminal.
    Password {
        name: String,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List an account's web console sessions that have not ended: when and where each signed in, when it was
    /// last used and when it ends.
    Sessions { name: String },
    /// Sign an account out of the web console: every session, or one (`--session ID`, from `user sessions`). Its
    /// API token keeps working (rotate it with `user token NAME --rotate`).
    SignOut {
        name: String,
        /// Only this session.
        #[arg(long, value_name = "ID")]
        session: Option<i64>,
    },
}

pub async fn run(ctx: &Ctx, cmd: UserCmd) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    match cmd {
        UserCmd::Add { name, role } => {
            let actor = ctx.actor();
            let (user, token) =
                accounts::add_user(&store, &ctx.config, &cli_caller(&actor), &name, role).await.map_err(op_error)?;
            print_token(ctx, &user, &token, "Added");
        }
        UserCmd::List => {
            let users = store.users().await?;
            if ctx.out.json {
                ctx.out.json(&users);
            } else if users.is_empty() {
                println!(
                    "No accounts yet: the HTTP API answers 401 to everyone. Add the first administrator with \
                     `segment-exporter user add NAME --role admin`."
                );
            } else {
                let rows = users.iter().map(row).collect();
                ctx.out.table(&["name", "role", "password", "token since", "created"], rows);
            }
        }
        UserCmd::Show { name } => {
            let user = store.user(&name).await?;
            if ctx.out.json {
                ctx.out.json(&user);
            } else {
                ctx.out.table(&["name", "role", "password", "token since", "created"], vec![row(&user)]);
            }
        }
        UserCmd::Remove { name } => {
            let actor = ctx.actor();
            let user =
                accounts::remove_user(&store, &ctx.config, &cli_caller(&actor), &name).await.map_err(op_error)?;
            if ctx.out.json {
                ctx.out.json(&json!({ "removed": user.name }));
            } else {
                println!("Removed account '{name}'; its token no longer works.");
            }
        }
        UserCmd::Role { name, role } => {
            let actor = ctx.actor();
            let (before, user) =
                accounts::set_role(&store, &ctx.config, &cli_caller(&actor), &name, role).await.map_err(op_error)?;
            if ctx.out.json {
                ctx.out.json(&user);
            } else {
                println!("Account '{name}' is now {role} (was {}).", before.role);
            }
        }
        UserCmd::Token { name, rotate: _ } => {
            let actor = ctx.actor();
            let (user, token) =
                accounts::rotate_token(&store, &ctx.config, &cli_caller(&actor), &name).await.map_err(op_error)?;
            print_token(ctx, &user, &token, "Rotated the token of");
        }
        UserCmd::Password { name, password_stdin } => {
            store.user(&name).await?;
            let password = read_password(&name, password_stdin)?;
            let actor = ctx.actor();
            accounts::set_password(&store, &ctx.config, &cli_caller(&actor), &name, password)
                .await
                .map_err(op_error)?;
            if ctx.out.json {
                ctx.out.json(&json!({ "user": name, "password_set": true }));
            } else {
                println!("Set the password of '{name}'.");
            }
        }
        UserCmd::Sessions { name } => {
            let actor = ctx.actor();
            let listed = accounts::sessions(&store, &ctx.config, &cli_caller(&actor), &name).await.map_err(op_error)?;
            if ctx.out.json {
                ctx.out.json(&listed);
            } else if listed.is_empty() {
                println!("Account '{name}' is not signed in to the web console.");
            } else {
                let rows = listed
                    .iter()
                    .map(|l| {
                        let from = l.origin.strip_prefix("api ").unwrap_or(&l.origin).to_string();
                        vec![l.id.to_string(), when(&l.created_at), when(&l.last_seen_at), when(&l.expires_at), from]
                    })
                    .collect();
                ctx.out.table(&["session", "signed in", "last used", "ends", "from"], rows);
            }
        }
        UserCmd::SignOut { name, session } => {
            let actor = ctx.actor();
            let ended = accounts::end_sessions(&store, &ctx.config, &cli_caller(&actor), &name, session)
                .await
                .map_err(op_error)?;
            if ctx.out.json {
                ctx.out.json(&json!({ "user": name, "ended": ended }));
            } else {
                println!(
                    "Ended {ended} web console session(s) of '{name}'; its browsers must sign in again. Its API \
                     token still works."
                );
            }
        }
    }
    Ok(exit::OK)
}

fn row(u: &User) -> Vec<String> {
    vec![
        u.name.clone(),
        u.role.to_string(),
        if u.has_password { "set".into() } else { "-".into() },
        when(&u.token_created_at),
        when(&u.created_at),
    ]
}

fn print_token(ctx: &Ctx, user: &User, token: &SecretString, what: &str) {
    if ctx.out.json {
        ctx.out.json(&json!({ "user": user, "token": token.expose_secret() }));
    } else {
        println!("{what} account '{}' ({}). Its API token, shown this once (store it now):", user.name, user.role);
        println!("{}", token.expose_secret());
    }
}

fn read_password(name: &str, from_stdin: bool) -> anyhow::Result<SecretString> {
    if from_stdin {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text)?;
        return Ok(SecretString::from(text.lines().next().unwrap_or("").to_string()));
    }
    if !std::io::stdin().is_terminal() {
        return Err(Exit::error(
            exit::FAILED,
            format!(
                "password of '{name}' not set: standard input is not a terminal to prompt on; pipe the password in \
                 with --password-stdin"
            ),
        ));
    }
    let first = rpassword::prompt_password(format!("New password for '{name}' (not shown): "))?;
    let again = rpassword::prompt_password("The same again: ")?;
    if first != again {
        return Err(Exit::error(exit::FAILED, format!("password of '{name}' not set: the two entries differ")));
    }
    Ok(SecretString::from(first))
}

/// The local operator as the caller of an operation.
fn cli_caller(actor: &crate::access::Actor) -> Caller<'_> {
    Caller { actor, origin: "cli" }
}

/// A change refused because the export is running (exit 75), saying how to stop the run first when that helps.
pub(super) fn busy(message: String, cancellable: bool) -> anyhow::Error {
    if cancellable {
        Exit::error(exit::BUSY, format!("{message} To stop it, add --cancel-run."))
    } else {
        Exit::error(exit::BUSY, message)
    }
}

/// Turns a refused or invalid operation into the CLI's error, keeping store errors as they are.
pub(super) fn op_error(e: OpError) -> anyhow::Error {
    match e {
        OpError::Store(e) => e.into(),
        OpError::Secret(e) => e.into(),
        OpError::Source(e) => e.into(),
        OpError::Unreadable { message, secret: true } => Exit::with_kind(super::error::ErrorKind::Secret, message),
        OpError::Unreadable { message, secret: false } => Exit::with_kind(super::error::ErrorKind::Source, message),
        OpError::Busy { message, cancellable } => busy(message, cancellable),
        OpError::Iterable { message, .. } => Exit::with_kind(super::error::ErrorKind::Iterable, message),
        OpError::Failed(m) => Exit::error(exit::FAILED, m),
        // It contradicts what is stored: a conflict, as `--json` tells.
        OpError::Conflict(m) => Exit::with_kind(super::error::ErrorKind::Conflict, m),
        OpError::Denied(crate::access::Denied::NotFound(m)) => Exit::with_kind(super::error::ErrorKind::NotFound, m),
        e => Exit::invalid(e.to_string()),
    }
}

/// `export users NAME [--add USER] [--remove USER]`.
pub async fn export_users(ctx: &Ctx, name: &str, add: &[String], remove: &[String]) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let actor = ctx.actor();
    let caller = Caller { actor: &actor, origin: "cli" };
    let users = ops::change_export_users(&store, &ctx.config, &caller, name, add, remove).await.map_err(op_error)?;
    if ctx.out.json {
        ctx.out.json(&json!({ "export": name, "users": users.iter().map(|u| &u.name).collect::<Vec<_>>() }));
    } else if users.is_empty() {
        println!("Export '{name}' has no export users: only administrators may see and run it.");
    } else {
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        println!("Export users of '{name}': {}.", names.join(", "));
    }
    Ok(exit::OK)
}

/// `connection export-user NAME [--remove]`: the local operator becomes (or stops being) the connection's export
/// user.
pub async fn connection_export_user(ctx: &Ctx, name: &str, remove: bool) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let actor = ctx.actor();
    let caller = Caller { actor: &actor, origin: "cli" };
    if remove {
        ops::leave_connection_export_user(&store, &ctx.config, &caller, name).await.map_err(op_error)?;
        if ctx.out.json {
            ctx.out.json(&json!({ "connection": name, "export_user": null }));
        } else {
            println!(
                "Connection '{name}' has no export user now: its scheduled runs refuse until an administrator adds \
                 themselves."
            );
        }
        return Ok(exit::OK);
    }
    ops::become_connection_export_user(&store, &ctx.config, &caller, name).await.map_err(op_error)?;
    if ctx.out.json {
        ctx.out.json(&json!({ "connection": name, "export_user": actor.name() }));
    } else {
        println!("Connection '{name}' now runs its scheduled exports on behalf of {}.", actor.name());
    }
    Ok(exit::OK)
}
