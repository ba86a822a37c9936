#!/usr/bin/env bash
# Create .venv and install slimtune with its dependencies (idempotent, skips when up to date).
# Needs only python3 (>= 3.11). Used by scripts/run.sh and scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "slimtune needs Python >= 3.11 (found $("$PY" --version 2>&1))" >&2; exit 2; }
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "installing python3-venv with apt-get" >&2
  (apt-get update -qq && apt-get install -y -qq python3-venv) >&2
fi
stamp=.venv/.slimtune-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
echo "installing slimtune and its dependencies into .venv (first time: ~2-3 minutes) ..." >&2
log=.venv/install.log
# constraints.txt pins the versions this release was tested with (torch from PyPI: the CUDA
# build, which also runs on CPU-only machines and matches torchvision's compiled ops)
if ! .venv/bin/python -m pip install --disable-pip-version-check -q -c constraints.txt \
    -e ".[test]" >"$log" 2>&1; then
  grep -v "is ignored: it is neither a file nor a directory" "$log" | tail -30 >&2
  echo "install failed; full log in $log" >&2
  exit 1
fi
echo "$want" >"$stamp"
