//! StreamJobs end to end: the operator (installed by the chart, in a pod)
//! runs real runtime pods on the local node against the nisshi broker.
//!
//! Needs a full node with the images imported and the chart installed, as
//! the `jobs` stage of `e2e/test.sh` sets up; `STREAMOPS_KUBECONFIG` and
//! `STREAMOPS_BOOTSTRAP` name the cluster and the broker. Kafka I/O goes
//! through `e2e/jobs/kafka_io.py` (kafka-python). Each test has its own
//! namespace and topics; on failure the namespace is kept and the operator's
//! and pods' logs are written under `$STREAMOPS_ARTIFACTS` (default
//! `/tmp/streamops-e2e-artifacts`).
//!
//! Exactly-once check: every output record carries the header
//! `streamops-checkpoint: <task>:<checkpoint>:<instance>`; it counts as
//! committed only if the job's control topic holds a committed marker with
//! that triple (nisshi leaks a fenced producer's open transaction to
//! read_committed readers, so "read_committed" alone is not proof).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use kube::{Api, Client, api::DynamicObject};
use serde_json::{Value, json};
use streamops_e2e::{TestNamespace, api_for, apply, client, repo_root};

const WINDOW_MS: i64 = 10_000;
const HEADER: &str = "streamops-checkpoint";

/// (user, window start) -> (clicks, spent).
type Expected = BTreeMap<(String, i64), (i64, i64)>;

fn bootstrap() -> anyhow::Result<String> {
    std::env::var("STREAMOPS_BOOTSTRAP").context(
        "STREAMOPS_BOOTSTRAP is not set: these tests need the local broker \
         (run them through `make test`, or see e2e/README.md)",
    )
}

fn kubeconfig() -> String {
    std::env::var("STREAMOPS_KUBECONFIG").unwrap_or_default()
}

// --- Kafka through e2e/jobs/kafka_io.py ----------------------------------

fn kafka_io() -> std::path::PathBuf {
    repo_root().join("e2e/jobs/kafka_io.py")
}

/// One input record: partition and value.
#[derive(Clone, Debug)]
struct Input {
    partition: i32,
    value: String,
}

fn produce(topic: &str, data: &[Input]) -> anyhow::Result<()> {
    let mut child = Command::new("python3")
        .arg(kafka_io())
        .args(["produce", "--bootstrap", &bootstrap()?, "--topic", topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running kafka_io.py produce")?;
    {
        let mut stdin = child.stdin.take().context("stdin")?;
        for r in data {
            writeln!(stdin, "{}", json!({"partition": r.partition, "value": r.value}))?;
        }
    }
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "producing to {topic} failed");
    Ok(())
}

/// A committed record as kafka_io.py dumps it.
#[derive(Debug)]
struct Record {
    value: String,
    checkpoint: Option<String>,
}

fn dump(topic: &str) -> anyhow::Result<Vec<Record>> {
    let out = Command::new("python3")
        .arg(kafka_io())
        .args(["dump", "--bootstrap", &bootstrap()?, "--topic", topic])
        .output()
        .context("running kafka_io.py dump")?;
    ensure!(
        out.status.success(),
        "reading {topic}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)?
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            Ok(Record {
                value: v["value"].as_str().unwrap_or_default().to_owned(),
                checkpoint: v["headers"][HEADER].as_str().map(str::to_owned),
            })
        })
        .collect()
}

/// `<task>:<checkpoint>:<instance>` of every committed marker in the control topic.
fn markers(control: &str) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for r in dump(control)? {
        let Ok(m) = serde_json::from_str::<Value>(&r.value) else {
            continue; // fencing records and the like
        };
        if let (Some(task), Some(id), Some(instance)) = (
            m["task"].as_u64(),
            m["checkpointId"].as_u64(),
            m["instance"].as_str(),
        ) {
            out.insert(format!("{task}:{id}:{instance}"));
        }
    }
    Ok(out)
}

// --- dataset and reference -------------------------------------------------

