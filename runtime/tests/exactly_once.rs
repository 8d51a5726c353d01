//! Exactly-once proofs against Apache Kafka. Ignored by plain `cargo test`
//! (they need STREAMOPS_BOOTSTRAP); `e2e/test.sh` runs them with
//! `--ignored` against the broker `e2e/cluster/cluster.sh broker up` starts.
//!
//! Every output record carries `<task>:<checkpoint>:<instance>` and every
//! committed checkpoint has a marker with the same triple. The verifier
//! accepts no anomaly: every expected result exactly once with the
//! reference's value, nothing else, and no record visible without its
//! committed marker.

mod kafka;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kafka::*;
use streamops_runtime::pipeline::crash::CRASH_POINTS;
use streamops_runtime::pipeline::job::RestoreFrom;

fn report(name: &str, v: &Verdict, faults: &[String]) {
    let results: usize = v.results.values().map(Vec::len).sum();
    eprintln!(
        "[{name}] committed results {results}, faults {}, records without a committed marker {}, untagged {}",
        faults.len(),
        v.uncommitted,
        v.untagged
    );
    for f in faults.iter().take(20) {
        eprintln!("  fault: {f}");
    }
}

#[test]
#[ignore = "needs a Kafka broker: STREAMOPS_BOOTSTRAP (run by e2e/test.sh)"]
fn exactly_once_under_sigkill_and_crash_points() {
    let topics = Topics::create("eos", 4);
    let work = tempfile::tempdir().unwrap();
    let storage = work.path().join("storage");
    let job = write_job(work.path(), &job(&topics, 1, 1, &storage, empty_ok()));
    let data = dataset(4, 6_000, 300);
    let (expected, malformed) = reference(&data);
    let feeder = produce_slowly(topics.source.clone(), data, Duration::from_secs(40));

    let mut hits: BTreeMap<String, usize> = CRASH_POINTS.iter().map(|p| (p.to_string(), 0)).collect();
    let mut random_kills = 0;
    let mut rnd = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rnd ^= rnd << 13;
        rnd ^= rnd >> 7;
        rnd ^= rnd << 17;
        rnd
    };
    let started = Instant::now();
    let mut round = 0usize;
    // Until every crash point was hit and at least 20 kills happened.
    while random_kills + hits.values().sum::<usize>() < 24 || hits.values().any(|n| *n == 0) {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "fault schedule did not finish: {hits:?}"
        );
        round += 1;
        let missing: Vec<&String> = hits.iter().filter(|(_, n)| **n == 0).map(|(p, _)| p).collect();
        let crash = if round.is_multiple_of(3) {
            None
        } else {
            let p = missing
                .get(round % missing.len().max(1))
                .map(|s| s.to_string())
                .unwrap_or_else(|| CRASH_POINTS[round % CRASH_POINTS.len()].to_string());
            let prob = if p == "during-restore" { "0.5" } else { "0.15" };
            Some(format!("{p}:{prob}"))
        };
        let mut proc = Proc::spawn(&job, "0-3", work.path(), crash.as_deref());
        // Lifetimes count from processing, so kills land mid-stream.
        let life = Duration::from_millis(300 + next() % 2_500);
        let t0 = Instant::now();
        let outcome = match proc.wait_running_or_exit(Duration::from_secs(60)) {
            Some(exit) => Some(exit),
            None => proc.wait_exit(life),
        };
        let log = proc.log();
        eprintln!(
            "[round {round}] crash {crash:?}: {} after {:.1}s; last log: {}",
            if outcome.is_some() { "exited" } else { "killed" },
            t0.elapsed().as_secs_f64(),
            log.lines().last().unwrap_or("")
        );
        for l in log.lines().filter(|l| {
            l.contains("read checkpoint markers") || l.contains("restored") || l.contains("empty state")
        }) {
            eprintln!("    {l}");
        }
        match outcome {
            Some(_) => {
                let log = proc.log();
                let point = log
                    .lines()
                    .find_map(|l| l.strip_prefix("streamops-crash-point: "))
                    .map(str::to_string);
                match point {
                    Some(p) => *hits.entry(p).or_default() += 1,
                    None => panic!("runtime exited without a crash point:\n{log}"),
                }
            }
            None => {
                proc.signal(libc::SIGKILL);
                proc.wait_exit(Duration::from_secs(10));
                random_kills += 1;
            }
        }
    }
    feeder.join().unwrap();
    // A clean run to the end, then a graceful stop.
    let mut proc = Proc::spawn(&job, "0-3", work.path(), None);
    let verdict = wait_complete(&topics, &expected, Duration::from_secs(180));
    proc.signal(libc::SIGTERM);
    let exit = proc.wait_exit(Duration::from_secs(60)).expect("graceful stop");
    assert!(exit.success(), "SIGTERM must end cleanly:\n{}", proc.log());
    let verdict = if verdict.results.len() == expected.len() {
        verify_sink(&topics)
    } else {
        verdict
    };
    let f = faults(&expected, &verdict);
    eprintln!(
        "[exactly-once] kills: random SIGKILL {random_kills}, crash points {hits:?}, total {}",
        random_kills + hits.values().sum::<usize>()
    );
    report("exactly-once", &verdict, &f);
    let (dlq_ok, dlq_uncommitted) = committed_count(&topics.dlq, &topics.control);
    eprintln!(
        "[exactly-once] dead letters committed {dlq_ok} (expected {malformed}), without a committed marker \
         {dlq_uncommitted}"
    );
    assert!(f.is_empty(), "product faults: {f:?}\n{}", proc.log());
    assert_eq!(
        (dlq_ok, dlq_uncommitted),
        (malformed, 0),
        "every malformed record dead-lettered exactly once"
    );
    assert!(random_kills + hits.values().sum::<usize>() >= 20);
}

