//! Harness for tests that run against a real kube-apiserver.
//!
//! The cluster comes from `e2e/cluster/cluster.sh up --control-plane` (or `up`
//! for a full node); `e2e/test.sh` starts it and exports
//! `STREAMOPS_KUBECONFIG`. These tests never fall back to a mock: without a
//! cluster they fail and say how to start one.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use k8s_openapi::{
    api::core::v1::Namespace, apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, DynamicObject, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::GroupVersionKind,
    discovery,
};

/// Field manager for everything the tests write.
pub const FIELD_MANAGER: &str = "streamops-e2e";

/// A client for the test cluster named by `STREAMOPS_KUBECONFIG`.
pub async fn client() -> anyhow::Result<Client> {
    let path = std::env::var("STREAMOPS_KUBECONFIG").context(
        "STREAMOPS_KUBECONFIG is not set: these tests need a real apiserver. \
         Run them through `make test` (or `e2e/cluster/cluster.sh up --control-plane` \
         and export STREAMOPS_KUBECONFIG=<the kubeconfig it prints>)",
    )?;
    let kubeconfig = Kubeconfig::read_from(&path).with_context(|| format!("reading kubeconfig {path}"))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {path}"))?;
    Client::try_from(config).context("building a client")
}

/// The repository's top-level directory: the checkout `cargo test` runs in
/// (read at run time, so a binary reused from a build cache shared between
/// checkouts still reads this checkout's files).
pub fn repo_root() -> PathBuf {
    let manifest_dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    Path::new(&manifest_dir)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Every object in a (multi-document) YAML file.
pub fn load_manifests(path: &Path) -> anyhow::Result<Vec<DynamicObject>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&text).with_context(|| format!("parsing {}", path.display()))?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .map(|d| serde_json::from_value(d).with_context(|| format!("object in {}", path.display())))
        .collect()
}

/// The YAML files directly in `dir`, sorted.
pub fn yaml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

/// Installs (server-side applies) the committed CRDs under `crds/` and waits
/// until the apiserver serves them.
pub async fn install_crds(client: &Client) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for file in yaml_files(&repo_root().join("crds"))? {
        let text = std::fs::read_to_string(&file)?;
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying {}", file.display()))?;
        names.push(name);
    }
    for name in names {
        wait_for(Duration::from_secs(30), || async {
            let crd = api.get(&name).await?;
            Ok(crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"))
        })
        .await
        .with_context(|| format!("CRD {name} never became Established"))?;
    }
    Ok(())
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn wait_for<F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            match last_error {
                Some(e) => bail!("timed out after {timeout:?}; last error: {e:#}"),
                None => bail!("timed out after {timeout:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A namespace of its own for one test, deleted by [`TestNamespace::delete`].
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> anyhow::Result<Self> {
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"generateName": format!("{prefix}-"), "labels": {"streamops.io/e2e": "true"}}
        }))?;
        let created = api
            .create(&PostParams::default(), &ns)
            .await
            .context("creating test namespace")?;
        let name = created.metadata.name.context("namespace without a name")?;
        Ok(Self {
            name,
            client: client.clone(),
        })
    }

    pub async fn delete(self) -> anyhow::Result<()> {
        let api: Api<Namespace> = Api::all(self.client);
        api.delete(&self.name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting namespace {}", self.name))?;
        Ok(())
    }
}

/// A namespaced API for an object's kind, found through discovery.
pub async fn api_for(
    client: &Client,
    obj: &DynamicObject,
    namespace: &str,
) -> anyhow::Result<Api<DynamicObject>> {
    let types = obj.types.as_ref().context("object without apiVersion/kind")?;
    let gvk = GroupVersionKind::try_from(types)?;
    let (resource, _caps) = discovery::pinned_kind(client, &gvk)
        .await
        .with_context(|| format!("discovering {gvk:?}"))?;
    Ok(Api::namespaced_with(client.clone(), namespace, &resource))
}

/// Server-side applies `obj` into `namespace`.
pub async fn apply(
    client: &Client,
    namespace: &str,
    obj: &DynamicObject,
) -> anyhow::Result<Result<DynamicObject, kube::Error>> {
    let api = api_for(client, obj, namespace).await?;
    let name = obj.metadata.name.clone().context("object without a name")?;
    let mut obj = obj.clone();
    obj.metadata.namespace = Some(namespace.to_owned());
    Ok(api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&obj),
        )
        .await)
}

/// [`apply`] that fails on a refusal, naming the object.
pub async fn apply_ok(client: &Client, ns: &str, o: &DynamicObject) -> anyhow::Result<()> {
    apply(client, ns, o)
        .await?
        .with_context(|| format!("applying {:?}", o.metadata.name))?;
    Ok(())
}

