//! Tenancy: which Kafka topics a namespace's StreamTopics may manage, and
//! where a StreamJob may keep its checkpoints and find the savepoint it
//! restores.
//!
//! The operator acts on Kafka with its own credentials and the runtime
//! writes state wherever a job points it. Without these rules any namespace
//! could create, adopt, reconfigure or delete any topic (another team's, or
//! another job's internal topics) and restore, or overwrite, another job's
//! savepoints. The rules are pure functions of the operator's settings and
//! the resource; the controllers refuse before acting (`Stalled`, naming the
//! field and the rule).

use std::{collections::BTreeMap, fmt, str::FromStr};

use crate::{job::StreamJobSpec, topic::StreamTopic, validate::FieldError};

/// Prefix of every internal topic: a StreamJob's repartition and checkpoint
/// topics ([`crate::runtime_api::repartition_topic`],
/// [`crate::runtime_api::control_topic`]), which the job controller alone
/// creates and deletes.
pub const INTERNAL_TOPIC_PREFIX: &str = "streamops.";

/// Whether `name` lies in the internal topic space: it starts with
/// [`INTERNAL_TOPIC_PREFIX`], `_` counting as `.`. Kafka refuses a topic
/// whose name differs from an existing one only in `.` versus `_` (their
/// metric names collide), so a `streamops_<ns>_<job>_checkpoints` topic made
/// first would keep that job from ever creating its own.
pub fn is_internal_topic(name: &str) -> bool {
    name.len() >= INTERNAL_TOPIC_PREFIX.len()
        && name
            .bytes()
            .zip(INTERNAL_TOPIC_PREFIX.bytes())
            .all(|(n, p)| n == p || (p == b'.' && n == b'_'))
}

/// Which Kafka topic names the StreamTopics of a namespace may manage
/// (create, adopt, change, delete). In every mode the internal topic space
/// ([`is_internal_topic`]) is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TopicPolicy {
    /// Any name: single-team installs stay simple.
    #[default]
    Any,
    /// Namespace `N` may manage `<N><separator><name>` only.
    NamespacePrefix(Separator),
    /// Namespace `N` may manage names starting with one of its prefixes; a
    /// namespace absent from the map may manage no topics.
    PrefixMap(PrefixMap),
}

impl TopicPolicy {
    /// The mode's name in flags, chart values and messages.
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::NamespacePrefix(_) => "namespacePrefix",
            Self::PrefixMap(_) => "prefixMap",
        }
    }
}

/// Between the namespace and the rest of a topic name under
/// [`TopicPolicy::NamespacePrefix`]: `.` or `_`, characters no namespace name
/// contains, so no namespace's topics start with another namespace's prefix
/// (with `-`, namespace `a` could name `a-b-orders`, a topic of namespace
/// `a-b`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Separator {
    #[default]
    Dot,
    Underscore,
}

impl Separator {
    pub fn as_char(self) -> char {
        match self {
            Self::Dot => '.',
            Self::Underscore => '_',
        }
    }
}

impl FromStr for Separator {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "." => Ok(Self::Dot),
            "_" => Ok(Self::Underscore),
            other => Err(format!(
                "{other:?}: the separator must be \".\" or \"_\", characters no namespace name contains \
                 (so no namespace's topics can start with another's prefix)"
            )),
        }
    }
}

impl fmt::Display for Separator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

/// Namespace -> the topic-name prefixes its StreamTopics may manage, written
/// `namespace=prefix,prefix;namespace=prefix` (the flag and environment
/// form; none of `=`, `,`, `;` can occur in a namespace or a topic name).
/// Prefixes are plain string prefixes: end them with a separator (`orders.`)
/// unless a namespace should own every name that starts alike.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrefixMap(pub BTreeMap<String, Vec<String>>);

