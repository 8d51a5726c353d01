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
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(managed.clone()),
        ] {
            let _ = registry.register(c);
        }
        Self {
            registry,
            reconciles,
            errors,
            duration,
            managed,
        }
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
