//! The object graph of a job, built without I/O: the `<job>-config`
//! ConfigMap (`job.json`), the headless Service, the NetworkPolicy in front
//! of the runtime pods, the StatefulSet of runtime pods and the
//! `<job>-admin` Secret. Each carries a controller owner reference to the
//! StreamJob, so deleting the job deletes them.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Secret, Service},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use serde_json::{Value, json};
use streamops_crds::{
    KafkaClusterSpec, StreamJob, StreamJobSpec,
    common::SecretKeyRef,
    job::CheckpointSpec,
    runtime_api::{JobConfig, env},
    tenancy,
};

use super::{JOB_LABEL, JobNames, REVISION_ANNOTATION, plan::Deployment};
use crate::error::{Error, Result};

/// UID and GID the runtime runs as (distroless `nonroot`).
pub const RUNTIME_UID: i64 = 65532;
/// hostPath backing `file://` checkpoint storage (local cluster and kind only).
/// Each job sees only its own directory below it, `<namespace>/<job>`
/// ([`host_checkpoint_subpath`]).
pub const HOST_CHECKPOINT_DIR: &str = "/var/lib/streamops/checkpoints";
pub const CONTAINER: &str = "runtime";

/// How the runtime pods reach Kafka: what goes in env, which Secret keys are
/// mounted as files. Never holds a secret value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaAccess {
    pub bootstrap: String,
    pub security_protocol: Option<String>,
    pub sasl_mechanism: Option<String>,
    /// (purpose, Secret key): mounted at `/etc/streamops/kafka/<purpose>/value`.
    pub files: Vec<(&'static str, SecretKeyRef)>,
}

impl KafkaAccess {
    /// For a job with `spec.cluster`: its own Secrets, mounted as files.
    pub fn from_spec(cluster: &KafkaClusterSpec) -> Self {
        let mut files = Vec::new();
        let mut tls = false;
        if let Some(t) = &cluster.tls {
            tls = true;
            for (purpose, r) in [
                ("tls-ca", &t.ca_secret_ref),
                ("tls-cert", &t.cert_secret_ref),
                ("tls-key", &t.key_secret_ref),
            ] {
                if let Some(r) = r {
                    files.push((purpose, r.clone()));
                }
            }
        }
        let mut sasl_mechanism = None;
        if let Some(s) = &cluster.sasl {
            sasl_mechanism = Some(
                serde_json::to_value(s.mechanism)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_else(|| "PLAIN".into()),
            );
            files.push(("sasl-username", s.username_secret_ref.clone()));
            files.push(("sasl-password", s.password_secret_ref.clone()));
        }
        let protocol = match (tls, cluster.sasl.is_some()) {
            (true, true) => "SASL_SSL",
            (true, false) => "SSL",
            (false, true) => "SASL_PLAINTEXT",
            (false, false) => "PLAINTEXT",
        };
        Self {
            bootstrap: cluster.bootstrap_servers.trim().to_owned(),
            security_protocol: Some(protocol.to_owned()),
            sasl_mechanism,
            files,
        }
    }

    fn env(&self) -> Vec<Value> {
        let mut out = vec![json!({"name": env::KAFKA_BOOTSTRAP, "value": self.bootstrap})];
        if let Some(p) = &self.security_protocol {
            out.push(json!({"name": env::SECURITY_PROTOCOL, "value": p}));
        }
        if let Some(m) = &self.sasl_mechanism {
            out.push(json!({"name": env::SASL_MECHANISM, "value": m}));
        }
        for (purpose, _) in &self.files {
            let var = match *purpose {
                "tls-ca" => env::TLS_CA_FILE,
                "tls-cert" => env::TLS_CERT_FILE,
                "tls-key" => env::TLS_KEY_FILE,
                "sasl-username" => env::SASL_USERNAME_FILE,
                _ => env::SASL_PASSWORD_FILE,
            };
            out.push(
                json!({"name": var, "value": format!("{}/{purpose}/value", env::KAFKA_CREDENTIALS_DIR)}),
            );
        }
        out
    }
}

/// Everything the pod template depends on besides the deployment.
#[derive(Clone, Debug)]
pub struct PodInputs<'a> {
    pub names: &'a JobNames,
    pub image: &'a str,
    pub kafka: &'a KafkaAccess,
    /// `spec.checkpoint.storage` after defaulting to the operator's.
    pub storage: &'a str,
}

pub fn owner(job: &StreamJob) -> Option<OwnerReference> {
    use kube::Resource;
    job.controller_owner_ref(&())
}

fn labels(names: &JobNames) -> BTreeMap<String, String> {
    [
        (JOB_LABEL.to_owned(), names.job.clone()),
        (
            "app.kubernetes.io/name".to_owned(),
            "streamops-runtime".to_owned(),
        ),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "streamops-operator".to_owned(),
        ),
    ]
    .into()
}

