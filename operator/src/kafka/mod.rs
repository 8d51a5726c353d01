//! Reaching Kafka: client settings from a resource's `spec.cluster` (with
//! Secrets from its own namespace) or from the operator's defaults, and a
//! bounded cache of admin clients per distinct setting.
//!
//! Credential rule: the operator's own credentials (files, e.g. a mounted
//! Secret) go only with its own default bootstrap servers. A resource that
//! names bootstrap servers gets exactly the credentials its own Secrets hold,
//! so no user can make the operator send its credentials to an address they
//! typed.

pub mod admin;
pub mod cache;
pub mod failure;
mod incremental;
pub mod topic;

use std::{
    collections::BTreeMap,
    fmt,
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use rdkafka::ClientConfig;
use streamops_crds::{
    KafkaClusterSpec,
    common::{SaslMechanism, SecretKeyRef},
};

use crate::{config::OperatorConfig, error::Error};
pub use admin::KafkaAdmin;
use cache::BoundedCache;
pub use failure::{AdminFailure, FailureKind};
pub use topic::{ConfigChange, ObservedTopic};

/// Admin clients kept at once. Each is a librdkafka client with its own
/// threads and broker connections, and every distinct credential set (a
/// rotated Secret, one more `spec.cluster`) makes one.
pub const CLIENT_CACHE_CAPACITY: usize = 32;
/// An admin client unused this long is dropped (its credentials may have
/// been rotated away, its resources deleted).
pub const CLIENT_IDLE_TTL: Duration = Duration::from_secs(600);

/// librdkafka properties for one cluster, secrets included. Never logged:
/// `Debug` shows the bootstrap servers and protocol only.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientSettings(BTreeMap<String, String>);

impl fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSettings")
            .field("bootstrap.servers", &self.0.get("bootstrap.servers"))
            .field("security.protocol", &self.0.get("security.protocol"))
            .finish_non_exhaustive()
    }
}

impl ClientSettings {
    pub fn bootstrap(&self) -> &str {
        self.0.get("bootstrap.servers").map_or("", String::as_str)
    }
}

/// Credential material, already read from Secrets or files.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub tls: bool,
    pub ca_pem: Option<String>,
    pub cert_pem: Option<String>,
    pub key_pem: Option<String>,
    pub sasl: Option<(String, String, String)>, // mechanism, username, password
    /// Explicit `security.protocol` (operator defaults only).
    pub protocol: Option<String>,
}

/// The librdkafka properties for `bootstrap` with `credentials`.
pub fn properties(bootstrap: &str, credentials: &Credentials) -> ClientSettings {
    let mut props = BTreeMap::new();
    props.insert("bootstrap.servers".to_owned(), bootstrap.to_owned());
    let protocol = credentials.protocol.clone().unwrap_or_else(|| {
        match (credentials.tls, credentials.sasl.is_some()) {
            (true, true) => "SASL_SSL",
            (true, false) => "SSL",
            (false, true) => "SASL_PLAINTEXT",
            (false, false) => "PLAINTEXT",
        }
        .to_owned()
    });
    props.insert("security.protocol".to_owned(), protocol);
    for (key, value) in [
        ("ssl.ca.pem", &credentials.ca_pem),
        ("ssl.certificate.pem", &credentials.cert_pem),
        ("ssl.key.pem", &credentials.key_pem),
    ] {
        if let Some(value) = value {
            props.insert(key.to_owned(), value.clone());
        }
    }
    if let Some((mechanism, username, password)) = &credentials.sasl {
        props.insert("sasl.mechanisms".to_owned(), mechanism.clone());
        props.insert("sasl.username".to_owned(), username.clone());
        props.insert("sasl.password".to_owned(), password.clone());
    }
    ClientSettings(props)
}

fn mechanism_name(m: SaslMechanism) -> &'static str {
    match m {
        SaslMechanism::Plain => "PLAIN",
        SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
        SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
    }
}

/// The operator's default cluster, from its flags.
#[derive(Clone, Debug, Default)]
pub struct DefaultCluster {
    pub bootstrap: Option<String>,
    config: OperatorConfig,
}

