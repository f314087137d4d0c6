//! `IterableClient`: one connection's HTTP client, pace and retry policy, and the calls the exporter makes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::error::{classify_status, classify_transport, parse_retry_after, without_url, AttemptError, IterableError};
use super::pacer::Pacer;
use super::types::{subscribe_body, BulkResponse, CreateListResponse, ListDetails, ListsResponse};
use super::types::{UnsubscribeBody, Unsubscriber};
use crate::config::IterableConfig;

/// How failed attempts are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetrySettings {
    pub max_attempts: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl From<&IterableConfig> for RetrySettings {
    fn from(c: &IterableConfig) -> Self {
        RetrySettings { max_attempts: c.retry_max_attempts, min_delay: c.retry_min_delay, max_delay: c.retry_max_delay }
    }
}

/// Request counters, for progress lines, run summaries and metrics.
#[derive(Debug, Default)]
pub struct ClientStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub rate_limited: AtomicU64,
}

/// Sees every HTTP attempt (for metrics): the endpoint with ids replaced by `{id}`, the status (None for a
/// transport error) and how long it took.
pub trait RequestObserver: Send + Sync {
    fn observe(&self, endpoint: &str, status: Option<u16>, elapsed: Duration);
}

/// What every request must pass before it is sent: a run that holds its export by a lease sends only while the
/// lease is safely its own. An error stops the call (as a cancel does), with why.
pub trait SendGate: Send + Sync {
    fn admit(&self) -> futures::future::BoxFuture<'_, Result<(), String>>;
}

#[derive(Clone)]
pub struct IterableClient {
    http: reqwest::Client,
    base_url: String,
    pacer: Arc<Pacer>,
    retry: RetrySettings,
    stats: Arc<ClientStats>,
    observer: Option<Arc<dyn RequestObserver>>,
    /// Cuts every wait short (pace, retry backoff, list creation): a stopped run must not sit out a backoff.
    cancel: CancellationToken,
    gate: Option<Arc<dyn SendGate>>,
    list_reads: Arc<ListReadLimits>,
}

/// Iterable's limits of the calls that read a list whole: `getUsers` and a list's size, 5 a minute each per
/// project. Shared by every client of one connection (`IterableClient::with_list_read_limits`), so the exports
/// of a project take turns instead of drawing 429s.
#[derive(Debug)]
pub struct ListReadLimits {
    get_users: governor::DefaultDirectRateLimiter,
    size: governor::DefaultDirectRateLimiter,
}

impl Default for ListReadLimits {
    fn default() -> Self {
        let quota = governor::Quota::per_minute(std::num::NonZeroU32::new(5).expect("5 is not zero"));
        ListReadLimits { get_users: governor::RateLimiter::direct(quota), size: governor::RateLimiter::direct(quota) }
    }
}

impl std::fmt::Debug for IterableClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IterableClient").field("base_url", &self.base_url).finish_non_exhaustive()
    }
}

enum Body {
    None,
    Json(Vec<u8>),
}

