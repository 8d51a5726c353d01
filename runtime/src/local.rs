//! A StreamJob run on a bounded list of records, without Kafka or a
//! cluster: `streamops-runtime test`, how a job is tested in a pull request.
//!
//! The same engine code as the pods: the job's spec compiled by
//! [`definition_from_spec`], one [`Task`](crate::dataflow::task::Task) (its
//! stage 1 keying and filtering, its stage 2 windows and aggregates)
//! connected through the in-memory [`Harness`] as the runner connects them
//! through Kafka, in-memory state. What is particular to a bounded input:
//!
//! - one source partition, read in the file's order;
//! - the watermark advances after every record (the pods advance it at each
//!   checkpoint, so on Kafka a record's lateness also depends on when the
//!   checkpoints fall; here it depends on the records alone);
//! - at the end of the input the watermark jumps past every window
//!   ([`END_OF_INPUT`](crate::dataflow::task::END_OF_INPUT), as Flink's final watermark), so every open window
//!   fires, unless the caller keeps them open;
//! - processing time (for `maxFutureSkew` and idleness) is a fixed `now`.
//!
//! [`compare`] is the `--expect` check: the results as a multiset of JSON
//! values (the order of results from different keys is not part of a job's
//! contract).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use streamops_crds::{StreamJobSpec, validate::Validation};

use crate::dataflow::harness::{Harness, HarnessConfig, MemoryBackends};
use crate::dataflow::plan::definition_from_spec;
use crate::dataflow::task::{Out, StateOptions};
use crate::error::{Result, RuntimeError};
use crate::plan::Plan;

/// What a local run produced, in the order it was committed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalRun {
    /// The sink's records (window results), as JSON.
    pub results: Vec<Value>,
    /// Records `lateEvents` would receive.
    pub late: Vec<Value>,
    /// Records the dead-letter topic would receive.
    pub dead_letters: Vec<DeadLetter>,
    /// Records `route` steps sent, with the StreamTopic each went to.
    pub routed: Vec<(String, Value)>,
}

/// A record the job refused, and why (the dead-letter topic's headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Which input record (0-based line of the input).
    pub record: usize,
    pub kind: String,
    pub reason: String,
}

/// Runs `spec` on `records` (each one record's value, as the source topic
/// would hold it) at processing time `now_ms`; with `end_of_input`, every
/// window still open at the end fires.
pub fn run(spec: &StreamJobSpec, records: &[Vec<u8>], now_ms: i64, end_of_input: bool) -> Result<LocalRun> {
    if let Some(why) = spec.validation_message() {
        return Err(RuntimeError::Job(format!("invalid spec: {why}")));
    }
    let definition = definition_from_spec(spec)?;
    let plan = Arc::new(Plan::build(&definition)?);
    let dir = tempfile::tempdir()?;
    let config = HarnessConfig {
        tasks: 1,
        guarantee: spec
            .checkpoint
            .as_ref()
            .and_then(|c| c.guarantee)
            .unwrap_or_default(),
        state: StateOptions::default(),
        dir: dir.path().to_path_buf(),
        key_groups: None,
    };
    let mut h = Harness::new(plan, config, Box::new(MemoryBackends), now_ms)?;
    let mut run = LocalRun::default();
    for record in records {
        h.append(0, None, record)?;
        h.poll_source(0, 1, now_ms)?;
        advance(&mut h, now_ms, &mut run)?;
    }
    if end_of_input {
        h.end_input(0)?;
        advance(&mut h, now_ms, &mut run)?;
    }
    Ok(run)
}

/// One step of the watermark: stage 1 checkpoints (its watermark record
/// goes to the keyed partition), stage 2 reads it, and a second checkpoint
/// commits what that fired.
fn advance(h: &mut Harness, now_ms: i64, run: &mut LocalRun) -> Result<()> {
    h.checkpoint_all(now_ms, false)?;
    h.poll_keyed(0, usize::MAX)?;
    h.checkpoint_all(now_ms, false)?;
    for e in h.take_committed() {
        match e.out {
            Out::Result { value, .. } => run.results.push(json(&value)),
            Out::Late { value, .. } => run.late.push(json(&value)),
            Out::Routed { to, value, .. } => run.routed.push((to, json(&value))),
            Out::DeadLetter { kind, reason, .. } => run.dead_letters.push(DeadLetter {
                record: usize::try_from(e.offset).unwrap_or_default(),
                kind: kind.to_owned(),
                reason,
            }),
            Out::Keyed { .. } | Out::Watermark { .. } => {}
        }
    }
    Ok(())
}

/// A record's bytes as JSON, or as a JSON string when they are not JSON.
fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// How `actual` differs from `expected`, both taken as multisets of JSON
/// values: `missing` (expected, not produced, with multiplicity) and
/// `unexpected` (produced, not expected), each in canonical JSON, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diff {
    pub missing: Vec<String>,
    pub unexpected: Vec<String>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty()
    }
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for m in &self.missing {
            writeln!(f, "- {m}")?;
        }
        for u in &self.unexpected {
            writeln!(f, "+ {u}")?;
        }
        Ok(())
    }
}

