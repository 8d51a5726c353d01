//! The API against a real kube-apiserver: the CRDs install, the examples are
//! accepted exactly as written (no schema defaults), invalid specs are refused
//! with a message naming the field, and status is a separate subresource.

use anyhow::Context;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;
use streamops_crds::{StreamJob, StreamTopic};
use streamops_e2e::cluster_test;
use streamops_e2e::{
    FIELD_MANAGER, TestNamespace, apply, client, install_crds, kubectl, load_manifests, repo_root, yaml_files,
};

#[tokio::test]
async fn crds_install_and_become_established() -> anyhow::Result<()> {
    if !cluster_test(&["STREAMOPS_KUBECONFIG"]) {
        return Ok(());
    }
    let client = client().await?;
    install_crds(&client).await?;
    // Installing twice is a no-op (server-side apply), as a GitOps resync does.
    install_crds(&client).await
}

#[tokio::test]
async fn every_example_is_accepted_exactly_as_written() -> anyhow::Result<()> {
    if !cluster_test(&["STREAMOPS_KUBECONFIG"]) {
        return Ok(());
    }
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "examples").await?;
    let files = yaml_files(&repo_root().join("examples"))?;
    assert!(!files.is_empty(), "no examples found");
    let mut applied = 0;
    for file in files {
        for obj in load_manifests(&file)? {
            let name = obj.metadata.name.clone().unwrap_or_default();
            let stored = apply(&client, &ns.name, &obj)
                .await?
                .with_context(|| format!("{} ({name}) was refused", file.display()))?;
            // The apiserver must store the spec byte-for-byte as written: a
            // schema default would show up as drift in Argo CD.
            assert_eq!(
                stored.data.get("spec"),
                obj.data.get("spec"),
                "{name} from {} was changed on the way in",
                file.display()
            );
            applied += 1;
        }
    }
    println!("applied {applied} example objects");
    ns.delete().await
}

#[tokio::test]
async fn invalid_specs_are_refused_with_a_message_naming_the_field() -> anyhow::Result<()> {
    if !cluster_test(&["STREAMOPS_KUBECONFIG"]) {
        return Ok(());
    }
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "invalid").await?;
    let dir = repo_root().join("e2e/manifests/invalid");
    let files = yaml_files(&dir)?;
    assert!(
        files.len() >= 10,
        "expected the invalid-manifest corpus in {}",
        dir.display()
    );
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let expected_field = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .with_context(|| format!("{} has no '# expect: <field>' line", file.display()))?
            .trim()
            .to_owned();
        for obj in load_manifests(&file)? {
            match apply(&client, &ns.name, &obj).await? {
                Ok(_) => panic!("{} was accepted but must be refused", file.display()),
                Err(kube::Error::Api(status)) => {
                    println!(
                        "{}: {}",
                        file.file_name().unwrap_or_default().to_string_lossy(),
                        status.message
                    );
                    assert_eq!(status.code, 422, "{}: {status:?}", file.display());
                    assert!(
                        status.message.contains(&expected_field),
                        "{}: message does not name {expected_field}: {}",
                        file.display(),
                        status.message
                    );
                }
                Err(other) => return Err(other).context(format!("applying {}", file.display())),
            }
        }
    }
    ns.delete().await
}

#[tokio::test]
async fn status_is_a_subresource_the_spec_cannot_touch() -> anyhow::Result<()> {
    if !cluster_test(&["STREAMOPS_KUBECONFIG"]) {
        return Ok(());
    }
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "status").await?;
    let topics: Api<StreamTopic> = Api::namespaced(client.clone(), &ns.name);
    let topic: StreamTopic = serde_json::from_value(json!({
        "apiVersion": "streamops.io/v1alpha1", "kind": "StreamTopic",
        "metadata": {"name": "t1"},
        "spec": {"partitions": 3}
    }))?;
    let created = topics
        .patch("t1", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&topic))
        .await?;
    assert_eq!(created.metadata.generation, Some(1));

    // A controller writes status through the subresource...
    let status = json!({
        "apiVersion": "streamops.io/v1alpha1", "kind": "StreamTopic",
        "status": {
            "observedGeneration": 1, "topicName": "t1", "partitions": 3,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Synced",
                            "message": "topic t1 matches the spec", "lastTransitionTime": "2026-11-22T00:00:00Z"}]
        }
    });
    let with_status = topics
        .patch_status(
            "t1",
            &PatchParams::apply("streamops-operator").force(),
            &Patch::Apply(&status),
        )
        .await?;
    // ...which neither bumps the generation nor touches the spec.
    assert_eq!(with_status.metadata.generation, Some(1));
    assert_eq!(with_status.spec.partitions, 3);
    let st = with_status.status.context("status missing")?;
    assert_eq!(st.observed_generation, Some(1));
    assert_eq!(st.conditions[0].reason, "Synced");

    // A spec change bumps the generation, so observedGeneration shows staleness.
    let mut grown = topic.clone();
    grown.spec.partitions = 6;
    let updated = topics
        .patch("t1", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&grown))
        .await?;
    assert_eq!(updated.metadata.generation, Some(2));
    assert_eq!(updated.status.and_then(|s| s.observed_generation), Some(1));

    // And a status written through the main resource is ignored.
    let sneaky = json!({"status": {"observedGeneration": 99}});
    let after = topics
        .patch("t1", &PatchParams::default(), &Patch::Merge(&sneaky))
        .await?;
    assert_eq!(after.status.and_then(|s| s.observed_generation), Some(1));
    ns.delete().await
}