fn metadata(name: &str, names: &JobNames, owner: &Option<OwnerReference>) -> Value {
    json!({
        "name": name,
        "namespace": names.namespace,
        "labels": labels(names),
        "ownerReferences": owner.iter().collect::<Vec<_>>(),
    })
}

/// The checkpoint storage a job's runtime writes to: `spec.checkpoint.storage`
/// as given, else the operator's default storage with `/<namespace>/<job>`
/// appended. The runtime's layout under its storage root names no job
/// (`checkpoints/task-<t>/...`) and its retention deletes every other
/// checkpoint of task t there, so two jobs must never share a root; the
/// operator's default is shared by every job that does not name its own.
pub fn job_storage(spec: &StreamJobSpec, default: &str, names: &JobNames) -> String {
    match spec.checkpoint.as_ref().and_then(|c| c.storage.clone()) {
        Some(storage) => storage,
        None => tenancy::job_storage_root(default, &names.namespace, &names.job),
    }
}

/// Why the operator refuses the spec's `checkpoint.storage` or
/// `restore.fromSavepoint` (outside the job's own root under the default
/// storage, [`tenancy::storage_outside_job`]), or `None`; always `None` when
/// the administrator allows custom storage.
pub fn storage_refusal(
    spec: &StreamJobSpec,
    default: &str,
    allow_custom: bool,
    names: &JobNames,
) -> Option<String> {
    if allow_custom {
        return None;
    }
    streamops_crds::validate::message(&tenancy::storage_outside_job(
        spec,
        default,
        &names.namespace,
        &names.job,
    ))
}

/// `job.json` for `deployment`, its checkpoints going to `storage`
/// ([`job_storage`]).
pub fn job_config(job: &StreamJob, names: &JobNames, d: &Deployment, storage: &str) -> JobConfig {
    let mut spec = d.spec.clone();
    let checkpoint = spec.checkpoint.get_or_insert(CheckpointSpec {
        interval: None,
        guarantee: None,
        storage: None,
        savepoints_to_keep: None,
        savepoint_max_age: None,
    });
    checkpoint.storage = Some(storage.to_owned());
    JobConfig {
        name: names.job.clone(),
        namespace: names.namespace.clone(),
        uid: job.metadata.uid.clone().unwrap_or_default(),
        generation: d.generation,
        spec,
        parallelism: d.parallelism,
        topics: d.topics.clone(),
        restore: d.restore.clone(),
        kafka_id_prefix: Some(d.kafka_id_prefix.clone()).filter(|p| !p.is_empty()),
        key_groups: d.key_groups,
    }
}

pub fn config_map(job: &StreamJob, names: &JobNames, d: &Deployment, storage: &str) -> Result<ConfigMap> {
    let text = serde_json::to_string_pretty(&job_config(job, names, d, storage))
        .map_err(|e| Error::Serialization(format!("job.json: {e}")))?;
    let value = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(&names.config_map(), names, &owner(job)),
        "data": {env::JOB_FILE_KEY: text},
    });
    serde_json::from_value(value).map_err(|e| Error::Serialization(format!("ConfigMap: {e}")))
}

pub fn service(job: &StreamJob, names: &JobNames) -> Result<Service> {
    let value = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(&names.service(), names, &owner(job)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": {JOB_LABEL: names.job},
            // `protocol` spelled out: Kubernetes 1.20's server-side apply needs
            // every key of the ports list's merge key.
            "ports": [{"name": "admin", "port": env::ADMIN_PORT, "targetPort": "admin", "protocol": "TCP"}],
        },
    });
    serde_json::from_value(value).map_err(|e| Error::Serialization(format!("Service: {e}")))
}

/// The label every namespace carries with its own name (Kubernetes 1.21+).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Who may connect to a job's runtime pods, from the operator's settings.
#[derive(Clone, Copy, Debug)]
pub struct AdminAccess<'a> {
    /// The operator's namespace and the labels of its pods there.
    pub operator_namespace: &'a str,
    pub operator_pods: &'a BTreeMap<String, String>,
    /// Namespaces (by label) whose pods may scrape `/metrics` on the admin
    /// port; empty: the operator's namespace.
    pub metrics_namespaces: &'a BTreeMap<String, String>,
}

/// The job's NetworkPolicy: its runtime pods accept connections on the
/// admin port only (the one port they listen on), from the operator's pods
/// (`/v1`, with the job's token) and from the metrics namespaces (`/metrics`;
/// by default the operator's namespace). Ingress only: the pods' egress
/// (Kafka, DNS, checkpoint storage) stays open. The kubelet's probes come
/// from the node, which a NetworkPolicy does not block.
pub fn network_policy(job: &StreamJob, names: &JobNames, access: &AdminAccess<'_>) -> Result<NetworkPolicy> {
    let operator_namespace: BTreeMap<&str, &str> = [(NAMESPACE_NAME_LABEL, access.operator_namespace)].into();
    let metrics_namespaces = if access.metrics_namespaces.is_empty() {
        json!(operator_namespace)
    } else {
        json!(access.metrics_namespaces)
    };
    let admin_port = json!([{"port": env::ADMIN_PORT, "protocol": "TCP"}]);
    let value = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(&names.network_policy(), names, &owner(job)),
        "spec": {
            "podSelector": {"matchLabels": {JOB_LABEL: names.job}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    // One peer with both selectors: the operator's pods in
                    // the operator's namespace (two peers would admit either).
                    "from": [{
                        "namespaceSelector": {"matchLabels": operator_namespace},
                        "podSelector": {"matchLabels": access.operator_pods},
                    }],
                    "ports": admin_port,
                },
                {
                    "from": [{"namespaceSelector": {"matchLabels": metrics_namespaces}}],
                    "ports": admin_port,
                },
            ],
        },
    });
    serde_json::from_value(value).map_err(|e| Error::Serialization(format!("NetworkPolicy: {e}")))
}

