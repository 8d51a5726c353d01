#!/usr/bin/env bash
# A local single-node Kubernetes (or just etcd + kube-apiserver) and
# Apache Kafka in KRaft mode (one combined broker/controller, or three), from
# what install.sh built and resolved: Kubernetes, etcd and containerd from Go
# modules (versions in lib.sh), runc and the CNI plugins from Debian.
# Needs root. See e2e/README.md.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
E2E=$(cd "$HERE/.." && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

: "${STREAMOPS_NODE_IP:=10.244.0.1}"       # bridge gateway; apiserver, kubelet and broker address
: "${STREAMOPS_BRIDGE:=cni0}"
: "${STREAMOPS_NODE_NAME:=streamops-node}"
: "${STREAMOPS_APISERVER_PORT:=6443}"
: "${STREAMOPS_ETCD_PORT:=2379}"
: "${STREAMOPS_BROKER_PORT:=9092}"          # broker i's client port: +2(i-1); its controller's: +1
: "${STREAMOPS_KAFKA_HEAP:=1g}"
: "${STREAMOPS_UP_TIMEOUT:=180}"
: "${STREAMOPS_HOST_CHECKPOINT_DIR:=/var/lib/streamops/checkpoints}"   # hostPath behind file:// checkpoints
RUNTIME_UID=65532                        # the runtime image's non-root user
POD_CIDR=${STREAMOPS_NODE_IP%.*}.0/24    # the node's pods: NODE_IP's /24
POD_PREFIX=24
CLUSTER_CIDR=$POD_CIDR
SERVICE_CIDR=10.96.0.0/12
SERVICE_IP=10.96.0.1
BRIDGE=$STREAMOPS_BRIDGE
CNI_NET=streamops

PKI=$STATE/pki
LOGS=$STATE/logs
PIDS=$STATE/pids
KUBECONFIG_ADMIN=$STATE/kubeconfig
CTRD_DIR=$STATE/containerd
CTRD_SOCK=$CTRD_DIR/containerd.sock
APISERVER_URL=https://127.0.0.1:$STREAMOPS_APISERVER_PORT

usage() {
  cat <<EOF
Usage: $0 <command> [options]

Commands:
  up --control-plane  etcd + kube-apiserver on 127.0.0.1 only (envtest-style, no node)
  up                  full single node: etcd, apiserver, controller-manager, scheduler,
                      containerd, CNI bridge, kubelet, kube-proxy; waits for node Ready.
                      Also prepares $STREAMOPS_HOST_CHECKPOINT_DIR for StreamJob pods
                      (owned by the runtime's uid $RUNTIME_UID)
  down [--purge]      stop everything started from \$STATE (incl. the broker), remove
                      containers, mounts, netns, iptables rules and the $BRIDGE bridge.
                      --purge also deletes \$STATE (certs, image store). Safe to repeat.
  status              what runs, node state, where the logs are
  broker up [--brokers 1|3]
                      Apache Kafka $STREAMOPS_KAFKA_VERSION (KRaft): one combined broker/controller
                      (default), or three (replication factor 3, min.insync.replicas 2);
                      clients on 0.0.0.0:$STREAMOPS_BROKER_PORT (+2, +4) advertising $STREAMOPS_NODE_IP
                      (reachable from pods and host); fresh storage on every start; waits until
                      a Metadata request lists every broker. The bootstrap address is printed
                      and written to \$STATE/bootstrap. Logs: \$STATE/logs/kafka-<i>.log
                      Plaintext clients are anonymous super users; two more listeners per broker
                      authenticate users ${KAFKA_TENANTS[*]} (StandardAuthorizer, no ACLs at
                      start): SCRAM-SHA-512/256 over TLS on port +10, TLS client certificates
                      (CN = user) on +20. CA, passwords, certificates, keys and both bootstrap
                      lists in \$STATE/kafka/auth (STREAMOPS_KAFKA_AUTH)
  broker down         stop every broker (TERM, then KILL after 10 s)
  broker kill|stop|start|restart I...|all
                      fault injection on broker I (or every broker): SIGKILL; TERM; start
                      again on the same storage; TERM then start. 'restart 1', 'restart 2',
                      ... is a rolling restart; 'start' and 'restart' wait until it serves
  kubectl ARGS...     kubectl against this cluster
  env                 print export lines (KUBECONFIG, STREAMOPS_BOOTSTRAP, STREAMOPS_KAFKA_AUTH)

Files:
  \$STATE=$STATE (STREAMOPS_STATE)
  kubeconfig  \$STATE/kubeconfig (admin, static token)
  logs        \$STATE/logs/<component>.log
  cache       $CACHE (STREAMOPS_CACHE; filled by install.sh)

Environment: STREAMOPS_STATE, STREAMOPS_CACHE, STREAMOPS_NODE_IP ($STREAMOPS_NODE_IP; pods get its /24),
  STREAMOPS_BRIDGE ($STREAMOPS_BRIDGE), STREAMOPS_NODE_NAME ($STREAMOPS_NODE_NAME),
  STREAMOPS_APISERVER_PORT ($STREAMOPS_APISERVER_PORT), STREAMOPS_ETCD_PORT ($STREAMOPS_ETCD_PORT),
  STREAMOPS_BROKER_PORT ($STREAMOPS_BROKER_PORT), STREAMOPS_KAFKA_HEAP ($STREAMOPS_KAFKA_HEAP),
  STREAMOPS_KAFKA_VERSION ($STREAMOPS_KAFKA_VERSION), STREAMOPS_JAVA ($STREAMOPS_JAVA),
  STREAMOPS_UP_TIMEOUT ($STREAMOPS_UP_TIMEOUT s),
  STREAMOPS_HOST_CHECKPOINT_DIR ($STREAMOPS_HOST_CHECKPOINT_DIR)
EOF
}

# --- helpers ---------------------------------------------------------------

kc() { "$(kubectl_bin)" --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

pid_of() { local f=$PIDS/$1.pid; [[ -f $f ]] && cat "$f"; }
alive() { local p; p=$(pid_of "$1") && [[ -n $p ]] && kill -0 "$p" 2>/dev/null; }

# start NAME CMD... : run in its own session, log to $LOGS/NAME.log, pid in $PIDS/NAME.pid
start() {
  local name=$1; shift
  if alive "$name"; then log "$name already running (pid $(pid_of "$name"))"; return 0; fi
  [[ -x $1 ]] || command -v "$1" >/dev/null || die "$name: $1 not found (run e2e/cluster/install.sh)"
  mkdir -p "$LOGS" "$PIDS"
  printf '\n=== %s start: %s\n' "$(date -Is)" "$*" >>"$LOGS/$name.log"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
  log "started $name (pid $!, log $LOGS/$name.log)"
}

# stop NAME... : TERM all, wait up to 10 s, then KILL the rest.
stop() {
  local name p i pids=() names=()
  for name in "$@"; do
    p=$(pid_of "$name") || continue
    if [[ -n $p ]] && kill -0 "$p" 2>/dev/null; then
      kill -TERM "$p" 2>/dev/null || true
      pids+=("$p"); names+=("$name")
    fi
  done
  for ((i = 0; i < 50; i++)); do
    local any=0
    for p in ${pids[@]+"${pids[@]}"}; do kill -0 "$p" 2>/dev/null && any=1; done
    ((any)) || break
    sleep 0.2
  done
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      log "${names[$i]} did not stop on TERM; KILL"; kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
    log "stopped ${names[$i]} (pid ${pids[$i]})"
  done
  for name in "$@"; do rm -f "$PIDS/$name.pid"; done
}

# wait_for WHAT TIMEOUT CMD... : poll until CMD succeeds
wait_for() {
  local what=$1 timeout=$2 t0=$SECONDS; shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS - t0 > timeout)); then die "timed out after ${timeout}s waiting for $what (logs: $LOGS)"; fi
    sleep 1
  done
}

check_alive() {
  local n
  for n in "$@"; do
    alive "$n" || { tail -30 "$LOGS/$n.log" >&2 || true; die "$n exited (log: $LOGS/$n.log)"; }
  done
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# --- PKI, tokens, kubeconfigs ------------------------------------------------

gen_pki() {
  mkdir -p "$PKI"; chmod 700 "$PKI"
  if [[ ! -f $PKI/ca.crt ]]; then
    log "generating CA and service-account keys in $PKI"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=streamops-e2e-ca" \
      -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
    openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  fi
  # The serving cert is re-issued when the address set changes.
  local sans="IP:127.0.0.1,IP:$STREAMOPS_NODE_IP,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  if [[ ! -f $PKI/apiserver.crt || $(cat "$PKI/apiserver.sans" 2>/dev/null) != "$sans" ]]; then
    log "issuing apiserver serving certificate ($sans)"
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" \
      -keyout "$PKI/apiserver.key" -out "$PKI/apiserver.csr" 2>/dev/null
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n' "$sans" >"$PKI/apiserver.ext"
    openssl x509 -req -in "$PKI/apiserver.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
      -days 3650 -extfile "$PKI/apiserver.ext" -out "$PKI/apiserver.crt" 2>/dev/null
    echo "$sans" >"$PKI/apiserver.sans"
  fi
  if [[ ! -f $PKI/tokens.csv ]]; then
    t() { openssl rand -hex 16; }
    # token,user,uid,"group1,group2"
    {
      echo "$(t),admin,admin,system:masters"
      echo "$(t),system:kube-controller-manager,kcm,system:masters"
      echo "$(t),system:kube-scheduler,ksched,"
      echo "$(t),system:kube-proxy,kproxy,"
      echo "$(t),system:node:$STREAMOPS_NODE_NAME,kubelet,system:nodes"
    } >"$PKI/tokens.csv"
    chmod 600 "$PKI/tokens.csv"
  fi
}

token_for() { awk -F, -v u="$1" '$2 == u { print $1 }' "$PKI/tokens.csv"; }

write_kubeconfig() { # FILE USER
  local file=$1 user=$2 token
  token=$(token_for "$user"); [[ -n $token ]] || die "no token for $user in $PKI/tokens.csv"
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: streamops-e2e
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $user
  user:
    token: $token
contexts:
- name: streamops-e2e
  context: {cluster: streamops-e2e, user: $user}
current-context: streamops-e2e
EOF
  chmod 600 "$file"
}

# --- components ----------------------------------------------------------------

start_etcd() {
  mkdir -p "$STATE/etcd"; chmod 700 "$STATE/etcd"
  local peer=$((STREAMOPS_ETCD_PORT + 1))
  start etcd "$ETCD_BIN/etcd" --name streamops --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$STREAMOPS_ETCD_PORT" \
    --advertise-client-urls "http://127.0.0.1:$STREAMOPS_ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
    --initial-cluster "streamops=http://127.0.0.1:$peer" \
    --listen-metrics-urls "" --log-level warn
}

start_apiserver() { # MODE
  local bind=127.0.0.1 adv=()
  if [[ $1 == full ]]; then bind=0.0.0.0; adv=(--advertise-address="$STREAMOPS_NODE_IP"); fi
  start kube-apiserver "$KBIN/kube-apiserver" \
    --etcd-servers="http://127.0.0.1:$STREAMOPS_ETCD_PORT" \
    --bind-address="$bind" --secure-port="$STREAMOPS_APISERVER_PORT" "${adv[@]}" \
    --cert-dir="$PKI/apiserver-certs" \
    --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --token-auth-file="$PKI/tokens.csv" \
    --authorization-mode=Node,RBAC \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --allow-privileged=true \
    --kubelet-preferred-address-types=InternalIP \
    --profiling=false --v=1
}

apiserver_ready() {
  curl -fsS --max-time 3 --cacert "$PKI/ca.crt" -H "Authorization: Bearer $(token_for admin)" \
    "$APISERVER_URL/readyz" 2>/dev/null | grep -qx ok
}

ensure_bridge() {
  # The CNI bridge plugin creates cni0 on the first pod; we create it up front
  # so the apiserver, kubelet and broker can use its gateway address at once.
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    log "creating bridge $BRIDGE with $STREAMOPS_NODE_IP/$POD_PREFIX"
    ip link add "$BRIDGE" type bridge
  fi
  ip -4 addr show dev "$BRIDGE" | grep "inet $STREAMOPS_NODE_IP/" >/dev/null \
    || ip addr add "$STREAMOPS_NODE_IP/$POD_PREFIX" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}

write_containerd_config() {
  mkdir -p "$CTRD_DIR/root" "$CTRD_DIR/state" "$STATE/cni/net.d" "$STATE/cni/ipam"
  # containerd 2.x, config version 4: the CRI plugin is split into images
  # and runtime; the socket addresses are server plugins.
  cat >"$CTRD_DIR/config.toml" <<EOF
version = 4
root = "$CTRD_DIR/root"
state = "$CTRD_DIR/state"
oom_score = 0
imports = []
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs", "io.containerd.snapshotter.v1.blockfile", "io.containerd.nri.v1.nri", "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[plugins."io.containerd.server.v1.grpc"]
  address = "$CTRD_SOCK"

[plugins."io.containerd.server.v1.ttrpc"]
  address = "$CTRD_SOCK.ttrpc"

[plugins."io.containerd.server.v1.metrics"]
  address = ""

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "localhost/pause:local"

[plugins."io.containerd.cri.v1.runtime"]
  # Without this every sandbox fails with "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$STATE/cni/net.d"
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
EOF
  cat >"$STATE/cni/net.d/10-$CNI_NET.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$CNI_NET",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$STREAMOPS_NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
}

# What the kubelet's flags used to say, as a KubeletConfiguration (most of
# those flags are deprecated, --container-runtime and
# --pod-infra-container-image are gone: the sandbox image is containerd's).
# failCgroupV1: false -- these machines are cgroup v1, which kubelets since
# 1.35 refuse by default. Authentication and authorization as the flags'
# defaults were (a config file defaults to webhook both): the apiserver
# reaches the kubelet (logs, exec) without a client certificate.
write_kubelet_config() {
  cat >"$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$CTRD_SOCK
runtimeRequestTimeout: 5m
failSwapOn: false
cgroupsPerQOS: false
enforceNodeAllocatable: []
evictionHard: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
clusterDomain: cluster.local
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
volumePluginDir: $STATE/kubelet/volume-plugins
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
EOF
}

ctr_() { "$CTR" --address "$CTRD_SOCK" -n k8s.io "$@"; }

import_pause() {
  if ctr_ images ls -q 2>/dev/null | grep -x 'localhost/pause:local' >/dev/null; then return 0; fi
  local tar=$STATE/images/pause.tar
  python3 "$E2E/images/mkimage.py" --tag localhost/pause:local --out "$tar" \
    --file "$KBIN/pause:/pause" --entrypoint /pause --user 65535:65535 >/dev/null 2>&1 \
    || die "building the pause image failed (python3 $E2E/images/mkimage.py)"
  ctr_ images import "$tar" >/dev/null 2> >(grep -v "DEPRECATION: The support for cgroup v1" >&2) || die "ctr images import $tar failed"
  log "imported localhost/pause:local"
}

# The hostPath behind `file://` checkpoint storage (HOST_CHECKPOINT_DIR in
# operator/src/job/resources.rs). Each job's pods mount only `<ns>/<job>`
# below it (a subPath), which the kubelet creates as root with this
# directory's mode: setgid and group rwx here make those directories group
# the runtime's gid and writable by it (Kubernetes' DirectoryOrCreate alone
# would make a root-owned 0755 directory the non-root runtime cannot write).
# Idempotent. (On kind the directory lives inside the node container.)
prepare_checkpoint_dir() {
  local dir=$STREAMOPS_HOST_CHECKPOINT_DIR
  mkdir -p "$dir"
  chown "$RUNTIME_UID:$RUNTIME_UID" "$dir"
  chmod 2770 "$dir"
  log "checkpoint directory $dir owned by $RUNTIME_UID:$RUNTIME_UID, mode 2770 (per-job subdirectories inherit the group)"
}

# --- up / down -----------------------------------------------------------------

check_binaries() {
  local b
  for b in "$@"; do [[ -x $KBIN/$b ]] || die "$KBIN/$b missing: run e2e/cluster/install.sh first"; done
  [[ -x $ETCD_BIN/etcd ]] || die "$ETCD_BIN/etcd missing: run e2e/cluster/install.sh first"
}

cmd_up() {
  local mode=full
  case ${1:-} in
    --control-plane) mode=control-plane ;;
    "") ;;
    -h|--help) usage; exit 0 ;;
    *) die "up: unknown option $1" ;;
  esac
  need_root "cluster.sh up"
  local t0=$SECONDS cur
  cur=$(cat "$STATE/mode" 2>/dev/null || true)
  # A full cluster includes the control plane: `up --control-plane` on a
  # running full cluster keeps it as it is (and checks it) instead of failing.
  if [[ $cur == full && $mode == control-plane ]] && alive kube-apiserver; then
    log "a full cluster is already running from $STATE; it includes the control plane"
    mode=full
  fi
  if [[ -n $cur && $cur != "$mode" ]] && alive kube-apiserver; then
    die "a $cur cluster is already running from $STATE; run '$0 down' first"
  fi
  if [[ $mode == full ]]; then
    check_binaries kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy pause
    local b
    for b in "${CONTAINERD_BINARIES[@]}"; do
      [[ -x $CONTAINERD_BIN/$b ]] || die "$CONTAINERD_BIN/$b missing: run e2e/cluster/install.sh first"
    done
    command -v runc >/dev/null && [[ -x /usr/lib/cni/bridge ]] \
      || die "runc/CNI plugins missing: run e2e/cluster/install.sh first"
  else
    check_binaries kube-apiserver
  fi
  mkdir -p "$STATE" "$LOGS" "$PIDS"
  echo "$mode" >"$STATE/mode"
  gen_pki
  write_kubeconfig "$KUBECONFIG_ADMIN" admin

  start_etcd
  wait_for etcd 30 bash -c "exec 3<>/dev/tcp/127.0.0.1/$STREAMOPS_ETCD_PORT"
  [[ $mode == full ]] && ensure_bridge
  start_apiserver "$mode"
  local tw=$SECONDS
  until apiserver_ready; do
    check_alive etcd kube-apiserver
    ((SECONDS - tw < STREAMOPS_UP_TIMEOUT)) || die "kube-apiserver not ready after ${STREAMOPS_UP_TIMEOUT}s (log: $LOGS/kube-apiserver.log)"
    sleep 1
  done
  log "kube-apiserver ready on $APISERVER_URL"

  if [[ $mode == full ]]; then
    write_kubeconfig "$STATE/controller-manager.kubeconfig" system:kube-controller-manager
    write_kubeconfig "$STATE/scheduler.kubeconfig" system:kube-scheduler
    write_kubeconfig "$STATE/kube-proxy.kubeconfig" system:kube-proxy
    write_kubeconfig "$STATE/kubelet.kubeconfig" "system:node:$STREAMOPS_NODE_NAME"
    start kube-controller-manager "$KBIN/kube-controller-manager" \
      --kubeconfig="$STATE/controller-manager.kubeconfig" \
      --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
      --leader-elect=false --controllers='*,-nodeipam' \
      --bind-address=127.0.0.1 --secure-port=0 --v=1
    # (--kubeconfig of the scheduler is deprecated in favour of its config file)
    cat >"$STATE/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $STATE/scheduler.kubeconfig
