//! `transaction.timeout.ms` for the task producers, by the rule the
//! operator checked before starting the job ([`transaction::fit_spec`]),
//! against the broker's maximum as it is now.

use crate::error::RuntimeError;
use crate::error::{Context, Result};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use streamops_crds::{StreamJobSpec, transaction};
use tokio::runtime::Handle;
use tracing::warn;

use super::kerr;
use super::settings::KafkaSettings;

/// The transaction timeout of producers whose transactions only fence
/// predecessors (at least once): they never stay open for an interval.
pub const FENCE_TRANSACTION_TIMEOUT_MS: u64 = 60_000;

/// The job's transaction timeout; Kafka's default maximum when the broker's
/// cannot be read.
pub fn timeout_for(
    kafka: &KafkaSettings,
    spec: &StreamJobSpec,
    rt: &Handle,
    timeout: Duration,
) -> Result<u64> {
    let max = broker_max_timeout(kafka, rt, timeout).unwrap_or_else(|e| {
        warn!(error = %e.to_string(), "cannot read the broker's transaction.max.timeout.ms; assuming Kafka's default");
        transaction::KAFKA_DEFAULT_MAX_TIMEOUT_MS
    });
    match transaction::fit_spec(spec, max) {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Ok(FENCE_TRANSACTION_TIMEOUT_MS),
        Err(e) => Err(RuntimeError::compile(e.field, e.message)),
    }
}

/// The broker's `transaction.max.timeout.ms` (of the first broker in the
/// metadata).
pub fn broker_max_timeout(kafka: &KafkaSettings, rt: &Handle, timeout: Duration) -> Result<u64> {
    let admin: AdminClient<DefaultClientContext> = kafka
        .client()
        .create()
        .map_err(kerr("creating an admin client"))?;
    let meta = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(kerr("fetching metadata"))?;
    let broker = meta
        .brokers()
        .first()
        .ok_or_else(|| RuntimeError::Kafka("no brokers in metadata".into()))?
        .id();
    let opts = AdminOptions::new().request_timeout(Some(timeout));
    let res = rt
        .block_on(admin.describe_configs([&ResourceSpecifier::Broker(broker)], &opts))
        .map_err(kerr("describing the broker config"))?;
    for r in res {
        let r = r.map_err(|e| RuntimeError::Kafka(format!("describing the broker config: {e:?}")))?;
        if let Some(v) = r.get("transaction.max.timeout.ms").and_then(|e| e.value.clone()) {
            return v
                .parse()
                .with_context(|| format!("broker transaction.max.timeout.ms {v:?}"));
        }
    }
    Err(RuntimeError::Kafka(
        "the broker does not report transaction.max.timeout.ms".into(),
    ))
}
