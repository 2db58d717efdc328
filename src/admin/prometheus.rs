//! The process's Prometheus recorder: installed once, rendered by `/metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::store::StoreStats;
use crate::store::idempotency::RecordStats;
use crate::telemetry;

/// Histogram buckets, in seconds: from sub-millisecond lease grabs to slow upstreams.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram data is compacted when nobody scrapes.
pub(crate) const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The handle of the recorder this process installed, installing it on first use. `None` if
/// another recorder was installed first (an embedding application's): then its exporter, not
/// ours, publishes the metrics.
pub fn handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(BUCKETS).ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    telemetry::describe();
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "metrics recorder not installed; /metrics will be empty");
                    None
                }
            }
        })
        .clone()
}

/// Publishes the idempotency records' counters, read at scrape time.
pub fn publish_records(stats: RecordStats) {
    metrics::gauge!(telemetry::IDEMPOTENCY_RECORDS).set(stats.records as f64);
    metrics::counter!(telemetry::IDEMPOTENCY_EVICTIONS).absolute(stats.evictions);
}

/// Publishes a store's counters, read at scrape time.
pub fn publish_store(stats: StoreStats) {
    // u64 -> f64: exact below 2^53 entries, far beyond any store.
    metrics::gauge!(telemetry::STORE_ENTRIES).set(stats.entries as f64);
    metrics::counter!(telemetry::STORE_HITS).absolute(stats.hits);
    metrics::counter!(telemetry::STORE_MISSES).absolute(stats.misses);
    metrics::counter!(telemetry::STORE_EVICTIONS).absolute(stats.evictions);
}
