#!/usr/bin/env bash
# Create the separate benchmark environment with Flower, for bench/secagg.py's comparison.
# Kept apart from the project venv so Flower's pins never touch fedsilo's dependencies.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3.11}"
venv="$here/.venv-flower"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "flwr==1.32.1"
"$venv/bin/python" -c "import flwr; print('flwr', flwr.__version__, 'in', '$venv')"
