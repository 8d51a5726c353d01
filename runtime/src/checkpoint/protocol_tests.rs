//! The protocol against an in-memory transaction log ([`super::super::fake_log`])
//! and an in-memory object store: two tasks of a windowed job, each
//! checkpointing every round; one of them crashes at every step of a
//! checkpoint (and again while restoring) and restarts as a new process
//! would. The committed output must equal that of the run that never
//! crashed: nothing lost, nothing doubled.

use std::collections::BTreeMap;
use std::sync::Arc;

use object_store::memory::InMemory;
use prometheus::{IntCounterVec, Opts};
use serde_json::json;
use streamops_crds::runtime_api::{JobTopics, SourceTopic};

use super::*;
use crate::checkpoint::fake_log::{Broker, FakeLog, Shared};
use crate::checkpoint::marker::MarkerKind;
use crate::dataflow::sources::Sources;
use crate::plan::{Plan, compile};
use crate::state::memory::MemoryBackend;

const TASKS: u32 = 2;
const PER_ROUND: usize = 25;
/// Wall clock of the run: after every event time of the data.
const WALL_CLOCK: i64 = 1_900_000_000_000;
const JOB_UID: &str = "job-uid";

fn plan() -> Arc<Plan> {
    let spec = json!({
        "source": {
            "topics": ["in"],
            "eventTime": {"field": "record.ts", "format": "epochMillis"},
            "watermark": {"outOfOrderness": "2s"}
        },
        "pipeline": {
            "keyBy": ["record.user"],
            "window": {"type": "tumbling", "size": "1s"},
            "aggregations": [
                {"name": "clicks", "function": "count"},
                {"name": "spent", "function": "sum", "field": "record.amount"}
            ],
            "emit": "onWindowClose"
        },
        "sink": {"topic": "out"},
        "checkpoint": {"interval": "1s", "storage": "memory:///"}
    });
    Arc::new(compile(&serde_json::from_value(spec).expect("valid spec")).expect("compiles"))
}

/// A stateless job over the same data: users other than `u3` (and the
/// flush record); amounts above 900 routed to `big` as they came, the
/// rest reshaped, to the sink keyed by user.
fn stateless_plan() -> Arc<Plan> {
    let spec = json!({
        "source": {"topics": ["in"]},
        "pipeline": {"steps": [
            {"name": "not-u3", "filter": "record.user != 'u3'"},
            {"name": "aside", "route": [{"when": "record.amount > 900", "to": "big"}]},
            {"name": "shape", "map": {"u": "record.user", "cents": "record.amount * 100", "ts": "record.ts"}}
        ]},
        "sink": {"topic": "out", "key": "record.u"},
        "checkpoint": {"interval": "1s", "storage": "memory:///"}
    });
    Arc::new(compile(&serde_json::from_value(spec).expect("valid spec")).expect("compiles"))
}

pub(crate) fn topics() -> JobTopics {
    JobTopics {
        source: vec![SourceTopic {
            topic: "in".into(),
            partitions: TASKS as i32,
        }],
        layout: Vec::new(),
        sink: "out".into(),
        late_events: None,
        dead_letter: Some("dlq".into()),
        routes: [("big".to_owned(), "big-topic".to_owned())].into(),
        repartition: "rep".into(),
        control: "control".into(),
    }
}

/// Per source partition: users spread over both, event time advancing 20 ms
/// per record with up to 1.5 s of disorder (within the 2 s bound: nothing is
/// late whatever the interleaving), one malformed record, and a far-future
/// record that closes every window.
fn dataset(per_partition: usize) -> Vec<Vec<Vec<u8>>> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
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
                    json!({"user": format!("u{}", rnd() % 10), "ts": ts, "amount": rnd() % 1000})
                        .to_string()
                        .into_bytes()
                })
                .collect();
            recs.insert(per_partition / 2, b"{not json".to_vec());
            recs.push(
                json!({"user": "flush", "ts": 1_800_000_000_000i64, "amount": 0})
                    .to_string()
                    .into_bytes(),
            );
            recs
        })
        .collect()
}

/// No interruptions.
struct Uninterrupted;

impl Steps for Uninterrupted {
    fn at(&mut self, _: Step) -> crate::error::Result<()> {
        Ok(())
    }
}

