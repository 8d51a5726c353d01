//! Whether a restart of a job's pods fits the namespace's ResourceQuotas,
//! decided before anything stops (a rescale that would not fit is refused
//! with the reason, instead of stopping the job and then waiting for pods
//! the quota never admits). Pure: the controller reads the quotas
//! ([`Room::from_quota`]), the plan asks [`refusal`].
//!
//! A rollout removes the old pods before it creates the new ones, so what
//! must fit is the difference: `new pods x new per-pod demand - old pods x
//! old per-pod demand`, against each quota's `hard - used`. A pod's demand
//! is what its containers ask for once `spec.podTemplate` is merged in
//! ([`pod_demand`]): a template that sets the runtime container's resources
//! wins over `spec.resources`, as in the StatefulSet the operator writes
//! (other containers, which the template's allow-list refuses today, would
//! count as the quota admission counts them).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceQuota, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{Value, json};
use streamops_crds::StreamJobSpec;

use super::resources::{CONTAINER, merge};

/// The quota resources a runtime pod counts against.
const TRACKED: [&str; 8] = [
    "pods",
    "count/pods",
    "requests.cpu",
    "cpu",
    "requests.memory",
    "memory",
    "limits.cpu",
    "limits.memory",
];

/// What one quota has left of one resource, in thousandths of its unit
/// (`500m` CPU is 500, `1Ki` memory is 1,024,000).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    /// The ResourceQuota.
    pub quota: String,
    /// Its resource name (`requests.cpu`, `pods`, ...).
    pub resource: String,
    /// `hard - used`, in thousandths (negative when over).
    pub left: i128,
}

impl Room {
    /// The room a ResourceQuota has left in the resources a pod uses (none
    /// until the quota controller has filled in `status.used`).
    pub fn from_quota(q: &ResourceQuota) -> Vec<Room> {
        let name = q.metadata.name.clone().unwrap_or_default();
        let Some(status) = &q.status else {
            return Vec::new();
        };
        let (Some(hard), Some(used)) = (&status.hard, &status.used) else {
            return Vec::new();
        };
        TRACKED
            .iter()
            .filter_map(|&r| {
                let h = milli(hard.get(r)?)?;
                let u = used.get(r).map_or(Some(0), milli)?;
                Some(Room {
                    quota: name.clone(),
                    resource: r.to_owned(),
                    left: h - u,
                })
            })
            .collect()
    }
}

/// A Kubernetes quantity in thousandths of its unit (`None`: not one).
pub fn milli(q: &Quantity) -> Option<i128> {
    let s = q.0.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    let negative = int.starts_with('-');
    let int = int.trim_start_matches(['+', '-']);
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    // The number in 10^-9 of a unit, exactly (fractions beyond that are
    // below any resource a quota counts).
    let mut nanos: i128 = if int.is_empty() {
        0
    } else {
        int.parse::<i128>().ok()?
    } * 1_000_000_000;
    let digits: String = frac.chars().take(9).collect();
    if !digits.is_empty() {
        let f: i128 = digits.parse().ok()?;
        nanos += f * 10i128.pow(9 - digits.len() as u32);
    }
    let scaled = match suffix {
        "" => nanos,
        "n" => nanos / 1_000_000_000,
        "u" => nanos / 1_000_000,
        "m" => nanos / 1_000,
        "k" => nanos * 1_000,
        "M" => nanos * 1_000_000,
        "G" => nanos * 1_000_000_000,
        "T" => nanos * 1_000_000_000_000,
        "Ki" => nanos << 10,
        "Mi" => nanos << 20,
        "Gi" => nanos << 30,
        "Ti" => nanos << 40,
        e if e.starts_with(['e', 'E']) => {
            let exp: u32 = e[1..].parse().ok()?;
            nanos.checked_mul(10i128.checked_pow(exp)?)?
        }
        _ => return None,
    };
    let milli = scaled / 1_000_000;
    Some(if negative { -milli } else { milli })
}

