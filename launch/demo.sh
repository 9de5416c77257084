#!/usr/bin/env bash
# The main job on the embedded default: sets up .venv if needed, then runs the whole pipeline.
# Extra arguments go to launch/pipeline.py (e.g. --config=configs/demo.py:runlocal).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh
args=("$@")
if [[ ! " ${args[*]-} " =~ " --config=" ]]; then args+=("--config=configs/demo.py"); fi
if [[ ! " ${args[*]-} " =~ " --workdir=" ]]; then args+=("--workdir=runs/demo"); fi
exec .venv/bin/python launch/pipeline.py "${args[@]}"
