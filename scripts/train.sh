#!/usr/bin/env bash
# The main job: sets up and builds (scripts/setup.sh), prepares the default corpus, the
# King James Bible from Debian's bible-kjv package, as data/kjv.txt, and trains the default
# model on it (configs/kjv.json) with longnet-train. Extra arguments go to longnet-train
# (e.g. --check). A second run resumes from the newest checkpoint in runs/kjv; remove that
# directory to start afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

if ! command -v bible >/dev/null; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "train: installing bible-kjv"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends bible-kjv
fi
if [ ! -s data/kjv.txt ]; then
  mkdir -p data
  bible -f Gen1:1-Rev22:21 > data/kjv.txt.tmp
  mv data/kjv.txt.tmp data/kjv.txt
fi
exec ./build/train/longnet-train "$@" configs/kjv.json