/// What one runtime pod of `spec` counts against a quota, per resource
/// name, in thousandths: the runtime container with `spec.resources`,
/// `spec.podTemplate` merged over it as the StatefulSet is built
/// (`resources::statefulset`), then summed over the containers as the
/// quota admission does: the app containers and restartable (sidecar) init
/// containers add up, and a one-off init container counts only when it
/// asks for more than that (it runs alone, before them). A template that is
/// not an object counts as absent (it is refused as `InvalidSpec` anyway).
pub fn pod_demand(spec: &StreamJobSpec) -> BTreeMap<&'static str, i128> {
    let resources = spec
        .resources
        .as_ref()
        .and_then(|r| serde_json::to_value(r).ok())
        .unwrap_or_else(|| json!({}));
    let mut pod = json!({"spec": {"containers": [{"name": CONTAINER, "resources": resources}]}});
    if let Some(template) = spec.pod_template.as_ref().filter(|t| t.is_object()) {
        merge(&mut pod, template);
    }
    let demand = |c: &Value| {
        let r: Option<ResourceRequirements> = c
            .get("resources")
            .and_then(|r| serde_json::from_value(r.clone()).ok());
        container(r.as_ref())
    };
    let list = |field: &str| -> Vec<Value> { pod["spec"][field].as_array().cloned().unwrap_or_default() };
    let mut running = BTreeMap::new();
    let mut one_off: BTreeMap<&'static str, i128> = BTreeMap::new();
    for c in list("containers") {
        add(&mut running, &demand(&c));
    }
    for c in list("initContainers") {
        if c["restartPolicy"] == "Always" {
            add(&mut running, &demand(&c));
        } else {
            for (r, v) in demand(&c) {
                let m = one_off.entry(r).or_insert(0);
                *m = (*m).max(v);
            }
        }
    }
    for (r, v) in one_off {
        let m = running.entry(r).or_insert(0);
        *m = (*m).max(v);
    }
    running.insert("pods", 1_000);
    running.insert("count/pods", 1_000);
    running
}

fn add(total: &mut BTreeMap<&'static str, i128>, more: &BTreeMap<&'static str, i128>) {
    for (r, v) in more {
        *total.entry(r).or_insert(0) += v;
    }
}

/// What a pod of one container with `resources` counts against a quota,
/// per resource name, in thousandths (a request defaults to its limit, as
/// Kubernetes does).
pub fn per_pod(resources: Option<&ResourceRequirements>) -> BTreeMap<&'static str, i128> {
    let mut d = container(resources);
    d.insert("pods", 1_000);
    d.insert("count/pods", 1_000);
    d
}

/// What one container with `resources` counts, in thousandths.
fn container(resources: Option<&ResourceRequirements>) -> BTreeMap<&'static str, i128> {
    let get = |m: Option<&BTreeMap<String, Quantity>>, k: &str| m.and_then(|m| m.get(k)).and_then(milli);
    let limits = resources.and_then(|r| r.limits.as_ref());
    let requests = resources.and_then(|r| r.requests.as_ref());
    let mut d = BTreeMap::new();
    for (resource, plain, limit) in [
        ("cpu", "requests.cpu", "limits.cpu"),
        ("memory", "requests.memory", "limits.memory"),
    ] {
        if let Some(r) = get(requests, resource).or_else(|| get(limits, resource)) {
            d.insert(plain, r);
            d.insert(resource, r);
        }
        if let Some(l) = get(limits, resource) {
            d.insert(limit, l);
        }
    }
    d
}

