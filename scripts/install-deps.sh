#!/usr/bin/env bash
# Installs what advlens needs on a fresh Debian machine: the Fashion-MNIST and WordNet data
# packages, and (for the offline CUDA kernel check) NVRTC + ptxas from PyPI. Idempotent: skips
# what is already there. Needs root (or sudo) for apt.
set -euo pipefail

need_apt=()
[[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] || need_apt+=(dataset-fashion-mnist)
[[ -f /usr/share/wordnet/data.noun ]] || need_apt+=(wordnet-base)
if ((${#need_apt[@]})); then
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  echo "install-deps: apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [[ "${ADVLENS_SKIP_CUDA_TOOLS:-0}" != 1 ]]; then
  if ! python3 -m pip show -q nvidia-cuda-nvrtc nvidia-cuda-nvcc >/dev/null 2>&1; then
    echo "install-deps: pip install nvidia-cuda-nvrtc==13.0.* nvidia-cuda-nvcc==13.0.*"
    python3 -m pip install -q "nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-nvcc==13.0.*"
  fi
fi