/// An object from its JSON.
pub fn obj(v: serde_json::Value) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(v)?)
}

/// A StreamTopic `name` for Kafka topic `kafka_name` (replication factor 1,
/// deleted with the resource).
pub fn stream_topic(name: &str, kafka_name: &str, partitions: i32) -> anyhow::Result<DynamicObject> {
    obj(serde_json::json!({
        "apiVersion": "streamops.io/v1alpha1", "kind": "StreamTopic",
        "metadata": {"name": name},
        "spec": {"topicName": kafka_name, "partitions": partitions, "replicationFactor": 1,
                 "deletionPolicy": "Delete"}
    }))
}

/// The value at `path` in `o` (Null when absent).
pub fn field<'a>(o: &'a DynamicObject, path: &[&str]) -> &'a serde_json::Value {
    let mut v = &o.data;
    for p in path {
        v = &v[*p];
    }
    v
}

/// `status.phase`, empty when not written yet.
pub fn phase(o: &DynamicObject) -> String {
    field(o, &["status", "phase"])
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Says what a test is doing or waiting for, with the time since `t0`.
pub fn say(t0: std::time::Instant, what: impl std::fmt::Display) {
    eprintln!("[{:6.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// The kubeconfig of the test cluster (`STREAMOPS_KUBECONFIG`).
pub fn kubeconfig_path() -> String {
    std::env::var("STREAMOPS_KUBECONFIG").unwrap_or_else(|_| "/tmp/streamops-cluster/kubeconfig".into())
}

/// Runs `kubectl` against the test cluster; its standard output, or an error
/// naming the command and carrying both outputs.
pub fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig_path())
        .args(args)
        .output()
        .context("running kubectl (is it installed? e2e/cluster/install.sh puts it on PATH)")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "kubectl {} failed ({}):\n{stdout}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// What a failed test leaves for a human: the namespace's streamops objects,
/// StatefulSets, pods and events, every pod's logs (and previous logs), and
/// the operator's logs and pods from `operator_ns`, written under
/// `$STREAMOPS_ARTIFACTS/<ns>` (default `/tmp/streamops-e2e-artifacts`).
/// Returns the directory.
pub fn collect_logs(ns: &str, operator_ns: &str, operator_selector: &str) -> PathBuf {
    let dir = PathBuf::from(
        std::env::var("STREAMOPS_ARTIFACTS").unwrap_or_else(|_| "/tmp/streamops-e2e-artifacts".into()),
    )
    .join(ns);
    let _ = std::fs::create_dir_all(&dir);
    let save = |args: &[&str], file: &str| {
        let text = kubectl(args).unwrap_or_else(|e| format!("{e:#}"));
        let _ = std::fs::write(dir.join(file), text);
    };
    save(
        &[
            "get",
            "streamjobs,streamtopics,statefulsets,pods,configmaps",
            "-n",
            ns,
            "-o",
            "yaml",
        ],
        "objects.yaml",
    );
    save(
        &["get", "events", "-n", ns, "--sort-by=.lastTimestamp"],
        "events.txt",
    );
    save(
        &["logs", "-n", operator_ns, "-l", operator_selector, "--tail=-1"],
        "operator.log",
    );
    save(
        &["get", "pods", "-n", operator_ns, "-o", "wide"],
        "operator-pods.txt",
    );
    if let Ok(pods) = kubectl(&["get", "pods", "-n", ns, "-o", "name"]) {
        for pod in pods.lines().filter(|l| l.starts_with("pod/")) {
            let name = pod.trim_start_matches("pod/");
            save(&["logs", "-n", ns, pod], &format!("{name}.log"));
            save(
                &["logs", "-n", ns, pod, "--previous"],
                &format!("{name}.previous.log"),
            );
        }
    }
    dir
}

/// Whether a test that needs the environment variables `vars` (the local
/// cluster's kubeconfig, the broker) runs. With all of them set it does;
/// without, it is skipped with a message saying how to run it, so that
/// `cargo test --workspace` passes on a machine without a cluster, unless
/// `STREAMOPS_REQUIRE_CLUSTER` is set (`make test` sets it), when a missing
/// variable fails the test instead of skipping it.
pub fn cluster_test(vars: &[&str]) -> bool {
    let missing: Vec<&str> = vars
        .iter()
        .copied()
        .filter(|v| std::env::var_os(v).is_none_or(|x| x.is_empty()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "needs {} (the local cluster and broker: `make test` runs every such test; \
         e2e/README.md says how to run them by hand)",
        missing.join(", ")
    );
    assert!(
        std::env::var_os("STREAMOPS_REQUIRE_CLUSTER").is_none(),
        "STREAMOPS_REQUIRE_CLUSTER is set but this test {why}"
    );
    eprintln!("skipped: this test {why}");
    false
}
