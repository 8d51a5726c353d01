//! Operator-wide settings: every flag has an environment fallback so the
//! Helm chart can set them either way.

use std::{collections::BTreeMap, fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{Args, ValueEnum};
use streamops_crds::tenancy::{PrefixMap, Separator, TopicPolicy};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `--topic-name-policy`: which Kafka topic names a namespace's StreamTopics
/// may manage ([`TopicPolicy`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum TopicNamePolicy {
    /// Any name outside the internal `streamops.` space.
    #[default]
    Any,
    /// `<namespace><separator><name>` (`--topic-name-separator`).
    #[value(name = "namespacePrefix")]
    NamespacePrefix,
    /// The prefixes `--topic-name-prefixes` lists for the namespace.
    #[value(name = "prefixMap")]
    PrefixMap,
}

/// Settings of `streamops-operator run` (and of [`crate::run`] in tests).
#[derive(Args, Clone, Debug)]
pub struct OperatorConfig {
    /// Default Kafka bootstrap servers, for resources without `spec.cluster`.
    #[arg(long, env = "STREAMOPS_KAFKA_BOOTSTRAP")]
    pub kafka_bootstrap: Option<String>,
    /// Default cluster credentials: `security.protocol` (PLAINTEXT, SSL,
    /// SASL_PLAINTEXT, SASL_SSL). Used only with `--kafka-bootstrap`.
    #[arg(long, env = "STREAMOPS_KAFKA_SECURITY_PROTOCOL")]
    pub kafka_security_protocol: Option<String>,
    /// Default cluster credentials: SASL mechanism (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512).
    #[arg(long, env = "STREAMOPS_KAFKA_SASL_MECHANISM")]
    pub kafka_sasl_mechanism: Option<String>,
    /// Default cluster credentials: file holding the SASL user name (e.g. a mounted Secret).
    #[arg(long, env = "STREAMOPS_KAFKA_SASL_USERNAME_FILE")]
    pub kafka_sasl_username_file: Option<PathBuf>,
    /// Default cluster credentials: file holding the SASL password.
    #[arg(long, env = "STREAMOPS_KAFKA_SASL_PASSWORD_FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,
    /// Default cluster credentials: CA bundle (PEM) file.
    #[arg(long, env = "STREAMOPS_KAFKA_TLS_CA_FILE")]
    pub kafka_tls_ca_file: Option<PathBuf>,
    /// Default cluster credentials: client certificate (PEM) file.
    #[arg(long, env = "STREAMOPS_KAFKA_TLS_CERT_FILE")]
    pub kafka_tls_cert_file: Option<PathBuf>,
    /// Default cluster credentials: client private key (PEM) file.
    #[arg(long, env = "STREAMOPS_KAFKA_TLS_KEY_FILE")]
    pub kafka_tls_key_file: Option<PathBuf>,
    /// Timeout of each Kafka admin request.
    #[arg(long, env = "STREAMOPS_KAFKA_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub kafka_timeout: Duration,
    /// How often a healthy topic is compared with Kafka again (drift revert).
    #[arg(long, env = "STREAMOPS_RESYNC_INTERVAL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
    /// First retry delay after a transient failure; doubles per consecutive failure.
    #[arg(long, env = "STREAMOPS_RETRY_BASE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub retry_base: Duration,
    /// Longest retry delay after repeated transient failures.
    #[arg(long, env = "STREAMOPS_RETRY_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub retry_max: Duration,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "STREAMOPS_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Address of the metrics/health HTTP server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "STREAMOPS_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Elect a leader through a coordination.k8s.io/v1 Lease before acting.
    #[arg(long, env = "STREAMOPS_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "STREAMOPS_LEASE_NAME", default_value = "streamops-operator")]
    pub lease_name: String,
    /// The operator's own namespace (the chart sets POD_NAMESPACE from the
    /// downward API): its leader-election Lease lives there, and the runtime
    /// NetworkPolicies admit the operator's pods from it.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease (default: the pod name / host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a Lease stays valid without renewal.
    #[arg(long, env = "STREAMOPS_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How often the leader renews its Lease.
    #[arg(long, env = "STREAMOPS_LEASE_RENEW", default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_renew: Duration,
    /// Log format.
    #[arg(long, env = "STREAMOPS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Image of StreamJob runtime pods without `spec.image`.
    #[arg(long, env = "STREAMOPS_RUNTIME_IMAGE")]
    pub runtime_image: Option<String>,
    /// Checkpoint storage of StreamJobs without `spec.checkpoint.storage`.
    /// `file://` paths are a hostPath on the node: local clusters and kind only.
    #[arg(
        long,
        env = "STREAMOPS_CHECKPOINT_STORAGE",
        default_value = "file:///var/lib/streamops/checkpoints"
    )]
    pub checkpoint_storage: String,
    /// Timeout of each call to a runtime pod's admin API.
    #[arg(long, env = "STREAMOPS_RUNTIME_ADMIN_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub runtime_admin_timeout: Duration,
    /// Reconciles running at once, per controller (StreamTopic, StreamJob);
    /// 0 = unbounded. Bounds the memory of a burst (1,000 objects applied at
    /// once); the rest wait in the controller's queue.
    #[arg(long, env = "STREAMOPS_RECONCILE_CONCURRENCY", default_value_t = DEFAULT_RECONCILE_CONCURRENCY)]
    pub reconcile_concurrency: u16,
    /// Give every StreamJob a NetworkPolicy (`<job>`) under which its runtime
    /// pods accept connections only on the admin port, and only from the
    /// operator's pods and from `--runtime-metrics-namespaces`. Turning it
    /// off creates no more of them and deletes none (they go with their job).
    #[arg(long, env = "STREAMOPS_NETWORK_POLICY", default_value_t = true, action = clap::ArgAction::Set)]
    pub network_policy: bool,
    /// Labels of the operator's own pods, `key=value,...`: the pods of
    /// `--lease-namespace` that the runtime NetworkPolicies admit.
    #[arg(long, env = "STREAMOPS_OPERATOR_POD_LABELS", default_value = DEFAULT_OPERATOR_POD_LABELS)]
    pub operator_pod_labels: MatchLabels,
    /// Namespaces, by label (`key=value,...`), whose pods may reach the
    /// runtime pods' admin port, which also serves `/metrics` (`/v1` still
    /// needs the job's token); empty: the operator's namespace only.
    #[arg(long, env = "STREAMOPS_RUNTIME_METRICS_NAMESPACES", default_value = "")]
    pub runtime_metrics_namespaces: MatchLabels,
    /// Which Kafka topic names the StreamTopics of a namespace may create,
    /// adopt, change and delete: `any`, `namespacePrefix` or `prefixMap`. In
    /// every mode the internal `streamops.` topics (the StreamJobs'
    /// repartition and checkpoint topics) are refused.
    #[arg(long, env = "STREAMOPS_TOPIC_NAME_POLICY", value_enum, default_value_t = TopicNamePolicy::Any)]
    pub topic_name_policy: TopicNamePolicy,
    /// `namespacePrefix`: between the namespace and the rest of a topic
    /// name, `.` or `_`.
    #[arg(long, env = "STREAMOPS_TOPIC_NAME_SEPARATOR", default_value = ".")]
    pub topic_name_separator: Separator,
    /// `prefixMap`: the prefixes each namespace may use,
    /// `namespace=prefix,prefix;namespace=prefix`; a namespace not listed
    /// may manage no topics.
    #[arg(long, env = "STREAMOPS_TOPIC_NAME_PREFIXES", default_value = "")]
    pub topic_name_prefixes: PrefixMap,
    /// Let a StreamJob's `spec.checkpoint.storage` and
    /// `spec.restore.fromSavepoint` point anywhere. Off: they must lie under
    /// the job's own `<--checkpoint-storage>/<namespace>/<job>`, so no job
    /// reads, overwrites or restores another job's state.
    #[arg(long, env = "STREAMOPS_ALLOW_CUSTOM_CHECKPOINT_STORAGE", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_custom_checkpoint_storage: bool,
}

