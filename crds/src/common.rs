//! Types both resources share: how to reach Kafka, and kstatus conditions.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How to reach a Kafka cluster. Absent: the operator's default cluster.
///
/// Credentials only ever come from Secrets in the resource's own namespace; the
/// operator's own default credentials are only used with its default bootstrap
/// servers, never with an address written here.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KafkaClusterSpec {
    /// Comma-separated `host:port` list.
    #[schemars(length(min = 1))]
    pub bootstrap_servers: String,
    /// TLS to the brokers. Absent: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// SASL authentication. Absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<SaslSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// CA bundle (PEM) that signs the brokers' certificates. Absent: system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
    /// Client certificate (PEM) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<SecretKeyRef>,
    /// Client private key (PEM) for mutual TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_secret_ref: Option<SecretKeyRef>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SaslSpec {
    /// SASL mechanism.
    pub mechanism: SaslMechanism,
    /// Secret key holding the user name.
    pub username_secret_ref: SecretKeyRef,
    /// Secret key holding the password.
    pub password_secret_ref: SecretKeyRef,
}

/// One key of a Secret in the resource's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub key: String,
}

/// The kstatus condition types every streamops status carries.
pub mod condition {
    /// The resource is what the spec asks for, as of `observedGeneration`.
    pub const READY: &str = "Ready";
    /// The controller is working towards the spec; it will get there by itself.
    pub const RECONCILING: &str = "Reconciling";
    /// The controller cannot get there without a change by the user.
    pub const STALLED: &str = "Stalled";
}

/// What a controller concluded about a resource in one reconcile: exactly one
/// of the three kstatus states, with a machine-readable reason and a message a
/// user can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Ready { reason: String, message: String },
    Reconciling { reason: String, message: String },
    Stalled { reason: String, message: String },
}

impl Health {
    pub fn ready(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Ready {
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn reconciling(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Reconciling {
            reason: reason.into(),
            message: message.into(),
        }
    }
    pub fn stalled(reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Stalled {
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Self::Ready { reason, .. } | Self::Reconciling { reason, .. } | Self::Stalled { reason, .. } => {
                reason
            }
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::Ready { message, .. }
            | Self::Reconciling { message, .. }
            | Self::Stalled { message, .. } => message,
        }
    }

    /// The three kstatus conditions for this state. `Ready` is always present
    /// (True or False); `Reconciling` and `Stalled` are present with status
    /// True only when they hold, and absent otherwise, as kstatus recommends
    /// for "abnormal-true" conditions. `lastTransitionTime` is kept from
    /// `previous` when a condition's status did not change, so a resync does
    /// not rewrite status.
    pub fn conditions(&self, generation: Option<i64>, previous: &[Condition], now: Time) -> Vec<Condition> {
        let (ready, reconciling, stalled) = match self {
            Self::Ready { .. } => (true, false, false),
            Self::Reconciling { .. } => (false, true, false),
            Self::Stalled { .. } => (false, false, true),
        };
        let make = |type_: &str, holds: bool| {
            let status = if holds { "True" } else { "False" }.to_owned();
            let last_transition_time = previous
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: type_.to_owned(),
                status,
                reason: self.reason().to_owned(),
                message: self.message().to_owned(),
                observed_generation: generation,
                last_transition_time,
            }
        };
        let mut out = vec![make(condition::READY, ready)];
        if reconciling {
            out.push(make(condition::RECONCILING, true));
        }
        if stalled {
            out.push(make(condition::STALLED, true));
        }
        out
    }
}

/// Whether `conditions` say the resource is Ready for `generation`.
pub fn is_ready(conditions: &[Condition], observed_generation: Option<i64>, generation: Option<i64>) -> bool {
    observed_generation == generation
        && conditions
            .iter()
            .any(|c| c.type_ == condition::READY && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn exactly_one_kstatus_state_holds() {
        let conds = Health::stalled("PartitionDecrease", "no").conditions(Some(3), &[], at(10));
        let holds: Vec<_> = conds
            .iter()
            .filter(|c| c.status == "True")
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(holds, vec![condition::STALLED]);
        assert!(
            conds
                .iter()
                .any(|c| c.type_ == condition::READY && c.status == "False")
        );
        assert!(conds.iter().all(|c| c.observed_generation == Some(3)));
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let first = Health::ready("Synced", "ok").conditions(Some(1), &[], at(10));
        let again = Health::ready("Synced", "ok").conditions(Some(2), &first, at(20));
        assert_eq!(again[0].last_transition_time, at(10));
        let flipped = Health::reconciling("Creating", "..").conditions(Some(3), &again, at(30));
        assert_eq!(flipped[0].last_transition_time, at(30));
    }
}
