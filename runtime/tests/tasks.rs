//! The pipeline's tasks (stage 1 keying, stage 2 windows, their state and
//! offsets) driven in process, without Kafka: the repartition topic is an
//! in-memory log per keyed partition. Owners stop with a savepoint one after
//! another while the others go on (as a rolling stop-with-savepoint does);
//! new owners restore every task into fresh state backends, and the results
//! must equal those of the same run without the restore, for tumbling,
//! sliding and session windows, on RocksDB and in memory. This isolates the
//! state path of `exactly_once.rs`'s `savepoint_restores_at_other_parallelism`
//! from the broker and the runner. (A task restored with part of its window
//! state missing fails it; a task started empty would not, since it re-reads
//! its inputs from the start, which is the runner's business to refuse.)

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::json;
use streamops_crds::runtime_api::{JobTopics, SourceTopic};
use streamops_runtime::dataflow::sources::Sources;
use streamops_runtime::dataflow::task::{Out, Task};
use streamops_runtime::plan::{Plan, compile};
use streamops_runtime::state::StateBackend;
use streamops_runtime::state::memory::MemoryBackend;
use streamops_runtime::state::rocks::{RocksBackend, RocksOptions};

const TASKS: u32 = 8;

/// The source partitions of the tasks: one topic's, in order.
fn positional() -> Arc<Sources> {
    Arc::new(Sources::positional("in", TASKS as i32))
}

/// Result records (key, value) per keyed partition, in emission order.
type Results = Vec<Vec<(Vec<u8>, Vec<u8>)>>;

/// The wall clock the tasks run at: after every event time of the data
/// (none is a dead letter for being in the future).
const WALL_CLOCK: i64 = 1_900_000_000_000;
const FLUSH_TS: i64 = 1_800_000_000_000;

fn plan(window: &serde_json::Value) -> Arc<Plan> {
    let spec = json!({
        "source": {
            "topics": ["in"],
            "eventTime": {"field": "record.ts", "format": "epochMillis"},
            "watermark": {"outOfOrderness": "2s"}
        },
        "pipeline": {
            "keyBy": ["record.user"],
            "window": window,
            "aggregations": [
                {"name": "clicks", "function": "count"},
                {"name": "spent", "function": "sum", "field": "record.amount"}
            ],
            "emit": "onWindowClose"
        },
        "sink": {"topic": "out"},
        "checkpoint": {"interval": "1s", "storage": "file:///unused"}
    });
    Arc::new(compile(&serde_json::from_value(spec).expect("valid spec")).expect("compiles"))
}

