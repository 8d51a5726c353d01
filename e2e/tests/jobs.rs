//! StreamJobs end to end: the operator (installed by the chart, in a pod)
//! runs real runtime pods on the local node against Apache Kafka.
//!
//! Needs a full node with the images imported and the chart installed, as
//! the `jobs` stage of `e2e/test.sh` sets up; `STREAMOPS_KUBECONFIG` and
//! `STREAMOPS_BOOTSTRAP` name the cluster and the broker. Kafka I/O goes
//! through `e2e/jobs/kafka_io.py` (kafka-python). Each test has its own
//! namespace and topics (the namespace is deleted on success, and its pods
//! waited for); on failure the namespace is kept and the operator's and pods'
//! logs are written under `$STREAMOPS_ARTIFACTS` (default
//! `/tmp/streamops-e2e-artifacts`). Run them one at a time
//! (`--test-threads=1`): one of them restarts the operator, and the upgrade
//! timings they print mean little on a node shared with other tests.
//!
//! Exactly-once check: every output record carries the header
//! `streamops-checkpoint: <task>:<checkpoint>:<instance>`, and the job's
//! control topic must hold a committed marker with that triple: output
//! visible without its checkpoint's marker is a fault, like a missing,
//! duplicated or wrong result.
//!
//! Upgrade timings are printed as one line per upgrade, starting with
//! `UPGRADE_TIMING` followed by `key=value` pairs (seconds from the apply of
//! the changed spec): `savepoint_s` (the savepoint recorded in status),
//! `processing_s` (every new pod Ready: restored and consuming),
//! `first_commit_s` (the new generation's first committed checkpoint) and
//! `running_s` (the operator reports the new generation Running: stable).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{DynamicObject, ListParams},
};
use serde_json::{Value, json};
use streamops_e2e::{
    TestNamespace, api_for, apply_ok, client, cluster_test, collect_logs, field, kubectl, load_manifests,
    obj, phase, repo_root, say, stream_topic,
};

/// Event time of the record that closes every window: after all data, and
/// in the wall clock's past (a later one would be a dead letter under the
/// default `maxFutureSkew` of 1 h).
const FLUSH_TS: i64 = 1_750_000_000_000;

const WINDOW_MS: i64 = 10_000;
const HEADER: &str = "streamops-checkpoint";
/// Where the chart installs the operator (e2e/demo/chart.py's default).
const OPERATOR_NS: &str = "streamops-system";
const OPERATOR_SELECTOR: &str = "app.kubernetes.io/instance=streamops";

/// What every test here needs: the local node with the chart installed, and the broker.
const CLUSTER: &[&str] = &["STREAMOPS_KUBECONFIG", "STREAMOPS_BOOTSTRAP"];

/// (user, window start) -> (clicks, spent).
type Expected = BTreeMap<(String, i64), (i64, i64)>;

fn bootstrap() -> anyhow::Result<String> {
    std::env::var("STREAMOPS_BOOTSTRAP").context(
        "STREAMOPS_BOOTSTRAP is not set: these tests need the local broker \
         (run them through `make test`, or see e2e/README.md)",
    )
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
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
    produce_with(topic, data, &[])
}

/// [`produce`] at `rate` records/s, each record's `ts` set to the wall clock
/// as it is sent (event time that is arrival time).
fn produce_paced(topic: &str, data: &[Input], rate: u32) -> anyhow::Result<()> {
    produce_with(topic, data, &["--rate", &rate.to_string(), "--stamp", "ts"])
}

fn produce_with(topic: &str, data: &[Input], options: &[&str]) -> anyhow::Result<()> {
    let mut child = Command::new("python3")
        .arg(kafka_io())
        .args(["produce", "--bootstrap", &bootstrap()?, "--topic", topic])
        .args(options)
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
    partition: i64,
    key: Option<String>,
    value: String,
    checkpoint: Option<String>,
    /// Every header, name -> text.
    headers: Value,
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
                partition: v["partition"].as_i64().unwrap_or(-1),
                key: v["key"].as_str().map(str::to_owned),
                value: v["value"].as_str().unwrap_or_default().to_owned(),
                checkpoint: v["headers"][HEADER].as_str().map(str::to_owned),
                headers: v["headers"].clone(),
            })
        })
        .collect()
}

/// A committed marker in a job's control topic.
#[derive(Clone, Debug)]
struct Marker {
    generation: i64,
    savepoint: bool,
    time_ms: i64,
}

/// Every committed marker in the control topic, by `<task>:<checkpoint>:<instance>`.
fn markers(control: &str) -> anyhow::Result<BTreeMap<String, Marker>> {
    let mut out = BTreeMap::new();
    for r in dump(control)? {
        let Ok(m) = serde_json::from_str::<Value>(&r.value) else {
            continue; // fencing records and the like
        };
        if let (Some(task), Some(id), Some(instance)) = (
            m["task"].as_u64(),
            m["checkpointId"].as_u64(),
            m["instance"].as_str(),
        ) {
            out.insert(
                format!("{task}:{id}:{instance}"),
                Marker {
                    generation: m["generation"].as_i64().unwrap_or_default(),
                    savepoint: m["kind"] == "savepoint",
                    time_ms: m["timeMs"].as_i64().unwrap_or_default(),
                },
            );
        }
    }
    Ok(out)
}

