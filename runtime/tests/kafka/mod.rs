//! Harness for the runtime's tests against a real broker
//! (STREAMOPS_BOOTSTRAP): topics, a deterministic dataset, runtime
//! processes, and the verifier.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use streamops_runtime::checkpoint::marker::{CHECKPOINT_HEADER, Marker};
use streamops_runtime::pipeline::job::{JobFile, JobTopics, RestoreFrom, SourceTopic};

/// Event time of the record that closes every window: after all data, and
/// in the wall clock's past (a later one would be a dead letter under the
/// default `maxFutureSkew` of 1 h).
const FLUSH_TS: i64 = 1_750_000_000_000;
/// An event time decades ahead of any wall clock: beyond `maxFutureSkew`.
const FUTURE_TS: i64 = 4_000_000_000_000;

/// Size of the oversized record each partition of [`dataset`] holds: larger
/// than any record the runtime may send, so it goes to the dead-letter topic
/// by reference.
pub const OVERSIZED: usize = 1_500_000;

/// Configs of a source topic: it takes the oversized records.
pub const SOURCE_CONFIGS: &[(&str, &str)] = &[("max.message.bytes", "4194304")];

pub fn bootstrap() -> String {
    std::env::var("STREAMOPS_BOOTSTRAP")
        .expect("STREAMOPS_BOOTSTRAP must name a Kafka-compatible broker (e2e/cluster/cluster.sh broker up)")
}

pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{}-{}", std::process::id(), n % 1_000_000_000)
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// (name, partitions, configs).
pub type TopicSpec<'a> = (&'a str, i32, &'a [(&'a str, &'a str)]);

/// (user, window start) -> (clicks, spent).
pub type Expected = BTreeMap<(String, i64), (i64, i64)>;

/// An admin client of the test broker and the options of its requests.
fn admin() -> (AdminClient<DefaultClientContext>, AdminOptions) {
    let admin = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    (admin, options)
}

pub fn create_topics(topics: &[TopicSpec<'_>]) {
    let (admin, options) = admin();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, p, cfg)| {
            // -1: the broker's default.replication.factor (1, or 3 on the
            // three-broker cluster of the fault tests).
            let mut t = NewTopic::new(name, *p, TopicReplication::Fixed(-1));
            for (k, v) in cfg.iter() {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let res = rt().block_on(admin.create_topics(&new, &options)).unwrap();
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
    }
}

/// Grows each topic to its partition count (as the operator grows a
/// StreamTopic and the job's internal topics).
pub fn grow_topics(topics: &[(&str, usize)]) {
    let (admin, options) = admin();
    let grow: Vec<NewPartitions> = topics.iter().map(|(t, n)| NewPartitions::new(t, *n)).collect();
    let res = rt().block_on(admin.create_partitions(&grow, &options)).unwrap();
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("growing {t}: {e}"));
    }
}

/// The topics of one test job.
pub struct Topics {
    pub source: String,
    pub partitions: u32,
    pub sink: String,
    pub late: String,
    pub dlq: String,
    pub repartition: String,
    pub control: String,
}

impl Topics {
    pub fn create(prefix: &str, partitions: u32) -> Topics {
        let p = unique(prefix);
        let t = Topics {
            source: format!("{p}-in"),
            partitions,
            sink: format!("{p}-out"),
            late: format!("{p}-late"),
            dlq: format!("{p}-dlq"),
            repartition: format!("{p}-repartition"),
            control: format!("{p}-control"),
        };
        let n = partitions as i32;
        create_topics(&[
            (&t.source, n, SOURCE_CONFIGS),
            (&t.sink, 3, &[]),
            (&t.late, 1, &[]),
            (&t.dlq, 1, &[]),
            (&t.repartition, n, &[]),
            (&t.control, n, &[("cleanup.policy", "compact")]),
        ]);
        t
    }
}

pub const WINDOW_MS: i64 = 1_000;
pub const OUT_OF_ORDER_MS: i64 = 2_000;