/// Records per source partition: users spread over every partition, event
/// time advancing 20 ms per record with up to 1.5 s of disorder, then one
/// far-future record per partition that closes every window.
fn dataset(per_partition: usize, users: u64, mut seed: u64) -> Vec<Vec<Vec<u8>>> {
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    (0..TASKS)
        .map(|_| {
            let mut recs: Vec<Vec<u8>> = (0..per_partition)
                .map(|i| {
                    let ts = 1_700_000_000_000i64 + (i as i64) * 20 - (rnd() % 1_500) as i64;
                    json!({"user": format!("u{}", rnd() % users), "ts": ts, "amount": rnd() % 1000})
                        .to_string()
                        .into_bytes()
                })
                .collect();
            recs.push(
                json!({"user": "flush", "ts": FLUSH_TS, "amount": 0})
                    .to_string()
                    .into_bytes(),
            );
            recs
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Backend {
    Memory,
    Rocks,
}

fn backend(kind: Backend, dir: &Path, name: &str) -> Box<dyn StateBackend + Send> {
    match kind {
        Backend::Memory => Box::new(MemoryBackend::new()),
        Backend::Rocks => {
            Box::new(RocksBackend::open(&dir.join(name), &RocksOptions::default()).expect("open rocksdb"))
        }
    }
}

/// The in-process pipeline: tasks, the repartition logs, what was read.
struct Sim {
    tasks: Vec<Task>,
    /// The repartition topic: one append-only log per keyed partition.
    keyed: Vec<Vec<Vec<u8>>>,
    results: Results,
    late: usize,
}

impl Sim {
    fn route(&mut self, t: usize, out: Vec<Out>) {
        for o in out {
            match o {
                Out::Keyed { partition, value, .. } => self.keyed[partition as usize].push(value),
                Out::Watermark { value } => {
                    for log in &mut self.keyed {
                        log.push(value.clone());
                    }
                }
                Out::Result { key, value, is_final } => {
                    assert!(is_final, "onWindowClose emits final results only");
                    self.results[t].push((key.expect("a window result has a key"), value));
                }
                Out::Late { .. } => self.late += 1,
                Out::DeadLetter { reason, .. } => panic!("dead letter: {reason}"),
                Out::Routed { to, .. } => panic!("a record routed to {to}: these jobs have no route"),
            }
        }
    }

    /// Stage 1 of task `t`: up to `n` more source records.
    fn source(&mut self, t: usize, data: &[Vec<Vec<u8>>], n: usize) {
        let from = self.tasks[t].meta.source_offset.unwrap_or(0) as usize;
        let mut out = Vec::new();
        for (i, v) in data[t].iter().enumerate().skip(from).take(n) {
            self.tasks[t].on_source(i as i64, None, v, WALL_CLOCK, &mut out);
        }
        self.route(t, out);
    }

    /// Stage 1's watermark broadcast (the runner sends it at each checkpoint).
    fn watermarks(&mut self) {
        for t in 0..self.tasks.len() {
            if let Some(w) = self.tasks[t].watermark_update(0) {
                self.route(t, vec![w]);
            }
        }
    }

    /// Stage 2 of task `t`: up to `n` more records of its keyed log.
    fn keyed(&mut self, t: usize, n: usize) {
        let from = self.tasks[t].meta.keyed_offset.unwrap_or(0) as usize;
        let end = from.saturating_add(n).min(self.keyed[t].len());
        let mut out = Vec::new();
        for i in from..end {
            let v = self.keyed[t][i].clone();
            self.tasks[t]
                .on_keyed(i as i64, &v, &mut out)
                .expect("keyed record");
        }
        self.route(t, out);
    }
}

/// One step of a schedule: which task does what, how much.
#[derive(Clone, Debug)]
enum Step {
    Source(usize, usize),
    Keyed(usize, usize),
    Watermarks,
}

/// Runs `schedule`. With `stops`, the tasks stop in groups (a process owns
/// tasks `i` and `i + 4`, as in the rescale test) at the given steps: each
/// group is snapshotted (a stop-with-savepoint) and does nothing more, while
/// the others go on; once every group has stopped, all tasks are restored by
/// new owners into fresh backends (`restore`) or simply resume (`!restore`,
/// the reference: same inputs in the same order). The tasks read the
/// partitions of `layouts.0` and are restored for `layouts.1`.
#[allow(clippy::too_many_arguments)]
fn run(
    layouts: (&Arc<Sources>, &Arc<Sources>),
    plan: &Arc<Plan>,
    data: &[Vec<Vec<u8>>],
    schedule: &[Step],
    stops: &[usize],
    restore: bool,
    kind: Backend,
    dir: &Path,
) -> (Results, usize) {
    let mut sim = Sim {
        tasks: (0..TASKS)
            .map(|t| {
                Task::new(
                    t,
                    layouts.0.clone(),
                    plan.clone(),
                    backend(kind, dir, &format!("{restore}-a-{t}")),
                    0,
                )
            })
            .collect(),
        keyed: vec![Vec::new(); TASKS as usize],
        results: vec![Vec::new(); TASKS as usize],
        late: 0,
    };
    let groups = stops.len();
    let group_of = |t: usize| t % groups.max(1);
    let mut stopped = vec![false; groups];
    let sp = dir.join(format!("savepoint-{restore}"));
    for (i, s) in schedule.iter().enumerate() {
        for (g, &at) in stops.iter().enumerate() {
            if at == i && !stopped[g] {
                stopped[g] = true;
                if restore {
                    for t in (0..TASKS as usize).filter(|&t| group_of(t) == g) {
                        sim.tasks[t]
                            .snapshot(&sp.join(format!("task-{t}")))
                            .expect("snapshot");
                    }
                }
            }
        }
        if groups > 0 && stopped.iter().all(|s| *s) {
            stopped = vec![false; groups];
            if restore {
                let old = std::mem::take(&mut sim.tasks);
                drop(old);
                sim.tasks = (0..TASKS)
                    .map(|t| {
                        Task::restore(
                            &sp.join(format!("task-{t}")),
                            layouts.1.clone(),
                            plan.clone(),
                            backend(kind, dir, &format!("b-{t}")),
                            0,
                        )
                        .expect("restore")
                    })
                    .collect();
            }
        }
        let active = |t: usize| groups == 0 || !stopped[group_of(t)];
        match *s {
            Step::Source(t, n) if active(t) => sim.source(t, data, n),
            Step::Keyed(t, n) if active(t) => sim.keyed(t, n),
            Step::Watermarks => {
                for t in (0..TASKS as usize).filter(|&t| active(t)) {
                    if let Some(w) = sim.tasks[t].watermark_update(0) {
                        sim.route(t, vec![w]);
                    }
                }
            }
            _ => {}
        }
    }
    // Drain: everything read, the closing watermark through both stages.
    for t in 0..TASKS as usize {
        sim.source(t, data, usize::MAX);
    }
    sim.watermarks();
    for t in 0..TASKS as usize {
        sim.keyed(t, usize::MAX);
    }
    (sim.results, sim.late)
}

fn schedule_strategy() -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        4 => (0..TASKS as usize, 1usize..120).prop_map(|(t, n)| Step::Source(t, n)),
        4 => (0..TASKS as usize, 1usize..200).prop_map(|(t, n)| Step::Keyed(t, n)),
        1 => Just(Step::Watermarks),
    ];
    prop::collection::vec(step, 10..80)
}

fn summary(results: &Results) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (t, r) in results.iter().enumerate() {
        m.insert(format!("task {t}"), r.len());
    }
    m
}