/// `per_partition` clicks per partition with event time rising by 20 ms per
/// record and up to 1.5 s of disorder (never late for a 2 s bound), users
/// spread over every partition (so the job really repartitions), every 97th
/// record malformed. `flush: true` appends one far-future click per
/// partition that closes every window.
fn dataset(partitions: i32, range: std::ops::Range<usize>, users: u64, flush: bool) -> Vec<Input> {
    let mut out = Vec::new();
    for p in 0..partitions {
        for i in range.clone() {
            // Deterministic per (partition, index), whatever the range.
            let mut s = (p as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                ^ (i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let mut rnd = || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s
            };
            let base = 1_700_000_000_000i64 + (i as i64) * 20;
            let ts = base - (rnd() % 1_500) as i64;
            let user = rnd() % users;
            let amount = rnd() % 1000;
            let value = if i % 97 == 50 {
                format!("not json {p}/{i}")
            } else {
                json!({"user": format!("u{user}"), "ts": ts, "amount": amount}).to_string()
            };
            out.push(Input { partition: p, value });
        }
        if flush {
            out.push(Input {
                partition: p,
                value: json!({"user": "flush", "ts": 1_800_000_000_000i64, "amount": 0}).to_string(),
            });
        }
    }
    out
}

/// (user, window start) -> (clicks, spent); and the number of malformed records.
fn reference(data: &[Input]) -> (Expected, usize) {
    let mut m = BTreeMap::new();
    let mut bad = 0;
    for r in data {
        let Ok(v) = serde_json::from_str::<Value>(&r.value) else {
            bad += 1;
            continue;
        };
        let user = v["user"].as_str().unwrap_or_default().to_owned();
        if user == "flush" {
            continue;
        }
        let start = v["ts"].as_i64().unwrap_or_default().div_euclid(WINDOW_MS) * WINDOW_MS;
        let e = m.entry((user, start)).or_insert((0, 0));
        e.0 += 1;
        e.1 += v["amount"].as_i64().unwrap_or_default();
    }
    (m, bad)
}

/// The committed results of a job, and what did not count.
#[derive(Debug, Default)]
struct Verdict {
    /// (user, window start) -> every committed (clicks, spent) for it.
    results: BTreeMap<(String, i64), Vec<(i64, i64)>>,
    /// Committed results that carry `field` (the new version's aggregation).
    with_field: usize,
    /// Records whose checkpoint has no committed marker (a broker leak).
    uncommitted: usize,
    /// Records without a checkpoint header (a product fault).
    untagged: usize,
}

fn verify(sink: &str, control: &str, field: Option<&str>) -> anyhow::Result<Verdict> {
    let marks = markers(control)?;
    let mut v = Verdict::default();
    for r in dump(sink)? {
        let Some(cp) = &r.checkpoint else {
            v.untagged += 1;
            continue;
        };
        if !marks.contains(cp) {
            v.uncommitted += 1;
            continue;
        }
        let j: Value = serde_json::from_str(&r.value).context("a result that is not JSON")?;
        let user = j["key"][0].as_str().context("key[0]")?.to_owned();
        if user == "flush" {
            continue;
        }
        if field.is_some_and(|f| j.get(f).is_some()) {
            v.with_field += 1;
        }
        let start = j["windowStart"].as_i64().context("windowStart")?;
        let clicks = j["clicks"].as_i64().context("clicks")?;
        let spent = j["spent"].as_f64().context("spent")? as i64;
        v.results.entry((user, start)).or_default().push((clicks, spent));
    }
    Ok(v)
}

/// Missing, duplicated or wrong results.
fn faults(expected: &Expected, v: &Verdict) -> Vec<String> {
    let mut f = Vec::new();
    for (k, want) in expected {
        match v.results.get(k).map(Vec::as_slice) {
            None => f.push(format!("missing {k:?}")),
            Some([got]) if got == want => {}
            Some(got) => f.push(format!("{k:?}: want [{want:?}], got {got:?}")),
        }
    }
    f.extend(
        v.results
            .keys()
            .filter(|k| !expected.contains_key(*k))
            .map(|k| format!("unexpected {k:?}")),
    );
    if v.untagged > 0 {
        f.push(format!("{} records without a {HEADER} header", v.untagged));
    }
    f
}

/// Polls the sink until every expected window has a committed result (or the
/// timeout), then returns the verdict.
async fn wait_results(
    sink: &str,
    control: &str,
    expected: &Expected,
    field: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<Verdict> {
    let deadline = Instant::now() + timeout;
    loop {
        let v = verify(sink, control, field)?;
        let complete = expected.keys().all(|k| v.results.contains_key(k));
        if complete || Instant::now() >= deadline {
            if !complete {
                eprintln!(
                    "results incomplete after {timeout:?}: {} of {} windows",
                    v.results.len(),
                    expected.len()
                );
            }
            return Ok(v);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

// --- Kubernetes ------------------------------------------------------------

fn obj(v: Value) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(v)?)
}

async fn apply_ok(client: &Client, ns: &str, o: &DynamicObject) -> anyhow::Result<()> {
    apply(client, ns, o)
        .await?
        .with_context(|| format!("applying {:?}", o.metadata.name))?;
    Ok(())
}

fn topic(name: &str, kafka_name: &str, partitions: i32) -> anyhow::Result<DynamicObject> {
    obj(json!({
        "apiVersion": "streamops.io/v1alpha1", "kind": "StreamTopic",
        "metadata": {"name": name},
        "spec": {"topicName": kafka_name, "partitions": partitions, "replicationFactor": 1,
                 "deletionPolicy": "Delete"}
    }))
}

/// The clicks job of these tests, with `extra` aggregations after clicks and spent.
fn job(name: &str, extra: &[Value]) -> anyhow::Result<DynamicObject> {
    let mut aggs = vec![
        json!({"name": "clicks", "function": "count"}),
        json!({"name": "spent", "function": "sum", "field": "record.amount"}),
    ];
    aggs.extend_from_slice(extra);
    obj(json!({
        "apiVersion": "streamops.io/v1alpha1", "kind": "StreamJob",
        "metadata": {"name": name},
        "spec": {
            "source": {"topics": ["in"], "eventTime": {"field": "record.ts", "format": "epochMillis"},
                       "watermark": {"outOfOrderness": "2s"}},
            "pipeline": {"keyBy": ["record.user"], "window": {"type": "tumbling", "size": "10s"},
                         "aggregations": aggs},
            "sink": {"topic": "out"},
            "deadLetter": {"topic": "dead"},
            "checkpoint": {"interval": "1s"}
        }
    }))
}

async fn job_api(client: &Client, ns: &str) -> anyhow::Result<Api<DynamicObject>> {
    api_for(client, &job("x", &[])?, ns).await
}

fn field<'a>(o: &'a DynamicObject, path: &[&str]) -> &'a Value {
    let mut v = &o.data;
    for p in path {
        v = &v[*p];
    }
    v
}

/// Waits until the job is Running at its current generation.
async fn wait_running(
    api: &Api<DynamicObject>,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<DynamicObject> {
    let deadline = Instant::now() + timeout;
    loop {
        let j = api.get(name).await?;
        let generation = j.metadata.generation.unwrap_or_default();
        if field(&j, &["status", "phase"]) == "Running"
            && field(&j, &["status", "observedGeneration"]).as_i64() == Some(generation)
        {
            return Ok(j);
        }
        if Instant::now() >= deadline {
            bail!(
                "StreamJob {name} not Running at generation {generation} after {timeout:?}: status {}",
                field(&j, &["status"])
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes the operator's and the namespace's pods' logs, events and objects
/// under the artifacts directory.
fn collect_logs(ns: &str) {
    let dir = std::path::PathBuf::from(
        std::env::var("STREAMOPS_ARTIFACTS").unwrap_or_else(|_| "/tmp/streamops-e2e-artifacts".into()),
    )
    .join(ns);
    let _ = std::fs::create_dir_all(&dir);
    let kc = |args: &[&str], file: &str| {
        if let Ok(out) = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(kubeconfig())
            .args(args)
            .output()
        {
            let _ = std::fs::write(dir.join(file), [out.stdout, out.stderr].concat());
        }
    };
    kc(
        &[
            "get",
            "streamjobs,streamtopics,statefulsets,pods,configmaps",
            "-n",
            ns,
            "-o",
            "yaml",
        ],
        "objects.yaml",
    );
    kc(
        &["get", "events", "-n", ns, "--sort-by=.lastTimestamp"],
        "events.txt",
    );
    kc(
        &[
            "logs",
            "-n",
            "streamops-system",
            "-l",
            "app.kubernetes.io/instance=streamops",
            "--tail=-1",
        ],
        "operator.log",
    );
    if let Ok(out) = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig())
        .args(["get", "pods", "-n", ns, "-o", "name"])
        .output()
    {
        for pod in String::from_utf8_lossy(&out.stdout).lines() {
            let name = pod.trim_start_matches("pod/");
            kc(&["logs", "-n", ns, pod], &format!("{name}.log"));
            kc(
                &["logs", "-n", ns, pod, "--previous"],
                &format!("{name}.previous.log"),
            );
        }
    }
    eprintln!("logs of namespace {ns} in {}", dir.display());
}

/// Runs `scenario` in a namespace of its own: deleted on success, kept with
/// its logs collected on failure.
async fn in_namespace<F, Fut>(prefix: &str, scenario: F)
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let client = client().await.expect("cluster");
    let ns = TestNamespace::create(&client, prefix).await.expect("namespace");
    let name = ns.name.clone();
    match scenario(client, name.clone()).await {
        Ok(()) => ns.delete().await.expect("deleting the namespace"),
        Err(e) => {
            collect_logs(&name);
            panic!("namespace {name}: {e:#}");
        }
    }
}

/// StreamTopics in, out, dead (Kafka names prefixed with the namespace).
async fn topics(client: &Client, ns: &str, partitions: i32) -> anyhow::Result<(String, String)> {
    for (name, parts) in [("in", partitions), ("out", partitions), ("dead", 1)] {
        apply_ok(client, ns, &topic(name, &format!("{ns}-{name}"), parts)?).await?;
    }
    Ok((format!("{ns}-in"), format!("{ns}-out")))
}

fn control_topic(ns: &str, job: &str) -> String {
    format!("streamops.{ns}.{job}.checkpoints")
}

// --- the scenarios -----------------------------------------------------------

/// Deploy: a fixed dataset produced before the job starts comes out exactly:
/// one committed result per (user, window) with the reference's counts and
/// sums, and every malformed record in the dead-letter topic.
#[tokio::test]
async fn deploy_results_appear_exactly() {
    in_namespace("e2e-job-deploy", |client, ns| async move {
        let (input, sink) = topics(&client, &ns, 4).await?;
        let data = dataset(4, 0..1000, 12, true);
        let (expected, bad) = reference(&data);
        apply_ok(&client, &ns, &job("clicks", &[])?).await?;
        let api = job_api(&client, &ns).await?;
        let t0 = Instant::now();
        let j = wait_running(&api, "clicks", Duration::from_secs(180)).await?;
        eprintln!(
            "deployed: Running with parallelism {} in {:.1}s",
            field(&j, &["status", "parallelism"]),
            t0.elapsed().as_secs_f64()
        );
        ensure!(
            field(&j, &["status", "parallelism"]) == 4,
            "parallelism {}",
            field(&j, &["status"])
        );
        produce(&input, &data)?;
        let control = control_topic(&ns, "clicks");
        let v = wait_results(&sink, &control, &expected, None, Duration::from_secs(180)).await?;
        let f = faults(&expected, &v);
        ensure!(
            f.is_empty(),
            "{} faults, first: {:?}",
            f.len(),
            &f[..f.len().min(10)]
        );
        let dead = dump(&format!("{ns}-dead"))?;
        let marks = markers(&control)?;
        let dead_committed = dead
            .iter()
            .filter(|r| r.checkpoint.as_ref().is_some_and(|c| marks.contains(c)))
            .count();
        ensure!(
            dead_committed == bad,
            "dead letters: {dead_committed}, want {bad}"
        );
        eprintln!(
            "deploy: {} windows exact, {} dead letters, {} uncommitted records seen (broker leaks)",
            expected.len(),
            bad,
            v.uncommitted
        );
        Ok(())
    })
    .await;
}

/// Upgrade: half the data in, a spec change (one more aggregation) while the
/// job runs, the other half in: savepoint, new pods restored from it, and the
/// committed output equals the reference: nothing lost, nothing twice.
/// Prints the time from the apply to the new version processing again (Running
/// at the new generation: every pod restored and Ready) and the savepoint's share.
#[tokio::test]
async fn upgrade_with_savepoint_loses_and_duplicates_nothing() {
    in_namespace("e2e-job-upgrade", |client, ns| async move {
        let (input, sink) = topics(&client, &ns, 2).await?;
        let first = dataset(2, 0..800, 8, false);
        let second = dataset(2, 800..1600, 8, true);
        let all: Vec<Input> = first.iter().chain(&second).cloned().collect();
        let (expected, _) = reference(&all);
        apply_ok(&client, &ns, &job("clicks", &[])?).await?;
        let api = job_api(&client, &ns).await?;
        let j = wait_running(&api, "clicks", Duration::from_secs(180)).await?;
        let gen1 = j.metadata.generation.unwrap_or_default();
        produce(&input, &first)?;
        let control = control_topic(&ns, "clicks");
        // Some windows of the first half committed: the old version is working.
        let deadline = Instant::now() + Duration::from_secs(120);
        while verify(&sink, &control, None)?.results.is_empty() {
            ensure!(
                Instant::now() < deadline,
                "no results from the first version in 120s"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }

        let t_apply = Instant::now();
        apply_ok(
            &client,
            &ns,
            &job(
                "clicks",
                &[json!({"name": "biggest", "function": "max", "field": "record.amount"})],
            )?,
        )
        .await?;
        let mut t_savepoint = None;
        let deadline = t_apply + Duration::from_secs(240);
        let (savepoint, gen2) = loop {
            let j = api.get("clicks").await?;
            let generation = j.metadata.generation.unwrap_or_default();
            let phase = field(&j, &["status", "phase"])
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let sp = field(&j, &["status", "lastSavepoint", "id"])
                .as_str()
                .map(str::to_owned);
            if t_savepoint.is_none() && sp.is_some() {
                t_savepoint = Some(t_apply.elapsed());
            }
            if generation > gen1
                && phase == "Running"
                && field(&j, &["status", "observedGeneration"]).as_i64() == Some(generation)
                && sp.is_some()
            {
                break (sp.unwrap_or_default(), generation);
            }
            ensure!(
                !matches!(phase.as_str(), "Failed" | "RollingBack"),
                "upgrade went {phase}: {}",
                field(&j, &["status"])
            );
            ensure!(
                Instant::now() < deadline,
                "upgrade not done in 240s: {}",
                field(&j, &["status"])
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        let total = t_apply.elapsed();
        let sp_time = t_savepoint.unwrap_or(total);
        eprintln!(
            "UPGRADE TIMING: apply -> new version (generation {gen2}) processing again: {:.1}s; \
             savepoint {savepoint} recorded after {:.1}s ({:.0}% of it)",
            total.as_secs_f64(),
            sp_time.as_secs_f64(),
            100.0 * sp_time.as_secs_f64() / total.as_secs_f64()
        );

        produce(&input, &second)?;
        let v = wait_results(
            &sink,
            &control,
            &expected,
            Some("biggest"),
            Duration::from_secs(180),
        )
        .await?;
        let f = faults(&expected, &v);
        ensure!(
            f.is_empty(),
            "{} faults, first: {:?}",
            f.len(),
            &f[..f.len().min(10)]
        );
        ensure!(
            v.with_field > 0,
            "no committed result carries the new aggregation"
        );
        eprintln!(
            "upgrade: {} windows exact across the upgrade ({} from the new version with 'biggest'), \
             {} uncommitted records seen (broker leaks)",
            expected.len(),
            v.with_field,
            v.uncommitted
        );
        Ok(())
    })
    .await;
}