/// Crashes (an error) at `step` of the `nth` call's protocol run.
struct CrashAt {
    step: Option<Step>,
}

impl Steps for CrashAt {
    fn at(&mut self, step: Step) -> crate::error::Result<()> {
        if self.step == Some(step) {
            self.step = None;
            return Err(RuntimeError::Protocol(format!("crash at {step:?}")));
        }
        Ok(())
    }
}

/// What outlives a process: the log, the object store, the input.
struct World {
    broker: Shared,
    objects: Arc<InMemory>,
    rt: tokio::runtime::Runtime,
    topics: JobTopics,
    sources: Arc<Sources>,
    plan: Arc<Plan>,
    input: Vec<Vec<Vec<u8>>>,
    transactional: bool,
    records_out: IntCounterVec,
    scratch: tempfile::TempDir,
    starts: u32,
}

/// One task of one process.
struct Proc {
    task: Task,
    log: FakeLog,
    outbox: Outbox,
    store: CheckpointStore,
    instance: String,
    next_id: u64,
}

impl World {
    fn new(transactional: bool, per_partition: usize) -> World {
        Self::with_plan(plan(), transactional, per_partition)
    }

    fn with_plan(plan: Arc<Plan>, transactional: bool, per_partition: usize) -> World {
        World {
            broker: Broker::with_topics(&[
                ("rep", TASKS as usize),
                ("control", TASKS as usize),
                ("out", 1),
                ("dlq", 1),
                ("big-topic", 1),
            ]),
            objects: Arc::new(InMemory::new()),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime"),
            topics: topics(),
            sources: Arc::new(Sources::positional("in", TASKS as i32)),
            plan,
            input: dataset(per_partition),
            transactional,
            records_out: IntCounterVec::new(Opts::new("records_out", "test"), &["kind"]).expect("metric"),
            scratch: tempfile::tempdir().expect("tempdir"),
            starts: 0,
        }
    }

    fn context<'a>(&'a self, instance: &'a str) -> Context<'a> {
        Context {
            job_uid: JOB_UID,
            generation: 1,
            instance,
            to: Destinations {
                topics: &self.topics,
                keyed_partitions: TASKS,
                records_out: &self.records_out,
            },
            transactional: self.transactional,
        }
    }

    /// Starts task `t` in a new process: fence, last marker, state.
    fn start(&mut self, t: u32, steps: &mut dyn Steps) -> crate::error::Result<Proc> {
        self.starts += 1;
        let instance = format!("p{}", self.starts);
        let mut log = FakeLog::new(
            &self.broker,
            &format!("txn-{t}"),
            self.transactional,
            "control",
            t,
        );
        let mut store = CheckpointStore::over(self.objects.clone(), "memory:///", self.rt.handle().clone())
            .owned_by(JOB_UID);
        let source = self.sources.source_of(t).cloned().expect("source");
        let scratch = self.scratch.path().join(format!("restore-{instance}-{t}"));
        let (sources, plan) = (self.sources.clone(), self.plan.clone());
        let restored = restore(
            &self.context(&instance),
            t,
            Io {
                log: &mut log,
                store: &mut store,
                steps,
            },
            &RestoreRequest {
                mode: RestoreMode::LastState,
                savepoint: None,
                allow_empty: true,
                source: &source,
                scratch: &scratch,
                shape: Shape {
                    tasks: sources.len(),
                    key_groups: sources.key_groups(),
                    groups: sources.groups_of(t),
                },
            },
            &mut |opening| match opening {
                Opening::Empty => Ok(Task::new(
                    t,
                    sources.clone(),
                    plan.clone(),
                    Box::new(MemoryBackend::new()),
                    WALL_CLOCK,
                )),
                Opening::Snapshot(dir) => Task::restore(
                    dir,
                    sources.clone(),
                    plan.clone(),
                    Box::new(MemoryBackend::new()),
                    WALL_CLOCK,
                ),
                Opening::Resharded(old) => Task::restore_resharded(
                    t,
                    old,
                    sources.clone(),
                    plan.clone(),
                    Box::new(MemoryBackend::new()),
                    WALL_CLOCK,
                    Default::default(),
                ),
            },
        )?;
        let mut task = restored.task;
        task.meta.source_offset.get_or_insert(0);
        task.meta.keyed_offset.get_or_insert(0);
        let next_id = task.meta.checkpoint_id + 1;
        Ok(Proc {
            task,
            log,
            outbox: Outbox::default(),
            store,
            instance,
            next_id,
        })
    }

