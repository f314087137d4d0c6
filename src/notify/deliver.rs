//! One attempt to deliver one notification to one channel: a signed webhook POST, a Slack message, or an email,
//! each within `notify.timeout`, and what the receiver answered, classified: delivered, worth another try, or
//! refused for good. Secrets (URLs, signing secrets, the SMTP password) are read at each attempt and never appear
//! in an answer.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use super::{message, EventDocument};
use crate::config::{Config, SmtpTls};
use crate::secrets::{resolve_channel_secret, ChannelSecret};
use crate::store::{Channel, ChannelKind};

/// The header a webhook's signature travels in: `t=TIMESTAMP,v1=HEX`.
pub const SIGNATURE_HEADER: &str = "Segment-Exporter-Signature";

/// What came of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The receiver took it; what it answered.
    Delivered(String),
    /// Not taken this time (unreachable, timed out, 408, 429, 5xx, a transient SMTP error): try again.
    Retry(String),
    /// Refused for good (another 4xx, a permanent SMTP error): no retry would help.
    Refused(String),
}

impl Answer {
    /// What the receiver answered, for `notify log`.
    pub fn text(&self) -> &str {
        match self {
            Answer::Delivered(t) | Answer::Retry(t) | Answer::Refused(t) => t,
        }
    }

    /// The outcome label of the deliveries metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            Answer::Delivered(_) => "delivered",
            Answer::Retry(_) => "retry",
            Answer::Refused(_) => "refused",
        }
    }
}

/// The signature of a webhook body sent at `timestamp` (Unix seconds): hex HMAC-SHA256 of `TIMESTAMP.BODY` with
/// the channel's secret.
pub fn sign(secret: &SecretString, timestamp: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Delivers notifications; cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    http: reqwest::Client,
    config: Arc<Config>,
}

impl Deliverer {
    pub fn new(config: Arc<Config>) -> Deliverer {
        let http = reqwest::Client::builder()
            .timeout(config.notify.timeout)
            .connect_timeout(config.notify.timeout)
            // A redirect could carry the signed body elsewhere: receivers answer where they were asked.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("segment-exporter/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds");
        Deliverer { http, config }
    }

    /// Sends `payload` (an event document) to `channel` once.
    pub async fn deliver(&self, channel: &Channel, payload: &str) -> Answer {
        let master = self.config.store.master_key_path();
        let url = match channel.kind {
            ChannelKind::Webhook | ChannelKind::Slack => {
                match resolve_channel_secret(channel, ChannelSecret::Url, &master) {
                    Ok(url) => Some(url),
                    Err(e) => return Answer::Retry(e.to_string()),
                }
            }
            ChannelKind::Email => None,
        };
        match channel.kind {
            ChannelKind::Webhook => {
                let secret = match resolve_channel_secret(channel, ChannelSecret::SigningSecret, &master) {
                    Ok(secret) => secret,
                    Err(e) => return Answer::Retry(e.to_string()),
                };
                let timestamp = chrono::Utc::now().timestamp();
                let signature = format!("t={timestamp},v1={}", sign(&secret, timestamp, payload.as_bytes()));
                let request = self
                    .http
                    .post(url.expect("webhooks have a URL").expose_secret())
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(SIGNATURE_HEADER, signature)
                    .body(payload.to_string());
                self.http_answer(request).await
            }
            ChannelKind::Slack => {
                let document: EventDocument = match serde_json::from_str(payload) {
                    Ok(d) => d,
                    Err(e) => return Answer::Refused(format!("the stored notification cannot be read: {e}")),
                };
                let body = serde_json::json!({ "text": message::slack_text(&document) });
                self.http_answer(self.http.post(url.expect("Slack channels have a URL").expose_secret()).json(&body))
                    .await
            }
            ChannelKind::Email => self.email(channel, payload).await,
        }
    }

    async fn http_answer(&self, request: reqwest::RequestBuilder) -> Answer {
        match request.send().await {
            Ok(response) => {
                let status = response.status();
                let text = format!("HTTP {}", status.as_u16());
                if status.is_success() {
                    Answer::Delivered(text)
                } else if matches!(status.as_u16(), 408 | 429) || (status.is_server_error() && status.as_u16() != 501) {
                    Answer::Retry(text)
                } else {
                    Answer::Refused(text)
                }
            }
            // reqwest's error names the URL, a credential: say what happened without it.
            Err(e) if e.is_timeout() => Answer::Retry(format!(
                "no answer within notify.timeout ({})",
                humantime::format_duration(self.config.notify.timeout)
            )),
            Err(e) if e.is_connect() => Answer::Retry("cannot connect to the receiver".into()),
            Err(e) => Answer::Retry(format!("the request failed: {}", e.without_url())),
        }
    }

    async fn email(&self, channel: &Channel, payload: &str) -> Answer {
        let smtp = &self.config.smtp;
        let (Some(host), Some(from)) = (&smtp.host, &smtp.from) else {
            return Answer::Retry("[smtp] host and from are not set in the config; email cannot be sent".into());
        };
        let document: EventDocument = match serde_json::from_str(payload) {
            Ok(d) => d,
            Err(e) => return Answer::Refused(format!("the stored notification cannot be read: {e}")),
        };
        let from: Mailbox = match from.parse() {
            Ok(m) => m,
            Err(e) => return Answer::Retry(format!("smtp.from is not an address: {e}")),
        };
        let mut builder = Message::builder().from(from).subject(message::email_subject(&document));
        for address in &channel.addresses {
            match address.parse::<Mailbox>() {
                Ok(to) => builder = builder.to(to),
                Err(_) => return Answer::Refused(format!("channel '{}' has an address that is not one", channel.name)),
            }
        }
        let body = MultiPart::alternative()
            .singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(message::text_body(&document)))
            .singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(message::html_body(&document)));
        let email = match builder.multipart(body) {
            Ok(m) => m,
            Err(e) => return Answer::Refused(format!("the message cannot be built: {e}")),
        };
        let transport = match self.smtp_transport(host) {
            Ok(t) => t,
            Err(e) => return Answer::Retry(e),
        };
        match transport.send(email).await {
            Ok(response) => Answer::Delivered(format!("SMTP {}", response.code())),
            Err(e) if e.is_permanent() => Answer::Refused(format!("the mail server refused it: {e}")),
            Err(e) => Answer::Retry(format!("the mail server did not take it: {e}")),
        }
    }

    fn smtp_transport(&self, host: &str) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
        let smtp = &self.config.smtp;
        let builder = match smtp.tls {
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
            SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)),
        }
        .map_err(|e| format!("cannot set up TLS to the mail server {host}: {e}"))?;
        let mut builder = builder.port(smtp.port()).timeout(Some(self.config.notify.timeout));
        if let Some(user) = &smtp.user {
            let password = match (&smtp.password_env, &smtp.password_file) {
                (Some(var), _) => std::env::var(var)
                    .map_err(|_| format!("smtp.password_env names {var}, which is not set in this process"))?,
                (None, Some(path)) => std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read smtp.password_file {}: {e}", path.display()))?
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
                (None, None) => String::new(),
            };
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        Ok(builder.build())
    }
}
