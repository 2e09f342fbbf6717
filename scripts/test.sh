#!/usr/bin/env bash
# The test suite (CPU, a few minutes); see README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/python -m mypy  # settings and the checked files: [tool.mypy] in pyproject.toml
exec .venv/bin/python -m pytest -q "$@"