leaderElection:
  leaderElect: false
EOF
    start kube-scheduler "$KBIN/kube-scheduler" --config="$STATE/scheduler.yaml" \
      --bind-address=127.0.0.1 --secure-port=0 --v=1

    write_containerd_config
    # PATH: containerd starts the shim it finds there (ours, not Debian's).
    start containerd env PATH="$CONTAINERD_BIN:$PATH" "$CONTAINERD_BIN/containerd" --config "$CTRD_DIR/config.toml"
    wait_for containerd 30 "$CTR" --address "$CTRD_SOCK" version
    import_pause

    prepare_checkpoint_dir
    mkdir -p "$STATE/kubelet"
    # The kubelet makes its root directory a shared mount by bind-mounting
    # it onto itself while it already creates its sockets there: a socket
    # made before that mount and renamed after it fails with EXDEV ("invalid
    # cross-device link") and the kubelet exits (seen once in a make test).
    # Mounted and shared beforehand, the kubelet has nothing to do.
    mountpoint -q "$STATE/kubelet" || mount --bind "$STATE/kubelet" "$STATE/kubelet"
    mount --make-rshared "$STATE/kubelet"
    write_kubelet_config
    start kubelet "$KBIN/kubelet" --config="$STATE/kubelet.yaml" \
      --kubeconfig="$STATE/kubelet.kubeconfig" \
      --hostname-override="$STREAMOPS_NODE_NAME" --node-ip="$STREAMOPS_NODE_IP" \
      --root-dir="$STATE/kubelet" --cert-dir="$STATE/kubelet/pki" --v=1
    start kube-proxy "$KBIN/kube-proxy" \
      --kubeconfig="$STATE/kube-proxy.kubeconfig" --proxy-mode=iptables \
      --hostname-override="$STREAMOPS_NODE_NAME" --cluster-cidr="$CLUSTER_CIDR" \
      --conntrack-max-per-core=0 --metrics-bind-address=127.0.0.1:10249 \
      --healthz-bind-address=127.0.0.1:10256 --v=1

    log "waiting for node $STREAMOPS_NODE_NAME to be Ready"
    tw=$SECONDS
    until [[ $(kc get node "$STREAMOPS_NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]; do
      check_alive etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy
      ((SECONDS - tw < STREAMOPS_UP_TIMEOUT)) || die "node not Ready after ${STREAMOPS_UP_TIMEOUT}s (logs: $LOGS)"
      sleep 1
    done
    # Pods get ServiceAccount tokens only once the default SA exists.
    wait_for "default ServiceAccount" 60 kc get serviceaccount default -n default
    kc get nodes -o wide
  fi
  log "cluster ($mode) up in $((SECONDS - t0)) s"
  echo "KUBECONFIG=$KUBECONFIG_ADMIN"
}

# Every mount below our state dir, deepest first.
our_mounts() {
  awk -v s="$STATE/" '{ m = $2; gsub(/\\040/, " ", m); if (index(m, s) == 1) print m }' /proc/self/mounts | sort -r
}

cmd_down() {
  local purge=0
  case ${1:-} in --purge) purge=1 ;; "") ;; -h|--help) usage; exit 0 ;; *) die "down: unknown option $1" ;; esac
  need_root "cluster.sh down"
  [[ -d $STATE ]] || { log "nothing to do: $STATE does not exist"; return 0; }
  local mode; mode=$(cat "$STATE/mode" 2>/dev/null || true)
  stop kafka-1 kafka-2 kafka-3 kubelet kube-proxy kube-scheduler kube-controller-manager

  # Pod sandboxes and containers: kill tasks, remember their network namespaces.
  local netns=() id ns
  if [[ -S $CTRD_SOCK ]] && [[ -x $CTR ]] && "$CTR" --address "$CTRD_SOCK" version >/dev/null 2>&1; then
    for id in $(ctr_ containers ls -q 2>/dev/null); do
      ns=$(ctr_ containers info "$id" 2>/dev/null | python3 -c '
import json, sys
try:
    spec = json.load(sys.stdin).get("Spec") or {}
    for n in (spec.get("linux") or {}).get("namespaces") or []:
        if n.get("type") == "network" and n.get("path"): print(n["path"])
except Exception: pass' || true)
      [[ -n $ns ]] && echo "$ns" >>"$STATE/netns.list"
      ctr_ tasks kill -s KILL "$id" >/dev/null 2>&1 || true
    done
    sleep 0.5
    for id in $(ctr_ containers ls -q 2>/dev/null); do
      ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true
      ctr_ containers delete "$id" >/dev/null 2>&1 || true
    done
  fi
  stop containerd
  # Leftover shims of our containerd (they outlive it by design).
  local p
  for p in $(pgrep -f "containerd-shim-runc-v2 .*-address $CTRD_SOCK" || true); do
    kill -KILL "$p" 2>/dev/null || true
  done
  stop kube-apiserver
  stop etcd

  # Mounts: kubelet volumes (secret tmpfs), container rootfs, sandbox shm, netns.
  local m
  for m in $(our_mounts); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"; done
  # Pod network namespaces (bind mounts under /run/netns, named in the sandbox specs;
  # the list survives an interrupted down).
  [[ -f $STATE/netns.list ]] && mapfile -t netns < <(sort -u "$STATE/netns.list")
  for ns in ${netns[@]+"${netns[@]}"}; do
    ns=$(realpath -m "$ns")
    if grep -q " $ns nsfs " /proc/self/mounts; then umount "$ns" 2>/dev/null || umount -l "$ns" 2>/dev/null || true; fi
    rm -f "$ns" 2>/dev/null || log "could not remove $ns"
  done
  # Network: bridge, CNI masquerade chains, kube-proxy and kubelet chains.
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE" && log "deleted bridge $BRIDGE"; fi
  if [[ $mode == full ]]; then
    [[ -x $KBIN/kube-proxy ]] && "$KBIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
    clean_iptables
    # Pod logs kubelet writes to fixed host paths.
    rm -rf /var/log/pods/* /var/log/containers/* 2>/dev/null || true
  fi

  rm -rf "$PIDS" "$STATE/netns.list" "$STATE/etcd" "$STATE/kubelet" "$CTRD_DIR/state" "$STATE/cni/ipam" "$STATE/bootstrap" "$STATE/mode"
  if ((purge)); then
    local left; left=$(our_mounts)
    [[ -z $left ]] || die "still mounted under $STATE, not purging: $left"
    rm -rf "$STATE"; log "down; purged $STATE"
    return 0
  fi
  log "down (logs kept in $LOGS)"
}

# Remove rules in the built-in chains that jump to KUBE-*/CNI-* chains, then
# those chains. Assumes no other Kubernetes/CNI runs on this host.
clean_iptables() {
  command -v iptables >/dev/null || return 0
  local table rule chain
  for table in nat filter mangle; do
    iptables -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z]+ .*-j (KUBE-|CNI-)' | while read -r rule; do
      # shellcheck disable=SC2086
      eval "iptables -t $table ${rule/-A/-D}" 2>/dev/null || true
    done || true
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-)/ { print $2 }'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^(KUBE-|CNI-)/ { print $2 }'); do
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
}

