#!/usr/bin/env bash
# Set up deepmine on a fresh machine: system data package, virtual environment, CPU torch,
# the package with its dev tools, and data/ verified against data.dvc. Idempotent: re-running
# it only does what is missing.
#   scripts/setup.sh                 what training needs (`make run`)
#   scripts/setup.sh --test-tools    and the system packages the tests drive (`make test`)
set -euo pipefail
cd "$(dirname "$0")/.."

TEST_TOOLS=false
[ "${1:-}" = "--test-tools" ] && TEST_TOOLS=true

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=2.13.0

# 1. System packages (Debian), one apt-get update for whatever is missing:
#    - dataset-fashion-mnist: the offline public source of Fashion-MNIST, used when no DVC
#      remote exists;
#    - with --test-tools, chromium: the browser tests/test_ui_browser.py drives the MLflow UI
#      with (Playwright uses it through executable_path: no browser is ever downloaded);
#    - with --test-tools, postgresql: initdb/pg_ctl for the throwaway cluster of
#      tests/test_postgres_server.py (a team server on PostgreSQL); the service the package
#      may start is not used;
#    - with --test-tools, slurmctld slurmd slurm-client slurmdbd munge mariadb-server: the real
#      two-node SLURM cluster, with accounting, of tests/test_slurm.py (its daemons are started
#      by the tests in their own network namespace; the services the packages may start are
#      not used); installed without recommends (nothing of them is needed).
PACKAGES="dataset-fashion-mnist"
[ "$TEST_TOOLS" = true ] && PACKAGES="$PACKAGES chromium postgresql"
LEAN_PACKAGES=""
[ "$TEST_TOOLS" = true ] && LEAN_PACKAGES="slurmctld slurmd slurm-client slurmdbd munge mariadb-server"
missing() {
  for package in "$@"; do
    dpkg -s "$package" 2>/dev/null | grep -q '^Status: install ok installed' || printf ' %s' "$package"
  done
}
# shellcheck disable=SC2086  # one word per package
MISSING=$(missing $PACKAGES)
# shellcheck disable=SC2086
MISSING_LEAN=$(missing $LEAN_PACKAGES)
if [ -n "$MISSING$MISSING_LEAN" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "==> installing$MISSING$MISSING_LEAN (apt)"
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086  # one word per package
  [ -z "$MISSING" ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $MISSING >/dev/null
  # shellcheck disable=SC2086
  [ -z "$MISSING_LEAN" ] || DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
    --no-install-recommends $MISSING_LEAN >/dev/null
fi

# 2. Virtual environment.
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

# 3. torch: pinned CPU build when missing. Installed before the package so that pip never
#    resolves torch itself (that would pull several GB of CUDA wheels on a CPU machine).
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "==> installing torch==$TORCH_VERSION"
  "$PY" -m pip install -q "torch==$TORCH_VERSION"
fi

# 4. deepmine itself (editable: conf/ and experiments/ live in the checkout) and its dev tools;
#    the tests also need the `ray` extra (launcher=ray), which training alone never pulls.
EXTRAS="dev"
[ "$TEST_TOOLS" = true ] && EXTRAS="dev,ray"
echo "==> installing deepmine[$EXTRAS]"
"$PY" -m pip install -q -e ".[$EXTRAS]"

# Bytecode of deepmine's own source, written even where PYTHONDONTWRITEBYTECODE is set (as on
# this project's machines): without it every command compiles deepmine again, about 0.7 s of
# CPU per process (measured), paid hundreds of times by the test suite. Python checks each
# .pyc against its source, so an edited module is simply compiled in memory until the next run.
"$PY" -m compileall -q src >/dev/null

# 5. data/ as pinned by data.dvc (DVC remote if configured, else the public source; verified).
echo "==> deepmine data pull"
"$VENV/bin/deepmine" data pull
