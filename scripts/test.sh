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
# the PostgreSQL storage test starts a throwaway server (tests/pg_server.py) from the server
# programs of Debian's postgresql package (initdb, pg_ctl in /usr/lib/postgresql/*/bin)
pg_server_found() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then return 0; fi
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then return 0; fi
  done
  return 1
}
if ! pg_server_found && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
  echo "installing Debian's postgresql (server programs, ~60 MB) for the tests ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  { $sudo apt-get install -y -qq --no-install-recommends postgresql \
      || { $sudo apt-get update -qq \
           && $sudo apt-get install -y -qq --no-install-recommends postgresql; }; } \
      >/dev/null 2>&1 || true
  # judged by the programs, not apt's status: starting the packaged cluster may fail in a
  # container without init, which the tests do not need
  pg_server_found \
    || echo "could not install postgresql: its tests are skipped (they fail under CI)" >&2
fi
# the browser test drives a headless Chromium (tests/browser.py) with Debian's chromedriver
if [ ! -x /usr/bin/chromedriver ] && ! command -v chromedriver >/dev/null 2>&1 \
    && command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo -n"; fi
  echo "installing Debian's chromium and chromium-driver (~300 MB) for the tests ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  { $sudo apt-get install -y -qq chromium chromium-driver \
      || { $sudo apt-get update -qq \
           && $sudo apt-get install -y -qq chromium chromium-driver; }; } \
      >/dev/null 2>&1 \
    || echo "could not install chromium: the browser test is skipped (it fails under CI)" >&2
fi
exec .venv/bin/python -m pytest "$@"
