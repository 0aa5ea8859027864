#!/usr/bin/env bash
# One entry point for a fresh machine (Linux or macOS, Python >= 3.10):
#
#   ./run.sh serve [ARGS]   create .venv, install, and serve the demo model with the embedded
#                           server (API + workers in one process, no Redis): `debm serve ARGS`
#   ./run.sh test  [ARGS]   create .venv, install, start Redis on 127.0.0.1:6379 if nothing
#                           answers there, install chromium + chromium-driver if missing (root,
#                           apt-get), and run the test suite: .venv/bin/python -m pytest -q
#   ./run.sh setup          only create/update .venv
#
# torch is installed first as the pinned CPU build (TORCH_INDEX_URL, default PyTorch's CPU
# index): a plain `pip install torch` on Linux would pull the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
TORCH_VERSION=2.13.0
TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
VENV=.venv

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "run.sh: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
  fi
  if ! "$VENV/bin/python" -c "import sys, torch; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
    echo "run.sh: installing torch $TORCH_VERSION (CPU build)" >&2
    # pip's configured indexes / find-links first (a mirror may hold the CPU wheel; PyPI does
    # not, so this fails fast there), then PyTorch's CPU index.
    if [ "$(uname -s)" = Darwin ]; then  # macOS wheels on PyPI are CPU builds already
      "$VENV/bin/pip" install "torch==$TORCH_VERSION"
    else  # never a bare "torch==X" here: on Linux that resolves to the CUDA build
      "$VENV/bin/pip" install "torch==$TORCH_VERSION+cpu" 2>/dev/null \
        || "$VENV/bin/pip" install "torch==$TORCH_VERSION+cpu" --extra-index-url "$TORCH_INDEX_URL"
    fi
  fi
  # torch==2.13.0 in the [torch] extra is already satisfied by the CPU build above.
  "$VENV/bin/pip" install --quiet -e '.[dev]'
}

redis_up() {
  "$VENV/bin/python" - <<'PY'
import redis, sys
try:
    redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
except redis.exceptions.ConnectionError:
    sys.exit(1)
PY
}

ensure_redis() {
  if redis_up; then return; fi
  command -v redis-server >/dev/null || { echo "run.sh: the tests need redis-server (apt-get install redis-server / brew install redis)" >&2; exit 1; }
  echo "run.sh: starting redis-server on 127.0.0.1:6379 (no persistence)" >&2
  redis-server --daemonize yes --port 6379 --bind 127.0.0.1 --save '' --appendonly no
  for _ in $(seq 50); do redis_up && return; sleep 0.1; done
  echo "run.sh: redis-server did not come up" >&2; exit 1
}

# The browser test (tests/e2e/test_browser.py) drives Debian's chromium through its
# chromedriver; install both when either is missing (as root, via apt-get), else say how.
ensure_browser() {
  if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then return; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "run.sh: installing chromium and chromium-driver (apt-get) for the browser test" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver >/dev/null
  else
    echo "run.sh: the browser test needs chromium and chromium-driver (apt-get install chromium chromium-driver); it fails without them" >&2
  fi
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
  setup) setup ;;
  serve) setup; exec "$VENV/bin/debm" serve "$@" ;;
  test)  setup; ensure_redis; ensure_browser; exec "$VENV/bin/python" -m pytest -q "$@" ;;
  *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