fn check(window: serde_json::Value, kind: Backend, schedule: &[Step], stops: &[f64], seed: u64) {
    let same = positional();
    check_with((&same, &same), window, kind, schedule, stops, seed);
}

fn check_with(
    layouts: (&Arc<Sources>, &Arc<Sources>),
    window: serde_json::Value,
    kind: Backend,
    schedule: &[Step],
    stops: &[f64],
    seed: u64,
) {
    // Every group stops within the schedule, so a restore always happens.
    let stops: Vec<usize> = stops
        .iter()
        .map(|f| ((f * schedule.len() as f64) as usize).min(schedule.len() - 1))
        .collect();
    let stops = &stops[..];
    let plan = plan(&window);
    let data = dataset(400, 60, seed | 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let same = positional();
    let (whole, whole_late) = run(
        (&same, &same),
        &plan,
        &data,
        schedule,
        stops,
        false,
        kind,
        dir.path(),
    );
    let (split, split_late) = run(layouts, &plan, &data, schedule, stops, true, kind, dir.path());
    assert!(whole.iter().map(Vec::len).sum::<usize>() > 0, "no results at all");
    assert_eq!(split_late, whole_late, "late records");
    for t in 0..TASKS as usize {
        assert_eq!(
            split[t],
            whole[t],
            "results of keyed partition {t} differ ({window}, {kind:?}, stops {stops:?}); counts: {:?} vs {:?}",
            summary(&split),
            summary(&whole)
        );
    }
}

fn window(w: usize) -> serde_json::Value {
    [
        json!({"type": "tumbling", "size": "1s"}),
        json!({"type": "sliding", "size": "2s", "slide": "500ms"}),
        json!({"type": "session", "gap": "300ms"}),
    ][w]
        .clone()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Owners of tasks {i, i + 4} stop with a savepoint one after another
    /// (the others keep going), then new owners restore every task.
    #[test]
    fn staggered_savepoints_restored_elsewhere_equal_uninterrupted_rocksdb(
        schedule in schedule_strategy(), stops in prop::collection::vec(0.0..1.0f64, 1..5),
        seed in any::<u64>(), w in 0usize..3,
    ) {
        check(window(w), Backend::Rocks, &schedule, &stops, seed);
    }

    #[test]
    fn staggered_savepoints_restored_elsewhere_equal_uninterrupted_memory(
        schedule in schedule_strategy(), stops in prop::collection::vec(0.0..1.0f64, 1..5),
        seed in any::<u64>(), w in 0usize..3,
    ) {
        check(window(w), Backend::Memory, &schedule, &stops, seed);
    }
}

fn two_topics(first: &str, second: &str) -> Vec<SourceTopic> {
    [first, second]
        .iter()
        .map(|t| SourceTopic {
            topic: (*t).into(),
            partitions: TASKS as i32 / 2,
        })
        .collect()
}

fn sources_of(source: Vec<SourceTopic>, layout: Vec<streamops_crds::layout::TaskRange>) -> Arc<Sources> {
    Arc::new(
        Sources::new(&JobTopics {
            source,
            layout,
            sink: "out".into(),
            late_events: None,
            dead_letter: None,
            routes: Default::default(),
            repartition: "r".into(),
            control: "c".into(),
        })
        .expect("a valid layout"),
    )
}

/// The job's two source topics are listed the other way round in the new
/// version: with the kept layout, every task restores its own partition's
/// offsets and the results equal an uninterrupted run's.
#[test]
fn reordered_source_topics_restore_by_partition() {
    let before = two_topics("x", "y");
    let after = two_topics("y", "x");
    let kept = streamops_crds::layout::assign(&streamops_crds::layout::assign(&[], &before), &after);
    assert!(!kept.is_empty(), "not the positional layout of the new order");
    let (old, new) = (sources_of(before, Vec::new()), sources_of(after.clone(), kept));
    let schedule: Vec<Step> = (0..40)
        .map(|i| match i % 3 {
            0 => Step::Source(i % TASKS as usize, 37),
            1 => Step::Keyed((i * 5) % TASKS as usize, 90),
            _ => Step::Watermarks,
        })
        .collect();
    for w in 0..3 {
        check_with(
            (&old, &new),
            window(w),
            Backend::Rocks,
            &schedule,
            &[0.3, 0.6],
            7 + w as u64,
        );
    }
    // Laid out by position (what an older operator did) the restore is
    // refused: it would read y's partitions from x's offsets.
    let positional_new = sources_of(after, Vec::new());
    let dir = tempfile::tempdir().expect("tempdir");
    let plan = plan(&window(0));
    let mut t0 = Task::new(0, old, plan.clone(), Box::new(MemoryBackend::new()), 0);
    t0.snapshot(&dir.path().join("t0")).expect("snapshot");
    let err = Task::restore(
        &dir.path().join("t0"),
        positional_new,
        plan,
        Box::new(MemoryBackend::new()),
        0,
    )
    .err()
    .expect("refused")
    .to_string();
    assert!(err.contains("x-0") && err.contains("task 4"), "{err}");
}

#[test]
fn an_event_time_far_ahead_of_the_wall_clock_is_a_dead_letter_and_never_moves_the_watermark() {
    // The default bound (1 h): the test's plan sets none.
    let plan = plan(&json!({"type": "tumbling", "size": "10s"}));
    let now = 1_700_000_000_000i64;
    let mut task = Task::new(
        0,
        Arc::new(Sources::positional("in", 1)),
        plan,
        Box::new(MemoryBackend::new()),
        now,
    );
    let record = |ts: i64| {
        json!({"user": "u1", "ts": ts, "amount": 1})
            .to_string()
            .into_bytes()
    };
    let mut out = Vec::new();
    task.on_source(0, None, &record(now - 5_000), now, &mut out);
    let watermark = task.source_watermark();
    // A year ahead, then just past the bound: dead letters, watermark unchanged.
    for (offset, ts) in [(1, now + 365 * 86_400_000), (2, now + 3_600_001)] {
        out.clear();
        task.on_source(offset, Some(b"k"), &record(ts), now, &mut out);
        match out.as_slice() {
            [
                Out::DeadLetter {
                    kind, reason, key, ..
                },
            ] => {
                assert_eq!(*kind, "future_event_time");
                assert!(reason.contains("spec.source.eventTime.maxFutureSkew"), "{reason}");
                assert_eq!(key.as_deref(), Some(&b"k"[..]));
            }
            other => panic!("expected one dead letter, got {other:?}"),
        }
        assert_eq!(task.source_watermark(), watermark);
    }
    // Exactly at the bound is accepted and moves the watermark; so do the
    // correct records after the bad ones.
    out.clear();
    task.on_source(3, None, &record(now + 3_600_000), now, &mut out);
    assert!(matches!(out.as_slice(), [Out::Keyed { .. }]), "{out:?}");
    assert_eq!(task.source_watermark(), now + 3_600_000 - 2_000);
    assert_eq!(task.counters.dead_lettered, 2);
    assert_eq!(
        task.meta.source_offset,
        Some(4),
        "dead letters are consumed, not retried"
    );
}