/// A job over `topics`: users' clicks counted and summed per 1 s tumbling
/// window, final results only.
pub fn job(
    topics: &Topics,
    parallelism: u32,
    generation: i64,
    storage: &Path,
    restore: RestoreFrom,
) -> JobFile {
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
        "lateEvents": {"topic": "late"},
        "deadLetter": {"topic": "dlq"},
        "checkpoint": {"interval": "300ms", "storage": format!("file://{}", storage.display())}
    });
    JobFile {
        name: "test".into(),
        namespace: "test".into(),
        uid: topics.source.clone(),
        generation,
        spec: serde_json::from_value(spec).expect("valid spec"),
        parallelism: parallelism as i32,
        topics: JobTopics {
            source: vec![SourceTopic {
                topic: topics.source.clone(),
                partitions: topics.partitions as i32,
            }],
            layout: Vec::new(),
            sink: topics.sink.clone(),
            late_events: Some(topics.late.clone()),
            dead_letter: Some(topics.dlq.clone()),
            routes: Default::default(),
            repartition: topics.repartition.clone(),
            control: topics.control.clone(),
        },
        restore,
        kafka_id_prefix: Some(streamops_crds::runtime_api::kafka_id_prefix(
            "test",
            "test",
            &topics.source,
        )),
        // What the operator gives a job it deploys now: several key groups
        // per task, so the exactly-once proofs cover stage 2 split by group.
        key_groups: Some(streamops_crds::runtime_api::default_key_groups(topics.partitions)),
    }
}

/// Edits `j`'s spec as JSON.
pub fn set_spec(j: &mut JobFile, f: impl FnOnce(&mut Value)) {
    let mut spec = serde_json::to_value(&j.spec).unwrap();
    f(&mut spec);
    j.spec = serde_json::from_value(spec).unwrap();
}

pub fn write_job(dir: &Path, job: &JobFile) -> PathBuf {
    let path = dir.join(format!("job-{}.json", job.generation));
    std::fs::write(&path, serde_json::to_vec_pretty(job).unwrap()).unwrap();
    path
}

/// One input record.
#[derive(Debug, Clone)]
pub struct Input {
    pub partition: i32,
    pub value: Vec<u8>,
}

/// A deterministic dataset: `per_partition` records on each partition,
/// users spread over partitions (so the keyed stream is a real
/// repartition), event time rising with bounded disorder (never late),
/// every 97th record malformed, every 211th an event time in the future,
/// one record per partition too large for the repartition topic
/// ([`OVERSIZED`]), and a final record per partition that closes every
/// window.
pub fn dataset(partitions: u32, per_partition: usize, users: u32) -> Vec<Input> {
    let mut out = Vec::new();
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut rnd = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for p in 0..partitions {
        for i in 0..per_partition {
            let base = 1_700_000_000_000i64 + (i as i64) * 20;
            let jitter = (rnd() % 1_500) as i64;
            let user = (rnd() % users as u64) as u32;
            let amount = (rnd() % 1000) as i64;
            let value = if i == per_partition / 3 && i % 97 != 50 {
                json!({"user": format!("u{user}"), "ts": base - jitter, "amount": amount,
                       "pad": "x".repeat(OVERSIZED)})
                .to_string()
                .into_bytes()
            } else if i % 97 == 50 {
                format!("not json {p}/{i}").into_bytes()
            } else if i % 211 == 105 {
                // A wrong clock: a dead letter that must not move the watermark.
                json!({"user": format!("u{user}"), "ts": FUTURE_TS, "amount": amount, "n": format!("{p}/{i}")})
                    .to_string()
                    .into_bytes()
            } else {
                json!({"user": format!("u{user}"), "ts": base - jitter, "amount": amount})
                    .to_string()
                    .into_bytes()
            };
            out.push(Input {
                partition: p as i32,
                value,
            });
        }
        out.push(Input {
            partition: p as i32,
            value: json!({"user": "flush", "ts": FLUSH_TS, "amount": 0})
                .to_string()
                .into_bytes(),
        });
    }
    out
}

