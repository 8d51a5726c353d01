#!/usr/bin/env bash
# Builds argocd-lua (main.go: streamops' Argo CD health checks and actions
# evaluated by Argo CD's own Go code) from the Go module proxy into
#   $STREAMOPS_CACHE/argocd-lua-$STREAMOPS_ARGOCD_VERSION/bin/argocd-lua
# Cache hit (nothing is done): the binary is there and reports the pinned
# Argo CD version and the hash of this directory's sources (main.go, go.mod,
# go.sum). Go's module and build caches live under $STREAMOPS_CACHE/go, as for
# helm in e2e/cluster/install.sh. Argo CD v3.6's go.mod says go 1.27.0, so the
# build runs with GOTOOLCHAIN=go1.27.3, which the go command (1.21 or newer)
# fetches from the proxy itself.
#
# Environment: STREAMOPS_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/streamops),
# STREAMOPS_NICE (default 10), STREAMOPS_JOBS (go build -p, default nproc),
# STREAMOPS_GO_TIMEOUT (seconds, default 3600: about twice
# helm's build, which install.sh gives 1800).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

: "${STREAMOPS_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/streamops}"
# Must match go.mod's github.com/argoproj/argo-cd/v3 (checked after the build).
: "${STREAMOPS_ARGOCD_VERSION:=v3.6.2}"
GO_TOOLCHAIN=go1.27.3
NICE=${STREAMOPS_NICE:-10}
JOBS=${STREAMOPS_JOBS:-$(nproc)}
DIR=$STREAMOPS_CACHE/argocd-lua-$STREAMOPS_ARGOCD_VERSION
BIN=$DIR/bin/argocd-lua
GO_CACHE=$STREAMOPS_CACHE/go

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

hash=$(cd "$here" && cat main.go go.mod go.sum | sha256sum | cut -c1-16)
want="argo-cd/v3 $STREAMOPS_ARGOCD_VERSION .* source $hash\$"
# The output is read whole (grep -q in a pipe can SIGPIPE the writer).
if [[ -x $BIN ]] && grep -- "$want" >/dev/null <<<"$("$BIN" version 2>/dev/null)"; then
  log "argocd-lua (Argo CD $STREAMOPS_ARGOCD_VERSION, source $hash) cached at $BIN"
  exit 0
fi

# A go command that can switch toolchains (1.21+): the one on PATH, else
# /usr/local/go's (Debian's golang-go may be older).
go_ok() { "$1" env GOTOOLCHAIN >/dev/null 2>&1; }
GO=$(command -v go || true)
if [[ -z $GO ]] || ! go_ok "$GO"; then GO=/usr/local/go/bin/go; fi
go_ok "$GO" || die "no go command 1.21 or newer (on PATH or /usr/local/go/bin): argocd-lua is built with it"

tmp=$DIR/bin.tmp logf=$STREAMOPS_CACHE/argocd-lua-$STREAMOPS_ARGOCD_VERSION.build.log t0=$SECONDS
log "building argocd-lua (Argo CD $STREAMOPS_ARGOCD_VERSION, source $hash) with $GO_TOOLCHAIN via $GO, nice $NICE, -p $JOBS; modules from $(GOFLAGS= "$GO" env GOPROXY); log: $logf"
rm -rf "$tmp"; mkdir -p "$tmp" "$GO_CACHE"
if ! (cd "$here" && GOTOOLCHAIN=$GO_TOOLCHAIN GOMODCACHE=$GO_CACHE/mod GOCACHE=$GO_CACHE/build \
    GOFLAGS="-p=$JOBS -mod=readonly -buildvcs=false" CGO_ENABLED=0 \
    timeout "${STREAMOPS_GO_TIMEOUT:-3600}" nice -n "$NICE" \
    "$GO" build -trimpath -ldflags "-s -w -X main.sourceHash=$hash" -o "$tmp/argocd-lua" . ) >"$logf" 2>&1; then
  tail -15 "$logf" >&2
  die "could not build argocd-lua (see $logf)"
fi
grep -- "$want" >/dev/null <<<"$("$tmp/argocd-lua" version)" ||
  die "the argocd-lua just built reports '$("$tmp/argocd-lua" version)', not Argo CD $STREAMOPS_ARGOCD_VERSION with source $hash (go.mod and STREAMOPS_ARGOCD_VERSION disagree?)"
rm -rf "$DIR/bin"; mv "$tmp" "$DIR/bin"
log "$("$BIN" version) in $((SECONDS - t0)) s -> $BIN"