/// The admin Secret with a fresh `token` (created once, never updated).
pub fn admin_secret(job: &StreamJob, names: &JobNames, token: &str) -> Result<Secret> {
    let value = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(&names.admin_secret(), names, &owner(job)),
        "type": "Opaque",
        "stringData": {env::ADMIN_TOKEN_KEY: token},
    });
    serde_json::from_value(value).map_err(|e| Error::Serialization(format!("Secret: {e}")))
}

/// The local path of a `file://` storage URL.
pub fn file_storage_path(storage: &str) -> Option<&str> {
    storage
        .strip_prefix("file://")
        .filter(|p| p.starts_with('/') && p.len() > 1)
}

/// The StatefulSet for `deployment`: `Parallel`, `OnDelete`, the hardened
/// runtime container, `spec.resources` and `spec.podTemplate` merged in, then
/// the operator's security settings and labels enforced again on top.
pub fn statefulset(job: &StreamJob, inputs: &PodInputs<'_>, d: &Deployment) -> Result<StatefulSet> {
    let names = inputs.names;
    let mut template = pod_template(job, inputs, d)?;
    if let Some(overrides) = &job.spec.pod_template {
        if !overrides.is_object() {
            return Err(Error::InvalidPodTemplate(
                "spec.podTemplate must be an object (a pod template: metadata, spec)".into(),
            ));
        }
        merge(&mut template, overrides);
        enforce(&mut template, inputs, d);
    }
    add_checkpoint_volume(&mut template, names, inputs.storage);
    let value = json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(&names.statefulset(), names, &owner(job)),
        "spec": {
            "serviceName": names.service(),
            "replicas": d.replicas,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": {JOB_LABEL: names.job}},
            "template": template,
        },
    });
    serde_json::from_value(value).map_err(|e| {
        Error::InvalidPodTemplate(format!(
            "spec.podTemplate does not make a valid pod template: {e}"
        ))
    })
}

fn security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "readOnlyRootFilesystem": true,
        "allowPrivilegeEscalation": false,
        "privileged": false,
        "capabilities": {"drop": ["ALL"]},
    })
}

