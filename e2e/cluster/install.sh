#!/usr/bin/env bash
# Installs everything the local e2e cluster needs: Debian packages, Kubernetes
# binaries built from Debian's source package (patched), the pause binary and
# Apache Kafka's jars from Maven Central. Idempotent; build results are cached
# outside the checkout.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

usage() {
  cat <<EOF
Usage: $0 [--only packages|kubernetes|kafka|helm]... [--help]

Installs the local e2e cluster toolchain (needs root):
  packages    apt packages: ${APT_PACKAGES[*]}
  kubernetes  kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
              kube-proxy, kubectl and pause, built from 'apt-get source kubernetes'
              (v$STREAMOPS_K8S_VERSION) with vendored reflect2 replaced by Debian's 1.0.2
              -> $KBIN
  kafka       Apache Kafka $STREAMOPS_KAFKA_VERSION's broker jars from Maven Central
              (e2e/kafka/pom.xml, mvn dependency:copy-dependencies) -> $KAFKA_LIBS
  helm        Helm's command $STREAMOPS_HELM_VERSION from the Go module proxy
              (go install helm.sh/helm/v4/cmd/helm) -> $HELM

Without --only, does all four. A second run finds the caches and does nothing.

Environment:
  STREAMOPS_CACHE   cache root (default \${XDG_CACHE_HOME:-\$HOME/.cache}/streamops)
                    now: $CACHE
  STREAMOPS_NICE    niceness for the builds (default 10)
  STREAMOPS_JOBS    parallel jobs for the builds (default: nproc)
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
[[ ${#ONLY[@]} -gt 0 ]] || ONLY=(packages kubernetes kafka helm)
for o in "${ONLY[@]}"; do
  case $o in packages|kubernetes|kafka|helm) ;; *) die "unknown component for --only: $o" ;; esac
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

# --- Kubernetes ------------------------------------------------------------

k8s_cached() {
  local b
  for b in "${K8S_BINARIES[@]}"; do [[ -x $KBIN/$b ]] || return 1; done
}

ensure_deb_src() {
  # apt-get source needs a deb-src entry for bookworm.
  if apt-get source --print-uris kubernetes >/dev/null 2>&1; then return 0; fi
  need_root "adding a deb-src entry"
  local f=/etc/apt/sources.list.d/streamops-bookworm-src.sources
  log "adding deb-src entry $f"
  cat >"$f" <<'EOS'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
  APT_UPDATED=0
  apt_update_once
  apt-get source --print-uris kubernetes >/dev/null 2>&1 \
    || die "apt-get source kubernetes still unavailable after adding $f"
}

build_kubernetes() {
  if k8s_cached; then
    log "kubernetes $STREAMOPS_K8S_VERSION ($STREAMOPS_K8S_PATCH_TAG) cached in $KBIN"
    return 0
  fi
  ensure_deb_src
  local src=$K8S_DIR/src
  rm -rf "$src"; mkdir -p "$src"
  log "fetching Debian source of kubernetes into $src"
  (cd "$src" && apt-get source -qq kubernetes >"$K8S_DIR/apt-source.log" 2>&1) \
    || { tail -20 "$K8S_DIR/apt-source.log" >&2; die "apt-get source kubernetes failed"; }
  local tree
  tree=$(find "$src" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -1)
  [[ -n $tree && -f $tree/Makefile ]] || die "no kubernetes source tree under $src"
  # Debian versions it 1.20.5+really1.20.2: check the real upstream version
  # (the tag recorded in the exported tree).
  grep -q "tag: v$STREAMOPS_K8S_VERSION'" "$tree/hack/lib/version.sh" \
    || die "source tree $tree is not Kubernetes v$STREAMOPS_K8S_VERSION"

  # Required patch: vendored reflect2 1.0.1 breaks under Go >= 1.18 (the apiserver
  # rejects custom resources with "metadata.name: Required value", then panics).
  local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
  [[ -f $r2/reflect2.go ]] || die "$r2 missing: install golang-github-modern-go-reflect2-dev"
  log "patching vendor/github.com/modern-go/reflect2 with Debian's copy ($r2)"
  rm -rf "$tree/vendor/github.com/modern-go/reflect2"
  cp -rL "$r2" "$tree/vendor/github.com/modern-go/reflect2"
  rm -f "$tree/vendor/github.com/modern-go/reflect2/go.mod" "$tree/vendor/github.com/modern-go/reflect2/go.sum"
  find "$tree/vendor/github.com/modern-go/reflect2" -name '*_test.go' -delete
  rm -rf "$tree/vendor/github.com/modern-go/reflect2/tests"

  log "building kubernetes (nice $NICE, $JOBS jobs; ~5-8 min cold on 2 cores), log: $K8S_DIR/build.log"
  local t0=$SECONDS
  (
    cd "$tree"
    # Kubernetes 1.20's build refuses Go toolchains newer than it knows
    # (the machines put Go 1.26 first on PATH): use Debian's golang-go (1.19).
    [[ -x $K8S_GO/go ]] || die "$K8S_GO/go missing: install Debian's golang-go (Go 1.19)"
    export PATH=$K8S_GO:$PATH GOTOOLCHAIN=local
    export GOPATH=$tree/.go GOFLAGS=-mod=vendor GO111MODULE=on
    export GOMAXPROCS=$JOBS
    mkdir -p .go/src/k8s.io
    ln -sfn ../../.. .go/src/k8s.io/kubernetes
    CGO_ENABLED=0 nice -n "$NICE" make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy cmd/kubectl"
  ) >"$K8S_DIR/build.log" 2>&1 || { tail -40 "$K8S_DIR/build.log" >&2; die "kubernetes build failed (see $K8S_DIR/build.log)"; }

  local out=$tree/_output/bin tmp=$K8S_DIR/bin.tmp
  [[ -d $out ]] || out=$tree/_output/local/bin/linux/amd64
  rm -rf "$tmp"; mkdir -p "$tmp"
  local b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    [[ -x $out/$b ]] || die "build did not produce $out/$b"
    cp "$out/$b" "$tmp/$b"
  done
  # The pause binary for the sandbox image.
  local pv
  pv=$(sed -n 's/^TAG *?\{0,1\}= *//p' "$tree/build/pause/Makefile" 2>/dev/null || true)
  gcc -Os -static -DVERSION="${pv:-local}" -o "$tmp/pause" "$tree/build/pause/linux/pause.c" \
    || die "building pause failed"
  strip "$tmp/pause" 2>/dev/null || true
  rm -rf "$KBIN"; mv "$tmp" "$KBIN"
  # The tree is big (~1.5 GB with build output); keep only the binaries.
  rm -rf "$src"
  log "kubernetes built in $((SECONDS - t0)) s -> $KBIN"
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
  # Go 1.26 is first on PATH on these machines (/usr/local/go/bin); a shell
  # that lost it still finds it there.
  command -v go >/dev/null || PATH=/usr/local/go/bin:$PATH
  command -v go >/dev/null || die "go not found (on PATH or in /usr/local/go/bin): helm is built with it"
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
  install_packages golang-go rsync make gcc libc6-dev dpkg-dev golang-github-modern-go-reflect2-dev
  build_kubernetes
fi
if want kafka; then
  install_packages maven openjdk-17-jre-headless
  install_kafka
fi
if want helm; then
  install_helm
fi
log "done. kubernetes: $KBIN  kafka: $KAFKA_LIBS  helm: $HELM"