cmd_status() {
  local n
  echo "state:  $STATE  (mode: $(cat "$STATE/mode" 2>/dev/null || echo none))"
  echo "logs:   $LOGS/<component>.log"
  for n in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy kafka-1 kafka-2 kafka-3; do
    if alive "$n"; then printf '  %-24s running (pid %s)\n' "$n" "$(pid_of "$n")"
    elif [[ -f $PIDS/$n.pid ]]; then printf '  %-24s DEAD (see %s)\n' "$n" "$LOGS/$n.log"
    fi
  done
  if alive kube-apiserver && apiserver_ready; then
    echo "apiserver: ready at $APISERVER_URL; KUBECONFIG=$KUBECONFIG_ADMIN"
    kc get nodes -o wide 2>/dev/null || true
  else
    echo "apiserver: not running"
  fi
  if [[ -f $STATE/bootstrap ]]; then echo "broker: $(cat "$STATE/bootstrap")"; fi
}

# --- Apache Kafka ----------------------------------------------------------------

KAFKA_STATE=$STATE/kafka
KAFKA_AUTH=$KAFKA_STATE/auth
kafka_port() { echo $((STREAMOPS_BROKER_PORT + 2 * ($1 - 1))); }
kafka_controller_port() { echo $(($(kafka_port "$1") + 1)); }
# Authenticated listeners of broker i: SCRAM over TLS, and TLS client certificates.
kafka_sasl_port() { echo $(($(kafka_port "$1") + 10)); }
kafka_tls_port() { echo $(($(kafka_port "$1") + 20)); }
# The users tenants' clients authenticate as (SCRAM password and client
# certificate each); ACLs are the tests' business: none exist at start.
KAFKA_TENANTS=(tenant-a tenant-b)
kafka_count() { cat "$KAFKA_STATE/brokers" 2>/dev/null || echo 1; }
kafka_bootstrap() { # [PORT_FUNCTION]
  local i n out=() port=${1:-kafka_port}
  n=$(kafka_count)
  for ((i = 1; i <= n; i++)); do out+=("$STREAMOPS_NODE_IP:$("$port" "$i")"); done
  (IFS=,; echo "${out[*]}")
}

