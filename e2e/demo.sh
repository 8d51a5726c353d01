#!/usr/bin/env bash
# README command 1 (`make demo`): a local cluster, a Kafka-compatible broker,
# streamops installed with its Helm chart, and the clickstream example running
# on real runtime pods: click events in, windowed counts and sums out, then a
# change to the job that streamops rolls out with savepoint-then-upgrade.
#
# Idempotent: run it again and it reuses what is already up (cluster, broker,
# release, topics, job). Needs root (the local cluster runs containerd, a
# kubelet and iptables rules). Tear down with `e2e/cluster/cluster.sh down`.
#
# Environment: STREAMOPS_STATE and the other cluster.sh settings,
#   STREAMOPS_DEMO_NAMESPACE (clickstream), STREAMOPS_DEMO_BIN_DIR (prebuilt
#   streamops-operator/streamops-runtime binaries instead of a cargo build),
#   STREAMOPS_DEMO_RELEASE_BUILD=1 (release images; default: the dev build that
#   make test shares), STREAMOPS_DEMO_TIMEOUT (per wait, 240 s).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=e2e/cluster/lib.sh
source "$HERE/cluster/lib.sh"
# Builds go to the same cache as `make test`'s (outside the checkout), so
# either command reuses what the other compiled.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$STREAMOPS_CACHE/target}

NS=${STREAMOPS_DEMO_NAMESPACE:-clickstream}
OPNS=streamops-system
TIMEOUT=${STREAMOPS_DEMO_TIMEOUT:-240}
CLUSTER=$HERE/cluster/cluster.sh
JOB=clicks-per-user
T0=$SECONDS
PRODUCER_PID=""

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
say() { printf '    %s\n' "$*"; }
kc() { "$(kubectl_bin)" --kubeconfig "$STATE/kubeconfig" "$@"; }
jp() { kc get -n "$NS" streamjob "$JOB" -o "jsonpath=$1" 2>/dev/null || true; }

cleanup() {
  local rc=$?
  if [[ -n $PRODUCER_PID ]] && kill -0 "$PRODUCER_PID" 2>/dev/null; then
    kill "$PRODUCER_PID" 2>/dev/null || true
    wait "$PRODUCER_PID" 2>/dev/null || true
  fi
  if ((rc != 0)); then
    echo
    echo "The demo failed (exit $rc). What to look at:"
    echo "  kubectl --kubeconfig $STATE/kubeconfig get streamtopics,streamjobs,pods -n $NS"
    echo "  kubectl --kubeconfig $STATE/kubeconfig describe streamjob $JOB -n $NS"
    echo "  kubectl --kubeconfig $STATE/kubeconfig logs -n $OPNS deploy/streamops-operator"
    echo "  component logs: $STATE/logs/"
  fi
}
trap cleanup EXIT

# waits up to TIMEOUT for CMD... to succeed, saying what it waits for
wait_until() {
  local what=$1; shift
  local t=$SECONDS
  say "waiting for $what"
  until "$@" >/dev/null 2>&1; do
    ((SECONDS - t < TIMEOUT)) || die "timed out after ${TIMEOUT}s waiting for $what"
    sleep 2
  done
  say "... $what ($((SECONDS - t)) s)"
}

# Running, and the operator has seen the latest spec.
job_running() {
  [[ $(jp '{.status.phase}') == Running && $(jp '{.status.observedGeneration}') == "$(jp '{.metadata.generation}')" ]]
}

need_root "the demo (it runs a local Kubernetes node)"

step "1/9 Installing prerequisites (Debian packages, Kubernetes $K8S_VERSION, etcd and containerd built from Go modules, Apache Kafka's jars from Maven Central, helm from the Go module proxy; cached under $CACHE)"
"$HERE/cluster/install.sh"
export STREAMOPS_HELM=$HELM
python3 -c 'import kafka' 2>/dev/null || pip install -q "kafka-python==3.0.12"