/// Whether `reference` counts this record as a dead letter: not JSON, or an
/// event time in the future.
pub fn is_dead_letter(value: &[u8]) -> bool {
    value.len() >= OVERSIZED
        || serde_json::from_slice::<Value>(value).map_or(true, |v| v["ts"].as_i64() == Some(FUTURE_TS))
}

/// Expected final results: (user, window start) -> (clicks, spent); and the
/// number of dead letters (malformed records, event times in the future).
pub fn reference(data: &[Input]) -> (Expected, usize) {
    let mut m = BTreeMap::new();
    let mut bad = 0;
    for r in data {
        if r.value.len() >= OVERSIZED {
            bad += 1;
            continue;
        }
        let Ok(v) = serde_json::from_slice::<Value>(&r.value) else {
            bad += 1;
            continue;
        };
        let user = v["user"].as_str().unwrap().to_string();
        if user == "flush" {
            continue;
        }
        let ts = v["ts"].as_i64().unwrap();
        if ts == FUTURE_TS {
            bad += 1;
            continue;
        }
        let start = ts.div_euclid(WINDOW_MS) * WINDOW_MS;
        let e = m.entry((user, start)).or_insert((0, 0));
        e.0 += 1;
        e.1 += v["amount"].as_i64().unwrap();
    }
    (m, bad)
}

pub fn produce(topic: &str, data: &[Input]) {
    // Idempotent: the test's input must be exactly `data`. A plain producer
    // that retries a batch whose leader died after appending it (a broker
    // SIGKILL, a rolling restart) writes it twice; the job then counts both
    // copies, correctly, and the verifier blamed the runtime for it.
    let p: BaseProducer<FeedFailures> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "5")
        .set("message.max.bytes", "4000000")
        .set("enable.idempotence", "true")
        .create_with_context(FeedFailures::default())
        .unwrap();
    for r in data {
        let mut rec = BaseRecord::<(), [u8]>::to(topic)
            .partition(r.partition)
            .payload(&r.value);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, back)) => {
                    rec = back;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("feeding {topic}: {e}"));
    let failed = p.context().0.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "feeding {topic}: records not delivered: {failed:?}"
    );
}

/// Delivery failures of the test's feeder (none allowed).
#[derive(Default)]
struct FeedFailures(Mutex<Vec<String>>);

impl rdkafka::ClientContext for FeedFailures {}

impl rdkafka::producer::ProducerContext for FeedFailures {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            let mut f = self.0.lock().unwrap();
            if f.len() < 10 {
                f.push(format!("{}-{}: {e}", m.topic(), m.partition()));
            }
        }
    }
}

/// Asserts that `topic` holds exactly `data` (per partition, in order): the
/// input of a test whose brokers fail is checked before its output.
pub fn assert_input_exact(topic: &str, data: &[Input]) {
    let mut want: BTreeMap<i32, Vec<&[u8]>> = BTreeMap::new();
    for r in data {
        want.entry(r.partition).or_default().push(&r.value);
    }
    let mut got: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    for r in read_all_isolated(topic, "read_uncommitted") {
        got.entry(r.partition).or_default().push(r.value);
    }
    for (p, w) in &want {
        let g = got.get(p).map(Vec::as_slice).unwrap_or_default();
        let first_diff = w.iter().zip(g).position(|(a, b)| *a != b.as_slice());
        assert!(
            g.len() == w.len() && first_diff.is_none(),
            "the test's input {topic}-{p} is not the dataset: {} records, want {} (first difference at {:?})",
            g.len(),
            w.len(),
            first_diff
        );
    }
}

