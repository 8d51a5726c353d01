//! The Kafka admin calls the topic controller makes, with every failure
//! classified as transient (retry), missing capability or refusal.
//!
//! Calls used: Metadata (all topics, so no request can auto-create one),
//! DescribeConfigs, CreateTopics, CreatePartitions, IncrementalAlterConfigs
//! (through [`super::incremental`]) and DeleteTopics.
//!
//! Metadata for all topics costs O(topics) per request, and every reconcile
//! describes its topic: 1,000 StreamTopics applied at once meant 1,000
//! concurrent all-topic fetches, each on its own blocking thread. Concurrent
//! describes therefore share fetches ([`Coalesced`]): at most one is in flight
//! per admin client, and each answers every caller that arrived before it
//! started, so no caller sees metadata older than its own call.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication},
    client::DefaultClientContext,
    types::RDKafkaErrorCode,
};

use super::{
    failure::{AdminFailure, FailureKind},
    topic::{ConfigChange, ObservedTopic},
};

/// Partitions and replication factor of every topic the broker reported
/// without an error.
type TopicShapes = HashMap<String, (i32, i32)>;

/// One fetch at a time, shared by every caller that arrived before it began.
///
/// A caller takes the last result if that fetch *started* after the caller
/// arrived (so it reflects everything the caller did before calling);
/// otherwise it fetches itself, while later arrivals wait for it. Failures
/// are shared the same way, so a broker outage costs one timeout per wave of
/// callers rather than one per caller.
pub struct Coalesced<T> {
    last: tokio::sync::Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Default for Coalesced<T> {
    fn default() -> Self {
        Self {
            last: tokio::sync::Mutex::new(None),
        }
    }
}

impl<T: Clone> Coalesced<T> {
    pub async fn get<F, Fut>(&self, fetch: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let arrived = Instant::now();
        let mut last = self.last.lock().await;
        if let Some((started, value)) = last.as_ref()
            && *started >= arrived
        {
            return value.clone();
        }
        let started = Instant::now();
        let value = fetch().await;
        *last = Some((started, value.clone()));
        value
    }
}

/// How long a broker's `transaction.max.timeout.ms` is reused before it is
/// read again (it changes only with a broker restart).
const BROKER_LIMIT_TTL: Duration = Duration::from_secs(300);

/// An admin client for one cluster configuration; cheap to clone.
#[derive(Clone)]
pub struct KafkaAdmin {
    client: Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
    metadata: Arc<Coalesced<Result<Arc<TopicShapes>, AdminFailure>>>,
    max_transaction_timeout: Arc<tokio::sync::Mutex<Option<(Instant, u64)>>>,
}

impl KafkaAdmin {
    pub fn new(client: AdminClient<DefaultClientContext>, timeout: Duration) -> Self {
        Self {
            client: Arc::new(client),
            timeout,
            metadata: Arc::default(),
            max_transaction_timeout: Arc::default(),
        }
    }

    /// The broker's `transaction.max.timeout.ms` (of a broker the metadata
    /// names; every broker of a cluster is configured alike), read at most
    /// once per [`BROKER_LIMIT_TTL`].
    pub async fn max_transaction_timeout_ms(&self) -> Result<u64, AdminFailure> {
        const KEY: &str = "transaction.max.timeout.ms";
        let mut cached = self.max_transaction_timeout.lock().await;
        if let Some((read, value)) = *cached
            && read.elapsed() < BROKER_LIMIT_TTL
        {
            return Ok(value);
        }
        let client = self.client.clone();
        let timeout = self.timeout;
        let broker = tokio::task::spawn_blocking(move || {
            let metadata = client
                .inner()
                .fetch_metadata(None, timeout)
                .map_err(|e| AdminFailure::from_kafka("Metadata", &e))?;
            metadata.brokers().iter().map(|b| b.id()).min().ok_or_else(|| {
                AdminFailure::from_code(RDKafkaErrorCode::AllBrokersDown, "Metadata: no brokers".into())
            })
        })
        .await
        .map_err(|e| AdminFailure::rejected(None, format!("metadata task failed: {e}")))??;
        let results = self
            .client
            .describe_configs(&[ResourceSpecifier::Broker(broker)], &self.options())
            .await
            .map_err(|e| AdminFailure::from_kafka("DescribeConfigs", &e))?;
        for result in results {
            let resource =
                result.map_err(|code| AdminFailure::from_code(code, format!("DescribeConfigs: {code}")))?;
            if let Some(value) = resource.get(KEY).and_then(|e| e.value.as_deref()) {
                let value = value.parse::<u64>().map_err(|e| {
                    AdminFailure::rejected(None, format!("broker {broker} reports {KEY}={value:?}: {e}"))
                })?;
                *cached = Some((Instant::now(), value));
                return Ok(value);
            }
        }
        Err(AdminFailure::rejected(
            None,
            format!("broker {broker} does not report {KEY}"),
        ))
    }