impl IterableClient {
    /// A client for `base_url` (e.g. `https://api.iterable.com`) sending `api_key` in the `Api-Key` header.
    pub fn new(
        base_url: &str,
        api_key: &SecretString,
        timeout: Duration,
        pacer: Arc<Pacer>,
        retry: RetrySettings,
    ) -> Result<IterableClient, IterableError> {
        let mut key = HeaderValue::from_str(api_key.expose_secret()).map_err(|_| IterableError::Api {
            endpoint: "(setup)".into(),
            status: 0,
            code: "BadApiKey".into(),
            msg: "the API key holds characters that cannot be sent in an HTTP header".into(),
        })?;
        key.set_sensitive(true);
        let mut headers = HeaderMap::new();
        headers.insert("Api-Key", key);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(64)
            .user_agent(concat!("segment-exporter/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| IterableError::Decode { endpoint: "(setup)".into(), cause: e.to_string() })?;
        Ok(IterableClient {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            pacer,
            retry,
            stats: Default::default(),
            observer: None,
            cancel: CancellationToken::new(),
            gate: None,
            list_reads: Default::default(),
        })
    }

    /// Reads of whole lists (`getUsers`, sizes) wait their turn under `limits`, shared by the project's clients.
    pub fn with_list_read_limits(mut self, limits: Arc<ListReadLimits>) -> Self {
        self.list_reads = limits;
        self
    }

    /// Waits for a turn of `limiter`, or fails when the call is stopped meanwhile.
    async fn wait_turn(
        &self,
        limiter: &governor::DefaultDirectRateLimiter,
        endpoint: &str,
    ) -> Result<(), IterableError> {
        tokio::select! {
            biased;
            _ = self.cancel.cancelled() => Err(IterableError::Cancelled { endpoint: endpoint.to_string() }),
            _ = limiter.until_ready() => Ok(()),
        }
    }

    /// Every request first passes `gate`.
    pub fn with_gate(mut self, gate: Option<Arc<dyn SendGate>>) -> Self {
        self.gate = gate;
        self
    }

    /// Reports every attempt to `observer`.
    pub fn with_observer(mut self, observer: Option<Arc<dyn RequestObserver>>) -> Self {
        self.observer = observer;
        self
    }

    /// Stops waiting (for the pace, before a retry) once `cancel` is cancelled; the call then fails with
    /// `IterableError::Cancelled`. A request already on the wire is let finish.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    pub fn stats(&self) -> &Arc<ClientStats> {
        &self.stats
    }

    /// `GET /api/lists`: every list in the project.
    pub async fn lists(&self) -> Result<Vec<ListDetails>, IterableError> {
        self.call(Method::GET, "/api/lists", Body::None, decode::<ListsResponse>).await.map(|r| r.lists)
    }

    /// `POST /api/lists`: creates a static list and returns its id.
    ///
    /// Creating is not idempotent (Iterable allows several lists with one name), so a lost answer is not simply
    /// retried: after a retryable failure the lists are read again, and a list with this name that is not among
    /// `existing` (the ids seen before) is taken as the one this call created.
    pub async fn create_list(&self, name: &str, existing: &[i64]) -> Result<i64, IterableError> {
        #[derive(Serialize)]
        struct Create<'a> {
            name: &'a str,
        }
        let body = serde_json::to_vec(&Create { name }).expect("serialisable");
        let mut delay = self.retry.min_delay;
        let mut last = String::new();
        for _ in 0..self.retry.max_attempts {
            match self
                .call_with(Method::POST, "/api/lists", Body::Json(body.clone()), 1, decode::<CreateListResponse>)
                .await
            {
                Ok(r) => return Ok(r.list_id),
                Err(IterableError::GaveUp { last: reason, .. }) => {
                    last = reason;
                    let created =
                        self.lists().await?.into_iter().filter(|l| l.name == name && !existing.contains(&l.id));
                    if let Some(list) = created.max_by_key(|l| l.id) {
                        tracing::info!(list_id = list.id, "The list was created although the answer was lost.");
                        return Ok(list.id);
                    }
                    let pause = delay.mul_f64(0.5 + rand::random::<f64>() / 2.0);
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.cancel.cancelled() => {
                            return Err(IterableError::Cancelled { endpoint: "/api/lists".into() });
                        }
                    }
                    delay = (delay * 2).min(self.retry.max_delay);
                }
                Err(e) => return Err(e),
            }
        }
        Err(IterableError::GaveUp { endpoint: "/api/lists".into(), attempts: self.retry.max_attempts, last })
    }

    /// `GET /api/lists/{id}/size` (Iterable allows 5 a minute per project).
    pub async fn list_size(&self, list_id: i64) -> Result<u64, IterableError> {
        let path = format!("/api/lists/{list_id}/size");
        self.wait_turn(&self.list_reads.size, "/api/lists/{id}/size").await?;
        self.call(Method::GET, &path, Body::None, |text| {
            text.trim().trim_matches('"').parse().map_err(|_| "a size that is not a number".to_string())
        })
        .await
    }

    /// `POST /api/lists/subscribe` with subscribers pre-encoded by `encode_subscriber`; with `existing_users_only`,
    /// Iterable (in hybrid and userID-based projects) does not create users it does not know. `in_batch` tells whether
    /// a (lowercased) email was one of them. An HTTP 200 that does not account for the batch (see
    /// `BulkResponse::accounts_for`) is retried like a 5xx.
    pub async fn subscribe(
        &self,
        list_id: i64,
        fragments: &[Vec<u8>],
        existing_users_only: bool,
        in_batch: impl Fn(&str) -> bool,
    ) -> Result<BulkResponse, IterableError> {
        let body = subscribe_body(list_id, fragments, existing_users_only);
        self.call(Method::POST, "/api/lists/subscribe", Body::Json(body), |text| {
            let response = decode::<BulkResponse>(text)?;
            response.accounts_for(fragments.len(), &in_batch)?;
            Ok(response)
        })
        .await
    }

    /// `POST /api/lists/unsubscribe` of members named by their keys (an email, or `userId:…`), always with
    /// `channelUnsubscribe: false`.
    pub async fn unsubscribe(&self, list_id: i64, keys: &[String]) -> Result<BulkResponse, IterableError> {
        let body = UnsubscribeBody {
            list_id,
            subscribers: keys.iter().map(|k| Unsubscriber::of_key(k)).collect(),
            channel_unsubscribe: false,
        };
        let body = serde_json::to_vec(&body).expect("serialisable");
        self.call(Method::POST, "/api/lists/unsubscribe", Body::Json(body), |text| {
            let response = decode::<BulkResponse>(text)?;
            // notFound… are in failCount too: members already off the list.
            response.accounts_for(keys.len(), |k| keys.iter().any(|sent| sent == k))?;
            Ok(response)
        })
        .await
    }

    /// `GET /api/lists/getUsers?listId=`, read as it arrives (see `ListUsersReader`): emails, or with
    /// `prefer_user_id` (`preferUserId=true`) user ids where users have one (Iterable allows 5 a minute per
    /// project; a 429 is retried after the reset it names). The answer's head is waited for with the client's
    /// retries; its body is judged by `idle`, the longest wait for its next bytes, since a list of millions takes
    /// longer than any total timeout.
    pub async fn list_users(
        &self,
        list_id: i64,
        prefer_user_id: bool,
        idle: Duration,
    ) -> Result<ListUsersReader, IterableError> {
        let path = if prefer_user_id {
            format!("/api/lists/getUsers?listId={list_id}&preferUserId=true")
        } else {
            format!("/api/lists/getUsers?listId={list_id}")
        };
        let endpoint = "/api/lists/getUsers".to_string();
        self.wait_turn(&self.list_reads.get_users, &endpoint).await?;
        let response = self
            .retrying(&endpoint, self.retry.max_attempts, || {
                self.attempt_response(&Method::GET, &path, &Body::None, Some(idle))
            })
            .await?;
        Ok(ListUsersReader { response, pending: Vec::new(), idle, cancel: self.cancel.clone(), ended: false, bytes: 0 })
    }

    /// One call with pacing and retries; `accept` reads the body of a 2xx answer, and an answer it refuses (with
    /// what is wrong) is retried like a 5xx.
    async fn call<T>(
        &self,
        method: Method,
        path: &str,
        body: Body,
        accept: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, IterableError> {
        self.call_with(method, path, body, self.retry.max_attempts, accept).await
    }

    async fn call_with<T>(
        &self,
        method: Method,
        path: &str,
        body: Body,
        max_attempts: usize,
        accept: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, IterableError> {
        let endpoint = path.split('?').next().unwrap_or(path);
        self.retrying(endpoint, max_attempts, || async {
            let text = self.attempt(&method, path, &body).await?;
            accept(&text).map_err(|reason| AttemptError::Retry { reason, after: None, rate_limited: false })
        })
        .await
    }

    /// Runs `op` up to `max_attempts` times with the client's backoff: a retryable failure waits (for its
    /// `Retry-After` when it has one, up to the longest delay) and is tried again, unless the client is cancelled.
    async fn retrying<T, Fut>(
        &self,
        endpoint: &str,
        max_attempts: usize,
        mut op: impl FnMut() -> Fut,
    ) -> Result<T, IterableError>
    where
        Fut: std::future::Future<Output = Result<T, AttemptError>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.retry.min_delay)
            .with_max_delay(self.retry.max_delay)
            .with_max_times(max_attempts.saturating_sub(1))
            .with_jitter();
        let max_delay = self.retry.max_delay;
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let cancel = self.cancel.clone();
        let result = (|| {
            attempts.fetch_add(1, Ordering::Relaxed);
            op()
        })
        .retry(backoff)
        .sleep(move |delay| {
            let cancel = cancel.clone();
            async move {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = cancel.cancelled() => {}
                }
            }
        })
        .when(|e| e.is_retryable() && !self.cancel.is_cancelled())
        .adjust(|e, planned| planned.map(|d| e.retry_after().map_or(d, |after| after.min(max_delay))))
        .notify(|e, delay| {
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            if let AttemptError::Retry { reason, .. } = e {
                tracing::warn!(endpoint = %endpoint, delay_ms = delay.as_millis() as u64, "Retrying Iterable call: {reason}.");
            }
        })
        .await;
        result.map_err(|e| match e {
            AttemptError::Final(e) => e,
            AttemptError::Retry { .. } if self.cancel.is_cancelled() => {
                IterableError::Cancelled { endpoint: endpoint.to_string() }
            }
            AttemptError::Retry { reason, .. } => IterableError::GaveUp {
                endpoint: endpoint.to_string(),
                attempts: attempts.load(Ordering::Relaxed),
                last: reason,
            },
        })
    }

    async fn attempt(&self, method: &Method, path: &str, body: &Body) -> Result<String, AttemptError> {
        let endpoint = path.split('?').next().unwrap_or(path);
        let response = self.attempt_response(method, path, body, None).await?;
        response.text().await.map_err(|e| {
            if let Some(o) = &self.observer {
                o.observe(&endpoint_label(endpoint), None, Duration::ZERO);
            }
            classify_transport(&e)
        })
    }

    /// One attempt, up to the head of a 2xx answer: its body is the caller's to read. `idle` (for answers read as
    /// they arrive) replaces the client's total timeout by a wait for the answer's head of at most that long.
    async fn attempt_response(
        &self,
        method: &Method,
        path: &str,
        body: &Body,
        idle: Option<Duration>,
    ) -> Result<reqwest::Response, AttemptError> {
        let endpoint = path.split('?').next().unwrap_or(path);
        // A stopped run neither waits for its turn nor starts another attempt.
        // `biased`: when the pace allows a request and the run is stopped at the same moment, the stop wins (an
        // unbiased select picks at random, and a stopped run sent one more request after its backoff was cut).
        let ticket = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => {
                return Err(AttemptError::Final(IterableError::Cancelled { endpoint: endpoint.to_string() }));
            }
            ticket = self.pacer.ready() => ticket,
        };
        if let Some(gate) = &self.gate {
            if let Err(why) = gate.admit().await {
                tracing::warn!(endpoint, "Not sending: {why}.");
                self.cancel.cancel();
                return Err(AttemptError::Final(IterableError::Cancelled { endpoint: endpoint.to_string() }));
            }
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = self.http.request(method.clone(), format!("{}{path}", self.base_url));
        if let Body::Json(bytes) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(bytes.clone());
        }
        let started = std::time::Instant::now();
        let observe = |status: Option<u16>| {
            if let Some(o) = &self.observer {
                o.observe(&endpoint_label(endpoint), status, started.elapsed());
            }
        };
        let sent = match idle {
            // A long answer read as it arrives is judged by its idle time (see `ListUsersReader`), not in total.
            Some(idle) => match tokio::time::timeout(idle, request.timeout(LONG_READ).send()).await {
                Ok(sent) => sent,
                Err(_) => {
                    observe(None);
                    return Err(AttemptError::Retry {
                        reason: format!("no answer within {}", humantime::format_duration(idle)),
                        after: None,
                        rate_limited: false,
                    });
                }
            },
            None => request.send().await,
        };
        let response = sent.map_err(|e| {
            observe(None);
            classify_transport(&e)
        })?;
        let status = response.status().as_u16();
        let retry_after = parse_retry_after(response.headers().get(RETRY_AFTER));
        if (200..300).contains(&status) {
            observe(Some(status));
            tracing::debug!(endpoint, status, elapsed_ms = started.elapsed().as_millis() as u64, "Iterable answered.");
            self.pacer.succeeded(ticket);
            return Ok(response);
        }
        let text = response.text().await.map_err(|e| {
            observe(None);
            classify_transport(&e)
        })?;
        observe(Some(status));
        tracing::debug!(endpoint, status, elapsed_ms = started.elapsed().as_millis() as u64, "Iterable answered.");
        let error = classify_status(endpoint, *method != Method::GET, status, retry_after, &text);
        if let AttemptError::Retry { rate_limited: true, .. } = error {
            self.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
            self.pacer.slow_down(ticket);
        }
        Err(error)
    }
}