/// Produces `data` over about `spread`, in order per partition, on a thread.
pub fn produce_slowly(topic: String, data: Vec<Input>, spread: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let chunks = 40usize;
        let per = data.len().div_ceil(chunks);
        // Interleave partitions so every partition advances together.
        let mut by_p: BTreeMap<i32, Vec<Input>> = BTreeMap::new();
        for r in data {
            by_p.entry(r.partition).or_default().push(r);
        }
        let mut ordered = Vec::new();
        let longest = by_p.values().map(Vec::len).max().unwrap_or(0);
        for i in 0..longest {
            for v in by_p.values() {
                if let Some(r) = v.get(i) {
                    ordered.push(r.clone());
                }
            }
        }
        for chunk in ordered.chunks(per.max(1)) {
            produce(&topic, chunk);
            std::thread::sleep(spread / chunks as u32);
        }
    })
}

/// A record read back with read_committed.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub checkpoint: Option<String>,
    /// Dead letters: `streamops-source-partition`.
    pub source_partition: Option<i32>,
}

/// Everything committed in `topic` (all partitions) when the call starts,
/// read_committed, plus whatever else is committed while it reads.
///
/// Reads until each partition's position reaches the end offset it had at
/// the start, not until every partition reports end-of-partition at once: a
/// running job commits a transaction per task every interval, so with eight
/// partitions some partition is nearly always behind a transaction that is
/// still open, and a read "to EOF everywhere" could miss its deadline (it
/// did, about one run in six, on a loaded box). Stopping at an end offset
/// taken before any record is read can miss nothing that was committed by
/// then.
pub fn read_all(topic: &str) -> Vec<Record> {
    read_all_isolated(topic, "read_committed")
}

/// [`read_all`] with the given `isolation.level`.
pub fn read_all_isolated(topic: &str, isolation: &str) -> Vec<Record> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("group.id", unique("verifier"))
        .set("isolation.level", isolation)
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let parts = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for p in 0..parts {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        let (_, end) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("end offset of {topic}-{p}: {e}"));
        ends.insert(p, end);
    }
    c.assign(&tpl).unwrap();
    // A partition is read once its position reaches the end offset it had
    // at the start. Apache Kafka resolves every transaction (committed,
    // aborted by a fencing successor, or aborted at its timeout), so a
    // read_committed reader always gets there.
    let position = |c: &BaseConsumer, p: i32| {
        c.position().ok().and_then(|l| {
            l.find_partition(topic, p).and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
        })
    };
    let reached = |c: &BaseConsumer| {
        ends.iter()
            .all(|(p, end)| *end <= 0 || position(c, *p).is_some_and(|o| o >= *end))
    };
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reached(&c) {
        assert!(
            Instant::now() < deadline,
            "timed out reading {topic} up to {ends:?} ({isolation})"
        );
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) => {
                let header = |name: &str| {
                    m.headers().and_then(|h| {
                        h.iter()
                            .find(|h| h.key == name)
                            .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                    })
                };
                let checkpoint = header(CHECKPOINT_HEADER);
                let source_partition = header("streamops-source-partition").and_then(|p| p.parse().ok());
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or(&[]).to_vec(),
                    checkpoint,
                    source_partition,
                });
            }
        }
    }
    out
}

/// The committed checkpoint markers of a control topic.
pub fn marker_records(control: &str) -> Vec<Marker> {
    read_all(control)
        .into_iter()
        .filter(|r| !r.key.as_ref().is_some_and(|k| k.starts_with(b"fence-")))
        .map(|r| serde_json::from_slice::<Marker>(&r.value).unwrap())
        .collect()
}

pub fn markers(control: &str) -> BTreeSet<String> {
    marker_records(control).iter().map(Marker::header_value).collect()
}

/// The verifier's verdict on a sink topic. It excuses nothing: with Apache
/// Kafka, read_committed shows exactly the records of committed
/// transactions, and every transaction of the job carries its checkpoint's
/// marker.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Committed output (its checkpoint's marker is committed).
    pub results: BTreeMap<(String, i64), Vec<(i64, i64)>>,
    /// Records of a checkpoint whose marker is not committed: output that
    /// became visible without its checkpoint. Product faults.
    pub uncommitted: usize,
    /// Records without a checkpoint header at all: product faults.
    pub untagged: usize,
}

