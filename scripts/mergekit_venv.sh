#!/usr/bin/env bash
# The mergekit 0.1.5 side venv of the tensor-by-tensor parity tests (mergekit's pins clash with ours, so it lives
# apart). It reuses this environment's torch (--system-site-packages), so install torch first.
#   usage: scripts/mergekit_venv.sh [DIR]     DIR defaults to ${TMPDIR:-/tmp}/evolve-ci-mergekit, where the tests
#   look when EVOLVE_MERGEKIT_PYTHON is unset; another DIR needs EVOLVE_MERGEKIT_PYTHON=DIR/bin/python.
# Needs a package index once (pip install mergekit==0.1.5); nothing is downloaded when the tests run.
set -euo pipefail
dir="${1:-${TMPDIR:-/tmp}/evolve-ci-mergekit}"
python="${PYTHON:-python}"
if ! "$dir/bin/python" -c "import mergekit" >/dev/null 2>&1; then
  "$python" -c "import torch" 2>/dev/null || { echo "error: torch is not installed in $("$python" -c 'import sys; print(sys.prefix)'); install it first (README)" >&2; exit 2; }
  "$python" -m venv --system-site-packages "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check mergekit==0.1.5
fi
echo "mergekit $("$dir/bin/python" -c 'import importlib.metadata as m; print(m.version("mergekit"))') in $dir"
echo "export EVOLVE_MERGEKIT_PYTHON=$dir/bin/python EVOLVE_MERGEKIT_YAML=$dir/bin/mergekit-yaml"