/// The total time allowed for an answer read as it arrives: in effect none, since `ListUsersReader` judges it by
/// its idle time.
const LONG_READ: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest line `ListUsersReader` accepts: an email is at most 254 characters, a user id 52.
const MAX_LINE_BYTES: usize = 4096;

/// The members of a list as `getUsers` answers them, one per line, read as they arrive: memory holds one chunk
/// of the answer and the lines asked for, never the list. A read that waits longer than `idle` for the next bytes
/// fails; the caller decides whether what it read was the whole list (Iterable does not say).
pub struct ListUsersReader {
    response: reqwest::Response,
    /// The start of a line whose end has not arrived yet.
    pending: Vec<u8>,
    idle: Duration,
    cancel: CancellationToken,
    ended: bool,
    bytes: u64,
}

impl std::fmt::Debug for ListUsersReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListUsersReader").field("bytes", &self.bytes).finish_non_exhaustive()
    }
}

impl ListUsersReader {
    /// Up to `max` more members (lines trimmed, empty ones skipped), or None once the answer has ended.
    pub async fn next_lines(&mut self, max: usize) -> Result<Option<Vec<String>>, IterableError> {
        let endpoint = || "/api/lists/getUsers".to_string();
        let mut out = Vec::new();
        loop {
            // Lines are taken from the front of `pending` by an offset, and what they used is dropped once per
            // chunk: removing each line from the front would move the rest of the chunk once per line.
            let mut start = 0;
            while out.len() < max {
                let Some(end) = self.pending[start..].iter().position(|&b| b == b'\n') else { break };
                push_line(&mut out, &self.pending[start..start + end])?;
                start += end + 1;
            }
            self.pending.drain(..start);
            if out.len() >= max {
                return Ok(Some(out));
            }
            if self.ended {
                if !self.pending.is_empty() {
                    let line = std::mem::take(&mut self.pending);
                    push_line(&mut out, &line)?;
                }
                return Ok((!out.is_empty()).then_some(out));
            }
            let chunk = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Err(IterableError::Cancelled { endpoint: endpoint() }),
                chunk = tokio::time::timeout(self.idle, self.response.chunk()) => chunk,
            };
            match chunk {
                Err(_) => {
                    return Err(IterableError::GaveUp {
                        endpoint: endpoint(),
                        attempts: 1,
                        last: format!(
                            "the answer stopped for longer than {} after {} bytes",
                            humantime::format_duration(self.idle),
                            self.bytes
                        ),
                    })
                }
                Ok(Err(e)) => {
                    return Err(IterableError::GaveUp {
                        endpoint: endpoint(),
                        attempts: 1,
                        last: format!("the answer broke off after {} bytes: {}", self.bytes, without_url(&e)),
                    })
                }
                Ok(Ok(None)) => self.ended = true,
                Ok(Ok(Some(bytes))) => {
                    self.bytes += bytes.len() as u64;
                    self.pending.extend_from_slice(&bytes);
                    if self.pending.len() > MAX_LINE_BYTES && !self.pending.contains(&b'\n') {
                        return Err(IterableError::Decode {
                            endpoint: endpoint(),
                            cause: format!("a line longer than {MAX_LINE_BYTES} bytes, which names no member"),
                        });
                    }
                }
            }
        }
    }
}

