//! What can go wrong talking to Iterable, and which of it is worth another try.

use std::time::Duration;

use super::types::Envelope;

/// A final failure of one Iterable call (retries, where allowed, already spent).
#[derive(Debug, thiserror::Error)]
pub enum IterableError {
    #[error("Iterable rejected the API key ({code}: {msg}) at {endpoint}. Check that the connection's key is a server-side key of the right project and data centre (US keys work only on api.iterable.com, EU keys only on api.eu.iterable.com).")]
    BadApiKey { endpoint: String, status: u16, code: String, msg: String },
    /// A write (creating a list, subscribing, unsubscribing) refused for the key: `GET /api/lists` may have
    /// accepted it (a read-only key's, say), so this is told apart from a key refused outright.
    #[error("Iterable refused to let the connection's key write at {endpoint} (HTTP {status} {code}: {msg}): the key is revoked, read-only, or otherwise unable to write lists. Exports need a server-side (standard) API key of the project: replace the connection's key with one, and run again.")]
    CannotWrite { endpoint: String, status: u16, code: String, msg: String },
    #[error("Iterable says list {list_id} does not exist ({msg}).")]
    InvalidListId { list_id: i64, msg: String },
    /// Iterable refused the whole request for something some of its members carry: a field whose type conflicts
    /// with the project's (`RequestFieldsTypesMismatched`), or a body too large (HTTP 413, `BatchTooLarge`).
    /// Smaller parts of the same batch may go through.
    #[error("Iterable refused {endpoint} as a whole with HTTP {status} {code}: {msg}")]
    BatchRefused { endpoint: String, status: u16, code: String, msg: String, too_large: bool },
    #[error("Iterable refused {endpoint} with HTTP {status} {code}: {msg}")]
    Api { endpoint: String, status: u16, code: String, msg: String },
    #[error("{endpoint} kept failing after {attempts} attempt(s) (last: {last}); Iterable or the network may be down")]
    GaveUp { endpoint: String, attempts: usize, last: String },
    #[error("Iterable answered {endpoint} with a body that could not be read: {cause}")]
    Decode { endpoint: String, cause: String },
    /// The run was asked to stop while this call waited (for its pace or before a retry).
    #[error("stopped waiting for {endpoint}: the run was asked to stop")]
    Cancelled { endpoint: String },
}

impl IterableError {
    pub fn is_bad_api_key(&self) -> bool {
        matches!(self, IterableError::BadApiKey { .. })
    }

    pub fn is_cancelled(&self) -> bool {
        matches!(self, IterableError::Cancelled { .. })
    }
}

/// The outcome of one attempt that did not succeed.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// Worth another try, possibly after a delay the server asked for.
    Retry {
        reason: String,
        after: Option<Duration>,
        rate_limited: bool,
    },
    Final(IterableError),
}

impl AttemptError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, AttemptError::Retry { .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AttemptError::Retry { after, .. } => *after,
            AttemptError::Final(_) => None,
        }
    }
}

/// Classifies a transport error.
pub(crate) fn classify_transport(e: &reqwest::Error) -> AttemptError {
    // Timeouts, refused and reset connections, and incomplete bodies are all transient from here.
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    AttemptError::Retry { reason: format!("{kind}: {}", without_url(e)), after: None, rate_limited: false }
}

/// The innermost cause of a transport error, without the URL reqwest puts in its own text.
pub(super) fn without_url(e: &reqwest::Error) -> String {
    // The URL carries no secret (the key is a header), but it makes lines long; the endpoint is said elsewhere.
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut last = e.to_string();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

/// Classifies a non-2xx HTTP answer to a call that reads, or (`writes`) changes something.
pub(crate) fn classify_status(
    endpoint: &str,
    writes: bool,
    status: u16,
    retry_after_header: Option<Duration>,
    body: &str,
) -> AttemptError {
    let env: Envelope = serde_json::from_str(body).unwrap_or_else(|_| Envelope {
        msg: body.chars().take(200).collect::<String>().trim().to_string(),
        code: String::new(),
        params: None,
    });
    let code = if env.code.is_empty() { format!("HTTP {status}") } else { env.code.clone() };
    match status {
        429 => {
            let reset = env
                .params
                .as_ref()
                .and_then(|p| p.get("rateLimitReset"))
                .and_then(|v| v.as_f64())
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Duration::from_secs_f64);
            AttemptError::Retry {
                reason: format!("rate limited ({code}: {})", env.msg),
                after: retry_after_header.or(reset),
                rate_limited: true,
            }
        }
        408 | 500 | 502..=599 => AttemptError::Retry {
            reason: format!("HTTP {status} ({code}: {})", env.msg),
            after: retry_after_header,
            rate_limited: false,
        },
        413 => AttemptError::Final(IterableError::BatchRefused {
            endpoint: endpoint.to_string(),
            status,
            code,
            msg: env.msg,
            too_large: true,
        }),
        _ if env.code == "BatchTooLarge" || env.code == "RequestFieldsTypesMismatched" => {
            let msg = match env.params.as_ref().and_then(|p| p.get("validationErrors")) {
                Some(errors) => format!("{} ({})", env.msg, describe_validation_errors(errors)),
                None => env.msg,
            };
            let too_large = env.code == "BatchTooLarge";
            AttemptError::Final(IterableError::BatchRefused {
                endpoint: endpoint.to_string(),
                status,
                code,
                msg,
                too_large,
            })
        }
        401 | 403 if env.code != "Success" && writes => AttemptError::Final(IterableError::CannotWrite {
            endpoint: endpoint.to_string(),
            status,
            code,
            msg: env.msg,
        }),
        401 | 403 if env.code != "Success" => {
            AttemptError::Final(IterableError::BadApiKey { endpoint: endpoint.to_string(), status, code, msg: env.msg })
        }
        _ if env.msg.contains("invalidListId") => {
            let list_id =
                env.params.as_ref().and_then(|p| p.get("listId")).and_then(|v| v.as_i64()).unwrap_or_default();
            AttemptError::Final(IterableError::InvalidListId { list_id, msg: env.msg })
        }
        _ => AttemptError::Final(IterableError::Api { endpoint: endpoint.to_string(), status, code, msg: env.msg }),
    }
}