    /// Up to `n` source records, then every committed keyed record, into
    /// task `p`; returns how many records it read.
    fn feed(&self, p: &mut Proc, n: usize) -> crate::error::Result<usize> {
        let t = p.task.id();
        let cx = self.context(&p.instance);
        let header = marker::header_value(t, p.next_id, &p.instance);
        let mut out = Vec::new();
        let mut read = 0;
        let from = p.task.meta.source_offset.unwrap_or(0);
        let input = &self.input[t as usize];
        for offset in from..(from + n as i64).min(input.len() as i64) {
            // As the runner: keyed records borrowed, the rest through `out`.
            let mut to = Stage1Outputs {
                cx: &cx,
                log: &mut p.log,
                outbox: &mut p.outbox,
                header: &header,
                rest: &mut out,
                error: None,
            };
            p.task
                .on_source(offset, None, &input[offset as usize], WALL_CLOCK, &mut to);
            if let Some(e) = to.error {
                return Err(e);
            }
            Self::emit(
                &cx,
                (&mut p.log, &mut p.outbox),
                &header,
                &mut out,
                ("in", t as i32, offset),
            )?;
            read += 1;
        }
        let keyed =
            self.broker
                .borrow()
                .read_committed("rep", t as i32, p.task.meta.keyed_offset.unwrap_or(0));
        for (offset, e) in keyed {
            p.task.on_keyed(offset, &e.value, &mut out)?;
            Self::emit(
                &cx,
                (&mut p.log, &mut p.outbox),
                &header,
                &mut out,
                ("rep", t as i32, offset),
            )?;
            read += 1;
        }
        Ok(read)
    }

    /// Writes or holds what the task emitted for the record at `origin`.
    fn emit(
        cx: &Context<'_>,
        (log, outbox): (&mut FakeLog, &mut Outbox),
        header: &str,
        out: &mut Vec<Out>,
        origin: outputs::Origin<'_>,
    ) -> crate::error::Result<()> {
        let keyed = origin.0 == "rep";
        for o in out.drain(..) {
            output(cx, log, outbox, header, o, keyed, origin)?;
        }
        Ok(())
    }

    fn checkpoint(&self, p: &mut Proc, steps: &mut dyn Steps) -> crate::error::Result<Committed> {
        let t = p.task.id();
        let scratch = self.scratch.path().join(format!("snapshot-{}-{t}", p.instance));
        let db = format!("{}-{t}", p.instance);
        let done = checkpoint(
            &self.context(&p.instance),
            &mut p.task,
            &mut p.outbox,
            Io {
                log: &mut p.log,
                store: &mut p.store,
                steps,
            },
            &Request {
                id: p.next_id,
                savepoint: None,
                now_ms: WALL_CLOCK,
                scratch: &scratch,
                db: &db,
                source: ("in", t as i32),
            },
        )?;
        p.next_id += 1;
        Ok(done)
    }

    /// Runs the job to quiescence. `crash`: (task, its nth checkpoint, the
    /// step it crashes at, whether the restart crashes once while
    /// restoring). Returns the committed results (key, value), sorted.
    fn run(&mut self, crash: Option<(u32, u32, Step, bool)>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut procs: Vec<Proc> = (0..TASKS)
            .map(|t| self.start(t, &mut Uninterrupted).expect("start"))
            .collect();
        let mut checkpoints = [0u32; TASKS as usize];
        let mut crashed = false;
        let mut quiet = 0;
        for _round in 0..500 {
            let mut read = 0;
            for p in procs.iter_mut() {
                read += self.feed(p, PER_ROUND).expect("feed");
            }
            for t in 0..TASKS {
                let i = t as usize;
                checkpoints[i] += 1;
                let planned = crash.filter(|c| c.0 == t && c.1 == checkpoints[i]);
                let mut steps = CrashAt {
                    step: planned.map(|c| c.2),
                };
                if self.checkpoint(&mut procs[i], &mut steps).is_ok() {
                    continue;
                }
                // The process dies: its task, outbox and log go; a new one
                // restores (crashing once more while restoring, if asked).
                assert!(planned.is_some(), "only the planned crash fails a checkpoint");
                crashed = true;
                let again = planned.is_some_and(|c| c.3);
                if again {
                    let mut restoring = CrashAt {
                        step: Some(Step::Restoring),
                    };
                    assert!(
                        self.start(t, &mut restoring).is_err(),
                        "the crash while restoring"
                    );
                }
                procs[i] = self.start(t, &mut Uninterrupted).expect("restart");
            }
            let done = procs
                .iter()
                .all(|p| p.task.meta.source_offset == Some(self.input[p.task.id() as usize].len() as i64));
            quiet = if done && read == 0 { quiet + 1 } else { 0 };
            if quiet >= 3 {
                break;
            }
        }
        assert!(quiet >= 3, "the job did not settle");
        assert_eq!(crashed, crash.is_some(), "the planned crash {crash:?} happened");
        assert_eq!(self.broker.borrow().open_records(), 0, "a transaction stays open");
        let mut results: Vec<(Vec<u8>, Vec<u8>)> = self
            .broker
            .borrow()
            .committed("out")
            .into_iter()
            .map(|e| (e.key.unwrap_or_default(), e.value))
            .collect();
        results.sort();
        results
    }

