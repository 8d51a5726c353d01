//! What every reconcile of either controller shares.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use kube::{
    Client, Resource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use streamops_crds::KafkaClusterSpec;
use tracing::warn;

use crate::{
    config::OperatorConfig,
    error::Result,
    kafka::{KafkaAdmin, KafkaClients},
    metrics::Metrics,
};

/// The part of a controller's context both controllers have: the clients,
/// the event recorder, the metrics, the settings and the failure counts the
/// backoff grows with.
pub struct Shared {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub kafka: KafkaClients,
    pub config: OperatorConfig,
    /// Consecutive failed reconciles per object uid (exponential backoff).
    failures: Mutex<HashMap<String, u32>>,
}

impl Shared {
    pub fn new(client: Client, config: OperatorConfig, metrics: Metrics) -> Self {
        let reporter = Reporter {
            controller: "streamops-operator".into(),
            instance: config.identity.clone(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            kafka: KafkaClients::new(&config),
            client,
            metrics,
            config,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The delay before retrying `uid` after one more failure:
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

    /// Publishes an event about `object`; a failure is logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &object.object_ref(&())).await {
            warn!(error = %e, reason, "cannot publish event");
        }
    }

    /// The admin client for a resource in `namespace` naming `cluster` (or
    /// the operator's default cluster).
    pub async fn kafka_admin(
        &self,
        namespace: &str,
        cluster: Option<&KafkaClusterSpec>,
    ) -> Result<KafkaAdmin> {
        let settings = self.kafka.settings(&self.client, namespace, cluster).await?;
        self.kafka.admin(&settings)
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