    /// Every topic's shape, from a Metadata request for all topics (asking for
    /// one named topic could make a broker with auto-creation enabled create
    /// it), shared with concurrent callers.
    async fn topic_shapes(&self) -> Result<Arc<TopicShapes>, AdminFailure> {
        let client = self.client.clone();
        let timeout = self.timeout;
        self.metadata
            .get(|| async move {
                tokio::task::spawn_blocking(move || {
                    let metadata = client
                        .inner()
                        .fetch_metadata(None, timeout)
                        .map_err(|e| AdminFailure::from_kafka("Metadata", &e))?;
                    let shapes = metadata
                        .topics()
                        .iter()
                        .filter(|t| t.error().is_none())
                        .map(|t| {
                            let partitions = i32::try_from(t.partitions().len()).unwrap_or(i32::MAX);
                            let replication_factor = t
                                .partitions()
                                .iter()
                                .map(|p| i32::try_from(p.replicas().len()).unwrap_or(i32::MAX))
                                .max()
                                .unwrap_or(0);
                            (t.name().to_owned(), (partitions, replication_factor))
                        })
                        .collect();
                    Ok(Arc::new(shapes))
                })
                .await
                .map_err(|e| AdminFailure::rejected(None, format!("metadata task failed: {e}")))?
            })
            .await
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(self.timeout))
            .operation_timeout(Some(self.timeout))
    }

    /// The topic as Kafka reports it, or `None` if it does not exist.
    pub async fn describe(&self, topic: &str) -> Result<Option<ObservedTopic>, AdminFailure> {
        let found = self.topic_shapes().await?.get(topic).copied();
        let Some((partitions, replication_factor)) = found else {
            return Ok(None);
        };
        let config = self.describe_config(topic).await?;
        Ok(Some(ObservedTopic {
            partitions,
            replication_factor,
            config,
        }))
    }

