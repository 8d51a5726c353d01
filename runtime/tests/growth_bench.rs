//! Benchmark, not a test: how long a job takes from "the source topic grew"
//! to processing again at the new partition count, and how fast its keyed
//! state moves. Ignored by plain `cargo test` (it needs STREAMOPS_BOOTSTRAP
//! and takes minutes); run it with the release binary:
//!
//! ```text
//! cargo build --release -p streamops-runtime
//! STREAMOPS_RUNTIME_BIN=$CARGO_TARGET_DIR/release/streamops-runtime \
//! STREAMOPS_BENCH_KEYS=100000,1000000 STREAMOPS_BENCH_RUNS=5 \
//!   cargo test --release -p streamops-runtime --test growth_bench -- --ignored --nocapture
//! ```
//!
//! Per run: `keys` distinct keys, one record each, over 4 source
//! partitions, all in one open 1-hour window (so every key's state is live
//! and moves); two runtime processes run the job at 4 tasks until every
//! record is applied. First the baseline (below), then what the operator
//! does on a growth, timed: a
//! drained stop-with-savepoint asked of both processes (`drain`), the
//! source and internal topics grown to 6 partitions, and three processes
//! at 6 tasks restoring the savepoint with the state re-sharded until all
//! report `Running` (`restore`). `moved` is the state the re-sharding
//! restores downloaded (every new task reads the old tasks holding its key
//! groups), `rate` that over the restore time. Scheduling pods is not in
//! these figures (the cluster test `a_grown_source_topic_moves_the_state_
//! to_the_new_partitions` covers the operator's part). The baseline, in the
//! same run on the same state: a plain stop-with-savepoint and restore at
//! the same count, which is what any upgrade costs.

mod kafka;

use std::time::{Duration, Instant};

use kafka::*;
use serde_json::json;
use streamops_runtime::pipeline::job::RestoreFrom;

fn metric(p: &Proc, name: &str) -> u64 {
    p.http("GET", "/metrics", None)
        .map(|(_, body)| {
            body.lines()
                .filter(|l| l.split_whitespace().next().is_some_and(|n| n.ends_with(name)))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .sum::<f64>() as u64
        })
        .unwrap_or(0)
}

struct Run {
    /// The baseline: a plain stop-with-savepoint and restore at the same
    /// count (4 tasks on two processes), same state, same run.
    same_count: Duration,
    drain: Duration,
    restore: Duration,
    moved_bytes: u64,
}

