//! The decision core of the StreamTopic controller: what the spec asks for,
//! what the status recorded and what Kafka reports go in; a [`TopicPlan`]
//! comes out. No I/O, so every rule below is unit-tested without a cluster.

use std::collections::{BTreeMap, BTreeSet};

use streamops_crds::{
    tenancy::{self, TopicNotAllowed, TopicPolicy},
    topic::{DeletionPolicy, TopicOwnership},
};

use crate::kafka::{ConfigChange, ObservedTopic};

/// What the resource asks for, after defaulting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredTopic {
    pub name: String,
    /// Where `name` comes from (`spec.topicName` or `metadata.name`), for messages.
    pub name_field: &'static str,
    pub partitions: i32,
    /// `None`: the broker's default.
    pub replication_factor: Option<i32>,
    pub config: BTreeMap<String, String>,
    /// Annotation `streamops.io/adopt: "true"`.
    pub adopt: bool,
}

/// What an earlier reconcile wrote to status: the operator's memory of what
/// it owns. Only `ownership` grants the right to change (and delete) a topic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordedTopic {
    pub name: Option<String>,
    pub ownership: Option<TopicOwnership>,
    pub managed_config_keys: BTreeSet<String>,
}

/// Changes to an existing topic the operator owns. Empty means in sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicUpdate {
    /// `Adopted` on the reconcile that adopts the topic.
    pub ownership: TopicOwnership,
    /// New total partition count (CreatePartitions), when the spec grew it.
    pub grow_partitions_to: Option<i32>,
    pub config_changes: Vec<ConfigChange>,
    /// `status.managedConfigKeys` once the changes are applied.
    pub managed_config_keys: Vec<String>,
}

impl TopicUpdate {
    pub fn is_noop(&self) -> bool {
        self.grow_partitions_to.is_none() && self.config_changes.is_empty()
    }
}

/// A change Kafka cannot make, or one the operator must not make on its own.
/// The topic is left untouched and the resource reports `Stalled`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Rename {
        current: String,
        requested: String,
    },
    PartitionDecrease {
        current: i32,
        requested: i32,
    },
    ReplicationFactorChange {
        current: i32,
        requested: i32,
    },
    /// The topic exists and the resource neither created nor may adopt it.
    TopicExists {
        name: String,
    },
    /// The operator's topic-name policy keeps this namespace off the topic
    /// (another namespace's, or an internal one): nothing is done on Kafka.
    TopicNotAllowed(TopicNotAllowed),
}