    /// Every committed output carries the header of a committed marker
    /// (what the end-to-end verifier checks on Kafka).
    fn outputs_belong_to_committed_markers(&self) {
        let b = self.broker.borrow();
        let markers: std::collections::HashSet<String> = b
            .committed("control")
            .iter()
            .map(|e| {
                serde_json::from_slice::<Marker>(&e.value)
                    .expect("marker")
                    .header_value()
            })
            .collect();
        for topic in ["out", "rep", "dlq", "big-topic"] {
            for e in b.committed(topic) {
                let header = e
                    .headers
                    .iter()
                    .find(|(k, _)| k == CHECKPOINT_HEADER)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .expect("checkpoint header");
                assert!(
                    markers.contains(&header),
                    "{topic}: {header} has no committed marker"
                );
            }
        }
    }
}

const STEPS: [Step; 6] = Step::CHECKPOINT;

#[test]
fn a_crash_between_any_two_steps_loses_and_doubles_nothing() {
    let reference = World::new(true, 200).run(None);
    assert!(reference.len() > 40, "windows fired: {}", reference.len());
    // The malformed records went to the dead-letter topic, once each.
    let mut world = World::new(true, 200);
    assert_eq!(world.run(None), reference, "two runs without a crash agree");
    assert_eq!(world.broker.borrow().committed("dlq").len(), TASKS as usize);
    for task in 0..TASKS {
        // The first checkpoint, one mid-input, one after the input while
        // windows fire.
        for nth in [1, 4, 12] {
            for step in STEPS {
                let mut world = World::new(true, 200);
                // Once per checkpoint, the restart crashes while restoring
                // too (there is a checkpoint to restore after the first).
                let got = world.run(Some((task, nth, step, step == Step::Uploaded && nth > 1)));
                assert_eq!(
                    got, reference,
                    "task {task} crashed at {step:?} of checkpoint {nth}"
                );
                assert_eq!(
                    world.broker.borrow().committed("dlq").len(),
                    TASKS as usize,
                    "dead letters once each (task {task}, {step:?}, {nth})"
                );
                world.outputs_belong_to_committed_markers();
            }
        }
    }
}

