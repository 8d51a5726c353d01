//! What every reconcile shares.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::{
    Client,
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        reflector::Store,
    },
};
use streamops_crds::{StreamTopic, tenancy::TopicPolicy};
use tracing::warn;

use crate::{config::OperatorConfig, kafka::KafkaClients, metrics::Metrics};

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub kafka: KafkaClients,
    pub config: OperatorConfig,
    /// Every StreamTopic the controller watches (conflict detection).
    pub topics: Store<StreamTopic>,
    /// Which Kafka topics each namespace may manage (`config.topic_policy()`).
    pub topic_policy: TopicPolicy,
    /// Consecutive transient failures per object uid (exponential backoff).
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        config: OperatorConfig,
        metrics: Metrics,
        topics: Store<StreamTopic>,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: "streamops-operator".into(),
            instance: config.identity.clone(),
        };
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            kafka: KafkaClients::new(&config),
            topic_policy: config.topic_policy(),
            client,
            metrics,
            config,
            topics,
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// The delay before retrying `uid` after one more transient failure:
    /// `retry_base * 2^(n-1)`, capped at `retry_max`.
    pub fn next_backoff(&self, uid: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(uid.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        backoff(self.config.retry_base, self.config.retry_max, *n)
    }

    pub fn reset_backoff(&self, uid: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(uid);
    }

    /// Publishes an event about `topic`; a failure is logged, never fatal.
    pub async fn event(
        &self,
        topic: &StreamTopic,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        use kube::Resource;
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &topic.object_ref(&())).await {
            warn!(error = %e, reason, "cannot publish event");
        }
    }
}

pub fn backoff(base: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
    base.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(2), s(60), 1), s(2));
        assert_eq!(backoff(s(2), s(60), 2), s(4));
        assert_eq!(backoff(s(2), s(60), 5), s(32));
        assert_eq!(backoff(s(2), s(60), 6), s(60));
        assert_eq!(backoff(s(2), s(60), 1000), s(60));
    }
}