# A CA, the brokers' certificate (for $STREAMOPS_NODE_IP and 127.0.0.1), and
# for every tenant user a client certificate (CN=<user>) and a SCRAM
# password, under $KAFKA_AUTH; new on every 'broker up'.
kafka_pki() {
  local d=$KAFKA_AUTH t
  rm -rf "$d"; mkdir -p "$d"; chmod 700 "$d"
  command -v openssl >/dev/null || die "openssl not found (e2e/cluster/install.sh --only packages)"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=streamops-e2e-kafka-ca" \
      -keyout ca.key -out ca.crt
    cert() { # NAME SUBJECT EXTENSIONS
      openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$1.key" -out "$1.csr"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
        -extfile <(printf '%s\n' "$3") -out "$1.crt"
      rm -f "$1.csr"
    }
    cert broker /CN=kafka "subjectAltName=IP:$STREAMOPS_NODE_IP,IP:127.0.0.1,DNS:localhost"
    cat broker.key broker.crt >broker.pem
    for t in "${KAFKA_TENANTS[@]}"; do
      cert "$t" "/CN=$t" "extendedKeyUsage=clientAuth"
      openssl rand -hex 16 >"$t.password"
    done
  ) >>"$LOGS/kafka-pki.log" 2>&1 || die "creating the Kafka test PKI failed (log: $LOGS/kafka-pki.log)"
}

