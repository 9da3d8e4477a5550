//! The sidecar's Prometheus metrics (`GET /metrics`, text format 0.0.4).

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the sidecar exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// HTTP requests by route and status.
    pub requests: IntCounterVec,
    /// Reports accepted (new, durable).
    pub accepted: IntCounter,
    /// Reports processed.
    pub processed: IntCounter,
    /// Reports failed for good (attempts spent).
    pub failed: IntCounter,
    /// Job attempts that failed and were scheduled again.
    pub retried: IntCounter,
    /// Reports accepted and not yet processed or failed.
    pub backlog: IntGauge,
    /// Analysis jobs running now.
    pub jobs_running: IntGauge,
    /// Analysis job duration.
    pub job_seconds: Histogram,
    /// Commands per store transaction.
    pub commit_batch: Histogram,
    /// Time of a store transaction's statements and commit (its WAL
    /// frames written, not yet flushed).
    pub commit_seconds: Histogram,
    /// Time of one flush of the WAL to disk (one or more commits).
    pub fsync_seconds: Histogram,
    /// Store transactions (and probes) that could not store what they
    /// were asked, and failed flushes.
    pub store_failures: IntCounter,
    /// 1 while the store can commit, 0 while its last commit failed.
    pub store_healthy: IntGauge,
    /// Claims whose lease ran out (their replica stopped renewing them),
    /// returned to the queue by this replica's reaper.
    pub leases_reclaimed: IntCounter,
    /// Results not stored because the report was no longer claimed by
    /// this replica (its lease ran out and it was reclaimed), or was
    /// settled already.
    pub results_discarded: IntCounter,
    /// Claims released unfinished at a stop, for other replicas to take.
    pub claims_released: IntCounter,
    /// Failed reports put back in the queue by an operator.
    pub redriven: IntCounter,
    /// Request durations by method and route pattern.
    pub request_seconds: prometheus::HistogramVec,
    /// Connections the API's listener is serving now.
    pub connections: IntGauge,
    /// Connections the admin listener is serving now.
    pub admin_connections: IntGauge,
    /// The API's handler threads standing by, ready to take the place of
    /// one that blocks.
    pub threads_standing_by: IntGauge,
    /// Alerts raised (stored with their report's result), by instrument
    /// and rule.
    pub alerts: IntCounterVec,
}