#[tokio::test]
async fn typed_clients_round_trip_the_examples() -> anyhow::Result<()> {
    if !cluster_test(&["STREAMOPS_KUBECONFIG"]) {
        return Ok(());
    }
    // What the operator will read: every example deserialises into the typed
    // API and passes the validation the schema cannot express.
    use streamops_crds::Validation;
    for file in yaml_files(&repo_root().join("examples"))? {
        for obj in load_manifests(&file)? {
            let kind = obj.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
            let value = serde_json::to_value(&obj)?;
            let problems = match kind.as_str() {
                "StreamTopic" => serde_json::from_value::<StreamTopic>(value)?.spec.validate(),
                "StreamJob" => serde_json::from_value::<StreamJob>(value)?.spec.validate(),
                other => panic!("unexpected kind {other} in {}", file.display()),
            };
            assert!(problems.is_empty(), "{}: {problems:?}", file.display());
        }
    }
    Ok(())
}

/// The `# expect: ` lines of a corpus file.
fn expected_lines(text: &str) -> Vec<&str> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .collect()
}

/// What a refusal says after `<Kind> "<name>" is invalid: ` (one error).
fn refusal_detail(message: &str) -> &str {
    message.split_once(" is invalid: ").map_or(message, |(_, b)| b)
}

#[tokio::test]
async fn cel_rules_refuse_bad_specs_at_admission_with_their_exact_messages() -> anyhow::Result<()> {
    if !cluster_test(&["STREAMOPS_KUBECONFIG"]) {
        return Ok(());
    }
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "cel").await?;
    let refused = yaml_files(&repo_root().join("e2e/manifests/cel"))?;
    assert!(
        refused.len() >= 15,
        "expected the CEL corpus in e2e/manifests/cel"
    );
    for file in &refused {
        let text = std::fs::read_to_string(file)?;
        let expected = expected_lines(&text);
        assert!(
            !expected.is_empty(),
            "{} has no '# expect: ' line",
            file.display()
        );
        // As `kubectl apply --dry-run=server` answers a user (or a CI check
        // before a GitOps merge): refused at once, every line exact.
        let path = file.display().to_string();
        let dry = kubectl(&["apply", "--dry-run=server", "-n", &ns.name, "-f", &path]);
        let err = match dry {
            Ok(out) => panic!("{path} was accepted by a server-side dry run: {out}"),
            Err(e) => format!("{e:#}"),
        };
        for line in &expected {
            assert!(
                err.contains(line),
                "{path}: kubectl's refusal lacks\n  {line}\nit said:\n{err}"
            );
        }
        // And through the API (server-side apply, as the operator's tests
        // and Argo CD do): 422, the same lines and no others.
        for obj in load_manifests(file)? {
            match apply(&client, &ns.name, &obj).await? {
                Ok(_) => panic!("{path} was accepted but must be refused"),
                Err(kube::Error::Api(status)) => {
                    assert_eq!(status.code, 422, "{path}: {status:?}");
                    for line in &expected {
                        assert!(
                            status.message.contains(line),
                            "{path}: the refusal lacks\n  {line}\nit said: {}",
                            status.message
                        );
                    }
                    let errors = status.message.matches(": Invalid value: ").count()
                        + status.message.matches(": Required value: ").count()
                        + status.message.matches(": Forbidden: ").count();
                    assert_eq!(errors, expected.len(), "{path}: {}", status.message);
                }
                Err(other) => return Err(other).context(format!("applying {path}")),
            }
        }
    }
    // The boundary of each rule is accepted (and stored as written).
    for file in yaml_files(&repo_root().join("e2e/manifests/cel-accepted"))? {
        for obj in load_manifests(&file)? {
            let stored = apply(&client, &ns.name, &obj)
                .await?
                .with_context(|| format!("{} was refused", file.display()))?;
            assert_eq!(
                stored.data.get("spec"),
                obj.data.get("spec"),
                "{}",
                file.display()
            );
        }
    }
    println!(
        "{} refused with their exact messages, boundaries accepted",
        refused.len()
    );
    ns.delete().await
}

