#!/usr/bin/env bash
# End-to-end smoke test: a real node runs the product images as non-root,
# read-only pods; the runtime proves a broker round trip, the operator proves
# in-cluster API access with a ServiceAccount. Prints PASS or FAIL.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E=$(cd "$HERE/.." && pwd)
# shellcheck source=../cluster/lib.sh
source "$E2E/cluster/lib.sh"

NS=${STREAMOPS_SMOKE_NAMESPACE:-streamops-smoke}
TAG=${STREAMOPS_IMAGE_TAG:-dev}
TIMEOUT=${STREAMOPS_SMOKE_TIMEOUT:-180}
EXISTING=0
KEEP=0
TEST_IMAGE=""
BUILD_ARGS=()

usage() {
  cat <<EOF
Usage: $0 [options]

Local mode (default, needs root): e2e/cluster/cluster.sh up (full node), broker up,
e2e/images/build.sh --import, then the checks; the cluster is torn down at the end
if this script started it. A full cluster already running from \$STATE is reused
and left up (only the test's namespace and ClusterRole are removed on success); a
control-plane-only cluster there is an error (use another STREAMOPS_STATE and ports).

Checks (namespace $NS):
  - StatefulSet smoke-runtime, 2 replicas of localhost/streamops-runtime:$TAG:
    initContainer 'streamops-runtime check-broker --bootstrap-servers \$BOOTSTRAP',
    main container 'streamops-runtime idle' with the same check as readinessProbe;
    must reach 2 ready replicas.
  - Job smoke-check-api: 'streamops-operator check-api' (localhost/streamops-operator:$TAG)
    under ServiceAccount smoke-operator (ClusterRole: list namespaces); must succeed.
  All pods: runAsNonRoot (65532), readOnlyRootFilesystem, no privilege escalation,
  all capabilities dropped.

Options:
  --existing-cluster  use \$KUBECONFIG and \$STREAMOPS_BOOTSTRAP as they are (kind, any
                      cluster with the images loaded); no cluster/broker/image setup, no down
  --keep              leave the local cluster up at the end
  --bin-dir DIR       passed to e2e/images/build.sh (prebuilt binaries)
  --debug             passed to e2e/images/build.sh (debug build, reuses target/debug)
  --test-image busybox
                      pipeline self-test: run the same manifests with a throwaway
                      busybox-static image (TCP connect to the broker; HTTPS list of
                      namespaces with the mounted ServiceAccount token) instead of the
                      product binaries
  -h, --help

Environment: STREAMOPS_STATE, STREAMOPS_SMOKE_TIMEOUT ($TIMEOUT s), STREAMOPS_IMAGE_TAG,
  STREAMOPS_ARTIFACTS (default \$STATE/artifacts/smoke-<time>; logs + describe on failure).
EOF
}

while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --existing-cluster) EXISTING=1; shift ;;
    --keep) KEEP=1; shift ;;
    --debug) BUILD_ARGS+=(--debug); shift ;;
    --bin-dir) BUILD_ARGS+=(--bin-dir "${2:?--bin-dir needs a directory}"); shift 2 ;;
    --test-image) TEST_IMAGE=${2:?--test-image needs a name}; [[ $TEST_IMAGE == busybox ]] || die "only --test-image busybox is supported"; shift 2 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

ARTIFACTS=${STREAMOPS_ARTIFACTS:-$STATE/artifacts/smoke-$(date +%Y%m%d-%H%M%S)}
CLUSTER=$E2E/cluster/cluster.sh
RESULT=FAIL
STARTED_CLUSTER=0
T0=$SECONDS

kc() { "$(kubectl_bin)" "$@"; }

