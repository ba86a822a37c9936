#!/usr/bin/env bash
# Set up (first time) and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the Fashion-MNIST test reads Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
    && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
  echo "installing Debian's dataset-fashion-mnist (30 MB) for the tests ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  { $sudo apt-get install -y -qq dataset-fashion-mnist \
      || { $sudo apt-get update -qq && $sudo apt-get install -y -qq dataset-fashion-mnist; }; } \
      >/dev/null 2>&1 \
    || echo "could not install dataset-fashion-mnist: its test is skipped (it fails under CI)" >&2
fi
exec .venv/bin/python -m pytest "$@"
