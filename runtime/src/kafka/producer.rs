//! A task's producer as the [`TaskLog`] the checkpoint protocol writes
//! through: transactional (exactly once) or idempotent only (at least
//! once, after fencing with a transactional one), with a ledger of the
//! brokers' delivery reports.

use crate::error::RuntimeError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Result;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};

use super::consumer::OffsetsClient;
use super::kerr;
use super::markers::{self, FENCE_KEY_PREFIX};
use super::settings::KafkaSettings;
use crate::checkpoint::marker::Marker;
use crate::checkpoint::protocol::{Delivered, Record, TaskLog};

/// The delivery reports of a producer: records the brokers acknowledged,
/// per (topic, partition), and failures, since the last
/// [`DeliveryLedger::take`]. Every record of a transaction is flushed before
/// its commit, so at commit time the ledger holds exactly that
/// transaction's records. A failed delivery fails the checkpoint (librdkafka
/// also makes such a transaction abortable; the runtime does not rely on it).
#[derive(Default)]
pub struct DeliveryLedger {
    inner: Mutex<Deliveries>,
}

#[derive(Debug, Default, Clone)]
pub struct Deliveries {
    /// Topic -> partition -> records acknowledged (a marker's `delivered`).
    pub acked: Delivered,
    pub failed: u64,
    /// The first failure's code and `topic-partition: error`.
    pub first_failure: Option<(RDKafkaErrorCode, String)>,
}

impl DeliveryLedger {
    /// What was delivered (or failed) since the last call.
    pub fn take(&self) -> Deliveries {
        std::mem::take(&mut *self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl ClientContext for DeliveryLedger {}

impl ProducerContext for DeliveryLedger {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut d = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(m) => {
                // Called for every record: no allocation once the topic is known.
                let partitions = match d.acked.get_mut(m.topic()) {
                    Some(p) => p,
                    None => d.acked.entry(m.topic().to_string()).or_default(),
                };
                *partitions.entry(m.partition()).or_default() += 1;
            }
            Err((e, m)) => {
                d.failed += 1;
                if d.first_failure.is_none() {
                    let code = e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail);
                    d.first_failure = Some((code, format!("{}-{}: {e}", m.topic(), m.partition())));
                }
            }
        }
    }
}

type TaskProducer = BaseProducer<DeliveryLedger>;

/// Everything a task's log needs to know.
#[derive(Clone)]
pub struct LogConfig {
    pub kafka: KafkaSettings,
    pub task: u32,
    /// Transactions per checkpoint (exactly once); else only the fencing
    /// at start is transactional.
    pub transactional: bool,
    pub transactional_id: String,
    pub transaction_timeout_ms: u64,
    pub client_id: String,
    /// The job's control topic (partition = task) and the group its marker
    /// reader uses.
    pub control_topic: String,
    pub marker_group: String,
    pub offsets: Arc<OffsetsClient>,
    /// Random per process start (in the fence record).
    pub instance: String,
    pub timeout: Duration,
}

/// A task's [`TaskLog`] on Kafka.
pub struct KafkaTaskLog {
    cfg: LogConfig,
    producer: TaskProducer,
}

impl KafkaTaskLog {
    /// A log whose producer is transactional (so [`TaskLog::fence`] can
    /// fence); nothing is sent yet.
    pub fn new(cfg: LogConfig) -> Result<Self> {
        let producer = producer_config(&cfg)
            .set("transactional.id", &cfg.transactional_id)
            .set("transaction.timeout.ms", cfg.transaction_timeout_ms.to_string())
            .create_with_context(DeliveryLedger::default())
            .map_err(kerr("creating a transactional producer"))?;
        Ok(KafkaTaskLog { cfg, producer })
    }

