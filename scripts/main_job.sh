#!/usr/bin/env bash
# The main job on the embedded default data (scikit-learn digits); see README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# The digits models are tiny: one intra-op thread is as fast as two and immune to oversubscription.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/unissl pipeline --config configs/digits-quick.yaml "$@"