fn one_run(keys: usize) -> Run {
    let mut topics = Topics::create("growbench", 4);
    let work = tempfile::tempdir().unwrap();
    let storage = work.path().join("storage");
    let t0 = 1_700_000_000_000i64;
    let data: Vec<Input> = (0..keys)
        .map(|i| Input {
            partition: (i % 4) as i32,
            value: json!({"user": format!("u{i}"), "ts": t0 + (i % 1_000) as i64, "amount": i % 100})
                .to_string()
                .into_bytes(),
        })
        .collect();
    produce(&topics.source, &data);
    let key_groups = streamops_crds::runtime_api::default_key_groups(4);
    let job_at = |topics: &Topics, generation: i64, restore: RestoreFrom| {
        let mut j = job(topics, 3, generation, &storage, restore);
        j.key_groups = Some(key_groups);
        set_spec(&mut j, |v| {
            v["pipeline"]["window"]["size"] = json!("1h");
            v["checkpoint"]["interval"] = json!("2s");
        });
        write_job(work.path(), &j)
    };
    let dir = |name: &str| {
        let d = work.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let gen1 = job_at(&topics, 1, empty_ok());
    let mut old: Vec<Proc> = [("0,2", "a"), ("1,3", "b")]
        .iter()
        .map(|(tasks, d)| Proc::spawn(&gen1, tasks, &dir(d), None))
        .collect();
    for p in &mut old {
        p.wait_running(Duration::from_secs(60));
    }
    let deadline = Instant::now() + Duration::from_secs(900);
    while old.iter().map(|p| metric(p, "keyed_records_total")).sum::<u64>() < keys as u64 {
        assert!(Instant::now() < deadline, "gen1 did not apply {keys} records");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Baseline: stop with a plain savepoint, restore at the same count.
    let started = Instant::now();
    let mut location = None;
    for p in &old {
        p.request_savepoint("same", true, false);
    }
    for p in &old {
        let sp = p.wait_savepoint("same", Duration::from_secs(600));
        assert_eq!(sp["state"], "Completed", "{sp}");
        location = sp["location"].as_str().map(str::to_string);
    }
    drop(old);
    let again = job_at(
        &topics,
        2,
        RestoreFrom {
            savepoint: location,
            allow_empty_state: false,
            mode: None,
        },
    );
    let mut old: Vec<Proc> = [("0,2", "a2"), ("1,3", "b2")]
        .iter()
        .map(|(tasks, d)| Proc::spawn(&again, tasks, &dir(d), None))
        .collect();
    for p in &mut old {
        p.wait_running(Duration::from_secs(600));
    }
    let same_count = started.elapsed();
    let started = Instant::now();
    for p in &old {
        p.request_savepoint("grow", true, true);
    }
    let mut location = None;
    for p in &old {
        let sp = p.wait_savepoint("grow", Duration::from_secs(600));
        assert_eq!(sp["state"], "Completed", "{sp}");
        assert_eq!(sp["drained"], true, "{sp}");
        location = sp["location"].as_str().map(str::to_string);
    }
    let drain = started.elapsed();
    drop(old);
    let started = Instant::now();
    grow_topics(&[
        (&topics.source, 6),
        (&topics.repartition, 6),
        (&topics.control, 6),
    ]);
    topics.partitions = 6;
    let gen3 = job_at(
        &topics,
        3,
        RestoreFrom {
            savepoint: location,
            allow_empty_state: false,
            mode: None,
        },
    );
    let mut new: Vec<Proc> = ["0,3", "1,4", "2,5"]
        .iter()
        .enumerate()
        .map(|(i, tasks)| Proc::spawn(&gen3, tasks, &dir(&format!("n{i}")), None))
        .collect();
    for p in &mut new {
        p.wait_running(Duration::from_secs(600));
    }
    let restore = started.elapsed();
    let moved_bytes = new
        .iter()
        .flat_map(|p| {
            plain(&p.log())
                .lines()
                .filter(|l| l.contains("re-sharded"))
                .filter_map(|l| {
                    let at = l.find(" bytes=")? + " bytes=".len();
                    l[at..]
                        .split(|c: char| !c.is_ascii_digit())
                        .next()?
                        .parse::<u64>()
                        .ok()
                })
                .collect::<Vec<_>>()
        })
        .sum();
    assert!(moved_bytes > 0, "no re-sharded restore logged its bytes");
    Run {
        same_count,
        drain,
        restore,
        moved_bytes,
    }
}

/// `text` without its terminal colour sequences (`ESC [ ... m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn median_min_max(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!("{:.2} ({:.2} .. {:.2})", v[v.len() / 2], v[0], v[v.len() - 1])
}

#[test]
#[ignore = "benchmark: needs a Kafka broker (STREAMOPS_BOOTSTRAP) and minutes"]
fn growth_time_and_state_moved() {
    let keys: Vec<usize> = std::env::var("STREAMOPS_BENCH_KEYS")
        .unwrap_or_else(|_| "100000".into())
        .split(',')
        .map(|k| {
            k.trim()
                .parse()
                .expect("STREAMOPS_BENCH_KEYS: comma-separated numbers")
        })
        .collect();
    let runs: usize = std::env::var("STREAMOPS_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    println!(
        "| keys | same-count stop + restore s (baseline) | drain s | re-sharding restore s | growth to processing s | \
         growth / baseline | state moved MiB | MiB/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for k in keys {
        let all: Vec<Run> = (0..runs).map(|_| one_run(k)).collect();
        let secs = |f: &dyn Fn(&Run) -> Duration| all.iter().map(|r| f(r).as_secs_f64()).collect::<Vec<_>>();
        let mib = |r: &Run| r.moved_bytes as f64 / (1 << 20) as f64;
        println!(
            "| {k} | {} | {} | {} | {} | {} | {} | {} |",
            median_min_max(secs(&|r| r.same_count)),
            median_min_max(secs(&|r| r.drain)),
            median_min_max(secs(&|r| r.restore)),
            median_min_max(secs(&|r| r.drain + r.restore)),
            median_min_max(
                all.iter()
                    .map(|r| (r.drain + r.restore).as_secs_f64() / r.same_count.as_secs_f64())
                    .collect()
            ),
            median_min_max(all.iter().map(mib).collect()),
            median_min_max(all.iter().map(|r| mib(r) / r.restore.as_secs_f64()).collect()),
        );
    }
}
