//! Benchmark, not a timed test (`#[ignore]`, no thresholds): N StreamJobs
//! (default 100) applied at once against the real apiserver and broker, with
//! the real `streamops-operator` binary as a child process. Measures the
//! operator's side only: on a control-plane-only cluster no pod ever starts
//! (there is no kubelet and no StatefulSet controller), so every job stays in
//! `Deploying`, waiting for its pods, which is also the operator's busiest
//! steady state (it polls jobs with an operation in flight every second).
//! Prints, per run and as medians over runs:
//!
//! * time from the start of the apply until every StreamJob has its object
//!   graph (StatefulSet with one replica per source partition, ConfigMap,
//!   Service, admin Secret) and a status for its generation in phase
//!   `Deploying` (the later of the two), plus each job's create -> deployed latency (p50/p99);
//! * the operator's RSS: idle before the apply (with the topics already
//!   Ready), and peak (`VmHWM`) over the whole run;
//! * the operator's CPU (user + system, `/proc/<pid>/stat`) over a quiet
//!   window after the apply, while all N jobs wait for pods;
//! * the deletion of all N until every StreamJob is gone.
//!
//! ```text
//! e2e/cluster/cluster.sh up --control-plane && e2e/cluster/cluster.sh broker up
//! STREAMOPS_KUBECONFIG=/tmp/streamops-cluster/kubeconfig \
//! STREAMOPS_BOOTSTRAP=$(cat /tmp/streamops-cluster/bootstrap) \
//!   cargo test -p streamops-operator --test job_bench -- --ignored --nocapture
//! ```
//!
//! Knobs: STREAMOPS_BENCH_JOBS (100), STREAMOPS_BENCH_RUNS (5),
//! STREAMOPS_BENCH_APPLY_CONCURRENCY (16), STREAMOPS_BENCH_PARTITIONS (4, of
//! the one source topic all jobs read), STREAMOPS_BENCH_QUIET_SECS (30).
//! Results and the machine they came from: operator/BENCHMARKS.md.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{bench::*, *};
use futures::{StreamExt, stream};
use k8s_openapi::api::{
    apps::v1::StatefulSet,
    core::v1::{ConfigMap, Namespace, Secret, Service},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, PostParams},
    runtime::watcher,
};
use serde_json::json;
use streamops_crds::{StreamJob, StreamTopic, job::JobPhase};

