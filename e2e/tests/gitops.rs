//! User story: GitOps. A platform team keeps `examples/` (StreamTopics and
//! StreamJobs) in Git and applies the whole directory, as Argo CD (with
//! `ServerSideApply=true`) or a CI pipeline would, with `kubectl apply
//! --server-side -f <dir>`. What they need:
//!
//! 1. one apply converges: every StreamTopic and StreamJob becomes `Ready`,
//!    and `kubectl wait --for=condition=Ready` (what Argo CD's and kstatus'
//!    readiness checks rest on) says so;
//! 2. no drift: applying the same directory again changes nothing, and
//!    `kubectl diff` shows nothing, although the operator has written status
//!    and applied its defaults (defaults live in code, never in the stored
//!    object);
//! 3. a bad edit is refused when it is applied, with the CRD's CEL message,
//!    and the running object keeps its spec (it never merges and syncs to a
//!    `Stalled` job);
//! 4. deleting the directory's objects removes the jobs' pods.
//!
//! Needs the `jobs` stage's setup (a full node, images imported, the chart
//! installed; see `e2e/test.sh`) and `STREAMOPS_KUBECONFIG`. The examples name
//! fixed Kafka topics (`clicks`, ...), so this test refuses to run next to
//! other resources claiming them (the demo): it needs a cluster of its own.
//! On failure the namespace is kept and the logs are collected.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use streamops_e2e::cluster_test;
use streamops_e2e::{collect_logs, kubectl, load_manifests, repo_root, yaml_files};

const OPERATOR_NS: &str = "streamops-system";
/// The field manager of the directory's owner (Argo CD uses its own name).
const FIELD_MANAGER: &str = "--field-manager=gitops";
const OPERATOR_SELECTOR: &str = "app.kubernetes.io/instance=streamops";