    async fn describe_config(&self, topic: &str) -> Result<BTreeMap<String, String>, AdminFailure> {
        let results = self
            .client
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &self.options())
            .await
            .map_err(|e| AdminFailure::from_kafka("DescribeConfigs", &e))?;
        let mut config = BTreeMap::new();
        for result in results {
            let resource =
                result.map_err(|code| AdminFailure::from_code(code, format!("DescribeConfigs: {code}")))?;
            for entry in resource.entries {
                if let Some(value) = entry.value
                    && !entry.is_sensitive
                {
                    config.insert(entry.name, value);
                }
            }
        }
        Ok(config)
    }

    pub async fn create(
        &self,
        topic: &str,
        partitions: i32,
        replication_factor: Option<i32>,
        config: &BTreeMap<String, String>,
    ) -> Result<(), AdminFailure> {
        let mut new_topic = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(replication_factor.unwrap_or(-1)),
        );
        for (key, value) in config {
            new_topic = new_topic.set(key, value);
        }
        let results = self
            .client
            .create_topics([&new_topic], &self.options())
            .await
            .map_err(|e| AdminFailure::from_kafka("CreateTopics", &e))?;
        for result in results {
            result.map_err(|(_, code)| AdminFailure::from_code(code, format!("CreateTopics: {code}")))?;
        }
        Ok(())
    }

    pub async fn grow_partitions(&self, topic: &str, total: i32) -> Result<(), AdminFailure> {
        let count = usize::try_from(total).unwrap_or_default();
        let results = self
            .client
            .create_partitions([&NewPartitions::new(topic, count)], &self.options())
            .await
            .map_err(|e| AdminFailure::from_kafka("CreatePartitions", &e))?;
        for result in results {
            result.map_err(|(_, code)| AdminFailure::from_code(code, format!("CreatePartitions: {code}")))?;
        }
        Ok(())
    }

    pub async fn alter_config(&self, topic: &str, changes: Vec<ConfigChange>) -> Result<(), AdminFailure> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            // SAFETY: `client` owns the handle and lives until the call returns.
            unsafe { super::incremental::alter_topic(client.inner().native_ptr(), &topic, &changes, timeout) }
        })
        .await
        .map_err(|e| AdminFailure::rejected(None, format!("IncrementalAlterConfigs task failed: {e}")))?
    }

    /// Deletes the topic; a topic that is already gone counts as deleted.
    pub async fn delete(&self, topic: &str) -> Result<(), AdminFailure> {
        let results = self
            .client
            .delete_topics(&[topic], &self.options())
            .await
            .map_err(|e| AdminFailure::from_kafka("DeleteTopics", &e))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, code)) => {
                    let failure = AdminFailure::from_code(code, format!("DeleteTopics: {code}"));
                    if failure.kind != FailureKind::UnknownTopic {
                        return Err(failure);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A fetch that counts itself and returns its own number after `delay`.
    async fn counted(fetches: &AtomicUsize, delay: Duration) -> usize {
        let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(delay).await;
        n
    }

    #[tokio::test]
    async fn concurrent_callers_share_fetches_but_never_see_older_ones() {
        let shared = Arc::new(Coalesced::<usize>::default());
        let fetches = Arc::new(AtomicUsize::new(0));
        // 50 callers in quick succession: the first fetches; the other 49
        // arrive while that fetch runs (after it started), so they must not
        // take its answer, and share the one fetch that follows.
        let mut calls = Vec::new();
        for _ in 0..50 {
            let (shared, fetches) = (shared.clone(), fetches.clone());
            calls.push(tokio::spawn(async move {
                shared.get(|| counted(&fetches, Duration::from_millis(100))).await
            }));
            tokio::task::yield_now().await;
        }
        let mut seen = Vec::new();
        for call in calls {
            seen.push(call.await.unwrap());
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "one fetch per wave of callers");
        assert_eq!(seen[0], 1);
        assert!(seen[1..].iter().all(|&n| n == 2), "{seen:?}");

        // A caller after everything finished never gets a cached answer.
        let later = shared.get(|| counted(&fetches, Duration::from_millis(100))).await;
        assert_eq!(later, 3);
    }

    #[tokio::test]
    async fn a_failure_is_shared_by_its_wave_and_retried_by_the_next() {
        type Answer = Result<&'static str, &'static str>;
        let shared = Arc::new(Coalesced::<Answer>::default());
        let call = |answer: Answer| {
            let shared = shared.clone();
            tokio::spawn(async move {
                shared
                    .get(|| async move {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        answer
                    })
                    .await
            })
        };
        let a = call(Ok("a"));
        tokio::task::yield_now().await;
        // b and c arrive while a's fetch runs; b fetches next and fails; c
        // arrived before b's fetch started, so it shares b's failure instead
        // of waiting out a timeout of its own.
        let b = call(Err("down"));
        tokio::task::yield_now().await;
        let c = call(Ok("c never fetches"));
        assert_eq!(a.await.unwrap(), Ok("a"));
        assert_eq!(b.await.unwrap(), Err("down"));
        assert_eq!(c.await.unwrap(), Err("down"));
        // After the failure, a new caller fetches again.
        assert_eq!(call(Ok("d")).await.unwrap(), Ok("d"));
    }
}
