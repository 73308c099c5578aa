#!/usr/bin/env bash
# Sets up, builds and runs the main job: for now the training demo, whose loss falls.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
./build/train/longnet-demo "$@"
