//! Request counters the sandbox keeps so tests and the benchmark can see what a client really sent:
//! per endpoint, per answered status, 429s, dropped connections and subscribers received.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Label used for `/api` paths that match no endpoint.
pub(crate) const UNKNOWN_ENDPOINT: &str = "unknown";

/// Counters since start or the last reset. Endpoint labels are stable: `lists.get`, `lists.create`,
/// `lists.delete`, `lists.subscribe`, `lists.unsubscribe`, `lists.getUsers`, `lists.size`,
/// `lists.previewUsers`, and `unknown` for other `/api` paths.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStats {
    /// Every `/api` request received, whatever its fate.
    pub total_requests: u64,
    /// Requests received per endpoint label.
    pub requests: BTreeMap<String, u64>,
    /// Completed answers per endpoint label and HTTP status. Dropped connections have no status, so per
    /// endpoint the statuses can sum to less than `requests`.
    pub statuses: BTreeMap<String, BTreeMap<u16, u64>>,
    /// Answers with status 429, over all endpoints.
    pub rate_limited: u64,
    /// Requests whose change was applied and whose connection was then dropped on purpose.
    pub dropped_connections: u64,
    /// Items in the `subscribers` arrays of subscribe bodies that were parsed (retries count again).
    pub subscribers_received: u64,
    /// Items in the `subscribers` arrays of unsubscribe bodies that were parsed (retries count again).
    pub unsubscribers_received: u64,
    /// HTTP 200 answers to subscribe/unsubscribe that were miscounted or truncated on purpose.
    #[serde(default)]
    pub bad_answers: u64,
    /// Requests waiting right now for a hold (`Faults::hold`) to be lifted.
    #[serde(default)]
    pub held: u64,
}

impl SandboxStats {
    pub(crate) fn received(&mut self, endpoint: &str) {
        self.total_requests += 1;
        *self.requests.entry(endpoint.to_owned()).or_default() += 1;
    }

    pub(crate) fn answered(&mut self, endpoint: &str, status: u16) {
        if status == 429 {
            self.rate_limited += 1;
        }
        let by_status = self.statuses.entry(endpoint.to_owned()).or_default();
        *by_status.entry(status).or_default() += 1;
    }

    /// How many answers of `status` the endpoint gave; a convenience for tests.
    pub fn answered_with(&self, endpoint: &str, status: u16) -> u64 {
        self.statuses.get(endpoint).and_then(|by_status| by_status.get(&status)).copied().unwrap_or(0)
    }
}
