#!/usr/bin/env bash
# Installs everything the local e2e cluster needs: Debian packages;
# Kubernetes, etcd and containerd built from Go modules (the Go module proxy),
# the pause binary; Apache Kafka's jars from Maven Central; helm. Idempotent;
# build results are cached outside the checkout, keyed by version.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

usage() {
  cat <<EOF
Usage: $0 [--only packages|kubernetes|kafka|helm|argocd]... [--help]

Installs the local e2e cluster toolchain (needs root):
  packages    apt packages: ${APT_PACKAGES[*]}
  kubernetes  from the Go module proxy: kube-apiserver, kube-controller-manager,
              kube-scheduler, kubelet, kube-proxy, kubectl $K8S_VERSION (e2e/k8s/go.mod)
              and pause $PAUSE_VERSION (gcc, from that module's source) -> $KBIN;
              etcd + etcdctl $ETCD_VERSION (e2e/etcd/go.mod) -> $ETCD_BIN;
              containerd, containerd-shim-runc-v2, ctr $STREAMOPS_CONTAINERD_VERSION
              (go install) -> $CONTAINERD_BIN
  kafka       Apache Kafka $STREAMOPS_KAFKA_VERSION's broker jars from Maven Central
              (e2e/kafka/pom.xml, mvn dependency:copy-dependencies) -> $KAFKA_LIBS
  helm        Helm's command $STREAMOPS_HELM_VERSION from the Go module proxy
              (go install helm.sh/helm/v4/cmd/helm) -> $HELM
  argocd      argocd-lua, the test harness that judges the chart's Argo CD health
              checks and actions with Argo CD's own Go code (e2e/argocd/build.sh)

Without --only, does all five. A second run finds the caches and does nothing.

Environment:
  STREAMOPS_CACHE   cache root (default \${XDG_CACHE_HOME:-\$HOME/.cache}/streamops)
                    now: $CACHE
  STREAMOPS_NICE    niceness for the builds (default 10)
  STREAMOPS_JOBS    parallel jobs for the builds (default: nproc)
  STREAMOPS_GO_TIMEOUT  limit per Go build command, seconds (default 3600; helm 1800)
  STREAMOPS_CONTAINERD_VERSION  (default $STREAMOPS_CONTAINERD_VERSION; Kubernetes and etcd
                    versions are those of e2e/k8s/go.mod and e2e/etcd/go.mod)
EOF
}

ONLY=()
while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --only) [[ $# -ge 2 ]] || die "--only needs an argument"; ONLY+=("$2"); shift 2 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ ${#ONLY[@]} -gt 0 ]] || ONLY=(packages kubernetes kafka helm argocd)
for o in "${ONLY[@]}"; do
  case $o in packages|kubernetes|kafka|helm|argocd) ;; *) die "unknown component for --only: $o" ;; esac
done
want() { local o; for o in "${ONLY[@]}"; do [[ $o == "$1" ]] && return 0; done; return 1; }

NICE=${STREAMOPS_NICE:-10}
JOBS=${STREAMOPS_JOBS:-$(nproc)}

APT_UPDATED=0
apt_update_once() {
  if [[ $APT_UPDATED -eq 0 ]]; then
    log "apt-get update"
    apt-get update -qq || die "apt-get update failed (no access to the Debian mirror?)"
    APT_UPDATED=1
  fi
}

install_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  need_root "installing packages (${missing[*]})"
  apt_update_once
  log "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || die "apt-get install ${missing[*]} failed"
}

# --- Go builds: Kubernetes, etcd, containerd -----------------------------------

# Go 1.26 is first on PATH on these machines (/usr/local/go/bin); a shell
# that lost it still finds it there.
find_go() {
  command -v go >/dev/null || PATH=/usr/local/go/bin:$PATH
  command -v go >/dev/null || die "go not found (on PATH or in /usr/local/go/bin): $1 is built with it"
}

