#!/usr/bin/env bash
# Create the peers' benchmark environments, one virtualenv per peer, kept apart from the
# project venv so their pins never touch fedsilo's dependencies:
#   bench/peers/.venv-flower   flwr 1.32.1 + torch 2.13.0 (CPU) + scikit-learn + xgboost
#   bench/peers/.venv-nvflare  nvflare (latest from the registry) + xgboost
# torch is installed first with the project's exact pin (see scripts/setup-venv: this machine
# keeps the CPU build of 2.13.0 on disk; a looser requirement would pull a CUDA build).
# A stamp newer than this script makes a second run a no-op for that venv.
# Usage: bash bench/peers/setup.sh [flower|nvflare]...   (default: both)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3.11}"
TORCH_PIN="torch==2.13.0"
XGBOOST_PIN="xgboost==3.2.0" # the project venv's version: both sides grow the same trees

fresh() { # venv stamp -> 0 when the venv is up to date
    [[ -f $1/.setup.stamp && $1/.setup.stamp -nt ${BASH_SOURCE[0]} ]]
}

make_venv() {
    local venv=$1
    [[ -x $venv/bin/python ]] || "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
}

setup_flower() {
    local venv="$here/.venv-flower"
    fresh "$venv" && return 0
    make_venv "$venv"
    local pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
    "${pip[@]}" "$TORCH_PIN"
    "${pip[@]}" "flwr==1.32.1" "$TORCH_PIN" scikit-learn "$XGBOOST_PIN"
    "$venv/bin/python" -c "import flwr, torch, xgboost; print('flower venv:', flwr.__version__, torch.__version__, xgboost.__version__)"
    touch "$venv/.setup.stamp"
}

setup_nvflare() {
    local venv="$here/.venv-nvflare"
    fresh "$venv" && return 0
    make_venv "$venv"
    local pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
    # nvflare's PyTorch/XGBoost components import torch lazily; pin it so no CUDA build comes in
    "${pip[@]}" "$TORCH_PIN"
    "${pip[@]}" nvflare "$TORCH_PIN" "$XGBOOST_PIN" scikit-learn pandas tensorboard
    "$venv/bin/python" -c "import nvflare, xgboost; print('nvflare venv:', nvflare.__version__, xgboost.__version__)"
    touch "$venv/.setup.stamp"
}

peers=("$@")
[[ ${#peers[@]} -gt 0 ]] || peers=(flower nvflare)
status=0
for peer in "${peers[@]}"; do
    case $peer in
    flower) setup_flower || { echo "setup.sh: flower venv failed" >&2; status=1; } ;;
    nvflare) setup_nvflare || { echo "setup.sh: nvflare venv failed" >&2; status=1; } ;;
    *) echo "setup.sh: unknown peer '$peer' (flower, nvflare)" >&2; exit 2 ;;
    esac
done
exit $status