#[derive(Debug, Default, Clone)]
struct RunResult {
    topics_ready_s: f64,
    apply_s: f64,
    all_deployed_s: f64,
    deployed_p50_s: f64,
    deployed_p99_s: f64,
    idle_rss_mib: f64,
    peak_rss_mib: f64,
    waiting_cpu_pct: f64,
    waiting_rss_mib: f64,
    delete_s: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: needs the control-plane cluster and broker; prints numbers"]
async fn hundred_jobs() {
    let n = knob("STREAMOPS_BENCH_JOBS", 100);
    let runs = knob("STREAMOPS_BENCH_RUNS", 5);
    let concurrency = knob("STREAMOPS_BENCH_APPLY_CONCURRENCY", 16);
    let partitions = knob("STREAMOPS_BENCH_PARTITIONS", 4) as i32;
    let quiet = Duration::from_secs(knob("STREAMOPS_BENCH_QUIET_SECS", 30) as u64);
    let bootstrap = env("STREAMOPS_BOOTSTRAP");
    let kubeconfig = env("STREAMOPS_KUBECONFIG");
    let client = client().await;
    install_crds(&client).await;
    println!(
        "job bench: {n} StreamJobs over one {partitions}-partition source, one sink each, {runs} runs, apply \
         concurrency {concurrency}, quiet window {}s; operator binary {}",
        quiet.as_secs(),
        env!("CARGO_BIN_EXE_streamops-operator")
    );
    let mut results = Vec::new();
    for run in 1..=runs {
        let r = one_run(
            &client,
            &kubeconfig,
            &bootstrap,
            n,
            concurrency,
            partitions,
            quiet,
        )
        .await;
        println!("run {run}: {r:?}");
        results.push(r);
    }
    print_summary(n, &results);
}

fn job(name: &str, sink: &str) -> StreamJob {
    serde_json::from_value(json!({
        "apiVersion": "streamops.io/v1alpha1",
        "kind": "StreamJob",
        "metadata": {"name": name},
        "spec": {
            "source": {"topics": ["source"], "eventTime": {"field": "record.ts"}},
            "pipeline": {
                "keyBy": ["record.user_id"],
                "window": {"type": "tumbling", "size": "10s"},
                "aggregations": [{"name": "clicks", "function": "count"}]
            },
            "sink": {"topic": sink},
            "upgrade": {"healthTimeout": "1h"}
        }
    }))
    .expect("job")
}

async fn one_run(
    client: &Client,
    kubeconfig: &str,
    bootstrap: &str,
    n: usize,
    concurrency: usize,
    partitions: i32,
    quiet: Duration,
) -> RunResult {
    let mut r = RunResult::default();
    let ns = create_namespace(client).await;
    let topics: Api<StreamTopic> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<StreamJob> = Api::namespaced(client.clone(), &ns);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let prefix = unique("jb");
    let names: Vec<String> = (0..n).map(|i| format!("job{i:03}")).collect();

    let port = free_port();
    let log_path = std::env::temp_dir().join(format!("streamops-job-bench-{ns}.log"));
    let mut operator = KillOnDrop(spawn_operator(
        kubeconfig,
        bootstrap,
        &ns,
        port,
        &log_path,
        &["--runtime-image", "streamops-runtime:bench"],
    ));
    let pid = operator.0.id();
    wait_ready(port, &mut operator.0, &log_path).await;

    // The topics first (not part of the job figure): one source, a sink per job.
    let started = Instant::now();
    let mut topic_names = vec![("source".to_string(), partitions)];
    topic_names.extend(names.iter().map(|j| (format!("{j}-out"), 1)));
    stream::iter(topic_names)
        .map(|(name, p)| {
            let topics = topics.clone();
            let kafka = format!("{prefix}-{name}");
            async move {
                let mut t = StreamTopic::new(&name, spec(&kafka, p, &[]));
                t.spec.deletion_policy = Some(streamops_crds::topic::DeletionPolicy::Delete);
                topics
                    .create(&PostParams::default(), &t)
                    .await
                    .expect("create topic");
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    wait_until(Duration::from_secs(300), "every StreamTopic Ready", || {
        let topics = topics.clone();
        async move {
            let list = topics.list(&ListParams::default()).await.ok()?;
            (list.items.len() == n + 1 && list.items.iter().all(is_ready)).then_some(())
        }
    })
    .await;
    r.topics_ready_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.idle_rss_mib = proc_status_kib(pid, "VmRSS") / 1024.0;

    // Apply N jobs; watches record when each one's status says `Deploying`
    // for its generation and when its StatefulSet asks for all its pods (the
    // status is written before the objects are applied: both count).
    let status_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let set_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let watches = [
        tokio::spawn(record_first(jobs.clone(), deploying, status_at.clone())),
        tokio::spawn(record_first(
            sets.clone(),
            move |s: &StatefulSet| s.spec.as_ref().and_then(|s| s.replicas) == Some(partitions),
            set_at.clone(),
        )),
    ];
    let created_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    stream::iter(names.clone())
        .map(|name| {
            let jobs = jobs.clone();
            let created_at = created_at.clone();
            async move {
                let j = job(&name, &format!("{name}-out"));
                let at = Instant::now();
                jobs.create(&PostParams::default(), &j).await.expect("create job");
                created_at.lock().expect("lock").insert(name, at);
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<()>>()
        .await;
    r.apply_s = started.elapsed().as_secs_f64();
    wait_until(
        Duration::from_secs(600),
        "every StreamJob Deploying with its StatefulSet",
        || {
            let (status_at, set_at) = (status_at.clone(), set_at.clone());
            async move { (status_at.lock().ok()?.len() == n && set_at.lock().ok()?.len() == n).then_some(()) }
        },
    )
    .await;
    let deployed_at: HashMap<String, Instant> = {
        let status = status_at.lock().expect("lock");
        let set = set_at.lock().expect("lock");
        status
            .iter()
            .filter_map(|(name, at)| Some((name.clone(), (*at).max(*set.get(name)?))))
            .collect()
    };
    let last = deployed_at.values().max().copied();
    r.all_deployed_s = last.map(|t| (t - started).as_secs_f64()).unwrap_or(f64::NAN);
    let mut latencies: Vec<f64> = {
        let created = created_at.lock().expect("lock");
        deployed_at
            .iter()
            .filter_map(|(name, at)| Some((*at - *created.get(name)?).as_secs_f64()))
            .collect()
    };
    r.deployed_p50_s = percentile(&mut latencies, 50.0);
    r.deployed_p99_s = percentile(&mut latencies, 99.0);
    for w in watches {
        w.abort();
    }

    // The object graph really exists, sized to the source partitions.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let svcs: Api<Service> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let set_list = sets
        .list(&ListParams::default())
        .await
        .expect("list statefulsets");
    assert_eq!(set_list.items.len(), n, "one StatefulSet per job");
    for s in &set_list.items {
        let replicas = s.spec.as_ref().and_then(|s| s.replicas);
        assert_eq!(replicas, Some(partitions), "{} replicas", s.name_any());
    }
    let cm_count = cms.list(&ListParams::default()).await.expect("list").items.len();
    let svc_count = svcs.list(&ListParams::default()).await.expect("list").items.len();
    let secret_count = secrets
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .filter(|s| s.metadata.owner_references.is_some())
        .count();
    assert!(
        cm_count >= n && svc_count >= n && secret_count >= n,
        "configmaps {cm_count}, services {svc_count}, secrets {secret_count}"
    );

    // Quiet window: nothing changes, every job waits for its pods.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    tokio::time::sleep(quiet).await;
    r.waiting_cpu_pct = 100.0 * (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();
    r.waiting_rss_mib = proc_status_kib(pid, "VmRSS") / 1024.0;

    // Delete all jobs, then the topics.
    let started = Instant::now();
    stream::iter(names.clone())
        .map(|name| {
            let jobs = jobs.clone();
            async move { jobs.delete(&name, &DeleteParams::default()).await.map(|_| ()) }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    wait_empty(&jobs, "every StreamJob gone").await;
    r.delete_s = started.elapsed().as_secs_f64();
    r.peak_rss_mib = proc_status_kib(pid, "VmHWM") / 1024.0;

    let all: Vec<String> = topics
        .list(&ListParams::default())
        .await
        .expect("list topics")
        .items
        .iter()
        .map(|t| t.name_any())
        .collect();
    for t in &all {
        let _ = topics.delete(t, &DeleteParams::default()).await;
    }
    wait_empty(&topics, "every StreamTopic gone").await;
    drop(operator);
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
    r
}

/// Whether a job's status describes its generation in `Deploying` with the
/// rollout started (the operator applied the object graph and waits for pods).
fn deploying(j: &StreamJob) -> bool {
    let status = j.status.as_ref();
    status.and_then(|s| s.observed_generation) == j.metadata.generation
        && status.and_then(|s| s.phase) == Some(JobPhase::Deploying)
        && status
            .and_then(|s| s.upgrade.as_ref())
            .is_some_and(|u| u.rollout_started.is_some())
}

/// First instant each object of `api` satisfies `pred`, by name.
async fn record_first<K>(api: Api<K>, pred: impl Fn(&K) -> bool, at: Arc<Mutex<HashMap<String, Instant>>>)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    let mut events = watcher(api, watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        let Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event else {
            continue;
        };
        if pred(&o) {
            at.lock()
                .expect("lock")
                .entry(o.name_any())
                .or_insert_with(Instant::now);
        }
    }
}

/// Waits until `api` lists nothing.
async fn wait_empty<K>(api: &Api<K>, what: &str)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    wait_until(Duration::from_secs(300), what, || async {
        api.list(&ListParams::default())
            .await
            .ok()?
            .items
            .is_empty()
            .then_some(())
    })
    .await;
}

async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if probe().await.is_some() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn print_summary(n: usize, results: &[RunResult]) {
    let stat = |f: fn(&RunResult) -> f64| {
        let v: Vec<f64> = results.iter().map(f).collect();
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("median {:.2} (min {min:.2}, max {max:.2})", median(v))
    };
    println!("\n=== {n} StreamJobs, {} runs", results.len());
    println!("topics Ready (n+1)          s   {}", stat(|r| r.topics_ready_s));
    println!("apply (creates)             s   {}", stat(|r| r.apply_s));
    println!("all jobs deployed           s   {}", stat(|r| r.all_deployed_s));
    println!("create -> deployed p50      s   {}", stat(|r| r.deployed_p50_s));
    println!("create -> deployed p99      s   {}", stat(|r| r.deployed_p99_s));
    println!("idle RSS (topics only)    MiB   {}", stat(|r| r.idle_rss_mib));
    println!("RSS, N jobs waiting       MiB   {}", stat(|r| r.waiting_rss_mib));
    println!("peak RSS (VmHWM)          MiB   {}", stat(|r| r.peak_rss_mib));
    println!("CPU, N jobs waiting         %   {}", stat(|r| r.waiting_cpu_pct));
    println!("delete all jobs             s   {}", stat(|r| r.delete_s));
}
