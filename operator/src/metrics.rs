//! Prometheus metrics of the controllers.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    managed: IntGaugeVec,
    job_operations: IntCounterVec,
    savepoint_duration: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("streamops".into()), None).unwrap_or_default();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "reconciles_total",
                "Reconciliations by controller and result (ok, error)",
            ),
            &["controller", "result"],
        )
        .expect("static metric definition");
        let errors = IntCounterVec::new(
            Opts::new(
                "reconcile_errors_total",
                "Reconcile failures by controller and reason",
            ),
            &["controller", "reason"],
        )
        .expect("static metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Time per reconciliation")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            &["controller"],
        )
        .expect("static metric definition");
        let managed = IntGaugeVec::new(
            Opts::new(
                "topics_managed",
                "StreamTopics whose Kafka topic the operator manages (created or adopted)",
            ),
            &["ownership"],
        )
        .expect("static metric definition");
        let job_operations = IntCounterVec::new(
            Opts::new(
                "job_operations_total",
                "StreamJob operations by kind (savepoint, upgrade, rollback, savepoint_delete) and result",
            ),
            &["operation", "result"],
        )
        .expect("static metric definition");
        let savepoint_duration = HistogramVec::new(
            HistogramOpts::new(
                "job_savepoint_duration_seconds",
                "Time from requesting a savepoint to every pod reporting it complete",
            )
            .buckets(vec![0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0]),
            &[],
        )
        .expect("static metric definition");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(managed.clone()),
            Box::new(job_operations.clone()),
            Box::new(savepoint_duration.clone()),
        ] {
            let _ = registry.register(c);
        }
        Self {
            registry,
            reconciles,
            errors,
            duration,
            managed,
            job_operations,
            savepoint_duration,
        }
    }

    /// A StreamJob operation finished: `operation` is savepoint, upgrade or
    /// rollback; `result` succeeded or failed.
    pub fn job_operation(&self, operation: &str, result: &str) {
        self.job_operations.with_label_values(&[operation, result]).inc();
    }

    pub fn savepoint_took(&self, seconds: f64) {
        self.savepoint_duration
            .with_label_values(&[] as &[&str])
            .observe(seconds);
    }

    pub fn reconciled(&self, controller: &str, ok: bool, took: Duration) {
        self.reconciles
            .with_label_values(&[controller, if ok { "ok" } else { "error" }])
            .inc();
        self.duration
            .with_label_values(&[controller])
            .observe(took.as_secs_f64());
    }

    pub fn error(&self, controller: &str, reason: &str) {
        self.errors.with_label_values(&[controller, reason]).inc();
    }

    pub fn set_topics_managed(&self, created: usize, adopted: usize) {
        self.managed
            .with_label_values(&["Created"])
            .set(i64::try_from(created).unwrap_or(i64::MAX));
        self.managed
            .with_label_values(&["Adopted"])
            .set(i64::try_from(adopted).unwrap_or(i64::MAX));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
