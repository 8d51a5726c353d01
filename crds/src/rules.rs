//! The cross-field rules the apiserver enforces at admission: CEL
//! `x-kubernetes-validations` in the CRD schemas (Kubernetes 1.30+), so
//! `kubectl apply` (and `--dry-run=server`, and an Argo CD sync) refuses a
//! bad spec at once instead of accepting it and reporting `Stalled` later.
//!
//! Each rule names the field it is about (`fieldPath`) and its kind of
//! error (`reason`), so the apiserver's message reads
//! `spec.pipeline.window.slide: Forbidden: ...`: the field and the fix. The
//! same checks stay in code ([`crate::Validation`]) as a second line and for
//! what CEL cannot say; the rules here are inserted into the generated
//! schemas by [`crate::schema::crds`] and listed in `crds/REFERENCE.md`.
//!
//! Transition rules (`oldSelf`) hold what may never change on a
//! StreamTopic: the topic's name, its replication factor, and a partition
//! count that never decreases (Kafka cannot rename topics or remove
//! partitions).

use crate::job::{MAX_WINDOWS_PER_RECORD, RESERVED_OUTPUT_FIELDS, STORAGE_SCHEMES};

/// The kind of field error a rule reports (the apiserver's `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `Required value`: a field the rest of the spec needs is missing.
    Required,
    /// `Forbidden`: a field that must not be set here.
    Forbidden,
    /// `Invalid value`: a value that contradicts another.
    Invalid,
}

impl Reason {
    /// The `reason` value in the schema.
    pub fn as_schema(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Forbidden => "FieldValueForbidden",
            Self::Invalid => "FieldValueInvalid",
        }
    }
}

/// One CEL rule of a CRD schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CelRule {
    /// `StreamJob` or `StreamTopic`.
    pub kind: &'static str,
    /// The schema node the rule sits on, as a field path: `""` (the whole
    /// object), `spec`, `spec.pipeline.window`, `spec.pipeline.aggregations[]`
    /// (each item).
    pub at: &'static str,
    /// The CEL expression; true means valid.
    pub rule: String,
    /// What the user reads after the field and the reason.
    pub message: String,
    /// A CEL expression building the message from the values (the static
    /// `message` stands in if it fails).
    pub message_expression: Option<String>,
    /// The field the message is about, relative to `at` (e.g. `.slide`);
    /// `None`: `at` itself.
    pub field: Option<&'static str>,
    pub reason: Reason,
    /// Compares with the stored object (`oldSelf`): checked on updates only.
    pub transition: bool,
}

impl CelRule {
    fn new(kind: &'static str, at: &'static str, rule: impl Into<String>) -> Self {
        CelRule {
            kind,
            at,
            rule: rule.into(),
            message: String::new(),
            message_expression: None,
            field: None,
            reason: Reason::Invalid,
            transition: false,
        }
    }

    fn field(mut self, field: &'static str, reason: Reason, message: impl Into<String>) -> Self {
        self.field = (!field.is_empty()).then_some(field);
        self.reason = reason;
        self.message = message.into();
        self
    }

    fn explain(mut self, expression: &str) -> Self {
        self.message_expression = Some(expression.to_string());
        self
    }

    fn transition(mut self) -> Self {
        self.transition = true;
        self
    }

    /// The rule as an `x-kubernetes-validations` entry.
    pub fn to_schema(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "rule": self.rule,
            "message": self.message,
            "reason": self.reason.as_schema(),
        });
        if let Some(f) = self.field {
            v["fieldPath"] = f.into();
        }
        if let Some(e) = &self.message_expression {
            v["messageExpression"] = e.as_str().into();
        }
        v
    }
}

/// Durations are Go-style strings (`500ms`, `1m30s`), which CEL's
/// `duration()` reads. (A `messageExpression` with `string(int)` in it is
/// refused by the apiserver's cost estimate, so messages name the status
/// field that holds the value instead.)
fn at_least(field: &str, min: &str) -> String {
    format!("!has(self.{field}) || duration(self.{field}) >= duration('{min}')")
}

