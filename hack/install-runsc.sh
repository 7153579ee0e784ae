#!/usr/bin/env bash
# Install gVisor's runsc (the sandbox service's isolation) if it is missing. Idempotent; used by CI.
#
#   hack/install-runsc.sh          # apt (Debian/Ubuntu package "runsc"), else the official gVisor release
#
# Afterwards: `runsc --version`; the service runs it rootless with --network=none --platform=ptrace.
set -euo pipefail

if command -v runsc >/dev/null 2>&1; then
  echo "runsc already installed: $(runsc --version | head -1)"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

if command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get update -qq
  if $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc; then
    echo "installed runsc from apt: $(runsc --version | head -1)"
    exit 0
  fi
  echo "apt has no runsc package here; falling back to the gVisor release" >&2
fi

# Official release binaries, checked against their published SHA-512 (https://gvisor.dev/docs/user_guide/install/).
ARCH="$(uname -m)"
URL="https://storage.googleapis.com/gvisor/releases/release/latest/${ARCH}"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
( cd "$TMP"
  curl -fsSLO "${URL}/runsc" -fsSLO "${URL}/runsc.sha512"
  sha512sum -c runsc.sha512
  chmod a+rx runsc
  $SUDO mv runsc /usr/local/bin/runsc )
echo "installed runsc from ${URL}: $(runsc --version | head -1)"