#[tokio::test]
async fn what_kafka_cannot_change_on_an_existing_topic_is_refused_at_apply() -> anyhow::Result<()> {
    if !cluster_test(&["STREAMOPS_KUBECONFIG"]) {
        return Ok(());
    }
    let client = client().await?;
    install_crds(&client).await?;
    let ns = TestNamespace::create(&client, "transitions").await?;
    let topics: Api<StreamTopic> = Api::namespaced(client.clone(), &ns.name);
    let apply_spec = |spec: serde_json::Value| {
        let topics = topics.clone();
        async move {
            let t: StreamTopic = serde_json::from_value(json!({
                "apiVersion": "streamops.io/v1alpha1", "kind": "StreamTopic",
                "metadata": {"name": "orders"}, "spec": spec
            }))?;
            anyhow::Ok(
                topics
                    .patch("orders", &PatchParams::apply(FIELD_MANAGER), &Patch::Apply(&t))
                    .await,
            )
        }
    };
    let refusal = |r: Result<StreamTopic, kube::Error>| match r {
        Ok(t) => panic!("accepted: {:?}", t.spec),
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{s:?}");
            refusal_detail(&s.message).to_string()
        }
        Err(e) => panic!("{e}"),
    };
    // Before the topic exists (no status), a spec can still be fixed: a
    // smaller count, another name, another replication factor.
    apply_spec(json!({"partitions": 8, "replicationFactor": 3})).await??;
    apply_spec(json!({"partitions": 4, "topicName": "shop.orders", "replicationFactor": 1})).await??;
    // The operator creates it and says so in status.
    let status = json!({
        "apiVersion": "streamops.io/v1alpha1", "kind": "StreamTopic",
        "status": {"topicName": "shop.orders", "partitions": 4, "replicationFactor": 1}
    });
    topics
        .patch_status(
            "orders",
            &PatchParams::apply("streamops-operator").force(),
            &Patch::Apply(&status),
        )
        .await?;
    assert_eq!(
        refusal(
            apply_spec(json!({"partitions": 3, "topicName": "shop.orders", "replicationFactor": 1})).await?
        ),
        "spec.partitions: Forbidden: cannot go below the topic's partition count, status.partitions (Kafka cannot \
         remove partitions)"
    );
    assert_eq!(
        refusal(
            apply_spec(json!({"partitions": 4, "topicName": "shop.orders.v2", "replicationFactor": 1}))
                .await?
        ),
        "spec.topicName: Forbidden: the Kafka topic shop.orders cannot be renamed (Kafka cannot rename topics); \
         restore spec.topicName, or create a new StreamTopic for the new name"
    );
    // Dropping spec.topicName would make metadata.name the topic's name.
    assert_eq!(
        refusal(apply_spec(json!({"partitions": 4, "replicationFactor": 1})).await?),
        "spec.topicName: Forbidden: the Kafka topic shop.orders cannot be renamed (Kafka cannot rename topics); \
         restore spec.topicName, or create a new StreamTopic for the new name"
    );
    assert_eq!(
        refusal(
            apply_spec(json!({"partitions": 4, "topicName": "shop.orders", "replicationFactor": 3})).await?
        ),
        "spec.replicationFactor: Forbidden: differs from the topic's replication factor, status.replicationFactor, \
         and the operator does not reassign replicas; set it to that value or remove it"
    );
    // What Kafka can do is accepted: more partitions, the same name and
    // factor, or no factor at all (the topic keeps its own).
    let grown = apply_spec(json!({"partitions": 6, "topicName": "shop.orders"})).await??;
    assert_eq!(grown.spec.partitions, 6);
    // The operator's status writes never trip a rule, even when the spec is
    // below what Kafka reports (a topic grown out of band, reported Stalled).
    let status = json!({
        "apiVersion": "streamops.io/v1alpha1", "kind": "StreamTopic",
        "status": {"topicName": "shop.orders", "partitions": 12, "replicationFactor": 1, "observedGeneration": 3}
    });
    for _ in 0..2 {
        topics
            .patch_status(
                "orders",
                &PatchParams::apply("streamops-operator").force(),
                &Patch::Apply(&status),
            )
            .await
            .context("a status write was refused by a spec rule")?;
    }
    ns.delete().await
}