# server.properties of node I in a cluster of N: combined broker and
# controller, static quorum of all N, replication N with min ISR N-1.
kafka_config() { # I N
  local i=$1 n=$2 voters=() k rf isr
  for ((k = 1; k <= n; k++)); do voters+=("$k@127.0.0.1:$(kafka_controller_port "$k")"); done
  rf=$n; isr=$((n > 1 ? n - 1 : 1))
  cat <<EOF
# Written by e2e/cluster/cluster.sh: node $i of $n.
process.roles=broker,controller
node.id=$i
controller.quorum.voters=$(IFS=,; echo "${voters[*]}")
listeners=PLAINTEXT://0.0.0.0:$(kafka_port "$i"),SASL_SSL://0.0.0.0:$(kafka_sasl_port "$i"),SSL://0.0.0.0:$(kafka_tls_port "$i"),CONTROLLER://127.0.0.1:$(kafka_controller_port "$i")
advertised.listeners=PLAINTEXT://$STREAMOPS_NODE_IP:$(kafka_port "$i"),SASL_SSL://$STREAMOPS_NODE_IP:$(kafka_sasl_port "$i"),SSL://$STREAMOPS_NODE_IP:$(kafka_tls_port "$i")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
# PLAINTEXT (tests, the operator's default cluster) is anonymous and a super
# user; the other two listeners authenticate the tenant users, whom only ACLs
# let do anything.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=$KAFKA_AUTH/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$KAFKA_AUTH/ca.crt
listener.name.ssl.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([a-zA-Z0-9.-]+)$/\$1/,DEFAULT
log.dirs=$KAFKA_STATE/node-$i/data
num.partitions=1
default.replication.factor=$rf
min.insync.replicas=$isr
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$isr
group.initial.rebalance.delay.ms=0
EOF
}

