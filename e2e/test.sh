#!/usr/bin/env bash
# The whole test suite, as CI runs it (README command 2, `make test`).
#
# Installs what it needs (Debian packages; Kubernetes, etcd and containerd
# built from Go modules; Apache Kafka's jars from Maven Central; helm),
# caching builds outside the checkout under $STREAMOPS_CACHE, then runs, in order:
#   1. cargo fmt --check, cargo clippy -D warnings
#   2. unit and property tests (no cluster, no broker)
#   3. Argo CD health/action scripts (Lua table tests)
#   4. API tests against a real etcd + kube-apiserver
#   5. the single-node cluster smoke test with the product images (real
#      kubelet + containerd pods; e2e/smoke/smoke.sh --debug, whose image build
#      uses the package sets of stages 2 and 4 and so reuses their build).
#   6. StreamJobs end to end (e2e/tests/jobs.rs): the chart-installed operator
#      runs real runtime pods on a full node against the broker, one test at a
#      time, each checking the committed output against an independent
#      reference (nothing lost, nothing twice): deploy; savepoint-then-upgrade;
#      a crash-looping new version rolled back; rescale 2 -> 4 -> 2 pods on 8
#      partitions (the way back first refused: its savepoint would outlast a
#      1 ms savepointTimeout); the operator killed mid-upgrade; a source topic
#      grown 4 -> 6 -> 12 under a running job (drained savepoints, state
#      re-sharded); a rescale over the namespace's quota refused; a 10x burst
#      that the autoscaler (apply mode) answers with more pods by itself; a
#      1-partition source topic the autoscaler grows to 2 (growSourcePartitions);
#      a job with steps and result steps through a kill of every pod; a
#      short-form job upgraded to steps (status.plannedChange seen).
#      Prints UPGRADE_TIMING, AUTOSCALER_TIMING and GROWTH_TIMING lines.
#      Then the GitOps story (e2e/tests/gitops.rs): examples/ applied twice with
#      kubectl converges with no drift and deletes cleanly; then Argo CD's own
#      code (e2e/tests/argocd.rs) judging real objects' health and actions.
# Needs root (containerd, iptables, mounts). Stages can be picked with
# STREAMOPS_STAGES="lint unit chart api smoke jobs" (default: all of them).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
export STREAMOPS_CACHE=${STREAMOPS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/streamops}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$STREAMOPS_CACHE/target}
# The helm binary install.sh builds (keyed by version, as in cluster/lib.sh).
export STREAMOPS_HELM=${STREAMOPS_HELM:-$(source "$here/cluster/lib.sh" && echo "$HELM")}
# kubectl: the one built with the cluster (the apiserver's version; the
# machine's own may be several minor versions older), for every stage's
# `kubectl` and the scripts that call it. Built in the background below.
PATH=$(source "$here/cluster/lib.sh" && echo "$KBIN"):$PATH
export CARGO_TERM_COLOR=never
export CARGO_LOCKED=1
# Tests that need the cluster or the broker skip without them under plain
# `cargo test --workspace`; here a missing one is a failure.
export STREAMOPS_REQUIRE_CLUSTER=1
stages=${STREAMOPS_STAGES:-lint unit chart api smoke jobs}
cd "$root"

declare -a timings=()
stage() { # name command...
  local name=$1; shift
  local start=$SECONDS
  echo "=== [$name] $*"
  "$@"
  timings+=("$(printf '%-10s %5ds' "$name" $((SECONDS - start)))")
}
install_pid=
report() {
  local rc=$?
  # A failed lint or unit stage should not wait for the background builds.
  if [[ -n $install_pid ]] && kill -0 "$install_pid" 2>/dev/null; then
    echo "=== stopping the background Kubernetes build and Kafka jars (pid $install_pid)"
    kill -TERM -- "-$install_pid" 2>/dev/null || true
  fi
  echo "=== stage timings"
  printf '  %s\n' "${timings[@]:-none}"
  [ "$rc" -eq 0 ] && echo "=== all stages passed" || echo "=== FAILED (exit $rc)"
}
trap report EXIT

wants() { [[ " $stages " == *" $1 "* ]]; }

