//! Stage 1: from a source record's value bytes to a [`KeyedRecord`]:
//! decode, filter, event time, group key, aggregation inputs.

use std::fmt;
use std::sync::Arc;

use super::KeyedRecord;
use crate::aggregate::{AggInput, AggregateFunction, Number, stable_hash64};
use crate::codec::{FieldPaths, RecordDecoder, Scalar};
use crate::expr::Expr;
use crate::time::{EventTime, TimeFormat, parse_rfc3339_ms};

/// The compiled stage-1 half of a plan.
pub struct KeyingPlan {
    pub decoder: Box<dyn RecordDecoder>,
    pub paths: FieldPaths,
    pub filter: Option<Expr>,
    /// `spec.pipeline.steps`, run after `filter` ([`super::steps`]).
    pub steps: super::steps::Steps,
    /// `None`: a stateless job (no event time, key or aggregations; stage 1
    /// passes records on to the sink).
    pub event_time: Option<Expr>,
    pub time_format: TimeFormat,
    pub key_by: Vec<Expr>,
    /// `(spec name, function, input expression)`; `None` input only for `count`.
    pub aggregations: Vec<(String, AggregateFunction, Option<Expr>)>,
    /// `spec.sink.key` of a stateless job.
    pub sink_key: Option<Expr>,
    /// The CEL environment of the job's expressions
    /// ([`super::steps::environment`]).
    pub env: Arc<cel::Env>,
}

impl KeyingPlan {
    /// Whether any expression needs the CEL interpreter (then each record is
    /// additionally decoded in full).
    fn needs_cel(&self) -> bool {
        let mut exprs = self
            .filter
            .iter()
            .chain(self.event_time.iter())
            .chain(self.sink_key.iter())
            .chain(self.key_by.iter())
            .chain(self.aggregations.iter().filter_map(|a| a.2.as_ref()));
        exprs.any(|e| !e.is_path())
    }
}

/// Why a record went to the dead-letter output. [`DeadLetterReason::kind`]
/// is the metric label.
#[derive(Debug, Clone, PartialEq)]
pub enum DeadLetterReason {
    InvalidRecord(String),
    MissingEventTime,
    InvalidEventTime(String),
    /// An expression failed or returned the wrong type; `field` is its spec path.
    Expression {
        field: String,
        message: String,
    },
    MissingKey {
        index: usize,
    },
    /// `spec.sink.key` found no value, or an object or a list.
    InvalidSinkKey(String),
    /// A named step failed on the record: `field` is its spec path,
    /// `expression` its CEL (empty when the value it made could not be
    /// written), `error` what happened.
    Step {
        field: String,
        step: String,
        expression: String,
        error: String,
    },
    /// A non-numeric or non-finite value for a numeric aggregation.
    InvalidAggregateInput {
        aggregation: String,
        message: String,
    },
}

impl DeadLetterReason {
    /// For a step that failed: (step name, expression), the dead letter's
    /// `streamops-step` and `streamops-expression` headers.
    pub fn step(&self) -> Option<(String, String)> {
        match self {
            DeadLetterReason::Step { step, expression, .. } => Some((step.clone(), expression.clone())),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            DeadLetterReason::InvalidRecord(_) => "invalid_record",
            DeadLetterReason::MissingEventTime => "missing_event_time",
            DeadLetterReason::InvalidEventTime(_) => "invalid_event_time",
            DeadLetterReason::Expression { .. } | DeadLetterReason::Step { .. } => "expression_error",
            DeadLetterReason::MissingKey { .. } | DeadLetterReason::InvalidSinkKey(_) => "missing_key",
            DeadLetterReason::InvalidAggregateInput { .. } => "invalid_aggregate_input",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterReason::InvalidRecord(m) => write!(f, "{m}"),
            DeadLetterReason::MissingEventTime => write!(f, "event time field is missing or null"),
            DeadLetterReason::InvalidEventTime(m) => write!(f, "invalid event time: {m}"),
            DeadLetterReason::Expression { field, message } => write!(f, "{field}: {message}"),
            DeadLetterReason::Step {
                field,
                expression,
                error,
                ..
            } if expression.is_empty() => write!(f, "{field}: {error}"),
            DeadLetterReason::Step {
                field,
                expression,
                error,
                ..
            } => write!(f, "{field}: expression `{expression}` failed: {error}"),
            DeadLetterReason::MissingKey { index } => {
                write!(f, "spec.pipeline.keyBy[{index}]: field is missing")
            }
            DeadLetterReason::InvalidSinkKey(m) => write!(f, "spec.sink.key: {m}"),
            DeadLetterReason::InvalidAggregateInput { aggregation, message } => {
                write!(f, "aggregation {aggregation:?}: {message}")
            }
        }
    }
}