/// A namespace name: an RFC 1123 label.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Characters Kafka allows in a topic name (at most 249 of them).
fn is_topic_text(text: &str) -> bool {
    (1..=249).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl FromStr for PrefixMap {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut map = BTreeMap::new();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (namespace, prefixes) = entry
                .split_once('=')
                .ok_or_else(|| format!("{entry:?}: expected namespace=prefix,prefix"))?;
            let namespace = namespace.trim();
            if !is_dns_label(namespace) {
                return Err(format!("{entry:?}: {namespace:?} is not a namespace name"));
            }
            let prefixes: Vec<String> = prefixes
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            if prefixes.is_empty() {
                return Err(format!(
                    "{entry:?}: no prefixes for namespace {namespace:?} (leave it out: a namespace absent \
                     from the map may manage no topics)"
                ));
            }
            for prefix in &prefixes {
                if !is_topic_text(prefix) {
                    return Err(format!(
                        "{entry:?}: {prefix:?} is not the start of a Kafka topic name (letters, digits, \
                         '.', '_', '-'; at most 249)"
                    ));
                }
                if is_internal_topic(prefix) {
                    return Err(format!(
                        "{entry:?}: {prefix:?} lies in the internal topic space ({INTERNAL_TOPIC_PREFIX:?}), \
                         which no StreamTopic may manage"
                    ));
                }
            }
            if map.insert(namespace.to_owned(), prefixes).is_some() {
                return Err(format!("namespace {namespace:?} given twice"));
            }
        }
        Ok(Self(map))
    }
}

impl fmt::Display for PrefixMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries: Vec<String> = self
            .0
            .iter()
            .map(|(namespace, prefixes)| format!("{namespace}={}", prefixes.join(",")))
            .collect();
        f.write_str(&entries.join(";"))
    }
}

/// Why a StreamTopic may not manage the Kafka topic it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicNotAllowed {
    /// Where the name comes from: `spec.topicName`, or `metadata.name` when
    /// the resource sets no topicName ([`StreamTopic::topic_name_field`]).
    pub field: &'static str,
    pub name: String,
    pub namespace: String,
    pub rule: TopicRule,
}

/// The rule a refused name breaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicRule {
    /// In the internal topic space, refused in every mode.
    Internal,
    /// `namespacePrefix`: does not continue `prefix` (`<namespace><separator>`).
    NamespacePrefix { prefix: String },
    /// `prefixMap`: the namespace has no prefixes.
    NoPrefixes,
    /// `prefixMap`: starts with none of the namespace's prefixes.
    Prefixes { allowed: Vec<String> },
}

impl fmt::Display for TopicNotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            field,
            name,
            namespace,
            rule,
        } = self;
        let subject = if *field == "metadata.name" {
            format!("metadata.name {name:?} (the Kafka topic name while spec.topicName is unset)")
        } else {
            format!("{field} {name:?}")
        };
        match rule {
            TopicRule::Internal => write!(
                f,
                "{subject} lies in the operator's internal topic space (names starting with \
                 {INTERNAL_TOPIC_PREFIX:?}, or \"streamops_\", which Kafka treats as the same name): those are \
                 StreamJobs' repartition and checkpoint topics, and no StreamTopic may create, adopt, change or \
                 delete one, whatever the topic-name policy; choose another name"
            ),
            TopicRule::NamespacePrefix { prefix } => write!(
                f,
                "{subject} is not a topic of namespace {namespace:?}: the operator's topic-name policy \
                 (namespacePrefix) lets StreamTopics in namespace {namespace:?} manage only topics named \
                 {prefix:?} followed by a name; set spec.topicName, e.g. to \"{prefix}{name}\""
            ),
            TopicRule::NoPrefixes => write!(
                f,
                "{subject} is not allowed: the operator's topic-name policy (prefixMap) lists no topic prefixes \
                 for namespace {namespace:?}, so its StreamTopics may manage no Kafka topics; an administrator \
                 can add the namespace (chart value tenancy.topicNames.prefixes, flag --topic-name-prefixes)"
            ),
            TopicRule::Prefixes { allowed } => write!(
                f,
                "{subject} is not allowed in namespace {namespace:?}: the operator's topic-name policy \
                 (prefixMap) lets it manage only topics whose names start with {}",
                allowed
                    .iter()
                    .map(|p| format!("{p:?}"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            ),
        }
    }
}

