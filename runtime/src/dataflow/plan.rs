//! The executable plan of a job, and its compilation from a job definition.
//!
//! [`JobDefinition`] is the engine's own, CRD-independent description (the
//! pure core does not depend on API types); [`compile`] maps the
//! `StreamJob` spec onto it.

use std::sync::Arc;

use crate::aggregate::AggregateFunction;
use crate::codec::output::RESERVED_FIELDS;
use crate::codec::{FieldPaths, JsonDecoder};
use crate::dataflow::keying::KeyingPlan;
use crate::dataflow::window_operator::{EmitMode, WindowSpec};
use crate::error::{Result, RuntimeError};
use crate::expr::Expr;
use crate::time::TimeFormat;
use crate::window::WindowAssigner;

/// One aggregation as written in a spec.
#[derive(Debug, Clone, PartialEq)]
pub struct AggregationDef {
    pub name: String,
    pub function: AggregateFunction,
    /// Expression of the input; required except for `count`.
    pub field: Option<String>,
}

/// Everything needed to build a [`Plan`], with expressions as source text.
#[derive(Debug, Clone, PartialEq)]
pub struct JobDefinition {
    pub filter: Option<String>,
    /// `spec.pipeline.steps`, run after `filter`, before the key is read.
    pub steps: Vec<super::steps::StepDef>,
    /// `spec.pipeline.resultSteps`, run on each window result.
    pub result_steps: Vec<super::steps::StepDef>,
    /// Unused by a stateless job (`window: None`).
    pub event_time_field: String,
    pub time_format: TimeFormat,
    pub out_of_orderness_ms: i64,
    /// `None`: idle partitions stall the watermark.
    pub idle_timeout_ms: Option<i64>,
    /// Event times further ahead of the wall clock are dead letters.
    pub max_future_skew_ms: i64,
    pub key_by: Vec<String>,
    /// `None`: a stateless job (no key, no window, no aggregations): stage 1
    /// writes every record the steps keep to the sink.
    pub window: Option<WindowAssigner>,
    pub allowed_lateness_ms: i64,
    pub aggregations: Vec<AggregationDef>,
    pub emit: EmitMode,
    /// `spec.sink.key` of a stateless job: the Kafka key of each record
    /// written (`None`: the source record's key).
    pub sink_key: Option<String>,
}

/// A compiled job.
pub struct Plan {
    pub keying: Arc<KeyingPlan>,
    /// `spec.pipeline.resultSteps` ([`super::steps`]).
    pub result_steps: super::steps::Steps,
    /// `None`: a stateless job, whose stage 1 writes to the sink; there is
    /// no stage 2.
    pub window: Option<Arc<WindowSpec>>,
    /// Aggregation names, in output order.
    pub names: Vec<String>,
    pub out_of_orderness_ms: i64,
    pub idle_timeout_ms: Option<i64>,
    pub max_future_skew_ms: i64,
}