impl OperatorConfig {
    /// The topic-name policy the flags describe. `--topic-name-prefixes`
    /// counts only in `prefixMap` mode ([`Self::check_tenancy`] refuses it
    /// elsewhere).
    pub fn topic_policy(&self) -> TopicPolicy {
        match self.topic_name_policy {
            TopicNamePolicy::Any => TopicPolicy::Any,
            TopicNamePolicy::NamespacePrefix => TopicPolicy::NamespacePrefix(self.topic_name_separator),
            TopicNamePolicy::PrefixMap => TopicPolicy::PrefixMap(self.topic_name_prefixes.clone()),
        }
    }

    /// Refuses tenancy settings that say something other than what would be
    /// enforced: prefixes given while the policy ignores them would leave
    /// every namespace more freedom than the administrator wrote down.
    pub fn check_tenancy(&self) -> Result<(), String> {
        if self.topic_name_policy != TopicNamePolicy::PrefixMap && !self.topic_name_prefixes.0.is_empty() {
            return Err(format!(
                "--topic-name-prefixes ({}) is set but --topic-name-policy is {}: the prefixes count only with \
                 --topic-name-policy=prefixMap (chart: tenancy.topicNames.policy: prefixMap)",
                self.topic_name_prefixes,
                self.topic_policy().mode()
            ));
        }
        Ok(())
    }
}