/// Every rule of both CRDs, in schema order.
pub fn rules() -> Vec<CelRule> {
    let job = "StreamJob";
    let topic = "StreamTopic";
    let window = "spec.pipeline.window";
    let agg = "spec.pipeline.aggregations[]";
    let reserved = RESERVED_OUTPUT_FIELDS
        .iter()
        .map(|f| format!("'{f}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let schemes = STORAGE_SCHEMES.join("|");
    let scheme_list = STORAGE_SCHEMES
        .iter()
        .map(|s| format!("{s}://"))
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        // The window: which fields each type takes.
        CelRule::new(job, window, "self.type == 'session' || has(self.size)").field(
            ".size",
            Reason::Required,
            "a tumbling or sliding window needs size, e.g. size: 1m",
        ),
        CelRule::new(job, window, "self.type != 'session' || !has(self.size)").field(
            ".size",
            Reason::Forbidden,
            "a session window has no size (a session ends after gap without records); remove size",
        ),
        CelRule::new(job, window, "self.type != 'sliding' || has(self.slide)").field(
            ".slide",
            Reason::Required,
            "a sliding window needs slide (how often a window starts, at most size), e.g. slide: 10s",
        ),
        CelRule::new(job, window, "self.type == 'sliding' || !has(self.slide)").field(
            ".slide",
            Reason::Forbidden,
            "only a sliding window has a slide; remove slide or use type: sliding",
        ),
        CelRule::new(job, window, "self.type != 'session' || has(self.gap)").field(
            ".gap",
            Reason::Required,
            "a session window needs gap (the inactivity that closes a session), e.g. gap: 5m",
        ),
        CelRule::new(job, window, "self.type == 'session' || !has(self.gap)").field(
            ".gap",
            Reason::Forbidden,
            "only a session window has a gap; remove gap or use type: session",
        ),
        CelRule::new(job, window, at_least("size", "1ms")).field(".size", Reason::Invalid, "must be at least 1ms"),
        CelRule::new(job, window, at_least("slide", "1ms")).field(
            ".slide",
            Reason::Invalid,
            "must be at least 1ms",
        ),
        CelRule::new(job, window, at_least("gap", "1ms")).field(".gap", Reason::Invalid, "must be at least 1ms"),
        CelRule::new(
            job,
            window,
            "!has(self.size) || !has(self.slide) || duration(self.slide) <= duration(self.size)",
        )
        .field(
            ".slide",
            Reason::Invalid,
            "slide is longer than size, so records between windows would be lost; make slide at most size",
        ),
        // ceil(size / slide) in whole milliseconds, as the runtime assigns them.
        CelRule::new(
            job,
            window,
            format!(
                "!has(self.size) || !has(self.slide) || duration(self.slide) < duration('1ms') || \
                 (duration(self.size).getMilliseconds() + duration(self.slide).getMilliseconds() - 1) \
                 / duration(self.slide).getMilliseconds() <= {MAX_WINDOWS_PER_RECORD}"
            ),
        )
        .field(
            ".slide",
            Reason::Invalid,
            format!(
                "size / slide puts every record in more than {MAX_WINDOWS_PER_RECORD} windows; use a longer slide"
            ),
        ),
        // Aggregations: unique names, the fields each function takes.
        CelRule::new(
            job,
            "spec.pipeline.aggregations",
            "self.all(a, self.exists_one(b, b.name == a.name))",
        )
        .field(
            "",
            Reason::Invalid,
            "two aggregations have the same name, and each name is an output field; rename one",
        ),
        CelRule::new(job, agg, format!("!(self.name in [{reserved}])")).field(
            ".name",
            Reason::Invalid,
            format!(
                "the runtime writes the output fields {} itself; pick another name",
                RESERVED_OUTPUT_FIELDS.join(", ")
            ),
        ),
        CelRule::new(job, agg, "self.function == 'count' || has(self.field)").field(
            ".field",
            Reason::Required,
            "every function but count needs field, the expression whose values are aggregated, e.g. field: \
             record.amount",
        ),
        CelRule::new(job, agg, "self.function != 'topK' || has(self.k)").field(
            ".k",
            Reason::Required,
            "topK needs k, how many top values to keep",
        ),
        CelRule::new(job, agg, "self.function == 'topK' || !has(self.k)").field(
            ".k",
            Reason::Forbidden,
            "only topK takes k; remove it",
        ),
        // Steps: unique names, each a filter or a map.
        CelRule::new(
            job,
            "spec.pipeline.steps",
            "self.all(a, self.exists_one(b, b.name == a.name))",
        )
        .field(
            "",
            Reason::Invalid,
            "two steps have the same name, which dead letters and change verdicts identify them by; rename one",
        ),
        CelRule::new(job, "spec.pipeline.steps[]", "!has(self.filter) || !has(self.map)").field(
            ".map",
            Reason::Forbidden,
            "a step is a filter or a map, not both; make it two steps",
        ),
        CelRule::new(
            job,
            "spec.pipeline.steps[]",
            "!has(self.route) || (!has(self.filter) && !has(self.map))",
        )
        .field(
            ".route",
            Reason::Forbidden,
            "a route step has only route; put the filter or map in a step of its own",
        ),
        CelRule::new(
            job,
            "spec.pipeline.steps[]",
            "has(self.filter) || has(self.map) || has(self.route)",
        )
        .field(
            "",
            Reason::Required,
            "a step needs a filter (a CEL predicate over record), a map (output field -> CEL expression) or a \
             route (a list of {when, to})",
        ),
        // Result steps: the same.
        CelRule::new(
            job,
            "spec.pipeline.resultSteps",
            "self.all(a, self.exists_one(b, b.name == a.name))",
        )
        .field(
            "",
            Reason::Invalid,
            "two steps have the same name, which dead letters and change verdicts identify them by; rename one",
        ),
        CelRule::new(job, "spec.pipeline.resultSteps[]", "!has(self.filter) || !has(self.map)").field(
            ".map",
            Reason::Forbidden,
            "a step is a filter or a map, not both; make it two steps",
        ),
        CelRule::new(job, "spec.pipeline.resultSteps[]", "!has(self.route)").field(
            ".route",
            Reason::Forbidden,
            "a result step cannot route; route records in steps",
        ),
        CelRule::new(job, "spec.pipeline.resultSteps[]", "has(self.filter) || has(self.map) || has(self.route)").field(
            "",
            Reason::Required,
            "a step needs a filter (a CEL predicate over record) or a map (output field -> CEL expression)",
        ),
        // A windowed pipeline or a stateless one: keyBy, window and
        // aggregations together, and what only windows read only with them.
        CelRule::new(job, "spec.pipeline", "has(self.window) == has(self.keyBy)").field(
            ".keyBy",
            Reason::Invalid,
            "keyBy, window and aggregations come together: all three for a windowed job, none for a stateless one",
        ),
        CelRule::new(job, "spec.pipeline", "has(self.window) == has(self.aggregations)").field(
            ".aggregations",
            Reason::Invalid,
            "keyBy, window and aggregations come together: all three for a windowed job, none for a stateless one",
        ),
        CelRule::new(job, "spec.pipeline", "has(self.window) || !has(self.resultSteps)").field(
            ".resultSteps",
            Reason::Forbidden,
            "resultSteps run on window results; a stateless job has none (put the steps in steps)",
        ),
        CelRule::new(job, "spec.pipeline", "has(self.window) || !has(self.allowedLateness)").field(
            ".allowedLateness",
            Reason::Forbidden,
            "only used with a window; remove it from a stateless job",
        ),
        CelRule::new(job, "spec.pipeline", "has(self.window) || !has(self.emit)").field(
            ".emit",
            Reason::Forbidden,
            "only used with a window; remove it from a stateless job",
        ),
        CelRule::new(job, "spec", "!has(self.pipeline.window) || has(self.source.eventTime)").field(
            ".source.eventTime",
            Reason::Required,
            "a windowed job needs eventTime, where each record's event time comes from, e.g. field: record.ts",
        ),
        CelRule::new(job, "spec", "has(self.pipeline.window) || !has(self.source.eventTime)").field(
            ".source.eventTime",
            Reason::Forbidden,
            "a stateless job (no window) reads no event time; remove eventTime",
        ),
        CelRule::new(job, "spec", "has(self.pipeline.window) || !has(self.source.watermark)").field(
            ".source.watermark",
            Reason::Forbidden,
            "a stateless job (no window) has no watermark; remove it",
        ),
        CelRule::new(job, "spec", "has(self.pipeline.window) || !has(self.lateEvents)").field(
            ".lateEvents",
            Reason::Forbidden,
            "a stateless job (no window) has no late events; remove lateEvents",
        ),
        CelRule::new(job, "spec", "!has(self.pipeline.window) || !has(self.sink.key)").field(
            ".sink.key",
            Reason::Forbidden,
            "a window result's Kafka key is its keyBy key; sink.key is for stateless jobs",
        ),
        CelRule::new(job, "spec.pipeline.keyBy[]", "self.trim() != ''").field(
            "",
            Reason::Invalid,
            "an empty key expression; write one over record, e.g. record.user_id",
        ),
        // Topics: no source twice, no output that is a source or another output.
        CelRule::new(job, "spec.source.topics", "self.all(t, self.exists_one(u, u == t))").field(
            "",
            Reason::Invalid,
            "a topic is listed twice; list each source topic once",
        ),
        CelRule::new(
            job,
            "spec",
            "!has(self.pipeline.steps) || self.pipeline.steps.all(s, !has(s.route) || \
             s.route.all(r, !(r.to in self.source.topics)))",
        )
        .field(
            ".pipeline.steps",
            Reason::Invalid,
            "a route sends records to a source topic, so the job would read its own output; route to another topic",
        ),
        CelRule::new(job, "spec", "!(self.sink.topic in self.source.topics)").field(
            ".sink.topic",
            Reason::Invalid,
            "the sink is also a source topic, so the job would read its own output; write to another topic",
        ),
        CelRule::new(
            job,
            "spec",
            "!has(self.lateEvents) || !(self.lateEvents.topic in self.source.topics)",
        )
        .field(
            ".lateEvents.topic",
            Reason::Invalid,
            "late events would go to a source topic, so the job would read its own output; use another topic",
        ),
        CelRule::new(
            job,
            "spec",
            "!has(self.deadLetter) || !(self.deadLetter.topic in self.source.topics)",
        )
        .field(
            ".deadLetter.topic",
            Reason::Invalid,
            "dead letters would go to a source topic, so the job would read its own output; use another topic",
        ),
        CelRule::new(
            job,
            "spec",
            "!has(self.lateEvents) || self.lateEvents.topic != self.sink.topic",
        )
        .field(
            ".lateEvents.topic",
            Reason::Invalid,
            "already the sink topic; give late events their own topic",
        ),
        CelRule::new(
            job,
            "spec",
            "!has(self.deadLetter) || self.deadLetter.topic != self.sink.topic",
        )
        .field(
            ".deadLetter.topic",
            Reason::Invalid,
            "already the sink topic; give dead letters their own topic",
        ),
        CelRule::new(
            job,
            "spec",
            "!has(self.deadLetter) || !has(self.lateEvents) || self.deadLetter.topic != self.lateEvents.topic",
        )
        .field(
            ".deadLetter.topic",
            Reason::Invalid,
            "already the late-events topic; give dead letters their own topic",
        ),
        // The autoscaler's bounds and target.
        CelRule::new(
            job,
            "spec.autoscaler",
            "!has(self.minParallelism) || !has(self.maxParallelism) || self.minParallelism <= self.maxParallelism",
        )
        .field(
            ".minParallelism",
            Reason::Invalid,
            "is above maxParallelism; make minParallelism at most maxParallelism",
        ),
        CelRule::new(job, "spec.autoscaler", at_least("targetLag", "1s")).field(
            ".targetLag",
            Reason::Invalid,
            "must be at least 1s (lag is observed in whole seconds)",
        ),
        // Checkpoints.
        CelRule::new(job, "spec.checkpoint", at_least("interval", "100ms")).field(
            ".interval",
            Reason::Invalid,
            "must be at least 100ms (each checkpoint is a Kafka transaction)",
        ),
        CelRule::new(
            job,
            "spec.checkpoint",
            format!("!has(self.storage) || self.storage.matches('^({schemes})://')"),
        )
        .field(
            ".storage",
            Reason::Invalid,
            format!("not a storage URL; use one of {scheme_list}"),
        ),
        // StreamTopic: what Kafka cannot change, once the topic exists (the
        // status the operator wrote says so). Each rule passes when its
        // field is unchanged, so the operator's status updates never trip
        // it, and a spec whose topic was never created can still be fixed.
        CelRule::new(
            topic,
            "",
            format!(
                "{name} == {old_name} || !has(oldSelf.status) || !has(oldSelf.status.topicName) || \
                 {name} == oldSelf.status.topicName",
                name = "(has(self.spec.topicName) ? self.spec.topicName : self.metadata.name)",
                old_name = "(has(oldSelf.spec.topicName) ? oldSelf.spec.topicName : oldSelf.metadata.name)",
            ),
        )
        .field(
            ".spec.topicName",
            Reason::Forbidden,
            "the Kafka topic cannot be renamed (Kafka cannot rename topics); restore spec.topicName, or create a \
             new StreamTopic for the new name",
        )
        .explain(
            "'the Kafka topic ' + oldSelf.status.topicName + ' cannot be renamed (Kafka cannot rename topics); \
             restore spec.topicName, or create a new StreamTopic for the new name'",
        )
        .transition(),
        CelRule::new(
            topic,
            "",
            "self.spec.partitions >= oldSelf.spec.partitions || !has(oldSelf.status) || \
             !has(oldSelf.status.partitions) || self.spec.partitions >= oldSelf.status.partitions",
        )
        .field(
            ".spec.partitions",
            Reason::Forbidden,
            "cannot go below the topic's partition count, status.partitions (Kafka cannot remove partitions)",
        )
        .transition(),
        CelRule::new(
            topic,
            "",
            "(has(self.spec.replicationFactor) == has(oldSelf.spec.replicationFactor) && \
             (!has(self.spec.replicationFactor) || self.spec.replicationFactor == oldSelf.spec.replicationFactor)) || \
             !has(self.spec.replicationFactor) || !has(oldSelf.status) || !has(oldSelf.status.replicationFactor) || \
             self.spec.replicationFactor == oldSelf.status.replicationFactor",
        )
        .field(
            ".spec.replicationFactor",
            Reason::Forbidden,
            "differs from the topic's replication factor, status.replicationFactor, and the operator does not \
             reassign replicas; set it to that value or remove it",
        )
        .transition(),
    ]
}

/// The rules of one kind.
pub fn rules_of(kind: &str) -> Vec<CelRule> {
    rules().into_iter().filter(|r| r.kind == kind).collect()
}

/// The JSON pointer of the schema node at field path `at` inside a CRD's
/// `openAPIV3Schema`: `spec.pipeline.aggregations[]` ->
/// `/properties/spec/properties/pipeline/properties/aggregations/items`.
pub fn schema_pointer(at: &str) -> String {
    let mut out = String::new();
    for part in at.split('.').filter(|p| !p.is_empty()) {
        match part.strip_suffix("[]") {
            Some(name) => out.push_str(&format!("/properties/{name}/items")),
            None => out.push_str(&format!("/properties/{part}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_follow_properties_and_items() {
        assert_eq!(schema_pointer(""), "");
        assert_eq!(
            schema_pointer("spec.pipeline.aggregations[]"),
            "/properties/spec/properties/pipeline/properties/aggregations/items"
        );
    }

    /// The API tests' corpus of refused specs (`e2e/manifests/cel`): each
    /// file with the exact lines the apiserver answers (`# expect:`).
    fn corpus() -> Vec<(String, String, Vec<String>)> {
        let root = std::path::PathBuf::from(
            std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string()),
        );
        let dir = root.join("../e2e/manifests/cel");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let expects = text
                .lines()
                .filter_map(|l| l.strip_prefix("# expect: "))
                .map(str::to_string)
                .collect();
            out.push((path.display().to_string(), text, expects));
        }
        out
    }

    #[test]
    fn every_job_rule_is_proven_by_the_api_tests_corpus() {
        let corpus = corpus();
        assert!(corpus.len() >= 15, "{} files", corpus.len());
        for rule in rules_of("StreamJob") {
            let suffix = format!(": {}", rule.message);
            assert!(
                corpus
                    .iter()
                    .any(|(_, _, e)| e.iter().any(|l| l.ends_with(&suffix))),
                "no refused example in e2e/manifests/cel for {rule:?}"
            );
        }
    }

    #[test]
    fn the_operator_refuses_what_the_apiserver_refuses() {
        // The in-code checks are the second line (and what runs on a spec an
        // older CRD let in): every field a CEL rule refuses, they refuse too.
        use crate::validate::Validation;
        for (file, text, expects) in corpus() {
            let job: crate::StreamJob =
                serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
            let errors = job.spec.validate();
            for line in expects {
                let field = line.split(": ").next().unwrap();
                assert!(
                    errors.iter().any(|e| e.field.starts_with(field)),
                    "{file}: the apiserver refuses {field}, the operator's checks do not: {errors:?}"
                );
            }
        }
    }

    #[test]
    fn every_rule_has_a_message_and_transitions_use_old_self() {
        for r in rules() {
            assert!(!r.message.is_empty(), "{r:?}");
            assert_eq!(r.transition, r.rule.contains("oldSelf"), "{r:?}");
        }
    }
}
