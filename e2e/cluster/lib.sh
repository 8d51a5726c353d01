# shellcheck shell=bash disable=SC2034
# Shared settings for the e2e cluster scripts. Sourced, not executed.
#
# Everything here can be overridden from the environment.

: "${STREAMOPS_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/streamops}"
: "${STREAMOPS_STATE:=/tmp/streamops-cluster}"
: "${STREAMOPS_K8S_VERSION:=1.20.2}"
# Bump the patch tag whenever the way we patch/build Kubernetes changes:
# it is part of the cache key.
: "${STREAMOPS_K8S_PATCH_TAG:=reflect2-1.0.2}"
: "${STREAMOPS_KAFKA_VERSION:=4.4.0}"
# Helm's command, built from the Go module proxy (`go install`).
: "${STREAMOPS_HELM_VERSION:=v4.3.2}"

CACHE=$STREAMOPS_CACHE
STATE=$STREAMOPS_STATE
K8S_DIR=$CACHE/kubernetes-$STREAMOPS_K8S_VERSION-$STREAMOPS_K8S_PATCH_TAG
KBIN=$K8S_DIR/bin
# Debian's Go 1.19 (golang-go), which the Kubernetes 1.20 tree builds with.
K8S_GO=${STREAMOPS_K8S_GO:-/usr/lib/go-1.19/bin}
# Apache Kafka's jars, resolved from Maven Central by e2e/kafka/pom.xml.
KAFKA_HOME=$CACHE/kafka-$STREAMOPS_KAFKA_VERSION
KAFKA_LIBS=$KAFKA_HOME/libs
# The helm binary users type, keyed by version; Go's module and build caches
# for it live beside it under the cache root.
HELM_DIR=$CACHE/helm-$STREAMOPS_HELM_VERSION
HELM=$HELM_DIR/bin/helm
GO_CACHE=$CACHE/go
# Java for the broker (Kafka 4.x needs 17 or newer).
: "${STREAMOPS_JAVA:=java}"

# Binaries the Kubernetes build must produce (kubectl is built too, and used
# only when no kubectl is on PATH).
K8S_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl pause)

# Debian packages the local cluster needs at run time and build time, and
# what the workspace's own build needs on a bare machine: RocksDB's bindgen
# loads libclang ("Unable to find libclang" without clang + libclang-dev) and
# its C++ needs g++; librdkafka's TLS and SCRAM (rdkafka feature `ssl`) need
# OpenSSL's headers, found through pkg-config.
APT_PACKAGES=(
  etcd-server golang-go rsync containerd runc containernetworking-plugins
  iptables openssl dpkg-dev conntrack socat gcc libc6-dev make
  golang-github-modern-go-reflect2-dev ca-certificates python3 iproute2
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

# kubectl: the one on PATH (any version >= 1.19 talks to a 1.20 apiserver),
# else the one we built from the same source tree.
kubectl_bin() {
  if command -v kubectl >/dev/null 2>&1; then command -v kubectl
  elif [[ -x $KBIN/kubectl ]]; then echo "$KBIN/kubectl"
  else die "no kubectl: run e2e/cluster/install.sh"; fi
}