fn say(t0: Instant, what: impl AsRef<str>) {
    eprintln!("[gitops {:>6.1}s] {}", t0.elapsed().as_secs_f64(), what.as_ref());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_applied_twice_converges_without_drift() {
    if !cluster_test(&["STREAMOPS_KUBECONFIG"]) {
        return;
    }
    let t0 = Instant::now();
    let ns = format!("gitops-{}", std::process::id());
    kubectl(&["create", "namespace", &ns]).expect("create namespace");
    say(t0, format!("namespace {ns}"));
    match scenario(&ns, t0) {
        Ok(()) => {
            let _ = kubectl(&["delete", "namespace", &ns, "--wait=false"]);
        }
        Err(e) => {
            let dir = collect_logs(&ns, OPERATOR_NS, OPERATOR_SELECTOR);
            panic!("{e:#}\n(namespace {ns} kept; logs in {})", dir.display());
        }
    }
}

fn scenario(ns: &str, t0: Instant) -> anyhow::Result<()> {
    let examples = repo_root().join("examples");
    let dir = examples.to_str().context("examples path is not UTF-8")?;

    // The examples' Kafka topic names are fixed: nobody else may claim them
    // (other tests' namespaces may still be terminating: only a claim on the
    // same Kafka topic matters).
    let mut wanted = BTreeSet::new();
    for file in yaml_files(&examples)? {
        for o in load_manifests(&file)? {
            if o.types.as_ref().is_some_and(|t| t.kind == "StreamTopic") {
                let name = o.data["spec"]["topicName"]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| o.metadata.name.clone())
                    .context("StreamTopic without a name")?;
                wanted.insert(name);
            }
        }
    }
    let others = kubectl(&[
        "get",
        "streamtopics",
        "--all-namespaces",
        "-o",
        "jsonpath={range .items[*]}{.metadata.namespace}/{.metadata.name}={.spec.topicName}{\"\\n\"}{end}",
    ])?;
    let clashes: Vec<&str> = others
        .lines()
        .filter(|l| {
            let Some((object, topic)) = l.split_once('=') else {
                return false;
            };
            let topic = if topic.is_empty() {
                object.rsplit('/').next().unwrap_or_default()
            } else {
                topic
            };
            wanted.contains(topic)
        })
        .collect();
    ensure!(
        clashes.is_empty(),
        "other StreamTopics claim the examples' Kafka topics ({clashes:?}): run this test on a cluster of its own \
         (e2e/test.sh starts one)"
    );

    say(t0, format!("kubectl apply --server-side -f {dir}"));
    let first = kubectl(&["apply", "--server-side", FIELD_MANAGER, "-n", ns, "-f", dir])?;
    eprint!("{first}");
    ensure!(
        first.lines().all(|l| l.ends_with(" serverside-applied")),
        "first apply: {first}"
    );

    say(
        t0,
        "kubectl wait --for=condition=Ready streamtopics --all (up to 120 s)",
    );
    kubectl(&[
        "wait",
        "-n",
        ns,
        "--for=condition=Ready",
        "streamtopics",
        "--all",
        "--timeout=120s",
    ])?;
    say(
        t0,
        "kubectl wait --for=condition=Ready streamjobs --all (up to 300 s)",
    );
    kubectl(&[
        "wait",
        "-n",
        ns,
        "--for=condition=Ready",
        "streamjobs",
        "--all",
        "--timeout=300s",
    ])?;
    let table = kubectl(&["get", "-n", ns, "streamtopics,streamjobs"])?;
    eprint!("{table}");
    let phases = kubectl(&[
        "get",
        "-n",
        ns,
        "streamjobs",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.phase}@{.status.observedGeneration}/{.metadata.generation} {end}",
    ])?;
    for entry in phases.split_whitespace() {
        let (name, rest) = entry.split_once('=').context("jsonpath output")?;
        let (phase, generations) = rest.split_once('@').context("jsonpath output")?;
        let (observed, generation) = generations.split_once('/').context("jsonpath output")?;
        ensure!(phase == "Running", "StreamJob {name} is {phase}, not Running");
        ensure!(
            observed == generation,
            "StreamJob {name} observed {observed}, generation {generation}"
        );
    }

    say(t0, "apply again: no object's spec changes");
    let generations = || {
        kubectl(&[
            "get",
            "-n",
            ns,
            "streamtopics,streamjobs",
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.name}@{.metadata.generation} {end}",
        ])
    };
    let before = generations()?;
    let second = kubectl(&["apply", "--server-side", FIELD_MANAGER, "-n", ns, "-f", dir])?;
    eprint!("{second}");
    ensure!(
        generations()? == before,
        "the second apply changed a spec: {before} -> {}",
        generations()?
    );
    say(t0, "kubectl diff --server-side: nothing");
    let diff = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(streamops_e2e::kubeconfig_path())
        .args(["diff", "--server-side", FIELD_MANAGER, "-n", ns, "-f", dir])
        .output()
        .context("kubectl diff")?;
    ensure!(
        diff.status.code() == Some(0),
        "kubectl diff found drift (exit {:?}):\n{}{}",
        diff.status.code(),
        String::from_utf8_lossy(&diff.stdout),
        String::from_utf8_lossy(&diff.stderr)
    );

    say(
        t0,
        "a bad edit (a tumbling window with a gap) is refused at apply",
    );
    let edited_dir = std::env::temp_dir().join(format!("streamops-gitops-edit-{}", std::process::id()));
    std::fs::create_dir_all(&edited_dir)?;
    let job = std::fs::read_to_string(examples.join("clickstream-job.yaml"))?;
    let bad = job.replacen("      size: 10s\n", "      size: 10s\n      gap: 1m\n", 1);
    ensure!(
        bad != job,
        "examples/clickstream-job.yaml no longer has 'size: 10s'"
    );
    let bad_file = edited_dir.join("clickstream-job.yaml");
    std::fs::write(&bad_file, bad)?;
    let bad_path = bad_file.to_str().context("temp path is not UTF-8")?;
    let refused = kubectl(&["apply", "--server-side", FIELD_MANAGER, "-n", ns, "-f", bad_path]);
    let _ = std::fs::remove_dir_all(&edited_dir);
    let message = match refused {
        Ok(out) => anyhow::bail!("the bad edit was applied: {out}"),
        Err(e) => format!("{e:#}"),
    };
    let want = "spec.pipeline.window.gap: Forbidden: only a session window has a gap; remove gap or use type: session";
    ensure!(message.contains(want), "the refusal lacks {want:?}: {message}");
    ensure!(
        generations()? == before,
        "the refused edit changed a spec: {before} -> {}",
        generations()?
    );

    // Clean up as a user would, and leave the broker as it was: the
    // examples keep most Kafka topics on deletion (deletionPolicy Retain), so
    // switch them to Delete first.
    say(
        t0,
        "deletionPolicy Delete on every StreamTopic, then kubectl delete -f",
    );
    let names = kubectl(&["get", "-n", ns, "streamtopics", "-o", "name"])?;
    for name in names.lines().filter(|l| !l.is_empty()) {
        kubectl(&[
            "patch",
            "-n",
            ns,
            name,
            "--type=merge",
            "-p",
            r#"{"spec":{"deletionPolicy":"Delete"}}"#,
        ])?;
    }
    kubectl(&["delete", "-n", ns, "-f", dir, "--wait=true", "--timeout=180s"])?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pods = kubectl(&["get", "pods", "-n", ns, "-o", "name"])?;
        if pods.trim().is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "pods left 120 s after the delete: {pods}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    say(t0, "all objects and pods gone");
    Ok(())
}
