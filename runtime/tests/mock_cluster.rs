//! Client error paths against librdkafka's in-process mock cluster (no
//! broker needed). Its transaction support is too thin to prove exactly-once
//! (exactly_once.rs does that against a real broker); here it proves that
//! Kafka failures end the runtime with a clear error instead of a silent
//! loss: the restart then recovers from the last committed checkpoint.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde_json::json;
use streamops_runtime::kafka::settings::KafkaSettings;
use streamops_runtime::pipeline::crash::CrashPoints;
use streamops_runtime::pipeline::job::{JobFile, JobTopics, RestoreFrom, SourceTopic};
use streamops_runtime::pipeline::runner::{BackendKind, RunConfig, Runner};
use streamops_runtime::pipeline::shared::Shared;

fn job(storage: &std::path::Path) -> JobFile {
    let spec = json!({
        "source": {"topics": ["in"], "eventTime": {"field": "record.ts"}},
        "pipeline": {
            "keyBy": ["record.k"],
            "window": {"type": "tumbling", "size": "1s"},
            "aggregations": [{"name": "n", "function": "count"}]
        },
        "sink": {"topic": "out"},
        "checkpoint": {"interval": "200ms", "storage": format!("file://{}", storage.display())}
    });
    JobFile {
        name: "mock".into(),
        namespace: "test".into(),
        uid: "mock-uid".into(),
        generation: 1,
        spec: serde_json::from_value(spec).unwrap(),
        parallelism: 1,
        topics: JobTopics {
            source: vec![SourceTopic {
                topic: "in".into(),
                partitions: 1,
            }],
            layout: Vec::new(),
            sink: "out".into(),
            late_events: None,
            dead_letter: None,
            routes: Default::default(),
            repartition: "repartition".into(),
            control: "control".into(),
        },
        restore: RestoreFrom {
            savepoint: None,
            allow_empty_state: true,
            mode: None,
        },
        // A file of an older operator: the legacy ids, one key group per task.
        kafka_id_prefix: None,
        key_groups: None,
    }
}

fn setup() -> (
    MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    tempfile::TempDir,
) {
    let mock = MockCluster::new(1).expect("mock cluster");
    for t in ["in", "out", "repartition", "control"] {
        mock.create_topic(t, 1, 1).expect("mock topic");
    }
    (mock, tempfile::tempdir().unwrap())
}

fn config(
    mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    dir: &std::path::Path,
) -> RunConfig {
    RunConfig {
        job: job(&dir.join("storage")),
        tasks: vec![0],
        kafka: KafkaSettings::plaintext(&mock.bootstrap_servers()),
        state_dir: dir.join("state"),
        backend: BackendKind::Memory,
        crash: CrashPoints::none(),
        kafka_timeout: Duration::from_secs(5),
        output_buffer_bytes: streamops_runtime::pipeline::runner::DEFAULT_OUTPUT_BUFFER_BYTES,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn broker_down_at_start_is_a_clear_error() {
    let (mock, dir) = setup();
    mock.broker_down(1).unwrap();
    let rt = runtime();
    let shared = Arc::new(Shared::new(1, vec![0]).unwrap());
    let started = Instant::now();
    let err = match Runner::start(config(&mock, dir.path()), shared, rt.handle().clone()) {
        Ok(_) => panic!("a runtime must not start without its broker"),
        Err(e) => format!("{e:#}"),
    };
    assert!(started.elapsed() < Duration::from_secs(60), "bounded wait");
    assert!(
        err.contains("task 0") && (err.contains("init_transactions") || err.contains("offsets")),
        "the error names the step: {err}"
    );
}

/// Starts a runtime on the mock cluster, then makes every `api` request
/// fail with `error` and runs it (stopped after 20 s at the latest); the
/// error it ends with, and its status.
fn run_into_errors(api: RDKafkaApiKey, error: RDKafkaRespErr, count: usize) -> (String, Arc<Shared>) {
    let (mock, dir) = setup();
    let rt = runtime();
    let shared = Arc::new(Shared::new(1, vec![0]).unwrap());
    let runner = Runner::start(config(&mock, dir.path()), shared.clone(), rt.handle().clone())
        .expect("starts against the mock cluster");
    mock.request_errors(api, &vec![error; count]);
    let stopper = {
        let shared = shared.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(20));
            shared.shutdown.store(true, Ordering::Relaxed);
        })
    };
    let err = format!(
        "{:#}",
        runner.run().expect_err("the runtime must end with an error")
    );
    drop(stopper);
    (err, shared)
}

#[test]
fn failed_commit_stops_the_runtime_with_the_reason() {
    // Every EndTxn (commit) fails with a non-retriable error.
    let (err, _) = run_into_errors(
        RDKafkaApiKey::EndTxn,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        16,
    );
    assert!(
        err.contains("checkpoint"),
        "the error names the checkpoint: {err}"
    );
}

#[test]
fn request_errors_on_init_are_retried_or_reported() {
    let (mock, dir) = setup();
    // A few retriable errors on InitProducerId: librdkafka retries them.
    mock.request_errors(
        RDKafkaApiKey::InitProducerId,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
        ],
    );
    let rt = runtime();
    let shared = Arc::new(Shared::new(1, vec![0]).unwrap());
    let runner = Runner::start(config(&mock, dir.path()), shared.clone(), rt.handle().clone())
        .expect("retriable coordinator errors are retried");
    shared.shutdown.store(true, Ordering::Relaxed);
    runner.run().expect("graceful stop commits and exits");
}

#[test]
fn failed_delivery_fails_the_checkpoint_before_its_commit() {
    // Every produce request fails for good: the checkpoint's marker (and any
    // output) cannot be delivered.
    let (err, shared) = run_into_errors(
        RDKafkaApiKey::Produce,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        64,
    );
    assert!(
        err.contains("failed delivery") && err.contains("not committing"),
        "the error says which records failed and that nothing was committed: {err}"
    );
    assert_eq!(
        shared.status().checkpoint_id,
        None,
        "no checkpoint may be recorded as committed"
    );
}