fn push_line(out: &mut Vec<String>, line: &[u8]) -> Result<(), IterableError> {
    let text = std::str::from_utf8(line).map_err(|_| IterableError::Decode {
        endpoint: "/api/lists/getUsers".into(),
        cause: "a line that is not UTF-8".into(),
    })?;
    let text = text.trim();
    if !text.is_empty() {
        out.push(text.to_string());
    }
    Ok(())
}

/// Reads a JSON answer; a body that is not the expected shape (truncated, say) is retried like a 5xx.
fn decode<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    serde_json::from_str(text).map_err(|e| format!("HTTP 200 with a body that could not be read ({e})"))
}

/// An endpoint with numeric path segments replaced, so metrics labels stay few.
fn endpoint_label(path: &str) -> String {
    path.split('/')
        .map(|seg| if !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()) { "{id}" } else { seg })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(body: &'static str) -> ListUsersReader {
        ListUsersReader {
            response: reqwest::Response::from(axum::http::Response::new(body)),
            pending: Vec::new(),
            idle: Duration::from_secs(5),
            cancel: CancellationToken::new(),
            ended: false,
            bytes: 0,
        }
    }

    #[tokio::test]
    async fn a_list_is_read_in_batches_of_lines_trimmed_with_empty_ones_skipped_and_a_last_line_without_newline() {
        let mut r = reader("a@x.com\n b@x.com \n\nu1\r\nc@x.com");
        assert_eq!(r.next_lines(2).await.unwrap(), Some(vec!["a@x.com".to_string(), "b@x.com".to_string()]));
        assert_eq!(r.next_lines(2).await.unwrap(), Some(vec!["u1".to_string(), "c@x.com".to_string()]));
        assert_eq!(r.next_lines(2).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_line_longer_than_any_member_is_refused_rather_than_held() {
        let long: &'static str = Box::leak("x".repeat(MAX_LINE_BYTES + 10).into_boxed_str());
        let error = reader(long).next_lines(10).await.unwrap_err();
        assert!(error.to_string().contains("longer than"), "{error}");
    }

    #[test]
    fn endpoint_labels_hide_list_ids() {
        assert_eq!(endpoint_label("/api/lists/123/size"), "/api/lists/{id}/size");
        assert_eq!(endpoint_label("/api/lists/subscribe"), "/api/lists/subscribe");
    }
}