impl Refusal {
    /// Condition reason and event reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Rename { .. } => "TopicRenameUnsupported",
            Self::PartitionDecrease { .. } => "PartitionDecreaseUnsupported",
            Self::ReplicationFactorChange { .. } => "ReplicationFactorChangeUnsupported",
            Self::TopicExists { .. } => "TopicExistsNotAdopted",
            Self::TopicNotAllowed(_) => "TopicNotAllowed",
        }
    }

    /// What the user can do about it.
    pub fn message(&self) -> String {
        match self {
            Self::Rename { current, requested } => format!(
                "spec.topicName {requested:?} differs from the managed topic {current:?}: Kafka cannot rename topics; \
                 restore spec.topicName, or create a new StreamTopic for the new name"
            ),
            Self::PartitionDecrease { current, requested } => format!(
                "spec.partitions {requested} is below the topic's {current} partitions: Kafka cannot remove partitions; \
                 set spec.partitions >= {current}"
            ),
            Self::ReplicationFactorChange { current, requested } => format!(
                "spec.replicationFactor {requested} differs from the topic's replication factor {current}: the operator \
                 does not reassign replicas; set spec.replicationFactor to {current} (or remove it)"
            ),
            Self::TopicExists { name } => format!(
                "topic {name:?} already exists in Kafka and was not created by this resource; annotate the resource \
                 with streamops.io/adopt=\"true\" to adopt it, or choose another spec.topicName"
            ),
            Self::TopicNotAllowed(refused) => refused.to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicPlan {
    /// The topic does not exist: create it with every configured key.
    Create {
        partitions: i32,
        replication_factor: Option<i32>,
        config: BTreeMap<String, String>,
    },
    Update(TopicUpdate),
    Refuse(Refusal),
}

/// Whether the resource, in `namespace`, may touch the topic it names at
/// all, under the operator's topic-name policy. Decided before anything
/// else, Kafka included: a refused resource creates, describes, adopts,
/// changes and deletes nothing ([`cleanup`] keeps the topic too).
pub fn admit(policy: &TopicPolicy, namespace: &str, desired: &DesiredTopic) -> Option<Refusal> {
    tenancy::check_topic_name(policy, namespace, &desired.name, desired.name_field)
        .err()
        .map(Refusal::TopicNotAllowed)
}

/// Decides what to do with a topic. `observed` is `None` when Kafka has no
/// topic of that name.
pub fn plan(desired: &DesiredTopic, recorded: &RecordedTopic, observed: Option<&ObservedTopic>) -> TopicPlan {
    if recorded.ownership.is_some()
        && let Some(current) = &recorded.name
        && *current != desired.name
    {
        return TopicPlan::Refuse(Refusal::Rename {
            current: current.clone(),
            requested: desired.name.clone(),
        });
    }
    let Some(observed) = observed else {
        // Missing (never created, or deleted out of band): the resource wins.
        return TopicPlan::Create {
            partitions: desired.partitions,
            replication_factor: desired.replication_factor,
            config: desired.config.clone(),
        };
    };
    let ownership = match recorded.ownership {
        Some(ownership) => ownership,
        None if desired.adopt => TopicOwnership::Adopted,
        None => {
            return TopicPlan::Refuse(Refusal::TopicExists {
                name: desired.name.clone(),
            });
        }
    };
    if desired.partitions < observed.partitions {
        return TopicPlan::Refuse(Refusal::PartitionDecrease {
            current: observed.partitions,
            requested: desired.partitions,
        });
    }
    if let Some(requested) = desired.replication_factor
        && requested != observed.replication_factor
    {
        return TopicPlan::Refuse(Refusal::ReplicationFactorChange {
            current: observed.replication_factor,
            requested,
        });
    }

    let mut config_changes: Vec<ConfigChange> = desired
        .config
        .iter()
        .filter(|(key, value)| observed.config.get(*key) != Some(*value))
        .map(|(key, value)| ConfigChange::Set {
            key: key.clone(),
            value: value.clone(),
        })
        .collect();
    // Only keys the operator set leave with the spec; an adopted topic's own
    // settings stay. Deleting an unset key is harmless, so the broker's
    // reporting of defaults does not matter here.
    config_changes.extend(
        recorded
            .managed_config_keys
            .iter()
            .filter(|key| !desired.config.contains_key(*key))
            .map(|key| ConfigChange::Delete { key: key.clone() }),
    );

    let managed_config_keys = match ownership {
        TopicOwnership::Created => desired.config.keys().cloned().collect(),
        TopicOwnership::Adopted => {
            let set: BTreeSet<&String> = config_changes
                .iter()
                .filter_map(|c| match c {
                    ConfigChange::Set { key, .. } => Some(key),
                    ConfigChange::Delete { .. } => None,
                })
                .collect();
            recorded
                .managed_config_keys
                .iter()
                .filter(|key| desired.config.contains_key(*key))
                .chain(set)
                .cloned()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        }
    };

    TopicPlan::Update(TopicUpdate {
        ownership,
        grow_partitions_to: (desired.partitions > observed.partitions).then_some(desired.partitions),
        config_changes,
        managed_config_keys,
    })
}

/// Whether Kafka's "topic already exists" answer to our CreateTopics means
/// the topic is ours: this resource had already recorded that it created
/// that very topic. That happens when a describe right after a successful
/// create does not show the topic yet (Kafka's metadata reaches the brokers'
/// caches asynchronously) and the plan asks to create it again, or when an
/// earlier CreateTopics timed out after the broker had done it. Anyone
/// else's topic of that name was refused before any create was attempted
/// (the resource records ownership only as the intent of its own create).
pub fn already_exists_is_ours(recorded: &RecordedTopic, name: &str) -> bool {
    recorded.ownership == Some(TopicOwnership::Created) && recorded.name.as_deref() == Some(name)
}

/// What deleting the resource does to the topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CleanupPlan {
    DeleteTopic {
        name: String,
    },
    /// Keep the topic; the reason goes into the event.
    Keep {
        reason: &'static str,
    },
}

/// Inputs of the deletion decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanupInput {
    pub policy: DeletionPolicy,
    pub recorded: RecordedTopic,
    /// Annotation `streamops.io/managed: "false"`.
    pub unmanaged: bool,
    /// Annotation `streamops.io/skip-kafka-deletion: "true"`.
    pub skip_kafka: bool,
    /// Annotation `streamops.io/paused: "true"`: the operator does not act.
    pub paused: bool,
    /// The resource's namespace and the operator's topic-name policy.
    pub namespace: String,
    pub topic_policy: TopicPolicy,
}

