//! `notify add | list | show | remove | test | log`: notification channels and their deliveries.

use clap::{Args, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::output::{opt_when, when};
use super::{exit, Ctx, Exit};
use crate::access::ops::channels::{self, ChannelRequest, ChannelTarget, SigningSecret};
use crate::access::ops::Caller;
use crate::notify::Answer;
use crate::store::{Channel, ChannelAudience};

#[derive(Debug, Subcommand)]
pub enum NotifyCmd {
    /// Add a channel: a signed webhook, a Slack incoming webhook, or email through [smtp]. Exports are then
    /// subscribed to it with `export edit NAME --notify CHANNEL[:EVENTS]`.
    Add(AddArgs),
    /// List channels (never their URLs or secrets).
    List,
    /// Show one channel and the exports that tell it.
    Show { name: String },
    /// Remove a channel, its subscriptions and the notifications it had still to deliver.
    Remove { name: String },
    /// Send a test message to a channel now, and say what the receiver answered.
    Test { name: String },
    /// Show deliveries, newest first: event, channel, attempts, the receiver's last answer.
    Log {
        /// Only this channel's.
        #[arg(long, value_name = "NAME")]
        channel: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["webhook", "slack", "email"])))]
pub struct AddArgs {
    /// The channel's name, as exports name it in `--notify`.
    pub name: String,
    /// POST each event as a JSON document to this URL (https; plain http to this host only), signed in the
    /// Segment-Exporter-Signature header. The URL is stored sealed with the master key and never shown again.
    /// `-` reads it from standard input instead, keeping it out of the process list and the shell's history.
    #[arg(long, value_name = "URL")]
    pub webhook: Option<String>,
    /// Post a readable message to this Slack incoming webhook URL (stored sealed, never shown again); `-` reads it
    /// from standard input.
    #[arg(long, value_name = "URL")]
    pub slack: Option<String>,
    /// Email these addresses (comma-separated) through [smtp] in the config: a plain-text and an HTML part.
    #[arg(long, value_name = "ADDRESS[,ADDRESS...]")]
    pub email: Option<String>,
    /// Webhooks: read the signing secret from this environment variable at each delivery (of the process that
    /// delivers: the daemon, or `export run`).
    #[arg(long, value_name = "VAR", requires = "webhook", conflicts_with = "secret_file")]
    pub secret_env: Option<String>,
    /// Webhooks: read the signing secret from this file (its first line) at each delivery.
    #[arg(long, value_name = "PATH", requires = "webhook")]
    pub secret_file: Option<String>,
    /// Who may subscribe exports to it. On a channel open to contributors, errors are worded as a contributor
    /// sees them (no source, no query).
    #[arg(long, value_enum, default_value = "admins")]
    pub usable_by: ChannelAudience,
}

/// A webhook or Slack URL as given, or from standard input for `-`.
fn url_or_stdin(url: String, flag: &str) -> anyhow::Result<SecretString> {
    if url != "-" {
        return Ok(SecretString::from(url));
    }
    super::read_secret_stdin(
        "URL (not shown): ",
        &format!("no URL on standard input for {flag} -; pipe it in, e.g. `printf %s \"$URL\" | segment-exporter notify add NAME {flag} -`"),
    )
}

/// Webhook and Slack URLs are credentials: never in a Debug print.
impl std::fmt::Debug for AddArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddArgs")
            .field("name", &self.name)
            .field("webhook", &self.webhook.as_ref().map(|_| "[redacted]"))
            .field("slack", &self.slack.as_ref().map(|_| "[redacted]"))
            .field("email", &self.email)
            .field("secret_env", &self.secret_env)
            .field("secret_file", &self.secret_file)
            .field("usable_by", &self.usable_by)
            .finish()
    }
}