step "2/9 Starting the local single-node cluster and Apache Kafka (one KRaft broker)"
mode=$(cat "$STATE/mode" 2>/dev/null || true)
if [[ $mode == control-plane ]] && "$CLUSTER" status 2>/dev/null | grep -q '^apiserver: ready'; then
  die "a control-plane-only cluster (no node) runs from $STATE, perhaps someone else's API tests.
The demo needs a full node: use another state directory and ports (see e2e/README.md,
'Two clusters side by side'), or '$CLUSTER down' if it is yours"
fi
"$CLUSTER" up
"$CLUSTER" broker up
BOOTSTRAP=$(cat "$STATE/bootstrap")
say "Kafka bootstrap (pods and this host): $BOOTSTRAP"

step "3/9 Building the operator and runtime images (no Docker: one-layer images from the binaries) and importing them into the node"
build_args=(--import operator runtime)
if [[ -n ${STREAMOPS_DEMO_BIN_DIR:-} ]]; then
  build_args=(--bin-dir "$STREAMOPS_DEMO_BIN_DIR" "${build_args[@]}")
elif [[ ${STREAMOPS_DEMO_RELEASE_BUILD:-0} != 1 ]]; then
  build_args=(--debug "${build_args[@]}")
fi
"$HERE/images/build.sh" "${build_args[@]}"

step "4/9 Installing streamops with its Helm chart (CRDs, RBAC, the operator as a Deployment in $OPNS)"
python3 "$HERE/demo/chart.py" --kubeconfig "$STATE/kubeconfig" --namespace "$OPNS" --bootstrap "$BOOTSTRAP"
# A rebuilt image under the same tag needs a new pod to take effect. Not
# `kubectl rollout restart`: with one replica the surge pod only turns Ready
# once it holds the leader Lease, which the old pod keeps, so a rolling
# update never finishes. Deleting the pod releases the Lease.
kc -n "$OPNS" delete pod -l app.kubernetes.io/instance=streamops --wait=true
kc -n "$OPNS" rollout status deployment/streamops-operator --timeout="${TIMEOUT}s"
kc -n "$OPNS" get pods -o wide

step "5/9 Applying the example topics and the clickstream StreamJob (examples/) in namespace $NS"
kc create namespace "$NS" --dry-run=client -o yaml | kc apply -f - >/dev/null
if [[ -n $(kc get -n "$NS" streamjob "$JOB" -o name 2>/dev/null) ]] && [[ -n $(jp '{.status.lastSavepoint.id}') ]]; then
  # A previous run upgraded it: go back to the example as written. That is
  # itself a spec change, rolled out with a savepoint.
  say "the job exists from a previous run; re-applying the example as written"
fi
kc apply -n "$NS" -f "$ROOT/examples/clickstream-topics.yaml" -f "$ROOT/examples/clickstream-job.yaml"
for t in clicks clicks-per-user clicks-late clicks-dead-letter; do
  wait_until "StreamTopic $t to be Ready" \
    kc wait -n "$NS" --for=condition=Ready "streamtopic/$t" --timeout=5s
done
kc get -n "$NS" streamtopics
wait_until "StreamJob $JOB to be Running (one runtime pod per input partition)" \
  job_running
kc get -n "$NS" streamjobs,statefulsets,pods -o wide

step "6/9 Producing a click stream to topic 'clicks' (40 clicks/s from 12 users; a few late and malformed ones)"
since_ms=$(($(date +%s) * 1000))
python3 "$HERE/demo/clicks.py" produce --bootstrap "$BOOTSTRAP" --topic clicks --rate 40 \
  >"$STATE/demo-producer.log" 2>&1 &
PRODUCER_PID=$!
say "producer pid $PRODUCER_PID, log $STATE/demo-producer.log"
say "it produces without pause; results become visible to read_committed readers when the"
say "checkpoint whose transaction carries them commits"
say "windows are 10 s of event time; a window is emitted once the watermark (max event time - 2 s)"
say "passes its end on every partition, and becomes visible at the next checkpoint (every 5 s)"

step "7/9 Windowed results arriving in the sink topic 'clicks-per-user' (read_committed; 'seen' = when each became visible)"
python3 "$HERE/demo/clicks.py" show --bootstrap "$BOOTSTRAP" --topic clicks-per-user --min 12 --timeout 120 --since-ms "$since_ms"

