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
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use streamops_runtime::pipeline::job::{JobFile, JobTopics, RestoreFrom, SourceTopic};
use streamops_runtime::pipeline::wire::{CHECKPOINT_HEADER, Marker};

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

pub fn create_topics(topics: &[TopicSpec<'_>]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, p, cfg)| {
            let mut t = NewTopic::new(name, *p, TopicReplication::Fixed(1));
            for (k, v) in cfg.iter() {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let res = rt()
        .block_on(admin.create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap();
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
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
            (&t.source, n, &[]),
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
            sink: topics.sink.clone(),
            late_events: Some(topics.late.clone()),
            dead_letter: Some(topics.dlq.clone()),
            repartition: topics.repartition.clone(),
            control: topics.control.clone(),
        },
        restore,
    }
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
/// every 97th record malformed, and a final far-future record per
/// partition that closes every window.
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
            let value = if i % 97 == 50 {
                format!("not json {p}/{i}").into_bytes()
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
            value: json!({"user": "flush", "ts": 1_800_000_000_000i64, "amount": 0})
                .to_string()
                .into_bytes(),
        });
    }
    out
}

/// Expected final results: (user, window start) -> (clicks, spent); and the
/// number of malformed records.
pub fn reference(data: &[Input]) -> (Expected, usize) {
    let mut m = BTreeMap::new();
    let mut bad = 0;
    for r in data {
        let Ok(v) = serde_json::from_slice::<Value>(&r.value) else {
            bad += 1;
            continue;
        };
        let user = v["user"].as_str().unwrap().to_string();
        if user == "flush" {
            continue;
        }
        let ts = v["ts"].as_i64().unwrap();
        let start = ts.div_euclid(WINDOW_MS) * WINDOW_MS;
        let e = m.entry((user, start)).or_insert((0, 0));
        e.0 += 1;
        e.1 += v["amount"].as_i64().unwrap();
    }
    (m, bad)
}

pub fn produce(topic: &str, data: &[Input]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "5")
        .create()
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
    p.flush(Duration::from_secs(30)).unwrap();
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

/// [`read_all`] with the given `isolation.level`. Records [`nudge`] wrote
/// are left out.
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
    // A partition is read once its position reaches its end offset, or once
    // it sits at end-of-partition without moving for STUCK: a transaction
    // that nobody will ever resolve (a fenced one nisshi leaves open) holds
    // read_committed readers there for good, and nothing behind it can be
    // read by anyone; end-of-partition is where the reader stops then.
    const STUCK: Duration = Duration::from_secs(10);
    let mut at_eof: BTreeMap<i32, (i64, Instant)> = BTreeMap::new();
    let position = |c: &BaseConsumer, p: i32| {
        c.position().ok().and_then(|l| {
            l.find_partition(topic, p).and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
        })
    };
    let reached = |c: &BaseConsumer, at_eof: &BTreeMap<i32, (i64, Instant)>| {
        ends.iter().all(|(p, end)| {
            let pos = position(c, *p);
            *end <= 0
                || pos.is_some_and(|o| o >= *end)
                || at_eof
                    .get(p)
                    .is_some_and(|(o, since)| pos == Some(*o) && since.elapsed() >= STUCK)
        })
    };
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !reached(&c, &at_eof) {
        assert!(
            Instant::now() < deadline,
            "timed out reading {topic} up to {ends:?} ({isolation})"
        );
        match c.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                if let Some(o) = position(&c, p)
                    && at_eof.get(&p).is_none_or(|(seen, _)| *seen != o)
                {
                    at_eof.insert(p, (o, Instant::now()));
                }
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            Some(Ok(m)) if m.key() == Some(NUDGE_KEY) => {}
            Some(Ok(m)) => {
                let checkpoint = m.headers().and_then(|h| {
                    h.iter()
                        .find(|h| h.key == CHECKPOINT_HEADER)
                        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
                });
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().unwrap_or(&[]).to_vec(),
                    checkpoint,
                });
            }
        }
    }
    out
}

/// Key of the records [`nudge`] writes; [`read_all`] skips them.
pub const NUDGE_KEY: &[u8] = b"streamops-test-nudge";