impl Plan {
    /// Validates and compiles `def`. Errors name the spec field at fault.
    pub fn build(def: &JobDefinition) -> Result<Plan> {
        if def.out_of_orderness_ms < 0 {
            return Err(RuntimeError::compile(
                "spec.source.watermark.outOfOrderness",
                "must not be negative",
            ));
        }
        if def.idle_timeout_ms.is_some_and(|t| t <= 0) {
            return Err(RuntimeError::compile(
                "spec.source.watermark.idleTimeout",
                "must be positive",
            ));
        }
        if def.allowed_lateness_ms < 0 {
            return Err(RuntimeError::compile(
                "spec.pipeline.allowedLateness",
                "must not be negative",
            ));
        }
        let windowed = def.window.is_some();
        if def.key_by.is_empty() == windowed {
            return Err(RuntimeError::compile(
                "spec.pipeline.keyBy",
                "keyBy, window and aggregations come together (none: a stateless job)",
            ));
        }
        if def.aggregations.is_empty() == windowed {
            return Err(RuntimeError::compile(
                "spec.pipeline.aggregations",
                "keyBy, window and aggregations come together (none: a stateless job)",
            ));
        }
        if windowed && def.sink_key.is_some() {
            return Err(RuntimeError::compile(
                "spec.sink.key",
                "a window result's key is its keyBy key",
            ));
        }
        if let Some(i) = def
            .result_steps
            .iter()
            .position(|s| matches!(s.kind, super::steps::StepKind::Route(_)))
        {
            return Err(RuntimeError::compile(
                format!("spec.pipeline.resultSteps[{i}].route"),
                "a result step cannot route",
            ));
        }
        if !windowed && !def.result_steps.is_empty() {
            return Err(RuntimeError::compile(
                "spec.pipeline.resultSteps",
                "a stateless job has no window results",
            ));
        }
        let mut paths = FieldPaths::default();
        // With steps, the filter runs as their first (on the source record).
        let steps = super::steps::Steps::compile("spec.pipeline.steps", def.filter.as_deref(), &def.steps)?;
        let result_steps =
            super::steps::Steps::compile("spec.pipeline.resultSteps", None, &def.result_steps)?;
        let filter = def
            .filter
            .as_deref()
            .filter(|_| def.steps.is_empty())
            .map(|f| Expr::compile("spec.pipeline.filter", f, &mut paths))
            .transpose()?;
        let event_time = windowed
            .then(|| Expr::compile("spec.source.eventTime.field", &def.event_time_field, &mut paths))
            .transpose()?;
        let sink_key = def
            .sink_key
            .as_deref()
            .map(|k| Expr::compile("spec.sink.key", k, &mut paths))
            .transpose()?;
        let key_by = def
            .key_by
            .iter()
            .enumerate()
            .map(|(i, k)| Expr::compile(&format!("spec.pipeline.keyBy[{i}]"), k, &mut paths))
            .collect::<Result<Vec<_>>>()?;
        let mut aggregations = Vec::new();
        let mut names: Vec<String> = Vec::new();
        for (i, a) in def.aggregations.iter().enumerate() {
            let at = format!("spec.pipeline.aggregations[{i}]");
            if a.name.is_empty() || RESERVED_FIELDS.contains(&a.name.as_str()) || names.contains(&a.name) {
                return Err(RuntimeError::compile(
                    format!("{at}.name"),
                    format!(
                        "{:?} is empty, reserved ({RESERVED_FIELDS:?}) or used twice",
                        a.name
                    ),
                ));
            }
            let field = match (&a.field, a.function) {
                (Some(f), _) => Some(Expr::compile(&format!("{at}.field"), f, &mut paths)?),
                (None, AggregateFunction::Count) => None,
                (None, f) => {
                    return Err(RuntimeError::compile(
                        format!("{at}.field"),
                        format!("{f:?} needs a field"),
                    ));
                }
            };
            names.push(a.name.clone());
            aggregations.push((a.name.clone(), a.function, field));
        }
        let keying = KeyingPlan {
            decoder: Box::new(JsonDecoder),
            paths,
            filter,
            steps,
            event_time,
            time_format: def.time_format,
            key_by,
            aggregations,
            sink_key,
            env: Arc::new(super::steps::environment()?),
        };
        let window = def.window.map(|assigner| {
            Arc::new(WindowSpec {
                assigner,
                allowed_lateness_ms: def.allowed_lateness_ms,
                emit: def.emit,
                functions: def.aggregations.iter().map(|a| a.function).collect(),
            })
        });
        Ok(Plan {
            keying: Arc::new(keying),
            result_steps,
            window,
            names,
            out_of_orderness_ms: def.out_of_orderness_ms,
            max_future_skew_ms: def.max_future_skew_ms,
            idle_timeout_ms: def.idle_timeout_ms,
        })
    }
}

/// Largest `k` of `topK` (the CRD's bound).
pub const MAX_TOP_K: i32 = 1000;

/// Compiles a `StreamJob` spec (defaults applied here, as the CRD has none in
/// its schema). Errors name the spec field, e.g.
/// `spec.pipeline.filter: <CEL parse error>`.
pub fn compile(spec: &streamops_crds::StreamJobSpec) -> Result<Plan> {
    Plan::build(&definition_from_spec(spec)?)
}

