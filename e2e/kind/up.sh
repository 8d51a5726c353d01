#!/usr/bin/env bash
# kind variant of the e2e setup, for machines with Docker: creates a kind cluster
# (1 control plane + 1 worker), builds the product images with the Dockerfiles,
# loads them into the nodes, and optionally runs the same smoke test against it.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

CLUSTER=${KIND_CLUSTER_NAME:-streamops-e2e}
TAG=${STREAMOPS_IMAGE_TAG:-dev}
KUBECONFIG_OUT=${STREAMOPS_KIND_KUBECONFIG:-$REPO/target/kind-$CLUSTER.kubeconfig}
SMOKE=0

usage() {
  cat <<USAGE
Usage: $0 [--smoke] [--down] [--help]

  (no flag)  create kind cluster '$CLUSTER' from e2e/kind/kind-config.yaml (if missing),
             docker build localhost/streamops-{operator,runtime}:$TAG with
             e2e/images/Dockerfile.{operator,runtime}, kind load docker-image,
             write the kubeconfig to $KUBECONFIG_OUT
  --smoke    then run e2e/smoke/smoke.sh --existing-cluster against it
             (needs STREAMOPS_BOOTSTRAP: a Kafka bootstrap address the pods can reach)
  --down     delete the kind cluster

Broker: bring your own Kafka. Either install one in the cluster (e.g. Strimzi; then
STREAMOPS_BOOTSTRAP=my-cluster-kafka-bootstrap.kafka:9092), or run Apache Kafka on the
host (jars from e2e/cluster/install.sh --only kafka, a KRaft server.properties as in
e2e/cluster/cluster.sh's kafka_config) listening on 0.0.0.0:9092 and advertising the
kind network's gateway, which pods reach:
  GW=\$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | tr ' ' '\n' | grep -m1 '\.')
  advertised.listeners=PLAINTEXT://\$GW:9092
  export STREAMOPS_BOOTSTRAP=\$GW:9092

Environment: KIND_CLUSTER_NAME, KIND_NODE_IMAGE, STREAMOPS_IMAGE_TAG, STREAMOPS_BOOTSTRAP.
USAGE
}

die() { echo "ERROR: $*" >&2; exit 1; }

case ${1:-} in
  -h|--help) usage; exit 0 ;;
  --down)
    kind delete cluster --name "$CLUSTER"; exit 0 ;;
  --smoke) SMOKE=1 ;;
  "") ;;
  *) usage >&2; die "unknown argument: $1" ;;
esac

command -v docker >/dev/null || die "docker not found (on machines without Docker use e2e/cluster/cluster.sh)"
command -v kind >/dev/null || die "kind not found: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
command -v kubectl >/dev/null || die "kubectl not found"

if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config "$HERE/kind-config.yaml" \
    ${KIND_NODE_IMAGE:+--image "$KIND_NODE_IMAGE"} --wait 180s
fi
mkdir -p "$(dirname "$KUBECONFIG_OUT")"
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_OUT"

for name in operator runtime; do
  docker build -f "$REPO/e2e/images/Dockerfile.$name" -t "localhost/streamops-$name:$TAG" "$REPO"
  kind load docker-image --name "$CLUSTER" "localhost/streamops-$name:$TAG"
done

echo "export KUBECONFIG=$KUBECONFIG_OUT"
if ((SMOKE)); then
  [[ -n ${STREAMOPS_BOOTSTRAP:-} ]] || die "--smoke needs STREAMOPS_BOOTSTRAP (see --help)"
  KUBECONFIG=$KUBECONFIG_OUT exec "$REPO/e2e/smoke/smoke.sh" --existing-cluster
fi