/// [`Diff`] of `actual` against `expected`. Numbers compare as JSON
/// numbers do in canonical form (`2` and `2.0` differ: a count is an
/// integer, a sum of decimals is not).
pub fn compare(expected: &[Value], actual: &[Value]) -> Diff {
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for v in expected {
        *counts.entry(canonical(v)).or_default() += 1;
    }
    for v in actual {
        *counts.entry(canonical(v)).or_default() -= 1;
    }
    let mut diff = Diff::default();
    for (text, n) in counts {
        let list = if n > 0 {
            &mut diff.missing
        } else {
            &mut diff.unexpected
        };
        for _ in 0..n.unsigned_abs() {
            list.push(text.clone());
        }
    }
    diff
}

/// One line of JSON with object keys sorted.
pub fn canonical(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let ordered: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

/// The StreamJob in a YAML (or JSON) file: a `kind: StreamJob` manifest,
/// the one named `name` when the file holds several documents, or a bare
/// spec.
pub fn job_from_yaml(text: &str, name: Option<&str>) -> Result<StreamJobSpec> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|e| RuntimeError::Job(format!("not YAML: {e}")))?;
    let jobs: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "StreamJob").collect();
    let chosen = match (name, jobs.as_slice()) {
        (Some(n), _) => jobs
            .iter()
            .find(|d| d["metadata"]["name"] == n)
            .map(|d| &d["spec"])
            .ok_or_else(|| RuntimeError::Job(format!("no StreamJob named {n:?} in the file")))?,
        (None, [one]) => &one["spec"],
        (None, []) => match docs.as_slice() {
            [spec] if spec.get("pipeline").is_some() => spec,
            _ => return Err(RuntimeError::Job("no StreamJob in the file".into())),
        },
        (None, _) => {
            return Err(RuntimeError::Job(
                "several StreamJobs in the file: name one with --name".into(),
            ));
        }
    };
    serde_json::from_value(chosen.clone())
        .map_err(|e| RuntimeError::Job(format!("not a StreamJob spec: {e}")))
}

/// Records from JSON lines: one record's value per non-blank line, kept as
/// written (a line that is not JSON is a record too: the job dead-letters
/// it, as it would on Kafka).
pub fn records_from_lines(text: &str) -> Vec<Vec<u8>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

/// Expected results from JSON lines.
pub fn values_from_lines(text: &str) -> Result<Vec<Value>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| RuntimeError::InvalidArgument(format!("line {}: not JSON: {e}", i + 1)))
        })
        .collect()
}

/// `streamops-runtime test`: run a StreamJob on a file of records.
#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// The YAML file holding the StreamJob (a manifest, possibly among
    /// other documents, or a bare spec).
    pub job: std::path::PathBuf,
    /// Input records, one JSON value per line (the source topic's record
    /// values, in order).
    #[arg(long)]
    pub input: std::path::PathBuf,
    /// Expected results, one JSON value per line, in any order: compare
    /// instead of printing; a mismatch exits with status 1 and prints
    /// `- missing` and `+ unexpected` lines.
    #[arg(long)]
    pub expect: Option<std::path::PathBuf>,
    /// Which StreamJob of the file, when it holds several.
    #[arg(long)]
    pub name: Option<String>,
    /// Processing time (RFC 3339 or epoch milliseconds), for
    /// `maxFutureSkew`; absent: now.
    #[arg(long)]
    pub now: Option<String>,
    /// Leave the windows still open at the end of the input open (by
    /// default the end of the input closes them all).
    #[arg(long)]
    pub keep_windows_open: bool,
}

/// What `streamops-runtime test` found.
#[derive(Debug)]
pub struct TestOutcome {
    pub run: LocalRun,
    /// With `--expect`: how the results differ.
    pub diff: Option<Diff>,
    pub records: usize,
}

impl TestOutcome {
    /// Passed: no `--expect`, or nothing differs.
    pub fn passed(&self) -> bool {
        self.diff.as_ref().is_none_or(Diff::is_empty)
    }
}

/// Reads the files `args` names and runs the job ([`run`], [`compare`]).
pub fn test_command(args: &TestArgs) -> Result<TestOutcome> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| RuntimeError::InvalidArgument(format!("{}: {e}", p.display())))
    };
    let spec = job_from_yaml(&read(&args.job)?, args.name.as_deref())?;
    let records = records_from_lines(&read(&args.input)?);
    let now_ms = match args.now.as_deref() {
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or_default(),
        Some(text) => parse_now(text)?,
    };
    let run = run(&spec, &records, now_ms, !args.keep_windows_open)?;
    let diff = match &args.expect {
        Some(path) => {
            let expected = values_from_lines(&read(path)?)
                .map_err(|e| RuntimeError::InvalidArgument(format!("{}: {e}", path.display())))?;
            Some(compare(&expected, &run.results))
        }
        None => None,
    };
    Ok(TestOutcome {
        run,
        diff,
        records: records.len(),
    })
}