impl DefaultCluster {
    pub fn new(config: &OperatorConfig) -> Self {
        Self {
            bootstrap: config.kafka_bootstrap.clone().filter(|b| !b.trim().is_empty()),
            config: config.clone(),
        }
    }

    /// Reads the credential files on every call, so a rotated Secret mount
    /// takes effect (and yields a new cached client).
    async fn credentials(&self) -> Result<Credentials, Error> {
        let c = &self.config;
        let read = |path: &Option<std::path::PathBuf>| {
            let path = path.clone();
            async move {
                match path {
                    None => Ok(None),
                    Some(p) => tokio::fs::read_to_string(&p)
                        .await
                        .map(|s| Some(s.trim_end_matches(['\n', '\r']).to_owned()))
                        .map_err(|e| {
                            Error::Credentials(format!("operator credential file {}: {e}", p.display()))
                        }),
                }
            }
        };
        let ca_pem = read(&c.kafka_tls_ca_file).await?;
        let cert_pem = read(&c.kafka_tls_cert_file).await?;
        let key_pem = read(&c.kafka_tls_key_file).await?;
        let username = read(&c.kafka_sasl_username_file).await?;
        let password = read(&c.kafka_sasl_password_file).await?;
        let sasl = match (username, password) {
            (Some(u), Some(p)) => Some((
                c.kafka_sasl_mechanism.clone().unwrap_or_else(|| "PLAIN".into()),
                u,
                p,
            )),
            _ => None,
        };
        Ok(Credentials {
            tls: ca_pem.is_some() || cert_pem.is_some(),
            ca_pem,
            cert_pem,
            key_pem,
            sasl,
            protocol: c.kafka_security_protocol.clone(),
        })
    }
}

async fn secret_value(secrets: &Api<Secret>, r: &SecretKeyRef) -> Result<String, Error> {
    let secret = secrets.get_opt(&r.name).await?.ok_or_else(|| {
        Error::Credentials(format!(
            "Secret {:?} not found in the resource's namespace",
            r.name
        ))
    })?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .map(|s| s.clone().into_bytes())
        })
        .ok_or_else(|| Error::Credentials(format!("Secret {:?} has no key {:?}", r.name, r.key)))?;
    String::from_utf8(bytes)
        .map_err(|_| Error::Credentials(format!("Secret {:?} key {:?} is not UTF-8", r.name, r.key)))
}

async fn spec_credentials(
    client: &Client,
    namespace: &str,
    spec: &KafkaClusterSpec,
) -> Result<Credentials, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut creds = Credentials::default();
    if let Some(tls) = &spec.tls {
        creds.tls = true;
        for (target, r) in [
            (&mut creds.ca_pem, &tls.ca_secret_ref),
            (&mut creds.cert_pem, &tls.cert_secret_ref),
            (&mut creds.key_pem, &tls.key_secret_ref),
        ] {
            if let Some(r) = r {
                *target = Some(secret_value(&secrets, r).await?);
            }
        }
    }
    if let Some(sasl) = &spec.sasl {
        let username = secret_value(&secrets, &sasl.username_secret_ref).await?;
        let password = secret_value(&secrets, &sasl.password_secret_ref).await?;
        creds.sasl = Some((mechanism_name(sasl.mechanism).to_owned(), username, password));
    }
    Ok(creds)
}

/// Admin clients, one per distinct [`ClientSettings`], at most
/// [`CLIENT_CACHE_CAPACITY`] of them, each dropped after
/// [`CLIENT_IDLE_TTL`] unused.
pub struct KafkaClients {
    defaults: DefaultCluster,
    timeout: Duration,
    cache: Mutex<BoundedCache<ClientSettings, KafkaAdmin>>,
}

impl KafkaClients {
    pub fn new(config: &OperatorConfig) -> Self {
        Self {
            defaults: DefaultCluster::new(config),
            timeout: config.kafka_timeout,
            cache: Mutex::new(BoundedCache::new(CLIENT_CACHE_CAPACITY, CLIENT_IDLE_TTL)),
        }
    }

