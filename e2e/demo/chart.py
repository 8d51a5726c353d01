#!/usr/bin/env python3
"""Install or upgrade the streamops chart with the `helm` command users type
($STREAMOPS_HELM, else `helm` on PATH; e2e/cluster/install.sh --only helm
builds it). Idempotent: `helm upgrade --install`.

Usage: chart.py --kubeconfig FILE --namespace NS --bootstrap HOST:PORT [--tag dev]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "charts", "streamops")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--namespace", default="streamops-system")
    ap.add_argument("--release", default="streamops")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--tag", default="dev")
    a = ap.parse_args()
    values = {
        "image": {"repository": "localhost/streamops-operator", "tag": a.tag, "pullPolicy": "Never"},
        "runtimeImage": {"repository": "localhost/streamops-runtime", "tag": a.tag},
        "kafka": {"bootstrapServers": a.bootstrap},
        # The local cluster has one node and no second operator to fail over to.
        "replicaCount": 1,
        "logging": {"level": "info", "format": "text"},
    }
    helm = os.environ.get("STREAMOPS_HELM", "helm")
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(values, f)
        f.flush()
        cmd = [helm, "upgrade", "--install", a.release, CHART, "--namespace", a.namespace, "--create-namespace",
               "--kubeconfig", a.kubeconfig, "-f", f.name]
        print("$ " + " ".join(cmd[:-2] + ["-f", "values.json"]))
        out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"helm: {out.stderr.strip() or out.stdout.strip()}")
    print(out.stdout.strip().splitlines()[0] if out.stdout.strip() else f"release {a.release} in {a.namespace}")


if __name__ == "__main__":
    main()