/// Only topics the operator created, or adopted explicitly, are deleted, and
/// only with `deletionPolicy: Delete`; never one whose name the topic-name
/// policy refuses this namespace (whatever the status says it owns, e.g.
/// from before the policy was tightened).
pub fn cleanup(input: &CleanupInput) -> CleanupPlan {
    if let Some(name) = &input.recorded.name
        && tenancy::check_topic_name(&input.topic_policy, &input.namespace, name, "status.topicName").is_err()
    {
        return CleanupPlan::Keep {
            reason: "TopicNotAllowed",
        };
    }
    if input.skip_kafka {
        return CleanupPlan::Keep {
            reason: "SkipKafkaDeletion",
        };
    }
    if input.unmanaged {
        return CleanupPlan::Keep { reason: "Unmanaged" };
    }
    if input.paused {
        return CleanupPlan::Keep { reason: "Paused" };
    }
    if input.policy == DeletionPolicy::Retain {
        return CleanupPlan::Keep { reason: "Retained" };
    }
    match (&input.recorded.ownership, &input.recorded.name) {
        (Some(_), Some(name)) => CleanupPlan::DeleteTopic { name: name.clone() },
        _ => CleanupPlan::Keep { reason: "NotOwned" },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(partitions: i32) -> DesiredTopic {
        DesiredTopic {
            name: "orders".into(),
            name_field: "spec.topicName",
            partitions,
            replication_factor: None,
            config: BTreeMap::new(),
            adopt: false,
        }
    }

    fn observed(partitions: i32, rf: i32, config: &[(&str, &str)]) -> ObservedTopic {
        ObservedTopic {
            partitions,
            replication_factor: rf,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn created(keys: &[&str]) -> RecordedTopic {
        RecordedTopic {
            name: Some("orders".into()),
            ownership: Some(TopicOwnership::Created),
            managed_config_keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    fn update(plan: TopicPlan) -> TopicUpdate {
        match plan {
            TopicPlan::Update(u) => u,
            other => panic!("expected an update, got {other:?}"),
        }
    }

    fn set(key: &str, value: &str) -> ConfigChange {
        ConfigChange::Set {
            key: key.into(),
            value: value.into(),
        }
    }

    #[test]
    fn missing_topic_is_created_with_everything() {
        let mut d = desired(3);
        d.replication_factor = Some(1);
        d.config.insert("retention.ms".into(), "1000".into());
        assert_eq!(
            plan(&d, &RecordedTopic::default(), None),
            TopicPlan::Create {
                partitions: 3,
                replication_factor: Some(1),
                config: d.config.clone()
            }
        );
    }

    #[test]
    fn topic_deleted_out_of_band_is_recreated() {
        assert!(matches!(
            plan(&desired(2), &created(&[]), None),
            TopicPlan::Create { partitions: 2, .. }
        ));
    }

    #[test]
    fn in_sync_topic_needs_nothing() {
        let mut d = desired(3);
        d.config.insert("cleanup.policy".into(), "compact".into());
        let u = update(plan(
            &d,
            &created(&["cleanup.policy"]),
            Some(&observed(3, 1, &[("cleanup.policy", "compact")])),
        ));
        assert!(u.is_noop());
        assert_eq!(u.managed_config_keys, vec!["cleanup.policy".to_string()]);
    }

    #[test]
    fn partitions_grow() {
        let u = update(plan(&desired(6), &created(&[]), Some(&observed(3, 1, &[]))));
        assert_eq!(u.grow_partitions_to, Some(6));
        assert!(u.config_changes.is_empty());
    }

    #[test]
    fn partition_decrease_is_refused() {
        assert_eq!(
            plan(&desired(2), &created(&[]), Some(&observed(3, 1, &[]))),
            TopicPlan::Refuse(Refusal::PartitionDecrease {
                current: 3,
                requested: 2
            })
        );
    }

    #[test]
    fn replication_factor_change_is_refused_but_absent_rf_is_fine() {
        let mut d = desired(3);
        assert!(matches!(
            plan(&d, &created(&[]), Some(&observed(3, 3, &[]))),
            TopicPlan::Update(_)
        ));
        d.replication_factor = Some(1);
        assert_eq!(
            plan(&d, &created(&[]), Some(&observed(3, 3, &[]))),
            TopicPlan::Refuse(Refusal::ReplicationFactorChange {
                current: 3,
                requested: 1
            })
        );
    }

    #[test]
    fn rename_after_creation_is_refused_even_if_target_is_missing() {
        let mut d = desired(1);
        d.name = "orders.v2".into();
        let p = plan(&d, &created(&[]), None);
        assert_eq!(
            p,
            TopicPlan::Refuse(Refusal::Rename {
                current: "orders".into(),
                requested: "orders.v2".into()
            })
        );
        if let TopicPlan::Refuse(r) = p {
            assert_eq!(r.reason(), "TopicRenameUnsupported");
        }
    }

    #[test]
    fn name_may_change_before_anything_was_owned() {
        let mut d = desired(1);
        d.name = "orders.v2".into();
        let recorded = RecordedTopic {
            name: Some("orders".into()),
            ..RecordedTopic::default()
        };
        assert!(matches!(plan(&d, &recorded, None), TopicPlan::Create { .. }));
    }

    #[test]
    fn existing_topic_needs_opt_in() {
        let existing = observed(3, 1, &[("retention.ms", "5")]);
        assert!(matches!(
            plan(&desired(3), &RecordedTopic::default(), Some(&existing)),
            TopicPlan::Refuse(Refusal::TopicExists { .. })
        ));
        let mut d = desired(3);
        d.adopt = true;
        let u = update(plan(&d, &RecordedTopic::default(), Some(&existing)));
        assert_eq!(u.ownership, TopicOwnership::Adopted);
        assert!(
            u.is_noop(),
            "adoption must not touch the topic's own settings: {u:?}"
        );
        assert!(u.managed_config_keys.is_empty());
    }

    #[test]
    fn adopted_topic_manages_only_keys_the_operator_set() {
        let mut d = desired(3);
        d.adopt = true;
        d.config.insert("retention.ms".into(), "5".into()); // already so: the topic's own
        d.config.insert("cleanup.policy".into(), "compact".into()); // set by the operator
        let existing = observed(3, 1, &[("retention.ms", "5"), ("segment.ms", "9")]);
        let u = update(plan(&d, &RecordedTopic::default(), Some(&existing)));
        assert_eq!(u.config_changes, vec![set("cleanup.policy", "compact")]);
        assert_eq!(u.managed_config_keys, vec!["cleanup.policy".to_string()]);

        // Both keys leave the spec: only the operator's own is removed.
        let recorded = RecordedTopic {
            name: Some("orders".into()),
            ownership: Some(TopicOwnership::Adopted),
            managed_config_keys: ["cleanup.policy".to_string()].into(),
        };
        d.config.clear();
        let after = observed(
            3,
            1,
            &[
                ("retention.ms", "5"),
                ("segment.ms", "9"),
                ("cleanup.policy", "compact"),
            ],
        );
        let u = update(plan(&d, &recorded, Some(&after)));
        assert_eq!(
            u.config_changes,
            vec![ConfigChange::Delete {
                key: "cleanup.policy".into()
            }]
        );
        assert!(u.managed_config_keys.is_empty());
    }

    #[test]
    fn created_topic_loses_removed_keys_and_keeps_foreign_ones() {
        let mut d = desired(1);
        d.config.insert("retention.ms".into(), "100".into());
        let existing = observed(
            1,
            1,
            &[
                ("retention.ms", "100"),
                ("cleanup.policy", "compact"),
                ("segment.ms", "7"),
            ],
        );
        let u = update(plan(
            &d,
            &created(&["retention.ms", "cleanup.policy"]),
            Some(&existing),
        ));
        assert_eq!(
            u.config_changes,
            vec![ConfigChange::Delete {
                key: "cleanup.policy".into()
            }]
        );
        assert_eq!(u.managed_config_keys, vec!["retention.ms".to_string()]);
    }

    #[test]
    fn drift_is_reverted_whether_changed_or_removed() {
        let mut d = desired(1);
        d.config.insert("retention.ms".into(), "100".into());
        d.config.insert("cleanup.policy".into(), "compact".into());
        // Changed out of band, and removed out of band (a broker omitting
        // defaults then no longer lists it).
        let drifted = observed(1, 1, &[("retention.ms", "999")]);
        let u = update(plan(
            &d,
            &created(&["retention.ms", "cleanup.policy"]),
            Some(&drifted),
        ));
        assert_eq!(
            u.config_changes,
            vec![set("cleanup.policy", "compact"), set("retention.ms", "100")]
        );
    }

    #[test]
    fn refusal_changes_nothing_even_with_config_drift() {
        let mut d = desired(1);
        d.config.insert("retention.ms".into(), "100".into());
        let p = plan(
            &d,
            &created(&["retention.ms"]),
            Some(&observed(4, 1, &[("retention.ms", "1")])),
        );
        assert!(matches!(p, TopicPlan::Refuse(Refusal::PartitionDecrease { .. })));
    }

    fn cleanup_input(policy: DeletionPolicy, ownership: Option<TopicOwnership>) -> CleanupInput {
        CleanupInput {
            policy,
            recorded: RecordedTopic {
                name: Some("orders".into()),
                ownership,
                managed_config_keys: BTreeSet::new(),
            },
            unmanaged: false,
            skip_kafka: false,
            paused: false,
            namespace: "shop".into(),
            topic_policy: TopicPolicy::Any,
        }
    }

    #[test]
    fn only_owned_topics_with_delete_policy_are_deleted() {
        use DeletionPolicy::*;
        use TopicOwnership::*;
        let delete = CleanupPlan::DeleteTopic {
            name: "orders".into(),
        };
        assert_eq!(cleanup(&cleanup_input(Delete, Some(Created))), delete);
        assert_eq!(cleanup(&cleanup_input(Delete, Some(Adopted))), delete);
        assert_eq!(
            cleanup(&cleanup_input(Delete, None)),
            CleanupPlan::Keep { reason: "NotOwned" }
        );
        assert_eq!(
            cleanup(&cleanup_input(Retain, Some(Created))),
            CleanupPlan::Keep { reason: "Retained" }
        );
    }

    #[test]
    fn escape_hatches_win_over_delete() {
        let mut i = cleanup_input(DeletionPolicy::Delete, Some(TopicOwnership::Created));
        i.skip_kafka = true;
        assert_eq!(
            cleanup(&i),
            CleanupPlan::Keep {
                reason: "SkipKafkaDeletion"
            }
        );
        let mut i = cleanup_input(DeletionPolicy::Delete, Some(TopicOwnership::Created));
        i.unmanaged = true;
        assert_eq!(cleanup(&i), CleanupPlan::Keep { reason: "Unmanaged" });
        let mut i = cleanup_input(DeletionPolicy::Delete, Some(TopicOwnership::Created));
        i.paused = true;
        assert_eq!(cleanup(&i), CleanupPlan::Keep { reason: "Paused" });
    }

    #[test]
    fn a_name_outside_the_namespace_is_refused_before_anything_else() {
        use streamops_crds::tenancy::Separator;
        let policy = TopicPolicy::NamespacePrefix(Separator::Dot);
        let mut d = desired(3);
        assert_eq!(admit(&TopicPolicy::Any, "shop", &d), None);
        let refusal = admit(&policy, "shop", &d).expect("orders is not shop.<name>");
        assert_eq!(refusal.reason(), "TopicNotAllowed");
        let message = refusal.message();
        assert!(message.starts_with("spec.topicName \"orders\""), "{message}");
        assert!(message.contains("namespace \"shop\""), "{message}");
        assert!(message.contains("\"shop.\""), "the allowed prefix: {message}");
        d.name = "shop.orders".into();
        assert_eq!(admit(&policy, "shop", &d), None);
        assert!(
            admit(&policy, "billing", &d).is_some(),
            "another namespace's topic"
        );
    }

    #[test]
    fn internal_topics_are_refused_even_to_adopt_and_under_any() {
        let mut d = desired(3);
        d.name = streamops_crds::runtime_api::control_topic("shop", "clicks");
        d.adopt = true;
        let refusal = admit(&TopicPolicy::Any, "shop", &d).expect("internal");
        assert_eq!(refusal.reason(), "TopicNotAllowed");
        assert!(
            refusal.message().contains("internal topic space"),
            "{}",
            refusal.message()
        );
        d.name_field = "metadata.name";
        assert!(
            admit(&TopicPolicy::Any, "shop", &d)
                .unwrap()
                .message()
                .starts_with("metadata.name ")
        );
    }

    #[test]
    fn a_refused_name_is_never_deleted_whatever_the_status_owns() {
        use streamops_crds::tenancy::Separator;
        // Owned before the policy was tightened, deletionPolicy: Delete.
        let mut i = cleanup_input(DeletionPolicy::Delete, Some(TopicOwnership::Created));
        i.topic_policy = TopicPolicy::NamespacePrefix(Separator::Dot);
        assert_eq!(
            cleanup(&i),
            CleanupPlan::Keep {
                reason: "TopicNotAllowed"
            }
        );
        i.recorded.name = Some("shop.orders".into());
        assert_eq!(
            cleanup(&i),
            CleanupPlan::DeleteTopic {
                name: "shop.orders".into()
            }
        );
        // An internal topic is kept under any policy.
        let mut i = cleanup_input(DeletionPolicy::Delete, Some(TopicOwnership::Adopted));
        i.recorded.name = Some(streamops_crds::runtime_api::repartition_topic("shop", "clicks"));
        assert_eq!(
            cleanup(&i),
            CleanupPlan::Keep {
                reason: "TopicNotAllowed"
            }
        );
    }

    #[test]
    fn already_exists_after_our_own_create_is_ours() {
        let ours = RecordedTopic {
            name: Some("orders".into()),
            ownership: Some(TopicOwnership::Created),
            managed_config_keys: BTreeSet::new(),
        };
        assert!(already_exists_is_ours(&ours, "orders"));
        assert!(!already_exists_is_ours(&ours, "orders-v2"), "another name");
        let adopted = RecordedTopic {
            ownership: Some(TopicOwnership::Adopted),
            ..ours.clone()
        };
        assert!(!already_exists_is_ours(&adopted, "orders"));
        let never = RecordedTopic {
            name: None,
            ownership: None,
            managed_config_keys: BTreeSet::new(),
        };
        assert!(!already_exists_is_ours(&never, "orders"));
    }
}
