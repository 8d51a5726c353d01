#!/usr/bin/env python3
"""Chart tests with the `helm` command users type (built from the Go module
proxy by e2e/cluster/install.sh --only helm; $STREAMOPS_HELM or `helm` on PATH).

Against the cluster named by STREAMOPS_KUBECONFIG:
  - the chart lints clean (`helm lint --strict`) and renders (`helm template`);
  - bad values are refused by values.schema.json before anything is applied;
  - install in both modes creates the ServiceAccount, least-privilege RBAC and
    a hardened Deployment; upgrade changes it; rollback restores the first
    revision; uninstall removes it and leaves the CRDs (and so every
    StreamTopic/StreamJob) in place.
Whether the operator then becomes Ready is proven on the full node
(e2e/smoke), where its image can run.
"""
import json
import os
import subprocess
import sys
import tempfile
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "charts", "streamops")
KUBECONFIG = os.environ.get("STREAMOPS_KUBECONFIG")
HELM = os.environ.get("STREAMOPS_HELM", "helm")

passed = failed = 0


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name} {detail}")


class HelmError(Exception):
    pass


def helm(*args, values=None, ns=None):
    """Runs `helm ARGS` as a user would; values go in a file (-f). Raises
    HelmError with helm's output when it exits non-zero."""
    cmd = [HELM, *args, "--kubeconfig", KUBECONFIG] + (["--namespace", ns] if ns else [])
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        if values is not None:
            json.dump(values, f)
            f.flush()
            cmd += ["-f", f.name]
        out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise HelmError(f"{' '.join(args[:2])}: exit {out.returncode}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def kubectl(*args):
    out = subprocess.run(["kubectl", "--kubeconfig", KUBECONFIG, *args], capture_output=True, text=True)
    return out.returncode, out.stdout, out.stderr


def get(kind, name, ns=None):
    args = ["get", kind, name, "-o", "json"] + (["-n", ns] if ns else [])
    rc, out, _ = kubectl(*args)
    return json.loads(out) if rc == 0 else None


def main():
    if not KUBECONFIG:
        sys.exit("STREAMOPS_KUBECONFIG is not set: run through `make test` or start e2e/cluster/cluster.sh")

    version = helm("version", "--short")
    check("helm is the real command", version.startswith("v"), version)
    try:
        lint = helm("lint", CHART, "--strict")
        check("chart lints without warnings or errors (--strict)", "0 chart(s) failed" in lint, lint)
    except HelmError as e:
        check("chart lints without warnings or errors (--strict)", False, str(e))
    rendered = helm("template", "streamops", CHART, values={"kafka": {"bootstrapServers": "k:9092"}})
    check("helm template renders the Deployment, the RBAC and no CRD in the templates",
          "kind: Deployment" in rendered and "kind: ClusterRole" in rendered and
          "kind: CustomResourceDefinition" not in rendered, rendered[:400])

    ns = "chart-" + uuid.uuid4().hex[:6]
    for bad, why in [
        ({"replicaCount": 0}, "replicaCount"),
        ({"installMode": "everywhere"}, "installMode"),
        ({"kafka": {"bootstrapServers": "no port"}}, "bootstrapServers"),
        ({"typoed": True}, "typoed"),
        ({"tenancy": {"topicNames": {"policy": "strict"}}}, "policy"),
        ({"tenancy": {"topicNames": {"policy": "namespacePrefix", "separator": "-"}}}, "separator"),
        ({"tenancy": {"topicNames": {"policy": "prefixMap", "prefixes": {"team-a": ["streamops."]}}}}, "prefixes"),
        # Helm names the offending key (its path in the message is not the value's).
        ({"tenancy": {"topicNames": {"policy": "prefixMap", "prefixes": {"Team_A": ["orders."]}}}}, "Team_A"),
        # Prefixes the operator would ignore (policy any) are refused, not dropped.
        ({"tenancy": {"topicNames": {"prefixes": {"team-a": ["orders."]}}}}, "prefixes"),
        ({"tenancy": {"allowCustomCheckpointStorage": "yes"}}, "allowCustomCheckpointStorage"),
    ]:
        try:
            helm("install", "bad", CHART, "--create-namespace", values=bad, ns=ns)
            check(f"values {bad} refused", False, "install succeeded")
        except HelmError as e:
            check(f"values {bad} refused, naming {why}", why in str(e), str(e))
    check("a refused install leaves no release behind", "bad" not in helm("list", "-q", ns=ns).split())

    release = "streamops"
    values = {"kafka": {"bootstrapServers": "10.244.0.1:9092"}, "replicaCount": 2,
              "networkPolicy": {"enabled": True},
              "image": {"repository": "localhost/streamops-operator", "tag": "dev", "pullPolicy": "Never"}}
    helm("install", release, CHART, "--create-namespace", values=values, ns=ns)
    dep = get("deployment", "streamops-operator", ns)
    check("install creates the operator Deployment", dep is not None)
    if dep:
        pod = dep["spec"]["template"]["spec"]
        c = pod["containers"][0]
        check("2 replicas with leader election", dep["spec"]["replicas"] == 2 and
              any(e["name"] == "STREAMOPS_LEADER_ELECTION" and e["value"] == "true" for e in c["env"]))
        check("pod runs as non-root with seccomp RuntimeDefault",
              pod["securityContext"]["runAsNonRoot"] is True and
              pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault")
        sc = c["securityContext"]
        check("read-only root filesystem, no privilege escalation, no capabilities",
              sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"])
        check("default bootstrap passed to the operator",
              {"name": "STREAMOPS_KAFKA_BOOTSTRAP", "value": "10.244.0.1:9092"} in c["env"])
        selector = ",".join(f"{k}={v}" for k, v in sorted(dep["spec"]["selector"]["matchLabels"].items()))
        check("tenancy defaults: topic-name policy any, custom checkpoint storage refused",
              {"name": "STREAMOPS_TOPIC_NAME_POLICY", "value": "any"} in c["env"] and
              {"name": "STREAMOPS_TOPIC_NAME_SEPARATOR", "value": "."} in c["env"] and
              # The apiserver drops an empty value from the stored object.
              any(e["name"] == "STREAMOPS_TOPIC_NAME_PREFIXES" and e.get("value", "") == "" for e in c["env"]) and
              {"name": "STREAMOPS_ALLOW_CUSTOM_CHECKPOINT_STORAGE", "value": "false"} in c["env"], str(c["env"]))
        check("runtime NetworkPolicies on by default, admitting the operator's pods by their selector labels",
              {"name": "STREAMOPS_NETWORK_POLICY", "value": "true"} in c["env"] and
              {"name": "STREAMOPS_OPERATOR_POD_LABELS", "value": selector} in c["env"], str(c["env"]))
    policy = get("networkpolicy", "streamops-operator", ns)
    check("networkPolicy.enabled creates the operator's NetworkPolicy", policy is not None)
    if policy:
        runtime = {"app.kubernetes.io/name": "streamops-runtime", "app.kubernetes.io/managed-by": "streamops-operator"}
        check("the operator may reach the runtime pods' admin port in every namespace",
              any(any(peer.get("podSelector", {}).get("matchLabels") == runtime and peer.get("namespaceSelector") == {}
                      for peer in rule.get("to", [])) and
                  rule.get("ports") == [{"port": 8080, "protocol": "TCP"}]
                  for rule in policy["spec"]["egress"]), json.dumps(policy["spec"]["egress"]))
    role = get("clusterrole", "streamops-operator")
    check("cluster mode grants a ClusterRole", role is not None)
    if role:
        verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
        check("secrets: get and create only (no list/watch/update)", verbs.get(("", "secrets")) == {"get", "create"},
              str(verbs.get(("", "secrets"))))
        check("pods: list only (never deleted, never exec'd)", verbs.get(("", "pods")) == {"list"}, str(verbs.get(("", "pods"))))
        check("resourcequotas: list only (the rescale check)", verbs.get(("", "resourcequotas")) == {"list"},
              str(verbs.get(("", "resourcequotas"))))
        check("networkpolicies: create and patch only (server-side apply of each job's)",
              verbs.get(("networking.k8s.io", "networkpolicies")) == {"create", "patch"},
              str(verbs.get(("networking.k8s.io", "networkpolicies"))))
        check("the operator deletes nothing (owner references do)", all("delete" not in v for v in verbs.values()))
        check("no wildcard verbs or resources",
              all("*" not in rule["verbs"] and "*" not in rule["resources"] for rule in role["rules"]))
        check("never deletes streamops resources",
              all("delete" not in v for (g, r), v in verbs.items() if g == "streamops.io"))
    rc, _, err = kubectl("auth", "can-i", "list", "secrets", "--as", f"system:serviceaccount:{ns}:streamops-operator", "-A")
    check("the ServiceAccount cannot list secrets", rc != 0, err)
    rc, _, _ = kubectl("auth", "can-i", "patch", "streamtopics.streamops.io/status", "--as",
                       f"system:serviceaccount:{ns}:streamops-operator", "-n", "default")
    check("the ServiceAccount can patch StreamTopic status anywhere", rc == 0)
    sa = f"system:serviceaccount:{ns}:streamops-operator"
    for verb, resource, allowed in [
        ("patch", "statefulsets.apps", True),   # StreamJob pods: server-side apply
        ("create", "secrets", True),            # the <job>-admin token, once
        ("list", "pods", True),                 # readiness and pod IPs
        ("list", "resourcequotas", True),       # a rescale must fit the quota
        ("update", "resourcequotas", False),
        ("patch", "networkpolicies.networking.k8s.io", True),  # each job's, server-side apply
        ("get", "networkpolicies.networking.k8s.io", False),
        ("delete", "pods", False),              # pods go by scaling the StatefulSet
        ("update", "secrets", False),
    ]:
        rc, _, _ = kubectl("auth", "can-i", verb, resource, "--as", sa, "-n", "default")
        check(f"the ServiceAccount {'can' if allowed else 'cannot'} {verb} {resource}", (rc == 0) == allowed)

    values["replicaCount"] = 1
    values["tenancy"] = {"topicNames": {"policy": "prefixMap",
                                        "prefixes": {"team-b": ["ads."], "team-a": ["orders.", "payments."]}},
                         "allowCustomCheckpointStorage": True}
    helm("upgrade", release, CHART, values=values, ns=ns)
    dep = get("deployment", "streamops-operator", ns)
    check("upgrade changes the Deployment", dep is not None and dep["spec"]["replicas"] == 1)
    if dep:
        env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
        check("tenancy values become the operator's settings (prefixes as --topic-name-prefixes takes them)",
              {"name": "STREAMOPS_TOPIC_NAME_POLICY", "value": "prefixMap"} in env and
              {"name": "STREAMOPS_TOPIC_NAME_PREFIXES", "value": "team-a=orders.,payments.;team-b=ads."} in env and
              {"name": "STREAMOPS_ALLOW_CUSTOM_CHECKPOINT_STORAGE", "value": "true"} in env, str(env))

    helm("rollback", release, "1", ns=ns)
    dep = get("deployment", "streamops-operator", ns)
    check("rollback to revision 1 restores its Deployment (2 replicas, tenancy policy any)",
          dep is not None and dep["spec"]["replicas"] == 2 and
          {"name": "STREAMOPS_TOPIC_NAME_POLICY", "value": "any"} in dep["spec"]["template"]["spec"]["containers"][0]["env"])
    history = json.loads(helm("history", release, "-o", "json", ns=ns))
    check("the release history shows install, upgrade and the rollback", [h["revision"] for h in history] == [1, 2, 3] and
          "Rollback to 1" in history[-1].get("description", ""), json.dumps(history))

    helm("uninstall", release, ns=ns)
    check("uninstall removes the Deployment", get("deployment", "streamops-operator", ns) is None)
    check("uninstall removes the ClusterRole", get("clusterrole", "streamops-operator") is None)
    check("uninstall leaves the CRDs", get("crd", "streamtopics.streamops.io") is not None and
          get("crd", "streamjobs.streamops.io") is not None)

    # Namespaced mode: a Role in the watched namespace, no ClusterRole.
    watched = ns + "-apps"
    kubectl("create", "namespace", watched)
    helm("install", release, CHART, values={"installMode": "namespaced", "watchNamespace": watched,
                                            "runtimeNetworkPolicy": {"enabled": False}}, ns=ns)
    check("namespaced mode grants no ClusterRole", get("clusterrole", "streamops-operator") is None)
    role = get("role", "streamops-operator", watched)
    check("namespaced mode grants a Role in the watched namespace", role is not None)
    if role:
        check("without runtime NetworkPolicies, no access to networkpolicies",
              all("networkpolicies" not in rule["resources"] for rule in role["rules"]), str(role["rules"]))
    rc, _, _ = kubectl("auth", "can-i", "patch", "streamtopics.streamops.io/status", "--as",
                       f"system:serviceaccount:{ns}:streamops-operator", "-n", "default")
    check("namespaced mode cannot touch other namespaces", rc != 0)
    helm("uninstall", release, ns=ns)
    kubectl("delete", "namespace", ns, watched, "--wait=false")

    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
