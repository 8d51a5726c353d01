#!/usr/bin/env python3
"""Install or upgrade the streamops chart with Helm's own engine (helm-sdkpy;
no helm binary exists on these machines). Idempotent: installs the release
when it is missing, upgrades it otherwise.

Usage: chart.py --kubeconfig FILE --namespace NS --bootstrap HOST:PORT [--tag dev]
                [--allow-custom-checkpoint-storage]
"""
import argparse
import asyncio
import os
import sys

import helm_sdkpy as helm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "charts", "streamops")


def sync(result):
    return asyncio.run(result) if asyncio.iscoroutine(result) else result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--namespace", default="streamops-system")
    ap.add_argument("--release", default="streamops")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--tag", default="dev")
    # The jobs stage's isolation test points one job's storage at another's
    # to prove the per-job hostPath mount beneath an allowed custom storage.
    ap.add_argument("--allow-custom-checkpoint-storage", action="store_true")
    a = ap.parse_args()
    values = {
        "image": {"repository": "localhost/streamops-operator", "tag": a.tag, "pullPolicy": "Never"},
        "runtimeImage": {"repository": "localhost/streamops-runtime", "tag": a.tag},
        "kafka": {"bootstrapServers": a.bootstrap},
        # The local cluster has one node and no second operator to fail over to.
        "replicaCount": 1,
        "logging": {"level": "info", "format": "text"},
        "tenancy": {"allowCustomCheckpointStorage": a.allow_custom_checkpoint_storage},
    }
    cfg = helm.Configuration(namespace=a.namespace, kubeconfig=a.kubeconfig)
    try:
        sync(helm.Status(cfg).run(a.release))
        exists = True
    except helm.HelmError:
        exists = False
    if exists:
        sync(helm.Upgrade(cfg).run(a.release, CHART, values=values, wait=False))
        print(f"upgraded release {a.release} in namespace {a.namespace}")
    else:
        sync(helm.Install(cfg).run(a.release, CHART, values=values, create_namespace=True, wait=False))
        print(f"installed release {a.release} in namespace {a.namespace}")


if __name__ == "__main__":
    try:
        main()
    except helm.HelmError as e:
        sys.exit(f"helm: {e}")
