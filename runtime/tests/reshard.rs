//! Keyed state re-sharded across a partition-count change, through the
//! dataflow as the pods run it (tasks connected by the in-memory
//! repartition log of `dataflow::harness`).
//!
//! A job runs on K source partitions, takes a drained savepoint, restarts on
//! K2 > K partitions from it (each task taking its key groups from the old
//! tasks that held them), perhaps grows again, and crashes and restores at
//! random points. Whatever the counts (uneven factors, more partitions than
//! key groups, the one-group-per-task layout of older jobs), the committed
//! output must be exactly the reference: one final result per (key,
//! window), with the count and sum of every record of that key in that
//! window, read before or after any change. Windows open across a change
//! keep their partial values; nothing is lost or counted twice.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};
use streamops_crds::job::ProcessingGuarantee;
use streamops_runtime::aggregate::AggregateFunction;
use streamops_runtime::dataflow::harness::{Harness, HarnessConfig, MemoryBackends, RocksBackends};
use streamops_runtime::dataflow::task::{Out, StateOptions};
use streamops_runtime::dataflow::window_operator::EmitMode;
use streamops_runtime::plan::{AggregationDef, JobDefinition, Plan};
use streamops_runtime::state::RocksOptions;
use streamops_runtime::time::TimeFormat;
use streamops_runtime::window::WindowAssigner;

/// Large enough that no record is ever late (event times run within 20 ms
/// of a shared clock): every difference from the reference is a fault.
const OUT_OF_ORDERNESS: i64 = 1_000;

#[derive(Debug, Clone)]
struct Event {
    /// Among the partitions of the phase it is read in.
    partition: u32,
    key: u8,
    t: i64,
    amount: i64,
}

#[derive(Debug, Clone)]
struct Case {
    /// Partition counts, growing: the job starts on the first and is
    /// re-sharded to each next one.
    counts: Vec<u32>,
    key_groups: Option<u32>,
    size: i64,
    /// Every task checkpoints after every `every`-th record.
    every: usize,
    /// Events of each phase (one per count).
    phases: Vec<Vec<Event>>,
    /// (phase, record index, lost): every task crashes after the phase's
    /// first `index` records, losing what it did since its last checkpoint
    /// plus `lost` more records it read and never committed.
    crash: Option<(usize, usize, usize)>,
    rocks: bool,
}

fn definition(size: i64) -> JobDefinition {
    let agg = |name: &str, function, field: Option<&str>| AggregationDef {
        name: name.into(),
        function,
        field: field.map(Into::into),
    };
    JobDefinition {
        filter: None,
        steps: Vec::new(),
        result_steps: Vec::new(),
        event_time_field: "record.ts".into(),
        time_format: TimeFormat::EpochMillis,
        out_of_orderness_ms: OUT_OF_ORDERNESS,
        idle_timeout_ms: None,
        max_future_skew_ms: i64::MAX,
        key_by: vec!["record.user".into()],
        window: Some(WindowAssigner::tumbling(size).unwrap()),
        allowed_lateness_ms: 0,
        aggregations: vec![
            agg("n", AggregateFunction::Count, None),
            agg("total", AggregateFunction::Sum, Some("record.amount")),
        ],
        emit: EmitMode::OnWindowClose,
        sink_key: None,
    }
}

fn record(user: &str, t: i64, amount: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({"user": user, "ts": t, "amount": amount})).unwrap()
}

/// (user, window start) -> (count, sum): the reference, from the events alone.
type Results = BTreeMap<(String, i64), (i64, i64)>;

fn reference(c: &Case) -> Results {
    let mut r = Results::new();
    for e in c.phases.iter().flatten() {
        let start = e.t.div_euclid(c.size) * c.size;
        let v = r.entry((format!("k{}", e.key), start)).or_default();
        v.0 += 1;
        v.1 += e.amount;
    }
    r
}