/// What stage 1 made of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOutcome {
    Keyed,
    /// The filter returned false.
    Filtered,
    /// A stateless job kept the record: it goes to the sink (as the last
    /// `map` made it, [`KeyingStage::mapped`]) with this key.
    Passed(SinkKey),
    /// A `route` step sent it to route target `.0` ([`super::steps::Steps::target`]),
    /// as the last `map` made it ([`KeyingStage::mapped`]).
    Routed(usize),
}

/// The Kafka key of a record a stateless job writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKey {
    /// The source record's key (no `spec.sink.key`).
    Input,
    /// `spec.sink.key` was null: no key.
    Absent,
    /// `spec.sink.key`'s value, in [`KeyedRecord::group_key`].
    Computed,
}

const INLINE_SLOTS: usize = 8;

/// Runs a [`KeyingPlan`] record by record, reusing buffers.
pub struct KeyingStage {
    plan: Arc<KeyingPlan>,
    needs_cel: bool,
    scratch: Vec<u8>,
    /// The record a `map` step made of the last one keyed, as JSON.
    mapped: Vec<u8>,
    has_mapped: bool,
}

impl KeyingStage {
    pub fn new(plan: Arc<KeyingPlan>) -> Self {
        let needs_cel = plan.needs_cel();
        KeyingStage {
            plan,
            needs_cel,
            scratch: Vec::new(),
            mapped: Vec::new(),
            has_mapped: false,
        }
    }

    /// After [`KeyingStage::key`] kept a record: the record a `map` step
    /// made of it (what goes on to the keyed stage), or `None` when it is
    /// the source record unchanged.
    pub fn mapped(&self) -> Option<&[u8]> {
        self.has_mapped.then_some(self.mapped.as_slice())
    }