impl Metrics {
    /// Creates and registers them all.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "quiesce_http_requests_total",
                "HTTP requests by method, route pattern (unknown: no such route; unread: refused before its head was read) and status code.",
            ),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let request_seconds = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "quiesce_http_request_duration_seconds",
                "From a request's head read to its answer handed over, by method and route pattern.",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 2.0, 18).expect("valid buckets")),
            &["method", "route"],
        )
        .expect("valid metric");
        let alerts = IntCounterVec::new(
            Opts::new(
                "quiesce_alerts_total",
                "Alerts raised, by instrument (a registered one, or unregistered) and rule (phq9-item9: any answer above 0 on PHQ-9 item 9, self-harm; phq9-severe, gad7-severe: a severe total; generic: an item at 3 or more or a total above --alert-total).",
            ),
            &["instrument", "rule"],
        )
        .expect("valid metric");
        let connections = IntGauge::new(
            "quiesce_http_connections_open",
            "Connections the API's listener is serving now.",
        )
        .expect("valid metric");
        let admin_connections = IntGauge::new(
            "quiesce_admin_connections_open",
            "Connections the admin listener is serving now.",
        )
        .expect("valid metric");
        let threads_standing_by = IntGauge::new(
            "quiesce_http_threads_standing_by",
            "The API's handler threads standing by (of --http-threads), each ready to take the place of one that blocks on a slow body, a read or the store. At 0, each more thread that blocks leaves one fewer waiting for requests.",
        )
        .expect("valid metric");
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        let accepted = counter(
            "quiesce_reports_accepted_total",
            "Reports accepted and stored durably.",
        );
        let processed = counter("quiesce_reports_processed_total", "Reports processed.");
        let failed = counter(
            "quiesce_reports_failed_total",
            "Reports failed after their last attempt.",
        );
        let retried = counter(
            "quiesce_reports_retried_total",
            "Failed attempts scheduled again.",
        );
        let backlog = IntGauge::new(
            "quiesce_backlog",
            "Reports accepted and not yet processed or failed.",
        )
        .expect("valid metric");
        let jobs_running = IntGauge::new("quiesce_jobs_running", "Analysis jobs running now.")
            .expect("valid metric");
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric")
        };
        let job_seconds = histogram(
            "quiesce_job_duration_seconds",
            "Analysis job duration.",
            prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets"),
        );
        let commit_batch = histogram(
            "quiesce_store_commit_batch_size",
            "Commands committed per store transaction.",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
        );
        let commit_seconds = histogram(
            "quiesce_store_commit_seconds",
            "Time of one store transaction up to its commit (WAL written, not yet flushed).",
            prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets"),
        );
        let fsync_seconds = histogram(
            "quiesce_store_fsync_seconds",
            "Time of one flush (fdatasync) of the WAL, which makes one or more commits durable.",
            prometheus::exponential_buckets(0.00005, 2.0, 16).expect("valid buckets"),
        );
        let store_failures = counter(
            "quiesce_store_failures_total",
            "Store transactions that could not store what they were asked (a failed commit, a statement the store refused, a failed probe), and failed flushes.",
        );
        let store_healthy = IntGauge::new(
            "quiesce_store_healthy",
            "1 while the store can commit, 0 while its last commit failed (then /readyz is 503).",
        )
        .expect("valid metric");
        store_healthy.set(1);
        let leases_reclaimed = counter(
            "quiesce_leases_reclaimed_total",
            "Claims whose lease ran out, returned to the queue by this replica's reaper.",
        );
        let results_discarded = counter(
            "quiesce_results_discarded_total",
            "Results not stored: the report was no longer claimed by this replica, or was settled already.",
        );
        let redriven = counter(
            "quiesce_reports_redriven_total",
            "Failed reports put back in the queue by an operator (POST /v1/reports/{id}/retry).",
        );
        let claims_released = counter(
            "quiesce_claims_released_total",
            "Claims released unfinished at a stop, for other replicas to take.",
        );
        // The process's CPU, memory, file descriptors and start time
        // (`process_*`), read from /proc at each scrape.
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric names");
        let build_info = prometheus::IntGaugeVec::new(
            Opts::new(
                "quiesce_build_info",
                "Always 1; its labels tell the version of the running binary.",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(build_info))
            .expect("unique metric names");
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(accepted.clone()),
            Box::new(processed.clone()),
            Box::new(failed.clone()),
            Box::new(retried.clone()),
            Box::new(backlog.clone()),
            Box::new(jobs_running.clone()),
            Box::new(job_seconds.clone()),
            Box::new(commit_batch.clone()),
            Box::new(commit_seconds.clone()),
            Box::new(fsync_seconds.clone()),
            Box::new(store_failures.clone()),
            Box::new(store_healthy.clone()),
            Box::new(leases_reclaimed.clone()),
            Box::new(results_discarded.clone()),
            Box::new(claims_released.clone()),
            Box::new(redriven.clone()),
            Box::new(request_seconds.clone()),
            Box::new(connections.clone()),
            Box::new(admin_connections.clone()),
            Box::new(threads_standing_by.clone()),
            Box::new(alerts.clone()),
        ] {
            registry.register(m).expect("unique metric names");
        }
        Metrics {
            registry,
            requests,
            accepted,
            processed,
            failed,
            retried,
            backlog,
            jobs_running,
            job_seconds,
            commit_batch,
            commit_seconds,
            fsync_seconds,
            store_failures,
            store_healthy,
            leases_reclaimed,
            results_discarded,
            claims_released,
            redriven,
            request_seconds,
            connections,
            admin_connections,
            threads_standing_by,
            alerts,
        }
    }

    /// The text exposition, and its content type.
    pub fn render(&self) -> (Vec<u8>, &'static str) {
        let mut out = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(err) = encoder.encode(&self.registry.gather(), &mut out) {
            log::error!("cannot encode metrics: {err}");
        }
        (out, "text/plain; version=0.0.4")
    }
}