# The build cache is shared by every run on this machine (CI's clones
# included) and only ever grows: one session's filled the disk (61 GiB). Drop
# what no build has read for a week (relatime refreshes atime at least daily
# on read; cargo rebuilds any unit whose outputs are missing, so this can cost
# time, never correctness), and the incremental caches when the disk is short.
prune_build_cache() {
  [[ -d $CARGO_TARGET_DIR ]] || return 0
  find "$CARGO_TARGET_DIR" -path '*/incremental' -prune -o -type f -atime +7 -print0 | xargs -0r rm -f
  local free_kib
  free_kib=$(df -Pk "$CARGO_TARGET_DIR" | awk 'NR==2 {print $4}')
  if ((free_kib < 20 * 1024 * 1024)); then
    echo "=== less than 20 GiB free: removing cargo's incremental caches"
    rm -rf "$CARGO_TARGET_DIR"/*/incremental
  fi
  du -sh "$CARGO_TARGET_DIR" 2>/dev/null | sed 's/^/=== build cache: /'
}
prune_build_cache

# Debian packages first (the Rust build needs clang for RocksDB's bindgen).
# The Kubernetes, etcd and containerd builds (about 25 min cold beside the
# cargo builds; see e2e/README.md), Kafka's jars and helm are needed from the api
# stage on: they run in the background, niced, beside the lint and unit
# stages, whose cargo builds leave a core idle in their serial phases
# (linking, the last big crates). On a warm machine both are cache hits.
stage install "$here/cluster/install.sh" --only packages
install_log=$STREAMOPS_CACHE/install-builds.log
mkdir -p "$STREAMOPS_CACHE"
# Its own process group (setsid), so that stopping it stops its builds too;
# without CARGO_TARGET_DIR, so that `cargo install` builds in a temporary
# directory instead of queueing on the workspace build's target directory.
env -u CARGO_TARGET_DIR setsid "$here/cluster/install.sh" --only kubernetes --only kafka --only helm --only argocd >"$install_log" 2>&1 &
install_pid=$!
echo "=== [install-builds] Kubernetes build, Apache Kafka jars, helm and the Argo CD harness in the background (pid $install_pid), log: $install_log"
wait_install() {
  local rc=0
  wait "$install_pid" || rc=$?
  sed 's/^/  install-builds| /' "$install_log"
  [[ $rc -eq 0 ]] || { echo "=== install-builds failed (exit $rc)"; return "$rc"; }
}

if wants lint; then
  stage fmt cargo fmt --all --check
  stage clippy cargo clippy --workspace --all-targets --locked -- -D warnings
fi

# Every cargo command below selects the whole workspace (--workspace) and
# picks test targets with --lib/--bins/--test: cargo resolves features per
# package selection, and `-p X` or `--exclude Y` would resolve them differently
# and rebuild shared dependencies (tokio, rustls, rdkafka's librdkafka, ...)
# once per selection on a cold machine. With one selection every stage reuses
# the units of the first (checked with `cargo test --unit-graph`).
tests_of() { # DIR: --test NAME for each integration test file in DIR
  local f
  for f in "$1"/*.rs; do printf -- '--test %s ' "$(basename "$f" .rs)"; done
}

if wants unit; then
  # Everything that needs no cluster and no broker: every crate's unit tests,
  # the runtime's integration and property tests (the exactly-once ones that
  # need the broker are #[ignore]d here and run in the api stage), doc tests.
  # The operator's tests/ and e2e/ need a cluster and run in the api stage.
  # shellcheck disable=SC2046 # word splitting of tests_of is intended
  stage unit cargo test --workspace --locked --lib --bins $(tests_of runtime/tests)
  stage doc cargo test --workspace --locked --doc
fi

if wants chart; then
  stage argocd-lua lua5.4 charts/streamops/argocd/tests/run.lua
fi

# The stages from here on need the cluster binaries and the broker.
if wants api || wants smoke || wants jobs; then
  stage install-wait wait_install
fi

if wants api; then
  api_tests() {
    local state=${STREAMOPS_STATE:-/tmp/streamops-cluster}
    "$here/cluster/cluster.sh" up --control-plane
    # shellcheck disable=SC2064
    trap "'$here/cluster/cluster.sh' down || true" RETURN
    export STREAMOPS_KUBECONFIG=$state/kubeconfig
    cargo test --workspace --locked --test api
    # The chart's Argo CD health checks and actions judged by Argo CD's own
    # code (argocd-lua, built by install.sh) on the samples of run.lua.
    cargo test --workspace --locked --test argocd
    # The operator's controllers against the real apiserver and a real broker.
    "$here/cluster/cluster.sh" broker up
    STREAMOPS_BOOTSTRAP=$(cat "$state/bootstrap")
    export STREAMOPS_BOOTSTRAP
    # shellcheck disable=SC2046
    cargo test --workspace --locked $(tests_of operator/tests)
    # The runtime's exactly-once proofs against the same broker: SIGKILL and
    # crash points, zombie fencing across rescale, savepoint restore at other
    # parallelism, refusal to start empty, at least once under SIGKILL.
    cargo test --workspace --locked --test exactly_once -- --ignored --test-threads=1 --nocapture
    # Broker faults on Apache Kafka's three-broker cluster (replication
    # factor 3, min.insync.replicas 2): a job through a SIGKILLed partition
    # leader and a rolling restart; the operator through a full outage.
    "$here/cluster/cluster.sh" broker down
    "$here/cluster/cluster.sh" broker up --brokers 3
    STREAMOPS_BOOTSTRAP=$(cat "$state/bootstrap") STREAMOPS_BROKERS=3 \
      cargo test --workspace --locked --test broker_faults --test topic_brokers -- --ignored --test-threads=1 --nocapture
    "$here/cluster/cluster.sh" broker down
    # The Helm chart with the helm command users type (built by install.sh).
    python3 "$here/chart/test_chart.py"
    # The same through kubectl, as a user would: CRDs, then the examples.
    local ns=kubectl-apply-$$
    KUBECONFIG=$STREAMOPS_KUBECONFIG kubectl apply -f crds/
    KUBECONFIG=$STREAMOPS_KUBECONFIG kubectl wait --for condition=established --timeout=30s crd/streamtopics.streamops.io crd/streamjobs.streamops.io
    KUBECONFIG=$STREAMOPS_KUBECONFIG kubectl create namespace "$ns"
    KUBECONFIG=$STREAMOPS_KUBECONFIG kubectl apply -n "$ns" -f examples/
    KUBECONFIG=$STREAMOPS_KUBECONFIG kubectl get -n "$ns" streamtopics,streamjobs
    KUBECONFIG=$STREAMOPS_KUBECONFIG kubectl delete namespace "$ns" --wait=false
  }
  stage api api_tests
fi

if wants smoke; then
  # --debug: the dev-profile binaries, built with the unit and api stages'
  # package sets (see e2e/images/build.sh), so nothing is rebuilt here.
  stage smoke "$here/smoke/smoke.sh" --debug
fi

if wants jobs; then
  # A full node (stopped afterwards if this stage started it), the product
  # images (the same --debug build as the smoke stage), the chart, then the
  # tests. Same package set as the api stage's e2e tests: nothing new to build.
  jobs_tests() {
    local state=${STREAMOPS_STATE:-/tmp/streamops-cluster} started=0
    "$here/cluster/cluster.sh" status 2>/dev/null | grep -q '^apiserver: ready' || started=1
    "$here/cluster/cluster.sh" up
    if ((started)); then
      # shellcheck disable=SC2064
      trap "'$here/cluster/cluster.sh' down || true" RETURN
    fi
    "$here/cluster/cluster.sh" broker up
    "$here/images/build.sh" --debug --import operator runtime
    python3 -c 'import kafka' 2>/dev/null || pip install -q "kafka-python==3.0.12"
    STREAMOPS_BOOTSTRAP=$(cat "$state/bootstrap")
    # The broker's authenticated listeners: CA, tenant users (cluster.sh).
    STREAMOPS_KAFKA_AUTH=$state/kafka/auth
    export STREAMOPS_KUBECONFIG=$state/kubeconfig STREAMOPS_BOOTSTRAP STREAMOPS_KAFKA_AUTH
    python3 "$here/demo/chart.py" --kubeconfig "$STREAMOPS_KUBECONFIG" --bootstrap "$STREAMOPS_BOOTSTRAP"
    # A re-imported image under the same tag needs a new operator pod (not a
    # rolling restart: see e2e/demo.sh).
    KUBECONFIG=$STREAMOPS_KUBECONFIG kubectl -n streamops-system delete pod -l app.kubernetes.io/instance=streamops --wait=true
    KUBECONFIG=$STREAMOPS_KUBECONFIG kubectl -n streamops-system rollout status deployment/streamops-operator --timeout=180s
    # One test at a time: one of them restarts the operator, and the node has
    # two cores. Each test prints what it waits for and for how long.
    cargo test --workspace --locked --test jobs -- --nocapture --test-threads=1
    # The GitOps user story: examples/ applied twice with kubectl (Ready via
    # kubectl wait, no drift), then deleted.
    cargo test --workspace --locked --test gitops -- --nocapture
    # Argo CD's own code (argocd-lua) judging real objects of the operator:
    # health through an upgrade, a refusal, suspend and resume; its actions'
    # patches applied to the live job.
    cargo test --workspace --locked --test argocd -- --ignored --nocapture
  }
  stage jobs jobs_tests
fi
