#!/usr/bin/env bash
# Installs the Debian packages tpcomm needs beyond the CUDA toolkit (which lives under /usr/local/cuda):
# Open MPI, libnuma, Criterion, pkg-config, cmake. Skips apt when everything is already there.
set -euo pipefail
pkgs=(libopenmpi-dev openmpi-bin libnuma-dev libcriterion-dev pkg-config cmake make g++)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -x /usr/local/cuda/bin/nvcc ] || { echo "CUDA toolkit not found under /usr/local/cuda (nvcc)"; exit 1; }
