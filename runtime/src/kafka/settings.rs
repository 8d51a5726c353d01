//! Kafka client settings: bootstrap servers and security from the
//! environment (credentials only from files mounted from Secrets).

use crate::error::RuntimeError;
use crate::error::{Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

use rdkafka::ClientConfig;

/// Connection settings shared by every client of the runtime.
#[derive(Clone, Default, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap servers (host:port,...).
    #[arg(long = "bootstrap-servers", env = "STREAMOPS_KAFKA_BOOTSTRAP")]
    pub bootstrap: String,
    /// security.protocol (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL); default
    /// from which credentials are present.
    #[arg(long, env = "STREAMOPS_KAFKA_SECURITY_PROTOCOL")]
    pub security_protocol: Option<String>,
    #[arg(long, env = "STREAMOPS_KAFKA_SASL_MECHANISM")]
    pub sasl_mechanism: Option<String>,
    #[arg(long, env = "STREAMOPS_KAFKA_SASL_USERNAME_FILE")]
    pub sasl_username_file: Option<PathBuf>,
    #[arg(long, env = "STREAMOPS_KAFKA_SASL_PASSWORD_FILE")]
    pub sasl_password_file: Option<PathBuf>,
    #[arg(long, env = "STREAMOPS_KAFKA_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    #[arg(long, env = "STREAMOPS_KAFKA_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    #[arg(long, env = "STREAMOPS_KAFKA_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
}

/// Resolved client properties. `Debug` hides secrets.
#[derive(Clone)]
pub struct KafkaSettings {
    props: BTreeMap<String, String>,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSettings")
            .field("bootstrap.servers", &self.props.get("bootstrap.servers"))
            .field("security.protocol", &self.props.get("security.protocol"))
            .finish_non_exhaustive()
    }
}

fn read(path: &Option<PathBuf>) -> Result<Option<String>> {
    path.as_ref()
        .map(|p| {
            std::fs::read_to_string(p)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .with_context(|| format!("reading Kafka credential file {}", p.display()))
        })
        .transpose()
}

impl KafkaSettings {
    pub fn plaintext(bootstrap: &str) -> Self {
        let mut props = BTreeMap::new();
        props.insert("bootstrap.servers".into(), bootstrap.into());
        KafkaSettings { props }
    }

    pub fn from_args(a: &KafkaArgs) -> Result<Self> {
        if a.bootstrap.trim().is_empty() {
            return Err(RuntimeError::InvalidArgument(
                "no Kafka bootstrap servers (--bootstrap-servers or STREAMOPS_KAFKA_BOOTSTRAP)".into(),
            ));
        }
        let mut s = Self::plaintext(&a.bootstrap);
        let ca = read(&a.tls_ca_file)?;
        let cert = read(&a.tls_cert_file)?;
        let key = read(&a.tls_key_file)?;
        let user = read(&a.sasl_username_file)?;
        let pass = read(&a.sasl_password_file)?;
        let tls = ca.is_some() || cert.is_some();
        let sasl = user.is_some() && pass.is_some();
        let protocol = a.security_protocol.clone().unwrap_or_else(|| {
            match (tls, sasl) {
                (false, false) => "PLAINTEXT",
                (true, false) => "SSL",
                (false, true) => "SASL_PLAINTEXT",
                (true, true) => "SASL_SSL",
            }
            .to_string()
        });
        s.props.insert("security.protocol".into(), protocol);
        let pems = [
            ("ssl.ca.pem", ca),
            ("ssl.certificate.pem", cert),
            ("ssl.key.pem", key),
        ];
        for (k, v) in pems.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))) {
            s.props.insert(k.into(), v);
        }
        if let (Some(u), Some(p)) = (user, pass) {
            s.props.insert(
                "sasl.mechanisms".into(),
                a.sasl_mechanism.clone().unwrap_or_else(|| "PLAIN".into()),
            );
            s.props.insert("sasl.username".into(), u);
            s.props.insert("sasl.password".into(), p);
        }
        Ok(s)
    }

    pub fn bootstrap(&self) -> &str {
        self.props.get("bootstrap.servers").map_or("", String::as_str)
    }

    /// A client config with the connection settings applied. No client of
    /// the runtime creates topics implicitly: every topic a job uses is a
    /// StreamTopic or an internal topic the operator created, and a metadata
    /// request for a missing one (brokers default to
    /// `auto.create.topics.enable=true`) must fail rather than create it
    /// with the broker's defaults.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("allow.auto.create.topics", "false");
        for (k, v) in &self.props {
            c.set(k, v);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::producer::BaseProducer;

    /// librdkafka without OpenSSL refuses `SCRAM-*` and `SSL` at client
    /// creation ("OpenSSL not available at build time"): every
    /// `spec.cluster.tls` and SCRAM `spec.cluster.sasl` would fail. The
    /// clients are created without reaching any broker.
    #[test]
    fn tls_and_scram_clients_can_be_created() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            Some(p)
        };
        let scram = KafkaArgs {
            bootstrap: "127.0.0.1:1".into(),
            sasl_mechanism: Some("SCRAM-SHA-512".into()),
            sasl_username_file: file("user", "tenant-a\n"),
            sasl_password_file: file("password", "secret"),
            ..Default::default()
        };
        for protocol in ["SASL_PLAINTEXT", "SASL_SSL"] {
            let args = KafkaArgs {
                security_protocol: Some(protocol.into()),
                ..scram.clone()
            };
            let settings = KafkaSettings::from_args(&args).unwrap();
            settings
                .client()
                .create::<BaseProducer>()
                .unwrap_or_else(|e| panic!("{protocol} with SCRAM-SHA-512: {e}"));
        }
        let tls = KafkaArgs {
            bootstrap: "127.0.0.1:1".into(),
            ..Default::default()
        };
        let settings = KafkaSettings::from_args(&KafkaArgs {
            security_protocol: Some("SSL".into()),
            ..tls
        })
        .unwrap();
        settings
            .client()
            .create::<BaseProducer>()
            .unwrap_or_else(|e| panic!("SSL: {e}"));
        assert!(!format!("{settings:?}").contains("secret"));
    }
}
