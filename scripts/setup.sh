#!/usr/bin/env bash
# Installs what the build needs (Debian 12 packages) and builds everything in build/
# (release). Safe to run again: it installs only what is missing and rebuilds only what
# changed. CUDA code is built too when nvcc is found (PATH or /usr/local/cuda).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential git meson ninja-build pkg-config libeigen3-dev doctest-dev
          nlohmann-json3-dev libopenblas-dev libopenmpi-dev openmpi-bin)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi
if [ ! -f build/build.ninja ]; then
  meson setup build --buildtype=release
fi
ninja -C build