/// Runs the case; returns the committed final results, failing on any
/// result committed twice.
fn run(c: &Case) -> Results {
    let dir = tempfile::tempdir().unwrap();
    let plan = Arc::new(Plan::build(&definition(c.size)).unwrap());
    let config = HarnessConfig {
        tasks: c.counts[0],
        guarantee: ProcessingGuarantee::ExactlyOnce,
        state: StateOptions::default(),
        dir: dir.path().join("checkpoints"),
        key_groups: c.key_groups,
    };
    let backends: Box<dyn streamops_runtime::dataflow::harness::Backends> = if c.rocks {
        Box::new(RocksBackends::new(
            &dir.path().join("db"),
            RocksOptions::default(),
        ))
    } else {
        Box::new(MemoryBackends)
    };
    let mut h = Harness::new(plan, config, backends, 0).unwrap();
    let mut clock_end = 0;
    for (phase, events) in c.phases.iter().enumerate() {
        if phase > 0 {
            let savepoint = h.savepoint_drained(0).unwrap();
            h.reshard(c.counts[phase], &savepoint, 0).unwrap();
        }
        let tasks = h.task_count();
        // Each record is appended to its partition just before it is read,
        // so a restarted task re-reads exactly what it had not committed.
        let mut k = 0;
        while k < events.len() {
            let e = &events[k];
            h.append(e.partition, None, &record(&format!("k{}", e.key), e.t, e.amount))
                .unwrap();
            clock_end = clock_end.max(e.t);
            assert_eq!(h.poll_source(e.partition, 1, 0).unwrap(), 1);
            k += 1;
            if k % c.every == 0 {
                h.checkpoint_all(0, true).unwrap();
                for t in 0..tasks {
                    h.poll_keyed(t, usize::MAX).unwrap();
                }
            }
            if let Some((p, at, lost)) = c.crash
                && p == phase
                && at == k
            {
                // Read on without committing, then crash: all of it is lost.
                for f in events.iter().skip(k).take(lost) {
                    h.append(f.partition, None, &record(&format!("k{}", f.key), f.t, f.amount))
                        .unwrap();
                    clock_end = clock_end.max(f.t);
                    h.poll_source(f.partition, 1, 0).unwrap();
                    k += 1;
                }
                for t in 0..tasks {
                    h.poll_keyed(t, usize::MAX).unwrap();
                }
                h.restart_all(0).unwrap();
                // Re-read what the restored tasks had not committed.
                for t in 0..tasks {
                    h.poll_source(t, usize::MAX, 0).unwrap();
                }
            }
        }
    }
    // Close every window: a far-future record on every partition, then
    // checkpoints and reads until everything is committed.
    let tasks = h.task_count();
    for t in 0..tasks {
        h.append(t, None, &record("flush", clock_end + 10 * OUT_OF_ORDERNESS, 0))
            .unwrap();
    }
    for _ in 0..3 {
        h.poll_all(0).unwrap();
        h.checkpoint_all(0, true).unwrap();
    }
    let mut got = Results::new();
    for e in h.committed() {
        match &e.out {
            Out::Result { value, is_final, .. } => {
                assert!(is_final, "only final results in onWindowClose mode");
                let v: Value = serde_json::from_slice(value).unwrap();
                let user = v["key"][0].as_str().unwrap().to_owned();
                if user == "flush" {
                    continue;
                }
                let key = (user, v["windowStart"].as_i64().unwrap());
                let value = (v["n"].as_i64().unwrap(), v["total"].as_i64().unwrap());
                if let Some(before) = got.insert(key.clone(), value) {
                    panic!("{key:?} committed twice: {before:?}, then {value:?}");
                }
            }
            Out::Late { .. } => panic!("a late record, although none can be late"),
            Out::DeadLetter { reason, .. } => panic!("unexpected dead letter: {reason}"),
            o @ (Out::Keyed { .. } | Out::Watermark { .. } | Out::Routed { .. }) => {
                panic!("internal or routed record in the output: {o:?}")
            }
        }
    }
    got
}

fn case_strategy() -> impl Strategy<Value = Case> {
    (
        1u32..5,
        prop::collection::vec(1u32..7, 1..3),
        prop_oneof![Just(None), (1u32..40).prop_map(Some)],
        10i64..60,
        prop_oneof![1 => Just(1usize), 3 => 2usize..12],
        prop::collection::vec((0u32..64, 0u8..12, 0i64..20, -20i64..100), 1..150),
        prop::bool::weighted(0.2),
        prop::option::of((any::<prop::sample::Index>(), 0usize..10)),
    )
        .prop_map(|(first, growths, key_groups, size, every, raw, rocks, crash)| {
            let mut counts = vec![first];
            for g in growths {
                counts.push(counts.last().copied().unwrap_or(1) + g);
            }
            // The events split evenly over the phases, in clock order.
            let per_phase = raw.len().div_ceil(counts.len());
            let mut clock = 0;
            let mut phases: Vec<Vec<Event>> = vec![Vec::new(); counts.len()];
            for (i, (p, key, jitter, amount)) in raw.into_iter().enumerate() {
                if i % 3 == 0 {
                    clock += 7;
                }
                let phase = i / per_phase;
                phases[phase].push(Event {
                    partition: p % counts[phase],
                    key,
                    t: clock + jitter,
                    amount,
                });
            }
            let crash = crash.and_then(|(at, lost)| {
                let phase = at.index(phases.len());
                let events = phases[phase].len();
                (events > 0).then(|| (phase, at.index(events) + 1, lost))
            });
            Case {
                counts,
                key_groups,
                size,
                every,
                phases,
                crash,
                rocks,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]
    #[test]
    fn growth_with_state_loses_and_doubles_nothing(c in case_strategy()) {
        prop_assert_eq!(run(&c), reference(&c));
    }
}

/// The examples, on RocksDB: 4 -> 6 -> 12 with 128 key groups (the
/// default for a new job), and 3 -> 5 on an older job's one group per task.
#[test]
fn four_to_six_to_twelve_and_an_older_job_three_to_five() {
    let events = |count: u32, from: i64| -> Vec<Event> {
        (0..300)
            .map(|i| Event {
                partition: (i * 7 % count as i64) as u32,
                key: (i % 11) as u8,
                t: from + i * 3,
                amount: i % 17,
            })
            .collect()
    };
    for (counts, key_groups) in [(vec![4, 6, 12], Some(128)), (vec![3, 5], None)] {
        let phases = counts
            .iter()
            .enumerate()
            .map(|(p, &n)| events(n, p as i64 * 900))
            .collect();
        let c = Case {
            counts,
            key_groups,
            size: 100,
            every: 10,
            phases,
            crash: Some((1, 55, 7)),
            rocks: true,
        };
        assert_eq!(run(&c), reference(&c), "{:?} {:?}", c.counts, c.key_groups);
    }
}
