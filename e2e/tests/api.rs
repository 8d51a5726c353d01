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
    FIELD_MANAGER, TestNamespace, apply, client, install_crds, load_manifests, repo_root, yaml_files,
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
