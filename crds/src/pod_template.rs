//! `spec.podTemplate` is an allow-list (as Strimzi's templates are): only
//! fields that cannot widen what the runtime pod may do. Anything else is
//! refused as `InvalidSpec` naming the field, before any object is written;
//! whoever may create a StreamJob must not get more than the runtime's own
//! non-root, read-only, capability-less pod through it (no host namespaces,
//! no hostPath, no other ServiceAccount or token, no init containers or
//! sidecars, no security context of their own).
//!
//! The operator still enforces its security settings on the merged template
//! afterwards (`operator/src/job/resources.rs`), as a second line.

use serde_json::Value;

use crate::FieldError;

const F: &str = "spec.podTemplate";

/// The one container a template may address.
pub const RUNTIME_CONTAINER: &str = "runtime";

/// Volume names the operator's own pod template uses.
const RESERVED_VOLUMES: [&str; 5] = ["job", "admin", "state", "tmp", "checkpoints"];

/// Where the operator mounts the job's config, admin token and Kafka
/// credentials: a template may not mount anything over them.
const RESERVED_MOUNT_PREFIX: &str = "/etc/streamops";

const METADATA_FIELDS: [&str; 2] = ["labels", "annotations"];
const SPEC_FIELDS: [&str; 10] = [
    "affinity",
    "tolerations",
    "nodeSelector",
    "topologySpreadConstraints",
    "priorityClassName",
    "imagePullSecrets",
    "terminationGracePeriodSeconds",
    // The pod holds only the runtime and the sandbox's pause process.
    "shareProcessNamespace",
    "volumes",
    "containers",
];
const CONTAINER_FIELDS: [&str; 4] = ["name", "env", "resources", "volumeMounts"];
const VOLUME_SOURCES: [&str; 3] = ["configMap", "secret", "persistentVolumeClaim"];
const MOUNT_FIELDS: [&str; 4] = ["name", "mountPath", "readOnly", "subPath"];
const ENV_FIELDS: [&str; 3] = ["name", "value", "valueFrom"];
const ENV_SOURCES: [&str; 4] = ["configMapKeyRef", "secretKeyRef", "fieldRef", "resourceFieldRef"];

/// Every field of `template` outside the allow-list, and every allowed
/// field used in a way that would widen the pod, as errors naming it.
pub fn validate(template: &Value, errors: &mut Vec<FieldError>) {
    let Some(top) = template.as_object() else {
        errors.push(FieldError::new(
            F,
            "must be an object (a pod template: metadata, spec)",
        ));
        return;
    };
    for (key, value) in top {
        match key.as_str() {
            "metadata" => only(value, &format!("{F}.metadata"), &METADATA_FIELDS, errors),
            "spec" => validate_spec(value, errors),
            _ => refuse(&format!("{F}.{key}"), "metadata, spec", errors),
        }
    }
}

