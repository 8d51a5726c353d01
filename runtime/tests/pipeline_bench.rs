//! Benchmarks of the exactly-once pipeline (issue #6), printed, not
//! asserted. Run in release against a real broker:
//!
//! ```text
//! STREAMOPS_BOOTSTRAP=10.244.0.1:9092 cargo test --release -p streamops-runtime \
//!     --test pipeline_bench -- --ignored --nocapture --test-threads=1
//! ```
//!
//! 1. throughput: input records/s of the pipeline (tumbling window,
//!    emit-on-update, 4 partitions, one process) as a ratio to a plain
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
use streamops_runtime::pipeline::job::{JobExt, RestoreFrom};
use streamops_runtime::pipeline::store::{CheckpointStore, Target};
use streamops_runtime::pipeline::task::{Out, Task};
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

/// Committed input offsets of the job's consumer group, summed.
fn committed(group: &str, topic: &str, partitions: u32) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p as i32);
    }
    c.committed_offsets(tpl, Duration::from_secs(10))
        .map(|t| {
            t.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
#[ignore = "benchmark: needs STREAMOPS_BOOTSTRAP and --release"]
fn pipeline_throughput_vs_plain_copy() {
    let runs = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let per_partition: usize = std::env::var("BENCH_RECORDS_PER_PARTITION")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let (mut base, mut eos, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let topics = Topics::create("bench", 4);
        let copy_to = format!("{}-copy", topics.source);
        create_topics(&[(&copy_to, 4, &[])]);
        let data = input(4, per_partition, 10_000);
        let total = data.len();
        produce(&topics.source, &data);
        let baseline = total as f64 / copy(&topics.source, &copy_to, total, 4).as_secs_f64();

        let work = tempfile::tempdir().unwrap();
        let mut j = job(
            &topics,
            1,
            1,
            &work.path().join("storage"),
            RestoreFrom {
                savepoint: None,
                allow_empty_state: true,
                mode: None,
            },
        );
        let mut spec = serde_json::to_value(&j.spec).unwrap();
        spec["pipeline"]["emit"] = json!("onUpdate");
        spec["checkpoint"]["interval"] = json!("1s");
        j.spec = serde_json::from_value(spec).unwrap();
        let path = write_job(work.path(), &j);
        let started = Instant::now();
        let mut proc = Proc::spawn(&path, "0-3", work.path(), None);
        let group = j.group_id();
        while committed(&group, &topics.source, 4) < total as i64 {
            assert!(
                started.elapsed() < Duration::from_secs(900),
                "pipeline stalled:\n{}",
                proc.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let pipeline = total as f64 / started.elapsed().as_secs_f64();
        proc.signal(libc::SIGTERM);
        proc.wait_exit(Duration::from_secs(60));
        eprintln!(
            "[throughput] run {run}: plain copy {baseline:.0} rec/s, exactly-once pipeline {pipeline:.0} rec/s, ratio {:.2}",
            pipeline / baseline
        );
        base.push(baseline);
        eos.push(pipeline);
        ratios.push(pipeline / baseline);
    }
    eprintln!(
        "[throughput] median of {runs}: plain copy {:.0} rec/s, pipeline {:.0} rec/s, ratio {:.2} (target >= 0.7)",
        median(base),
        median(eos),
        median(ratios)
    );
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
    spec.pipeline.window.size = Some(streamops_crds::DurationSpec::from_millis(3_600_000));
    let plan = Arc::new(streamops_runtime::plan::compile(&spec.defaulted()).unwrap());
    let backend = RocksBackend::open(&work.path().join("db"), &RocksOptions::default()).unwrap();
    let mut task = Task::new(0, 1, plan, Box::new(backend), 0);
    let mut out = Vec::new();
    let fill = Instant::now();
    let feed = |task: &mut Task, out: &mut Vec<Out>, from: u64, to: u64| {
        for k in from..to {
            let v = json!({"user": format!("user-{k}"), "ts": 1_700_000_000_000i64 + (k % 1000) as i64, "amount": 1})
                .to_string();
            out.clear();
            task.on_source(k as i64, None, v.as_bytes(), 0, out);
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
                    db: "db",
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
    let before: u64 = std::fs::read_dir(work.path().join("storage/checkpoints/task-0/shared/db"))
        .unwrap()
        .flatten()
        .map(|e| e.metadata().unwrap().len())
        .sum();
    let (d2, size2) = checkpoint(&mut task, 2);
    let after: u64 = std::fs::read_dir(work.path().join("storage/checkpoints/task-0/shared/db"))
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
}

#[test]
#[ignore = "benchmark: needs STREAMOPS_BOOTSTRAP and --release"]
fn time_from_sigkill_to_processing_again() {
    let topics = Topics::create("recovery", 4);
    let work = tempfile::tempdir().unwrap();
    produce(&topics.source, &input(4, 20_000, 100_000));
    let path = write_job(
        work.path(),
        &job(
            &topics,
            1,
            1,
            &work.path().join("storage"),
            RestoreFrom {
                savepoint: None,
                allow_empty_state: true,
                mode: None,
            },
        ),
    );
    let mut times = Vec::new();
    for round in 0..5 {
        let mut p = Proc::spawn(&path, "0-3", work.path(), None);
        p.wait_running(Duration::from_secs(120));
        std::thread::sleep(Duration::from_secs(2));
        p.signal(libc::SIGKILL);
        p.wait_exit(Duration::from_secs(10));
        let killed = Instant::now();
        let mut q = Proc::spawn(&path, "0-3", work.path(), None);
        q.wait_running(Duration::from_secs(120));
        let t = killed.elapsed().as_secs_f64();
        eprintln!("[recovery] round {round}: SIGKILL -> processing again in {t:.2}s");
        times.push(t);
        q.signal(libc::SIGTERM);
        q.wait_exit(Duration::from_secs(60));
    }
    eprintln!("[recovery] median {:.2}s over {} rounds", median(times), 5);
}