kafka_start() { # I
  local i=$1 dir=$KAFKA_STATE/node-$1
  [[ -f $dir/server.properties ]] || die "no broker $i here (broker up first)"
  start "kafka-$i" "$STREAMOPS_JAVA" "-Xmx$STREAMOPS_KAFKA_HEAP" "-Xms$STREAMOPS_KAFKA_HEAP" \
    -XX:+UseG1GC -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=info -Dorg.slf4j.simpleLogger.showDateTime=true \
    -Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients=warn \
    -Dorg.slf4j.simpleLogger.log.org.apache.kafka.common.config=warn \
    -Dorg.slf4j.simpleLogger.log.kafka.log=warn -Dorg.slf4j.simpleLogger.log.org.apache.kafka.storage=warn \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties"
}

# Waits until a Metadata request to BOOTSTRAP lists BROKERS brokers
# (e2e/kafka/ready.py).
kafka_wait() { # BROKERS [BOOTSTRAP]
  local tw=$SECONDS bootstrap=${2:-$(kafka_bootstrap)} i
  until python3 "$E2E/kafka/ready.py" "$bootstrap" --brokers "$1" 2>/dev/null; do
    for ((i = 1; i <= $(kafka_count); i++)); do
      [[ -f $PIDS/kafka-$i.pid ]] && check_alive "kafka-$i"
    done
    if ((SECONDS - tw >= 90)); then
      python3 "$E2E/kafka/ready.py" "$bootstrap" --brokers "$1" || true
      die "Kafka not serving $1 broker(s) after 90s (logs: $LOGS/kafka-*.log)"
    fi
    sleep 0.5
  done
  log "Kafka serving $1 broker(s) after $((SECONDS - tw)) s at $bootstrap"
}