/// Sink first, then markers: a record visible to read_committed was
/// committed, and so was its marker (same transaction), so markers read
/// afterwards include it. The other order would count records committed in
/// between as uncommitted.
pub fn verify_sink(topics: &Topics) -> Verdict {
    let sink = read_all(&topics.sink);
    let marks = markers(&topics.control);
    tally(sink, &marks)
}

/// At least once: every tagged record the sink shows counts (there are no
/// transactions), and a result may appear more than once, but every copy
/// must be the same. Returns the verdict with each result's identical copies
/// folded into one (different copies stay, for `faults` to report) and the
/// number of extra copies.
pub fn verify_at_least_once(topics: &Topics) -> (Verdict, usize) {
    let sink = read_all(&topics.sink);
    let every: BTreeSet<String> = sink.iter().filter_map(|r| r.checkpoint.clone()).collect();
    let mut v = tally(sink, &every);
    let mut extra = 0;
    for copies in v.results.values_mut() {
        if copies.iter().all(|c| *c == copies[0]) {
            extra += copies.len() - 1;
            copies.truncate(1);
        }
    }
    (v, extra)
}

/// The sink's records by what they are: committed results, uncommitted
/// ones, untagged ones.
fn tally(sink: Vec<Record>, marks: &BTreeSet<String>) -> Verdict {
    let mut v = Verdict::default();
    for r in sink {
        let Some(cp) = &r.checkpoint else {
            v.untagged += 1;
            continue;
        };
        if !marks.contains(cp) {
            v.uncommitted += 1;
            continue;
        }
        let j: Value = serde_json::from_slice(&r.value).expect("result is JSON");
        let user = j["key"][0].as_str().expect("key[0] is the user").to_string();
        if user == "flush" {
            continue;
        }
        let start = j["windowStart"].as_i64().expect("windowStart");
        v.results
            .entry((user, start))
            .or_default()
            .push((j["clicks"].as_i64().unwrap(), j["spent"].as_i64().unwrap()));
    }
    v
}

/// Product faults: missing, duplicated, wrong or unexpected results, and
/// output without a committed checkpoint. No allowance of any kind.
pub fn faults(expected: &BTreeMap<(String, i64), (i64, i64)>, v: &Verdict) -> Vec<String> {
    let mut f = Vec::new();
    for (k, want) in expected {
        match v.results.get(k).map(Vec::as_slice) {
            None => f.push(format!("missing {k:?}")),
            Some([got]) if got == want => {}
            Some(got) => f.push(format!("{k:?}: want [{want:?}], got {got:?}")),
        }
    }
    for k in v.results.keys() {
        if !expected.contains_key(k) {
            f.push(format!("unexpected {k:?}"));
        }
    }
    if v.untagged > 0 {
        f.push(format!("{} records without a checkpoint header", v.untagged));
    }
    if v.uncommitted > 0 {
        f.push(format!(
            "{} records of checkpoints without a committed marker",
            v.uncommitted
        ));
    }
    f
}