#[test]
fn a_stateless_job_crashing_between_any_two_steps_loses_and_doubles_no_record() {
    let reference = World::with_plan(stateless_plan(), true, 200).run(None);
    // Every record but the malformed ones and u3's, each once, by an
    // independent count of the input.
    let records: Vec<serde_json::Value> = dataset(200)
        .iter()
        .flatten()
        .filter_map(|r| serde_json::from_slice::<serde_json::Value>(r).ok())
        .filter(|v| v["user"] != "u3")
        .collect();
    let big = |v: &serde_json::Value| v["amount"].as_i64().unwrap_or_default() > 900;
    assert_eq!(
        reference.len(),
        records.iter().filter(|v| !big(v)).count(),
        "the run without a crash"
    );
    let routed = |world: &World| -> Vec<Vec<u8>> {
        let mut r: Vec<Vec<u8>> = world
            .broker
            .borrow()
            .committed("big-topic")
            .into_iter()
            .map(|e| e.value)
            .collect();
        r.sort();
        r
    };
    let mut world = World::with_plan(stateless_plan(), true, 200);
    assert_eq!(world.run(None), reference);
    let routed_reference = routed(&world);
    assert_eq!(
        routed_reference.len(),
        records.iter().filter(|v| big(v)).count(),
        "routed"
    );
    assert!(!routed_reference.is_empty());
    assert!(
        reference.iter().all(
            |(k, v)| serde_json::from_slice::<serde_json::Value>(v).unwrap()["u"].as_str()
                == Some(std::str::from_utf8(k).unwrap())
        ),
        "keyed by sink.key"
    );
    for task in 0..TASKS {
        for nth in [1, 4, 12] {
            for step in STEPS {
                let mut world = World::with_plan(stateless_plan(), true, 200);
                let got = world.run(Some((task, nth, step, step == Step::Uploaded && nth > 1)));
                assert_eq!(
                    got, reference,
                    "task {task} crashed at {step:?} of checkpoint {nth}"
                );
                assert_eq!(
                    routed(&world),
                    routed_reference,
                    "routed, task {task} crashed at {step:?} of {nth}"
                );
                assert_eq!(world.broker.borrow().committed("dlq").len(), TASKS as usize);
                assert_eq!(
                    world.broker.borrow().committed("rep").len(),
                    0,
                    "nothing goes through the repartition topic"
                );
                world.outputs_belong_to_committed_markers();
            }
        }
    }
}

#[test]
fn at_least_once_a_crash_loses_nothing() {
    let reference = World::new(false, 200).run(None);
    let exact = World::new(true, 200).run(None);
    assert_eq!(
        reference, exact,
        "without a crash, both guarantees write the same results"
    );
    for nth in [1, 4, 12] {
        // No transaction at least once: no step inside one.
        for step in STEPS.into_iter().filter(|s| *s != Step::InTransaction) {
            let got = World::new(false, 200).run(Some((0, nth, step, false)));
            let mut distinct = got.clone();
            distinct.dedup();
            assert_eq!(
                distinct, reference,
                "crash at {step:?} of checkpoint {nth}: every result, maybe twice"
            );
        }
    }
}

#[test]
fn a_fenced_writer_can_neither_write_nor_commit_and_its_transaction_is_aborted() {
    let broker = Broker::with_topics(&[("out", 1), ("control", 1)]);
    let mut old = FakeLog::new(&broker, "txn-0", true, "control", 0);
    old.fence().unwrap();
    old.begin().unwrap();
    let rec = Record {
        topic: "out",
        partition: Some(0),
        key: None,
        value: b"zombie",
        headers: &[],
    };
    old.send(&rec).unwrap();
    let mut new = FakeLog::new(&broker, "txn-0", true, "control", 0);
    new.fence().unwrap();
    assert!(old.send(&rec).unwrap_err().to_string().contains("ProducerFenced"));
    assert!(old.commit().unwrap_err().to_string().contains("ProducerFenced"));
    assert!(broker.borrow().committed("out").is_empty());
    assert_eq!(broker.borrow().open_records(), 0);
    // The new writer goes on; a reader is not held back by the aborted
    // records.
    new.begin().unwrap();
    new.send(&Record { value: b"new", ..rec }).unwrap();
    new.commit().unwrap();
    let out = broker.borrow().committed("out");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].value, b"new");
}

#[test]
fn restore_reads_the_last_committed_marker_of_its_own_job() {
    let mut world = World::new(true, 60);
    let mut p = world.start(0, &mut Uninterrupted).unwrap();
    world.feed(&mut p, 30).unwrap();
    let first = world.checkpoint(&mut p, &mut Uninterrupted).unwrap();
    assert_eq!(first.marker.source_offset, 30);
    assert_eq!(first.marker.kind, MarkerKind::Checkpoint);
    assert_eq!(first.marker.manifest, first.manifest_path);
    // What the log acknowledged of the transaction is in the marker.
    assert!(first.marker.delivered.get("rep").is_some_and(|p| !p.is_empty()));
    world.feed(&mut p, 10).unwrap();
    // A second checkpoint that never commits.
    let crashed = world.checkpoint(
        &mut p,
        &mut CrashAt {
            step: Some(Step::BeforeCommit),
        },
    );
    assert!(crashed.is_err());
    let restarted = world.start(0, &mut Uninterrupted).unwrap();
    assert_eq!(restarted.task.meta.source_offset, Some(30));
    assert_eq!(restarted.task.meta.checkpoint_id, first.marker.checkpoint_id);
    // A marker of another job on the same control topic hides ours.
    let mut foreign = first.marker.clone();
    foreign.job_uid = "another-job".into();
    let mut writer = FakeLog::new(&world.broker, "txn-other", true, "control", 0);
    writer.fence().unwrap();
    writer.begin().unwrap();
    writer
        .send(&Record {
            topic: "control",
            partition: Some(0),
            key: None,
            value: &serde_json::to_vec(&foreign).unwrap(),
            headers: &[],
        })
        .unwrap();
    writer.commit().unwrap();
    let mut log = FakeLog::new(&world.broker, "txn-0", true, "control", 0);
    assert_eq!(log.last_marker(JOB_UID).unwrap(), None);
}

