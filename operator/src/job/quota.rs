//! Whether a restart of a job's pods fits the namespace's ResourceQuotas,
//! decided before anything stops (a rescale that would not fit is refused
//! with the reason, instead of stopping the job and then waiting for pods
//! the quota never admits). Pure: the controller reads the quotas
//! ([`Room::from_quota`]), the plan asks [`refusal`].
//!
//! A rollout removes the old pods before it creates the new ones, so what
//! must fit is the difference: `new pods x new per-pod demand - old pods x
//! old per-pod demand`, against each quota's `hard - used`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceQuota, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

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

/// What one runtime pod counts against a quota, per resource name, in
/// thousandths (a request defaults to its limit, as Kubernetes does).
pub fn per_pod(resources: Option<&ResourceRequirements>) -> BTreeMap<&'static str, i128> {
    let get = |m: Option<&BTreeMap<String, Quantity>>, k: &str| m.and_then(|m| m.get(k)).and_then(milli);
    let limits = resources.and_then(|r| r.limits.as_ref());
    let requests = resources.and_then(|r| r.requests.as_ref());
    let mut d = BTreeMap::new();
    d.insert("pods", 1_000);
    d.insert("count/pods", 1_000);
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