pub async fn run(ctx: &Ctx, cmd: NotifyCmd) -> anyhow::Result<u8> {
    let store = ctx.store().await?;
    let actor = ctx.actor();
    let caller = Caller { actor: &actor, origin: "cli" };
    match cmd {
        NotifyCmd::Add(a) => {
            let target = match (a.webhook, a.slack, a.email) {
                (Some(url), _, _) => ChannelTarget::Webhook(url_or_stdin(url, "--webhook")?),
                (_, Some(url), _) => ChannelTarget::Slack(url_or_stdin(url, "--slack")?),
                (_, _, Some(addresses)) => ChannelTarget::Email(vec![addresses]),
                _ => unreachable!("clap requires one of --webhook, --slack, --email"),
            };
            let secret = match (a.secret_env, a.secret_file) {
                (Some(var), _) => SigningSecret::Env(var),
                (_, Some(path)) => SigningSecret::File(path),
                _ => SigningSecret::Generate,
            };
            let request = ChannelRequest { name: a.name.clone(), target, secret, usable_by: a.usable_by };
            let (channel, made) =
                channels::add_channel(&store, &ctx.config, &caller, request).await.map_err(super::user::op_error)?;
            if ctx.out.json {
                let mut v = channel_json(&channel, &[]);
                if let Some(secret) = &made {
                    v["signing_secret"] = json!(secret.expose_secret());
                }
                ctx.out.json(&v);
            } else {
                println!("Added channel '{}' ({}).", channel.name, channel.kind.as_str());
                if let Some(secret) = &made {
                    println!(
                        "Signing secret (shown once; give it to the receiver to check the Segment-Exporter-Signature \
                         header): {}",
                        secret.expose_secret()
                    );
                }
                println!(
                    "Try it with `segment-exporter notify test {}`; subscribe an export with `segment-exporter export \
                     edit EXPORT --notify {}`.",
                    channel.name, channel.name
                );
            }
            Ok(exit::OK)
        }
        NotifyCmd::List => {
            crate::access::manage_channels(&actor)
                .check("notification channels")
                .map_err(|e| Exit::invalid(e.to_string()))?;
            let mut values = Vec::new();
            let mut rows = Vec::new();
            for c in store.channels().await? {
                let exports = store.channel_exports(c.id).await?;
                rows.push(vec![
                    c.name.clone(),
                    c.kind.as_str().into(),
                    destination(&c),
                    c.usable_by.as_str().into(),
                    if exports.is_empty() { "-".into() } else { exports.join(", ") },
                ]);
                values.push(channel_json(&c, &exports));
            }
            if ctx.out.json {
                ctx.out.json(&values);
            } else if rows.is_empty() {
                println!("No channels yet. Add one with `segment-exporter notify add NAME --webhook URL` (or --slack URL, --email ADDRESS).");
            } else {
                ctx.out.table(&["name", "kind", "sends to", "usable by", "exports"], rows);
            }
            Ok(exit::OK)
        }
        NotifyCmd::Show { name } => {
            crate::access::manage_channels(&actor)
                .check("notification channels")
                .map_err(|e| Exit::invalid(e.to_string()))?;
            let c = store.channel(&name).await?;
            let exports = store.channel_exports(c.id).await?;
            if ctx.out.json {
                ctx.out.json(&channel_json(&c, &exports));
            } else {
                let rows = vec![
                    vec!["name".into(), c.name.clone()],
                    vec!["kind".into(), c.kind.as_str().into()],
                    vec!["sends to".into(), destination(&c)],
                    vec!["signing secret".into(), secret_source(&c)],
                    vec!["usable by".into(), c.usable_by.as_str().into()],
                    vec!["exports".into(), if exports.is_empty() { "-".into() } else { exports.join(", ") }],
                    vec!["added".into(), format!("{} by {}", when(&c.created_at), c.created_by)],
                ];
                ctx.out.table(&["", ""], rows);
            }
            Ok(exit::OK)
        }
        NotifyCmd::Remove { name } => {
            channels::remove_channel(&store, &ctx.config, &caller, &name).await.map_err(super::user::op_error)?;
            if ctx.out.json {
                ctx.out.json(&json!({ "removed": name }));
            } else {
                println!("Removed channel '{name}', its subscriptions and what it had still to deliver.");
            }
            Ok(exit::OK)
        }
        NotifyCmd::Test { name } => {
            let answer =
                channels::test_channel(&store, &ctx.config, &caller, &name).await.map_err(super::user::op_error)?;
            let delivered = matches!(answer, Answer::Delivered(_));
            if ctx.out.json {
                ctx.out.json(&json!({ "channel": name, "delivered": delivered, "answer": answer.text() }));
            } else if delivered {
                println!("Sent a test message to channel '{name}': the receiver answered {}.", answer.text());
            } else {
                println!("The test message to channel '{name}' was not delivered: {}.", answer.text());
            }
            Ok(if delivered { exit::OK } else { exit::FAILED })
        }
        NotifyCmd::Log { channel, limit } => {
            crate::access::manage_channels(&actor)
                .check("notification channels")
                .map_err(|e| Exit::invalid(e.to_string()))?;
            if let Some(c) = &channel {
                store.channel(c).await?;
            }
            let log = store.delivery_log(channel.as_deref(), limit).await?;
            if ctx.out.json {
                ctx.out.json(&log);
            } else if log.is_empty() {
                println!("No notifications yet.");
            } else {
                let rows = log
                    .iter()
                    .map(|d| {
                        vec![
                            when(&d.created_at),
                            d.event.as_str().into(),
                            d.export.clone().unwrap_or_else(|| "-".into()),
                            d.run_id.map_or("-".into(), |r| format!("#{r}")),
                            d.channel.clone(),
                            match d.state.as_str() {
                                "pending" => format!("pending (next {})", opt_when(&d.next_attempt_at)),
                                other => other.replace('_', " "),
                            },
                            d.attempts.to_string(),
                            d.last_answer.clone().unwrap_or_else(|| "-".into()),
                            d.event_id.clone(),
                        ]
                    })
                    .collect();
                ctx.out.table(
                    &["time", "event", "export", "run", "channel", "state", "attempts", "last answer", "event id"],
                    rows,
                );
            }
            Ok(exit::OK)
        }
    }
}

/// Where a channel sends, without its URL (a credential).
fn destination(c: &Channel) -> String {
    match c.kind {
        crate::store::ChannelKind::Email => c.addresses.join(", "),
        _ => "(URL stored sealed, not shown)".into(),
    }
}

fn secret_source(c: &Channel) -> String {
    match &c.secret {
        None => "-".into(),
        Some(crate::store::KeySource::Stored { .. }) => "stored sealed (shown once, when added)".into(),
        Some(other) => other.describe(),
    }
}

fn channel_json(c: &Channel, exports: &[String]) -> serde_json::Value {
    json!({
        "name": c.name,
        "kind": c.kind,
        "addresses": (!c.addresses.is_empty()).then_some(&c.addresses),
        "signing_secret_from": c.secret.as_ref().map(|s| s.kind()),
        "usable_by": c.usable_by,
        "exports": exports,
        "created_at": c.created_at,
        "created_by": c.created_by,
    })
}