    /// A stateless job's record: its Kafka key by `spec.sink.key` (into
    /// `out.group_key`), or the source record's.
    fn sink_key(
        plan: &KeyingPlan,
        slots: &[Option<Scalar<'_>>],
        ctx: Option<&cel::Context>,
        out: &mut KeyedRecord,
    ) -> Result<KeyOutcome, DeadLetterReason> {
        let Some(expr) = &plan.sink_key else {
            return Ok(KeyOutcome::Passed(SinkKey::Input));
        };
        out.group_key.clear();
        let key = match expr.eval(slots, ctx).map_err(DeadLetterReason::InvalidSinkKey)? {
            None => return Err(DeadLetterReason::InvalidSinkKey("field is missing".into())),
            Some(Scalar::Null) => SinkKey::Absent,
            Some(Scalar::Str(s)) => {
                out.group_key.extend_from_slice(s.as_bytes());
                SinkKey::Computed
            }
            Some(v) => {
                if !v.write_canonical(&mut out.group_key) {
                    return Err(DeadLetterReason::InvalidSinkKey(
                        "the key is an object or a list; pick a string or a number".into(),
                    ));
                }
                SinkKey::Computed
            }
        };
        Ok(KeyOutcome::Passed(key))
    }

    /// Fills `out` from the value bytes of one record. On success `out` holds
    /// the keyed record (unless filtered); on error nothing in `out` is
    /// meaningful.
    pub fn key(&mut self, value: &[u8], out: &mut KeyedRecord) -> Result<KeyOutcome, DeadLetterReason> {
        let plan = &*self.plan;
        self.has_mapped = false;
        let mut value = value;
        if !plan.steps.is_empty() {
            // With steps, `spec.pipeline.filter` is their first one.
            match plan.steps.run_json(value, &mut self.mapped)? {
                super::steps::StepOutcome::Filtered => return Ok(KeyOutcome::Filtered),
                super::steps::StepOutcome::Unchanged => {}
                super::steps::StepOutcome::Mapped => {
                    self.has_mapped = true;
                    value = &self.mapped;
                }
                super::steps::StepOutcome::Routed { target, mapped } => {
                    self.has_mapped = mapped;
                    return Ok(KeyOutcome::Routed(target));
                }
            }
        }
        // Slots on the stack for the common case: no allocation per record.
        let n = plan.paths.slot_count();
        let mut inline: [Option<Scalar<'_>>; INLINE_SLOTS] = [const { None }; INLINE_SLOTS];
        let mut heap: Vec<Option<Scalar<'_>>> = Vec::new();
        let slots: &mut [Option<Scalar<'_>>] = if n <= INLINE_SLOTS {
            &mut inline[..n]
        } else {
            heap.resize(n, None);
            &mut heap
        };
        // Steps that ran parsed the record (or wrote it): with no field to
        // read, a stateless job has nothing left to decode.
        if n > 0 || plan.steps.is_empty() {
            plan.decoder
                .extract(value, &plan.paths, slots)
                .map_err(DeadLetterReason::InvalidRecord)?;
        }
        let ctx = if self.needs_cel {
            let record = plan
                .decoder
                .to_val(value)
                .map_err(DeadLetterReason::InvalidRecord)?;
            let mut ctx = cel::Context::with_env(plan.env.clone());
            ctx.add_variable_as_val("record", record);
            Some(ctx)
        } else {
            None
        };
        let ctx = ctx.as_ref();
        // Allocates only for a record that fails (`map_err`'s argument is
        // built for every record).
        let expr_err = |field: &'static str| {
            move |message: String| DeadLetterReason::Expression {
                field: field.to_string(),
                message,
            }
        };

        if let Some(filter) = &plan.filter {
            match filter
                .eval(slots, ctx)
                .map_err(expr_err("spec.pipeline.filter"))?
            {
                Some(Scalar::Bool(true)) => {}
                Some(Scalar::Bool(false)) | None | Some(Scalar::Null) => {
                    return Ok(KeyOutcome::Filtered);
                }
                Some(other) => {
                    return Err(DeadLetterReason::Expression {
                        field: "spec.pipeline.filter".into(),
                        message: format!("expected a bool, got {other:?}"),
                    });
                }
            }
        }

        let Some(event_time_expr) = &plan.event_time else {
            return Self::sink_key(plan, slots, ctx, out);
        };
        let ts = event_time_expr
            .eval(slots, ctx)
            .map_err(expr_err("spec.source.eventTime.field"))?;
        out.event_time = event_time(ts, plan.time_format)?;

        out.group_key.clear();
        out.group_key.push(b'[');
        for (i, k) in plan.key_by.iter().enumerate() {
            if i > 0 {
                out.group_key.push(b',');
            }
            let v = k
                .eval(slots, ctx)
                .map_err(|m| DeadLetterReason::Expression {
                    field: format!("spec.pipeline.keyBy[{i}]"),
                    message: m,
                })?
                .ok_or(DeadLetterReason::MissingKey { index: i })?;
            if !v.write_canonical(&mut out.group_key) {
                return Err(DeadLetterReason::Expression {
                    field: format!("spec.pipeline.keyBy[{i}]"),
                    message: "key is an object or array".into(),
                });
            }
        }
        out.group_key.push(b']');

        out.inputs.clear();
        out.values.clear();
        for (i, (name, function, expr)) in plan.aggregations.iter().enumerate() {
            let Some(expr) = expr else {
                out.inputs.push(AggInput::Present);
                continue;
            };
            let v = expr.eval(slots, ctx).map_err(|m| DeadLetterReason::Expression {
                field: format!("spec.pipeline.aggregations[{i}].field"),
                message: m,
            })?;
            let invalid = |message: String| DeadLetterReason::InvalidAggregateInput {
                aggregation: name.clone(),
                message,
            };
            let input = match (v, function) {
                (None | Some(Scalar::Null), _) => AggInput::Absent,
                (Some(_), AggregateFunction::Count) => AggInput::Present,
                (Some(Scalar::Int(x)), f) if f.is_numeric() => AggInput::Number(Number::Int(x)),
                (Some(Scalar::Float(x)), f) if f.is_numeric() => {
                    if !x.is_finite() {
                        return Err(invalid(format!("non-finite number {x}")));
                    }
                    AggInput::Number(Number::Float(x))
                }
                (Some(other), f) if f.is_numeric() => {
                    return Err(invalid(format!("not a number: {other:?}")));
                }
                (Some(other), AggregateFunction::TopK { .. }) => {
                    let start = out.values.len();
                    if !other.write_canonical(&mut out.values) {
                        return Err(invalid("topK values must be scalars".into()));
                    }
                    let (Ok(start), Ok(end)) = (u32::try_from(start), u32::try_from(out.values.len())) else {
                        return Err(invalid("topK value is too large".into()));
                    };
                    AggInput::Text { start, end }
                }
                (Some(other), _) => {
                    self.scratch.clear();
                    if !other.write_canonical(&mut self.scratch) {
                        return Err(invalid("distinct values must be scalars".into()));
                    }
                    AggInput::Hash(stable_hash64(&self.scratch))
                }
            };
            out.inputs.push(input);
        }
        Ok(KeyOutcome::Keyed)
    }
}

fn event_time(v: Option<Scalar<'_>>, format: TimeFormat) -> Result<EventTime, DeadLetterReason> {
    match (v, format) {
        (None | Some(Scalar::Null), _) => Err(DeadLetterReason::MissingEventTime),
        (Some(Scalar::Int(t)), TimeFormat::EpochMillis) => Ok(t),
        (Some(Scalar::Float(f)), TimeFormat::EpochMillis) => {
            // Range check keeps the cast exact-enough and never saturating silently.
            if f.is_finite() && f.abs() < 9.0e15 {
                Ok(f.floor() as i64)
            } else {
                Err(DeadLetterReason::InvalidEventTime(format!("{f} is out of range")))
            }
        }
        (Some(Scalar::Int(t)), TimeFormat::EpochSeconds) => t
            .checked_mul(1_000)
            .ok_or_else(|| DeadLetterReason::InvalidEventTime(format!("{t} s is out of range"))),
        (Some(Scalar::Float(f)), TimeFormat::EpochSeconds) => {
            if f.is_finite() && f.abs() < 9.0e12 {
                Ok((f * 1_000.0).floor() as i64)
            } else {
                Err(DeadLetterReason::InvalidEventTime(format!(
                    "{f} s is out of range"
                )))
            }
        }
        (Some(Scalar::Str(s)), TimeFormat::Rfc3339) => parse_rfc3339_ms(&s)
            .ok_or_else(|| DeadLetterReason::InvalidEventTime(format!("{s:?} is not RFC 3339"))),
        (Some(other), TimeFormat::EpochMillis | TimeFormat::EpochSeconds) => Err(
            DeadLetterReason::InvalidEventTime(format!("expected an epoch number, got {other:?}")),
        ),
        (Some(other), TimeFormat::Rfc3339) => Err(DeadLetterReason::InvalidEventTime(format!(
            "expected an RFC 3339 string, got {other:?}"
        ))),
    }
}
