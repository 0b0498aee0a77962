//! Prometheus metrics of the host (ARP-PROTOCOL §6), exposed in the OpenMetrics text format
//! by [`Metrics::render`] with [`CONTENT_TYPE`].
//!
//! One [`Metrics`] value is shared behind an `Arc`; every recording method takes `&self`.
//! Families and their labels:
//!
//! | family | kind | labels |
//! | --- | --- | --- |
//! | `arp_pdp_latency_ms` | histogram (ms) | `tenant` |
//! | `arp_inbound_total` | counter | `tenant` |
//! | `arp_denied_total` | counter | `tenant`, `reason` |
//! | `arp_queued_total` | counter | `tenant` |
//! | `arp_outbound_total` | counter | `tenant` |
//! | `arp_dispatch_latency_ms` | histogram (ms) | `status` |
//! | `arp_queue_depth` | gauge | none |
//!
//! Label cardinality: `tenant` is bounded by the tenants of this host; `reason` must be a
//! small fixed code (`policy_denied`, `quota_exceeded`, `connection_revoked`, ...), never a
//! free-form message; `status` is an HTTP status code.
//!
//! For hosts that build metrics from log drains, [`Metrics::new`]`(true)` also emits each
//! `arp.pdp_latency_ms`, `arp.inbound` and `arp.outbound` sample as a `tracing` info event
//! with the fields `metric`, `tenantId` and (latency only) `ms`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The content type of [`Metrics::render`]'s output: OpenMetrics text 1.0.0, which
/// Prometheus scrapes natively.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (ms) of `arp_pdp_latency_ms`. Policy decisions take ~10–200 µs, so the low
/// end is fine-grained; 200 ms is a bound of its own because the §6 alert fires at p95 > 200 ms.
const PDP_BUCKETS_MS: [f64; 15] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0,
];