fn parse_now(text: &str) -> Result<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    crate::time::parse_rfc3339_ms(text).ok_or_else(|| {
        RuntimeError::InvalidArgument(format!("--now {text:?}: neither epoch ms nor RFC 3339"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const JOB: &str = r#"
apiVersion: streamops.io/v1alpha1
kind: StreamTopic
metadata: {name: clicks}
spec: {partitions: 4}
---
apiVersion: streamops.io/v1alpha1
kind: StreamJob
metadata: {name: per-user}
spec:
  source:
    topics: [clicks]
    eventTime: {field: record.ts}
    watermark: {outOfOrderness: 2s}
  pipeline:
    filter: record.amount >= 0
    keyBy: [record.user]
    window: {type: tumbling, size: 10s}
    aggregations:
      - {name: clicks, function: count}
      - {name: spent, function: sum, field: record.amount}
  sink: {topic: out}
"#;

    fn lines(values: &[Value]) -> Vec<Vec<u8>> {
        values.iter().map(|v| v.to_string().into_bytes()).collect()
    }

    #[test]
    fn a_job_runs_on_records_and_every_window_fires_at_the_end() {
        let spec = job_from_yaml(JOB, None).unwrap();
        let mut records = lines(&[
            json!({"user": "a", "ts": 1_000, "amount": 5}),
            json!({"user": "b", "ts": 2_000, "amount": 1}),
            json!({"user": "a", "ts": 9_000, "amount": 2}),
            json!({"user": "a", "ts": 15_000, "amount": -1}),
            json!({"user": "a", "ts": 14_000, "amount": 3}),
        ]);
        records.push(b"not json".to_vec());
        let run = run(&spec, &records, 1_000_000, true).unwrap();
        let got: Vec<(Value, Value, Value, Value)> = run
            .results
            .iter()
            .map(|r| {
                (
                    r["key"].clone(),
                    r["windowStart"].clone(),
                    r["clicks"].clone(),
                    r["spent"].clone(),
                )
            })
            .collect();
        assert_eq!(got.len(), 3, "{:?}", run.results);
        for want in [
            (json!(["a"]), json!(0), json!(2), json!(7)),
            (json!(["b"]), json!(0), json!(1), json!(1)),
            (json!(["a"]), json!(10_000), json!(1), json!(3)),
        ] {
            assert!(got.contains(&want), "{want:?} not in {got:?}");
        }
        assert_eq!(run.dead_letters.len(), 1);
        assert_eq!(run.dead_letters[0].record, 5);
        // Without the end of input, only the first window has closed.
        let open = super::run(&spec, &records, 1_000_000, false).unwrap();
        assert_eq!(open.results.len(), 2, "{:?}", open.results);
    }

    #[test]
    fn comparison_is_a_multiset_of_canonical_json() {
        let a = json!({"x": 1, "y": [1, {"b": 2, "a": 1}]});
        let a_reordered = json!({"y": [1, {"a": 1, "b": 2}], "x": 1});
        let b = json!({"x": 2});
        assert!(compare(&[a.clone(), b.clone()], &[b.clone(), a_reordered]).is_empty());
        let d = compare(
            &[a.clone(), a.clone()],
            &[a.clone(), b.clone(), json!({"x": 2.0})],
        );
        assert_eq!(d.missing, vec![canonical(&a)]);
        assert_eq!(
            d.unexpected,
            vec![r#"{"x":2.0}"#.to_owned(), r#"{"x":2}"#.to_owned()]
        );
        assert_eq!(
            d.to_string(),
            format!("- {}\n+ {{\"x\":2.0}}\n+ {{\"x\":2}}\n", canonical(&a))
        );
    }

    #[test]
    fn the_file_names_its_job() {
        let two = format!(
            "{JOB}---\n{}",
            JOB.split("---").nth(1).unwrap().replace("per-user", "other")
        );
        assert!(
            job_from_yaml(&two, None)
                .unwrap_err()
                .to_string()
                .contains("--name")
        );
        assert!(job_from_yaml(&two, Some("other")).is_ok());
        assert!(job_from_yaml(&two, Some("nope")).is_err());
        assert!(job_from_yaml("kind: StreamTopic\nspec: {}\n", None).is_err());
        let bad = JOB.replace("type: tumbling, size: 10s", "type: tumbling");
        let spec = job_from_yaml(&bad, None).unwrap();
        let e = run(&spec, &[], 0, true).unwrap_err().to_string();
        assert!(e.contains("spec.pipeline.window.size"), "{e}");
    }
}
