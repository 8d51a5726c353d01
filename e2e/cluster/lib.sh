# shellcheck shell=bash disable=SC2034
# Shared settings for the e2e cluster scripts. Sourced, not executed.
#
# Everything here can be overridden from the environment.

: "${STREAMOPS_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/streamops}"
: "${STREAMOPS_STATE:=/tmp/streamops-cluster}"
# Kubernetes, etcd and containerd are built from Go modules (install.sh).
# The Kubernetes and etcd versions are the ones e2e/k8s/go.mod and
# e2e/etcd/go.mod require (one source of truth: bump them there, with
# `go mod tidy`); containerd is `go install`ed at this version.
E2E_GO_MODULES=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mod_version() { # GO.MOD MODULE: the version GO.MOD requires
  awk -v m="$2" '($1 == m || ($1 == "require" && $2 == m)) && $0 !~ /=>/ { v = ($1 == m) ? $2 : $3; print v; exit }' "$1"
}
K8S_VERSION=$(mod_version "$E2E_GO_MODULES/k8s/go.mod" k8s.io/kubernetes)
ETCD_VERSION=$(mod_version "$E2E_GO_MODULES/etcd/go.mod" go.etcd.io/etcd/server/v3)
: "${STREAMOPS_CONTAINERD_VERSION:=v2.4.2}"
# The pause binary's version: TAG of build/pause/Makefile in k8s.io/kubernetes@$K8S_VERSION.
PAUSE_VERSION=3.10.2
: "${STREAMOPS_KAFKA_VERSION:=4.4.0}"
# Helm's command, built from the Go module proxy (`go install`).
: "${STREAMOPS_HELM_VERSION:=v4.3.2}"

CACHE=$STREAMOPS_CACHE
STATE=$STREAMOPS_STATE
# Each keyed by version; a cache hit is binaries that report that version.
K8S_DIR=$CACHE/kubernetes-$K8S_VERSION
KBIN=$K8S_DIR/bin
ETCD_DIR=$CACHE/etcd-$ETCD_VERSION
ETCD_BIN=$ETCD_DIR/bin
CONTAINERD_DIR=$CACHE/containerd-$STREAMOPS_CONTAINERD_VERSION
CONTAINERD_BIN=$CONTAINERD_DIR/bin
CTR=$CONTAINERD_BIN/ctr
# Apache Kafka's jars, resolved from Maven Central by e2e/kafka/pom.xml.
KAFKA_HOME=$CACHE/kafka-$STREAMOPS_KAFKA_VERSION
KAFKA_LIBS=$KAFKA_HOME/libs
# The helm binary users type, keyed by version. Go's module and build caches
# (for helm, Kubernetes, etcd, containerd) live under the cache root too.
HELM_DIR=$CACHE/helm-$STREAMOPS_HELM_VERSION
HELM=$HELM_DIR/bin/helm
GO_CACHE=$CACHE/go
# Java for the broker (Kafka 4.x needs 17 or newer).
: "${STREAMOPS_JAVA:=java}"

# Binaries the Kubernetes build must produce (kubectl is built too, and used
# only when no kubectl is on PATH), and those of etcd and containerd.
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl pause)
ETCD_BINARIES=(etcd etcdctl)
CONTAINERD_BINARIES=(containerd containerd-shim-runc-v2 ctr)

# Debian packages the local cluster needs at run time and build time, and
# what the workspace's own build needs on a bare machine: RocksDB's bindgen
# loads libclang ("Unable to find libclang" without clang + libclang-dev) and
# its C++ needs g++; librdkafka's TLS and SCRAM (rdkafka feature `ssl`) need
# OpenSSL's headers, found through pkg-config.
APT_PACKAGES=(
  runc containernetworking-plugins
  iptables openssl conntrack socat gcc libc6-dev make
  ca-certificates python3 iproute2
  procps util-linux curl
  clang libclang-dev g++
  lua5.4 maven openjdk-17-jre-headless
  libssl-dev pkg-config
)

log()  { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

need_root() {
  [[ $(id -u) -eq 0 ]] || die "$1 needs root (containerd, iptables, mounts, apt). Re-run as root."
}

# kubectl: the one built with the cluster (same version as the apiserver),
# else the one on PATH.
kubectl_bin() {
  if [[ -x $KBIN/kubectl ]]; then echo "$KBIN/kubectl"
  elif command -v kubectl >/dev/null 2>&1; then command -v kubectl
  else die "no kubectl: run e2e/cluster/install.sh"; fi
}
