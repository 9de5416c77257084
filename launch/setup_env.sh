#!/usr/bin/env bash
# Creates .venv (if missing) and installs peft_jax with its test extras into it, at the exact tested
# versions of constraints.txt (setup.py only bounds them from below).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.peft_jax_installed
# Reinstall when the requirements or the tested set changed since the last install.
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ]; then
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -c constraints.txt -e ".[test]"
  touch "$stamp"
fi
