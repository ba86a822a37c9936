#!/usr/bin/env bash
# Set up (first time) and run a slimtune command; with no arguments, the default search.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ $# -eq 0 ]; then set -- search; fi
exec .venv/bin/slimtune "$@"
