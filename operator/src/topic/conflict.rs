//! Two StreamTopics naming the same Kafka topic on the same cluster: the one
//! that already owns the topic wins (its status records ownership); otherwise
//! the older resource (creationTimestamp, then uid) wins. The loser is
//! `Stalled` with reason `Conflict` and never touches Kafka.
//!
//! A resource the topic-name policy refuses claims nothing: otherwise an
//! older resource in another namespace, naming a topic it may not manage,
//! would keep the namespace that may from ever managing it.
//!
//! Ownership comes first because creationTimestamp has one-second
//! resolution: two resources applied in the same second would otherwise be
//! ordered by their random uids, and a newcomer could outrank the resource
//! that created the topic.

use std::cmp::Ordering;

use k8s_openapi::jiff::Timestamp;
use streamops_crds::{
    StreamTopic,
    tenancy::{self, TopicPolicy},
    topic::annotation,
};

use super::{annotation_is, cluster_key};

/// One resource's claim on a Kafka topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub created: Option<Timestamp>,
    /// The resource's status records that it created or adopted the topic.
    pub owns: bool,
    /// Normalised bootstrap servers; empty for the operator's default cluster.
    pub cluster: String,
    pub topic: String,
}

impl Claim {
    /// The claim a resource makes, or `None` when it claims nothing
    /// (`streamops.io/managed: "false"`, or a topic `policy` refuses its
    /// namespace).
    pub fn of(topic: &StreamTopic, policy: &TopicPolicy) -> Option<Self> {
        if annotation_is(topic, annotation::MANAGED, "false") {
            return None;
        }
        let namespace = topic.metadata.namespace.clone().unwrap_or_default();
        let pinned = topic
            .status
            .as_ref()
            .filter(|s| s.ownership.is_some())
            .and_then(|s| s.topic_name.clone());
        let name = pinned.clone().unwrap_or_else(|| topic.kafka_topic_name());
        if tenancy::check_topic_name(policy, &namespace, &name, topic.topic_name_field()).is_err() {
            return None;
        }
        Some(Self {
            namespace,
            name: topic.metadata.name.clone().unwrap_or_default(),
            uid: topic.metadata.uid.clone().unwrap_or_default(),
            created: topic.metadata.creation_timestamp.as_ref().map(|t| t.0),
            owns: pinned.is_some(),
            cluster: cluster_key(topic.spec.cluster.as_ref()),
            topic: name,
        })
    }

    /// Seniority: the owner first, then older first (a missing timestamp
    /// sorts last); uid breaks ties.
    fn seniority(&self, other: &Self) -> Ordering {
        other
            .owns
            .cmp(&self.owns)
            .then_with(|| match (self.created, other.created) {
                (Some(a), Some(b)) => a.cmp(&b),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            })
            .then_with(|| self.uid.cmp(&other.uid))
    }
}

/// The oldest other claim on the same topic and cluster, if it is older than
/// `me`: then `me` must stand back.
pub fn winner_over<'a>(me: &Claim, others: impl IntoIterator<Item = &'a Claim>) -> Option<&'a Claim> {
    others
        .into_iter()
        .filter(|o| o.uid != me.uid && o.topic == me.topic && o.cluster == me.cluster)
        .filter(|o| o.seniority(me) == Ordering::Less)
        .min_by(|a, b| a.seniority(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(name: &str, uid: &str, secs: i64, topic: &str) -> Claim {
        Claim {
            namespace: "ns".into(),
            name: name.into(),
            uid: uid.into(),
            created: Some(Timestamp::from_second(secs).unwrap()),
            owns: false,
            cluster: String::new(),
            topic: topic.into(),
        }
    }

    #[test]
    fn older_wins_then_uid() {
        let a = claim("a", "u2", 10, "t");
        let b = claim("b", "u1", 20, "t");
        let c = claim("c", "u0", 10, "t");
        let all = [a.clone(), b.clone(), c.clone()];
        assert_eq!(winner_over(&b, &all), Some(&c));
        assert_eq!(winner_over(&a, &all), Some(&c));
        assert_eq!(winner_over(&c, &all), None);
    }

    #[test]
    fn the_owner_wins_over_an_older_or_same_second_claim() {
        // Same second, and the newcomer's uid sorts first: ownership decides.
        let mut owner = claim("first", "u9", 10, "t");
        owner.owns = true;
        let newcomer = claim("second", "u1", 10, "t");
        let older = claim("older", "u5", 5, "t");
        let all = [owner.clone(), newcomer.clone(), older.clone()];
        assert_eq!(winner_over(&newcomer, &all), Some(&owner));
        assert_eq!(winner_over(&older, &all), Some(&owner));
        assert_eq!(winner_over(&owner, &all), None);
    }

    #[test]
    fn a_resource_the_policy_refuses_claims_nothing() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
        use streamops_crds::{StreamTopicSpec, tenancy::Separator};
        let resource = |ns: &str, name: &str, uid: &str, secs: i64| {
            let mut t = StreamTopic::new(
                name,
                StreamTopicSpec {
                    topic_name: Some("shop.orders".into()),
                    partitions: 1,
                    replication_factor: None,
                    config: Default::default(),
                    cluster: None,
                    deletion_policy: None,
                },
            );
            t.metadata.namespace = Some(ns.into());
            t.metadata.uid = Some(uid.into());
            t.metadata.creation_timestamp = Some(Time(Timestamp::from_second(secs).unwrap()));
            t
        };
        // An older resource in "billing" names "shop"'s topic.
        let squatter = resource("billing", "squat", "u1", 10);
        let rightful = resource("shop", "orders", "u2", 20);
        let policy = TopicPolicy::NamespacePrefix(Separator::Dot);
        assert_eq!(Claim::of(&squatter, &policy), None);
        let me = Claim::of(&rightful, &policy).expect("shop may manage shop.orders");
        let claims: Vec<Claim> = [&squatter, &rightful]
            .into_iter()
            .filter_map(|t| Claim::of(t, &policy))
            .collect();
        assert_eq!(winner_over(&me, &claims), None, "the squatter must not win");
        // Without a policy the older one wins, as before.
        let me = Claim::of(&rightful, &TopicPolicy::Any).unwrap();
        let claims: Vec<Claim> = [&squatter, &rightful]
            .into_iter()
            .filter_map(|t| Claim::of(t, &TopicPolicy::Any))
            .collect();
        assert_eq!(winner_over(&me, &claims).map(|c| c.uid.as_str()), Some("u1"));
    }

    #[test]
    fn different_topic_or_cluster_is_no_conflict() {
        let a = claim("a", "u1", 10, "t");
        let mut b = claim("b", "u2", 20, "t");
        let other_topic = claim("c", "u3", 5, "x");
        let mut other_cluster = claim("d", "u4", 5, "t");
        other_cluster.cluster = "broker-2:9092".into();
        assert_eq!(
            winner_over(&b, &[other_topic.clone(), other_cluster.clone()]),
            None
        );
        b.cluster = "broker-2:9092".into();
        assert_eq!(winner_over(&b, &[a, other_cluster.clone()]), Some(&other_cluster));
    }
}