/// Whether a StreamTopic in `namespace` may manage the Kafka topic `name`
/// under `policy`; `field` names where the name comes from, for the message.
pub fn check_topic_name(
    policy: &TopicPolicy,
    namespace: &str,
    name: &str,
    field: &'static str,
) -> Result<(), TopicNotAllowed> {
    let refuse = |rule| {
        Err(TopicNotAllowed {
            field,
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            rule,
        })
    };
    if is_internal_topic(name) {
        return refuse(TopicRule::Internal);
    }
    match policy {
        TopicPolicy::Any => Ok(()),
        TopicPolicy::NamespacePrefix(separator) => {
            let prefix = format!("{namespace}{separator}");
            match name.strip_prefix(&prefix) {
                Some(rest) if !rest.is_empty() => Ok(()),
                _ => refuse(TopicRule::NamespacePrefix { prefix }),
            }
        }
        TopicPolicy::PrefixMap(map) => match map.0.get(namespace) {
            None => refuse(TopicRule::NoPrefixes),
            Some(allowed) if allowed.iter().any(|p| name.starts_with(p.as_str())) => Ok(()),
            Some(allowed) => refuse(TopicRule::Prefixes {
                allowed: allowed.clone(),
            }),
        },
    }
}

/// [`check_topic_name`] for the Kafka topic a StreamTopic asks for.
pub fn check_topic(policy: &TopicPolicy, topic: &StreamTopic) -> Result<(), TopicNotAllowed> {
    check_topic_name(
        policy,
        topic.metadata.namespace.as_deref().unwrap_or_default(),
        &topic.kafka_topic_name(),
        topic.topic_name_field(),
    )
}

/// A job's own storage under the operator's default: `<default>/<namespace>/<job>`.
/// Namespace and job names contain no `/`, so no job's root lies within
/// another's.
pub fn job_storage_root(default_storage: &str, namespace: &str, job: &str) -> String {
    format!("{}/{namespace}/{job}", default_storage.trim_end_matches('/'))
}

/// Whether `location` is `root` or lies below it (a trailing `/` on either
/// is ignored), with no `.` or `..` segment below it that could lead back
/// out.
pub fn lies_within(location: &str, root: &str) -> bool {
    let (location, root) = (location.trim_end_matches('/'), root.trim_end_matches('/'));
    match location.strip_prefix(root) {
        Some("") => true,
        Some(rest) => rest.starts_with('/') && rest.split('/').all(|s| s != "." && s != ".."),
        None => false,
    }
}

