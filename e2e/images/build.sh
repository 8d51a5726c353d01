#!/usr/bin/env bash
# Builds the product images as docker-archive tarballs without Docker, and
# optionally imports them into the local e2e node's containerd.
# Keep in sync with Dockerfile.operator / Dockerfile.runtime (see e2e/README.md).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=../cluster/lib.sh
source "$HERE/../cluster/lib.sh"

OUT=${STREAMOPS_IMAGES_OUT:-$REPO/target/e2e-images}
TAG=${STREAMOPS_IMAGE_TAG:-dev}
PROFILE=release
BIN_DIR=""
IMPORT=0
IMAGES=()

usage() {
  cat <<EOF
Usage: $0 [options] [operator|runtime|pause|busybox]...

Builds one-layer images (docker-archive tarballs) from the project's binaries:
  operator  localhost/streamops-operator:$TAG  (/usr/local/bin/streamops-operator)
  runtime   localhost/streamops-runtime:$TAG   (/usr/local/bin/streamops-runtime)
  pause     localhost/pause:local              (sandbox image of the local node)
  busybox   localhost/e2e-busybox:$TAG         (throwaway test image from Debian's
            busybox-static; never a product image; only when asked for)
Default: operator runtime pause.

Product images: binary + its ldd libraries and dynamic loader, /etc/passwd and
/etc/group with nonroot (65532), the host's CA bundle; user 65532:65532;
entrypoint the binary.

Options:
  --bin-dir DIR   take the binaries from DIR instead of running cargo build
  --debug         dev-profile build (target/debug) with the test stages' package
                  sets, so that it reuses what make test already built
  --import        import the tarballs into the local node's containerd
                  (ctr -n k8s.io images import; the node must be up)
  --out DIR       where the tarballs go (default $OUT)
  -h, --help

Debug-profile and --bin-dir binaries are imaged without their DWARF sections
(objcopy --strip-debug of a copy) unless STREAMOPS_IMAGE_KEEP_DEBUG=1.

Environment: STREAMOPS_IMAGE_TAG (default dev), STREAMOPS_IMAGES_OUT, STREAMOPS_STATE,
  CARGO_LOCKED=1 (cargo build --locked, for CI), STREAMOPS_NICE (default 10).
EOF
}