    /// Serves delivery reports without waiting.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Commits one transaction holding a fence record, so no transaction of
    /// a predecessor is left unresolved in control partition `t` before its
    /// markers are read. On Kafka, `init_transactions` already aborted the
    /// predecessor's open transaction and this is a no-op record; a broker
    /// that left a fenced transaction open until the new epoch commits
    /// would resolve it here, so the read can always reach the end of the
    /// partition.
    fn resolve_predecessor(&mut self) -> Result<()> {
        let t = self.cfg.task;
        self.producer
            .begin_transaction()
            .map_err(kerr("beginning the fence transaction"))?;
        let value = serde_json::to_vec(&serde_json::json!({ "fence": self.cfg.instance, "task": t }))?;
        let key = format!("{FENCE_KEY_PREFIX}{t}");
        let control = self.cfg.control_topic.clone();
        self.send(&Record {
            topic: &control,
            partition: Some(t as i32),
            key: Some(key.as_bytes()),
            value: &value,
            headers: &[],
        })?;
        self.flush()?;
        self.producer
            .commit_transaction(self.cfg.timeout)
            .map_err(kerr(format!("committing the fence transaction of task {t}")))
    }
}

/// Settings every task producer shares: idempotent (no duplicates or
/// reordering from the producer's own retries), murmur2 like Kafka's Java
/// clients.
fn producer_config(cfg: &LogConfig) -> rdkafka::ClientConfig {
    let mut c = cfg.kafka.client();
    c.set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .set("client.id", &cfg.client_id);
    c
}

impl TaskLog for KafkaTaskLog {
    /// Fences every transactional predecessor holding this task (any
    /// version, any parallelism), whichever the guarantee: a previous
    /// exactly-once version's open transaction would otherwise hide the
    /// control partition's end from the marker read.
    fn fence(&mut self) -> Result<()> {
        let t = self.cfg.task;
        self.producer
            .init_transactions(self.cfg.timeout)
            .map_err(kerr(format!("init_transactions for task {t}")))?;
        self.resolve_predecessor()?;
        if !self.cfg.transactional {
            self.producer = producer_config(&self.cfg)
                .create_with_context(DeliveryLedger::default())
                .map_err(kerr("creating a producer"))?;
        }
        // The fence transaction's record is not the first checkpoint's.
        self.producer.context().take();
        Ok(())
    }

    fn last_marker(&mut self, job_uid: &str) -> Result<Option<Marker>> {
        markers::last_committed(
            &self.cfg.kafka,
            &self.cfg.offsets,
            &self.cfg.control_topic,
            self.cfg.task,
            &self.cfg.marker_group,
            job_uid,
            self.cfg.timeout,
        )
    }

    fn begin(&mut self) -> Result<()> {
        self.producer
            .begin_transaction()
            .map_err(kerr("beginning a transaction"))
    }

    /// Produces one record, waiting while the producer's queue is full
    /// (backpressure: the consumer is not polled meanwhile).
    fn send(&mut self, r: &Record<'_>) -> Result<()> {
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (key, value) in r.headers {
            headers = headers.insert(Header {
                key,
                value: Some(*value),
            });
        }
        let mut rec = BaseRecord::to(r.topic).payload(r.value).headers(headers);
        if let Some(p) = r.partition {
            rec = rec.partition(p);
        }
        if let Some(k) = r.key {
            rec = rec.key(k);
        }
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(kerr(format!("producing to {}", r.topic))(e)),
            }
        }
    }

    /// Waits until every record is delivered (or failed), serving the
    /// delivery reports. `commit_transaction` flushes too, but rdkafka's
    /// `BaseProducer` flush polls in steps that each last a full 100 ms, so
    /// a commit with anything in flight took at least 100 ms; this loop
    /// returns within a millisecond of the last delivery.
    fn flush(&mut self) -> Result<Delivered> {
        let timeout = self.cfg.timeout;
        let deadline = Instant::now() + timeout;
        while self.producer.in_flight_count() > 0 {
            if Instant::now() > deadline {
                return Err(RuntimeError::kafka_code(
                    RDKafkaErrorCode::MessageTimedOut,
                    format!(
                        "{} records not delivered within {timeout:?}",
                        self.producer.in_flight_count()
                    ),
                ));
            }
            self.producer.poll(Duration::from_millis(1));
        }
        let d = self.producer.context().take();
        if d.failed > 0 {
            let (code, first) = d.first_failure.unwrap_or((RDKafkaErrorCode::Fail, String::new()));
            return Err(RuntimeError::kafka_code(
                code,
                format!("{} records failed delivery (first: {first})", d.failed),
            ));
        }
        Ok(d.acked)
    }

    fn commit(&mut self) -> Result<()> {
        self.producer
            .commit_transaction(self.cfg.timeout)
            .map_err(kerr("committing the transaction"))
    }
}
