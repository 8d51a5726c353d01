//! Benchmark, not a timed test (`#[ignore]`, no thresholds): N StreamTopics
//! (default 1,000) applied at once against the real apiserver and broker, with
//! the real `streamops-operator` binary as a child process. Prints, per run and
//! as medians over runs:
//!
//! * time from the start of the apply until every StreamTopic is `Ready` for
//!   its generation (observed with a watch), and each object's create -> Ready
//!   latency (p50/p99);
//! * the operator's peak RSS (`VmHWM` of the child process) against its idle RSS
//!   before the apply;
//! * the reconcile latency of an unchanged object: `reconcile()` called
//!   in-process on a sample of Ready objects, against the bare I/O floor of one
//!   (one Kafka describe + one apiserver GET on the same objects, interleaved);
//! * a same-run Kafka baseline: the same N topics' describe + CreateTopics
//!   issued directly through the operator's `KafkaAdmin` at the controller's
//!   concurrency (all at once), without Kubernetes;
//! * the deletion of all N (`deletionPolicy: Delete`) until every resource is gone.
//!
//! ```text
//! e2e/cluster/cluster.sh up --control-plane && e2e/cluster/cluster.sh broker up
//! STREAMOPS_KUBECONFIG=/tmp/streamops-cluster/kubeconfig \
//! STREAMOPS_BOOTSTRAP=$(cat /tmp/streamops-cluster/bootstrap) \
//!   cargo test -p streamops-operator --test topic_bench -- --ignored --nocapture
//! ```
//!
//! Knobs: STREAMOPS_BENCH_TOPICS (1000), STREAMOPS_BENCH_RUNS (3),
//! STREAMOPS_BENCH_APPLY_CONCURRENCY (16 creates in flight, like a parallel
//! `kubectl apply`), STREAMOPS_BENCH_SAMPLE (200 unchanged reconciles per run).
//! Results and the machine they came from: operator/BENCHMARKS.md.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{bench::*, *};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::{reflector, watcher},
};
use streamops_crds::{StreamTopic, topic::DeletionPolicy};
use streamops_operator::{
    OperatorConfig, config::DEFAULT_RECONCILE_CONCURRENCY, kafka::KafkaAdmin, metrics::Metrics,
    topic::controller::Context,
};

const PARTITIONS: i32 = 3;
const CONFIG: &[(&str, &str)] = &[("retention.ms", "86400000"), ("cleanup.policy", "delete")];

