//! Prometheus metrics of the daemon. Labels stay low-cardinality (export names, endpoints with ids replaced,
//! statuses); no email address or key ever becomes a label.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::iterable::RequestObserver;
use crate::store::{DriftKind, Verdict};
use crate::sync::{RunReport, VerifyReport};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    export: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    export: String,
    change: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DriftLabels {
    export: String,
    list: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    channel: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExportLabels {
    export: String,
}

pub struct Metrics {
    registry: Registry,
    runs: Family<RunLabels, Counter>,
    members: Family<MemberLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    rate_limited: Counter,
    latency: Family<EndpointLabels, Histogram>,
    since_success: Family<ExportLabels, Gauge<f64, AtomicU64>>,
    in_flight: Gauge,
    drift: Family<DriftLabels, Gauge>,
    deliveries: Family<DeliveryLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("segment_exporter");
        let runs = Family::<RunLabels, Counter>::default();
        registry.register("runs", "Export runs finished, by export and status", runs.clone());
        let members = Family::<MemberLabels, Counter>::default();
        registry.register(
            "members",
            "Members added (new on a list), updated, already on a list (adopted), removed, invalid and rejected, by export",
            members.clone(),
        );
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("iterable_requests", "Requests to Iterable by endpoint and HTTP status", requests.clone());
        let rate_limited = Counter::default();
        registry.register("iterable_rate_limited", "Requests to Iterable answered 429", rate_limited.clone());
        let latency = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register("iterable_request_duration_seconds", "Latency of requests to Iterable", latency.clone());
        let since_success = Family::<ExportLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "seconds_since_last_success",
            "Seconds since each export's last successful run (absent when it never succeeded)",
            since_success.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("runs_in_flight", "Export runs in progress", in_flight.clone());
        let drift = Family::<DriftLabels, Gauge>::default();
        registry.register(
            "list_drift_members",
            "Members each list's last verify found missing, not yet sent, lingering, others' or settling",
            drift.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "notification_deliveries",
            "Attempts to deliver notifications, by channel and outcome (delivered, retry, refused, given_up)",
            deliveries.clone(),
        );
        Metrics {
            registry,
            runs,
            members,
            requests,
            rate_limited,
            latency,
            since_success,
            in_flight,
            drift,
            deliveries,
        }
    }
}

impl Metrics {
    pub fn run_started(&self) {
        self.in_flight.inc();
    }

    /// A run that was started but found its export running in another process.
    pub fn run_not_started(&self) {
        self.in_flight.dec();
    }

    pub fn run_finished(&self, export: &str, report: Option<&RunReport>) {
        self.in_flight.dec();
        let status = report.map_or("failed".to_string(), |r| r.status.to_string());
        self.runs.get_or_create(&RunLabels { export: export.into(), status }).inc();
        if let Some(r) = report {
            for l in &r.lists {
                for (change, n) in [
                    ("added", l.added),
                    ("updated", l.updated),
                    ("already_on_list", l.already_on_list),
                    ("removed", l.removed),
                    ("invalid", l.invalid),
                    ("rejected", l.rejected),
                ] {
                    self.members.get_or_create(&MemberLabels { export: export.into(), change }).inc_by(n);
                }
            }
        }
    }

    /// A verify ended: each list it judged shows its categories (a list without a verdict keeps its last ones).
    pub fn verify_finished(&self, export: &str, report: &VerifyReport) {
        self.in_flight.dec();
        let status = report.status.to_string();
        self.runs.get_or_create(&RunLabels { export: export.into(), status }).inc();
        for l in report.lists.iter().filter(|l| l.verdict != Verdict::NoVerdict) {
            for kind in DriftKind::ALL {
                let labels = DriftLabels { export: export.into(), list: l.list_name.clone(), kind: kind.as_str() };
                self.drift.get_or_create(&labels).set(l.category(kind).count as i64);
            }
        }
        for l in &report.repaired {
            for (change, n) in
                [("added", l.added), ("updated", l.updated), ("removed", l.removed), ("rejected", l.rejected)]
            {
                self.members.get_or_create(&MemberLabels { export: export.into(), change }).inc_by(n);
            }
        }
    }

    pub fn set_since_success(&self, export: &str, seconds: f64) {
        self.since_success.get_or_create(&ExportLabels { export: export.into() }).set(seconds);
    }

    pub fn forget_export(&self, export: &str) {
        self.since_success.remove(&ExportLabels { export: export.into() });
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

impl crate::notify::DeliveryObserver for Metrics {
    fn delivery(&self, channel: &str, outcome: &'static str) {
        self.deliveries.get_or_create(&DeliveryLabels { channel: channel.into(), outcome }).inc();
    }
}

impl RequestObserver for Metrics {
    fn observe(&self, endpoint: &str, status: Option<u16>, elapsed: Duration) {
        let status_label = status.map_or("error".to_string(), |s| s.to_string());
        self.requests.get_or_create(&RequestLabels { endpoint: endpoint.into(), status: status_label }).inc();
        if status == Some(429) {
            self.rate_limited.inc();
        }
        self.latency.get_or_create(&EndpointLabels { endpoint: endpoint.into() }).observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_429s_show_up_in_the_exposition() {
        let m = Metrics::default();
        m.observe("/api/lists/subscribe", Some(200), Duration::from_millis(12));
        m.observe("/api/lists/subscribe", Some(429), Duration::from_millis(3));
        m.run_started();
        crate::notify::DeliveryObserver::delivery(&m, "ops", "retry");
        let text = m.encode();
        assert!(
            text.contains("segment_exporter_notification_deliveries_total{channel=\"ops\",outcome=\"retry\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "segment_exporter_iterable_requests_total{endpoint=\"/api/lists/subscribe\",status=\"429\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("segment_exporter_iterable_rate_limited_total 1"));
        assert!(text.contains("segment_exporter_runs_in_flight 1"));
    }
}