#[test]
#[ignore = "needs a Kafka broker: STREAMOPS_BOOTSTRAP (run by e2e/test.sh)"]
fn savepoint_restores_at_other_parallelism() {
    for restore_at in [2usize, 8] {
        let topics = Topics::create("rescale", 8);
        let work = tempfile::tempdir().unwrap();
        let storage = work.path().join("storage");
        let data = dataset(8, 2_000, 200);
        let (expected, _) = reference(&data);
        // First half of each partition, then a savepoint at parallelism 4.
        let (first, second): (Vec<_>, Vec<_>) = {
            let mut seen: BTreeMap<i32, usize> = BTreeMap::new();
            data.into_iter().partition(|r| {
                let n = seen.entry(r.partition).or_default();
                *n += 1;
                *n <= 1_000
            })
        };
        produce(&topics.source, &first);
        let gen1 = write_job(work.path(), &job(&topics, 4, 1, &storage, empty_ok()));
        let mut old: Vec<Proc> = (0..4)
            .map(|i| {
                let dir = work.path().join(format!("p4-{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                Proc::spawn(&gen1, &format!("{i},{}", i + 4), &dir, None)
            })
            .collect();
        for p in &mut old {
            p.wait_running(Duration::from_secs(60));
        }
        std::thread::sleep(Duration::from_secs(3));
        let mut location = None;
        for p in &old {
            let sp = p.savepoint("sp-1", true, Duration::from_secs(60));
            assert_eq!(sp["state"], "Completed", "{sp}");
            location = sp["location"].as_str().map(str::to_string);
            // What the savepoint copied: each task's last commit, summed
            // (the operator predicts the next savepoint's duration from it).
            let status = p.status().unwrap();
            let per_task = status["checkpointBytes"].as_object().cloned().unwrap_or_default();
            assert_eq!(per_task.len(), 2, "{status}");
            let sum: i64 = per_task.values().filter_map(serde_json::Value::as_i64).sum();
            assert!(sum > 0 && sp["bytes"].as_i64() == Some(sum), "{sp} vs {status}");
        }
        for p in &old {
            assert_eq!(p.status().unwrap()["state"], "Stopped");
        }
        let old_logs: Vec<String> = old
            .iter()
            .map(|p| format!("--- gen1 runtime {}\n{}", p.tasks, p.log()))
            .collect();
        drop(old);
        produce(&topics.source, &second);
        // Generation 2 restores the savepoint at another parallelism.
        let restore = RestoreFrom {
            savepoint: location,
            allow_empty_state: false,
            mode: None,
        };
        let gen2 = write_job(
            work.path(),
            &job(&topics, restore_at as u32, 2, &storage, restore),
        );
        let mut new: Vec<Proc> = (0..restore_at)
            .map(|i| {
                let tasks: Vec<String> = (0..8)
                    .filter(|t| t % restore_at == i)
                    .map(|t| t.to_string())
                    .collect();
                let dir = work.path().join(format!("p{restore_at}-{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                Proc::spawn(&gen2, &tasks.join(","), &dir, None)
            })
            .collect();
        let v = wait_complete(&topics, &expected, Duration::from_secs(300));
        let f = faults(&expected, &v);
        report(&format!("rescale 4->{restore_at}"), &v, &f);
        let (late, _) = committed_count(&topics.late, &topics.control);
        let (dlq, _) = committed_count(&topics.dlq, &topics.control);
        eprintln!("[rescale 4->{restore_at}] committed late events {late}, dead letters {dlq}");
        if !f.is_empty() {
            let mut by_task: BTreeMap<u32, usize> = BTreeMap::new();
            let mut by_window: BTreeMap<i64, usize> = BTreeMap::new();
            for (user, start) in expected.keys().filter(|k| !v.results.contains_key(*k)) {
                let key = serde_json::to_vec(&serde_json::json!([user])).unwrap();
                *by_task
                    .entry(streamops_runtime::dataflow::key_groups::partition_of(
                        &key,
                        streamops_crds::runtime_api::default_key_groups(8),
                        8,
                    ))
                    .or_default() += 1;
                *by_window.entry(*start).or_default() += 1;
            }
            eprintln!(
                "[rescale 4->{restore_at}] missing by keyed partition {by_task:?}\n  by window {by_window:?}"
            );
            for l in &old_logs {
                eprintln!("{l}");
            }
            for p in &mut new {
                let metrics = p
                    .http("GET", "/metrics", None)
                    .map(|(_, b)| b)
                    .unwrap_or_default();
                let lag: Vec<&str> = metrics
                    .lines()
                    .filter(|l| {
                        l.starts_with("streamops_runtime_consumer_lag")
                            || l.starts_with("streamops_runtime_watermark")
                    })
                    .collect();
                eprintln!(
                    "--- runtime {} status {:?}\n{}",
                    p.tasks,
                    p.status(),
                    lag.join("\n")
                );
                eprintln!(
                    "--- runtime {} (exited: {:?})\n{}",
                    p.tasks,
                    p.child.try_wait(),
                    p.log()
                );
            }
        }
        assert!(
            f.is_empty(),
            "restore at parallelism {restore_at}: {} faults",
            f.len()
        );
    }
}

#[test]
#[ignore = "needs a Kafka broker: STREAMOPS_BOOTSTRAP (run by e2e/test.sh)"]
fn zombie_is_fenced_across_rescale() {
    let topics = Topics::create("zombie", 4);
    let work = tempfile::tempdir().unwrap();
    let storage = work.path().join("storage");
    let data = dataset(4, 3_000, 200);
    let (expected, _) = reference(&data);
    let half = data.len() / 2;
    produce(&topics.source, &data[..half]);
    let gen1 = write_job(work.path(), &job(&topics, 2, 1, &storage, empty_ok()));
    let dir = |n: &str| {
        let d = work.path().join(n);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let mut a = Proc::spawn(&gen1, "0,2", &dir("a"), None);
    let mut b = Proc::spawn(&gen1, "1,3", &dir("b"), None);
    a.wait_running(Duration::from_secs(60));
    b.wait_running(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    // The owner of tasks 0 and 2 freezes mid-transaction; its peer stops.
    a.signal(libc::SIGSTOP);
    b.signal(libc::SIGTERM);
    assert!(b.wait_exit(Duration::from_secs(60)).is_some_and(|s| s.success()));
    produce(&topics.source, &data[half..]);
    // Parallelism 4 takes over (last-state: same generation's checkpoints).
    let gen1_p4 = write_job(work.path(), &job(&topics, 4, 1, &storage, empty_ok()));
    let mut new: Vec<Proc> = (0..4)
        .map(|t| Proc::spawn(&gen1_p4, &t.to_string(), &dir(&format!("n{t}")), None))
        .collect();
    for p in &mut new {
        p.wait_running(Duration::from_secs(60));
    }
    let before = verify_sink(&topics);
    let v = wait_complete(&topics, &expected, Duration::from_secs(300));
    assert!(v.results.len() >= before.results.len());
    // The zombie wakes up: its next commit must fail, and it must exit.
    a.signal(libc::SIGCONT);
    let exit = a.wait_exit(Duration::from_secs(60));
    let log = a.log();
    assert!(
        exit.is_some_and(|s| !s.success()),
        "the fenced zombie must fail, not keep running:\n{log}"
    );
    // Kafka answers the zombie's next transactional request with a fencing
    // error: its commit fails and the process ends.
    assert!(
        log.contains("committing checkpoint") || log.to_lowercase().contains("fenced"),
        "the zombie's failure names its failed commit:\n{log}"
    );
    std::thread::sleep(Duration::from_secs(2));
    for p in &mut new {
        p.signal(libc::SIGTERM);
        p.wait_exit(Duration::from_secs(60));
    }
    let v = verify_sink(&topics);
    let f = faults(&expected, &v);
    report("zombie", &v, &f);
    assert!(f.is_empty(), "{f:?}");
}

/// Per partition, the records of `data` from `from` (counted per
/// partition) up to `to`.
fn slice(data: &[Input], from: usize, to: usize) -> Vec<Input> {
    let mut seen: BTreeMap<i32, usize> = BTreeMap::new();
    data.iter()
        .filter(|r| {
            let n = seen.entry(r.partition).or_default();
            *n += 1;
            *n > from && *n <= to
        })
        .cloned()
        .collect()
}

/// The job reads two topics, x and y (y far behind x): generation 2 lists
/// them the other way round, generation 3 replaces x (read to its end) by
/// a new topic z. Each change is a stop-with-savepoint and a restore. Every
/// partition must go on from its own offset: a restore by position would
/// read y from x's offsets (skipping y's records) and z from x's.
#[test]
#[ignore = "needs a Kafka broker: STREAMOPS_BOOTSTRAP (run by e2e/test.sh)"]
fn reordered_and_replaced_source_topics_restore_by_partition() {
    use streamops_crds::layout;
    use streamops_crds::runtime_api::SourceTopic;

    let topics = Topics::create("sources", 8);
    let (x, y, z) = (
        format!("{}-x", topics.source),
        format!("{}-y", topics.source),
        format!("{}-z", topics.source),
    );
    create_topics(&[
        (&x, 4, SOURCE_CONFIGS),
        (&y, 4, SOURCE_CONFIGS),
        (&z, 4, SOURCE_CONFIGS),
    ]);
    let work = tempfile::tempdir().unwrap();
    let storage = work.path().join("storage");
    let xs = dataset(4, 1_000, 150);
    let ys = dataset(4, 900, 150);
    // z's events come after anything y reached before the switch, so that
    // none of them is late.
    let zs: Vec<Input> = dataset(4, 600, 150)
        .into_iter()
        .map(|mut r| {
            if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&r.value)
                && let Some(ts) = v["ts"].as_i64().filter(|ts| *ts < 1_720_000_000_000)
            {
                v["ts"] = (ts + 60_000).into();
                r.value = v.to_string().into_bytes();
            }
            r
        })
        .collect();
    let all: Vec<Input> = xs.iter().chain(&ys).chain(&zs).cloned().collect();
    let (expected, _) = reference(&all);
    let source = |t: &str| SourceTopic {
        topic: t.to_string(),
        partitions: 4,
    };

    let mut layout_now = Vec::new();
    let mut location: Option<String> = None;
    let lists = [[&x, &y], [&y, &x], [&y, &z]];
    for (g, list) in lists.iter().enumerate() {
        let generation = g as i64 + 1;
        match g {
            0 => {
                produce(&x, &xs);
                produce(&y, &slice(&ys, 0, 300));
            }
            1 => produce(&y, &slice(&ys, 300, 600)),
            _ => {
                produce(&y, &slice(&ys, 600, usize::MAX));
                produce(&z, &zs);
            }
        }
        let sources: Vec<SourceTopic> = list.iter().map(|t| source(t)).collect();
        layout_now = layout::assign(&layout_now, &sources);
        let restore = match &location {
            None => empty_ok(),
            Some(l) => RestoreFrom {
                savepoint: Some(l.clone()),
                allow_empty_state: false,
                mode: None,
            },
        };
        let mut file = job(&topics, 2, generation, &storage, restore);
        file.topics.source = sources.clone();
        file.topics.layout = layout::for_job_file(&layout_now, &sources);
        assert_eq!(
            file.topics.layout.is_empty(),
            g == 0,
            "positional only before the first change"
        );
        let path = write_job(work.path(), &file);
        let mut procs: Vec<Proc> = (0..2)
            .map(|i| {
                let dir = work.path().join(format!("g{generation}-{i}"));
                std::fs::create_dir_all(&dir).unwrap();
                Proc::spawn(&path, &format!("{i},{},{},{}", i + 2, i + 4, i + 6), &dir, None)
            })
            .collect();
        for p in &mut procs {
            p.wait_running(Duration::from_secs(60));
        }
        if g == 2 {
            let v = wait_complete(&topics, &expected, Duration::from_secs(300));
            let f = faults(&expected, &v);
            report("sources x,y -> y,x -> y,z", &v, &f);
            if !f.is_empty() {
                for p in &procs {
                    eprintln!("--- runtime {}\n{}", p.tasks, p.log());
                }
            }
            assert!(f.is_empty(), "{} faults", f.len());
            break;
        }
        // Generation 2 reads x to its end before x is dropped.
        let deadline = Instant::now() + Duration::from_secs(120);
        for round in 0.. {
            let mut offsets = BTreeMap::new();
            for p in &procs {
                let sp = p.savepoint(
                    &format!("probe-{generation}-{round}"),
                    false,
                    Duration::from_secs(60),
                );
                assert_eq!(sp["state"], "Completed", "{sp}");
                for (k, v) in sp["offsets"].as_object().unwrap() {
                    offsets.insert(k.clone(), v.as_i64().unwrap());
                }
            }
            let x_done = (0..4).all(|p| offsets.get(&format!("{x}-{p}")) == Some(&1_001));
            if g == 0 || x_done {
                break;
            }
            assert!(Instant::now() < deadline, "x not read to its end: {offsets:?}");
            std::thread::sleep(Duration::from_secs(1));
        }
        let id = format!("sp-{generation}");
        for p in &procs {
            let sp = p.savepoint(&id, true, Duration::from_secs(60));
            assert_eq!(sp["state"], "Completed", "{sp}");
            location = sp["location"].as_str().map(str::to_string);
        }
        drop(procs);
    }
}

/// Records of partition 0 the job had not read yet are deleted (as
/// retention would): with `onOffsetOutOfRange: fail` (the default) the job
/// stops with `OffsetOutOfRange` in its termination log; with `earliest` the
/// next generation goes on from the oldest record left, reports the reset,
/// and every result of the records still there is exact.
#[test]
#[ignore = "needs a Kafka broker: STREAMOPS_BOOTSTRAP (run by e2e/test.sh)"]
fn source_positions_deleted_before_they_are_read_follow_on_offset_out_of_range() {
    use rdkafka::TopicPartitionList;
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use streamops_runtime::pipeline::job::RestoreMode;

    let topics = Topics::create("offsets", 2);
    let work = tempfile::tempdir().unwrap();
    let storage = work.path().join("storage");
    let data = dataset(2, 1_000, 100);
    let (read, deleted, rest) = (400, 600, 700);
    produce(&topics.source, &slice(&data, 0, read));
    let with_policy = |generation, policy: &str, restore| {
        let mut j = job(&topics, 1, generation, &storage, restore);
        set_spec(&mut j, |spec| {
            spec["source"]["onOffsetOutOfRange"] = serde_json::json!(policy)
        });
        write_job(work.path(), &j)
    };
    let gen1 = with_policy(1, "fail", empty_ok());
    let mut p = Proc::spawn(&gen1, "0-1", work.path(), None);
    p.wait_running(Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.status().and_then(|s| s["lag"].as_i64()) != Some(0) {
        assert!(
            Instant::now() < deadline,
            "gen 1 did not read its input:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    p.signal(libc::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(60)).expect("stops").success());
    drop(p);
    // Records `read..rest` arrive; those before `deleted` on partition 0 go
    // before the job reads them.
    produce(&topics.source, &slice(&data, read, rest));
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let mut upto = TopicPartitionList::new();
    upto.add_partition_offset(&topics.source, 0, rdkafka::Offset::Offset(deleted as i64))
        .unwrap();
    let deleted_to = rt()
        .block_on(admin.delete_records(&upto, &AdminOptions::new()))
        .unwrap();
    assert!(
        deleted_to.elements().iter().all(|e| e.error().is_ok()),
        "{deleted_to:?}"
    );

    // fail: the same generation restarts and stops with the reason.
    let mut p = Proc::spawn(&gen1, "0-1", work.path(), None);
    let exit = p.wait_exit(Duration::from_secs(90)).expect("exits");
    assert!(!exit.success(), "{}", p.log());
    let why = std::fs::read_to_string(work.path().join("termination-log")).unwrap();
    eprintln!("[offsets] termination log: {why}");
    assert!(why.starts_with("OffsetOutOfRange: "), "{why}");
    assert!(
        why.contains(&format!("{}-0", topics.source)) && why.contains("200 records"),
        "{why}"
    );
    drop(p);

    // earliest: generation 2 goes on from offset `deleted` of partition 0.
    let gen2 = with_policy(
        2,
        "earliest",
        RestoreFrom {
            savepoint: None,
            allow_empty_state: false,
            mode: Some(RestoreMode::LastState),
        },
    );
    let mut p = Proc::spawn(&gen2, "0-1", work.path(), None);
    p.wait_running(Duration::from_secs(60));
    produce(&topics.source, &slice(&data, rest, usize::MAX));
    let mut at: BTreeMap<i32, usize> = BTreeMap::new();
    let kept: Vec<Input> = data
        .iter()
        .filter(|r| {
            let n = at.entry(r.partition).or_default();
            *n += 1;
            !(r.partition == 0 && *n > read && *n <= deleted)
        })
        .cloned()
        .collect();
    let (expected, _) = reference(&kept);
    let v = wait_complete(&topics, &expected, Duration::from_secs(120));
    let f = faults(&expected, &v);
    report("offsets deleted, earliest", &v, &f);
    assert!(f.is_empty(), "{} faults\n{}", f.len(), p.log());
    let status = p.status().unwrap();
    let resets = status["offsetResets"].as_array().cloned().unwrap_or_default();
    assert_eq!(resets.len(), 1, "{status}");
    assert_eq!(
        (
            resets[0]["partition"].as_i64(),
            resets[0]["from"].as_i64(),
            resets[0]["to"].as_i64()
        ),
        (Some(0), Some(read as i64), Some(deleted as i64)),
        "{status}"
    );
    let (_, metrics) = p.http("GET", "/metrics", None).unwrap();
    assert!(
        metrics.contains("streamops_runtime_source_offset_resets_total{partition=\"0\""),
        "{metrics}"
    );
}

#[test]
#[ignore = "needs a Kafka broker: STREAMOPS_BOOTSTRAP (run by e2e/test.sh)"]
fn refuses_to_start_without_state_unless_allowed() {
    let topics = Topics::create("refuse", 2);
    let work = tempfile::tempdir().unwrap();
    let storage = work.path().join("storage");
    let job = write_job(
        work.path(),
        &job(
            &topics,
            1,
            1,
            &storage,
            RestoreFrom {
                savepoint: None,
                allow_empty_state: false,
                mode: None,
            },
        ),
    );
    let mut p = Proc::spawn(&job, "0-1", work.path(), None);
    let exit = p.wait_exit(Duration::from_secs(60)).expect("exits");
    assert!(!exit.success());
    let log = p.log();
    assert!(log.contains("refusing to start from empty state"), "{log}");
    assert!(log.contains("allowEmptyState"), "{log}");
}

/// The first checkpoint crashes after its upload, before anything was ever
/// committed: the next start begins from empty state while the crashed
/// process's transactions are still open (its successor's
/// `init_transactions` aborts them).
#[test]
#[ignore = "needs a Kafka broker: STREAMOPS_BOOTSTRAP (run by e2e/test.sh)"]
fn crash_in_the_first_checkpoint_then_empty_start() {
    for attempt in 0..2 {
        let topics = Topics::create("first", 4);
        let work = tempfile::tempdir().unwrap();
        let storage = work.path().join("storage");
        let job = write_job(work.path(), &job(&topics, 1, 1, &storage, empty_ok()));
        let data = dataset(4, 1_500, 300);
        let (expected, _malformed) = reference(&data);
        let feeder = produce_slowly(topics.source.clone(), data, Duration::from_secs(6));
        let mut proc = Proc::spawn(&job, "0-3", work.path(), Some("after-upload:1.0"));
        let exit = proc.wait_exit(Duration::from_secs(60));
        let log = proc.log();
        assert!(exit.is_some(), "{log}");
        assert!(log.contains("streamops-crash-point: after-upload"), "{log}");
        let mut proc = Proc::spawn(&job, "0-3", work.path(), None);
        feeder.join().unwrap();
        let verdict = wait_complete(&topics, &expected, Duration::from_secs(120));
        proc.signal(libc::SIGTERM);
        proc.wait_exit(Duration::from_secs(60));
        let f = faults(&expected, &verdict);
        let (late_ok, late_uncommitted) = committed_count(&topics.late, &topics.control);
        eprintln!(
            "[attempt {attempt}] late committed {late_ok}, without a committed marker {late_uncommitted}"
        );
        assert_eq!(
            late_uncommitted, 0,
            "late events visible without their checkpoint"
        );
        report("first-checkpoint crash", &verdict, &f);
        assert!(
            f.is_empty(),
            "attempt {attempt}: product faults: {f:?}\n{}",
            proc.log()
        );
    }
}

/// At least once: the same kills as exactly once lose no result and never
/// change one; results of input processed again after a kill may appear
/// twice, with the same value.
#[test]
#[ignore = "needs a Kafka broker: STREAMOPS_BOOTSTRAP (run by e2e/test.sh)"]
fn at_least_once_loses_nothing_under_sigkill() {
    let topics = Topics::create("alo", 4);
    let work = tempfile::tempdir().unwrap();
    let storage = work.path().join("storage");
    let mut j = job(&topics, 1, 1, &storage, empty_ok());
    set_spec(&mut j, |spec| {
        spec["checkpoint"]["guarantee"] = serde_json::json!("atLeastOnce")
    });
    let job = write_job(work.path(), &j);
    let data = dataset(4, 4_000, 300);
    let (expected, malformed) = reference(&data);
    let bad: BTreeMap<Vec<u8>, u32> = data
        .iter()
        .filter(|r| is_dead_letter(&r.value))
        .map(|r| (r.value.clone(), r.partition as u32))
        .collect();
    let feeder = produce_slowly(topics.source.clone(), data, Duration::from_secs(20));
    let mut rnd = 0x9e37_79b9_7f4a_7c15u64;
    let kills = 8;
    for round in 1..=kills {
        rnd ^= rnd << 13;
        rnd ^= rnd >> 7;
        rnd ^= rnd << 17;
        let mut proc = Proc::spawn(&job, "0-3", work.path(), None);
        if let Some(exit) = proc.wait_running_or_exit(Duration::from_secs(60)) {
            panic!("round {round}: the runtime exited ({exit}):\n{}", proc.log());
        }
        let life = Duration::from_millis(300 + rnd % 2_500);
        std::thread::sleep(life);
        proc.signal(libc::SIGKILL);
        proc.wait_exit(Duration::from_secs(10));
        eprintln!(
            "[at-least-once] round {round}: SIGKILL after {:.1}s of processing",
            life.as_secs_f64()
        );
    }
    feeder.join().unwrap();
    let mut proc = Proc::spawn(&job, "0-3", work.path(), None);
    let deadline = Instant::now() + Duration::from_secs(180);
    // Done when every result is there (or the deadline).
    let (verdict, extra) = loop {
        let (v, extra) = verify_at_least_once(&topics);
        if faults(&expected, &v).is_empty() || Instant::now() > deadline {
            break (v, extra);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    proc.signal(libc::SIGTERM);
    let exit = proc.wait_exit(Duration::from_secs(60)).expect("graceful stop");
    assert!(exit.success(), "SIGTERM must end cleanly:\n{}", proc.log());
    let f = faults(&expected, &verdict);
    report("at-least-once", &verdict, &f);
    // Dead letters: each malformed record at least once.
    let dlq = read_all(&topics.dlq);
    let copies = dlq.len();
    // Oversized records are dead-lettered by reference: no value, their
    // source coordinates in the headers.
    let referenced: std::collections::BTreeSet<u32> = dlq
        .iter()
        .filter(|r| r.value.is_empty())
        .filter_map(|r| r.source_partition.map(|p| p as u32))
        .collect();
    let seen: std::collections::BTreeSet<Vec<u8>> = dlq.into_iter().map(|r| r.value).collect();
    let missing: Vec<&Vec<u8>> = bad
        .iter()
        .filter(|(v, p)| {
            if v.len() >= OVERSIZED {
                !referenced.contains(*p)
            } else {
                !seen.contains(*v)
            }
        })
        .map(|(v, _)| v)
        .collect();
    eprintln!(
        "[at-least-once] {kills} kills; {} distinct results, {extra} extra copies of results processed again; \
         dead letters: {} of {malformed} malformed seen, {copies} copies",
        verdict.results.len(),
        bad.len() - missing.len(),
    );
    assert!(f.is_empty(), "lost or changed results: {f:?}\n{}", proc.log());
    assert_eq!(bad.len(), malformed);
    assert!(
        missing.is_empty(),
        "{} malformed records never dead-lettered, first: {:?}",
        missing.len(),
        missing.first().map(|v| String::from_utf8_lossy(v))
    );
}

/// Checkpoint uploads happen before the task's transaction begins: an
/// upload that takes longer than the transaction timeout (here the 6th, in
/// the middle of the stream, 80 s against the producers' 60 s, past the
/// broker's 10 s sweep for expired transactions) does not
/// abort anything, and the output is exact. While the outputs went into a transaction open for the
/// whole interval, the broker aborted it during such an upload and the
/// process failed its commit and restarted, again and again for a state
/// that always takes that long.
#[test]
#[ignore = "needs a Kafka broker: STREAMOPS_BOOTSTRAP (run by e2e/test.sh)"]
fn an_upload_longer_than_the_transaction_timeout_aborts_nothing() {
    let topics = Topics::create("slowupload", 2);
    let work = tempfile::tempdir().unwrap();
    let storage = work.path().join("storage");
    // A 2 s interval with input every 0.5 s: every transaction holds outputs.
    let mut j = job(&topics, 1, 1, &storage, empty_ok());
    set_spec(&mut j, |spec| {
        spec["checkpoint"]["interval"] = serde_json::json!("2s")
    });
    let job = write_job(work.path(), &j);
    let data = dataset(2, 2_000, 200);
    let (expected, _malformed) = reference(&data);
    let feeder = produce_slowly(topics.source.clone(), data, Duration::from_secs(20));
    let mut proc = Proc::spawn(&job, "0-1", work.path(), Some("slow-upload:80000:6"));
    feeder.join().unwrap();
    let verdict = wait_complete(&topics, &expected, Duration::from_secs(240));
    let exited = proc.child.try_wait().unwrap();
    let log = proc.log();
    assert!(log.contains("streamops-slow-upload: 80000 ms"), "{log}");
    assert!(exited.is_none(), "the runtime exited ({exited:?}):\n{log}");
    proc.signal(libc::SIGTERM);
    proc.wait_exit(Duration::from_secs(60));
    let f = faults(&expected, &verdict);
    report("upload longer than the transaction timeout", &verdict, &f);
    assert!(f.is_empty(), "product faults: {f:?}\n{log}");
}

/// The source topic grows 4 -> 6 -> 12 partitions under a running job
/// (uneven factors). Each growth is what the operator does: a drained
/// stop-with-savepoint asked of every process, the source and the job's
/// internal topics grown, and the next generation, one task per partition,
/// restoring the savepoint with its keyed state re-sharded by key group.
/// One process of each new generation is SIGKILLed in the middle of its
/// restore and started again. Windows are open across every change (each
/// partition's event time runs on), new partitions carry records written
/// after the growth, and the verifier wants every result exactly once with
/// the reference's values.
#[test]
#[ignore = "needs a Kafka broker: STREAMOPS_BOOTSTRAP (run by e2e/test.sh)"]
fn grown_source_partitions_reshard_state_exactly_once() {
    const PER: usize = 1_200;
    let mut topics = Topics::create("grow", 4);
    let key_groups = streamops_crds::runtime_api::default_key_groups(4);
    let work = tempfile::tempdir().unwrap();
    let storage = work.path().join("storage");
    let data = dataset(12, PER, 300);
    // Phase k feeds records (PER/3)*k .. (PER/3)*(k+1) of every partition
    // the job reads by then (the last phase includes each one's flush).
    let phase = |k: usize, partitions: i32| -> Vec<Input> {
        let third = PER / 3;
        let to = if k == 2 { PER + 1 } else { third * (k + 1) };
        slice(&data, third * k, to)
            .into_iter()
            .filter(|r| r.partition < partitions)
            .collect()
    };
    let mut produced = phase(0, 4);
    produce(&topics.source, &produced);
    let dir = |name: &str| {
        let d = work.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let job_at = |topics: &Topics, generation: i64, restore: RestoreFrom| {
        let mut j = job(topics, 3, generation, &storage, restore);
        j.key_groups = Some(key_groups);
        write_job(work.path(), &j)
    };
    let spread = |tasks: u32, procs: u32, p: u32| -> String {
        (0..tasks)
            .filter(|t| t % procs == p)
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let gen1 = job_at(&topics, 1, empty_ok());
    let mut procs: Vec<Proc> = (0..2)
        .map(|p| Proc::spawn(&gen1, &spread(4, 2, p), &dir(&format!("g1-{p}")), None))
        .collect();
    for p in &mut procs {
        p.wait_running(Duration::from_secs(60));
    }
    let mut logs = Vec::new();
    for (generation, from, to) in [(2i64, 4u32, 6u32), (3, 6, 12)] {
        // The next phase of the partitions read now arrives while the
        // drain happens: stage 1 stops mid-stream, with keyed records of
        // other processes still on their way to each keyed partition.
        let k = (generation - 1) as usize;
        let (old, new): (Vec<Input>, Vec<Input>) = phase(k, to as i32)
            .into_iter()
            .partition(|r| r.partition < from as i32);
        produced.extend(old.iter().cloned());
        produced.extend(new.iter().cloned());
        let feeding = produce_slowly(topics.source.clone(), old, Duration::from_secs(4));
        std::thread::sleep(Duration::from_millis(1_500));
        // The operator's rescale: a drained stop-with-savepoint of every
        // process. The first is asked a second before the others, whose
        // stage 1 meanwhile goes on writing to its keyed partitions: it
        // must wait for their barriers.
        let id = format!("grow-{from}-{to}");
        for (i, p) in procs.iter().enumerate() {
            p.request_savepoint(&id, true, true);
            if i == 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        let mut location = None;
        for p in &procs {
            let sp = p.wait_savepoint(&id, Duration::from_secs(120));
            assert_eq!(sp["state"], "Completed", "{sp}");
            assert_eq!(sp["drained"], true, "{sp}");
            location = sp["location"].as_str().map(str::to_string);
        }
        for p in &procs {
            assert_eq!(p.status().unwrap()["state"], "Stopped");
        }
        // The drained savepoint is each task's last commit: a checkpoint
        // after it is what the next generation would restore instead.
        std::thread::sleep(Duration::from_millis(700));
        let mut last = BTreeMap::new();
        for m in marker_records(&topics.control) {
            last.insert(m.task, m);
        }
        for t in 0..from {
            let m = last.get(&t).expect("a marker per task");
            assert_eq!(
                m.savepoint_id.as_deref(),
                Some(id.as_str()),
                "task {t}'s last commit is not the drained savepoint: {m:?}"
            );
        }
        logs.extend(
            procs
                .iter()
                .map(|p| format!("--- gen{} runtime {}\n{}", generation - 1, p.tasks, p.log())),
        );
        drop(std::mem::take(&mut procs));
        let n = to as usize;
        grow_topics(&[
            (&topics.source, n),
            (&topics.repartition, n),
            (&topics.control, n),
        ]);
        topics.partitions = to;
        feeding.join().unwrap();
        produce(&topics.source, &new);
        let restore = RestoreFrom {
            savepoint: location,
            allow_empty_state: false,
            mode: None,
        };
        let next = job_at(&topics, generation, restore);
        procs = (0..3)
            .map(|p| {
                Proc::spawn(
                    &next,
                    &spread(to, 3, p),
                    &dir(&format!("g{generation}-{p}")),
                    None,
                )
            })
            .collect();
        // SIGKILL one process as soon as one of its tasks is re-sharded
        // (its others are still restoring), then start it again.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !procs[1].log().contains("re-sharded") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(procs[1].log().contains("re-sharded"), "{}", procs[1].log());
        procs[1].kill();
        logs.push(format!(
            "--- gen{generation} runtime {} (SIGKILLed)\n{}",
            procs[1].tasks,
            procs[1].log()
        ));
        procs[1] = Proc::spawn(
            &next,
            &spread(to, 3, 1),
            &dir(&format!("g{generation}-1-again")),
            None,
        );
        for p in &mut procs {
            p.wait_running(Duration::from_secs(120));
        }
    }
    let (expected, _) = reference(&produced);
    let v = wait_complete(&topics, &expected, Duration::from_secs(300));
    let f = faults(&expected, &v);
    report("grow 4->6->12", &v, &f);
    if !f.is_empty() {
        for l in &logs {
            eprintln!("{l}");
        }
        for p in &procs {
            eprintln!("--- gen3 runtime {}\n{}", p.tasks, p.log());
        }
    }
    assert!(f.is_empty(), "{} faults", f.len());
    // The state moved: the last generation's tasks beyond the first
    // layout's were restored from key groups of older tasks.
    let last: String = procs.iter().map(Proc::log).collect();
    assert!(last.contains("re-sharded"), "{last}");
}