fn validate_spec(spec: &Value, errors: &mut Vec<FieldError>) {
    let f = format!("{F}.spec");
    only(spec, &f, &SPEC_FIELDS, errors);
    let mut volumes: Vec<(String, bool)> = Vec::new();
    for (i, v) in items(spec.get("volumes"), &format!("{f}.volumes"), errors) {
        let vf = format!("{f}.volumes[{i}]");
        let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
        if name.is_empty() {
            errors.push(FieldError::new(format!("{vf}.name"), "required"));
        } else if RESERVED_VOLUMES.contains(&name) || name.starts_with("kafka-") {
            errors.push(FieldError::new(
                format!("{vf}.name"),
                format!("{name:?} is a volume of the operator's own; pick another name"),
            ));
        }
        let mut sources = 0;
        let mut writable = false;
        for key in v.as_object().into_iter().flat_map(|o| o.keys()) {
            if key == "name" {
                continue;
            }
            if VOLUME_SOURCES.contains(&key.as_str()) {
                sources += 1;
                writable = key == "persistentVolumeClaim";
            } else {
                refuse(
                    &format!("{vf}.{key}"),
                    "configMap, secret or persistentVolumeClaim volumes",
                    errors,
                );
            }
        }
        if sources != 1 {
            errors.push(FieldError::new(
                vf,
                "needs exactly one of configMap, secret, persistentVolumeClaim",
            ));
        }
        volumes.push((name.to_owned(), writable));
    }
    for (i, c) in items(spec.get("containers"), &format!("{f}.containers"), errors) {
        let cf = format!("{f}.containers[{i}]");
        if c.get("name").and_then(Value::as_str) != Some(RUNTIME_CONTAINER) {
            errors.push(FieldError::new(
                format!("{cf}.name"),
                format!("only the {RUNTIME_CONTAINER:?} container can be overridden; no sidecars"),
            ));
        }
        only(c, &cf, &CONTAINER_FIELDS, errors);
        for (j, e) in items(c.get("env"), &format!("{cf}.env"), errors) {
            let ef = format!("{cf}.env[{j}]");
            only(e, &ef, &ENV_FIELDS, errors);
            if let Some(from) = e.get("valueFrom") {
                only(from, &format!("{ef}.valueFrom"), &ENV_SOURCES, errors);
            }
        }
        for (j, m) in items(c.get("volumeMounts"), &format!("{cf}.volumeMounts"), errors) {
            let mf = format!("{cf}.volumeMounts[{j}]");
            only(m, &mf, &MOUNT_FIELDS, errors);
            let name = m.get("name").and_then(Value::as_str).unwrap_or_default();
            match volumes.iter().find(|(v, _)| v == name) {
                None => errors.push(FieldError::new(
                    format!("{mf}.name"),
                    format!("{name:?} is not a volume of this template"),
                )),
                Some((_, false)) if m.get("readOnly") != Some(&Value::Bool(true)) => {
                    errors.push(FieldError::new(
                        format!("{mf}.readOnly"),
                        "configMap and secret volumes are mounted read-only: set readOnly: true",
                    ))
                }
                Some(_) => {}
            }
            let path = m.get("mountPath").and_then(Value::as_str).unwrap_or_default();
            if !path.starts_with('/') {
                errors.push(FieldError::new(
                    format!("{mf}.mountPath"),
                    "an absolute path is required",
                ));
            } else if path == RESERVED_MOUNT_PREFIX || path.starts_with(&format!("{RESERVED_MOUNT_PREFIX}/"))
            {
                errors.push(FieldError::new(
                    format!("{mf}.mountPath"),
                    format!("{RESERVED_MOUNT_PREFIX} holds the job's config and credentials"),
                ));
            }
        }
    }
}

/// Refuses every key of object `value` outside `allowed`.
fn only(value: &Value, field: &str, allowed: &[&str], errors: &mut Vec<FieldError>) {
    let Some(o) = value.as_object() else {
        errors.push(FieldError::new(field, "must be an object"));
        return;
    };
    for key in o.keys() {
        if !allowed.contains(&key.as_str()) {
            refuse(&format!("{field}.{key}"), &allowed.join(", "), errors);
        }
    }
}

fn refuse(field: &str, allowed: &str, errors: &mut Vec<FieldError>) {
    errors.push(FieldError::new(
        field,
        format!("not allowed in a StreamJob's pod template (allowed here: {allowed})"),
    ));
}

