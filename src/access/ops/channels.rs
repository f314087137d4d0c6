//! Notification channels (administrators add, list, test and remove them) and exports' subscriptions to them (the
//! people who may edit an export subscribe it to the channels open to them), for the CLI and the API alike.

use secrecy::{ExposeSecret, SecretString};

use super::{Caller, OpError};
use crate::access::{audit, change_export, manage_channels, use_channel, Actor, ExportFacts};
use crate::config::Config;
use crate::secrets::{ChannelSecret, MasterKey};
use crate::store::{Channel, ChannelAudience, ChannelKind, EventKind, KeySource, NewChannel, SealedUrl, Store};

/// Where a new channel sends.
pub enum ChannelTarget {
    Webhook(SecretString),
    Slack(SecretString),
    Email(Vec<String>),
}

/// Where a webhook's signing secret comes from.
pub enum SigningSecret {
    /// Read from this environment variable at each delivery.
    Env(String),
    /// Read from this file at each delivery.
    File(String),
    /// Made now, stored sealed, and shown once.
    Generate,
}

/// A new channel, as `notify add` or POST /channels gives it.
pub struct ChannelRequest {
    pub name: String,
    pub target: ChannelTarget,
    pub secret: SigningSecret,
    pub usable_by: ChannelAudience,
}

