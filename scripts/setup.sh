#!/usr/bin/env bash
# Installs every Debian package peft.cpp needs (idempotent; run as root or with sudo available), points
# libblas.so.3 / liblapack.so.3 at OpenBLAS, then configures and builds in build/ with the given preset.
#   scripts/setup.sh [preset]     preset: ci (default) | dev | asan | release
set -euo pipefail

PRESET="${1:-ci}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

PACKAGES=(
  build-essential cmake pkg-config git
  ccache                  # compiler cache: repeated builds on one machine are cheap
  clang-format            # the lint test (ctest -L lint) checks the tree's formatting
  clang                   # the fuzz preset: libFuzzer targets of the parsers (fuzz/)
  libtorch-dev            # LibTorch 1.13 (CPU)
  libopenblas0-openmp     # fast BLAS/LAPACK for LibTorch (the reference BLAS is 11-20x slower), built on
                          # OpenMP: it shares LibTorch's thread pool (docs/performance.md)
  nlohmann-json3-dev      # JSON (adapter_config.json, safetensors headers)
  libpcre2-dev            # Python-compatible regular expressions (target_modules, rank_pattern)
  libcli11-dev            # command-line parsing
  googletest libgtest-dev # unit tests
  libbenchmark-dev        # benchmarks
  libcpp-httplib-dev      # multi-adapter server
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then missing+=("$p"); fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all Debian packages present"
fi

# LibTorch calls the system BLAS/LAPACK: make sure they resolve to OpenBLAS's OpenMP build. Its
# pthread build runs a second pool of spinning threads beside LibTorch's OpenMP pool; one shared
# pool measured 6-10% faster per training step and lets every op use every core.
arch="$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)"
for lib in libblas.so.3 liblapack.so.3 libopenblas.so.0; do
  alt="${lib}-${arch}"
  target="/usr/lib/${arch}/openblas-openmp/${lib}"
  if [ -e "$target" ] && update-alternatives --query "$alt" >/dev/null 2>&1; then
    $SUDO update-alternatives --set "$alt" "$target" >/dev/null
  fi
done
echo "setup: BLAS -> $(readlink -f "/usr/lib/${arch}/libblas.so.3" 2>/dev/null || echo unknown)"

cd "$ROOT"
cmake --preset "$PRESET" >/dev/null
cmake --build --preset "$PRESET" -j "$(nproc)"
echo "setup: built (preset $PRESET)"