/// `params.validationErrors` of a `RequestFieldsTypesMismatched` answer (field name to `{expectedType,
/// incomingTypes, ...}`) as `field: expected long, got string`, without the offending values (they may be personal).
fn describe_validation_errors(errors: &serde_json::Value) -> String {
    let Some(fields) = errors.as_object() else { return errors.to_string().chars().take(200).collect() };
    fields
        .iter()
        .map(|(field, e)| {
            let expected = e.get("expectedType").and_then(|t| t.as_str()).unwrap_or("?");
            let incoming = match e.get("incomingTypes") {
                Some(serde_json::Value::Array(types)) => {
                    types.iter().filter_map(|t| t.as_str()).collect::<Vec<_>>().join("/")
                }
                Some(other) => other.as_str().unwrap_or("?").to_string(),
                None => "?".to_string(),
            };
            format!("{field}: expected {expected}, got {incoming}")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Reads `Retry-After` as seconds (the HTTP-date form is rare for APIs and is ignored).
pub(crate) fn parse_retry_after(value: Option<&reqwest::header::HeaderValue>) -> Option<Duration> {
    let secs: f64 = value?.to_str().ok()?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_400_with_code_success_and_invalid_list_id_is_an_invalid_list() {
        let body = r#"{"msg":"error.lists.invalidListId(999)","code":"Success","params":{"projectId":1,"listId":999}}"#;
        match classify_status("lists/subscribe", false, 400, None, body) {
            AttemptError::Final(IterableError::InvalidListId { list_id, .. }) => assert_eq!(list_id, 999),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rate_limits_and_server_errors_are_retried_but_other_4xx_are_not() {
        assert!(classify_status("x", false, 429, None, "{}").is_retryable());
        assert!(classify_status("x", false, 503, None, "<html>").is_retryable());
        assert!(classify_status("x", false, 408, None, "").is_retryable());
        assert!(!classify_status("x", false, 501, None, "").is_retryable());
        assert!(!classify_status("x", false, 400, None, r#"{"msg":"bad","code":"BadParams"}"#).is_retryable());
        assert!(!classify_status("x", false, 409, None, "").is_retryable());
    }

    #[test]
    fn whole_request_refusals_are_told_apart_from_other_4xx() {
        let body = r#"{"msg":"Fields types mismatched","code":"RequestFieldsTypesMismatched","params":{"validationErrors":
            {"score":{"incomingTypes":["string"],"expectedType":"long","category":"user","offendingValue":"x","_type":"UnexpectedType"}}}}"#;
        match classify_status("/api/lists/subscribe", false, 400, None, body) {
            AttemptError::Final(IterableError::BatchRefused { too_large: false, msg, code, .. }) => {
                assert_eq!(code, "RequestFieldsTypesMismatched");
                assert!(msg.contains("score: expected long, got string"), "{msg}");
                assert!(!msg.contains("\"x\""), "offending values are not repeated: {msg}");
            }
            other => panic!("unexpected {other:?}"),
        }
        for (status, body) in
            [(413, "<html>Request Entity Too Large</html>"), (400, r#"{"msg":"big","code":"BatchTooLarge"}"#)]
        {
            match classify_status("/api/lists/subscribe", true, status, None, body) {
                AttemptError::Final(IterableError::BatchRefused { too_large: true, .. }) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn a_401_is_a_bad_api_key_quoting_iterables_code() {
        let body = r#"{"msg":"Invalid API key","code":"BadApiKey","params":null}"#;
        let AttemptError::Final(e) = classify_status("lists", false, 401, None, body) else { panic!() };
        assert!(e.is_bad_api_key());
        assert!(e.to_string().contains("BadApiKey"));
    }

    #[test]
    fn a_write_refused_401_or_403_says_the_key_cannot_write_lists_and_a_server_side_key_is_needed() {
        for (status, body) in [
            (401, r#"{"msg":"Invalid API key","code":"BadApiKey","params":null}"#),
            (403, r#"{"msg":"Forbidden","code":"Forbidden","params":null}"#),
        ] {
            let AttemptError::Final(e) = classify_status("/api/lists/subscribe", true, status, None, body) else {
                panic!("{status} is not final")
            };
            assert!(matches!(e, IterableError::CannotWrite { .. }), "{e:?}");
            let text = e.to_string();
            for words in ["revoked, read-only", "unable to write lists", "server-side", "/api/lists/subscribe"] {
                assert!(text.contains(words), "{words:?} missing: {text}");
            }
        }
    }

    #[test]
    fn retry_after_header_wins_over_rate_limit_reset() {
        let body = r#"{"msg":"Exceeded","code":"RateLimitExceeded","params":{"rateLimitReset":7}}"#;
        let e = classify_status("x", false, 429, Some(Duration::from_secs(2)), body);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        let e = classify_status("x", false, 429, None, body);
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    }
}