/// Why `new` pods with `new_demand` each, replacing `old` pods with
/// `old_demand`, do not fit `rooms`; `None`: they fit (or no quota limits
/// what they use).
pub fn refusal(
    rooms: &[Room],
    (old, old_demand): (i32, &BTreeMap<&'static str, i128>),
    (new, new_demand): (i32, &BTreeMap<&'static str, i128>),
) -> Option<String> {
    let total = |n: i32, d: &BTreeMap<&'static str, i128>, r: &str| {
        i128::from(n.max(0)) * d.get(r).copied().unwrap_or(0)
    };
    let short: Vec<String> = rooms
        .iter()
        .filter_map(|room| {
            let r = room.resource.as_str();
            let more = total(new, new_demand, r) - total(old, old_demand, r);
            (more > 0 && more > room.left).then(|| {
                format!(
                    "ResourceQuota {} has {} {r} left, {} more needed",
                    room.quota,
                    show(r, room.left.max(0)),
                    show(r, more)
                )
            })
        })
        .collect();
    (!short.is_empty()).then(|| short.join("; "))
}

/// A quantity in thousandths, readable for its resource.
fn show(resource: &str, milli: i128) -> String {
    if resource.ends_with("memory") {
        let bytes = milli / 1_000;
        if bytes % (1 << 20) == 0 {
            return format!("{}Mi", bytes >> 20);
        }
        return bytes.to_string();
    }
    if milli % 1_000 == 0 {
        (milli / 1_000).to_string()
    } else {
        format!("{milli}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ResourceQuotaStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_owned())
    }

    #[test]
    fn quantities_in_thousandths() {
        for (s, want) in [
            ("1", 1_000),
            ("500m", 500),
            ("0.5", 500),
            ("1.5", 1_500),
            ("2k", 2_000_000),
            ("1Ki", 1_024_000),
            ("512Mi", 512 * (1 << 20) * 1_000),
            ("1Gi", (1 << 30) * 1_000),
            ("1G", 1_000_000_000_000),
            ("1e3", 1_000_000),
            ("250u", 0),
            ("1500000u", 1_500),
            (".5", 500),
            ("-1", -1_000),
        ] {
            assert_eq!(milli(&q(s)), Some(want), "{s}");
        }
        for bad in ["", "abc", "1Xi", "1e", "."] {
            assert_eq!(milli(&q(bad)), None, "{bad}");
        }
    }

    fn quota(name: &str, hard: &[(&str, &str)], used: &[(&str, &str)]) -> ResourceQuota {
        let map = |kv: &[(&str, &str)]| Some(kv.iter().map(|(k, v)| ((*k).to_owned(), q(v))).collect());
        ResourceQuota {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: None,
            status: Some(ResourceQuotaStatus {
                hard: map(hard),
                used: map(used),
            }),
        }
    }

    fn resources(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> ResourceRequirements {
        let map = |kv: &[(&str, &str)]| {
            (!kv.is_empty()).then(|| kv.iter().map(|(k, v)| ((*k).to_owned(), q(v))).collect())
        };
        ResourceRequirements {
            requests: map(requests),
            limits: map(limits),
            ..Default::default()
        }
    }

    #[test]
    fn a_rescale_must_fit_what_the_quota_has_left_after_the_old_pods_go() {
        let rooms = Room::from_quota(&quota(
            "team",
            &[("pods", "6"), ("requests.cpu", "3"), ("limits.memory", "4Gi")],
            &[("pods", "4"), ("requests.cpu", "2"), ("limits.memory", "2Gi")],
        ));
        assert_eq!(rooms.len(), 3);
        let d = per_pod(Some(&resources(&[("cpu", "500m")], &[("memory", "512Mi")])));
        // 4 -> 6 pods: 2 more pods (2 left), 1 more CPU (1 left), 1Gi (2Gi left).
        assert_eq!(refusal(&rooms, (4, &d), (6, &d)), None);
        // 4 -> 7: one pod too many, and 1.5 CPU where 1 is left.
        let why = refusal(&rooms, (4, &d), (7, &d)).unwrap();
        assert_eq!(
            why,
            "ResourceQuota team has 2 pods left, 3 more needed; ResourceQuota team has 1 requests.cpu left, 1500m \
             more needed"
        );
        // Fewer pods, or the same pods asking less, always fit.
        assert_eq!(refusal(&rooms, (4, &d), (2, &d)), None);
        let smaller = per_pod(Some(&resources(&[("cpu", "100m")], &[])));
        assert_eq!(refusal(&rooms, (4, &d), (4, &smaller)), None);
        // The same pods asking for more memory each: 4 x 1Gi - 4 x 512Mi = 2Gi, all that is left.
        let bigger = per_pod(Some(&resources(&[("cpu", "500m")], &[("memory", "1Gi")])));
        assert_eq!(refusal(&rooms, (4, &d), (4, &bigger)), None);
        let biggest = per_pod(Some(&resources(&[("cpu", "500m")], &[("memory", "2Gi")])));
        assert!(
            refusal(&rooms, (4, &d), (4, &biggest))
                .unwrap()
                .contains("2048Mi limits.memory left, 6144Mi")
        );
    }

    fn spec_with(resources: Option<Value>, pod_template: Option<Value>) -> StreamJobSpec {
        let mut spec: StreamJobSpec = serde_json::from_value(json!({
            "source": {"topics": ["in"], "eventTime": {"field": "record.ts"}},
            "pipeline": {"keyBy": ["record.u"], "window": {"type": "tumbling", "size": "10s"},
                         "aggregations": [{"name": "n", "function": "count"}]},
            "sink": {"topic": "out"},
        }))
        .unwrap();
        spec.resources = resources.map(|r| serde_json::from_value(r).unwrap());
        spec.pod_template = pod_template;
        spec
    }

    #[test]
    fn a_pods_demand_counts_what_the_pod_template_adds_or_overrides() {
        let plain = pod_demand(&spec_with(
            Some(json!({"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}})),
            None,
        ));
        assert_eq!(
            plain,
            per_pod(Some(&resources(&[("cpu", "500m")], &[("memory", "1Gi")])))
        );
        // A sidecar adds up; the template's own resources for the runtime
        // container win over spec.resources (merged by container name).
        let template = json!({"spec": {
            "containers": [
                {"name": "runtime", "resources": {"requests": {"cpu": "2"}}},
                {"name": "proxy", "image": "p", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
            ],
            "initContainers": [
                {"name": "warm", "image": "w", "resources": {"requests": {"cpu": "4"}}},
                {"name": "log", "image": "l", "restartPolicy": "Always",
                 "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}}},
            ],
        }});
        let d = pod_demand(&spec_with(
            Some(json!({"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}})),
            Some(template),
        ));
        // Running: 2 + 0.25 + 0.1 = 2.35 CPU; the one-off init asks 4, more.
        assert_eq!(d["requests.cpu"], 4_000);
        assert_eq!(
            d["requests.memory"],
            ((1 << 30) + (64 << 20) + (32 << 20)) * 1_000
        );
        assert_eq!(d["limits.memory"], ((1 << 30) + (32 << 20)) * 1_000);
        assert_eq!(d["limits.cpu"], 100);
        assert_eq!(d["pods"], 1_000);
        // So a quota with 3 CPU left admits 1 more plain pod, no such pod.
        let rooms = Room::from_quota(&quota("q", &[("requests.cpu", "3")], &[]));
        assert_eq!(refusal(&rooms, (0, &plain), (1, &plain)), None);
        assert!(
            refusal(&rooms, (0, &plain), (1, &d))
                .unwrap()
                .contains("3 requests.cpu left, 4 more needed")
        );
        // A template without containers changes nothing.
        let labels = json!({"metadata": {"labels": {"team": "a"}}});
        let same = pod_demand(&spec_with(
            Some(json!({"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}})),
            Some(labels),
        ));
        assert_eq!(same, plain);
    }

    #[test]
    fn a_request_defaults_to_its_limit_and_unset_resources_count_only_as_pods() {
        let d = per_pod(Some(&resources(&[], &[("cpu", "2"), ("memory", "1Gi")])));
        assert_eq!(d["requests.cpu"], 2_000);
        assert_eq!(d["limits.cpu"], 2_000);
        assert_eq!(d["requests.memory"], (1 << 30) * 1_000);
        let bare = per_pod(None);
        assert_eq!(bare.get("requests.cpu"), None);
        let rooms = Room::from_quota(&quota("q", &[("requests.cpu", "1")], &[("requests.cpu", "1")]));
        assert_eq!(refusal(&rooms, (1, &bare), (9, &bare)), None);
        // A quota the quota controller has not counted yet says nothing.
        let mut fresh = quota("q", &[("pods", "1")], &[]);
        fresh.status.as_mut().unwrap().used = None;
        assert!(Room::from_quota(&fresh).is_empty());
    }
}