fn pod_security_context() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": RUNTIME_UID,
        "runAsGroup": RUNTIME_UID,
        "fsGroup": RUNTIME_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn pod_template(job: &StreamJob, inputs: &PodInputs<'_>, d: &Deployment) -> Result<Value> {
    let names = inputs.names;
    let mut env_vars = vec![
        json!({"name": env::JOB_FILE, "value": format!("{}/{}", env::JOB_DIR, env::JOB_FILE_KEY)}),
        json!({"name": env::POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": env::ADMIN_TOKEN_FILE, "value": format!("{}/{}", env::ADMIN_DIR, env::ADMIN_TOKEN_KEY)}),
        json!({"name": env::ADMIN_ADDR, "value": format!("0.0.0.0:{}", env::ADMIN_PORT)}),
        json!({"name": env::STATE_DIR, "value": env::STATE_PATH}),
        json!({"name": env::TERMINATION_LOG, "value": env::TERMINATION_LOG_PATH}),
    ];
    env_vars.extend(inputs.kafka.env());
    let mut volumes = vec![
        json!({"name": "job", "configMap": {"name": names.config_map()}}),
        json!({"name": "admin", "secret": {"secretName": names.admin_secret(), "defaultMode": 0o440}}),
        json!({"name": "state", "emptyDir": {}}),
        json!({"name": "tmp", "emptyDir": {}}),
    ];
    let mut mounts = vec![
        json!({"name": "job", "mountPath": env::JOB_DIR, "readOnly": true}),
        json!({"name": "admin", "mountPath": env::ADMIN_DIR, "readOnly": true}),
        json!({"name": "state", "mountPath": env::STATE_PATH}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    for (purpose, r) in &inputs.kafka.files {
        let volume = format!("kafka-{purpose}");
        volumes.push(json!({"name": volume, "secret": {
            "secretName": r.name, "items": [{"key": r.key, "path": "value"}], "defaultMode": 0o440,
        }}));
        mounts.push(json!({"name": volume, "mountPath": format!("{}/{purpose}", env::KAFKA_CREDENTIALS_DIR), "readOnly": true}));
    }
    let resources = match &job.spec.resources {
        Some(r) => {
            serde_json::to_value(r).map_err(|e| Error::InvalidPodTemplate(format!("spec.resources: {e}")))?
        }
        None => json!({}),
    };
    Ok(json!({
        "metadata": {
            "labels": labels(names),
            "annotations": {REVISION_ANNOTATION: d.revision},
        },
        "spec": {
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 30,
            "securityContext": pod_security_context(),
            "containers": [{
                "name": CONTAINER,
                "image": inputs.image,
                "args": ["run"],
                "ports": [{"name": "admin", "containerPort": env::ADMIN_PORT, "protocol": "TCP"}],
                "env": env_vars,
                "volumeMounts": mounts,
                "resources": resources,
                "securityContext": security_context(),
                // The runtime writes why it failed there (the job's reason
                // while its pods crash-loop).
                "terminationMessagePath": env::TERMINATION_LOG_PATH,
                "terminationMessagePolicy": "File",
                "readinessProbe": {
                    "httpGet": {"path": "/readyz", "port": "admin"},
                    "periodSeconds": 2, "failureThreshold": 2,
                },
                "livenessProbe": {
                    "httpGet": {"path": "/healthz", "port": "admin"},
                    "initialDelaySeconds": 10, "periodSeconds": 10, "failureThreshold": 3,
                },
            }],
            "volumes": volumes,
        },
    }))
}

/// What `spec.podTemplate` may not loosen or replace.
fn enforce(template: &mut Value, inputs: &PodInputs<'_>, d: &Deployment) {
    let names = inputs.names;
    for (k, v) in labels(names) {
        template["metadata"]["labels"][k] = json!(v);
    }
    template["metadata"]["annotations"][REVISION_ANNOTATION] = json!(d.revision);
    template["spec"]["automountServiceAccountToken"] = json!(false);
    for (k, v) in pod_security_context().as_object().into_iter().flatten() {
        template["spec"]["securityContext"][k] = v.clone();
    }
    if let Some(containers) = template["spec"]["containers"].as_array_mut() {
        for c in containers {
            for (k, v) in security_context().as_object().into_iter().flatten() {
                c["securityContext"][k] = v.clone();
            }
            if c["name"] == CONTAINER {
                c["image"] = json!(inputs.image);
                c["args"] = json!(["run"]);
                c["terminationMessagePath"] = json!(env::TERMINATION_LOG_PATH);
            }
        }
    }
}

/// The directory below [`HOST_CHECKPOINT_DIR`] that holds one job's
/// checkpoints and savepoints. The runtime's layout under its storage root
/// names no job (`checkpoints/task-<t>/...`) and its retention deletes every
/// checkpoint of task t it does not keep, so two jobs sharing a host directory
/// would delete (and could read) each other's state: every job's mount is
/// confined to a directory of its own, whatever `spec.checkpoint.storage`
/// says. Namespace and job names are DNS labels, so this is a plain relative
/// path with no `..`.
pub fn host_checkpoint_subpath(names: &JobNames) -> String {
    format!("{}/{}", names.namespace, names.job)
}

fn add_checkpoint_volume(template: &mut Value, names: &JobNames, storage: &str) {
    let Some(path) = file_storage_path(storage) else {
        return;
    };
    let Some(containers) = template["spec"]["containers"].as_array_mut() else {
        return;
    };
    let Some(runtime) = containers.iter_mut().find(|c| c["name"] == CONTAINER) else {
        return;
    };
    // A podTemplate that mounts its own (e.g. RWX) volume there wins.
    let mounted = runtime["volumeMounts"]
        .as_array()
        .is_some_and(|ms| ms.iter().any(|m| m["mountPath"] == path));
    if mounted {
        return;
    }
    if let Some(mounts) = runtime["volumeMounts"].as_array_mut() {
        mounts.push(
            json!({"name": "checkpoints", "mountPath": path, "subPath": host_checkpoint_subpath(names)}),
        );
    }
    if let Some(volumes) = template["spec"]["volumes"].as_array_mut() {
        volumes.push(json!({"name": "checkpoints", "hostPath": {"path": HOST_CHECKPOINT_DIR, "type": "DirectoryOrCreate"}}));
    }
}

/// Strategic-merge-style: objects merge key by key; lists of named objects
/// (containers, volumes, env, volumeMounts, ports) merge by `name`; other
/// values are replaced; `null` removes.
pub fn merge(base: &mut Value, overlay: &Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (Value::Array(b), Value::Array(o)) if named(b) && named(o) => {
            for item in o {
                match b.iter_mut().find(|x| x["name"] == item["name"]) {
                    Some(existing) => merge(existing, item),
                    None => b.push(item.clone()),
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

fn named(items: &[Value]) -> bool {
    !items.is_empty() && items.iter().all(|i| i.get("name").is_some_and(Value::is_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use streamops_crds::{
        job::RestoreMode,
        runtime_api::{JobTopics, RestoreConfig, SourceTopic},
    };

    fn job(pod_template: Option<Value>) -> StreamJob {
        let mut spec: streamops_crds::StreamJobSpec = serde_json::from_value(json!({
            "source": {"topics": ["clicks"], "eventTime": {"field": "record.ts"}},
            "pipeline": {"keyBy": ["record.u"], "window": {"type": "tumbling", "size": "10s"},
                         "aggregations": [{"name": "n", "function": "count"}]},
            "sink": {"topic": "out"},
            "resources": {"limits": {"memory": "512Mi"}},
        }))
        .unwrap();
        spec.pod_template = pod_template;
        let mut job = StreamJob::new("clicks-per-user", spec);
        job.metadata.namespace = Some("ns".into());
        job.metadata.uid = Some("uid-1".into());
        job
    }

    fn deployment(job: &StreamJob) -> Deployment {
        Deployment {
            spec: job.spec.defaulted(),
            generation: 3,
            parallelism: 4,
            replicas: 4,
            topics: JobTopics {
                source: vec![SourceTopic {
                    topic: "clicks".into(),
                    partitions: 8,
                }],
                layout: Vec::new(),
                sink: "out".into(),
                late_events: None,
                dead_letter: None,
                routes: Default::default(),
                repartition: "streamops.ns.clicks-per-user.repartition".into(),
                control: "streamops.ns.clicks-per-user.checkpoints".into(),
            },
            restore: RestoreConfig {
                savepoint: Some("file:///c/savepoints/sp-1".into()),
                allow_empty_state: false,
                mode: Some(RestoreMode::Savepoint),
            },
            revision: "abc".into(),
            kafka_id_prefix: "streamops.ns.clicks-per-user.uid-1".into(),
            key_groups: Some(128),
        }
    }

    fn build(job: &StreamJob, storage: &str, kafka: &KafkaAccess) -> Value {
        let names = JobNames::of(job);
        let inputs = PodInputs {
            names: &names,
            image: "runtime:v1",
            kafka,
            storage,
        };
        serde_json::to_value(statefulset(job, &inputs, &deployment(job)).unwrap()).unwrap()
    }

    fn env_of(sts: &Value) -> BTreeMap<String, Value> {
        sts["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_owned(),
                    e.get("value").cloned().unwrap_or(e["valueFrom"].clone()),
                )
            })
            .collect()
    }

    #[test]
    fn statefulset_follows_the_runtime_contract() {
        let j = job(None);
        let kafka = KafkaAccess {
            bootstrap: "b:9092".into(),
            ..KafkaAccess::default()
        };
        let sts = build(&j, "file:///var/lib/streamops/checkpoints", &kafka);
        let spec = &sts["spec"];
        assert_eq!(spec["podManagementPolicy"], "Parallel");
        assert_eq!(spec["updateStrategy"]["type"], "OnDelete");
        assert_eq!(spec["replicas"], 4);
        assert_eq!(sts["metadata"]["ownerReferences"][0]["kind"], "StreamJob");
        assert_eq!(sts["metadata"]["ownerReferences"][0]["controller"], true);
        let pod = &spec["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "runtime:v1");
        assert_eq!(c["args"], json!(["run"]));
        assert_eq!(c["securityContext"]["runAsUser"], 65532);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
        let vars = env_of(&sts);
        let env = &vars;
        assert_eq!(env["STREAMOPS_JOB_FILE"], "/etc/streamops/job/job.json");
        assert_eq!(env["POD_NAME"]["fieldRef"]["fieldPath"], "metadata.name");
        assert_eq!(env["STREAMOPS_ADMIN_TOKEN_FILE"], "/etc/streamops/admin/token");
        assert_eq!(env["STREAMOPS_ADMIN_ADDR"], "0.0.0.0:8080");
        assert_eq!(env["STREAMOPS_STATE_DIR"], "/var/lib/streamops/state");
        assert_eq!(env["STREAMOPS_KAFKA_BOOTSTRAP"], "b:9092");
        let volumes: BTreeMap<String, Value> = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap().to_owned(), v.clone()))
            .collect();
        assert_eq!(volumes["job"]["configMap"]["name"], "clicks-per-user-config");
        assert_eq!(volumes["admin"]["secret"]["secretName"], "clicks-per-user-admin");
        assert_eq!(volumes["checkpoints"]["hostPath"]["path"], HOST_CHECKPOINT_DIR);
        assert_eq!(volumes["checkpoints"]["hostPath"]["type"], "DirectoryOrCreate");
        let mounts = c["volumeMounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["name"] == "checkpoints"
            && m["mountPath"] == "/var/lib/streamops/checkpoints"
            && m["subPath"] == "ns/clicks-per-user"));
        assert_eq!(
            spec["template"]["metadata"]["annotations"][REVISION_ANNOTATION],
            "abc"
        );
        // s3:// needs no volume.
        let sts = build(&j, "s3://bucket/prefix", &kafka);
        assert!(
            !sts["spec"]["template"]["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["name"] == "checkpoints")
        );
    }

    #[test]
    fn pod_template_overrides_merge_but_cannot_loosen_security() {
        let j = job(Some(json!({
            "metadata": {"labels": {"team": "ads", JOB_LABEL: "other"}},
            "spec": {
                "nodeSelector": {"disk": "ssd"},
                "automountServiceAccountToken": true,
                "securityContext": {"runAsNonRoot": false},
                "containers": [{
                    "name": "runtime",
                    "image": "evil",
                    "securityContext": {"privileged": true, "readOnlyRootFilesystem": false},
                    "volumeMounts": [{"name": "shared", "mountPath": "/var/lib/streamops/checkpoints"}],
                }],
                "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": "rwx"}}],
            },
        })));
        let sts = build(
            &j,
            "file:///var/lib/streamops/checkpoints",
            &KafkaAccess::default(),
        );
        let t = &sts["spec"]["template"];
        assert_eq!(t["metadata"]["labels"]["team"], "ads");
        assert_eq!(t["metadata"]["labels"][JOB_LABEL], "clicks-per-user");
        assert_eq!(t["spec"]["nodeSelector"]["disk"], "ssd");
        assert_eq!(t["spec"]["automountServiceAccountToken"], false);
        assert_eq!(t["spec"]["securityContext"]["runAsNonRoot"], true);
        let c = &t["spec"]["containers"][0];
        assert_eq!(c["image"], "runtime:v1");
        assert_eq!(c["securityContext"]["privileged"], false);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        // The template's own RWX volume replaces the hostPath one.
        let volumes = t["spec"]["volumes"].as_array().unwrap();
        assert!(volumes.iter().any(|v| v["name"] == "shared"));
        assert!(!volumes.iter().any(|v| v["name"] == "checkpoints"));
        assert!(
            c["env"].as_array().unwrap().len() >= 5,
            "env merged, not replaced"
        );
    }

    #[test]
    fn spec_credentials_are_mounted_files_never_env_values() {
        let cluster: KafkaClusterSpec = serde_json::from_value(json!({
            "bootstrapServers": "kafka:9093",
            "tls": {"caSecretRef": {"name": "ca", "key": "ca.crt"}},
            "sasl": {"mechanism": "SCRAM-SHA-512",
                     "usernameSecretRef": {"name": "creds", "key": "user"},
                     "passwordSecretRef": {"name": "creds", "key": "password"}},
        }))
        .unwrap();
        let access = KafkaAccess::from_spec(&cluster);
        let sts = build(&job(None), "s3://b", &access);
        let env = env_of(&sts);
        assert_eq!(env[env::SECURITY_PROTOCOL], "SASL_SSL");
        assert_eq!(env[env::SASL_MECHANISM], "SCRAM-SHA-512");
        assert_eq!(
            env[env::SASL_PASSWORD_FILE],
            "/etc/streamops/kafka/sasl-password/value"
        );
        assert_eq!(env[env::TLS_CA_FILE], "/etc/streamops/kafka/tls-ca/value");
        assert!(
            !format!("{env:?}").contains("password\""),
            "no secret value in env"
        );
        let volumes = sts["spec"]["template"]["spec"]["volumes"].as_array().unwrap();
        let pw = volumes
            .iter()
            .find(|v| v["name"] == "kafka-sasl-password")
            .unwrap();
        assert_eq!(pw["secret"]["secretName"], "creds");
        assert_eq!(pw["secret"]["items"][0]["key"], "password");
    }

    #[test]
    fn config_map_holds_the_documented_job_json() {
        let j = job(None);
        let names = JobNames::of(&j);
        let cm = config_map(&j, &names, &deployment(&j), "file:///c/ns/clicks-per-user").unwrap();
        let text = &cm.data.unwrap()["job.json"];
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["name"], "clicks-per-user");
        assert_eq!(v["namespace"], "ns");
        assert_eq!(v["uid"], "uid-1");
        assert_eq!(v["generation"], 3);
        assert_eq!(v["parallelism"], 4);
        assert_eq!(
            v["topics"]["source"],
            json!([{"topic": "clicks", "partitions": 8}])
        );
        assert_eq!(v["topics"]["lateEvents"], Value::Null);
        assert_eq!(v["topics"]["control"], "streamops.ns.clicks-per-user.checkpoints");
        assert_eq!(v["restore"]["savepoint"], "file:///c/savepoints/sp-1");
        assert_eq!(v["restore"]["allowEmptyState"], false);
        assert_eq!(v["spec"]["upgradeMode"], "savepoint", "the defaulted spec");
        assert_eq!(v["spec"]["checkpoint"]["storage"], "file:///c/ns/clicks-per-user");
    }

    #[test]
    fn jobs_on_the_default_storage_get_a_root_of_their_own() {
        let j = job(None);
        let names = JobNames::of(&j);
        let default = "file:///var/lib/streamops/checkpoints/";
        assert_eq!(
            job_storage(&j.spec, default, &names),
            "file:///var/lib/streamops/checkpoints/ns/clicks-per-user"
        );
        let other = JobNames {
            job: "other".into(),
            namespace: "ns".into(),
        };
        assert_ne!(
            job_storage(&j.spec, default, &names),
            job_storage(&j.spec, default, &other)
        );
        let mut spec = j.spec.clone();
        spec.checkpoint = Some(CheckpointSpec {
            interval: None,
            guarantee: None,
            storage: Some("s3://bucket/clicks".into()),
            savepoints_to_keep: None,
            savepoint_max_age: None,
        });
        assert_eq!(job_storage(&spec, default, &names), "s3://bucket/clicks");
    }

    #[test]
    fn foreign_storage_is_refused_unless_the_administrator_allows_it() {
        let j = job(None);
        let names = JobNames::of(&j);
        let default = "s3://bucket/checkpoints";
        let mut spec = j.spec.clone();
        assert_eq!(
            storage_refusal(&spec, default, false, &names),
            None,
            "the default"
        );
        let own = job_storage(&spec, default, &names);
        spec.checkpoint = Some(CheckpointSpec {
            interval: None,
            guarantee: None,
            storage: Some(format!("{own}/v2")),
            savepoints_to_keep: None,
            savepoint_max_age: None,
        });
        assert_eq!(
            storage_refusal(&spec, default, false, &names),
            None,
            "below its own"
        );
        if let Some(c) = spec.checkpoint.as_mut() {
            c.storage = Some("s3://bucket/checkpoints/ns/other-job".into());
        }
        spec.restore = Some(streamops_crds::job::RestoreSpec {
            from_savepoint: Some("s3://bucket/checkpoints/ns/other-job/savepoints/sp-1".into()),
            allow_empty_state: None,
        });
        let message = storage_refusal(&spec, default, false, &names).expect("refused");
        assert!(message.starts_with("spec.checkpoint.storage: "), "{message}");
        assert!(message.contains("; spec.restore.fromSavepoint: "), "{message}");
        assert!(
            message.contains(&format!("{own:?}")),
            "names the job's own root: {message}"
        );
        assert_eq!(storage_refusal(&spec, default, true, &names), None, "allowed");
    }

    /// Where a job's pods mount their checkpoint volume, and the host
    /// directory behind that mount.
    fn checkpoint_mount(job: &StreamJob, storage: &str) -> (String, String) {
        let sts = build(job, storage, &KafkaAccess::default());
        let pod = &sts["spec"]["template"]["spec"];
        let named = |list: &Value| {
            list.as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == "checkpoints")
                .unwrap()
                .clone()
        };
        let (volume, mount) = (
            named(&pod["volumes"]),
            named(&pod["containers"][0]["volumeMounts"]),
        );
        let host = format!(
            "{}/{}",
            volume["hostPath"]["path"].as_str().unwrap(),
            mount["subPath"].as_str().unwrap_or_default()
        );
        (mount["mountPath"].as_str().unwrap().to_owned(), host)
    }

    /// The host directory a job's pods see: each job its own, whatever
    /// storage path its spec names (two jobs naming the same `file://` path,
    /// or the same job name in two namespaces, still never share one).
    fn host_dir_of(job: &StreamJob, storage: &str) -> String {
        checkpoint_mount(job, storage).1
    }

    const HOST_CHECKPOINT_DIR_URL: &str = "file:///var/lib/streamops/checkpoints";

    #[test]
    fn every_job_gets_a_host_checkpoint_directory_of_its_own() {
        let a = job(None);
        let mut b = job(None);
        b.metadata.name = Some("other-job".into());
        let mut c = job(None);
        c.metadata.namespace = Some("other-ns".into());
        let shared = "file:///var/lib/streamops/checkpoints";
        let dirs = [
            host_dir_of(&a, shared),
            host_dir_of(&b, shared),
            host_dir_of(&c, shared),
        ];
        assert_eq!(dirs[0], format!("{HOST_CHECKPOINT_DIR}/ns/clicks-per-user"));
        assert_eq!(dirs[1], format!("{HOST_CHECKPOINT_DIR}/ns/other-job"));
        assert_eq!(dirs[2], format!("{HOST_CHECKPOINT_DIR}/other-ns/clicks-per-user"));
        // The operator's default storage: the job's storage path is
        // `<default>/<namespace>/<job>`, mounted there, so the path in the
        // container and on the node are the same.
        let names = JobNames::of(&a);
        let default = job_storage(&a.spec, HOST_CHECKPOINT_DIR_URL, &names);
        assert_eq!(
            default,
            format!("file://{HOST_CHECKPOINT_DIR}/ns/clicks-per-user")
        );
        let own = format!("{HOST_CHECKPOINT_DIR}/ns/clicks-per-user");
        assert_eq!(checkpoint_mount(&a, &default), (own.clone(), own));
        // A storage path naming another job's directory still lands in the
        // job's own host directory.
        assert_eq!(
            host_dir_of(&b, "file:///var/lib/streamops/checkpoints/ns/clicks-per-user"),
            dirs[1]
        );
    }

    #[test]
    fn network_policy_admits_only_the_operator_and_metrics_namespaces_to_the_admin_port() {
        let j = job(None);
        let names = JobNames::of(&j);
        let operator_pods = BTreeMap::from([
            (
                "app.kubernetes.io/name".to_owned(),
                "streamops-operator".to_owned(),
            ),
            ("app.kubernetes.io/instance".to_owned(), "so".to_owned()),
        ]);
        let everywhere_default = BTreeMap::new();
        let access = AdminAccess {
            operator_namespace: "streamops-system",
            operator_pods: &operator_pods,
            metrics_namespaces: &everywhere_default,
        };
        let np = serde_json::to_value(network_policy(&j, &names, &access).unwrap()).unwrap();
        assert_eq!(np["metadata"]["name"], "clicks-per-user");
        assert_eq!(np["metadata"]["namespace"], "ns");
        assert_eq!(np["metadata"]["labels"][JOB_LABEL], "clicks-per-user");
        assert_eq!(
            np["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "streamops-operator"
        );
        let owner = &np["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"], "StreamJob");
        assert_eq!(owner["name"], "clicks-per-user");
        assert_eq!(owner["uid"], "uid-1");
        assert_eq!(owner["controller"], true);

        // It selects exactly the job's runtime pods: every label it matches
        // is on the pod template, and it is the StatefulSet's own selector.
        let sts = build(&j, "s3://b", &KafkaAccess::default());
        let selector = &np["spec"]["podSelector"]["matchLabels"];
        assert_eq!(selector, &sts["spec"]["selector"]["matchLabels"]);
        for (k, v) in selector.as_object().unwrap() {
            assert_eq!(&sts["spec"]["template"]["metadata"]["labels"][k], v);
        }

        // Ingress only (egress stays open), on the one port the pods listen on.
        let spec = &np["spec"];
        assert_eq!(spec["policyTypes"], json!(["Ingress"]));
        assert!(spec.get("egress").is_none());
        let container_ports = &sts["spec"]["template"]["spec"]["containers"][0]["ports"];
        assert_eq!(
            container_ports,
            &json!([{"name": "admin", "containerPort": 8080, "protocol": "TCP"}])
        );
        let ingress = spec["ingress"].as_array().unwrap();
        assert_eq!(ingress.len(), 2);
        for rule in ingress {
            assert_eq!(rule["ports"], json!([{"port": 8080, "protocol": "TCP"}]));
        }
        // The operator's pods: namespace AND pod labels, in one peer.
        assert_eq!(
            ingress[0]["from"],
            json!([{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "streamops-system"}},
                "podSelector": {"matchLabels": {
                    "app.kubernetes.io/name": "streamops-operator",
                    "app.kubernetes.io/instance": "so",
                }},
            }])
        );
        // /metrics: by default from the operator's namespace only.
        assert_eq!(
            ingress[1]["from"],
            json!([{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "streamops-system"}}}])
        );

        // Other metrics namespaces replace that, never the operator's rule.
        let monitoring = BTreeMap::from([("team".to_owned(), "monitoring".to_owned())]);
        let np = network_policy(
            &j,
            &names,
            &AdminAccess {
                metrics_namespaces: &monitoring,
                ..access
            },
        )
        .unwrap();
        let np = serde_json::to_value(np).unwrap();
        assert_eq!(np["spec"]["ingress"][0], json!(ingress[0]));
        assert_eq!(
            np["spec"]["ingress"][1]["from"],
            json!([{"namespaceSelector": {"matchLabels": {"team": "monitoring"}}}])
        );
    }

    /// The chart's NetworkPolicy for the operator must let it reach what
    /// this module builds: pods with these labels, on the admin port.
    #[test]
    fn the_charts_operator_egress_names_the_runtime_pods_and_admin_port() {
        let chart = include_str!("../../../charts/streamops/templates/networkpolicy.yaml");
        let rule = &chart[chart.find("- to:").expect("an egress rule with `to`")..];
        let names = JobNames {
            job: "j".into(),
            namespace: "ns".into(),
        };
        for (k, v) in labels(&names).into_iter().filter(|(k, _)| k != JOB_LABEL) {
            assert!(
                rule.contains(&format!("{k}: {v}")),
                "{k}: {v} missing from:\n{rule}"
            );
        }
        let port = format!("- {{port: {}, protocol: TCP}}", env::ADMIN_PORT);
        assert!(rule.contains(&port), "{port} missing from:\n{rule}");
    }

    #[test]
    fn file_storage_paths() {
        assert_eq!(file_storage_path("file:///var/x"), Some("/var/x"));
        assert_eq!(file_storage_path("file://relative"), None);
        assert_eq!(file_storage_path("s3://b/p"), None);
    }
}