/// The checkpoint storage and savepoint locations of `spec` that lie
/// outside the job's own root ([`job_storage_root`]); empty when both are
/// inside (or absent). The runtime's layout under its storage names no job
/// and its retention deletes what it does not keep, so storage shared with
/// another job reads and deletes that job's state; a savepoint outside the
/// job's root is someone else's.
pub fn storage_outside_job(
    spec: &StreamJobSpec,
    default_storage: &str,
    namespace: &str,
    job: &str,
) -> Vec<FieldError> {
    let root = job_storage_root(default_storage, namespace, job);
    let mut errors = Vec::new();
    let storage = spec.checkpoint.as_ref().and_then(|c| c.storage.as_deref());
    if let Some(storage) = storage
        && !lies_within(storage, &root)
    {
        errors.push(FieldError::new(
            "spec.checkpoint.storage",
            format!(
                "{storage:?} is outside this job's own storage {root:?}: checkpoints may only go to the \
                 operator's default location for the job or below it, where no other job's checkpoints and \
                 savepoints are; remove the field (or point it below {root:?}), or ask an administrator to allow \
                 custom storage (chart value tenancy.allowCustomCheckpointStorage, flag \
                 --allow-custom-checkpoint-storage)"
            ),
        ));
    }
    let savepoint = spec.restore.as_ref().and_then(|r| r.from_savepoint.as_deref());
    if let Some(savepoint) = savepoint
        && !lies_within(savepoint, &root)
    {
        errors.push(FieldError::new(
            "spec.restore.fromSavepoint",
            format!(
                "{savepoint:?} is outside this job's own storage {root:?}: a job may restore only its own \
                 savepoints (below {root:?}), not another job's; ask an administrator to allow custom storage \
                 (chart value tenancy.allowCustomCheckpointStorage, flag --allow-custom-checkpoint-storage) to \
                 restore from elsewhere"
            ),
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::{StreamTopicSpec, runtime_api};

    fn prefixes(text: &str) -> TopicPolicy {
        TopicPolicy::PrefixMap(text.parse().unwrap())
    }

    fn allowed(policy: &TopicPolicy, namespace: &str, name: &str) -> bool {
        check_topic_name(policy, namespace, name, "spec.topicName").is_ok()
    }

    #[test]
    fn the_internal_topics_of_every_job_are_in_the_internal_space() {
        for (ns, job) in [("ns", "job"), ("team-a", "clicks.v2"), ("a", "b")] {
            assert!(is_internal_topic(&runtime_api::repartition_topic(ns, job)));
            assert!(is_internal_topic(&runtime_api::control_topic(ns, job)));
        }
        // Kafka's '.'/'_' collision counts too.
        assert!(is_internal_topic("streamops_ns_job_checkpoints"));
        assert!(is_internal_topic("streamops."));
        for outside in [
            "streamops",
            "streamopsx.a",
            "Streamops.a",
            "x.streamops.a",
            "streamops-a.b",
            "",
        ] {
            assert!(!is_internal_topic(outside), "{outside:?}");
        }
    }

    #[test]
    fn the_internal_space_is_refused_in_every_mode() {
        let internal = runtime_api::control_topic("team-a", "clicks");
        for policy in [
            TopicPolicy::Any,
            TopicPolicy::NamespacePrefix(Separator::Dot),
            prefixes("team-a=streamops,team-"),
        ] {
            let refused = check_topic_name(&policy, "team-a", &internal, "spec.topicName").unwrap_err();
            assert_eq!(refused.rule, TopicRule::Internal, "{}", policy.mode());
            let message = refused.to_string();
            assert!(
                message.starts_with(&format!("spec.topicName {internal:?}")),
                "{message}"
            );
            assert!(message.contains("internal topic space"), "{message}");
        }
        // Even for the namespace called "streamops" under namespacePrefix.
        let own = TopicPolicy::NamespacePrefix(Separator::Dot);
        assert!(!allowed(&own, "streamops", "streamops.orders"));
    }

    #[test]
    fn any_allows_every_other_name() {
        for name in ["orders", "team-b.orders", "a", "streamops", "streamops-ui.events"] {
            assert!(allowed(&TopicPolicy::Any, "team-a", name), "{name}");
        }
    }

    #[test]
    fn namespace_prefix_allows_only_the_namespaces_own_names() {
        let dot = TopicPolicy::NamespacePrefix(Separator::Dot);
        assert!(allowed(&dot, "team-a", "team-a.orders"));
        assert!(allowed(&dot, "team-a", "team-a.orders.v2"));
        for name in [
            "team-a",
            "team-a.",
            "team-a_orders",
            "team-ab.orders",
            "team-b.orders",
            "orders",
        ] {
            assert!(!allowed(&dot, "team-a", name), "{name}");
        }
        // Namespace `team` cannot reach into namespace `team-a`'s names.
        assert!(!allowed(&dot, "team", "team-a.orders"));
        let underscore = TopicPolicy::NamespacePrefix(Separator::Underscore);
        assert!(allowed(&underscore, "team-a", "team-a_orders"));
        assert!(!allowed(&underscore, "team-a", "team-a.orders"));

        let refused = check_topic_name(&dot, "team-a", "orders", "metadata.name").unwrap_err();
        assert_eq!(
            refused.rule,
            TopicRule::NamespacePrefix {
                prefix: "team-a.".into()
            }
        );
        let message = refused.to_string();
        assert!(
            message
                .starts_with("metadata.name \"orders\" (the Kafka topic name while spec.topicName is unset)"),
            "{message}"
        );
        assert!(message.contains("namespacePrefix"), "{message}");
        assert!(
            message.contains("\"team-a.orders\""),
            "the fix is suggested: {message}"
        );
    }

    #[test]
    fn prefix_map_allows_the_listed_prefixes_and_nothing_for_absent_namespaces() {
        let policy = prefixes("team-a=orders.,payments.;team-b=ads.");
        assert!(allowed(&policy, "team-a", "orders.eu"));
        assert!(allowed(&policy, "team-a", "payments.v1"));
        assert!(
            allowed(&policy, "team-a", "orders."),
            "a prefix may be a whole name"
        );
        assert!(!allowed(&policy, "team-a", "ads.clicks"));
        assert!(allowed(&policy, "team-b", "ads.clicks"));

        let refused = check_topic_name(&policy, "team-a", "ads.clicks", "spec.topicName").unwrap_err();
        let message = refused.to_string();
        assert!(message.contains("\"orders.\" or \"payments.\""), "{message}");
        assert!(message.contains("namespace \"team-a\""), "{message}");

        let refused = check_topic_name(&policy, "team-c", "orders.eu", "spec.topicName").unwrap_err();
        assert_eq!(refused.rule, TopicRule::NoPrefixes);
        assert!(refused.to_string().contains("--topic-name-prefixes"), "{refused}");
        assert!(
            !allowed(&prefixes(""), "team-a", "orders"),
            "an empty map allows nothing"
        );
    }

    #[test]
    fn the_refused_field_follows_where_the_kafka_name_comes_from() {
        let policy = TopicPolicy::NamespacePrefix(Separator::Dot);
        let mut topic = StreamTopic::new(
            "orders",
            StreamTopicSpec {
                topic_name: None,
                partitions: 1,
                replication_factor: None,
                config: BTreeMap::new(),
                cluster: None,
                deletion_policy: None,
            },
        );
        topic.metadata.namespace = Some("team-a".into());
        let refused = check_topic(&policy, &topic).unwrap_err();
        assert_eq!(
            (refused.field, refused.name.as_str()),
            ("metadata.name", "orders")
        );
        topic.spec.topic_name = Some("team-b.orders".into());
        let refused = check_topic(&policy, &topic).unwrap_err();
        assert_eq!(
            (refused.field, refused.name.as_str()),
            ("spec.topicName", "team-b.orders")
        );
        topic.spec.topic_name = Some("team-a.orders".into());
        assert_eq!(check_topic(&policy, &topic), Ok(()));
    }

    #[test]
    fn prefix_maps_parse_print_and_refuse_mistakes() {
        let map: PrefixMap = " team-a = orders., payments. ; team-b=ads. ;".parse().unwrap();
        assert_eq!(
            map.0,
            BTreeMap::from([
                (
                    "team-a".to_owned(),
                    vec!["orders.".to_owned(), "payments.".to_owned()]
                ),
                ("team-b".to_owned(), vec!["ads.".to_owned()]),
            ])
        );
        assert_eq!(map.to_string(), "team-a=orders.,payments.;team-b=ads.");
        assert_eq!(map.to_string().parse::<PrefixMap>().unwrap(), map);
        assert_eq!("".parse::<PrefixMap>().unwrap(), PrefixMap::default());
        for bad in [
            "team-a",
            "Team-A=orders.",
            "team_a=orders.",
            "-a=orders.",
            "team-a=",
            "team-a=orders/",
            "team-a=streamops.",
            "team-a=streamops_x",
            "team-a=orders.;team-a=ads.",
            &format!("team-a={}", "x".repeat(250)),
        ] {
            assert!(bad.parse::<PrefixMap>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn separators_are_dot_or_underscore_only() {
        assert_eq!(".".parse::<Separator>(), Ok(Separator::Dot));
        assert_eq!("_".parse::<Separator>(), Ok(Separator::Underscore));
        for bad in ["-", "", "..", "a", "/"] {
            assert!(bad.parse::<Separator>().is_err(), "{bad:?}");
        }
        assert_eq!(Separator::Underscore.to_string(), "_");
    }

    fn job_spec(storage: Option<&str>, savepoint: Option<&str>) -> StreamJobSpec {
        let mut spec = crate::job::tests::example();
        if let Some(storage) = storage {
            spec.checkpoint = Some(serde_json::from_value(serde_json::json!({"storage": storage})).unwrap());
        }
        if let Some(savepoint) = savepoint {
            spec.restore =
                Some(serde_json::from_value(serde_json::json!({"fromSavepoint": savepoint})).unwrap());
        }
        spec
    }

    fn refused_fields(spec: &StreamJobSpec) -> Vec<String> {
        storage_outside_job(spec, "s3://bucket/checkpoints/", "team-a", "clicks")
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_job_keeps_its_state_under_its_own_root() {
        assert_eq!(
            job_storage_root("s3://bucket/checkpoints/", "team-a", "clicks"),
            "s3://bucket/checkpoints/team-a/clicks"
        );
        for inside in [
            None,
            Some("s3://bucket/checkpoints/team-a/clicks"),
            Some("s3://bucket/checkpoints/team-a/clicks/"),
            Some("s3://bucket/checkpoints/team-a/clicks/v2"),
        ] {
            assert!(refused_fields(&job_spec(inside, None)).is_empty(), "{inside:?}");
        }
        for outside in [
            "s3://bucket/checkpoints",
            "s3://bucket/checkpoints/team-a",
            "s3://bucket/checkpoints/team-a/clicks-2",
            "s3://bucket/checkpoints/team-b/clicks",
            "s3://bucket/checkpoints/team-a/clicks/../../team-b/clicks",
            "s3://bucket/checkpoints/team-a/clicks/./x",
            "s3://other/checkpoints/team-a/clicks",
            "file:///var/lib/streamops/checkpoints/team-a/clicks",
        ] {
            let spec = job_spec(Some(outside), None);
            assert_eq!(
                refused_fields(&spec),
                vec!["spec.checkpoint.storage"],
                "{outside}"
            );
            let errors = storage_outside_job(&spec, "s3://bucket/checkpoints/", "team-a", "clicks");
            let message = &errors[0].message;
            assert!(
                message.contains("\"s3://bucket/checkpoints/team-a/clicks\""),
                "names the allowed root: {message}"
            );
            assert!(message.contains("--allow-custom-checkpoint-storage"), "{message}");
        }
    }

    #[test]
    fn a_job_restores_only_its_own_savepoints() {
        let own = "s3://bucket/checkpoints/team-a/clicks/savepoints/sp-1";
        assert!(refused_fields(&job_spec(None, Some(own))).is_empty());
        let foreign = "s3://bucket/checkpoints/team-b/clicks/savepoints/sp-1";
        assert_eq!(
            refused_fields(&job_spec(None, Some(foreign))),
            vec!["spec.restore.fromSavepoint"]
        );
        // Storage pointed at the other job and its savepoint: both named.
        assert_eq!(
            refused_fields(&job_spec(
                Some("s3://bucket/checkpoints/team-b/clicks"),
                Some(foreign)
            )),
            vec!["spec.checkpoint.storage", "spec.restore.fromSavepoint"]
        );
    }

    // The independent model: names from a small alphabet of fragments that
    // hit every boundary (separators, the internal prefix, namespaces that
    // prefix each other), judged by rules written differently from the code
    // under test: segment splitting and an enumeration of every prefix.

    const NAMESPACES: [&str; 4] = ["a", "ab", "a-b", "streamops"];

    fn arb_fragments() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop::sample::select(vec!["a", "ab", "a-b", "b", ".", "_", "-", "streamops", "x"]),
            0..5,
        )
        .prop_map(|parts| parts.concat())
    }

    /// Mostly names that start like a namespace or the internal prefix, so
    /// that allowed and refused names both come up often.
    fn arb_name() -> impl Strategy<Value = String> {
        let start = prop::sample::select(vec!["a", "ab", "a-b", "streamops", "x", ""]);
        let sep = prop::sample::select(vec![".", "_", "-", ""]);
        (start, sep, arb_fragments())
            .prop_map(|(start, sep, rest)| format!("{start}{sep}{rest}"))
            .prop_filter("Kafka topic names are not empty", |n| !n.is_empty())
    }

    fn arb_prefix() -> impl Strategy<Value = String> {
        (
            prop::sample::select(vec!["a", "ab", "a-b", "b", "x", "streamops"]),
            prop::sample::select(vec!["", ".", "_", "-"]),
        )
            .prop_map(|(start, sep)| format!("{start}{sep}"))
    }

    /// A namespace's prefixes, if it is in the map: random ones, or its
    /// own name followed by a separator.
    fn arb_prefixes_of(namespace: &'static str) -> impl Strategy<Value = Option<Vec<String>>> {
        let own = prop::sample::select(vec![".", "_", ""]).prop_map(move |sep| format!("{namespace}{sep}"));
        prop::option::of(prop::collection::vec(prop_oneof![arb_prefix(), own], 1..3))
    }

    fn arb_prefix_map() -> impl Strategy<Value = PrefixMap> {
        let [a, b, c, d] = NAMESPACES;
        (
            arb_prefixes_of(a),
            arb_prefixes_of(b),
            arb_prefixes_of(c),
            arb_prefixes_of(d),
        )
            .prop_map(|(a, b, c, d)| {
                let lists = [a, b, c, d].map(|l| {
                    l.map(|ps| {
                        ps.into_iter()
                            .filter(|p| !is_internal_topic(p))
                            .collect::<Vec<_>>()
                    })
                });
                PrefixMap(
                    NAMESPACES
                        .into_iter()
                        .zip(lists)
                        .filter_map(|(ns, ps)| Some((ns.to_owned(), ps?)))
                        .filter(|(_, ps)| !ps.is_empty())
                        .collect(),
                )
            })
    }

    fn model_internal(name: &str) -> bool {
        let normalised = name.replace('_', ".");
        normalised.contains('.') && normalised.split('.').next() == Some("streamops")
    }

    fn model_allowed(policy: &TopicPolicy, namespace: &str, name: &str) -> bool {
        if model_internal(name) {
            return false;
        }
        match policy {
            TopicPolicy::Any => true,
            // Namespaces contain no separator: the text before the first
            // separator is the namespace the name belongs to.
            TopicPolicy::NamespacePrefix(sep) => name
                .split_once(sep.as_char())
                .is_some_and(|(owner, rest)| owner == namespace && !rest.is_empty()),
            TopicPolicy::PrefixMap(map) => {
                let every_prefix: BTreeSet<&str> = (0..=name.len()).map(|i| &name[..i]).collect();
                map.0
                    .get(namespace)
                    .is_some_and(|ps| ps.iter().any(|p| every_prefix.contains(p.as_str())))
            }
        }
    }

    fn arb_policy() -> impl Strategy<Value = TopicPolicy> {
        prop_oneof![
            Just(TopicPolicy::Any),
            Just(TopicPolicy::NamespacePrefix(Separator::Dot)),
            Just(TopicPolicy::NamespacePrefix(Separator::Underscore)),
            arb_prefix_map().prop_map(TopicPolicy::PrefixMap),
        ]
    }

    /// A namespace and a name, half of the names built on that namespace.
    fn arb_namespace_and_name() -> impl Strategy<Value = (&'static str, String)> {
        prop::sample::select(NAMESPACES.to_vec()).prop_flat_map(|namespace| {
            let own = (prop::sample::select(vec![".", "_", "-"]), arb_fragments())
                .prop_map(move |(sep, rest)| format!("{namespace}{sep}{rest}"));
            (Just(namespace), prop_oneof![arb_name(), own])
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn the_policy_agrees_with_the_model(
            policy in arb_policy(),
            (namespace, name) in arb_namespace_and_name(),
        ) {
            prop_assert_eq!(is_internal_topic(&name), model_internal(&name), "{}", name);
            let got = check_topic_name(&policy, namespace, &name, "spec.topicName");
            prop_assert_eq!(got.is_ok(), model_allowed(&policy, namespace, &name), "{:?} {} {}", policy, namespace, name);
            if let Err(refused) = got {
                prop_assert_eq!(refused.rule == TopicRule::Internal, model_internal(&name));
            }
        }

        /// Under namespacePrefix no name belongs to two namespaces.
        #[test]
        fn namespace_prefixes_never_overlap(
            sep in prop_oneof![Just(Separator::Dot), Just(Separator::Underscore)],
            name in arb_name(),
        ) {
            let policy = TopicPolicy::NamespacePrefix(sep);
            let owners: Vec<&str> = NAMESPACES.into_iter().filter(|ns| allowed(&policy, ns, &name)).collect();
            prop_assert!(owners.len() <= 1, "{} belongs to {:?}", name, owners);
        }

        /// A location built from the root and some segments is within it
        /// exactly when no segment is `.` or `..`; a sibling never is.
        #[test]
        fn lies_within_follows_the_segments(
            segments in prop::collection::vec(prop::sample::select(vec!["a", ".", "..", "sp-1", ""]), 0..4),
            sibling in "[a-z0-9-]{1,3}",
        ) {
            let root = "s3://bucket/root/ns/job";
            let location = std::iter::once(root).chain(segments.iter().copied()).collect::<Vec<_>>().join("/");
            let escapes = segments.iter().any(|s| *s == "." || *s == "..");
            prop_assert_eq!(lies_within(&location, root), !escapes, "{}", location);
            let sibling_location = format!("{root}{sibling}");
            prop_assert!(!lies_within(&sibling_location, root), "{}", sibling_location);
        }
    }
}