/// The chart's selector labels of the operator's pods, less the release's
/// `app.kubernetes.io/instance` (which the chart adds).
pub const DEFAULT_OPERATOR_POD_LABELS: &str = "app.kubernetes.io/name=streamops-operator";

/// A label selector's `matchLabels`, written `key=value,key=value` (empty:
/// none). Keys and values are checked for the characters Kubernetes allows,
/// so a typo fails at start, not at the first apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MatchLabels(pub BTreeMap<String, String>);

impl FromStr for MatchLabels {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut labels = BTreeMap::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?}: expected key=value"))?;
            let (key, value) = (key.trim(), value.trim());
            let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/');
            if key.is_empty() || key.len() > 253 || !key.chars().all(allowed) {
                return Err(format!("{pair:?}: {key:?} is not a label key"));
            }
            if value.len() > 63 || !value.chars().all(|c| c != '/' && allowed(c)) {
                return Err(format!("{pair:?}: {value:?} is not a label value"));
            }
            if labels.insert(key.to_owned(), value.to_owned()).is_some() {
                return Err(format!("label {key:?} given twice"));
            }
        }
        Ok(MatchLabels(labels))
    }
}

impl fmt::Display for MatchLabels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&pairs.join(","))
    }
}

/// See [`OperatorConfig::reconcile_concurrency`].
pub const DEFAULT_RECONCILE_CONCURRENCY: u16 = 16;

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            kafka_bootstrap: None,
            kafka_security_protocol: None,
            kafka_sasl_mechanism: None,
            kafka_sasl_username_file: None,
            kafka_sasl_password_file: None,
            kafka_tls_ca_file: None,
            kafka_tls_cert_file: None,
            kafka_tls_key_file: None,
            kafka_timeout: Duration::from_secs(10),
            resync_interval: Duration::from_secs(300),
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            watch_namespace: None,
            http_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            leader_election: true,
            lease_name: "streamops-operator".into(),
            lease_namespace: "default".into(),
            identity: None,
            lease_duration: Duration::from_secs(15),
            lease_renew: Duration::from_secs(5),
            log_format: LogFormat::Text,
            runtime_image: None,
            checkpoint_storage: "file:///var/lib/streamops/checkpoints".into(),
            runtime_admin_timeout: Duration::from_secs(3),
            reconcile_concurrency: DEFAULT_RECONCILE_CONCURRENCY,
            network_policy: true,
            operator_pod_labels: DEFAULT_OPERATOR_POD_LABELS.parse().unwrap_or_default(),
            runtime_metrics_namespaces: MatchLabels::default(),
            topic_name_policy: TopicNamePolicy::Any,
            topic_name_separator: Separator::Dot,
            topic_name_prefixes: PrefixMap::default(),
            allow_custom_checkpoint_storage: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn match_labels_parse_and_refuse_what_kubernetes_would() {
        let parsed: MatchLabels = " app.kubernetes.io/name=streamops-operator, team = ads ,"
            .parse()
            .unwrap();
        assert_eq!(
            parsed.0,
            BTreeMap::from([
                (
                    "app.kubernetes.io/name".to_owned(),
                    "streamops-operator".to_owned()
                ),
                ("team".to_owned(), "ads".to_owned()),
            ])
        );
        assert_eq!(
            parsed.to_string(),
            "app.kubernetes.io/name=streamops-operator,team=ads"
        );
        assert_eq!("".parse::<MatchLabels>().unwrap(), MatchLabels::default());
        assert_eq!("empty=".parse::<MatchLabels>().unwrap().0["empty"], "");
        for bad in [
            "team",
            "=ads",
            "a b=c",
            "team=a/b",
            "a=1,a=2",
            &format!("k={}", "v".repeat(64)),
        ] {
            assert!(bad.parse::<MatchLabels>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_are_the_flags_defaults() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            config: OperatorConfig,
        }
        let parsed = <Cli as clap::Parser>::try_parse_from(["streamops-operator"])
            .unwrap()
            .config;
        let default = OperatorConfig::default();
        assert_eq!(parsed.network_policy, default.network_policy);
        assert_eq!(parsed.operator_pod_labels, default.operator_pod_labels);
        assert_eq!(
            parsed.runtime_metrics_namespaces,
            default.runtime_metrics_namespaces
        );
        assert_eq!(
            default.operator_pod_labels.to_string(),
            DEFAULT_OPERATOR_POD_LABELS
        );
        assert_eq!(parsed.topic_policy(), default.topic_policy());
        assert_eq!(parsed.topic_policy(), TopicPolicy::Any);
        assert_eq!(parsed.topic_name_separator, default.topic_name_separator);
        assert_eq!(parsed.topic_name_prefixes, default.topic_name_prefixes);
        assert!(!parsed.allow_custom_checkpoint_storage);
        assert_eq!(
            parsed.allow_custom_checkpoint_storage,
            default.allow_custom_checkpoint_storage
        );
    }

    fn parse(args: &[&str]) -> Result<OperatorConfig, clap::Error> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            config: OperatorConfig,
        }
        let argv = std::iter::once("streamops-operator").chain(args.iter().copied());
        <Cli as clap::Parser>::try_parse_from(argv).map(|c| c.config)
    }

    #[test]
    fn tenancy_flags_become_the_policy() {
        let c = parse(&[
            "--topic-name-policy",
            "namespacePrefix",
            "--topic-name-separator",
            "_",
        ])
        .unwrap();
        assert_eq!(
            c.topic_policy(),
            TopicPolicy::NamespacePrefix(Separator::Underscore)
        );
        assert_eq!(c.check_tenancy(), Ok(()));

        let c = parse(&[
            "--topic-name-policy=prefixMap",
            "--topic-name-prefixes=team-a=orders.,payments.;team-b=ads.",
        ])
        .unwrap();
        let TopicPolicy::PrefixMap(map) = c.topic_policy() else {
            panic!("expected a prefix map, got {:?}", c.topic_policy());
        };
        assert_eq!(
            map.0["team-a"],
            vec!["orders.".to_owned(), "payments.".to_owned()]
        );
        assert_eq!(map.0["team-b"], vec!["ads.".to_owned()]);
        assert_eq!(c.check_tenancy(), Ok(()));

        let c = parse(&["--allow-custom-checkpoint-storage=true"]).unwrap();
        assert!(c.allow_custom_checkpoint_storage);
    }

    #[test]
    fn bad_tenancy_flags_are_refused_at_start() {
        for bad in [
            &["--topic-name-policy", "namespace-prefix"][..],
            &["--topic-name-policy", "strict"],
            &["--topic-name-separator", "-"],
            &["--topic-name-prefixes", "team-a=streamops."],
            &["--topic-name-prefixes", "team-a"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        // Prefixes without prefixMap would not be enforced: refused.
        let c = parse(&["--topic-name-prefixes=team-a=orders."]).unwrap();
        let message = c.check_tenancy().unwrap_err();
        assert!(message.contains("--topic-name-policy=prefixMap"), "{message}");
        let c = parse(&[
            "--topic-name-policy=namespacePrefix",
            "--topic-name-prefixes=team-a=orders.",
        ])
        .unwrap();
        assert!(c.check_tenancy().is_err());
    }
}