# go_build LOG CMD... : a Go command with the shared module and build caches
# under $GO_CACHE (the same as helm's), static (CGO_ENABLED=0), at most $JOBS
# packages at a time, niced and bounded in time; the last lines of LOG on failure.
go_build() {
  local logf=$1; shift
  mkdir -p "$GO_CACHE"
  printf '\n=== %s: %s\n' "$(date -Is)" "$*" >>"$logf"
  if ! GOMODCACHE=$GO_CACHE/mod GOCACHE=$GO_CACHE/build GOFLAGS="-p=$JOBS" CGO_ENABLED=0 \
      timeout "${STREAMOPS_GO_TIMEOUT:-3600}" nice -n "$NICE" "$@" >>"$logf" 2>&1; then
    tail -20 "$logf" >&2
    return 1
  fi
}

# reports DIR WANT BIN ARGS... : BIN in DIR runs and its output contains WANT.
# (Not `BIN | grep -q`: under pipefail, grep -q exits at its first match and
# BIN, still writing, dies of SIGPIPE, which fails the pipeline now and then:
# a cached etcd was rebuilt, and a fresh one refused, on one run in two.)
reports() {
  local dir=$1 want=$2 bin=$3 out; shift 3
  [[ -x $dir/$bin ]] || return 1
  out=$("$dir/$bin" "$@" 2>&1) || return 1
  [[ $out == *"$want"* ]]
}

# The Kubernetes binaries at $K8S_VERSION (what e2e/k8s/go.mod requires:
# k8s.io/kubernetes plus its 33 staging modules replaced by their released
# v0.x, and a `tool` block naming the six commands), built as the release
# build does: static, -trimpath, stripped, version stamped. The pause binary
# is compiled with gcc from build/pause/linux/pause.c of the same module.
k8s_cached() {
  local d=$1 b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    reports "$d" "Kubernetes $K8S_VERSION" "$b" --version || return 1
  done
  reports "$d" "Client Version: $K8S_VERSION" kubectl version --client || return 1
  reports "$d" "pause.c v$PAUSE_VERSION" pause -v
}