/// Writes one record (key [`NUDGE_KEY`], no checkpoint header) to every
/// partition of `topic`. nisshi 0.7.0's high watermark lags the log: the
/// records of a partition's last produce request stay invisible, at every
/// isolation level, until the next produce request to that partition
/// (`broker_high_watermark_lags_the_last_write` pins it). A read after a
/// nudge covers every record acknowledged before it. Only for topics the
/// job does not read (sink, dead letters).
pub fn nudge(topic: &str) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let md = p
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    for part in 0..md.topics()[0].partitions().len() as i32 {
        p.send(
            BaseRecord::<[u8], [u8]>::to(topic)
                .partition(part)
                .key(NUDGE_KEY)
                .payload(&[]),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
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

/// Records committed transactions wrote to `topic` that the broker
/// acknowledged (their markers' audit trail) but does not show, per
/// (writing task, partition): acknowledged writes the broker lost.
pub fn lost_acknowledged(topic: &str, records: &[Record], markers: &[Marker]) -> BTreeMap<(u32, i32), u64> {
    let mut seen: BTreeMap<(&str, i32), u64> = BTreeMap::new();
    for r in records {
        if let Some(cp) = &r.checkpoint {
            *seen.entry((cp.as_str(), r.partition)).or_default() += 1;
        }
    }
    let mut lost = BTreeMap::new();
    for m in markers {
        let header = m.header_value();
        for (p, n) in m.delivered.get(topic).into_iter().flatten() {
            let have = seen.get(&(header.as_str(), *p)).copied().unwrap_or(0);
            if have < *n {
                *lost.entry((m.task, *p)).or_default() += n - have;
            }
        }
    }
    lost
}

/// [`lost_acknowledged`] summed per writing task.
pub fn lost_by_task(topic: &str, records: &[Record], markers: &[Marker]) -> BTreeMap<u32, u64> {
    let mut lost = BTreeMap::new();
    for ((task, _), n) in lost_acknowledged(topic, records, markers) {
        *lost.entry(task).or_default() += n;
    }
    lost
}

/// What the final verdicts read: the sink and repartition topics, each
/// sink partition nudged first, and the acknowledged writes the broker
/// lost in them, judged against the markers committed before the reads.
struct FinalRead {
    sink: Vec<Record>,
    keyed: Vec<Record>,
    /// Results lost per writing task, inputs lost per keyed partition.
    lost: Verdict,
}

fn final_read(topics: &Topics) -> FinalRead {
    let before = marker_records(&topics.control);
    nudge(&topics.sink);
    let sink = read_all(&topics.sink);
    let keyed = read_all(&topics.repartition);
    let mut lost = Verdict {
        broker_lost: lost_by_task(&topics.sink, &sink, &before),
        tasks: topics.partitions,
        ..Verdict::default()
    };
    for ((_, partition), n) in lost_acknowledged(&topics.repartition, &keyed, &before) {
        *lost.broker_lost_keyed.entry(partition).or_default() += n;
    }
    FinalRead { sink, keyed, lost }
}

/// The verifier's verdict on a sink topic.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Committed output (its checkpoint's marker is committed).
    pub results: BTreeMap<(String, i64), Vec<(i64, i64)>>,
    /// Records of a checkpoint with no committed marker: the broker showed
    /// records of a transaction that never committed (nisshi leaks fenced
    /// open transactions, LOCAL-CLUSTER.md). Not product faults.
    pub broker_leaks: usize,
    /// Records without a checkpoint header at all: product faults.
    pub untagged: usize,
    /// Sink records committed transactions wrote and the broker acknowledged
    /// (counted in their markers) but does not show, per writing task: the
    /// broker lost acknowledged writes (seen with nisshi 0.7.0). Not product
    /// faults; `faults` excuses at most this many missing results per task.
    pub broker_lost: BTreeMap<u32, u64>,
    /// Inputs of each keyed partition stage 2 never counted because of the
    /// broker: records stage 1 wrote there, acknowledged, then lost; and
    /// records dropped as replays because the broker had first shown a
    /// record of a never-committed transaction with a higher offset (see
    /// `shadowed_keyed_records`). `faults` excuses results of that keyed
    /// partition short by at most this many records in all.
    pub broker_lost_keyed: BTreeMap<i32, u64>,
    /// The job's task count (to tell which task emits a key's results).
    pub tasks: u32,
}

pub fn verify_sink(topics: &Topics) -> Verdict {
    sink_verdict(topics, true)
}

/// The verdict; without `broker_accounting`, only what the sink and the
/// markers show (no reading of the repartition topic, no loss accounting):
/// enough to poll for completeness.
fn sink_verdict(topics: &Topics, broker_accounting: bool) -> Verdict {
    if !broker_accounting {
        let sink = read_all(&topics.sink);
        let marks = markers(&topics.control);
        return tally(sink, &marks, Verdict::default());
    }
    // Sink first: a record visible to read_committed was committed, and so
    // was its marker (same transaction), so markers read afterwards include
    // it. The other order counts records committed in between as leaks.
    // Lost acknowledged writes are judged only for transactions committed
    // before the sink is read (markers read first), which the read must show
    // in full.
    let FinalRead {
        sink,
        keyed,
        lost: mut v,
    } = final_read(topics);
    let marks = markers(&topics.control);
    // Inputs the keyed stage rightly dropped as replays because the broker
    // had shown a record of a never-committed transaction (no committed
    // marker) with a higher offset first: lost to the broker's leak too.
    for d in shadowed_keyed_records(&keyed) {
        if !marks.contains(&d.high_mark_by) {
            *v.broker_lost_keyed.entry(d.keyed_partition).or_default() += 1;
        }
    }
    tally(sink, &marks, v)
}

/// At least once: every tagged record the sink shows counts (there are no
/// transactions to leak), and a result may appear more than once, but every
/// copy must be the same. Returns the verdict with each result's identical
/// copies folded into one (different copies stay, for `faults` to report)
/// and the number of extra copies. Acknowledged writes the broker lost are
/// accounted as for exactly once (the markers' audit trail).
pub fn verify_at_least_once(topics: &Topics) -> (Verdict, usize) {
    let FinalRead { sink, lost: v, .. } = final_read(topics);
    let every: BTreeSet<String> = sink.iter().filter_map(|r| r.checkpoint.clone()).collect();
    let mut v = tally(sink, &every, v);
    let mut extra = 0;
    for copies in v.results.values_mut() {
        if copies.iter().all(|c| *c == copies[0]) {
            extra += copies.len() - 1;
            copies.truncate(1);
        }
    }
    (v, extra)
}

/// Adds the sink's records to `v`: committed results, leaks, untagged ones.
fn tally(sink: Vec<Record>, marks: &BTreeSet<String>, mut v: Verdict) -> Verdict {
    for r in sink {
        let Some(cp) = &r.checkpoint else {
            v.untagged += 1;
            continue;
        };
        if !marks.contains(cp) {
            v.broker_leaks += 1;
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

/// Product faults: missing, duplicated or wrong results.
///
/// Results the broker's own losses explain are not faults: a result missing
/// while the broker lost at least that many acknowledged results of the task
/// that emits it (`Verdict::broker_lost`), or a result short of input records
/// (missing, or with fewer clicks) while the broker lost at least that many
/// acknowledged records of its keyed partition (`Verdict::broker_lost_keyed`;
/// the shortfalls of a partition are summed against its losses).
pub fn faults(expected: &BTreeMap<(String, i64), (i64, i64)>, v: &Verdict) -> Vec<String> {
    let mut f = Vec::new();
    let mut lost_results = v.broker_lost.clone();
    let mut lost_inputs = v.broker_lost_keyed.clone();
    // Takes `n` from a loss budget if it holds that many.
    let spend = |budget: Option<&mut u64>, n: u64| match budget {
        Some(b) if n > 0 && *b >= n => {
            *b -= n;
            true
        }
        _ => false,
    };
    for (k, want) in expected {
        // The task emitting the key's results = its keyed partition.
        let key = serde_json::to_vec(&serde_json::json!([k.0])).unwrap();
        let task = streamops_runtime::operator::partitioner::partition_for(&key, v.tasks.max(1));
        let short_by = |clicks: i64| u64::try_from(want.0 - clicks).unwrap_or(0);
        match v.results.get(k).map(Vec::as_slice) {
            None if spend(lost_results.get_mut(&task), 1)
                || spend(lost_inputs.get_mut(&(task as i32)), short_by(0)) => {}
            None => f.push(format!("missing {k:?}")),
            Some([got]) if got == want => {}
            Some([got]) if spend(lost_inputs.get_mut(&(task as i32)), short_by(got.0)) => {}
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
        let body = json!({"id": id, "stop": stop}).to_string();
        let (code, text) = self
            .http("POST", "/v1/savepoints", Some(&body))
            .expect("admin API reachable");
        assert_eq!(code, 202, "savepoint request refused: {text}");
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
        let v = sink_verdict(topics, false);
        if expected.keys().all(|k| v.results.contains_key(k)) || Instant::now() > deadline {
            return verify_sink(topics);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A keyed record the keyed stage's duplicate rule drops although its offset
/// was never applied: an upstream's high mark was already above it.
pub struct ShadowedRecord {
    pub keyed_partition: i32,
    pub upstream: u32,
    pub source_offset: i64,
    pub header: String,
    pub log_offset: i64,
    pub high_mark: i64,
    /// Checkpoint header of the record that set the high mark.
    pub high_mark_by: String,
}

/// Replays the repartition topic (read_committed, in log order) through the
/// keyed stage's duplicate rule (a record of upstream `u` at or below the
/// highest source offset seen from `u` is a replay) and returns the records
/// it drops without their offset ever having been applied. Under Kafka's
/// transactions an upstream's visible records always form a prefix, so
/// there are none; a broker that shows part of a never-committed transaction
/// (nisshi) makes them.
pub fn shadowed_keyed_records(records: &[Record]) -> Vec<ShadowedRecord> {
    use streamops_runtime::pipeline::wire::{Wire, decode};
    let mut by_partition: BTreeMap<i32, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_partition.entry(r.partition).or_default().push(r);
    }
    let mut out = Vec::new();
    for (q, mut records) in by_partition {
        records.sort_by_key(|r| r.offset);
        let mut high: BTreeMap<u32, (i64, String)> = BTreeMap::new();
        let mut applied: BTreeMap<u32, BTreeSet<i64>> = BTreeMap::new();
        for r in records {
            let Ok(Wire::Data(d)) = decode(&r.value) else {
                continue;
            };
            let header = r.checkpoint.clone().unwrap_or_else(|| "-".into());
            let seen = applied.entry(d.upstream).or_default();
            match high.get(&d.upstream) {
                Some((h, by)) if d.source_offset <= *h => {
                    if !seen.contains(&d.source_offset) {
                        out.push(ShadowedRecord {
                            keyed_partition: q,
                            upstream: d.upstream,
                            source_offset: d.source_offset,
                            header,
                            log_offset: r.offset,
                            high_mark: *h,
                            high_mark_by: by.clone(),
                        });
                    }
                }
                _ => {
                    seen.insert(d.source_offset);
                    high.insert(d.upstream, (d.source_offset, header));
                }
            }
        }
    }
    out
}

/// Diagnostic lines: records of the repartition topic dropped as duplicates
/// of offsets never applied, per keyed partition and upstream.
pub fn keyed_order_report(topics: &Topics) -> Vec<String> {
    let mut lost: BTreeMap<(i32, u32), Vec<String>> = BTreeMap::new();
    for d in shadowed_keyed_records(&read_all(&topics.repartition)) {
        lost.entry((d.keyed_partition, d.upstream))
            .or_default()
            .push(format!(
                "offset {} ({}, log offset {}) dropped under high mark {} ({})",
                d.source_offset, d.header, d.log_offset, d.high_mark, d.high_mark_by
            ));
    }
    lost.into_iter()
        .map(|((q, u), l)| {
            format!(
                "keyed partition {q}, upstream {u}: {} records dropped as duplicates of offsets never applied; first: {}",
                l.len(),
                l.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            )
        })
        .collect()
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