    /// Settings for a resource in `namespace` with `cluster` (or the default).
    pub async fn settings(
        &self,
        client: &Client,
        namespace: &str,
        cluster: Option<&KafkaClusterSpec>,
    ) -> Result<ClientSettings, Error> {
        match cluster {
            Some(spec) => Ok(properties(
                spec.bootstrap_servers.trim(),
                &spec_credentials(client, namespace, spec).await?,
            )),
            None => {
                let bootstrap = self.defaults.bootstrap.as_deref().ok_or(Error::NoKafkaCluster)?;
                Ok(properties(bootstrap, &self.defaults.credentials().await?))
            }
        }
    }

    /// The cached admin client for `settings`, created on first use.
    pub fn admin(&self, settings: &ClientSettings) -> Result<KafkaAdmin, Error> {
        let (admin, evicted) = self.cached_or_new(settings)?;
        release(evicted);
        Ok(admin)
    }

    /// The client and the ones that left the cache (dropped by the caller,
    /// outside the lock).
    fn cached_or_new(&self, settings: &ClientSettings) -> Result<(KafkaAdmin, Vec<KafkaAdmin>), Error> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (cached, expired) = cache.get(settings, now);
        if let Some(admin) = cached {
            return Ok((admin.clone(), expired));
        }
        let mut config = ClientConfig::new();
        for (key, value) in &settings.0 {
            config.set(key, value);
        }
        // A metadata request for a topic that does not exist must not create
        // it (brokers default to auto.create.topics.enable=true, and
        // librdkafka's admin handle would ask): a topic appears only when a
        // StreamTopic creates it, so that its ownership is known.
        config
            .set("client.id", "streamops-operator")
            .set("allow.auto.create.topics", "false")
            .set("reconnect.backoff.max.ms", "2000")
            .set("log_level", "3");
        let client = match config.create() {
            Ok(client) => client,
            Err(e) => {
                drop(cache);
                release(expired);
                return Err(Error::KafkaClientConfig(format!(
                    "cannot create a Kafka client for {}: {e}",
                    settings.bootstrap()
                )));
            }
        };
        let admin = KafkaAdmin::new(client, self.timeout);
        let mut gone = cache.insert(settings.clone(), admin.clone(), now);
        gone.extend(expired);
        Ok((admin, gone))
    }
}

/// Drops clients that left the cache. Dropping the last handle of a
/// librdkafka client joins its threads, which can take a while: on a
/// blocking thread when inside a Tokio runtime, never under the cache lock.
/// A reconcile still holding a clone keeps that client until it is done.
fn release(clients: Vec<KafkaAdmin>) {
    if clients.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || drop(clients));
        }
        Err(_) => drop(clients),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_follows_credentials() {
        let plain = properties("b:9092", &Credentials::default());
        assert_eq!(plain.0["security.protocol"], "PLAINTEXT");
        let sasl_ssl = properties(
            "b:9092",
            &Credentials {
                tls: true,
                sasl: Some(("PLAIN".into(), "u".into(), "p".into())),
                ..Credentials::default()
            },
        );
        assert_eq!(sasl_ssl.0["security.protocol"], "SASL_SSL");
        assert_eq!(sasl_ssl.0["sasl.password"], "p");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let s = properties(
            "b:9092",
            &Credentials {
                sasl: Some(("PLAIN".into(), "user".into(), "hunter2".into())),
                key_pem: Some("PRIVATE".into()),
                ..Credentials::default()
            },
        );
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("PRIVATE") && !shown.contains("user"));
        assert!(shown.contains("b:9092"));
    }

    #[test]
    fn the_client_cache_keeps_at_most_its_capacity() {
        let clients = KafkaClients::new(&OperatorConfig::default());
        // Nothing listens on port 1: creating a client connects to nothing.
        let settings = |i: usize| {
            properties(
                "127.0.0.1:1",
                &Credentials {
                    sasl: Some(("PLAIN".into(), format!("user-{i}"), "p".into())),
                    ..Credentials::default()
                },
            )
        };
        for i in 0..CLIENT_CACHE_CAPACITY + 8 {
            clients.admin(&settings(i)).unwrap();
            clients.admin(&settings(i)).unwrap();
        }
        let cache = clients.cache.lock().unwrap();
        assert_eq!(cache.len(), CLIENT_CACHE_CAPACITY);
    }
}
