#!/usr/bin/env bash
# Runs the test suite: creates .venv if needed, installs peft_jax[test], runs pytest.
# Extra arguments go to pytest (e.g. `bash launch/test.sh -m slow`).
set -uo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh || exit 1
.venv/bin/python -m pytest -q "$@"
rc=$?
# pytest exits 5 when it collected no tests: that is a failure here, not a pass.
if [ "$rc" -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi
exit "$rc"
