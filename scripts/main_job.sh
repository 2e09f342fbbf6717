#!/usr/bin/env bash
# The main job (README.md): the whole unissl chain on Fashion-MNIST, then the report.
#   bash scripts/main_job.sh            # Fashion-MNIST -> runs/fashion-mnist-quick/report/report.html
#   bash scripts/main_job.sh --digits   # the quick smoke run on the embedded digits -> runs/digits-quick
# Any other flag goes to `unissl pipeline` (e.g. --out DIR, --seed N).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
# The models are small: one intra-op thread per stage, two stages at once on the two cores.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
FMNIST=/usr/share/datasets/fashion-mnist
config=configs/fashion-mnist-quick.yaml
if [ "${1:-}" = "--digits" ]; then
  shift
  config=configs/digits-quick.yaml
elif [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
  # Fashion-MNIST comes from Debian's dataset-fashion-mnist package; install it when this machine allows.
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) || true
  elif command -v apt-get >/dev/null && command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    (sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) || true
  fi
  if [ ! -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
    echo "main_job: Fashion-MNIST is not in $FMNIST and could not be installed (apt-get install" \
         "dataset-fashion-mnist needs root); running the digits smoke run instead" >&2
    config=configs/digits-quick.yaml
  fi
fi
exec .venv/bin/unissl pipeline --config "$config" --jobs 2 "$@"
