#!/usr/bin/env bash
# Prepares the local node for StreamJob pods: the hostPath behind `file://`
# checkpoint storage (operator/src/job/resources.rs, HOST_CHECKPOINT_DIR) must
# be writable by the runtime's uid 65532. Kubernetes' DirectoryOrCreate would
# create it root-owned 0755, where the non-root runtime cannot write its
# checkpoints. Idempotent; needs root. Only for the local single-node cluster
# (on kind the directory lives inside the node container).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=e2e/cluster/lib.sh
source "$HERE/../cluster/lib.sh"

DIR=${STREAMOPS_HOST_CHECKPOINT_DIR:-/var/lib/streamops/checkpoints}
RUNTIME_UID=65532
need_root "preparing $DIR"
mkdir -p "$DIR"
chown "$RUNTIME_UID:$RUNTIME_UID" "$DIR"
chmod 0750 "$DIR"
log "checkpoint directory $DIR owned by $RUNTIME_UID:$RUNTIME_UID (the runtime's uid)"