/// Upper bounds (ms) of `arp_dispatch_latency_ms`: a whole `POST /didcomm` includes
/// verification, the decision and store writes, so it reaches further up than a decision.
const DISPATCH_BUCKETS_MS: [f64; 15] = [
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2500.0, 5000.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeniedLabels {
    tenant: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// The host's metrics: cheap to record into from any thread (`Send + Sync`).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    log_samples: bool,
    pdp_latency: Family<TenantLabels, Histogram>,
    inbound: Family<TenantLabels, Counter>,
    denied: Family<DeniedLabels, Counter>,
    queued: Family<TenantLabels, Counter>,
    outbound: Family<TenantLabels, Counter>,
    dispatch_latency: Family<StatusLabels, Histogram>,
    queue_depth: Gauge,
}

fn tenant(tenant_id: &str) -> TenantLabels {
    TenantLabels {
        tenant: tenant_id.to_owned(),
    }
}

fn millis(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1000.0
}

impl Metrics {
    /// A fresh set of metrics, all families registered.
    ///
    /// `log_samples`: also emit each sample as a tracing event (for hosts that build metrics
    /// from log drains).
    pub fn new(log_samples: bool) -> Self {
        let pdp_latency = Family::<TenantLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(PDP_BUCKETS_MS)
        });
        let dispatch_latency = Family::<StatusLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(DISPATCH_BUCKETS_MS)
        });
        let metrics = Self {
            registry: Registry::default(),
            log_samples,
            pdp_latency,
            inbound: Family::default(),
            denied: Family::default(),
            queued: Family::default(),
            outbound: Family::default(),
            dispatch_latency,
            queue_depth: Gauge::default(),
        };
        let mut registry = Registry::default();
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "arp_pdp_latency_ms",
            "Policy decision latency in milliseconds, per tenant",
            metrics.pdp_latency.clone(),
        );
        registry.register(
            "arp_inbound",
            "Inbound envelopes accepted for a tenant",
            metrics.inbound.clone(),
        );
        registry.register(
            "arp_denied",
            "Inbound envelopes refused, per tenant and reason code",
            metrics.denied.clone(),
        );
        registry.register(
            "arp_queued",
            "Envelopes queued for delivery to an agent, per tenant",
            metrics.queued.clone(),
        );
        registry.register(
            "arp_outbound",
            "Envelopes delivered to agents, per tenant",
            metrics.outbound.clone(),
        );
        registry.register(
            "arp_dispatch_latency_ms",
            "Whole POST /didcomm handling time in milliseconds, per HTTP status",
            metrics.dispatch_latency.clone(),
        );
        registry.register(
            "arp_queue_depth",
            "Envelopes waiting in the delivery queue",
            metrics.queue_depth.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Records one policy decision's latency (`arp.pdp_latency_ms`).
    pub fn pdp_latency(&self, tenant_id: &str, elapsed: Duration) {
        let ms = millis(elapsed);
        self.pdp_latency
            .get_or_create(&tenant(tenant_id))
            .observe(ms);
        if self.log_samples {
            tracing::info!(
                metric = "arp.pdp_latency_ms",
                tenantId = tenant_id,
                ms,
                "metric"
            );
        }
    }

    /// Counts one inbound envelope for a tenant (`arp.inbound`).
    pub fn inbound(&self, tenant_id: &str) {
        self.inbound.get_or_create(&tenant(tenant_id)).inc();
        if self.log_samples {
            tracing::info!(metric = "arp.inbound", tenantId = tenant_id, "metric");
        }
    }

    /// Counts one refused envelope. `reason` must be a small fixed code such as
    /// `policy_denied`, `quota_exceeded` or `connection_revoked` (it is a label).
    pub fn denied(&self, tenant_id: &str, reason: &str) {
        let labels = DeniedLabels {
            tenant: tenant_id.to_owned(),
            reason: reason.to_owned(),
        };
        self.denied.get_or_create(&labels).inc();
    }

    /// Counts one envelope queued for delivery.
    pub fn queued(&self, tenant_id: &str) {
        self.queued.get_or_create(&tenant(tenant_id)).inc();
    }

    /// Counts one envelope delivered to an agent (`arp.outbound`).
    pub fn outbound(&self, tenant_id: &str) {
        self.outbound.get_or_create(&tenant(tenant_id)).inc();
        if self.log_samples {
            tracing::info!(metric = "arp.outbound", tenantId = tenant_id, "metric");
        }
    }

    /// Records the whole handling time of one `POST /didcomm`, by response status.
    pub fn dispatch_latency(&self, status: u16, elapsed: Duration) {
        let labels = StatusLabels {
            status: status.to_string(),
        };
        self.dispatch_latency
            .get_or_create(&labels)
            .observe(millis(elapsed));
    }

    /// Sets the current delivery queue depth (saturating at `i64::MAX`).
    pub fn set_queue_depth(&self, depth: u64) {
        self.queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text exposition of every family, ending with `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail; an encoder error would leave a partial body,
        // which a scraper rejects for the missing `# EOF`.
        if encode(&mut out, &self.registry).is_err() {
            tracing::error!("encoding the metrics failed");
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::BTreeMap;
    use std::io;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::logging::JsonLines;

    /// Parses exposition lines into `(name, sorted labels) -> value`, skipping comments.
    fn samples(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
        let mut out = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').unwrap();
                    let labels = body
                        .split(',')
                        .map(|kv| {
                            let (k, v) = kv.split_once('=').unwrap();
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), BTreeMap::new()),
            };
            let value = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().unwrap(),
            };
            assert!(out.insert((name, labels), value).is_none(), "{line}");
        }
        out
    }

    fn get(
        s: &BTreeMap<(String, BTreeMap<String, String>), f64>,
        name: &str,
        labels: &[(&str, &str)],
    ) -> f64 {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let key = (name.to_owned(), labels);
        *s.get(&key).unwrap_or_else(|| panic!("no sample {key:?}"))
    }

    #[test]
    fn render_has_families_labels_counts_and_buckets() {
        let m = Metrics::new(false);
        m.pdp_latency("t1", Duration::from_micros(20)); // 0.02 ms
        m.pdp_latency("t1", Duration::from_micros(150)); // 0.15 ms
        m.pdp_latency("t1", Duration::from_millis(300));
        m.pdp_latency("t2", Duration::from_millis(1));
        m.inbound("t1");
        m.inbound("t1");
        m.inbound("t2");
        m.denied("t1", "policy_denied");
        m.denied("t1", "quota_exceeded");
        m.denied("t1", "quota_exceeded");
        m.queued("t2");
        m.outbound("t2");
        m.dispatch_latency(202, Duration::from_millis(3));
        m.dispatch_latency(403, Duration::from_micros(800));
        m.set_queue_depth(7);

        let text = m.render();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for (family, kind) in [
            ("arp_pdp_latency_ms", "histogram"),
            ("arp_inbound", "counter"),
            ("arp_denied", "counter"),
            ("arp_queued", "counter"),
            ("arp_outbound", "counter"),
            ("arp_dispatch_latency_ms", "histogram"),
            ("arp_queue_depth", "gauge"),
        ] {
            let line = format!("# TYPE {family} {kind}");
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in {text}"
            );
        }

        let s = samples(&text);
        let pdp = "arp_pdp_latency_ms_bucket";
        assert_eq!(
            get(&s, "arp_pdp_latency_ms_count", &[("tenant", "t1")]),
            3.0
        );
        let sum = get(&s, "arp_pdp_latency_ms_sum", &[("tenant", "t1")]);
        assert!((sum - 300.17).abs() < 1e-6, "{sum}");
        // Cumulative buckets: 0.02 ms is in le=0.025, 0.15 ms from le=0.25, 300 ms from le=500.
        assert_eq!(get(&s, pdp, &[("le", "0.01"), ("tenant", "t1")]), 0.0);
        assert_eq!(get(&s, pdp, &[("le", "0.025"), ("tenant", "t1")]), 1.0);
        assert_eq!(get(&s, pdp, &[("le", "0.1"), ("tenant", "t1")]), 1.0);
        assert_eq!(get(&s, pdp, &[("le", "0.25"), ("tenant", "t1")]), 2.0);
        assert_eq!(get(&s, pdp, &[("le", "200.0"), ("tenant", "t1")]), 2.0);
        assert_eq!(get(&s, pdp, &[("le", "500.0"), ("tenant", "t1")]), 3.0);
        assert_eq!(get(&s, pdp, &[("le", "+Inf"), ("tenant", "t1")]), 3.0);
        assert_eq!(get(&s, pdp, &[("le", "0.5"), ("tenant", "t2")]), 0.0);
        assert_eq!(get(&s, pdp, &[("le", "1.0"), ("tenant", "t2")]), 1.0);
        let pdp_buckets = s
            .keys()
            .filter(|(n, l)| n == pdp && l.get("tenant").map(String::as_str) == Some("t1"))
            .count();
        assert_eq!(pdp_buckets, PDP_BUCKETS_MS.len() + 1);

        assert_eq!(get(&s, "arp_inbound_total", &[("tenant", "t1")]), 2.0);
        assert_eq!(get(&s, "arp_inbound_total", &[("tenant", "t2")]), 1.0);
        let denied = |r| get(&s, "arp_denied_total", &[("reason", r), ("tenant", "t1")]);
        assert_eq!(denied("policy_denied"), 1.0);
        assert_eq!(denied("quota_exceeded"), 2.0);
        assert_eq!(get(&s, "arp_queued_total", &[("tenant", "t2")]), 1.0);
        assert_eq!(get(&s, "arp_outbound_total", &[("tenant", "t2")]), 1.0);

        let dispatch = "arp_dispatch_latency_ms_bucket";
        assert_eq!(
            get(&s, "arp_dispatch_latency_ms_count", &[("status", "202")]),
            1.0
        );
        assert_eq!(get(&s, dispatch, &[("le", "2.5"), ("status", "202")]), 0.0);
        assert_eq!(get(&s, dispatch, &[("le", "5.0"), ("status", "202")]), 1.0);
        assert_eq!(get(&s, dispatch, &[("le", "1.0"), ("status", "403")]), 1.0);
        assert_eq!(get(&s, "arp_queue_depth", &[]), 7.0);
    }

    #[test]
    fn fresh_metrics_render_no_samples() {
        let text = Metrics::new(false).render();
        assert_eq!(samples(&text).len(), 1, "only the queue gauge: {text}");
        assert_eq!(
            CONTENT_TYPE.split(';').next(),
            Some("application/openmetrics-text")
        );
    }

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Runs `f` with a JSON-lines subscriber and returns the parsed lines.
    fn logged(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .event_format(JsonLines)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn log_samples_emit_metric_events() {
        let lines = logged(|| {
            let m = Metrics::new(true);
            m.pdp_latency("t1", Duration::from_micros(1500));
            m.inbound("t1");
            m.outbound("t2");
            m.denied("t1", "policy_denied");
            m.queued("t1");
            m.dispatch_latency(202, Duration::from_millis(1));
        });
        assert_eq!(lines.len(), 3, "{lines:?}");
        let pdp = &lines[0];
        assert_eq!(pdp["metric"], "arp.pdp_latency_ms");
        assert_eq!(pdp["tenantId"], "t1");
        assert_eq!(pdp["ms"].as_f64(), Some(1.5));
        assert_eq!(pdp["level"], "info");
        assert_eq!(pdp["msg"], "metric");
        assert_eq!(lines[1]["metric"], "arp.inbound");
        assert_eq!(lines[1]["tenantId"], "t1");
        assert!(lines[1].get("ms").is_none());
        assert_eq!(lines[2]["metric"], "arp.outbound");
        assert_eq!(lines[2]["tenantId"], "t2");
    }

    #[test]
    fn no_metric_events_without_log_samples() {
        let lines = logged(|| {
            let m = Metrics::new(false);
            m.pdp_latency("t1", Duration::from_micros(1500));
            m.inbound("t1");
            m.outbound("t1");
        });
        assert!(lines.is_empty(), "{lines:?}");
    }
}