kafka_check_java() {
  local v
  v=$("$STREAMOPS_JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  [[ -n $v ]] || die "no Java ($STREAMOPS_JAVA): install openjdk-17-jre-headless (e2e/cluster/install.sh --only packages)"
  ((v >= 17)) || die "Kafka $STREAMOPS_KAFKA_VERSION needs Java 17 or newer; $STREAMOPS_JAVA is $v (set STREAMOPS_JAVA)"
}

kafka_up() { # N
  local n=$1 i port id
  if alive kafka-1; then
    [[ $(kafka_count) == "$n" ]] || die "a Kafka cluster of $(kafka_count) broker(s) runs already: 'broker down' first"
    kafka_wait "$n"
    return 0
  fi
  for ((i = 1; i <= n; i++)); do
    for port in $(kafka_port "$i") $(kafka_controller_port "$i") $(kafka_sasl_port "$i") $(kafka_tls_port "$i"); do
      if port_open 127.0.0.1 "$port"; then die "port $port is already in use by another process"; fi
    done
  done
  # A fresh cluster on every start: tests expect no topics of an earlier run
  # (the previous brokers' logs stay in $LOGS).
  rm -rf "$KAFKA_STATE"; mkdir -p "$KAFKA_STATE"
  echo "$n" >"$KAFKA_STATE/brokers"
  kafka_pki
  local scram=() t m
  for t in "${KAFKA_TENANTS[@]}"; do
    for m in SCRAM-SHA-512 SCRAM-SHA-256; do
      scram+=(--add-scram "$m=[name=$t,password=$(cat "$KAFKA_AUTH/$t.password")]")
    done
  done
  id=$("$STREAMOPS_JAVA" -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
  [[ $id =~ ^[A-Za-z0-9_-]{22}$ ]] || die "Kafka's StorageTool random-uuid gave no cluster id: $id"
  for ((i = 1; i <= n; i++)); do
    mkdir -p "$KAFKA_STATE/node-$i"
    kafka_config "$i" "$n" >"$KAFKA_STATE/node-$i/server.properties"
    "$STREAMOPS_JAVA" -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format -t "$id" \
      -c "$KAFKA_STATE/node-$i/server.properties" "${scram[@]}" >>"$LOGS/kafka-$i.log" 2>&1 \
      || die "formatting the storage of broker $i failed (log: $LOGS/kafka-$i.log)"
  done
  for ((i = 1; i <= n; i++)); do kafka_start "$i"; done
  kafka_wait "$n"
}

cmd_broker() {
  local action=${1:-}
  shift || true
  case $action in
    up)
      local n=1
      case ${1:-} in --brokers) n=${2:-}; shift 2 ;; "") ;; *) die "broker up: unknown option $1" ;; esac
      [[ $n == 1 || $n == 3 ]] || die "broker up --brokers: 1 or 3"
      need_root "cluster.sh broker up"
      [[ -f $KAFKA_LIBS/kafka_2.13-$STREAMOPS_KAFKA_VERSION.jar ]] \
        || die "Apache Kafka jars missing in $KAFKA_LIBS: run e2e/cluster/install.sh --only kafka"
      kafka_check_java
      mkdir -p "$STATE" "$LOGS" "$PIDS"
      ensure_bridge
      kafka_up "$n"
      local addr; addr=$(kafka_bootstrap)
      echo "$addr" >"$STATE/bootstrap"
      kafka_bootstrap kafka_sasl_port >"$KAFKA_AUTH/bootstrap-sasl-ssl"
      kafka_bootstrap kafka_tls_port >"$KAFKA_AUTH/bootstrap-ssl"
      log "Apache Kafka $STREAMOPS_KAFKA_VERSION up ($n broker(s)); bootstrap $addr (also in $STATE/bootstrap)"
      log "authenticated listeners: SCRAM over TLS at $(cat "$KAFKA_AUTH/bootstrap-sasl-ssl"), client certificates at $(cat "$KAFKA_AUTH/bootstrap-ssl"); CA, users ${KAFKA_TENANTS[*]} (password, certificate, key) in $KAFKA_AUTH"
      echo "STREAMOPS_BOOTSTRAP=$addr"
      echo "STREAMOPS_KAFKA_AUTH=$KAFKA_AUTH"
      ;;
    down)
      stop kafka-1 kafka-2 kafka-3
      rm -f "$STATE/bootstrap"
      # The bridge stays if the node uses it; 'down' removes it.
      if [[ $(cat "$STATE/mode" 2>/dev/null) != full ]] && ! alive kubelet && ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link del "$BRIDGE" || true
      fi
      ;;
    kill|stop|start|restart)
      # One broker, several (`start 2 3`: started together, then waited
      # for, as a quorum must be), or all.
      local i ids=() id
      [[ $# -gt 0 ]] || die "broker $action: which broker (I ..., or all)?"
      if [[ $1 == all ]]; then
        for ((id = 1; id <= $(kafka_count); id++)); do ids+=("$id"); done
      else
        for i in "$@"; do
          [[ -f $KAFKA_STATE/node-$i/server.properties ]] || die "broker $action: no broker '$i' in this cluster"
          ids+=("$i")
        done
      fi
      case $action in
        kill)
          for id in "${ids[@]}"; do
            local p
            p=$(pid_of "kafka-$id") || die "broker $id is not running"
            kill -KILL "$p"; rm -f "$PIDS/kafka-$id.pid"; log "killed broker $id (pid $p)"
          done ;;
        stop) for id in "${ids[@]}"; do stop "kafka-$id"; done ;;
        start|restart)
          for id in "${ids[@]}"; do
            [[ $action == restart ]] && stop "kafka-$id"
            kafka_start "$id"
          done
          # Each started broker itself must answer (the others still list a
          # dead one for a while after it died).
          for id in "${ids[@]}"; do
            kafka_wait "$(kafka_count)" "$STREAMOPS_NODE_IP:$(kafka_port "$id")"
          done ;;
      esac
      ;;
    *) die "usage: $0 broker up [--brokers 1|3] | down | kill|stop|start|restart I...|all" ;;
  esac
}

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) cmd_status ;;
  broker) shift; cmd_broker "$@" ;;
  kubectl) shift; kc "$@" ;;
  env)
    echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
    if [[ -f $STATE/bootstrap ]]; then echo "export STREAMOPS_BOOTSTRAP=$(cat "$STATE/bootstrap")"; fi
    if [[ -f $KAFKA_AUTH/bootstrap-ssl ]]; then echo "export STREAMOPS_KAFKA_AUTH=$KAFKA_AUTH"; fi
    ;;
  -h|--help|help) usage ;;
  "") usage >&2; exit 2 ;;
  *) usage >&2; die "unknown command: $1" ;;
esac
