// Process-wide runtime settings: LibTorch's intra-op thread count and which BLAS LibTorch runs on.
#pragma once

#include <string>

namespace peft {

// Sets LibTorch's intra-op (OpenMP) threads to `threads`; threads <= 0 keeps LibTorch's default
// (one per physical core). Returns the count in effect. More OpenMP threads than physical cores
// hurts with OpenBLAS: OpenBLAS runs its own thread pool, and OpenMP workers spin-waiting next to
// it made a forward 1.6-4x slower on a 2-vCPU machine (1 physical core); with threads > physical
// cores, also set OMP_WAIT_POLICY=PASSIVE.
// Throws ConfigError when threads > kMaxThreads (100,000 OpenMP threads hang the process).
inline constexpr int kMaxThreads = 1024;
int set_num_threads(int threads = 0);

// The BLAS / LAPACK shared libraries mapped into this process (e.g.
// ".../openblas-pthread/libblas.so.3"), comma separated, resolved through symlinks; "unknown" if
// none can be found.
std::string blas_libraries();

}  // namespace peft
