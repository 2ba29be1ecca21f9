#!/usr/bin/env bash
# Run every check CI runs: install (into .venv), lint, format check, strict types, tests.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

echo "== ruff check"
.venv/bin/ruff check batch tests scripts
echo "== ruff format --check"
.venv/bin/ruff format --check batch tests scripts
echo "== mypy --strict batch"
.venv/bin/mypy --strict batch
echo "== pytest"
.venv/bin/pytest -q "$@"