build_kubernetes() {
  if k8s_cached "$KBIN"; then
    log "kubernetes $K8S_VERSION cached in $KBIN"
    return 0
  fi
  find_go "kubernetes"
  local mod=$HERE/../k8s tmp=$K8S_DIR/bin.tmp logf=$CACHE/kubernetes-$K8S_VERSION.build.log t0=$SECONDS
  local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  local ldf="-s -w" p c cmds=()
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldf+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  ldf+=" -X k8s.io/component-base/version.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  for c in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    cmds+=("k8s.io/kubernetes/cmd/$c")
  done
  log "building kubernetes $K8S_VERSION from the Go module proxy ($(go version | cut -d' ' -f3), e2e/k8s/go.mod; nice $NICE, $JOBS jobs; ~20 min cold on 2 cores), log: $logf"
  rm -rf "$tmp"; mkdir -p "$tmp"
  (cd "$mod" && go_build "$logf" go build -trimpath -ldflags "$ldf" -o "$tmp/" "${cmds[@]}") \
    || die "kubernetes $K8S_VERSION build failed (see $logf)"
  # pause, from the module's source (the same file the official image compiles).
  local src
  src=$(cd "$mod" && GOMODCACHE=$GO_CACHE/mod GOFLAGS= go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
  [[ -f $src ]] || die "no $src in the module cache"
  grep -q "^TAG ?= $PAUSE_VERSION\$" "${src%/linux/pause.c}/Makefile" \
    || die "build/pause/Makefile of k8s.io/kubernetes@$K8S_VERSION is not pause $PAUSE_VERSION: update PAUSE_VERSION in lib.sh"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION-streamops" -o "$tmp/pause" "$src" \
    || die "building pause failed"
  strip "$tmp/pause"
  k8s_cached "$tmp" || die "the kubernetes binaries just built do not run or are not $K8S_VERSION"
  rm -rf "$KBIN"; mv "$tmp" "$KBIN"
  log "kubernetes $K8S_VERSION built in $((SECONDS - t0)) s -> $KBIN"
}

# etcd at $ETCD_VERSION: `go install go.etcd.io/etcd/server/v3@...` refuses
# (its go.mod has replace directives), so e2e/etcd/go.mod requires the server
# and etcdctl and names both in a `tool` block.
etcd_cached() {
  reports "$1" "etcd Version: ${ETCD_VERSION#v}" etcd --version && reports "$1" "etcdctl version: ${ETCD_VERSION#v}" etcdctl version
}

build_etcd() {
  if etcd_cached "$ETCD_BIN"; then
    log "etcd $ETCD_VERSION cached in $ETCD_BIN"
    return 0
  fi
  find_go "etcd"
  local mod=$HERE/../etcd tmp=$ETCD_DIR/bin.tmp logf=$CACHE/etcd-$ETCD_VERSION.build.log t0=$SECONDS
  log "building etcd $ETCD_VERSION from the Go module proxy (e2e/etcd/go.mod), log: $logf"
  rm -rf "$tmp"; mkdir -p "$tmp"
  (cd "$mod" && go_build "$logf" go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3 \
     && go_build "$logf" go build -trimpath -ldflags "-s -w" -o "$tmp/etcdctl" go.etcd.io/etcd/etcdctl/v3) \
    || die "etcd $ETCD_VERSION build failed (see $logf)"
  etcd_cached "$tmp" || die "the etcd just built does not run or is not $ETCD_VERSION"
  rm -rf "$ETCD_BIN"; mv "$tmp" "$ETCD_BIN"
  log "etcd $ETCD_VERSION built in $((SECONDS - t0)) s -> $ETCD_BIN"
}

# containerd, its runc shim and ctr at $STREAMOPS_CONTAINERD_VERSION: its
# go.mod has no replace directives, so `go install MODULE/cmd/X@VERSION`
# builds them (no_btrfs: no btrfs headers needed). runc is Debian's.
containerd_cached() {
  local v=$STREAMOPS_CONTAINERD_VERSION
  reports "$1" "containerd/v2 $v" containerd --version && reports "$1" "containerd/v2 $v" ctr --version \
    && reports "$1" "Version:  $v" containerd-shim-runc-v2 -v
}

build_containerd() {
  local v=$STREAMOPS_CONTAINERD_VERSION
  if containerd_cached "$CONTAINERD_BIN"; then
    log "containerd $v cached in $CONTAINERD_BIN"
    return 0
  fi
  find_go "containerd"
  local tmp=$CONTAINERD_DIR/bin.tmp logf=$CACHE/containerd-$v.build.log t0=$SECONDS m=github.com/containerd/containerd/v2
  log "building containerd $v from the Go module proxy (go install), log: $logf"
  rm -rf "$tmp"; mkdir -p "$tmp"
  GOBIN=$tmp go_build "$logf" go install -trimpath -tags no_btrfs -ldflags "-s -w -X $m/version.Version=$v" \
    "$m/cmd/containerd@$v" "$m/cmd/containerd-shim-runc-v2@$v" "$m/cmd/ctr@$v" \
    || die "containerd $v build failed (see $logf)"
  containerd_cached "$tmp" || die "the containerd just built does not run or is not $v"
  rm -rf "$CONTAINERD_BIN"; mv "$tmp" "$CONTAINERD_BIN"
  log "containerd $v built in $((SECONDS - t0)) s -> $CONTAINERD_BIN"
}

# --- Apache Kafka ------------------------------------------------------------

# The broker's jars: kafka_2.13 and its dependencies, as Kafka's distribution
# ships them in libs/, resolved from Maven Central into a Maven repository
# under the cache and copied to $KAFKA_LIBS (keyed by version). Bounded: a
# registry that does not answer fails the install with what was fetched,
# instead of hanging the test run.
install_kafka() {
  if [[ -f $KAFKA_LIBS/kafka_2.13-$STREAMOPS_KAFKA_VERSION.jar ]]; then
    log "Apache Kafka $STREAMOPS_KAFKA_VERSION cached in $KAFKA_LIBS"
    return 0
  fi
  command -v mvn >/dev/null || die "mvn not found: install Debian's maven (e2e/cluster/install.sh --only packages)"
  local logf=$CACHE/kafka-$STREAMOPS_KAFKA_VERSION.resolve.log tmp=$KAFKA_HOME/libs.tmp t0=$SECONDS
  local what="org.apache.kafka:kafka_2.13:$STREAMOPS_KAFKA_VERSION and its dependencies"
  log "resolving $what from Maven Central (e2e/kafka/pom.xml), log: $logf"
  rm -rf "$tmp"; mkdir -p "$KAFKA_HOME"
  if ! timeout "${STREAMOPS_MAVEN_TIMEOUT:-900}" mvn -B -q -f "$HERE/../kafka/pom.xml" \
      -Dmaven.repo.local="$CACHE/maven-repository" \
      -Dmaven.wagon.http.retryHandler.count=2 \
      -Dkafka.version="$STREAMOPS_KAFKA_VERSION" \
      dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp" >"$logf" 2>&1; then
    grep -E 'ERROR|Could not|Failed' "$logf" | head -15 >&2 || tail -15 "$logf" >&2
    die "could not fetch $what from Maven Central (within ${STREAMOPS_MAVEN_TIMEOUT:-900} s; see $logf)"
  fi
  [[ -f $tmp/kafka_2.13-$STREAMOPS_KAFKA_VERSION.jar ]] || die "Maven finished but $tmp has no kafka_2.13-$STREAMOPS_KAFKA_VERSION.jar"
  rm -rf "$KAFKA_LIBS"; mv "$tmp" "$KAFKA_LIBS"
  log "Apache Kafka $STREAMOPS_KAFKA_VERSION: $(find "$KAFKA_LIBS" -name '*.jar' | wc -l) jars in $((SECONDS - t0)) s -> $KAFKA_LIBS"
}

# --- Helm ------------------------------------------------------------------

# The helm binary users type, built by `go install` from the Go module proxy
# with the machine's Go (first on PATH; the version stamped as Helm's release
# build does, which `go install` alone leaves at "v4.3"), into a temporary
# GOBIN, moved into place when it reports that version. Module and build caches under $GO_CACHE, so a version
# bump rebuilds only what changed.
install_helm() {
  if [[ -x $HELM ]] && [[ $("$HELM" version --short 2>/dev/null) == "$STREAMOPS_HELM_VERSION"* ]]; then
    log "helm $STREAMOPS_HELM_VERSION cached at $HELM"
    return 0
  fi
  find_go helm
  local tmp=$HELM_DIR/bin.tmp logf=$CACHE/helm-$STREAMOPS_HELM_VERSION.build.log t0=$SECONDS
  log "building helm $STREAMOPS_HELM_VERSION from the Go module proxy ($(go version | cut -d' ' -f3)), log: $logf"
  rm -rf "$tmp"; mkdir -p "$tmp" "$GO_CACHE"
  if ! GOBIN=$tmp GOMODCACHE=$GO_CACHE/mod GOCACHE=$GO_CACHE/build \
      timeout "${STREAMOPS_GO_TIMEOUT:-1800}" nice -n "$NICE" \
      go install -ldflags "-X helm.sh/helm/v4/internal/version.version=$STREAMOPS_HELM_VERSION" \
      "helm.sh/helm/v4/cmd/helm@$STREAMOPS_HELM_VERSION" >"$logf" 2>&1; then
    tail -15 "$logf" >&2
    die "could not build helm $STREAMOPS_HELM_VERSION (see $logf)"
  fi
  [[ $("$tmp/helm" version --short) == "$STREAMOPS_HELM_VERSION"* ]] || die "the helm just built does not run or is not $STREAMOPS_HELM_VERSION"
  rm -rf "$HELM_DIR/bin"; mv "$tmp" "$HELM_DIR/bin"
  log "helm $("$HELM" version --short) in $((SECONDS - t0)) s -> $HELM"
}

mkdir -p "$CACHE"
if want packages; then install_packages "${APT_PACKAGES[@]}"; fi
if want kubernetes; then
  install_packages gcc libc6-dev runc containernetworking-plugins
  build_etcd
  build_containerd
  build_kubernetes
fi
if want kafka; then
  install_packages maven openjdk-17-jre-headless
  install_kafka
fi
if want helm; then
  install_helm
fi
if want argocd; then
  find_go "argocd-lua"
  STREAMOPS_CACHE=$CACHE STREAMOPS_NICE=$NICE STREAMOPS_JOBS=$JOBS "$HERE/../argocd/build.sh" \
    || die "building argocd-lua failed"
fi
log "done. kubernetes: $KBIN  etcd: $ETCD_BIN  containerd: $CONTAINERD_BIN  kafka: $KAFKA_LIBS  helm: $HELM"