collect() {
  mkdir -p "$ARTIFACTS"
  log "collecting diagnostics into $ARTIFACTS"
  if ((!EXISTING)) && [[ -d $STATE/logs ]]; then cp -r "$STATE/logs" "$ARTIFACTS/component-logs" || true; fi
  {
    kc get nodes -o wide; echo
    kc get all,serviceaccounts,roles,rolebindings -n "$NS" -o wide; echo
    kc get events -n "$NS" --sort-by=.lastTimestamp
  } >"$ARTIFACTS/get.txt" 2>&1 || true
  kc describe nodes >"$ARTIFACTS/describe-nodes.txt" 2>&1 || true
  kc describe all -n "$NS" >"$ARTIFACTS/describe-$NS.txt" 2>&1 || true
  local p c
  for p in $(kc get pods -n "$NS" -o name 2>/dev/null); do
    for c in $(kc get -n "$NS" "$p" -o 'jsonpath={.spec.initContainers[*].name} {.spec.containers[*].name}' 2>/dev/null); do
      kc logs -n "$NS" "$p" -c "$c" >"$ARTIFACTS/${p#pod/}.$c.log" 2>&1 || true
      kc logs -n "$NS" "$p" -c "$c" --previous >"$ARTIFACTS/${p#pod/}.$c.previous.log" 2>/dev/null \
        || rm -f "$ARTIFACTS/${p#pod/}.$c.previous.log"
    done
  done
}

