//! Benchmarks of the exactly-once pipeline (issue #6), printed, not
//! asserted. Run in release against a real broker:
//!
//! ```text
//! STREAMOPS_BOOTSTRAP=10.244.0.1:9092 cargo test --release -p streamops-runtime \
//!     --test pipeline_bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! 1. throughput: input records/s of the pipeline (tumbling window,
//!    emit-on-update unless BENCH_EMIT=onWindowClose, 4 partitions, one
//!    process), exactly once and at least once, as a ratio to a plain
//!    rdkafka consume-and-produce copy on the same broker, same run;
//! 2. checkpoint duration and size with 1e6 keys in state (RocksDB),
//!    full and incremental;
//! 3. time from SIGKILL to processing again.

mod kafka;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka::*;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use streamops_runtime::checkpoint::store::{CheckpointStore, Target};
use streamops_runtime::dataflow::task::{Out, Task};
use streamops_runtime::pipeline::job::RestoreFrom;
use streamops_runtime::state::rocks::{RocksBackend, RocksOptions};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn input(partitions: u32, per_partition: usize, users: u32) -> Vec<Input> {
    let mut out = Vec::with_capacity(partitions as usize * per_partition);
    for p in 0..partitions {
        for i in 0..per_partition {
            let user = (i as u32 * 7919 + p * 104_729) % users;
            out.push(Input {
                partition: p as i32,
                value: json!({"user": format!("u{user}"), "ts": 1_700_000_000_000i64 + i as i64, "amount": i % 100})
                    .to_string()
                    .into_bytes(),
            });
        }
    }
    out
}