/// Everything one run measured.
#[derive(Debug, Default, Clone)]
struct RunResult {
    apply_s: f64,
    all_ready_s: f64,
    ready_latency_p50_s: f64,
    ready_latency_p99_s: f64,
    kafka_baseline_s: f64,
    idle_rss_mib: f64,
    peak_rss_mib: f64,
    /// Most threads seen in the operator during the burst (sampled every 50 ms).
    peak_threads: f64,
    burst_reconciles: f64,
    burst_reconcile_mean_ms: f64,
    burst_errors: f64,
    unchanged_p50_ms: f64,
    unchanged_p99_ms: f64,
    floor_p50_ms: f64,
    unchanged_rv_changed: usize,
    /// CPU of the operator over the idle window (N topics Ready, nothing
    /// changing), % of one core.
    idle_cpu_pct: f64,
    /// RSS at the end of the idle window.
    idle_n_rss_mib: f64,
    delete_all_s: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: needs the real apiserver + broker and minutes; run with --ignored --nocapture"]
async fn thousand_topics() {
    let n = knob("STREAMOPS_BENCH_TOPICS", 1000);
    let runs = knob("STREAMOPS_BENCH_RUNS", 5);
    let concurrency = knob("STREAMOPS_BENCH_APPLY_CONCURRENCY", 16);
    let sample = knob("STREAMOPS_BENCH_SAMPLE", 200).min(n);
    let bootstrap = env("STREAMOPS_BOOTSTRAP");
    let kubeconfig = env("STREAMOPS_KUBECONFIG");
    let client = client().await;
    install_crds(&client).await;
    println!(
        "topic bench: {n} StreamTopics ({PARTITIONS} partitions, {} config keys, deletionPolicy Delete), {runs} runs, \
         apply concurrency {concurrency}, {sample} unchanged reconciles per run; operator binary {}",
        CONFIG.len(),
        env!("CARGO_BIN_EXE_streamops-operator")
    );
    let mut results = Vec::new();
    for run in 1..=runs {
        let r = one_run(&client, &kubeconfig, &bootstrap, n, concurrency, sample).await;
        println!("run {run}: {r:?}");
        results.push(r);
    }
    print_summary(n, &results);
}

async fn one_run(
    client: &Client,
    kubeconfig: &str,
    bootstrap: &str,
    n: usize,
    concurrency: usize,
    sample: usize,
) -> RunResult {
    let mut r = RunResult::default();
    let ns = create_namespace(client).await;
    let api: Api<StreamTopic> = Api::namespaced(client.clone(), &ns);
    let admin = admin(bootstrap);
    let prefix = unique("bench");
    let names: Vec<String> = (0..n).map(|i| format!("t{i:04}")).collect();
    let topic_of = |name: &str| format!("{prefix}-{name}");

    // Same-run Kafka baseline: what the controller has to ask of the broker
    // (describe, then CreateTopics) for the same number of topics, with as
    // many in flight as the controller reconciles at once, through the same
    // client code. (All N at once, as until 2026-12-04 against nisshi,
    // makes Apache Kafka's CreateTopics time out: 1,000 requests queue on
    // its controller.) Deleted again so that the controller starts from the
    // same broker state.
    let base_prefix = format!("{prefix}-base");
    let started = Instant::now();
    stream::iter(0..n)
        .map(|i| {
            let admin = admin.clone();
            let topic = format!("{base_prefix}-{i:04}");
            async move {
                let observed = admin.describe(&topic).await.expect("baseline describe");
                assert!(observed.is_none(), "{topic} exists before the baseline");
                admin
                    .create(&topic, PARTITIONS, None, &config_map())
                    .await
                    .expect("baseline CreateTopics");
            }
        })
        .buffer_unordered(usize::from(DEFAULT_RECONCILE_CONCURRENCY))
        .collect::<Vec<()>>()
        .await;
    r.kafka_baseline_s = started.elapsed().as_secs_f64();
    stream::iter(0..n)
        .map(|i| {
            let admin = admin.clone();
            let topic = format!("{base_prefix}-{i:04}");
            async move { admin.delete(&topic).await }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await
        .expect("deleting the baseline topics");

    // The operator, as users run it, watching only this namespace.
    let port = free_port();
    let log_path = std::env::temp_dir().join(format!("streamops-topic-bench-{ns}.log"));
    let mut operator = KillOnDrop(spawn_operator(kubeconfig, bootstrap, &ns, port, &log_path, &[]));
    wait_ready(port, &mut operator.0, &log_path).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.idle_rss_mib = proc_status_kib(operator.0.id(), "VmRSS") / 1024.0;

    // Watch first, then apply.
    let ready_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watch = tokio::spawn(record_ready(api.clone(), ready_at.clone()));
    let created_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let t0 = Instant::now();
    stream::iter(names.clone())
        .map(|name| {
            let api = api.clone();
            let topic = topic_of(&name);
            let created_at = created_at.clone();
            async move {
                let mut s = spec(&topic, PARTITIONS, CONFIG);
                s.deletion_policy = Some(DeletionPolicy::Delete);
                api.create(&PostParams::default(), &StreamTopic::new(&name, s))
                    .await
                    .unwrap_or_else(|e| panic!("create {name}: {e}"));
                created_at.lock().expect("lock").insert(name, Instant::now());
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    r.apply_s = t0.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        let ready = ready_at.lock().expect("lock").len();
        r.peak_threads = r.peak_threads.max(proc_status_kib(operator.0.id(), "Threads"));
        if ready >= n {
            break;
        }
        if Instant::now() > deadline || operator.0.try_wait().ok().flatten().is_some() {
            panic!(
                "{ready}/{n} Ready after {:.0} s (operator log: {})",
                t0.elapsed().as_secs_f64(),
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watch.abort();
    {
        let ready_at = ready_at.lock().expect("lock");
        let created_at = created_at.lock().expect("lock");
        let last = ready_at.values().max().expect("n > 0");
        r.all_ready_s = last.duration_since(t0).as_secs_f64();
        let mut latencies: Vec<f64> = names
            .iter()
            .map(|name| {
                ready_at[name]
                    .saturating_duration_since(created_at[name])
                    .as_secs_f64()
            })
            .collect();
        r.ready_latency_p50_s = percentile(&mut latencies, 50.0);
        r.ready_latency_p99_s = percentile(&mut latencies, 99.0);
    }
    // Every topic is really in the broker, with its partitions and config.
    for name in names.iter().step_by((n / 20).max(1)) {
        let observed = admin
            .describe(&topic_of(name))
            .await
            .expect("describe")
            .unwrap_or_else(|| panic!("{name} is Ready but its topic is missing"));
        assert_eq!(observed.partitions, PARTITIONS);
        assert_eq!(
            observed.config.get("retention.ms").map(String::as_str),
            Some("86400000")
        );
    }
    let metrics = http_get(port, "/metrics").await;
    r.burst_reconciles = metric(
        &metrics,
        "streamops_reconcile_duration_seconds_count{controller=\"streamtopic\"}",
    );
    r.burst_reconcile_mean_ms = 1000.0
        * metric(
            &metrics,
            "streamops_reconcile_duration_seconds_sum{controller=\"streamtopic\"}",
        )
        / r.burst_reconciles.max(1.0);
    r.burst_errors = metric(
        &metrics,
        "streamops_reconciles_total{controller=\"streamtopic\",result=\"error\"}",
    );

    // Unchanged objects: the operator is idle (resync 1 h); reconcile a
    // sample in-process with the controller's own function and a context
    // whose store holds all N objects, as the controller's does.
    let (mut unchanged, mut floor, rv_changed) =
        unchanged_reconciles(client, &api, bootstrap, &ns, &names, sample).await;
    r.unchanged_p50_ms = percentile(&mut unchanged, 50.0) * 1000.0;
    r.unchanged_p99_ms = percentile(&mut unchanged, 99.0) * 1000.0;
    r.floor_p50_ms = percentile(&mut floor, 50.0) * 1000.0;
    r.unchanged_rv_changed = rv_changed;
    r.peak_rss_mib = proc_status_kib(operator.0.id(), "VmHWM") / 1024.0;

    // Idle: N Ready topics, nothing changing (resync 1 h).
    let idle = Duration::from_secs(knob("STREAMOPS_BENCH_IDLE_SECS", 20) as u64);
    let cpu0 = cpu_seconds(operator.0.id());
    let t0 = Instant::now();
    tokio::time::sleep(idle).await;
    r.idle_cpu_pct = 100.0 * (cpu_seconds(operator.0.id()) - cpu0) / t0.elapsed().as_secs_f64();
    r.idle_n_rss_mib = proc_status_kib(operator.0.id(), "VmRSS") / 1024.0;

    // Deletion: the operator deletes the topics it created.
    let t_del = Instant::now();
    stream::iter(names.clone())
        .map(|name| {
            let api = api.clone();
            async move {
                api.delete(&name, &DeleteParams::default())
                    .await
                    .unwrap_or_else(|e| panic!("delete {name}: {e}"));
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        let left = api
            .list_metadata(&ListParams::default())
            .await
            .expect("list")
            .items
            .len();
        if left == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{left} StreamTopics not deleted (operator log: {})",
            log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.delete_all_s = t_del.elapsed().as_secs_f64();
    for name in names.iter().step_by((n / 20).max(1)) {
        assert!(
            admin.describe(&topic_of(name)).await.expect("describe").is_none(),
            "{name} deleted but its topic remains"
        );
    }
    drop(operator);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    r
}

fn config_map() -> std::collections::BTreeMap<String, String> {
    CONFIG
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// First instant each object is `Ready` for its generation.
async fn record_ready(api: Api<StreamTopic>, ready_at: Arc<Mutex<HashMap<String, Instant>>>) {
    let mut events = watcher(api, watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        let Ok(watcher::Event::Apply(t) | watcher::Event::InitApply(t)) = event else {
            continue;
        };
        if is_ready(&t) {
            ready_at
                .lock()
                .expect("lock")
                .entry(t.name_any())
                .or_insert_with(Instant::now);
        }
    }
}

/// Seconds per `reconcile()` of an unchanged, Ready object; seconds of the
/// I/O floor (Kafka describe + apiserver GET) on the same objects; and how many
/// reconciles changed the object's resourceVersion (expected: none).
async fn unchanged_reconciles(
    client: &Client,
    api: &Api<StreamTopic>,
    bootstrap: &str,
    ns: &str,
    names: &[String],
    sample: usize,
) -> (Vec<f64>, Vec<f64>, usize) {
    let all = api.list(&ListParams::default()).await.expect("list");
    let (store, mut writer) = reflector::store::<StreamTopic>();
    for t in all.items {
        writer.apply_watcher_event(&watcher::Event::Apply(t));
    }
    let config = OperatorConfig {
        kafka_bootstrap: Some(bootstrap.to_owned()),
        watch_namespace: Some(ns.to_owned()),
        leader_election: false,
        resync_interval: Duration::from_secs(3600),
        ..OperatorConfig::default()
    };
    let ctx = Context::new(client.clone(), config, Metrics::new(), store);
    let floor_admin: KafkaAdmin = admin(bootstrap);
    let step = (names.len() / sample).max(1);
    let picked: Vec<&String> = names.iter().step_by(step).take(sample).collect();
    // Warm-up (admin client creation, connections), not timed.
    for name in picked.iter().take(3) {
        let t = api.get(name).await.expect("get");
        streamops_operator::reconcile::reconcile(Arc::new(t), ctx.clone())
            .await
            .expect("warm-up reconcile");
    }
    let (mut reconcile, mut floor, mut rv_changed) = (Vec::new(), Vec::new(), 0);
    for name in picked {
        let before = api.get(name).await.expect("get");
        assert!(
            is_ready(&before),
            "{name} not Ready before the unchanged reconcile"
        );
        let rv = before.resource_version();
        let topic = before.spec.topic_name.clone().expect("topicName set");
        let started = Instant::now();
        streamops_operator::reconcile::reconcile(Arc::new(before), ctx.clone())
            .await
            .unwrap_or_else(|e| panic!("reconcile of unchanged {name}: {e}"));
        reconcile.push(started.elapsed().as_secs_f64());
        let started = Instant::now();
        floor_admin.describe(&topic).await.expect("describe");
        let after = api.get(name).await.expect("get");
        floor.push(started.elapsed().as_secs_f64());
        if after.resource_version() != rv {
            rv_changed += 1;
        }
    }
    (reconcile, floor, rv_changed)
}

fn print_summary(n: usize, results: &[RunResult]) {
    let m = |f: fn(&RunResult) -> f64| median(results.iter().map(f).collect());
    println!("\n=== {n} StreamTopics, median of {} runs", results.len());
    println!("| metric | median | runs |");
    println!("|---|---|---|");
    let row = |label: &str, f: fn(&RunResult) -> f64| {
        let runs: Vec<String> = results.iter().map(|r| format!("{:.2}", f(r))).collect();
        println!("| {label} | {:.2} | {} |", m(f), runs.join(", "));
    };
    row("apply (create N objects, s)", |r| r.apply_s);
    row("apply start -> all Ready (s)", |r| r.all_ready_s);
    row("per-object create -> Ready p50 (s)", |r| r.ready_latency_p50_s);
    row("per-object create -> Ready p99 (s)", |r| r.ready_latency_p99_s);
    row("Kafka baseline: describe + create N directly (s)", |r| {
        r.kafka_baseline_s
    });
    row("all Ready / Kafka baseline (x)", |r| {
        r.all_ready_s / r.kafka_baseline_s
    });
    row("reconciles during the burst", |r| r.burst_reconciles);
    row("reconciles that failed during the burst", |r| r.burst_errors);
    row("mean reconcile during the burst (ms)", |r| {
        r.burst_reconcile_mean_ms
    });
    row("operator RSS idle (MiB)", |r| r.idle_rss_mib);
    row("operator peak RSS, VmHWM (MiB)", |r| r.peak_rss_mib);
    row("operator threads, most seen during the burst", |r| r.peak_threads);
    row("unchanged object: reconcile p50 (ms)", |r| r.unchanged_p50_ms);
    row("unchanged object: reconcile p99 (ms)", |r| r.unchanged_p99_ms);
    row("I/O floor: describe + GET p50 (ms)", |r| r.floor_p50_ms);
    row("unchanged reconcile p50 / floor p50 (x)", |r| {
        r.unchanged_p50_ms / r.floor_p50_ms
    });
    row("unchanged reconciles that changed resourceVersion", |r| {
        r.unchanged_rv_changed as f64
    });
    row("operator CPU, N topics Ready, idle (% of a core)", |r| {
        r.idle_cpu_pct
    });
    row("operator RSS, N topics Ready, idle (MiB)", |r| r.idle_n_rss_mib);
    row("delete all N (deletionPolicy Delete) until gone (s)", |r| {
        r.delete_all_s
    });
}