while [[ $# -gt 0 ]]; do
  case $1 in
    -h|--help) usage; exit 0 ;;
    --bin-dir) BIN_DIR=${2:?--bin-dir needs a directory}; shift 2 ;;
    --debug) PROFILE=debug; shift ;;
    --import) IMPORT=1; shift ;;
    --out) OUT=${2:?--out needs a directory}; shift 2 ;;
    operator|runtime|pause|busybox) IMAGES+=("$1"); shift ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[[ ${#IMAGES[@]} -gt 0 ]] || IMAGES=(operator runtime pause)
has() { local i; for i in "${IMAGES[@]}"; do [[ $i == "$1" ]] && return 0; done; return 1; }
command -v python3 >/dev/null || die "python3 is required"
mkdir -p "$OUT"

product_bin() { # NAME -> path of the binary, building it if needed
  local name=$1
  if [[ -n $BIN_DIR ]]; then
    [[ -x $BIN_DIR/$name ]] || die "$BIN_DIR/$name not found"
    echo "$BIN_DIR/$name"; return
  fi
  local dir=$REPO/target/$PROFILE
  [[ -n ${CARGO_TARGET_DIR:-} ]] && dir=$CARGO_TARGET_DIR/$PROFILE
  echo "$dir/$name"
}

# Which cargo invocation builds each binary. Cargo resolves features per
# package selection: a selection that differs from the test stages' (for
# example `-p streamops-operator`, or `--workspace --bins`, which leaves out
# dev-dependencies) unifies features differently and rebuilds shared
# dependencies, RocksDB's C++ among them (10-15 min), next to the copy the
# tests already built. So:
#   debug:   the test stages' selection: e2e/test.sh runs every cargo command
#            with --workspace; `cargo test --workspace --no-run` builds every
#            test target and, because both packages have integration tests,
#            the plain operator and runtime binaries too (verified with
#            `cargo test --unit-graph`: the same units as the stages').
#   release: one package per invocation, as the Dockerfiles and
#            runtime/BENCHMARKS.md do (`cargo build --release -p <package>`).
# KEEP IN SYNC with the cargo commands of e2e/test.sh.
cargo_build() {
  [[ -n $BIN_DIR ]] && return 0
  has operator || has runtime || return 0
  command -v cargo >/dev/null || die "cargo not found"
  local -a locked=()
  # --locked when CARGO_LOCKED=1 (CI); a dev build may update Cargo.lock as usual.
  [[ ${CARGO_LOCKED:-0} == 1 ]] && locked=(--locked)
  local -a cmds=()
  if [[ $PROFILE == release ]]; then
    has operator && cmds+=("build --release -p streamops-operator")
    has runtime && cmds+=("build --release -p streamops-runtime")
  else
    cmds+=("test --no-run --workspace")
  fi
  local cmd
  for cmd in "${cmds[@]}"; do
    log "cargo $cmd"
    # shellcheck disable=SC2086 # $cmd is a fixed word list from above
    (cd "$REPO" && nice -n "${STREAMOPS_NICE:-10}" cargo $cmd "${locked[@]}") \
      || die "cargo $cmd failed"
  done
}

product_image() { # NAME
  local name=$1 bin
  bin=$(product_bin "$name")
  [[ -x $bin ]] || die "$bin missing after build"
  if [[ $PROFILE == debug || -n $BIN_DIR ]] && [[ ${STREAMOPS_IMAGE_KEEP_DEBUG:-0} != 1 ]]; then
    # A dev-profile binary is ~95% DWARF (600 MB for the runtime): image a copy
    # without it (same code and symbols; 25-60 MB), so that packing and
    # importing take seconds. Release images keep their line tables.
    command -v objcopy >/dev/null || die "objcopy (binutils) is required, or set STREAMOPS_IMAGE_KEEP_DEBUG=1"
    mkdir -p "$OUT/bin"
    objcopy --strip-debug "$bin" "$OUT/bin/$name.tmp" && mv "$OUT/bin/$name.tmp" "$OUT/bin/$name" \
      || die "objcopy --strip-debug $bin failed"
    bin=$OUT/bin/$name
  fi
  python3 "$HERE/mkimage.py" --tag "localhost/$name:$TAG" --out "$OUT/$name.tar" \
    --file "$bin:/usr/local/bin/$name" --with-libs \
    --entrypoint "/usr/local/bin/$name" --user 65532:65532 --nonroot-files --ca-certs \
    --label "org.opencontainers.image.source=https://github.com/streamops/streamops"
}

cargo_build
has operator && product_image streamops-operator
has runtime && product_image streamops-runtime
if has pause; then
  [[ -x $KBIN/pause ]] || die "$KBIN/pause missing: run e2e/cluster/install.sh --only kubernetes"
  python3 "$HERE/mkimage.py" --tag localhost/pause:local --out "$OUT/pause.tar" \
    --file "$KBIN/pause:/pause" --entrypoint /pause --user 65535:65535
fi
if has busybox; then
  if [[ ! -x /bin/busybox ]]; then
    need_root "installing busybox-static"
    apt-get install -y -qq busybox-static >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq busybox-static; } \
      || die "could not install busybox-static"
  fi
  ldd /bin/busybox >/dev/null 2>&1 && die "/bin/busybox is dynamic; install busybox-static"
  python3 "$HERE/mkimage.py" --tag "localhost/e2e-busybox:$TAG" --out "$OUT/e2e-busybox.tar" \
    --file /bin/busybox:/bin/busybox --entrypoint /bin/busybox --user 65532:65532 --nonroot-files
fi

if ((IMPORT)); then
  need_root "importing images into containerd"
  sock=$STATE/containerd/containerd.sock
  "$CTR" --address "$sock" version >/dev/null 2>&1 \
    || die "the local node's containerd is not running ($sock): run e2e/cluster/cluster.sh up"
  for i in "${IMAGES[@]}"; do
    case $i in operator) f=streamops-operator ;; runtime) f=streamops-runtime ;; busybox) f=e2e-busybox ;; *) f=$i ;; esac
    "$CTR" --address "$sock" -n k8s.io images import "$OUT/$f.tar" >/dev/null 2> >(grep -v "DEPRECATION: The support for cgroup v1" >&2) || die "import of $OUT/$f.tar failed"
    log "imported $OUT/$f.tar"
  done
fi
log "images in $OUT"
