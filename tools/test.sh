#!/usr/bin/env bash
# The project's checks: lint, then the whole test suite. Needs tools/bootstrap.sh first.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