/// A URL a channel may send to: HTTPS, or plain HTTP to this host only (a receiver beside the daemon).
fn check_url(what: &str, url: &SecretString) -> Result<(), String> {
    let parsed = url::Url::parse(url.expose_secret().trim())
        .map_err(|_| format!("the {what} URL is not a URL; give the whole address, starting with https://"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match parsed.scheme() {
        "https" if parsed.host().is_some() => Ok(()),
        "http" if loopback => Ok(()),
        "http" => Err(format!(
            "the {what} URL is plain http to another host: a notification and its signature would cross the network \
             in clear. Use https (plain http is accepted to this host only)"
        )),
        _ => Err(format!("the {what} URL must start with https://")),
    }
}

/// Adds a channel. Returns it, and the signing secret when one was made (shown once: the receiver needs it).
pub async fn add_channel(
    store: &Store,
    config: &Config,
    caller: &Caller<'_>,
    r: ChannelRequest,
) -> Result<(Channel, Option<SecretString>), OpError> {
    manage_channels(caller.actor).check("notification channels")?;
    crate::store::names::check_segment_name(&r.name).map_err(|problem| crate::store::StoreError::InvalidName {
        what: "channel",
        name: r.name.clone(),
        problem,
    })?;
    let fail = |m: String| OpError::Invalid(format!("channel '{}' not added: {m}", r.name));
    if store.channel(&r.name).await.is_ok() {
        return Err(OpError::Conflict(format!(
            "channel '{}' already exists. Pick another name, or remove it first (`segment-exporter notify remove {}`)",
            r.name, r.name
        )));
    }
    let (kind, url, addresses) = match &r.target {
        ChannelTarget::Webhook(url) => {
            check_url("webhook", url).map_err(fail)?;
            (ChannelKind::Webhook, Some(url), vec![])
        }
        ChannelTarget::Slack(url) => {
            check_url("Slack", url).map_err(fail)?;
            (ChannelKind::Slack, Some(url), vec![])
        }
        ChannelTarget::Email(addresses) => {
            let addresses: Vec<String> = addresses
                .iter()
                .flat_map(|a| a.split(','))
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect();
            if addresses.is_empty() {
                return Err(fail("--email names no address; give one or more, separated by commas".into()));
            }
            if let Some(bad) = addresses.iter().find(|a| !email_address::EmailAddress::is_valid(a)) {
                return Err(fail(format!("'{bad}' is not an email address")));
            }
            (ChannelKind::Email, None, addresses)
        }
    };
    let needs_master = url.is_some() || (kind == ChannelKind::Webhook && matches!(r.secret, SigningSecret::Generate));
    let master = if needs_master {
        let (connections, segments, channels) =
            (store.connections().await?, store.segments().await?, store.channels().await?);
        let sealed = crate::secrets::sealed_secrets(&connections, &segments, &channels);
        Some(MasterKey::for_sealing(&config.store.master_key_path(), &sealed)?)
    } else {
        None
    };
    let sealed_url = url.map(|url| {
        let trimmed = SecretString::from(url.expose_secret().trim().to_string());
        let (ciphertext, nonce) = master.as_ref().expect("a master key for the URL").seal_channel_secret(
            &r.name,
            ChannelSecret::Url,
            &trimmed,
        );
        SealedUrl { ciphertext, nonce }
    });
    let (secret, shown) = match (kind, r.secret) {
        (ChannelKind::Webhook, SigningSecret::Env(var)) => (Some(KeySource::Env(var)), None),
        (ChannelKind::Webhook, SigningSecret::File(path)) => (Some(KeySource::File(path)), None),
        (ChannelKind::Webhook, SigningSecret::Generate) => {
            let made = SecretString::from(format!("whsec_{}", hex::encode(rand::random::<[u8; 32]>())));
            let (ciphertext, nonce) = master.as_ref().expect("a master key for the secret").seal_channel_secret(
                &r.name,
                ChannelSecret::SigningSecret,
                &made,
            );
            (Some(KeySource::Stored { ciphertext, nonce }), Some(made))
        }
        (_, SigningSecret::Generate) => (None, None),
        (_, _) => {
            return Err(fail("only webhooks are signed: --secret-env and --secret-file go with --webhook".into()))
        }
    };
    let channel = store
        .add_channel(&NewChannel {
            name: r.name.clone(),
            kind,
            url: sealed_url,
            addresses,
            secret,
            usable_by: r.usable_by,
            created_by: caller.actor.name().to_string(),
        })
        .await?;
    let detail = format!("{}, usable by {}", kind.as_str(), r.usable_by.as_str());
    audit(store, config, caller.actor, caller.origin, "channel.add", Some(&r.name), Some(detail)).await?;
    Ok((channel, shown))
}

/// Removes a channel, its subscriptions and what it had still to deliver.
pub async fn remove_channel(store: &Store, config: &Config, caller: &Caller<'_>, name: &str) -> Result<(), OpError> {
    manage_channels(caller.actor).check("notification channels")?;
    store.remove_channel(name).await?;
    audit(store, config, caller.actor, caller.origin, "channel.remove", Some(name), None).await?;
    Ok(())
}

/// Sends a test message to a channel now; what the receiver answered.
pub async fn test_channel(
    store: &Store,
    config: &std::sync::Arc<Config>,
    caller: &Caller<'_>,
    name: &str,
) -> Result<crate::notify::Answer, OpError> {
    manage_channels(caller.actor).check("notification channels")?;
    let channel = store.channel(name).await?;
    let now = crate::store::now();
    let document = crate::notify::EventDocument {
        id: format!("evt_test_{:016x}", rand::random::<u64>()),
        kind: crate::notify::DocumentKind::Test,
        time: now,
        reminder: false,
        summary: format!("A test message from segment-exporter to channel \"{name}\""),
        export: None,
        connection: None,
        run: None,
        error: None,
        counts: None,
        lists: vec![],
    };
    let payload = serde_json::to_string(&document).expect("an event document serialises");
    let answer = crate::notify::Deliverer::new(config.clone()).deliver(&channel, &payload).await;
    audit(store, config, caller.actor, caller.origin, "channel.test", Some(name), Some(answer.text().to_string()))
        .await?;
    Ok(answer)
}

/// `CHANNEL[:EVENTS]`: the channel's name and the events (comma-separated; the default set when none are given).
pub fn parse_subscription(text: &str) -> Result<(String, Vec<EventKind>), String> {
    let (name, events) = match text.rsplit_once(':') {
        Some((name, events)) => (name.trim(), Some(events)),
        None => (text.trim(), None),
    };
    if name.is_empty() {
        return Err(format!("--notify '{text}' names no channel; write CHANNEL or CHANNEL:EVENT,EVENT"));
    }
    let events = match events {
        None => EventKind::DEFAULT.to_vec(),
        Some(list) => {
            let mut out = Vec::new();
            for e in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                let kind = EventKind::parse(e).ok_or_else(|| {
                    let known: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                    format!("--notify '{text}': '{e}' is not an event; the events are {}", known.join(", "))
                })?;
                if !out.contains(&kind) {
                    out.push(kind);
                }
            }
            if out.is_empty() {
                return Err(format!("--notify '{text}' names no event; leave ':' out for the default set"));
            }
            out
        }
    };
    Ok((name.to_string(), events))
}

/// Checked subscriptions, ready to write: (channel id, events) to subscribe, channel ids to end.
pub(crate) type SubscriptionChange = (Vec<(i64, Vec<EventKind>)>, Vec<i64>);

/// Checks `notify` (CHANNEL[:EVENTS]) and `no_notify` (CHANNEL) for an export the caller may change: each channel
/// must exist and be open to the caller. Nothing is written.
pub(crate) async fn check_subscriptions(
    store: &Store,
    actor: &Actor,
    notify: &[String],
    no_notify: &[String],
    fail: &(dyn Fn(String) -> OpError + Sync),
) -> Result<SubscriptionChange, OpError> {
    let mut subscribe: Vec<(i64, Vec<EventKind>)> = Vec::new();
    for text in notify {
        let (name, events) = parse_subscription(text).map_err(fail)?;
        let channel = store.channel(&name).await?;
        use_channel(actor, &channel).check(&format!("channel '{name}'"))?;
        if subscribe.iter().any(|(id, _)| *id == channel.id) || no_notify.contains(&name) {
            return Err(fail(format!("channel '{name}' is given twice")));
        }
        subscribe.push((channel.id, events));
    }
    let mut unsubscribe = Vec::new();
    for name in no_notify {
        let channel = store.channel(name).await?;
        use_channel(actor, &channel).check(&format!("channel '{name}'"))?;
        unsubscribe.push(channel.id);
    }
    Ok((subscribe, unsubscribe))
}

/// Changes an export's subscriptions alone (the export's page, the API).
pub async fn subscribe_export(
    store: &Store,
    config: &Config,
    caller: &Caller<'_>,
    export_name: &str,
    notify: &[String],
    no_notify: &[String],
) -> Result<Vec<crate::store::Subscription>, OpError> {
    let export = store.export(export_name).await?;
    let facts = ExportFacts::load(store, &export).await?;
    change_export(caller.actor, &facts).check(&format!("export '{export_name}'"))?;
    let fail = |m: String| OpError::Invalid(format!("export '{export_name}' not changed: {m}"));
    let (subscribe, unsubscribe) = check_subscriptions(store, caller.actor, notify, no_notify, &fail).await?;
    store.set_subscriptions(export.id, &subscribe, &unsubscribe).await?;
    let detail = subscription_detail(notify, no_notify);
    audit(store, config, caller.actor, caller.origin, "export.notify", Some(export_name), Some(detail)).await?;
    Ok(store.subscriptions(export.id).await?)
}

/// The audit's words for a change of subscriptions.
pub(crate) fn subscription_detail(notify: &[String], no_notify: &[String]) -> String {
    let mut parts: Vec<String> = notify.iter().map(|n| format!("notify {n}")).collect();
    parts.extend(no_notify.iter().map(|n| format!("no longer notify {n}")));
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_names_a_channel_and_its_events_or_takes_the_default_set() {
        assert_eq!(parse_subscription("ops").unwrap(), ("ops".into(), EventKind::DEFAULT.to_vec()));
        assert_eq!(
            parse_subscription("ops:failed, drift").unwrap(),
            ("ops".into(), vec![EventKind::Failed, EventKind::Drift])
        );
        let e = parse_subscription("ops:failed,exploded").unwrap_err();
        assert!(e.contains("'exploded' is not an event") && e.contains("recovered"), "{e}");
        assert!(parse_subscription(":failed").is_err());
        assert!(parse_subscription("ops:").is_err());
    }

    #[test]
    fn urls_are_https_or_plain_http_to_this_host_only() {
        let ok = |u: &str| check_url("webhook", &SecretString::from(u.to_string()));
        assert!(ok("https://hooks.example.com/x").is_ok());
        assert!(ok("http://127.0.0.1:9000/hook").is_ok());
        assert!(ok("http://localhost/hook").is_ok());
        assert!(ok("http://hooks.example.com/x").unwrap_err().contains("in clear"));
        assert!(ok("ftp://x").is_err());
        assert!(ok("not a url").is_err());
    }
}