/// The engine's [`JobDefinition`] for a `StreamJob` spec.
pub fn definition_from_spec(spec: &streamops_crds::StreamJobSpec) -> Result<JobDefinition> {
    use streamops_crds::job as api;
    let ms = |field: &str, d: &streamops_crds::DurationSpec| -> Result<i64> {
        i64::try_from(d.as_millis()).map_err(|_| RuntimeError::compile(field, "duration is too large"))
    };
    let required = |field: &str, d: &Option<streamops_crds::DurationSpec>| -> Result<i64> {
        match d {
            Some(d) => ms(field, d),
            None => Err(RuntimeError::compile(field, "is required for this window type")),
        }
    };
    let window = spec
        .pipeline
        .window
        .as_ref()
        .map(|w| -> Result<WindowAssigner> {
            Ok(match w.kind {
                api::WindowKind::Tumbling => {
                    WindowAssigner::tumbling(required("spec.pipeline.window.size", &w.size)?)
                        .map_err(|e| RuntimeError::compile("spec.pipeline.window.size", e))?
                }
                api::WindowKind::Sliding => WindowAssigner::sliding(
                    required("spec.pipeline.window.size", &w.size)?,
                    required("spec.pipeline.window.slide", &w.slide)?,
                )
                .map_err(|e| RuntimeError::compile("spec.pipeline.window", e))?,
                api::WindowKind::Session => {
                    WindowAssigner::session(required("spec.pipeline.window.gap", &w.gap)?)
                        .map_err(|e| RuntimeError::compile("spec.pipeline.window.gap", e))?
                }
            })
        })
        .transpose()?;
    let event_time = match (&spec.source.event_time, window.is_some()) {
        (Some(et), _) => Some(et),
        (None, true) => {
            return Err(RuntimeError::compile(
                "spec.source.eventTime",
                "is required with a window",
            ));
        }
        (None, false) => None,
    };
    let watermark = spec.source.watermark.as_ref();
    let out_of_orderness_ms = match watermark.and_then(|w| w.out_of_orderness.as_ref()) {
        Some(d) => ms("spec.source.watermark.outOfOrderness", d)?,
        None => 0,
    };
    let idle_timeout_ms = watermark
        .and_then(|w| w.idle_timeout.as_ref())
        .map(|d| ms("spec.source.watermark.idleTimeout", d))
        .transpose()?;
    let max_future_skew_ms = match event_time.and_then(|e| e.max_future_skew.as_ref()) {
        Some(d) => ms("spec.source.eventTime.maxFutureSkew", d)?,
        None => api::defaults::MAX_FUTURE_SKEW_MS as i64,
    };
    let allowed_lateness_ms = match &spec.pipeline.allowed_lateness {
        Some(d) => ms("spec.pipeline.allowedLateness", d)?,
        None => 0,
    };
    let aggregations = spec
        .pipeline
        .aggregations
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let function = match a.function {
                api::AggregateFunction::Count => AggregateFunction::Count,
                api::AggregateFunction::Sum => AggregateFunction::Sum,
                api::AggregateFunction::Min => AggregateFunction::Min,
                api::AggregateFunction::Max => AggregateFunction::Max,
                api::AggregateFunction::Avg => AggregateFunction::Avg,
                api::AggregateFunction::DistinctCount => AggregateFunction::DistinctCount,
                api::AggregateFunction::TopK => match a.k {
                    Some(k @ 1..=MAX_TOP_K) => AggregateFunction::TopK { k: k as u32 },
                    Some(k) => {
                        return Err(RuntimeError::compile(
                            format!("spec.pipeline.aggregations[{i}].k"),
                            format!("{k} is outside 1..={MAX_TOP_K}"),
                        ));
                    }
                    None => {
                        return Err(RuntimeError::compile(
                            format!("spec.pipeline.aggregations[{i}].k"),
                            "is required for topK",
                        ));
                    }
                },
            };
            Ok(AggregationDef {
                name: a.name.clone(),
                function,
                field: a.field.clone(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(JobDefinition {
        filter: spec.pipeline.filter.clone(),
        steps: super::steps::from_spec("spec.pipeline.steps", &spec.pipeline.steps)?,
        result_steps: super::steps::from_spec("spec.pipeline.resultSteps", &spec.pipeline.result_steps)?,
        event_time_field: event_time.map(|e| e.field.clone()).unwrap_or_default(),
        time_format: match event_time.and_then(|e| e.format).unwrap_or_default() {
            api::TimeFormat::EpochMillis => TimeFormat::EpochMillis,
            api::TimeFormat::EpochSeconds => TimeFormat::EpochSeconds,
            api::TimeFormat::Rfc3339 => TimeFormat::Rfc3339,
        },
        out_of_orderness_ms,
        idle_timeout_ms,
        max_future_skew_ms,
        key_by: spec.pipeline.key_by.clone(),
        window,
        allowed_lateness_ms,
        aggregations,
        emit: match spec.pipeline.emit.unwrap_or_default() {
            api::EmitMode::OnWindowClose => EmitMode::OnWindowClose,
            api::EmitMode::OnUpdate => EmitMode::OnUpdate,
        },
        sink_key: spec.sink.key.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(pipeline: serde_json::Value) -> streamops_crds::StreamJobSpec {
        serde_json::from_value(serde_json::json!({
            "source": {
                "topics": ["clicks"],
                "eventTime": {"field": "record.ts"},
                "watermark": {"outOfOrderness": "5s"}
            },
            "pipeline": pipeline,
            "sink": {"topic": "out"}
        }))
        .unwrap()
    }

    #[test]
    fn compiles_a_crd_spec() {
        let s = spec(serde_json::json!({
            "filter": "record.amount > 0.0",
            "keyBy": ["record.user_id"],
            "window": {"type": "sliding", "size": "10s", "slide": "2s"},
            "allowedLateness": "1m",
            "aggregations": [
                {"name": "clicks", "function": "count"},
                {"name": "revenue", "function": "sum", "field": "record.amount"}
            ],
            "emit": "onUpdate"
        }));
        let d = definition_from_spec(&s).unwrap();
        assert_eq!(
            d.window,
            Some(WindowAssigner::Sliding {
                size: 10_000,
                slide: 2_000
            })
        );
        assert_eq!(
            (d.out_of_orderness_ms, d.allowed_lateness_ms, d.idle_timeout_ms),
            (5_000, 60_000, None)
        );
        assert_eq!(d.emit, EmitMode::OnUpdate);
        let plan = compile(&s).unwrap();
        assert_eq!(plan.names, vec!["clicks", "revenue"]);
    }

    #[test]
    fn errors_name_the_spec_field() {
        let bad_filter = spec(serde_json::json!({
            "filter": "record.amount >",
            "keyBy": ["record.user_id"],
            "window": {"type": "tumbling", "size": "10s"},
            "aggregations": [{"name": "clicks", "function": "count"}]
        }));
        let err = compile(&bad_filter).err().unwrap().to_string();
        assert!(err.starts_with("spec.pipeline.filter: "), "{err}");
        let no_gap = spec(serde_json::json!({
            "keyBy": ["record.user_id"],
            "window": {"type": "session"},
            "aggregations": [{"name": "clicks", "function": "count"}]
        }));
        let err = compile(&no_gap).err().unwrap().to_string();
        assert!(err.starts_with("spec.pipeline.window.gap: "), "{err}");
        let top_k = |k: serde_json::Value| {
            spec(serde_json::json!({
                "keyBy": ["record.user_id"],
                "window": {"type": "tumbling", "size": "1s"},
                "aggregations": [{"name": "pages", "function": "topK", "field": "record.page", "k": k}]
            }))
        };
        let d = definition_from_spec(&top_k(serde_json::json!(3))).unwrap();
        assert_eq!(d.aggregations[0].function, AggregateFunction::TopK { k: 3 });
        for bad in [
            serde_json::json!(0),
            serde_json::json!(1001),
            serde_json::Value::Null,
        ] {
            let err = compile(&top_k(bad)).err().unwrap().to_string();
            assert!(err.starts_with("spec.pipeline.aggregations[0].k: "), "{err}");
        }
    }
}