#[test]
fn restore_never_silently_starts_empty() {
    use RestoreMode::*;
    let marker = |generation: i64| Marker {
        job_uid: "u".into(),
        task: 0,
        checkpoint_id: 3,
        instance: "i".into(),
        kind: MarkerKind::Checkpoint,
        savepoint_id: None,
        generation,
        manifest: "checkpoints/task-0/3-i/manifest.json".into(),
        source: None,
        source_offset: 10,
        keyed_offset: 4,
        time_ms: 0,
        delivered: BTreeMap::new(),
    };
    let a0 = SourceRef {
        topic: "a".into(),
        partition: 0,
    };
    let sp = Some("savepoints/sp/task-0/manifest.json".to_string());
    let own = RestoreSource::Checkpoint("checkpoints/task-0/3-i/manifest.json".into());
    // Same generation restarted: its own last checkpoint, whatever the mode.
    for mode in [Savepoint, LastState, Empty] {
        assert_eq!(
            restore_source(Some(&marker(2)), 2, mode, sp.clone(), false, 0, &a0).unwrap(),
            own
        );
    }
    // Same generation whose last commit is the savepoint it is told to
    // restore (a rescale within the generation): restored as the savepoint.
    let at_savepoint = Marker {
        manifest: sp.clone().unwrap(),
        kind: MarkerKind::Savepoint,
        ..marker(2)
    };
    assert_eq!(
        restore_source(Some(&at_savepoint), 2, Savepoint, sp.clone(), false, 0, &a0).unwrap(),
        RestoreSource::Savepoint(sp.clone().unwrap())
    );
    // New generation with a savepoint: the savepoint.
    assert_eq!(
        restore_source(Some(&marker(1)), 2, Savepoint, sp.clone(), false, 0, &a0).unwrap(),
        RestoreSource::Savepoint(sp.clone().unwrap())
    );
    assert!(restore_source(Some(&marker(1)), 2, Savepoint, None, true, 0, &a0).is_err());
    // New generation, last-state: the last checkpoint of the old one.
    assert_eq!(
        restore_source(Some(&marker(1)), 2, LastState, None, false, 0, &a0).unwrap(),
        own
    );
    // Stateless: empty state, reading on from the committed offsets.
    assert_eq!(
        restore_source(Some(&marker(1)), 2, Empty, None, false, 0, &a0).unwrap(),
        RestoreSource::Empty {
            offsets: Some((Some(10), 4))
        }
    );
    // ... but not another partition's offset (a replaced source topic).
    let mut theirs = marker(1);
    theirs.source = Some(SourceRef {
        topic: "b".into(),
        partition: 0,
    });
    assert_eq!(
        restore_source(Some(&theirs), 2, Empty, None, false, 0, &a0).unwrap(),
        RestoreSource::Empty {
            offsets: Some((None, 4))
        }
    );
    theirs.source = Some(a0.clone());
    assert_eq!(
        restore_source(Some(&theirs), 2, Empty, None, false, 0, &a0).unwrap(),
        RestoreSource::Empty {
            offsets: Some((Some(10), 4))
        }
    );
    // Nothing at all: refused unless the spec allows empty state.
    let err = restore_source(None, 1, LastState, None, false, 7, &a0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("task 7") && err.contains("allowEmptyState"), "{err}");
    assert_eq!(
        restore_source(None, 1, LastState, None, true, 0, &a0).unwrap(),
        RestoreSource::Empty { offsets: None }
    );
}