/// Plain copy: consume every record of `from` and produce it to `to`.
fn copy(from: &str, to: &str, total: usize, partitions: u32) -> Duration {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("copy"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(from, p as i32, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut n = 0;
    while n < total {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "copy stalled at {n}"
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            let mut rec = BaseRecord::<[u8], [u8]>::to(to).payload(m.payload().unwrap_or(&[]));
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            loop {
                match p.send(rec) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        rec = r;
                        p.poll(Duration::from_millis(5));
                    }
                }
            }
            n += 1;
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
    started.elapsed()
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Value of one sample of the runtime's `/metrics` (`series` exactly as
/// exposed, e.g. `streamops_runtime_pipeline_records_in_total{stage="source"}`).
fn metric(p: &Proc, series: &str) -> f64 {
    let Some((200, body)) = p.http("GET", "/metrics", None) else {
        return 0.0;
    };
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

const KEYED: &str = "streamops_runtime_pipeline_keyed_records_total";
const SOURCE_IN: &str = "streamops_runtime_pipeline_records_in_total{stage=\"source\"}";

/// Waits until stage 2 has applied `total` keyed records and a checkpoint
/// committed after that; returns (wall ms stage 1 had read every source
/// record, wall ms of that commit).
fn wait_processed_and_committed(p: &mut Proc, total: usize, timeout: Duration) -> (i64, i64) {
    wait_until_committed(p, total, KEYED, timeout)
}

/// [`wait_processed_and_committed`] with `done` the counter that reaches
/// `total` when every record went through (a stateless job has no stage 2:
/// [`SOURCE_IN`]).
fn wait_until_committed(p: &mut Proc, total: usize, done: &str, timeout: Duration) -> (i64, i64) {
    let started = Instant::now();
    let mut stage1 = None;
    loop {
        assert!(
            started.elapsed() < timeout,
            "pipeline stalled at {} of {total} ({done}):\n{}",
            metric(p, done),
            p.log()
        );
        if let Some(exit) = p.child.try_wait().unwrap() {
            panic!("runtime exited ({exit}):\n{}", p.log());
        }
        if stage1.is_none() && metric(p, SOURCE_IN) >= total as f64 {
            stage1 = Some(now_ms());
        }
        let keyed = metric(p, done);
        if std::env::var("BENCH_TRACE").is_ok() {
            eprintln!(
                "[trace] {} source {} keyed {keyed} checkpoints {} ({:.3}s)",
                now_ms(),
                metric(p, SOURCE_IN),
                metric(p, "streamops_runtime_checkpoint_duration_seconds_count"),
                metric(p, "streamops_runtime_checkpoint_duration_seconds_sum"),
            );
        }
        if keyed >= total as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(if std::env::var("BENCH_TRACE").is_ok() {
            200
        } else {
            20
        }));
    }
    let processed = now_ms();
    loop {
        if let Some(c) = p.status().and_then(|s| s["lastCommitMs"].as_i64())
            && c >= processed
        {
            return (stage1.unwrap_or(processed), c);
        }
        assert!(
            started.elapsed() < timeout,
            "no commit after processing:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One pipeline run over the records already in `topics.source`: seconds
/// from Running to all of them committed, seconds until stage 1 had read
/// them all, startup seconds, task checkpoints.
fn pipeline_run(
    topics: &Topics,
    guarantee: &str,
    interval: &str,
    total: usize,
    log: &str,
) -> (f64, f64, f64, f64) {
    let work = tempfile::tempdir().unwrap();
    let mut j = job(topics, 1, 1, &work.path().join("storage"), empty_ok());
    let emit: String = env_or("BENCH_EMIT", "onUpdate".to_string());
    set_spec(&mut j, |spec| {
        spec["pipeline"]["emit"] = json!(emit);
        spec["checkpoint"]["interval"] = json!(interval);
        spec["checkpoint"]["guarantee"] = json!(guarantee);
    });
    let path = write_job(work.path(), &j);
    let spawned = Instant::now();
    let mut proc = Proc::spawn(&path, "0-3", work.path(), None);
    proc.wait_running(Duration::from_secs(120));
    let startup = spawned.elapsed().as_secs_f64();
    let running = now_ms();
    let (stage1, done) = wait_processed_and_committed(&mut proc, total, Duration::from_secs(900));
    let checkpoints = metric(&proc, "streamops_runtime_checkpoints_total{kind=\"checkpoint\"}");
    proc.signal(libc::SIGTERM);
    proc.wait_exit(Duration::from_secs(60));
    if let Ok(dir) = std::env::var("BENCH_LOG_DIR") {
        let _ = std::fs::write(format!("{dir}/{log}.log"), proc.log());
    }
    (
        (done - running) as f64 / 1000.0,
        (stage1 - running) as f64 / 1000.0,
        startup,
        checkpoints,
    )
}

/// Pipeline throughput vs a plain copy, exactly once and at least once.
/// The pipeline's time runs from the moment it reports Running (restored,
/// partitions assigned) until every input record went through both stages
/// (source -> repartition topic -> window state -> sink) and a checkpoint
/// committed after the last one: the time until the whole input is
/// committed output. The three run one after another on the same input
/// (the pipelines on topics of their own), so each run's ratios compare
/// runs a minute apart.
#[test]
#[ignore = "benchmark: needs STREAMOPS_BOOTSTRAP and --release"]
fn pipeline_throughput_vs_plain_copy() {
    let runs: usize = env_or("BENCH_RUNS", 5);
    let per_partition: usize = env_or("BENCH_RECORDS_PER_PARTITION", 50_000);
    let interval: String = env_or("BENCH_INTERVAL", "1s".to_string());
    let (mut base, mut eos, mut alo, mut ratios, mut alo_ratios, mut stage1s, mut startups) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for run in 0..runs {
        let topics = Topics::create("bench", 4);
        let copy_to = format!("{}-copy", topics.source);
        create_topics(&[(&copy_to, 4, &[])]);
        let data = input(4, per_partition, 10_000);
        let total = data.len();
        produce(&topics.source, &data);
        let baseline = total as f64 / copy(&topics.source, &copy_to, total, 4).as_secs_f64();
        let (secs, stage1, startup, checkpoints) = pipeline_run(
            &topics,
            "exactlyOnce",
            &interval,
            total,
            &format!("throughput-{run}"),
        );
        let pipeline = total as f64 / secs;
        let at_least_once = Topics::create("bench-alo", 4);
        produce(&at_least_once.source, &data);
        let (alo_secs, _, _, alo_checkpoints) = pipeline_run(
            &at_least_once,
            "atLeastOnce",
            &interval,
            total,
            &format!("throughput-alo-{run}"),
        );
        let alo_rate = total as f64 / alo_secs;
        eprintln!(
            "[throughput] run {run}: {total} records; plain copy {baseline:.0} rec/s; exactly-once pipeline {pipeline:.0} rec/s \
             ({secs:.2}s from Running to committed output; stage 1 read all input after {stage1:.2}s; startup {startup:.2}s; \
             {checkpoints} task checkpoints); ratio {:.3}; at-least-once pipeline {alo_rate:.0} rec/s ({alo_secs:.2}s, \
             {alo_checkpoints} task checkpoints), ratio {:.3}",
            pipeline / baseline,
            alo_rate / baseline
        );
        base.push(baseline);
        eos.push(pipeline);
        alo.push(alo_rate);
        ratios.push(pipeline / baseline);
        alo_ratios.push(alo_rate / baseline);
        stage1s.push(stage1);
        startups.push(startup);
    }
    eprintln!(
        "[throughput] {runs} runs x {} records, interval {interval}, emit {}: plain copy median {}, exactly-once pipeline median {}, \
         ratio median {} (target >= 0.45 through the repartition topic); at-least-once pipeline median {}, ratio median {}; exactly-once stage 1 done \
         after median {}s; startup median {}s",
        per_partition * 4,
        env_or("BENCH_EMIT", "onUpdate".to_string()),
        stats(&base, 0),
        stats(&eos, 0),
        stats(&ratios, 3),
        stats(&alo, 0),
        stats(&alo_ratios, 3),
        stats(&stage1s, 2),
        stats(&startups, 2),
    );
}

/// One run of a stateless ETL job (a filter, a map of five fields, the
/// record written to the sink) over the records already in
/// `topics.source`: seconds from Running to all of them committed.
fn etl_run(topics: &Topics, interval: &str, total: usize, log: &str) -> f64 {
    let work = tempfile::tempdir().unwrap();
    let mut j = job(topics, 1, 1, &work.path().join("storage"), empty_ok());
    set_spec(&mut j, |spec| {
        let source = spec["source"].as_object_mut().unwrap();
        source.remove("eventTime");
        source.remove("watermark");
        spec.as_object_mut().unwrap().remove("lateEvents");
        spec["pipeline"] = json!({"steps": [
            {"name": "valid", "filter": "record.amount >= 0"},
            {"name": "shape", "map": {"user": "record.user", "ts": "record.ts", "amount": "record.amount",
                                      "cents": "record.amount * 100", "big": "record.amount > 90"}}
        ]});
        spec["checkpoint"]["interval"] = json!(interval);
    });
    j.topics.late_events = None;
    let path = write_job(work.path(), &j);
    let mut proc = Proc::spawn(&path, "0-3", work.path(), None);
    proc.wait_running(Duration::from_secs(120));
    let running = now_ms();
    let (_, done) = wait_until_committed(&mut proc, total, SOURCE_IN, Duration::from_secs(900));
    let out = metric(
        &proc,
        "streamops_runtime_pipeline_records_out_total{path=\"result\"}",
    );
    assert_eq!(out as usize, total, "every record written once");
    proc.signal(libc::SIGTERM);
    proc.wait_exit(Duration::from_secs(60));
    if let Ok(dir) = std::env::var("BENCH_LOG_DIR") {
        let _ = std::fs::write(format!("{dir}/{log}.log"), proc.log());
    }
    (done - running) as f64 / 1000.0
}

/// A stateless ETL job (decode, a filter, a map of five fields, encode,
/// exactly once) against a plain copy of the same records on the same
/// broker, alternated run by run. Issue 22's target: at least 0.8.
#[test]
#[ignore = "benchmark: needs STREAMOPS_BOOTSTRAP and --release"]
fn etl_throughput_vs_plain_copy() {
    let runs: usize = env_or("BENCH_RUNS", 5);
    let per_partition: usize = env_or("BENCH_RECORDS_PER_PARTITION", 50_000);
    let interval: String = env_or("BENCH_INTERVAL", "1s".to_string());
    let (mut base, mut etl, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let topics = Topics::create("etl", 4);
        let copy_to = format!("{}-copy", topics.source);
        create_topics(&[(&copy_to, 4, &[])]);
        let data = input(4, per_partition, 10_000);
        let total = data.len();
        produce(&topics.source, &data);
        let baseline = total as f64 / copy(&topics.source, &copy_to, total, 4).as_secs_f64();
        let secs = etl_run(&topics, &interval, total, &format!("etl-{run}"));
        let rate = total as f64 / secs;
        eprintln!(
            "[etl] run {run}: {total} records; plain copy {baseline:.0} rec/s; exactly-once ETL job {rate:.0} rec/s \
             ({secs:.2}s from Running to committed output); ratio {:.3}",
            rate / baseline
        );
        base.push(baseline);
        etl.push(rate);
        ratios.push(rate / baseline);
    }
    eprintln!(
        "[etl] {runs} runs x {} records, interval {interval}: plain copy median {}, exactly-once ETL job median {}, \
         ratio median {} (target >= 0.8)",
        per_partition * 4,
        stats(&base, 0),
        stats(&etl, 0),
        stats(&ratios, 3),
    );
}

/// "median (min .. max)".
fn stats(v: &[f64], digits: usize) -> String {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(
        "{:.*} (min {:.*}, max {:.*})",
        digits,
        median(v.to_vec()),
        digits,
        min,
        digits,
        max
    )
}

#[test]
#[ignore = "benchmark: run with --release"]
fn checkpoint_duration_and_size_with_a_million_keys() {
    let keys: u64 = std::env::var("BENCH_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let work = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let topics = Topics {
        source: "in".into(),
        partitions: 1,
        sink: "out".into(),
        late: "late".into(),
        dlq: "dlq".into(),
        repartition: "r".into(),
        control: "c".into(),
    };
    let j = job(
        &topics,
        1,
        1,
        &work.path().join("storage"),
        RestoreFrom {
            savepoint: None,
            allow_empty_state: false,
            mode: None,
        },
    );
    let mut spec = j.spec.clone();
    spec.pipeline.window.as_mut().expect("a windowed job").size =
        Some(streamops_crds::DurationSpec::from_millis(3_600_000));
    let plan = Arc::new(streamops_runtime::plan::compile(&spec.defaulted()).unwrap());
    let backend = RocksBackend::open(&work.path().join("db"), &RocksOptions::default()).unwrap();
    let mut task = Task::new(
        0,
        std::sync::Arc::new(streamops_runtime::dataflow::sources::Sources::positional("in", 1)),
        plan,
        Box::new(backend),
        0,
    );
    let mut out = Vec::new();
    let fill = Instant::now();
    let feed = |task: &mut Task, out: &mut Vec<Out>, from: u64, to: u64| {
        for k in from..to {
            let v = json!({"user": format!("user-{k}"), "ts": 1_700_000_000_000i64 + (k % 1000) as i64, "amount": 1})
                .to_string();
            out.clear();
            task.on_source(k as i64, None, v.as_bytes(), 1_800_000_000_000, out);
            for o in out.drain(..) {
                if let Out::Keyed { value, .. } = o {
                    let mut sink = Vec::new();
                    task.on_keyed(k as i64, &value, &mut sink).unwrap();
                }
            }
        }
    };
    feed(&mut task, &mut out, 0, keys);
    eprintln!(
        "[checkpoint] {keys} keys in state after {:.1}s",
        fill.elapsed().as_secs_f64()
    );
    let mut store = CheckpointStore::open(
        &format!("file://{}", work.path().join("storage").display()),
        rt.handle().clone(),
    )
    .unwrap();
    let mut checkpoint = |task: &mut Task, id: u64| {
        let started = Instant::now();
        let snap = work.path().join(format!("snap-{id}"));
        task.snapshot(&snap).unwrap();
        let (_, m) = store
            .write(
                0,
                &snap,
                Target::Checkpoint {
                    id,
                    instance: "bench",
                    db: "bench-0",
                },
                0,
            )
            .unwrap();
        (started.elapsed(), m.total_bytes())
    };
    let (d1, size1) = checkpoint(&mut task, 1);
    eprintln!(
        "[checkpoint] full: {:.2}s, {:.1} MiB",
        d1.as_secs_f64(),
        size1 as f64 / (1 << 20) as f64
    );
    feed(&mut task, &mut out, keys, keys + keys / 100);
    let before: u64 = std::fs::read_dir(work.path().join("storage/checkpoints/task-0/shared/bench-0"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let (d2, size2) = checkpoint(&mut task, 2);
    let after: u64 = std::fs::read_dir(work.path().join("storage/checkpoints/task-0/shared/bench-0"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    eprintln!(
        "[checkpoint] incremental after 1% new keys: {:.2}s, state {:.1} MiB, newly uploaded SSTs {:.1} MiB",
        d2.as_secs_f64(),
        size2 as f64 / (1 << 20) as f64,
        (after - before) as f64 / (1 << 20) as f64
    );
    // A savepoint: a self-contained full copy.
    let started = Instant::now();
    let snap = work.path().join("snap-sp");
    task.snapshot(&snap).unwrap();
    let (_, sp) = store
        .write(
            0,
            &snap,
            Target::Savepoint {
                id: "sp",
                checkpoint_id: 2,
                instance: "bench",
            },
            0,
        )
        .unwrap();
    eprintln!(
        "[checkpoint] savepoint: {:.2}s, {:.1} MiB",
        started.elapsed().as_secs_f64(),
        sp.total_bytes() as f64 / (1 << 20) as f64
    );
    drop(task);
    // A restart: a new instance restores checkpoint 2 (download, RocksDB
    // opened in place), takes 1% new keys, checkpoints. Its upload, against
    // the same snapshot written through a store that references nothing
    // (what a restart cost before: the whole state again).
    let m2 = "checkpoints/task-0/2-bench/manifest.json";
    let started = Instant::now();
    let mut store2 = CheckpointStore::open(
        &format!("file://{}", work.path().join("storage").display()),
        rt.handle().clone(),
    )
    .unwrap();
    let manifest = store2.read_manifest(m2).unwrap();
    let restored = work.path().join("restore");
    store2.download(&manifest, &restored).unwrap();
    let db = RocksBackend::open_snapshot(
        &restored.join("state"),
        &work.path().join("db-restored"),
        &RocksOptions::default(),
    )
    .unwrap();
    let mut task = Task::restore_opened(
        &restored,
        std::sync::Arc::new(streamops_runtime::dataflow::sources::Sources::positional("in", 1)),
        Arc::new(streamops_runtime::plan::compile(&spec.defaulted()).unwrap()),
        Box::new(db),
        0,
    )
    .unwrap();
    store2.adopt(0, &manifest);
    let in_place = started.elapsed();
    // Baseline, same run: the restore before (every key rewritten into a
    // fresh database).
    let started = Instant::now();
    let again = work.path().join("restore-rewrite");
    store2.download(&manifest, &again).unwrap();
    let fresh_db = RocksBackend::open(&work.path().join("db-rewrite"), &RocksOptions::default()).unwrap();
    let rewritten = Task::restore(
        &again,
        std::sync::Arc::new(streamops_runtime::dataflow::sources::Sources::positional("in", 1)),
        Arc::new(streamops_runtime::plan::compile(&spec.defaulted()).unwrap()),
        Box::new(fresh_db),
        0,
    )
    .unwrap();
    let rewrite = started.elapsed();
    drop(rewritten);
    eprintln!(
        "[checkpoint] restore (download + open in place): {:.2}s; rewriting every key into a fresh database: \
         {:.2}s (ratio {:.2})",
        in_place.as_secs_f64(),
        rewrite.as_secs_f64(),
        in_place.as_secs_f64() / rewrite.as_secs_f64()
    );
    feed(&mut task, &mut out, keys + keys / 100, keys + keys / 50);
    let started = Instant::now();
    let snap = work.path().join("snap-3");
    task.snapshot(&snap).unwrap();
    let restarted = Target::Checkpoint {
        id: 3,
        instance: "restarted",
        db: "restarted-0",
    };
    let (_, m3) = store2.write(0, &snap, restarted.clone(), 0).unwrap();
    let (d3, up3) = (started.elapsed(), store2.last_uploaded_bytes);
    let mut fresh = CheckpointStore::open(
        &format!("file://{}", work.path().join("storage-baseline").display()),
        rt.handle().clone(),
    )
    .unwrap();
    let started = Instant::now();
    fresh.write(0, &snap, restarted, 0).unwrap();
    let (d_full, up_full) = (started.elapsed(), fresh.last_uploaded_bytes);
    eprintln!(
        "[checkpoint] first checkpoint after the restart: {:.2}s, uploaded {:.1} MiB of {:.1} MiB; without \
         referencing the restored files: {:.2}s, {:.1} MiB (ratio {:.3})",
        d3.as_secs_f64(),
        up3 as f64 / (1 << 20) as f64,
        m3.total_bytes() as f64 / (1 << 20) as f64,
        d_full.as_secs_f64(),
        up_full as f64 / (1 << 20) as f64,
        up3 as f64 / up_full.max(1) as f64
    );
}

/// Time from SIGKILL to processing again with `BENCH_KEYS` (1e6) keys in
/// state: the job (4 partitions, one process, RocksDB) takes every key into
/// a one-hour window that stays open, so its whole state is restored. Per
/// round: SIGKILL, one new record per partition, restart; measured until
/// the new process is Running (markers read, state restored, partitions
/// assigned) and until it has read a new source record.
#[test]
#[ignore = "benchmark: needs STREAMOPS_BOOTSTRAP and --release"]
fn time_from_sigkill_to_processing_again() {
    let keys: usize = env_or("BENCH_KEYS", 1_000_000);
    let rounds: usize = env_or("BENCH_RECOVERY_ROUNDS", 5);
    let interval: String = env_or("BENCH_INTERVAL", "2s".to_string());
    let topics = Topics::create("recovery", 4);
    let work = tempfile::tempdir().unwrap();
    let base = 1_700_000_000_000i64;
    let data: Vec<Input> = (0..keys)
        .map(|k| Input {
            partition: (k % 4) as i32,
            value: json!({"user": format!("user-{k}"), "ts": base + (k / 4 % 1000) as i64, "amount": 1})
                .to_string()
                .into_bytes(),
        })
        .collect();
    let produced = Instant::now();
    produce(&topics.source, &data);
    eprintln!(
        "[recovery] produced {keys} records with distinct keys in {:.1}s",
        produced.elapsed().as_secs_f64()
    );
    let mut j = job(&topics, 1, 1, &work.path().join("storage"), empty_ok());
    set_spec(&mut j, |spec| {
        spec["pipeline"]["window"]["size"] = json!("1h");
        spec["checkpoint"]["interval"] = json!(interval);
    });
    let path = write_job(work.path(), &j);
    let mut p = Proc::spawn(&path, "0-3", work.path(), None);
    p.wait_running(Duration::from_secs(120));
    let running = now_ms();
    let (_, done) = wait_processed_and_committed(&mut p, keys, Duration::from_secs(1800));
    eprintln!(
        "[recovery] {keys} keys in state, committed {:.1}s after Running ({:.0} rec/s); last checkpoint {:.1} MiB; \
         checkpoint duration (snapshot+upload+commit, per task) mean {:.3}s over {} task checkpoints",
        (done - running) as f64 / 1000.0,
        keys as f64 * 1000.0 / (done - running) as f64,
        metric(&p, "streamops_runtime_checkpoint_size_bytes") / (1 << 20) as f64,
        metric(&p, "streamops_runtime_checkpoint_duration_seconds_sum")
            / metric(&p, "streamops_runtime_checkpoint_duration_seconds_count").max(1.0),
        metric(&p, "streamops_runtime_checkpoint_duration_seconds_count"),
    );
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let (mut to_running, mut to_record) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // A checkpoint after the last round's new records.
        std::thread::sleep(Duration::from_millis(500) + humantime_ms(&interval) * 2);
        p.signal(libc::SIGKILL);
        p.wait_exit(Duration::from_secs(10));
        let killed = Instant::now();
        for part in 0..4 {
            let v = json!({"user": format!("new-{round}-{part}"), "ts": base + 500, "amount": 1}).to_string();
            producer
                .send(
                    BaseRecord::<(), str>::to(&topics.source)
                        .partition(part)
                        .payload(&v),
                )
                .unwrap();
        }
        producer.flush(Duration::from_secs(10)).unwrap();
        p = Proc::spawn(&path, "0-3", work.path(), None);
        p.wait_running(Duration::from_secs(300));
        let r = killed.elapsed().as_secs_f64();
        while metric(&p, SOURCE_IN) < 1.0 {
            assert!(
                killed.elapsed() < Duration::from_secs(300),
                "no record read:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let f = killed.elapsed().as_secs_f64();
        let restore = metric(&p, "streamops_runtime_restore_duration_seconds_sum");
        eprintln!(
            "[recovery] round {round}: SIGKILL -> Running {r:.2}s, -> first new record read {f:.2}s \
             (restore of the 4 tasks' state {restore:.2}s in total)"
        );
        to_running.push(r);
        to_record.push(f);
    }
    eprintln!(
        "[recovery] {keys} keys, {rounds} rounds: SIGKILL -> Running median {}s; -> first record read median {}s \
         (target < 10 s)",
        stats(&to_running, 2),
        stats(&to_record, 2)
    );
    p.signal(libc::SIGTERM);
    p.wait_exit(Duration::from_secs(60));
}

fn humantime_ms(s: &str) -> Duration {
    let n: u64 = s
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(1);
    if s.ends_with("ms") {
        Duration::from_millis(n)
    } else {
        Duration::from_secs(n)
    }
}

/// End-to-end latency of window results vs the checkpoint interval: one
/// source partition, 1 s tumbling windows, no out-of-orderness, final
/// results only, under a steady stream: ten records per window, one every
/// 100 ms of wall time and of event time, so one window closes per second
/// and the job's transactions are always open somewhere. The first record
/// of window k moves the watermark past the end of window k-1. Latency: from
/// producing that record to the first final result of window k-1 read by a
/// read_committed consumer.
#[test]
#[ignore = "benchmark: needs STREAMOPS_BOOTSTRAP and --release"]
fn window_result_latency_vs_checkpoint_interval() {
    let intervals: String = env_or("BENCH_LATENCY_INTERVALS", "1s,2s,5s".to_string());
    let guarantees: String = env_or("BENCH_LATENCY_GUARANTEES", "exactlyOnce,atLeastOnce".to_string());
    let samples: usize = env_or("BENCH_LATENCY_SAMPLES", 20);
    let repeats: usize = env_or("BENCH_RUNS", 1);
    let runs = intervals
        .split(',')
        .flat_map(|i| guarantees.split(',').map(move |g| (i, g)));
    for (interval, guarantee) in runs {
        let (mut p50s, mut p99x) = (Vec::new(), Vec::new());
        for _ in 0..repeats {
            let (p50, ratio) = latency_run(interval, guarantee, samples);
            p50s.push(p50);
            p99x.push(ratio);
        }
        eprintln!(
            "[latency] {guarantee}, interval {interval}, {repeats} runs of {samples} windows: p50 median {}s; \
             p99 / interval median {} (target < 2)",
            stats(&p50s, 2),
            stats(&p99x, 2)
        );
    }
}

/// One job, `samples` windows: (p50 seconds, p99 / interval).
fn latency_run(interval: &str, guarantee: &str, samples: usize) -> (f64, f64) {
    let iv = humantime_ms(interval);
    let topics = Topics::create("latency", 1);
    let work = tempfile::tempdir().unwrap();
    let mut j = job(&topics, 1, 1, &work.path().join("storage"), empty_ok());
    set_spec(&mut j, |spec| {
        spec["source"]["watermark"]["outOfOrderness"] = json!("0ms");
        spec["checkpoint"]["interval"] = json!(interval);
        spec["checkpoint"]["guarantee"] = json!(guarantee);
    });
    let path = write_job(work.path(), &j);
    let mut p = Proc::spawn(&path, "0", work.path(), None);
    p.wait_running(Duration::from_secs(120));
    // Reader: first arrival (wall ms) of a final result per window start.
    let seen: Arc<std::sync::Mutex<std::collections::BTreeMap<i64, i64>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (seen, stop, sink) = (seen.clone(), stop.clone(), topics.sink.clone());
        std::thread::spawn(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap())
                .set("group.id", unique("latency"))
                .set("isolation.level", "read_committed")
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "10")
                .create()
                .unwrap();
            let mut tpl = TopicPartitionList::new();
            for part in 0..3 {
                tpl.add_partition_offset(&sink, part, Offset::Beginning).unwrap();
            }
            c.assign(&tpl).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(10)) {
                    let at = now_ms();
                    let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap_or(&[])).unwrap();
                    if v["final"] == json!(true) {
                        let start = v["windowStart"].as_i64().unwrap();
                        seen.lock().unwrap().entry(start).or_insert(at);
                    }
                }
            }
        })
    };
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let base = 1_700_000_000_000i64;
    let mut closed_at = std::collections::BTreeMap::new();
    let started = Instant::now();
    for k in 0..=samples as i64 {
        for i in 0..10i64 {
            // Wall clock paced to event time: record i of window k at
            // k s + i x 100 ms after the start.
            let due = started + Duration::from_millis((k * 1000 + i * 100) as u64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            let sent = now_ms();
            let v =
                json!({"user": format!("u{i}"), "ts": base + k * 1000 + i * 100, "amount": i}).to_string();
            producer
                .send(BaseRecord::<(), str>::to(&topics.source).partition(0).payload(&v))
                .unwrap();
            producer.flush(Duration::from_secs(10)).unwrap();
            if i == 0 && k > 0 {
                closed_at.insert(base + (k - 1) * 1000, sent);
            }
        }
    }
    // The last windows' results: one more interval and commit.
    std::thread::sleep(iv * 2 + Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    let seen = seen.lock().unwrap();
    let mut lat: Vec<f64> = closed_at
        .iter()
        .filter_map(|(start, sent)| seen.get(start).map(|at| (at - sent) as f64 / 1000.0))
        .collect();
    let missing = closed_at.len() - lat.len();
    assert!(!lat.is_empty(), "no window result arrived:\n{}", p.log());
    let scheduled = metric(&p, "streamops_runtime_checkpoints_total{kind=\"checkpoint\"}");
    let early = metric(&p, "streamops_runtime_checkpoints_early_total");
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1];
    eprintln!(
        "[latency] {guarantee}, interval {interval}: {} windows, p50 {:.2}s, p99 {:.2}s, min {:.2}s, max {:.2}s \
         ({:.2} x interval at p99; target < 2 x); {missing} windows without a result; {scheduled} checkpoints, \
         {early} of them early (a window fired)",
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat[0],
        lat[lat.len() - 1],
        pct(0.99) / iv.as_secs_f64()
    );
    p.signal(libc::SIGTERM);
    p.wait_exit(Duration::from_secs(60));
    (pct(0.5), pct(0.99) / iv.as_secs_f64())
}