finish() {
  local rc=$?
  set +e
  [[ $RESULT == PASS ]] || collect
  local t_down=$SECONDS
  if ((STARTED_CLUSTER && !KEEP)); then
    "$CLUSTER" down >/dev/null 2>&1 || log "cluster down failed"
    log "phase: cluster down $((SECONDS - t_down)) s"
  elif [[ $RESULT == PASS ]] && ((!KEEP)); then
    # A cluster we did not start stays up; remove what the test created.
    kc delete namespace "$NS" --wait=false >/dev/null 2>&1
    kc delete clusterrolebinding,clusterrole streamops-smoke-list-namespaces >/dev/null 2>&1
  fi
  if [[ $RESULT == PASS ]]; then
    echo "PASS: smoke test ($((SECONDS - T0)) s)"
  else
    echo "FAIL: smoke test (exit $rc, $((SECONDS - T0)) s); diagnostics in $ARTIFACTS"
    [[ $rc -ne 0 ]] || rc=1
  fi
  exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

# --- setup -----------------------------------------------------------------

if ((EXISTING)); then
  [[ -n ${KUBECONFIG:-} ]] || die "--existing-cluster needs KUBECONFIG"
  [[ -n ${STREAMOPS_BOOTSTRAP:-} ]] || die "--existing-cluster needs STREAMOPS_BOOTSTRAP (a Kafka bootstrap address pods can reach)"
  BOOTSTRAP=$STREAMOPS_BOOTSTRAP
else
  need_root "the local smoke test"
  mode=$(cat "$STATE/mode" 2>/dev/null || true)
  if "$CLUSTER" status 2>/dev/null | grep -q '^apiserver: ready'; then
    # Someone else's cluster (or ours from --keep): use it, never take it down.
    [[ $mode == full ]] || die "a $mode cluster (no node) already runs from $STATE, perhaps someone else's; \
the smoke test needs a full node. Use another STREAMOPS_STATE with other ports (e2e/README.md, \
'Two clusters side by side') or '$CLUSTER down' if it is yours"
    log "reusing the full cluster already running from $STATE (it stays up afterwards)"
  else
    STARTED_CLUSTER=1
  fi
  "$CLUSTER" up
  export KUBECONFIG=$STATE/kubeconfig
  "$CLUSTER" broker up
  BOOTSTRAP=$(cat "$STATE/bootstrap")
  if [[ -n $TEST_IMAGE ]]; then
    "$E2E/images/build.sh" --import busybox
  else
    "$E2E/images/build.sh" --import "${BUILD_ARGS[@]}" operator runtime
  fi
fi
log "bootstrap servers: $BOOTSTRAP"
log "phase: setup (cluster, broker, images) $((SECONDS - T0)) s"
T_CHECKS=$SECONDS

RUNTIME_IMAGE=localhost/streamops-runtime:$TAG
OPERATOR_IMAGE=localhost/streamops-operator:$TAG
# JSON argv arrays.
CHECK_BROKER='["streamops-runtime", "check-broker", "--bootstrap-servers", "'$BOOTSTRAP'"]'
IDLE='["streamops-runtime", "idle"]'
CHECK_API='["streamops-operator", "check-api"]'
if [[ $TEST_IMAGE == busybox ]]; then
  RUNTIME_IMAGE=localhost/e2e-busybox:$TAG
  OPERATOR_IMAGE=$RUNTIME_IMAGE
  CHECK_BROKER='["busybox", "nc", "-w", "5", "'${BOOTSTRAP%:*}'", "'${BOOTSTRAP##*:}'"]'
  IDLE='["busybox", "sleep", "86400"]'
  CHECK_API='["busybox", "sh", "-c", "set -e; d=/var/run/secrets/kubernetes.io/serviceaccount; busybox wget -q -O /dev/stdout --no-check-certificate --header \"Authorization: Bearer $(cat $d/token)\" https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT/api/v1/namespaces | grep -q NamespaceList"]'
fi

# --- manifests --------------------------------------------------------------

SECURITY='{"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}'

kc delete namespace "$NS" --ignore-not-found --wait=true >/dev/null
kc apply -f - <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $NS
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: smoke-operator
  namespace: $NS
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: streamops-smoke-list-namespaces
rules:
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: streamops-smoke-list-namespaces
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: streamops-smoke-list-namespaces
subjects:
- kind: ServiceAccount
  name: smoke-operator
  namespace: $NS
---
apiVersion: v1
kind: Service
metadata:
  name: smoke-runtime
  namespace: $NS
spec:
  clusterIP: None
  selector: {app: smoke-runtime}
  ports: [{name: metrics, port: 9090}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: smoke-runtime
  namespace: $NS
spec:
  serviceName: smoke-runtime
  replicas: 2
  podManagementPolicy: Parallel
  selector:
    matchLabels: {app: smoke-runtime}
  template:
    metadata:
      labels: {app: smoke-runtime}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 5
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532}
      initContainers:
      - name: check-broker
        image: $RUNTIME_IMAGE
        imagePullPolicy: Never
        command: $CHECK_BROKER
        securityContext: $SECURITY
        volumeMounts: [{name: tmp, mountPath: /tmp}]
      containers:
      - name: runtime
        image: $RUNTIME_IMAGE
        imagePullPolicy: Never
        command: $IDLE
        securityContext: $SECURITY
        readinessProbe:
          exec:
            command: $CHECK_BROKER
          periodSeconds: 10
          timeoutSeconds: 15
        resources:
          requests: {cpu: 10m, memory: 32Mi}
        volumeMounts: [{name: tmp, mountPath: /tmp}]
      volumes:
      - name: tmp
        emptyDir: {}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: smoke-check-api
  namespace: $NS
spec:
  backoffLimit: 3
  activeDeadlineSeconds: $TIMEOUT
  template:
    spec:
      serviceAccountName: smoke-operator
      restartPolicy: Never
      securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532}
      containers:
      - name: check-api
        image: $OPERATOR_IMAGE
        imagePullPolicy: Never
        command: $CHECK_API
        securityContext: $SECURITY
EOF

# --- assertions ---------------------------------------------------------------

log "waiting (up to ${TIMEOUT}s) for Job smoke-check-api to complete"
kc wait -n "$NS" --for=condition=complete job/smoke-check-api --timeout="${TIMEOUT}s"
log "waiting (up to ${TIMEOUT}s) for StatefulSet smoke-runtime to have 2 ready replicas"
kc rollout status -n "$NS" statefulset/smoke-runtime --timeout="${TIMEOUT}s"
kc wait -n "$NS" --for=condition=Ready pod/smoke-runtime-0 pod/smoke-runtime-1 --timeout="${TIMEOUT}s"
ready=$(kc get -n "$NS" statefulset/smoke-runtime -o 'jsonpath={.status.readyReplicas}')
[[ $ready == 2 ]] || die "StatefulSet smoke-runtime has ${ready:-0} ready replicas, want 2"
kc get pods -n "$NS" -o wide
log "phase: checks $((SECONDS - T_CHECKS)) s"
RESULT=PASS