/// The elements of an optional list field, each with its index.
fn items<'a>(value: Option<&'a Value>, field: &str, errors: &mut Vec<FieldError>) -> Vec<(usize, &'a Value)> {
    match value {
        None => Vec::new(),
        Some(Value::Array(a)) => a.iter().enumerate().collect(),
        Some(_) => {
            errors.push(FieldError::new(field, "must be a list"));
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(template: Value) -> Vec<String> {
        let mut errors = Vec::new();
        validate(&template, &mut errors);
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn what_cannot_widen_the_pod_is_accepted() {
        let ok = json!({
            "metadata": {"labels": {"team": "ads"}, "annotations": {"a": "b"}},
            "spec": {
                "nodeSelector": {"disk": "ssd"},
                "tolerations": [{"key": "k", "operator": "Exists"}],
                "affinity": {"nodeAffinity": {}},
                "topologySpreadConstraints": [],
                "priorityClassName": "high",
                "imagePullSecrets": [{"name": "regcred"}],
                "terminationGracePeriodSeconds": 60,
                "volumes": [
                    {"name": "rules", "configMap": {"name": "rules"}},
                    {"name": "certs", "secret": {"secretName": "certs"}},
                    {"name": "shared", "persistentVolumeClaim": {"claimName": "rwx"}},
                ],
                "containers": [{
                    "name": "runtime",
                    "env": [
                        {"name": "A", "value": "1"},
                        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    ],
                    "resources": {"limits": {"memory": "1Gi"}},
                    "volumeMounts": [
                        {"name": "rules", "mountPath": "/etc/rules", "readOnly": true},
                        {"name": "certs", "mountPath": "/etc/certs", "readOnly": true},
                        {"name": "shared", "mountPath": "/var/lib/streamops/checkpoints"},
                    ],
                }],
            },
        });
        assert_eq!(fields(ok), Vec::<String>::new());
    }

    /// Every way the review found to widen the pod, each refused by name.
    #[test]
    fn every_field_that_could_widen_the_pod_is_refused_by_name() {
        let cases = [
            (
                json!({"spec": {"hostNetwork": true}}),
                "spec.podTemplate.spec.hostNetwork",
            ),
            (
                json!({"spec": {"hostPID": true}}),
                "spec.podTemplate.spec.hostPID",
            ),
            (
                json!({"spec": {"hostIPC": true}}),
                "spec.podTemplate.spec.hostIPC",
            ),
            (
                json!({"spec": {"serviceAccountName": "admin"}}),
                "spec.podTemplate.spec.serviceAccountName",
            ),
            (
                json!({"spec": {"automountServiceAccountToken": true}}),
                "spec.podTemplate.spec.automountServiceAccountToken",
            ),
            (
                json!({"spec": {"securityContext": {"runAsUser": 0}}}),
                "spec.podTemplate.spec.securityContext",
            ),
            (
                json!({"spec": {"initContainers": [{"name": "x", "image": "evil"}]}}),
                "spec.podTemplate.spec.initContainers",
            ),
            (
                json!({"spec": {"runtimeClassName": "unconfined"}}),
                "spec.podTemplate.spec.runtimeClassName",
            ),
            (
                json!({"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}),
                "spec.podTemplate.spec.volumes[0].hostPath",
            ),
            (
                json!({"spec": {"volumes": [{"name": "t", "projected": {"sources": []}}]}}),
                "spec.podTemplate.spec.volumes[0].projected",
            ),
            (
                json!({"spec": {"containers": [{"name": "runtime", "securityContext": {"privileged": true}}]}}),
                "spec.podTemplate.spec.containers[0].securityContext",
            ),
            (
                json!({"spec": {"containers": [{"name": "runtime", "image": "evil"}]}}),
                "spec.podTemplate.spec.containers[0].image",
            ),
            (
                json!({"spec": {"containers": [{"name": "runtime", "command": ["sh"]}]}}),
                "spec.podTemplate.spec.containers[0].command",
            ),
            (
                json!({"spec": {"containers": [{"name": "sidecar"}]}}),
                "spec.podTemplate.spec.containers[0].name",
            ),
            (
                json!({"spec": {"volumes": [{"name": "admin", "secret": {"secretName": "x"}}]}}),
                "spec.podTemplate.spec.volumes[0].name",
            ),
            (
                json!({"spec": {
                    "volumes": [{"name": "c", "configMap": {"name": "c"}}],
                    "containers": [{"name": "runtime", "volumeMounts": [{"name": "c", "mountPath": "/c"}]}],
                }}),
                "spec.podTemplate.spec.containers[0].volumeMounts[0].readOnly",
            ),
            (
                json!({"spec": {
                    "volumes": [{"name": "c", "configMap": {"name": "c"}}],
                    "containers": [{"name": "runtime", "volumeMounts": [
                        {"name": "c", "mountPath": "/etc/streamops/admin", "readOnly": true}]}],
                }}),
                "spec.podTemplate.spec.containers[0].volumeMounts[0].mountPath",
            ),
            (
                json!({"spec": {"containers": [{"name": "runtime", "volumeMounts": [
                    {"name": "state", "mountPath": "/x"}]}]}}),
                "spec.podTemplate.spec.containers[0].volumeMounts[0].name",
            ),
            (
                json!({"spec": {"containers": [{"name": "runtime", "env": [
                    {"name": "X", "valueFrom": {"unknownRef": {}}}]}]}}),
                "spec.podTemplate.spec.containers[0].env[0].valueFrom.unknownRef",
            ),
            (json!({"kind": "Pod"}), "spec.podTemplate.kind"),
            (json!([1]), "spec.podTemplate"),
        ];
        for (template, field) in cases {
            let got = fields(template.clone());
            assert!(
                got.iter().any(|f| f == field),
                "{template} must be refused at {field}; got {got:?}"
            );
        }
    }
}
