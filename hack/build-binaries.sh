#!/usr/bin/env bash
# Build the real binaries of the test bed (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, helm, minio) from the Go module proxy with the machine's Go, and
# cache them outside the repo keyed by version. A second run is a cache hit: it needs no Go and
# costs well under a second.
#
#   hack/build-binaries.sh [component ...]    # components: etcd kube kwok helm minio (default: all)
#   CODEGROUND_BIN_CACHE=~/.cache/codeground/bin (default)
#
# Called by codeground.operator.testbed.find_binaries() (pytest fixtures, `codeground dev cluster up`)
# and by CI. Prints the directory that holds the binaries on its last line; progress goes to stderr.
# The kwok stage YAMLs (from kwok's module zip) are copied next to the binaries as kwok-stages/.
# Cold build on 2 cores: see docs/testbed.md for measured times.
set -euo pipefail

# v1.35.4: the newest v1.35 patch the module proxy serves here (v1.35.7 answers 403 "not available").
K8S_VERSION=${K8S_VERSION:-1.35.4}
ETCD_VERSION=${ETCD_VERSION:-3.6.14}
KWOK_VERSION=${KWOK_VERSION:-0.8.0}
HELM_VERSION=${HELM_VERSION:-3.21.4}
# MinIO no longer tags releases on the module proxy: pin the pseudo-version of master that
# `@latest` resolved to (2026-02-12, commit 7aac2a2c5b7c) so the cache key means something.
MINIO_VERSION=${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}

CACHE=${CODEGROUND_BIN_CACHE:-$HOME/.cache/codeground/bin}
BIN="$CACHE/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION-minio-${MINIO_VERSION##*-}"
WORK="$CACHE/.work"
mkdir -p "$BIN" "$WORK"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { echo "[build-binaries] $*" >&2; }
have() { [ -x "$BIN/$1" ]; }
built=0
need_go() {
  built=1
  command -v go >/dev/null || { log "Go is not installed (need >= 1.26 for kwok v$KWOK_VERSION and helm v$HELM_VERSION); install it or set CODEGROUND_BIN_DIR to prebuilt binaries"; exit 3; }
}

build_kube() {
  if have kube-apiserver && have kube-controller-manager && have kube-scheduler && have kubectl; then return; fi
  need_go
  local S="0.${K8S_VERSION#1.}" minor; minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  local d="$WORK/kube-$K8S_VERSION"; rm -rf "$d"; mkdir -p "$d"; cd "$d"
  log "kubernetes v$K8S_VERSION (staging v$S): resolving modules"
  go mod init local/kubebin >/dev/null 2>&1
  go mod edit -go=1.25.0 -godebug=default=go1.25
  # k8s.io/kubernetes requires its staging modules at v0.0.0 with replace lines to ./staging, which a
  # dependency's go.mod cannot use: pin each to the published v0.Y.Z (kubernetes/kubernetes#79384).
  for m in api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider \
    cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api \
    cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms \
    kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics \
    mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller; do
    go mod edit -replace=k8s.io/$m=k8s.io/$m@v$S
  done
  # Require the module itself, then name the commands as tools: `go get -tool pkg@v` would also ask
  # the proxy for k8s.io/kubernetes/cmd/... as module paths, which it answers with 403, a hard error.
  go get k8s.io/kubernetes@v$K8S_VERSION
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    go mod edit -tool=k8s.io/kubernetes/cmd/$c
  done
  go mod tidy
  # Without these the servers report v0.0.0-master and helm rejects charts' kubeVersion.
  local LD="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    LD="$LD -X $p.gitVersion=v$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    have "$c" && continue
    log "building $c"
    go build -trimpath -ldflags "$LD" -o "$BIN/$c.tmp" k8s.io/kubernetes/cmd/$c && mv "$BIN/$c.tmp" "$BIN/$c"
  done
}

build_etcd() {
  have etcd && return
  need_go
  local d="$WORK/etcd-$ETCD_VERSION"; rm -rf "$d"; mkdir -p "$d"; cd "$d"
  log "etcd v$ETCD_VERSION"
  go mod init local/etcdbin >/dev/null 2>&1
  # etcd's server/go.mod has replace lines, so `go install` refuses it: build its main in our module.
  cat > main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go get go.etcd.io/etcd/server/v3@v$ETCD_VERSION
  go mod tidy
  go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" . && mv "$BIN/etcd.tmp" "$BIN/etcd"
}

goinstall() { # name pkg@version
  have "$1" && return
  need_go
  log "$2"
  GOBIN="$WORK/gobin-$1" go install -trimpath -ldflags "-s -w" "$2"
  mv "$WORK/gobin-$1/$1" "$BIN/$1"
}

kwok_stages() { # kwok's Stage YAMLs ship in its module zip, not in the binary
  [ -d "$BIN/kwok-stages" ] && return
  need_go
  local dir
  dir=$(cd "$WORK" && go mod download -json "sigs.k8s.io/kwok@v$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  rm -rf "$BIN/kwok-stages.tmp"
  cp -r "$dir/kustomize/stage" "$BIN/kwok-stages.tmp"
  chmod -R u+w "$BIN/kwok-stages.tmp"
  mv "$BIN/kwok-stages.tmp" "$BIN/kwok-stages"
}

components=("$@")
[ ${#components[@]} -eq 0 ] && components=(etcd kube kwok helm minio)
# One build at a time per cache (parallel pytest sessions, CI jobs sharing a cache).
exec 9>"$CACHE/.lock"
flock 9
total=$(date +%s)
for c in "${components[@]}"; do
  start=$(date +%s)
  case "$c" in
    etcd) build_etcd ;;
    kube) build_kube ;;
    kwok) goinstall kwok sigs.k8s.io/kwok/cmd/kwok@v$KWOK_VERSION; kwok_stages ;;
    helm) goinstall helm helm.sh/helm/v3/cmd/helm@v$HELM_VERSION ;;
    minio) goinstall minio github.com/minio/minio@$MINIO_VERSION ;;
    *) echo "unknown component $c (expected etcd kube kwok helm minio)" >&2; exit 2 ;;
  esac
  [ "$built" = 1 ] && log "$c ready in $(( $(date +%s) - start ))s"
done
if [ "$built" = 1 ]; then log "all requested components ready in $(( $(date +%s) - total ))s"; fi
echo "$BIN"