/// Committed (marker-backed) record count of a topic.
pub fn committed_count(topic: &str, control: &str) -> (usize, usize) {
    // The topic first, then the markers (see `verify_sink`).
    let all = read_all(topic);
    let marks = markers(control);
    let ok = all
        .iter()
        .filter(|r| r.checkpoint.as_ref().is_some_and(|c| marks.contains(c)))
        .count();
    (ok, all.len() - ok)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub const TOKEN: &str = "test-token-0123456789";

/// A runtime process.
pub struct Proc {
    pub child: Child,
    pub port: u16,
    pub stderr: Arc<Mutex<String>>,
    pub tasks: String,
}

impl Proc {
    pub fn spawn(job: &Path, tasks: &str, work: &Path, crash: Option<&str>) -> Proc {
        let port = free_port();
        let token = work.join("token");
        std::fs::write(&token, TOKEN).unwrap();
        // STREAMOPS_RUNTIME_BIN: a binary other than the one cargo built for
        // this test (e.g. a release build for benchmarks).
        let bin = std::env::var("STREAMOPS_RUNTIME_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_streamops-runtime").to_string());
        let mut cmd = Command::new(bin);
        cmd.arg("run")
            .arg("--job-file")
            .arg(job)
            .arg("--tasks")
            .arg(tasks)
            .arg("--bootstrap-servers")
            .arg(bootstrap())
            .arg("--state-dir")
            .arg(work.join("state"))
            .arg("--admin-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--admin-token-file")
            .arg(&token)
            .arg("--termination-log")
            .arg(work.join("termination-log"))
            .env_remove("POD_NAME")
            .env(
                "RUST_LOG",
                std::env::var("STREAMOPS_RUNTIME_LOG").unwrap_or_else(|_| "info,librdkafka=warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        match crash {
            Some(c) => cmd.env("STREAMOPS_TEST_CRASH_POINTS", c),
            None => cmd.env_remove("STREAMOPS_TEST_CRASH_POINTS"),
        };
        let mut child = cmd.spawn().expect("spawning streamops-runtime");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Proc {
            child,
            port,
            stderr,
            tasks: tasks.to_string(),
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child we spawned.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for exit up to `timeout`; Some(success) if it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `(status, body)` of an admin API call.
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        let body = body.unwrap_or("");
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .ok()?;
        let mut resp = String::new();
        s.read_to_string(&mut resp).ok()?;
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    }

    pub fn status(&self) -> Option<Value> {
        let (code, body) = self.http("GET", "/v1/status", None)?;
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    }

    /// Waits until the process reports Running.
    pub fn wait_running(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status()
                && s["state"] == "Running"
            {
                return;
            }
            if let Some(exit) = self.child.try_wait().unwrap() {
                panic!(
                    "runtime {} exited ({exit}) before running:\n{}",
                    self.tasks,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "runtime {} not running in time:\n{}",
                self.tasks,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until Running (None) or exit (Some).
    pub fn wait_running_or_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.child.try_wait().unwrap() {
                return Some(exit);
            }
            if let Some(s) = self.status()
                && s["state"] == "Running"
            {
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "runtime {} not running in time:\n{}",
                self.tasks,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Triggers savepoint `id` and waits for its outcome.
    pub fn savepoint(&self, id: &str, stop: bool, timeout: Duration) -> Value {
        self.request_savepoint(id, stop, false);
        self.wait_savepoint(id, timeout)
    }

    /// Asks for savepoint `id` (drained: every process of the job must be
    /// asked before any completes).
    pub fn request_savepoint(&self, id: &str, stop: bool, drain: bool) {
        let body = json!({"id": id, "stop": stop, "drain": drain}).to_string();
        let (code, text) = self
            .http("POST", "/v1/savepoints", Some(&body))
            .expect("admin API reachable");
        assert_eq!(code, 202, "savepoint request refused: {text}");
    }

    /// Waits for the outcome of savepoint `id`.
    pub fn wait_savepoint(&self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, body)) = self.http("GET", &format!("/v1/savepoints/{id}"), None) {
                let v: Value = serde_json::from_str(&body).unwrap();
                if v["state"] != "InProgress" {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "savepoint {id} not done in time:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until every expected result is committed (or `timeout`).
pub fn wait_complete(
    topics: &Topics,
    expected: &BTreeMap<(String, i64), (i64, i64)>,
    timeout: Duration,
) -> Verdict {
    let deadline = Instant::now() + timeout;
    loop {
        let v = verify_sink(topics);
        if expected.keys().all(|k| v.results.contains_key(k)) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Restore settings of a job that may start from empty state (no savepoint,
/// no committed checkpoint needed).
pub fn empty_ok() -> RestoreFrom {
    RestoreFrom {
        savepoint: None,
        allow_empty_state: true,
        mode: None,
    }
}