/// Committed checkpoints (not savepoints) written by `generation`.
fn checkpoints_of(marks: &BTreeMap<String, Marker>, generation: i64) -> Vec<&Marker> {
    marks
        .values()
        .filter(|m| m.generation == generation && !m.savepoint)
        .collect()
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
                value: json!({"user": "flush", "ts": FLUSH_TS, "amount": 0}).to_string(),
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
    /// Records whose checkpoint has no committed marker (a product fault).
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
        if !marks.contains_key(cp) {
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
    if v.uncommitted > 0 {
        f.push(format!(
            "{} records of checkpoints without a committed marker",
            v.uncommitted
        ));
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

/// Waits for every expected window, then fails on any missing, duplicated or
/// wrong result.
async fn expect_exact(
    sink: &str,
    control: &str,
    expected: &Expected,
    field: Option<&str>,
) -> anyhow::Result<Verdict> {
    let v = wait_results(sink, control, expected, field, Duration::from_secs(180)).await?;
    let f = faults(expected, &v);
    ensure!(
        f.is_empty(),
        "{} faults, first: {:?}",
        f.len(),
        &f[..f.len().min(10)]
    );
    Ok(v)
}

/// Waits until the first version has committed some results: it is working.
async fn wait_first_results(sink: &str, control: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while verify(sink, control, None)?.results.is_empty() {
        ensure!(
            Instant::now() < deadline,
            "no results from the first version in 120s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

// --- Kubernetes ------------------------------------------------------------

/// The clicks job of these tests, with `extra` aggregations after clicks and spent.
fn job(name: &str, extra: &[Value]) -> anyhow::Result<DynamicObject> {
    job_with(name, extra, json!({}))
}

/// [`job`] with top-level spec fields set from `spec` (e.g. parallelism).
fn job_with(name: &str, extra: &[Value], spec: Value) -> anyhow::Result<DynamicObject> {
    let mut aggs = vec![
        json!({"name": "clicks", "function": "count"}),
        json!({"name": "spent", "function": "sum", "field": "record.amount"}),
    ];
    aggs.extend_from_slice(extra);
    let mut full = json!({
        "source": {"topics": ["in"], "eventTime": {"field": "record.ts", "format": "epochMillis"},
                   "watermark": {"outOfOrderness": "2s"}},
        "pipeline": {"keyBy": ["record.user"], "window": {"type": "tumbling", "size": "10s"},
                     "aggregations": aggs},
        "sink": {"topic": "out"},
        "deadLetter": {"topic": "dead"},
        "checkpoint": {"interval": "1s"}
    });
    for (k, v) in spec.as_object().into_iter().flatten() {
        full[k] = v.clone();
    }
    obj(json!({
        "apiVersion": "streamops.io/v1alpha1", "kind": "StreamJob",
        "metadata": {"name": name},
        "spec": full
    }))
}

/// The aggregation the new versions in these tests add.
fn biggest() -> Value {
    json!({"name": "biggest", "function": "max", "field": "record.amount"})
}

async fn job_api(client: &Client, ns: &str) -> anyhow::Result<Api<DynamicObject>> {
    api_for(client, &job("x", &[])?, ns).await
}

/// What the operator says it is doing: the Reconciling (else Ready)
/// condition's reason and message.
fn doing(j: &DynamicObject) -> String {
    let conditions = field(j, &["status", "conditions"])
        .as_array()
        .cloned()
        .unwrap_or_default();
    let find = |t: &str| {
        conditions
            .iter()
            .find(|c| c["type"] == t && (t == "Ready" || c["status"] == "True"))
            .map(|c| {
                format!(
                    "{}: {}",
                    c["reason"].as_str().unwrap_or(""),
                    c["message"].as_str().unwrap_or("")
                )
            })
    };
    find("Reconciling").or_else(|| find("Ready")).unwrap_or_default()
}

/// Prints what the operator says whenever it changes, at most every 5 s.
#[derive(Default)]
struct Narrator {
    last: String,
    at: Option<Instant>,
}

impl Narrator {
    fn tell(&mut self, t0: Instant, j: &DynamicObject) {
        let now = doing(j);
        if now != self.last && self.at.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            say(t0, format!("  operator: {now}"));
            self.last = now;
            self.at = Some(Instant::now());
        }
    }
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
        if phase(&j) == "Running" && field(&j, &["status", "observedGeneration"]).as_i64() == Some(generation)
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

/// Creates the job and waits until it runs with `pods` pods.
async fn deploy(
    client: &Client,
    ns: &str,
    job: &DynamicObject,
    pods: i64,
    t0: Instant,
) -> anyhow::Result<(Api<DynamicObject>, DynamicObject)> {
    apply_ok(client, ns, job).await?;
    let api = job_api(client, ns).await?;
    say(t0, format!("waiting (up to 180s) for the job to run {pods} pods"));
    let j = wait_running(&api, "clicks", Duration::from_secs(180)).await?;
    say(
        t0,
        format!(
            "Running at generation {} with parallelism {}",
            j.metadata.generation.unwrap_or_default(),
            field(&j, &["status", "parallelism"])
        ),
    );
    ensure!(
        field(&j, &["status", "parallelism"]) == pods,
        "parallelism {}",
        field(&j, &["status"])
    );
    Ok((api, j))
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The job's runtime pods.
async fn job_pods(client: &Client, ns: &str, job: &str) -> anyhow::Result<Vec<Pod>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default().labels(&format!("streamops.io/job={job}")))
        .await?
        .items)
}

fn uids(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter().filter_map(|p| p.uid()).collect()
}

/// Event reasons the operator published for `job`.
async fn event_reasons(client: &Client, ns: &str, job: &str) -> anyhow::Result<Vec<String>> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    Ok(api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(job))
        .filter_map(|e| e.reason)
        .collect())
}

/// Waits until the operator has published a `reason` event for `job` (it
/// publishes events after writing the status the test may have seen).
/// Waits until job `clicks` runs its current generation on `partitions`
/// source partitions; returns the phases it went through.
async fn running_at(
    api: &Api<DynamicObject>,
    partitions: i32,
    within: Duration,
) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + within;
    let mut phases: Vec<String> = Vec::new();
    loop {
        let j = api.get("clicks").await?;
        let ph = phase(&j);
        if phases.last() != Some(&ph) {
            phases.push(ph.clone());
        }
        if ph == "Running"
            && field(&j, &["status", "sourcePartitions"]) == partitions
            && field(&j, &["status", "observedGeneration"]) == j.metadata.generation.unwrap_or_default()
        {
            return Ok(phases);
        }
        ensure!(
            Instant::now() < deadline,
            "not Running at {partitions} partitions within {within:?} (phases {}): {}",
            phases.join(">"),
            field(&j, &["status"])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_event(client: &Client, ns: &str, job: &str, reason: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reasons = event_reasons(client, ns, job).await?;
        if reasons.iter().any(|r| r == reason) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "no {reason} event in 30s; events: {reasons:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The operator's pods, and whether each is Ready.
async fn operator_pods(client: &Client) -> anyhow::Result<Vec<(String, bool)>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NS);
    Ok(api
        .list(&ListParams::default().labels(OPERATOR_SELECTOR))
        .await?
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.uid().unwrap_or_default(), pod_ready(p)))
        .collect())
}

/// What the test saw between applying a changed spec and the job running it.
#[derive(Debug)]
struct Rollout {
    generation: i64,
    savepoint: String,
    /// Every phase seen, in order, without repeats.
    phases: Vec<String>,
    /// The savepoint recorded in status.
    savepoint_after: Duration,
    /// Every new pod Ready.
    processing_after: Duration,
    /// Running at the new generation (stable).
    running_after: Duration,
    /// Wall clock of the apply, to place the control topic's markers.
    applied_ms: i64,
}

impl Rollout {
    /// Prints the timing line (see the module documentation).
    fn print_timing(&self, scenario: &str, control: &str) {
        let first_commit = markers(control).ok().and_then(|m| {
            checkpoints_of(&m, self.generation)
                .iter()
                .map(|m| m.time_ms)
                .min()
                .map(|t| (t - self.applied_ms) as f64 / 1000.0)
        });
        let total = self.processing_after.as_secs_f64();
        let sp = self.savepoint_after.as_secs_f64();
        eprintln!(
            "UPGRADE_TIMING scenario={scenario} generation={} processing_s={total:.1} savepoint_s={sp:.1} \
             savepoint_share_pct={:.0} first_commit_s={} running_s={:.1} phases={}",
            self.generation,
            100.0 * sp / total.max(0.001),
            first_commit.map_or("unknown".to_owned(), |s| format!("{s:.1}")),
            self.running_after.as_secs_f64(),
            self.phases.join(">")
        );
    }
}

/// Applies `changed` (the job was Running at `before`) and follows the
/// savepoint-then-upgrade until the job runs the new generation on `pods`
/// new pods. `during(phase)` is called on every poll (the operator-kill test
/// acts from it). Fails on Failed or RollingBack, and after `timeout`.
#[allow(clippy::too_many_arguments)]
async fn upgrade(
    client: &Client,
    ns: &str,
    api: &Api<DynamicObject>,
    changed: &DynamicObject,
    before: &DynamicObject,
    pods: usize,
    timeout: Duration,
    t0: Instant,
    mut during: impl FnMut(&str) -> anyhow::Result<()>,
) -> anyhow::Result<Rollout> {
    let gen1 = before.metadata.generation.unwrap_or_default();
    let sp_before = field(before, &["status", "lastSavepoint", "id"]).clone();
    let old_pods = uids(&job_pods(client, ns, "clicks").await?);
    let applied_ms = wall_ms();
    let t_apply = Instant::now();
    apply_ok(client, ns, changed).await?;
    say(
        t0,
        format!("applied the changed spec; waiting (up to {timeout:?}) for savepoint, new pods, Running"),
    );
    let mut phases: Vec<String> = Vec::new();
    let mut narrator = Narrator::default();
    let (mut savepoint_after, mut processing_after) = (None, None);
    let deadline = t_apply + timeout;
    loop {
        let j = api.get("clicks").await?;
        let generation = j.metadata.generation.unwrap_or_default();
        let ph = phase(&j);
        if phases.last() != Some(&ph) {
            say(t0, format!("phase {ph}"));
            phases.push(ph.clone());
        }
        narrator.tell(t0, &j);
        during(&ph)?;
        let sp = field(&j, &["status", "lastSavepoint", "id"]);
        if savepoint_after.is_none() && !sp.is_null() && *sp != sp_before {
            savepoint_after = Some(t_apply.elapsed());
            say(t0, format!("savepoint {sp} recorded"));
        }
        if processing_after.is_none() && savepoint_after.is_some() {
            let now = job_pods(client, ns, "clicks").await?;
            let new_ready = now
                .iter()
                .filter(|p| !old_pods.contains(&p.uid().unwrap_or_default()) && pod_ready(p))
                .count();
            if new_ready >= pods && now.len() == new_ready {
                processing_after = Some(t_apply.elapsed());
                say(t0, format!("{new_ready} new pods Ready"));
            }
        }
        if generation > gen1
            && ph == "Running"
            && field(&j, &["status", "observedGeneration"]).as_i64() == Some(generation)
            && field(&j, &["status", "lastStableGeneration"]).as_i64() == Some(generation)
            && savepoint_after.is_some()
        {
            let running_after = t_apply.elapsed();
            return Ok(Rollout {
                generation,
                savepoint: sp.as_str().unwrap_or_default().to_owned(),
                phases,
                savepoint_after: savepoint_after.unwrap_or(running_after),
                processing_after: processing_after.unwrap_or(running_after),
                running_after,
                applied_ms,
            });
        }
        ensure!(
            !matches!(ph.as_str(), "Failed" | "RollingBack"),
            "upgrade went {ph}: {}",
            field(&j, &["status"])
        );
        ensure!(
            Instant::now() < deadline,
            "upgrade not done in {timeout:?}: {}",
            field(&j, &["status"])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `scenario` in a namespace of its own: deleted on success (its pods
/// waited for, so the next test has the node to itself), kept with its logs
/// collected on failure.
async fn in_namespace<F, Fut>(prefix: &str, scenario: F)
where
    F: FnOnce(Client, String, Instant) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let t0 = Instant::now();
    let client = client().await.expect("cluster");
    let ns = TestNamespace::create(&client, prefix).await.expect("namespace");
    let name = ns.name.clone();
    say(t0, format!("namespace {name}"));
    match scenario(client.clone(), name.clone(), t0).await {
        Ok(()) => {
            // The job first, while its topics still exist (its pods commit a
            // last checkpoint on SIGTERM), then the namespace. The pods are
            // what competes with the next test for the node; the rest of the
            // namespace goes in the background.
            if let Err(e) = kubectl(&["-n", &name, "delete", "streamjobs", "--all", "--wait=false"]) {
                eprintln!("deleting the StreamJobs of {name}: {e:#}");
            }
            say(
                t0,
                format!("passed; waiting (up to 120s) for the pods of namespace {name} to go"),
            );
            let api: Api<Pod> = Api::namespaced(client, &name);
            let deadline = Instant::now() + Duration::from_secs(120);
            while api
                .list(&ListParams::default())
                .await
                .map_or(true, |l| !l.items.is_empty())
            {
                if Instant::now() >= deadline {
                    eprintln!("pods of namespace {name} still there after 120s; going on");
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            ns.delete().await.expect("deleting the namespace");
            say(t0, "done");
        }
        Err(e) => {
            let dir = collect_logs(&name, OPERATOR_NS, OPERATOR_SELECTOR);
            panic!("namespace {name}: {e:#}\n(logs in {})", dir.display());
        }
    }
}

/// StreamTopics in, out, dead (Kafka names prefixed with the namespace).
async fn topics(client: &Client, ns: &str, partitions: i32) -> anyhow::Result<(String, String)> {
    for (name, parts) in [("in", partitions), ("out", partitions), ("dead", 1)] {
        apply_ok(client, ns, &stream_topic(name, &format!("{ns}-{name}"), parts)?).await?;
    }
    Ok((format!("{ns}-in"), format!("{ns}-out")))
}

/// Kills every pod in namespace `ns` matching label `selector` at once
/// (no grace period: a SIGKILL, as a node failure would).
fn force_kill(ns: &str, selector: &str) -> anyhow::Result<String> {
    kubectl(&[
        "-n",
        ns,
        "delete",
        "pod",
        "-l",
        selector,
        "--grace-period=0",
        "--force",
        "--wait=false",
    ])
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
    if !cluster_test(CLUSTER) {
        return;
    }
    in_namespace("e2e-job-deploy", |client, ns, t0| async move {
        let (input, sink) = topics(&client, &ns, 4).await?;
        let data = dataset(4, 0..1000, 12, true);
        let (expected, bad) = reference(&data);
        deploy(&client, &ns, &job("clicks", &[])?, 4, t0).await?;
        produce(&input, &data)?;
        let control = control_topic(&ns, "clicks");
        say(t0, format!("waiting (up to 180s) for {} windows", expected.len()));
        expect_exact(&sink, &control, &expected, None).await?;
        let dead = dump(&format!("{ns}-dead"))?;
        let marks = markers(&control)?;
        let dead_committed = dead
            .iter()
            .filter(|r| r.checkpoint.as_ref().is_some_and(|c| marks.contains_key(c)))
            .count();
        ensure!(
            dead_committed == bad,
            "dead letters: {dead_committed}, want {bad}"
        );
        say(
            t0,
            format!("deploy: {} windows exact, {} dead letters", expected.len(), bad),
        );
        Ok(())
    })
    .await;
}

/// A job with named steps before the key and result steps after the
/// window, on real pods and Apache Kafka, through a SIGKILL of every pod in
/// the middle of its input: the output equals an independent reference that
/// applies the same steps in plain Rust (odd amounts only, amounts tripled,
/// windows of 2 clicks or more), exactly once; malformed records are dead
/// letters, as without steps.
#[tokio::test]
async fn a_job_with_steps_is_exact_through_a_kill_of_its_pods() {
    if !cluster_test(CLUSTER) {
        return;
    }
    in_namespace("e2e-job-steps", |client, ns, t0| async move {
        let (input, sink) = topics(&client, &ns, 4).await?;
        let mut first = dataset(4, 0..600, 12, false);
        // A record each partition on which the first step fails (a string
        // amount has no `%`): a dead letter naming the step.
        first.extend((0..4).map(|p| Input {
            partition: p,
            value: json!({"user": "u1", "ts": 1_700_000_000_000i64, "amount": "seven"}).to_string(),
        }));
        let second = dataset(4, 600..1200, 12, true);
        // The steps, in plain Rust: keep odd amounts (and the flush
        // records), triple them; then only windows with 2 clicks or more.
        let stepped: Vec<Input> = first
            .iter()
            .chain(&second)
            .map(|r| match serde_json::from_str::<Value>(&r.value) {
                Err(_) => r.clone(),
                Ok(v) if v["user"] == "flush" => r.clone(),
                Ok(v) if v["amount"].is_string() => Input {
                    partition: r.partition,
                    value: String::new(),
                },
                Ok(v) if v["amount"].as_i64().unwrap_or_default() % 2 == 1 => Input {
                    partition: r.partition,
                    value: json!({"user": v["user"], "ts": v["ts"], "amount": v["amount"].as_i64().unwrap_or_default() * 3})
                        .to_string(),
                },
                Ok(_) => Input {
                    partition: r.partition,
                    value: String::new(),
                },
            })
            .filter(|r| !r.value.is_empty())
            .collect();
        let (mut expected, bad) = reference(&stepped);
        expected.retain(|_, (clicks, _)| *clicks >= 2);
        let job = job_with(
            "clicks",
            &[],
            json!({"pipeline": {
                "steps": [
                    {"name": "odd-amounts", "filter": "record.amount % 2 == 1 || record.user == 'flush'"},
                    {"name": "triple", "map": {"user": "record.user", "ts": "record.ts", "amount": "record.amount * 3"}},
                ],
                "keyBy": ["record.user"],
                "window": {"type": "tumbling", "size": "10s"},
                "aggregations": [
                    {"name": "clicks", "function": "count"},
                    {"name": "spent", "function": "sum", "field": "record.amount"},
                ],
                "resultSteps": [
                    {"name": "busy", "filter": "record.clicks >= 2"},
                    {"name": "shape", "map": {"key": "record.key", "windowStart": "record.windowStart",
                                              "clicks": "record.clicks", "spent": "record.spent",
                                              "big": "record.spent > 3000"}},
                ],
            }}),
        )?;
        deploy(&client, &ns, &job, 4, t0).await?;
        produce(&input, &first)?;
        let control = control_topic(&ns, "clicks");
        wait_first_results(&sink, &control).await?;
        force_kill(&ns, "streamops.io/job=clicks")?;
        say(t0, "killed every pod of the job mid-input; producing the second half");
        produce(&input, &second)?;
        expect_exact(&sink, &control, &expected, None).await?;
        let marks = markers(&control)?;
        let shaped = dump(&sink)?
            .iter()
            .filter(|r| r.checkpoint.as_ref().is_some_and(|c| marks.contains_key(c)))
            .filter_map(|r| serde_json::from_str::<Value>(&r.value).ok())
            .all(|v| v["big"].is_boolean() && v.get("windowEnd").is_none());
        ensure!(shaped, "a committed result not reshaped by the result steps");
        let dead: Vec<Record> = dump(&format!("{ns}-dead"))?
            .into_iter()
            .filter(|r| r.checkpoint.as_ref().is_some_and(|c| marks.contains_key(c)))
            .collect();
        let by_step = dead
            .iter()
            .filter(|r| {
                r.headers["streamops-step"] == "odd-amounts"
                    && r.headers["streamops-expression"] == "record.amount % 2 == 1 || record.user == 'flush'"
                    && r.headers["streamops-error-kind"] == "expression_error"
            })
            .count();
        ensure!(
            dead.len() == bad + 4 && by_step == 4,
            "dead letters: {} ({by_step} naming the step), want {} ({bad} malformed + 4 the step failed on)",
            dead.len(),
            bad + 4
        );
        say(
            t0,
            format!(
                "steps: {} windows exact across a kill of every pod, {bad} malformed and {by_step} step failures dead-lettered",
                expected.len()
            ),
        );
        Ok(())
    })
    .await;
}

/// A stateless (ETL) job, no key, window or aggregations, keeps its promise
/// through a kill of every pod mid-input: every order the steps keep is in
/// the sink exactly once, as the map made it, keyed by `sink.key` (each
/// customer in one partition), and through a rescale from 2 to 4 pods
/// after it; malformed records and records a step fails on are dead
/// letters; and nothing but control records goes through the repartition
/// topic.
#[tokio::test]
async fn a_stateless_job_is_exact_through_a_kill_of_its_pods() {
    if !cluster_test(CLUSTER) {
        return;
    }
    in_namespace("e2e-job-stateless", |client, ns, t0| async move {
        let (input, sink) = topics(&client, &ns, 4).await?;
        apply_ok(&client, &ns, &stream_topic("big", &format!("{ns}-big"), 2)?).await?;
        // Orders with an id unique over the input; every 97th malformed,
        // every 89th with a string amount (the first step fails on it).
        let orders = |range: std::ops::Range<usize>| -> Vec<Input> {
            let mut out = Vec::new();
            for p in 0..4 {
                for i in range.clone() {
                    let value = if i % 97 == 50 {
                        format!("not json {p}/{i}")
                    } else if i % 89 == 7 {
                        json!({"id": format!("{p}-{i}"), "customer": "c1", "amount": "lots"}).to_string()
                    } else {
                        json!({"id": format!("{p}-{i}"), "customer": format!("c{}", (i * 7 + p) % 23),
                               "amount": (i * 13 + p * 5) % 500})
                        .to_string()
                    };
                    out.push(Input { partition: p as i32, value });
                }
            }
            out
        };
        let (first, second, third) = (orders(0..800), orders(800..1600), orders(1600..2000));
        // The steps in plain Rust: amounts of 480 or more routed to `big`
        // as they came; of the rest, keep amounts not divisible by 3; id,
        // customer upper-cased, amount doubled.
        let mut expected: BTreeMap<String, Value> = BTreeMap::new();
        let mut expected_big: BTreeMap<String, String> = BTreeMap::new();
        let (mut malformed, mut failing) = (0, 0);
        for r in first.iter().chain(&second).chain(&third) {
            match serde_json::from_str::<Value>(&r.value) {
                Err(_) => malformed += 1,
                Ok(v) if v["amount"].is_string() => failing += 1,
                Ok(v) if v["amount"].as_i64().unwrap_or_default() >= 480 => {
                    expected_big.insert(v["id"].as_str().unwrap_or_default().to_owned(), r.value.clone());
                }
                Ok(v) if v["amount"].as_i64().unwrap_or_default() % 3 != 0 => {
                    let customer = v["customer"].as_str().unwrap_or_default().to_uppercase();
                    let id = v["id"].as_str().unwrap_or_default().to_owned();
                    expected.insert(
                        id.clone(),
                        json!({"id": id, "customer": customer, "amount": v["amount"].as_i64().unwrap_or_default() * 2}),
                    );
                }
                Ok(_) => {}
            }
        }
        let etl = |parallelism: i64| {
            job_with(
                "clicks",
                &[],
                json!({
                    "source": {"topics": ["in"]},
                    "pipeline": {"steps": [
                        {"name": "aside", "route": [{"when": "record.amount >= 480", "to": "big"}]},
                        {"name": "not-thirds", "filter": "record.amount % 3 != 0"},
                        {"name": "shape", "map": {"id": "record.id", "customer": "record.customer.upperAscii()",
                                                  "amount": "record.amount * 2"}},
                    ]},
                    "sink": {"topic": "out", "key": "record.customer"},
                    "parallelism": parallelism,
                }),
            )
        };
        let (api, j) = deploy(&client, &ns, &etl(2)?, 2, t0).await?;
        produce(&input, &first)?;
        let control = control_topic(&ns, "clicks");
        // Committed sink records: id -> (key, partition, value), and every
        // fault.
        type ById = BTreeMap<String, Vec<(Option<String>, i64, Value)>>;
        let committed = |marks: &BTreeMap<String, Marker>| -> anyhow::Result<(ById, usize)> {
            let mut by_id = ById::new();
            let mut untagged = 0;
            for r in dump(&sink)? {
                if !r.checkpoint.as_ref().is_some_and(|c| marks.contains_key(c)) {
                    untagged += 1;
                    continue;
                }
                let v: Value = serde_json::from_str(&r.value).context("a sink record that is not JSON")?;
                let id = v["id"].as_str().unwrap_or_default().to_owned();
                by_id.entry(id).or_default().push((r.key.clone(), r.partition, v));
            }
            Ok((by_id, untagged))
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while committed(&markers(&control)?)?.0.is_empty() {
            ensure!(Instant::now() < deadline, "no committed output in 120s");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        force_kill(&ns, "streamops.io/job=clicks")?;
        say(t0, "killed every pod of the stateless job mid-input; producing the second half");
        produce(&input, &second)?;
        // A rescale to 4 pods while the second half is read: its drained
        // savepoint's barriers are the only records of the repartition
        // topic.
        upgrade(&client, &ns, &api, &etl(4)?, &j, 4, Duration::from_secs(240), t0, |_| Ok(())).await?;
        ensure!(
            job_pods(&client, &ns, "clicks").await?.len() == 4,
            "not 4 pods after the rescale"
        );
        produce(&input, &third)?;
        let deadline = Instant::now() + Duration::from_secs(180);
        let (by_id, untagged) = loop {
            let (by_id, untagged) = committed(&markers(&control)?)?;
            if by_id.len() >= expected.len() || Instant::now() >= deadline {
                break (by_id, untagged);
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        };
        let mut faults = Vec::new();
        let mut partition_of: BTreeMap<String, i64> = BTreeMap::new();
        for (id, want) in &expected {
            match by_id.get(id).map(Vec::as_slice) {
                None => faults.push(format!("missing {id}")),
                Some([(key, partition, got)]) => {
                    if got != want {
                        faults.push(format!("{id}: want {want}, got {got}"));
                    }
                    if key.as_deref() != want["customer"].as_str() {
                        faults.push(format!("{id}: key {key:?}, want the customer"));
                    }
                    let first = partition_of.entry(want["customer"].to_string()).or_insert(*partition);
                    if first != partition {
                        faults.push(format!("{id}: customer {} in partitions {first} and {partition}", want["customer"]));
                    }
                }
                Some(got) => faults.push(format!("{id}: {} copies", got.len())),
            }
        }
        faults.extend(by_id.keys().filter(|id| !expected.contains_key(*id)).map(|id| format!("unexpected {id}")));
        ensure!(
            faults.is_empty() && untagged == 0,
            "{} faults ({untagged} records outside committed checkpoints), first: {:?}",
            faults.len(),
            &faults[..faults.len().min(10)]
        );
        let marks = markers(&control)?;
        let dead: Vec<Record> = dump(&format!("{ns}-dead"))?
            .into_iter()
            .filter(|r| r.checkpoint.as_ref().is_some_and(|c| marks.contains_key(c)))
            .collect();
        let by_step = dead.iter().filter(|r| r.headers["streamops-step"] == "aside").count();
        // The routed records: each once, as they came.
        let mut big: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in dump(&format!("{ns}-big"))? {
            if r.checkpoint.as_ref().is_some_and(|c| marks.contains_key(c)) {
                let v: Value = serde_json::from_str(&r.value).context("a routed record that is not JSON")?;
                big.entry(v["id"].as_str().unwrap_or_default().to_owned()).or_default().push(r.value);
            } else {
                bail!("a routed record outside committed checkpoints");
            }
        }
        let big_faults: Vec<String> = expected_big
            .iter()
            .filter(|(id, want)| big.get(*id).map(Vec::as_slice) != Some(std::slice::from_ref(*want)))
            .map(|(id, _)| format!("{id}: {:?}", big.get(id)))
            .chain(big.keys().filter(|id| !expected_big.contains_key(*id)).map(|id| format!("unexpected {id}")))
            .collect();
        ensure!(
            big_faults.is_empty(),
            "{} routed faults, first: {:?}",
            big_faults.len(),
            &big_faults[..big_faults.len().min(10)]
        );
        ensure!(
            dead.len() == malformed + failing && by_step == failing,
            "dead letters: {} ({by_step} naming the step), want {} ({malformed} malformed + {failing} the step failed on)",
            dead.len(),
            malformed + failing
        );
        let repartition = format!("streamops.{ns}.clicks.repartition");
        let data = dump(&repartition)?
            .iter()
            .filter(|r| r.key.as_deref() != Some("watermark"))
            .count();
        ensure!(data == 0, "{data} data records in {repartition}: a stateless job repartitions nothing");
        say(
            t0,
            format!(
                "stateless: {} orders exactly once across a kill of every pod and a rescale 2 -> 4, keyed by \
                 customer, {} routed to big exactly once; {malformed} malformed and {failing} step failures \
                 dead-lettered; no record through the repartition topic",
                expected.len(),
                expected_big.len()
            ),
        );
        Ok(())
    })
    .await;
}

/// What one of `examples/` gives on Kafka.
struct ExampleRun {
    /// Committed records of the sink.
    sink: Vec<Record>,
    /// Committed records of each other output topic, by StreamTopic name.
    others: BTreeMap<String, Vec<Record>>,
}

/// Runs example `file`'s job `job` as users deploy it (its StreamTopics
/// renamed for namespace `ns`) on its test input (`examples/tests/<input>`)
/// through Kafka, with a kill of every pod of the job half-way: the first
/// half of the input is produced, the job commits output for it (the sink
/// or the dead-letter topic), every pod is killed, the second half and
/// `flush` (one record per partition) follow. Returns what was committed
/// once the sink holds as many records as `examples/tests/<expected>` and
/// `others` their counts (read again after two checkpoint intervals, so a
/// late duplicate would show), and checks the sink equals the expected
/// file as a multiset.
#[allow(clippy::too_many_arguments)]
async fn example_on_kafka(
    client: &Client,
    ns: &str,
    t0: Instant,
    (file, job): (&str, &str),
    (source, sink): (&str, &str),
    (input, expected): (&str, &str),
    others: &[(&str, usize)],
    flush: Option<Value>,
) -> anyhow::Result<ExampleRun> {
    let kafka = |name: &str| format!("{ns}-{name}");
    for mut o in load_manifests(&repo_root().join("examples").join(file))? {
        if o.types.as_ref().is_some_and(|t| t.kind == "StreamTopic") {
            let name = o.metadata.name.clone().context("a StreamTopic without a name")?;
            o.data["spec"]["topicName"] = json!(kafka(&name));
            o.data["spec"]["deletionPolicy"] = json!("Delete");
        }
        apply_ok(client, ns, &o).await?;
    }
    let api = job_api(client, ns).await?;
    wait_running(&api, job, Duration::from_secs(180)).await?;
    let lines: Vec<Input> = std::fs::read_to_string(repo_root().join("examples/tests").join(input))?
        .lines()
        .enumerate()
        .map(|(i, l)| Input {
            partition: (i % 2) as i32,
            value: l.to_owned(),
        })
        .collect();
    let expected: Vec<Value> = std::fs::read_to_string(repo_root().join("examples/tests").join(expected))?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let control = control_topic(ns, job);
    let committed = |topic: &str| -> anyhow::Result<Vec<Record>> {
        let marks = markers(&control)?;
        Ok(dump(&kafka(topic))?
            .into_iter()
            .filter(|r| r.checkpoint.as_ref().is_some_and(|c| marks.contains_key(c)))
            .collect())
    };
    let (first, second) = lines.split_at(lines.len() / 2);
    say(
        t0,
        format!(
            "{job} Running; producing the first {} records of {input}",
            first.len()
        ),
    );
    produce(&kafka(source), first)?;
    let dead = others.first().map_or(sink, |o| o.0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed(sink)?.is_empty() && committed(dead)?.is_empty() {
        ensure!(Instant::now() < deadline, "{job}: nothing committed in 120s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    force_kill(ns, &format!("streamops.io/job={job}"))?;
    say(
        t0,
        format!("killed every pod of {job} with output committed; producing the rest"),
    );
    let mut rest = second.to_vec();
    if let Some(f) = flush {
        rest.extend((0..2).map(|p| Input {
            partition: p,
            value: f.to_string(),
        }));
    }
    produce(&kafka(source), &rest)?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = committed(sink)?.len() >= expected.len()
            && others
                .iter()
                .all(|(t, n)| committed(t).is_ok_and(|r| r.len() >= *n));
        if done {
            break;
        }
        ensure!(Instant::now() < deadline, "{job}: outputs incomplete after 180s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let interval = Duration::from_secs(2 * 5);
    tokio::time::sleep(interval).await;
    let run = ExampleRun {
        sink: committed(sink)?,
        others: others
            .iter()
            .map(|(t, _)| Ok(((*t).to_owned(), committed(t)?)))
            .collect::<anyhow::Result<_>>()?,
    };
    let canonical = |v: &Value| v.to_string();
    let mut got: Vec<Value> = run
        .sink
        .iter()
        .map(|r| serde_json::from_str(&r.value))
        .collect::<Result<_, _>>()?;
    let mut want = expected;
    got.sort_by_key(canonical);
    want.sort_by_key(canonical);
    ensure!(
        got == want,
        "{sink} holds {got:?}, the test file expects {want:?}"
    );
    for (t, n) in others {
        ensure!(
            run.others[*t].len() == *n,
            "{t} holds {} records, want {n}",
            run.others[*t].len()
        );
    }
    Ok(run)
}

/// The clean-and-route example (`examples/clean-orders.yaml`) on Kafka
/// with its test input and a kill of every pod half-way: the sink holds
/// exactly what `streamops-runtime test` expects, once each and keyed by
/// customer; the review topic the one order the route sends there; the
/// dead-letter topic the four records the test command lists.
#[tokio::test]
async fn the_clean_orders_example_gives_on_kafka_what_its_test_file_expects() {
    if !cluster_test(CLUSTER) {
        return;
    }
    in_namespace("e2e-example-orders", |client, ns, t0| async move {
        let run = example_on_kafka(
            &client,
            &ns,
            t0,
            ("clean-orders.yaml", "clean-orders"),
            ("orders", "orders-clean"),
            ("clean-orders.input.jsonl", "clean-orders.expected.jsonl"),
            &[("orders-dead-letter", 4), ("orders-review", 1)],
            None,
        )
        .await?;
        ensure!(
            run.sink.iter().all(|r| serde_json::from_str::<Value>(&r.value)
                .ok()
                .and_then(|v| v["customer"].as_str().map(str::to_owned))
                == r.key),
            "orders-clean not keyed by customer: {:?}",
            run.sink.iter().map(|r| &r.key).collect::<Vec<_>>()
        );
        let routed: Vec<Value> = run.others["orders-review"]
            .iter()
            .map(|r| serde_json::from_str(&r.value))
            .collect::<Result<_, _>>()?;
        ensure!(routed[0]["id"] == "o-11" && routed[0]["cents"] == 12000, "orders-review holds {routed:?}");
        let steps: BTreeSet<String> = run.others["orders-dead-letter"]
            .iter()
            .filter_map(|r| r.headers["streamops-step"].as_str().map(str::to_owned))
            .collect();
        ensure!(
            steps == BTreeSet::from(["complete".to_owned(), "normalise".to_owned()]),
            "dead letters naming steps {steps:?}"
        );
        say(
            t0,
            "clean-orders on Kafka through a kill: 3 cleaned orders as the test file expects, 1 routed to review, \
             4 dead letters",
        );
        Ok(())
    })
    .await;
}

/// The failed-login alert example (`examples/failed-logins.yaml`: steps,
/// a window, result steps as HAVING) on Kafka with its test input and a
/// kill of every pod half-way: the alerts topic holds exactly the three
/// alerts `streamops-runtime test` expects. A record per partition an hour
/// later closes every window, as the end of the file does for the test
/// command (its own window has too few failures to alert).
#[tokio::test]
async fn the_failed_logins_example_gives_on_kafka_what_its_test_file_expects() {
    if !cluster_test(CLUSTER) {
        return;
    }
    in_namespace("e2e-example-logins", |client, ns, t0| async move {
        example_on_kafka(
            &client,
            &ns,
            t0,
            ("failed-logins.yaml", "failed-logins"),
            ("logins", "login-alerts"),
            ("failed-logins.input.jsonl", "failed-logins.expected.jsonl"),
            &[("logins-dead-letter", 2)],
            Some(json!({"user": "zz-flush", "outcome": "failure", "ip": "0.0.0.0", "at": "2026-01-01T01:00:00Z"})),
        )
        .await?;
        say(t0, "failed-logins on Kafka through a kill: the 3 alerts the test file expects, 2 dead letters");
        Ok(())
    })
    .await;
}

/// The short form stays valid and upgrades to the step form with its
/// state: a job deployed with `pipeline.filter` gets the same filter as a
/// named step plus a map, through a savepoint, with half the input before
/// and half after; the output is exact (windows open across the upgrade
/// keep their partial counts), and while the rollout runs
/// `status.plannedChange` says what it is.
#[tokio::test]
async fn a_short_form_job_upgrades_to_steps_with_its_state() {
    if !cluster_test(CLUSTER) {
        return;
    }
    in_namespace("e2e-job-step-upgrade", |client, ns, t0| async move {
        let (input, sink) = topics(&client, &ns, 4).await?;
        let first = dataset(4, 0..600, 12, false);
        let second = dataset(4, 600..1200, 12, true);
        let all: Vec<Input> = first.iter().chain(&second).cloned().collect();
        let (expected, _) = reference(&all);
        let pipeline = |form: Value| {
            let mut p = json!({
                "keyBy": ["record.user"],
                "window": {"type": "tumbling", "size": "10s"},
                "aggregations": [
                    {"name": "clicks", "function": "count"},
                    {"name": "spent", "function": "sum", "field": "record.amount"},
                ],
            });
            for (k, v) in form.as_object().into_iter().flatten() {
                p[k] = v.clone();
            }
            json!({"pipeline": p})
        };
        let short = job_with("clicks", &[], pipeline(json!({"filter": "record.amount >= 0"})))?;
        let (api, _) = deploy(&client, &ns, &short, 4, t0).await?;
        produce(&input, &first)?;
        let control = control_topic(&ns, "clicks");
        wait_first_results(&sink, &control).await?;
        let before = api.get("clicks").await?;
        let stepped = job_with(
            "clicks",
            &[],
            pipeline(json!({"steps": [
                {"name": "non-negative", "filter": "record.amount >= 0"},
                {"name": "shape", "map": {"user": "record.user", "ts": "record.ts", "amount": "record.amount"}},
            ]})),
        )?;
        // What the operator publishes while the change rolls out.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None::<Value>));
        let watcher = {
            let (api, seen) = (api.clone(), seen.clone());
            tokio::spawn(async move {
                loop {
                    if let Ok(j) = api.get("clicks").await {
                        let planned = field(&j, &["status", "plannedChange"]).clone();
                        if planned.is_object()
                            && let Ok(mut s) = seen.lock()
                        {
                            s.get_or_insert(planned);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let r = upgrade(&client, &ns, &api, &stepped, &before, 4, Duration::from_secs(240), t0, |_| Ok(())).await;
        watcher.abort();
        let r = r?;
        let planned = seen
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .clone()
            .context("status.plannedChange never seen during the rollout")?;
        say(t0, format!("plannedChange: {planned}"));
        let reasons = planned["reasons"].to_string();
        ensure!(
            planned["kind"] == "Upgrade"
                && planned["stateCompatible"] == true
                && planned["savepoint"] == true
                && reasons.contains(r#"step \"non-negative\" added"#)
                && reasons.contains(r#"step \"shape\" added"#),
            "plannedChange {planned}"
        );
        let j = api.get("clicks").await?;
        ensure!(
            field(&j, &["status", "plannedChange"]).is_null(),
            "plannedChange stays once the generation runs"
        );
        produce(&input, &second)?;
        expect_exact(&sink, &control, &expected, None).await?;
        r.print_timing("short-form-to-steps", &control);
        say(
            t0,
            format!("short form -> steps: {} windows exact across the upgrade", expected.len()),
        );
        Ok(())
    })
    .await;
}

/// Upgrade: half the data in, a spec change (one more aggregation) while the
/// job runs, the other half in: savepoint, new pods restored from it, and the
/// committed output equals the reference: nothing lost, nothing twice.
/// Prints the upgrade's timing line.
#[tokio::test]
async fn upgrade_with_savepoint_loses_and_duplicates_nothing() {
    if !cluster_test(CLUSTER) {
        return;
    }
    in_namespace("e2e-job-upgrade", |client, ns, t0| async move {
        let (input, sink) = topics(&client, &ns, 2).await?;
        let first = dataset(2, 0..800, 8, false);
        let second = dataset(2, 800..1600, 8, true);
        let all: Vec<Input> = first.iter().chain(&second).cloned().collect();
        let (expected, _) = reference(&all);
        let (api, j) = deploy(&client, &ns, &job("clicks", &[])?, 2, t0).await?;
        produce(&input, &first)?;
        let control = control_topic(&ns, "clicks");
        wait_first_results(&sink, &control).await?;

        let changed = job("clicks", &[biggest()])?;
        let r = upgrade(&client, &ns, &api, &changed, &j, 2, Duration::from_secs(240), t0, |_| Ok(())).await?;
        ensure!(
            r.phases.iter().any(|p| p == "Savepointing"),
            "no Savepointing phase seen: {:?}",
            r.phases
        );

        produce(&input, &second)?;
        let v = expect_exact(&sink, &control, &expected, Some("biggest")).await?;
        ensure!(
            v.with_field > 0,
            "no committed result carries the new aggregation"
        );
        r.print_timing("upgrade", &control);
        say(
            t0,
            format!(
                "upgrade: {} windows exact across the upgrade from savepoint {} ({} from the new version with \
                 'biggest')",
                expected.len(),
                r.savepoint,
                v.with_field
            ),
        );
        Ok(())
    })
    .await;
}

/// Rollback: a new version that commits and then crash-loops (the runtime's
/// test crash point `after-commit` fires after every first commit, so each
/// start commits one checkpoint and dies) is not healthy within its health
/// timeout: the operator rolls back to the last stable spec (phase
/// RollingBack, a RollingBack event, then RolledBack), restoring the new
/// version's last committed checkpoint, and the output over all three
/// stretches (old version, crash-looping new version, old version again) is
/// exact.
#[tokio::test]
async fn crash_looping_version_is_rolled_back_with_exact_output() {
    if !cluster_test(CLUSTER) {
        return;
    }
    in_namespace("e2e-job-rollback", |client, ns, t0| async move {
        let (input, sink) = topics(&client, &ns, 2).await?;
        let first = dataset(2, 0..700, 8, false);
        let second = dataset(2, 700..1200, 8, false);
        let third = dataset(2, 1200..1800, 8, true);
        let all: Vec<Input> = first.iter().chain(&second).chain(&third).cloned().collect();
        let (expected, _) = reference(&all);
        let (api, j) = deploy(&client, &ns, &job("clicks", &[])?, 2, t0).await?;
        let gen1 = j.metadata.generation.unwrap_or_default();
        produce(&input, &first)?;
        let control = control_topic(&ns, "clicks");
        wait_first_results(&sink, &control).await?;

        let bad = job_with(
            "clicks",
            &[biggest()],
            json!({
                "upgrade": {"healthTimeout": "30s"},
                // The crash point SIGKILLs its own process, which the kernel
                // ignores for a PID namespace's init: with the namespace
                // shared, the pause container is init and the runtime dies.
                "podTemplate": {"spec": {"shareProcessNamespace": true, "containers": [{
                    "name": "runtime",
                    "env": [{"name": "STREAMOPS_TEST_CRASH_POINTS", "value": "after-commit:1"}]
                }]}}
            }),
        )?;
        let t_apply = Instant::now();
        apply_ok(&client, &ns, &bad).await?;
        say(
            t0,
            "applied a version that crash-loops after each first commit (health timeout 30s); waiting (up to \
             300s) for the rollback",
        );
        let mut phases: Vec<String> = Vec::new();
        let mut narrator = Narrator::default();
        let mut produced_second = false;
        let deadline = t_apply + Duration::from_secs(300);
        let (gen2, status) = loop {
            let j = api.get("clicks").await?;
            let generation = j.metadata.generation.unwrap_or_default();
            let ph = phase(&j);
            if phases.last() != Some(&ph) {
                say(t0, format!("phase {ph}"));
                phases.push(ph.clone());
            }
            narrator.tell(t0, &j);
            // Input for the new version once its pods are on their way.
            if !produced_second && ph == "Upgrading" {
                produce(&input, &second)?;
                produced_second = true;
                say(t0, "produced the second stretch for the new version");
            }
            if phases.iter().any(|p| p == "RollingBack")
                && ph == "Running"
                && field(&j, &["status", "upgrade"]).is_null()
                && field(&j, &["status", "observedGeneration"]).as_i64() == Some(generation)
            {
                break (generation, field(&j, &["status"]).clone());
            }
            ensure!(
                ph != "Failed",
                "went Failed instead of rolling back: {}",
                field(&j, &["status"])
            );
            ensure!(
                Instant::now() < deadline,
                "no rollback in 300s: {}",
                field(&j, &["status"])
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        say(
            t0,
            format!(
                "rolled back {:.1}s after the apply",
                t_apply.elapsed().as_secs_f64()
            ),
        );
        ensure!(gen2 > gen1, "generation {gen2}");
        ensure!(
            status["lastStableGeneration"].as_i64() == Some(gen1),
            "the last stable generation is not {gen1}: {status}"
        );
        ensure!(
            status["failedGeneration"].as_i64() == Some(gen2),
            "generation {gen2} not recorded as failed: {status}"
        );
        for want in ["RollingBack", "RolledBack"] {
            wait_event(&client, &ns, "clicks", want).await?;
        }
        // The old version runs again: no crash point in its pods.
        let sts = kubectl(&["-n", &ns, "get", "statefulset", "clicks", "-o", "json"])?;
        ensure!(
            !sts.contains("STREAMOPS_TEST_CRASH_POINTS"),
            "the rolled-back StatefulSet still has the crash-looping version's pod template"
        );

        produce(&input, &third)?;
        expect_exact(&sink, &control, &expected, None).await?;
        let marks = markers(&control)?;
        let bad_commits = checkpoints_of(&marks, gen2).len();
        ensure!(
            bad_commits > 0,
            "the crash-looping version never committed: the scenario did not happen"
        );
        say(
            t0,
            format!(
                "rollback: {} windows exact; the crash-looping generation {gen2} committed {bad_commits} \
                 checkpoints before generation {gen1} took over again; phases {}",
                expected.len(),
                phases.join(">")
            ),
        );
        Ok(())
    })
    .await;
}

/// A source StreamTopic grows 4 -> 6 -> 12 partitions under a running job
/// capped at 6 pods: each time the operator stops it with a drained
/// savepoint (every pod's stage 1 stops, every keyed partition applies
/// every upstream's barrier), restores at the new count with the keyed
/// state re-sharded by key group, and the pods follow the count up to the
/// cap (4, 6, then 6 pods for 12 partitions). Windows are open across both
/// changes (each partition's event time runs on), the new partitions carry
/// records written after the growth, and the output must be exact. (A
/// SIGKILL in the middle of a re-sharding restore is in the runtime's
/// Apache Kafka test, `grown_source_partitions_reshard_state_exactly_once`.)
#[tokio::test]
async fn a_grown_source_topic_moves_the_state_to_the_new_partitions() {
    if !cluster_test(CLUSTER) {
        return;
    }
    in_namespace("e2e-job-grown", |client, ns, t0| async move {
        let (input, sink) = topics(&client, &ns, 4).await?;
        let phases_data = [
            dataset(4, 0..300, 16, false),
            dataset(6, 300..600, 16, false),
            dataset(12, 600..900, 16, true),
        ];
        let all: Vec<Input> = phases_data.iter().flatten().cloned().collect();
        let (expected, _) = reference(&all);
        let capped = job_with("clicks", &[], json!({"parallelism": 6}))?;
        let (api, _) = deploy(&client, &ns, &capped, 4, t0).await?;
        produce(&input, &phases_data[0])?;
        let control = control_topic(&ns, "clicks");
        wait_first_results(&sink, &control).await?;
        for (to, pods, data) in [(6, 6, &phases_data[1]), (12, 6, &phases_data[2])] {
            say(t0, format!("growing the source topic to {to} partitions"));
            let grown = Instant::now();
            apply_ok(&client, &ns, &stream_topic("in", &input, to)?).await?;
            let phases = running_at(&api, to, Duration::from_secs(240)).await?;
            let running = job_pods(&client, &ns, "clicks").await?;
            ensure!(
                running.len() == pods && running.iter().all(pod_ready),
                "{} pods after growing to {to} partitions, {pods} expected",
                running.len()
            );
            say(
                t0,
                format!(
                    "running at {to} partitions on {pods} pods {:.1}s after the growth (phases {})",
                    grown.elapsed().as_secs_f64(),
                    phases.join(">")
                ),
            );
            produce(&input, data)?;
        }
        let reasons = event_reasons(&client, &ns, "clicks").await?;
        ensure!(
            reasons.iter().any(|r| r == "Rescaled")
                && !reasons.iter().any(|r| r == "SourcePartitionsChanged"),
            "events {reasons:?}"
        );
        expect_exact(&sink, &control, &expected, None).await?;
        say(
            t0,
            format!("grown 4 -> 6 -> 12; {} windows exact", expected.len()),
        );
        Ok(())
    })
    .await;
}

/// `n` records spread over `partitions`, 16 users, `ts` 0 (for
/// [`produce_paced`] to stamp).
fn clicks(partitions: i32, n: usize) -> Vec<Input> {
    (0..n)
        .map(|i| Input {
            partition: (i % partitions as usize) as i32,
            value: json!({"user": format!("u{}", (i * 7) % 16), "ts": 0, "amount": i % 1000}).to_string(),
        })
        .collect()
}

/// Prints `status.autoscaler` when it changed.
fn tell_autoscaler(t0: Instant, last: &mut Value, a: Value) {
    if a != *last {
        say(
            t0,
            format!(
                "autoscaler: {} {} {}",
                a["reason"], a["recommendedParallelism"], a["message"]
            ),
        );
        *last = a;
    }
}

/// Closes every window (a flush record on each of `partitions`), then
/// checks job `clicks`'s output exactly against a reference computed from
/// what the input topic holds, which must be the `produced` records sent
/// plus the flushes; returns (windows, records).
async fn exact_against_the_input(
    input: &str,
    sink: &str,
    ns: &str,
    partitions: i32,
    produced: usize,
) -> anyhow::Result<(usize, usize)> {
    let flush: Vec<Input> = (0..partitions)
        .map(|p| Input {
            partition: p,
            value: json!({"user": "flush", "ts": wall_ms() + 30_000, "amount": 0}).to_string(),
        })
        .collect();
    produce(input, &flush)?;
    let sent: Vec<Input> = dump(input)?
        .into_iter()
        .map(|r| Input {
            partition: 0,
            value: r.value,
        })
        .collect();
    // The reference is what the broker holds; it must be all that was sent.
    let produced = produced + flush.len();
    ensure!(
        sent.len() == produced,
        "the input topic holds {} records, {produced} were produced",
        sent.len()
    );
    let (expected, _) = reference(&sent);
    expect_exact(sink, &control_topic(ns, "clicks"), &expected, None).await?;
    Ok((expected.len(), sent.len()))
}

/// The autoscaler in `apply` mode under a 10x burst, on the real operator,
/// pods and broker. One pod (its CPU limited, so that 10x is more than it
/// reads) on 4 partitions reads a steady 200 records/s within target; then
/// 2,000 records/s for 100 s, event time stamped at the send. The operator
/// must see the lag grow past `targetLag` for the stabilisation window, decide
/// a scale-up, and take the job to more pods through a savepoint by itself
/// (no spec change); the output is exact. Prints `AUTOSCALER_TIMING` with
/// seconds from the start of the burst: `behind_s` (lag first above
/// target), `decision_s` (the recommendation changed), `running_s` (Running
/// on the new count).
#[tokio::test]
async fn a_burst_makes_the_autoscaler_add_pods_with_exact_output() {
    if !cluster_test(CLUSTER) {
        return;
    }
    const STEADY: u32 = 200;
    in_namespace("e2e-job-autoscale", |client, ns, t0| async move {
        let (input, sink) = topics(&client, &ns, 4).await?;
        let job = job_with(
            "clicks",
            &[],
            json!({
                "parallelism": 1,
                "resources": {"limits": {"cpu": "50m"}},
                "autoscaler": {"mode": "apply", "maxParallelism": 4, "targetLag": "5s",
                               "stabilizationWindow": "15s", "scaleDownDelay": "10m"}
            }),
        )?;
        let (api, _) = deploy(&client, &ns, &job, 1, t0).await?;
        let autoscaler = |j: &DynamicObject| field(j, &["status", "autoscaler"]).clone();
        produce_paced(&input, &clicks(4, 30 * STEADY as usize), STEADY)?;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let j = api.get("clicks").await?;
            let a = autoscaler(&j);
            // At the minimum when comfortably within target, else within it.
            if a["recommendedParallelism"] == 1
                && (a["reason"] == "AtMinimum" || a["reason"] == "WithinTarget")
            {
                say(t0, format!("steady: {}", a["message"]));
                break;
            }
            ensure!(Instant::now() < deadline, "steady input not within target: {a}");
            tokio::time::sleep(Duration::from_secs(2)).await;
        }

        say(t0, format!("burst: {} records/s for 100s", 10 * STEADY));
        let burst_ms = wall_ms();
        let burst = Instant::now();
        let producer = {
            let input = input.clone();
            std::thread::spawn(move || produce_paced(&input, &clicks(4, 1000 * STEADY as usize), 10 * STEADY))
        };
        let (mut behind_s, mut decision_s, mut running_s) = (None, None, None);
        let since_burst = |time: &Value| {
            time.as_str()
                .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                .map(|t| (t.as_millisecond() - burst_ms) as f64 / 1000.0)
        };
        let deadline = Instant::now() + Duration::from_secs(360);
        let mut last = Value::Null;
        while running_s.is_none() {
            let j = api.get("clicks").await?;
            let a = autoscaler(&j);
            if behind_s.is_none() && a["behindSince"].is_string() {
                behind_s = since_burst(&a["behindSince"]);
            }
            if decision_s.is_none() && a["recommendedParallelism"].as_i64().unwrap_or(1) > 1 {
                decision_s = since_burst(&a["lastDecisionTime"]);
                say(t0, format!("decision: {}", a["message"]));
            }
            if decision_s.is_some()
                && phase(&j) == "Running"
                && field(&j, &["status", "parallelism"]).as_i64().unwrap_or(1) > 1
            {
                running_s = Some(burst.elapsed().as_secs_f64());
            }
            tell_autoscaler(t0, &mut last, a);
            ensure!(
                Instant::now() < deadline,
                "no scale-up within 360s of the burst: {}",
                field(&j, &["status"])
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        producer
            .join()
            .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
        let j = api.get("clicks").await?;
        let pods = field(&j, &["status", "parallelism"]).as_i64().unwrap_or_default();
        println!(
            "AUTOSCALER_TIMING behind_s={:.1} decision_s={:.1} running_s={:.1} pods={pods}",
            behind_s.unwrap_or(f64::NAN),
            decision_s.unwrap_or(f64::NAN),
            running_s.unwrap_or(f64::NAN)
        );
        ensure!(
            j.metadata.generation == Some(1),
            "the autoscaler must not edit the spec"
        );
        let reasons = event_reasons(&client, &ns, "clicks").await?;
        ensure!(
            reasons.iter().any(|r| r == "AutoscalerRecommendation")
                && reasons.iter().any(|r| r == "Rescaled"),
            "events {reasons:?}"
        );

        let (windows, records) =
            exact_against_the_input(&input, &sink, &ns, 4, (30 + 1000) * STEADY as usize).await?;
        say(
            t0,
            format!(
                "scaled 1 -> {pods} pods {:.0}s into the burst; {windows} windows of {records} records exact",
                running_s.unwrap_or_default(),
            ),
        );
        Ok(())
    })
    .await;
}

/// `growSourcePartitions` on the real operator, pods and broker: one pod
/// (limited to 20m CPU: at 50m one partition kept up with 3,000 records/s)
/// on a source topic of one partition, 3,000 records/s
/// for 60 s, event time stamped at the send. At the partition limit and
/// still behind, the operator must raise the StreamTopic's
/// `spec.partitions` 1 -> 2 (`maxParallelism: 2`), recording it in the
/// job's status, an annotation and Events on both objects; the topic grows
/// in Kafka, and the job re-shards onto 2 pods through one drained savepoint
/// without its spec being edited. The output is exact. Prints
/// `GROWTH_TIMING` with seconds from the start of the load: `asked_s` (the
/// growth recorded), `running_s` (Running on 2 partitions).
#[tokio::test]
async fn at_its_partition_limit_the_autoscaler_grows_the_source_topic() {
    if !cluster_test(CLUSTER) {
        return;
    }
    const RATE: u32 = 3_000;
    const SECONDS: usize = 60;
    in_namespace("e2e-job-grow", |client, ns, t0| async move {
        let (input, sink) = topics(&client, &ns, 1).await?;
        let job = job_with(
            "clicks",
            &[],
            json!({
                "parallelism": 1,
                "resources": {"limits": {"cpu": "20m"}},
                "autoscaler": {"mode": "apply", "maxParallelism": 2, "targetLag": "5s",
                               "stabilizationWindow": "15s", "scaleDownDelay": "10m",
                               "growSourcePartitions": true}
            }),
        )?;
        let (api, _) = deploy(&client, &ns, &job, 1, t0).await?;
        let start_ms = wall_ms();
        let start = Instant::now();
        say(
            t0,
            format!("load: {RATE} records/s for {SECONDS}s on 1 partition"),
        );
        let producer = {
            let input = input.clone();
            std::thread::spawn(move || produce_paced(&input, &clicks(1, SECONDS * RATE as usize), RATE))
        };
        let topics_api = api_for(&client, &stream_topic("in", &input, 1)?, &ns).await?;
        let (mut asked_s, mut running_s) = (None, None);
        let mut last = Value::Null;
        let deadline = Instant::now() + Duration::from_secs(300);
        while running_s.is_none() {
            let j = api.get("clicks").await?;
            let a = field(&j, &["status", "autoscaler"]).clone();
            if asked_s.is_none() && a["partitionGrowth"].is_object() {
                let growth = &a["partitionGrowth"];
                ensure!(
                    growth["topics"] == json!({"in": 2}) && growth["from"] == 1 && growth["to"] == 2,
                    "growth {growth}"
                );
                asked_s = growth["time"]
                    .as_str()
                    .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
                    .map(|t| (t.as_millisecond() - start_ms) as f64 / 1000.0);
            }
            if asked_s.is_some()
                && phase(&j) == "Running"
                && field(&j, &["status", "sourcePartitions"]) == 2
                && field(&j, &["status", "parallelism"]) == 2
            {
                running_s = Some(start.elapsed().as_secs_f64());
            }
            tell_autoscaler(t0, &mut last, a);
            ensure!(
                Instant::now() < deadline,
                "no growth and re-shard within 300s: {}",
                field(&j, &["status"])
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        producer
            .join()
            .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
        println!(
            "GROWTH_TIMING asked_s={:.1} running_s={:.1}",
            asked_s.unwrap_or(f64::NAN),
            running_s.unwrap_or(f64::NAN)
        );
        let j = api.get("clicks").await?;
        ensure!(
            j.metadata.generation == Some(1),
            "the job's spec must not be edited"
        );
        let topic = topics_api.get("in").await?;
        ensure!(
            field(&topic, &["spec", "partitions"]) == 2
                && topic
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("streamops.io/partitions-grown-by"))
                    == Some(&"StreamJob clicks".to_owned()),
            "the StreamTopic says {:?} / {:?}",
            field(&topic, &["spec"]),
            topic.metadata.annotations
        );
        let job_events = event_reasons(&client, &ns, "clicks").await?;
        let topic_events = event_reasons(&client, &ns, "in").await?;
        ensure!(
            job_events.iter().any(|r| r == "GrowingSourcePartitions")
                && topic_events.iter().any(|r| r == "PartitionsGrownByAutoscaler"),
            "events: job {job_events:?}, topic {topic_events:?}"
        );

        // Partition 0 holds the whole backlog, for one pod of 20m CPU.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let lag = field(&api.get("clicks").await?, &["status", "lag"]).as_i64();
            if lag == Some(0) {
                break;
            }
            ensure!(Instant::now() < deadline, "still {lag:?} records behind after 300s");
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        say(t0, "caught up");
        let (windows, records) = exact_against_the_input(&input, &sink, &ns, 2, SECONDS * RATE as usize).await?;
        say(
            t0,
            format!(
                "grew 1 -> 2 partitions and pods {:.0}s into the load; {windows} windows of {records} records exact",
                running_s.unwrap_or_default(),
            ),
        );
        Ok(())
    })
    .await;
}

/// A rescale the namespace's ResourceQuota cannot admit (4 -> 6 pods with
/// room for 5) is refused before anything stops: `Stalled`,
/// `QuotaExceeded`, naming the quota; the same pods keep running. Once the
/// quota has room, the growth goes ahead, state and all.
#[tokio::test]
async fn a_rescale_over_the_namespace_quota_is_refused_before_anything_stops() {
    if !cluster_test(CLUSTER) {
        return;
    }
    in_namespace("e2e-job-quota", |client, ns, t0| async move {
        let quota = |pods: i64| {
            obj(json!({
                "apiVersion": "v1", "kind": "ResourceQuota",
                "metadata": {"name": "team"},
                "spec": {"hard": {"pods": pods.to_string()}}
            }))
        };
        apply_ok(&client, &ns, &quota(5)?).await?;
        let (input, sink) = topics(&client, &ns, 4).await?;
        let first = dataset(4, 0..300, 16, false);
        let second = dataset(6, 300..600, 16, true);
        let all: Vec<Input> = first.iter().chain(&second).cloned().collect();
        let (expected, _) = reference(&all);
        let (api, _) = deploy(&client, &ns, &job("clicks", &[])?, 4, t0).await?;
        produce(&input, &first)?;
        let control = control_topic(&ns, "clicks");
        wait_first_results(&sink, &control).await?;
        let before = uids(&job_pods(&client, &ns, "clicks").await?);
        // The quota controller counts the 4 pods before the check can.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !kubectl(&[
            "-n",
            &ns,
            "get",
            "resourcequota",
            "team",
            "-o",
            "jsonpath={.status.used.pods}",
        ])?
        .contains('4')
        {
            ensure!(
                Instant::now() < deadline,
                "the quota never counted the job's 4 pods"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        say(
            t0,
            "growing the source topic 4 -> 6 partitions with room for 5 pods",
        );
        apply_ok(&client, &ns, &stream_topic("in", &input, 6)?).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let j = api.get("clicks").await?;
            let stalled = field(&j, &["status", "conditions"])
                .as_array()
                .and_then(|cs| {
                    cs.iter()
                        .find(|c| c["type"] == "Stalled" && c["status"] == "True")
                })
                .cloned();
            if let Some(c) = stalled {
                ensure!(
                    c["reason"] == "QuotaExceeded"
                        && c["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("ResourceQuota team has 1 pods left, 2 more needed")),
                    "Stalled for another reason: {c}"
                );
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "not Stalled 60s after the growth: {}",
                field(&j, &["status"])
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        let pods = job_pods(&client, &ns, "clicks").await?;
        ensure!(
            uids(&pods) == before && pods.iter().all(pod_ready),
            "the refusal restarted pods"
        );
        let reasons = event_reasons(&client, &ns, "clicks").await?;
        ensure!(
            !reasons.iter().any(|r| r == "Savepointing" || r == "Rescaling"),
            "the refusal stopped something: events {reasons:?}"
        );
        say(
            t0,
            "Stalled (QuotaExceeded), the same pods run; raising the quota to 6 pods",
        );
        apply_ok(&client, &ns, &quota(6)?).await?;
        running_at(&api, 6, Duration::from_secs(240)).await?;
        produce(&input, &second)?;
        expect_exact(&sink, &control, &expected, None).await?;
        say(
            t0,
            format!(
                "refused over quota, then grown 4 -> 6; {} windows exact",
                expected.len()
            ),
        );
        Ok(())
    })
    .await;
}

/// Rescale: 2 -> 4 pods via `spec.parallelism` on an 8-partition source:
/// savepoint, four new pods restored from it (each task's state moves with
/// its partition), exact output.
#[tokio::test]
async fn rescale_two_to_four_pods_with_exact_output() {
    if !cluster_test(CLUSTER) {
        return;
    }
    in_namespace("e2e-job-rescale", |client, ns, t0| async move {
        let (input, sink) = topics(&client, &ns, 8).await?;
        let first = dataset(8, 0..700, 16, false);
        let second = dataset(8, 700..1400, 16, true);
        let all: Vec<Input> = first.iter().chain(&second).cloned().collect();
        let (expected, _) = reference(&all);
        let two = job_with("clicks", &[], json!({"parallelism": 2}))?;
        let (api, j) = deploy(&client, &ns, &two, 2, t0).await?;
        ensure!(job_pods(&client, &ns, "clicks").await?.len() == 2, "not 2 pods");
        produce(&input, &first)?;
        let control = control_topic(&ns, "clicks");
        wait_first_results(&sink, &control).await?;

        let four = job_with("clicks", &[], json!({"parallelism": 4}))?;
        let r = upgrade(
            &client,
            &ns,
            &api,
            &four,
            &j,
            4,
            Duration::from_secs(240),
            t0,
            |_| Ok(()),
        )
        .await?;
        let j = api.get("clicks").await?;
        ensure!(
            field(&j, &["status", "parallelism"]) == 4,
            "status.parallelism after the rescale: {}",
            field(&j, &["status"])
        );
        let pods = job_pods(&client, &ns, "clicks").await?;
        ensure!(
            pods.len() == 4 && pods.iter().all(pod_ready),
            "{} pods after the rescale",
            pods.len()
        );
        wait_event(&client, &ns, "clicks", "Rescaled").await?;

        // The savepoint's duration and size are recorded; a rescale back
        // whose savepoint would outlast a 1 ms savepointTimeout is refused
        // before anything stops, and goes ahead with a sane timeout.
        let record = field(&j, &["status", "savepointHistory"])[0].clone();
        ensure!(
            record["durationMs"].as_i64().is_some_and(|d| d > 0)
                && record["stateBytes"].as_i64().is_some_and(|b| b > 0),
            "savepoint record {record}"
        );
        let before = uids(&pods);
        let hasty = job_with(
            "clicks",
            &[],
            json!({"parallelism": 2, "upgrade": {"savepointTimeout": "1ms"}}),
        )?;
        apply_ok(&client, &ns, &hasty).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let j = api.get("clicks").await?;
            let stalled = field(&j, &["status", "conditions"])
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Stalled" && c["status"] == "True")
                .cloned();
            if let Some(c) = stalled {
                ensure!(
                    c["reason"] == "SavepointTooSlow"
                        && c["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("savepointTimeout (1ms)")),
                    "stalled for another reason: {c}"
                );
                say(t0, format!("refused: {}", c["message"]));
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "no SavepointTooSlow within 60s: {}",
                field(&j, &["status"])
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let still = job_pods(&client, &ns, "clicks").await?;
        ensure!(
            uids(&still) == before,
            "the pods were touched by a refused rescale"
        );
        let j = api.get("clicks").await?;
        let calm = job_with(
            "clicks",
            &[],
            json!({"parallelism": 2, "upgrade": {"savepointTimeout": "2m"}}),
        )?;
        upgrade(
            &client,
            &ns,
            &api,
            &calm,
            &j,
            2,
            Duration::from_secs(240),
            t0,
            |_| Ok(()),
        )
        .await?;

        produce(&input, &second)?;
        expect_exact(&sink, &control, &expected, None).await?;
        r.print_timing("rescale", &control);
        say(
            t0,
            format!(
                "rescale: {} windows exact across 2 -> 4 -> 2 pods (savepoint {})",
                expected.len(),
                r.savepoint
            ),
        );
        Ok(())
    })
    .await;
}

/// The operator killed mid-upgrade: its pod is deleted with grace period 0
/// while the job is Savepointing (or, if that was missed, Upgrading); the
/// chart's Deployment starts a new one, which takes the leader lease once the
/// old one's expires and finishes the upgrade from status. Exact output.
#[tokio::test]
async fn operator_killed_mid_upgrade_completes_it() {
    if !cluster_test(CLUSTER) {
        return;
    }
    in_namespace("e2e-job-opkill", |client, ns, t0| async move {
        let (input, sink) = topics(&client, &ns, 2).await?;
        let first = dataset(2, 0..800, 8, false);
        let second = dataset(2, 800..1600, 8, true);
        let all: Vec<Input> = first.iter().chain(&second).cloned().collect();
        let (expected, _) = reference(&all);
        let (api, j) = deploy(&client, &ns, &job("clicks", &[])?, 2, t0).await?;
        produce(&input, &first)?;
        let control = control_topic(&ns, "clicks");
        wait_first_results(&sink, &control).await?;

        let operators = operator_pods(&client).await?;
        ensure!(operators.len() == 1, "want one operator pod: {operators:?}");
        let old_operator = operators[0].0.clone();
        let mut killed_in: Option<String> = None;
        let changed = job("clicks", &[biggest()])?;
        let r = upgrade(
            &client,
            &ns,
            &api,
            &changed,
            &j,
            2,
            Duration::from_secs(300),
            t0,
            |ph| {
                if killed_in.is_none() && matches!(ph, "Savepointing" | "Upgrading") {
                    force_kill(OPERATOR_NS, OPERATOR_SELECTOR)?;
                    say(
                        t0,
                        format!("deleted the operator pod (grace period 0) while {ph}"),
                    );
                    killed_in = Some(ph.to_owned());
                }
                Ok(())
            },
        )
        .await?;
        let killed_in =
            killed_in.context("the operator was never killed: no Savepointing or Upgrading seen")?;
        let operators = operator_pods(&client).await?;
        ensure!(
            operators.iter().all(|(uid, _)| *uid != old_operator),
            "the old operator pod is still there: {operators:?}"
        );

        produce(&input, &second)?;
        let v = expect_exact(&sink, &control, &expected, Some("biggest")).await?;
        ensure!(
            v.with_field > 0,
            "no committed result carries the new aggregation"
        );
        r.print_timing("operator-killed", &control);
        say(
            t0,
            format!(
                "operator killed while {killed_in}: the upgrade completed (phases {}), {} windows exact",
                r.phases.join(">"),
                expected.len()
            ),
        );
        // The next test needs a working operator.
        say(t0, "waiting (up to 120s) for the new operator pod to be Ready");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !operator_pods(&client).await?.iter().any(|(_, ready)| *ready) {
            ensure!(
                Instant::now() < deadline,
                "no Ready operator pod 120s after the upgrade"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(())
    })
    .await;
}

/// Where `file://` checkpoints land on the node (cluster.sh's
/// STREAMOPS_HOST_CHECKPOINT_DIR; these tests run on the node itself).
fn host_checkpoint_dir() -> std::path::PathBuf {
    std::env::var("STREAMOPS_HOST_CHECKPOINT_DIR")
        .unwrap_or_else(|_| "/var/lib/streamops/checkpoints".into())
        .into()
}

/// The `checkpoints/task-<t>` directories under a host directory.
fn task_dirs(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir.join("checkpoints"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with("task-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Isolation between jobs: the same job name in three namespaces on one
/// node. Each job's checkpoints must land in a host directory of its own
/// (`<host dir>/<namespace>/<job>`). Then, interleaved: the first job's pods
/// are killed, the second is upgraded (stop-with-savepoint, restore), and
/// the third's pods are killed while that upgrade runs. Every job must
/// restore its own state, none found deleted by another's retention: exact
/// output for all three.
#[tokio::test]
async fn jobs_on_one_node_keep_their_checkpoints_apart() {
    if !cluster_test(CLUSTER) {
        return;
    }
    in_namespace("e2e-job-isolation-a", |client, ns_a, t0| async move {
        let ns_b = TestNamespace::create(&client, "e2e-job-isolation-b").await?;
        let ns_c = TestNamespace::create(&client, "e2e-job-isolation-c").await?;
        let (ns_b_name, ns_c_name) = (ns_b.name.clone(), ns_c.name.clone());
        say(t0, format!("other namespaces {ns_b_name}, {ns_c_name}"));
        let result = async {
            let first = dataset(2, 0..600, 8, false);
            let second = dataset(2, 600..1200, 8, true);
            let all: Vec<Input> = first.iter().chain(&second).cloned().collect();
            let (expected, _) = reference(&all);
            let mut io = Vec::new();
            for ns in [&ns_a, &ns_b_name, &ns_c_name] {
                let (input, sink) = topics(&client, ns, 2).await?;
                let spec = json!({"checkpoint": {"interval": "1s"}});
                let (api, running) = deploy(&client, ns, &job_with("clicks", &[], spec)?, 2, t0).await?;
                produce(&input, &first)?;
                io.push((ns.clone(), input, sink, control_topic(ns, "clicks"), api, running));
            }
            for (_, _, sink, control, ..) in &io {
                wait_first_results(sink, control).await?;
            }
            // A few more checkpoints, so that every job's retention has run.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let host = host_checkpoint_dir();
            for (ns, ..) in &io {
                let dir = host.join(ns).join("clicks");
                let tasks = task_dirs(&dir);
                ensure!(
                    !tasks.is_empty(),
                    "no checkpoints of job {ns}/clicks under {}",
                    dir.display()
                );
                say(t0, format!("{ns}/clicks: {tasks:?} under {}", dir.display()));
            }
            ensure!(
                task_dirs(&host).is_empty(),
                "checkpoints directly under the shared host directory {}: {:?}",
                host.display(),
                task_dirs(&host)
            );
            let kill = |ns: &str| force_kill(ns, "streamops.io/job=clicks");
            // A's pods die at once; B is upgraded meanwhile, and C's pods
            // die while B's upgrade runs.
            kill(&ns_a)?;
            say(
                t0,
                format!("killed the pods of {ns_a}/clicks; upgrading {ns_b_name}/clicks"),
            );
            let (_, _, _, _, api_b, before_b) = &io[1];
            let changed = job_with("clicks", &[biggest()], json!({"checkpoint": {"interval": "1s"}}))?;
            let mut c_killed = false;
            let rollout = upgrade(
                &client,
                &ns_b_name,
                api_b,
                &changed,
                before_b,
                2,
                Duration::from_secs(240),
                t0,
                |phase| {
                    if !c_killed && phase != "Running" {
                        c_killed = true;
                        say(
                            t0,
                            format!("{ns_b_name}/clicks is {phase}: killing the pods of {ns_c_name}/clicks"),
                        );
                        kill(&ns_c_name)?;
                    }
                    Ok(())
                },
            )
            .await?;
            ensure!(c_killed, "the upgrade never left Running: {:?}", rollout.phases);
            say(
                t0,
                format!(
                    "{ns_b_name}/clicks upgraded to generation {} via {}",
                    rollout.generation, rollout.savepoint
                ),
            );
            for ns in [&ns_a, &ns_c_name] {
                let deadline = Instant::now() + Duration::from_secs(180);
                loop {
                    let pods = job_pods(&client, ns, "clicks").await?;
                    if pods.len() == 2 && pods.iter().all(pod_ready) {
                        break;
                    }
                    ensure!(
                        Instant::now() < deadline,
                        "{ns}/clicks pods not Ready again in 180s"
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            for (ns, input, sink, control, ..) in &io {
                produce(input, &second)?;
                expect_exact(sink, control, &expected, None).await?;
                say(t0, format!("{ns}/clicks: {} windows exact", expected.len()));
            }
            Ok(())
        }
        .await;
        for (name, ns) in [(&ns_b_name, ns_b), (&ns_c_name, ns_c)] {
            if let Err(e) = kubectl(&["-n", name, "delete", "streamjobs", "--all", "--wait=true"]) {
                eprintln!("deleting the StreamJobs of {name}: {e:#}");
            }
            if result.is_ok() {
                ns.delete().await?;
            } else {
                let dir = collect_logs(name, OPERATOR_NS, OPERATOR_SELECTOR);
                eprintln!("logs of {name} in {}", dir.display());
            }
        }
        result
    })
    .await;
}

// --- tenants with their own Kafka credentials ----------------------------------

/// What `cluster.sh broker up` wrote for the authenticated listeners: CA,
/// tenant users' passwords, certificates and keys, both bootstrap lists.
fn kafka_auth() -> anyhow::Result<std::path::PathBuf> {
    let dir: std::path::PathBuf = std::env::var("STREAMOPS_KAFKA_AUTH")
        .context(
            "STREAMOPS_KAFKA_AUTH is not set: this test needs the local broker's authenticated \
             listeners (e2e/cluster/cluster.sh broker up prints it; make test sets it)",
        )?
        .into();
    ensure!(dir.join("ca.crt").is_file(), "no ca.crt in {}", dir.display());
    Ok(dir)
}

fn read_auth(dir: &std::path::Path, file: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(dir.join(file)).with_context(|| format!("reading {file}"))?;
    Ok(text.trim().to_owned())
}

/// Runs `kafka_io.py` with `args` and returns its standard output.
fn kafka_io_run(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("python3")
        .arg(kafka_io())
        .args(args)
        .output()
        .context("running kafka_io.py")?;
    ensure!(
        out.status.success(),
        "kafka_io.py {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// How a tenant's clients authenticate: SCRAM-SHA-512 over TLS, or a TLS
/// client certificate.
#[derive(Clone, Copy, Debug)]
enum Login {
    Scram,
    Cert,
}

impl Login {
    fn via(self) -> &'static str {
        match self {
            Login::Scram => "scram",
            Login::Cert => "cert",
        }
    }

    fn bootstrap(self, auth: &std::path::Path) -> anyhow::Result<String> {
        read_auth(
            auth,
            match self {
                Login::Scram => "bootstrap-sasl-ssl",
                Login::Cert => "bootstrap-ssl",
            },
        )
    }

    /// The Secret `kafka` holding user's credentials, and the `spec.cluster`
    /// that points at it.
    fn secret_and_cluster(
        self,
        auth: &std::path::Path,
        user: &str,
    ) -> anyhow::Result<(DynamicObject, Value)> {
        let ca = read_auth(auth, "ca.crt")?;
        let key_ref = |key: &str| json!({"name": "kafka", "key": key});
        let (data, cluster) = match self {
            Login::Scram => (
                json!({"ca.crt": ca, "username": user, "password": read_auth(auth, &format!("{user}.password"))?}),
                json!({"tls": {"caSecretRef": key_ref("ca.crt")},
                       "sasl": {"mechanism": "SCRAM-SHA-512", "usernameSecretRef": key_ref("username"),
                                "passwordSecretRef": key_ref("password")}}),
            ),
            Login::Cert => (
                json!({"ca.crt": ca, "tls.crt": read_auth(auth, &format!("{user}.crt"))?,
                       "tls.key": read_auth(auth, &format!("{user}.key"))?}),
                json!({"tls": {"caSecretRef": key_ref("ca.crt"), "certSecretRef": key_ref("tls.crt"),
                               "keySecretRef": key_ref("tls.key")}}),
            ),
        };
        let mut cluster = cluster;
        cluster["bootstrapServers"] = json!(self.bootstrap(auth)?);
        let secret = obj(json!({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kafka"},
            "type": "Opaque", "stringData": data
        }))?;
        Ok((secret, cluster))
    }

    /// What `user` may do, as `kafka_io.py probe` reports it.
    fn probe(self, auth: &std::path::Path, user: &str, targets: &[(&str, &str)]) -> anyhow::Result<Value> {
        let bootstrap = self.bootstrap(auth)?;
        let auth = auth.display().to_string();
        let mut args = vec![
            "probe",
            "--bootstrap",
            &bootstrap,
            "--auth",
            &auth,
            "--user",
            user,
            "--via",
            self.via(),
        ];
        for (flag, value) in targets {
            args.extend([*flag, *value]);
        }
        Ok(serde_json::from_str(kafka_io_run(&args)?.trim())?)
    }
}

/// One namespace's own Kafka user: the prefixed ACLs of the README's
/// Tenancy section, its credentials in a Secret, StreamTopics `in`, `out`,
/// `dead` as `<ns>.in`, ... and the clicks job, all with `spec.cluster`
/// pointing at them.
async fn tenant(
    client: &Client,
    ns: &str,
    user: &str,
    login: Login,
    auth: &std::path::Path,
    t0: Instant,
) -> anyhow::Result<(Api<DynamicObject>, DynamicObject)> {
    let granted = kafka_io_run(&[
        "grant",
        "--bootstrap",
        &bootstrap()?,
        "--principal",
        &format!("User:{user}"),
        "--prefix",
        &format!("{ns}."),
        "--prefix",
        &format!("streamops.{ns}."),
    ])?;
    say(
        t0,
        format!("{ns}: {} ACLs for User:{user} ({login:?})", granted.trim()),
    );
    let (secret, cluster) = login.secret_and_cluster(auth, user)?;
    apply_ok(client, ns, &secret).await?;
    for (name, parts) in [("in", 2), ("out", 2), ("dead", 1)] {
        let mut t = stream_topic(name, &format!("{ns}.{name}"), parts)?;
        t.data["spec"]["cluster"] = cluster.clone();
        apply_ok(client, ns, &t).await?;
    }
    let spec = json!({"cluster": cluster, "checkpoint": {"interval": "1s"}});
    deploy(client, ns, &job_with("clicks", &[], spec)?, 2, t0).await
}

/// Kafka credentials per namespace, against Apache Kafka with SCRAM, TLS
/// client certificates and the StandardAuthorizer (no ACL: no access):
/// namespace A's StreamTopics and job reach Kafka as user tenant-a (SCRAM
/// over TLS, CA from the Secret), B's as tenant-b (client certificate), each
/// granted only the prefixed ACLs of its own namespace. Both produce exact
/// output; neither user can read or write the other's topics, commit to its
/// consumer group or initialise its transactional ids (which would fence
/// its producers); a StreamTopic of B naming A's topic is never Ready and
/// leaves it unchanged; and A's output is still exact after B's attempts.
#[tokio::test]
async fn tenants_reach_only_their_own_topics_and_ids_with_their_own_credentials() {
    if !cluster_test(&[
        "STREAMOPS_KUBECONFIG",
        "STREAMOPS_BOOTSTRAP",
        "STREAMOPS_KAFKA_AUTH",
    ]) {
        return;
    }
    in_namespace("e2e-job-tenant-a", |client, ns_a, t0| async move {
        let ns_b = TestNamespace::create(&client, "e2e-job-tenant-b").await?;
        let ns_b_name = ns_b.name.clone();
        say(t0, format!("other namespace {ns_b_name}"));
        let result = async {
            let auth = kafka_auth()?;
            let first = dataset(2, 0..500, 8, false);
            let second = dataset(2, 500..1000, 8, true);
            let all: Vec<Input> = first.iter().chain(&second).cloned().collect();
            let (expected, _) = reference(&all);
            let tenants = [
                (ns_a.clone(), "tenant-a", Login::Scram),
                (ns_b_name.clone(), "tenant-b", Login::Cert),
            ];
            let mut jobs = Vec::new();
            for (ns, user, login) in &tenants {
                let (api, running) = tenant(&client, ns, user, *login, &auth, t0).await?;
                let uid = running.uid().context("job uid")?;
                let prefix = format!("streamops.{ns}.clicks.{uid}");
                ensure!(
                    field(&running, &["status", "kafkaIdPrefix"]) == prefix.as_str(),
                    "status.kafkaIdPrefix: {}, want {prefix}",
                    field(&running, &["status", "kafkaIdPrefix"])
                );
                produce(&format!("{ns}.in"), &first)?;
                jobs.push((ns.clone(), api, prefix));
            }
            for (ns, ..) in &jobs {
                wait_first_results(&format!("{ns}.out"), &control_topic(ns, "clicks")).await?;
            }
            // Each user against the other's topics, group and transactional id.
            for ((ns, _, prefix), (_, user, login)) in jobs.iter().zip(tenants.iter().rev()) {
                let (input, output, fence) = (format!("{ns}.in"), format!("{ns}.out"), format!("{prefix}-0"));
                let seen = login.probe(
                    &auth,
                    user,
                    &[
                        ("--topic", &input),
                        ("--write", &output),
                        ("--group", prefix),
                        ("--transactional-id", &fence),
                    ],
                )?;
                say(t0, format!("{user} on {ns}'s topics and ids: {seen}"));
                let want = json!({
                    "read": "TopicAuthorizationFailedError",
                    "write": "TopicAuthorizationFailedError",
                    "group": "GroupAuthorizationFailedError",
                    "fence": "TransactionalIdAuthorizationFailedError",
                });
                ensure!(seen == want, "{user} on {ns}: {seen}, want {want}");
            }
            // The same user on its own: the probe is not refusing everything.
            let (ns, user, login) = &tenants[1];
            let own = login.probe(&auth, user, &[("--topic", &format!("{ns}.in"))])?;
            ensure!(own == json!({"read": "ok"}), "{user} on its own input: {own}");

            // Through the operator: B's StreamTopic for A's input, with B's
            // credentials and more partitions, is never Ready and grows nothing.
            let (_, cluster_b) = Login::Cert.secret_and_cluster(&auth, "tenant-b")?;
            let mut steal = stream_topic("steal", &format!("{ns_a}.in"), 4)?;
            steal.data["spec"]["cluster"] = cluster_b;
            apply_ok(&client, &ns_b_name, &steal).await?;
            let topics_b = api_for(&client, &steal, &ns_b_name).await?;
            let deadline = Instant::now() + Duration::from_secs(60);
            let refused = loop {
                let t = topics_b.get("steal").await?;
                let conditions = field(&t, &["status", "conditions"])
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let ready = conditions.iter().find(|c| c["type"] == "Ready");
                ensure!(
                    ready.is_none_or(|c| c["status"] != "True"),
                    "B's StreamTopic for A's topic became Ready: {}",
                    field(&t, &["status"])
                );
                if let Some(c) =
                    ready.filter(|c| c["message"].as_str().is_some_and(|m| m.contains("uthoriz")))
                {
                    break c.clone();
                }
                ensure!(
                    Instant::now() < deadline,
                    "B's StreamTopic for A's topic says nothing about authorization in 60s: {}",
                    field(&t, &["status"])
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            };
            say(t0, format!("B's StreamTopic for A's input: {refused}"));
            let parts = kafka_io_run(&[
                "partitions",
                "--bootstrap",
                &bootstrap()?,
                "--topic",
                &format!("{ns_a}.in"),
            ])?;
            ensure!(
                parts.trim() == "2",
                "A's input has {} partitions, want 2",
                parts.trim()
            );

            // Nobody was fenced: both jobs finish exactly.
            for (ns, ..) in &jobs {
                produce(&format!("{ns}.in"), &second)?;
                expect_exact(
                    &format!("{ns}.out"),
                    &control_topic(ns, "clicks"),
                    &expected,
                    None,
                )
                .await?;
                say(t0, format!("{ns}/clicks: {} windows exact", expected.len()));
            }
            Ok(())
        }
        .await;
        if let Err(e) = kubectl(&["-n", &ns_b_name, "delete", "streamjobs", "--all", "--wait=true"]) {
            eprintln!("deleting the StreamJobs of {ns_b_name}: {e:#}");
        }
        if result.is_ok() {
            ns_b.delete().await?;
        } else {
            let dir = collect_logs(&ns_b_name, OPERATOR_NS, OPERATOR_SELECTOR);
            eprintln!("logs of {ns_b_name} in {}", dir.display());
        }
        result
    })
    .await;
}