step "8/9 Changing the job: adding an aggregation (largest purchase per user and window)"
say "kubectl patch streamjob $JOB: + {name: biggest, function: max, field: record.amount}"
gen_before=$(jp '{.metadata.generation}')
sp_before=$(jp '{.status.lastSavepoint.id}')
t_apply=$SECONDS
kc patch -n "$NS" streamjob "$JOB" --type=json -p \
  '[{"op": "add", "path": "/spec/pipeline/aggregations/-", "value": {"name": "biggest", "function": "max", "field": "record.amount"}}]'
gen=$(jp '{.metadata.generation}')
say "generation $gen_before -> $gen; the operator classifies the change (adding an aggregation is"
say "state-compatible), stops every pod with a savepoint, and starts the new version from it:"
last=""
while :; do
  phase=$(jp '{.status.phase}')
  observed=$(jp '{.status.observedGeneration}')
  sp=$(jp '{.status.lastSavepoint.id}')
  line="phase=$phase observedGeneration=$observed savepoint=${sp:-none}"
  if [[ $line != "$last" ]]; then say "[+$((SECONDS - t_apply))s] $line"; last=$line; fi
  if [[ $phase == Running && $observed == "$gen" && -n $sp && $sp != "$sp_before" ]]; then break; fi
  [[ $phase == Failed ]] && die "the upgrade failed: $(jp '{.status.conditions}')"
  ((SECONDS - t_apply < TIMEOUT)) || die "the upgrade did not finish in ${TIMEOUT}s: $(jp '{.status.conditions}')"
  sleep 1
done
say "upgraded in $((SECONDS - t_apply)) s. The savepoint the new version started from:"
say "  kubectl get streamjob $JOB -n $NS -o jsonpath='{.status.lastSavepoint.id}'  ->  $(jp '{.status.lastSavepoint.id}')"
say "  location: $(jp '{.status.lastSavepoint.location}')"
kc get -n "$NS" streamjob "$JOB"
kc get -n "$NS" pods -o wide

step "9/9 Results continuing after the upgrade, now with 'biggest' (windows that were open during the upgrade start it empty)"
python3 "$HERE/demo/clicks.py" show --bootstrap "$BOOTSTRAP" --topic clicks-per-user --need-field biggest --min 12 --timeout 120 --since-ms "$since_ms"
say "late clicks routed to 'clicks-late': $(python3 "$HERE/demo/clicks.py" count --bootstrap "$BOOTSTRAP" --topic clicks-late)"
say "malformed clicks routed to 'clicks-dead-letter': $(python3 "$HERE/demo/clicks.py" count --bootstrap "$BOOTSTRAP" --topic clicks-dead-letter)"
kill "$PRODUCER_PID" 2>/dev/null || true
wait "$PRODUCER_PID" 2>/dev/null || true
PRODUCER_PID=""
tail -n 1 "$STATE/demo-producer.log" | sed 's/^/    /'

cat <<EOF

Done in $((SECONDS - T0)) s. The cluster, the broker and the job keep running. Poke at it:

  export KUBECONFIG=$STATE/kubeconfig
  kubectl get streamjobs,streamtopics -n $NS -w
  kubectl describe streamjob $JOB -n $NS          # conditions, savepoint history, events
  kubectl logs -n $NS $JOB-0                      # a runtime pod
  kubectl logs -n $OPNS deploy/streamops-operator          # the operator
  python3 e2e/demo/clicks.py produce --bootstrap $BOOTSTRAP --seconds 60    # more clicks
  python3 e2e/demo/clicks.py show --bootstrap $BOOTSTRAP --min 1000 --timeout 30  # the output
  kubectl annotate streamjob $JOB -n $NS streamops.io/savepoint-request=\$(date +%s)  # a savepoint now
  kubectl patch streamjob $JOB -n $NS --type=merge -p '{"spec":{"state":"suspended"}}'

Tear down:

  e2e/cluster/cluster.sh down          # cluster and broker (add --purge to drop cached state)
EOF
