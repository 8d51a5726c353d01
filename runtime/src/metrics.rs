//! Prometheus counters of the engine, in a registry of their own that the
//! Kafka layer serves on `/metrics`.
//!
//! The engine keeps plain `u64` totals ([`EngineCounters`],
//! [`OperatorStats`]) so the hot path never touches an atomic;
//! [`EngineMetrics::observe`] publishes the growth since the previous call
//! (call it once per poll loop or checkpoint). Every input record ends up in
//! exactly one of `filtered`, `dead_lettered`, `late` or the window
//! operators (`accepted`/`unassigned`), so nothing is dropped without a
//! counter.

use prometheus::{Encoder, IntCounter, IntCounterVec, Opts, Registry, TextEncoder};

use crate::engine::EngineCounters;
use crate::error::{Result, RuntimeError};
use crate::operator::window_operator::OperatorStats;

/// The engine's counters as Prometheus metrics.
pub struct EngineMetrics {
    registry: Registry,
    records_in: IntCounter,
    records_out: IntCounterVec,
    records_late: IntCounter,
    records_dead_lettered: IntCounterVec,
    records_filtered: IntCounter,
    /// Totals already published.
    seen_counters: EngineCounters,
    seen_stats: OperatorStats,
}

fn metrics_err(e: prometheus::Error) -> RuntimeError {
    RuntimeError::Metrics(e.to_string())
}

impl EngineMetrics {
    /// Registers the counters in a fresh registry.
    pub fn new() -> Result<Self> {
        let registry = Registry::new_custom(Some("streamops".into()), None).map_err(metrics_err)?;
        let records_in = IntCounter::new("records_in_total", "Source records read").map_err(metrics_err)?;
        let records_out = IntCounterVec::new(
            Opts::new("records_out_total", "Window results emitted, by firing"),
            &["firing"],
        )
        .map_err(metrics_err)?;
        let records_late = IntCounter::new(
            "records_late_total",
            "Records past allowed lateness, sent to the late-events output",
        )
        .map_err(metrics_err)?;
        let records_dead_lettered = IntCounterVec::new(
            Opts::new(
                "records_dead_lettered_total",
                "Records sent to the dead-letter output, by reason",
            ),
            &["reason"],
        )
        .map_err(metrics_err)?;
        let records_filtered =
            IntCounter::new("records_filtered_total", "Records the filter dropped").map_err(metrics_err)?;
        registry
            .register(Box::new(records_in.clone()))
            .map_err(metrics_err)?;
        registry
            .register(Box::new(records_out.clone()))
            .map_err(metrics_err)?;
        registry
            .register(Box::new(records_late.clone()))
            .map_err(metrics_err)?;
        registry
            .register(Box::new(records_dead_lettered.clone()))
            .map_err(metrics_err)?;
        registry
            .register(Box::new(records_filtered.clone()))
            .map_err(metrics_err)?;
        Ok(EngineMetrics {
            registry,
            records_in,
            records_out,
            records_late,
            records_dead_lettered,
            records_filtered,
            seen_counters: EngineCounters::default(),
            seen_stats: OperatorStats::default(),
        })
    }

    /// The registry to serve (`/metrics`) or to gather from.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Publishes the growth of the engine's totals since the last call.
    /// Totals are monotonic within an engine; a smaller total (a new engine
    /// after a restore) publishes nothing for that counter until it grows
    /// past the last published value, so counters never go backwards.
    pub fn observe(&mut self, counters: &EngineCounters, stats: &OperatorStats) {
        let grow = |c: &IntCounter, now: u64, seen: &mut u64| {
            if now > *seen {
                c.inc_by(now - *seen);
                *seen = now;
            }
        };
        let seen = &mut self.seen_counters;
        grow(&self.records_in, counters.records_in, &mut seen.records_in);
        grow(&self.records_filtered, counters.filtered, &mut seen.filtered);
        for (reason, n) in &counters.dead_lettered {
            let counter = self.records_dead_lettered.with_label_values(&[*reason]);
            grow(&counter, *n, seen.dead_lettered.entry(reason).or_default());
        }
        let st = &mut self.seen_stats;
        grow(&self.records_late, stats.late_records, &mut st.late_records);
        let out = &self.records_out;
        grow(
            &out.with_label_values(&["early"]),
            stats.results_early,
            &mut st.results_early,
        );
        grow(
            &out.with_label_values(&["onTime"]),
            stats.results_on_time,
            &mut st.results_on_time,
        );
        grow(
            &out.with_label_values(&["late"]),
            stats.results_late,
            &mut st.results_late,
        );
    }

    /// The registry in the Prometheus text exposition format.
    pub fn encode_text(&self) -> Result<String> {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .map_err(metrics_err)?;
        String::from_utf8(buf).map_err(|e| RuntimeError::Metrics(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishes_growth_once() {
        let mut m = EngineMetrics::new().unwrap();
        let mut c = EngineCounters {
            records_in: 10,
            filtered: 2,
            ..Default::default()
        };
        c.dead_lettered.insert("invalid_record", 3);
        let s = OperatorStats {
            late_records: 1,
            results_on_time: 4,
            results_late: 1,
            ..Default::default()
        };
        m.observe(&c, &s);
        m.observe(&c, &s);
        c.records_in = 12;
        m.observe(&c, &s);
        let text = m.encode_text().unwrap();
        for line in [
            "streamops_records_in_total 12",
            "streamops_records_filtered_total 2",
            "streamops_records_late_total 1",
            "streamops_records_dead_lettered_total{reason=\"invalid_record\"} 3",
            "streamops_records_out_total{firing=\"onTime\"} 4",
            "streamops_records_out_total{firing=\"late\"} 1",
            "streamops_records_out_total{firing=\"early\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }
}
